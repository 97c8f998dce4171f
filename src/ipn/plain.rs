//! The receipt's one-pass path for a plain body: the kind Digistore24 sends (issue 13,
//! round 3). Knows the decoding rules of [`super::form`], the signature of
//! [`super::signature`] and the event's layout; answers only when it is sure to give what the
//! general path ([`super::accept_pairs`]) would, and otherwise leaves the body to it.
//!
//! A body is plain when it is UTF-8, every `%` escape in it is valid and decodes to UTF-8,
//! every field name is non-empty, holds no `[` and is sent once, no two names differ only in
//! ASCII case, a non-empty `sha_sign` is among the fields, and the first non-empty passphrase
//! signs it under the original convention. Names may hold upper case: Digistore24's own
//! capture of a real order sends `placeholder_DESCRIPTION` and `placeholder_TITLE`. Every
//! fixture but the one signed under the upper-case convention is plain. For such a body the
//! general path warns about nothing, refuses nothing and tries that passphrase and
//! convention first, so this path's answer is its answer. For any other body (and any
//! refusal) [`accept`] says `None`, and the general path decides, with its warnings and
//! errors.
//!
//! What it saves: the general path decodes into pairs, sorts a view of them, copies the
//! signed pieces into a text to hash and copies every field once more into the event's
//! buffer. Here the body is copied once into the buffer the event keeps, where most pairs
//! already read `name=value` and are used in place; the few that need decoding are decoded
//! to its end (see [`decode`]). The index of those pieces is sorted by the names as sent,
//! for the signature, trying first the order the previous body sorted into (see
//! [`sort_by_name`]); the hash reads the pieces in place (`name=value`, then the passphrase,
//! fed to the hasher: no buffer holds the passphrase). Then the names with upper case
//! (rare) are lowered in the buffer and moved to their place in the index, which the event
//! keeps.
//!
//! Decided:
//! - **One cache per thread** (`LAST_ORDER`): the order the previous body's fields sorted
//!   into. It is a guess that is checked, never trusted (see [`sort_by_name`]), so it cannot
//!   change an answer; it holds one `u32` per field. Measured (callgrind, `cargo bench --bench
//!   ingest_http -- --only accept`): the sort of a Digistore24 body costs ~47,000
//!   instructions, the check of the previous order ~9,000.
//! - **The first usable passphrase and the original convention only.** That is what the
//!   general path tries first, so a match here is the match it would find; a body signed
//!   otherwise (a second passphrase during a rotation, the upper-case convention) costs the
//!   one hash here before the general path, which is rare.

use super::fields::prefix;
use super::form::hex_digit;
use super::signature::SIGNATURE_FIELDS;
use super::{AcceptedIpn, KeyCase, business_key};
use crate::domain::{IpnEvent, Span};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha512};
use std::cell::RefCell;
use std::cmp::Ordering;
use subtle::ConstantTimeEq;

/// The signature field this path reads. A body that signs with `SHASIGN` only has no
/// `sha_sign` and goes to the general path; one that has both reads `sha_sign`, as there.
const SIGNATURE: &str = "sha_sign";

/// The accepted IPN when `body` is plain (see the module docs), else `None`.
pub(super) fn accept(body: &[u8], passphrases: &[SecretString]) -> Option<AcceptedIpn> {
    let passphrase = passphrases
        .iter()
        .map(|p| p.expose_secret())
        .find(|p| !p.is_empty())?;
    let Decoded { text, slots } = decode(body)?;
    let slots = sort_by_name(&text, &slots)?;
    let name = |slot: &Slot| text.get(slot.name()).unwrap_or("");
    let signature = slots
        .binary_search_by(|slot| name(slot).cmp(SIGNATURE))
        .ok()
        .and_then(|at| slots.get(at))
        .and_then(|slot| text.get(slot.value()))
        .filter(|value| !value.is_empty())?;
    let mut wanted = [0u8; 64];
    hex::decode_to_slice(signature, &mut wanted).ok()?;

    let mut hasher = Sha512::new();
    for slot in &slots {
        if slot.value().is_empty() || SIGNATURE_FIELDS.contains(&name(slot)) {
            continue;
        }
        hasher.update(text.get(slot.piece())?);
        hasher.update(passphrase.as_bytes());
    }
    let matched: bool = hasher.finalize().as_slice().ct_eq(&wanted).into();
    if !matched {
        return None;
    }
    let (text, slots) = lower_names(text, slots)?;
    let event = IpnEvent::from_spans(text, slots.iter().map(Slot::span).collect());
    let business_key = business_key(&event);
    Some(AcceptedIpn {
        event,
        business_key,
        key_case: KeyCase::Original,
    })
}

