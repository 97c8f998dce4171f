//! Store tests on real SQLite files: idempotent ingest, group commit, savepoint isolation,
//! the job life cycle through a crash, per-order sequencing, close and migrations.

use super::*;
use crate::domain::{ImportRef, Money};
use crate::store::{alerts, review};
use alerts::NewAlert;

use crate::store::tests::{ipn, order};

fn report(outcome: Outcome) -> AttemptReport {
    AttemptReport {
        outcome,
        endpoint: "order/import".into(),
        http_status: Some(200),
        request: "loginId=x&password=%5Bredacted%5D".into(),
        response: "{}".into(),
        maybe_applied: false,
    }
}

use crate::domain::Outcome;

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

#[tokio::test]
async fn a_job_survives_a_crash_and_is_reconciled_before_it_is_sent_again() {
    let dir = tempfile::tempdir().expect("dir");
    let store = open(&dir);
    store.ingest(ipn("k1", "A", true)).await.expect("ingest");
    assert!(
        store
            .lease_due("crm", 999, 10)
            .await
            .expect("lease")
            .is_empty(),
        "not due yet"
    );
    let leased = store.lease_due("crm", 1_000, 10).await.expect("lease");
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].kind, AttemptKind::Send);
    assert!(
        store
            .lease_due("crm", 1_000, 10)
            .await
            .expect("lease")
            .is_empty(),
        "leased once"
    );
    drop(store);

    // "Crash": a new process opens the same file.
    let store = open(&dir);
    assert_eq!(
        store
            .recover_interrupted(2_000, 2_500)
            .await
            .expect("recover"),
        1
    );
    let job = store.job(leased[0].id).await.expect("job");
    assert_eq!((job.state.as_str(), job.needs_reconcile), ("pending", true));
    let attempts = store.attempts(leased[0].id).await.expect("attempts");
    assert_eq!(attempts[0].outcome.as_deref(), Some("interrupted"));

    let again = store.lease_due("crm", 2_500, 10).await.expect("lease");
    assert_eq!(again[0].kind, AttemptKind::Reconcile);
    let (send_attempt, number) = store
        .reconciled_absent(
            again[0].id,
            again[0].attempt_id,
            report(Outcome::Retryable {
                reason: String::new(),
                retry_after: None,
            }),
            2_600,
        )
        .await
        .expect("absent");
    assert_eq!(number, 3);
    let receipt = Receipt {
        order_id: Some("7A1C0E93B2".into()),
        customer_id: Some("501".into()),
        purchase_ids: vec!["C0FFEE1234".into()],
        transaction_ids: Vec::new(),
    };
    store
        .finish_attempt(
            again[0].id,
            send_attempt,
            report(Outcome::Delivered(receipt.clone())),
            Disposition::Delivered(receipt),
            None,
            2_700,
        )
        .await
        .expect("finish");
    let outcomes: Vec<(String, Option<String>)> = store
        .attempts(again[0].id)
        .await
        .expect("attempts")
        .into_iter()
        .map(|a| (a.kind, a.outcome))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("send".into(), Some("interrupted".into())),
            ("reconcile".into(), Some("absent".into())),
            ("send".into(), Some("delivered".into())),
        ]
    );
    let ledger = store.ledger().await.expect("ledger");
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].target_order_id.as_deref(), Some("7A1C0E93B2"));
    assert_eq!(ledger[0].reference, "DS24-k1");
    assert_eq!(ledger[0].purchase_ids, vec!["C0FFEE1234".to_owned()]);
    assert!(
        store
            .lease_due("crm", 9_999, 10)
            .await
            .expect("lease")
            .is_empty(),
        "delivered stays delivered"
    );
}

