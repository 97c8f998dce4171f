//! The Konnektive client against the fake Konnektive, over real sockets: success and
//! receipts, every outcome class, reconciliation after an unknown outcome, QA approval, and
//! that no report ever carries the password.

#[path = "support/fake_konnektive.rs"]
mod fake_konnektive;

use fake_konnektive::{Behaviour, FakeConfig, FakeKonnektive, shift_day, utc_today};
use ipn_bridge::{config, connectors, domain};

use config::{Delivery, Target, TargetKind};
use connectors::KonnektiveClient;
use domain::{
    Action, Address, AttemptReport, Buyer, Day, DayWindow, Money, Order, OrderItem, Outcome,
    Receipt,
};
use secrecy::SecretString;
use std::time::Duration;

const PASSWORD: &str = "Zq9-s3cret-pw";
const TIMEOUT: Duration = Duration::from_millis(300);

/// The one-day window of the order's `placed_on` (the day the test imports it).
fn around(o: &Order) -> DayWindow {
    let day = Day::parse_iso(&o.placed_on).expect("placed_on is YYYY-MM-DD");
    DayWindow {
        first: day,
        last: day,
    }
}

fn fake_config() -> FakeConfig {
    FakeConfig {
        password: PASSWORD.to_owned(),
        ..FakeConfig::default()
    }
}

fn target(base_url: &str) -> Target {
    Target {
        name: "crm".to_owned(),
        kind: TargetKind::Konnektive,
        base_url: base_url.to_owned(),
        login_id: "ds24bridge".to_owned(),
        password: SecretString::from(PASSWORD),
        requests_per_second: 2.0,
        burst: 2,
        max_in_flight: 1,
        delivery: Delivery {
            timeout: TIMEOUT,
            retry_initial: Duration::from_secs(30),
            retry_max: Duration::from_secs(3600),
            give_up_after: Duration::from_secs(864_000),
        },
    }
}

fn client(fake: &FakeKonnektive) -> KonnektiveClient {
    KonnektiveClient::new(&target(&fake.base_url)).expect("client")
}

fn order(reference: &str) -> Order {
    Order {
        reference: reference.to_owned(),
        reference_field: "custom1".to_owned(),
        campaign_id: 12,
        buyer: Buyer {
            email: "max@example.com".to_owned(),
            first_name: "Jürgen".to_owned(),
            last_name: "Muster".to_owned(),
            company: "ACME & Söhne".to_owned(),
            phone: "4915112345678".to_owned(),
            ip_address: Some("203.0.113.5".to_owned()),
        },
        address: Address {
            line1: "Hauptstr. 1".to_owned(),
            line2: String::new(),
            city: "Berlin".to_owned(),
            state: "BE".to_owned(),
            postal_code: "10115".to_owned(),
            country: "DE".to_owned(),
        },
        items: vec![OrderItem {
            product_id: 31,
            quantity: 1,
            unit_price: Money::from_minor(4900),
        }],
        currency: "EUR".to_owned(),
        affiliate: Some("AFF123".to_owned()),
        placed_on: utc_today(),
        extra_fields: vec![("sourceValue1".to_owned(), "campaignkey".to_owned())],
    }
}

fn import(order: Order) -> Action {
    Action::ImportOrder {
        order: Box::new(order),
        auto_approve: false,
    }
}

/// No part of a report may contain the password, raw or form-encoded.
fn assert_clean(report: &AttemptReport) {
    let texts = [
        report.request.as_str(),
        report.response.as_str(),
        report.outcome.reason(),
    ];
    for text in texts {
        assert!(!text.contains(PASSWORD), "password leaked: {report:?}");
    }
}

fn receipt_of(report: &AttemptReport) -> Receipt {
    match &report.outcome {
        Outcome::Delivered(r) => r.clone(),
        other => panic!("not delivered: {other:?}\n{report:?}"),
    }
}

