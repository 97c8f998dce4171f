//! The `connectors.toml` schema: walks the span-carrying TOML tree, checks every key, type,
//! range and cross-reference of SPEC §4, fills in defaults, resolves secrets and builds the
//! runtime [`Config`].
//!
//! Every problem becomes one finding at the span of the offending key or value, and the walk
//! always goes on, so that `check-config` shows *every* error at once; an invalid value is
//! replaced by its default (or a placeholder) only to keep walking, and a file with any error
//! never yields a `Config`. References (`source`, `target`) are checked against the tables
//! that exist, even invalid ones, so one mistake is not reported twice; a required key that is
//! merely misspelt is reported once, as the unknown key with a "did you mean". This file
//! knows the schema but not line/column positions or TOML syntax (see `reader`, `diagnostic`,
//! `document`), nor how secrets are fetched (see `secret`), nor file permissions (`load`).
//!
//! Decisions beyond SPEC §4:
//! - `[alerts].to` must list at least one address: alerts that belong to no integration
//!   (a target paused by a bad login, a dead letter without `error_emails`) need a recipient.
//! - `smtp_username` and `smtp_password` come together or not at all; `smtp_url` must not
//!   carry credentials (it is logged), and neither may `public_url` or `base_url`.
//! - `[integration.NAME.fields]` may not set `loginId`, `password` or the integration's
//!   `order_ref_field` (which carries the bridge's own order reference).
//! - `[store] ca_file` is read when the file is loaded (relative to the configuration file's
//!   directory, like a secret's `file`) and must hold at least one usable CA certificate
//!   (parsed by `store::postgres::tls`, the one home of that rule); it needs `url`, and
//!   warns when `url` does not ask for TLS (`sslmode=require`), where it would go unused.
//! - A `products` list must not be empty (it would match nothing; `active = false` says that).
//! - `[integration.NAME.fallback_address]` values are checked against the Konnektive field
//!   lengths of `connectors::konnektive::request::FIELD_MAX_CHARS` (the one home of those
//!   limits; that file is pure and depends on `domain` only) and refused, never cut, when
//!   longer: a fallback is written once and should arrive as written.
//! - Warnings: no integration at all; a listed product without a `product_map` entry and
//!   without `"*"`; a plain-`http` `base_url` to a non-loopback host (the password would
//!   travel unencrypted); likewise an `smtp_password` with a plain `smtp://` `smtp_url` to a
//!   non-loopback host that does not require STARTTLS (`?tls=required`). (Plain-text secrets
//!   in a readable file are `load`'s warning.)

use super::diagnostic::{Findings, closest, suggestion};
use super::model::*;
use super::reader::{Field, Section, type_name};
use super::secret::{Environment, SecretResolver};
use super::template::{is_name, parse_template};
use crate::connectors::konnektive::request::max_chars;
use crate::domain::{ActionKind, OrderEvent, OtherEvent};
use crate::store::postgres::tls::{CaFileError, parse_ca_pem, tls_required};
use secrecy::{ExposeSecret, SecretString};
use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

const DEFAULT_MAX_BODY_BYTES: usize = 65_536;
const MIN_BODY_BYTES: usize = 1024;
/// `[server] max_connections` default (SPEC §4): a few hundred, well below the service's
/// `LimitNOFILE=` (see `systemd/ipn-bridge.service`).
const DEFAULT_MAX_CONNECTIONS: usize = 512;
const DEFAULT_STORE_PATH: &str = "ipn-bridge.db";
const DEFAULT_TIMEOUT_SECS: u64 = 30;
const DEFAULT_RETRY_INITIAL_SECS: u64 = 30;
const DEFAULT_RETRY_MAX_SECS: u64 = 3600;
const DEFAULT_GIVE_UP_AFTER_SECS: u64 = 10 * 86_400;
const DEFAULT_DIGEST_WINDOW_SECS: u64 = 15 * 60;
const DEFAULT_BASE_URL: &str = "https://api.konnektive.com";
/// `[source.NAME] api_url` default: the Digistore24 API base (reference
/// `digistore24-api.md` §1.1, [VERIFIED]); functions are called below it.
const DEFAULT_DS24_API_URL: &str = "https://www.digistore24.com/api/call";
const DEFAULT_REQUESTS_PER_SECOND: f64 = 2.0;
const DEFAULT_BURST: u32 = 2;
const DEFAULT_MAX_IN_FLIGHT: u32 = 1;
const DEFAULT_ORDER_REF_FIELD: &str = "custom1";

const ROOT_KEYS: [&str; 7] = [
    "server",
    "store",
    "delivery",
    "alerts",
    "source",
    "target",
    "integration",
];
const SERVER_KEYS: [&str; 4] = ["listen", "max_body_bytes", "public_url", "max_connections"];
const STORE_KEYS: [&str; 3] = ["path", "url", "ca_file"];
const DELIVERY_KEYS: [&str; 4] = ["timeout", "retry_initial", "retry_max", "give_up_after"];
const ALERTS_KEYS: [&str; 6] = [
    "smtp_url",
    "smtp_username",
    "smtp_password",
    "from",
    "to",
    "digest_window",
];
const SOURCE_KEYS: [&str; 5] = [
    "passphrase",
    "passphrases",
    "api_key",
    "api_url",
    "audit_every",
];
const TARGET_KEYS: [&str; 14] = [
    "kind",
    "base_url",
    "login_id",
    "password",
    "url",
    "secret",
    "headers",
    "requests_per_second",
    "burst",
    "max_in_flight",
    "timeout",
    "retry_initial",
    "retry_max",
    "give_up_after",
];
/// Keys of `[target.NAME]` that only a Konnektive target takes.
const KONNEKTIVE_TARGET_KEYS: [&str; 3] = ["base_url", "login_id", "password"];
/// Keys of `[target.NAME]` that only a webhook target takes.
const WEBHOOK_TARGET_KEYS: [&str; 3] = ["url", "secret", "headers"];
/// Keys of `[integration.NAME]` that only an integration of a Konnektive target takes
/// (they shape a Konnektive order; a webhook gets the IPN as it came).
const KONNEKTIVE_INTEGRATION_KEYS: [&str; 6] = [
    "campaign_id",
    "product_map",
    "order_ref_field",
    "auto_approve",
    "fields",
    "fallback_address",
];
const INTEGRATION_KEYS: [&str; 19] = [
    "source",
    "target",
    "active",
    "campaign_id",
    "products",
    "addons",
    "languages",
    "followup_payments",
    "test_orders",
    "currencies",
    "newsletter",
    "delay",
    "error_emails",
    "order_ref_field",
    "auto_approve",
    "product_map",
    "on",
    "fields",
    "fallback_address",
];
const ORDER_REF_FIELDS: [&str; 5] = ["custom1", "custom2", "custom3", "custom4", "custom5"];
const NEWSLETTER_VALUES: [&str; 2] = ["any", "opted_in"];
/// The keys of `[integration.NAME.fallback_address]` and the Konnektive parameter whose
/// length limit (`FIELD_MAX_CHARS`) each must keep.
const FALLBACK_ADDRESS_KEYS: [(&str, &str); 4] = [
    ("address1", "address1"),
    ("city", "city"),
    ("postal_code", "postalCode"),
    ("state", "state"),
];
/// Konnektive parameters `fields` must not set: the credentials come from the target.
const RESERVED_FIELDS: [&str; 2] = ["loginId", "password"];

