//! Wiring of the daemon: open the store, recover interrupted work, start the dispatcher and
//! the HTTP server, and shut both down in order. No logic of its own.
//!
//! [`start`] takes an already-bound listener and a clock, so tests run the real daemon
//! in-process on port 0; [`run`] is what `ipn-bridge run` calls: open the store, bind,
//! start, tell systemd we are ready (and keep its watchdog fed while the dispatcher goes
//! round), wait for SIGTERM or SIGINT, drain.
//!
//! The store is opened first ([`open_store`]): it takes the database's lock, so a second
//! daemon on the same database stops there with the first one's PID instead of failing on
//! the (usually also taken) listening address or, with another address, running beside the
//! first and sending its in-flight jobs again. Its start checks (an empty, damaged or
//! read-only file) also run before anything listens.
//!
//! Reload (SIGHUP, [`Running::reload`]): the new file is validated first; an invalid one is
//! refused with every error logged, and nothing changes. A valid one is put in force for the
//! HTTP server (each request routes with one snapshot) and for the dispatcher, which runs in
//! *generations*: the new generation's loops start with the new targets and rules, the old
//! ones stop leasing, and calls already in flight finish and are recorded as usual. The
//! listening address, the database and `[alerts]` change only with a restart (a reload
//! that changes them says so). Rate-limiter buckets start full again after a reload.
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

use crate::alert::Alerter;
use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::config::LiveConfig;
use crate::delivery::{self, Heartbeat, TargetBoard, Wake};
use crate::metrics::Metrics;
use crate::server::{self, AppState};
use crate::store::{EmptyFile, Store};

/// The watchdog stops pinging when the dispatcher has not gone round for this long.
const WATCHDOG_STALE_MS: i64 = 20_000;

/// Extra time beyond the longest request timeout that shutdown waits for in-flight calls.
const DRAIN_MARGIN_SECS: u64 = 2;

/// A started daemon.
pub struct Running {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    reloader: Reloader,
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

    /// Reloads the configuration from `path` (what SIGHUP does): an invalid file is refused
    /// with its errors logged and returned, and the running configuration is kept.
    pub fn reload(&self, path: &Path) -> anyhow::Result<()> {
        self.reloader.reload(path)
    }
}

/// What a reload needs: the live configuration, the dispatcher's current generation and
/// the handles a new generation is built from.
struct Reloader {
    live: LiveConfig,
    handles: delivery::Handles,
    tracker: TaskTracker,
    generation: std::sync::Mutex<CancellationToken>,
}

impl Reloader {
    fn reload(&self, path: &Path) -> anyhow::Result<()> {
        let new = match crate::config::load(path) {
            Ok(loaded) => {
                for warning in &loaded.warnings {
                    tracing::warn!("{warning}");
                }
                loaded.config
            }
            Err(errors) => {
                for e in &errors.errors {
                    tracing::error!("{e}");
                }
                tracing::error!(
                    errors = errors.errors.len(),
                    "reload refused; the running configuration is kept"
                );
                anyhow::bail!("{errors}");
            }
        };
        let old = self.live.current();
        let new = Arc::new(keep_restart_only_settings(&old, new));
        let next = self.handles.shutdown.child_token();
        delivery::spawn(&new, &self.handles, &next, &self.tracker)?;
        if let Ok(mut generation) = self.generation.lock() {
            std::mem::replace(&mut *generation, next).cancel();
        }
        self.live.replace(new);
        tracing::info!(path = %path.display(), "configuration reloaded");
        Ok(())
    }
}

/// Settings a running process cannot change (the listening socket, the database, the alert
/// sender) keep their running values; a reload that changes them says so.
fn keep_restart_only_settings(old: &Config, mut new: Config) -> Config {
    if new.server.listen != old.server.listen {
        tracing::warn!(
            running = %old.server.listen, configured = %new.server.listen,
            "server.listen changes only with a restart"
        );
        new.server.listen = old.server.listen;
    }
    if new.store.path != old.store.path {
        tracing::warn!(
            running = %old.store.path.display(), configured = %new.store.path.display(),
            "store.path changes only with a restart"
        );
        new.store.path = old.store.path.clone();
    }
    if format!("{:?}", new.alerts) != format!("{:?}", old.alerts) {
        tracing::warn!("[alerts] changes only with a restart");
    }
    new
}

/// Opens the daemon's store: takes the database's lock (a second daemon stops here, naming
/// the first one's PID) and refuses an empty, damaged or read-only file (see
/// [`Store::open_exclusive`]). May take up to the `quick_check` budget.
pub fn open_store(config: &Config, empty: EmptyFile) -> anyhow::Result<Store> {
    Store::open_exclusive(&config.store.path, empty)
        .with_context(|| format!("cannot open the store {}", config.store.path.display()))
}

