//! `ipn-bridge check-config`: loads the file as the daemon would and prints every error (and
//! warning) with file, line and column. Exit 0 when valid, 1 when not.

use std::path::Path;
use std::process::ExitCode;

use crate::config;

pub fn run(path: &Path) -> ExitCode {
    match config::load(path) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                eprintln!("{warning}");
            }
            let c = &loaded.config;
            println!(
                "{}: valid ({} source(s), {} target(s), {} integration(s))",
                path.display(),
                c.sources.len(),
                c.targets.len(),
                c.integrations.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{}: {} error(s); the configuration was not accepted",
                path.display(),
                errors.errors.len()
            );
            ExitCode::from(1)
        }
    }
}
