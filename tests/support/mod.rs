//! Shared helpers of the integration tests: a configuration written to a temporary
//! directory, the daemon started in-process on port 0 or as the real binary, IPN fixtures
//! and a bounded wait for conditions. Every test talks over real sockets.
#![allow(dead_code)]

pub mod fake_ds24;
pub mod fake_konnektive;
pub mod smtp;
pub mod webhook_receiver;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipn_bridge::app::{self, Running};
use ipn_bridge::clock::SystemClock;
use ipn_bridge::store::Store;

pub const PASSPHRASE: &str = "fixture-passphrase";
pub const KONNEKTIVE_LOGIN: &str = "ds24bridge";
pub const KONNEKTIVE_PASSWORD: &str = "k0nn-Secret-Pw";

/// The fake Konnektive the fixtures are written for: our password, campaign 12 with
/// products 31–33, booking USD (the fixture orders' currency; the fake books EUR unless told
/// otherwise).
pub fn fixture_konnektive() -> fake_konnektive::FakeConfig {
    fake_konnektive::FakeConfig {
        password: KONNEKTIVE_PASSWORD.into(),
        campaigns: [(12, vec![31, 32, 33])].into(),
        currencies: [(12, Some("USD".into()))].into(),
        ..fake_konnektive::FakeConfig::default()
    }
}

/// A fixture body from `tests/fixtures/ipn/`.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ipn")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// Decoded pairs of a form body.
pub fn pairs(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// Encodes pairs as a form body.
pub fn encode(pairs: &[(String, String)]) -> Vec<u8> {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish().into_bytes()
}

/// Re-signs a body (after changing fields) with the fixture passphrase.
pub fn resign(mut pairs: Vec<(String, String)>, key_case: ipn_bridge::ipn::KeyCase) -> Vec<u8> {
    pairs.retain(|(k, _)| k != "sha_sign");
    let sig = ipn_bridge::ipn::sign(&pairs, PASSPHRASE, key_case);
    pairs.push(("sha_sign".into(), sig));
    encode(&pairs)
}

/// Changes (or adds) fields of a fixture and signs it again.
pub fn variant(name: &str, changes: &[(&str, &str)]) -> Vec<u8> {
    let mut p = pairs(&fixture(name));
    for (key, value) in changes {
        match p.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = (*value).to_owned(),
            None => p.push(((*key).to_owned(), (*value).to_owned())),
        }
    }
    resign(p, ipn_bridge::ipn::KeyCase::Original)
}

/// Payment IPN number `i` of a load test (fixture 01, order `<prefix><i:06>`, transaction
/// `first_transaction + i`, buyer `buyer<i>@example.com`) and the reference its import
/// carries in Konnektive.
pub fn numbered_payment(prefix: &str, first_transaction: usize, i: usize) -> (String, Vec<u8>) {
    let order = format!("{prefix}{i:06}");
    let txn = (first_transaction + i).to_string();
    let body = variant(
        "01_on_payment_single_product.txt",
        &[
            ("order_id", &order),
            ("transaction_id", &txn),
            ("buyer_email", &format!("buyer{i}@example.com")),
            ("email", &format!("buyer{i}@example.com")),
        ],
    );
    (format!("DS24-{order}-40118822-{txn}"), body)
}

/// Knobs of the generated configuration.
#[derive(Debug, Clone)]
pub struct Setup {
    pub konnektive_url: String,
    pub password: String,
    pub listen: String,
    pub timeout: &'static str,
    pub retry_initial: &'static str,
    pub retry_max: &'static str,
    pub give_up_after: &'static str,
    pub max_in_flight: u32,
    pub requests_per_second: f64,
    pub burst: u32,
}

impl Setup {
    pub fn new(konnektive_url: &str) -> Self {
        Setup {
            konnektive_url: konnektive_url.to_owned(),
            password: KONNEKTIVE_PASSWORD.to_owned(),
            listen: "127.0.0.1:0".into(),
            timeout: "2s",
            retry_initial: "100ms",
            retry_max: "400ms",
            give_up_after: "1h",
            max_in_flight: 4,
            requests_per_second: 1000.0,
            burst: 100,
        }
    }

    pub fn toml(&self, db: &Path) -> String {
        format!(
            r#"[server]
listen = "{listen}"
max_body_bytes = 65536

[store]
path = "{db}"

[delivery]
timeout = "{timeout}"
retry_initial = "{retry_initial}"
retry_max = "{retry_max}"
give_up_after = "{give_up_after}"

[source.ds24]
passphrase = "{passphrase}"

[target.konnektive]
kind = "konnektive"
base_url = "{url}"
login_id = "{login}"
password = "{password}"
requests_per_second = {rps:?}
burst = {burst}
max_in_flight = {max_in_flight}

[integration.main]
campaign_id = 12

[integration.main.product_map]
412346 = 31
412350 = 32
"*" = 33

[integration.main.on]
payment = "import_order"

[integration.main.fields]
custom2 = "aff-{{affiliate_name}}"
"#,
            listen = self.listen,
            db = db.display(),
            timeout = self.timeout,
            retry_initial = self.retry_initial,
            retry_max = self.retry_max,
            give_up_after = self.give_up_after,
            passphrase = PASSPHRASE,
            url = self.konnektive_url,
            login = KONNEKTIVE_LOGIN,
            password = self.password,
            rps = self.requests_per_second,
            burst = self.burst,
            max_in_flight = self.max_in_flight,
        )
    }
}

