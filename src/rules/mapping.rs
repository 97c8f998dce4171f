//! Digistore24 IPN fields → the CRM-neutral [`Order`], and the small field readings the
//! filter rules need.
//!
//! Every reading that rests on an undocumented detail of the IPN is a named function here,
//! with its source in `digistore24-ipn.md`, so a correction is a one-place change:
//! - [`followup_sequence`]: follow-up ⇔ `billing_type` subscription/installment and
//!   `pay_sequence_no ≥ 2` (reference §4, medium confidence);
//! - [`item_price`]: which amount field is the price of *this* item (§4 lists several), and
//!   whether it includes the item's shipping (undocumented);
//! - [`country`]: which of the three address blocks (or `country`) names the buyer's country;
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
//! The one exception is the state, which must be a code: [`super::states`] turns a name
//! into its code, and a state without a known code is left out (and logged), never cut.
//!
//! Decisions about the address of an [`Order`]:
//! - Every address field the IPN leaves empty (street, city, postal code, and the state
//!   when the integration's fallback has one) is filled from the integration's
//!   `fallback_address`, and the order records which ([`Order::address_fallback`]), so
//!   `explain`, the stored job and a person reading Konnektive can tell. A field the IPN
//!   has is never replaced, and a state the IPN has but we cannot code is left out, not
//!   replaced by the fallback's: the fallback says "no address given", not "unknown state".
//! - The country always comes from the IPN: an IPN without a usable one is not imported
//!   (the skip needs attention) rather than booked into a made-up country.
//! - No `affiliate_name → affId`: Konnektive takes only affiliate ids it knows (reference
//!   §3.1 "Affiliate"), so the affiliate reaches it only where `fields` maps it.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

use super::states;
use crate::config::FallbackAddress;
use crate::config::Integration;
use crate::domain::{
    Address, AddressField, Buyer, ImportRef, IpnEvent, Money, Order, OrderItem, import_reference,
    utc_date,
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
        .filter(|(_, value)| !value.is_empty())
        .map(|(name, _)| name)
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

/// The fields a payment's price is read from, first present wins; [`payment_amount`] checks
/// them and [`item_price`] prices the import from them.
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

/// What Konnektive gets for this item: quantity, unit price and the line's shipping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemPrice {
    pub quantity: u32,
    pub unit_price: Money,
    pub ship_price: Money,
}

/// The price rule: this item's amount, quantity and shipping → Konnektive's `productN_qty`,
/// `productN_price` and `productN_shipPrice`, chosen so that Konnektive's total for the line
/// (`qty × price + shipPrice`) is what the buyer paid for this item.
///
/// Fields (reference `digistore24-ipn.md` §4): the paid amount is `product_txn_amount` (the
/// product line's share of the transaction, gross), else `amount`, else
/// `transaction_amount`; the shipping is `product_txn_shipping`, else
/// `product_shipping_amount`, else none; the quantity is `quantity` (at least 1). Amounts
/// may come without decimals (`"49"`, as in the real capture).
///
/// [GUESS] Whether `product_txn_amount` includes the shipping is undocumented (the real
/// capture has shipping 0). We take it to **include** it, as a share of what the buyer paid
/// would: the shipping goes into `shipPrice` and the rest is the goods. Two readings of the
/// IPN itself overrule that guess, because with them the amount cannot include the
/// shipping: the shipping is larger than the amount, or the IPN is a one-item order whose
/// `transaction_amount` (everything the buyer paid) equals amount + shipping. Then the
/// whole amount is the goods, and the total is amount + shipping (logged).
///
/// Konnektive's price is per unit: the goods are split by the quantity when that divides
/// exactly, else the line is imported as one unit at the full amount (logged), so the total
/// is right in every case. A negative amount (never seen on a payment) counts by its size.
pub fn item_price(event: &IpnEvent) -> Result<ItemPrice, String> {
    let amount_field = PAYMENT_AMOUNT_FIELDS
        .into_iter()
        .find(|f| event.get(f).is_some())
        .ok_or("the IPN has no amount")?;
    let amount = money_field(event, amount_field)?;
    let shipping = match ["product_txn_shipping", "product_shipping_amount"]
        .into_iter()
        .find(|f| event.get(f).is_some())
    {
        Some(field) => money_field(event, field)?,
        None => Money::ZERO,
    };
    let one_item = event
        .get("item_count")
        .and_then(|n| n.trim().parse::<u32>().ok())
        .is_none_or(|n| n <= 1);
    let paid_in_total = event
        .get("transaction_amount")
        .and_then(|t| Money::parse_decimal(t.trim()).ok())
        .map(Money::abs);
    let with_shipping = Money::from_minor(amount.minor() + shipping.minor());
    let excludes_shipping = shipping > amount
        || (shipping > Money::ZERO && one_item && paid_in_total == Some(with_shipping));
    let goods = if excludes_shipping {
        tracing::info!(
            amount = %amount,
            shipping = %shipping,
            transaction_amount = ?paid_in_total.map(|m| m.to_string()),
            "the item's amount does not include its shipping here; shipping is added on top"
        );
        amount
    } else {
        Money::from_minor(amount.minor() - shipping.minor())
    };
    let quantity: u32 = event
        .get("quantity")
        .and_then(|q| q.trim().parse().ok())
        .filter(|q| *q >= 1)
        .unwrap_or(1);
    let (quantity, unit_price) = match goods.checked_div_exact(quantity) {
        Some(unit) => (quantity, unit),
        None => {
            tracing::info!(
                quantity,
                amount = %goods,
                "the amount does not divide by the quantity; importing one unit at the full amount"
            );
            (1, goods)
        }
    };
    Ok(ItemPrice {
        quantity,
        unit_price,
        ship_price: shipping,
    })
}

