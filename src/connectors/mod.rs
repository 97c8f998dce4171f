//! Connectors: the outgoing side, one module per kind of target CRM.
//!
//! A connector turns a domain [`Action`](crate::domain::Action) into requests to its target
//! and reports each attempt as a [`AttemptReport`](crate::domain::AttemptReport): the outcome
//! class (the retry *decision*), whether the target may have applied it, and the evidence to
//! store (request and response, free of secrets). Connectors never retry, sleep, rate-limit
//! or persist anything; the dispatcher (`delivery`) owns the timing, the limiter and the
//! store. They depend only on `domain` and the resolved `config` model, never on `ipn`,
//! `store`, `server` or `rules`.
//!
//! There is one target kind today (Konnektive), so the dispatcher calls
//! [`KonnektiveClient`] directly; a trait (or an enum over clients) belongs here once a
//! second kind exists, not before.

pub mod konnektive;

pub use konnektive::{Campaign, Classified, KonnektiveClient, classify, import_params};
