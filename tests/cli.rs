//! The command line through the real binary: `check-config` on valid and broken files, and
//! the example configuration shipped with the repository.

use assert_cmd::Command;

fn bin() -> Command {
    Command::cargo_bin("ipn-bridge").expect("binary")
}

const TWO_MISTAKES: &str = r#"[server]
listen = "127.0.0.1:8080"

[source.ds24]
passphrase = "a-long-passphrase"

[target.konnektive]
kind = "konnektive"
login_id = "ds24bridge"
password = "pw-not-shown-anywhere"

[integration.main]
campain_id = 12

[integration.main.product_map]
"*" = 33

[integration.main.on]
payment = "import_order"

[delivery]
retry_max = "forever"
"#;

#[test]
fn check_config_names_every_mistake_with_its_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("connectors.toml");
    std::fs::write(&path, TWO_MISTAKES).expect("write");
    let stderr = refused_by_check_config(&path);
    // The misspelled key on line 13, the bad duration on line 22.
    assert!(stderr.contains("connectors.toml:13:1:"), "{stderr}");
    assert!(stderr.contains("campain_id"), "{stderr}");
    assert!(
        stderr.contains("campaign_id"),
        "a hint names the right key: {stderr}"
    );
    assert!(stderr.contains("connectors.toml:22:13:"), "{stderr}");
    assert!(stderr.contains("forever"), "{stderr}");
    assert!(!stderr.contains("pw-not-shown-anywhere"));
    assert!(!stderr.contains("a-long-passphrase"));

    // `run` refuses the same file with the same errors, before doing anything.
    let out = bin().args(["run", "-c"]).arg(&path).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(":13:1:") && stderr.contains(":22:13:"),
        "{stderr}"
    );
}

#[test]
fn the_example_configuration_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/connectors.toml.example");
    let out = bin()
        .args(["check-config", "-c", example])
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid"));
}

#[test]
fn the_config_path_comes_from_the_environment_when_not_given() {
    let out = bin()
        .arg("check-config")
        .env("IPN_BRIDGE_CONFIG", "/nonexistent/connectors.toml")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/connectors.toml"));
}

/// The shipped example explains the real capture of a digital order (no street, city or zip)
/// as a complete import Konnektive would accept: every required address field present,
/// marked as coming from the fallback, the country from the IPN.
#[test]
fn the_example_configuration_explains_the_digital_capture_as_a_complete_import() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = bin()
        .current_dir(dir.path())
        .args(["explain", "-c"])
        .arg(format!("{root}/connectors.toml.example"))
        .arg(format!(
            "{root}/tests/fixtures/ipn/20_capture_digital_no_address.txt"
        ))
        .env_remove("RUST_LOG")
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "signature: valid for source ds24",
        "integration main-campaign: DELIVER: import product 512345 as campaign product 33",
        "  address from [integration.main-campaign.fallback_address] (the IPN has none): \
         address1, city, postalCode",
        "      address1=Digital delivery\n",
        "      city=Online\n",
        "      postalCode=00000\n",
        "      country=CH\n",
        "      shipAddress1=Digital delivery\n",
        "      shipCity=Online\n",
        "      shipPostalCode=00000\n",
        "      shipCountry=CH\n",
        "      product1_qty=1\n",
        "      product1_price=49.00\n",
        "      product1_shipPrice=0.00\n",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from\n{stdout}");
    }
    assert!(!stdout.contains("affId"), "{stdout}");
    assert!(!stdout.contains("change-me"), "the password is redacted");
}

/// The example configuration with its `[store] path = …` line replaced by `store`, written
/// into `dir`; returns the file's path.
/// What `check-config -c path` prints on stderr; it must exit 1 (the file is refused).
fn refused_by_check_config(path: &std::path::Path) -> String {
    let out = bin()
        .args(["check-config", "-c"])
        .arg(path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn example_with_store(dir: &std::path::Path, store: &str) -> std::path::PathBuf {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/connectors.toml.example"
    ))
    .expect("example");
    let line = example
        .lines()
        .find(|l| l.starts_with("path = "))
        .expect("[store] path in the example");
    let path = dir.join("connectors.toml");
    std::fs::write(&path, example.replacen(line, store, 1)).expect("write");
    path
}

#[test]
fn check_config_refuses_a_store_ca_file_beside_a_sqlite_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("db-ca.pem"), "").expect("ca");
    let path = example_with_store(dir.path(), "path = \"x.db\"\nca_file = \"db-ca.pem\"");
    let stderr = refused_by_check_config(&path);
    assert!(stderr.contains("`ca_file` in [store]"), "{stderr}");
    assert!(stderr.contains("SQLite"), "{stderr}");
}

#[test]
fn check_config_names_the_key_and_path_of_a_missing_store_ca_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-ca.pem");
    let path = example_with_store(
        dir.path(),
        &format!(
            "url = \"postgres://bridge:pw-not-shown@db.example/ipn?sslmode=require\"\n\
             ca_file = \"{}\"",
            missing.display()
        ),
    );
    let stderr = refused_by_check_config(&path);
    assert!(stderr.contains("`ca_file` in [store]"), "{stderr}");
    assert!(
        stderr.contains(&format!("{}: cannot read it", missing.display())),
        "{stderr}"
    );
    assert!(!stderr.contains("pw-not-shown"), "{stderr}");
}
