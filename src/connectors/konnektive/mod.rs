//! The Konnektive CRM (Checkout Champ) connector: one [`KonnektiveClient`] per target.
//!
//! Split by role, like a vector sink: [`request`] builds parameter lists (pure),
//! [`response`] judges answers (pure, the retry *decision*), and this file does the I/O:
//! it POSTs, maps transport errors, assembles [`AttemptReport`]s and scrubs them of the
//! password. It must not know about IPNs, the store, the rules or the retry *timing*; rate
//! limiting is a layer around the client, owned by the dispatcher.
//!
//! Decisions:
//! * **POST with an urlencoded body, bare URL** (`{base_url}/{section}/{action}/`): the
//!   credentials travel in the body so they never reach proxy or APM logs (reference §1).
//! * **No hidden retries and no redirects**: reqwest's retry policy is `never` and redirects
//!   are not followed, so one call is one attempt row, and a non-idempotent import is never
//!   repeated behind the dispatcher's back. A 3xx is classified as target-wide
//!   (a wrong `base_url`).
//! * **Transport errors**: a connect error (DNS, refused, TLS, connect timeout) sent nothing,
//!   so it is retryable and not applied. Any other error (total timeout, connection cut, body
//!   read error) may come after Konnektive acted: `Unknown`, maybe applied, reconcile first.
//! * **Reads are safe to repeat**: for `order/query`, `transactions/query` and `campaign/query`,
//!   `Unknown` becomes `Retryable` and `maybe_applied` is always false.
//! * **Secrets**: `Debug` shows no password; the stored request replaces it with
//!   `[redacted]`; every reason, response and transport error text is scrubbed of the
//!   password (raw and form-encoded) in case an answer echoes it.
//! * **QA hold**: when an import comes back `PENDING` and the action has `auto_approve`, the
//!   client calls `order/qa` with `APPROVE` at once. The import stays `Delivered` either way
//!   (the order exists; repeating the import would duplicate it); a failed approval is logged
//!   at ERROR and appended to the attempt's request/response so a person sees it.
//! * **Actions on an earlier import** (refund, chargeback, cancellations) need the CRM order
//!   first: [`KonnektiveClient::find_import`] finds it (`order/query`, every page, the latest
//!   order whose reference [`ImportRef::matches`]), [`KonnektiveClient::execute_on`] acts on
//!   it. [`KonnektiveClient::execute`] performs imports only; given another action it reports
//!   a permanent local failure (a dispatcher bug), never a guess at the order.
//! * **One attempt, several calls.** A refund or chargeback reads `transactions/query` (all
//!   pages) to pick the payment transaction (see `response`), then writes; a purchase
//!   cancellation may read the purchase ids (`order/query` by `orderId`) and then cancels each
//!   purchase, stopping at the first failure. The report's endpoint and HTTP status are the
//!   final call's; its request and response list every call (`--- endpoint: …`), scrubbed.
//! * **maybe_applied** is the final call's (reads never set it), and also true when an
//!   earlier write of the same attempt succeeded but a later one did not (some purchases are
//!   cancelled): something happened, and the report says so. Repeating is harmless there:
//!   the cancelled ones answer "already cancelled", which counts as delivered.
//! * **Refund amount** ([`refund_plan`]): the action's amount (the reversed item's share),
//!   capped at what remains refundable on the payment transaction (its amount minus the
//!   order's REFUND transactions, read from the same `transactions/query`, see
//!   [`response::refundable_remainder`]; `order/query`'s `refundRemaining` would cost another
//!   call and is per order, not per transaction). `fullRefund=1` only when the amount sent is
//!   exactly that remainder, whatever the action calls itself, so one item's share never
//!   empties an order that holds more. Nothing remains: nothing is sent, and the attempt is
//!   delivered ("already refunded"), as Konnektive's own "already refunded" answer is. The
//!   remainder unknown (no amounts on the rows): the amount is sent as is, never with
//!   `fullRefund`. A cap or an unknown remainder is noted at the top of the attempt's request.
//! * **Campaign currency**: [`KonnektiveClient::check_campaign`] returns the campaign's
//!   products and, when the answer names it, its currency (field names in
//!   [`response::CAMPAIGN_CURRENCY_FIELDS`], a guess); the dispatcher compares it with the
//!   order's before an import.
//! * **No transaction is permanent.** An order without transactions, or without a
//!   successful SALE/CAPTURE, cannot take a refund or chargeback however often we try (it is
//!   typically still held in QA): a person must look.
//! * **Finding an applied action** ([`KonnektiveClient::find_applied`]): an import by its
//!   reference; a refund by the REFUND transaction whose `merchantTxnId` is our Digistore24
//!   refund transaction id (sent as `refundMerchantTxnId`). Chargebacks and cancellations
//!   are safe to repeat, so they are never looked up.

