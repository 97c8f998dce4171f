//! The job counts of schema migration 4: one shard per backend (no two concurrent
//! transactions write one counter row, so they cannot deadlock on the counts), the fold of
//! the rows of ended backends, and the upgrade from migration 3's shards.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Barrier;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use super::super::counts::FOLD_EVERY;
use super::super::schema;
use super::{back_to_version_2, counted, lease_two_deliver_one, own_connection, schema_version};
use crate::store::postgres::PgStore;
use crate::store::tests::ipn;

/// A store on a fresh database with `n` pending jobs, and their ids in order.
async fn store_with_jobs(n: usize) -> Option<(String, PgStore, Vec<i64>)> {
    let url = crate::store::testing::fresh_database().await?;
    let store = PgStore::connect(&url).await.expect("connect");
    for i in 0..n {
        store
            .ingest(ipn(&format!("k{i}"), &format!("O{i}"), true))
            .await
            .expect("ingest");
    }
    let ids = job_ids(&url).await;
    assert_eq!(ids.len(), n);
    Some((url, store, ids))
}

async fn job_ids(url: &str) -> Vec<i64> {
    own_connection(url)
        .await
        .query("SELECT id FROM jobs ORDER BY id", &[])
        .await
        .expect("ids")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn pid_of(client: &Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0)
}

async fn set_state(client: &Client, id: i64, state: &str) {
    client
        .execute("UPDATE jobs SET state = $1 WHERE id = $2", &[&state, &id])
        .await
        .expect("change of state");
}

/// Waits (a few milliseconds, as a rule) until the backend `pid` has ended after its client
/// closed: PostgreSQL ends a backend asynchronously.
async fn wait_until_gone(observer: &Client, pid: i32) {
    for _ in 0..500 {
        let live: bool = observer
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)",
                &[&pid],
            )
            .await
            .expect("activity")
            .get(0);
        if !live {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("backend {pid} still runs 5 s after its client closed");
}

/// A connection that changes one job's state, commits and closes; returns its pid once
/// its backend has ended.
async fn change_and_close(url: &str, observer: &Client, id: i64, state: &str) -> i32 {
    let client = own_connection(url).await;
    let pid = pid_of(&client).await;
    set_state(&client, id, state).await;
    drop(client);
    wait_until_gone(observer, pid).await;
    pid
}

/// Every row of `job_counts` as `(state, shard) -> n`.
async fn rows(client: &Client) -> BTreeMap<(String, i32), i64> {
    client
        .query("SELECT state, shard::INTEGER, n FROM job_counts", &[])
        .await
        .expect("rows")
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect()
}

fn shards(rows: &BTreeMap<(String, i32), i64>) -> std::collections::BTreeSet<i32> {
    rows.keys().map(|(_, shard)| *shard).collect()
}

/// Every shard left is 0 or the pid of a live backend.
async fn only_live_shards_and_0(client: &Client) {
    let stray: Vec<i32> = client
        .query(
            "SELECT DISTINCT shard::INTEGER FROM job_counts c WHERE shard <> 0
               AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = c.shard)",
            &[],
        )
        .await
        .expect("stray shards")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(stray.is_empty(), "rows of ended backends left: {stray:?}");
}

/// Two connections whose backends share a shard of migration 3 (`pid % 16`): among 17
/// connections two always do.
async fn two_of_one_old_shard(url: &str) -> (Client, Client) {
    let mut by_shard: BTreeMap<i32, Client> = BTreeMap::new();
    for _ in 0..17 {
        let client = own_connection(url).await;
        let shard = pid_of(&client).await % 16;
        if let Some(first) = by_shard.remove(&shard) {
            return (first, client);
        }
        by_shard.insert(shard, client);
    }
    unreachable!("17 connections in 16 shards")
}

