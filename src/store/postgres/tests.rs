//! Tests of what only the PostgreSQL backend has: migrations under an advisory lock, several
//! instances (handles) on one database at once, the guard of a lost lease. The behaviour
//! both backends share is tested in `crate::store::tests`, on both.

use std::collections::BTreeMap;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_starting_at_once_migrate_once() {
    let Some(url) = crate::store::testing::fresh_database().await else {
        return;
    };
    let (a, b) = tokio::join!(PgStore::connect(&url), PgStore::connect(&url));
    let (a, b) = (a.expect("first instance"), b.expect("second instance"));
    let client = a.client().await.expect("client");
    let version: i64 = client
        .query_one("SELECT version FROM ipn_bridge_schema", &[])
        .await
        .expect("version")
        .get(0);
    assert_eq!(version, schema::CURRENT_VERSION);
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'jobs'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(tables, 1);
    b.close().await;
    a.close().await;
}

#[tokio::test]
async fn a_database_from_a_newer_build_is_refused() {
    let Some(url) = crate::store::testing::fresh_database().await else {
        return;
    };
    let store = PgStore::connect(&url).await.expect("connect");
    store
        .client()
        .await
        .expect("client")
        .execute("UPDATE ipn_bridge_schema SET version = version + 1", &[])
        .await
        .expect("bump");
    let err = PgStore::connect(&url).await.expect_err("newer schema");
    assert!(matches!(err, StoreError::Incompatible(_)), "{err:?}");
}

#[tokio::test]
async fn count_adds_successes_to_commits_and_store_failures_to_errors() {
    let Some(url) = crate::store::testing::fresh_database().await else {
        return;
    };
    let store = PgStore::connect(&url).await.expect("connect");
    let (commits, _) = store.commit_stats();
    assert_eq!(store.count(Ok(7)), Ok(7));
    for failure in [
        StoreError::Unavailable("down".into()),
        StoreError::Internal("bug".into()),
        StoreError::Damaged("bad".into()),
    ] {
        assert_eq!(store.count::<()>(Err(failure.clone())), Err(failure));
    }
    for answer in [
        StoreError::Invalid("no".into()),
        StoreError::NotFound("x".into()),
    ] {
        assert_eq!(store.count::<()>(Err(answer.clone())), Err(answer));
    }
    assert_eq!(store.commit_stats(), (commits + 1, commits + 1));
    assert_eq!(store.error_count(), 3);
    store.close().await;
}

#[test]
fn the_shown_url_never_carries_the_password() {
    let config: tokio_postgres::Config = "postgres://bridge:s3cret@db.example:6543/ipn"
        .parse()
        .expect("url");
    let shown = shown_url(&config);
    assert_eq!(shown, "postgres://bridge@db.example:6543/ipn");
    assert!(!shown.contains("s3cret"));
}

/// Two instances (two handles, two pools) on one database.
async fn two_instances() -> Option<(PgStore, PgStore)> {
    let url = crate::store::testing::fresh_database().await?;
    let a = PgStore::connect(&url).await.expect("first instance");
    let b = PgStore::connect(&url).await.expect("second instance");
    Some((a, b))
}

