//! The accept loop: admits client connections up to `[server] max_connections`, bounds what
//! each may make the daemon buffer, and survives running out of file descriptors.
//!
//! Decisions:
//! - **Connection cap.** Each admitted connection holds a semaphore permit until it closes.
//!   Beyond the cap a new connection is *accepted, answered `503` and closed* at once, not
//!   left in the kernel's backlog: a client (Digistore24, or the TLS proxy in front) gets a
//!   reason it can log ("Message by server"), Digistore24 retries a non-`OK` answer later,
//!   and the refusal costs one non-blocking write and no task, so a flood of connections
//!   cannot pile up work behind the cap. The `503` is written before the request is read; a
//!   client that has already sent its request may see a reset instead (the kernel resets a
//!   connection closed with unread data), which it retries the same way. Refusals are
//!   counted in `ipn_bridge_connections_refused_total`; `ipn_bridge_connections_open` is
//!   the gauge of admitted connections. `/healthz` and `/metrics` share the cap: a saturated
//!   listener is what a probe should see.
//! - **Bounded buffering per connection.** Request line and headers may total
//!   [`MAX_HEADER_BYTES`]; more is answered `431` by hyper and the connection closed (also
//!   beyond hyper's default of 100 header fields). hyper's read buffer is capped at
//!   [`MAX_READ_BUF_BYTES`] (its default lets it grow to ~400 KiB); the body is bounded by
//!   `max_body_bytes` and its deadline in the handler; headers must arrive within
//!   [`HEADER_READ_TIMEOUT_SECS`] (also on an idle keep-alive connection).
//! - **Accept errors** (`EMFILE`/`ENFILE` when descriptors run out, `ENOBUFS`, …) are
//!   logged once per burst, not once per error: [`BurstLog`] logs the first error, counts the
//!   rest in `ipn_bridge_accept_errors_total`, and reports the burst's size once accepting
//!   has gone [`BURST_QUIET_SECS`] without an error. After each error the loop backs off
//!   ([`ACCEPT_BACKOFF_MIN_MS`] doubling to [`ACCEPT_BACKOFF_MAX_MS`]) instead of spinning
//!   on a listener that stays readable. Refusals at the cap are logged the same way.
//! - At start the soft `RLIMIT_NOFILE` is read from `/proc/self/limits`: when it leaves
//!   fewer than [`RESERVED_FDS`] descriptors above `max_connections`, a warning says so
//!   (the systemd unit sets `LimitNOFILE=` with that room).
//!
//! This module knows sockets and hyper's connection settings, not the routes (see
//! [`super::router`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// A client must send its request headers within this time.
pub const HEADER_READ_TIMEOUT_SECS: u64 = 10;

/// Open connections get this long to finish after shutdown starts.
pub const SHUTDOWN_GRACE_SECS: u64 = 10;

/// Request line and headers together may be this large; beyond it the answer is `431`.
///
/// A guess (README, "What rests on a guess"): `shared/reference/digistore24-ipn.md` does not
/// record the size of Digistore24's request headers; an IPN is a form POST whose data is in
/// the body, so its headers should be a few hundred bytes. 16 KiB leaves room for a proxy's
/// forwarding headers while bounding what one connection can make us hold.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// hyper's read buffer per connection grows at most to this (hyper's minimum is 8 KiB).
pub const MAX_READ_BUF_BYTES: usize = 16 * 1024;

/// First pause after a failed accept; doubles with each further failure.
pub const ACCEPT_BACKOFF_MIN_MS: u64 = 5;

/// Longest pause between two accept attempts while they fail.
pub const ACCEPT_BACKOFF_MAX_MS: u64 = 1_000;

/// A burst of accept errors (or refusals) ends after this long without one.
pub const BURST_QUIET_SECS: u64 = 10;

/// Descriptors the daemon needs besides client connections: the store (database, WAL,
/// shared memory), outgoing calls to targets and SMTP, the runtime, the journal.
pub const RESERVED_FDS: u64 = 64;