/// The result of one walk over a parsed file.
pub(crate) struct Walked {
    /// Meaningful only when `findings.errors` is empty.
    pub config: Config,
    pub findings: Findings,
    /// Where secrets are written in plain text (for `load`'s permission warning).
    pub plain_secret_spans: Vec<Range<usize>>,
}

/// Validates `tree` (parsed from `text`, the file at `path`) and builds the [`Config`].
pub(crate) fn walk(
    text: &str,
    tree: &Spanned<DeTable<'_>>,
    path: &Path,
    env: &dyn Environment,
    store_env: &dyn Environment,
) -> Walked {
    let mut walker = Walker {
        text,
        out: Findings::default(),
        secrets: SecretResolver::new(env, path),
        store_secrets: SecretResolver::new(store_env, path),
        store_env,
    };
    let config = walker.config(&Section::root(tree), path);
    let mut plain_secret_spans = walker.secrets.plain_spans;
    plain_secret_spans.extend(walker.store_secrets.plain_spans);
    Walked {
        config,
        findings: walker.out,
        plain_secret_spans,
    }
}

fn default_delivery() -> Delivery {
    Delivery {
        timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECS),
        retry_initial: Duration::from_secs(DEFAULT_RETRY_INITIAL_SECS),
        retry_max: Duration::from_secs(DEFAULT_RETRY_MAX_SECS),
        give_up_after: Duration::from_secs(DEFAULT_GIVE_UP_AFTER_SECS),
    }
}

fn default_server() -> Server {
    Server {
        listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        public_url: None,
        max_connections: DEFAULT_MAX_CONNECTIONS,
    }
}

fn default_store() -> Store {
    Store {
        path: PathBuf::from(DEFAULT_STORE_PATH),
        url: None,
        ca_file: None,
    }
}

/// Whether `url` reads as a PostgreSQL connection string (`postgres://…`,
/// `postgresql://…` or `key=value …`); reports it at `field` otherwise, without the value,
/// which may hold a password.
fn postgres_url_is_valid(
    url: &secrecy::SecretString,
    field: &crate::config::reader::Field<'_, '_>,
    out: &mut Findings,
) -> bool {
    use secrecy::ExposeSecret;
    let text = url.expose_secret();
    let uri_form = text.starts_with("postgres://") || text.starts_with("postgresql://");
    let key_value_form = !text.contains("://") && text.contains('=');
    if (uri_form || key_value_form) && text.parse::<tokio_postgres::Config>().is_ok() {
        return true;
    }
    field.error_hint(
        out,
        "is not a PostgreSQL connection string",
        "write it as \"postgres://USER@HOST/DATABASE\" (the password in the secret's \
         value, or in ~/.pgpass)",
    );
    false
}

/// Whether a valid `[store] url` turns TLS on (see [`crate::store::postgres::tls`]).
fn store_url_requires_tls(url: &SecretString) -> bool {
    url.expose_secret()
        .parse::<tokio_postgres::Config>()
        .is_ok_and(|config| tls_required(config.get_ssl_mode()))
}

/// `[A-Za-z0-9_-]+`, the form of source, target and integration names.
fn is_table_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `30s`, `15m`, … as short as exact.
fn format_duration(d: Duration) -> String {
    let millis = d.as_millis();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if millis != 0 && millis.is_multiple_of(size) {
            return format!("{}{unit}", millis / size);
        }
    }
    if millis == 0 {
        "0s".to_owned()
    } else {
        format!("{millis}ms")
    }
}

struct Walker<'t, 'e> {
    /// The original file text (template errors point into string values).
    text: &'t str,
    out: Findings,
    secrets: SecretResolver<'e>,
    /// Resolves `[store] url`: the operator commands read it for real even where they
    /// leave every other secret unread (they need the database, nothing else).
    store_secrets: SecretResolver<'e>,
    /// Reads `[store] ca_file` (the environment of `[store] url`: read for real).
    store_env: &'e dyn Environment,
}

impl Walker<'_, '_> {
    fn config(&mut self, root: &Section<'_, '_>, path: &Path) -> Config {
        root.reject_unknown(&ROOT_KEYS, &mut self.out);

        let server = match root.child("server", &mut self.out) {
            Some(s) => self.server(&s),
            None => default_server(),
        };
        let store = match root.child("store", &mut self.out) {
            Some(s) => self.store(&s, path),
            None => default_store(),
        };
        let delivery = match root.child("delivery", &mut self.out) {
            Some(s) => {
                s.reject_unknown(&DELIVERY_KEYS, &mut self.out);
                self.delivery(&s, &default_delivery())
            }
            None => default_delivery(),
        };

        let source_tables = self.named_tables(root, "source");
        let target_tables = self.named_tables(root, "target");
        let integration_tables = self.named_tables(root, "integration");

        let source_is_table = root
            .get("source")
            .is_none_or(|f| matches!(f.node.get_ref(), DeValue::Table(_)));
        if source_tables.is_empty() && source_is_table {
            self.out.missing(
                root.span.clone(),
                "at least one [source.NAME] table is required",
                Some(
                    "e.g. [source.ds24] with passphrase = { env = \"DS24_IPN_PASSPHRASE\" }".into(),
                ),
            );
        }
        let source_names: Vec<String> = source_tables.iter().map(|(n, _)| n.clone()).collect();
        let target_names: Vec<String> = target_tables.iter().map(|(n, _)| n.clone()).collect();

        let sources = source_tables
            .iter()
            .map(|(name, s)| (name.clone(), self.source(name, s)))
            .collect();
        let targets: BTreeMap<String, Target> = target_tables
            .iter()
            .map(|(name, s)| (name.clone(), self.target(name, s, &delivery)))
            .collect();
        let integrations: BTreeMap<String, Integration> = integration_tables
            .iter()
            .map(|(name, s)| {
                let integration = self.integration(name, s, &source_names, &target_names, &targets);
                (name.clone(), integration)
            })
            .collect();
        if integration_tables.is_empty() {
            self.out.warning(
                root.span.clone(),
                "no [integration.NAME] table: IPNs are verified and stored, but nothing is sent \
                 to Konnektive",
                None,
            );
        }

        let alerts = root.child("alerts", &mut self.out).map(|s| self.alerts(&s));

        Config {
            path: path.to_path_buf(),
            server,
            store,
            delivery,
            alerts,
            sources,
            targets,
            integrations,
        }
    }

