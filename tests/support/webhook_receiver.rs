//! A webhook receiver for tests: a real axum server on port 0 that checks every request's
//! Standard Webhooks signature with its own HMAC (not the bridge's code), records it, and
//! answers from a script (a status per request, then 204).
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The secret the tests configure (`whsec_` + base64 of `test-signing-key-0123456789`).
pub const SECRET: &str = "whsec_dGVzdC1zaWduaW5nLWtleS0wMTIzNDU2Nzg5";

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Whether `webhook-signature` is the HMAC of `id.timestamp.body` under [`SECRET`].
    pub signature_valid: bool,
    /// The status it was answered with.
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// An answer from the script.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: &'static str,
    pub retry_after: Option<&'static str>,
    /// Held this long before answering (a receiver slower than the sender's timeout).
    pub delay: std::time::Duration,
}

impl Answer {
    pub fn status(status: u16) -> Self {
        Answer {
            status,
            body: "",
            retry_after: None,
            delay: std::time::Duration::ZERO,
        }
    }
}

#[derive(Default)]
struct Inner {
    script: VecDeque<Answer>,
    received: Vec<Received>,
}

#[derive(Clone)]
pub struct WebhookReceiver {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

/// The signature a Standard Webhooks receiver expects, computed here independently.
pub fn expected_signature(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
    let key = match secret.strip_prefix("whsec_") {
        Some(rest) => STANDARD.decode(rest).expect("base64 secret"),
        None => secret.as_bytes().to_vec(),
    };
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).expect("key");
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    mac.update(&signed);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

async fn receive(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let expected = expected_signature(SECRET, &get("webhook-id"), &get("webhook-timestamp"), &body);
    let signature_valid = get("webhook-signature")
        .split(' ')
        .any(|candidate| candidate == expected);
    let answer = {
        let mut inner = inner.lock().unwrap();
        let answer = inner.script.pop_front().unwrap_or(Answer::status(204));
        inner.received.push(Received {
            at: Instant::now(),
            headers,
            body,
            signature_valid,
            status: answer.status,
        });
        answer
    };
    tokio::time::sleep(answer.delay).await;
    let status = StatusCode::from_u16(answer.status).unwrap();
    match answer.retry_after {
        Some(after) => (status, [("retry-after", after)], answer.body).into_response(),
        None => (status, answer.body).into_response(),
    }
}

impl WebhookReceiver {
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        WebhookReceiver { addr, inner }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The next requests are answered with these, in order; then 204.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.inner.lock().unwrap().script.extend(answers);
    }

    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().unwrap().received.clone()
    }

    /// The requests answered with a 2xx.
    pub fn delivered(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }
}
