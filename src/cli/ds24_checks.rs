//! The Digistore24 section of `test-connection`, per source with an `api_key` (issue 11):
//!
//! | check | how | fails when |
//! | --- | --- | --- |
//! | `ds24 api key` | `getUserInfo` (read access is enough); shows the account name | the key is refused, Digistore24 unreachable |
//! | `ds24 products` | `listProducts`; every id in the integration's `products` and `product_map` (not `"*"`) | any is missing (each is named) |
//! | `ds24 ipn connection` | `ipnInfo` of `ipn-bridge-<source>` (the `domain_id` of `ds24 setup-ipn`) | it points elsewhere than `{public_url}/ipn/<source>`; skipped when never set up |
//!
//! The API is asked once per source; each integration of the source gets the lines.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::config::{Integration, ProductFilter, Server, Source};
use crate::ds24::{Client, account, ipn_setup};

/// Verdict and detail, as `test_connection::Finding` takes them: `Some(true)` ok,
/// `Some(false)` failed, `None` skipped.
pub type Check = (Option<bool>, String);

/// What the API said about one source.
#[derive(Debug, Clone)]
pub struct SourceAnswers {
    pub key: Check,
    /// The account's product ids, when `listProducts` answered.
    pub products: Result<BTreeSet<u64>, String>,
    pub ipn: Check,
}

/// Asks the API for `source`; `None` when the source has no `api_key`.
pub async fn ask(server: &Server, source: &Source) -> Option<SourceAnswers> {
    let client = match Client::for_source(source)? {
        Ok(c) => c,
        Err(e) => {
            return Some(SourceAnswers {
                key: (Some(false), e.to_string()),
                products: Err("not checked".into()),
                ipn: (None, "not checked".into()),
            });
        }
    };
    let key = match account::account_name(&client).await {
        Ok(name) => (
            Some(true),
            format!(
                "the key works (account {})",
                name.unwrap_or_else(|| "name not given".into())
            ),
        ),
        Err(e) => {
            return Some(SourceAnswers {
                key: (Some(false), e.to_string()),
                products: Err("not checked: the key does not work".into()),
                ipn: (None, "not checked: the key does not work".into()),
            });
        }
    };
    let products = account::product_ids(&client)
        .await
        .map_err(|e| e.to_string());
    let ours = super::test_connection::ipn_url(server, &source.name);
    let ipn = match ipn_setup::info(&client, &ipn_setup::domain_id(&source.name)).await {
        Ok(None) => (
            None,
            format!(
                "no IPN connection `{}` set up (ipn-bridge ds24 setup-ipn)",
                ipn_setup::domain_id(&source.name)
            ),
        ),
        Ok(Some(settings)) => match settings.get("ipn_url").and_then(Value::as_str) {
            Some(url) if url == ours => (Some(true), format!("points at {ours}")),
            Some(url) => (
                Some(false),
                format!("points at {url}, not at {ours} (run ipn-bridge ds24 setup-ipn)"),
            ),
            None => (None, "Digistore24 did not say where it points".into()),
        },
        Err(e) => (Some(false), e.to_string()),
    };
    Some(SourceAnswers { key, products, ipn })
}

/// Every product id `integration` names (`products` and `product_map`, not `"*"`) that the
/// account does not have.
pub fn products_check(integration: &Integration, answers: &SourceAnswers) -> Check {
    let account = match &answers.products {
        Ok(ids) => ids,
        Err(e) => return (Some(false), e.clone()),
    };
    let mut wanted: BTreeSet<u64> = integration.product_map.entries.keys().copied().collect();
    if let ProductFilter::List(list) = &integration.products {
        wanted.extend(list.iter().copied());
    }
    let missing: Vec<String> = wanted
        .iter()
        .filter(|id| !account.contains(id))
        .map(u64::to_string)
        .collect();
    if missing.is_empty() {
        (
            Some(true),
            format!("all {} product id(s) exist in the account", wanted.len()),
        )
    } else {
        (
            Some(false),
            format!("not in the Digistore24 account: {}", missing.join(", ")),
        )
    }
}
