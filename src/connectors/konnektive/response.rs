//! Response handling for Konnektive: the envelope, the retry *decision* ([`classify`]), and
//! reading ids out of successful answers.
//!
//! Everything here is pure: bytes and an HTTP status in, domain values out. This module must
//! not know about sockets, timeouts (transport errors are classified by the client), the
//! retry *timing* (`delivery`), or the password (the client scrubs reports afterwards).
//!
//! Decisions:
//! * **Success is `result == "SUCCESS"` and nothing else**; HTTP status alone never makes a
//!   success (reference §2). A 2xx without a parseable envelope (empty body, HTML, JSON
//!   without `result`) is retryable but *maybe applied*: a proxy may have mangled the answer
//!   after Konnektive acted, so an import must be reconciled before it is sent again.
//! * **Non-2xx statuses are judged by the status**, never by an envelope they might carry:
//!   429/503 mean "not processed, come back later"; other 5xx may come after the CRM acted;
//!   401/403 and the remaining 3xx/4xx point at the target's configuration (base URL,
//!   credentials, proxy), which is target-wide. 408 means the request never arrived whole.
//! * **ERROR texts are matched by [`ERROR_TEXTS`]**, one table, because most exact texts are
//!   unknown (reference §2, §6): first matching pattern wins, case-insensitive substring.
//!   Unrecognised texts are retryable (Konnektive reportedly "returns bare ERRORs under load").
//! * An ERROR whose `message` is an object is a field → error map (validation): permanent,
//!   unless it names the credentials, which is target-wide.
//! * `MERC_REDIRECT` is permanent (the bridge sends no card data, so the campaign's payment
//!   setup is wrong) and *maybe applied* (an order may wait for the redirect).
//! * **"Already done" is success.** An ERROR saying the transaction is already refunded or
//!   charged back, or the order/purchase already cancelled, is [`ErrorClass::AlreadyDone`]:
//!   `Delivered` with an empty receipt, not maybe applied. These steps are retried after
//!   unknown outcomes and a person may have acted in the CRM first; either way the wanted
//!   state exists. The patterns name the state ("already refunded", "already been
//!   cancelled", …), never a bare "already", so an unrelated "already exists" on an import
//!   can never pass for a success. No verbatim texts are known (reference §6.5); these follow
//!   the API's usual wording.
//! * **Transactions** ([`payment_transaction`]): the transaction a refund or chargeback is
//!   recorded on is the order's *earliest* successful `SALE` or `CAPTURE` (by `dateCreated`,
//!   then numeric `transactionId`). That is the payment the import created (a PREPAID import
//!   makes one SALE; a QA approval may turn an AUTHORIZE into a CAPTURE); later sales on the
//!   same order (upsales) are not ours. Declined, AUTHORIZE, VOID and REFUND rows never
//!   qualify; a row without `responseType` is taken as successful (the reference's rows carry
//!   it, but not every source does).
//! * **What remains refundable** ([`refundable_remainder`]): the payment transaction's amount
//!   ([`TXN_AMOUNT_FIELD`]) minus every successful REFUND of the order, never below zero;
//!   unknown when an amount is missing. A bridge import has one SALE, so the order's refunds
//!   are the payment's (counting a hand-made upsale's refunds too only makes the cap smaller).
//! * **Campaign currency** ([`campaign_currency`]): the first non-empty of
//!   [`CAMPAIGN_CURRENCY_FIELDS`] on the campaign row, upper case; a guess (reference E7).
//! * **The latest import** ([`order_recency`]): when several orders carry matching
//!   references, the latest by `dateCreated` (`YYYY-MM-DD HH:MM:SS` compares as text), then by
//!   `actualOrderId`, wins.

use crate::domain::{Money, Outcome, Receipt};
use serde_json::{Map, Value};
use std::time::Duration;

/// At most this many chars of a body are kept as evidence.
pub const EXCERPT_MAX_CHARS: usize = 2000;

/// The result of judging one HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub outcome: Outcome,
    /// See [`crate::domain::AttemptReport::maybe_applied`].
    pub maybe_applied: bool,
    /// The body as text, at most [`EXCERPT_MAX_CHARS`] chars (not yet scrubbed of secrets).
    pub excerpt: String,
}

/// What an ERROR text means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The refund, chargeback or cancellation asked for is already in place: a success.
    AlreadyDone,
    /// Bad login, IP not allow-listed, missing endpoint permission: every request will fail.
    TargetDown,
    /// This request can never succeed as sent.
    Permanent,
    /// A query matched nothing: an empty result, not a failure.
    NothingFound,
    /// Not in the table: treated as transient.
    Unrecognised,
}

