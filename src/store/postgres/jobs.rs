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

use super::rows::{col, col_u32, job_row, ledger_row};
use super::{PgStore, pg_error};
use crate::domain::{
    Action, ActionKind, AttemptReport, EventId, ImportRef, JobId, JobState, Receipt,
};
use crate::store::alerts::NewAlert;
use crate::store::{
    AttemptKind, AttemptRow, Disposition, Ingested, IpnRow, JOB_COLUMNS, JobFilter, JobRow,
    LEDGER_COLUMNS, LeasedJob, LedgerRow, NewIpn, NewJob, NewRoute, PaymentRoute, ReplayStep,
    Rerouted, RouteDecision, StoreError, StoredIpn, reconciled_kind_names, replayed_route,
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
        self.count(
            async {
                let unsafe_kinds = reconciled_kind_names();
                let mut client = self.client().await?;
                let tx = client.transaction().await.map_err(pg_error)?;
                // One statement, so the attempts it closes and the jobs it moves are read in
                // one snapshot: a lease or a finish committing meanwhile is either wholly
                // seen or not at all. The uncorrelated `(SELECT count(*) FROM closed)` makes
                // the attempts be closed before any job row is locked (the lock order of the
                // module doc).
                let stmt = prepare(
                    &tx,
                    "WITH closed AS (
                         UPDATE attempts SET outcome = 'interrupted', finished_at = $1,
                                reason = 'the process stopped while this attempt was running'
                         WHERE outcome IS NULL
                         RETURNING job_id)
                     UPDATE jobs SET state = 'pending', next_attempt_at = $2, updated_at = $1,
                            needs_reconcile = CASE
                                WHEN action = ANY($3::text[]) THEN TRUE
                                ELSE needs_reconcile END,
                            last_error = 'interrupted by a restart'
                     WHERE state = 'in_flight' AND (SELECT count(*) FROM closed) >= 0",
                )
                .await?;
                let n = tx
                    .execute(&stmt, &[&now, &retry_at, &unsafe_kinds])
                    .await
                    .map_err(pg_error)?;
                tx.commit().await.map_err(pg_error)?;
                Ok(n)
            }
            .await,
        )
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
        self.count(
            async {
                let limit = i64::try_from(limit)
                    .map_err(|_| StoreError::Invalid(format!("lease limit {limit} too large")))?;
                let mut client = self.client().await?;
                let tx = client.transaction().await.map_err(pg_error)?;
                let leased = lease_due(&tx, target, now, limit).await?;
                tx.commit().await.map_err(pg_error)?;
                Ok(leased)
            }
            .await,
        )
    }

    /// The earliest `next_attempt_at` of the target's pending jobs.
    pub async fn next_due_at(&self, target: &str) -> Result<Option<i64>, StoreError> {
        self.count(
            async {
                let client = self.client().await?;
                let stmt = client
                    .prepare_cached(
                        "SELECT MIN(next_attempt_at) FROM jobs
                         WHERE target = $1 AND state = 'pending'",
                    )
                    .await
                    .map_err(pg_error)?;
                let row = client
                    .query_one(&stmt, &[&target])
                    .await
                    .map_err(pg_error)?;
                col(&row, 0)
            }
            .await,
        )
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
        self.count(
            async {
                let mut client = self.client().await?;
                let tx = client.transaction().await.map_err(pg_error)?;
                close_open_attempt(&tx, job, attempt_id, now, "absent", &report).await?;
                let stmt = prepare(
                    &tx,
                    "UPDATE jobs SET needs_reconcile = FALSE, attempts = attempts + 1,
                            updated_at = $2
                     WHERE id = $1 AND state = 'in_flight'
                     RETURNING attempts",
                )
                .await?;
                let row = tx
                    .query_opt(&stmt, &[&job.0, &now])
                    .await
                    .map_err(pg_error)?
                    .ok_or_else(|| not_open(job, attempt_id))?;
                let number = col_u32(&row, 0)?;
                let id = open_attempt(&tx, job, number, AttemptKind::Send, now).await?;
                tx.commit().await.map_err(pg_error)?;
                Ok((id, number))
            }
            .await,
        )
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
        self.count(
            async {
                let mut client = self.client().await?;
                let tx = client.transaction().await.map_err(pg_error)?;
                finish_attempt(&tx, job, attempt_id, &report, &disposition, now).await?;
                if let Some(alert) = &alert {
                    super::alerts::insert_alert(&tx, alert).await?;
                }
                tx.commit().await.map_err(pg_error)
            }
            .await,
        )
    }

    pub async fn job(&self, id: JobId) -> Result<JobRow, StoreError> {
        self.count(
            async {
                let client = self.client().await?;
                let stmt = client
                    .prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
                    .await
                    .map_err(pg_error)?;
                let row = client.query_opt(&stmt, &[&id.0]).await.map_err(pg_error)?;
                match row {
                    Some(row) => job_row(&row),
                    None => Err(StoreError::NotFound(format!("job {id}"))),
                }
            }
            .await,
        )
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
        self.count(
            async {
                let client = self.client().await?;
                let stmt = client
                    .prepare_cached(&format!(
                        "SELECT {JOB_COLUMNS} FROM jobs WHERE ipn_id = $1 ORDER BY id"
                    ))
                    .await
                    .map_err(pg_error)?;
                let rows = client.query(&stmt, &[&ipn.0]).await.map_err(pg_error)?;
                rows.iter().map(job_row).collect()
            }
            .await,
        )
    }

    pub async fn attempts(&self, job: JobId) -> Result<Vec<AttemptRow>, StoreError> {
        self.count(
            async {
                let client = self.client().await?;
                let stmt = client
                    .prepare_cached(
                        "SELECT id, job_id, number, kind, started_at, finished_at, outcome,
                                endpoint, http_status, request, response, reason
                         FROM attempts WHERE job_id = $1 ORDER BY id",
                    )
                    .await
                    .map_err(pg_error)?;
                let rows = client.query(&stmt, &[&job.0]).await.map_err(pg_error)?;
                rows.iter()
                    .map(|r| {
                        let status: Option<i32> = col(r, 8)?;
                        Ok(AttemptRow {
                            id: col(r, 0)?,
                            job_id: col(r, 1)?,
                            number: col_u32(r, 2)?,
                            kind: col(r, 3)?,
                            started_at: col(r, 4)?,
                            finished_at: col(r, 5)?,
                            outcome: col(r, 6)?,
                            endpoint: col(r, 7)?,
                            http_status: status
                                .map(|s| {
                                    u16::try_from(s).map_err(|_| {
                                        StoreError::Internal(format!("HTTP status {s} stored"))
                                    })
                                })
                                .transpose()?,
                            request: col(r, 9)?,
                            response: col(r, 10)?,
                            reason: col(r, 11)?,
                        })
                    })
                    .collect()
            }
            .await,
        )
    }

    /// Every ledger entry, oldest first.
    pub async fn ledger(&self) -> Result<Vec<LedgerRow>, StoreError> {
        self.count(
            async {
                let client = self.client().await?;
                let stmt = client
                    .prepare_cached(&format!(
                        "SELECT {LEDGER_COLUMNS} FROM ledger ORDER BY job_id"
                    ))
                    .await
                    .map_err(pg_error)?;
                let rows = client.query(&stmt, &[]).await.map_err(pg_error)?;
                rows.iter().map(ledger_row).collect()
            }
            .await,
        )
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

    /// Number of jobs per state, from the counts the triggers of schema migrations 3 and 4
    /// keep: a few rows per state, never a count of every job (issue 13). At most once every
    /// [`super::counts::FOLD_EVERY`] the rows of ended connections are folded first.
    pub async fn job_counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        self.fold_job_counts_if_due().await;
        self.count(
            async {
                let client = self.client().await?;
                let stmt = client
                    .prepare_cached(JOB_COUNTS_SQL)
                    .await
                    .map_err(pg_error)?;
                let rows = client.query(&stmt, &[]).await.map_err(pg_error)?;
                rows.iter()
                    .map(|r| {
                        let n: i64 = col(r, 1)?;
                        let n = u64::try_from(n)
                            .map_err(|_| StoreError::Internal(format!("negative count {n}")))?;
                        Ok((col(r, 0)?, n))
                    })
                    .collect()
            }
            .await,
        )
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
        self.count(
            async {
                let client = self.client().await?;
                let stmt = client
                    .prepare_cached(
                        "SELECT reference, target_order_id, target_customer_id, purchase_ids,
                                transaction_ids
                         FROM ledger
                         WHERE integration = $1 AND ds24_order_id = $2
                           AND action = 'import_order'
                         ORDER BY job_id DESC",
                    )
                    .await
                    .map_err(pg_error)?;
                let rows = client
                    .query(&stmt, &[&integration, &import.ds24_order_id])
                    .await
                    .map_err(pg_error)?;
                for r in &rows {
                    let reference: String = col(r, 0)?;
                    if import.matches(&reference) {
                        let purchases: String = col(r, 3)?;
                        let transactions: String = col(r, 4)?;
                        return Ok(Some(Receipt {
                            order_id: col(r, 1)?,
                            customer_id: col(r, 2)?,
                            purchase_ids: serde_json::from_str(&purchases)?,
                            transaction_ids: serde_json::from_str(&transactions)?,
                        }));
                    }
                }
                Ok(None)
            }
            .await,
        )
    }

    /// Every delivered import of Digistore24 order `ds24_order_id` in `integration`, newest
    /// first: the candidates a refund or chargeback of the order chooses from.
    pub async fn ledger_imports(
        &self,
        integration: &str,
        ds24_order_id: &str,
    ) -> Result<Vec<LedgerRow>, StoreError> {
        self.count(
            async {
                let client = self.client().await?;
                let stmt = client
                    .prepare_cached(&format!(
                        "SELECT {LEDGER_COLUMNS} FROM ledger
                         WHERE integration = $1 AND ds24_order_id = $2
                           AND action = 'import_order'
                         ORDER BY job_id DESC"
                    ))
                    .await
                    .map_err(pg_error)?;
                let rows = client
                    .query(&stmt, &[&integration, &ds24_order_id])
                    .await
                    .map_err(pg_error)?;
                rows.iter().map(ledger_row).collect()
            }
            .await,
        )
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
        self.count(
            async {
                let client = self.client().await?;
                let stmt = client
                    .prepare_cached(
                        "SELECT i.id, r.decision, r.reason, r.job_id
                         FROM ipns i JOIN routes r ON r.ipn_id = i.id
                         WHERE i.order_id = $2 AND i.event = 'on_payment'
                           AND COALESCE(i.order_item_id, i.product_id) = $3
                           AND (i.transaction_id = $4 OR i.parent_transaction_id = $4)
                           AND r.integration = $1
                         ORDER BY i.id DESC, r.id DESC LIMIT 1",
                    )
                    .await
                    .map_err(pg_error)?;
                let row = client
                    .query_opt(&stmt, &[&integration, &ds24_order_id, &item, &payment])
                    .await
                    .map_err(pg_error)?;
                let Some(r) = row else {
                    return Ok(None);
                };
                let decision: String = col(&r, 1)?;
                Ok(Some(PaymentRoute {
                    ipn_id: EventId(col(&r, 0)?),
                    skipped: decision == "skipped",
                    reason: col(&r, 2)?,
                    job_id: col::<Option<i64>>(&r, 3)?.map(JobId),
                }))
            }
            .await,
        )
    }

    /// A stored IPN by id.
    pub async fn ipn(&self, id: EventId) -> Result<StoredIpn, StoreError> {
        self.count(
            async {
                let client = self.client().await?;
                let stmt = client
                    .prepare_cached(
                        "SELECT id, source, event, received_at, raw_body FROM ipns WHERE id = $1",
                    )
                    .await
                    .map_err(pg_error)?;
                let row = client
                    .query_opt(&stmt, &[&id.0])
                    .await
                    .map_err(pg_error)?
                    .ok_or_else(|| StoreError::NotFound(format!("event {id}")))?;
                Ok(StoredIpn {
                    id: EventId(col(&row, 0)?),
                    source: col(&row, 1)?,
                    event: col(&row, 2)?,
                    received_at: col(&row, 3)?,
                    raw_body: col(&row, 4)?,
                })
            }
            .await,
        )
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
        self.count(
            async {
                let mut client = self.client().await?;
                let tx = client.transaction().await.map_err(pg_error)?;
                let out = add_routes(&tx, ipn, &routes, &user, now).await?;
                tx.commit().await.map_err(pg_error)?;
                Ok(out)
            }
            .await,
        )
    }

    /// A cheap real write that proves the database accepts commits (for health checks): the
    /// one row of `ipn_bridge_schema` is updated (to the same value) and committed like any
    /// IPN. A server that is read-only or in recovery (a standby) refuses it with
    /// `Unavailable`; so does one that cannot be reached.
    pub async fn probe_writable(&self) -> Result<(), StoreError> {
        self.count(
            async {
                let mut client = self.client().await?;
                let tx = client.transaction().await.map_err(pg_error)?;
                let stmt = prepare(&tx, "UPDATE ipn_bridge_schema SET version = version").await?;
                tx.execute(&stmt, &[]).await.map_err(pg_error)?;
                tx.commit().await.map_err(pg_error)
            }
            .await,
        )
    }
}