#[tokio::test]
async fn a_later_job_of_the_same_order_waits_for_the_earlier_one() {
    let dir = tempfile::tempdir().expect("dir");
    let store = open(&dir);
    store.ingest(ipn("first", "A", true)).await.expect("ingest");
    store
        .ingest(ipn("second", "A", true))
        .await
        .expect("ingest");
    store.ingest(ipn("other", "B", true)).await.expect("ingest");
    let leased = store.lease_due("crm", 1_000, 10).await.expect("lease");
    let refs: Vec<&str> = leased
        .iter()
        .filter_map(|j| j.action.reconcile_reference().map(|o| o.reference.as_str()))
        .collect();
    assert_eq!(refs, ["DS24-first", "DS24-other"]);
    let first = &leased[0];
    store
        .finish_attempt(
            first.id,
            first.attempt_id,
            report(Outcome::Retryable {
                reason: "502".into(),
                retry_after: None,
            }),
            Disposition::Retry {
                at: 5_000,
                reconcile: false,
            },
            None,
            1_100,
        )
        .await
        .expect("finish");
    assert!(
        store
            .lease_due("crm", 2_000, 10)
            .await
            .expect("lease")
            .is_empty(),
        "the second job waits while the first retries"
    );
    let retried = store.lease_due("crm", 5_000, 10).await.expect("lease");
    assert_eq!(retried.len(), 1);
    store
        .finish_attempt(
            retried[0].id,
            retried[0].attempt_id,
            report(Outcome::Permanent {
                reason: "No products exist in the order".into(),
            }),
            Disposition::Dead,
            None,
            5_100,
        )
        .await
        .expect("finish");
    let dead = store.job(retried[0].id).await.expect("job");
    assert_eq!(dead.state, "dead");
    assert_eq!(
        dead.last_error.as_deref(),
        Some("No products exist in the order")
    );
    // The job behind the dead one is held, not run.
    assert!(
        store
            .lease_due("crm", 5_200, 10)
            .await
            .expect("lease")
            .is_empty()
    );
    let jobs = store.list_jobs(JobFilter::default()).await.expect("jobs");
    assert_eq!(jobs[1].state, "held");
}

