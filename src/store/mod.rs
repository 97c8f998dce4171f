//! Durable state: the inbox of received IPNs, how each was routed, delivery jobs, one row per
//! delivery attempt, and the ledger from Digistore24 ids to the target's ids.
//!
//! **The backend seam.** The rest of the program talks to one API, [`Store`], an enum over
//! the backends: [`sqlite`] (the default: one daemon on one file, a writer thread with group
//! commit) and [`postgres`] (several daemons sharing one database and one queue). An enum,
//! not a trait object: the set of backends is closed and known here, async methods need no
//! boxing, and `match` makes a backend that misses a method a compile error. The records the
//! callers hand in and get back (`NewIpn`, `JobRow`, …) and [`StoreError`] are defined here,
//! once, for both; all SQL lives in the backend modules. Nothing here knows about HTTP,
//! Konnektive, the rules or the IPN format: payloads are kept as JSON.
//!
//! One test suite ([`tests`]) runs against both backends, so they cannot drift.
//!

pub mod alerts;
pub mod postgres;
pub mod review;
pub mod sqlite;
#[doc(hidden)]
pub mod testing;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::Path;

use crate::domain::{
    Action, ActionKind, AttemptReport, EventId, ImportRef, JobId, JobState, Receipt,
};

use alerts::{NewAlert, OutboxBacklog, RecipientOutbox};
use review::{
    EventListing, JobDetail, JobListing, Operator, PurgeCount, QueueChange, RetrySelection,
    ReviewFilter,
};
use std::collections::HashSet;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use sqlite::{EmptyFile, QUICK_CHECK_BUDGET_SECS, SCHEMA_VERSION, lock_path};

/// Why a store operation failed, phrased for what the caller should do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be written or read right now (I/O error, disk full, read-only
    /// file, locked by another process). The caller should answer "try again later".
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The file was written by a newer build.
    #[error("incompatible database: {0}")]
    Incompatible(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// The request itself is wrong (a state change that is not allowed, say).
    #[error("{0}")]
    Invalid(String),
    /// A bug or a damaged database.
    #[error("database error: {0}")]
    Internal(String),
    /// The file is not a sound database (damaged, not SQLite, empty where a database is
    /// expected). A person must restore or replace it.
    #[error("damaged database: {0}")]
    Damaged(String),
    /// Another daemon holds the database (see `lock`).
    #[error("{0}")]
    InUse(String),
    #[error("the store is closed")]
    Closed,
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Internal(format!("stored JSON: {e}"))
    }
}

/// A received, verified IPN with its routing, to be stored atomically.
#[derive(Debug, Clone)]
pub struct NewIpn {
    pub source: String,
    pub business_key: String,
    pub event: String,
    pub order_id: Option<String>,
    pub order_item_id: Option<String>,
    pub product_id: Option<String>,
    pub transaction_id: Option<String>,
    pub buyer_email: Option<String>,
    pub amount: Option<String>,
    pub currency: Option<String>,
    pub received_at: i64,
    pub raw_body: Vec<u8>,
    pub routes: Vec<NewRoute>,
    /// Alerts about this IPN (a route that needs a person), written in the same transaction
    /// as the IPN, so a crash cannot keep one without the other; a duplicate writes neither.
    /// [`alerts::EVENT_ID_SLOT`] in an alert's message or retry command becomes the IPN's id.
    pub alerts: Vec<NewAlert>,
    /// The IPN's `parent_transaction_id`; a payment's is kept in the ledger with its import,
    /// because a refund may name either id of the payment it reverses.
    pub parent_transaction_id: Option<String>,
}

/// One integration's routing decision for an IPN.
#[derive(Debug, Clone)]
pub struct NewRoute {
    pub integration: String,
    pub decision: RouteDecision,
}

#[derive(Debug, Clone)]
pub enum RouteDecision {
    /// Create a job; `reason` says why it matched (for `events show`).
    Job { job: NewJob, reason: String },
    /// No job, with a human-readable reason.
    Skip { reason: String },
}

#[derive(Debug, Clone)]
pub struct NewJob {
    pub target: String,
    pub action: Box<Action>,
    /// Jobs with the same `(integration, order_key)` run one at a time, in id order.
    pub order_key: String,
    /// Earliest first attempt (receipt time plus the integration's delay).
    pub not_before: i64,
}

