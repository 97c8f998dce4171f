//! The review queries and operator commands on PostgreSQL (see [`crate::store::review`]):
//! the same results, refusals and audit rows as the SQLite twin.
//!
//! Decisions:
//! - **Check and write under the order's lock.** On SQLite `queue retry`/`drop` run under
//!   the database's write lock. Here other daemons keep ingesting, leasing and finishing
//!   jobs while the command runs. So the command first takes the advisory lock of every
//!   Digistore24 order it touches ([`super::jobs::lock_order`], sorted, as every operation
//!   that holds or releases jobs of an order does: no job can die or be held behind it while
//!   the rules are checked), then locks each named job's row (`FOR UPDATE`) before reading
//!   its state: a job a daemon is leasing at that moment is seen `in_flight` once the lease
//!   commits, and refused; a later lease skips the locked row and sees the new state. A
//!   deadlock with another transaction is reported by PostgreSQL and comes back as
//!   `Unavailable` (try again); nothing is half-changed.
//! - **Reads in one snapshot.** The reads that take several statements (`job_detail`,
//!   `review_events`, `review_event`, `purge_preview`) run in one read-only `REPEATABLE
//!   READ` transaction, so an IPN and its routes, or a job and its attempts, belong together.
//! - **Purge without a long lock.** Each batch is one short transaction; a row that a
//!   daemon changes at the same time is either seen before or after that change (as if the
//!   purge ran just before it on SQLite).
//! - Rows are read by the shared readers of [`super::rows`].

use std::collections::{BTreeMap, BTreeSet};

use deadpool_postgres::Transaction;
use tokio_postgres::{IsolationLevel, Row};

use super::jobs::lock_order;
use super::rows::{col, col_u32, job_row, ledger_row};
use super::{PgStore, pg_error};
use crate::domain::{EventId, JobId, JobState};
use crate::store::review::*;
use crate::store::{AttemptRow, JOB_COLUMNS, LEDGER_COLUMNS, LedgerRow, StoreError};

impl PgStore {
    /// Jobs matching `filter`, newest first.
    pub async fn review_jobs(&self, filter: ReviewFilter) -> Result<Vec<JobListing>, StoreError> {
        let r: Result<Vec<JobListing>, StoreError> = async {
            let columns = prefixed_job_columns("j");
            let client = self.client().await?;
            let stmt = client
                .prepare_cached(&format!(
                    "SELECT {columns}, i.event, i.order_id, i.product_id
                     FROM jobs j JOIN ipns i ON i.id = j.ipn_id
                     WHERE ($1::text IS NULL OR j.state = $1)
                       AND ($2::text IS NULL OR j.integration = $2)
                       AND ($3::bigint IS NULL OR j.created_at >= $3)
                     ORDER BY j.id DESC LIMIT $4"
                ))
                .await
                .map_err(pg_error)?;
            let state = filter.state.map(JobState::as_str);
            let limit = filter.limit.map(i64::from);
            let rows = client
                .query(&stmt, &[&state, &filter.integration, &filter.since, &limit])
                .await
                .map_err(pg_error)?;
            rows.iter()
                .map(|r| {
                    Ok(JobListing {
                        job: job_row(r)?,
                        event: col(r, 13)?,
                        ds24_order_id: col(r, 14)?,
                        product_id: col(r, 15)?,
                    })
                })
                .collect()
        }
        .await;
        self.count(r)
    }

    /// One job with everything known about it; [`StoreError::NotFound`] for an unknown id.
    pub async fn job_detail(&self, id: JobId) -> Result<JobDetail, StoreError> {
        let r: Result<JobDetail, StoreError> = async {
            let mut client = self.client().await?;
            let tx = snapshot(&mut client).await?;
            let job = tx
                .query_opt(
                    &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"),
                    &[&id.0],
                )
                .await
                .map_err(pg_error)?
                .ok_or_else(|| StoreError::NotFound(format!("job {id}")))?;
            let job = job_row(&job)?;
            let ipn = ipn_detail(&tx, job.ipn_id)
                .await?
                .ok_or_else(|| StoreError::Internal(format!("job {id} has no IPN")))?;
            let detail = JobDetail {
                attempts: attempts_of(&tx, id.0).await?,
                ledger: ledger_of(&tx, id.0).await?,
                actions: actions_of(&tx, id.0).await?,
                job,
                ipn,
            };
            tx.commit().await.map_err(pg_error)?;
            Ok(detail)
        }
        .await;
        self.count(r)
    }

