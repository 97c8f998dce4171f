//! Routing through the real daemon: what each integration decides for real IPNs, posted over
//! HTTP to `start_daemon` and checked in the store (and, where an action follows, at the
//! fake Konnektive). Follow-up filtering of cancellations, repeated subscription events,
//! currencies, grouped IPNs, key-case replays (issue 9, defect 1) and the refund of one
//! item of an add-on order.
//!
//! The fixtures these tests post are signed files under `tests/fixtures/ipn/`, made from
//! the real capture (`20_capture_digital_no_address.txt`) or an older fixture by the recipes
//! in [`recipes`]; `routing_fixtures_are_what_their_recipes_make` keeps files and recipes
//! together (`IPN_BRIDGE_WRITE_FIXTURES=1 cargo test --test routing routing_fixtures` writes
//! them again).

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use ipn_bridge::domain::EventId;
use ipn_bridge::ipn::KeyCase;
use ipn_bridge::store::{NewIpn, Store};
use support::fake_konnektive::{FakeConfig, FakeKonnektive};
use support::smtp::SmtpServer;
use support::*;

// ---------------------------------------------------------------- fixtures

/// One fixture file: `base` with field names passed through `rename`, then `changes` (a
/// field set in place, or added at the end), signed again under `key_case`.
struct Recipe {
    file: &'static str,
    base: &'static str,
    rename: fn(&str) -> String,
    changes: Vec<(&'static str, &'static str)>,
    key_case: KeyCase,
}

fn keep(name: &str) -> String {
    name.to_owned()
}

/// The real capture: a digital order (EUR, no postal address) of product 512345.
const CAPTURE: &str = "20_capture_digital_no_address.txt";
const CANCELLED_AGAIN: &str = "40_rebill_cancelled_again.txt";
const ADDON_MAIN: &str = "41_addon_order_main_item.txt";
const ADDON_ITEM: &str = "42_addon_order_addon_item.txt";
const ADDON_REFUND: &str = "43_addon_order_refund_of_addon_item.txt";
const GROUPED: &str = "44_grouped_items.txt";
const UPPER_TRANSACTION_ID: &str = "45_upper_signed_TRANSACTION_ID.txt";
const MIXED_TRANSACTION_ID: &str = "46_upper_signed_Transaction_Id.txt";
const ALL_NAMES_UPPER: &str = "47_upper_signed_all_names_upper.txt";

/// A postal address for the capture's (empty) address fields: Konnektive needs one to
/// import an order, and the capture's order form asked for none.
const ADDRESS: [(&str, &str); 10] = [
    ("address_street", "Bahnhofstrasse 12"),
    ("address_street_name", "Bahnhofstrasse"),
    ("address_street_number", "12"),
    ("address_zipcode", "8001"),
    ("address_city", "Zürich"),
    ("billing_street", "Bahnhofstrasse 12"),
    ("billing_street_name", "Bahnhofstrasse"),
    ("billing_street_number", "12"),
    ("billing_zipcode", "8001"),
    ("billing_city", "Zürich"),
];

/// The add-on item of the capture's order, bought together with the main product 512345:
/// one transaction of 76.00 (49.00 + 27.00), its own `order_item_id` and item amounts.
fn addon_item() -> Vec<(&'static str, &'static str)> {
    let mut item = ADDRESS.to_vec();
    item.extend([
        ("order_item_id", "33299238"),
        ("item_count", "2"),
        ("product_id", "512350"),
        ("product_name", "workbook_pdf__de__dev"),
        ("product_name_intern", "workbook_pdf__de__dev"),
        ("amount", "27.00"),
        ("amount_brutto", "27.00"),
        ("product_amount", "27"),
        ("product_txn_amount", "27.00"),
        ("transaction_amount", "76.00"),
        ("store_url", "https://www.checkout-ds24.com/product/512350"),
    ]);
    item
}

