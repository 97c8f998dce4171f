//! `explain` shows exactly what is sent: for every action (import, QA approval, refund,
//! chargeback, purchase and order cancellation, and the `order/query` lookups) the real
//! `explain` command and the real daemon run on the same IPN with the same configuration,
//! and explain's requests are compared with what the fake Konnektive received, parameter by
//! parameter. Credentials aside, a parameter may differ only where explain shows a
//! send-time placeholder, and every placeholder must stand for a parameter that differs.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use assert_cmd::Command;
use support::fake_konnektive::{FakeConfig, FakeKonnektive};
use support::*;

/// How explain marks a value known only at send time.
const SEND_TIME: &str = "<at send time: ";

/// One Konnektive request: endpoint and parameters, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Request {
    endpoint: String,
    params: Vec<(String, String)>,
}

/// The requests in explain's output: each `POST <base_url>/<endpoint>/` line and the
/// `name=value` lines indented under it.
fn explained(out: &str, base_url: &str) -> Vec<Request> {
    let mut requests: Vec<Request> = Vec::new();
    let mut open = false;
    for line in out.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(url) = trimmed.strip_prefix("POST ") {
            let endpoint = url
                .strip_prefix(base_url)
                .unwrap_or_else(|| panic!("{url} is not under {base_url}"))
                .trim_matches('/');
            requests.push(Request {
                endpoint: endpoint.to_owned(),
                params: Vec::new(),
            });
            open = true;
        } else if open && indent >= 6 {
            let (name, value) = trimmed
                .split_once('=')
                .unwrap_or_else(|| panic!("not a parameter: {line:?}"));
            if let Some(last) = requests.last_mut() {
                last.params.push((name.to_owned(), value.to_owned()));
            }
        } else {
            open = false;
        }
    }
    requests
}

/// Compares explain's requests with the received ones; returns, per request, the parameters
/// explain showed as placeholders.
fn compare(what: &str, explained: &[Request], received: &[Request]) -> Vec<BTreeSet<String>> {
    let endpoints = |r: &[Request]| r.iter().map(|r| r.endpoint.clone()).collect::<Vec<_>>();
    assert_eq!(
        endpoints(explained),
        endpoints(received),
        "{what}: explain shows the requests that were sent, in order"
    );
    let mut marked = Vec::new();
    for (shown, sent) in explained.iter().zip(received) {
        let at = format!("{what}, {}", shown.endpoint);
        let credentials = |r: &Request| {
            (
                r.params
                    .iter()
                    .find(|(n, _)| n == "loginId")
                    .map(|(_, v)| v.clone()),
                r.params
                    .iter()
                    .find(|(n, _)| n == "password")
                    .map(|(_, v)| v.clone()),
            )
        };
        assert_eq!(
            credentials(shown),
            (
                Some(KONNEKTIVE_LOGIN.to_owned()),
                Some("[redacted]".to_owned())
            ),
            "{at}"
        );
        assert_eq!(
            credentials(sent),
            (
                Some(KONNEKTIVE_LOGIN.to_owned()),
                Some(KONNEKTIVE_PASSWORD.to_owned())
            ),
            "{at}"
        );
        let without_credentials = |r: &Request| -> Vec<(String, String)> {
            r.params
                .iter()
                .filter(|(n, _)| n != "loginId" && n != "password")
                .cloned()
                .collect()
        };
        let (shown, sent) = (without_credentials(shown), without_credentials(sent));
        let shown_map: BTreeMap<_, _> = shown.iter().cloned().collect();
        let sent_map: BTreeMap<_, _> = sent.iter().cloned().collect();
        assert_eq!(shown_map.len(), shown.len(), "{at}: a repeated name");
        assert_eq!(sent_map.len(), sent.len(), "{at}: a repeated name");
        let placeholders: BTreeSet<String> = shown
            .iter()
            .filter(|(_, v)| v.starts_with(SEND_TIME) && v.ends_with('>'))
            .map(|(n, _)| n.clone())
            .collect();
        let names: BTreeSet<&String> = shown_map.keys().chain(sent_map.keys()).collect();
        let differ: BTreeSet<String> = names
            .into_iter()
            .filter(|n| shown_map.get(*n) != sent_map.get(*n))
            .cloned()
            .collect();
        assert_eq!(
            differ, placeholders,
            "{at}: the placeholders name exactly the parameters that differ\n\
             explain: {shown:#?}\nsent: {sent:#?}"
        );
        // And the order is the client's: explain's list, less what was not sent.
        let shown_order: Vec<&String> = shown
            .iter()
            .map(|(n, _)| n)
            .filter(|n| sent_map.contains_key(*n))
            .collect();
        let sent_order: Vec<&String> = sent.iter().map(|(n, _)| n).collect();
        assert_eq!(shown_order, sent_order, "{at}: parameter order");
        marked.push(placeholders);
    }
    marked
}

