//! Tests of what only the PostgreSQL backend has: migrations under an advisory lock, several
//! instances (handles) on one database at once, the guard of a lost lease. The behaviour
//! both backends share is tested in `crate::store::tests`, on both.

use std::collections::BTreeMap;

use super::*;

mod counts;
mod tls;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_starting_at_once_migrate_once() {
    let Some(url) = crate::store::testing::fresh_database().await else {
        return;
    };
    let (a, b) = tokio::join!(PgStore::connect(&url), PgStore::connect(&url));
    let (a, b) = (a.expect("first instance"), b.expect("second instance"));
    let client = a.client().await.expect("client");
    assert_eq!(schema_version(&client).await, schema::CURRENT_VERSION);
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

/// Leases two due jobs of target `crm` and delivers the first (the other stays leased), so
/// the counts have jobs in more than one state.
async fn lease_two_deliver_one(store: &PgStore) {
    let leased = store.lease_due("crm", 1_000, 2).await.expect("lease");
    let (report, disposition) = delivered();
    store
        .finish_attempt(
            leased[0].id,
            leased[0].attempt_id,
            report,
            disposition,
            None,
            1_100,
        )
        .await
        .expect("finish");
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

/// Jobs per state counted from the rows themselves, by a connection of its own.
async fn counted(url: &str) -> BTreeMap<String, u64> {
    let client = own_connection(url).await;
    client
        .query("SELECT state, COUNT(*) FROM jobs GROUP BY state", &[])
        .await
        .expect("count")
        .iter()
        .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
        .collect()
}

/// Back to schema version 2 with the jobs in place: migration 3's counts, triggers and
/// functions dropped, as a build from before it left the database.
async fn back_to_version_2(client: &tokio_postgres::Client) {
    client
        .batch_execute(
            "DROP TRIGGER job_counts_insert ON jobs; DROP TRIGGER job_counts_delete ON jobs;
             DROP TRIGGER job_counts_update ON jobs; DROP TRIGGER job_counts_truncate ON jobs;
             DROP FUNCTION job_counts_keep(); DROP FUNCTION job_counts_clear();
             DROP TABLE job_counts;
             UPDATE ipn_bridge_schema SET version = 2;",
        )
        .await
        .expect("downgrade");
}

/// The schema version the database records.
async fn schema_version(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one("SELECT version FROM ipn_bridge_schema", &[])
        .await
        .expect("version")
        .get(0)
}

async fn own_connection(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

/// Issue 13: `/metrics` and `/healthz` read the counts; at a million jobs a count of the
/// rows takes seconds, so the statement must not read `jobs` at all.
#[tokio::test]
async fn job_counts_are_read_from_the_counts_table_never_from_jobs() {
    let Some(url) = crate::store::testing::fresh_database().await else {
        return;
    };
    let store = PgStore::connect(&url).await.expect("connect");
    let client = own_connection(&url).await;
    let plan: Vec<String> = client
        .query(&format!("EXPLAIN {}", jobs::JOB_COUNTS_SQL), &[])
        .await
        .expect("explain")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join(" | ");
    assert!(plan.contains("on job_counts"), "{plan}");
    assert!(!plan.contains("on jobs"), "{plan}");
    // And what the store reports is what that table holds.
    store
        .ingest(crate::store::tests::ipn("k1", "A", true))
        .await
        .expect("ingest");
    client
        .execute(
            "UPDATE job_counts SET n = n + 99 WHERE state = 'pending'",
            &[],
        )
        .await
        .expect("tamper");
    assert_eq!(
        store.job_counts().await.expect("counts"),
        BTreeMap::from([("pending".to_owned(), 100)])
    );
    store.close().await;
}

/// The triggers write the row of the writing connection's shard (`pg_backend_pid()`),
/// whoever writes (here psql-like direct statements); a rolled-back change leaves the counts
/// as they were, and an UPDATE that leaves `state` as it is does not touch them.
#[tokio::test]
async fn each_connection_counts_in_its_own_shard_and_only_changes_of_state_count() {
    let Some(url) = crate::store::testing::fresh_database().await else {
        return;
    };
    let store = PgStore::connect(&url).await.expect("connect");
    for i in 0..3 {
        store
            .ingest(crate::store::tests::ipn(
                &format!("k{i}"),
                &format!("O{i}"),
                true,
            ))
            .await
            .expect("ingest");
    }
    let mut client = own_connection(&url).await;
    let shard: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    let row_of = |state: &'static str| {
        let client = &client;
        async move {
            client
                .query_opt(
                    "SELECT n FROM job_counts WHERE state = $1 AND shard = $2",
                    &[&state, &shard],
                )
                .await
                .expect("row")
                .map(|r| r.get::<_, i64>(0))
        }
    };
    let before_held = row_of("held").await;
    client
        .execute("UPDATE jobs SET state = 'held' WHERE id = 1", &[])
        .await
        .expect("direct update");
    assert_eq!(row_of("held").await, Some(before_held.unwrap_or(0) + 1));
    assert_eq!(
        store.job_counts().await.expect("counts"),
        counted(&url).await
    );

    // Only a change of state touches the counts: no row of `job_counts` is rewritten.
    let before = count_rows(&client).await;
    client
        .batch_execute(
            "UPDATE jobs SET updated_at = updated_at + 1;
             UPDATE jobs SET state = state WHERE id = 2;",
        )
        .await
        .expect("updates without a change of state");
    assert_eq!(count_rows(&client).await, before);

    // A rolled-back change of state leaves the counts alone.
    let tx = client.transaction().await.expect("begin");
    tx.execute("UPDATE jobs SET state = 'dead' WHERE id = 2", &[])
        .await
        .expect("update");
    tx.rollback().await.expect("rollback");
    assert_eq!(count_rows(&client).await, before);

    // A job deleted directly (its route first) is counted out.
    client
        .batch_execute(
            "DELETE FROM routes WHERE job_id = 3;
             DELETE FROM jobs WHERE id = 3;",
        )
        .await
        .expect("delete");
    assert_eq!(
        store.job_counts().await.expect("counts"),
        counted(&url).await
    );
    assert_eq!(
        store.job_counts().await.expect("counts"),
        BTreeMap::from([("held".to_owned(), 1), ("pending".to_owned(), 1)])
    );
    store.close().await;
}

/// Every row of `job_counts` with the transaction that last wrote it.
async fn count_rows(client: &tokio_postgres::Client) -> Vec<(String, i32, i64, String)> {
    client
        .query(
            "SELECT state, shard, n, xmin::text FROM job_counts ORDER BY state, shard",
            &[],
        )
        .await
        .expect("rows")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

/// A database of schema version 2 that already has jobs (an older build ran on it) gets its
/// counts from the jobs when migration 3 is applied at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_migrated_from_version_2_with_jobs_gets_correct_counts() {
    use crate::store::tests::ipn;
    let Some(url) = crate::store::testing::fresh_database().await else {
        return;
    };
    let store = PgStore::connect(&url).await.expect("connect");
    for i in 0..5 {
        store
            .ingest(ipn(&format!("k{i}"), &format!("O{i}"), true))
            .await
            .expect("ingest");
    }
    lease_two_deliver_one(&store).await;
    store.close().await;
    // Back to version 2, as the previous build left it; the jobs stay.
    back_to_version_2(&own_connection(&url).await).await;

    let store = PgStore::connect(&url).await.expect("migrates");
    let expected = BTreeMap::from([
        ("delivered".to_owned(), 1),
        ("in_flight".to_owned(), 1),
        ("pending".to_owned(), 3),
    ]);
    assert_eq!(counted(&url).await, expected);
    assert_eq!(store.job_counts().await.expect("counts"), expected);
    // And kept from there on.
    store.lease_due("crm", 2_000, 10).await.expect("lease");
    assert_eq!(
        store.job_counts().await.expect("counts"),
        counted(&url).await
    );
    store.close().await;
}

/// Two instances (two pools, so connections of many shards) ingest, lease and finish at the
/// same time on one database: the counts, summed over the shards, equal a count of the rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_working_at_once_keep_counts_equal_to_a_count_of_the_rows() {
    use crate::domain::Outcome;
    use crate::store::Disposition;
    use crate::store::tests::ipn;
    let Some(url) = crate::store::testing::fresh_database().await else {
        return;
    };
    let a = PgStore::connect(&url).await.expect("first instance");
    let b = PgStore::connect(&url).await.expect("second instance");
    let work = |store: PgStore, name: &'static str| async move {
        let mut ingests = Vec::new();
        for i in 0..150 {
            let store = store.clone();
            ingests.push(tokio::spawn(async move {
                store
                    .ingest(ipn(&format!("{name}{i}"), &format!("{name}{i}"), true))
                    .await
            }));
        }
        for t in ingests {
            t.await.expect("task").expect("ingest");
        }
        loop {
            let batch = store.lease_due("crm", 1_000, 8).await.expect("lease");
            if batch.is_empty() {
                return;
            }
            let mut finishes = Vec::new();
            for job in batch {
                let (report_of, disposition) = match job.id.0 % 3 {
                    0 => delivered(),
                    1 => (
                        report(Outcome::Retryable {
                            reason: "busy".into(),
                            retry_after: None,
                        }),
                        Disposition::Retry {
                            at: 1_000_000,
                            reconcile: false,
                        },
                    ),
                    _ => (
                        report(Outcome::Permanent {
                            reason: "no".into(),
                        }),
                        Disposition::Dead,
                    ),
                };
                let store = store.clone();
                finishes.push(tokio::spawn(async move {
                    store
                        .finish_attempt(job.id, job.attempt_id, report_of, disposition, None, 1_100)
                        .await
                }));
            }
            for t in finishes {
                t.await.expect("task").expect("finish");
            }
        }
    };
    let (done_a, done_b) = tokio::join!(
        tokio::spawn(work(a.clone(), "a")),
        tokio::spawn(work(b.clone(), "b"))
    );
    done_a.expect("a");
    done_b.expect("b");
    let rows = counted(&url).await;
    assert_eq!(rows.values().sum::<u64>(), 300);
    assert_eq!(rows.get("in_flight"), None);
    let shards: i64 = own_connection(&url)
        .await
        .query_one("SELECT COUNT(DISTINCT shard) FROM job_counts", &[])
        .await
        .expect("shards")
        .get(0);
    assert!(
        shards > 1,
        "the connections of two pools wrote {shards} shard(s)"
    );
    assert_eq!(a.job_counts().await.expect("counts"), rows);
    assert_eq!(b.job_counts().await.expect("counts"), rows);
    a.close().await;
    b.close().await;
}

