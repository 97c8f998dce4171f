//! Order data end to end, over real sockets: real Digistore24 IPNs posted to the daemon
//! arrive in the fake Konnektive (which requires the billing and shipping address as the
//! real one does) as complete `order/import` requests: the fallback address for a digital
//! order, state codes for written-out states, the country from the IPN, the right price.

mod support;

use std::time::Duration;

use ipn_bridge::store::Store;
use support::fake_konnektive::{FakeConfig, FakeKonnektive, FakeOrder};
use support::*;

async fn fake() -> FakeKonnektive {
    FakeKonnektive::start(FakeConfig {
        password: KONNEKTIVE_PASSWORD.into(),
        campaigns: [(12, vec![31, 32, 33])].into(),
        // The capture books EUR, fixture 01 USD: campaign/query names no currency here.
        currencies: [(12, None)].into(),
        ..FakeConfig::default()
    })
    .await
}

/// Waits until the daemon's only job is delivered, and fails with the job's story if it
/// ends dead instead.
async fn delivered(store: &Store) {
    let state = wait_for(Duration::from_secs(10), "the job to finish", || {
        let store = store.clone();
        async move {
            let jobs = store.list_jobs(Default::default()).await.ok()?;
            let job = jobs.into_iter().next()?;
            matches!(job.state.as_str(), "delivered" | "dead").then_some(job)
        }
    })
    .await;
    assert_eq!(state.state, "delivered", "{state:?}");
}

/// Posts `body`, waits for the import and returns the one order Konnektive created.
async fn import(body: Vec<u8>) -> FakeOrder {
    let work = Workdir::new();
    let fake = fake().await;
    let daemon = start_daemon(&work, &Setup::new(&fake.base_url)).await;
    let (status, text) = post_ipn(daemon.addr, "ds24", body).await;
    assert_eq!((status, text.as_str()), (200, "OK"));
    delivered(&open_store(&work)).await;
    daemon.stop().await;
    let orders = fake.orders();
    assert_eq!(orders.len(), 1, "exactly one order");
    orders.into_iter().next().expect("one order")
}

/// The real capture of a digital order has no street, city or zip. Without the fallback
/// address the strict fake refuses it (`shipAddress1 is a required field`, …) and the job is
/// dead-lettered; with it, it becomes one order.
#[tokio::test]
async fn the_real_capture_of_a_digital_order_is_imported_with_the_fallback_address() {
    let order = import(fixture("20_capture_digital_no_address.txt")).await;
    for (name, value) in [
        ("address1", "Digital delivery"),
        ("city", "Online"),
        ("postalCode", "00000"),
        ("country", "CH"),
        ("shipAddress1", "Digital delivery"),
        ("shipCity", "Online"),
        ("shipPostalCode", "00000"),
        ("shipCountry", "CH"),
        ("firstName", "Test"),
        ("lastName", "Kauf"),
        ("emailAddress", "kaeufer@example.de"),
        ("product1_id", "33"),
        ("product1_qty", "1"),
        ("product1_price", "49.00"),
        ("product1_shipPrice", "0.00"),
        ("custom1", "DS24-A1B2C3D4-33299237-3999938"),
    ] {
        assert_eq!(order.param(name), Some(value), "parameter {name}");
    }
    for absent in ["state", "shipState", "affId"] {
        assert_eq!(order.param(absent), None, "{absent} must not be sent");
    }
    assert_eq!(order.total_cents, 4900, "what the buyer paid");
}

#[tokio::test]
async fn a_written_out_us_state_arrives_as_its_code() {
    let body = variant(
        "01_on_payment_single_product.txt",
        &[
            ("billing_state", "California"),
            ("address_state", "California"),
        ],
    );
    let order = import(body).await;
    assert_eq!(order.param("state"), Some("CA"));
    assert_eq!(order.param("shipState"), Some("CA"));
    assert_eq!(order.param("country"), Some("US"));
    assert_eq!(order.param("address1"), Some("742 Evergreen Terrace"));
}

/// Shipping and quantity reach Konnektive so that its total is what the buyer paid.
#[tokio::test]
async fn shipping_and_quantity_make_konnektives_total_the_amount_paid() {
    let body = variant(
        "01_on_payment_single_product.txt",
        &[
            ("quantity", "2"),
            ("product_txn_amount", "105.90"),
            ("product_txn_shipping", "5.90"),
            ("amount", "105.90"),
            ("transaction_amount", "105.90"),
        ],
    );
    let order = import(body).await;
    assert_eq!(order.param("product1_qty"), Some("2"));
    assert_eq!(order.param("product1_price"), Some("50.00"));
    assert_eq!(order.param("product1_shipPrice"), Some("5.90"));
    assert_eq!(order.total_cents, 10590);
}
