//! The `ipn-bridge` binary: parses the command line, starts logging, dispatches to
//! [`ipn_bridge::cli`] and maps the result to an exit code (0 success, 1 failure or invalid
//! configuration, 2 usage error from clap, 3 an id that does not exist — set by the queue
//! and events commands themselves).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = ipn_bridge::cli::Cli::parse();
    ipn_bridge::cli::init_logging(cli.log_format);
    match ipn_bridge::cli::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