/// Digistore24 sends an IPN again when the first answer is slow; behind a load balancer the
/// two copies reach two instances at the same moment. The unique constraint decides: one
/// row, one `Stored`, one `Duplicate`, and both answer with the same id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_ingesting_the_same_ipns_at_once_store_each_once_under_one_id() {
    use crate::store::Ingested;
    use crate::store::tests::ipn;
    let Some((a, b)) = two_instances().await else {
        return;
    };
    let mut pairs = Vec::new();
    for i in 0..200 {
        // Ten orders, so the jobs of one order are also inserted by both at once.
        let new = ipn(&format!("k{i}"), &format!("O{}", i % 10), true);
        let (a, b, again) = (a.clone(), b.clone(), new.clone());
        pairs.push((
            tokio::spawn(async move { a.ingest(new).await }),
            tokio::spawn(async move { b.ingest(again).await }),
        ));
    }
    let mut ids = std::collections::BTreeSet::new();
    for (first, second) in pairs {
        let first = first.await.expect("task").expect("ingest on a");
        let second = second.await.expect("task").expect("ingest on b");
        let id = match (&first, &second) {
            (Ingested::Stored { ipn_id, jobs }, Ingested::Duplicate { ipn_id: other })
            | (Ingested::Duplicate { ipn_id: other }, Ingested::Stored { ipn_id, jobs }) => {
                assert_eq!(ipn_id, other, "both answers name the stored row");
                assert_eq!(jobs.len(), 1);
                *ipn_id
            }
            _ => panic!("one Stored and one Duplicate expected: {first:?}, {second:?}"),
        };
        assert!(ids.insert(id), "ids are distinct across IPNs");
    }
    assert_eq!(a.list_ipns(None).await.expect("ipns").len(), 200);
    let jobs = b
        .list_jobs(crate::store::JobFilter::default())
        .await
        .expect("jobs");
    assert_eq!(jobs.len(), 200);
    a.close().await;
    b.close().await;
}

fn report(outcome: crate::domain::Outcome) -> crate::domain::AttemptReport {
    crate::domain::AttemptReport {
        outcome,
        endpoint: "order/import".into(),
        http_status: Some(200),
        request: "loginId=x&password=%5Bredacted%5D".into(),
        response: "{}".into(),
        maybe_applied: false,
    }
}

fn delivered() -> (crate::domain::AttemptReport, crate::store::Disposition) {
    let receipt = crate::domain::Receipt {
        order_id: Some("K-1".into()),
        ..crate::domain::Receipt::default()
    };
    (
        report(crate::domain::Outcome::Delivered(receipt.clone())),
        crate::store::Disposition::Delivered(receipt),
    )
}

/// Two instances drain one target at once: 500 jobs, 100 orders of 5 jobs each. Every job is
/// leased exactly once (one attempt each), and within an order the jobs were leased in
/// order, each after the one before it was delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_leasers_on_one_target_never_lease_the_same_job() {
    use crate::store::tests::ipn;
    let Some((a, b)) = two_instances().await else {
        return;
    };
    let mut ingests = Vec::new();
    for i in 0..500 {
        let a = a.clone();
        ingests.push(tokio::spawn(async move {
            a.ingest(ipn(&format!("k{i}"), &format!("O{}", i % 100), true))
                .await
        }));
    }
    for t in ingests {
        t.await.expect("task").expect("ingest");
    }
    let drain = |store: PgStore| async move {
        let mut leased = Vec::new();
        loop {
            let batch = store.lease_due("crm", 1_000, 8).await.expect("lease");
            if batch.is_empty() {
                let counts = store.job_counts().await.expect("counts");
                if counts.get("delivered") == Some(&500) {
                    return leased;
                }
                tokio::task::yield_now().await;
                continue;
            }
            for job in batch {
                let (report, disposition) = delivered();
                store
                    .finish_attempt(job.id, job.attempt_id, report, disposition, None, 1_100)
                    .await
                    .expect("finish");
                leased.push((job.id, job.attempt_id));
            }
        }
    };
    let (from_a, from_b) = tokio::join!(
        tokio::spawn(drain(a.clone())),
        tokio::spawn(drain(b.clone()))
    );
    let (from_a, from_b) = (from_a.expect("a"), from_b.expect("b"));
    eprintln!("leased by a: {}, by b: {}", from_a.len(), from_b.len());
    let mut jobs: Vec<_> = from_a.iter().chain(&from_b).map(|(job, _)| job.0).collect();
    jobs.sort_unstable();
    let total = jobs.len();
    jobs.dedup();
    assert_eq!(
        (total, jobs.len()),
        (500, 500),
        "every job leased exactly once"
    );

    let all = a
        .list_jobs(crate::store::JobFilter::default())
        .await
        .expect("jobs");
    let mut by_order: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for job in &all {
        let attempts = a
            .attempts(crate::domain::JobId(job.id))
            .await
            .expect("attempts");
        assert_eq!(attempts.len(), 1, "job {} has one attempt", job.id);
        by_order
            .entry(job.order_key.clone())
            .or_default()
            .push(attempts[0].id);
    }
    for (order, attempts) in by_order {
        assert!(
            attempts.windows(2).all(|w| w[0] < w[1]),
            "order {order}: jobs leased out of order {attempts:?}"
        );
    }
    a.close().await;
    b.close().await;
}

