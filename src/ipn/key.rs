//! The business key: the idempotency key under which an IPN is stored once (SPEC §3). Knows
//! the Digistore24 field names that identify an event; knows nothing about the store that
//! enforces uniqueness (it only needs a short, stable string).
//!
//! The same IPN delivered twice (a retry, a support re-send, a re-send signed with the
//! upper-case convention) must get the same key; two different IPNs must not. Format, ASCII
//! only, always under 200 bytes:
//!
//! | IPN | key |
//! | --- | --- |
//! | money event (payment, refund, chargeback) with `order_id` | `EVENT/o:ORDER_ID[/i:ORDER_ITEM_ID \| /p:PRODUCT_ID][/t:TRANSACTION_ID]` |
//! | other order event with `order_id` | the same, then `/s:REBILL_STOP_NOTED_AT` or `/d:SHA256` |
//! | `eticket` with `eticket_id` | `eticket/e:ETICKET_ID[/a:ACTION]` |
//! | anything else | `EVENT/h:SHA256` |
//! | a structured key over 160 bytes | `EVENT/x:SHA256` (hash of the structured key) |
//!
//! e.g. `on_payment/o:K7Q2M9XA/i:40118822/t:51840233`, `connection_test/h:3b1f…` (64 hex).
//!
//! - `EVENT` is the `event` value (the canonical spelling for known kinds, `-` when absent),
//!   cut to 48 bytes in the hashed forms.
//! - The item part is essential: the items of one order (main product and add-ons, or
//!   upsells) arrive as separate IPNs sharing `order_id` and probably `transaction_id`. It is
//!   `order_item_id`, else `product_id`; the tags `i:`/`p:` keep the two apart. A part whose
//!   field is absent or empty is left out; the tags keep the key unambiguous.
//! - Every value is escaped: bytes outside `[A-Za-z0-9._-]` become `%XX`, so a value cannot
//!   forge a separator and the key is ASCII.
//! - The `h:` digest covers the canonical signed fields: the last value per (lower-case) name, empty values
//!   and `sha_sign`/`SHASIGN` left out, sorted by name, each name and value length-prefixed
//!   (`len:bytes`), hashed with SHA-256. It does not depend on the signature or its key
//!   convention, so every re-send of a connection test, affiliation, custom form or unknown
//!   event dedupes.
//! - **Non-money order events** (rebilling cancelled / resumed, missed or denied payment, end
//!   of the paid period) have no transaction of their own: they carry the last payment's
//!   `transaction_id`, so cancelled → resumed → cancelled again would otherwise get one key
//!   and the second cancellation would be dropped as a duplicate. Their key adds what makes
//!   the event new: `/s:` + `rebill_stop_noted_at` (when rebilling was stopped) where the
//!   IPN has it, else `/d:` + the digest of the signed fields (as for `h:` above). A
//!   byte-identical resend by Digistore24 has the same fields, so it stays a duplicate. Money
//!   events (payment, refund, chargeback) have their own `transaction_id`; their keys are
//!   exactly what earlier versions stored, so a resend after an upgrade is still a duplicate.
//!   Keys that earlier versions stored for non-money events do not match the new ones: a
//!   resend of such an old event is stored (and routed) once more. Known limit: two events
//!   without `rebill_stop_noted_at` whose signed fields are all equal (a second "rebilling
//!   resumed" that changed nothing Digistore24 reports) still share a key.

use super::signature::SIGNATURE_FIELDS;
use crate::domain::{EventKind, IpnEvent, OrderEvent};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// Longest structured key kept readable; longer ones are hashed (`x:`).
const MAX_STRUCTURED_KEY_BYTES: usize = 160;
/// Longest event part in the hashed forms.
const MAX_EVENT_PART_BYTES: usize = 48;

/// The idempotency key of `event`. See the module docs for the format.
pub fn business_key(event: &IpnEvent) -> String {
    let name = event_part(event);
    let structured = match &event.kind {
        EventKind::Order(order_event) => event.order_id().map(|order_id| {
            let mut key = format!("{name}/o:{}", escape(order_id));
            if let Some(item) = event.get("order_item_id") {
                key.push_str("/i:");
                key.push_str(&escape(item));
            } else if let Some(product) = event.get("product_id") {
                key.push_str("/p:");
                key.push_str(&escape(product));
            }
            if let Some(transaction) = event.get("transaction_id") {
                key.push_str("/t:");
                key.push_str(&escape(transaction));
            }
            if !is_money_event(*order_event) {
                match event.get("rebill_stop_noted_at") {
                    Some(noted_at) => {
                        key.push_str("/s:");
                        key.push_str(&escape(noted_at));
                    }
                    None => {
                        key.push_str("/d:");
                        key.push_str(&fields_digest(event));
                    }
                }
            }
            key
        }),
        EventKind::Eticket => event.get("eticket_id").map(|eticket_id| {
            let mut key = format!("{name}/e:{}", escape(eticket_id));
            if let Some(action) = event.get("action") {
                key.push_str("/a:");
                key.push_str(&escape(action));
            }
            key
        }),
        _ => None,
    };
    let short_name = name.get(..MAX_EVENT_PART_BYTES).unwrap_or(&name);
    match structured {
        Some(key) if key.len() <= MAX_STRUCTURED_KEY_BYTES => key,
        Some(key) => format!("{short_name}/x:{}", sha256_hex(key.as_bytes())),
        None => format!("{short_name}/h:{}", fields_digest(event)),
    }
}

/// Whether the event moves money and so carries a transaction of its own.
fn is_money_event(event: OrderEvent) -> bool {
    matches!(
        event,
        OrderEvent::Payment | OrderEvent::Refund | OrderEvent::Chargeback
    )
}

/// The escaped event name, `-` when there is none.
fn event_part(event: &IpnEvent) -> String {
    match event.kind.ipn_name() {
        "" => "-".to_owned(),
        name => escape(name),
    }
}

/// Bytes outside `[A-Za-z0-9._-]` as `%XX` (upper-case hex); the result is ASCII.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-') {
            out.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// SHA-256 (lower-case hex) of the canonical signed fields.
fn fields_digest(event: &IpnEvent) -> String {
    let mut hasher = Sha256::new();
    for (name, value) in event.fields() {
        // Names are lower case in the event (`SHASIGN` is `shasign` there).
        if value.is_empty()
            || SIGNATURE_FIELDS
                .iter()
                .any(|s| s.eq_ignore_ascii_case(name))
        {
            continue;
        }
        for part in [name, value] {
            hasher.update(part.len().to_string().as_bytes());
            hasher.update(b":");
            hasher.update(part.as_bytes());
        }
    }
    hex::encode(hasher.finalize())
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
