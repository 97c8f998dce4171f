//! Test support: a fresh PostgreSQL database per test, on the test server that
//! `scripts/test-postgres` starts (or the one `IPN_BRIDGE_TEST_PG` names).
//!
//! Compiled into the library (hidden) so that the store's unit tests and the integration
//! tests under `tests/` share it. Each database is `ipnb_test_<pid>_<n>`: advisory locks are
//! per database, so parallel tests never see each other's locks. Databases of test
//! processes that have ended are dropped by the next one that creates a database, so a
//! test server does not fill up over many runs.

use std::sync::atomic::{AtomicU64, Ordering};

/// The admin URL used when `IPN_BRIDGE_TEST_PG` is not set: what `scripts/test-postgres`
/// prints with its defaults.
pub const DEFAULT_TEST_PG: &str = "postgres://postgres@127.0.0.1:54329/postgres";

/// The data directory `scripts/test-postgres` uses when `IPN_BRIDGE_PG_DIR` is not set.
pub const DEFAULT_TEST_PG_DIR: &str = "/tmp/ipn-bridge-test-pg";

/// The test CA that `scripts/test-postgres` makes in its data directory (`IPN_BRIDGE_PG_DIR`
/// or [`DEFAULT_TEST_PG_DIR`]) and whose server certificate names `127.0.0.1` and
/// `localhost`; `None` (with a message on stderr) when that file is not there, e.g. for a
/// server the script did not start.
pub fn test_ca_file() -> Option<std::path::PathBuf> {
    let dir = std::env::var("IPN_BRIDGE_PG_DIR").unwrap_or_else(|_| DEFAULT_TEST_PG_DIR.into());
    let ca = std::path::Path::new(&dir).join("ipnb-test-ca.crt");
    if ca.is_file() {
        Some(ca)
    } else {
        eprintln!(
            "SKIPPED: PostgreSQL TLS test skipped, no test CA at {} (run scripts/test-postgres \
             with the same IPN_BRIDGE_PG_DIR)",
            ca.display()
        );
        None
    }
}

/// The URL of a new, empty database on the test server, or `None` (with a message on
/// stderr saying why and how to start the server) when there is no server.
pub async fn fresh_database() -> Option<String> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let admin = std::env::var("IPN_BRIDGE_TEST_PG").unwrap_or_else(|_| DEFAULT_TEST_PG.into());
    let (client, connection) = match tokio_postgres::connect(&admin, tokio_postgres::NoTls).await {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!(
                "SKIPPED: PostgreSQL test skipped, no server at {admin} ({e}); start one with \
                 scripts/test-postgres or set IPN_BRIDGE_TEST_PG"
            );
            return None;
        }
    };
    tokio::spawn(connection);
    let pid = std::process::id();
    let client = std::sync::Arc::new(client);
    // In the background, a few at a time: the next test of the run goes on sweeping, and a
    // sweep cut short by the end of a test's runtime has dropped whole databases only.
    tokio::spawn(sweep(client.clone(), pid));
    let name = format!("ipnb_test_{pid}_{}", NEXT.fetch_add(1, Ordering::Relaxed));
    if let Err(e) = client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
    {
        eprintln!("SKIPPED: cannot create a test database on {admin}: {e}");
        return None;
    }
    let mut config: tokio_postgres::Config = admin.parse().ok()?;
    config.dbname(&name);
    Some(url_of(&config, &name))
}

/// Databases one call of [`fresh_database`] drops at most.
const SWEEP_AT_ONCE: usize = 8;

/// Drops (up to [`SWEEP_AT_ONCE`]) test databases of processes that are gone (their pid no
/// longer runs).
async fn sweep(client: std::sync::Arc<tokio_postgres::Client>, own_pid: u32) {
    let Ok(rows) = client
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'ipnb\\_test\\_%' ORDER BY random()",
            &[],
        )
        .await
    else {
        return;
    };
    let mut dropped = 0;
    for row in rows {
        if dropped == SWEEP_AT_ONCE {
            break;
        }
        let name: String = row.get(0);
        let pid: Option<u32> = name
            .strip_prefix("ipnb_test_")
            .and_then(|rest| rest.split('_').next())
            .and_then(|p| p.parse().ok());
        let Some(pid) = pid else { continue };
        if pid == own_pid || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await;
        dropped += 1;
    }
}

fn url_of(config: &tokio_postgres::Config, db: &str) -> String {
    let user = config.get_user().unwrap_or("postgres");
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("postgres://{user}@{host}:{port}/{db}")
}
