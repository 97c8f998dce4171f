//! Refunds, chargebacks and cancellations through the daemon against the fake Konnektive,
//! each after the import it refers to: the right transaction is refunded externally (no
//! gateway) or marked charged back, the right purchase or order is cancelled; and a refund
//! that arrives before its payment waits for the import instead of failing for good.
//!
//! Which import a reversal belongs to: the one whose payment has the reversal's
//! `parent_transaction_id` as its `transaction_id` or as its own parent; the only import of
//! the order item otherwise; no guess among several; and a payment this integration skipped
//! was never imported, which ends the reversal at once. Refunds record an item's share, capped
//! at what remains, with `fullRefund=1` only when that empties the Konnektive transaction.

mod support;

use std::time::Duration;

use ipn_bridge::domain::JobId;
use ipn_bridge::store::{JobRow, Store};
use support::fake_konnektive::{FakeKonnektive, FakeOrder, FakeTransaction};
use support::*;

struct World {
    /// Holds the temporary directory (configuration and database) for the test's life.
    _work: Workdir,
    fake: FakeKonnektive,
    daemon: ipn_bridge::app::Running,
    store: Store,
}

/// The daemon with every reversal action on, against the fake whose campaign 12 books USD
/// (the currency of fixture 01 and its variants).
async fn world() -> World {
    world_with(&Setup::new("http://set-by-world"), "").await
}

