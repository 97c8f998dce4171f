//! The entry points: [`load`] reads a real file, [`parse`] validates text against an
//! [`Environment`]. Both go text → syntax recovery (`document`) → TOML tree with spans →
//! schema walk (`schema`) → sorted diagnostics or a [`Config`].
//!
//! Only [`load`] looks at the file system: an unreadable file is one error at 1:1, and when
//! the file's mode lets group or others read it, each secret written in plain text gets a
//! warning at its span (the walker records where they are). [`parse`] is pure apart from the
//! [`Environment`] it is given, which is what the tests use. When the file has syntax errors,
//! schema errors about something *absent* are dropped: the absent key may sit on a line the
//! TOML parser could not read.

use super::diagnostic::{ConfigErrors, Diagnostic, Finding, Severity, to_diagnostics};
use super::document::recover;
use super::model::Config;
use super::schema::walk;
use super::secret::{Environment, SystemEnvironment};
use std::ops::Range;
use std::path::Path;
use toml::de::DeTable;

/// A valid configuration and the warnings found on the way.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Diagnostic>,
}

/// Like [`load`], but secrets written as `{ env = … }`, `{ file = … }` or
/// `{ credential = … }` are not read: they hold a placeholder. The one exception is
/// `[store] url`, read for real: these commands need the database. For the commands that never
/// use a secret (`queue`, `events`, `replay`), so an operator can run them outside the
/// service, where systemd credentials do not exist. Everything else is validated as usual.
pub fn load_without_secrets(path: &Path) -> Result<Loaded, ConfigErrors> {
    let text = read_config(path)?;
    parse_collecting(&text, path, &SecretsUnread, &SystemEnvironment).map(|(loaded, _)| loaded)
}

/// The file's text; an unreadable file is one error at 1:1.
fn read_config(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        errors: vec![Diagnostic {
            file: path.to_path_buf(),
            line: 1,
            column: 1,
            message: format!("cannot read the configuration file: {e}"),
            hint: None,
            severity: Severity::Error,
        }],
    })
}

/// An environment in which every external secret reads as a placeholder.
struct SecretsUnread;

/// What an unread secret holds.
const UNREAD_SECRET: &str = "(secret not read)";

impl Environment for SecretsUnread {
    fn var(&self, _: &str) -> Option<String> {
        Some(UNREAD_SECRET.to_owned())
    }

    fn read_file(&self, _: &Path) -> std::io::Result<String> {
        Ok(UNREAD_SECRET.to_owned())
    }

    fn credentials_directory(&self) -> Option<std::path::PathBuf> {
        Some(std::path::PathBuf::from("/nonexistent-credentials"))
    }
}

/// Reads and validates the file at `path` with the real environment. An unreadable file is
/// one error at 1:1. Adds a warning per plain-text secret when the file is readable by group
/// or others.
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    let text = read_config(path)?;
    let (mut loaded, plain_secrets) =
        parse_collecting(&text, path, &SystemEnvironment, &SystemEnvironment)?;
    if let Some(mode) = readable_by_others(path)
        && !plain_secrets.is_empty()
    {
        let findings = plain_secrets
            .into_iter()
            .map(|span| Finding {
                span,
                message: format!(
                    "plain-text secret in a file that group or others can read (mode {:03o})",
                    mode & 0o777
                ),
                hint: Some(format!(
                    "write it as {{ env = \"VAR\" }} or {{ credential = \"name\" }}, or run \
                     `chmod 600 {}`",
                    path.display()
                )),
                needs_complete_file: false,
            })
            .collect();
        loaded
            .warnings
            .extend(to_diagnostics(findings, &text, path, Severity::Warning));
        loaded.warnings.sort_by_key(|d| (d.line, d.column));
    }
    Ok(loaded)
}

/// Validates `text` (the contents of `path`, which is used for messages and to resolve
/// relative secret files) and resolves its secrets through `env`.
pub fn parse(text: &str, path: &Path, env: &dyn Environment) -> Result<Loaded, ConfigErrors> {
    parse_collecting(text, path, env, env).map(|(loaded, _)| loaded)
}

/// [`parse`], also returning the spans of the secrets written in plain text.
fn parse_collecting(
    text: &str,
    path: &Path,
    env: &dyn Environment,
    store_env: &dyn Environment,
) -> Result<(Loaded, Vec<Range<usize>>), ConfigErrors> {
    let (tree_text, syntax_errors) = recover(text);
    let (root, _) = DeTable::parse_recoverable(&tree_text);
    let walked = walk(text, &root, path, env, store_env);
    let had_syntax_errors = !syntax_errors.is_empty();
    let mut errors = syntax_errors;
    errors.extend(
        walked
            .findings
            .errors
            .into_iter()
            .filter(|f| !(had_syntax_errors && f.needs_complete_file)),
    );
    if !errors.is_empty() {
        return Err(ConfigErrors {
            errors: to_diagnostics(errors, text, path, Severity::Error),
        });
    }
    let warnings = to_diagnostics(walked.findings.warnings, text, path, Severity::Warning);
    let loaded = Loaded {
        config: walked.config,
        warnings,
    };
    Ok((loaded, walked.plain_secret_spans))
}

/// The file's mode when group or others may read it.
#[cfg(unix)]
fn readable_by_others(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o044 != 0).then_some(mode)
}

#[cfg(not(unix))]
fn readable_by_others(_path: &Path) -> Option<u32> {
    None
}
