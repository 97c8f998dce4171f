//! Digistore24 IPN fields → the CRM-neutral [`Order`], and the small field readings the
//! filter rules need.
//!
//! Every reading that rests on an undocumented detail of the IPN is a named function here,
//! with its source in `digistore24-ipn.md`, so a correction is a one-place change:
//! - [`followup_sequence`]: follow-up ⇔ `billing_type` subscription/installment and
//!   `pay_sequence_no ≥ 2` (reference §4, medium confidence);
//! - [`item_amount`]: which amount field is the price of *this* item (§4 lists several);
//! - [`IP_FIELDS`]: no IP field is documented for IPNs; we look for the likely names;
//! - [`GROUPED_ITEM_FIELDS`]: the numbered fields of a grouped IPN were never seen;
//! - [`NEWSLETTER_OPT_IN_VALUES`]: no reference lists the opt-in values of
//!   `newsletter_choice`; an unknown value counts as not opted in and is logged once;
//! - [`addon_signal`]: no field marks an add-on (order bump); the signals are listed there;
//! - [`import_ref`]: a refund or chargeback names the payment it reverses in
//!   `parent_transaction_id` (reference §3, third-party evidence);
//! - [`reversal_amount`]: a refund or chargeback moves the reversed item's share,
//!   `product_txn_amount` (sign ignored; reference §4 does not document reversal amounts),
//!   capped at `|transaction_amount|`, which covers every item of an add-on order.
//!
//! Values are not cut to the CRM's field lengths here; that is the connector's business.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

use crate::config::Integration;
use crate::domain::{
    Address, Buyer, ImportRef, IpnEvent, Money, Order, OrderItem, import_reference, utc_date,
};

/// IPN fields that may carry the buyer's IP address. [GUESS] None is documented.
pub const IP_FIELDS: &[&str] = &["buyer_ip", "ip_address", "ip"];

/// The Digistore24 product id of the IPN.
pub fn product_id(event: &IpnEvent) -> Option<u64> {
    event.get("product_id")?.trim().parse().ok()
}

/// The order's product language, lower case (the connection form filters on it).
pub fn language(event: &IpnEvent) -> Option<String> {
    event
        .first_of(&["product_language", "language"])
        .map(str::to_ascii_lowercase)
}

