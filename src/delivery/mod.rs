//! The dispatcher: takes due jobs from the store, calls the target, records every attempt
//! and moves each job on (delivered, retry later, dead).
//!
//! One loop per target. It leases at most as many jobs as the target has free in-flight
//! slots (`max_in_flight`), and every request (sends and reconciliation queries alike)
//! first waits for the target's token bucket (`requests_per_second`, `burst`), which all
//! integrations of the target share. The rate limiter sits around the client, not inside
//! it, so the connector stays a plain request/response translator.
//!
//! Durability rules:
//! - Leasing writes the job as `in_flight` with an open attempt row *before* any request
//!   leaves, so a crash at any point leaves evidence; on the next start
//!   [`Store::recover_interrupted`] closes the attempt as `interrupted` and flags the job for
//!   reconciliation.
//! - An action that is not safe to repeat (an import) and whose previous attempt may have
//!   been applied is *reconciled* first: the target is asked whether the order with our
//!   reference exists; only if it does not is the request sent again.
//! - A store write that fails after a call is retried until it succeeds or the process
//!   stops; the job is never left `in_flight` by a running process.
//! - A dead letter's alert is written in the same store call (one transaction) as the job's
//!   death, so a crash never leaves a dead job nobody is told about.
//!
//! Target pause: when the target refuses a request as a whole (bad login, IP not
//! allow-listed, missing permission: [`Outcome::TargetDown`]), every other request would fail
//! the same way, and repeated bad logins can lock the API user. So the target stops sending:
//! the job goes back to `pending` without spending an attempt, no further job is leased, and
//! the connector's probe (Konnektive: `campaign/query`) checks every [`probe_interval`]
//! whether the problem is fixed;
//! the first probe that succeeds resumes the target. The pause lives in memory: after a
//! restart the first request finds out again, which costs one refused request.
//!
//! Refused endpoint: the first probe goes out at once, before the target is paused
//! (`confirm_refusal`). If it fails too, the refusal is target-wide (login, allow-list) and
//! the target pauses. If it succeeds, the API user works and lacks only the permission for
//! the refused endpoint (`transactions/refund`, say): pausing would resume at the next probe
//! and meet the same refusal again, without end. So that job ends dead with the target's
//! message, the usual alert says which permission is probably missing, and the target keeps
//! delivering everything else.
//!
//! The target is reached only through its [`Connector`] (built per generation): the
//! dispatcher names no CRM type, endpoint or field. Checks before a send (a Konnektive
//! import's campaign currency, cached per generation: a reload asks again) are the
//! connector's `precheck`, given the limiter's wait so that a cached answer costs no token.
//!
//! Which import a refund or chargeback belongs to: the ledger keeps both ids of each
//! imported payment, and `resolve_import` matches the reversed payment against either,
//! falls back to the only import of the order item, never guesses among several, and ends a
//! reversal of a payment this integration skipped (so never imported) at once. The choice is
//! written at the top of the attempt's request, where `queue show` shows it.
//!
//! The loop wakes when the server stores new jobs (a `watch` counter), when a slot frees, at
//! the next due time, and at least every [`POLL_INTERVAL_MS`] so changes made by other
//! processes (the queue commands) are seen quickly.
//!
//! Several instances (PostgreSQL): before each round the loop asks the store whether this
//! instance dispatches the target ([`Store::claim_target`]; always yes on SQLite). Another
//! instance's target is asked again every [`POLL_INTERVAL_MS`], which is how a target fails
//! over when its instance dies. A target just taken over starts with an empty token bucket
//! (its burst spent at once): the requests the previous owner made in its last moments count,
//! so the sum over all instances never exceeds `requests_per_second` + `burst`.
//!
//! Wake-ups are coalesced, because every lease round costs store calls that queue in the same
//! writer as ingest: the `watch` counter holds one pending wake-up however many IPNs were
//! stored, and after a wake-up for new jobs the loop waits [`WAKE_COALESCE_MS`] before it
//! leases, so a burst of IPNs costs a handful of rounds, not one (`lease_due` +
//! `next_due_at`) per IPN. While every slot of the target is busy the loop listens only for a
//! freed slot (and the poll interval): new jobs could not be leased anyway.

pub mod recorder;
pub mod schedule;

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::alert::{Alert, AlertKind, Alerter};
use crate::clock::SharedClock;
use crate::config::{Config, Delivery, Target};
use crate::connectors::{Attempt, Connector};
use crate::domain::{
    Action, AttemptReport, Day, DayWindow, ImportRef, JobId, Outcome, Receipt, import_reference,
};
use crate::metrics::Metrics;
use crate::store::{
    AttemptKind, Claim, Disposition, FinishedAttempt, LeasedJob, LedgerRow, Store, StoreError,
};

use schedule::JobClock;

/// Longest sleep of a target loop.
pub const POLL_INTERVAL_MS: i64 = 1_000;

/// After a wake-up for new jobs, the loop waits this long before leasing, so that the jobs of
/// a burst of IPNs are leased together.
pub const WAKE_COALESCE_MS: u64 = 5;

/// Pause between retries of a failed store write after a call.
const STORE_RETRY_MS: u64 = 500;

/// Most leased jobs one lease round may add beyond the free slots (see [`next_lookahead`]):
/// the look-ahead grows towards this only while the slots sat idle waiting for each lease.
pub const MAX_LOOKAHEAD: usize = 256;

/// Wakes the dispatcher when new jobs were stored.
#[derive(Debug, Clone)]
pub struct Wake(Arc<watch::Sender<u64>>);

impl Default for Wake {
    fn default() -> Self {
        Wake(Arc::new(watch::channel(0).0))
    }
}

