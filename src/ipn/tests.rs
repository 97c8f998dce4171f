//! Tests of the IPN intake: Digistore24's published signature vectors, the signed fixture
//! bodies under `tests/fixtures/ipn/` (passphrase `fixture-passphrase`), refusals, form
//! decoding edge cases, the business-key table and property tests. Fixtures are pulled in
//! with `include_str!` relative to this file so the tests run the same in any crate that
//! includes this module.

use super::*;
use crate::domain::{EventKind, OrderEvent};
use proptest::prelude::*;
use secrecy::SecretString;
use sha2::{Digest, Sha512};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const FIXTURE_PASSPHRASE: &str = "fixture-passphrase";

macro_rules! fixture {
    ($name:literal) => {
        (
            $name,
            include_str!(concat!("../../tests/fixtures/ipn/", $name)),
        )
    };
}

const FIXTURES: &[(&str, &str)] = &[
    fixture!("01_on_payment_single_product.txt"),
    fixture!("03b_on_payment_subscription_first.txt"),
    fixture!("04_on_refund.txt"),
    fixture!("05_on_chargeback.txt"),
    fixture!("06_on_payment_missed.txt"),
    fixture!("07_payment_denial.txt"),
    fixture!("08_on_rebill_cancelled.txt"),
    fixture!("09_on_rebill_resumed.txt"),
    fixture!("10_connection_test.txt"),
    fixture!("11_last_paid_day.txt"),
    fixture!("12_on_affiliation.txt"),
    fixture!("13_eticket.txt"),
    fixture!("14_customform.txt"),
    fixture!("15_on_payment_followup_seq3.txt"),
    fixture!("16_on_payment_addon_item.txt"),
    fixture!("17_on_payment_lang_fr.txt"),
    fixture!("18_on_payment_test_mode.txt"),
    fixture!("19_on_payment_newsletter_optin.txt"),
    fixture!("20_on_payment_utf8_names.txt"),
    fixture!("21_on_payment_upper_signed.txt"),
];

fn fixture(name: &str) -> &'static str {
    FIXTURES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, body)| body.trim_end())
        .unwrap_or_else(|| panic!("no fixture {name}"))
}

fn secrets(list: &[&str]) -> Vec<SecretString> {
    list.iter()
        .map(|s| SecretString::from((*s).to_owned()))
        .collect()
}

fn fixture_secrets() -> Vec<SecretString> {
    secrets(&[FIXTURE_PASSPHRASE])
}

fn receive_fixture(name: &str) -> ReceivedIpn {
    receive(fixture(name).as_bytes(), &fixture_secrets()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A form encoder for the tests (space as `+`, everything but unreserved bytes escaped).
fn encode(pairs: &[(String, String)]) -> String {
    fn enc(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b' ' => "+".to_owned(),
                b if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) => char::from(b).to_string(),
                b => format!("%{b:02X}"),
            })
            .collect()
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// `body` with its `sha_sign` value replaced (or removed when `new` is `None`).
fn with_signature(body: &str, new: Option<&str>) -> String {
    let (head, _) = body
        .rsplit_once("&sha_sign=")
        .expect("fixture has sha_sign last");
    match new {
        Some(sig) => format!("{head}&sha_sign={sig}"),
        None => head.to_owned(),
    }
}

fn signature_of(body: &str) -> &str {
    body.rsplit_once("&sha_sign=").expect("sha_sign").1
}

fn signed(pairs: &[(&str, &str)], passphrase: &str, case: KeyCase) -> Vec<(String, String)> {
    let mut pairs = owned(pairs);
    let sig = sign(&pairs, passphrase, case);
    pairs.push(("sha_sign".to_owned(), sig));
    pairs
}

fn sha512_upper(s: &str) -> String {
    hex::encode_upper(Sha512::digest(s.as_bytes()))
}

// ---------------------------------------------------------------------------------------------
// Published vectors and fixtures

#[test]
fn published_vectors_sign_and_verify() {
    let json: serde_json::Value = serde_json::from_str(include_str!(
        "../../tests/fixtures/ipn-signature-vectors.json"
    ))
    .expect("vectors json");
    let passphrase = json["passphrase"].as_str().expect("passphrase");
    let vectors = json["vectors"].as_array().expect("vectors");
    assert_eq!(vectors.len(), 8);
    for vector in vectors {
        let name = vector["name"].as_str().expect("name");
        let expected = vector["sha_sign"].as_str().expect("sha_sign");
        let case = if vector["uppercase_keys"].as_bool().expect("flag") {
            KeyCase::Upper
        } else {
            KeyCase::Original
        };
        let mut pairs: Vec<(String, String)> = vector["params"]
            .as_object()
            .expect("params")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().expect("string value").to_owned()))
            .collect();
        assert_eq!(sign(&pairs, passphrase, case), expected, "sign: {name}");
        // Appended last, so it also wins over the vector's own DEADBEEF `sha_sign`.
        pairs.push(("sha_sign".to_owned(), expected.to_owned()));
        assert_eq!(
            verify(&pairs, &secrets(&[passphrase])),
            Ok(case),
            "verify: {name}"
        );
    }
}

#[test]
fn every_listed_fixture_verifies() {
    for (name, _) in FIXTURES {
        let received = receive_fixture(name);
        let expected_case = if name.starts_with("21_") {
            KeyCase::Upper
        } else {
            KeyCase::Original
        };
        assert_eq!(received.key_case, expected_case, "{name}");
        assert!(received.business_key.len() < 200, "{name}");
        assert!(received.business_key.is_ascii(), "{name}");
    }
}

fn fixture_dir() -> PathBuf {
    let from_manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ipn");
    let from_source = Path::new(file!())
        .parent()
        .map(|dir| dir.join("../../tests/fixtures/ipn"))
        .unwrap_or_default();
    [from_manifest, from_source]
        .into_iter()
        .find(|dir| dir.join("01_on_payment_single_product.txt").is_file())
        .expect("tests/fixtures/ipn not found")
}

#[test]
fn every_fixture_file_in_the_directory_verifies() {
    let mut checked = 0;
    for entry in std::fs::read_dir(fixture_dir()).expect("read fixture dir") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("txt") {
            continue;
        }
        let body = std::fs::read(&path).expect("read fixture");
        let body = body.strip_suffix(b"\n").unwrap_or(&body);
        let received =
            receive(body, &fixture_secrets()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!received.business_key.is_empty());
        checked += 1;
    }
    assert!(checked >= FIXTURES.len(), "only {checked} fixtures found");
}

