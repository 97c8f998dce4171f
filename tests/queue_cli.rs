//! The review commands (`queue …`, `events …`) as an operator runs them: the real binary on a
//! database built with the real store API (ingest, lease, finish), with fixed timestamps so
//! the human output can be pinned by snapshots. One test runs the daemon in-process with the
//! fake Konnektive and retries a dead job from the command line.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use assert_cmd::Command;
use ipn_bridge::domain::{
    Action, Address, AttemptReport, Buyer, JobId, Money, Order, OrderItem, Outcome, Receipt,
};
use ipn_bridge::store::{Disposition, Ingested, NewIpn, NewJob, NewRoute, RouteDecision, Store};
use serde_json::Value;
use support::fake_konnektive::{FakeConfig, FakeKonnektive};
use support::*;

/// 2025-03-14 10:00:00 UTC.
const T0: i64 = 1_741_946_400_000;
const MINUTE: i64 = 60_000;

/// The database of the tests: job ids and what each is.
struct Fixture {
    work: Workdir,
    config: PathBuf,
}

/// Job 1 delivered (ledger), 2 dead (permanent refusal), 3 pending after a retryable
/// failure, 4 held behind 2 (same order), 5 pending never tried; event 6 routed to nothing.
const DELIVERED: i64 = 1;
const DEAD: i64 = 2;
const PENDING: i64 = 3;
const HELD: i64 = 4;
const FRESH: i64 = 5;
const SKIPPED_EVENT: i64 = 6;

fn order(reference: &str, email: &str) -> Order {
    Order {
        reference: reference.to_owned(),
        reference_field: "custom1".to_owned(),
        campaign_id: 12,
        buyer: Buyer {
            email: email.to_owned(),
            first_name: "Jane".to_owned(),
            last_name: "Doe".to_owned(),
            ..Buyer::default()
        },
        address: Address {
            country: "DE".to_owned(),
            ..Address::default()
        },
        items: vec![OrderItem {
            product_id: 31,
            quantity: 1,
            unit_price: Money::from_minor(4_900),
            ship_price: Money::ZERO,
        }],
        currency: "EUR".to_owned(),
        placed_on: "2025-03-14".to_owned(),
        extra_fields: Vec::new(),
        address_fallback: Vec::new(),
    }
}

fn ipn(n: i64, order_id: &str, event: &str, job: bool) -> NewIpn {
    let email = format!("buyer{n}@example.com");
    let routes = if job {
        vec![NewRoute {
            integration: "main".into(),
            decision: RouteDecision::Job {
                job: NewJob {
                    target: "konnektive".into(),
                    action: Box::new(Action::ImportOrder {
                        order: Box::new(order(&format!("DS24-{order_id}-1-T{n}"), &email)),
                        auto_approve: false,
                    }),
                    order_key: order_id.to_owned(),
                    not_before: T0 + n * MINUTE,
                },
                reason: "on.payment = import_order".into(),
            },
        }]
    } else {
        vec![NewRoute {
            integration: "main".into(),
            decision: RouteDecision::Skip {
                reason: format!("event {event} is not configured in [integration.main.on]"),
            },
        }]
    };
    NewIpn {
        source: "ds24".into(),
        business_key: format!("key-{n}"),
        event: event.into(),
        order_id: Some(order_id.into()),
        order_item_id: Some("1".into()),
        product_id: Some("412346".into()),
        transaction_id: Some(format!("T{n}")),
        buyer_email: Some(email),
        amount: Some("49.00".into()),
        currency: Some("EUR".into()),
        received_at: T0 + n * MINUTE,
        raw_body: format!("event={event}&order_id={order_id}").into_bytes(),
        routes,
        alerts: Vec::new(),
        parent_transaction_id: None,
    }
}

fn report(outcome: Outcome, response: &str) -> AttemptReport {
    AttemptReport {
        outcome,
        endpoint: "order/import".into(),
        http_status: Some(200),
        request: "loginId=ds24bridge&password=[redacted]&campaignId=12".into(),
        response: response.into(),
        maybe_applied: false,
    }
}

