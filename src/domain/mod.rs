//! Plain data shared by every layer: ids, events, money, the CRM-neutral order, actions and
//! delivery outcomes.
//!
//! This module knows nothing about HTTP, SQLite, TOML or Konnektive and performs no I/O.
//! Everything here is parsed at an edge (the IPN parser, the config loader, the store) and
//! trusted afterwards: ids are newtypes, money is integer minor units, events and states are
//! enums. Types that leave the process (job payloads in the store) derive `serde` so the
//! store can keep them as JSON without knowing their shape.

mod date;
mod event;
mod money;

pub use date::{Day, DayWindow, rfc3339_utc};
pub use event::IpnEvent;
pub(crate) use event::Span;
pub use money::{Money, MoneyError};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Row id of a stored IPN (the inbox).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventId(pub i64);

/// Row id of a delivery job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct JobId(pub i64);

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The order events an integration can act on (the keys of `[integration.NAME.on]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderEvent {
    Payment,
    Refund,
    Chargeback,
    PaymentMissed,
    PaymentDenial,
    RebillCancelled,
    RebillResumed,
    LastPaidDay,
}

impl OrderEvent {
    pub const ALL: [OrderEvent; 8] = [
        OrderEvent::Payment,
        OrderEvent::Refund,
        OrderEvent::Chargeback,
        OrderEvent::PaymentMissed,
        OrderEvent::PaymentDenial,
        OrderEvent::RebillCancelled,
        OrderEvent::RebillResumed,
        OrderEvent::LastPaidDay,
    ];

    /// The key used in `[integration.NAME.on]`.
    pub fn config_name(self) -> &'static str {
        match self {
            OrderEvent::Payment => "payment",
            OrderEvent::Refund => "refund",
            OrderEvent::Chargeback => "chargeback",
            OrderEvent::PaymentMissed => "payment_missed",
            OrderEvent::PaymentDenial => "payment_denial",
            OrderEvent::RebillCancelled => "rebill_cancelled",
            OrderEvent::RebillResumed => "rebill_resumed",
            OrderEvent::LastPaidDay => "last_paid_day",
        }
    }

    pub fn from_config_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.config_name() == name)
    }

    /// The value of the IPN's `event` field.
    pub fn ipn_name(self) -> &'static str {
        match self {
            OrderEvent::Payment => "on_payment",
            OrderEvent::Refund => "on_refund",
            OrderEvent::Chargeback => "on_chargeback",
            OrderEvent::PaymentMissed => "on_payment_missed",
            OrderEvent::PaymentDenial => "payment_denial",
            OrderEvent::RebillCancelled => "on_rebill_cancelled",
            OrderEvent::RebillResumed => "on_rebill_resumed",
            OrderEvent::LastPaidDay => "last_paid_day",
        }
    }
}

/// What an IPN is about, from its `event` field.
///
/// `on_payment_subscription_signup` (seen only in Digistore24's app template) is deliberately
/// *not* mapped to [`OrderEvent::Payment`]: if Digistore24 also sends `on_payment` for the
/// same payment, both would be imported. It is stored and routed to nothing, like every
/// other unknown event, until its meaning is confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    Order(OrderEvent),
    Affiliation,
    Eticket,
    CustomForm,
    ConnectionTest,
    Unknown(String),
}

impl EventKind {
    pub fn from_ipn(name: &str) -> Self {
        if let Some(e) = OrderEvent::ALL.into_iter().find(|e| e.ipn_name() == name) {
            return EventKind::Order(e);
        }
        match name {
            "on_affiliation" => EventKind::Affiliation,
            "eticket" => EventKind::Eticket,
            // Both spellings are seen in third-party code; the reference leaves it open.
            "customform" | "custom_form" => EventKind::CustomForm,
            "connection_test" => EventKind::ConnectionTest,
            other => EventKind::Unknown(other.to_owned()),
        }
    }

    /// The `event` value as Digistore24 sends it.
    pub fn ipn_name(&self) -> &str {
        match self {
            EventKind::Order(e) => e.ipn_name(),
            EventKind::Affiliation => "on_affiliation",
            EventKind::Eticket => "eticket",
            EventKind::CustomForm => "customform",
            EventKind::ConnectionTest => "connection_test",
            EventKind::Unknown(s) => s,
        }
    }

    pub fn order_event(&self) -> Option<OrderEvent> {
        match self {
            EventKind::Order(e) => Some(*e),
            _ => None,
        }
    }
}

/// The events besides order events that `[integration.NAME.on]` may list: they can only be
/// forwarded (to a webhook target) or ignored. `connection_test` is never one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OtherEvent {
    Affiliation,
    Eticket,
}

impl OtherEvent {
    pub const ALL: [OtherEvent; 2] = [OtherEvent::Affiliation, OtherEvent::Eticket];

    /// The key in `[integration.NAME.on]`.
    pub fn config_name(self) -> &'static str {
        match self {
            OtherEvent::Affiliation => "affiliation",
            OtherEvent::Eticket => "eticket",
        }
    }

    pub fn from_config_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.config_name() == name)
    }

    /// The other event an IPN is, if it is one.
    pub fn of(kind: &EventKind) -> Option<Self> {
        match kind {
            EventKind::Affiliation => Some(OtherEvent::Affiliation),
            EventKind::Eticket => Some(OtherEvent::Eticket),
            _ => None,
        }
    }
}

/// What an integration does for an order event (the values of `[integration.NAME.on]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    ImportOrder,
    Refund,
    Chargeback,
    CancelPurchase,
    CancelOrder,
    Ignore,
    /// Send the IPN on as it came (webhook targets).
    Forward,
}

