//! [`IpnEvent`]: a verified IPN's fields, held in one buffer with a sorted index.
//!
//! Why this shape (issue 13, round 2): the event used to be a `BTreeMap<String, String>`,
//! two `String`s per field (about 270 allocations for Digistore24's ~150 fields), and building
//! and dropping it was ~15 % of the daemon's CPU under load. Now every name and value is
//! copied once, back to back, into one `String`, and a `Vec` of offsets sorted by name
//! indexes it: two allocations per IPN whatever the number of fields. The rules only ever
//! look fields up by name ([`IpnEvent::get`], a binary search as the map's was) or walk them
//! in name order ([`IpnEvent::fields`]), so nothing else changed for them.
//!
//! Decided:
//! - Built from a map or a sorted view, the buffer is laid out in name order. At receipt
//!   (issue 13, round 3) the decoded body itself becomes the buffer, `name=value` pieces in
//!   body order, and only the index is sorted ([`IpnEvent::from_spans`]): no field is copied
//!   a second time. So `PartialEq` compares the kind and the fields, not the buffers.
//! - Names are stored in ASCII lower case (see [`IpnEvent`] for why); a name with upper case
//!   is rare (Digistore24 sends lower case), and only then does construction go through a
//!   map to fold the case, with the same rule as before.
//! - Offsets are `usize` (no conversion to fail); 32 bytes per field, one allocation.

use super::EventKind;
use std::collections::BTreeMap;
use std::fmt;

/// A verified Digistore24 IPN: its event kind and its form fields (decoded; the last value
/// wins for a repeated key, as in PHP's `$_POST`).
///
/// Field names are kept in ASCII lower case and looked up without regard to case: the case
/// of a name means nothing (the upper-case signing convention does not even sign it, see
/// `ipn`), so `Transaction_Id` is `transaction_id` and `{placeholder_DESCRIPTION}` still finds
/// `placeholder_DESCRIPTION`. Names that differ only in case are refused at receipt; should
/// a stored body hold some, a non-empty value wins over an empty one, then the name that
/// sorts last (the lower-case spelling).
#[derive(Clone)]
pub struct IpnEvent {
    pub kind: EventKind,
    /// Every field's (lower-case) name and its value. Built from a map or a sorted view,
    /// back to back in name order; built at receipt (`IpnEvent::from_spans`), the decoded
    /// body as `name=value` pieces in body order.
    text: String,
    /// One entry per field, in byte order of the names, each name once.
    index: Vec<Span>,
}

/// Where one field lies in [`IpnEvent::text`]: the name is `name..name_end`, the value
/// `value..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) name: usize,
    pub(crate) name_end: usize,
    pub(crate) value: usize,
    pub(crate) end: usize,
}

/// Two events are equal when they have the same kind and the same fields, however their
/// buffers are laid out.
impl PartialEq for IpnEvent {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.fields().eq(other.fields())
    }
}

impl Eq for IpnEvent {}

impl IpnEvent {
    /// The event of `fields` (a map: every name once, in byte order).
    pub fn new(fields: BTreeMap<String, String>) -> Self {
        Self::from_fields(fields.iter().map(|(n, v)| (n.as_str(), v.as_str())))
    }

