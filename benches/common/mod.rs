//! What both benchmarks need: the fixture IPN and signed copies of it with unique ids.

use ipn_bridge::ipn::{self, KeyCase};

/// The passphrase the fixtures are signed with.
pub const PASSPHRASE: &str = "fixture-passphrase";
/// A realistic `on_payment` body (~4 KB).
pub const FIXTURE: &str = include_str!("../../tests/fixtures/ipn/01_on_payment_single_product.txt");

/// `n` signed copies of [`FIXTURE`] with order ids `<prefix>0000000…` and transaction ids
/// from `first_transaction`, so each is a distinct IPN.
pub fn signed_bodies(n: usize, prefix: char, first_transaction: usize) -> Vec<Vec<u8>> {
    let base: Vec<(String, String)> = form_urlencoded::parse(FIXTURE.trim().as_bytes())
        .into_owned()
        .filter(|(k, _)| k != "sha_sign")
        .collect();
    (0..n)
        .map(|i| {
            let mut pairs = base.clone();
            for (k, v) in pairs.iter_mut() {
                match k.as_str() {
                    "order_id" => *v = format!("{prefix}{i:07}"),
                    "transaction_id" => *v = (first_transaction + i).to_string(),
                    _ => {}
                }
            }
            let sig = ipn::sign(&pairs, PASSPHRASE, KeyCase::Original);
            pairs.push(("sha_sign".into(), sig));
            let mut s = form_urlencoded::Serializer::new(String::new());
            for (k, v) in &pairs {
                s.append_pair(k, v);
            }
            s.finish().into_bytes()
        })
        .collect()
}
