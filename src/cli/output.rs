//! What the review commands (`queue`, `events`) share: opening the daemon's database from
//! the configuration, times, aligned tables, JSON, masking and redaction, exit codes.
//!
//! Decisions:
//! - Times for people are UTC `YYYY-MM-DD HH:MM:SS`; in JSON they are RFC 3339 UTC with
//!   milliseconds (`2025-03-14T10:22:41.000Z`), which sorts as text and keeps the stored
//!   precision. No time zone library: the store keeps Unix milliseconds and
//!   [`crate::domain::Day`] already does the calendar arithmetic.
//! - Exit codes: [`EXIT_OK`] 0, [`EXIT_FAILURE`] 1 (configuration, database, a refused
//!   change), 2 usage (clap's own), [`EXIT_NOT_FOUND`] 3 (an id that does not exist).
//! - The buyer's e-mail is masked on every output (`j***@example.com`); stored requests and
//!   responses are redacted once more (`password=…`) although the connector already did it.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

use crate::connectors::konnektive::request::REDACTED;
use crate::domain::Day;
use crate::store::{Store, StoreError};

/// Success.
pub const EXIT_OK: u8 = 0;
/// The command failed: configuration, database, or a change that was refused.
pub const EXIT_FAILURE: u8 = 1;
/// An id named on the command line does not exist (nothing was changed).
pub const EXIT_NOT_FOUND: u8 = 3;

/// Default number of rows of the list commands.
pub const DEFAULT_LIMIT: u32 = 50;

/// Loads the configuration and opens the store it names (`[store].path`, relative to the
/// working directory). A missing database file is an error, not a new empty database.
/// Secrets are not read (these commands need none, and systemd credentials exist only
/// inside the service).
pub async fn open_store(config_path: &Path) -> anyhow::Result<Store> {
    let loaded = crate::config::load_without_secrets(config_path).map_err(|errors| {
        anyhow::anyhow!(
            "{errors}\n{}: the configuration is not valid (see `ipn-bridge check-config`)",
            config_path.display()
        )
    })?;
    open_existing_store(&loaded.config).await
}

/// The database of `config` for an operator command, beside running daemons: the
/// PostgreSQL database of `[store] url`, or the SQLite file of `[store] path`, which must
/// exist (a missing file is an error, not a new empty database).
pub async fn open_existing_store(config: &crate::config::Config) -> anyhow::Result<Store> {
    use secrecy::ExposeSecret;
    if let Some(url) = &config.store.url {
        return Store::connect_postgres_with_ca(
            url.expose_secret(),
            config.store.ca_file.as_deref(),
        )
        .await
        .context("cannot open the PostgreSQL store ([store] url)");
    }
    let db = &config.store.path;
    if !db.exists() {
        anyhow::bail!(
            "no database at {} ([store] path); has the daemon run here?",
            db.display()
        );
    }
    Store::open(db).with_context(|| format!("cannot open the database {}", db.display()))
}

