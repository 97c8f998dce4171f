//! The SQLite backend: one daemon on one file.
//!
//! Ownership: one OS thread owns the SQLite connection (see [`writer`]); [`SqliteStore`] is a
//! cheap clonable handle that sends closures to it and awaits the reply, which arrives only
//! after the batch holding the operation has committed (group commit). Other processes (the
//! CLI) open their own store on the same file; WAL lets them read while the daemon writes,
//! and SQLite's lock serialises their writes.
//!
//! Opening: the daemon uses [`SqliteStore::open_exclusive`], which first takes the lock file
//! `<db>.lock` (one daemon per database, see [`lock`]) and refuses an empty, damaged or
//! read-only file (see [`integrity`]); the operator commands use [`SqliteStore::open`], which
//! takes no lock and skips `quick_check`, but also refuses an empty file. Every store watches
//! its file after each commit and refuses to acknowledge into a file that was deleted,
//! replaced or overwritten (see [`writer`]).

mod alerts;
mod audit;
mod checkpoint;
mod integrity;
mod lock;
mod log_limit;
#[cfg(test)]
mod perf_tests;
mod review;
#[cfg(test)]
mod safety_tests;
mod schema;
#[cfg(test)]
mod tests;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use super::alerts::NewAlert;
use super::{
    AttemptKind, AttemptRow, Disposition, Ingested, IpnRow, JOB_COLUMNS, JobFilter, JobRow,
    LEDGER_COLUMNS, LeasedJob, LedgerRow, NewIpn, NewJob, NewRoute, PaymentRoute, Rerouted,
    RouteDecision, StoreError, StoredIpn, reconciled_kind_names,
};
use crate::domain::{
    Action, ActionKind, AttemptReport, EventId, ImportRef, JobId, JobState, Receipt,
};

pub use integrity::{
    EmptyFile, QUICK_CHECK_BUDGET_SECS, QUICK_CHECK_START_BUDGET_MS, QUICK_CHECK_START_MAX_BYTES,
};
pub use lock::lock_path;
pub use schema::CURRENT_VERSION as SCHEMA_VERSION;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode::*;
        match e.sqlite_error_code() {
            Some(
                DatabaseBusy
                | DatabaseLocked
                | SystemIoFailure
                | DiskFull
                | ReadOnly
                | CannotOpen
                | PermissionDenied
                | FileLockingProtocolFailed
                | OutOfMemory,
            ) => StoreError::Unavailable(e.to_string()),
            Some(DatabaseCorrupt | NotADatabase) => StoreError::Damaged(e.to_string()),
            _ => StoreError::Internal(e.to_string()),
        }
    }
}

/// Jobs per state, from the counts the triggers of schema migration 7 keep: a handful of
/// rows, never a count of every job (issue 13). States without a job are left out, as the
/// `GROUP BY` this replaced did.
const JOB_COUNTS_SQL: &str = "SELECT state, n FROM job_counts WHERE n > 0";

/// The jobs left `in_flight` by a stop, back to `pending` (index `jobs_state`).
const RECOVER_JOBS_SQL: &str =
    "UPDATE jobs SET state = 'pending', next_attempt_at = ?2, updated_at = ?1,
        needs_reconcile = CASE
            WHEN action IN (SELECT value FROM json_each(?3)) THEN 1
            ELSE needs_reconcile END,
        last_error = 'interrupted by a restart'
 WHERE state = 'in_flight'";

/// The earliest due time of a target's pending jobs (index `jobs_due`).
const NEXT_DUE_SQL: &str =
    "SELECT MIN(next_attempt_at) FROM jobs WHERE target = ?1 AND state = 'pending'";

/// Releases the jobs held behind a replayed job that no other dead job blocks (`?1` = the job).
const RELEASE_HELD_SQL: &str =
    "UPDATE jobs SET state = 'pending', updated_at = ?2, last_error = NULL
         WHERE +state = 'held'
           AND (integration, order_key) = (SELECT integration, order_key FROM jobs WHERE id = ?1)
           AND NOT EXISTS (
               SELECT 1 FROM jobs e
               WHERE e.integration = jobs.integration AND e.order_key = jobs.order_key
                 AND e.id < jobs.id AND +e.state = 'dead')";

/// Stores an IPN; a repeat of its business key inserts nothing (see `ingest`).
const INSERT_IPN_SQL: &str =
    "INSERT INTO ipns (source, business_key, event, order_id, order_item_id, product_id,
                               transaction_id, buyer_email, amount, currency, received_at, raw_body,
                               parent_transaction_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
             ON CONFLICT (source, business_key) DO NOTHING";

/// How an integration routed a payment IPN, found by the payment's transaction (indexes
/// `ipns_transaction` and `ipns_parent_transaction`; a transaction has an IPN or a few).
const PAYMENT_ROUTE_SQL: &str = "SELECT i.id, r.decision, r.reason, r.job_id
     FROM ipns i JOIN routes r ON r.ipn_id = i.id
     WHERE i.order_id = ?2 AND i.event = 'on_payment'
       AND COALESCE(i.order_item_id, i.product_id) = ?3
       AND (i.transaction_id = ?4 OR i.parent_transaction_id = ?4)
       AND r.integration = ?1
     ORDER BY i.id DESC, r.id DESC LIMIT 1";

/// The delivered imports of one Digistore24 order in one integration, newest first (index
/// `ledger_item`, which begins with the integration and the order).
const LEDGER_IMPORTS_OF_ORDER: &str = "FROM ledger
     WHERE integration = ?1 AND ds24_order_id = ?2 AND action = 'import_order'
     ORDER BY job_id DESC";

/// The first dead earlier job a new job of an order must be held behind.
const HOLD_REASON_SQL: &str =
    "SELECT 'held: job ' || id || ' of the same Digistore24 order is dead'
                || COALESCE(' (' || last_error || ')', '')
         FROM jobs
         WHERE integration = +?1 AND order_key = +?2 AND id < +?3 AND +state = 'dead'
           AND (+?4 != 'import_order' OR action = 'import_order')
         ORDER BY id LIMIT 1";

/// Holds the unfinished jobs that follow a job that just died.
const HOLD_FOLLOWERS_SQL: &str = "UPDATE jobs SET state = 'held', last_error = ?4, updated_at = ?5
         WHERE integration = ?1 AND order_key = ?2 AND id > ?3 AND +state = 'pending'
           AND (action != 'import_order' OR ?6 = 'import_order')";

/// Makes the actions waiting for a delivered import of their order due at once.
const WAKE_DEPENDENTS_SQL: &str = "UPDATE jobs SET next_attempt_at = MIN(next_attempt_at, ?2)
         WHERE +state = 'pending' AND action != 'import_order'
           AND (integration, order_key) =
               (SELECT integration, order_key FROM jobs
                WHERE id = ?1 AND action = 'import_order')";

