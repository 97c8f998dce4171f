//! `ipn-bridge test-connection`: proves, before the first real order, that every outside
//! connection of each integration works, and says what to fix when one does not. This is the
//! *healthcheck* of a vector sink, for all of ipn-bridge's ends at once.
//!
//! Checks, one verdict line each, per integration (all, or the names given):
//!
//! | check | how | fails when |
//! | --- | --- | --- |
//! | `konnektive login` | `campaign/query` for the campaign (reference §3.6) | bad login or password, Konnektive unreachable |
//! | `ip allow-list` | same call | `IP must be whitelisted - <ip>` (the IP to add is shown) |
//! | `campaign` | same call; shows the currency the campaign books in (or that the answer names none) | the campaign does not exist, or the API user may not query campaigns |
//! | `product map` | compares every `product_map` value, `"*"` included, with the campaign's products | any is missing (each is named) |
//! | `smtp` | lettre's `test_connection` against `[alerts].smtp_url`: connect, TLS, login, NOOP | no connection, TLS or login refused |
//! | `test e-mail` | only with `--send-test-email`: one mail to `[alerts].to` | the server refuses it |
//! | `ds24 api key`, `ds24 products`, `ds24 ipn connection` | for a source with an `api_key`: see `ds24_checks` | the key is refused; a product id is not in the account; the IPN connection points elsewhere |
//! | `webhook` | a webhook target only: a signed `connection_test` event POSTed to its `url` | the answer is not 2xx (status and first bytes shown) |
//! | `ipn endpoint` | a signed `connection_test` IPN POSTed to `{public_url}/ipn/<source>`, else `http://<listen>/ipn/<source>` | the answer is not `200 OK` |
//!
//! Verdicts are `ok`, `FAIL` or `skip` (not checked: a check it depends on failed, or there
//! is nothing to check, e.g. no `[alerts]`). Exit 0 when nothing failed, 1 when a check failed
//! or the configuration is invalid, 2 for an unknown integration name. `--json` prints one
//! array of `{"integration", "check", "ok", "detail"}` objects in the order of the human
//! output; `ok` is `true`, `false`, or `null` for a skipped check.
//!
//! Decisions:
//! * **One `campaign/query` per target and campaign**, shared by the integrations that use
//!   them; once a target failed target-wide (bad login, IP refused, unreachable) its other
//!   campaigns are not asked: repeated bad logins can lock the API user (reference §2).
//! * **SMTP and the IPN endpoint are checked once** (per configuration and per source) and the
//!   verdict is shown on every integration that depends on them, so each integration's lines
//!   are complete on their own.
//! * **No redirects for the IPN POST**: a redirected POST becomes a GET, which the daemon
//!   answers `OK` without checking anything; a 3xx is a failure that names the new location.
//! * **The test IPN is always the same** (same fields, same signature), so the daemon stores
//!   it once, however often this command runs.
//! * **Secrets**: every detail is scrubbed of every configured secret (raw and form-encoded)
//!   before it is printed, whatever produced it.
//!
//! * **Targets are asked through the connector seam** (`Connector::check_campaign`, the same
//!   `campaign/query` the dispatcher's probe sends, and `Connector::send_connection_test`),
//!   so this command builds no Konnektive or webhook client of its own; a connector that
//!   cannot be built is reported in the words used before (`cannot build the HTTP client`).
//!
//! This is CLI code (`anyhow` allowed); it uses the connector's `check_campaign` and
//! `send_connection_test` and the ipn module's `sign`, and never touches the store.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;
use serde::Serialize;

use crate::config::{
    self, Alerts, Config, Integration, Server, Source, Target, TargetKind, Webhook,
};
use crate::connectors::{Campaign, Connector, ConnectorError};
use crate::domain::{AttemptReport, Outcome};
use crate::ipn::{self, KeyCase};

/// Timeout of the SMTP check (connect, TLS, login, NOOP) and of the test mail.
const SMTP_TIMEOUT_SECS: u64 = 15;
/// Timeout of the IPN endpoint POST.
const IPN_TIMEOUT_SECS: u64 = 15;
/// At most this many campaign product ids are listed in a detail.
const LIST_MAX: usize = 20;
/// What a secret is replaced with in a detail.
const REDACTED: &str = "[redacted]";

/// Names of the checks, in output order.
pub const CHECK_LOGIN: &str = "konnektive login";
pub const CHECK_ALLOW_LIST: &str = "ip allow-list";
pub const CHECK_CAMPAIGN: &str = "campaign";
pub const CHECK_PRODUCT_MAP: &str = "product map";
pub const CHECK_SMTP: &str = "smtp";
pub const CHECK_TEST_EMAIL: &str = "test e-mail";
pub const CHECK_IPN_ENDPOINT: &str = "ipn endpoint";
/// The Digistore24 checks of a source with an `api_key` (see `ds24_checks`).
pub const CHECK_DS24_KEY: &str = "ds24 api key";
pub const CHECK_DS24_PRODUCTS: &str = "ds24 products";
pub const CHECK_DS24_IPN: &str = "ds24 ipn connection";
pub const CHECK_WEBHOOK: &str = "webhook";