/// A current-thread runtime for one command.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Prints a store error and returns its exit code (3 for not found, else 1).
pub fn report_store_error(e: &StoreError) -> ExitCode {
    match e {
        StoreError::NotFound(what) => {
            for line in what.lines() {
                eprintln!("error: {line}");
            }
            ExitCode::from(EXIT_NOT_FOUND)
        }
        StoreError::Invalid(why) => {
            for line in why.lines() {
                eprintln!("error: {line}");
            }
            eprintln!("nothing was changed");
            ExitCode::from(EXIT_FAILURE)
        }
        other => {
            eprintln!("error: {other}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// The person running the command: `$SUDO_USER`, else `$USER`, else `unknown`.
pub fn operator_user() -> String {
    ["SUDO_USER", "USER"]
        .iter()
        .find_map(|var| std::env::var(var).ok().filter(|v| !v.trim().is_empty()))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    use crate::clock::Clock as _;
    crate::clock::SystemClock.now_ms()
}

/// clap value parser for an age such as `2h` or `90d` (the configuration's duration syntax).
pub fn parse_age(s: &str) -> Result<Duration, String> {
    crate::config::parse_duration(s)
}

/// Milliseconds of a duration, saturating.
pub fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn civil_time(ms: i64) -> (i64, i64, i64, i64, i64, i64, i64) {
    let (y, mo, d) = Day::from_unix_ms(ms).civil();
    let in_day = ms.rem_euclid(86_400_000);
    let secs = in_day / 1000;
    (
        y,
        mo,
        d,
        secs / 3600,
        secs % 3600 / 60,
        secs % 60,
        in_day % 1000,
    )
}

/// `YYYY-MM-DD HH:MM:SS` in UTC, for people.
pub fn utc_time(ms: i64) -> String {
    let (y, mo, d, h, mi, s, _) = civil_time(ms);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
}

/// RFC 3339 UTC with milliseconds, for JSON.
pub fn rfc3339(ms: i64) -> String {
    let (y, mo, d, h, mi, s, milli) = civil_time(ms);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

/// `jane.doe@example.com` → `j***@example.com`; anything without `@` → `***`.
pub fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) if !local.is_empty() => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        Some((_, domain)) => format!("***@{domain}"),
        None => "***".to_owned(),
    }
}

/// Replaces the value of every `password=` (form) and `"password":"…"` (JSON) with
/// `[redacted]`, case-insensitively. Stored texts are redacted by the connector already; this
/// is the second line of defence before anything reaches a terminal or a ticket.
pub fn redact_secrets(text: &str) -> String {
    let text = redact_after(text, "password=", |c| c == '&' || c.is_whitespace());
    redact_json_password(&text)
}

fn redact_after(text: &str, key: &str, ends: impl Fn(char) -> bool) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    while let Some(found) = lower[pos..].find(key) {
        let value_start = pos + found + key.len();
        out.push_str(&text[pos..value_start]);
        let value_len = text[value_start..]
            .find(&ends)
            .unwrap_or(text.len() - value_start);
        let value = &text[value_start..value_start + value_len];
        if value.is_empty() || value == REDACTED || value == "%5Bredacted%5D" {
            out.push_str(value);
        } else {
            out.push_str(REDACTED);
        }
        pos = value_start + value_len;
    }
    out.push_str(&text[pos..]);
    out
}

fn redact_json_password(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let key = "\"password\"";
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    while let Some(found) = lower[pos..].find(key) {
        let after_key = pos + found + key.len();
        out.push_str(&text[pos..after_key]);
        let rest = &text[after_key..];
        let trimmed = rest.trim_start_matches([' ', ':']);
        let gap = rest.len() - trimmed.len();
        if gap > 0 && rest[..gap].contains(':') && trimmed.starts_with('"') {
            // The string value, honouring backslash escapes.
            let mut end = None;
            let mut escaped = false;
            for (i, c) in trimmed.char_indices().skip(1) {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end.unwrap_or(trimmed.len().saturating_sub(1));
            out.push_str(&rest[..gap]);
            out.push('"');
            out.push_str(REDACTED);
            out.push('"');
            pos = after_key + gap + end + 1;
        } else {
            pos = after_key;
        }
    }
    out.push_str(&text[pos.min(text.len())..]);
    out
}

/// One line of text for a table cell: newlines and tabs become spaces, at most `max` chars.
pub fn cell(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        flat
    } else {
        let cut: String = flat.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

/// An aligned text table: columns separated by two spaces, the last one not padded.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, c) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&self.header).chain(&self.rows) {
            let mut text = String::new();
            for (i, c) in line.iter().enumerate().take(columns) {
                if i > 0 {
                    text.push_str("  ");
                }
                text.push_str(c);
                if i + 1 < columns {
                    let pad = widths[i].saturating_sub(c.chars().count());
                    text.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(text.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `label  value` lines with the values aligned, indented by two spaces.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        let pad = width - k.chars().count();
        out.push_str(&format!("  {k}{}  {v}\n", " ".repeat(pad)));
    }
    out
}

/// `Some(v)` → `v`, `None` → `-`.
pub fn or_dash(v: Option<&str>) -> String {
    v.filter(|s| !s.is_empty()).unwrap_or("-").to_owned()
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00");
        assert_eq!(utc_time(1_741_947_761_123), "2025-03-14 10:22:41");
        assert_eq!(rfc3339(1_741_947_761_123), "2025-03-14T10:22:41.123Z");
        assert_eq!(utc_time(-1_000), "1969-12-31 23:59:59");
    }

    #[test]
    fn emails_are_masked() {
        assert_eq!(mask_email("jane.doe@example.com"), "j***@example.com");
        assert_eq!(mask_email("@example.com"), "***@example.com");
        assert_eq!(mask_email("nonsense"), "***");
        assert_eq!(mask_email("émile@exemple.fr"), "é***@exemple.fr");
    }

    #[test]
    fn passwords_are_redacted_again() {
        for (input, expected) in [
            (
                "loginId=a&password=s3cret&x=1",
                "loginId=a&password=[redacted]&x=1",
            ),
            ("PASSWORD=abc", "PASSWORD=[redacted]"),
            ("password=[redacted]&a=b", "password=[redacted]&a=b"),
            ("password=&a=b", "password=&a=b"),
            (
                r#"{"loginId":"a","password":"p\"w","x":1}"#,
                r#"{"loginId":"a","password":"[redacted]","x":1}"#,
            ),
            (r#"{"password": "pw"}"#, r#"{"password": "[redacted]"}"#),
            ("no secrets here", "no secrets here"),
            (r#""password" is the key"#, r#""password" is the key"#),
        ] {
            assert_eq!(redact_secrets(input), expected, "{input}");
        }
    }

    #[test]
    fn tables_align_and_cells_are_one_line() {
        let mut t = Table::new(&["ID", "STATE", "NOTE"]);
        t.row(vec!["1".into(), "delivered".into(), "".into()]);
        t.row(vec!["10".into(), "dead".into(), cell("a\nb", 10)]);
        assert_eq!(
            t.render(),
            "ID  STATE      NOTE\n1   delivered\n10  dead       a b\n"
        );
        assert_eq!(cell("abcdef", 4), "abc…");
    }
}
