//! A Konnektive target as the dispatcher sees it through the [`Connector`](crate::connectors::Connector)
//! seam: the client plus what the dispatcher needs beside it and must not know the shape of.
//!
//! Decisions:
//! * **The probe is `campaign/query`** for a campaign of one of the target's integrations
//!   (reference §3.6): it proves login, allow-list and permission without changing anything.
//!   A target without a campaign has nothing to ask and counts as reachable.
//! * **Campaign currency** (moved here from the dispatcher, unchanged): before an import the
//!   campaign's currency is read once per campaign per connector (the dispatcher builds one
//!   connector per generation, so a reload asks again) and an order in another currency ends
//!   dead at once, unsent. A failed lookup leaves its cell empty so the next import asks
//!   again; an answer without a currency is warned about once and the import sent.
//! * **Resolving an import in Konnektive** (the ledger missed it): `order/query` by the
//!   import's reference; no order is retryable (the payment may still arrive), except a
//!   payment this integration skipped, which can never be imported and is permanent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use super::{CAMPAIGN_QUERY_ENDPOINT, IMPORT_ENDPOINT, KonnektiveClient, ORDER_QUERY_ENDPOINT};
use crate::config::{Config, Target};
use crate::domain::{Action, AttemptReport, DayWindow, ImportRef, Order, Outcome, Receipt};

/// The Konnektive side of the connector seam for one target.
#[derive(Debug)]
pub struct KonnektiveTarget {
    name: String,
    client: KonnektiveClient,
    /// A campaign of one of the target's integrations, for the probe.
    probe_campaign: Option<u64>,
    /// The currency each campaign books in (`None`: Konnektive's answer names none).
    currencies: Mutex<HashMap<u64, Arc<OnceCell<Option<String>>>>>,
}

impl KonnektiveTarget {
    pub fn new(config: &Config, target: &Target) -> Result<Self, reqwest::Error> {
        Ok(KonnektiveTarget {
            name: target.name.clone(),
            client: KonnektiveClient::new(target)?,
            probe_campaign: config
                .integrations
                .values()
                .find(|i| i.target == target.name)
                .map(|i| i.campaign_id),
            currencies: Mutex::new(HashMap::new()),
        })
    }

    pub fn client(&self) -> &KonnektiveClient {
        &self.client
    }

    /// One `campaign/query`; `None` when the target has no campaign to ask about.
    pub async fn probe<F: Future<Output = ()>>(
        &self,
        ready: impl FnOnce() -> F,
    ) -> Option<Result<(), AttemptReport>> {
        let campaign = self.probe_campaign?;
        ready().await;
        Some(self.check_campaign(campaign).await.map(|_| ()))
    }

    /// One `campaign/query` for `campaign`: its products and currency, or the failed
    /// attempt. The probe and `test-connection` ask the same question.
    pub async fn check_campaign(&self, campaign: u64) -> Result<super::Campaign, AttemptReport> {
        self.client.check_campaign(campaign).await
    }

    /// Checks that must pass before `action` is sent: an import's campaign currency.
    /// `ready` is awaited before any request (the dispatcher's rate limiter).
    pub async fn precheck<F: Future<Output = ()>>(
        &self,
        action: &Action,
        ready: impl FnOnce() -> F,
    ) -> Result<(), AttemptReport> {
        match action.reconcile_reference() {
            Some(order) => self.check_currency(order, ready).await,
            None => Ok(()),
        }
    }

    /// The CRM order `import` refers to, found by its reference in Konnektive over `window`,
    /// and how it was found; `skipped` is why the store says this integration skipped the
    /// reversed payment (then no order is permanent).
    pub async fn resolve_import(
        &self,
        import: &ImportRef,
        window: DayWindow,
        skipped: Option<&str>,
        describe: String,
    ) -> Result<(Receipt, String), AttemptReport> {
        match self.client.find_import(import, window).await? {
            Some(receipt) => {
                let how = format!(
                    "Konnektive order {} carries its reference (order/query; not in the ledger)",
                    receipt.order_id.as_deref().unwrap_or("?")
                );
                Ok((receipt, how))
            }
            None => {
                let outcome = match (skipped, import.payment_transaction.as_deref()) {
                    (Some(why), Some(payment)) => Outcome::Permanent {
                        reason: format!(
                            "payment {payment} was never imported by this integration: {why}"
                        ),
                    },
                    _ => Outcome::Retryable {
                        reason: format!(
                            "{describe} was not found (not in the ledger, not in Konnektive); \
                             waiting for it"
                        ),
                        retry_after: None,
                    },
                };
                Err(AttemptReport {
                    outcome,
                    endpoint: ORDER_QUERY_ENDPOINT.into(),
                    http_status: Some(200),
                    request: describe,
                    response: "no matching order".into(),
                    maybe_applied: false,
                })
            }
        }
    }