/// Limits of the listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `[server] max_connections`.
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `shutdown`; then stops accepting and gives open
/// connections [`SHUTDOWN_GRACE_SECS`] to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    warn_if_descriptors_are_short(limits.max_connections);
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(HEADER_READ_TIMEOUT_SECS))
        .max_header_size(MAX_HEADER_BYTES)
        .max_buf_size(MAX_READ_BUF_BYTES)
        .keep_alive(true);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let refusal = refusal_response();
    let mut accept_errors = BurstLog::new(Duration::from_secs(BURST_QUIET_SECS));
    let mut refusals = BurstLog::new(Duration::from_secs(BURST_QUIET_SECS));
    let mut backoff = Backoff::default();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let now = Instant::now();
        if let Some(burst) = accept_errors.take_ended(now) {
            tracing::info!(
                errors = burst.count,
                lasted_ms = burst.lasted().as_millis(),
                "accepting connections again after a burst of accept errors"
            );
        }
        let (stream, peer): (tokio::net::TcpStream, SocketAddr) = match accepted {
            Ok(a) => {
                backoff.reset();
                a
            }
            Err(e) => {
                metrics.accept_error();
                if accept_errors.error(now) {
                    tracing::warn!(
                        error = %e, max_connections = limits.max_connections,
                        "cannot accept connections (out of file descriptors?); further errors are counted in ipn_bridge_accept_errors_total until accepting works again"
                    );
                }
                let pause = backoff.next();
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(pause) => continue,
                }
            }
        };
        if let Some(burst) = refusals.take_ended(now) {
            tracing::info!(
                refused = burst.count,
                lasted_ms = burst.lasted().as_millis(),
                "admitting connections again after refusing some at the connection cap"
            );
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.connection_refused();
            if refusals.error(now) {
                tracing::warn!(
                    max_connections = limits.max_connections, %peer,
                    "connection cap reached: new connections are answered 503 and closed; further refusals are counted in ipn_bridge_connections_refused_total"
                );
            }
            refuse(stream, &refusal);
            continue;
        };
        let open = metrics.connection_opened();
        // Answers are tiny; without NODELAY a keep-alive client can wait for the peer's
        // delayed ACK (tens of milliseconds) on every request.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "could not set TCP_NODELAY");
        }
        let service = TowerToHyperService::new(router.clone());
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(open);
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(
        Duration::from_secs(SHUTDOWN_GRACE_SECS),
        graceful.shutdown(),
    )
    .await
    .is_err()
    {
        tracing::warn!("open HTTP connections did not finish in time");
    }
}

/// The whole answer to a connection beyond the cap.
///
/// Rests on a guess (README, "What rests on a guess"): `shared/reference/digistore24-ipn.md`
/// records that a failed call is retried at least 20 times over 10 days, and that the body
/// of a failed call is shown as "Message by server"; that a 503 (or a reset before the
/// answer) counts as such a failed call is assumed, not documented.
fn refusal_response() -> Vec<u8> {
    let body = "too many open connections (server.max_connections); retry later";
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nretry-after: 5\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Writes `refusal` without waiting (a fresh socket's send buffer takes it whole) and closes.
fn refuse(stream: tokio::net::TcpStream, refusal: &[u8]) {
    use std::io::Write;
    // Leaving tokio's reactor keeps the socket non-blocking: the write never waits.
    match stream.into_std() {
        Ok(mut std_stream) => {
            if let Err(e) = std_stream.write(refusal) {
                tracing::debug!(error = %e, "could not write the 503 to a refused connection");
            }
        }
        Err(e) => tracing::debug!(error = %e, "could not detach a refused connection"),
    }
}

/// The pause after failed accepts: [`ACCEPT_BACKOFF_MIN_MS`], doubling up to
/// [`ACCEPT_BACKOFF_MAX_MS`]; back to the minimum after a success.
#[derive(Debug, Default)]
struct Backoff {
    last: Option<Duration>,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let next = match self.last {
            None => Duration::from_millis(ACCEPT_BACKOFF_MIN_MS),
            Some(d) => (d * 2).min(Duration::from_millis(ACCEPT_BACKOFF_MAX_MS)),
        };
        self.last = Some(next);
        next
    }

    fn reset(&mut self) {
        self.last = None;
    }
}

/// A run of errors no more than the quiet time apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Burst {
    /// Errors in the burst, the first one included.
    pub count: u64,
    pub first: Instant,
    pub last: Instant,
}

impl Burst {
    /// From the first error to the last.
    pub fn lasted(&self) -> Duration {
        self.last.duration_since(self.first)
    }
}

/// Logs a recurring error once per burst: [`BurstLog::error`] says whether this error opens
/// a burst (log it) or belongs to the running one (count it only); [`BurstLog::take_ended`]
/// hands over a burst once `quiet` has passed since its last error, to report its size
/// once. Time is passed in, so the rule is tested without a clock.
#[derive(Debug)]
pub struct BurstLog {
    quiet: Duration,
    burst: Option<Burst>,
}

