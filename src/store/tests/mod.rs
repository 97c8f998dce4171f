//! The store's shared test suite: every test here runs once on SQLite (a file in a temporary
//! directory) and once on PostgreSQL (a fresh database on the test server, see
//! [`super::testing`]), so the two backends cannot drift. A test is an `async fn(TestDb)`
//! listed in [`on_both_backends!`]; it opens the store (again, to simulate a restart) with
//! [`TestDb::open`]. Without a PostgreSQL server the PostgreSQL half is skipped with a
//! message on stderr (and `.ci/run` says so loudly). Tests of what only one backend has
//! (SQLite's file safety and group commit, PostgreSQL's locks) live beside that backend.

mod review_suite;

use super::*;
use crate::domain::{Address, Buyer, Money, Order, OrderItem};

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

on_both_backends!(a_repeated_ipn_is_stored_once_and_creates_no_job);

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
