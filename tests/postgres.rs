//! Several daemons on one PostgreSQL database: two real `ipn-bridge run` processes share one
//! queue, receive a few hundred IPNs split between them (each also repeated to the other),
//! deliver them to a Konnektive that answers with random 502 pages and slow answers, and the
//! one dispatching the target is killed with SIGKILL mid-drain. Afterwards every job is
//! delivered exactly once or dead with its reason, nothing acknowledged is lost, and the
//! requests of both instances together never exceeded the target's rate limit. The operator
//! commands work against the shared database meanwhile; `/healthz` names it.
//!
//! Needs the PostgreSQL test server (`scripts/test-postgres`; `.ci/run` starts it); without
//! one, each test prints why it is skipped and passes.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use ipn_bridge::store::Store;
use support::fake_konnektive::{Behaviour, FakeKonnektive};
use support::*;

const IPNS: usize = 240;
const RPS: f64 = 40.0;
const BURST: u32 = 5;

fn ipn(i: usize) -> (String, Vec<u8>) {
    numbered_payment("PG", 80_000_000, i)
}

/// The generated configuration with `[store] url` instead of the SQLite path, the URL read
/// from a file beside the configuration (`{ file = "database-url" }`), which the operator
/// commands must read too although they leave every other secret unread.
fn on_postgres(work: &Workdir, url: &str) -> impl Fn(String) -> String + use<> {
    std::fs::write(work.dir.path().join("database-url"), format!("{url}\n")).expect("url file");
    move |toml: String| {
        let start = toml
            .find("[store]\npath = ")
            .expect("[store] in the template");
        let end = start + toml[start..].find("\n\n").expect("end of [store]");
        format!(
            "{}[store]\nurl = {{ file = \"database-url\" }}{}",
            &toml[..start],
            &toml[end..]
        )
    }
}

async fn get(addr: SocketAddr, path: &str) -> String {
    reqwest::get(format!("http://{addr}{path}"))
        .await
        .expect("GET")
        .text()
        .await
        .expect("body")
}

