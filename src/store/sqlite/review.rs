//! The SQL of the review queries and operator commands (see [`crate::store::review`]).

use std::collections::BTreeSet;

use rusqlite::{Connection, OptionalExtension, params};

use super::{SqliteStore, job_row};
use crate::domain::{EventId, JobId, JobState};
use crate::store::review::*;
use crate::store::{JOB_COLUMNS, LedgerRow, StoreError};

impl SqliteStore {
    /// Jobs matching `filter`, newest first.
    pub async fn review_jobs(&self, filter: ReviewFilter) -> Result<Vec<JobListing>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&review_jobs_sql(&filter))?;
            let rows = stmt.query_map(
                params![
                    filter.state.map(JobState::as_str),
                    filter.integration,
                    filter.since,
                    filter.limit.map_or(-1, i64::from)
                ],
                |r| {
                    Ok(JobListing {
                        job: job_row(r)?,
                        event: r.get(13)?,
                        ds24_order_id: r.get(14)?,
                        product_id: r.get(15)?,
                    })
                },
            )?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    /// One job with everything known about it; [`StoreError::NotFound`] for an unknown id.
    pub async fn job_detail(&self, id: JobId) -> Result<JobDetail, StoreError> {
        self.read(move |c| {
            let job = c
                .query_row(
                    &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                    params![id.0],
                    job_row,
                )
                .optional()?
                .ok_or_else(|| StoreError::NotFound(format!("job {id}")))?;
            let ipn = ipn_detail(c, job.ipn_id)?
                .ok_or_else(|| StoreError::Internal(format!("job {id} has no IPN")))?;
            Ok(JobDetail {
                attempts: super::attempts_of(c, id.0)?,
                ledger: ledger_of(c, id.0)?,
                actions: actions_of(c, id.0)?,
                job,
                ipn,
            })
        })
        .await
    }

    /// Stored IPNs received at or after `since`, newest first, each with its routes.
    pub async fn review_events(
        &self,
        since: Option<i64>,
        limit: Option<u32>,
    ) -> Result<Vec<EventListing>, StoreError> {
        self.read(move |c| {
            let ipns: Vec<IpnDetail> = {
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT {IPN_COLUMNS} FROM ipns i
                     WHERE (?1 IS NULL OR i.received_at >= ?1)
                     ORDER BY i.id DESC LIMIT ?2"
                ))?;
                let rows =
                    stmt.query_map(params![since, limit.map_or(-1, i64::from)], ipn_detail_row)?;
                rows.collect::<Result<_, _>>()?
            };
            ipns.into_iter()
                .map(|ipn| {
                    Ok(EventListing {
                        routes: routes_of(c, ipn.id)?,
                        ipn,
                    })
                })
                .collect()
        })
        .await
    }

    /// One stored IPN with its routes; [`StoreError::NotFound`] for an unknown id.
    pub async fn review_event(&self, id: EventId) -> Result<EventListing, StoreError> {
        self.read(move |c| {
            let ipn =
                ipn_detail(c, id.0)?.ok_or_else(|| StoreError::NotFound(format!("event {id}")))?;
            Ok(EventListing {
                routes: routes_of(c, id.0)?,
                ipn,
            })
        })
        .await
    }

    /// `queue retry`: the selected dead, held or pending jobs become `pending`, due at `now`;
    /// held jobs behind them are released. All or nothing (see the module docs).
    pub async fn retry_jobs(
        &self,
        selection: RetrySelection,
        operator: Operator,
        now: i64,
    ) -> Result<QueueChange, StoreError> {
        self.call(move |c| {
            let ids = match selection {
                RetrySelection::Ids(ids) => ids.into_iter().map(|i| i.0).collect(),
                RetrySelection::Dead { integration } => {
                    let mut stmt = c.prepare_cached(
                        "SELECT id FROM jobs WHERE state = 'dead' AND (?1 IS NULL OR integration = ?1)
                         ORDER BY id",
                    )?;
                    let rows = stmt.query_map(params![integration], |r| r.get::<_, i64>(0))?;
                    rows.collect::<Result<BTreeSet<_>, _>>()?
                }
            };
            change_jobs(c, &ids, QueueCommand::Retry, &operator, now)
        })
        .await
    }

    /// `queue drop`: the named non-final jobs become `dropped`; held jobs behind them are
    /// released. All or nothing (see the module docs).
    pub async fn drop_jobs(
        &self,
        ids: Vec<JobId>,
        operator: Operator,
        now: i64,
    ) -> Result<QueueChange, StoreError> {
        self.call(move |c| {
            let ids: BTreeSet<i64> = ids.into_iter().map(|i| i.0).collect();
            change_jobs(c, &ids, QueueCommand::Drop, &operator, now)
        })
        .await
    }

    /// What a purge with this cutoff would remove, without removing it.
    pub async fn purge_preview(&self, cutoff: i64) -> Result<PurgeCount, StoreError> {
        self.read(move |c| {
            let attempts: i64 = c.query_row(
                &format!(
                    "SELECT COUNT(*) FROM attempts WHERE job_id IN (
                         SELECT id FROM jobs
                         WHERE state IN {FINAL_STATES_SQL} AND updated_at < ?1)"
                ),
                params![cutoff],
                |r| r.get(0),
            )?;
            let bodies: i64 = c.query_row(
                &format!("SELECT COUNT(*) FROM ipns WHERE {PURGEABLE_BODY_SQL}"),
                params![cutoff],
                |r| r.get(0),
            )?;
            Ok(PurgeCount {
                attempts_deleted: attempts.max(0) as u64,
                bodies_cleared: bodies.max(0) as u64,
            })
        })
        .await
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
        self.call(move |c| {
            let attempts = c.execute(
                &format!(
                    "DELETE FROM attempts WHERE id IN (
                         SELECT a.id FROM attempts a JOIN jobs j ON j.id = a.job_id
                         WHERE j.state IN {FINAL_STATES_SQL} AND j.updated_at < ?1
                         LIMIT ?2)"
                ),
                params![cutoff, max_rows],
            )?;
            let bodies = c.execute(
                &format!(
                    "UPDATE ipns SET raw_body = X'' WHERE id IN (
                         SELECT id FROM ipns WHERE {PURGEABLE_BODY_SQL} LIMIT ?2)"
                ),
                params![cutoff, max_rows],
            )?;
            Ok(PurgeCount {
                attempts_deleted: attempts as u64,
                bodies_cleared: bodies as u64,
            })
        })
        .await
    }

    /// Writes one audit row not tied to a job (e.g. a finished purge).
    pub async fn record_operator_action(
        &self,
        command: &str,
        operator: Operator,
        now: i64,
    ) -> Result<(), StoreError> {
        let command = command.to_owned();
        self.call(move |c| {
            record(
                c,
                now,
                &operator.user,
                &command,
                None,
                None,
                &operator.reason,
            )
        })
        .await
    }
}

