//! Alerts: "every failure reaches a person". [`Alerter::raise`] records what happened in a
//! durable outbox; [`Alerter::run`] mails it over SMTP, at most one e-mail per recipient per
//! digest window.
//!
//! Owns the alert policy: who is told (`[alerts].to` plus the integration's `error_emails`,
//! deduplicated), when (at once, or in the next digest), what is said ([`render`]), how
//! sending is retried ([`smtp`]) and when the delay itself becomes an alert
//! ([`AlertKind::AlertBacklog`]). It must not know about Konnektive, the IPN format or the
//! dispatcher's retry schedule: callers describe a failure as plain fields of an [`Alert`].
//! SQL lives in `store::alerts`.
//!
//! Design decisions:
//! - **Why an outbox.** A dead letter must never wait for, or be lost with, a mail server:
//!   its alert is written in the same transaction as the job's state change
//!   ([`Alerter::outbox_record`] → `Store::finish_attempt`, and likewise an IPN that needs a
//!   person → `Store::ingest`), so a crash can never leave a dead job nobody is told about;
//!   a separate sender task does SMTP. An SMTP outage therefore delays alerts and never
//!   deliveries, and alerts survive restarts: the outbox is read again on start.
//! - **Why a digest per recipient.** Recipients differ (an integration's `error_emails` hear
//!   only about that integration, `to` hears about everything), so each has its own window
//!   and its own e-mail, and no vendor sees another vendor's address. Per recipient: the
//!   first alert goes out at once if that recipient got no e-mail within `digest_window`;
//!   later ones wait until the window has passed since that e-mail and then go out
//!   together in one digest (counts per kind, then every item in full). A failed send does
//!   not use up the window.
//! - **At least once.** An e-mail is marked sent after the server accepted it; a crash (or
//!   shutdown) in between may send it twice, never zero times.
//! - **Scrubbed before stored.** The buyer's address is masked and free text is redacted
//!   ([`render::redact_secrets`]) in `raise`, so neither the outbox nor any e-mail holds the
//!   raw values. The SMTP password lives only in the transport; error texts are scrubbed.
//! - **Backlog.** When sending fails and the outbox holds more than
//!   [`BACKLOG_MAX_UNSENT`] unsent (alert, recipient) pairs, or its oldest unsent alert is
//!   older than `digest_window` + [`BACKLOG_MAX_DELAY_MS`], one
//!   [`AlertKind::AlertBacklog`] is logged at ERROR and raised (to `[alerts].to`); another
//!   one is raised only after that one has been sent.
//! - **Time** comes only from the [`SharedClock`]; the loop polls the outbox every
//!   [`POLL_INTERVAL_MS`] of real time (and at once after a `raise`), so tests move a
//!   `ManualClock` instead of waiting out windows.
//! - Logs: without `[alerts]` an alert is logged at ERROR (WARN for `TargetResumed`, which
//!   is good news) with every field, masked; with `[alerts]` the log line is INFO ("recorded")
//!   and the e-mail carries the content.

pub mod render;
pub mod smtp;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::config::Alerts;
use crate::store::alerts::{NewAlert, RecipientOutbox};
use crate::store::{Store, StoreError};

use render::{mask_email, redact_secrets};
use smtp::Mailer;

/// How often the sender looks at the outbox when nothing wakes it (real time).
pub const POLL_INTERVAL_MS: u64 = 250;
/// Most alerts detailed in one e-mail; the rest follow in the next one.
pub const DIGEST_MAX_ITEMS: usize = 200;
/// Unsent (alert, recipient) pairs that, while sending fails, count as a backlog.
pub const BACKLOG_MAX_UNSENT: u64 = 100;
/// How much older than one digest window the oldest unsent alert may get, while sending
/// fails, before it counts as a backlog.
pub const BACKLOG_MAX_DELAY_MS: i64 = 60 * 60 * 1000;
/// After a failed round, a recipient is tried again after this long (clock time), doubling
/// up to [`ROUND_RETRY_MAX_MS`].
pub const ROUND_RETRY_MIN_MS: i64 = 60 * 1000;
pub const ROUND_RETRY_MAX_MS: i64 = 15 * 60 * 1000;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertKind {
    /// A job failed for good (permanent error or retries exhausted).
    DeadLetter,
    /// A target refused the bridge itself (login, allow-list, permission); its jobs wait.
    TargetPaused,
    /// A paused target works again.
    TargetResumed,
    /// An IPN's product has no `product_map` entry; it was skipped for the integration.
    UnmappedProduct,
    /// Alert e-mails themselves are delayed (SMTP failing).
    AlertBacklog,
}