#[test]
fn fixtures_have_the_expected_event_kinds() {
    use OrderEvent::*;
    let table: &[(&str, EventKind)] = &[
        (
            "01_on_payment_single_product.txt",
            EventKind::Order(Payment),
        ),
        ("04_on_refund.txt", EventKind::Order(Refund)),
        ("05_on_chargeback.txt", EventKind::Order(Chargeback)),
        ("06_on_payment_missed.txt", EventKind::Order(PaymentMissed)),
        ("07_payment_denial.txt", EventKind::Order(PaymentDenial)),
        (
            "08_on_rebill_cancelled.txt",
            EventKind::Order(RebillCancelled),
        ),
        ("09_on_rebill_resumed.txt", EventKind::Order(RebillResumed)),
        ("10_connection_test.txt", EventKind::ConnectionTest),
        ("11_last_paid_day.txt", EventKind::Order(LastPaidDay)),
        ("12_on_affiliation.txt", EventKind::Affiliation),
        ("13_eticket.txt", EventKind::Eticket),
        ("14_customform.txt", EventKind::CustomForm),
        ("15_on_payment_followup_seq3.txt", EventKind::Order(Payment)),
    ];
    for (name, kind) in table {
        assert_eq!(&receive_fixture(name).event.kind, kind, "{name}");
    }
}

#[test]
fn fixture_details_survive_decoding() {
    let utf8 = receive_fixture("20_on_payment_utf8_names.txt").event;
    assert_eq!(utf8.get("buyer_first_name"), Some("Jörg"));
    assert_eq!(utf8.get("buyer_last_name"), Some("Müller-Straße"));
    assert_eq!(utf8.get("address_city"), Some("Köln"));
    let payment = receive_fixture("01_on_payment_single_product.txt").event;
    assert_eq!(
        payment.get("product_name"),
        Some("Focus & Clarity Online Course")
    );
    assert_eq!(payment.get("address_phone_no"), Some("+1 541 555 0199"));
    assert_eq!(payment.get("address_street2"), None);
    assert_eq!(payment.value("address_street2"), Some(""));
    let followup = receive_fixture("15_on_payment_followup_seq3.txt").event;
    assert_eq!(followup.get("pay_sequence_no"), Some("3"));
    let addon = receive_fixture("16_on_payment_addon_item.txt").event;
    assert_eq!(addon.get("product_id"), Some("412350"));
    assert_eq!(addon.get("item_count"), Some("2"));
    let test_mode = receive_fixture("18_on_payment_test_mode.txt").event;
    assert_eq!(test_mode.get("api_mode"), Some("test"));
    assert_eq!(test_mode.get("pay_method"), Some("test"));
    let french = receive_fixture("17_on_payment_lang_fr.txt").event;
    assert_eq!(french.get("product_language"), Some("fr"));
}

// ---------------------------------------------------------------------------------------------
// Refusals

#[test]
fn tampered_value_is_refused() {
    let body = fixture("01_on_payment_single_product.txt");
    let tampered = body.replacen("&amount=97.00&", "&amount=9.00&", 1);
    assert_ne!(tampered, body);
    assert_eq!(
        receive(tampered.as_bytes(), &fixture_secrets()),
        Err(IpnError::BadSignature)
    );
}

#[test]
fn added_field_is_refused_but_added_empty_field_is_not() {
    let body = fixture("01_on_payment_single_product.txt");
    let (head, sig) = body.rsplit_once("&sha_sign=").expect("sha_sign");
    let added = format!("{head}&injected=1&sha_sign={sig}");
    assert_eq!(
        receive(added.as_bytes(), &fixture_secrets()),
        Err(IpnError::BadSignature)
    );
    // Empty values are not signed (Digistore24 sends many), so this one cannot be detected.
    let added_empty = format!("{head}&injected=&sha_sign={sig}");
    assert!(receive(added_empty.as_bytes(), &fixture_secrets()).is_ok());
}

#[test]
fn missing_or_empty_sha_sign_is_refused() {
    let body = fixture("01_on_payment_single_product.txt");
    for bad in [with_signature(body, None), with_signature(body, Some(""))] {
        let err = receive(bad.as_bytes(), &fixture_secrets()).expect_err("refused");
        assert_eq!(err, IpnError::MissingSignature);
        assert_eq!(err.http_status(), 403);
    }
    assert_eq!(
        receive(b"", &fixture_secrets()),
        Err(IpnError::MissingSignature)
    );
}

#[test]
fn wrong_passphrase_is_refused() {
    let body = fixture("01_on_payment_single_product.txt");
    let err = receive(body.as_bytes(), &secrets(&["not-the-passphrase"])).expect_err("refused");
    assert_eq!(err, IpnError::BadSignature);
    assert_eq!(err.http_status(), 403);
}

#[test]
fn truncated_or_padded_signature_is_refused() {
    let body = fixture("01_on_payment_single_product.txt");
    let sig = signature_of(body);
    let truncated = &sig[..sig.len() - 1];
    let padded = format!("{sig}0");
    for bad in [truncated, &padded, &sig[..64]] {
        assert_eq!(
            receive(
                with_signature(body, Some(bad)).as_bytes(),
                &fixture_secrets()
            ),
            Err(IpnError::BadSignature)
        );
    }
}

#[test]
fn lower_case_hex_is_accepted() {
    let body = fixture("01_on_payment_single_product.txt");
    let lower = signature_of(body).to_ascii_lowercase();
    let received = receive(
        with_signature(body, Some(&lower)).as_bytes(),
        &fixture_secrets(),
    )
    .expect("accepted");
    assert_eq!(received.key_case, KeyCase::Original);
}

#[test]
fn invalid_utf8_is_malformed_and_names_the_field() {
    let body = fixture("01_on_payment_single_product.txt");
    let bad = body.replacen("buyer_first_name=Jane", "buyer_first_name=J%FFne", 1);
    let err = receive(bad.as_bytes(), &fixture_secrets()).expect_err("refused");
    assert_eq!(err.http_status(), 400);
    assert!(matches!(err, IpnError::Malformed(_)));
    assert!(
        err.reason().contains("buyer_first_name"),
        "{}",
        err.reason()
    );
    assert!(!err.reason().contains("J\u{FFFD}ne"));
}

#[test]
fn second_passphrase_of_two_is_accepted() {
    let body = fixture("01_on_payment_single_product.txt");
    let received = receive(
        body.as_bytes(),
        &secrets(&["new-passphrase", FIXTURE_PASSPHRASE]),
    )
    .expect("accepted");
    assert_eq!(received.key_case, KeyCase::Original);
}

#[test]
fn no_usable_passphrase_fails_closed() {
    let body = fixture("01_on_payment_single_product.txt");
    assert_eq!(receive(body.as_bytes(), &[]), Err(IpnError::BadSignature));
    assert_eq!(
        receive(body.as_bytes(), &secrets(&["", ""])),
        Err(IpnError::BadSignature)
    );
    // A body signed with an empty passphrase is refused even when "" is configured.
    let pairs = signed(&[("event", "connection_test")], "", KeyCase::Original);
    assert_eq!(verify(&pairs, &secrets(&[""])), Err(IpnError::BadSignature));
}

