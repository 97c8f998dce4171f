//! TOML syntax: reports every syntax error, and yields a text whose tree is as complete as
//! possible so that the schema walker can still find the *other* mistakes.
//!
//! `toml::de::DeTable::parse_recoverable` reports all syntax errors, but the tree it builds
//! stops at some of them (a key without `=` ends the document). So the errors of the first
//! parse are the ones reported, and the lines they point at are blanked (replaced by spaces,
//! so every byte offset stays valid) and the text parsed again, a few rounds at most. A broken
//! table header blanks its whole table: its keys would otherwise land in the table before it
//! and be reported as unknown there. Schema problems about something *absent* are dropped by
//! the caller when there were syntax errors, because the absent thing may be on a blanked line.
//! Only the first syntax error of a line is reported: one mistake (an unclosed array) often
//! yields several, and the first names the cause.

use super::diagnostic::{Finding, line_column};
use std::borrow::Cow;
use std::ops::Range;
use toml::de::DeTable;

/// Enough for a handful of errors that only show up once an earlier line is gone.
const MAX_ROUNDS: usize = 8;

/// The syntax errors of `text`, and the text to build the tree from (same byte offsets).
pub(crate) fn recover(text: &str) -> (Cow<'_, str>, Vec<Finding>) {
    let first = syntax_error_spans(text);
    if first.is_empty() {
        return (Cow::Borrowed(text), Vec::new());
    }
    let mut findings: Vec<Finding> = Vec::new();
    let mut lines_seen: Vec<usize> = Vec::new();
    for (span, message) in &first {
        // One mistake often yields several errors on its line; the first one is the cause.
        let line = line_column(text, span.start).0;
        if !lines_seen.contains(&line) {
            lines_seen.push(line);
            findings.push(Finding {
                span: span.clone(),
                message: message.clone(),
                hint: None,
                needs_complete_file: false,
            });
        }
    }
    let mut current = text.to_owned();
    let mut spans: Vec<Range<usize>> = first.into_iter().map(|(span, _)| span).collect();
    for _ in 0..MAX_ROUNDS {
        let blanked = blank_lines(&current, &spans);
        if blanked == current {
            break;
        }
        current = blanked;
        spans = syntax_error_spans(&current)
            .into_iter()
            .map(|(span, _)| span)
            .collect();
        if spans.is_empty() {
            break;
        }
    }
    (Cow::Owned(current), findings)
}

fn syntax_error_spans(text: &str) -> Vec<(Range<usize>, String)> {
    let (_, errors) = DeTable::parse_recoverable(text);
    errors
        .iter()
        .map(|e| {
            let span = e.span().unwrap_or(0..0);
            let mut message = format!("invalid TOML: {}", e.message());
            // The parser's messages never quote the file, and neither do we in general: the
            // span of an unquoted value may be a secret. A duplicate key's span is a key.
            if e.message() == "duplicate key"
                && let Some(key) = text.get(span.clone())
                && !key.contains('\n')
            {
                message = format!("invalid TOML: duplicate key `{}`", key.trim_matches('"'));
            }
            (span, message)
        })
        .collect()
}

/// `text` with the lines at `spans` (and the body of a broken table header) made blank.
fn blank_lines(text: &str, spans: &[Range<usize>]) -> String {
    let mut ranges: Vec<Range<usize>> = Vec::new();
    for span in spans {
        let mut at = span.start.min(text.len());
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
        let mut end = text[at..].find('\n').map_or(text.len(), |i| at + i);
        if text[start..end].trim_start().starts_with('[') {
            // A table header: blank up to the next header.
            let mut next = end;
            while next < text.len() {
                let line_start = next + 1;
                let line_end = text[line_start.min(text.len())..]
                    .find('\n')
                    .map_or(text.len(), |i| line_start + i);
                if line_start >= text.len()
                    || text[line_start..line_end].trim_start().starts_with('[')
                {
                    break;
                }
                next = line_end;
            }
            end = next;
        }
        ranges.push(start..end);
    }
    text.char_indices()
        .flat_map(|(i, c)| {
            let blank = c != '\n' && c != '\r' && ranges.iter().any(|r| r.contains(&i));
            let replacement = if blank { ' ' } else { c };
            let count = if blank { c.len_utf8() } else { 1 };
            std::iter::repeat_n(replacement, count)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_text_is_kept_as_is() {
        let (text, errors) = recover("a = 1\n");
        assert!(matches!(text, Cow::Borrowed(_)));
        assert!(errors.is_empty());
    }

    #[test]
    fn broken_lines_are_blanked_keeping_offsets() {
        let input = "a = 1\nb 3\nc = \"é\"\n[t]\nd = 1\n";
        let (text, errors) = recover(input);
        assert_eq!(errors.len(), 1);
        assert_eq!(text.len(), input.len());
        assert_eq!(text, "a = 1\n   \nc = \"é\"\n[t]\nd = 1\n");
        let (tree, errors) = DeTable::parse_recoverable(&text);
        assert!(errors.is_empty());
        assert!(tree.get_ref().contains_key("t"));
    }

    #[test]
    fn a_broken_header_blanks_its_table() {
        let input = "[a]\nx = 1\n[b\ny = 2\n[c]\nz = 3\n";
        let (text, errors) = recover(input);
        assert!(!errors.is_empty());
        assert_eq!(text, "[a]\nx = 1\n  \n     \n[c]\nz = 3\n");
    }

    #[test]
    fn multibyte_characters_are_blanked_byte_for_byte() {
        let at_start: Vec<Range<usize>> = std::iter::once(0..0).collect();
        assert_eq!(blank_lines("ä = \nok", &at_start), "     \nok");
    }
}