/// Ingests one IPN and, when `finish` is given, leases its job at `at` and ends the attempt.
async fn add(
    store: &Store,
    n: i64,
    order_id: &str,
    finish: Option<(AttemptReport, Disposition)>,
) -> i64 {
    let job = match store
        .ingest(ipn(n, order_id, "on_payment", true))
        .await
        .expect("ingest")
    {
        Ingested::Stored { jobs, .. } => jobs[0],
        other => panic!("{other:?}"),
    };
    if let Some((report, disposition)) = finish {
        let at = T0 + n * MINUTE + 1_000;
        let leased = store.lease_due("konnektive", at, 10).await.expect("lease");
        assert_eq!(leased.len(), 1, "exactly job {job} is due");
        let l = &leased[0];
        store
            .finish_attempt(l.id, l.attempt_id, report, disposition, None, at + 500)
            .await
            .expect("finish");
    }
    job.0
}

async fn build() -> Fixture {
    let work = Workdir::new();
    let config = work.write_config(&Setup::new("http://127.0.0.1:9"));
    let store = Store::open(&work.db()).expect("open");
    let receipt = Receipt {
        order_id: Some("K-1001".into()),
        customer_id: Some("C-77".into()),
        purchase_ids: vec!["P-5".into()],
        transaction_ids: vec!["TX-9".into()],
    };
    let delivered = add(
        &store,
        1,
        "A1",
        Some((
            report(
                Outcome::Delivered(receipt.clone()),
                r#"{"result":"SUCCESS","message":{"orderId":"K-1001"}}"#,
            ),
            Disposition::Delivered(receipt),
        )),
    )
    .await;
    let refused = "No products exist in the order";
    let dead = add(
        &store,
        2,
        "B2",
        Some((
            report(
                Outcome::Permanent {
                    reason: refused.into(),
                },
                // A secret that slipped through must still not be shown.
                &format!(r#"{{"result":"ERROR","message":"{refused}"}} password=leaked-pw"#),
            ),
            Disposition::Dead,
        )),
    )
    .await;
    let pending = add(
        &store,
        3,
        "C3",
        Some((
            report(
                Outcome::Retryable {
                    reason: "HTTP 502".into(),
                    retry_after: None,
                },
                "<html>Bad Gateway</html>",
            ),
            Disposition::Retry {
                at: T0 + 30 * MINUTE,
                reconcile: true,
            },
        )),
    )
    .await;
    // Job 4 belongs to order B2 like dead job 2. The store API has no way to hold a job yet
    // (the dispatcher will), so the state is set directly, as the dispatcher would.
    let held = add(&store, 4, "B2", None).await;
    let fresh = add(&store, 5, "E5", None).await;
    match store
        .ingest(ipn(SKIPPED_EVENT, "F6", "on_affiliation", false))
        .await
        .expect("ingest")
    {
        Ingested::Stored { ipn_id, jobs } => {
            assert_eq!(ipn_id.0, SKIPPED_EVENT);
            assert!(jobs.is_empty());
        }
        other => panic!("{other:?}"),
    }
    store.close().await;
    assert_eq!(
        [delivered, dead, pending, held, fresh],
        [DELIVERED, DEAD, PENDING, HELD, FRESH]
    );
    Fixture { work, config }
}

fn query_i64(work: &Workdir, q: &str) -> i64 {
    let c = rusqlite::Connection::open(work.db()).expect("sqlite");
    c.query_row(q, [], |r| r.get(0)).expect("query")
}

impl Fixture {
    fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ipn-bridge"));
        cmd.args(args)
            .arg("-c")
            .arg(&self.config)
            .env("USER", "alice")
            .env_remove("SUDO_USER")
            .env_remove("IPN_BRIDGE_CONFIG")
            .env("RUST_LOG", "warn")
            .timeout(Duration::from_secs(30));
        cmd
    }

    /// Runs and returns stdout; asserts the exit code.
    fn run(&self, args: &[&str], code: i32) -> String {
        let out = self.cli(args).output().expect("run ipn-bridge");
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    fn stderr(&self, args: &[&str], code: i32) -> String {
        let out = self.cli(args).output().expect("run ipn-bridge");
        assert_eq!(out.status.code(), Some(code), "{args:?}");
        String::from_utf8(out.stderr).expect("utf-8")
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        serde_json::from_str(&self.run(&args, 0)).expect("JSON")
    }

    fn state(&self, job: i64) -> String {
        self.json(&["queue", "show", &job.to_string()])["job"]["state"]
            .as_str()
            .expect("state")
            .to_owned()
    }
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_i64().expect("id"))
        .collect()
}