/// A count or number for an `INTEGER` column.
fn int4(v: u32) -> Result<i32, StoreError> {
    i32::try_from(v)
        .map_err(|_| StoreError::Internal(format!("{v} does not fit an INTEGER column")))
}

async fn prepare(tx: &Transaction<'_>, sql: &str) -> Result<tokio_postgres::Statement, StoreError> {
    tx.prepare_cached(sql).await.map_err(pg_error)
}

/// Jobs per state from the counts kept by schema migrations 3 and 4: the shards of a state
/// (one per writing backend, and shard 0 for folded ones, see [`super::counts`]) summed.
/// States without a job (any more) are left out, as the `GROUP BY` over `jobs` this
/// replaced left them out, and as SQLite does (`WHERE n > 0`); a negative sum (which only
/// a bug could make) is not hidden but refused by the caller.
pub(super) const JOB_COUNTS_SQL: &str =
    "SELECT state, SUM(n)::BIGINT FROM job_counts GROUP BY state HAVING SUM(n) <> 0";

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

/// Why `finish_attempt` or `reconciled_absent` changed nothing: the attempt was closed, or
/// its job moved on, by someone else, typically another instance that took over the
/// target's dispatcher and recovered the job; what it did stands.
fn not_open(job: JobId, attempt_id: i64) -> StoreError {
    StoreError::Invalid(format!(
        "attempt {attempt_id} of job {job} is no longer open: another instance recovered the job"
    ))
}

