//! The audit (issue 11): the transactions Digistore24 has and ipn-bridge never received.
//! Shared by `ipn-bridge ds24 audit` and the daemon's periodic audit. The store is asked
//! with plain ids (it does not know this module).

use std::time::Duration;

use super::client::{Client, guesses};
use super::transactions::{self, Transaction, ago};
use crate::store::Store;
use crate::store::alerts::NewAlert;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Api(#[from] super::Ds24Error),
    #[error("the database: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// What one audit found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub source: String,
    /// Transactions Digistore24 listed (payments, refunds, chargebacks).
    pub checked: usize,
    pub missing: Vec<Transaction>,
}

/// Transactions of `source` between `from` and `to` without a stored IPN.
pub async fn audit(
    client: &Client,
    store: &Store,
    source: &str,
    from: &str,
    to: &str,
) -> Result<Report, AuditError> {
    let all = transactions::list(client, from, to).await?;
    let wanted = all
        .iter()
        .map(|t| (t.order_id.clone(), t.transaction_id.clone()))
        .collect();
    let received = store.received_transactions(source, wanted).await?;
    Ok(Report {
        source: source.to_owned(),
        checked: all.len(),
        missing: transactions::missing(&all, &received),
    })
}

/// One periodic audit of the daemon: transactions between `grace + lookback` and `grace`
/// ago (Digistore24's own clock decides their age, so no time zone is guessed), each missing
/// one alerted once. Returns how many alerts were recorded now.
pub async fn periodic(
    client: &Client,
    store: &Store,
    source: &str,
    every: Duration,
    now_ms: i64,
    recipients: &[String],
) -> Result<usize, AuditError> {
    let grace = guesses::AUDIT_GRACE;
    let lookback = (every * 2).max(Duration::from_secs(86_400));
    let report = audit(client, store, source, &ago(grace + lookback), &ago(grace)).await?;
    let mut recorded = 0;
    for t in &report.missing {
        tracing::warn!(
            source,
            order = %t.order_id,
            transaction = %t.transaction_id,
            kind = %t.kind,
            "Digistore24 has a transaction whose IPN never arrived"
        );
        if recipients.is_empty() {
            continue;
        }
        let alert = NewAlert {
            created_at: now_ms,
            kind: "ipn_missing".into(),
            integration: None,
            target: None,
            job_id: None,
            ds24_order_id: Some(t.order_id.clone()),
            product: None,
            amount: Some(format!("{} {}", t.amount, t.currency)),
            buyer_email: Some(t.buyer.clone()),
            message: format!(
                "Digistore24 lists {} {} of order {} ({}) on {}, but no IPN for it reached source `{source}` within {} h. \
                 Check the IPN connection (Reports → Integrations (IPN) in Digistore24) and `ipn-bridge ds24 audit --source {source}`.",
                t.kind,
                t.transaction_id,
                t.order_id,
                format_args!("{} {}", t.amount, t.currency),
                t.date,
                grace.as_secs() / 3600,
            ),
            retry_command: None,
            recipients: recipients.to_vec(),
        };
        if store
            .record_audit_alert(source, &t.order_id, &t.transaction_id, alert)
            .await?
        {
            recorded += 1;
        }
    }
    Ok(recorded)
}

/// Starts the periodic audit of every source with `audit_every` (and an `api_key`), until
/// `stop` is cancelled (shutdown, or a reload, which starts the new configuration's audits).
/// The first audit runs one period after the start. Alerts go to `[alerts].to`; without
/// `[alerts]` a missing IPN is only logged.
pub fn spawn(
    config: &crate::config::Config,
    store: &Store,
    clock: &crate::clock::SharedClock,
    stop: &tokio_util::sync::CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) {
    let recipients: Vec<String> = config
        .alerts
        .as_ref()
        .map(|a| a.to.clone())
        .unwrap_or_default();
    for source in config.sources.values() {
        let Some(every) = source.audit_every else {
            continue;
        };
        let client = match Client::for_source(source) {
            Some(Ok(client)) => client,
            Some(Err(e)) => {
                tracing::error!(source = %source.name, error = %e, "the Digistore24 audit cannot start");
                continue;
            }
            None => continue,
        };
        let (store, clock, stop, recipients, name) = (
            store.clone(),
            clock.clone(),
            stop.clone(),
            recipients.clone(),
            source.name.clone(),
        );
        tracker.spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                // Several instances on one database: one of them asks the API.
                if !store.claim_role(&format!("audit:{name}")).await.unwrap_or(false) {
                    continue;
                }
                let now = clock.now_ms();
                let run = periodic(&client, &store, &name, every, now, &recipients);
                let result = tokio::select! {
                    _ = stop.cancelled() => return,
                    result = run => result,
                };
                match result {
                    Ok(0) => tracing::debug!(source = %name, "Digistore24 audit: nothing new missing"),
                    Ok(n) => tracing::warn!(source = %name, alerts = n, "Digistore24 audit: IPNs missing"),
                    Err(e) => tracing::warn!(source = %name, error = %e, "Digistore24 audit failed; next try in one period"),
                }
            }
        });
    }
}