/// Transaction A moves a job to `dead` and then another to `pending`; B moves one to
/// `pending` and then one to `dead`; each makes its first change before either makes its
/// second. Under migration 3, on one shard, A holds `(dead, s)` and `(in_flight, s)` and
/// waits for `(held, s)`, B holds `(held, s)` and `(pending, s)` and waits for `(dead, s)`.
/// `ids`: two jobs `in_flight` (0, 3) and two `held` (1, 2).
async fn opposite_changes(
    a: Client,
    b: Client,
    ids: &[i64],
) -> [Result<(), tokio_postgres::Error>; 2] {
    let barrier = Arc::new(Barrier::new(2));
    let run = |client: Client, first: (&'static str, i64), second: (&'static str, i64)| {
        let barrier = barrier.clone();
        tokio::spawn(async move {
            let change = "UPDATE jobs SET state = $1 WHERE id = $2";
            client.batch_execute("BEGIN").await?;
            client.execute(change, &[&first.0, &first.1]).await?;
            barrier.wait().await;
            client.execute(change, &[&second.0, &second.1]).await?;
            client.batch_execute("COMMIT").await
        })
    };
    let a = run(a, ("dead", ids[0]), ("pending", ids[1]));
    let b = run(b, ("pending", ids[2]), ("dead", ids[3]));
    let both = tokio::time::timeout(Duration::from_secs(2), async {
        (a.await.expect("task a"), b.await.expect("task b"))
    })
    .await
    .expect("both transactions end within 2 s");
    [both.0, both.1]
}

/// Four jobs: 0 and 3 `in_flight`, 1 and 2 `held` (see [`opposite_changes`]).
async fn prepare_opposite_changes(url: &str, ids: &[i64]) {
    let setup = own_connection(url).await;
    for (id, state) in [
        (ids[0], "in_flight"),
        (ids[1], "held"),
        (ids[2], "held"),
        (ids[3], "in_flight"),
    ] {
        set_state(&setup, id, state).await;
    }
}

/// Back to schema version 3 as the previous build left it: migration 3 applied again to
/// the jobs in place (its counts in shard 0, `shard SMALLINT`, its `pid % 16` trigger).
async fn back_to_version_3(url: &str) {
    let mut client = own_connection(url).await;
    back_to_version_2(&client).await;
    schema::migrate_up_to(&mut client, 3)
        .await
        .expect("migration 3");
    assert_eq!(shard_type(&client).await, "smallint");
}

async fn shard_type(client: &Client) -> String {
    client
        .query_one(
            "SELECT data_type FROM information_schema.columns
             WHERE table_name = 'job_counts' AND column_name = 'shard'",
            &[],
        )
        .await
        .expect("column")
        .get(0)
}

/// The defect of migration 3: two transactions of one shard changing states in opposite
/// orders deadlock. Since migration 4 every backend has rows of its own: both commit at
/// once, and the counts are those of the jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_transactions_changing_states_in_opposite_orders_never_deadlock() {
    let Some((url, store, ids)) = store_with_jobs(4).await else {
        return;
    };
    prepare_opposite_changes(&url, &ids).await;
    let (a, b) = two_of_one_old_shard(&url).await;
    let [a, b] = opposite_changes(a, b, &ids).await;
    a.expect("transaction A commits");
    b.expect("transaction B commits");
    let expected = BTreeMap::from([("dead".to_owned(), 2), ("pending".to_owned(), 2)]);
    assert_eq!(counted(&url).await, expected);
    assert_eq!(store.job_counts().await.expect("counts"), expected);
    store.close().await;
}

/// The control of the test above: on migration 3's triggers the same two transactions, on
/// backends of one shard, deadlock (so the scenario is the defect, not a harmless one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_migration_3_the_same_transactions_of_one_shard_deadlock() {
    let Some((url, store, ids)) = store_with_jobs(4).await else {
        return;
    };
    store.close().await;
    back_to_version_3(&url).await;
    prepare_opposite_changes(&url, &ids).await;
    let (a, b) = two_of_one_old_shard(&url).await;
    // Detected sooner than after the default second (a superuser setting; the test
    // server's user is one, and without it the detection takes 1 s).
    for client in [&a, &b] {
        let _ = client.batch_execute("SET deadlock_timeout = '100ms'").await;
    }
    let [a, b] = opposite_changes(a, b, &ids).await;
    let deadlocked = [&a, &b]
        .iter()
        .filter(|r| {
            r.as_ref()
                .err()
                .and_then(|e| e.code())
                .is_some_and(|c| *c == SqlState::T_R_DEADLOCK_DETECTED)
        })
        .count();
    assert_eq!(deadlocked, 1, "{a:?} {b:?}");
}