fn recipes() -> Vec<Recipe> {
    let original = |file, base, changes| Recipe {
        file,
        base,
        rename: keep,
        changes,
        key_case: KeyCase::Original,
    };
    let upper = |file, rename| Recipe {
        file,
        base: "21_on_payment_upper_signed.txt",
        rename,
        changes: Vec::new(),
        key_case: KeyCase::Upper,
    };
    let mut refund = addon_item();
    refund.extend([
        ("event", "on_refund"),
        ("transaction_type", "refund"),
        ("transaction_id", "4000417"),
        ("parent_transaction_id", "3999938"),
        ("transaction_date", "2026-08-25"),
        ("transaction_time", "11:02:19"),
        ("transaction_amount", "-76.00"),
        ("product_txn_amount", "-27.00"),
        ("billing_status", "aborted"),
    ]);
    vec![
        // Rebilling cancelled again after a resume: same order, item and last payment.
        original(
            CANCELLED_AGAIN,
            "08_on_rebill_cancelled.txt",
            vec![("rebill_stop_noted_at", "2025-04-02 09:12:44")],
        ),
        original(ADDON_MAIN, CAPTURE, {
            let mut main = ADDRESS.to_vec();
            main.extend([
                ("item_count", "2"),
                ("product_txn_amount", "49.00"),
                ("transaction_amount", "76.00"),
            ]);
            main
        }),
        original(ADDON_ITEM, CAPTURE, addon_item()),
        // Digistore24 refunds the whole transaction; this is the add-on item's IPN of it.
        original(ADDON_REFUND, CAPTURE, refund),
        // [GUESS] the shape of a grouped call: numbered fields for the second item.
        original(
            GROUPED,
            CAPTURE,
            vec![
                ("item_count", "2"),
                ("transaction_amount", "76.00"),
                ("product_id_2", "512350"),
                ("product_name_2", "workbook_pdf__de__dev"),
                ("quantity_2", "1"),
            ],
        ),
        upper(UPPER_TRANSACTION_ID, |n| {
            if n == "transaction_id" {
                "TRANSACTION_ID".to_owned()
            } else {
                n.to_owned()
            }
        }),
        upper(MIXED_TRANSACTION_ID, |n| {
            if n == "transaction_id" {
                "Transaction_Id".to_owned()
            } else {
                n.to_owned()
            }
        }),
        upper(ALL_NAMES_UPPER, |n| n.to_ascii_uppercase()),
    ]
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ipn")
}

fn make(recipe: &Recipe) -> Vec<u8> {
    let mut fields: Vec<(String, String)> = pairs(&fixture(recipe.base))
        .into_iter()
        .map(|(k, v)| ((recipe.rename)(&k), v))
        .collect();
    for (name, value) in &recipe.changes {
        match fields.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = (*value).to_owned(),
            None => fields.push(((*name).to_owned(), (*value).to_owned())),
        }
    }
    fields.retain(|(k, _)| !k.eq_ignore_ascii_case("sha_sign"));
    resign(fields, recipe.key_case)
}

#[test]
fn routing_fixtures_are_what_their_recipes_make() {
    let write = std::env::var_os("IPN_BRIDGE_WRITE_FIXTURES").is_some();
    for recipe in recipes() {
        let made = make(&recipe);
        let path = fixture_dir().join(recipe.file);
        if write {
            std::fs::write(&path, &made).expect("write fixture");
        }
        let stored = std::fs::read(&path).unwrap_or_default();
        assert!(
            stored == made,
            "{} differs from its recipe; write it again with \
             IPN_BRIDGE_WRITE_FIXTURES=1 cargo test --test routing routing_fixtures",
            recipe.file
        );
    }
}

// ---------------------------------------------------------------- harness

struct World {
    /// Holds the temporary directory (configuration and database) for the test's life.
    _work: Workdir,
    fake: FakeKonnektive,
    daemon: ipn_bridge::app::Running,
    store: Store,
}

