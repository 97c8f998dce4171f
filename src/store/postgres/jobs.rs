//! The inbox, routing, jobs, attempts and the ledger on PostgreSQL (the methods of
//! [`crate::store::sqlite`]'s `mod.rs`, same semantics: SQLite is the specification).
//!
//! Decisions for several instances on one database (READ COMMITTED, PostgreSQL's default):
//! - **Dedupe**: `INSERT … ON CONFLICT (source, business_key) DO NOTHING RETURNING id`. A
//!   second instance inserting the same IPN waits on the unique index for the first one's
//!   transaction; after its commit the insert does nothing and the next statement (a new
//!   snapshot) reads the committed id. Both answer with the same id, one `Stored`, one
//!   `Duplicate`.
//! - **One Digistore24 order at a time** ([`lock_order`]): what decides whether a job is
//!   held (an earlier dead job of its order) is read and written by different transactions
//!   (an ingest inserting a job, a dead letter holding the jobs behind it, a replay releasing
//!   them). On SQLite they are serialised by the one writer; here each takes the
//!   transaction-level advisory lock of the `(integration, order_key)` it changes first, so
//!   a job can never be inserted `pending` behind a job that died at the same moment, and
//!   the ids of one order are given in the order their transactions commit.
//! - **Leases**: `lease_due` selects `FOR UPDATE OF j SKIP LOCKED`: two leasers never take
//!   the same job (a row another leaser holds is skipped; one it already changed is checked
//!   again and no longer `pending`).
//! - **A lost lease changes nothing**: `finish_attempt` and `reconciled_absent` apply only
//!   while the attempt is open and its job `in_flight` ([`not_open`]), so an instance that
//!   lost its dispatcher lock cannot overwrite what the instance that recovered the job did.
//! - **Lock order**: advisory order lock, then attempt rows, then job rows (so no two of
//!   these operations wait on each other in a circle).

use std::collections::BTreeMap;

use deadpool_postgres::Transaction;
use tokio_postgres::Row;
use tokio_postgres::types::FromSql;

use super::{PgStore, pg_error};
use crate::domain::{ActionKind, AttemptReport, EventId, ImportRef, JobId, JobState, Receipt};
use crate::store::alerts::NewAlert;
use crate::store::{
    AttemptRow, Disposition, Ingested, IpnRow, JOB_COLUMNS, JobFilter, JobRow, LeasedJob,
    LedgerRow, NewIpn, NewJob, NewRoute, PaymentRoute, Rerouted, RouteDecision, StoreError,
    StoredIpn,
};

impl PgStore {
    /// Stores an IPN with its routing decisions and jobs in one transaction; a repeat of a
    /// stored IPN writes nothing.
    pub async fn ingest(&self, ipn: NewIpn) -> Result<Ingested, StoreError> {
        self.count(
            async {
                let mut client = self.client().await?;
                let tx = client.transaction().await.map_err(pg_error)?;
                let out = ingest(&tx, &ipn).await?;
                tx.commit().await.map_err(pg_error)?;
                Ok(out)
            }
            .await,
        )
    }

    /// After a crash: every attempt left open is marked `interrupted`, and its job goes back
    /// to `pending` at `retry_at`, flagged for reconciliation when its action is not safe to
    /// repeat ([`ActionKind::needs_reconcile`], the one list of such kinds: an import, a
    /// refund). Returns the number of jobs recovered.
    pub async fn recover_interrupted(&self, now: i64, retry_at: i64) -> Result<u64, StoreError> {
        let _ = (now, retry_at);
        Err(StoreError::Internal(
            "recover_interrupted: not yet on PostgreSQL".into(),
        ))
    }

    /// Leases up to `limit` due jobs of `target`: each becomes `in_flight` with a new open
    /// attempt row. A job waits while an earlier job of the same integration and Digistore24
    /// order is unfinished.
    pub async fn lease_due(
        &self,
        target: &str,
        now: i64,
        limit: usize,
    ) -> Result<Vec<LeasedJob>, StoreError> {
        let _ = (target, now, limit);
        Err(StoreError::Internal(
            "lease_due: not yet on PostgreSQL".into(),
        ))
    }