impl AlertKind {
    /// The stable name stored in the outbox.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::DeadLetter => "dead_letter",
            AlertKind::TargetPaused => "target_paused",
            AlertKind::TargetResumed => "target_resumed",
            AlertKind::UnmappedProduct => "unmapped_product",
            AlertKind::AlertBacklog => "alert_backlog",
        }
    }

    pub fn parse(s: &str) -> Option<AlertKind> {
        [
            AlertKind::DeadLetter,
            AlertKind::TargetPaused,
            AlertKind::TargetResumed,
            AlertKind::UnmappedProduct,
            AlertKind::AlertBacklog,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One thing a person must hear about, with the context they need to act.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub kind: AlertKind,
    pub integration: Option<String>,
    pub target: Option<String>,
    pub job_id: Option<i64>,
    pub ds24_order_id: Option<String>,
    pub product: Option<String>,
    /// E.g. `97.00 USD`.
    pub amount: Option<String>,
    /// Raw; masked before it is stored, logged or mailed.
    pub buyer_email: Option<String>,
    /// The target's message, or the reason.
    pub message: String,
    /// E.g. `ipn-bridge queue retry 42`.
    pub retry_command: Option<String>,
    /// The integration's `error_emails`.
    pub extra_recipients: Vec<String>,
}

impl Alert {
    /// An alert of `kind` with a message and nothing else.
    pub fn new(kind: AlertKind, message: impl Into<String>) -> Alert {
        Alert {
            kind,
            integration: None,
            target: None,
            job_id: None,
            ds24_order_id: None,
            product: None,
            amount: None,
            buyer_email: None,
            message: message.into(),
            retry_command: None,
            extra_recipients: Vec::new(),
        }
    }
}

/// The role (see `Store::claim_role`) of the instance that mails the outbox when several
/// share one PostgreSQL database.
pub const SENDER_ROLE: &str = "alert-sender";

/// Records alerts and mails them. Cheap to clone; every clone shares the outbox wake-up.
#[derive(Clone)]
pub struct Alerter {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Option<Settings>,
    store: Store,
    clock: SharedClock,
    wake: Notify,
}

struct Settings {
    to: Vec<String>,
    window_ms: i64,
    /// `Err` holds why `[alerts]` cannot be used to send (logged once, stored per attempt).
    mailer: Result<Mailer, String>,
}

impl std::fmt::Debug for Alerter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.inner.settings.as_ref();
        f.debug_struct("Alerter")
            .field("to", &s.map(|s| &s.to))
            .field("window_ms", &s.map(|s| s.window_ms))
            .finish_non_exhaustive()
    }
}

impl Alerter {
    /// Without `config` (no `[alerts]`), alerts are only logged.
    pub fn new(config: Option<Alerts>, store: Store, clock: SharedClock) -> Self {
        let settings = config.map(|c| {
            let mailer = Mailer::from_config(&c);
            if let Err(e) = &mailer {
                tracing::error!(error = %e, "alert e-mails cannot be sent; alerts are kept in the outbox");
            }
            Settings {
                to: c.to.clone(),
                window_ms: i64::try_from(c.digest_window.as_millis()).unwrap_or(i64::MAX),
                mailer,
            }
        });
        Alerter {
            inner: Arc::new(Inner {
                settings,
                store,
                clock,
                wake: Notify::new(),
            }),
        }
    }

    /// Durable and cheap: writes the alert to the outbox (one store call) and returns; never
    /// waits for SMTP. Without `[alerts]` it logs the alert at ERROR and records nothing.
    ///
    /// An alert that reports a state change (a dead letter, an IPN that needs a person) is
    /// not raised but written with that change: [`Alerter::outbox_record`] before the store
    /// call, [`Alerter::committed`] after it.
    pub async fn raise(&self, alert: Alert) -> Result<(), StoreError> {
        let record = self.outbox_record(&alert);
        if let Some(record) = &record {
            self.inner.store.record_alert(record.clone()).await?;
        }
        self.committed(&alert, record.is_some());
        Ok(())
    }

    /// The outbox row for `alert`, scrubbed (masked buyer, redacted free text) and addressed,
    /// for the caller to write in the same transaction as the state change it reports.
    /// `None` when it is not mailed (no `[alerts]`, or no recipient): it is only logged, by
    /// [`Alerter::committed`].
    pub fn outbox_record(&self, alert: &Alert) -> Option<NewAlert> {
        let settings = self.inner.settings.as_ref()?;
        let recipients = recipients(&settings.to, &alert.extra_recipients);
        if recipients.is_empty() {
            return None;
        }
        Some(NewAlert {
            created_at: self.inner.clock.now_ms(),
            kind: alert.kind.as_str().to_owned(),
            integration: alert.integration.clone(),
            target: alert.target.clone(),
            job_id: alert.job_id,
            ds24_order_id: alert.ds24_order_id.clone(),
            product: alert.product.clone(),
            amount: alert.amount.clone(),
            buyer_email: alert.buyer_email.as_deref().map(mask_email),
            message: redact_secrets(&alert.message),
            retry_command: alert.retry_command.as_deref().map(redact_secrets),
            recipients,
        })
    }

