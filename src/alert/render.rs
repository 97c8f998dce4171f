//! What an alert e-mail says: pure functions from outbox rows to a subject and a plain-text
//! body, plus the two scrubbers applied before an alert is even stored ([`mask_email`],
//! [`redact_secrets`]).
//!
//! Knows nothing about SMTP, the store's SQL or time sources: times arrive as Unix
//! milliseconds. Decisions:
//! - Plain text, ASCII punctuation: it reads the same in every client and in a terminal,
//!   and a person can paste the retry command straight out of it.
//! - Every item carries the full context (what failed, integration, Digistore24 order,
//!   product, amount, masked buyer, the target's message, the retry command), also inside a
//!   digest: a digest is a list of complete items preceded by counts per kind, never a
//!   summary that sends the reader elsewhere.
//! - The buyer's address is masked (`j***@example.com`): enough to recognise a customer who
//!   writes in, not enough to harvest. Free text (a target's message) passes through
//!   [`redact_secrets`], because a remote error may echo the request that carried a password.

use crate::domain::Day;
use crate::store::alerts::OutboxAlert;

use super::AlertKind;

/// Subject and plain-text body of one e-mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    pub subject: String,
    pub body: String,
}

const SUBJECT_PREFIX: &str = "[ipn-bridge]";
const REDACTED: &str = "[redacted]";
/// Keys whose values are hidden in free text (matched case-insensitively, also as the end
/// of a longer key such as `loginPassword` or `smtp_password`).
const SECRET_KEYS: [&str; 5] = ["password", "passwd", "secret", "token", "passphrase"];

/// `jane.doe@example.com` → `j***@example.com`. Anything that is not an address becomes
/// `***`, so a malformed value never passes through unmasked.
pub fn mask_email(raw: &str) -> String {
    let raw = raw.trim();
    match raw.rsplit_once('@') {
        Some((local, domain)) if !domain.is_empty() => match local.chars().next() {
            Some(first) => format!("{first}***@{domain}"),
            None => "***".to_owned(),
        },
        _ => "***".to_owned(),
    }
}

/// Replaces the value of every `password=…`, `password: …` and `"password":"…"` (and the
/// other [`SECRET_KEYS`]) in `text` with `[redacted]`.
pub fn redact_secrets(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let bytes = text.as_bytes();
    // (start, end) byte ranges of values to hide; ASCII lowercasing keeps byte offsets.
    let mut hide: Vec<(usize, usize)> = Vec::new();
    for key in SECRET_KEYS {
        let mut from = 0;
        while let Some(pos) = lower[from..].find(key) {
            let key_end = from + pos + key.len();
            from = key_end;
            if let Some(range) = value_after_key(bytes, key_end) {
                hide.push(range);
            }
        }
    }
    if hide.is_empty() {
        return text.to_owned();
    }
    hide.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end) in hide {
        if start < at {
            continue;
        }
        out.push_str(&text[at..start]);
        out.push_str(REDACTED);
        at = end;
    }
    out.push_str(&text[at..]);
    out
}

/// After a key ending at `i`: optional closing quote, spaces, `=` or `:`, spaces, optional
/// opening quote, then the value. Returns the value's byte range when it is not empty.
fn value_after_key(b: &[u8], mut i: usize) -> Option<(usize, usize)> {
    if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
        i += 1;
    }
    while i < b.len() && b[i] == b' ' {
        i += 1;
    }
    if i >= b.len() || (b[i] != b'=' && b[i] != b':') {
        return None;
    }
    i += 1;
    while i < b.len() && b[i] == b' ' {
        i += 1;
    }
    let quote = match b.get(i) {
        Some(&q @ (b'"' | b'\'')) => {
            i += 1;
            Some(q)
        }
        _ => None,
    };
    let start = i;
    while i < b.len() {
        let c = b[i];
        if quote.is_some() && c == b'\\' {
            i = (i + 2).min(b.len());
            continue;
        }
        let stop = match quote {
            Some(q) => c == q,
            None => c.is_ascii_whitespace() || b"&,;\"'})]".contains(&c),
        };
        if stop {
            break;
        }
        i += 1;
    }
    (i > start).then_some((start, i))
}

