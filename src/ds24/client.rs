//! Transport, envelope and errors of the Digistore24 API (reference `digistore24-api.md`
//! §1, §2). One generic [`Client::call`]; the function families build [`Params`] and read
//! the `data` it returns.

use std::time::Duration;

use reqwest::header::{ACCEPT, HeaderValue, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

/// Every assumption about the API that no source states outright (README, "What rests on a
/// guess"). Everything else in this module follows a [VERIFIED] row of the reference.
pub mod guesses {
    use super::ApiErrorKind;
    use std::time::Duration;

    /// The functions are called as `{api_url}/{function}` with `Accept: application/json`
    /// (the official PHP connector v1.2); newer Digistore24 code appends `/format/json`
    /// instead. Both are Digistore24's own, neither says the other is wrong (§1.1).
    pub fn function_url(api_url: &str, function: &str) -> String {
        format!("{api_url}/{function}")
    }

    /// The server's `code` values (§2.3): only 2, 3, 4 and 9 are stable across connector
    /// versions; that 5 (and the v1.1 number 8) mean "permission denied", 10 "key missing",
    /// 11 "internal" and 12 "too many requests" on the *server* side is our reading of the
    /// connector's v1.2 table [GUESS].
    pub fn error_kind(code: i64) -> ApiErrorKind {
        match code {
            2 | 10 => ApiErrorKind::BadKey,
            3 => ApiErrorKind::BadParameters,
            4 => ApiErrorKind::NotFound,
            5 | 8 => ApiErrorKind::PermissionDenied,
            9 => ApiErrorKind::UnknownFunction,
            11 => ApiErrorKind::Internal,
            12 => ApiErrorKind::TooManyRequests,
            _ => ApiErrorKind::Other,
        }
    }

    /// "Too many requests" may come as the envelope code 12 or as HTTP 429 (with or without
    /// `Retry-After`); no limit is documented (§2.4). We retry this many times, waiting
    /// [`FIRST_BACKOFF`] and doubling, or `Retry-After` when it is given (capped at
    /// [`MAX_BACKOFF`]).
    pub const RETRIES: u32 = 3;
    /// See [`RETRIES`].
    pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
    /// See [`RETRIES`].
    pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

    /// `listTransactions` page size: DEV says 1000 by default, the spec 500 with 1000 the
    /// maximum (§3.4); we ask for 500, which both accept.
    pub const PAGE_SIZE: u32 = 500;

    /// How long Digistore24 may still be retrying an IPN before the audit alerts on it:
    /// the first retry comes after 3 minutes, the interval grows to 24 h after 10 attempts
    /// (§4.1, [VERIFIED]); after 6 hours a working endpoint has seen several retries, so a
    /// still-missing IPN is worth a person's look [GUESS].
    pub const AUDIT_GRACE: Duration = Duration::from_secs(6 * 3600);
}

/// The HTTP timeout: connectors use 30 s and `listProducts` is known to be slow (§1.2).
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// What a Digistore24 error `code` means (see [`guesses::error_kind`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiErrorKind {
    BadKey,
    BadParameters,
    NotFound,
    PermissionDenied,
    UnknownFunction,
    Internal,
    TooManyRequests,
    Other,
}

impl ApiErrorKind {
    pub fn describe(self) -> &'static str {
        match self {
            ApiErrorKind::BadKey => "the API key was refused",
            ApiErrorKind::BadParameters => "bad parameters",
            ApiErrorKind::NotFound => "not found",
            ApiErrorKind::PermissionDenied => "the API key lacks the permission",
            ApiErrorKind::UnknownFunction => "unknown function",
            ApiErrorKind::Internal => "internal error at Digistore24",
            ApiErrorKind::TooManyRequests => "too many requests",
            ApiErrorKind::Other => "error",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Ds24Error {
    /// Digistore24 answered with `result: error`.
    #[error("Digistore24 error {code} ({}): {message}", kind.describe())]
    Api {
        kind: ApiErrorKind,
        code: i64,
        message: String,
    },
    /// HTTP 429 without an envelope, after every retry.
    #[error("Digistore24 answered HTTP 429 (too many requests) {0} times")]
    RateLimited(u32),
    /// Not an envelope: an HTML page, a proxy error, garbage.
    #[error("Digistore24 answered HTTP {status} without an API answer: {excerpt}")]
    BadResponse { status: u16, excerpt: String },
    #[error("cannot reach Digistore24 at {url}: {detail}")]
    Transport { url: String, detail: String },
    /// A function name that could not be one (it becomes part of the URL).
    #[error("`{0}` is not a Digistore24 function name (letters and digits only)")]
    BadFunctionName(String),
    #[error("the API key cannot be sent in a header")]
    BadKey,
}

impl Ds24Error {
    pub fn kind(&self) -> Option<ApiErrorKind> {
        match self {
            Ds24Error::Api { kind, .. } => Some(*kind),
            Ds24Error::RateLimited(_) => Some(ApiErrorKind::TooManyRequests),
            _ => None,
        }
    }
}

/// Form parameters as flat `(key, value)` pairs, nested ones in PHP bracket syntax
/// (`buyer[email]`, `addons[0][product_id]`; §1.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    pub fn new() -> Self {
        Params::default()
    }