/// What [`Store::ingest`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    Stored {
        ipn_id: EventId,
        jobs: Vec<JobId>,
    },
    /// The same IPN (same source and business key) was stored before; nothing was written.
    Duplicate {
        ipn_id: EventId,
    },
}

/// Whether an attempt sends the action or first looks for its earlier result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptKind {
    Send,
    Reconcile,
}

impl AttemptKind {
    fn as_str(self) -> &'static str {
        match self {
            AttemptKind::Send => "send",
            AttemptKind::Reconcile => "reconcile",
        }
    }
}

/// A job taken by the dispatcher, with its open attempt row.
#[derive(Debug, Clone)]
pub struct LeasedJob {
    pub id: JobId,
    pub ipn_id: EventId,
    pub integration: String,
    pub target: String,
    pub action: Action,
    pub attempt_id: i64,
    /// 1-based count of attempts including this one.
    pub attempt_no: u32,
    pub kind: AttemptKind,
    pub created_at: i64,
    /// When the job's `give_up_after` window started: its creation, or the operator's
    /// last `queue retry`.
    pub retry_base: i64,
}

/// How an attempt ends for its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    Delivered(Receipt),
    Retry {
        at: i64,
        reconcile: bool,
    },
    /// Back to `pending` at `at` without counting the attempt (the target refused every
    /// request, so the job itself did not fail; see the target pause in `delivery`).
    Requeue {
        at: i64,
    },
    /// Given up. Later jobs of the same Digistore24 order in the same integration become
    /// `held` until this one is retried or dropped.
    Dead,
}

/// A stored job, for review.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JobRow {
    pub id: i64,
    pub ipn_id: i64,
    pub integration: String,
    pub target: String,
    pub action: String,
    pub order_key: String,
    pub state: String,
    pub attempts: u32,
    pub needs_reconcile: bool,
    pub next_attempt_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_error: Option<String>,
}

/// A stored attempt, for review.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AttemptRow {
    pub id: i64,
    pub job_id: i64,
    pub number: u32,
    pub kind: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub outcome: Option<String>,
    pub endpoint: Option<String>,
    pub http_status: Option<u16>,
    pub request: Option<String>,
    pub response: Option<String>,
    pub reason: Option<String>,
}

/// A ledger entry: which target order a Digistore24 order item / payment became.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LedgerRow {
    pub job_id: i64,
    pub integration: String,
    pub ds24_order_id: String,
    pub ds24_item: Option<String>,
    pub ds24_transaction_id: Option<String>,
    pub reference: String,
    pub target_order_id: Option<String>,
    pub target_customer_id: Option<String>,
    pub purchase_ids: Vec<String>,
    pub transaction_ids: Vec<String>,
    pub created_at: i64,
    /// The `parent_transaction_id` of the IPN the entry came from (none before schema 5).
    pub ds24_parent_transaction_id: Option<String>,
}

/// How an integration last routed a payment IPN (see [`Store::payment_route`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRoute {
    pub ipn_id: EventId,
    /// True when the integration skipped it (no job, so never imported).
    pub skipped: bool,
    /// The routing reason (for a skip: why it was not imported).
    pub reason: String,
    pub job_id: Option<JobId>,
}

/// A stored IPN, for review.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IpnRow {
    pub id: i64,
    pub source: String,
    pub event: String,
    pub order_id: Option<String>,
    pub product_id: Option<String>,
    pub transaction_id: Option<String>,
    pub received_at: i64,
}

/// A stored IPN with its raw body (for `explain` and `replay`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredIpn {
    pub id: EventId,
    pub source: String,
    pub event: String,
    pub received_at: i64,
    pub raw_body: Vec<u8>,
}

/// What [`Store::add_routes`] did for one integration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rerouted {
    /// A new job was created.
    Created(JobId),
    /// The IPN already has a job for this integration; nothing was created.
    Existing { job: JobId, state: String },
    /// The IPN's dead or dropped job was given today's action and is pending again.
    Rerouted { job: JobId, was: String },
    /// The decision was to skip; recorded.
    Skipped,
}

