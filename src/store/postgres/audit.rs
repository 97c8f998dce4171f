//! What the Digistore24 audit asks the store, on PostgreSQL.

use std::collections::HashSet;

use super::PgStore;
use crate::store::StoreError;
use crate::store::alerts::NewAlert;

impl PgStore {
    /// The pairs of `wanted` for which an IPN of `source` is stored.
    pub async fn received_transactions(
        &self,
        source: &str,
        wanted: Vec<(String, String)>,
    ) -> Result<HashSet<(String, String)>, StoreError> {
        let _ = (source, wanted);
        Err(StoreError::Internal(
            "received_transactions: not yet on PostgreSQL".into(),
        ))
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
        let _ = (source, order_id, transaction_id, alert);
        Err(StoreError::Internal(
            "record_audit_alert: not yet on PostgreSQL".into(),
        ))
    }
}