    /// Stored IPNs received at or after `since`, newest first, each with its routes.
    pub async fn review_events(
        &self,
        since: Option<i64>,
        limit: Option<u32>,
    ) -> Result<Vec<EventListing>, StoreError> {
        let r: Result<Vec<EventListing>, StoreError> = async {
            let mut client = self.client().await?;
            let tx = snapshot(&mut client).await?;
            let limit = limit.map(i64::from);
            let ipns = tx
                .query(
                    &format!(
                        "SELECT {IPN_COLUMNS} FROM ipns i
                         WHERE ($1::bigint IS NULL OR i.received_at >= $1)
                         ORDER BY i.id DESC LIMIT $2"
                    ),
                    &[&since, &limit],
                )
                .await
                .map_err(pg_error)?
                .iter()
                .map(ipn_detail_row)
                .collect::<Result<Vec<_>, _>>()?;
            // The routes of all of them in one query rather than one per IPN.
            let ids: Vec<i64> = ipns.iter().map(|i| i.id).collect();
            let mut routes: BTreeMap<i64, Vec<RouteRow>> = BTreeMap::new();
            for row in tx
                .query(
                    "SELECT r.integration, r.decision, r.reason, r.job_id, j.state, r.decided_at,
                            r.ipn_id
                     FROM routes r LEFT JOIN jobs j ON j.id = r.job_id
                     WHERE r.ipn_id = ANY($1::bigint[]) ORDER BY r.id",
                    &[&ids],
                )
                .await
                .map_err(pg_error)?
            {
                let ipn_id: i64 = col(&row, 6)?;
                routes.entry(ipn_id).or_default().push(route_row(&row)?);
            }
            tx.commit().await.map_err(pg_error)?;
            Ok(ipns
                .into_iter()
                .map(|ipn| EventListing {
                    routes: routes.remove(&ipn.id).unwrap_or_default(),
                    ipn,
                })
                .collect())
        }
        .await;
        self.count(r)
    }