/// Like [`world`], with `setup`'s delivery knobs and `extra` lines in `[integration.main]`.
async fn world_with(setup: &Setup, extra: &str) -> World {
    let work = Workdir::new();
    let fake = FakeKonnektive::start(fixture_konnektive()).await;
    let mut setup = setup.clone();
    setup.konnektive_url = fake.base_url.clone();
    let text = setup
        .toml(&work.db())
        .replace(
            "payment = \"import_order\"\n",
            "payment = \"import_order\"\nrefund = \"refund\"\nchargeback = \"chargeback\"\n\
             rebill_cancelled = \"cancel_purchase\"\nlast_paid_day = \"cancel_order\"\n",
        )
        .replace(
            "[integration.main]\n",
            &format!("[integration.main]\n{extra}"),
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

    /// Waits until `n` jobs exist and none is pending or in flight; returns them.
    async fn settled(&self, n: usize) -> Vec<JobRow> {
        jobs_settled(&self.store, n).await
    }

    /// The Konnektive order imported for campaign product `product` (the n-th such, 0-based).
    fn order_of(&self, product: u64, n: usize) -> FakeOrder {
        self.fake
            .orders()
            .into_iter()
            .filter(|o| o.items.iter().any(|i| i.product_id == product))
            .nth(n)
            .expect("the imported order")
    }

    /// `ipn-bridge queue show ID` against the daemon's database: stdout.
    fn queue_show(&self, job: i64) -> String {
        let out = assert_cmd::Command::new(env!("CARGO_BIN_EXE_ipn-bridge"))
            .args(["queue", "show", &job.to_string(), "-c"])
            .arg(self._work.config_path())
            .env_remove("RUST_LOG")
            .timeout(Duration::from_secs(30))
            .output()
            .expect("run ipn-bridge");
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
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
    // The subscription fixtures are EUR orders.
    w.fake.set_campaign_currency(12, Some("EUR"));
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

/// A refund IPN of fixture order K7Q2M9XA: item `item` (product `product`) of payment
/// `parent`, refund transaction `txn`, for `amount` (every amount field, so the refund is the
/// item's share whichever field the rules read).
fn refund_of(item: &str, product: &str, parent: &str, txn: &str, amount: &str) -> Vec<u8> {
    let negative = format!("-{amount}");
    variant(
        "04_on_refund.txt",
        &[
            ("order_item_id", item),
            ("product_id", product),
            ("parent_transaction_id", parent),
            ("transaction_id", txn),
            ("amount", amount),
            ("amount_brutto", amount),
            ("amount_netto", amount),
            ("product_amount", amount),
            ("product_netto_amount", amount),
            ("product_txn_amount", amount),
            ("product_txn_netto_amount", amount),
            ("first_amount", amount),
            ("transaction_amount", &negative),
        ],
    )
}

#[tokio::test]
async fn an_add_on_order_is_refunded_item_by_item_on_the_right_order_and_capped() {
    let w = world().await;
    // Main product (97.00) and its add-on (27.00): one Digistore24 payment, two items, two
    // Konnektive orders; both items carry transaction 51840233.
    w.post(fixture("01_on_payment_single_product.txt")).await;
    w.post(fixture("16_on_payment_addon_item.txt")).await;
    w.delivered(2).await;
    let main = w.order_of(31, 0);
    let addon = w.order_of(32, 0);
    assert_eq!((main.total_cents, addon.total_cents), (9700, 2700));

    // The add-on is refunded in full: its own order, fullRefund=1 (it empties it).
    w.post(refund_of(
        "40118823", "412350", "51840233", "51877401", "27.00",
    ))
    .await;
    w.delivered(3).await;
    let sent = &w.fake.requests_to("transactions/refund")[0];
    assert_eq!(
        sent.param("transactionId"),
        Some(
            w.sale_of(&addon.order_id)
                .transaction_id
                .to_string()
                .as_str()
        )
    );
    assert_eq!(sent.param("refundAmount"), Some("27.00"));
    assert_eq!(sent.param("fullRefund"), Some("1"));
    assert_eq!(w.order_of(32, 0).refund_remaining_cents, 0);
    assert_eq!(
        w.order_of(31, 0).refund_remaining_cents,
        9700,
        "main untouched"
    );

    // 40.00 of the main item: a partial refund, no fullRefund, whatever the action calls it.
    w.post(refund_of(
        "40118822", "412346", "51840233", "51877402", "40.00",
    ))
    .await;
    w.delivered(4).await;
    let sent = &w.fake.requests_to("transactions/refund")[1];
    assert_eq!(
        sent.param("transactionId"),
        Some(
            w.sale_of(&main.order_id)
                .transaction_id
                .to_string()
                .as_str()
        )
    );
    assert_eq!(sent.param("refundAmount"), Some("40.00"));
    assert_eq!(sent.param("fullRefund"), None);
    assert_eq!(w.order_of(31, 0).refund_remaining_cents, 5700);

    // Another 70.00 of the main item: only 57.00 remain, so 57.00 are recorded, as the rest.
    w.post(refund_of(
        "40118822", "412346", "51840233", "51877403", "70.00",
    ))
    .await;
    let jobs = w.settled(5).await;
    assert_eq!(jobs[4].state, "delivered", "{jobs:?}");
    let sent = &w.fake.requests_to("transactions/refund")[2];
    assert_eq!(sent.param("refundAmount"), Some("57.00"));
    assert_eq!(sent.param("fullRefund"), Some("1"));
    assert_eq!(w.order_of(31, 0).refund_remaining_cents, 0);
    let shown = w.queue_show(jobs[4].id);
    assert!(
        shown.contains("import: matched by transaction_id 51840233"),
        "{shown}"
    );
    assert!(shown.contains("capped at 57.00"), "{shown}");
    w.daemon.stop().await;
}

#[tokio::test]
async fn a_refund_naming_the_payments_parent_transaction_finds_that_import() {
    let w = world().await;
    // Two payments of the same order item, as in the real capture: each has a
    // transaction_id and a parent_transaction_id.
    let payment = |txn: &str, parent: &str| {
        variant(
            "01_on_payment_single_product.txt",
            &[("transaction_id", txn), ("parent_transaction_id", parent)],
        )
    };
    w.post(payment("3999938", "3999937")).await;
    w.post(payment("4000108", "4000107")).await;
    w.delivered(2).await;
    let first = w.order_of(31, 0);
    assert_eq!(
        first.param("custom1"),
        Some("DS24-K7Q2M9XA-40118822-3999938")
    );

    // The refund names the first payment by its parent id.
    w.post(refund_of(
        "40118822", "412346", "3999937", "51877501", "97.00",
    ))
    .await;
    let jobs = w.settled(3).await;
    assert_eq!(jobs[2].state, "delivered", "{jobs:?}");
    let refunds: Vec<FakeTransaction> = w
        .fake
        .transactions()
        .into_iter()
        .filter(|t| t.txn_type == "REFUND")
        .collect();
    assert_eq!(refunds.len(), 1);
    assert_eq!(
        refunds[0].order_id, first.order_id,
        "the first payment's order"
    );
    let attempts = w.store.attempts(JobId(jobs[2].id)).await.expect("attempts");
    let request = attempts[0].request.clone().unwrap_or_default();
    assert!(
        request.starts_with("import: matched by parent_transaction_id 3999937"),
        "{request}"
    );
    let shown = w.queue_show(jobs[2].id);
    assert!(
        shown.contains("matched by parent_transaction_id 3999937"),
        "{shown}"
    );
    w.daemon.stop().await;
}

#[tokio::test]
async fn a_refund_matching_none_of_several_imports_is_not_guessed() {
    let mut setup = Setup::new("http://set-by-world");
    setup.give_up_after = "1s";
    let w = world_with(&setup, "").await;
    for (txn, parent) in [("3999938", "3999937"), ("4000108", "4000107")] {
        w.post(variant(
            "01_on_payment_single_product.txt",
            &[("transaction_id", txn), ("parent_transaction_id", parent)],
        ))
        .await;
    }
    w.delivered(2).await;
    // A payment id neither import carries.
    w.post(refund_of(
        "40118822", "412346", "5555555", "51877601", "97.00",
    ))
    .await;
    let jobs = w.settled(3).await;
    let refund = &jobs[2];
    assert_eq!(refund.state, "dead", "dead once give_up_after has passed");
    assert!(refund.attempts >= 2, "retried until then: {refund:?}");
    let error = refund.last_error.clone().unwrap_or_default();
    assert!(
        error.contains(
            "2 imports of Digistore24 order K7Q2M9XA item 40118822 (jobs 2, 1) and none has \
             transaction_id or parent_transaction_id 5555555; not guessing"
        ),
        "{error}"
    );
    assert!(w.fake.requests_to("transactions/refund").is_empty());
    w.daemon.stop().await;
}

#[tokio::test]
async fn a_refund_of_the_only_import_is_matched_when_its_ids_are_unknown() {
    let w = world().await;
    w.post(fixture("01_on_payment_single_product.txt")).await;
    w.delivered(1).await;
    // The refund names an id the payment IPN did not carry, and the store knows no payment
    // by that id: the only import of the order item is the one.
    w.post(refund_of(
        "40118822", "412346", "51840299", "51877701", "97.00",
    ))
    .await;
    w.delivered(2).await;
    assert_eq!(w.fake.requests_to("transactions/refund").len(), 1);
    let attempts = w.store.attempts(JobId(2)).await.expect("attempts");
    let request = attempts[0].request.clone().unwrap_or_default();
    assert!(
        request.starts_with("import: the only import of order K7Q2M9XA item 40118822"),
        "{request}"
    );
    w.daemon.stop().await;
}

#[tokio::test]
async fn a_refund_of_a_skipped_follow_up_payment_ends_dead_saying_it_was_never_imported() {
    let w = world_with(
        &Setup::new("http://set-by-world"),
        "followup_payments = false\n",
    )
    .await;
    w.fake.set_campaign_currency(12, Some("EUR"));
    // The first payment of the subscription is imported; payment #3 is skipped.
    w.post(fixture("03b_on_payment_subscription_first.txt"))
        .await;
    w.delivered(1).await;
    w.post(fixture("15_on_payment_followup_seq3.txt")).await;
    let routes = w
        .store
        .routes_of_ipn(ipn_bridge::domain::EventId(2))
        .await
        .expect("routes");
    assert_eq!(routes[0].1, "skipped", "{routes:?}");

    // Payment #3 (transaction 51836190) is refunded.
    let refund = variant(
        "04_on_refund.txt",
        &[
            ("order_id", "M4X9T2RB"),
            ("order_item_id", "40099871"),
            ("product_id", "412360"),
            ("parent_transaction_id", "51836190"),
            ("transaction_id", "51900001"),
            ("buyer_email", "lena.schmidt@example.de"),
            ("email", "lena.schmidt@example.de"),
            ("order_date", "2025-01-10"),
            ("currency", "EUR"),
            ("transaction_currency", "EUR"),
            ("amount", "29.00"),
            ("product_txn_amount", "29.00"),
            ("transaction_amount", "-29.00"),
        ],
    );
    w.post(refund).await;
    let jobs = w.settled(2).await;
    let job = &jobs[1];
    assert_eq!(job.state, "dead", "{jobs:?}");
    assert_eq!(job.attempts, 1, "at once, not after give_up_after");
    let error = job.last_error.clone().unwrap_or_default();
    assert!(
        error.starts_with("payment 51836190 was never imported by this integration: "),
        "{error}"
    );
    assert!(error.contains("followup_payments = false"), "{error}");
    assert!(
        w.fake.requests_to("transactions/refund").is_empty(),
        "the first payment's import is not refunded instead"
    );
    w.daemon.stop().await;
}
