//! Delivery throughput: how fast the dispatcher drains a backlog of `import_order` jobs into
//! Konnektive, with the rate limit effectively off and with a configured limit.
//!
//! Run with `cargo bench --bench delivery` (optionally `-- <jobs> [<limited jobs>]`, defaults
//! 4000 and 300). Prints figures; asserts only that every job was delivered and nothing else
//! was sent.
//!
//! Set-up, per scenario (a fresh database and a fresh fake each time):
//! * Konnektive is a minimal instant fake inside this file ([`MiniFake`], axum on
//!   127.0.0.1): `order/import` answers the success object of reference §7 E1 with a fresh
//!   `orderId`, `campaign/query` (the connector's currency check, once per generation)
//!   campaign 12 in USD, and each request's arrival [`Instant`] is recorded. Not the integration tests'
//!   `tests/support/fake_konnektive.rs`: that one checks every new order id against every
//!   order it holds (`FakeState::hex_id`, a linear scan), so each import costs O(orders) and
//!   a backlog of thousands measures the fake (perf: 26 % of all samples in that scan at 8000
//!   jobs, and the rate fell as the backlog grew).
//! * The backlog: the real daemon runs in-process (`ipn_bridge::app::start`, configuration
//!   written to a temporary directory and loaded with `ipn_bridge::config::load`) while the
//!   fake refuses every request ("IP must be whitelisted"), so the target pauses after the
//!   first refusal and the jobs stay `pending`. N signed IPNs (fixture
//!   `01_on_payment_single_product.txt`, unique `order_id`/`transaction_id`, product 412346
//!   mapped to 31) are posted over HTTP, then that daemon stops.
//! * The drain: the fake accepts again and a second daemon starts on the same database with
//!   the scenario's limits. The clock starts just before `app::start`; a second SQLite
//!   connection to the file, running only SELECTs, counts the jobs by state every 20 ms
//!   (the query of `Store::job_counts`) until all N are `delivered`. jobs/s = N / that time
//!   (it includes the daemon's start-up and at most one poll interval). The fake's
//!   timestamps of the `order/import` requests give a second figure:
//!   (N − 1) / (last request − first request).
//!   Why not `Store::job_counts` on a second `Store::open`: every store call, reads too, runs
//!   in a `BEGIN IMMEDIATE` transaction, so each poll competes for the write lock with the
//!   daemon's writer; in 1 of 5 runs such a poll failed with "database is locked" after the
//!   2 s busy timeout. A plain SELECT is a WAL reader and never takes that lock.
//!
//! Scenarios:
//! 1. limits effectively off (`requests_per_second = 1e6`, `burst = 1e6`) with
//!    `max_in_flight` 8 and 32: raw dispatcher throughput;
//! 2. `requests_per_second = 20`, `burst = 5`, `max_in_flight = 4`: the achieved rate after
//!    the burst (requests `burst`..N spread over their time span) against the configured
//!    one, and the most `order/import` requests seen in any 1-second window against
//!    `requests_per_second + burst`.
//!
//! The load generator, the fake and the daemon share one process and its cores.

#[path = "common/mod.rs"]
mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Uri, header};
use axum::response::{IntoResponse, Response};
use common::PASSPHRASE;
use ipn_bridge::clock::SystemClock;

const LOGIN: &str = "ds24bridge";
const PASSWORD: &str = "k0nn-Secret-Pw";
/// Concurrent HTTP clients posting the backlog.
const POSTERS: usize = 32;
/// Longest a drain may take before the bench gives up.
const DRAIN_LIMIT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
struct Limits {
    requests_per_second: f64,
    burst: u32,
    max_in_flight: u32,
}

/// A minimal instant Konnektive: answers every `order/import` with the success object of
/// reference §7 E1 (a fresh `orderId` and `purchaseId` each time), anything else with an
/// error, and records the arrival time of each request. While `refuse` is set it answers
/// every request as Konnektive does for a caller that is not allow-listed.
struct MiniFake {
    refuse: AtomicBool,
    next_id: AtomicU64,
    /// (is `order/import` with campaign 12 and product 31, arrival), in arrival order.
    seen: Mutex<Vec<(bool, Instant)>>,
}

