//! The shared suite for the review queries, operator commands, the alert outbox and the
//! audit's store calls, on both backends (see the parent module). It pins at the store what
//! `tests/queue_cli.rs` and `tests/alerts.rs` pin through the binary on SQLite: the retry and
//! drop rules and their refusals, held jobs released, the audit trail, what a purge keeps,
//! the outbox per recipient, the digest window, the backlog, the audit's once-only alert.

use super::*;
use crate::domain::{Outcome, Receipt};
use crate::store::alerts::{NewAlert, OutboxAlert, OutboxBacklog};
use crate::store::review::{Operator, PurgeCount, QueueChange, RetrySelection, ReviewFilter};

on_both_backends!(
    review_jobs_are_newest_first_and_filtered_by_state_integration_since_and_limit,
    job_detail_has_the_ipn_attempts_ledger_and_audit_trail,
    events_are_listed_newest_first_with_routes_and_job_states,
    retry_makes_a_dead_job_pending_releases_the_held_one_and_is_audited,
    retry_dead_takes_every_dead_job_of_the_integration,
    a_delivered_job_is_never_retried_nor_dropped_and_nothing_changes,
    unknown_ids_are_named_and_nothing_changes,
    drop_is_final_records_the_reason_and_releases_held_jobs,
    a_job_being_delivered_is_refused_by_retry_and_drop,
    retry_of_several_jobs_of_one_order_goes_in_ascending_order,
    a_dead_import_is_retried_even_behind_an_earlier_dead_refund,
    purge_clears_only_old_final_history_in_bounded_batches_and_keeps_every_key,
    refusals_of_operator_commands_are_not_store_errors,
    an_alert_is_owed_to_each_recipient_once_and_marked_sent_per_recipient,
    an_alert_without_a_recipient_is_refused_and_writes_nothing,
    the_digest_window_holds_a_recently_mailed_recipient_and_the_limit_keeps_the_oldest,
    a_failed_mailing_keeps_the_alerts_unsent_and_counts_attempts_per_recipient,
    the_backlog_counts_unsent_deliveries_and_sees_a_pending_kind,
    an_audit_alert_is_recorded_once_per_transaction_of_a_source,
    received_transactions_are_the_wanted_pairs_stored_for_the_source,
);

// ---------------------------------------------------------------- direct database access

/// The one integer `sql` selects (a `COUNT(*)` or a `BIGINT` column), read through a
/// connection of its own.
async fn scalar(db: &TestDb, sql: &str) -> i64 {
    match db {
        TestDb::Sqlite(dir) => {
            let c = rusqlite::Connection::open(dir.path().join("t.db")).expect("open SQLite");
            c.query_row(sql, [], |r| r.get(0)).expect(sql)
        }
        TestDb::Postgres(url) => pg_client(url)
            .await
            .query_one(sql, &[])
            .await
            .expect(sql)
            .get(0),
    }
}

async fn pg_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect PostgreSQL");
    tokio::spawn(connection);
    client
}

// ---------------------------------------------------------------- the queue of the tests

fn alice(reason: &str) -> Operator {
    Operator {
        user: "alice".into(),
        reason: reason.into(),
    }
}

fn report(outcome: Outcome) -> AttemptReport {
    AttemptReport {
        outcome,
        endpoint: "order/import".into(),
        http_status: Some(200),
        request: "loginId=x&password=[redacted]".into(),
        response: r#"{"result":"SUCCESS"}"#.into(),
        maybe_applied: false,
    }
}

fn receipt() -> Receipt {
    Receipt {
        order_id: Some("K-1001".into()),
        customer_id: Some("C-77".into()),
        purchase_ids: vec!["P-5".into()],
        transaction_ids: vec!["TX-9".into()],
    }
}

/// IPN `k{n}` of Digistore24 order `order_id`, received at `n` seconds.
fn numbered(n: i64, order_id: &str, with_job: bool) -> NewIpn {
    let mut ipn = ipn(&format!("k{n}"), order_id, with_job);
    ipn.received_at = n * 1_000;
    ipn.raw_body = format!("event=on_payment&order_id={order_id}&n={n}").into_bytes();
    ipn
}

/// What [`queue`] built: the ids of its jobs and events.
struct Queue {
    store: Store,
    /// Delivered at 2 500 (ledger entry K-1001), event 1.
    delivered: i64,
    /// Dead at 2 500 (permanent refusal), order B2, event 2.
    dead: i64,
    /// Pending again at 30 000 after a retryable failure, event 3.
    pending: i64,
    /// Held behind `dead` (same order B2), event 4.
    held: i64,
    /// Pending, never tried, due at 1 000 000, event 5.
    fresh: i64,
    /// An IPN routed to nothing, event 6.
    skipped_event: i64,
}