impl Wake {
    pub fn notify(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// Liveness of the dispatcher: the last time any target loop went round.
#[derive(Debug, Clone, Default)]
pub struct Heartbeat(Arc<AtomicI64>);

impl Heartbeat {
    pub fn last_beat_ms(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }

    fn beat(&self, now: i64) {
        self.0.store(now, Ordering::Relaxed);
    }
}

/// Why a target is paused, for logs, health and alerts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pause {
    pub reason: String,
    pub since_ms: i64,
    next_probe_ms: i64,
}

/// The paused targets, shared with the health endpoint.
#[derive(Debug, Clone, Default)]
pub struct TargetBoard(Arc<std::sync::Mutex<BTreeMap<String, Pause>>>);

impl TargetBoard {
    /// The paused targets and why.
    pub fn paused(&self) -> BTreeMap<String, Pause> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }

    fn get(&self, target: &str) -> Option<Pause> {
        self.0.lock().ok().and_then(|m| m.get(target).cloned())
    }

    /// Pauses `target`; returns true when it was running (so the caller reports it once).
    fn pause(&self, target: &str, reason: &str, now: i64, probe_in_ms: i64) -> bool {
        let Ok(mut m) = self.0.lock() else {
            return false;
        };
        if m.contains_key(target) {
            return false;
        }
        m.insert(
            target.to_owned(),
            Pause {
                reason: reason.to_owned(),
                since_ms: now,
                next_probe_ms: now.saturating_add(probe_in_ms),
            },
        );
        true
    }

    fn set_next_probe(&self, target: &str, at: i64, reason: &str) {
        if let Ok(mut m) = self.0.lock()
            && let Some(p) = m.get_mut(target)
        {
            p.next_probe_ms = at;
            p.reason = reason.to_owned();
        }
    }

    fn resume(&self, target: &str) -> Option<Pause> {
        self.0.lock().ok().and_then(|mut m| m.remove(target))
    }
}

/// Time between two probes of a paused target: the target's `retry_max`, at least one
/// second and at most five minutes (a probe with a bad password is a failed login, and
/// Konnektive may lock an API user after many).
pub fn probe_interval(policy: &Delivery) -> Duration {
    policy
        .retry_max
        .clamp(Duration::from_secs(1), Duration::from_secs(300))
}

struct TargetWorker {
    name: String,
    alerter: Alerter,
    metrics: Metrics,
    /// Each integration's `error_emails`, for alerts about its jobs.
    recipients: BTreeMap<String, Vec<String>>,
    /// The `error_emails` of every integration using this target, for pause alerts.
    target_recipients: Vec<String>,
    board: TargetBoard,
    /// The target behind its seam (built per generation, so its caches are too).
    connector: Connector,
    policy: Delivery,
    limiter: DefaultDirectRateLimiter,
    /// The bucket's size (`burst`), spent at once when the target is taken over.
    burst: NonZeroU32,
    slots: Arc<Semaphore>,
    /// `max_in_flight`: how many leased jobs may wait for a slot (see [`hand_out`]).
    window: usize,
    slot_freed: Notify,
    store: Store,
    clock: SharedClock,
    /// The process is stopping: give up retrying store writes (the job is recovered on the
    /// next start).
    shutdown: CancellationToken,
    /// This generation of loops stops leasing (shutdown or reload).
    stop: CancellationToken,
    /// One immediate probe after a target-wide refusal at a time (see [`confirm_refusal`]).
    refusal_probe: Semaphore,
    /// Where finished attempts go to be written (see [`recorder`]).
    records: recorder::RecordSender,
}

/// What every target loop shares with the rest of the daemon.
#[derive(Clone)]
pub struct Handles {
    pub store: Store,
    pub alerter: Alerter,
    pub metrics: Metrics,
    pub clock: SharedClock,
    pub wake: Wake,
    pub heartbeat: Heartbeat,
    pub board: TargetBoard,
    pub shutdown: CancellationToken,
}

