//! Digistore24's `sha_sign`: computing it ([`sign`]) and checking a received one
//! ([`verify`]). Knows the algorithm and the passphrases it is handed; knows nothing about
//! where they come from, HTTP or the store.
//!
//! The algorithm is Digistore24's `sha_sign.php`, step by step (reference §2):
//! 1. Take the fields as PHP's `$_POST` holds them: for a repeated name the **last** value.
//! 2. Remove `sha_sign` and `SHASIGN` (exact names).
//! 3. Skip every field whose value is empty (after step 1: `a=1&a=` skips `a`).
//! 4. Sort by name, byte-wise (PHP `SORT_STRING`). With the upper-case convention the names
//!    are upper-cased first (ASCII only, like PHP 8's `strtoupper`), sorted and emitted upper
//!    case; two names equal after upper-casing keep the order of their original names (PHP's
//!    `array_multisort` breaks ties on the second array).
//! 5. Concatenate `NAME=value` + passphrase for every field (no separators), hash with SHA-512,
//!    write upper-case hex (128 characters). No HTML-entity decoding (what reproduces
//!    Digistore24's published vectors).
//!
//! The passphrase is fed to the hasher piece by piece, so no string holding it is built.
//!
//! [`verify`] takes the received signature from `sha_sign` (last value; `SHASIGN` if
//! `sha_sign` is absent or empty, as both names are excluded from signing anyway), upper-cases
//! it and compares it in constant time with the expected value for **every** non-empty
//! passphrase under **both** conventions, without stopping early. It fails closed: no
//! signature → [`IpnError::MissingSignature`]; no usable passphrase or no match →
//! [`IpnError::BadSignature`]. Errors never carry a passphrase or the expected value.

use super::{IpnError, KeyCase};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha512};
use std::borrow::Cow;
use std::collections::BTreeMap;
use subtle::ConstantTimeEq;

/// Field names never signed.
pub(super) const SIGNATURE_FIELDS: [&str; 2] = ["sha_sign", "SHASIGN"];

/// The upper-case hex SHA-512 signature of `pairs` under `passphrase` and `key_case`.
///
/// Unlike PHP, an empty passphrase is not refused here (the function is total); [`verify`]
/// never uses one.
pub fn sign(pairs: &[(String, String)], passphrase: &str, key_case: KeyCase) -> String {
    hash_fields(&signed_fields(pairs, key_case), passphrase)
}

/// Step 5 over fields already selected and ordered by [`signed_fields`].
fn hash_fields(fields: &[(Cow<'_, str>, &str)], passphrase: &str) -> String {
    let mut hasher = Sha512::new();
    for (name, value) in fields {
        hasher.update(name.as_bytes());
        hasher.update(b"=");
        hasher.update(value.as_bytes());
        hasher.update(passphrase.as_bytes());
    }
    hex::encode_upper(hasher.finalize())
}

pub fn verify(
    pairs: &[(String, String)],
    passphrases: &[SecretString],
) -> Result<KeyCase, IpnError> {
    let received = received_signature(pairs)
        .ok_or(IpnError::MissingSignature)?
        .to_ascii_uppercase();

    // Steps 1–4 do not depend on the passphrase: select and order the fields once per
    // convention, then hash them with every passphrase.
    let conventions = [KeyCase::Original, KeyCase::Upper].map(|key_case| {
        let fields = signed_fields(pairs, key_case);
        (key_case, fields)
    });
    let mut usable = 0usize;
    let mut matched: Option<KeyCase> = None;
    for passphrase in passphrases {
        let passphrase = passphrase.expose_secret();
        if passphrase.is_empty() {
            continue;
        }
        usable += 1;
        for (key_case, fields) in &conventions {
            let key_case = *key_case;
            let expected = hash_fields(fields, passphrase);
            let equal: bool = expected.as_bytes().ct_eq(received.as_bytes()).into();
            if equal && matched.is_none() {
                matched = Some(key_case);
            }
        }
    }
    if usable == 0 {
        tracing::error!("no usable IPN passphrase configured; every IPN is refused");
        return Err(IpnError::BadSignature);
    }
    matched.ok_or(IpnError::BadSignature)
}

/// The signature as PHP's `$_POST['sha_sign']` holds it (last value), else `SHASIGN`.
fn received_signature(pairs: &[(String, String)]) -> Option<&str> {
    SIGNATURE_FIELDS.iter().find_map(|wanted| {
        pairs
            .iter()
            .rev()
            .find(|(name, _)| name == wanted)
            .map(|(_, value)| value.as_str())
            .filter(|value| !value.is_empty())
    })
}

/// Steps 1–4 of the algorithm: the `(name, value)` pairs to hash, in order.
fn signed_fields(pairs: &[(String, String)], key_case: KeyCase) -> Vec<(Cow<'_, str>, &str)> {
    let mut last: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, value) in pairs {
        last.insert(name, value);
    }
    let fields = last
        .into_iter()
        .filter(|(name, value)| !value.is_empty() && !SIGNATURE_FIELDS.contains(name));
    match key_case {
        // A BTreeMap<&str, _> iterates in byte order already.
        KeyCase::Original => fields
            .map(|(name, value)| (Cow::Borrowed(name), value))
            .collect(),
        KeyCase::Upper => {
            let mut upper: Vec<(String, &str, &str)> = fields
                .map(|(name, value)| (name.to_ascii_uppercase(), name, value))
                .collect();
            upper.sort_by(|a, b| (a.0.as_str(), a.1).cmp(&(b.0.as_str(), b.1)));
            upper
                .into_iter()
                .map(|(name, _, value)| (Cow::Owned(name), value))
                .collect()
        }
    }
}