/// The queue of `tests/queue_cli.rs`, built with the store's own operations.
async fn queue(db: &TestDb) -> Queue {
    let store = db.open().await;
    let mut jobs = Vec::new();
    for (n, order) in [(1, "A1"), (2, "B2"), (3, "C3"), (4, "B2"), (5, "E5")] {
        let mut ipn = numbered(n, order, true);
        if let Some(NewRoute {
            decision: RouteDecision::Job { job, .. },
            ..
        }) = ipn.routes.first_mut()
            && n == 5
        {
            job.not_before = 1_000_000;
        }
        let Ingested::Stored { jobs: created, .. } = store.ingest(ipn).await.expect("ingest")
        else {
            panic!("stored expected");
        };
        jobs.push(created[0].0);
    }
    let Ingested::Stored {
        ipn_id: skipped, ..
    } = store
        .ingest(numbered(6, "F6", false))
        .await
        .expect("ingest")
    else {
        panic!("stored expected");
    };
    let (delivered, dead, pending, held, fresh) = (jobs[0], jobs[1], jobs[2], jobs[3], jobs[4]);
    let leased = store.lease_due("crm", 2_000, 10).await.expect("lease");
    let mut leased_ids: Vec<i64> = leased.iter().map(|l| l.id.0).collect();
    leased_ids.sort_unstable();
    assert_eq!(leased_ids, [delivered, dead, pending], "held back: 4 and 5");
    for l in leased {
        let (report, disposition) = if l.id.0 == delivered {
            (
                report(Outcome::Delivered(receipt())),
                Disposition::Delivered(receipt()),
            )
        } else if l.id.0 == dead {
            (
                report(Outcome::Permanent {
                    reason: "No products exist in the order".into(),
                }),
                Disposition::Dead,
            )
        } else {
            (
                report(Outcome::Retryable {
                    reason: "HTTP 502".into(),
                    retry_after: None,
                }),
                Disposition::Retry {
                    at: 30_000,
                    reconcile: true,
                },
            )
        };
        store
            .finish_attempt(l.id, l.attempt_id, report, disposition, None, 2_500)
            .await
            .expect("finish");
    }
    let q = Queue {
        store,
        delivered,
        dead,
        pending,
        held,
        fresh,
        skipped_event: skipped.0,
    };
    assert_eq!(q.state(held).await, "held");
    q
}

impl Queue {
    async fn state(&self, job: i64) -> String {
        self.store
            .job_detail(JobId(job))
            .await
            .expect("job detail")
            .job
            .state
    }

    async fn retry(&self, ids: &[i64], now: i64) -> Result<QueueChange, StoreError> {
        let ids = ids.iter().map(|&i| JobId(i)).collect();
        self.store
            .retry_jobs(
                RetrySelection::Ids(ids),
                alice("product 33 added to campaign 12"),
                now,
            )
            .await
    }

    async fn drop(&self, ids: &[i64], now: i64) -> Result<QueueChange, StoreError> {
        let ids = ids.iter().map(|&i| JobId(i)).collect();
        self.store
            .drop_jobs(ids, alice("test order, imported by hand"), now)
            .await
    }
}

fn change(changed: &[i64], released: &[i64]) -> QueueChange {
    QueueChange {
        changed: changed.to_vec(),
        released: released.to_vec(),
    }
}

fn invalid(r: Result<QueueChange, StoreError>) -> String {
    match r {
        Err(StoreError::Invalid(why)) => why,
        other => panic!("refusal expected, got {other:?}"),
    }
}

// ---------------------------------------------------------------- review queries

async fn review_jobs_are_newest_first_and_filtered_by_state_integration_since_and_limit(
    db: TestDb,
) {
    let q = queue(&db).await;
    let list = |filter: ReviewFilter| {
        let store = q.store.clone();
        async move {
            store
                .review_jobs(filter)
                .await
                .expect("review jobs")
                .into_iter()
                .map(|l| l.job.id)
                .collect::<Vec<_>>()
        }
    };
    let all = q
        .store
        .review_jobs(ReviewFilter::default())
        .await
        .expect("jobs");
    let ids: Vec<i64> = all.iter().map(|l| l.job.id).collect();
    assert_eq!(ids, [q.fresh, q.held, q.pending, q.dead, q.delivered]);
    let dead = &all[3];
    assert_eq!(dead.event, "on_payment");
    assert_eq!(dead.ds24_order_id.as_deref(), Some("B2"));
    assert_eq!(dead.product_id.as_deref(), Some("412346"));
    assert_eq!(dead.job.state, "dead");
    assert_eq!(dead.job.attempts, 1);
    assert_eq!(dead.job.integration, "main");
    assert_eq!(all[2].job.state, "pending");
    assert!(all[2].job.needs_reconcile, "retry with reconcile");
    assert_eq!(all[2].job.next_attempt_at, 30_000);

    let by_state = |state| ReviewFilter {
        state: Some(state),
        ..ReviewFilter::default()
    };
    assert_eq!(list(by_state(JobState::Dead)).await, [q.dead]);
    assert_eq!(list(by_state(JobState::Held)).await, [q.held]);
    assert_eq!(list(by_state(JobState::Delivered)).await, [q.delivered]);
    assert_eq!(
        list(ReviewFilter {
            integration: Some("main".into()),
            state: Some(JobState::Pending),
            ..ReviewFilter::default()
        })
        .await,
        [q.fresh, q.pending]
    );
    assert!(
        list(ReviewFilter {
            integration: Some("other".into()),
            ..ReviewFilter::default()
        })
        .await
        .is_empty()
    );
    assert_eq!(
        list(ReviewFilter {
            since: Some(4_000),
            ..ReviewFilter::default()
        })
        .await,
        [q.fresh, q.held],
        "created at or after"
    );
    assert_eq!(
        list(ReviewFilter {
            limit: Some(2),
            ..ReviewFilter::default()
        })
        .await,
        [q.fresh, q.held]
    );
}

