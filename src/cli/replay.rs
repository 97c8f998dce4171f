//! `ipn-bridge replay EVENT_ID… [--integration N] [--dry-run]`: routes stored IPNs again
//! with today's configuration, after a product map or a filter was fixed.
//!
//! A replay creates a job only where the IPN has none for that integration yet
//! ([`Store::add_routes`]), so an import that already happened (or is queued) is never
//! repeated. A dead or dropped job is re-routed in place with today's action (after fixing
//! the product map that made Konnektive refuse it, say); it keeps any pending
//! reconciliation, so nothing that may have reached Konnektive is sent twice. The running
//! daemon picks the jobs up within a second. `--dry-run` shows the decisions and writes
//! nothing.

use std::path::Path;
use std::process::ExitCode;

use crate::clock::{Clock, SystemClock};
use crate::domain::{EventId, IpnEvent};
use crate::ingest;
use crate::ipn;
use crate::rules::{self, Decision};
use crate::store::{Rerouted, StoreError};

use super::explain::EXIT_NOT_FOUND;

pub fn run(
    config_path: &Path,
    events: &[i64],
    integration: Option<&str>,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    // Routing needs no secret; systemd credentials exist only inside the service.
    let config = super::load_config_without_secrets(config_path)?;
    if let Some(name) = integration
        && !config.integrations.contains_key(name)
    {
        anyhow::bail!("integration {name:?} is not configured");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let store = super::output::open_existing_store(&config).await?;
        let mut missing = false;
        let mut failed = false;
        for &id in events {
            let stored = match store.ipn(EventId(id)).await {
                Ok(s) => s,
                Err(StoreError::NotFound(what)) => {
                    eprintln!("{what} not found");
                    missing = true;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if stored.raw_body.is_empty() {
                eprintln!(
                    "event {id}: its body was purged (queue purge); it cannot be routed again"
                );
                failed = true;
                continue;
            }
            let pairs = ipn::parse_form(&stored.raw_body)
                .map_err(|e| anyhow::anyhow!("event {id}: {}", e.reason()))?;
            let event = IpnEvent::new(pairs.into_iter().collect());
            let now = SystemClock.now_ms();
            let routed: Vec<_> = rules::route(&config, &stored.source, &event, now)
                .into_iter()
                .filter(|r| integration.is_none_or(|n| n == r.integration))
                .collect();
            if routed.is_empty() {
                println!("event {id}: no integration to route to");
                continue;
            }
            if dry_run {
                let existing = store.jobs_of_ipn(EventId(id)).await?;
                for r in &routed {
                    let job = existing.iter().find(|j| j.integration == r.integration);
                    let line = match (&r.decision, job) {
                        (Decision::Deliver { reason, .. }, Some(j))
                            if j.state == "dead" || j.state == "dropped" =>
                        {
                            format!("would re-route {} job {}: {reason}", j.state, j.id)
                        }
                        (Decision::Deliver { reason, .. }, Some(j)) => {
                            format!("would keep existing job {} ({}); {reason}", j.id, j.state)
                        }
                        (Decision::Deliver { reason, .. }, None) => {
                            format!("would create a job: {reason}")
                        }
                        (Decision::Skip { reason, .. }, _) => format!("would skip: {reason}"),
                    };
                    println!("event {id}  {}  {line}", r.integration);
                }
                continue;
            }
            let names: Vec<String> = routed.iter().map(|r| r.integration.clone()).collect();
            let reasons: Vec<String> = routed
                .iter()
                .map(|r| match &r.decision {
                    Decision::Deliver { reason, .. } | Decision::Skip { reason, .. } => {
                        reason.clone()
                    }
                })
                .collect();
            let (routes, _) = ingest::new_routes(routed, &event, now);
            let results = store
                .add_routes(EventId(id), routes, super::output::operator_user(), now)
                .await?;
            for ((name, reason), result) in names.iter().zip(&reasons).zip(results) {
                let line = match result {
                    Rerouted::Created(job) => format!("created job {job}: {reason}"),
                    Rerouted::Existing { job, state } => {
                        format!("kept existing job {job} ({state}), nothing repeated")
                    }
                    Rerouted::Rerouted { job, was } => {
                        format!("re-routed {was} job {job} with today's configuration: {reason}")
                    }
                    Rerouted::Skipped => format!("skipped: {reason}"),
                };
                println!("event {id}  {name}  {line}");
            }
        }
        store.close().await;
        Ok(if missing {
            ExitCode::from(EXIT_NOT_FOUND)
        } else if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    })
}
