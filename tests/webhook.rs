//! Webhook targets over real sockets: a receiver that checks the Standard Webhooks signature
//! itself, the JSON and headers it gets, retries on 5xx, a dead letter on 410, per-order
//! order, the rate limit, a crash mid-drain, and a Konnektive and a webhook integration of
//! the same IPN side by side. Config errors for kind/action mismatches point at the line.

mod support;

use std::time::Duration;

use ipn_bridge::domain::JobId;
use support::fake_konnektive::{FakeConfig, FakeKonnektive};
use support::smtp::SmtpServer;
use support::webhook_receiver::{Answer, SECRET, WebhookReceiver};
use support::*;

/// A configuration with one webhook target (`hook`, at `url`) and one integration
/// (`to-hook`) forwarding payments and refunds; `target_extra` goes into the target table.
fn webhook_toml(work: &Workdir, listen: &str, url: &str, target_extra: &str) -> String {
    format!(
        r#"[server]
listen = "{listen}"

[store]
path = "{db}"

[delivery]
timeout = "2s"
retry_initial = "100ms"
retry_max = "400ms"
give_up_after = "1h"

[source.ds24]
passphrase = "{PASSPHRASE}"

[target.hook]
kind = "webhook"
url = "{url}"
secret = "{SECRET}"
headers = {{ "X-Api-Key" = "key-123" }}
{target_extra}

[integration.to-hook]
target = "hook"
[integration.to-hook.on]
payment = "forward"
refund = "forward"
"#,
        db = work.db().display(),
    )
}

async fn start(work: &Workdir, toml: &str) -> ipn_bridge::app::Running {
    let path = work.config_path();
    std::fs::write(&path, toml).expect("config");
    start_daemon_at(&path).await
}

/// The fake Konnektive of these tests: campaign 12 books USD, as the fixture orders are.
async fn usd_konnektive() -> FakeKonnektive {
    FakeKonnektive::start(FakeConfig {
        password: KONNEKTIVE_PASSWORD.into(),
        currencies: [(12, Some("USD".into()))].into(),
        ..FakeConfig::default()
    })
    .await
}

/// A configuration with the Konnektive integration `main` (on `fake`) and a webhook
/// integration `to-hook` forwarding payments to `hook`.
fn konnektive_and_hook(work: &Workdir, fake: &FakeKonnektive, hook: &WebhookReceiver) -> String {
    Setup::new(&fake.base_url).toml(&work.db()).replace(
        "[integration.main]\n",
        "[integration.main]\ntarget = \"konnektive\"\n",
    ) + &format!(
        "\n[target.hook]\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\n\n\
         [integration.to-hook]\ntarget = \"hook\"\n[integration.to-hook.on]\n\
         payment = \"forward\"\n",
        hook.url()
    )
}