/// A target's due jobs in due order, each only when no earlier job of its order is
/// unfinished (indexes `jobs_due`, then `jobs_order` per candidate). `+?1` and `LIMIT +?3`,
/// not bare parameters: a bare parameter as the limit or in an `=` term makes SQLite
/// re-prepare the statement at every use (see [`WRITE_LEDGER_SQL`]).
const LEASE_CANDIDATES_SQL: &str =
    "SELECT j.id, j.ipn_id, j.integration, j.target, j.payload, j.needs_reconcile,
        j.attempts, j.created_at, COALESCE(j.retry_base, j.created_at)
 FROM jobs j
 WHERE j.target = +?1 AND j.state = 'pending' AND j.next_attempt_at <= ?2
   AND NOT EXISTS (
       SELECT 1 FROM jobs e
       WHERE e.integration = j.integration AND e.order_key = j.order_key
         AND e.id < j.id AND e.state IN ('pending', 'in_flight', 'held', 'dead')
         AND (j.action != 'import_order' OR e.action = 'import_order'))
 ORDER BY j.next_attempt_at, j.id
 LIMIT +?3";

/// The ledger rows of delivered jobs, from each job and its IPN, in one statement: `?1` is a
/// JSON array of `[job id, order id, customer id, purchase ids, transaction ids, now]`, one
/// entry per job (a [`DeliveredBatch`], or the one job of [`write_ledger`]).
///
/// Issue 13, round 3: this was a `SELECT` of the job joined with its IPN, copied out to Rust
/// and written back by an `INSERT`, and the `SELECT` was parsed and planned again for every
/// delivered job (perf: 56 % of `write_ledger`'s time in `sqlite3Reprepare`). Why: SQLite
/// 3.54's planner marks a bound parameter compared with `=` in a join term as "re-prepare
/// when it changes to or from 0/1" (`sqlite3ExprIsInteger` with `bRSI`, its
/// `whereLoopOutputAdjust` heuristic), and rusqlite clears the bindings of every statement
/// it puts back in its cache (`sqlite3_clear_bindings`), which expires any statement with
/// such a mark. The rows now come from `jsonb_each` of one bound array, which the planner
/// does not look into; [`perf_tests`] pins that the statement is prepared once. (The single
/// job's form, `WHERE j.id = +?1`, is gone: one statement serves both.)
///
/// The action's name is the `action` column (written with the payload by `insert_job` and
/// `reroute_job`) and an import's reference is read by SQLite's JSON path from the stored
/// payload (`Action` is tagged by `action`; `ImportOrder` keeps it at `order.reference`, see
/// `Action::reconcile_reference`): the payload is not parsed into an `Action` for one string.
const WRITE_LEDGER_SQL: &str =
    "INSERT OR REPLACE INTO ledger (job_id, integration, ds24_order_id, ds24_item,
        ds24_transaction_id, reference, target_order_id, target_customer_id,
        purchase_ids, transaction_ids, created_at, action, ds24_parent_transaction_id)
 SELECT j.id, j.integration, COALESCE(i.order_id, ''),
        COALESCE(i.order_item_id, i.product_id), i.transaction_id,
        COALESCE(CASE j.action WHEN 'import_order'
                     THEN json_extract(j.payload, '$.order.reference') END, ''),
        l.value ->> 1, l.value ->> 2, l.value ->> 3, l.value ->> 4, l.value ->> 5,
        j.action, i.parent_transaction_id
 FROM jsonb_each(?1) AS l
 JOIN jobs j ON j.id = l.value ->> 0
 JOIN ipns i ON i.id = j.ipn_id";

/// The leased jobs become `in_flight` with their attempt counted: `?1` is the lease as a JSON
/// array of `[job id, attempt number, attempt kind]`, `?2` now.
///
/// Issue 13, round 3: `lease_due` ran an `UPDATE` and an `INSERT … RETURNING` per job; each
/// write statement inside the writer's transaction opens and closes a statement journal
/// (the `UPDATE` fires the job-count trigger, the `RETURNING` is a trigger too), which cost
/// more than the row changes. One statement for the jobs and one for their attempts do the
/// same for the whole lease.
const LEASE_TAKE_SQL: &str =
    "UPDATE jobs SET state = 'in_flight', attempts = l.value ->> 1, updated_at = ?2
 FROM jsonb_each(?1) AS l
 WHERE jobs.id = l.value ->> 0";

/// One open attempt per leased job (`?1` and `?2` as [`LEASE_TAKE_SQL`]'s), returned as
/// `(attempt id, job id)`.
const LEASE_OPEN_ATTEMPTS_SQL: &str = "INSERT INTO attempts (job_id, number, kind, started_at)
 SELECT l.value ->> 0, l.value ->> 1, l.value ->> 2, ?2 FROM jsonb_each(?1) AS l
 RETURNING id, job_id";

/// Handle to the store. Clone it freely; the writer thread ends when the last clone is
/// dropped or [`SqliteStore::close`] is called.
#[derive(Clone)]
pub struct SqliteStore {
    tx: mpsc::Sender<writer::Msg>,
    path: PathBuf,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    stats: Arc<writer::Stats>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

struct Call<F, T> {
    f: F,
    reply: oneshot::Sender<Result<T, StoreError>>,
    read_only: bool,
}

/// What a [`writer::Op`] hands the writer for `result`: its own outcome (a copy of the error,
/// for counting) and the completion that answers the caller once the commit's result is
/// known (an operation's `Ok` is only an `Ok` if its batch committed).
fn answer_after_commit<T: Send + 'static>(
    result: Result<T, StoreError>,
    reply: oneshot::Sender<Result<T, StoreError>>,
) -> (Result<(), StoreError>, writer::Completion) {
    let own = outcome(&result);
    let completion: writer::Completion = Box::new(move |commit| {
        let _ = reply.send(result.and_then(|v| commit.map(|()| v)));
    });
    (own, completion)
}

/// `result` without its value.
fn outcome<T>(result: &Result<T, StoreError>) -> Result<(), StoreError> {
    match result {
        Ok(_) => Ok(()),
        Err(e) => Err(e.clone()),
    }
}

/// A [`Call`] whose closure can run more than once (`Fn`): the writer may run it under a
/// savepoint shared with others and, if one of those fails, again under its own (see
/// `writer::transact`). The result of the run that stood is kept until the commit.
struct Repeatable<F, T> {
    f: F,
    reply: oneshot::Sender<Result<T, StoreError>>,
    kept: Option<Result<T, StoreError>>,
}

