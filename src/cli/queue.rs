//! `ipn-bridge queue …`: review and repair the delivery queue on the live database.
//!
//! Each command loads the configuration (`-c`) only to find `[store].path`, opens its own
//! [`Store`] on that file (SQLite WAL: the running daemon keeps working) and runs one
//! transaction. The dispatcher looks at the database at least every second, so a job set to
//! `pending` here is picked up within about a second.
//!
//! Semantics (the store enforces them, see [`crate::store::review`]):
//! - `retry ID…` / `retry --dead [--integration N]`: dead, held and pending jobs become
//!   `pending`, due now; held jobs behind them are released. Delivered and dropped jobs are
//!   refused (a delivered job is never sent twice), in-flight jobs too. A dead or held job
//!   behind an earlier dead or held job of the same order is refused (retry the earlier one).
//! - `drop ID… --reason TEXT`: pending, dead or held jobs become `dropped`; held jobs behind
//!   them are released.
//! - Both are all or nothing and write one `operator_actions` row per job (time, user from
//!   `$SUDO_USER`, else `$USER`, else `unknown`, reason).
//! - `purge --older-than AGE`: for jobs delivered or dropped more than AGE ago, deletes the
//!   attempt rows, and empties the raw body of IPNs whose jobs are all such jobs. Never
//!   deleted: IPN rows with their business keys (so a late repeat of an old IPN is still
//!   recognised as a duplicate), jobs, routes, the ledger (a later refund needs the Konnektive
//!   ids), the audit trail, and anything of IPNs with an unfinished job or with no job at all.
//!   Runs in batches of [`PURGE_BATCH_ROWS`] so the daemon is never blocked for long.
//!
//! JSON (`--json`; times are RFC 3339 UTC strings, absent values are `null`):
//! - `queue list`: `{"jobs": [Job…]}`, newest first, where `Job` is `{"id", "event_id",
//!   "integration", "target", "action", "state", "attempts", "needs_reconcile", "order_key",
//!   "ds24_order_id", "product_id", "event", "created_at", "updated_at", "next_attempt_at",
//!   "last_error"}`.
//! - `queue show`: `{"job": Job, "event": Event, "attempts": [{"number", "kind",
//!   "started_at", "finished_at", "outcome", "endpoint", "http_status", "reason", "request",
//!   "response"}…], "attempts_purged": bool, "ledger": null | {"integration",
//!   "ds24_order_id", "ds24_item", "ds24_transaction_id", "reference", "target_order_id",
//!   "target_customer_id", "purchase_ids", "transaction_ids", "created_at"},
//!   "operator_actions": [{"at", "user", "command", "reason"}…]}`; `Event` is described in
//!   [`super::events`].
//! - `queue retry`: `{"retried": [id…], "released": [id…]}`; `queue drop`:
//!   `{"dropped": [id…], "released": [id…]}`.
//! - `queue purge`: `{"cutoff", "dry_run", "attempts_deleted", "bodies_cleared"}`.
//!
//! Exit codes: 0 done; 1 failure (configuration, database, a refused change: nothing was
//! changed); 2 usage; 3 an id does not exist (nothing was changed).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::ConfigArg;
use super::events::{EventJson, event_fields};
use super::output::{
    self, DEFAULT_LIMIT, EXIT_FAILURE, Table, cell, fields, or_dash, print_json, redact_secrets,
    rfc3339, utc_time,
};
use crate::domain::{JobId, JobState};
use crate::store::review::{
    JobDetail, JobListing, Operator, PurgeCount, QueueChange, RetrySelection, ReviewFilter,
};
use crate::store::{AttemptRow, JobRow, LedgerRow, Store, StoreError};

/// Rows deleted (and bodies emptied) per purge transaction.
pub const PURGE_BATCH_ROWS: u32 = 2_000;

/// The smallest `--older-than` accepted: purging the last day's history is a typo.
pub const PURGE_MIN_AGE: Duration = Duration::from_secs(86_400);

const STATES: [&str; 6] = [
    "pending",
    "in_flight",
    "delivered",
    "dead",
    "held",
    "dropped",
];