async fn job_detail_has_the_ipn_attempts_ledger_and_audit_trail(db: TestDb) {
    let q = queue(&db).await;
    let d = q
        .store
        .job_detail(JobId(q.delivered))
        .await
        .expect("detail");
    assert_eq!(d.job.state, "delivered");
    assert_eq!(d.ipn.id, d.job.ipn_id);
    assert_eq!(d.ipn.order_id.as_deref(), Some("A1"));
    assert_eq!(d.ipn.transaction_id.as_deref(), Some("t-k1"));
    assert_eq!(d.ipn.buyer_email.as_deref(), Some("jane@example.com"));
    assert_eq!(d.ipn.received_at, 1_000);
    assert_eq!(
        d.ipn.body_bytes,
        "event=on_payment&order_id=A1&n=1".len() as u64
    );
    assert_eq!(d.attempts.len(), 1);
    let a = &d.attempts[0];
    assert_eq!(
        (a.job_id, a.number, a.kind.as_str()),
        (q.delivered, 1, "send")
    );
    assert_eq!(a.http_status, Some(200));
    assert_eq!(a.endpoint.as_deref(), Some("order/import"));
    assert_eq!(a.finished_at, Some(2_500));
    let ledger = d.ledger.expect("ledger entry");
    assert_eq!(ledger.target_order_id.as_deref(), Some("K-1001"));
    assert_eq!(ledger.purchase_ids, ["P-5"]);
    assert_eq!(ledger.transaction_ids, ["TX-9"]);
    assert!(d.actions.is_empty());

    let dead = q.store.job_detail(JobId(q.dead)).await.expect("detail");
    assert_eq!(dead.ledger, None);
    assert_eq!(
        dead.attempts[0].reason.as_deref(),
        Some("No products exist in the order")
    );
    match q.store.job_detail(JobId(999)).await {
        Err(StoreError::NotFound(what)) => assert_eq!(what, "job 999"),
        other => panic!("not found expected, got {other:?}"),
    }
}

async fn events_are_listed_newest_first_with_routes_and_job_states(db: TestDb) {
    let q = queue(&db).await;
    let events = q.store.review_events(None, None).await.expect("events");
    let ids: Vec<i64> = events.iter().map(|e| e.ipn.id).collect();
    assert_eq!(ids.len(), 6);
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    let skipped = &events[0];
    assert_eq!(skipped.ipn.id, q.skipped_event);
    assert_eq!(skipped.routes.len(), 1);
    assert_eq!(skipped.routes[0].decision, "skipped");
    assert_eq!(skipped.routes[0].reason, "language fr not in [de, en]");
    assert_eq!(skipped.routes[0].job_id, None);
    assert_eq!(skipped.routes[0].job_state, None);
    for (event, (job, state)) in events.iter().rev().zip([
        (q.delivered, "delivered"),
        (q.dead, "dead"),
        (q.pending, "pending"),
        (q.held, "held"),
        (q.fresh, "pending"),
    ]) {
        assert_eq!(event.routes.len(), 1, "{event:?}");
        let route = &event.routes[0];
        assert_eq!(route.integration, "main");
        assert_eq!(route.decision, "job");
        assert_eq!(route.reason, "import");
        assert_eq!(route.job_id, Some(job));
        assert_eq!(route.job_state.as_deref(), Some(state));
    }

    let since: Vec<i64> = q
        .store
        .review_events(Some(5_000), None)
        .await
        .expect("events")
        .iter()
        .map(|e| e.ipn.received_at)
        .collect();
    assert_eq!(since, [6_000, 5_000], "received at or after");
    let limited = q.store.review_events(None, Some(2)).await.expect("events");
    assert_eq!(limited.len(), 2);
    assert_eq!(limited[0].ipn.id, q.skipped_event);
    assert!(
        q.store
            .review_events(Some(7_000), None)
            .await
            .expect("events")
            .is_empty()
    );

    let dead_event = q.store.job_detail(JobId(q.dead)).await.expect("job").ipn.id;
    let one = q
        .store
        .review_event(EventId(dead_event))
        .await
        .expect("event");
    assert_eq!(one.ipn.order_id.as_deref(), Some("B2"));
    assert_eq!(one.routes[0].job_state.as_deref(), Some("dead"));
    assert_eq!(one, events[4], "the same as in the list");
    match q.store.review_event(EventId(999)).await {
        Err(StoreError::NotFound(what)) => assert_eq!(what, "event 999"),
        other => panic!("not found expected, got {other:?}"),
    }
}

// ---------------------------------------------------------------- retry and drop