impl MiniFake {
    async fn start() -> (Arc<MiniFake>, String) {
        let fake = Arc::new(MiniFake {
            refuse: AtomicBool::new(false),
            next_id: AtomicU64::new(0x7A_1C0E_9300),
            seen: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake");
        let addr = listener.local_addr().expect("fake address");
        let app = axum::Router::new()
            .fallback(mini_fake)
            .with_state(fake.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve the fake");
        });
        (fake, format!("http://{addr}"))
    }

    fn seen(&self) -> Vec<(bool, Instant)> {
        self.seen.lock().expect("fake lock").clone()
    }
}

async fn mini_fake(State(fake): State<Arc<MiniFake>>, uri: Uri, body: Bytes) -> Response {
    let at = Instant::now();
    let json = |text: String| ([(header::CONTENT_TYPE, "application/json")], text).into_response();
    if fake.refuse.load(Ordering::Relaxed) {
        return json(
            r#"{"result":"ERROR","message":"IP must be whitelisted - 127.0.0.1"}"#.to_owned(),
        );
    }
    let body = String::from_utf8_lossy(&body);
    let import = uri.path().trim_matches('/') == "order/import"
        && body.contains("campaignId=12")
        && body.contains("product1_id=31");
    fake.seen.lock().expect("fake lock").push((import, at));
    if uri.path().trim_matches('/') == "campaign/query" {
        // The connector's check of the campaign's currency before the first import of a
        // generation (reference E7): campaign 12 books in USD, the fixture's currency.
        return json(
            r#"{"result":"SUCCESS","message":{"totalResults":1,"resultsPerPage":25,"page":1,
 "data":{"12":{"campaignId":12,"campaignName":"DS24 Import","campaignType":"LANDER",
 "currency":"USD","coupons":[],"products":[{"campaignProductId":31,"productId":1031,
 "productName":"(1031) Product 31","price":"0.00","shippingPrice":"0.00",
 "billingCycleType":"ONE_TIME"}]}}}}"#
                .to_owned(),
        );
    }
    if !import {
        return json(r#"{"result":"ERROR","message":"not served by this fake"}"#.to_owned());
    }
    let n = fake.next_id.fetch_add(1, Ordering::Relaxed);
    json(format!(
        r#"{{"result":"SUCCESS","message":{{"orderId":"{n:010X}","customerId":501,"campaignId":12,
 "campaignName":"DS24 Import","orderType":"NEW_SALE","orderStatus":"COMPLETE","reviewStatus":null,
 "dateCreated":"2026-03-02 10:15:00","paySource":"PREPAID","firstName":"Jane","lastName":"Doe",
 "emailAddress":"jane.doe@example.com","country":"US","state":"OR","currencyCode":"USD",
 "currencySymbol":"$","baseCurrencyCode":"USD","subTotal":"97.00","shipTotal":"0.00",
 "taxTotal":"0.00","totalAmount":"97.00","totalDiscount":"0.00","totalRefundRemaining":"97.00",
 "amountPaid":"97.00","items":[{{"productId":"31","actualProductId":"17","name":"Product A",
 "qty":"1","price":"97.00","shipping":"0.00","purchaseId":"{p:010X}","purchaseStatus":"ONE_TIME",
 "billingCycleType":"ONE_TIME","nextBillDate":"","txnType":"SALE","responseType":"SUCCESS"}}]}}}}"#,
        p = n + (1 << 36),
    ))
}

fn config_text(db: &Path, base_url: &str, limits: Limits) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"

[store]
path = "{db}"

[delivery]
timeout = "5s"
retry_initial = "100ms"
retry_max = "400ms"
give_up_after = "1h"

[source.ds24]
passphrase = "{PASSPHRASE}"

[target.konnektive]
kind = "konnektive"
base_url = "{base_url}"
login_id = "{LOGIN}"
password = "{PASSWORD}"
requests_per_second = {rps:?}
burst = {burst}
max_in_flight = {max_in_flight}

[integration.main]
campaign_id = 12

