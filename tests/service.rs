//! The running daemon as an operator meets it: SIGHUP reloads (a broken file is refused and
//! the daemon keeps serving), `/healthz` and `/metrics` report what happened, and failures
//! reach people by e-mail through a real SMTP server.

mod support;

use std::time::Duration;

use support::fake_konnektive::{FakeConfig, FakeKonnektive};
use support::smtp::SmtpServer;
use support::*;

async fn fake() -> FakeKonnektive {
    FakeKonnektive::start(FakeConfig {
        password: KONNEKTIVE_PASSWORD.into(),
        // The fixture orders are in USD; the fake books EUR unless told otherwise.
        currencies: [(12, Some("USD".into()))].into(),
        ..FakeConfig::default()
    })
    .await
}

/// Waits until the daemon's log holds `needle` at least `times` times.
async fn logged(daemon: &Daemon, needle: &str, times: usize) {
    wait_for(Duration::from_secs(10), needle, || async {
        let log = std::fs::read_to_string(&daemon.log).ok()?;
        (log.matches(needle).count() >= times).then_some(())
    })
    .await;
}

fn sighup(daemon: &Daemon) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &daemon.child.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_file_keeps_serving_and_a_valid_file_takes_effect() {
    let work = Workdir::new();
    let fake = fake().await;
    let mut setup = Setup::new(&fake.base_url);
    // Product 412346 is not mapped at first.
    let daemon = Daemon::spawn(&work, &setup, "reload.log");
    let config = work.config_path();
    let unmapped = std::fs::read_to_string(&config)
        .expect("config")
        .replace("412346 = 31\n", "")
        .replace("\"*\" = 33\n", "");
    std::fs::write(&config, &unmapped).expect("write");
    sighup(&daemon);
    logged(&daemon, "configuration reloaded", 1).await;
    let first = variant(
        "01_on_payment_single_product.txt",
        &[("order_id", "RELOAD01")],
    );
    let store = open_store(&work);
    assert_eq!(post_ipn(daemon.addr, "ds24", first).await.0, 200);
    wait_for(Duration::from_secs(10), "the first IPN stored", || {
        let store = store.clone();
        async move { (store.list_ipns(None).await.ok()?.len() == 1).then_some(()) }
    })
    .await;
    let routes = store
        .routes_of_ipn(ipn_bridge::domain::EventId(1))
        .await
        .expect("routes");
    assert!(
        routes[0]
            .2
            .contains("is not in [integration.main.product_map]"),
        "{routes:?}"
    );

    // A broken file: refused, logged, and the daemon keeps serving with the running rules.
    std::fs::write(&config, "[server\nlisten = 12\n").expect("write");
    sighup(&daemon);
    logged(&daemon, "reload refused", 1).await;
    let second = variant(
        "01_on_payment_single_product.txt",
        &[("order_id", "RELOAD02")],
    );
    let (status, text) = post_ipn(daemon.addr, "ds24", second).await;
    assert_eq!((status, text.as_str()), (200, "OK"));
    let log = std::fs::read_to_string(&daemon.log).expect("log");
    assert!(
        log.contains("connectors.toml:1:"),
        "the errors name file and line: {log}"
    );

    // The fixed map: the next IPN of that product is imported.
    setup.listen = format!("{}", daemon.addr);
    std::fs::write(&config, setup.toml(&work.db())).expect("write");
    sighup(&daemon);
    logged(&daemon, "configuration reloaded", 2).await;
    let third = variant(
        "01_on_payment_single_product.txt",
        &[("order_id", "RELOAD03")],
    );
    assert_eq!(post_ipn(daemon.addr, "ds24", third).await.0, 200);
    wait_for(
        Duration::from_secs(10),
        "the import after the reload",
        || async { (fake.orders().len() == 1).then_some(()) },
    )
    .await;
    assert_eq!(
        fake.orders()[0].param("custom1"),
        Some("DS24-RELOAD03-40118822-51840233")
    );
    assert!(daemon.terminate().success());
}

