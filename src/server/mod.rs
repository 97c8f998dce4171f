//! HTTP: `POST /ipn/{source}` (verify → route → store → `OK`), `GET /ipn/{source}`,
//! `GET /healthz`.
//!
//! The acknowledgement rule: `OK` is written only after the store has committed the raw body,
//! the parsed key fields and the routing decisions (with their jobs, and the alerts of the
//! decisions that need a person) in one transaction. Routing is pure and cheap, so it runs
//! here, before the commit: a crash can therefore never separate a stored IPN from its jobs
//! or its alerts. If the store cannot commit, the answer is `503` with
//! the reason, and Digistore24 retries later: nothing is lost on either side.
//!
//! `/healthz` tells the truth about the store: its probe is a real write to the database
//! file through the writer (`Store::probe_writable`), which also fails when the file was
//! deleted, replaced or overwritten under the daemon; `store_error` carries the reason.
//!
//! Answers are short `text/plain` reasons, because Digistore24 shows the body of a failed
//! call to the vendor ("Message by server"). Refusals never echo the body or a secret.
//!
//! Serving goes through hyper directly (not `axum::serve`), in [`listener`], so the
//! connection cap, the header-read timeout and hyper's buffer limits can be set: a client
//! that opens a connection and trickles headers is dropped. The body has its own deadline
//! ([`BODY_READ_TIMEOUT_SECS`], answered 408) besides its size limit, and is copied out of
//! hyper's read buffers frame by frame (`body`), so a trickled body cannot pin them.
//!
//! An unknown source is answered `404` with a fixed text that does not repeat the requested
//! name: whatever a client puts in the URL is never reflected back.

mod body;
mod listener;

pub use listener::{
    HEADER_READ_TIMEOUT_SECS, Limits, MAX_HEADER_BYTES, MAX_READ_BUF_BYTES, SHUTDOWN_GRACE_SECS,
    serve,
};

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::alert::{Alert, AlertKind, Alerter};
use crate::clock::SharedClock;
use crate::config::{Config, LiveConfig};
use crate::delivery::{Heartbeat, TargetBoard, Wake};
use crate::domain::{IpnEvent, JobState};
use crate::ingest;
use crate::ipn;
use crate::metrics::Metrics;
use crate::rules;
use crate::store::alerts::EVENT_ID_SLOT;
use crate::store::{Ingested, Store};

/// A client must send the whole body within this time after its headers.
pub const BODY_READ_TIMEOUT_SECS: u64 = 30;

/// The `404` text for a source that is not configured. It names no source: the requested
/// name comes from the client and is not echoed.
const UNKNOWN_SOURCE: &str =
    "unknown source: the last part of the URL is not a [source.NAME] of the configuration";

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub config: LiveConfig,
    pub store: Store,
    pub clock: SharedClock,
    pub wake: Wake,
    pub heartbeat: Heartbeat,
    pub targets: TargetBoard,
    pub alerter: Alerter,
    pub metrics: Metrics,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/ipn/{source}", get(ipn_get).post(ipn_post))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// A `text/plain` answer. The header value is static and a `&'static str` body is not
/// copied, so the `OK` of every IPN allocates neither (issue 13).
fn text(status: StatusCode, body: impl Into<Body>) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        body.into(),
    )
        .into_response()
}