impl ActionKind {
    pub const ALL: [ActionKind; 7] = [
        ActionKind::ImportOrder,
        ActionKind::Refund,
        ActionKind::Chargeback,
        ActionKind::CancelPurchase,
        ActionKind::CancelOrder,
        ActionKind::Ignore,
        ActionKind::Forward,
    ];

    pub fn config_name(self) -> &'static str {
        match self {
            ActionKind::ImportOrder => "import_order",
            ActionKind::Refund => "refund",
            ActionKind::Chargeback => "chargeback",
            ActionKind::CancelPurchase => "cancel_purchase",
            ActionKind::CancelOrder => "cancel_order",
            ActionKind::Ignore => "ignore",
            ActionKind::Forward => "forward",
        }
    }

    pub fn from_config_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.config_name() == name)
    }

    /// Whether sending an action of this kind twice could do harm (a second order, a second
    /// refund): such an action is looked up in the target before it is sent again after an
    /// attempt that may have been applied (a timeout, a crash). Marking a chargeback or
    /// cancelling twice is harmless. The one list of such kinds: [`Action::needs_reconcile`]
    /// and the store's crash recovery both ask here.
    pub fn needs_reconcile(self) -> bool {
        matches!(self, ActionKind::ImportOrder | ActionKind::Refund)
    }
}

/// The buyer of an order, CRM-neutral.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buyer {
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub company: String,
    /// Digits only, country code included, no `+`.
    pub phone: String,
    /// IPv4 only; `None` when the IPN has none or an IPv6 address.
    pub ip_address: Option<String>,
}

/// A postal address, CRM-neutral. `country` is ISO 3166-1 alpha-2, upper case; `state` is a
/// subdivision code (e.g. `CA`, `BY`, `9`) or empty, never a written-out name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    pub line1: String,
    pub line2: String,
    pub city: String,
    pub state: String,
    pub postal_code: String,
    pub country: String,
}

/// An [`Address`] field that an integration's fallback address can fill (the country never:
/// it always comes from the IPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressField {
    Line1,
    City,
    PostalCode,
    State,
}

/// One line of an order: the *target's* product id (already mapped), quantity, unit price
/// and the line's shipping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderItem {
    pub product_id: u64,
    pub quantity: u32,
    pub unit_price: Money,
    /// Shipping of the whole line (charged once, not per unit). Jobs stored before this
    /// field existed had none.
    #[serde(default)]
    pub ship_price: Money,
}

