//! Receiving IPNs over HTTP: signature checks, every refusal with its status and reason,
//! idempotency, and that `OK` is only ever said after the IPN is stored.

mod support;

use std::time::Duration;

use ipn_bridge::ipn::KeyCase;
use support::fake_konnektive::FakeKonnektive;
use support::*;

async fn fake() -> FakeKonnektive {
    FakeKonnektive::start(fixture_konnektive()).await
}

/// The published vectors are signed with another passphrase than our source's; re-signed
/// bodies of each vector's fields pass end to end, and the vectors themselves verify in the
/// `ipn` unit tests. Here: a source configured with the vectors' passphrase accepts the
/// published `sha_sign` values verbatim.
#[tokio::test]
async fn published_signature_vectors_are_accepted_over_http() {
    let vectors: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/ipn-signature-vectors.json"))
            .expect("vectors json");
    let passphrase = vectors["passphrase"].as_str().expect("passphrase");
    let work = Workdir::new();
    let fake = fake().await;
    let setup = Setup::new(&fake.base_url);
    let text = setup.toml(&work.db()).replace(PASSPHRASE, passphrase);
    std::fs::write(work.config_path(), text).expect("config");
    let config = ipn_bridge::config::load(&work.config_path())
        .expect("config")
        .config;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let daemon = ipn_bridge::app::start(
        config,
        listener,
        std::sync::Arc::new(ipn_bridge::clock::SystemClock),
    )
    .await
    .expect("start");
    for v in vectors["vectors"].as_array().expect("vectors") {
        let mut pairs: Vec<(String, String)> = v["params"]
            .as_object()
            .expect("params")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .filter(|(k, _)| k != "sha_sign")
            .collect();
        pairs.push((
            "sha_sign".into(),
            v["sha_sign"].as_str().expect("sig").into(),
        ));
        let (status, body) = post_ipn(daemon.addr, "ds24", encode(&pairs)).await;
        assert_eq!((status, body.as_str()), (200, "OK"), "vector {}", v["name"]);
    }
    daemon.stop().await;
}

#[tokio::test]
async fn bad_signatures_are_refused_with_403_and_store_nothing() {
    let work = Workdir::new();
    let fake = fake().await;
    let daemon = start_daemon(&work, &Setup::new(&fake.base_url)).await;
    let good = fixture("01_on_payment_single_product.txt");

    // A value changed after signing.
    let tampered = String::from_utf8(good.clone())
        .expect("utf8")
        .replace("amount=97.00", "amount=9.70")
        .into_bytes();
    // No sha_sign at all.
    let mut unsigned = pairs(&good);
    unsigned.retain(|(k, _)| k != "sha_sign");
    // Signed with another passphrase.
    let mut other = pairs(&good);
    other.retain(|(k, _)| k != "sha_sign");
    let sig = ipn_bridge::ipn::sign(&other, "not-the-passphrase", KeyCase::Original);
    other.push(("sha_sign".into(), sig));

    for (name, body) in [
        ("tampered", tampered),
        ("missing", encode(&unsigned)),
        ("wrong passphrase", encode(&other)),
    ] {
        let (status, text) = post_ipn(daemon.addr, "ds24", body).await;
        assert_eq!(status, 403, "{name}: {text}");
        assert!(
            !text.is_empty() && text != "OK",
            "{name}: reason expected, got {text:?}"
        );
    }
    let store = open_store(&work);
    assert!(store.list_ipns(None).await.expect("list").is_empty());
    assert!(
        store
            .list_jobs(Default::default())
            .await
            .expect("jobs")
            .is_empty()
    );
    assert!(fake.requests().is_empty());
    daemon.stop().await;
}

