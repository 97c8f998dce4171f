//! The PostgreSQL mode of the backlog benchmark (`-- --postgres URL`): a scratch database
//! of its own on the server at `URL`, grown by SQL as the SQLite mode grows its file, and
//! dropped again when the run ends (also when it fails: [`Scratch`] drops it in `Drop`).
//!
//! Decisions:
//! * The role of `URL` must be allowed to `CREATE DATABASE`; the name is unique per run
//!   (`ipnb_backlog_<pid>_<unix nanos>`), so runs beside the test suite on the shared test
//!   server touch nothing else. Plain connections only (`NoTls`): the bench's server is
//!   local; the daemon itself connects with the URL as given.
//! * The copies go through the tables, so the `job_counts` triggers of schema migrations 3
//!   and 4 count every one, in transactions of [`BATCH`] copies: every copy's trigger
//!   updates the same counter row (state `pending`, the pid of this connection), and inside
//!   one transaction each update leaves a version of that row that the next one's unique
//!   check walks past, so one transaction of a million copies would be quadratic.
//! * Ids: the copies of IPN `s` (the seed, the only IPN the daemon stored) take the ids
//!   `s + i` (`OVERRIDING SYSTEM VALUE`, then the identity sequence is moved past them),
//!   so each job finds its IPN without a join; jobs take their ids from their identity.
//! * After growing, `VACUUM (ANALYZE)` of the grown tables, timed apart: a database that has
//!   lived with its backlog has been vacuumed and analysed by autovacuum, and a measurement
//!   should not meet autovacuum's first pass over a million fresh rows.

use std::time::{Duration, Instant};

use tokio_postgres::NoTls;
use tokio_postgres::types::{FromSql, ToSql};

/// Copies per transaction while growing (see the module doc).
const BATCH: i64 = 10_000;

/// A blocking PostgreSQL client: its own current-thread runtime drives the connection
/// while a call waits.
struct Pg {
    runtime: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl Pg {
    fn connect(url: &str) -> Result<Pg, tokio_postgres::Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the bench's PostgreSQL client");
        let (client, connection) = runtime.block_on(tokio_postgres::connect(url, NoTls))?;
        runtime.spawn(async move {
            let _ = connection.await;
        });
        Ok(Pg { runtime, client })
    }

    fn batch(&self, sql: &str) -> Result<(), tokio_postgres::Error> {
        self.runtime.block_on(self.client.batch_execute(sql))
    }

    fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> u64 {
        self.runtime
            .block_on(self.client.execute(sql, params))
            .unwrap_or_else(|e| panic!("{e}: {sql}"))
    }

    /// The one value of the one row `sql` answers.
    fn one<T: for<'a> FromSql<'a>>(&self, sql: &str) -> T {
        self.runtime
            .block_on(self.client.query_one(sql, &[]))
            .unwrap_or_else(|e| panic!("{e}: {sql}"))
            .get(0)
    }

    /// The time of one run of `sql` (all its rows read).
    fn time(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Duration {
        let t = Instant::now();
        self.runtime
            .block_on(self.client.query(sql, params))
            .unwrap_or_else(|e| panic!("{e}: {sql}"));
        t.elapsed()
    }
}

/// `url` with its database name replaced by `name`: the path of a `postgres://` URL, or a
/// `dbname=` appended to the key=value form (a later key wins).
fn with_dbname(url: &str, name: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return format!("{url} dbname={name}");
    };
    let (base, query) = match url.find('?') {
        Some(q) => url.split_at(q),
        None => (url, ""),
    };
    let authority_end = base[scheme_end + 3..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + 3 + i);
    format!("{}/{name}{query}", &base[..authority_end])
}

/// A database of this run on the server, dropped with the value.
pub struct Scratch {
    admin_url: String,
    name: String,
    /// The daemon's `[store] url`.
    pub url: String,
    /// Connected to the scratch database (taken out before the drop).
    db: Option<Pg>,
    /// Leave the database when the value is dropped (`--keep`).
    keep: bool,
}

impl Scratch {
    /// Creates the database on the server at `admin_url`; `keep`: never drop it.
    pub fn create(admin_url: &str, keep: bool) -> Scratch {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!("ipnb_backlog_{}_{nanos}", std::process::id());
        let admin = Pg::connect(admin_url).expect("connect to the --postgres server");
        admin
            .batch(&format!("CREATE DATABASE {name}"))
            .expect("CREATE DATABASE (the role needs CREATEDB)");
        let url = with_dbname(admin_url, &name);
        let mut scratch = Scratch {
            admin_url: admin_url.to_owned(),
            name,
            url,
            db: None,
            keep,
        };
        scratch.db = Some(Pg::connect(&scratch.url).expect("connect to the scratch database"));
        scratch
    }

    fn db(&self) -> &Pg {
        self.db.as_ref().expect("the scratch database is connected")
    }

    /// The server as the header line names it: version, database, durability settings.
    pub fn describe(&self) -> String {
        let db = self.db();
        format!(
            "PostgreSQL {} (fsync={}, synchronous_commit={}, shared_buffers={}), database {}",
            db.one::<String>("SHOW server_version"),
            db.one::<String>("SHOW fsync"),
            db.one::<String>("SHOW synchronous_commit"),
            db.one::<String>("SHOW shared_buffers"),
            self.name
        )
    }

