//! `ipn-bridge explain FILE|EVENT_ID`: a dry run of one IPN through today's configuration.
//! For each integration of the IPN's source: the decision with its reason and the exact
//! Konnektive request(s) it would send, the password redacted. Sends nothing and writes
//! nothing (the database is only read, and only if it exists).
//!
//! "Exact" is kept by construction: every parameter list comes from the builders the client
//! sends with (`connectors::konnektive::request::*_params`), never from a copy here. What
//! only the send itself can know (the order id Konnektive answers or `order/query` finds, the
//! payment transaction, the purchases, the refund amount once capped) is shown as a marked
//! placeholder, `<at send time: RULE>`, naming the rule that fills it. The import lookup
//! searches the days the dispatcher would search if the job were sent now
//! (`ImportRef::lookup_window`).
//!
//! A file is a raw IPN body as Digistore24 posts it. Its signature is checked against the
//! source's passphrases and the verdict shown, but an invalid signature does not stop the
//! explanation: explaining why a body would be refused is part of the job.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::{Config, Target, TargetKind, Webhook};
use crate::connectors::konnektive::request::address_param;
use crate::connectors::konnektive::{self, import_params, request};
use crate::connectors::webhook;
use crate::domain::{
    Action, Day, DayWindow, EventId, Forwarded, ImportRef, IpnEvent, Money, Receipt,
};
use crate::ipn;
use crate::rules::{self, Decision};
use crate::store::StoreError;

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
    let store = if config.store.url.is_some() || config.store.path.exists() {
        Some(super::output::open_existing_store(config).await?)
    } else {
        None
    };
    let stored_id = match (what.parse::<i64>(), Path::new(what).exists()) {
        (Ok(id), false) => Some(EventId(id)),
        _ => None,
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
                let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
                if let (Action::Forward(forwarded), TargetKind::Webhook(hook)) =
                    (action.as_ref(), &target.kind)
                {
                    for line in forward_request(hook, forwarded, stored_id, now) {
                        println!("  {line}");
                    }
                    continue;
                }
                for line in requests(target, &action, known.as_ref(), received_at, now) {
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

/// Marks a parameter value that is known only when the request is sent: explain shows
/// `<at send time: RULE>` instead, with the rule that fills it.
pub const SEND_TIME_MARK: &str = "<at send time: ";

/// The orderId `order/import` answers (the QA approval's `orderId`).
const NEW_ORDER_ID_RULE: &str = "the orderId order/import answers";
/// The import's order when the ledger does not know it.
const FOUND_ORDER_ID_RULE: &str = "the orderId of the import that order/query finds";
/// The transaction a refund or chargeback is recorded on (`response::payment_transaction`).
const PAYMENT_TRANSACTION_RULE: &str =
    "the order's successful SALE or CAPTURE transaction that transactions/query lists";
/// The purchases a cancellation cancels when the ledger does not know the import.
const FOUND_PURCHASES_RULE: &str =
    "each purchaseId of the order that order/query finds, one purchase/cancel each";
/// The purchases a cancellation cancels when the ledger knows the order but no purchase.
const LISTED_PURCHASES_RULE: &str =
    "each purchaseId that order/query lists for the order, one purchase/cancel each";
/// `fullRefund` follows the refunded amount once it is capped.
const FULL_REFUND_RULE: &str =
    "1 when the refund, capped, is all the order has left to refund; else not sent";

fn at_send_time(rule: &str) -> String {
    format!("{SEND_TIME_MARK}{rule}>")
}

/// The refunded amount as sent: the IPN's amount, capped at what the order has left.
fn refund_amount_rule(amount: Money) -> String {
    format!(
        "{}, or less: capped at what the order has left to refund",
        amount.abs()
    )
}

/// Replaces the value of `name` in `params` by a send-time placeholder; adds the parameter
/// (after `after`) when the builder left it out.
fn mark(params: &mut Vec<(String, String)>, name: &str, rule: &str, after: &str) {
    let value = at_send_time(rule);
    if let Some(slot) = params.iter_mut().find(|(n, _)| n == name) {
        slot.1 = value;
        return;
    }
    let at = params
        .iter()
        .position(|(n, _)| n == after)
        .map_or(params.len(), |i| i + 1);
    params.insert(at, (name.to_owned(), value));
}

/// One request as the client sends it: `params` come from the client's own builders
/// (`request::*_params`); the credentials are added here as the client adds them, the
/// password redacted.
fn post(target: &Target, endpoint: &str, params: &[(String, String)]) -> Vec<String> {
    let mut lines = vec![format!(
        "POST {}/{endpoint}/",
        target.base_url.trim_end_matches('/')
    )];
    lines.push(format!(
        "    {}={}",
        request::LOGIN_ID_PARAM,
        target.login_id
    ));
    lines.push(format!(
        "    {}={}",
        request::PASSWORD_PARAM,
        request::REDACTED
    ));
    lines.extend(params.iter().map(|(k, v)| format!("    {k}={v}")));
    lines
}

/// How the import an action refers to is found: the ledger entry if there is one, else the
/// `order/query` search over the days the dispatcher searches ([`ImportRef::lookup_window`]).
fn find_import(
    target: &Target,
    import: &ImportRef,
    known: Option<&Receipt>,
    window: DayWindow,
) -> Vec<String> {
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
                "import of order {} item {} ({which}): not in the ledger; searched (page 1, then \
                 the next while there are more) for the latest order whose {} is DS24-{}-{}{}",
                import.ds24_order_id,
                import.ds24_item,
                import.reference_field,
                import.ds24_order_id,
                import.ds24_item,
                import
                    .payment_transaction
                    .as_deref()
                    .map_or("-…".to_owned(), |t| format!("-{t}")),
            )];
            lines.extend(post(
                target,
                konnektive::ORDER_QUERY_ENDPOINT,
                &request::import_query_params(import, window, 1),
            ));
            lines
        }
    }
}