async fn lease_due(
    tx: &Transaction<'_>,
    target: &str,
    now: i64,
    limit: i64,
) -> Result<Vec<LeasedJob>, StoreError> {
    // The selection and the per-order rule of the SQLite backend; `SKIP LOCKED` leaves the
    // jobs another leaser is taking to it.
    let select = prepare(
        tx,
        "SELECT j.id, j.ipn_id, j.integration, j.target, j.payload, j.needs_reconcile,
                j.attempts, j.created_at, COALESCE(j.retry_base, j.created_at)
         FROM jobs j
         WHERE j.target = $1 AND j.state = 'pending' AND j.next_attempt_at <= $2
           AND NOT EXISTS (
               SELECT 1 FROM jobs e
               WHERE e.integration = j.integration AND e.order_key = j.order_key
                 AND e.id < j.id AND e.state IN ('pending', 'in_flight', 'held', 'dead')
                 AND (j.action <> 'import_order' OR e.action = 'import_order'))
         ORDER BY j.next_attempt_at, j.id
         LIMIT $3
         FOR UPDATE OF j SKIP LOCKED",
    )
    .await?;
    let rows = tx
        .query(&select, &[&target, &now, &limit])
        .await
        .map_err(pg_error)?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut leased = Vec::with_capacity(rows.len());
    for r in &rows {
        let payload: String = col(r, 4)?;
        let action: Action = serde_json::from_str(&payload)?;
        let kind = if col(r, 5)? {
            AttemptKind::Reconcile
        } else {
            AttemptKind::Send
        };
        let number = col_u32(r, 6)? + 1;
        leased.push(LeasedJob {
            id: JobId(col(r, 0)?),
            ipn_id: EventId(col(r, 1)?),
            integration: col(r, 2)?,
            target: col(r, 3)?,
            action,
            attempt_id: 0,
            attempt_no: number,
            kind,
            created_at: col(r, 7)?,
            retry_base: col(r, 8)?,
        });
    }
    // The rows are locked by this transaction: one statement for the jobs, one for their
    // attempts, whatever the batch size.
    let ids: Vec<i64> = leased.iter().map(|j| j.id.0).collect();
    let numbers = leased
        .iter()
        .map(|j| int4(j.attempt_no))
        .collect::<Result<Vec<i32>, _>>()?;
    let kinds: Vec<&str> = leased.iter().map(|j| j.kind.as_str()).collect();
    let update = prepare(
        tx,
        "UPDATE jobs SET state = 'in_flight', attempts = n.number, updated_at = $3
         FROM unnest($1::bigint[], $2::int4[]) AS n (id, number)
         WHERE jobs.id = n.id",
    )
    .await?;
    tx.execute(&update, &[&ids, &numbers, &now])
        .await
        .map_err(pg_error)?;
    let insert = prepare(
        tx,
        "INSERT INTO attempts (job_id, number, kind, started_at)
         SELECT a.job_id, a.number, a.kind, $4
         FROM unnest($1::bigint[], $2::int4[], $3::text[]) AS a (job_id, number, kind)
         RETURNING job_id, id",
    )
    .await?;
    let opened: BTreeMap<i64, i64> = tx
        .query(&insert, &[&ids, &numbers, &kinds, &now])
        .await
        .map_err(pg_error)?
        .iter()
        .map(|r| Ok((col(r, 0)?, col(r, 1)?)))
        .collect::<Result<_, StoreError>>()?;
    for job in &mut leased {
        job.attempt_id = *opened.get(&job.id.0).ok_or_else(|| {
            StoreError::Internal(format!("no attempt was opened for job {}", job.id))
        })?;
    }
    Ok(leased)
}

