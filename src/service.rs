//! Life under systemd: the watchdog keep-alive.
//!
//! The unit (`systemd/ipn-bridge.service`) sets `WatchdogSec=`; systemd then passes
//! `WATCHDOG_USEC` (and `WATCHDOG_PID`) and kills and restarts the service when no
//! `WATCHDOG=1` arrives within that time. [`spawn_watchdog`] sends one at half the interval,
//! as sd_watchdog_enabled(3) recommends, but only while the caller's `alive()` check holds:
//! a daemon whose dispatcher is stuck must *not* be kept alive by a timer that still runs.
//! A missed ping is not made up for later; the next one comes a full period after the
//! skipped one, so a wedged daemon is reliably restarted.
//!
//! Decisions:
//! * The timing ([`ping_interval`]) is a pure function and the loop ([`watchdog_loop`]) takes
//!   the notifier as a parameter, so both are tested with paused Tokio time and without a
//!   systemd socket.
//! * Without `WATCHDOG_USEC` (not under systemd, or `WatchdogSec=` unset), nothing is
//!   spawned. The variables are left in the environment: unsetting them is `unsafe` once
//!   threads exist, and the daemon starts no child processes that could inherit them.
//! * A failed notification is logged at WARN and the loop goes on: systemd will act if
//!   pings really stop arriving.
//!
//! This module must not know about the store, the server or the dispatcher; what "alive"
//! means is decided by `app`, which wires it.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// Shortest interval between two pings, whatever `WatchdogSec=` says (guards against a
/// busy loop on a nonsensically small setting).
pub const MIN_PING_INTERVAL_MS: u64 = 10;

/// Starts the watchdog keep-alive when systemd asked for one (`WATCHDOG_USEC` set for this
/// process), else returns `None`. Pings `WATCHDOG=1` every half watchdog interval while
/// `alive()` returns true, and stops when `shutdown` is cancelled. Must be called from
/// within a Tokio runtime.
pub fn spawn_watchdog(
    shutdown: CancellationToken,
    alive: impl Fn() -> bool + Send + 'static,
) -> Option<JoinHandle<()>> {
    let timeout = sd_notify::watchdog_enabled()?;
    let Some(interval) = ping_interval(timeout) else {
        tracing::warn!("WATCHDOG_USEC is 0; the systemd watchdog keep-alive is not started");
        return None;
    };
    tracing::info!(
        watchdog_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        ping_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
        "systemd watchdog enabled"
    );
    Some(tokio::spawn(watchdog_loop(
        interval,
        shutdown,
        alive,
        notify_systemd,
    )))
}

/// How often to ping for a watchdog `timeout`: half of it, at least
/// [`MIN_PING_INTERVAL_MS`]; `None` for a zero timeout (watchdog effectively off).
pub fn ping_interval(timeout: Duration) -> Option<Duration> {
    if timeout.is_zero() {
        return None;
    }
    Some((timeout / 2).max(Duration::from_millis(MIN_PING_INTERVAL_MS)))
}

/// The keep-alive loop: at once and then every `interval`, calls `ping` if `alive()`;
/// returns when `shutdown` is cancelled.
pub async fn watchdog_loop<A, P>(
    interval: Duration,
    shutdown: CancellationToken,
    alive: A,
    mut ping: P,
) where
    A: Fn() -> bool,
    P: FnMut() -> std::io::Result<()>,
{
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut was_alive = true;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now_alive = alive();
        if now_alive {
            if !was_alive {
                tracing::info!("liveness check passes again; watchdog pings resumed");
            }
            if let Err(e) = ping() {
                tracing::warn!(error = %e, "could not send WATCHDOG=1 to systemd");
            }
        } else if was_alive {
            tracing::error!(
                "liveness check failed; watchdog pings withheld, systemd will restart the service if this persists"
            );
        }
        was_alive = now_alive;
    }
}