impl<F, T> writer::Op for Repeatable<F, T>
where
    F: Fn(&Connection) -> Result<T, StoreError> + Send,
    T: Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection) -> (Result<(), StoreError>, writer::Completion) {
        let Repeatable { f, reply, kept } = *self;
        answer_after_commit(kept.unwrap_or_else(|| f(conn)), reply)
    }

    fn fail(self: Box<Self>, err: StoreError) {
        let _ = self.reply.send(Err(err));
    }

    fn repeatable(&self) -> bool {
        true
    }

    fn repeat(&mut self, conn: &Connection) -> Result<(), StoreError> {
        let result = (self.f)(conn);
        let own = outcome(&result);
        self.kept = Some(result);
        own
    }

    fn forget(&mut self) {
        self.kept = None;
    }
}

impl<F, T> writer::Op for Call<F, T>
where
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
    T: Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection) -> (Result<(), StoreError>, writer::Completion) {
        let Call { f, reply, .. } = *self;
        answer_after_commit(f(conn), reply)
    }

    fn fail(self: Box<Self>, err: StoreError) {
        let _ = self.reply.send(Err(err));
    }

    fn read_only(&self) -> bool {
        self.read_only
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database, applies migrations and starts the writer
    /// thread. What the operator commands use beside a running daemon: no lock, no
    /// `quick_check`. A zero-length file is refused (see [`EmptyFile`]).
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let before = integrity::check_before_open(path, EmptyFile::Refuse)?;
        let path = path.to_path_buf();
        let conn = writer::open_connection(&path)?;
        schema::migrate(&conn)?;
        let watch = integrity::FileWatch::new(&path, before)?;
        SqliteStore::start_writer(path, conn, watch, None)
    }

    /// Opens the database for the daemon: takes the lock `<db>.lock` first (a second daemon
    /// fails at once with [`StoreError::InUse`]), refuses a zero-length file unless `empty`
    /// says to initialise it, refuses a damaged file (`PRAGMA quick_check`, bounded by
    /// [`QUICK_CHECK_START_BUDGET_MS`], and only for a file up to
    /// [`QUICK_CHECK_START_MAX_BYTES`]; a bigger file, or what the budget left, is checked
    /// in the background and a damage found there stops every operation) and a read-only one, then migrates and
    /// starts the writer, which holds the lock until it stops.
    pub fn open_exclusive(path: &Path, empty: EmptyFile) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_exclusive_with_budget(
            path,
            empty,
            std::time::Duration::from_millis(QUICK_CHECK_START_BUDGET_MS),
            QUICK_CHECK_START_MAX_BYTES,
        )
    }

    fn open_exclusive_with_budget(
        path: &Path,
        empty: EmptyFile,
        budget: std::time::Duration,
        start_max_bytes: u64,
    ) -> Result<SqliteStore, StoreError> {
        let lock = lock::DaemonLock::acquire(path)?;
        let before = integrity::check_before_open(path, empty)?;
        let path = path.to_path_buf();
        let not_a_database = |e: StoreError| match e {
            StoreError::Damaged(why) => StoreError::Damaged(format!(
                "{} is not a usable SQLite database ({why}). Restore it from a backup, or move \
                 it aside to start a new one",
                path.display()
            )),
            other => other,
        };
        let mut conn = writer::open_connection(&path).map_err(not_a_database)?;
        integrity::refuse_read_only(&conn, &path).map_err(not_a_database)?;
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        let unfinished = if size > start_max_bytes {
            tracing::info!(
                path = %path.display(), bytes = size,
                "the database is checked (quick_check) in the background after start; a damaged \
                 file then stops every store operation"
            );
            true
        } else {
            match integrity::quick_check(&mut conn, &path, budget)? {
                integrity::QuickCheck::Sound => false,
                integrity::QuickCheck::Unfinished { after } => {
                    tracing::info!(
                        path = %path.display(), checked_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
                        "quick_check of the database did not finish within its start-up budget; it goes \
                         on in the background (a damaged file then stops every store operation)"
                    );
                    true
                }
            }
        };
        schema::migrate(&conn).map_err(not_a_database)?;
        let watch = integrity::FileWatch::new(&path, before)?;
        let store = SqliteStore::start_writer(path, conn, watch, Some(lock))?;
        if unfinished {
            let tx = store.tx.clone();
            integrity::background_quick_check(store.path.clone(), move |why| {
                let _ = tx.blocking_send(writer::Msg::Damaged(why));
            })
            .map_err(|e| {
                StoreError::Internal(format!("cannot start the quick_check thread: {e}"))
            })?;
        }
        Ok(store)
    }

    fn start_writer(
        path: PathBuf,
        conn: Connection,
        watch: integrity::FileWatch,
        lock: Option<lock::DaemonLock>,
    ) -> Result<SqliteStore, StoreError> {
        let (tx, rx) = mpsc::channel(writer::QUEUE_CAPACITY);
        let stats = Arc::new(writer::Stats::default());
        let writer = writer::Writer::new(conn, watch, lock, stats.clone())?;
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Internal(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore {
            tx,
            path,
            thread: Arc::new(Mutex::new(Some(thread))),
            stats,
        })
    }

    /// Operations that failed for a reason of the store since this handle's writer started
    /// (see [`writer`]); the source of `ipn_bridge_store_errors_total`.
    pub fn error_count(&self) -> u64 {
        self.stats
            .failed_ops
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `(commits, operations committed)` since this handle's writer started.
    pub fn commit_stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.stats.commits.load(Relaxed),
            self.stats.ops.load(Relaxed),
        )
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Commits what is queued and stops the writer thread, for every clone of this handle:
    /// later operations fail with [`StoreError::Closed`]. Returns when the thread has ended.
    pub async fn close(self) {
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        let _ = self.tx.send(writer::Msg::Close).await;
        if let Some(handle) = thread {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }

    async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        self.submit(f, false).await
    }

    /// Like `call`, for an operation that can run more than once (see [`Repeatable`]).
    async fn call_repeatable<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: Fn(&Connection) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        self.send(|reply| {
            Box::new(Repeatable {
                f,
                reply,
                kept: None,
            })
        })
        .await
    }

    /// Like `call`, for an operation that only reads (see [`writer::Op::read_only`]).
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        self.submit(f, true).await
    }

    async fn submit<T, F>(&self, f: F, read_only: bool) -> Result<T, StoreError>
    where
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        self.send(|reply| {
            Box::new(Call {
                f,
                reply,
                read_only,
            })
        })
        .await
    }

    /// Sends the operation `op` builds around its reply channel and waits for the answer.
    async fn send<T: Send + 'static>(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Box<dyn writer::Op>,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(writer::Msg::Op(op(reply)))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Stores an IPN with its routing decisions and jobs in one transaction; a repeat of a
    /// stored IPN writes nothing.
    pub async fn ingest(&self, ipn: NewIpn) -> Result<Ingested, StoreError> {
        // Repeatable: it reads what it captured and writes only through `c`.
        self.call_repeatable(move |c| ingest(c, &ipn)).await
    }

    /// After a crash: every attempt left open is marked `interrupted`, and its job goes back
    /// to `pending` at `retry_at`, flagged for reconciliation when its action is not safe to
    /// repeat ([`ActionKind::needs_reconcile`], the one list of such kinds: an import, a
    /// refund). Returns the number of jobs recovered.
    pub async fn recover_interrupted(&self, now: i64, retry_at: i64) -> Result<u64, StoreError> {
        let unsafe_kinds = serde_json::to_string(&reconciled_kind_names())?;
        self.call(move |c| {
            c.execute(
                "UPDATE attempts SET outcome = 'interrupted', finished_at = ?1,
                        reason = 'the process stopped while this attempt was running'
                 WHERE outcome IS NULL",
                params![now],
            )?;
            let n = c.execute(RECOVER_JOBS_SQL, params![now, retry_at, unsafe_kinds])?;
            Ok(n as u64)
        })
        .await
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
        let target = target.to_owned();
        let raw = self
            .call(move |c| lease_due(c, &target, now, limit))
            .await?;
        // Issue 13, round 3: the actions are parsed here, on the caller's task, not on the
        // writer thread (perf: a third of `lease_due`'s writer time). A payload that does not
        // parse fails the lease as a whole, as when it was parsed inside the transaction: the
        // leases are given back first, so every job is `pending` as before.
        let leases: Vec<(JobId, i64)> = raw.iter().map(|r| (JobId(r.id), r.attempt_id)).collect();
        let mut leased = Vec::with_capacity(raw.len());
        for row in raw {
            match serde_json::from_str::<Action>(&row.payload) {
                Ok(action) => leased.push(row.into_job(action)),
                Err(e) => {
                    self.release_leases(leases, now).await?;
                    return Err(e.into());
                }
            }
        }
        Ok(leased)
    }

    /// The earliest `next_attempt_at` of the target's pending jobs.
    pub async fn next_due_at(&self, target: &str) -> Result<Option<i64>, StoreError> {
        let target = target.to_owned();
        self.read(move |c| Ok(c.query_row(NEXT_DUE_SQL, params![target], |r| r.get(0))?))
            .await
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
        self.call(move |c| {
            close_attempt(c, attempt_id, now, "absent", &report)?;
            c.execute(
                "UPDATE jobs SET needs_reconcile = 0, attempts = attempts + 1, updated_at = ?2
                 WHERE id = ?1 AND state = 'in_flight'",
                params![job.0, now],
            )?;
            let number: u32 = c.query_row(
                "SELECT attempts FROM jobs WHERE id = ?1",
                params![job.0],
                |r| r.get(0),
            )?;
            let id = open_attempt(c, job, number, AttemptKind::Send, now)?;
            Ok((id, number))
        })
        .await
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
        self.call(move |c| {
            finish_attempt(c, job, attempt_id, &report, &disposition, now)?;
            if let Some(alert) = &alert {
                alerts::insert_alert(c, alert)?;
            }
            Ok(())
        })
        .await
    }

    /// Several [`SqliteStore::finish_attempt`]s in one writer operation, one commit for all;
    /// a failing item is rolled back alone and reported in its slot of the result. Fewer
    /// operations per batch for the writer and one reply instead of one per job; see
    /// `delivery`'s recorder.
    ///
    /// Issue 13, round 3: a savepoint per item cost the writer about a fifth of its time per
    /// delivered job (every page an item touched was copied into the statement journal again
    /// for each item's savepoint, then released). Items almost never fail, so the batch runs
    /// first under one savepoint; only when an item fails is everything rolled back to it and
    /// the batch run again with a savepoint per item, which gives exactly the old results.
    /// A batch of deliveries only (the dispatcher's usual batch) is written by a few
    /// statements for all its items (see [`DeliveredBatch`]).
    pub async fn finish_attempts(
        &self,
        items: Vec<super::FinishedAttempt>,
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        // Encoded here, on the caller's task, not on the writer thread.
        let delivered = DeliveredBatch::of(&items);
        self.call(move |c| {
            writer::control(c, "SAVEPOINT batch")?;
            let whole = match &delivered {
                Some(batch) => batch.write(c, &items).unwrap_or(false),
                None => items.iter().all(|item| finish_item(c, item).is_ok()),
            };
            if whole {
                writer::control(c, "RELEASE batch")?;
                return Ok(items.iter().map(|_| Ok(())).collect());
            }
            writer::control(c, "ROLLBACK TO batch")?;
            writer::control(c, "RELEASE batch")?;
            let mut results = Vec::with_capacity(items.len());
            for item in &items {
                writer::control(c, "SAVEPOINT item")?;
                let result = finish_item(c, item);
                if result.is_err() {
                    writer::control(c, "ROLLBACK TO item")?;
                }
                writer::control(c, "RELEASE item")?;
                results.push(result);
            }
            Ok(results)
        })
        .await
    }

    /// See [`crate::store::Store::release_leases`].
    pub async fn release_leases(
        &self,
        leases: Vec<(JobId, i64)>,
        now: i64,
    ) -> Result<(), StoreError> {
        self.call(move |c| {
            for (job, attempt_id) in &leases {
                let open = c
                    .prepare_cached(
                        "DELETE FROM attempts WHERE id = ?1 AND job_id = ?2 AND outcome IS NULL",
                    )?
                    .execute(params![attempt_id, job.0])?;
                if open == 1 {
                    c.prepare_cached(
                        "UPDATE jobs SET state = 'pending', attempts = MAX(attempts - 1, 0),
                                updated_at = ?2
                         WHERE id = ?1 AND state = 'in_flight'",
                    )?
                    .execute(params![job.0, now])?;
                }
            }
            Ok(())
        })
        .await
    }

    pub async fn job(&self, id: JobId) -> Result<JobRow, StoreError> {
        self.read(move |c| {
            c.query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                params![id.0],
                job_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound(format!("job {id}")))
        })
        .await
    }

    pub async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<JobRow>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs
                 WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR integration = ?2)
                 ORDER BY id LIMIT ?3"
            ))?;
            let rows = stmt.query_map(
                params![
                    filter.state.map(JobState::as_str),
                    filter.integration,
                    filter.limit.map_or(-1, i64::from)
                ],
                job_row,
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    pub async fn jobs_of_ipn(&self, ipn: EventId) -> Result<Vec<JobRow>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE ipn_id = ?1 ORDER BY id"
            ))?;
            let rows = stmt.query_map(params![ipn.0], job_row)?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    pub async fn attempts(&self, job: JobId) -> Result<Vec<AttemptRow>, StoreError> {
        self.read(move |c| attempts_of(c, job.0)).await
    }

    /// Every ledger entry, oldest first.
    pub async fn ledger(&self) -> Result<Vec<LedgerRow>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {LEDGER_COLUMNS} FROM ledger ORDER BY job_id"
            ))?;
            let rows = stmt.query_map([], ledger_row)?;
            rows.map(|row| decode_ledger_row(row?)).collect()
        })
        .await
    }

    /// Stored IPNs, oldest first.
    pub async fn list_ipns(&self, limit: Option<u32>) -> Result<Vec<IpnRow>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT id, source, event, order_id, product_id, transaction_id, received_at
                 FROM ipns ORDER BY id LIMIT ?1",
            )?;
            let rows = stmt.query_map(params![limit.map_or(-1, i64::from)], |r| {
                Ok(IpnRow {
                    id: r.get(0)?,
                    source: r.get(1)?,
                    event: r.get(2)?,
                    order_id: r.get(3)?,
                    product_id: r.get(4)?,
                    transaction_id: r.get(5)?,
                    received_at: r.get(6)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// Number of jobs per state.
    pub async fn job_counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        self.read(|c| {
            // Kept by triggers (schema migration 7): a handful of rows, never a count of
            // every job. States that have no job (any more) are left out, as a GROUP BY would.
            let mut stmt = c.prepare_cached(JOB_COUNTS_SQL)?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
            })?;
            Ok(rows.collect::<Result<BTreeMap<_, _>, _>>()?)
        })
        .await
    }

    /// The routing decisions recorded for an IPN: `(integration, decision, reason)`.
    pub async fn routes_of_ipn(
        &self,
        ipn: EventId,
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT integration, decision, reason FROM routes WHERE ipn_id = ?1 ORDER BY id",
            )?;
            let rows = stmt.query_map(params![ipn.0], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// The delivered import an action refers to, from the ledger: the latest import of the
    /// order item in `integration` whose reference `import` matches.
    pub async fn ledger_import(
        &self,
        integration: &str,
        import: &ImportRef,
    ) -> Result<Option<Receipt>, StoreError> {
        let integration = integration.to_owned();
        let import = import.clone();
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT reference, target_order_id, target_customer_id, purchase_ids,
                        transaction_ids {LEDGER_IMPORTS_OF_ORDER}"
            ))?;
            let rows = stmt.query_map(params![integration, import.ds24_order_id], |r| {
                <(String, Option<String>, Option<String>, String, String)>::try_from(r)
            })?;
            for row in rows {
                let (reference, order_id, customer_id, purchases, transactions) = row?;
                if import.matches(&reference) {
                    return Ok(Some(Receipt {
                        order_id,
                        customer_id,
                        purchase_ids: serde_json::from_str(&purchases)?,
                        transaction_ids: serde_json::from_str(&transactions)?,
                    }));
                }
            }
            Ok(None)
        })
        .await
    }

    /// Every delivered import of Digistore24 order `ds24_order_id` in `integration`, newest
    /// first: the candidates a refund or chargeback of the order chooses from.
    pub async fn ledger_imports(
        &self,
        integration: &str,
        ds24_order_id: &str,
    ) -> Result<Vec<LedgerRow>, StoreError> {
        let (integration, order) = (integration.to_owned(), ds24_order_id.to_owned());
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {LEDGER_COLUMNS} {LEDGER_IMPORTS_OF_ORDER}"
            ))?;
            let rows = stmt.query_map(params![integration, order], ledger_row)?;
            rows.map(|row| decode_ledger_row(row?)).collect()
        })
        .await
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
        let args = (
            integration.to_owned(),
            ds24_order_id.to_owned(),
            item.to_owned(),
            payment.to_owned(),
        );
        self.read(move |c| {
            let (integration, order, item, payment) = args;
            Ok(c.prepare_cached(PAYMENT_ROUTE_SQL)?
                .query_row(params![integration, order, item, payment], |r| {
                    Ok(PaymentRoute {
                        ipn_id: EventId(r.get(0)?),
                        skipped: r.get::<_, String>(1)? == "skipped",
                        reason: r.get(2)?,
                        job_id: r.get::<_, Option<i64>>(3)?.map(JobId),
                    })
                })
                .optional()?)
        })
        .await
    }

    /// A stored IPN by id.
    pub async fn ipn(&self, id: EventId) -> Result<StoredIpn, StoreError> {
        self.read(move |c| {
            c.query_row(
                "SELECT id, source, event, received_at, raw_body FROM ipns WHERE id = ?1",
                params![id.0],
                |r| {
                    Ok(StoredIpn {
                        id: EventId(r.get(0)?),
                        source: r.get(1)?,
                        event: r.get(2)?,
                        received_at: r.get(3)?,
                        raw_body: r.get(4)?,
                    })
                },
            )
            .optional()?
            .ok_or_else(|| StoreError::NotFound(format!("event {id}")))
        })
        .await
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
        self.call(move |c| {
            let mut out = Vec::with_capacity(routes.len());
            for route in &routes {
                let existing: Option<(i64, String)> = c
                    .prepare_cached(
                        "SELECT id, state FROM jobs WHERE ipn_id = ?1 AND integration = ?2",
                    )?
                    .query_row(params![ipn.0, route.integration], |r| <_>::try_from(r))
                    .optional()?;
                let created = match super::ReplayStep::of(&route.decision, existing.as_ref()) {
                    super::ReplayStep::Reroute { job, with } => {
                        reroute_job(c, job, with, now)?;
                        None
                    }
                    super::ReplayStep::Create(job) => {
                        Some(insert_job(c, ipn.0, &route.integration, job, now)?)
                    }
                    super::ReplayStep::Record => None,
                };
                let (decision, reason, job_id, result) =
                    super::replayed_route(&route.decision, existing, created)?;
                c.prepare_cached(
                    "INSERT INTO routes (ipn_id, integration, decision, reason, job_id, decided_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    ipn.0,
                    route.integration,
                    decision,
                    reason,
                    job_id,
                    now
                ])?;
                out.push(result);
            }
            c.prepare_cached(
                "INSERT INTO operator_actions (at, user, command, ipn_id, reason)
                 VALUES (?1, ?2, 'replay', ?3, 'replay with the current configuration')",
            )?
            .execute(params![now, user, ipn.0])?;
            Ok(out)
        })
        .await
    }

    /// A cheap real write that proves the database file accepts commits (for health
    /// checks): page 1 of the file is rewritten (its `application_id`) and committed with an
    /// fsync like any IPN, and the writer checks afterwards that the file is still the one
    /// at the path. The error says why not.
    pub async fn probe_writable(&self) -> Result<(), StoreError> {
        self.call(|c| {
            c.prepare_cached(&format!(
                "PRAGMA application_id = {}",
                writer::APPLICATION_ID
            ))?
            .execute([])?;
            Ok(())
        })
        .await
    }
}