    /// One stored IPN with its routes; [`StoreError::NotFound`] for an unknown id.
    pub async fn review_event(&self, id: EventId) -> Result<EventListing, StoreError> {
        let r: Result<EventListing, StoreError> = async {
            let mut client = self.client().await?;
            let tx = snapshot(&mut client).await?;
            let ipn = ipn_detail(&tx, id.0)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("event {id}")))?;
            let routes = routes_of(&tx, id.0).await?;
            tx.commit().await.map_err(pg_error)?;
            Ok(EventListing { ipn, routes })
        }
        .await;
        self.count(r)
    }

    /// `queue retry`: the selected dead, held or pending jobs become `pending`, due at `now`;
    /// held jobs behind them are released. All or nothing (see the module docs).
    pub async fn retry_jobs(
        &self,
        selection: RetrySelection,
        operator: Operator,
        now: i64,
    ) -> Result<QueueChange, StoreError> {
        let r: Result<QueueChange, StoreError> = async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_error)?;
            let ids = match selection {
                RetrySelection::Ids(ids) => ids.into_iter().map(|i| i.0).collect(),
                RetrySelection::Dead { integration } => tx
                    .query(
                        "SELECT id FROM jobs
                         WHERE state = 'dead' AND ($1::text IS NULL OR integration = $1)
                         ORDER BY id",
                        &[&integration],
                    )
                    .await
                    .map_err(pg_error)?
                    .iter()
                    .map(|r| col::<i64>(r, 0))
                    .collect::<Result<BTreeSet<_>, _>>()?,
            };
            let change = change_jobs(&tx, &ids, QueueCommand::Retry, &operator, now).await?;
            tx.commit().await.map_err(pg_error)?;
            Ok(change)
        }
        .await;
        self.count(r)
    }

    /// `queue drop`: the named non-final jobs become `dropped`; held jobs behind them are
    /// released. All or nothing (see the module docs).
    pub async fn drop_jobs(
        &self,
        ids: Vec<JobId>,
        operator: Operator,
        now: i64,
    ) -> Result<QueueChange, StoreError> {
        let r: Result<QueueChange, StoreError> = async {
            let ids: BTreeSet<i64> = ids.into_iter().map(|i| i.0).collect();
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_error)?;
            let change = change_jobs(&tx, &ids, QueueCommand::Drop, &operator, now).await?;
            tx.commit().await.map_err(pg_error)?;
            Ok(change)
        }
        .await;
        self.count(r)
    }

    /// What a purge with this cutoff would remove, without removing it.
    pub async fn purge_preview(&self, cutoff: i64) -> Result<PurgeCount, StoreError> {
        let r: Result<PurgeCount, StoreError> = async {
            let client = self.client().await?;
            // One statement: both counts from one snapshot.
            let row = client
                .query_one(
                    &format!(
                        "SELECT (SELECT COUNT(*) FROM attempts WHERE job_id IN (
                                     SELECT id FROM jobs
                                     WHERE state IN {FINAL_STATES_SQL} AND updated_at < $1)),
                                (SELECT COUNT(*) FROM ipns WHERE {PURGEABLE_BODY_SQL})"
                    ),
                    &[&cutoff],
                )
                .await
                .map_err(pg_error)?;
            let attempts: i64 = col(&row, 0)?;
            let bodies: i64 = col(&row, 1)?;
            Ok(PurgeCount {
                attempts_deleted: u64::try_from(attempts).unwrap_or(0),
                bodies_cleared: u64::try_from(bodies).unwrap_or(0),
            })
        }
        .await;
        self.count(r)
    }

    /// One bounded step of `queue purge`: deletes up to `max_rows` attempt rows of jobs that
    /// became final (delivered or dropped) before `cutoff`, and empties up to `max_rows` raw
    /// bodies of IPNs received before `cutoff` whose jobs (at least one) are all final since
    /// before `cutoff`. Call until it returns zero counts; small batches keep the write lock
    /// short so the running daemon is not blocked.
    ///
    /// Kept, always: `ipns` rows and their business keys (idempotency), jobs, routes, the
    /// ledger (later refunds need the target's ids), `operator_actions`; raw bodies of IPNs
    /// that produced no job (a replay may want them after a configuration change) and of
    /// IPNs with any unfinished job.
    pub async fn purge_history_batch(
        &self,
        cutoff: i64,
        max_rows: u32,
    ) -> Result<PurgeCount, StoreError> {
        let r: Result<PurgeCount, StoreError> = async {
            let max_rows = i64::from(max_rows);
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_error)?;
            let attempts = tx
                .execute(
                    &format!(
                        "DELETE FROM attempts WHERE id IN (
                             SELECT a.id FROM attempts a JOIN jobs j ON j.id = a.job_id
                             WHERE j.state IN {FINAL_STATES_SQL} AND j.updated_at < $1
                             LIMIT $2)"
                    ),
                    &[&cutoff, &max_rows],
                )
                .await
                .map_err(pg_error)?;
            let bodies = tx
                .execute(
                    &format!(
                        "UPDATE ipns SET raw_body = ''::bytea WHERE id IN (
                             SELECT id FROM ipns WHERE {PURGEABLE_BODY_SQL} LIMIT $2)"
                    ),
                    &[&cutoff, &max_rows],
                )
                .await
                .map_err(pg_error)?;
            tx.commit().await.map_err(pg_error)?;
            Ok(PurgeCount {
                attempts_deleted: attempts,
                bodies_cleared: bodies,
            })
        }
        .await;
        self.count(r)
    }

    /// Writes one audit row not tied to a job (e.g. a finished purge).
    pub async fn record_operator_action(
        &self,
        command: &str,
        operator: Operator,
        now: i64,
    ) -> Result<(), StoreError> {
        let r: Result<(), StoreError> = async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg_error)?;
            record(
                &tx,
                now,
                &operator.user,
                command,
                None,
                None,
                &operator.reason,
            )
            .await?;
            tx.commit().await.map_err(pg_error)
        }
        .await;
        self.count(r)
    }
}