/// What the command was asked to do.
#[derive(Debug, Clone)]
pub struct Options<'a> {
    pub config: &'a Path,
    /// Integrations to test; empty = all.
    pub names: &'a [String],
    pub send_test_email: bool,
    pub json: bool,
}

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Fail,
    /// Not checked (a check it depends on failed, or there is nothing to check).
    Skip,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Fail => "FAIL",
            Verdict::Skip => "skip",
        }
    }
}

/// A verdict and the sentence that explains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub verdict: Verdict,
    pub detail: String,
}

impl Finding {
    fn ok(detail: impl Into<String>) -> Self {
        Finding {
            verdict: Verdict::Ok,
            detail: detail.into(),
        }
    }
    fn fail(detail: impl Into<String>) -> Self {
        Finding {
            verdict: Verdict::Fail,
            detail: detail.into(),
        }
    }
    fn skip(detail: impl Into<String>) -> Self {
        Finding {
            verdict: Verdict::Skip,
            detail: detail.into(),
        }
    }
}

/// One output line (and one `--json` object).
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    pub integration: String,
    pub check: &'static str,
    /// `None` (JSON `null`) for a skipped check.
    pub ok: Option<bool>,
    pub detail: String,
    #[serde(skip)]
    pub verdict: Verdict,
}

