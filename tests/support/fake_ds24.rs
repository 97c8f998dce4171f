//! A fake Digistore24 API for integration tests: a real HTTP server (axum, `127.0.0.1:0`)
//! that behaves as `shared/reference/digistore24-api.md` describes.
//!
//! Mechanics (reference §1, §2):
//! * `POST /api/call/{function}` (also `…/{function}/format/json`); parameters from the
//!   urlencoded body and the query string, bracket keys kept as sent (`search[role]`).
//! * Auth: the `X-DS-API-KEY` header only. Missing → code 10 (`API key missing`), wrong →
//!   code 2 (`Invalid API key`). A key in the URL or the body is recorded so tests can
//!   assert it never happens.
//! * Every API answer is HTTP 200 + `{"api_version":"1.2","current_time":…,"result":…}`,
//!   with `data` on success and integer `code` + `message` on error (texts are GUESSES).
//! * Ids and amounts come as a mix of strings and numbers; booleans as `"Y"`/`"N"`.
//! * [`FakeDs24::too_many`] answers the next N calls with code 12; [`FakeDs24::http_429`]
//!   with a bare HTTP 429.
//! * A read-only key ([`FakeDs24::set_read_only`]) gets code 5 on `createBuyUrl` and
//!   `ipnSetup`.
//!
//! Functions: `ping`, `getUserInfo`, `listProducts` (`data.products[]`), `createBuyUrl`
//! (code 3 on a bad `buyer[country]`, code 4 on an unknown product), `ipnSetup` /
//! `ipnInfo` (connections keyed by `domain_id`), `listTransactions` (filters `from`/`to` in
//! the relative forms `-Nd|h|m|s` and `now` against each transaction's age, `page_no`,
//! `page_size`). Any other function: code 9 (`Unknown function`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub const API_KEY: &str = "1234567-FakeDs24KeyAbCdEfGhIjKlMnOpQrStUvWx";

#[derive(Debug, Clone)]
pub struct FakeCall {
    pub function: String,
    pub path: String,
    pub query: Option<String>,
    pub header_key: Option<String>,
    pub params: Vec<(String, String)>,
}

impl FakeCall {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A `transaction_list[]` row and how old it is.
#[derive(Debug, Clone)]
pub struct FakeTransaction {
    pub id: u64,
    pub purchase_id: String,
    pub kind: String,
    pub amount: String,
    pub email: String,
    pub age_secs: u64,
}

#[derive(Default)]
struct State_ {
    key: String,
    read_only: bool,
    user_name: String,
    products: Vec<(u64, String)>,
    transactions: Vec<FakeTransaction>,
    connections: BTreeMap<String, BTreeMap<String, String>>,
    calls: Vec<FakeCall>,
    too_many: u32,
    http_429: u32,
    next_buy_url: u64,
}

type Shared = Arc<Mutex<State_>>;

pub struct FakeDs24 {
    /// `http://127.0.0.1:<port>/api/call`: the `api_url` to configure.
    pub api_url: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeDs24 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(s: &Shared) -> MutexGuard<'_, State_> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

impl FakeDs24 {
    pub async fn start() -> FakeDs24 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake Digistore24: bind");
        let addr: SocketAddr = listener.local_addr().expect("fake Digistore24: address");
        let shared: Shared = Arc::new(Mutex::new(State_ {
            key: API_KEY.into(),
            user_name: "vendor-demo".into(),
            products: vec![(412346, "Basic".into()), (412350, "Pro".into())],
            next_buy_url: 123_456,
            ..State_::default()
        }));
        let app = Router::new()
            .route("/api/call/{function}", axum::routing::any(handle))
            .route(
                "/api/call/{function}/format/json",
                axum::routing::any(handle),
            )
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeDs24 {
            api_url: format!("http://{addr}/api/call"),
            shared,
            task,
        }
    }

    pub fn calls(&self) -> Vec<FakeCall> {
        lock(&self.shared).calls.clone()
    }