    /// The event of `(name, value)` pairs. Cheapest (two allocations) when the names are in
    /// byte order, each once and in lower case, as a `BTreeMap`'s or the receipt's sorted
    /// view's are; otherwise the pairs go through a map first, where the last value of a
    /// repeated name wins.
    pub fn from_fields<'a, I>(fields: I) -> Self
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
        I::IntoIter: Clone,
    {
        let fields = fields.into_iter();
        let mut bytes = 0;
        let mut count = 0;
        let mut previous: Option<&str> = None;
        let mut plain = true;
        for (name, value) in fields.clone() {
            plain &= previous.is_none_or(|p| p < name) && !has_ascii_uppercase(name);
            if !plain {
                break;
            }
            previous = Some(name);
            bytes += name.len() + value.len();
            count += 1;
        }
        if plain {
            return Self::build(fields, bytes, count);
        }
        // By name (last value wins), then folded to lower case in name order.
        let by_name: BTreeMap<&str, &str> = fields.collect();
        let mut lower: BTreeMap<String, &str> = BTreeMap::new();
        for (name, value) in by_name {
            let slot = lower.entry(name.to_ascii_lowercase()).or_insert(value);
            if !value.is_empty() {
                *slot = value;
            }
        }
        let bytes = lower.iter().map(|(n, v)| n.len() + v.len()).sum();
        let count = lower.len();
        Self::build(lower.iter().map(|(n, v)| (n.as_str(), *v)), bytes, count)
    }

    /// `fields` are sorted, unique and lower case; `bytes` and `count` are their sizes.
    fn build<'a>(
        fields: impl Iterator<Item = (&'a str, &'a str)>,
        bytes: usize,
        count: usize,
    ) -> Self {
        let mut text = String::with_capacity(bytes);
        let mut index = Vec::with_capacity(count);
        for (name, value) in fields {
            let start = text.len();
            text.push_str(name);
            let middle = text.len();
            text.push_str(value);
            index.push(Span {
                name: start,
                name_end: middle,
                value: middle,
                end: text.len(),
            });
        }
        Self::from_spans(text, index)
    }

    /// The event over `text`, whose fields `index` locates: sorted byte-wise by name, each
    /// name once and in lower case (the caller's promise; the receipt's one-pass decoder
    /// checks it). The buffer may hold anything else between the fields.
    pub(crate) fn from_spans(text: String, index: Vec<Span>) -> Self {
        let mut event = IpnEvent {
            kind: EventKind::Unknown(String::new()),
            text,
            index,
        };
        debug_assert!(
            event
                .index
                .windows(2)
                .all(|w| matches!(w, [a, b] if event.name_of(a) < event.name_of(b)))
        );
        event.kind = EventKind::from_ipn(event.value("event").unwrap_or(""));
        event
    }

    /// The field's value, `None` when absent **or empty** (Digistore24 sends many empty
    /// fields, and an empty field means "not given" everywhere in this program). The name is
    /// matched without regard to ASCII case.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.value(key).filter(|v| !v.is_empty())
    }

    /// The field's value as sent, empty or not; `None` only when the field is absent. The
    /// name is matched without regard to ASCII case.
    pub fn value(&self, key: &str) -> Option<&str> {
        let found = if has_ascii_uppercase(key) {
            let lower = key.bytes().map(|b| b.to_ascii_lowercase());
            self.index
                .binary_search_by(|e| self.name_of(e).bytes().cmp(lower.clone()))
        } else {
            self.index.binary_search_by(|e| self.name_of(e).cmp(key))
        };
        found
            .ok()
            .and_then(|i| self.index.get(i))
            .map(|e| self.value_of(e))
    }

    /// The first of `keys` that has a non-empty value.
    pub fn first_of(&self, keys: &[&str]) -> Option<&str> {
        keys.iter().find_map(|k| self.get(k))
    }

    /// Every field, `(lower-case name, value)`, in byte order of the names; empty values
    /// included.
    pub fn fields(
        &self,
    ) -> impl DoubleEndedIterator<Item = (&str, &str)> + ExactSizeIterator + Clone {
        self.index
            .iter()
            .map(|e| (self.name_of(e), self.value_of(e)))
    }

    /// The fields as a map (for tools and tests that change some and build a new event).
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.fields()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect()
    }

    pub fn order_id(&self) -> Option<&str> {
        self.get("order_id")
    }

    fn name_of(&self, entry: &Span) -> &str {
        self.text
            .get(entry.name..entry.name_end)
            .unwrap_or_default()
    }

    fn value_of(&self, entry: &Span) -> &str {
        self.text.get(entry.value..entry.end).unwrap_or_default()
    }
}

