//! Review queries and operator commands on the queue: what `ipn-bridge queue …` and
//! `ipn-bridge events …` read and change.
//!
//! These run in the CLI process on its own [`Store`] opened on the daemon's file; every
//! method is one closure on the writer thread, so each command is one SQLite transaction
//! (`BEGIN IMMEDIATE`). A state change therefore checks and writes under the database lock:
//! a job the dispatcher leases a millisecond earlier is seen as `in_flight` and refused, never
//! overwritten.
//!
//! Decisions:
//! - **All or nothing.** `retry` and `drop` with several ids change nothing when any id is
//!   unknown ([`StoreError::NotFound`]) or refused ([`StoreError::Invalid`]); the error lists
//!   every problem, one per line. Ids are handled in ascending order, so `retry 5 6` with 6
//!   held behind 5 works.
//! - **Never twice.** A delivered job cannot be retried (its ledger entry proves the target
//!   has it); a dropped job is final too. An `in_flight` job is refused by both commands: the
//!   dispatcher's result would overwrite the change.
//! - **Order per Digistore24 order.** A dead or held job is not retried while an earlier job
//!   of the same integration and order is still dead or held (a refund must not overtake its
//!   import): retry or drop the earlier job first. After a retry or drop, every held job of
//!   the order with no dead job before it is released to `pending` (the dispatcher's lease
//!   keeps them in order behind the retried job).
//! - **Audit.** Every retry, drop, release and purge writes an `operator_actions` row (time,
//!   user, command, job, reason) in the same transaction as the change.
//! - **Purge keeps what matters.** See [`Store::purge_history_batch`]: only attempt rows and
//!   raw bodies of old *final* jobs go; `ipns` rows (the business keys that make a repeated
//!   IPN a duplicate), jobs, routes, the ledger and the audit trail are never deleted. A purged
//!   raw body is an empty blob (a stored IPN never has an empty body otherwise).

use super::{AttemptRow, JobRow, LedgerRow, StoreError};
use crate::domain::{JobId, JobState};

/// Filter of [`Store::review_jobs`].
#[derive(Debug, Clone, Default)]
pub struct ReviewFilter {
    pub state: Option<JobState>,
    pub integration: Option<String>,
    /// Only jobs created at or after this time (Unix ms).
    pub since: Option<i64>,
    pub limit: Option<u32>,
}

/// A job with the IPN facts a person needs to recognise it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobListing {
    pub job: JobRow,
    pub event: String,
    pub ds24_order_id: Option<String>,
    pub product_id: Option<String>,
}

/// Everything stored about an IPN except its raw body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpnDetail {
    pub id: i64,
    pub source: String,
    pub event: String,
    pub order_id: Option<String>,
    pub order_item_id: Option<String>,
    pub product_id: Option<String>,
    pub transaction_id: Option<String>,
    /// Unmasked; the CLI masks it for display.
    pub buyer_email: Option<String>,
    pub amount: Option<String>,
    pub currency: Option<String>,
    pub received_at: i64,
    /// Size of the stored raw body; 0 once purged.
    pub body_bytes: u64,
}

/// One row of the `operator_actions` audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorActionRow {
    pub id: i64,
    pub at: i64,
    pub user: String,
    pub command: String,
    pub job_id: Option<i64>,
    pub ipn_id: Option<i64>,
    pub reason: String,
}

/// A job with its IPN, attempts, ledger entry and audit trail (`queue show`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobDetail {
    pub job: JobRow,
    pub ipn: IpnDetail,
    pub attempts: Vec<AttemptRow>,
    pub ledger: Option<LedgerRow>,
    pub actions: Vec<OperatorActionRow>,
}

/// One integration's routing decision for an IPN, with the job's current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRow {
    pub integration: String,
    /// `job` or `skipped`.
    pub decision: String,
    pub reason: String,
    pub job_id: Option<i64>,
    pub job_state: Option<String>,
    pub decided_at: i64,
}

/// An IPN with how it was routed (`events list` / `events show`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventListing {
    pub ipn: IpnDetail,
    pub routes: Vec<RouteRow>,
}