/// A temporary directory holding the configuration file and the database.
pub struct Workdir {
    pub dir: tempfile::TempDir,
}

impl Workdir {
    pub fn new() -> Self {
        Workdir {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("ipn-bridge.db")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("connectors.toml")
    }

    pub fn write_config(&self, setup: &Setup) -> PathBuf {
        let path = self.config_path();
        std::fs::write(&path, setup.toml(&self.db())).expect("write config");
        path
    }
}

/// The daemon, in-process, on a free port.
pub async fn start_daemon(work: &Workdir, setup: &Setup) -> Running {
    let path = work.write_config(setup);
    start_daemon_at(&path).await
}

/// The daemon, in-process, on a free port, with the configuration file at `path`.
pub async fn start_daemon_at(path: &Path) -> Running {
    let loaded = ipn_bridge::config::load(path).unwrap_or_else(|e| panic!("config: {e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    app::start(loaded.config, listener, Arc::new(SystemClock))
        .await
        .expect("start daemon")
}

/// Posts a body to `/ipn/{source}` as Digistore24 does; returns status and body text.
pub async fn post_ipn(addr: SocketAddr, source: &str, body: Vec<u8>) -> (u16, String) {
    post_raw(
        addr,
        source,
        body,
        "application/x-www-form-urlencoded; charset=utf-8",
    )
    .await
}

pub async fn post_raw(
    addr: SocketAddr,
    source: &str,
    body: Vec<u8>,
    content_type: &str,
) -> (u16, String) {
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/ipn/{source}"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("POST /ipn");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// Polls `check` until it returns `Some`, for at most `limit` (real time, short steps).
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Opens a second handle on the daemon's database (as the CLI does).
pub fn open_store(work: &Workdir) -> Store {
    Store::open(&work.db()).expect("open store")
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The real binary, `ipn-bridge run`, with stderr captured to a file in the workdir.
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl Daemon {
    pub fn spawn(work: &Workdir, setup: &Setup, log_name: &str) -> Daemon {
        Daemon::spawn_custom(work, setup, log_name, &[], |toml| toml)
    }

    /// Like [`Daemon::spawn`], with the generated configuration text changed by `edit`
    /// (another `[integration…]`, an `[alerts]` section, more events).
    pub fn spawn_edited(
        work: &Workdir,
        setup: &Setup,
        log_name: &str,
        edit: impl Fn(String) -> String,
    ) -> Daemon {
        Daemon::spawn_custom(work, setup, log_name, &[], edit)
    }

    /// [`Daemon::spawn`] with more arguments for `run` (e.g. `--init`).
    pub fn spawn_with_args(work: &Workdir, setup: &Setup, log_name: &str, args: &[&str]) -> Daemon {
        Daemon::spawn_custom(work, setup, log_name, args, |toml| toml)
    }

    /// `run` with extra `args` and the configuration text changed by `edit`.
    pub fn spawn_custom(
        work: &Workdir,
        setup: &Setup,
        log_name: &str,
        args: &[&str],
        edit: impl Fn(String) -> String,
    ) -> Daemon {
        let port = free_port();
        let mut setup = setup.clone();
        setup.listen = format!("127.0.0.1:{port}");
        let config = work.config_path();
        std::fs::write(&config, edit(setup.toml(&work.db()))).expect("write config");
        let log = work.dir.path().join(log_name);
        let log_file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_ipn-bridge"))
            .arg("run")
            .args(args)
            .arg("-c")
            .arg(&config)
            .env("RUST_LOG", "trace")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn ipn-bridge");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let start = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "daemon did not start listening; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon { child, addr, log }
    }

    /// SIGKILL, as a power cut would.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().expect("wait")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Posts each body to `/ipn/ds24` that is not yet acknowledged (with `also_repeat`, the
/// acknowledged ones again, as Digistore24 may). Connection errors (the daemon is down) leave
/// the IPN unacknowledged, as Digistore24 would see it; any answer but `200 OK` or a 5xx fails.
pub async fn post_all(addr: SocketAddr, bodies: &[Vec<u8>], acked: &mut [bool], also_repeat: bool) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    for (i, body) in bodies.iter().enumerate() {
        if acked[i] && !also_repeat {
            continue;
        }
        let resp = client
            .post(format!("http://{addr}/ipn/ds24"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.clone())
            .send()
            .await;
        if let Ok(resp) = resp {
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            assert!(
                status == 200 && text == "OK" || status >= 500,
                "unexpected answer {status} {text}"
            );
            if status == 200 {
                acked[i] = true;
            }
        }
    }
}

/// Waits (15 s at most) until `n` jobs exist and every one is delivered or dead; returns them.
pub async fn jobs_settled(store: &Store, n: usize) -> Vec<ipn_bridge::store::JobRow> {
    wait_for(Duration::from_secs(15), "jobs settled", || {
        let store = store.clone();
        async move {
            let jobs = store.list_jobs(Default::default()).await.ok()?;
            (jobs.len() == n
                && jobs
                    .iter()
                    .all(|j| matches!(j.state.as_str(), "delivered" | "dead")))
            .then_some(jobs)
        }
    })
    .await
}