    /// `pg_database_size` of the scratch database, in MB.
    pub fn size_mb(&self) -> f64 {
        self.db()
            .one::<i64>("SELECT pg_database_size(current_database())") as f64
            / 1e6
    }

    /// Copies the seed IPN and its job until `to` jobs exist, all `pending` and due.
    pub fn grow(&self, to: u64, body: Option<usize>) {
        let db = self.db();
        let have = db.one::<i64>("SELECT COUNT(*) FROM jobs");
        let to = i64::try_from(to).expect("size fits i64");
        if have >= to {
            return;
        }
        assert_eq!(
            db.one::<i64>("SELECT COUNT(*) FROM ipns"),
            have,
            "one IPN per job, as the seed and its copies are"
        );
        let seed_ipn = db.one::<i64>("SELECT MIN(id) FROM ipns");
        let seed_job = db.one::<i64>("SELECT MIN(id) FROM jobs");
        if let Some(bytes) = body {
            let bytes = i32::try_from(bytes).expect("--body fits i32");
            db.execute(
                "UPDATE ipns SET raw_body =
                     substring(raw_body || decode(repeat('00', $1), 'hex') from 1 for $1)
                 WHERE id = $2",
                &[&bytes, &seed_ipn],
            );
        }
        let t = Instant::now();
        let mut from = have;
        while from < to {
            let last = (from + BATCH).min(to) - 1;
            db.batch("BEGIN").expect("begin");
            db.execute(
                "INSERT INTO ipns (id, source, business_key, event, order_id, order_item_id,
                                   product_id, transaction_id, buyer_email, amount, currency,
                                   received_at, raw_body, parent_transaction_id)
                 OVERRIDING SYSTEM VALUE
                 SELECT $3 + n.i, source, business_key || '-' || n.i, event,
                        order_id || '-' || n.i, order_item_id, product_id, transaction_id || n.i,
                        buyer_email, amount, currency, received_at, raw_body,
                        parent_transaction_id
                 FROM ipns, generate_series($1::bigint, $2::bigint) AS n (i)
                 WHERE ipns.id = $3",
                &[&from, &last, &seed_ipn],
            );
            db.execute(
                "INSERT INTO jobs (ipn_id, integration, target, action, payload, order_key, state,
                                   attempts, next_attempt_at, created_at, updated_at)
                 SELECT $3 + n.i, integration, target, action, payload, order_key || '-' || n.i,
                        'pending', 0, 0, created_at, updated_at
                 FROM jobs, generate_series($1::bigint, $2::bigint) AS n (i)
                 WHERE jobs.id = $4",
                &[&from, &last, &seed_ipn, &seed_job],
            );
            db.batch("COMMIT").expect("commit");
            from = last + 1;
        }
        db.batch("SELECT setval(pg_get_serial_sequence('ipns', 'id'), (SELECT MAX(id) FROM ipns))")
            .expect("move the IPN identity past the copies");
        let built = t.elapsed();
        let t = Instant::now();
        db.batch("VACUUM (ANALYZE) ipns, jobs, job_counts")
            .expect("vacuum");
        let vacuum = t.elapsed();
        let counted = db.one::<i64>("SELECT COALESCE(SUM(n), 0)::BIGINT FROM job_counts");
        let jobs = db.one::<i64>("SELECT COUNT(*) FROM jobs");
        assert_eq!(
            counted, jobs,
            "job_counts must count every job the copies added"
        );
        println!(
            "  built {} jobs in {:.1} s; database {:.0} MB (pg_database_size); VACUUM (ANALYZE) \
             {:.1} s; job_counts {counted} = COUNT(*) {jobs}",
            to - have,
            built.as_secs_f64(),
            self.size_mb(),
            vacuum.as_secs_f64()
        );
    }

    /// `(job counts by GROUP BY, queue list --state dead query)`, the median of 3 runs each:
    /// what `/healthz` and `/metrics` ran before migration 3, and the store's `queue list`
    /// query with a state that no job is in (every row of the id order is looked at).
    pub fn compare(&self) -> (Duration, Duration) {
        let db = self.db();
        let median = |sql: &str, params: &[&(dyn ToSql + Sync)]| {
            let mut times: Vec<Duration> = (0..3).map(|_| db.time(sql, params)).collect();
            times.sort();
            times[1]
        };
        let counts = median("SELECT state, COUNT(*) FROM jobs GROUP BY state", &[]);
        let dead = median(
            "SELECT j.id FROM jobs j JOIN ipns i ON i.id = j.ipn_id
             WHERE ($1::text IS NULL OR j.state = $1)
               AND ($2::text IS NULL OR j.integration = $2)
               AND ($3::bigint IS NULL OR j.created_at >= $3)
             ORDER BY j.id DESC LIMIT 50",
            &[&"dead", &None::<String>, &None::<i64>],
        );
        (counts, dead)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.db = None;
        if self.keep {
            println!(
                "kept database {} (--keep): drop it with DROP DATABASE",
                self.name
            );
            return;
        }
        let dropped = Pg::connect(&self.admin_url).and_then(|admin| {
            admin.batch(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
        });
        match dropped {
            Ok(()) => println!("dropped database {}", self.name),
            Err(e) => eprintln!("could not drop database {}: {e}", self.name),
        }
    }
}