fn names(list: &[&[&str]]) -> Vec<BTreeSet<String>> {
    list.iter()
        .map(|names| names.iter().map(|n| (*n).to_owned()).collect())
        .collect()
}

/// A daemon (the real binary) against the fake, and `explain` with the same configuration.
struct World {
    work: Workdir,
    daemon: Option<Daemon>,
    edit: fn(String) -> String,
}

impl World {
    fn start(fake: &FakeKonnektive, edit: fn(String) -> String) -> World {
        let work = Workdir::new();
        let setup = Setup::new(&fake.base_url);
        let daemon = Daemon::spawn_edited(&work, &setup, "daemon.log", edit);
        World {
            work,
            daemon: Some(daemon),
            edit,
        }
    }

    /// `ipn-bridge explain FILE` for `body`, with the daemon's configuration file.
    fn explain(&self, name: &str, body: &[u8]) -> String {
        let file = self.work.dir.path().join(name);
        std::fs::write(&file, body).expect("write body");
        let out = Command::cargo_bin("ipn-bridge")
            .expect("binary")
            .arg("explain")
            .arg(&file)
            .arg("-c")
            .arg(self.work.config_path())
            .env_remove("RUST_LOG")
            .output()
            .expect("explain");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "explain failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("signature: valid"), "{stdout}");
        stdout
    }

    /// Posts `body` to the daemon and waits until every job is delivered; returns the
    /// requests the fake received meanwhile.
    async fn deliver(&self, fake: &FakeKonnektive, body: Vec<u8>) -> Vec<Request> {
        let before = fake.requests().len();
        let store = open_store(&self.work);
        let jobs_before = store
            .list_jobs(Default::default())
            .await
            .expect("jobs")
            .len();
        let addr = self.daemon.as_ref().expect("running").addr;
        assert_eq!(post_ipn(addr, "ds24", body).await, (200, "OK".to_owned()));
        wait_for(Duration::from_secs(15), "the job delivered", || {
            let store = store.clone();
            async move {
                let jobs = store.list_jobs(Default::default()).await.ok()?;
                (jobs.len() == jobs_before + 1 && jobs.iter().all(|j| j.state == "delivered"))
                    .then_some(())
            }
        })
        .await;
        store.close().await;
        // The campaign's currency check goes out once per campaign and dispatcher generation
        // (cached), so explain describes it in a line of its own rather than as a request.
        fake.requests()[before..]
            .iter()
            .filter(|r| r.endpoint != "campaign/query")
            .map(|r| Request {
                endpoint: r.endpoint.clone(),
                params: r.params.clone(),
            })
            .collect()
    }

    /// explain, then the daemon, on the same IPN; compared.
    async fn check(
        &self,
        fake: &FakeKonnektive,
        name: &str,
        body: Vec<u8>,
    ) -> Vec<BTreeSet<String>> {
        let out = self.explain(name, &body);
        let shown = explained(&out, &fake.base_url);
        let sent = self.deliver(fake, body).await;
        compare(name, &shown, &sent)
    }

    fn stop(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            daemon.terminate();
        }
    }

    /// Stops the daemon and starts another with a new, empty database.
    fn restart_fresh(&mut self, fake: &FakeKonnektive) {
        self.stop();
        *self = World::start(fake, self.edit);
    }
}

fn every_action(toml: String) -> String {
    toml.replace(
        "payment = \"import_order\"\n",
        "payment = \"import_order\"\nrefund = \"refund\"\nchargeback = \"chargeback\"\n\
         rebill_cancelled = \"cancel_purchase\"\nlast_paid_day = \"cancel_order\"\n",
    )
}

