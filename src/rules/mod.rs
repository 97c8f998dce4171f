//! Routing: for one stored IPN, what each integration does with it, and why.
//!
//! Pure and synchronous: `(config, source, IpnEvent, received_at) → Vec<Routed>`. It never
//! touches the store or a connector, so the same code serves the HTTP ingest path, `explain`
//! and `replay`, and is tested by tables. Every decision not to deliver carries a sentence a
//! vendor can act on ("language fr not in [de, en]").
//!
//! Decisions:
//! - **Grouped IPNs** (numbered item fields such as `product_id_2`) are never imported in
//!   part: every integration that handles the event skips them with a reason that needs
//!   attention (an alert), naming the fields and the Digistore24 setting to change.
//! - **Currency** (`currencies`): an IPN names up to two currencies, `transaction_currency`
//!   and `currency`. `transaction_currency` wins: it is the currency the order is booked in
//!   (the order mapping reads it first), so this filter and the campaign's currency judge the
//!   same value, and it is named first in a skip reason. Where `currency` is present and
//!   differs, it must be accepted too: the reference says Digistore24 states its amounts in
//!   `currency`, so an IPN whose two currencies differ could book amounts of one currency as
//!   the other; it passes only an integration that takes both. Neither field → skipped when
//!   `currencies` is set.
//!
//! The mapping from Digistore24 fields to the CRM-neutral [`Order`] lives in [`mapping`];
//! everything there that rests on a guess about the IPN format is named and documented in
//! that one file. State names become subdivision codes in [`states`] (a pure table).

pub mod mapping;
pub mod states;
#[cfg(test)]
mod tests;

use std::time::Duration;

use crate::config::{Config, Integration, Newsletter, ProductFilter};
use crate::domain::{Action, ActionKind, EventKind, Forwarded, IpnEvent, OrderEvent, OtherEvent};

/// One integration's decision for an IPN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub integration: String,
    pub decision: Decision,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Create a job.
    Deliver {
        target: String,
        action: Box<Action>,
        /// Jobs with the same key (per integration) run one after another.
        order_key: String,
        /// Hold the job this long after receipt (the integration's `delay`).
        delay: Duration,
        reason: String,
    },
    /// No job; the reason is stored with the IPN.
    Skip { reason: String, severity: Severity },
}

/// How loudly a skip is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// A filter did its job.
    Normal,
    /// The configuration or the IPN needs a person (an unmapped product, missing buyer data).
    NeedsAttention,
}

/// Routes an IPN received on `source` through every integration of that source, in name
/// order. Non-order events (affiliation, e-ticket, custom form, connection test, unknown)
/// reach no integration.
pub fn route(config: &Config, source: &str, event: &IpnEvent, received_at_ms: i64) -> Vec<Routed> {
    config
        .integrations
        .values()
        .filter(|i| i.source == source)
        .map(|i| Routed {
            integration: i.name.clone(),
            decision: decide(i, event, received_at_ms),
        })
        .collect()
}

fn skip(reason: impl Into<String>) -> Decision {
    Decision::Skip {
        reason: reason.into(),
        severity: Severity::Normal,
    }
}

fn attention(reason: impl Into<String>) -> Decision {
    Decision::Skip {
        reason: reason.into(),
        severity: Severity::NeedsAttention,
    }
}

