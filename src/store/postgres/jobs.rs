//! The inbox, routing, jobs, attempts and the ledger on PostgreSQL (the methods of
//! [`crate::store::sqlite`]'s `mod.rs`, same semantics).

use std::collections::BTreeMap;

use super::PgStore;
use crate::domain::{AttemptReport, EventId, ImportRef, JobId, Receipt};
use crate::store::alerts::NewAlert;
use crate::store::{
    AttemptRow, Disposition, Ingested, IpnRow, JobFilter, JobRow, LeasedJob, LedgerRow, NewIpn,
    NewRoute, PaymentRoute, Rerouted, StoreError, StoredIpn,
};

impl PgStore {
    /// Stores an IPN with its routing decisions and jobs in one transaction; a repeat of a
    /// stored IPN writes nothing.
    pub async fn ingest(&self, ipn: NewIpn) -> Result<Ingested, StoreError> {
        let _ = (ipn,);
        Err(StoreError::Internal("ingest: not yet on PostgreSQL".into()))
    }

    /// After a crash: every attempt left open is marked `interrupted`, and its job goes back
    /// to `pending` at `retry_at`, flagged for reconciliation when its action is not safe to
    /// repeat ([`ActionKind::needs_reconcile`], the one list of such kinds: an import, a
    /// refund). Returns the number of jobs recovered.
    pub async fn recover_interrupted(&self, now: i64, retry_at: i64) -> Result<u64, StoreError> {
        let _ = (now, retry_at);
        Err(StoreError::Internal(
            "recover_interrupted: not yet on PostgreSQL".into(),
        ))
    }

    /// Leases up to `limit` due jobs of `target`: each becomes `in_flight` with a new open
    /// attempt row. A job waits while an earlier job of the same integration and Digistore24
    /// order is unfinished.
    pub async fn lease_due(
        &self,
        target: &str,
        now: i64,
        limit: usize,
    ) -> Result<Vec<LeasedJob>, StoreError> {
        let _ = (target, now, limit);
        Err(StoreError::Internal(
            "lease_due: not yet on PostgreSQL".into(),
        ))
    }

    /// The earliest `next_attempt_at` of the target's pending jobs.
    pub async fn next_due_at(&self, target: &str) -> Result<Option<i64>, StoreError> {
        let _ = (target,);
        Err(StoreError::Internal(
            "next_due_at: not yet on PostgreSQL".into(),
        ))
    }

    /// A reconcile attempt found nothing: closes it and opens a send attempt for the same
    /// lease. Returns the new attempt.
    pub async fn reconciled_absent(
        &self,
        job: JobId,
        attempt_id: i64,
        report: AttemptReport,
        now: i64,
    ) -> Result<(i64, u32), StoreError> {
        let _ = (job, attempt_id, report, now);
        Err(StoreError::Internal(
            "reconciled_absent: not yet on PostgreSQL".into(),
        ))
    }

    /// Records the end of an attempt and moves its job on. `alert` (a dead letter's) is
    /// written in the same transaction: a job is never dead without its alert, nor an alert
    /// recorded for a job that is not.
    pub async fn finish_attempt(
        &self,
        job: JobId,
        attempt_id: i64,
        report: AttemptReport,
        disposition: Disposition,
        alert: Option<NewAlert>,
        now: i64,
    ) -> Result<(), StoreError> {
        let _ = (job, attempt_id, report, disposition, alert, now);
        Err(StoreError::Internal(
            "finish_attempt: not yet on PostgreSQL".into(),
        ))
    }

    pub async fn job(&self, id: JobId) -> Result<JobRow, StoreError> {
        let _ = (id,);
        Err(StoreError::Internal("job: not yet on PostgreSQL".into()))
    }

    pub async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<JobRow>, StoreError> {
        let _ = (filter,);
        Err(StoreError::Internal(
            "list_jobs: not yet on PostgreSQL".into(),
        ))
    }

    pub async fn jobs_of_ipn(&self, ipn: EventId) -> Result<Vec<JobRow>, StoreError> {
        let _ = (ipn,);
        Err(StoreError::Internal(
            "jobs_of_ipn: not yet on PostgreSQL".into(),
        ))
    }

