//! A small typed reader over the span-carrying TOML tree (`toml::de::DeTable`): a
//! [`Section`] is one table with its dotted path, a [`Field`] one value with the key it was
//! found under. Every accessor reports a wrong type as a [`Findings`] error at the value's
//! span and returns `None`, so the schema walker can go on and collect every problem.
//!
//! Why a hand-written walker instead of serde with `deny_unknown_fields`: serde stops at the
//! first error, and `check-config` must report every error at once, each with line and
//! column. This file knows TOML types and spans, not the `connectors.toml` schema.

use super::diagnostic::{Findings, closest, suggestion};
use super::duration::parse_duration;
use std::ops::Range;
use std::time::Duration;
use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

pub(crate) type Node<'i> = Spanned<DeValue<'i>>;

/// One table of the file, e.g. `[integration.main]` (path `integration.main`).
pub(crate) struct Section<'a, 'i> {
    /// Dotted path without brackets; empty for the top level.
    pub path: String,
    /// The table's header (or first key, or inline table); where "missing key" errors point.
    pub span: Range<usize>,
    pub table: &'a DeTable<'i>,
}

impl<'a, 'i> Section<'a, 'i> {
    pub fn root(table: &'a Spanned<DeTable<'i>>) -> Self {
        Section {
            path: String::new(),
            span: table.span(),
            table: table.get_ref(),
        }
    }

    /// `[server]`, or `the top level`.
    pub fn label(&self) -> String {
        if self.path.is_empty() {
            "the top level".to_owned()
        } else {
            format!("[{}]", self.path)
        }
    }

    /// `in [server]`, or `at the top level`.
    pub fn place(&self) -> String {
        if self.path.is_empty() {
            "at the top level".to_owned()
        } else {
            format!("in [{}]", self.path)
        }
    }

