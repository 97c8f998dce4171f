//! `createBuyUrl` (reference §3.1, DEV-BUYURL): a personalised order link. [`BuyUrlRequest`]
//! is checked before anything is sent, against what the documentation states; every refusal
//! names the parameter (`buyer[country]`, `addons[1][currency]`…).

use serde_json::Value;

use super::client::{Client, Ds24Error, Params, bracket_key, text};

/// The arguments, each group as `(key, value)` pairs in command-line order.
#[derive(Debug, Clone, Default)]
pub struct BuyUrlRequest {
    pub product_id: String,
    pub buyer: Vec<(String, String)>,
    pub payment_plan: Vec<(String, String)>,
    pub tracking: Vec<(String, String)>,
    pub urls: Vec<(String, String)>,
    pub placeholders: Vec<(String, String)>,
    pub settings: Vec<(String, String)>,
    /// One entry per add-on, numbered from 0.
    pub addons: Vec<Vec<(String, String)>>,
    pub valid_until: Option<String>,
}

/// What `createBuyUrl` answered.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BuyUrl {
    pub id: Option<String>,
    pub url: String,
    /// Empty: never expires.
    pub valid_until: Option<String>,
    /// `none`, `ok` or `error`.
    pub upgrade_status: Option<String>,
}

/// A refused argument: the parameter as Digistore24 names it, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct Invalid {
    pub field: String,
    pub problem: String,
}

const BUYER_KEYS: [&str; 16] = [
    "email",
    "first_name",
    "last_name",
    "company",
    "street",
    "city",
    "zipcode",
    "state",
    "phone_no",
    "tax_id",
    "salutation",
    "title",
    "country",
    "readonly_keys",
    "id",
    "street2",
];
const READONLY_KEYS: [&str; 4] = ["all", "email", "email_and_name", "none"];
const PAYMENT_PLAN_KEYS: [&str; 12] = [
    "first_amount",
    "other_amounts",
    "currency",
    "number_of_installments",
    "first_billing_interval",
    "other_billing_intervals",
    "test_interval",
    "template",
    "upgrade_order_id",
    "upgrade_type",
    "tax_mode",
    "single_amount",
];
const TRACKING_KEYS: [&str; 11] = [
    "custom",
    "affiliate",
    "affiliate_priority",
    "campaignkey",
    "trackingkey",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "click_id",
];
const URL_KEYS: [&str; 3] = ["thankyou_url", "fallback_url", "upgrade_error_url"];
const ADDON_KEYS: [&str; 10] = [
    "product_id",
    "first_amount",
    "other_amounts",
    "single_amount",
    "default_quantity",
    "max_quantity_type",
    "max_quantity",
    "currency",
    "is_quantity_editable_before_purchase",
    "is_quantity_editable_after_purchase",
];
const PAY_METHODS: [&str; 6] = [
    "paypal",
    "sezzle",
    "creditcard",
    "elv",
    "banktransfer",
    "klarna",
];
/// Characters a placeholder value must not contain (DEV-BUYURL: `<`, `>`, `&`, `#`, `;`,
/// quote marks, acute accent, backtick).
const PLACEHOLDER_FORBIDDEN: [char; 9] = ['<', '>', '&', '#', ';', '"', '\'', '´', '`'];
/// `tracking[custom]` keeps at most 63 characters (APPKIT, Digistore24's own code).
const CUSTOM_MAX_CHARS: usize = 63;

fn invalid(field: String, problem: impl Into<String>) -> Invalid {
    Invalid {
        field,
        problem: problem.into(),
    }
}

fn is_amount(v: &str) -> bool {
    let (whole, frac) = v.split_once('.').unwrap_or((v, ""));
    !whole.is_empty()
        && whole.chars().all(|c| c.is_ascii_digit())
        && (!v.contains('.') || (!frac.is_empty() && frac.len() <= 2))
        && frac.chars().all(|c| c.is_ascii_digit())
}

fn is_digits(v: &str) -> bool {
    !v.is_empty() && v.chars().all(|c| c.is_ascii_digit())
}

fn is_yes_no(v: &str) -> bool {
    matches!(v, "Y" | "N")
}