async fn ipn_get(State(state): State<AppState>, Path(source): Path<String>) -> Response {
    if !state.config.current().sources.contains_key(&source) {
        return text(StatusCode::NOT_FOUND, UNKNOWN_SOURCE);
    }
    text(StatusCode::OK, "OK")
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Vec<u8>, Response> {
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body larger than {limit} bytes (server.max_body_bytes)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let read = tokio::time::timeout(
        Duration::from_secs(BODY_READ_TIMEOUT_SECS),
        body::collect_limited(body, limit, declared),
    );
    match read.await {
        Err(_) => Err(text(
            StatusCode::REQUEST_TIMEOUT,
            format!("body not received within {BODY_READ_TIMEOUT_SECS} s"),
        )),
        Ok(Ok(b)) => Ok(b),
        Ok(Err(body::BodyError::TooLarge)) => Err(too_large()),
        Ok(Err(body::BodyError::Unreadable)) => Err(text(
            StatusCode::BAD_REQUEST,
            "could not read the request body",
        )),
    }
}

/// Takes the whole request rather than a `HeaderMap` (axum's extractor clones the headers):
/// its parts are split off and read in place.
async fn ipn_post(
    State(state): State<AppState>,
    Path(source_name): Path<String>,
    request: axum::extract::Request,
) -> Response {
    let started = std::time::Instant::now();
    let (parts, body) = request.into_parts();
    let response = receive(&state, &source_name, &parts.headers, body).await;
    state.metrics.ingest_duration(started.elapsed());
    response
}

/// `POST /ipn/{source}` without the timing.
async fn receive(state: &AppState, source_name: &str, headers: &HeaderMap, body: Body) -> Response {
    let config = state.config.current();
    let reject = |status: StatusCode, label: &str, reason: String| {
        state.metrics.ipn_rejected(label);
        text(status, reason)
    };
    let Some(source) = config.sources.get(source_name) else {
        return reject(
            StatusCode::NOT_FOUND,
            "unknown_source",
            UNKNOWN_SOURCE.to_owned(),
        );
    };
    if !is_form(headers) {
        return reject(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content_type",
            "expected Content-Type: application/x-www-form-urlencoded".into(),
        );
    }
    let body = match read_body(body, headers, config.server.max_body_bytes).await {
        Ok(b) => b,
        Err(resp) => {
            state.metrics.ipn_rejected(match resp.status() {
                StatusCode::PAYLOAD_TOO_LARGE => "too_large",
                StatusCode::REQUEST_TIMEOUT => "timeout",
                _ => "unreadable",
            });
            return resp;
        }
    };
    let received = match ipn::accept(&body, &source.passphrases) {
        Ok(r) => r,
        Err(e) => {
            let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
            if status == StatusCode::FORBIDDEN {
                tracing::warn!(source = %source_name, reason = %e.reason(), "IPN refused: signature");
            } else {
                tracing::warn!(source = %source_name, reason = %e.reason(), "IPN refused: malformed");
            }
            return reject(status, e.label(), e.reason());
        }
    };
    let now = state.clock.now_ms();
    let event = &received.event;
    let (routes, attention) =
        ingest::new_routes(rules::route(&config, source_name, event, now), event, now);
    let mut record = ingest::new_ipn(source_name, received.business_key, event, body, routes, now);
    // The alerts go into the IPN's own transaction: a crash cannot keep the IPN without them.
    let alerts: Vec<(Alert, bool)> = attention
        .into_iter()
        .map(|(integration, reason)| {
            let alert = attention_alert(&config, event, integration, reason);
            let outbox = state.alerter.outbox_record(&alert);
            let recorded = outbox.is_some();
            record.alerts.extend(outbox);
            (alert, recorded)
        })
        .collect();
    match state.store.ingest(record).await {
        Ok(Ingested::Stored { ipn_id, jobs }) => {
            state
                .metrics
                .ipn_received(source_name, event.kind.ipn_name());
            tracing::info!(
                event_id = %ipn_id, source = %source_name, event = event.kind.ipn_name(),
                order_id = event.order_id().unwrap_or(""), jobs = jobs.len(),
                "IPN stored"
            );
            if !jobs.is_empty() {
                state.wake.notify();
            }
            for (mut alert, recorded) in alerts {
                alert.retry_command = alert
                    .retry_command
                    .map(|c| c.replace(EVENT_ID_SLOT, &ipn_id.to_string()));
                state.alerter.committed(&alert, recorded);
            }
            text(StatusCode::OK, "OK")
        }
        Ok(Ingested::Duplicate { ipn_id }) => {
            state
                .metrics
                .ipn_received(source_name, event.kind.ipn_name());
            tracing::info!(event_id = %ipn_id, source = %source_name, "IPN already stored; acknowledged again");
            text(StatusCode::OK, "OK")
        }
        Err(e) => {
            // The store's writer logs (and counts) its failures itself, once and then in
            // summaries; a line per refused IPN would flood the log while the disk is full.
            tracing::debug!(source = %source_name, error = %e, "could not store an IPN; answered 503");
            reject(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                format!("IPN not stored, please retry: {e}"),
            )
        }
    }
}

/// The alert about an IPN an integration could not act on (an unmapped product, missing
/// buyer data): the vendor is told, with what they need to fix it and re-route it. The IPN's
/// id is [`EVENT_ID_SLOT`], filled in by the store.
fn attention_alert(
    config: &Config,
    event: &IpnEvent,
    integration: String,
    reason: String,
) -> Alert {
    let mut alert = Alert::new(AlertKind::UnmappedProduct, reason);
    alert.ds24_order_id = event.order_id().map(str::to_owned);
    alert.product = event.get("product_id").map(|p| {
        format!("{p} {}", event.get("product_name").unwrap_or_default())
            .trim_end()
            .to_owned()
    });
    alert.amount = event.get("amount").map(|a| {
        format!("{a} {}", event.get("currency").unwrap_or_default())
            .trim_end()
            .to_owned()
    });
    alert.buyer_email = event.first_of(&["buyer_email", "email"]).map(str::to_owned);
    alert.extra_recipients = config
        .integrations
        .get(&integration)
        .map(|i| i.error_emails.clone())
        .unwrap_or_default();
    alert.retry_command = Some(format!(
        "fix the configuration, reload it, then: ipn-bridge replay {EVENT_ID_SLOT} --integration {integration}"
    ));
    alert.integration = Some(integration);
    alert
}

/// `GET /metrics`: Prometheus / OpenMetrics text; job gauges are read at scrape time.
async fn metrics(State(state): State<AppState>) -> Response {
    state
        .metrics
        .observe_store_errors(state.store.error_count());
    if let Ok(counts) = state.store.job_counts().await {
        for s in JobState::ALL {
            state
                .metrics
                .set_jobs(s.as_str(), counts.get(s.as_str()).copied().unwrap_or(0));
        }
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        state.metrics.render(),
    )
        .into_response()
}

#[derive(serde::Serialize)]
struct Health {
    status: &'static str,
    /// `sqlite` or `postgresql`.
    store: &'static str,
    /// The SQLite file, or the PostgreSQL database as `postgres://user@host:port/db` (never
    /// the password).
    store_database: String,
    store_writable: bool,
    store_error: Option<String>,
    dispatcher_alive: bool,
    /// Paused targets and why (a paused target is degraded, not unhealthy: IPNs are still
    /// received and kept).
    targets_paused: std::collections::BTreeMap<String, String>,
    jobs: std::collections::BTreeMap<String, u64>,
}

/// The dispatcher counts as alive when a target loop went round this recently.
const DISPATCHER_STALE_MS: i64 = 10_000;

async fn healthz(State(state): State<AppState>) -> Response {
    let probe = state.store.probe_writable().await;
    let jobs = state.store.job_counts().await.unwrap_or_default();
    let dispatcher_alive = state.config.current().targets.is_empty()
        || state.clock.now_ms() - state.heartbeat.last_beat_ms() < DISPATCHER_STALE_MS;
    let healthy = probe.is_ok() && dispatcher_alive;
    let health = Health {
        status: if healthy { "ok" } else { "unhealthy" },
        store: state.store.backend_name(),
        store_database: state.store.database(),
        store_writable: probe.is_ok(),
        store_error: probe.err().map(|e| e.to_string()),
        dispatcher_alive,
        targets_paused: state
            .targets
            .paused()
            .into_iter()
            .map(|(t, p)| (t, p.reason))
            .collect(),
        jobs,
    };
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(health)).into_response()
}