/// What a replay does with one route (see `add_routes` of either backend), decided alike by
/// both backends from the route and the job the IPN already has for that integration
/// (`(id, state)`); the backend carries it out, then [`replayed_route`] says what to record.
pub(crate) enum ReplayStep<'a> {
    /// Give the dead or dropped job today's action and make it pending again, keeping its id.
    Reroute { job: JobId, with: &'a NewJob },
    /// Create a job: the IPN has none for this integration.
    Create(&'a NewJob),
    /// Only record the route: a skip, or a job that is kept as it is.
    Record,
}

impl<'a> ReplayStep<'a> {
    pub(crate) fn of(decision: &'a RouteDecision, existing: Option<&(i64, String)>) -> Self {
        match (decision, existing) {
            (RouteDecision::Job { job, .. }, Some((id, state))) if reroutable(state) => {
                ReplayStep::Reroute {
                    job: JobId(*id),
                    with: job,
                }
            }
            (RouteDecision::Job { .. }, Some(_)) | (RouteDecision::Skip { .. }, _) => {
                ReplayStep::Record
            }
            (RouteDecision::Job { job, .. }, None) => ReplayStep::Create(job),
        }
    }
}

/// Whether a replay gives a job in `state` today's action (a dead or dropped one).
fn reroutable(state: &str) -> bool {
    state == "dead" || state == "dropped"
}

/// The `routes` row of a replayed route, `(decision, reason, job id)`, and what the replay
/// reports for it, once its [`ReplayStep`] is done (`created`: the job that step created).
pub(crate) fn replayed_route(
    decision: &RouteDecision,
    existing: Option<(i64, String)>,
    created: Option<JobId>,
) -> Result<(&'static str, String, Option<i64>, Rerouted), StoreError> {
    Ok(match (decision, existing) {
        (RouteDecision::Job { reason, .. }, Some((id, state))) if reroutable(&state) => (
            "job",
            format!("replay: re-routed {state} job {id}; {reason}"),
            Some(id),
            Rerouted::Rerouted {
                job: JobId(id),
                was: state,
            },
        ),
        (RouteDecision::Job { reason, .. }, Some((id, state))) => (
            "job",
            format!("replay: kept existing job {id} ({state}); {reason}"),
            Some(id),
            Rerouted::Existing {
                job: JobId(id),
                state,
            },
        ),
        (RouteDecision::Job { reason, .. }, None) => {
            let id = created.ok_or_else(|| {
                StoreError::Internal("a replayed route's job was not created".into())
            })?;
            (
                "job",
                format!("replay: {reason}"),
                Some(id.0),
                Rerouted::Created(id),
            )
        }
        (RouteDecision::Skip { reason }, _) => (
            "skipped",
            format!("replay: {reason}"),
            None,
            Rerouted::Skipped,
        ),
    })
}

/// Filter for [`Store::list_jobs`].
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub integration: Option<String>,
    pub limit: Option<u32>,
}

pub(crate) const JOB_COLUMNS: &str = "id, ipn_id, integration, target, action, order_key, state, attempts, \
     needs_reconcile, next_attempt_at, created_at, updated_at, last_error";

/// The columns [`ledger_row`] reads, in its order.
pub(crate) const LEDGER_COLUMNS: &str = "job_id, integration, ds24_order_id, ds24_item, \
     ds24_transaction_id, reference, target_order_id, target_customer_id, purchase_ids, \
     transaction_ids, created_at, ds24_parent_transaction_id";

/// The stored `action` names of the kinds that are looked up before they are sent again.
pub(crate) fn reconciled_kind_names() -> Vec<&'static str> {
    ActionKind::ALL
        .into_iter()
        .filter(|k| k.needs_reconcile())
        .map(ActionKind::config_name)
        .collect()
}

/// Whether this instance dispatches a target (see [`Store::claim_target`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This instance dispatches it, as before.
    Held,
    /// This instance has just become its dispatcher; `recovered` jobs that another
    /// instance left in flight were recovered (reconciled before any resend).
    Taken { recovered: u64 },
    /// Another instance dispatches it.
    Elsewhere,
}

/// The store: one API over the backends (see the module doc). Clone it freely.
#[derive(Clone, Debug)]
pub enum Store {
    /// One daemon on one SQLite file (the default).
    Sqlite(SqliteStore),
    /// Several daemons on one PostgreSQL database.
    Postgres(PgStore),
}

