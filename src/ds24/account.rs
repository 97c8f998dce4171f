//! `getUserInfo` and `listProducts` (reference §3.5, §3.6): is the key good, which account,
//! which products exist.

use std::collections::BTreeSet;

use super::client::{Client, Ds24Error, Params, text};

/// `getUserInfo().user_name` (read or full access).
pub async fn account_name(client: &Client) -> Result<Option<String>, Ds24Error> {
    let data = client.call("getUserInfo", &Params::new()).await?;
    Ok(data.get("user_name").and_then(text))
}

/// The ids of `listProducts().products[]` (read access is enough).
pub async fn product_ids(client: &Client) -> Result<BTreeSet<u64>, Ds24Error> {
    let data = client.call("listProducts", &Params::new()).await?;
    let list = data
        .get("products")
        .and_then(|v| v.as_array())
        .or_else(|| data.as_array());
    Ok(list
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("id").and_then(text))
        .filter_map(|id| id.parse().ok())
        .collect())
}
