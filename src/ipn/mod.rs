//! Digistore24 IPN intake: raw form bytes → verified [`IpnEvent`] plus its business key.
//!
//! This module owns everything that is specific to Digistore24's IPN wire format: decoding
//! the `application/x-www-form-urlencoded` body ([`form`]), checking the `sha_sign` signature
//! ([`signature`]) and deriving the idempotency key that the store dedupes on ([`key`]). It is
//! pure: no I/O, no async, no clock. It must not know about HTTP, the store, the config file
//! or any CRM; the server hands it the body bytes and the source's passphrases and maps an
//! [`IpnError`] to a response with [`IpnError::http_status`] and [`IpnError::reason`].
//!
//! Design decisions (details in each submodule):
//! - **Strict where it matters, PHP-compatible elsewhere.** Digistore24's reference receiver
//!   is PHP reading `$_POST`, and the signature is defined over what `$_POST` holds. So the
//!   decoder follows PHP (`+` is a space, `%XX` decoded once, an invalid `%` escape kept
//!   literally, a pair with an empty name dropped, the last of duplicate names wins) but
//!   refuses anything that is not valid UTF-8 after decoding, because a lossy replacement
//!   would make us sign and store something Digistore24 never sent.
//! - **Duplicates and `name[...]` keys** are kept as plain, ordered pairs (the raw picture is
//!   preserved in [`ReceivedIpn::pairs`]); the event map and the signature use the last value,
//!   as PHP would. Both are logged at WARN with the key name only, never a value.
//! - **Fail closed, constant time.** A missing signature, no usable passphrase, or no match
//!   under any passphrase and either key convention is a refusal. The comparison uses
//!   `subtle` so the response time does not reveal how many leading characters of a forged
//!   signature were right. Passphrases never reach a log line or an error.
//! - **Field names mean the same in any case.** Under the upper-case convention the names are
//!   upper-cased before hashing, so their case is not signed: `transaction_id` renamed
//!   `TRANSACTION_ID` or `Transaction_Id` still verifies (issue 9, defect 1: each variant used
//!   to become a new order, as the event, the business key and the rules read exact names).
//!   So the [`IpnEvent`] keeps every name in ASCII lower case and looks names up without
//!   regard to case, whichever convention matched. Doing it for both conventions (rather than
//!   only when the upper-case one matched) keeps `replay`, which has no passphrase and so
//!   cannot tell the conventions apart, reading a stored body exactly as its receipt did;
//!   under the original-case convention the names are signed, so nothing is lost. Two names
//!   that differ only in case make the meaning ambiguous and are refused as malformed (400);
//!   Digistore24 does not send them. The raw pairs (and the stored body) keep the names as
//!   sent.
//! - **Cheap on the request path** (issue 13): the body is decoded once into pairs that
//!   borrow from it where nothing needed decoding, sorted once into a view of the last value
//!   per name ([`fields`]) that serves the signature, the duplicate warning and the event
//!   alike, and that the event copies into one buffer with a sorted index (two allocations,
//!   round 2 of issue 13); the server calls [`accept`], which builds no copy of the raw pairs
//!   (only [`receive`], for tools and tests, does). The simple formulation this replaced is kept
//!   in `reference.rs`, and property tests hold the two to the same answers.
//! - **One pass for a plain body** (issue 13, round 3; [`plain`]): what Digistore24 sends
//!   (UTF-8, valid escapes, every name once, signed by the first passphrase as sent) is
//!   decoded straight into the event's buffer and hashed in place. Any other body, and any
//!   refusal, goes the general way above; property tests hold the plain path to the general
//!   path's answer.
//! - **Business key** (see [`key`]): `event/o:ORDER/i:ITEM/t:TRANSACTION` for order events
//!   (followed by `/s:REBILL_STOP_NOTED_AT` or `/d:SHA256` for those without a transaction of
//!   their own, so a repeated cancellation is a new event), `eticket/e:ID/a:ACTION` for
//!   e-tickets, `event/h:SHA256` over the canonical signed pairs otherwise. Always shorter
//!   than 200 bytes, ASCII only.

mod fields;
mod form;
mod key;
mod plain;
mod signature;

#[cfg(test)]
mod reference;
#[cfg(test)]
mod tests;

pub use form::parse_form;
pub use key::business_key;
pub use signature::{sign, verify};

use crate::domain::IpnEvent;
use fields::Fields;
use std::collections::BTreeMap;

/// Which signing convention a verified IPN matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyCase {
    /// Keys as sent (what live Digistore24 IPNs use).
    Original,
    /// Keys upper-cased (ASCII) before sorting and hashing (`convert_keys_to_uppercase`).
    Upper,
}

impl KeyCase {
    /// Short stable label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyCase::Original => "original",
            KeyCase::Upper => "upper",
        }
    }
}

