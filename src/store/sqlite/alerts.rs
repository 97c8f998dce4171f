//! The SQL of the alert outbox (see [`crate::store::alerts`]).

use rusqlite::{Connection, params};

use super::SqliteStore;
use crate::store::StoreError;
use crate::store::alerts::{NewAlert, OutboxAlert, OutboxBacklog, RecipientOutbox};

impl SqliteStore {
    /// Writes an alert and one unsent delivery row per recipient, in one transaction.
    /// Returns the alert's id.
    pub async fn record_alert(&self, alert: NewAlert) -> Result<i64, StoreError> {
        if alert.recipients.is_empty() {
            return Err(StoreError::Invalid("an alert needs a recipient".into()));
        }
        self.call(move |c| insert_alert(c, &alert)).await
    }

    /// The unsent alerts of every recipient that has some and was last mailed at or before
    /// `last_mail_at_or_before` (or never), at most `limit_per_recipient` alerts each.
    pub async fn alert_outbox_due(
        &self,
        last_mail_at_or_before: i64,
        limit_per_recipient: usize,
    ) -> Result<Vec<RecipientOutbox>, StoreError> {
        self.call(move |c| due(c, last_mail_at_or_before, limit_per_recipient))
            .await
    }

    /// Marks the given alerts as mailed to `recipient` at `now`.
    pub async fn mark_alerts_sent(
        &self,
        recipient: &str,
        alert_ids: Vec<i64>,
        now: i64,
    ) -> Result<(), StoreError> {
        let recipient = recipient.to_owned();
        self.call(move |c| {
            let mut stmt = c.prepare_cached(
                "UPDATE alert_deliveries SET sent_at = ?3, attempts = attempts + 1,
                        last_error = NULL
                 WHERE alert_id = ?1 AND recipient = ?2 AND sent_at IS NULL",
            )?;
            for id in alert_ids {
                stmt.execute(params![id, recipient, now])?;
            }
            Ok(())
        })
        .await
    }

    /// Records a failed attempt to mail the given alerts to `recipient`; they stay unsent.
    pub async fn record_alert_failure(
        &self,
        recipient: &str,
        alert_ids: Vec<i64>,
        error: &str,
    ) -> Result<(), StoreError> {
        let recipient = recipient.to_owned();
        let error = error.to_owned();
        self.call(move |c| {
            let mut stmt = c.prepare_cached(
                "UPDATE alert_deliveries SET attempts = attempts + 1, last_error = ?3
                 WHERE alert_id = ?1 AND recipient = ?2 AND sent_at IS NULL",
            )?;
            for id in alert_ids {
                stmt.execute(params![id, recipient, error])?;
            }
            Ok(())
        })
        .await
    }

    /// How much is unsent, and whether an alert of `kind` is among it.
    pub async fn alert_backlog(&self, kind: &str) -> Result<OutboxBacklog, StoreError> {
        let kind = kind.to_owned();
        self.call(move |c| {
            let (unsent, oldest): (i64, Option<i64>) = c.query_row(
                "SELECT COUNT(*), MIN(a.created_at)
                 FROM alert_deliveries d JOIN alerts a ON a.id = d.alert_id
                 WHERE d.sent_at IS NULL",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let kind_pending: bool = c.query_row(
                "SELECT EXISTS (SELECT 1 FROM alert_deliveries d JOIN alerts a ON a.id = d.alert_id
                                WHERE d.sent_at IS NULL AND a.kind = ?1)",
                params![kind],
                |r| r.get(0),
            )?;
            Ok(OutboxBacklog {
                unsent: u64::try_from(unsent).unwrap_or(0),
                oldest_created_at: oldest,
                kind_pending,
            })
        })
        .await
    }
}

/// Writes an alert and its delivery rows inside the caller's transaction (the state change
/// it reports, or [`SqliteStore::record_alert`] alone).
pub(super) fn insert_alert(c: &Connection, a: &NewAlert) -> Result<i64, StoreError> {
    let id: i64 = c
        .prepare_cached(
            "INSERT INTO alerts (created_at, kind, integration, target, job_id, ds24_order_id,
                                 product, amount, buyer_email, message, retry_command)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             RETURNING id",
        )?
        .query_row(
            params![
                a.created_at,
                a.kind,
                a.integration,
                a.target,
                a.job_id,
                a.ds24_order_id,
                a.product,
                a.amount,
                a.buyer_email,
                a.message,
                a.retry_command
            ],
            |r| r.get(0),
        )?;
    let mut stmt = c.prepare_cached(
        "INSERT OR IGNORE INTO alert_deliveries (alert_id, recipient) VALUES (?1, ?2)",
    )?;
    for recipient in &a.recipients {
        stmt.execute(params![id, recipient])?;
    }
    Ok(id)
}

fn due(c: &Connection, cutoff: i64, limit: usize) -> Result<Vec<RecipientOutbox>, StoreError> {
    let recipients: Vec<(String, i64, Option<i64>)> = {
        let mut stmt = c.prepare_cached(
            "SELECT u.recipient, u.n,
                    (SELECT MAX(s.sent_at) FROM alert_deliveries s
                     WHERE s.recipient = u.recipient AND s.sent_at IS NOT NULL) AS last_sent
             FROM (SELECT recipient, COUNT(*) AS n FROM alert_deliveries
                   WHERE sent_at IS NULL GROUP BY recipient) u
             ORDER BY u.recipient",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    let mut out = Vec::new();
    let mut stmt = c.prepare_cached(
        "SELECT a.id, a.created_at, a.kind, a.integration, a.target, a.job_id, a.ds24_order_id,
                a.product, a.amount, a.buyer_email, a.message, a.retry_command
         FROM alert_deliveries d JOIN alerts a ON a.id = d.alert_id
         WHERE d.recipient = ?1 AND d.sent_at IS NULL
         ORDER BY a.id
         LIMIT ?2",
    )?;
    for (recipient, unsent_total, last_sent_at) in recipients {
        if last_sent_at.is_some_and(|t| t > cutoff) {
            continue;
        }
        let rows = stmt.query_map(params![recipient, limit as i64], |r| {
            Ok(OutboxAlert {
                id: r.get(0)?,
                created_at: r.get(1)?,
                kind: r.get(2)?,
                integration: r.get(3)?,
                target: r.get(4)?,
                job_id: r.get(5)?,
                ds24_order_id: r.get(6)?,
                product: r.get(7)?,
                amount: r.get(8)?,
                buyer_email: r.get(9)?,
                message: r.get(10)?,
                retry_command: r.get(11)?,
            })
        })?;
        let alerts = rows.collect::<Result<_, _>>()?;
        out.push(RecipientOutbox {
            recipient,
            last_sent_at,
            alerts,
            unsent_total: u64::try_from(unsent_total).unwrap_or(0),
        });
    }
    Ok(out)
}
