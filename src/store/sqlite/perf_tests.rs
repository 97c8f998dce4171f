//! Issue 13 (the queue at a million jobs, delivery throughput), on real SQLite files: the
//! counts kept per state, the hot queries' plans, the batched results, the `quick_check`
//! that goes on after start.

use super::*;
use crate::domain::{AttemptReport, Outcome, Receipt};
use crate::store::review::ReviewFilter;
use crate::store::tests::{delivered, ipn, report};

/// Jobs per state counted from the rows themselves.
fn counted(path: &Path) -> BTreeMap<String, u64> {
    let conn = Connection::open(path).expect("open");
    let mut stmt = conn
        .prepare("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        .expect("prepare");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// A store in `dir` with `n` IPNs, each with an import job of an order of its own.
async fn store_with_jobs(dir: &tempfile::TempDir, n: usize) -> SqliteStore {
    let store = SqliteStore::open(&dir.path().join("t.db")).expect("open");
    add_jobs(&store, n).await;
    store
}

/// Stores IPNs `k0`… `k{n-1}`, each with an import job of an order of its own (`O0`…).
async fn add_jobs(store: &SqliteStore, n: usize) {
    for i in 0..n {
        store
            .ingest(ipn(&format!("k{i}"), &format!("O{i}"), true))
            .await
            .expect("ingest");
    }
}

#[tokio::test]
async fn job_counts_are_kept_per_state_through_every_change_whoever_writes() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("t.db");
    let store = SqliteStore::open(&path).expect("open");
    add_jobs(&store, 6).await;
    let leased = store.lease_due("crm", 1_000, 4).await.expect("lease");
    assert_eq!(leased.len(), 4);
    store
        .finish_attempts(vec![delivered(&leased[0], 1_100)])
        .await
        .expect("finish");
    store
        .finish_attempt(
            leased[1].id,
            leased[1].attempt_id,
            report(Outcome::Permanent {
                reason: "no".into(),
            }),
            Disposition::Dead,
            None,
            1_100,
        )
        .await
        .expect("dead");
    // Another process (a queue command, the operator's sqlite3) changes rows directly.
    Connection::open(&path)
        .and_then(|c| c.execute("UPDATE jobs SET state = 'dropped' WHERE id = 6", []))
        .expect("direct update");
    // A statement that fails leaves the counts alone.
    assert!(
        store
            .call(|c| {
                c.execute("UPDATE jobs SET state = 'held' WHERE id = 5", [])?;
                Err::<(), _>(StoreError::Invalid("rolled back".into()))
            })
            .await
            .is_err()
    );

    let kept = store.job_counts().await.expect("counts");
    assert_eq!(kept, counted(&path));
    assert_eq!(
        kept,
        BTreeMap::from([
            ("delivered".to_owned(), 1),
            ("dead".to_owned(), 1),
            ("in_flight".to_owned(), 2),
            ("pending".to_owned(), 1),
            ("dropped".to_owned(), 1),
        ])
    );
    // The counts are read from their table: a row written there is what the store reports.
    Connection::open(&path)
        .and_then(|c| c.execute("UPDATE job_counts SET n = 99 WHERE state = 'pending'", []))
        .expect("tamper");
    assert_eq!(
        store.job_counts().await.expect("counts").get("pending"),
        Some(&99)
    );
}

#[tokio::test]
async fn a_database_from_before_the_counts_gets_them_counted_at_migration() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("t.db");
    let store = SqliteStore::open(&path).expect("open");
    add_jobs(&store, 3).await;
    store.close().await;
    // Back to schema 6, as an older build left it.
    Connection::open(&path)
        .and_then(|c| {
            c.execute_batch(
                "DROP TRIGGER job_counts_insert; DROP TRIGGER job_counts_delete;
                 DROP TRIGGER job_counts_update; DROP TABLE job_counts; DROP INDEX jobs_state;
                 PRAGMA user_version = 6;",
            )
        })
        .expect("downgrade");
    let store = SqliteStore::open(&path).expect("migrates");
    assert_eq!(
        store.job_counts().await.expect("counts"),
        BTreeMap::from([("pending".to_owned(), 3)])
    );
}