/// ERROR texts: (lower-case substring, class, note shown after the verbatim text or `""`).
/// The first entry whose pattern occurs in the lower-cased text wins, so order matters.
/// Sources: reference §2 and §7; texts marked GUESS there are matched loosely on purpose.
pub const ERROR_TEXTS: &[(&str, ErrorClass, &str)] = &[
    // "Already done" first: such a text may also say "not allowed" ("Refund not allowed:
    // transaction already refunded"), and it is about the state, not the API user. GUESSes
    // (reference §6.5); each names the state, see the module docs.
    ("already refunded", ErrorClass::AlreadyDone, ""),
    ("already been refunded", ErrorClass::AlreadyDone, ""),
    ("already fully refunded", ErrorClass::AlreadyDone, ""),
    ("already been fully refunded", ErrorClass::AlreadyDone, ""),
    ("already cancelled", ErrorClass::AlreadyDone, ""),
    ("already canceled", ErrorClass::AlreadyDone, ""),
    ("already been cancelled", ErrorClass::AlreadyDone, ""),
    ("already been canceled", ErrorClass::AlreadyDone, ""),
    ("already charged back", ErrorClass::AlreadyDone, ""),
    ("already chargedback", ErrorClass::AlreadyDone, ""),
    ("already been charged back", ErrorClass::AlreadyDone, ""),
    (
        "already marked as a chargeback",
        ErrorClass::AlreadyDone,
        "",
    ),
    ("already marked as chargeback", ErrorClass::AlreadyDone, ""),
    // Target-wide (reference §2: "never retry"; repeated bad logins can lock the API user).
    // "IP must be whitelisted - <ip>" is verbatim from the live API; the login texts are
    // guesses ("Invalid login credentials", "Invalid login: no user found").
    ("login", ErrorClass::TargetDown, ""),
    ("password", ErrorClass::TargetDown, ""),
    ("credential", ErrorClass::TargetDown, ""),
    ("whitelist", ErrorClass::TargetDown, ""),
    ("ip address", ErrorClass::TargetDown, ""),
    ("permission", ErrorClass::TargetDown, ""),
    ("not allowed", ErrorClass::TargetDown, ""),
    ("access denied", ErrorClass::TargetDown, ""),
    // Recorded for an import with no products, an unknown campaign, or a base product id.
    (
        "no products exist in the order",
        ErrorClass::Permanent,
        "unknown campaign, or a product id that is not one of its campaign product ids",
    ),
    // Campaign not found: no verbatim text known; these follow the API's usual wording.
    ("no campaigns matching", ErrorClass::Permanent, ""),
    ("campaign not found", ErrorClass::Permanent, ""),
    ("invalid campaign", ErrorClass::Permanent, ""),
    ("campaign does not exist", ErrorClass::Permanent, ""),
    // Validation in sentence form ("First and last name are required fields.") or enum form.
    ("required field", ErrorClass::Permanent, ""),
    ("not a valid input", ErrorClass::Permanent, ""),
    // A decline repeats on every retry, and each try may leave a DECLINED order behind.
    ("transaction declined", ErrorClass::Permanent, ""),
    // "No orders matching those parameters could be found" (recorded) and its siblings.
    (
        "matching those parameters could be found",
        ErrorClass::NothingFound,
        "",
    ),
];

/// Parameter names whose appearance in a validation map means the credentials are wrong.
const CREDENTIAL_FIELDS: &[&str] = &["loginId", "password"];

/// The class of an ERROR text, by [`ERROR_TEXTS`].
pub fn error_class(text: &str) -> (ErrorClass, &'static str) {
    let lower = text.to_lowercase();
    ERROR_TEXTS
        .iter()
        .find(|(pattern, _, _)| lower.contains(pattern))
        .map(|(_, class, note)| (*class, *note))
        .unwrap_or((ErrorClass::Unrecognised, ""))
}

/// The parsed envelope: `result` and `message` (any JSON type, `Null` when absent).
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub result: String,
    pub message: Value,
}

/// The envelope of a body, `None` when the body is not a JSON object with a string `result`.
pub fn parse_envelope(body: &[u8]) -> Option<Envelope> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let Value::Object(mut obj) = serde_json::from_slice::<Value>(body).ok()? else {
        return None;
    };
    let Value::String(result) = obj.remove("result")? else {
        return None;
    };
    let message = obj.remove("message").unwrap_or(Value::Null);
    Some(Envelope { result, message })
}

/// Judges one HTTP answer of Konnektive. `retry_after` is the raw `Retry-After` header; only
/// delta-seconds are understood (an HTTP date gives `None`, the schedule then decides).
pub fn classify(http_status: u16, retry_after: Option<&str>, body: &[u8]) -> Classified {
    let excerpt = excerpt(body);
    let retry_after = retry_after.and_then(parse_retry_after);
    let (outcome, maybe_applied) = match http_status {
        200..=299 => classify_envelope(http_status, body),
        429 | 503 => (
            Outcome::Retryable {
                reason: format!("HTTP {http_status} from Konnektive (throttled or unavailable)"),
                retry_after,
            },
            false,
        ),
        408 => (
            Outcome::Retryable {
                reason: "HTTP 408 from Konnektive (request timeout)".to_owned(),
                retry_after,
            },
            false,
        ),
        500..=599 => (
            Outcome::Retryable {
                reason: format!("HTTP {http_status} from Konnektive or a proxy in front of it"),
                retry_after,
            },
            true,
        ),
        _ => (
            Outcome::TargetDown {
                reason: format!(
                    "HTTP {http_status} from Konnektive (check base_url, credentials, allow-list){}",
                    envelope_text(body)
                        .map(|t| format!(": {t}"))
                        .unwrap_or_default()
                ),
            },
            false,
        ),
    };
    Classified {
        outcome,
        maybe_applied,
        excerpt,
    }
}

fn classify_envelope(http_status: u16, body: &[u8]) -> (Outcome, bool) {
    let Some(env) = parse_envelope(body) else {
        let what = if body.iter().all(u8::is_ascii_whitespace) {
            "an empty body"
        } else {
            "a body that is not a Konnektive answer"
        };
        return (
            Outcome::Retryable {
                reason: format!(
                    "HTTP {http_status} with {what}; the request may have been applied"
                ),
                retry_after: None,
            },
            true,
        );
    };
    match env.result.as_str() {
        "SUCCESS" => (Outcome::Delivered(receipt_from_order(&env.message)), false),
        "ERROR" => (classify_error(&env.message), false),
        "MERC_REDIRECT" => (
            Outcome::Permanent {
                reason: "Konnektive answered MERC_REDIRECT (a payment redirect) although no card \
                         data was sent; check the campaign's payment setup"
                    .to_owned(),
            },
            true,
        ),
        other => (
            Outcome::Retryable {
                reason: format!("unexpected result {other:?} from Konnektive"),
                retry_after: None,
            },
            true,
        ),
    }
}

