//! The store's safety through the real binary: one daemon per database, a database file
//! deleted, replaced, overwritten or made immutable under the running daemon, damaged or
//! empty files at start, and a failing store that does not flood the log.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use support::fake_konnektive::{Behaviour, FakeKonnektive};
use support::*;

async fn fake() -> FakeKonnektive {
    FakeKonnektive::start(fixture_konnektive()).await
}

/// A signed payment IPN of its own order `n`.
fn payment(n: usize) -> Vec<u8> {
    variant(
        "01_on_payment_single_product.txt",
        &[
            ("order_id", &format!("HX{n:06}")),
            ("transaction_id", &format!("{}", 80_000_000 + n)),
        ],
    )
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ipn-bridge"))
}

/// Starts `ipn-bridge run` with `args` after `run`, stderr into `log`.
fn spawn_run(config: &Path, args: &[&str], log: &Path) -> Child {
    let log_file = std::fs::File::create(log).expect("log file");
    bin()
        .arg("run")
        .args(args)
        .arg("-c")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("spawn ipn-bridge")
}

/// Waits for `child` to exit within `limit`; kills it and fails the test otherwise.
fn exits_within(child: &mut Child, limit: Duration, log: &Path) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "ipn-bridge run did not exit within {limit:?}; log:\n{}",
                read(log)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Runs a CLI command to its end.
fn cli(args: &[&str], config: &Path) -> Output {
    bin()
        .args(args)
        .arg("-c")
        .arg(config)
        .output()
        .expect("run the CLI")
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let resp = reqwest::get(format!("http://{addr}{path}"))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

async fn healthz(addr: std::net::SocketAddr) -> (u16, serde_json::Value) {
    let (status, body) = get(addr, "/healthz").await;
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("healthz {body}: {e}"));
    (status, json)
}

/// The value of a metric line without labels.
async fn metric(addr: std::net::SocketAddr, name: &str) -> u64 {
    let (_, text) = get(addr, "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in\n{text}"))
}

fn error_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains(" ERROR ")).collect()
}

/// The `/proc/<pid>/fd/<n>` path a log names.
fn proc_path(log: &str) -> PathBuf {
    let start = log
        .find("/proc/")
        .unwrap_or_else(|| panic!("no /proc path in the log:\n{log}"));
    let rest = &log[start..];
    let end = rest
        .find(|c: char| c.is_whitespace() || c == ')')
        .unwrap_or(rest.len());
    PathBuf::from(&rest[..end])
}

fn business_keys(db: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).expect("open copy");
    let mut stmt = conn
        .prepare("SELECT order_id FROM ipns ORDER BY id")
        .expect("prepare");
    stmt.query_map([], |r| r.get::<_, String>(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// Defect 2: a second daemon on the same database used to start, take the first one's
/// in-flight import for an interrupted one and send it again (two orders for one IPN).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_database_exits_at_once_naming_the_first_ones_pid() {
    let work = Workdir::new();
    let fake = fake().await;
    // The first daemon's import hangs in Konnektive, so its job stays in flight.
    fake.push_behaviour("order/import", Behaviour::Delay(Duration::from_secs(60)));
    let mut setup = Setup::new(&fake.base_url);
    setup.timeout = "50s";
    let first = Daemon::spawn(&work, &setup, "first.log");
    let (status, _) = post_ipn(first.addr, "ds24", payment(1)).await;
    assert_eq!(status, 200);
    wait_for(Duration::from_secs(10), "the import in flight", || async {
        (fake.requests_to("order/import").len() == 1).then_some(())
    })
    .await;

    // The same configuration (the same listening address) and another one that only shares
    // the database: both stop at the lock, before listening or touching a job.
    let same = work.config_path();
    let mut other_port = setup.clone();
    other_port.listen = format!("127.0.0.1:{}", free_port());
    let other = work.dir.path().join("other-port.toml");
    std::fs::write(&other, other_port.toml(&work.db())).expect("config");
    for (config, name) in [(&same, "second.log"), (&other, "third.log")] {
        let log = work.dir.path().join(name);
        let mut second = spawn_run(config, &[], &log);
        let status = exits_within(&mut second, Duration::from_secs(10), &log);
        let text = read(&log);
        assert_eq!(status.code(), Some(1), "{text}");
        assert!(text.contains(&work.db().display().to_string()), "{text}");
        assert!(
            text.contains(&format!("pid {}", first.child.id())),
            "names the first daemon's PID: {text}"
        );
        assert!(
            text.contains("in use by another ipn-bridge daemon"),
            "{text}"
        );
        assert!(!text.contains("cannot listen"), "{text}");
    }

    // The operator commands work beside the running daemon.
    let out = cli(&["queue", "list"], &same);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("in_flight"),
        "{out:?}"
    );
    let out = cli(&["events", "list"], &same);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("HX000001"),
        "{out:?}"
    );

    assert_eq!(
        fake.requests_to("order/import").len(),
        1,
        "nothing was sent twice"
    );
    let store = open_store(&work);
    let jobs = store
        .list_jobs(ipn_bridge::store::JobFilter::default())
        .await
        .expect("jobs");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].state, "in_flight", "still the first daemon's");
    store.close().await;
    first.kill9();
}

