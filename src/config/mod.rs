//! `connectors.toml`: from text to a validated, resolved [`Config`].
//!
//! The pipeline (entry points in `load`) is text → TOML tree with spans (`document`, via
//! `toml::de::DeTable::parse_recoverable`, recovering from syntax errors) → a schema walk that
//! collects *every* problem as a span-located finding (`schema`, over the typed accessors of
//! `reader`; secrets in `secret`, durations in `duration`, `fields` templates in `template`)
//! → sorted [`Diagnostic`]s with line and column (`diagnostic`) or the runtime [`Config`] of
//! `model`.
//!
//! Why a hand-written walker instead of serde with `deny_unknown_fields`: serde stops at the
//! first error and loses positions inside nested values, while `check-config` must report
//! every error at once, each with file, line and column, and a hint where one helps.
//!
//! This module knows the configuration file and the environment secrets come from; it knows
//! nothing of HTTP, SQLite or Konnektive's API beyond what the file must say about them
//! (`&` is forbidden in a Konnektive password, `order_ref_field` is one of `custom1…5`).
//! No message, warning or `Debug` output contains a secret's value.

mod diagnostic;
mod document;
mod duration;
mod live;
mod load;
mod model;
mod reader;
mod schema;
mod secret;
mod template;

pub use diagnostic::{ConfigErrors, Diagnostic, Severity};
pub use duration::parse_duration;
pub use live::LiveConfig;
pub use load::{Loaded, load, load_without_secrets, parse};
pub use model::*;
pub use secret::{Environment, SystemEnvironment};

#[cfg(test)]
mod tests;