impl OrderItem {
    /// What the line costs in total: `quantity × unit_price + ship_price`.
    pub fn line_total(&self) -> Money {
        Money::from_minor(
            self.unit_price.minor() * i64::from(self.quantity) + self.ship_price.minor(),
        )
    }
}

/// An order to create in the CRM, built from an IPN by the rules and sent by a connector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Our reference of the Digistore24 order item and payment; unique per import. Written
    /// into `reference_field` so an import with an unknown outcome can be found again.
    pub reference: String,
    /// The CRM field that carries `reference` (the integration's `order_ref_field`).
    pub reference_field: String,
    pub campaign_id: u64,
    pub buyer: Buyer,
    pub address: Address,
    pub items: Vec<OrderItem>,
    /// ISO 4217 code of every amount in this order.
    pub currency: String,
    /// The day Digistore24 says the payment happened, `YYYY-MM-DD` (else the day of receipt).
    /// Informational: the CRM dates an order by its import, so reconciliation searches the
    /// job's lifetime instead (see [`DayWindow`]).
    pub placed_on: String,
    /// Extra target fields (name → value), already rendered; applied last.
    pub extra_fields: Vec<(String, String)>,
    /// The address fields the IPN left empty and the integration's fallback address filled,
    /// in [`AddressField`] order (empty when the IPN had a full address).
    #[serde(default)]
    pub address_fallback: Vec<AddressField>,
}

/// Our reference of one imported Digistore24 payment of one order item, written into the
/// CRM's reference field: `DS24-<order_id>-<item>-<transaction_id>` (the transaction part is
/// left out when the IPN has none). Unique per import, stable across re-deliveries, at most
/// about 40 characters for real ids (Konnektive's `custom*` fields hold 50).
pub fn import_reference(ds24_order_id: &str, item: &str, transaction: Option<&str>) -> String {
    match transaction {
        Some(t) => format!("DS24-{ds24_order_id}-{item}-{t}"),
        None => format!("DS24-{ds24_order_id}-{item}"),
    }
}

/// The earlier import an action (refund, chargeback, cancellation) refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportRef {
    pub ds24_order_id: String,
    /// The order item of the import (`order_item_id`, else the product id).
    pub ds24_item: String,
    /// The payment the import carried (a refund's `parent_transaction_id`); `None` means
    /// the latest import of this order item (e.g. for a cancelled subscription).
    pub payment_transaction: Option<String>,
    /// The CRM field that carries the import's reference (`order_ref_field`).
    pub reference_field: String,
    /// The buyer's e-mail and the campaign: the CRM's search filters.
    pub email: String,
    pub campaign_id: u64,
    /// The first day the import can have happened (`YYYY-MM-DD`, the Digistore24 order date).
    pub since: String,
}

impl ImportRef {
    /// The days searched for the import when an action on it is sent at `now_ms` by a job
    /// created at `created_at_ms`: from `since` (the Digistore24 order date) or the job's
    /// creation day, whichever is earlier (an unreadable `since` counts as the creation day),
    /// to the send day. `explain` shows the same window.
    pub fn lookup_window(&self, created_at_ms: i64, now_ms: i64) -> DayWindow {
        let created = Day::from_unix_ms(created_at_ms);
        DayWindow {
            first: Day::parse_iso(&self.since).unwrap_or(created).min(created),
            last: Day::from_unix_ms(now_ms),
        }
    }

    /// Whether a CRM order carrying `reference` is the import this refers to.
    pub fn matches(&self, reference: &str) -> bool {
        match &self.payment_transaction {
            Some(t) => reference == import_reference(&self.ds24_order_id, &self.ds24_item, Some(t)),
            None => {
                let bare = import_reference(&self.ds24_order_id, &self.ds24_item, None);
                reference == bare
                    || reference
                        .strip_prefix(&bare)
                        .is_some_and(|rest| rest.starts_with('-'))
            }
        }
    }
}