impl Store {
    /// Opens (creating if needed) the database, applies migrations and starts the writer
    /// thread. What the operator commands use beside a running daemon: no lock, no
    /// `quick_check`. A zero-length file is refused (see [`EmptyFile`]).
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Ok(Store::Sqlite(SqliteStore::open(path)?))
    }

    /// Opens the database for the daemon: takes the lock `<db>.lock` first (a second daemon
    /// fails at once with [`StoreError::InUse`]), refuses a zero-length file unless `empty`
    /// says to initialise it, refuses a damaged file (`PRAGMA quick_check`, bounded by
    /// [`QUICK_CHECK_BUDGET_SECS`]) and a read-only one, then migrates and starts the writer,
    /// which holds the lock until it stops.
    pub fn open_exclusive(path: &Path, empty: EmptyFile) -> Result<Store, StoreError> {
        Ok(Store::Sqlite(SqliteStore::open_exclusive(path, empty)?))
    }

    /// Operations that failed for a reason of the store since this handle's writer started
    /// (see [`writer`]); the source of `ipn_bridge_store_errors_total`.
    pub fn error_count(&self) -> u64 {
        match self {
            Store::Sqlite(s) => s.error_count(),
            Store::Postgres(s) => s.error_count(),
        }
    }

    /// `(commits, operations committed)` since this handle's writer started.
    pub fn commit_stats(&self) -> (u64, u64) {
        match self {
            Store::Sqlite(s) => s.commit_stats(),
            Store::Postgres(s) => s.commit_stats(),
        }
    }

    /// The SQLite file, or `None` on PostgreSQL.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Store::Sqlite(s) => Some(s.path()),
            Store::Postgres(_) => None,
        }
    }

    /// `sqlite` or `postgresql`.
    pub fn backend_name(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgresql",
        }
    }

    /// Where the data is, for people: the SQLite file, or the PostgreSQL database as
    /// `postgres://user@host:port/db` (never the password).
    pub fn database(&self) -> String {
        match self {
            Store::Sqlite(s) => s.path().display().to_string(),
            Store::Postgres(s) => s.shown_url().to_owned(),
        }
    }

    /// Whether several daemons may share this store (PostgreSQL). Each then recovers the
    /// interrupted jobs of a target when it takes the target over ([`Store::claim_target`]),
    /// never all of them at start, which would take jobs from a running instance.
    pub fn shared(&self) -> bool {
        matches!(self, Store::Postgres(_))
    }

    /// Whether this instance dispatches `target` now. SQLite: always (one daemon per file,
    /// which recovered everything at start). PostgreSQL: one instance per target, chosen by
    /// an advisory lock with fail-over (see [`postgres::claims`]); a new claim first
    /// recovers the target's jobs left in flight, due at `retry_at`.
    pub async fn claim_target(
        &self,
        target: &str,
        now: i64,
        retry_at: i64,
    ) -> Result<Claim, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(Claim::Held),
            Store::Postgres(s) => s.claim_target(target, now, retry_at).await,
        }
    }

    /// Whether this instance plays `role` now (`alert-sender`, `audit:<source>`): always
    /// on SQLite; on PostgreSQL one instance at a time, with fail-over (see
    /// [`postgres::claims`]).
    pub async fn claim_role(&self, role: &str) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(true),
            Store::Postgres(s) => s.claim_role(role).await,
        }
    }

    /// Connects to the PostgreSQL database at `url` and migrates it (see [`postgres`]).
    pub async fn connect_postgres(url: &str) -> Result<Store, StoreError> {
        Ok(Store::Postgres(PgStore::connect(url).await?))
    }

    /// [`Store::connect_postgres`], also trusting the CA certificates of the PEM file
    /// `ca_file` (`[store] ca_file`) for TLS (see [`postgres::tls`]).
    pub async fn connect_postgres_with_ca(
        url: &str,
        ca_file: Option<&Path>,
    ) -> Result<Store, StoreError> {
        Ok(Store::Postgres(
            PgStore::connect_with_ca(url, ca_file).await?,
        ))
    }

    /// Commits what is queued and stops the writer thread, for every clone of this handle:
    /// later operations fail with [`StoreError::Closed`]. Returns when the thread has ended.
    pub async fn close(self) {
        match self {
            Store::Sqlite(s) => s.close().await,
            Store::Postgres(s) => s.close().await,
        }
    }

    /// Stores an IPN with its routing decisions and jobs in one transaction; a repeat of a
    /// stored IPN writes nothing.
    pub async fn ingest(&self, ipn: NewIpn) -> Result<Ingested, StoreError> {
        match self {
            Store::Sqlite(s) => s.ingest(ipn).await,
            Store::Postgres(s) => s.ingest(ipn).await,
        }
    }

    /// After a crash: every attempt left open is marked `interrupted`, and its job goes back
    /// to `pending` at `retry_at`, flagged for reconciliation when its action is not safe to
    /// repeat ([`ActionKind::needs_reconcile`], the one list of such kinds: an import, a
    /// refund). Returns the number of jobs recovered.
    pub async fn recover_interrupted(&self, now: i64, retry_at: i64) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.recover_interrupted(now, retry_at).await,
            Store::Postgres(s) => s.recover_interrupted(now, retry_at).await,
        }
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
        match self {
            Store::Sqlite(s) => s.lease_due(target, now, limit).await,
            Store::Postgres(s) => s.lease_due(target, now, limit).await,
        }
    }

    /// The earliest `next_attempt_at` of the target's pending jobs.
    pub async fn next_due_at(&self, target: &str) -> Result<Option<i64>, StoreError> {
        match self {
            Store::Sqlite(s) => s.next_due_at(target).await,
            Store::Postgres(s) => s.next_due_at(target).await,
        }
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
        match self {
            Store::Sqlite(s) => s.reconciled_absent(job, attempt_id, report, now).await,
            Store::Postgres(s) => s.reconciled_absent(job, attempt_id, report, now).await,
        }
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
        match self {
            Store::Sqlite(s) => {
                s.finish_attempt(job, attempt_id, report, disposition, alert, now)
                    .await
            }
            Store::Postgres(s) => {
                s.finish_attempt(job, attempt_id, report, disposition, alert, now)
                    .await
            }
        }
    }

    pub async fn job(&self, id: JobId) -> Result<JobRow, StoreError> {
        match self {
            Store::Sqlite(s) => s.job(id).await,
            Store::Postgres(s) => s.job(id).await,
        }
    }

    pub async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<JobRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.list_jobs(filter).await,
            Store::Postgres(s) => s.list_jobs(filter).await,
        }
    }

    pub async fn jobs_of_ipn(&self, ipn: EventId) -> Result<Vec<JobRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.jobs_of_ipn(ipn).await,
            Store::Postgres(s) => s.jobs_of_ipn(ipn).await,
        }
    }

    pub async fn attempts(&self, job: JobId) -> Result<Vec<AttemptRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.attempts(job).await,
            Store::Postgres(s) => s.attempts(job).await,
        }
    }

    /// Every ledger entry, oldest first.
    pub async fn ledger(&self) -> Result<Vec<LedgerRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.ledger().await,
            Store::Postgres(s) => s.ledger().await,
        }
    }

    /// Stored IPNs, oldest first.
    pub async fn list_ipns(&self, limit: Option<u32>) -> Result<Vec<IpnRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.list_ipns(limit).await,
            Store::Postgres(s) => s.list_ipns(limit).await,
        }
    }

    /// Number of jobs per state.
    pub async fn job_counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        match self {
            Store::Sqlite(s) => s.job_counts().await,
            Store::Postgres(s) => s.job_counts().await,
        }
    }

    /// The routing decisions recorded for an IPN: `(integration, decision, reason)`.
    pub async fn routes_of_ipn(
        &self,
        ipn: EventId,
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        match self {
            Store::Sqlite(s) => s.routes_of_ipn(ipn).await,
            Store::Postgres(s) => s.routes_of_ipn(ipn).await,
        }
    }

    /// The delivered import an action refers to, from the ledger: the latest import of the
    /// order item in `integration` whose reference `import` matches.
    pub async fn ledger_import(
        &self,
        integration: &str,
        import: &ImportRef,
    ) -> Result<Option<Receipt>, StoreError> {
        match self {
            Store::Sqlite(s) => s.ledger_import(integration, import).await,
            Store::Postgres(s) => s.ledger_import(integration, import).await,
        }
    }

    /// Every delivered import of Digistore24 order `ds24_order_id` in `integration`, newest
    /// first: the candidates a refund or chargeback of the order chooses from.
    pub async fn ledger_imports(
        &self,
        integration: &str,
        ds24_order_id: &str,
    ) -> Result<Vec<LedgerRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.ledger_imports(integration, ds24_order_id).await,
            Store::Postgres(s) => s.ledger_imports(integration, ds24_order_id).await,
        }
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
        match self {
            Store::Sqlite(s) => {
                s.payment_route(integration, ds24_order_id, item, payment)
                    .await
            }
            Store::Postgres(s) => {
                s.payment_route(integration, ds24_order_id, item, payment)
                    .await
            }
        }
    }

    /// A stored IPN by id.
    pub async fn ipn(&self, id: EventId) -> Result<StoredIpn, StoreError> {
        match self {
            Store::Sqlite(s) => s.ipn(id).await,
            Store::Postgres(s) => s.ipn(id).await,
        }
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
        match self {
            Store::Sqlite(s) => s.add_routes(ipn, routes, user, now).await,
            Store::Postgres(s) => s.add_routes(ipn, routes, user, now).await,
        }
    }

    /// A cheap real write that proves the database file accepts commits (for health
    /// checks): page 1 of the file is rewritten (its `application_id`) and committed with an
    /// fsync like any IPN, and the writer checks afterwards that the file is still the one
    /// at the path. The error says why not.
    pub async fn probe_writable(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.probe_writable().await,
            Store::Postgres(s) => s.probe_writable().await,
        }
    }

    /// Writes an alert and one unsent delivery row per recipient, in one transaction.
    /// Returns the alert's id.
    pub async fn record_alert(&self, alert: NewAlert) -> Result<i64, StoreError> {
        match self {
            Store::Sqlite(s) => s.record_alert(alert).await,
            Store::Postgres(s) => s.record_alert(alert).await,
        }
    }

    /// The unsent alerts of every recipient that has some and was last mailed at or before
    /// `last_mail_at_or_before` (or never), at most `limit_per_recipient` alerts each.
    pub async fn alert_outbox_due(
        &self,
        last_mail_at_or_before: i64,
        limit_per_recipient: usize,
    ) -> Result<Vec<RecipientOutbox>, StoreError> {
        match self {
            Store::Sqlite(s) => {
                s.alert_outbox_due(last_mail_at_or_before, limit_per_recipient)
                    .await
            }
            Store::Postgres(s) => {
                s.alert_outbox_due(last_mail_at_or_before, limit_per_recipient)
                    .await
            }
        }
    }

    /// Marks the given alerts as mailed to `recipient` at `now`.
    pub async fn mark_alerts_sent(
        &self,
        recipient: &str,
        alert_ids: Vec<i64>,
        now: i64,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.mark_alerts_sent(recipient, alert_ids, now).await,
            Store::Postgres(s) => s.mark_alerts_sent(recipient, alert_ids, now).await,
        }
    }

    /// Records a failed attempt to mail the given alerts to `recipient`; they stay unsent.
    pub async fn record_alert_failure(
        &self,
        recipient: &str,
        alert_ids: Vec<i64>,
        error: &str,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.record_alert_failure(recipient, alert_ids, error).await,
            Store::Postgres(s) => s.record_alert_failure(recipient, alert_ids, error).await,
        }
    }

    /// How much is unsent, and whether an alert of `kind` is among it.
    pub async fn alert_backlog(&self, kind: &str) -> Result<OutboxBacklog, StoreError> {
        match self {
            Store::Sqlite(s) => s.alert_backlog(kind).await,
            Store::Postgres(s) => s.alert_backlog(kind).await,
        }
    }

    /// The pairs of `wanted` for which an IPN of `source` is stored.
    pub async fn received_transactions(
        &self,
        source: &str,
        wanted: Vec<(String, String)>,
    ) -> Result<HashSet<(String, String)>, StoreError> {
        match self {
            Store::Sqlite(s) => s.received_transactions(source, wanted).await,
            Store::Postgres(s) => s.received_transactions(source, wanted).await,
        }
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
        match self {
            Store::Sqlite(s) => {
                s.record_audit_alert(source, order_id, transaction_id, alert)
                    .await
            }
            Store::Postgres(s) => {
                s.record_audit_alert(source, order_id, transaction_id, alert)
                    .await
            }
        }
    }

    /// Jobs matching `filter`, newest first.
    pub async fn review_jobs(&self, filter: ReviewFilter) -> Result<Vec<JobListing>, StoreError> {
        match self {
            Store::Sqlite(s) => s.review_jobs(filter).await,
            Store::Postgres(s) => s.review_jobs(filter).await,
        }
    }

    /// One job with everything known about it; [`StoreError::NotFound`] for an unknown id.
    pub async fn job_detail(&self, id: JobId) -> Result<JobDetail, StoreError> {
        match self {
            Store::Sqlite(s) => s.job_detail(id).await,
            Store::Postgres(s) => s.job_detail(id).await,
        }
    }

    /// Stored IPNs received at or after `since`, newest first, each with its routes.
    pub async fn review_events(
        &self,
        since: Option<i64>,
        limit: Option<u32>,
    ) -> Result<Vec<EventListing>, StoreError> {
        match self {
            Store::Sqlite(s) => s.review_events(since, limit).await,
            Store::Postgres(s) => s.review_events(since, limit).await,
        }
    }

    /// One stored IPN with its routes; [`StoreError::NotFound`] for an unknown id.
    pub async fn review_event(&self, id: EventId) -> Result<EventListing, StoreError> {
        match self {
            Store::Sqlite(s) => s.review_event(id).await,
            Store::Postgres(s) => s.review_event(id).await,
        }
    }

    /// `queue retry`: the selected dead, held or pending jobs become `pending`, due at `now`;
    /// held jobs behind them are released. All or nothing (see the module docs).
    pub async fn retry_jobs(
        &self,
        selection: RetrySelection,
        operator: Operator,
        now: i64,
    ) -> Result<QueueChange, StoreError> {
        match self {
            Store::Sqlite(s) => s.retry_jobs(selection, operator, now).await,
            Store::Postgres(s) => s.retry_jobs(selection, operator, now).await,
        }
    }

    /// `queue drop`: the named non-final jobs become `dropped`; held jobs behind them are
    /// released. All or nothing (see the module docs).
    pub async fn drop_jobs(
        &self,
        ids: Vec<JobId>,
        operator: Operator,
        now: i64,
    ) -> Result<QueueChange, StoreError> {
        match self {
            Store::Sqlite(s) => s.drop_jobs(ids, operator, now).await,
            Store::Postgres(s) => s.drop_jobs(ids, operator, now).await,
        }
    }

    /// What a purge with this cutoff would remove, without removing it.
    pub async fn purge_preview(&self, cutoff: i64) -> Result<PurgeCount, StoreError> {
        match self {
            Store::Sqlite(s) => s.purge_preview(cutoff).await,
            Store::Postgres(s) => s.purge_preview(cutoff).await,
        }
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
        match self {
            Store::Sqlite(s) => s.purge_history_batch(cutoff, max_rows).await,
            Store::Postgres(s) => s.purge_history_batch(cutoff, max_rows).await,
        }
    }

    /// Writes one audit row not tied to a job (e.g. a finished purge).
    pub async fn record_operator_action(
        &self,
        command: &str,
        operator: Operator,
        now: i64,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.record_operator_action(command, operator, now).await,
            Store::Postgres(s) => s.record_operator_action(command, operator, now).await,
        }
    }
}