impl BurstLog {
    pub fn new(quiet: Duration) -> Self {
        BurstLog { quiet, burst: None }
    }

    /// An error at `now`; `true` when it opens a burst and should be logged.
    pub fn error(&mut self, now: Instant) -> bool {
        match &mut self.burst {
            Some(b) if now.saturating_duration_since(b.last) < self.quiet => {
                b.count += 1;
                b.last = now;
                false
            }
            _ => {
                self.burst = Some(Burst {
                    count: 1,
                    first: now,
                    last: now,
                });
                true
            }
        }
    }

    /// The burst that ended (no error for `quiet` before `now`), once.
    pub fn take_ended(&mut self, now: Instant) -> Option<Burst> {
        match self.burst {
            Some(b) if now.saturating_duration_since(b.last) >= self.quiet => self.burst.take(),
            _ => None,
        }
    }
}

/// Warns when the soft limit on open files leaves less than [`RESERVED_FDS`] above
/// `max_connections`: connections beyond it would fail to be accepted (`EMFILE`).
fn warn_if_descriptors_are_short(max_connections: usize) {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return;
    };
    let Some(soft) = open_files_soft_limit(&limits) else {
        return;
    };
    let needed = (max_connections as u64).saturating_add(RESERVED_FDS);
    if soft < needed {
        tracing::warn!(
            open_files_limit = soft,
            max_connections,
            needed,
            "the open-files limit is below server.max_connections plus what the daemon needs besides; raise LimitNOFILE= (ulimit -n) or lower max_connections"
        );
    }
}

/// The soft "Max open files" of a `/proc/PID/limits` text; `None` when unlimited or absent.
pub fn open_files_soft_limit(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|line| line.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|soft| soft.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_errors_is_logged_once_and_reported_once_after_the_quiet_time() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut log = BurstLog::new(Duration::from_secs(10));
        assert_eq!(log.take_ended(at(0)), None);
        // 200 errors, 5 ms apart: one line.
        let logged = (0..200).filter(|i| log.error(at(i * 5))).count();
        assert_eq!(logged, 1);
        // Still within the quiet time: nothing ends, and a late error still belongs to it.
        assert_eq!(log.take_ended(at(995 + 9_999)), None);
        assert!(!log.error(at(10_900)));
        assert_eq!(log.take_ended(at(20_899)), None);
        let ended = log.take_ended(at(20_900)).expect("the burst ended");
        assert_eq!(ended.count, 201);
        assert_eq!(ended.lasted(), Duration::from_millis(10_900));
        // Reported once.
        assert_eq!(log.take_ended(at(30_000)), None);
        // A later error opens a new burst, logged again.
        assert!(log.error(at(40_000)));
        assert!(!log.error(at(40_001)));
    }

    #[test]
    fn an_error_after_the_quiet_time_opens_a_new_burst_even_unreported() {
        let t0 = Instant::now();
        let mut log = BurstLog::new(Duration::from_secs(10));
        assert!(log.error(t0));
        assert!(log.error(t0 + Duration::from_secs(10)));
        let ended = log
            .take_ended(t0 + Duration::from_secs(20))
            .expect("the second burst ended");
        assert_eq!(ended.count, 1);
    }

    #[test]
    fn accept_backoff_doubles_to_its_cap_and_resets() {
        let mut b = Backoff::default();
        let steps: Vec<u64> = (0..10).map(|_| b.next().as_millis() as u64).collect();
        assert_eq!(steps, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.reset();
        assert_eq!(b.next(), Duration::from_millis(5));
    }

    #[test]
    fn the_open_files_soft_limit_is_read_from_proc_limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max processes             63448                63448                processes \n\
                    Max open files            1024                 524288               files     \n\
                    Max locked memory         8388608              8388608              bytes     \n";
        assert_eq!(open_files_soft_limit(text), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(open_files_soft_limit(unlimited), None);
        assert_eq!(open_files_soft_limit(""), None);
        // This process has one.
        let own = std::fs::read_to_string("/proc/self/limits").unwrap();
        assert!(open_files_soft_limit(&own).is_some_and(|n| n > 0), "{own}");
    }

    #[test]
    fn the_refusal_is_a_complete_503_with_its_length() {
        let text = String::from_utf8(refusal_response()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{head}"
        );
        assert!(
            head.contains(&format!("content-length: {}\r\n", body.len())),
            "{head}"
        );
        assert!(head.contains("connection: close"), "{head}");
        assert!(body.contains("max_connections"), "{body}");
    }
}