    /// A top-level parameter.
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.0.push((key.to_owned(), value.into()));
        self
    }

    /// `outer[k1][k2]…=value`.
    pub fn nested(&mut self, outer: &str, path: &[&str], value: impl Into<String>) -> &mut Self {
        self.0.push((bracket_key(outer, path), value.into()));
        self
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// `outer[a][b]`.
pub fn bracket_key(outer: &str, path: &[&str]) -> String {
    let mut key = outer.to_owned();
    for part in path {
        key.push('[');
        key.push_str(part);
        key.push(']');
    }
    key
}

/// One source's API access.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    api_url: String,
    key: SecretString,
    first_backoff: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("api_url", &self.api_url)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(api_url: &str, key: SecretString) -> Result<Client, Ds24Error> {
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ipn-bridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Ds24Error::Transport {
                url: api_url.to_owned(),
                detail: e.to_string(),
            })?;
        Ok(Client {
            http,
            api_url: api_url.trim_end_matches('/').to_owned(),
            key,
            first_backoff: guesses::FIRST_BACKOFF,
        })
    }

    /// The client of a configured source; `None` when it has no `api_key`.
    pub fn for_source(source: &crate::config::Source) -> Option<Result<Client, Ds24Error>> {
        let key = source.api_key.clone()?;
        Some(Client::new(&source.api_url, key))
    }

    /// The first wait after "too many requests" (tests shorten it).
    pub fn with_first_backoff(mut self, wait: Duration) -> Client {
        self.first_backoff = wait;
        self
    }

    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// Calls `function` and returns its `data` (`Value::Null` when absent). Retries "too
    /// many requests" with back-off; every other error is returned at once.
    pub async fn call(&self, function: &str, params: &Params) -> Result<Value, Ds24Error> {
        if function.is_empty() || !function.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(Ds24Error::BadFunctionName(function.to_owned()));
        }
        let mut wait = self.first_backoff;
        let mut attempt = 0;
        loop {
            match self.call_once(function, params).await {
                Err(Attempt::TooMany { retry_after, .. }) if attempt < guesses::RETRIES => {
                    attempt += 1;
                    let pause = retry_after.unwrap_or(wait).min(guesses::MAX_BACKOFF);
                    tracing::info!(
                        function,
                        attempt,
                        wait_ms = pause.as_millis() as u64,
                        "Digistore24: too many requests, waiting"
                    );
                    tokio::time::sleep(pause).await;
                    wait = (wait * 2).min(guesses::MAX_BACKOFF);
                }
                Err(Attempt::TooMany { error, .. }) | Err(Attempt::Failed(error)) => {
                    return Err(error);
                }
                Ok(data) => return Ok(data),
            }
        }
    }

    async fn call_once(&self, function: &str, params: &Params) -> Result<Value, Attempt> {
        let url = guesses::function_url(&self.api_url, function);
        let mut key = HeaderValue::from_str(self.key.expose_secret())
            .map_err(|_| Attempt::Failed(Ds24Error::BadKey))?;
        key.set_sensitive(true);
        let response = self
            .http
            .post(&url)
            .header("X-DS-API-KEY", key)
            .header(ACCEPT, "application/json")
            .form(&params.0)
            .send()
            .await
            .map_err(|e| {
                Attempt::Failed(Ds24Error::Transport {
                    url: url.clone(),
                    detail: describe_reqwest(&e),
                })
            })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.bytes().await.map_err(|e| {
            Attempt::Failed(Ds24Error::Transport {
                url: url.clone(),
                detail: describe_reqwest(&e),
            })
        })?;
        judge(status, &body, retry_after)
    }
}

