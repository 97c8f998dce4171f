//! The store's shared test suite: every test here runs once on SQLite (a file in a temporary
//! directory) and once on PostgreSQL (a fresh database on the test server, see
//! [`super::testing`]), so the two backends cannot drift. A test is an `async fn(TestDb)`
//! listed in [`on_both_backends!`]; it opens the store (again, to simulate a restart) with
//! [`TestDb::open`]. Without a PostgreSQL server the PostgreSQL half is skipped with a
//! message on stderr (and `.ci/run` says so loudly). Tests of what only one backend has
//! (SQLite's file safety and group commit, PostgreSQL's locks) live beside that backend.

mod review_suite;

use super::*;
use crate::domain::{Address, Buyer, Money, Order, OrderItem, Outcome, Receipt};

/// Where a test's store lives; [`TestDb::open`] opens (or reopens) it.
pub(crate) enum TestDb {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

impl TestDb {
    pub(crate) async fn open(&self) -> Store {
        match self {
            TestDb::Sqlite(dir) => Store::open(&dir.path().join("t.db")).expect("open SQLite"),
            TestDb::Postgres(url) => Store::connect_postgres(url)
                .await
                .expect("connect PostgreSQL"),
        }
    }

    /// Runs `sql` (statements without results) on a connection of its own, beside the store:
    /// to set up a state the store's API cannot make. `sql` must suit the backend.
    pub(crate) async fn execute(&self, sql: &str) {
        match self {
            TestDb::Sqlite(dir) => rusqlite::Connection::open(dir.path().join("t.db"))
                .expect("open")
                .execute_batch(sql)
                .expect(sql),
            TestDb::Postgres(url) => self::pg(url).await.batch_execute(sql).await.expect(sql),
        }
    }

    /// The first column of the first row of `sql` as an integer, read by a connection of its
    /// own (as another process would after a crash); SQL common to both backends.
    pub(crate) async fn count(&self, sql: &str) -> i64 {
        match self {
            TestDb::Sqlite(dir) => rusqlite::Connection::open(dir.path().join("t.db"))
                .expect("open")
                .query_row(sql, [], |r| r.get(0))
                .expect(sql),
            TestDb::Postgres(url) => self::pg(url)
                .await
                .query_one(sql, &[])
                .await
                .expect(sql)
                .get(0),
        }
    }

    /// Like [`TestDb::count`] for a text, `None` without a row.
    pub(crate) async fn text(&self, sql: &str) -> Option<String> {
        match self {
            TestDb::Sqlite(dir) => {
                use rusqlite::OptionalExtension;
                rusqlite::Connection::open(dir.path().join("t.db"))
                    .expect("open")
                    .query_row(sql, [], |r| r.get(0))
                    .optional()
                    .expect(sql)
            }
            TestDb::Postgres(url) => self::pg(url)
                .await
                .query_opt(sql, &[])
                .await
                .expect(sql)
                .map(|r| r.get(0)),
        }
    }

    /// Makes every insert into `alerts` fail (a full disk at that very moment, say), or
    /// stops doing so.
    pub(crate) async fn fail_alert_inserts(&self, broken: bool) {
        let sql = match (self, broken) {
            (TestDb::Sqlite(_), true) => {
                "CREATE TRIGGER no_alerts BEFORE INSERT ON alerts
                 BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
            }
            (TestDb::Sqlite(_), false) => "DROP TRIGGER no_alerts",
            (TestDb::Postgres(_), true) => {
                "CREATE FUNCTION no_alerts() RETURNS trigger LANGUAGE plpgsql
                     AS $$ BEGIN RAISE EXCEPTION 'disk I/O error'; END $$;
                 CREATE TRIGGER no_alerts BEFORE INSERT ON alerts
                     FOR EACH ROW EXECUTE FUNCTION no_alerts();"
            }
            (TestDb::Postgres(_), false) => {
                "DROP TRIGGER no_alerts ON alerts; DROP FUNCTION no_alerts();"
            }
        };
        self.execute(sql).await;
    }
}

/// A connection of its own to the test database at `url`.
async fn pg(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect PostgreSQL");
    tokio::spawn(connection);
    client
}

/// Declares each listed `async fn(TestDb)` as two tests, `on_sqlite::NAME` and
/// `on_postgres::NAME`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let dir = tempfile::tempdir().expect("tempdir");
                    super::$name(super::TestDb::Sqlite(dir)).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(url) = crate::store::testing::fresh_database().await else {
                        return;
                    };
                    super::$name(super::TestDb::Postgres(url)).await;
                }
            )*
        }
    };
}
// By path too, for the suites in submodules declared above the macro (`review_suite`).
pub(crate) use on_both_backends;

