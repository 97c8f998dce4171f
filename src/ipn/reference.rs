//! The simple formulation of decoding, signing and receiving that the borrowed, sorted code
//! of issue 13 replaced: owned `String`s for every pair, a `BTreeMap` per convention and
//! passphrase, every hash computed. Tests only: the property tests in `tests.rs` check that
//! the fast code gives the same answer (pairs, error message, signature, matched convention,
//! event and key) on arbitrary bodies.

use super::{IpnError, KeyCase, ReceivedIpn, business_key, form::loggable_name};
use crate::domain::IpnEvent;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha512};
use std::collections::BTreeMap;

const SIGNATURE_FIELDS: [&str; 2] = ["sha_sign", "SHASIGN"];

/// Decoding as described in `form`'s module docs, warnings left out.
pub(super) fn parse_form(body: &[u8]) -> Result<Vec<(String, String)>, IpnError> {
    let mut pairs = Vec::new();
    for (index, segment) in body.split(|&b| b == b'&').enumerate() {
        if segment.is_empty() {
            continue;
        }
        let (raw_name, raw_value) = match segment.iter().position(|&b| b == b'=') {
            Some(at) => (&segment[..at], &segment[at + 1..]),
            None => (segment, &[][..]),
        };
        let name = String::from_utf8(decode(raw_name)).map_err(|_| {
            IpnError::Malformed(format!(
                "the name of field #{} is not valid UTF-8 after percent-decoding",
                index + 1
            ))
        })?;
        let value = String::from_utf8(decode(raw_value)).map_err(|_| {
            IpnError::Malformed(format!(
                "the value of field `{}` is not valid UTF-8 after percent-decoding",
                loggable_name(&name)
            ))
        })?;
        if !name.is_empty() {
            pairs.push((name, value));
        }
    }
    Ok(pairs)
}

fn decode(raw: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            ) {
                (Some(high), Some(low)) => {
                    out.push(high * 16 + low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            other => out.push(other),
        }
        i += 1;
    }
    out
}

/// The signature, by the five steps of `signature`'s module docs.
pub(super) fn sign(pairs: &[(String, String)], passphrase: &str, key_case: KeyCase) -> String {
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in pairs {
        last.insert(name.clone(), value.clone());
    }
    let mut fields: Vec<(String, String, String)> = last
        .into_iter()
        .filter(|(name, value)| !value.is_empty() && !SIGNATURE_FIELDS.contains(&name.as_str()))
        .map(|(name, value)| {
            let signed_name = match key_case {
                KeyCase::Original => name.clone(),
                KeyCase::Upper => name.to_ascii_uppercase(),
            };
            (signed_name, name, value)
        })
        .collect();
    fields.sort();
    let mut text = String::new();
    for (signed_name, _, value) in fields {
        text.push_str(&signed_name);
        text.push('=');
        text.push_str(&value);
        text.push_str(passphrase);
    }
    hex::encode_upper(Sha512::digest(text.as_bytes()))
}

/// Every non-empty passphrase under both conventions; the first match in that order wins.
pub(super) fn verify(
    pairs: &[(String, String)],
    passphrases: &[SecretString],
) -> Result<KeyCase, IpnError> {
    let received = SIGNATURE_FIELDS
        .iter()
        .find_map(|wanted| {
            pairs
                .iter()
                .rev()
                .find(|(name, _)| name == wanted)
                .map(|(_, value)| value.clone())
                .filter(|value| !value.is_empty())
        })
        .ok_or(IpnError::MissingSignature)?
        .to_ascii_uppercase();
    let mut usable = false;
    let mut matched = None;
    for passphrase in passphrases {
        let passphrase = passphrase.expose_secret();
        if passphrase.is_empty() {
            continue;
        }
        usable = true;
        for key_case in [KeyCase::Original, KeyCase::Upper] {
            if matched.is_none() && sign(pairs, passphrase, key_case) == received {
                matched = Some(key_case);
            }
        }
    }
    if !usable {
        return Err(IpnError::BadSignature);
    }
    matched.ok_or(IpnError::BadSignature)
}

/// Decode, verify, refuse names equal but for case, build the event and its key.
pub(super) fn receive(body: &[u8], passphrases: &[SecretString]) -> Result<ReceivedIpn, IpnError> {
    let pairs = parse_form(body)?;
    let key_case = verify(&pairs, passphrases)?;
    let mut fields = BTreeMap::new();
    for (name, value) in &pairs {
        fields.insert(name.clone(), value.clone());
    }
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for name in fields.keys() {
        if let Some(first) = seen.insert(name.to_ascii_lowercase(), name.clone()) {
            return Err(IpnError::Malformed(format!(
                "the fields `{}` and `{}` differ only in the case of their names",
                loggable_name(&first),
                loggable_name(name)
            )));
        }
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