#[tokio::test]
async fn import_succeeds_and_returns_the_receipt() {
    let fake = FakeKonnektive::start(fake_config()).await;
    let report = client(&fake).execute(&import(order("DS24-A-1"))).await;
    assert_clean(&report);
    let receipt = receipt_of(&report);
    assert_eq!(report.endpoint, "order/import");
    assert_eq!(report.http_status, Some(200));
    assert!(!report.maybe_applied);

    let orders = fake.orders();
    assert_eq!(orders.len(), 1);
    let o = &orders[0];
    assert_eq!(receipt.order_id.as_deref(), Some(o.order_id.as_str()));
    assert_eq!(receipt.customer_id, Some(o.customer_id.to_string()));
    assert_eq!(receipt.purchase_ids, vec![o.items[0].purchase_id.clone()]);
    assert_eq!(o.order_id.len(), 10);

    // What reached the server: the values intact, the credentials only in the body.
    assert_eq!(o.param("firstName"), Some("Jürgen"));
    assert_eq!(o.param("companyName"), Some("ACME & Söhne"));
    assert_eq!(o.param("custom1"), Some("DS24-A-1"));
    assert_eq!(o.param("sourceValue1"), Some("campaignkey"));
    assert_eq!(o.param("product1_price"), Some("49.00"));
    assert_eq!(o.param("paySource"), Some("PREPAID"));
    assert_eq!(o.param("password"), Some(PASSWORD));
    let req = &fake.requests_to("order/import")[0];
    assert_eq!(req.path, "/order/import/");
    assert_eq!(req.method, "POST");
    assert_eq!(req.query, "");
    assert_eq!(
        req.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );

    // The stored request is the body minus the password.
    assert!(report.request.contains("loginId=ds24bridge"));
    assert!(report.request.contains("password=%5Bredacted%5D"));
    assert!(report.request.contains("custom1=DS24-A-1"));
}

#[tokio::test]
async fn error_with_http_200_is_retryable_not_success() {
    let fake = FakeKonnektive::start(fake_config()).await;
    fake.push_behaviour("order/import", Behaviour::Error("Gateway busy".to_owned()));
    let report = client(&fake).execute(&import(order("DS24-A-1"))).await;
    assert_clean(&report);
    assert_eq!(report.http_status, Some(200));
    assert!(
        matches!(&report.outcome, Outcome::Retryable { reason, .. } if reason.contains("Gateway busy")),
        "{report:?}"
    );
    assert!(!report.maybe_applied);
    assert!(fake.orders().is_empty());
}

#[tokio::test]
async fn html_502_is_retryable_and_maybe_applied() {
    let fake = FakeKonnektive::start(fake_config()).await;
    fake.push_behaviour("order/import", Behaviour::Html502);
    let report = client(&fake).execute(&import(order("DS24-A-1"))).await;
    assert_clean(&report);
    assert_eq!(report.outcome.label(), "retryable", "{report:?}");
    assert_eq!(report.http_status, Some(502));
    assert!(report.maybe_applied);
    assert!(report.response.contains("502 Bad Gateway"));
}

#[tokio::test]
async fn status_429_carries_retry_after() {
    let fake = FakeKonnektive::start(fake_config()).await;
    fake.push_behaviour("order/import", Behaviour::Status(429, Some("2".to_owned())));
    let report = client(&fake).execute(&import(order("DS24-A-1"))).await;
    assert_eq!(
        report.outcome,
        Outcome::Retryable {
            reason: "HTTP 429 from Konnektive (throttled or unavailable)".to_owned(),
            retry_after: Some(Duration::from_secs(2)),
        }
    );
    assert!(!report.maybe_applied);
}

#[tokio::test]
async fn empty_body_is_retryable_maybe_applied_and_reconcilable() {
    let fake = FakeKonnektive::start(fake_config()).await;
    fake.push_behaviour("order/import", Behaviour::after_apply(Behaviour::EmptyBody));
    let client = client(&fake);
    let o = order("DS24-A-1");
    let report = client.execute(&import(o.clone())).await;
    assert_eq!(report.outcome.label(), "retryable", "{report:?}");
    assert!(report.maybe_applied);
    let found = client.find_order(&o, around(&o)).await.expect("query");
    assert_eq!(
        found.and_then(|r| r.order_id),
        Some(fake.orders()[0].order_id.clone())
    );
}

