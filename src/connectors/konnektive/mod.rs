//! The Konnektive CRM (Checkout Champ) connector: one [`KonnektiveClient`] per target.
//!
//! Split by role, like a vector sink: [`request`] builds parameter lists (pure),
//! [`response`] judges answers (pure, the retry *decision*), and this file does the I/O:
//! it POSTs, maps transport errors, assembles [`AttemptReport`]s and scrubs them of the
//! password. It must not know about IPNs, the store, the rules or the retry *timing*; rate
//! limiting is a layer around the client, owned by the dispatcher.
//!
//! Decisions:
//! * **POST with an urlencoded body, bare URL** (`{base_url}/{section}/{action}/`): the
//!   credentials travel in the body so they never reach proxy or APM logs (reference §1).
//! * **No hidden retries and no redirects**: reqwest's retry policy is `never` and redirects
//!   are not followed, so one call is one attempt row, and a non-idempotent import is never
//!   repeated behind the dispatcher's back. A 3xx is classified as target-wide
//!   (a wrong `base_url`).
//! * **Transport errors**: a connect error (DNS, refused, TLS, connect timeout) sent nothing,
//!   so it is retryable and not applied. Any other error (total timeout, connection cut, body
//!   read error) may come after Konnektive acted: `Unknown`, maybe applied, reconcile first.
//! * **Reads are safe to repeat**: for `order/query` and `campaign/query`, `Unknown` becomes
//!   `Retryable` and `maybe_applied` is always false.
//! * **Secrets**: `Debug` shows no password; the stored request replaces it with
//!   `[redacted]`; every reason, response and transport error text is scrubbed of the
//!   password (raw and form-encoded) in case an answer echoes it.
//! * **QA hold**: when an import comes back `PENDING` and the action has `auto_approve`, the
//!   client calls `order/qa` with `APPROVE` at once. The import stays `Delivered` either way
//!   (the order exists; repeating the import would duplicate it); a failed approval is logged
//!   at ERROR and appended to the attempt's request/response so a person sees it.

pub mod request;
pub mod response;

pub use request::import_params;
pub use response::{Classified, classify};

use crate::config::Target;
use crate::domain::{Action, AttemptReport, DayWindow, Order, Outcome, Receipt};
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use std::fmt;
use std::time::Duration;

/// Connect timeout ceiling; the total timeout is `target.delivery.timeout`.
const CONNECT_TIMEOUT_MAX_SECS: u64 = 10;

/// Pages fetched at most while reconciling (200 orders each, for one buyer and campaign in
/// three days; more means something else is wrong).
const RECONCILE_MAX_PAGES: u32 = 20;

const IMPORT_ENDPOINT: &str = "order/import";
const QA_ENDPOINT: &str = "order/qa";
const ORDER_QUERY_ENDPOINT: &str = "order/query";
const CAMPAIGN_QUERY_ENDPOINT: &str = "campaign/query";

/// A client for one Konnektive target. Cheap to clone (the HTTP client is shared).
#[derive(Clone)]
pub struct KonnektiveClient {
    http: reqwest::Client,
    base_url: String,
    login_id: String,
    password: SecretString,
}

impl fmt::Debug for KonnektiveClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KonnektiveClient")
            .field("base_url", &self.base_url)
            .field("login_id", &self.login_id)
            .field("password", &request::REDACTED)
            .finish_non_exhaustive()
    }
}

/// What came back over the wire, before classification.
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Vec<u8>,
}

/// A transport failure, already classified.
struct TransportError {
    outcome: Outcome,
    maybe_applied: bool,
    http_status: Option<u16>,
    text: String,
}

