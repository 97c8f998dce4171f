//! The jobs per state on PostgreSQL: rows `(state, shard, n)` of `job_counts`, kept by the
//! row triggers of schema migrations 3 and 4, summed per state by a read
//! (`JOB_COUNTS_SQL` in `jobs.rs`), and *folded* here.
//!
//! Since migration 4 the shard of a row is the pid of the backend that writes it
//! (`pg_backend_pid()`): a backend runs one transaction at a time, so no two concurrent
//! transactions ever write the same counter row, and no writer waits on another's counts
//! (under migration 3's `pid % 16` two transactions of one shard could deadlock). The price
//! is a row per state for every backend that ever changed a job; [`FOLD_SQL`] moves the
//! rows of backends that are gone into the row `(state, 0)`, which only folds write (no
//! backend has pid 0).
//!
//! When: the store folds once when it opens (after the migrations), then at most once every
//! [`FOLD_EVERY`] when the counts are read ([`PgStore::job_counts`], which `/metrics` and
//! `/healthz` call), before the read. The PostgreSQL store has no periodic maintenance
//! loop of its own to hang it on (the dispatcher lock connection is checked only when a
//! dispatcher asks for a target), and a read of the counts is what wants few rows. The
//! time is `tokio::time`'s, so tests pause and advance it. A fold that fails is logged and
//! the open or the read goes on (the counts are right either way; only the number of rows
//! grows until a later fold succeeds).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::Client;

use super::schema::FOLD_LOCK;
use super::{PgStore, pg_error};
use crate::store::StoreError;

/// Least time between two folds of one instance on reads of the counts.
pub const FOLD_EVERY: Duration = Duration::from_secs(60);

/// Folds the counter rows of backends that are gone: in one statement, every row whose
/// `shard` is neither 0 nor the pid of a live backend (`pg_stat_activity`, whose `pid`
/// every role may read) is deleted and its `n` added to the row `(state, 0)`. Returns the
/// number of rows folded. Run in a transaction after `pg_advisory_xact_lock(FOLD_LOCK)`
/// ([`FOLD_LOCK`]), so folds (the only writers of shard 0) run one at a time and each one's
/// snapshot, taken after the lock, sees the previous fold's rows of shard 0.
///
/// It never waits on a live backend and never deadlocks: the rows to fold are selected
/// `FOR UPDATE SKIP LOCKED`, so a row that a transaction in flight has written (or locked)
/// is left for the next fold, and the fold then deletes only rows it holds. The only other
/// rows it writes are those of shard 0, which no backend writes as its own (a TRUNCATE of
/// `jobs` clears them only after taking the same advisory lock).
///
/// A pid can be reused: a new backend may get the pid of a folded one, or of a row the fold
/// is looking at, and its writes then go to that row. Whatever the timing, the value moved
/// is the committed one and nothing is counted twice or lost:
/// - the new backend has written the row and not committed: the row is locked, skipped;
/// - it committed after the fold's snapshot was taken: `FOR UPDATE` (READ COMMITTED)
///   follows the row to its newest version and locks that, and `DELETE … RETURNING` deletes
///   and returns that version, with the new backend's change in it;
/// - it writes after the fold locked the row: its `INSERT … ON CONFLICT` waits for the
///   fold to commit (a moment: the fold waits on nothing), finds the row deleted and
///   inserts a new one with its own change only.
///
/// The same holds for a backend that started after the fold read `pg_stat_activity` (the
/// view is read once per transaction): its row may be folded while it lives, which costs a
/// row, never a count.
pub const FOLD_SQL: &str = "
    WITH gone AS (
        SELECT state, shard FROM job_counts c
        WHERE shard <> 0
          AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = c.shard)
        FOR UPDATE SKIP LOCKED
    ), moved AS (
        DELETE FROM job_counts c USING gone g
        WHERE c.state = g.state AND c.shard = g.shard
        RETURNING c.state, c.n
    ), folded AS (
        INSERT INTO job_counts AS c (state, shard, n)
        SELECT state, 0, SUM(n) FROM moved GROUP BY state
        ON CONFLICT (state, shard) DO UPDATE SET n = c.n + EXCLUDED.n
    )
    SELECT COUNT(*)::BIGINT FROM moved";

/// When this instance last folded (see the module doc).
#[derive(Debug)]
pub(super) struct FoldClock {
    last: Mutex<Instant>,
}

impl FoldClock {
    /// Starts the period now (the store has just folded at open).
    pub(super) fn started() -> FoldClock {
        FoldClock {
            last: Mutex::new(Instant::now()),
        }
    }

    /// Whether a fold is due; if so, the period starts again now (a second reader at the
    /// same moment finds it not due, so one fold runs).
    fn take_if_due(&self) -> bool {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        if now.duration_since(*last) < FOLD_EVERY {
            return false;
        }
        *last = now;
        true
    }
}

/// Runs [`FOLD_SQL`] in a transaction of its own under [`FOLD_LOCK`]; returns the number of
/// rows folded.
pub(super) async fn fold(client: &mut Client) -> Result<u64, StoreError> {
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&FOLD_LOCK])
        .await
        .map_err(pg_error)?;
    let folded: i64 = tx.query_one(FOLD_SQL, &[]).await.map_err(pg_error)?.get(0);
    tx.commit().await.map_err(pg_error)?;
    Ok(u64::try_from(folded).unwrap_or(0))
}

impl PgStore {
    /// Folds the counter rows of backends that are gone now (see [`FOLD_SQL`]); returns the
    /// number of rows folded.
    pub(crate) async fn fold_job_counts(&self) -> Result<u64, StoreError> {
        let r = async {
            let mut client = self.client().await?;
            fold(&mut client).await
        }
        .await;
        self.count(r)
    }

    /// [`PgStore::fold_job_counts`] when [`FOLD_EVERY`] has passed since the last fold of
    /// this instance; a failure is logged, not returned (see the module doc).
    pub(super) async fn fold_job_counts_if_due(&self) {
        if !self.fold_clock.take_if_due() {
            return;
        }
        match self.fold_job_counts().await {
            Ok(0) => {}
            Ok(rows) => tracing::debug!(rows, "folded the job counts of ended connections"),
            Err(e) => tracing::warn!(error = %e, "cannot fold the job counts; trying again later"),
        }
    }
}
