//! A fake Konnektive CRM for integration tests: a real HTTP server (axum on tokio, bound to
//! `127.0.0.1:0`) that behaves as `shared/reference/konnektive-api.md` describes, with
//! scriptable faults.
//!
//! Use it from a test binary with
//! `#[path = "support/fake_konnektive.rs"] mod fake_konnektive;`, then
//! `let fake = FakeKonnektive::start(FakeConfig::default()).await;` and point a target's
//! `base_url` at `fake.base_url`.
//!
//! Mechanics (reference §1, §2, §7):
//! * Any method; parameters merged from the query string and an urlencoded body (the last
//!   value of a repeated name wins, as in PHP). Multipart bodies are not parsed.
//! * Paths `/{section}/{action}/` (the trailing slash is optional here; [`FakeRequest::path`]
//!   keeps the raw path so tests can assert it). Unknown paths: HTTP 404 HTML.
//! * Every API-level answer is HTTP 200 + JSON `{"result": …, "message": …}`.
//! * Checked first, on every endpoint: credentials (`Invalid login credentials`), then the
//!   allow-list (`IP must be whitelisted - <peer ip>`), then `denied_endpoints`
//!   (`Permission denied: API user is not allowed to use <endpoint>`). The last text is a
//!   GUESS, as is every text marked so below.
//!
//! Endpoints:
//! * `order/import`: requires `paySource`, `firstName`, `lastName`, `emailAddress`, the
//!   billing `address1`, `city`, `postalCode`, `country` (reference §3.1 "req") and the
//!   shipping `shipAddress1`, `shipCity`, `shipPostalCode`, `shipCountry` (recorded, E3);
//!   every missing one is named in one validation object, field → `is a required field`.
//!   A `state` or `shipState` longer than 6 characters (§5) is refused with a validation
//!   object, field → `Not a valid input. Must be at most 6 characters` (GUESS text). The
//!   campaign must exist and every `productN_id` (N = 1, 2, … consecutively) must be one of
//!   its campaign product ids, else `No products exist in the order` (E4). Creates an order
//!   (10-char uppercase hex `orderId`, integer `customerId` reused per e-mail, one hex
//!   `purchaseId` per item, one SALE transaction) and answers E1, or E1b (`PENDING`) when
//!   `qa_hold`. Prices default to 0.00; a line costs `qty × price + shipPrice` (shipping
//!   once per line: GUESS, the reference does not say).
//! * `order/query`: filters `orderId`, `emailAddress` (case-insensitive), `campaignId`,
//!   `customerId`, `orderStatus`; `startDate`/`endDate` (`MM/DD/YYYY`, times ignored) are
//!   required without `orderId` and compared with the order's creation *day*;
//!   `resultsPerPage` (default 25, max 200), `page`. Rows as E8 (`items` an object keyed by
//!   campaign product id, `custom1..5`, `sourceValue1..5`). No hits:
//!   `No orders matching those parameters could be found`.
//! * Currencies: every campaign books in one currency, [`DEFAULT_CURRENCY`] (EUR) unless
//!   [`FakeConfig::currencies`] / [`FakeKonnektive::set_campaign_currency`] say otherwise;
//!   `campaign/query` names it as the campaign's `currency` (E7; can be left out, the name is
//!   a GUESS), and `order/import` books every order in it, whatever was sent
//!   (`currencyCode` / `baseCurrencyCode` of the import answer and of `order/query` rows).
//! * `campaign/query` (E7), `order/qa` (E2), `transactions/query` (E9; filters `orderId`,
//!   `purchaseId`, `customerId`, `txnType`, `isChargedback`, `merchantTxnId`; paging; no
//!   hits: `No transactions matching those parameters could be found`).
//! * `transactions/refund` (E9) on a SALE or CAPTURE: refuses without `externalRefund=1`
//!   (GUESS text); creates a REFUND transaction recording `refundMerchantTxnId` as its
//!   `merchantTxnId` and whether it was external; sets the order `REFUNDED`, lowers
//!   `refundRemaining`; `cancelPurchase=1` cancels the purchases. `fullRefund=1` refunds all
//!   that remains. A `refundAmount` above what remains is refused, with or without
//!   `fullRefund`, validation-style (`{"refundAmount": "Refund amount … exceeds the amount
//!   remaining to be refunded (…)"}`, GUESS text), so a too-large refund cannot pass
//!   unnoticed. A refund of an order with nothing remaining answers `Transaction has already
//!   been fully refunded` (GUESS).
//! * `transactions/update` (E10, `markChargeback`/`revertChargeback`); marking a transaction
//!   that is already charged back answers `Transaction is already marked as a chargeback`
//!   (GUESS).
//! * `order/cancel` and `purchase/cancel` (E11); cancelling a cancelled order or purchase
//!   answers `Order is already cancelled` / `Purchase is already cancelled` (GUESS).
//!   `order/cancel` cancels every purchase of the order too.
//! * With `object_messages`, the refund/update/cancel successes carry an object instead of a
//!   string (the reference asks the client to accept both); the refund's object carries the
//!   new REFUND `transactionId`.
//! * [`FakeKonnektive::push_transaction`] adds a transaction by hand (a declined sale, an
//!   upsale) so tests can check which transaction the client picks.
//!
//! Faults: [`FakeKonnektive::push_behaviour`] queues one-shot [`Behaviour`]s per endpoint
//! (FIFO); when an endpoint's queue is empty, [`FakeKonnektive::set_chaos`] (seeded,
//! probabilities) may pick one; otherwise the request is served normally. A fault does not
//! apply the request unless it says so (`CreateThenHang`, `AfterApply`).
//!
//! State lives behind a `std::sync::Mutex` that is never held across an `.await`. The server
//! task is aborted when the [`FakeKonnektive`] is dropped (or by [`FakeKonnektive::shutdown`]).
//! Creation times are UTC "now" unless pinned with [`FakeConfig::now`] /
//! [`FakeKonnektive::set_now`] (the real API uses the account's timezone).

#![allow(dead_code)]

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The currency a campaign books in unless [`FakeConfig::currencies`] says otherwise (the
/// reference's examples are in EUR).
pub const DEFAULT_CURRENCY: &str = "EUR";

/// How the fake is set up at start.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    pub login_id: String,
    pub password: String,
    /// Whether the caller's IP is on the API user's allow-list.
    pub allowed: bool,
    /// Campaign id → its campaign product ids.
    pub campaigns: BTreeMap<u64, Vec<u64>>,
    /// Campaign id → the currency it books in, as `campaign/query` reports it; `None` books
    /// [`DEFAULT_CURRENCY`] but leaves the currency out of `campaign/query` (the field is a
    /// GUESS, reference E7). A campaign not listed books [`DEFAULT_CURRENCY`] and says so.
    pub currencies: BTreeMap<u64, Option<String>>,
    /// Imports land in QA (`orderStatus` PENDING) until `order/qa` approves them.
    pub qa_hold: bool,
    /// Endpoints (e.g. `order/qa`) the API user has no permission for.
    pub denied_endpoints: Vec<String>,
    /// Refund/update/cancel successes answer with an object message instead of a string.
    pub object_messages: bool,
    /// Pinned creation time `YYYY-MM-DD HH:MM:SS` (account timezone); `None` = UTC now.
    pub now: Option<String>,
}