on_both_backends!(
    a_repeated_ipn_is_stored_once_and_creates_no_job,
    batched_results_fail_alone_and_a_lease_given_back_is_as_before,
    a_job_survives_a_crash_and_is_reconciled_before_it_is_sent_again,
    a_later_job_of_the_same_order_waits_for_the_earlier_one,
    after_close_operations_are_refused,
    jobs_behind_a_dead_job_are_held_with_its_reason,
    a_requeued_job_does_not_spend_its_attempt,
    the_ledger_finds_the_import_an_action_refers_to,
    an_operator_retry_restarts_the_give_up_window,
    recovery_reconciles_every_interrupted_action_that_is_not_safe_to_repeat,
    a_dead_letter_and_its_alert_are_written_atomically,
    an_ipn_and_its_needs_attention_alert_are_written_atomically,
    how_a_payment_was_routed_is_found_by_either_of_its_ids,
    the_ledger_keeps_both_ids_of_an_imported_payment,
    a_replay_creates_missing_jobs_reroutes_dead_ones_and_keeps_the_rest,
    a_replayed_dead_job_releases_the_jobs_held_behind_it,
    a_delivered_import_makes_the_waiting_refund_of_its_order_due_at_once,
    an_import_is_neither_held_nor_kept_waiting_behind_a_refund_of_its_order,
    the_next_due_time_is_the_earliest_pending_job_of_the_target,
    jobs_and_ipns_are_listed_by_filter_and_limit,
    a_stored_ipn_is_read_back_with_its_raw_body,
    a_failing_operation_is_counted_and_a_refusal_is_not,
    the_health_probe_commits,
    job_counts_equal_the_jobs_per_state_through_every_change,
);

pub(crate) fn order(reference: &str) -> Order {
    Order {
        reference: reference.into(),
        reference_field: "custom1".into(),
        campaign_id: 12,
        buyer: Buyer {
            email: "jane@example.com".into(),
            ..Buyer::default()
        },
        address: Address::default(),
        items: vec![OrderItem {
            product_id: 31,
            quantity: 1,
            unit_price: Money::from_minor(9700),
            ship_price: Money::ZERO,
        }],
        currency: "USD".into(),
        placed_on: "2026-11-22".into(),
        extra_fields: Vec::new(),
        address_fallback: Vec::new(),
    }
}

/// What the backends' upgrade tests of issue 13's index changes check after the upgrade:
/// `ipn("k1", "A", false)`, stored before it, is still found by transaction, by the audit's
/// lookup and as the payment a refund reverses.
pub(crate) async fn k1_found_by_transaction(store: &Store) {
    let wanted = vec![
        ("A".to_owned(), "t-k1".to_owned()),
        ("A".to_owned(), "t-k2".to_owned()),
    ];
    let found = store
        .received_transactions("ds24", wanted)
        .await
        .expect("audit lookup");
    assert_eq!(
        found,
        std::collections::HashSet::from([("A".to_owned(), "t-k1".to_owned())])
    );
    let route = store
        .payment_route("main", "A", "1", "t-k1")
        .await
        .expect("payment lookup")
        .expect("the payment's route");
    assert!(route.skipped, "{route:?}");
}

pub(crate) fn ipn(key: &str, order_id: &str, with_job: bool) -> NewIpn {
    let routes = if with_job {
        vec![NewRoute {
            integration: "main".into(),
            decision: RouteDecision::Job {
                job: NewJob {
                    target: "crm".into(),
                    action: Box::new(Action::ImportOrder {
                        order: Box::new(order(&format!("DS24-{key}"))),
                        auto_approve: false,
                    }),
                    order_key: order_id.into(),
                    not_before: 1_000,
                },
                reason: "import".into(),
            },
        }]
    } else {
        vec![NewRoute {
            integration: "main".into(),
            decision: RouteDecision::Skip {
                reason: "language fr not in [de, en]".into(),
            },
        }]
    };
    NewIpn {
        source: "ds24".into(),
        business_key: key.into(),
        event: "on_payment".into(),
        order_id: Some(order_id.into()),
        order_item_id: Some("1".into()),
        product_id: Some("412346".into()),
        transaction_id: Some(format!("t-{key}")),
        buyer_email: Some("jane@example.com".into()),
        amount: Some("97.00".into()),
        currency: Some("USD".into()),
        received_at: 1_000,
        raw_body: b"event=on_payment".to_vec(),
        routes,
        alerts: Vec::new(),
        parent_transaction_id: None,
    }
}

