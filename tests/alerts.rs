//! Alerts end to end: `Alerter::raise` → outbox (SQLite in a temp dir) → sender loop →
//! a real SMTP server on port 0. Time is a `ManualClock`; the loop polls in real time every
//! 250 ms, so each test waits well under a second per step.

#[path = "support/smtp.rs"]
mod smtp;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ipn_bridge::alert::{Alert, AlertKind, Alerter};
use ipn_bridge::clock::{ManualClock, SharedClock};
use ipn_bridge::config::Alerts;
use ipn_bridge::store::Store;
use secrecy::SecretString;
use smtp::{ReceivedMail, SmtpServer};
use tokio_util::sync::CancellationToken;

const T0: i64 = 1_714_564_800_000;
const WINDOW_MS: i64 = 15 * 60 * 1000;
const SMTP_USER: &str = "alerts@example.com";
const SMTP_PASSWORD: &str = "smtp-Pa55-w0rd-XYZ";
const KONNEKTIVE_PASSWORD: &str = "k0nn-Secret-Pw";

// ---------------------------------------------------------------- log capture

#[derive(Clone)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything logged by any test of this binary so far.
fn logs() -> String {
    static LOGS: OnceLock<LogBuffer> = OnceLock::new();
    let buf = LOGS.get_or_init(|| {
        let buf = LogBuffer(Arc::new(Mutex::new(Vec::new())));
        let writer = buf.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        buf
    });
    String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned()
}

// ---------------------------------------------------------------- harness

fn alerts_config(port: u16, to: &[&str]) -> Alerts {
    Alerts {
        smtp_url: format!("smtp://127.0.0.1:{port}"),
        smtp_username: Some(SMTP_USER.to_owned()),
        smtp_password: Some(SecretString::from(SMTP_PASSWORD)),
        from: "ipn-bridge <alerts@example.com>".to_owned(),
        to: to.iter().map(|s| (*s).to_owned()).collect(),
        digest_window: Duration::from_millis(WINDOW_MS as u64),
    }
}

async fn start_server() -> SmtpServer {
    SmtpServer::start(Some((SMTP_USER, SMTP_PASSWORD))).await
}

/// A running alerter over its own store.
struct Running {
    alerter: Alerter,
    store: Store,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(config: Option<Alerts>, db: &Path, clock: &ManualClock) -> Running {
        let _ = logs();
        let store = Store::open(db).unwrap();
        let shared: SharedClock = Arc::new(clock.clone());
        let alerter = Alerter::new(config, store.clone(), shared);
        let stop = CancellationToken::new();
        let task = tokio::spawn(alerter.clone().run(stop.clone()));
        Running {
            alerter,
            store,
            stop,
            task,
        }
    }

    async fn shut_down(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(2), self.task)
            .await
            .expect("the sender loop stops on the token")
            .unwrap();
        self.store.close().await;
    }
}

fn dead_letter(order: &str) -> Alert {
    Alert {
        kind: AlertKind::DeadLetter,
        integration: Some("main-campaign".into()),
        target: Some("konnektive".into()),
        job_id: Some(42),
        ds24_order_id: Some(order.into()),
        product: Some("412346".into()),
        amount: Some("97.00 USD".into()),
        buyer_email: Some("jane.doe@example.com".into()),
        message: "Invalid campaign product".into(),
        retry_command: Some("ipn-bridge queue retry 42".into()),
        extra_recipients: Vec::new(),
    }
}

async fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for_mails(server: &SmtpServer, n: usize) -> Vec<ReceivedMail> {
    wait_for(&format!("{n} mails"), || {
        let mails = server.mails();
        (mails.len() >= n).then_some(mails)
    })
    .await
}

/// Lets the sender loop run a few rounds (it polls every 250 ms).
async fn let_rounds_pass() {
    tokio::time::sleep(Duration::from_millis(700)).await;
}

/// `(kind, recipient, sent_at, attempts, last_error)` of every outbox delivery row.
type DeliveryRow = (String, String, Option<i64>, i64, Option<String>);