/// The Konnektive request(s) an action sends when a job created at `created_at_ms` is sent
/// at `now_ms`, built by the client's own parameter builders. Values known only at send time
/// (an order id Konnektive answers, the payment transaction, the purchases, the capped refund
/// amount) are [`SEND_TIME_MARK`] placeholders naming the rule that fills them.
pub fn requests(
    target: &Target,
    action: &Action,
    known: Option<&Receipt>,
    created_at_ms: i64,
    now_ms: i64,
) -> Vec<String> {
    let import = match action {
        Action::ImportOrder {
            order,
            auto_approve,
        } => {
            let mut lines = vec![format!(
                "first, once per campaign after each start or reload: {} campaignId={} must \
                 report that campaign {} books {} (else the job is dead-lettered unsent)",
                konnektive::CAMPAIGN_QUERY_ENDPOINT,
                order.campaign_id,
                order.campaign_id,
                if order.currency.is_empty() {
                    "the order's currency (this order names none: not checked)"
                } else {
                    order.currency.as_str()
                },
            )];
            lines.extend(post(
                target,
                konnektive::IMPORT_ENDPOINT,
                &import_params(order),
            ));
            if *auto_approve {
                lines.push("then, if Konnektive holds the order in QA:".to_owned());
                lines.extend(post(
                    target,
                    konnektive::QA_ENDPOINT,
                    &request::qa_approve_params(&at_send_time(NEW_ORDER_ID_RULE)),
                ));
            }
            return lines;
        }
        Action::Refund { import, .. }
        | Action::Chargeback { import, .. }
        | Action::CancelPurchase { import, .. }
        | Action::CancelOrder { import, .. } => import,
        Action::Forward(_) => {
            return vec![format!(
                "forward: target {} is not a webhook target (the config rejects this)",
                target.name
            )];
        }
    };
    let mut lines = find_import(
        target,
        import,
        known,
        import.lookup_window(created_at_ms, now_ms),
    );
    let order_id = known
        .and_then(|r| r.order_id.clone())
        .unwrap_or_else(|| at_send_time(FOUND_ORDER_ID_RULE));
    let payment = at_send_time(PAYMENT_TRANSACTION_RULE);
    let transactions = request::transactions_query_params(&order_id, 1);
    match action {
        Action::ImportOrder { .. } | Action::Forward(_) => {}
        Action::Refund {
            amount,
            ds24_transaction_id,
            full,
            ..
        } => {
            lines.extend(post(
                target,
                konnektive::TRANSACTIONS_QUERY_ENDPOINT,
                &transactions,
            ));
            let mut params = request::refund_params(&payment, *amount, *full, ds24_transaction_id);
            mark(
                &mut params,
                "refundAmount",
                &refund_amount_rule(*amount),
                "transactionId",
            );
            mark(&mut params, "fullRefund", FULL_REFUND_RULE, "refundAmount");
            lines.extend(post(target, konnektive::REFUND_ENDPOINT, &params));
        }
        Action::Chargeback {
            amount,
            date,
            ds24_transaction_id,
            ..
        } => {
            lines.extend(post(
                target,
                konnektive::TRANSACTIONS_QUERY_ENDPOINT,
                &transactions,
            ));
            match Day::parse_iso(date) {
                Some(day) => lines.extend(post(
                    target,
                    konnektive::TRANSACTION_UPDATE_ENDPOINT,
                    &request::chargeback_params(
                        &payment,
                        *amount,
                        day,
                        ds24_transaction_id,
                        &import.ds24_order_id,
                    ),
                )),
                None => lines.push(format!(
                    "chargeback date {date:?} is not a YYYY-MM-DD date: the job fails for good"
                )),
            }
        }
        Action::CancelPurchase { reason, .. } => {
            // As the client: the receipt's purchases (the ledger's, or those of the order
            // order/query found); only a known order without any is read by its id.
            let known_order = known.filter(|r| r.order_id.is_some());
            let purchases = known_order
                .map(|r| r.purchase_ids.clone())
                .unwrap_or_default();
            let unknown_purchases = match known_order {
                None => Some(FOUND_PURCHASES_RULE),
                Some(_) if purchases.is_empty() => {
                    lines.extend(post(
                        target,
                        konnektive::ORDER_QUERY_ENDPOINT,
                        &request::order_by_id_params(&order_id),
                    ));
                    Some(LISTED_PURCHASES_RULE)
                }
                Some(_) => None,
            };
            if let Some(rule) = unknown_purchases {
                lines.extend(post(
                    target,
                    konnektive::PURCHASE_CANCEL_ENDPOINT,
                    &request::purchase_cancel_params(&at_send_time(rule), reason),
                ));
            }
            for purchase in purchases {
                lines.extend(post(
                    target,
                    konnektive::PURCHASE_CANCEL_ENDPOINT,
                    &request::purchase_cancel_params(&purchase, reason),
                ));
            }
        }
        Action::CancelOrder { reason, .. } => lines.extend(post(
            target,
            konnektive::ORDER_CANCEL_ENDPOINT,
            &request::order_cancel_params(&order_id, reason),
        )),
    }
    lines
}

/// The webhook request that forwards `forwarded`, as the connector builds it (the target's
/// own header values redacted; `webhook-timestamp` and the signature are those of a send
/// now). An IPN that is not stored yet has no event id: `0` stands in for it.
pub fn forward_request(
    hook: &Webhook,
    forwarded: &Forwarded,
    event: Option<EventId>,
    now_ms: i64,
) -> Vec<String> {
    let event_id = event.unwrap_or(EventId(0));
    let id = webhook::webhook_id(event_id, &forwarded.integration);
    let body = webhook::payload(forwarded, event_id);
    let request = webhook::build(hook, &id, &body, now_ms);
    let mut lines: Vec<String> = request.redacted().lines().map(str::to_owned).collect();
    if event.is_none() {
        lines.push("(event id 0: the IPN is not stored; it gets its id when received)".into());
    }
    lines
}