/// `EXPLAIN QUERY PLAN` of `sql`, one line per step.
fn plan(conn: &Connection, sql: &str) -> String {
    let mut stmt = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let nulls = vec![rusqlite::types::Null; stmt.parameter_count()];
    let lines: Vec<String> = stmt
        .query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))
        .expect("plan")
        .collect::<Result<_, _>>()
        .expect("plan rows");
    lines.join(" | ")
}

#[tokio::test]
async fn the_hot_queries_use_indexes_and_never_scan_every_job() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("t.db");
    SqliteStore::open(&path).expect("open").close().await;
    let conn = Connection::open(&path).expect("open");
    // No ANALYZE: the store never runs it, so these are the plans a big backlog gets too.
    let cases = [
        ("job counts", JOB_COUNTS_SQL.to_owned()),
        ("recovery at start", RECOVER_JOBS_SQL.to_owned()),
        ("next due", NEXT_DUE_SQL.to_owned()),
        ("lease", LEASE_CANDIDATES_SQL.to_owned()),
        ("lease take", LEASE_TAKE_SQL.to_owned()),
        ("lease attempts", LEASE_OPEN_ATTEMPTS_SQL.to_owned()),
        ("close attempts", CLOSE_ATTEMPTS_SQL.to_owned()),
        ("jobs delivered", JOBS_DELIVERED_SQL.to_owned()),
        ("ledger rows", WRITE_LEDGER_SQL.to_owned()),
        (
            "queue list --state",
            review::review_jobs_sql(&ReviewFilter {
                state: Some(JobState::Dead),
                integration: None,
                since: None,
                limit: Some(50),
            }),
        ),
        (
            "queue list --state --integration",
            review::review_jobs_sql(&ReviewFilter {
                state: Some(JobState::Held),
                integration: Some("main".into()),
                since: None,
                limit: Some(50),
            }),
        ),
        (
            "queue list",
            review::review_jobs_sql(&ReviewFilter {
                state: None,
                integration: None,
                since: None,
                limit: Some(50),
            }),
        ),
    ];
    for (name, sql) in cases {
        let plan = plan(&conn, &sql);
        // A full pass over `jobs` is "SCAN j" / "SCAN jobs" (with or without an index);
        // the one allowed is the plain list, newest first by rowid, stopped by its LIMIT.
        let scans = plan.contains("SCAN jobs")
            || plan.contains("SCAN j ")
            || plan.contains("SCAN attempts")
            || plan.contains("SCAN i ");
        let by_rowid_desc =
            name == "queue list" && plan.contains("SCAN j") && !plan.contains("TEMP B-TREE");
        assert!(!scans || by_rowid_desc, "{name}: {plan}");
        assert!(
            !plan.contains("USE TEMP B-TREE FOR ORDER BY"),
            "{name} sorts: {plan}"
        );
    }
}

/// The statements about the jobs of one Digistore24 order find them by `jobs_order`
/// (integration, order key, id), never by walking every job in a state. The bundled SQLite
/// chooses so by itself; SQLite 3.40 (Debian 12's, seen through Python) chose
/// `jobs_state (state, id)` for the same statements, and waking the refunds of a delivered
/// import then read every pending job (3.5 ms at 20,000 pending). The `+state` terms keep
/// the state filter off any index, so the plan does not depend on the planner's version.
#[tokio::test]
async fn per_order_statements_use_the_order_index() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("t.db");
    SqliteStore::open(&path).expect("open").close().await;
    let conn = Connection::open(&path).expect("open");
    for (name, sql) in [
        ("release held", RELEASE_HELD_SQL),
        ("hold reason", HOLD_REASON_SQL),
        ("hold followers", HOLD_FOLLOWERS_SQL),
        ("wake dependents", WAKE_DEPENDENTS_SQL),
    ] {
        let plan = plan(&conn, sql);
        assert!(plan.contains("jobs_order"), "{name}: {plan}");
        assert!(!plan.contains("jobs_state"), "{name}: {plan}");
    }
}