fn outbox(db: &Path) -> Vec<DeliveryRow> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut stmt = c
        .prepare(
            "SELECT a.kind, d.recipient, d.sent_at, d.attempts, d.last_error
             FROM alert_deliveries d JOIN alerts a ON a.id = d.alert_id
             ORDER BY a.id, d.recipient",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// A port on which nothing listens (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn each_recipient_of_to_and_error_emails_gets_one_mail() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let server = start_server().await;
    let clock = ManualClock::new(T0);
    let config = alerts_config(
        server.addr().port(),
        &["ops@example.com", "Vendor@example.com"],
    );
    let app = Running::start(Some(config), &db, &clock);

    let mut alert = dead_letter("ORDER1");
    alert.extra_recipients = vec![
        "vendor@example.com".into(),
        "shop@example.com".into(),
        "ops@example.com".into(),
    ];
    app.alerter.raise(alert).await.unwrap();

    let mails = wait_for_mails(&server, 3).await;
    let_rounds_pass().await;
    let mails_later = server.mails();
    assert_eq!(mails_later.len(), 3, "no repeats: {mails_later:#?}");
    let mut envelopes: Vec<Vec<String>> = mails.iter().map(|m| m.to.clone()).collect();
    envelopes.sort();
    assert_eq!(
        envelopes,
        [
            vec!["Vendor@example.com".to_owned()],
            vec!["ops@example.com".to_owned()],
            vec!["shop@example.com".to_owned()],
        ],
        "one mail per distinct recipient, each addressed to that recipient alone"
    );
    for m in &mails {
        assert_eq!(m.from, "alerts@example.com");
        assert_eq!(m.to.len(), 1);
        assert_eq!(m.header("To").as_deref(), Some(m.to[0].as_str()));
    }
    assert!(outbox(&db).iter().all(|row| row.2 == Some(T0)));
    app.shut_down().await;
    server.stop().await;
}

#[tokio::test]
async fn alerts_within_the_window_go_out_as_one_digest_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let server = start_server().await;
    let clock = ManualClock::new(T0);
    let app = Running::start(
        Some(alerts_config(server.addr().port(), &["ops@example.com"])),
        &db,
        &clock,
    );

    app.alerter.raise(dead_letter("FIRST1")).await.unwrap();
    let first = wait_for_mails(&server, 1).await;
    assert_eq!(
        first[0].subject(),
        "[ipn-bridge] Dead letter: main-campaign, order FIRST1"
    );

    clock.advance_ms(60_000);
    app.alerter.raise(dead_letter("SECOND2")).await.unwrap();
    clock.advance_ms(60_000);
    let mut paused = Alert::new(AlertKind::TargetPaused, "Invalid login");
    paused.target = Some("konnektive".into());
    app.alerter.raise(paused).await.unwrap();
    let_rounds_pass().await;
    assert_eq!(
        server.mails().len(),
        1,
        "within the window nothing more is sent"
    );

    // One millisecond short of the window since the first mail: still nothing.
    clock.advance_ms(WINDOW_MS - 120_000 - 1);
    let_rounds_pass().await;
    assert_eq!(server.mails().len(), 1);

    clock.advance_ms(1);
    let mails = wait_for_mails(&server, 2).await;
    let digest = &mails[1];
    assert_eq!(
        digest.subject(),
        "[ipn-bridge] 2 alerts: 1 dead letter, 1 target paused"
    );
    let body = digest.body();
    assert!(body.contains("SECOND2"), "{body}");
    assert!(body.contains("Invalid login"), "{body}");
    assert!(!body.contains("FIRST1"), "{body}");
    assert!(body.contains("1 x Dead letter\n"), "{body}");
    assert!(body.contains("1 x Target paused\n"), "{body}");

    let_rounds_pass().await;
    assert_eq!(server.mails().len(), 2, "nothing is sent twice");
    assert!(outbox(&db).iter().all(|row| row.2.is_some()));
    app.shut_down().await;
    server.stop().await;
}

