//! Request building for Konnektive: turns domain values into the flat parameter lists the API
//! takes, and renders them for the wire and for the attempts table.
//!
//! Everything here is pure (no I/O, no clock, no secrets): the client adds `loginId` and
//! `password` itself, right before sending. This module must not know about HTTP, response
//! shapes or outcome classes.
//!
//! Decisions:
//! * **Order of parameters** is fixed (see [`import_params`]) so the stored request of an
//!   attempt is stable and diffable, and `extra_fields` come last so they visibly override.
//! * **Empty values are omitted.** An empty value means "not given" everywhere in this program;
//!   for a field Konnektive requires, omitting it makes Konnektive name the field in its
//!   validation map, which is a better alert than an empty string would give.
//! * **The reference is never cut, and never overridden** by `extra_fields`: it is the key by
//!   which an import with an unknown outcome is found again (`order/query`). Cutting it could
//!   make two orders share a key; overriding it would turn a timeout into a duplicate order.
//!   Keeping it within the field's limit (50 for `customN`) is the rules module's job.
//! * **Credentials are not import parameters**: an `extra_fields` entry named `loginId` or
//!   `password` is dropped, so the credentials on the wire are always the configured ones and
//!   redaction by name is complete.
//! * **Field lengths** come from [`FIELD_MAX_CHARS`] (third-party validation rules, reference
//!   §5; not official limits). Values are cut on char boundaries, counting chars, except the
//!   codes in [`NEVER_CUT`]: a cut state or country is a wrong one (`Califo`), so a value
//!   too long for them is left out instead (the rules send codes, so this is a safety net).
//! * **No `affId` of our own**: Konnektive only accepts affiliate ids it knows (reference
//!   §3.1 "Affiliate"), so `affId` is sent only when `extra_fields` (the integration's
//!   `fields` table) sets it.
//! * **Shipping** is the item's `ship_price`, once per line: Konnektive's line total is
//!   taken to be `qty × price + shipPrice` (the rules choose the numbers so that this is what
//!   the buyer paid; see `rules::mapping::item_price`).
//! * **Actions on an earlier import** (refund, chargeback, cancellations; reference §3.7–§3.9)
//!   never touch a payment gateway: a refund always carries `externalRefund=1` (Digistore24
//!   paid it out) and our Digistore24 refund transaction id as `refundMerchantTxnId`, the key
//!   by which a refund with an unknown outcome is found again. `cancelPurchase` is not sent
//!   with a refund: cancelling is a separate, configurable action. Amounts are sent as
//!   positive two-decimal numbers (Digistore24 writes refunds as negative amounts).
//!   `cancelReason` is required by Konnektive, so an empty reason becomes
//!   [`DEFAULT_CANCEL_REASON`].

use crate::domain::{AddressField, Day, DayWindow, ImportRef, Money, Order};

/// Maximum length in chars per Konnektive field, from the third-party validation rules in the
/// reference (§5). Where the sources give a range ("names 30–50") the lower bound is used, so a
/// long value is cut by us (predictably) rather than refused by Konnektive (a dead letter).
/// Exceptions, on purpose:
/// * `affId` uses 20, the upper bound: an affiliate id is matched verbatim against the passed
///   values of an affiliate profile, so a cut id is a wrong id anyway; cutting less keeps more
///   ids intact.
/// * `emailAddress` and `phoneNumber` are absent: a cut e-mail address is a different address;
///   Konnektive should refuse it visibly instead.
/// * `ipAddress` (15) fits exactly one dotted IPv4 address; the domain only carries IPv4.
pub const FIELD_MAX_CHARS: &[(&str, usize)] = &[
    ("firstName", 30),
    ("lastName", 30),
    ("shipFirstName", 30),
    ("shipLastName", 30),
    ("companyName", 30),
    ("shipCompanyName", 30),
    ("address1", 30),
    ("address2", 30),
    ("shipAddress1", 30),
    ("shipAddress2", 30),
    ("city", 30),
    ("shipCity", 30),
    ("state", 6),
    ("shipState", 6),
    ("postalCode", 20),
    ("shipPostalCode", 20),
    ("country", 2),
    ("shipCountry", 2),
    ("ipAddress", 15),
    ("affId", 20),
    ("custom1", 50),
    ("custom2", 50),
    ("custom3", 50),
    ("custom4", 50),
    ("custom5", 50),
    ("sourceValue1", 30),
    ("sourceValue2", 30),
    ("sourceValue3", 30),
    ("sourceValue4", 30),
    ("sourceValue5", 30),
    ("couponCode", 30),
    ("cancelReason", 100),
    ("chargebackReasonCode", 10),
    ("chargebackNote", 500),
];