/// Raw bodies a purge empties (`$1` = cutoff): SQLite's `PURGEABLE_BODY_SQL` with
/// PostgreSQL's placeholder. Unqualified column names refer to `ipns`.
const PURGEABLE_BODY_SQL: &str = "received_at < $1 AND length(raw_body) > 0
     AND EXISTS (SELECT 1 FROM jobs j WHERE j.ipn_id = ipns.id)
     AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.ipn_id = ipns.id
                     AND (j.state NOT IN ('delivered', 'dropped') OR j.updated_at >= $1))";

/// A read-only transaction on one snapshot, for reads of several statements.
async fn snapshot(client: &mut deadpool_postgres::Object) -> Result<Transaction<'_>, StoreError> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg_error)
}

async fn change_jobs(
    tx: &Transaction<'_>,
    ids: &BTreeSet<i64>,
    command: QueueCommand,
    operator: &Operator,
    now: i64,
) -> Result<QueueChange, StoreError> {
    let mut missing = Vec::new();
    let mut refused = Vec::new();
    let mut change = QueueChange::default();
    // A job's integration and order never change, so they are read before the locks; the
    // orders are then locked in sorted order, as every operation that takes several does.
    let mut keys: BTreeMap<i64, (String, String)> = BTreeMap::new();
    let key_of = tx
        .prepare_cached("SELECT integration, order_key FROM jobs WHERE id = $1")
        .await
        .map_err(pg_error)?;
    for &id in ids {
        if let Some(row) = tx.query_opt(&key_of, &[&id]).await.map_err(pg_error)? {
            keys.insert(id, (col(&row, 0)?, col(&row, 1)?));
        }
    }
    let orders: BTreeSet<&(String, String)> = keys.values().collect();
    for (integration, order_key) in orders {
        lock_order(tx, integration, order_key).await?;
    }
    let state_of = tx
        .prepare_cached("SELECT state, ipn_id FROM jobs WHERE id = $1 FOR UPDATE")
        .await
        .map_err(pg_error)?;
    for &id in ids {
        let Some((integration, order_key)) = keys.get(&id) else {
            missing.push(format!("job {id} does not exist"));
            continue;
        };
        // The row lock waits for a lease of this very job in progress and then reads what
        // it committed (`in_flight`, refused below); a later lease skips the locked row.
        let row = tx.query_one(&state_of, &[&id]).await.map_err(pg_error)?;
        let state: String = col(&row, 0)?;
        let ipn_id: i64 = col(&row, 1)?;
        let state = JobState::parse(&state)
            .ok_or_else(|| StoreError::Internal(format!("job {id} has unknown state {state}")))?;
        if let Err(why) = allowed(tx, command, id, state, integration, order_key).await? {
            refused.push(why);
            continue;
        }
        let update = match command {
            QueueCommand::Retry => {
                "UPDATE jobs SET state = 'pending', next_attempt_at = $2, updated_at = $2,
                        retry_base = $2
                 WHERE id = $1"
            }
            QueueCommand::Drop => {
                "UPDATE jobs SET state = 'dropped', updated_at = $2 WHERE id = $1"
            }
        };
        tx.execute(
            &tx.prepare_cached(update).await.map_err(pg_error)?,
            &[&id, &now],
        )
        .await
        .map_err(pg_error)?;
        record(
            tx,
            now,
            &operator.user,
            command.name(),
            Some(id),
            Some(ipn_id),
            &operator.reason,
        )
        .await?;
        change.changed.push(id);
        // Released at once, so a later id of the same order is checked against the new
        // states (`retry 5 7` with 6 held behind 5 and 7 dead behind 6).
        let released = release_held(tx, integration, order_key, id, command, operator, now).await?;
        change.released.extend(released);
    }
    change.conclude(missing, refused)
}

/// Whether `command` may change job `id`; `Ok(Err(why))` when it is refused.
async fn allowed(
    tx: &Transaction<'_>,
    command: QueueCommand,
    id: i64,
    state: JobState,
    integration: &str,
    order_key: &str,
) -> Result<Result<(), String>, StoreError> {
    if let Some(why) = command.refusal(id, state) {
        return Ok(Err(why));
    }
    if command.checks_earlier_jobs(state) {
        let blocker = tx
            .query_opt(
                &tx.prepare_cached(
                    "SELECT id, state FROM jobs
                     WHERE integration = $1 AND order_key = $2 AND id < $3
                       AND state IN ('dead', 'held')
                       -- an import never waits for an earlier refund or cancellation
                       AND ((SELECT action FROM jobs WHERE id = $3) != 'import_order'
                            OR action = 'import_order')
                     ORDER BY id LIMIT 1",
                )
                .await
                .map_err(pg_error)?,
                &[&integration, &order_key, &id],
            )
            .await
            .map_err(pg_error)?;
        if let Some(row) = blocker {
            let earlier: i64 = col(&row, 0)?;
            let earlier_state: String = col(&row, 1)?;
            return Ok(Err(command.waits_behind(id, earlier, &earlier_state)));
        }
    }
    Ok(Ok(()))
}

