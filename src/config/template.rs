//! The `[integration.NAME.fields]` value syntax: literal text with `{ipn_field}`
//! placeholders, parsed once into a [`Template`].
//!
//! Decisions: a field name is `[A-Za-z0-9_]+` (every Digistore24 IPN field name fits);
//! `{{` and `}}` are literal braces, as in Rust's `format!`; an unclosed `{`, an empty `{}`,
//! a lone `}` or any other character inside braces is an error rather than literal text, so
//! a typo cannot silently send `{affiliate_nme` to the CRM. Rendering lives with the type.

use super::model::{Template, TemplatePart};

/// Why a template was refused, with the byte offset in the template text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TemplateError {
    pub offset: usize,
    pub message: String,
}

pub(crate) fn is_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

pub(crate) fn parse_template(text: &str) -> Result<Template, TemplateError> {
    let mut parts: Vec<TemplatePart> = Vec::new();
    let mut literal = String::new();
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '{' if chars.peek().map(|&(_, n)| n) == Some('{') => {
                chars.next();
                literal.push('{');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some((_, '}')) if name.is_empty() => {
                            return Err(TemplateError {
                                offset: i,
                                message: "empty placeholder `{}`; write `{field_name}`, or `{{}}` \
                                          for literal braces"
                                    .to_owned(),
                            });
                        }
                        Some((_, '}')) => break,
                        Some((_, n)) if n.is_ascii_alphanumeric() || n == '_' => name.push(n),
                        Some((j, n)) => {
                            return Err(TemplateError {
                                offset: j,
                                message: format!(
                                    "`{n}` cannot appear in a placeholder: field names are \
                                     letters, digits and `_` (write `{{{{` for a literal `{{`)"
                                ),
                            });
                        }
                        None => {
                            return Err(TemplateError {
                                offset: i,
                                message: "unclosed `{`: write `{field_name}`, or `{{` for a \
                                          literal `{`"
                                    .to_owned(),
                            });
                        }
                    }
                }
                if !literal.is_empty() {
                    parts.push(TemplatePart::Literal(std::mem::take(&mut literal)));
                }
                parts.push(TemplatePart::Field(name));
            }
            '}' if chars.peek().map(|&(_, n)| n) == Some('}') => {
                chars.next();
                literal.push('}');
            }
            '}' => {
                return Err(TemplateError {
                    offset: i,
                    message: "unmatched `}`: write `}}` for a literal `}`".to_owned(),
                });
            }
            other => literal.push(other),
        }
    }
    if !literal.is_empty() {
        parts.push(TemplatePart::Literal(literal));
    }
    Ok(Template { parts })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn render(template: &Template, fields: &BTreeMap<&str, &'static str>) -> String {
        template.render(|name| fields.get(name).copied())
    }

    #[test]
    fn literal_and_placeholders_render() {
        let fields = BTreeMap::from([("affiliate_name", "max"), ("order_id", "A1B2")]);
        let table: &[(&str, &str)] = &[
            ("{affiliate_name}", "max"),
            ("aff-{affiliate_name}/{order_id}!", "aff-max/A1B2!"),
            ("plain", "plain"),
            ("", ""),
            ("{{literal}} {order_id}", "{literal} A1B2"),
            ("{absent}x", "x"),
        ];
        for (text, expected) in table {
            let template = parse_template(text).unwrap();
            assert_eq!(render(&template, &fields), *expected, "{text}");
        }
        assert_eq!(
            parse_template("a{b}c").unwrap().parts,
            vec![
                TemplatePart::Literal("a".into()),
                TemplatePart::Field("b".into()),
                TemplatePart::Literal("c".into()),
            ]
        );
    }

    #[test]
    fn malformed_templates_are_errors() {
        let table: &[(&str, usize, &str)] = &[
            ("{affiliate_name", 0, "unclosed `{`"),
            ("ab{", 2, "unclosed `{`"),
            ("x{}", 1, "empty placeholder"),
            ("{a b}", 2, "cannot appear in a placeholder"),
            ("{a-b}", 2, "cannot appear"),
            ("a}b", 1, "unmatched `}`"),
        ];
        for (text, offset, message) in table {
            let err = parse_template(text).unwrap_err();
            assert_eq!(err.offset, *offset, "{text}");
            assert!(err.message.contains(message), "{text}: {}", err.message);
        }
    }
}
