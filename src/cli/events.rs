//! `ipn-bridge events …`: the stored IPNs (the inbox) and how each was routed: per
//! integration the decision (`job` or `skipped`), its reason, and the job with its current
//! state. Read only; opens its own [`Store`] on the daemon's file like `queue`.
//!
//! JSON (`--json`; times are RFC 3339 UTC strings, absent values are `null`):
//! - `Event` = `{"id", "source", "event", "ds24_order_id", "order_item_id", "product_id",
//!   "transaction_id", "amount", "currency", "buyer_email" (masked), "received_at",
//!   "body_purged"}`.
//! - `Route` = `{"integration", "decision", "reason", "job_id", "job_state"}`.
//! - `events list`: `{"events": [Event + {"routes": [Route…]}…]}`, newest first.
//! - `events show`: `{"event": Event, "routes": [Route…]}`.
//!
//! The raw body is not printed: it holds the buyer's address and the signature; the summary
//! is what a person needs to find the order. Exit codes as for `queue` (3: no such event).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::ConfigArg;
use super::output::{
    self, DEFAULT_LIMIT, Table, cell, fields, mask_email, or_dash, print_json, rfc3339, utc_time,
};
use crate::domain::EventId;
use crate::store::Store;
use crate::store::review::{EventListing, IpnDetail, RouteRow};

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(subcommand)]
    pub command: EventsCommand,
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// List stored IPNs, newest first, with how each was routed.
    #[command(
        long_about = "List stored IPNs, newest first: event, Digistore24 order, product, \
                      amount, receipt time (UTC) and, per integration, the routing decision \
                      and the job it produced with its state.",
        after_help = "Examples:\n  ipn-bridge events list --since 1d\n  \
                      ipn-bridge events list --limit 10 --json"
    )]
    List(EventsListArgs),
    /// Show one stored IPN and every integration's routing decision with its reason.
    #[command(
        long_about = "Show one stored IPN (masked buyer e-mail, no raw body) and every \
                      integration's routing decision with its reason and job.\n\n\
                      Exit code 3 when the event does not exist.",
        after_help = "Example:\n  ipn-bridge events show 17"
    )]
    Show(EventsShowArgs),
}

#[derive(Debug, Args)]
pub struct EventsListArgs {
    #[command(flatten)]
    pub config: super::ConfigArg,
    /// Only IPNs received within this age, e.g. 2h, 7d.
    #[arg(long, value_name = "AGE", value_parser = output::parse_age)]
    pub since: Option<Duration>,
    /// At most this many IPNs (0 = all).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_LIMIT)]
    pub limit: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EventsShowArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The event id (as shown by `events list` and `queue show`).
    pub id: i64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// An IPN as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct EventJson {
    id: i64,
    source: String,
    event: String,
    ds24_order_id: Option<String>,
    order_item_id: Option<String>,
    product_id: Option<String>,
    transaction_id: Option<String>,
    amount: Option<String>,
    currency: Option<String>,
    buyer_email: Option<String>,
    received_at: String,
    body_purged: bool,
}

impl From<&IpnDetail> for EventJson {
    fn from(i: &IpnDetail) -> Self {
        EventJson {
            id: i.id,
            source: i.source.clone(),
            event: i.event.clone(),
            ds24_order_id: i.order_id.clone(),
            order_item_id: i.order_item_id.clone(),
            product_id: i.product_id.clone(),
            transaction_id: i.transaction_id.clone(),
            amount: i.amount.clone(),
            currency: i.currency.clone(),
            buyer_email: i.buyer_email.as_deref().map(mask_email),
            received_at: rfc3339(i.received_at),
            body_purged: i.body_bytes == 0,
        }
    }
}

#[derive(Debug, Serialize)]
struct RouteJson {
    integration: String,
    decision: String,
    reason: String,
    job_id: Option<i64>,
    job_state: Option<String>,
}

impl From<&RouteRow> for RouteJson {
    fn from(r: &RouteRow) -> Self {
        RouteJson {
            integration: r.integration.clone(),
            decision: r.decision.clone(),
            reason: r.reason.clone(),
            job_id: r.job_id,
            job_state: r.job_state.clone(),
        }
    }
}

/// Runs an `events` subcommand.
pub fn run(args: EventsArgs) -> anyhow::Result<ExitCode> {
    let config = match &args.command {
        EventsCommand::List(a) => &a.config,
        EventsCommand::Show(a) => &a.config,
    };
    let runtime = output::runtime()?;
    let store = runtime.block_on(output::open_store(&config.config))?;
    runtime.block_on(async move {
        let result = match args.command {
            EventsCommand::List(a) => list(&store, a).await,
            EventsCommand::Show(a) => show(&store, a).await,
        };
        store.close().await;
        result
    })
}