async fn retry_makes_a_dead_job_pending_releases_the_held_one_and_is_audited(db: TestDb) {
    let q = queue(&db).await;
    // The held job cannot overtake the dead one of the same order.
    let why = invalid(q.retry(&[q.held], 50_000).await);
    assert!(
        why.contains(&format!(
            "job {} waits behind job {} (dead)",
            q.held, q.dead
        )),
        "{why}"
    );
    assert_eq!(q.state(q.held).await, "held");

    assert_eq!(
        q.retry(&[q.dead], 100_000).await.expect("retry"),
        change(&[q.dead], &[q.held])
    );
    let dead = q.store.job_detail(JobId(q.dead)).await.expect("detail");
    assert_eq!(dead.job.state, "pending");
    assert_eq!(dead.job.next_attempt_at, 100_000, "due now");
    assert_eq!(dead.job.updated_at, 100_000);
    assert_eq!(dead.actions.len(), 1);
    let action = &dead.actions[0];
    assert_eq!(action.at, 100_000);
    assert_eq!(action.user, "alice");
    assert_eq!(action.command, "retry");
    assert_eq!(action.reason, "product 33 added to campaign 12");
    assert_eq!(action.job_id, Some(q.dead));
    assert_eq!(action.ipn_id, Some(dead.ipn.id));

    let held = q.store.job_detail(JobId(q.held)).await.expect("detail");
    assert_eq!(held.job.state, "pending");
    assert_eq!(held.actions.len(), 1);
    assert_eq!(held.actions[0].command, "release");
    assert_eq!(held.actions[0].user, "alice");
    assert_eq!(
        held.actions[0].reason,
        format!(
            "released: job {} of the same Digistore24 order was retried",
            q.dead
        )
    );
    assert!(held.job.next_attempt_at >= 100_000);

    // A pending job may be retried too: due now.
    assert_eq!(
        q.retry(&[q.pending], 100_000).await.expect("retry"),
        change(&[q.pending], &[])
    );
    assert_eq!(
        scalar(
            &db,
            &format!("SELECT next_attempt_at FROM jobs WHERE id = {}", q.pending)
        )
        .await,
        100_000
    );
    // The give-up window starts again at the retry; creation is kept.
    let leased = q.store.lease_due("crm", 100_000, 10).await.expect("lease");
    let again = leased
        .iter()
        .find(|l| l.id.0 == q.dead)
        .expect("the retried job is due");
    assert_eq!(again.retry_base, 100_000);
    assert_eq!(again.created_at, 2_000);
}

async fn retry_dead_takes_every_dead_job_of_the_integration(db: TestDb) {
    let q = queue(&db).await;
    let dead_of = |integration: Option<&str>| RetrySelection::Dead {
        integration: integration.map(str::to_owned),
    };
    assert_eq!(
        q.store
            .retry_jobs(dead_of(Some("other")), alice("x"), 50_000)
            .await
            .expect("retry"),
        QueueChange::default()
    );
    assert_eq!(q.state(q.dead).await, "dead");
    assert_eq!(
        q.store
            .retry_jobs(dead_of(Some("main")), alice("x"), 50_000)
            .await
            .expect("retry"),
        change(&[q.dead], &[q.held])
    );
    assert_eq!(
        q.store
            .retry_jobs(dead_of(None), alice("x"), 60_000)
            .await
            .expect("retry"),
        QueueChange::default(),
        "no dead jobs left"
    );
}

async fn a_delivered_job_is_never_retried_nor_dropped_and_nothing_changes(db: TestDb) {
    let q = queue(&db).await;
    let why = invalid(q.retry(&[q.delivered, q.dead], 50_000).await);
    assert!(
        why.contains(&format!(
            "job {} was delivered (its ledger entry proves it); it is never sent twice and \
             cannot be retried",
            q.delivered
        )),
        "{why}"
    );
    assert_eq!(why.lines().count(), 1, "the dead job is fine: {why}");
    assert_eq!(q.state(q.delivered).await, "delivered");
    assert_eq!(q.state(q.dead).await, "dead", "all or nothing");
    assert_eq!(q.state(q.held).await, "held", "all or nothing");
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM operator_actions").await,
        0
    );
    let why = invalid(q.drop(&[q.delivered], 50_000).await);
    assert!(why.contains("cannot be dropped"), "{why}");
    assert_eq!(q.state(q.delivered).await, "delivered");
}