#[test]
fn shasign_field_is_accepted_when_sha_sign_is_absent() {
    let mut pairs = owned(&[("event", "connection_test"), ("merchant_id", "1")]);
    let sig = sign(&pairs, "p", KeyCase::Upper);
    pairs.push(("SHASIGN".to_owned(), sig));
    assert_eq!(verify(&pairs, &secrets(&["p"])), Ok(KeyCase::Upper));
}

#[test]
fn the_last_sha_sign_is_the_one_checked() {
    let mut pairs = signed(&[("event", "connection_test")], "p", KeyCase::Original);
    pairs.push(("sha_sign".to_owned(), "00".to_owned()));
    assert_eq!(
        verify(&pairs, &secrets(&["p"])),
        Err(IpnError::BadSignature)
    );
    pairs.push(("sha_sign".to_owned(), String::new()));
    assert_eq!(
        verify(&pairs, &secrets(&["p"])),
        Err(IpnError::MissingSignature)
    );
}

#[test]
fn errors_map_to_status_reason_and_label_without_secrets() {
    let cases = [
        (IpnError::Malformed("x".to_owned()), 400, "malformed"),
        (IpnError::MissingSignature, 403, "missing_signature"),
        (IpnError::BadSignature, 403, "bad_signature"),
    ];
    for (err, status, label) in cases {
        assert_eq!(err.http_status(), status);
        assert_eq!(err.label(), label);
        assert!(!err.reason().is_empty());
        assert!(!err.reason().contains(FIXTURE_PASSPHRASE));
    }
}

// ---------------------------------------------------------------------------------------------
// Form decoding

fn parsed(body: &str) -> Vec<(String, String)> {
    parse_form(body.as_bytes()).expect("valid form")
}

#[test]
fn form_decodes_plus_and_percent_once() {
    assert_eq!(
        parsed("a=x+y%2Bz%20w&b=%2541&c%5Fd=1"),
        owned(&[("a", "x y+z w"), ("b", "%41"), ("c_d", "1")])
    );
}

#[test]
fn form_keeps_invalid_escapes_literally_like_php() {
    assert_eq!(
        parsed("a=%zz&b=%4&c=100%&d=%%41"),
        owned(&[("a", "%zz"), ("b", "%4"), ("c", "100%"), ("d", "%A")])
    );
}

#[test]
fn form_structure_edge_cases() {
    // Empty segments skipped, missing `=` means empty value, only the first `=` splits.
    assert_eq!(
        parsed("&flag&a=b=c&&d=&"),
        owned(&[("flag", ""), ("a", "b=c"), ("d", "")])
    );
    // An empty name is dropped, as PHP does.
    assert_eq!(parsed("=x&a=1&=&"), owned(&[("a", "1")]));
    assert_eq!(parsed(""), Vec::<(String, String)>::new());
}

#[test]
fn form_keeps_duplicates_and_array_names_in_order() {
    assert_eq!(
        parsed("a=1&items%5B0%5D=x&b=2&a=3"),
        owned(&[("a", "1"), ("items[0]", "x"), ("b", "2"), ("a", "3")])
    );
}

#[test]
fn form_does_not_trim_or_normalise() {
    assert_eq!(
        parsed("a=+x+&b=%09&c=A%0D%0AB"),
        owned(&[("a", " x "), ("b", "\t"), ("c", "A\r\nB")])
    );
}

#[test]
fn form_accepts_raw_utf8_and_refuses_invalid_utf8() {
    assert_eq!(
        parse_form("name=Jörg".as_bytes()),
        Ok(owned(&[("name", "Jörg")]))
    );
    assert_eq!(parsed("city=K%C3%B6ln"), owned(&[("city", "Köln")]));
    for bad in [&b"a=\xff"[..], b"a=%FF", b"a=%C0%AF", b"a=%C3"] {
        let err = parse_form(bad).expect_err("refused");
        assert!(
            matches!(&err, IpnError::Malformed(m) if m.contains("`a`")),
            "{err}"
        );
    }
    let err = parse_form(b"ok=1&%FF=1").expect_err("refused");
    assert!(err.reason().contains("field #2"), "{err}");
}

#[test]
fn loggable_names_are_cut_and_escaped() {
    assert_eq!(form::loggable_name("order_id"), "order_id");
    assert_eq!(form::loggable_name("a\nb"), "a\\nb");
    let long = "x".repeat(100);
    assert_eq!(form::loggable_name(&long).chars().count(), 65);
}

#[test]
fn receive_uses_the_last_value_of_a_duplicate_like_php() {
    let pairs = owned(&[
        ("event", "on_payment"),
        ("order_id", "AAAA1111"),
        ("order_id", "BBBB2222"),
    ]);
    let mut body_pairs = pairs.clone();
    body_pairs.push(("sha_sign".to_owned(), sign(&pairs, "p", KeyCase::Original)));
    let received = receive(encode(&body_pairs).as_bytes(), &secrets(&["p"])).expect("ok");
    assert_eq!(received.pairs.len(), 4);
    assert_eq!(received.event.order_id(), Some("BBBB2222"));
    // The signature is over the last value only.
    let last_only = owned(&[("event", "on_payment"), ("order_id", "BBBB2222")]);
    assert_eq!(
        sign(&pairs, "p", KeyCase::Original),
        sign(&last_only, "p", KeyCase::Original)
    );
}

// ---------------------------------------------------------------------------------------------
// Signature algorithm details

#[test]
fn sign_matches_the_hand_built_string() {
    let pairs = owned(&[
        ("placeholder_TITLE", "t"),
        ("b", "2"),
        ("a", ""),
        ("A", "1"),
        ("sha_sign", "x"),
        ("SHASIGN", "y"),
        ("placeholder_DESCRIPTION", "d"),
    ]);
    assert_eq!(
        sign(&pairs, "P", KeyCase::Original),
        sha512_upper("A=1Pb=2Pplaceholder_DESCRIPTION=dPplaceholder_TITLE=tP")
    );
}

#[test]
fn upper_convention_sorts_upper_names_and_breaks_ties_on_the_original() {
    let pairs = owned(&[("b", "2"), ("_x", "4"), ("a", "1"), ("B", "3")]);
    assert_eq!(
        sign(&pairs, "P", KeyCase::Upper),
        sha512_upper("A=1PB=3PB=2P_X=4P")
    );
    // Original convention: upper case before lower case, `_` between them.
    assert_eq!(
        sign(&pairs, "P", KeyCase::Original),
        sha512_upper("B=3P_x=4Pa=1Pb=2P")
    );
}

