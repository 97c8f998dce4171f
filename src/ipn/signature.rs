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
//! `sha_sign` is absent or empty, as both names are excluded from signing anyway), decodes
//! its hex (either case) and compares the 64 bytes in constant time with the expected digest
//! for each non-empty passphrase under the original, then the upper-case convention. It
//! fails closed: no signature → [`IpnError::MissingSignature`]; no usable passphrase or no
//! match → [`IpnError::BadSignature`]. Errors never carry a passphrase or the expected value.
//!
//! Speed (issue 13): steps 1–4 run once per convention over a borrowed, sorted view of the
//! fields ([`super::fields`]): no map, no copied name, the upper-case names written once;
//! each passphrase then costs one SHA-512 pass over the prepared text. **The search stops at
//! the first match**, so a genuine IPN from Digistore24 (original convention, first
//! passphrase) costs one hash instead of two per passphrase. That leaks nothing: every
//! comparison is still constant-time, a refused signature still costs every hash, and the
//! time of an accepted one only tells which passphrase and convention matched to a sender
//! who already holds a valid signature (the answer `OK` tells everyone it matched).

use super::fields::Fields;
use super::{IpnError, KeyCase};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

/// Field names never signed.
pub(super) const SIGNATURE_FIELDS: [&str; 2] = ["sha_sign", "SHASIGN"];

/// Bytes of a SHA-512 digest.
const DIGEST_BYTES: usize = 64;

/// The upper-case hex SHA-512 signature of `pairs` under `passphrase` and `key_case`.
///
/// Unlike PHP, an empty passphrase is not refused here (the function is total); [`verify`]
/// never uses one.
pub fn sign(pairs: &[(String, String)], passphrase: &str, key_case: KeyCase) -> String {
    let fields = Fields::new(borrowed(pairs), false);
    hex::encode_upper(Signed::new(&fields, key_case).digest(passphrase.as_bytes()))
}

/// The signing convention `pairs` (a decoded body) match under one of `passphrases`.
pub fn verify(
    pairs: &[(String, String)],
    passphrases: &[SecretString],
) -> Result<KeyCase, IpnError> {
    verify_fields(&Fields::new(borrowed(pairs), false), passphrases)
}

fn borrowed(pairs: &[(String, String)]) -> impl Iterator<Item = (&str, &str)> {
    pairs
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
}

/// [`verify`] over the sorted view of the fields (see the module docs).
pub(super) fn verify_fields(
    fields: &Fields<'_>,
    passphrases: &[SecretString],
) -> Result<KeyCase, IpnError> {
    let received = received_signature(fields).ok_or(IpnError::MissingSignature)?;
    // Hex of any case; anything that is not 128 hex digits matches nothing.
    let mut wanted = [0u8; DIGEST_BYTES];
    let well_formed = hex::decode_to_slice(received, &mut wanted).is_ok();

    // Steps 1–4 do not depend on the passphrase: each convention's text is built once, the
    // upper-case one only when the original one did not match.
    let mut texts: [Option<Signed>; 2] = [None, None];
    let mut usable = 0usize;
    let mut matched: Option<KeyCase> = None;
    for passphrase in passphrases {
        let passphrase = passphrase.expose_secret();
        if passphrase.is_empty() {
            continue;
        }
        usable += 1;
        if matched.is_some() {
            continue;
        }
        for (text, key_case) in texts.iter_mut().zip([KeyCase::Original, KeyCase::Upper]) {
            let text = text.get_or_insert_with(|| Signed::new(fields, key_case));
            let expected = text.digest(passphrase.as_bytes());
            let equal: bool = expected.ct_eq(&wanted).into();
            if equal && well_formed {
                matched = Some(key_case);
                break;
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
fn received_signature<'a>(fields: &Fields<'a>) -> Option<&'a str> {
    SIGNATURE_FIELDS
        .iter()
        .find_map(|wanted| fields.get(wanted).filter(|value| !value.is_empty()))
}

/// Steps 1–4 of the algorithm for one convention: the signed `NAME=value` pieces in order,
/// written once into one buffer, so that each passphrase costs one pass of the hash.
struct Signed {
    /// Every signed field's `NAME=value`, concatenated.
    text: Vec<u8>,
    /// Where each field's piece ends in `text`.
    ends: Vec<usize>,
}

impl Signed {
    fn new(fields: &Fields<'_>, key_case: KeyCase) -> Self {
        let mut signed: Vec<(&str, &str)> = fields
            .all()
            .iter()
            .copied()
            .filter(|(name, value)| !value.is_empty() && !SIGNATURE_FIELDS.contains(name))
            .collect();
        if key_case == KeyCase::Upper {
            // By the upper-cased name, ties (names equal but for case) by the original one.
            signed.sort_by(|a, b| upper_bytes(a.0).cmp(upper_bytes(b.0)).then(a.0.cmp(b.0)));
        }
        let mut text = Vec::with_capacity(
            signed
                .iter()
                .map(|(name, value)| name.len() + 1 + value.len())
                .sum(),
        );
        let mut ends = Vec::with_capacity(signed.len());
        for (name, value) in signed {
            match key_case {
                KeyCase::Original => text.extend_from_slice(name.as_bytes()),
                KeyCase::Upper => text.extend(upper_bytes(name)),
            }
            text.push(b'=');
            text.extend_from_slice(value.as_bytes());
            ends.push(text.len());
        }
        Signed { text, ends }
    }

    /// Step 5: SHA-512 over every piece followed by the passphrase. The passphrase is fed
    /// to the hasher piece by piece; no buffer ever holds it.
    fn digest(&self, passphrase: &[u8]) -> [u8; DIGEST_BYTES] {
        let mut hasher = Sha512::new();
        let mut start = 0;
        for &end in &self.ends {
            hasher.update(self.text.get(start..end).unwrap_or_default());
            hasher.update(passphrase);
            start = end;
        }
        let mut out = [0u8; DIGEST_BYTES];
        out.copy_from_slice(&hasher.finalize());
        out
    }
}

/// The bytes of `name` upper-cased (ASCII only, like PHP 8's `strtoupper`).
fn upper_bytes(name: &str) -> impl Iterator<Item = u8> + '_ {
    name.bytes().map(|b| b.to_ascii_uppercase())
}
