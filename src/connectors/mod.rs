//! Connectors: the outgoing side, one module per kind of target.
//!
//! A connector turns a domain [`Action`] into requests to its target and reports each
//! attempt as an [`AttemptReport`]: the outcome class (the retry *decision*), whether the
//! target may have applied it, and the evidence to store (request and response, free of
//! secrets). Connectors never retry, sleep, rate-limit or persist anything; the dispatcher
//! (`delivery`) owns the timing, the limiter and the store. They depend only on `domain` and
//! the resolved `config` model, never on `ipn`, `store`, `server` or `rules`.
//!
//! [`Connector`] is the seam the dispatcher talks to: build and execute the request(s) for
//! an action, look up whether an unknown outcome was applied, resolve the import a reversal
//! refers to, run the pre-send checks, and probe the target. The dispatcher names no
//! Konnektive type, endpoint or field; everything it needs to say about the target
//! (`label`, `probe_endpoint`, `lookup_endpoint`) comes from here.
//!
//! Decision: **an enum, not a trait object.** The kinds are few, known at compile time and
//! chosen by the config's `kind`; an enum keeps the async methods plain `async fn`s (no
//! boxed futures, no `dyn` lifetimes), lets `match` show every kind's answer to each
//! question in one place, and a new kind fails to compile until every question is answered
//! for it. The cost — each method is a `match` — is small while the kinds are two or three.
//! Rate limiting stays outside: a method that may or may not need a request (the currency
//! check reads a cache first) takes `ready`, a future the dispatcher gives it that waits for
//! the target's token bucket, and awaits it only before a request.

pub mod konnektive;

pub use konnektive::{Campaign, Classified, KonnektiveClient, classify, import_params};

use crate::config::{Config, Target, TargetKind};
use crate::domain::{Action, AttemptReport, DayWindow, ImportRef, Receipt};
use konnektive::target::KonnektiveTarget;

/// Why a connector could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("cannot build the HTTP client for target {target}: {source}")]
    Http {
        target: String,
        #[source]
        source: reqwest::Error,
    },
}

/// One target's connector, built per dispatcher generation (its caches last as long).
#[derive(Debug)]
pub enum Connector {
    Konnektive(KonnektiveTarget),
}

impl Connector {
    /// The connector for `target`, of its `kind`.
    pub fn new(config: &Config, target: &Target) -> Result<Self, ConnectorError> {
        let http = |source| ConnectorError::Http {
            target: target.name.clone(),
            source,
        };
        match target.kind {
            TargetKind::Konnektive => Ok(Connector::Konnektive(
                KonnektiveTarget::new(config, target).map_err(http)?,
            )),
        }
    }

    /// The target system's name, for logs and alerts ("Konnektive refuses every request").
    pub fn label(&self) -> &'static str {
        match self {
            Connector::Konnektive(_) => "Konnektive",
        }
    }

    /// The request the probe sends, for messages about it.
    pub fn probe_endpoint(&self) -> &'static str {
        match self {
            Connector::Konnektive(_) => konnektive::CAMPAIGN_QUERY_ENDPOINT,
        }
    }

    /// Where the result of an earlier attempt of `action` is looked up.
    pub fn lookup_endpoint(&self, action: &Action) -> &'static str {
        match (self, action) {
            (Connector::Konnektive(_), Action::ImportOrder { .. }) => {
                konnektive::ORDER_QUERY_ENDPOINT
            }
            (Connector::Konnektive(_), _) => konnektive::TRANSACTIONS_QUERY_ENDPOINT,
        }
    }

    /// What the target calls the order an import created ("Konnektive order").
    pub fn order_noun(&self) -> &'static str {
        match self {
            Connector::Konnektive(_) => "Konnektive order",
        }
    }

    /// Checks whether the target accepts requests (one request, no change in the target;
    /// `ready` is awaited before it). `None` when there is nothing to ask.
    pub async fn probe<F: Future<Output = ()>>(
        &self,
        ready: impl FnOnce() -> F,
    ) -> Option<Result<(), AttemptReport>> {
        match self {
            Connector::Konnektive(k) => k.probe(ready).await,
        }
    }

    /// Checks that must pass before `action` is sent (an `Err` is the attempt's report,
    /// nothing was sent); `ready` is awaited before any request it needs.
    pub async fn precheck<F: Future<Output = ()>>(
        &self,
        action: &Action,
        ready: impl FnOnce() -> F,
    ) -> Result<(), AttemptReport> {
        match self {
            Connector::Konnektive(k) => k.precheck(action, ready).await,
        }
    }

    /// Performs `action` once (on `import`, the resolved order it refers to, if it has one)
    /// and reports what happened. Never retries.
    pub async fn execute(&self, action: &Action, import: Option<&Receipt>) -> AttemptReport {
        match (self, import) {
            (Connector::Konnektive(k), Some(import)) => k.client().execute_on(action, import).await,
            (Connector::Konnektive(k), None) => k.client().execute(action).await,
        }
    }

    /// After an attempt that may have been applied: whether `action` already happened in
    /// the target (`Ok(None)` only when the target positively says it did not).
    pub async fn find_applied(
        &self,
        action: &Action,
        import: Option<&Receipt>,
        window: DayWindow,
    ) -> Result<Option<Receipt>, AttemptReport> {
        match self {
            Connector::Konnektive(k) => k.client().find_applied(action, import, window).await,
        }
    }

    /// The target's record of the import `import` refers to when the ledger has none, and
    /// how it was found; `skipped` is why this integration skipped the reversed payment, if
    /// it did; `describe` names the import for the attempt's record.
    pub async fn find_import(
        &self,
        import: &ImportRef,
        window: DayWindow,
        skipped: Option<&str>,
        describe: String,
    ) -> Result<(Receipt, String), AttemptReport> {
        match self {
            Connector::Konnektive(k) => k.resolve_import(import, window, skipped, describe).await,
        }
    }
}