/// A unit of work for a connector, stored as JSON with the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// The order is boxed: it is by far the largest variant payload.
    ImportOrder {
        order: Box<Order>,
        auto_approve: bool,
    },
    /// Record a refund Digistore24 already paid out (no gateway is touched).
    Refund {
        import: ImportRef,
        /// The refunded amount (positive).
        amount: Money,
        /// Digistore24's refund transaction id; kept with the CRM's refund so a refund with
        /// an unknown outcome can be found again.
        ds24_transaction_id: String,
        /// Whether the refund covers the whole imported amount, as far as the IPN tells.
        /// Informational: the connector sends `fullRefund` only when the amount is all that
        /// remains refundable in the CRM.
        full: bool,
    },
    /// Mark the import's transaction as charged back.
    Chargeback {
        import: ImportRef,
        amount: Money,
        /// `YYYY-MM-DD`.
        date: String,
        ds24_transaction_id: String,
    },
    /// Cancel the import's purchases (subscriptions) in the CRM.
    CancelPurchase { import: ImportRef, reason: String },
    /// Cancel the imported order in the CRM.
    CancelOrder { import: ImportRef, reason: String },
    /// Send the IPN on as it came, to a webhook target.
    Forward(Box<Forwarded>),
}

/// An IPN as a webhook target receives it: Digistore24's event name, every field but
/// `sha_sign`, when it was received, and where it came from and went through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forwarded {
    /// The IPN's `event` value, e.g. `on_payment`.
    pub event: String,
    /// When ipn-bridge received the IPN (Unix milliseconds).
    pub received_at_ms: i64,
    /// Every field of the IPN except `sha_sign`.
    pub fields: BTreeMap<String, String>,
    pub source: String,
    pub integration: String,
}

impl Action {
    pub fn kind(&self) -> ActionKind {
        match self {
            Action::ImportOrder { .. } => ActionKind::ImportOrder,
            Action::Refund { .. } => ActionKind::Refund,
            Action::Chargeback { .. } => ActionKind::Chargeback,
            Action::CancelPurchase { .. } => ActionKind::CancelPurchase,
            Action::CancelOrder { .. } => ActionKind::CancelOrder,
            Action::Forward(_) => ActionKind::Forward,
        }
    }

    /// The order this action imports (`None` for actions on an earlier import).
    pub fn reconcile_reference(&self) -> Option<&Order> {
        match self {
            Action::ImportOrder { order, .. } => Some(order),
            _ => None,
        }
    }

    /// The earlier import this action needs (`None` for an import).
    pub fn import_ref(&self) -> Option<&ImportRef> {
        match self {
            Action::ImportOrder { .. } | Action::Forward(_) => None,
            Action::Refund { import, .. }
            | Action::Chargeback { import, .. }
            | Action::CancelPurchase { import, .. }
            | Action::CancelOrder { import, .. } => Some(import),
        }
    }

    /// Whether sending the action twice could do harm: see [`ActionKind::needs_reconcile`].
    pub fn needs_reconcile(&self) -> bool {
        self.kind().needs_reconcile()
    }
}

/// What the target returned for a successful action: the ids kept in the ledger.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub order_id: Option<String>,
    pub customer_id: Option<String>,
    pub purchase_ids: Vec<String>,
    pub transaction_ids: Vec<String>,
}

/// The class of one delivery attempt's result. The retry *decision* is this value; the retry
/// *timing* lives in `delivery::schedule`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done; the receipt goes into the ledger.
    Delivered(Receipt),
    /// Nothing happened in the target; try again later.
    Retryable {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The target refused the request itself; repeating it cannot help.
    Permanent { reason: String },
    /// The target refuses every request (bad login, IP not allow-listed, missing permission).
    TargetDown { reason: String },
    /// The request may have been applied (timeout or cut connection after sending); it must be
    /// reconciled before it is sent again.
    Unknown { reason: String },
}

impl Outcome {
    /// Short stable label for logs, metrics and the attempts table.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Delivered(_) => "delivered",
            Outcome::Retryable { .. } => "retryable",
            Outcome::Permanent { .. } => "permanent",
            Outcome::TargetDown { .. } => "target_down",
            Outcome::Unknown { .. } => "unknown",
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Outcome::Delivered(_) => "",
            Outcome::Retryable { reason, .. }
            | Outcome::Permanent { reason }
            | Outcome::TargetDown { reason }
            | Outcome::Unknown { reason } => reason,
        }
    }
}