/// `ipn-bridge test-connection`.
pub fn run(opts: &Options<'_>) -> anyhow::Result<ExitCode> {
    let loaded = match config::load(opts.config) {
        Ok(loaded) => loaded,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{}: {} error(s); fix them first (ipn-bridge check-config shows the same)",
                opts.config.display(),
                errors.errors.len()
            );
            return Ok(ExitCode::from(1));
        }
    };
    for warning in &loaded.warnings {
        eprintln!("{warning}");
    }
    let config = loaded.config;
    let selected: Vec<&Integration> = if opts.names.is_empty() {
        config.integrations.values().collect()
    } else {
        let unknown: Vec<&str> = opts
            .names
            .iter()
            .filter(|n| !config.integrations.contains_key(n.as_str()))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            let known: Vec<&str> = config.integrations.keys().map(String::as_str).collect();
            eprintln!(
                "unknown integration(s): {}; configured: {}",
                unknown.join(", "),
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            );
            return Ok(ExitCode::from(2));
        }
        config
            .integrations
            .values()
            .filter(|i| opts.names.contains(&i.name))
            .collect()
    };
    if selected.is_empty() {
        eprintln!(
            "{}: no integration is configured; nothing to test",
            opts.config.display()
        );
        return Ok(ExitCode::from(1));
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut lines = runtime.block_on(check_all(&config, &selected, opts.send_test_email));
    let secrets = secrets_of(&config);
    for line in &mut lines {
        line.detail = scrub(&line.detail, &secrets);
    }

    let mut out = String::new();
    if opts.json {
        out.push_str(&serde_json::to_string_pretty(&lines)?);
        out.push('\n');
    } else {
        out.push_str(&render_table(&lines));
    }
    print!("{out}");
    let failed = lines.iter().filter(|l| l.verdict == Verdict::Fail).count();
    if !opts.json {
        if failed == 0 {
            println!("all checks passed");
        } else {
            println!("{failed} check(s) failed");
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Runs every check of every selected integration; each shared check runs once.
async fn check_all(config: &Config, selected: &[&Integration], send_test_email: bool) -> Vec<Line> {
    let mut konnektive = KonnektiveChecks::default();
    let smtp = match &config.alerts {
        Some(alerts) => Some(check_smtp(alerts, send_test_email).await),
        None => None,
    };
    let mut endpoints: BTreeMap<&str, Finding> = BTreeMap::new();
    let mut ds24: BTreeMap<&str, Option<super::ds24_checks::SourceAnswers>> = BTreeMap::new();
    let mut lines = Vec::new();
    for integration in selected {
        let name = integration.name.as_str();
        let mut push = |check: &'static str, finding: Finding| {
            lines.push(Line {
                integration: name.to_owned(),
                check,
                ok: match finding.verdict {
                    Verdict::Ok => Some(true),
                    Verdict::Fail => Some(false),
                    Verdict::Skip => None,
                },
                detail: finding.detail,
                verdict: finding.verdict,
            });
        };

        if let Some(target) = config.targets.get(&integration.target)
            && let TargetKind::Webhook(hook) = &target.kind
        {
            push(
                CHECK_WEBHOOK,
                check_webhook(config, target, hook, name).await,
            );
        } else {
            let crm = match config.targets.get(&integration.target) {
                Some(target) => konnektive.check(config, target, integration).await,
                None => {
                    let missing = Finding::fail(format!("no target `{}`", integration.target));
                    CrmFindings {
                        login: missing,
                        allow_list: Finding::skip("not checked"),
                        campaign: Finding::skip("not checked"),
                        product_map: Finding::skip("not checked"),
                    }
                }
            };
            push(CHECK_LOGIN, crm.login);
            push(CHECK_ALLOW_LIST, crm.allow_list);
            push(CHECK_CAMPAIGN, crm.campaign);
            push(CHECK_PRODUCT_MAP, crm.product_map);
        }

        match &smtp {
            Some(smtp) => {
                push(CHECK_SMTP, smtp.connection.clone());
                if let Some(mail) = &smtp.test_mail {
                    push(CHECK_TEST_EMAIL, mail.clone());
                }
            }
            None => {
                push(
                    CHECK_SMTP,
                    Finding::skip("no [alerts] section: failures are only logged, never mailed"),
                );
                if send_test_email {
                    push(
                        CHECK_TEST_EMAIL,
                        Finding::skip("no [alerts] section: nowhere to send it"),
                    );
                }
            }
        }

        let finding = match endpoints.get(integration.source.as_str()) {
            Some(f) => f.clone(),
            None => {
                let f = match config.sources.get(&integration.source) {
                    Some(source) => check_ipn_endpoint(&config.server, source).await,
                    None => Finding::fail(format!("no source `{}`", integration.source)),
                };
                endpoints.insert(integration.source.as_str(), f.clone());
                f
            }
        };
        push(CHECK_IPN_ENDPOINT, finding);

        if let Some(source) = config.sources.get(&integration.source) {
            if !ds24.contains_key(source.name.as_str()) {
                let answers = super::ds24_checks::ask(&config.server, source).await;
                ds24.insert(source.name.as_str(), answers);
            }
            if let Some(Some(answers)) = ds24.get(source.name.as_str()) {
                let products = super::ds24_checks::products_check(integration, answers);
                for (check, (ok, detail)) in [
                    (CHECK_DS24_KEY, answers.key.clone()),
                    (CHECK_DS24_PRODUCTS, products),
                    (CHECK_DS24_IPN, answers.ipn.clone()),
                ] {
                    let finding = match ok {
                        Some(true) => Finding::ok(detail),
                        Some(false) => Finding::fail(detail),
                        None => Finding::skip(detail),
                    };
                    push(check, finding);
                }
            }
        }
    }
    lines
}

/// Posts a signed `connection_test` event to a webhook target and judges the answer as a
/// delivery would be judged (2xx ok). Nothing is stored; the event is never a job.
async fn check_webhook(
    config: &Config,
    target: &Target,
    hook: &Webhook,
    integration: &str,
) -> Finding {
    let connector = match Connector::new(config, target) {
        Ok(connector) => connector,
        Err(e) => return Finding::fail(cannot_build(&e)),
    };
    let now = crate::clock::Clock::now_ms(&crate::clock::SystemClock);
    let Some(report) = connector.send_connection_test(integration, now).await else {
        return Finding::fail(format!("target `{}` is not a webhook", target.name));
    };
    let status = report
        .http_status
        .map_or_else(|| "no answer".to_owned(), |s| format!("HTTP {s}"));
    match &report.outcome {
        Outcome::Delivered(_) => Finding::ok(format!(
            "{} answered {status} to a signed connection_test event",
            hook.url
        )),
        other => Finding::fail(format!("{}: {}", hook.url, other.reason())),
    }
}

// ---------------------------------------------------------------------------------------
// Konnektive
// ---------------------------------------------------------------------------------------

/// What `campaign/query` told: the campaign's product ids and currency, or the failed
/// attempt.
pub type CampaignAnswer = Result<Campaign, Box<AttemptReport>>;

/// The four Konnektive verdicts of one integration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrmFindings {
    pub login: Finding,
    pub allow_list: Finding,
    pub campaign: Finding,
    pub product_map: Finding,
}

/// Answers of `campaign/query`, per target and campaign, and the target-wide failures.
#[derive(Default)]
struct KonnektiveChecks {
    answers: HashMap<(String, u64), CampaignAnswer>,
    target_down: HashMap<String, Box<AttemptReport>>,
}

impl KonnektiveChecks {
    async fn check(
        &mut self,
        config: &Config,
        target: &Target,
        integration: &Integration,
    ) -> CrmFindings {
        let key = (target.name.clone(), integration.campaign_id);
        let answer = match (self.answers.get(&key), self.target_down.get(&target.name)) {
            (Some(answer), _) => answer.clone(),
            (None, Some(down)) => Err(down.clone()),
            (None, None) => {
                let connector = Connector::new(config, target);
                let answer = match &connector {
                    Ok(connector) => {
                        match connector.check_campaign(integration.campaign_id).await {
                            Some(answer) => answer.map_err(Box::new),
                            None => {
                                return CrmFindings {
                                    login: Finding::fail(format!(
                                        "target `{}` has no campaigns",
                                        target.name
                                    )),
                                    allow_list: Finding::skip("not checked"),
                                    campaign: Finding::skip("not checked"),
                                    product_map: Finding::skip("not checked"),
                                };
                            }
                        }
                    }
                    Err(e) => {
                        return CrmFindings {
                            login: Finding::fail(cannot_build(e)),
                            allow_list: Finding::skip("not checked"),
                            campaign: Finding::skip("not checked"),
                            product_map: Finding::skip("not checked"),
                        };
                    }
                };
                if let Err(report) = &answer
                    && target_wide(report)
                {
                    self.target_down.insert(target.name.clone(), report.clone());
                }
                self.answers.insert(key, answer.clone());
                answer
            }
        };
        judge_campaign(&answer, target, integration)
    }
}

/// The finding when a target's connector cannot be built (its HTTP client), worded as
/// before the checks went through the connector seam.
fn cannot_build(e: &ConnectorError) -> String {
    match e {
        ConnectorError::Http { source, .. } => format!("cannot build the HTTP client: {source}"),
    }
}

/// Whether a failed `campaign/query` says nothing about the campaign, only about the target.
fn target_wide(report: &AttemptReport) -> bool {
    !matches!(
        classify_failure(report),
        Failure::Permission | Failure::NoCampaign
    )
}

/// What a failed `campaign/query` means for the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    IpRefused,
    BadLogin,
    Permission,
    NoCampaign,
    /// Unreachable, HTTP error, an answer that is not Konnektive's, an unrecognised ERROR.
    Other,
}

