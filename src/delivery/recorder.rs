//! The recorder: one task per target that writes the ends of attempts to the store in
//! batches.
//!
//! Why: with an instant target, recording was the dispatcher's limit. Each job's
//! `finish_attempt` was its own store operation, and the job held its in-flight slot until
//! that operation had committed, so the target's `max_in_flight` slots spent most of their
//! time waiting for fsyncs and each lease round waited for the previous round's commits.
//!
//! What it does: a job whose request has returned hands its result ([`FinishedAttempt`]) to
//! this task and gives its slot back at once (the request is over, so `max_in_flight` still
//! bounds the requests in flight); it then waits for the recorder's answer. The task takes
//! everything queued (up to [`MAX_RECORD_BATCH`]) and writes it with one
//! [`Store::finish_attempts`] call: one writer operation, one commit for many results, which
//! the writer's group commit may share further with the next lease round.
//!
//! Durability is unchanged: until its result has committed, a job stays `in_flight` with its
//! attempt open in the store, exactly as when it held its slot; a crash in that window is
//! recovered on the next start as `interrupted` (imports reconciled before any resend). An
//! earlier job of the same order that is not yet recorded still holds back the later ones
//! (`lease_due` treats `in_flight` as unfinished). The job's task ends only after its result
//! committed (or the process stops), so the tracker's drain at shutdown or reload still
//! waits for every result to be written.
//!
//! Failures: a call that fails as a whole, or items that fail alone, are written again
//! after [`STORE_RETRY_MS`](super::STORE_RETRY_MS) until they succeed or the process stops
//! (then the job is recovered on the next start), as the single-job path did.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::store::{FinishedAttempt, Store};

/// Most results written by one store call.
pub const MAX_RECORD_BATCH: usize = 512;

/// One result waiting to be written; `done` hears whether it was (false: the process
/// stopped first).
pub struct Record {
    pub item: FinishedAttempt,
    pub done: oneshot::Sender<bool>,
}

/// The sending half, held by the target's worker.
pub type RecordSender = mpsc::UnboundedSender<Record>;

/// The recorder of one target: runs until every sender is gone and everything received is
/// written (or the process stops).
pub async fn run(
    store: Store,
    clock: SharedClock,
    shutdown: CancellationToken,
    target: String,
    mut rx: mpsc::UnboundedReceiver<Record>,
    retry: Duration,
) {
    let mut batch: Vec<Record> = Vec::new();
    loop {
        if batch.is_empty() {
            match rx.recv().await {
                Some(record) => batch.push(record),
                None => return,
            }
        }
        while batch.len() < MAX_RECORD_BATCH {
            match rx.try_recv() {
                Ok(record) => batch.push(record),
                Err(_) => break,
            }
        }
        let now = clock.now_ms();
        let items: Vec<FinishedAttempt> = batch
            .iter()
            .map(|r| FinishedAttempt {
                now,
                ..r.item.clone()
            })
            .collect();
        let failed = match store.finish_attempts(items).await {
            Ok(results) => {
                let mut left = Vec::new();
                for (record, result) in batch.drain(..).zip(results) {
                    match result {
                        Ok(()) => {
                            let _ = record.done.send(true);
                        }
                        Err(e) => {
                            tracing::debug!(%target, job_id = %record.item.job, error = %e,
                                "could not record a delivery attempt; retrying");
                            left.push(record);
                        }
                    }
                }
                batch = left;
                !batch.is_empty()
            }
            Err(e) => {
                // Logged (once, then summarised) by the store itself.
                tracing::debug!(%target, error = %e, jobs = batch.len(),
                    "could not record delivery attempts; retrying");
                true
            }
        };
        if failed {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    for record in batch.drain(..) {
                        let _ = record.done.send(false);
                    }
                    // Whatever is still queued is not written either: every job of it is
                    // recovered on the next start.
                    rx.close();
                    while let Ok(record) = rx.try_recv() {
                        let _ = record.done.send(false);
                    }
                    return;
                }
                _ = tokio::time::sleep(retry) => {}
            }
        }
    }
}