/// Raw bodies a purge empties (`?1` = cutoff). Unqualified column names refer to `ipns`.
const PURGEABLE_BODY_SQL: &str = "received_at < ?1 AND length(raw_body) > 0
     AND EXISTS (SELECT 1 FROM jobs j WHERE j.ipn_id = ipns.id)
     AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.ipn_id = ipns.id
                     AND (j.state NOT IN ('delivered', 'dropped') OR j.updated_at >= ?1))";

/// `(state, integration, order_key, ipn_id)` of a job.
type JobKey = (String, String, String, i64);

fn change_jobs(
    c: &Connection,
    ids: &BTreeSet<i64>,
    command: QueueCommand,
    operator: &Operator,
    now: i64,
) -> Result<QueueChange, StoreError> {
    let mut missing = Vec::new();
    let mut refused = Vec::new();
    let mut change = QueueChange::default();
    for &id in ids {
        let found: Option<JobKey> = c
            .prepare_cached("SELECT state, integration, order_key, ipn_id FROM jobs WHERE id = ?1")?
            .query_row(params![id], |r| <_>::try_from(r))
            .optional()?;
        let Some((state, integration, order_key, ipn_id)) = found else {
            missing.push(format!("job {id} does not exist"));
            continue;
        };
        let state = JobState::parse(&state)
            .ok_or_else(|| StoreError::Internal(format!("job {id} has unknown state {state}")))?;
        if let Err(why) = allowed(c, command, id, state, &integration, &order_key)? {
            refused.push(why);
            continue;
        }
        match command {
            QueueCommand::Retry => c
                .prepare_cached(
                    "UPDATE jobs SET state = 'pending', next_attempt_at = ?2, updated_at = ?2,
                            retry_base = ?2
                     WHERE id = ?1",
                )?
                .execute(params![id, now])?,
            QueueCommand::Drop => c
                .prepare_cached("UPDATE jobs SET state = 'dropped', updated_at = ?2 WHERE id = ?1")?
                .execute(params![id, now])?,
        };
        record(
            c,
            now,
            &operator.user,
            command.name(),
            Some(id),
            Some(ipn_id),
            &operator.reason,
        )?;
        change.changed.push(id);
        // Released at once, so a later id of the same order is checked against the new
        // states (`retry 5 7` with 6 held behind 5 and 7 dead behind 6).
        let released = release_held(c, &integration, &order_key, id, command, operator, now)?;
        change.released.extend(released);
    }
    change.conclude(missing, refused)
}