/// Who runs an operator command, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    pub user: String,
    pub reason: String,
}

/// Which jobs `queue retry` takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetrySelection {
    Ids(Vec<JobId>),
    /// Every dead job, optionally of one integration.
    Dead {
        integration: Option<String>,
    },
}

/// What `retry` or `drop` changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueChange {
    /// The jobs named (or selected) and changed, ascending.
    pub changed: Vec<i64>,
    /// Held jobs released to `pending` as a consequence, ascending.
    pub released: Vec<i64>,
}

impl QueueChange {
    /// The answer of a `retry` or `drop` once every named job was looked at: `NotFound`
    /// (listing the refusals too) when a job does not exist, `Invalid` when one was refused,
    /// else the change with its released jobs ascending, once each and without the jobs named.
    pub(crate) fn conclude(
        mut self,
        mut missing: Vec<String>,
        refused: Vec<String>,
    ) -> Result<QueueChange, StoreError> {
        if !missing.is_empty() {
            missing.extend(refused);
            return Err(StoreError::NotFound(missing.join("\n")));
        }
        if !refused.is_empty() {
            return Err(StoreError::Invalid(refused.join("\n")));
        }
        self.released.sort_unstable();
        self.released.dedup();
        let changed = &self.changed;
        self.released.retain(|id| !changed.contains(id));
        Ok(self)
    }
}

/// An operator's change of named jobs; what may be changed is decided here for both
/// backends, which only read and write the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueCommand {
    Retry,
    Drop,
}

impl QueueCommand {
    /// The command's name (`queue retry`, `queue drop`; also the operator action recorded).
    pub(crate) fn name(self) -> &'static str {
        match self {
            QueueCommand::Retry => "retry",
            QueueCommand::Drop => "drop",
        }
    }

    pub(crate) fn past(self) -> &'static str {
        match self {
            QueueCommand::Retry => "retried",
            QueueCommand::Drop => "dropped",
        }
    }

    /// Why job `id` in `state` may not be changed at all, if it may not.
    pub(crate) fn refusal(self, id: i64, state: JobState) -> Option<String> {
        match state {
            JobState::Delivered => Some(format!(
                "job {id} was delivered (its ledger entry proves it); it is never sent twice and \
                 cannot be {}",
                self.past()
            )),
            JobState::Dropped => Some(format!("job {id} was dropped by an operator; it is final")),
            JobState::InFlight => Some(format!(
                "job {id} is being delivered right now; look again in a moment \
                 (`ipn-bridge queue show {id}`)"
            )),
            JobState::Pending | JobState::Dead | JobState::Held => None,
        }
    }

    /// Whether the job must first be checked for an earlier dead or held job of its order (a
    /// retry of a dead or held job; see [`QueueCommand::waits_behind`]).
    pub(crate) fn checks_earlier_jobs(self, state: JobState) -> bool {
        self == QueueCommand::Retry && matches!(state, JobState::Dead | JobState::Held)
    }

    /// The refusal of job `id`, which waits behind job `earlier` (in `earlier_state`).
    pub(crate) fn waits_behind(self, id: i64, earlier: i64, earlier_state: &str) -> String {
        format!(
            "job {id} waits behind job {earlier} ({earlier_state}) of the same Digistore24 \
             order; {} job {earlier} first (that releases {id}) or drop it",
            self.name()
        )
    }

    /// The reason recorded for a held job released because job `by` was changed.
    pub(crate) fn release_reason(self, by: i64) -> String {
        format!(
            "released: job {by} of the same Digistore24 order was {}",
            self.past()
        )
    }
}

/// What one purge batch removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeCount {
    pub attempts_deleted: u64,
    pub bodies_cleared: u64,
}

pub(crate) const FINAL_STATES_SQL: &str = "('delivered', 'dropped')";

pub(crate) const IPN_COLUMNS: &str = "i.id, i.source, i.event, i.order_id, i.order_item_id, i.product_id, \
     i.transaction_id, i.buyer_email, i.amount, i.currency, i.received_at, length(i.raw_body)";