/// Everything a connector reports about one attempt: its class and what to keep as evidence.
/// `request` and `response` must already be free of secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptReport {
    pub outcome: Outcome,
    /// The endpoint called, e.g. `order/import`.
    pub endpoint: String,
    pub http_status: Option<u16>,
    /// The request parameters with credentials redacted.
    pub request: String,
    /// The target's answer (truncated), or the transport error.
    pub response: String,
    /// True when the request may have been applied by the target although the outcome is not
    /// `Delivered`: an `Unknown` outcome, and also a 5xx page or a non-JSON body (a proxy may
    /// have answered after the CRM acted). A non-idempotent action (an import) is then
    /// reconciled before it is sent again. False for connect errors and for the CRM's own
    /// `ERROR` envelope, where nothing happened.
    pub maybe_applied: bool,
}

/// Life cycle of a delivery job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for its `next_attempt_at`.
    Pending,
    /// Leased by the dispatcher; a request may be on the wire.
    InFlight,
    /// Finished successfully (ledger written).
    Delivered,
    /// Given up; needs a person.
    Dead,
    /// Waits because an earlier job of the same Digistore24 order is dead; released when
    /// that job is retried or dropped.
    Held,
    /// Dropped by an operator, with a reason.
    Dropped,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Pending,
        JobState::InFlight,
        JobState::Delivered,
        JobState::Dead,
        JobState::Held,
        JobState::Dropped,
    ];

    /// Whether the job will not change again without an operator.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Delivered | JobState::Dropped)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::InFlight => "in_flight",
            JobState::Delivered => "delivered",
            JobState::Dead => "dead",
            JobState::Held => "held",
            JobState::Dropped => "dropped",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The UTC calendar day of a Unix-millisecond time, `YYYY-MM-DD`.
pub fn utc_date(ms: i64) -> String {
    Day::from_unix_ms(ms).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_date_table() {
        for (ms, day) in [
            (0, "1970-01-01"),
            (951_782_400_000, "2000-02-29"),
            (1_741_947_761_000, "2025-03-14"),
            (-86_400_000, "1969-12-31"),
            (4_102_444_799_000, "2099-12-31"),
        ] {
            assert_eq!(utc_date(ms), day, "{ms}");
        }
    }

    #[test]
    fn event_kinds_round_trip_their_ipn_names() {
        for e in OrderEvent::ALL {
            assert_eq!(EventKind::from_ipn(e.ipn_name()), EventKind::Order(e));
            assert_eq!(OrderEvent::from_config_name(e.config_name()), Some(e));
        }
        assert_eq!(EventKind::from_ipn("custom_form"), EventKind::CustomForm);
        assert_eq!(
            EventKind::from_ipn("on_payment_subscription_signup"),
            EventKind::Unknown("on_payment_subscription_signup".into())
        );
    }

    #[test]
    fn the_import_lookup_window_starts_at_the_order_date_or_the_job() {
        const MARCH_14_2025_MS: i64 = 1_741_947_761_000;
        let march = |d: i64| MARCH_14_2025_MS + (d - 14) * 86_400_000;
        let day = |s: &str| Day::parse_iso(s).expect("day");
        let mut import = ImportRef {
            ds24_order_id: "A".into(),
            ds24_item: "1".into(),
            payment_transaction: None,
            reference_field: "custom1".into(),
            email: "a@example.com".into(),
            campaign_id: 12,
            since: "2025-03-14".into(),
        };
        let window = import.lookup_window(march(20), march(22));
        assert_eq!(
            (window.first, window.last),
            (day("2025-03-14"), day("2025-03-22"))
        );
        // An order date after the job's creation (clock skew) or none at all: the creation.
        for since in ["2025-03-30", "not a date"] {
            import.since = since.into();
            let window = import.lookup_window(march(20), march(22));
            assert_eq!(window.first, day("2025-03-20"), "{since}");
        }
    }
}