async fn open_attempt(
    tx: &Transaction<'_>,
    job: JobId,
    number: u32,
    kind: AttemptKind,
    now: i64,
) -> Result<i64, StoreError> {
    let stmt = prepare(
        tx,
        "INSERT INTO attempts (job_id, number, kind, started_at) VALUES ($1, $2, $3, $4)
         RETURNING id",
    )
    .await?;
    let row = tx
        .query_one(&stmt, &[&job.0, &int4(number)?, &kind.as_str(), &now])
        .await
        .map_err(pg_error)?;
    col(&row, 0)
}

/// Closes attempt `attempt_id` of `job` with `outcome` if it is still open, else fails with
/// [`not_open`]. Locks the attempt row (the first lock of the finishing transaction).
async fn close_open_attempt(
    tx: &Transaction<'_>,
    job: JobId,
    attempt_id: i64,
    now: i64,
    outcome: &str,
    report: &AttemptReport,
) -> Result<(), StoreError> {
    let stmt = prepare(
        tx,
        "UPDATE attempts SET finished_at = $3, outcome = $4, endpoint = $5, http_status = $6,
                request = $7, response = $8, reason = $9
         WHERE id = $1 AND job_id = $2 AND outcome IS NULL",
    )
    .await?;
    let status = report.http_status.map(i32::from);
    let closed = tx
        .execute(
            &stmt,
            &[
                &attempt_id,
                &job.0,
                &now,
                &outcome,
                &report.endpoint,
                &status,
                &report.request,
                &report.response,
                &report.outcome.reason(),
            ],
        )
        .await
        .map_err(pg_error)?;
    if closed == 1 {
        Ok(())
    } else {
        Err(not_open(job, attempt_id))
    }
}

