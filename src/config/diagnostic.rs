//! What the loader reports: [`Diagnostic`] (one problem at one place in the file),
//! [`ConfigErrors`] (all of them), and the span-based [`Findings`] the walker collects before
//! positions are known.
//!
//! The walker works with byte spans, which are cheap and exact; this file turns them into
//! 1-based line and column (columns count characters, not bytes, so they match what an
//! editor shows) once, at the end, and sorts everything by position. It also owns the
//! "did you mean" suggestion (edit distance), since every kind of name (keys, events,
//! actions, source and target names) uses it. It knows nothing of the schema.
//!
//! A message never contains a secret's value: the walker only ever puts key names, type names
//! and non-secret values into messages, and secret resolution reports the *source* of a
//! secret (variable name, file path), never its content.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

/// Whether a diagnostic refuses the file or only advises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Warning,
}

/// One problem at one place of the configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub message: String,
    pub hint: Option<String>,
    pub severity: Severity,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {label}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

/// Every error found in a configuration file, sorted by position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    pub errors: Vec<Diagnostic>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A problem located by byte span, before line and column are computed.
#[derive(Debug, Clone)]
pub(crate) struct Finding {
    pub span: Range<usize>,
    pub message: String,
    pub hint: Option<String>,
    /// True for problems that are about something *absent* (a required key, a referenced
    /// table). They are dropped when the file has syntax errors, because the absent thing may
    /// well be on a line the TOML parser could not read.
    pub needs_complete_file: bool,
}

/// The walker's collector: errors and warnings by span.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    pub errors: Vec<Finding>,
    pub warnings: Vec<Finding>,
}

impl Findings {
    pub fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.push_error(span, message.into(), None, false);
    }

    pub fn error_hint(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.push_error(span, message.into(), Some(hint.into()), false);
    }

    /// An error about something absent; see [`Finding::needs_complete_file`].
    pub fn missing(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.push_error(span, message.into(), hint, true);
    }

    pub fn warning(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        self.warnings.push(Finding {
            span,
            message: message.into(),
            hint,
            needs_complete_file: false,
        });
    }

    fn push_error(
        &mut self,
        span: Range<usize>,
        message: String,
        hint: Option<String>,
        needs_complete_file: bool,
    ) {
        self.errors.push(Finding {
            span,
            message,
            hint,
            needs_complete_file,
        });
    }
}

/// Turns findings into sorted diagnostics for `file`, whose text is `text`.
pub(crate) fn to_diagnostics(
    findings: Vec<Finding>,
    text: &str,
    file: &std::path::Path,
    severity: Severity,
) -> Vec<Diagnostic> {
    let mut findings = findings;
    // Stable: two findings at the same place keep the order the walker found them in.
    findings.sort_by_key(|f| f.span.start);
    findings
        .into_iter()
        .map(|f| {
            let (line, column) = line_column(text, f.span.start);
            Diagnostic {
                file: file.to_path_buf(),
                line,
                column,
                message: f.message,
                hint: f.hint,
                severity,
            }
        })
        .collect()
}

/// 1-based line and character column of byte `offset` (clamped to the text).
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The candidate closest to `word`, if it is close enough to be a plausible typo.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= (c.chars().count() / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// `did you mean `x`?` for the closest candidate, else the list of all of them.
pub(crate) fn suggestion(word: &str, candidates: &[&str]) -> String {
    match closest(word, candidates.iter().copied()) {
        Some(c) => format!("did you mean `{c}`?"),
        None => format!("expected one of: {}", candidates.join(", ")),
    }
}

/// Edit distance over characters (optimal string alignment: insertions, deletions,
/// substitutions and swaps of two neighbours each cost 1, so `evn` is one step from `env`).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // d[i][j]: distance between the first i chars of a and the first j chars of b.
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based_and_count_characters() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 4), (1, 5));
        assert_eq!(line_column(text, 6), (2, 1));
        // "é" is two bytes but one column.
        assert_eq!(line_column(text, 10), (2, 4));
        assert_eq!(line_column(text, 1000), (3, 1));
    }

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(
            closest("campain_id", ["campaign_id", "active"]),
            Some("campaign_id")
        );
        assert_eq!(closest("timout", ["timeout", "retry_max"]), Some("timeout"));
        assert_eq!(closest("zzz", ["timeout", "retry_max"]), None);
        assert_eq!(closest("evn", ["env", "file"]), Some("env"));
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("evn", "env"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn display_matches_the_documented_form() {
        let d = Diagnostic {
            file: PathBuf::from("connectors.toml"),
            line: 12,
            column: 5,
            message: "unknown key `campain_id` in [integration.main]".into(),
            hint: Some("did you mean `campaign_id`?".into()),
            severity: Severity::Error,
        };
        assert_eq!(
            d.to_string(),
            "connectors.toml:12:5: error: unknown key `campain_id` in [integration.main] \
             (hint: did you mean `campaign_id`?)"
        );
        let errors = ConfigErrors {
            errors: vec![d.clone(), d],
        };
        assert_eq!(errors.to_string().lines().count(), 2);
    }
}
