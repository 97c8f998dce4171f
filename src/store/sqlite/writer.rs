//! The one thread that owns the SQLite connection, and its group commit.
//!
//! Every store operation is a closure sent over a bounded channel to this thread. The thread
//! takes the first waiting operation, then everything else already queued (up to
//! [`MAX_BATCH`]), and runs them all inside **one** `BEGIN IMMEDIATE … COMMIT`. Each operation
//! runs inside its own `SAVEPOINT`, so one failing operation (a constraint, a bad row) is
//! rolled back alone and the others still commit. Replies are sent only **after** the
//! commit returned: a caller that hears `Ok` knows its rows are on disk (WAL with
//! `synchronous=FULL` fsyncs the log on every commit).
//!
//! Why a thread and not a pool: SQLite allows one writer at a time anyway, and rusqlite's
//! `Connection` is not `Sync`. With one owner there is no lock to hold across `.await`, and
//! batching falls out naturally: while one commit waits for `fsync`, new requests queue up
//! and share the next one. One fsync per request caps ingest at the disk's fsync rate
//! (hundreds per second); one per batch does not.
//!
//! When the commit (or `BEGIN`) fails, for example because the disk is full, the file is
//! read-only or another process holds the write lock past the busy timeout, every operation
//! of that batch gets the error. The thread keeps running, so the store recovers by itself
//! when the cause goes away.
//!
//! **The file under the connection.** After every batch, before any reply, the thread asks
//! its [`FileWatch`] whether the path still leads to the file it writes and whether that
//! file is still a database (see `integrity`). If not, the batch's replies are errors and
//! the store refuses every later operation until a restart (*broken*). The thread
//! checkpoints the WAL into the file it had open and closes the connection: that file then
//! holds every commit, and the `-wal` at the path is left empty, so no frames of it can be
//! applied to whatever file the path leads to next (SQLite would do so at its next open).
//! For a deleted or replaced file the watch keeps a descriptor, so the old file can be
//! copied from `/proc/<pid>/fd/<n>` until the daemon stops; the ERROR line says where.
//!
//! No alert can be recorded for a broken store: the alert outbox lives in that database.
//! The single ERROR line is the signal (and `/healthz` answers 503 with the reason).
//!
//! **Failures in the log.** Every operation that fails for a reason of the store (not a
//! `NotFound` or a refused request) is counted ([`Stats::failed_ops`], exported as
//! `ipn_bridge_store_errors_total`) and logged through a [`LogLimiter`]: the first failure
//! of a kind in full, repeats summarised once a minute, and one line when writes commit
//! again. Callers answer their own caller (503, retry later) without logging the cause
//! again at ERROR.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::mpsc;

use super::StoreError;
use super::checkpoint::{Checkpointer, Counts};
use super::integrity::{FileWatch, Problem};
use super::lock::DaemonLock;
use super::log_limit::{LogLimiter, Verdict};

/// Most operations sharing one transaction.
pub const MAX_BATCH: usize = 1024;

/// How long a write waits for a lock held by another process before it fails.
pub const BUSY_TIMEOUT_MS: u64 = 2_000;

/// Queued operations before senders wait (backpressure on ingest).
pub const QUEUE_CAPACITY: usize = 8_192;

/// Written by every health probe: SQLite's `application_id` header field ("IPNB"). Setting
/// it rewrites page 1, so the probe is a real, durable one-page write through the WAL,
/// without a table of its own.
pub const APPLICATION_ID: i32 = 0x4950_4E42;

/// Called after the batch's commit with its result; sends the reply.
pub type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// One queued store operation.
pub trait Op: Send {
    /// Runs inside the batch's transaction. Returns its own result (on `Err` its savepoint
    /// is rolled back; the error is a copy, for counting and logging) and what to do once
    /// the commit result is known.
    fn run(self: Box<Self>, conn: &Connection) -> (Result<(), StoreError>, Completion);
    /// The operation cannot run (the batch could not start); reply with `err`.
    fn fail(self: Box<Self>, err: StoreError);
    /// Whether the operation only reads. A batch of reads only begins a deferred transaction,
    /// which in WAL mode never waits for another process's write lock (a `queue list` while
    /// the daemon drains a backlog).
    fn read_only(&self) -> bool {
        false
    }
    /// Whether the operation can run more than once (see [`transact`]): [`Op::repeat`] runs
    /// it and keeps its result, which [`Op::run`] then hands over without running again.
    fn repeatable(&self) -> bool {
        false
    }
    /// Runs a repeatable operation and keeps its result (see [`Op::repeatable`]). Not called
    /// on other operations.
    fn repeat(&mut self, _conn: &Connection) -> Result<(), StoreError> {
        Err(StoreError::Internal(
            "this store operation is not repeatable".into(),
        ))
    }
    /// Drops the result [`Op::repeat`] kept (its writes were rolled back), so that
    /// [`Op::run`] runs the operation again.
    fn forget(&mut self) {}
}

