//! State, province and region names → the subdivision codes Konnektive takes.
//!
//! Konnektive wants an "abbreviated state code (varies from country to country)" of at most 6
//! characters; its v2 states list uses the ISO 3166-2 subdivision suffix without the country
//! prefix: US `NY`, DE `BY`, AT the digits `1`–`9` (reference `konnektive-api.md` §5, "State").
//! Digistore24's order form lets buyers write the name out ("California", "Bayern"), so the
//! rules turn it into that code here.
//!
//! Decisions:
//! - **A value is never cut.** "California" cut to six characters is `Califo`, which is no
//!   code at all; a name becomes its code, or nothing.
//! - **Only countries whose codes we know**: the US (50 states, DC, the inhabited territories,
//!   the minor outlying islands and the three Armed Forces codes of the USPS), Canada,
//!   Germany, Austria, Switzerland and Australia. For any other country [`state_code`] answers
//!   `None`, even for a short value: we cannot tell a code from an abbreviation there, and the
//!   caller leaves the state out (it logs that).
//! - **Matching is forgiving**: case, spaces, hyphens, dots and apostrophes do not count,
//!   diacritics are folded (`Québec` = `Quebec`, `Thüringen` = `Thuringen`), and the table lists
//!   the usual other spellings: English, German and French names (`Bavaria`, `Genf`,
//!   `Nouvelle-Écosse`), the `ue` transliterations (`Thueringen`), `St.`/`Sankt`/`Saint`.
//! - **A code passes through upper-cased** when it is a code of that country (`ca` → `CA`
//!   for the US, `9` for Austria), also with its ISO country prefix (`US-CA`, `AT-9`).
//!
//! Pure: a table and a function, no I/O and no logging.

/// `(ISO 3166-1 country, [(code, [names and other spellings])])`.
type CountryTable = (
    &'static str,
    &'static [(&'static str, &'static [&'static str])],
);