async fn finish_attempt(
    tx: &Transaction<'_>,
    job: JobId,
    attempt_id: i64,
    report: &AttemptReport,
    disposition: &Disposition,
    now: i64,
) -> Result<(), StoreError> {
    if let Disposition::Dead = disposition {
        // The jobs behind this one become held: take the order's lock first.
        let stmt = prepare(tx, "SELECT integration, order_key FROM jobs WHERE id = $1").await?;
        let row = tx
            .query_opt(&stmt, &[&job.0])
            .await
            .map_err(pg_error)?
            .ok_or_else(|| StoreError::NotFound(format!("job {job}")))?;
        let (integration, order_key): (String, String) = (col(&row, 0)?, col(&row, 1)?);
        lock_order(tx, &integration, &order_key).await?;
    }
    close_open_attempt(tx, job, attempt_id, now, report.outcome.label(), report).await?;
    let last_error = match report.outcome.reason() {
        "" => None,
        r => Some(r.to_owned()),
    };
    // Each update applies only to a job still `in_flight` (the guard of the module doc).
    let moved = match disposition {
        Disposition::Delivered(_) => {
            let stmt = prepare(
                tx,
                "UPDATE jobs SET state = 'delivered', needs_reconcile = FALSE, updated_at = $2,
                        last_error = NULL
                 WHERE id = $1 AND state = 'in_flight'",
            )
            .await?;
            tx.execute(&stmt, &[&job.0, &now]).await
        }
        Disposition::Retry { at, reconcile } => {
            let stmt = prepare(
                tx,
                "UPDATE jobs SET state = 'pending', next_attempt_at = $2, updated_at = $3,
                        needs_reconcile = $4, last_error = $5
                 WHERE id = $1 AND state = 'in_flight'",
            )
            .await?;
            tx.execute(&stmt, &[&job.0, at, &now, reconcile, &last_error])
                .await
        }
        Disposition::Requeue { at } => {
            let stmt = prepare(
                tx,
                "UPDATE jobs SET state = 'pending', next_attempt_at = $2, updated_at = $3,
                        attempts = GREATEST(attempts - 1, 0), last_error = $4
                 WHERE id = $1 AND state = 'in_flight'",
            )
            .await?;
            tx.execute(&stmt, &[&job.0, at, &now, &last_error]).await
        }
        Disposition::Dead => {
            let stmt = prepare(
                tx,
                "UPDATE jobs SET state = 'dead', updated_at = $2, last_error = $3
                 WHERE id = $1 AND state = 'in_flight'",
            )
            .await?;
            tx.execute(&stmt, &[&job.0, &now, &last_error]).await
        }
    }
    .map_err(pg_error)?;
    if moved != 1 {
        return Err(not_open(job, attempt_id));
    }
    match disposition {
        Disposition::Delivered(receipt) => {
            write_ledger(tx, job, receipt, now).await?;
            wake_dependents(tx, job, now).await?;
        }
        Disposition::Dead => hold_followers(tx, job, now).await?,
        Disposition::Retry { .. } | Disposition::Requeue { .. } => {}
    }
    Ok(())
}