    /// The sub-tables of `[kind]` (`[source.*]`, …) with valid names reported on the way.
    fn named_tables<'a, 'i>(
        &mut self,
        root: &Section<'a, 'i>,
        kind: &str,
    ) -> Vec<(String, Section<'a, 'i>)> {
        let parent_field = root.get(kind);
        if let Some(f) = &parent_field
            && !matches!(f.node.get_ref(), DeValue::Table(_))
        {
            f.error_hint(
                &mut self.out,
                format!(
                    "expected [{kind}.NAME] tables, found {}",
                    type_name(f.node.get_ref())
                ),
                format!("write [{kind}.{}] (not [[{kind}]])", example_name(kind)),
            );
            return Vec::new();
        }
        let Some(parent) = parent_field.and_then(|f| f.section(&mut self.out)) else {
            return Vec::new();
        };
        let mut tables = Vec::new();
        for field in parent.fields() {
            if !is_table_name(&field.key) {
                self.out.error_hint(
                    field.key_span.clone(),
                    format!("invalid {kind} name `{}`", field.key),
                    "names use letters, digits, `_` and `-`",
                );
            }
            if let DeValue::Table(_) = field.node.get_ref() {
                if let Some(section) = field.section(&mut self.out) {
                    tables.push((field.key.clone(), section));
                }
            } else {
                field.error_hint(
                    &mut self.out,
                    format!(
                        "expected a [{kind}.NAME] table, found {}",
                        type_name(field.node.get_ref())
                    ),
                    format!(
                        "each {kind} is a table of its own, e.g. [{kind}.{}]",
                        example_name(kind)
                    ),
                );
            }
        }
        tables
    }

    fn server(&mut self, s: &Section<'_, '_>) -> Server {
        s.reject_unknown(&SERVER_KEYS, &mut self.out);
        let mut server = default_server();
        if let Some(f) = s.get("listen")
            && let Some(text) = f.str(&mut self.out)
        {
            match text.parse::<SocketAddr>() {
                Ok(addr) => server.listen = addr,
                Err(_) => f.error_hint(
                    &mut self.out,
                    format!("`{text}` is not an IP address and port"),
                    "e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"",
                ),
            }
        }
        if let Some(f) = s.get("max_body_bytes")
            && let Some(n) = f.int_in(MIN_BODY_BYTES as i128, usize::MAX as i128, &mut self.out)
            && let Ok(n) = usize::try_from(n)
        {
            server.max_body_bytes = n;
        }
        if let Some(f) = s.get("public_url") {
            server.public_url = self.http_url(&f);
        }
        if let Some(f) = s.get("max_connections")
            && let Some(n) = f.int_in(1, i128::from(u32::MAX), &mut self.out)
            && let Ok(n) = usize::try_from(n)
        {
            server.max_connections = n;
        }
        server
    }

    /// `[store]`; `config_path` is the configuration file's (a relative `ca_file` is
    /// relative to its directory).
    fn store(&mut self, s: &Section<'_, '_>, config_path: &Path) -> Store {
        s.reject_unknown(&STORE_KEYS, &mut self.out);
        let mut store = default_store();
        if let Some(f) = s.get("path")
            && let Some(path) = f.non_empty_str(&mut self.out)
        {
            store.path = PathBuf::from(path);
        }
        if let Some(f) = s.get("url") {
            if s.get("path").is_some() {
                f.error_hint(
                    &mut self.out,
                    "set either `path` (one daemon on a SQLite file) or `url` (PostgreSQL, \
                     shared by several daemons), not both",
                    "remove one of the two keys",
                );
            }
            store.url = self
                .store_secrets
                .resolve(&f, &mut self.out)
                .filter(|url| postgres_url_is_valid(url, &f, &mut self.out));
        }
        if let Some(f) = s.get("ca_file") {
            if s.get("url").is_none() {
                f.error_hint(
                    &mut self.out,
                    "is the CA of a PostgreSQL server (`url` with `?sslmode=require`); a \
                     SQLite store (`path`) has no server to verify",
                    "remove `ca_file`, or set `url` instead of `path`",
                );
            } else if let Some(name) = f.non_empty_str(&mut self.out) {
                let file = config_path
                    .parent()
                    .map_or_else(|| PathBuf::from(name), |dir| dir.join(name));
                let read = self
                    .store_env
                    .read_file(&file)
                    .map_err(CaFileError::from)
                    .and_then(|pem| parse_ca_pem(pem.as_bytes()));
                match read {
                    Ok(_) => store.ca_file = Some(file),
                    Err(e) => f.error(&mut self.out, format!("{}: {e}", file.display())),
                }
            }
            if let Some(url) = &store.url
                && !store_url_requires_tls(url)
            {
                self.out.warning(
                    f.span(),
                    "`ca_file` in [store] is not used: `url` does not ask for TLS \
                     (`sslmode=require`; no sslmode, `prefer` and `disable` mean no TLS)",
                    Some("add `?sslmode=require` to `url`, or remove `ca_file`".to_owned()),
                );
            }
        }
        store
    }

    /// `base` with the durations `s` sets; `retry_initial <= retry_max` checked on the result.
    fn delivery(&mut self, s: &Section<'_, '_>, base: &Delivery) -> Delivery {
        let mut d = base.clone();
        for (key, slot) in [
            ("timeout", &mut d.timeout),
            ("retry_initial", &mut d.retry_initial),
            ("retry_max", &mut d.retry_max),
            ("give_up_after", &mut d.give_up_after),
        ] {
            if let Some(f) = s.get(key)
                && let Some(value) = f.positive_duration(&mut self.out)
            {
                *slot = value;
            }
        }
        if d.retry_initial > d.retry_max {
            let (initial, max) = (
                format_duration(d.retry_initial),
                format_duration(d.retry_max),
            );
            if let Some(f) = s.get("retry_initial") {
                f.error(
                    &mut self.out,
                    format!("must not be longer than `retry_max` ({initial} > {max})"),
                );
            } else if let Some(f) = s.get("retry_max") {
                f.error(
                    &mut self.out,
                    format!("must not be shorter than `retry_initial` ({max} < {initial})"),
                );
            }
        }
        d
    }

