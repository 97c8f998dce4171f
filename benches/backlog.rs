//! A backlog of pending jobs, up to a million: start-up, memory and the operator's reads.
//!
//! Run with `cargo bench --bench backlog` (optionally `-- <size> <size> …`, default
//! `1000 100000 1000000`, and `--body BYTES` for the stored raw body of each IPN, default
//! the real fixture's 4,082 bytes). Prints figures; asserts only that the daemon answers.
//!
//! Set-up: a fresh SQLite file. The release binary (`ipn-bridge run`, a child process) is
//! started once against a fake Konnektive inside this bench that refuses every request as
//! Konnektive does for a caller that is not allow-listed (so the target pauses and jobs stay
//! `pending`), one signed fixture IPN is posted, and the daemon is stopped. That IPN and its
//! job are then copied by SQL (`INSERT … SELECT` over a counter, each copy with its own
//! business key and order key, all `pending` and due) until the database holds `size` jobs:
//! the store's own rows, payloads and triggers, without a million HTTP requests.
//!
//! For each size the daemon is started again on that file and measured:
//! * **ready**: from the spawn to `READY=1` on a `NOTIFY_SOCKET` of this bench (as systemd
//!   hears it), and to the first `/healthz` answered 200;
//! * `/healthz` and `/metrics`: the slowest and the median of 20 requests each;
//! * `ipn-bridge queue list --limit 50` beside the running daemon: the median and the
//!   slowest of 5 runs, whole process (start-up included);
//! * memory: the daemon's `VmHWM` (peak RSS) once the background `quick_check` of the file
//!   has finished (its log line is awaited, up to 10 minutes) — the most memory the
//!   start-up, the first lease round, the check and the reads above took together;
//! * for comparison, the queries these paths ran before issue 13 on the same file (the
//!   job counts by `GROUP BY`, the `queue list --state dead` query with its `IS NULL OR`
//!   filters) and how long the whole-file `quick_check` took (before, it ran before ready).
//!
//! PostgreSQL mode: `cargo bench --bench backlog -- --postgres URL [sizes…]`, where the role
//! of `URL` may `CREATE DATABASE`. The run creates a database of its own (a unique name) on
//! that server, points the daemon's `[store] url` at it, seeds it through the daemon as
//! above, copies the seed by SQL in batches through the tables (so the `job_counts`
//! triggers count every copy; checked against `COUNT(*)`), vacuums and analyses, and drops
//! the database at the end, also after a failed run (see `backlog/postgres.rs`). The same
//! measurements follow, except what only SQLite has: instead of the file size and the
//! `quick_check`, the database's `pg_database_size`; the comparison line times the job
//! counts by `GROUP BY` (before migration 3) and the `queue list --state dead` query, and
//! peak RSS is read right after the reads (no background check to wait for). `--keep`
//! leaves the database in place (its name is printed) for `EXPLAIN`s on the biggest size.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "common/mod.rs"]
mod common;
#[path = "backlog/postgres.rs"]
mod postgres;

use common::PASSPHRASE;

const DEFAULT_SIZES: [u64; 3] = [1_000, 100_000, 1_000_000];
/// Longest wait for the background `quick_check` of the biggest file.
const CHECK_LIMIT: Duration = Duration::from_secs(600);

struct Options {
    sizes: Vec<u64>,
    body: Option<usize>,
    /// `--postgres URL`: the server to run on instead of a SQLite file.
    postgres: Option<String>,
    /// `--keep`: leave the PostgreSQL database after the run (to EXPLAIN on it).
    keep: bool,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut sizes = Vec::new();
    let mut body = None;
    let mut postgres = None;
    let mut keep = false;
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--body" {
            body = args.get(i + 1).and_then(|v| v.parse().ok());
            i += 2;
            continue;
        }
        if args[i] == "--postgres" {
            postgres = args.get(i + 1).cloned();
            assert!(postgres.is_some(), "--postgres needs a URL");
            i += 2;
            continue;
        }
        keep |= args[i] == "--keep";
        if let Ok(n) = args[i].parse::<u64>() {
            sizes.push(n);
        }
        i += 1;
    }
    if sizes.is_empty() {
        sizes = DEFAULT_SIZES.to_vec();
    }
    sizes.sort_unstable();
    Options {
        sizes,
        body,
        postgres,
        keep,
    }
}

