//! The checks of the IPN fuzz harness, shared by the bench binary `benches/fuzz_ipn.rs` and
//! the regression test `tests/fuzz_regressions.rs` (which includes this file by path), so a
//! kept input is judged exactly as it was when it was found.
//!
//! One input goes through what the daemon and the operator commands do with a body:
//! - the explain path (`parse_form` → `IpnEvent` → `rules::route` → the Konnektive requests
//!   of every delivery, built by the request builders `cli::explain::requests` uses), for
//!   every body that parses,
//!   signed or not, as `explain FILE` would;
//! - the receipt path (`ipn::receive`: parse → verify → event and business key →
//!   `rules::route` → the store records built by `ingest`), as the HTTP server does; the
//!   server's own call, `ipn::accept` (which takes a one-pass path for a plain body), must
//!   answer exactly as `receive` does: the same refusal, or the same event, key and
//!   signing convention;
//! - for an accepted body, [`Harness::round_trip`]: the records are ingested into a real
//!   [`Store`], and every body that was inserted (not a duplicate) is read back with
//!   [`Store::ipn`], received and routed again (and also parsed the way `replay` does), and
//!   must route exactly as at receipt.
//!
//! An `Err(String)` is a broken invariant (a bug); a panic is caught by the caller.
#![allow(dead_code)]

use std::path::Path;

use ipn_bridge::config::{Config, SystemEnvironment};
use ipn_bridge::connectors::konnektive::request;
use ipn_bridge::domain::{Action, Day, ImportRef, IpnEvent};
use ipn_bridge::ingest;
use ipn_bridge::ipn::{self, IpnError};
use ipn_bridge::rules::{self, Decision, Routed};
use ipn_bridge::store::{Ingested, NewIpn, Store};

/// The passphrase the fixtures are signed with.
pub const PASSPHRASE: &str = "fixture-passphrase";
/// The one source of [`CONFIG`].
pub const SOURCE: &str = "ds24";
/// Receipt time of every input (fixed, so a run is reproducible from its seed).
pub const RECEIVED_AT_MS: i64 = 1_790_000_000_000;
/// "Now" for the explain requests (an hour after receipt).
pub const NOW_MS: i64 = RECEIVED_AT_MS + 3_600_000;

/// A configuration like `tests/support`'s, with every order action in use and a second,
/// filtering integration (currencies, newsletter, a partial product map, a delay, QA
/// approval), so that most decisions of `rules::route` can be reached. The store path is
/// never opened (the harness opens its own stores).
pub const CONFIG: &str = r#"[server]
listen = "127.0.0.1:0"
max_body_bytes = 65536

[store]
path = "/nonexistent/ipn-fuzz.db"

[source.ds24]
passphrase = "fixture-passphrase"

[target.konnektive]
kind = "konnektive"
base_url = "https://crm.example.invalid"
login_id = "ds24bridge"
password = "k0nn-Secret-Pw"

[integration.main]
campaign_id = 12

[integration.main.product_map]
412346 = 31
412350 = 32
"*" = 33

[integration.main.on]
payment = "import_order"
refund = "refund"
chargeback = "chargeback"
rebill_cancelled = "cancel_purchase"
last_paid_day = "cancel_order"

[integration.main.fallback_address]
address1 = "Digital delivery"
city = "Online"
postal_code = "00000"

[integration.main.fields]
custom2 = "aff-{affiliate_name}"
custom3 = "{{ {buyer_email} }}"

[integration.strict]
campaign_id = 13
currencies = ["EUR", "USD"]
newsletter = "opted_in"
delay = "30s"
auto_approve = true
order_ref_field = "custom4"

[integration.strict.product_map]
412346 = 41

[integration.strict.on]
payment = "import_order"
refund = "refund"
chargeback = "chargeback"
rebill_cancelled = "cancel_order"
payment_missed = "ignore"
"#;

