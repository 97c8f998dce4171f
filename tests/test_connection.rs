//! `ipn-bridge test-connection` through the real binary, against the fake Konnektive, the
//! daemon started in-process (for the signed `connection_test` IPN) and a minimal SMTP server
//! on a real socket. Every test also checks that no secret reaches stdout or stderr.

mod support;

use std::process::Output;
use std::sync::{Arc, Mutex};

use assert_cmd::Command;
use ipn_bridge::app::Running;
use support::fake_konnektive::{FakeConfig, FakeKonnektive};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const SMTP_USER: &str = "alerts@example.com";
const SMTP_PASSWORD: &str = "smtp-Secret-Pw";

/// The fake Konnektive (campaign 12 with products 31, 32, 33: everything the generated
/// configuration maps) and the daemon, in-process.
struct World {
    fake: FakeKonnektive,
    work: Workdir,
    setup: Setup,
    daemon: Running,
}

async fn world() -> World {
    let fake = FakeKonnektive::start(FakeConfig {
        password: KONNEKTIVE_PASSWORD.into(),
        ..FakeConfig::default()
    })
    .await;
    fake.set_campaign(12, vec![31, 32, 33]);
    let work = Workdir::new();
    let mut setup = Setup::new(&fake.base_url);
    let daemon = start_daemon(&work, &setup).await;
    // test-connection reads its own copy, whose listen address is the daemon's.
    setup.listen = daemon.addr.to_string();
    World {
        fake,
        work,
        setup,
        daemon,
    }
}

impl World {
    /// Writes the configuration (plus `extra` TOML) for test-connection and runs it.
    async fn run(&self, extra: &str, args: &[&str]) -> Output {
        self.run_with(|toml| format!("{toml}{extra}"), args).await
    }

