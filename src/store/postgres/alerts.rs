//! The alert outbox on PostgreSQL (see [`crate::store::alerts`]); the same semantics as the
//! SQLite twin, statement for statement.
//!
//! Decisions:
//! - Several daemons share the outbox. Each one's sender may read the same unsent alerts of
//!   a recipient; marking them sent is guarded by `sent_at IS NULL`, so the second marking
//!   changes nothing (a recipient may then get one digest twice, never none: the outbox
//!   prefers a repeat over a loss, as after a crash between mailing and marking on SQLite).
//! - [`PgStore::alert_outbox_due`] reads in one read-only `REPEATABLE READ` transaction, so
//!   a recipient's `unsent_total` and its listed alerts come from one snapshot.
//! - Marking sent and recording a failure loop over the ids with one cached statement in one
//!   transaction (not `= ANY`), so a repeated id counts as often as on SQLite.

use deadpool_postgres::Transaction;
use tokio_postgres::{IsolationLevel, Row};

use super::rows::col;
use super::{PgStore, pg_error};
use crate::store::StoreError;
use crate::store::alerts::{NewAlert, OutboxAlert, OutboxBacklog, RecipientOutbox};

impl PgStore {
    /// Writes an alert and one unsent delivery row per recipient, in one transaction.
    /// Returns the alert's id.
    pub async fn record_alert(&self, alert: NewAlert) -> Result<i64, StoreError> {
        let r: Result<i64, StoreError> = async {
            if alert.recipients.is_empty() {
                return Err(StoreError::Invalid("an alert needs a recipient".into()));
            }
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_error)?;
            let id = insert_alert(&tx, &alert).await?;
            tx.commit().await.map_err(pg_error)?;
            Ok(id)
        }
        .await;
        self.count(r)
    }

    /// The unsent alerts of every recipient that has some and was last mailed at or before
    /// `last_mail_at_or_before` (or never), at most `limit_per_recipient` alerts each.
    pub async fn alert_outbox_due(
        &self,
        last_mail_at_or_before: i64,
        limit_per_recipient: usize,
    ) -> Result<Vec<RecipientOutbox>, StoreError> {
        let r: Result<Vec<RecipientOutbox>, StoreError> = async {
            // More than `i64::MAX` alerts cannot exist: no limit (SQLite's `LIMIT -1`).
            let limit = i64::try_from(limit_per_recipient).unwrap_or(i64::MAX);
            let mut client = self.client().await?;
            let tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(pg_error)?;
            let recipients = tx
                .query(
                    "SELECT u.recipient, u.n,
                            (SELECT MAX(s.sent_at) FROM alert_deliveries s
                             WHERE s.recipient = u.recipient AND s.sent_at IS NOT NULL) AS last_sent
                     FROM (SELECT recipient, COUNT(*) AS n FROM alert_deliveries
                           WHERE sent_at IS NULL GROUP BY recipient) u
                     ORDER BY u.recipient",
                    &[],
                )
                .await
                .map_err(pg_error)?;
            let alerts_of = tx
                .prepare_cached(
                    "SELECT a.id, a.created_at, a.kind, a.integration, a.target, a.job_id,
                            a.ds24_order_id, a.product, a.amount, a.buyer_email, a.message,
                            a.retry_command
                     FROM alert_deliveries d JOIN alerts a ON a.id = d.alert_id
                     WHERE d.recipient = $1 AND d.sent_at IS NULL
                     ORDER BY a.id
                     LIMIT $2",
                )
                .await
                .map_err(pg_error)?;
            let mut out = Vec::new();
            for row in recipients {
                let recipient: String = col(&row, 0)?;
                let unsent_total: i64 = col(&row, 1)?;
                let last_sent_at: Option<i64> = col(&row, 2)?;
                if last_sent_at.is_some_and(|t| t > last_mail_at_or_before) {
                    continue;
                }
                let alerts = tx
                    .query(&alerts_of, &[&recipient, &limit])
                    .await
                    .map_err(pg_error)?
                    .iter()
                    .map(outbox_alert)
                    .collect::<Result<_, _>>()?;
                out.push(RecipientOutbox {
                    recipient,
                    last_sent_at,
                    alerts,
                    unsent_total: u64::try_from(unsent_total).unwrap_or(0),
                });
            }
            tx.commit().await.map_err(pg_error)?;
            Ok(out)
        }
        .await;
        self.count(r)
    }

    /// Marks the given alerts as mailed to `recipient` at `now`.
    pub async fn mark_alerts_sent(
        &self,
        recipient: &str,
        alert_ids: Vec<i64>,
        now: i64,
    ) -> Result<(), StoreError> {
        let r: Result<(), StoreError> = async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_error)?;
            let stmt = tx
                .prepare_cached(
                    "UPDATE alert_deliveries SET sent_at = $3, attempts = attempts + 1,
                            last_error = NULL
                     WHERE alert_id = $1 AND recipient = $2 AND sent_at IS NULL",
                )
                .await
                .map_err(pg_error)?;
            for id in alert_ids {
                tx.execute(&stmt, &[&id, &recipient, &now])
                    .await
                    .map_err(pg_error)?;
            }
            tx.commit().await.map_err(pg_error)
        }
        .await;
        self.count(r)
    }

    /// Records a failed attempt to mail the given alerts to `recipient`; they stay unsent.
    pub async fn record_alert_failure(
        &self,
        recipient: &str,
        alert_ids: Vec<i64>,
        error: &str,
    ) -> Result<(), StoreError> {
        let r: Result<(), StoreError> = async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_error)?;
            let stmt = tx
                .prepare_cached(
                    "UPDATE alert_deliveries SET attempts = attempts + 1, last_error = $3
                     WHERE alert_id = $1 AND recipient = $2 AND sent_at IS NULL",
                )
                .await
                .map_err(pg_error)?;
            for id in alert_ids {
                tx.execute(&stmt, &[&id, &recipient, &error])
                    .await
                    .map_err(pg_error)?;
            }
            tx.commit().await.map_err(pg_error)
        }
        .await;
        self.count(r)
    }

    /// How much is unsent, and whether an alert of `kind` is among it.
    pub async fn alert_backlog(&self, kind: &str) -> Result<OutboxBacklog, StoreError> {
        let r: Result<OutboxBacklog, StoreError> = async {
            let client = self.client().await?;
            // One statement, so the three answers come from one snapshot.
            let row = client
                .query_one(
                    "SELECT COUNT(*), MIN(a.created_at), COALESCE(bool_or(a.kind = $1), FALSE)
                     FROM alert_deliveries d JOIN alerts a ON a.id = d.alert_id
                     WHERE d.sent_at IS NULL",
                    &[&kind],
                )
                .await
                .map_err(pg_error)?;
            let unsent: i64 = col(&row, 0)?;
            Ok(OutboxBacklog {
                unsent: u64::try_from(unsent).unwrap_or(0),
                oldest_created_at: col(&row, 1)?,
                kind_pending: col(&row, 2)?,
            })
        }
        .await;
        self.count(r)
    }
}