/// Holds the unfinished jobs that follow a job that just died (the caller holds the order's
/// lock).
async fn hold_followers(tx: &Transaction<'_>, dead: JobId, now: i64) -> Result<(), StoreError> {
    let stmt = prepare(
        tx,
        "SELECT integration, order_key, last_error, action FROM jobs WHERE id = $1",
    )
    .await?;
    let row = tx.query_one(&stmt, &[&dead.0]).await.map_err(pg_error)?;
    let (integration, order_key, error, action): (String, String, Option<String>, String) =
        (col(&row, 0)?, col(&row, 1)?, col(&row, 2)?, col(&row, 3)?);
    let reason = format!(
        "held: job {dead} of the same Digistore24 order is dead{}",
        error.map(|e| format!(" ({e})")).unwrap_or_default()
    );
    let stmt = prepare(
        tx,
        "UPDATE jobs SET state = 'held', last_error = $4, updated_at = $5
         WHERE integration = $1 AND order_key = $2 AND id > $3 AND state = 'pending'
           AND (action <> 'import_order' OR $6 = 'import_order')",
    )
    .await?;
    tx.execute(
        &stmt,
        &[&integration, &order_key, &dead.0, &reason, &now, &action],
    )
    .await
    .map_err(pg_error)?;
    Ok(())
}