/// Whether the daemon at `addr` dispatches the `konnektive` target now.
async fn dispatches(addr: SocketAddr) -> bool {
    get(addr, "/metrics")
        .await
        .contains(r#"ipn_bridge_target_dispatched{target="konnektive"} 1"#)
}

/// The most requests the fake received within any window of `window`.
fn busiest(fake: &FakeKonnektive, window: Duration) -> usize {
    let mut at: Vec<_> = fake.requests().iter().map(|r| r.at).collect();
    at.sort();
    let mut most = 0;
    let mut first = 0;
    for last in 0..at.len() {
        while at[last].duration_since(at[first]) > window {
            first += 1;
        }
        most = most.max(last - first + 1);
    }
    most
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_share_one_queue_and_one_rate_limit_and_survive_a_sigkill() {
    let Some(url) = ipn_bridge::store::testing::fresh_database().await else {
        return;
    };
    let fake = FakeKonnektive::start(fixture_konnektive()).await;
    fake.set_chaos(
        11,
        vec![
            (0.10, Behaviour::Delay(Duration::from_millis(120))),
            (0.08, Behaviour::Html502),
            (0.06, Behaviour::after_apply(Behaviour::Html502)),
            (
                0.02,
                Behaviour::ValidationError(serde_json::json!({"shipCity": "is a required field"})),
            ),
        ],
    );
    let mut setup = Setup::new(&fake.base_url);
    setup.timeout = "700ms";
    setup.retry_max = "300ms";
    setup.requests_per_second = RPS;
    setup.burst = BURST;
    setup.max_in_flight = 4;
    let (work_a, work_b) = (Workdir::new(), Workdir::new());
    // Both start at once: the second waits for the first's migration.
    let a = Daemon::spawn_edited(&work_a, &setup, "a.log", on_postgres(&work_a, &url));
    let b = Daemon::spawn_edited(&work_b, &setup, "b.log", on_postgres(&work_b, &url));

    let health: serde_json::Value =
        serde_json::from_str(&get(a.addr, "/healthz").await).expect("healthz JSON");
    assert_eq!(health["store"], "postgresql");
    assert_eq!(health["store_writable"], true);
    assert!(
        health["store_database"]
            .as_str()
            .is_some_and(|d| d.starts_with("postgres://") && d.contains("ipnb_test_")),
        "{health}"
    );

    let (refs, bodies): (Vec<String>, Vec<Vec<u8>>) = (0..IPNS).map(ipn).unzip();
    let (even, odd): (Vec<_>, Vec<_>) = bodies
        .iter()
        .cloned()
        .enumerate()
        .partition(|(i, _)| i % 2 == 0);
    let even: Vec<Vec<u8>> = even.into_iter().map(|(_, b)| b).collect();
    let odd: Vec<Vec<u8>> = odd.into_iter().map(|(_, b)| b).collect();
    let (addr_a, addr_b) = (a.addr, b.addr);
    let (mut acked_even, mut acked_odd) = (vec![false; even.len()], vec![false; odd.len()]);
    // Each daemon receives half, and then (as Digistore24 may resend) the other half again.
    let (even2, odd2) = (even.clone(), odd.clone());
    let to_a = tokio::spawn(async move {
        post_all(addr_a, &even2, &mut acked_even, false).await;
        acked_even
    });
    let to_b = tokio::spawn(async move {
        post_all(addr_b, &odd2, &mut acked_odd, false).await;
        acked_odd
    });
    let (acked_even, acked_odd) = (to_a.await.expect("a"), to_b.await.expect("b"));
    assert!(
        acked_even.iter().chain(&acked_odd).all(|a| *a),
        "both acknowledge"
    );
    let mut again = vec![false; odd.len()];
    post_all(addr_a, &odd, &mut again, false).await;
    let mut again = vec![false; even.len()];
    post_all(addr_b, &even, &mut again, false).await;

    let store = Store::connect_postgres(&url).await.expect("operator store");
    assert_eq!(
        store.list_ipns(None).await.expect("ipns").len(),
        IPNS,
        "a repeat to the other instance is the same IPN"
    );

    // The operator commands work against the shared database while both run.
    let listed = Command::new(env!("CARGO_BIN_EXE_ipn-bridge"))
        .args(["queue", "list", "--limit", "0", "-c"])
        .arg(work_a.config_path())
        .output()
        .expect("queue list");
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("PG000001"), "{listed}");

    // Kill the instance that dispatches the target, mid-drain.
    wait_for(Duration::from_secs(30), "a third of the orders", || async {
        (fake.orders().len() >= IPNS / 3).then_some(())
    })
    .await;
    let (owner, survivor) = if dispatches(a.addr).await {
        (a, b)
    } else {
        (b, a)
    };
    owner.kill9();
    wait_for(
        Duration::from_secs(10),
        "the survivor takes the target over",
        || {
            let addr = survivor.addr;
            async move { dispatches(addr).await.then_some(()) }
        },
    )
    .await;

    let jobs = wait_for(
        Duration::from_secs(60),
        "every job delivered or dead",
        || {
            let store = store.clone();
            async move {
                let jobs = store.list_jobs(Default::default()).await.ok()?;
                (jobs.len() == IPNS
                    && jobs
                        .iter()
                        .all(|j| matches!(j.state.as_str(), "delivered" | "dead")))
                .then_some(jobs)
            }
        },
    )
    .await;

    let found = fake.references_imported_once();
    let unique: BTreeSet<&String> = found.iter().collect();
    let ledger = store.ledger().await.expect("ledger");
    let mut dead = 0;
    for job in &jobs {
        if job.state == "dead" {
            dead += 1;
            let reason = job.last_error.as_deref().unwrap_or_default();
            assert!(
                reason.contains("shipCity"),
                "dead without its reason: {reason:?}"
            );
        } else {
            let entry = ledger
                .iter()
                .find(|l| l.job_id == job.id)
                .expect("ledger row");
            assert!(
                unique.contains(&entry.reference),
                "{} not in Konnektive",
                entry.reference
            );
        }
    }
    assert_eq!(found.len(), IPNS - dead, "{dead} dead letters");
    let expected: BTreeSet<&String> = refs.iter().collect();
    assert!(
        unique.is_subset(&expected),
        "Konnektive holds an order no IPN asked for"
    );

    // Both instances together stayed within requests_per_second + burst in every second
    // (measured at the fake over 950 ms, leaving 50 ms for the jitter between a token being
    // taken and its request arriving).
    let most = busiest(&fake, Duration::from_millis(950));
    assert!(
        most as f64 <= RPS + f64::from(BURST),
        "{most} requests within one second, limit {RPS} + {BURST}"
    );
    assert!(
        fake.requests().len() > IPNS,
        "the test sent fewer requests than jobs"
    );

    // `events` and `replay` work against the shared database while an instance runs: a
    // replay of a delivered IPN keeps its job and imports nothing again.
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ipn-bridge"))
            .args(args)
            .arg("-c")
            .arg(work_b.config_path())
            .output()
            .expect("operator command");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let events = cli(&["events", "list", "--limit", "0"]);
    assert!(events.contains("PG000002"), "{events}");
    let delivered = jobs
        .iter()
        .find(|j| j.state == "delivered")
        .expect("a delivered job");
    let replayed = cli(&["replay", &delivered.ipn_id.to_string()]);
    assert!(replayed.contains("kept"), "{replayed}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(fake.orders().len(), found.len(), "a replay imported again");
    drop(survivor);
}

/// `[store] url` with `?sslmode=require` and `[store] ca_file` (the test server's CA): a
/// daemon stores and delivers an IPN, and every connection it holds — pooled and the
/// dispatcher-lock one — is TLS. The operator commands read `ca_file` too; without it the
/// same URL is refused with the certificate error, never showing the URL's password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_and_the_operator_commands_reach_postgres_over_verified_tls() {
    let Some(url) = ipn_bridge::store::testing::fresh_database().await else {
        return;
    };
    let Some(ca) = ipn_bridge::store::testing::test_ca_file() else {
        return;
    };
    const PASSWORD: &str = "tls-pw-not-shown";
    let tls_url = format!(
        "{}?sslmode=require",
        url.replacen(
            "postgres://postgres@",
            &format!("postgres://postgres:{PASSWORD}@"),
            1
        )
    );
    let fake = FakeKonnektive::start(fixture_konnektive()).await;
    let setup = Setup::new(&fake.base_url);
    let work = Workdir::new();
    let url_line = "url = { file = \"database-url\" }";
    let ca_line = format!("ca_file = \"{}\"", ca.display());
    let to_postgres = on_postgres(&work, &tls_url);
    let with_ca = format!("{url_line}\n{ca_line}");
    let daemon = Daemon::spawn_edited(&work, &setup, "tls.log", move |toml| {
        to_postgres(toml).replacen(url_line, &with_ca, 1)
    });
    let health: serde_json::Value =
        serde_json::from_str(&get(daemon.addr, "/healthz").await).expect("healthz JSON");
    assert_eq!(health["store_writable"], true, "{health}");

    let (_, body) = ipn(0);
    let mut acked = [false];
    post_all(daemon.addr, &[body], &mut acked, false).await;
    assert!(acked[0], "acknowledged");
    wait_for(Duration::from_secs(20), "the delivery", || async {
        (fake.orders().len() == 1).then_some(())
    })
    .await;

    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("admin connection");
    tokio::spawn(connection);
    let db = url.rsplit('/').next().expect("database name").to_owned();
    let counts = || async {
        let row = admin
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE s.ssl),
                        count(*) FILTER (WHERE a.application_name = 'ipn-bridge dispatcher locks')
                   FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                  WHERE a.datname = $1 AND a.pid <> pg_backend_pid()",
                &[&db],
            )
            .await
            .expect("pg_stat_ssl");
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2),
        )
    };
    let (all, tls, locks) = wait_for(Duration::from_secs(10), "the lock connection", || async {
        let c = counts().await;
        (c.2 > 0).then_some(c)
    })
    .await;
    assert!(all >= 2, "{all} connections");
    assert_eq!(
        tls, all,
        "{all} connections, {tls} with TLS ({locks} lock connections)"
    );

    let queue_list = |config: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_ipn-bridge"))
            .args(["queue", "list", "--limit", "0", "-c"])
            .arg(config)
            .output()
            .expect("queue list")
    };
    let listed = queue_list(&work.config_path());
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let without_ca = work.dir.path().join("without-ca.toml");
    let text = std::fs::read_to_string(work.config_path()).expect("config");
    assert!(text.contains(&ca_line), "{text}");
    std::fs::write(&without_ca, text.replacen(&ca_line, "", 1)).expect("write");
    let refused = queue_list(&without_ca);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("TLS: invalid peer certificate: UnknownIssuer"),
        "{stderr}"
    );
    assert!(!stderr.contains(PASSWORD), "the password leaked: {stderr}");
    drop(daemon);
}
