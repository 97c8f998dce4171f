//! Connectors: the outgoing side, one module per kind of target.
//!
//! A connector turns a domain [`Action`] into requests to its target and reports each
//! attempt as an [`AttemptReport`]: the outcome class (the retry *decision*), whether the
//! target may have applied it, and the evidence to store (request and response, free of
//! secrets). Connectors never retry, sleep, rate-limit or persist anything; the dispatcher
//! (`delivery`) owns the timing, the limiter and the store. They depend only on `domain` and
//! the resolved `config` model, never on `ipn`, `store`, `server` or `rules`.
//!
//! Two kinds stand behind it: [`konnektive`] (imports, refunds, chargebacks, cancellations
//! in Konnektive CRM) and [`webhook`] (each event forwarded as one signed JSON POST).
//!
//! [`Connector`] is the seam the dispatcher talks to: build and execute the request(s) for
//! an action, look up whether an unknown outcome was applied, resolve the import a reversal
//! refers to, run the pre-send checks, and probe the target. The dispatcher names no
//! Konnektive type, endpoint or field; everything it needs to say about the target
//! (`label`, `probe_endpoint`, `lookup_endpoint`) comes from here. `test-connection` talks
//! to the same seam (`check_campaign`, which the probe shares, and `send_connection_test`)
//! and builds no client of its own.
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
pub mod webhook;

pub use konnektive::{Campaign, Classified, KonnektiveClient, classify, import_params};

use crate::config::{Config, Target, TargetKind};
use crate::domain::{Action, AttemptReport, DayWindow, EventId, ImportRef, Outcome, Receipt};
use konnektive::target::KonnektiveTarget;
use webhook::WebhookTarget;

/// What an attempt knows beyond its action: the stored IPN it comes from and the time it
/// is made (a webhook's `webhook-id` and `webhook-timestamp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    pub event: EventId,
    pub now_ms: i64,
}

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
    Webhook(WebhookTarget),
}

impl Connector {
    /// The connector for `target`, of its `kind`.
    pub fn new(config: &Config, target: &Target) -> Result<Self, ConnectorError> {
        let http = |source| ConnectorError::Http {
            target: target.name.clone(),
            source,
        };
        match &target.kind {
            TargetKind::Konnektive => Ok(Connector::Konnektive(
                KonnektiveTarget::new(config, target).map_err(http)?,
            )),
            TargetKind::Webhook(hook) => Ok(Connector::Webhook(
                WebhookTarget::new(target, hook).map_err(http)?,
            )),
        }
    }

    /// The target system's name, for logs and alerts ("Konnektive refuses every request").
    pub fn label(&self) -> &'static str {
        match self {
            Connector::Konnektive(_) => "Konnektive",
            Connector::Webhook(_) => "The webhook receiver",
        }
    }

    /// The request the probe sends, for messages about it.
    pub fn probe_endpoint(&self) -> &'static str {
        match self {
            Connector::Konnektive(_) => konnektive::CAMPAIGN_QUERY_ENDPOINT,
            Connector::Webhook(_) => webhook::ENDPOINT,
        }
    }

    /// Where the result of an earlier attempt of `action` is looked up.
    pub fn lookup_endpoint(&self, action: &Action) -> &'static str {
        match (self, action) {
            (Connector::Konnektive(_), Action::ImportOrder { .. }) => {
                konnektive::ORDER_QUERY_ENDPOINT
            }
            (Connector::Konnektive(_), _) => konnektive::TRANSACTIONS_QUERY_ENDPOINT,
            (Connector::Webhook(_), _) => webhook::ENDPOINT,
        }
    }

    /// What the target calls the order an import created ("Konnektive order").
    pub fn order_noun(&self) -> &'static str {
        match self {
            Connector::Konnektive(_) => "Konnektive order",
            Connector::Webhook(_) => "webhook delivery",
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
            // A receiver refuses events one by one (a 4xx), never the sender as a whole:
            // nothing pauses a webhook target, so there is nothing to probe.
            Connector::Webhook(_) => None,
        }
    }

    /// What the target says about `campaign` (`test-connection`'s login, allow-list and
    /// campaign checks; the probe asks the same): `None` for a kind without campaigns.
    pub async fn check_campaign(&self, campaign: u64) -> Option<Result<Campaign, AttemptReport>> {
        match self {
            Connector::Konnektive(k) => Some(k.check_campaign(campaign).await),
            Connector::Webhook(_) => None,
        }
    }

    /// Sends `test-connection`'s signed `connection_test` event for `integration` and
    /// reports the answer (nothing is stored); `None` for a kind that has no such event.
    pub async fn send_connection_test(
        &self,
        integration: &str,
        now_ms: i64,
    ) -> Option<AttemptReport> {
        match self {
            Connector::Konnektive(_) => None,
            Connector::Webhook(w) => Some(w.connection_test(integration, now_ms).await),
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
            Connector::Webhook(_) => Ok(()),
        }
    }

    /// Performs `action` once (on `import`, the resolved order it refers to, if it has one)
    /// and reports what happened. Never retries.
    pub async fn execute(
        &self,
        action: &Action,
        import: Option<&Receipt>,
        attempt: Attempt,
    ) -> AttemptReport {
        match (self, import) {
            (Connector::Konnektive(k), Some(import)) => k.client().execute_on(action, import).await,
            (Connector::Konnektive(k), None) => k.client().execute(action).await,
            (Connector::Webhook(w), _) => match action {
                Action::Forward(forwarded) => {
                    w.forward(forwarded, attempt.event, attempt.now_ms).await
                }
                other => cannot(webhook::ENDPOINT, other),
            },
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
            // A forward is resent, never looked up (the receiver dedupes by webhook-id).
            Connector::Webhook(_) => Ok(None),
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
            Connector::Webhook(_) => Err(AttemptReport {
                outcome: Outcome::Permanent {
                    reason: "a webhook target keeps no imports".into(),
                },
                endpoint: webhook::ENDPOINT.into(),
                http_status: None,
                request: describe,
                response: String::new(),
                maybe_applied: false,
            }),
        }
    }
}

/// The report of an action a target's kind cannot perform (the config rejects such an
/// integration, so this is a bug, reported and not guessed around).
fn cannot(endpoint: &str, action: &Action) -> AttemptReport {
    let reason = format!(
        "this target's kind cannot perform {}",
        action.kind().config_name()
    );
    AttemptReport {
        outcome: Outcome::Permanent {
            reason: reason.clone(),
        },
        endpoint: endpoint.into(),
        http_status: None,
        request: String::new(),
        response: reason,
        maybe_applied: false,
    }
}
