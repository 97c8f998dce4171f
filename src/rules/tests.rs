//! Table tests of the routing rules and the field mapping over the signed fixtures.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::config::{
    FallbackAddress, Integration, Newsletter, ProductFilter, ProductMap, Template, TemplatePart,
};
use crate::domain::{ActionKind, AddressField, IpnEvent, Money, OrderEvent};

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!("../../tests/fixtures/ipn/", $name))
    };
}

fn event(body: &str) -> IpnEvent {
    IpnEvent::new(
        form_urlencoded::parse(body.trim().as_bytes())
            .into_owned()
            .collect(),
    )
}

fn integration() -> Integration {
    Integration {
        on_other: Default::default(),
        name: "main".into(),
        source: "ds24".into(),
        target: "crm".into(),
        active: true,
        campaign_id: 12,
        products: ProductFilter::All,
        addons: true,
        languages: Vec::new(),
        followup_payments: true,
        test_orders: false,
        currencies: Vec::new(),
        newsletter: Newsletter::Any,
        delay: Duration::ZERO,
        error_emails: Vec::new(),
        order_ref_field: "custom1".into(),
        auto_approve: false,
        product_map: ProductMap {
            entries: BTreeMap::from([(412346, 31), (412350, 32)]),
            fallback: Some(33),
        },
        on: BTreeMap::from([(OrderEvent::Payment, ActionKind::ImportOrder)]),
        fields: vec![(
            "custom2".into(),
            Template {
                parts: vec![
                    TemplatePart::Literal("aff-".into()),
                    TemplatePart::Field("affiliate_name".into()),
                ],
            },
        )],
        fallback_address: FallbackAddress::default(),
    }
}

/// What `decide` did: `Ok(campaign product)` for a job, `Err(reason)` for a skip.
fn outcome(i: &Integration, body: &str) -> Result<u64, String> {
    match decide(i, &event(body), 0) {
        Decision::Deliver { action, .. } => match *action {
            Action::ImportOrder { order, .. } => Ok(order.items[0].product_id),
            other => Err(format!("unexpected {other:?}")),
        },
        Decision::Skip { reason, .. } => Err(reason),
    }
}

#[test]
fn every_event_type_gets_a_decision_with_a_reason() {
    let i = integration();
    let table: [(&str, Result<u64, &str>); 14] = [
        (fixture!("01_on_payment_single_product.txt"), Ok(31)),
        (fixture!("03b_on_payment_subscription_first.txt"), Ok(33)),
        (
            fixture!("04_on_refund.txt"),
            Err("event refund is not listed in [integration.main.on]"),
        ),
        (
            fixture!("05_on_chargeback.txt"),
            Err("event chargeback is not listed"),
        ),
        (
            fixture!("06_on_payment_missed.txt"),
            Err("event payment_missed is not listed"),
        ),
        (
            fixture!("07_payment_denial.txt"),
            Err("event payment_denial is not listed"),
        ),
        (
            fixture!("08_on_rebill_cancelled.txt"),
            Err("event rebill_cancelled is not listed"),
        ),
        (
            fixture!("09_on_rebill_resumed.txt"),
            Err("event rebill_resumed is not listed"),
        ),
        (
            fixture!("11_last_paid_day.txt"),
            Err("event last_paid_day is not listed"),
        ),
        (
            fixture!("10_connection_test.txt"),
            Err("event connection_test is not an order event"),
        ),
        (
            fixture!("12_on_affiliation.txt"),
            Err("event on_affiliation is not an order event"),
        ),
        (
            fixture!("13_eticket.txt"),
            Err("event eticket is not an order event"),
        ),
        (
            fixture!("14_customform.txt"),
            Err("event customform is not an order event"),
        ),
        (
            fixture!("18_on_payment_test_mode.txt"),
            Err("test order (api_mode = test) and test_orders = false"),
        ),
    ];
    for (body, want) in table {
        let got = outcome(&i, body);
        match (&got, want) {
            (Ok(p), Ok(w)) => assert_eq!(*p, w),
            (Err(reason), Err(w)) => assert!(reason.contains(w), "{reason:?} should contain {w:?}"),
            _ => panic!("{got:?} vs {want:?} for {}", &body[..40]),
        }
    }
}

#[test]
fn filter_rules_table() {
    let base = integration();
    let with = |f: &dyn Fn(&mut Integration)| {
        let mut i = base.clone();
        f(&mut i);
        i
    };
    let rows: Vec<(Integration, &str, Result<u64, &str>)> = vec![
        (
            with(&|i| i.active = false),
            fixture!("01_on_payment_single_product.txt"),
            Err("integration is not active"),
        ),
        (
            with(&|i| i.test_orders = true),
            fixture!("18_on_payment_test_mode.txt"),
            Ok(31),
        ),
        (
            with(&|i| i.products = ProductFilter::List(vec![412350])),
            fixture!("01_on_payment_single_product.txt"),
            Err("product 412346 not in products [412350]"),
        ),
        (
            with(&|i| i.products = ProductFilter::List(vec![412346])),
            fixture!("01_on_payment_single_product.txt"),
            Ok(31),
        ),
        (
            with(&|i| i.languages = vec!["de".into(), "en".into()]),
            fixture!("17_on_payment_lang_fr.txt"),
            Err("language fr not in [de, en]"),
        ),
        (
            with(&|i| i.languages = vec!["de".into(), "en".into()]),
            fixture!("01_on_payment_single_product.txt"),
            Ok(31),
        ),
        (
            with(&|i| i.followup_payments = false),
            fixture!("15_on_payment_followup_seq3.txt"),
            Err("follow-up payment #3 and followup_payments = false"),
        ),
        (
            with(&|i| i.followup_payments = false),
            fixture!("03b_on_payment_subscription_first.txt"),
            Ok(33),
        ),
        (
            with(&|i| i.newsletter = Newsletter::OptedIn),
            fixture!("01_on_payment_single_product.txt"),
            Err("did not opt in"),
        ),
        (
            with(&|i| i.newsletter = Newsletter::OptedIn),
            fixture!("19_on_payment_newsletter_optin.txt"),
            Ok(31),
        ),
        (
            with(&|i| i.product_map.fallback = None),
            fixture!("03b_on_payment_subscription_first.txt"),
            Err(
                "product 412360 is not in [integration.main.product_map] and there is no \"*\" entry",
            ),
        ),
        (
            with(&|i| {
                i.on.insert(OrderEvent::Payment, ActionKind::Ignore);
            }),
            fixture!("01_on_payment_single_product.txt"),
            Err("set to \"ignore\""),
        ),
    ];
    for (i, body, want) in rows {
        let got = outcome(&i, body);
        match (&got, want) {
            (Ok(p), Ok(w)) => assert_eq!(*p, w),
            (Err(reason), Err(w)) => assert!(reason.contains(w), "{reason:?} should contain {w:?}"),
            _ => panic!("{got:?} vs {want:?}"),
        }
    }
}