fn classify_failure(report: &AttemptReport) -> Failure {
    let reason = report.outcome.reason().to_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| reason.contains(w));
    match &report.outcome {
        Outcome::TargetDown { .. } if has(&["whitelist", "ip address"]) => Failure::IpRefused,
        Outcome::TargetDown { .. } if has(&["permission", "not allowed", "access denied"]) => {
            Failure::Permission
        }
        Outcome::TargetDown { .. }
            if report.http_status == Some(200) && has(&["login", "password", "credential"]) =>
        {
            Failure::BadLogin
        }
        Outcome::Permanent { .. } if report.http_status == Some(200) => Failure::NoCampaign,
        _ => Failure::Other,
    }
}

/// The verdicts for one integration from the answer of `campaign/query` (pure).
pub fn judge_campaign(
    answer: &CampaignAnswer,
    target: &Target,
    integration: &Integration,
) -> CrmFindings {
    let user = &target.login_id;
    let campaign_id = integration.campaign_id;
    let (products, currency) = match answer {
        Ok(campaign) => (&campaign.products, campaign.currency.as_deref()),
        Err(report) => {
            let reason = report.outcome.reason();
            let (login, allow_list, campaign) = match classify_failure(report) {
                Failure::IpRefused => (
                    Finding::skip("not known: Konnektive refused this server's IP"),
                    Finding::fail(ip_refused_detail(reason, user)),
                    Finding::skip("not checked"),
                ),
                Failure::BadLogin => (
                    Finding::fail(format!(
                        "Konnektive refused the login of API user \"{user}\" (wrong login_id or \
                         password of [target.{}]): {reason}",
                        target.name
                    )),
                    Finding::skip("not checked"),
                    Finding::skip("not checked"),
                ),
                Failure::Permission => (
                    Finding::ok(format!("API user \"{user}\" at {}", target.base_url)),
                    Finding::ok("this server's IP is accepted"),
                    Finding::fail(format!(
                        "API user \"{user}\" may not query campaigns: {reason}; allow \"Query \
                         Campaigns\" (and the endpoints listed in the README) under Allowed API \
                         Endpoints"
                    )),
                ),
                Failure::NoCampaign => (
                    Finding::ok(format!("API user \"{user}\" at {}", target.base_url)),
                    Finding::ok("this server's IP is accepted"),
                    Finding::fail(format!(
                        "campaign {campaign_id} was not found: {reason}; check campaign_id of \
                         [integration.{}]",
                        integration.name
                    )),
                ),
                Failure::Other => (
                    Finding::fail(format!(
                        "no usable answer from Konnektive at {} ({}): {reason}",
                        target.base_url, report.endpoint
                    )),
                    Finding::skip("not checked"),
                    Finding::skip("not checked"),
                ),
            };
            return CrmFindings {
                login,
                allow_list,
                campaign,
                product_map: Finding::skip("not checked: the campaign's products are unknown"),
            };
        }
    };
    CrmFindings {
        login: Finding::ok(format!("API user \"{user}\" at {}", target.base_url)),
        allow_list: Finding::ok("this server's IP is accepted"),
        campaign: Finding::ok(format!(
            "campaign {campaign_id} exists, {}; its products: {}",
            currency_detail(currency),
            list_ids(products)
        )),
        product_map: judge_product_map(integration, products),
    }
}

/// The campaign's currency as the `campaign` verdict shows it.
fn currency_detail(currency: Option<&str>) -> String {
    match currency {
        Some(c) => format!("books {c}"),
        None => "currency not named in Konnektive's answer (orders are imported without the \
                 currency check)"
            .to_owned(),
    }
}

/// `IP must be whitelisted - 203.0.113.7` → the sentence that says which IP to add.
fn ip_refused_detail(reason: &str, user: &str) -> String {
    match refused_ip(reason) {
        Some(ip) => format!(
            "Konnektive answered \"{reason}\": add {ip} to the IP allow-list of API user \
             \"{user}\" (Konnektive: Admin → Users)"
        ),
        None => format!(
            "Konnektive answered \"{reason}\": add this server's egress IP to the IP allow-list \
             of API user \"{user}\" (Konnektive: Admin → Users)"
        ),
    }
}

/// The IP named in Konnektive's allow-list refusal, if it names a valid one.
fn refused_ip(reason: &str) -> Option<IpAddr> {
    let (_, rest) = reason.split_once(" - ")?;
    let token = rest
        .split_whitespace()
        .next()?
        .trim_matches(|c: char| !(c.is_ascii_hexdigit() || c == '.' || c == ':'));
    // A sentence may end right after the IP.
    token
        .parse()
        .ok()
        .or_else(|| token.trim_end_matches('.').parse().ok())
}