    /// The earliest `next_attempt_at` of the target's pending jobs.
    pub async fn next_due_at(&self, target: &str) -> Result<Option<i64>, StoreError> {
        let _ = (target,);
        Err(StoreError::Internal(
            "next_due_at: not yet on PostgreSQL".into(),
        ))
    }

    /// A reconcile attempt found nothing: closes it and opens a send attempt for the same
    /// lease. Returns the new attempt.
    pub async fn reconciled_absent(
        &self,
        job: JobId,
        attempt_id: i64,
        report: AttemptReport,
        now: i64,
    ) -> Result<(i64, u32), StoreError> {
        let _ = (job, attempt_id, report, now);
        Err(StoreError::Internal(
            "reconciled_absent: not yet on PostgreSQL".into(),
        ))
    }

    /// Records the end of an attempt and moves its job on. `alert` (a dead letter's) is
    /// written in the same transaction: a job is never dead without its alert, nor an alert
    /// recorded for a job that is not.
    pub async fn finish_attempt(
        &self,
        job: JobId,
        attempt_id: i64,
        report: AttemptReport,
        disposition: Disposition,
        alert: Option<NewAlert>,
        now: i64,
    ) -> Result<(), StoreError> {
        let _ = (job, attempt_id, report, disposition, alert, now);
        Err(StoreError::Internal(
            "finish_attempt: not yet on PostgreSQL".into(),
        ))
    }

    pub async fn job(&self, id: JobId) -> Result<JobRow, StoreError> {
        let _ = (id,);
        Err(StoreError::Internal("job: not yet on PostgreSQL".into()))
    }

    pub async fn list_jobs(&self, filter: JobFilter) -> Result<Vec<JobRow>, StoreError> {
        self.count(
            async {
                let client = self.client().await?;
                let stmt = client
                    .prepare_cached(&format!(
                        "SELECT {JOB_COLUMNS} FROM jobs
                         WHERE ($1::text IS NULL OR state = $1)
                           AND ($2::text IS NULL OR integration = $2)
                         ORDER BY id LIMIT $3"
                    ))
                    .await
                    .map_err(pg_error)?;
                let rows = client
                    .query(
                        &stmt,
                        &[
                            &filter.state.map(JobState::as_str),
                            &filter.integration,
                            &filter.limit.map(i64::from),
                        ],
                    )
                    .await
                    .map_err(pg_error)?;
                rows.iter().map(job_row).collect()
            }
            .await,
        )
    }

    pub async fn jobs_of_ipn(&self, ipn: EventId) -> Result<Vec<JobRow>, StoreError> {
        let _ = (ipn,);
        Err(StoreError::Internal(
            "jobs_of_ipn: not yet on PostgreSQL".into(),
        ))
    }

    pub async fn attempts(&self, job: JobId) -> Result<Vec<AttemptRow>, StoreError> {
        let _ = (job,);
        Err(StoreError::Internal(
            "attempts: not yet on PostgreSQL".into(),
        ))
    }

    /// Every ledger entry, oldest first.
    pub async fn ledger(&self) -> Result<Vec<LedgerRow>, StoreError> {
        Err(StoreError::Internal("ledger: not yet on PostgreSQL".into()))
    }

    /// Stored IPNs, oldest first.
    pub async fn list_ipns(&self, limit: Option<u32>) -> Result<Vec<IpnRow>, StoreError> {
        self.count(
            async {
                let client = self.client().await?;
                let stmt = client
                    .prepare_cached(
                        "SELECT id, source, event, order_id, product_id, transaction_id,
                                received_at
                         FROM ipns ORDER BY id LIMIT $1",
                    )
                    .await
                    .map_err(pg_error)?;
                let rows = client
                    .query(&stmt, &[&limit.map(i64::from)])
                    .await
                    .map_err(pg_error)?;
                rows.iter()
                    .map(|r| {
                        Ok(IpnRow {
                            id: col(r, 0)?,
                            source: col(r, 1)?,
                            event: col(r, 2)?,
                            order_id: col(r, 3)?,
                            product_id: col(r, 4)?,
                            transaction_id: col(r, 5)?,
                            received_at: col(r, 6)?,
                        })
                    })
                    .collect()
            }
            .await,
        )
    }

