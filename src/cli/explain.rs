//! `ipn-bridge explain FILE|EVENT_ID`: a dry run of one IPN through today's configuration.
//! For each integration of the IPN's source: the decision with its reason and the exact
//! Konnektive request(s) it would send, the password redacted. Sends nothing and writes
//! nothing (the database is only read, and only if it exists).
//!
//! A file is a raw IPN body as Digistore24 posts it. Its signature is checked against the
//! source's passphrases and the verdict shown, but an invalid signature does not stop the
//! explanation: explaining why a body would be refused is part of the job.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::{Config, Target};
use crate::connectors::konnektive::import_params;
use crate::connectors::konnektive::request::address_param;
use crate::domain::{Action, EventId, ImportRef, IpnEvent, Receipt};
use crate::ipn;
use crate::rules::{self, Decision};
use crate::store::{Store, StoreError};

/// Exit code when the event id does not exist.
pub const EXIT_NOT_FOUND: u8 = 3;

pub fn run(config_path: &Path, what: &str, source: Option<&str>) -> anyhow::Result<ExitCode> {
    // With the secrets if they can be read (to check a body's signature); else without,
    // which is the case outside the service when they are systemd credentials.
    let config = match crate::config::load(config_path) {
        Ok(loaded) => loaded.config,
        Err(_) => {
            let config = super::load_config_without_secrets(config_path)?;
            println!("note: the secrets could not be read here; signatures are not checked");
            return explain_with(config, what, source, false);
        }
    };
    explain_with(config, what, source, true)
}

fn explain_with(
    config: crate::config::Config,
    what: &str,
    source: Option<&str>,
    check_signature: bool,
) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(explain(&config, what, source, check_signature))
}