/// Starts one loop per target of `config` on `tracker` (a *generation* of the dispatcher).
/// The loops stop leasing when `stop` is cancelled (a reload starts the next generation);
/// jobs already leased finish normally and are recorded even then. Returns after spawning.
pub fn spawn(
    config: &Config,
    handles: &Handles,
    stop: &CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<()> {
    let Handles {
        store,
        alerter,
        metrics,
        clock,
        wake,
        heartbeat,
        board,
        shutdown,
    } = handles;
    for target in config.targets.values() {
        let recipients: BTreeMap<String, Vec<String>> = config
            .integrations
            .values()
            .filter(|i| i.target == target.name)
            .map(|i| (i.name.clone(), i.error_emails.clone()))
            .collect();
        let mut target_recipients: Vec<String> = recipients.values().flatten().cloned().collect();
        target_recipients.sort();
        target_recipients.dedup();
        metrics.set_target_paused(&target.name, board.get(&target.name).is_some());
        if !store.shared() {
            metrics.set_target_dispatched(&target.name, true);
        }
        let (records, to_record) = tokio::sync::mpsc::unbounded_channel();
        tracker.spawn(recorder::run(
            store.clone(),
            clock.clone(),
            shutdown.clone(),
            target.name.clone(),
            to_record,
            Duration::from_millis(STORE_RETRY_MS),
        ));
        let worker = Arc::new(TargetWorker {
            name: target.name.clone(),
            alerter: alerter.clone(),
            metrics: metrics.clone(),
            recipients,
            target_recipients,
            board: board.clone(),
            connector: Connector::new(config, target)?,
            policy: target.delivery.clone(),
            limiter: RateLimiter::direct(quota(target)),
            burst: NonZeroU32::new(target.burst.max(1)).unwrap_or(NonZeroU32::MIN),
            slots: Arc::new(Semaphore::new(target.max_in_flight.max(1) as usize)),
            window: target.max_in_flight.max(1) as usize,
            slot_freed: Notify::new(),
            store: store.clone(),
            clock: clock.clone(),
            shutdown: shutdown.clone(),
            stop: stop.clone(),
            refusal_probe: Semaphore::new(1),
            records,
        });
        tracker.spawn(target_loop(
            worker,
            wake.subscribe(),
            heartbeat.clone(),
            tracker.clone(),
        ));
    }
    Ok(())
}

/// The token bucket of a target: one token every `1 / requests_per_second`, at most
/// `burst` saved up.
fn quota(target: &Target) -> Quota {
    let period = Duration::from_secs_f64(1.0 / target.requests_per_second.max(1e-6));
    let burst = NonZeroU32::new(target.burst.max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
        .allow_burst(burst)
}

async fn target_loop(
    w: Arc<TargetWorker>,
    mut wake: watch::Receiver<u64>,
    heartbeat: Heartbeat,
    tracker: TaskTracker,
) {
    tracing::debug!(target = %w.name, "dispatcher started");
    // Leased jobs beyond the free slots (see [`next_lookahead`]), and whether the previous
    // round got every job it asked for (a backlog is being drained).
    let mut ahead = w.window;
    let mut draining = false;
    loop {
        if w.stop.is_cancelled() {
            break;
        }
        let now = w.clock.now_ms();
        heartbeat.beat(now);
        if !dispatches(&w, now).await {
            tokio::select! {
                _ = w.stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS as u64)) => {}
            }
            continue;
        }
        if let Some(pause) = w.board.get(&w.name) {
            if now >= pause.next_probe_ms {
                probe(&w).await;
                continue;
            }
            let wait = (pause.next_probe_ms - now).clamp(10, POLL_INTERVAL_MS);
            tokio::select! {
                _ = w.stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(wait as u64)) => {}
            }
            continue;
        }
        let free = w.slots.available_permits();
        // The free slots, and the look-ahead that waits for slots (see [`hand_out`]).
        let asked = free + ahead;
        match w.store.lease_due(&w.name, now, asked).await {
            Ok(jobs) if !jobs.is_empty() => {
                let full = jobs.len() == asked;
                let idle = w.slots.available_permits();
                ahead = next_lookahead(ahead, w.window, draining, full, idle);
                draining = full;
                hand_out(&w, jobs, &tracker).await;
                continue;
            }
            Ok(_) => {
                ahead = w.window;
                draining = false;
            }
            // The store logs its own failures (once, then summarised); a line per poll
            // would flood the log while the disk is full.
            Err(e) => tracing::debug!(target = %w.name, error = %e, "could not lease jobs"),
        }
        if free == 0 {
            // Every slot is busy: nothing can be leased before one frees, so neither new jobs
            // nor the next due time are a reason to look (and to ask the store).
            tokio::select! {
                _ = w.stop.cancelled() => break,
                _ = w.slot_freed.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS as u64)) => {}
            }
            continue;
        }
        let wait_ms = match w.store.next_due_at(&w.name).await {
            Ok(Some(due)) => (due - w.clock.now_ms()).clamp(10, POLL_INTERVAL_MS),
            _ => POLL_INTERVAL_MS,
        };
        let new_jobs = tokio::select! {
            _ = w.stop.cancelled() => break,
            _ = wake.changed() => true,
            _ = w.slot_freed.notified() => false,
            _ = tokio::time::sleep(Duration::from_millis(wait_ms as u64)) => false,
        };
        if new_jobs {
            // Coalesce: under a burst of IPNs, the jobs stored during this pause are leased
            // in one round instead of one round (two store calls) per IPN.
            tokio::select! {
                _ = w.stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(WAKE_COALESCE_MS)) => {}
            }
        }
    }
    tracing::debug!(target = %w.name, "dispatcher stopped taking jobs");
}

/// The look-ahead of the next lease round (issue 13, round 2), from the one just leased:
/// `base` is the target's `max_in_flight`, `idle` the slots free when the lease returned.
///
/// Why: a round leases, then hands its jobs out; the next round's lease is written only
/// once the last of them has a slot. With an instant target and one window of look-ahead,
/// the slots finished that window long before the next lease had committed (an fsync'd
/// commit behind the recorder's), so every slot sat idle for one commit per `max_in_flight`
/// jobs, and that, not the target, was the limit. So while a backlog drains (`draining`:
/// the previous round got all it asked for, and so did this one) and at least half the
/// slots were idle when the lease returned, the look-ahead doubles, up to [`MAX_LOOKAHEAD`]; when no slot
/// was free (the target, or its rate limit, is the limit) it halves back towards `base`;
/// when the due jobs ran out it is `base` again. A slow or rate-limited target never has
/// idle slots at a lease's return while it drains, so it keeps one window, as before.
///
/// What it costs: leased jobs waiting for a slot are `in_flight` with an open attempt; a
/// crash recovers them as interrupted (an import is looked up before it is sent again), so
/// a crash in the middle of a fast drain may cost up to this many look-ups, never a job.
fn next_lookahead(ahead: usize, base: usize, draining: bool, full: bool, idle: usize) -> usize {
    if !full {
        base
    } else if draining && idle.saturating_mul(2) >= base {
        ahead.saturating_mul(2).min(MAX_LOOKAHEAD.max(base))
    } else if idle == 0 {
        (ahead / 2).max(base)
    } else {
        ahead
    }
}

/// Starts each leased job as soon as one of the target's slots is free, in lease order.
///
/// The loop leases the free slots' jobs *and one window more* (`max_in_flight` jobs) in one
/// store call, so the next round's lease is written while this round's requests run, and
/// one commit carries many leases (issue 13: with an instant target, a lease round per
/// freed slot made the commits, not the target, the limit). A leased job waiting for a
/// slot is already `in_flight` with its attempt open, as durable as one on the wire: a crash
/// recovers it like any interrupted job (an import is looked up before it is sent again).
///
/// Jobs whose turn comes when the target has been paused meanwhile, or after this
/// generation was told to stop, are not sent: their leases are given back unused
/// ([`Store::release_leases`]: no attempt recorded, the job `pending` as before).
async fn hand_out(w: &Arc<TargetWorker>, jobs: Vec<LeasedJob>, tracker: &TaskTracker) {
    let mut jobs = jobs.into_iter();
    while let Some(job) = jobs.next() {
        let permit = tokio::select! {
            biased;
            permit = w.slots.clone().acquire_owned() => permit.ok(),
            _ = w.stop.cancelled() => None,
        };
        match permit {
            Some(permit) if w.board.get(&w.name).is_none() => {
                tracker.spawn(run_job(w.clone(), job, permit));
            }
            _ => {
                let unused: Vec<(JobId, i64)> = std::iter::once(job)
                    .chain(jobs)
                    .map(|j| (j.id, j.attempt_id))
                    .collect();
                let (store, clock) = (w.store.clone(), w.clock.clone());
                // Given up only when the process stops: the jobs are then recovered on the
                // next start, as interrupted.
                let _ = persist(w, move || {
                    let (store, unused) = (store.clone(), unused.clone());
                    let now = clock.now_ms();
                    async move { store.release_leases(unused, now).await }
                })
                .await;
                return;
            }
        }
    }
}