/// Parameters whose value is a code: never cut to [`FIELD_MAX_CHARS`], left out when longer.
pub const NEVER_CUT: &[&str] = &["state", "shipState", "country", "shipCountry"];

/// Parameter names that carry credentials; added only by the client, redacted when stored.
pub const LOGIN_ID_PARAM: &str = "loginId";
pub const PASSWORD_PARAM: &str = "password";

/// What the stored request shows instead of the password.
pub const REDACTED: &str = "[redacted]";

/// `resultsPerPage` for `order/query` and `transactions/query`: the documented maximum.
pub const QUERY_RESULTS_PER_PAGE: u32 = 200;

/// `chargebackReasonCode` of every chargeback we record (≤ 10 chars).
pub const CHARGEBACK_REASON_CODE: &str = "DS24";

/// `cancelReason` when the action carries none (Konnektive requires one).
pub const DEFAULT_CANCEL_REASON: &str = "Cancelled in Digistore24";

/// The limit for `field`, if the table has one.
pub fn max_chars(field: &str) -> Option<usize> {
    FIELD_MAX_CHARS
        .iter()
        .find(|(name, _)| *name == field)
        .map(|(_, max)| *max)
}

/// The first `max` chars of `value` (never splits a char).
pub fn cut(value: &str, max: usize) -> &str {
    match value.char_indices().nth(max) {
        Some((byte_idx, _)) => &value[..byte_idx],
        None => value,
    }
}

/// Accumulates parameters: trims, skips empty values, cuts to the field table.
struct Params(Vec<(String, String)>);

impl Params {
    fn push(&mut self, name: &str, value: &str) {
        let value = value.trim();
        if value.is_empty() {
            return;
        }
        let value = match max_chars(name) {
            Some(max) if NEVER_CUT.contains(&name) && value.chars().count() > max => return,
            Some(max) => cut(value, max).trim_end(),
            None => value,
        };
        self.0.push((name.to_owned(), value.to_owned()));
    }

    fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| n != name);
    }
}

/// The `order/import` parameters for `order`, without `loginId`/`password`.
///
/// Order: `campaignId`, `paySource=PREPAID`, buyer and billing address, `billShipSame=1`
/// with explicit `ship*` copies (the recorded sandbox demanded them), `ipAddress` when known,
/// `productN_id/qty/price/shipPrice` per item (unit price, the line's shipping), `salesTax=0`
/// (the IPN amount is gross), `<reference_field>=<reference>`, then
/// `extra_fields` (each replaces a same-named parameter and moves it to the end; empty ones
/// are skipped so an absent IPN field never clears a value). No card, `prepaidType` or
/// `forceMerchantId` fields: with those, `PREPAID` routes to a payment gateway (reference §3.1a).
pub fn import_params(order: &Order) -> Vec<(String, String)> {
    let mut p = Params(Vec::with_capacity(40 + 4 * order.items.len()));
    let b = &order.buyer;
    let a = &order.address;

    p.push("campaignId", &order.campaign_id.to_string());
    p.push("paySource", "PREPAID");
    p.push("firstName", &b.first_name);
    p.push("lastName", &b.last_name);
    p.push("emailAddress", &b.email);
    p.push("phoneNumber", &b.phone);
    p.push("companyName", &b.company);
    p.push("address1", &a.line1);
    p.push("address2", &a.line2);
    p.push("city", &a.city);
    p.push("state", &a.state);
    p.push("postalCode", &a.postal_code);
    p.push("country", &a.country);
    p.push("billShipSame", "1");
    p.push("shipFirstName", &b.first_name);
    p.push("shipLastName", &b.last_name);
    p.push("shipCompanyName", &b.company);
    p.push("shipAddress1", &a.line1);
    p.push("shipAddress2", &a.line2);
    p.push("shipCity", &a.city);
    p.push("shipState", &a.state);
    p.push("shipPostalCode", &a.postal_code);
    p.push("shipCountry", &a.country);
    if let Some(ip) = &b.ip_address {
        p.push("ipAddress", ip);
    }
    for (i, item) in order.items.iter().enumerate() {
        let n = i + 1;
        p.push(&format!("product{n}_id"), &item.product_id.to_string());
        p.push(&format!("product{n}_qty"), &item.quantity.to_string());
        p.push(&format!("product{n}_price"), &item.unit_price.to_string());
        p.push(
            &format!("product{n}_shipPrice"),
            &item.ship_price.to_string(),
        );
    }
    p.push("salesTax", "0");

    // The reconciliation key: whole, and last before the extra fields (see module docs).
    p.remove(&order.reference_field);
    p.0.push((order.reference_field.clone(), order.reference.clone()));

    for (name, value) in &order.extra_fields {
        let protected =
            name == &order.reference_field || name == LOGIN_ID_PARAM || name == PASSWORD_PARAM;
        if protected || value.trim().is_empty() {
            continue;
        }
        p.remove(name);
        p.push(name, value);
    }
    p.0
}

