//! Issue 13, the HTTP half: durable ingest against a bare HTTP server, and the ack latency
//! under paced load.
//!
//! Run with `cargo bench --bench ingest_http` (options below). Prints figures; asserts
//! nothing about speed. Results and how they were taken: `benches/RESULTS.md`.
//!
//! 1. **Throughput.** The release daemon (`ipn-bridge run`, a child process with the unit's
//!    `Environment=` lines and the default log level `info`, stderr thrown away) and a bare
//!    axum server (its own runtime on a thread of this process: `POST /ipn/{source}` reads
//!    the body and answers `OK`) are driven in turn by the same external client, `wrk`
//!    (`apt-get install -y wrk`), with the same Lua script: distinct pre-signed 150-field
//!    bodies (~4 KB, `synchronous=FULL`, no integration matches), pre-formatted and posted
//!    round robin. Each round prints both figures, the ratio, the CPU time each server used
//!    per request (`/proc/PID/stat`; the steadier figure on a shared machine) and the load
//!    average. After the daemon's run it is killed (`SIGKILL`) and its database counted: every
//!    `OK` must be a committed row (a body posted twice is one row, so the number of distinct
//!    bodies is printed too).
//! 2. **Ack latency.** A fresh daemon gets `--rate` IPNs per second on a fixed schedule over
//!    `--conns-paced` keep-alive connections (request *i* on connection *i* mod *N*); each
//!    latency runs from the request's *scheduled* start to the end of its answer, so a stall
//!    shows in every request it delays (no coordinated omission). Prints p50/p99/p999/max.
//!
//! Options: `--bodies N` (distinct bodies, default 150,000), `--duration S` (wrk seconds,
//! default 5), `--threads T` and `--conns C` (wrk, default 2 and 64), `--rounds R` (default 2),
//! `--rate R` (default 1,000/s), `--latency-secs S` (default 20), `--conns-paced N`
//! (default 16), `--only throughput|latency|accept` (`accept`: `ipn::accept` alone, µs per
//! IPN on one thread), `--log LEVEL` (the daemon's `RUST_LOG`).
//! `--write DIR` only writes the bodies and the wrk script there (for profiling by hand).
//! `IPN_BRIDGE_BIN=path` runs another build of the daemon (a saved "before" binary).

#[path = "common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Options {
    bodies: usize,
    duration: u64,
    threads: usize,
    conns: usize,
    rounds: usize,
    rate: u64,
    latency_secs: u64,
    conns_paced: usize,
    only: Option<String>,
    log: String,
    write_to: Option<PathBuf>,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let number = |name: &str, default: u64| {
        value(name)
            .and_then(|v| v.replace(['_', ','], "").parse::<u64>().ok())
            .unwrap_or(default)
    };
    Options {
        bodies: number("--bodies", 150_000) as usize,
        duration: number("--duration", 5),
        threads: number("--threads", 2) as usize,
        conns: number("--conns", 64) as usize,
        rounds: number("--rounds", 2) as usize,
        rate: number("--rate", 1_000),
        latency_secs: number("--latency-secs", 20),
        conns_paced: number("--conns-paced", 16) as usize,
        only: value("--only"),
        log: value("--log").unwrap_or_else(|| "info".to_owned()),
        write_to: value("--write").map(PathBuf::from),
    }
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

fn wait_listening(addr: SocketAddr) {
    let start = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "not listening");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `Environment=` settings of the systemd unit, as the daemon runs in production.
fn unit_environment() -> Vec<(String, String)> {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/ipn-bridge.service");
    std::fs::read_to_string(unit)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Environment="))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The daemon's binary: `IPN_BRIDGE_BIN` if set (to compare a saved build of another
/// commit in the same run conditions), else the one cargo built with this benchmark.
fn daemon_binary() -> PathBuf {
    std::env::var_os("IPN_BRIDGE_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_ipn-bridge")),
        PathBuf::from,
    )
}

/// The release daemon with a fresh database in `dir`: one source, no integration (so no IPN
/// makes a job), listening on a free port.
fn start_daemon(dir: &Path, log: &str) -> (Child, SocketAddr, PathBuf) {
    let addr = free_addr();
    let db = dir.join("bench.db");
    let config = dir.join("connectors.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{addr}\"\n\n[store]\npath = \"{}\"\n\n[source.ds24]\npassphrase = \"{}\"\n",
            db.display(),
            common::PASSPHRASE
        ),
    )
    .expect("config");
    let mut command = Command::new(daemon_binary());
    command
        .args(["run", "-c"])
        .arg(&config)
        .env("RUST_LOG", log)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in unit_environment() {
        command.env(k, v);
    }
    let child = command.spawn().expect("spawn ipn-bridge");
    wait_listening(addr);
    (child, addr, db)
}