/// The daemon with `integrations` (TOML) in place of the generated `[integration.main]`, and
/// `extra` appended (e.g. `[alerts]`); the fake Konnektive knows campaigns 12 and 13.
async fn world_with(integrations: &str, extra: &str) -> World {
    let work = Workdir::new();
    let fake = FakeKonnektive::start(FakeConfig {
        password: KONNEKTIVE_PASSWORD.into(),
        campaigns: [(12, vec![31, 32, 33]), (13, vec![43])].into(),
        // USD and EUR orders share campaign 12 here: campaign/query names no currency.
        currencies: [(12, None), (13, None)].into(),
        ..FakeConfig::default()
    })
    .await;
    let generated = Setup::new(&fake.base_url).toml(&work.db());
    let head = generated
        .split("[integration.main]")
        .next()
        .expect("generated configuration");
    std::fs::write(work.config_path(), format!("{head}{integrations}\n{extra}")).expect("config");
    let daemon = start_daemon_at(&work.config_path()).await;
    let store = open_store(&work);
    World {
        _work: work,
        fake,
        daemon,
        store,
    }
}

async fn world(integrations: &str) -> World {
    world_with(integrations, "").await
}

impl World {
    async fn post(&self, body: Vec<u8>) {
        let (status, text) = post_ipn(self.daemon.addr, "ds24", body).await;
        assert_eq!((status, text.as_str()), (200, "OK"));
    }

    async fn post_fixture(&self, name: &str) {
        self.post(fixture(name)).await;
    }

    async fn ipn_ids(&self) -> Vec<i64> {
        let ipns = self.store.list_ipns(None).await.expect("ipns");
        ipns.iter().map(|i| i.id).collect()
    }

    /// `(integration, decision, reason)` of every route of the `n`-th stored IPN (from 0).
    async fn routes_of(&self, n: usize) -> Vec<(String, String, String)> {
        let id = self.ipn_ids().await[n];
        self.store.routes_of_ipn(EventId(id)).await.expect("routes")
    }

    async fn job_count(&self) -> usize {
        self.store
            .list_jobs(Default::default())
            .await
            .expect("jobs")
            .len()
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
}

/// One integration with everything mapped to campaign 12, handling the listed `on` events.
fn main_integration(extra_keys: &str, on: &str) -> String {
    format!(
        "[integration.main]\ncampaign_id = 12\n{extra_keys}\n\
         [integration.main.product_map]\n\"*\" = 33\n\
         [integration.main.on]\n{on}\n"
    )
}

// ---------------------------------------------------------------- follow-up payments

#[tokio::test]
async fn followup_payments_false_skips_the_rebill_but_not_its_cancellation() {
    let w = world(&main_integration(
        "followup_payments = false",
        "payment = \"import_order\"\nrebill_cancelled = \"cancel_purchase\"",
    ))
    .await;
    w.post_fixture("15_on_payment_followup_seq3.txt").await;
    w.post_fixture("08_on_rebill_cancelled.txt").await;

    let payment = w.routes_of(0).await;
    assert_eq!(payment.len(), 1);
    assert_eq!(payment[0].1, "skipped");
    assert_eq!(
        payment[0].2,
        "follow-up payment #3 and followup_payments = false"
    );
    let cancellation = w.routes_of(1).await;
    assert_eq!(cancellation[0].1, "job", "{cancellation:?}");
    let jobs = w.store.list_jobs(Default::default()).await.expect("jobs");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].ipn_id, w.ipn_ids().await[1]);
    assert!(jobs[0].action.contains("cancel"), "{}", jobs[0].action);
    w.daemon.stop().await;
}

// ---------------------------------------------------------------- repeated events