#[tokio::test]
async fn a_forwarded_payment_is_signed_json_with_every_field_but_sha_sign() {
    let work = Workdir::new();
    let hook = WebhookReceiver::start().await;
    let daemon = start(&work, &webhook_toml(&work, "127.0.0.1:0", &hook.url(), "")).await;
    let body = fixture("01_on_payment_single_product.txt");
    let (status, _) = post_ipn(daemon.addr, "ds24", body.clone()).await;
    assert_eq!(status, 200);
    let store = open_store(&work);
    let jobs = jobs_settled(&store, 1).await;
    assert_eq!(jobs[0].state, "delivered");

    let got = hook.received();
    assert_eq!(got.len(), 1);
    let req = &got[0];
    assert!(
        req.signature_valid,
        "signature: {}",
        req.header("webhook-signature")
    );
    assert_eq!(req.header("content-type"), "application/json");
    assert_eq!(req.header("x-api-key"), "key-123");
    let id = req.header("webhook-id");
    assert_eq!(id, format!("ipnb_{}_to-hook", jobs[0].ipn_id));
    assert!(req.header("webhook-timestamp").parse::<i64>().is_ok());

    let json = req.json();
    assert_eq!(json["type"], "on_payment");
    assert!(json["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(json["ipn_bridge"]["event_id"], jobs[0].ipn_id);
    assert_eq!(json["ipn_bridge"]["source"], "ds24");
    assert_eq!(json["ipn_bridge"]["integration"], "to-hook");
    let data = json["data"].as_object().unwrap();
    assert!(!data.contains_key("sha_sign"));
    for (name, value) in pairs(&body) {
        if name == "sha_sign" {
            continue;
        }
        assert_eq!(data[&name], value, "field {name}");
    }
    // The secret and the extra header's value never reach the stored attempt.
    let attempts = store.attempts(JobId(jobs[0].id)).await.expect("attempts");
    let stored = attempts[0].request.clone().unwrap_or_default();
    assert!(stored.contains("webhook-id: ipnb_"), "{stored}");
    assert!(stored.contains("X-Api-Key: [redacted]"), "{stored}");
    assert!(!stored.contains("key-123") && !stored.contains(SECRET));
    daemon.stop().await;
}

#[tokio::test]
async fn server_errors_are_retried_until_one_delivery_and_every_attempt_is_recorded() {
    let work = Workdir::new();
    let hook = WebhookReceiver::start().await;
    hook.script([
        Answer::status(500),
        Answer {
            status: 503,
            body: "busy",
            retry_after: Some("0"),
            delay: Duration::ZERO,
        },
    ]);
    let daemon = start(&work, &webhook_toml(&work, "127.0.0.1:0", &hook.url(), "")).await;
    post_ipn(
        daemon.addr,
        "ds24",
        fixture("01_on_payment_single_product.txt"),
    )
    .await;
    let store = open_store(&work);
    let jobs = jobs_settled(&store, 1).await;
    assert_eq!(jobs[0].state, "delivered");
    let got = hook.received();
    assert_eq!(got.len(), 3);
    assert_eq!(hook.delivered().len(), 1, "one delivery");
    let ids: Vec<&str> = got.iter().map(|r| r.header("webhook-id")).collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one webhook-id: {ids:?}"
    );
    assert!(got.iter().all(|r| r.signature_valid));
    let attempts = store.attempts(JobId(jobs[0].id)).await.expect("attempts");
    let statuses: Vec<Option<u16>> = attempts.iter().map(|a| a.http_status).collect();
    assert_eq!(statuses, vec![Some(500), Some(503), Some(204)]);
    daemon.stop().await;
}

#[tokio::test]
async fn gone_ends_the_job_dead_with_the_answer_and_an_alert() {
    let work = Workdir::new();
    let hook = WebhookReceiver::start().await;
    hook.script([Answer {
        status: 410,
        body: "this hook was deleted",
        retry_after: None,
        delay: Duration::ZERO,
    }]);
    let smtp = SmtpServer::start(None).await;
    let toml = webhook_toml(&work, "127.0.0.1:0", &hook.url(), "")
        + &format!(
            "\n[alerts]\nsmtp_url = \"smtp://{}\"\nfrom = \"ipn-bridge <alerts@example.com>\"\n\
             to = [\"ops@example.com\"]\n",
            smtp.addr()
        );
    let daemon = start(&work, &toml).await;
    post_ipn(
        daemon.addr,
        "ds24",
        fixture("01_on_payment_single_product.txt"),
    )
    .await;
    let store = open_store(&work);
    let jobs = jobs_settled(&store, 1).await;
    assert_eq!(jobs[0].state, "dead");
    let error = jobs[0].last_error.clone().unwrap_or_default();
    assert!(error.contains("HTTP 410: this hook was deleted"), "{error}");
    assert_eq!(hook.received().len(), 1, "a 410 is not retried");
    let c = rusqlite::Connection::open(work.db()).expect("sqlite");
    let kinds: Vec<String> = c
        .prepare("SELECT kind FROM alerts ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(kinds, vec!["dead_letter".to_owned()]);
    daemon.stop().await;
}

#[tokio::test]
async fn a_refund_never_overtakes_its_payment() {
    let work = Workdir::new();
    let hook = WebhookReceiver::start().await;
    // The payment fails twice; the refund, received later, waits for it.
    hook.script([Answer::status(500), Answer::status(502)]);
    let daemon = start(&work, &webhook_toml(&work, "127.0.0.1:0", &hook.url(), "")).await;
    post_ipn(
        daemon.addr,
        "ds24",
        fixture("01_on_payment_single_product.txt"),
    )
    .await;
    post_ipn(daemon.addr, "ds24", fixture("04_on_refund.txt")).await;
    let store = open_store(&work);
    let jobs = jobs_settled(&store, 2).await;
    assert!(jobs.iter().all(|j| j.state == "delivered"));
    let types: Vec<String> = hook
        .received()
        .iter()
        .map(|r| r.json()["type"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        types,
        vec!["on_payment", "on_payment", "on_payment", "on_refund"]
    );
    daemon.stop().await;
}

#[tokio::test]
async fn the_rate_limit_holds_for_a_webhook_target() {
    let work = Workdir::new();
    let hook = WebhookReceiver::start().await;
    let toml = webhook_toml(
        &work,
        "127.0.0.1:0",
        &hook.url(),
        "requests_per_second = 5.0\nburst = 1\nmax_in_flight = 4",
    );
    let daemon = start(&work, &toml).await;
    for (i, id) in ["A1", "A2", "A3", "A4"].iter().enumerate() {
        let body = variant(
            "01_on_payment_single_product.txt",
            &[("order_id", id), ("transaction_id", &format!("9000{i}"))],
        );
        post_ipn(daemon.addr, "ds24", body).await;
    }
    let store = open_store(&work);
    jobs_settled(&store, 4).await;
    let times: Vec<_> = hook.received().iter().map(|r| r.at).collect();
    assert_eq!(times.len(), 4);
    // 5 per second, burst 1: four requests span three periods of 200 ms. The first one also
    // opens the connection, so it can reach the receiver tens of ms after its token; without
    // the limit all four would arrive within a few ms.
    let span = times[3].duration_since(times[0]);
    assert!(span >= Duration::from_millis(450), "{span:?}");
    daemon.stop().await;
}

#[tokio::test]
async fn a_konnektive_and_a_webhook_integration_of_one_ipn_are_both_delivered() {
    let work = Workdir::new();
    let hook = WebhookReceiver::start().await;
    let fake = usd_konnektive().await;
    let toml = konnektive_and_hook(&work, &fake, &hook);
    let daemon = start(&work, &toml).await;
    post_ipn(
        daemon.addr,
        "ds24",
        fixture("01_on_payment_single_product.txt"),
    )
    .await;
    let store = open_store(&work);
    let jobs = jobs_settled(&store, 2).await;
    assert!(jobs.iter().all(|j| j.state == "delivered"), "{jobs:?}");
    assert_eq!(fake.orders().len(), 1);
    assert_eq!(hook.delivered().len(), 1);
    assert!(hook.delivered()[0].signature_valid);
    daemon.stop().await;
}

#[tokio::test]
async fn a_crash_mid_drain_delivers_every_event_at_least_once_under_one_id_each() {
    let work = Workdir::new();
    let hook = WebhookReceiver::start().await;
    // Slow enough that the kill lands mid-drain.
    let extra = "requests_per_second = 10.0\nburst = 1\nmax_in_flight = 1";
    let toml = |listen: &str| webhook_toml(&work, listen, &hook.url(), extra);
    let setup = Setup::new("http://127.0.0.1:9");
    let daemon = Daemon::spawn_edited(&work, &setup, "first.log", |generated| {
        let listen = generated
            .lines()
            .find_map(|l| l.strip_prefix("listen = "))
            .unwrap_or("\"127.0.0.1:0\"")
            .trim_matches('"')
            .to_owned();
        toml(&listen)
    });
    let orders: Vec<String> = (0..12).map(|i| format!("K{i:03}")).collect();
    for (i, order) in orders.iter().enumerate() {
        let body = variant(
            "01_on_payment_single_product.txt",
            &[("order_id", order), ("transaction_id", &format!("7700{i}"))],
        );
        post_ipn(daemon.addr, "ds24", body).await;
    }
    wait_for(Duration::from_secs(10), "some deliveries", || {
        let n = hook.received().len();
        async move { (n >= 3).then_some(()) }
    })
    .await;
    daemon.kill9();
    let before = hook.received().len();
    assert!(before < orders.len(), "the kill came mid-drain ({before})");

    let daemon = Daemon::spawn_edited(&work, &setup, "second.log", |generated| {
        let listen = generated
            .lines()
            .find_map(|l| l.strip_prefix("listen = "))
            .unwrap_or("\"127.0.0.1:0\"")
            .trim_matches('"')
            .to_owned();
        toml(&listen)
    });
    let store = open_store(&work);
    jobs_settled(&store, orders.len()).await;
    let got = hook.received();
    for order in &orders {
        let ids: std::collections::BTreeSet<String> = got
            .iter()
            .filter(|r| r.json()["data"]["order_id"] == order.as_str())
            .map(|r| r.header("webhook-id").to_owned())
            .collect();
        assert_eq!(ids.len(), 1, "order {order}: {ids:?}");
    }
    assert!(got.iter().all(|r| r.signature_valid));
    daemon.terminate();
}

/// `(line, column, message)` of every config error of `text`.
fn config_errors(text: &str) -> Vec<(usize, usize, String)> {
    let path = std::path::Path::new("connectors.toml");
    match ipn_bridge::config::parse(text, path, &ipn_bridge::config::SystemEnvironment) {
        Ok(_) => Vec::new(),
        Err(errors) => errors
            .errors
            .iter()
            .map(|d| (d.line, d.column, d.message.clone()))
            .collect(),
    }
}

#[test]
fn kind_and_action_mismatches_are_errors_at_their_line() {
    let work = Workdir::new();
    let base = webhook_toml(&work, "127.0.0.1:0", "https://hooks.example.com/ds24", "");
    assert_eq!(config_errors(&base), Vec::new(), "the base config is valid");

    // A Konnektive key on a webhook target.
    let text = base.replace(
        "kind = \"webhook\"\n",
        "kind = \"webhook\"\nlogin_id = \"x\"\n",
    );
    let errors = config_errors(&text);
    let line = text
        .lines()
        .position(|l| l.starts_with("login_id"))
        .unwrap()
        + 1;
    assert!(
        errors.iter().any(|(l, c, m)| *l == line
            && *c == 1
            && m.contains("a webhook target has no `login_id`")),
        "{errors:?}"
    );

    // A Konnektive action on a webhook target.
    let text = base.replace("refund = \"forward\"", "refund = \"refund\"");
    let errors = config_errors(&text);
    let line = text
        .lines()
        .position(|l| l.starts_with("refund = "))
        .unwrap()
        + 1;
    assert!(
        errors
            .iter()
            .any(|(l, _, m)| *l == line && m.contains("is a webhook target, which cannot `refund`")),
        "{errors:?}"
    );

    // A Konnektive-only integration key on a webhook integration.
    let text = base.replace(
        "target = \"hook\"\n",
        "target = \"hook\"\ncampaign_id = 12\n",
    );
    let errors = config_errors(&text);
    let line = text
        .lines()
        .position(|l| l.starts_with("campaign_id"))
        .unwrap()
        + 1;
    assert!(
        errors
            .iter()
            .any(|(l, _, m)| *l == line && m.contains("is a webhook target")),
        "{errors:?}"
    );

    // `forward` on a Konnektive target, and a webhook key on it.
    let setup = Setup::new("https://api.konnektive.com");
    let text = setup
        .toml(&work.db())
        .replace("payment = \"import_order\"", "payment = \"forward\"")
        .replace(
            "kind = \"konnektive\"\n",
            "kind = \"konnektive\"\nurl = \"https://x.example\"\n",
        );
    let errors = config_errors(&text);
    let forward = text
        .lines()
        .position(|l| l.starts_with("payment = "))
        .unwrap()
        + 1;
    let url = text.lines().position(|l| l.starts_with("url = ")).unwrap() + 1;
    assert!(
        errors
            .iter()
            .any(|(l, _, m)| *l == forward && m.contains("which cannot `forward`")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|(l, _, m)| *l == url && m.contains("a konnektive target has no `url`")),
        "{errors:?}"
    );
}

#[tokio::test]
async fn affiliations_and_etickets_are_forwarded_with_their_filters_and_connection_tests_never() {
    let work = Workdir::new();
    let hook = WebhookReceiver::start().await;
    let toml = webhook_toml(&work, "127.0.0.1:0", &hook.url(), "")
        .replace(
            "refund = \"forward\"\n",
            "refund = \"forward\"\naffiliation = \"forward\"\neticket = \"forward\"\n",
        )
        .replace(
            "target = \"hook\"\n",
            "target = \"hook\"\nproducts = [412346]\n",
        );
    let daemon = start(&work, &toml).await;
    // Product 412346: forwarded. The e-ticket's product 412370 is not in `products`.
    post_ipn(daemon.addr, "ds24", fixture("12_on_affiliation.txt")).await;
    post_ipn(daemon.addr, "ds24", fixture("13_eticket.txt")).await;
    post_ipn(daemon.addr, "ds24", fixture("10_connection_test.txt")).await;
    let store = open_store(&work);
    let jobs = jobs_settled(&store, 1).await;
    assert_eq!(jobs[0].state, "delivered");
    let got = hook.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].json()["type"], "on_affiliation");
    assert_eq!(got[0].json()["data"]["affiliate_name"], "growthpartner");
    assert!(got[0].signature_valid);

    let routes = |event: &str| {
        let c = rusqlite::Connection::open(work.db()).expect("sqlite");
        c.query_row(
            "SELECT r.reason FROM routes r JOIN ipns i ON i.id = r.ipn_id WHERE i.event = ?1",
            [event],
            |r| r.get::<_, String>(0),
        )
        .unwrap_or_else(|e| format!("no route: {e}"))
    };
    assert!(
        routes("eticket").contains("product 412370 not in products [412346]"),
        "{}",
        routes("eticket")
    );
    assert!(
        routes("connection_test").contains("not an order event"),
        "{}",
        routes("connection_test")
    );
    daemon.stop().await;
}

#[test]
fn connection_test_in_on_and_an_order_action_on_an_eticket_are_errors() {
    let work = Workdir::new();
    let base = webhook_toml(&work, "127.0.0.1:0", "https://hooks.example.com/ds24", "");
    let text = base.replace(
        "refund = \"forward\"\n",
        "refund = \"forward\"\nconnection_test = \"forward\"\neticket = \"refund\"\n",
    );
    let errors = config_errors(&text);
    let test = text
        .lines()
        .position(|l| l.starts_with("connection_test"))
        .unwrap()
        + 1;
    let eticket = text.lines().position(|l| l.starts_with("eticket")).unwrap() + 1;
    assert!(
        errors
            .iter()
            .any(|(l, c, m)| *l == test && *c == 1 && m.contains("never forwarded")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|(l, _, m)| *l == eticket && m.contains("eticket events carry no order")),
        "{errors:?}"
    );
}

#[test]
fn the_examples_webhook_section_is_valid_once_uncommented() {
    let example = include_str!("../connectors.toml.example");
    let start = example
        .find("# [target.sheet-hook]")
        .expect("webhook section");
    let section: String = example[start..]
        .lines()
        .map(|l| l.strip_prefix("# ").or(l.strip_prefix('#')).unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect();
    let text = format!("{}{section}", &example[..start]);
    let errors = config_errors(
        &text
            .replace(
                "secret = { env = \"SHEET_HOOK_SECRET\" }",
                "secret = \"whsec_dGVzdA==\"",
            )
            .replace(
                "{ \"X-Api-Key\" = { env = \"K\" } }",
                "{ \"X-Api-Key\" = \"k\" }",
            ),
    );
    assert_eq!(errors, Vec::new());
}

#[test]
fn explain_prints_the_exact_json_and_headers_with_header_values_redacted() {
    let work = Workdir::new();
    let path = work.config_path();
    std::fs::write(
        &path,
        webhook_toml(&work, "127.0.0.1:0", "https://hooks.example.com/ds24", ""),
    )
    .expect("config");
    let ipn = work.dir.path().join("payment.txt");
    std::fs::write(&ipn, fixture("01_on_payment_single_product.txt")).expect("ipn");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ipn-bridge"))
        .current_dir(work.dir.path())
        .args(["explain", "-c"])
        .arg(&path)
        .arg(&ipn)
        .env_remove("RUST_LOG")
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    for line in [
        "integration to-hook: DELIVER: forward on_payment to target hook",
        "  POST https://hooks.example.com/ds24",
        "  content-type: application/json",
        "  webhook-id: ipnb_0_to-hook",
        "  webhook-signature: v1,",
        "  X-Api-Key: [redacted]",
        "  {\"data\":{",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in\n{stdout}");
    }
    assert!(
        !stdout.contains("key-123") && !stdout.contains(SECRET),
        "{stdout}"
    );
    assert!(!stdout.contains("sha_sign"), "{stdout}");
}

#[tokio::test]
async fn test_connection_posts_a_signed_connection_test_and_reports_the_answer() {
    let work = Workdir::new();
    let hook = WebhookReceiver::start().await;
    hook.script([Answer {
        status: 401,
        body: "bad api key",
        retry_after: None,
        delay: Duration::ZERO,
    }]);
    let path = work.config_path();
    std::fs::write(&path, webhook_toml(&work, "127.0.0.1:0", &hook.url(), "")).expect("config");
    let run = |path: std::path::PathBuf| async move {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_ipn-bridge"))
                .args(["test-connection", "--json", "-c"])
                .arg(&path)
                .output()
                .expect("run")
        })
        .await
        .expect("join")
    };
    let webhook_line = |out: &std::process::Output| {
        let lines: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        lines
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["check"] == "webhook")
            .cloned()
            .expect("a webhook line")
    };
    let refused = webhook_line(&run(path.clone()).await);
    assert_eq!(refused["ok"], false);
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("HTTP 401: bad api key"),
        "{refused}"
    );
    let accepted = webhook_line(&run(path).await);
    assert_eq!(accepted["ok"], true, "{accepted}");
    let got = hook.received();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|r| r.signature_valid));
    assert_eq!(got[1].json()["type"], "connection_test");
    assert_eq!(got[1].header("x-api-key"), "key-123");
}

