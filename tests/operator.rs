//! `explain` and `replay` through the real binary: a product missing from the map is
//! explained, the map is fixed, the stored IPN is replayed into exactly one import, and a
//! second replay repeats nothing.

mod support;

use std::time::Duration;

use assert_cmd::Command;
use support::fake_konnektive::{FakeConfig, FakeKonnektive};
use support::*;

fn bin(config: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::cargo_bin("ipn-bridge")
        .expect("binary")
        .args(args)
        .arg("-c")
        .arg(config)
        .env_remove("RUST_LOG")
        .output()
        .expect("run");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_then_replay_after_fixing_the_product_map_imports_once() {
    let work = Workdir::new();
    let fake = FakeKonnektive::start(FakeConfig {
        password: KONNEKTIVE_PASSWORD.into(),
        // The fixture orders are in USD; the fake books EUR unless told otherwise.
        currencies: [(12, Some("USD".into()))].into(),
        ..FakeConfig::default()
    })
    .await;
    let setup = Setup::new(&fake.base_url);
    let full = setup.toml(&work.db());
    // Without 412346 and without "*": the payment for 412346 is skipped.
    let broken = full
        .replace("412346 = 31\n", "")
        .replace("\"*\" = 33\n", "");
    let config = work.config_path();
    std::fs::write(&config, &broken).expect("config");

    let daemon = start_daemon_at(&config).await;
    let (status, _) = post_ipn(
        daemon.addr,
        "ds24",
        fixture("01_on_payment_single_product.txt"),
    )
    .await;
    assert_eq!(status, 200);
    daemon.stop().await;

    let (code, out, err) = bin(&config, &["explain", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("signature: valid"), "{out}");
    assert!(out.contains("event: on_payment  order K7Q2M9XA"), "{out}");
    assert!(
        out.contains("integration main: SKIP (needs attention): product 412346 is not in [integration.main.product_map]"),
        "{out}"
    );

    // The vendor fixes the map.
    std::fs::write(&config, &full).expect("config");
    let (code, out, err) = bin(&config, &["explain", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("integration main: DELIVER: import product 412346 as campaign product 31"),
        "{out}"
    );
    assert!(
        out.contains(&format!("POST {}/order/import/", fake.base_url)),
        "{out}"
    );
    for line in [
        "password=[redacted]",
        "paySource=PREPAID",
        "product1_id=31",
        "custom1=DS24-K7Q2M9XA-40118822-51840233",
    ] {
        assert!(out.contains(line), "{line} missing from {out}");
    }
    assert!(!out.contains(KONNEKTIVE_PASSWORD) && !err.contains(KONNEKTIVE_PASSWORD));

    let (code, out, _) = bin(&config, &["replay", "1", "--dry-run"]);
    assert_eq!(code, 0);
    assert!(out.contains("event 1  main  would create a job"), "{out}");
    let store = open_store(&work);
    assert!(
        store
            .list_jobs(Default::default())
            .await
            .expect("jobs")
            .is_empty(),
        "dry run writes nothing"
    );

    let (code, out, _) = bin(&config, &["replay", "1"]);
    assert_eq!(code, 0);
    assert!(out.contains("event 1  main  created job"), "{out}");

    let daemon = start_daemon_at(&config).await;
    wait_for(
        Duration::from_secs(10),
        "the replayed job delivered",
        || {
            let store = store.clone();
            async move {
                let jobs = store.list_jobs(Default::default()).await.ok()?;
                jobs.iter().any(|j| j.state == "delivered").then_some(())
            }
        },
    )
    .await;
    daemon.stop().await;

    let (code, out, _) = bin(&config, &["replay", "1"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("kept existing job 1 (delivered), nothing repeated"),
        "{out}"
    );
    assert_eq!(fake.orders().len(), 1, "exactly one import");
    assert_eq!(
        store
            .list_jobs(Default::default())
            .await
            .expect("jobs")
            .len(),
        1
    );
    let routes = store
        .routes_of_ipn(ipn_bridge::domain::EventId(1))
        .await
        .expect("routes");
    assert_eq!(
        routes.len(),
        3,
        "the original decision and both replays are kept: {routes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_the_refund_requests_with_the_import_from_the_ledger() {
    let work = Workdir::new();
    let fake = FakeKonnektive::start(FakeConfig {
        password: KONNEKTIVE_PASSWORD.into(),
        // The fixture orders are in USD; the fake books EUR unless told otherwise.
        currencies: [(12, Some("USD".into()))].into(),
        ..FakeConfig::default()
    })
    .await;
    let text = Setup::new(&fake.base_url).toml(&work.db()).replace(
        "payment = \"import_order\"\n",
        "payment = \"import_order\"\nrefund = \"refund\"\n",
    );
    let config = work.config_path();
    std::fs::write(&config, &text).expect("config");
    let daemon = start_daemon_at(&config).await;
    let (status, _) = post_ipn(
        daemon.addr,
        "ds24",
        fixture("01_on_payment_single_product.txt"),
    )
    .await;
    assert_eq!(status, 200);
    wait_for(Duration::from_secs(10), "the import", || async {
        (!fake.orders().is_empty()).then_some(())
    })
    .await;
    let store = open_store(&work);
    wait_for(Duration::from_secs(10), "the ledger entry", || {
        let store = store.clone();
        async move { (!store.ledger().await.ok()?.is_empty()).then_some(()) }
    })
    .await;
    daemon.stop().await;
    let order_id = fake.orders()[0].order_id.clone();

    let refund = work.dir.path().join("refund.txt");
    std::fs::write(&refund, fixture("04_on_refund.txt")).expect("write");
    let (code, out, err) = bin(&config, &["explain", refund.to_str().expect("path")]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(
            "integration main: DELIVER: refund 97.00 of payment 51840233 of order K7Q2M9XA"
        ),
        "{out}"
    );
    assert!(
        out.contains(&format!("Konnektive order {order_id} (from the ledger)")),
        "{out}"
    );
    for line in [
        "transactions/refund/",
        "externalRefund=1",
        "refundAmount=<at send time: 97.00, or less",
        "refundMerchantTxnId=51877310",
    ] {
        assert!(out.contains(line), "{line} missing from {out}");
    }
    assert_eq!(
        fake.requests_to("transactions/refund").len(),
        0,
        "explain sends nothing"
    );

    let (code, _, err) = bin(&config, &["explain", "999"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("event 999 not found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purged_body_cannot_be_replayed_or_explained() {
    let work = Workdir::new();
    let fake = FakeKonnektive::start(FakeConfig::default()).await;
    let config = work.write_config(&Setup::new(&fake.base_url));
    let daemon = start_daemon_at(&config).await;
    let body = fixture("10_connection_test.txt");
    assert_eq!(post_ipn(daemon.addr, "ds24", body).await.0, 200);
    daemon.stop().await;
    // What `queue purge` leaves of an old IPN: the row and its key, no body.
    let db = rusqlite::Connection::open(work.db()).expect("db");
    db.execute_batch("UPDATE ipns SET raw_body = x''")
        .expect("purge");
    drop(db);
    let (code, _, err) = bin(&config, &["replay", "1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("event 1: its body was purged"), "{err}");
    let (code, _, err) = bin(&config, &["explain", "1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("purged"), "{err}");
}

/// Outside the service, systemd credentials do not exist; the commands that need no secret
/// still work, and `explain` says it could not check the signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_commands_work_without_the_services_credentials() {
    let work = Workdir::new();
    let fake = FakeKonnektive::start(FakeConfig::default()).await;
    let config = work.write_config(&Setup::new(&fake.base_url));
    let daemon = start_daemon_at(&config).await;
    assert_eq!(
        post_ipn(daemon.addr, "ds24", fixture("10_connection_test.txt"))
            .await
            .0,
        200
    );
    daemon.stop().await;
    let text = std::fs::read_to_string(&config).expect("config").replace(
        &format!("password = \"{KONNEKTIVE_PASSWORD}\""),
        "password = { credential = \"konnektive-password\" }",
    );
    std::fs::write(&config, text).expect("write");
    let run = |args: &[&str]| {
        let out = Command::cargo_bin("ipn-bridge")
            .expect("binary")
            .args(args)
            .arg("-c")
            .arg(&config)
            .env_remove("CREDENTIALS_DIRECTORY")
            .output()
            .expect("run");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, err) = run(&["check-config"]);
    assert_eq!(
        code, 1,
        "the daemon's own check still needs the credential: {err}"
    );
    let (code, out, err) = run(&["queue", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("no jobs") || out.contains("ID"), "{out}");
    let (code, out, err) = run(&["events", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("connection_test"), "{out}");
    let (code, out, err) = run(&["replay", "1", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("would skip"), "{out}");
    let (code, out, err) = run(&["explain", "1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("signature: not checked"), "{out}");
}

/// A wrong campaign product made Konnektive refuse the import (dead letter); after the map
/// is fixed, `replay` gives the dead job today's action and it is imported once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reroutes_a_job_that_died_of_a_wrong_product_map() {
    let work = Workdir::new();
    let fake = FakeKonnektive::start(FakeConfig {
        password: KONNEKTIVE_PASSWORD.into(),
        // The fixture orders are in USD; the fake books EUR unless told otherwise.
        currencies: [(12, Some("USD".into()))].into(),
        ..FakeConfig::default()
    })
    .await;
    let setup = Setup::new(&fake.base_url);
    let good = setup.toml(&work.db());
    // 412346 → 39: not a product of campaign 12, so Konnektive refuses the import.
    let wrong = good.replace("412346 = 31\n", "412346 = 39\n");
    let config = work.config_path();
    std::fs::write(&config, &wrong).expect("config");
    let daemon = start_daemon_at(&config).await;
    assert_eq!(
        post_ipn(
            daemon.addr,
            "ds24",
            fixture("01_on_payment_single_product.txt")
        )
        .await
        .0,
        200
    );
    let store = open_store(&work);
    wait_for(Duration::from_secs(10), "the dead letter", || {
        let store = store.clone();
        async move {
            let jobs = store.list_jobs(Default::default()).await.ok()?;
            jobs.iter().any(|j| j.state == "dead").then_some(())
        }
    })
    .await;
    std::fs::write(&config, &good).expect("config");
    daemon.reload(&config).expect("reload");
    let (code, out, _) = bin(&config, &["replay", "1", "--dry-run"]);
    assert_eq!(code, 0);
    assert!(out.contains("would re-route dead job 1"), "{out}");
    let (code, out, _) = bin(&config, &["replay", "1"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("re-routed dead job 1 with today's configuration"),
        "{out}"
    );
    wait_for(Duration::from_secs(10), "the import", || async {
        (fake.orders().len() == 1).then_some(())
    })
    .await;
    assert_eq!(fake.orders()[0].param("product1_id"), Some("31"));
    // The order exists a moment before the daemon has recorded the answer.
    let job = wait_for(Duration::from_secs(10), "the job recorded", || {
        let store = store.clone();
        async move {
            let job = store.job(ipn_bridge::domain::JobId(1)).await.ok()?;
            (job.state != "in_flight").then_some(job)
        }
    })
    .await;
    assert_eq!(job.state, "delivered");
    daemon.stop().await;
}