/// What happened to one input.
pub enum Outcome {
    /// Refused by the form decoder (400).
    Parse,
    /// Refused by the signature check (403).
    Signature,
    /// Verified, then refused as malformed: two names that differ only in case (400).
    CaseTwins,
    /// Verified and routed; the store records are ready for [`Harness::round_trip`].
    Accepted(Box<Accepted>),
}

/// An accepted input with what receipt made of it.
pub struct Accepted {
    pub body: Vec<u8>,
    pub business_key: String,
    pub routes: Vec<Routed>,
    pub record: NewIpn,
}

impl Accepted {
    /// At least one integration delivers it.
    pub fn delivered(&self) -> bool {
        self.routes
            .iter()
            .any(|r| matches!(r.decision, Decision::Deliver { .. }))
    }
}

/// What a round trip did with a batch.
#[derive(Debug, Default, Clone, Copy)]
pub struct RoundTrip {
    /// Inserted, read back and compared.
    pub stored: u64,
    /// Same business key as a body stored before (nothing written, nothing compared).
    pub duplicate: u64,
}

/// A broken invariant in a round trip: which body of the batch, and what.
pub struct Finding {
    pub index: usize,
    pub message: String,
}

/// The configuration and the checks.
pub struct Harness {
    pub config: Config,
}

impl Harness {
    pub fn new() -> Result<Harness, String> {
        let loaded = ipn_bridge::config::parse(CONFIG, Path::new("fuzz.toml"), &SystemEnvironment)
            .map_err(|e| format!("the fuzz configuration is invalid: {e:?}"))?;
        Ok(Harness {
            config: loaded.config,
        })
    }

    fn passphrases(&self) -> Result<&[secrecy::SecretString], String> {
        self.config
            .sources
            .get(SOURCE)
            .map(|s| s.passphrases.as_slice())
            .ok_or_else(|| format!("source {SOURCE} missing"))
    }

    /// Runs one body through the explain and receipt paths.
    pub fn check(&self, body: &[u8]) -> Result<Outcome, String> {
        let passphrases = self.passphrases()?;
        let accepted = ipn::accept(body, passphrases);
        let received = ipn::receive(body, passphrases).map(|r| ipn::AcceptedIpn {
            event: r.event,
            business_key: r.business_key,
            key_case: r.key_case,
        });
        if accepted != received {
            return Err(format!(
                "accept and receive answered differently: {:?} against {:?}",
                accepted.as_ref().map(|a| &a.business_key),
                received.as_ref().map(|r| &r.business_key)
            ));
        }
        let pairs = match ipn::parse_form(body) {
            Ok(pairs) => pairs,
            Err(e) => {
                return match ipn::receive(body, passphrases) {
                    Err(IpnError::Malformed(_)) => Ok(Outcome::Parse),
                    other => Err(format!(
                        "parse_form refused the body ({e}) but receive answered {:?}",
                        other.map(|r| r.business_key)
                    )),
                };
            }
        };
        // What `explain FILE` (and `replay`) make of the body: no signature needed.
        let explained = IpnEvent::new(pairs.into_iter().collect());
        let explained_routes = rules::route(&self.config, SOURCE, &explained, RECEIVED_AT_MS);
        self.explain_requests(&explained_routes)?;

        let received = match ipn::receive(body, passphrases) {
            Ok(received) => received,
            Err(IpnError::Malformed(_)) => return Ok(Outcome::CaseTwins),
            Err(IpnError::MissingSignature | IpnError::BadSignature) => {
                return Ok(Outcome::Signature);
            }
        };
        if received.event != explained {
            return Err("receipt and explain read different events from one body".into());
        }
        let key = &received.business_key;
        if key.len() >= 200 || !key.is_ascii() || key.is_empty() {
            return Err(format!(
                "business key breaks its contract (non-empty, ASCII, < 200 bytes): {} bytes, \
                 ascii {}",
                key.len(),
                key.is_ascii()
            ));
        }
        let routes = explained_routes;
        let (new_routes, _attention) =
            ingest::new_routes(routes.clone(), &received.event, RECEIVED_AT_MS);
        let record = ingest::new_ipn(
            SOURCE,
            key.clone(),
            &received.event,
            body.to_vec(),
            new_routes,
            RECEIVED_AT_MS,
        );
        Ok(Outcome::Accepted(Box::new(Accepted {
            body: body.to_vec(),
            business_key: key.clone(),
            routes,
            record,
        })))
    }