fn classify_error(message: &Value) -> Outcome {
    match message {
        Value::String(text) => match error_class(text) {
            (ErrorClass::AlreadyDone, _) => Outcome::Delivered(Receipt::default()),
            (ErrorClass::TargetDown, _) => Outcome::TargetDown {
                reason: text.clone(),
            },
            (ErrorClass::Permanent, note) => Outcome::Permanent {
                reason: with_note(text, note),
            },
            (ErrorClass::NothingFound | ErrorClass::Unrecognised, _) => Outcome::Retryable {
                reason: format!("Konnektive ERROR: {text}"),
                retry_after: None,
            },
        },
        Value::Object(fields) if !fields.is_empty() => {
            let listed = list_fields(fields);
            if fields
                .keys()
                .any(|k| CREDENTIAL_FIELDS.contains(&k.as_str()))
            {
                Outcome::TargetDown {
                    reason: format!("Konnektive refused the credentials: {listed}"),
                }
            } else {
                Outcome::Permanent {
                    reason: format!("Konnektive refused fields: {listed}"),
                }
            }
        }
        _ => Outcome::Retryable {
            reason: "Konnektive ERROR without a message".to_owned(),
            retry_after: None,
        },
    }
}

fn with_note(text: &str, note: &str) -> String {
    if note.is_empty() {
        text.to_owned()
    } else {
        format!("{text} ({note})")
    }
}

/// `field: error; field: error` for a validation map.
fn list_fields(fields: &Map<String, Value>) -> String {
    fields
        .iter()
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}: {s}"),
            other => format!("{k}: {other}"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The string message of an envelope body, if any (for reasons of non-2xx answers).
fn envelope_text(body: &[u8]) -> Option<String> {
    match parse_envelope(body)?.message {
        Value::String(s) if !s.is_empty() => Some(s),
        _ => None,
    }
}

/// `Retry-After` as delta-seconds.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The body as (lossy) text, cut to [`EXCERPT_MAX_CHARS`] chars with a trailing `…` when cut.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    match text.char_indices().nth(EXCERPT_MAX_CHARS) {
        None => text.into_owned(),
        Some(_) => {
            let keep = text
                .char_indices()
                .nth(EXCERPT_MAX_CHARS - 1)
                .map(|(i, _)| i)
                .unwrap_or(text.len());
            format!("{}…", &text[..keep])
        }
    }
}

/// A JSON string or number as a string (ids arrive as either); `None` for anything else or "".
fn id_string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The ids of an order object: an `order/import` message (`items` an array) or an
/// `order/query` row (`items` an object keyed by campaign product id). Missing ids stay empty.
pub fn receipt_from_order(order: &Value) -> Receipt {
    let items: Vec<&Value> = match order.get("items") {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(Value::Object(o)) => o.values().collect(),
        _ => Vec::new(),
    };
    Receipt {
        order_id: id_string(order.get("orderId")),
        customer_id: id_string(order.get("customerId")),
        purchase_ids: items
            .iter()
            .filter_map(|item| id_string(item.get("purchaseId")))
            .collect(),
        transaction_ids: Vec::new(),
    }
}

/// The `orderId` of a successful import that Konnektive holds in QA (`orderStatus` PENDING).
pub fn import_held_for_qa(body: &[u8]) -> Option<String> {
    let env = parse_envelope(body)?;
    if env.result != "SUCCESS" {
        return None;
    }
    let status = env.message.get("orderStatus").and_then(Value::as_str);
    if status.is_some_and(|s| s.eq_ignore_ascii_case("PENDING")) {
        id_string(env.message.get("orderId"))
    } else {
        None
    }
}

/// True when the body is the ERROR a query gives for "no hits" (an empty result).
pub fn is_nothing_found(body: &[u8]) -> bool {
    match parse_envelope(body) {
        Some(Envelope {
            result,
            message: Value::String(text),
        }) => result == "ERROR" && error_class(&text).0 == ErrorClass::NothingFound,
        _ => false,
    }
}

/// One page of a successful `*/query/` answer.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryPage {
    /// `data` rows (an array, or the values of an object keyed by id).
    pub rows: Vec<Value>,
    pub total_results: u64,
}

/// The paging object of a SUCCESS answer; `None` when the shape is not one.
pub fn query_page(body: &[u8]) -> Option<QueryPage> {
    let env = parse_envelope(body)?;
    if env.result != "SUCCESS" {
        return None;
    }
    let msg = env.message.as_object()?;
    let rows = match msg.get("data") {
        Some(Value::Array(a)) => a.clone(),
        Some(Value::Object(o)) => o.values().cloned().collect(),
        Some(Value::Null) | None => Vec::new(),
        Some(_) => return None,
    };
    let total_results = match msg.get("totalResults") {
        Some(Value::Number(n)) => n.as_u64()?,
        Some(Value::String(s)) => s.trim().parse().ok()?,
        _ => rows.len() as u64,
    };
    Some(QueryPage {
        rows,
        total_results,
    })
}

/// True when `row[field]` (a string or a number) equals `value` exactly.
pub fn row_field_equals(row: &Value, field: &str, value: &str) -> bool {
    id_string(row.get(field)).is_some_and(|v| v == value)
}

/// True when the body is an ERROR envelope of class [`ErrorClass::AlreadyDone`].
pub fn is_already_done(body: &[u8]) -> bool {
    match parse_envelope(body) {
        Some(Envelope {
            result,
            message: Value::String(text),
        }) => result == "ERROR" && error_class(&text).0 == ErrorClass::AlreadyDone,
        _ => false,
    }
}

/// The value of `row[field]` as a string (a string or a number; `None` when absent or "").
pub fn row_field(row: &Value, field: &str) -> Option<String> {
    id_string(row.get(field))
}

/// How recent an order row is: `(dateCreated, actualOrderId)`; larger is later.
pub fn order_recency(row: &Value) -> (String, u64) {
    let created = row
        .get("dateCreated")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let actual = id_string(row.get("actualOrderId"))
        .and_then(|id| id.parse().ok())
        .unwrap_or(0);
    (created, actual)
}

fn text_is(row: &Value, field: &str, wanted: &str) -> bool {
    row.get(field)
        .and_then(Value::as_str)
        .is_some_and(|v| v.eq_ignore_ascii_case(wanted))
}

/// `(dateCreated, numeric transactionId)` of a transaction row, for ordering.
fn txn_order_key(row: &Value) -> (String, u64) {
    let created = row
        .get("dateCreated")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let id = id_string(row.get("transactionId"))
        .and_then(|id| id.parse().ok())
        .unwrap_or(u64::MAX);
    (created, id)
}