/// `2024-05-01 12:00:00 UTC`.
pub fn format_utc(ms: i64) -> String {
    let (y, m, d) = Day::from_unix_ms(ms).civil();
    let secs = ms.div_euclid(1000).rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// `15m`, `1h`, `90s`.
pub fn format_duration_ms(ms: i64) -> String {
    if ms > 0 && ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms > 0 && ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", ms / 1000)
    }
}

fn title(kind: &str) -> &str {
    match AlertKind::parse(kind) {
        Some(AlertKind::DeadLetter) => "Dead letter",
        Some(AlertKind::TargetPaused) => "Target paused",
        Some(AlertKind::TargetResumed) => "Target resumed",
        Some(AlertKind::UnmappedProduct) => "Unmapped product",
        Some(AlertKind::AlertBacklog) => "Alert e-mails delayed",
        None => kind,
    }
}

fn plural_title(kind: &str, n: usize) -> String {
    let t = title(kind);
    if n == 1 {
        t.to_owned()
    } else {
        match AlertKind::parse(kind) {
            Some(AlertKind::DeadLetter) => "Dead letters".to_owned(),
            Some(AlertKind::TargetPaused) => "Targets paused".to_owned(),
            Some(AlertKind::TargetResumed) => "Targets resumed".to_owned(),
            Some(AlertKind::UnmappedProduct) => "Unmapped products".to_owned(),
            Some(AlertKind::AlertBacklog) => "Alert e-mail delays".to_owned(),
            None => t.to_owned(),
        }
    }
}

fn what_failed(a: &OutboxAlert) -> String {
    let target = a.target.as_deref().unwrap_or("the target");
    match AlertKind::parse(&a.kind) {
        Some(AlertKind::DeadLetter) => format!(
            "A delivery to {target} failed for good (a permanent error, or retries ran out). \
             It will not be tried again unless you retry it."
        ),
        Some(AlertKind::TargetPaused) => format!(
            "{target} refused the bridge itself (login, IP allow-list or permission). Its \
             deliveries wait, without using up retries, until a probe succeeds."
        ),
        Some(AlertKind::TargetResumed) => {
            format!("{target} accepts requests again; the waiting deliveries continue.")
        }
        Some(AlertKind::UnmappedProduct) => "The Digistore24 product has no product_map entry \
             (and there is no \"*\"), so the IPN was skipped for this integration."
            .to_owned(),
        Some(AlertKind::AlertBacklog) => "Alert e-mails could not be sent for a while. They \
             are kept and go out as soon as the mail server accepts them."
            .to_owned(),
        None => "An event that needs attention.".to_owned(),
    }
}

/// Longest body line the layout aims for: the classic 72, below the 76 at which `lettre`
/// switches a body to quoted-printable, so a plain ASCII body travels as readable 7bit text.
const LINE_WIDTH: usize = 72;
/// Where values start: two spaces, a 13-wide label, one space.
const VALUE_INDENT: usize = 16;

fn push_field(out: &mut String, label: &str, value: Option<&str>) {
    if let Some(v) = value.filter(|v| !v.is_empty()) {
        out.push_str(&format!("  {label:<13} "));
        push_wrapped(out, v);
    }
}

/// Appends `text` word-wrapped at [`LINE_WIDTH`], continuation lines indented to the value
/// column. A single word longer than a line stays whole (a URL, a command).
fn push_wrapped(out: &mut String, text: &str) {
    let mut col = VALUE_INDENT;
    let mut first = true;
    for word in text.split_whitespace() {
        let len = word.chars().count();
        if !first && col + 1 + len > LINE_WIDTH {
            out.push('\n');
            out.push_str(&" ".repeat(VALUE_INDENT));
            col = VALUE_INDENT;
        } else if !first {
            out.push(' ');
            col += 1;
        }
        out.push_str(word);
        col += len;
        first = false;
    }
    out.push('\n');
}

