//! The daemon's WAL checkpoints, mostly off the writer thread (issue 13, ack latency).
//!
//! SQLite's automatic checkpoint runs inside the commit that pushed the WAL past 1,000
//! frames: the writer thread copies those pages into the database file and fsyncs it before
//! it answers anyone. Under ingest that was a checkpoint every few tens of milliseconds, and
//! each one delayed every acknowledgement waiting on that batch; the worst took 220 ms (the
//! ack-latency benchmark, `benches/RESULTS.md`).
//!
//! So the daemon's writer connection gets a WAL hook in place of the automatic checkpoint,
//! and the copying moves to the `store-checkpoint` thread, which has its own connection (WAL
//! mode lets one checkpointer run beside the writer):
//! 1. When a commit leaves [`BACKGROUND_FRAMES`] frames or more in the WAL (SQLite's own
//!    threshold), the hook nudges the thread, which runs a `PASSIVE` checkpoint: it copies
//!    every frame there was when it began and fsyncs the database file, while the writer
//!    goes on committing.
//! 2. The first commit after that pass ends runs a `PASSIVE` checkpoint on the writer's
//!    connection, which copies only the frames written during the pass. It is needed: the
//!    WAL starts over from its beginning only if every frame has been copied when the writer
//!    begins a transaction, which a pass that runs beside a busy writer never achieves.
//! 3. Should the thread fall behind or fail, the writer checkpoints by itself once the WAL
//!    reaches [`WRITER_MAX_FRAMES`], so the WAL stays bounded.
//!
//! One pass per WAL, as SQLite's automatic checkpoint did, not one per commit: a pass per
//! commit (the first version of this module) fsynced the database file hundreds of times a
//! second and slowed the WAL's own fsyncs.
//!
//! Durability is unchanged: a commit is durable when its WAL frames are fsynced
//! (`synchronous=FULL`), whoever copies them later; a checkpoint interrupted by a crash is
//! redone from the WAL at the next open. Only the daemon does this; an operator command's
//! store keeps SQLite's automatic checkpoint.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

use rusqlite::Connection;
use rusqlite::wal::CheckpointMode;

use super::StoreError;
use super::writer::open_connection;

/// WAL frames (pages) after which a commit asks the background thread for its pass
/// (SQLite's default `wal_autocheckpoint`).
pub const BACKGROUND_FRAMES: i32 = 1_000;

/// WAL frames after which the writer checkpoints without waiting for the thread.
pub const WRITER_MAX_FRAMES: i32 = 4 * BACKGROUND_FRAMES;

/// The background thread and the counters the writer's hook and the thread keep.
pub struct Checkpointer {
    thread: Option<JoinHandle<()>>,
    counts: Arc<Counts>,
}

/// What the checkpoints did, for tests and the store's statistics.
#[derive(Debug, Default)]
pub struct Counts {
    /// Checkpoints the background thread ran to the end.
    pub background: AtomicU64,
    /// Checkpoints the writer ran to the end (the finishing ones).
    pub writer: AtomicU64,
    /// Whether the thread was nudged and has not finished its pass yet.
    pending: AtomicBool,
    /// Frames the thread's last pass copied in the current WAL (0: none since it started
    /// over).
    copied: AtomicI32,
}