/// The bare server: reads the body, answers `OK`. Its runtime lives on its own thread.
fn start_bare() -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    use axum::Router;
    use axum::body::Bytes;
    use axum::routing::post;
    let addr = free_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let app = Router::new().route("/ipn/{source}", post(|_body: Bytes| async { "OK" }));
            let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .expect("serve");
        });
    });
    wait_listening(addr);
    (addr, stop)
}

/// utime + stime of a process in seconds.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which ends with the last ')').
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ')'.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds of each thread of a process, summed by thread name.
fn cpu_by_thread(pid: &str) -> std::collections::BTreeMap<String, f64> {
    let mut by_name = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    for task in tasks.flatten() {
        let tid = task.file_name().to_string_lossy().into_owned();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        *by_name.entry(comm).or_insert(0.0) += cpu_seconds(&format!("{pid}/task/{tid}"));
    }
    by_name
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

const LUA: &str = r#"
local counter = 0
function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
end
function init(args)
  local path, threads = args[1], tonumber(args[2])
  local headers = { ["Content-Type"] = "application/x-www-form-urlencoded", ["Host"] = "bench" }
  requests = {}
  local i = 0
  for line in io.lines(path) do
    if i % threads == id then
      requests[#requests + 1] = wrk.format("POST", "/ipn/ds24", headers, line)
    end
    i = i + 1
  end
  next_request = 0
end
function request()
  next_request = next_request % #requests + 1
  return requests[next_request]
end
"#;

struct WrkRun {
    requests: u64,
    per_second: f64,
    non_2xx: u64,
    errors: String,
    latency: String,
}

fn wrk(addr: SocketAddr, opts: &Options, script: &Path, bodies: &Path) -> WrkRun {
    let out = Command::new("wrk")
        .arg(format!("-t{}", opts.threads))
        .arg(format!("-c{}", opts.conns))
        .arg(format!("-d{}s", opts.duration))
        .arg("-s")
        .arg(script)
        .arg(format!("http://{addr}"))
        .arg("--")
        .arg(bodies)
        .arg(opts.threads.to_string())
        .output()
        .expect("wrk (apt-get install -y wrk)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .unwrap_or("")
            .to_owned()
    };
    let requests = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let per_second = line("Requests/sec:")
        .trim_start_matches("Requests/sec:")
        .trim()
        .parse()
        .unwrap_or(0.0);
    let non_2xx = line("Non-2xx or 3xx responses:")
        .trim_start_matches("Non-2xx or 3xx responses:")
        .trim()
        .parse()
        .unwrap_or(0);
    WrkRun {
        requests,
        per_second,
        non_2xx,
        errors: line("Socket errors:"),
        latency: line("Latency"),
    }
}

fn stored_rows(db: &Path) -> i64 {
    let c = rusqlite::Connection::open(db).expect("open the bench database");
    c.query_row("SELECT COUNT(*) FROM ipns", [], |r| r.get(0))
        .expect("count")
}

/// The bodies (one a line) and the Lua script for wrk, in `dir`.
fn write_wrk_files(opts: &Options, dir: &Path) -> (PathBuf, PathBuf) {
    let bodies = common::signed_bodies(opts.bodies, 'H', 700_000_000);
    let bodies_path = dir.join("bodies.txt");
    let mut all = Vec::with_capacity(bodies.iter().map(|b| b.len() + 1).sum());
    for b in &bodies {
        all.extend_from_slice(b);
        all.push(b'\n');
    }
    std::fs::write(&bodies_path, all).expect("bodies");
    let script = dir.join("post.lua");
    std::fs::write(&script, LUA).expect("script");
    (bodies_path, script)
}

fn throughput(opts: &Options, dir: &Path) {
    println!(
        "\n== throughput: wrk -t{} -c{} -d{}s, {} distinct signed bodies ({} B each), posted round robin",
        opts.threads,
        opts.conns,
        opts.duration,
        opts.bodies,
        common::FIXTURE.trim().len()
    );
    let (bodies_path, script) = write_wrk_files(opts, dir);
    let self_pid = std::process::id().to_string();

    for round in 1..=opts.rounds {
        let (bare_addr, stop) = start_bare();
        let load_before = loadavg();
        let cpu0 = cpu_seconds(&self_pid);
        let bare = wrk(bare_addr, opts, &script, &bodies_path);
        let bare_cpu = cpu_seconds(&self_pid) - cpu0;
        let _ = stop.send(());

        let daemon_dir = tempfile::tempdir_in(dir).expect("tempdir");
        let (mut child, addr, db) = start_daemon(daemon_dir.path(), &opts.log);
        let pid = child.id().to_string();
        let cpu0 = cpu_seconds(&pid);
        let threads0 = cpu_by_thread(&pid);
        let daemon = wrk(addr, opts, &script, &bodies_path);
        let daemon_cpu = cpu_seconds(&pid) - cpu0;
        let threads: Vec<String> = cpu_by_thread(&pid)
            .into_iter()
            .map(|(name, cpu)| {
                let used = cpu - threads0.get(&name).copied().unwrap_or(0.0);
                format!("{name} {:.0}", used * 1e6 / daemon.requests.max(1) as f64)
            })
            .collect();
        let load_after = loadavg();
        let _ = child.kill();
        let _ = child.wait();
        let rows = stored_rows(&db);

        let us = |cpu: f64, n: u64| cpu * 1e6 / n.max(1) as f64;
        println!("round {round} (load average before {load_before}, after {load_after})");
        println!(
            "  bare axum \"OK\"   {:>9.0} req/s  ({} requests, {} non-2xx, {:.0} µs CPU/request; {}) {}",
            bare.per_second,
            bare.requests,
            bare.non_2xx,
            us(bare_cpu, bare.requests),
            bare.latency,
            bare.errors
        );
        println!(
            "  ipn-bridge       {:>9.0} IPNs/s ({} requests, {} non-2xx, {:.0} µs CPU/request; {}) {}",
            daemon.per_second,
            daemon.requests,
            daemon.non_2xx,
            us(daemon_cpu, daemon.requests),
            daemon.latency,
            daemon.errors
        );
        let distinct = daemon.requests.min(opts.bodies as u64);
        println!("  daemon CPU µs/request by thread: {}", threads.join(", "));
        println!(
            "  ratio {:.2}; rows committed after SIGKILL: {rows} (distinct bodies posted: {distinct}){}",
            daemon.per_second / bare.per_second.max(1.0),
            if rows as u64 >= distinct.saturating_sub(daemon.non_2xx) {
                ""
            } else {
                "  << FEWER ROWS THAN OKs"
            }
        );
    }
}

/// One keep-alive connection sending what it is handed, in order.
async fn paced_connection(
    addr: SocketAddr,
    bodies: Arc<Vec<Vec<u8>>>,
    mut work: tokio::sync::mpsc::UnboundedReceiver<(Instant, usize)>,
) -> (Vec<(Instant, Duration)>, u64) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut latencies = Vec::new();
    let mut failed = 0u64;
    let mut buf = vec![0u8; 4096];
    while let Some((scheduled, index)) = work.recv().await {
        let body = &bodies[index];
        let mut request = format!(
            "POST /ipn/ds24 HTTP/1.1\r\nhost: bench\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        stream.write_all(&request).await.expect("write");
        // Read one answer: headers, then content-length bytes.
        let mut have = 0usize;
        let (head_end, length) = loop {
            let n = stream.read(&mut buf[have..]).await.expect("read");
            assert!(n > 0, "connection closed");
            have += n;
            if let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if !head.starts_with("http/1.1 200") {
                    failed += 1;
                }
                break (end + 4, length);
            }
        };
        while have < head_end + length {
            let n = stream.read(&mut buf[have..]).await.expect("read");
            assert!(n > 0, "connection closed");
            have += n;
        }
        latencies.push((scheduled, scheduled.elapsed()));
    }
    (latencies, failed)
}

fn latency(opts: &Options, dir: &Path) {
    let total = (opts.rate * opts.latency_secs) as usize;
    println!(
        "\n== ack latency: {} IPNs/s on a fixed schedule for {} s over {} keep-alive connections ({total} distinct IPNs), from the scheduled start",
        opts.rate, opts.latency_secs, opts.conns_paced
    );
    let bodies = Arc::new(common::signed_bodies(total, 'L', 800_000_000));
    let daemon_dir = tempfile::tempdir_in(dir).expect("tempdir");
    let (mut child, addr, _db) = start_daemon(daemon_dir.path(), &opts.log);
    let load_before = loadavg();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (start, mut timed, failed) = runtime.block_on(async {
        let mut senders = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..opts.conns_paced {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            senders.push(tx);
            tasks.push(tokio::spawn(paced_connection(addr, bodies.clone(), rx)));
        }
        // Let the connections open before the schedule starts.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let interval = Duration::from_nanos(1_000_000_000 / opts.rate.max(1));
        let start = Instant::now();
        let mut next = 0usize;
        while next < total {
            let due = start + interval * next as u32;
            tokio::time::sleep_until(due.into()).await;
            let now = Instant::now();
            while next < total && start + interval * next as u32 <= now {
                let scheduled = start + interval * next as u32;
                let _ = senders[next % senders.len()].send((scheduled, next));
                next += 1;
            }
        }
        drop(senders);
        let mut all = Vec::with_capacity(total);
        let mut failed = 0;
        for t in tasks {
            let (l, f) = t.await.expect("connection task");
            all.extend(l);
            failed += f;
        }
        (start, all, failed)
    });
    let load_after = loadavg();
    let _ = child.kill();
    let _ = child.wait();
    // The slowest seconds of the schedule: where the tail comes from.
    let mut windows: std::collections::BTreeMap<u64, (Duration, usize)> = Default::default();
    for (scheduled, latency) in &timed {
        let w = windows
            .entry(scheduled.duration_since(start).as_secs())
            .or_default();
        w.0 = w.0.max(*latency);
        w.1 += usize::from(*latency > Duration::from_millis(5));
    }
    let mut worst: Vec<_> = windows.into_iter().collect();
    worst.sort_by_key(|(_, (max, _))| std::cmp::Reverse(*max));
    let worst: Vec<String> = worst
        .iter()
        .take(5)
        .map(|(second, (max, over))| {
            format!(
                "s{second}: max {:.1} ms, {over} > 5 ms",
                max.as_secs_f64() * 1e3
            )
        })
        .collect();
    let mut latencies: Vec<Duration> = timed.drain(..).map(|(_, l)| l).collect();
    latencies.sort();
    let over_5ms = latencies
        .iter()
        .filter(|l| **l > Duration::from_millis(5))
        .count();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1e3
    };
    println!("load average before {load_before}, after {load_after}");
    println!(
        "{} answers ({failed} not 200): p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
        latencies.len(),
        at(0.50),
        at(0.99),
        at(0.999),
        at(1.0)
    );
    println!(
        "{over_5ms} answers over 5 ms; the slowest seconds of the schedule: {}",
        worst.join("; ")
    );
}