#[tokio::test]
async fn cancel_resume_cancel_are_three_ipns_and_three_jobs_and_a_resend_stays_one() {
    // The bridge has no "resume" action for Konnektive; `cancel_order` stands in for any
    // action here, to show that the resume is processed like the two cancellations.
    let w = world(&main_integration(
        "",
        "rebill_cancelled = \"cancel_purchase\"\nrebill_resumed = \"cancel_order\"",
    ))
    .await;
    w.post_fixture("08_on_rebill_cancelled.txt").await;
    w.post_fixture("09_on_rebill_resumed.txt").await;
    w.post_fixture(CANCELLED_AGAIN).await;
    // Digistore24 sends the last one again, byte for byte.
    w.post_fixture(CANCELLED_AGAIN).await;

    let ipns = w.store.list_ipns(None).await.expect("ipns");
    let events: Vec<&str> = ipns.iter().map(|i| i.event.as_str()).collect();
    assert_eq!(
        events,
        [
            "on_rebill_cancelled",
            "on_rebill_resumed",
            "on_rebill_cancelled"
        ]
    );
    assert_eq!(w.job_count().await, 3);
    for id in w.ipn_ids().await {
        assert_eq!(
            w.store.jobs_of_ipn(EventId(id)).await.expect("jobs").len(),
            1,
            "one job for IPN {id}"
        );
    }
    w.daemon.stop().await;
}

#[tokio::test]
async fn a_payment_stored_by_an_earlier_version_is_still_a_duplicate() {
    let w = world(&main_integration("", "payment = \"import_order\"")).await;
    // What a version before the non-money key part stored for fixture 01 (no routes).
    let body = fixture("01_on_payment_single_product.txt");
    w.store
        .ingest(NewIpn {
            source: "ds24".into(),
            business_key: "on_payment/o:K7Q2M9XA/i:40118822/t:51840233".into(),
            event: "on_payment".into(),
            order_id: Some("K7Q2M9XA".into()),
            order_item_id: Some("40118822".into()),
            product_id: Some("412346".into()),
            transaction_id: Some("51840233".into()),
            buyer_email: None,
            amount: Some("97.00".into()),
            currency: Some("USD".into()),
            received_at: 0,
            raw_body: body.clone(),
            routes: Vec::new(),
            alerts: Vec::new(),
            parent_transaction_id: None,
        })
        .await
        .expect("ingest");
    w.post(body).await;
    w.post_fixture("21_on_payment_upper_signed.txt").await;
    assert_eq!(w.ipn_ids().await.len(), 1, "the resends are duplicates");
    assert_eq!(w.job_count().await, 0);
    assert!(w.fake.requests_to("order/import").is_empty());
    w.daemon.stop().await;
}

// ---------------------------------------------------------------- currencies

#[tokio::test]
async fn each_order_goes_to_the_campaign_of_its_currency() {
    let w = world(
        "[integration.usd]\ncampaign_id = 12\ncurrencies = [\"USD\"]\n\
         [integration.usd.product_map]\n\"*\" = 33\n\
         [integration.usd.on]\npayment = \"import_order\"\n\
         [integration.eur]\ncampaign_id = 13\ncurrencies = [\"eur\"]\n\
         [integration.eur.product_map]\n\"*\" = 43\n\
         [integration.eur.on]\npayment = \"import_order\"\n",
    )
    .await;
    w.post_fixture("01_on_payment_single_product.txt").await; // USD
    w.post_fixture("20_on_payment_utf8_names.txt").await; // EUR
    w.delivered(2).await;

    let usd_order = w.routes_of(0).await;
    assert_eq!(
        usd_order,
        [
            (
                "eur".to_owned(),
                "skipped".to_owned(),
                "currency USD not in [EUR]".to_owned()
            ),
            ("usd".to_owned(), "job".to_owned(), usd_order[1].2.clone()),
        ]
    );
    let eur_order = w.routes_of(1).await;
    assert_eq!(eur_order[0].1, "job", "{eur_order:?}");
    assert_eq!(
        (eur_order[1].1.as_str(), eur_order[1].2.as_str()),
        ("skipped", "currency EUR not in [USD]")
    );
    let mut campaigns: Vec<(u64, String)> = w
        .fake
        .orders()
        .iter()
        .map(|o| {
            (
                o.campaign_id,
                o.param("emailAddress").unwrap_or("").to_owned(),
            )
        })
        .collect();
    campaigns.sort();
    assert_eq!(
        campaigns,
        [
            (12, "jane.doe@example.com".to_owned()),
            (13, "joerg.mueller@example.de".to_owned())
        ]
    );
    w.daemon.stop().await;
}

