//! From a verified IPN and its routing decisions to the records the store keeps: shared by
//! the HTTP server (first receipt) and `replay` (re-routing a stored IPN with today's
//! configuration), so both record decisions the same way.
//!
//! Pure apart from logging: a decision that needs a person (an unmapped product, an IPN
//! without the data an action needs) is logged at ERROR here, once per decision.

use crate::domain::IpnEvent;
use crate::rules::{Decision, Routed, Severity};
use crate::store::{NewIpn, NewJob, NewRoute, RouteDecision};

/// A decision not to deliver that needs a person: `(integration, reason)`.
pub type Attention = (String, String);

/// The store records for `routed`, received (or replayed) at `now`, and the decisions among
/// them that need a person (for alerts, written with the records: [`NewIpn::alerts`]).
pub fn new_routes(
    routed: Vec<Routed>,
    event: &IpnEvent,
    now: i64,
) -> (Vec<NewRoute>, Vec<Attention>) {
    let mut attention = Vec::new();
    let routes = routed
        .into_iter()
        .map(|r| {
            let decision = match r.decision {
                Decision::Deliver {
                    target,
                    action,
                    order_key,
                    delay,
                    reason,
                } => RouteDecision::Job {
                    job: NewJob {
                        target,
                        action,
                        order_key,
                        not_before: now
                            .saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)),
                    },
                    reason,
                },
                Decision::Skip { reason, severity } => {
                    if severity == Severity::NeedsAttention {
                        tracing::error!(
                            integration = %r.integration,
                            order_id = event.order_id().unwrap_or(""),
                            product_id = event.get("product_id").unwrap_or(""),
                            %reason,
                            "IPN not delivered; the configuration needs a look"
                        );
                        attention.push((r.integration.clone(), reason.clone()));
                    }
                    RouteDecision::Skip { reason }
                }
            };
            NewRoute {
                integration: r.integration,
                decision,
            }
        })
        .collect();
    (routes, attention)
}

/// The inbox record of a verified IPN with its routes.
pub fn new_ipn(
    source: &str,
    business_key: String,
    event: &IpnEvent,
    raw_body: Vec<u8>,
    routes: Vec<NewRoute>,
    now: i64,
) -> NewIpn {
    let field = |name: &str| event.get(name).map(str::to_owned);
    NewIpn {
        source: source.to_owned(),
        business_key,
        event: event.kind.ipn_name().to_owned(),
        order_id: field("order_id"),
        order_item_id: field("order_item_id"),
        product_id: field("product_id"),
        transaction_id: field("transaction_id"),
        buyer_email: event.first_of(&["buyer_email", "email"]).map(str::to_owned),
        amount: field("amount"),
        currency: field("currency"),
        received_at: now,
        raw_body,
        routes,
        alerts: Vec::new(),
        parent_transaction_id: field("parent_transaction_id"),
    }
}
