//! Tests of what only the SQLite backend has: the writer's group commit and the isolation
//! of one operation in a batch (with a rusqlite connection holding the lock, as another
//! process would), reads beside another writer and its busy timeout, `PRAGMA user_version`
//! migrations. The behaviour both backends share is tested in `crate::store::tests`.

use super::*;

use crate::domain::Outcome;
use crate::store::tests::{ipn, report};

fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(&dir.path().join("t.db")).expect("open")
}

/// While another process holds the write lock briefly, concurrent ingests queue up; when it
/// is released they commit together in very few transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_operations_share_commits() {
    let dir = tempfile::tempdir().expect("dir");
    let store = open(&dir);
    let locker = rusqlite::Connection::open(dir.path().join("t.db")).expect("open");
    locker.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    let mut tasks = Vec::new();
    for i in 0..200 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .ingest(ipn(&format!("k{i}"), &format!("O{i}"), true))
                .await
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    locker.execute_batch("ROLLBACK").expect("unlock");
    for t in tasks {
        assert!(matches!(
            t.await.expect("task"),
            Ok(Ingested::Stored { .. })
        ));
    }
    let (commits, ops) = store.commit_stats();
    assert_eq!(ops, 200);
    assert!(commits <= 5, "200 ingests took {commits} commits");
}