/// Whether this instance dispatches the target now (see the module doc). A target just
/// taken over from a stopped instance has its interrupted jobs recovered (by the store) and
/// its token bucket emptied before the first request.
async fn dispatches(w: &TargetWorker, now: i64) -> bool {
    let first_retry = i64::try_from(w.policy.retry_initial.as_millis()).unwrap_or(i64::MAX);
    match w
        .store
        .claim_target(&w.name, now, now.saturating_add(first_retry))
        .await
    {
        Ok(Claim::Held) => true,
        Ok(Claim::Taken { recovered }) => {
            tracing::info!(
                target = %w.name, recovered,
                "this instance now dispatches the target; jobs another instance left in flight \
                 are reconciled before any resend"
            );
            w.metrics.set_target_dispatched(&w.name, true);
            // Start with an empty bucket: the previous owner's last requests count.
            let _ = w.limiter.until_n_ready(w.burst).await;
            true
        }
        Ok(Claim::Elsewhere) => {
            w.metrics.set_target_dispatched(&w.name, false);
            false
        }
        Err(e) => {
            tracing::debug!(target = %w.name, error = %e, "cannot tell whether this instance dispatches the target");
            w.metrics.set_target_dispatched(&w.name, false);
            false
        }
    }
}

/// One probe request through the limiter (the connector's probe: `campaign/query` for a
/// Konnektive target). `None` when the target has nothing to ask.
async fn probe_call(w: &TargetWorker) -> Option<Result<(), AttemptReport>> {
    w.connector.probe(|| w.limiter.until_ready()).await
}

/// Asks the paused target whether it accepts requests again; resumes it if so.
async fn probe(w: &TargetWorker) {
    let result = probe_call(w).await.unwrap_or(Ok(()));
    let now = w.clock.now_ms();
    match result {
        Ok(()) => {
            if let Some(pause) = w.board.resume(&w.name) {
                w.metrics.set_target_paused(&w.name, false);
                tracing::warn!(
                    target = %w.name,
                    paused_for_s = (now - pause.since_ms) / 1000,
                    "the target accepts requests again; resuming deliveries"
                );
                let mut alert = Alert::new(
                    AlertKind::TargetResumed,
                    format!(
                        "Target {} accepts requests again after {} s; deliveries resumed. \
                         It had refused them with: {}",
                        w.name,
                        (now - pause.since_ms) / 1000,
                        pause.reason
                    ),
                );
                alert.target = Some(w.name.clone());
                alert.extra_recipients = w.target_recipients.clone();
                raise(w, alert).await;
            }
        }
        Err(report) => {
            let interval = i64::try_from(probe_interval(&w.policy).as_millis()).unwrap_or(i64::MAX);
            tracing::info!(
                target = %w.name, reason = report.outcome.reason(),
                "probe: the target still refuses requests"
            );
            w.board.set_next_probe(
                &w.name,
                now.saturating_add(interval),
                report.outcome.reason(),
            );
        }
    }
}

/// Puts a target-wide refusal to the test before the target is paused: the probe is sent at
/// once (through the limiter). When it fails too (bad login, IP not allow-listed), the
/// refusal stands and the target is paused. When it succeeds, Konnektive accepts this API
/// user in general and refused only the endpoint the job needs (a missing permission):
/// pausing would resume at the next probe and meet the same refusal, without end, so the job
/// ends dead with Konnektive's message (and the usual alert) and the target keeps running.
/// A target already paused is not probed again here: the job simply waits.
async fn confirm_refusal(w: &TargetWorker, report: AttemptReport) -> AttemptReport {
    let Outcome::TargetDown { reason } = &report.outcome else {
        return report;
    };
    let Ok(_one_at_a_time) = w.refusal_probe.acquire().await else {
        return report;
    };
    if w.board.get(&w.name).is_some() {
        return report;
    }
    match probe_call(w).await {
        None | Some(Err(_)) => report,
        Some(Ok(())) => {
            let reason = reason.clone();
            let endpoint = report.endpoint.clone();
            let (label, probe) = (w.connector.label(), w.connector.probe_endpoint());
            let outcome = if endpoint == probe {
                // The probe's own endpoint refused, then accepted: nothing to blame.
                Outcome::Retryable {
                    reason: format!("{reason} ({probe} was refused, then accepted at once)"),
                    retry_after: None,
                }
            } else {
                tracing::error!(
                    target = %w.name, %endpoint, %reason,
                    "{label} refused one endpoint while {probe} works; the job is \
                     dead-lettered and the target keeps running"
                );
                Outcome::Permanent {
                    reason: format!(
                        "{reason}; {probe} works, so the API user probably lacks the \
                         permission for {endpoint}"
                    ),
                }
            };
            AttemptReport { outcome, ..report }
        }
    }
}

