//! Prometheus metrics of the daemon, served at `GET /metrics` (SPEC §3).
//!
//! One [`Metrics`] value owns a `prometheus-client` registry and a handle on every metric; it
//! is `Clone` and cheap to clone (an `Arc`), so the server and the dispatcher each hold one
//! and record through the methods below. [`Metrics::render`] produces the exposition.
//!
//! The metrics (all prefixed `ipn_bridge_`):
//!
//! | name | type | labels |
//! | --- | --- | --- |
//! | `ipn_bridge_ipns_received_total` | counter | `source`, `event` |
//! | `ipn_bridge_ipns_rejected_total` | counter | `reason` |
//! | `ipn_bridge_jobs` | gauge | `state` |
//! | `ipn_bridge_delivery_attempts_total` | counter | `target`, `outcome` |
//! | `ipn_bridge_delivery_duration_seconds` | histogram | |
//! | `ipn_bridge_ingest_duration_seconds` | histogram | |
//! | `ipn_bridge_targets_paused` | gauge | `target` |
//! | `ipn_bridge_target_dispatched` | gauge | `target` |
//! | `ipn_bridge_store_errors_total` | counter | |
//! | `ipn_bridge_connections_open` | gauge | |
//! | `ipn_bridge_connections_refused_total` | counter | |
//! | `ipn_bridge_accept_errors_total` | counter | |
//!
//! Decisions:
//! * **Format**: `prometheus-client` writes the OpenMetrics text format (counters are typed as
//!   the family name, samples carry `_total`; the exposition ends with `# EOF`). Prometheus
//!   scrapes it natively when served with [`CONTENT_TYPE`].
//! * **Bounded label values**: label values come from configuration (source and target
//!   names), from our own enums (job states, outcome labels, rejection reasons) or, for
//!   `event`, from a verified IPN. Each value passes [`label_value`]: anything that is not a
//!   short `[a-z0-9_.-]` word becomes `other`, so a surprising input cannot create unbounded
//!   series or inject text into the exposition.
//! * **Buckets**: deliveries are HTTP calls to Konnektive (tens of milliseconds to the 30 s
//!   timeout and beyond); ingest is parse + verify + a group-committed SQLite write
//!   (sub-millisecond to a slow fsync).
//!
//! * **Store errors** are counted by the store's writer thread (which sees every failure,
//!   whoever asked); [`Metrics::observe_store_errors`] brings that running total into the
//!   counter at scrape time, adding only what is new, so concurrent scrapes never count twice.
//!
//! This module records numbers only. It must not know about HTTP, the store or Konnektive;
//! the callers (server, dispatcher) decide what to record and when.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` to serve [`Metrics::render`]'s text with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Prefix of every metric name.
const PREFIX: &str = "ipn_bridge";