/// Releases every held job of the order that no dead job precedes any more.
async fn release_held(
    tx: &Transaction<'_>,
    integration: &str,
    order_key: &str,
    by: i64,
    command: QueueCommand,
    operator: &Operator,
    now: i64,
) -> Result<Vec<i64>, StoreError> {
    let jobs = tx
        .query(
            &tx.prepare_cached(
                "SELECT id, state, ipn_id FROM jobs WHERE integration = $1 AND order_key = $2
                 ORDER BY id",
            )
            .await
            .map_err(pg_error)?,
            &[&integration, &order_key],
        )
        .await
        .map_err(pg_error)?;
    let mut released = Vec::new();
    for row in jobs {
        let id: i64 = col(&row, 0)?;
        let state: String = col(&row, 1)?;
        let ipn_id: i64 = col(&row, 2)?;
        match state.as_str() {
            "dead" => break,
            "held" => {
                tx.execute(
                    &tx.prepare_cached(
                        "UPDATE jobs SET state = 'pending',
                                next_attempt_at = GREATEST(next_attempt_at, $2), updated_at = $2
                         WHERE id = $1",
                    )
                    .await
                    .map_err(pg_error)?,
                    &[&id, &now],
                )
                .await
                .map_err(pg_error)?;
                let reason = command.release_reason(by);
                record(
                    tx,
                    now,
                    &operator.user,
                    "release",
                    Some(id),
                    Some(ipn_id),
                    &reason,
                )
                .await?;
                released.push(id);
            }
            _ => {}
        }
    }
    Ok(released)
}