    fn alerts(&mut self, s: &Section<'_, '_>) -> Alerts {
        s.reject_unknown(&ALERTS_KEYS, &mut self.out);
        let smtp_url = match s.get("smtp_url") {
            Some(f) => self.smtp_url(&f).unwrap_or_default(),
            None => {
                s.missing("smtp_url", &mut self.out);
                String::new()
            }
        };
        let username_field = s.get("smtp_username");
        let password_field = s.get("smtp_password");
        let smtp_username = username_field
            .as_ref()
            .and_then(|f| f.non_empty_str(&mut self.out))
            .map(str::to_owned);
        let smtp_password = password_field
            .as_ref()
            .and_then(|f| self.secrets.resolve(f, &mut self.out));
        match (&username_field, &password_field) {
            (Some(f), None) => f.error(&mut self.out, "needs `smtp_password` as well"),
            (None, Some(f)) => f.error(&mut self.out, "needs `smtp_username` as well"),
            _ => {}
        }
        if let (Some(url_field), Some(_)) = (s.get("smtp_url"), &password_field)
            && sends_password_in_clear(&smtp_url)
        {
            self.out.warning(
                url_field.span(),
                format!(
                    "{}: plain smtp:// without `?tls=required` to a remote host can send the SMTP password unencrypted",
                    url_field.what()
                ),
                Some("add `?tls=required` (STARTTLS) or use smtps://".into()),
            );
        }
        let from = match s.get("from") {
            Some(f) => email(&f, &mut self.out).unwrap_or_default(),
            None => {
                s.missing("from", &mut self.out);
                String::new()
            }
        };
        let to = match s.get("to") {
            Some(f) => {
                let list = email_list(&f, &mut self.out);
                if matches!(f.node.get_ref(), DeValue::Array(items) if items.is_empty()) {
                    f.error_hint(
                        &mut self.out,
                        "must list at least one address",
                        "alerts that belong to no integration (a paused target) go only to `to`",
                    );
                }
                list.unwrap_or_default()
            }
            None => {
                s.missing("to", &mut self.out);
                Vec::new()
            }
        };
        let digest_window = s
            .get("digest_window")
            .and_then(|f| f.positive_duration(&mut self.out))
            .unwrap_or(Duration::from_secs(DEFAULT_DIGEST_WINDOW_SECS));
        Alerts {
            smtp_url,
            smtp_username,
            smtp_password,
            from,
            to,
            digest_window,
        }
    }

    fn source(&mut self, name: &str, s: &Section<'_, '_>) -> Source {
        s.reject_unknown(&SOURCE_KEYS, &mut self.out);
        let mut passphrases = Vec::new();
        match (s.get("passphrase"), s.get("passphrases")) {
            (Some(_), Some(list)) => list.error(
                &mut self.out,
                "set either `passphrase` or `passphrases`, not both",
            ),
            (None, None) if s.has_misspelling_of("passphrase") => {}
            (None, None) => self.out.missing(
                s.span.clone(),
                format!("missing required key `passphrase` {}", s.place()),
                Some("or `passphrases = [ …, … ]` while a passphrase is rotated".into()),
            ),
            (Some(one), None) => passphrases.extend(self.secrets.resolve(&one, &mut self.out)),
            (None, Some(list)) => {
                if let Some(items) = list.items(&mut self.out) {
                    if items.is_empty() {
                        list.error(&mut self.out, "must list at least one passphrase");
                    }
                    for item in &items {
                        passphrases.extend(self.secrets.resolve(item, &mut self.out));
                    }
                }
            }
        }
        let api_key = s
            .get("api_key")
            .and_then(|f| self.secrets.resolve(&f, &mut self.out));
        let api_url = s
            .get("api_url")
            .and_then(|f| self.http_url(&f))
            .unwrap_or_else(|| DEFAULT_DS24_API_URL.to_owned());
        let audit_every = s.get("audit_every").and_then(|f| {
            let every = f.positive_duration(&mut self.out)?;
            if s.get("api_key").is_none() {
                f.error_hint(
                    &mut self.out,
                    "needs `api_key` in the same table",
                    "the audit asks the Digistore24 API (a read-only key is enough)",
                );
            }
            Some(every)
        });
        Source {
            name: name.to_owned(),
            passphrases,
            api_key,
            api_url,
            audit_every,
        }
    }

    fn target(&mut self, name: &str, s: &Section<'_, '_>, delivery: &Delivery) -> Target {
        s.reject_unknown(&TARGET_KEYS, &mut self.out);
        let webhook = match s.get("kind") {
            Some(f) => match f.str(&mut self.out) {
                Some("webhook") => true,
                Some("konnektive") | None => false,
                Some(kind) => {
                    f.error_hint(
                        &mut self.out,
                        format!("unknown target kind `{kind}`"),
                        "the kinds are \"konnektive\" and \"webhook\"",
                    );
                    false
                }
            },
            None => {
                s.missing("kind", &mut self.out);
                false
            }
        };
        let (own, other, kind_name) = if webhook {
            (&WEBHOOK_TARGET_KEYS, &KONNEKTIVE_TARGET_KEYS, "webhook")
        } else {
            (&KONNEKTIVE_TARGET_KEYS, &WEBHOOK_TARGET_KEYS, "konnektive")
        };
        for key in other {
            if let Some(f) = s.get(key) {
                self.out.error_hint(
                    f.key_span.clone(),
                    format!(
                        "{}: a {kind_name} target has no `{key}` (it belongs to a {} target)",
                        f.what(),
                        if webhook { "konnektive" } else { "webhook" }
                    ),
                    format!("the keys of a {kind_name} target are {}", own.join(", ")),
                );
            }
        }
        let kind = if webhook {
            TargetKind::Webhook(self.webhook(s))
        } else {
            TargetKind::Konnektive
        };
        let base_url = if webhook {
            String::new()
        } else {
            self.konnektive_base_url(s)
        };
        let (login_id, password) = if webhook {
            (String::new(), None)
        } else {
            self.konnektive_login(s)
        };
        let requests_per_second = s
            .get("requests_per_second")
            .and_then(|f| {
                let n = f.number(&mut self.out)?;
                if n.is_finite() && n > 0.0 {
                    Some(n)
                } else {
                    f.error(&mut self.out, format!("must be greater than 0, found {n}"));
                    None
                }
            })
            .unwrap_or(DEFAULT_REQUESTS_PER_SECOND);
        let burst = s
            .get("burst")
            .and_then(|f| f.u32_at_least(1, &mut self.out))
            .unwrap_or(DEFAULT_BURST);
        let max_in_flight = s
            .get("max_in_flight")
            .and_then(|f| f.u32_at_least(1, &mut self.out))
            .unwrap_or(DEFAULT_MAX_IN_FLIGHT);
        let delivery = self.delivery(s, delivery);
        Target {
            name: name.to_owned(),
            kind,
            base_url,
            login_id,
            password: password.unwrap_or_else(|| SecretString::from(String::new())),
            requests_per_second,
            burst,
            max_in_flight,
            delivery,
        }
    }