/// The currencies the IPN states, upper case, each once: `transaction_currency` (the
/// currency [`order`] books the order in) first, then `currency` if it differs. Each comes
/// with the field it was read from.
pub fn currencies(event: &IpnEvent) -> Vec<(&'static str, String)> {
    let mut found: Vec<(&'static str, String)> = Vec::new();
    for field in ["transaction_currency", "currency"] {
        if let Some(code) = event.get(field) {
            let code = code.trim().to_ascii_uppercase();
            if !found.iter().any(|(_, c)| *c == code) {
                found.push((field, code));
            }
        }
    }
    found
}

/// `Some(n)` when the IPN is the n-th payment (n ≥ 2) of a subscription or installment plan.
pub fn followup_sequence(event: &IpnEvent) -> Option<u32> {
    let recurring = matches!(
        event.get("billing_type"),
        Some("subscription") | Some("installment")
    );
    let n: u32 = event.get("pay_sequence_no")?.parse().ok()?;
    (recurring && n >= 2).then_some(n)
}

/// [GUESS] The `newsletter_choice` values that mean the buyer opted in on the order form.
/// Neither reference lists the field's values (reference §4 only names the field; captures
/// show `none`); these are the likely spellings of Digistore24's single and double opt-in.
/// Compared without regard to ASCII case. Only these count as opted in.
pub const NEWSLETTER_OPT_IN_VALUES: [&str; 4] = [
    "single_optin",
    "double_optin",
    "single_opt_in",
    "double_opt_in",
];

/// `newsletter_choice` values seen meaning "no opt-in" (the captures send `none`).
pub const NEWSLETTER_NO_OPT_IN_VALUES: [&str; 1] = ["none"];

/// How many distinct unknown `newsletter_choice` values one process logs at most.
const MAX_LOGGED_NEWSLETTER_CHOICES: usize = 64;

/// Unknown `newsletter_choice` values this process has logged already, so each is logged
/// once. The one static in the rules: a log-rate memo that no decision depends on, kept here
/// rather than threaded through every caller of [`crate::rules::route`] (the server,
/// `explain`, `replay`) for a log line. Bounded by [`MAX_LOGGED_NEWSLETTER_CHOICES`].
static LOGGED_NEWSLETTER_CHOICES: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Whether the buyer opted in to the newsletter on the order form: only a value of
/// [`NEWSLETTER_OPT_IN_VALUES`] counts. Absent, empty and `none` are not opted in; an
/// unknown value is not opted in either (a filter must not let through what it cannot read)
/// and is logged at WARN once per value per process, so the guess can be corrected.
pub fn newsletter_opted_in(event: &IpnEvent) -> bool {
    let Some(value) = event.get("newsletter_choice") else {
        return false;
    };
    let normalised = value.trim().to_ascii_lowercase();
    if NEWSLETTER_OPT_IN_VALUES.contains(&normalised.as_str()) {
        return true;
    }
    if !NEWSLETTER_NO_OPT_IN_VALUES.contains(&normalised.as_str())
        && first_sight(&LOGGED_NEWSLETTER_CHOICES, &normalised)
    {
        let shown: String = value.chars().take(64).collect();
        tracing::warn!(
            newsletter_choice = ?shown,
            "unknown newsletter_choice value counts as not opted in; if it means an opt-in, \
             add it to NEWSLETTER_OPT_IN_VALUES (src/rules/mapping.rs)"
        );
    }
    false
}

/// `true` the first time `value` is offered to `seen` (while it has room).
fn first_sight(seen: &Mutex<BTreeSet<String>>, value: &str) -> bool {
    let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
    if seen.len() >= MAX_LOGGED_NEWSLETTER_CHOICES {
        return false;
    }
    seen.insert(value.to_owned())
}

/// [GUESS] The item fields a grouped IPN (several order items in one call, Digistore24's
/// "grouping of calls") would carry numbered, e.g. `product_id_2`, `product_id2`,
/// `quantity_1`. No grouped IPN was ever captured; reference §4 only reports that
/// Digistore24's own WordPress plugin reads `product_id`/`quantity` as possibly numbered
/// (`product_id_1`, `product_id1`, …).
pub const GROUPED_ITEM_FIELDS: [&str; 4] =
    ["product_id", "quantity", "order_item_id", "product_name"];

/// The numbered item fields (non-empty) of a grouped IPN, in name order; empty for an IPN of
/// one item. The rules read only the unnumbered fields, so such an IPN cannot be imported
/// whole.
pub fn grouped_item_fields(event: &IpnEvent) -> Vec<&str> {
    event
        .fields()
        .iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, _)| name.as_str())
        .filter(|name| {
            GROUPED_ITEM_FIELDS.iter().any(|base| {
                name.strip_prefix(base)
                    .map(|rest| rest.strip_prefix('_').unwrap_or(rest))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            })
        })
        .collect()
}

/// The key that orders jobs of one Digistore24 order.
pub fn order_key(event: &IpnEvent) -> String {
    match event.order_id() {
        Some(id) => id.to_owned(),
        // Without an order id, nothing can depend on this IPN; give it its own queue.
        None => format!("no-order:{}", event.get("transaction_id").unwrap_or("-")),
    }
}

/// Our reference of the order item and payment, unique per import and stable across
/// re-deliveries of the same IPN: `DS24-<order_id>-<item>-<transaction_id>`.
pub fn reference(event: &IpnEvent) -> Option<String> {
    let order = event.order_id()?;
    Some(import_reference(
        order,
        item(event),
        event.get("transaction_id"),
    ))
}

