//! The Konnektive client against the fake Konnektive, over real sockets: success and
//! receipts, every outcome class, reconciliation after an unknown outcome, QA approval,
//! actions on an earlier import (finding it, refunds, chargebacks, cancellations, finding an
//! applied refund), and that no report ever carries the password.

#[path = "support/fake_konnektive.rs"]
mod fake_konnektive;

use fake_konnektive::{Behaviour, FakeConfig, FakeKonnektive, shift_day, utc_today};
use ipn_bridge::{config, connectors, domain};

use config::{Delivery, Target, TargetKind};
use connectors::{Campaign, KonnektiveClient};
use domain::{
    Action, Address, AttemptReport, Buyer, Day, DayWindow, ImportRef, Money, Order, OrderItem,
    Outcome, Receipt,
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
            ship_price: Money::ZERO,
        }],
        currency: "EUR".to_owned(),
        placed_on: utc_today(),
        extra_fields: vec![("sourceValue1".to_owned(), "campaignkey".to_owned())],
        address_fallback: Vec::new(),
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
            for field in [
                "address1",
                "city",
                "postalCode",
                "country",
                "shipAddress1",
                "shipCity",
                "shipPostalCode",
                "shipCountry",
            ] {
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

/// The fake answers a request without a postal address as the reference records (E3): HTTP
/// 200, `result: ERROR`, one validation object naming every missing billing and shipping
/// field; and a state longer than 6 characters is refused with a validation object.
#[tokio::test]
async fn fake_import_requires_the_address_and_refuses_long_states_like_konnektive() {
    let fake = FakeKonnektive::start(fake_config()).await;
    let url = format!("{}/order/import/", fake.base_url);
    let post = |extra: Vec<(&'static str, &'static str)>| {
        let url = url.clone();
        async move {
            let mut form = vec![
                ("loginId", "ds24bridge"),
                ("password", PASSWORD),
                ("campaignId", "12"),
                ("paySource", "PREPAID"),
                ("firstName", "Test"),
                ("lastName", "Kauf"),
                ("emailAddress", "kaeufer@example.de"),
                ("product1_id", "31"),
            ];
            form.extend(extra);
            let resp = reqwest::Client::new()
                .post(url)
                .form(&form)
                .send()
                .await
                .expect("post");
            let status = resp.status().as_u16();
            let body: serde_json::Value = resp.json().await.expect("json");
            (status, body)
        }
    };
    let (status, body) = post(vec![("country", "CH"), ("shipCountry", "CH")]).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        serde_json::json!({"result": "ERROR", "message": {
            "address1": "is a required field",
            "city": "is a required field",
            "postalCode": "is a required field",
            "shipAddress1": "is a required field",
            "shipCity": "is a required field",
            "shipPostalCode": "is a required field",
        }})
    );
    let address = vec![
        ("address1", "Digital delivery"),
        ("city", "Online"),
        ("postalCode", "00000"),
        ("country", "US"),
        ("shipAddress1", "Digital delivery"),
        ("shipCity", "Online"),
        ("shipPostalCode", "00000"),
        ("shipCountry", "US"),
    ];
    let mut long_state = address.clone();
    long_state.extend([("state", "California"), ("shipState", "CA")]);
    let (status, body) = post(long_state).await;
    assert_eq!(status, 200);
    assert_eq!(body["result"], "ERROR");
    let message = body["message"].as_object().expect("validation object");
    assert_eq!(message.keys().collect::<Vec<_>>(), ["state"]);
    assert!(fake.orders().is_empty());
    let (_, body) = post(address).await;
    assert_eq!(body["result"], "SUCCESS", "{body}");
    assert_eq!(fake.orders().len(), 1);
}