/// A ledger row with its two JSON lists still encoded (rusqlite's row closures cannot
/// return a JSON error; [`decode_ledger_row`] finishes the job).
fn ledger_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(LedgerRow, String, String)> {
    Ok((
        LedgerRow {
            job_id: r.get(0)?,
            integration: r.get(1)?,
            ds24_order_id: r.get(2)?,
            ds24_item: r.get(3)?,
            ds24_transaction_id: r.get(4)?,
            reference: r.get(5)?,
            target_order_id: r.get(6)?,
            target_customer_id: r.get(7)?,
            purchase_ids: Vec::new(),
            transaction_ids: Vec::new(),
            created_at: r.get(10)?,
            ds24_parent_transaction_id: r.get(11)?,
        },
        r.get(8)?,
        r.get(9)?,
    ))
}

fn decode_ledger_row(
    (mut entry, purchases, transactions): (LedgerRow, String, String),
) -> Result<LedgerRow, StoreError> {
    entry.purchase_ids = serde_json::from_str(&purchases)?;
    entry.transaction_ids = serde_json::from_str(&transactions)?;
    Ok(entry)
}

/// Every attempt of a job, oldest first.
fn attempts_of(c: &Connection, job_id: i64) -> Result<Vec<AttemptRow>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT id, job_id, number, kind, started_at, finished_at, outcome, endpoint,
                http_status, request, response, reason
         FROM attempts WHERE job_id = ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map(params![job_id], |r| {
        Ok(AttemptRow {
            id: r.get(0)?,
            job_id: r.get(1)?,
            number: r.get(2)?,
            kind: r.get(3)?,
            started_at: r.get(4)?,
            finished_at: r.get(5)?,
            outcome: r.get(6)?,
            endpoint: r.get(7)?,
            http_status: r.get(8)?,
            request: r.get(9)?,
            response: r.get(10)?,
            reason: r.get(11)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        id: r.get(0)?,
        ipn_id: r.get(1)?,
        integration: r.get(2)?,
        target: r.get(3)?,
        action: r.get(4)?,
        order_key: r.get(5)?,
        state: r.get(6)?,
        attempts: r.get(7)?,
        needs_reconcile: r.get(8)?,
        next_attempt_at: r.get(9)?,
        created_at: r.get(10)?,
        updated_at: r.get(11)?,
        last_error: r.get(12)?,
    })
}

fn ingest(c: &Connection, ipn: &NewIpn) -> Result<Ingested, StoreError> {
    // The new row's id from `last_insert_rowid` rather than `RETURNING id`, which SQLite
    // runs through a temporary table per statement (issue 13: one statement per IPN on
    // the writer thread). `execute` counts this statement's own rows only, never a
    // trigger's, and a conflict inserts none.
    let inserted = c.prepare_cached(INSERT_IPN_SQL)?.execute(params![
        ipn.source,
        ipn.business_key,
        ipn.event,
        ipn.order_id,
        ipn.order_item_id,
        ipn.product_id,
        ipn.transaction_id,
        ipn.buyer_email,
        ipn.amount,
        ipn.currency,
        ipn.received_at,
        ipn.raw_body,
        ipn.parent_transaction_id
    ])?;
    let ipn_id = c.last_insert_rowid();
    if inserted == 0 {
        let existing: i64 = c
            .prepare_cached("SELECT id FROM ipns WHERE source = ?1 AND business_key = ?2")?
            .query_row(params![ipn.source, ipn.business_key], |r| r.get(0))?;
        return Ok(Ingested::Duplicate {
            ipn_id: EventId(existing),
        });
    }
    let mut jobs = Vec::new();
    for route in &ipn.routes {
        let (decision, reason, job_id) = match &route.decision {
            RouteDecision::Skip { reason } => ("skipped", reason.as_str(), None),
            RouteDecision::Job { job, reason } => {
                let id = insert_job(c, ipn_id, &route.integration, job, ipn.received_at)?;
                jobs.push(id);
                ("job", reason.as_str(), Some(id.0))
            }
        };
        c.prepare_cached(
            "INSERT INTO routes (ipn_id, integration, decision, reason, job_id, decided_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            ipn_id,
            route.integration,
            decision,
            reason,
            job_id,
            ipn.received_at
        ])?;
    }
    for alert in &ipn.alerts {
        alerts::insert_alert(c, &super::alerts::with_event_id(alert, EventId(ipn_id)))?;
    }
    Ok(Ingested::Stored {
        ipn_id: EventId(ipn_id),
        jobs,
    })
}