    async fn run_with(&self, edit: impl FnOnce(String) -> String, args: &[&str]) -> Output {
        let path = self.work.dir.path().join("test-connection.toml");
        std::fs::write(&path, edit(self.setup.toml(&self.work.db()))).expect("write config");
        let mut cmd = Command::cargo_bin("ipn-bridge").expect("binary");
        cmd.args(["test-connection", "-c"])
            .arg(&path)
            .args(args)
            .env("RUST_LOG", "debug");
        let out = tokio::task::spawn_blocking(move || cmd.output().expect("run"))
            .await
            .expect("join");
        assert_no_secret(&out);
        out
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_no_secret(out: &Output) {
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for secret in [KONNEKTIVE_PASSWORD, PASSPHRASE, SMTP_PASSWORD] {
        assert!(!all.contains(secret), "secret {secret:?} printed:\n{all}");
    }
}

/// The line of `check` for integration `main`, with its columns collapsed to single spaces.
fn line(out: &Output, check: &str) -> String {
    let text = stdout(out);
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .find(|l| l.starts_with(&format!("main {check} ")))
        .unwrap_or_else(|| panic!("no `{check}` line in:\n{text}"))
}

fn alerts(port: u16) -> String {
    format!(
        r#"
[alerts]
smtp_url = "smtp://127.0.0.1:{port}"
smtp_username = "{SMTP_USER}"
smtp_password = "{SMTP_PASSWORD}"
from = "ipn-bridge <{SMTP_USER}>"
to = ["ops@example.com"]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_good_exits_zero_with_one_ok_line_per_check_and_sends_the_test_mail() {
    let w = world().await;
    let smtp = FakeSmtp::start(SMTP_PASSWORD).await;
    let out = w.run(&alerts(smtp.port), &["--send-test-email"]).await;
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for check in [
        "konnektive login",
        "ip allow-list",
        "campaign",
        "product map",
        "smtp",
        "test e-mail",
        "ipn endpoint",
    ] {
        let l = line(&out, check);
        assert!(l.starts_with(&format!("main {check} ok")), "{l}");
    }
    // Columns are aligned: every verdict starts at the same offset.
    let offsets: Vec<usize> = text
        .lines()
        .filter(|l| l.starts_with("main "))
        .map(|l| l.find(" ok ").expect("verdict"))
        .collect();
    assert!(offsets.windows(2).all(|w| w[0] == w[1]), "{text}");
    assert!(line(&out, "product map").contains("31, 32, 33"), "{text}");
    assert!(text.contains("all checks passed"), "{text}");

    let mails = smtp.mails();
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert!(
        mails[0].contains("Subject: ipn-bridge: test e-mail"),
        "{}",
        mails[0]
    );
    assert!(mails[0].contains("ops@example.com"), "{}", mails[0]);

    // The signed connection_test reached the daemon and was stored (once, however often).
    let again = w.run(&alerts(smtp.port), &[]).await;
    assert_eq!(again.status.code(), Some(0), "{}", stdout(&again));
    assert_eq!(smtp.mails().len(), 1, "no mail without --send-test-email");
    assert_eq!(
        w.fake.requests_to("campaign/query").len(),
        2,
        "one campaign/query per run"
    );
    w.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_password_is_named_as_such_and_fails() {
    let w = world().await;
    w.fake.set_password("the-real-password");
    let out = w.run("", &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let l = line(&out, "konnektive login");
    assert!(l.starts_with("main konnektive login FAIL"), "{l}");
    assert!(
        l.contains("refused the login of API user \"ds24bridge\""),
        "{l}"
    );
    assert!(l.contains("password"), "{l}");
    assert!(l.contains("Invalid login credentials"), "{l}");
    assert!(
        line(&out, "campaign").contains(" skip "),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("check(s) failed"));
    w.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ip_missing_from_the_allow_list_is_shown_with_the_ip_to_add() {
    let w = world().await;
    w.fake.set_allowed(false);
    let out = w.run("", &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let l = line(&out, "ip allow-list");
    assert!(l.starts_with("main ip allow-list FAIL"), "{l}");
    assert!(l.contains("IP must be whitelisted - 127.0.0.1"), "{l}");
    assert!(l.contains("add 127.0.0.1 to the IP allow-list"), "{l}");
    w.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_product_map_value_missing_from_the_campaign_is_named() {
    let w = world().await;
    w.fake.set_campaign(12, vec![31, 32]);
    let out = w.run("", &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let l = line(&out, "product map");
    assert!(l.starts_with("main product map FAIL"), "{l}");
    assert!(l.contains("33 (for \"*\")"), "{l}");
    assert!(!l.contains("31 (for"), "{l}");
    assert!(line(&out, "campaign").starts_with("main campaign ok"));
    w.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_campaign_line_shows_the_currency_the_campaign_books_in() {
    let w = world().await;
    w.fake.set_campaign_currency(12, Some("USD"));
    let out = w.run("", &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let l = line(&out, "campaign");
    assert!(
        l.starts_with("main campaign ok campaign 12 exists, books USD; its products: 31, 32, 33"),
        "{l}"
    );
    // Konnektive's answer names no currency: said so, and not a failure.
    w.fake.set_campaign_currency(12, None);
    let out = w.run("", &["--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let campaign = rows
        .as_array()
        .expect("array")
        .iter()
        .find(|r| r["check"] == "campaign")
        .expect("campaign row")
        .clone();
    assert_eq!(campaign["ok"], true, "{campaign}");
    assert!(
        campaign["detail"]
            .as_str()
            .unwrap_or("")
            .contains("currency not named in Konnektive's answer"),
        "{campaign}"
    );
    w.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_campaign_fails_the_campaign_check_only() {
    let w = world().await;
    let out = w
        .run_with(
            |toml| toml.replace("campaign_id = 12", "campaign_id = 99"),
            &[],
        )
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(line(&out, "konnektive login").starts_with("main konnektive login ok"));
    let l = line(&out, "campaign");
    assert!(
        l.starts_with("main campaign FAIL campaign 99 was not found"),
        "{l}"
    );
    w.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_is_an_array_of_integration_check_ok_detail() {
    let w = world().await;
    w.fake.set_campaign(12, vec![31, 32]);
    let out = w.run("", &["--json", "main"]).await;
    assert_eq!(out.status.code(), Some(1));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let rows = rows.as_array().expect("array");
    let checks: Vec<&str> = rows
        .iter()
        .map(|r| r["check"].as_str().expect("check"))
        .collect();
    assert_eq!(
        checks,
        [
            "konnektive login",
            "ip allow-list",
            "campaign",
            "product map",
            "smtp",
            "ipn endpoint"
        ]
    );
    for row in rows {
        let keys: Vec<&String> = row.as_object().expect("object").keys().collect();
        assert_eq!(keys.len(), 4, "{row}");
        assert_eq!(row["integration"], "main");
        assert!(row["detail"].is_string(), "{row}");
        assert!(row["ok"].is_boolean() || row["ok"].is_null(), "{row}");
    }
    assert_eq!(rows[0]["ok"], true);
    assert_eq!(rows[3]["ok"], false);
    // No [alerts]: the SMTP check is skipped (null), which is not a failure.
    assert!(rows[4]["ok"].is_null(), "{}", rows[4]);
    assert_eq!(rows[5]["ok"], true);
    w.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_with_nothing_listening_fails_with_a_clear_message() {
    let w = world().await;
    let port = free_port();
    let out = w.run(&alerts(port), &["--send-test-email"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let l = line(&out, "smtp");
    assert!(
        l.starts_with(&format!(
            "main smtp FAIL SMTP server 127.0.0.1:{port}: cannot connect"
        )),
        "{l}"
    );
    assert!(l.to_lowercase().contains("refused"), "{l}");
    assert!(line(&out, "test e-mail").starts_with("main test e-mail skip"));
    // The other checks are unaffected.
    assert!(line(&out, "konnektive login").starts_with("main konnektive login ok"));
    w.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_login_refused_is_named() {
    let w = world().await;
    let smtp = FakeSmtp::start("another-password").await;
    let out = w.run(&alerts(smtp.port), &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let l = line(&out, "smtp");
    assert!(l.contains("login refused"), "{l}");
    assert!(l.contains("535"), "{l}");
    w.daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ipn_endpoint_check_fails_when_the_daemon_signs_differently_or_is_down() {
    let w = world().await;
    // A passphrase in the file that the running daemon does not have.
    let out = w
        .run_with(
            |toml| toml.replace(PASSPHRASE, "a-newer-passphrase-not-loaded"),
            &[],
        )
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let l = line(&out, "ipn endpoint");
    assert!(l.contains("HTTP 403"), "{l}");
    assert!(l.contains("passphrase"), "{l}");
    assert!(!stdout(&out).contains("a-newer-passphrase-not-loaded"));

    let addr = w.daemon.addr;
    w.daemon.stop().await;
    let out = World::run_detached(&w.work, &w.setup).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let l = line(&out, "ipn endpoint");
    assert!(
        l.contains(&format!("POST http://{addr}/ipn/ds24 failed")),
        "{l}"
    );
    assert!(l.contains("is the daemon running?"), "{l}");
}

impl World {
    /// Runs test-connection after the daemon was stopped.
    async fn run_detached(work: &Workdir, setup: &Setup) -> Output {
        let path = work.dir.path().join("test-connection.toml");
        std::fs::write(&path, setup.toml(&work.db())).expect("write config");
        let mut cmd = Command::cargo_bin("ipn-bridge").expect("binary");
        cmd.args(["test-connection", "-c"]).arg(&path);
        let out = tokio::task::spawn_blocking(move || cmd.output().expect("run"))
            .await
            .expect("join");
        assert_no_secret(&out);
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_integration_name_is_a_usage_error() {
    let w = world().await;
    let out = w.run("", &["nope"]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown integration(s): nope; configured: main"),
        "{stderr}"
    );
    assert!(w.fake.requests_to("campaign/query").is_empty());
    w.daemon.stop().await;
}

// ---------------------------------------------------------------------------------------
// A minimal SMTP server: EHLO, AUTH PLAIN (initial response), NOOP, MAIL, RCPT, DATA, QUIT.
// ---------------------------------------------------------------------------------------

struct FakeSmtp {
    port: u16,
    mails: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeSmtp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeSmtp {
    async fn start(password: &str) -> FakeSmtp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind smtp");
        let port = listener.local_addr().expect("addr").port();
        let mails = Arc::new(Mutex::new(Vec::new()));
        let expected_auth = base64(format!("\0{SMTP_USER}\0{password}").as_bytes());
        let store = mails.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let store = store.clone();
                let expected_auth = expected_auth.clone();
                tokio::spawn(async move {
                    let _ = session(socket, &expected_auth, &store).await;
                });
            }
        });
        FakeSmtp { port, mails, task }
    }

    fn mails(&self) -> Vec<String> {
        self.mails.lock().expect("lock").clone()
    }
}

async fn session(
    socket: tokio::net::TcpStream,
    expected_auth: &str,
    mails: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let (read, mut write) = socket.into_split();
    let mut lines = BufReader::new(read).lines();
    write.write_all(b"220 fake-smtp ESMTP\r\n").await?;
    while let Some(line) = lines.next_line().await? {
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-fake-smtp\r\n250 AUTH PLAIN\r\n"
        } else if upper.starts_with("AUTH PLAIN") {
            if line.split_whitespace().nth(2) == Some(expected_auth) {
                b"235 2.7.0 Authentication successful\r\n"
            } else {
                b"535 5.7.8 Authentication credentials invalid\r\n"
            }
        } else if upper.starts_with("DATA") {
            write
                .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                .await?;
            let mut mail = String::new();
            while let Some(l) = lines.next_line().await? {
                if l == "." {
                    break;
                }
                mail.push_str(&l);
                mail.push('\n');
            }
            mails.lock().expect("lock").push(mail);
            b"250 2.0.0 queued\r\n"
        } else if upper.starts_with("QUIT") {
            write.write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else {
            // NOOP, MAIL FROM, RCPT TO, RSET.
            b"250 2.0.0 ok\r\n"
        };
        write.write_all(reply).await?;
    }
    Ok(())
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
