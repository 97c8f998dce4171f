//! Refunds, chargebacks and cancellations through the daemon against the fake Konnektive,
//! each after the import it refers to: the right transaction is refunded externally (no
//! gateway) or marked charged back, the right purchase or order is cancelled; and a refund
//! that arrives before its payment waits for the import instead of failing for good.

mod support;

use std::time::Duration;

use ipn_bridge::domain::JobId;
use ipn_bridge::store::Store;
use support::fake_konnektive::{FakeConfig, FakeKonnektive, FakeTransaction};
use support::*;

struct World {
    /// Holds the temporary directory (configuration and database) for the test's life.
    _work: Workdir,
    fake: FakeKonnektive,
    daemon: ipn_bridge::app::Running,
    store: Store,
}

async fn world() -> World {
    let work = Workdir::new();
    let fake = FakeKonnektive::start(FakeConfig {
        password: KONNEKTIVE_PASSWORD.into(),
        campaigns: [(12, vec![31, 32, 33])].into(),
        ..FakeConfig::default()
    })
    .await;
    let text = Setup::new(&fake.base_url).toml(&work.db()).replace(
        "payment = \"import_order\"\n",
        "payment = \"import_order\"\nrefund = \"refund\"\nchargeback = \"chargeback\"\n\
         rebill_cancelled = \"cancel_purchase\"\nlast_paid_day = \"cancel_order\"\n",
    );
    std::fs::write(work.config_path(), text).expect("config");
    let daemon = start_daemon_at(&work.config_path()).await;
    let store = open_store(&work);
    World {
        _work: work,
        fake,
        daemon,
        store,
    }
}

impl World {
    async fn post(&self, body: Vec<u8>) {
        let (status, text) = post_ipn(self.daemon.addr, "ds24", body).await;
        assert_eq!((status, text.as_str()), (200, "OK"));
    }

    /// Waits until `n` jobs exist and all are delivered.
    async fn delivered(&self, n: usize) {
        let store = self.store.clone();
        wait_for(Duration::from_secs(15), "jobs delivered", move || {
            let store = store.clone();
            async move {
                let jobs = store.list_jobs(Default::default()).await.ok()?;
                (jobs.len() == n && jobs.iter().all(|j| j.state == "delivered")).then_some(())
            }
        })
        .await;
    }

    fn sale_of(&self, order_id: &str) -> FakeTransaction {
        self.fake
            .transactions()
            .into_iter()
            .find(|t| t.order_id == order_id && t.txn_type == "SALE")
            .expect("the import's SALE transaction")
    }
}

#[tokio::test]
async fn a_refund_after_the_import_is_recorded_externally_on_its_transaction() {
    let w = world().await;
    w.post(fixture("01_on_payment_single_product.txt")).await;
    w.delivered(1).await;
    w.post(fixture("04_on_refund.txt")).await;
    w.delivered(2).await;

    let order = &w.fake.orders()[0];
    let sale = w.sale_of(&order.order_id);
    let refunds: Vec<FakeTransaction> = w
        .fake
        .transactions()
        .into_iter()
        .filter(|t| t.txn_type == "REFUND")
        .collect();
    assert_eq!(refunds.len(), 1, "exactly one refund");
    assert_eq!(refunds[0].order_id, order.order_id);
    assert_eq!(refunds[0].parent_transaction_id, Some(sale.transaction_id));
    assert_eq!(refunds[0].amount_cents.abs(), 9700);
    assert!(refunds[0].external, "externalRefund=1: no gateway touched");
    assert_eq!(refunds[0].merchant_txn_id.as_deref(), Some("51877310"));
    let request = &w.fake.requests_to("transactions/refund")[0];
    assert_eq!(request.param("externalRefund"), Some("1"));
    let ledger = w.store.ledger().await.expect("ledger");
    assert_eq!(ledger.len(), 2);
    assert_eq!(
        ledger[1].target_order_id.as_deref(),
        Some(order.order_id.as_str())
    );
    w.daemon.stop().await;
}

#[tokio::test]
async fn a_chargeback_after_the_import_marks_its_transaction() {
    let w = world().await;
    w.post(variant(
        "01_on_payment_single_product.txt",
        &[("order_id", "CB000001")],
    ))
    .await;
    w.delivered(1).await;
    w.post(variant("05_on_chargeback.txt", &[("order_id", "CB000001")]))
        .await;
    w.delivered(2).await;

    let order = &w.fake.orders()[0];
    let sale = w.sale_of(&order.order_id);
    assert!(sale.is_chargedback);
    assert_eq!(sale.chargeback_amount_cents, Some(9700));
    assert_eq!(sale.chargeback_reason_code.as_deref(), Some("DS24"));
    assert!(
        sale.chargeback_note
            .as_deref()
            .unwrap_or("")
            .contains("CB000001")
    );
    let request = &w.fake.requests_to("transactions/update")[0];
    assert_eq!(request.param("markChargeback"), Some("1"));
    assert!(w.fake.requests_to("transactions/refund").is_empty());
    w.daemon.stop().await;
}

#[tokio::test]
async fn cancelled_rebilling_cancels_the_purchase_and_the_last_paid_day_the_order() {
    let w = world().await;
    w.post(fixture("03b_on_payment_subscription_first.txt"))
        .await;
    w.delivered(1).await;
    w.post(fixture("08_on_rebill_cancelled.txt")).await;
    w.delivered(2).await;
    let order = w.fake.orders()[0].clone();
    assert_eq!(order.items[0].purchase_status, "CANCELLED");
    let request = &w.fake.requests_to("purchase/cancel")[0];
    assert_eq!(
        request.param("purchaseId"),
        Some(order.items[0].purchase_id.as_str())
    );

    w.post(fixture("11_last_paid_day.txt")).await;
    w.delivered(3).await;
    let order = &w.fake.orders()[0];
    assert_eq!(order.order_status, "CANCELLED");
    assert!(
        order
            .cancel_reason
            .as_deref()
            .unwrap_or("")
            .contains("last paid day"),
        "{:?}",
        order.cancel_reason
    );
    w.daemon.stop().await;
}

#[tokio::test]
async fn a_refund_that_arrives_before_its_payment_waits_for_the_import() {
    let w = world().await;
    let refund = variant("04_on_refund.txt", &[("order_id", "EARLY001")]);
    let payment = variant(
        "01_on_payment_single_product.txt",
        &[("order_id", "EARLY001")],
    );
    w.post(refund).await;
    // The refund finds no import yet and says so.
    let store = w.store.clone();
    wait_for(
        Duration::from_secs(10),
        "the refund's first attempt",
        move || {
            let store = store.clone();
            async move {
                let attempts = store.attempts(JobId(1)).await.ok()?;
                attempts.iter().find(|a| a.finished_at.is_some()).cloned()
            }
        },
    )
    .await;
    let job = w.store.job(JobId(1)).await.expect("job");
    assert_eq!(job.state, "pending");
    assert!(
        job.last_error.as_deref().unwrap_or("").contains(
            "the import of Digistore24 order EARLY001 item 40118822 (payment 51840233) was not found"
        ),
        "{:?}",
        job.last_error
    );
    // The payment arrives later: it is imported at once (it never waits for a refund),
    // and the refund follows.
    w.post(payment).await;
    w.delivered(2).await;
    assert_eq!(w.fake.orders().len(), 1);
    let refunds = w
        .fake
        .transactions()
        .into_iter()
        .filter(|t| t.txn_type == "REFUND")
        .count();
    assert_eq!(refunds, 1);
    w.daemon.stop().await;
}