    /// Reports each key not in `known`, with the closest known key as a hint.
    pub fn reject_unknown(&self, known: &[&str], out: &mut Findings) {
        for (key, _) in self.table.iter() {
            let name: &str = key.get_ref();
            if !known.contains(&name) {
                out.error_hint(
                    key.span(),
                    format!("unknown key `{name}` {}", self.place()),
                    suggestion(name, known),
                );
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<Field<'a, 'i>> {
        let (k, node) = self.table.get_key_value(key)?;
        Some(self.field(k, node))
    }

    /// Every entry, in file order.
    pub fn fields(&self) -> Vec<Field<'a, 'i>> {
        let mut fields: Vec<Field<'a, 'i>> = self
            .table
            .iter()
            .map(|(k, node)| self.field(k, node))
            .collect();
        fields.sort_by_key(|f| f.key_span.start);
        fields
    }

    /// The sub-table `key`, if present (a wrong type is reported).
    pub fn child(&self, key: &str, out: &mut Findings) -> Option<Section<'a, 'i>> {
        self.get(key)?.section(out)
    }

    /// Whether some key of this table looks like a misspelling of `key` (and so is already
    /// reported as unknown, with `key` as the hint).
    pub fn has_misspelling_of(&self, key: &str) -> bool {
        self.table.iter().any(|(k, _)| {
            let k: &str = k.get_ref();
            k != key && closest(k, [key]).is_some()
        })
    }

    /// Reports that the required `key` is absent, unless it is merely misspelt.
    pub fn missing(&self, key: &str, out: &mut Findings) {
        if self.has_misspelling_of(key) {
            return;
        }
        out.missing(
            self.span.clone(),
            format!("missing required key `{key}` {}", self.place()),
            None,
        );
    }

    fn field(&self, key: &'a Spanned<DeString<'i>>, node: &'a Node<'i>) -> Field<'a, 'i> {
        Field {
            path: self.path.clone(),
            key: key.get_ref().to_string(),
            key_span: key.span(),
            node,
        }
    }
}

/// One value and where it was found.
pub(crate) struct Field<'a, 'i> {
    /// The containing section's path.
    pub path: String,
    /// The key, or `key[index]` for an array item.
    pub key: String,
    pub key_span: Range<usize>,
    pub node: &'a Node<'i>,
}

impl<'a, 'i> Field<'a, 'i> {
    /// `` `listen` in [server] ``.
    pub fn what(&self) -> String {
        if self.path.is_empty() {
            format!("`{}` at the top level", self.key)
        } else {
            format!("`{}` in [{}]", self.key, self.path)
        }
    }

    pub fn span(&self) -> Range<usize> {
        self.node.span()
    }

    pub fn error(&self, out: &mut Findings, problem: impl std::fmt::Display) {
        out.error(self.span(), format!("{}: {problem}", self.what()));
    }

    pub fn error_hint(
        &self,
        out: &mut Findings,
        problem: impl std::fmt::Display,
        hint: impl Into<String>,
    ) {
        out.error_hint(self.span(), format!("{}: {problem}", self.what()), hint);
    }

    pub fn wrong_type(&self, expected: &str, out: &mut Findings) {
        let found = type_name(self.node.get_ref());
        self.error(out, format!("expected {expected}, found {found}"));
    }

    pub fn str(&self, out: &mut Findings) -> Option<&'a str> {
        match self.node.get_ref() {
            DeValue::String(s) => Some(s.as_ref()),
            _ => {
                self.wrong_type("a string", out);
                None
            }
        }
    }

    /// A string that is not empty or blank.
    pub fn non_empty_str(&self, out: &mut Findings) -> Option<&'a str> {
        let s = self.str(out)?;
        if s.trim().is_empty() {
            self.error(out, "must not be empty");
            return None;
        }
        Some(s)
    }

    pub fn bool(&self, out: &mut Findings) -> Option<bool> {
        match self.node.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type("`true` or `false`", out);
                None
            }
        }
    }

    pub fn integer(&self, out: &mut Findings) -> Option<i128> {
        match self.node.get_ref() {
            DeValue::Integer(i) => match i128::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.error(out, "integer out of range");
                    None
                }
            },
            _ => {
                self.wrong_type("an integer", out);
                None
            }
        }
    }

    /// An integer in `min..=max`.
    pub fn int_in(&self, min: i128, max: i128, out: &mut Findings) -> Option<i128> {
        let n = self.integer(out)?;
        if n < min {
            self.error(out, format!("must be at least {min}, found {n}"));
            None
        } else if n > max {
            self.error(out, format!("must be at most {max}, found {n}"));
            None
        } else {
            Some(n)
        }
    }

    /// A positive integer id (1 ..= u64::MAX).
    pub fn positive_id(&self, out: &mut Findings) -> Option<u64> {
        let n = self.integer(out)?;
        match u64::try_from(n) {
            Ok(id) if id > 0 => Some(id),
            _ => {
                self.error(out, format!("must be a positive integer, found {n}"));
                None
            }
        }
    }

    /// `u32` in `min..=u32::MAX`.
    pub fn u32_at_least(&self, min: u32, out: &mut Findings) -> Option<u32> {
        let n = self.int_in(i128::from(min), i128::from(u32::MAX), out)?;
        u32::try_from(n).ok()
    }

    /// A float; integers are accepted too.
    pub fn number(&self, out: &mut Findings) -> Option<f64> {
        let parsed = match self.node.get_ref() {
            DeValue::Float(f) => f.as_str().parse::<f64>().ok(),
            DeValue::Integer(_) => {
                return self.integer(out).map(|n| n as f64);
            }
            _ => {
                self.wrong_type("a number", out);
                return None;
            }
        };
        if parsed.is_none() {
            self.error(out, "invalid number");
        }
        parsed
    }

    pub fn duration(&self, out: &mut Findings) -> Option<Duration> {
        let s = self.str(out)?;
        match parse_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(out, e);
                None
            }
        }
    }

    /// A duration that is not zero.
    pub fn positive_duration(&self, out: &mut Findings) -> Option<Duration> {
        let d = self.duration(out)?;
        if d.is_zero() {
            self.error(out, "must be longer than 0s");
            return None;
        }
        Some(d)
    }

    /// The items of an array, each as a field `key[index]`.
    pub fn items(&self, out: &mut Findings) -> Option<Vec<Field<'a, 'i>>> {
        match self.node.get_ref() {
            DeValue::Array(items) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, node)| Field {
                        path: self.path.clone(),
                        key: format!("{}[{i}]", self.key),
                        key_span: node.span(),
                        node,
                    })
                    .collect(),
            ),
            _ => {
                self.wrong_type("an array", out);
                None
            }
        }
    }

    /// This value as a table.
    pub fn section(&self, out: &mut Findings) -> Option<Section<'a, 'i>> {
        match self.node.get_ref() {
            DeValue::Table(table) => Some(Section {
                path: if self.path.is_empty() {
                    self.key.clone()
                } else {
                    format!("{}.{}", self.path, self.key)
                },
                span: self.node.span(),
                table,
            }),
            _ => {
                self.wrong_type("a table", out);
                None
            }
        }
    }
}

/// "a string", "an integer", … for messages.
pub(crate) fn type_name(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}