/// `ipn::accept` alone on one thread (decode, verify, event, key): the request path's
/// share that this crate's IPN code decides, without HTTP or the store. Best of 5.
fn accept_alone() {
    let bodies = common::signed_bodies(2_000, 'A', 900_000_000);
    let passphrases = vec![secrecy::SecretString::from(common::PASSPHRASE.to_owned())];
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        for body in &bodies {
            let accepted = ipn_bridge::ipn::accept(body, &passphrases).expect("accepted");
            std::hint::black_box(accepted);
        }
        best = best.min(start.elapsed().as_secs_f64() * 1e6 / bodies.len() as f64);
    }
    println!(
        "ipn::accept on {} distinct signed bodies: {best:.1} µs per IPN (best of 5, one thread; load average {})",
        bodies.len(),
        loadavg()
    );
}

fn main() {
    let opts = options();
    if let Some(dir) = &opts.write_to {
        let (bodies, script) = write_wrk_files(&opts, dir);
        println!(
            "wrote {} and {}; e.g. wrk -t2 -c64 -d10s -s {} http://ADDR -- {} 2",
            bodies.display(),
            script.display(),
            script.display(),
            bodies.display()
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    println!(
        "ingest_http on {} CPU(s); the daemon: {} run, RUST_LOG={}, unit environment {:?}; every OK is committed (WAL, synchronous=FULL)",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        daemon_binary().display(),
        opts.log,
        unit_environment()
    );
    if opts.only.as_deref() == Some("accept") {
        accept_alone();
        return;
    }
    if opts.only.as_deref() != Some("latency") {
        throughput(&opts, dir.path());
    }
    if opts.only.as_deref() != Some("throughput") {
        latency(&opts, dir.path());
    }
}