#[tokio::test]
async fn finished_attempts_are_recorded_together_and_a_failing_one_alone_is_rolled_back() {
    let dir = tempfile::tempdir().expect("dir");
    let store = store_with_jobs(&dir, 3).await;
    let leased = store.lease_due("crm", 1_000, 3).await.expect("lease");
    assert_eq!(leased.len(), 3);
    let mut bad = delivered(&leased[1], 1_100);
    // A job that does not exist: its ledger row cannot be written.
    bad.job = JobId(404);
    let (_, ops_before) = store.commit_stats();
    let results = store
        .finish_attempts(vec![
            delivered(&leased[0], 1_100),
            bad,
            delivered(&leased[2], 1_100),
        ])
        .await
        .expect("one call");
    let (_, ops_after) = store.commit_stats();
    assert_eq!(
        ops_after - ops_before,
        1,
        "one store operation for three results"
    );
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert!(results[1].is_err(), "{results:?}");
    let states: Vec<String> = store
        .list_jobs(Default::default())
        .await
        .expect("jobs")
        .into_iter()
        .map(|j| j.state)
        .collect();
    assert_eq!(states, ["delivered", "in_flight", "delivered"]);
    // The failed item's attempt was rolled back with it: still open.
    let attempts = store.attempts(leased[1].id).await.expect("attempts");
    assert_eq!(attempts[0].outcome, None);
    assert_eq!(store.ledger().await.expect("ledger").len(), 2);
}

/// How often the writer's cached statement for `sql` was prepared again since it was first
/// prepared (SQLite's `SQLITE_STMTSTATUS_REPREPARE` counter of that statement).
async fn reprepared(store: &SqliteStore, sql: &'static str) -> i32 {
    statement_status(store, sql, rusqlite::StatementStatus::RePrepare).await
}

/// A counter of the writer's cached statement for `sql`.
async fn statement_status(
    store: &SqliteStore,
    sql: &'static str,
    which: rusqlite::StatementStatus,
) -> i32 {
    store
        .call(move |c| Ok(c.prepare_cached(sql)?.get_status(which)))
        .await
        .expect("statement status")
}

#[tokio::test]
async fn the_lease_and_the_ledger_statements_are_prepared_once_not_at_every_use() {
    let dir = tempfile::tempdir().expect("dir");
    let store = store_with_jobs(&dir, 6).await;
    // Three lease rounds of different sizes and three deliveries, each its own store call.
    let mut leased = Vec::new();
    for limit in [1, 2, 3] {
        leased.extend(store.lease_due("crm", 1_000, limit).await.expect("lease"));
    }
    assert_eq!(leased.len(), 6);
    for job in &leased[..3] {
        let results = store
            .finish_attempts(vec![delivered(job, 1_100)])
            .await
            .expect("finish");
        assert!(results[0].is_ok(), "{results:?}");
    }
    assert_eq!(store.ledger().await.expect("ledger").len(), 3);
    assert_eq!(reprepared(&store, LEASE_CANDIDATES_SQL).await, 0, "lease");
    assert_eq!(reprepared(&store, LEASE_TAKE_SQL).await, 0, "lease take");
    assert_eq!(
        reprepared(&store, LEASE_OPEN_ATTEMPTS_SQL).await,
        0,
        "attempts"
    );
    assert_eq!(reprepared(&store, WRITE_LEDGER_SQL).await, 0, "ledger");
}

/// The ingest of an IPN with a job looks for a dead job of its order (`HOLD_REASON_SQL`,
/// run by `insert_job`): that statement too is prepared once, not again at every ingest
/// (issue 13, found by the delivery round's profile); so is the IPN's own insert.
#[tokio::test]
async fn the_ingests_hold_check_is_prepared_once_not_at_every_ingest() {
    let dir = tempfile::tempdir().expect("dir");
    let store = SqliteStore::open(&dir.path().join("t.db")).expect("open");
    for i in 0..6 {
        store
            .ingest(ipn(&format!("k{i}"), &format!("O{}", i % 2), true))
            .await
            .expect("ingest");
    }
    assert_eq!(runs(&store, HOLD_REASON_SQL).await, 6);
    assert_eq!(reprepared(&store, HOLD_REASON_SQL).await, 0, "hold reason");
    assert_eq!(runs(&store, INSERT_IPN_SQL).await, 6);
    assert_eq!(
        reprepared(&store, INSERT_IPN_SQL).await,
        0,
        "the IPN's insert"
    );
}

/// How often the writer ran its cached statement `sql` (SQLite's `SQLITE_STMTSTATUS_RUN`).
async fn runs(store: &SqliteStore, sql: &'static str) -> i32 {
    statement_status(store, sql, rusqlite::StatementStatus::Run).await
}