#[derive(Debug, Args)]
pub struct QueueArgs {
    #[command(subcommand)]
    pub command: QueueCommand,
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// List delivery jobs, newest first.
    #[command(
        long_about = "List delivery jobs, newest first: state, integration, action, the \
                      Digistore24 order, attempts, times (UTC) and the last error.\n\n\
                      States: pending, in_flight, delivered, dead (needs a person), held \
                      (waits behind a dead job of the same order), dropped.",
        after_help = "Examples:\n  ipn-bridge queue list --state dead\n  \
                      ipn-bridge queue list --integration main --since 2h --json"
    )]
    List(ListArgs),
    /// Show one job: its IPN, every attempt with Konnektive's answer, ledger, operator actions.
    #[command(
        long_about = "Show one job: the job, a summary of its IPN (event, Digistore24 order, \
                      product, amount, masked buyer e-mail), every attempt with the request \
                      and Konnektive's answer (passwords redacted), the ledger entry if it was \
                      delivered, and the operator actions on it.\n\n\
                      Exit code 3 when the job does not exist.",
        after_help = "Example:\n  ipn-bridge queue show 42"
    )]
    Show(ShowArgs),
    /// Send dead, held or pending jobs again now.
    #[command(
        long_about = "Send jobs again now: dead, held and pending jobs become pending, due \
                      immediately; the running daemon picks them up within about a second. Jobs \
                      held behind a retried job are released. Delivered and dropped jobs are \
                      refused (a delivered job is never sent twice), and so is a job behind an \
                      earlier dead job of the same order (retry that one first).\n\n\
                      All or nothing: if any id is refused or unknown, nothing changes (exit 1, \
                      or 3 for an unknown id). Every retry is recorded in the audit trail with \
                      the user ($SUDO_USER, else $USER) and the reason.",
        after_help = "Examples:\n  ipn-bridge queue retry 42 43 --reason \"product 33 added to the campaign\"\n  \
                      ipn-bridge queue retry --dead --integration main"
    )]
    Retry(RetryArgs),
    /// Give up on jobs for good, with a reason.
    #[command(
        long_about = "Give up on pending, dead or held jobs for good: they become dropped and \
                      are never sent. Jobs held behind a dropped job are released. Delivered \
                      jobs cannot be dropped, nor can a job being delivered right now.\n\n\
                      All or nothing, like retry. Every drop is recorded in the audit trail \
                      with the user and the reason.",
        after_help = "Example:\n  ipn-bridge queue drop 42 --reason \"test order, imported by hand\""
    )]
    Drop(DropArgs),
    /// Delete old delivery history (attempt rows and raw IPN bodies); keeps keys and ledger.
    #[command(
        long_about = "Delete old delivery history. For jobs delivered or dropped more than \
                      AGE ago, the attempt rows are deleted; for IPNs whose jobs are all such \
                      jobs, the raw body is emptied (`queue show` then reports the attempts as \
                      purged, and the event can no longer be replayed).\n\n\
                      Never deleted: the IPN rows with their business keys (a late repeat of \
                      an old IPN is still recognised as a duplicate), the jobs and their \
                      routing, the ledger (a later refund needs the Konnektive order ids), the \
                      audit trail, and anything belonging to an IPN with an unfinished job or \
                      with no job at all.\n\n\
                      Works in small batches, so the running daemon is not blocked. AGE is at \
                      least 1d. The purge itself is recorded in the audit trail.",
        after_help = "Examples:\n  ipn-bridge queue purge --older-than 90d --dry-run\n  \
                      ipn-bridge queue purge --older-than 90d"
    )]
    Purge(PurgeArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Only jobs in this state.
    #[arg(long, value_name = "S", value_parser = STATES)]
    pub state: Option<String>,
    /// Only jobs of this integration.
    #[arg(long, value_name = "N")]
    pub integration: Option<String>,
    /// Only jobs created within this age, e.g. 30m, 2h, 7d.
    #[arg(long, value_name = "AGE", value_parser = output::parse_age)]
    pub since: Option<Duration>,
    /// At most this many jobs (0 = all).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_LIMIT)]
    pub limit: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The job id.
    pub id: i64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Job ids to retry.
    #[arg(
        value_name = "ID",
        required_unless_present = "dead",
        conflicts_with = "dead"
    )]
    pub ids: Vec<i64>,
    /// Retry every dead job.
    #[arg(long)]
    pub dead: bool,
    /// With --dead: only this integration's jobs.
    #[arg(long, value_name = "N", conflicts_with = "ids")]
    pub integration: Option<String>,
    /// Recorded in the audit trail.
    #[arg(long, default_value = "manual retry")]
    pub reason: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DropArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Job ids to drop.
    #[arg(value_name = "ID", required = true)]
    pub ids: Vec<i64>,
    /// Why (recorded in the audit trail).
    #[arg(long, required = true, value_parser = non_empty)]
    pub reason: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// History older than this (at least 1d), e.g. 90d.
    #[arg(long, value_name = "AGE", value_parser = purge_age)]
    pub older_than: Duration,
    /// Only count what would be removed.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