/// Whether `command` may change job `id`; `Ok(Err(why))` when it is refused.
fn allowed(
    c: &Connection,
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
        let blocker: Option<(i64, String)> = c
            .prepare_cached(
                "SELECT id, state FROM jobs
                 WHERE integration = ?1 AND order_key = ?2 AND id < ?3
                   AND state IN ('dead', 'held')
                   -- an import never waits for an earlier refund or cancellation
                   AND ((SELECT action FROM jobs WHERE id = ?3) != 'import_order'
                        OR action = 'import_order')
                 ORDER BY id LIMIT 1",
            )?
            .query_row(params![integration, order_key, id], |r| <_>::try_from(r))
            .optional()?;
        if let Some((earlier, earlier_state)) = blocker {
            return Ok(Err(command.waits_behind(id, earlier, &earlier_state)));
        }
    }
    Ok(Ok(()))
}

/// Releases every held job of the order that no dead job precedes any more.
fn release_held(
    c: &Connection,
    integration: &str,
    order_key: &str,
    by: i64,
    command: QueueCommand,
    operator: &Operator,
    now: i64,
) -> Result<Vec<i64>, StoreError> {
    let jobs: Vec<(i64, String, i64)> = {
        let mut stmt = c.prepare_cached(
            "SELECT id, state, ipn_id FROM jobs WHERE integration = ?1 AND order_key = ?2
             ORDER BY id",
        )?;
        let rows = stmt.query_map(params![integration, order_key], |r| <_>::try_from(r))?;
        rows.collect::<Result<_, _>>()?
    };
    let mut released = Vec::new();
    for (id, state, ipn_id) in jobs {
        match state.as_str() {
            "dead" => break,
            "held" => {
                c.prepare_cached(
                    "UPDATE jobs SET state = 'pending', next_attempt_at = MAX(next_attempt_at, ?2),
                            updated_at = ?2
                     WHERE id = ?1",
                )?
                .execute(params![id, now])?;
                let reason = command.release_reason(by);
                record(
                    c,
                    now,
                    &operator.user,
                    "release",
                    Some(id),
                    Some(ipn_id),
                    &reason,
                )?;
                released.push(id);
            }
            _ => {}
        }
    }
    Ok(released)
}