// ---------------------------------------------------------------- grouped IPNs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grouped_ipn_is_stored_not_imported_and_alerted() {
    let smtp = SmtpServer::start(None).await;
    let w = world_with(
        &main_integration("", "payment = \"import_order\""),
        &format!(
            "[alerts]\nsmtp_url = \"smtp://{}\"\nfrom = \"ipn-bridge <alerts@example.com>\"\n\
             to = [\"ops@example.com\"]\n",
            smtp.addr()
        ),
    )
    .await;
    w.post_fixture(GROUPED).await;

    let routes = w.routes_of(0).await;
    assert_eq!(routes.len(), 1);
    let (_, decision, reason) = &routes[0];
    assert_eq!(decision, "skipped");
    assert!(
        reason.contains("numbered item fields (product_id_2, product_name_2, quantity_2)"),
        "{reason}"
    );
    assert!(
        reason.contains("turn off the grouping of calls"),
        "{reason}"
    );
    assert_eq!(w.job_count().await, 0);
    let mails = wait_for(Duration::from_secs(15), "the alert mail", || async {
        let mails = smtp.mails();
        (!mails.is_empty()).then_some(mails)
    })
    .await;
    let body = mails[0].body();
    assert!(body.contains("grouped IPN"), "{body}");
    assert!(w.fake.requests_to("order/import").is_empty());
    w.daemon.stop().await;
}

// ---------------------------------------------------------------- key case (issue 9)

#[tokio::test]
async fn issue9_defect1_key_case_replays_of_an_upper_signed_ipn_are_one_order() {
    let w = world(&main_integration("", "payment = \"import_order\"")).await;
    for name in [
        "21_on_payment_upper_signed.txt",
        UPPER_TRANSACTION_ID,
        MIXED_TRANSACTION_ID,
        ALL_NAMES_UPPER,
    ] {
        w.post_fixture(name).await;
    }
    w.delivered(1).await;
    assert_eq!(w.ipn_ids().await.len(), 1, "one stored IPN");
    assert_eq!(w.job_count().await, 1, "one job");
    assert_eq!(w.fake.orders().len(), 1, "one order in Konnektive");
    w.daemon.stop().await;
}

// ---------------------------------------------------------------- add-on orders

#[tokio::test]
async fn the_refund_of_one_add_on_item_moves_that_items_share() {
    let w = world(&main_integration(
        "",
        "payment = \"import_order\"\nrefund = \"refund\"",
    ))
    .await;
    w.post_fixture(ADDON_MAIN).await;
    w.post_fixture(ADDON_ITEM).await;
    w.delivered(2).await;
    w.post_fixture(ADDON_REFUND).await;
    w.delivered(3).await;

    let refund = w.routes_of(2).await;
    assert_eq!(
        refund[0].2,
        "refund 27.00 of payment 3999938 of order A1B2C3D4 (amount: product_txn_amount)"
    );
    // The add-on's own import (one item per Konnektive order) is the one refunded, by 27.00.
    let addon_order = w
        .fake
        .orders()
        .into_iter()
        .find(|o| o.param("custom1") == Some("DS24-A1B2C3D4-33299238-3999938"))
        .expect("the add-on's import");
    assert_eq!(addon_order.total_cents, 2700);
    let refunds: Vec<_> = w
        .fake
        .transactions()
        .into_iter()
        .filter(|t| t.txn_type == "REFUND")
        .collect();
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0].order_id, addon_order.order_id);
    assert_eq!(refunds[0].amount_cents.abs(), 2700, "not the whole 76.00");
    w.daemon.stop().await;
}