#[test]
fn sign_uses_the_last_value_and_then_skips_it_when_empty() {
    let pairs = owned(&[("a", "1"), ("b", "2"), ("a", "")]);
    assert_eq!(sign(&pairs, "P", KeyCase::Original), sha512_upper("b=2P"));
    let pairs = owned(&[("a", ""), ("a", "1")]);
    assert_eq!(sign(&pairs, "P", KeyCase::Original), sha512_upper("a=1P"));
}

#[test]
fn sign_output_is_128_upper_hex() {
    let sig = sign(&owned(&[("a", "1")]), "P", KeyCase::Original);
    assert_eq!(sig.len(), 128);
    assert!(
        sig.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    );
}

// ---------------------------------------------------------------------------------------------
// Business key

#[test]
fn business_key_format_for_order_events() {
    assert_eq!(
        receive_fixture("01_on_payment_single_product.txt").business_key,
        "on_payment/o:K7Q2M9XA/i:40118822/t:51840233"
    );
    assert_eq!(
        receive_fixture("04_on_refund.txt").business_key,
        "on_refund/o:K7Q2M9XA/i:40118822/t:51877310"
    );
    assert_eq!(
        receive_fixture("16_on_payment_addon_item.txt").business_key,
        "on_payment/o:K7Q2M9XA/i:40118823/t:51840233"
    );
    assert_eq!(
        receive_fixture("13_eticket.txt").business_key,
        "eticket/e:40131907000000000001/a:create"
    );
}

#[test]
fn business_key_table() {
    let key = |name: &str| receive_fixture(name).business_key;
    let payment = key("01_on_payment_single_product.txt");
    // Same body twice.
    assert_eq!(payment, key("01_on_payment_single_product.txt"));
    // Re-sent signed with the upper-case convention.
    assert_eq!(payment, key("21_on_payment_upper_signed.txt"));
    // Two items of one order (same order_id and transaction_id).
    assert_ne!(payment, key("16_on_payment_addon_item.txt"));
    // Refund / chargeback vs payment of the same order.
    assert_ne!(payment, key("04_on_refund.txt"));
    assert_ne!(payment, key("05_on_chargeback.txt"));
    // First payment vs follow-up payment of one subscription.
    assert_ne!(
        key("03b_on_payment_subscription_first.txt"),
        key("15_on_payment_followup_seq3.txt")
    );
    // Connection test: stable, digest form.
    let test = key("10_connection_test.txt");
    assert_eq!(test, key("10_connection_test.txt"));
    assert!(test.starts_with("connection_test/h:"), "{test}");
    assert_eq!(test.len(), "connection_test/h:".len() + 64);
}

#[test]
fn business_keys_of_all_fixtures_are_distinct_except_the_resend() {
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for (name, _) in FIXTURES {
        let key = receive_fixture(name).business_key;
        if let Some(previous) = seen.insert(key.clone(), name) {
            assert_eq!(
                (previous, *name),
                (
                    "01_on_payment_single_product.txt",
                    "21_on_payment_upper_signed.txt"
                ),
                "{key}"
            );
        }
    }
    assert_eq!(seen.len(), FIXTURES.len() - 1);
}

#[test]
fn connection_test_key_ignores_the_signature_convention() {
    let body = fixture("10_connection_test.txt");
    let pairs = parsed(body);
    let upper = sign(&pairs, FIXTURE_PASSPHRASE, KeyCase::Upper);
    let resent = receive(
        with_signature(body, Some(&upper)).as_bytes(),
        &fixture_secrets(),
    )
    .expect("upper accepted");
    assert_eq!(resent.key_case, KeyCase::Upper);
    assert_eq!(
        resent.business_key,
        receive_fixture("10_connection_test.txt").business_key
    );
}

fn key_of(pairs: &[(&str, &str)]) -> String {
    let fields: BTreeMap<String, String> = owned(pairs).into_iter().collect();
    business_key(&IpnEvent::new(fields))
}

#[test]
fn business_key_fallbacks() {
    // product_id when there is no order_item_id; parts left out when absent or empty.
    assert_eq!(
        key_of(&[
            ("event", "on_payment"),
            ("order_id", "A1"),
            ("product_id", "42"),
            ("order_item_id", "")
        ]),
        "on_payment/o:A1/p:42"
    );
    // A non-money event without rebill_stop_noted_at: the digest of its fields is added.
    let cancelled = key_of(&[
        ("event", "on_rebill_cancelled"),
        ("order_id", "A1"),
        ("transaction_id", "7"),
    ]);
    assert!(
        cancelled.starts_with("on_rebill_cancelled/o:A1/t:7/d:"),
        "{cancelled}"
    );
    assert_eq!(
        cancelled.len(),
        "on_rebill_cancelled/o:A1/t:7/d:".len() + 64
    );
    // No order_id: digest form.
    let no_order = key_of(&[("event", "on_payment"), ("product_id", "42")]);
    assert!(no_order.starts_with("on_payment/h:"), "{no_order}");
    // E-ticket without an action; without an id it is digested.
    assert_eq!(
        key_of(&[("event", "eticket"), ("eticket_id", "9")]),
        "eticket/e:9"
    );
    assert!(key_of(&[("event", "eticket")]).starts_with("eticket/h:"));
    // Unknown and missing events.
    assert!(
        key_of(&[("event", "on_something_new"), ("order_id", "A1")])
            .starts_with("on_something_new/h:")
    );
    assert!(key_of(&[("order_id", "A1")]).starts_with("-/h:"));
    // `custom_form` is keyed under its canonical name.
    assert!(key_of(&[("event", "custom_form")]).starts_with("customform/h:"));
}

#[test]
fn business_key_digest_ignores_signature_fields_and_empty_values() {
    let base = key_of(&[("event", "on_affiliation"), ("affiliate_name", "x")]);
    assert_eq!(
        base,
        key_of(&[
            ("event", "on_affiliation"),
            ("affiliate_name", "x"),
            ("sha_sign", "AB"),
            ("SHASIGN", "CD"),
            ("note", ""),
        ])
    );
    assert_ne!(
        base,
        key_of(&[("event", "on_affiliation"), ("affiliate_name", "y")])
    );
    // Length prefixes keep name/value boundaries apart.
    assert_ne!(
        key_of(&[("event", "x"), ("ab", "c")]),
        key_of(&[("event", "x"), ("a", "bc")])
    );
}

