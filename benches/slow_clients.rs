//! Memory under slow clients: does the daemon give memory back after waves of connections
//! that send headers and part of a body, then stall?
//!
//! Run with `cargo bench --bench slow_clients` (optionally
//! `-- <waves> <connections per wave> [--cap N] [--body BYTES] [--hold-ms MS] [--no-unit-env]`;
//! default 5 waves of 2,000 against the default cap of 512 connections, 32 KiB of body
//! each, held 2 s). The daemon is the built binary (`ipn-bridge run`) in a child process, so
//! the load generator's own memory is not counted; its RSS (`VmRSS` of `/proc/PID/status`)
//! is printed before, during (every connection of a wave opened, the admitted ones stalled
//! mid-body) and after each wave (the clients closed, one second later), with the peak
//! (`VmHWM`) at the end.
//!
//! Cap semantics: `[server] max_connections` is `--cap` (default 512, the daemon's
//! default); connections beyond it are answered 503 and closed by the daemon, so a wave
//! larger than the cap shows how the cap bounds memory. `--cap` at least the wave size
//! admits every connection (what an uncapped daemon would hold).
//!
//! The child gets the `Environment=` settings of `systemd/ipn-bridge.service`, as under
//! systemd (if there are any); `--no-unit-env` leaves them out, to compare. Prints figures;
//! asserts nothing. Results: `benches/RESULTS.md`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const DEFAULT_WAVES: usize = 5;
const DEFAULT_PER_WAVE: usize = 2_000;
/// The daemon's default `max_connections`.
const DEFAULT_CAP: usize = 512;
const DEFAULT_BODY_BYTES: usize = 32 * 1024;
const DEFAULT_HOLD_MS: u64 = 2_000;
/// The `Content-Length` the slow clients announce (the default `max_body_bytes`).
const DECLARED_BODY_BYTES: usize = 65_536;
/// Body bytes per write of a slow client.
const CHUNK_BYTES: usize = 1_024;

struct Options {
    waves: usize,
    per_wave: usize,
    cap: usize,
    body_bytes: usize,
    hold: Duration,
    unit_env: bool,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let mut numbers = Vec::new();
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--body" || args[i] == "--hold-ms" || args[i] == "--cap" {
            i += 2;
            continue;
        }
        if let Ok(n) = args[i].parse::<usize>() {
            numbers.push(n);
        }
        i += 1;
    }
    Options {
        waves: numbers.first().copied().unwrap_or(DEFAULT_WAVES),
        per_wave: numbers.get(1).copied().unwrap_or(DEFAULT_PER_WAVE),
        cap: flag("--cap").map_or(DEFAULT_CAP, |n| n as usize),
        body_bytes: flag("--body")
            .map_or(DEFAULT_BODY_BYTES, |n| n as usize)
            .min(DECLARED_BODY_BYTES - 1),
        hold: Duration::from_millis(flag("--hold-ms").unwrap_or(DEFAULT_HOLD_MS)),
        unit_env: !args.iter().any(|a| a == "--no-unit-env"),
    }
}

/// `Environment=NAME=VALUE …` lines of the systemd unit (unquoted values only).
fn unit_environment() -> Vec<(String, String)> {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/ipn-bridge.service");
    let text = std::fs::read_to_string(&unit).expect("systemd/ipn-bridge.service");
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Environment="))
        .flat_map(|rest| rest.split_whitespace())
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// `(VmRSS, VmHWM)` of `pid` in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn start_daemon(dir: &Path, opts: &Options) -> (Child, SocketAddr) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let config = dir.join("connectors.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
listen = "{addr}"
max_connections = {max}

[store]
path = "{db}"

[source.ds24]
passphrase = "fixture-passphrase"

[target.konnektive]
kind = "konnektive"
base_url = "http://127.0.0.1:9"
login_id = "bench"
password = "bench"

[integration.main]
campaign_id = 12
active = false

[integration.main.product_map]
"*" = 33

[integration.main.on]
payment = "import_order"
"#,
            max = opts.cap,
            db = dir.join("bench.db").display(),
        ),
    )
    .expect("config");
    let mut command = Command::new(env!("CARGO_BIN_EXE_ipn-bridge"));
    command
        .args(["run", "-c"])
        .arg(&config)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if opts.unit_env {
        for (k, v) in unit_environment() {
            println!("daemon environment (from the unit): {k}={v}");
            command.env(k, v);
        }
    }
    let child = command.spawn().expect("spawn ipn-bridge");
    let start = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "daemon not listening"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, addr)
}

/// `ipn_bridge_connections_open` as the daemon reports it (its own scrape excluded).
fn open_connections(addr: SocketAddr) -> Option<i64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: bridge\r\nconnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("ipn_bridge_connections_open "))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .map(|n| n - 1)
}

/// A slow client: headers announcing a full body, then `body_bytes` of it, then nothing.
async fn slow_client(addr: SocketAddr, body_bytes: usize) -> Option<TcpStream> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let head = format!(
        "POST /ipn/ds24 HTTP/1.1\r\nhost: bridge\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: {DECLARED_BODY_BYTES}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.ok()?;
    let chunk = [b'a'; CHUNK_BYTES];
    let mut sent = 0;
    while sent < body_bytes {
        let n = CHUNK_BYTES.min(body_bytes - sent);
        s.write_all(&chunk[..n]).await.ok()?;
        sent += n;
        tokio::task::yield_now().await;
    }
    Some(s)
}

fn main() {
    let opts = options();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut child, addr) = start_daemon(dir.path(), &opts);
    let pid = child.id();
    println!(
        "slow clients: {} waves of {} connections, max_connections {}, {} body bytes each (of {DECLARED_BODY_BYTES} announced), held {:?}; {} CPU(s)",
        opts.waves,
        opts.per_wave,
        opts.cap,
        opts.body_bytes,
        opts.hold,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    std::thread::sleep(Duration::from_millis(500));
    println!("before:             RSS {:7.1} MiB", memory_mib(pid).0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for wave in 1..=opts.waves {
        let open = runtime.block_on(async {
            let tasks: Vec<_> = (0..opts.per_wave)
                .map(|_| tokio::spawn(slow_client(addr, opts.body_bytes)))
                .collect();
            let mut open = Vec::new();
            for t in tasks {
                if let Ok(Some(s)) = t.await {
                    open.push(s);
                }
            }
            tokio::time::sleep(opts.hold).await;
            open
        });
        let during = memory_mib(pid).0;
        // Admitted connections are still open and silent; refused ones got a 503 or a reset.
        let mut byte = [0u8; 1];
        let held = open
            .iter()
            .filter(|s| {
                matches!(s.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            })
            .count();
        drop(open);
        std::thread::sleep(Duration::from_secs(1));
        let after = memory_mib(pid).0;
        let still_open = open_connections(addr).map_or("?".to_owned(), |n| n.to_string());
        println!(
            "wave {wave}: {held:>5} held  during RSS {during:7.1} MiB   after RSS {after:7.1} MiB ({still_open} still open)"
        );
    }
    let (rss, peak) = memory_mib(pid);
    println!("end:                RSS {rss:7.1} MiB   peak (VmHWM) {peak:7.1} MiB");
    let _ = child.kill();
    let _ = child.wait();
}