/// The `order/import` parameter (billing side; the `ship*` copy carries the same value) that
/// an [`AddressField`] fills, for `explain`.
pub fn address_param(field: AddressField) -> &'static str {
    match field {
        AddressField::Line1 => "address1",
        AddressField::City => "city",
        AddressField::PostalCode => "postalCode",
        AddressField::State => "state",
    }
}

/// Form-encodes `params` (`application/x-www-form-urlencoded`, as browsers and PHP do:
/// unreserved bytes kept, space as `+`, everything else `%XX`).
pub fn form_encode<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::new();
    for (i, (name, value)) in params.into_iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode_component(name, &mut out);
        out.push('=');
        encode_component(value, &mut out);
    }
    out
}

fn encode_component(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &byte in s.as_bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(byte))
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(char::from(HEX[usize::from(byte >> 4)]));
                out.push(char::from(HEX[usize::from(byte & 0x0f)]));
            }
        }
    }
}

/// The request as stored in the attempts table: the form body with the password replaced by
/// [`REDACTED`].
pub fn redacted_form(params: &[(String, String)]) -> String {
    form_encode(params.iter().map(|(n, v)| {
        let v = if n == PASSWORD_PARAM {
            REDACTED
        } else {
            v.as_str()
        };
        (n.as_str(), v)
    }))
}

/// The `order/query` filter for finding an imported order again (without credentials):
/// buyer e-mail, campaign, and the days the import may have happened, one day wider on each
/// side. The date filter is day-granular and works in the account's (unknown) timezone while
/// the window is in UTC days, so one day either side covers every timezone.
pub fn order_query_params(order: &Order, window: DayWindow, page: u32) -> Vec<(String, String)> {
    let (start, end) = query_window(window);
    vec![
        ("emailAddress".to_owned(), order.buyer.email.clone()),
        ("campaignId".to_owned(), order.campaign_id.to_string()),
        ("startDate".to_owned(), start),
        ("endDate".to_owned(), end),
        ("includeCustomFields".to_owned(), "1".to_owned()),
        (
            "resultsPerPage".to_owned(),
            QUERY_RESULTS_PER_PAGE.to_string(),
        ),
        ("page".to_owned(), page.to_string()),
    ]
}

/// The window as `MM/DD/YYYY` dates, widened by one day on each side.
pub fn query_window(window: DayWindow) -> (String, String) {
    (window.first.add_days(-1).us(), window.last.add_days(1).us())
}

/// The `order/query` filter for finding the import an action refers to: like
/// [`order_query_params`], with the buyer and campaign of `import`.
pub fn import_query_params(
    import: &ImportRef,
    window: DayWindow,
    page: u32,
) -> Vec<(String, String)> {
    let (start, end) = query_window(window);
    vec![
        ("emailAddress".to_owned(), import.email.clone()),
        ("campaignId".to_owned(), import.campaign_id.to_string()),
        ("startDate".to_owned(), start),
        ("endDate".to_owned(), end),
        ("includeCustomFields".to_owned(), "1".to_owned()),
        (
            "resultsPerPage".to_owned(),
            QUERY_RESULTS_PER_PAGE.to_string(),
        ),
        ("page".to_owned(), page.to_string()),
    ]
}

/// `order/query` for one order by its id (no date range needed).
pub fn order_by_id_params(order_id: &str) -> Vec<(String, String)> {
    vec![("orderId".to_owned(), order_id.to_owned())]
}