/// Every subdivision we know, per country. The names are matched after [`fold`].
const SUBDIVISIONS: &[CountryTable] = &[
    (
        "US",
        &[
            ("AL", &["Alabama"]),
            ("AK", &["Alaska"]),
            ("AZ", &["Arizona"]),
            ("AR", &["Arkansas"]),
            ("CA", &["California"]),
            ("CO", &["Colorado"]),
            ("CT", &["Connecticut"]),
            ("DE", &["Delaware"]),
            (
                "DC",
                &[
                    "District of Columbia",
                    "Washington DC",
                    "Washington, D.C.",
                    "Washington District of Columbia",
                ],
            ),
            ("FL", &["Florida"]),
            ("GA", &["Georgia"]),
            ("HI", &["Hawaii", "Hawaiʻi", "Hawai'i"]),
            ("ID", &["Idaho"]),
            ("IL", &["Illinois"]),
            ("IN", &["Indiana"]),
            ("IA", &["Iowa"]),
            ("KS", &["Kansas"]),
            ("KY", &["Kentucky"]),
            ("LA", &["Louisiana"]),
            ("ME", &["Maine"]),
            ("MD", &["Maryland"]),
            ("MA", &["Massachusetts"]),
            ("MI", &["Michigan"]),
            ("MN", &["Minnesota"]),
            ("MS", &["Mississippi"]),
            ("MO", &["Missouri"]),
            ("MT", &["Montana"]),
            ("NE", &["Nebraska"]),
            ("NV", &["Nevada"]),
            ("NH", &["New Hampshire"]),
            ("NJ", &["New Jersey"]),
            ("NM", &["New Mexico"]),
            ("NY", &["New York", "New York State"]),
            ("NC", &["North Carolina"]),
            ("ND", &["North Dakota"]),
            ("OH", &["Ohio"]),
            ("OK", &["Oklahoma"]),
            ("OR", &["Oregon"]),
            ("PA", &["Pennsylvania"]),
            ("RI", &["Rhode Island"]),
            ("SC", &["South Carolina"]),
            ("SD", &["South Dakota"]),
            ("TN", &["Tennessee"]),
            ("TX", &["Texas"]),
            ("UT", &["Utah"]),
            ("VT", &["Vermont"]),
            ("VA", &["Virginia"]),
            ("WA", &["Washington", "Washington State"]),
            ("WV", &["West Virginia"]),
            ("WI", &["Wisconsin"]),
            ("WY", &["Wyoming"]),
            ("AS", &["American Samoa"]),
            ("GU", &["Guam"]),
            (
                "MP",
                &[
                    "Northern Mariana Islands",
                    "Commonwealth of the Northern Mariana Islands",
                ],
            ),
            ("PR", &["Puerto Rico"]),
            (
                "VI",
                &[
                    "U.S. Virgin Islands",
                    "US Virgin Islands",
                    "United States Virgin Islands",
                    "Virgin Islands",
                ],
            ),
            (
                "UM",
                &[
                    "United States Minor Outlying Islands",
                    "U.S. Minor Outlying Islands",
                    "US Minor Outlying Islands",
                ],
            ),
            ("AA", &["Armed Forces Americas"]),
            ("AE", &["Armed Forces Europe"]),
            ("AP", &["Armed Forces Pacific"]),
        ],
    ),
    (
        "CA",
        &[
            ("AB", &["Alberta"]),
            ("BC", &["British Columbia", "Colombie-Britannique"]),
            ("MB", &["Manitoba"]),
            ("NB", &["New Brunswick", "Nouveau-Brunswick"]),
            (
                "NL",
                &[
                    "Newfoundland and Labrador",
                    "Newfoundland & Labrador",
                    "Newfoundland",
                    "Terre-Neuve-et-Labrador",
                ],
            ),
            ("NS", &["Nova Scotia", "Nouvelle-Écosse"]),
            (
                "NT",
                &["Northwest Territories", "Territoires du Nord-Ouest"],
            ),
            ("NU", &["Nunavut"]),
            ("ON", &["Ontario"]),
            ("PE", &["Prince Edward Island", "Île-du-Prince-Édouard"]),
            ("QC", &["Quebec", "Québec"]),
            ("SK", &["Saskatchewan"]),
            ("YT", &["Yukon", "Yukon Territory"]),
        ],
    ),
    (
        "DE",
        &[
            ("BW", &["Baden-Württemberg", "Baden-Wuerttemberg"]),
            ("BY", &["Bayern", "Bavaria", "Freistaat Bayern"]),
            ("BE", &["Berlin"]),
            ("BB", &["Brandenburg"]),
            ("HB", &["Bremen", "Freie Hansestadt Bremen"]),
            ("HH", &["Hamburg", "Freie und Hansestadt Hamburg"]),
            ("HE", &["Hessen", "Hesse"]),
            (
                "MV",
                &[
                    "Mecklenburg-Vorpommern",
                    "Mecklenburg-Western Pomerania",
                    "Mecklenburg-West Pomerania",
                ],
            ),
            ("NI", &["Niedersachsen", "Lower Saxony"]),
            (
                "NW",
                &[
                    "Nordrhein-Westfalen",
                    "North Rhine-Westphalia",
                    "North Rhine Westphalia",
                    "NRW",
                ],
            ),
            ("RP", &["Rheinland-Pfalz", "Rhineland-Palatinate"]),
            ("SL", &["Saarland"]),
            ("SN", &["Sachsen", "Saxony", "Freistaat Sachsen"]),
            ("ST", &["Sachsen-Anhalt", "Saxony-Anhalt"]),
            ("SH", &["Schleswig-Holstein"]),
            (
                "TH",
                &[
                    "Thüringen",
                    "Thueringen",
                    "Thuringia",
                    "Freistaat Thüringen",
                ],
            ),
        ],
    ),
    (
        "AT",
        &[
            ("1", &["Burgenland"]),
            ("2", &["Kärnten", "Kaernten", "Carinthia"]),
            (
                "3",
                &["Niederösterreich", "Niederoesterreich", "Lower Austria"],
            ),
            ("4", &["Oberösterreich", "Oberoesterreich", "Upper Austria"]),
            ("5", &["Salzburg"]),
            ("6", &["Steiermark", "Styria"]),
            ("7", &["Tirol", "Tyrol"]),
            ("8", &["Vorarlberg"]),
            ("9", &["Wien", "Vienna"]),
        ],
    ),
    (
        "CH",
        &[
            ("AG", &["Aargau", "Argovie"]),
            (
                "AI",
                &["Appenzell Innerrhoden", "Appenzell Rhodes-Intérieures"],
            ),
            (
                "AR",
                &["Appenzell Ausserrhoden", "Appenzell Rhodes-Extérieures"],
            ),
            ("BE", &["Bern", "Berne"]),
            ("BL", &["Basel-Landschaft", "Basel-Land", "Bâle-Campagne"]),
            ("BS", &["Basel-Stadt", "Basel", "Bâle-Ville"]),
            ("FR", &["Fribourg", "Freiburg"]),
            ("GE", &["Genève", "Geneve", "Geneva", "Genf", "Ginevra"]),
            ("GL", &["Glarus", "Glaris"]),
            ("GR", &["Graubünden", "Graubuenden", "Grisons", "Grigioni"]),
            ("JU", &["Jura"]),
            ("LU", &["Luzern", "Lucerne"]),
            ("NE", &["Neuchâtel", "Neuenburg"]),
            ("NW", &["Nidwalden", "Nidwald"]),
            ("OW", &["Obwalden", "Obwald"]),
            (
                "SG",
                &["St. Gallen", "Sankt Gallen", "Saint-Gall", "San Gallo"],
            ),
            ("SH", &["Schaffhausen", "Schaffhouse"]),
            ("SO", &["Solothurn", "Soleure"]),
            ("SZ", &["Schwyz"]),
            ("TG", &["Thurgau", "Thurgovie"]),
            ("TI", &["Ticino", "Tessin"]),
            ("UR", &["Uri"]),
            ("VD", &["Vaud", "Waadt"]),
            ("VS", &["Valais", "Wallis"]),
            ("ZG", &["Zug", "Zoug"]),
            ("ZH", &["Zürich", "Zuerich", "Zurich"]),
        ],
    ),
    (
        "AU",
        &[
            ("ACT", &["Australian Capital Territory"]),
            ("NSW", &["New South Wales"]),
            ("NT", &["Northern Territory"]),
            ("QLD", &["Queensland"]),
            ("SA", &["South Australia"]),
            ("TAS", &["Tasmania"]),
            ("VIC", &["Victoria"]),
            ("WA", &["Western Australia"]),
        ],
    ),
];