#[test]
fn an_unmapped_product_needs_attention_and_a_filtered_one_does_not() {
    let mut i = integration();
    i.product_map.fallback = None;
    let unmapped = decide(
        &i,
        &event(fixture!("03b_on_payment_subscription_first.txt")),
        0,
    );
    assert!(matches!(
        unmapped,
        Decision::Skip {
            severity: Severity::NeedsAttention,
            ..
        }
    ));
    let filtered = decide(&i, &event(fixture!("04_on_refund.txt")), 0);
    assert!(matches!(
        filtered,
        Decision::Skip {
            severity: Severity::Normal,
            ..
        }
    ));
}

struct NoEnv;

impl crate::config::Environment for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
    fn read_file(&self, path: &std::path::Path) -> std::io::Result<String> {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            path.display().to_string(),
        ))
    }
    fn credentials_directory(&self) -> Option<std::path::PathBuf> {
        None
    }
}

#[test]
fn route_asks_every_integration_of_the_source_and_no_other() {
    let text = r#"
[source.ds24]
passphrase = "p1"
[source.second]
passphrase = "p2"
[target.crm]
kind = "konnektive"
login_id = "x"
password = "y"
[integration.a-main]
source = "ds24"
campaign_id = 12
product_map = { "412346" = 31 }
on = { payment = "import_order" }
[integration.b-german]
source = "ds24"
campaign_id = 13
languages = ["de"]
product_map = { "*" = 40 }
on = { payment = "import_order" }
[integration.c-elsewhere]
source = "second"
campaign_id = 14
product_map = { "*" = 50 }
on = { payment = "import_order" }
"#;
    let config = crate::config::parse(text, std::path::Path::new("t.toml"), &NoEnv)
        .expect("config")
        .config;
    let routed = route(
        &config,
        "ds24",
        &event(fixture!("01_on_payment_single_product.txt")),
        0,
    );
    let summary: Vec<(&str, bool)> = routed
        .iter()
        .map(|r| {
            (
                r.integration.as_str(),
                matches!(r.decision, Decision::Deliver { .. }),
            )
        })
        .collect();
    assert_eq!(summary, [("a-main", true), ("b-german", false)]);
    let Decision::Skip { reason, .. } = &routed[1].decision else {
        panic!("skip expected");
    };
    assert_eq!(reason, "language en not in [de]");
}

#[test]
fn the_order_is_mapped_from_the_ipn() {
    let i = integration();
    let e = event(fixture!("01_on_payment_single_product.txt"));
    let o = mapping::order(&i, &e, 31, 0).expect("order");
    assert_eq!(o.reference, "DS24-K7Q2M9XA-40118822-51840233");
    assert_eq!(o.reference_field, "custom1");
    assert_eq!(o.campaign_id, 12);
    assert_eq!(o.buyer.email, "jane.doe@example.com");
    assert_eq!(
        (o.buyer.first_name.as_str(), o.buyer.last_name.as_str()),
        ("Jane", "Doe")
    );
    assert_eq!(o.buyer.phone, "15415550199", "digits only");
    assert_eq!(o.buyer.ip_address, None);
    assert_eq!(o.address.line1, "742 Evergreen Terrace");
    assert_eq!(o.address.city, "Springfield");
    assert_eq!(o.address.state, "OR");
    assert_eq!(o.address.postal_code, "97403");
    assert_eq!(o.address.country, "US");
    assert_eq!(o.items.len(), 1);
    assert_eq!(o.items[0].unit_price, Money::from_minor(9700));
    assert_eq!(o.currency, "USD");
    assert!(o.address_fallback.is_empty(), "the IPN has a full address");
    assert_eq!(o.items[0].ship_price, Money::ZERO);
    assert_eq!(o.placed_on, "2025-03-14");
    assert_eq!(
        o.extra_fields,
        vec![("custom2".to_owned(), "aff-bestdeals".to_owned())]
    );
}