/// `transactions/query` for every transaction of one order, one page.
pub fn transactions_query_params(order_id: &str, page: u32) -> Vec<(String, String)> {
    vec![
        ("orderId".to_owned(), order_id.to_owned()),
        (
            "resultsPerPage".to_owned(),
            QUERY_RESULTS_PER_PAGE.to_string(),
        ),
        ("page".to_owned(), page.to_string()),
    ]
}

/// `transactions/refund` recording a refund Digistore24 already paid out: `transactionId`,
/// `refundAmount` (positive, two decimals), `fullRefund=1` when `full`, `externalRefund=1`
/// always (no request to any processor), `refundMerchantTxnId=<ds24_transaction_id>`.
pub fn refund_params(
    transaction_id: &str,
    amount: Money,
    full: bool,
    ds24_transaction_id: &str,
) -> Vec<(String, String)> {
    let mut p = Params(Vec::with_capacity(5));
    p.push("transactionId", transaction_id);
    p.push("refundAmount", &amount.abs().to_string());
    if full {
        p.push("fullRefund", "1");
    }
    p.push("externalRefund", "1");
    p.push("refundMerchantTxnId", ds24_transaction_id);
    p.0
}

/// `transactions/update` marking a chargeback: `transactionId`, `markChargeback=1`,
/// `chargebackAmount` (positive), `chargebackDate` (`MM/DD/YYYY`), `chargebackReasonCode=DS24`,
/// `chargebackNote` (≤ 500 chars). The client parses the action's `YYYY-MM-DD` date.
pub fn chargeback_params(
    transaction_id: &str,
    amount: Money,
    day: Day,
    ds24_transaction_id: &str,
    ds24_order_id: &str,
) -> Vec<(String, String)> {
    let mut p = Params(Vec::with_capacity(6));
    p.push("transactionId", transaction_id);
    p.push("markChargeback", "1");
    p.push("chargebackAmount", &amount.abs().to_string());
    p.push("chargebackDate", &day.us());
    p.push("chargebackReasonCode", CHARGEBACK_REASON_CODE);
    p.push(
        "chargebackNote",
        &format!("Digistore24 chargeback {ds24_transaction_id} of order {ds24_order_id}"),
    );
    p.0
}

/// `purchase/cancel` for one purchase: `purchaseId`, `cancelReason` (≤ 100 chars).
pub fn purchase_cancel_params(purchase_id: &str, reason: &str) -> Vec<(String, String)> {
    let mut p = Params(Vec::with_capacity(2));
    p.push("purchaseId", purchase_id);
    p.push("cancelReason", cancel_reason(reason));
    p.0
}

/// `order/cancel`: `orderId`, `cancelReason` (≤ 100 chars), `fullRefund=0` (a refund is
/// recorded by its own action, never by a cancellation).
pub fn order_cancel_params(order_id: &str, reason: &str) -> Vec<(String, String)> {
    let mut p = Params(Vec::with_capacity(3));
    p.push("orderId", order_id);
    p.push("cancelReason", cancel_reason(reason));
    p.push("fullRefund", "0");
    p.0
}

fn cancel_reason(reason: &str) -> &str {
    if reason.trim().is_empty() {
        DEFAULT_CANCEL_REASON
    } else {
        reason
    }
}

