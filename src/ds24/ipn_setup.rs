//! `ipnSetup` and `ipnInfo` (reference §3.7): the IPN connection Digistore24 sends to us.

use serde_json::Value;

use super::client::{Client, Ds24Error, Params, text, yes};

/// What `ipnSetup` is asked to do.
#[derive(Debug, Clone)]
pub struct IpnSetup {
    pub ipn_url: String,
    pub name: String,
    /// `all` or a comma list.
    pub product_ids: String,
    /// The connection's identity: the same value updates the same connection.
    pub domain_id: String,
    /// Comma list of `payment`, `refund`, … (sent explicitly: the default is disputed).
    pub transactions: String,
    /// `before_thankyou` or `delayed`.
    pub timing: String,
}

/// What `ipnSetup` answered.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IpnSetupResult {
    pub created: bool,
    pub updated: bool,
    pub domain_id: Option<String>,
    pub ipn_config_id: Option<String>,
}

/// The stable `domain_id` of a source's connection (decision: one connection per source,
/// updated in place whatever the URL becomes).
pub fn domain_id(source: &str) -> String {
    format!("ipn-bridge-{source}")
}

impl IpnSetup {
    /// The parameters; the passphrase is added by [`setup`] and nowhere else.
    pub fn params(&self) -> Params {
        let mut p = Params::new();
        p.set("ipn_url", self.ipn_url.clone())
            .set("name", self.name.clone())
            .set("product_ids", self.product_ids.clone())
            .set("domain_id", self.domain_id.clone())
            .set("categories", "orders")
            .set("transactions", self.transactions.clone())
            .set("timing", self.timing.clone());
        p
    }
}

/// Registers or updates the connection, signed with `passphrase`.
pub async fn setup(
    client: &Client,
    request: &IpnSetup,
    passphrase: &secrecy::SecretString,
) -> Result<IpnSetupResult, Ds24Error> {
    use secrecy::ExposeSecret;
    let mut p = request.params();
    p.set("sha_passphrase", passphrase.expose_secret());
    let data = client.call("ipnSetup", &p).await?;
    Ok(IpnSetupResult {
        created: data.get("created").is_some_and(yes),
        updated: data.get("updated").is_some_and(yes),
        domain_id: data.get("domain_id").and_then(text),
        ipn_config_id: data
            .get("ipn_config_id")
            .or_else(|| data.get("ipn_id"))
            .and_then(text),
    })
}

/// `ipnInfo(domain_id)`: `None` when no connection exists (`have_settings = N`), else the
/// settings as Digistore24 gives them (`ipn_url` among them, a [GUESS] of the field name).
pub async fn info(client: &Client, domain_id: &str) -> Result<Option<Value>, Ds24Error> {
    let mut p = Params::new();
    p.set("domain_id", domain_id);
    let data = client.call("ipnInfo", &p).await?;
    if data.get("have_settings").is_some_and(yes) {
        Ok(Some(data))
    } else {
        Ok(None)
    }
}
