//! Delivering jobs to the fake Konnektive: failures that must be retried (an `ERROR` with
//! HTTP 200, an HTML 502), failures that must not (a refused product, an order in another
//! currency than its campaign's, an endpoint the API user may not use), and an import whose
//! outcome is unknown, which is reconciled instead of sent twice. Every attempt is a row.

mod support;

use std::time::Duration;

use ipn_bridge::domain::JobId;
use ipn_bridge::store::{JobRow, Store};
use support::fake_konnektive::{Behaviour, FakeConfig, FakeKonnektive};
use support::smtp::SmtpServer;
use support::*;

/// The fake, with campaign 12 booking in USD: the currency of the fixture orders.
async fn fake() -> FakeKonnektive {
    FakeKonnektive::start(FakeConfig {
        password: KONNEKTIVE_PASSWORD.into(),
        currencies: [(12, Some("USD".into()))].into(),
        ..FakeConfig::default()
    })
    .await
}

/// `setup`'s configuration with `[alerts]` (to `smtp`) and `extra` lines in
/// `[integration.main]`, written to the workdir; returns its path.
fn config_with_alerts(
    work: &Workdir,
    setup: &Setup,
    smtp: &SmtpServer,
    extra: &str,
) -> std::path::PathBuf {
    let text = setup.toml(&work.db()).replace(
        "[integration.main]\n",
        &format!("[integration.main]\n{extra}"),
    ) + &format!(
        "\n[alerts]\nsmtp_url = \"smtp://{}\"\nfrom = \"ipn-bridge <alerts@example.com>\"\n\
             to = [\"ops@example.com\"]\n",
        smtp.addr()
    );
    let path = work.config_path();
    std::fs::write(&path, text).expect("config");
    path
}

