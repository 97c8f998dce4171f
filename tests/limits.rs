//! The listener under slow and hostile clients, over real sockets: the connection cap
//! (`[server] max_connections`), the header size limit (431), the 404 that does not echo the
//! requested name, and accept errors when file descriptors run out (the real binary under a
//! lowered `ulimit -n`).

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest wait for one answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends `request` on a new connection and reads until the server closes it.
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(ANSWER_TIMEOUT, stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "no complete answer within {ANSWER_TIMEOUT:?}");
    String::from_utf8_lossy(&answer).into_owned()
}

fn get(path: &str, extra_headers: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: bridge\r\nconnection: close\r\n{extra_headers}\r\n")
        .into_bytes()
}

/// The value of an unlabelled sample in `GET /metrics`, on a fresh connection.
async fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let text = exchange(addr, &get("/metrics", "")).await;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

fn config_with(work: &Workdir, setup: &Setup, server_lines: &str) -> std::path::PathBuf {
    let text = setup
        .toml(&work.db())
        .replace("[server]\n", &format!("[server]\n{server_lines}\n"));
    let path = work.config_path();
    std::fs::write(&path, text).expect("config");
    path
}

#[tokio::test]
async fn beyond_max_connections_a_connection_gets_503_until_the_slow_clients_close() {
    let work = Workdir::new();
    let setup = Setup::new("http://127.0.0.1:9");
    let daemon = start_daemon_at(&config_with(&work, &setup, "max_connections = 2")).await;

    // Two slow clients: each sends half a request line and stops.
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(daemon.addr).await.expect("connect");
        s.write_all(b"POST /ipn/ds24 HTTP/1.1\r\nhost: br")
            .await
            .expect("write");
        slow.push(s);
    }

    // The third is answered 503 and closed at once, without being read.
    let mut third = TcpStream::connect(daemon.addr).await.expect("connect");
    let mut answer = Vec::new();
    tokio::time::timeout(ANSWER_TIMEOUT, third.read_to_end(&mut answer))
        .await
        .expect("the refusal comes at once")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{answer}"
    );
    assert!(answer.ends_with("retry later"), "{answer}");
    // The slow clients still hold their connections.
    for s in &mut slow {
        let mut byte = [0u8; 1];
        assert!(
            tokio::time::timeout(Duration::from_millis(100), s.read(&mut byte))
                .await
                .is_err(),
            "a slow client's connection was answered or closed"
        );
    }

    drop(slow);
    let ok = wait_for(
        Duration::from_secs(5),
        "a connection to be admitted",
        || {
            let addr = daemon.addr;
            async move {
                let answer = exchange(addr, &get("/ipn/ds24", "")).await;
                answer.starts_with("HTTP/1.1 200").then_some(answer)
            }
        },
    )
    .await;
    assert!(ok.ends_with("OK"), "{ok}");

    let refused = metric(daemon.addr, "ipn_bridge_connections_refused_total")
        .await
        .expect("refused counter");
    assert!(refused >= 1.0, "{refused}");
    // Only the scrape's own connection is open once the others have wound down.
    wait_for(Duration::from_secs(5), "the open gauge to settle", || {
        let addr = daemon.addr;
        async move {
            (metric(addr, "ipn_bridge_connections_open").await == Some(1.0)).then_some(())
        }
    })
    .await;
    daemon.stop().await;
}