/// One integration's decision.
pub fn decide(integration: &Integration, event: &IpnEvent, received_at_ms: i64) -> Decision {
    let order_event = match &event.kind {
        EventKind::Order(e) => *e,
        other => {
            if let Some(listed) =
                OtherEvent::of(other).and_then(|o| integration.on_other.get(&o).map(|a| (o, *a)))
            {
                return decide_other(integration, event, listed, received_at_ms);
            }
            return skip(format!(
                "event {} is not an order event; integrations act on order events, and on \
                 affiliation and eticket events only where [integration.{}.on] lists them",
                other.ipn_name(),
                integration.name
            ));
        }
    };
    if !integration.active {
        return skip("integration is not active (active = false)");
    }
    let Some(action) = integration.on.get(&order_event).copied() else {
        return skip(format!(
            "event {} is not listed in [integration.{}.on]",
            order_event.config_name(),
            integration.name
        ));
    };
    // Before the filters: they read the unnumbered item fields, which describe one item of
    // a grouped IPN at best.
    let grouped = mapping::grouped_item_fields(event);
    if !grouped.is_empty() && action != ActionKind::Ignore {
        return attention(format!(
            "grouped IPN: it carries numbered item fields ({}), so it describes several order \
             items in one call, and it is not imported in part. In Digistore24, turn off the \
             grouping of calls in this IPN connection, so that every item arrives as its own \
             IPN; this order's items need entering by hand (or a resend by Digistore24 once \
             grouping is off)",
            grouped.join(", ")
        ));
    }
    if let Some(reason) = filter_reason(integration, event) {
        return skip(reason);
    }
    if action == ActionKind::Ignore {
        return skip(format!(
            "event {} is set to \"ignore\"",
            order_event.config_name()
        ));
    }
    if action == ActionKind::Forward {
        return forward(integration, event, received_at_ms);
    }
    // Every Konnektive action needs the product mapped: an unmapped product was never
    // imported.
    let Some(product) = mapping::product_id(event) else {
        return attention("the IPN names no product_id, so no campaign product can be chosen");
    };
    let Some(campaign_product) = integration.product_map.lookup(product) else {
        return attention(format!(
            "product {product} is not in [integration.{}.product_map] and there is no \"*\" entry",
            integration.name
        ));
    };
    let built = match action {
        ActionKind::ImportOrder if order_event != OrderEvent::Payment => Err(format!(
            "action \"import_order\" needs a payment; event {} carries none",
            order_event.config_name()
        )),
        ActionKind::ImportOrder => mapping::payment_amount(event).and_then(|_| {
            mapping::order(integration, event, campaign_product, received_at_ms).map(|order| {
                (
                    Action::ImportOrder {
                        order: Box::new(order),
                        auto_approve: integration.auto_approve,
                    },
                    format!(
                        "import product {product} as campaign product {campaign_product} into campaign {}",
                        integration.campaign_id
                    ),
                )
            })
        }),
        ActionKind::Refund | ActionKind::Chargeback => reversal(integration, event, action),
        // `Ignore` and `Forward` returned above; grouped here only to keep the match total.
        ActionKind::CancelPurchase
        | ActionKind::CancelOrder
        | ActionKind::Ignore
        | ActionKind::Forward => {
            mapping::import_ref(integration, event, false).map(|import| {
                let reason = format!(
                    "Digistore24 {} for order {}",
                    order_event.config_name().replace('_', " "),
                    import.ds24_order_id
                );
                let what = format!(
                    "{} the latest import of order {} item {}",
                    action.config_name().replace('_', " "),
                    import.ds24_order_id,
                    import.ds24_item
                );
                let action = if action == ActionKind::CancelOrder {
                    Action::CancelOrder { import, reason }
                } else {
                    Action::CancelPurchase { import, reason }
                };
                (action, what)
            })
        }
    };
    match built {
        Ok((action, reason)) => Decision::Deliver {
            target: integration.target.clone(),
            order_key: mapping::order_key(event),
            delay: integration.delay,
            reason,
            action: Box::new(action),
        },
        Err(missing) => attention(format!(
            "cannot {}: {missing}",
            action.config_name().replace('_', " ")
        )),
    }
}

/// An affiliation or e-ticket event that `[integration.NAME.on]` lists. Filters that make
/// sense for it: `active`, `test_orders`, `products` (the event's `product_id`) and
/// `languages` where the IPN names a language; the order filters (add-ons, follow-up
/// payments, currencies, newsletter) concern payments and do not apply.
fn decide_other(
    integration: &Integration,
    event: &IpnEvent,
    (other, action): (OtherEvent, ActionKind),
    received_at_ms: i64,
) -> Decision {
    if !integration.active {
        return skip("integration is not active (active = false)");
    }
    if event.get("api_mode") == Some("test") && !integration.test_orders {
        return skip("test event (api_mode = test) and test_orders = false");
    }
    if let ProductFilter::List(products) = &integration.products {
        match mapping::product_id(event) {
            Some(id) if products.contains(&id) => {}
            Some(id) => {
                return skip(format!(
                    "product {id} not in products {}",
                    list(products.iter())
                ));
            }
            None => return skip("the IPN names no product_id"),
        }
    }
    if !integration.languages.is_empty()
        && let Some(lang) = mapping::language(event)
        && !integration.languages.contains(&lang)
    {
        return skip(format!(
            "language {lang} not in {}",
            list(integration.languages.iter())
        ));
    }
    if action == ActionKind::Forward {
        forward(integration, event, received_at_ms)
    } else {
        skip(format!(
            "event {} is set to \"ignore\"",
            other.config_name()
        ))
    }
}

