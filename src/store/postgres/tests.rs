//! Tests of what only the PostgreSQL backend has: migrations under an advisory lock, several
//! instances (handles) on one database at once, the guard of a lost lease. The behaviour
//! both backends share is tested in `crate::store::tests`, on both.

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