async fn explain(
    config: &Config,
    what: &str,
    source: Option<&str>,
    check_signature: bool,
) -> anyhow::Result<ExitCode> {
    let store = if config.store.path.exists() {
        Some(Store::open(&config.store.path).context("cannot open the store")?)
    } else {
        None
    };
    let (source, body, received_at) = match (what.parse::<i64>(), Path::new(what).exists()) {
        (Ok(id), false) => {
            let Some(store) = &store else {
                eprintln!("no database at {}", config.store.path.display());
                return Ok(ExitCode::from(EXIT_NOT_FOUND));
            };
            match store.ipn(EventId(id)).await {
                Ok(ipn) if ipn.raw_body.is_empty() => {
                    anyhow::bail!(
                        "event {id}: its body was purged (queue purge); nothing to explain"
                    )
                }
                Ok(ipn) => (ipn.source, ipn.raw_body, ipn.received_at),
                Err(StoreError::NotFound(what)) => {
                    eprintln!("{what} not found");
                    return Ok(ExitCode::from(EXIT_NOT_FOUND));
                }
                Err(e) => return Err(e.into()),
            }
        }
        _ => {
            let body = std::fs::read(what).with_context(|| format!("cannot read {what}"))?;
            let source = match source {
                Some(s) => s.to_owned(),
                None if config.sources.len() == 1 => {
                    config.sources.keys().next().cloned().unwrap_or_default()
                }
                None => anyhow::bail!("several sources are configured; name one with --source"),
            };
            (
                source,
                trim_body(body),
                crate::clock::Clock::now_ms(&crate::clock::SystemClock),
            )
        }
    };
    let Some(src) = config.sources.get(&source) else {
        anyhow::bail!("source {source:?} is not configured");
    };
    let pairs = ipn::parse_form(&body).map_err(|e| anyhow::anyhow!("{}", e.reason()))?;
    match ipn::verify(&pairs, &src.passphrases) {
        _ if !check_signature => println!("signature: not checked"),
        Ok(case) => println!(
            "signature: valid for source {source} ({} keys)",
            case.as_str()
        ),
        Err(e) => println!(
            "signature: INVALID for source {source}: {} (Digistore24 would get {})",
            e.reason(),
            e.http_status()
        ),
    }
    let event = IpnEvent::new(pairs.into_iter().collect());
    println!(
        "event: {}  order {}  item {}  product {}  amount {} {}",
        event.kind.ipn_name(),
        event.order_id().unwrap_or("-"),
        event.first_of(&["order_item_id"]).unwrap_or("-"),
        event.get("product_id").unwrap_or("-"),
        event
            .first_of(&["transaction_amount", "amount"])
            .unwrap_or("-"),
        event
            .first_of(&["transaction_currency", "currency"])
            .unwrap_or(""),
    );
    let routed = rules::route(config, &source, &event, received_at);
    if routed.is_empty() {
        println!("\nno integration uses source {source}");
    }
    for r in routed {
        println!();
        match r.decision {
            Decision::Skip { reason, severity } => {
                let flag = match severity {
                    rules::Severity::NeedsAttention => " (needs attention)",
                    rules::Severity::Normal => "",
                };
                println!("integration {}: SKIP{flag}: {reason}", r.integration);
            }
            Decision::Deliver {
                target,
                action,
                reason,
                delay,
                ..
            } => {
                println!("integration {}: DELIVER: {reason}", r.integration);
                if let Action::ImportOrder { order, .. } = action.as_ref()
                    && !order.address_fallback.is_empty()
                {
                    let fields: Vec<&str> = order
                        .address_fallback
                        .iter()
                        .map(|f| address_param(*f))
                        .collect();
                    println!(
                        "  address from [integration.{}.fallback_address] (the IPN has none): {} \
                         (and their ship* copies)",
                        r.integration,
                        fields.join(", ")
                    );
                }
                if !delay.is_zero() {
                    println!("  held for {}s after receipt (delay)", delay.as_secs());
                }
                let Some(target) = config.targets.get(&target) else {
                    println!("  target {target} is not configured");
                    continue;
                };
                let known = match (&store, action.import_ref()) {
                    (Some(store), Some(import)) => store
                        .ledger_import(&r.integration, import)
                        .await
                        .ok()
                        .flatten(),
                    _ => None,
                };
                for line in requests(target, &action, known.as_ref()) {
                    println!("  {line}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A body saved to a file often ends with a newline that Digistore24 never sent.
fn trim_body(mut body: Vec<u8>) -> Vec<u8> {
    while body.last().is_some_and(|b| b.is_ascii_whitespace()) {
        body.pop();
    }
    body
}

fn post(target: &Target, endpoint: &str, params: &[(String, String)]) -> Vec<String> {
    let mut lines = vec![format!("POST {}/{endpoint}/", target.base_url)];
    lines.push(format!("    loginId={}", target.login_id));
    lines.push("    password=[redacted]".to_owned());
    lines.extend(params.iter().map(|(k, v)| format!("    {k}={v}")));
    lines
}

fn p(name: &str, value: impl ToString) -> (String, String) {
    (name.to_owned(), value.to_string())
}

/// How the import an action refers to is found: the ledger entry if there is one, else
/// the `order/query` search.
fn find_import(target: &Target, import: &ImportRef, known: Option<&Receipt>) -> Vec<String> {
    let which = match &import.payment_transaction {
        Some(t) => format!("payment {t}"),
        None => "latest payment".to_owned(),
    };
    match known.and_then(|r| r.order_id.as_deref()) {
        Some(order) => vec![format!(
            "import of order {} item {} ({which}): Konnektive order {order} (from the ledger)",
            import.ds24_order_id, import.ds24_item
        )],
        None => {
            let mut lines = vec![format!(
                "import of order {} item {} ({which}): not in the ledger; searched with",
                import.ds24_order_id, import.ds24_item
            )];
            lines.extend(post(
                target,
                "order/query",
                &[
                    p("emailAddress", &import.email),
                    p("campaignId", import.campaign_id),
                    p("startDate", format!("(the day before {})", import.since)),
                    p("endDate", "(tomorrow)"),
                    p(
                        "match",
                        format!(
                            "{} = DS24-{}-{}-…",
                            import.reference_field, import.ds24_order_id, import.ds24_item
                        ),
                    ),
                ],
            ));
            lines
        }
    }
}

/// The Konnektive request(s) an action sends.
pub fn requests(target: &Target, action: &Action, known: Option<&Receipt>) -> Vec<String> {
    let order_id = known
        .and_then(|r| r.order_id.clone())
        .unwrap_or_else(|| "<the import's orderId>".to_owned());
    match action {
        Action::ImportOrder {
            order,
            auto_approve,
        } => {
            let mut lines = post(target, "order/import", &import_params(order));
            if *auto_approve {
                lines.push("then, if Konnektive holds the order in QA:".to_owned());
                lines.extend(post(
                    target,
                    "order/qa",
                    &[p("orderId", "<the new orderId>"), p("action", "APPROVE")],
                ));
            }
            lines
        }
        Action::Refund {
            import,
            amount,
            ds24_transaction_id,
            full,
        } => {
            let mut lines = find_import(target, import, known);
            lines.extend(post(
                target,
                "transactions/query",
                &[p("orderId", &order_id)],
            ));
            let mut params = vec![p("transactionId", "<the order's SALE transaction>")];
            params.push(p("refundAmount", amount));
            if *full {
                params.push(p("fullRefund", 1));
            }
            params.push(p("externalRefund", 1));
            params.push(p("refundMerchantTxnId", ds24_transaction_id));
            lines.extend(post(target, "transactions/refund", &params));
            lines
        }
        Action::Chargeback {
            import,
            amount,
            date,
            ds24_transaction_id,
        } => {
            let mut lines = find_import(target, import, known);
            lines.extend(post(
                target,
                "transactions/query",
                &[p("orderId", &order_id)],
            ));
            lines.extend(post(
                target,
                "transactions/update",
                &[
                    p("transactionId", "<the order's SALE transaction>"),
                    p("markChargeback", 1),
                    p("chargebackAmount", amount),
                    p("chargebackDate", date),
                    p("chargebackReasonCode", "DS24"),
                    p(
                        "chargebackNote",
                        format!(
                            "Digistore24 chargeback {ds24_transaction_id} of order {}",
                            import.ds24_order_id
                        ),
                    ),
                ],
            ));
            lines
        }
        Action::CancelPurchase { import, reason } => {
            let mut lines = find_import(target, import, known);
            let purchases = known
                .map(|r| r.purchase_ids.clone())
                .filter(|ids| !ids.is_empty())
                .unwrap_or_else(|| vec!["<each purchaseId of the order>".to_owned()]);
            for purchase in purchases {
                lines.extend(post(
                    target,
                    "purchase/cancel",
                    &[p("purchaseId", purchase), p("cancelReason", reason)],
                ));
            }
            lines
        }
        Action::CancelOrder { import, reason } => {
            let mut lines = find_import(target, import, known);
            lines.extend(post(
                target,
                "order/cancel",
                &[
                    p("orderId", &order_id),
                    p("cancelReason", reason),
                    p("fullRefund", 0),
                ],
            ));
            lines
        }
    }
}