fn auto_approve(toml: String) -> String {
    toml.replacen(
        "campaign_id = 12\n",
        "campaign_id = 12\nauto_approve = true\n",
        1,
    )
}

async fn fake(qa_hold: bool) -> FakeKonnektive {
    FakeKonnektive::start(FakeConfig {
        password: KONNEKTIVE_PASSWORD.into(),
        campaigns: [(12, vec![31, 32, 33])].into(),
        // USD and EUR fixtures share campaign 12: campaign/query names no currency here.
        currencies: [(12, None)].into(),
        qa_hold,
        ..FakeConfig::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_the_imports_and_qa_approvals_that_are_sent() {
    let fake = fake(true).await;
    let mut world = World::start(&fake, auto_approve);
    for name in [
        "01_on_payment_single_product.txt",
        "03b_on_payment_subscription_first.txt",
        "17_on_payment_lang_fr.txt",
        "20_on_payment_utf8_names.txt",
    ] {
        let out = world.explain(name, &fixture(name));
        assert!(
            out.contains("campaign/query campaignId=12 must report that campaign 12 books"),
            "{name}: explain names the currency check: {out}"
        );
        let marked = world.check(&fake, name, fixture(name)).await;
        assert_eq!(
            marked,
            names(&[&[], &["orderId"]]),
            "{name}: the import as sent, the approval's order id from the import's answer"
        );
    }
    world.stop();
}

/// The imports exist in Konnektive but not in this daemon's ledger (another installation
/// imported them): every action first finds its import with `order/query`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_the_order_query_lookup_and_the_actions_that_follow_it() {
    let fake = fake(false).await;
    let mut world = World::start(&fake, every_action);
    for name in [
        "01_on_payment_single_product.txt",
        "03b_on_payment_subscription_first.txt",
    ] {
        world.deliver(&fake, fixture(name)).await;
    }
    world.restart_fresh(&fake);

    let refund = world
        .check(&fake, "refund", fixture("04_on_refund.txt"))
        .await;
    assert_eq!(
        refund,
        names(&[
            &[],
            &["orderId"],
            &["transactionId", "refundAmount", "fullRefund"]
        ])
    );
    let chargeback = world
        .check(&fake, "chargeback", fixture("05_on_chargeback.txt"))
        .await;
    assert_eq!(chargeback, names(&[&[], &["orderId"], &["transactionId"]]));
    let cancel_purchase = world
        .check(
            &fake,
            "cancel purchase",
            fixture("08_on_rebill_cancelled.txt"),
        )
        .await;
    assert_eq!(cancel_purchase, names(&[&[], &["purchaseId"]]));
    let cancel_order = world
        .check(&fake, "cancel order", fixture("11_last_paid_day.txt"))
        .await;
    assert_eq!(cancel_order, names(&[&[], &["orderId"]]));
    world.stop();
}

/// The imports are in the ledger: no lookup, and the order and its purchases are known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_the_actions_on_an_import_from_the_ledger() {
    let fake = fake(false).await;
    let mut world = World::start(&fake, every_action);
    let second = |name: &str| variant(name, &[("order_id", "LEDGER02")]);
    world
        .deliver(&fake, fixture("01_on_payment_single_product.txt"))
        .await;
    world
        .deliver(&fake, second("01_on_payment_single_product.txt"))
        .await;
    world
        .deliver(&fake, fixture("03b_on_payment_subscription_first.txt"))
        .await;

    let refund = world
        .check(&fake, "refund", second("04_on_refund.txt"))
        .await;
    assert_eq!(
        refund,
        names(&[&[], &["transactionId", "refundAmount", "fullRefund"]])
    );
    let chargeback = world
        .check(&fake, "chargeback", fixture("05_on_chargeback.txt"))
        .await;
    assert_eq!(chargeback, names(&[&[], &["transactionId"]]));
    let cancel_purchase = world
        .check(
            &fake,
            "cancel purchase",
            fixture("08_on_rebill_cancelled.txt"),
        )
        .await;
    assert_eq!(cancel_purchase, names(&[&[]]));
    let cancel_order = world
        .check(&fake, "cancel order", fixture("11_last_paid_day.txt"))
        .await;
    assert_eq!(cancel_order, names(&[&[]]));
    world.stop();
}
