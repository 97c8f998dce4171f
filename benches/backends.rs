//! The two store backends side by side: how many IPNs per second each makes durable, and how
//! many jobs per second its queue carries through a dispatcher's store calls.
//!
//! Run with `cargo bench --bench backends` (optionally `-- <ipns> <concurrency>`, defaults
//! 20000 and 64). Needs the PostgreSQL test server (`scripts/test-postgres`, or
//! `IPN_BRIDGE_TEST_PG`); without it only SQLite is measured, and it says so. Prints figures;
//! asserts nothing about speed.
//!
//! Per backend, on a fresh database (a SQLite file in a temporary directory with the
//! daemon's settings, `synchronous=FULL`; a new database on the PostgreSQL server):
//! 1. ingest: `concurrency` tasks call `Store::ingest` with distinct IPNs (a 4 KB body and one
//!    `import_order` job each), as concurrent HTTP requests do; IPNs/s = N / wall time.
//! 2. delivery: the store's side of a dispatcher draining those N jobs: `lease_due` in
//!    batches of 32, then `finish_attempt(Delivered)` for each (ledger row included), 32 in
//!    flight; jobs/s = N / wall time. No HTTP and no fake CRM: this is what the store costs
//!    per job (`cargo bench --bench delivery` measures the whole daemon on SQLite).
//!
//! The PostgreSQL test server runs with `fsync = off` (`scripts/test-postgres`): its figures
//! are an upper bound for a server that flushes, which is not comparable with SQLite's FULL
//! sync. Results: `benches/RESULTS.md`.

use std::time::{Duration, Instant};

use ipn_bridge::domain::{
    Action, Address, AttemptReport, Buyer, Money, Order, OrderItem, Outcome, Receipt,
};
use ipn_bridge::store::{Disposition, NewIpn, NewJob, NewRoute, RouteDecision, Store};

fn new_ipn(i: usize, body: &[u8]) -> NewIpn {
    let order = Order {
        reference: format!("DS24-B{i:07}"),
        reference_field: "custom1".into(),
        campaign_id: 12,
        buyer: Buyer {
            email: format!("buyer{i}@example.com"),
            ..Buyer::default()
        },
        address: Address::default(),
        items: vec![OrderItem {
            product_id: 31,
            quantity: 1,
            unit_price: Money::from_minor(9700),
            ship_price: Money::ZERO,
        }],
        currency: "USD".into(),
        placed_on: "2026-11-30".into(),
        extra_fields: Vec::new(),
        address_fallback: Vec::new(),
    };
    NewIpn {
        source: "ds24".into(),
        business_key: format!("on_payment/o:B{i:07}"),
        event: "on_payment".into(),
        order_id: Some(format!("B{i:07}")),
        order_item_id: Some("1".into()),
        product_id: Some("412346".into()),
        transaction_id: Some(i.to_string()),
        buyer_email: Some(format!("buyer{i}@example.com")),
        amount: Some("97.00".into()),
        currency: Some("USD".into()),
        received_at: 1_000,
        raw_body: body.to_vec(),
        routes: vec![NewRoute {
            integration: "main".into(),
            decision: RouteDecision::Job {
                job: NewJob {
                    target: "crm".into(),
                    action: Box::new(Action::ImportOrder {
                        order: Box::new(order),
                        auto_approve: false,
                    }),
                    order_key: format!("B{i:07}"),
                    not_before: 1_000,
                },
                reason: "import".into(),
            },
        }],
        alerts: Vec::new(),
        parent_transaction_id: None,
    }
}

fn delivered(i: i64) -> AttemptReport {
    AttemptReport {
        outcome: Outcome::Delivered(Receipt {
            order_id: Some(format!("K{i}")),
            customer_id: Some(i.to_string()),
            purchase_ids: Vec::new(),
            transaction_ids: Vec::new(),
        }),
        endpoint: "order/import".into(),
        http_status: Some(200),
        request: "loginId=x&password=%5Bredacted%5D".into(),
        response: "{\"result\":\"SUCCESS\"}".into(),
        maybe_applied: false,
    }
}

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

async fn ingest(store: &Store, n: usize, concurrency: usize) -> Duration {
    let body = vec![b'x'; 4096];
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let (store, body) = (store.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while i < n {
                store.ingest(new_ipn(i, &body)).await.expect("ingest");
                i += concurrency;
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    start.elapsed()
}

async fn drain(store: &Store, n: usize) -> Duration {
    let start = Instant::now();
    let mut done = 0;
    while done < n {
        let jobs = store.lease_due("crm", 2_000, 32).await.expect("lease");
        assert!(!jobs.is_empty(), "jobs left but none due");
        let mut finishes = Vec::with_capacity(jobs.len());
        for job in jobs {
            let store = store.clone();
            finishes.push(tokio::spawn(async move {
                let report = delivered(job.id.0);
                let receipt = match &report.outcome {
                    Outcome::Delivered(r) => r.clone(),
                    _ => unreachable!("a delivered report"),
                };
                store
                    .finish_attempt(
                        job.id,
                        job.attempt_id,
                        report,
                        Disposition::Delivered(receipt),
                        None,
                        2_000,
                    )
                    .await
                    .expect("finish");
            }));
        }
        for f in finishes {
            f.await.expect("finish task");
            done += 1;
        }
    }
    start.elapsed()
}

async fn measure(label: &str, store: Store, n: usize, concurrency: usize) {
    let took = ingest(&store, n, concurrency).await;
    println!(
        "{label:<11} ingest   {n:>7} IPNs, {concurrency:>3} concurrent: {:>8.3} s = {:>8.0} IPNs/s",
        took.as_secs_f64(),
        rate(n, took)
    );
    let took = drain(&store, n).await;
    println!(
        "{label:<11} delivery {n:>7} jobs, 32 in flight:    {:>8.3} s = {:>8.0} jobs/s",
        took.as_secs_f64(),
        rate(n, took)
    );
    store.close().await;
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let concurrency: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(64);
    println!(
        "store backends, {} CPU(s)",
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = Store::open(&dir.path().join("bench.db")).expect("SQLite");
    measure("sqlite", sqlite, n, concurrency).await;
    match ipn_bridge::store::testing::fresh_database().await {
        Some(url) => {
            let pg = Store::connect_postgres(&url).await.expect("PostgreSQL");
            measure("postgresql", pg, n, concurrency).await;
        }
        None => println!("postgresql  not measured: no server (see the message above)"),
    }
}
