//! The resolved, validated configuration: what the rest of the program sees. Produced only
//! by `config::load` / `config::parse`; every value here has passed validation, every
//! default is filled in and every secret is resolved.

use crate::domain::{ActionKind, OrderEvent, OtherEvent};
use secrecy::{ExposeSecret, SecretString};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from (for messages).
    pub path: PathBuf,
    pub server: Server,
    pub store: Store,
    /// `[delivery]` as written (defaults filled in); each target carries its merged copy.
    pub delivery: Delivery,
    pub alerts: Option<Alerts>,
    pub sources: BTreeMap<String, Source>,
    pub targets: BTreeMap<String, Target>,
    pub integrations: BTreeMap<String, Integration>,
}

#[derive(Debug, Clone)]
pub struct Server {
    /// Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Default 65536.
    pub max_body_bytes: usize,
    /// Optional, e.g. `https://ipn.example.com` (no trailing slash).
    pub public_url: Option<String>,
    /// Default 512; >= 1. Open client connections beyond it are refused.
    pub max_connections: usize,
}

#[derive(Debug, Clone)]
pub struct Store {
    /// Default `ipn-bridge.db`; a relative path is relative to the working directory. Not
    /// used when `url` is set.
    pub path: PathBuf,
    /// `[store] url` (any secret form): a PostgreSQL connection string, for several daemons
    /// sharing one database. `None`: the SQLite file at `path`. Never both in the file.
    pub url: Option<secrecy::SecretString>,
    /// `[store] ca_file`: a PEM file of CA certificates trusted, besides the system's, for
    /// TLS to PostgreSQL (`url` with `sslmode=require`); checked readable with at least one
    /// certificate when loaded, relative to the configuration file's directory. Only with
    /// `url`.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Default 30s.
    pub timeout: Duration,
    /// Default 30s.
    pub retry_initial: Duration,
    /// Default 1h.
    pub retry_max: Duration,
    /// Default 10d.
    pub give_up_after: Duration,
}

#[derive(Debug, Clone)]
pub struct Alerts {
    pub smtp_url: String,
    pub smtp_username: Option<String>,
    pub smtp_password: Option<SecretString>,
    pub from: String,
    pub to: Vec<String>,
    /// Default 15m.
    pub digest_window: Duration,
}

#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    /// At least one, none empty (`passphrase` or `passphrases`).
    pub passphrases: Vec<SecretString>,
    /// Digistore24 API key (any secret form); optional. Sent only in `X-DS-API-KEY`.
    pub api_key: Option<SecretString>,
    /// Default `https://www.digistore24.com/api/call`, no trailing slash.
    pub api_url: String,
    /// How often the daemon audits this source's IPNs against the API; `None` = never.
    /// Needs `api_key`.
    pub audit_every: Option<Duration>,
}

/// What a target is, with the settings only its kind has (the Konnektive ones are the
/// `Target`'s own fields, which a webhook target leaves empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetKind {
    Konnektive,
    /// `kind = "webhook"`: signed JSON POSTs to `url`.
    Webhook(Webhook),
}

impl TargetKind {
    /// The `kind` value as written in the file.
    pub fn config_name(&self) -> &'static str {
        match self {
            TargetKind::Konnektive => "konnektive",
            TargetKind::Webhook(_) => "webhook",
        }
    }
}

/// `[target.NAME]` with `kind = "webhook"`.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// `http://` or `https://`.
    pub url: String,
    /// The Standard Webhooks signing secret: `whsec_<base64>` or any other string (its
    /// bytes). `None`: requests are sent unsigned.
    pub secret: Option<SecretString>,
    /// Extra headers, in file order; values may be secrets.
    pub headers: Vec<(String, SecretString)>,
}

impl PartialEq for Webhook {
    fn eq(&self, other: &Self) -> bool {
        let secret = |s: &Option<SecretString>| s.as_ref().map(|s| s.expose_secret().to_owned());
        let headers = |h: &[(String, SecretString)]| -> Vec<(String, String)> {
            h.iter()
                .map(|(k, v)| (k.clone(), v.expose_secret().to_owned()))
                .collect()
        };
        self.url == other.url
            && secret(&self.secret) == secret(&other.secret)
            && headers(&self.headers) == headers(&other.headers)
    }
}

impl Eq for Webhook {}