/// Every `product_map` value (entries and `"*"`) must be one of the campaign's products.
pub fn judge_product_map(integration: &Integration, campaign_products: &[u64]) -> Finding {
    let map = &integration.product_map;
    let mut wanted: Vec<(u64, String)> = map
        .entries
        .iter()
        .map(|(ds24, crm)| (*crm, format!("Digistore24 product {ds24}")))
        .collect();
    if let Some(fallback) = map.fallback {
        wanted.push((fallback, "\"*\"".to_owned()));
    }
    if wanted.is_empty() {
        return Finding::skip("product_map is empty: every order is skipped as unmapped");
    }
    let missing: Vec<String> = wanted
        .iter()
        .filter(|(crm, _)| !campaign_products.contains(crm))
        .map(|(crm, from)| format!("{crm} (for {from})"))
        .collect();
    if missing.is_empty() {
        let mut ids: Vec<u64> = wanted.iter().map(|(crm, _)| *crm).collect();
        ids.sort_unstable();
        ids.dedup();
        Finding::ok(format!(
            "all {} mapped campaign products exist in campaign {}: {}",
            ids.len(),
            integration.campaign_id,
            list_ids(&ids)
        ))
    } else {
        Finding::fail(format!(
            "not products of campaign {}: {}; the campaign has {}",
            integration.campaign_id,
            missing.join(", "),
            list_ids(campaign_products)
        ))
    }
}

fn list_ids(ids: &[u64]) -> String {
    if ids.is_empty() {
        return "none".to_owned();
    }
    let mut s = ids
        .iter()
        .take(LIST_MAX)
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > LIST_MAX {
        let _ = write!(s, " and {} more", ids.len() - LIST_MAX);
    }
    s
}

// ---------------------------------------------------------------------------------------
// SMTP
// ---------------------------------------------------------------------------------------

struct SmtpFindings {
    connection: Finding,
    /// Only with `--send-test-email`.
    test_mail: Option<Finding>,
}

async fn check_smtp(alerts: &Alerts, send_test_email: bool) -> SmtpFindings {
    let server = smtp_authority(&alerts.smtp_url);
    let transport = match smtp_transport(alerts) {
        Ok(t) => t,
        Err(e) => {
            return SmtpFindings {
                connection: Finding::fail(format!("smtp_url cannot be used: {}", error_chain(&e))),
                test_mail: send_test_email.then(|| Finding::skip("not sent: smtp failed")),
            };
        }
    };
    let login = match &alerts.smtp_username {
        Some(user) => format!("login as {user} accepted"),
        None => "no login configured".to_owned(),
    };
    let connection = match transport.test_connection().await {
        Ok(true) => Finding::ok(format!("{server}: connected; {login}")),
        Ok(false) => Finding::fail(format!(
            "{server}: connected, but the server did not answer NOOP"
        )),
        Err(e) => Finding::fail(smtp_failure(&server, &e)),
    };
    let test_mail = if !send_test_email {
        None
    } else if connection.verdict != Verdict::Ok {
        Some(Finding::skip("not sent: smtp failed"))
    } else {
        Some(send_test_mail(&transport, alerts, &server).await)
    };
    SmtpFindings {
        connection,
        test_mail,
    }
}

