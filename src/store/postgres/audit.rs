//! What the Digistore24 audit asks the store, on PostgreSQL (the SQLite twin's semantics).
//!
//! Decisions:
//! - [`PgStore::received_transactions`] asks once for every wanted pair (two parallel
//!   `text[]` parameters unnested into pairs) instead of once per pair: one round trip, and
//!   the answer comes from one snapshot.
//! - "Alerted once" across instances rests on the primary key of `audit_alerted`: two
//!   daemons auditing at once both try the insert; the second waits for the first's commit
//!   and then inserts nothing, so it records no alert.

use std::collections::HashSet;

use super::alerts::insert_alert;
use super::rows::col;
use super::{PgStore, pg_error};
use crate::store::StoreError;
use crate::store::alerts::NewAlert;

impl PgStore {
    /// The pairs of `wanted` for which an IPN of `source` is stored.
    pub async fn received_transactions(
        &self,
        source: &str,
        wanted: Vec<(String, String)>,
    ) -> Result<HashSet<(String, String)>, StoreError> {
        let r: Result<HashSet<(String, String)>, StoreError> = async {
            if wanted.is_empty() {
                return Ok(HashSet::new());
            }
            let (orders, transactions): (Vec<String>, Vec<String>) = wanted.into_iter().unzip();
            let client = self.client().await?;
            let stmt = client
                .prepare_cached(
                    "SELECT DISTINCT i.order_id, i.transaction_id
                     FROM unnest($2::text[], $3::text[]) AS w (order_id, transaction_id)
                     JOIN ipns i ON i.source = $1 AND i.order_id = w.order_id
                                AND i.transaction_id = w.transaction_id",
                )
                .await
                .map_err(pg_error)?;
            let rows = client
                .query(&stmt, &[&source, &orders, &transactions])
                .await
                .map_err(pg_error)?;
            rows.iter().map(|r| Ok((col(r, 0)?, col(r, 1)?))).collect()
        }
        .await;
        self.count(r)
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
        let r: Result<bool, StoreError> = async {
            if alert.recipients.is_empty() {
                return Err(StoreError::Invalid("an alert needs a recipient".into()));
            }
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_error)?;
            let inserted = tx
                .execute(
                    "INSERT INTO audit_alerted (source, order_id, transaction_id, alerted_at)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT DO NOTHING",
                    &[&source, &order_id, &transaction_id, &alert.created_at],
                )
                .await
                .map_err(pg_error)?;
            if inserted == 0 {
                // Nothing was written; dropping the transaction rolls the empty one back.
                return Ok(false);
            }
            insert_alert(&tx, &alert).await?;
            tx.commit().await.map_err(pg_error)?;
            Ok(true)
        }
        .await;
        self.count(r)
    }
}
