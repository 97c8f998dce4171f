//! The fields of a decoded form as PHP's `$_POST` holds them, as one sorted, borrowed view:
//! every name once, with its last value, in byte order of the names. Knows nothing about
//! signatures or events; [`super::signature`] hashes it, [`super::receive`] builds the event
//! from it.
//!
//! Why a view: the signature needs the last value per name in sorted order, the event needs
//! the same map, and the duplicate warning needs to know which names repeat. One sort of
//! borrowed `(&str, &str)` pairs answers all three: no map is built and no name or value is
//! copied (an earlier version built a `BTreeMap` per signing convention and per passphrase,
//! and a `HashSet` for duplicates; issue 13's profile put that at about a tenth of the
//! request).

use super::form;

/// Every name once, with its last value, sorted byte-wise by name (PHP `SORT_STRING`, and
/// the order of a `BTreeMap<String, _>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Fields<'a> {
    last: Vec<(&'a str, &'a str)>,
}

impl<'a> Fields<'a> {
    /// The view of `pairs` (in body order). With `warn_duplicates`, a name sent more than
    /// once is logged at WARN, once per name, as [`form::parse_form`] does.
    pub(super) fn new(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
        warn_duplicates: bool,
    ) -> Self {
        // Sorted by name, then by position in the body, so the last of the pairs of one name
        // is the last sent. What is sorted is small: each pair's position and the first 16
        // bytes of its name as a big-endian number, so most comparisons end there, without
        // a call to `memcmp` (issue 13: the sort of the pairs themselves was a tenth of the
        // request's instructions). Zero padding keeps the order byte-wise: a tie of
        // prefixes (a shorter name, or a NUL byte) falls through to the whole names.
        let pairs: Vec<(&'a str, &'a str)> = pairs.into_iter().collect();
        let name = |position: usize| pairs.get(position).map_or("", |pair| pair.0);
        let mut order: Vec<(u128, usize)> = pairs
            .iter()
            .enumerate()
            .map(|(position, (name, _))| (prefix(name), position))
            .collect();
        order.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| name(a.1).cmp(name(b.1)))
                .then(a.1.cmp(&b.1))
        });
        let mut last: Vec<(&'a str, &'a str)> = order
            .iter()
            .filter_map(|&(_, position)| pairs.get(position).copied())
            .collect();
        let mut warned: Option<&str> = None;
        last.dedup_by(|later, kept| {
            if later.0 != kept.0 {
                return false;
            }
            kept.1 = later.1;
            if warn_duplicates && warned != Some(kept.0) {
                warned = Some(kept.0);
                form::warn_duplicate(kept.0);
            }
            true
        });
        Fields { last }
    }

    /// Every `(name, last value)`, sorted by name; empty values and `sha_sign` included.
    pub(super) fn all(&self) -> &[(&'a str, &'a str)] {
        &self.last
    }

    /// The last value of the field named exactly `name` (empty values included).
    pub(super) fn get(&self, name: &str) -> Option<&'a str> {
        self.last
            .binary_search_by(|(n, _)| (*n).cmp(name))
            .ok()
            .and_then(|i| self.last.get(i))
            .map(|(_, value)| *value)
    }
}

/// The first 16 bytes of `name` as a big-endian number, zero-padded: ordered as the names
/// are, except that names equal in it compare equal.
pub(super) fn prefix(name: &str) -> u128 {
    let mut bytes = [0u8; 16];
    let head = name.as_bytes().get(..16).unwrap_or(name.as_bytes());
    if let Some(slot) = bytes.get_mut(..head.len()) {
        slot.copy_from_slice(head);
    }
    u128::from_be_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// Names that tie on the 16-byte prefix (a shared 16-byte start, shorter names, NUL
    /// bytes, non-ASCII) so the sort's fall-through to the whole name is exercised.
    fn names() -> impl Strategy<Value = String> {
        prop_oneof![
            "[ab\u{0}é]{0,3}",
            "address_country_[ab\u{0}]{0,3}",
            "transaction_[ab]{0,6}",
            "[ab]{14,18}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn the_view_is_the_last_value_per_name_in_byte_order(
            pairs in prop::collection::vec((names(), "[xyz]{0,2}"), 0..40)
        ) {
            let mut map: BTreeMap<&str, &str> = BTreeMap::new();
            for (name, value) in &pairs {
                map.insert(name, value);
            }
            let expected: Vec<(&str, &str)> = map.into_iter().collect();
            let view = Fields::new(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())), false);
            prop_assert_eq!(view.all(), expected.as_slice());
        }
    }

    #[test]
    fn the_prefix_orders_as_the_bytes_do() {
        assert!(prefix("a") < prefix("b"));
        assert!(prefix("a") < prefix("a\u{1}"));
        assert_eq!(
            prefix("a"),
            prefix("a\u{0}"),
            "a tie, resolved by the whole names"
        );
        assert_eq!(prefix("abcdefghijklmnopX"), prefix("abcdefghijklmnopY"));
        assert!(prefix("é") > prefix("z"), "UTF-8 bytes above ASCII");
    }
}