/// Pauses the target after a target-wide refusal; the first refusal logs and alerts, later
/// ones (from requests already in flight) only requeue their jobs.
async fn pause_target(w: &TargetWorker, reason: &str) {
    let now = w.clock.now_ms();
    let interval = i64::try_from(probe_interval(&w.policy).as_millis()).unwrap_or(i64::MAX);
    if w.board.pause(&w.name, reason, now, interval) {
        w.metrics.set_target_paused(&w.name, true);
        tracing::error!(
            target = %w.name, %reason,
            "the target refuses every request; deliveries paused until a probe succeeds. \
             Check the API user's login, IP allow-list and endpoint permissions"
        );
        let mut alert = Alert::new(
            AlertKind::TargetPaused,
            format!(
                "{} refuses every request from ipn-bridge: {reason}. Deliveries to \
                 target {} are paused; jobs wait without spending attempts and resume by \
                 themselves once a probe succeeds. Check the API user's login, the IP \
                 allow-list and the allowed endpoints; `ipn-bridge test-connection` shows \
                 which.",
                w.connector.label(),
                w.name
            ),
        );
        alert.target = Some(w.name.clone());
        alert.extra_recipients = w.target_recipients.clone();
        raise(w, alert).await;
    }
}

async fn run_job(w: Arc<TargetWorker>, job: LeasedJob, permit: OwnedSemaphorePermit) {
    let run = Run {
        started: std::time::Instant::now(),
        slot: std::sync::Mutex::new(Some(permit)),
    };
    attempt(&w, &job, &run).await;
    run.release(&w);
}

/// One job's run: when it started, and its in-flight slot until the request is over.
struct Run {
    started: std::time::Instant,
    slot: std::sync::Mutex<Option<OwnedSemaphorePermit>>,
}

impl Run {
    /// Gives the slot back (once) and wakes the target loop: the request is over, the result
    /// waits for the recorder (see [`recorder`]).
    fn release(&self, w: &TargetWorker) {
        let permit = self.slot.lock().ok().and_then(|mut slot| slot.take());
        if permit.is_some() {
            drop(permit);
            w.slot_freed.notify_one();
        }
    }
}

/// One lease of a job: resolve the import it refers to, reconcile if an earlier attempt may
/// have been applied, send, record.
async fn attempt(w: &TargetWorker, job: &LeasedJob, run: &Run) {
    let mut attempt_id = job.attempt_id;
    let mut attempt_no = job.attempt_no;
    let reconciling = job.kind == AttemptKind::Reconcile;
    let window = DayWindow {
        first: Day::from_unix_ms(job.created_at),
        last: Day::from_unix_ms(w.clock.now_ms()),
    };

    let import = match job.action.import_ref() {
        None => None,
        Some(import_ref) => match resolve_import(w, job, import_ref).await {
            Ok(resolved) => Some(resolved),
            Err(report) => {
                settle(w, job, (attempt_id, attempt_no), report, reconciling, run).await;
                return;
            }
        },
    };

    if reconciling && job.action.needs_reconcile() {
        w.limiter.until_ready().await;
        match w
            .connector
            .find_applied(&job.action, import.as_ref().map(|(r, _)| r), window)
            .await
        {
            Ok(Some(receipt)) => {
                tracing::info!(
                    job_id = %job.id, integration = %job.integration, attempt = attempt_no,
                    "found the result of an earlier attempt in the target; recorded as delivered"
                );
                let report = AttemptReport {
                    endpoint: w.connector.lookup_endpoint(&job.action).into(),
                    http_status: Some(200),
                    request: "look up the result of the earlier attempt".into(),
                    response: format!("found: {receipt:?}"),
                    maybe_applied: false,
                    outcome: Outcome::Delivered(receipt.clone()),
                };
                finish(
                    w,
                    job,
                    attempt_id,
                    report,
                    Disposition::Delivered(receipt),
                    None,
                    run,
                )
                .await;
                return;
            }
            Ok(None) => {
                let report = AttemptReport {
                    endpoint: w.connector.lookup_endpoint(&job.action).into(),
                    http_status: Some(200),
                    request: "look up the result of the earlier attempt".into(),
                    response: "not found; sending again".into(),
                    maybe_applied: false,
                    outcome: Outcome::Retryable {
                        reason: String::new(),
                        retry_after: None,
                    },
                };
                let store = w.store.clone();
                let (id, clock) = (job.id, w.clock.clone());
                let opened = persist(w, move || {
                    let (store, report) = (store.clone(), report.clone());
                    let now = clock.now_ms();
                    async move { store.reconciled_absent(id, attempt_id, report, now).await }
                })
                .await;
                match opened {
                    Some((id, no)) => {
                        attempt_id = id;
                        attempt_no = no;
                    }
                    None => return,
                }
            }
            Err(report) => {
                settle(w, job, (attempt_id, attempt_no), report, true, run).await;
                return;
            }
        }
    }

    if let Err(report) = w
        .connector
        .precheck(&job.action, || w.limiter.until_ready())
        .await
    {
        settle(w, job, (attempt_id, attempt_no), report, false, run).await;
        return;
    }

    w.limiter.until_ready().await;
    let sending = Attempt {
        event: job.ipn_id,
        now_ms: w.clock.now_ms(),
    };
    let report = match &import {
        Some((receipt, how)) => {
            let mut report = w
                .connector
                .execute(&job.action, Some(receipt), sending)
                .await;
            report.request = format!("import: {how}\n{}", report.request);
            report
        }
        None => w.connector.execute(&job.action, None, sending).await,
    };
    let reconcile = report.maybe_applied && job.action.needs_reconcile();
    settle(w, job, (attempt_id, attempt_no), report, reconcile, run).await;
}

/// Ends an attempt: pauses the target on a target-wide refusal, decides the job's next step,
/// logs, records it, counts it; a dead letter's alert is recorded in the same transaction as
/// the job's death, so a crash cannot separate them.
async fn settle(
    w: &TargetWorker,
    job: &LeasedJob,
    (attempt_id, attempt_no): (i64, u32),
    report: AttemptReport,
    reconcile: bool,
    run: &Run,
) {
    let report = confirm_refusal(w, report).await;
    if let Outcome::TargetDown { reason } = &report.outcome {
        pause_target(w, reason).await;
    }
    let disposition = next_step(w, job, &report.outcome, reconcile, attempt_no);
    log_attempt(job, attempt_no, &report, &disposition);
    let alert = (disposition == Disposition::Dead).then(|| {
        let mut alert = alert_for(
            job,
            AlertKind::DeadLetter,
            report.outcome.reason().to_owned(),
        );
        alert.extra_recipients = w
            .recipients
            .get(&job.integration)
            .cloned()
            .unwrap_or_default();
        alert
    });
    finish(w, job, attempt_id, report, disposition, alert, run).await;
}