#[tokio::test]
async fn a_payment_becomes_exactly_one_import_with_the_right_fields() {
    let work = Workdir::new();
    let fake = fake().await;
    let daemon = start_daemon(&work, &Setup::new(&fake.base_url)).await;
    let body = fixture("01_on_payment_single_product.txt");

    let (status, text) = post_ipn(daemon.addr, "ds24", body.clone()).await;
    assert_eq!((status, text.as_str()), (200, "OK"));

    let store = open_store(&work);
    let job = wait_for(Duration::from_secs(10), "the job to be delivered", || {
        let store = store.clone();
        async move {
            let jobs = store.list_jobs(Default::default()).await.ok()?;
            jobs.into_iter().find(|j| j.state == "delivered")
        }
    })
    .await;

    // The same IPN again, and the same IPN signed with the upper-case key convention.
    let (status, text) = post_ipn(daemon.addr, "ds24", body).await;
    assert_eq!((status, text.as_str()), (200, "OK"));
    let upper = fixture("21_on_payment_upper_signed.txt");
    let (status, text) = post_ipn(daemon.addr, "ds24", upper).await;
    assert_eq!((status, text.as_str()), (200, "OK"));

    assert_eq!(store.list_ipns(None).await.expect("ipns").len(), 1);
    assert_eq!(
        store
            .list_jobs(Default::default())
            .await
            .expect("jobs")
            .len(),
        1
    );

    let imports = fake.requests_to("order/import");
    assert_eq!(imports.len(), 1, "exactly one order/import");
    let req = &imports[0];
    assert_eq!(req.method, "POST");
    assert!(
        req.query.is_empty(),
        "credentials must not be in the URL: {}",
        req.query
    );
    let expect = [
        ("loginId", KONNEKTIVE_LOGIN),
        ("password", KONNEKTIVE_PASSWORD),
        ("campaignId", "12"),
        ("paySource", "PREPAID"),
        ("product1_id", "31"),
        ("product1_qty", "1"),
        ("product1_price", "97.00"),
        ("product1_shipPrice", "0.00"),
        ("firstName", "Jane"),
        ("lastName", "Doe"),
        ("emailAddress", "jane.doe@example.com"),
        ("phoneNumber", "15415550199"),
        ("address1", "742 Evergreen Terrace"),
        ("city", "Springfield"),
        ("state", "OR"),
        ("postalCode", "97403"),
        ("country", "US"),
        ("billShipSame", "1"),
        ("shipFirstName", "Jane"),
        ("shipLastName", "Doe"),
        ("shipAddress1", "742 Evergreen Terrace"),
        ("shipCity", "Springfield"),
        ("shipState", "OR"),
        ("shipPostalCode", "97403"),
        ("shipCountry", "US"),
        ("custom1", "DS24-K7Q2M9XA-40118822-51840233"),
        ("custom2", "aff-bestdeals"),
    ];
    for (name, value) in expect {
        assert_eq!(req.param(name), Some(value), "parameter {name}");
    }
    assert!(req.param("cardNumber").is_none());
    // The affiliate reaches Konnektive only where `fields` maps it (here custom2), never
    // as an affId Konnektive may not know.
    assert!(req.param("affId").is_none());

    // The ledger keeps what Konnektive returned.
    let orders = fake.orders();
    assert_eq!(orders.len(), 1);
    let ledger = store.ledger().await.expect("ledger");
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].job_id, job.id);
    assert_eq!(ledger[0].ds24_order_id, "K7Q2M9XA");
    assert_eq!(ledger[0].ds24_item.as_deref(), Some("40118822"));
    assert_eq!(ledger[0].ds24_transaction_id.as_deref(), Some("51840233"));
    assert_eq!(
        ledger[0].target_order_id.as_deref(),
        Some(orders[0].order_id.as_str())
    );
    assert_eq!(
        ledger[0].target_customer_id.as_deref(),
        Some(orders[0].customer_id.to_string().as_str())
    );
    assert_eq!(
        ledger[0].purchase_ids,
        vec![orders[0].items[0].purchase_id.clone()]
    );
    daemon.stop().await;
}