/// `order/qa` approving an imported order that Konnektive holds in QA: `orderId`,
/// `action=APPROVE`.
pub fn qa_approve_params(order_id: &str) -> Vec<(String, String)> {
    let mut p = Params(Vec::with_capacity(2));
    p.push("orderId", order_id);
    p.push("action", "APPROVE");
    p.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Address, Buyer, OrderItem};

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn refund_params_always_external() {
        assert_eq!(
            refund_params("88001", Money::from_minor(4900), true, "T-777"),
            pairs(&[
                ("transactionId", "88001"),
                ("refundAmount", "49.00"),
                ("fullRefund", "1"),
                ("externalRefund", "1"),
                ("refundMerchantTxnId", "T-777"),
            ])
        );
        // Partial, and written negative as Digistore24 does: sent positive, no fullRefund.
        assert_eq!(
            refund_params("88001", Money::from_minor(-1050), false, "T-778"),
            pairs(&[
                ("transactionId", "88001"),
                ("refundAmount", "10.50"),
                ("externalRefund", "1"),
                ("refundMerchantTxnId", "T-778"),
            ])
        );
    }

    #[test]
    fn chargeback_params_golden() {
        let day = Day::parse_iso("2026-03-20").expect("date");
        assert_eq!(
            chargeback_params("88001", Money::from_minor(-4900), day, "T-9", "ABC123"),
            pairs(&[
                ("transactionId", "88001"),
                ("markChargeback", "1"),
                ("chargebackAmount", "49.00"),
                ("chargebackDate", "03/20/2026"),
                ("chargebackReasonCode", "DS24"),
                (
                    "chargebackNote",
                    "Digistore24 chargeback T-9 of order ABC123"
                ),
            ])
        );
    }

    #[test]
    fn chargeback_note_is_cut_to_500_chars() {
        let day = Day::parse_iso("2026-01-31").expect("date");
        let long = "ü".repeat(600);
        let params = chargeback_params("1", Money::from_minor(100), day, &long, "O");
        let note = params
            .iter()
            .find(|(n, _)| n == "chargebackNote")
            .map(|(_, v)| v.chars().count());
        assert_eq!(note, Some(500));
    }

    #[test]
    fn cancel_params_golden() {
        assert_eq!(
            order_cancel_params("7A1C0E93B2", "Digistore24 refund"),
            pairs(&[
                ("orderId", "7A1C0E93B2"),
                ("cancelReason", "Digistore24 refund"),
                ("fullRefund", "0"),
            ])
        );
        assert_eq!(
            purchase_cancel_params("C0FFEE1234", "  "),
            pairs(&[
                ("purchaseId", "C0FFEE1234"),
                ("cancelReason", DEFAULT_CANCEL_REASON),
            ])
        );
        let long = "x".repeat(150);
        let got = purchase_cancel_params("C0FFEE1234", &long);
        assert_eq!(got[1].1.len(), 100);
    }

    #[test]
    fn lookup_params_golden() {
        let day = Day::parse_iso("2026-03-02").expect("date");
        let import = ImportRef {
            ds24_order_id: "ABC123".to_owned(),
            ds24_item: "1".to_owned(),
            payment_transaction: None,
            reference_field: "custom1".to_owned(),
            email: "max@example.com".to_owned(),
            campaign_id: 12,
            since: "2026-03-02".to_owned(),
        };
        assert_eq!(
            import_query_params(
                &import,
                DayWindow {
                    first: day,
                    last: day
                },
                2
            ),
            pairs(&[
                ("emailAddress", "max@example.com"),
                ("campaignId", "12"),
                ("startDate", "03/01/2026"),
                ("endDate", "03/03/2026"),
                ("includeCustomFields", "1"),
                ("resultsPerPage", "200"),
                ("page", "2"),
            ])
        );
        assert_eq!(
            transactions_query_params("7A1C0E93B2", 1),
            pairs(&[
                ("orderId", "7A1C0E93B2"),
                ("resultsPerPage", "200"),
                ("page", "1"),
            ])
        );
        assert_eq!(
            order_by_id_params("7A1C0E93B2"),
            pairs(&[("orderId", "7A1C0E93B2")])
        );
    }

    fn sample_order() -> Order {
        Order {
            reference: "DS24-ABC123-1-P1".to_owned(),
            reference_field: "custom1".to_owned(),
            campaign_id: 12,
            buyer: Buyer {
                email: "max@example.com".to_owned(),
                first_name: "Max".to_owned(),
                last_name: "Muster".to_owned(),
                company: String::new(),
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
            items: vec![
                OrderItem {
                    product_id: 31,
                    quantity: 1,
                    unit_price: Money::from_minor(4900),
                    ship_price: Money::ZERO,
                },
                OrderItem {
                    product_id: 32,
                    quantity: 2,
                    unit_price: Money::from_minor(995),
                    ship_price: Money::from_minor(450),
                },
            ],
            currency: "EUR".to_owned(),
            placed_on: "2026-03-02".to_owned(),
            extra_fields: vec![
                ("sourceValue1".to_owned(), "campaignkey".to_owned()),
                ("custom2".to_owned(), "payment".to_owned()),
                ("affId".to_owned(), "OVERRIDE".to_owned()),
                ("custom3".to_owned(), String::new()),
                (
                    "custom1".to_owned(),
                    "must not replace the reference".to_owned(),
                ),
                ("password".to_owned(), "nope".to_owned()),
            ],
            address_fallback: Vec::new(),
        }
    }

    #[test]
    fn import_params_golden() {
        let got = import_params(&sample_order());
        let want: Vec<(String, String)> = [
            ("campaignId", "12"),
            ("paySource", "PREPAID"),
            ("firstName", "Max"),
            ("lastName", "Muster"),
            ("emailAddress", "max@example.com"),
            ("phoneNumber", "4915112345678"),
            ("address1", "Hauptstr. 1"),
            ("city", "Berlin"),
            ("state", "BE"),
            ("postalCode", "10115"),
            ("country", "DE"),
            ("billShipSame", "1"),
            ("shipFirstName", "Max"),
            ("shipLastName", "Muster"),
            ("shipAddress1", "Hauptstr. 1"),
            ("shipCity", "Berlin"),
            ("shipState", "BE"),
            ("shipPostalCode", "10115"),
            ("shipCountry", "DE"),
            ("ipAddress", "203.0.113.5"),
            ("product1_id", "31"),
            ("product1_qty", "1"),
            ("product1_price", "49.00"),
            ("product1_shipPrice", "0.00"),
            ("product2_id", "32"),
            ("product2_qty", "2"),
            ("product2_price", "9.95"),
            ("product2_shipPrice", "4.50"),
            ("salesTax", "0"),
            ("custom1", "DS24-ABC123-1-P1"),
            ("sourceValue1", "campaignkey"),
            ("custom2", "payment"),
            ("affId", "OVERRIDE"),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn import_params_without_optional_values() {
        let mut order = sample_order();
        order.buyer.ip_address = None;
        order.extra_fields.clear();
        order.buyer.company = "ACME & Söhne".to_owned();
        let got = import_params(&order);
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert!(!names.contains(&"ipAddress"));
        assert!(!names.contains(&"affId"));
        assert!(!names.contains(&"loginId"));
        assert!(!names.contains(&"password"));
        assert!(got.contains(&("companyName".to_owned(), "ACME & Söhne".to_owned())));
        assert!(got.contains(&("shipCompanyName".to_owned(), "ACME & Söhne".to_owned())));
        assert_eq!(
            got.last(),
            Some(&("custom1".to_owned(), "DS24-ABC123-1-P1".to_owned()))
        );
    }

    /// The real Digistore24 capture of a digital order (no street, city or zip), mapped with
    /// the default fallback address: every field Konnektive requires is there, the fallback
    /// values on both sides, the country from the IPN, no `affId`.
    #[test]
    fn import_params_golden_for_a_digital_order_with_the_fallback_address() {
        let order = Order {
            reference: "DS24-A1B2C3D4-33299237-3999938".to_owned(),
            reference_field: "custom1".to_owned(),
            campaign_id: 12,
            buyer: Buyer {
                email: "kaeufer@example.de".to_owned(),
                first_name: "Test".to_owned(),
                last_name: "Kauf".to_owned(),
                ..Buyer::default()
            },
            address: Address {
                line1: "Digital delivery".to_owned(),
                line2: String::new(),
                city: "Online".to_owned(),
                state: String::new(),
                postal_code: "00000".to_owned(),
                country: "CH".to_owned(),
            },
            items: vec![OrderItem {
                product_id: 33,
                quantity: 1,
                unit_price: Money::from_minor(4900),
                ship_price: Money::ZERO,
            }],
            currency: "EUR".to_owned(),
            placed_on: "2026-08-18".to_owned(),
            extra_fields: vec![("custom2".to_owned(), String::new())],
            address_fallback: vec![
                AddressField::Line1,
                AddressField::City,
                AddressField::PostalCode,
            ],
        };
        assert_eq!(
            import_params(&order),
            pairs(&[
                ("campaignId", "12"),
                ("paySource", "PREPAID"),
                ("firstName", "Test"),
                ("lastName", "Kauf"),
                ("emailAddress", "kaeufer@example.de"),
                ("address1", "Digital delivery"),
                ("city", "Online"),
                ("postalCode", "00000"),
                ("country", "CH"),
                ("billShipSame", "1"),
                ("shipFirstName", "Test"),
                ("shipLastName", "Kauf"),
                ("shipAddress1", "Digital delivery"),
                ("shipCity", "Online"),
                ("shipPostalCode", "00000"),
                ("shipCountry", "CH"),
                ("product1_id", "33"),
                ("product1_qty", "1"),
                ("product1_price", "49.00"),
                ("product1_shipPrice", "0.00"),
                ("salesTax", "0"),
                ("custom1", "DS24-A1B2C3D4-33299237-3999938"),
            ])
        );
    }

    #[test]
    fn affid_is_sent_only_when_the_fields_table_sets_it() {
        let mut order = sample_order();
        order.extra_fields.clear();
        assert!(import_params(&order).iter().all(|(n, _)| n != "affId"));
        order.extra_fields = vec![("affId".to_owned(), "AFF123".to_owned())];
        assert!(import_params(&order).contains(&("affId".to_owned(), "AFF123".to_owned())));
    }

    #[test]
    fn a_state_or_country_is_never_cut() {
        let mut order = sample_order();
        order.extra_fields.clear();
        order.address.state = "California".to_owned();
        let params = import_params(&order);
        let names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
        assert!(!names.contains(&"state") && !names.contains(&"shipState"));
        // Six characters still fit; the city next to it is cut as before.
        order.address.state = "ABCDEF".to_owned();
        let params = import_params(&order);
        assert!(params.contains(&("state".to_owned(), "ABCDEF".to_owned())));
        assert!(params.contains(&("shipState".to_owned(), "ABCDEF".to_owned())));
        order.address.country = "Germany".to_owned();
        let params = import_params(&order);
        assert!(
            params
                .iter()
                .all(|(n, _)| n != "country" && n != "shipCountry")
        );
    }

    #[test]
    fn cuts_on_char_boundaries() {
        // 29 ASCII chars, then a 2-byte 'ü' as char 30, then more.
        let long = format!("{}üXYZ", "a".repeat(29));
        assert_eq!(cut(&long, 30), format!("{}ü", "a".repeat(29)));
        assert_eq!(cut("Müller", 2), "Mü");
        assert_eq!(cut("日本語", 1), "日");
        assert_eq!(cut("short", 30), "short");
        assert_eq!(cut("", 3), "");

        let mut order = sample_order();
        order.address.city = "Sankt Peter-Ording über Husum Ümlautstadt".to_owned();
        let params = import_params(&order);
        let city = params
            .iter()
            .find(|(n, _)| n == "city")
            .map(|(_, v)| v.as_str());
        // Cut to 30 chars, then the trailing space is trimmed.
        assert_eq!(city, Some("Sankt Peter-Ording über Husum"));
    }

    #[test]
    fn form_encoding_matches_php_style() {
        let enc = form_encode([
            ("a b", "x&y=z"),
            ("email", "max+1@example.com"),
            ("n", "Jürgen"),
        ]);
        assert_eq!(
            enc,
            "a+b=x%26y%3Dz&email=max%2B1%40example.com&n=J%C3%BCrgen"
        );
    }

    #[test]
    fn stored_request_has_no_password() {
        let params = vec![
            ("loginId".to_owned(), "ds24bridge".to_owned()),
            ("password".to_owned(), "s3cret".to_owned()),
            ("campaignId".to_owned(), "12".to_owned()),
        ];
        assert_eq!(
            redacted_form(&params),
            "loginId=ds24bridge&password=%5Bredacted%5D&campaignId=12"
        );
    }

    #[test]
    fn query_window_is_one_day_wider_on_each_side() {
        let day = |s: &str| Day::parse_iso(s).expect("date");
        let table = [
            ("2026-03-02", "2026-03-02", "03/01/2026", "03/03/2026"),
            ("2024-03-01", "2024-03-01", "02/29/2024", "03/02/2024"),
            ("2025-12-31", "2026-01-09", "12/30/2025", "01/10/2026"),
        ];
        for (first, last, start, end) in table {
            let window = DayWindow {
                first: day(first),
                last: day(last),
            };
            assert_eq!(
                query_window(window),
                (start.to_owned(), end.to_owned()),
                "{first}..{last}"
            );
        }
    }

    #[test]
    fn qa_approval_params_golden() {
        assert_eq!(
            qa_approve_params("7A1C0E93B2"),
            pairs(&[("orderId", "7A1C0E93B2"), ("action", "APPROVE")])
        );
    }
}