/// The subdivision code Konnektive takes for `value` (a name or a code) in `country`
/// (ISO 3166-1 alpha-2, any case), or `None` when we know no code for it: an unknown
/// country, an unknown name, or an empty value. Never a cut value.
pub fn state_code(country: &str, value: &str) -> Option<&'static str> {
    let country = country.trim().to_ascii_uppercase();
    let (_, subdivisions) = SUBDIVISIONS.iter().find(|(c, _)| *c == country)?;
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    let upper = value.to_uppercase();
    let bare = upper
        .strip_prefix(&format!("{country}-"))
        .unwrap_or(&upper)
        .trim();
    if let Some((code, _)) = subdivisions.iter().find(|(code, _)| *code == bare) {
        return Some(code);
    }
    let key = fold(value);
    subdivisions
        .iter()
        .find(|(_, names)| names.iter().any(|name| fold(name) == key))
        .map(|(code, _)| *code)
}

/// The matching key of a name: lower case, diacritics folded to their base letter (`ß` →
/// `ss`), everything but letters and digits dropped (`"Baden-Württemberg"` →
/// `"badenwurttemberg"`, `"St. Gallen"` → `"stgallen"`).
fn fold(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().flat_map(char::to_lowercase) {
        let base = match c {
            'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' => "a",
            'æ' => "ae",
            'ç' | 'č' => "c",
            'è' | 'é' | 'ê' | 'ë' | 'ē' => "e",
            'ì' | 'í' | 'î' | 'ï' | 'ī' => "i",
            'ñ' => "n",
            'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' => "o",
            'œ' => "oe",
            'ß' => "ss",
            'ù' | 'ú' | 'û' | 'ü' | 'ū' => "u",
            'ý' | 'ÿ' => "y",
            c if c.is_ascii_alphanumeric() => {
                out.push(c);
                continue;
            }
            _ => continue,
        };
        out.push_str(base);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_codes_and_codes_pass_through() {
        let table: &[(&str, &str, Option<&str>)] = &[
            // US: written out, any case and spacing, DC and territories.
            ("US", "California", Some("CA")),
            ("us", "  california ", Some("CA")),
            ("US", "NEW YORK", Some("NY")),
            ("US", "new-york", Some("NY")),
            ("US", "North Carolina", Some("NC")),
            ("US", "Washington", Some("WA")),
            ("US", "Washington, D.C.", Some("DC")),
            ("US", "District of Columbia", Some("DC")),
            ("US", "Puerto Rico", Some("PR")),
            ("US", "U.S. Virgin Islands", Some("VI")),
            ("US", "Guam", Some("GU")),
            ("US", "Hawaiʻi", Some("HI")),
            ("US", "Armed Forces Europe", Some("AE")),
            ("US", "ca", Some("CA")),
            ("US", "Or", Some("OR")),
            ("US", "US-TX", Some("TX")),
            // Canada, English and French.
            ("CA", "Québec", Some("QC")),
            ("CA", "Quebec", Some("QC")),
            ("CA", "QUEBEC", Some("QC")),
            ("CA", "British Columbia", Some("BC")),
            ("CA", "Colombie-Britannique", Some("BC")),
            ("CA", "Newfoundland & Labrador", Some("NL")),
            ("CA", "Île-du-Prince-Édouard", Some("PE")),
            ("CA", "Yukon", Some("YT")),
            ("CA", "on", Some("ON")),
            // Germany: German and English names, umlauts written any way.
            ("DE", "Bayern", Some("BY")),
            ("DE", "Bavaria", Some("BY")),
            ("DE", "Baden-Württemberg", Some("BW")),
            ("DE", "Baden-Wuerttemberg", Some("BW")),
            ("DE", "baden wurttemberg", Some("BW")),
            ("DE", "Thüringen", Some("TH")),
            ("DE", "Thueringen", Some("TH")),
            ("DE", "Nordrhein-Westfalen", Some("NW")),
            ("DE", "North Rhine-Westphalia", Some("NW")),
            ("DE", "NRW", Some("NW")),
            ("DE", "Berlin", Some("BE")),
            ("DE", "by", Some("BY")),
            ("DE", "DE-HH", Some("HH")),
            // Austria: digits.
            ("AT", "Wien", Some("9")),
            ("AT", "Vienna", Some("9")),
            ("AT", "Niederösterreich", Some("3")),
            ("AT", "Oberoesterreich", Some("4")),
            ("AT", "Kärnten", Some("2")),
            ("AT", "Tyrol", Some("7")),
            ("AT", "9", Some("9")),
            ("AT", "AT-5", Some("5")),
            // Switzerland: the cantons in their languages.
            ("CH", "Zürich", Some("ZH")),
            ("CH", "Zurich", Some("ZH")),
            ("CH", "Genève", Some("GE")),
            ("CH", "Genf", Some("GE")),
            ("CH", "Geneva", Some("GE")),
            ("CH", "St. Gallen", Some("SG")),
            ("CH", "Sankt Gallen", Some("SG")),
            ("CH", "Graubünden", Some("GR")),
            ("CH", "Ticino", Some("TI")),
            ("CH", "Bern", Some("BE")),
            ("CH", "vd", Some("VD")),
            // Australia: three-letter codes too.
            ("AU", "New South Wales", Some("NSW")),
            ("AU", "Victoria", Some("VIC")),
            ("AU", "Western Australia", Some("WA")),
            ("AU", "qld", Some("QLD")),
            ("AU", "Australian Capital Territory", Some("ACT")),
            // Unknown names and countries: nothing, never a cut value.
            ("US", "Californien", None),
            ("US", "Bayern", None),
            ("US", "BY", None),
            ("DE", "California", None),
            ("DE", "CA", None),
            ("AT", "10", None),
            ("FR", "Île-de-France", None),
            ("FR", "IDF", None),
            ("GB", "England", None),
            ("US", "", None),
            ("US", "   ", None),
            ("", "California", None),
        ];
        for (country, value, want) in table {
            assert_eq!(state_code(country, value), *want, "{country} {value:?}");
        }
    }

    #[test]
    fn every_code_is_short_enough_for_konnektive_and_its_own_code() {
        for (country, subdivisions) in SUBDIVISIONS {
            for (code, names) in *subdivisions {
                assert!(code.len() <= 6 && !code.is_empty(), "{country} {code}");
                assert_eq!(state_code(country, code), Some(*code), "{country} {code}");
                for name in *names {
                    assert_eq!(state_code(country, name), Some(*code), "{country} {name}");
                }
            }
        }
    }

    #[test]
    fn no_name_means_two_codes_within_a_country() {
        for (country, subdivisions) in SUBDIVISIONS {
            let mut seen: Vec<(String, &str)> = Vec::new();
            for (code, names) in *subdivisions {
                for key in names.iter().map(|n| fold(n)).chain([fold(code)]) {
                    if let Some((_, other)) = seen.iter().find(|(k, _)| *k == key) {
                        assert_eq!(other, code, "{country}: {key} is {other} and {code}");
                    }
                    seen.push((key, code));
                }
            }
        }
    }

    #[test]
    fn the_census_is_complete() {
        let count = |c: &str| {
            SUBDIVISIONS
                .iter()
                .find(|(country, _)| *country == c)
                .map_or(0, |(_, s)| s.len())
        };
        // 50 states + DC + 6 territories (AS, GU, MP, PR, VI, UM) + 3 Armed Forces codes.
        assert_eq!(count("US"), 60);
        assert_eq!(count("CA"), 13);
        assert_eq!(count("DE"), 16);
        assert_eq!(count("AT"), 9);
        assert_eq!(count("CH"), 26);
        assert_eq!(count("AU"), 8);
    }

    #[test]
    fn fold_ignores_case_spacing_and_diacritics() {
        assert_eq!(fold("Baden-Württemberg"), "badenwurttemberg");
        assert_eq!(fold("  St. Gallen "), "stgallen");
        assert_eq!(fold("Québec"), "quebec");
        assert_eq!(fold("Hawai'i"), "hawaii");
        assert_eq!(fold("Straße"), "strasse");
    }
}
