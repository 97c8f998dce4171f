//! What both benchmarks need: the fixture IPN and signed copies of it with unique ids.

use ipn_bridge::ipn::{self, KeyCase};

/// The passphrase the fixtures are signed with.
pub const PASSPHRASE: &str = "fixture-passphrase";
/// A realistic `on_payment` body (~4 KB).
pub const FIXTURE: &str = include_str!("../../tests/fixtures/ipn/01_on_payment_single_product.txt");

/// `n` signed copies of [`FIXTURE`], each a distinct IPN: order ids as Digistore24's look
/// (see [`order_id`]) and transaction ids counting up from `first_transaction`, as
/// Digistore24 counts them.
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
                    "order_id" => *v = order_id(prefix, i),
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

/// An order id as Digistore24's look: 8 characters (`A1B2C3D4`) that follow no order from
/// one order to the next. Here `prefix`, then 7 characters of `i` times an odd constant
/// modulo 32^7 (a bijection: no two `i` below 32^7 share an id). Sequential ids would put
/// every stored IPN's index entries into the same few pages, which real ids do not
/// (issue 13: the store's cost per IPN nearly doubled with ids like these).
fn order_id(prefix: char, i: usize) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    const SPREAD: u64 = 21_235_835_413; // odd, about 0.618 of 32^7
    let mut n = (i as u64).wrapping_mul(SPREAD) & ((1 << 35) - 1);
    let mut id = String::with_capacity(8);
    id.push(prefix);
    for _ in 0..7 {
        id.push(char::from(ALPHABET[(n % 32) as usize]));
        n /= 32;
    }
    id
}