#[tokio::test]
async fn headers_over_16_kib_are_answered_431_and_smaller_ones_are_served() {
    let work = Workdir::new();
    let daemon = start_daemon(&work, &Setup::new("http://127.0.0.1:9")).await;

    let big = format!("x-pad: {}\r\n", "a".repeat(17 * 1024));
    let answer = exchange(daemon.addr, &get("/ipn/ds24", &big)).await;
    assert!(
        answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large"),
        "{answer}"
    );

    // Many fields that together pass 16 KiB count too.
    let many: String = (0..40)
        .map(|i| format!("x-pad-{i}: {}\r\n", "b".repeat(500)))
        .collect();
    let answer = exchange(daemon.addr, &get("/ipn/ds24", &many)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    let fine = format!("x-pad: {}\r\n", "a".repeat(12 * 1024));
    let answer = exchange(daemon.addr, &get("/ipn/ds24", &fine)).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    daemon.stop().await;
}

#[tokio::test]
async fn the_404_for_an_unknown_source_does_not_echo_the_requested_name() {
    let work = Workdir::new();
    let daemon = start_daemon(&work, &Setup::new("http://127.0.0.1:9")).await;
    let hostile = "%3Cscript%3Ealert(1)%3C%2Fscript%3E";
    let long = "z".repeat(3000);
    for name in [hostile, long.as_str()] {
        let (status, text) = post_ipn(
            daemon.addr,
            name,
            fixture("01_on_payment_single_product.txt"),
        )
        .await;
        assert_eq!(status, 404, "{text}");
        assert!(text.starts_with("unknown source"), "{text}");
        assert!(!text.contains("script") && !text.contains("zzz"), "{text}");
        assert!(text.len() < 200, "{text}");

        let answer = exchange(daemon.addr, &get(&format!("/ipn/{name}"), "")).await;
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        assert!(
            !answer.contains("script") && !answer.contains("zzz"),
            "{answer}"
        );
    }
    daemon.stop().await;
}

/// The real binary with its open-files limit lowered by the shell (`ulimit -n`), so that
/// accepting runs out of descriptors long before `max_connections`.
#[tokio::test]
async fn accept_errors_from_exhausted_descriptors_are_logged_once_per_burst() {
    const OPEN_FILES: u32 = 40;
    let work = Workdir::new();
    let port = free_port();
    let mut setup = Setup::new("http://127.0.0.1:9");
    setup.listen = format!("127.0.0.1:{port}");
    let config = config_with(&work, &setup, "max_connections = 1000");
    let log = work.dir.path().join("daemon.log");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n {OPEN_FILES} && exec \"$0\" run -c \"$1\""
        ))
        .arg(env!("CARGO_BIN_EXE_ipn-bridge"))
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_for(Duration::from_secs(20), "the daemon to listen", || async {
        read_log().contains("listening").then_some(())
    })
    .await;
    // The server task writes its warning when it starts serving, which may come just after
    // the "listening" line.
    wait_for(Duration::from_secs(5), "the open-files warning", || async {
        read_log()
            .contains("the open-files limit is below server.max_connections")
            .then_some(())
    })
    .await;

    // More clients than descriptors: the daemon accepts until EMFILE, the rest wait.
    let mut clients = Vec::new();
    for _ in 0..2 * OPEN_FILES {
        clients.push(TcpStream::connect(addr).await.expect("connect"));
    }
    wait_for(Duration::from_secs(10), "the accept error", || async {
        read_log()
            .contains("cannot accept connections")
            .then_some(())
    })
    .await;
    // Let the loop retry a few times (5, 10, 20, 40, 80 ms … back-off).
    tokio::time::sleep(Duration::from_millis(400)).await;

    // The clients leave; their connections close and the waiting ones are accepted.
    drop(clients);
    let errors = wait_for(Duration::from_secs(10), "a scrape of /metrics", || async {
        let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await
        else {
            return None;
        };
        s.write_all(&get("/metrics", "")).await.ok()?;
        let mut text = String::new();
        tokio::time::timeout(Duration::from_secs(1), s.read_to_string(&mut text))
            .await
            .ok()?
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("ipn_bridge_accept_errors_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    })
    .await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();

    let text = read_log();
    assert!(errors >= 2.0, "only {errors} accept errors\n{text}");
    assert_eq!(
        text.matches("cannot accept connections").count(),
        1,
        "{errors} errors, one line expected:\n{text}"
    );
    assert!(
        text.contains("Too many open files") || text.contains("os error 24"),
        "{text}"
    );
}