#[tokio::test]
async fn after_close_operations_are_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let store = open(&dir);
    let other = store.clone();
    store.ingest(ipn("k1", "A", false)).await.expect("ingest");
    store.close().await;
    assert_eq!(
        other.ingest(ipn("k2", "B", false)).await,
        Err(StoreError::Closed)
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

#[tokio::test]
async fn jobs_behind_a_dead_job_are_held_with_its_reason() {
    let dir = tempfile::tempdir().expect("dir");
    let store = open(&dir);
    store
        .ingest(ipn("import", "A", true))
        .await
        .expect("ingest");
    store
        .ingest(ipn("refund", "A", true))
        .await
        .expect("ingest");
    let leased = store.lease_due("crm", 1_000, 10).await.expect("lease");
    assert_eq!(leased.len(), 1);
    store
        .finish_attempt(
            leased[0].id,
            leased[0].attempt_id,
            report(Outcome::Permanent {
                reason: "No products exist in the order".into(),
            }),
            Disposition::Dead,
            None,
            1_100,
        )
        .await
        .expect("finish");
    let jobs = store.list_jobs(JobFilter::default()).await.expect("jobs");
    assert_eq!(jobs[1].state, "held");
    let reason = jobs[1].last_error.clone().unwrap_or_default();
    assert!(
        reason.contains(&format!(
            "job {} of the same Digistore24 order is dead",
            jobs[0].id
        )),
        "{reason}"
    );
    assert!(
        reason.contains("No products exist in the order"),
        "{reason}"
    );
    // A job of the same order arriving later is held at once; other orders are not.
    store
        .ingest(ipn("chargeback", "A", true))
        .await
        .expect("ingest");
    store.ingest(ipn("other", "B", true)).await.expect("ingest");
    let states: Vec<String> = store
        .list_jobs(JobFilter::default())
        .await
        .expect("jobs")
        .into_iter()
        .map(|j| j.state)
        .collect();
    assert_eq!(states, ["dead", "held", "held", "pending"]);
    assert_eq!(
        store
            .lease_due("crm", 2_000, 10)
            .await
            .expect("lease")
            .len(),
        1
    );
}

#[tokio::test]
async fn a_requeued_job_does_not_spend_its_attempt() {
    let dir = tempfile::tempdir().expect("dir");
    let store = open(&dir);
    store.ingest(ipn("k1", "A", true)).await.expect("ingest");
    let leased = store.lease_due("crm", 1_000, 10).await.expect("lease");
    store
        .finish_attempt(
            leased[0].id,
            leased[0].attempt_id,
            report(Outcome::TargetDown {
                reason: "Invalid login credentials".into(),
            }),
            Disposition::Requeue { at: 1_500 },
            None,
            1_100,
        )
        .await
        .expect("finish");
    let job = store.job(leased[0].id).await.expect("job");
    assert_eq!(
        (job.state.as_str(), job.attempts, job.next_attempt_at),
        ("pending", 0, 1_500)
    );
    assert_eq!(
        store.attempts(leased[0].id).await.expect("attempts").len(),
        1,
        "still recorded"
    );
    let again = store.lease_due("crm", 1_500, 10).await.expect("lease");
    assert_eq!(again[0].attempt_no, 1);
}

#[tokio::test]
async fn the_ledger_finds_the_import_an_action_refers_to() {
    let dir = tempfile::tempdir().expect("dir");
    let store = open(&dir);
    for key in ["A-1-100", "A-1-200"] {
        store.ingest(ipn(key, "A", true)).await.expect("ingest");
        let leased = store.lease_due("crm", 1_000, 10).await.expect("lease");
        let receipt = Receipt {
            order_id: Some(format!("K-{key}")),
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
    }
    let mut import = ImportRef {
        ds24_order_id: "A".into(),
        ds24_item: "1".into(),
        payment_transaction: Some("100".into()),
        reference_field: "custom1".into(),
        email: "jane@example.com".into(),
        campaign_id: 12,
        since: "2026-11-22".into(),
    };
    let found = |r: Option<Receipt>| r.and_then(|r| r.order_id);
    assert_eq!(
        found(store.ledger_import("main", &import).await.expect("q")).as_deref(),
        Some("K-A-1-100")
    );
    import.payment_transaction = None;
    assert_eq!(
        found(store.ledger_import("main", &import).await.expect("q")).as_deref(),
        Some("K-A-1-200"),
        "the latest"
    );
    import.payment_transaction = Some("300".into());
    assert_eq!(store.ledger_import("main", &import).await.expect("q"), None);
    assert_eq!(
        store.ledger_import("other", &import).await.expect("q"),
        None
    );
}

#[tokio::test]
async fn an_operator_retry_restarts_the_give_up_window() {
    let dir = tempfile::tempdir().expect("dir");
    let store = open(&dir);
    store.ingest(ipn("k1", "A", true)).await.expect("ingest");
    let leased = store.lease_due("crm", 1_000, 10).await.expect("lease");
    assert_eq!(leased[0].retry_base, 1_000, "starts at creation");
    store
        .finish_attempt(
            leased[0].id,
            leased[0].attempt_id,
            report(Outcome::Retryable {
                reason: "502".into(),
                retry_after: None,
            }),
            Disposition::Dead,
            None,
            9_000,
        )
        .await
        .expect("finish");
    store
        .retry_jobs(
            review::RetrySelection::Ids(vec![leased[0].id]),
            review::Operator {
                user: "ops".into(),
                reason: "Konnektive is back".into(),
            },
            50_000,
        )
        .await
        .expect("retry");
    let again = store.lease_due("crm", 50_000, 10).await.expect("lease");
    assert_eq!(
        again[0].retry_base, 50_000,
        "the window starts again at the retry"
    );
    assert_eq!(
        again[0].created_at, 1_000,
        "creation is kept for reconciliation"
    );
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

/// An IPN whose one route is a job doing `action`.
fn ipn_doing(key: &str, order_id: &str, action: Action) -> NewIpn {
    let mut ipn = ipn(key, order_id, true);
    if let Some(NewRoute {
        decision: RouteDecision::Job { job, .. },
        ..
    }) = ipn.routes.first_mut()
    {
        *job.action = action;
    }
    ipn
}

fn import_ref() -> ImportRef {
    ImportRef {
        ds24_order_id: "A".into(),
        ds24_item: "1".into(),
        payment_transaction: Some("t-1".into()),
        reference_field: "custom1".into(),
        email: "jane@example.com".into(),
        campaign_id: 12,
        since: "2026-11-22".into(),
    }
}

/// Regression: recovery after a crash flagged only imports for reconciliation, so a refund
/// interrupted after Konnektive applied it was sent (and applied) a second time.
#[tokio::test]
async fn recovery_reconciles_every_interrupted_action_that_is_not_safe_to_repeat() {
    let dir = tempfile::tempdir().expect("dir");
    let store = open(&dir);
    let import = import_ref();
    let actions = [
        Action::ImportOrder {
            order: Box::new(order("DS24-A-1-t-1")),
            auto_approve: false,
        },
        Action::Refund {
            import: import.clone(),
            amount: Money::from_minor(2000),
            ds24_transaction_id: "t-2".into(),
            full: false,
        },
        Action::Chargeback {
            import: import.clone(),
            amount: Money::from_minor(9700),
            date: "2026-11-23".into(),
            ds24_transaction_id: "t-3".into(),
        },
        Action::CancelPurchase {
            import: import.clone(),
            reason: "cancelled".into(),
        },
        Action::CancelOrder {
            import,
            reason: "last paid day".into(),
        },
    ];
    // One order per job, so every job is due at once.
    for (i, action) in actions.iter().enumerate() {
        store
            .ingest(ipn_doing(
                &format!("k{i}"),
                &format!("O{i}"),
                action.clone(),
            ))
            .await
            .expect("ingest");
    }
    let leased = store.lease_due("crm", 1_000, 10).await.expect("lease");
    assert_eq!(leased.len(), actions.len());
    drop(store);

    let store = open(&dir);
    store
        .recover_interrupted(2_000, 2_500)
        .await
        .expect("recover");
    for job in &leased {
        let row = store.job(job.id).await.expect("job");
        assert_eq!(
            row.needs_reconcile,
            job.action.needs_reconcile(),
            "{} after a crash",
            row.action
        );
    }
    let refund = leased
        .iter()
        .find(|j| j.action.kind() == ActionKind::Refund)
        .expect("the refund job");
    let again = store.lease_due("crm", 2_500, 10).await.expect("lease");
    let refund_again = again.iter().find(|j| j.id == refund.id).expect("leased");
    assert_eq!(
        refund_again.kind,
        AttemptKind::Reconcile,
        "an interrupted refund is looked up before it is sent again"
    );
}

fn dead_letter_alert(job_id: Option<i64>, retry_command: &str) -> NewAlert {
    NewAlert {
        created_at: 1_100,
        kind: "dead_letter".into(),
        integration: Some("main".into()),
        target: Some("crm".into()),
        job_id,
        ds24_order_id: Some("A".into()),
        product: None,
        amount: None,
        buyer_email: Some("j***@example.com".into()),
        message: "No products exist in the order".into(),
        retry_command: Some(retry_command.into()),
        recipients: vec!["ops@example.com".into()],
    }
}

/// `(job state, open attempts, alerts with delivery rows, alerts)`, read by another
/// connection, as after a crash.
fn on_disk(dir: &tempfile::TempDir) -> (String, i64, i64, i64) {
    let c = rusqlite::Connection::open(dir.path().join("t.db")).expect("open");
    let count = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0)).expect(sql);
    let state = c
        .query_row("SELECT state FROM jobs ORDER BY id LIMIT 1", [], |r| {
            r.get::<_, String>(0)
        })
        .unwrap_or_default();
    (
        state,
        count("SELECT COUNT(*) FROM attempts WHERE outcome IS NULL"),
        count("SELECT COUNT(DISTINCT alert_id) FROM alert_deliveries"),
        count("SELECT COUNT(*) FROM alerts"),
    )
}

/// Makes every alert insert fail (a full disk at that very moment, say).
fn break_alert_inserts(dir: &tempfile::TempDir, broken: bool) {
    let c = rusqlite::Connection::open(dir.path().join("t.db")).expect("open");
    let sql = if broken {
        "CREATE TRIGGER no_alerts BEFORE INSERT ON alerts
         BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
    } else {
        "DROP TRIGGER no_alerts"
    };
    c.execute_batch(sql).expect("trigger");
}

/// Regression: a job was marked dead and committed before its alert was recorded, so a crash
/// in between left a dead job nobody was told about. Now the two share one transaction:
/// when the alert cannot be written, the job is not dead either (its attempt stays open, and
/// recovery after a crash would retry it).
#[tokio::test]
async fn a_dead_letter_and_its_alert_are_written_atomically() {
    let dir = tempfile::tempdir().expect("dir");
    let store = open(&dir);
    store.ingest(ipn("k1", "A", true)).await.expect("ingest");
    let leased = store.lease_due("crm", 1_000, 10).await.expect("lease");
    let job = &leased[0];
    let dead = |alert| {
        let store = store.clone();
        let (id, attempt) = (job.id, job.attempt_id);
        async move {
            store
                .finish_attempt(
                    id,
                    attempt,
                    report(Outcome::Permanent {
                        reason: "No products exist in the order".into(),
                    }),
                    Disposition::Dead,
                    Some(alert),
                    1_100,
                )
                .await
        }
    };

    break_alert_inserts(&dir, true);
    let failed = dead(dead_letter_alert(
        Some(job.id.0),
        "ipn-bridge queue retry 1",
    ))
    .await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(on_disk(&dir), ("in_flight".into(), 1, 0, 0), "neither");

    break_alert_inserts(&dir, false);
    dead(dead_letter_alert(
        Some(job.id.0),
        "ipn-bridge queue retry 1",
    ))
    .await
    .expect("finish");
    assert_eq!(on_disk(&dir), ("dead".into(), 0, 1, 1), "both");
}

/// The same for an IPN and the alert about a route that needs a person; the alert names the
/// IPN's id, which exists only inside the transaction.
#[tokio::test]
async fn an_ipn_and_its_needs_attention_alert_are_written_atomically() {
    let dir = tempfile::tempdir().expect("dir");
    let store = open(&dir);
    let mut unmapped = ipn("k1", "A", false);
    unmapped.alerts = vec![dead_letter_alert(
        None,
        &format!(
            "ipn-bridge replay {} --integration main",
            alerts::EVENT_ID_SLOT
        ),
    )];

    break_alert_inserts(&dir, true);
    assert!(store.ingest(unmapped.clone()).await.is_err());
    assert!(store.list_ipns(None).await.expect("ipns").is_empty());

    break_alert_inserts(&dir, false);
    let Ingested::Stored { ipn_id, .. } = store.ingest(unmapped.clone()).await.expect("ingest")
    else {
        panic!("stored");
    };
    let outbox = store.alert_outbox_due(i64::MAX, 10).await.expect("outbox");
    assert_eq!(outbox.len(), 1);
    assert_eq!(
        outbox[0].alerts[0].retry_command.as_deref(),
        Some(format!("ipn-bridge replay {ipn_id} --integration main").as_str())
    );
    // A repeat of the IPN writes neither again.
    assert_eq!(
        store.ingest(unmapped).await.expect("ingest"),
        Ingested::Duplicate { ipn_id }
    );
    assert_eq!(
        store.alert_outbox_due(i64::MAX, 10).await.expect("outbox")[0].unsent_total,
        1
    );
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
        "ALTER TABLE ledger DROP COLUMN ds24_parent_transaction_id;
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

#[tokio::test]
async fn how_a_payment_was_routed_is_found_by_either_of_its_ids() {
    let dir = tempfile::tempdir().expect("dir");
    let store = open(&dir);
    let skipped = NewIpn {
        parent_transaction_id: Some("P-3".into()),
        ..ipn("k3", "B", false)
    };
    store.ingest(skipped).await.expect("ingest");
    let found = |r: Result<Option<PaymentRoute>, StoreError>| {
        r.expect("query").map(|p| (p.skipped, p.reason))
    };
    let skip = Some((true, "language fr not in [de, en]".to_owned()));
    assert_eq!(
        found(store.payment_route("main", "B", "1", "t-k3").await),
        skip
    );
    assert_eq!(
        found(store.payment_route("main", "B", "1", "P-3").await),
        skip
    );
    assert_eq!(
        found(store.payment_route("main", "B", "2", "P-3").await),
        None,
        "other item"
    );
    assert_eq!(
        found(store.payment_route("other", "B", "1", "P-3").await),
        None
    );
    assert_eq!(
        found(store.payment_route("main", "C", "1", "P-3").await),
        None
    );

    store.ingest(ipn("k4", "B", true)).await.expect("ingest");
    let routed = store
        .payment_route("main", "B", "1", "t-k4")
        .await
        .expect("query")
        .expect("routed");
    assert!(!routed.skipped);
    assert!(routed.job_id.is_some());
}
