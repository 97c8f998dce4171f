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
        let mut last: Vec<(&'a str, &'a str)> = pairs.into_iter().collect();
        // Stable: the pairs of one name stay in body order, so the last one is the last sent.
        last.sort_by(|a, b| a.0.cmp(b.0));
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
