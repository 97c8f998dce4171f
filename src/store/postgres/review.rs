//! The review queries and operator commands on PostgreSQL (see [`crate::store::review`]).

use super::PgStore;
use crate::domain::{EventId, JobId};
use crate::store::StoreError;
use crate::store::review::*;

impl PgStore {
    /// Jobs matching `filter`, newest first.
    pub async fn review_jobs(&self, filter: ReviewFilter) -> Result<Vec<JobListing>, StoreError> {
        let _ = (filter,);
        Err(StoreError::Internal(
            "review_jobs: not yet on PostgreSQL".into(),
        ))
    }

    /// One job with everything known about it; [`StoreError::NotFound`] for an unknown id.
    pub async fn job_detail(&self, id: JobId) -> Result<JobDetail, StoreError> {
        let _ = (id,);
        Err(StoreError::Internal(
            "job_detail: not yet on PostgreSQL".into(),
        ))
    }

    /// Stored IPNs received at or after `since`, newest first, each with its routes.
    pub async fn review_events(
        &self,
        since: Option<i64>,
        limit: Option<u32>,
    ) -> Result<Vec<EventListing>, StoreError> {
        let _ = (since, limit);
        Err(StoreError::Internal(
            "review_events: not yet on PostgreSQL".into(),
        ))
    }

    /// One stored IPN with its routes; [`StoreError::NotFound`] for an unknown id.
    pub async fn review_event(&self, id: EventId) -> Result<EventListing, StoreError> {
        let _ = (id,);
        Err(StoreError::Internal(
            "review_event: not yet on PostgreSQL".into(),
        ))
    }

    /// `queue retry`: the selected dead, held or pending jobs become `pending`, due at `now`;
    /// held jobs behind them are released. All or nothing (see the module docs).
    pub async fn retry_jobs(
        &self,
        selection: RetrySelection,
        operator: Operator,
        now: i64,
    ) -> Result<QueueChange, StoreError> {
        let _ = (selection, operator, now);
        Err(StoreError::Internal(
            "retry_jobs: not yet on PostgreSQL".into(),
        ))
    }

    /// `queue drop`: the named non-final jobs become `dropped`; held jobs behind them are
    /// released. All or nothing (see the module docs).
    pub async fn drop_jobs(
        &self,
        ids: Vec<JobId>,
        operator: Operator,
        now: i64,
    ) -> Result<QueueChange, StoreError> {
        let _ = (ids, operator, now);
        Err(StoreError::Internal(
            "drop_jobs: not yet on PostgreSQL".into(),
        ))
    }

    /// What a purge with this cutoff would remove, without removing it.
    pub async fn purge_preview(&self, cutoff: i64) -> Result<PurgeCount, StoreError> {
        let _ = (cutoff,);
        Err(StoreError::Internal(
            "purge_preview: not yet on PostgreSQL".into(),
        ))
    }

    /// One bounded step of `queue purge`: deletes up to `max_rows` attempt rows of jobs that
    /// became final (delivered or dropped) before `cutoff`, and empties up to `max_rows` raw
    /// bodies of IPNs received before `cutoff` whose jobs (at least one) are all final since
    /// before `cutoff`. Call until it returns zero counts; small batches keep the write lock
    /// short so the running daemon is not blocked.
    ///
    /// Kept, always: `ipns` rows and their business keys (idempotency), jobs, routes, the
    /// ledger (later refunds need the target's ids), `operator_actions`; raw bodies of IPNs
    /// that produced no job (a replay may want them after a configuration change) and of
    /// IPNs with any unfinished job.
    pub async fn purge_history_batch(
        &self,
        cutoff: i64,
        max_rows: u32,
    ) -> Result<PurgeCount, StoreError> {
        let _ = (cutoff, max_rows);
        Err(StoreError::Internal(
            "purge_history_batch: not yet on PostgreSQL".into(),
        ))
    }

    /// Writes one audit row not tied to a job (e.g. a finished purge).
    pub async fn record_operator_action(
        &self,
        command: &str,
        operator: Operator,
        now: i64,
    ) -> Result<(), StoreError> {
        let _ = (command, operator, now);
        Err(StoreError::Internal(
            "record_operator_action: not yet on PostgreSQL".into(),
        ))
    }
}
