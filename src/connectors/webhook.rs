//! The webhook connector (`kind = "webhook"`): each job is one signed JSON `POST` to the
//! target's `url`, so any HTTP receiver gets Digistore24's events with the queue's
//! guarantees.
//!
//! Split like the Konnektive connector: [`build`] makes the request (pure; `explain` prints
//! what it returns), [`classify`] judges the answer (pure, the retry *decision*), and
//! [`WebhookTarget`] does the I/O.
//!
//! Decisions:
//! * **Payload**: `{"type": <IPN event, e.g. on_payment>, "timestamp": <receipt time, RFC
//!   3339 UTC>, "data": {every IPN field except sha_sign, as strings}, "ipn_bridge":
//!   {"event_id", "source", "integration"}}`.
//! * **Signature (Standard Webhooks)**: the signed content is
//!   `{webhook-id}.{webhook-timestamp}.{body}`; HMAC-SHA256 keyed with the base64-decoded part
//!   after `whsec_` when the secret starts with it, else with the secret's own bytes (a
//!   receiver that is no Standard Webhooks library only has to use the same string);
//!   `webhook-signature: v1,<base64 of the MAC>`. Without a secret nothing is signed.
//! * **`webhook-id` is `ipnb_<event id>_<integration>`** ([`webhook_id`]): stable for every
//!   attempt of an event and integration, so a receiver dedupes retries and resends by it.
//!   An unknown outcome (timeout after sending) is therefore simply resent; nothing is looked
//!   up. `webhook-timestamp` is the time of the attempt (Unix seconds), as the specification
//!   wants it for replay protection.
//! * **Outcomes**: 2xx delivered; 408, 429 and 5xx retried (`Retry-After` in seconds
//!   honoured); a connection error or timeout retried; 410 Gone, any other 4xx and 3xx (no
//!   redirect is followed) dead, with the status and the first bytes of the answer.
//! * **Secrets**: the signing secret and header values never reach a report: the stored
//!   request names the headers with their values redacted.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::RETRY_AFTER;
use secrecy::ExposeSecret;
use sha2::Sha256;

use crate::config::{Target, Webhook};
use crate::domain::{AttemptReport, EventId, Forwarded, Outcome, Receipt, rfc3339_utc};

/// The report's "endpoint" for a webhook POST.
pub const ENDPOINT: &str = "POST";

/// The `type` of the event `test-connection` posts.
pub const CONNECTION_TEST_TYPE: &str = "connection_test";

/// What a redacted header value reads as.
pub const REDACTED: &str = "[redacted]";

/// How many bytes of an answer a report keeps.
const ANSWER_PREFIX_BYTES: usize = 300;

/// Connect timeout ceiling; the total timeout is `target.delivery.timeout`.
const CONNECT_TIMEOUT_MAX_SECS: u64 = 10;

/// The prefix of a Standard Webhooks secret whose rest is base64.
const WHSEC_PREFIX: &str = "whsec_";

/// The `webhook-id` of `event` for `integration`: the same for every attempt and resend.
pub fn webhook_id(event: EventId, integration: &str) -> String {
    format!("ipnb_{}_{integration}", event.0)
}

/// The HMAC key of a secret: the base64-decoded rest of `whsec_…`, else the string's bytes.
/// `None` for a `whsec_` secret whose rest is not base64 (the config rejects it).
pub fn signing_key(secret: &str) -> Option<Vec<u8>> {
    match secret.strip_prefix(WHSEC_PREFIX) {
        Some(rest) => BASE64.decode(rest).ok(),
        None => Some(secret.as_bytes().to_vec()),
    }
}

/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(mac) => mac,
        // HMAC takes keys of any length; this arm is never taken.
        Err(_) => return String::new(),
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// The JSON body of one forwarded event.
pub fn payload(forwarded: &Forwarded, event: EventId) -> serde_json::Value {
    let data: serde_json::Map<String, serde_json::Value> = forwarded
        .fields
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("sha_sign"))
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::json!({
        "type": forwarded.event,
        "timestamp": rfc3339_utc(forwarded.received_at_ms),
        "data": data,
        "ipn_bridge": {
            "event_id": event.0,
            "source": forwarded.source,
            "integration": forwarded.integration,
        },
    })
}