/// Why an IPN was refused. No variant carries a passphrase or a field value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpnError {
    /// The body is not valid form data (e.g. not UTF-8 after percent-decoding); the message
    /// says what and names the field when it can. Answer 400.
    #[error("malformed form body: {0}")]
    Malformed(String),
    /// No (or an empty) `sha_sign` field. Answer 403.
    #[error("missing sha_sign")]
    MissingSignature,
    /// The signature matches no configured passphrase, or none is configured. Answer 403.
    #[error("invalid sha_sign")]
    BadSignature,
}

impl IpnError {
    /// The HTTP status the server answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            IpnError::Malformed(_) => 400,
            IpnError::MissingSignature | IpnError::BadSignature => 403,
        }
    }

    /// Short plain-text reason for the response body (shown in Digistore24's IPN report).
    pub fn reason(&self) -> String {
        self.to_string()
    }

    /// Short stable label for metrics (`ipn_rejected_total{reason=…}`) and logs.
    pub fn label(&self) -> &'static str {
        match self {
            IpnError::Malformed(_) => "malformed",
            IpnError::MissingSignature => "missing_signature",
            IpnError::BadSignature => "bad_signature",
        }
    }
}

/// A verified IPN, ready to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedIpn {
    /// Every decoded pair in body order, duplicates and `sha_sign` included.
    pub pairs: Vec<(String, String)>,
    /// The fields as PHP's `$_POST` would hold them (last value wins).
    pub event: IpnEvent,
    /// The idempotency key (see [`business_key`]).
    pub business_key: String,
    /// The signing convention that matched.
    pub key_case: KeyCase,
}

/// A verified IPN without its raw pairs: what the server stores (it keeps the body itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedIpn {
    /// The fields as PHP's `$_POST` would hold them (last value wins).
    pub event: IpnEvent,
    /// The idempotency key (see [`business_key`]).
    pub business_key: String,
    /// The signing convention that matched.
    pub key_case: KeyCase,
}

/// Decode, verify, and build the event and its business key.
pub fn receive(
    body: &[u8],
    passphrases: &[secrecy::SecretString],
) -> Result<ReceivedIpn, IpnError> {
    let pairs = form::parse_pairs(body)?;
    let AcceptedIpn {
        event,
        business_key,
        key_case,
    } = accept_pairs(&pairs, passphrases)?;
    Ok(ReceivedIpn {
        pairs: pairs
            .into_iter()
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect(),
        event,
        business_key,
        key_case,
    })
}

/// [`receive`] without the copy of every decoded pair: the same checks, warnings, event
/// and key, for the request path (issue 13). A plain body takes the one-pass path
/// ([`plain`]); any other the general one.
pub fn accept(body: &[u8], passphrases: &[secrecy::SecretString]) -> Result<AcceptedIpn, IpnError> {
    if let Some(accepted) = plain::accept(body, passphrases) {
        return Ok(accepted);
    }
    accept_pairs(&form::parse_pairs(body)?, passphrases)
}

/// Everything after decoding, over one sorted view of the decoded (mostly borrowed) pairs.
fn accept_pairs(
    pairs: &[form::Pair<'_>],
    passphrases: &[secrecy::SecretString],
) -> Result<AcceptedIpn, IpnError> {
    let fields = Fields::new(
        pairs
            .iter()
            .map(|(name, value)| (name.as_ref(), value.as_ref())),
        true,
    );
    let key_case = signature::verify_fields(&fields, passphrases)?;
    refuse_names_equal_but_for_case(&fields)?;
    // Sorted and unique already: the event copies it into one buffer (two allocations).
    let event = IpnEvent::from_fields(fields.all().iter().copied());
    let business_key = business_key(&event);
    Ok(AcceptedIpn {
        event,
        business_key,
        key_case,
    })
}

/// Refuses a body with two field names that differ only in ASCII case (`transaction_id` and
/// `TRANSACTION_ID`): the event reads names without regard to case, so which of the two it
/// meant would be a guess, and under the upper-case convention both are signed as one name.
/// Digistore24 never sends such twins; a body that has them was altered after signing.
fn refuse_names_equal_but_for_case(fields: &Fields<'_>) -> Result<(), IpnError> {
    let names = || fields.all().iter().map(|(name, _)| *name);
    if !names().any(|name| name.bytes().any(|b| b.is_ascii_uppercase())) {
        return Ok(());
    }
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for name in names() {
        if let Some(first) = seen.insert(name.to_ascii_lowercase(), name) {
            return Err(IpnError::Malformed(format!(
                "the fields `{}` and `{}` differ only in the case of their names",
                form::loggable_name(first),
                form::loggable_name(name)
            )));
        }
    }
    Ok(())
}