fn record(
    c: &Connection,
    at: i64,
    user: &str,
    command: &str,
    job_id: Option<i64>,
    ipn_id: Option<i64>,
    reason: &str,
) -> Result<(), StoreError> {
    c.prepare_cached(
        "INSERT INTO operator_actions (at, user, command, job_id, ipn_id, reason)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![at, user, command, job_id, ipn_id, reason])?;
    Ok(())
}

fn prefixed_job_columns(alias: &str) -> String {
    JOB_COLUMNS
        .split(',')
        .map(|col| format!("{alias}.{}", col.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn ipn_detail_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<IpnDetail> {
    Ok(IpnDetail {
        id: r.get(0)?,
        source: r.get(1)?,
        event: r.get(2)?,
        order_id: r.get(3)?,
        order_item_id: r.get(4)?,
        product_id: r.get(5)?,
        transaction_id: r.get(6)?,
        buyer_email: r.get(7)?,
        amount: r.get(8)?,
        currency: r.get(9)?,
        received_at: r.get(10)?,
        body_bytes: r.get::<_, i64>(11)?.max(0) as u64,
    })
}

fn ipn_detail(c: &Connection, id: i64) -> Result<Option<IpnDetail>, StoreError> {
    Ok(
        c.prepare_cached(&format!("SELECT {IPN_COLUMNS} FROM ipns i WHERE i.id = ?1"))?
            .query_row(params![id], ipn_detail_row)
            .optional()?,
    )
}

fn routes_of(c: &Connection, ipn_id: i64) -> Result<Vec<RouteRow>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT r.integration, r.decision, r.reason, r.job_id, j.state, r.decided_at
         FROM routes r LEFT JOIN jobs j ON j.id = r.job_id
         WHERE r.ipn_id = ?1 ORDER BY r.id",
    )?;
    let rows = stmt.query_map(params![ipn_id], |r| {
        Ok(RouteRow {
            integration: r.get(0)?,
            decision: r.get(1)?,
            reason: r.get(2)?,
            job_id: r.get(3)?,
            job_state: r.get(4)?,
            decided_at: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn ledger_of(c: &Connection, job_id: i64) -> Result<Option<LedgerRow>, StoreError> {
    c.prepare_cached(&format!(
        "SELECT {} FROM ledger WHERE job_id = ?1",
        super::LEDGER_COLUMNS
    ))?
    .query_row(params![job_id], super::ledger_row)
    .optional()?
    .map(super::decode_ledger_row)
    .transpose()
}

fn actions_of(c: &Connection, job_id: i64) -> Result<Vec<OperatorActionRow>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT id, at, user, command, job_id, ipn_id, reason
         FROM operator_actions WHERE job_id = ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map(params![job_id], |r| {
        Ok(OperatorActionRow {
            id: r.get(0)?,
            at: r.get(1)?,
            user: r.get(2)?,
            command: r.get(3)?,
            job_id: r.get(4)?,
            ipn_id: r.get(5)?,
            reason: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The SQL of [`SqliteStore::review_jobs`] for `filter`: only the filters given are in it.
/// `(?1 IS NULL OR j.state = ?1)` kept the planner from the index `jobs_state (state, id)`,
/// so `queue list --state dead` walked every job newest first until it had its `limit`
/// (issue 13). Unused parameters stay numbered and bound (SQLite counts parameters up to the
/// highest number).
pub(super) fn review_jobs_sql(filter: &ReviewFilter) -> String {
    let columns = prefixed_job_columns("j");
    let mut filters = String::new();
    for (given, sql) in [
        (filter.state.is_some(), " AND j.state = ?1"),
        (filter.integration.is_some(), " AND j.integration = ?2"),
        (filter.since.is_some(), " AND j.created_at >= ?3"),
    ] {
        if given {
            filters.push_str(sql);
        }
    }
    format!(
        "SELECT {columns}, i.event, i.order_id, i.product_id
         FROM jobs j JOIN ipns i ON i.id = j.ipn_id
         WHERE 1{filters}
         ORDER BY j.id DESC LIMIT ?4"
    )
}
