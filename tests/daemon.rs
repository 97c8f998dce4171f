//! The real binary: killed with SIGKILL while IPNs arrive and jobs are in flight against a
//! faulty Konnektive, restarted, and every acknowledged IPN is imported exactly once; no
//! secret ever reaches the logs or the database; SIGTERM exits cleanly.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use support::fake_konnektive::{Behaviour, FakeConfig, FakeKonnektive};
use support::*;

const IPNS: usize = 200;

fn ipn(i: usize) -> (String, Vec<u8>) {
    numbered_payment("KX", 70_000_000, i)
}

async fn wait_orders(fake: &FakeKonnektive, at_least: usize) {
    wait_for(Duration::from_secs(30), "orders in the fake", || async {
        (fake.orders().len() >= at_least).then_some(())
    })
    .await;
}

/// The chaos test: a few hundred IPNs against a Konnektive that answers with random 502
/// pages (some after creating the order), ERRORs, validation refusals, slow answers, hung
/// answers and cut connections, while the daemon is killed with SIGKILL three times (once
/// while IPNs are still arriving). Afterwards every job is delivered exactly once or
/// dead-lettered with a reason, and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_sigkill_at_any_moment_loses_nothing_and_imports_nothing_twice() {
    let work = Workdir::new();
    let fake = FakeKonnektive::start(fixture_konnektive()).await;
    fake.set_chaos(
        7,
        vec![
            (0.12, Behaviour::Delay(Duration::from_millis(150))),
            (0.08, Behaviour::CreateThenHang(Duration::from_secs(2))),
            (0.08, Behaviour::Html502),
            (0.08, Behaviour::after_apply(Behaviour::Html502)),
            (0.04, Behaviour::DropConnection),
            (0.05, Behaviour::Error("Temporary failure".into())),
            (
                0.02,
                Behaviour::ValidationError(serde_json::json!({"shipCity": "is a required field"})),
            ),
        ],
    );
    let mut setup = Setup::new(&fake.base_url);
    setup.timeout = "700ms";
    setup.retry_max = "300ms";
    let (refs, bodies): (Vec<String>, Vec<Vec<u8>>) = (0..IPNS).map(ipn).unzip();
    let mut acked = vec![false; IPNS];

    // Run 1: IPNs arrive while deliveries run; SIGKILL mid-stream.
    let daemon = Daemon::spawn(&work, &setup, "run1.log");
    let addr = daemon.addr;
    let first_half = bodies[..IPNS / 2].to_vec();
    let poster = tokio::spawn(async move {
        let mut acked = vec![false; first_half.len()];
        post_all(addr, &first_half, &mut acked, false).await;
        acked
    });
    wait_orders(&fake, 10).await;
    daemon.kill9();
    let first_acked = poster.await.expect("poster");
    acked[..IPNS / 2].copy_from_slice(&first_acked);

    // Run 2: Digistore24 retries what was not acknowledged and repeats what was;
    // killed again while deliveries are in flight.
    let daemon = Daemon::spawn(&work, &setup, "run2.log");
    post_all(daemon.addr, &bodies, &mut acked, true).await;
    assert!(
        acked.iter().all(|a| *a),
        "a running daemon acknowledges every IPN"
    );
    wait_orders(&fake, IPNS / 2).await;
    daemon.kill9();

    // Run 3: killed once more, soon after the restart.
    let daemon = Daemon::spawn(&work, &setup, "run3.log");
    wait_orders(&fake, IPNS * 3 / 4).await;
    daemon.kill9();

    // Run 4: the faults stop; every job must settle.
    fake.clear_chaos();
    let daemon = Daemon::spawn(&work, &setup, "run4.log");
    let store = open_store(&work);
    wait_for(
        Duration::from_secs(90),
        "every job delivered or dead",
        || {
            let store = store.clone();
            async move {
                let counts = store.job_counts().await.ok()?;
                let settled = counts.get("delivered").copied().unwrap_or(0)
                    + counts.get("dead").copied().unwrap_or(0);
                (settled == IPNS as u64).then_some(())
            }
        },
    )
    .await;

    let found = fake.references_imported_once();
    let unique: BTreeSet<&String> = found.iter().collect();
    assert_eq!(
        store.list_ipns(None).await.expect("ipns").len(),
        IPNS,
        "nothing lost"
    );
    let jobs = store.list_jobs(Default::default()).await.expect("jobs");
    assert_eq!(jobs.len(), IPNS, "one job per IPN");
    let ledger = store.ledger().await.expect("ledger");
    let mut dead = 0;
    for job in &jobs {
        match job.state.as_str() {
            "delivered" => {
                let entry = ledger
                    .iter()
                    .find(|l| l.job_id == job.id)
                    .expect("ledger row");
                assert!(
                    unique.contains(&entry.reference),
                    "{} delivered but not in Konnektive",
                    entry.reference
                );
            }
            "dead" => {
                dead += 1;
                let reason = job.last_error.as_deref().unwrap_or_default();
                assert!(
                    reason.contains("shipCity"),
                    "dead without its reason: {reason:?}"
                );
            }
            other => panic!("job {} ended {other}", job.id),
        }
    }
    // Every order in Konnektive belongs to exactly one delivered job.
    assert_eq!(found.len(), IPNS - dead, "{dead} dead letters");
    let referenced: BTreeSet<&String> = ledger.iter().map(|l| &l.reference).collect();
    assert_eq!(unique, referenced);
    let expected: BTreeSet<&String> = refs.iter().collect();
    assert!(
        unique.is_subset(&expected),
        "Konnektive holds an order no IPN asked for"
    );
    // The kills really hit work in progress: attempts were interrupted and reconciled.
    let mut interrupted = 0;
    let mut reconciled = 0;
    for job in &jobs {
        for a in store
            .attempts(ipn_bridge::domain::JobId(job.id))
            .await
            .expect("attempts")
        {
            interrupted += usize::from(a.outcome.as_deref() == Some("interrupted"));
            reconciled += usize::from(a.kind == "reconcile");
        }
    }
    eprintln!(
        "dead letters: {dead}, interrupted attempts: {interrupted}, reconciliations: \
         {reconciled}, acknowledged in the first run: {}",
        first_acked.iter().filter(|a| **a).count()
    );
    assert!(interrupted >= 1, "no attempt was interrupted by the kills");
    assert!(reconciled >= interrupted);
    let status = daemon.terminate();
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_or_the_database() {
    let work = Workdir::new();
    // Konnektive first refuses the login, so error paths are logged too.
    let fake = FakeKonnektive::start(FakeConfig {
        password: "something-else".into(),
        // The fixture orders are in USD; the fake books EUR unless told otherwise.
        currencies: [(12, Some("USD".into()))].into(),
        ..FakeConfig::default()
    })
    .await;
    let daemon = Daemon::spawn(&work, &Setup::new(&fake.base_url), "secrets.log");
    let (status, _) = post_ipn(
        daemon.addr,
        "ds24",
        fixture("01_on_payment_single_product.txt"),
    )
    .await;
    assert_eq!(status, 200);
    let mut forged = pairs(&fixture("03b_on_payment_subscription_first.txt"));
    forged.retain(|(k, _)| k != "sha_sign");
    forged.push(("sha_sign".into(), "0".repeat(128)));
    let (status, _) = post_ipn(daemon.addr, "ds24", encode(&forged)).await;
    assert_eq!(status, 403);
    // The first request (the campaign's currency, asked before the first import) is refused;
    // the probe sent at once is refused too, so the target pauses.
    wait_for(
        Duration::from_secs(10),
        "a refused request and a refused probe",
        || async { (fake.requests_to("campaign/query").len() >= 2).then_some(()) },
    )
    .await;
    fake.set_password(KONNEKTIVE_PASSWORD);
    wait_orders(&fake, 1).await;
    let log = daemon.log.clone();
    assert!(daemon.terminate().success());

    let log_text = std::fs::read_to_string(&log).expect("log");
    assert!(
        log_text.contains("IPN stored"),
        "the log is not empty: {log_text}"
    );
    assert!(log_text.contains("Invalid login credentials"));
    let mut files = vec![log];
    for entry in std::fs::read_dir(work.dir.path()).expect("dir") {
        let path = entry.expect("entry").path();
        if path.to_string_lossy().contains("ipn-bridge.db") {
            files.push(path);
        }
    }
    assert!(files.len() >= 2, "database files present: {files:?}");
    for file in files {
        let bytes = std::fs::read(&file).expect("read");
        for secret in [KONNEKTIVE_PASSWORD, PASSPHRASE] {
            let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found, "{secret:?} found in {}", file.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_and_exits_cleanly() {
    let work = Workdir::new();
    let fake = FakeKonnektive::start(FakeConfig {
        password: KONNEKTIVE_PASSWORD.into(),
        // The fixture orders are in USD; the fake books EUR unless told otherwise.
        currencies: [(12, Some("USD".into()))].into(),
        ..FakeConfig::default()
    })
    .await;
    let daemon = Daemon::spawn(&work, &Setup::new(&fake.base_url), "term.log");
    let addr = daemon.addr;
    let (status, _) = post_ipn(addr, "ds24", fixture("01_on_payment_single_product.txt")).await;
    assert_eq!(status, 200);
    wait_orders(&fake, 1).await;
    let log = daemon.log.clone();
    let started = std::time::Instant::now();
    let status = daemon.terminate();
    assert!(status.success(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "no longer listening"
    );
    let text = std::fs::read_to_string(log).expect("log");
    assert!(
        text.contains("shutting down") && text.contains("stopped"),
        "{text}"
    );
}