fn non_empty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(s.to_owned())
    }
}

fn purge_age(s: &str) -> Result<Duration, String> {
    let d = output::parse_age(s)?;
    if d < PURGE_MIN_AGE {
        return Err("must be at least 1d".to_owned());
    }
    Ok(d)
}

/// Runs a `queue` subcommand.
pub fn run(args: QueueArgs) -> anyhow::Result<ExitCode> {
    let config = match &args.command {
        QueueCommand::List(a) => &a.config,
        QueueCommand::Show(a) => &a.config,
        QueueCommand::Retry(a) => &a.config,
        QueueCommand::Drop(a) => &a.config,
        QueueCommand::Purge(a) => &a.config,
    };
    let runtime = output::runtime()?;
    let store = runtime.block_on(output::open_store(&config.config))?;
    runtime.block_on(async move {
        let result = match args.command {
            QueueCommand::List(a) => list(&store, a).await,
            QueueCommand::Show(a) => show(&store, a).await,
            QueueCommand::Retry(a) => retry(&store, a).await,
            QueueCommand::Drop(a) => drop_jobs(&store, a).await,
            QueueCommand::Purge(a) => purge(&store, a).await,
        };
        store.close().await;
        result
    })
}

/// A store error becomes an exit code here; anything else goes up to `main` (exit 1).
fn finish(result: Result<(), StoreError>) -> anyhow::Result<ExitCode> {
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => Ok(output::report_store_error(&e)),
    }
}

/// A job as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct JobJson {
    id: i64,
    event_id: i64,
    integration: String,
    target: String,
    action: String,
    state: String,
    attempts: u32,
    needs_reconcile: bool,
    order_key: String,
    ds24_order_id: Option<String>,
    product_id: Option<String>,
    event: String,
    created_at: String,
    updated_at: String,
    next_attempt_at: String,
    last_error: Option<String>,
}

impl JobJson {
    fn new(job: &JobRow, event: &str, order: Option<&str>, product: Option<&str>) -> Self {
        JobJson {
            id: job.id,
            event_id: job.ipn_id,
            integration: job.integration.clone(),
            target: job.target.clone(),
            action: job.action.clone(),
            state: job.state.clone(),
            attempts: job.attempts,
            needs_reconcile: job.needs_reconcile,
            order_key: job.order_key.clone(),
            ds24_order_id: order.map(str::to_owned),
            product_id: product.map(str::to_owned),
            event: event.to_owned(),
            created_at: rfc3339(job.created_at),
            updated_at: rfc3339(job.updated_at),
            next_attempt_at: rfc3339(job.next_attempt_at),
            last_error: job.last_error.as_deref().map(redact_secrets),
        }
    }
}