fn check_amount(field: String, v: &str) -> Result<(), Invalid> {
    if is_amount(v) {
        Ok(())
    } else if v.contains(',') {
        Err(invalid(
            field,
            format!("`{v}` is not a decimal amount: use a dot, e.g. 17.99"),
        ))
    } else {
        Err(invalid(
            field,
            format!("`{v}` is not a decimal amount like 17.99"),
        ))
    }
}

fn check_currency(field: String, v: &str) -> Result<(), Invalid> {
    if v.len() == 3 && v.chars().all(|c| c.is_ascii_alphabetic()) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("`{v}` is not a 3-letter currency code like EUR"),
        ))
    }
}

fn check_known(group: &str, key: &str, known: &[&str]) -> Result<(), Invalid> {
    if known.contains(&key) {
        Ok(())
    } else {
        Err(invalid(
            bracket_key(group, &[key]),
            format!("unknown key; known: {}", known.join(", ")),
        ))
    }
}

/// `valid_until`: `forever`, a duration from now (`24h`, `30m`, `7d`, `6M`, `2Y`), a date
/// (`2026-12-31`) or a point in time (`2026-12-31 23:59:59`, ISO 8601 with a zone) — the forms
/// of DEV-4 that lie in the future.
pub fn check_valid_until(v: &str) -> Result<(), Invalid> {
    let ok = v == "forever" || is_relative(v) || is_date_time(v);
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "valid_until".into(),
            format!(
                "`{v}` is not `forever`, a duration like 24h/7d/6M, a date 2026-12-31 or a time 2026-12-31 23:59:59"
            ),
        ))
    }
}

fn is_relative(v: &str) -> bool {
    let v = v.strip_prefix('+').unwrap_or(v);
    match v.char_indices().last() {
        Some((i, unit)) => matches!(unit, 's' | 'm' | 'h' | 'd' | 'M' | 'Y') && is_digits(&v[..i]),
        None => false,
    }
}

fn is_date_time(v: &str) -> bool {
    let b = v.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    let date = b.len() >= 10
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10);
    if !date {
        return false;
    }
    if b.len() == 10 {
        return true;
    }
    let time = b.len() >= 19
        && (b[10] == b' ' || b[10] == b'T')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    if !time {
        return false;
    }
    let zone = &v[19..];
    zone.is_empty()
        || zone == "Z"
        || (zone.len() == 6
            && (zone.starts_with('+') || zone.starts_with('-'))
            && zone.as_bytes()[3] == b':'
            && is_digits(&zone[1..3])
            && is_digits(&zone[4..6]))
}