async fn record(
    tx: &Transaction<'_>,
    at: i64,
    user: &str,
    command: &str,
    job_id: Option<i64>,
    ipn_id: Option<i64>,
    reason: &str,
) -> Result<(), StoreError> {
    tx.execute(
        &tx.prepare_cached(
            "INSERT INTO operator_actions (at, \"user\", command, job_id, ipn_id, reason)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .await
        .map_err(pg_error)?,
        &[&at, &user, &command, &job_id, &ipn_id, &reason],
    )
    .await
    .map_err(pg_error)?;
    Ok(())
}

fn prefixed_job_columns(alias: &str) -> String {
    JOB_COLUMNS
        .split(',')
        .map(|col| format!("{alias}.{}", col.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn ipn_detail_row(r: &Row) -> Result<IpnDetail, StoreError> {
    // `length(bytea)` is an `INTEGER` on PostgreSQL.
    let body_bytes: i32 = col(r, 11)?;
    Ok(IpnDetail {
        id: col(r, 0)?,
        source: col(r, 1)?,
        event: col(r, 2)?,
        order_id: col(r, 3)?,
        order_item_id: col(r, 4)?,
        product_id: col(r, 5)?,
        transaction_id: col(r, 6)?,
        buyer_email: col(r, 7)?,
        amount: col(r, 8)?,
        currency: col(r, 9)?,
        received_at: col(r, 10)?,
        body_bytes: u64::try_from(body_bytes).unwrap_or(0),
    })
}

async fn ipn_detail(tx: &Transaction<'_>, id: i64) -> Result<Option<IpnDetail>, StoreError> {
    tx.query_opt(
        &tx.prepare_cached(&format!("SELECT {IPN_COLUMNS} FROM ipns i WHERE i.id = $1"))
            .await
            .map_err(pg_error)?,
        &[&id],
    )
    .await
    .map_err(pg_error)?
    .as_ref()
    .map(ipn_detail_row)
    .transpose()
}

fn route_row(r: &Row) -> Result<RouteRow, StoreError> {
    Ok(RouteRow {
        integration: col(r, 0)?,
        decision: col(r, 1)?,
        reason: col(r, 2)?,
        job_id: col(r, 3)?,
        job_state: col(r, 4)?,
        decided_at: col(r, 5)?,
    })
}

async fn routes_of(tx: &Transaction<'_>, ipn_id: i64) -> Result<Vec<RouteRow>, StoreError> {
    tx.query(
        &tx.prepare_cached(
            "SELECT r.integration, r.decision, r.reason, r.job_id, j.state, r.decided_at
             FROM routes r LEFT JOIN jobs j ON j.id = r.job_id
             WHERE r.ipn_id = $1 ORDER BY r.id",
        )
        .await
        .map_err(pg_error)?,
        &[&ipn_id],
    )
    .await
    .map_err(pg_error)?
    .iter()
    .map(route_row)
    .collect()
}

/// Every attempt of a job, oldest first.
async fn attempts_of(tx: &Transaction<'_>, job_id: i64) -> Result<Vec<AttemptRow>, StoreError> {
    let rows = tx
        .query(
            &tx.prepare_cached(
                "SELECT id, job_id, number, kind, started_at, finished_at, outcome, endpoint,
                        http_status, request, response, reason
                 FROM attempts WHERE job_id = $1 ORDER BY id",
            )
            .await
            .map_err(pg_error)?,
            &[&job_id],
        )
        .await
        .map_err(pg_error)?;
    rows.iter()
        .map(|r| {
            let status: Option<i32> = col(r, 8)?;
            let http_status = status
                .map(|s| {
                    u16::try_from(s).map_err(|_| {
                        StoreError::Internal(format!("attempt with HTTP status {s} out of range"))
                    })
                })
                .transpose()?;
            Ok(AttemptRow {
                id: col(r, 0)?,
                job_id: col(r, 1)?,
                number: col_u32(r, 2)?,
                kind: col(r, 3)?,
                started_at: col(r, 4)?,
                finished_at: col(r, 5)?,
                outcome: col(r, 6)?,
                endpoint: col(r, 7)?,
                http_status,
                request: col(r, 9)?,
                response: col(r, 10)?,
                reason: col(r, 11)?,
            })
        })
        .collect()
}

/// The job's ledger entry, its id lists decoded from their JSON.
async fn ledger_of(tx: &Transaction<'_>, job_id: i64) -> Result<Option<LedgerRow>, StoreError> {
    let Some(r) = tx
        .query_opt(
            &tx.prepare_cached(&format!(
                "SELECT {LEDGER_COLUMNS} FROM ledger WHERE job_id = $1"
            ))
            .await
            .map_err(pg_error)?,
            &[&job_id],
        )
        .await
        .map_err(pg_error)?
    else {
        return Ok(None);
    };
    Ok(Some(ledger_row(&r)?))
}

async fn actions_of(
    tx: &Transaction<'_>,
    job_id: i64,
) -> Result<Vec<OperatorActionRow>, StoreError> {
    tx.query(
        &tx.prepare_cached(
            "SELECT id, at, \"user\", command, job_id, ipn_id, reason
             FROM operator_actions WHERE job_id = $1 ORDER BY id",
        )
        .await
        .map_err(pg_error)?,
        &[&job_id],
    )
    .await
    .map_err(pg_error)?
    .iter()
    .map(|r| {
        Ok(OperatorActionRow {
            id: col(r, 0)?,
            at: col(r, 1)?,
            user: col(r, 2)?,
            command: col(r, 3)?,
            job_id: col(r, 4)?,
            ipn_id: col(r, 5)?,
            reason: col(r, 6)?,
        })
    })
    .collect()
}

/// What only PostgreSQL has to get right here: a command runs while other instances change
/// the same jobs. Each test holds a lock in a transaction of its own (as a daemon's lease or
/// dead letter would), starts the command, waits until PostgreSQL reports it waiting on a
/// lock, then lets the other transaction commit.
#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::{AttemptReport, Outcome};
    use crate::store::tests::ipn;
    use crate::store::{Disposition, Ingested};

    fn ops() -> Operator {
        Operator {
            user: "alice".into(),
            reason: "test".into(),
        }
    }

    async fn connect(url: &str) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
    }

    /// Returns once another session of this database waits on a lock (polled; at most 5 s).
    async fn until_someone_waits_on_a_lock(url: &str) {
        let observer = connect(url).await;
        for _ in 0..500 {
            let waiting: i64 = observer
                .query_one(
                    "SELECT COUNT(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .expect("pg_stat_activity")
                .get(0);
            if waiting > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the command never waited for the lock");
    }

    async fn one_job(store: &PgStore, key: &str, order: &str) -> i64 {
        match store.ingest(ipn(key, order, true)).await.expect("ingest") {
            Ingested::Stored { jobs, .. } => jobs[0].0,
            other => panic!("{other:?}"),
        }
    }

    /// Regression guard: without the row lock the command read `pending`, waited on its
    /// `UPDATE` for the lease, and then dropped the job the lease had just taken.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_drop_waits_for_a_lease_in_progress_and_refuses_the_job_it_took() {
        let Some(url) = crate::store::testing::fresh_database().await else {
            return;
        };
        let store = PgStore::connect(&url).await.expect("connect");
        let job = one_job(&store, "k1", "A").await;
        let lease = connect(&url).await;
        lease
            .batch_execute(&format!(
                "BEGIN; UPDATE jobs SET state = 'in_flight' WHERE id = {job}"
            ))
            .await
            .expect("lease in progress");
        let dropping = tokio::spawn({
            let store = store.clone();
            async move { store.drop_jobs(vec![JobId(job)], ops(), 5_000).await }
        });
        until_someone_waits_on_a_lock(&url).await;
        lease.batch_execute("COMMIT").await.expect("commit");
        let refused = dropping.await.expect("join");
        assert!(
            matches!(&refused, Err(StoreError::Invalid(why)) if why.contains("being delivered")),
            "{refused:?}"
        );
        assert_eq!(store.job(JobId(job)).await.expect("job").state, "in_flight");
    }

    /// Regression guard: without the order's lock a retry released the held jobs it could
    /// see, and a job held by an ingest committing a moment later stayed held for ever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retry_waits_for_the_order_lock_and_releases_a_job_held_meanwhile() {
        let Some(url) = crate::store::testing::fresh_database().await else {
            return;
        };
        let store = PgStore::connect(&url).await.expect("connect");
        let dead = one_job(&store, "k1", "A").await;
        let leased = store.lease_due("crm", 1_000, 10).await.expect("lease");
        let report = AttemptReport {
            outcome: Outcome::Permanent {
                reason: "No products exist in the order".into(),
            },
            endpoint: "order/import".into(),
            http_status: Some(200),
            request: String::new(),
            response: String::new(),
            maybe_applied: false,
        };
        store
            .finish_attempt(
                leased[0].id,
                leased[0].attempt_id,
                report,
                Disposition::Dead,
                None,
                1_100,
            )
            .await
            .expect("dead");

        // Another instance's ingest of a job of order A, held behind the dead job, under the
        // order's lock.
        let mut other = store.client().await.expect("client");
        let ingest = other.transaction().await.expect("begin");
        lock_order(&ingest, "main", "A").await.expect("order lock");
        let retrying = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .retry_jobs(RetrySelection::Ids(vec![JobId(dead)]), ops(), 5_000)
                    .await
            }
        });
        until_someone_waits_on_a_lock(&url).await;
        let held: i64 = ingest
            .query_one(
                "WITH i AS (
                     INSERT INTO ipns (source, business_key, event, received_at, raw_body)
                     VALUES ('ds24', 'k2', 'on_refund', 1200, 'event=on_refund'::bytea)
                     RETURNING id)
                 INSERT INTO jobs (ipn_id, integration, target, action, payload, order_key,
                                   state, next_attempt_at, created_at, updated_at)
                 SELECT id, 'main', 'crm', 'refund', '{}', 'A', 'held', 1200, 1200, 1200 FROM i
                 RETURNING id",
                &[],
            )
            .await
            .expect("held job")
            .get(0);
        ingest.commit().await.expect("commit");
        let change = retrying.await.expect("join").expect("retry");
        assert_eq!(
            change,
            QueueChange {
                changed: vec![dead],
                released: vec![held],
            }
        );
        assert_eq!(store.job(JobId(held)).await.expect("job").state, "pending");
    }
}