/// An instance that lost its dispatcher lock (a long pause, a partition) still holds a
/// lease the new owner has recovered. Its late answers must change nothing: they are
/// refused, and what the new owner did stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_finish_of_a_recovered_attempt_is_refused_and_changes_nothing() {
    use crate::domain::{JobId, Outcome};
    use crate::store::tests::ipn;
    use crate::store::{AttemptKind, Disposition};
    let Some((old, new)) = two_instances().await else {
        return;
    };
    old.ingest(ipn("k1", "A", true)).await.expect("ingest");
    let lost = old
        .lease_due("crm", 1_000, 10)
        .await
        .expect("lease")
        .remove(0);

    // The new owner recovers the job and leases it again (a reconcile: an import).
    assert_eq!(
        new.recover_interrupted(2_000, 2_000)
            .await
            .expect("recover"),
        1
    );
    let taken = new
        .lease_due("crm", 2_000, 10)
        .await
        .expect("lease")
        .remove(0);
    assert_eq!((taken.id, taken.kind), (lost.id, AttemptKind::Reconcile));

    let refused = format!(
        "attempt {} of job {} is no longer open: another instance recovered the job",
        lost.attempt_id, lost.id
    );
    let (late, disposition) = delivered();
    assert_eq!(
        old.finish_attempt(lost.id, lost.attempt_id, late, disposition, None, 2_100)
            .await,
        Err(StoreError::Invalid(refused.clone()))
    );
    assert_eq!(
        old.reconciled_absent(
            lost.id,
            lost.attempt_id,
            report(Outcome::Retryable {
                reason: String::new(),
                retry_after: None
            }),
            2_100
        )
        .await,
        Err(StoreError::Invalid(refused.clone()))
    );
    assert_eq!(
        old.finish_attempt(
            lost.id,
            lost.attempt_id,
            report(Outcome::Permanent {
                reason: "refused".into()
            }),
            Disposition::Dead,
            None,
            2_100
        )
        .await,
        Err(StoreError::Invalid(refused))
    );
    let job = new.job(lost.id).await.expect("job");
    assert_eq!(
        (job.state.as_str(), job.attempts, job.needs_reconcile),
        ("in_flight", 2, true),
        "the new owner's lease stands"
    );
    let outcomes: Vec<Option<String>> = new
        .attempts(lost.id)
        .await
        .expect("attempts")
        .into_iter()
        .map(|a| a.outcome)
        .collect();
    assert_eq!(outcomes, [Some("interrupted".to_owned()), None]);
    assert!(
        new.ledger().await.expect("ledger").is_empty(),
        "nothing delivered"
    );

    // The new owner's own answer is applied.
    let (answer, disposition) = delivered();
    new.finish_attempt(taken.id, taken.attempt_id, answer, disposition, None, 2_200)
        .await
        .expect("the owner finishes");
    assert_eq!(
        new.job(JobId(lost.id.0)).await.expect("job").state,
        "delivered"
    );

    // The attempt of another job, named by mistake, is refused the same way.
    old.ingest(ipn("k2", "B", true)).await.expect("ingest");
    let other = old
        .lease_due("crm", 3_000, 10)
        .await
        .expect("lease")
        .remove(0);
    let (late, disposition) = delivered();
    assert!(matches!(
        old.finish_attempt(lost.id, other.attempt_id, late, disposition, None, 3_100)
            .await,
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(old.job(other.id).await.expect("job").state, "in_flight");

    // A job that moved on while its attempt is still open (dropped by the operator, say):
    // refused, and the attempt stays open (closing it is rolled back with the rest).
    new.client()
        .await
        .expect("client")
        .execute(
            "UPDATE jobs SET state = 'dropped' WHERE id = $1",
            &[&other.id.0],
        )
        .await
        .expect("drop");
    for disposition in [
        Disposition::Retry {
            at: 9_000,
            reconcile: false,
        },
        Disposition::Requeue { at: 9_000 },
        Disposition::Dead,
    ] {
        assert_eq!(
            old.finish_attempt(
                other.id,
                other.attempt_id,
                report(Outcome::Retryable {
                    reason: "502".into(),
                    retry_after: None
                }),
                disposition,
                None,
                3_200
            )
            .await,
            Err(StoreError::Invalid(format!(
                "attempt {} of job {} is no longer open: another instance recovered the job",
                other.attempt_id, other.id
            )))
        );
    }
    let attempts = old.attempts(other.id).await.expect("attempts");
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, None, "still open");
    let job = old.job(other.id).await.expect("job");
    assert_eq!((job.state.as_str(), job.attempts), ("dropped", 1));
    old.close().await;
    new.close().await;
}