impl BuyUrlRequest {
    /// The checked parameters, in the named form (`product_id=…&buyer[email]=…`).
    pub fn params(&self) -> Result<Params, Invalid> {
        let mut p = Params::new();
        if !is_digits(&self.product_id) {
            return Err(invalid(
                "product_id".into(),
                format!(
                    "`{}` is not a Digistore24 product id (digits)",
                    self.product_id
                ),
            ));
        }
        p.set("product_id", self.product_id.clone());
        self.buyer(&mut p)?;
        for (k, v) in &self.payment_plan {
            check_known("payment_plan", k, &PAYMENT_PLAN_KEYS)?;
            let field = bracket_key("payment_plan", &[k]);
            match k.as_str() {
                "first_amount" | "other_amounts" | "single_amount" => check_amount(field, v)?,
                "currency" => check_currency(field, v)?,
                "number_of_installments" | "template" if !is_digits(v) => {
                    return Err(invalid(field, format!("`{v}` is not a whole number")));
                }
                "upgrade_type" if !matches!(v.as_str(), "upgrade" | "downgrade") => {
                    return Err(invalid(field, "must be `upgrade` or `downgrade`"));
                }
                "tax_mode" if !matches!(v.as_str(), "as_set" | "exclude" | "include") => {
                    return Err(invalid(field, "must be `as_set`, `exclude` or `include`"));
                }
                _ => {}
            }
            p.nested("payment_plan", &[k], upper_if(k == "currency", v));
        }
        for (k, v) in &self.tracking {
            check_known("tracking", k, &TRACKING_KEYS)?;
            let field = bracket_key("tracking", &[k]);
            if k == "custom" && v.chars().count() > CUSTOM_MAX_CHARS {
                return Err(invalid(
                    field,
                    format!("longer than {CUSTOM_MAX_CHARS} characters"),
                ));
            }
            if k == "affiliate_priority" && !matches!(v.as_str(), "as_set" | "email") {
                return Err(invalid(field, "must be `as_set` or `email`"));
            }
            p.nested("tracking", &[k], v.clone());
        }
        if let Some(v) = &self.valid_until {
            check_valid_until(v)?;
            p.set("valid_until", v.clone());
        }
        for (k, v) in &self.urls {
            check_known("urls", k, &URL_KEYS)?;
            if !v.starts_with("https://") || v.len() <= "https://".len() {
                return Err(invalid(
                    bracket_key("urls", &[k]),
                    format!("`{v}` is not an https:// URL (Digistore24 refuses others)"),
                ));
            }
            p.nested("urls", &[k], v.clone());
        }
        for (k, v) in &self.placeholders {
            let field = bracket_key("placeholders", &[k]);
            if k.is_empty()
                || !k
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(invalid(
                    field,
                    "the key may only use a-z, A-Z, 0-9, `_` and `-`",
                ));
            }
            if let Some(c) = v.chars().find(|c| PLACEHOLDER_FORBIDDEN.contains(c)) {
                return Err(invalid(
                    field,
                    format!("the value must not contain `{c}` (nor any of < > & # ; \" ' ´ `)"),
                ));
            }
            p.nested("placeholders", &[k], v.clone());
        }
        for (k, v) in &self.settings {
            // `img[987]` is a nested key of its own.
            let path: Vec<&str> = k
                .trim_end_matches(']')
                .split(['[', ']'])
                .filter(|s| !s.is_empty())
                .collect();
            let field = bracket_key("settings", &path);
            match k.as_str() {
                "force_rebilling" if !is_yes_no(v) => {
                    return Err(invalid(field, "must be Y or N"));
                }
                "voucher_1st_amount" | "voucher_oth_amounts" | "affiliate_commission_fix" => {
                    check_amount(field.clone(), v)?
                }
                "pay_methods" => {
                    for m in v.split(',').map(str::trim) {
                        if !PAY_METHODS.contains(&m) {
                            return Err(invalid(
                                field,
                                format!(
                                    "unknown payment method `{m}`; known: {}",
                                    PAY_METHODS.join(", ")
                                ),
                            ));
                        }
                    }
                }
                _ => {}
            }
            p.0.push((field, v.clone()));
        }
        for (i, addon) in self.addons.iter().enumerate() {
            let index = i.to_string();
            if !addon.iter().any(|(k, _)| k == "product_id") {
                return Err(invalid(
                    bracket_key("addons", &[&index, "product_id"]),
                    "every add-on needs a product_id",
                ));
            }
            for (k, v) in addon {
                let field = bracket_key("addons", &[&index, k]);
                if !ADDON_KEYS.contains(&k.as_str()) {
                    return Err(invalid(
                        field,
                        format!("unknown key; known: {}", ADDON_KEYS.join(", ")),
                    ));
                }
                match k.as_str() {
                    "product_id" | "default_quantity" | "max_quantity" if !is_digits(v) => {
                        return Err(invalid(field, format!("`{v}` is not a whole number")));
                    }
                    "first_amount" | "other_amounts" | "single_amount" => check_amount(field, v)?,
                    "currency" => check_currency(field, v)?,
                    "max_quantity_type"
                        if !matches!(v.as_str(), "unlimited" | "like_main_item" | "number") =>
                    {
                        return Err(invalid(
                            field,
                            "must be `unlimited`, `like_main_item` or `number`",
                        ));
                    }
                    "is_quantity_editable_before_purchase"
                    | "is_quantity_editable_after_purchase"
                        if !is_yes_no(v) =>
                    {
                        return Err(invalid(field, "must be Y or N"));
                    }
                    _ => {}
                }
                p.nested("addons", &[&index, k], upper_if(k == "currency", v));
            }
        }
        Ok(p)
    }

    fn buyer(&self, p: &mut Params) -> Result<(), Invalid> {
        let has = |key: &str| self.buyer.iter().any(|(k, v)| k == key && !v.is_empty());
        for (k, v) in &self.buyer {
            check_known("buyer", k, &BUYER_KEYS)?;
            let field = bracket_key("buyer", &[k]);
            match k.as_str() {
                "country" if !(v.len() == 2 && v.chars().all(|c| c.is_ascii_alphabetic())) => {
                    return Err(invalid(
                        field,
                        format!("`{v}` is not a 2-letter country code like DE"),
                    ));
                }
                "salutation" if !matches!(v.as_str(), "M" | "F") => {
                    return Err(invalid(field, "must be M or F"));
                }
                "readonly_keys" => {
                    if !READONLY_KEYS.contains(&v.as_str()) {
                        return Err(invalid(
                            field,
                            format!("`{v}` is not one of {}", READONLY_KEYS.join(", ")),
                        ));
                    }
                    let needed: &[&str] = match v.as_str() {
                        "email" | "all" => &["email"],
                        "email_and_name" => &["email", "first_name", "last_name"],
                        _ => &[],
                    };
                    if let Some(missing) = needed.iter().find(|k| !has(k)) {
                        return Err(invalid(
                            field,
                            format!(
                                "`{v}` makes buyer[{missing}] read-only, so it must be given too"
                            ),
                        ));
                    }
                }
                _ => {}
            }
            p.nested("buyer", &[k], upper_if(k == "country", v));
        }
        Ok(())
    }
}