impl KonnektiveClient {
    /// Builds the HTTP client: total timeout `target.delivery.timeout`, connect timeout
    /// `min(10 s, timeout)`, rustls, no redirects, no automatic retries.
    pub fn new(target: &Target) -> Result<Self, reqwest::Error> {
        let timeout = target.delivery.timeout;
        let connect_timeout = timeout.min(Duration::from_secs(CONNECT_TIMEOUT_MAX_SECS));
        let http = reqwest::Client::builder()
            .tls_backend_rustls()
            .timeout(timeout)
            .connect_timeout(connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .retry(reqwest::retry::never())
            .user_agent(concat!("ipn-bridge/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(KonnektiveClient {
            http,
            base_url: target.base_url.trim_end_matches('/').to_owned(),
            login_id: target.login_id.clone(),
            password: target.password.clone(),
        })
    }

    /// Performs `action` once and reports what happened. Never retries.
    pub async fn execute(&self, action: &Action) -> AttemptReport {
        match action {
            Action::ImportOrder {
                order,
                auto_approve,
            } => self.import_order(order, *auto_approve).await,
            other => self.local_failure(
                other.kind().config_name(),
                format!(
                    "action {} is not implemented by this connector yet",
                    other.kind().config_name()
                ),
            ),
        }
    }

    async fn import_order(&self, order: &Order, auto_approve: bool) -> AttemptReport {
        let params = import_params(order);
        let (mut report, body) = self.call(IMPORT_ENDPOINT, params, false).await;
        let held = match (&report.outcome, &body) {
            (Outcome::Delivered(_), Some(body)) if auto_approve => {
                response::import_held_for_qa(body)
            }
            _ => None,
        };
        if let Some(order_id) = held {
            let qa_params = vec![
                ("orderId".to_owned(), order_id.clone()),
                ("action".to_owned(), "APPROVE".to_owned()),
            ];
            let (qa, _) = self.call(QA_ENDPOINT, qa_params, false).await;
            if !matches!(qa.outcome, Outcome::Delivered(_)) {
                tracing::error!(
                    order_id = %order_id,
                    outcome = qa.outcome.label(),
                    reason = qa.outcome.reason(),
                    "Konnektive order is held in QA and could not be approved; approve it by hand"
                );
            }
            report
                .request
                .push_str(&format!("\n--- {QA_ENDPOINT}: {}", qa.request));
            report.response.push_str(&format!(
                "\n--- {QA_ENDPOINT} ({}): {}",
                qa.outcome.label(),
                qa.response
            ));
        }
        report
    }

    /// Looks for an order imported earlier for `order` (after an unknown outcome): Konnektive
    /// orders of the buyer's e-mail in the campaign, created within `window` (widened by a
    /// day on each side), whose `order.reference_field` equals `order.reference` exactly.
    ///
    /// `Ok(None)` only when Konnektive positively said there is none, so the import may be
    /// sent again; any failure is `Err(report)` (recorded like an attempt), because resending
    /// without knowing could create a duplicate.
    pub async fn find_order(
        &self,
        order: &Order,
        window: DayWindow,
    ) -> Result<Option<Receipt>, AttemptReport> {
        let mut seen: u64 = 0;
        for page in 1..=RECONCILE_MAX_PAGES {
            let params = request::order_query_params(order, window, page);
            let (report, body) = self.call(ORDER_QUERY_ENDPOINT, params, true).await;
            let Some(body) = body else {
                return Err(report);
            };
            let ok_status = report.http_status.is_some_and(|s| (200..300).contains(&s));
            if ok_status && response::is_nothing_found(&body) {
                return Ok(None);
            }
            if !matches!(report.outcome, Outcome::Delivered(_)) {
                return Err(report);
            }
            let Some(page_rows) = response::query_page(&body) else {
                return Err(with_outcome(
                    report,
                    Outcome::Retryable {
                        reason: "order/query answered SUCCESS without a paging object".to_owned(),
                        retry_after: None,
                    },
                ));
            };
            let mut hits = page_rows.rows.iter().filter(|row| {
                response::row_field_equals(row, &order.reference_field, &order.reference)
            });
            if let Some(row) = hits.next() {
                let receipt = response::receipt_from_order(row);
                if hits.next().is_some() {
                    tracing::warn!(
                        reference = %order.reference,
                        "more than one Konnektive order carries this reference; using the first"
                    );
                }
                return Ok(Some(receipt));
            }
            seen += page_rows.rows.len() as u64;
            if page_rows.rows.is_empty() || seen >= page_rows.total_results {
                return Ok(None);
            }
        }
        Err(self.local_failure(
            ORDER_QUERY_ENDPOINT,
            format!("cannot reconcile: more than {RECONCILE_MAX_PAGES} pages of orders"),
        ))
    }

    /// `campaign/query` for `campaign_id` (the `test-connection` recipe, reference §3.6):
    /// success proves credentials, allow-list, permission and campaign; returns the
    /// campaign product ids.
    pub async fn check_campaign(&self, campaign_id: u64) -> Result<Vec<u64>, AttemptReport> {
        let params = vec![("campaignId".to_owned(), campaign_id.to_string())];
        let (report, body) = self.call(CAMPAIGN_QUERY_ENDPOINT, params, true).await;
        if !matches!(report.outcome, Outcome::Delivered(_)) {
            return Err(report);
        }
        match body.and_then(|b| response::campaign_products(&b, campaign_id)) {
            Some(products) => Ok(products),
            None => Err(with_outcome(
                report,
                Outcome::Permanent {
                    reason: format!("campaign {campaign_id} is not in Konnektive's answer"),
                },
            )),
        }
    }

    /// One POST of `params` (plus credentials) to `endpoint`: the scrubbed report, and the raw
    /// body when one was read.
    async fn call(
        &self,
        endpoint: &str,
        params: Vec<(String, String)>,
        read_only: bool,
    ) -> (AttemptReport, Option<Vec<u8>>) {
        let mut all = Vec::with_capacity(params.len() + 2);
        all.push((request::LOGIN_ID_PARAM.to_owned(), self.login_id.clone()));
        all.push((
            request::PASSWORD_PARAM.to_owned(),
            self.password.expose_secret().to_owned(),
        ));
        all.extend(params);
        let stored_request = request::redacted_form(&all);

        let result = self.post(endpoint, &all).await;
        drop(all);

        let (report, body) = match result {
            Ok(answer) => {
                let c = classify(answer.status, answer.retry_after.as_deref(), &answer.body);
                let report = AttemptReport {
                    outcome: c.outcome,
                    endpoint: endpoint.to_owned(),
                    http_status: Some(answer.status),
                    request: stored_request,
                    response: c.excerpt,
                    maybe_applied: c.maybe_applied,
                };
                (report, Some(answer.body))
            }
            Err(e) => {
                let report = AttemptReport {
                    outcome: e.outcome,
                    endpoint: endpoint.to_owned(),
                    http_status: e.http_status,
                    request: stored_request,
                    response: e.text,
                    maybe_applied: e.maybe_applied,
                };
                (report, None)
            }
        };
        let report = if read_only { as_read(report) } else { report };
        tracing::debug!(
            endpoint,
            outcome = report.outcome.label(),
            http_status = report.http_status,
            "Konnektive call finished"
        );
        (self.scrub(report), body)
    }

    async fn post(
        &self,
        endpoint: &str,
        params: &[(String, String)],
    ) -> Result<Answer, TransportError> {
        let url = format!("{}/{}/", self.base_url, endpoint.trim_matches('/'));
        let body = request::form_encode(params.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        let sent = self
            .http
            .post(url)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await;
        let resp = match sent {
            Ok(resp) => resp,
            Err(e) => return Err(transport_error(&e, None)),
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match resp.bytes().await {
            Ok(body) => Ok(Answer {
                status,
                retry_after,
                body: body.to_vec(),
            }),
            Err(e) => Err(transport_error(&e, Some(status))),
        }
    }

    /// A failure found before anything was sent (a bug or bad data, not the target's fault).
    fn local_failure(&self, endpoint: &str, reason: String) -> AttemptReport {
        self.scrub(AttemptReport {
            outcome: Outcome::Permanent {
                reason: reason.clone(),
            },
            endpoint: endpoint.to_owned(),
            http_status: None,
            request: String::new(),
            response: reason,
            maybe_applied: false,
        })
    }

    /// Removes the password (raw and form-encoded) from everything a report carries.
    fn scrub(&self, mut report: AttemptReport) -> AttemptReport {
        let secret = self.password.expose_secret();
        if secret.is_empty() {
            return report;
        }
        let encoded = request::form_encode([("", secret)]);
        let encoded = encoded.trim_start_matches('=');
        let clean = |s: &str| -> String {
            let s = s.replace(secret, request::REDACTED);
            if encoded != secret {
                s.replace(encoded, request::REDACTED)
            } else {
                s
            }
        };
        report.request = clean(&report.request);
        report.response = clean(&report.response);
        report.outcome = match report.outcome {
            Outcome::Retryable {
                reason,
                retry_after,
            } => Outcome::Retryable {
                reason: clean(&reason),
                retry_after,
            },
            Outcome::Permanent { reason } => Outcome::Permanent {
                reason: clean(&reason),
            },
            Outcome::TargetDown { reason } => Outcome::TargetDown {
                reason: clean(&reason),
            },
            Outcome::Unknown { reason } => Outcome::Unknown {
                reason: clean(&reason),
            },
            delivered @ Outcome::Delivered(_) => delivered,
        };
        report
    }
}

/// Classifies a reqwest error (see module docs). `status` is set when the headers had arrived.
fn transport_error(e: &reqwest::Error, status: Option<u16>) -> TransportError {
    let text = error_chain(e);
    if status.is_none() && (e.is_connect() || e.is_builder()) {
        let outcome = if e.is_builder() {
            Outcome::TargetDown {
                reason: format!("cannot build the request (check base_url): {text}"),
            }
        } else {
            Outcome::Retryable {
                reason: format!("cannot connect to Konnektive: {text}"),
                retry_after: None,
            }
        };
        return TransportError {
            outcome,
            maybe_applied: false,
            http_status: None,
            text,
        };
    }
    let what = if e.is_timeout() {
        "timed out"
    } else if status.is_some() {
        "failed while reading the answer"
    } else {
        "failed after sending"
    };
    TransportError {
        outcome: Outcome::Unknown {
            reason: format!("request {what}; it may have been applied: {text}"),
        },
        maybe_applied: true,
        http_status: status,
        text,
    }
}

/// `error: cause: cause` (reqwest's own Display omits the causes).
fn error_chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Reads are safe to repeat: nothing was applied, and an unknown outcome is just retryable.
fn as_read(mut report: AttemptReport) -> AttemptReport {
    report.maybe_applied = false;
    if let Outcome::Unknown { reason } = report.outcome {
        report.outcome = Outcome::Retryable {
            reason,
            retry_after: None,
        };
    }
    report
}

fn with_outcome(mut report: AttemptReport, outcome: Outcome) -> AttemptReport {
    report.outcome = outcome;
    report
}
