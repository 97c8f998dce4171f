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
//! - **Business key** (see [`key`]): `event/o:ORDER/i:ITEM/t:TRANSACTION` for order events,
//!   `eticket/e:ID/a:ACTION` for e-tickets, `event/h:SHA256` over the canonical signed pairs
//!   otherwise. Always shorter than 200 bytes, ASCII only.

mod form;
mod key;
mod signature;

#[cfg(test)]
mod tests;

pub use form::parse_form;
pub use key::business_key;
pub use signature::{sign, verify};

use crate::domain::IpnEvent;
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

/// Decode, verify, and build the event and its business key.
pub fn receive(
    body: &[u8],
    passphrases: &[secrecy::SecretString],
) -> Result<ReceivedIpn, IpnError> {
    let pairs = parse_form(body)?;
    let key_case = verify(&pairs, passphrases)?;
    let mut fields = BTreeMap::new();
    for (name, value) in &pairs {
        fields.insert(name.clone(), value.clone());
    }
    let event = IpnEvent::new(fields);
    let business_key = business_key(&event);
    Ok(ReceivedIpn {
        pairs,
        event,
        business_key,
        key_case,
    })
}
