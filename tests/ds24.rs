//! `ipn-bridge ds24 …` through the real binary against the fake Digistore24 API
//! (`support/fake_ds24.rs`): `call`, `buy-url`, `setup-ipn`, `audit`, their errors and
//! `--json` shapes, and that the API key appears in no output, log or database.

mod support;

use std::process::Output;
use std::time::Duration;

use assert_cmd::Command;
use support::fake_ds24::{API_KEY, FakeDs24, FakeTransaction};
use support::fake_konnektive::{FakeConfig, FakeKonnektive};
use support::*;

struct World {
    ds24: FakeDs24,
    _konnektive: FakeKonnektive,
    work: Workdir,
    setup: Setup,
}

async fn world() -> World {
    let konnektive = FakeKonnektive::start(FakeConfig::default()).await;
    World {
        ds24: FakeDs24::start().await,
        work: Workdir::new(),
        setup: Setup::new(&konnektive.base_url),
        _konnektive: konnektive,
    }
}

/// `[source.ds24]` with the key and the fake's URL.
fn with_key(toml: String, key: &str, api_url: &str) -> String {
    toml.replace(
        &format!("passphrase = \"{PASSPHRASE}\""),
        &format!("passphrase = \"{PASSPHRASE}\"\napi_key = \"{key}\"\napi_url = \"{api_url}\""),
    )
}

fn with_public_url(toml: String) -> String {
    toml.replace(
        "max_body_bytes = 65536",
        "max_body_bytes = 65536\npublic_url = \"https://ipn.example.com\"",
    )
}

impl World {
    fn config(&self, key: &str, edit: impl FnOnce(String) -> String) -> std::path::PathBuf {
        let path = self.work.config_path();
        let toml = with_key(self.setup.toml(&self.work.db()), key, &self.ds24.api_url);
        std::fs::write(&path, edit(toml)).expect("write config");
        path
    }

    async fn run_key(
        &self,
        key: &str,
        edit: impl FnOnce(String) -> String,
        args: &[&str],
    ) -> Output {
        let path = self.config(key, edit);
        let mut cmd = Command::cargo_bin("ipn-bridge").expect("binary");
        cmd.arg("ds24")
            .arg("-c")
            .arg(&path)
            .args(args)
            .env("RUST_LOG", "trace");
        let out = tokio::task::spawn_blocking(move || cmd.output().expect("run"))
            .await
            .expect("join");
        assert_no_key(&out, key);
        out
    }

    async fn run(&self, args: &[&str]) -> Output {
        self.run_key(API_KEY, |t| t, args).await
    }
}