impl Default for FakeConfig {
    /// `ds24bridge` / `secret`, allow-listed, campaign 12 with products 31 and 32, no QA.
    fn default() -> Self {
        FakeConfig {
            login_id: "ds24bridge".to_owned(),
            password: "secret".to_owned(),
            allowed: true,
            campaigns: BTreeMap::from([(12, vec![31, 32])]),
            currencies: BTreeMap::new(),
            qa_hold: false,
            denied_endpoints: Vec::new(),
            object_messages: false,
            now: None,
        }
    }
}

/// A scripted answer for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Behaviour {
    /// Serve the request as the real API would.
    Normal,
    /// HTTP 200 `{"result":"ERROR","message":<text>}`; nothing applied.
    Error(String),
    /// HTTP 200 `{"result":"ERROR","message":<object>}`; nothing applied.
    ValidationError(Value),
    /// HTTP 502 with an HTML page (a load balancer); nothing applied.
    Html502,
    /// HTTP 200 with an empty body; nothing applied.
    EmptyBody,
    /// This status with a short HTML body and an optional `Retry-After`; nothing applied.
    Status(u16, Option<String>),
    /// Wait, then serve normally. If the client gives up first, the connection closes and
    /// nothing is applied (the handler is dropped before it runs).
    Delay(Duration),
    /// Serve normally (the order is created), then hold the answer back this long.
    CreateThenHang(Duration),
    /// Send the status line and a few body bytes, then cut the connection; nothing applied.
    DropConnection,
    /// Apply the request normally, then answer with the inner fault instead
    /// (e.g. `AfterApply(Box::new(Html502))`: the order exists but the client sees a 502).
    AfterApply(Box<Behaviour>),
}

impl Behaviour {
    pub fn after_apply(inner: Behaviour) -> Behaviour {
        Behaviour::AfterApply(Box::new(inner))
    }
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct FakeRequest {
    /// Raw path, e.g. `/order/import/`.
    pub path: String,
    /// Normalised endpoint, e.g. `order/import`.
    pub endpoint: String,
    pub method: String,
    /// Raw query string (empty when none).
    pub query: String,
    pub content_type: Option<String>,
    /// Query-string then body parameters, in order received.
    pub params: Vec<(String, String)>,
    pub peer: SocketAddr,
    pub at: Instant,
}

impl FakeRequest {
    /// The value of `name` (the last one wins).
    pub fn param(&self, name: &str) -> Option<&str> {
        param(&self.params, name)
    }
}

/// One line of a created order.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeItem {
    pub product_id: u64,
    pub qty: u32,
    pub price_cents: i64,
    pub ship_price_cents: i64,
    pub purchase_id: String,
    pub purchase_status: String,
}

/// An order created by `order/import`.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeOrder {
    pub order_id: String,
    pub actual_order_id: u64,
    pub customer_id: u64,
    pub campaign_id: u64,
    /// `YYYY-MM-DD HH:MM:SS`.
    pub date_created: String,
    pub order_status: String,
    pub review_status: Option<String>,
    pub total_cents: i64,
    pub refund_remaining_cents: i64,
    pub cancel_reason: Option<String>,
    /// The campaign's currency: an order is booked in it whatever the import says.
    pub currency: String,
    pub items: Vec<FakeItem>,
    /// Every parameter the import carried (credentials included).
    pub params: Vec<(String, String)>,
}

impl FakeOrder {
    pub fn param(&self, name: &str) -> Option<&str> {
        param(&self.params, name)
    }
}

/// A transaction (SALE at import, REFUND per refund, others by `push_transaction`).
#[derive(Debug, Clone, PartialEq)]
pub struct FakeTransaction {
    pub transaction_id: u64,
    pub order_id: String,
    pub customer_id: u64,
    pub txn_type: String,
    /// `SUCCESS`, `HARD_DECLINE`, `SOFT_DECLINE`.
    pub response_type: String,
    pub amount_cents: i64,
    pub date_created: String,
    pub is_chargedback: bool,
    pub chargeback_amount_cents: Option<i64>,
    pub chargeback_date: Option<String>,
    pub chargeback_reason_code: Option<String>,
    pub chargeback_note: Option<String>,
    pub merchant_txn_id: Option<String>,
    /// The transaction a REFUND refers to.
    pub parent_transaction_id: Option<u64>,
    /// A REFUND made with `externalRefund=1` (no processor was asked).
    pub external: bool,
}

/// Random faults for chaos tests: for every request whose endpoint has no queued behaviour,
/// draw r in [0, 1) and pick the first fault whose cumulative probability exceeds r. A drawn
/// `ValidationError` is served to `order/import` only (a validation object names the fields
/// of what was sent; a query with fixed parameters is not refused at random): elsewhere the
/// draw is served normally.
#[derive(Debug, Clone)]
struct Chaos {
    rng: SplitMix64,
    faults: Vec<(f64, Behaviour)>,
}

#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct FakeState {
    cfg: FakeConfig,
    orders: Vec<FakeOrder>,
    transactions: Vec<FakeTransaction>,
    requests: Vec<FakeRequest>,
    behaviours: HashMap<String, VecDeque<Behaviour>>,
    chaos: Option<Chaos>,
    customers: HashMap<String, u64>,
    ids: SplitMix64,
    next_customer_id: u64,
    next_actual_order_id: u64,
    next_transaction_id: u64,
}

type Shared = Arc<Mutex<FakeState>>;