impl Checkpointer {
    /// Opens a second connection to `path` and starts the thread, then hooks the writer's
    /// connection `conn` (replacing its automatic checkpoint).
    pub fn start(conn: &mut Connection, path: &Path) -> Result<Checkpointer, StoreError> {
        let own = open_connection(&path.to_path_buf())?;
        let counts = Arc::new(Counts::default());
        let (nudge, nudged) = sync_channel::<()>(1);
        let thread_counts = counts.clone();
        let thread = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(move || background(own, nudged, &thread_counts))
            .map_err(|e| {
                StoreError::Internal(format!("cannot start the checkpoint thread: {e}"))
            })?;
        let hook_counts = counts.clone();
        conn.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, frames: i32| {
            after_commit(wal, frames, &nudge, &hook_counts);
            Ok(())
        }))?;
        Ok(Checkpointer {
            thread: Some(thread),
            counts,
        })
    }

    /// The counters.
    pub fn counts(&self) -> Arc<Counts> {
        self.counts.clone()
    }

    /// Waits for the thread to end. Call after the writer's connection is closed: closing it
    /// drops the hook and with it the thread's only sender.
    pub fn join(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer's WAL hook: `frames` is the WAL's length after the commit (see the module
/// docs for the three steps).
fn after_commit(
    wal: &mut rusqlite::hooks::Wal,
    frames: i32,
    nudge: &SyncSender<()>,
    counts: &Counts,
) {
    let copied = counts.copied.load(Ordering::Acquire);
    if copied > frames {
        // The WAL started over since that pass (another process's checkpoint did it).
        counts.copied.store(0, Ordering::Release);
    }
    let passed = copied > 0 && copied <= frames;
    if passed || frames >= WRITER_MAX_FRAMES {
        // Busy or failed: the next commit tries again; a real I/O failure shows in the
        // commits themselves.
        if let Ok((log, done)) = wal.checkpoint_v2(CheckpointMode::PASSIVE)
            && log == done
        {
            counts.writer.fetch_add(1, Ordering::Relaxed);
            counts.copied.store(0, Ordering::Release);
        }
    } else if frames >= BACKGROUND_FRAMES && !counts.pending.swap(true, Ordering::AcqRel) {
        // Full: a nudge is already waiting. Disconnected: the thread has ended; the
        // writer's own checkpoint at `WRITER_MAX_FRAMES` still bounds the WAL.
        if let Err(TrySendError::Disconnected(())) = nudge.try_send(()) {
            counts.pending.store(false, Ordering::Release);
        }
    }
}

/// The thread: one `PASSIVE` pass per nudge, until the writer's connection (and with it the
/// hook holding the sender) is gone.
fn background(conn: Connection, nudged: Receiver<()>, counts: &Counts) {
    let mut failing = false;
    while nudged.recv().is_ok() {
        match conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE) {
            Ok((_, done)) => {
                counts.background.fetch_add(1, Ordering::Relaxed);
                counts.copied.store(done.max(0), Ordering::Release);
                failing = false;
            }
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {}
            Err(e) => {
                // Once per run of failures: the writer's own checkpoint and its commits
                // report a store that really fails; this thread only saves the writer work.
                if !failing {
                    tracing::warn!(error = %e, "background WAL checkpoint failed; the writer checkpoints instead");
                    failing = true;
                }
            }
        }
        counts.pending.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewIpn;
    use crate::store::sqlite::{EmptyFile, SqliteStore};

    fn big_ipn(n: usize) -> NewIpn {
        NewIpn {
            source: "ds24".into(),
            business_key: format!("event/o:O{n}/i:1/t:T{n}"),
            event: "on_payment".into(),
            order_id: Some(format!("O{n}")),
            order_item_id: None,
            product_id: None,
            transaction_id: Some(format!("T{n}")),
            buyer_email: None,
            amount: None,
            currency: None,
            received_at: 1_000,
            // About the size of a real IPN body: its row needs an overflow page.
            raw_body: format!("event=on_payment&order_id=O{n}&pad={}", "x".repeat(4_000))
                .into_bytes(),
            routes: Vec::new(),
            alerts: Vec::new(),
            parent_transaction_id: None,
        }
    }

    #[tokio::test]
    async fn the_daemon_checkpoints_in_the_background_and_its_wal_still_starts_over() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("t.db");
        let store = SqliteStore::open_exclusive(&path, EmptyFile::Refuse).expect("open");
        let counts = store
            .stats
            .checkpoints
            .get()
            .expect("the daemon has a checkpointer")
            .clone();
        let wal = dir.path().join("t.db-wal");
        let mut largest_wal = 0;
        // 3,840 rows of over 4 KB: more than `WRITER_MAX_FRAMES` frames, so the writer
        // finishes a checkpoint even if the thread were never scheduled in between.
        for chunk in 0..120 {
            let mut ingests = tokio::task::JoinSet::new();
            for i in 0..32 {
                let store = store.clone();
                ingests.spawn(async move { store.ingest(big_ipn(chunk * 32 + i)).await });
            }
            while let Some(result) = ingests.join_next().await {
                result.expect("task").expect("ingest");
            }
            largest_wal = largest_wal.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        }
        // The thread was nudged long before; on a busy machine it may still be on its way.
        let nudged = std::time::Instant::now();
        while counts.background.load(Ordering::Relaxed) == 0
            && nudged.elapsed() < std::time::Duration::from_secs(10)
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(
            counts.background.load(Ordering::Relaxed) > 0,
            "the background thread checkpointed"
        );
        assert!(
            counts.writer.load(Ordering::Relaxed) > 0,
            "the writer finished checkpoints, so the WAL could start over"
        );
        // The WAL never held much more than the writer's own threshold.
        let bound = u64::try_from(WRITER_MAX_FRAMES + 200).expect("frames") * (4_096 + 24) + 32;
        assert!(
            largest_wal <= bound,
            "WAL grew to {largest_wal} B (bound {bound} B)"
        );
        store.close().await;
        let rows: i64 = Connection::open(&path)
            .and_then(|c| c.query_row("SELECT COUNT(*) FROM ipns", [], |r| r.get(0)))
            .expect("count");
        assert_eq!(rows, 120 * 32);
        assert_eq!(
            std::fs::metadata(&wal).map_or(0, |m| m.len()),
            0,
            "a clean stop leaves the WAL empty"
        );
    }

    #[tokio::test]
    async fn an_operator_commands_store_keeps_sqlites_own_checkpoint() {
        let dir = tempfile::tempdir().expect("dir");
        let store = SqliteStore::open(&dir.path().join("t.db")).expect("open");
        assert!(store.stats.checkpoints.get().is_none());
        store.close().await;
    }
}