fn push_item(out: &mut String, a: &OutboxAlert) {
    out.push_str(&format!(
        "{} - {}\n",
        title(&a.kind),
        format_utc(a.created_at)
    ));
    push_field(out, "What failed:", Some(&what_failed(a)));
    push_field(out, "Integration:", a.integration.as_deref());
    push_field(out, "Target:", a.target.as_deref());
    push_field(out, "Job:", a.job_id.map(|j| j.to_string()).as_deref());
    push_field(out, "DS24 order:", a.ds24_order_id.as_deref());
    push_field(out, "Product:", a.product.as_deref());
    push_field(out, "Amount:", a.amount.as_deref());
    push_field(out, "Buyer:", a.buyer_email.as_deref());
    push_field(out, "Message:", Some(&a.message));
    // Never wrapped: it is meant to be pasted into a shell.
    if let Some(cmd) = a.retry_command.as_deref().filter(|c| !c.is_empty()) {
        out.push_str(&format!("  {:<13} {cmd}\n", "To retry:"));
    }
}

const FOOTER: &str = "--\nSent by ipn-bridge. Review the queue: `ipn-bridge queue list`;\n\
                      a job and its attempts: `ipn-bridge queue show ID`.\n";

/// The e-mail for one alert, sent at once.
pub fn single(a: &OutboxAlert) -> Mail {
    let mut subject = format!("{SUBJECT_PREFIX} {}", title(&a.kind));
    if let Some(about) = a.integration.as_deref().or(a.target.as_deref()) {
        subject.push_str(&format!(": {about}"));
    }
    if let Some(order) = a.ds24_order_id.as_deref() {
        subject.push_str(&format!(", order {order}"));
    }
    let mut body = String::new();
    push_item(&mut body, a);
    body.push('\n');
    body.push_str(FOOTER);
    Mail { subject, body }
}