#[tokio::test]
async fn timeout_after_create_is_unknown_and_reconciliation_finds_the_one_order() {
    let fake = FakeKonnektive::start(fake_config()).await;
    fake.push_behaviour("order/import", Behaviour::CreateThenHang(TIMEOUT * 10));
    let client = client(&fake);
    let o = order("DS24-A-1");
    let report = client.execute(&import(o.clone())).await;
    assert_clean(&report);
    assert_eq!(report.outcome.label(), "unknown", "{report:?}");
    assert!(report.maybe_applied);
    assert_eq!(report.http_status, None);

    let found = client
        .find_order(&o, around(&o))
        .await
        .expect("reconciliation query");
    let orders = fake.orders();
    assert_eq!(orders.len(), 1, "exactly one order exists");
    let fo = &orders[0];
    assert_eq!(
        found,
        Some(Receipt {
            order_id: Some(fo.order_id.clone()),
            customer_id: Some(fo.customer_id.to_string()),
            purchase_ids: vec![fo.items[0].purchase_id.clone()],
            transaction_ids: vec![],
        })
    );

    // The query: credentials in the body, e-mail + campaign + a ±1 day window.
    let q = &fake.requests_to("order/query")[0];
    assert_eq!(q.path, "/order/query/");
    assert_eq!(q.query, "");
    assert_eq!(q.param("emailAddress"), Some("max@example.com"));
    assert_eq!(q.param("campaignId"), Some("12"));
    assert_eq!(q.param("resultsPerPage"), Some("200"));
    assert_eq!(q.param("page"), Some("1"));
    assert!(q.param("startDate").is_some_and(|d| d.len() == 10));
}

#[tokio::test]
async fn delay_within_the_timeout_still_succeeds() {
    let fake = FakeKonnektive::start(fake_config()).await;
    fake.push_behaviour("order/import", Behaviour::Delay(TIMEOUT / 3));
    let report = client(&fake).execute(&import(order("DS24-A-1"))).await;
    receipt_of(&report);
}

#[tokio::test]
async fn dropped_connection_is_unknown() {
    let fake = FakeKonnektive::start(fake_config()).await;
    fake.push_behaviour(
        "order/import",
        Behaviour::after_apply(Behaviour::DropConnection),
    );
    let client = client(&fake);
    let o = order("DS24-A-1");
    let report = client.execute(&import(o.clone())).await;
    assert_clean(&report);
    assert_eq!(report.outcome.label(), "unknown", "{report:?}");
    assert!(report.maybe_applied);
    assert!(
        client
            .find_order(&o, around(&o))
            .await
            .expect("query")
            .is_some()
    );
}

#[tokio::test]
async fn connection_refused_is_retryable_and_not_applied() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let client = KonnektiveClient::new(&target(&format!("http://{addr}"))).expect("client");
    let report = client.execute(&import(order("DS24-A-1"))).await;
    assert_clean(&report);
    assert_eq!(report.outcome.label(), "retryable", "{report:?}");
    assert!(!report.maybe_applied);
    assert_eq!(report.http_status, None);
}

#[tokio::test]
async fn bad_password_is_target_down_and_never_leaks() {
    let fake = FakeKonnektive::start(fake_config()).await;
    fake.set_password("rotated-elsewhere");
    let client = client(&fake);
    let o = order("DS24-A-1");
    let report = client.execute(&import(o.clone())).await;
    assert_clean(&report);
    assert_eq!(
        report.outcome,
        Outcome::TargetDown {
            reason: "Invalid login credentials".to_owned()
        }
    );
    assert!(!report.maybe_applied);
    let err = client
        .find_order(&o, around(&o))
        .await
        .expect_err("query must fail");
    assert_clean(&err);
    assert_eq!(err.outcome.label(), "target_down");
    assert!(fake.orders().is_empty());
    assert!(!format!("{client:?}").contains(PASSWORD));
}

#[tokio::test]
async fn ip_not_allow_listed_is_target_down_with_the_ip() {
    let fake = FakeKonnektive::start(fake_config()).await;
    fake.set_allowed(false);
    let report = client(&fake).execute(&import(order("DS24-A-1"))).await;
    assert_eq!(
        report.outcome,
        Outcome::TargetDown {
            reason: "IP must be whitelisted - 127.0.0.1".to_owned()
        }
    );
}