/// Why this IPN's item counts as bought **as an add-on** of another product, or `None`.
///
/// [GUESS] Digistore24 documents no add-on marker (reference §4: add-ons are sold in one
/// transaction with the main product, and with grouping off each item arrives as its own
/// IPN sharing the `order_id`). Every signal the reference names is used, strongest first:
/// 1. an explicit flag, should one ever be sent (`is_addon` / `addon` = `Y`, `1`, `true`);
/// 2. `product_ids` (third-party field name: the order's products, main product first)
///    listing other products before this one;
/// 3. a multi-item initial sale (`item_count` ≥ 2, `upsell_no` 0 or absent) whose order-form
///    link (`customer_affiliate_promo_url`, `checkout_url`: `…/redir/<product>/…`,
///    `…/product/<product>…`) names another product: the form belongs to the main product.
///
/// Upsells (`upsell_no` ≥ 1) are separate sales, not add-ons.
pub fn addon_signal(event: &IpnEvent) -> Option<String> {
    let product = event.get("product_id")?;
    for flag in ["is_addon", "addon"] {
        if let Some(v) = event.get(flag) {
            return matches!(v.to_ascii_lowercase().as_str(), "y" | "1" | "true" | "yes")
                .then(|| format!("{flag} = {v}"));
        }
    }
    if let Some(list) = event.get("product_ids") {
        let ids: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if let Some(pos) = ids.iter().position(|id| *id == product) {
            return (pos > 0).then(|| format!("product_ids = {list} lists {} first", ids[0]));
        }
    }
    let items: u32 = event
        .get("item_count")
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let upsell: u32 = event
        .get("upsell_no")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if items < 2 || upsell > 0 {
        return None;
    }
    ["customer_affiliate_promo_url", "checkout_url"]
        .iter()
        .filter_map(|f| event.get(f))
        .find_map(form_product)
        .filter(|main| *main != product)
        .map(|main| {
            format!("item of a {items}-item order placed on the order form of product {main}")
        })
}

/// The product id in an order-form link: the digits after `/redir/` or `/product/`.
fn form_product(url: &str) -> Option<&str> {
    ["/redir/", "/product/"].iter().find_map(|marker| {
        let rest = &url[url.find(marker)? + marker.len()..];
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        (end > 0).then(|| &rest[..end])
    })
}

/// The earlier import an action on this IPN refers to. A refund or chargeback reverses the
/// payment in `parent_transaction_id`; `exact_payment = false` (cancellations) means the
/// latest import of the order item.
pub fn import_ref(
    integration: &Integration,
    event: &IpnEvent,
    exact_payment: bool,
) -> Result<ImportRef, String> {
    let order = event.order_id().ok_or("the IPN has no order_id")?;
    let email = event
        .first_of(&["buyer_email", "email", "address_email"])
        .ok_or("the IPN has no buyer e-mail")?;
    let payment_transaction = if exact_payment {
        Some(
            event
                .get("parent_transaction_id")
                .ok_or("the IPN names no parent_transaction_id (the payment it reverses)")?
                .to_owned(),
        )
    } else {
        None
    };
    Ok(ImportRef {
        ds24_order_id: order.to_owned(),
        ds24_item: item(event).to_owned(),
        payment_transaction,
        reference_field: integration.order_ref_field.clone(),
        email: email.to_owned(),
        campaign_id: integration.campaign_id,
        since: event
            .first_of(&["order_date", "transaction_date"])
            .filter(|d| d.len() == 10)
            .unwrap_or("1970-01-01")
            .to_owned(),
    })
}

/// An amount and the IPN field it was read from (for decision reasons).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldAmount {
    pub amount: Money,
    /// Which field, e.g. `product_txn_amount`, and why when it is not the obvious one.
    pub source: String,
}

/// The value of `field` as an amount: `Ok(None)` when absent or empty; `Err` says what it saw
/// (`the IPN's product_txn_amount "12,50" is not a decimal amount`).
pub fn amount_field(event: &IpnEvent, field: &str) -> Result<Option<Money>, String> {
    event
        .get(field)
        .map(|raw| {
            Money::parse_decimal(raw.trim())
                .map_err(|_| format!("the IPN's {field} {raw:?} is not a decimal amount"))
        })
        .transpose()
}