#[tokio::test]
async fn list_shows_every_job_newest_first_as_a_table() {
    let f = build().await;
    insta::assert_snapshot!(f.run(&["queue", "list"], 0));
}

#[tokio::test]
async fn list_filters_by_state_integration_since_and_limit() {
    let f = build().await;
    let list = |args: &[&str]| {
        let mut all = vec!["queue", "list"];
        all.extend_from_slice(args);
        let v = f.json(&all);
        v["jobs"]
            .as_array()
            .expect("jobs")
            .iter()
            .map(|j| j["id"].as_i64().expect("id"))
            .collect::<Vec<_>>()
    };
    assert_eq!(list(&[]), vec![5, 4, 3, 2, 1]);
    assert_eq!(list(&["--state", "dead"]), vec![DEAD]);
    assert_eq!(list(&["--state", "pending"]), vec![FRESH, PENDING]);
    assert_eq!(list(&["--state", "held"]), vec![HELD]);
    assert_eq!(list(&["--integration", "main", "--limit", "2"]), vec![5, 4]);
    assert!(list(&["--integration", "other"]).is_empty());
    // The fixture lives in March 2025: nothing is younger than two hours, all younger than
    // a century.
    assert!(list(&["--since", "2h"]).is_empty());
    assert_eq!(list(&["--since", "36500d"]).len(), 5);
    // A bad state or age is a usage error.
    f.run(&["queue", "list", "--state", "lost"], 2);
    f.run(&["queue", "list", "--since", "2 hours"], 2);
}

#[tokio::test]
async fn list_json_shape() {
    let f = build().await;
    let v = f.json(&["queue", "list", "--state", "pending", "--limit", "1"]);
    let job = &v["jobs"][0];
    let expected = serde_json::json!({
        "id": FRESH,
        "event_id": 5,
        "integration": "main",
        "target": "konnektive",
        "action": "import_order",
        "state": "pending",
        "attempts": 0,
        "needs_reconcile": false,
        "order_key": "E5",
        "ds24_order_id": "E5",
        "product_id": "412346",
        "event": "on_payment",
        "created_at": "2025-03-14T10:05:00.000Z",
        "updated_at": "2025-03-14T10:05:00.000Z",
        "next_attempt_at": "2025-03-14T10:05:00.000Z",
        "last_error": null
    });
    assert_eq!(job, &expected);
}

#[tokio::test]
async fn show_has_the_ipn_attempts_with_answers_and_secrets_redacted() {
    let f = build().await;
    let text = f.run(&["queue", "show", &DEAD.to_string()], 0);
    assert!(!text.contains("leaked-pw"), "{text}");
    assert!(!text.contains("buyer2@"), "the e-mail is masked: {text}");
    insta::assert_snapshot!("show_dead", text);
    insta::assert_snapshot!(
        "show_delivered",
        f.run(&["queue", "show", &DELIVERED.to_string()], 0)
    );
}