#[tokio::test]
async fn validation_and_unknown_products_are_permanent() {
    let fake = FakeKonnektive::start(fake_config()).await;
    let client = client(&fake);

    let mut no_address = order("DS24-A-1");
    no_address.address = Address::default();
    let report = client.execute(&import(no_address)).await;
    match &report.outcome {
        Outcome::Permanent { reason } => {
            for field in ["shipAddress1", "shipCity", "shipPostalCode", "shipCountry"] {
                assert!(reason.contains(field), "{reason}");
            }
        }
        other => panic!("{other:?}"),
    }

    let mut base_product = order("DS24-A-2");
    base_product.items[0].product_id = 17;
    let report = client.execute(&import(base_product)).await;
    assert!(
        matches!(&report.outcome, Outcome::Permanent { reason } if reason.starts_with("No products exist in the order")),
        "{report:?}"
    );
    assert!(fake.orders().is_empty());
}

#[tokio::test]
async fn find_order_miss_is_none() {
    let fake = FakeKonnektive::start(fake_config()).await;
    let client = client(&fake);
    // Nothing at all: Konnektive's "No orders matching…" ERROR.
    assert_eq!(
        client
            .find_order(&order("DS24-A-1"), around(&order("DS24-A-1")))
            .await,
        Ok(None)
    );
    // Orders of the same buyer, but none with this reference.
    receipt_of(&client.execute(&import(order("DS24-A-2"))).await);
    assert_eq!(
        client
            .find_order(&order("DS24-A-1"), around(&order("DS24-A-1")))
            .await,
        Ok(None)
    );
    // A prefix is not a match.
    assert_eq!(
        client
            .find_order(&order("DS24-A-"), around(&order("DS24-A-")))
            .await,
        Ok(None)
    );
}

#[tokio::test]
async fn find_order_window_covers_one_day_either_side() {
    let fake = FakeKonnektive::start(fake_config()).await;
    let client = client(&fake);
    let o = order("DS24-A-1");
    let next_day = shift_day(&o.placed_on, 1).expect("date");
    // The account's timezone is a day ahead of UTC.
    fake.set_now(Some(&format!("{next_day} 00:30:00")));
    receipt_of(&client.execute(&import(o.clone())).await);
    assert!(
        client
            .find_order(&o, around(&o))
            .await
            .expect("query")
            .is_some()
    );

    let mut placed_earlier = o.clone();
    placed_earlier.placed_on = shift_day(&o.placed_on, -1).expect("date");
    assert_eq!(
        client
            .find_order(&placed_earlier, around(&placed_earlier))
            .await,
        Ok(None)
    );
}

#[tokio::test]
async fn find_order_follows_pages() {
    let fake = FakeKonnektive::start(fake_config()).await;
    let client = client(&fake);
    for i in 0..201 {
        receipt_of(&client.execute(&import(order(&format!("DS24-P-{i}")))).await);
    }
    let last = client
        .find_order(&order("DS24-P-200"), around(&order("DS24-P-200")))
        .await
        .expect("query")
        .expect("found on page 2");
    assert_eq!(last.order_id, Some(fake.orders()[200].order_id.clone()));
    assert_eq!(
        client
            .find_order(&order("DS24-P-999"), around(&order("DS24-P-999")))
            .await,
        Ok(None)
    );
    let pages: Vec<Option<String>> = fake
        .requests_to("order/query")
        .iter()
        .map(|r| r.param("page").map(str::to_owned))
        .collect();
    let two_pages = [Some("1".to_owned()), Some("2".to_owned())];
    assert_eq!(pages, [two_pages.clone(), two_pages].concat());
}

#[tokio::test]
async fn find_order_failure_is_an_error_report() {
    let fake = FakeKonnektive::start(fake_config()).await;
    let client = client(&fake);
    fake.push_behaviour("order/query", Behaviour::Html502);
    let err = client
        .find_order(&order("DS24-A-1"), around(&order("DS24-A-1")))
        .await
        .expect_err("must not claim 'not found'");
    assert_eq!(err.endpoint, "order/query");
    assert_eq!(err.outcome.label(), "retryable");
    assert!(!err.maybe_applied, "a read applies nothing");
    fake.push_behaviour("order/query", Behaviour::Delay(TIMEOUT * 3));
    let err = client
        .find_order(&order("DS24-A-1"), around(&order("DS24-A-1")))
        .await
        .expect_err("timeout");
    assert_eq!(err.outcome.label(), "retryable", "{err:?}");
}

