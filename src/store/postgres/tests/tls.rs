//! TLS to the test server, which `scripts/test-postgres` starts with `ssl = on` and a
//! certificate of its own test CA for `127.0.0.1` and `localhost`: verified TLS under
//! `sslmode=require` on every connection, refusals that say what failed without the
//! password, and plain connections for every other `sslmode`.

use super::*;
use crate::store::testing::{fresh_database, test_ca_file};

/// A password for the URLs of these tests: the test server trusts every local connection,
/// so it is never checked, only carried (and must never be shown).
const PASSWORD: &str = "tls-test-pw-Zq7x";

/// A fresh database on the test server and the test CA, or `None` (skipped) without them.
async fn database_and_ca() -> Option<(tokio_postgres::Config, std::path::PathBuf)> {
    let url = fresh_database().await?;
    let ca = test_ca_file()?;
    Some((url.parse().expect("test url"), ca))
}

/// `postgres://postgres:PASSWORD@HOST:PORT/DB?QUERY`, host and port from `config`.
fn url_with(config: &tokio_postgres::Config, host: &str, query: &str) -> String {
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().expect("test db");
    let url = format!("postgres://postgres:{PASSWORD}@{host}:{port}/{db}");
    if query.is_empty() {
        url
    } else {
        format!("{url}?{query}")
    }
}

/// TLS on the connections of `store`'s database, as `pg_stat_ssl` reports it.
struct Ssl {
    /// On the pooled connection that asks.
    own: bool,
    /// On every connection of the database.
    all: bool,
    /// On any connection of the database.
    any: bool,
    /// Dispatcher-lock connections of the database.
    lock_connections: i64,
}

async fn ssl_of_connections(store: &PgStore) -> Ssl {
    let client = store.client().await.expect("client");
    let own: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("own ssl")
        .get(0);
    let row = client
        .query_one(
            "SELECT bool_and(s.ssl), bool_or(s.ssl),
                    count(*) FILTER (WHERE a.application_name = 'ipn-bridge dispatcher locks')
               FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
              WHERE a.datname = current_database()",
            &[],
        )
        .await
        .expect("all ssl");
    Ssl {
        own,
        all: row.get(0),
        any: row.get(1),
        lock_connections: row.get(2),
    }
}

#[tokio::test]
async fn sslmode_require_with_the_ca_file_uses_verified_tls_on_every_connection() {
    let Some((config, ca)) = database_and_ca().await else {
        return;
    };
    for host in ["127.0.0.1", "localhost"] {
        let url = url_with(&config, host, "sslmode=require");
        let store = PgStore::connect_with_ca(&url, Some(&ca))
            .await
            .unwrap_or_else(|e| panic!("{host}: {e}"));
        let ingested = store
            .ingest(crate::store::tests::ipn(&format!("tls-{host}"), "A", true))
            .await
            .expect("ingest");
        assert!(
            matches!(ingested, crate::store::Ingested::Stored { .. }),
            "{ingested:?}"
        );
        // Opens the dispatcher-lock connection.
        store
            .claim_target("crm", 1_000, 1_000)
            .await
            .expect("claim");
        let Ssl {
            own,
            all,
            lock_connections,
            ..
        } = ssl_of_connections(&store).await;
        assert!(own, "{host}: the pooled connection is not TLS");
        assert_eq!(lock_connections, 1, "{host}: no lock connection to look at");
        assert!(
            all,
            "{host}: a connection (the lock connection?) is not TLS"
        );
        store.close().await;
    }
}

#[tokio::test]
async fn sslmode_require_without_the_ca_file_is_refused_as_an_unknown_issuer_without_the_password()
{
    let Some((config, _ca)) = database_and_ca().await else {
        return;
    };
    let url = url_with(&config, "127.0.0.1", "sslmode=require");
    let err = PgStore::connect(&url)
        .await
        .expect_err("a CA in no system store");
    let text = err.to_string();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(
        text.contains("TLS: invalid peer certificate: UnknownIssuer"),
        "{text}"
    );
    assert!(text.contains("postgres://postgres@127.0.0.1:"), "{text}");
    assert!(!text.contains(PASSWORD), "the password leaked: {text}");
    assert!(
        !format!("{err:?}").contains(PASSWORD),
        "the password leaked: {err:?}"
    );
}