impl fmt::Debug for IpnEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpnEvent")
            .field("kind", &self.kind)
            .field("fields", &DebugFields(self))
            .finish()
    }
}

struct DebugFields<'a>(&'a IpnEvent);

impl fmt::Debug for DebugFields<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.fields()).finish()
    }
}

fn has_ascii_uppercase(name: &str) -> bool {
    name.bytes().any(|b| b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What the event held when it was a `BTreeMap<String, String>` (before issue 13, round
    /// 2): the pairs collected into a map (the last value of a name wins), the names folded
    /// to lower case in name order, a non-empty value winning over an empty one.
    fn map_model(pairs: &[(String, String)]) -> BTreeMap<String, String> {
        let by_name: BTreeMap<String, String> = pairs.iter().cloned().collect();
        let mut lower: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in by_name {
            let slot = lower.entry(name.to_ascii_lowercase()).or_default();
            if slot.is_empty() || !value.is_empty() {
                *slot = value;
            }
        }
        lower
    }

    fn event_of(pairs: &[(String, String)]) -> IpnEvent {
        IpnEvent::from_fields(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())))
    }

    #[test]
    fn two_fields_sorted_lower_case_are_one_buffer_in_name_order() {
        let event = IpnEvent::from_fields([("event", "on_payment"), ("order_id", "K7Q2")]);
        assert_eq!(event.text, "eventon_paymentorder_idK7Q2");
        assert_eq!(event.index.len(), 2);
        assert_eq!(event.text.capacity(), event.text.len());
        assert_eq!(event.kind, EventKind::from_ipn("on_payment"));
        assert_eq!(event.get("ORDER_ID"), Some("K7Q2"));
    }

    #[test]
    fn unsorted_repeated_and_mixed_case_names_read_as_the_map_did() {
        let pairs: Vec<(String, String)> = [
            ("order_id", "1"),
            ("Transaction_Id", "T1"),
            ("amount", ""),
            ("order_id", "2"),
            ("transaction_id", ""),
            ("EVENT", "on_refund"),
        ]
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
        let event = event_of(&pairs);
        assert_eq!(event.to_map(), map_model(&pairs));
        assert_eq!(event.get("order_id"), Some("2"));
        assert_eq!(event.get("transaction_id"), Some("T1"));
        assert_eq!(event.get("amount"), None);
        assert_eq!(event.value("amount"), Some(""));
        assert_eq!(event.value("missing"), None);
        assert_eq!(event.kind, EventKind::from_ipn("on_refund"));
        assert_eq!(event, IpnEvent::new(map_model(&pairs)));
    }

    #[test]
    fn debug_shows_the_fields_as_a_map() {
        let event = IpnEvent::from_fields([("a", "1"), ("b", "")]);
        assert_eq!(
            format!("{event:?}"),
            r#"IpnEvent { kind: Unknown(""), fields: {"a": "1", "b": ""} }"#
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1_000))]

        #[test]
        fn the_indexed_event_reads_every_name_as_the_map_did(
            pairs in prop::collection::vec(("[aAbB_é]{0,3}", "[xy]{0,2}"), 0..12),
            probes in prop::collection::vec("[aAbB_é]{0,3}", 0..6),
        ) {
            let model = map_model(&pairs);
            let event = event_of(&pairs);
            prop_assert_eq!(event.to_map(), model.clone());
            prop_assert_eq!(&event, &IpnEvent::new(model.clone()));
            prop_assert_eq!(
                event.kind.clone(),
                EventKind::from_ipn(model.get("event").map_or("", String::as_str))
            );
            for probe in probes.iter().chain(pairs.iter().map(|(n, _)| n)) {
                let expected = model.get(&probe.to_ascii_lowercase()).map(String::as_str);
                prop_assert_eq!(event.value(probe), expected);
                prop_assert_eq!(event.get(probe), expected.filter(|v| !v.is_empty()));
            }
        }
    }
}