#[tokio::test]
async fn an_answer_that_never_comes_is_resent_with_the_same_webhook_id() {
    let work = Workdir::new();
    let hook = WebhookReceiver::start().await;
    hook.script([Answer {
        delay: Duration::from_secs(3),
        ..Answer::status(204)
    }]);
    let toml = webhook_toml(&work, "127.0.0.1:0", &hook.url(), "timeout = \"300ms\"");
    let daemon = start(&work, &toml).await;
    post_ipn(
        daemon.addr,
        "ds24",
        fixture("01_on_payment_single_product.txt"),
    )
    .await;
    let store = open_store(&work);
    let jobs = jobs_settled(&store, 1).await;
    assert_eq!(jobs[0].state, "delivered");
    let got = hook.received();
    assert_eq!(got.len(), 2, "sent, no answer, sent again");
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    assert_eq!(got[0].body, got[1].body, "the same event, byte for byte");
    let attempts = store.attempts(JobId(jobs[0].id)).await.expect("attempts");
    let kinds: Vec<String> = attempts.iter().map(|a| a.kind.clone()).collect();
    assert_eq!(kinds, vec!["send", "send"], "nothing is looked up");
    assert!(
        attempts[0]
            .response
            .as_deref()
            .unwrap_or("")
            .contains("timed out"),
        "{:?}",
        attempts[0].response
    );
    daemon.stop().await;
}