#[test]
fn business_key_escapes_values_and_stays_short() {
    assert_eq!(
        key_of(&[
            ("event", "on_payment"),
            ("order_id", "A/B:C é"),
            ("order_item_id", "1")
        ]),
        "on_payment/o:A%2FB%3AC%20%C3%A9/i:1"
    );
    let long = "Z".repeat(300);
    let overlong = key_of(&[("event", "on_payment"), ("order_id", long.as_str())]);
    assert!(overlong.starts_with("on_payment/x:"), "{overlong}");
    assert!(overlong.len() < 200);
    assert_ne!(
        overlong,
        key_of(&[
            ("event", "on_payment"),
            ("order_id", "Y".repeat(300).as_str())
        ])
    );
    let long_event = key_of(&[("event", "e".repeat(500).as_str())]);
    assert!(long_event.len() < 200, "{}", long_event.len());
}

// ---------------------------------------------------------------------------------------------
// Properties

/// Distinct names, no two of which differ only in case (such bodies are refused, see
/// `names_that_differ_only_in_case_are_refused`).
fn pair_sets() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::btree_map("[A-Za-z_][A-Za-z0-9_]{0,11}", "\\PC{0,16}", 1..12)
        .prop_map(|map| {
            let mut seen = std::collections::HashSet::new();
            map.into_iter()
                .filter(|(k, _)| k != "sha_sign" && k != "SHASIGN")
                .filter(|(k, _)| seen.insert(k.to_ascii_lowercase()))
                .collect::<Vec<_>>()
        })
        .prop_shuffle()
}

fn any_case() -> impl Strategy<Value = KeyCase> {
    prop_oneof![Just(KeyCase::Original), Just(KeyCase::Upper)]
}

