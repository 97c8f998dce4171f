//! `[source.NAME]` keys of the Digistore24 API client: `api_key`, `api_url`, `audit_every`.

use super::*;

fn source_with(lines: &str) -> String {
    MINIMAL.replace(
        "passphrase = \"p\"",
        &format!("passphrase = \"p\"\n{lines}"),
    )
}

#[test]
fn api_keys_default_to_no_key_the_public_url_and_no_audit() {
    let c = ok(MINIMAL).config;
    let s = &c.sources["ds24"];
    assert!(s.api_key.is_none());
    assert_eq!(s.api_url, "https://www.digistore24.com/api/call");
    assert_eq!(s.audit_every, None);
}

#[test]
fn api_key_accepts_every_secret_form_and_api_url_and_audit_every_are_read() {
    let env = FakeEnv::default()
        .var("DS24_API_KEY", "123-fromenv")
        .file("/etc/ipn-bridge/ds24-key", "123-fromfile\n")
        .file("/creds/ds24", "123-fromcred\n")
        .credentials("/creds");
    for (form, expected) in [
        ("\"123-plain\"", "123-plain"),
        ("{ env = \"DS24_API_KEY\" }", "123-fromenv"),
        ("{ file = \"/etc/ipn-bridge/ds24-key\" }", "123-fromfile"),
        ("{ credential = \"ds24\" }", "123-fromcred"),
    ] {
        let text = source_with(&format!(
            "api_key = {form}\napi_url = \"http://127.0.0.1:9/api/call/\"\naudit_every = \"1h\""
        ));
        let c = match parse_with(&text, &env) {
            Ok(loaded) => loaded.config,
            Err(e) => panic!("{form}: {e}"),
        };
        let s = &c.sources["ds24"];
        assert_eq!(
            s.api_key.as_ref().map(|k| k.expose_secret()),
            Some(expected)
        );
        assert_eq!(s.api_url, "http://127.0.0.1:9/api/call");
        assert_eq!(s.audit_every, Some(Duration::from_secs(3600)));
        assert!(!format!("{s:?}").contains(expected), "Debug shows the key");
    }
}

#[test]
fn api_key_errors_are_reported_at_their_line_and_column() {
    // Line 2 is `[source.ds24]`, line 3 the passphrase, line 4 the new key.
    let rows: &[(&str, (usize, usize), &str)] = &[
        (
            "api_key = \"\"",
            (4, 11),
            "`api_key` in [source.ds24]: is empty",
        ),
        (
            "api_key = { env = \"NOPE_DS24\" }",
            (4, 11),
            "environment variable `NOPE_DS24` is not set",
        ),
        (
            "api_url = \"ftp://x\"",
            (4, 11),
            "is not an http:// or https:// URL",
        ),
        (
            "api_url = \"https://x/api/call?key=1\"",
            (4, 11),
            "must not contain a query or fragment",
        ),
        (
            "api_key = \"k\"\naudit_every = \"soon\"",
            (5, 15),
            "`audit_every` in [source.ds24]",
        ),
        (
            "api_key = \"k\"\naudit_every = \"0s\"",
            (5, 15),
            "`audit_every` in [source.ds24]: must be longer than 0s",
        ),
        (
            "audit_every = \"1h\"",
            (4, 15),
            "`audit_every` in [source.ds24]: needs `api_key` in the same table",
        ),
        (
            "api_kee = \"k\"",
            (4, 1),
            "unknown key `api_kee` in [source.ds24]",
        ),
    ];
    for (lines, position, expected) in rows {
        let e = errors(&source_with(lines));
        assert_eq!(e.errors.len(), 1, "{lines}: {e}");
        assert_eq!(
            (e.errors[0].line, e.errors[0].column),
            *position,
            "{lines}: {e}"
        );
        assert!(e.to_string().contains(expected), "{lines}: {e}");
    }
}
