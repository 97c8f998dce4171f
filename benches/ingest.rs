//! Ingest throughput: how many IPNs per second become durable (committed with
//! `synchronous=FULL`) and, over HTTP, acknowledged with `OK`.
//!
//! Run with `cargo bench --bench ingest` (optionally `-- <ipns> <concurrency> [--http]`). Prints
//! figures; asserts nothing about speed. Two measurements:
//! 1. the store alone: many tasks calling `Store::ingest` at once (what group commit buys);
//! 2. the whole daemon in-process: keep-alive HTTP clients posting signed IPN bodies to
//!    `POST /ipn/ds24` (verification, routing, storage). The load generator (reqwest, 256
//!    clients) runs in the same process, on the same tokio workers and the same cores as the
//!    server: on a 2-core machine it takes a large share of the CPU, so this figure is a lower
//!    bound on the daemon's own throughput, not a measure of it. For the daemon alone use
//!    `cargo bench --bench ingest_http` (the release binary under `wrk`, beside a bare axum
//!    server, with CPU time per request), and compare CPU time per request rather than
//!    requests per second when the machine is shared.
//!
//! Results and how they were taken: `benches/RESULTS.md`.

#[path = "common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{FIXTURE, PASSPHRASE};
use ipn_bridge::clock::SystemClock;
use ipn_bridge::store::{NewIpn, Store};

fn report(label: &str, n: usize, elapsed: Duration) {
    println!(
        "{label:<44} {n:>7} IPNs in {:>7.3} s = {:>9.0} IPNs/s",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
}

async fn store_only(n: usize, concurrency: usize, body_len: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("bench.db")).expect("store");
    let raw = vec![b'x'; body_len];
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let store = store.clone();
        let raw = raw.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while i < n {
                let rec = NewIpn {
                    source: "ds24".into(),
                    business_key: format!("on_payment/o:B{i:07}"),
                    event: "on_payment".into(),
                    order_id: Some(format!("B{i:07}")),
                    order_item_id: Some("1".into()),
                    product_id: Some("412346".into()),
                    transaction_id: Some(i.to_string()),
                    buyer_email: Some("jane.doe@example.com".into()),
                    amount: Some("97.00".into()),
                    currency: Some("USD".into()),
                    received_at: 0,
                    raw_body: raw.clone(),
                    routes: Vec::new(),
                    alerts: Vec::new(),
                    parent_transaction_id: None,
                };
                store.ingest(rec).await.expect("ingest");
                i += concurrency;
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    report(
        &format!("store.ingest, {concurrency} concurrent, {body_len} B body"),
        n,
        start.elapsed(),
    );
    store.close().await;
}

async fn http(n: usize, concurrency: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bench.db");
    let config_text = format!(
        r#"[store]
path = "{}"
[source.ds24]
passphrase = "{PASSPHRASE}"
[target.konnektive]
kind = "konnektive"
base_url = "http://127.0.0.1:9"
login_id = "bench"
password = "bench"
[integration.main]
campaign_id = 12
active = false
[integration.main.product_map]
"*" = 33
[integration.main.on]
payment = "import_order"
"#,
        db.display()
    );
    let path = dir.path().join("connectors.toml");
    std::fs::write(&path, config_text).expect("config");
    let config = ipn_bridge::config::load(&path).expect("config").config;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let running = ipn_bridge::app::start(config, listener, Arc::new(SystemClock))
        .await
        .expect("start");
    let url = format!("http://{}/ipn/ds24", running.addr);
    let bodies = Arc::new(common::signed_bodies(n, 'B', 90_000_000));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let bodies = bodies.clone();
        let url = url.clone();
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
                    .expect("post");
                assert_eq!(resp.status().as_u16(), 200);
                i += concurrency;
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    report(
        &format!("HTTP POST /ipn, {concurrency} conns (client shares CPUs)"),
        n,
        start.elapsed(),
    );
    running.stop().await;
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(40_000);
    let concurrency = args.get(1).copied().unwrap_or(256);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "ingest benchmark on {} CPU(s); every IPN is committed (WAL, synchronous=FULL) before it counts",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let only_http = std::env::args().any(|a| a == "--http");
    runtime.block_on(async {
        if !only_http {
            store_only(n.min(2_000), 1, FIXTURE.len()).await;
            store_only(n, concurrency, FIXTURE.len()).await;
        }
        http(n, concurrency).await;
    });
}