/// Upper bounds (seconds) of the delivery-duration buckets.
pub const DELIVERY_BUCKETS_SECS: [f64; 11] =
    [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// Upper bounds (seconds) of the ingest-duration buckets.
pub const INGEST_BUCKETS_SECS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Longest label value kept as is; longer ones become `other`.
const LABEL_VALUE_MAX_CHARS: usize = 64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReceivedLabels {
    source: String,
    event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    target: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: String,
}

struct Inner {
    registry: Registry,
    ipns_received: Family<ReceivedLabels, Counter>,
    ipns_rejected: Family<ReasonLabels, Counter>,
    jobs: Family<StateLabels, Gauge>,
    delivery_attempts: Family<AttemptLabels, Counter>,
    delivery_duration: Histogram,
    ingest_duration: Histogram,
    targets_paused: Family<TargetLabels, Gauge>,
    target_dispatched: Family<TargetLabels, Gauge>,
    store_errors: Counter,
    /// The store's running total that `store_errors` has caught up with.
    store_errors_seen: AtomicU64,
    connections_open: Gauge,
    connections_refused: Counter,
    accept_errors: Counter,
}

/// Every metric of the daemon. Clones share the same values.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered (and no samples yet).
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let ipns_received = Family::<ReceivedLabels, Counter>::default();
        registry.register(
            "ipns_received",
            "IPNs accepted (signature valid, stored or already stored), by source and event",
            ipns_received.clone(),
        );
        let ipns_rejected = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "ipns_rejected",
            "IPN requests refused, by reason",
            ipns_rejected.clone(),
        );
        let jobs = Family::<StateLabels, Gauge>::default();
        registry.register("jobs", "Delivery jobs by state", jobs.clone());
        let delivery_attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "delivery_attempts",
            "Delivery attempts by target and outcome",
            delivery_attempts.clone(),
        );
        let delivery_duration = Histogram::new(DELIVERY_BUCKETS_SECS);
        registry.register_with_unit(
            "delivery_duration",
            "Duration of one delivery attempt (the target's answer included)",
            Unit::Seconds,
            delivery_duration.clone(),
        );
        let ingest_duration = Histogram::new(INGEST_BUCKETS_SECS);
        registry.register_with_unit(
            "ingest_duration",
            "Time from a complete IPN request to its answer (verify, store, commit)",
            Unit::Seconds,
            ingest_duration.clone(),
        );
        let targets_paused = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "targets_paused",
            "1 while a target is paused after a target-wide failure (bad login, IP not allow-listed), else 0",
            targets_paused.clone(),
        );
        let target_dispatched = Family::<TargetLabels, Gauge>::default();
        registry.register(
            "target_dispatched",
            "1 while this instance dispatches the target; 0 while another instance sharing the PostgreSQL store does",
            target_dispatched.clone(),
        );
        let store_errors = Counter::default();
        registry.register(
            "store_errors",
            "Store operations that failed for a reason of the database (I/O, disk full, read-only, locked, damaged, deleted or replaced file)",
            store_errors.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Client connections open now (each holds one of server.max_connections)",
            connections_open.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Client connections refused because server.max_connections were open",
            connections_refused.clone(),
        );
        let accept_errors = Counter::default();
        registry.register(
            "accept_errors",
            "Failed accepts of a client connection (e.g. EMFILE: out of file descriptors)",
            accept_errors.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry,
                ipns_received,
                ipns_rejected,
                jobs,
                delivery_attempts,
                delivery_duration,
                ingest_duration,
                targets_paused,
                target_dispatched,
                store_errors,
                store_errors_seen: AtomicU64::new(0),
                connections_open,
                connections_refused,
                accept_errors,
            }),
        }
    }

    /// An IPN of `source` with `event` was accepted (answered `OK`).
    pub fn ipn_received(&self, source: &str, event: &str) {
        self.inner
            .ipns_received
            .get_or_create(&ReceivedLabels {
                source: label_value(source),
                event: label_value(event),
            })
            .inc();
    }

    /// An IPN request was refused; `reason` is a short stable word such as
    /// `bad_signature`, `missing_signature`, `unknown_source`, `too_large`, `malformed`,
    /// `unsupported_media_type` or `storage`.
    pub fn ipn_rejected(&self, reason: &str) {
        self.inner
            .ipns_rejected
            .get_or_create(&ReasonLabels {
                reason: label_value(reason),
            })
            .inc();
    }

    /// Sets the number of jobs in `state` (e.g. `pending`, `in_flight`, `dead`).
    pub fn set_jobs(&self, state: &str, count: u64) {
        self.inner
            .jobs
            .get_or_create(&StateLabels {
                state: label_value(state),
            })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// One delivery attempt to `target` ended with `outcome` (an
    /// [`Outcome::label`](crate::domain::Outcome::label)) after `elapsed`.
    pub fn delivery_attempt(&self, target: &str, outcome: &str, elapsed: Duration) {
        self.inner
            .delivery_attempts
            .get_or_create(&AttemptLabels {
                target: label_value(target),
                outcome: label_value(outcome),
            })
            .inc();
        self.inner.delivery_duration.observe(elapsed.as_secs_f64());
    }

    /// One IPN request took `elapsed` from its complete arrival to its answer.
    pub fn ingest_duration(&self, elapsed: Duration) {
        self.inner.ingest_duration.observe(elapsed.as_secs_f64());
    }

    /// `target` was paused (`true`) or resumed (`false`).
    pub fn set_target_paused(&self, target: &str, paused: bool) {
        self.inner
            .targets_paused
            .get_or_create(&TargetLabels {
                target: label_value(target),
            })
            .set(i64::from(paused));
    }

    /// Whether this instance dispatches `target` (always on SQLite).
    pub fn set_target_dispatched(&self, target: &str, dispatched: bool) {
        self.inner
            .target_dispatched
            .get_or_create(&TargetLabels {
                target: label_value(target),
            })
            .set(i64::from(dispatched));
    }

    /// The store reports `total` failed operations so far (a running total that only
    /// grows); the counter takes what it has not seen yet.
    pub fn observe_store_errors(&self, total: u64) {
        let seen = self
            .inner
            .store_errors_seen
            .fetch_max(total, Ordering::Relaxed);
        if total > seen {
            self.inner.store_errors.inc_by(total - seen);
        }
    }

    /// A client connection was admitted; it counts as open until the returned value is
    /// dropped.
    pub fn connection_opened(&self) -> OpenConnection {
        self.inner.connections_open.inc();
        OpenConnection(self.inner.connections_open.clone())
    }

    /// A client connection was refused (the connection cap was reached).
    pub fn connection_refused(&self) {
        self.inner.connections_refused.inc();
    }

    /// Accepting a client connection failed.
    pub fn accept_error(&self) {
        self.inner.accept_errors.inc();
    }

    /// The exposition in the OpenMetrics text format (see [`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry) {
            // Writing to a String cannot fail; an encoder error would be a bug.
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

/// One open connection in `ipn_bridge_connections_open`, until dropped.
#[derive(Debug)]
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A label value as recorded: `value` when it is a short word of `[A-Za-z0-9_.-]`, else
/// `other` (see the module docs).
pub fn label_value(value: &str) -> String {
    let ok = !value.is_empty()
        && value.chars().count() <= LABEL_VALUE_MAX_CHARS
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        value.to_owned()
    } else {
        "other".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn every_metric_is_described_once_it_has_a_sample() {
        let m = Metrics::new();
        m.ipn_received("ds24", "on_payment");
        m.ipn_rejected("bad_signature");
        m.set_jobs("pending", 0);
        m.delivery_attempt("konnektive", "delivered", Duration::from_millis(80));
        m.ingest_duration(Duration::from_millis(2));
        m.set_target_paused("konnektive", false);
        m.observe_store_errors(0);
        let text = m.render();
        for (name, kind) in [
            ("ipn_bridge_ipns_received", "counter"),
            ("ipn_bridge_ipns_rejected", "counter"),
            ("ipn_bridge_jobs", "gauge"),
            ("ipn_bridge_delivery_attempts", "counter"),
            ("ipn_bridge_delivery_duration_seconds", "histogram"),
            ("ipn_bridge_ingest_duration_seconds", "histogram"),
            ("ipn_bridge_targets_paused", "gauge"),
            ("ipn_bridge_store_errors", "counter"),
            ("ipn_bridge_connections_open", "gauge"),
            ("ipn_bridge_connections_refused", "counter"),
            ("ipn_bridge_accept_errors", "counter"),
        ] {
            let type_line = format!("# TYPE {name} {kind}");
            assert!(
                lines(&text).contains(&type_line.as_str()),
                "{type_line}\n{text}"
            );
            assert!(text.contains(&format!("# HELP {name} ")), "{name}\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn histograms_are_exposed_before_any_sample_and_labelled_families_are_not() {
        let text = Metrics::new().render();
        assert!(
            text.contains("ipn_bridge_ingest_duration_seconds_count 0"),
            "{text}"
        );
        assert!(!text.contains("ipn_bridge_ipns_received_total"), "{text}");
    }

    #[test]
    fn counters_carry_their_labels() {
        let m = Metrics::new();
        m.ipn_received("ds24", "on_payment");
        m.ipn_received("ds24", "on_payment");
        m.ipn_received("ds24", "connection_test");
        m.ipn_rejected("bad_signature");
        let text = m.render();
        let l = lines(&text);
        assert!(
            l.contains(&r#"ipn_bridge_ipns_received_total{source="ds24",event="on_payment"} 2"#),
            "{text}"
        );
        assert!(
            l.contains(
                &r#"ipn_bridge_ipns_received_total{source="ds24",event="connection_test"} 1"#
            ),
            "{text}"
        );
        assert!(
            l.contains(&r#"ipn_bridge_ipns_rejected_total{reason="bad_signature"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn gauges_are_set_not_added() {
        let m = Metrics::new();
        m.set_jobs("pending", 7);
        m.set_jobs("pending", 3);
        m.set_jobs("dead", 1);
        m.set_target_paused("konnektive", true);
        m.set_target_paused("backup", true);
        m.set_target_paused("backup", false);
        let text = m.render();
        let l = lines(&text);
        assert!(
            l.contains(&r#"ipn_bridge_jobs{state="pending"} 3"#),
            "{text}"
        );
        assert!(l.contains(&r#"ipn_bridge_jobs{state="dead"} 1"#), "{text}");
        assert!(
            l.contains(&r#"ipn_bridge_targets_paused{target="konnektive"} 1"#),
            "{text}"
        );
        assert!(
            l.contains(&r#"ipn_bridge_targets_paused{target="backup"} 0"#),
            "{text}"
        );
    }

    #[test]
    fn a_delivery_attempt_counts_and_lands_in_its_bucket() {
        let m = Metrics::new();
        m.delivery_attempt("konnektive", "delivered", Duration::from_millis(300));
        m.delivery_attempt("konnektive", "retryable", Duration::from_secs(31));
        let text = m.render();
        let l = lines(&text);
        assert!(
            l.contains(
                &r#"ipn_bridge_delivery_attempts_total{target="konnektive",outcome="delivered"} 1"#
            ),
            "{text}"
        );
        assert!(
            l.contains(
                &r#"ipn_bridge_delivery_attempts_total{target="konnektive",outcome="retryable"} 1"#
            ),
            "{text}"
        );
        assert!(
            l.contains(&"ipn_bridge_delivery_duration_seconds_count 2"),
            "{text}"
        );
        assert!(
            l.contains(&"ipn_bridge_delivery_duration_seconds_sum 31.3"),
            "{text}"
        );
        // Cumulative buckets: 0.3 s is above 0.25 and within 0.5; 31 s is within 60.
        assert!(
            l.contains(&r#"ipn_bridge_delivery_duration_seconds_bucket{le="0.25"} 0"#),
            "{text}"
        );
        assert!(
            l.contains(&r#"ipn_bridge_delivery_duration_seconds_bucket{le="0.5"} 1"#),
            "{text}"
        );
        assert!(
            l.contains(&r#"ipn_bridge_delivery_duration_seconds_bucket{le="30.0"} 1"#),
            "{text}"
        );
        assert!(
            l.contains(&r#"ipn_bridge_delivery_duration_seconds_bucket{le="60.0"} 2"#),
            "{text}"
        );
        assert!(
            l.contains(&r#"ipn_bridge_delivery_duration_seconds_bucket{le="+Inf"} 2"#),
            "{text}"
        );
    }

    #[test]
    fn ingest_duration_has_sub_millisecond_buckets() {
        let m = Metrics::new();
        m.ingest_duration(Duration::from_micros(400));
        m.ingest_duration(Duration::from_millis(3));
        let text = m.render();
        let l = lines(&text);
        assert!(
            l.contains(&r#"ipn_bridge_ingest_duration_seconds_bucket{le="0.0005"} 1"#),
            "{text}"
        );
        assert!(
            l.contains(&r#"ipn_bridge_ingest_duration_seconds_bucket{le="0.005"} 2"#),
            "{text}"
        );
        assert!(
            l.contains(&"ipn_bridge_ingest_duration_seconds_count 2"),
            "{text}"
        );
    }

    #[test]
    fn store_errors_follow_the_stores_running_total_without_counting_twice() {
        let m = Metrics::new();
        assert!(
            m.render().contains("ipn_bridge_store_errors_total 0"),
            "exposed from start"
        );
        m.observe_store_errors(3);
        m.observe_store_errors(3);
        m.observe_store_errors(2); // an older reading that arrives late
        m.observe_store_errors(10);
        let text = m.render();
        assert!(
            lines(&text).contains(&"ipn_bridge_store_errors_total 10"),
            "{text}"
        );
    }

    #[test]
    fn open_connections_count_until_dropped_and_refusals_add_up() {
        let m = Metrics::new();
        let text = m.render();
        assert!(
            lines(&text).contains(&"ipn_bridge_connections_open 0"),
            "{text}"
        );
        assert!(
            lines(&text).contains(&"ipn_bridge_connections_refused_total 0"),
            "{text}"
        );
        let a = m.connection_opened();
        let b = m.connection_opened();
        m.connection_refused();
        m.connection_refused();
        m.accept_error();
        let text = m.render();
        let l = lines(&text);
        assert!(l.contains(&"ipn_bridge_connections_open 2"), "{text}");
        assert!(
            l.contains(&"ipn_bridge_connections_refused_total 2"),
            "{text}"
        );
        assert!(l.contains(&"ipn_bridge_accept_errors_total 1"), "{text}");
        drop(a);
        drop(b);
        assert!(
            lines(&m.render()).contains(&"ipn_bridge_connections_open 0"),
            "{text}"
        );
    }

    #[test]
    fn clones_share_values() {
        let a = Metrics::new();
        let b = a.clone();
        b.ipn_rejected("unknown_source");
        assert!(
            a.render()
                .contains(r#"ipn_bridge_ipns_rejected_total{reason="unknown_source"} 1"#)
        );
    }

    #[test]
    fn odd_label_values_become_other() {
        let cases = [
            ("on_payment", "on_payment"),
            ("main-campaign", "main-campaign"),
            ("v1.6", "v1.6"),
            ("", "other"),
            ("has space", "other"),
            ("quote\"inject", "other"),
            ("new\nline", "other"),
            ("zahlung_ü", "other"),
        ];
        for (input, expected) in cases {
            assert_eq!(label_value(input), expected, "{input:?}");
        }
        assert_eq!(label_value(&"x".repeat(65)), "other");
        assert_eq!(label_value(&"x".repeat(64)), "x".repeat(64));

        let m = Metrics::new();
        m.ipn_received("ds24", "evil\"} 1\nfake_metric 9");
        let text = m.render();
        assert!(
            text.contains(r#"ipn_bridge_ipns_received_total{source="ds24",event="other"} 1"#),
            "{text}"
        );
        assert!(!text.contains("fake_metric"), "{text}");
    }
}