#[tokio::test]
async fn a_batch_of_results_without_a_failure_takes_one_savepoint_not_one_per_item() {
    let dir = tempfile::tempdir().expect("dir");
    let store = store_with_jobs(&dir, 5).await;
    let leased = store.lease_due("crm", 1_000, 5).await.expect("lease");
    assert_eq!(leased.len(), 5);
    let results = store
        .finish_attempts(leased[..3].iter().map(|j| delivered(j, 1_100)).collect())
        .await
        .expect("finish");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(runs(&store, "SAVEPOINT batch").await, 1);
    assert_eq!(runs(&store, "SAVEPOINT item").await, 0);
    // A batch with a failing item is run again item by item: the others are recorded.
    let mut bad = delivered(&leased[3], 1_100);
    bad.job = JobId(404);
    let results = store
        .finish_attempts(vec![bad, delivered(&leased[4], 1_100)])
        .await
        .expect("finish");
    assert!(results[0].is_err() && results[1].is_ok(), "{results:?}");
    assert_eq!(runs(&store, "SAVEPOINT item").await, 2);
    assert_eq!(store.ledger().await.expect("ledger").len(), 4);
    assert_eq!(
        store.attempts(leased[3].id).await.expect("attempts")[0].outcome,
        None
    );
}

#[tokio::test]
async fn a_lease_and_a_batch_of_deliveries_take_a_few_statements_whatever_their_size() {
    let dir = tempfile::tempdir().expect("dir");
    let store = store_with_jobs(&dir, 5).await;
    let leased = store.lease_due("crm", 1_000, 5).await.expect("lease");
    assert_eq!(leased.len(), 5);
    // A run counts once for the statement and once for each trigger program it fires (the
    // job-count trigger, once per job). The statement for one job's attempt is not used.
    assert_eq!(runs(&store, LEASE_TAKE_SQL).await, 1 + 5);
    assert_eq!(runs(&store, LEASE_OPEN_ATTEMPTS_SQL).await, 1);
    assert_eq!(
        runs(&store, OPEN_ATTEMPT_SQL).await,
        0,
        "attempts one by one"
    );
    let results = store
        .finish_attempts(leased.iter().map(|j| delivered(j, 1_100)).collect())
        .await
        .expect("finish");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(runs(&store, CLOSE_ATTEMPTS_SQL).await, 1);
    assert_eq!(
        runs(&store, CLOSE_ATTEMPT_SQL).await,
        0,
        "attempts one by one"
    );
    assert_eq!(
        runs(&store, WRITE_LEDGER_SQL).await,
        1,
        "the ledger rows of the batch in one statement, not one per job"
    );
}

#[tokio::test]
async fn a_lease_with_a_payload_that_does_not_parse_fails_and_leaves_every_job_as_it_was() {
    let dir = tempfile::tempdir().expect("dir");
    let store = store_with_jobs(&dir, 3).await;
    store
        .call(|c| Ok(c.execute("UPDATE jobs SET payload = '{\"action\":' WHERE id = 2", [])?))
        .await
        .expect("damage a payload");
    assert!(store.lease_due("crm", 1_000, 3).await.is_err());
    let jobs = store.list_jobs(Default::default()).await.expect("jobs");
    let shape: Vec<(&str, u32)> = jobs
        .iter()
        .map(|j| (j.state.as_str(), j.attempts))
        .collect();
    assert_eq!(shape, [("pending", 0), ("pending", 0), ("pending", 0)]);
    for job in &jobs {
        let attempts = store.attempts(JobId(job.id)).await.expect("attempts");
        assert!(attempts.is_empty(), "{attempts:?}");
    }
}

/// Everything a store holds about its jobs, for comparing two stores.
async fn rows_of(store: &SqliteStore) -> (Vec<JobRow>, Vec<Vec<AttemptRow>>, Vec<LedgerRow>) {
    let jobs = store.list_jobs(Default::default()).await.expect("jobs");
    let mut attempts = Vec::new();
    for job in &jobs {
        attempts.push(store.attempts(JobId(job.id)).await.expect("attempts"));
    }
    (jobs, attempts, store.ledger().await.expect("ledger"))
}