#[test]
fn mapping_edge_cases() {
    let i = integration();
    let utf8 = event(fixture!("20_on_payment_utf8_names.txt"));
    let o = mapping::order(&i, &utf8, 31, 0).expect("order");
    assert_eq!(o.address.city, "Köln");
    // Three units at 29.97 split exactly; 10.00 over three does not, so one unit at 10.00.
    let mut fields: BTreeMap<String, String> =
        event(fixture!("01_on_payment_single_product.txt")).to_map();
    fields.insert("quantity".into(), "3".into());
    fields.insert("product_txn_amount".into(), "29.97".into());
    let o = mapping::order(&i, &IpnEvent::new(fields.clone()), 31, 0).expect("order");
    assert_eq!(
        (o.items[0].quantity, o.items[0].unit_price),
        (3, Money::from_minor(999))
    );
    fields.insert("product_txn_amount".into(), "10.00".into());
    let o = mapping::order(&i, &IpnEvent::new(fields.clone()), 31, 0).expect("order");
    assert_eq!(
        (o.items[0].quantity, o.items[0].unit_price),
        (1, Money::from_minor(1000))
    );
    // IPv4 is kept, IPv6 is not sent.
    fields.insert("buyer_ip".into(), "203.0.113.5".into());
    let o = mapping::order(&i, &IpnEvent::new(fields.clone()), 31, 0).expect("order");
    assert_eq!(o.buyer.ip_address.as_deref(), Some("203.0.113.5"));
    fields.insert("buyer_ip".into(), "2001:db8::1".into());
    let o = mapping::order(&i, &IpnEvent::new(fields.clone()), 31, 0).expect("order");
    assert_eq!(o.buyer.ip_address, None);
    // No payment date: the day of receipt.
    fields.remove("transaction_date");
    fields.remove("order_date");
    let o =
        mapping::order(&i, &IpnEvent::new(fields.clone()), 31, 1_741_947_761_000).expect("order");
    assert_eq!(o.placed_on, "2025-03-14");
    // No e-mail: the import cannot happen, and the reason says why.
    fields.remove("buyer_email");
    fields.remove("email");
    assert_eq!(
        mapping::order(&i, &IpnEvent::new(fields), 31, 0)
            .err()
            .as_deref(),
        Some("the IPN has no buyer e-mail")
    );
}

fn deliver(i: &Integration, body: &str) -> Action {
    match decide(i, &event(body), 0) {
        Decision::Deliver { action, .. } => *action,
        Decision::Skip { reason, .. } => panic!("skipped: {reason}"),
    }
}

#[test]
fn refunds_chargebacks_and_cancellations_name_the_import_they_reverse() {
    let mut i = integration();
    i.on.insert(OrderEvent::Refund, ActionKind::Refund);
    i.on.insert(OrderEvent::Chargeback, ActionKind::Chargeback);
    i.on.insert(OrderEvent::RebillCancelled, ActionKind::CancelPurchase);
    i.on.insert(OrderEvent::LastPaidDay, ActionKind::CancelOrder);

    let Action::Refund {
        import,
        amount,
        ds24_transaction_id,
        full,
    } = deliver(&i, fixture!("04_on_refund.txt"))
    else {
        panic!("refund expected");
    };
    assert_eq!(import.ds24_order_id, "K7Q2M9XA");
    assert_eq!(import.ds24_item, "40118822");
    assert_eq!(import.payment_transaction.as_deref(), Some("51840233"));
    assert!(
        import.matches("DS24-K7Q2M9XA-40118822-51840233"),
        "the payment's own reference"
    );
    assert!(!import.matches("DS24-K7Q2M9XA-40118822-51877310"));
    assert_eq!((amount, full), (Money::from_minor(9700), true));
    assert_eq!(ds24_transaction_id, "51877310");

    let Action::Chargeback {
        import,
        amount,
        date,
        ..
    } = deliver(&i, fixture!("05_on_chargeback.txt"))
    else {
        panic!("chargeback expected");
    };
    assert_eq!(import.payment_transaction.as_deref(), Some("51840233"));
    assert_eq!(amount, Money::from_minor(9700));
    assert_eq!(date.len(), 10);

    let Action::CancelPurchase { import, reason } =
        deliver(&i, fixture!("08_on_rebill_cancelled.txt"))
    else {
        panic!("cancel_purchase expected");
    };
    assert_eq!(
        import.payment_transaction, None,
        "the latest import of the item"
    );
    assert!(import.matches("DS24-M4X9T2RB-40099871-51790022"));
    assert!(!import.matches("DS24-M4X9T2RB-400998710-1"));
    assert!(reason.contains("rebill cancelled"), "{reason}");

    assert!(matches!(
        deliver(&i, fixture!("11_last_paid_day.txt")),
        Action::CancelOrder { .. }
    ));
}

#[test]
fn an_import_needs_a_payment_event() {
    let mut i = integration();
    i.on.insert(OrderEvent::Refund, ActionKind::ImportOrder);
    let got = outcome(&i, fixture!("04_on_refund.txt"));
    assert!(
        got.as_ref().is_err_and(|r| r.contains("needs a payment")),
        "{got:?}"
    );
}

#[test]
fn an_ignored_event_is_skipped_before_the_product_map_is_asked() {
    let mut i = integration();
    i.product_map.fallback = None;
    i.on.insert(OrderEvent::Payment, ActionKind::Ignore);
    let d = decide(
        &i,
        &event(fixture!("03b_on_payment_subscription_first.txt")),
        0,
    );
    assert!(
        matches!(&d, Decision::Skip { severity: Severity::Normal, reason } if reason.contains("ignore")),
        "{d:?}"
    );
}

#[test]
fn addons_false_passes_main_products_only() {
    let mut i = integration();
    i.addons = false;
    assert_eq!(
        outcome(&i, fixture!("01_on_payment_single_product.txt")),
        Ok(31)
    );
    let addon = outcome(&i, fixture!("16_on_payment_addon_item.txt"));
    assert!(
        addon
            .as_ref()
            .is_err_and(|r| r.contains("add-on") && r.contains("412346")),
        "{addon:?}"
    );
    i.addons = true;
    assert_eq!(
        outcome(&i, fixture!("16_on_payment_addon_item.txt")),
        Ok(32)
    );
}