/// After an import was delivered, the actions of the same order waiting for it (a refund
/// that arrived first, say) are due at once instead of at their next back-off.
async fn wake_dependents(
    tx: &Transaction<'_>,
    delivered: JobId,
    now: i64,
) -> Result<(), StoreError> {
    let stmt = prepare(
        tx,
        "UPDATE jobs SET next_attempt_at = LEAST(next_attempt_at, $2)
         WHERE state = 'pending' AND action <> 'import_order'
           AND (integration, order_key) =
               (SELECT integration, order_key FROM jobs
                WHERE id = $1 AND action = 'import_order')",
    )
    .await?;
    tx.execute(&stmt, &[&delivered.0, &now])
        .await
        .map_err(pg_error)?;
    Ok(())
}

async fn write_ledger(
    tx: &Transaction<'_>,
    job: JobId,
    receipt: &Receipt,
    now: i64,
) -> Result<(), StoreError> {
    let stmt = prepare(
        tx,
        "SELECT j.integration, j.payload, i.order_id, i.order_item_id, i.product_id,
                i.transaction_id, i.parent_transaction_id
         FROM jobs j JOIN ipns i ON i.id = j.ipn_id WHERE j.id = $1",
    )
    .await?;
    let row = tx.query_one(&stmt, &[&job.0]).await.map_err(pg_error)?;
    let integration: String = col(&row, 0)?;
    let payload: String = col(&row, 1)?;
    let order_id: Option<String> = col(&row, 2)?;
    let item: Option<String> = col(&row, 3)?;
    let product: Option<String> = col(&row, 4)?;
    let txn: Option<String> = col(&row, 5)?;
    let parent: Option<String> = col(&row, 6)?;
    let action: Action = serde_json::from_str(&payload)?;
    let reference = action
        .reconcile_reference()
        .map(|o| o.reference.clone())
        .unwrap_or_default();
    let stmt = prepare(
        tx,
        "INSERT INTO ledger (job_id, integration, ds24_order_id, ds24_item,
                ds24_transaction_id, reference, target_order_id, target_customer_id,
                purchase_ids, transaction_ids, created_at, action, ds24_parent_transaction_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (job_id) DO UPDATE SET
                integration = EXCLUDED.integration,
                ds24_order_id = EXCLUDED.ds24_order_id,
                ds24_item = EXCLUDED.ds24_item,
                ds24_transaction_id = EXCLUDED.ds24_transaction_id,
                reference = EXCLUDED.reference,
                target_order_id = EXCLUDED.target_order_id,
                target_customer_id = EXCLUDED.target_customer_id,
                purchase_ids = EXCLUDED.purchase_ids,
                transaction_ids = EXCLUDED.transaction_ids,
                created_at = EXCLUDED.created_at,
                action = EXCLUDED.action,
                ds24_parent_transaction_id = EXCLUDED.ds24_parent_transaction_id",
    )
    .await?;
    tx.execute(
        &stmt,
        &[
            &job.0,
            &integration,
            &order_id.unwrap_or_default(),
            &item.or(product),
            &txn,
            &reference,
            &receipt.order_id,
            &receipt.customer_id,
            &serde_json::to_string(&receipt.purchase_ids)?,
            &serde_json::to_string(&receipt.transaction_ids)?,
            &now,
            &action.kind().config_name(),
            &parent,
        ],
    )
    .await
    .map_err(pg_error)?;
    Ok(())
}

