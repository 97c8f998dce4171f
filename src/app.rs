//! Wiring of the daemon: open the store, recover interrupted work, start the dispatcher and
//! the HTTP server, and shut both down in order. No logic of its own.
//!
//! [`start`] takes an already-bound listener and a clock, so tests run the real daemon
//! in-process on port 0; [`run`] is what `ipn-bridge run` calls: bind, start, tell systemd
//! we are ready, wait for SIGTERM or SIGINT, drain.
//!
//! Shutdown order: stop accepting HTTP (open requests finish, so an IPN being stored is
//! either answered `OK` after its commit or not at all), stop leasing jobs, give in-flight
//! calls up to the longest target timeout to finish, then close the store. A call still
//! running after that is abandoned: its job stays `in_flight` and is reconciled on the next
//! start, so nothing is sent twice.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::delivery::{self, Heartbeat, TargetBoard, Wake};
use crate::server::{self, AppState};
use crate::store::Store;

/// Extra time beyond the longest request timeout that shutdown waits for in-flight calls.
const DRAIN_MARGIN_SECS: u64 = 2;

/// A started daemon.
pub struct Running {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    done: JoinHandle<()>,
}

impl Running {
    /// Starts the shutdown and waits until it is complete.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.wait().await;
    }

    /// Waits until the daemon has stopped (after `shutdown` was cancelled).
    pub async fn wait(self) {
        let _ = self.done.await;
    }
}

/// Starts the daemon on `listener`.
pub async fn start(
    config: Config,
    listener: TcpListener,
    clock: SharedClock,
) -> anyhow::Result<Running> {
    let config = Arc::new(config);
    let store = Store::open(&config.store.path)
        .with_context(|| format!("cannot open the store {}", config.store.path.display()))?;
    let now = clock.now_ms();
    let first_retry_ms = i64::try_from(config.delivery.retry_initial.as_millis()).unwrap_or(0);
    let recovered = store
        .recover_interrupted(now, now.saturating_add(first_retry_ms))
        .await
        .context("cannot recover interrupted jobs")?;
    if recovered > 0 {
        tracing::warn!(
            jobs = recovered,
            "jobs were interrupted by the last stop; imports among them are reconciled before any resend"
        );
    }
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let wake = Wake::default();
    let heartbeat = Heartbeat::default();
    let board = TargetBoard::default();
    let handles = delivery::Handles {
        store: store.clone(),
        clock: clock.clone(),
        wake: wake.clone(),
        heartbeat: heartbeat.clone(),
        board: board.clone(),
        shutdown: shutdown.clone(),
    };
    delivery::spawn(&config, &handles, &tracker)?;
    let addr = listener.local_addr()?;
    let state = AppState {
        config: config.clone(),
        store: store.clone(),
        clock,
        wake,
        heartbeat,
        targets: board,
    };
    let server_task = tokio::spawn(server::serve(
        listener,
        server::router(state),
        shutdown.clone(),
    ));
    let drain = config
        .targets
        .values()
        .map(|t| t.delivery.timeout)
        .max()
        .unwrap_or_default()
        + Duration::from_secs(DRAIN_MARGIN_SECS);
    let done = tokio::spawn(async move {
        let _ = server_task.await;
        tracker.close();
        if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
            tracing::warn!(
                "in-flight deliveries did not finish in time; they are reconciled at the next start"
            );
        }
        store.close().await;
        tracing::info!("stopped");
    });
    tracing::info!(%addr, "listening");
    Ok(Running {
        addr,
        shutdown,
        done,
    })
}

/// Loads the configuration or fails with every error listed; warnings are logged.
pub fn load_config(path: &Path) -> anyhow::Result<Config> {
    let loaded = crate::config::load(path).map_err(|errors| {
        anyhow::anyhow!("{errors}")
            .context(format!("the configuration {} is invalid", path.display()))
    })?;
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    Ok(loaded.config)
}

/// `ipn-bridge run`: the daemon until SIGTERM / SIGINT.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = load_config(config_path)?;
    let listener = TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let running = start(config, listener, Arc::new(SystemClock)).await?;
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
    wait_for_signal().await?;
    tracing::info!("shutting down");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    running.stop().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