#[tokio::test]
async fn connection_tests_unknown_events_and_get_answer_ok_without_jobs() {
    let work = Workdir::new();
    let fake = fake().await;
    let daemon = start_daemon(&work, &Setup::new(&fake.base_url)).await;

    let (status, text) = post_ipn(daemon.addr, "ds24", fixture("10_connection_test.txt")).await;
    assert_eq!((status, text.as_str()), (200, "OK"));
    let unknown = variant(
        "01_on_payment_single_product.txt",
        &[("event", "on_something_new")],
    );
    let (status, text) = post_ipn(daemon.addr, "ds24", unknown).await;
    assert_eq!((status, text.as_str()), (200, "OK"));
    let affiliation = fixture("12_on_affiliation.txt");
    let (status, text) = post_ipn(daemon.addr, "ds24", affiliation).await;
    assert_eq!((status, text.as_str()), (200, "OK"));

    let resp = reqwest::get(format!("http://{}/ipn/ds24", daemon.addr))
        .await
        .expect("GET");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.text().await.expect("body"), "OK");

    let store = open_store(&work);
    let ipns = store.list_ipns(None).await.expect("ipns");
    let events: Vec<&str> = ipns.iter().map(|i| i.event.as_str()).collect();
    assert_eq!(
        events,
        ["connection_test", "on_something_new", "on_affiliation"]
    );
    assert!(
        store
            .list_jobs(Default::default())
            .await
            .expect("jobs")
            .is_empty()
    );
    // Each stored IPN records why the integration did nothing.
    for ipn in &ipns {
        let routes = store
            .routes_of_ipn(ipn_bridge::domain::EventId(ipn.id))
            .await
            .expect("routes");
        assert_eq!(routes.len(), 1, "{}", ipn.event);
        assert_eq!(routes[0].1, "skipped");
        assert!(
            routes[0].2.contains("not an order event"),
            "{:?}",
            routes[0]
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(fake.requests().is_empty());
    daemon.stop().await;
}

#[tokio::test]
async fn refusals_have_their_status_and_a_reason() {
    let work = Workdir::new();
    let fake = fake().await;
    let daemon = start_daemon(&work, &Setup::new(&fake.base_url)).await;
    let good = fixture("01_on_payment_single_product.txt");

    let (status, text) = post_ipn(daemon.addr, "nosuchsource", good.clone()).await;
    assert_eq!(status, 404, "{text}");
    assert!(text.contains("unknown source"), "{text}");

    let (status, text) = post_raw(daemon.addr, "ds24", good.clone(), "application/json").await;
    assert_eq!(status, 415, "{text}");
    assert!(text.contains("x-www-form-urlencoded"), "{text}");

    let mut big = good.clone();
    big.extend(std::iter::repeat_n(b'x', 70_000));
    let (status, text) = post_ipn(daemon.addr, "ds24", big).await;
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("65536"), "{text}");

    let mut broken = b"event=on_payment&buyer_first_name=J%FCrg&".to_vec();
    broken.extend_from_slice(&good);
    let (status, text) = post_ipn(daemon.addr, "ds24", broken).await;
    assert_eq!(status, 400, "{text}");

    let store = open_store(&work);
    assert!(store.list_ipns(None).await.expect("ipns").is_empty());
    daemon.stop().await;
}

/// Another process holds the database's write lock (a backup tool, a stray `sqlite3`
/// shell): the IPN cannot be committed, so the answer must be 503, never `OK`; once the
/// lock is gone, the retried IPN is stored.
#[tokio::test]
async fn an_unwritable_database_answers_503_never_ok() {
    let work = Workdir::new();
    let fake = fake().await;
    let daemon = start_daemon(&work, &Setup::new(&fake.base_url)).await;

    let locker = rusqlite::Connection::open(work.db()).expect("open");
    locker.execute_batch("BEGIN EXCLUSIVE").expect("lock");

    let body = fixture("01_on_payment_single_product.txt");
    let (status, text) = post_ipn(daemon.addr, "ds24", body.clone()).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("not stored"), "{text}");
    assert!(text.contains("locked") || text.contains("busy"), "{text}");

    locker.execute_batch("ROLLBACK").expect("unlock");
    drop(locker);
    let (status, text) = post_ipn(daemon.addr, "ds24", body).await;
    assert_eq!((status, text.as_str()), (200, "OK"));
    let store = open_store(&work);
    assert_eq!(store.list_ipns(None).await.expect("ipns").len(), 1);
    daemon.stop().await;
}
