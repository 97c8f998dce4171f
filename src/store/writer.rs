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

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::mpsc;

use super::StoreError;

/// Most operations sharing one transaction.
pub const MAX_BATCH: usize = 1024;

/// How long a write waits for a lock held by another process before it fails.
pub const BUSY_TIMEOUT_MS: u64 = 2_000;

/// Queued operations before senders wait (backpressure on ingest).
pub const QUEUE_CAPACITY: usize = 8_192;

/// Called after the batch's commit with its result; sends the reply.
pub type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// One queued store operation.
pub trait Op: Send {
    /// Runs inside the batch's transaction. Returns whether it succeeded (its savepoint is
    /// kept, else rolled back) and what to do once the commit result is known.
    fn run(self: Box<Self>, conn: &Connection) -> (bool, Completion);
    /// The operation cannot run (the batch could not start); reply with `err`.
    fn fail(self: Box<Self>, err: StoreError);
    /// Whether the operation only reads. A batch of reads only begins a deferred transaction,
    /// which in WAL mode never waits for another process's write lock (a `queue list` while
    /// the daemon drains a backlog).
    fn read_only(&self) -> bool {
        false
    }
}

/// Counters of the writer thread (read by health checks, metrics and tests).
#[derive(Debug, Default)]
pub struct Stats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Operations that ran inside a committed transaction.
    pub ops: AtomicU64,
}

/// What the writer thread receives.
pub enum Msg {
    Op(Box<dyn Op>),
    /// Finish the batch in hand, then stop; later operations fail with `Closed`.
    Close,
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
fn control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// The writer loop; returns on [`Msg::Close`] or when every sender is gone.
pub fn run(conn: Connection, mut rx: mpsc::Receiver<Msg>, stats: Arc<Stats>) {
    let mut batch: Vec<Box<dyn Op>> = Vec::with_capacity(MAX_BATCH);
    let mut closing = false;
    while !closing {
        match rx.blocking_recv() {
            Some(Msg::Op(op)) => batch.push(op),
            Some(Msg::Close) | None => break,
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Msg::Op(op)) => batch.push(op),
                Ok(Msg::Close) => {
                    closing = true;
                    break;
                }
                Err(_) => break,
            }
        }
        run_batch(&conn, &mut batch, &stats);
    }
    // Operations still queued behind the close are refused, not silently dropped.
    rx.close();
    while let Ok(msg) = rx.try_recv() {
        if let Msg::Op(op) = msg {
            op.fail(StoreError::Closed);
        }
    }
    // Leaves the WAL small for the next start; failure only costs a bigger WAL.
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
}

fn run_batch(conn: &Connection, batch: &mut Vec<Box<dyn Op>>, stats: &Stats) {
    let begin = if batch.iter().all(|op| op.read_only()) {
        "BEGIN DEFERRED"
    } else {
        "BEGIN IMMEDIATE"
    };
    if let Err(e) = control(conn, begin) {
        let err = StoreError::from(e);
        for op in batch.drain(..) {
            op.fail(err.clone());
        }
        return;
    }
    let mut completions = Vec::with_capacity(batch.len());
    for op in batch.drain(..) {
        if let Err(e) = control(conn, "SAVEPOINT op") {
            completions.push(Err((op, StoreError::from(e))));
            continue;
        }
        let (ok, completion) = op.run(conn);
        let closed = if ok {
            control(conn, "RELEASE op")
        } else {
            control(conn, "ROLLBACK TO op").and_then(|()| control(conn, "RELEASE op"))
        };
        if let Err(e) = closed {
            tracing::error!(error = %e, "could not close a savepoint; the batch is abandoned");
        }
        completions.push(Ok(completion));
    }
    let commit = control(conn, "COMMIT").map_err(StoreError::from);
    if commit.is_err() {
        let _ = conn.execute_batch("ROLLBACK");
    } else {
        tracing::trace!(ops = completions.len(), "batch committed");
        stats.commits.fetch_add(1, Ordering::Relaxed);
        stats
            .ops
            .fetch_add(completions.len() as u64, Ordering::Relaxed);
    }
    for c in completions {
        match c {
            Ok(completion) => completion(commit.clone()),
            Err((op, err)) => op.fail(err),
        }
    }
}