/// The fold moves the rows of ended backends into shard 0 and leaves the totals alone; a
/// row held by a transaction in flight is skipped, not waited on, and folded by a later
/// fold once that transaction committed and its connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_ended_backends_are_folded_into_shard_0_and_locked_rows_are_skipped() {
    let Some((url, store, ids)) = store_with_jobs(4).await else {
        return;
    };
    let observer = own_connection(&url).await;
    let gone = change_and_close(&url, &observer, ids[0], "held").await;
    let gone_locked = change_and_close(&url, &observer, ids[1], "held").await;
    // A live backend that has counted before (its rows are committed) and now has a
    // transaction in flight that writes them again and also locks the rows of an ended
    // backend.
    let live = own_connection(&url).await;
    let live_pid = pid_of(&live).await;
    set_state(&live, ids[2], "held").await;
    live.batch_execute("BEGIN").await.expect("begin");
    set_state(&live, ids[2], "dead").await;
    live.execute(
        "SELECT n FROM job_counts WHERE shard = $1 FOR UPDATE",
        &[&gone_locked],
    )
    .await
    .expect("lock the rows of an ended backend");

    let before = rows(&observer).await;
    let totals = counted(&url).await;
    assert_eq!(store.job_counts().await.expect("counts"), totals);
    let folded = tokio::time::timeout(Duration::from_secs(2), store.fold_job_counts())
        .await
        .expect("the fold waits on no transaction in flight")
        .expect("fold");
    assert_eq!(folded, 2, "the rows (pending, {gone}) and (held, {gone})");
    let after = rows(&observer).await;
    let shards_after = shards(&after);
    assert!(!shards_after.contains(&gone), "{after:?}");
    assert!(shards_after.contains(&gone_locked), "skipped: {after:?}");
    assert!(shards_after.contains(&live_pid), "{after:?}");
    let zero: BTreeMap<&str, i64> = after
        .iter()
        .filter(|((_, shard), _)| *shard == 0)
        .map(|((state, _), n)| (state.as_str(), *n))
        .collect();
    let moved: BTreeMap<&str, i64> = before
        .iter()
        .filter(|((_, shard), _)| *shard == gone)
        .map(|((state, _), n)| (state.as_str(), *n))
        .collect();
    assert_eq!(zero, moved, "shard 0 holds what the ended backend counted");
    assert_eq!(store.job_counts().await.expect("counts"), totals);

    // The transaction commits, its connection closes: the next fold takes both.
    live.batch_execute("COMMIT").await.expect("commit");
    drop(live);
    wait_until_gone(&observer, live_pid).await;
    let totals = counted(&url).await;
    assert_eq!(totals.get("dead"), Some(&1));
    assert!(store.fold_job_counts().await.expect("fold") >= 3);
    let after = rows(&observer).await;
    assert!(!shards(&after).contains(&gone_locked), "{after:?}");
    assert!(!shards(&after).contains(&live_pid), "{after:?}");
    only_live_shards_and_0(&observer).await;
    assert_eq!(store.job_counts().await.expect("counts"), totals);
    assert_eq!(
        totals,
        BTreeMap::from([
            ("dead".to_owned(), 1),
            ("held".to_owned(), 2),
            ("pending".to_owned(), 1)
        ])
    );
    // Nothing left to fold.
    assert_eq!(store.fold_job_counts().await.expect("fold"), 0);
    store.close().await;
}