fn smtp_transport(
    alerts: &Alerts,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, lettre::transport::smtp::Error> {
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(&alerts.smtp_url)?
        .timeout(Some(Duration::from_secs(SMTP_TIMEOUT_SECS)));
    if let (Some(user), Some(password)) = (&alerts.smtp_username, &alerts.smtp_password) {
        builder = builder.credentials(Credentials::new(
            user.clone(),
            password.expose_secret().to_owned(),
        ));
    }
    Ok(builder.build())
}

/// `host:port` of an `smtp://` / `smtps://` URL (the URL has no credentials: validated).
fn smtp_authority(url: &str) -> String {
    let rest = url
        .strip_prefix("smtps://")
        .or_else(|| url.strip_prefix("smtp://"))
        .unwrap_or(url);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    format!("SMTP server {authority}")
}

fn smtp_failure(server: &str, e: &lettre::transport::smtp::Error) -> String {
    let chain = error_chain(e);
    let code = e.status().map(|c| c.to_string());
    if e.is_timeout() {
        format!("{server}: no answer within {SMTP_TIMEOUT_SECS}s: {chain}")
    } else if code
        .as_deref()
        .is_some_and(|c| c.starts_with("535") || c.starts_with("534"))
    {
        format!("{server}: login refused (check smtp_username and smtp_password): {chain}")
    } else if e.is_tls() {
        format!("{server}: TLS failed (check the port and ?tls= of smtp_url): {chain}")
    } else if e.is_response() || e.is_permanent() || e.is_transient() {
        format!("{server}: the server refused: {chain}")
    } else {
        format!("{server}: cannot connect: {chain}")
    }
}

async fn send_test_mail(
    transport: &AsyncSmtpTransport<Tokio1Executor>,
    alerts: &Alerts,
    server: &str,
) -> Finding {
    let message = match test_message(alerts) {
        Ok(m) => m,
        Err(detail) => return Finding::fail(detail),
    };
    match transport.send(message).await {
        Ok(_) => Finding::ok(format!("sent to {}", alerts.to.join(", "))),
        Err(e) => Finding::fail(format!(
            "{server} did not accept the test e-mail: {}",
            error_chain(&e)
        )),
    }
}

fn test_message(alerts: &Alerts) -> Result<Message, String> {
    let from: Mailbox = alerts
        .from
        .parse()
        .map_err(|e| format!("[alerts].from is not an address: {e}"))?;
    let mut builder = Message::builder()
        .from(from)
        .subject("ipn-bridge: test e-mail")
        .header(lettre::message::header::ContentType::TEXT_PLAIN);
    for to in &alerts.to {
        let mailbox: Mailbox = to
            .parse()
            .map_err(|e| format!("[alerts].to `{to}` is not an address: {e}"))?;
        builder = builder.to(mailbox);
    }
    builder
        .body(
            "This is a test e-mail from `ipn-bridge test-connection --send-test-email`.\n\
             Alerts about failed deliveries to Konnektive will arrive the same way.\n"
                .to_owned(),
        )
        .map_err(|e| format!("cannot build the test e-mail: {e}"))
}

// ---------------------------------------------------------------------------------------
// IPN endpoint
// ---------------------------------------------------------------------------------------

/// The URL Digistore24 would call for `source`: `{public_url}/ipn/<source>`, else the local
/// listen address (a wildcard address is reached over loopback).
pub fn ipn_url(server: &Server, source: &str) -> String {
    match &server.public_url {
        Some(url) => format!("{}/ipn/{source}", url.trim_end_matches('/')),
        None => {
            let mut addr = server.listen;
            if addr.ip().is_unspecified() {
                let loopback = match addr.ip() {
                    IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
                };
                addr = SocketAddr::new(loopback, addr.port());
            }
            format!("http://{addr}/ipn/{source}")
        }
    }
}

/// The signed `connection_test` body for `source` (first passphrase, original-case keys).
pub fn connection_test_body(source: &Source) -> Option<Vec<u8>> {
    let passphrase = source.passphrases.first()?;
    let mut pairs: Vec<(String, String)> = [
        ("event", "connection_test"),
        ("api_mode", "live"),
        ("ipn_version", "1.6"),
        ("merchant_name", "ipn-bridge test-connection"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let signature = ipn::sign(&pairs, passphrase.expose_secret(), KeyCase::Original);
    pairs.push(("sha_sign".to_owned(), signature));
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &pairs {
        form.append_pair(k, v);
    }
    Some(form.finish().into_bytes())
}

async fn check_ipn_endpoint(server: &Server, source: &Source) -> Finding {
    let url = ipn_url(server, &source.name);
    let Some(body) = connection_test_body(source) else {
        return Finding::skip(format!("source `{}` has no passphrase", source.name));
    };
    let client = match reqwest::Client::builder()
        .tls_backend_rustls()
        .timeout(Duration::from_secs(IPN_TIMEOUT_SECS))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!(
            "ipn-bridge/",
            env!("CARGO_PKG_VERSION"),
            " test-connection"
        ))
        .build()
    {
        Ok(c) => c,
        Err(e) => return Finding::fail(format!("cannot build the HTTP client: {e}")),
    };
    let sent = client
        .post(&url)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded; charset=utf-8",
        )
        .body(body)
        .send()
        .await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) => {
            let hint = if server.public_url.is_none() {
                " (is the daemon running? set [server].public_url to test the public URL)"
            } else {
                " (is the daemon running, and the reverse proxy forwarding /ipn/?)"
            };
            return Finding::fail(format!("POST {url} failed{hint}: {}", error_chain(&e)));
        }
    };
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = resp.text().await.unwrap_or_default();
    let text = text.trim();
    let short: String = text.chars().take(200).collect();
    match status {
        200 if text == "OK" => Finding::ok(format!(
            "POST {url}: a signed connection_test was answered OK"
        )),
        200 => Finding::fail(format!(
            "POST {url} answered 200 but not OK: {short:?} (is something other than ipn-bridge answering?)"
        )),
        300..=399 => Finding::fail(format!(
            "POST {url} was redirected (HTTP {status}) to {}; Digistore24's POST would be lost: set public_url to the final URL",
            location.as_deref().unwrap_or("an unknown location")
        )),
        403 => Finding::fail(format!(
            "POST {url}: HTTP 403 {short:?}; the daemon's passphrase of source `{}` differs from this file's (reload the daemon?)",
            source.name
        )),
        404 => Finding::fail(format!(
            "POST {url}: HTTP 404; the daemon does not know source `{}` (reload it after adding the source) or the proxy routes elsewhere",
            source.name
        )),
        _ => Finding::fail(format!("POST {url}: HTTP {status} {short:?}")),
    }
}

// ---------------------------------------------------------------------------------------
// Output and secrets
// ---------------------------------------------------------------------------------------

/// Aligned lines: integration, check, verdict, detail.
pub fn render_table(lines: &[Line]) -> String {
    let name_w = lines
        .iter()
        .map(|l| l.integration.chars().count())
        .max()
        .unwrap_or(0);
    let check_w = lines.iter().map(|l| l.check.len()).max().unwrap_or(0);
    let mut out = String::new();
    for l in lines {
        let row = format!(
            "{:<name_w$}  {:<check_w$}  {:<4}  {}",
            l.integration,
            l.check,
            l.verdict.label(),
            l.detail
        );
        out.push_str(row.trim_end());
        out.push('\n');
    }
    out
}