async fn a_repeated_ipn_is_stored_once_and_creates_no_job(db: TestDb) {
    let store = db.open().await;
    let first = store.ingest(ipn("k1", "A", true)).await.expect("ingest");
    let Ingested::Stored { ipn_id, jobs } = first else {
        panic!("stored expected");
    };
    assert_eq!(jobs.len(), 1);
    let again = store.ingest(ipn("k1", "A", true)).await.expect("ingest");
    assert_eq!(again, Ingested::Duplicate { ipn_id });
    assert_eq!(
        store
            .list_jobs(JobFilter::default())
            .await
            .expect("jobs")
            .len(),
        1
    );
    let skipped = store.ingest(ipn("k2", "B", false)).await.expect("ingest");
    let Ingested::Stored { ipn_id, jobs } = skipped else {
        panic!("stored expected");
    };
    assert!(jobs.is_empty());
    assert_eq!(
        store.routes_of_ipn(ipn_id).await.expect("routes"),
        vec![(
            "main".to_owned(),
            "skipped".to_owned(),
            "language fr not in [de, en]".to_owned()
        )]
    );
}

pub(crate) fn report(outcome: Outcome) -> AttemptReport {
    AttemptReport {
        outcome,
        endpoint: "order/import".into(),
        http_status: Some(200),
        request: "loginId=x&password=%5Bredacted%5D".into(),
        response: "{}".into(),
        maybe_applied: false,
    }
}