fn insert_job(
    c: &Connection,
    ipn_id: i64,
    integration: &str,
    job: &NewJob,
    now: i64,
) -> Result<JobId, StoreError> {
    let payload = serde_json::to_string(&job.action)?;
    let hold = hold_reason(c, integration, &job.order_key, job.action.kind(), i64::MAX)?;
    let id = c
        .prepare_cached(
            "INSERT INTO jobs (ipn_id, integration, target, action, payload, order_key, state,
                               next_attempt_at, created_at, updated_at, last_error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10)
             RETURNING id",
        )?
        .query_row(
            params![
                ipn_id,
                integration,
                job.target,
                job.action.kind().config_name(),
                payload,
                job.order_key,
                if hold.is_some() { "held" } else { "pending" },
                job.not_before,
                now,
                hold
            ],
            |r| r.get(0),
        )?;
    Ok(JobId(id))
}

/// Gives a dead or dropped job a new action (a replay) and makes it pending; the jobs held
/// behind it that no other dead job blocks are released.
fn reroute_job(c: &Connection, id: JobId, job: &NewJob, now: i64) -> Result<(), StoreError> {
    let payload = serde_json::to_string(&job.action)?;
    c.prepare_cached(
        "UPDATE jobs SET target = ?2, action = ?3, payload = ?4, state = 'pending',
                next_attempt_at = ?5, retry_base = ?5, updated_at = ?5, last_error = NULL
         WHERE id = ?1",
    )?
    .execute(params![
        id.0,
        job.target,
        job.action.kind().config_name(),
        payload,
        now.max(job.not_before)
    ])?;
    c.prepare_cached(RELEASE_HELD_SQL)?
        .execute(params![id.0, now])?;
    Ok(())
}