/// An amount field of the IPN, by its size; `Err` names a field that is not an amount.
fn money_field(event: &IpnEvent, field: &str) -> Result<Money, String> {
    let raw = event.get(field).unwrap_or_default();
    Money::parse_decimal(raw.trim())
        .map(Money::abs)
        .map_err(|_| format!("the IPN's {field} is not an amount: {raw:?}"))
}

/// The buyer's country, ISO 3166-1 alpha-2 upper case: the first usable one of the billing
/// address, the order-form address, the buyer's address, then `country`. `None` when none
/// is two letters.
pub fn country(event: &IpnEvent) -> Option<String> {
    [
        "billing_country",
        "address_country",
        "buyer_address_country",
        "country",
    ]
    .into_iter()
    .filter_map(|f| event.get(f))
    .map(|c| c.trim().to_ascii_uppercase())
    .find(|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic()))
}

/// The IPN's state as written (billing, order-form, then buyer address), if it has one.
fn written_state(event: &IpnEvent) -> Option<&str> {
    addr(event, "state")
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// The state code for the IPN's state in `country` (see [`states::state_code`]): `Ok(code)`,
/// `Ok("")` when the IPN has no state, `Err(value)` when it has one we know no code for.
fn ipn_state<'a>(event: &'a IpnEvent, country: &str) -> Result<&'static str, &'a str> {
    match written_state(event) {
        None => Ok(""),
        Some(value) => states::state_code(country, value).ok_or(value),
    }
}

/// Fills each empty field of `address` from `fallback` and returns the fields it filled.
/// The state is filled only when `state_given` is false (the IPN had none at all).
fn fill_from_fallback(
    address: &mut Address,
    fallback: &FallbackAddress,
    state_given: bool,
) -> Vec<AddressField> {
    let mut filled = Vec::new();
    let slots = [
        (
            AddressField::Line1,
            &mut address.line1,
            Some(&fallback.address1),
        ),
        (AddressField::City, &mut address.city, Some(&fallback.city)),
        (
            AddressField::PostalCode,
            &mut address.postal_code,
            Some(&fallback.postal_code),
        ),
        (
            AddressField::State,
            &mut address.state,
            fallback.state.as_ref().filter(|_| !state_given),
        ),
    ];
    for (field, slot, value) in slots {
        if let Some(value) = value
            && slot.trim().is_empty()
        {
            value.clone_into(slot);
            filled.push(field);
        }
    }
    filled
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
    let country = country(event).ok_or(
        "the IPN has no usable country (billing_country, address_country, \
         buyer_address_country, country), and Konnektive requires one",
    )?;
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
    let phone = ["phone_no", "mobile_no"]
        .iter()
        .find_map(|f| addr(event, f))
        .map(digits)
        .unwrap_or_default();
    let state = match ipn_state(event, &country) {
        Ok(code) => code,
        Err(value) => {
            tracing::info!(
                country = %country,
                state = value,
                "state left out: no known subdivision code for it in this country"
            );
            ""
        }
    };
    let state_given = written_state(event).is_some();
    let price = item_price(event)?;
    let placed_on = event
        .first_of(&["transaction_date", "order_date"])
        .filter(|d| d.len() == 10)
        .map_or_else(|| utc_date(received_at_ms), str::to_owned);
    let extra_fields = integration
        .fields
        .iter()
        .map(|(name, template)| (name.clone(), template.render(|f| event.get(f))))
        .collect();
    let mut address = Address {
        line1: street.unwrap_or_default(),
        line2: addr(event, "street2").unwrap_or_default().to_owned(),
        city: addr(event, "city").unwrap_or_default().to_owned(),
        state: state.to_owned(),
        postal_code: addr(event, "zipcode").unwrap_or_default().to_owned(),
        country,
    };
    let address_fallback =
        fill_from_fallback(&mut address, &integration.fallback_address, state_given);
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
        address,
        items: vec![OrderItem {
            product_id: campaign_product,
            quantity: price.quantity,
            unit_price: price.unit_price,
            ship_price: price.ship_price,
        }],
        currency: event
            .first_of(&["transaction_currency", "currency"])
            .unwrap_or_default()
            .to_owned(),
        placed_on,
        extra_fields,
        address_fallback,
    })
}
