//! Sending one e-mail over SMTP with `lettre`: the transport built from `[alerts]`, a message
//! per recipient, a bounded in-memory retry with `backon`, and errors that never carry the
//! SMTP password.
//!
//! Knows nothing about the outbox or the digest policy; [`super::Alerter`] decides what to
//! send and when, and records the outcome. Decisions:
//! - One connection per e-mail, no pool: alerts are rare, and a fresh connection after an
//!   outage needs no stale-connection handling.
//! - The retry here is short (a few attempts within seconds) and only for transient errors;
//!   anything longer is the outbox's job: what fails here stays unsent and is tried again in
//!   a later round, also after a restart.
//! - Error texts come from `lettre` (server replies, I/O errors), which do not include the
//!   credentials; every text is still scrubbed of the password before it is returned, so it
//!   can be logged and stored without a second thought.

use std::time::{Duration, UNIX_EPOCH};

use backon::{ExponentialBuilder, Retryable};
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};

use super::render::Mail;
use crate::config::Alerts;

/// Longest wait for one SMTP connection or command.
pub const SMTP_TIMEOUT_SECS: u64 = 20;
/// Attempts of one e-mail within a round (the first one included).
pub const SEND_ATTEMPTS: usize = 3;
/// First pause between two attempts within a round; doubles, with jitter.
pub const SEND_RETRY_MIN_DELAY_MS: u64 = 200;
/// Longest pause between two attempts within a round.
pub const SEND_RETRY_MAX_DELAY_MS: u64 = 2_000;

/// Why an e-mail was not sent. The text is safe to log and store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Might work later (connection refused, timeout, 4xx reply).
    #[error("{0}")]
    Transient(String),
    /// Will not work as configured (5xx reply, bad address, bad configuration).
    #[error("{0}")]
    Permanent(String),
}

impl SendError {
    fn is_transient(&self) -> bool {
        matches!(self, SendError::Transient(_))
    }
}

/// An SMTP client for `[alerts]`.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    password: Option<SecretString>,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// Builds the client; connects only when sending. The error names what is wrong in
    /// `[alerts]` without repeating any secret.
    pub fn from_config(config: &Alerts) -> Result<Mailer, String> {
        let scrub = |text: String| scrub(text, config.smtp_password.as_ref());
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(&config.smtp_url)
            .map_err(|e| scrub(format!("[alerts] smtp_url cannot be used: {e}")))?
            .timeout(Some(Duration::from_secs(SMTP_TIMEOUT_SECS)));
        if let (Some(user), Some(password)) = (&config.smtp_username, &config.smtp_password) {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose_secret().to_owned(),
            ));
        }
        let from: Mailbox = config
            .from
            .parse()
            .map_err(|e| scrub(format!("[alerts] from is not an address: {e}")))?;
        Ok(Mailer {
            transport: builder.build(),
            from,
            password: config.smtp_password.clone(),
        })
    }

    /// Sends `mail` to `to`, dated `now_ms` (the caller's clock), retrying transient
    /// failures a few times.
    pub async fn send(&self, to: &str, mail: &Mail, now_ms: i64) -> Result<(), SendError> {
        let message = self.message(to, mail, now_ms)?;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(SEND_RETRY_MIN_DELAY_MS))
            .with_max_delay(Duration::from_millis(SEND_RETRY_MAX_DELAY_MS))
            .with_max_times(SEND_ATTEMPTS.saturating_sub(1))
            .with_jitter();
        (|| self.send_once(message.clone()))
            .retry(backoff)
            .when(SendError::is_transient)
            .notify(|err, pause| {
                tracing::debug!(recipient = to, error = %err, pause_ms = pause.as_millis() as u64,
                    "alert e-mail not accepted; trying again shortly");
            })
            .await
    }

    fn message(&self, to: &str, mail: &Mail, now_ms: i64) -> Result<Message, SendError> {
        let date = UNIX_EPOCH + Duration::from_millis(u64::try_from(now_ms).unwrap_or(0));
        let to: Mailbox = to
            .parse()
            .map_err(|e| SendError::Permanent(format!("recipient `{to}`: {e}")))?;
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject.clone())
            .date(date)
            .header(ContentType::TEXT_PLAIN)
            .body(mail.body.clone())
            .map_err(|e| SendError::Permanent(format!("cannot build the e-mail: {e}")))
    }

    async fn send_once(&self, message: Message) -> Result<(), SendError> {
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(e) => {
                let text = scrub(e.to_string(), self.password.as_ref());
                if e.is_permanent() {
                    Err(SendError::Permanent(text))
                } else {
                    Err(SendError::Transient(text))
                }
            }
        }
    }
}

/// `text` with every occurrence of the password replaced.
fn scrub(text: String, password: Option<&SecretString>) -> String {
    match password.map(ExposeSecret::expose_secret) {
        Some(p) if !p.is_empty() && text.contains(p) => text.replace(p, "[redacted]"),
        _ => text,
    }
}