/// Why a new job with action `kind` of `(integration, order_key)` must be held: the first
/// dead earlier job of the same Digistore24 order that it depends on, with its error.
///
/// Jobs of one order run in the order received, with one exception: an import never waits
/// for (and is never held behind) an earlier refund, chargeback or cancellation, because it
/// cannot depend on them, while they may be waiting for it: Digistore24 does not guarantee
/// the order of IPNs, and a refund can arrive before its payment.
fn hold_reason(
    c: &Connection,
    integration: &str,
    order_key: &str,
    kind: ActionKind,
    before: i64,
) -> Result<Option<String>, StoreError> {
    Ok(c.prepare_cached(HOLD_REASON_SQL)?
        .query_row(
            params![integration, order_key, before, kind.config_name()],
            |r| r.get(0),
        )
        .optional()?)
}

/// Holds the unfinished jobs that follow a job that just died.
fn hold_followers(c: &Connection, dead: JobId, now: i64) -> Result<(), StoreError> {
    let (integration, order_key, error, action): (String, String, Option<String>, String) = c
        .prepare_cached(
            "SELECT integration, order_key, last_error, action FROM jobs WHERE id = ?1",
        )?
        .query_row(params![dead.0], |r| <_>::try_from(r))?;
    let reason = format!(
        "held: job {dead} of the same Digistore24 order is dead{}",
        error.map(|e| format!(" ({e})")).unwrap_or_default()
    );
    c.prepare_cached(HOLD_FOLLOWERS_SQL)?.execute(params![
        integration,
        order_key,
        dead.0,
        reason,
        now,
        action
    ])?;
    Ok(())
}