#[tokio::test]
async fn a_batch_of_deliveries_writes_the_same_rows_as_one_delivery_at_a_time() {
    let dir = tempfile::tempdir().expect("dir");
    let one_by_one = SqliteStore::open(&dir.path().join("one.db")).expect("open");
    let batched = SqliteStore::open(&dir.path().join("batch.db")).expect("open");
    let mut finished = Vec::new();
    for store in [&one_by_one, &batched] {
        add_jobs(store, 4).await;
        let leased = store.lease_due("crm", 1_000, 4).await.expect("lease");
        assert_eq!(leased.len(), 4);
        finished = leased
            .iter()
            .enumerate()
            .map(|(n, job)| {
                let receipt = Receipt {
                    order_id: Some(format!("K{n}")),
                    customer_id: (n % 2 == 0).then(|| format!("C{n}")),
                    purchase_ids: vec![format!("P{n}"), "P\"quoted\"".into()],
                    transaction_ids: vec![format!("T{n}")],
                };
                let mut item = delivered(job, 1_100 + n as i64);
                item.report = AttemptReport {
                    http_status: (n != 1).then_some(200),
                    response: format!("{{\"result\":\"SUCCESS\",\"n\":{n}}} é"),
                    ..report(Outcome::Delivered(receipt.clone()))
                };
                item.disposition = Disposition::Delivered(receipt);
                item
            })
            .collect();
    }
    for item in finished.clone() {
        one_by_one
            .finish_attempt(
                item.job,
                item.attempt_id,
                item.report,
                item.disposition,
                None,
                item.now,
            )
            .await
            .expect("one");
    }
    let results = batched.finish_attempts(finished).await.expect("batch");
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(runs(&batched, WRITE_LEDGER_SQL).await, 1, "batched");
    let (one, batch) = (rows_of(&one_by_one).await, rows_of(&batched).await);
    assert_eq!(one.2.len(), 4);
    assert_eq!(one, batch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_found_by_the_quick_check_after_start_stops_every_operation() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("t.db");
    SqliteStore::open(&path).expect("open").close().await;
    Connection::open(&path)
        .and_then(|c| {
            c.execute_batch(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
                 INSERT INTO ipns (source, business_key, event, order_id, received_at, raw_body)
                 SELECT 'ds24', 'k' || i, 'on_payment', 'O' || i, 1000, zeroblob(100) FROM n;",
            )
        })
        .expect("rows");
    let len = std::fs::metadata(&path).expect("meta").len();
    let page = 4096;
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.write_all_at(&vec![0xFF; page as usize], len - page))
        .expect("damage");

    // Bigger than what is checked before ready: the file opens, and the check runs after.
    let store = SqliteStore::open_exclusive_with_budget(
        &path,
        EmptyFile::Refuse,
        std::time::Duration::ZERO,
        0,
    )
    .expect("starts: the damage is not found before ready");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let refused = loop {
        match store.probe_writable().await {
            Err(StoreError::Unavailable(msg)) => break msg,
            _ => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the background quick_check never stopped the store"
                );
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    };
    assert!(refused.contains("is damaged (quick_check:"), "{refused}");
    assert!(refused.contains("refused (503)"), "{refused}");
}

#[tokio::test]
async fn a_sound_file_checked_after_start_keeps_working() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("t.db");
    SqliteStore::open(&path).expect("open").close().await;
    let store = SqliteStore::open_exclusive_with_budget(
        &path,
        EmptyFile::Refuse,
        std::time::Duration::ZERO,
        0,
    )
    .expect("open");
    for i in 0..20 {
        store
            .ingest(ipn(&format!("k{i}"), &format!("O{i}"), true))
            .await
            .expect("still writable");
    }
}

#[tokio::test]
async fn an_operator_store_closes_at_once_beside_a_long_reader() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("t.db");
    let store = SqliteStore::open(&path).expect("open");
    store.ingest(ipn("k0", "O0", true)).await.expect("ingest");
    store.close().await;
    // A reader that keeps its snapshot (the daemon's background quick_check of a big file).
    let reader = Connection::open(&path).expect("open");
    reader
        .execute_batch("BEGIN; SELECT COUNT(*) FROM jobs;")
        .expect("read transaction");
    // `queue list`: open, read, close.
    let started = std::time::Instant::now();
    let store = SqliteStore::open(&path).expect("open");
    store
        .ingest(ipn("k1", "O1", true))
        .await
        .expect("write beside the reader");
    assert_eq!(
        store
            .review_jobs(Default::default())
            .await
            .expect("list")
            .len(),
        2
    );
    store.close().await;
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_millis(writer::BUSY_TIMEOUT_MS / 2),
        "took {took:?}: the close waited for the reader"
    );
    reader.execute_batch("COMMIT").expect("end");
}