async fn unknown_ids_are_named_and_nothing_changes(db: TestDb) {
    let q = queue(&db).await;
    match q.retry(&[q.dead, 999], 50_000).await {
        Err(StoreError::NotFound(what)) => assert_eq!(what, "job 999 does not exist"),
        other => panic!("not found expected, got {other:?}"),
    }
    assert_eq!(q.state(q.dead).await, "dead", "all or nothing");
    assert_eq!(q.state(q.held).await, "held");
    // Every problem is named, the unknown ones first.
    match q.retry(&[q.delivered, 998, 999], 50_000).await {
        Err(StoreError::NotFound(what)) => {
            let lines: Vec<&str> = what.lines().collect();
            assert_eq!(lines.len(), 3, "{what}");
            assert_eq!(lines[0], "job 998 does not exist");
            assert_eq!(lines[1], "job 999 does not exist");
            assert!(lines[2].contains("was delivered"), "{what}");
        }
        other => panic!("not found expected, got {other:?}"),
    }
    assert!(matches!(
        q.drop(&[999], 50_000).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM operator_actions").await,
        0
    );
}

async fn drop_is_final_records_the_reason_and_releases_held_jobs(db: TestDb) {
    let q = queue(&db).await;
    assert_eq!(
        q.drop(&[q.dead], 70_000).await.expect("drop"),
        change(&[q.dead], &[q.held])
    );
    let dead = q.store.job_detail(JobId(q.dead)).await.expect("detail");
    assert_eq!(dead.job.state, "dropped");
    assert_eq!(dead.job.updated_at, 70_000);
    assert_eq!(dead.actions.len(), 1);
    assert_eq!(dead.actions[0].command, "drop");
    assert_eq!(dead.actions[0].reason, "test order, imported by hand");
    assert_eq!(dead.actions[0].user, "alice");
    let held = q.store.job_detail(JobId(q.held)).await.expect("detail");
    assert_eq!(held.job.state, "pending");
    assert_eq!(
        held.actions[0].reason,
        format!(
            "released: job {} of the same Digistore24 order was dropped",
            q.dead
        )
    );

    let why = invalid(q.retry(&[q.dead], 80_000).await);
    assert_eq!(
        why,
        format!("job {} was dropped by an operator; it is final", q.dead)
    );
    let why = invalid(q.drop(&[q.dead], 80_000).await);
    assert!(why.contains("dropped by an operator"), "{why}");
    // A pending job may be dropped; nothing is held behind it.
    assert_eq!(
        q.drop(&[q.fresh], 80_000).await.expect("drop"),
        change(&[q.fresh], &[])
    );
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM operator_actions").await,
        3,
        "drop, release, drop"
    );
}

async fn a_job_being_delivered_is_refused_by_retry_and_drop(db: TestDb) {
    let q = queue(&db).await;
    let leased = q
        .store
        .lease_due("crm", 1_000_000, 10)
        .await
        .expect("lease");
    assert!(leased.iter().any(|l| l.id.0 == q.fresh));
    assert_eq!(q.state(q.fresh).await, "in_flight");
    let expected = format!(
        "job {0} is being delivered right now; look again in a moment \
         (`ipn-bridge queue show {0}`)",
        q.fresh
    );
    assert_eq!(invalid(q.retry(&[q.fresh], 1_000_100).await), expected);
    assert_eq!(invalid(q.drop(&[q.fresh], 1_000_100).await), expected);
    assert_eq!(q.state(q.fresh).await, "in_flight");
}

/// `retry D H` where H is held behind dead D: ids go in ascending order, and releasing H
/// at D's retry makes the named H a plain pending job (listed as changed, not released).
async fn retry_of_several_jobs_of_one_order_goes_in_ascending_order(db: TestDb) {
    let q = queue(&db).await;
    assert_eq!(
        q.retry(&[q.held, q.dead], 50_000).await.expect("retry"),
        change(&[q.dead, q.held], &[])
    );
    assert_eq!(q.state(q.held).await, "pending");
    let held = q.store.job_detail(JobId(q.held)).await.expect("detail");
    let commands: Vec<&str> = held.actions.iter().map(|a| a.command.as_str()).collect();
    assert_eq!(commands, ["release", "retry"]);
}

/// An import never waits for an earlier refund of its order (a refund may arrive before its
/// payment): a dead import is retried although the refund before it is dead too.
async fn a_dead_import_is_retried_even_behind_an_earlier_dead_refund(db: TestDb) {
    let store = db.open().await;
    let mut refund = ipn("refund", "A", true);
    if let Some(NewRoute {
        decision: RouteDecision::Job { job, .. },
        ..
    }) = refund.routes.first_mut()
    {
        *job.action = Action::Refund {
            import: ImportRef {
                ds24_order_id: "A".into(),
                ds24_item: "1".into(),
                payment_transaction: Some("t-import".into()),
                reference_field: "custom1".into(),
                email: "jane@example.com".into(),
                campaign_id: 12,
                since: "2026-11-22".into(),
            },
            amount: Money::from_minor(2_000),
            ds24_transaction_id: "t-refund".into(),
            full: false,
        };
    }
    let mut ids = Vec::new();
    for new in [refund, ipn("import", "A", true)] {
        let Ingested::Stored { jobs, .. } = store.ingest(new).await.expect("ingest") else {
            panic!("stored expected");
        };
        ids.push(jobs[0].0);
    }
    let (refund, import) = (ids[0], ids[1]);
    let leased = store.lease_due("crm", 1_000, 10).await.expect("lease");
    assert_eq!(leased.len(), 2, "the import does not wait for the refund");
    for l in leased {
        store
            .finish_attempt(
                l.id,
                l.attempt_id,
                report(Outcome::Permanent {
                    reason: "refused".into(),
                }),
                Disposition::Dead,
                None,
                1_100,
            )
            .await
            .expect("dead");
    }
    assert_eq!(
        store
            .retry_jobs(
                RetrySelection::Ids(vec![JobId(import)]),
                alice("product fixed"),
                2_000,
            )
            .await
            .expect("retry"),
        change(&[import], &[]),
        "the dead refund before it does not block it, nor is anything released"
    );
    let state = |id| {
        let store = store.clone();
        async move { store.job_detail(JobId(id)).await.expect("detail").job.state }
    };
    assert_eq!(state(import).await, "pending");
    assert_eq!(state(refund).await, "dead");
}