    /// After the transaction that holds [`Alerter::outbox_record`]`(alert)` committed:
    /// `recorded` says whether there was a record. Wakes the sender for a recorded alert;
    /// logs one that is not mailed.
    pub fn committed(&self, alert: &Alert, recorded: bool) {
        if recorded {
            tracing::info!(
                kind = alert.kind.as_str(),
                integration = alert.integration.as_deref(),
                job_id = alert.job_id,
                "alert recorded for e-mail"
            );
            self.inner.wake.notify_one();
        } else {
            let masked = alert.buyer_email.as_deref().map(mask_email);
            log_unmailed(alert, masked.as_deref(), &redact_secrets(&alert.message));
        }
    }

    /// The sender loop (spawn it on a `TaskTracker`); stops on the token. A round that is
    /// sending when the token fires is abandoned (its e-mails stay unsent, or may be sent
    /// twice: at least once).
    pub async fn run(self, shutdown: CancellationToken) {
        let Some(settings) = &self.inner.settings else {
            shutdown.cancelled().await;
            return;
        };
        let mut retry = RetryState::default();
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = self.round(settings, &mut retry) => {}
            }
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)) => {}
            }
        }
    }

    /// Mails every recipient that is due; then checks the backlog if anything failed.
    async fn round(&self, settings: &Settings, retry: &mut RetryState) {
        let store = &self.inner.store;
        // Several instances on one database share one outbox: one of them mails it.
        if !store.claim_role(SENDER_ROLE).await.unwrap_or(false) {
            return;
        }
        let now = self.inner.clock.now_ms();
        let due = match store
            .alert_outbox_due(now.saturating_sub(settings.window_ms), DIGEST_MAX_ITEMS)
            .await
        {
            Ok(due) => due,
            Err(e) => {
                // Logged (once, then summarised) by the store itself.
                tracing::debug!(error = %e, "cannot read the alert outbox; trying again shortly");
                return;
            }
        };
        for outbox in due {
            if retry.not_before(&outbox.recipient) > now || outbox.alerts.is_empty() {
                continue;
            }
            self.send(settings, outbox, retry).await;
        }
        if retry.any_failing() {
            self.check_backlog(settings, now).await;
        }
    }

    async fn send(&self, settings: &Settings, outbox: RecipientOutbox, retry: &mut RetryState) {
        let store = &self.inner.store;
        let mail = if outbox.alerts.len() == 1 && outbox.unsent_total <= 1 {
            outbox.alerts.iter().map(render::single).next()
        } else {
            Some(render::digest(
                &outbox.alerts,
                outbox.unsent_total,
                settings.window_ms,
            ))
        };
        let Some(mail) = mail else { return };
        let ids: Vec<i64> = outbox.alerts.iter().map(|a| a.id).collect();
        let result = match &settings.mailer {
            Ok(mailer) => {
                let now = self.inner.clock.now_ms();
                mailer.send(&outbox.recipient, &mail, now).await
            }
            Err(e) => Err(smtp::SendError::Permanent(e.clone())),
        };
        let recipient = outbox.recipient.as_str();
        match result {
            Ok(()) => {
                retry.succeeded(recipient);
                let n = ids.len();
                let now = self.inner.clock.now_ms();
                if let Err(e) = store.mark_alerts_sent(recipient, ids, now).await {
                    tracing::error!(recipient, error = %e,
                        "alert e-mail sent but not recorded as sent; it may be sent again");
                } else {
                    tracing::info!(recipient, alerts = n, "alert e-mail sent");
                }
            }
            Err(err) => {
                let now = self.inner.clock.now_ms();
                let wait_ms = retry.failed(recipient, now);
                tracing::warn!(recipient, alerts = ids.len(), error = %err, retry_in_ms = wait_ms,
                    "alert e-mail not sent; it stays in the outbox");
                if let Err(e) = store
                    .record_alert_failure(recipient, ids, &err.to_string())
                    .await
                {
                    tracing::warn!(recipient, error = %e, "cannot record the failed alert e-mail");
                }
            }
        }
    }

    /// Raises one [`AlertKind::AlertBacklog`] when the unsent outbox is large or old.
    async fn check_backlog(&self, settings: &Settings, now: i64) {
        let backlog = match self
            .inner
            .store
            .alert_backlog(AlertKind::AlertBacklog.as_str())
            .await
        {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot measure the alert outbox");
                return;
            }
        };
        let max_age = settings.window_ms.saturating_add(BACKLOG_MAX_DELAY_MS);
        let age = backlog.oldest_created_at.map(|t| now.saturating_sub(t));
        let too_old = age.is_some_and(|a| a > max_age);
        let too_many = backlog.unsent > BACKLOG_MAX_UNSENT;
        if !(too_old || too_many) || backlog.kind_pending {
            return;
        }
        let message = format!(
            "{} alert e-mails (alert x recipient) are unsent; the oldest alert is {} old. \
             Check [alerts] smtp_url and the mail server; the outbox keeps everything and \
             sends it when the server accepts it.",
            backlog.unsent,
            render::format_duration_ms(age.unwrap_or(0))
        );
        tracing::error!(
            unsent = backlog.unsent,
            oldest_age_ms = age.unwrap_or(0),
            "alert e-mails are delayed"
        );
        if let Err(e) = self
            .raise(Alert::new(AlertKind::AlertBacklog, message))
            .await
        {
            tracing::error!(error = %e, "cannot record the alert backlog alert");
        }
    }
}

