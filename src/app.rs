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
//! listening address, `max_connections`, the database and `[alerts]` change only with a
//! restart (a reload that changes them says so, naming each changed `[alerts]` key, the
//! password included, without its value). Rate-limiter buckets start full again after a
//! reload.
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
use crate::config::LiveConfig;
use crate::config::{Alerts, Config};
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
        let h = &self.handles;
        crate::ds24::audit::spawn(&new, &h.store, &h.clock, &next, &self.tracker);
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
    if !same_secret(old.store.url.as_ref(), new.store.url.as_ref()) {
        tracing::warn!("store.url changes only with a restart");
    }
    new.store.url = old.store.url.clone();
    if new.store.ca_file != old.store.ca_file {
        tracing::warn!("store.ca_file changes only with a restart");
        new.store.ca_file = old.store.ca_file.clone();
    }
    if new.server.max_connections != old.server.max_connections {
        tracing::warn!(
            running = old.server.max_connections,
            configured = new.server.max_connections,
            "server.max_connections changes only with a restart"
        );
        new.server.max_connections = old.server.max_connections;
    }
    for change in alerts_changes(old.alerts.as_ref(), new.alerts.as_ref()) {
        tracing::warn!("{change}");
    }
    new.alerts = old.alerts.clone();
    new
}

/// Opens the daemon's store. SQLite: takes the database's lock (a second daemon stops here,
/// naming the first one's PID) and refuses an empty, damaged or read-only file (see
/// [`Store::open_exclusive`]); may take up to the `quick_check` budget. PostgreSQL
/// (`[store] url`): connects and migrates (an instance starting during another's migration
/// waits for it); several daemons share the database.
pub async fn open_store(config: &Config, empty: EmptyFile) -> anyhow::Result<Store> {
    use secrecy::ExposeSecret;
    match &config.store.url {
        Some(url) => {
            Store::connect_postgres_with_ca(url.expose_secret(), config.store.ca_file.as_deref())
                .await
                .context("cannot open the PostgreSQL store ([store] url)")
        }
        None => Store::open_exclusive(&config.store.path, empty)
            .with_context(|| format!("cannot open the store {}", config.store.path.display())),
    }
}

/// Whether two optional secrets are equal (compared in constant time; the values go
/// nowhere else).
fn same_secret(a: Option<&secrecy::SecretString>, b: Option<&secrecy::SecretString>) -> bool {
    use secrecy::ExposeSecret;
    use subtle::ConstantTimeEq;
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => bool::from(
            a.expose_secret()
                .as_bytes()
                .ct_eq(b.expose_secret().as_bytes()),
        ),
        _ => false,
    }
}

/// What differs in `[alerts]` between the running and the reloaded file, one message per key
/// (`[alerts] smtp_password changed; restart to apply`), naming keys, never values.
///
/// The comparison is on the resolved values: `Alerts`' `Debug` shows every password as the
/// same `[REDACTED]`, so comparing that form missed a changed password. The password is
/// exposed here only to compare it (in constant time), and goes nowhere else.
fn alerts_changes(old: Option<&Alerts>, new: Option<&Alerts>) -> Vec<String> {
    let (old, new) = match (old, new) {
        (None, None) => return Vec::new(),
        (None, Some(_)) => return vec!["[alerts] added; restart to apply".to_owned()],
        (Some(_), None) => return vec!["[alerts] removed; restart to apply".to_owned()],
        (Some(old), Some(new)) => (old, new),
    };
    let same_password = same_secret(old.smtp_password.as_ref(), new.smtp_password.as_ref());
    [
        ("smtp_url", old.smtp_url == new.smtp_url),
        ("smtp_username", old.smtp_username == new.smtp_username),
        ("smtp_password", same_password),
        ("from", old.from == new.from),
        ("to", old.to == new.to),
        ("digest_window", old.digest_window == new.digest_window),
    ]
    .into_iter()
    .filter(|(_, same)| !same)
    .map(|(key, _)| format!("[alerts] {key} changed; restart to apply"))
    .collect()
}