enum Attempt {
    TooMany {
        error: Ds24Error,
        retry_after: Option<Duration>,
    },
    Failed(Ds24Error),
}

/// The envelope decides; the HTTP status only when there is no envelope (§2.2).
fn judge(status: u16, body: &[u8], retry_after: Option<Duration>) -> Result<Value, Attempt> {
    let envelope = serde_json::from_slice::<Value>(body)
        .ok()
        .filter(|v| v.get("result").and_then(Value::as_str).is_some());
    let Some(mut envelope) = envelope else {
        if status == 429 {
            return Err(Attempt::TooMany {
                error: Ds24Error::RateLimited(guesses::RETRIES + 1),
                retry_after,
            });
        }
        let text = String::from_utf8_lossy(body);
        let excerpt: String = text.trim().chars().take(200).collect();
        return Err(Attempt::Failed(Ds24Error::BadResponse { status, excerpt }));
    };
    match envelope.get("result").and_then(Value::as_str) {
        Some("success") => Ok(envelope
            .get_mut("data")
            .map(Value::take)
            .unwrap_or(Value::Null)),
        _ => {
            let code = envelope.get("code").and_then(int).unwrap_or(0);
            let message = envelope
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let kind = guesses::error_kind(code);
            let error = Ds24Error::Api {
                kind,
                code,
                message,
            };
            if kind == ApiErrorKind::TooManyRequests {
                Err(Attempt::TooMany { error, retry_after })
            } else {
                Err(Attempt::Failed(error))
            }
        }
    }
}

/// A transport failure without the URL (the caller names it) and never with a header.
fn describe_reqwest(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return format!("no answer within {} s", TIMEOUT.as_secs());
    }
    if e.is_connect() {
        return "connection failed".to_owned();
    }
    let mut parts = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    if parts.is_empty() {
        "request failed".to_owned()
    } else {
        parts.join(": ")
    }
}

/// An integer given as a number or a numeric string.
pub fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// An id or amount given as a string or a number, as text (`None` for empty, null, false).
pub fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A Digistore24 boolean: `"Y"`/`"N"` (also `true`, `1`, `"yes"`, `"true"`).
pub fn yes(v: &Value) -> bool {
    match v {
        Value::String(s) => matches!(
            s.trim().to_ascii_lowercase().as_str(),
            "y" | "yes" | "1" | "true" | "t"
        ),
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_i64() == Some(1),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bracket_keys_nest() {
        assert_eq!(bracket_key("buyer", &["email"]), "buyer[email]");
        assert_eq!(
            bracket_key("addons", &["0", "product_id"]),
            "addons[0][product_id]"
        );
    }

    #[test]
    fn lenient_values_accept_strings_numbers_and_y_n() {
        assert_eq!(text(&serde_json::json!(293440)).as_deref(), Some("293440"));
        assert_eq!(text(&serde_json::json!("49.00")).as_deref(), Some("49.00"));
        assert_eq!(text(&serde_json::json!(false)), None);
        assert_eq!(int(&serde_json::json!("3")), Some(3));
        assert!(yes(&serde_json::json!("Y")));
        assert!(!yes(&serde_json::json!("N")));
    }

    #[test]
    fn the_envelope_decides_not_the_http_status() {
        let ok = br#"{"api_version":"1.2","result":"success","data":{"a":1}}"#;
        assert!(matches!(judge(400, ok, None), Ok(v) if v["a"] == 1));
        let err = br#"{"api_version":"1.2","result":"error","code":"4","message":"gone"}"#;
        match judge(200, err, None) {
            Err(Attempt::Failed(Ds24Error::Api { kind, code, .. })) => {
                assert_eq!((kind, code), (ApiErrorKind::NotFound, 4));
            }
            _ => panic!("expected an API error"),
        }
        assert!(matches!(
            judge(200, b"<html>ok</html>", None),
            Err(Attempt::Failed(Ds24Error::BadResponse { status: 200, .. }))
        ));
        assert!(matches!(
            judge(429, b"slow down", Some(Duration::from_secs(2))),
            Err(Attempt::TooMany {
                retry_after: Some(_),
                ..
            })
        ));
    }
}
