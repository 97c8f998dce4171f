//! `[store] ca_file`: the CA of a PostgreSQL server reached over TLS, read when the file is
//! loaded, refused where it cannot be used.

use super::*;

/// A self-signed CA certificate (P-256), made for these tests with openssl.
const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBnzCCAUWgAwIBAgIUXDCngB57GHCv4qVeOMoUw6n3IwkwCgYIKoZIzj0EAwIw
JDEiMCAGA1UEAwwZaXBuLWJyaWRnZSBjb25maWcgdGVzdCBDQTAgFw0yNjExMzAw
NjEzNThaGA8yMTI2MTEwNjA2MTM1OFowJDEiMCAGA1UEAwwZaXBuLWJyaWRnZSBj
b25maWcgdGVzdCBDQTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABMatawnKOwE/
Ouhzyb7WLbXBE9z2f+f5bUkiPFgHSjD62a5zcxmQD/d/EVMam8EiN/1UZuiNANpt
SjwXGr+MZZKjUzBRMB0GA1UdDgQWBBT0VsQwt20lgcuYevzQ+AWHJ2U2RzAfBgNV
HSMEGDAWgBT0VsQwt20lgcuYevzQ+AWHJ2U2RzAPBgNVHRMBAf8EBTADAQH/MAoG
CCqGSM49BAMCA0gAMEUCIQDop8r5AasQo20kU0mzwqCMGiArJTHdz0+F0Arh9N7Q
gwIgYdyBiUNQeZ6RX3jgXuTXvVwOs1YdCZ8TF4dd9NkwOSQ=
-----END CERTIFICATE-----
";

const CONFIG: &str = "/etc/ipn-bridge/connectors.toml";
const TLS_URL: &str = "postgres://bridge:pw-not-shown@db.example/ipn?sslmode=require";

fn store_with(lines: &str) -> String {
    format!("[store]\n{lines}\n{MINIMAL}")
}

fn parse_at(text: &str, env: &FakeEnv) -> Result<Loaded, ConfigErrors> {
    parse(text, Path::new(CONFIG), env)
}

#[test]
fn a_store_ca_file_is_read_relative_to_the_configuration_file() {
    let env = FakeEnv::default().file("/etc/ipn-bridge/db-ca.pem", CA_PEM);
    let text = store_with(&format!("url = \"{TLS_URL}\"\nca_file = \"db-ca.pem\""));
    let loaded = parse_at(&text, &env).unwrap_or_else(|e| panic!("{e}"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(
        loaded.config.store.ca_file.as_deref(),
        Some(Path::new("/etc/ipn-bridge/db-ca.pem"))
    );
    let absolute = store_with(&format!(
        "url = \"{TLS_URL}\"\nca_file = \"/etc/ipn-bridge/db-ca.pem\""
    ));
    let loaded = parse_at(&absolute, &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        loaded.config.store.ca_file.as_deref(),
        Some(Path::new("/etc/ipn-bridge/db-ca.pem"))
    );
    assert!(ok(MINIMAL).config.store.ca_file.is_none());
}

#[test]
fn a_store_ca_file_that_is_missing_empty_or_not_a_certificate_is_an_error_naming_key_and_path() {
    let env = FakeEnv::default()
        .file("/etc/ipn-bridge/empty.pem", "")
        .file(
            "/etc/ipn-bridge/key-only.pem",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .file(
            "/etc/ipn-bridge/garbled.pem",
            "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
        );
    for (file, problem) in [
        ("missing.pem", "cannot read it"),
        ("empty.pem", "holds no certificate"),
        ("key-only.pem", "holds no certificate"),
        ("garbled.pem", "not valid PEM"),
    ] {
        let text = store_with(&format!("url = \"{TLS_URL}\"\nca_file = \"{file}\""));
        let e = parse_at(&text, &env)
            .err()
            .unwrap_or_else(|| panic!("{file} accepted"))
            .to_string();
        assert!(e.contains("`ca_file` in [store]"), "{file}: {e}");
        assert!(
            e.contains(&format!("/etc/ipn-bridge/{file}")),
            "{file}: {e}"
        );
        assert!(e.contains(problem), "{file}: {e}");
        assert!(
            !e.contains("pw-not-shown"),
            "the url's password leaked: {e}"
        );
    }
}

#[test]
fn a_store_ca_file_without_a_postgres_url_is_refused() {
    let env = FakeEnv::default().file("/etc/ipn-bridge/db-ca.pem", CA_PEM);
    for lines in [
        "path = \"x.db\"\nca_file = \"db-ca.pem\"",
        "ca_file = \"db-ca.pem\"",
    ] {
        let e = parse_at(&store_with(lines), &env)
            .err()
            .unwrap_or_else(|| panic!("accepted: {lines}"))
            .to_string();
        assert!(e.contains("`ca_file` in [store]"), "{e}");
        assert!(e.contains("SQLite"), "{e}");
    }
}

#[test]
fn a_store_ca_file_with_a_url_that_does_not_ask_for_tls_is_a_warning() {
    let env = FakeEnv::default().file("/etc/ipn-bridge/db-ca.pem", CA_PEM);
    for url in [
        "postgres://bridge@db.example/ipn",
        "postgres://bridge@db.example/ipn?sslmode=prefer",
        "postgres://bridge@db.example/ipn?sslmode=disable",
    ] {
        let text = store_with(&format!("url = \"{url}\"\nca_file = \"db-ca.pem\""));
        let loaded = parse_at(&text, &env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(loaded.warnings.len(), 1, "{url}: {:?}", loaded.warnings);
        assert!(
            loaded.warnings[0]
                .message
                .contains("`ca_file` in [store] is not used"),
            "{:?}",
            loaded.warnings
        );
    }
}