/// `to` then `extra`, without repeats (compared case-insensitively), blanks dropped.
fn recipients(to: &[String], extra: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for addr in to.iter().chain(extra) {
        let addr = addr.trim();
        if !addr.is_empty() && !out.iter().any(|a| a.eq_ignore_ascii_case(addr)) {
            out.push(addr.to_owned());
        }
    }
    out
}

/// The log line for an alert that is not mailed (no `[alerts]`).
fn log_unmailed(alert: &Alert, masked_email: Option<&str>, message: &str) {
    macro_rules! log_at {
        ($level:ident) => {
            tracing::$level!(
                kind = alert.kind.as_str(),
                integration = alert.integration.as_deref(),
                target = alert.target.as_deref(),
                job_id = alert.job_id,
                ds24_order_id = alert.ds24_order_id.as_deref(),
                product = alert.product.as_deref(),
                amount = alert.amount.as_deref(),
                buyer_email = masked_email,
                retry_command = alert.retry_command.as_deref(),
                "alert (no [alerts] e-mail configured): {message}"
            )
        };
    }
    if alert.kind == AlertKind::TargetResumed {
        log_at!(warn);
    } else {
        log_at!(error);
    }
}

/// Per-recipient pause after failed rounds (in memory: after a restart, everything unsent is
/// tried at once).
#[derive(Debug, Default)]
struct RetryState {
    /// recipient → (consecutive failed rounds, not before).
    failing: HashMap<String, (u32, i64)>,
}

impl RetryState {
    fn not_before(&self, recipient: &str) -> i64 {
        self.failing.get(recipient).map_or(i64::MIN, |(_, t)| *t)
    }

    fn any_failing(&self) -> bool {
        !self.failing.is_empty()
    }

    fn succeeded(&mut self, recipient: &str) {
        self.failing.remove(recipient);
    }

    /// Returns the pause before the next try.
    fn failed(&mut self, recipient: &str, now: i64) -> i64 {
        let entry = self.failing.entry(recipient.to_owned()).or_insert((0, now));
        entry.0 = entry.0.saturating_add(1);
        let wait = round_retry_delay_ms(entry.0);
        entry.1 = now.saturating_add(wait);
        wait
    }
}

/// Pause after `failures` consecutive failed rounds: 1m, 2m, 4m, … up to 15m.
fn round_retry_delay_ms(failures: u32) -> i64 {
    let doublings = failures.saturating_sub(1).min(16);
    ROUND_RETRY_MIN_MS
        .saturating_mul(1_i64 << doublings)
        .min(ROUND_RETRY_MAX_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_keep_order_and_drop_repeats() {
        let to = vec!["ops@example.com".to_owned(), " ".to_owned()];
        let extra = vec![
            "vendor@example.com".to_owned(),
            "OPS@example.com".to_owned(),
            "vendor@example.com ".to_owned(),
        ];
        assert_eq!(
            recipients(&to, &extra),
            ["ops@example.com", "vendor@example.com"]
        );
    }

    #[test]
    fn round_retry_grows_and_is_capped() {
        assert_eq!(round_retry_delay_ms(1), 60_000);
        assert_eq!(round_retry_delay_ms(2), 120_000);
        assert_eq!(round_retry_delay_ms(4), 480_000);
        assert_eq!(round_retry_delay_ms(5), 900_000);
        assert_eq!(round_retry_delay_ms(u32::MAX), 900_000);
    }

    #[test]
    fn kinds_round_trip() {
        for kind in [
            AlertKind::DeadLetter,
            AlertKind::TargetPaused,
            AlertKind::TargetResumed,
            AlertKind::UnmappedProduct,
            AlertKind::AlertBacklog,
        ] {
            assert_eq!(AlertKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(AlertKind::parse("nope"), None);
    }
}