proptest! {
    #[test]
    fn sign_then_verify_round_trips(
        pairs in pair_sets(),
        passphrase in "[ -~]{1,24}",
        case in any_case(),
        lower in any::<bool>(),
    ) {
        let sig = sign(&pairs, &passphrase, case);
        let sig = if lower { sig.to_ascii_lowercase() } else { sig };
        let mut with_sig = pairs.clone();
        with_sig.push(("sha_sign".to_owned(), sig.clone()));
        let matched = verify(&with_sig, &secrets(&["other", passphrase.as_str()]));
        prop_assert!(matched.is_ok(), "{:?}", matched);
        let matched = matched.unwrap_or(case);
        // Original wins when both conventions give the same signature (no lower-case names).
        prop_assert!(
            matched == case || sign(&pairs, &passphrase, matched).eq_ignore_ascii_case(&sig)
        );
        // The same pairs survive a trip through the form encoding.
        let received = receive(encode(&with_sig).as_bytes(), &secrets(&[passphrase.as_str()]));
        prop_assert!(received.is_ok(), "{:?}", received);
        if let Ok(received) = received {
            prop_assert_eq!(received.pairs, with_sig);
        }
    }

    #[test]
    fn changing_a_signed_value_breaks_the_signature(
        pairs in pair_sets(),
        passphrase in "[ -~]{1,24}",
        case in any_case(),
        index in any::<prop::sample::Index>(),
        replacement in "\\PC{0,16}",
    ) {
        let signed_positions: Vec<usize> =
            (0..pairs.len()).filter(|&i| !pairs[i].1.is_empty()).collect();
        prop_assume!(!signed_positions.is_empty());
        let at = signed_positions[index.index(signed_positions.len())];
        prop_assume!(pairs[at].1 != replacement);
        let sig = sign(&pairs, &passphrase, case);
        let mut tampered = pairs.clone();
        tampered[at].1 = replacement;
        tampered.push(("sha_sign".to_owned(), sig));
        prop_assert_eq!(
            verify(&tampered, &secrets(&[passphrase.as_str()])),
            Err(IpnError::BadSignature)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Case of field names (issue 9, defect 1)

/// The upper-case-signed fixture with every field name passed through `rename`, signed again
/// under the upper-case convention.
fn upper_signed_renamed(rename: impl Fn(&str) -> String) -> String {
    let pairs: Vec<(String, String)> = parsed(fixture("21_on_payment_upper_signed.txt"))
        .into_iter()
        .filter(|(k, _)| k != "sha_sign")
        .map(|(k, v)| (rename(&k), v))
        .collect();
    let sig = sign(&pairs, FIXTURE_PASSPHRASE, KeyCase::Upper);
    let mut body = pairs;
    body.push(("sha_sign".to_owned(), sig));
    encode(&body)
}

#[test]
fn issue9_defect1_case_variants_of_an_upper_signed_ipn_are_the_same_ipn() {
    let original = receive_fixture("21_on_payment_upper_signed.txt");
    let only = |wanted: &'static str, to: &'static str| {
        move |k: &str| {
            if k == wanted {
                to.to_owned()
            } else {
                k.to_owned()
            }
        }
    };
    let variants = [
        upper_signed_renamed(only("transaction_id", "TRANSACTION_ID")),
        upper_signed_renamed(only("transaction_id", "Transaction_Id")),
        upper_signed_renamed(|k| k.to_ascii_uppercase()),
    ];
    for body in &variants {
        let received = receive(body.as_bytes(), &fixture_secrets()).expect("still verifies");
        assert_eq!(received.business_key, original.business_key);
        assert_eq!(received.event, original.event, "the same event");
        assert_eq!(received.event.get("transaction_id"), Some("51840233"));
    }
    assert_eq!(
        original.business_key,
        "on_payment/o:K7Q2M9XA/i:40118822/t:51840233"
    );
}

#[test]
fn names_that_differ_only_in_case_are_refused() {
    // A signed body, plus an empty twin of a signed name: the signature still matches under
    // the upper-case convention (empty values are not signed), but the meaning is ambiguous.
    let body = format!(
        "{}&TRANSACTION_ID=",
        fixture("21_on_payment_upper_signed.txt")
    );
    let err = receive(body.as_bytes(), &fixture_secrets()).expect_err("refused");
    assert_eq!(err.http_status(), 400);
    assert_eq!(
        err.reason(),
        "malformed form body: the fields `TRANSACTION_ID` and `transaction_id` differ only in the case of their names"
    );
    // Two signed twins under the original convention: refused as well.
    let pairs = signed(
        &[
            ("event", "on_payment"),
            ("order_id", "A1"),
            ("Order_Id", "B2"),
        ],
        "p",
        KeyCase::Original,
    );
    assert!(matches!(
        receive(encode(&pairs).as_bytes(), &secrets(&["p"])),
        Err(IpnError::Malformed(_))
    ));
}

#[test]
fn mixed_case_names_are_found_in_any_case() {
    // Digistore24 sends some mixed-case names (`placeholder_DESCRIPTION` in a live capture).
    let pairs = signed(
        &[
            ("event", "on_payment"),
            ("order_id", "A1"),
            ("placeholder_DESCRIPTION", "Full access"),
        ],
        "p",
        KeyCase::Original,
    );
    let received = receive(encode(&pairs).as_bytes(), &secrets(&["p"])).expect("ok");
    assert_eq!(received.key_case, KeyCase::Original);
    let event = &received.event;
    assert_eq!(event.get("placeholder_DESCRIPTION"), Some("Full access"));
    assert_eq!(event.get("placeholder_description"), Some("Full access"));
    assert!(
        event
            .fields()
            .any(|(name, _)| name == "placeholder_description")
    );
    assert!(
        received
            .pairs
            .iter()
            .any(|(k, _)| k == "placeholder_DESCRIPTION"),
        "the raw pairs keep the names as sent"
    );
}

// ---------------------------------------------------------------------------------------------
// Repeated non-money events

#[test]
fn keys_of_money_events_are_what_earlier_versions_stored() {
    // Literal keys computed by the version before non-money events got their own part: a
    // resend of any of these after an upgrade must still be a duplicate.
    let table = [
        (
            "01_on_payment_single_product.txt",
            "on_payment/o:K7Q2M9XA/i:40118822/t:51840233",
        ),
        (
            "21_on_payment_upper_signed.txt",
            "on_payment/o:K7Q2M9XA/i:40118822/t:51840233",
        ),
        (
            "16_on_payment_addon_item.txt",
            "on_payment/o:K7Q2M9XA/i:40118823/t:51840233",
        ),
        (
            "04_on_refund.txt",
            "on_refund/o:K7Q2M9XA/i:40118822/t:51877310",
        ),
        (
            "05_on_chargeback.txt",
            "on_chargeback/o:K7Q2M9XA/i:40118822/t:51902417",
        ),
        (
            "03b_on_payment_subscription_first.txt",
            "on_payment/o:M4X9T2RB/i:40099871/t:51790022",
        ),
        (
            "15_on_payment_followup_seq3.txt",
            "on_payment/o:M4X9T2RB/i:40099871/t:51836190",
        ),
        ("13_eticket.txt", "eticket/e:40131907000000000001/a:create"),
    ];
    for (name, key) in table {
        assert_eq!(receive_fixture(name).business_key, key, "{name}");
    }
}

#[test]
fn cancelled_resumed_cancelled_again_are_three_events_and_a_resend_is_one() {
    let cancelled = receive_fixture("08_on_rebill_cancelled.txt");
    assert_eq!(
        cancelled.business_key,
        "on_rebill_cancelled/o:M4X9T2RB/i:40099871/t:51836190/s:2025-03-22%2018%3A05%3A13"
    );
    let resumed = receive_fixture("09_on_rebill_resumed.txt");
    assert!(
        resumed
            .business_key
            .starts_with("on_rebill_resumed/o:M4X9T2RB/i:40099871/t:51836190/d:"),
        "no rebill_stop_noted_at: the digest part: {}",
        resumed.business_key
    );
    // Cancelled again later: same order, item and last payment, a new stop time.
    let mut again = parsed(fixture("08_on_rebill_cancelled.txt"));
    again.retain(|(k, _)| k != "sha_sign");
    for (k, v) in &mut again {
        if k == "rebill_stop_noted_at" {
            *v = "2025-04-02 09:12:44".to_owned();
        }
    }
    let sig = sign(&again, FIXTURE_PASSPHRASE, KeyCase::Original);
    again.push(("sha_sign".to_owned(), sig));
    let body = encode(&again);
    let again = receive(body.as_bytes(), &fixture_secrets()).expect("verifies");
    assert_ne!(again.business_key, cancelled.business_key);
    // A byte-identical resend, also one signed under the other convention: the same key.
    let resent = receive(body.as_bytes(), &fixture_secrets()).expect("verifies");
    assert_eq!(resent.business_key, again.business_key);
    let resumed_upper = receive(
        with_signature(
            fixture("09_on_rebill_resumed.txt"),
            Some(&sign(
                &parsed(fixture("09_on_rebill_resumed.txt")),
                FIXTURE_PASSPHRASE,
                KeyCase::Upper,
            )),
        )
        .as_bytes(),
        &fixture_secrets(),
    )
    .expect("verifies");
    assert_eq!(resumed_upper.business_key, resumed.business_key);
    // A resumed event that differs in any signed field is a new one.
    let mut changed = parsed(fixture("09_on_rebill_resumed.txt"));
    changed.retain(|(k, _)| k != "sha_sign");
    for (k, v) in &mut changed {
        if k == "next_payment_at" {
            *v = "2025-05-10".to_owned();
        }
    }
    let sig = sign(&changed, FIXTURE_PASSPHRASE, KeyCase::Original);
    changed.push(("sha_sign".to_owned(), sig));
    let changed = receive(encode(&changed).as_bytes(), &fixture_secrets()).expect("verifies");
    assert_ne!(changed.business_key, resumed.business_key);
    // Every other non-money event gets its own part too.
    for name in [
        "06_on_payment_missed.txt",
        "07_payment_denial.txt",
        "11_last_paid_day.txt",
    ] {
        let key = receive_fixture(name).business_key;
        assert!(key.contains("/s:") || key.contains("/d:"), "{name}: {key}");
    }
}

// ---------------------------------------------------------------------------------------------
// The borrowed, sorted code (issue 13) against the simple formulation it replaced
// (`reference.rs`: owned pairs, a `BTreeMap` per convention, every hash computed)

/// Bodies built from pieces that exercise every decoding rule: separators, escapes valid and
/// invalid, `+`, bytes that are not UTF-8 raw or once decoded, names equal but for case,
/// duplicates, array names, both signature fields.
fn form_bodies() -> impl Strategy<Value = Vec<u8>> {
    let pieces: Vec<&'static [u8]> = vec![
        b"&",
        b"&",
        b"=",
        b"=",
        b"a",
        b"A",
        b"b",
        b"_x",
        b"event",
        b"on_payment",
        b"order_id",
        b"ORDER_ID",
        b"sha_sign",
        b"SHASIGN",
        b"%",
        b"%4",
        b"%41",
        b"%zz",
        b"%C3%A9",
        b"%FF",
        b"%2B",
        b"%26",
        b"%3D",
        b"+",
        b"[",
        b"]",
        b"\xc3\xa9",
        b"\xff",
        b"1",
        b"x y",
    ];
    prop::collection::vec(prop::sample::select(pieces), 0..48).prop_map(|parts| parts.concat())
}

/// Pairs with repeated names, names equal but for case, empty values and signature fields.
fn messy_pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    let names = prop::sample::select(vec![
        "a",
        "A",
        "b",
        "B",
        "_x",
        "event",
        "order_id",
        "ORDER_ID",
        "transaction_id",
        "product_id",
        "SHASIGN",
        "n[1]",
        "é",
    ]);
    let values = prop::sample::select(vec!["", "", "1", "on_payment", "AB12", "x y", "é&="]);
    prop::collection::vec((names, values), 0..10).prop_map(|pairs| {
        pairs
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
            .collect()
    })
}

/// How the signature of [`messy_pairs`] is given: by which passphrase (index into the
/// candidates) and convention, in which case of hex, or not at all, or wrong.
#[derive(Debug, Clone)]
enum Given {
    Signed(usize, KeyCase, bool),
    Absent,
    Empty,
    Garbage(String),
}

impl Given {
    /// `pairs` with the signature field `sig_name` as given (signed by `candidates[i]`).
    fn apply(
        &self,
        pairs: &[(String, String)],
        candidates: &[String],
        sig_name: &str,
    ) -> Vec<(String, String)> {
        let mut body_pairs = pairs.to_vec();
        let value = match self {
            Given::Signed(i, key_case, lower) => {
                let sig = reference::sign(pairs, &candidates[*i], *key_case);
                Some(if *lower {
                    sig.to_ascii_lowercase()
                } else {
                    sig
                })
            }
            Given::Absent => None,
            Given::Empty => Some(String::new()),
            Given::Garbage(g) => Some(g.clone()),
        };
        body_pairs.extend(value.map(|v| (sig_name.to_owned(), v)));
        body_pairs
    }
}

fn given() -> impl Strategy<Value = Given> {
    prop_oneof![
        4 => (0..3usize, any_case(), any::<bool>()).prop_map(|(i, c, l)| Given::Signed(i, c, l)),
        1 => Just(Given::Absent),
        1 => Just(Given::Empty),
        1 => "[0-9A-Fa-fz]{0,130}".prop_map(Given::Garbage),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn borrowed_parser_matches_the_reference(body in form_bodies()) {
        prop_assert_eq!(parse_form(&body), reference::parse_form(&body));
    }

    #[test]
    fn receive_and_accept_match_the_reference_on_arbitrary_bodies(body in form_bodies()) {
        // Mostly refusals (unsigned bodies): the same error, or the same everything.
        let passphrases = secrets(&["p"]);
        let fast = receive(&body, &passphrases);
        prop_assert_eq!(&fast, &reference::receive(&body, &passphrases));
        let accepted = accept(&body, &passphrases);
        prop_assert_eq!(accepted, fast.map(|r| AcceptedIpn {
            event: r.event,
            business_key: r.business_key,
            key_case: r.key_case,
        }));
    }

    #[test]
    fn sorted_verifier_matches_the_reference(
        pairs in messy_pairs(),
        candidates in prop::collection::vec("[a-c]{0,2}", 3),
        configured in prop::collection::vec(0..3usize, 0..3),
        given in given(),
        sig_name in prop::sample::select(vec!["sha_sign", "SHASIGN"]),
    ) {
        for key_case in [KeyCase::Original, KeyCase::Upper] {
            for passphrase in &candidates {
                prop_assert_eq!(
                    sign(&pairs, passphrase, key_case),
                    reference::sign(&pairs, passphrase, key_case)
                );
            }
        }
        let body_pairs = given.apply(&pairs, &candidates, sig_name);
        let configured: Vec<&str> = configured.iter().map(|&i| candidates[i].as_str()).collect();
        let passphrases = secrets(&configured);
        prop_assert_eq!(
            verify(&body_pairs, &passphrases),
            reference::verify(&body_pairs, &passphrases)
        );
        let body = encode(&body_pairs);
        prop_assert_eq!(
            receive(body.as_bytes(), &passphrases),
            reference::receive(body.as_bytes(), &passphrases)
        );
    }
}

#[test]
fn accept_and_receive_agree_on_every_fixture() {
    for (name, body) in FIXTURES {
        let received = receive_fixture(name);
        let accepted = accept(body.as_bytes(), &fixture_secrets()).expect(name);
        assert_eq!(accepted.event, received.event, "{name}");
        assert_eq!(accepted.business_key, received.business_key, "{name}");
        assert_eq!(accepted.key_case, received.key_case, "{name}");
        assert_eq!(
            Ok(received),
            reference::receive(body.as_bytes(), &fixture_secrets()),
            "{name}"
        );
    }
}

/// The general path alone (what [`accept`] did before the plain path of issue 13, round 3).
fn accept_generally(body: &[u8], passphrases: &[SecretString]) -> Result<AcceptedIpn, IpnError> {
    accept_pairs(&form::parse_pairs(body)?, passphrases)
}

#[test]
fn every_fixture_but_the_upper_signed_one_takes_the_plain_path() {
    for (name, body) in FIXTURES {
        let body = body.trim_end().as_bytes();
        let plain = plain::accept(body, &fixture_secrets());
        if *name == "21_on_payment_upper_signed.txt" {
            assert_eq!(plain, None, "upper-case names are left to the general path");
            continue;
        }
        assert_eq!(
            plain.map(Ok),
            Some(accept_generally(body, &fixture_secrets())),
            "{name}"
        );
    }
    let capture = include_str!("../../tests/fixtures/ipn/20_capture_digital_no_address.txt");
    assert!(plain::accept(capture.trim_end().as_bytes(), &fixture_secrets()).is_some());
}

#[test]
fn bodies_the_general_path_warns_about_or_refuses_are_left_to_it() {
    let fixture_passphrases = fixture_secrets();
    let sign_body = |pairs: &[(&str, &str)]| {
        let pairs = owned(pairs);
        let signature = sign(&pairs, FIXTURE_PASSPHRASE, KeyCase::Original);
        format!("{}&sha_sign={signature}", encode(&pairs))
    };
    let plain_body = sign_body(&[("event", "on_payment"), ("order_id", "A1")]);
    assert!(plain::accept(plain_body.as_bytes(), &fixture_passphrases).is_some());
    let left_to_the_general_path = [
        // a repeated name (warned), an array name (warned), an empty name (dropped, warned)
        format!("order_id=A0&{plain_body}"),
        format!("{}&n%5B1%5D=x", sign_body(&[("event", "on_payment")])),
        format!("=x&{plain_body}"),
        // an invalid escape (kept, warned), a value that is not UTF-8 once decoded (refused)
        format!("{plain_body}&note=100%"),
        format!("{plain_body}&note=%FF"),
        // two names equal but for case (refused)
        format!("{plain_body}&Order_ID="),
        // no signature, an empty one, one under `SHASIGN`, a wrong one
        "event=on_payment".to_owned(),
        format!("{plain_body}&sha_sign="),
        plain_body.replace("sha_sign=", "SHASIGN="),
        plain_body.replace("sha_sign=", "sha_sign=00"),
    ];
    for body in &left_to_the_general_path {
        assert_eq!(
            plain::accept(body.as_bytes(), &fixture_passphrases),
            None,
            "{body}"
        );
    }
    // A body that is not UTF-8 (refused).
    let not_utf8 = [plain_body.as_bytes(), b"&note=\xff"].concat();
    assert_eq!(plain::accept(&not_utf8, &fixture_passphrases), None);
    // Names with upper case, as in Digistore24's capture, are plain: lowered in the event.
    let mixed = sign_body(&[
        ("event", "on_payment"),
        ("placeholder_TITLE", "T"),
        ("ZZ", "z"),
    ]);
    let accepted = plain::accept(mixed.as_bytes(), &fixture_passphrases).expect("plain");
    assert_eq!(
        Ok(accepted.clone()),
        accept_generally(mixed.as_bytes(), &fixture_passphrases)
    );
    let names: Vec<&str> = accepted.event.fields().map(|(name, _)| name).collect();
    assert_eq!(names, ["event", "placeholder_title", "sha_sign", "zz"]);
    // Signed under the upper-case convention, or by the second passphrase only.
    let pairs = owned(&[("event", "on_payment"), ("order_id", "A1")]);
    let upper = sign(&pairs, FIXTURE_PASSPHRASE, KeyCase::Upper);
    let upper_body = format!("{}&sha_sign={upper}", encode(&pairs));
    assert_eq!(
        plain::accept(upper_body.as_bytes(), &fixture_passphrases),
        None
    );
    assert!(accept(upper_body.as_bytes(), &fixture_passphrases).is_ok());
    let two = secrets(&["other", FIXTURE_PASSPHRASE]);
    assert_eq!(plain::accept(plain_body.as_bytes(), &two), None);
    assert_eq!(
        accept(plain_body.as_bytes(), &two).map(|a| a.key_case),
        Ok(KeyCase::Original)
    );
    // An empty first passphrase is skipped, as the general path skips it.
    let empty_first = secrets(&["", FIXTURE_PASSPHRASE]);
    assert!(plain::accept(plain_body.as_bytes(), &empty_first).is_some());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Whenever the plain path answers, it answers what the general path would.
    #[test]
    fn the_plain_path_answers_as_the_general_path_or_not_at_all(
        pairs in messy_pairs(),
        candidates in prop::collection::vec("[a-c]{0,2}", 3),
        configured in prop::collection::vec(0..3usize, 0..3),
        given in given(),
        noise in form_bodies(),
    ) {
        let body_pairs = given.apply(&pairs, &candidates, "sha_sign");
        let configured: Vec<&str> = configured.iter().map(|&i| candidates[i].as_str()).collect();
        let passphrases = secrets(&configured);
        let body = encode(&body_pairs);
        let noisy = [body.as_bytes(), b"&", &noise].concat();
        for body in [body.as_bytes(), noise.as_slice(), noisy.as_slice()] {
            if let Some(plain) = plain::accept(body, &passphrases) {
                prop_assert_eq!(Ok(plain), accept_generally(body, &passphrases));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1_000))]

    /// A body signed by the first passphrase under the original convention, with distinct
    /// names (upper case, non-ASCII and encoded characters among them) and any values, empty
    /// ones included, takes the plain path, which answers as the general path.
    #[test]
    fn clean_signed_bodies_take_the_plain_path(
        pairs in prop::collection::btree_map(
            "[a-z_][a-zA-Z0-9_é+&=% ]{0,12}",
            "[a-zA-Z0-9 é&=%+/:@.-]{0,16}",
            0..30,
        )
        .prop_map(|fields| {
            let mut folded = std::collections::BTreeSet::new();
            fields
                .into_iter()
                .filter(|(name, _)| folded.insert(name.to_ascii_lowercase()))
                .filter(|(name, _)| !signature::SIGNATURE_FIELDS.contains(&name.as_str()))
                .collect::<Vec<(String, String)>>()
        })
        .prop_shuffle(),
        lower_hex in any::<bool>(),
    ) {
        let signature = sign(&pairs, "p", KeyCase::Original);
        let signature = if lower_hex { signature.to_ascii_lowercase() } else { signature };
        let body = format!("{}&sha_sign={signature}", encode(&pairs));
        let passphrases = secrets(&["", "p", "q"]);
        let plain = plain::accept(body.as_bytes(), &passphrases);
        prop_assert!(plain.is_some(), "{}", body);
        prop_assert_eq!(plain.map(Ok), Some(accept_generally(body.as_bytes(), &passphrases)));
    }
}

#[test]
fn the_order_of_the_previous_body_is_only_a_guess() {
    // Same names in another order, other names of the same number, then the first again:
    // each sorts right, whether or not the previous body's order fits.
    let secrets = fixture_secrets();
    let bodies: [&[(&str, &str)]; 4] = [
        &[("b", "2"), ("a", "1"), ("c", "3")],
        &[("c", "3"), ("b", "2"), ("a", "1")],
        &[("y", "2"), ("x", "1"), ("z", "3")],
        &[("b", "2"), ("a", "1"), ("c", "3")],
    ];
    for fields in bodies {
        let pairs = owned(fields);
        let signature = sign(&pairs, FIXTURE_PASSPHRASE, KeyCase::Original);
        let body = format!("{}&sha_sign={signature}", encode(&pairs));
        let accepted = plain::accept(body.as_bytes(), &secrets).expect("plain");
        let mut expected: Vec<&str> = fields.iter().map(|(name, _)| *name).collect();
        expected.push("sha_sign");
        expected.sort_unstable();
        let names: Vec<&str> = accepted.event.fields().map(|(name, _)| name).collect();
        assert_eq!(names, expected);
        assert_eq!(Ok(accepted), accept_generally(body.as_bytes(), &secrets));
    }
}

#[test]
fn many_upper_case_names_are_sorted_in_and_twins_among_them_left_to_the_general_path() {
    let passphrases = fixture_secrets();
    let sign_body = |pairs: &[(String, String)]| {
        let signature = sign(pairs, FIXTURE_PASSPHRASE, KeyCase::Original);
        format!("{}&sha_sign={signature}", encode(pairs))
    };
    let mut pairs: Vec<(String, String)> = (0..40)
        .map(|i| (format!("Field_{i:02}"), format!("v{i}")))
        .collect();
    pairs.push(("event".to_owned(), "connection_test".to_owned()));
    let body = sign_body(&pairs);
    let accepted = plain::accept(body.as_bytes(), &passphrases).expect("plain");
    assert_eq!(
        Ok(accepted.clone()),
        accept_generally(body.as_bytes(), &passphrases)
    );
    assert_eq!(accepted.event.get("field_07"), Some("v7"));
    let names: Vec<&str> = accepted.event.fields().map(|(name, _)| name).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted);

    pairs.push(("FIELD_07".to_owned(), "twin".to_owned()));
    let twins = sign_body(&pairs);
    assert_eq!(plain::accept(twins.as_bytes(), &passphrases), None);
    assert!(matches!(
        accept(twins.as_bytes(), &passphrases),
        Err(IpnError::Malformed(_))
    ));
}