/// The event's names are lower case (see [`IpnEvent`]): each name of `slots` (sorted by
/// name, unique) that has upper case is lowered in `text` and moved to its place; `None`
/// when it then equals another name (the general path refuses such twins).
///
/// A few such names (Digistore24 sends two) are each inserted at their place; more than
/// [`FEW_UPPER`] are put back by one sort, so a signed body of thousands of upper-case
/// names costs a sort, not thousands of insertions into a long vector.
fn lower_names(mut text: String, mut slots: Vec<Slot>) -> Option<(String, Vec<Slot>)> {
    if !slots.iter().any(|slot| slot.upper) {
        return Some((text, slots));
    }
    let mut moved = Vec::new();
    slots.retain(|slot| {
        if slot.upper {
            moved.push(*slot);
        }
        !slot.upper
    });
    for slot in &mut moved {
        let name = text.get_mut(slot.name())?;
        name.make_ascii_lowercase();
        slot.prefix = prefix(name);
        slot.upper = false;
    }
    let name = |s: &Slot| text.get(s.name()).unwrap_or("");
    let order = |a: &Slot, b: &Slot| a.prefix.cmp(&b.prefix).then_with(|| name(a).cmp(name(b)));
    if moved.len() > FEW_UPPER {
        slots.extend(moved);
        slots.sort_unstable_by(order);
        let unique = slots
            .windows(2)
            .all(|pair| matches!(pair, [a, b] if order(a, b) == Ordering::Less));
        return unique.then_some((text, slots));
    }
    for slot in moved {
        match slots.binary_search_by(|other| order(other, &slot)) {
            Ok(_) => return None,
            Err(at) => slots.insert(at, slot),
        }
    }
    Some((text, slots))
}

/// Names with upper case that [`lower_names`] inserts one by one; more are sorted in.
const FEW_UPPER: usize = 8;