/// After an import was delivered, the actions of the same order waiting for it (a refund
/// that arrived first, say) are due at once instead of at their next back-off.
fn wake_dependents(c: &Connection, delivered: JobId, now: i64) -> Result<(), StoreError> {
    c.prepare_cached(WAKE_DEPENDENTS_SQL)?
        .execute(params![delivered.0, now])?;
    Ok(())
}

fn lease_due(
    c: &Connection,
    target: &str,
    now: i64,
    limit: usize,
) -> Result<Vec<LeasedRow>, StoreError> {
    // (id, ipn_id, integration, target, payload, needs_reconcile, attempts, created_at,
    //  retry_base)
    type Candidate = (i64, i64, String, String, String, bool, u32, i64, i64);
    let candidates: Vec<Candidate> = {
        let mut stmt = c.prepare_cached(LEASE_CANDIDATES_SQL)?;
        let rows = stmt.query_map(params![target, now, limit as i64], |r| {
            Candidate::try_from(r)
        })?;
        rows.collect::<Result<_, _>>()?
    };
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    // Issue 13, round 3: the whole lease in two statements, not two per job (see
    // `LEASE_TAKE_SQL`).
    let opened: Vec<(i64, u32, &str)> = candidates
        .iter()
        .map(|(id, _, _, _, _, reconcile, attempts, ..)| {
            (*id, attempts + 1, attempt_kind(*reconcile).as_str())
        })
        .collect();
    let opened = serde_json::to_string(&opened)?;
    let taken = c
        .prepare_cached(LEASE_TAKE_SQL)?
        .execute(params![opened, now])?;
    if taken != candidates.len() {
        return Err(StoreError::Internal(format!(
            "lease: {taken} of {} jobs taken",
            candidates.len()
        )));
    }
    let mut attempt_of: HashMap<i64, i64> = HashMap::with_capacity(candidates.len());
    {
        let mut stmt = c.prepare_cached(LEASE_OPEN_ATTEMPTS_SQL)?;
        let mut rows = stmt.query(params![opened, now])?;
        while let Some(row) = rows.next()? {
            attempt_of.insert(row.get(1)?, row.get(0)?);
        }
    }
    let mut leased = Vec::with_capacity(candidates.len());
    for (id, ipn_id, integration, target, payload, reconcile, attempts, created_at, retry_base) in
        candidates
    {
        let attempt_id = attempt_of.get(&id).copied().ok_or_else(|| {
            StoreError::Internal(format!("lease: no attempt opened for job {id}"))
        })?;
        leased.push(LeasedRow {
            id,
            ipn_id,
            integration,
            target,
            payload,
            attempt_id,
            attempt_no: attempts + 1,
            kind: attempt_kind(reconcile),
            created_at,
            retry_base,
        });
    }
    Ok(leased)
}

/// A job [`lease_due`] took, with its action still the stored JSON: [`SqliteStore::lease_due`]
/// parses it after the writer's reply.
struct LeasedRow {
    id: i64,
    ipn_id: i64,
    integration: String,
    target: String,
    payload: String,
    attempt_id: i64,
    attempt_no: u32,
    kind: AttemptKind,
    created_at: i64,
    retry_base: i64,
}

impl LeasedRow {
    fn into_job(self, action: Action) -> LeasedJob {
        LeasedJob {
            id: JobId(self.id),
            ipn_id: EventId(self.ipn_id),
            integration: self.integration,
            target: self.target,
            action,
            attempt_id: self.attempt_id,
            attempt_no: self.attempt_no,
            kind: self.kind,
            created_at: self.created_at,
            retry_base: self.retry_base,
        }
    }
}

/// The kind of a job's next attempt: an import that may have been applied is looked up
/// first.
fn attempt_kind(needs_reconcile: bool) -> AttemptKind {
    if needs_reconcile {
        AttemptKind::Reconcile
    } else {
        AttemptKind::Send
    }
}

/// Opens one attempt (`reconciled_absent`; a lease opens its attempts together, see
/// [`LEASE_OPEN_ATTEMPTS_SQL`]).
const OPEN_ATTEMPT_SQL: &str =
    "INSERT INTO attempts (job_id, number, kind, started_at) VALUES (?1, ?2, ?3, ?4)
 RETURNING id";

/// Closes one attempt (a batch of deliveries closes its attempts together, see
/// [`CLOSE_ATTEMPTS_SQL`]).
const CLOSE_ATTEMPT_SQL: &str =
    "UPDATE attempts SET finished_at = ?2, outcome = ?3, endpoint = ?4, http_status = ?5,
        request = ?6, response = ?7, reason = ?8
 WHERE id = ?1";

fn open_attempt(
    c: &Connection,
    job: JobId,
    number: u32,
    kind: AttemptKind,
    now: i64,
) -> Result<i64, StoreError> {
    Ok(c.prepare_cached(OPEN_ATTEMPT_SQL)?
        .query_row(params![job.0, number, kind.as_str(), now], |r| r.get(0))?)
}

fn close_attempt(
    c: &Connection,
    attempt_id: i64,
    now: i64,
    outcome: &str,
    report: &AttemptReport,
) -> Result<(), StoreError> {
    c.prepare_cached(CLOSE_ATTEMPT_SQL)?.execute(params![
        attempt_id,
        now,
        outcome,
        report.endpoint,
        report.http_status,
        report.request,
        report.response,
        report.outcome.reason()
    ])?;
    Ok(())
}