async fn list(store: &Store, a: ListArgs) -> anyhow::Result<ExitCode> {
    let state = a.state.as_deref().and_then(JobState::parse);
    let filter = ReviewFilter {
        state,
        integration: a.integration,
        since: a
            .since
            .map(|d| output::now_ms().saturating_sub(output::duration_ms(d))),
        limit: (a.limit > 0).then_some(a.limit),
    };
    let jobs = match store.review_jobs(filter).await {
        Ok(jobs) => jobs,
        Err(e) => return finish(Err(e)),
    };
    if a.json {
        #[derive(Serialize)]
        struct Out {
            jobs: Vec<JobJson>,
        }
        let jobs = jobs
            .iter()
            .map(|l| {
                JobJson::new(
                    &l.job,
                    &l.event,
                    l.ds24_order_id.as_deref(),
                    l.product_id.as_deref(),
                )
            })
            .collect();
        print_json(&Out { jobs })?;
    } else {
        print!("{}", jobs_table(&jobs));
        if a.limit > 0 && jobs.len() == a.limit as usize {
            eprintln!("(the {} newest shown; --limit 0 shows all)", jobs.len());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The `queue list` table.
pub fn jobs_table(jobs: &[JobListing]) -> String {
    if jobs.is_empty() {
        return "no jobs\n".to_owned();
    }
    let mut t = Table::new(&[
        "ID",
        "STATE",
        "INTEGRATION",
        "ACTION",
        "DS24 ORDER",
        "TRIES",
        "CREATED (UTC)",
        "NEXT ATTEMPT (UTC)",
        "LAST ERROR",
    ]);
    for l in jobs {
        let j = &l.job;
        let next = if j.state == "pending" {
            utc_time(j.next_attempt_at)
        } else {
            "-".to_owned()
        };
        t.row(vec![
            j.id.to_string(),
            j.state.clone(),
            j.integration.clone(),
            j.action.clone(),
            or_dash(l.ds24_order_id.as_deref()),
            j.attempts.to_string(),
            utc_time(j.created_at),
            next,
            cell(&redact_secrets(j.last_error.as_deref().unwrap_or("")), 60),
        ]);
    }
    t.render()
}

#[derive(Debug, Serialize)]
struct AttemptJson {
    number: u32,
    kind: String,
    started_at: String,
    finished_at: Option<String>,
    outcome: Option<String>,
    endpoint: Option<String>,
    http_status: Option<u16>,
    reason: Option<String>,
    request: Option<String>,
    response: Option<String>,
}

impl From<&AttemptRow> for AttemptJson {
    fn from(a: &AttemptRow) -> Self {
        AttemptJson {
            number: a.number,
            kind: a.kind.clone(),
            started_at: rfc3339(a.started_at),
            finished_at: a.finished_at.map(rfc3339),
            outcome: a.outcome.clone(),
            endpoint: a.endpoint.clone(),
            http_status: a.http_status,
            reason: a.reason.as_deref().map(redact_secrets),
            request: a.request.as_deref().map(redact_secrets),
            response: a.response.as_deref().map(redact_secrets),
        }
    }
}

#[derive(Debug, Serialize)]
struct LedgerJson {
    integration: String,
    ds24_order_id: String,
    ds24_item: Option<String>,
    ds24_transaction_id: Option<String>,
    reference: String,
    target_order_id: Option<String>,
    target_customer_id: Option<String>,
    purchase_ids: Vec<String>,
    transaction_ids: Vec<String>,
    created_at: String,
}

impl From<&LedgerRow> for LedgerJson {
    fn from(l: &LedgerRow) -> Self {
        LedgerJson {
            integration: l.integration.clone(),
            ds24_order_id: l.ds24_order_id.clone(),
            ds24_item: l.ds24_item.clone(),
            ds24_transaction_id: l.ds24_transaction_id.clone(),
            reference: l.reference.clone(),
            target_order_id: l.target_order_id.clone(),
            target_customer_id: l.target_customer_id.clone(),
            purchase_ids: l.purchase_ids.clone(),
            transaction_ids: l.transaction_ids.clone(),
            created_at: rfc3339(l.created_at),
        }
    }
}

#[derive(Debug, Serialize)]
struct ActionJson {
    at: String,
    user: String,
    command: String,
    reason: String,
}

#[derive(Debug, Serialize)]
struct ShowJson {
    job: JobJson,
    event: EventJson,
    attempts: Vec<AttemptJson>,
    attempts_purged: bool,
    ledger: Option<LedgerJson>,
    operator_actions: Vec<ActionJson>,
}

async fn show(store: &Store, a: ShowArgs) -> anyhow::Result<ExitCode> {
    let detail = match store.job_detail(JobId(a.id)).await {
        Ok(d) => d,
        Err(e) => return finish(Err(e)),
    };
    if a.json {
        let ipn = &detail.ipn;
        print_json(&ShowJson {
            job: JobJson::new(
                &detail.job,
                &ipn.event,
                ipn.order_id.as_deref(),
                ipn.product_id.as_deref(),
            ),
            event: EventJson::from(ipn),
            attempts: detail.attempts.iter().map(AttemptJson::from).collect(),
            attempts_purged: attempts_purged(&detail),
            ledger: detail.ledger.as_ref().map(LedgerJson::from),
            operator_actions: detail
                .actions
                .iter()
                .map(|o| ActionJson {
                    at: rfc3339(o.at),
                    user: o.user.clone(),
                    command: o.command.clone(),
                    reason: o.reason.clone(),
                })
                .collect(),
        })?;
    } else {
        print!("{}", job_text(&detail));
    }
    Ok(ExitCode::SUCCESS)
}

fn attempts_purged(d: &JobDetail) -> bool {
    d.attempts.is_empty() && d.job.attempts > 0
}

/// The `queue show` text.
pub fn job_text(d: &JobDetail) -> String {
    let j = &d.job;
    let mut out = format!(
        "Job {}  {}  ({} → {}, {})\n",
        j.id, j.state, j.integration, j.target, j.action
    );
    let next = if j.state == "pending" {
        utc_time(j.next_attempt_at)
    } else {
        "-".to_owned()
    };
    out.push_str(&fields(&[
        ("order key", j.order_key.clone()),
        ("attempts", j.attempts.to_string()),
        ("created", utc_time(j.created_at)),
        ("updated", utc_time(j.updated_at)),
        ("next attempt", next),
        (
            "reconcile first",
            if j.needs_reconcile { "yes" } else { "no" }.to_owned(),
        ),
        (
            "last error",
            cell(&redact_secrets(j.last_error.as_deref().unwrap_or("-")), 200),
        ),
    ]));

    out.push_str(&format!("\nEvent {} (source {})\n", d.ipn.id, d.ipn.source));
    out.push_str(&event_fields(&d.ipn));

    out.push_str("\nAttempts\n");
    if attempts_purged(d) {
        out.push_str("  (purged with `queue purge`)\n");
    } else if d.attempts.is_empty() {
        out.push_str("  none yet\n");
    }
    for a in &d.attempts {
        let finished = a.finished_at.map_or_else(|| "running".to_owned(), utc_time);
        let status = a
            .http_status
            .map_or_else(|| "-".to_owned(), |s| format!("HTTP {s}"));
        out.push_str(&format!(
            "  #{} {}  {} → {}  {}  {}  {}\n",
            a.number,
            a.kind,
            utc_time(a.started_at),
            finished,
            a.outcome.as_deref().unwrap_or("open"),
            or_dash(a.endpoint.as_deref()),
            status,
        ));
        let mut detail = Vec::new();
        if let Some(reason) = a.reason.as_deref().filter(|r| !r.is_empty()) {
            detail.push(("reason", cell(&redact_secrets(reason), 400)));
        }
        if let Some(request) = a.request.as_deref().filter(|r| !r.is_empty()) {
            detail.push(("request", cell(&redact_secrets(request), 400)));
        }
        if let Some(response) = a.response.as_deref().filter(|r| !r.is_empty()) {
            detail.push(("response", cell(&redact_secrets(response), 400)));
        }
        for line in fields(&detail).lines() {
            out.push_str(&format!("    {}\n", line.trim_start()));
        }
    }

    if let Some(l) = &d.ledger {
        out.push_str("\nLedger\n");
        out.push_str(&fields(&[
            ("DS24 order", l.ds24_order_id.clone()),
            ("DS24 item", or_dash(l.ds24_item.as_deref())),
            (
                "DS24 transaction",
                or_dash(l.ds24_transaction_id.as_deref()),
            ),
            ("reference", l.reference.clone()),
            ("target order", or_dash(l.target_order_id.as_deref())),
            ("target customer", or_dash(l.target_customer_id.as_deref())),
            ("purchases", list_or_dash(&l.purchase_ids)),
            ("transactions", list_or_dash(&l.transaction_ids)),
            ("recorded", utc_time(l.created_at)),
        ]));
    }

    out.push_str("\nOperator actions\n");
    if d.actions.is_empty() {
        out.push_str("  none\n");
    }
    for o in &d.actions {
        out.push_str(&format!(
            "  {}  {}  {}  {}\n",
            utc_time(o.at),
            o.user,
            o.command,
            cell(&o.reason, 200)
        ));
    }
    out
}

fn list_or_dash(ids: &[String]) -> String {
    if ids.is_empty() {
        "-".to_owned()
    } else {
        ids.join(", ")
    }
}

fn operator(reason: String) -> Operator {
    Operator {
        user: output::operator_user(),
        reason,
    }
}

fn change_text(verb: &str, change: &QueueChange) -> String {
    let mut out = String::new();
    for id in &change.changed {
        out.push_str(&format!("{verb} job {id}\n"));
    }
    for id in &change.released {
        out.push_str(&format!("released job {id} (was held behind it)\n"));
    }
    out
}

async fn retry(store: &Store, a: RetryArgs) -> anyhow::Result<ExitCode> {
    let selection = if a.dead {
        RetrySelection::Dead {
            integration: a.integration,
        }
    } else {
        RetrySelection::Ids(a.ids.into_iter().map(JobId).collect())
    };
    let change = match store
        .retry_jobs(selection, operator(a.reason), output::now_ms())
        .await
    {
        Ok(c) => c,
        Err(e) => return finish(Err(e)),
    };
    if a.json {
        #[derive(Serialize)]
        struct Out<'a> {
            retried: &'a [i64],
            released: &'a [i64],
        }
        print_json(&Out {
            retried: &change.changed,
            released: &change.released,
        })?;
    } else if change.changed.is_empty() {
        println!("no dead jobs to retry");
    } else {
        print!("{}", change_text("retried", &change));
        println!("the running daemon sends them within about a second");
    }
    Ok(ExitCode::SUCCESS)
}

async fn drop_jobs(store: &Store, a: DropArgs) -> anyhow::Result<ExitCode> {
    let ids = a.ids.into_iter().map(JobId).collect();
    let change = match store
        .drop_jobs(ids, operator(a.reason), output::now_ms())
        .await
    {
        Ok(c) => c,
        Err(e) => return finish(Err(e)),
    };
    if a.json {
        #[derive(Serialize)]
        struct Out<'a> {
            dropped: &'a [i64],
            released: &'a [i64],
        }
        print_json(&Out {
            dropped: &change.changed,
            released: &change.released,
        })?;
    } else {
        print!("{}", change_text("dropped", &change));
    }
    Ok(ExitCode::SUCCESS)
}

async fn purge(store: &Store, a: PurgeArgs) -> anyhow::Result<ExitCode> {
    let now = output::now_ms();
    let cutoff = now.saturating_sub(output::duration_ms(a.older_than));
    let total = if a.dry_run {
        match store.purge_preview(cutoff).await {
            Ok(t) => t,
            Err(e) => return finish(Err(e)),
        }
    } else {
        let mut total = PurgeCount::default();
        loop {
            let step = match store.purge_history_batch(cutoff, PURGE_BATCH_ROWS).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!(
                        "purged so far: {} attempt row(s), {} raw body(ies)",
                        total.attempts_deleted, total.bodies_cleared
                    );
                    return finish(Err(e));
                }
            };
            if step == PurgeCount::default() {
                break;
            }
            total.attempts_deleted += step.attempts_deleted;
            total.bodies_cleared += step.bodies_cleared;
        }
        let reason = format!(
            "older than {}: {} attempt row(s) deleted, {} raw body(ies) emptied",
            humantime_days(a.older_than),
            total.attempts_deleted,
            total.bodies_cleared
        );
        if let Err(e) = store
            .record_operator_action("purge", operator(reason), now)
            .await
        {
            eprintln!("warning: the purge is done but could not be recorded: {e}");
            return Ok(ExitCode::from(EXIT_FAILURE));
        }
        total
    };
    if a.json {
        #[derive(Serialize)]
        struct Out {
            cutoff: String,
            dry_run: bool,
            attempts_deleted: u64,
            bodies_cleared: u64,
        }
        print_json(&Out {
            cutoff: rfc3339(cutoff),
            dry_run: a.dry_run,
            attempts_deleted: total.attempts_deleted,
            bodies_cleared: total.bodies_cleared,
        })?;
    } else {
        let verb = if a.dry_run { "would delete" } else { "deleted" };
        println!(
            "history of jobs finished before {} UTC: {verb} {} attempt row(s), {} raw IPN body(ies)",
            utc_time(cutoff),
            total.attempts_deleted,
            total.bodies_cleared
        );
        println!("kept: IPN business keys, jobs, routes, ledger, operator actions");
    }
    Ok(ExitCode::SUCCESS)
}

/// `90d`, `36h`, `15m` or seconds: the age as the operator probably wrote it.
fn humantime_days(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_ages_below_a_day_are_refused() {
        assert!(purge_age("23h").is_err());
        assert_eq!(purge_age("1d"), Ok(PURGE_MIN_AGE));
        assert!(purge_age("90").is_err());
        assert_eq!(humantime_days(Duration::from_secs(90 * 86_400)), "90d");
        assert_eq!(humantime_days(Duration::from_secs(36 * 3_600)), "36h");
    }

    #[test]
    fn states_match_the_domain() {
        let domain: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(STATES.to_vec(), domain);
    }
}