#[tokio::test]
async fn retry_after_from_the_receiver_delays_the_next_attempt() {
    let work = Workdir::new();
    let hook = WebhookReceiver::start().await;
    hook.script([Answer {
        retry_after: Some("1"),
        ..Answer::status(429)
    }]);
    // retry_initial is 100 ms; Retry-After raises it, up to this target's retry_max.
    let toml = webhook_toml(&work, "127.0.0.1:0", &hook.url(), "retry_max = \"600ms\"");
    let daemon = start(&work, &toml).await;
    post_ipn(
        daemon.addr,
        "ds24",
        fixture("01_on_payment_single_product.txt"),
    )
    .await;
    let store = open_store(&work);
    let jobs = jobs_settled(&store, 1).await;
    assert_eq!(jobs[0].state, "delivered");
    let got = hook.received();
    assert_eq!(got.len(), 2);
    let gap = got[1].at.duration_since(got[0].at);
    assert!(gap >= Duration::from_millis(550), "{gap:?}");
    daemon.stop().await;
}

/// Runs the real binary against the daemon's configuration (off the async runtime) and
/// returns its stdout; asserts the exit code.
async fn cli(work: &Workdir, args: &[&str], code: i32) -> String {
    let config = work.config_path();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let out = tokio::task::spawn_blocking(move || {
        assert_cmd::Command::new(env!("CARGO_BIN_EXE_ipn-bridge"))
            .args(&args)
            .arg("-c")
            .arg(&config)
            .env("USER", "carol")
            .env_remove("SUDO_USER")
            .env_remove("IPN_BRIDGE_CONFIG")
            .env("RUST_LOG", "warn")
            .timeout(Duration::from_secs(30))
            .output()
            .expect("run ipn-bridge")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_events_and_replay_work_for_a_dead_webhook_job_retried_under_the_same_id() {
    let work = Workdir::new();
    let hook = WebhookReceiver::start().await;
    hook.script([Answer {
        status: 410,
        body: "this hook was deleted",
        retry_after: None,
        delay: Duration::ZERO,
    }]);
    let daemon = start(&work, &webhook_toml(&work, "127.0.0.1:0", &hook.url(), "")).await;
    post_ipn(
        daemon.addr,
        "ds24",
        fixture("01_on_payment_single_product.txt"),
    )
    .await;
    let store = open_store(&work);
    let jobs = jobs_settled(&store, 1).await;
    assert_eq!(jobs[0].state, "dead");
    let (job, event) = (jobs[0].id.to_string(), jobs[0].ipn_id.to_string());
    let failed_id = hook.received()[0].header("webhook-id").to_owned();

    // `queue list --state dead --json` lists it.
    let listed: serde_json::Value =
        serde_json::from_str(&cli(&work, &["queue", "list", "--state", "dead", "--json"], 0).await)
            .expect("JSON");
    let listed = listed.to_string();
    assert!(listed.contains(&format!("\"id\":{job}")), "{listed}");
    assert!(listed.contains("to-hook"), "{listed}");

    // `queue show` has the receiver's status and body, and no secret.
    for args in [
        vec!["queue", "show", &job],
        vec!["queue", "show", &job, "--json"],
    ] {
        let shown = cli(&work, &args, 0).await;
        assert!(shown.contains("410"), "{shown}");
        assert!(shown.contains("this hook was deleted"), "{shown}");
        assert!(shown.contains("ipnb_"), "the attempt's request: {shown}");
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(
            !shown.contains("dGVzdC1zaWduaW5nLWtleS0wMTIzNDU2Nzg5"),
            "{shown}"
        );
        assert!(!shown.contains("key-123"), "{shown}");
    }

    // `events show` lists the webhook integration's route; replay --dry-run its decision.
    let shown = cli(&work, &["events", "show", &event], 0).await;
    assert!(shown.contains("to-hook"), "{shown}");
    assert!(shown.contains("forward"), "{shown}");
    let dry = cli(&work, &["replay", &event, "--dry-run"], 0).await;
    assert!(dry.contains("to-hook"), "{dry}");
    assert!(
        dry.contains(&format!("would re-route dead job {job}")),
        "{dry}"
    );
    assert!(dry.contains("forward"), "{dry}");
    assert_eq!(
        store.job(JobId(jobs[0].id)).await.expect("job").state,
        "dead"
    );

    // The receiver accepts now; a retry delivers under the failed attempt's webhook-id.
    cli(
        &work,
        &["queue", "retry", &job, "--reason", "hook re-created"],
        0,
    )
    .await;
    wait_for(Duration::from_secs(5), "delivery after the retry", || {
        let store = store.clone();
        let id = jobs[0].id;
        async move { (store.job(JobId(id)).await.ok()?.state == "delivered").then_some(()) }
    })
    .await;
    let delivered = hook.delivered();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].header("webhook-id"), failed_id);
    assert!(delivered[0].signature_valid);
    store.close().await;
    daemon.stop().await;
}

#[tokio::test]
async fn test_connection_questions_go_through_the_connector_of_each_kind() {
    use ipn_bridge::connectors::Connector;

    let work = Workdir::new();
    let hook = WebhookReceiver::start().await;
    let fake = usd_konnektive().await;
    let toml = konnektive_and_hook(&work, &fake, &hook);
    let path = work.config_path();
    std::fs::write(&path, toml).expect("config");
    let config = ipn_bridge::config::load(&path).expect("config").config;
    let konnektive =
        Connector::new(&config, &config.targets["konnektive"]).expect("konnektive connector");
    let webhook = Connector::new(&config, &config.targets["hook"]).expect("webhook connector");

    // Konnektive answers the campaign question over campaign/query; a webhook has none.
    let campaign = konnektive
        .check_campaign(12)
        .await
        .expect("a Konnektive target has campaigns")
        .expect("campaign 12");
    assert_eq!(campaign.currency.as_deref(), Some("USD"));
    assert!(!campaign.products.is_empty());
    assert_eq!(fake.requests_to("campaign/query").len(), 1);
    assert!(webhook.check_campaign(12).await.is_none());

    // A webhook sends the signed connection_test; Konnektive has no such event.
    let report = webhook
        .send_connection_test("to-hook", 1_741_946_400_000)
        .await
        .expect("a webhook sends a connection test");
    assert_eq!(report.http_status, Some(204));
    let got = hook.received();
    assert_eq!(got.len(), 1);
    assert!(got[0].signature_valid);
    assert_eq!(got[0].json()["type"], "connection_test");
    assert!(konnektive.send_connection_test("main", 0).await.is_none());
    assert_eq!(fake.requests().len(), 1, "nothing more sent to Konnektive");
}