// ---------------------------------------------------------------- purge

async fn purge_clears_only_old_final_history_in_bounded_batches_and_keeps_every_key(db: TestDb) {
    let q = queue(&db).await;
    q.drop(&[q.fresh], 2_600).await.expect("drop");
    let count = |what: u64, bodies: u64| PurgeCount {
        attempts_deleted: what,
        bodies_cleared: bodies,
    };

    // Finished after the cutoff: nothing yet.
    assert_eq!(
        q.store.purge_preview(2_000).await.expect("preview"),
        count(0, 0)
    );
    // The delivered job's attempt; the bodies of events 1 (delivered) and 5 (dropped, never
    // tried). The dead, pending and held jobs' attempts and bodies stay, and so does the
    // body of the event routed to nothing.
    assert_eq!(
        q.store.purge_preview(10_000).await.expect("preview"),
        count(1, 2)
    );
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM attempts").await, 3);

    assert_eq!(
        q.store.purge_history_batch(10_000, 1).await.expect("purge"),
        count(1, 1),
        "at most one row of each per batch"
    );
    assert_eq!(
        q.store.purge_history_batch(10_000, 1).await.expect("purge"),
        count(0, 1)
    );
    assert_eq!(
        q.store.purge_history_batch(10_000, 1).await.expect("purge"),
        count(0, 0)
    );
    assert_eq!(
        q.store.purge_preview(10_000).await.expect("preview"),
        count(0, 0)
    );

    // Kept: every IPN with its business key, every job, the ledger, the unfinished jobs'
    // attempts.
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM ipns").await, 6);
    assert_eq!(
        scalar(&db, "SELECT COUNT(DISTINCT business_key) FROM ipns").await,
        6
    );
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM jobs").await, 5);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM routes").await, 6);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM ledger").await, 1);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM attempts").await, 2);
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM ipns WHERE length(raw_body) = 0").await,
        2
    );
    let delivered = q
        .store
        .job_detail(JobId(q.delivered))
        .await
        .expect("detail");
    assert!(delivered.attempts.is_empty());
    assert_eq!(delivered.ipn.body_bytes, 0);
    assert_eq!(
        delivered.ledger.and_then(|l| l.target_order_id).as_deref(),
        Some("K-1001")
    );
    let skipped = q
        .store
        .review_event(EventId(q.skipped_event))
        .await
        .expect("event");
    assert!(skipped.ipn.body_bytes > 0, "a replay may want it");

    // The idempotency survives: the same IPN again is a duplicate.
    assert!(matches!(
        q.store
            .ingest(numbered(1, "A1", true))
            .await
            .expect("ingest"),
        Ingested::Duplicate { .. }
    ));

    q.store
        .record_operator_action("purge", alice("older than 90 days"), 11_000)
        .await
        .expect("audit");
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM operator_actions
             WHERE command = 'purge' AND \"user\" = 'alice' AND at = 11000
               AND reason = 'older than 90 days' AND job_id IS NULL AND ipn_id IS NULL"
        )
        .await,
        1
    );
}

async fn refusals_of_operator_commands_are_not_store_errors(db: TestDb) {
    let q = queue(&db).await;
    let (commits, _) = q.store.commit_stats();
    invalid(q.retry(&[q.delivered], 50_000).await);
    assert!(q.retry(&[999], 50_000).await.is_err());
    assert!(q.store.job_detail(JobId(999)).await.is_err());
    assert_eq!(q.store.error_count(), 0);
    q.retry(&[q.dead], 50_000).await.expect("retry");
    assert!(q.store.commit_stats().0 > commits, "a change is a commit");
    assert_eq!(q.store.error_count(), 0);
}

// ---------------------------------------------------------------- the alert outbox

fn alert(kind: &str, created_at: i64, recipients: &[&str]) -> NewAlert {
    NewAlert {
        created_at,
        kind: kind.into(),
        integration: Some("main".into()),
        target: Some("crm".into()),
        job_id: Some(7),
        ds24_order_id: Some("A".into()),
        product: Some("412346".into()),
        amount: Some("97.00 USD".into()),
        buyer_email: Some("j***@example.com".into()),
        message: "No products exist in the order".into(),
        retry_command: Some("ipn-bridge queue retry 7".into()),
        recipients: recipients.iter().map(|r| (*r).to_owned()).collect(),
    }
}

/// The ids of the alerts `recipient` is owed when mailed last at or before `cutoff`, or
/// `None` when it is not due.
async fn owed(store: &Store, recipient: &str, cutoff: i64, limit: usize) -> Option<Vec<i64>> {
    store
        .alert_outbox_due(cutoff, limit)
        .await
        .expect("outbox")
        .into_iter()
        .find(|o| o.recipient == recipient)
        .map(|o| o.alerts.iter().map(|a| a.id).collect())
}

