//! `listTransactions` (reference §3.4) and the audit's comparison (§4.2): every payment,
//! refund or chargeback Digistore24 has, matched against the stored IPNs by order id
//! (`purchase_id`) and transaction id (`id`).

use std::collections::HashSet;

use serde_json::Value;

use super::client::{Client, Ds24Error, Params, guesses, int, text};

/// One `transaction_list[]` row, as far as the audit needs it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Transaction {
    pub order_id: String,
    pub transaction_id: String,
    /// `payment`, `refund`, `chargeback`.
    #[serde(rename = "type")]
    pub kind: String,
    pub amount: String,
    pub currency: String,
    /// `YYYY-MM-DD HH:MM:SS`, Digistore24's server time.
    pub date: String,
    /// Masked (`j***@example.com`).
    pub buyer: String,
}

/// The kinds the audit looks for: these all come as IPNs (`on_payment`, `on_refund`,
/// `on_chargeback`). `refund_request` has no IPN of its own.
pub const AUDITED_KINDS: [&str; 3] = ["payment", "refund", "chargeback"];

/// Every vendor transaction between `from` and `to` (DEV-4 points in time, e.g. `-7d`,
/// `now`), all pages.
pub async fn list(client: &Client, from: &str, to: &str) -> Result<Vec<Transaction>, Ds24Error> {
    let mut out = Vec::new();
    let mut page = 1_i64;
    loop {
        let mut p = Params::new();
        p.set("from", from)
            .set("to", to)
            .nested("search", &["role"], "vendor")
            .set("sort_by", "date")
            .set("sort_order", "asc")
            .set("page_no", page.to_string())
            .set("page_size", guesses::PAGE_SIZE.to_string());
        let data = client.call("listTransactions", &p).await?;
        let rows = data
            .get("transaction_list")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        out.extend(rows.iter().filter_map(row));
        let pages = data.get("page_count").and_then(int).unwrap_or(1);
        if page >= pages || rows.is_empty() {
            return Ok(out);
        }
        page += 1;
    }
}

fn row(v: &Value) -> Option<Transaction> {
    let kind = v.get("transaction_type").and_then(text)?;
    if !AUDITED_KINDS.contains(&kind.as_str()) {
        return None;
    }
    let buyer = v
        .get("buyer")
        .and_then(|b| b.get("email"))
        .and_then(text)
        .map(|e| mask_email(&e))
        .unwrap_or_default();
    Some(Transaction {
        order_id: v.get("purchase_id").and_then(text)?,
        transaction_id: v.get("id").and_then(text)?,
        kind,
        amount: v.get("amount").and_then(text).unwrap_or_default(),
        currency: v.get("currency").and_then(text).unwrap_or_default(),
        date: v.get("created_at").and_then(text).unwrap_or_default(),
        buyer,
    })
}

/// `jane@example.com` → `j***@example.com`.
pub fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".to_owned(),
    }
}

/// The transactions without a stored IPN; `received` holds `(order_id, transaction_id)`.
pub fn missing(all: &[Transaction], received: &HashSet<(String, String)>) -> Vec<Transaction> {
    all.iter()
        .filter(|t| !received.contains(&(t.order_id.clone(), t.transaction_id.clone())))
        .cloned()
        .collect()
}

/// A duration as a DEV-4 relative point in the past (`-7d`, `-90m`), in its largest exact
/// unit.
pub fn ago(d: std::time::Duration) -> String {
    let secs = d.as_secs().max(1);
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs.is_multiple_of(size) {
            return format!("-{}{unit}", secs / size);
        }
    }
    format!("-{secs}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_accept_numbers_and_mask_the_buyer() {
        let t = row(&serde_json::json!({
            "id": 3999938, "purchase_id": "A1B2C3D4", "amount": -10.5, "currency": "EUR",
            "transaction_type": "refund", "created_at": "2026-08-18 08:41:48",
            "buyer": {"email": "jane@example.com"}
        }))
        .expect("row");
        assert_eq!(t.transaction_id, "3999938");
        assert_eq!(t.amount, "-10.5");
        assert_eq!(t.buyer, "j***@example.com");
        assert!(row(&serde_json::json!({"id": 1, "purchase_id": "X", "transaction_type": "refund_request"})).is_none());
    }

    #[test]
    fn ago_uses_the_largest_exact_unit() {
        use std::time::Duration;
        assert_eq!(ago(Duration::from_secs(7 * 86_400)), "-7d");
        assert_eq!(ago(Duration::from_secs(30 * 3600)), "-30h");
        assert_eq!(ago(Duration::from_secs(90 * 60)), "-90m");
        assert_eq!(ago(Duration::from_millis(1500)), "-1s");
    }
}
