//! Tests of the whole loader through its public API (`parse`, `load`), with a fake
//! [`Environment`]. Smaller units (durations, templates, positions, syntax recovery) are
//! tested next to their code.

use super::*;
use crate::domain::{ActionKind, OrderEvent};
use secrecy::ExposeSecret;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Variables, files and a credentials directory, all in memory.
#[derive(Default)]
struct FakeEnv {
    vars: HashMap<String, String>,
    files: HashMap<PathBuf, String>,
    credentials: Option<PathBuf>,
}

impl FakeEnv {
    fn var(mut self, name: &str, value: &str) -> Self {
        self.vars.insert(name.into(), value.into());
        self
    }

    fn file(mut self, path: &str, contents: &str) -> Self {
        self.files.insert(path.into(), contents.into());
        self
    }

    fn credentials(mut self, dir: &str) -> Self {
        self.credentials = Some(dir.into());
        self
    }
}

impl Environment for FakeEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }

    fn read_file(&self, path: &Path) -> std::io::Result<String> {
        self.files.get(path).cloned().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory")
        })
    }

    fn credentials_directory(&self) -> Option<PathBuf> {
        self.credentials.clone()
    }
}

const FILE: &str = "connectors.toml";

fn parse_with(text: &str, env: &FakeEnv) -> Result<Loaded, ConfigErrors> {
    parse(text, Path::new(FILE), env)
}

fn ok(text: &str) -> Loaded {
    match parse_with(text, &FakeEnv::default()) {
        Ok(loaded) => loaded,
        Err(e) => panic!("expected a valid file, got:\n{e}"),
    }
}

fn errors(text: &str) -> ConfigErrors {
    match parse_with(text, &FakeEnv::default()) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e,
    }
}

/// The SPEC §4 example, verbatim.
const SPEC_EXAMPLE: &str = r##"
[server]
listen = "127.0.0.1:8080"                 # default
max_body_bytes = 65536                    # default
public_url = "https://ipn.example.com"    # optional: lets test-connection send a signed test IPN through the real front door
max_connections = 512                     # concurrent client connections; beyond it new ones are refused (a metric counts them)

[store]
path = "ipn-bridge.db"                    # default; SQLite file (WAL). Under systemd: /var/lib/ipn-bridge/ipn-bridge.db

[delivery]                                # defaults for every target; a [target.*] table may override them
timeout = "30s"
retry_initial = "30s"                     # first retry delay; grows exponentially with jitter
retry_max = "1h"                          # longest delay between two attempts
give_up_after = "10d"                     # then the job is dead-lettered and an alert is sent

[alerts]                                  # optional; without it, failures are only logged
smtp_url = "smtp://mail.example.com:587?tls=required"
smtp_username = "alerts@example.com"
smtp_password = { env = "IPN_BRIDGE_SMTP_PASSWORD" }
from = "ipn-bridge <alerts@example.com>"
to = ["ops@example.com"]                  # always told, besides each integration's error_emails
digest_window = "15m"                     # at most one mail per recipient per window; the rest is summarised in it

[source.ds24]                             # one Digistore24 IPN connection; its URL is {public_url}/ipn/ds24
passphrase = { env = "DS24_IPN_PASSPHRASE" }   # or passphrases = [ …, … ] during a rotation

[target.konnektive]                       # one Konnektive API user
kind = "konnektive"
base_url = "https://api.konnektive.com"   # default
login_id = "ds24bridge"
password = { env = "KONNEKTIVE_PASSWORD" }
requests_per_second = 2.0                 # default; token bucket shared by all integrations of this target
burst = 2                                 # default
max_in_flight = 1                         # default

[integration.main-campaign]               # one "IPN connection" of Digistore24's Konnektive form
source = "ds24"                           # may be left out when there is exactly one source
target = "konnektive"                     # may be left out when there is exactly one target
active = true                             # default true
campaign_id = 12
products = "all"                          # or a list of Digistore24 product ids: [412346, 412350]
addons = true                             # also when a listed product is bought as an add-on; default true
languages = []                            # order (product) languages; empty = all; e.g. ["de", "en"]
followup_payments = true                  # also rebill / installment payments (pay_sequence_no >= 2); default true
test_orders = false                       # also orders with api_mode=test; default false
currencies = []                           # order currencies this integration takes; empty = any. An order is never
                                          # booked into a Konnektive campaign of another currency (dead letter + alert)
newsletter = "any"                        # or "opted_in": only when the buyer opted in on the order form
delay = "0s"                              # IPN timing: hold the push this long after receipt; default 0s
error_emails = ["vendor@example.com"]     # told about this integration's failures
order_ref_field = "custom1"               # Konnektive field that carries our reference of the Digistore24 order; default custom1
auto_approve = false                      # approve imported orders held in Konnektive's QA queue (order/qa)

[integration.main-campaign.product_map]   # Digistore24 product id = Konnektive campaign product id
412346 = 31
412350 = 32
"*" = 33                                  # every other product ("All products" in Digistore24's form); without "*",
                                          # an unmapped product is skipped with a clear reason and an alert

[integration.main-campaign.on]            # the order events this integration handles, and what each does
payment = "import_order"
refund = "refund"
chargeback = "chargeback"
rebill_cancelled = "cancel_purchase"
# further events: payment_missed, payment_denial, rebill_resumed, last_paid_day; actions also include
# "cancel_order" and "ignore". An event not listed is recorded as skipped for this integration.

[integration.main-campaign.fallback_address]   # for orders without a postal address (digital products): Konnektive
address1 = "…"                            # requires one. Each key fills only what the IPN leaves empty; defaults
city = "…"                                # work without configuration (see README); the country always comes
postal_code = "…"                         # from the IPN. Optional: state
[integration.main-campaign.fields]        # extra Konnektive fields from IPN fields: "{name}" inserts IPN field `name`
custom2 = "{affiliate_name}"
sourceValue1 = "{campaignkey}"
"##;