/// The health probe is a real write: it commits on a writable server and fails with
/// `Unavailable` on one that refuses writes (a standby, a read-only database).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_probe_fails_when_the_database_refuses_writes() {
    let Some(url) = crate::store::testing::fresh_database().await else {
        return;
    };
    let store = PgStore::connect(&url).await.expect("connect");
    store.probe_writable().await.expect("a writable database");
    let db = url.rsplit('/').next().expect("database name").to_owned();
    let admin = store.client().await.expect("client");
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {db} SET default_transaction_read_only = on"
        ))
        .await
        .expect("read-only");
    drop(admin);
    // Sessions opened from now on are read-only; end the store's older ones.
    let (killer, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    killer
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .expect("terminate");
    // The first probes may meet the ended sessions (also `Unavailable`); the pool then
    // opens read-only ones.
    let mut last = Ok(());
    for _ in 0..(POOL_SIZE + 4) {
        last = store.probe_writable().await;
        if matches!(&last, Err(StoreError::Unavailable(m)) if m.contains("read-only")) {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(
        matches!(&last, Err(StoreError::Unavailable(m)) if m.contains("read-only transaction")),
        "{last:?}"
    );
    killer
        .batch_execute("SET default_transaction_read_only = off")
        .await
        .expect("this session writable");
    killer
        .batch_execute(&format!(
            "ALTER DATABASE {db} RESET default_transaction_read_only"
        ))
        .await
        .expect("writable again");
    store.close().await;
}

/// A job of an order dies on one instance while another instance ingests more IPNs of the
/// same order: every one of them ends up held behind the dead job, none pending (an insert
/// that read "no dead job" just before the death and committed just after it would be
/// missed by the holding update; the order's advisory lock serialises the two).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_ingested_while_an_earlier_job_of_their_order_dies_are_all_held() {
    use crate::domain::Outcome;
    use crate::store::Disposition;
    use crate::store::tests::ipn;
    let Some((a, b)) = two_instances().await else {
        return;
    };
    for round in 0..5 {
        let order = format!("A{round}");
        a.ingest(ipn(&format!("first{round}"), &order, true))
            .await
            .expect("ingest");
        let dying = a
            .lease_due("crm", 1_000, 10)
            .await
            .expect("lease")
            .remove(0);
        let mut ingests = Vec::new();
        for i in 0..40 {
            let (b, key, order) = (b.clone(), format!("r{round}-{i}"), order.clone());
            ingests.push(tokio::spawn(async move {
                b.ingest(ipn(&key, &order, true)).await
            }));
        }
        a.finish_attempt(
            dying.id,
            dying.attempt_id,
            report(Outcome::Permanent {
                reason: "refused".into(),
            }),
            Disposition::Dead,
            None,
            1_100,
        )
        .await
        .expect("dead");
        for t in ingests {
            t.await.expect("task").expect("ingest");
        }
        let jobs = b
            .list_jobs(crate::store::JobFilter::default())
            .await
            .expect("jobs");
        let pending: Vec<i64> = jobs
            .iter()
            .filter(|j| j.order_key == order && j.state != "dead" && j.state != "held")
            .map(|j| j.id)
            .collect();
        assert!(pending.is_empty(), "round {round}: not held: {pending:?}");
    }
    a.close().await;
    b.close().await;
}