async fn add_routes(
    tx: &Transaction<'_>,
    ipn: EventId,
    routes: &[NewRoute],
    user: &str,
    now: i64,
) -> Result<Vec<Rerouted>, StoreError> {
    // A replay creates, re-opens and releases jobs of these orders.
    lock_orders_of(tx, routes).await?;
    let existing_job = prepare(
        tx,
        "SELECT id, state FROM jobs WHERE ipn_id = $1 AND integration = $2 FOR UPDATE",
    )
    .await?;
    let mut out = Vec::with_capacity(routes.len());
    for route in routes {
        let existing: Option<(i64, String)> = match tx
            .query_opt(&existing_job, &[&ipn.0, &route.integration])
            .await
            .map_err(pg_error)?
        {
            Some(r) => Some((col(&r, 0)?, col(&r, 1)?)),
            None => None,
        };
        let created = match ReplayStep::of(&route.decision, existing.as_ref()) {
            ReplayStep::Reroute { job, with } => {
                reroute_job(tx, job, with, now).await?;
                None
            }
            ReplayStep::Create(job) => {
                Some(insert_job(tx, ipn.0, &route.integration, job, now).await?)
            }
            ReplayStep::Record => None,
        };
        let (decision, reason, job_id, result) =
            replayed_route(&route.decision, existing, created)?;
        insert_route(
            tx,
            ipn.0,
            &route.integration,
            decision,
            &reason,
            job_id,
            now,
        )
        .await?;
        out.push(result);
    }
    let stmt = prepare(
        tx,
        "INSERT INTO operator_actions (at, \"user\", command, ipn_id, reason)
         VALUES ($1, $2, 'replay', $3, 'replay with the current configuration')",
    )
    .await?;
    tx.execute(&stmt, &[&now, &user, &ipn.0])
        .await
        .map_err(pg_error)?;
    Ok(out)
}

/// Gives a dead or dropped job a new action (a replay) and makes it pending; the jobs held
/// behind it that no other dead job blocks are released. The caller holds the order's lock.
async fn reroute_job(
    tx: &Transaction<'_>,
    id: JobId,
    job: &NewJob,
    now: i64,
) -> Result<(), StoreError> {
    let payload = serde_json::to_string(&job.action)?;
    let stmt = prepare(
        tx,
        "UPDATE jobs SET target = $2, action = $3, payload = $4, state = 'pending',
                next_attempt_at = $5, retry_base = $5, updated_at = $5, last_error = NULL
         WHERE id = $1",
    )
    .await?;
    tx.execute(
        &stmt,
        &[
            &id.0,
            &job.target,
            &job.action.kind().config_name(),
            &payload,
            &now.max(job.not_before),
        ],
    )
    .await
    .map_err(pg_error)?;
    let stmt = prepare(
        tx,
        "UPDATE jobs SET state = 'pending', updated_at = $2, last_error = NULL
         WHERE state = 'held'
           AND (integration, order_key) = (SELECT integration, order_key FROM jobs WHERE id = $1)
           AND NOT EXISTS (
               SELECT 1 FROM jobs e
               WHERE e.integration = jobs.integration AND e.order_key = jobs.order_key
                 AND e.id < jobs.id AND e.state = 'dead')",
    )
    .await?;
    tx.execute(&stmt, &[&id.0, &now]).await.map_err(pg_error)?;
    Ok(())
}