#[tokio::test]
async fn mail_has_the_context_and_no_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let server = start_server().await;
    let clock = ManualClock::new(T0);
    let app = Running::start(
        Some(alerts_config(server.addr().port(), &["ops@example.com"])),
        &db,
        &clock,
    );

    let mut alert = dead_letter("DS24ORD77");
    alert.message = format!(
        "Invalid campaign product (request: loginId=ds24bridge&password={KONNEKTIVE_PASSWORD}&campaignId=12)"
    );
    app.alerter.raise(alert).await.unwrap();
    let mails = wait_for_mails(&server, 1).await;
    let mail = &mails[0];
    let body = mail.body();
    for needle in [
        "Dead letter",
        "main-campaign",
        "konnektive",
        "DS24ORD77",
        "412346",
        "97.00 USD",
        "j***@example.com",
        "Invalid campaign product",
        "ipn-bridge queue retry 42",
    ] {
        assert!(body.contains(needle), "`{needle}` missing from\n{body}");
    }
    assert_eq!(
        mail.header("Date").as_deref(),
        Some("Wed, 01 May 2024 12:00:00 +0000"),
        "dated by the injected clock"
    );
    for secret in [SMTP_PASSWORD, KONNEKTIVE_PASSWORD, "jane.doe"] {
        assert!(
            !mail.raw.contains(secret),
            "`{secret}` in the mail:\n{}",
            mail.raw
        );
        assert!(!body.contains(secret), "`{secret}` in the body:\n{body}");
    }
    // The password was used (AUTH), and only there.
    assert_eq!(
        server.auths(),
        [(SMTP_USER.to_owned(), SMTP_PASSWORD.to_owned())]
    );
    assert!(!format!("{:?}", app.alerter).contains(SMTP_PASSWORD));
    app.shut_down().await;
    server.stop().await;
    let logs = logs();
    assert!(!logs.contains(SMTP_PASSWORD), "SMTP password logged");
    assert!(
        !logs.contains(KONNEKTIVE_PASSWORD),
        "Konnektive password logged"
    );
}

#[tokio::test]
async fn rejected_login_keeps_the_alert_and_never_leaks_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    // The server expects another password: every AUTH fails with 535.
    let server = SmtpServer::start(Some((SMTP_USER, "the-right-one"))).await;
    let clock = ManualClock::new(T0);
    let app = Running::start(
        Some(alerts_config(server.addr().port(), &["ops@example.com"])),
        &db,
        &clock,
    );
    app.alerter.raise(dead_letter("AUTHFAIL")).await.unwrap();
    let row = wait_for("a recorded failure", || {
        outbox(&db).into_iter().find(|r| r.3 >= 1)
    })
    .await;
    let error = row.4.expect("last_error recorded");
    assert!(error.contains("535"), "{error}");
    assert!(!error.contains(SMTP_PASSWORD), "{error}");
    assert!(server.mails().is_empty());
    app.shut_down().await;
    server.stop().await;
    let logs = logs();
    assert!(logs.contains("alert e-mail not sent"), "{logs}");
    assert!(!logs.contains(SMTP_PASSWORD), "SMTP password logged");
}