#[test]
fn addon_signals_table() {
    let base = event(fixture!("01_on_payment_single_product.txt")).to_map();
    let with = |changes: &[(&str, &str)]| {
        let mut f = base.clone();
        for (k, v) in changes {
            f.insert((*k).into(), (*v).into());
        }
        mapping::addon_signal(&IpnEvent::new(f))
    };
    // A single-item order is never an add-on.
    assert_eq!(with(&[]), None);
    // An explicit flag wins either way.
    assert!(with(&[("is_addon", "Y")]).is_some());
    assert_eq!(
        with(&[
            ("is_addon", "N"),
            ("item_count", "2"),
            ("product_id", "999")
        ]),
        None
    );
    // product_ids lists the main product first.
    assert!(with(&[("product_ids", "1,412346")]).is_some());
    assert_eq!(with(&[("product_ids", "412346,5")]), None);
    // A second item on another product's order form.
    assert!(with(&[("item_count", "2"), ("product_id", "412350")]).is_some());
    // The main item of a two-item order.
    assert_eq!(with(&[("item_count", "2")]), None);
    // An upsell is its own sale.
    assert_eq!(
        with(&[
            ("item_count", "2"),
            ("product_id", "412350"),
            ("upsell_no", "1")
        ]),
        None
    );
}

mod product_map_properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// An entry wins, else `"*"`, else nothing; and routing follows the map exactly.
        #[test]
        fn lookup_and_routing_follow_the_map(
            entries in proptest::collection::btree_map(1u64..1_000_000, 1u64..10_000, 0..8),
            fallback in proptest::option::of(1u64..10_000),
            product in 1u64..1_000_000,
        ) {
            let map = ProductMap { entries: entries.clone(), fallback };
            let expected = entries.get(&product).copied().or(fallback);
            prop_assert_eq!(map.lookup(product), expected);

            let mut i = integration();
            i.product_map = map;
            let mut fields = event(fixture!("01_on_payment_single_product.txt")).to_map();
            fields.insert("product_id".into(), product.to_string());
            match decide(&i, &IpnEvent::new(fields), 0) {
                Decision::Deliver { action, .. } => {
                    let Action::ImportOrder { order, .. } = *action else {
                        return Err(TestCaseError::fail("import expected"));
                    };
                    prop_assert_eq!(Some(order.items[0].product_id), expected);
                }
                Decision::Skip { severity, reason } => {
                    prop_assert_eq!(expected, None);
                    prop_assert_eq!(severity, Severity::NeedsAttention);
                    prop_assert!(reason.contains(&product.to_string()));
                }
            }
        }
    }
}

/// `event` with some fields changed or added.
fn with_fields(body: &str, changes: &[(&str, &str)]) -> IpnEvent {
    let mut fields = event(body).to_map();
    for (k, v) in changes {
        fields.insert((*k).into(), (*v).into());
    }
    IpnEvent::new(fields)
}

#[test]
fn followup_payments_false_filters_follow_up_payments_only() {
    let mut i = integration();
    i.followup_payments = false;
    assert_eq!(
        filter_reason(&i, &event(fixture!("15_on_payment_followup_seq3.txt"))).as_deref(),
        Some("follow-up payment #3 and followup_payments = false")
    );
    // Every other event of a rebilled order (pay_sequence_no = 3 in these fixtures) passes.
    let followup = [("billing_type", "subscription"), ("pay_sequence_no", "3")];
    let others = [
        (
            "rebill_cancelled",
            event(fixture!("08_on_rebill_cancelled.txt")),
        ),
        (
            "rebill_resumed",
            event(fixture!("09_on_rebill_resumed.txt")),
        ),
        ("last_paid_day", event(fixture!("11_last_paid_day.txt"))),
        (
            "payment_missed",
            event(fixture!("06_on_payment_missed.txt")),
        ),
        ("payment_denial", event(fixture!("07_payment_denial.txt"))),
        (
            "refund",
            with_fields(fixture!("04_on_refund.txt"), &followup),
        ),
        (
            "chargeback",
            with_fields(fixture!("05_on_chargeback.txt"), &followup),
        ),
    ];
    for (name, e) in others {
        assert!(
            mapping::followup_sequence(&e).is_some(),
            "{name}: the fixture must look like a follow-up"
        );
        assert_eq!(filter_reason(&i, &e), None, "{name}");
    }
}

#[test]
fn currencies_filter_table() {
    let usd_order = fixture!("01_on_payment_single_product.txt");
    let with = |currencies: &[&str]| {
        let mut i = integration();
        i.currencies = currencies.iter().map(|c| (*c).to_owned()).collect();
        i
    };
    let reason = |i: &Integration, e: &IpnEvent| filter_reason(i, e);
    let usd = event(usd_order);
    assert_eq!(reason(&with(&[]), &usd), None, "empty takes any currency");
    assert_eq!(reason(&with(&["USD"]), &usd), None);
    assert_eq!(reason(&with(&["EUR", "USD"]), &usd), None);
    assert_eq!(
        reason(&with(&["EUR"]), &usd).as_deref(),
        Some("currency USD not in [EUR]")
    );
    // Digistore24's spelling is not trusted to be upper case.
    let lower = with_fields(
        usd_order,
        &[("currency", "usd"), ("transaction_currency", "usd")],
    );
    assert_eq!(reason(&with(&["USD"]), &lower), None);
    // Only one of the two fields present: that one is judged.
    let only_currency = with_fields(usd_order, &[("transaction_currency", "")]);
    assert_eq!(
        reason(&with(&["EUR"]), &only_currency).as_deref(),
        Some("currency USD not in [EUR]")
    );
    let neither = with_fields(usd_order, &[("transaction_currency", ""), ("currency", "")]);
    assert_eq!(
        reason(&with(&["EUR"]), &neither).as_deref(),
        Some("the IPN names no currency and currencies = [EUR]")
    );
    assert_eq!(reason(&with(&[]), &neither), None);
    // The two fields differ: transaction_currency is named first, and both must be taken.
    let mixed = with_fields(
        usd_order,
        &[("transaction_currency", "USD"), ("currency", "EUR")],
    );
    assert_eq!(
        reason(&with(&["EUR"]), &mixed).as_deref(),
        Some(
            "currency USD not in [EUR] (the IPN's transaction_currency; its two currency fields differ)"
        )
    );
    assert_eq!(
        reason(&with(&["USD"]), &mixed).as_deref(),
        Some("currency EUR not in [USD] (the IPN's currency; its two currency fields differ)")
    );
    assert_eq!(reason(&with(&["USD", "EUR"]), &mixed), None);
    // Through decide: a skip a vendor reads, not an alert.
    assert!(matches!(
        decide(&with(&["EUR"]), &usd, 0),
        Decision::Skip { severity: Severity::Normal, ref reason } if reason == "currency USD not in [EUR]"
    ));
}