/// The running fake. Dropping it stops the server.
pub struct FakeKonnektive {
    /// `http://127.0.0.1:<port>`, no trailing slash.
    pub base_url: String,
    pub addr: SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKonnektive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeKonnektive {
    /// Binds `127.0.0.1:0` and serves in a spawned task.
    pub async fn start(cfg: FakeConfig) -> FakeKonnektive {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake Konnektive: bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("fake Konnektive: local address");
        let shared: Shared = Arc::new(Mutex::new(FakeState {
            cfg,
            orders: Vec::new(),
            transactions: Vec::new(),
            requests: Vec::new(),
            behaviours: HashMap::new(),
            chaos: None,
            customers: HashMap::new(),
            ids: SplitMix64(0x4B4F_4E4E_454B_5456),
            next_customer_id: 501,
            next_actual_order_id: 49_835,
            next_transaction_id: 88_001,
        }));
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await;
        });
        FakeKonnektive {
            base_url: format!("http://{addr}"),
            addr,
            shared,
            task,
        }
    }

    /// Stops the server and waits for its accept loop to end.
    pub async fn shutdown(self) {
        self.task.abort();
    }

    fn state(&self) -> MutexGuard<'_, FakeState> {
        lock(&self.shared)
    }

    /// Every order created, in creation order.
    pub fn orders(&self) -> Vec<FakeOrder> {
        self.state().orders.clone()
    }

    /// The reference (`custom1`) of every order created, in creation order; fails the test
    /// if one was imported twice.
    pub fn references_imported_once(&self) -> Vec<String> {
        let found: Vec<String> = self
            .orders()
            .iter()
            .map(|o| o.param("custom1").unwrap_or_default().to_owned())
            .collect();
        let unique: std::collections::BTreeSet<&String> = found.iter().collect();
        assert_eq!(
            unique.len(),
            found.len(),
            "an order was imported twice: {found:?}"
        );
        found
    }

    /// Every transaction, in creation order.
    pub fn transactions(&self) -> Vec<FakeTransaction> {
        self.state().transactions.clone()
    }

    /// Every request received, in arrival order.
    pub fn requests(&self) -> Vec<FakeRequest> {
        self.state().requests.clone()
    }

    /// The requests received for `endpoint` (e.g. `order/import`).
    pub fn requests_to(&self, endpoint: &str) -> Vec<FakeRequest> {
        let endpoint = normalise(endpoint);
        self.state()
            .requests
            .iter()
            .filter(|r| r.endpoint == endpoint)
            .cloned()
            .collect()
    }

    /// Queues a one-shot behaviour for the next request to `endpoint` (FIFO per endpoint).
    pub fn push_behaviour(&self, endpoint: &str, behaviour: Behaviour) {
        self.state()
            .behaviours
            .entry(normalise(endpoint))
            .or_default()
            .push_back(behaviour);
    }

    /// Random faults for every request without a queued behaviour: `(probability, fault)`
    /// pairs (their sum at most 1), drawn from a generator seeded with `seed`.
    pub fn set_chaos(&self, seed: u64, faults: Vec<(f64, Behaviour)>) {
        self.state().chaos = Some(Chaos {
            rng: SplitMix64(seed),
            faults,
        });
    }

    pub fn clear_chaos(&self) {
        self.state().chaos = None;
    }

    pub fn set_password(&self, password: &str) {
        self.state().cfg.password = password.to_owned();
    }

    pub fn set_allowed(&self, allowed: bool) {
        self.state().cfg.allowed = allowed;
    }

    pub fn set_qa_hold(&self, qa_hold: bool) {
        self.state().cfg.qa_hold = qa_hold;
    }

    pub fn set_denied_endpoints(&self, endpoints: &[&str]) {
        self.state().cfg.denied_endpoints = endpoints.iter().map(|e| normalise(e)).collect();
    }

    pub fn set_campaign(&self, campaign_id: u64, products: Vec<u64>) {
        self.state().cfg.campaigns.insert(campaign_id, products);
    }

    /// Sets the currency `campaign_id` books in; `None` keeps [`DEFAULT_CURRENCY`] but leaves
    /// the currency out of `campaign/query`.
    pub fn set_campaign_currency(&self, campaign_id: u64, currency: Option<&str>) {
        self.state()
            .cfg
            .currencies
            .insert(campaign_id, currency.map(str::to_owned));
    }

    /// Adds a transaction to an existing order (created "now"): e.g. a declined `SALE` or a
    /// later upsale. Returns its id, or `None` when the order does not exist.
    pub fn push_transaction(
        &self,
        order_id: &str,
        txn_type: &str,
        response_type: &str,
        amount_cents: i64,
    ) -> Option<u64> {
        let mut st = self.state();
        let customer_id = st
            .orders
            .iter()
            .find(|o| o.order_id == order_id)?
            .customer_id;
        let transaction_id = st.next_transaction_id;
        st.next_transaction_id += 1;
        let now = st.now();
        st.transactions.push(FakeTransaction {
            transaction_id,
            order_id: order_id.to_owned(),
            customer_id,
            txn_type: txn_type.to_owned(),
            response_type: response_type.to_owned(),
            amount_cents,
            date_created: now,
            is_chargedback: false,
            chargeback_amount_cents: None,
            chargeback_date: None,
            chargeback_reason_code: None,
            chargeback_note: None,
            merchant_txn_id: None,
            parent_transaction_id: None,
            external: false,
        });
        Some(transaction_id)
    }

    /// Pins the creation time (`YYYY-MM-DD HH:MM:SS`), or unpins it with `None`.
    pub fn set_now(&self, now: Option<&str>) {
        self.state().cfg.now = now.map(str::to_owned);
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, FakeState> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn normalise(endpoint: &str) -> String {
    endpoint.trim_matches('/').to_owned()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

// ---------------------------------------------------------------------------------------
// HTTP layer
// ---------------------------------------------------------------------------------------

async fn handle(
    State(shared): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let query = uri.query().unwrap_or("").to_owned();
    let mut params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let is_form = content_type
        .as_deref()
        .is_none_or(|ct| ct.starts_with("application/x-www-form-urlencoded"));
    if is_form {
        params.extend(form_urlencoded::parse(&body).into_owned());
    }
    let request = FakeRequest {
        path: uri.path().to_owned(),
        endpoint: normalise(uri.path()),
        method: method.to_string(),
        query,
        content_type,
        params,
        peer,
        at: Instant::now(),
    };

    let behaviour = {
        let mut st = lock(&shared);
        st.requests.push(request.clone());
        let queued = st
            .behaviours
            .get_mut(&request.endpoint)
            .and_then(VecDeque::pop_front);
        match queued {
            Some(b) => b,
            None => match st.chaos.as_mut() {
                Some(chaos) => {
                    let r = chaos.rng.next_f64();
                    let mut acc = 0.0;
                    chaos
                        .faults
                        .iter()
                        .find(|(p, _)| {
                            acc += p;
                            r < acc
                        })
                        .map(|(_, b)| b.clone())
                        .filter(|b| {
                            !matches!(b, Behaviour::ValidationError(_))
                                || request.endpoint == "order/import"
                        })
                        .unwrap_or(Behaviour::Normal)
                }
                None => Behaviour::Normal,
            },
        }
    };

    // Unwrap nested AfterApply: apply once, then answer with the innermost fault.
    let (mut behaviour, mut applied) = (behaviour, None);
    while let Behaviour::AfterApply(inner) = behaviour {
        if applied.is_none() {
            applied = Some(serve_normally(&shared, &request));
        }
        behaviour = *inner;
    }

    match behaviour {
        Behaviour::Normal | Behaviour::AfterApply(_) => {
            applied.unwrap_or_else(|| serve_normally(&shared, &request))
        }
        Behaviour::Delay(d) => {
            tokio::time::sleep(d).await;
            applied.unwrap_or_else(|| serve_normally(&shared, &request))
        }
        Behaviour::CreateThenHang(d) => {
            let reply = applied.unwrap_or_else(|| serve_normally(&shared, &request));
            tokio::time::sleep(d).await;
            reply
        }
        Behaviour::Error(text) => json_response(envelope_error(Value::String(text))),
        Behaviour::ValidationError(map) => json_response(envelope_error(map)),
        Behaviour::Html502 => html_response(
            StatusCode::BAD_GATEWAY,
            "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad \
             Gateway</h1></center><hr><center>nginx</center></body></html>",
            None,
        ),
        Behaviour::EmptyBody => {
            let mut resp = Response::new(Body::empty());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Behaviour::Status(code, retry_after) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            html_response(
                status,
                &format!("<html><body><h1>{code}</h1></body></html>"),
                retry_after.as_deref(),
            )
        }
        Behaviour::DropConnection => {
            let mut resp = Response::new(Body::new(CutBody { sent: false }));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
    }
}

/// Sends a few bytes, then fails, which makes hyper abort the connection mid-answer.
struct CutBody {
    sent: bool,
}

impl hyper::body::Body for CutBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        if self.sent {
            Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "fake Konnektive: connection dropped on purpose",
            ))))
        } else {
            self.sent = true;
            Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(
                b"{\"result\":\"SUC",
            )))))
        }
    }
}