/// One request, ready to send: its headers carry the secrets in the clear, so it is never
/// stored or printed as is (see [`Request::redacted`]).
pub struct Request {
    pub url: String,
    /// In sending order: the Standard Webhooks headers, then the target's own.
    pub headers: Vec<(String, String)>,
    /// Header names whose values are secret.
    secret_headers: Vec<String>,
    pub body: Vec<u8>,
}

impl Request {
    /// The request as `explain` prints and an attempt stores it: `POST url`, each header on
    /// its line (the target's own headers' values redacted), a blank line, the body.
    pub fn redacted(&self) -> String {
        let mut out = format!("POST {}\n", self.url);
        for (name, value) in &self.headers {
            let value = if self.secret_headers.contains(name) {
                REDACTED
            } else {
                value.as_str()
            };
            out.push_str(&format!("{name}: {value}\n"));
        }
        out.push('\n');
        out.push_str(&String::from_utf8_lossy(&self.body));
        out
    }
}

/// Builds the request that forwards `body` (a JSON value) as `id` at `now_ms`.
pub fn build(webhook: &Webhook, id: &str, body: &serde_json::Value, now_ms: i64) -> Request {
    let body = body.to_string().into_bytes();
    let timestamp = now_ms.div_euclid(1000);
    let mut headers = vec![
        ("content-type".to_owned(), "application/json".to_owned()),
        ("webhook-id".to_owned(), id.to_owned()),
        ("webhook-timestamp".to_owned(), timestamp.to_string()),
    ];
    if let Some(key) = webhook
        .secret
        .as_ref()
        .and_then(|s| signing_key(s.expose_secret()))
    {
        headers.push((
            "webhook-signature".to_owned(),
            sign(&key, id, timestamp, &body),
        ));
    }
    let mut secret_headers = Vec::new();
    for (name, value) in &webhook.headers {
        headers.push((name.clone(), value.expose_secret().to_owned()));
        secret_headers.push(name.clone());
    }
    Request {
        url: webhook.url.clone(),
        headers,
        secret_headers,
        body,
    }
}

/// Judges one HTTP answer: 2xx delivered; 408, 429, 5xx retryable (with `Retry-After` in
/// seconds); anything else permanent, with the status and the answer's first bytes.
pub fn classify(status: u16, retry_after: Option<&str>, body: &[u8]) -> Outcome {
    let answer = || {
        let end = body.len().min(ANSWER_PREFIX_BYTES);
        let text = String::from_utf8_lossy(&body[..end]).trim().to_owned();
        if text.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {text}")
        }
    };
    match status {
        200..=299 => Outcome::Delivered(Receipt::default()),
        408 | 429 | 500..=599 => Outcome::Retryable {
            reason: format!("the receiver answered {}", answer()),
            retry_after: retry_after.and_then(parse_retry_after),
        },
        410 => Outcome::Permanent {
            reason: format!(
                "the receiver answered {} (Gone: it no longer takes these events)",
                answer()
            ),
        },
        _ => Outcome::Permanent {
            reason: format!("the receiver refused the event: {}", answer()),
        },
    }
}

/// `Retry-After` as delta-seconds (an HTTP date is ignored: the schedule's own delay holds).
fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// One webhook target: the HTTP client and its settings.
pub struct WebhookTarget {
    http: reqwest::Client,
    webhook: Webhook,
}

impl fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookTarget")
            .field("url", &self.webhook.url)
            .finish_non_exhaustive()
    }
}