/// Where the backlog lives.
enum Backend {
    /// The SQLite file.
    Sqlite(PathBuf),
    /// A database of this run on a PostgreSQL server.
    Postgres(Box<postgres::Scratch>),
}

impl Backend {
    /// The body of the configuration's `[store]` table.
    fn store_toml(&self) -> String {
        match self {
            Backend::Sqlite(db) => format!("path = \"{}\"", db.display()),
            Backend::Postgres(pg) => format!("url = \"{}\"", pg.url),
        }
    }

    fn grow(&self, to: u64, body: Option<usize>) {
        match self {
            Backend::Sqlite(db) => grow(db, to, body),
            Backend::Postgres(pg) => pg.grow(to, body),
        }
    }
}

/// A Konnektive that refuses every request ("IP must be whitelisted"), on a thread of its
/// own. Returns its base URL.
fn refusing_konnektive() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the fake");
    let addr = listener.local_addr().expect("fake address");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                let mut seen = Vec::new();
                // Read one request (headers and the announced body), answer, close.
                loop {
                    let Ok(n) = s.read(&mut buf) else { return };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&seen).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if seen.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let body = r#"{"result":"ERROR","message":"IP must be whitelisted - 127.0.0.1"}"#;
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    format!("http://{addr}")
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

fn write_config(dir: &Path, addr: SocketAddr, base_url: &str, store: &str) -> PathBuf {
    let config = dir.join("connectors.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
listen = "{addr}"

[store]
{store}

[delivery]
timeout = "5s"
retry_initial = "1s"
retry_max = "60s"
give_up_after = "30d"

[source.ds24]
passphrase = "{PASSPHRASE}"

[target.konnektive]
kind = "konnektive"
base_url = "{base_url}"
login_id = "ds24bridge"
password = "k0nn-Secret-Pw"

[integration.main]
campaign_id = 12

[integration.main.product_map]
412346 = 31

[integration.main.on]
payment = "import_order"
"#,
        ),
    )
    .expect("write the configuration");
    config
}

/// One HTTP/1.1 request on a new connection: `(status, body)`.
fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: bridge\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .ok()?;
    s.write_all(body).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

struct Daemon {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    /// Spawn → `READY=1`.
    ready: Duration,
    /// Spawn → first `/healthz` 200.
    healthy: Duration,
}

fn start(config: &Path, addr: SocketAddr, dir: &Path, tag: &str) -> Daemon {
    let socket_path = dir.join(format!("notify-{tag}.sock"));
    let _ = std::fs::remove_file(&socket_path);
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(5)))
        .expect("socket timeout");
    let log = dir.join(format!("daemon-{tag}.log"));
    let log_file = std::fs::File::create(&log).expect("daemon log");
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_ipn-bridge"))
        .args(["run", "-c"])
        .arg(config)
        .env("RUST_LOG", "info")
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("spawn ipn-bridge");
    let (mut ready, mut healthy) = (None, None);
    let mut buf = [0u8; 512];
    while ready.is_none() || healthy.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the daemon did not become ready; see {}",
            log.display()
        );
        if ready.is_none()
            && let Ok(n) = socket.recv(&mut buf)
            && String::from_utf8_lossy(&buf[..n]).contains("READY=1")
        {
            ready = Some(started.elapsed());
        }
        if healthy.is_none() && http(addr, "GET", "/healthz", b"").is_some_and(|(s, _)| s == 200) {
            healthy = Some(started.elapsed());
        }
    }
    Daemon {
        child,
        addr,
        log,
        ready: ready.unwrap_or_default(),
        healthy: healthy.unwrap_or_default(),
    }
}

/// Stops the daemon (SIGTERM, then waits for it), also when a failed run unwinds.
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// `(median, slowest)` of `runs` timings of `f`.
fn timed(runs: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    (times[runs / 2], times[runs - 1])
}

