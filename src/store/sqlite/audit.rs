//! What the Digistore24 audit asks the store: which (order id, transaction id) pairs have a
//! stored IPN, and which missing transactions were already alerted on (migration 6). Plain
//! ids only: the store knows nothing of the API client.

use std::collections::HashSet;

use rusqlite::{Connection, OptionalExtension, params};

use super::SqliteStore;
use crate::store::StoreError;
use crate::store::alerts::NewAlert;

impl SqliteStore {
    /// The pairs of `wanted` for which an IPN of `source` is stored.
    pub async fn received_transactions(
        &self,
        source: &str,
        wanted: Vec<(String, String)>,
    ) -> Result<HashSet<(String, String)>, StoreError> {
        let source = source.to_owned();
        self.read(move |c| received(c, &source, wanted)).await
    }

    /// Records `alert` unless this transaction of `source` was alerted on before, in one
    /// transaction. Returns whether it was recorded now.
    pub async fn record_audit_alert(
        &self,
        source: &str,
        order_id: &str,
        transaction_id: &str,
        alert: NewAlert,
    ) -> Result<bool, StoreError> {
        if alert.recipients.is_empty() {
            return Err(StoreError::Invalid("an alert needs a recipient".into()));
        }
        let (source, order_id, transaction_id) = (
            source.to_owned(),
            order_id.to_owned(),
            transaction_id.to_owned(),
        );
        self.call(move |c| {
            let inserted = c.execute(
                "INSERT OR IGNORE INTO audit_alerted (source, order_id, transaction_id, alerted_at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![source, order_id, transaction_id, alert.created_at],
            )?;
            if inserted == 0 {
                return Ok(false);
            }
            super::alerts::insert_alert(c, &alert)?;
            Ok(true)
        })
        .await
    }
}

/// Whether an IPN of this order and transaction was stored (index `ipns_transaction`: a
/// transaction has an IPN or a few).
pub(super) const RECEIVED_SQL: &str =
    "SELECT 1 FROM ipns WHERE source = ?1 AND order_id = ?2 AND transaction_id = ?3 LIMIT 1";

fn received(
    c: &Connection,
    source: &str,
    wanted: Vec<(String, String)>,
) -> Result<HashSet<(String, String)>, StoreError> {
    let mut stmt = c.prepare_cached(RECEIVED_SQL)?;
    let mut out = HashSet::new();
    for (order, transaction) in wanted {
        let found = stmt
            .query_row(params![source, order, transaction], |_| Ok(()))
            .optional()?;
        if found.is_some() {
            out.insert((order, transaction));
        }
    }
    Ok(out)
}