/// Counters of the writer thread (read by health checks, metrics and tests).
#[derive(Debug, Default)]
pub struct Stats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Operations that ran inside a committed transaction.
    pub ops: AtomicU64,
    /// Operations that failed for a reason of the store (I/O, disk full, read-only, locked,
    /// damaged or lost file), including those refused while the store is broken.
    pub failed_ops: AtomicU64,
    /// The daemon's WAL checkpoints (see `checkpoint`); `None` for an operator command's
    /// store, which keeps SQLite's automatic checkpoint.
    pub checkpoints: std::sync::OnceLock<Arc<Counts>>,
}

/// What the writer thread receives.
pub enum Msg {
    Op(Box<dyn Op>),
    /// Finish the batch in hand, then stop; later operations fail with `Closed`.
    Close,
    /// The background `quick_check` found the file damaged (its finding): finish the batch
    /// in hand, then refuse every operation until a restart, as for a file overwritten
    /// under the daemon.
    Damaged(String),
}

/// Opens the connection with the pragmas every connection of this program uses.
pub fn open_connection(path: &PathBuf) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Unavailable(format!(
            "could not switch {} to WAL mode (got {mode})",
            path.display()
        )));
    }
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA temp_store = MEMORY;",
    )?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Prepared statements kept per connection. The store has a few dozen distinct statements;
/// rusqlite's default (16) evicted the ingest statements whenever the dispatcher's ran, so
/// they were parsed again and again.
const STATEMENT_CACHE: usize = 128;

/// Runs one of the transaction-control statements (`BEGIN`, `SAVEPOINT`, …) from the
/// statement cache instead of parsing it on every use (`execute_batch` always parses).
pub fn control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// An operation's completion, or the operation with the error that kept it from running.
type Pending = Result<Completion, (Box<dyn Op>, StoreError)>;

/// What one batch's transaction left to do: the commit result, each operation's completion
/// (or the operation with the error that kept it from running), the operations' own store
/// failures, and whether any row was written.
struct Transacted {
    commit: Result<(), StoreError>,
    completions: Vec<Pending>,
    own_failures: Vec<StoreError>,
    wrote: bool,
}

/// Runs `batch` in one transaction (see the module docs). `Err` when it could not begin;
/// the operations are then still in `batch`.
///
/// **Repeatable operations share one savepoint** (issue 13). A savepoint makes SQLite copy
/// every page an operation changes into its statement journal first; for an IPN's insert
/// that is its table and index pages, some 16 KB copied per IPN, the largest cost on the
/// writer after the row itself. So the batch's repeatable operations (see
/// [`Op::repeat`]: the ingest of an IPN) first run one after another under a single
/// savepoint, which copies each page once per batch. If one of them fails, that savepoint
/// is rolled back and every repeatable operation runs again under its own savepoint, as
/// the others always do: a failing operation is still rolled back alone and the rest
/// still commit. The operations of one batch were all sent before any of them was
/// answered, so running the repeatable ones first changes no order a caller could rely on.
fn transact(conn: &Connection, batch: &mut Vec<Box<dyn Op>>) -> Result<Transacted, StoreError> {
    let begin = if batch.iter().all(|op| op.read_only()) {
        "BEGIN DEFERRED"
    } else {
        "BEGIN IMMEDIATE"
    };
    control(conn, begin)?;
    let changes_before = conn.total_changes();
    let mut completions = Vec::with_capacity(batch.len());
    let mut own_failures = Vec::new();
    let grouped = match run_repeatable_together(conn, batch) {
        Ok(grouped) => grouped,
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(e);
        }
    };
    for op in batch.drain(..) {
        if grouped && op.repeatable() {
            // It ran under the shared savepoint, which was released: `run` hands over the
            // result it kept (an `Ok`).
            let (_, completion) = op.run(conn);
            completions.push(Ok(completion));
            continue;
        }
        if let Err(e) = control(conn, "SAVEPOINT op") {
            completions.push(Err((op, StoreError::from(e))));
            continue;
        }
        let (result, completion) = op.run(conn);
        let closed = match result {
            Ok(()) => control(conn, "RELEASE op"),
            Err(e) => {
                if is_store_failure(&e) {
                    own_failures.push(e);
                }
                control(conn, "ROLLBACK TO op").and_then(|()| control(conn, "RELEASE op"))
            }
        };
        if let Err(e) = closed {
            tracing::error!(error = %e, "could not close a savepoint; the batch is abandoned");
        }
        completions.push(Ok(completion));
    }
    let wrote = conn.total_changes() != changes_before;
    let commit = control(conn, "COMMIT").map_err(StoreError::from);
    if commit.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    Ok(Transacted {
        commit,
        completions,
        own_failures,
        wrote,
    })
}