/// Copies IPN 1 and its job until `jobs` rows exist (pending, due), in one transaction.
fn grow(db: &Path, to: u64, body: Option<usize>) {
    let conn = rusqlite::Connection::open(db).expect("open the backlog");
    conn.execute_batch("PRAGMA synchronous = OFF")
        .expect("pragma");
    let have = conn
        .query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get::<_, i64>(0))
        .expect("count") as u64;
    if have >= to {
        return;
    }
    if let Some(bytes) = body {
        conn.execute(
            "UPDATE ipns SET raw_body = substr(raw_body || zeroblob(?1), 1, ?1) WHERE id = 1",
            [bytes as i64],
        )
        .expect("body size");
    }
    let t = Instant::now();
    conn.execute_batch("BEGIN").expect("begin");
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM n WHERE i < ?2)
         INSERT INTO ipns (id, source, business_key, event, order_id, order_item_id, product_id,
                           transaction_id, buyer_email, amount, currency, received_at, raw_body,
                           parent_transaction_id)
         SELECT n.i + 1, source, business_key || '-' || n.i, event, order_id || '-' || n.i,
                order_item_id, product_id, transaction_id || n.i, buyer_email, amount, currency,
                received_at, raw_body, parent_transaction_id
         FROM ipns, n WHERE ipns.id = 1",
        [have as i64, to as i64 - 1],
    )
    .expect("copy IPNs");
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM n WHERE i < ?2)
         INSERT INTO jobs (ipn_id, integration, target, action, payload, order_key, state,
                           attempts, next_attempt_at, created_at, updated_at)
         SELECT n.i + 1, integration, target, action, payload, order_key || '-' || n.i,
                'pending', 0, 0, created_at, updated_at
         FROM jobs, n WHERE jobs.id = 1",
        [have as i64, to as i64 - 1],
    )
    .expect("copy jobs");
    conn.execute_batch("COMMIT; PRAGMA wal_checkpoint(TRUNCATE);")
        .expect("commit");
    let size = std::fs::metadata(db).map(|m| m.len()).unwrap_or(0);
    println!(
        "  built {} jobs in {:.1} s; file {:.0} MB",
        to - have,
        t.elapsed().as_secs_f64(),
        size as f64 / 1e6
    );
}

/// The operator's reads beside the running daemon (see the module doc).
struct Reads {
    healthz: (Duration, Duration),
    metrics: (Duration, Duration),
    queue_list: (Duration, Duration),
}

impl Reads {
    fn take(d: &Daemon, config: &Path) -> Reads {
        let healthz = timed(20, || {
            let _ = http(d.addr, "GET", "/healthz", b"");
        });
        let metrics = timed(20, || {
            let _ = http(d.addr, "GET", "/metrics", b"");
        });
        let queue_list = timed(5, || {
            let out = Command::new(env!("CARGO_BIN_EXE_ipn-bridge"))
                .args(["queue", "list", "--limit", "50", "-c"])
                .arg(config)
                .stderr(Stdio::null())
                .output()
                .expect("queue list");
            assert!(out.status.success(), "queue list failed");
        });
        Reads {
            healthz,
            metrics,
            queue_list,
        }
    }

    /// The lines both modes print: ready, `/healthz` and `/metrics`, `queue list`.
    fn print(&self, d: &Daemon) {
        let ms = |t: Duration| t.as_secs_f64() * 1e3;
        println!(
            "  ready: READY=1 after {:.0} ms, first /healthz 200 after {:.0} ms",
            ms(d.ready),
            ms(d.healthy)
        );
        println!(
            "  /healthz median {:.1} ms, slowest {:.1} ms; /metrics median {:.1} ms, slowest {:.1} ms",
            ms(self.healthz.0),
            ms(self.healthz.1),
            ms(self.metrics.0),
            ms(self.metrics.1)
        );
        println!(
            "  queue list --limit 50 (whole process): median {:.0} ms, slowest {:.0} ms",
            ms(self.queue_list.0),
            ms(self.queue_list.1)
        );
    }
}