/// The result of a delivered attempt of `job` at `now`, as the dispatcher's recorder hands it
/// to [`Store::finish_attempts`].
pub(crate) fn delivered(job: &LeasedJob, now: i64) -> FinishedAttempt {
    let receipt = Receipt {
        order_id: Some(format!("K{}", job.id)),
        ..Receipt::default()
    };
    FinishedAttempt {
        job: job.id,
        attempt_id: job.attempt_id,
        report: report(Outcome::Delivered(receipt.clone())),
        disposition: Disposition::Delivered(receipt),
        alert: None,
        now,
    }
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

fn refund() -> Action {
    Action::Refund {
        import: import_ref(),
        amount: Money::from_minor(2000),
        ds24_transaction_id: "t-2".into(),
        full: false,
    }
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

/// `(state of the first job, open attempts, alerts with delivery rows, alerts)`, read by
/// another connection, as after a crash.
async fn on_disk(db: &TestDb) -> (String, i64, i64, i64) {
    (
        db.text("SELECT state FROM jobs ORDER BY id LIMIT 1")
            .await
            .unwrap_or_default(),
        db.count("SELECT COUNT(*) FROM attempts WHERE outcome IS NULL")
            .await,
        db.count("SELECT COUNT(DISTINCT alert_id) FROM alert_deliveries")
            .await,
        db.count("SELECT COUNT(*) FROM alerts").await,
    )
}

/// Finishes a leased job with `disposition` at `now`.
async fn finish(
    store: &Store,
    job: &LeasedJob,
    outcome: Outcome,
    disposition: Disposition,
    now: i64,
) {
    store
        .finish_attempt(
            job.id,
            job.attempt_id,
            report(outcome),
            disposition,
            None,
            now,
        )
        .await
        .expect("finish");
}

fn permanent() -> Outcome {
    Outcome::Permanent {
        reason: "No products exist in the order".into(),
    }
}

/// Leases the one due job of `crm` at `now` and delivers it as CRM order `crm_order`.
async fn deliver_next(store: &Store, now: i64, crm_order: &str) -> LeasedJob {
    let mut leased = store.lease_due("crm", now, 10).await.expect("lease");
    assert_eq!(leased.len(), 1, "one job due");
    let job = leased.remove(0);
    let receipt = Receipt {
        order_id: Some(crm_order.into()),
        ..Receipt::default()
    };
    finish(
        store,
        &job,
        Outcome::Delivered(receipt.clone()),
        Disposition::Delivered(receipt),
        now + 100,
    )
    .await;
    job
}

/// A job route of `integration` importing an order with `reference`.
fn import_route(integration: &str, reference: &str) -> NewRoute {
    NewRoute {
        integration: integration.into(),
        decision: RouteDecision::Job {
            job: NewJob {
                target: "crm".into(),
                action: Box::new(Action::ImportOrder {
                    order: Box::new(order(reference)),
                    auto_approve: false,
                }),
                order_key: "A".into(),
                not_before: 1_000,
            },
            reason: "import".into(),
        },
    }
}

async fn a_job_survives_a_crash_and_is_reconciled_before_it_is_sent_again(db: TestDb) {
    let store = db.open().await;
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

    // "Crash": a new process opens the same database.
    let store = db.open().await;
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

async fn a_later_job_of_the_same_order_waits_for_the_earlier_one(db: TestDb) {
    let store = db.open().await;
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

async fn after_close_operations_are_refused(db: TestDb) {
    let store = db.open().await;
    let other = store.clone();
    store.ingest(ipn("k1", "A", false)).await.expect("ingest");
    store.close().await;
    assert_eq!(
        other.ingest(ipn("k2", "B", false)).await,
        Err(StoreError::Closed)
    );
}

async fn jobs_behind_a_dead_job_are_held_with_its_reason(db: TestDb) {
    let store = db.open().await;
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

async fn a_requeued_job_does_not_spend_its_attempt(db: TestDb) {
    let store = db.open().await;
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

async fn the_ledger_finds_the_import_an_action_refers_to(db: TestDb) {
    let store = db.open().await;
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

async fn an_operator_retry_restarts_the_give_up_window(db: TestDb) {
    let store = db.open().await;
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

/// Regression: recovery after a crash flagged only imports for reconciliation, so a refund
/// interrupted after Konnektive applied it was sent (and applied) a second time.
async fn recovery_reconciles_every_interrupted_action_that_is_not_safe_to_repeat(db: TestDb) {
    let store = db.open().await;
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

    let store = db.open().await;
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

/// Regression: a job was marked dead and committed before its alert was recorded, so a crash
/// in between left a dead job nobody was told about. Now the two share one transaction:
/// when the alert cannot be written, the job is not dead either (its attempt stays open, and
/// recovery after a crash would retry it).
async fn a_dead_letter_and_its_alert_are_written_atomically(db: TestDb) {
    let store = db.open().await;
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

    db.fail_alert_inserts(true).await;
    let failed = dead(dead_letter_alert(
        Some(job.id.0),
        "ipn-bridge queue retry 1",
    ))
    .await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(on_disk(&db).await, ("in_flight".into(), 1, 0, 0), "neither");

    db.fail_alert_inserts(false).await;
    dead(dead_letter_alert(
        Some(job.id.0),
        "ipn-bridge queue retry 1",
    ))
    .await
    .expect("finish");
    assert_eq!(on_disk(&db).await, ("dead".into(), 0, 1, 1), "both");
}

/// The same for an IPN and the alert about a route that needs a person; the alert names the
/// IPN's id, which exists only inside the transaction.
async fn an_ipn_and_its_needs_attention_alert_are_written_atomically(db: TestDb) {
    let store = db.open().await;
    let mut unmapped = ipn("k1", "A", false);
    unmapped.alerts = vec![dead_letter_alert(
        None,
        &format!(
            "ipn-bridge replay {} --integration main",
            alerts::EVENT_ID_SLOT
        ),
    )];

    db.fail_alert_inserts(true).await;
    assert!(store.ingest(unmapped.clone()).await.is_err());
    assert!(store.list_ipns(None).await.expect("ipns").is_empty());

    db.fail_alert_inserts(false).await;
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

async fn how_a_payment_was_routed_is_found_by_either_of_its_ids(db: TestDb) {
    let store = db.open().await;
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

async fn the_ledger_keeps_both_ids_of_an_imported_payment(db: TestDb) {
    let store = db.open().await;
    store
        .ingest(ipn("A-1-100", "A", true))
        .await
        .expect("ingest");
    deliver_next(&store, 1_000, "K-OLD").await;
    // A new import of the same order item, whose IPN names its parent payment.
    let new = NewIpn {
        parent_transaction_id: Some("199".into()),
        ..ipn("A-1-200", "A", true)
    };
    store.ingest(new).await.expect("ingest");
    deliver_next(&store, 1_000, "K-NEW").await;

    let rows = store.ledger_imports("main", "A").await.expect("ledger");
    type Ids<'a> = (
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
    );
    let ids: Vec<Ids> = rows
        .iter()
        .map(|r| {
            (
                r.target_order_id.as_deref(),
                r.ds24_item.as_deref(),
                r.ds24_transaction_id.as_deref(),
                r.ds24_parent_transaction_id.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        ids,
        [
            (Some("K-NEW"), Some("1"), Some("t-A-1-200"), Some("199")),
            (Some("K-OLD"), Some("1"), Some("t-A-1-100"), None),
        ],
        "newest first"
    );
    let all = store.ledger().await.expect("ledger");
    assert_eq!(
        all.iter().map(|r| r.reference.as_str()).collect::<Vec<_>>(),
        ["DS24-A-1-100", "DS24-A-1-200"],
        "oldest first"
    );
    assert!(
        store
            .ledger_imports("other", "A")
            .await
            .expect("q")
            .is_empty()
    );
}

async fn a_replay_creates_missing_jobs_reroutes_dead_ones_and_keeps_the_rest(db: TestDb) {
    let store = db.open().await;
    let Ingested::Stored { ipn_id, jobs } =
        store.ingest(ipn("k1", "A", true)).await.expect("ingest")
    else {
        panic!("stored");
    };
    let dead = jobs[0];
    let leased = store.lease_due("crm", 1_000, 10).await.expect("lease");
    finish(&store, &leased[0], permanent(), Disposition::Dead, 1_100).await;

    let routes = vec![
        import_route("main", "DS24-k1-fixed"),
        import_route("second", "DS24-k1-second"),
        NewRoute {
            integration: "third".into(),
            decision: RouteDecision::Skip {
                reason: "product not mapped".into(),
            },
        },
    ];
    let replayed = store
        .add_routes(ipn_id, routes.clone(), "ops".into(), 5_000)
        .await
        .expect("replay");
    let jobs = store.jobs_of_ipn(ipn_id).await.expect("jobs");
    assert_eq!(jobs.len(), 2);
    assert_eq!(
        replayed,
        vec![
            Rerouted::Rerouted {
                job: dead,
                was: "dead".into()
            },
            Rerouted::Created(JobId(jobs[1].id)),
            Rerouted::Skipped,
        ]
    );
    let rerouted = &jobs[0];
    assert_eq!(
        (
            rerouted.id,
            rerouted.state.as_str(),
            rerouted.next_attempt_at,
            rerouted.last_error.as_deref()
        ),
        (dead.0, "pending", 5_000, None)
    );
    assert_eq!(jobs[1].integration, "second");
    let leased = store.lease_due("crm", 5_000, 10).await.expect("lease");
    let again = leased
        .iter()
        .find(|j| j.id == dead)
        .expect("re-routed job due");
    assert_eq!(
        again
            .action
            .reconcile_reference()
            .map(|o| o.reference.as_str()),
        Some("DS24-k1-fixed"),
        "today's action"
    );
    assert_eq!((again.attempt_no, again.retry_base), (2, 5_000));
    assert_eq!(leased.len(), 2);

    let routed = store.routes_of_ipn(ipn_id).await.expect("routes");
    assert_eq!(routed.len(), 4);
    assert_eq!(
        routed[1],
        (
            "main".to_owned(),
            "job".to_owned(),
            format!("replay: re-routed dead job {dead}; import")
        )
    );
    assert_eq!(routed[2].2, "replay: import");
    assert_eq!(
        routed[3],
        (
            "third".to_owned(),
            "skipped".to_owned(),
            "replay: product not mapped".to_owned()
        )
    );

    // A second replay keeps the jobs it finds.
    let kept = store
        .add_routes(ipn_id, routes[..2].to_vec(), "ops".into(), 6_000)
        .await
        .expect("replay");
    assert_eq!(
        kept,
        vec![
            Rerouted::Existing {
                job: dead,
                state: "in_flight".into()
            },
            Rerouted::Existing {
                job: JobId(jobs[1].id),
                state: "in_flight".into()
            },
        ]
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM operator_actions WHERE command = 'replay'")
            .await,
        2
    );
    assert_eq!(
        db.text("SELECT \"user\" FROM operator_actions ORDER BY id LIMIT 1")
            .await
            .as_deref(),
        Some("ops")
    );
}

async fn a_replayed_dead_job_releases_the_jobs_held_behind_it(db: TestDb) {
    let store = db.open().await;
    let Ingested::Stored { ipn_id, .. } = store.ingest(ipn("k1", "A", true)).await.expect("ingest")
    else {
        panic!("stored");
    };
    store.ingest(ipn("k2", "A", true)).await.expect("ingest");
    let leased = store.lease_due("crm", 1_000, 10).await.expect("lease");
    finish(&store, &leased[0], permanent(), Disposition::Dead, 1_100).await;
    store.ingest(ipn("k3", "A", true)).await.expect("ingest");
    let states = |jobs: Vec<JobRow>| jobs.into_iter().map(|j| j.state).collect::<Vec<_>>();
    assert_eq!(
        states(store.list_jobs(JobFilter::default()).await.expect("jobs")),
        ["dead", "held", "held"]
    );
    store
        .add_routes(
            ipn_id,
            vec![import_route("main", "DS24-k1")],
            "ops".into(),
            2_000,
        )
        .await
        .expect("replay");
    let jobs = store.list_jobs(JobFilter::default()).await.expect("jobs");
    assert!(jobs.iter().all(|j| j.last_error.is_none()), "{jobs:?}");
    assert_eq!(states(jobs), ["pending", "pending", "pending"]);
    let leased = store.lease_due("crm", 2_000, 10).await.expect("lease");
    assert_eq!(
        leased.iter().map(|j| j.id).collect::<Vec<_>>(),
        [leased[0].id],
        "still one at a time"
    );
    assert_eq!(leased[0].ipn_id, ipn_id);
}

async fn a_delivered_import_makes_the_waiting_refund_of_its_order_due_at_once(db: TestDb) {
    let store = db.open().await;
    // The refund arrives before its payment.
    store
        .ingest(ipn_doing("r", "A", refund()))
        .await
        .expect("ingest");
    let early = store.lease_due("crm", 1_000, 10).await.expect("lease");
    assert_eq!(early.len(), 1);
    finish(
        &store,
        &early[0],
        Outcome::Retryable {
            reason: "the import is not delivered yet".into(),
            retry_after: None,
        },
        Disposition::Retry {
            at: 60_000,
            reconcile: false,
        },
        1_050,
    )
    .await;
    store.ingest(ipn("i", "A", true)).await.expect("ingest");
    let import = deliver_next(&store, 1_100, "K-1").await;
    assert_ne!(import.id, early[0].id);
    let refund = store.job(early[0].id).await.expect("job");
    assert_eq!(
        (refund.state.as_str(), refund.next_attempt_at),
        ("pending", 1_200),
        "due when the import was delivered, not at its back-off"
    );
}

async fn an_import_is_neither_held_nor_kept_waiting_behind_a_refund_of_its_order(db: TestDb) {
    let store = db.open().await;
    store
        .ingest(ipn_doing("r1", "A", refund()))
        .await
        .expect("ingest");
    store
        .ingest(ipn_doing("r2", "A", refund()))
        .await
        .expect("ingest");
    store.ingest(ipn("i1", "A", true)).await.expect("ingest");
    // The first refund is due; the import does not wait for it, the second refund does.
    let leased = store.lease_due("crm", 1_000, 10).await.expect("lease");
    let actions: Vec<&str> = leased
        .iter()
        .map(|j| j.action.kind().config_name())
        .collect();
    assert_eq!(actions, ["refund", "import_order"]);
    finish(&store, &leased[0], permanent(), Disposition::Dead, 1_100).await;
    store.ingest(ipn("i2", "A", true)).await.expect("ingest");
    let states: Vec<(String, String)> = store
        .list_jobs(JobFilter::default())
        .await
        .expect("jobs")
        .into_iter()
        .map(|j| (j.action, j.state))
        .collect();
    let pair = |a: &str, s: &str| (a.to_owned(), s.to_owned());
    assert_eq!(
        states,
        [
            pair("refund", "dead"),
            pair("refund", "held"),
            pair("import_order", "in_flight"),
            pair("import_order", "pending"),
        ],
        "imports are not held behind a dead refund"
    );
}

async fn the_next_due_time_is_the_earliest_pending_job_of_the_target(db: TestDb) {
    let store = db.open().await;
    assert_eq!(store.next_due_at("crm").await.expect("next"), None);
    let mut later = ipn("k2", "B", true);
    if let Some(NewRoute {
        decision: RouteDecision::Job { job, .. },
        ..
    }) = later.routes.first_mut()
    {
        job.not_before = 3_000;
    }
    store.ingest(later).await.expect("ingest");
    store.ingest(ipn("k1", "A", true)).await.expect("ingest");
    assert_eq!(store.next_due_at("crm").await.expect("next"), Some(1_000));
    assert_eq!(store.next_due_at("other").await.expect("next"), None);
    assert_eq!(
        store
            .lease_due("crm", 1_000, 10)
            .await
            .expect("lease")
            .len(),
        1
    );
    assert_eq!(
        store.next_due_at("crm").await.expect("next"),
        Some(3_000),
        "a leased job is not pending"
    );
}

async fn jobs_and_ipns_are_listed_by_filter_and_limit(db: TestDb) {
    let store = db.open().await;
    for (key, order) in [("k1", "A"), ("k2", "B"), ("k3", "C")] {
        store.ingest(ipn(key, order, true)).await.expect("ingest");
    }
    store.ingest(ipn("k4", "D", false)).await.expect("ingest");
    store.lease_due("crm", 1_000, 1).await.expect("lease");
    let list = |state, integration: Option<&str>, limit| {
        let store = store.clone();
        let filter = JobFilter {
            state,
            integration: integration.map(str::to_owned),
            limit,
        };
        async move {
            store
                .list_jobs(filter)
                .await
                .expect("jobs")
                .into_iter()
                .map(|j| (j.id, j.state))
                .collect::<Vec<_>>()
        }
    };
    let all = list(None, None, None).await;
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].1, "in_flight");
    assert_eq!(list(Some(JobState::Pending), None, None).await, all[1..]);
    assert_eq!(list(None, Some("main"), Some(1)).await, all[..1]);
    assert!(list(None, Some("other"), None).await.is_empty());
    assert_eq!(
        store.job_counts().await.expect("counts"),
        BTreeMap::from([("in_flight".to_owned(), 1), ("pending".to_owned(), 2)])
    );
    let ipns = store.list_ipns(Some(2)).await.expect("ipns");
    assert_eq!(
        ipns.iter()
            .map(|i| i.transaction_id.as_deref())
            .collect::<Vec<_>>(),
        [Some("t-k1"), Some("t-k2")],
        "oldest first"
    );
    assert_eq!(
        (
            ipns[0].source.as_str(),
            ipns[0].event.as_str(),
            ipns[0].order_id.as_deref()
        ),
        ("ds24", "on_payment", Some("A"))
    );
    assert_eq!(ipns[0].product_id.as_deref(), Some("412346"));
    assert_eq!(ipns[0].received_at, 1_000);
    assert_eq!(store.list_ipns(None).await.expect("ipns").len(), 4);
}

async fn a_stored_ipn_is_read_back_with_its_raw_body(db: TestDb) {
    let store = db.open().await;
    let raw = b"event=on_payment&name=J\xf6rg\x00".to_vec();
    let new = NewIpn {
        raw_body: raw.clone(),
        received_at: 1_234,
        ..ipn("k1", "A", false)
    };
    let Ingested::Stored { ipn_id, .. } = store.ingest(new).await.expect("ingest") else {
        panic!("stored");
    };
    assert_eq!(
        store.ipn(ipn_id).await.expect("ipn"),
        StoredIpn {
            id: ipn_id,
            source: "ds24".into(),
            event: "on_payment".into(),
            received_at: 1_234,
            raw_body: raw,
        }
    );
    assert_eq!(
        store.ipn(EventId(ipn_id.0 + 100)).await,
        Err(StoreError::NotFound(format!("event {}", ipn_id.0 + 100)))
    );
    assert_eq!(
        store.job(JobId(77)).await,
        Err(StoreError::NotFound("job 77".into()))
    );
    assert!(store.jobs_of_ipn(ipn_id).await.expect("jobs").is_empty());
}

async fn a_failing_operation_is_counted_and_a_refusal_is_not(db: TestDb) {
    let store = db.open().await;
    store.ingest(ipn("k1", "A", true)).await.expect("ingest");
    assert_eq!(store.error_count(), 0);
    assert!(matches!(
        store.job(JobId(77)).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.error_count(), 0, "a refusal is the caller's");
    db.fail_alert_inserts(true).await;
    let mut alerting = ipn("k2", "B", false);
    alerting.alerts = vec![dead_letter_alert(None, "ipn-bridge replay 1")];
    assert!(store.ingest(alerting).await.is_err());
    assert_eq!(store.error_count(), 1, "a failure of the store is counted");
    let (commits, ops) = store.commit_stats();
    assert!(
        commits >= 1 && ops >= 1,
        "{commits} commits, {ops} operations"
    );
}

async fn the_health_probe_commits(db: TestDb) {
    let store = db.open().await;
    store.probe_writable().await.expect("probe");
    store.ingest(ipn("k1", "A", false)).await.expect("ingest");
    store.probe_writable().await.expect("probe");
}

/// The dispatcher's batched calls (issue 13): results handed over together are recorded
/// each on its own (a failing one changes nothing and fails alone), and a lease given back
/// unused leaves the job as it was, without an attempt.
async fn batched_results_fail_alone_and_a_lease_given_back_is_as_before(db: TestDb) {
    let store = db.open().await;
    for i in 0..4 {
        store
            .ingest(ipn(&format!("k{i}"), &format!("O{i}"), true))
            .await
            .expect("ingest");
    }
    let leased = store.lease_due("crm", 1_000, 4).await.expect("lease");
    assert_eq!(leased.len(), 4);
    let mut bad = delivered(&leased[1], 1_100);
    bad.job = JobId(404_404);
    let results = store
        .finish_attempts(vec![
            delivered(&leased[0], 1_100),
            bad,
            delivered(&leased[2], 1_100),
        ])
        .await
        .expect("one call");
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert!(results[1].is_err(), "{results:?}");
    assert_eq!(
        store.attempts(leased[1].id).await.expect("attempts")[0].outcome,
        None,
        "the failed item changed nothing"
    );
    assert_eq!(store.ledger().await.expect("ledger").len(), 2);
    // Give back jobs 1 (never sent), 3 (never sent) and 0 (delivered meanwhile).
    store
        .release_leases(
            [&leased[1], &leased[3], &leased[0]]
                .iter()
                .map(|j| (j.id, j.attempt_id))
                .collect(),
            1_200,
        )
        .await
        .expect("release");
    let jobs = store.list_jobs(Default::default()).await.expect("jobs");
    let shape: Vec<(&str, u32)> = jobs
        .iter()
        .map(|j| (j.state.as_str(), j.attempts))
        .collect();
    assert_eq!(
        shape,
        [
            ("delivered", 1),
            ("pending", 0),
            ("delivered", 1),
            ("pending", 0)
        ]
    );
    assert!(
        store
            .attempts(leased[3].id)
            .await
            .expect("attempts")
            .is_empty()
    );
    assert_eq!(
        store.job_counts().await.expect("counts"),
        BTreeMap::from([("delivered".to_owned(), 2), ("pending".to_owned(), 2)])
    );
    let again = store.lease_due("crm", 1_300, 4).await.expect("lease again");
    assert_eq!(
        again.iter().map(|j| j.attempt_no).collect::<Vec<_>>(),
        [1, 1],
        "leased again as their first attempt"
    );
}

/// Jobs per state counted from the rows themselves (a listing of every job).
async fn jobs_per_state(store: &Store) -> BTreeMap<String, u64> {
    let mut counted = BTreeMap::new();
    for job in store.list_jobs(JobFilter::default()).await.expect("jobs") {
        *counted.entry(job.state).or_insert(0) += 1;
    }
    counted
}

async fn assert_counts_match(store: &Store, after: &str) {
    assert_eq!(
        store.job_counts().await.expect("counts"),
        jobs_per_state(store).await,
        "job counts after {after}"
    );
}

/// Issue 13: the counts behind `/metrics` and `/healthz` are kept as jobs change (triggers on
/// both backends); they must stay equal to a count of the rows through every change the
/// store makes, and leave out a state whose jobs have all left it, as a count of the rows
/// does.
async fn job_counts_equal_the_jobs_per_state_through_every_change(db: TestDb) {
    use crate::store::review::{Operator, RetrySelection};
    let store = db.open().await;
    let mut ipns = Vec::new();
    for (key, order) in [
        ("k1", "A"),
        ("k2", "A"),
        ("k3", "B"),
        ("k4", "C"),
        ("k5", "D"),
    ] {
        let Ingested::Stored { ipn_id, .. } =
            store.ingest(ipn(key, order, true)).await.expect("ingest")
        else {
            panic!("stored");
        };
        ipns.push(ipn_id);
    }
    store.ingest(ipn("k6", "E", false)).await.expect("no job");
    assert_counts_match(&store, "ingests").await;
    assert_eq!(
        store.job_counts().await.expect("counts"),
        BTreeMap::from([("pending".to_owned(), 5)])
    );

    let leased = store.lease_due("crm", 1_000, 10).await.expect("lease");
    let of = |ipn_id: EventId| {
        leased
            .iter()
            .find(|j| j.ipn_id == ipn_id)
            .expect("leased")
            .clone()
    };
    let (a, b, c, d) = (of(ipns[0]), of(ipns[2]), of(ipns[3]), of(ipns[4]));
    assert_eq!(leased.len(), 4, "one job of each order");
    assert_counts_match(&store, "a lease").await;

    // Dead (the job behind it in its order is held), delivered, retry, a lease given back.
    finish(&store, &a, permanent(), Disposition::Dead, 1_100).await;
    for result in store
        .finish_attempts(vec![delivered(&b, 1_100)])
        .await
        .expect("batch")
    {
        result.expect("delivered");
    }
    finish(
        &store,
        &c,
        Outcome::Retryable {
            reason: "busy".into(),
            retry_after: None,
        },
        Disposition::Retry {
            at: 5_000,
            reconcile: false,
        },
        1_100,
    )
    .await;
    store
        .release_leases(vec![(d.id, d.attempt_id)], 1_100)
        .await
        .expect("release");
    assert_counts_match(&store, "finishes").await;
    assert_eq!(
        store.job_counts().await.expect("counts"),
        BTreeMap::from([
            ("dead".to_owned(), 1),
            ("delivered".to_owned(), 1),
            ("held".to_owned(), 1),
            ("pending".to_owned(), 2),
        ]),
        "in_flight, now without a job, is left out"
    );

    // A replay of the dead job's IPN: it is pending again, the held one released.
    store
        .add_routes(
            ipns[0],
            vec![import_route("main", "DS24-k1")],
            "ops".into(),
            2_000,
        )
        .await
        .expect("replay");
    assert_counts_match(&store, "a replay").await;

    // `queue drop`, then a job dies again and `queue retry` takes every dead job.
    let operator = Operator {
        user: "alice".into(),
        reason: "counts".into(),
    };
    store
        .drop_jobs(vec![d.id], operator.clone(), 2_100)
        .await
        .expect("drop");
    assert_counts_match(&store, "queue drop").await;
    let again = store.lease_due("crm", 6_000, 10).await.expect("lease");
    assert!(!again.is_empty());
    finish(&store, &again[0], permanent(), Disposition::Dead, 6_100).await;
    assert_counts_match(&store, "a second death").await;
    store
        .retry_jobs(RetrySelection::Dead { integration: None }, operator, 6_200)
        .await
        .expect("retry");
    assert_counts_match(&store, "queue retry").await;

    // A stop with jobs in flight, and the recovery at the next start.
    store.lease_due("crm", 7_000, 10).await.expect("lease");
    store.close().await;
    let store = db.open().await;
    store
        .recover_interrupted(8_000, 8_000)
        .await
        .expect("recover");
    assert_counts_match(&store, "a restart's recovery").await;
    let counts = store.job_counts().await.expect("counts");
    assert!(
        !counts.contains_key("dead") && !counts.contains_key("in_flight"),
        "states without a job are left out: {counts:?}"
    );
    assert_eq!(counts.values().sum::<u64>(), 5);
}