async fn list(store: &Store, a: EventsListArgs) -> anyhow::Result<ExitCode> {
    let since = a
        .since
        .map(|d| output::now_ms().saturating_sub(output::duration_ms(d)));
    let events = match store
        .review_events(since, (a.limit > 0).then_some(a.limit))
        .await
    {
        Ok(e) => e,
        Err(e) => return Ok(output::report_store_error(&e)),
    };
    if a.json {
        #[derive(Serialize)]
        struct Item {
            #[serde(flatten)]
            event: EventJson,
            routes: Vec<RouteJson>,
        }
        #[derive(Serialize)]
        struct Out {
            events: Vec<Item>,
        }
        let events = events
            .iter()
            .map(|e| Item {
                event: EventJson::from(&e.ipn),
                routes: e.routes.iter().map(RouteJson::from).collect(),
            })
            .collect();
        print_json(&Out { events })?;
    } else {
        print!("{}", events_table(&events));
        if a.limit > 0 && events.len() == a.limit as usize {
            eprintln!("(the {} newest shown; --limit 0 shows all)", events.len());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The `events list` table.
pub fn events_table(events: &[EventListing]) -> String {
    if events.is_empty() {
        return "no events\n".to_owned();
    }
    let mut t = Table::new(&[
        "ID",
        "RECEIVED (UTC)",
        "EVENT",
        "DS24 ORDER",
        "PRODUCT",
        "AMOUNT",
        "ROUTING",
    ]);
    for e in events {
        let i = &e.ipn;
        t.row(vec![
            i.id.to_string(),
            utc_time(i.received_at),
            i.event.clone(),
            or_dash(i.order_id.as_deref()),
            or_dash(i.product_id.as_deref()),
            amount(i),
            cell(&routing_summary(&e.routes), 80),
        ]);
    }
    t.render()
}

/// `main: job 3 delivered; crm2: skipped`.
fn routing_summary(routes: &[RouteRow]) -> String {
    if routes.is_empty() {
        return "no integration".to_owned();
    }
    routes
        .iter()
        .map(|r| match (r.job_id, r.job_state.as_deref()) {
            (Some(id), Some(state)) => format!("{}: job {id} {state}", r.integration),
            _ => format!("{}: {}", r.integration, r.decision),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn amount(i: &IpnDetail) -> String {
    match (i.amount.as_deref(), i.currency.as_deref()) {
        (Some(a), Some(c)) => format!("{a} {c}"),
        (Some(a), None) => a.to_owned(),
        _ => "-".to_owned(),
    }
}

/// The IPN summary lines shared with `queue show`.
pub fn event_fields(i: &IpnDetail) -> String {
    fields(&[
        ("event", i.event.clone()),
        ("DS24 order", or_dash(i.order_id.as_deref())),
        ("order item", or_dash(i.order_item_id.as_deref())),
        ("product", or_dash(i.product_id.as_deref())),
        ("transaction", or_dash(i.transaction_id.as_deref())),
        ("amount", amount(i)),
        (
            "buyer e-mail",
            i.buyer_email
                .as_deref()
                .map_or_else(|| "-".to_owned(), mask_email),
        ),
        ("received", utc_time(i.received_at)),
        (
            "raw body",
            if i.body_bytes == 0 {
                "purged".to_owned()
            } else {
                format!("{} bytes", i.body_bytes)
            },
        ),
    ])
}

async fn show(store: &Store, a: EventsShowArgs) -> anyhow::Result<ExitCode> {
    let e = match store.review_event(EventId(a.id)).await {
        Ok(e) => e,
        Err(e) => return Ok(output::report_store_error(&e)),
    };
    if a.json {
        #[derive(Serialize)]
        struct Out {
            event: EventJson,
            routes: Vec<RouteJson>,
        }
        print_json(&Out {
            event: EventJson::from(&e.ipn),
            routes: e.routes.iter().map(RouteJson::from).collect(),
        })?;
    } else {
        print!("{}", event_text(&e));
    }
    Ok(ExitCode::SUCCESS)
}

/// The `events show` text.
pub fn event_text(e: &EventListing) -> String {
    let mut out = format!("Event {} (source {})\n", e.ipn.id, e.ipn.source);
    out.push_str(&event_fields(&e.ipn));
    out.push_str("\nRouting\n");
    if e.routes.is_empty() {
        out.push_str("  no integration routes this source\n");
        return out;
    }
    let mut t = Table::new(&["INTEGRATION", "DECISION", "JOB", "STATE", "REASON"]);
    for r in &e.routes {
        t.row(vec![
            r.integration.clone(),
            r.decision.clone(),
            r.job_id.map_or_else(|| "-".to_owned(), |id| id.to_string()),
            or_dash(r.job_state.as_deref()),
            cell(&r.reason, 120),
        ]);
    }
    for line in t.render().lines() {
        out.push_str(&format!("  {line}\n"));
    }
    out
}
