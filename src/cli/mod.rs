//! The command line: one file per subcommand, this file holds the argument types, logging
//! set-up and dispatch.

mod check_config;
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
    /// Run the daemon: receive IPNs and deliver them (stops on SIGTERM or SIGINT).
    ///
    /// Example: ipn-bridge run -c /etc/ipn-bridge/connectors.toml
    Run(ConfigArg),
    /// Validate the configuration and report every error at once (exit 0 valid, 1 invalid).
    ///
    /// Example: ipn-bridge check-config -c connectors.toml
    CheckConfig(ConfigArg),
    /// Test each integration's connections: Konnektive login, IP allow-list, campaign and
    /// every product_map entry; the SMTP server of [alerts]; the IPN endpoint (a signed
    /// connection_test). One verdict per line; exit 0 when nothing failed, 1 otherwise.
    ///
    /// Example: ipn-bridge test-connection -c connectors.toml main-campaign --send-test-email
    TestConnection(TestConnectionArgs),
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
            runtime.block_on(crate::app::run(&args.config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig(args) => Ok(check_config::run(&args.config)),
        Command::TestConnection(args) => test_connection::run(&test_connection::Options {
            config: &args.config.config,
            names: &args.names,
            send_test_email: args.send_test_email,
            json: args.json,
        }),
    }
}