    /// A webhook target's `url` (required), `secret` and `headers`.
    fn webhook(&mut self, s: &Section<'_, '_>) -> Webhook {
        let url = match s.get("url") {
            Some(f) => self.http_url(&f).unwrap_or_default(),
            None => {
                s.missing("url", &mut self.out);
                String::new()
            }
        };
        let secret = s.get("secret").and_then(|f| {
            let secret = self.secrets.resolve(&f, &mut self.out)?;
            if secret.expose_secret().starts_with("whsec_")
                && crate::connectors::webhook::signing_key(secret.expose_secret()).is_none()
            {
                f.error_hint(
                    &mut self.out,
                    "a secret that starts with `whsec_` must continue in base64",
                    "copy the whole secret the receiver shows, or use one without `whsec_`",
                );
                return None;
            }
            Some(secret)
        });
        let mut headers = Vec::new();
        if let Some(table) = s.get("headers").and_then(|f| f.section(&mut self.out)) {
            for entry in table.fields() {
                let valid = !entry.key.is_empty()
                    && entry
                        .key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
                let reserved = entry.key.eq_ignore_ascii_case("content-type")
                    || entry.key.to_ascii_lowercase().starts_with("webhook-");
                if !valid || reserved {
                    self.out.error(
                        entry.key_span.clone(),
                        format!(
                            "{}: {}",
                            entry.what(),
                            if reserved {
                                "is set by ipn-bridge itself"
                            } else {
                                "is not a header name (letters, digits, `-`, `_`)"
                            }
                        ),
                    );
                    continue;
                }
                if let Some(value) = self.secrets.resolve(&entry, &mut self.out) {
                    headers.push((entry.key.clone(), value));
                }
            }
        }
        Webhook {
            url,
            secret,
            headers,
        }
    }

    /// A Konnektive target's `base_url` (default [`DEFAULT_BASE_URL`]).
    fn konnektive_base_url(&mut self, s: &Section<'_, '_>) -> String {
        s.get("base_url")
            .and_then(|f| {
                let url = self.http_url(&f)?;
                if let Some(rest) = url.strip_prefix("http://")
                    && !is_loopback_authority(rest.split('/').next().unwrap_or(""))
                {
                    self.out.warning(
                        f.span(),
                        format!(
                            "{}: plain http to a remote host sends the API password unencrypted",
                            f.what()
                        ),
                        Some("use https://".into()),
                    );
                }
                Some(url)
            })
            .unwrap_or_else(|| DEFAULT_BASE_URL.to_owned())
    }

    /// A Konnektive target's `login_id` and `password` (both required).
    fn konnektive_login(&mut self, s: &Section<'_, '_>) -> (String, Option<SecretString>) {
        let login_id = match s.get("login_id") {
            Some(f) => f
                .non_empty_str(&mut self.out)
                .unwrap_or_default()
                .to_owned(),
            None => {
                s.missing("login_id", &mut self.out);
                String::new()
            }
        };
        let password = match s.get("password") {
            Some(f) => {
                let password = self.secrets.resolve(&f, &mut self.out);
                if let Some(p) = &password
                    && p.expose_secret().contains('&')
                {
                    f.error_hint(
                        &mut self.out,
                        "Konnektive API passwords must not contain `&`",
                        "give the API user a new password without `&`",
                    );
                }
                password
            }
            None => {
                s.missing("password", &mut self.out);
                None
            }
        };
        (login_id, password)
    }