/// Writes an alert and its delivery rows inside the caller's transaction (the state change
/// it reports, or [`PgStore::record_alert`] alone). Returns the alert's id. A recipient
/// named twice gets one delivery row (the primary key; `ON CONFLICT DO NOTHING` as SQLite's
/// `INSERT OR IGNORE`).
pub(super) async fn insert_alert(tx: &Transaction<'_>, a: &NewAlert) -> Result<i64, StoreError> {
    let insert = tx
        .prepare_cached(
            "INSERT INTO alerts (created_at, kind, integration, target, job_id, ds24_order_id,
                                 product, amount, buyer_email, message, retry_command)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             RETURNING id",
        )
        .await
        .map_err(pg_error)?;
    let row = tx
        .query_one(
            &insert,
            &[
                &a.created_at,
                &a.kind,
                &a.integration,
                &a.target,
                &a.job_id,
                &a.ds24_order_id,
                &a.product,
                &a.amount,
                &a.buyer_email,
                &a.message,
                &a.retry_command,
            ],
        )
        .await
        .map_err(pg_error)?;
    let id: i64 = col(&row, 0)?;
    let deliveries = tx
        .prepare_cached(
            "INSERT INTO alert_deliveries (alert_id, recipient)
             SELECT $1, r FROM unnest($2::text[]) AS r
             ON CONFLICT DO NOTHING",
        )
        .await
        .map_err(pg_error)?;
    tx.execute(&deliveries, &[&id, &a.recipients])
        .await
        .map_err(pg_error)?;
    Ok(id)
}

fn outbox_alert(r: &Row) -> Result<OutboxAlert, StoreError> {
    Ok(OutboxAlert {
        id: col(r, 0)?,
        created_at: col(r, 1)?,
        kind: col(r, 2)?,
        integration: col(r, 3)?,
        target: col(r, 4)?,
        job_id: col(r, 5)?,
        ds24_order_id: col(r, 6)?,
        product: col(r, 7)?,
        amount: col(r, 8)?,
        buyer_email: col(r, 9)?,
        message: col(r, 10)?,
        retry_command: col(r, 11)?,
    })
}