fn assert_no_key(out: &Output, key: &str) {
    for (name, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        let text = String::from_utf8_lossy(text);
        assert!(!text.contains(key), "the API key is in {name}:\n{text}");
        let tail = &key[key.len() - 12..];
        assert!(
            !text.contains(tail),
            "part of the API key is in {name}:\n{text}"
        );
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json_of(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", stdout(out), stderr(out)))
}

#[tokio::test(flavor = "multi_thread")]
async fn call_prints_data_and_sends_the_key_only_in_the_header() {
    let w = world().await;
    let out = w.run(&["call", "getUserInfo"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(json_of(&out)["user_name"], "vendor-demo");
    let calls = w.ds24.calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.path, "/api/call/getUserInfo");
    assert_eq!(call.header_key.as_deref(), Some(API_KEY));
    assert_eq!(call.query, None);
    assert!(
        call.params
            .iter()
            .all(|(k, v)| !k.contains(API_KEY) && !v.contains(API_KEY))
    );

    let out = w.run(&["call", "getUserInfo", "--json"]).await;
    assert_eq!(json_of(&out)["data"]["user_name"], "vendor-demo");
}

#[tokio::test(flavor = "multi_thread")]
async fn call_sends_bracket_parameters_as_given() {
    let w = world().await;
    let out = w
        .run(&[
            "call",
            "listTransactions",
            "from=-7d",
            "search[role]=vendor",
            "search[product_id]=412346",
        ])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let call = &w.ds24.calls_to("listTransactions")[0];
    assert_eq!(call.param("search[role]"), Some("vendor"));
    assert_eq!(call.param("search[product_id]"), Some("412346"));
    assert_eq!(call.param("from"), Some("-7d"));
    assert!(json_of(&out)["transaction_list"].is_array());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_key_exits_1_with_digistore24s_code_and_message() {
    let w = world().await;
    let bad = "999-WrongKeyWrongKeyWrongKeyWrongKey";
    let out = w.run_key(bad, |t| t, &["call", "getUserInfo"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("Digistore24 error 2 (the API key was refused): Invalid API key"),
        "{err}"
    );

    let out = w
        .run_key(bad, |t| t, &["call", "getUserInfo", "--json"])
        .await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        json_of(&out),
        serde_json::json!({"error": {"code": 2, "kind": "the API key was refused", "message": "Invalid API key"}})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_function_exits_1_with_code_9() {
    let w = world().await;
    let out = w.run(&["call", "listEverything"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("Digistore24 error 9 (unknown function)"),
        "{}",
        stderr(&out)
    );
    let out = w.run(&["call", "listEverything", "--json"]).await;
    assert_eq!(json_of(&out)["error"]["code"], 9);
    // A name that cannot be a function never reaches the network.
    let before = w.ds24.calls().len();
    let out = w.run(&["call", "../ping"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(w.ds24.calls().len(), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn too_many_requests_is_retried_with_back_off() {
    let w = world().await;
    w.ds24.too_many(1);
    w.ds24.http_429(1);
    let out = w.run(&["call", "ping"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        w.ds24.calls_to("ping").len(),
        3,
        "a code 12, a bare 429, then success"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn buy_url_sends_every_group_in_bracket_form_and_prints_the_url() {
    let w = world().await;
    let out = w
        .run(&[
            "buy-url",
            "412346",
            "--buyer",
            "email=jane@example.com",
            "--buyer",
            "country=de",
            "--buyer",
            "readonly_keys=email",
            "--payment-plan",
            "first_amount=47.00",
            "--payment-plan",
            "currency=EUR",
            "--tracking",
            "custom=m:3f1a",
            "--url",
            "thankyou_url=https://app.example.com/thanks",
            "--placeholder",
            "TITLE=Basic (monthly)",
            "--setting",
            "pay_methods=paypal,creditcard",
            "--addon",
            "product_id=412350,first_amount=5.00",
            "--addon",
            "product_id=412351",
            "--valid-until",
            "7d",
        ])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        "https://www.checkout-ds24.com/offer/123457/abcdefgh1234567/412346"
    );
    let call = &w.ds24.calls_to("createBuyUrl")[0];
    for (k, v) in [
        ("product_id", "412346"),
        ("buyer[email]", "jane@example.com"),
        ("buyer[country]", "DE"),
        ("buyer[readonly_keys]", "email"),
        ("payment_plan[first_amount]", "47.00"),
        ("payment_plan[currency]", "EUR"),
        ("tracking[custom]", "m:3f1a"),
        ("urls[thankyou_url]", "https://app.example.com/thanks"),
        ("placeholders[TITLE]", "Basic (monthly)"),
        ("settings[pay_methods]", "paypal,creditcard"),
        ("addons[0][product_id]", "412350"),
        ("addons[0][first_amount]", "5.00"),
        ("addons[1][product_id]", "412351"),
        ("valid_until", "7d"),
    ] {
        assert_eq!(call.param(k), Some(v), "{k}: {:?}", call.params);
    }

    let out = w
        .run(&["buy-url", "412346", "--valid-until", "forever", "--json"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        json_of(&out),
        serde_json::json!({
            "id": "123458",
            "url": "https://www.checkout-ds24.com/offer/123458/abcdefgh1234567/412346",
            "valid_until": null,
            "upgrade_status": "none",
        })
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn buy_url_refuses_invalid_arguments_before_sending_naming_the_field() {
    let w = world().await;
    let cases: &[(&[&str], &str)] = &[
        (
            &["--buyer", "country=Germany"],
            "buyer[country]: `Germany` is not a 2-letter country code",
        ),
        (
            &["--buyer", "readonly_keys=name"],
            "buyer[readonly_keys]: `name` is not one of all, email, email_and_name, none",
        ),
        (
            &["--payment-plan", "currency=EURO"],
            "payment_plan[currency]: `EURO` is not a 3-letter currency code",
        ),
        (
            &["--payment-plan", "first_amount=47,00"],
            "payment_plan[first_amount]: `47,00` is not a decimal amount: use a dot",
        ),
        (
            &["--placeholder", "MY KEY=x"],
            "placeholders[MY KEY]: the key may only use",
        ),
        (
            &["--placeholder", "TITLE=<b>"],
            "placeholders[TITLE]: the value must not contain `<`",
        ),
        (
            &["--valid-until", "next week"],
            "valid_until: `next week` is not",
        ),
        (
            &["--addon", "first_amount=5.00"],
            "addons[0][product_id]: every add-on needs a product_id",
        ),
        (&["--buyer", "email"], "--buyer `email` is not NAME=VALUE"),
    ];
    for (args, expected) in cases {
        let mut all = vec!["buy-url", "412346"];
        all.extend_from_slice(args);
        let out = w.run(&all).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert!(w.ds24.calls().is_empty(), "nothing invalid may be sent");
}

#[tokio::test(flavor = "multi_thread")]
async fn buy_url_errors_from_digistore24_exit_1() {
    let w = world().await;
    let out = w.run(&["buy-url", "999"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("Digistore24 error 4 (not found): Product 999 not found"),
        "{}",
        stderr(&out)
    );
    w.ds24.set_read_only(true);
    let out = w.run(&["buy-url", "412346", "--json"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json_of(&out)["error"]["code"], 5);
    assert_eq!(
        json_of(&out)["error"]["kind"],
        "the API key lacks the permission"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn setup_ipn_registers_then_updates_one_connection_by_its_domain_id() {
    let w = world().await;
    let out = w.run(&["setup-ipn"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("public_url is not set"),
        "{}",
        stderr(&out)
    );
    assert!(w.ds24.calls().is_empty());

    let out = w
        .run_key(API_KEY, with_public_url, &["setup-ipn", "--dry-run"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(
            "would register IPN connection `ipn-bridge-ds24` → https://ipn.example.com/ipn/ds24"
        ),
        "{}",
        stdout(&out)
    );
    assert!(!stdout(&out).contains(PASSPHRASE));
    assert!(w.ds24.calls().is_empty(), "a dry run sends nothing");

    let out = w.run_key(API_KEY, with_public_url, &["setup-ipn"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with(
            "created IPN connection `ipn-bridge-ds24` → https://ipn.example.com/ipn/ds24"
        ),
        "{text}"
    );
    assert!(text.contains("events: payment"), "{text}");
    assert!(!text.contains(PASSPHRASE), "{text}");
    let c = w.ds24.connection("ipn-bridge-ds24").expect("connection");
    assert_eq!(c["ipn_url"], "https://ipn.example.com/ipn/ds24");
    assert_eq!(c["sha_passphrase"], PASSPHRASE);
    assert_eq!(c["transactions"], "payment");
    assert_eq!(c["product_ids"], "all");
    assert_eq!(c["timing"], "before_thankyou");

    let out = w
        .run_key(
            API_KEY,
            with_public_url,
            &[
                "setup-ipn",
                "--products",
                "412346,412350",
                "--events",
                "payment,refund",
                "--timing",
                "delayed",
            ],
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("updated IPN connection"),
        "{}",
        stdout(&out)
    );
    assert_eq!(w.ds24.connection_count(), 1);
    let c = w.ds24.connection("ipn-bridge-ds24").expect("connection");
    assert_eq!(c["product_ids"], "412346,412350");
    assert_eq!(c["transactions"], "payment,refund");
    assert_eq!(c["timing"], "delayed");

    let out = w
        .run_key(
            API_KEY,
            with_public_url,
            &["setup-ipn", "--events", "payday"],
        )
        .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--events: unknown event `payday`"),
        "{}",
        stderr(&out)
    );
}

fn transaction(id: u64, order: &str, kind: &str, amount: &str, age_secs: u64) -> FakeTransaction {
    FakeTransaction {
        id,
        purchase_id: order.into(),
        kind: kind.into(),
        amount: amount.into(),
        email: "kaeufer@example.de".into(),
        age_secs,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_lists_the_transaction_without_an_ipn_and_not_the_one_with() {
    let w = world().await;
    // The captured IPN (order A1B2C3D4, transaction 3999938) is stored by the daemon.
    let path = w.config(API_KEY, |t| t);
    let daemon = start_daemon_at(&path).await;
    let (status, _) = post_ipn(
        daemon.addr,
        "ds24",
        fixture("20_capture_digital_no_address.txt"),
    )
    .await;
    assert_eq!(status, 200);
    daemon.stop().await;
    w.ds24
        .push_transaction(transaction(3999938, "A1B2C3D4", "payment", "49.00", 3600));
    w.ds24
        .push_transaction(transaction(4000001, "B2C3D4E5", "refund", "-49.00", 7200));
    w.ds24.push_transaction(transaction(
        4000002,
        "C3D4E5F6",
        "payment",
        "19.00",
        10 * 86_400,
    ));

    let out = w.run(&["audit"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("1 of 2 transactions never arrived as an IPN"),
        "{text}"
    );
    assert!(
        text.contains("B2C3D4E5") && text.contains("4000001") && text.contains("refund"),
        "{text}"
    );
    assert!(
        text.contains("-49.00 EUR") && text.contains("k***@example.de"),
        "{text}"
    );
    assert!(!text.contains("A1B2C3D4"), "{text}");
    assert!(!text.contains("kaeufer@"), "{text}");
    let call = &w.ds24.calls_to("listTransactions")[0];
    assert_eq!(call.param("search[role]"), Some("vendor"));
    assert_eq!(call.param("from"), Some("-7d"));
    assert_eq!(call.param("page_no"), Some("1"));

    let out = w.run(&["audit", "--since", "30d", "--json"]).await;
    assert_eq!(out.status.code(), Some(1));
    let report = json_of(&out);
    assert_eq!(report["checked"], 3);
    let missing = report["missing"].as_array().expect("missing");
    assert_eq!(missing.len(), 2);
    assert_eq!(
        missing[0],
        serde_json::json!({
            "order_id": "B2C3D4E5", "transaction_id": "4000001", "type": "refund",
            "amount": "-49.00", "currency": "EUR", "date": "2026-08-18 08:41:48",
            "buyer": "k***@example.de",
        })
    );

    let out = w.run(&["audit", "--since", "90m"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("all 1 transactions"),
        "{}",
        stdout(&out)
    );

    // The key is in no database row (nor anywhere in the file).
    let db = std::fs::read(w.work.db()).expect("db");
    let needle = API_KEY.as_bytes();
    assert!(
        !db.windows(needle.len()).any(|win| win == needle),
        "the API key is in the database"
    );
}

/// Alert rows of the audit, read from the database beside the running daemon.
fn audit_alerts(db: &std::path::Path) -> Vec<(String, String)> {
    let conn = rusqlite::Connection::open(db).expect("open db");
    let mut stmt = conn
        .prepare("SELECT ds24_order_id, message FROM alerts WHERE kind = 'ipn_missing' ORDER BY id")
        .expect("prepare");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemons_periodic_audit_alerts_once_per_missing_transaction_after_the_grace_period() {
    let w = world().await;
    // [alerts] to a mail server that never answers: alerts stay rows in the outbox.
    let smtp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let smtp_port = smtp.local_addr().expect("addr").port();
    let path = w.config(API_KEY, |t| {
        let t = t.replace(
            &format!("api_url = \"{}\"", w.ds24.api_url),
            &format!("api_url = \"{}\"\naudit_every = \"150ms\"", w.ds24.api_url),
        );
        format!(
            "{t}\n[alerts]\nsmtp_url = \"smtp://127.0.0.1:{smtp_port}\"\nfrom = \"ipn-bridge <alerts@example.com>\"\nto = [\"ops@example.com\"]\n"
        )
    });
    let daemon = start_daemon_at(&path).await;
    let (status, _) = post_ipn(
        daemon.addr,
        "ds24",
        fixture("20_capture_digital_no_address.txt"),
    )
    .await;
    assert_eq!(status, 200);
    let hours = 3600;
    // Received, old enough: no alert.
    w.ds24.push_transaction(transaction(
        3999938,
        "A1B2C3D4",
        "payment",
        "49.00",
        7 * hours,
    ));
    // Missing for 7 h: alert.
    w.ds24.push_transaction(transaction(
        4000001,
        "B2C3D4E5",
        "chargeback",
        "-49.00",
        7 * hours,
    ));
    // Missing for 1 h: Digistore24 may still be retrying; no alert yet.
    w.ds24
        .push_transaction(transaction(4000002, "C3D4E5F6", "payment", "19.00", hours));

    let db = w.work.db();
    wait_for(Duration::from_secs(10), "an audit alert", || {
        let db = db.clone();
        async move { (!audit_alerts(&db).is_empty()).then_some(()) }
    })
    .await;
    let seen = w.ds24.calls_to("listTransactions").len();
    wait_for(Duration::from_secs(10), "three more audits", || {
        let n = w.ds24.calls_to("listTransactions").len();
        async move { (n >= seen + 3).then_some(()) }
    })
    .await;
    let alerts = audit_alerts(&db);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].0, "B2C3D4E5");
    assert!(
        alerts[0].1.contains("chargeback 4000001 of order B2C3D4E5"),
        "{}",
        alerts[0].1
    );
    let call = &w.ds24.calls_to("listTransactions")[0];
    assert_eq!(
        (call.param("from"), call.param("to")),
        (Some("-30h"), Some("-6h"))
    );
    assert_eq!(call.param("search[role]"), Some("vendor"));
    daemon.stop().await;

    // "Alerted" is remembered across a restart.
    let daemon = start_daemon_at(&path).await;
    let seen = w.ds24.calls_to("listTransactions").len();
    wait_for(
        Duration::from_secs(10),
        "two audits after the restart",
        || {
            let n = w.ds24.calls_to("listTransactions").len();
            async move { (n >= seen + 2).then_some(()) }
        },
    )
    .await;
    daemon.stop().await;
    assert_eq!(audit_alerts(&db).len(), 1);
    let bytes = std::fs::read(&db).expect("db");
    assert!(
        !bytes
            .windows(API_KEY.len())
            .any(|win| win == API_KEY.as_bytes())
    );
}

/// `test-connection --json` lines of the Digistore24 checks: (check, ok, detail).
async fn ds24_checks(
    w: &World,
    key: &str,
    edit: impl FnOnce(String) -> String,
) -> Vec<(String, serde_json::Value, String)> {
    let path = w.config(key, edit);
    let mut cmd = Command::cargo_bin("ipn-bridge").expect("binary");
    cmd.args(["test-connection", "--json", "-c"]).arg(&path);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run"))
        .await
        .expect("join");
    assert_no_key(&out, key);
    json_of(&out)
        .as_array()
        .expect("array")
        .iter()
        .filter(|l| l["check"].as_str().is_some_and(|c| c.starts_with("ds24 ")))
        .map(|l| {
            (
                l["check"].as_str().unwrap_or_default().to_owned(),
                l["ok"].clone(),
                l["detail"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn test_connection_checks_the_key_the_products_and_where_the_ipn_connection_points() {
    let w = world().await;
    let lines = ds24_checks(&w, API_KEY, with_public_url).await;
    let checks: Vec<&str> = lines.iter().map(|l| l.0.as_str()).collect();
    assert_eq!(
        checks,
        ["ds24 api key", "ds24 products", "ds24 ipn connection"]
    );
    assert_eq!(lines[0].1, true);
    assert!(lines[0].2.contains("account vendor-demo"), "{lines:?}");
    assert_eq!(lines[1].1, true, "{lines:?}");
    assert_eq!(
        lines[2].1,
        serde_json::Value::Null,
        "never set up: skipped; {lines:?}"
    );

    w.ds24.set_products(&[(412346, "Basic")]);
    let out = w.run_key(API_KEY, with_public_url, &["setup-ipn"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines = ds24_checks(&w, API_KEY, with_public_url).await;
    assert_eq!(lines[1].1, false);
    assert_eq!(lines[1].2, "not in the Digistore24 account: 412350");
    assert_eq!(lines[2].1, true, "{lines:?}");
    assert_eq!(lines[2].2, "points at https://ipn.example.com/ipn/ds24");

    // The daemon moved: the connection still points at the old URL.
    let moved = |t: String| {
        t.replace(
            "max_body_bytes = 65536",
            "max_body_bytes = 65536\npublic_url = \"https://new.example.com\"",
        )
    };
    let lines = ds24_checks(&w, API_KEY, moved).await;
    assert_eq!(lines[2].1, false);
    assert!(
        lines[2].2.contains(
            "points at https://ipn.example.com/ipn/ds24, not at https://new.example.com/ipn/ds24"
        ),
        "{lines:?}"
    );

    let bad = "999-WrongKeyWrongKeyWrongKeyWrongKey";
    let lines = ds24_checks(&w, bad, with_public_url).await;
    assert_eq!(lines[0].1, false);
    assert!(lines[0].2.contains("Digistore24 error 2"), "{lines:?}");
    assert_eq!(lines[1].1, false);
    assert_eq!(lines[2].1, serde_json::Value::Null);

    // A source without api_key has no Digistore24 section.
    let path = w.work.config_path();
    std::fs::write(&path, w.setup.toml(&w.work.db())).expect("write");
    let mut cmd = Command::cargo_bin("ipn-bridge").expect("binary");
    cmd.args(["test-connection", "--json", "-c"]).arg(&path);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run"))
        .await
        .expect("join");
    assert!(!stdout(&out).contains("ds24 api key"));
}