impl Store {
    /// Records the ends of several attempts in one store call (one transaction on SQLite,
    /// shared by the writer's group commit with whatever else is queued): what
    /// [`Store::finish_attempt`] does for one, and one that fails is rolled back alone
    /// (SQLite runs the batch under one savepoint and, only when an item fails, again with a
    /// savepoint per item). Returns one result per item, in order; `Err` as a whole when
    /// the call could not run or commit (then nothing was recorded).
    pub async fn finish_attempts(
        &self,
        items: Vec<FinishedAttempt>,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        match self {
            Store::Sqlite(s) => s.finish_attempts(items).await,
            Store::Postgres(s) => postgres::batch::finish_attempts(s, items).await,
        }
    }
}

impl Store {
    /// Gives leases back that were never used: each `(job, attempt)` leased by
    /// [`Store::lease_due`] whose request was never sent (the target paused, or the
    /// dispatcher stopped, before the job's turn). The open attempt row is deleted and the
    /// job is `pending` again with its attempt count as before the lease, due as it was.
    /// A job no longer `in_flight` under that attempt is left alone.
    pub async fn release_leases(
        &self,
        leases: Vec<(JobId, i64)>,
        now: i64,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.release_leases(leases, now).await,
            Store::Postgres(s) => postgres::batch::release_leases(s, leases, now).await,
        }
    }
}

/// The end of one delivery attempt, for [`Store::finish_attempts`]: the arguments of
/// [`Store::finish_attempt`].
#[derive(Debug, Clone)]
pub struct FinishedAttempt {
    pub job: JobId,
    pub attempt_id: i64,
    pub report: AttemptReport,
    pub disposition: Disposition,
    /// A dead letter's alert, written in the same savepoint as the job's death.
    pub alert: Option<NewAlert>,
    pub now: i64,
}