fn upper_if(cond: bool, v: &str) -> String {
    if cond {
        v.to_ascii_uppercase()
    } else {
        v.to_owned()
    }
}

/// Calls `createBuyUrl` with parameters from [`BuyUrlRequest::params`].
pub async fn create(client: &Client, params: &Params) -> Result<BuyUrl, Ds24Error> {
    let data = client.call("createBuyUrl", params).await?;
    Ok(read(&data))
}

fn read(data: &Value) -> BuyUrl {
    BuyUrl {
        id: data.get("id").and_then(text),
        url: data.get("url").and_then(text).unwrap_or_default(),
        valid_until: data.get("valid_until").and_then(text),
        upgrade_status: data.get("upgrade_status").and_then(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> BuyUrlRequest {
        BuyUrlRequest {
            product_id: "512345".into(),
            ..BuyUrlRequest::default()
        }
    }

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn refused(r: BuyUrlRequest) -> String {
        match r.params() {
            Ok(p) => panic!("accepted: {p:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_group_becomes_bracket_parameters() {
        let mut r = request();
        r.buyer = kv(&[
            ("email", "a@b.de"),
            ("country", "de"),
            ("readonly_keys", "email"),
        ]);
        r.payment_plan = kv(&[("first_amount", "47.00"), ("currency", "eur")]);
        r.tracking = kv(&[("custom", "m:1")]);
        r.urls = kv(&[("thankyou_url", "https://x.example/t")]);
        r.placeholders = kv(&[("TITLE", "Basic (monthly)")]);
        r.settings = kv(&[("img[987]", "ABCD"), ("pay_methods", "paypal,creditcard")]);
        r.addons = vec![
            kv(&[("product_id", "7"), ("first_amount", "5")]),
            kv(&[("product_id", "8")]),
        ];
        r.valid_until = Some("forever".into());
        let p = r.params().expect("valid");
        for (k, v) in [
            ("product_id", "512345"),
            ("buyer[country]", "DE"),
            ("payment_plan[currency]", "EUR"),
            ("urls[thankyou_url]", "https://x.example/t"),
            ("placeholders[TITLE]", "Basic (monthly)"),
            ("settings[img][987]", "ABCD"),
            ("addons[0][product_id]", "7"),
            ("addons[0][first_amount]", "5"),
            ("addons[1][product_id]", "8"),
            ("valid_until", "forever"),
        ] {
            assert_eq!(p.get(k), Some(v), "{k} in {p:?}");
        }
    }

    #[test]
    fn each_documented_rule_is_checked_and_names_its_field() {
        let cases: Vec<(BuyUrlRequest, &str)> = vec![
            (
                BuyUrlRequest {
                    buyer: kv(&[("country", "DEU")]),
                    ..request()
                },
                "buyer[country]: `DEU` is not a 2-letter",
            ),
            (
                BuyUrlRequest {
                    buyer: kv(&[("readonly_keys", "some")]),
                    ..request()
                },
                "buyer[readonly_keys]: `some` is not one of",
            ),
            (
                BuyUrlRequest {
                    buyer: kv(&[("readonly_keys", "email")]),
                    ..request()
                },
                "buyer[readonly_keys]: `email` makes buyer[email] read-only",
            ),
            (
                BuyUrlRequest {
                    payment_plan: kv(&[("currency", "EURO")]),
                    ..request()
                },
                "payment_plan[currency]: `EURO` is not a 3-letter",
            ),
            (
                BuyUrlRequest {
                    payment_plan: kv(&[("first_amount", "17,99")]),
                    ..request()
                },
                "payment_plan[first_amount]: `17,99` is not a decimal amount: use a dot",
            ),
            (
                BuyUrlRequest {
                    payment_plan: kv(&[("first_amount", "1799c")]),
                    ..request()
                },
                "payment_plan[first_amount]",
            ),
            (
                BuyUrlRequest {
                    placeholders: kv(&[("TI TLE", "x")]),
                    ..request()
                },
                "placeholders[TI TLE]: the key may only use",
            ),
            (
                BuyUrlRequest {
                    placeholders: kv(&[("TITLE", "A & B")]),
                    ..request()
                },
                "placeholders[TITLE]: the value must not contain `&`",
            ),
            (
                BuyUrlRequest {
                    placeholders: kv(&[("TITLE", "it`s")]),
                    ..request()
                },
                "placeholders[TITLE]: the value must not contain ```",
            ),
            (
                BuyUrlRequest {
                    valid_until: Some("tomorrow".into()),
                    ..request()
                },
                "valid_until: `tomorrow` is not",
            ),
            (
                BuyUrlRequest {
                    valid_until: Some("-24h".into()),
                    ..request()
                },
                "valid_until",
            ),
            (
                BuyUrlRequest {
                    addons: vec![kv(&[("product_id", "1")]), kv(&[("first_amount", "1")])],
                    ..request()
                },
                "addons[1][product_id]: every add-on needs",
            ),
            (
                BuyUrlRequest {
                    addons: vec![kv(&[("product_id", "1"), ("currency", "E")])],
                    ..request()
                },
                "addons[0][currency]",
            ),
            (
                BuyUrlRequest {
                    urls: kv(&[("thankyou_url", "http://x")]),
                    ..request()
                },
                "urls[thankyou_url]: `http://x` is not an https://",
            ),
            (
                BuyUrlRequest {
                    product_id: "abc".into(),
                    ..request()
                },
                "product_id: `abc`",
            ),
        ];
        for (r, expected) in cases {
            let message = refused(r);
            assert!(
                message.contains(expected),
                "{message} does not contain {expected}"
            );
        }
    }

    #[test]
    fn valid_until_forms() {
        for ok in [
            "forever",
            "24h",
            "30m",
            "7d",
            "6M",
            "2Y",
            "2026-12-31",
            "2026-12-31 23:59:59",
            "2021-10-08T07:20:11-05:00",
            "2026-12-31T23:59:59Z",
        ] {
            assert!(check_valid_until(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "now",
            "-1d",
            "24",
            "h",
            "2026-13",
            "2026-12-31 25",
            "31.12.2026",
        ] {
            assert!(check_valid_until(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_answer_accepts_numbers_for_ids() {
        let b = read(
            &serde_json::json!({"id": 123456, "url": "https://www.checkout-ds24.com/offer/1", "valid_until": "", "upgrade_status": "none"}),
        );
        assert_eq!(b.id.as_deref(), Some("123456"));
        assert_eq!(b.valid_until, None);
    }
}