#[test]
fn the_spec_example_parses_to_the_expected_values() {
    let env = FakeEnv::default()
        .var("DS24_IPN_PASSPHRASE", "ds24-pass")
        .var("KONNEKTIVE_PASSWORD", "konnektive-pass")
        .var("IPN_BRIDGE_SMTP_PASSWORD", "smtp-pass");
    let loaded = parse_with(SPEC_EXAMPLE, &env).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = loaded.config;
    assert_eq!(c.path, PathBuf::from(FILE));
    assert_eq!(
        c.server.listen,
        "127.0.0.1:8080".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.server.max_body_bytes, 65536);
    assert_eq!(c.server.max_connections, 512);
    assert_eq!(
        c.server.public_url.as_deref(),
        Some("https://ipn.example.com")
    );
    assert_eq!(c.store.path, PathBuf::from("ipn-bridge.db"));
    let delivery = Delivery {
        timeout: Duration::from_secs(30),
        retry_initial: Duration::from_secs(30),
        retry_max: Duration::from_secs(3600),
        give_up_after: Duration::from_secs(864_000),
    };
    assert_eq!(c.delivery, delivery);

    let alerts = c.alerts.as_ref().unwrap();
    assert_eq!(alerts.smtp_url, "smtp://mail.example.com:587?tls=required");
    assert_eq!(alerts.smtp_username.as_deref(), Some("alerts@example.com"));
    assert_eq!(
        alerts.smtp_password.as_ref().unwrap().expose_secret(),
        "smtp-pass"
    );
    assert_eq!(alerts.from, "ipn-bridge <alerts@example.com>");
    assert_eq!(alerts.to, vec!["ops@example.com".to_owned()]);
    assert_eq!(alerts.digest_window, Duration::from_secs(900));

    let source = &c.sources["ds24"];
    assert_eq!(source.name, "ds24");
    let passphrases: Vec<&str> = source
        .passphrases
        .iter()
        .map(|p| p.expose_secret())
        .collect();
    assert_eq!(passphrases, ["ds24-pass"]);

    let target = &c.targets["konnektive"];
    assert_eq!(target.name, "konnektive");
    assert_eq!(target.kind, TargetKind::Konnektive);
    assert_eq!(target.base_url, "https://api.konnektive.com");
    assert_eq!(target.login_id, "ds24bridge");
    assert_eq!(target.password.expose_secret(), "konnektive-pass");
    assert_eq!(target.requests_per_second, 2.0);
    assert_eq!(target.burst, 2);
    assert_eq!(target.max_in_flight, 1);
    assert_eq!(target.delivery, delivery);

    let i = &c.integrations["main-campaign"];
    assert_eq!(i.name, "main-campaign");
    assert_eq!(
        (i.source.as_str(), i.target.as_str()),
        ("ds24", "konnektive")
    );
    assert!(i.active && i.addons && i.followup_payments);
    assert!(!i.test_orders && !i.auto_approve);
    assert_eq!(i.campaign_id, 12);
    assert_eq!(i.products, ProductFilter::All);
    assert!(i.languages.is_empty());
    assert!(i.currencies.is_empty());
    assert_eq!(i.newsletter, Newsletter::Any);
    assert_eq!(i.delay, Duration::ZERO);
    assert_eq!(i.error_emails, vec!["vendor@example.com".to_owned()]);
    assert_eq!(i.order_ref_field, "custom1");
    assert_eq!(i.product_map.entries, [(412346, 31), (412350, 32)].into());
    assert_eq!(i.product_map.fallback, Some(33));
    assert_eq!(i.product_map.lookup(999), Some(33));
    assert_eq!(
        i.fallback_address,
        FallbackAddress {
            address1: "…".into(),
            city: "…".into(),
            postal_code: "…".into(),
            state: None,
        }
    );
    assert_eq!(
        i.on,
        [
            (OrderEvent::Payment, ActionKind::ImportOrder),
            (OrderEvent::Refund, ActionKind::Refund),
            (OrderEvent::Chargeback, ActionKind::Chargeback),
            (OrderEvent::RebillCancelled, ActionKind::CancelPurchase),
        ]
        .into()
    );
    let fields: Vec<(&str, String)> = i
        .fields
        .iter()
        .map(|(k, t)| {
            (
                k.as_str(),
                t.render(|f| Some(if f == "affiliate_name" { "max" } else { "ck" })),
            )
        })
        .collect();
    // File order, not alphabetical.
    assert_eq!(
        fields,
        [
            ("custom2", "max".to_owned()),
            ("sourceValue1", "ck".to_owned())
        ]
    );
}

const MINIMAL: &str = r#"
[source.ds24]
passphrase = "p"

[target.k]
kind = "konnektive"
login_id = "u"
password = "pw"

[integration.main]
campaign_id = 1

[integration.main.product_map]
"*" = 5

[integration.main.on]
payment = "import_order"
"#;

#[test]
fn a_minimal_file_gets_every_default() {
    let loaded = ok(MINIMAL);
    assert!(loaded.warnings.is_empty());
    let c = loaded.config;
    assert_eq!(
        c.server.listen,
        "127.0.0.1:8080".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.server.max_body_bytes, 65536);
    assert_eq!(c.server.public_url, None);
    assert_eq!(c.server.max_connections, 512);
    assert_eq!(c.store.path, PathBuf::from("ipn-bridge.db"));
    let delivery = Delivery {
        timeout: Duration::from_secs(30),
        retry_initial: Duration::from_secs(30),
        retry_max: Duration::from_secs(3600),
        give_up_after: Duration::from_secs(10 * 86_400),
    };
    assert_eq!(c.delivery, delivery);
    assert!(c.alerts.is_none());
    let t = &c.targets["k"];
    assert_eq!(t.base_url, "https://api.konnektive.com");
    assert_eq!(
        (t.requests_per_second, t.burst, t.max_in_flight),
        (2.0, 2, 1)
    );
    assert_eq!(t.delivery, delivery);
    let i = &c.integrations["main"];
    assert_eq!((i.source.as_str(), i.target.as_str()), ("ds24", "k"));
    assert!(i.active && i.addons && i.followup_payments);
    assert!(!i.test_orders && !i.auto_approve);
    assert_eq!(i.products, ProductFilter::All);
    assert!(i.languages.is_empty() && i.error_emails.is_empty() && i.fields.is_empty());
    assert_eq!(i.newsletter, Newsletter::Any);
    assert_eq!(i.delay, Duration::ZERO);
    assert_eq!(i.order_ref_field, "custom1");
    assert!(i.product_map.entries.is_empty());
    assert_eq!(i.product_map.fallback, Some(5));
    assert_eq!(
        i.fallback_address,
        FallbackAddress {
            address1: "Digital delivery".into(),
            city: "Online".into(),
            postal_code: "00000".into(),
            state: None,
        }
    );
}