/// One failing operation in a batch is rolled back alone; the others commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_operation_does_not_spoil_its_batch() {
    let dir = tempfile::tempdir().expect("dir");
    let store = open(&dir);
    let locker = rusqlite::Connection::open(dir.path().join("t.db")).expect("open");
    locker.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    let a = tokio::spawn({
        let s = store.clone();
        async move { s.ingest(ipn("a", "A", true)).await }
    });
    let bad = tokio::spawn({
        let s = store.clone();
        async move {
            s.call(|c| {
                c.execute(
                    "INSERT INTO ipns (source, business_key, event, received_at, raw_body)
                     VALUES ('ds24', 'doomed', 'x', 0, x'00')",
                    [],
                )?;
                Err::<(), _>(StoreError::Invalid("refused after writing".into()))
            })
            .await
        }
    });
    let b = tokio::spawn({
        let s = store.clone();
        async move { s.ingest(ipn("b", "B", true)).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    locker.execute_batch("ROLLBACK").expect("unlock");
    assert!(matches!(a.await.expect("a"), Ok(Ingested::Stored { .. })));
    assert!(matches!(b.await.expect("b"), Ok(Ingested::Stored { .. })));
    assert_eq!(
        bad.await.expect("bad"),
        Err(StoreError::Invalid("refused after writing".into()))
    );
    let keys: Vec<i64> = store
        .list_ipns(None)
        .await
        .expect("ipns")
        .iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(keys.len(), 2, "the failed operation's row is gone");
}

/// The ingests of one batch run under one shared savepoint (see `writer::transact`); when
/// one of them fails after writing its IPN row, the shared savepoint is rolled back and each
/// runs again under its own: the failing one leaves nothing, the others commit whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ingest_failing_in_a_shared_savepoint_is_rolled_back_alone() {
    let dir = tempfile::tempdir().expect("dir");
    let store = open(&dir);
    store
        .call(|c| {
            c.execute_batch(
                "CREATE TEMP TRIGGER poison BEFORE INSERT ON routes
                 WHEN NEW.integration = 'poison'
                 BEGIN SELECT RAISE(ABORT, 'poisoned route'); END;",
            )?;
            Ok(())
        })
        .await
        .expect("trigger");
    let locker = rusqlite::Connection::open(dir.path().join("t.db")).expect("open");
    locker.execute_batch("BEGIN EXCLUSIVE").expect("lock");
    let mut tasks = Vec::new();
    for i in 0..10 {
        let mut new = ipn(&format!("k{i}"), &format!("O{i}"), i % 2 == 0);
        if i == 5 {
            // Fails after its IPN row is written: the route insert is refused.
            new.routes[0].integration = "poison".into();
        }
        let store = store.clone();
        tasks.push(tokio::spawn(async move { store.ingest(new).await }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let commits_before = store.commit_stats().0;
    locker.execute_batch("ROLLBACK").expect("unlock");
    for (i, task) in tasks.into_iter().enumerate() {
        let result = task.await.expect("task");
        if i == 5 {
            assert!(
                matches!(&result, Err(e) if e.to_string().contains("poisoned route")),
                "{result:?}"
            );
        } else {
            assert!(
                matches!(result, Ok(Ingested::Stored { .. })),
                "{i}: {result:?}"
            );
        }
    }
    assert!(
        store.commit_stats().0 - commits_before <= 2,
        "the ingests shared a batch"
    );
    let counts: (i64, i64, i64, i64) = store
        .read(|c| {
            Ok(c.query_row(
                "SELECT (SELECT COUNT(*) FROM ipns), (SELECT COUNT(*) FROM routes),
                        (SELECT COUNT(*) FROM jobs),
                        (SELECT COUNT(*) FROM ipns WHERE business_key = 'k5')",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )?)
        })
        .await
        .expect("counts");
    assert_eq!(
        counts,
        (9, 9, 5, 0),
        "nine IPNs with their routes and five jobs; nothing of the failed one"
    );
}

#[tokio::test]
async fn migrations_are_applied_once_and_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("t.db");
    let store = SqliteStore::open(&path).expect("open");
    store.ingest(ipn("k1", "A", false)).await.expect("ingest");
    store.close().await;
    let store = SqliteStore::open(&path).expect("reopen");
    assert_eq!(store.list_ipns(None).await.expect("ipns").len(), 1);
    store.close().await;
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute_batch(&format!("PRAGMA user_version = {}", SCHEMA_VERSION + 1))
        .expect("bump");
    drop(conn);
    match SqliteStore::open(&path) {
        Err(StoreError::Incompatible(msg)) => assert!(msg.contains("newer"), "{msg}"),
        other => panic!("expected Incompatible, got {other:?}"),
    }
}

/// A queue command reads while the daemon holds the write lock (draining a backlog): reads
/// must not wait for it, let alone fail with "database is locked".
#[tokio::test]
async fn reads_do_not_wait_for_another_process_writing() {
    let dir = tempfile::tempdir().expect("dir");
    let store = open(&dir);
    store.ingest(ipn("k1", "A", true)).await.expect("ingest");
    let locker = rusqlite::Connection::open(dir.path().join("t.db")).expect("open");
    locker.execute_batch("BEGIN IMMEDIATE").expect("lock");
    let started = std::time::Instant::now();
    assert_eq!(
        store
            .list_jobs(JobFilter::default())
            .await
            .expect("read")
            .len(),
        1
    );
    assert_eq!(
        store.job_counts().await.expect("read").get("pending"),
        Some(&1)
    );
    assert!(
        started.elapsed() < std::time::Duration::from_millis(writer::BUSY_TIMEOUT_MS / 2),
        "reads waited {:?} for the write lock",
        started.elapsed()
    );
    // A write still waits for the lock, and fails after the busy timeout.
    let write = store.ingest(ipn("k2", "B", true)).await;
    assert!(
        matches!(write, Err(StoreError::Unavailable(_))),
        "{write:?}"
    );
    locker.execute_batch("ROLLBACK").expect("unlock");
}

#[tokio::test]
async fn the_ledger_keeps_both_ids_of_an_imported_payment_and_rows_from_before_keep_working() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("t.db");
    // A database of schema 4 with an import in its ledger, written before the parent id
    // was kept.
    let store = SqliteStore::open(&path).expect("open");
    store.close().await;
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute_batch(
        "DROP INDEX ipns_parent_transaction;
         ALTER TABLE ledger DROP COLUMN ds24_parent_transaction_id;
         ALTER TABLE ipns DROP COLUMN parent_transaction_id;
         PRAGMA user_version = 4;
         INSERT INTO ipns (id, source, business_key, event, order_id, order_item_id,
                           transaction_id, received_at, raw_body)
         VALUES (1, 'ds24', 'old', 'on_payment', 'A', '1', '100', 1000, x'00');
         INSERT INTO jobs (id, ipn_id, integration, target, action, payload, order_key, state,
                           next_attempt_at, created_at, updated_at)
         VALUES (1, 1, 'main', 'crm', 'import_order', '{}', 'A', 'delivered', 0, 0, 0);
         INSERT INTO ledger (job_id, integration, ds24_order_id, ds24_item,
                             ds24_transaction_id, reference, target_order_id, purchase_ids,
                             transaction_ids, created_at)
         VALUES (1, 'main', 'A', '1', '100', 'DS24-A-1-100', 'K-OLD', '[]', '[]', 1000);",
    )
    .expect("schema 4");
    drop(conn);

    let store = SqliteStore::open(&path).expect("migrates");
    // A new import of the same order item, whose IPN names its parent payment.
    let new = NewIpn {
        parent_transaction_id: Some("199".into()),
        ..ipn("A-1-200", "A", true)
    };
    store.ingest(new).await.expect("ingest");
    let leased = store.lease_due("crm", 1_000, 10).await.expect("lease");
    let receipt = Receipt {
        order_id: Some("K-NEW".into()),
        ..Receipt::default()
    };
    store
        .finish_attempt(
            leased[0].id,
            leased[0].attempt_id,
            report(Outcome::Delivered(receipt.clone())),
            Disposition::Delivered(receipt),
            None,
            1_100,
        )
        .await
        .expect("finish");

    let rows = store.ledger_imports("main", "A").await.expect("ledger");
    let ids: Vec<(Option<&str>, Option<&str>, Option<&str>)> = rows
        .iter()
        .map(|r| {
            (
                r.target_order_id.as_deref(),
                r.ds24_transaction_id.as_deref(),
                r.ds24_parent_transaction_id.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        ids,
        [
            (Some("K-NEW"), Some("t-A-1-200"), Some("199")),
            (Some("K-OLD"), Some("100"), None),
        ],
        "newest first; the old row has no parent id and is still found"
    );
    assert!(
        store
            .ledger_imports("other", "A")
            .await
            .expect("q")
            .is_empty()
    );
}