/// The kind of every alert recorded, oldest first.
fn alert_kinds(work: &Workdir) -> Vec<String> {
    let c = rusqlite::Connection::open(work.db()).expect("sqlite");
    let mut stmt = c
        .prepare("SELECT kind FROM alerts ORDER BY id")
        .expect("prepare");
    stmt.query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

async fn settled_job(store: &Store) -> JobRow {
    wait_for(Duration::from_secs(15), "the job to settle", || {
        let store = store.clone();
        async move {
            let jobs = store.list_jobs(Default::default()).await.ok()?;
            let job = jobs.into_iter().next()?;
            matches!(job.state.as_str(), "delivered" | "dead").then_some(job)
        }
    })
    .await
}

async fn outcomes(store: &Store, job: i64) -> Vec<(String, String)> {
    store
        .attempts(JobId(job))
        .await
        .expect("attempts")
        .into_iter()
        .map(|a| (a.kind, a.outcome.unwrap_or_default()))
        .collect()
}

fn pair(kind: &str, outcome: &str) -> (String, String) {
    (kind.to_owned(), outcome.to_owned())
}

#[tokio::test]
async fn error_answers_and_502_pages_are_retried_not_taken_for_success() {
    let work = Workdir::new();
    let fake = fake().await;
    fake.push_behaviour(
        "order/import",
        Behaviour::Error("Temporary database error, please try again".into()),
    );
    fake.push_behaviour("order/import", Behaviour::Html502);
    let daemon = start_daemon(&work, &Setup::new(&fake.base_url)).await;

    let (status, _) = post_ipn(
        daemon.addr,
        "ds24",
        fixture("01_on_payment_single_product.txt"),
    )
    .await;
    assert_eq!(status, 200);
    let store = open_store(&work);
    let job = settled_job(&store).await;

    assert_eq!(job.state, "delivered");
    assert_eq!(fake.orders().len(), 1, "exactly one order");
    // The ERROR envelope changed nothing, so the retry sends again; the 502 may have come
    // from a proxy after Konnektive acted, so the import is looked up before it is resent.
    assert_eq!(
        outcomes(&store, job.id).await,
        vec![
            pair("send", "retryable"),
            pair("send", "retryable"),
            pair("reconcile", "absent"),
            pair("send", "delivered"),
        ]
    );
    let attempts = store.attempts(JobId(job.id)).await.expect("attempts");
    assert!(
        attempts[0]
            .response
            .as_deref()
            .unwrap_or("")
            .contains("Temporary database error")
    );
    assert_eq!(attempts[1].http_status, Some(502));
    assert!(attempts.iter().all(|a| a.finished_at.is_some()));
    assert_eq!(store.ledger().await.expect("ledger").len(), 1);
    daemon.stop().await;
}

#[tokio::test]
async fn a_refused_product_is_dead_lettered_at_once_with_konnektives_message() {
    let work = Workdir::new();
    let fake = fake().await;
    let daemon = start_daemon(&work, &Setup::new(&fake.base_url)).await;
    // Product 999 maps through "*" to campaign product 33, which campaign 12 lacks.
    let body = variant("01_on_payment_single_product.txt", &[("product_id", "999")]);
    let (status, _) = post_ipn(daemon.addr, "ds24", body).await;
    assert_eq!(status, 200);

    let store = open_store(&work);
    let job = settled_job(&store).await;
    assert_eq!(job.state, "dead");
    assert_eq!(job.attempts, 1, "a permanent refusal is not retried");
    assert!(
        job.last_error
            .as_deref()
            .unwrap_or("")
            .contains("No products exist in the order"),
        "{:?}",
        job.last_error
    );
    assert!(fake.orders().is_empty());
    daemon.stop().await;
}

#[tokio::test]
async fn an_import_that_times_out_after_creating_the_order_is_found_not_resent() {
    let work = Workdir::new();
    let fake = fake().await;
    // Konnektive creates the order, then answers only after the client gave up.
    fake.push_behaviour(
        "order/import",
        Behaviour::CreateThenHang(Duration::from_secs(3)),
    );
    let mut setup = Setup::new(&fake.base_url);
    setup.timeout = "500ms";
    let daemon = start_daemon(&work, &setup).await;

    let (status, _) = post_ipn(
        daemon.addr,
        "ds24",
        fixture("01_on_payment_single_product.txt"),
    )
    .await;
    assert_eq!(status, 200);
    let store = open_store(&work);
    let job = settled_job(&store).await;

    assert_eq!(job.state, "delivered");
    assert_eq!(fake.orders().len(), 1, "the order exists exactly once");
    assert_eq!(
        fake.requests_to("order/import").len(),
        1,
        "never sent twice"
    );
    assert_eq!(
        outcomes(&store, job.id).await,
        vec![pair("send", "unknown"), pair("reconcile", "delivered")]
    );
    let ledger = store.ledger().await.expect("ledger");
    assert_eq!(
        ledger[0].target_order_id.as_deref(),
        Some(fake.orders()[0].order_id.as_str())
    );
    daemon.stop().await;
}

#[tokio::test]
async fn jobs_of_one_digistore24_order_run_in_the_order_received() {
    let work = Workdir::new();
    let fake = fake().await;
    // The first import fails twice; the add-on item of the same order must wait for it.
    fake.push_behaviour("order/import", Behaviour::Error("Temporary failure".into()));
    fake.push_behaviour("order/import", Behaviour::Error("Temporary failure".into()));
    let daemon = start_daemon(&work, &Setup::new(&fake.base_url)).await;
    let (status, _) = post_ipn(
        daemon.addr,
        "ds24",
        fixture("01_on_payment_single_product.txt"),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = post_ipn(daemon.addr, "ds24", fixture("16_on_payment_addon_item.txt")).await;
    assert_eq!(status, 200);

    let store = open_store(&work);
    wait_for(Duration::from_secs(15), "both jobs delivered", || {
        let store = store.clone();
        async move {
            let jobs = store.list_jobs(Default::default()).await.ok()?;
            (jobs.len() == 2 && jobs.iter().all(|j| j.state == "delivered")).then_some(())
        }
    })
    .await;
    let products: Vec<String> = fake
        .orders()
        .iter()
        .map(|o| o.param("product1_id").unwrap_or_default().to_owned())
        .collect();
    assert_eq!(products, ["31", "32"], "main item first, then the add-on");
    daemon.stop().await;
}

#[tokio::test]
async fn a_bad_login_pauses_the_target_until_a_probe_succeeds() {
    let work = Workdir::new();
    let fake = FakeKonnektive::start(FakeConfig {
        password: "the-new-password".into(),
        currencies: [(12, Some("USD".into()))].into(),
        ..FakeConfig::default()
    })
    .await;
    let mut setup = Setup::new(&fake.base_url);
    setup.max_in_flight = 1;
    let daemon = start_daemon(&work, &setup).await;
    for i in 0..3 {
        let body = variant(
            "01_on_payment_single_product.txt",
            &[
                ("order_id", &format!("PAUSE{i}")),
                ("transaction_id", &format!("9{i}")),
            ],
        );
        assert_eq!(post_ipn(daemon.addr, "ds24", body).await.0, 200);
    }
    // The first request (the campaign's currency, before the first import) is refused; the
    // probe sent at once is refused too, so the target pauses; from then on only probes go
    // out.
    wait_for(Duration::from_secs(10), "a periodic probe", || async {
        (fake.requests_to("campaign/query").len() >= 3).then_some(())
    })
    .await;
    assert_eq!(
        fake.requests_to("order/import").len(),
        0,
        "no import while paused"
    );
    let health: serde_json::Value = reqwest::get(format!("http://{}/healthz", daemon.addr))
        .await
        .expect("healthz")
        .json()
        .await
        .expect("json");
    assert_eq!(
        health["targets_paused"]["konnektive"].as_str(),
        Some("Invalid login credentials"),
        "{health}"
    );
    let store = open_store(&work);
    let jobs = store.list_jobs(Default::default()).await.expect("jobs");
    assert!(
        jobs.iter().all(|j| j.state == "pending" && j.attempts == 0),
        "{jobs:?}"
    );

    // The operator fixes the password in Konnektive: the next probe resumes the target.
    fake.set_password(KONNEKTIVE_PASSWORD);
    wait_for(Duration::from_secs(10), "all three delivered", || {
        let store = store.clone();
        async move {
            let jobs = store.list_jobs(Default::default()).await.ok()?;
            jobs.iter().all(|j| j.state == "delivered").then_some(())
        }
    })
    .await;
    assert_eq!(fake.orders().len(), 3);
    let first = &store.list_jobs(Default::default()).await.expect("jobs")[0];
    assert_eq!(first.attempts, 1, "the refused attempt did not count");
    assert_eq!(
        outcomes(&store, first.id).await,
        vec![pair("send", "target_down"), pair("send", "delivered")]
    );
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_drains_at_the_configured_rate_and_never_faster() {
    const RPS: f64 = 10.0;
    const BURST: u32 = 2;
    const IPNS: usize = 40;
    let work = Workdir::new();
    let fake = fake().await;
    let mut setup = Setup::new(&fake.base_url);
    setup.requests_per_second = RPS;
    setup.burst = BURST;
    setup.max_in_flight = 4;
    // 40 IPNs arrive far faster than 10 per second: a backlog builds and drains.
    let daemon = start_daemon(&work, &setup).await;
    for i in 0..IPNS {
        let body = variant(
            "01_on_payment_single_product.txt",
            &[
                ("order_id", &format!("RATE{i:03}")),
                ("transaction_id", &format!("7{i:03}")),
            ],
        );
        assert_eq!(post_ipn(daemon.addr, "ds24", body).await.0, 200);
    }
    let store = open_store(&work);
    wait_for(Duration::from_secs(20), "the backlog delivered", || {
        let store = store.clone();
        async move {
            let counts = store.job_counts().await.ok()?;
            (counts.get("delivered").copied() == Some(IPNS as u64)).then_some(())
        }
    })
    .await;
    daemon.stop().await;

    let times: Vec<std::time::Instant> = fake.requests().iter().map(|r| r.at).collect();
    assert_eq!(
        times.len(),
        IPNS + 1,
        "one campaign/query (the campaign's currency, once), then one request per job"
    );
    let n = times.len();
    let limit = RPS as usize + BURST as usize;
    for (i, start) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|t| t.duration_since(*start) < Duration::from_secs(1))
            .count();
        assert!(
            in_window <= limit,
            "{in_window} requests within one second (limit {limit})"
        );
    }
    // After the burst, requests follow the token rate.
    let span = times[n - 1]
        .duration_since(times[BURST as usize])
        .as_secs_f64();
    let rate = (n - BURST as usize - 1) as f64 / span;
    assert!(
        (RPS * 0.85..=RPS * 1.05).contains(&rate),
        "drained at {rate:.2} requests/s, configured {RPS}"
    );
}

#[tokio::test]
async fn delay_holds_the_push_after_receipt() {
    let work = Workdir::new();
    let fake = fake().await;
    let text = Setup::new(&fake.base_url).toml(&work.db()).replace(
        "[integration.main]\n",
        "[integration.main]\ndelay = \"1s\"\n",
    );
    std::fs::write(work.config_path(), text).expect("config");
    let daemon = start_daemon_at(&work.config_path()).await;
    let posted = std::time::Instant::now();
    let (status, _) = post_ipn(
        daemon.addr,
        "ds24",
        fixture("01_on_payment_single_product.txt"),
    )
    .await;
    assert_eq!(status, 200);
    wait_for(Duration::from_secs(10), "the delayed import", || async {
        (!fake.requests_to("order/import").is_empty()).then_some(())
    })
    .await;
    let sent = fake.requests_to("order/import")[0].at;
    assert!(
        sent.duration_since(posted) >= Duration::from_millis(990),
        "sent {:?} after receipt, delay is 1s",
        sent.duration_since(posted)
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_usd_order_into_an_eur_campaign_ends_dead_naming_both_currencies_and_is_not_sent() {
    let work = Workdir::new();
    let fake = fake().await;
    fake.set_campaign_currency(12, Some("EUR"));
    let smtp = SmtpServer::start(None).await;
    let path = config_with_alerts(&work, &Setup::new(&fake.base_url), &smtp, "");
    let daemon = start_daemon_at(&path).await;
    // Fixture 01 is a USD order.
    let (status, _) = post_ipn(
        daemon.addr,
        "ds24",
        fixture("01_on_payment_single_product.txt"),
    )
    .await;
    assert_eq!(status, 200);

    let store = open_store(&work);
    let job = settled_job(&store).await;
    assert_eq!(job.state, "dead");
    assert_eq!(job.attempts, 1, "a currency mismatch is not retried");
    let error = job.last_error.clone().unwrap_or_default();
    assert!(
        error.starts_with("order is USD, campaign 12 books EUR"),
        "{error}"
    );
    assert!(
        fake.requests_to("order/import").is_empty(),
        "nothing is booked in the wrong currency"
    );
    assert!(fake.orders().is_empty());
    assert_eq!(fake.requests_to("campaign/query").len(), 1);
    wait_for(Duration::from_secs(10), "the dead-letter alert", || async {
        (!alert_kinds(&work).is_empty()).then_some(())
    })
    .await;
    assert_eq!(alert_kinds(&work), ["dead_letter"], "exactly one alert");
    daemon.stop().await;
}

#[tokio::test]
async fn the_campaign_currency_is_asked_once_per_generation_and_again_after_a_reload() {
    let work = Workdir::new();
    let fake = fake().await;
    let setup = Setup::new(&fake.base_url);
    let daemon = start_daemon(&work, &setup).await;
    let store = open_store(&work);
    let post = |n: u32| {
        variant(
            "01_on_payment_single_product.txt",
            &[
                ("order_id", &format!("CUR{n}")),
                ("transaction_id", &format!("6{n}")),
            ],
        )
    };
    for n in 0..2 {
        assert_eq!(post_ipn(daemon.addr, "ds24", post(n)).await.0, 200);
        jobs_settled(&store, n as usize + 1).await;
    }
    assert_eq!(fake.orders().len(), 2);
    assert_eq!(
        fake.requests_to("campaign/query").len(),
        1,
        "cached for the generation"
    );

    // The campaign is switched to EUR in Konnektive; a reload starts a new generation, which
    // asks again, and the next USD order is refused.
    fake.set_campaign_currency(12, Some("EUR"));
    daemon.reload(&work.config_path()).expect("reload");
    assert_eq!(post_ipn(daemon.addr, "ds24", post(2)).await.0, 200);
    let jobs = jobs_settled(&store, 3).await;
    assert_eq!(jobs[2].state, "dead", "{jobs:?}");
    assert_eq!(fake.requests_to("campaign/query").len(), 2);
    assert_eq!(fake.orders().len(), 2);
    daemon.stop().await;
}

#[tokio::test]
async fn an_answer_without_a_currency_is_asked_once_and_imported_unchecked() {
    let work = Workdir::new();
    let fake = fake().await;
    fake.set_campaign_currency(12, None);
    let daemon = start_daemon(&work, &Setup::new(&fake.base_url)).await;
    for n in 0..2 {
        let body = variant(
            "01_on_payment_single_product.txt",
            &[
                ("order_id", &format!("NOCUR{n}")),
                ("transaction_id", &format!("5{n}")),
            ],
        );
        assert_eq!(post_ipn(daemon.addr, "ds24", body).await.0, 200);
    }
    let store = open_store(&work);
    wait_for(Duration::from_secs(15), "both imports delivered", || {
        let store = store.clone();
        async move {
            let jobs = store.list_jobs(Default::default()).await.ok()?;
            (jobs.len() == 2 && jobs.iter().all(|j| j.state == "delivered")).then_some(())
        }
    })
    .await;
    assert_eq!(fake.orders().len(), 2);
    assert_eq!(
        fake.requests_to("campaign/query").len(),
        1,
        "the missing currency is asked for (and warned about) once per generation"
    );
    daemon.stop().await;
}

#[tokio::test]
async fn a_refused_endpoint_ends_its_job_dead_instead_of_pausing_the_target_forever() {
    let work = Workdir::new();
    let fake = fake().await;
    let smtp = SmtpServer::start(None).await;
    let mut setup = Setup::new(&fake.base_url);
    setup.max_in_flight = 1;
    let text = config_with_alerts(&work, &setup, &smtp, "");
    let with_refund = std::fs::read_to_string(&text).expect("config").replace(
        "payment = \"import_order\"\n",
        "payment = \"import_order\"\nrefund = \"refund\"\n",
    );
    std::fs::write(&text, with_refund).expect("config");
    let daemon = start_daemon_at(&text).await;
    let store = open_store(&work);
    let payment = fixture("01_on_payment_single_product.txt");
    assert_eq!(post_ipn(daemon.addr, "ds24", payment).await.0, 200);
    jobs_settled(&store, 1).await;

    // The API user may not refund: Konnektive refuses the endpoint with a permission text.
    fake.set_denied_endpoints(&["transactions/refund"]);
    assert_eq!(
        post_ipn(daemon.addr, "ds24", fixture("04_on_refund.txt"))
            .await
            .0,
        200
    );
    let jobs = jobs_settled(&store, 2).await;
    let refund = &jobs[1];
    assert_eq!(refund.state, "dead", "{jobs:?}");
    assert_eq!(refund.attempts, 1);
    let error = refund.last_error.clone().unwrap_or_default();
    assert!(
        error.starts_with("Permission denied: API user is not allowed to use transactions/refund"),
        "Konnektive's message first: {error}"
    );
    assert!(
        error.ends_with(
            "campaign/query works, so the API user probably lacks the permission for \
             transactions/refund"
        ),
        "{error}"
    );

    // Other jobs keep flowing: the target was never paused.
    let other = variant(
        "01_on_payment_single_product.txt",
        &[("order_id", "FLOW0001"), ("transaction_id", "777001")],
    );
    assert_eq!(post_ipn(daemon.addr, "ds24", other).await.0, 200);
    let jobs = jobs_settled(&store, 3).await;
    assert_eq!(jobs[2].state, "delivered");
    assert_eq!(fake.orders().len(), 2);
    // One campaign/query for the currency, one probe right after the refusal; no cycle.
    assert_eq!(fake.requests_to("campaign/query").len(), 2);
    assert_eq!(fake.requests_to("transactions/refund").len(), 1);
    wait_for(Duration::from_secs(10), "the dead-letter alert", || async {
        (!alert_kinds(&work).is_empty()).then_some(())
    })
    .await;
    assert_eq!(alert_kinds(&work), ["dead_letter"], "no pause, no resume");
    let health: serde_json::Value = reqwest::get(format!("http://{}/healthz", daemon.addr))
        .await
        .expect("healthz")
        .json()
        .await
        .expect("json");
    assert_eq!(health["targets_paused"], serde_json::json!({}), "{health}");
    daemon.stop().await;
}