impl WebhookTarget {
    /// Builds the HTTP client: total timeout `target.delivery.timeout`, no redirects, no
    /// automatic retries.
    pub fn new(target: &Target, webhook: &Webhook) -> Result<Self, reqwest::Error> {
        let timeout = target.delivery.timeout;
        let http = reqwest::Client::builder()
            .tls_backend_rustls()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(CONNECT_TIMEOUT_MAX_SECS)))
            .redirect(reqwest::redirect::Policy::none())
            .retry(reqwest::retry::never())
            .user_agent(concat!("ipn-bridge/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(WebhookTarget {
            http,
            webhook: webhook.clone(),
        })
    }

    pub fn webhook(&self) -> &Webhook {
        &self.webhook
    }

    /// Forwards one event once and reports what happened. Never retries.
    pub async fn forward(
        &self,
        forwarded: &Forwarded,
        event: EventId,
        now_ms: i64,
    ) -> AttemptReport {
        let id = webhook_id(event, &forwarded.integration);
        self.post(&id, &payload(forwarded, event), now_ms).await
    }

    /// Posts a signed `connection_test` event (for `test-connection`).
    pub async fn connection_test(&self, integration: &str, now_ms: i64) -> AttemptReport {
        let id = format!("ipnb_test_{integration}_{now_ms}");
        let body = serde_json::json!({
            "type": CONNECTION_TEST_TYPE,
            "timestamp": rfc3339_utc(now_ms),
            "data": {},
            "ipn_bridge": { "integration": integration },
        });
        self.post(&id, &body, now_ms).await
    }

    async fn post(&self, id: &str, body: &serde_json::Value, now_ms: i64) -> AttemptReport {
        let request = build(&self.webhook, id, body, now_ms);
        let stored = request.redacted();
        let mut call = self.http.post(&request.url);
        for (name, value) in &request.headers {
            call = call.header(name.as_str(), value.as_str());
        }
        let sent = call.body(request.body).send().await;
        let report = |outcome, http_status, response: String, maybe_applied| AttemptReport {
            outcome,
            endpoint: ENDPOINT.into(),
            http_status,
            request: stored.clone(),
            response,
            maybe_applied,
        };
        let resp = match sent {
            Ok(resp) => resp,
            Err(e) => {
                let text = error_chain(&e);
                return if e.is_connect() || e.is_builder() {
                    report(
                        Outcome::Retryable {
                            reason: format!("cannot connect to the receiver: {text}"),
                            retry_after: None,
                        },
                        None,
                        text,
                        false,
                    )
                } else {
                    // It may have arrived: resent with the same webhook-id, which the
                    // receiver dedupes by.
                    report(
                        Outcome::Retryable {
                            reason: format!("no answer ({text}); resent with the same webhook-id"),
                            retry_after: None,
                        },
                        None,
                        text,
                        true,
                    )
                };
            }
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match resp.bytes().await {
            Ok(body) => {
                let end = body.len().min(ANSWER_PREFIX_BYTES);
                report(
                    classify(status, retry_after.as_deref(), &body),
                    Some(status),
                    format!("HTTP {status}\n{}", String::from_utf8_lossy(&body[..end])),
                    false,
                )
            }
            Err(e) => {
                let text = error_chain(&e);
                report(
                    Outcome::Retryable {
                        reason: format!(
                            "the answer broke off ({text}); resent with the same webhook-id"
                        ),
                        retry_after: None,
                    },
                    Some(status),
                    text,
                    true,
                )
            }
        }
    }
}

/// `error: cause: cause` (reqwest's own Display omits the causes).
fn error_chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_matches_the_readme_test_vector() {
        // The README's vector: a receiver can check its own code against it.
        let key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn a_secret_without_whsec_is_used_as_its_bytes() {
        assert_eq!(signing_key("plain").unwrap(), b"plain".to_vec());
        assert_eq!(signing_key("whsec_!!"), None);
    }

    #[test]
    fn answers_are_judged_by_status() {
        assert!(matches!(classify(204, None, b""), Outcome::Delivered(_)));
        for status in [408, 429, 500, 503] {
            assert!(
                matches!(classify(status, None, b""), Outcome::Retryable { .. }),
                "{status}"
            );
        }
        assert_eq!(
            classify(429, Some("7"), b""),
            Outcome::Retryable {
                reason: "the receiver answered HTTP 429".into(),
                retry_after: Some(Duration::from_secs(7))
            }
        );
        for status in [301, 400, 401, 404, 410, 422] {
            assert!(
                matches!(classify(status, None, b""), Outcome::Permanent { .. }),
                "{status}"
            );
        }
        let Outcome::Permanent { reason } = classify(410, None, b"endpoint removed") else {
            panic!()
        };
        assert!(reason.contains("HTTP 410: endpoint removed"), "{reason}");
    }
}