#[test]
fn the_example_file_parses_as_is_without_environment() {
    let text = include_str!("../../connectors.toml.example");
    let loaded = parse_with(text, &FakeEnv::default())
        .unwrap_or_else(|e| panic!("connectors.toml.example is invalid:\n{e}"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = loaded.config;
    assert_eq!(
        c.server.listen,
        "127.0.0.1:8080".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(c.store.path, PathBuf::from("ipn-bridge.db"));
    assert!(c.alerts.is_none());
    let passphrases: Vec<&str> = c.sources["ds24"]
        .passphrases
        .iter()
        .map(|p| p.expose_secret())
        .collect();
    assert_eq!(passphrases, ["fixture-passphrase"]);
    let t = &c.targets["konnektive"];
    assert_eq!(
        (t.login_id.as_str(), t.password.expose_secret()),
        ("ds24bridge", "change-me")
    );
    let i = &c.integrations["main-campaign"];
    assert_eq!(i.campaign_id, 12);
    assert_eq!(i.product_map.entries, [(412346, 31), (412350, 32)].into());
    assert_eq!(i.product_map.fallback, Some(33));
    assert_eq!(
        i.on,
        [
            (OrderEvent::Payment, ActionKind::ImportOrder),
            (OrderEvent::Refund, ActionKind::Refund),
            (OrderEvent::Chargeback, ActionKind::Chargeback),
            (OrderEvent::RebillCancelled, ActionKind::CancelPurchase),
        ]
        .into()
    );
    assert_eq!(i.fields.len(), 1);
    assert_eq!(i.fields[0].0, "custom2");
    assert_eq!(i.fields[0].1.render(|_| Some("aff")), "aff");
    assert_eq!(i.fallback_address, FallbackAddress::default());
}

#[test]
fn two_mistakes_give_exactly_two_diagnostics_in_order() {
    let text = "[source.ds24]
passphrase = \"p\"
[target.k]
kind = \"konnektive\"
login_id = \"u\"
password = \"pw\"
[integration.main]
campaign_id = 12
    campain_id = 12
on = { payment = \"import_order\" }
[integration.main.product_map]
\"*\" = 5
[delivery]
timeout = \"30x\"
";
    let e = errors(text);
    let positions: Vec<(usize, usize)> = e.errors.iter().map(|d| (d.line, d.column)).collect();
    assert_eq!(positions, [(9, 5), (14, 11)], "{e}");
    assert_eq!(
        e.errors[0].to_string(),
        "connectors.toml:9:5: error: unknown key `campain_id` in [integration.main] \
         (hint: did you mean `campaign_id`?)"
    );
    assert!(
        e.errors[1]
            .message
            .contains("`timeout` in [delivery]: invalid duration `30x`")
    );
    assert!(e.errors.iter().all(|d| d.severity == Severity::Error));
    assert_eq!(e.to_string().lines().count(), 2);
}

#[test]
fn syntax_errors_and_schema_errors_are_reported_together() {
    // `campaign_id 12` makes the TOML parser drop the rest of the document; the mistake
    // after it must still be found, and the keys it hides must not be reported as missing.
    let text = "[server]
listen =
max_body_bytes = 10
[source.ds24]
passphrase = \"p\"
[integration.main]
campaign_id 12
[delivery]
timeout = \"0s\"
";
    let e = errors(text);
    let lines: Vec<usize> = e.errors.iter().map(|d| d.line).collect();
    assert_eq!(lines, [2, 3, 7, 9], "{e}");
    assert!(e.errors[0].message.starts_with("invalid TOML"), "{e}");
    assert!(
        e.errors[1]
            .message
            .contains("must be at least 1024, found 10"),
        "{e}"
    );
    assert!(e.errors[2].message.starts_with("invalid TOML"), "{e}");
    assert!(
        e.errors[3].message.contains("must be longer than 0s"),
        "{e}"
    );
}

#[test]
fn a_broken_table_header_does_not_spill_its_keys_into_the_previous_table() {
    let text = MINIMAL.replace("[integration.main.on]", "[integration.main.on");
    let e = errors(&text);
    assert_eq!(e.errors.len(), 1, "{e}");
    assert!(e.errors[0].message.starts_with("invalid TOML"));
}

/// Builds a file from [`MINIMAL`] for one table row: `header` names the table to change
/// (added at the end when absent; `!header` removes it); an op `-key` removes the line of
/// `key`, any other op is a line appended to the table.
fn variant(header: &str, ops: &[&str]) -> String {
    let (remove_table, header) = match header.strip_prefix('!') {
        Some(h) => (true, h),
        None => (false, header),
    };
    let mut out = String::new();
    let mut found = false;
    let mut current = String::new();
    let mut skipping = false;
    for line in MINIMAL.lines() {
        if line.starts_with('[') {
            if current == header && !remove_table {
                for op in ops.iter().filter(|op| !op.starts_with('-')) {
                    out.push_str(op);
                    out.push('\n');
                }
            }
            current = line.to_owned();
            skipping = remove_table && current == header;
            found |= current == header;
        }
        let removed = ops
            .iter()
            .filter_map(|op| op.strip_prefix('-'))
            .any(|key| current == header && line.starts_with(&format!("{key} ")));
        if !skipping && !removed {
            out.push_str(line);
            out.push('\n');
        }
    }
    if current == header && !remove_table {
        for op in ops.iter().filter(|op| !op.starts_with('-')) {
            out.push_str(op);
            out.push('\n');
        }
    }
    if !found {
        out.push_str(header);
        out.push('\n');
        for op in ops {
            out.push_str(op);
            out.push('\n');
        }
    }
    out
}

const ALERTS_OK: [&str; 3] = [
    "smtp_url = \"smtp://mail\"",
    "from = \"a@b.c\"",
    "to = [\"o@b.c\"]",
];

#[test]
fn each_constraint_is_reported() {
    let rows: &[(&str, &[&str], &str)] = &[
        // top level
        (
            "[sources.x]",
            &["a = 1"],
            "unknown key `sources` at the top level (hint: did you mean `source`?)",
        ),
        // [server]
        (
            "[server]",
            &["lisen = \"1.2.3.4:5\""],
            "unknown key `lisen` in [server] (hint: did you mean `listen`?)",
        ),
        (
            "[server]",
            &["listen = \"localhost:8080\""],
            "`listen` in [server]: `localhost:8080` is not an IP address and port",
        ),
        (
            "[server]",
            &["listen = 8080"],
            "`listen` in [server]: expected a string, found an integer",
        ),
        (
            "[server]",
            &["max_body_bytes = 100"],
            "`max_body_bytes` in [server]: must be at least 1024, found 100",
        ),
        (
            "[server]",
            &["max_body_bytes = \"64k\""],
            "expected an integer, found a string",
        ),
        (
            "[server]",
            &["max_connections = 0"],
            "`max_connections` in [server]: must be at least 1, found 0",
        ),
        (
            "[server]",
            &["max_connections = \"many\""],
            "`max_connections` in [server]: expected an integer, found a string",
        ),
        (
            "[server]",
            &["public_url = \"ftp://x\""],
            "is not an http:// or https:// URL",
        ),
        (
            "[server]",
            &["public_url = \"https://x/a?b=1\""],
            "must not contain a query or fragment",
        ),
        (
            "[server]",
            &["public_url = \"https://\""],
            "URL has no host",
        ),
        (
            "[server]",
            &["public_url = \"https://u:p@x\""],
            "URL must not contain credentials",
        ),
        (
            "[server]",
            &["[server.tls]"],
            "unknown key `tls` in [server]",
        ),
        (
            "[store]",
            &["path = \"\""],
            "`path` in [store]: must not be empty",
        ),
        (
            "[store]",
            &["file = \"x.db\""],
            "unknown key `file` in [store]",
        ),
        // [delivery]
        (
            "[delivery]",
            &["timeout = \"0s\""],
            "`timeout` in [delivery]: must be longer than 0s",
        ),
        (
            "[delivery]",
            &["timeout = 30"],
            "`timeout` in [delivery]: expected a string, found an integer",
        ),
        (
            "[delivery]",
            &["retry_initial = \"2h\""],
            "`retry_initial` in [delivery]: must not be longer than `retry_max` (2h > 1h)",
        ),
        (
            "[delivery]",
            &["retry_max = \"10s\""],
            "`retry_max` in [delivery]: must not be shorter than `retry_initial` (10s < 30s)",
        ),
        (
            "[delivery]",
            &["give_up_after = \"10 days\""],
            "invalid duration `10 days`",
        ),
        (
            "[delivery]",
            &["retries = 3"],
            "unknown key `retries` in [delivery]",
        ),
        // [alerts]
        (
            "[alerts]",
            &[
                "smtp_url = \"http://mail\"",
                "from = \"a@b.c\"",
                "to = [\"o@b.c\"]",
            ],
            "expected an smtp:// or smtps:// URL",
        ),
        (
            "[alerts]",
            &[
                "smtp_url = \"smtp://u:pw@mail\"",
                "from = \"a@b.c\"",
                "to = [\"o@b.c\"]",
            ],
            "`smtp_url` in [alerts]: must not contain credentials",
        ),
        (
            "[alerts]",
            &[
                "smtp_url = \"smtp://\"",
                "from = \"a@b.c\"",
                "to = [\"o@b.c\"]",
            ],
            "has no host",
        ),
        (
            "[alerts]",
            &["from = \"a@b.c\"", "to = [\"o@b.c\"]"],
            "missing required key `smtp_url` in [alerts]",
        ),
        (
            "[alerts]",
            &["smtp_url = \"smtp://mail\"", "to = [\"o@b.c\"]"],
            "missing required key `from` in [alerts]",
        ),
        (
            "[alerts]",
            &["smtp_url = \"smtp://mail\"", "from = \"a@b.c\""],
            "missing required key `to` in [alerts]",
        ),
        (
            "[alerts]",
            &["smtp_url = \"smtp://mail\"", "from = \"a@b.c\"", "to = []"],
            "`to` in [alerts]: must list at least one address",
        ),
        (
            "[alerts]",
            &[
                "smtp_url = \"smtp://mail\"",
                "from = \"a@b.c\"",
                "to = [\"nobody\"]",
            ],
            "`to[0]` in [alerts]: `nobody` is not an e-mail address",
        ),
        (
            "[alerts]",
            &[
                "smtp_url = \"smtp://mail\"",
                "from = \"alerts\"",
                "to = [\"o@b.c\"]",
            ],
            "`from` in [alerts]: `alerts` is not an e-mail address",
        ),
        (
            "[alerts]",
            &[
                "smtp_url = \"smtp://mail\"",
                "from = \"a@b.c\"",
                "to = \"o@b.c\"",
            ],
            "`to` in [alerts]: expected an array, found a string",
        ),
        (
            "[alerts]",
            &[
                ALERTS_OK[0],
                ALERTS_OK[1],
                ALERTS_OK[2],
                "smtp_username = \"u\"",
            ],
            "`smtp_username` in [alerts]: needs `smtp_password` as well",
        ),
        (
            "[alerts]",
            &[
                ALERTS_OK[0],
                ALERTS_OK[1],
                ALERTS_OK[2],
                "smtp_password = \"p\"",
            ],
            "`smtp_password` in [alerts]: needs `smtp_username` as well",
        ),
        (
            "[alerts]",
            &[
                ALERTS_OK[0],
                ALERTS_OK[1],
                ALERTS_OK[2],
                "digest_window = \"0s\"",
            ],
            "`digest_window` in [alerts]: must be longer than 0s",
        ),
        // [source.NAME]
        (
            "[source.ds24]",
            &["-passphrase"],
            "missing required key `passphrase` in [source.ds24]",
        ),
        (
            "[source.ds24]",
            &["passphrases = [\"a\"]"],
            "`passphrases` in [source.ds24]: set either `passphrase` or `passphrases`, not both",
        ),
        (
            "[source.ds24]",
            &["-passphrase", "passphrases = []"],
            "must list at least one passphrase",
        ),
        (
            "[source.ds24]",
            &["-passphrase", "passphrases = [\"a\", \"\"]"],
            "`passphrases[1]` in [source.ds24]: is empty",
        ),
        (
            "[source.ds24]",
            &["-passphrase", "passphrase = \"\""],
            "`passphrase` in [source.ds24]: is empty",
        ),
        (
            "[source.ds24]",
            &["-passphrase", "passphrase = 5"],
            "expected a string or a table like { env = \"VAR\" }, found an integer",
        ),
        (
            "[source.ds24]",
            &["-passphrase", "passphrase = { env = \"A\", file = \"/b\" }"],
            "give only one of `env`, `file`",
        ),
        (
            "[source.ds24]",
            &["-passphrase", "passphrase = {}"],
            "a secret table needs one of `env`, `file` or `credential`",
        ),
        (
            "[source.ds24]",
            &["-passphrase", "passphrase = { evn = \"A\" }"],
            "unknown key `evn` in [source.ds24.passphrase] (hint: did you mean `env`?)",
        ),
        (
            "[source.ds24]",
            &["-passphrase", "passphrase = { env = \"\" }"],
            "`env` in [source.ds24.passphrase]: must not be empty",
        ),
        (
            "[source.ds24]",
            &["-passphrase", "passphrase = { credential = \"../x\" }"],
            "is not a credential name",
        ),
        (
            "[source]",
            &["ds25 = \"p\""],
            "`ds25` in [source]: expected a [source.NAME] table, found a string",
        ),
        // [target.NAME]
        (
            "[target.k]",
            &["-kind"],
            "missing required key `kind` in [target.k]",
        ),
        (
            "[target.k]",
            &["-kind", "kind = \"shopify\""],
            "unknown target kind `shopify` (hint: the kinds are \"konnektive\" and \"webhook\")",
        ),
        (
            "[target.k]",
            &["base_url = \"api.konnektive.com\""],
            "`base_url` in [target.k]: `api.konnektive.com` is not an http:// or https:// URL",
        ),
        (
            "[target.k]",
            &["-login_id"],
            "missing required key `login_id` in [target.k]",
        ),
        (
            "[target.k]",
            &["-login_id", "login_id = \"\""],
            "`login_id` in [target.k]: must not be empty",
        ),
        (
            "[target.k]",
            &["-password"],
            "missing required key `password` in [target.k]",
        ),
        (
            "[target.k]",
            &["-password", "password = \"a&b\""],
            "`password` in [target.k]: Konnektive API passwords must not contain `&`",
        ),
        (
            "[target.k]",
            &["requests_per_second = 0"],
            "`requests_per_second` in [target.k]: must be greater than 0, found 0",
        ),
        (
            "[target.k]",
            &["requests_per_second = -0.5"],
            "must be greater than 0, found -0.5",
        ),
        (
            "[target.k]",
            &["requests_per_second = nan"],
            "must be greater than 0, found NaN",
        ),
        (
            "[target.k]",
            &["requests_per_second = \"fast\""],
            "expected a number, found a string",
        ),
        (
            "[target.k]",
            &["burst = 0"],
            "`burst` in [target.k]: must be at least 1, found 0",
        ),
        (
            "[target.k]",
            &["burst = 1.5"],
            "`burst` in [target.k]: expected an integer, found a float",
        ),
        (
            "[target.k]",
            &["max_in_flight = -1"],
            "`max_in_flight` in [target.k]: must be at least 1, found -1",
        ),
        (
            "[target.k]",
            &["max_in_flight = 4294967296"],
            "must be at most 4294967295",
        ),
        (
            "[target.k]",
            &["timeout = \"5\""],
            "`timeout` in [target.k]: invalid duration `5`: missing unit",
        ),
        (
            "[target.k]",
            &["retry_max = \"10s\""],
            "`retry_max` in [target.k]: must not be shorter than `retry_initial` (10s < 30s)",
        ),
        (
            "[target.k]",
            &["rate = 3"],
            "unknown key `rate` in [target.k]",
        ),
        // [integration.NAME]
        (
            "[integration.main]",
            &["campain_id = 3"],
            "unknown key `campain_id` in [integration.main] (hint: did you mean `campaign_id`?)",
        ),
        (
            "[integration.main]",
            &["-campaign_id"],
            "missing required key `campaign_id` in [integration.main]",
        ),
        (
            "[integration.main]",
            &["-campaign_id", "campaign_id = 0"],
            "`campaign_id` in [integration.main]: must be a positive integer, found 0",
        ),
        (
            "[integration.main]",
            &["-campaign_id", "campaign_id = \"12\""],
            "`campaign_id` in [integration.main]: expected an integer, found a string",
        ),
        (
            "[integration.main]",
            &["source = \"ds25\""],
            "`source` in [integration.main]: there is no [source.ds25] (hint: did you mean `ds24`?)",
        ),
        (
            "[integration.main]",
            &["target = \"konektive\""],
            "`target` in [integration.main]: there is no [target.konektive]",
        ),
        (
            "[integration.main]",
            &["source = 1"],
            "`source` in [integration.main]: expected a string, found an integer",
        ),
        (
            "[integration.main]",
            &["active = \"yes\""],
            "`active` in [integration.main]: expected `true` or `false`, found a string",
        ),
        (
            "[integration.main]",
            &["addons = 1"],
            "`addons` in [integration.main]: expected `true` or `false`",
        ),
        (
            "[integration.main]",
            &["products = \"some\""],
            "`products` in [integration.main]: expected \"all\" or a list of Digistore24 product ids",
        ),
        (
            "[integration.main]",
            &["products = []"],
            "`products` in [integration.main]: an empty list matches no product",
        ),
        (
            "[integration.main]",
            &["products = [0]"],
            "`products[0]` in [integration.main]: must be a positive integer, found 0",
        ),
        (
            "[integration.main]",
            &["products = [\"412346\"]"],
            "`products[0]` in [integration.main]: expected an integer, found a string",
        ),
        (
            "[integration.main]",
            &["languages = [\"deu\"]"],
            "`languages[0]` in [integration.main]: `deu` is not a two-letter language code",
        ),
        (
            "[integration.main]",
            &["languages = \"de\""],
            "`languages` in [integration.main]: expected an array, found a string",
        ),
        (
            "[integration.main]",
            &["currencies = [\"EUR\", \"euro\"]"],
            "`currencies[1]` in [integration.main]: `euro` is not a three-letter currency code",
        ),
        (
            "[integration.main]",
            &["currencies = \"EUR\""],
            "`currencies` in [integration.main]: expected an array, found a string",
        ),
        (
            "[integration.main]",
            &["newsletter = \"opted-in\""],
            "`newsletter` in [integration.main]: unknown value `opted-in` (hint: did you mean `opted_in`?)",
        ),
        (
            "[integration.main]",
            &["delay = \"1.5h\""],
            "`delay` in [integration.main]: invalid duration `1.5h`",
        ),
        (
            "[integration.main]",
            &["error_emails = [\"vendor\"]"],
            "`error_emails[0]` in [integration.main]: `vendor` is not an e-mail address",
        ),
        (
            "[integration.main]",
            &["order_ref_field = \"custom6\""],
            "`order_ref_field` in [integration.main]: `custom6` is not one of custom1 … custom5",
        ),
        // [integration.NAME.product_map]
        (
            "[integration.main.product_map]",
            &["abc = 3"],
            "`abc` in [integration.main.product_map] is not a Digistore24 product id",
        ),
        (
            "[integration.main.product_map]",
            &["412346 = 0"],
            "`412346` in [integration.main.product_map]: must be a positive integer, found 0",
        ),
        (
            "[integration.main.product_map]",
            &["412346 = \"31\""],
            "expected an integer, found a string",
        ),
        (
            "[integration.main.product_map]",
            &["412346 = 1", "0412346 = 2"],
            "product 412346 is mapped twice in [integration.main.product_map]",
        ),
        (
            "[integration.main.product_map]",
            &["-\"*\""],
            "[integration.main.product_map] needs at least one entry",
        ),
        (
            "![integration.main.product_map]",
            &[],
            "missing required table `product_map` in [integration.main]",
        ),
        // [integration.NAME.on]
        (
            "[integration.main.on]",
            &["paymnet = \"import_order\""],
            "unknown order event `paymnet` in [integration.main.on]; valid events: payment, refund, chargeback, payment_missed, payment_denial, rebill_cancelled, rebill_resumed, last_paid_day, affiliation, eticket (hint: did you mean `payment`?)",
        ),
        (
            "[integration.main.on]",
            &["refund = \"refnd\""],
            "`refund` in [integration.main.on]: unknown action `refnd`; valid actions: import_order, refund, chargeback, cancel_purchase, cancel_order, ignore, forward (hint: did you mean `refund`?)",
        ),
        (
            "[integration.main.on]",
            &["refund = 1"],
            "`refund` in [integration.main.on]: expected a string, found an integer",
        ),
        (
            "[integration.main.on]",
            &["-payment"],
            "[integration.main.on] needs at least one event",
        ),
        (
            "![integration.main.on]",
            &[],
            "missing required table `on` in [integration.main]",
        ),
        // [integration.NAME.fields]
        (
            "[integration.main.fields]",
            &["custom2 = \"{affiliate_name\""],
            "`custom2` in [integration.main.fields]: unclosed `{`",
        ),
        (
            "[integration.main.fields]",
            &["custom2 = \"{}\""],
            "empty placeholder",
        ),
        (
            "[integration.main.fields]",
            &["custom2 = \"a}\""],
            "unmatched `}`",
        ),
        (
            "[integration.main.fields]",
            &["bad-key = \"x\""],
            "invalid Konnektive field name `bad-key` in [integration.main.fields]",
        ),
        (
            "[integration.main.fields]",
            &["password = \"x\""],
            "`password` in [integration.main.fields] cannot be set",
        ),
        (
            "[integration.main.fields]",
            &["custom1 = \"x\""],
            "`custom1` in [integration.main.fields] is the integration's `order_ref_field`",
        ),
        (
            "[integration.main.fields]",
            &["custom3 = 5"],
            "`custom3` in [integration.main.fields]: expected a string, found an integer",
        ),
        // [integration.NAME.fallback_address]
        (
            "[integration.main.fallback_address]",
            &["street = \"x\""],
            "unknown key `street` in [integration.main.fallback_address]",
        ),
        (
            "[integration.main.fallback_address]",
            &["zip = \"x\""],
            "unknown key `zip` in [integration.main.fallback_address]",
        ),
        (
            "[integration.main.fallback_address]",
            &["postal_code = 12345"],
            "`postal_code` in [integration.main.fallback_address]: expected a string, found an integer",
        ),
        (
            "[integration.main.fallback_address]",
            &["city = \"  \""],
            "`city` in [integration.main.fallback_address]: must not be empty",
        ),
        (
            "[integration.main.fallback_address]",
            &["address1 = \"\""],
            "`address1` in [integration.main.fallback_address]: must not be empty",
        ),
        (
            "[integration.main.fallback_address]",
            &["address1 = \"Digital delivery, no postal address\""],
            "`address1` in [integration.main.fallback_address]: 35 characters; Konnektive's `address1` takes at most 30",
        ),
        (
            "[integration.main.fallback_address]",
            &["postal_code = \"000000000000000000000\""],
            "21 characters; Konnektive's `postalCode` takes at most 20",
        ),
        (
            "[integration.main.fallback_address]",
            &["state = \"California\""],
            "`state` in [integration.main.fallback_address]: 10 characters; Konnektive's `state` takes at most 6",
        ),
        (
            "[integration.main]",
            &["fallback_address = \"none\""],
            "`fallback_address` in [integration.main]: expected a table, found a string",
        ),
    ];
    for (header, ops, expected) in rows {
        let text = variant(header, ops);
        let e = errors(&text);
        let all = e.to_string();
        assert!(
            all.lines().any(|line| line.contains(expected)),
            "{header} {ops:?}: expected `{expected}` in\n{all}\n--- file:\n{text}"
        );
        assert_eq!(
            e.errors.len(),
            1,
            "{header} {ops:?}: one mistake, one error:\n{all}"
        );
    }
}

#[test]
fn a_misspelt_required_key_is_reported_once() {
    for (from, to) in [
        ("campaign_id = 1", "campain_id = 1"),
        ("passphrase = \"p\"", "passphrse = \"p\""),
        ("login_id = \"u\"", "loginid = \"u\""),
        (
            "[integration.main.product_map]",
            "[integration.main.product_mapp]",
        ),
    ] {
        let e = errors(&MINIMAL.replace(from, to));
        assert_eq!(e.errors.len(), 1, "{e}");
        assert!(e.errors[0].message.starts_with("unknown key"), "{e}");
        assert!(
            e.errors[0]
                .hint
                .as_deref()
                .unwrap_or("")
                .starts_with("did you mean"),
            "{e}"
        );
    }
}

#[test]
fn cross_table_rules() {
    // No source at all.
    let text = MINIMAL.replace("[source.ds24]\npassphrase = \"p\"\n", "");
    let e = errors(&text);
    assert_eq!(e.errors.len(), 1, "{e}");
    assert!(
        e.errors[0]
            .message
            .contains("at least one [source.NAME] table is required")
    );
    assert_eq!((e.errors[0].line, e.errors[0].column), (1, 1));

    // `[[source]]` instead of `[source.NAME]`: one error, with the fix.
    let text = MINIMAL.replace("[source.ds24]", "[[source]]");
    let e = errors(&text);
    assert_eq!(e.errors.len(), 1, "{e}");
    assert!(e.to_string().contains("expected [source.NAME] tables, found an array (hint: write [source.ds24] (not [[source]]))"), "{e}");

    // Two sources: the integration must name one.
    let text = format!("[source.other]\npassphrase = \"q\"\n{MINIMAL}");
    let e = errors(&text);
    assert_eq!(e.errors.len(), 1, "{e}");
    assert!(
        e.errors[0]
            .message
            .contains("[integration.main] must name its `source`: there are 2 sources"),
        "{e}"
    );
    let text = text.replace("campaign_id = 1", "campaign_id = 1\nsource = \"other\"");
    assert_eq!(ok(&text).config.integrations["main"].source, "other");

    // No target.
    let text = MINIMAL.replace(
        "[target.k]\nkind = \"konnektive\"\nlogin_id = \"u\"\npassword = \"pw\"\n",
        "",
    );
    let e = errors(&text);
    assert_eq!(e.errors.len(), 1, "{e}");
    assert!(
        e.errors[0]
            .message
            .contains("[integration.main] needs a target, but no [target.NAME] table is defined"),
        "{e}"
    );

    // The wrong reference points at the value.
    let text = MINIMAL.replace("campaign_id = 1", "campaign_id = 1\ntarget = \"nope\"");
    let e = errors(&text);
    let line = text
        .lines()
        .position(|l| l.starts_with("target = "))
        .unwrap()
        + 1;
    assert_eq!((e.errors[0].line, e.errors[0].column), (line, 10));
}

#[test]
fn table_names_are_checked() {
    let rows: &[(&str, &str, &str)] = &[
        (
            "[source.ds24]",
            "[source.\"ds 24\"]",
            "invalid source name `ds 24`",
        ),
        (
            "[target.k]",
            "[target.\"k/1\"]",
            "invalid target name `k/1`",
        ),
        (
            "[integration.main]",
            "[integration.\"\"]",
            "invalid integration name ``",
        ),
    ];
    for (from, to, expected) in rows {
        let mut text = MINIMAL.replace(from, to);
        if from.starts_with("[integration") {
            text = text.replace("integration.main.", "integration.\"\".");
        }
        let e = errors(&text);
        assert_eq!(e.errors.len(), 1, "{e}");
        assert!(e.errors[0].message.contains(expected), "{e}");
        assert!(
            e.errors[0]
                .hint
                .as_deref()
                .unwrap_or("")
                .contains("letters, digits, `_` and `-`")
        );
    }
    // Letters, digits, `_` and `-` are fine.
    let text = MINIMAL.replace("[target.k]", "[target.Kon_nek-tive2]");
    assert_eq!(
        ok(&text).config.integrations["main"].target,
        "Kon_nek-tive2"
    );
}

#[test]
fn targets_override_delivery_per_key() {
    let text = MINIMAL.replace(
        "password = \"pw\"",
        "password = \"pw\"\ntimeout = \"5s\"\nretry_max = \"2h\"\nrequests_per_second = 3\nburst = 4\nmax_in_flight = 2\nbase_url = \"http://127.0.0.1:9000/\"",
    );
    let text = format!("[delivery]\nretry_initial = \"1m\"\ngive_up_after = \"2d\"\n{text}");
    let c = ok(&text).config;
    assert_eq!(
        c.delivery,
        Delivery {
            timeout: Duration::from_secs(30),
            retry_initial: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
            give_up_after: Duration::from_secs(2 * 86_400),
        }
    );
    let t = &c.targets["k"];
    assert_eq!(
        t.delivery,
        Delivery {
            timeout: Duration::from_secs(5),
            retry_initial: Duration::from_secs(60),
            retry_max: Duration::from_secs(7200),
            give_up_after: Duration::from_secs(2 * 86_400),
        }
    );
    assert_eq!(
        (t.requests_per_second, t.burst, t.max_in_flight),
        (3.0, 4, 2)
    );
    assert_eq!(t.base_url, "http://127.0.0.1:9000");
}

#[test]
fn every_integration_key_is_read() {
    let text = MINIMAL.replace(
        "campaign_id = 1",
        r#"campaign_id = 1
active = false
products = [412346, 412350]
addons = false
languages = ["DE", "en"]
followup_payments = false
test_orders = true
currencies = ["usd", "EUR"]
newsletter = "opted_in"
delay = "2m"
error_emails = ["a@b.c", "d@e.f"]
order_ref_field = "custom3"
auto_approve = true"#,
    )
    .replace("[integration.main.on]", "[integration.main.fields]\nzeta = \"{{x}}{a}\"\nalpha = \"lit\"\n[integration.main.on]");
    let c = ok(&text).config;
    let i = &c.integrations["main"];
    assert!(!i.active && !i.addons && !i.followup_payments);
    assert!(i.test_orders && i.auto_approve);
    assert_eq!(i.products, ProductFilter::List(vec![412346, 412350]));
    assert_eq!(i.languages, ["de", "en"]);
    assert_eq!(i.currencies, ["USD", "EUR"]);
    assert_eq!(i.newsletter, Newsletter::OptedIn);
    assert_eq!(i.delay, Duration::from_secs(120));
    assert_eq!(i.error_emails, ["a@b.c", "d@e.f"]);
    assert_eq!(i.order_ref_field, "custom3");
    let names: Vec<&str> = i.fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["zeta", "alpha"]);
    assert_eq!(i.fields[0].1.render(|_| Some("1")), "{x}1");
}

#[test]
fn warnings_do_not_refuse_the_file() {
    // No integration.
    let text = MINIMAL.split("[integration.main]").next().unwrap();
    let loaded = ok(text);
    assert_eq!(loaded.warnings.len(), 1);
    assert!(
        loaded.warnings[0]
            .message
            .contains("no [integration.NAME] table")
    );
    assert_eq!(loaded.warnings[0].severity, Severity::Warning);
    assert!(
        loaded.warnings[0]
            .to_string()
            .starts_with("connectors.toml:1:1: warning: ")
    );

    // A listed product without a mapping and no "*".
    let text = MINIMAL
        .replace("campaign_id = 1", "campaign_id = 1\nproducts = [7, 8]")
        .replace("\"*\" = 5", "7 = 5");
    let loaded = ok(&text);
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert!(
        loaded.warnings[0]
            .message
            .contains("product 8 has no entry")
    );

    // Plain http to a remote Konnektive.
    let text = MINIMAL.replace(
        "kind = \"konnektive\"",
        "kind = \"konnektive\"\nbase_url = \"http://api.konnektive.com\"",
    );
    let loaded = ok(&text);
    assert_eq!(loaded.warnings.len(), 1);
    assert!(loaded.warnings[0].message.contains("unencrypted"));
    let text = MINIMAL.replace(
        "kind = \"konnektive\"",
        "kind = \"konnektive\"\nbase_url = \"http://localhost:8081\"",
    );
    assert!(ok(&text).warnings.is_empty());
}

#[test]
fn max_connections_is_read_and_a_zero_is_reported_at_its_line_and_column() {
    let text = format!("[server]\nmax_connections = 3\n{MINIMAL}");
    assert_eq!(ok(&text).config.server.max_connections, 3);

    let text = format!("[server]\nlisten = \"127.0.0.1:9\"\nmax_connections = 0\n{MINIMAL}");
    let e = errors(&text);
    assert_eq!(e.errors.len(), 1, "{e}");
    assert_eq!((e.errors[0].line, e.errors[0].column), (3, 19), "{e}");
    assert!(
        e.to_string()
            .contains("connectors.toml:3:19: error: `max_connections` in [server]: must be at least 1, found 0"),
        "{e}"
    );
}

#[test]
fn a_password_over_cleartext_smtp_is_warned_about() {
    let alerts = |url: &str, password: bool| {
        let credentials = if password {
            "smtp_username = \"u\"\nsmtp_password = \"smtp-Secret-1\"\n"
        } else {
            ""
        };
        format!(
            "{MINIMAL}\n[alerts]\nsmtp_url = \"{url}\"\n{credentials}from = \"a@b.c\"\nto = [\"o@b.c\"]\n"
        )
    };
    for url in [
        "smtp://mail.example.com:587",
        "smtp://mail.example.com:587?tls=opportunistic",
        "smtp://mail.example.com",
    ] {
        let loaded = ok(&alerts(url, true));
        assert_eq!(loaded.warnings.len(), 1, "{url}: {:?}", loaded.warnings);
        let shown = loaded.warnings[0].to_string();
        assert!(
            shown.contains("`smtp_url` in [alerts]: plain smtp:// without `?tls=required` to a remote host can send the SMTP password unencrypted"),
            "{shown}"
        );
        assert!(shown.contains("tls=required"), "{shown}");
        assert!(!shown.contains("smtp-Secret-1"), "{shown}");
        let line = alerts(url, true)
            .lines()
            .position(|l| l.starts_with("smtp_url"))
            .unwrap()
            + 1;
        assert_eq!(loaded.warnings[0].line, line, "{shown}");
    }
    // Encrypted, local, or nothing to protect: no warning.
    for (url, password) in [
        ("smtp://mail.example.com:587?tls=required", true),
        ("smtps://mail.example.com", true),
        ("smtp://127.0.0.1:25", true),
        ("smtp://localhost:2525", true),
        ("smtp://[::1]:25", true),
        ("smtp://mail.example.com:25", false),
    ] {
        let loaded = ok(&alerts(url, password));
        assert!(loaded.warnings.is_empty(), "{url}: {:?}", loaded.warnings);
    }
}

#[test]
fn template_errors_point_into_the_string() {
    let text = MINIMAL.replace(
        "[integration.main.on]",
        "[integration.main.fields]\ncustom2 = \"ab{x\"\n[integration.main.on]",
    );
    let e = errors(&text);
    let line = text.lines().position(|l| l.starts_with("custom2")).unwrap() + 1;
    assert_eq!((e.errors[0].line, e.errors[0].column), (line, 14), "{e}");
}

fn with_secrets(password: &str, passphrase: &str) -> String {
    MINIMAL
        .replace("password = \"pw\"", &format!("password = {password}"))
        .replace("passphrase = \"p\"", &format!("passphrase = {passphrase}"))
}

#[test]
fn secret_forms_resolve() {
    let env = FakeEnv::default()
        .var("KONNEKTIVE_PASSWORD", "from-env")
        .file("/etc/ipn-bridge/passphrase", "from-file\n")
        .file(
            "/run/credentials/ipn-bridge.service/second",
            "from-credential\r\n",
        )
        .file("/etc/ipn-bridge/secrets/third", "  spaced  ")
        .credentials("/run/credentials/ipn-bridge.service");
    let text = MINIMAL
        .replace("password = \"pw\"", "password = { env = \"KONNEKTIVE_PASSWORD\" }")
        .replace(
            "passphrase = \"p\"",
            "passphrases = [{ file = \"/etc/ipn-bridge/passphrase\" }, { credential = \"second\" }, { file = \"secrets/third\" }]",
        );
    let loaded = parse(&text, Path::new("/etc/ipn-bridge/connectors.toml"), &env).unwrap();
    let c = loaded.config;
    assert_eq!(c.targets["k"].password.expose_secret(), "from-env");
    let passphrases: Vec<&str> = c.sources["ds24"]
        .passphrases
        .iter()
        .map(|p| p.expose_secret())
        .collect();
    // Only the trailing line break goes; a relative file is next to the config file.
    assert_eq!(passphrases, ["from-file", "from-credential", "  spaced  "]);
}

#[test]
fn secret_sources_that_fail_are_reported_by_name_only() {
    let env = FakeEnv::default().file("/empty", "\n");
    let rows: &[(&str, &str)] = &[
        (
            "{ env = \"KONNEKTIVE_PASSWORD\" }",
            "`password` in [target.k]: environment variable `KONNEKTIVE_PASSWORD` is not set",
        ),
        (
            "{ file = \"/nope\" }",
            "`password` in [target.k]: cannot read secret file `/nope`: No such file or directory",
        ),
        ("{ file = \"/empty\" }", "secret file `/empty` is empty"),
        (
            "{ credential = \"konnektive\" }",
            "credential `konnektive` cannot be read: $CREDENTIALS_DIRECTORY is not set (hint: run under systemd with `LoadCredential=konnektive:/path/to/secret`",
        ),
    ];
    for (form, expected) in rows {
        let text = with_secrets(form, "\"p\"");
        let e = parse_with(&text, &env).unwrap_err();
        assert_eq!(e.errors.len(), 1, "{e}");
        assert!(e.to_string().contains(expected), "{form}: {e}");
    }
    let env = FakeEnv::default().credentials("/creds").var("EMPTY", "");
    let e = parse_with(
        &with_secrets("{ credential = \"konnektive\" }", "{ env = \"EMPTY\" }"),
        &env,
    )
    .unwrap_err();
    let all = e.to_string();
    assert!(
        all.contains("cannot read credential `konnektive` (`/creds/konnektive`)"),
        "{all}"
    );
    assert!(
        all.contains("environment variable `EMPTY` is empty"),
        "{all}"
    );
}

#[test]
fn secret_values_never_appear_in_messages_or_debug_output() {
    const SECRET: &str = "Hunter2-VeryS3cret";
    let env = FakeEnv::default()
        .var("PW", &format!("{SECRET}&more"))
        .var("PASS", SECRET)
        .file("/pp", SECRET);
    // Errors: a refused password (`&`), a secret in a wrong place, a bad smtp_url.
    let text = format!(
        "{}\n[alerts]\nsmtp_url = \"smtp://user:{SECRET}@mail\"\nfrom = \"a@b.c\"\nto = [\"o@b.c\"]\nsmtp_username = \"u\"\nsmtp_password = \"{SECRET}\"\n",
        with_secrets("{ env = \"PW\" }", &format!("[\"{SECRET}\"]"))
    );
    let e = parse_with(&text, &env).unwrap_err();
    assert!(e.errors.len() >= 3, "{e}");
    for shown in [e.to_string(), format!("{e:?}")] {
        assert!(!shown.contains(SECRET), "{shown}");
    }

    // A syntax error on a secret's line.
    let text = with_secrets(&format!("{SECRET}&x"), "\"p\"");
    let e = parse_with(&text, &env).unwrap_err();
    assert!(e.to_string().contains("invalid TOML"), "{e}");
    assert!(!e.to_string().contains(SECRET), "{e}");

    // A valid file: Debug of the config and the warnings.
    let text = format!(
        "{}\n[alerts]\nsmtp_url = \"smtp://mail\"\nfrom = \"a@b.c\"\nto = [\"o@b.c\"]\nsmtp_username = \"u\"\nsmtp_password = {{ file = \"/pp\" }}\n",
        with_secrets("{ env = \"PASS\" }", &format!("\"{SECRET}\""))
    )
    .replace("kind = \"konnektive\"", "kind = \"konnektive\"\nbase_url = \"http://konnektive.example\"");
    let loaded = parse_with(&text, &env).unwrap();
    assert_eq!(loaded.config.targets["k"].password.expose_secret(), SECRET);
    assert!(!loaded.warnings.is_empty());
    let shown = format!(
        "{loaded:?} {}",
        loaded
            .warnings
            .iter()
            .map(ToString::to_string)
            .collect::<String>()
    );
    assert!(!shown.contains(SECRET), "{shown}");
}

#[cfg(unix)]
#[test]
fn load_warns_about_plain_secrets_in_a_readable_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("connectors.toml");
    std::fs::write(&path, MINIMAL).unwrap();

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let loaded = load(&path).unwrap();
    // The passphrase (line 3) and the Konnektive password (line 8).
    let lines: Vec<usize> = loaded.warnings.iter().map(|w| w.line).collect();
    assert_eq!(lines, [3, 8], "{:?}", loaded.warnings);
    let shown = loaded.warnings[0].to_string();
    assert!(
        shown.contains(
            "warning: plain-text secret in a file that group or others can read (mode 644)"
        ),
        "{shown}"
    );
    assert!(
        shown.contains("{ env = \"VAR\" }") && shown.contains("chmod 600"),
        "{shown}"
    );
    assert!(loaded.warnings[1].to_string().contains("8:12"));

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(load(&path).unwrap().warnings.is_empty());

    // Secrets from elsewhere are fine in a readable file.
    let text = MINIMAL
        .replace("password = \"pw\"", "password = { file = \"pw\" }")
        .replace("passphrase = \"p\"", "passphrase = { file = \"pp\" }");
    std::fs::write(&path, text).unwrap();
    std::fs::write(dir.path().join("pw"), "pw\n").unwrap();
    std::fs::write(dir.path().join("pp"), "pp\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let loaded = load(&path).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(loaded.config.targets["k"].password.expose_secret(), "pw");
}

#[test]
fn load_reports_an_unreadable_file_at_1_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.toml");
    let e = load(&path).unwrap_err();
    assert_eq!(e.errors.len(), 1);
    let d = &e.errors[0];
    assert_eq!((d.line, d.column, d.file.as_path()), (1, 1, path.as_path()));
    assert!(
        d.message.starts_with("cannot read the configuration file"),
        "{d}"
    );
}

proptest::proptest! {
    #[test]
    fn parse_never_panics_on_any_text(text in "\\PC{0,300}") {
        let _ = parse_with(&text, &FakeEnv::default());
    }

    #[test]
    fn parse_never_panics_on_a_damaged_file(
        at in 0..MINIMAL.len(),
        cut in 0usize..20,
        insert in "[\\[\\]{}=\"'\\n#a-z0-9 .,é*-]{0,12}",
    ) {
        let mut text = MINIMAL.to_owned();
        let end = (at + cut).min(text.len());
        text.replace_range(at..end, &insert);
        let _ = parse_with(&text, &FakeEnv::default());
    }
}

#[test]
fn a_bad_currency_is_reported_at_its_line_and_column() {
    let text = MINIMAL.replace(
        "campaign_id = 1",
        "campaign_id = 1\ncurrencies = [\"EUR\", \"US\"]",
    );
    let e = errors(&text);
    let line = text
        .lines()
        .position(|l| l.starts_with("currencies"))
        .unwrap()
        + 1;
    assert_eq!((e.errors[0].line, e.errors[0].column), (line, 22), "{e}");
    assert!(
        e.errors[0].to_string().starts_with(&format!(
            "connectors.toml:{line}:22: error: `currencies[1]`"
        )),
        "{e}"
    );
    // Any case is accepted and kept upper case; empty (the default) takes any currency.
    let text = MINIMAL.replace("campaign_id = 1", "campaign_id = 1\ncurrencies = [\"usd\"]");
    assert_eq!(ok(&text).config.integrations["main"].currencies, ["USD"]);
    assert!(
        ok(MINIMAL).config.integrations["main"]
            .currencies
            .is_empty()
    );
}

#[test]
fn fallback_address_keys_override_the_defaults_one_by_one() {
    let text = variant(
        "[integration.main.fallback_address]",
        &["city = \" Internet \"", "state = \"ZH\""],
    );
    let i = &ok(&text).config.integrations["main"];
    assert_eq!(
        i.fallback_address,
        FallbackAddress {
            address1: "Digital delivery".into(),
            city: "Internet".into(),
            postal_code: "00000".into(),
            state: Some("ZH".into()),
        }
    );
    // Exactly at the limits: accepted (counted in characters, not bytes).
    let text = variant(
        "[integration.main.fallback_address]",
        &[
            &format!("address1 = \"{}\"", "ü".repeat(30)),
            &format!("postal_code = \"{}\"", "9".repeat(20)),
            "state = \"ABCDEF\"",
        ],
    );
    let i = &ok(&text).config.integrations["main"];
    assert_eq!(i.fallback_address.address1.chars().count(), 30);
}

#[test]
fn fallback_address_errors_have_line_and_column() {
    let text = format!(
        "{}[integration.main.fallback_address]\naddress1 = \"ok\"\ncity = 7\nstreet = \"x\"\n",
        MINIMAL.trim_start()
    );
    let line_of = |needle: &str| {
        text.lines()
            .position(|l| l.starts_with(needle))
            .map(|i| i + 1)
            .expect("line")
    };
    let e = errors(&text);
    let positions: Vec<(usize, usize)> = e.errors.iter().map(|d| (d.line, d.column)).collect();
    assert_eq!(
        positions,
        [(line_of("city = 7"), 8), (line_of("street ="), 1)],
        "{e}"
    );
}

#[path = "tests/ds24.rs"]
mod ds24;

#[path = "tests/store_tls.rs"]
mod store_tls;

#[test]
fn a_postgres_store_url_is_a_secret_in_any_form() {
    use secrecy::ExposeSecret;
    let plain = ok(&format!(
        "[store]\nurl = \"postgres://bridge:pw@db.example/ipn\"\n{MINIMAL}"
    ));
    assert_eq!(
        plain.config.store.url.as_ref().map(|u| u.expose_secret()),
        Some("postgres://bridge:pw@db.example/ipn")
    );
    let env = FakeEnv::default().var("IPN_BRIDGE_DATABASE_URL", "postgresql://bridge@db/ipn");
    let from_env = parse_with(
        &format!("[store]\nurl = {{ env = \"IPN_BRIDGE_DATABASE_URL\" }}\n{MINIMAL}"),
        &env,
    )
    .expect("valid");
    assert_eq!(
        from_env
            .config
            .store
            .url
            .as_ref()
            .map(|u| u.expose_secret()),
        Some("postgresql://bridge@db/ipn")
    );
    let without = ok(MINIMAL);
    assert!(without.config.store.url.is_none());
}

#[test]
fn store_path_and_url_together_are_refused() {
    let e = errors(&format!(
        "[store]\npath = \"x.db\"\nurl = \"postgres://bridge@db/ipn\"\n{MINIMAL}"
    ))
    .to_string();
    assert!(e.contains("either `path`"), "{e}");
    assert!(e.contains("not both"), "{e}");
}

#[test]
fn a_store_url_that_is_not_postgres_is_refused_without_showing_it() {
    for url in [
        "mysql://root:hunter2@db/ipn",
        "hunter2",
        "postgres://hunter2@db:notaport/x",
    ] {
        let e = errors(&format!("[store]\nurl = \"{url}\"\n{MINIMAL}")).to_string();
        assert!(e.contains("is not a PostgreSQL connection string"), "{e}");
        assert!(!e.contains("hunter2"), "the value leaked: {e}");
    }
}