    fn integration(
        &mut self,
        name: &str,
        s: &Section<'_, '_>,
        sources: &[String],
        targets: &[String],
        kinds: &BTreeMap<String, Target>,
    ) -> Integration {
        s.reject_unknown(&INTEGRATION_KEYS, &mut self.out);
        let source = self.reference(s, "source", sources);
        let target = self.reference(s, "target", targets);
        let webhook = kinds
            .get(&target)
            .is_some_and(|t| matches!(t.kind, TargetKind::Webhook(_)));
        if webhook {
            for key in KONNEKTIVE_INTEGRATION_KEYS {
                if let Some(f) = s.get(key) {
                    self.out.error_hint(
                        f.key_span.clone(),
                        format!(
                            "{}: target `{target}` is a webhook target, which gets the IPN as \
                             it came; `{key}` shapes a Konnektive order",
                            f.what()
                        ),
                        format!("remove `{key}`, or use a konnektive target"),
                    );
                }
            }
        }
        let flag = |w: &mut Self, key: &str, default: bool| {
            s.get(key)
                .and_then(|f| f.bool(&mut w.out))
                .unwrap_or(default)
        };
        let active = flag(self, "active", true);
        let addons = flag(self, "addons", true);
        let followup_payments = flag(self, "followup_payments", true);
        let test_orders = flag(self, "test_orders", false);
        let auto_approve = flag(self, "auto_approve", false);
        let campaign_id = match s.get("campaign_id") {
            Some(_) if webhook => 0,
            Some(f) => f.positive_id(&mut self.out).unwrap_or_default(),
            None if webhook => 0,
            None => {
                s.missing("campaign_id", &mut self.out);
                0
            }
        };
        let products = s
            .get("products")
            .map_or(ProductFilter::All, |f| self.products(&f));
        let languages = s
            .get("languages")
            .map(|f| self.languages(&f))
            .unwrap_or_default();
        let currencies = s
            .get("currencies")
            .map(|f| self.currencies(&f))
            .unwrap_or_default();
        let newsletter = s
            .get("newsletter")
            .and_then(|f| {
                let value = f.str(&mut self.out)?;
                match value {
                    "any" => Some(Newsletter::Any),
                    "opted_in" => Some(Newsletter::OptedIn),
                    other => {
                        f.error_hint(
                            &mut self.out,
                            format!("unknown value `{other}`"),
                            suggestion(other, &NEWSLETTER_VALUES),
                        );
                        None
                    }
                }
            })
            .unwrap_or(Newsletter::Any);
        let delay = s
            .get("delay")
            .and_then(|f| f.duration(&mut self.out))
            .unwrap_or(Duration::ZERO);
        let error_emails = s
            .get("error_emails")
            .and_then(|f| email_list(&f, &mut self.out))
            .unwrap_or_default();
        let order_ref_field = s
            .get("order_ref_field")
            .and_then(|f| {
                let value = f.str(&mut self.out)?;
                if ORDER_REF_FIELDS.contains(&value) {
                    Some(value.to_owned())
                } else {
                    f.error_hint(
                        &mut self.out,
                        format!("`{value}` is not one of custom1 … custom5"),
                        suggestion(value, &ORDER_REF_FIELDS),
                    );
                    None
                }
            })
            .unwrap_or_else(|| DEFAULT_ORDER_REF_FIELD.to_owned());
        let product_map = match s.get("product_map") {
            _ if webhook => ProductMap::default(),
            Some(f) => match f.section(&mut self.out) {
                Some(map) => self.product_map(&map),
                None => ProductMap::default(),
            },
            None => {
                if !s.has_misspelling_of("product_map") {
                    self.out.missing(
                        s.span.clone(),
                        format!("missing required table `product_map` {}", s.place()),
                        Some(format!(
                            "add [integration.{name}.product_map] with entries \
                             `DS24_PRODUCT_ID = CAMPAIGN_PRODUCT_ID`, e.g. 412346 = 31"
                        )),
                    );
                }
                ProductMap::default()
            }
        };
        if let (ProductFilter::List(ids), Some(f)) = (&products, s.get("products"))
            && !webhook
            && product_map.fallback.is_none()
        {
            for id in ids
                .iter()
                .filter(|id| !product_map.entries.contains_key(id))
            {
                self.out.warning(
                    f.span(),
                    format!(
                        "{}: product {id} has no entry in [integration.{name}.product_map] and \
                         there is no \"*\" entry; its orders will be skipped",
                        f.what()
                    ),
                    None,
                );
            }
        }
        let on = match s.get("on") {
            Some(f) => match f.section(&mut self.out) {
                Some(on) => self.on(&on, kinds.get(&target)),
                None => (BTreeMap::new(), BTreeMap::new()),
            },
            None if s.has_misspelling_of("on") => (BTreeMap::new(), BTreeMap::new()),
            None => {
                self.out.missing(
                    s.span.clone(),
                    format!("missing required table `on` {}", s.place()),
                    Some(format!(
                        "add [integration.{name}.on] with e.g. payment = \"import_order\""
                    )),
                );
                (BTreeMap::new(), BTreeMap::new())
            }
        };
        let (on, on_other) = on;
        let fields = s
            .get("fields")
            .and_then(|f| f.section(&mut self.out))
            .map(|fields| self.fields(&fields, &order_ref_field))
            .unwrap_or_default();
        let fallback_address = s
            .get("fallback_address")
            .and_then(|f| f.section(&mut self.out))
            .map(|table| self.fallback_address(&table))
            .unwrap_or_default();
        Integration {
            name: name.to_owned(),
            source,
            target,
            active,
            campaign_id,
            products,
            addons,
            languages,
            followup_payments,
            test_orders,
            currencies,
            newsletter,
            delay,
            error_emails,
            order_ref_field,
            auto_approve,
            product_map,
            on,
            on_other,
            fields,
            fallback_address,
        }
    }

    /// `[integration.NAME.fallback_address]`: strings only, not empty, within Konnektive's
    /// length of the field each fills; a key not written keeps its default.
    fn fallback_address(&mut self, table: &Section<'_, '_>) -> FallbackAddress {
        let keys: Vec<&str> = FALLBACK_ADDRESS_KEYS.iter().map(|(k, _)| *k).collect();
        table.reject_unknown(&keys, &mut self.out);
        let mut address = FallbackAddress::default();
        for (key, param) in FALLBACK_ADDRESS_KEYS {
            let Some(field) = table.get(key) else {
                continue;
            };
            let Some(value) = field.non_empty_str(&mut self.out).map(str::trim) else {
                continue;
            };
            let chars = value.chars().count();
            if let Some(max) = max_chars(param)
                && chars > max
            {
                field.error_hint(
                    &mut self.out,
                    format!("{chars} characters; Konnektive's `{param}` takes at most {max}"),
                    "shorten it; the bridge never cuts a fallback value",
                );
                continue;
            }
            let value = value.to_owned();
            match key {
                "address1" => address.address1 = value,
                "city" => address.city = value,
                "postal_code" => address.postal_code = value,
                _ => address.state = Some(value),
            }
        }
        address
    }

    /// The `source` / `target` an integration uses: as named, or the only one there is.
    fn reference(&mut self, s: &Section<'_, '_>, kind: &str, defined: &[String]) -> String {
        if let Some(f) = s.get(kind) {
            let Some(name) = f.non_empty_str(&mut self.out) else {
                return String::new();
            };
            if defined.iter().any(|d| d == name) {
                return name.to_owned();
            }
            let candidates: Vec<&str> = defined.iter().map(String::as_str).collect();
            let hint = if candidates.is_empty() {
                format!("no [{kind}.NAME] table is defined")
            } else {
                suggestion(name, &candidates)
            };
            self.out.missing(
                f.span(),
                format!("{}: there is no [{kind}.{name}]", f.what()),
                Some(hint),
            );
            return String::new();
        }
        match defined {
            [only] => only.clone(),
            // A missing source is reported once, at the top level.
            [] if kind == "source" => String::new(),
            [] => {
                self.out.missing(
                    s.span.clone(),
                    format!(
                        "{} needs a {kind}, but no [{kind}.NAME] table is defined",
                        s.label()
                    ),
                    None,
                );
                String::new()
            }
            many => {
                self.out.missing(
                    s.span.clone(),
                    format!(
                        "{} must name its `{kind}`: there are {} {kind}s",
                        s.label(),
                        many.len()
                    ),
                    Some(format!("{kind} = \"{}\"", many[0])),
                );
                String::new()
            }
        }
    }