#[tokio::test]
async fn sslmode_require_to_a_host_the_certificate_does_not_name_is_refused() {
    let Some((config, ca)) = database_and_ca().await else {
        return;
    };
    // `hostaddr` takes the socket to the test server; the certificate is checked against
    // `host`, a name (or an IP address) its SANs do not list.
    for host in ["ipnb-not-named.invalid", "127.0.0.2"] {
        let url = url_with(&config, host, "sslmode=require&hostaddr=127.0.0.1");
        let err = PgStore::connect_with_ca(&url, Some(&ca))
            .await
            .expect_err("a name the certificate does not carry");
        let text = err.to_string();
        assert!(text.contains("TLS: invalid peer certificate"), "{text}");
        assert!(text.contains("not valid for name"), "{text}");
        assert!(text.contains(host), "{text}");
        assert!(!text.contains(PASSWORD), "the password leaked: {text}");
    }
}

#[tokio::test]
async fn without_sslmode_require_connections_stay_plain_although_the_server_offers_tls() {
    let Some((config, ca)) = database_and_ca().await else {
        return;
    };
    // The server offers TLS: the same database over TLS.
    let tls = PgStore::connect_with_ca(
        &url_with(&config, "127.0.0.1", "sslmode=require"),
        Some(&ca),
    )
    .await
    .expect("tls");
    assert!(
        ssl_of_connections(&tls).await.own,
        "the server offers no TLS"
    );
    tls.close().await;
    for query in ["", "sslmode=prefer", "sslmode=disable"] {
        let store = PgStore::connect_with_ca(&url_with(&config, "127.0.0.1", query), Some(&ca))
            .await
            .unwrap_or_else(|e| panic!("{query:?}: {e}"));
        store
            .claim_target("crm", 1_000, 1_000)
            .await
            .expect("claim");
        let Ssl {
            own,
            any: any_tls,
            lock_connections,
            ..
        } = ssl_of_connections(&store).await;
        assert!(!own, "{query:?}: the pooled connection uses TLS");
        assert_eq!(lock_connections, 1, "{query:?}: no lock connection");
        assert!(!any_tls, "{query:?}: a connection uses TLS");
        store.close().await;
    }
}

#[tokio::test]
async fn a_ca_file_that_cannot_be_read_is_refused_naming_the_key_and_path() {
    let dir = tempfile::tempdir().expect("dir");
    let missing = dir.path().join("no-such-ca.pem");
    let err = PgStore::connect_with_ca(
        &format!("postgres://postgres:{PASSWORD}@127.0.0.1:1/x?sslmode=require"),
        Some(&missing),
    )
    .await
    .expect_err("no file");
    let text = err.to_string();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    assert!(text.contains("[store] ca_file"), "{text}");
    assert!(text.contains(&missing.display().to_string()), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");
}

/// A server that answers PostgreSQL's `SSLRequest` with `N` (no TLS), as one without TLS
/// does, on a real socket; returns its port.
async fn server_without_tls() -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                // SSLRequest: length 8, code 80877103.
                let mut request = [0u8; 8];
                if socket.read_exact(&mut request).await.is_ok()
                    && request == [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]
                {
                    let _ = socket.write_all(b"N").await;
                }
                let mut rest = Vec::new();
                let _ = socket.read_to_end(&mut rest).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn sslmode_require_to_a_server_without_tls_is_refused() {
    let port = server_without_tls().await;
    let url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:{port}/x?sslmode=require");
    let err = PgStore::connect(&url).await.expect_err("no TLS offered");
    let text = err.to_string();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(text.contains("server does not support TLS"), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");
}

#[test]
fn only_sslmode_require_asks_for_tls() {
    for (url, wanted) in [
        ("postgres://u@h/db", false),
        ("postgres://u@h/db?sslmode=disable", false),
        ("postgres://u@h/db?sslmode=prefer", false),
        ("postgres://u@h/db?sslmode=require", true),
        ("host=h user=u sslmode=require", true),
        ("host=h user=u", false),
    ] {
        let config: tokio_postgres::Config = url.parse().expect(url);
        assert_eq!(
            super::super::tls::tls_required(config.get_ssl_mode()),
            wanted,
            "{url}"
        );
    }
}