    pub async fn attempts(&self, job: JobId) -> Result<Vec<AttemptRow>, StoreError> {
        let _ = (job,);
        Err(StoreError::Internal(
            "attempts: not yet on PostgreSQL".into(),
        ))
    }

    /// Every ledger entry, oldest first.
    pub async fn ledger(&self) -> Result<Vec<LedgerRow>, StoreError> {
        Err(StoreError::Internal("ledger: not yet on PostgreSQL".into()))
    }

    /// Stored IPNs, oldest first.
    pub async fn list_ipns(&self, limit: Option<u32>) -> Result<Vec<IpnRow>, StoreError> {
        let _ = (limit,);
        Err(StoreError::Internal(
            "list_ipns: not yet on PostgreSQL".into(),
        ))
    }

    /// Number of jobs per state.
    pub async fn job_counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        Err(StoreError::Internal(
            "job_counts: not yet on PostgreSQL".into(),
        ))
    }

    /// The routing decisions recorded for an IPN: `(integration, decision, reason)`.
    pub async fn routes_of_ipn(
        &self,
        ipn: EventId,
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        let _ = (ipn,);
        Err(StoreError::Internal(
            "routes_of_ipn: not yet on PostgreSQL".into(),
        ))
    }

    /// The delivered import an action refers to, from the ledger: the latest import of the
    /// order item in `integration` whose reference `import` matches.
    pub async fn ledger_import(
        &self,
        integration: &str,
        import: &ImportRef,
    ) -> Result<Option<Receipt>, StoreError> {
        let _ = (integration, import);
        Err(StoreError::Internal(
            "ledger_import: not yet on PostgreSQL".into(),
        ))
    }

    /// Every delivered import of Digistore24 order `ds24_order_id` in `integration`, newest
    /// first: the candidates a refund or chargeback of the order chooses from.
    pub async fn ledger_imports(
        &self,
        integration: &str,
        ds24_order_id: &str,
    ) -> Result<Vec<LedgerRow>, StoreError> {
        let _ = (integration, ds24_order_id);
        Err(StoreError::Internal(
            "ledger_imports: not yet on PostgreSQL".into(),
        ))
    }

    /// How `integration` last routed the payment IPN of Digistore24 order `ds24_order_id`,
    /// item `item` (its `order_item_id`, else its product id) whose `transaction_id` or
    /// `parent_transaction_id` is `payment`; `None` when no such payment IPN was received.
    pub async fn payment_route(
        &self,
        integration: &str,
        ds24_order_id: &str,
        item: &str,
        payment: &str,
    ) -> Result<Option<PaymentRoute>, StoreError> {
        let _ = (integration, ds24_order_id, item, payment);
        Err(StoreError::Internal(
            "payment_route: not yet on PostgreSQL".into(),
        ))
    }

    /// A stored IPN by id.
    pub async fn ipn(&self, id: EventId) -> Result<StoredIpn, StoreError> {
        let _ = (id,);
        Err(StoreError::Internal("ipn: not yet on PostgreSQL".into()))
    }

    /// Records new routing decisions for a stored IPN (a replay with today's
    /// configuration). A job is created only where the IPN has none for that integration
    /// yet, so a replay can never repeat an import. An existing job that is dead or dropped
    /// (a wrong product map made Konnektive refuse it, say) is re-routed in place: it takes
    /// today's action and becomes pending, keeping its id, its attempts and any pending
    /// reconciliation, so an earlier attempt that may have reached Konnektive is still looked
    /// up first. Any other existing job is reported and kept. Recorded in `operator_actions`.
    pub async fn add_routes(
        &self,
        ipn: EventId,
        routes: Vec<NewRoute>,
        user: String,
        now: i64,
    ) -> Result<Vec<Rerouted>, StoreError> {
        let _ = (ipn, routes, user, now);
        Err(StoreError::Internal(
            "add_routes: not yet on PostgreSQL".into(),
        ))
    }

    /// A cheap real write that proves the database file accepts commits (for health
    /// checks): page 1 of the file is rewritten (its `application_id`) and committed with an
    /// fsync like any IPN, and the writer checks afterwards that the file is still the one
    /// at the path. The error says why not.
    pub async fn probe_writable(&self) -> Result<(), StoreError> {
        Err(StoreError::Internal(
            "probe_writable: not yet on PostgreSQL".into(),
        ))
    }
}
