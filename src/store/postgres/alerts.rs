//! The alert outbox on PostgreSQL (see [`crate::store::alerts`]).

use super::PgStore;
use crate::store::StoreError;
use crate::store::alerts::{NewAlert, OutboxBacklog, RecipientOutbox};

impl PgStore {
    /// Writes an alert and one unsent delivery row per recipient, in one transaction.
    /// Returns the alert's id.
    pub async fn record_alert(&self, alert: NewAlert) -> Result<i64, StoreError> {
        let _ = (alert,);
        Err(StoreError::Internal(
            "record_alert: not yet on PostgreSQL".into(),
        ))
    }

    /// The unsent alerts of every recipient that has some and was last mailed at or before
    /// `last_mail_at_or_before` (or never), at most `limit_per_recipient` alerts each.
    pub async fn alert_outbox_due(
        &self,
        last_mail_at_or_before: i64,
        limit_per_recipient: usize,
    ) -> Result<Vec<RecipientOutbox>, StoreError> {
        let _ = (last_mail_at_or_before, limit_per_recipient);
        Err(StoreError::Internal(
            "alert_outbox_due: not yet on PostgreSQL".into(),
        ))
    }

    /// Marks the given alerts as mailed to `recipient` at `now`.
    pub async fn mark_alerts_sent(
        &self,
        recipient: &str,
        alert_ids: Vec<i64>,
        now: i64,
    ) -> Result<(), StoreError> {
        let _ = (recipient, alert_ids, now);
        Err(StoreError::Internal(
            "mark_alerts_sent: not yet on PostgreSQL".into(),
        ))
    }

    /// Records a failed attempt to mail the given alerts to `recipient`; they stay unsent.
    pub async fn record_alert_failure(
        &self,
        recipient: &str,
        alert_ids: Vec<i64>,
        error: &str,
    ) -> Result<(), StoreError> {
        let _ = (recipient, alert_ids, error);
        Err(StoreError::Internal(
            "record_alert_failure: not yet on PostgreSQL".into(),
        ))
    }

    /// How much is unsent, and whether an alert of `kind` is among it.
    pub async fn alert_backlog(&self, kind: &str) -> Result<OutboxBacklog, StoreError> {
        let _ = (kind,);
        Err(StoreError::Internal(
            "alert_backlog: not yet on PostgreSQL".into(),
        ))
    }
}

/// Writes an alert and its delivery rows inside the caller's transaction (the state change
/// it reports, or [`PgStore::record_alert`] alone). Returns the alert's id.
#[allow(dead_code)]
pub(super) async fn insert_alert(
    tx: &deadpool_postgres::Transaction<'_>,
    a: &NewAlert,
) -> Result<i64, StoreError> {
    let _ = (tx, a);
    Err(StoreError::Internal(
        "insert_alert: not yet on PostgreSQL".into(),
    ))
}
