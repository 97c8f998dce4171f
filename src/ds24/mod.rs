//! The Digistore24 API client: what *we ask* Digistore24 (the IPNs it *sends us* are
//! [`crate::ipn`]). Used by the `ds24` commands, `test-connection` and the daemon's audit.
//!
//! - [`client`]: transport (POST, form body, `X-DS-API-KEY` header, 30 s timeout, no
//!   redirects), the envelope (judged by `result`, never by the HTTP status alone), typed
//!   errors, back-off on "too many requests", PHP bracket parameters, lenient values
//!   (ids and amounts as strings or numbers, `Y`/`N` booleans).
//! - [`buy_url`]: `createBuyUrl` with the checks its documentation states.
//! - [`ipn_setup`]: `ipnSetup` / `ipnInfo`.
//! - [`transactions`]: `listTransactions`, paged, and the audit's comparison.
//! - [`account`]: `getUserInfo`, `listProducts`.
//! - [`audit`]: the transactions without a stored IPN (command and daemon).
//!
//! Decisions:
//! - Every guess about the API lives in [`client::guesses`] (one place, each with the
//!   reference section it rests on) and has a row in the README's "What rests on a guess".
//! - The key is a [`secrecy::SecretString`]; it is exposed only to build the header, which
//!   is marked sensitive. No error, `Debug` output or log line carries it.
//! - This module depends on `config` (key and URL), `domain`, and for the audit `store` and
//!   `clock`; the store knows nothing of it (the audit hands it plain order/transaction ids).
//! - The daemon's audits follow reloads (each configuration generation starts its own).

pub mod account;
pub mod audit;
pub mod buy_url;
pub mod client;
pub mod ipn_setup;
pub mod transactions;

pub use client::{ApiErrorKind, Client, Ds24Error, Params};