pub mod request;
pub mod response;
pub mod target;

pub use request::import_params;
pub use response::{Campaign, Classified, classify};

use crate::config::Target;
use crate::domain::{
    Action, AttemptReport, Day, DayWindow, ImportRef, Money, Order, Outcome, Receipt,
};
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use std::fmt;
use std::time::Duration;

/// Connect timeout ceiling; the total timeout is `target.delivery.timeout`.
const CONNECT_TIMEOUT_MAX_SECS: u64 = 10;

/// Pages fetched at most while reconciling (200 orders each, for one buyer and campaign in
/// three days; more means something else is wrong).
const RECONCILE_MAX_PAGES: u32 = 20;

pub const IMPORT_ENDPOINT: &str = "order/import";
pub const QA_ENDPOINT: &str = "order/qa";
pub const ORDER_QUERY_ENDPOINT: &str = "order/query";
pub const CAMPAIGN_QUERY_ENDPOINT: &str = "campaign/query";
pub const TRANSACTIONS_QUERY_ENDPOINT: &str = "transactions/query";
pub const REFUND_ENDPOINT: &str = "transactions/refund";
pub const TRANSACTION_UPDATE_ENDPOINT: &str = "transactions/update";
pub const ORDER_CANCEL_ENDPOINT: &str = "order/cancel";
pub const PURCHASE_CANCEL_ENDPOINT: &str = "purchase/cancel";

/// Pages of transactions read at most for one order (200 each; an order has a handful).
const TRANSACTION_MAX_PAGES: u32 = 5;

/// A client for one Konnektive target. Cheap to clone (the HTTP client is shared).
#[derive(Clone)]
pub struct KonnektiveClient {
    http: reqwest::Client,
    base_url: String,
    login_id: String,
    password: SecretString,
}

impl fmt::Debug for KonnektiveClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KonnektiveClient")
            .field("base_url", &self.base_url)
            .field("login_id", &self.login_id)
            .field("password", &request::REDACTED)
            .finish_non_exhaustive()
    }
}

/// What came back over the wire, before classification.
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Vec<u8>,
}

/// A transport failure, already classified.
struct TransportError {
    outcome: Outcome,
    maybe_applied: bool,
    http_status: Option<u16>,
    text: String,
}