/// An alert about `job`, with the Digistore24 facts its action carries.
fn alert_for(job: &LeasedJob, kind: AlertKind, message: String) -> Alert {
    let mut alert = Alert::new(kind, message);
    alert.integration = Some(job.integration.clone());
    alert.target = Some(job.target.clone());
    alert.job_id = Some(job.id.0);
    alert.retry_command = Some(format!("ipn-bridge queue retry {}", job.id));
    match &job.action {
        Action::ImportOrder { order, .. } => {
            alert.ds24_order_id = order
                .reference
                .strip_prefix("DS24-")
                .and_then(|r| r.split('-').next())
                .map(str::to_owned);
            alert.product = order
                .items
                .first()
                .map(|i| format!("campaign product {}", i.product_id));
            alert.amount = order
                .items
                .first()
                .map(|i| format!("{} {}", i.line_total(), order.currency));
            alert.buyer_email = Some(order.buyer.email.clone());
        }
        other => {
            if let Some(import) = other.import_ref() {
                alert.ds24_order_id = Some(import.ds24_order_id.clone());
                alert.product = Some(format!("order item {}", import.ds24_item));
                alert.buyer_email = Some(import.email.clone());
            }
            if let Action::Refund { amount, .. } | Action::Chargeback { amount, .. } = other {
                alert.amount = Some(amount.to_string());
            }
        }
    }
    alert
}

/// Records an alert; a failure to record it is logged, never fatal to a delivery.
async fn raise(w: &TargetWorker, alert: Alert) {
    if let Err(e) = w.alerter.raise(alert).await {
        tracing::error!(target = %w.name, error = %e, "could not record an alert");
    }
}

/// The import an action works on, and how it was found (recorded on the attempt).
type Resolved = (Receipt, String);

/// The CRM order an action refers to: the ledger first, else the connector's lookup
/// (Konnektive: `order/query`).
///
/// A refund or chargeback names the reversed payment (`parent_transaction_id`); the ledger
/// entry whose `transaction_id` or `parent_transaction_id` is that id wins (see
/// [`choose_import`]). When neither matches, the only import of the order item is taken, but
/// only while the store knows nothing of that payment: a payment this integration skipped (a
/// follow-up payment with `followup_payments = false`) was never imported, and the job ends
/// dead at once saying so; a payment with a job of its own waits for that import. Two or more
/// imports and no exact match: no guess, retryable with that reason (dead after
/// `give_up_after`).
///
/// No import anywhere is a retryable failure with that reason: the payment IPN may still
/// arrive (Digistore24 does not guarantee the order of IPNs), and if it never does, the job
/// is dead-lettered with the reason once `give_up_after` has passed.
async fn resolve_import(
    w: &TargetWorker,
    job: &LeasedJob,
    import: &ImportRef,
) -> Result<Resolved, AttemptReport> {
    let describe = || {
        format!(
            "the import of Digistore24 order {} item {} ({})",
            import.ds24_order_id,
            import.ds24_item,
            import
                .payment_transaction
                .as_deref()
                .map_or("latest payment".to_owned(), |t| format!("payment {t}"))
        )
    };
    let unreadable = |e: StoreError| AttemptReport {
        outcome: Outcome::Retryable {
            reason: format!("cannot read the ledger: {e}"),
            retry_after: None,
        },
        endpoint: "ledger".into(),
        http_status: None,
        request: describe(),
        response: e.to_string(),
        maybe_applied: false,
    };
    let mut skipped = None;
    match import.payment_transaction.as_deref() {
        None => match w.store.ledger_import(&job.integration, import).await {
            Ok(Some(receipt)) if receipt.order_id.is_some() => {
                let how = format!(
                    "the latest import of Digistore24 order {} item {} in the ledger ({} {})",
                    import.ds24_order_id,
                    import.ds24_item,
                    w.connector.order_noun(),
                    receipt.order_id.as_deref().unwrap_or("")
                );
                return Ok((receipt, how));
            }
            Ok(_) => {}
            Err(e) => return Err(unreadable(e)),
        },
        Some(payment) => {
            let rows = w
                .store
                .ledger_imports(&job.integration, &import.ds24_order_id)
                .await
                .map_err(unreadable)?;
            let route = w
                .store
                .payment_route(
                    &job.integration,
                    &import.ds24_order_id,
                    &import.ds24_item,
                    payment,
                )
                .await
                .map_err(unreadable)?;
            let noun = w.connector.order_noun();
            match choose_import(&rows, import, payment, route.is_none(), noun) {
                Choice::Found(receipt, how) => return Ok((receipt, how)),
                Choice::Ambiguous(reason) => {
                    return Err(AttemptReport {
                        outcome: Outcome::Retryable {
                            reason: reason.clone(),
                            retry_after: None,
                        },
                        endpoint: "ledger".into(),
                        http_status: None,
                        request: describe(),
                        response: reason,
                        maybe_applied: false,
                    });
                }
                Choice::NotFound => {}
            }
            skipped = route.filter(|r| r.skipped).map(|r| r.reason);
        }
    }
    w.limiter.until_ready().await;
    let window = import.lookup_window(job.created_at, w.clock.now_ms());
    w.connector
        .find_import(import, window, skipped.as_deref(), describe())
        .await
}

/// Which ledger entry a refund or chargeback of `payment` belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Choice {
    /// This import, and how it was chosen.
    Found(Receipt, String),
    /// Several imports of the order item, none of them exactly this payment.
    Ambiguous(String),
    NotFound,
}