/// Starts the daemon on `listener`.
pub async fn start(
    config: Config,
    listener: TcpListener,
    clock: SharedClock,
) -> anyhow::Result<Running> {
    let store = open_store(&config, EmptyFile::Refuse)?;
    start_with_store(config, store, listener, clock).await
}

/// Starts the daemon on `listener` with a store opened by [`open_store`].
pub async fn start_with_store(
    config: Config,
    store: Store,
    listener: TcpListener,
    clock: SharedClock,
) -> anyhow::Result<Running> {
    let config = Arc::new(config);
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
    let metrics = Metrics::new();
    let alerter = Alerter::new(config.alerts.clone(), store.clone(), clock.clone());
    tracker.spawn(alerter.clone().run(shutdown.clone()));
    let handles = delivery::Handles {
        store: store.clone(),
        alerter: alerter.clone(),
        metrics: metrics.clone(),
        clock: clock.clone(),
        wake: Wake::default(),
        heartbeat: Heartbeat::default(),
        board: TargetBoard::default(),
        shutdown: shutdown.clone(),
    };
    let generation = shutdown.child_token();
    delivery::spawn(&config, &handles, &generation, &tracker)?;
    let live = LiveConfig::new(config.clone());
    let addr = listener.local_addr()?;
    let state = AppState {
        config: live.clone(),
        store: store.clone(),
        clock,
        wake: handles.wake.clone(),
        heartbeat: handles.heartbeat.clone(),
        targets: handles.board.clone(),
        alerter,
        metrics,
    };
    let server_task = tokio::spawn(server::serve(
        listener,
        server::router(state),
        shutdown.clone(),
    ));
    let drain_live = live.clone();
    let drain_tracker = tracker.clone();
    let done = tokio::spawn(async move {
        let _ = server_task.await;
        let drain = drain_live
            .current()
            .targets
            .values()
            .map(|t| t.delivery.timeout)
            .max()
            .unwrap_or_default()
            + Duration::from_secs(DRAIN_MARGIN_SECS);
        drain_tracker.close();
        if tokio::time::timeout(drain, drain_tracker.wait())
            .await
            .is_err()
        {
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
        reloader: Reloader {
            live,
            handles,
            tracker,
            generation: std::sync::Mutex::new(generation),
        },
        done,
    })
}

/// Loads the configuration or fails with every error listed; warnings are logged.
pub fn load_config(path: &Path) -> anyhow::Result<Config> {
    logged(path, crate::config::load(path))
}

/// [`load_config`] without reading secrets (see [`crate::config::load_without_secrets`]).
pub fn load_config_without_secrets(path: &Path) -> anyhow::Result<Config> {
    logged(path, crate::config::load_without_secrets(path))
}

fn logged(
    path: &Path,
    result: Result<crate::config::Loaded, crate::config::ConfigErrors>,
) -> anyhow::Result<Config> {
    let loaded = result.map_err(|errors| {
        anyhow::anyhow!("{errors}")
            .context(format!("the configuration {} is invalid", path.display()))
    })?;
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    Ok(loaded.config)
}

/// `ipn-bridge run`: the daemon until SIGTERM / SIGINT; SIGHUP reloads the configuration.
/// `empty` says what to do with a zero-length database file (`run --init`).
pub async fn run(config_path: &Path, empty: EmptyFile) -> anyhow::Result<()> {
    // Handlers first: a signal that arrives during start-up (a reload right after the socket
    // listens, say) must not hit the default action, which for SIGHUP is to terminate.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let config = load_config(config_path)?;
    // The store first: a second daemon on the same database must say so, not fail on the
    // (usually also taken) listening address.
    let store = open_store(&config, empty)?;
    let listener = TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let clock: SharedClock = Arc::new(SystemClock);
    let running = start_with_store(config, store, listener, clock.clone()).await?;
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
    let heartbeat = running.reloader.handles.heartbeat.clone();
    let targets = !running.reloader.live.current().targets.is_empty();
    crate::service::spawn_watchdog(running.shutdown.clone(), move || {
        !targets || clock.now_ms() - heartbeat.last_beat_ms() < WATCHDOG_STALE_MS
    });
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
                tracing::info!(path = %config_path.display(), "SIGHUP: reloading the configuration");
                // A refused reload is logged by `reload`; the daemon keeps running.
                let _ = running.reload(config_path);
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            }
        }
    }
    tracing::info!("shutting down");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    running.stop().await;
    Ok(())
}
