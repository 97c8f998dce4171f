//! The PostgreSQL backend: several daemons share one database and one queue.
//!
//! Driver: `tokio-postgres` with a `deadpool-postgres` pool. Chosen over sqlx because the
//! store already writes every statement by hand behind typed methods (sqlx's compile-time
//! checking would need a database at build time, its runtime API adds nothing here), and
//! because tokio-postgres gives direct access to what several instances need: explicit
//! transactions, advisory locks on a connection we hold, and `LISTEN`/`NOTIFY`.
//!
//! Every operation is one transaction on a pooled connection; the acknowledgement of an
//! IPN waits for its `COMMIT` as on SQLite. Concurrent IPNs use several connections at once,
//! so PostgreSQL's own group commit does what the SQLite writer thread does by hand.
//! Duplicates are refused across instances by the unique constraint
//! `ipns (source, business_key)`.
//!
//! Jobs per state are kept by triggers in `job_counts`, one row per state and writing
//! backend, and the rows of backends that are gone are folded at open and from reads of
//! the counts (see [`counts`]).
//!
//! TLS (see [`tls`]): only `sslmode=require` in the URL turns it on, for every connection
//! (the pool's and the lock connection of [`claims`]), and then the server is always
//! verified, chain and host name, against the system's CA certificates plus those of
//! `[store] ca_file`; `prefer`, `disable` and no `sslmode` are plain connections, as before
//! TLS was built in. A connection that fails says what failed after [`PgStore::shown_url`],
//! which never carries the password.

mod alerts;
mod audit;
pub mod batch;
pub mod claims;
pub mod counts;
mod jobs;
mod review;
mod rows;
pub mod schema;
pub mod tls;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;

use super::StoreError;

/// Connections in the pool of one instance: enough for the concurrent acknowledgements of
/// a busy endpoint plus the dispatchers and the operator's reads.
pub const POOL_SIZE: usize = 16;

/// Handle to a PostgreSQL store. Clone it freely.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// The connection string without its password, for messages.
    shown: Arc<str>,
    stats: Arc<Stats>,
    /// The dispatcher locks of this instance (see [`claims`]).
    claims: Arc<claims::Claims>,
    /// When the job counts were last folded (see [`counts`]).
    fold_clock: Arc<counts::FoldClock>,
}

#[derive(Default)]
struct Stats {
    failed_ops: AtomicU64,
    commits: AtomicU64,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").field("url", &self.shown).finish()
    }
}

impl PgStore {
    /// Connects to `url` (`postgres://user[:password]@host[:port]/db`, or the key=value form)
    /// and migrates the schema (see [`schema`]); TLS only under `sslmode=require`, trusting
    /// the system's CA certificates (see [`tls`]).
    pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
        PgStore::connect_with_ca(url, None).await
    }

    /// [`PgStore::connect`], also trusting the CA certificates of the PEM file `ca_file`
    /// (`[store] ca_file`) for TLS. Every connection, pooled or the lock connection of
    /// [`claims`], uses the same TLS.
    pub async fn connect_with_ca(url: &str, ca_file: Option<&Path>) -> Result<PgStore, StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            StoreError::Invalid(format!(
                "[store] url is not a PostgreSQL connection string: {e}"
            ))
        })?;
        let shown: Arc<str> = shown_url(&config).into();
        let tls = if tls::tls_required(config.get_ssl_mode()) {
            tls::MakeRustls::new(tls::client_config(ca_file)?)
        } else {
            if let Some(path) = ca_file {
                tracing::warn!(
                    ca_file = %path.display(),
                    "[store] ca_file is not used: the url does not ask for TLS (sslmode=require)"
                );
            }
            config.ssl_mode(SslMode::Disable);
            tls::MakeRustls::off()
        };
        let claims = Arc::new(claims::Claims::new(config.clone(), tls.clone()));
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .map_err(|e| StoreError::Internal(format!("cannot build the connection pool: {e}")))?;
        let store = PgStore {
            pool,
            shown,
            stats: Arc::new(Stats::default()),
            claims,
            fold_clock: Arc::new(counts::FoldClock::started()),
        };
        let mut client = store.client().await?;
        schema::migrate(&mut client).await?;
        // The counts are right without it; a fold that fails is tried again on a read.
        if let Err(e) = counts::fold(&mut client).await {
            tracing::warn!(error = %e, "cannot fold the job counts at start");
        }
        Ok(store)
    }

    /// The connection string without its password.
    pub fn shown_url(&self) -> &str {
        &self.shown
    }

    /// A pooled connection.
    pub(crate) async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            // After `close`, as on SQLite.
            deadpool_postgres::PoolError::Closed => StoreError::Closed,
            deadpool_postgres::PoolError::Backend(e) => StoreError::Unavailable(format!(
                "cannot connect to PostgreSQL at {}: {}",
                self.shown,
                tls::describe_connect_error(&e)
            )),
            e => StoreError::Unavailable(format!(
                "cannot connect to PostgreSQL at {}: {e}",
                self.shown
            )),
        })
    }

    /// Operations that failed for a reason of the store (the source of
    /// `ipn_bridge_store_errors_total`).
    pub fn error_count(&self) -> u64 {
        self.stats.failed_ops.load(Ordering::Relaxed)
    }

    /// `(commits, operations committed)`: one operation per transaction here.
    pub fn commit_stats(&self) -> (u64, u64) {
        let n = self.stats.commits.load(Ordering::Relaxed);
        (n, n)
    }

    /// Counts the result of one operation for [`PgStore::error_count`] and
    /// [`PgStore::commit_stats`], and passes it on: a success is one commit (one transaction
    /// per operation; a read counts as one too, as on SQLite where it rides a batch), a
    /// failure of the store itself (`Unavailable`, `Internal`, `Damaged`) one failed
    /// operation. A refused request (`Invalid`, `NotFound`, …) is neither. Every public
    /// operation of the backend ends in it.
    pub(super) fn count<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        match &r {
            Ok(_) => {
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
            }
            Err(StoreError::Unavailable(_) | StoreError::Internal(_) | StoreError::Damaged(_)) => {
                self.stats.failed_ops.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {}
        }
        r
    }

    /// Closes every pooled connection; later operations fail with [`StoreError::Closed`].
    pub async fn close(self) {
        self.claims.release().await;
        self.pool.close();
    }
}

/// `user@host:port/db`, never the password.
fn shown_url(config: &tokio_postgres::Config) -> String {
    let user = config.get_user().unwrap_or("");
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_default();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("");
    format!("postgres://{user}@{host}:{port}/{db}")
}

/// A driver error as a [`StoreError`]: connection and server-availability failures are
/// `Unavailable` (try again later), a schema or data problem `Internal`.
pub(crate) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    let Some(code) = e.code() else {
        // No SQLSTATE: the connection itself failed (closed, reset, timed out, TLS).
        return StoreError::Unavailable(format!("PostgreSQL: {}", tls::describe_connect_error(&e)));
    };
    let class = &code.code()[..2];
    let unavailable = matches!(class, "08" | "53" | "57" | "58")
        || *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::READ_ONLY_SQL_TRANSACTION
        || *code == SqlState::LOCK_NOT_AVAILABLE;
    let detail = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), code.code()),
        None => e.to_string(),
    };
    if unavailable {
        StoreError::Unavailable(format!("PostgreSQL: {detail}"))
    } else {
        StoreError::Internal(format!("PostgreSQL: {detail}"))
    }
}

#[cfg(test)]
mod tests;