/// The `transactionId` a refund or chargeback of the order is recorded on: the earliest
/// successful `SALE` or `CAPTURE` (see the module docs). `None` when there is none.
pub fn payment_transaction(rows: &[Value]) -> Option<String> {
    rows.iter()
        .filter(|row| text_is(row, "txnType", "SALE") || text_is(row, "txnType", "CAPTURE"))
        .filter(|row| row.get("responseType").is_none() || text_is(row, "responseType", "SUCCESS"))
        .filter(|row| id_string(row.get("transactionId")).is_some())
        .min_by_key(|row| txn_order_key(row))
        .and_then(|row| id_string(row.get("transactionId")))
}

/// The field of a `transactions/query` row that holds its amount. GUESS: reference §7 E9
/// shows `totalAmount` (a two-decimal string) on transaction rows; query rows may hold JSON
/// numbers instead (§5), which are read too.
pub const TXN_AMOUNT_FIELD: &str = "totalAmount";

/// The amount of a transaction row ([`TXN_AMOUNT_FIELD`]), always positive; `None` when
/// absent or not an amount.
fn txn_amount(row: &Value) -> Option<Money> {
    let text = match row.get(TXN_AMOUNT_FIELD)? {
        Value::String(s) => s.trim().to_owned(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    Money::parse_decimal(&text).ok().map(Money::abs)
}

/// What remains refundable on the payment transaction `payment` (see
/// [`payment_transaction`]) of an order, from the order's `transactions/query` rows: the
/// payment's amount minus every successful `REFUND` row of the order, never below zero.
///
/// Every REFUND of the order counts against the payment: an order the bridge imported has
/// one SALE (an upsale added in the CRM by hand is not ours to refund, and is refunded rarely
/// enough that over-counting its refunds errs on the safe side: the cap gets smaller, never
/// larger). `None` when an amount cannot be read (a row without [`TXN_AMOUNT_FIELD`]): the
/// caller then sends the action's amount without `fullRefund` and lets Konnektive judge.
pub fn refundable_remainder(rows: &[Value], payment: &str) -> Option<Money> {
    let sale = rows
        .iter()
        .find(|row| id_string(row.get("transactionId")).as_deref() == Some(payment))?;
    let mut remaining = txn_amount(sale)?.minor();
    for refund in rows.iter().filter(|row| {
        text_is(row, "txnType", "REFUND")
            && (row.get("responseType").is_none() || text_is(row, "responseType", "SUCCESS"))
    }) {
        remaining -= txn_amount(refund)?.minor();
    }
    Some(Money::from_minor(remaining.max(0)))
}

/// The `transactionId` of a REFUND row whose `merchantTxnId` is `merchant_txn_id` (the
/// `refundMerchantTxnId` we sent), if any.
pub fn refund_with_merchant_txn(rows: &[Value], merchant_txn_id: &str) -> Option<String> {
    rows.iter()
        .filter(|row| text_is(row, "txnType", "REFUND"))
        .find(|row| id_string(row.get("merchantTxnId")).as_deref() == Some(merchant_txn_id))
        .and_then(|row| id_string(row.get("transactionId")))
}

/// The refund's own `transactionId` from a SUCCESS answer of `transactions/refund`, when the
/// message is an object that carries one (the string message "Refund processed" does not).
pub fn refund_transaction_id(body: &[u8]) -> Option<String> {
    let env = parse_envelope(body)?;
    if env.result != "SUCCESS" {
        return None;
    }
    id_string(env.message.get("transactionId"))
}

/// What `campaign/query` tells about one campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Campaign {
    /// Its campaign product ids (`products[].campaignProductId`).
    pub products: Vec<u64>,
    /// The currency it books in, upper case, by [`campaign_currency`]; `None` when the answer
    /// carries none of [`CAMPAIGN_CURRENCY_FIELDS`].
    pub currency: Option<String>,
}

/// Where a `campaign/query` row may name the campaign's currency, in the order tried.
///
/// GUESS: reference §7 E7 shows `"currency":"EUR"` on the campaign, but marks every inner
/// campaign field as a guess; order objects carry `currencyCode` and `baseCurrencyCode`
/// (recorded, §5), so those names are accepted too. The first non-empty one wins. When none
/// is present the dispatcher warns once and imports unchecked (README, "What rests on a
/// guess").
pub const CAMPAIGN_CURRENCY_FIELDS: &[&str] = &["currency", "currencyCode", "baseCurrencyCode"];

/// The currency a `campaign/query` row books in (see [`CAMPAIGN_CURRENCY_FIELDS`]), trimmed
/// and upper case.
pub fn campaign_currency(row: &Value) -> Option<String> {
    CAMPAIGN_CURRENCY_FIELDS.iter().find_map(|field| {
        row.get(*field)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_ascii_uppercase)
    })
}

/// `campaign_id` in a `campaign/query` answer (reference §3.6, E7: `data` keyed by campaign
/// id). `None` when the campaign is not in the answer.
pub fn campaign(body: &[u8], campaign_id: u64) -> Option<Campaign> {
    let page = query_page(body)?;
    let wanted = campaign_id.to_string();
    let row = page
        .rows
        .iter()
        .find(|row| id_string(row.get("campaignId")).as_deref() == Some(wanted.as_str()))?;
    Some(Campaign {
        products: products_of_campaign(row),
        currency: campaign_currency(row),
    })
}

/// The campaign product ids of `campaign_id` in a `campaign/query` answer (reference §3.6,
/// E7: `data` keyed by campaign id, `products[].campaignProductId`). `None` when the campaign
/// is not in the answer.
pub fn campaign_products(body: &[u8], campaign_id: u64) -> Option<Vec<u64>> {
    campaign(body, campaign_id).map(|c| c.products)
}