impl KonnektiveClient {
    /// Builds the HTTP client: total timeout `target.delivery.timeout`, connect timeout
    /// `min(10 s, timeout)`, rustls, no redirects, no automatic retries.
    pub fn new(target: &Target) -> Result<Self, reqwest::Error> {
        let timeout = target.delivery.timeout;
        let connect_timeout = timeout.min(Duration::from_secs(CONNECT_TIMEOUT_MAX_SECS));
        let http = reqwest::Client::builder()
            .tls_backend_rustls()
            .timeout(timeout)
            .connect_timeout(connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .retry(reqwest::retry::never())
            .user_agent(concat!("ipn-bridge/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(KonnektiveClient {
            http,
            base_url: target.base_url.trim_end_matches('/').to_owned(),
            login_id: target.login_id.clone(),
            password: target.password.clone(),
        })
    }

    /// Performs `action` once and reports what happened. Never retries.
    pub async fn execute(&self, action: &Action) -> AttemptReport {
        match action {
            Action::ImportOrder {
                order,
                auto_approve,
            } => self.import_order(order, *auto_approve).await,
            other => self.local_failure(
                other.kind().config_name(),
                format!(
                    "action {} needs its import resolved first (find_import, then execute_on)",
                    other.kind().config_name()
                ),
            ),
        }
    }

    /// Performs a Refund / Chargeback / CancelPurchase / CancelOrder on the resolved import
    /// (`import.order_id`, `purchase_ids`). One attempt may make several calls; the report
    /// describes the attempt (endpoint = the final call, request/response = every call,
    /// redacted) and its outcome class. An import is simply [`Self::execute`]d.
    pub async fn execute_on(&self, action: &Action, import: &Receipt) -> AttemptReport {
        if let Action::ImportOrder { .. } = action {
            return self.execute(action).await;
        }
        let Some(order_id) = import.order_id.as_deref().filter(|id| !id.is_empty()) else {
            return self.local_failure(
                action.kind().config_name(),
                format!(
                    "the import this {} refers to has no Konnektive order id",
                    action.kind().config_name()
                ),
            );
        };
        match action {
            Action::ImportOrder { .. } => self.execute(action).await,
            Action::Refund {
                amount,
                ds24_transaction_id,
                ..
            } => self.refund(order_id, *amount, ds24_transaction_id).await,
            Action::Chargeback {
                import: import_ref,
                amount,
                date,
                ds24_transaction_id,
            } => {
                let Some(day) = Day::parse_iso(date) else {
                    return self.local_failure(
                        TRANSACTION_UPDATE_ENDPOINT,
                        format!("chargeback date {date:?} is not a YYYY-MM-DD date"),
                    );
                };
                let params = |txn: &str| {
                    request::chargeback_params(
                        txn,
                        *amount,
                        day,
                        ds24_transaction_id,
                        &import_ref.ds24_order_id,
                    )
                };
                self.chargeback(order_id, params).await
            }
            Action::CancelPurchase { reason, .. } => {
                self.cancel_purchases(order_id, &import.purchase_ids, reason)
                    .await
            }
            Action::CancelOrder { reason, .. } => self.cancel_order(order_id, reason).await,
            Action::Forward(_) => self.local_failure(
                "forward",
                "a Konnektive target cannot forward events (use a webhook target)".into(),
            ),
        }
    }

    /// `transactions/query`, then `transactions/refund` on the payment transaction, for the
    /// action's amount capped at what remains refundable (see [`refund_plan`]); nothing is
    /// sent when nothing remains.
    async fn refund(
        &self,
        order_id: &str,
        amount: Money,
        ds24_transaction_id: &str,
    ) -> AttemptReport {
        let mut trail = Vec::new();
        let (txn, rows) = match self
            .payment_transaction_with_rows(order_id, &mut trail)
            .await
        {
            Ok(found) => found,
            Err(report) => return report,
        };
        let remaining = response::refundable_remainder(&rows, &txn);
        let plan = refund_plan(amount, remaining);
        let note = plan.note(&txn, amount, remaining);
        let Some((send, full)) = plan.send() else {
            // Nothing remains: Digistore24's refund is already recorded (by an earlier
            // attempt, or by a person), which counts as delivered, as "already refunded" does.
            let mut report = self.combine(
                trail,
                Outcome::Delivered(Receipt {
                    order_id: Some(order_id.to_owned()),
                    ..Receipt::default()
                }),
                false,
            );
            report.request = format!("{note}\n{}", report.request);
            report.response = format!("{}\n{note}", report.response);
            return report;
        };
        let params = request::refund_params(&txn, send, full, ds24_transaction_id);
        let (report, body) = self.call(REFUND_ENDPOINT, params, false).await;
        trail.push(report.clone());
        let outcome = match report.outcome {
            Outcome::Delivered(_) => Outcome::Delivered(Receipt {
                order_id: Some(order_id.to_owned()),
                transaction_ids: body
                    .as_deref()
                    .and_then(response::refund_transaction_id)
                    .into_iter()
                    .collect(),
                ..Receipt::default()
            }),
            other => other,
        };
        let mut combined = self.combine(trail, outcome, report.maybe_applied);
        if !note.is_empty() {
            combined.request = format!("{note}\n{}", combined.request);
        }
        combined
    }

    /// `transactions/query`, then `transactions/update` marking the payment transaction.
    async fn chargeback(
        &self,
        order_id: &str,
        params: impl Fn(&str) -> Vec<(String, String)>,
    ) -> AttemptReport {
        let mut trail = Vec::new();
        let txn = match self.payment_transaction_of(order_id, &mut trail).await {
            Ok(txn) => txn,
            Err(report) => return report,
        };
        let (report, _) = self
            .call(TRANSACTION_UPDATE_ENDPOINT, params(&txn), false)
            .await;
        trail.push(report.clone());
        let outcome = match report.outcome {
            Outcome::Delivered(_) => Outcome::Delivered(Receipt {
                order_id: Some(order_id.to_owned()),
                transaction_ids: vec![txn],
                ..Receipt::default()
            }),
            other => other,
        };
        self.combine(trail, outcome, report.maybe_applied)
    }

    /// `purchase/cancel` for every purchase of the order (read from `order/query` when the
    /// receipt has none); stops at the first failure.
    async fn cancel_purchases(
        &self,
        order_id: &str,
        known: &[String],
        reason: &str,
    ) -> AttemptReport {
        let mut trail = Vec::new();
        let purchase_ids = if known.is_empty() {
            match self.purchases_of(order_id, &mut trail).await {
                Ok(ids) => ids,
                Err(report) => return report,
            }
        } else {
            known.to_vec()
        };
        let mut cancelled = Vec::with_capacity(purchase_ids.len());
        for purchase_id in &purchase_ids {
            let params = request::purchase_cancel_params(purchase_id, reason);
            let (report, _) = self.call(PURCHASE_CANCEL_ENDPOINT, params, false).await;
            trail.push(report.clone());
            if !matches!(report.outcome, Outcome::Delivered(_)) {
                let maybe_applied = report.maybe_applied || !cancelled.is_empty();
                return self.combine(trail, report.outcome, maybe_applied);
            }
            cancelled.push(purchase_id.clone());
        }
        let receipt = Receipt {
            order_id: Some(order_id.to_owned()),
            purchase_ids: cancelled,
            ..Receipt::default()
        };
        self.combine(trail, Outcome::Delivered(receipt), false)
    }

    /// `order/cancel` without a refund.
    async fn cancel_order(&self, order_id: &str, reason: &str) -> AttemptReport {
        let params = request::order_cancel_params(order_id, reason);
        let (report, _) = self.call(ORDER_CANCEL_ENDPOINT, params, false).await;
        let outcome = match report.outcome {
            Outcome::Delivered(_) => Outcome::Delivered(Receipt {
                order_id: Some(order_id.to_owned()),
                ..Receipt::default()
            }),
            ref other => other.clone(),
        };
        with_outcome(report, outcome)
    }

    /// The transaction a refund or chargeback of `order_id` is recorded on. `Err` is the
    /// finished report (the failed read, or a permanent "no transaction").
    async fn payment_transaction_of(
        &self,
        order_id: &str,
        trail: &mut Vec<AttemptReport>,
    ) -> Result<String, AttemptReport> {
        self.payment_transaction_with_rows(order_id, trail)
            .await
            .map(|(txn, _)| txn)
    }

    /// Like [`Self::payment_transaction_of`], also returning every transaction row of the
    /// order (for what remains refundable).
    async fn payment_transaction_with_rows(
        &self,
        order_id: &str,
        trail: &mut Vec<AttemptReport>,
    ) -> Result<(String, Vec<serde_json::Value>), AttemptReport> {
        let rows = match self.order_transactions(order_id, trail).await {
            Ok(rows) => rows,
            Err(report) => return Err(self.combine(trail.clone(), report.outcome, false)),
        };
        if let Some(txn) = response::payment_transaction(&rows) {
            return Ok((txn, rows));
        }
        let reason = if rows.is_empty() {
            format!("Konnektive has no transaction for order {order_id} (is it still held in QA?)")
        } else {
            format!(
                "Konnektive order {order_id} has no successful SALE or CAPTURE transaction \
                 ({} other transactions)",
                rows.len()
            )
        };
        Err(self.combine(trail.clone(), Outcome::Permanent { reason }, false))
    }

    /// Every transaction of `order_id`, all pages; empty on "No transactions matching…".
    /// `Err` is the failed call's own report; every call is pushed onto `trail`.
    async fn order_transactions(
        &self,
        order_id: &str,
        trail: &mut Vec<AttemptReport>,
    ) -> Result<Vec<serde_json::Value>, AttemptReport> {
        let mut rows = Vec::new();
        for page in 1..=TRANSACTION_MAX_PAGES {
            let params = request::transactions_query_params(order_id, page);
            let Some(found) = self
                .query_page(TRANSACTIONS_QUERY_ENDPOINT, params, trail)
                .await?
            else {
                return Ok(rows);
            };
            let empty = found.rows.is_empty();
            rows.extend(found.rows);
            if empty || rows.len() as u64 >= found.total_results {
                return Ok(rows);
            }
        }
        Err(self.local_failure(
            TRANSACTIONS_QUERY_ENDPOINT,
            format!("order {order_id} has more than {TRANSACTION_MAX_PAGES} pages of transactions"),
        ))
    }

    /// The purchase ids of `order_id` from `order/query` (`items`). `Err` is the finished
    /// report (the failed read, or a permanent "no such order" / "no purchases").
    async fn purchases_of(
        &self,
        order_id: &str,
        trail: &mut Vec<AttemptReport>,
    ) -> Result<Vec<String>, AttemptReport> {
        let params = request::order_by_id_params(order_id);
        let found = match self.query_page(ORDER_QUERY_ENDPOINT, params, trail).await {
            Ok(found) => found,
            Err(report) => return Err(self.combine(trail.clone(), report.outcome, false)),
        };
        let ids = found
            .iter()
            .flat_map(|page| page.rows.iter())
            .find(|row| response::row_field_equals(row, "orderId", order_id))
            .map(|row| response::receipt_from_order(row).purchase_ids);
        let reason = match ids {
            Some(ids) if !ids.is_empty() => return Ok(ids),
            Some(_) => format!("Konnektive order {order_id} has no purchases to cancel"),
            None => format!("Konnektive has no order {order_id}"),
        };
        Err(self.combine(trail.clone(), Outcome::Permanent { reason }, false))
    }

    /// One page of a `*/query` (a read): `Ok(None)` on Konnektive's "No … matching those
    /// parameters could be found"; `Err` is the call's report for any other failure.
    async fn query_page(
        &self,
        endpoint: &str,
        params: Vec<(String, String)>,
        trail: &mut Vec<AttemptReport>,
    ) -> Result<Option<response::QueryPage>, AttemptReport> {
        let (report, body) = self.call(endpoint, params, true).await;
        trail.push(report.clone());
        let Some(body) = body else {
            return Err(report);
        };
        let ok_status = report.http_status.is_some_and(|s| (200..300).contains(&s));
        if ok_status && response::is_nothing_found(&body) {
            return Ok(None);
        }
        if !matches!(report.outcome, Outcome::Delivered(_)) {
            return Err(report);
        }
        match response::query_page(&body) {
            Some(page) => Ok(Some(page)),
            None => Err(with_outcome(
                report,
                Outcome::Retryable {
                    reason: format!("{endpoint} answered SUCCESS without a paging object"),
                    retry_after: None,
                },
            )),
        }
    }

    /// One report for an attempt of several calls: the final call's endpoint and status,
    /// every call's request and response, the given outcome.
    fn combine(
        &self,
        mut trail: Vec<AttemptReport>,
        outcome: Outcome,
        maybe_applied: bool,
    ) -> AttemptReport {
        let Some(last) = trail.pop() else {
            return self.local_failure("", "no call was made".to_owned());
        };
        if trail.is_empty() {
            return self.scrub(AttemptReport {
                outcome,
                maybe_applied,
                ..last
            });
        }
        trail.push(last);
        let mut request = String::new();
        let mut response = String::new();
        for (i, call) in trail.iter().enumerate() {
            let sep = if i == 0 { "" } else { "\n" };
            request.push_str(&format!("{sep}--- {}: {}", call.endpoint, call.request));
            response.push_str(&format!(
                "{sep}--- {} ({}): {}",
                call.endpoint,
                call.outcome.label(),
                call.response
            ));
        }
        let (endpoint, http_status) = trail
            .last()
            .map(|c| (c.endpoint.clone(), c.http_status))
            .unwrap_or_default();
        self.scrub(AttemptReport {
            outcome,
            endpoint,
            http_status,
            request,
            response,
            maybe_applied,
        })
    }

    async fn import_order(&self, order: &Order, auto_approve: bool) -> AttemptReport {
        let params = import_params(order);
        let (mut report, body) = self.call(IMPORT_ENDPOINT, params, false).await;
        let held = match (&report.outcome, &body) {
            (Outcome::Delivered(_), Some(body)) if auto_approve => {
                response::import_held_for_qa(body)
            }
            _ => None,
        };
        if let Some(order_id) = held {
            let qa_params = request::qa_approve_params(&order_id);
            let (qa, _) = self.call(QA_ENDPOINT, qa_params, false).await;
            if !matches!(qa.outcome, Outcome::Delivered(_)) {
                tracing::error!(
                    order_id = %order_id,
                    outcome = qa.outcome.label(),
                    reason = qa.outcome.reason(),
                    "Konnektive order is held in QA and could not be approved; approve it by hand"
                );
            }
            report
                .request
                .push_str(&format!("\n--- {QA_ENDPOINT}: {}", qa.request));
            report.response.push_str(&format!(
                "\n--- {QA_ENDPOINT} ({}): {}",
                qa.outcome.label(),
                qa.response
            ));
        }
        report
    }

    /// Looks for an order imported earlier for `order` (after an unknown outcome): Konnektive
    /// orders of the buyer's e-mail in the campaign, created within `window` (widened by a
    /// day on each side), whose `order.reference_field` equals `order.reference` exactly.
    ///
    /// `Ok(None)` only when Konnektive positively said there is none, so the import may be
    /// sent again; any failure is `Err(report)` (recorded like an attempt), because resending
    /// without knowing could create a duplicate.
    pub async fn find_order(
        &self,
        order: &Order,
        window: DayWindow,
    ) -> Result<Option<Receipt>, AttemptReport> {
        let mut seen: u64 = 0;
        let mut trail = Vec::new();
        for page in 1..=RECONCILE_MAX_PAGES {
            let params = request::order_query_params(order, window, page);
            let Some(page_rows) = self
                .query_page(ORDER_QUERY_ENDPOINT, params, &mut trail)
                .await?
            else {
                return Ok(None);
            };
            let mut hits = page_rows.rows.iter().filter(|row| {
                response::row_field_equals(row, &order.reference_field, &order.reference)
            });
            if let Some(row) = hits.next() {
                let receipt = response::receipt_from_order(row);
                if hits.next().is_some() {
                    tracing::warn!(
                        reference = %order.reference,
                        "more than one Konnektive order carries this reference; using the first"
                    );
                }
                return Ok(Some(receipt));
            }
            seen += page_rows.rows.len() as u64;
            if page_rows.rows.is_empty() || seen >= page_rows.total_results {
                return Ok(None);
            }
        }
        Err(self.local_failure(
            ORDER_QUERY_ENDPOINT,
            format!("cannot reconcile: more than {RECONCILE_MAX_PAGES} pages of orders"),
        ))
    }

    /// The CRM order an action refers to: `order/query` (buyer e-mail, campaign, `window`
    /// widened by a day each side, all pages) for rows whose `import.reference_field` value
    /// satisfies `import.matches(..)`; the latest by `dateCreated`. `Ok(None)` only on
    /// Konnektive's "No orders matching…" or after reading every page without a match; any
    /// failure is `Err(report)` (the failed read).
    pub async fn find_import(
        &self,
        import: &ImportRef,
        window: DayWindow,
    ) -> Result<Option<Receipt>, AttemptReport> {
        let mut seen: u64 = 0;
        let mut trail = Vec::new();
        let mut latest: Option<((String, u64), serde_json::Value)> = None;
        for page in 1..=RECONCILE_MAX_PAGES {
            let params = request::import_query_params(import, window, page);
            let Some(page_rows) = self
                .query_page(ORDER_QUERY_ENDPOINT, params, &mut trail)
                .await?
            else {
                break;
            };
            seen += page_rows.rows.len() as u64;
            let done = page_rows.rows.is_empty() || seen >= page_rows.total_results;
            for row in page_rows.rows {
                let matches = response::row_field(&row, &import.reference_field)
                    .is_some_and(|reference| import.matches(&reference));
                if !matches {
                    continue;
                }
                let key = response::order_recency(&row);
                if latest.as_ref().is_none_or(|(best, _)| key >= *best) {
                    latest = Some((key, row));
                }
            }
            if done {
                return Ok(latest.map(|(_, row)| response::receipt_from_order(&row)));
            }
            if page == RECONCILE_MAX_PAGES {
                return Err(self.local_failure(
                    ORDER_QUERY_ENDPOINT,
                    format!(
                        "cannot find the import: more than {RECONCILE_MAX_PAGES} pages of orders"
                    ),
                ));
            }
        }
        Ok(latest.map(|(_, row)| response::receipt_from_order(&row)))
    }

    /// After an attempt that may have been applied: whether the action already happened in
    /// Konnektive. An import → [`Self::find_order`]; a refund → the order's REFUND
    /// transaction whose `merchantTxnId` equals `ds24_transaction_id` (`Some(receipt)` with
    /// that transaction id); other actions → `Ok(None)` (they are safe to repeat).
    ///
    /// A refund without a resolved `import` is looked up through [`Self::find_import`] over
    /// `window` extended back to the import's `since` day; no import means no refund.
    pub async fn find_applied(
        &self,
        action: &Action,
        import: Option<&Receipt>,
        window: DayWindow,
    ) -> Result<Option<Receipt>, AttemptReport> {
        match action {
            Action::ImportOrder { order, .. } => self.find_order(order, window).await,
            Action::Refund {
                import: import_ref,
                ds24_transaction_id,
                ..
            } => {
                let known = import
                    .and_then(|r| r.order_id.clone())
                    .filter(|id| !id.is_empty());
                let order_id = match known {
                    Some(id) => id,
                    None => {
                        let since = Day::parse_iso(&import_ref.since)
                            .map_or(window.first, |d| d.min(window.first));
                        let widened = DayWindow {
                            first: since,
                            last: window.last,
                        };
                        match self.find_import(import_ref, widened).await? {
                            Some(Receipt {
                                order_id: Some(id), ..
                            }) => id,
                            _ => return Ok(None),
                        }
                    }
                };
                let mut trail = Vec::new();
                let rows = self.order_transactions(&order_id, &mut trail).await?;
                Ok(
                    response::refund_with_merchant_txn(&rows, ds24_transaction_id).map(|txn| {
                        Receipt {
                            order_id: Some(order_id),
                            transaction_ids: vec![txn],
                            ..Receipt::default()
                        }
                    }),
                )
            }
            Action::Chargeback { .. }
            | Action::CancelPurchase { .. }
            | Action::CancelOrder { .. }
            | Action::Forward(_) => Ok(None),
        }
    }

    /// `campaign/query` for `campaign_id` (the `test-connection` recipe, reference §3.6):
    /// success proves credentials, allow-list, permission and campaign; returns the
    /// campaign's product ids and the currency it books in (when the answer names one, see
    /// [`response::CAMPAIGN_CURRENCY_FIELDS`]).
    pub async fn check_campaign(&self, campaign_id: u64) -> Result<Campaign, AttemptReport> {
        let params = vec![("campaignId".to_owned(), campaign_id.to_string())];
        let (report, body) = self.call(CAMPAIGN_QUERY_ENDPOINT, params, true).await;
        if !matches!(report.outcome, Outcome::Delivered(_)) {
            return Err(report);
        }
        match body.and_then(|b| response::campaign(&b, campaign_id)) {
            Some(campaign) => Ok(campaign),
            None => Err(with_outcome(
                report,
                Outcome::Permanent {
                    reason: format!("campaign {campaign_id} is not in Konnektive's answer"),
                },
            )),
        }
    }

    /// One POST of `params` (plus credentials) to `endpoint`: the scrubbed report, and the raw
    /// body when one was read.
    async fn call(
        &self,
        endpoint: &str,
        params: Vec<(String, String)>,
        read_only: bool,
    ) -> (AttemptReport, Option<Vec<u8>>) {
        let mut all = Vec::with_capacity(params.len() + 2);
        all.push((request::LOGIN_ID_PARAM.to_owned(), self.login_id.clone()));
        all.push((
            request::PASSWORD_PARAM.to_owned(),
            self.password.expose_secret().to_owned(),
        ));
        all.extend(params);
        let stored_request = request::redacted_form(&all);

        let result = self.post(endpoint, &all).await;
        drop(all);

        let (report, body) = match result {
            Ok(answer) => {
                let c = classify(answer.status, answer.retry_after.as_deref(), &answer.body);
                let report = AttemptReport {
                    outcome: c.outcome,
                    endpoint: endpoint.to_owned(),
                    http_status: Some(answer.status),
                    request: stored_request,
                    response: c.excerpt,
                    maybe_applied: c.maybe_applied,
                };
                (report, Some(answer.body))
            }
            Err(e) => {
                let report = AttemptReport {
                    outcome: e.outcome,
                    endpoint: endpoint.to_owned(),
                    http_status: e.http_status,
                    request: stored_request,
                    response: e.text,
                    maybe_applied: e.maybe_applied,
                };
                (report, None)
            }
        };
        let report = if read_only { as_read(report) } else { report };
        tracing::debug!(
            endpoint,
            outcome = report.outcome.label(),
            http_status = report.http_status,
            "Konnektive call finished"
        );
        (self.scrub(report), body)
    }

    async fn post(
        &self,
        endpoint: &str,
        params: &[(String, String)],
    ) -> Result<Answer, TransportError> {
        let url = format!("{}/{}/", self.base_url, endpoint.trim_matches('/'));
        let body = request::form_encode(params.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        let sent = self
            .http
            .post(url)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await;
        let resp = match sent {
            Ok(resp) => resp,
            Err(e) => return Err(transport_error(&e, None)),
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match resp.bytes().await {
            Ok(body) => Ok(Answer {
                status,
                retry_after,
                body: body.to_vec(),
            }),
            Err(e) => Err(transport_error(&e, Some(status))),
        }
    }

    /// A failure found before anything was sent (a bug or bad data, not the target's fault).
    fn local_failure(&self, endpoint: &str, reason: String) -> AttemptReport {
        self.scrub(AttemptReport {
            outcome: Outcome::Permanent {
                reason: reason.clone(),
            },
            endpoint: endpoint.to_owned(),
            http_status: None,
            request: String::new(),
            response: reason,
            maybe_applied: false,
        })
    }

    /// Removes the password (raw and form-encoded) from everything a report carries.
    fn scrub(&self, mut report: AttemptReport) -> AttemptReport {
        let secret = self.password.expose_secret();
        if secret.is_empty() {
            return report;
        }
        let encoded = request::form_encode([("", secret)]);
        let encoded = encoded.trim_start_matches('=');
        let clean = |s: &str| -> String {
            let s = s.replace(secret, request::REDACTED);
            if encoded != secret {
                s.replace(encoded, request::REDACTED)
            } else {
                s
            }
        };
        report.request = clean(&report.request);
        report.response = clean(&report.response);
        report.outcome = match report.outcome {
            Outcome::Retryable {
                reason,
                retry_after,
            } => Outcome::Retryable {
                reason: clean(&reason),
                retry_after,
            },
            Outcome::Permanent { reason } => Outcome::Permanent {
                reason: clean(&reason),
            },
            Outcome::TargetDown { reason } => Outcome::TargetDown {
                reason: clean(&reason),
            },
            Outcome::Unknown { reason } => Outcome::Unknown {
                reason: clean(&reason),
            },
            delivered @ Outcome::Delivered(_) => delivered,
        };
        report
    }
}

/// What a refund sends, from the action's amount and what remains refundable on the payment
/// transaction (`None`: unknown, see [`response::refundable_remainder`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundPlan {
    /// Nothing remains: send nothing, the refund is already recorded.
    NothingLeft,
    /// Send `amount`; `full` (`fullRefund=1`) exactly when it is all that remains.
    Send { amount: Money, full: bool },
    /// The action asks for more than remains: send the remainder, with `fullRefund=1`.
    Capped { amount: Money },
}

/// The refund to send for `wanted` when `remaining` is what Konnektive can still refund.
/// `fullRefund=1` goes out only when the amount sent equals the remainder, so a share of
/// the payment (one item of several, a partial refund) never empties the transaction.
pub fn refund_plan(wanted: Money, remaining: Option<Money>) -> RefundPlan {
    let wanted = wanted.abs();
    match remaining {
        None => RefundPlan::Send {
            amount: wanted,
            full: false,
        },
        Some(left) if left.minor() <= 0 => RefundPlan::NothingLeft,
        Some(left) if wanted > left => RefundPlan::Capped { amount: left },
        Some(left) => RefundPlan::Send {
            amount: wanted,
            full: wanted == left,
        },
    }
}

impl RefundPlan {
    /// `(amount, fullRefund)` to send, `None` for [`RefundPlan::NothingLeft`].
    fn send(self) -> Option<(Money, bool)> {
        match self {
            RefundPlan::NothingLeft => None,
            RefundPlan::Send { amount, full } => Some((amount, full)),
            RefundPlan::Capped { amount } => Some((amount, true)),
        }
    }

    /// The line recorded on the attempt when the plan is not simply the action's amount.
    fn note(self, txn: &str, wanted: Money, remaining: Option<Money>) -> String {
        let wanted = wanted.abs();
        match (self, remaining) {
            (RefundPlan::NothingLeft, _) => format!(
                "nothing remains refundable on transaction {txn} (already refunded); \
                 {wanted} not sent"
            ),
            (RefundPlan::Capped { amount }, _) => format!(
                "refund of {wanted} capped at {amount}: only {amount} remains refundable on \
                 transaction {txn}"
            ),
            (RefundPlan::Send { .. }, None) => format!(
                "what remains refundable on transaction {txn} is unknown (no amounts in \
                 transactions/query); {wanted} sent without fullRefund"
            ),
            (RefundPlan::Send { .. }, Some(_)) => String::new(),
        }
    }
}

/// Classifies a reqwest error (see module docs). `status` is set when the headers had arrived.
fn transport_error(e: &reqwest::Error, status: Option<u16>) -> TransportError {
    let text = error_chain(e);
    if status.is_none() && (e.is_connect() || e.is_builder()) {
        let outcome = if e.is_builder() {
            Outcome::TargetDown {
                reason: format!("cannot build the request (check base_url): {text}"),
            }
        } else {
            Outcome::Retryable {
                reason: format!("cannot connect to Konnektive: {text}"),
                retry_after: None,
            }
        };
        return TransportError {
            outcome,
            maybe_applied: false,
            http_status: None,
            text,
        };
    }
    let what = if e.is_timeout() {
        "timed out"
    } else if status.is_some() {
        "failed while reading the answer"
    } else {
        "failed after sending"
    };
    TransportError {
        outcome: Outcome::Unknown {
            reason: format!("request {what}; it may have been applied: {text}"),
        },
        maybe_applied: true,
        http_status: status,
        text,
    }
}

/// `error: cause: cause` (reqwest's own Display omits the causes).
fn error_chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Reads are safe to repeat: nothing was applied, and an unknown outcome is just retryable.
fn as_read(mut report: AttemptReport) -> AttemptReport {
    report.maybe_applied = false;
    if let Outcome::Unknown { reason } = report.outcome {
        report.outcome = Outcome::Retryable {
            reason,
            retry_after: None,
        };
    }
    report
}

fn with_outcome(mut report: AttemptReport, outcome: Outcome) -> AttemptReport {
    report.outcome = outcome;
    report
}