/// The refund `decide` builds for `e`, with its reason; panics on a skip.
fn refund_of(i: &Integration, e: &IpnEvent) -> (Money, bool, String) {
    match decide(i, e, 0) {
        Decision::Deliver { action, reason, .. } => match *action {
            Action::Refund { amount, full, .. } => (amount, full, reason),
            other => panic!("refund expected, got {other:?}"),
        },
        Decision::Skip { reason, .. } => panic!("skipped: {reason}"),
    }
}

#[test]
fn a_reversal_moves_the_reversed_items_share() {
    let mut i = integration();
    i.on.insert(OrderEvent::Refund, ActionKind::Refund);
    i.on.insert(OrderEvent::Chargeback, ActionKind::Chargeback);
    let refund = fixture!("04_on_refund.txt");
    let cents = Money::from_minor;
    // (changes to the refund fixture, amount, full, the field named in the reason)
    type Row<'a> = (&'a [(&'a str, &'a str)], Money, bool, &'a str);
    let table: &[Row] = &[
        // The fixture: item 97.00, transaction -97.00.
        (&[], cents(9700), true, "(amount: product_txn_amount)"),
        // One item of an add-on order: the transaction covers every item.
        (
            &[
                ("product_txn_amount", "-27.00"),
                ("amount", "27.00"),
                ("transaction_amount", "-124.00"),
            ],
            cents(2700),
            true,
            "(amount: product_txn_amount)",
        ),
        // No item share: amount, still not the whole transaction.
        (
            &[
                ("product_txn_amount", ""),
                ("amount", "-27.00"),
                ("transaction_amount", "-124.00"),
            ],
            cents(2700),
            true,
            "(amount: amount)",
        ),
        // Only the transaction's amount.
        (
            &[
                ("product_txn_amount", ""),
                ("amount", ""),
                ("transaction_amount", "-27.00"),
            ],
            cents(2700),
            true,
            "(amount: transaction_amount; the IPN has no product_txn_amount or amount)",
        ),
        // A partial refund whose transaction is below the item's share: never more than moved.
        (
            &[("transaction_amount", "-30.00")],
            cents(3000),
            false,
            "(amount: transaction_amount, less than product_txn_amount 97.00)",
        ),
    ];
    for (changes, amount, full, field) in table {
        let e = with_fields(refund, changes);
        let (got, got_full, reason) = refund_of(&i, &e);
        assert_eq!((got, got_full), (*amount, *full), "{changes:?}");
        assert!(reason.contains(field), "{changes:?}: {reason}");
        assert_eq!(
            mapping::reversal_amount(&e).map(|a| a.amount),
            Ok(*amount),
            "{changes:?}"
        );
    }
    // A chargeback reads the same share.
    let Decision::Deliver { action, reason, .. } = decide(
        &i,
        &with_fields(
            fixture!("05_on_chargeback.txt"),
            &[
                ("product_txn_amount", "-27.00"),
                ("transaction_amount", "-124.00"),
            ],
        ),
        0,
    ) else {
        panic!("chargeback expected");
    };
    assert!(
        matches!(*action, Action::Chargeback { amount, .. } if amount == cents(2700)),
        "{action:?}"
    );
    assert!(
        reason.contains("27.00 of payment 51840233 of order K7Q2M9XA (amount: product_txn_amount)"),
        "{reason}"
    );
}

#[test]
fn a_reversal_without_a_usable_amount_needs_attention_and_says_what_it_saw() {
    let mut i = integration();
    i.on.insert(OrderEvent::Refund, ActionKind::Refund);
    let refund = fixture!("04_on_refund.txt");
    let table: &[(&[(&str, &str)], &str)] = &[
        (
            &[("product_txn_amount", "12,50")],
            "cannot refund: the IPN's product_txn_amount \"12,50\" is not a decimal amount",
        ),
        // A bad item share is not skipped for a field that covers more.
        (
            &[("product_txn_amount", "n/a"), ("amount", "97.00")],
            "the IPN's product_txn_amount \"n/a\" is not a decimal amount",
        ),
        (
            &[
                ("product_txn_amount", ""),
                ("amount", ""),
                ("transaction_amount", ""),
            ],
            "cannot refund: the IPN has no product_txn_amount, amount or transaction_amount",
        ),
        (
            &[("product_txn_amount", "0.00")],
            "the amount to reverse is 0.00 (product_txn_amount)",
        ),
    ];
    for (changes, want) in table {
        match decide(&i, &with_fields(refund, changes), 0) {
            Decision::Skip {
                reason,
                severity: Severity::NeedsAttention,
            } => assert!(reason.contains(want), "{changes:?}: {reason}"),
            other => panic!("{changes:?}: attention expected, got {other:?}"),
        }
    }
}