/// The indexes of `table`, by name.
async fn indexes_of(client: &tokio_postgres::Client, table: &str) -> Vec<String> {
    client
        .query(
            "SELECT indexname::text FROM pg_indexes WHERE tablename = $1 ORDER BY indexname",
            &[&table],
        )
        .await
        .expect("indexes")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Migration 5 (issue 13): as in SQLite, IPNs are found by transaction (ids Digistore24
/// counts up), no index of `ipns` is kept by order (ids in no order); a database of
/// version 4, which has the order index, loses it when an instance starts, and the audit's
/// lookup and the payment a refund reverses still find what is stored.
#[tokio::test]
async fn ipns_are_looked_up_by_transaction_and_a_version_4_database_loses_its_order_index() {
    let Some(url) = crate::store::testing::fresh_database().await else {
        return;
    };
    let store = PgStore::connect(&url).await.expect("connect");
    store
        .ingest(crate::store::tests::ipn("k1", "A", false))
        .await
        .expect("ingest");
    store.close().await;
    let client = own_connection(&url).await;
    let kept = indexes_of(&client, "ipns").await;
    for index in ["ipns_transaction", "ipns_parent_transaction"] {
        assert!(kept.contains(&index.to_owned()), "{kept:?}");
    }
    assert!(!kept.contains(&"ipns_order".to_owned()), "{kept:?}");
    client
        .batch_execute(
            "DROP INDEX ipns_parent_transaction; CREATE INDEX ipns_order ON ipns (order_id);
             UPDATE ipn_bridge_schema SET version = 4;",
        )
        .await
        .expect("downgrade");
    let store = crate::store::Store::Postgres(PgStore::connect(&url).await.expect("migrates"));
    crate::store::tests::k1_found_by_transaction(&store).await;
    store.close().await;
    assert_eq!(indexes_of(&client, "ipns").await, kept);
    assert_eq!(schema_version(&client).await, schema::CURRENT_VERSION);
}

/// Migration 6 (issue 13): as in SQLite, the ledger keeps one index by order, `ledger_item`
/// (integration, order, item, job), not also `ledger_order` (integration, order); a
/// database of version 5 loses `ledger_order` when an instance starts.
#[tokio::test]
async fn the_ledger_keeps_one_index_by_order_and_a_version_5_database_loses_the_other() {
    let Some(url) = crate::store::testing::fresh_database().await else {
        return;
    };
    PgStore::connect(&url).await.expect("connect").close().await;
    let client = own_connection(&url).await;
    let kept = indexes_of(&client, "ledger").await;
    assert!(kept.contains(&"ledger_item".to_owned()), "{kept:?}");
    assert!(!kept.contains(&"ledger_order".to_owned()), "{kept:?}");
    client
        .batch_execute(
            "CREATE INDEX ledger_order ON ledger (integration, ds24_order_id);
             UPDATE ipn_bridge_schema SET version = 5;",
        )
        .await
        .expect("downgrade");
    PgStore::connect(&url)
        .await
        .expect("migrates")
        .close()
        .await;
    assert_eq!(indexes_of(&client, "ledger").await, kept);
    assert_eq!(schema_version(&client).await, schema::CURRENT_VERSION);
}