[integration.main.product_map]
412346 = 31

[integration.main.on]
payment = "import_order"
"#,
        db = db.display(),
        rps = limits.requests_per_second,
        burst = limits.burst,
        max_in_flight = limits.max_in_flight,
    )
}

async fn start_daemon(config: &Path) -> ipn_bridge::app::Running {
    let loaded = ipn_bridge::config::load(config).expect("load the bench configuration");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    ipn_bridge::app::start(loaded.config, listener, Arc::new(SystemClock))
        .await
        .expect("start the daemon")
}

/// Posts every body to `/ipn/ds24` from [`POSTERS`] keep-alive clients.
async fn post_all(addr: std::net::SocketAddr, bodies: Vec<Vec<u8>>) {
    let url = format!("http://{addr}/ipn/ds24");
    let bodies = Arc::new(bodies);
    let mut tasks = Vec::new();
    for t in 0..POSTERS {
        let (bodies, url) = (bodies.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut i = t;
            while i < bodies.len() {
                let resp = client
                    .post(&url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(bodies[i].clone())
                    .send()
                    .await
                    .expect("POST /ipn/ds24");
                assert_eq!(resp.status().as_u16(), 200, "IPN {i} not accepted");
                i += POSTERS;
            }
        }));
    }
    for t in tasks {
        t.await.expect("poster task");
    }
}

/// Jobs by state, read without taking the write lock (WAL readers never block the writer).
fn counts(observer: &rusqlite::Connection) -> std::collections::BTreeMap<String, u64> {
    let mut stmt = observer
        .prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        .expect("prepare the job count");
    stmt.query_map([], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
    })
    .expect("count jobs")
    .collect::<Result<_, _>>()
    .expect("read job counts")
}

/// CPU time (user + system, clock ticks) of this process's threads, summed by thread name
/// (`/proc/self/task/*/stat`): the daemon's store writer, the tokio workers (the daemon, the
/// fake and the HTTP clients share them) and the rest.
fn thread_cpu_ticks() -> std::collections::BTreeMap<String, u64> {
    let mut by_name = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return by_name;
    };
    for task in tasks.flatten() {
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(task.path().join("comm")),
            std::fs::read_to_string(task.path().join("stat")),
        ) else {
            continue;
        };
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields
            .get(11..13)
            .map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
            .unwrap_or(0);
        *by_name.entry(comm.trim().to_owned()).or_insert(0) += ticks;
    }
    by_name
}

/// CPU µs per job by thread name between two [`thread_cpu_ticks`] readings (threads that
/// ended in between are lost: the drain's threads live through it). 100 ticks per second.
fn cpu_per_job(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
    jobs: usize,
) -> String {
    let mut parts = Vec::new();
    let mut total = 0u64;
    for (name, ticks) in after {
        let used = ticks.saturating_sub(before.get(name).copied().unwrap_or(0));
        if used > 0 {
            total += used;
            parts.push(format!(
                "{name} {:.0}",
                used as f64 * 10_000.0 / jobs as f64
            ));
        }
    }
    format!(
        "CPU µs/job: total {:.0} ({})",
        total as f64 * 10_000.0 / jobs as f64,
        parts.join(", ")
    )
}

/// What one drain measured.
struct Drain {
    jobs: usize,
    elapsed: Duration,
    /// CPU per job by thread during the drain (see [`cpu_per_job`]).
    cpu: String,
    /// Arrival times of the `order/import` requests of the drain, in order.
    imports: Vec<Instant>,
    /// Requests of the drain to any other endpoint.
    other_requests: usize,
}

