//! Secrets in `connectors.toml`: a plain string, or exactly one of `{ env = "VAR" }`,
//! `{ file = "/path" }`, `{ credential = "name" }` (systemd `LoadCredential=`, read from
//! `$CREDENTIALS_DIRECTORY`), resolved into a [`SecretString`].
//!
//! Owns the [`Environment`] seam (variables, files, the credentials directory) so that tests
//! run with a fake and `load` with [`SystemEnvironment`]. Decisions:
//! - A message names where a secret was to come from (variable, path, credential), never its
//!   value, and read errors carry only the `io::Error` reason.
//! - A value read from a file or credential loses its trailing line break (`echo pw > file`),
//!   nothing else: spaces may be part of a password.
//! - A relative `file` path is relative to the directory of the configuration file, so the
//!   file means the same whatever the working directory.
//! - Plain-text secrets are remembered by span, so that `load` can warn when the file is
//!   readable by group or others; this file does not look at permissions itself.

use super::diagnostic::Findings;
use super::reader::Field;
use secrecy::{ExposeSecret, SecretString};
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::de::DeValue;

/// Where secrets come from: the process environment, the file system and systemd's
/// credentials directory. [`SystemEnvironment`] in production, a fake in tests.
pub trait Environment {
    fn var(&self, name: &str) -> Option<String>;
    fn read_file(&self, path: &Path) -> std::io::Result<String>;
    /// `$CREDENTIALS_DIRECTORY`, set by systemd when the unit has `LoadCredential=`.
    fn credentials_directory(&self) -> Option<PathBuf>;
}

/// The real environment: process variables, real files, `$CREDENTIALS_DIRECTORY`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemEnvironment;

impl Environment for SystemEnvironment {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn read_file(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn credentials_directory(&self) -> Option<PathBuf> {
        std::env::var_os("CREDENTIALS_DIRECTORY")
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from)
    }
}

const FORMS: [&str; 3] = ["env", "file", "credential"];
const FORMS_HINT: &str = "write a secret as \"text\", { env = \"VAR\" }, { file = \"/path\" } or { credential = \"name\" }";

/// Resolves secret values; remembers where plain-text secrets are written.
pub(crate) struct SecretResolver<'e> {
    env: &'e dyn Environment,
    /// Directory of the configuration file, for relative `file` paths.
    base_dir: PathBuf,
    /// Spans of the secrets written as plain strings.
    pub plain_spans: Vec<Range<usize>>,
}

impl<'e> SecretResolver<'e> {
    pub fn new(env: &'e dyn Environment, config_path: &Path) -> Self {
        let base_dir = config_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        SecretResolver {
            env,
            base_dir,
            plain_spans: Vec::new(),
        }
    }

    /// The secret written at `field`, or `None` after reporting why it cannot be had.
    pub fn resolve(&mut self, field: &Field<'_, '_>, out: &mut Findings) -> Option<SecretString> {
        match field.node.get_ref() {
            DeValue::String(s) => {
                self.plain_spans.push(field.span());
                let secret = SecretString::from(s.to_string());
                non_empty(secret, field, "is empty", out)
            }
            DeValue::Table(_) => self.resolve_table(field, out),
            _ => {
                field.wrong_type("a string or a table like { env = \"VAR\" }", out);
                None
            }
        }
    }

    fn resolve_table(&self, field: &Field<'_, '_>, out: &mut Findings) -> Option<SecretString> {
        let section = field.section(out)?;
        section.reject_unknown(&FORMS, out);
        let given: Vec<_> = FORMS.iter().filter_map(|k| section.get(k)).collect();
        if given.is_empty() && !section.table.is_empty() {
            // Only unknown keys, each reported above with a suggestion.
            return None;
        }
        let [form] = given.as_slice() else {
            let problem = if given.is_empty() {
                "a secret table needs one of `env`, `file` or `credential`".to_owned()
            } else {
                let names: Vec<String> = given.iter().map(|f| format!("`{}`", f.key)).collect();
                format!("give only one of {}", names.join(", "))
            };
            field.error_hint(out, problem, FORMS_HINT);
            return None;
        };
        let name = form.non_empty_str(out)?;
        match form.key.as_str() {
            "env" => match self.env.var(name) {
                Some(value) => non_empty(
                    SecretString::from(value),
                    field,
                    &format!("environment variable `{name}` is empty"),
                    out,
                ),
                None => {
                    field.error_hint(
                        out,
                        format!("environment variable `{name}` is not set"),
                        "set it in the service's environment, e.g. with systemd's Environment= or EnvironmentFile=",
                    );
                    None
                }
            },
            "file" => {
                let path = self.base_dir.join(name);
                match self.env.read_file(&path) {
                    Ok(text) => non_empty(
                        trim_line_break(text),
                        field,
                        &format!("secret file `{}` is empty", path.display()),
                        out,
                    ),
                    Err(e) => {
                        field.error(
                            out,
                            format!("cannot read secret file `{}`: {e}", path.display()),
                        );
                        None
                    }
                }
            }
            _ => self.resolve_credential(field, form, name, out),
        }
    }

    fn resolve_credential(
        &self,
        field: &Field<'_, '_>,
        form: &Field<'_, '_>,
        name: &str,
        out: &mut Findings,
    ) -> Option<SecretString> {
        if name.contains('/') || name == "." || name == ".." {
            form.error(
                out,
                format!("`{name}` is not a credential name (a file name, without `/`)"),
            );
            return None;
        }
        let Some(dir) = self.env.credentials_directory() else {
            field.error_hint(
                out,
                format!("credential `{name}` cannot be read: $CREDENTIALS_DIRECTORY is not set"),
                format!(
                    "run under systemd with `LoadCredential={name}:/path/to/secret` \
                     (or LoadCredentialEncrypted=), or use {{ env = … }} / {{ file = … }}"
                ),
            );
            return None;
        };
        let path = dir.join(name);
        match self.env.read_file(&path) {
            Ok(text) => non_empty(
                trim_line_break(text),
                field,
                &format!("credential `{name}` is empty"),
                out,
            ),
            Err(e) => {
                field.error_hint(
                    out,
                    format!(
                        "cannot read credential `{name}` (`{}`): {e}",
                        path.display()
                    ),
                    format!("does the unit have `LoadCredential={name}:…`?"),
                );
                None
            }
        }
    }
}

/// The secret, or an error when it is empty.
fn non_empty(
    secret: SecretString,
    field: &Field<'_, '_>,
    problem: &str,
    out: &mut Findings,
) -> Option<SecretString> {
    if secret.expose_secret().is_empty() {
        field.error(out, problem);
        None
    } else {
        Some(secret)
    }
}

/// Drops one trailing `\n` or `\r\n`, as left by `echo secret > file`.
fn trim_line_break(text: String) -> SecretString {
    let secret = SecretString::from(text);
    let exposed = secret.expose_secret();
    let trimmed = exposed
        .strip_suffix('\n')
        .map(|s| s.strip_suffix('\r').unwrap_or(s));
    match trimmed {
        Some(t) => SecretString::from(t.to_owned()),
        None => secret,
    }
}