/// The e-mail summarising several alerts for one recipient. `unsent_total` counts every
/// alert still owed to the recipient, of which `alerts` are the oldest.
pub fn digest(alerts: &[OutboxAlert], unsent_total: u64, window_ms: i64) -> Mail {
    // Counts per kind, in order of first appearance.
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for a in alerts {
        match counts.iter_mut().find(|(k, _)| *k == a.kind) {
            Some((_, n)) => *n += 1,
            None => counts.push((&a.kind, 1)),
        }
    }
    let summary: Vec<String> = counts
        .iter()
        .map(|(k, n)| format!("{n} {}", plural_title(k, *n).to_lowercase()))
        .collect();
    let subject = format!(
        "{SUBJECT_PREFIX} {} alerts: {}",
        alerts.len(),
        summary.join(", ")
    );
    let mut body = format!(
        "{} alerts since the last e-mail (you get at most one e-mail per {}).\n\n",
        alerts.len(),
        format_duration_ms(window_ms)
    );
    for (k, n) in &counts {
        body.push_str(&format!("  {n:>4} x {}\n", plural_title(k, *n)));
    }
    body.push('\n');
    for (i, a) in alerts.iter().enumerate() {
        body.push_str(&format!("[{}] ", i + 1));
        push_item(&mut body, a);
        body.push('\n');
    }
    let more = unsent_total.saturating_sub(alerts.len() as u64);
    if more > 0 {
        body.push_str(&format!(
            "{more} more alerts are waiting; they follow in the next e-mail.\n\n"
        ));
    }
    body.push_str(FOOTER);
    Mail { subject, body }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(kind: &str) -> OutboxAlert {
        OutboxAlert {
            id: 1,
            created_at: 1_714_564_800_000,
            kind: kind.to_owned(),
            integration: Some("main-campaign".into()),
            target: Some("konnektive".into()),
            job_id: Some(42),
            ds24_order_id: Some("ABC123".into()),
            product: Some("412346".into()),
            amount: Some("97.00 USD".into()),
            buyer_email: Some(mask_email("jane@example.com")),
            message: "Invalid product".into(),
            retry_command: Some("ipn-bridge queue retry 42".into()),
        }
    }

    #[test]
    fn masks_addresses() {
        for (raw, masked) in [
            ("jane.doe@example.com", "j***@example.com"),
            ("  J@x.de ", "J***@x.de"),
            ("ünal@example.com", "ü***@example.com"),
            ("a@b@example.com", "a***@example.com"),
            ("@example.com", "***"),
            ("jane@", "***"),
            ("not-an-address", "***"),
            ("", "***"),
        ] {
            assert_eq!(mask_email(raw), masked, "{raw}");
        }
    }

    #[test]
    fn redacts_secret_values() {
        for (text, redacted) in [
            (
                "loginId=ds24bridge&password=k0nn-Secret-Pw&campaignId=12",
                "loginId=ds24bridge&password=[redacted]&campaignId=12",
            ),
            (
                r#"{"loginId":"x","password":"p w\"d"}"#,
                r#"{"loginId":"x","password":"[redacted]"}"#,
            ),
            (
                "Password: hunter2 rejected",
                "Password: [redacted] rejected",
            ),
            ("smtp_password='abc'", "smtp_password='[redacted]'"),
            ("token=abc;secret=def", "token=[redacted];secret=[redacted]"),
            ("Invalid login or password.", "Invalid login or password."),
            ("password=", "password="),
            ("no secrets here", "no secrets here"),
        ] {
            assert_eq!(redact_secrets(text), redacted, "{text}");
        }
    }

    #[test]
    fn formats_times_and_windows() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(1_714_564_800_000), "2024-05-01 12:00:00 UTC");
        assert_eq!(format_duration_ms(900_000), "15m");
        assert_eq!(format_duration_ms(3_600_000), "1h");
        assert_eq!(format_duration_ms(90_000), "90s");
    }

    #[test]
    fn single_mail_carries_the_full_context() {
        let mail = single(&alert("dead_letter"));
        assert_eq!(
            mail.subject,
            "[ipn-bridge] Dead letter: main-campaign, order ABC123"
        );
        for needle in [
            "main-campaign",
            "konnektive",
            "ABC123",
            "412346",
            "97.00 USD",
            "j***@example.com",
            "Invalid product",
            "ipn-bridge queue retry 42",
            "2024-05-01 12:00:00 UTC",
        ] {
            assert!(mail.body.contains(needle), "{needle} in\n{}", mail.body);
        }
        assert!(!mail.body.contains("jane@"));
        assert!(
            mail.body.lines().all(|l| l.len() <= LINE_WIDTH),
            "{}",
            mail.body
        );
    }

    #[test]
    fn long_values_wrap_under_their_column() {
        let mut out = String::new();
        push_field(&mut out, "Message:", Some(&"word ".repeat(30)));
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines.len() > 1);
        assert!(lines.iter().all(|l| l.len() <= LINE_WIDTH), "{out}");
        assert!(lines[1].starts_with(&" ".repeat(VALUE_INDENT)), "{out}");
        assert_eq!(out.split_whitespace().filter(|w| *w == "word").count(), 30);
    }

    #[test]
    fn digest_counts_per_kind_and_lists_every_item() {
        let items = [
            alert("dead_letter"),
            alert("target_paused"),
            alert("dead_letter"),
        ];
        let mail = digest(&items, 5, 900_000);
        assert_eq!(
            mail.subject,
            "[ipn-bridge] 3 alerts: 2 dead letters, 1 target paused"
        );
        assert!(mail.body.contains("   2 x Dead letters\n"));
        assert!(mail.body.contains("   1 x Target paused\n"));
        assert!(mail.body.contains("[3] Dead letter"));
        assert!(mail.body.contains("at most one e-mail per 15m"));
        assert!(mail.body.contains("2 more alerts are waiting"));
    }
}