fn json_response(value: Value) -> Response {
    let mut resp = Response::new(Body::from(value.to_string()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn html_response(status: StatusCode, html: &str, retry_after: Option<&str>) -> Response {
    let mut resp = Response::new(Body::from(html.to_owned()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Some(ra) = retry_after.and_then(|ra| HeaderValue::from_str(ra).ok()) {
        resp.headers_mut().insert(header::RETRY_AFTER, ra);
    }
    resp
}

fn envelope_ok(message: Value) -> Value {
    json!({"result": "SUCCESS", "message": message})
}

fn envelope_error(message: Value) -> Value {
    json!({"result": "ERROR", "message": message})
}

fn error_text(text: &str) -> Value {
    envelope_error(Value::String(text.to_owned()))
}

/// `{"field":"is a required field", …}` for the missing ones, or `None`.
fn require(params: &[(String, String)], fields: &[&str]) -> Option<Value> {
    let missing: Map<String, Value> = fields
        .iter()
        .filter(|f| param(params, f).is_none_or(|v| v.trim().is_empty()))
        .map(|f| ((*f).to_owned(), Value::from("is a required field")))
        .collect();
    (!missing.is_empty()).then(|| envelope_error(Value::Object(missing)))
}

// ---------------------------------------------------------------------------------------
// API layer (synchronous; runs with the lock held, never across an await)
// ---------------------------------------------------------------------------------------

fn serve_normally(shared: &Shared, req: &FakeRequest) -> Response {
    let mut st = lock(shared);
    let endpoint = req.endpoint.as_str();
    let known = [
        "order/import",
        "order/query",
        "campaign/query",
        "order/qa",
        "transactions/query",
        "transactions/refund",
        "transactions/update",
        "order/cancel",
        "purchase/cancel",
    ];
    if !known.contains(&endpoint) {
        return html_response(
            StatusCode::NOT_FOUND,
            "<html><body><h1>404 Not Found</h1></body></html>",
            None,
        );
    }
    let p = &req.params;
    if param(p, "loginId") != Some(st.cfg.login_id.as_str())
        || param(p, "password") != Some(st.cfg.password.as_str())
    {
        return json_response(error_text("Invalid login credentials"));
    }
    if !st.cfg.allowed {
        return json_response(error_text(&format!(
            "IP must be whitelisted - {}",
            req.peer.ip()
        )));
    }
    if st.cfg.denied_endpoints.iter().any(|e| e == endpoint) {
        return json_response(error_text(&format!(
            "Permission denied: API user is not allowed to use {endpoint}"
        )));
    }
    let value = match endpoint {
        "order/import" => order_import(&mut st, p),
        "order/query" => order_query(&st, p),
        "campaign/query" => campaign_query(&st, p),
        "order/qa" => order_qa(&mut st, p),
        "transactions/query" => transactions_query(&st, p),
        "transactions/refund" => transactions_refund(&mut st, p),
        "transactions/update" => transactions_update(&mut st, p),
        "order/cancel" => order_cancel(&mut st, p),
        _ => purchase_cancel(&mut st, p),
    };
    json_response(value)
}

impl FakeState {
    fn now(&self) -> String {
        match &self.cfg.now {
            Some(now) => now.clone(),
            None => utc_now(),
        }
    }

    fn hex_id(&mut self) -> String {
        loop {
            let id = format!("{:010X}", self.ids.next_u64() & 0xFF_FFFF_FFFF);
            let taken = self
                .orders
                .iter()
                .any(|o| o.order_id == id || o.items.iter().any(|i| i.purchase_id == id));
            if !taken {
                return id;
            }
        }
    }

    /// The currency `campaign_id` books in.
    fn currency_of(&self, campaign_id: u64) -> String {
        self.cfg
            .currencies
            .get(&campaign_id)
            .cloned()
            .flatten()
            .unwrap_or_else(|| DEFAULT_CURRENCY.to_owned())
    }

    fn order_mut(&mut self, order_id: &str) -> Option<&mut FakeOrder> {
        self.orders.iter_mut().find(|o| o.order_id == order_id)
    }
}

fn order_import(st: &mut FakeState, p: &[(String, String)]) -> Value {
    let required = [
        "paySource",
        "firstName",
        "lastName",
        "emailAddress",
        "address1",
        "city",
        "postalCode",
        "country",
        "shipAddress1",
        "shipCity",
        "shipPostalCode",
        "shipCountry",
    ];
    if let Some(err) = require(p, &required) {
        return err;
    }
    // GUESS text; the limit of 6 is the reference's (§5 "State").
    let too_long: Map<String, Value> = ["state", "shipState"]
        .iter()
        .filter(|f| param(p, f).is_some_and(|v| v.chars().count() > 6))
        .map(|f| {
            (
                (*f).to_owned(),
                Value::from("Not a valid input. Must be at most 6 characters"),
            )
        })
        .collect();
    if !too_long.is_empty() {
        return envelope_error(Value::Object(too_long));
    }
    const NO_PRODUCTS: &str = "No products exist in the order";
    let Some(campaign_id) = param(p, "campaignId").and_then(|c| c.parse::<u64>().ok()) else {
        return error_text(NO_PRODUCTS);
    };
    let Some(campaign_products) = st.cfg.campaigns.get(&campaign_id).cloned() else {
        return error_text(NO_PRODUCTS);
    };
    let mut lines = Vec::new();
    for n in 1.. {
        let Some(id) = param(p, &format!("product{n}_id")) else {
            break;
        };
        let Some(id) = id
            .parse::<u64>()
            .ok()
            .filter(|id| campaign_products.contains(id))
        else {
            return error_text(NO_PRODUCTS);
        };
        let qty = match param(p, &format!("product{n}_qty")) {
            None => 1,
            Some(q) => match q.parse::<u32>() {
                Ok(q) if q > 0 => q,
                _ => {
                    return envelope_error(
                        json!({ format!("product{n}_qty"): "Not a valid input. Must be a positive integer" }),
                    );
                }
            },
        };
        let mut prices = [0i64; 2];
        for (slot, name) in [format!("product{n}_price"), format!("product{n}_shipPrice")]
            .iter()
            .enumerate()
        {
            if let Some(v) = param(p, name) {
                match parse_cents(v) {
                    Some(c) => prices[slot] = c,
                    None => {
                        return envelope_error(json!({ name.clone(): "Not a valid decimal" }));
                    }
                }
            }
        }
        lines.push((id, qty, prices[0], prices[1]));
    }
    if lines.is_empty() {
        return error_text(NO_PRODUCTS);
    }

    let email = param(p, "emailAddress").unwrap_or_default().to_lowercase();
    let customer_id = match st.customers.get(&email) {
        Some(id) => *id,
        None => {
            let id = st.next_customer_id;
            st.next_customer_id += 1;
            st.customers.insert(email, id);
            id
        }
    };
    let order_id = st.hex_id();
    let actual_order_id = st.next_actual_order_id;
    st.next_actual_order_id += 1;
    let now = st.now();
    let mut items = Vec::new();
    for (product_id, qty, price_cents, ship_price_cents) in lines {
        let purchase_id = loop {
            let id = st.hex_id();
            if id != order_id && items.iter().all(|i: &FakeItem| i.purchase_id != id) {
                break id;
            }
        };
        items.push(FakeItem {
            product_id,
            qty,
            price_cents,
            ship_price_cents,
            purchase_id,
            purchase_status: "ONE_TIME".to_owned(),
        });
    }
    let tax_cents = param(p, "salesTax").and_then(parse_cents).unwrap_or(0);
    let total_cents = items
        .iter()
        .map(|i| i.price_cents * i64::from(i.qty) + i.ship_price_cents)
        .sum::<i64>()
        + tax_cents;
    let qa = st.cfg.qa_hold;
    let order = FakeOrder {
        order_id: order_id.clone(),
        actual_order_id,
        customer_id,
        campaign_id,
        date_created: now.clone(),
        order_status: if qa { "PENDING" } else { "COMPLETE" }.to_owned(),
        review_status: qa.then(|| "PENDING".to_owned()),
        total_cents,
        refund_remaining_cents: total_cents,
        cancel_reason: None,
        currency: st.currency_of(campaign_id),
        items,
        params: p.to_vec(),
    };
    let transaction_id = st.next_transaction_id;
    st.next_transaction_id += 1;
    st.transactions.push(FakeTransaction {
        transaction_id,
        order_id: order_id.clone(),
        customer_id,
        txn_type: "SALE".to_owned(),
        response_type: "SUCCESS".to_owned(),
        amount_cents: total_cents,
        date_created: now,
        is_chargedback: false,
        chargeback_amount_cents: None,
        chargeback_date: None,
        chargeback_reason_code: None,
        chargeback_note: None,
        merchant_txn_id: None,
        parent_transaction_id: None,
        external: false,
    });
    let message = import_message(&order);
    st.orders.push(order);
    envelope_ok(message)
}

/// The E1/E1b order object.
fn import_message(o: &FakeOrder) -> Value {
    let pending = o.order_status == "PENDING";
    let subtotal: i64 = o
        .items
        .iter()
        .map(|i| i.price_cents * i64::from(i.qty))
        .sum();
    let shipping: i64 = o.items.iter().map(|i| i.ship_price_cents).sum();
    let mut m = Map::new();
    m.insert("orderId".into(), o.order_id.clone().into());
    m.insert("customerId".into(), o.customer_id.into());
    m.insert("campaignId".into(), o.campaign_id.into());
    m.insert(
        "campaignName".into(),
        format!("Campaign {}", o.campaign_id).into(),
    );
    m.insert("orderType".into(), "NEW_SALE".into());
    m.insert("orderStatus".into(), o.order_status.clone().into());
    m.insert(
        "reviewStatus".into(),
        o.review_status.clone().map_or(Value::Null, Value::from),
    );
    m.insert("dateCreated".into(), o.date_created.clone().into());
    for field in [
        "paySource",
        "firstName",
        "lastName",
        "companyName",
        "emailAddress",
        "phoneNumber",
        "address1",
        "address2",
        "city",
        "state",
        "postalCode",
        "country",
        "shipFirstName",
        "shipLastName",
        "shipAddress1",
        "shipAddress2",
        "shipCity",
        "shipState",
        "shipPostalCode",
        "shipCountry",
        "ipAddress",
        "affId",
        "custom1",
        "custom2",
        "custom3",
        "custom4",
        "custom5",
        "sourceValue1",
        "sourceValue2",
        "sourceValue3",
        "sourceValue4",
        "sourceValue5",
    ] {
        if let Some(v) = o.param(field) {
            m.insert(field.into(), v.into());
        }
    }
    m.insert("currencyCode".into(), o.currency.clone().into());
    m.insert("currencySymbol".into(), currency_symbol(&o.currency).into());
    m.insert("baseCurrencyCode".into(), o.currency.clone().into());
    m.insert(
        "baseCurrencySymbol".into(),
        currency_symbol(&o.currency).into(),
    );
    m.insert("subTotal".into(), money(subtotal).into());
    m.insert("shipTotal".into(), money(shipping).into());
    m.insert(
        "taxTotal".into(),
        money(o.total_cents - subtotal - shipping).into(),
    );
    m.insert("totalAmount".into(), money(o.total_cents).into());
    m.insert("totalDiscount".into(), "0.00".into());
    m.insert(
        "totalRefundRemaining".into(),
        money(o.refund_remaining_cents).into(),
    );
    m.insert(
        "amountPaid".into(),
        if pending {
            Value::Null
        } else {
            money(o.total_cents).into()
        },
    );
    let items: Vec<Value> = o
        .items
        .iter()
        .map(|i| {
            json!({
                "productId": i.product_id.to_string(),
                "actualProductId": (i.product_id + 1000).to_string(),
                "name": format!("Product {}", i.product_id),
                "qty": i.qty.to_string(),
                "price": money(i.price_cents),
                "shipping": money(i.ship_price_cents),
                "purchaseId": i.purchase_id,
                "purchaseStatus": i.purchase_status,
                "billingCycleType": "ONE_TIME",
                "nextBillDate": "",
                "txnType": "SALE",
                "responseType": "SUCCESS",
            })
        })
        .collect();
    m.insert("items".into(), Value::Array(items));
    Value::Object(m)
}

/// An E8 row.
fn query_row(o: &FakeOrder) -> Value {
    let mut m = Map::new();
    m.insert("orderId".into(), o.order_id.clone().into());
    m.insert("actualOrderId".into(), o.actual_order_id.into());
    m.insert("clientOrderId".into(), o.order_id.clone().into());
    m.insert("externalOrderId".into(), Value::Null);
    m.insert("orderStatus".into(), o.order_status.clone().into());
    m.insert(
        "reviewStatus".into(),
        o.review_status.clone().map_or(Value::Null, Value::from),
    );
    m.insert("dateCreated".into(), o.date_created.clone().into());
    m.insert("dateUpdated".into(), o.date_created.clone().into());
    m.insert("campaignId".into(), o.campaign_id.into());
    m.insert("customerId".into(), o.customer_id.into());
    for field in [
        "emailAddress",
        "firstName",
        "lastName",
        "paySource",
        "affId",
    ] {
        m.insert(
            field.into(),
            o.param(field).map_or(Value::Null, Value::from),
        );
    }
    m.insert("totalAmount".into(), money(o.total_cents).into());
    m.insert(
        "refundRemaining".into(),
        money(o.refund_remaining_cents).into(),
    );
    m.insert("currencyCode".into(), o.currency.clone().into());
    for n in 1..=5 {
        for prefix in ["custom", "sourceValue"] {
            let field = format!("{prefix}{n}");
            let v = o.param(&field).map_or(Value::Null, Value::from);
            m.insert(field, v);
        }
    }
    let items: Map<String, Value> = o
        .items
        .iter()
        .map(|i| {
            (
                i.product_id.to_string(),
                json!({
                    "productId": i.product_id,
                    "name": format!("Product {}", i.product_id),
                    "qty": i.qty,
                    "price": i.price_cents as f64 / 100.0,
                    "shipping": i.ship_price_cents as f64 / 100.0,
                    "purchaseId": i.purchase_id,
                    "purchaseStatus": i.purchase_status,
                    "txnType": "SALE",
                    "responseType": "SUCCESS",
                }),
            )
        })
        .collect();
    m.insert("items".into(), Value::Object(items));
    m.insert(
        "fulfillments".into(),
        json!([{"fulfillmentId": o.actual_order_id, "status": "HOLD", "trackingNumber": null, "items": []}]),
    );
    Value::Object(m)
}

/// `(results per page, page)` from the paging parameters (defaults 25 and 1; at most 200).
fn paging(p: &[(String, String)]) -> (usize, usize) {
    let per_page = param(p, "resultsPerPage")
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|v| *v > 0)
        .unwrap_or(25)
        .min(200);
    let page = param(p, "page")
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|v| *v > 0)
        .unwrap_or(1);
    (per_page, page)
}

fn paging_object(rows: Vec<Value>, total: usize, per_page: usize, page: usize) -> Value {
    json!({
        "totalResults": total,
        "resultsPerPage": per_page,
        "page": page,
        "data": rows,
        "params": null,
        "errors": null,
        "sortBy": "dateCreated",
        "sortDir": 1,
        "queryArgs": {"page": page, "sortDir": 1, "resultsPerPage": per_page, "sortBy": "dateCreated", "dateRangeType": "dateCreated"},
    })
}

/// `Ok(None)` when neither date is given, `Ok(Some(range))` when both parse, else the error
/// envelope.
fn date_range(p: &[(String, String)]) -> Result<Option<(i64, i64)>, Value> {
    let (start, end) = (param(p, "startDate"), param(p, "endDate"));
    if start.is_none() && end.is_none() {
        return Ok(None);
    }
    let mut bad = Map::new();
    let mut parse = |name: &str, v: Option<&str>| -> Option<i64> {
        let day = v.and_then(parse_us_day);
        if day.is_none() {
            bad.insert(
                name.to_owned(),
                Value::from(if v.is_none() {
                    "is a required field"
                } else {
                    "Not a valid date. Must be in format: m/d/Y"
                }),
            );
        }
        day
    };
    let s = parse("startDate", start);
    let e = parse("endDate", end);
    match (s, e) {
        (Some(s), Some(e)) => Ok(Some((s, e))),
        _ => Err(envelope_error(Value::Object(bad))),
    }
}

fn order_query(st: &FakeState, p: &[(String, String)]) -> Value {
    let order_id = param(p, "orderId");
    let range = match date_range(p) {
        Ok(r) => r,
        Err(e) => return e,
    };
    if order_id.is_none() && range.is_none() {
        return envelope_error(json!({
            "startDate": "is a required field",
            "endDate": "is a required field",
        }));
    }
    let email = param(p, "emailAddress").map(str::to_lowercase);
    let campaign = param(p, "campaignId");
    let customer = param(p, "customerId");
    let status = param(p, "orderStatus");
    let hits: Vec<&FakeOrder> = st
        .orders
        .iter()
        .filter(|o| order_id.is_none_or(|id| o.order_id == id))
        .filter(|o| {
            email.as_deref().is_none_or(|e| {
                o.param("emailAddress")
                    .is_some_and(|oe| oe.to_lowercase() == e)
            })
        })
        .filter(|o| campaign.is_none_or(|c| o.campaign_id.to_string() == c))
        .filter(|o| customer.is_none_or(|c| o.customer_id.to_string() == c))
        .filter(|o| status.is_none_or(|s| o.order_status.eq_ignore_ascii_case(s)))
        .filter(|o| {
            range.is_none_or(|(s, e)| {
                parse_iso_day(&o.date_created).is_some_and(|d| s <= d && d <= e)
            })
        })
        .collect();
    if hits.is_empty() {
        return error_text("No orders matching those parameters could be found");
    }
    let (per_page, page) = paging(p);
    let rows = hits
        .iter()
        .skip(per_page * (page - 1))
        .take(per_page)
        .map(|o| query_row(o))
        .collect();
    envelope_ok(paging_object(rows, hits.len(), per_page, page))
}

fn campaign_query(st: &FakeState, p: &[(String, String)]) -> Value {
    let wanted = param(p, "campaignId");
    let mut data = Map::new();
    for (id, products) in &st.cfg.campaigns {
        if wanted.is_some_and(|w| w != id.to_string()) {
            continue;
        }
        let products: Vec<Value> = products
            .iter()
            .map(|pid| {
                json!({
                    "campaignProductId": pid,
                    "productId": pid + 1000,
                    "productName": format!("({}) Product {pid}", pid + 1000),
                    "price": "0.00",
                    "shippingPrice": "0.00",
                    "billingCycleType": "ONE_TIME",
                })
            })
            .collect();
        let mut campaign = json!({
            "campaignId": id,
            "campaignName": format!("Campaign {id}"),
            "campaignType": "LANDER",
            "products": products,
            "coupons": [],
        });
        let named = st
            .cfg
            .currencies
            .get(id)
            .cloned()
            .unwrap_or_else(|| Some(DEFAULT_CURRENCY.to_owned()));
        if let (Some(currency), Some(obj)) = (named, campaign.as_object_mut()) {
            obj.insert("currency".into(), currency.into());
        }
        data.insert(id.to_string(), campaign);
    }
    if data.is_empty() {
        return error_text("No campaigns matching those parameters could be found");
    }
    let total = data.len();
    envelope_ok(json!({
        "totalResults": total,
        "resultsPerPage": 25,
        "page": 1,
        "data": data,
    }))
}

fn order_qa(st: &mut FakeState, p: &[(String, String)]) -> Value {
    if let Some(err) = require(p, &["orderId", "action"]) {
        return err;
    }
    let action = param(p, "action").unwrap_or_default().to_owned();
    if action != "APPROVE" && action != "DECLINE" {
        return envelope_error(
            json!({"action": "Not a valid input. Must be in: 'APPROVE', 'DECLINE'"}),
        );
    }
    let order_id = param(p, "orderId").unwrap_or_default().to_owned();
    let Some(order) = st.order_mut(&order_id) else {
        return error_text("Order not found");
    };
    if order.review_status.as_deref() != Some("PENDING") {
        return error_text("Order is not pending QA review");
    }
    if action == "APPROVE" {
        order.order_status = "COMPLETE".to_owned();
        order.review_status = Some("APPROVED".to_owned());
        envelope_ok("Order QA Approved".into())
    } else {
        order.order_status = "DECLINED".to_owned();
        order.review_status = Some("DECLINED".to_owned());
        envelope_ok("Order QA Declined".into())
    }
}

fn transaction_row(t: &FakeTransaction) -> Value {
    json!({
        "transactionId": t.transaction_id,
        "orderId": t.order_id,
        "customerId": t.customer_id,
        "txnType": t.txn_type,
        "paySource": "PREPAID",
        "responseType": t.response_type,
        "totalAmount": money(t.amount_cents),
        "dateCreated": t.date_created,
        "isChargedback": u8::from(t.is_chargedback),
        "chargebackAmount": t.chargeback_amount_cents.map(money),
        "chargebackDate": t.chargeback_date,
        "chargebackReasonCode": t.chargeback_reason_code,
        "merchantTxnId": t.merchant_txn_id,
    })
}

fn transactions_query(st: &FakeState, p: &[(String, String)]) -> Value {
    let order_id = param(p, "orderId");
    let purchase_id = param(p, "purchaseId");
    let customer = param(p, "customerId");
    let txn_type = param(p, "txnType");
    let chargedback = param(p, "isChargedback");
    let merchant_txn = param(p, "merchantTxnId");
    let hits: Vec<&FakeTransaction> = st
        .transactions
        .iter()
        .filter(|t| order_id.is_none_or(|id| t.order_id == id))
        .filter(|t| {
            purchase_id.is_none_or(|pid| {
                st.orders.iter().any(|o| {
                    o.order_id == t.order_id && o.items.iter().any(|i| i.purchase_id == pid)
                })
            })
        })
        .filter(|t| customer.is_none_or(|c| t.customer_id.to_string() == c))
        .filter(|t| txn_type.is_none_or(|ty| t.txn_type.eq_ignore_ascii_case(ty)))
        .filter(|t| chargedback.is_none_or(|c| (c == "1") == t.is_chargedback))
        .filter(|t| merchant_txn.is_none_or(|m| t.merchant_txn_id.as_deref() == Some(m)))
        .collect();
    if hits.is_empty() {
        return error_text("No transactions matching those parameters could be found");
    }
    let (per_page, page) = paging(p);
    let rows = hits
        .iter()
        .skip(per_page * (page - 1))
        .take(per_page)
        .map(|t| transaction_row(t))
        .collect();
    envelope_ok(json!({
        "totalResults": hits.len(),
        "resultsPerPage": per_page,
        "page": page,
        "data": Value::Array(rows),
    }))
}

fn transactions_refund(st: &mut FakeState, p: &[(String, String)]) -> Value {
    if let Some(err) = require(p, &["transactionId"]) {
        return err;
    }
    let txn_id = param(p, "transactionId").and_then(|v| v.parse::<u64>().ok());
    let Some(sale) = st
        .transactions
        .iter()
        .find(|t| {
            Some(t.transaction_id) == txn_id
                && (t.txn_type == "SALE" || t.txn_type == "CAPTURE")
                && t.response_type == "SUCCESS"
        })
        .cloned()
    else {
        return error_text("Transaction not found");
    };
    if param(p, "externalRefund") != Some("1") {
        // GUESS text: a PREPAID sale has no gateway to refund through.
        return error_text(
            "Refund declined: no payment processor for this transaction (use externalRefund=1)",
        );
    }
    let Some(order) = st
        .orders
        .iter()
        .find(|o| o.order_id == sale.order_id)
        .cloned()
    else {
        return error_text("Order not found");
    };
    if order.order_status == "PENDING" {
        return error_text("Order has no successful transaction to refund");
    }
    if order.refund_remaining_cents <= 0 {
        return error_text("Transaction has already been fully refunded");
    }
    let requested = match param(p, "refundAmount").map(parse_cents) {
        None => None,
        Some(None) => return envelope_error(json!({"refundAmount": "Not a valid decimal"})),
        Some(Some(a)) => Some(a),
    };
    if let Some(a) = requested
        && a > order.refund_remaining_cents
    {
        // GUESS text, validation-style: a refund larger than what remains is refused
        // whether or not fullRefund=1 comes with it, so it cannot pass unnoticed.
        return envelope_error(json!({
            "refundAmount": format!(
                "Refund amount {} exceeds the amount remaining to be refunded ({})",
                money(a),
                money(order.refund_remaining_cents)
            )
        }));
    }
    let amount = if param(p, "fullRefund") == Some("1") {
        order.refund_remaining_cents
    } else {
        match requested {
            None => return envelope_error(json!({"refundAmount": "is a required field"})),
            Some(a) => a,
        }
    };
    if amount <= 0 {
        return envelope_error(json!({"refundAmount": "Must be greater than 0"}));
    }
    let cancel = param(p, "cancelPurchase") == Some("1");
    let refund_id = st.next_transaction_id;
    st.next_transaction_id += 1;
    let now = st.now();
    st.transactions.push(FakeTransaction {
        transaction_id: refund_id,
        order_id: sale.order_id.clone(),
        customer_id: sale.customer_id,
        txn_type: "REFUND".to_owned(),
        response_type: "SUCCESS".to_owned(),
        amount_cents: amount,
        date_created: now,
        is_chargedback: false,
        chargeback_amount_cents: None,
        chargeback_date: None,
        chargeback_reason_code: None,
        chargeback_note: None,
        merchant_txn_id: param(p, "refundMerchantTxnId").map(str::to_owned),
        parent_transaction_id: Some(sale.transaction_id),
        external: true,
    });
    let object_messages = st.cfg.object_messages;
    if let Some(o) = st.order_mut(&sale.order_id) {
        o.refund_remaining_cents -= amount;
        o.order_status = "REFUNDED".to_owned();
        if cancel {
            for item in &mut o.items {
                item.purchase_status = "CANCELLED".to_owned();
            }
        }
    }
    if object_messages {
        envelope_ok(json!({"transactionId": refund_id, "refundAmount": money(amount)}))
    } else {
        envelope_ok("Refund processed".into())
    }
}

fn transactions_update(st: &mut FakeState, p: &[(String, String)]) -> Value {
    if let Some(err) = require(p, &["transactionId"]) {
        return err;
    }
    let txn_id = param(p, "transactionId").and_then(|v| v.parse::<u64>().ok());
    let Some(idx) = st
        .transactions
        .iter()
        .position(|t| Some(t.transaction_id) == txn_id)
    else {
        return error_text("Transaction not found");
    };
    if param(p, "markChargeback") == Some("1") {
        if st.transactions[idx].is_chargedback {
            return error_text("Transaction is already marked as a chargeback");
        }
        if let Some(err) = require(
            p,
            &["chargebackAmount", "chargebackDate", "chargebackReasonCode"],
        ) {
            return err;
        }
        let mut bad = Map::new();
        let amount = param(p, "chargebackAmount").and_then(parse_cents);
        if amount.is_none() {
            bad.insert("chargebackAmount".into(), "Not a valid decimal".into());
        }
        let date = param(p, "chargebackDate").unwrap_or_default();
        if parse_us_day(date).is_none() {
            bad.insert(
                "chargebackDate".into(),
                "Not a valid date. Must be in format: m/d/Y".into(),
            );
        }
        let code = param(p, "chargebackReasonCode").unwrap_or_default();
        if code.chars().count() > 10 {
            bad.insert(
                "chargebackReasonCode".into(),
                "Must be at most 10 characters".into(),
            );
        }
        let note = param(p, "chargebackNote");
        if note.is_some_and(|n| n.chars().count() > 500) {
            bad.insert(
                "chargebackNote".into(),
                "Must be at most 500 characters".into(),
            );
        }
        if !bad.is_empty() {
            return envelope_error(Value::Object(bad));
        }
        let t = &mut st.transactions[idx];
        t.is_chargedback = true;
        t.chargeback_amount_cents = amount;
        t.chargeback_date = Some(date.to_owned());
        t.chargeback_reason_code = Some(code.to_owned());
        t.chargeback_note = note.map(str::to_owned);
    } else if param(p, "revertChargeback") == Some("1") {
        let t = &mut st.transactions[idx];
        t.is_chargedback = false;
        t.chargeback_amount_cents = None;
        t.chargeback_date = None;
        t.chargeback_reason_code = None;
        t.chargeback_note = None;
    }
    if st.cfg.object_messages {
        envelope_ok(transaction_row(&st.transactions[idx]))
    } else {
        envelope_ok("Transaction updated".into())
    }
}

fn order_cancel(st: &mut FakeState, p: &[(String, String)]) -> Value {
    if let Some(err) = require(p, &["orderId", "cancelReason"]) {
        return err;
    }
    let object_messages = st.cfg.object_messages;
    let order_id = param(p, "orderId").unwrap_or_default().to_owned();
    let Some(order) = st.order_mut(&order_id) else {
        return error_text("Order not found");
    };
    if order.order_status == "CANCELLED" {
        return error_text("Order is already cancelled");
    }
    order.order_status = "CANCELLED".to_owned();
    order.cancel_reason = param(p, "cancelReason").map(str::to_owned);
    for item in &mut order.items {
        item.purchase_status = "CANCELLED".to_owned();
    }
    if object_messages {
        envelope_ok(json!({"orderId": order_id, "orderStatus": "CANCELLED"}))
    } else {
        envelope_ok("Order Cancelled".into())
    }
}

fn purchase_cancel(st: &mut FakeState, p: &[(String, String)]) -> Value {
    if let Some(err) = require(p, &["purchaseId", "cancelReason"]) {
        return err;
    }
    let object_messages = st.cfg.object_messages;
    let purchase_id = param(p, "purchaseId").unwrap_or_default().to_owned();
    let Some(item) = st
        .orders
        .iter_mut()
        .flat_map(|o| o.items.iter_mut())
        .find(|i| i.purchase_id == purchase_id)
    else {
        return error_text("Purchase not found");
    };
    if item.purchase_status == "CANCELLED" {
        return error_text("Purchase is already cancelled");
    }
    item.purchase_status = "CANCELLED".to_owned();
    if object_messages {
        envelope_ok(json!({"purchaseId": purchase_id, "status": "CANCELLED"}))
    } else {
        envelope_ok("Purchase Cancelled".into())
    }
}

// ---------------------------------------------------------------------------------------
// Formats
// ---------------------------------------------------------------------------------------

/// `"49"`, `"49.5"`, `"49.00"` → cents.
fn parse_cents(s: &str) -> Option<i64> {
    let s = s.trim();
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty()
        || frac.len() > 2
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let frac_cents = match frac.len() {
        0 => 0,
        1 => frac.parse::<i64>().ok()? * 10,
        _ => frac.parse::<i64>().ok()?,
    };
    let cents = whole.parse::<i64>().ok()?.checked_mul(100)? + frac_cents;
    Some(if neg { -cents } else { cents })
}

/// The symbol Konnektive shows beside a currency code (`currencySymbol`).
fn currency_symbol(code: &str) -> &'static str {
    match code {
        "EUR" => "€",
        "USD" => "$",
        "GBP" => "£",
        "CHF" => "CHF",
        _ => "",
    }
}

fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", cents.abs() / 100, cents.abs() % 100)
}

/// `MM/DD/YYYY` or `M/D/YYYY` (two-digit years are 20YY), a trailing time is ignored →
/// days since 1970-01-01.
fn parse_us_day(s: &str) -> Option<i64> {
    let date = s.split_whitespace().next()?;
    let mut parts = date.split('/');
    let m: i64 = parts.next()?.parse().ok()?;
    let d: i64 = parts.next()?.parse().ok()?;
    let y_str = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    let mut y: i64 = y_str.parse().ok()?;
    if y_str.len() == 2 {
        y += 2000;
    }
    valid_day(y, m, d).then(|| days_from_civil(y, m, d))
}

/// The day of `YYYY-MM-DD[ HH:MM:SS]` → days since 1970-01-01.
fn parse_iso_day(s: &str) -> Option<i64> {
    let date = s.get(..10)?;
    let mut parts = date.split('-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let d: i64 = parts.next()?.parse().ok()?;
    valid_day(y, m, d).then(|| days_from_civil(y, m, d))
}

fn valid_day(y: i64, m: i64, d: i64) -> bool {
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let len = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=len).contains(&d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `YYYY-MM-DD HH:MM:SS` of the current UTC time.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Today's UTC date as `YYYY-MM-DD` (what `Order::placed_on` carries).
pub fn utc_today() -> String {
    utc_now()[..10].to_owned()
}

/// `YYYY-MM-DD` shifted by `days`.
pub fn shift_day(iso: &str, days: i64) -> Option<String> {
    let (y, m, d) = civil_from_days(parse_iso_day(iso)? + days);
    Some(format!("{y:04}-{m:02}-{d:02}"))
}
