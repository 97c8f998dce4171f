//! The alert outbox: alerts waiting to be mailed, per recipient, and when each recipient was
//! last mailed.
//!
//! Owns the SQL of the `alerts` and `alert_deliveries` tables (migration 3). An alert is one
//! row of plain, already rendered-safe fields (the caller masks the buyer's e-mail address and
//! redacts secrets before it gets here); each recipient has its own delivery row, because
//! each recipient has its own digest window and may be reachable when another is not.
//! Nothing here knows about SMTP, mail formats or the digest policy: the alert module asks
//! "which recipients were last mailed before this time, and what do they still owe" and
//! reports back what it sent or failed to send.
//!
//! An alert that reports a state change is written in that change's transaction, never after
//! it: a dead letter's by [`Store::finish_attempt`], an IPN's (a route that needs a person)
//! by [`Store::ingest`], which fills [`EVENT_ID_SLOT`] with the new IPN's id. So a crash
//! can leave neither a dead job nor a stored IPN without the alert about it.
//! [`Store::record_alert`] writes an alert alone (a paused target, a backlog).
//!
//! "When was this recipient last mailed" is `MAX(sent_at)` of its delivery rows (indexed), so
//! the digest window survives restarts without a second table to keep in step.

use crate::domain::EventId;

/// In an alert stored with its IPN ([`super::NewIpn::alerts`]), this text in `message` or
/// `retry_command` is replaced by the IPN's id, which exists only once the IPN is inserted
/// (in the same transaction).
pub const EVENT_ID_SLOT: &str = "{event_id}";

/// An alert to put into the outbox, with the addresses it goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAlert {
    pub created_at: i64,
    /// Stable name of the kind (`dead_letter`, …).
    pub kind: String,
    pub integration: Option<String>,
    pub target: Option<String>,
    pub job_id: Option<i64>,
    pub ds24_order_id: Option<String>,
    pub product: Option<String>,
    pub amount: Option<String>,
    /// Already masked by the caller.
    pub buyer_email: Option<String>,
    pub message: String,
    pub retry_command: Option<String>,
    /// Distinct addresses; at least one.
    pub recipients: Vec<String>,
}

/// An alert read back from the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxAlert {
    pub id: i64,
    pub created_at: i64,
    pub kind: String,
    pub integration: Option<String>,
    pub target: Option<String>,
    pub job_id: Option<i64>,
    pub ds24_order_id: Option<String>,
    pub product: Option<String>,
    pub amount: Option<String>,
    pub buyer_email: Option<String>,
    pub message: String,
    pub retry_command: Option<String>,
}

/// What one recipient is owed: its unsent alerts, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientOutbox {
    pub recipient: String,
    /// When this recipient was last mailed successfully, if ever.
    pub last_sent_at: Option<i64>,
    /// The oldest unsent alerts, at most the limit asked for.
    pub alerts: Vec<OutboxAlert>,
    /// All unsent alerts of this recipient, including those beyond the limit.
    pub unsent_total: u64,
}

/// Size and age of what is still unsent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboxBacklog {
    /// Unsent (alert, recipient) pairs.
    pub unsent: u64,
    /// `created_at` of the oldest unsent alert.
    pub oldest_created_at: Option<i64>,
    /// Whether an alert of this kind is itself still unsent (so it is not raised twice).
    pub kind_pending: bool,
}

/// `alert` with [`EVENT_ID_SLOT`] filled in.
pub(crate) fn with_event_id(alert: &NewAlert, id: EventId) -> NewAlert {
    let fill = |s: &str| s.replace(EVENT_ID_SLOT, &id.to_string());
    NewAlert {
        message: fill(&alert.message),
        retry_command: alert.retry_command.as_deref().map(fill),
        ..alert.clone()
    }
}
