//! The PostgreSQL side of the batched store calls added for throughput (issue 13).
//!
//! PostgreSQL has no single writer to relieve: every operation runs on a pooled connection
//! and concurrent commits share the server's own group commit. So a batch is simply its
//! items, one after the other, each through the backend's own single-item operation (its
//! own transaction): a failing item fails alone, as on SQLite.

use super::{PgStore, pg_error};
use crate::domain::JobId;
use crate::store::{FinishedAttempt, StoreError};

/// [`crate::store::Store::finish_attempts`] on PostgreSQL.
pub async fn finish_attempts(
    store: &PgStore,
    items: Vec<FinishedAttempt>,
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let mut results = Vec::with_capacity(items.len());
    for item in items {
        results.push(
            store
                .finish_attempt(
                    item.job,
                    item.attempt_id,
                    item.report,
                    item.disposition,
                    item.alert,
                    item.now,
                )
                .await,
        );
    }
    Ok(results)
}

/// [`crate::store::Store::release_leases`] on PostgreSQL: the same two statements as on
/// SQLite, in one transaction.
pub async fn release_leases(
    store: &PgStore,
    leases: Vec<(JobId, i64)>,
    now: i64,
) -> Result<(), StoreError> {
    let mut client = store.client().await?;
    let tx = client.transaction().await.map_err(pg_error)?;
    for (job, attempt_id) in &leases {
        let open = tx
            .execute(
                "DELETE FROM attempts WHERE id = $1 AND job_id = $2 AND outcome IS NULL",
                &[attempt_id, &job.0],
            )
            .await
            .map_err(pg_error)?;
        if open == 1 {
            tx.execute(
                "UPDATE jobs SET state = 'pending', attempts = GREATEST(attempts - 1, 0),
                        updated_at = $2
                 WHERE id = $1 AND state = 'in_flight'",
                &[&job.0, &now],
            )
            .await
            .map_err(pg_error)?;
        }
    }
    tx.commit().await.map_err(pg_error)
}