    pub fn calls_to(&self, function: &str) -> Vec<FakeCall> {
        self.calls()
            .into_iter()
            .filter(|c| c.function == function)
            .collect()
    }

    pub fn set_read_only(&self, read_only: bool) {
        lock(&self.shared).read_only = read_only;
    }

    pub fn set_products(&self, products: &[(u64, &str)]) {
        lock(&self.shared).products = products.iter().map(|(i, n)| (*i, (*n).into())).collect();
    }

    pub fn push_transaction(&self, t: FakeTransaction) {
        lock(&self.shared).transactions.push(t);
    }

    pub fn too_many(&self, n: u32) {
        lock(&self.shared).too_many = n;
    }

    pub fn http_429(&self, n: u32) {
        lock(&self.shared).http_429 = n;
    }

    pub fn connection(&self, domain_id: &str) -> Option<BTreeMap<String, String>> {
        lock(&self.shared).connections.get(domain_id).cloned()
    }

    pub fn connection_count(&self) -> usize {
        lock(&self.shared).connections.len()
    }
}

fn envelope_ok(data: Value) -> Response {
    Json200(json!({
        "api_version": "1.2",
        "current_time": "2026-08-18 09:02:11",
        "runtime_seconds": 0.012,
        "result": "success",
        "data": data,
    }))
    .into_response()
}

fn envelope_err(code: i64, message: &str) -> Response {
    Json200(json!({
        "api_version": "1.2",
        "current_time": "2026-08-18 09:02:11",
        "result": "error",
        "code": code,
        "message": message,
    }))
    .into_response()
}

struct Json200(Value);

impl IntoResponse for Json200 {
    fn into_response(self) -> Response {
        (
            StatusCode::OK,
            [("content-type", "application/json")],
            self.0.to_string(),
        )
            .into_response()
    }
}

async fn handle(
    State(shared): State<Shared>,
    Path(function): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    let mut params: Vec<(String, String)> = query
        .as_deref()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    params.extend(form_urlencoded::parse(&body).into_owned());
    let header_key = headers
        .get("x-ds-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let call = FakeCall {
        function: function.clone(),
        path: uri.path().to_owned(),
        query,
        header_key: header_key.clone(),
        params,
    };
    let mut s = lock(&shared);
    s.calls.push(call.clone());
    match header_key {
        None => return envelope_err(10, "API key missing"),
        Some(k) if k != s.key => return envelope_err(2, "Invalid API key"),
        Some(_) => {}
    }
    if s.too_many > 0 {
        s.too_many -= 1;
        return envelope_err(12, "Too many requests to the server");
    }
    if s.http_429 > 0 {
        s.http_429 -= 1;
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "0")],
            "slow down",
        )
            .into_response();
    }
    let p = |name: &str| call.param(name).map(str::to_owned);
    match function.as_str() {
        "ping" => envelope_ok(json!({"server_time": "2026-08-18 09:02:11"})),
        "getUserInfo" => envelope_ok(json!({
            "user_id": 4711, "user_name": s.user_name, "granted_roles": "user,merchant",
        })),
        "listProducts" => {
            let products: Vec<Value> = s
                .products
                .iter()
                .enumerate()
                .map(|(i, (id, name))| {
                    // Alternate strings and numbers, as the real API mixes them.
                    let id = if i % 2 == 0 {
                        json!(id.to_string())
                    } else {
                        json!(id)
                    };
                    json!({"id": id, "name": name, "language": "de", "product_group_id": false})
                })
                .collect();
            envelope_ok(json!({ "products": products }))
        }
        "createBuyUrl" => {
            if s.read_only {
                return envelope_err(5, "Full access required");
            }
            let Some(product) = p("product_id") else {
                return envelope_err(3, "Parameter product_id is required");
            };
            if !s.products.iter().any(|(id, _)| id.to_string() == product) {
                return envelope_err(4, &format!("Product {product} not found"));
            }
            if let Some(country) = p("buyer[country]")
                && (country.len() != 2 || !country.chars().all(|c| c.is_ascii_uppercase()))
            {
                return envelope_err(3, "Invalid country code");
            }
            s.next_buy_url += 1;
            let id = s.next_buy_url;
            let valid_until = match p("valid_until").as_deref() {
                Some("forever") => String::new(),
                _ => "2026-08-19 09:05:00".into(),
            };
            envelope_ok(json!({
                "id": id.to_string(),
                "url": format!("https://www.checkout-ds24.com/offer/{id}/abcdefgh1234567/{product}"),
                "valid_until": valid_until,
                "upgrade_status": "none",
            }))
        }
        "ipnSetup" => {
            if s.read_only {
                return envelope_err(5, "Full access required");
            }
            let Some(url) = p("ipn_url") else {
                return envelope_err(3, "Parameter ipn_url is required");
            };
            if !url.starts_with("https://") {
                return envelope_err(3, "Please only use secure URLs with https://");
            }
            let domain_id = p("domain_id").unwrap_or_default();
            let settings: BTreeMap<String, String> = call.params.iter().cloned().collect();
            let created = !s.connections.contains_key(&domain_id);
            s.connections.insert(domain_id.clone(), settings);
            envelope_ok(json!({
                "created": if created { "Y" } else { "N" },
                "updated": if created { "N" } else { "Y" },
                "deleted": "N",
                "domain_id": domain_id,
                "sha_passphrase": p("sha_passphrase").unwrap_or_default(),
                "ipn_config_id": 293440,
                "ipn_id": 293440,
            }))
        }
        "ipnInfo" => {
            let domain_id = p("domain_id").unwrap_or_default();
            match s.connections.get(&domain_id) {
                Some(c) => envelope_ok(json!({
                    "have_settings": "Y",
                    "ipn_url": c.get("ipn_url"),
                    "domain_id": domain_id,
                    "product_ids": c.get("product_ids"),
                })),
                None => envelope_ok(json!({"have_settings": "N"})),
            }
        }
        "listTransactions" => {
            let from = p("from").unwrap_or_else(|| "-24h".into());
            let to = p("to").unwrap_or_else(|| "now".into());
            let (Some(oldest), Some(newest)) = (relative(&from), relative(&to)) else {
                return envelope_err(3, "Invalid date");
            };
            let rows: Vec<&FakeTransaction> = s
                .transactions
                .iter()
                .filter(|t| t.age_secs <= oldest && t.age_secs >= newest)
                .collect();
            let size: usize = p("page_size").and_then(|v| v.parse().ok()).unwrap_or(1000);
            let page: usize = p("page_no").and_then(|v| v.parse().ok()).unwrap_or(1);
            let page_count = rows.len().div_ceil(size.max(1)).max(1);
            let list: Vec<Value> = rows
                .iter()
                .skip((page - 1) * size)
                .take(size)
                .map(|t| {
                    json!({
                        "id": t.id, // a number, though most ids come as strings
                        "purchase_id": t.purchase_id,
                        "amount": t.amount,
                        "currency": "EUR",
                        "transaction_type": t.kind,
                        "transaction_type_msg": "Zahlung",
                        "created_at": "2026-08-18 08:41:48",
                        "buyer": {"id": "99", "email": t.email, "first_name": "Jane", "last_name": "Doe"},
                    })
                })
                .collect();
            envelope_ok(json!({
                "from": from, "to": to,
                "page_no": page.to_string(), "page_size": size, "page_count": page_count.to_string(),
                "transaction_list": list,
            }))
        }
        _ => envelope_err(9, &format!("Invalid function call: {function}")),
    }
}

/// Seconds ago of `now` or `-N(s|m|h|d)`.
fn relative(v: &str) -> Option<u64> {
    if v == "now" {
        return Some(0);
    }
    let rest = v.strip_prefix('-')?;
    let (n, unit) = rest.split_at(rest.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    let size = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    Some(n * size)
}