fn products_of_campaign(campaign: &Value) -> Vec<u64> {
    campaign
        .get("products")
        .and_then(Value::as_array)
        .map(|products| {
            products
                .iter()
                .filter_map(|p| id_string(p.get("campaignProductId")))
                .filter_map(|id| id.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The expected class of a case: label, maybe_applied, and a substring of the reason.
    struct Case {
        name: &'static str,
        status: u16,
        retry_after: Option<&'static str>,
        body: &'static str,
        label: &'static str,
        maybe_applied: bool,
        reason_contains: &'static str,
    }

    const E1: &str = r#"{"result":"SUCCESS","message":{"orderId":"7A1C0E93B2","customerId":501,"campaignId":12,
 "campaignName":"DS24 Import","orderType":"NEW_SALE","orderStatus":"COMPLETE","reviewStatus":null,
 "dateCreated":"2026-03-02 10:15:00","paySource":"PREPAID","firstName":"Max","lastName":"Muster",
 "emailAddress":"max@example.com","country":"DE","state":"BE","custom1":"DS24-ABC123",
 "items":[{"productId":"31","actualProductId":"17","name":"Product A","qty":"1","price":"49.00",
   "shipping":"0.00","purchaseId":"C0FFEE1234","purchaseStatus":"ONE_TIME",
   "billingCycleType":"ONE_TIME","nextBillDate":"","txnType":"SALE","responseType":"SUCCESS"}]}}"#;

    const E8_HIT: &str = r#"{"result":"SUCCESS","message":{"totalResults":1,"resultsPerPage":200,"page":1,
 "data":[{"orderId":"7A1C0E93B2","actualOrderId":49835,"clientOrderId":"7A1C0E93B2","externalOrderId":null,
   "orderStatus":"COMPLETE","reviewStatus":"APPROVED","dateCreated":"2026-03-02 10:15:00",
   "campaignId":12,"customerId":"501","emailAddress":"max@example.com",
   "custom1":"DS24-ABC123","affId":"AFF123","sourceValue1":"campaignkey",
   "items":{"31":{"productId":31,"name":"Product A","qty":1,"price":49.0,"shipping":0,
     "purchaseId":"C0FFEE1234","purchaseStatus":"ONE_TIME","txnType":"SALE","responseType":"SUCCESS"}}}],
 "params":null,"errors":null,"sortBy":"dateCreated","sortDir":1}}"#;

    #[test]
    fn classify_table() {
        let cases = [
            Case {
                name: "E1 success",
                status: 200,
                retry_after: None,
                body: E1,
                label: "delivered",
                maybe_applied: false,
                reason_contains: "",
            },
            Case {
                name: "E2 QA approved (string message)",
                status: 200,
                retry_after: None,
                body: r#"{"result":"SUCCESS","message":"Order QA Approved"}"#,
                label: "delivered",
                maybe_applied: false,
                reason_contains: "",
            },
            Case {
                name: "E2 bad action (object message)",
                status: 200,
                retry_after: None,
                body: r#"{"result":"ERROR","message":{"action":"Not a valid input. Must be in: 'APPROVE', 'DECLINE'"}}"#,
                label: "permanent",
                maybe_applied: false,
                reason_contains: "action: Not a valid input",
            },
            Case {
                name: "E3 validation object",
                status: 200,
                retry_after: None,
                body: r#"{"result":"ERROR","message":{"shipAddress1":"is a required field","shipCity":"is a required field","shipPostalCode":"is a required field","shipCountry":"is a required field"}}"#,
                label: "permanent",
                maybe_applied: false,
                reason_contains: "shipAddress1: is a required field; shipCity",
            },
            Case {
                name: "E4 no products",
                status: 200,
                retry_after: None,
                body: r#"{"result":"ERROR","message":"No products exist in the order"}"#,
                label: "permanent",
                maybe_applied: false,
                reason_contains: "No products exist in the order",
            },
            Case {
                name: "campaign not found (guessed text)",
                status: 200,
                retry_after: None,
                body: r#"{"result":"ERROR","message":"No campaigns matching those parameters could be found"}"#,
                label: "permanent",
                maybe_applied: false,
                reason_contains: "No campaigns matching",
            },
            Case {
                name: "E5 IP not allow-listed",
                status: 200,
                retry_after: None,
                body: r#"{"result":"ERROR","message":"IP must be whitelisted - 198.51.100.7"}"#,
                label: "target_down",
                maybe_applied: false,
                reason_contains: "IP must be whitelisted - 198.51.100.7",
            },
            Case {
                name: "E6 bad credentials",
                status: 200,
                retry_after: None,
                body: r#"{"result":"ERROR","message":"Invalid login credentials"}"#,
                label: "target_down",
                maybe_applied: false,
                reason_contains: "Invalid login credentials",
            },
            Case {
                name: "missing permission",
                status: 200,
                retry_after: None,
                body: r#"{"result":"ERROR","message":"API user does not have PERMISSION for this endpoint"}"#,
                label: "target_down",
                maybe_applied: false,
                reason_contains: "PERMISSION",
            },
            Case {
                name: "E8 miss (empty query result)",
                status: 200,
                retry_after: None,
                body: r#"{"result":"ERROR","message":"No orders matching those parameters could be found"}"#,
                label: "retryable",
                maybe_applied: false,
                reason_contains: "No orders matching",
            },
            Case {
                name: "sentence validation",
                status: 200,
                retry_after: None,
                body: r#"{"result":"ERROR","message":"First and last name are required fields."}"#,
                label: "permanent",
                maybe_applied: false,
                reason_contains: "First and last name",
            },
            Case {
                name: "decline",
                status: 200,
                retry_after: None,
                body: r#"{"result":"ERROR","message":"Transaction Declined: Card Declined"}"#,
                label: "permanent",
                maybe_applied: false,
                reason_contains: "Card Declined",
            },
            Case {
                name: "unrecognised ERROR text",
                status: 200,
                retry_after: None,
                body: r#"{"result":"ERROR","message":"Customer not found"}"#,
                label: "retryable",
                maybe_applied: false,
                reason_contains: "Customer not found",
            },
            Case {
                name: "ERROR without message",
                status: 200,
                retry_after: None,
                body: r#"{"result":"ERROR"}"#,
                label: "retryable",
                maybe_applied: false,
                reason_contains: "without a message",
            },
            Case {
                name: "MERC_REDIRECT",
                status: 200,
                retry_after: None,
                body: r#"{"result":"MERC_REDIRECT","message":{"url":"https://3ds.example"}}"#,
                label: "permanent",
                maybe_applied: true,
                reason_contains: "MERC_REDIRECT",
            },
            Case {
                name: "E12 502 HTML",
                status: 502,
                retry_after: None,
                body: "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>",
                label: "retryable",
                maybe_applied: true,
                reason_contains: "HTTP 502",
            },
            Case {
                name: "E12 empty 200",
                status: 200,
                retry_after: None,
                body: "",
                label: "retryable",
                maybe_applied: true,
                reason_contains: "empty body",
            },
            Case {
                name: "E12 non-JSON 200",
                status: 200,
                retry_after: None,
                body: "<html>maintenance</html>",
                label: "retryable",
                maybe_applied: true,
                reason_contains: "not a Konnektive answer",
            },
            Case {
                name: "JSON without result",
                status: 200,
                retry_after: None,
                body: r#"{"status":"ok"}"#,
                label: "retryable",
                maybe_applied: true,
                reason_contains: "not a Konnektive answer",
            },
            Case {
                name: "429 with Retry-After",
                status: 429,
                retry_after: Some("7"),
                body: "slow down",
                label: "retryable",
                maybe_applied: false,
                reason_contains: "HTTP 429",
            },
            Case {
                name: "503",
                status: 503,
                retry_after: None,
                body: "",
                label: "retryable",
                maybe_applied: false,
                reason_contains: "HTTP 503",
            },
            Case {
                name: "500 with a SUCCESS body is still not a success",
                status: 500,
                retry_after: None,
                body: E1,
                label: "retryable",
                maybe_applied: true,
                reason_contains: "HTTP 500",
            },
            Case {
                name: "403 with IP text",
                status: 403,
                retry_after: None,
                body: r#"{"result":"ERROR","message":"IP must be whitelisted - 198.51.100.7"}"#,
                label: "target_down",
                maybe_applied: false,
                reason_contains: "IP must be whitelisted - 198.51.100.7",
            },
            Case {
                name: "401",
                status: 401,
                retry_after: None,
                body: "Unauthorized",
                label: "target_down",
                maybe_applied: false,
                reason_contains: "HTTP 401",
            },
            Case {
                name: "404 (wrong base_url)",
                status: 404,
                retry_after: None,
                body: "<html>Not Found</html>",
                label: "target_down",
                maybe_applied: false,
                reason_contains: "HTTP 404",
            },
            Case {
                name: "already refunded (GUESS text) is a success",
                status: 200,
                retry_after: None,
                body: r#"{"result":"ERROR","message":"Transaction has already been fully refunded"}"#,
                label: "delivered",
                maybe_applied: false,
                reason_contains: "",
            },
            Case {
                name: "already cancelled wins over 'not allowed'",
                status: 200,
                retry_after: None,
                body: r#"{"result":"ERROR","message":"Cancel not allowed: order is already cancelled"}"#,
                label: "delivered",
                maybe_applied: false,
                reason_contains: "",
            },
            Case {
                name: "already charged back is a success",
                status: 200,
                retry_after: None,
                body: r#"{"result":"ERROR","message":"Transaction is already marked as a chargeback"}"#,
                label: "delivered",
                maybe_applied: false,
                reason_contains: "",
            },
            Case {
                name: "a bare 'already' is not a success",
                status: 200,
                retry_after: None,
                body: r#"{"result":"ERROR","message":"Customer already exists"}"#,
                label: "retryable",
                maybe_applied: false,
                reason_contains: "Customer already exists",
            },
            Case {
                name: "no transactions (empty query result)",
                status: 200,
                retry_after: None,
                body: r#"{"result":"ERROR","message":"No transactions matching those parameters could be found"}"#,
                label: "retryable",
                maybe_applied: false,
                reason_contains: "No transactions matching",
            },
            Case {
                name: "credentials in a validation map",
                status: 200,
                retry_after: None,
                body: r#"{"result":"ERROR","message":{"loginId":"is a required field"}}"#,
                label: "target_down",
                maybe_applied: false,
                reason_contains: "loginId: is a required field",
            },
        ];
        for c in cases {
            let got = classify(c.status, c.retry_after, c.body.as_bytes());
            assert_eq!(
                got.outcome.label(),
                c.label,
                "{}: {:?}",
                c.name,
                got.outcome
            );
            assert_eq!(got.maybe_applied, c.maybe_applied, "{}", c.name);
            assert!(
                got.outcome.reason().contains(c.reason_contains),
                "{}: reason {:?} lacks {:?}",
                c.name,
                got.outcome.reason(),
                c.reason_contains
            );
            assert_eq!(got.excerpt, c.body, "{}", c.name);
        }
    }

    #[test]
    fn target_down_keeps_the_verbatim_text() {
        let got = classify(
            200,
            None,
            br#"{"result":"ERROR","message":"IP must be whitelisted - 198.51.100.7"}"#,
        );
        assert_eq!(
            got.outcome,
            Outcome::TargetDown {
                reason: "IP must be whitelisted - 198.51.100.7".to_owned()
            }
        );
    }

    #[test]
    fn retry_after_is_honoured_in_seconds_only() {
        let get = |h: Option<&str>| match classify(429, h, b"").outcome {
            Outcome::Retryable { retry_after, .. } => retry_after,
            other => panic!("{other:?}"),
        };
        assert_eq!(get(Some("7")), Some(Duration::from_secs(7)));
        assert_eq!(get(Some(" 120 ")), Some(Duration::from_secs(120)));
        assert_eq!(get(Some("Wed, 21 Oct 2015 07:28:00 GMT")), None);
        assert_eq!(get(None), None);
        match classify(502, Some("3"), b"").outcome {
            Outcome::Retryable { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::from_secs(3)))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn receipt_from_import_and_from_query_row() {
        let want = Receipt {
            order_id: Some("7A1C0E93B2".to_owned()),
            customer_id: Some("501".to_owned()),
            purchase_ids: vec!["C0FFEE1234".to_owned()],
            transaction_ids: vec![],
        };
        assert_eq!(
            classify(200, None, E1.as_bytes()).outcome,
            Outcome::Delivered(want.clone())
        );
        let page = query_page(E8_HIT.as_bytes()).expect("page");
        assert_eq!(page.total_results, 1);
        assert_eq!(page.rows.len(), 1);
        assert_eq!(receipt_from_order(&page.rows[0]), want);
        assert!(row_field_equals(&page.rows[0], "custom1", "DS24-ABC123"));
        assert!(!row_field_equals(&page.rows[0], "custom1", "DS24-ABC12"));
        assert!(!row_field_equals(&page.rows[0], "custom2", "DS24-ABC123"));
    }

    #[test]
    fn empty_query_result_is_recognised() {
        assert!(is_nothing_found(
            br#"{"result":"ERROR","message":"No orders matching those parameters could be found"}"#
        ));
        assert!(!is_nothing_found(
            br#"{"result":"ERROR","message":"Invalid login credentials"}"#
        ));
        assert!(!is_nothing_found(b""));
    }

    #[test]
    fn qa_hold_is_detected() {
        let pending = E1.replace(r#""orderStatus":"COMPLETE""#, r#""orderStatus":"PENDING""#);
        assert_eq!(
            import_held_for_qa(pending.as_bytes()),
            Some("7A1C0E93B2".to_owned())
        );
        assert_eq!(import_held_for_qa(E1.as_bytes()), None);
    }

    #[test]
    fn campaign_products_from_e7() {
        let e7 = br#"{"result":"SUCCESS","message":{"totalResults":1,"resultsPerPage":25,"page":1,
 "data":{"12":{"campaignId":12,"campaignName":"DS24 Import","campaignType":"LANDER","currency":"EUR",
   "products":[{"campaignProductId":31,"productId":17,"productName":"(17) Product A","price":"49.00",
     "shippingPrice":"0.00","billingCycleType":"ONE_TIME"}],"coupons":[]}}}}"#;
        assert_eq!(campaign_products(e7, 12), Some(vec![31]));
        assert_eq!(campaign_products(e7, 13), None);
        assert_eq!(
            campaign(e7, 12),
            Some(Campaign {
                products: vec![31],
                currency: Some("EUR".to_owned())
            })
        );
    }

    #[test]
    fn campaign_currency_accepts_the_likely_names_in_order() {
        let table = [
            (r#"{"currency":"eur"}"#, Some("EUR")),
            (r#"{"currencyCode":"USD"}"#, Some("USD")),
            (r#"{"baseCurrencyCode":" CHF "}"#, Some("CHF")),
            (
                r#"{"currency":"","currencyCode":"GBP","baseCurrencyCode":"EUR"}"#,
                Some("GBP"),
            ),
            (
                r#"{"currency":"EUR","baseCurrencyCode":"USD"}"#,
                Some("EUR"),
            ),
            (r#"{"currency":null,"campaignName":"x"}"#, None),
            (r#"{"currency":978}"#, None),
            (r#"{}"#, None),
        ];
        for (row, want) in table {
            let row: Value = serde_json::from_str(row).expect("json");
            assert_eq!(campaign_currency(&row).as_deref(), want, "{row}");
        }
    }

    #[test]
    fn excerpt_is_bounded_on_char_boundaries() {
        let body = "ü".repeat(EXCERPT_MAX_CHARS + 10);
        let ex = excerpt(body.as_bytes());
        assert_eq!(ex.chars().count(), EXCERPT_MAX_CHARS);
        assert!(ex.ends_with('…'));
        let exact = "a".repeat(EXCERPT_MAX_CHARS);
        assert_eq!(excerpt(exact.as_bytes()), exact);
    }

    #[test]
    fn already_texts_table() {
        let table = [
            ("Transaction already refunded", ErrorClass::AlreadyDone),
            ("Order has already been refunded", ErrorClass::AlreadyDone),
            (
                "Transaction has already been fully refunded",
                ErrorClass::AlreadyDone,
            ),
            ("Order Already Cancelled", ErrorClass::AlreadyDone),
            ("Purchase is already canceled", ErrorClass::AlreadyDone),
            (
                "This order has already been cancelled",
                ErrorClass::AlreadyDone,
            ),
            ("Transaction already charged back", ErrorClass::AlreadyDone),
            (
                "Transaction is already chargedback",
                ErrorClass::AlreadyDone,
            ),
            (
                "Transaction is already marked as chargeback",
                ErrorClass::AlreadyDone,
            ),
            ("Customer already exists", ErrorClass::Unrecognised),
            ("Invalid login credentials", ErrorClass::TargetDown),
        ];
        for (text, class) in table {
            assert_eq!(error_class(text).0, class, "{text}");
        }
        assert!(is_already_done(
            br#"{"result":"ERROR","message":"Order is already cancelled"}"#
        ));
        assert!(!is_already_done(
            br#"{"result":"SUCCESS","message":"Order is already cancelled"}"#
        ));
        assert!(!is_already_done(b"<html>already cancelled</html>"));
    }

    fn txn(id: u64, ty: &str, response: Option<&str>, created: &str) -> Value {
        let mut row = serde_json::json!({
            "transactionId": id,
            "orderId": "7A1C0E93B2",
            "txnType": ty,
            "totalAmount": "49.00",
            "dateCreated": created,
        });
        if let (Some(r), Some(obj)) = (response, row.as_object_mut()) {
            obj.insert("responseType".to_owned(), r.into());
        }
        row
    }

    #[test]
    fn payment_transaction_is_the_earliest_successful_sale_or_capture() {
        let t0 = "2026-03-02 10:00:00";
        let t1 = "2026-03-02 10:05:00";
        let t2 = "2026-03-03 09:00:00";
        let cases: Vec<(&str, Vec<Value>, Option<&str>)> = vec![
            (
                "E9 single sale",
                vec![txn(88001, "SALE", Some("SUCCESS"), t0)],
                Some("88001"),
            ),
            (
                "declined sale, then a captured one",
                vec![
                    txn(1, "SALE", Some("HARD_DECLINE"), t0),
                    txn(2, "AUTHORIZE", Some("SUCCESS"), t0),
                    txn(3, "CAPTURE", Some("SUCCESS"), t1),
                ],
                Some("3"),
            ),
            (
                "several sales: the earliest (the import), whatever the row order",
                vec![
                    txn(7, "SALE", Some("SUCCESS"), t2),
                    txn(5, "SALE", Some("SUCCESS"), t1),
                    txn(9, "REFUND", Some("SUCCESS"), t0),
                ],
                Some("5"),
            ),
            (
                "same time: the lower id",
                vec![
                    txn(12, "SALE", Some("SUCCESS"), t0),
                    txn(11, "sale", Some("success"), t0),
                ],
                Some("11"),
            ),
            (
                "no responseType is taken as success",
                vec![txn(4, "SALE", None, t0)],
                Some("4"),
            ),
            (
                "only refunds, voids, authorizations",
                vec![
                    txn(1, "REFUND", Some("SUCCESS"), t0),
                    txn(2, "VOID", Some("SUCCESS"), t0),
                    txn(3, "AUTHORIZE", Some("SUCCESS"), t0),
                ],
                None,
            ),
            ("nothing", vec![], None),
        ];
        for (name, rows, want) in cases {
            assert_eq!(payment_transaction(&rows).as_deref(), want, "{name}");
        }
    }

    #[test]
    fn refundable_remainder_is_the_sale_minus_its_refunds() {
        let sale = txn(88001, "SALE", Some("SUCCESS"), "2026-03-02 10:00:00");
        let with_amount = |mut row: Value, amount: Value| {
            if let Some(obj) = row.as_object_mut() {
                obj.insert(TXN_AMOUNT_FIELD.to_owned(), amount);
            }
            row
        };
        let refund = |id: u64, amount: &str, response: &str| {
            with_amount(
                txn(id, "REFUND", Some(response), "2026-03-05 10:00:00"),
                amount.into(),
            )
        };
        let m = |minor: i64| Some(Money::from_minor(minor));
        let cases: Vec<(&str, Vec<Value>, Option<Money>)> = vec![
            ("untouched sale", vec![sale.clone()], m(4900)),
            (
                "one partial refund (written negative)",
                vec![sale.clone(), refund(88002, "-10.50", "SUCCESS")],
                m(3850),
            ),
            (
                "two refunds empty it",
                vec![
                    sale.clone(),
                    refund(88002, "10.50", "SUCCESS"),
                    refund(88003, "38.50", "SUCCESS"),
                ],
                m(0),
            ),
            (
                "a declined refund does not count",
                vec![sale.clone(), refund(88002, "10.00", "HARD_DECLINE")],
                m(4900),
            ),
            (
                "never below zero",
                vec![sale.clone(), refund(88002, "60.00", "SUCCESS")],
                m(0),
            ),
            (
                "amounts as JSON numbers",
                vec![
                    with_amount(sale.clone(), serde_json::json!(49.0)),
                    with_amount(
                        txn(88002, "REFUND", None, "2026-03-05 10:00:00"),
                        serde_json::json!(0.5),
                    ),
                ],
                m(4850),
            ),
            (
                "a refund without an amount: unknown",
                vec![
                    sale.clone(),
                    with_amount(
                        txn(88002, "REFUND", Some("SUCCESS"), "2026-03-05 10:00:00"),
                        Value::Null,
                    ),
                ],
                None,
            ),
            ("the payment is not among the rows", vec![], None),
        ];
        for (name, rows, want) in cases {
            assert_eq!(refundable_remainder(&rows, "88001"), want, "{name}");
        }
    }

    #[test]
    fn refunds_are_found_by_merchant_txn_id() {
        let mut refund = txn(88002, "REFUND", Some("SUCCESS"), "2026-03-05 10:00:00");
        if let Some(obj) = refund.as_object_mut() {
            obj.insert("merchantTxnId".to_owned(), "T-777".into());
        }
        let mut sale = txn(88001, "SALE", Some("SUCCESS"), "2026-03-02 10:00:00");
        if let Some(obj) = sale.as_object_mut() {
            obj.insert("merchantTxnId".to_owned(), "T-778".into());
        }
        let rows = [sale, refund];
        assert_eq!(
            refund_with_merchant_txn(&rows, "T-777").as_deref(),
            Some("88002")
        );
        assert_eq!(
            refund_with_merchant_txn(&rows, "T-778"),
            None,
            "a SALE is no refund"
        );
        assert_eq!(refund_with_merchant_txn(&rows, "T-7"), None);
    }

    #[test]
    fn refund_transaction_id_only_from_an_object_success() {
        assert_eq!(
            refund_transaction_id(
                br#"{"result":"SUCCESS","message":{"transactionId":88002,"refundAmount":"49.00"}}"#
            )
            .as_deref(),
            Some("88002")
        );
        assert_eq!(
            refund_transaction_id(br#"{"result":"SUCCESS","message":"Refund processed"}"#),
            None
        );
        assert_eq!(
            refund_transaction_id(br#"{"result":"ERROR","message":{"transactionId":1}}"#),
            None
        );
    }

    #[test]
    fn order_recency_orders_by_creation_then_actual_id() {
        let row = |created: &str, actual: Value| serde_json::json!({"dateCreated": created, "actualOrderId": actual});
        let a = order_recency(&row("2026-03-02 10:15:00", 49835.into()));
        let b = order_recency(&row("2026-03-02 10:15:00", "49836".into()));
        let c = order_recency(&row("2026-03-03 00:00:01", 1.into()));
        assert!(a < b && b < c);
        assert_eq!(order_recency(&serde_json::json!({})), (String::new(), 0));
    }
}