/// The fields a payment's price is read from, first present wins: the order of
/// [`item_amount`], which the import uses.
pub const PAYMENT_AMOUNT_FIELDS: [&str; 3] = ["product_txn_amount", "amount", "transaction_amount"];

/// The amount of a payment, checked before anything is imported: every amount field present
/// must parse, none may be negative, and the one the import uses must be positive. A
/// negative amount on `on_payment` is not a payment Konnektive should record (it used to be
/// imported with the sign dropped); `Err` says which field held what.
pub fn payment_amount(event: &IpnEvent) -> Result<FieldAmount, String> {
    let mut used: Option<FieldAmount> = None;
    for field in PAYMENT_AMOUNT_FIELDS {
        let Some(amount) = amount_field(event, field)? else {
            continue;
        };
        let first = used.is_none();
        if amount < Money::ZERO || (first && amount == Money::ZERO) {
            return Err(format!(
                "the IPN's {field} is {amount}; a payment's amount must be positive"
            ));
        }
        if first {
            used = Some(FieldAmount {
                amount,
                source: field.to_owned(),
            });
        }
    }
    used.ok_or_else(|| "the IPN has no product_txn_amount, amount or transaction_amount".into())
}

/// The amount a refund or chargeback moves (positive): the reversed item's share.
///
/// `product_txn_amount` (sign ignored) is the item's share of the transaction;
/// `transaction_amount` covers every item of an add-on order, so it is used only when the IPN
/// has neither `product_txn_amount` nor `amount`. The share is capped at
/// `|transaction_amount|`: an item's share can never exceed the whole reversal, so a partial
/// reversal is never recorded as more than Digistore24 moved, whichever of the two meanings a
/// reversal IPN's `product_txn_amount` has (the item's price or the reversed share; neither
/// is documented). An unparseable field is an error, never skipped for the next one.
pub fn reversal_amount(event: &IpnEvent) -> Result<FieldAmount, String> {
    let mut share = None;
    for field in ["product_txn_amount", "amount"] {
        if let Some(amount) = amount_field(event, field)? {
            share = Some((field, amount.abs()));
            break;
        }
    }
    let total = amount_field(event, "transaction_amount")?.map(Money::abs);
    let found = match (share, total) {
        (Some((field, share)), Some(total)) if total < share => FieldAmount {
            amount: total,
            source: format!("transaction_amount, less than {field} {share}"),
        },
        (Some((field, share)), _) => FieldAmount {
            amount: share,
            source: field.to_owned(),
        },
        (None, Some(total)) => FieldAmount {
            amount: total,
            source: "transaction_amount; the IPN has no product_txn_amount or amount".to_owned(),
        },
        (None, None) => {
            return Err("the IPN has no product_txn_amount, amount or transaction_amount".into());
        }
    };
    if found.amount == Money::ZERO {
        return Err(format!(
            "the amount to reverse is 0.00 ({}); nothing to record",
            found.source
        ));
    }
    Ok(found)
}

/// What the buyer paid for this item in the original payment, as far as a reversal IPN
/// tells (`product_txn_amount`, else `amount`), to tell a full from a partial refund.
pub fn item_amount_paid(event: &IpnEvent) -> Option<Money> {
    let raw = event.first_of(&["product_txn_amount", "amount"])?;
    Money::parse_decimal(raw).ok()
}

/// The order item of the IPN: `order_item_id`, else the product id, else `0`.
pub fn item(event: &IpnEvent) -> &str {
    event
        .first_of(&["order_item_id", "product_id"])
        .unwrap_or("0")
}

/// The price of this item in this payment. `product_txn_amount` is the product line's share
/// of the transaction; `amount` and `transaction_amount` are fallbacks for IPNs without it.
pub fn item_amount(event: &IpnEvent) -> Option<Money> {
    let raw = event.first_of(&["product_txn_amount", "amount", "transaction_amount"])?;
    Money::parse_decimal(raw).ok()
}

fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

fn ipv4(event: &IpnEvent) -> Option<String> {
    IP_FIELDS
        .iter()
        .filter_map(|f| event.get(f))
        .find_map(|v| v.trim().parse::<std::net::Ipv4Addr>().ok())
        .map(|ip| ip.to_string())
}

/// Billing address first, then the order-form address, then the buyer's.
fn addr<'a>(event: &'a IpnEvent, field: &str) -> Option<&'a str> {
    event.first_of(&[
        &format!("billing_{field}"),
        &format!("address_{field}"),
        &format!("buyer_address_{field}"),
    ])
}

/// Builds the order to import; `Err` names what the IPN lacks.
pub fn order(
    integration: &Integration,
    event: &IpnEvent,
    campaign_product: u64,
    received_at_ms: i64,
) -> Result<Order, String> {
    let reference = reference(event).ok_or("the IPN has no order_id")?;
    let email = event
        .first_of(&["buyer_email", "email", "address_email"])
        .ok_or("the IPN has no buyer e-mail")?;
    let first_name = addr(event, "first_name")
        .or_else(|| event.get("buyer_first_name"))
        .unwrap_or_default();
    let last_name = addr(event, "last_name")
        .or_else(|| event.get("buyer_last_name"))
        .unwrap_or_default();
    let street = addr(event, "street").map(str::to_owned).or_else(|| {
        let name = addr(event, "street_name")?;
        Some(match addr(event, "street_number") {
            Some(n) => format!("{name} {n}"),
            None => name.to_owned(),
        })
    });
    let country = addr(event, "country")
        .or_else(|| event.get("country"))
        .map(|c| c.trim().to_ascii_uppercase())
        .filter(|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic()))
        .unwrap_or_default();
    let phone = ["phone_no", "mobile_no"]
        .iter()
        .find_map(|f| addr(event, f))
        .map(digits)
        .unwrap_or_default();
    let amount = item_amount(event).ok_or("the IPN has no amount")?;
    let quantity: u32 = event
        .get("quantity")
        .and_then(|q| q.parse().ok())
        .filter(|q| *q >= 1)
        .unwrap_or(1);
    // Konnektive's price is per unit: split the amount when it divides exactly, else import
    // one unit at the full amount so the order total is always right.
    let (quantity, unit_price) = match amount.checked_div_exact(quantity) {
        Some(unit) => (quantity, unit),
        None => (1, amount),
    };
    let placed_on = event
        .first_of(&["transaction_date", "order_date"])
        .filter(|d| d.len() == 10)
        .map_or_else(|| utc_date(received_at_ms), str::to_owned);
    let extra_fields = integration
        .fields
        .iter()
        .map(|(name, template)| (name.clone(), template.render(|f| event.get(f))))
        .collect();
    Ok(Order {
        reference,
        reference_field: integration.order_ref_field.clone(),
        campaign_id: integration.campaign_id,
        buyer: Buyer {
            email: email.to_owned(),
            first_name: first_name.to_owned(),
            last_name: last_name.to_owned(),
            company: addr(event, "company").unwrap_or_default().to_owned(),
            phone,
            ip_address: ipv4(event),
        },
        address: Address {
            line1: street.unwrap_or_default(),
            line2: addr(event, "street2").unwrap_or_default().to_owned(),
            city: addr(event, "city").unwrap_or_default().to_owned(),
            state: addr(event, "state").unwrap_or_default().to_owned(),
            postal_code: addr(event, "zipcode").unwrap_or_default().to_owned(),
            country,
        },
        items: vec![OrderItem {
            product_id: campaign_product,
            quantity,
            unit_price: unit_price.abs(),
        }],
        currency: event
            .first_of(&["transaction_currency", "currency"])
            .unwrap_or_default()
            .to_owned(),
        affiliate: event.get("affiliate_name").map(str::to_owned),
        placed_on,
        extra_fields,
    })
}
