//! `ipn-bridge ds24 …`: the Digistore24 API from the command line (`call`, `buy-url`,
//! `setup-ipn`, `audit`). Every command uses [`crate::ds24`]; the key is read from
//! `[source.NAME] api_key` and never printed.
//!
//! Decisions:
//! - The source is `--source NAME`, else the only source with an `api_key`.
//! - Errors: exit 1 with `Digistore24 error <code> (<kind>): <message>` on stderr, or with
//!   `--json` a `{"error": {"code", "kind", "message"}}` object on stdout.
//! - `setup-ipn` names the connection `ipn-bridge <source>` with the stable `domain_id`
//!   `ipn-bridge-<source>` ([`crate::ds24::ipn_setup::domain_id`]): running it again updates
//!   the same connection. It sends the source's first passphrase (the one signatures are
//!   made with after a rotation).
//! - `audit` exits 1 when any transaction is missing (so cron can mail it).

use std::collections::BTreeSet;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::ConfigArg;
use super::output::runtime;
use crate::config::{Config, ProductFilter, Source};
use crate::domain::OrderEvent;
use crate::ds24::buy_url::{self, BuyUrlRequest};
use crate::ds24::ipn_setup::{self, IpnSetup};
use crate::ds24::transactions::ago;
use crate::ds24::{Client, Ds24Error, Params};

#[derive(Debug, Args)]
pub struct Ds24Args {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The `[source.NAME]` whose api_key is used (default: the only one with a key).
    #[arg(long, global = true)]
    pub source: Option<String>,
    #[command(subcommand)]
    pub command: Ds24Command,
}

#[derive(Debug, Subcommand)]
pub enum Ds24Command {
    /// Call any API function; prints its `data` as JSON (exit 1 with Digistore24's code and
    /// message on error). Nested parameters in bracket form: search[role]=vendor.
    ///
    /// Example: ipn-bridge ds24 call listPurchases from=-7d 'search[role]=vendor'
    Call {
        /// The function, e.g. getUserInfo (case-sensitive).
        function: String,
        /// Parameters NAME=VALUE.
        #[arg(value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// Print {"data": …} or {"error": …}.
        #[arg(long)]
        json: bool,
    },
    /// Create a personalised order link (createBuyUrl; needs a full-access key).
    ///
    /// Example: ipn-bridge ds24 buy-url 512345 --buyer email=jane@example.com --buyer country=DE
    ///          --payment-plan first_amount=47.00 --payment-plan currency=EUR --addon product_id=7,first_amount=5.00
    BuyUrl(BuyUrlArgs),
    /// Register or update the IPN connection in Digistore24 (ipnSetup; needs a full-access
    /// key): URL {server.public_url}/ipn/{source}, the source's passphrase, the events the
    /// source's integrations handle.
    SetupIpn {
        /// `all` or a comma list of product ids (default: what the integrations take).
        #[arg(long)]
        products: Option<String>,
        /// Comma list of events (default: those in the integrations' [on] tables).
        #[arg(long)]
        events: Option<String>,
        /// `before_thankyou` (Digistore24's default) or `delayed`.
        #[arg(long, default_value = "before_thankyou")]
        timing: String,
        /// Show what would be sent; send nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List every payment, refund or chargeback Digistore24 has and ipn-bridge never
    /// received (listTransactions; a read-only key is enough). Exit 1 when any is missing.
    Audit {
        /// How far back, e.g. 7d, 36h.
        #[arg(long, default_value = "7d")]
        since: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct BuyUrlArgs {
    /// The Digistore24 product id.
    pub product_id: String,
    /// buyer[K]=V (email, first_name, last_name, country, readonly_keys, …).
    #[arg(long, value_name = "K=V")]
    pub buyer: Vec<String>,
    /// payment_plan[K]=V (first_amount, other_amounts, currency, number_of_installments, …).
    #[arg(long, value_name = "K=V")]
    pub payment_plan: Vec<String>,
    /// tracking[K]=V (custom, affiliate, campaignkey, utm_source, …).
    #[arg(long, value_name = "K=V")]
    pub tracking: Vec<String>,
    /// urls[K]=V (thankyou_url, fallback_url, upgrade_error_url; https only).
    #[arg(long, value_name = "K=V")]
    pub url: Vec<String>,
    /// placeholders[K]=V.
    #[arg(long, value_name = "K=V")]
    pub placeholder: Vec<String>,
    /// settings[K]=V (orderform_id, img, voucher_code, pay_methods, force_rebilling, …).
    #[arg(long, value_name = "K=V")]
    pub setting: Vec<String>,
    /// One add-on: K=V,K=V (product_id required); repeat per add-on, numbered from 0.
    #[arg(long, value_name = "K=V,K=V")]
    pub addon: Vec<String>,
    /// forever, 24h, 7d, 2026-12-31, 2026-12-31 23:59:59 (default 24h).
    #[arg(long)]
    pub valid_until: Option<String>,
    /// Print {id, url, valid_until, upgrade_status}.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Ds24Args) -> anyhow::Result<ExitCode> {
    let config = super::load_config(&args.config.config)?;
    let source = pick_source(&config, args.source.as_deref())?;
    let rt = runtime()?;
    match args.command {
        Ds24Command::Call {
            function,
            params,
            json,
        } => {
            let params = Params(
                params
                    .iter()
                    .map(|p| split_pair(p, "parameter"))
                    .collect::<anyhow::Result<_>>()?,
            );
            let client = client(source)?;
            match rt.block_on(client.call(&function, &params)) {
                Ok(data) => {
                    let out = if json { json!({ "data": data }) } else { data };
                    println!("{}", serde_json::to_string_pretty(&out)?);
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Ok(fail(&e, json)),
            }
        }
        Ds24Command::BuyUrl(a) => buy(&rt, source, a),
        Ds24Command::SetupIpn {
            products,
            events,
            timing,
            dry_run,
        } => setup(
            &rt,
            &config,
            source,
            products.as_deref(),
            events.as_deref(),
            &timing,
            dry_run,
        ),
        Ds24Command::Audit { since, json } => audit(&rt, &config, source, &since, json),
    }
}

fn pick_source<'a>(config: &'a Config, name: Option<&str>) -> anyhow::Result<&'a Source> {
    let source = match name {
        Some(name) => config
            .sources
            .get(name)
            .with_context(|| format!("there is no [source.{name}]"))?,
        None => {
            let keyed: Vec<&Source> = config
                .sources
                .values()
                .filter(|s| s.api_key.is_some())
                .collect();
            match keyed.as_slice() {
                [one] => *one,
                [] => anyhow::bail!(
                    "no [source.NAME] has an api_key (add api_key = {{ env = \"DS24_API_KEY\" }})"
                ),
                _ => anyhow::bail!("several sources have an api_key: name one with --source"),
            }
        }
    };
    if source.api_key.is_none() {
        anyhow::bail!("[source.{}] has no api_key", source.name);
    }
    Ok(source)
}

fn client(source: &Source) -> anyhow::Result<Client> {
    match Client::for_source(source) {
        Some(client) => Ok(client?),
        None => anyhow::bail!("[source.{}] has no api_key", source.name),
    }
}

fn split_pair(text: &str, what: &str) -> anyhow::Result<(String, String)> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => anyhow::bail!("{what} `{text}` is not NAME=VALUE"),
    }
}