/// Defects 3 and 5: the database deleted under the running daemon. IPNs used to be answered
/// `OK` into the unlinked file (lost at the next restart), and a failing store logged an
/// ERROR line per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_the_database_under_the_daemon_refuses_ipns_and_logs_a_bounded_number_of_lines() {
    let work = Workdir::new();
    let fake = fake().await;
    let daemon = Daemon::spawn(&work, &Setup::new(&fake.base_url), "run.log");
    let (status, body) = post_ipn(daemon.addr, "ds24", payment(1)).await;
    assert_eq!((status, body.as_str()), (200, "OK"));
    assert_eq!(healthz(daemon.addr).await.0, 200);

    std::fs::remove_file(work.db()).expect("delete the database");
    let (status, body) = post_ipn(daemon.addr, "ds24", payment(2)).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("was deleted"), "{body}");
    let (status, health) = healthz(daemon.addr).await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["status"], "unhealthy");
    assert_eq!(health["store_writable"], false);
    let reason = health["store_error"].as_str().unwrap_or_default();
    assert!(reason.contains("was deleted"), "{health}");

    // A burst of refused IPNs while the dispatcher keeps polling.
    for n in 3..203 {
        let (status, _) = post_ipn(daemon.addr, "ds24", payment(n)).await;
        assert_eq!(status, 503);
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(metric(daemon.addr, "ipn_bridge_store_errors_total").await >= 201);
    let log = read(&daemon.log);
    let errors = error_lines(&log);
    assert_eq!(
        errors.len(),
        1,
        "one ERROR line for the whole burst:\n{log}"
    );
    assert!(errors[0].contains("was deleted"), "{}", errors[0]);
    assert!(
        errors[0].contains("this line is the alert"),
        "{}",
        errors[0]
    );

    // Nothing acknowledged is lost: the old file is complete and readable from /proc.
    let copy = work.dir.path().join("recovered.db");
    std::fs::copy(proc_path(errors[0]), &copy).expect("copy the deleted file");
    assert!(
        business_keys(&copy).contains(&"HX000001".to_owned()),
        "the acknowledged IPN is in the recovered file"
    );
    assert!(!work.db().exists(), "nothing was created at the path");
    daemon.kill9();
}

/// Defect 3, second half: another file moved over the database's path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_the_database_file_under_the_daemon_refuses_ipns_and_turns_healthz_unhealthy() {
    let work = Workdir::new();
    let fake = fake().await;
    let daemon = Daemon::spawn(&work, &Setup::new(&fake.base_url), "run.log");
    assert_eq!(post_ipn(daemon.addr, "ds24", payment(1)).await.0, 200);

    let other = work.dir.path().join("other.db");
    ipn_bridge::store::Store::open(&other)
        .expect("another database")
        .close()
        .await;
    std::fs::rename(&other, work.db()).expect("replace");
    let (status, body) = post_ipn(daemon.addr, "ds24", payment(2)).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("was replaced"), "{body}");
    let (status, health) = healthz(daemon.addr).await;
    assert_eq!(status, 503, "{health}");
    assert!(
        health["store_error"]
            .as_str()
            .is_some_and(|e| e.contains("was replaced")),
        "{health}"
    );
    daemon.kill9();
    assert!(
        business_keys(&work.db()).is_empty(),
        "the file now at the path was not written"
    );
}

/// Defect 4: `/healthz` wrote to a TEMP table and so never saw the database file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_reports_a_database_file_overwritten_in_place() {
    let work = Workdir::new();
    let fake = fake().await;
    let daemon = Daemon::spawn(&work, &Setup::new(&fake.base_url), "run.log");
    assert_eq!(healthz(daemon.addr).await.0, 200);
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new()
        .write(true)
        .open(work.db())
        .and_then(|f| f.write_all_at(&[0x5A; 4096], 0))
        .expect("corrupt the file");
    let (status, health) = healthz(daemon.addr).await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["store_writable"], false);
    assert!(
        health["store_error"]
            .as_str()
            .is_some_and(|e| e.contains("no longer starts with the SQLite header")),
        "{health}"
    );
    assert_eq!(post_ipn(daemon.addr, "ds24", payment(1)).await.0, 503);
    daemon.kill9();
}

/// Makes files immutable (`chattr +i`, which stops root too) and undoes it when dropped.
struct Immutable(Vec<PathBuf>);