    /// Number of jobs per state.
    pub async fn job_counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        Err(StoreError::Internal(
            "job_counts: not yet on PostgreSQL".into(),
        ))
    }

    /// The routing decisions recorded for an IPN: `(integration, decision, reason)`.
    pub async fn routes_of_ipn(
        &self,
        ipn: EventId,
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        self.count(
            async {
                let client = self.client().await?;
                let stmt = client
                    .prepare_cached(
                        "SELECT integration, decision, reason FROM routes
                         WHERE ipn_id = $1 ORDER BY id",
                    )
                    .await
                    .map_err(pg_error)?;
                let rows = client.query(&stmt, &[&ipn.0]).await.map_err(pg_error)?;
                rows.iter()
                    .map(|r| Ok((col(r, 0)?, col(r, 1)?, col(r, 2)?)))
                    .collect()
            }
            .await,
        )
    }

    /// The delivered import an action refers to, from the ledger: the latest import of the
    /// order item in `integration` whose reference `import` matches.
    pub async fn ledger_import(
        &self,
        integration: &str,
        import: &ImportRef,
    ) -> Result<Option<Receipt>, StoreError> {
        let _ = (integration, import);
        Err(StoreError::Internal(
            "ledger_import: not yet on PostgreSQL".into(),
        ))
    }

    /// Every delivered import of Digistore24 order `ds24_order_id` in `integration`, newest
    /// first: the candidates a refund or chargeback of the order chooses from.
    pub async fn ledger_imports(
        &self,
        integration: &str,
        ds24_order_id: &str,
    ) -> Result<Vec<LedgerRow>, StoreError> {
        let _ = (integration, ds24_order_id);
        Err(StoreError::Internal(
            "ledger_imports: not yet on PostgreSQL".into(),
        ))
    }

    /// How `integration` last routed the payment IPN of Digistore24 order `ds24_order_id`,
    /// item `item` (its `order_item_id`, else its product id) whose `transaction_id` or
    /// `parent_transaction_id` is `payment`; `None` when no such payment IPN was received.
    pub async fn payment_route(
        &self,
        integration: &str,
        ds24_order_id: &str,
        item: &str,
        payment: &str,
    ) -> Result<Option<PaymentRoute>, StoreError> {
        let _ = (integration, ds24_order_id, item, payment);
        Err(StoreError::Internal(
            "payment_route: not yet on PostgreSQL".into(),
        ))
    }

    /// A stored IPN by id.
    pub async fn ipn(&self, id: EventId) -> Result<StoredIpn, StoreError> {
        let _ = (id,);
        Err(StoreError::Internal("ipn: not yet on PostgreSQL".into()))
    }

    /// Records new routing decisions for a stored IPN (a replay with today's
    /// configuration). A job is created only where the IPN has none for that integration
    /// yet, so a replay can never repeat an import. An existing job that is dead or dropped
    /// (a wrong product map made Konnektive refuse it, say) is re-routed in place: it takes
    /// today's action and becomes pending, keeping its id, its attempts and any pending
    /// reconciliation, so an earlier attempt that may have reached Konnektive is still looked
    /// up first. Any other existing job is reported and kept. Recorded in `operator_actions`.
    pub async fn add_routes(
        &self,
        ipn: EventId,
        routes: Vec<NewRoute>,
        user: String,
        now: i64,
    ) -> Result<Vec<Rerouted>, StoreError> {
        let _ = (ipn, routes, user, now);
        Err(StoreError::Internal(
            "add_routes: not yet on PostgreSQL".into(),
        ))
    }

    /// A cheap real write that proves the database file accepts commits (for health
    /// checks): page 1 of the file is rewritten (its `application_id`) and committed with an
    /// fsync like any IPN, and the writer checks afterwards that the file is still the one
    /// at the path. The error says why not.
    pub async fn probe_writable(&self) -> Result<(), StoreError> {
        Err(StoreError::Internal(
            "probe_writable: not yet on PostgreSQL".into(),
        ))
    }
}

/// A column of a row; a type mismatch is a bug of ours (`Internal`), not an outage.
fn col<'a, T: FromSql<'a>>(row: &'a Row, i: usize) -> Result<T, StoreError> {
    row.try_get(i)
        .map_err(|e| StoreError::Internal(format!("PostgreSQL row, column {i}: {e}")))
}

