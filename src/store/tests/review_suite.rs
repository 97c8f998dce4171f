//! The shared suite for the review queries, operator commands, the alert outbox and the
//! audit's store calls, on both backends (see the parent module). It pins at the store what
//! `tests/queue_cli.rs` and `tests/alerts.rs` pin through the binary on SQLite: the retry and
//! drop rules and their refusals, held jobs released, the audit trail, what a purge keeps,
//! the outbox per recipient, the digest window, the backlog, the audit's once-only alert.

use super::*;
use crate::store::alerts::{NewAlert, OutboxAlert, OutboxBacklog};

on_both_backends!(
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
        assert_eq!(outbox.alerts, [expected.clone()]);
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