/// The first pass of [`transact`]: every repeatable operation of `batch` under one
/// savepoint. `Ok(true)`: they all succeeded and their writes stand (each kept its result);
/// `Ok(false)`: there were fewer than two, or one failed and the savepoint was rolled back
/// (every kept result dropped), so each runs again under its own savepoint. `Err`: the
/// rollback itself failed, so the transaction's state is unknown; the caller rolls it
/// back entirely and the whole batch gets the error.
fn run_repeatable_together(
    conn: &Connection,
    batch: &mut [Box<dyn Op>],
) -> Result<bool, StoreError> {
    if batch.iter().filter(|op| op.repeatable()).count() < 2
        || control(conn, "SAVEPOINT together").is_err()
    {
        return Ok(false);
    }
    let all_ran = batch
        .iter_mut()
        .filter(|op| op.repeatable())
        .all(|op| op.repeat(conn).is_ok());
    if all_ran && control(conn, "RELEASE together").is_ok() {
        return Ok(true);
    }
    for op in batch.iter_mut() {
        op.forget();
    }
    control(conn, "ROLLBACK TO together")
        .and_then(|()| control(conn, "RELEASE together"))
        .map_err(|e| {
            StoreError::Unavailable(format!(
                "could not roll back a failed group of operations: {e}"
            ))
        })?;
    Ok(false)
}

/// Whether an error is the store's fault (counted and logged here) rather than an answer
/// to the request (not found, refused).
fn is_store_failure(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Unavailable(_) | StoreError::Internal(_) | StoreError::Damaged(_)
    )
}

/// What the thread owns. Fields drop in this order: the connection before the watch's
/// descriptor (see `integrity`), the daemon lock last.
pub struct Writer {
    conn: Option<Connection>,
    /// The daemon's background checkpoint thread; joined after `conn` is closed.
    checkpointer: Option<Checkpointer>,
    watch: FileWatch,
    lock: Option<DaemonLock>,
    stats: Arc<Stats>,
    limiter: LogLimiter,
    /// Why every operation is refused until a restart (see the module docs).
    broken: Option<String>,
}

impl Writer {
    /// The writer for `conn`. The daemon's (the one holding `lock`) also starts the
    /// background checkpoint thread (see `checkpoint`).
    pub fn new(
        mut conn: Connection,
        watch: FileWatch,
        lock: Option<DaemonLock>,
        stats: Arc<Stats>,
    ) -> Result<Writer, StoreError> {
        let checkpointer = match lock {
            Some(_) => {
                let checkpointer = Checkpointer::start(&mut conn, watch.path())?;
                let _ = stats.checkpoints.set(checkpointer.counts());
                Some(checkpointer)
            }
            None => None,
        };
        Ok(Writer {
            conn: Some(conn),
            checkpointer,
            watch,
            lock,
            stats,
            limiter: LogLimiter::default(),
            broken: None,
        })
    }