/// Every secret of the configuration, exposed only to be scrubbed from output.
fn secrets_of(config: &Config) -> Vec<String> {
    let mut secrets: Vec<String> = Vec::new();
    for target in config.targets.values() {
        secrets.push(target.password.expose_secret().to_owned());
    }
    for source in config.sources.values() {
        secrets.extend(
            source
                .passphrases
                .iter()
                .map(|p| p.expose_secret().to_owned()),
        );
        secrets.extend(source.api_key.iter().map(|k| k.expose_secret().to_owned()));
    }
    if let Some(password) = config
        .alerts
        .as_ref()
        .and_then(|a| a.smtp_password.as_ref())
    {
        secrets.push(password.expose_secret().to_owned());
    }
    secrets.retain(|s| !s.is_empty());
    // Longest first, so a secret that contains another is replaced whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets
}

/// `text` with every secret (raw and form-encoded) replaced by `[redacted]`.
fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    for secret in secrets {
        out = out.replace(secret.as_str(), REDACTED);
        let encoded: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        if encoded != *secret {
            out = out.replace(&encoded, REDACTED);
        }
    }
    out
}

/// `error: cause: cause`, without repeating a cause already in the text.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Delivery, ProductMap, TargetKind};
    use secrecy::SecretString;

    fn target() -> Target {
        let d = Duration::from_secs(30);
        Target {
            name: "konnektive".into(),
            kind: TargetKind::Konnektive,
            base_url: "https://api.konnektive.com".into(),
            login_id: "ds24bridge".into(),
            password: SecretString::from("pw-123456"),
            requests_per_second: 2.0,
            burst: 2,
            max_in_flight: 1,
            delivery: Delivery {
                timeout: d,
                retry_initial: d,
                retry_max: d,
                give_up_after: d,
            },
        }
    }

    fn integration(entries: &[(u64, u64)], fallback: Option<u64>) -> Integration {
        let text = r#"
[source.ds24]
passphrase = "p"
[target.konnektive]
kind = "konnektive"
login_id = "ds24bridge"
password = "pw-123456"
[integration.main]
campaign_id = 12
[integration.main.product_map]
1 = 31
[integration.main.on]
payment = "import_order"
"#;
        let loaded = config::parse(text, Path::new("t.toml"), &crate::config::SystemEnvironment)
            .expect("valid");
        let mut i = loaded.config.integrations["main"].clone();
        i.product_map = ProductMap {
            entries: entries.iter().copied().collect(),
            fallback,
        };
        i
    }

    fn failed(outcome: Outcome, http_status: Option<u16>) -> CampaignAnswer {
        Err(Box::new(AttemptReport {
            outcome,
            endpoint: "campaign/query".into(),
            http_status,
            request: String::new(),
            response: String::new(),
            maybe_applied: false,
        }))
    }

    fn verdicts(f: &CrmFindings) -> [Verdict; 4] {
        [
            f.login.verdict,
            f.allow_list.verdict,
            f.campaign.verdict,
            f.product_map.verdict,
        ]
    }

    use Verdict::{Fail, Ok as Pass, Skip};

    #[test]
    fn campaign_answers_map_to_verdicts() {
        let i = integration(&[(1, 31)], Some(33));
        let t = target();
        let cases: Vec<(&str, CampaignAnswer, [Verdict; 4], &str)> = vec![
            (
                "all good",
                Ok(Campaign {
                    products: vec![31, 32, 33],
                    currency: Some("EUR".into()),
                }),
                [Pass, Pass, Pass, Pass],
                "exists, books EUR; its products: 31, 32, 33",
            ),
            (
                "no currency in the answer",
                Ok(Campaign {
                    products: vec![31, 32, 33],
                    currency: None,
                }),
                [Pass, Pass, Pass, Pass],
                "currency not named",
            ),
            (
                "bad login",
                failed(
                    Outcome::TargetDown {
                        reason: "Invalid login credentials".into(),
                    },
                    Some(200),
                ),
                [Fail, Skip, Skip, Skip],
                "refused the login",
            ),
            (
                "ip refused",
                failed(
                    Outcome::TargetDown {
                        reason: "IP must be whitelisted - 203.0.113.7".into(),
                    },
                    Some(200),
                ),
                [Skip, Fail, Skip, Skip],
                "add 203.0.113.7 to the IP allow-list",
            ),
            (
                "no permission",
                failed(
                    Outcome::TargetDown {
                        reason: "Permission denied: API user is not allowed to use campaign/query"
                            .into(),
                    },
                    Some(200),
                ),
                [Pass, Pass, Fail, Skip],
                "Query Campaigns",
            ),
            (
                "no campaign",
                failed(
                    Outcome::Permanent {
                        reason: "No campaigns matching those parameters could be found".into(),
                    },
                    Some(200),
                ),
                [Pass, Pass, Fail, Skip],
                "campaign 12 was not found",
            ),
            (
                "unreachable",
                failed(
                    Outcome::Retryable {
                        reason: "cannot connect to Konnektive: connection refused".into(),
                        retry_after: None,
                    },
                    None,
                ),
                [Fail, Skip, Skip, Skip],
                "connection refused",
            ),
            (
                "HTTP 401 mentioning the password is not a bad-login verdict",
                failed(
                    Outcome::TargetDown {
                        reason:
                            "HTTP 401 from Konnektive (check base_url, credentials, allow-list)"
                                .into(),
                    },
                    Some(401),
                ),
                [Fail, Skip, Skip, Skip],
                "no usable answer",
            ),
        ];
        for (name, answer, expected, needle) in cases {
            let f = judge_campaign(&answer, &t, &i);
            assert_eq!(verdicts(&f), expected, "{name}: {f:?}");
            let all = format!(
                "{} {} {} {}",
                f.login.detail, f.allow_list.detail, f.campaign.detail, f.product_map.detail
            );
            assert!(all.contains(needle), "{name}: {all}");
        }
    }

    #[test]
    fn product_map_names_every_missing_value_including_the_fallback() {
        let i = integration(&[(412346, 31), (412350, 34)], Some(33));
        let f = judge_product_map(&i, &[31, 32]);
        assert_eq!(f.verdict, Fail);
        assert!(
            f.detail.contains("34 (for Digistore24 product 412350)"),
            "{}",
            f.detail
        );
        assert!(f.detail.contains("33 (for \"*\")"), "{}", f.detail);
        assert!(!f.detail.contains("31 (for"), "{}", f.detail);
        assert!(f.detail.contains("the campaign has 31, 32"), "{}", f.detail);

        let ok = judge_product_map(&i, &[31, 33, 34]);
        assert_eq!(ok.verdict, Pass, "{}", ok.detail);

        let empty = judge_product_map(&integration(&[], None), &[31]);
        assert_eq!(empty.verdict, Skip);
    }

    #[test]
    fn refused_ip_is_read_from_konnektives_text() {
        let cases = [
            ("IP must be whitelisted - 203.0.113.7", Some("203.0.113.7")),
            ("IP must be whitelisted - 2001:db8::1", Some("2001:db8::1")),
            (
                "IP must be whitelisted - 198.51.100.4.",
                Some("198.51.100.4"),
            ),
            ("IP must be whitelisted", None),
            ("IP must be whitelisted - somewhere", None),
        ];
        for (text, expected) in cases {
            assert_eq!(
                refused_ip(text).map(|ip| ip.to_string()),
                expected.map(str::to_owned),
                "{text}"
            );
        }
    }

    #[test]
    fn ipn_url_prefers_public_url_and_reaches_wildcards_over_loopback() {
        let server = |listen: &str, public: Option<&str>| Server {
            listen: listen.parse().expect("addr"),
            max_body_bytes: 65536,
            public_url: public.map(str::to_owned),
            max_connections: 512,
        };
        let cases = [
            ("127.0.0.1:8080", None, "http://127.0.0.1:8080/ipn/ds24"),
            ("0.0.0.0:8080", None, "http://127.0.0.1:8080/ipn/ds24"),
            ("[::]:8080", None, "http://[::1]:8080/ipn/ds24"),
            (
                "127.0.0.1:8080",
                Some("https://ipn.example.com"),
                "https://ipn.example.com/ipn/ds24",
            ),
        ];
        for (listen, public, expected) in cases {
            assert_eq!(ipn_url(&server(listen, public), "ds24"), expected);
        }
    }

    #[test]
    fn the_test_ipn_is_signed_and_always_the_same() {
        let source = Source {
            name: "ds24".into(),
            passphrases: vec![SecretString::from("new-pass"), SecretString::from("old")],
            api_key: None,
            api_url: String::new(),
            audit_every: None,
        };
        let body = connection_test_body(&source).expect("body");
        assert_eq!(Some(body.clone()), connection_test_body(&source));
        let pairs: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
        assert!(pairs.contains(&("event".into(), "connection_test".into())));
        assert_eq!(
            ipn::verify(&pairs, &source.passphrases[..1]),
            Ok(KeyCase::Original)
        );
        assert!(!String::from_utf8_lossy(&body).contains("new-pass"));
    }

    #[test]
    fn scrub_removes_raw_and_encoded_secrets() {
        let secrets = vec!["p&ss word".to_owned(), "k0nn".to_owned()];
        let text = "a p&ss word b p%26ss+word c k0nn";
        assert_eq!(
            scrub(text, &secrets),
            "a [redacted] b [redacted] c [redacted]"
        );
    }

    #[test]
    fn table_aligns_columns_and_json_marks_skips_as_null() {
        let line = |integration: &str, check: &'static str, verdict: Verdict, detail: &str| Line {
            integration: integration.into(),
            check,
            ok: match verdict {
                Pass => Some(true),
                Fail => Some(false),
                Skip => None,
            },
            detail: detail.into(),
            verdict,
        };
        let lines = vec![
            line("main-campaign", CHECK_LOGIN, Pass, "fine"),
            line("b", CHECK_SMTP, Fail, "no"),
            line("b", CHECK_CAMPAIGN, Skip, "not checked"),
        ];
        assert_eq!(
            render_table(&lines),
            "main-campaign  konnektive login  ok    fine\n\
             b              smtp              FAIL  no\n\
             b              campaign          skip  not checked\n"
        );
        let json: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&lines).expect("json")).expect("parse");
        assert_eq!(
            json[2],
            serde_json::json!({"integration": "b", "check": "campaign", "ok": null, "detail": "not checked"})
        );
    }
}