/// Starts the daemon on `listener`.
pub async fn start(
    config: Config,
    listener: TcpListener,
    clock: SharedClock,
) -> anyhow::Result<Running> {
    let store = open_store(&config, EmptyFile::Refuse).await?;
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
    // Shared (PostgreSQL): each target's jobs are recovered when this instance takes the
    // target over, never all at start (another instance may be running them).
    let recovered = if store.shared() {
        0
    } else {
        store
            .recover_interrupted(now, now.saturating_add(first_retry_ms))
            .await
            .context("cannot recover interrupted jobs")?
    };
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
    crate::ds24::audit::spawn(&config, &store, &handles.clock, &generation, &tracker);
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
        server::Limits {
            max_connections: config.server.max_connections,
        },
        handles.metrics.clone(),
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
    let store = open_store(&config, empty).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Mutex;

    const BASE: &str = r#"
[source.ds24]
passphrase = "p"

[target.k]
kind = "konnektive"
login_id = "u"
password = "pw"

[integration.main]
campaign_id = 1

[integration.main.product_map]
"*" = 5

[integration.main.on]
payment = "import_order"

[alerts]
smtp_url = "smtp://127.0.0.1:2525"
smtp_username = "alerts@example.com"
from = "a@example.com"
to = ["ops@example.com"]
"#;

    fn config(extra: &str) -> Config {
        let text = format!("{BASE}{extra}");
        match crate::config::parse(
            &text,
            Path::new("connectors.toml"),
            &crate::config::SystemEnvironment,
        ) {
            Ok(loaded) => loaded.config,
            Err(e) => panic!("{e}"),
        }
    }

    /// A log sink for one test (the subscriber is the thread's default only inside `f`).
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logs_of<T>(f: impl FnOnce() -> T) -> (T, String) {
        let sink = Captured::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let value = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        (value, text)
    }

    #[test]
    fn a_changed_smtp_password_alone_is_reported_by_name_and_never_printed() {
        let old = config("smtp_password = \"old-Smtp-Secret-1\"\n");
        let new = config("smtp_password = \"new-Smtp-Secret-2\"\n");
        let (kept, logs) = logs_of(|| keep_restart_only_settings(&old, new));
        assert!(
            logs.contains("[alerts] smtp_password changed; restart to apply"),
            "{logs}"
        );
        assert_eq!(logs.lines().count(), 1, "{logs}");
        assert!(
            !logs.contains("Smtp-Secret"),
            "a password value was logged:\n{logs}"
        );
        // The running alerter keeps the running password, and the live configuration says so.
        let kept = kept.alerts.unwrap().smtp_password.unwrap();
        assert_eq!(
            secrecy::ExposeSecret::expose_secret(&kept),
            "old-Smtp-Secret-1"
        );
    }

    #[test]
    fn alerts_changes_names_each_changed_key_and_nothing_when_equal() {
        let old = config("smtp_password = \"s1\"\n");
        assert!(alerts_changes(old.alerts.as_ref(), old.alerts.as_ref()).is_empty());
        let same = config("smtp_password = \"s1\"\n");
        assert!(alerts_changes(old.alerts.as_ref(), same.alerts.as_ref()).is_empty());

        let text = BASE.replace("127.0.0.1:2525", "127.0.0.1:2526").replace(
            "to = [\"ops@example.com\"]",
            "to = [\"ops@example.com\", \"b@example.com\"]\ndigest_window = \"1m\"",
        );
        let other = match crate::config::parse(
            &format!("{text}smtp_password = \"s2\"\n"),
            Path::new("connectors.toml"),
            &crate::config::SystemEnvironment,
        ) {
            Ok(loaded) => loaded.config,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            alerts_changes(old.alerts.as_ref(), other.alerts.as_ref()),
            [
                "[alerts] smtp_url changed; restart to apply",
                "[alerts] smtp_password changed; restart to apply",
                "[alerts] to changed; restart to apply",
                "[alerts] digest_window changed; restart to apply",
            ]
        );
        assert_eq!(
            alerts_changes(None, old.alerts.as_ref()),
            ["[alerts] added; restart to apply"]
        );
        assert_eq!(
            alerts_changes(old.alerts.as_ref(), None),
            ["[alerts] removed; restart to apply"]
        );
    }

    #[test]
    fn max_connections_keeps_its_running_value_on_reload() {
        let old = config("smtp_password = \"s1\"\n");
        let mut new = old.clone();
        new.server.max_connections = 7;
        let (kept, logs) = logs_of(|| keep_restart_only_settings(&old, new));
        assert_eq!(kept.server.max_connections, 512);
        assert!(
            logs.contains("server.max_connections changes only with a restart"),
            "{logs}"
        );
    }

    #[test]
    fn store_ca_file_keeps_its_running_value_on_reload() {
        let mut old = config("smtp_password = \"s1\"\n");
        old.store.ca_file = Some("/etc/ipn-bridge/db-ca.pem".into());
        let mut new = old.clone();
        new.store.ca_file = Some("/etc/ipn-bridge/other-ca.pem".into());
        let (kept, logs) = logs_of(|| keep_restart_only_settings(&old, new));
        assert_eq!(kept.store.ca_file, old.store.ca_file);
        assert!(
            logs.contains("store.ca_file changes only with a restart"),
            "{logs}"
        );
    }
}