/// The indexes SQLite keeps on `table`, by name.
fn indexes_of(conn: &Connection, table: &str) -> Vec<String> {
    let mut stmt = conn
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = ?1 ORDER BY name",
        )
        .expect("prepare");
    stmt.query_map([table], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows")
}

/// Migration 8 (issue 13): IPNs are found by transaction, whose ids Digistore24 counts up,
/// not by order, whose ids are 8 characters in no order (each IPN's entry of an order index
/// went into a different page, one more page per IPN in every commit). The audit's lookup
/// and the payment a refund reverses read the transaction indexes; no index of `ipns` is
/// kept by order. A database of schema 7 loses its order index at open, gains the parent
/// transaction's, keeps its rows, and both lookups still find them.
#[tokio::test]
async fn ipns_are_looked_up_by_transaction_and_no_order_index_is_kept() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("t.db");
    let store = SqliteStore::open(&path).expect("open");
    store.ingest(ipn("k1", "A", false)).await.expect("ingest");
    store.close().await;
    let conn = Connection::open(&path).expect("open");
    let kept = [
        "ipns_parent_transaction",
        "ipns_received",
        "ipns_transaction",
        "sqlite_autoindex_ipns_1",
    ];
    assert_eq!(indexes_of(&conn, "ipns"), kept);
    let audit = plan(&conn, super::audit::RECEIVED_SQL);
    assert!(audit.contains("USING INDEX ipns_transaction"), "{audit}");
    let payment = plan(&conn, PAYMENT_ROUTE_SQL);
    for index in ["ipns_transaction", "ipns_parent_transaction"] {
        assert!(
            payment.contains(&format!("USING INDEX {index}")),
            "{payment}"
        );
    }
    assert!(!payment.contains("SCAN i"), "{payment}");

    // Back to schema 7, as an older build left it.
    conn.execute_batch(
        "DROP INDEX ipns_parent_transaction; CREATE INDEX ipns_order ON ipns (order_id);
         PRAGMA user_version = 7;",
    )
    .expect("downgrade");
    drop(conn);
    let store = crate::store::Store::Sqlite(SqliteStore::open(&path).expect("migrates"));
    crate::store::tests::k1_found_by_transaction(&store).await;
    store.close().await;
    let conn = Connection::open(&path).expect("open");
    assert_eq!(indexes_of(&conn, "ipns"), kept);
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(version, SCHEMA_VERSION);
}

/// Migration 9 (issue 13): the ledger keeps one index by order, `ledger_item`, which begins
/// with the integration and the order; `ledger_order` (those two columns alone) cost every
/// delivered job a second entry in a page of its own. Both lookups of an order's imports
/// read `ledger_item`, and a database of schema 8 loses `ledger_order` at open.
#[tokio::test]
async fn an_orders_imports_are_found_by_ledger_item_and_no_second_order_index_is_kept() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("t.db");
    SqliteStore::open(&path).expect("open").close().await;
    let conn = Connection::open(&path).expect("open");
    assert_eq!(indexes_of(&conn, "ledger"), ["ledger_item"]);
    let lookup = plan(&conn, &format!("SELECT job_id {LEDGER_IMPORTS_OF_ORDER}"));
    assert!(lookup.contains("INDEX ledger_item"), "{lookup}");
    assert!(!lookup.contains("SCAN"), "{lookup}");

    // Back to schema 8, as an older build left it.
    conn.execute_batch(
        "CREATE INDEX ledger_order ON ledger (integration, ds24_order_id);
         PRAGMA user_version = 8;",
    )
    .expect("downgrade");
    drop(conn);
    SqliteStore::open(&path).expect("migrates").close().await;
    let conn = Connection::open(&path).expect("open");
    assert_eq!(indexes_of(&conn, "ledger"), ["ledger_item"]);
}