/// An `INTEGER` column that holds a count or a number that is never negative.
fn col_u32(row: &Row, i: usize) -> Result<u32, StoreError> {
    let v: i32 = col(row, i)?;
    u32::try_from(v).map_err(|_| StoreError::Internal(format!("negative count {v} in column {i}")))
}

async fn prepare(tx: &Transaction<'_>, sql: &str) -> Result<tokio_postgres::Statement, StoreError> {
    tx.prepare_cached(sql).await.map_err(pg_error)
}

/// A row of [`JOB_COLUMNS`].
fn job_row(r: &Row) -> Result<JobRow, StoreError> {
    Ok(JobRow {
        id: col(r, 0)?,
        ipn_id: col(r, 1)?,
        integration: col(r, 2)?,
        target: col(r, 3)?,
        action: col(r, 4)?,
        order_key: col(r, 5)?,
        state: col(r, 6)?,
        attempts: col_u32(r, 7)?,
        needs_reconcile: col(r, 8)?,
        next_attempt_at: col(r, 9)?,
        created_at: col(r, 10)?,
        updated_at: col(r, 11)?,
        last_error: col(r, 12)?,
    })
}

/// The advisory lock class (first key of `pg_advisory_xact_lock(int4, int4)`, a key space
/// apart from the one-key locks such as the migration lock) of "one Digistore24 order of
/// one integration"; the second key is a hash of the pair (a collision only makes two
/// orders wait for each other). "ipno" in ASCII.
const ORDER_LOCK_CLASS: i32 = 0x6970_6e6f;

/// Takes, until the end of `tx`, the lock of the jobs of Digistore24 order `order_key` in
/// `integration` (see the module doc). Every transaction that makes a job of an order
/// `held`, or releases or re-opens one, or inserts one, takes it first; several are taken
/// in sorted order.
pub(super) async fn lock_order(
    tx: &Transaction<'_>,
    integration: &str,
    order_key: &str,
) -> Result<(), StoreError> {
    let stmt = prepare(
        tx,
        "SELECT pg_advisory_xact_lock($1::int4, hashtext($2::text || chr(31) || $3::text))",
    )
    .await?;
    tx.execute(&stmt, &[&ORDER_LOCK_CLASS, &integration, &order_key])
        .await
        .map_err(pg_error)?;
    Ok(())
}