thread_local! {
    /// The order the last plain body's fields sorted into on this thread, as positions in
    /// body order. Digistore24 sends the fields of one kind of IPN in one order, so the next
    /// body's most likely sorts the same.
    static LAST_ORDER: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// `slots` sorted byte-wise by name (as sent); `None` when a name is repeated.
///
/// The order the previous body sorted into on this thread is tried first: when it puts
/// these names in strictly increasing order, it is their sorted order (a permutation that
/// is strictly increasing is the only sorted one, and no name repeats), found with one
/// comparison per field instead of a sort's dozen (issue 13: the sort was a tenth of the
/// receipt's instructions). Otherwise the positions are sorted, by the 16-byte prefix of
/// the name first, and kept for the next body.
fn sort_by_name(text: &str, slots: &[Slot]) -> Option<Vec<Slot>> {
    let name = |slot: &Slot| text.get(slot.name()).unwrap_or("");
    let order = |a: &Slot, b: &Slot| a.prefix.cmp(&b.prefix).then_with(|| name(a).cmp(name(b)));
    let increasing = |sorted: &[Slot]| {
        sorted
            .windows(2)
            .all(|pair| matches!(pair, [a, b] if order(a, b) == Ordering::Less))
    };
    let place = |positions: &[u32]| -> Vec<Slot> {
        // Sized up front: a `collect` of a `filter_map` grows the vector six times.
        let mut sorted = Vec::with_capacity(positions.len());
        sorted.extend(
            positions
                .iter()
                .filter_map(|&at| slots.get(usize::try_from(at).ok()?).copied()),
        );
        sorted
    };
    LAST_ORDER.with_borrow_mut(|last| {
        if last.len() == slots.len() {
            let sorted = place(last);
            if sorted.len() == slots.len() && increasing(&sorted) {
                return Some(sorted);
            }
        }
        let mut positions: Vec<u32> = (0..u32::try_from(slots.len()).ok()?).collect();
        positions.sort_unstable_by(
            |&a, &b| match (slots.get(a as usize), slots.get(b as usize)) {
                (Some(a), Some(b)) => order(a, b),
                _ => Ordering::Equal,
            },
        );
        let sorted = place(&positions);
        *last = positions;
        increasing(&sorted).then_some(sorted)
    })
}

/// One field of the decoded body: its name's sort prefix, where it lies (the name is
/// `name..name_end`, the value `value..end`, the signed piece `name=value` `name..end`), and
/// whether the name has ASCII upper case. Offsets are `u32` to keep a slot at 48 bytes: the
/// slots of Digistore24's ~150 fields stay under the 8 KiB from which the unit's
/// `mmap_threshold` maps each allocation on its own (a page fault per page, every IPN).
#[derive(Clone, Copy)]
struct Slot {
    prefix: u128,
    name: u32,
    name_end: u32,
    value: u32,
    end: u32,
    upper: bool,
}

impl Slot {
    fn name(&self) -> std::ops::Range<usize> {
        self.name as usize..self.name_end as usize
    }

    fn value(&self) -> std::ops::Range<usize> {
        self.value as usize..self.end as usize
    }

    fn piece(&self) -> std::ops::Range<usize> {
        self.name as usize..self.end as usize
    }

    fn span(&self) -> Span {
        Span {
            name: self.name as usize,
            name_end: self.name_end as usize,
            value: self.value as usize,
            end: self.end as usize,
        }
    }
}

/// The decoded body: its fields as `name=value` pieces in body order, and where each lies.
struct Decoded {
    text: String,
    slots: Vec<Slot>,
}

/// Decodes a plain body in one pass; `None` as soon as it is not plain. The rules are
/// [`super::form`]'s: pairs split at `&` (empty pieces skipped), name and value at the first
/// `=`, `+` a space, `%XX` decoded once. The `&`, `%` and `+` are found with `memchr`, as
/// there.
///
/// The text starts as a copy of the body (one copy, checked for UTF-8 once): a pair without
/// `%` or `+` is already `name=value` there and is used in place (a cut at an ASCII byte
/// never splits a character). A pair that needs decoding (a sixth of Digistore24's) is
/// decoded to the end of the text as `name=value`, each decoded piece checked alone. So the
/// text holds the raw form of those pairs and the `&`s too, which no span covers.
fn decode(body: &[u8]) -> Option<Decoded> {
    let body_text = std::str::from_utf8(body).ok()?;
    let mut text = String::with_capacity(body.len() + body.len() / 2);
    text.push_str(body_text);
    let mut slots = Vec::with_capacity(memchr::memchr_iter(b'&', body).count() + 1);
    let mut escapes = memchr::memchr2_iter(b'%', b'+', body).peekable();
    let mut scratch = Vec::new();
    let mut start = 0;
    for end in memchr::memchr_iter(b'&', body).chain(std::iter::once(body.len())) {
        let piece = start..end;
        start = end + 1;
        if piece.is_empty() {
            continue;
        }
        let equals = body
            .get(piece.clone())?
            .iter()
            .position(|&b| b == b'=')
            .map(|at| piece.start + at);
        let (name, value) = match equals {
            Some(at) => (piece.start..at, at + 1..piece.end),
            None => (piece.clone(), piece.end..piece.end),
        };
        let mut name_escaped = false;
        let mut value_escaped = false;
        while let Some(at) = escapes.next_if(|&at| at < piece.end) {
            if at < name.end {
                name_escaped = true;
            } else {
                value_escaped = true;
            }
        }
        let [name, name_end, value, end] = if name_escaped || value_escaped {
            let name_start = text.len();
            put(&mut text, body_text, name, name_escaped, &mut scratch)?;
            let name_end = text.len();
            text.push('=');
            let value_start = text.len();
            put(&mut text, body_text, value, value_escaped, &mut scratch)?;
            [name_start, name_end, value_start, text.len()]
        } else {
            [name.start, name.end, value.start, value.end]
        }
        .map(u32::try_from);
        let mut slot = Slot {
            prefix: 0,
            name: name.ok()?,
            name_end: name_end.ok()?,
            value: value.ok()?,
            end: end.ok()?,
            upper: false,
        };
        let decoded_name = text.get(slot.name())?;
        if decoded_name.is_empty() || decoded_name.contains('[') {
            return None;
        }
        slot.prefix = prefix(decoded_name);
        slot.upper = decoded_name.bytes().any(|b| b.is_ascii_uppercase());
        slots.push(slot);
    }
    Some(Decoded { text, slots })
}

/// Appends the piece `range` of the body to `text`, decoded when `escaped` (it holds a `%`
/// or `+`); `None` for an invalid escape or a decoded piece that is not UTF-8.
fn put(
    text: &mut String,
    body: &str,
    range: std::ops::Range<usize>,
    escaped: bool,
    scratch: &mut Vec<u8>,
) -> Option<()> {
    let raw = body.get(range)?;
    if !escaped {
        text.push_str(raw);
        return Some(());
    }
    scratch.clear();
    let mut rest = raw.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        rest = tail;
        match byte {
            b'+' => scratch.push(b' '),
            b'%' => match rest {
                [high, low, after @ ..] => {
                    scratch.push(hex_digit(*high)? << 4 | hex_digit(*low)?);
                    rest = after;
                }
                _ => return None,
            },
            other => scratch.push(other),
        }
    }
    text.push_str(std::str::from_utf8(scratch).ok()?);
    Some(())
}