/// The SQLite mode's figures after the reads: waits for the background `quick_check`, then
/// prints the comparison with before issue 13, the common lines, and peak RSS.
fn report_sqlite(d: &Daemon, db: &Path, reads: &Reads) {
    let check_started = Instant::now();
    let checked = loop {
        let log = std::fs::read_to_string(&d.log).unwrap_or_default();
        if log.contains("finished in the background") {
            break "finished";
        }
        if log.contains("is damaged (quick_check") {
            break "found damage";
        }
        if !log.contains("in the background") {
            break "done before ready";
        }
        if check_started.elapsed() > CHECK_LIMIT {
            break "still running";
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let hwm = vm_hwm_kib(d.child.id());
    let took = std::fs::read_to_string(&d.log)
        .unwrap_or_default()
        .split("took_ms=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "-".into());
    // The queries these paths ran before issue 13, on the same file, for comparison.
    let observer = rusqlite::Connection::open(db).expect("open to compare");
    let (old_counts, _) = timed(3, || {
        let mut stmt = observer
            .prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state")
            .expect("prepare");
        let _ = stmt
            .query_map([], |r| r.get::<_, i64>(1))
            .map(|rows| rows.count());
    });
    let (old_list, _) = timed(3, || {
        let mut stmt = observer
            .prepare_cached(
                "SELECT j.id FROM jobs j JOIN ipns i ON i.id = j.ipn_id
                 WHERE (?1 IS NULL OR j.state = ?1) AND (?2 IS NULL OR j.integration = ?2)
                   AND (?3 IS NULL OR j.created_at >= ?3)
                 ORDER BY j.id DESC LIMIT 50",
            )
            .expect("prepare");
        let _ = stmt
            .query_map(
                rusqlite::params!["dead", None::<String>, None::<i64>],
                |r| r.get::<_, i64>(0),
            )
            .map(|rows| rows.count());
    });
    drop(observer);
    println!(
        "  before issue 13, same file: job counts by GROUP BY (every /healthz and /metrics) \
         {:.0} ms; queue list --state dead query {:.0} ms; quick_check of the whole file \
         {took} ms (now after ready)",
        old_counts.as_secs_f64() * 1e3,
        old_list.as_secs_f64() * 1e3
    );
    reads.print(d);
    println!(
        "  peak RSS (VmHWM) {:.1} MiB; background quick_check: {checked} ({:.1} s after the reads)",
        hwm as f64 / 1024.0,
        check_started.elapsed().as_secs_f64()
    );
}

/// The PostgreSQL mode's figures after the reads: peak RSS now (there is no background
/// check), the comparison queries on the same database, the common lines, the database size.
fn report_postgres(d: &Daemon, pg: &postgres::Scratch, reads: &Reads) {
    let hwm = vm_hwm_kib(d.child.id());
    let (old_counts, dead_list) = pg.compare();
    println!(
        "  for comparison, same database: job counts by GROUP BY (every /healthz and /metrics \
         before migration 3) {:.0} ms; queue list --state dead query {:.0} ms",
        old_counts.as_secs_f64() * 1e3,
        dead_list.as_secs_f64() * 1e3
    );
    reads.print(d);
    println!(
        "  peak RSS (VmHWM) {:.1} MiB; database {:.0} MB (pg_database_size)",
        hwm as f64 / 1024.0,
        pg.size_mb()
    );
}

fn main() {
    let Options {
        sizes,
        body,
        postgres: pg_url,
        keep,
    } = options();
    let dir = tempfile::Builder::new()
        .prefix("backlog-bench")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir");
    let backend = match pg_url {
        Some(url) => Backend::Postgres(Box::new(postgres::Scratch::create(&url, keep))),
        None => Backend::Sqlite(dir.path().join("backlog.db")),
    };
    let addr = free_port();
    let config = write_config(
        dir.path(),
        addr,
        &refusing_konnektive(),
        &backend.store_toml(),
    );
    println!(
        "backlog benchmark on {} CPU(s); release binary, {}; raw body {} bytes",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        match &backend {
            Backend::Sqlite(_) => "SQLite WAL synchronous=FULL".to_owned(),
            Backend::Postgres(pg) => pg.describe(),
        },
        body.map_or("4082 (fixture)".to_owned(), |b| b.to_string())
    );

    // The seed: one real IPN and its job, through the daemon.
    let seed = Command::new(env!("CARGO_BIN_EXE_ipn-bridge"))
        .args(["run", "--init", "-c"])
        .arg(&config)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the seeding daemon");
    let started = Instant::now();
    let body_bytes = common::signed_bodies(1, 'B', 90_000_000).remove(0);
    loop {
        if http(addr, "POST", "/ipn/ds24", &body_bytes).is_some_and(|(s, _)| s == 200) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "seed IPN refused"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let the first (refused) attempt settle, so the target pauses and the job waits.
    std::thread::sleep(Duration::from_millis(500));
    drop(Daemon {
        child: seed,
        addr,
        log: PathBuf::new(),
        ready: Duration::ZERO,
        healthy: Duration::ZERO,
    });

    for size in sizes {
        println!("{size} pending jobs:");
        backend.grow(size, body);
        let d = start(&config, addr, dir.path(), &size.to_string());
        let reads = Reads::take(&d, &config);
        match &backend {
            Backend::Sqlite(db) => report_sqlite(&d, db, &reads),
            Backend::Postgres(pg) => report_postgres(&d, pg, &reads),
        }
        drop(d);
    }
}