async fn an_alert_is_owed_to_each_recipient_once_and_marked_sent_per_recipient(db: TestDb) {
    let store = db.open().await;
    let id = store
        .record_alert(alert(
            "dead_letter",
            1_100,
            &["b@example.com", "a@example.com", "b@example.com"],
        ))
        .await
        .expect("alert");
    let due = store.alert_outbox_due(i64::MAX, 10).await.expect("outbox");
    let recipients: Vec<&str> = due.iter().map(|o| o.recipient.as_str()).collect();
    assert_eq!(recipients, ["a@example.com", "b@example.com"], "each once");
    let expected = OutboxAlert {
        id,
        created_at: 1_100,
        kind: "dead_letter".into(),
        integration: Some("main".into()),
        target: Some("crm".into()),
        job_id: Some(7),
        ds24_order_id: Some("A".into()),
        product: Some("412346".into()),
        amount: Some("97.00 USD".into()),
        buyer_email: Some("j***@example.com".into()),
        message: "No products exist in the order".into(),
        retry_command: Some("ipn-bridge queue retry 7".into()),
    };
    for outbox in &due {
        assert_eq!(outbox.alerts, std::slice::from_ref(&expected));
        assert_eq!(outbox.unsent_total, 1);
        assert_eq!(outbox.last_sent_at, None);
    }

    store
        .mark_alerts_sent("a@example.com", vec![id], 5_000)
        .await
        .expect("sent");
    assert_eq!(owed(&store, "a@example.com", i64::MAX, 10).await, None);
    assert_eq!(
        owed(&store, "b@example.com", i64::MAX, 10).await,
        Some(vec![id]),
        "b still owed"
    );
    // Marking again changes nothing: sent once, at the first time.
    store
        .mark_alerts_sent("a@example.com", vec![id], 6_000)
        .await
        .expect("sent");
    assert_eq!(
        scalar(
            &db,
            "SELECT COUNT(*) FROM alert_deliveries
             WHERE recipient = 'a@example.com' AND sent_at = 5000 AND attempts = 1"
        )
        .await,
        1
    );
    // Only plain fields on the alert; the outbox tables hold nothing else.
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM alerts").await, 1);
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM alert_deliveries").await,
        2
    );
}

async fn an_alert_without_a_recipient_is_refused_and_writes_nothing(db: TestDb) {
    let store = db.open().await;
    let refused = store.record_alert(alert("dead_letter", 1_000, &[])).await;
    assert!(
        matches!(refused, Err(StoreError::Invalid(_))),
        "{refused:?}"
    );
    let refused = store
        .record_audit_alert("ds24", "A", "t1", alert("missing_ipn", 1_000, &[]))
        .await;
    assert!(
        matches!(refused, Err(StoreError::Invalid(_))),
        "{refused:?}"
    );
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM alerts").await, 0);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM audit_alerted").await, 0);
    assert_eq!(store.error_count(), 0);
}

async fn the_digest_window_holds_a_recently_mailed_recipient_and_the_limit_keeps_the_oldest(
    db: TestDb,
) {
    let store = db.open().await;
    let a = ["a@example.com"];
    let first = store
        .record_alert(alert("dead_letter", 1_000, &a))
        .await
        .expect("alert");
    store
        .mark_alerts_sent("a@example.com", vec![first], 5_000)
        .await
        .expect("sent");
    let mut later = Vec::new();
    for t in [6_000, 7_000, 8_000] {
        later.push(
            store
                .record_alert(alert("dead_letter", t, &a))
                .await
                .expect("alert"),
        );
    }
    // Mailed at 5 000: not due for a window that ends before it.
    assert_eq!(owed(&store, "a@example.com", 4_999, 2).await, None);
    let due = store.alert_outbox_due(5_000, 2).await.expect("outbox");
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].last_sent_at, Some(5_000));
    assert_eq!(
        due[0].alerts.iter().map(|a| a.id).collect::<Vec<_>>(),
        later[..2],
        "the oldest, at most the limit"
    );
    assert_eq!(due[0].unsent_total, 3, "beyond the limit too");
    // A recipient never mailed is always due.
    let never = store
        .record_alert(alert("dead_letter", 9_000, &["c@example.com"]))
        .await
        .expect("alert");
    let due = store.alert_outbox_due(0, 10).await.expect("outbox");
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].recipient, "c@example.com");
    assert_eq!(due[0].last_sent_at, None);
    assert_eq!(due[0].alerts[0].id, never);
    // No limit to speak of.
    assert_eq!(
        owed(&store, "a@example.com", i64::MAX, usize::MAX)
            .await
            .map(|ids| ids.len()),
        Some(3)
    );
}