/// Forwards the IPN as it came (a webhook target): every field but `sha_sign`, no mapping.
/// Jobs of one order still run one after another (the order key), so a refund never
/// overtakes its payment at the receiver either.
fn forward(integration: &Integration, event: &IpnEvent, received_at_ms: i64) -> Decision {
    let fields = event
        .fields()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("sha_sign"))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let name = event.kind.ipn_name().to_owned();
    Decision::Deliver {
        target: integration.target.clone(),
        order_key: mapping::order_key(event),
        delay: integration.delay,
        reason: format!("forward {name} to target {}", integration.target),
        action: Box::new(Action::Forward(Box::new(Forwarded {
            event: name,
            received_at_ms,
            fields,
            source: integration.source.clone(),
            integration: integration.name.clone(),
        }))),
    }
}

/// A refund or chargeback of the payment named in `parent_transaction_id`.
fn reversal(
    integration: &Integration,
    event: &IpnEvent,
    action: ActionKind,
) -> Result<(Action, String), String> {
    let import = mapping::import_ref(integration, event, true)?;
    let mapping::FieldAmount {
        amount,
        source: amount_source,
    } = mapping::reversal_amount(event)?;
    let ds24_transaction_id = event
        .get("transaction_id")
        .ok_or("the IPN has no transaction_id")?
        .to_owned();
    let what = format!(
        "{} {amount} of payment {} of order {} (amount: {amount_source})",
        if action == ActionKind::Refund {
            "refund"
        } else {
            "charge back"
        },
        import.payment_transaction.as_deref().unwrap_or("?"),
        import.ds24_order_id
    );
    let built = if action == ActionKind::Refund {
        let paid = mapping::item_amount_paid(event);
        Action::Refund {
            full: paid.is_none_or(|p| amount >= p.abs()),
            import,
            amount,
            ds24_transaction_id,
        }
    } else {
        Action::Chargeback {
            date: event
                .get("transaction_date")
                .filter(|d| d.len() == 10)
                .ok_or("the IPN has no transaction_date")?
                .to_owned(),
            import,
            amount,
            ds24_transaction_id,
        }
    };
    Ok((built, what))
}

/// The first filter rule that refuses the IPN, as a sentence; `None` when all pass.
pub fn filter_reason(integration: &Integration, event: &IpnEvent) -> Option<String> {
    if event.get("api_mode") == Some("test") && !integration.test_orders {
        return Some("test order (api_mode = test) and test_orders = false".into());
    }
    if let ProductFilter::List(products) = &integration.products {
        match mapping::product_id(event) {
            Some(id) if products.contains(&id) => {}
            Some(id) => {
                return Some(format!(
                    "product {id} not in products {}",
                    list(products.iter())
                ));
            }
            None => return Some("the IPN names no product_id".into()),
        }
    }
    if !integration.languages.is_empty() {
        let lang = mapping::language(event);
        match lang {
            Some(l) if integration.languages.contains(&l) => {}
            Some(l) => {
                return Some(format!(
                    "language {l} not in {}",
                    list(integration.languages.iter())
                ));
            }
            None => {
                return Some(format!(
                    "the IPN names no product language and languages = {}",
                    list(integration.languages.iter())
                ));
            }
        }
    }
    // Digistore24's own setting: "only the first payment and, if necessary, the first
    // cancellation". So it filters payments only; a cancellation, refund, chargeback or end of
    // the paid period of a rebilled order always passes it.
    if !integration.currencies.is_empty() {
        let named = mapping::currencies(event);
        if named.is_empty() {
            return Some(format!(
                "the IPN names no currency and currencies = {}",
                list(integration.currencies.iter())
            ));
        }
        let both = named.len() > 1;
        if let Some((field, code)) = named
            .into_iter()
            .find(|(_, code)| !integration.currencies.contains(code))
        {
            let whose = if both {
                format!(" (the IPN's {field}; its two currency fields differ)")
            } else {
                String::new()
            };
            return Some(format!(
                "currency {code} not in {}{whose}",
                list(integration.currencies.iter())
            ));
        }
    }
    if !integration.followup_payments
        && event.kind == EventKind::Order(OrderEvent::Payment)
        && let Some(n) = mapping::followup_sequence(event)
    {
        return Some(format!(
            "follow-up payment #{n} and followup_payments = false"
        ));
    }
    if !integration.addons
        && let Some(signal) = mapping::addon_signal(event)
    {
        return Some(format!(
            "product {} was bought as an add-on ({signal}) and addons = false",
            event.get("product_id").unwrap_or("?")
        ));
    }
    if integration.newsletter == Newsletter::OptedIn && !mapping::newsletter_opted_in(event) {
        return Some(format!(
            "buyer did not opt in to the newsletter (newsletter_choice = {}) and newsletter = \"opted_in\"",
            event.get("newsletter_choice").unwrap_or("empty")
        ));
    }
    None
}

fn list<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    let parts: Vec<String> = items.map(|i| i.to_string()).collect();
    format!("[{}]", parts.join(", "))
}
