//! The command line: one file per subcommand, this file holds the argument types, logging
//! set-up and dispatch. The review commands (`queue`, `events`) share `output` (tables, JSON,
//! times, exit codes).
//!
//! Exit codes: 0 success; 1 failure (invalid configuration, database unavailable, a refused
//! queue change); 2 usage error (clap); 3 an id named on the command line does not exist.

mod check_config;
pub mod ds24;
mod ds24_checks;
pub mod events;
mod explain;
pub mod output;
pub mod queue;
mod replay;
mod test_connection;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Default configuration file when neither `--config` nor `$IPN_BRIDGE_CONFIG` is given.
pub const DEFAULT_CONFIG: &str = "/etc/ipn-bridge/connectors.toml";

#[derive(Debug, Parser)]
#[command(
    name = "ipn-bridge",
    version,
    about = "Receives Digistore24 IPNs and imports the orders into Konnektive CRM, durably and exactly once.",
    long_about = None
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the configuration comes from.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArg {
    /// The configuration file.
    #[arg(short, long, env = "IPN_BRIDGE_CONFIG", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: receive IPNs and deliver them (SIGHUP reloads the configuration;
    /// SIGTERM or SIGINT stops it after in-flight deliveries finish).
    ///
    /// On a SQLite file ([store] path) only one daemon may run (a second one exits at once,
    /// naming the first one's PID), and an empty (zero-byte) file is refused unless --init is
    /// given. On PostgreSQL ([store] url) several daemons share the database: each accepts
    /// IPNs, and one at a time dispatches each target.
    ///
    /// Example: ipn-bridge run -c /etc/ipn-bridge/connectors.toml
    Run(RunArgs),
    /// Validate the configuration and report every error at once (exit 0 valid, 1 invalid).
    ///
    /// Example: ipn-bridge check-config -c connectors.toml
    CheckConfig(ConfigArg),
    /// Dry run of one IPN (a body file or a stored event id) through today's
    /// configuration: each integration's decision with its reason and the exact Konnektive
    /// request(s), password redacted. Sends and writes nothing.
    ///
    /// Examples: ipn-bridge explain 42
    ///           ipn-bridge explain saved-ipn.txt --source ds24
    Explain {
        #[command(flatten)]
        config: ConfigArg,
        /// A stored event id, or a file holding a raw IPN body.
        what: String,
        /// The source whose passphrases check a file's signature (needed only when several
        /// sources are configured).
        #[arg(long)]
        source: Option<String>,
    },
    /// Route stored IPNs again with today's configuration (after fixing a product map, say).
    /// Never repeats an import: a delivered, pending or held job is kept; a dead or dropped
    /// job is re-routed in place with today's action.
    ///
    /// Example: ipn-bridge replay 41 42 --integration main-campaign --dry-run
    Replay {
        #[command(flatten)]
        config: ConfigArg,
        /// Stored event ids (see `ipn-bridge events list`).
        #[arg(required = true)]
        events: Vec<i64>,
        /// Only this integration.
        #[arg(long)]
        integration: Option<String>,
        /// Show what would happen; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Review and repair the delivery queue: list, show, retry, drop, purge.
    ///
    /// Works on the live database while the daemon runs. Example: ipn-bridge queue list --state dead
    Queue(queue::QueueArgs),
    /// Review stored IPNs and how each was routed: list, show.
    ///
    /// Example: ipn-bridge events list --since 2h
    Events(events::EventsArgs),
    /// Test each integration's connections: Konnektive login, IP allow-list, campaign and
    /// every product_map entry; the SMTP server of [alerts]; the IPN endpoint (a signed
    /// connection_test). One verdict per line; exit 0 when nothing failed, 1 otherwise.
    ///
    /// Example: ipn-bridge test-connection -c connectors.toml main-campaign --send-test-email
    TestConnection(TestConnectionArgs),
    /// The Digistore24 API with `[source.NAME] api_key`: any call, buy URLs, IPN set-up and
    /// an audit of IPNs that never came.
    ///
    /// Example: ipn-bridge ds24 audit --since 7d
    Ds24(ds24::Ds24Args),
}

/// Arguments of `run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Make a new, empty database when the database file exists but is empty (zero bytes).
    /// Without it such a file is refused: it is more likely a lost database than a new one.
    /// A missing file is always created.
    #[arg(long)]
    pub init: bool,
}

/// Arguments of `test-connection`.
#[derive(Debug, Clone, clap::Args)]
pub struct TestConnectionArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Integrations to test (default: all).
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
    /// Also send a real test e-mail to [alerts].to.
    #[arg(long)]
    pub send_test_email: bool,
    /// Print a JSON array of {integration, check, ok, detail} (ok is null for a skipped check).
    #[arg(long)]
    pub json: bool,
}

pub use crate::app::{load_config, load_config_without_secrets};

/// Logs go to stderr; `RUST_LOG` overrides the default level (`info`).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let empty = if args.init {
                crate::store::EmptyFile::Initialise
            } else {
                crate::store::EmptyFile::Refuse
            };
            runtime.block_on(crate::app::run(&args.config.config, empty))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig(args) => Ok(check_config::run(&args.config)),
        Command::Explain {
            config,
            what,
            source,
        } => explain::run(&config.config, &what, source.as_deref()),
        Command::Replay {
            config,
            events,
            integration,
            dry_run,
        } => replay::run(&config.config, &events, integration.as_deref(), dry_run),
        Command::Queue(args) => queue::run(args),
        Command::Events(args) => events::run(args),
        Command::TestConnection(args) => test_connection::run(&test_connection::Options {
            config: &args.config.config,
            names: &args.names,
            send_test_email: args.send_test_email,
            json: args.json,
        }),
        Command::Ds24(args) => ds24::run(args),
    }
}