/// Chooses among the ledger's imports of the order (`rows`, newest first) the one that
/// `payment` reverses: of the order item, the newest whose `transaction_id` equals it, else
/// whose `parent_transaction_id` equals it; else, when `fallback` allows, the only import of
/// the order item. Pure.
fn choose_import(
    rows: &[LedgerRow],
    import: &ImportRef,
    payment: &str,
    fallback: bool,
    order_noun: &str,
) -> Choice {
    let bare = import_reference(&import.ds24_order_id, &import.ds24_item, None);
    let exact = import_reference(&import.ds24_order_id, &import.ds24_item, Some(payment));
    let of_item: Vec<&LedgerRow> = rows
        .iter()
        .filter(|r| r.target_order_id.as_deref().is_some_and(|o| !o.is_empty()))
        .filter(|r| {
            r.ds24_item.as_deref() == Some(import.ds24_item.as_str())
                || r.reference == bare
                || r.reference
                    .strip_prefix(&bare)
                    .is_some_and(|rest| rest.starts_with('-'))
        })
        .collect();
    let found = |row: &LedgerRow, how: String| {
        let how = format!(
            "{how} (job {}, {order_noun} {})",
            row.job_id,
            row.target_order_id.as_deref().unwrap_or("")
        );
        Choice::Found(
            Receipt {
                order_id: row.target_order_id.clone(),
                customer_id: row.target_customer_id.clone(),
                purchase_ids: row.purchase_ids.clone(),
                transaction_ids: row.transaction_ids.clone(),
            },
            how,
        )
    };
    if let Some(row) = of_item
        .iter()
        .find(|r| r.ds24_transaction_id.as_deref() == Some(payment) || r.reference == exact)
    {
        return found(row, format!("matched by transaction_id {payment}"));
    }
    if let Some(row) = of_item
        .iter()
        .find(|r| r.ds24_parent_transaction_id.as_deref() == Some(payment))
    {
        return found(row, format!("matched by parent_transaction_id {payment}"));
    }
    if !fallback {
        return Choice::NotFound;
    }
    match of_item.as_slice() {
        [] => Choice::NotFound,
        [only] => found(
            only,
            format!(
                "the only import of order {} item {} (no import has transaction_id or \
                 parent_transaction_id {payment})",
                import.ds24_order_id, import.ds24_item
            ),
        ),
        several => {
            let jobs: Vec<String> = several.iter().map(|r| r.job_id.to_string()).collect();
            Choice::Ambiguous(format!(
                "{} imports of Digistore24 order {} item {} (jobs {}) and none has \
                 transaction_id or parent_transaction_id {payment}; not guessing which one \
                 this reverses",
                several.len(),
                import.ds24_order_id,
                import.ds24_item,
                jobs.join(", ")
            ))
        }
    }
}

fn next_step(
    w: &TargetWorker,
    job: &LeasedJob,
    outcome: &Outcome,
    reconcile: bool,
    attempts: u32,
) -> Disposition {
    if let Outcome::TargetDown { .. } = outcome {
        return Disposition::Requeue {
            at: w.clock.now_ms(),
        };
    }
    let clock = JobClock {
        since: job.retry_base,
        now: w.clock.now_ms(),
        attempts,
    };
    schedule::next_step(&w.policy, outcome, reconcile, clock, rand::random::<f64>())
}

fn log_attempt(job: &LeasedJob, attempt: u32, report: &AttemptReport, next: &Disposition) {
    let (job_id, integration, endpoint) = (job.id, &job.integration, &report.endpoint);
    let reason = report.outcome.reason();
    match next {
        Disposition::Delivered(receipt) => tracing::info!(
            %job_id, %integration, attempt, %endpoint,
            order_id = receipt.order_id.as_deref().unwrap_or(""),
            "delivered"
        ),
        Disposition::Retry { at, reconcile } => tracing::warn!(
            %job_id, %integration, attempt, %endpoint, outcome = report.outcome.label(),
            retry_at_ms = at, reconcile, %reason,
            "attempt failed; will retry"
        ),
        Disposition::Requeue { .. } => tracing::warn!(
            %job_id, %integration, attempt, %endpoint, %reason,
            "the target refuses every request; the job waits without spending an attempt"
        ),
        Disposition::Dead => tracing::error!(
            %job_id, %integration, attempt, %endpoint, outcome = report.outcome.label(),
            %reason,
            "job dead-lettered; retry with `ipn-bridge queue retry {job_id}` once fixed"
        ),
    }
}

/// Records the attempt's end and the job's next step, with `alert` (a dead letter's) in the
/// same store call.
async fn finish(
    w: &TargetWorker,
    job: &LeasedJob,
    attempt_id: i64,
    report: AttemptReport,
    disposition: Disposition,
    alert: Option<Alert>,
    run: &Run,
) {
    w.metrics
        .delivery_attempt(&w.name, report.outcome.label(), run.started.elapsed());
    let record = alert.as_ref().and_then(|a| w.alerter.outbox_record(a));
    let recorded = record.is_some();
    let (done, written) = tokio::sync::oneshot::channel();
    let item = FinishedAttempt {
        job: job.id,
        attempt_id,
        report,
        disposition,
        alert: record,
        now: w.clock.now_ms(),
    };
    // The recorder lives as long as any worker of the generation: the send fails only if
    // it ended early, and then the job is recovered on the next start like any job whose
    // result was not written.
    let sent = w.records.send(recorder::Record { item, done }).is_ok();
    run.release(w);
    let finished = sent && written.await.unwrap_or(false);
    if let (true, Some(alert)) = (finished, alert) {
        w.alerter.committed(&alert, recorded);
    }
}