    fn products(&mut self, f: &Field<'_, '_>) -> ProductFilter {
        match f.node.get_ref() {
            DeValue::String(s) if s == "all" => ProductFilter::All,
            DeValue::Array(_) => {
                let items = f.items(&mut self.out).unwrap_or_default();
                if items.is_empty() {
                    f.error_hint(
                        &mut self.out,
                        "an empty list matches no product",
                        "write \"all\", list product ids, or set active = false",
                    );
                }
                ProductFilter::List(
                    items
                        .iter()
                        .filter_map(|item| item.positive_id(&mut self.out))
                        .collect(),
                )
            }
            _ => {
                f.error_hint(
                    &mut self.out,
                    "expected \"all\" or a list of Digistore24 product ids",
                    "e.g. products = [412346, 412350]",
                );
                ProductFilter::All
            }
        }
    }

    fn languages(&mut self, f: &Field<'_, '_>) -> Vec<String> {
        let mut languages = Vec::new();
        for item in f.items(&mut self.out).unwrap_or_default() {
            let Some(code) = item.str(&mut self.out) else {
                continue;
            };
            if code.len() == 2 && code.bytes().all(|b| b.is_ascii_alphabetic()) {
                languages.push(code.to_ascii_lowercase());
            } else {
                item.error_hint(
                    &mut self.out,
                    format!("`{code}` is not a two-letter language code"),
                    "e.g. \"de\", \"en\"",
                );
            }
        }
        languages
    }

    /// `currencies = ["USD", "eur"]`: three-letter codes (ISO 4217 shape), kept upper case.
    fn currencies(&mut self, f: &Field<'_, '_>) -> Vec<String> {
        let mut currencies = Vec::new();
        for item in f.items(&mut self.out).unwrap_or_default() {
            let Some(code) = item.str(&mut self.out) else {
                continue;
            };
            if code.len() == 3 && code.bytes().all(|b| b.is_ascii_alphabetic()) {
                currencies.push(code.to_ascii_uppercase());
            } else {
                item.error_hint(
                    &mut self.out,
                    format!("`{code}` is not a three-letter currency code"),
                    "e.g. \"EUR\", \"USD\"",
                );
            }
        }
        currencies
    }

    fn product_map(&mut self, map: &Section<'_, '_>) -> ProductMap {
        let mut product_map = ProductMap::default();
        let entries = map.fields();
        if entries.is_empty() {
            self.out.error_hint(
                map.span.clone(),
                format!("{} needs at least one entry", map.label()),
                "e.g. 412346 = 31, or \"*\" = 31 for every product",
            );
        }
        for entry in entries {
            let value = entry.positive_id(&mut self.out);
            if entry.key == "*" {
                product_map.fallback = value;
                continue;
            }
            let id = if entry.key.bytes().all(|b| b.is_ascii_digit()) {
                entry.key.parse::<u64>().ok().filter(|id| *id > 0)
            } else {
                None
            };
            let Some(id) = id else {
                self.out.error_hint(
                    entry.key_span.clone(),
                    format!(
                        "`{}` {} is not a Digistore24 product id",
                        entry.key,
                        map.place()
                    ),
                    "keys are numeric product ids such as 412346, or \"*\" for every other product",
                );
                continue;
            };
            match product_map.entries.entry(id) {
                Entry::Occupied(_) => self.out.error(
                    entry.key_span.clone(),
                    format!("product {id} is mapped twice {}", map.place()),
                ),
                Entry::Vacant(slot) => {
                    if let Some(value) = value {
                        slot.insert(value);
                    }
                }
            }
        }
        product_map
    }

    fn on(
        &mut self,
        on: &Section<'_, '_>,
        target: Option<&Target>,
    ) -> (
        BTreeMap<OrderEvent, ActionKind>,
        BTreeMap<OtherEvent, ActionKind>,
    ) {
        let mut actions = BTreeMap::new();
        let mut others = BTreeMap::new();
        let entries = on.fields();
        if entries.is_empty() {
            self.out.error_hint(
                on.span.clone(),
                format!("{} needs at least one event", on.label()),
                "e.g. payment = \"import_order\"",
            );
        }
        let events: Vec<&str> = OrderEvent::ALL
            .iter()
            .map(|e| e.config_name())
            .chain(OtherEvent::ALL.iter().map(|e| e.config_name()))
            .collect();
        let action_names: Vec<&str> = ActionKind::ALL.iter().map(|a| a.config_name()).collect();
        for entry in entries {
            let event = OrderEvent::from_config_name(&entry.key);
            let other = OtherEvent::from_config_name(&entry.key);
            if entry.key == "connection_test" {
                self.out.error_hint(
                    entry.key_span.clone(),
                    format!(
                        "`connection_test` {} is Digistore24's test of the IPN connection; it \
                         is answered, stored and never forwarded",
                        on.place()
                    ),
                    "remove it",
                );
            } else if event.is_none() && other.is_none() {
                let message = format!(
                    "unknown order event `{}` {}; valid events: {}",
                    entry.key,
                    on.place(),
                    events.join(", ")
                );
                match closest(&entry.key, events.iter().copied()) {
                    Some(c) => self.out.error_hint(
                        entry.key_span.clone(),
                        message,
                        format!("did you mean `{c}`?"),
                    ),
                    None => self.out.error(entry.key_span.clone(), message),
                }
            }
            let Some(name) = entry.str(&mut self.out) else {
                continue;
            };
            let action = ActionKind::from_config_name(name);
            if action.is_none() {
                let message = format!(
                    "unknown action `{name}`; valid actions: {}",
                    action_names.join(", ")
                );
                match closest(name, action_names.iter().copied()) {
                    Some(c) => {
                        entry.error_hint(&mut self.out, message, format!("did you mean `{c}`?"))
                    }
                    None => entry.error(&mut self.out, message),
                }
            }
            if let (Some(action), Some(target)) = (action, target)
                && let Some(why) = kind_cannot(&target.kind, action)
            {
                entry.error_hint(
                    &mut self.out,
                    format!(
                        "target `{}` is a {} target, which cannot `{}`",
                        target.name,
                        target.kind.config_name(),
                        action.config_name()
                    ),
                    why,
                );
            }
            if let (Some(other), Some(action)) = (other, action) {
                if matches!(action, ActionKind::Forward | ActionKind::Ignore) {
                    others.insert(other, action);
                } else {
                    entry.error_hint(
                        &mut self.out,
                        format!(
                            "{} events carry no order to {}",
                            other.config_name(),
                            action.config_name().replace('_', " ")
                        ),
                        "use \"forward\" (to a webhook target) or \"ignore\"",
                    );
                }
            }
            if let (Some(event), Some(action)) = (event, action) {
                actions.insert(event, action);
            }
        }
        (actions, others)
    }