#[tokio::test]
async fn smtp_outage_delays_alerts_and_loses_none() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let port = free_port();
    let clock = ManualClock::new(T0);
    let app = Running::start(Some(alerts_config(port, &["ops@example.com"])), &db, &clock);

    // raise() does not wait for the mail server.
    let started = Instant::now();
    app.alerter.raise(dead_letter("DOWN1")).await.unwrap();
    app.alerter.raise(dead_letter("DOWN2")).await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(500));

    // The first round may have taken only the first alert; either way the recipient now
    // waits a minute (clock time) before the next round, with everything unsent.
    wait_for("a failed attempt", || {
        outbox(&db).iter().any(|r| r.3 >= 1).then_some(())
    })
    .await;
    let_rounds_pass().await;
    let rows = outbox(&db);
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.2.is_none()), "{rows:?}");
    assert!(
        rows.iter()
            .filter_map(|r| r.4.as_deref())
            .all(|e| !e.is_empty() && !e.contains(SMTP_PASSWORD)),
        "{rows:?}"
    );

    let server = SmtpServer::start_on(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Some((SMTP_USER, SMTP_PASSWORD)),
    )
    .await;
    // The next round for this recipient is a minute (clock time) after the failure.
    clock.advance_ms(61_000);
    let mails = wait_for_mails(&server, 1).await;
    let all: String = mails.iter().map(ReceivedMail::body).collect();
    assert!(all.contains("DOWN1") && all.contains("DOWN2"), "{all}");
    wait_for("everything marked sent", || {
        outbox(&db).iter().all(|r| r.2.is_some()).then_some(())
    })
    .await;
    app.shut_down().await;
    server.stop().await;
}

#[tokio::test]
async fn unsent_alerts_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let port = free_port();
    let clock = ManualClock::new(T0);
    let app = Running::start(Some(alerts_config(port, &["ops@example.com"])), &db, &clock);
    app.alerter.raise(dead_letter("RESTART1")).await.unwrap();
    wait_for("a failed attempt", || {
        outbox(&db).iter().any(|r| r.3 >= 1).then_some(())
    })
    .await;
    app.shut_down().await;

    let server = SmtpServer::start_on(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Some((SMTP_USER, SMTP_PASSWORD)),
    )
    .await;
    // A new process: no clock advance needed, the outbox is read on start.
    let app = Running::start(Some(alerts_config(port, &["ops@example.com"])), &db, &clock);
    let mails = wait_for_mails(&server, 1).await;
    assert!(mails[0].body().contains("RESTART1"));
    app.shut_down().await;
    server.stop().await;
}

#[tokio::test]
async fn a_long_outage_raises_one_backlog_alert() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let port = free_port();
    let clock = ManualClock::new(T0);
    let app = Running::start(Some(alerts_config(port, &["ops@example.com"])), &db, &clock);
    app.alerter.raise(dead_letter("OLD1")).await.unwrap();
    wait_for("a failed attempt", || {
        outbox(&db).iter().any(|r| r.3 >= 1).then_some(())
    })
    .await;
    assert!(outbox(&db).iter().all(|r| r.0 == "dead_letter"));

    // Older than the window plus an hour, and still failing.
    clock.advance_ms(WINDOW_MS + 60 * 60 * 1000 + 1);
    let backlog = || {
        outbox(&db)
            .into_iter()
            .filter(|r| r.0 == "alert_backlog")
            .count()
    };
    wait_for("a backlog alert", || (backlog() == 1).then_some(())).await;
    clock.advance_ms(20 * 60 * 1000);
    let_rounds_pass().await;
    let_rounds_pass().await;
    assert_eq!(backlog(), 1, "one backlog alert while the first is unsent");
    app.shut_down().await;
    assert!(logs().contains("alert e-mails are delayed"));
}

#[tokio::test]
async fn without_alerts_config_raise_logs_and_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db.sqlite");
    let clock = ManualClock::new(T0);
    let app = Running::start(None, &db, &clock);
    let mut alert = dead_letter("NOCONFIG9");
    alert.extra_recipients = vec!["vendor@example.com".into()];
    app.alerter.raise(alert).await.unwrap();
    let logs = logs();
    let line = logs
        .lines()
        .find(|l| l.contains("NOCONFIG9"))
        .expect("the alert is logged");
    assert!(line.contains("ERROR"), "{line}");
    assert!(line.contains("j***@example.com"), "{line}");
    assert!(!line.contains("jane.doe"), "{line}");
    assert!(line.contains("ipn-bridge queue retry 42"), "{line}");
    assert!(outbox(&db).is_empty(), "nothing recorded to send");
    app.shut_down().await;
}