#[tokio::test]
async fn held_order_is_approved_when_asked() {
    let fake = FakeKonnektive::start(FakeConfig {
        qa_hold: true,
        ..fake_config()
    })
    .await;
    let client = client(&fake);

    let held = client.execute(&import(order("DS24-A-1"))).await;
    receipt_of(&held);
    assert_eq!(fake.orders()[0].order_status, "PENDING");
    assert!(fake.requests_to("order/qa").is_empty());

    let approved = client
        .execute(&Action::ImportOrder {
            order: Box::new(order("DS24-A-2")),
            auto_approve: true,
        })
        .await;
    assert_clean(&approved);
    receipt_of(&approved);
    let o = &fake.orders()[1];
    assert_eq!(o.order_status, "COMPLETE");
    assert_eq!(o.review_status.as_deref(), Some("APPROVED"));
    assert!(
        approved.response.contains("order/qa (delivered)"),
        "{}",
        approved.response
    );

    // A failed approval leaves the import delivered (repeating it would duplicate it).
    fake.set_denied_endpoints(&["order/qa"]);
    let report = client
        .execute(&Action::ImportOrder {
            order: Box::new(order("DS24-A-3")),
            auto_approve: true,
        })
        .await;
    receipt_of(&report);
    assert!(
        report.response.contains("order/qa (target_down)"),
        "{}",
        report.response
    );
}

#[tokio::test]
async fn check_campaign_lists_campaign_products() {
    let fake = FakeKonnektive::start(fake_config()).await;
    let client = client(&fake);
    assert_eq!(client.check_campaign(12).await, Ok(vec![31, 32]));
    let err = client.check_campaign(999).await.expect_err("unknown");
    assert_eq!(err.outcome.label(), "permanent", "{err:?}");
    fake.set_allowed(false);
    let err = client
        .check_campaign(12)
        .await
        .expect_err("not allow-listed");
    assert_eq!(err.outcome.label(), "target_down");
}

/// Random faults on every endpoint; the dispatcher's rule (reconcile whatever may have been
/// applied before resending) must give exactly one Konnektive order per reference.
#[tokio::test]
async fn chaos_never_duplicates_an_order() {
    let fake = FakeKonnektive::start(fake_config()).await;
    fake.set_chaos(
        7,
        vec![
            (0.10, Behaviour::Html502),
            (0.10, Behaviour::after_apply(Behaviour::Html502)),
            (0.05, Behaviour::CreateThenHang(TIMEOUT * 4)),
            (0.05, Behaviour::after_apply(Behaviour::EmptyBody)),
            (0.05, Behaviour::after_apply(Behaviour::DropConnection)),
            (0.05, Behaviour::DropConnection),
            (0.05, Behaviour::Error("Please try again".to_owned())),
            (0.05, Behaviour::Status(503, Some("0".to_owned()))),
        ],
    );
    let client = client(&fake);
    let mut reports = Vec::new();
    let mut found_by_reconciliation = 0;
    for i in 0..25 {
        let o = order(&format!("DS24-C-{i}"));
        let mut must_reconcile = false;
        let mut done = false;
        for _ in 0..50 {
            if must_reconcile {
                match client.find_order(&o, around(&o)).await {
                    Ok(Some(_)) => {
                        found_by_reconciliation += 1;
                        done = true;
                        break;
                    }
                    Ok(None) => {}
                    Err(report) => {
                        reports.push(report);
                        continue;
                    }
                }
            }
            let report = client.execute(&import(o.clone())).await;
            let delivered = matches!(report.outcome, Outcome::Delivered(_));
            assert!(
                matches!(
                    report.outcome.label(),
                    "delivered" | "retryable" | "unknown"
                ),
                "{report:?}"
            );
            must_reconcile = report.maybe_applied;
            reports.push(report);
            if delivered {
                done = true;
                break;
            }
        }
        assert!(done, "DS24-C-{i} never got through");
    }
    for report in &reports {
        assert_clean(report);
    }
    let orders = fake.orders();
    assert_eq!(orders.len(), 25, "one order per reference");
    let mut refs: Vec<&str> = orders.iter().filter_map(|o| o.param("custom1")).collect();
    refs.sort_unstable();
    refs.dedup();
    assert_eq!(refs.len(), 25);
    assert!(
        found_by_reconciliation > 0,
        "some imports were only found by reconciliation"
    );
    assert!(
        reports.iter().any(|r| r.outcome.label() == "unknown"),
        "some outcomes were unknown"
    );
}