/// Runs a store write until it succeeds; gives up only when the process stops (the job is
/// then recovered on the next start). `None` when it gave up.
async fn persist<T, F, Fut>(w: &TargetWorker, op: F) -> Option<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    loop {
        match op().await {
            Ok(v) => return Some(v),
            Err(e) => {
                // Logged (once, then summarised) by the store itself.
                tracing::debug!(target = %w.name, error = %e, "could not record a delivery attempt; retrying");
                tokio::select! {
                    _ = w.shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(Duration::from_millis(STORE_RETRY_MS)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_look_ahead_grows_while_idle_slots_wait_for_each_lease_of_a_backlog() {
        // max_in_flight 8, an instant target: every slot idle when each lease returns.
        let mut ahead = 8;
        let mut seen = Vec::new();
        for round in 0..8 {
            ahead = next_lookahead(ahead, 8, round > 0, true, 8);
            seen.push(ahead);
        }
        assert_eq!(seen, [8, 16, 32, 64, 128, 256, 256, 256]);
        // Bigger than the cap: the window itself.
        assert_eq!(next_lookahead(1_000, 1_000, true, true, 1_000), 1_000);
    }

    #[test]
    fn a_busy_or_rate_limited_target_keeps_one_window_of_look_ahead() {
        // No slot free when the lease returns: the target is the limit; back towards one
        // window.
        assert_eq!(next_lookahead(256, 8, true, true, 0), 128);
        assert_eq!(next_lookahead(8, 8, true, true, 0), 8);
        // Most slots busy: kept; half of them idle: grown.
        assert_eq!(next_lookahead(64, 8, true, true, 3), 64);
        assert_eq!(next_lookahead(64, 8, true, true, 4), 128);
        // The first round of a drain (all slots idle because nothing ran): not grown.
        assert_eq!(next_lookahead(8, 8, false, true, 8), 8);
        // The due jobs ran out: one window again.
        assert_eq!(next_lookahead(256, 8, true, false, 8), 8);
    }

    fn row(job: i64, item: &str, txn: Option<&str>, parent: Option<&str>) -> LedgerRow {
        LedgerRow {
            job_id: job,
            integration: "main".into(),
            ds24_order_id: "O1".into(),
            ds24_item: Some(item.into()),
            ds24_transaction_id: txn.map(str::to_owned),
            reference: import_reference("O1", item, txn),
            target_order_id: Some(format!("K{job}")),
            target_customer_id: None,
            purchase_ids: Vec::new(),
            transaction_ids: Vec::new(),
            created_at: 0,
            ds24_parent_transaction_id: parent.map(str::to_owned),
        }
    }

    fn import(item: &str, payment: &str) -> ImportRef {
        ImportRef {
            ds24_order_id: "O1".into(),
            ds24_item: item.into(),
            payment_transaction: Some(payment.into()),
            reference_field: "custom1".into(),
            email: "max@example.com".into(),
            campaign_id: 12,
            since: "2026-03-02".into(),
        }
    }

    /// `(Konnektive order, how)` of a found import, or `("ambiguous"|"none", text)`.
    fn chosen(rows: &[LedgerRow], item: &str, payment: &str, fallback: bool) -> (String, String) {
        match choose_import(
            rows,
            &import(item, payment),
            payment,
            fallback,
            "Konnektive order",
        ) {
            Choice::Found(receipt, how) => (receipt.order_id.unwrap_or_default(), how),
            Choice::Ambiguous(why) => ("ambiguous".into(), why),
            Choice::NotFound => ("none".into(), String::new()),
        }
    }

    #[test]
    fn a_reversal_finds_its_import_by_either_id_then_as_the_only_one() {
        // Newest first, as the store returns them.
        let two_payments = [
            row(3, "1", Some("4000108"), Some("4000107")),
            row(1, "1", Some("3999938"), Some("3999937")),
        ];
        /// `(name, ledger rows, item, payment, fallback, chosen order, how)`.
        type Case = (
            &'static str,
            Vec<LedgerRow>,
            &'static str,
            &'static str,
            bool,
            &'static str,
            &'static str,
        );
        let cases: Vec<Case> = vec![
            (
                "by transaction_id",
                two_payments.to_vec(),
                "1",
                "3999938",
                true,
                "K1",
                "matched by transaction_id 3999938 (job 1, Konnektive order K1)",
            ),
            (
                "by parent_transaction_id",
                two_payments.to_vec(),
                "1",
                "4000107",
                true,
                "K3",
                "matched by parent_transaction_id 4000107",
            ),
            (
                "transaction_id wins over another import's parent",
                vec![
                    row(3, "1", Some("7"), Some("5")),
                    row(1, "1", Some("5"), Some("4")),
                ],
                "1",
                "5",
                true,
                "K1",
                "matched by transaction_id 5",
            ),
            (
                "another item's import with the same payment is not it",
                vec![row(2, "2", Some("3999938"), Some("3999937"))],
                "1",
                "3999938",
                true,
                "none",
                "",
            ),
            (
                "an add-on and its main item share the payment",
                vec![
                    row(2, "2", Some("51840233"), Some("51840232")),
                    row(1, "1", Some("51840233"), Some("51840232")),
                ],
                "2",
                "51840233",
                true,
                "K2",
                "matched by transaction_id",
            ),
            (
                "the only import of the item",
                vec![row(1, "1", Some("100"), None)],
                "1",
                "999",
                true,
                "K1",
                "the only import of order O1 item 1",
            ),
            (
                "no fallback when the store knows the payment",
                vec![row(1, "1", Some("100"), None)],
                "1",
                "999",
                false,
                "none",
                "",
            ),
            (
                "several and no exact match: no guess",
                two_payments.to_vec(),
                "1",
                "999",
                true,
                "ambiguous",
                "2 imports of Digistore24 order O1 item 1 (jobs 3, 1) and none has \
                 transaction_id or parent_transaction_id 999; not guessing",
            ),
            ("nothing", Vec::new(), "1", "999", true, "none", ""),
        ];
        for (name, rows, item, payment, fallback, order, how) in cases {
            let (got_order, got_how) = chosen(&rows, item, payment, fallback);
            assert_eq!(got_order, order, "{name}: {got_how}");
            assert!(got_how.contains(how), "{name}: {got_how}");
        }
    }

    #[test]
    fn an_import_without_a_konnektive_order_is_never_chosen() {
        let mut r = row(1, "1", Some("100"), None);
        r.target_order_id = None;
        assert_eq!(chosen(&[r], "1", "100", true).0, "none");
    }
}