fn finish_attempt(
    c: &Connection,
    job: JobId,
    attempt_id: i64,
    report: &AttemptReport,
    disposition: &Disposition,
    now: i64,
) -> Result<(), StoreError> {
    close_attempt(c, attempt_id, now, report.outcome.label(), report)?;
    let last_error = match report.outcome.reason() {
        "" => None,
        r => Some(r.to_owned()),
    };
    match disposition {
        Disposition::Delivered(receipt) => {
            c.prepare_cached(
                "UPDATE jobs SET state = 'delivered', needs_reconcile = 0, updated_at = ?2,
                        last_error = NULL
                 WHERE id = ?1",
            )?
            .execute(params![job.0, now])?;
            write_ledger(c, job, receipt, now)?;
            wake_dependents(c, job, now)?;
        }
        Disposition::Retry { at, reconcile } => {
            c.prepare_cached(
                "UPDATE jobs SET state = 'pending', next_attempt_at = ?2, updated_at = ?3,
                        needs_reconcile = ?4, last_error = ?5
                 WHERE id = ?1",
            )?
            .execute(params![job.0, at, now, reconcile, last_error])?;
        }
        Disposition::Requeue { at } => {
            c.prepare_cached(
                "UPDATE jobs SET state = 'pending', next_attempt_at = ?2, updated_at = ?3,
                        attempts = MAX(attempts - 1, 0), last_error = ?4
                 WHERE id = ?1",
            )?
            .execute(params![job.0, at, now, last_error])?;
        }
        Disposition::Dead => {
            c.prepare_cached(
                "UPDATE jobs SET state = 'dead', updated_at = ?2, last_error = ?3 WHERE id = ?1",
            )?
            .execute(params![job.0, now, last_error])?;
            hold_followers(c, job, now)?;
        }
    }
    Ok(())
}

/// A batch of results that are all deliveries without an alert, encoded for the statements
/// that write them together: [`CLOSE_ATTEMPTS_SQL`], [`JOBS_DELIVERED_SQL`],
/// [`WRITE_LEDGER_SQL`], each over a JSON array with one entry per item.
///
/// Issue 13, round 3: per delivered job the writer ran four statements (close the attempt,
/// the job `delivered`, its ledger row, wake its dependents), and each write statement
/// inside the transaction opens and closes a statement journal; for a batch, three
/// statements do the first three for every item. The same rows are written as
/// [`finish_attempt`] writes them one by one (the items are distinct jobs, and waking only
/// touches `pending` jobs, so the order within the batch changes nothing). Anything but the
/// expected row counts makes [`DeliveredBatch::write`] answer `false`, and the caller runs
/// the batch again item by item, which reports exactly what the single path does.
struct DeliveredBatch {
    attempts: String,
    jobs: String,
    ledger: String,
}

impl DeliveredBatch {
    /// `None` when an item is not a delivery, carries an alert, or cannot be encoded.
    fn of(items: &[super::FinishedAttempt]) -> Option<DeliveredBatch> {
        let mut attempts = Vec::with_capacity(items.len());
        let mut jobs = Vec::with_capacity(items.len());
        let mut ledger = Vec::with_capacity(items.len());
        for item in items {
            let Disposition::Delivered(receipt) = &item.disposition else {
                return None;
            };
            if item.alert.is_some() {
                return None;
            }
            let report = &item.report;
            attempts.push((
                item.attempt_id,
                item.now,
                report.outcome.label(),
                report.endpoint.as_str(),
                report.http_status,
                report.request.as_str(),
                report.response.as_str(),
                report.outcome.reason(),
            ));
            jobs.push((item.job.0, item.now));
            ledger.push((
                item.job.0,
                receipt.order_id.as_deref(),
                receipt.customer_id.as_deref(),
                serde_json::to_string(&receipt.purchase_ids).ok()?,
                serde_json::to_string(&receipt.transaction_ids).ok()?,
                item.now,
            ));
        }
        Some(DeliveredBatch {
            attempts: serde_json::to_string(&attempts).ok()?,
            jobs: serde_json::to_string(&jobs).ok()?,
            ledger: serde_json::to_string(&ledger).ok()?,
        })
    }

    /// Writes the batch; `Ok(false)` when a statement did not change the rows expected.
    fn write(&self, c: &Connection, items: &[super::FinishedAttempt]) -> Result<bool, StoreError> {
        let n = items.len();
        let closed = c
            .prepare_cached(CLOSE_ATTEMPTS_SQL)?
            .execute(params![self.attempts])?;
        let moved = c
            .prepare_cached(JOBS_DELIVERED_SQL)?
            .execute(params![self.jobs])?;
        let written = c
            .prepare_cached(WRITE_LEDGER_SQL)?
            .execute(params![self.ledger])?;
        if (closed, moved, written) != (n, n, n) {
            return Ok(false);
        }
        for item in items {
            wake_dependents(c, item.job, item.now)?;
        }
        Ok(true)
    }
}

/// The batch statements read their rows with `jsonb_each`, not `json_each`: `json_each`
/// hands each entry back as JSON text, which every `->>` parses again (perf: 40 % of the
/// batch's time in SQLite's JSON code); `jsonb_each` hands back the parsed binary form.
///
/// Closes the attempts of a [`DeliveredBatch`]: `?1` is a JSON array of `[attempt id, now,
/// outcome, endpoint, http status, request, response, reason]` (what [`close_attempt`]
/// binds).
const CLOSE_ATTEMPTS_SQL: &str = "UPDATE attempts SET finished_at = a.value ->> 1,
        outcome = a.value ->> 2, endpoint = a.value ->> 3, http_status = a.value ->> 4,
        request = a.value ->> 5, response = a.value ->> 6, reason = a.value ->> 7
 FROM jsonb_each(?1) AS a
 WHERE attempts.id = a.value ->> 0";

/// The jobs of a [`DeliveredBatch`] become `delivered`: `?1` is a JSON array of `[job id,
/// now]` ([`finish_attempt`]'s statement for one).
const JOBS_DELIVERED_SQL: &str = "UPDATE jobs SET state = 'delivered', needs_reconcile = 0,
        updated_at = d.value ->> 1, last_error = NULL
 FROM jsonb_each(?1) AS d
 WHERE jobs.id = d.value ->> 0";

/// One item of [`SqliteStore::finish_attempts`]: the attempt's end and a dead letter's alert.
fn finish_item(c: &Connection, item: &super::FinishedAttempt) -> Result<(), StoreError> {
    finish_attempt(
        c,
        item.job,
        item.attempt_id,
        &item.report,
        &item.disposition,
        item.now,
    )?;
    if let Some(alert) = &item.alert {
        alerts::insert_alert(c, alert)?;
    }
    Ok(())
}

fn write_ledger(c: &Connection, job: JobId, receipt: &Receipt, now: i64) -> Result<(), StoreError> {
    let entry = [(
        job.0,
        receipt.order_id.as_deref(),
        receipt.customer_id.as_deref(),
        serde_json::to_string(&receipt.purchase_ids)?,
        serde_json::to_string(&receipt.transaction_ids)?,
        now,
    )];
    let written = c
        .prepare_cached(WRITE_LEDGER_SQL)?
        .execute(params![serde_json::to_string(&entry)?])?;
    if written == 0 {
        // No such job (or IPN): what the separate SELECT this replaced reported.
        return Err(rusqlite::Error::QueryReturnedNoRows.into());
    }
    Ok(())
}