fn notify_systemd() -> std::io::Result<()> {
    sd_notify::notify(&[sd_notify::NotifyState::Watchdog])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    #[test]
    fn ping_interval_is_half_the_watchdog_timeout() {
        let cases = [
            (Duration::from_secs(30), Some(Duration::from_secs(15))),
            (Duration::from_secs(1), Some(Duration::from_millis(500))),
            (Duration::from_micros(3), Some(Duration::from_millis(10))),
            (Duration::from_millis(15), Some(Duration::from_millis(10))),
            (Duration::ZERO, None),
        ];
        for (timeout, expected) in cases {
            assert_eq!(ping_interval(timeout), expected, "timeout {timeout:?}");
        }
    }

    /// Counts pings; `alive` is switched from the test.
    struct Probe {
        pings: Arc<AtomicUsize>,
        alive: Arc<AtomicBool>,
    }

    fn start(interval: Duration) -> (Probe, CancellationToken, JoinHandle<()>) {
        let pings = Arc::new(AtomicUsize::new(0));
        let alive = Arc::new(AtomicBool::new(true));
        let shutdown = CancellationToken::new();
        let (p, a) = (pings.clone(), alive.clone());
        let task = tokio::spawn(watchdog_loop(
            interval,
            shutdown.clone(),
            move || a.load(Ordering::SeqCst),
            move || {
                p.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
        ));
        (Probe { pings, alive }, shutdown, task)
    }

    async fn advance(d: Duration) {
        tokio::time::advance(d).await;
        // Let the loop run after the clock moved.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pings_at_once_and_then_every_interval() {
        let (probe, shutdown, task) = start(Duration::from_secs(15));
        advance(Duration::ZERO).await;
        assert_eq!(probe.pings.load(Ordering::SeqCst), 1);
        advance(Duration::from_secs(14)).await;
        assert_eq!(probe.pings.load(Ordering::SeqCst), 1);
        advance(Duration::from_secs(1)).await;
        assert_eq!(probe.pings.load(Ordering::SeqCst), 2);
        for _ in 0..3 {
            advance(Duration::from_secs(15)).await;
        }
        assert_eq!(probe.pings.load(Ordering::SeqCst), 5);
        // A stalled runtime (one long jump) does not produce a burst of catch-up pings.
        advance(Duration::from_secs(100)).await;
        assert_eq!(probe.pings.load(Ordering::SeqCst), 6);
        shutdown.cancel();
        task.await.expect("loop ends");
    }

    #[tokio::test(start_paused = true)]
    async fn withholds_pings_while_not_alive_and_resumes_after() {
        let (probe, shutdown, task) = start(Duration::from_secs(10));
        advance(Duration::ZERO).await;
        assert_eq!(probe.pings.load(Ordering::SeqCst), 1);
        probe.alive.store(false, Ordering::SeqCst);
        for _ in 0..3 {
            advance(Duration::from_secs(10)).await;
        }
        assert_eq!(
            probe.pings.load(Ordering::SeqCst),
            1,
            "no ping while the check fails"
        );
        probe.alive.store(true, Ordering::SeqCst);
        advance(Duration::from_secs(10)).await;
        assert_eq!(probe.pings.load(Ordering::SeqCst), 2);
        shutdown.cancel();
        task.await.expect("loop ends");
    }

    #[tokio::test(start_paused = true)]
    async fn stops_on_shutdown() {
        let (probe, shutdown, task) = start(Duration::from_secs(10));
        advance(Duration::ZERO).await;
        shutdown.cancel();
        task.await.expect("loop ends");
        let before = probe.pings.load(Ordering::SeqCst);
        advance(Duration::from_secs(60)).await;
        assert_eq!(probe.pings.load(Ordering::SeqCst), before);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_notifier_does_not_stop_the_loop() {
        let calls = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let c = calls.clone();
        let task = tokio::spawn(watchdog_loop(
            Duration::from_secs(1),
            shutdown.clone(),
            || true,
            move || {
                c.fetch_add(1, Ordering::SeqCst);
                Err(std::io::Error::other("no socket"))
            },
        ));
        advance(Duration::ZERO).await;
        for _ in 0..3 {
            advance(Duration::from_secs(1)).await;
        }
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        shutdown.cancel();
        task.await.expect("loop ends");
    }

    #[tokio::test]
    async fn not_spawned_without_watchdog_usec() {
        // The test runner is not started by systemd with WatchdogSec=.
        if std::env::var_os("WATCHDOG_USEC").is_none() {
            assert!(spawn_watchdog(CancellationToken::new(), || true).is_none());
        }
    }
}