fn pairs(list: &[String], option: &str) -> anyhow::Result<Vec<(String, String)>> {
    list.iter().map(|p| split_pair(p, option)).collect()
}

/// Prints a Digistore24 error and returns exit code 1.
fn fail(e: &Ds24Error, json: bool) -> ExitCode {
    if json {
        let error = match e {
            Ds24Error::Api {
                kind,
                code,
                message,
            } => json!({"code": code, "kind": kind.describe(), "message": message}),
            other => {
                json!({"code": Value::Null, "kind": "transport", "message": other.to_string()})
            }
        };
        println!("{}", json!({ "error": error }));
    } else {
        eprintln!("error: {e}");
    }
    ExitCode::from(1)
}

fn buy(rt: &tokio::runtime::Runtime, source: &Source, a: BuyUrlArgs) -> anyhow::Result<ExitCode> {
    let request = BuyUrlRequest {
        product_id: a.product_id,
        buyer: pairs(&a.buyer, "--buyer")?,
        payment_plan: pairs(&a.payment_plan, "--payment-plan")?,
        tracking: pairs(&a.tracking, "--tracking")?,
        urls: pairs(&a.url, "--url")?,
        placeholders: pairs(&a.placeholder, "--placeholder")?,
        settings: pairs(&a.setting, "--setting")?,
        addons: a
            .addon
            .iter()
            .map(|addon| {
                addon
                    .split(',')
                    .map(|p| split_pair(p, "--addon"))
                    .collect::<anyhow::Result<Vec<_>>>()
            })
            .collect::<anyhow::Result<_>>()?,
        valid_until: a.valid_until,
    };
    let params = request.params().map_err(|e| anyhow::anyhow!("{e}"))?;
    let client = client(source)?;
    match rt.block_on(buy_url::create(&client, &params)) {
        Ok(url) => {
            if a.json {
                println!("{}", serde_json::to_string_pretty(&url)?);
            } else {
                println!("{}", url.url);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(fail(&e, a.json)),
    }
}

fn setup(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    source: &Source,
    products: Option<&str>,
    events: Option<&str>,
    timing: &str,
    dry_run: bool,
) -> anyhow::Result<ExitCode> {
    let Some(public_url) = &config.server.public_url else {
        anyhow::bail!(
            "[server] public_url is not set: Digistore24 needs the public https:// address that reaches this daemon"
        );
    };
    if !matches!(timing, "before_thankyou" | "delayed") {
        anyhow::bail!("--timing must be before_thankyou or delayed, not `{timing}`");
    }
    let integrations: Vec<_> = config
        .integrations
        .values()
        .filter(|i| i.source == source.name && i.active)
        .collect();
    let transactions: Vec<String> = match events {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .map(|e| {
                OrderEvent::from_config_name(e)
                    .map(|e| e.config_name().to_owned())
                    .with_context(|| format!("--events: unknown event `{e}`"))
            })
            .collect::<anyhow::Result<_>>()?,
        None => {
            let set: BTreeSet<&str> = integrations
                .iter()
                .flat_map(|i| i.on.keys().map(|e| e.config_name()))
                .collect();
            set.into_iter().map(str::to_owned).collect()
        }
    };
    if transactions.is_empty() {
        anyhow::bail!(
            "no integration of [source.{}] handles any event; give --events",
            source.name
        );
    }
    let product_ids = match products {
        Some("all") => "all".to_owned(),
        Some(list) => {
            for id in list.split(',') {
                if id.trim().parse::<u64>().is_err() {
                    anyhow::bail!("--products: `{id}` is not a product id (or say `all`)");
                }
            }
            list.replace(' ', "")
        }
        None => {
            let mut ids = BTreeSet::new();
            let mut all = integrations.is_empty();
            for i in &integrations {
                match &i.products {
                    ProductFilter::All => all = true,
                    ProductFilter::List(list) => ids.extend(list.iter().copied()),
                }
            }
            if all {
                "all".to_owned()
            } else {
                ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
            }
        }
    };
    let request = IpnSetup {
        ipn_url: format!("{}/ipn/{}", public_url.trim_end_matches('/'), source.name),
        name: format!("ipn-bridge {}", source.name),
        product_ids,
        domain_id: ipn_setup::domain_id(&source.name),
        transactions: transactions.join(","),
        timing: timing.to_owned(),
    };
    let describe = format!(
        "IPN connection `{}` → {}\n  products: {}\n  events: {}\n  timing: {}",
        request.domain_id,
        request.ipn_url,
        request.product_ids,
        request.transactions,
        request.timing
    );
    if dry_run {
        println!(
            "would register {describe}\n  passphrase: the first of [source.{}] (not shown)",
            source.name
        );
        return Ok(ExitCode::SUCCESS);
    }
    let Some(passphrase) = source.passphrases.first() else {
        anyhow::bail!("[source.{}] has no passphrase", source.name);
    };
    let client = client(source)?;
    match rt.block_on(ipn_setup::setup(&client, &request, passphrase)) {
        Ok(result) => {
            let verb = if result.created {
                "created"
            } else if result.updated {
                "updated"
            } else {
                "unchanged"
            };
            println!("{verb} {describe}");
            if let Some(id) = result.ipn_config_id {
                println!("  ipn_config_id: {id}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(fail(&e, false)),
    }
}

fn audit(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    source: &Source,
    since: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let since =
        crate::config::parse_duration(since).map_err(|e| anyhow::anyhow!("--since: {e}"))?;
    let client = client(source)?;
    let store = rt.block_on(super::output::open_existing_store(config))?;
    let result = rt.block_on(crate::ds24::audit::audit(
        &client,
        &store,
        &source.name,
        &ago(since),
        "now",
    ));
    let report = match result {
        Ok(report) => report,
        Err(crate::ds24::audit::AuditError::Api(e)) => return Ok(fail(&e, json)),
        Err(e) => return Err(e.into()),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if report.missing.is_empty() {
        println!(
            "all {} transactions of the last {} have an IPN",
            report.checked,
            ago(since).trim_start_matches('-')
        );
    } else {
        println!(
            "{} of {} transactions never arrived as an IPN:",
            report.missing.len(),
            report.checked
        );
        println!(
            "{:<12} {:<12} {:<11} {:>12} {:<20} BUYER",
            "ORDER", "TRANSACTION", "TYPE", "AMOUNT", "DATE"
        );
        for t in &report.missing {
            println!(
                "{:<12} {:<12} {:<11} {:>12} {:<20} {}",
                t.order_id,
                t.transaction_id,
                t.kind,
                format!("{} {}", t.amount, t.currency),
                t.date,
                t.buyer
            );
        }
    }
    Ok(if report.missing.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