#[tokio::test]
async fn healthz_and_metrics_report_what_happened() {
    let work = Workdir::new();
    let fake = fake().await;
    let daemon = start_daemon(&work, &Setup::new(&fake.base_url)).await;
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
    let mut forged = pairs(&fixture("03b_on_payment_subscription_first.txt"));
    forged.retain(|(k, _)| k != "sha_sign");
    forged.push(("sha_sign".into(), "0".repeat(128)));
    assert_eq!(post_ipn(daemon.addr, "ds24", encode(&forged)).await.0, 403);
    let store = open_store(&work);
    wait_for(Duration::from_secs(10), "delivered", || {
        let store = store.clone();
        async move {
            let c = store.job_counts().await.ok()?;
            (c.get("delivered") == Some(&1)).then_some(())
        }
    })
    .await;

    let health = reqwest::get(format!("http://{}/healthz", daemon.addr))
        .await
        .expect("healthz");
    assert_eq!(health.status().as_u16(), 200);
    let health: serde_json::Value = health.json().await.expect("json");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["store_writable"], true);
    assert_eq!(health["dispatcher_alive"], true);
    assert_eq!(health["jobs"]["delivered"], 1);
    assert!(
        health["targets_paused"]
            .as_object()
            .is_some_and(|m| m.is_empty())
    );

    let resp = reqwest::get(format!("http://{}/metrics", daemon.addr))
        .await
        .expect("metrics");
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap_or_default()
            .starts_with("application/openmetrics-text")
    );
    let text = resp.text().await.expect("text");
    for line in [
        r#"ipn_bridge_ipns_received_total{source="ds24",event="on_payment"} 1"#,
        r#"ipn_bridge_ipns_rejected_total{reason="bad_signature"} 1"#,
        r#"ipn_bridge_jobs{state="delivered"} 1"#,
        r#"ipn_bridge_jobs{state="dead"} 0"#,
        r#"ipn_bridge_targets_paused{target="konnektive"} 0"#,
        r#"ipn_bridge_delivery_attempts_total{target="konnektive",outcome="delivered"} 1"#,
        "ipn_bridge_delivery_duration_seconds_count 1",
        "ipn_bridge_ingest_duration_seconds_count 2",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_and_a_paused_target_reach_people_by_mail() {
    let work = Workdir::new();
    let fake = fake().await;
    let smtp = SmtpServer::start(Some(("alerts@example.com", "smtp-Secret-9"))).await;
    let setup = Setup::new(&fake.base_url);
    let text = setup.toml(&work.db()).replace(
        "[integration.main]\n",
        "[integration.main]\nerror_emails = [\"vendor@example.com\"]\n",
    ) + &format!(
        r#"
[alerts]
smtp_url = "smtp://{}"
smtp_username = "alerts@example.com"
smtp_password = "smtp-Secret-9"
from = "ipn-bridge <alerts@example.com>"
to = ["ops@example.com"]
digest_window = "2s"
"#,
        smtp.addr()
    );
    let config = work.config_path();
    std::fs::write(&config, text).expect("config");
    let daemon = start_daemon_at(&config).await;

    // Product 999 maps through "*" to campaign product 33, which the campaign lacks.
    let refused = variant("01_on_payment_single_product.txt", &[("product_id", "999")]);
    assert_eq!(post_ipn(daemon.addr, "ds24", refused).await.0, 200);
    let mails = wait_for(Duration::from_secs(15), "the dead-letter mails", || async {
        let mails = smtp.mails();
        (mails.len() >= 2).then_some(mails)
    })
    .await;
    let mut recipients: Vec<String> = mails.iter().flat_map(|m| m.to.clone()).collect();
    recipients.sort();
    assert_eq!(recipients, ["ops@example.com", "vendor@example.com"]);
    let body = mails[0].body();
    for needle in [
        "No products exist in the order",
        "ipn-bridge queue retry 1",
        "K7Q2M9XA",
        "j***@example.com",
        "main",
    ] {
        assert!(body.contains(needle), "{needle} missing from\n{body}");
    }
    for secret in ["smtp-Secret-9", KONNEKTIVE_PASSWORD, "jane.doe@example.com"] {
        assert!(
            !mails.iter().any(|m| m.raw.contains(secret)),
            "{secret} in a mail"
        );
    }

    // A bad login pauses the target: one alert, however many jobs wait.
    fake.set_password("rotated-by-someone");
    for i in 0..3 {
        let body = variant(
            "01_on_payment_single_product.txt",
            &[
                ("order_id", &format!("MAIL{i}")),
                ("transaction_id", &format!("8{i}")),
            ],
        );
        assert_eq!(post_ipn(daemon.addr, "ds24", body).await.0, 200);
    }
    let store = open_store(&work);
    wait_for(
        Duration::from_secs(15),
        "the pause alert mailed",
        || async {
            smtp.mails()
                .iter()
                .any(|m| m.body().contains("Konnektive refuses every request"))
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let pause_mails = smtp
        .mails()
        .iter()
        .filter(|m| m.to == ["ops@example.com"])
        .filter(|m| m.body().contains("Konnektive refuses every request"))
        .count();
    assert_eq!(pause_mails, 1, "one pause alert for ops");
    let pending = store.job_counts().await.expect("counts");
    assert_eq!(pending.get("pending"), Some(&3));
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_writes_one_json_object_per_line() {
    let work = Workdir::new();
    let fake = fake().await;
    let mut setup = Setup::new(&fake.base_url);
    let port = free_port();
    setup.listen = format!("127.0.0.1:{port}");
    let config = work.write_config(&setup);
    let log = work.dir.path().join("json.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ipn-bridge"))
        .args(["--log-format", "json", "run", "-c"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn");
    let addr: std::net::SocketAddr = setup.listen.parse().expect("addr");
    wait_for(Duration::from_secs(20), "listening", || async {
        std::net::TcpStream::connect(addr).is_ok().then_some(())
    })
    .await;
    assert_eq!(
        post_ipn(addr, "ds24", fixture("01_on_payment_single_product.txt"))
            .await
            .0,
        200
    );
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().expect("wait").success());
    let text = std::fs::read_to_string(&log).expect("log");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let stored = lines
        .iter()
        .find(|l| l["message"] == "IPN stored")
        .expect("an `IPN stored` line");
    assert_eq!(stored["level"], "INFO");
    assert_eq!(stored["order_id"], "K7Q2M9XA");
    assert_eq!(stored["source"], "ds24");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmapped_product_is_mailed_with_the_command_that_replays_it() {
    let work = Workdir::new();
    let fake = fake().await;
    let smtp = SmtpServer::start(None).await;
    let text = Setup::new(&fake.base_url)
        .toml(&work.db())
        .replace("\"*\" = 33\n", "")
        .replace(
            "[integration.main]\n",
            "[integration.main]\nerror_emails = [\"vendor@example.com\"]\n",
        )
        + &format!(
            "\n[alerts]\nsmtp_url = \"smtp://{}\"\nfrom = \"ipn-bridge <alerts@example.com>\"\n\
             to = [\"ops@example.com\"]\n",
            smtp.addr()
        );
    let config = work.config_path();
    std::fs::write(&config, text).expect("config");
    let daemon = start_daemon_at(&config).await;
    let body = variant("01_on_payment_single_product.txt", &[("product_id", "555")]);
    assert_eq!(post_ipn(daemon.addr, "ds24", body.clone()).await.0, 200);
    // A repeat of the same IPN raises nothing more.
    assert_eq!(post_ipn(daemon.addr, "ds24", body).await.0, 200);
    let mails = wait_for(Duration::from_secs(15), "the alert mails", || async {
        let mails = smtp.mails();
        (mails.len() >= 2).then_some(mails)
    })
    .await;
    let body = mails[0].body();
    assert!(
        body.contains("product 555 is not in [integration.main.product_map]"),
        "{body}"
    );
    assert!(
        body.contains("ipn-bridge replay 1 --integration main"),
        "{body}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        smtp.mails().len(),
        2,
        "one mail per recipient, none for the repeat"
    );
    assert!(fake.requests().is_empty());
    daemon.stop().await;
}