    /// The currency `campaign` books in, from `campaign/query` the first time this connector
    /// needs it, then from its cache.
    async fn campaign_currency<F: Future<Output = ()>>(
        &self,
        campaign: u64,
        ready: impl FnOnce() -> F,
    ) -> Result<Option<String>, AttemptReport> {
        let cell = match self.currencies.lock() {
            Ok(mut cells) => cells.entry(campaign).or_default().clone(),
            Err(_) => Arc::new(OnceCell::new()),
        };
        cell.get_or_try_init(|| async {
            ready().await;
            let found = self.client.check_campaign(campaign).await?;
            match &found.currency {
                Some(currency) => tracing::debug!(
                    target = %self.name, campaign, %currency, "campaign currency read"
                ),
                None => tracing::warn!(
                    target = %self.name, campaign,
                    "Konnektive's campaign/query names no currency for this campaign; its orders \
                     are imported without checking their currency"
                ),
            }
            Ok(found.currency)
        })
        .await
        .cloned()
    }

    /// An import goes out only in the currency its campaign books in: Konnektive books the
    /// order in the campaign's currency whatever the amounts were, so a USD order in an EUR
    /// campaign would be booked as the same number of euros. A mismatch is permanent;
    /// nothing is sent. An order without a currency, or a campaign whose currency Konnektive
    /// does not name, is sent unchecked.
    async fn check_currency<F: Future<Output = ()>>(
        &self,
        order: &Order,
        ready: impl FnOnce() -> F,
    ) -> Result<(), AttemptReport> {
        let booked = self.campaign_currency(order.campaign_id, ready).await?;
        let Some(reason) = currency_mismatch(&order.currency, order.campaign_id, booked.as_deref())
        else {
            return Ok(());
        };
        Err(AttemptReport {
            outcome: Outcome::Permanent {
                reason: reason.clone(),
            },
            endpoint: IMPORT_ENDPOINT.into(),
            http_status: None,
            request: format!("not sent: {reason}"),
            response: format!(
                "{CAMPAIGN_QUERY_ENDPOINT}: campaign {} books {}",
                order.campaign_id,
                booked.as_deref().unwrap_or("?")
            ),
            maybe_applied: false,
        })
    }
}

/// Why an order in `ordered` must not go into `campaign`, which books `booked`; `None` when
/// it may (same currency, case aside, or either is unknown).
fn currency_mismatch(ordered: &str, campaign: u64, booked: Option<&str>) -> Option<String> {
    let ordered = ordered.trim().to_ascii_uppercase();
    let booked = booked?.trim().to_ascii_uppercase();
    if ordered.is_empty() || booked.is_empty() || ordered == booked {
        return None;
    }
    Some(format!(
        "order is {ordered}, campaign {campaign} books {booked}; not imported, so nothing is \
         booked in the wrong currency (map the product to a campaign that books {ordered})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_currency_mismatch_names_both_currencies() {
        let table = [
            (
                "USD",
                Some("EUR"),
                Some("order is USD, campaign 15 books EUR"),
            ),
            ("usd", Some("USD"), None),
            (" EUR ", Some("eur"), None),
            ("", Some("EUR"), None),
            ("USD", None, None),
            ("USD", Some(""), None),
        ];
        for (ordered, booked, want) in table {
            let got = currency_mismatch(ordered, 15, booked);
            match want {
                Some(prefix) => assert!(
                    got.as_deref().is_some_and(|g| g.starts_with(prefix)),
                    "{ordered:?} {booked:?}: {got:?}"
                ),
                None => assert_eq!(got, None, "{ordered:?} {booked:?}"),
            }
        }
    }
}