#[test]
fn a_payment_must_have_a_positive_amount() {
    let i = integration();
    let payment = fixture!("01_on_payment_single_product.txt");
    let table: &[(&[(&str, &str)], &str)] = &[
        // Issue 9: every amount negative (the import used to drop the sign).
        (
            &[
                ("amount", "-97.00"),
                ("product_txn_amount", "-97.00"),
                ("transaction_amount", "-97.00"),
            ],
            "cannot import order: the IPN's product_txn_amount is -97.00; a payment's amount must be positive",
        ),
        // Only `amount` negative: still not a payment to record.
        (
            &[("amount", "-97.00")],
            "the IPN's amount is -97.00; a payment's amount must be positive",
        ),
        (
            &[("product_txn_amount", "0.00")],
            "the IPN's product_txn_amount is 0.00; a payment's amount must be positive",
        ),
        (
            &[("product_txn_amount", "12,50")],
            "cannot import order: the IPN's product_txn_amount \"12,50\" is not a decimal amount",
        ),
        (
            &[
                ("product_txn_amount", ""),
                ("amount", ""),
                ("transaction_amount", ""),
            ],
            "the IPN has no product_txn_amount, amount or transaction_amount",
        ),
    ];
    for (changes, want) in table {
        match decide(&i, &with_fields(payment, changes), 0) {
            Decision::Skip {
                reason,
                severity: Severity::NeedsAttention,
            } => assert!(reason.contains(want), "{changes:?}: {reason}"),
            other => panic!("{changes:?}: attention expected, got {other:?}"),
        }
    }
    // A positive item share with a zero field elsewhere is imported.
    assert_eq!(
        outcome(&i, payment),
        Ok(31),
        "the fixture itself is imported"
    );
    let e = with_fields(payment, &[("transaction_amount", "0.00")]);
    assert!(matches!(decide(&i, &e, 0), Decision::Deliver { .. }));
}

/// Log lines written while `f` runs on this thread.
fn logged_while(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = buffer.0.lock().expect("log buffer").clone();
    String::from_utf8(bytes).expect("utf8 log")
}

#[test]
fn only_listed_newsletter_choices_count_as_opted_in() {
    let base = fixture!("01_on_payment_single_product.txt");
    let opted_in = |value: &str| {
        mapping::newsletter_opted_in(&with_fields(base, &[("newsletter_choice", value)]))
    };
    for value in mapping::NEWSLETTER_OPT_IN_VALUES {
        assert!(opted_in(value), "{value}");
    }
    assert!(opted_in("Double_Opt_In"), "ASCII case does not matter");
    for value in ["none", "", "None"] {
        assert!(!opted_in(value), "{value:?}");
    }
    // Unknown values are not an opt-in (they used to be: anything but `none` counted).
    let logs = logged_while(|| {
        assert!(!opted_in("unit_test_opt_in_maybe"));
        assert!(!opted_in("unit_test_opt_in_maybe"));
        assert!(!opted_in("unit_test_yes"));
        assert!(!opted_in("none"));
    });
    let warnings: Vec<&str> = logs.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 2, "once per value:\n{logs}");
    assert!(warnings[0].contains("\"unit_test_opt_in_maybe\""), "{logs}");
    assert!(warnings[1].contains("\"unit_test_yes\""), "{logs}");
    // Logged once per process: a later sighting stays quiet.
    let again = logged_while(|| assert!(!opted_in("unit_test_yes")));
    assert!(again.is_empty(), "{again}");
    // Through the filter.
    let mut i = integration();
    i.newsletter = Newsletter::OptedIn;
    let unknown = with_fields(base, &[("newsletter_choice", "unit_test_yes")]);
    assert_eq!(
        filter_reason(&i, &unknown).as_deref(),
        Some(
            "buyer did not opt in to the newsletter (newsletter_choice = unit_test_yes) and newsletter = \"opted_in\""
        )
    );
}