/// `ship_price` is sent once per line, so Konnektive's total is `qty × price + shipPrice`.
#[tokio::test]
async fn shipping_is_sent_per_line_and_counted_once() {
    let fake = FakeKonnektive::start(fake_config()).await;
    let mut o = order("DS24-S-1");
    o.items[0].quantity = 2;
    o.items[0].unit_price = Money::from_minor(2500);
    o.items[0].ship_price = Money::from_minor(590);
    receipt_of(&client(&fake).execute(&import(o)).await);
    let created = &fake.orders()[0];
    assert_eq!(created.param("product1_qty"), Some("2"));
    assert_eq!(created.param("product1_price"), Some("25.00"));
    assert_eq!(created.param("product1_shipPrice"), Some("5.90"));
    assert_eq!(created.total_cents, 5590);
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
async fn check_campaign_lists_campaign_products_and_currency() {
    let fake = FakeKonnektive::start(fake_config()).await;
    let client = client(&fake);
    assert_eq!(
        client.check_campaign(12).await,
        Ok(Campaign {
            products: vec![31, 32],
            currency: Some("EUR".to_owned()),
        }),
        "a campaign books EUR unless configured otherwise"
    );
    fake.set_campaign(15, vec![41]);
    fake.set_campaign_currency(15, Some("USD"));
    assert_eq!(
        client.check_campaign(15).await.map(|c| c.currency),
        Ok(Some("USD".to_owned()))
    );
    fake.set_campaign_currency(15, None);
    assert_eq!(
        client.check_campaign(15).await.map(|c| c.currency),
        Ok(None),
        "an answer without a currency field"
    );
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

// ---------------------------------------------------------------------------------------
// Actions on an earlier import
// ---------------------------------------------------------------------------------------

fn today() -> DayWindow {
    let day = Day::parse_iso(&utc_today()).expect("today");
    DayWindow {
        first: day,
        last: day,
    }
}

/// The import of Digistore24 order `O1`, item `item`, payment `payment` (or the latest).
fn import_ref(item: &str, payment: Option<&str>) -> ImportRef {
    ImportRef {
        ds24_order_id: "O1".to_owned(),
        ds24_item: item.to_owned(),
        payment_transaction: payment.map(str::to_owned),
        reference_field: "custom1".to_owned(),
        email: "max@example.com".to_owned(),
        campaign_id: 12,
        since: utc_today(),
    }
}

fn refund(amount_minor: i64, full: bool, ds24_txn: &str) -> Action {
    Action::Refund {
        import: import_ref("1", Some("T1")),
        amount: Money::from_minor(amount_minor),
        ds24_transaction_id: ds24_txn.to_owned(),
        full,
    }
}

/// Imports `DS24-O1-1-T1` (49.00) and returns its receipt.
async fn imported(client: &KonnektiveClient) -> Receipt {
    let report = client.execute(&import(order("DS24-O1-1-T1"))).await;
    receipt_of(&report)
}

#[tokio::test]
async fn import_then_full_refund_is_external_and_keeps_the_ds24_id() {
    let fake = FakeKonnektive::start(FakeConfig {
        object_messages: true,
        ..fake_config()
    })
    .await;
    let client = client(&fake);
    let import = imported(&client).await;
    let order_id = import.order_id.clone().expect("order id");

    let report = client
        .execute_on(&refund(4900, true, "T-REF-1"), &import)
        .await;
    assert_clean(&report);
    let receipt = receipt_of(&report);
    assert_eq!(report.endpoint, "transactions/refund");
    assert!(!report.maybe_applied);
    assert!(
        report.request.contains("--- transactions/query: ")
            && report.request.contains("--- transactions/refund: "),
        "{}",
        report.request
    );
    assert!(report.request.contains("password=%5Bredacted%5D"));

    let txns = fake.transactions();
    assert_eq!(txns.len(), 2);
    let (sale, refund_txn) = (&txns[0], &txns[1]);
    assert_eq!(refund_txn.txn_type, "REFUND");
    assert_eq!(refund_txn.order_id, order_id);
    assert_eq!(refund_txn.amount_cents, 4900);
    assert_eq!(refund_txn.merchant_txn_id.as_deref(), Some("T-REF-1"));
    assert_eq!(refund_txn.parent_transaction_id, Some(sale.transaction_id));
    assert!(refund_txn.external);
    assert_eq!(
        receipt,
        Receipt {
            order_id: Some(order_id.clone()),
            transaction_ids: vec![refund_txn.transaction_id.to_string()],
            ..Receipt::default()
        }
    );
    let o = &fake.orders()[0];
    assert_eq!(o.order_status, "REFUNDED");
    assert_eq!(o.refund_remaining_cents, 0);
    let sent = &fake.requests_to("transactions/refund")[0];
    assert_eq!(sent.param("externalRefund"), Some("1"));
    assert_eq!(sent.param("fullRefund"), Some("1"));
    assert_eq!(sent.param("refundAmount"), Some("49.00"));
    assert_eq!(sent.param("refundMerchantTxnId"), Some("T-REF-1"));
    assert_eq!(
        sent.param("transactionId"),
        Some(sale.transaction_id.to_string().as_str())
    );
    assert_eq!(sent.param("cancelPurchase"), None);

    // Again (e.g. a person refunded it first): nothing remains refundable, so nothing is
    // sent and the refund counts as delivered ("already refunded").
    let again = client
        .execute_on(&refund(4900, true, "T-REF-1"), &import)
        .await;
    assert_clean(&again);
    assert_eq!(
        receipt_of(&again).order_id.as_deref(),
        Some(order_id.as_str())
    );
    assert!(again.response.contains("already refunded"), "{again:?}");
    assert_eq!(fake.requests_to("transactions/refund").len(), 1);
    assert_eq!(fake.transactions().len(), 2);
}

#[tokio::test]
async fn full_refund_is_sent_only_when_the_amount_empties_the_transaction() {
    let fake = FakeKonnektive::start(fake_config()).await;
    let client = client(&fake);
    let import = imported(&client).await;
    // The action calls itself full (it covers what Digistore24 paid for the item), but
    // 10.50 is not all that remains of the 49.00 transaction: no fullRefund.
    receipt_of(
        &client
            .execute_on(&refund(1050, true, "T-REF-5"), &import)
            .await,
    );
    let sent = &fake.requests_to("transactions/refund")[0];
    assert_eq!(sent.param("refundAmount"), Some("10.50"));
    assert_eq!(sent.param("fullRefund"), None);
    assert_eq!(fake.orders()[0].refund_remaining_cents, 3850);
    // The rest, exactly: now fullRefund=1 goes with it.
    receipt_of(
        &client
            .execute_on(&refund(3850, false, "T-REF-6"), &import)
            .await,
    );
    let sent = &fake.requests_to("transactions/refund")[1];
    assert_eq!(sent.param("refundAmount"), Some("38.50"));
    assert_eq!(sent.param("fullRefund"), Some("1"));
    assert_eq!(fake.orders()[0].refund_remaining_cents, 0);
}

#[tokio::test]
async fn a_refund_above_what_remains_is_capped_at_the_remainder() {
    let fake = FakeKonnektive::start(fake_config()).await;
    let client = client(&fake);
    let import = imported(&client).await;
    receipt_of(
        &client
            .execute_on(&refund(2000, false, "T-REF-7"), &import)
            .await,
    );
    // 29.00 remain; a second refund of 49.00 records 29.00, as the full remainder.
    let report = client
        .execute_on(&refund(4900, true, "T-REF-8"), &import)
        .await;
    assert_clean(&report);
    receipt_of(&report);
    let sent = &fake.requests_to("transactions/refund")[1];
    assert_eq!(sent.param("refundAmount"), Some("29.00"));
    assert_eq!(sent.param("fullRefund"), Some("1"));
    assert!(
        report
            .request
            .contains("refund of 49.00 capped at 29.00: only 29.00 remains refundable"),
        "{}",
        report.request
    );
    assert_eq!(fake.orders()[0].refund_remaining_cents, 0);
    let refunded: i64 = fake
        .transactions()
        .iter()
        .filter(|t| t.txn_type == "REFUND")
        .map(|t| t.amount_cents)
        .sum();
    assert_eq!(refunded, 4900, "never more than the sale");
}

#[tokio::test]
async fn the_fake_refuses_a_refund_above_what_remains_as_a_validation_error() {
    let fake = FakeKonnektive::start(fake_config()).await;
    let client = client(&fake);
    imported(&client).await;
    let sale = fake.transactions()[0].transaction_id.to_string();
    for full in [None, Some("1")] {
        let mut form = vec![
            ("loginId", "ds24bridge"),
            ("password", PASSWORD),
            ("transactionId", sale.as_str()),
            ("refundAmount", "49.01"),
            ("externalRefund", "1"),
        ];
        if let Some(f) = full {
            form.push(("fullRefund", f));
        }
        let answer: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/transactions/refund/", fake.base_url))
            .form(&form)
            .send()
            .await
            .expect("POST")
            .json()
            .await
            .expect("json");
        assert_eq!(answer["result"], "ERROR", "{answer}");
        let text = answer["message"]["refundAmount"].as_str().unwrap_or("");
        assert!(
            text.contains("exceeds the amount remaining to be refunded (49.00)"),
            "{answer}"
        );
        let class = connectors::classify(200, None, answer.to_string().as_bytes());
        assert_eq!(class.outcome.label(), "permanent", "{full:?}");
    }
    assert_eq!(fake.orders()[0].refund_remaining_cents, 4900);
}

#[tokio::test]
async fn partial_refund_sends_the_amount_only() {
    let fake = FakeKonnektive::start(fake_config()).await;
    let client = client(&fake);
    let import = imported(&client).await;
    let report = client
        .execute_on(&refund(-1050, false, "T-REF-2"), &import)
        .await;
    assert_clean(&report);
    // The string message carries no refund transaction id.
    assert_eq!(
        receipt_of(&report),
        Receipt {
            order_id: import.order_id.clone(),
            ..Receipt::default()
        }
    );
    let txns = fake.transactions();
    assert_eq!(txns.len(), 2);
    assert_eq!(txns[1].amount_cents, 1050);
    assert_eq!(txns[1].merchant_txn_id.as_deref(), Some("T-REF-2"));
    assert!(txns[1].external);
    assert_eq!(fake.orders()[0].refund_remaining_cents, 3850);
    let sent = &fake.requests_to("transactions/refund")[0];
    assert_eq!(sent.param("refundAmount"), Some("10.50"));
    assert_eq!(sent.param("fullRefund"), None);
    assert_eq!(sent.param("externalRefund"), Some("1"));
}

#[tokio::test]
async fn refund_goes_to_the_imported_sale_not_a_later_one() {
    let fake = FakeKonnektive::start(fake_config()).await;
    let client = client(&fake);
    let import = imported(&client).await;
    let order_id = import.order_id.clone().expect("order id");
    let sale = fake.transactions()[0].transaction_id;
    fake.set_now(Some("2099-01-01 00:00:00"));
    fake.push_transaction(&order_id, "SALE", "SUCCESS", 999)
        .expect("upsale");
    fake.push_transaction(&order_id, "SALE", "HARD_DECLINE", 999)
        .expect("declined");
    receipt_of(
        &client
            .execute_on(&refund(100, false, "T-REF-3"), &import)
            .await,
    );
    let sent = &fake.requests_to("transactions/refund")[0];
    assert_eq!(sent.param("transactionId"), Some(sale.to_string().as_str()));
}

#[tokio::test]
async fn refund_without_a_transaction_is_permanent() {
    let fake = FakeKonnektive::start(fake_config()).await;
    let client = client(&fake);
    let missing = Receipt {
        order_id: Some("DEADBEEF00".to_owned()),
        ..Receipt::default()
    };
    let report = client
        .execute_on(&refund(4900, true, "T-REF-4"), &missing)
        .await;
    assert_clean(&report);
    assert!(
        matches!(&report.outcome, Outcome::Permanent { reason } if reason.contains("no transaction for order DEADBEEF00")),
        "{report:?}"
    );
    assert!(!report.maybe_applied);
    assert_eq!(report.endpoint, "transactions/query");
    assert!(fake.requests_to("transactions/refund").is_empty());

    let no_order = client
        .execute_on(&refund(4900, true, "T-REF-4"), &Receipt::default())
        .await;
    assert_eq!(no_order.outcome.label(), "permanent", "{no_order:?}");
}

#[tokio::test]
async fn chargeback_marks_the_sale() {
    let fake = FakeKonnektive::start(fake_config()).await;
    let client = client(&fake);
    let import = imported(&client).await;
    let action = Action::Chargeback {
        import: import_ref("1", Some("T1")),
        amount: Money::from_minor(4900),
        date: "2026-03-20".to_owned(),
        ds24_transaction_id: "T-CB-1".to_owned(),
    };
    let report = client.execute_on(&action, &import).await;
    assert_clean(&report);
    assert_eq!(report.endpoint, "transactions/update");
    let sale = &fake.transactions()[0];
    assert_eq!(
        receipt_of(&report),
        Receipt {
            order_id: import.order_id.clone(),
            transaction_ids: vec![sale.transaction_id.to_string()],
            ..Receipt::default()
        }
    );
    assert!(sale.is_chargedback);
    assert_eq!(sale.chargeback_amount_cents, Some(4900));
    assert_eq!(sale.chargeback_date.as_deref(), Some("03/20/2026"));
    assert_eq!(sale.chargeback_reason_code.as_deref(), Some("DS24"));
    assert_eq!(
        sale.chargeback_note.as_deref(),
        Some("Digistore24 chargeback T-CB-1 of order O1")
    );
    // Marking it again is harmless and delivered.
    let again = client.execute_on(&action, &import).await;
    receipt_of(&again);
    assert!(again.response.contains("already marked as a chargeback"));

    // A date that is not YYYY-MM-DD never leaves the process.
    let bad = Action::Chargeback {
        import: import_ref("1", Some("T1")),
        amount: Money::from_minor(4900),
        date: "20.03.2026".to_owned(),
        ds24_transaction_id: "T-CB-2".to_owned(),
    };
    let before = fake.requests().len();
    assert_eq!(
        client.execute_on(&bad, &import).await.outcome.label(),
        "permanent"
    );
    assert_eq!(fake.requests().len(), before);
}

#[tokio::test]
async fn cancel_purchase_cancels_every_purchase() {
    let fake = FakeKonnektive::start(fake_config()).await;
    let client = client(&fake);
    let mut two = order("DS24-O1-1-T1");
    two.items.push(OrderItem {
        product_id: 32,
        quantity: 1,
        unit_price: Money::from_minor(995),
        ship_price: Money::ZERO,
    });
    let import = receipt_of(&client.execute(&import(two)).await);
    assert_eq!(import.purchase_ids.len(), 2);
    let action = Action::CancelPurchase {
        import: import_ref("1", None),
        reason: "Digistore24 subscription cancelled".to_owned(),
    };
    let report = client.execute_on(&action, &import).await;
    assert_clean(&report);
    assert_eq!(report.endpoint, "purchase/cancel");
    assert_eq!(
        receipt_of(&report),
        Receipt {
            order_id: import.order_id.clone(),
            purchase_ids: import.purchase_ids.clone(),
            ..Receipt::default()
        }
    );
    let o = &fake.orders()[0];
    assert!(o.items.iter().all(|i| i.purchase_status == "CANCELLED"));
    let sent = fake.requests_to("purchase/cancel");
    assert_eq!(sent.len(), 2);
    assert_eq!(
        sent[0].param("cancelReason"),
        Some("Digistore24 subscription cancelled")
    );

    // Without purchase ids in the receipt they are read from order/query; already
    // cancelled purchases count as delivered.
    let bare = Receipt {
        order_id: import.order_id.clone(),
        ..Receipt::default()
    };
    let again = client.execute_on(&action, &bare).await;
    assert_clean(&again);
    assert_eq!(receipt_of(&again).purchase_ids.len(), 2);
    assert!(
        again.request.contains("--- order/query: "),
        "{}",
        again.request
    );
    assert_eq!(
        fake.requests_to("order/query")[0].param("orderId"),
        import.order_id.as_deref()
    );
}

#[tokio::test]
async fn cancel_purchase_stops_at_the_first_failure() {
    let fake = FakeKonnektive::start(fake_config()).await;
    let client = client(&fake);
    let mut two = order("DS24-O1-1-T1");
    two.items.push(OrderItem {
        product_id: 32,
        quantity: 1,
        unit_price: Money::from_minor(995),
        ship_price: Money::ZERO,
    });
    let import = receipt_of(&client.execute(&import(two)).await);
    fake.push_behaviour("purchase/cancel", Behaviour::Normal);
    fake.push_behaviour("purchase/cancel", Behaviour::Html502);
    let action = Action::CancelPurchase {
        import: import_ref("1", None),
        reason: String::new(),
    };
    let report = client.execute_on(&action, &import).await;
    assert_eq!(report.outcome.label(), "retryable", "{report:?}");
    assert!(report.maybe_applied, "the first purchase was cancelled");
    assert_eq!(report.http_status, Some(502));
    let sent = fake.requests_to("purchase/cancel");
    assert_eq!(
        sent[0].param("cancelReason"),
        Some("Cancelled in Digistore24")
    );
    // The retry completes the job.
    receipt_of(&client.execute_on(&action, &import).await);
    assert!(
        fake.orders()[0]
            .items
            .iter()
            .all(|i| i.purchase_status == "CANCELLED")
    );
}

#[tokio::test]
async fn cancel_order_without_refund() {
    let fake = FakeKonnektive::start(fake_config()).await;
    let client = client(&fake);
    let import = imported(&client).await;
    let action = Action::CancelOrder {
        import: import_ref("1", Some("T1")),
        reason: "Digistore24 refund".to_owned(),
    };
    let report = client.execute_on(&action, &import).await;
    assert_clean(&report);
    assert_eq!(report.endpoint, "order/cancel");
    assert!(!report.request.contains("--- "), "one call, plain request");
    assert_eq!(
        receipt_of(&report),
        Receipt {
            order_id: import.order_id.clone(),
            ..Receipt::default()
        }
    );
    let o = &fake.orders()[0];
    assert_eq!(o.order_status, "CANCELLED");
    assert_eq!(o.cancel_reason.as_deref(), Some("Digistore24 refund"));
    assert_eq!(o.refund_remaining_cents, 4900, "nothing refunded");
    let sent = &fake.requests_to("order/cancel")[0];
    assert_eq!(sent.param("fullRefund"), Some("0"));
    assert!(fake.transactions().iter().all(|t| t.txn_type == "SALE"));
    receipt_of(&client.execute_on(&action, &import).await);
}

#[tokio::test]
async fn refund_that_hangs_after_applying_is_found_not_repeated() {
    let fake = FakeKonnektive::start(fake_config()).await;
    let client = client(&fake);
    let import = imported(&client).await;
    let action = refund(4900, true, "T-REF-5");

    // Nothing applied yet: nothing found.
    assert_eq!(
        client.find_applied(&action, Some(&import), today()).await,
        Ok(None)
    );

    fake.push_behaviour(
        "transactions/refund",
        Behaviour::CreateThenHang(TIMEOUT * 2),
    );
    let report = client.execute_on(&action, &import).await;
    assert_clean(&report);
    assert_eq!(report.outcome.label(), "unknown", "{report:?}");
    assert!(report.maybe_applied);
    assert_eq!(report.endpoint, "transactions/refund");

    let found = client
        .find_applied(&action, Some(&import), today())
        .await
        .expect("lookup")
        .expect("the refund exists");
    let refunds: Vec<_> = fake
        .transactions()
        .into_iter()
        .filter(|t| t.txn_type == "REFUND")
        .collect();
    assert_eq!(refunds.len(), 1, "exactly one refund");
    assert_eq!(
        found,
        Receipt {
            order_id: import.order_id.clone(),
            transaction_ids: vec![refunds[0].transaction_id.to_string()],
            ..Receipt::default()
        }
    );
    // Without the resolved import, the lookup finds the import first.
    assert_eq!(
        client.find_applied(&action, None, today()).await,
        Ok(Some(found))
    );
    // Another Digistore24 refund id is not this refund.
    assert_eq!(
        client
            .find_applied(&refund(4900, true, "T-REF-6"), Some(&import), today())
            .await,
        Ok(None)
    );
    assert_eq!(fake.requests_to("transactions/refund").len(), 1);
}

#[tokio::test]
async fn refund_behind_a_502_is_maybe_applied_and_found() {
    let fake = FakeKonnektive::start(fake_config()).await;
    let client = client(&fake);
    let import = imported(&client).await;
    let action = refund(1000, false, "T-REF-7");
    fake.push_behaviour(
        "transactions/refund",
        Behaviour::after_apply(Behaviour::Html502),
    );
    let report = client.execute_on(&action, &import).await;
    assert_clean(&report);
    assert_eq!(report.outcome.label(), "retryable", "{report:?}");
    assert!(report.maybe_applied);
    assert!(
        client
            .find_applied(&action, Some(&import), today())
            .await
            .expect("lookup")
            .is_some()
    );

    // A read failing inside the attempt applied nothing.
    fake.push_behaviour("transactions/query", Behaviour::Html502);
    let report = client
        .execute_on(&refund(1000, false, "T-REF-8"), &import)
        .await;
    assert_eq!(report.endpoint, "transactions/query");
    assert_eq!(report.outcome.label(), "retryable");
    assert!(!report.maybe_applied);
    // An ERROR envelope on the write applied nothing either.
    fake.push_behaviour(
        "transactions/refund",
        Behaviour::Error("Gateway busy".to_owned()),
    );
    let report = client
        .execute_on(&refund(1000, false, "T-REF-8"), &import)
        .await;
    assert_eq!(report.outcome.label(), "retryable");
    assert!(!report.maybe_applied);
    assert_eq!(
        fake.transactions()
            .iter()
            .filter(|t| t.txn_type == "REFUND")
            .count(),
        1
    );
}

#[tokio::test]
async fn find_applied_is_none_for_repeatable_actions() {
    let fake = FakeKonnektive::start(fake_config()).await;
    let client = client(&fake);
    let receipt = imported(&client).await;
    let cancel = Action::CancelOrder {
        import: import_ref("1", None),
        reason: "x".to_owned(),
    };
    assert_eq!(
        client.find_applied(&cancel, Some(&receipt), today()).await,
        Ok(None)
    );
    let o = order("DS24-O1-1-T1");
    assert_eq!(
        client
            .find_applied(&import(o.clone()), None, around(&o))
            .await,
        Ok(Some(receipt.clone()))
    );
    assert_eq!(fake.requests().len(), 2, "the import and one order/query");
}

#[tokio::test]
async fn find_import_picks_the_latest_and_honours_the_payment() {
    let fake = FakeKonnektive::start(fake_config()).await;
    let client = client(&fake);
    let day = utc_today();
    let mut ids = Vec::new();
    for (time, reference) in [
        ("10:00:00", "DS24-O1-1-T1"),
        ("11:00:00", "DS24-O1-1-T2"),
        ("12:00:00", "DS24-O1-2-T3"),
        ("13:00:00", "DS24-O1-10-T4"),
        ("14:00:00", "DS24-O2-1-T5"),
        ("09:00:00", "DS24-O1-1-T0"),
    ] {
        fake.set_now(Some(&format!("{day} {time}")));
        let r = receipt_of(&client.execute(&import(order(reference))).await);
        ids.push(r.order_id.expect("order id"));
    }
    let found = |r: Option<Receipt>| r.and_then(|r| r.order_id);

    let latest = client
        .find_import(&import_ref("1", None), today())
        .await
        .expect("query");
    assert_eq!(
        found(latest),
        Some(ids[1].clone()),
        "T2 is the latest of item 1"
    );
    let first = client
        .find_import(&import_ref("1", Some("T1")), today())
        .await
        .expect("query");
    assert_eq!(found(first), Some(ids[0].clone()));
    let other_item = client
        .find_import(&import_ref("10", None), today())
        .await
        .expect("query");
    assert_eq!(found(other_item), Some(ids[3].clone()));
    assert_eq!(
        client
            .find_import(&import_ref("1", Some("T9")), today())
            .await,
        Ok(None)
    );
    let q = &fake.requests_to("order/query")[0];
    assert_eq!(q.param("emailAddress"), Some("max@example.com"));
    assert_eq!(q.param("campaignId"), Some("12"));
    assert_eq!(q.param("resultsPerPage"), Some("200"));
}

#[tokio::test]
async fn find_import_reads_every_page() {
    let fake = FakeKonnektive::start(fake_config()).await;
    let client = client(&fake);
    let day = utc_today();
    fake.set_now(Some(&format!("{day} 12:00:00")));
    let early = receipt_of(&client.execute(&import(order("DS24-O1-1-T1"))).await);
    fake.set_now(Some(&format!("{day} 08:00:00")));
    for i in 0..200 {
        receipt_of(&client.execute(&import(order(&format!("DS24-X-{i}")))).await);
    }
    // The match on page 1 is later than the one on page 2: the latest still wins.
    fake.set_now(Some(&format!("{day} 07:00:00")));
    receipt_of(&client.execute(&import(order("DS24-O1-1-T2"))).await);
    let found = client
        .find_import(&import_ref("1", None), today())
        .await
        .expect("query");
    assert_eq!(found.and_then(|r| r.order_id), early.order_id);
    let pages: Vec<Option<String>> = fake
        .requests_to("order/query")
        .iter()
        .map(|r| r.param("page").map(str::to_owned))
        .collect();
    assert_eq!(pages, [Some("1".to_owned()), Some("2".to_owned())]);
}

#[tokio::test]
async fn find_import_without_an_import_is_none() {
    let fake = FakeKonnektive::start(fake_config()).await;
    let client = client(&fake);
    assert_eq!(
        client.find_import(&import_ref("1", None), today()).await,
        Ok(None)
    );
    receipt_of(&client.execute(&import(order("DS24-O2-1-T1"))).await);
    receipt_of(&client.execute(&import(order("DS24-O1-11"))).await);
    assert_eq!(
        client.find_import(&import_ref("1", None), today()).await,
        Ok(None)
    );
    fake.push_behaviour("order/query", Behaviour::Html502);
    let err = client
        .find_import(&import_ref("1", None), today())
        .await
        .expect_err("a failed read is no answer");
    assert_eq!(err.outcome.label(), "retryable");
    assert!(!err.maybe_applied);
}

#[tokio::test]
async fn execute_refuses_actions_on_an_import() {
    let fake = FakeKonnektive::start(fake_config()).await;
    let report = client(&fake).execute(&refund(100, false, "T")).await;
    assert!(
        matches!(&report.outcome, Outcome::Permanent { reason } if reason.contains("execute_on")),
        "{report:?}"
    );
    assert!(!report.maybe_applied);
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn actions_never_leak_the_password() {
    let fake = FakeKonnektive::start(fake_config()).await;
    let client = client(&fake);
    let import = imported(&client).await;
    fake.set_password("rotated-elsewhere");
    let actions = [
        refund(100, false, "T"),
        Action::Chargeback {
            import: import_ref("1", None),
            amount: Money::from_minor(100),
            date: "2026-03-20".to_owned(),
            ds24_transaction_id: "T".to_owned(),
        },
        Action::CancelPurchase {
            import: import_ref("1", None),
            reason: PASSWORD.to_owned(),
        },
        Action::CancelOrder {
            import: import_ref("1", None),
            reason: PASSWORD.to_owned(),
        },
    ];
    for action in &actions {
        let report = client.execute_on(action, &import).await;
        assert_clean(&report);
        assert_eq!(report.outcome.label(), "target_down", "{report:?}");
        assert!(!report.maybe_applied);
        if let Err(err) = client.find_applied(action, Some(&import), today()).await {
            assert_clean(&err);
        }
    }
    let err = client
        .find_import(&import_ref("1", None), today())
        .await
        .expect_err("bad login");
    assert_clean(&err);
}