#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub kind: TargetKind,
    /// Default `https://api.konnektive.com`, no trailing slash.
    pub base_url: String,
    pub login_id: String,
    pub password: SecretString,
    /// Default 2.0; > 0.
    pub requests_per_second: f64,
    /// Default 2; >= 1.
    pub burst: u32,
    /// Default 1; >= 1.
    pub max_in_flight: u32,
    /// `[delivery]` with this target's overrides (`timeout`, `retry_initial`, `retry_max`,
    /// `give_up_after` may be set in `[target.NAME]`).
    pub delivery: Delivery,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProductFilter {
    All,
    List(Vec<u64>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Newsletter {
    Any,
    OptedIn,
}

/// `[integration.NAME.product_map]`: Digistore24 product id → Konnektive campaign product id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductMap {
    pub entries: BTreeMap<u64, u64>,
    /// The `"*"` entry.
    pub fallback: Option<u64>,
}

impl ProductMap {
    /// The campaign product for a Digistore24 product: its own entry, else `"*"`.
    pub fn lookup(&self, ds24_product_id: u64) -> Option<u64> {
        self.entries
            .get(&ds24_product_id)
            .copied()
            .or(self.fallback)
    }
}

/// A `fields` value: literal text with `{ipn_field}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub parts: Vec<TemplatePart>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    Literal(String),
    Field(String),
}

impl Template {
    /// Renders with `lookup(field)`; a placeholder of an absent field renders empty.
    pub fn render<'a>(&self, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                TemplatePart::Literal(s) => out.push_str(s),
                TemplatePart::Field(name) => out.push_str(lookup(name).unwrap_or("")),
            }
        }
        out
    }
}

#[derive(Debug, Clone)]
pub struct Integration {
    pub name: String,
    /// Resolved: may be omitted in the file when there is exactly one source.
    pub source: String,
    /// Resolved: may be omitted in the file when there is exactly one target.
    pub target: String,
    /// Default true.
    pub active: bool,
    pub campaign_id: u64,
    /// Default `All`.
    pub products: ProductFilter,
    /// Default true.
    pub addons: bool,
    /// Lower-case language codes; empty = all.
    pub languages: Vec<String>,
    /// Default true. `false` filters follow-up *payments* only (`on_payment`), never a
    /// cancellation, refund or other event of a rebilled order.
    pub followup_payments: bool,
    /// Default false.
    pub test_orders: bool,
    /// Upper-case three-letter currency codes the integration takes; empty = any.
    pub currencies: Vec<String>,
    /// Default `Any`.
    pub newsletter: Newsletter,
    /// Default 0s.
    pub delay: Duration,
    pub error_emails: Vec<String>,
    /// Default `custom1`.
    pub order_ref_field: String,
    /// Default false.
    pub auto_approve: bool,
    pub product_map: ProductMap,
    /// Events not listed are skipped for this integration.
    pub on: BTreeMap<OrderEvent, ActionKind>,
    /// `affiliation` and `eticket` in `[integration.NAME.on]`: `forward` or `ignore` only.
    pub on_other: BTreeMap<OtherEvent, ActionKind>,
    /// Extra Konnektive fields in file order.
    pub fields: Vec<(String, Template)>,
    /// `[integration.NAME.fallback_address]`, defaults filled in.
    pub fallback_address: FallbackAddress,
}

/// `[integration.NAME.fallback_address]`: what an order gets for each address field its IPN
/// leaves empty (digital products are sold without a postal address, and Konnektive requires
/// one). Every value is non-empty, trimmed and within Konnektive's field length. The country
/// is never filled in: it always comes from the IPN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FallbackAddress {
    pub address1: String,
    pub city: String,
    pub postal_code: String,
    /// No default: a state only fits one country.
    pub state: Option<String>,
}

impl FallbackAddress {
    /// Used for `address1` when the file does not say.
    ///
    /// [GUESS] Konnektive requires `address1`, `city` and `postalCode` on `order/import` and
    /// their `ship*` copies (reference `konnektive-api.md` §3.1 "Billing and customer", E3);
    /// nothing says it checks that they are real. The defaults are neutral and obviously
    /// synthetic, so a person reading the order sees at once that no address was given,
    /// and they fit the shortest limits (30, 30, 20 characters, §5 "Field lengths").
    /// Whether Konnektive accepts `00000` for every country is not known.
    pub const DEFAULT_ADDRESS1: &'static str = "Digital delivery";
    /// Used for `city` when the file does not say (see [`Self::DEFAULT_ADDRESS1`]).
    pub const DEFAULT_CITY: &'static str = "Online";
    /// Used for `postal_code` when the file does not say (see [`Self::DEFAULT_ADDRESS1`]).
    pub const DEFAULT_POSTAL_CODE: &'static str = "00000";
}

impl Default for FallbackAddress {
    fn default() -> Self {
        FallbackAddress {
            address1: Self::DEFAULT_ADDRESS1.to_owned(),
            city: Self::DEFAULT_CITY.to_owned(),
            postal_code: Self::DEFAULT_POSTAL_CODE.to_owned(),
            state: None,
        }
    }
}