#[test]
fn numbered_item_fields_are_found_and_nothing_else() {
    let base = fixture!("01_on_payment_single_product.txt");
    let found = |changes: &[(&str, &str)]| {
        let e = with_fields(base, changes);
        mapping::grouped_item_fields(&e)
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert!(found(&[]).is_empty(), "a fixture of one item");
    for name in [
        "product_id_2",
        "product_id2",
        "product_id_1",
        "quantity_2",
        "quantity10",
        "order_item_id_2",
        "product_name_2",
    ] {
        assert_eq!(found(&[(name, "1")]), [name], "{name}");
    }
    for name in [
        "product_ids",
        "product_id_",
        "product_id_x2",
        "quantityx",
        "item_count",
    ] {
        assert!(found(&[(name, "1")]).is_empty(), "{name}");
    }
    assert!(
        found(&[("product_id_2", "")]).is_empty(),
        "empty values do not count"
    );
}

#[test]
fn a_grouped_ipn_is_not_imported_in_part_and_needs_attention() {
    let mut i = integration();
    i.on.insert(OrderEvent::Refund, ActionKind::Refund);
    let grouped = [("product_id_2", "412350"), ("quantity_2", "1")];
    for body in [
        fixture!("01_on_payment_single_product.txt"),
        fixture!("04_on_refund.txt"),
    ] {
        match decide(&i, &with_fields(body, &grouped), 0) {
            Decision::Skip {
                reason,
                severity: Severity::NeedsAttention,
            } => {
                assert!(
                    reason.contains("(product_id_2, quantity_2)"),
                    "names the fields: {reason}"
                );
                assert!(
                    reason.contains("turn off the grouping of calls"),
                    "says what to change: {reason}"
                );
            }
            other => panic!("attention expected, got {other:?}"),
        }
    }
    // Even where a filter would have passed the unnumbered (main) item alone.
    i.products = ProductFilter::List(vec![412350]);
    assert!(matches!(
        decide(
            &i,
            &with_fields(fixture!("01_on_payment_single_product.txt"), &grouped),
            0
        ),
        Decision::Skip {
            severity: Severity::NeedsAttention,
            ..
        }
    ));
    // An integration that ignores the event, or is not active, is not alarmed.
    i.on.insert(OrderEvent::Payment, ActionKind::Ignore);
    let payment = with_fields(fixture!("01_on_payment_single_product.txt"), &grouped);
    assert!(matches!(
        decide(&i, &payment, 0),
        Decision::Skip {
            severity: Severity::Normal,
            ..
        }
    ));
    let mut inactive = integration();
    inactive.active = false;
    assert!(matches!(
        decide(&inactive, &payment, 0),
        Decision::Skip {
            severity: Severity::Normal,
            ..
        }
    ));
}

/// The fixture `01` with some fields changed (`""` empties a field, as Digistore24 sends it).
fn payment_with(changes: &[(&str, &str)]) -> IpnEvent {
    let mut fields = event(fixture!("01_on_payment_single_product.txt")).to_map();
    for (k, v) in changes {
        fields.insert((*k).into(), (*v).into());
    }
    IpnEvent::new(fields)
}

/// Every address field of every block emptied, as in the real capture of a digital order.
const NO_POSTAL_ADDRESS: [(&str, &str); 14] = [
    ("billing_street", ""),
    ("billing_street_name", ""),
    ("billing_city", ""),
    ("billing_zipcode", ""),
    ("billing_state", ""),
    ("address_street", ""),
    ("address_street_name", ""),
    ("address_city", ""),
    ("address_zipcode", ""),
    ("address_state", ""),
    ("buyer_address_street", ""),
    ("buyer_address_city", ""),
    ("buyer_address_zipcode", ""),
    ("buyer_address_state", ""),
];

#[test]
fn the_real_capture_of_a_digital_order_gets_the_fallback_address() {
    let i = integration();
    let e = event(fixture!("20_capture_digital_no_address.txt"));
    let o = mapping::order(&i, &e, 33, 0).expect("order");
    assert_eq!(o.address.line1, "Digital delivery");
    assert_eq!(o.address.city, "Online");
    assert_eq!(o.address.postal_code, "00000");
    assert_eq!(o.address.state, "", "no default state");
    assert_eq!(o.address.country, "CH", "billing_country, not country=DE");
    assert_eq!(
        o.address_fallback,
        [
            AddressField::Line1,
            AddressField::City,
            AddressField::PostalCode
        ]
    );
    assert_eq!(
        (
            o.items[0].quantity,
            o.items[0].unit_price,
            o.items[0].ship_price
        ),
        (1, Money::from_minor(4900), Money::ZERO),
        "product_txn_amount=49 without decimals"
    );
    assert_eq!(
        (o.buyer.first_name.as_str(), o.buyer.last_name.as_str()),
        ("Test", "Kauf")
    );
}

#[test]
fn the_fallback_fills_only_what_the_ipn_leaves_empty() {
    let mut i = integration();
    i.fallback_address = FallbackAddress {
        address1: "Kein Versand".into(),
        city: "Internet".into(),
        postal_code: "9999".into(),
        state: Some("ZH".into()),
    };
    // Only the city is missing: only the city is filled.
    let e = payment_with(&[("billing_city", ""), ("address_city", "")]);
    let o = mapping::order(&i, &e, 31, 0).expect("order");
    assert_eq!(o.address.city, "Internet");
    assert_eq!(o.address.line1, "742 Evergreen Terrace");
    assert_eq!(o.address.postal_code, "97403");
    assert_eq!(o.address.state, "OR");
    assert_eq!(o.address_fallback, [AddressField::City]);
    // Nothing given: everything from the fallback, the state too, the country from the IPN.
    let e = payment_with(&NO_POSTAL_ADDRESS);
    let o = mapping::order(&i, &e, 31, 0).expect("order");
    assert_eq!(
        (
            o.address.line1.as_str(),
            o.address.city.as_str(),
            o.address.postal_code.as_str(),
            o.address.state.as_str(),
            o.address.country.as_str()
        ),
        ("Kein Versand", "Internet", "9999", "ZH", "US")
    );
    assert_eq!(
        o.address_fallback,
        [
            AddressField::Line1,
            AddressField::City,
            AddressField::PostalCode,
            AddressField::State
        ]
    );
    // A state the IPN has but that has no known code is left out, not replaced.
    let e = payment_with(&[("billing_state", "Atlantis"), ("address_state", "Atlantis")]);
    let o = mapping::order(&i, &e, 31, 0).expect("order");
    assert_eq!(o.address.state, "");
    assert!(o.address_fallback.is_empty());
}

#[test]
fn written_out_states_become_codes_and_unknown_ones_are_left_out() {
    let i = integration();
    let state = |changes: &[(&str, &str)]| {
        mapping::order(&i, &payment_with(changes), 31, 0)
            .expect("order")
            .address
            .state
    };
    assert_eq!(state(&[("billing_state", "California")]), "CA");
    assert_eq!(state(&[("billing_state", "oregon")]), "OR");
    assert_eq!(state(&[("billing_state", "ny")]), "NY");
    // Never cut to six characters.
    assert_eq!(state(&[("billing_state", "Californie")]), "");
    let de = [("billing_country", "DE"), ("billing_state", "Bayern")];
    assert_eq!(state(&de), "BY");
    // A country without a table: the state is left out, whatever it is.
    assert_eq!(
        state(&[("billing_country", "FR"), ("billing_state", "IDF")]),
        ""
    );
}

#[test]
fn an_ipn_without_a_usable_country_is_skipped_and_needs_attention() {
    let i = integration();
    let mut changes = vec![
        ("billing_country", ""),
        ("address_country", "Deutschland"),
        ("buyer_address_country", ""),
        ("country", ""),
    ];
    let e = payment_with(&changes);
    match decide(&i, &e, 0) {
        Decision::Skip { reason, severity } => {
            assert_eq!(severity, Severity::NeedsAttention);
            assert!(reason.contains("no usable country"), "{reason}");
        }
        other => panic!("skip expected, got {other:?}"),
    }
    // The plain `country` field is the last resort.
    changes[3] = ("country", "at");
    let o = mapping::order(&i, &payment_with(&changes), 31, 0).expect("order");
    assert_eq!(o.address.country, "AT");
}

#[test]
fn no_affid_is_derived_from_the_affiliate() {
    let i = integration();
    let o = mapping::order(&i, &payment_with(&[]), 31, 0).expect("order");
    assert!(
        !o.extra_fields.iter().any(|(name, _)| name == "affId"),
        "{:?}",
        o.extra_fields
    );
}

/// The price rule, as a table: `(amount field, amount, shipping field, shipping, quantity,
/// item_count, transaction_amount)` → `(qty, unit price, shipPrice)` in cents. In every row,
/// `qty × price + shipPrice` is what the buyer paid for the item.
#[test]
fn price_rule_table() {
    type Row = (
        &'static [(&'static str, &'static str)],
        Result<(u32, i64, i64), &'static str>,
    );
    let rows: &[Row] = &[
        // The real capture: no decimals, no shipping.
        (
            &[("product_txn_amount", "49"), ("product_txn_shipping", "0")],
            Ok((1, 4900, 0)),
        ),
        // Shipping is part of the item's amount: goods = amount − shipping.
        (
            &[
                ("product_txn_amount", "54.90"),
                ("product_txn_shipping", "5.90"),
                ("transaction_amount", "54.90"),
            ],
            Ok((1, 4900, 590)),
        ),
        // ... split by quantity when exact.
        (
            &[
                ("product_txn_amount", "104.90"),
                ("product_txn_shipping", "5.90"),
                ("quantity", "2"),
                ("transaction_amount", "104.90"),
            ],
            Ok((2, 4950, 590)),
        ),
        // ... else one unit at the whole goods amount.
        (
            &[
                ("product_txn_amount", "15.90"),
                ("product_txn_shipping", "5.90"),
                ("quantity", "3"),
                ("transaction_amount", "15.90"),
            ],
            Ok((1, 1000, 590)),
        ),
        // The IPN shows the amount excludes shipping: a one-item order paid amount + shipping.
        (
            &[
                ("product_txn_amount", "49.00"),
                ("product_txn_shipping", "5.90"),
                ("transaction_amount", "54.90"),
                ("item_count", "1"),
            ],
            Ok((1, 4900, 590)),
        ),
        // ... or the shipping is larger than the amount.
        (
            &[
                ("product_txn_amount", "3.00"),
                ("product_txn_shipping", "4.00"),
            ],
            Ok((1, 300, 400)),
        ),
        // A multi-item order: transaction_amount covers other items, the guess stands.
        (
            &[
                ("product_txn_amount", "49.00"),
                ("product_txn_shipping", "5.90"),
                ("transaction_amount", "54.90"),
                ("item_count", "2"),
            ],
            Ok((1, 4310, 590)),
        ),
        // product_shipping_amount when product_txn_shipping is empty.
        (
            &[
                ("product_txn_amount", "20"),
                ("product_txn_shipping", ""),
                ("product_shipping_amount", "2.5"),
                ("transaction_amount", "20"),
            ],
            Ok((1, 1750, 250)),
        ),
        // amount when product_txn_amount is empty; no shipping fields at all.
        (
            &[
                ("product_txn_amount", ""),
                ("product_txn_shipping", ""),
                ("product_shipping_amount", ""),
                ("amount", "30"),
                ("quantity", "3"),
            ],
            Ok((3, 1000, 0)),
        ),
        // Not an amount: the reason names the field.
        (
            &[("product_txn_shipping", "free")],
            Err("the IPN's product_txn_shipping is not an amount: \"free\""),
        ),
        (
            &[
                ("product_txn_amount", ""),
                ("amount", ""),
                ("transaction_amount", ""),
            ],
            Err("the IPN has no amount"),
        ),
    ];
    for (changes, want) in rows {
        let got = mapping::item_price(&payment_with(changes))
            .map(|p| (p.quantity, p.unit_price.minor(), p.ship_price.minor()));
        assert_eq!(got, want.map_err(str::to_owned), "{changes:?}");
        if let Ok((qty, unit, ship)) = got {
            let e = payment_with(changes);
            let paid = ["product_txn_amount", "amount"]
                .iter()
                .find_map(|f| e.get(f))
                .and_then(|a| Money::parse_decimal(a).ok())
                .map(Money::minor)
                .unwrap_or_default();
            let total = i64::from(qty) * unit + ship;
            assert!(
                total == paid || total == paid + ship,
                "{changes:?}: total {total} vs amount {paid}"
            );
        }
    }
}

#[test]
fn the_order_carries_shipping_and_quantity() {
    let i = integration();
    let e = payment_with(&[
        ("product_txn_amount", "104.90"),
        ("product_txn_shipping", "5.90"),
        ("quantity", "2"),
        ("transaction_amount", "104.90"),
    ]);
    let o = mapping::order(&i, &e, 31, 0).expect("order");
    assert_eq!(o.items[0].quantity, 2);
    assert_eq!(o.items[0].unit_price, Money::from_minor(4950));
    assert_eq!(o.items[0].ship_price, Money::from_minor(590));
    assert_eq!(o.items[0].line_total(), Money::from_minor(10490));
}