    /// The writer loop; returns on [`Msg::Close`] or when every sender is gone.
    pub fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut batch: Vec<Box<dyn Op>> = Vec::with_capacity(MAX_BATCH);
        let mut closing = false;
        while !closing {
            let mut damaged = None;
            match rx.blocking_recv() {
                Some(Msg::Op(op)) => batch.push(op),
                Some(Msg::Damaged(why)) => damaged = Some(why),
                Some(Msg::Close) | None => break,
            }
            while batch.len() < MAX_BATCH && damaged.is_none() {
                match rx.try_recv() {
                    Ok(Msg::Op(op)) => batch.push(op),
                    Ok(Msg::Damaged(why)) => damaged = Some(why),
                    Ok(Msg::Close) => {
                        closing = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                self.run_batch(&mut batch);
            }
            if let Some(why) = damaged
                && self.broken.is_none()
            {
                self.break_down(Problem::Damaged(why));
            }
        }
        // Operations still queued behind the close are refused, not silently dropped.
        rx.close();
        while let Ok(msg) = rx.try_recv() {
            if let Msg::Op(op) = msg {
                op.fail(StoreError::Closed);
            }
        }
        if let Some(conn) = self.conn.take() {
            // The daemon leaves the WAL small for the next start; failure only costs a bigger
            // WAL. An operator command beside a running daemon only copies what it can:
            // TRUNCATE waits (up to the busy timeout) for every reader to finish, and a long
            // reader (the daemon's background quick_check of a big file) made every
            // `queue list` take 2 s longer at a million jobs (issue 13).
            let mode = if self.lock.is_some() {
                "PRAGMA wal_checkpoint(TRUNCATE)"
            } else {
                "PRAGMA wal_checkpoint(PASSIVE)"
            };
            let _ = conn.execute_batch(mode);
            drop(conn);
        }
        self.stop_checkpointer();
        drop(self.lock.take());
    }

    fn run_batch(&mut self, batch: &mut Vec<Box<dyn Op>>) {
        let (Some(conn), None) = (&self.conn, &self.broken) else {
            let err = StoreError::Unavailable(self.broken.clone().unwrap_or_default());
            self.refuse(batch, err);
            return;
        };
        let Transacted {
            mut commit,
            completions,
            own_failures,
            wrote,
        } = match transact(conn, batch) {
            Ok(t) => t,
            Err(err) => {
                self.refuse(batch, err);
                return;
            }
        };
        // Before any reply: is what was just committed where the next start will look?
        match self.watch.check() {
            Ok(()) => {}
            Err(Some(problem)) => commit = Err(self.break_down(problem)),
            Err(None) => {
                commit = Err(StoreError::Unavailable(
                    "cannot check that the database file is still in place".into(),
                ));
            }
        }
        match &commit {
            Ok(()) => {
                tracing::trace!(ops = completions.len(), "batch committed");
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .ops
                    .fetch_add(completions.len() as u64, Ordering::Relaxed);
                for e in &own_failures {
                    self.failed(e, 1);
                }
                // Only rows really written prove the store works again: a batch of reads,
                // or a write that changed nothing, commits even on a full disk.
                if wrote
                    && own_failures.is_empty()
                    && let Some(failed) = self.limiter.recovered()
                {
                    tracing::warn!(
                        failed_ops = failed,
                        "the store commits again; {failed} operations had failed before"
                    );
                }
            }
            Err(e) => self.failed(e, completions.len() as u64),
        }
        for c in completions {
            match c {
                Ok(completion) => completion(commit.clone()),
                Err((op, err)) => {
                    self.failed(&err, 1);
                    op.fail(err);
                }
            }
        }
    }

    /// Waits for the checkpoint thread, which ends once the connection (holding the hook
    /// that nudges it) is closed.
    fn stop_checkpointer(&mut self) {
        if self.conn.is_none()
            && let Some(checkpointer) = self.checkpointer.take()
        {
            checkpointer.join();
        }
    }

    /// Fails every operation of `batch` with `err` (counted and logged once).
    fn refuse(&mut self, batch: &mut Vec<Box<dyn Op>>, err: StoreError) {
        self.failed(&err, batch.len() as u64);
        for op in batch.drain(..) {
            op.fail(err.clone());
        }
    }

    /// Counts `ops` operations failed with `err` and logs through the limiter.
    fn failed(&mut self, err: &StoreError, ops: u64) {
        self.stats.failed_ops.fetch_add(ops, Ordering::Relaxed);
        let text = err.to_string();
        let verdict = self.limiter.failure(&text, ops, Instant::now());
        let broken = self.broken.is_some();
        match verdict {
            Verdict::Suppress => {}
            // A broken store's ERROR line was written when it broke (see `break_down`).
            Verdict::Log if broken => {}
            Verdict::Log => tracing::error!(error = %text, ops, "store operations failed"),
            Verdict::Summary { repeated, over } if broken => tracing::warn!(
                error = %text, repeated, over_s = over.as_secs(),
                "still refusing every store operation: {repeated} refused in the last {} s",
                over.as_secs()
            ),
            Verdict::Summary { repeated, over } => tracing::error!(
                error = %text, repeated, over_s = over.as_secs(),
                "store operations keep failing: repeated {repeated} times in the last {} s",
                over.as_secs()
            ),
        }
    }

    /// The file is gone or damaged: refuse everything from now on and say so once at
    /// ERROR. The WAL is checkpointed into the file the connection had open and the
    /// connection closed, so that file holds every commit and no `-wal` stays at the path
    /// for whatever file is put there next (SQLite would apply it at the next open).
    fn break_down(&mut self, problem: Problem) -> StoreError {
        if let Some(conn) = self.conn.take() {
            let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
            if let Err((_, e)) = conn.close() {
                tracing::warn!(error = %e, "could not close the database cleanly");
            }
        }
        self.stop_checkpointer();
        let reason = match problem {
            Problem::Lost(what) => {
                let hint = self.watch.recovery_hint();
                format!(
                    "{what}; IPNs are refused (503) until a restart. The old file's content \
                     stays readable at {hint} while this process runs: copy it \
                     (cp {hint} {}.recovered) before restarting",
                    self.watch.path().display()
                )
            }
            Problem::Damaged(what) => format!(
                "{what}; IPNs are refused (503) until the file is restored and the daemon restarted"
            ),
        };
        tracing::error!(
            "{reason}. No alert can be recorded: the alert outbox is in that database, so this line is the alert"
        );
        self.broken = Some(reason.clone());
        StoreError::Unavailable(reason)
    }
}