    fn fields(
        &mut self,
        fields: &Section<'_, '_>,
        order_ref_field: &str,
    ) -> Vec<(String, Template)> {
        let mut result = Vec::new();
        for entry in fields.fields() {
            let key = entry.key.as_str();
            if !is_name(key) {
                self.out.error_hint(
                    entry.key_span.clone(),
                    format!("invalid Konnektive field name `{key}` {}", fields.place()),
                    "field names are letters, digits and `_`",
                );
            } else if RESERVED_FIELDS.contains(&key) {
                self.out.error(
                    entry.key_span.clone(),
                    format!(
                        "`{key}` {} cannot be set: the API credentials come from [target.NAME]",
                        fields.place()
                    ),
                );
            } else if key == order_ref_field {
                self.out.error_hint(
                    entry.key_span.clone(),
                    format!(
                        "`{key}` {} is the integration's `order_ref_field`, which carries the \
                         bridge's order reference",
                        fields.place()
                    ),
                    "use another field here, or set order_ref_field to another of custom1 … custom5",
                );
            }
            let Some(text) = entry.str(&mut self.out) else {
                continue;
            };
            match parse_template(text) {
                Ok(template) => result.push((key.to_owned(), template)),
                Err(e) => {
                    let at = self.offset_in_string(&entry, text, e.offset);
                    self.out
                        .error(at..at, format!("{}: {}", entry.what(), e.message));
                }
            }
        }
        result
    }

    /// The file offset of byte `offset` of string value `value` when it is written without
    /// escapes (the common case), else the start of the value.
    fn offset_in_string(&self, field: &Field<'_, '_>, value: &str, offset: usize) -> usize {
        let span = field.span();
        match self.text.get(span.clone()) {
            Some(raw)
                if raw.len() == value.len() + 2 && raw.get(1..raw.len() - 1) == Some(value) =>
            {
                span.start + 1 + offset
            }
            _ => span.start,
        }
    }

    /// An `http://` or `https://` URL without query, fragment or credentials; trailing `/`
    /// removed.
    fn http_url(&mut self, f: &Field<'_, '_>) -> Option<String> {
        let url = f.str(&mut self.out)?;
        let Some(rest) = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
        else {
            f.error_hint(
                &mut self.out,
                format!("`{url}` is not an http:// or https:// URL"),
                "e.g. \"https://ipn.example.com\"",
            );
            return None;
        };
        let authority = rest.split('/').next().unwrap_or("");
        let problem = if url.chars().any(char::is_whitespace) {
            Some("must not contain spaces")
        } else if authority.is_empty() {
            Some("has no host")
        } else if authority.contains('@') {
            Some("must not contain credentials")
        } else if url.contains('?') || url.contains('#') {
            Some("must not contain a query or fragment")
        } else {
            None
        };
        if let Some(problem) = problem {
            f.error(&mut self.out, format!("URL {problem}"));
            return None;
        }
        Some(url.trim_end_matches('/').to_owned())
    }

    fn smtp_url(&mut self, f: &Field<'_, '_>) -> Option<String> {
        let url = f.str(&mut self.out)?;
        let Some(rest) = url
            .strip_prefix("smtps://")
            .or_else(|| url.strip_prefix("smtp://"))
        else {
            f.error_hint(
                &mut self.out,
                "expected an smtp:// or smtps:// URL",
                "e.g. \"smtp://mail.example.com:587?tls=required\"",
            );
            return None;
        };
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        if authority.contains('@') {
            // Do not repeat the URL: it holds credentials.
            f.error_hint(
                &mut self.out,
                "must not contain credentials",
                "use smtp_username and smtp_password = { env = \"…\" }",
            );
            return None;
        }
        if authority.is_empty() || url.chars().any(char::is_whitespace) {
            f.error(
                &mut self.out,
                format!("`{url}` has no host or contains spaces"),
            );
            return None;
        }
        Some(url.to_owned())
    }
}

/// An example table name for hints.
/// Why a target of `kind` cannot perform `action` (a hint naming what it can), or `None`
/// when it can.
fn kind_cannot(kind: &TargetKind, action: ActionKind) -> Option<&'static str> {
    match (kind, action) {
        (_, ActionKind::Ignore) => None,
        (TargetKind::Webhook(_), ActionKind::Forward) => None,
        (TargetKind::Webhook(_), _) => {
            Some("a webhook target forwards events: use \"forward\" (or \"ignore\")")
        }
        (TargetKind::Konnektive, ActionKind::Forward) => Some(
            "forward needs a webhook target; a Konnektive target imports, refunds, charges \
             back and cancels",
        ),
        (TargetKind::Konnektive, _) => None,
    }
}

fn example_name(kind: &str) -> &'static str {
    match kind {
        "source" => "ds24",
        "target" => "konnektive",
        _ => "main",
    }
}

/// Whether an (already validated) `smtp_url` lets the password travel in clear text: plain
/// `smtp://` to a non-loopback host without STARTTLS required. lettre reads the `tls` query
/// parameter: absent means no TLS at all, `opportunistic` lets a man in the middle strip
/// STARTTLS, only `required` refuses to authenticate without it (`smtps://` is TLS from the
/// first byte).
fn sends_password_in_clear(smtp_url: &str) -> bool {
    let Some(rest) = smtp_url.strip_prefix("smtp://") else {
        return false;
    };
    let (authority, query) = match rest.split_once('?') {
        Some((before, query)) => (before.split('/').next().unwrap_or(""), query),
        None => (rest.split('/').next().unwrap_or(""), ""),
    };
    let tls_required = query.split('&').any(|pair| pair == "tls=required");
    !tls_required && !is_loopback_authority(authority)
}

/// `localhost`, `127.x.x.x` or `[::1]`, with or without a port.
fn is_loopback_authority(authority: &str) -> bool {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        authority.split(':').next().unwrap_or("")
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A string that looks like an e-mail address (contains `@`).
fn email(f: &Field<'_, '_>, out: &mut Findings) -> Option<String> {
    let value = f.non_empty_str(out)?;
    if value.contains('@') {
        Some(value.to_owned())
    } else {
        f.error(out, format!("`{value}` is not an e-mail address"));
        None
    }
}

fn email_list(f: &Field<'_, '_>, out: &mut Findings) -> Option<Vec<String>> {
    let items = f.items(out)?;
    Some(items.iter().filter_map(|item| email(item, out)).collect())
}