async fn a_failed_mailing_keeps_the_alerts_unsent_and_counts_attempts_per_recipient(db: TestDb) {
    let store = db.open().await;
    let id = store
        .record_alert(alert(
            "dead_letter",
            1_000,
            &["a@example.com", "b@example.com"],
        ))
        .await
        .expect("alert");
    for _ in 0..2 {
        store
            .record_alert_failure("b@example.com", vec![id], "535 authentication failed")
            .await
            .expect("failure");
    }
    assert_eq!(
        owed(&store, "b@example.com", i64::MAX, 10).await,
        Some(vec![id])
    );
    let row = |recipient: &str, attempts: i64, error: &str, sent: &str| {
        format!(
            "SELECT COUNT(*) FROM alert_deliveries
             WHERE recipient = '{recipient}' AND attempts = {attempts}
               AND last_error {error} AND sent_at {sent}"
        )
    };
    assert_eq!(
        scalar(
            &db,
            &row(
                "b@example.com",
                2,
                "= '535 authentication failed'",
                "IS NULL"
            )
        )
        .await,
        1
    );
    assert_eq!(
        scalar(&db, &row("a@example.com", 0, "IS NULL", "IS NULL")).await,
        1,
        "the other recipient is untouched"
    );
    store
        .mark_alerts_sent("b@example.com", vec![id], 7_000)
        .await
        .expect("sent");
    assert_eq!(
        scalar(&db, &row("b@example.com", 3, "IS NULL", "= 7000")).await,
        1
    );
    // A failure after the mailing changes nothing.
    store
        .record_alert_failure("b@example.com", vec![id], "late")
        .await
        .expect("failure");
    assert_eq!(
        scalar(&db, &row("b@example.com", 3, "IS NULL", "= 7000")).await,
        1
    );
}

async fn the_backlog_counts_unsent_deliveries_and_sees_a_pending_kind(db: TestDb) {
    let store = db.open().await;
    assert_eq!(
        store.alert_backlog("alert_backlog").await.expect("backlog"),
        OutboxBacklog::default()
    );
    let dead = store
        .record_alert(alert(
            "dead_letter",
            1_100,
            &["a@example.com", "b@example.com"],
        ))
        .await
        .expect("alert");
    let backlog = store
        .record_alert(alert("alert_backlog", 2_000, &["a@example.com"]))
        .await
        .expect("alert");
    assert_eq!(
        store.alert_backlog("alert_backlog").await.expect("backlog"),
        OutboxBacklog {
            unsent: 3,
            oldest_created_at: Some(1_100),
            kind_pending: true,
        }
    );
    assert!(
        !store
            .alert_backlog("target_paused")
            .await
            .expect("backlog")
            .kind_pending
    );
    store
        .mark_alerts_sent("a@example.com", vec![backlog, dead], 3_000)
        .await
        .expect("sent");
    assert_eq!(
        store.alert_backlog("alert_backlog").await.expect("backlog"),
        OutboxBacklog {
            unsent: 1,
            oldest_created_at: Some(1_100),
            kind_pending: false,
        }
    );
    store
        .mark_alerts_sent("b@example.com", vec![dead], 3_000)
        .await
        .expect("sent");
    assert_eq!(
        store.alert_backlog("dead_letter").await.expect("backlog"),
        OutboxBacklog::default()
    );
}

// ---------------------------------------------------------------- the Digistore24 audit

async fn an_audit_alert_is_recorded_once_per_transaction_of_a_source(db: TestDb) {
    let store = db.open().await;
    let ops = ["ops@example.com"];
    let record = |source: &'static str, order: &'static str, transaction: &'static str| {
        let store = store.clone();
        async move {
            store
                .record_audit_alert(
                    source,
                    order,
                    transaction,
                    alert("missing_ipn", 1_000, &ops),
                )
                .await
                .expect("audit alert")
        }
    };
    assert!(record("ds24", "A", "t1").await, "first time");
    assert!(!record("ds24", "A", "t1").await, "never twice");
    assert_eq!(
        store.alert_outbox_due(i64::MAX, 10).await.expect("outbox")[0].unsent_total,
        1
    );
    assert!(record("ds24", "A", "t2").await, "another transaction");
    assert!(record("other", "A", "t1").await, "another source");
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM alerts").await, 3);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM audit_alerted").await, 3);
    assert_eq!(
        scalar(
            &db,
            "SELECT alerted_at FROM audit_alerted
             WHERE source = 'ds24' AND order_id = 'A' AND transaction_id = 't1'"
        )
        .await,
        1_000
    );
}

async fn received_transactions_are_the_wanted_pairs_stored_for_the_source(db: TestDb) {
    let store = db.open().await;
    store.ingest(ipn("k1", "A", true)).await.expect("ingest");
    store.ingest(ipn("k2", "B", false)).await.expect("ingest");
    let pair = |o: &str, t: &str| (o.to_owned(), t.to_owned());
    let wanted = vec![
        pair("A", "t-k1"),
        pair("A", "t-k2"),
        pair("B", "t-k2"),
        pair("C", "t-x"),
        pair("A", "t-k1"),
    ];
    let found = store
        .received_transactions("ds24", wanted.clone())
        .await
        .expect("received");
    assert_eq!(
        found,
        [pair("A", "t-k1"), pair("B", "t-k2")].into_iter().collect()
    );
    assert!(
        store
            .received_transactions("other", wanted)
            .await
            .expect("received")
            .is_empty()
    );
    assert!(
        store
            .received_transactions("ds24", Vec::new())
            .await
            .expect("received")
            .is_empty()
    );
}