#[tokio::test]
async fn show_json_shape() {
    let f = build().await;
    let v = f.json(&["queue", "show", &DELIVERED.to_string()]);
    assert_eq!(v["job"]["state"], "delivered");
    assert_eq!(v["event"]["buyer_email"], "b***@example.com");
    assert_eq!(v["event"]["amount"], "49.00");
    assert_eq!(v["event"]["body_purged"], false);
    assert_eq!(v["attempts_purged"], false);
    assert_eq!(v["attempts"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        v["attempts"][0],
        serde_json::json!({
            "number": 1,
            "kind": "send",
            "started_at": "2025-03-14T10:01:01.000Z",
            "finished_at": "2025-03-14T10:01:01.500Z",
            "outcome": "delivered",
            "endpoint": "order/import",
            "http_status": 200,
            "reason": "",
            "request": "loginId=ds24bridge&password=[redacted]&campaignId=12",
            "response": "{\"result\":\"SUCCESS\",\"message\":{\"orderId\":\"K-1001\"}}"
        })
    );
    assert_eq!(v["ledger"]["target_order_id"], "K-1001");
    assert_eq!(v["ledger"]["purchase_ids"], serde_json::json!(["P-5"]));
    assert_eq!(v["ledger"]["reference"], "DS24-A1-1-T1");
    assert_eq!(v["operator_actions"], serde_json::json!([]));

    let dead = f.json(&["queue", "show", &DEAD.to_string()]);
    assert_eq!(dead["ledger"], Value::Null);
    let response = dead["attempts"][0]["response"].as_str().expect("response");
    assert!(response.ends_with("password=[redacted]"), "{response}");
}

#[tokio::test]
async fn unknown_ids_exit_3_and_change_nothing() {
    let f = build().await;
    let err = f.stderr(&["queue", "show", "999"], 3);
    assert!(err.contains("job 999"), "{err}");
    f.stderr(&["events", "show", "999"], 3);
    let err = f.stderr(&["queue", "retry", &DEAD.to_string(), "999"], 3);
    assert!(err.contains("job 999 does not exist"), "{err}");
    f.stderr(&["queue", "drop", "999", "--reason", "x"], 3);
    assert_eq!(f.state(DEAD), "dead", "all or nothing");
    // No configuration, no database: failures, not "not found".
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ipn-bridge"));
    cmd.args(["queue", "list", "-c", "/nonexistent/connectors.toml"])
        .assert()
        .code(1);
    std::fs::remove_file(f.work.db()).expect("rm db");
    let err = f.stderr(&["queue", "list"], 1);
    assert!(err.contains("no database"), "{err}");
}

#[tokio::test]
async fn retry_makes_a_dead_job_pending_releases_the_held_one_and_is_audited() {
    let f = build().await;
    // The held job cannot overtake the dead one of the same order.
    let err = f.stderr(&["queue", "retry", &HELD.to_string()], 1);
    assert!(err.contains("waits behind job 2"), "{err}");

    let before = ipn_bridge::clock::Clock::now_ms(&ipn_bridge::clock::SystemClock);
    let out = f.json(&[
        "queue",
        "retry",
        &DEAD.to_string(),
        "--reason",
        "product 33 added to campaign 12",
    ]);
    assert_eq!(ids(&out["retried"]), vec![DEAD]);
    assert_eq!(ids(&out["released"]), vec![HELD]);

    let shown = f.json(&["queue", "show", &DEAD.to_string()]);
    assert_eq!(shown["job"]["state"], "pending");
    let due = query_i64(&f.work, "SELECT next_attempt_at FROM jobs WHERE id = 2");
    assert!(due >= before, "due now");
    let actions = &shown["operator_actions"];
    assert_eq!(actions.as_array().map(Vec::len), Some(1));
    assert_eq!(actions[0]["user"], "alice");
    assert_eq!(actions[0]["command"], "retry");
    assert_eq!(actions[0]["reason"], "product 33 added to campaign 12");
    assert_eq!(f.state(HELD), "pending");
    let held_actions = f.json(&["queue", "show", &HELD.to_string()])["operator_actions"].clone();
    assert_eq!(held_actions[0]["command"], "release");

    // The default reason, and $SUDO_USER before $USER.
    let out = f
        .cli(&["queue", "retry", &PENDING.to_string()])
        .env("SUDO_USER", "bob")
        .output()
        .expect("run");
    assert!(out.status.success());
    assert_eq!(
        query_i64(
            &f.work,
            "SELECT COUNT(*) FROM operator_actions
             WHERE job_id = 3 AND user = 'bob' AND reason = 'manual retry'"
        ),
        1
    );
}

#[tokio::test]
async fn retry_dead_takes_every_dead_job() {
    let f = build().await;
    let out = f.json(&["queue", "retry", "--dead", "--integration", "main"]);
    assert_eq!(ids(&out["retried"]), vec![DEAD]);
    assert_eq!(ids(&out["released"]), vec![HELD]);
    let text = f.run(&["queue", "retry", "--dead"], 0);
    assert!(text.contains("no dead jobs"), "{text}");
    // --integration without --dead, ids with --dead: usage errors.
    f.run(&["queue", "retry", "2", "--integration", "main"], 2);
    f.run(&["queue", "retry", "2", "--dead"], 2);
}

#[tokio::test]
async fn a_delivered_job_is_never_retried() {
    let f = build().await;
    let err = f.stderr(&["queue", "retry", &DELIVERED.to_string(), "2"], 1);
    assert!(err.contains("job 1 was delivered"), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(f.state(DELIVERED), "delivered");
    assert_eq!(f.state(DEAD), "dead", "all or nothing");
    assert_eq!(
        query_i64(&f.work, "SELECT COUNT(*) FROM operator_actions"),
        0
    );
    let err = f.stderr(
        &["queue", "drop", &DELIVERED.to_string(), "--reason", "x"],
        1,
    );
    assert!(err.contains("job 1 was delivered"), "{err}");
}

#[tokio::test]
async fn drop_records_the_reason_releases_held_jobs_and_is_final() {
    let f = build().await;
    // A reason is required.
    f.run(&["queue", "drop", &DEAD.to_string()], 2);
    f.run(&["queue", "drop", &DEAD.to_string(), "--reason", " "], 2);

    let out = f.json(&[
        "queue",
        "drop",
        &DEAD.to_string(),
        "--reason",
        "test order, imported by hand",
    ]);
    assert_eq!(ids(&out["dropped"]), vec![DEAD]);
    assert_eq!(ids(&out["released"]), vec![HELD]);
    let shown = f.json(&["queue", "show", &DEAD.to_string()]);
    assert_eq!(shown["job"]["state"], "dropped");
    assert_eq!(shown["operator_actions"][0]["command"], "drop");
    assert_eq!(
        shown["operator_actions"][0]["reason"],
        "test order, imported by hand"
    );
    assert_eq!(shown["operator_actions"][0]["user"], "alice");
    assert_eq!(f.state(HELD), "pending");

    let err = f.stderr(&["queue", "retry", &DEAD.to_string()], 1);
    assert!(err.contains("dropped"), "{err}");
    let err = f.stderr(
        &["queue", "drop", &DEAD.to_string(), "--reason", "again"],
        1,
    );
    assert!(err.contains("dropped"), "{err}");
}

#[tokio::test]
async fn purge_deletes_old_attempts_and_bodies_but_keeps_keys_and_ledger() {
    let f = build().await;
    f.run(
        &["queue", "drop", &FRESH.to_string(), "--reason", "duplicate"],
        0,
    );
    // Dropped "now": too young for the purge. Age it like the rest of the fixture.
    sql(
        &f.work,
        "UPDATE jobs SET updated_at = 1741946700000 WHERE id = 5",
    );

    let dry = f.json(&["queue", "purge", "--older-than", "90d", "--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["attempts_deleted"], 1, "the delivered job's attempt");
    assert_eq!(dry["bodies_cleared"], 2, "events 1 and 5");
    assert_eq!(query_i64(&f.work, "SELECT COUNT(*) FROM attempts"), 3);

    let done = f.json(&["queue", "purge", "--older-than", "90d"]);
    assert_eq!(done["attempts_deleted"], 1);
    assert_eq!(done["bodies_cleared"], 2);
    let again = f.json(&["queue", "purge", "--older-than", "90d"]);
    assert_eq!(again["attempts_deleted"], 0);

    // Kept: every IPN row with its business key, every job, the ledger, the dead and pending
    // jobs' attempts, the bodies of unfinished and job-less events.
    assert_eq!(query_i64(&f.work, "SELECT COUNT(*) FROM ipns"), 6);
    assert_eq!(
        query_i64(&f.work, "SELECT COUNT(DISTINCT business_key) FROM ipns"),
        6
    );
    assert_eq!(query_i64(&f.work, "SELECT COUNT(*) FROM jobs"), 5);
    assert_eq!(query_i64(&f.work, "SELECT COUNT(*) FROM ledger"), 1);
    assert_eq!(query_i64(&f.work, "SELECT COUNT(*) FROM attempts"), 2);
    assert_eq!(
        query_i64(
            &f.work,
            "SELECT COUNT(*) FROM ipns WHERE length(raw_body) = 0"
        ),
        2
    );
    assert_eq!(
        query_i64(
            &f.work,
            "SELECT COUNT(*) FROM operator_actions WHERE command = 'purge'"
        ),
        2
    );

    let shown = f.json(&["queue", "show", &DELIVERED.to_string()]);
    assert_eq!(shown["attempts_purged"], true);
    assert_eq!(shown["event"]["body_purged"], true);
    assert_eq!(shown["ledger"]["target_order_id"], "K-1001");

    // The idempotency survives: the same IPN again is a duplicate.
    let store = Store::open(&f.work.db()).expect("open");
    let again = store
        .ingest(ipn(1, "A1", "on_payment", true))
        .await
        .expect("ingest");
    assert!(matches!(again, Ingested::Duplicate { .. }), "{again:?}");
    store.close().await;

    // Less than a day is refused.
    f.run(&["queue", "purge", "--older-than", "2h"], 2);
}

#[tokio::test]
async fn events_list_and_show_tell_how_each_ipn_was_routed() {
    let f = build().await;
    insta::assert_snapshot!("events_list", f.run(&["events", "list"], 0));
    insta::assert_snapshot!(
        "events_show_skipped",
        f.run(&["events", "show", &SKIPPED_EVENT.to_string()], 0)
    );

    let v = f.json(&["events", "list", "--limit", "2"]);
    let events = v["events"].as_array().expect("events");
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["id"], SKIPPED_EVENT);
    assert_eq!(
        events[1],
        serde_json::json!({
            "id": 5,
            "source": "ds24",
            "event": "on_payment",
            "ds24_order_id": "E5",
            "order_item_id": "1",
            "product_id": "412346",
            "transaction_id": "T5",
            "amount": "49.00",
            "currency": "EUR",
            "buyer_email": "b***@example.com",
            "received_at": "2025-03-14T10:05:00.000Z",
            "body_purged": false,
            "routes": [{
                "integration": "main",
                "decision": "job",
                "reason": "on.payment = import_order",
                "job_id": 5,
                "job_state": "pending"
            }]
        })
    );
    let shown = f.json(&["events", "show", "2"]);
    assert_eq!(shown["event"]["ds24_order_id"], "B2");
    assert_eq!(shown["routes"][0]["job_state"], "dead");
    assert!(
        f.json(&["events", "list", "--since", "1h"])["events"]
            .as_array()
            .expect("events")
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_job_retried_from_the_cli_is_delivered_by_the_running_daemon() {
    let work = Workdir::new();
    let fake = FakeKonnektive::start(FakeConfig {
        password: KONNEKTIVE_PASSWORD.into(),
        // The fixture orders are in USD; the fake books EUR unless told otherwise.
        currencies: [(12, Some("USD".into()))].into(),
        ..FakeConfig::default()
    })
    .await;
    let setup = Setup::new(&fake.base_url);
    let daemon = start_daemon(&work, &setup).await;
    // Product 999 maps through "*" to campaign product 33, which campaign 12 lacks: dead.
    let body = variant("01_on_payment_single_product.txt", &[("product_id", "999")]);
    let (status, _) = post_ipn(daemon.addr, "ds24", body).await;
    assert_eq!(status, 200);
    let store = open_store(&work);
    let job = wait_for(Duration::from_secs(15), "the job to die", || {
        let store = store.clone();
        async move {
            let jobs = store.list_jobs(Default::default()).await.ok()?;
            jobs.into_iter().find(|j| j.state == "dead")
        }
    })
    .await;
    assert!(fake.orders().is_empty());

    // The operator fixes the campaign and retries from the command line.
    fake.set_campaign(12, vec![31, 32, 33]);
    let config = work.config_path();
    let id = job.id.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_ipn-bridge"))
            .args(["queue", "retry", &id, "--reason", "product 33 added", "-c"])
            .arg(&config)
            .env("USER", "carol")
            .env_remove("SUDO_USER")
            .timeout(Duration::from_secs(10))
            .output()
            .expect("run")
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let delivered = wait_for(Duration::from_secs(2), "delivery after the retry", || {
        let store = store.clone();
        async move {
            let j = store.job(JobId(job.id)).await.ok()?;
            (j.state == "delivered").then_some(j)
        }
    })
    .await;
    assert_eq!(delivered.attempts, 2);
    assert_eq!(fake.orders().len(), 1, "exactly one order");
    store.close().await;
    daemon.stop().await;
}

fn sql(work: &Workdir, statement: &str) {
    let c = rusqlite::Connection::open(work.db()).expect("sqlite");
    c.execute_batch(statement).expect("sql");
}