    /// The Konnektive requests `explain` prints for every delivery, built by the same
    /// request builders `cli::explain::requests` uses (`connectors::konnektive::request`;
    /// `explain` itself is private to the binary's CLI), with placeholders for the values
    /// known only at send time. Every request must form-encode to a body that decodes back
    /// to exactly its parameters, and none may carry the API password.
    fn explain_requests(&self, routes: &[Routed]) -> Result<(), String> {
        for r in routes {
            let Decision::Deliver { target, action, .. } = &r.decision else {
                continue;
            };
            if !self.config.targets.contains_key(target) {
                return Err(format!("routing chose an unknown target {target}"));
            }
            let mut requests = Vec::new();
            match action.as_ref() {
                Action::ImportOrder {
                    order,
                    auto_approve,
                } => {
                    requests.push(request::import_params(order));
                    if *auto_approve {
                        requests.push(request::qa_approve_params("ORDER_ID"));
                    }
                }
                Action::Refund {
                    import,
                    amount,
                    full,
                    ds24_transaction_id,
                } => {
                    requests.extend(lookup(import));
                    requests.push(request::refund_params(
                        "TRANSACTION_ID",
                        *amount,
                        *full,
                        ds24_transaction_id,
                    ));
                }
                Action::Chargeback {
                    import,
                    amount,
                    date,
                    ds24_transaction_id,
                } => {
                    requests.extend(lookup(import));
                    if let Some(day) = Day::parse_iso(date) {
                        requests.push(request::chargeback_params(
                            "TRANSACTION_ID",
                            *amount,
                            day,
                            ds24_transaction_id,
                            &import.ds24_order_id,
                        ));
                    }
                }
                Action::CancelPurchase { import, reason } => {
                    requests.extend(lookup(import));
                    requests.push(request::purchase_cancel_params("PURCHASE_ID", reason));
                }
                Action::CancelOrder { import, reason } => {
                    requests.extend(lookup(import));
                    requests.push(request::order_cancel_params("ORDER_ID", reason));
                }
                Action::Forward(forwarded) => {
                    // A webhook forward is one JSON body: it must serialise and read back
                    // as the same value.
                    let body = ipn_bridge::connectors::webhook::payload(
                        forwarded,
                        ipn_bridge::domain::EventId(0),
                    );
                    let text = serde_json::to_string(&body).map_err(|e| {
                        format!("a forward of {} does not serialise: {e}", r.integration)
                    })?;
                    let back: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                        format!("a forward of {} does not read back: {e}", r.integration)
                    })?;
                    if back != body {
                        return Err(format!(
                            "a forward of {} reads back as another value",
                            r.integration
                        ));
                    }
                }
            }
            for params in &requests {
                let encoded =
                    request::form_encode(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                let decoded: Vec<(String, String)> = form_urlencoded::parse(encoded.as_bytes())
                    .into_owned()
                    .collect();
                if &decoded != params {
                    return Err(format!(
                        "a {} request of {} does not decode to its parameters",
                        action.kind().config_name(),
                        r.integration
                    ));
                }
                if encoded.contains("k0nn-Secret-Pw")
                    || request::redacted_form(params).contains("k0nn-Secret-Pw")
                {
                    return Err("a request carries the Konnektive password".into());
                }
            }
        }
        Ok(())
    }

    /// Ingests every accepted body of `batch` concurrently (so the writer commits them in
    /// groups), then reads back every one that was inserted and checks that it is received
    /// and routed exactly as at receipt (and that `replay`'s reading routes the same way).
    pub async fn round_trip(
        &self,
        store: &Store,
        batch: &[Box<Accepted>],
    ) -> Result<RoundTrip, Finding> {
        let passphrases = self
            .passphrases()
            .map_err(|message| Finding { index: 0, message })?;
        let mut ingests = tokio::task::JoinSet::new();
        let mut task_index = std::collections::HashMap::new();
        for (index, accepted) in batch.iter().enumerate() {
            let store = store.clone();
            let record = accepted.record.clone();
            let task = ingests.spawn(async move { (index, store.ingest(record).await) });
            task_index.insert(task.id(), index);
        }
        let mut inserted = Vec::new();
        let mut totals = RoundTrip::default();
        while let Some(joined) = ingests.join_next().await {
            let (index, result) = joined.map_err(|e| Finding {
                index: task_index.get(&e.id()).copied().unwrap_or(0),
                message: format!("an ingest task failed: {e}"),
            })?;
            match result {
                Ok(Ingested::Stored { ipn_id, .. }) => inserted.push((index, ipn_id)),
                Ok(Ingested::Duplicate { .. }) => totals.duplicate += 1,
                Err(e) => {
                    return Err(Finding {
                        index,
                        message: format!("the store refused an accepted IPN: {e}"),
                    });
                }
            }
        }
        let mut reads = tokio::task::JoinSet::new();
        let mut task_index = std::collections::HashMap::new();
        for (index, id) in inserted {
            let store = store.clone();
            let task = reads.spawn(async move { (index, store.ipn(id).await) });
            task_index.insert(task.id(), index);
        }
        while let Some(joined) = reads.join_next().await {
            let (index, result) = joined.map_err(|e| Finding {
                index: task_index.get(&e.id()).copied().unwrap_or(0),
                message: format!("a read task failed: {e}"),
            })?;
            let fail = |message: String| Finding { index, message };
            let stored = result.map_err(|e| fail(format!("cannot read a stored IPN back: {e}")))?;
            let accepted = &batch[index];
            if stored.raw_body != accepted.body {
                return Err(fail("the stored body differs from the received one".into()));
            }
            if stored.received_at != RECEIVED_AT_MS || stored.source != SOURCE {
                return Err(fail("the stored receipt time or source changed".into()));
            }
            let again = ipn::receive(&stored.raw_body, passphrases)
                .map_err(|e| fail(format!("the stored body is refused when read back: {e}")))?;
            if again.business_key != accepted.business_key {
                return Err(fail("the business key changed through the store".into()));
            }
            let routes = rules::route(
                &self.config,
                &stored.source,
                &again.event,
                stored.received_at,
            );
            if routes != accepted.routes {
                return Err(fail(format!(
                    "routes differently after the store: {:?} then {:?}",
                    summary(&accepted.routes),
                    summary(&routes)
                )));
            }
            let pairs = ipn::parse_form(&stored.raw_body)
                .map_err(|e| fail(format!("replay cannot parse the stored body: {e}")))?;
            let replayed = IpnEvent::new(pairs.into_iter().collect());
            let replay_routes =
                rules::route(&self.config, &stored.source, &replayed, stored.received_at);
            if replay_routes != accepted.routes {
                return Err(fail("replay routes the stored body differently".into()));
            }
            totals.stored += 1;
        }
        Ok(totals)
    }
}

/// How an action on an earlier import finds it: `order/query` over the dispatcher's days,
/// then `transactions/query` of the order found.
fn lookup(import: &ImportRef) -> [Vec<(String, String)>; 2] {
    [
        request::import_query_params(import, import.lookup_window(RECEIVED_AT_MS, NOW_MS), 1),
        request::transactions_query_params("ORDER_ID", 1),
    ]
}

/// `integration: DELIVER action | SKIP reason`, for messages.
pub fn summary(routes: &[Routed]) -> Vec<String> {
    routes
        .iter()
        .map(|r| match &r.decision {
            Decision::Deliver { action, .. } => {
                format!("{}: DELIVER {}", r.integration, action.kind().config_name())
            }
            Decision::Skip { reason, .. } => format!("{}: SKIP {reason}", r.integration),
        })
        .collect()
}