impl Immutable {
    /// `None` (with a visible message) where `chattr` is missing or not permitted.
    fn set(paths: &[PathBuf]) -> Option<Immutable> {
        let ok = Command::new("chattr")
            .arg("+i")
            .args(paths)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!(
                "SKIPPED: `chattr +i` is not available here (needs e2fsprogs and \
                 CAP_LINUX_IMMUTABLE); the immutable-file case is not tested"
            );
            let _ = Command::new("chattr").arg("-i").args(paths).status();
            return None;
        }
        Some(Immutable(paths.to_vec()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").args(&self.0).status();
    }
}

/// Defect 4: with a file the daemon cannot write, every IPN got 503 while `/healthz` said
/// `store_writable: true`. (`chmod` does not stop root, so the file is made immutable.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_reports_a_database_file_that_cannot_be_written() {
    let work = Workdir::new();
    let fake = fake().await;
    let daemon = Daemon::spawn(&work, &Setup::new(&fake.base_url), "run.log");
    assert_eq!(post_ipn(daemon.addr, "ds24", payment(1)).await.0, 200);
    let mut wal = work.db().into_os_string();
    wal.push("-wal");
    let Some(_immutable) = Immutable::set(&[work.db(), PathBuf::from(wal)]) else {
        daemon.kill9();
        return;
    };
    let (status, body) = post_ipn(daemon.addr, "ds24", payment(2)).await;
    assert_eq!(status, 503, "{body}");
    let (status, health) = healthz(daemon.addr).await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["store_writable"], false);
    assert!(
        health["store_error"]
            .as_str()
            .is_some_and(|e| e.contains("database unavailable")),
        "{health}"
    );
    daemon.kill9();
}

/// A database with some IPNs whose last page (rows, not the schema) is overwritten.
async fn damaged_database(db: &Path) {
    let store = ipn_bridge::store::Store::open(db).expect("open");
    for n in 0..300 {
        let record = ipn_bridge::store::NewIpn {
            source: "ds24".into(),
            business_key: format!("key-{n}"),
            event: "on_payment".into(),
            order_id: Some(format!("HX{n:06}")),
            order_item_id: None,
            product_id: None,
            transaction_id: None,
            buyer_email: None,
            amount: None,
            currency: None,
            received_at: 1_000,
            raw_body: payment(n),
            routes: Vec::new(),
            alerts: Vec::new(),
            parent_transaction_id: None,
        };
        store.ingest(record).await.expect("ingest");
    }
    store.close().await;
    let len = std::fs::metadata(db).expect("meta").len();
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new()
        .write(true)
        .open(db)
        .and_then(|f| f.write_all_at(&[0xFF; 4096], len - 4096))
        .expect("damage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_database_is_refused_at_start_with_a_clear_error() {
    let work = Workdir::new();
    let config = work.write_config(&Setup::new("http://127.0.0.1:9"));
    damaged_database(&work.db()).await;
    let log = work.dir.path().join("run.log");
    let mut run = spawn_run(&config, &[], &log);
    let status = exits_within(&mut run, Duration::from_secs(20), &log);
    let text = read(&log);
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("is damaged (quick_check:"), "{text}");
    assert!(text.contains(&work.db().display().to_string()), "{text}");
    assert!(text.contains("restore the file from a backup"), "{text}");

    // Not a database at all.
    std::fs::write(work.db(), vec![b'#'; 8192]).expect("write");
    let mut run = spawn_run(&config, &[], &log);
    let status = exits_within(&mut run, Duration::from_secs(20), &log);
    let text = read(&log);
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("not a usable SQLite database"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_database_file_is_refused_unless_run_init_and_a_missing_one_is_created() {
    let work = Workdir::new();
    let fake = fake().await;
    let mut setup = Setup::new(&fake.base_url);
    setup.listen = format!("127.0.0.1:{}", free_port());
    let config = work.write_config(&setup);
    std::fs::write(work.db(), b"").expect("empty file");
    let log = work.dir.path().join("run.log");
    let mut run = spawn_run(&config, &[], &log);
    let status = exits_within(&mut run, Duration::from_secs(20), &log);
    let text = read(&log);
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("is an empty file (0 bytes)"), "{text}");
    assert!(text.contains("ipn-bridge run --init"), "{text}");
    assert_eq!(
        std::fs::metadata(work.db()).expect("meta").len(),
        0,
        "left alone"
    );

    // `--init` makes it a new database.
    let daemon = Daemon::spawn_with_args(&work, &setup, "init.log", &["--init"]);
    assert_eq!(post_ipn(daemon.addr, "ds24", payment(1)).await.0, 200);
    assert!(daemon.terminate().success());

    // A first start without a file creates it, as before.
    std::fs::remove_file(work.db()).expect("rm");
    let daemon = Daemon::spawn(&work, &setup, "fresh.log");
    assert_eq!(post_ipn(daemon.addr, "ds24", payment(1)).await.0, 200);
    assert!(work.db().exists());
    assert!(daemon.terminate().success());
}
