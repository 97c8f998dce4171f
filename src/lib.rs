//! ipn-bridge: receives Digistore24 IPNs and performs the configured actions in Konnektive CRM,
//! durably, exactly once, with retries, a reviewable queue and alerts.
//!
//! Module map (dependencies point down this list, never up):
//! - [`cli`]: one file per subcommand; [`app`]: wiring of the daemon.
//! - [`server`] (HTTP: verify → store → `OK`) and [`delivery`] (dispatcher: lease, call,
//!   record, reschedule).
//! - [`ipn`] (Digistore24 format and signature), [`rules`] (routing and mapping, pure),
//!   [`store`] (SQLite), [`connectors`] (Konnektive), [`config`] (TOML → validated values).
//! - [`ds24`]: the Digistore24 API client (what we ask Digistore24; [`ipn`] is what it sends).
//! - [`alert`]: the alert outbox and its SMTP sender (digest per recipient).
//! - [`domain`]: plain data used by all of the above. [`clock`]: the injectable time source.
//! - [`metrics`]: Prometheus counters, gauges and histograms (recorded by server and
//!   dispatcher); [`service`]: life under systemd (watchdog keep-alive).
#![forbid(unsafe_code)]

pub mod alert;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod connectors;
pub mod delivery;
pub mod domain;
pub mod ds24;
pub mod ingest;
pub mod ipn;
pub mod metrics;
pub mod rules;
pub mod server;
pub mod service;
pub mod store;