/// [`lock_order`] for every `(integration, order_key)` of the job routes, sorted.
async fn lock_orders_of(tx: &Transaction<'_>, routes: &[NewRoute]) -> Result<(), StoreError> {
    let mut keys: Vec<(&str, &str)> = routes
        .iter()
        .filter_map(|r| match &r.decision {
            RouteDecision::Job { job, .. } => {
                Some((r.integration.as_str(), job.order_key.as_str()))
            }
            RouteDecision::Skip { .. } => None,
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    for (integration, order_key) in keys {
        lock_order(tx, integration, order_key).await?;
    }
    Ok(())
}

async fn ingest(tx: &Transaction<'_>, ipn: &NewIpn) -> Result<Ingested, StoreError> {
    let insert = prepare(
        tx,
        "INSERT INTO ipns (source, business_key, event, order_id, order_item_id, product_id,
                           transaction_id, buyer_email, amount, currency, received_at, raw_body,
                           parent_transaction_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (source, business_key) DO NOTHING
         RETURNING id",
    )
    .await?;
    let inserted = tx
        .query_opt(
            &insert,
            &[
                &ipn.source,
                &ipn.business_key,
                &ipn.event,
                &ipn.order_id,
                &ipn.order_item_id,
                &ipn.product_id,
                &ipn.transaction_id,
                &ipn.buyer_email,
                &ipn.amount,
                &ipn.currency,
                &ipn.received_at,
                &ipn.raw_body,
                &ipn.parent_transaction_id,
            ],
        )
        .await
        .map_err(pg_error)?;
    let Some(inserted) = inserted else {
        // The conflicting row is committed (the insert waited for it), so this statement's
        // snapshot sees it.
        let existing = prepare(
            tx,
            "SELECT id FROM ipns WHERE source = $1 AND business_key = $2",
        )
        .await?;
        let row = tx
            .query_opt(&existing, &[&ipn.source, &ipn.business_key])
            .await
            .map_err(pg_error)?
            .ok_or_else(|| {
                StoreError::Internal("an IPN refused as a duplicate is not in the database".into())
            })?;
        return Ok(Ingested::Duplicate {
            ipn_id: EventId(col(&row, 0)?),
        });
    };
    let ipn_id: i64 = col(&inserted, 0)?;
    lock_orders_of(tx, &ipn.routes).await?;
    let mut jobs = Vec::new();
    for route in &ipn.routes {
        let (decision, reason, job_id) = match &route.decision {
            RouteDecision::Skip { reason } => ("skipped", reason.as_str(), None),
            RouteDecision::Job { job, reason } => {
                let id = insert_job(tx, ipn_id, &route.integration, job, ipn.received_at).await?;
                jobs.push(id);
                ("job", reason.as_str(), Some(id.0))
            }
        };
        insert_route(
            tx,
            ipn_id,
            &route.integration,
            decision,
            reason,
            job_id,
            ipn.received_at,
        )
        .await?;
    }
    for alert in &ipn.alerts {
        let alert = crate::store::alerts::with_event_id(alert, EventId(ipn_id));
        super::alerts::insert_alert(tx, &alert).await?;
    }
    Ok(Ingested::Stored {
        ipn_id: EventId(ipn_id),
        jobs,
    })
}

async fn insert_route(
    tx: &Transaction<'_>,
    ipn_id: i64,
    integration: &str,
    decision: &str,
    reason: &str,
    job_id: Option<i64>,
    now: i64,
) -> Result<(), StoreError> {
    let stmt = prepare(
        tx,
        "INSERT INTO routes (ipn_id, integration, decision, reason, job_id, decided_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .await?;
    tx.execute(
        &stmt,
        &[&ipn_id, &integration, &decision, &reason, &job_id, &now],
    )
    .await
    .map_err(pg_error)?;
    Ok(())
}

/// Inserts a job, `held` when [`hold_reason`] says so. The caller holds the order's lock.
async fn insert_job(
    tx: &Transaction<'_>,
    ipn_id: i64,
    integration: &str,
    job: &NewJob,
    now: i64,
) -> Result<JobId, StoreError> {
    let payload = serde_json::to_string(&job.action)?;
    let hold = hold_reason(tx, integration, &job.order_key, job.action.kind(), i64::MAX).await?;
    let stmt = prepare(
        tx,
        "INSERT INTO jobs (ipn_id, integration, target, action, payload, order_key, state,
                           next_attempt_at, created_at, updated_at, last_error)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10)
         RETURNING id",
    )
    .await?;
    let state = if hold.is_some() { "held" } else { "pending" };
    let row = tx
        .query_one(
            &stmt,
            &[
                &ipn_id,
                &integration,
                &job.target,
                &job.action.kind().config_name(),
                &payload,
                &job.order_key,
                &state,
                &job.not_before,
                &now,
                &hold,
            ],
        )
        .await
        .map_err(pg_error)?;
    Ok(JobId(col(&row, 0)?))
}

/// Why a new job with action `kind` of `(integration, order_key)` must be held: the first
/// dead earlier job of the same Digistore24 order that it depends on, with its error (the
/// rule of the SQLite backend's `hold_reason`: an import never waits for an earlier refund,
/// chargeback or cancellation).
async fn hold_reason(
    tx: &Transaction<'_>,
    integration: &str,
    order_key: &str,
    kind: ActionKind,
    before: i64,
) -> Result<Option<String>, StoreError> {
    let stmt = prepare(
        tx,
        "SELECT 'held: job ' || id || ' of the same Digistore24 order is dead'
                || COALESCE(' (' || last_error || ')', '')
         FROM jobs
         WHERE integration = $1 AND order_key = $2 AND id < $3 AND state = 'dead'
           AND ($4 <> 'import_order' OR action = 'import_order')
         ORDER BY id LIMIT 1",
    )
    .await?;
    let row = tx
        .query_opt(
            &stmt,
            &[&integration, &order_key, &before, &kind.config_name()],
        )
        .await
        .map_err(pg_error)?;
    row.map(|r| col(&r, 0)).transpose()
}