/// Builds a backlog of `n` pending jobs (target paused), then drains it with `limits`.
async fn drain(n: usize, limits: Limits) -> Drain {
    let (fake, base_url) = MiniFake::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bench.db");
    let config = dir.path().join("connectors.toml");
    std::fs::write(&config, config_text(&db, &base_url, limits)).expect("write config");

    // The backlog: the fake refuses, the target pauses, the jobs wait.
    fake.refuse.store(true, Ordering::Relaxed);
    let loader = start_daemon(&config).await;
    post_all(loader.addr, common::signed_bodies(n, 'D', 70_000_000)).await;
    loader.stop().await;
    // Only ever runs SELECTs in autocommit: a WAL reader, never the write lock.
    let observer = rusqlite::Connection::open(&db).expect("open the database to observe it");
    let before = counts(&observer);
    assert_eq!(
        before.get("pending").copied().unwrap_or(0),
        n as u64,
        "backlog not all pending: {before:?}"
    );

    // The drain.
    fake.refuse.store(false, Ordering::Relaxed);
    let cpu_before = thread_cpu_ticks();
    let start = Instant::now();
    let daemon = start_daemon(&config).await;
    loop {
        let c = counts(&observer);
        if c.get("delivered").copied().unwrap_or(0) == n as u64 {
            break;
        }
        assert!(
            start.elapsed() < DRAIN_LIMIT,
            "drain did not finish in {DRAIN_LIMIT:?}: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed();
    let cpu = cpu_per_job(&cpu_before, &thread_cpu_ticks(), n);
    daemon.stop().await;
    drop(observer);

    let seen = fake.seen();
    let imports: Vec<Instant> = seen.iter().filter(|r| r.0).map(|r| r.1).collect();
    assert_eq!(imports.len(), n, "one order/import per job");
    Drain {
        jobs: n,
        elapsed,
        cpu,
        other_requests: seen.len() - imports.len(),
        imports,
    }
}

/// (N − 1) / (last − first) over arrival times.
fn span_rate(times: &[Instant]) -> f64 {
    match (times.first(), times.last()) {
        (Some(first), Some(last)) if times.len() > 1 && last > first => {
            (times.len() - 1) as f64 / (*last - *first).as_secs_f64()
        }
        _ => f64::NAN,
    }
}

/// The most arrivals inside any window of `width` (closed on both ends).
fn max_in_window(times: &[Instant], width: Duration) -> usize {
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..times.len() {
        while times[hi] - times[lo] > width {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

async fn unlimited(n: usize, max_in_flight: u32) {
    let d = drain(
        n,
        Limits {
            requests_per_second: 1_000_000.0,
            burst: 1_000_000,
            max_in_flight,
        },
    )
    .await;
    println!(
        "no limit, max_in_flight {max_in_flight:>2}: {:>6} jobs delivered in {:>6.3} s = {:>6.0} jobs/s \
         (order/import arrivals: {:>6.0}/s; other requests: {})\n    {}",
        d.jobs,
        d.elapsed.as_secs_f64(),
        d.jobs as f64 / d.elapsed.as_secs_f64(),
        span_rate(&d.imports),
        d.other_requests,
        d.cpu,
    );
}

async fn limited(n: usize) {
    let limits = Limits {
        requests_per_second: 20.0,
        burst: 5,
        max_in_flight: 4,
    };
    let d = drain(n, limits).await;
    let burst = limits.burst as usize;
    let after_burst = d.imports.get(burst..).unwrap_or_default();
    let window = max_in_window(&d.imports, Duration::from_secs(1));
    println!(
        "limit {} req/s, burst {}, max_in_flight {}: {} jobs delivered in {:.3} s; \
         after the burst {:.2} req/s (configured {}); max in any 1 s window {} \
         (rps + burst = {}); other requests: {}",
        limits.requests_per_second,
        limits.burst,
        limits.max_in_flight,
        d.jobs,
        d.elapsed.as_secs_f64(),
        span_rate(after_burst),
        limits.requests_per_second,
        window,
        limits.requests_per_second + f64::from(limits.burst),
        d.other_requests,
    );
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(4_000);
    let n_limited = args.get(1).copied().unwrap_or(300);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    println!(
        "delivery benchmark on {} CPU(s); instant fake Konnektive over 127.0.0.1; every job \
         is leased and finished with a commit (WAL, synchronous=FULL)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    runtime.block_on(async {
        for max_in_flight in [8, 32] {
            unlimited(n, max_in_flight).await;
        }
        if n_limited > 0 {
            limited(n_limited).await;
        }
    });
}