/// The store folds when it opens, and on a read of the counts once `FOLD_EVERY` has passed
/// since its last fold, not before.
#[tokio::test]
async fn a_read_of_the_counts_folds_at_most_once_a_minute() {
    let Some((url, store, ids)) = store_with_jobs(2).await else {
        return;
    };
    let observer = own_connection(&url).await;
    let gone = change_and_close(&url, &observer, ids[0], "held").await;
    let totals = counted(&url).await;

    // The clock stands still from here (the setup above took a few real milliseconds).
    tokio::time::pause();
    assert_eq!(store.job_counts().await.expect("counts"), totals);
    assert!(
        shards(&rows(&observer).await).contains(&gone),
        "not due yet"
    );
    tokio::time::advance(FOLD_EVERY / 2).await;
    assert_eq!(store.job_counts().await.expect("counts"), totals);
    assert!(
        shards(&rows(&observer).await).contains(&gone),
        "not due yet"
    );
    tokio::time::advance(FOLD_EVERY / 2).await;
    assert_eq!(store.job_counts().await.expect("counts"), totals);
    assert!(!shards(&rows(&observer).await).contains(&gone), "folded");

    // The period starts again with that fold.
    tokio::time::resume();
    let gone = change_and_close(&url, &observer, ids[1], "held").await;
    tokio::time::pause();
    tokio::time::advance(FOLD_EVERY / 2).await;
    let totals = counted(&url).await;
    assert_eq!(store.job_counts().await.expect("counts"), totals);
    assert!(
        shards(&rows(&observer).await).contains(&gone),
        "not due yet"
    );
    store.close().await;

    // A new instance folds when it opens.
    tokio::time::resume();
    let reopened = PgStore::connect(&url).await.expect("reopen");
    assert!(!shards(&rows(&observer).await).contains(&gone), "folded");
    only_live_shards_and_0(&observer).await;
    assert_eq!(reopened.job_counts().await.expect("counts"), totals);
    reopened.close().await;
}

/// A database of schema version 3 with jobs, counts in shard 0 and in `pid % 16` shards of
/// ended and live backends: migration 4 and the fold at open keep the totals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_migrated_from_version_3_with_jobs_keeps_its_counts() {
    let Some((url, store, ids)) = store_with_jobs(5).await else {
        return;
    };
    lease_two_deliver_one(&store).await;
    store.close().await;
    back_to_version_3(&url).await;
    // Counted by migration 3's triggers in the shards of an ended and of a live backend.
    let observer = own_connection(&url).await;
    let old = change_and_close(&url, &observer, ids[4], "held").await;
    let live = own_connection(&url).await;
    let live_pid = pid_of(&live).await;
    set_state(&live, ids[3], "dead").await;
    let before = rows(&observer).await;
    assert!(
        before.keys().any(|(_, shard)| *shard == old % 16),
        "{before:?}"
    );
    assert!(before.keys().any(|(_, shard)| *shard == live_pid % 16));
    let totals = BTreeMap::from([
        ("dead".to_owned(), 1),
        ("delivered".to_owned(), 1),
        ("held".to_owned(), 1),
        ("in_flight".to_owned(), 1),
        ("pending".to_owned(), 1),
    ]);
    assert_eq!(counted(&url).await, totals);

    let store = PgStore::connect(&url).await.expect("migrates");
    assert_eq!(schema_version(&observer).await, schema::CURRENT_VERSION);
    assert_eq!(shard_type(&observer).await, "integer");
    assert_eq!(store.job_counts().await.expect("counts"), totals);
    only_live_shards_and_0(&observer).await;
    // From here on the live backend counts under its pid.
    set_state(&live, ids[3], "pending").await;
    let after = rows(&observer).await;
    assert!(
        after.keys().any(|(_, shard)| *shard == live_pid),
        "{after:?}"
    );
    store.lease_due("crm", 2_000, 10).await.expect("lease");
    assert_eq!(
        store.job_counts().await.expect("counts"),
        counted(&url).await
    );
    store.close().await;
}

/// TRUNCATE still clears the counts (its trigger now takes the fold lock first).
#[tokio::test]
async fn a_truncate_of_the_jobs_clears_the_counts() {
    let Some((url, store, _)) = store_with_jobs(3).await else {
        return;
    };
    assert_eq!(
        store.job_counts().await.expect("counts"),
        BTreeMap::from([("pending".to_owned(), 3)])
    );
    own_connection(&url)
        .await
        .batch_execute("TRUNCATE jobs CASCADE")
        .await
        .expect("truncate");
    assert!(rows(&own_connection(&url).await).await.is_empty());
    assert_eq!(store.job_counts().await.expect("counts"), BTreeMap::new());
    store.close().await;
}

/// The TRUNCATE trigger of migration 4 spells out [`schema::FOLD_LOCK`] as a number.
#[test]
fn the_truncate_trigger_takes_the_fold_lock() {
    let lock = format!("pg_advisory_xact_lock({})", schema::FOLD_LOCK);
    assert!(schema::migration(4).is_some_and(|sql| sql.contains(&lock)));
}
