//! Structure-aware fuzzing of the IPN intake on the stable toolchain (issue 9, "Fuzzing").
//!
//! Run with `cargo bench --bench fuzz_ipn` (release). Environment:
//! - `FUZZ_INPUTS` (default 10,000,000) inputs in all;
//! - `FUZZ_SEED` (default: from the clock; always printed) — input `i` is generated from
//!   `(seed, i)` alone, so a finding is reproduced with `FUZZ_SEED=s FUZZ_FROM=i FUZZ_INPUTS=1`;
//! - `FUZZ_FROM` (default 0) the first input index;
//! - `FUZZ_THREADS` (default `available_parallelism()`);
//! - `FUZZ_RSS_LIMIT_MIB` (default [`DEFAULT_RSS_LIMIT_MIB`]) the resident-memory bound;
//! - `FUZZ_KEEP_SEEDS=1`: at the end, write the nastiest input of each outcome (the one with
//!   the most mutations applied) to `tests/fixtures/fuzz/seed-<outcome>.txt`.
//!
//! Inputs: the real IPN bodies of `tests/fixtures/ipn/*.txt` (the Digistore24 capture
//! `20_capture_digital_no_address.txt` among them), decoded to pairs and mutated with
//! structure: fields added (known names, numbered item fields, odd names), dropped,
//! duplicated, re-cased (upper, lower, mixed), values swapped and stretched (long, huge
//! numbers, negative and comma amounts, empty, NULs, control characters, other events). Half
//! of them are then re-signed with the fixture passphrase (either [`KeyCase`], either
//! signature field name, anywhere in the body); the other half keep the fixture's signature.
//! Then the pairs are encoded with a random style per pair (`+` or `%20`, upper or lower hex,
//! needless escapes, raw UTF-8) and a quarter of the bodies are damaged at the byte level
//! (invalid `%` sequences, invalid and overlong UTF-8, NULs, control characters, stray `&`
//! and `=`, truncation).
//!
//! Each input goes through the checks of `benches/fuzz_check/mod.rs` inside
//! `catch_unwind`: parse → verify → route → explain's requests, and for accepted bodies a
//! round trip through a real store that must route the same way. The first panic or broken
//! invariant stops the run; the input is printed (escaped) and written to
//! `tests/fixtures/fuzz/found-<seed>-<index>.txt`, where `tests/fuzz_regressions.rs` runs it
//! through the same checks for ever after.
//!
//! Affordable store round trips: every accepted body is ingested, and every inserted one
//! compared. Each thread owns its own store (no lock contention between threads) on tmpfs
//! (`/dev/shm` when present: fsync costs nothing, the disk is spared) and ingests its
//! accepted bodies in batches of [`BATCH`] concurrent calls, which the store's writer
//! commits in groups; the reads back are batched the same way. A thread's store is replaced
//! by a fresh one after [`ROTATE_AFTER`] insertions so the database stays small (a body that
//! repeats a business key from an earlier store is then inserted and compared again, which
//! only adds checks).
//!
//! Memory: the reporter reads `VmRSS` of `/proc/self/status` every [`REPORT_EVERY`] and fails
//! the run when it exceeds the bound (default [`DEFAULT_RSS_LIMIT_MIB`] MiB: two threads'
//! inputs of at most ~200 KB, their batches, and two SQLite page caches need a few tens of
//! MiB; growth with the number of inputs would cross it within the run). `VmHWM` is printed
//! at the end.

#[path = "fuzz_check/mod.rs"]
mod fuzz_check;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fuzz_check::{Accepted, Harness, Outcome, PASSPHRASE};
use ipn_bridge::ipn::{self, KeyCase};
use ipn_bridge::store::Store;

const DEFAULT_INPUTS: u64 = 10_000_000;
const DEFAULT_RSS_LIMIT_MIB: u64 = 128;
/// Accepted bodies ingested together by one thread.
const BATCH: usize = 256;
/// Insertions after which a thread starts a fresh store.
const ROTATE_AFTER: u64 = 50_000;
/// Inputs a thread takes from the shared counter at a time.
const CHUNK: u64 = 1024;
const REPORT_EVERY: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------
// Random numbers: SplitMix64, seeded per input from (seed, index).

struct Rng(u64);

impl Rng {
    fn for_input(seed: u64, index: u64) -> Rng {
        let mut rng = Rng(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        rng.next();
        rng
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

// ---------------------------------------------------------------------------------------
// The mutator.

/// Names the mutator adds: the fields the program reads, a few it does not, signature
/// names, numbered item fields and names no form should carry.
const NAMES: &[&str] = &[
    "event",
    "order_id",
    "order_item_id",
    "transaction_id",
    "parent_transaction_id",
    "product_id",
    "product_name",
    "amount",
    "transaction_amount",
    "currency",
    "transaction_currency",
    "email",
    "buyer_email",
    "address_first_name",
    "address_last_name",
    "address_street",
    "address_street_name",
    "address_street_number",
    "address_city",
    "address_zipcode",
    "address_country",
    "address_state",
    "address_phone_no",
    "quantity",
    "language",
    "newsletter_choice",
    "billing_type",
    "pay_sequence_no",
    "number_of_installments",
    "rebill_stop_noted_at",
    "eticket_id",
    "eticket_action",
    "api_mode",
    "affiliate_name",
    "campaignkey",
    "vat_amount",
    "transaction_type",
    "payment_id",
    "order_date",
    "order_time",
    "transaction_date",
    "sha_sign",
    "SHASIGN",
    "product_id_2",
    "amount_2",
    "order_item_id_2",
    "quantity_2",
    "transaction_id_2",
    "product_id_1",
    "product_name_10",
    "item_amount_3",
    "product_id[1]",
    "product_id[]",
    "a[b][c]",
    "Event",
    "ORDER_ID",
    "Transaction_Id",
    "",
    " ",
    "é",
    "naïve name",
    "x=y",
    "&",
    "%",
    "+",
    "\0",
    "\u{202e}order_id",
    "order_id\u{0}",
];

/// Event names, real and not.
const EVENTS: &[&str] = &[
    "on_payment",
    "on_refund",
    "on_chargeback",
    "on_payment_missed",
    "payment_denial",
    "on_rebill_cancelled",
    "on_rebill_resumed",
    "last_paid_day",
    "on_affiliation",
    "eticket",
    "connection_test",
    "custom_form",
    "ON_PAYMENT",
    "On_Refund",
    "",
    "unknown",
    "on_payment ",
    " on_payment",
    "on_payment\0",
];

/// Stretched values.
fn stretched(rng: &mut Rng, old: &str) -> String {
    match rng.below(30) {
        0 => "x".repeat(rng.range(200, 4000)),
        1 => old.repeat(rng.range(2, 16)),
        2 => "9".repeat(rng.range(19, 400)),
        3 => "18446744073709551616".into(),
        4 => "-9223372036854775809".into(),
        5 => format!("-{old}"),
        6 => "-97.00".into(),
        7 => "97,00".into(),
        8 => "1.234,56".into(),
        9 => "1,234.56".into(),
        10 => String::new(),
        11 => " 97.00 ".into(),
        12 => {
            let mut s = old.to_owned();
            let at = floor_char(&s, rng.below(s.len() + 1));
            s.insert(at, '\0');
            s
        }
        13 => {
            let c = *rng.pick(&['\u{1}', '\t', '\n', '\r', '\u{1b}', '\u{7f}', '\u{85}']);
            format!("{old}{c}{old}")
        }
        14 => "\u{202e}\u{feff}\u{2028}Ünïcødé ✓ 𝄞 e\u{301}".into(),
        15 => rng
            .pick(&[
                "0", "-0", "0.001", "NaN", "inf", "-inf", "97.", ".5", "+97", "97.005",
            ])
            .to_string(),
        16 => rng
            .pick(&["1e308", "1E-400", "0x1F", "1_000", "٣٤", "97.00.00", "--1"])
            .to_string(),
        17 => rng
            .pick(&[
                "2026-13-45",
                "0000-00-00 00:00:00",
                "9999-12-31 23:59:59",
                "yesterday",
            ])
            .to_string(),
        18 => rng
            .pick(&["a@b", "@", "not an email", "a@b@c", "\"x\"@example.com"])
            .to_string(),
        19 => format!("{}@example.com", "a".repeat(rng.range(60, 400))),
        20 => rng
            .pick(&[
                "{affiliate_name}",
                "{{",
                "}}",
                "{",
                "{buyer_email}",
                "{{{x}}}",
            ])
            .to_string(),
        21 => rng.pick(EVENTS).to_string(),
        22 => rng
            .pick(&["EUR", "USD", "eur", "CHF", "", "EURO", "€", "E"])
            .to_string(),
        23 => rng
            .pick(&["Y", "N", "y", "yes", "1", "0", "opted_in", "true"])
            .to_string(),
        24 => rng
            .pick(&[
                "412346",
                "412350",
                "0",
                "-1",
                "412346,412350",
                " 412346",
                "41234６",
            ])
            .to_string(),
        25 => rng.pick(&["live", "test", "LIVE", "sandbox"]).to_string(),
        // Huge values are kept rare: the cost of an input grows with its size.
        26 if rng.chance(20) => "y".repeat(rng.range(20_000, 70_000)),
        26 => "y".repeat(rng.range(1_000, 8_000)),
        27 => old.to_uppercase(),
        28 => format!("{old}&{old}={old}"),
        _ => format!("{old}%41%zz+"),
    }
}

fn floor_char(s: &str, mut at: usize) -> usize {
    while at > 0 && !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn recase(rng: &mut Rng, name: &str) -> String {
    match rng.below(3) {
        0 => name.to_ascii_uppercase(),
        1 => name.to_ascii_lowercase(),
        _ => name
            .chars()
            .map(|c| {
                if rng.chance(50) {
                    c.to_ascii_uppercase()
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect(),
    }
}

/// One structural mutation; returns false when there was nothing to do it to.
fn mutate_pairs(rng: &mut Rng, pairs: &mut Vec<(String, String)>) {
    let n = pairs.len();
    match rng.below(12) {
        0 if n > 0 => {
            pairs.remove(rng.below(n));
        }
        1 if n > 0 => {
            let p = pairs[rng.below(n)].clone();
            let p = if rng.chance(50) {
                p
            } else {
                let v = stretched(rng, &p.1);
                (p.0, v)
            };
            pairs.insert(rng.below(n + 1), p);
        }
        2 => {
            let name = rng.pick(NAMES).to_string();
            let old = pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let v = stretched(rng, &old);
            pairs.insert(rng.below(n + 1), (name, v));
        }
        3..=4 if n > 0 => {
            let i = rng.below(n);
            pairs[i].0 = recase(rng, &pairs[i].0);
        }
        5..=7 if n > 0 => {
            let i = rng.below(n);
            pairs[i].1 = stretched(rng, &pairs[i].1);
        }
        8 if n > 0 => {
            // A numbered item field (`product_id_2`) copied from an existing field.
            let i = rng.below(n);
            let suffix = rng.pick(&["_1", "_2", "_3", "_10", "_99", "_0", "_-1", "[0]", "_2_2"]);
            let p = (format!("{}{suffix}", pairs[i].0), pairs[i].1.clone());
            pairs.insert(rng.below(n + 1), p);
        }
        9 if n > 1 => {
            let (a, b) = (rng.below(n), rng.below(n));
            let va = pairs[a].1.clone();
            pairs[a].1 = std::mem::replace(&mut pairs[b].1, va);
        }
        10 => {
            let event = rng.pick(EVENTS).to_string();
            match pairs.iter_mut().find(|(k, _)| k == "event") {
                Some(slot) => slot.1 = event,
                None => pairs.push(("event".into(), event)),
            }
        }
        _ if n > 0 => {
            // Every name in one case (as the upper-case convention would see them).
            let upper = rng.chance(50);
            for (k, _) in pairs.iter_mut() {
                *k = if upper {
                    k.to_ascii_uppercase()
                } else {
                    k.to_ascii_lowercase()
                };
            }
        }
        _ => {}
    }
}

fn resign(rng: &mut Rng, pairs: &mut Vec<(String, String)>) {
    pairs
        .retain(|(k, _)| !k.eq_ignore_ascii_case("sha_sign") && !k.eq_ignore_ascii_case("shasign"));
    let case = if rng.chance(50) {
        KeyCase::Original
    } else {
        KeyCase::Upper
    };
    let mut signature = ipn::sign(pairs, PASSPHRASE, case);
    if rng.chance(10) {
        signature.make_ascii_lowercase();
    }
    let name = if rng.chance(85) {
        "sha_sign"
    } else {
        "SHASIGN"
    };
    let at = if rng.chance(70) {
        pairs.len()
    } else {
        rng.below(pairs.len() + 1)
    };
    pairs.insert(at, (name.into(), signature));
}

#[derive(Clone, Copy)]
enum Style {
    Standard,
    Percent20,
    LowerHex,
    Needless,
    Raw,
}

fn encode_into(out: &mut Vec<u8>, rng: &mut Rng, text: &str, style: Style) {
    const HEX_UP: &[u8; 16] = b"0123456789ABCDEF";
    const HEX_LOW: &[u8; 16] = b"0123456789abcdef";
    for &b in text.as_bytes() {
        let hex = match style {
            Style::LowerHex => HEX_LOW,
            Style::Needless if rng.chance(50) => HEX_LOW,
            _ => HEX_UP,
        };
        let unreserved = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'*');
        let escape = |out: &mut Vec<u8>| {
            out.push(b'%');
            out.push(hex[(b >> 4) as usize]);
            out.push(hex[(b & 15) as usize]);
        };
        match (b, style) {
            (_, Style::Needless) if rng.chance(40) => escape(out),
            _ if unreserved => out.push(b),
            (b' ', Style::Percent20) => escape(out),
            (b' ', _) => out.push(b'+'),
            (0x80.., Style::Raw) => out.push(b),
            (b'!' | b'~' | b'\'' | b'(' | b')' | b',' | b':' | b'@' | b'/', Style::Raw) => {
                out.push(b)
            }
            _ => escape(out),
        }
    }
}

fn encode(rng: &mut Rng, pairs: &[(String, String)]) -> Vec<u8> {
    let styles = [
        Style::Standard,
        Style::Percent20,
        Style::LowerHex,
        Style::Needless,
        Style::Raw,
    ];
    let uniform = rng.chance(60).then(|| *rng.pick(&styles));
    let mut out = Vec::with_capacity(pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum());
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(b'&');
        }
        let style = uniform.unwrap_or_else(|| *rng.pick(&styles));
        encode_into(&mut out, rng, k, style);
        out.push(b'=');
        encode_into(&mut out, rng, v, style);
    }
    out
}

/// Byte-level damage after encoding.
fn damage(rng: &mut Rng, body: &mut Vec<u8>) {
    const INSERTS: &[&[u8]] = &[
        b"%",
        b"%G1",
        b"%4",
        b"%zz",
        b"%%",
        b"%2",
        b"%FF",
        b"%C3%28",
        b"%C0%AF",
        b"%E0%80%80",
        b"%ED%A0%80",
        b"%F4%90%80%80",
        b"\xFF",
        b"\xC0\xAF",
        b"\xE2\x82",
        b"%00",
        b"\0",
        b"\x01",
        b"\x1F",
        b"\x7F",
        b"\r\n",
        b"&&",
        b"&=",
        b"=x&",
        b"&noequals",
        b"&",
        b"=",
        b";",
        b"%26",
        b"%3D",
        b"%2B",
        b"+",
        b"&sha_sign=",
        b"&event=on_refund",
        b"&transaction_id=",
        b"&TRANSACTION_ID=1",
    ];
    if rng.chance(5) && !body.is_empty() {
        let at = rng.below(body.len());
        body.truncate(at);
        return;
    }
    let insert = rng.pick(INSERTS);
    let at = rng.below(body.len() + 1);
    body.splice(at..at, insert.iter().copied());
}

struct Fixture {
    name: String,
    pairs: Vec<(String, String)>,
}

fn load_fixtures(dir: &Path) -> Vec<Fixture> {
    let mut fixtures: Vec<Fixture> = std::fs::read_dir(dir)
        .expect("tests/fixtures/ipn")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .map(|p| {
            let body = std::fs::read(&p).expect("read fixture");
            Fixture {
                name: p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                pairs: form_urlencoded::parse(body.trim_ascii())
                    .into_owned()
                    .collect(),
            }
        })
        .collect();
    fixtures.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(
        fixtures
            .iter()
            .any(|f| f.name == "20_capture_digital_no_address.txt"),
        "the real capture is among the fixtures"
    );
    fixtures
}

/// Input `index` of the run with `seed`, and how many mutations made it.
fn generate(fixtures: &[Fixture], seed: u64, index: u64) -> (Vec<u8>, u32) {
    let mut rng = Rng::for_input(seed, index);
    let fixture = rng.pick(fixtures);
    let mut pairs = fixture.pairs.clone();
    let mut mutations = 0u32;
    for _ in 0..rng.range(1, 5) {
        mutate_pairs(&mut rng, &mut pairs);
        mutations += 1;
    }
    if rng.chance(50) {
        resign(&mut rng, &mut pairs);
        mutations += 1;
    }
    let mut body = encode(&mut rng, &pairs);
    if rng.chance(25) {
        for _ in 0..rng.range(1, 3) {
            damage(&mut rng, &mut body);
            mutations += 1;
        }
    }
    (body, mutations)
}

// ---------------------------------------------------------------------------------------
// The run.

#[derive(Default)]
struct Totals {
    done: AtomicU64,
    parse: AtomicU64,
    signature: AtomicU64,
    case_twins: AtomicU64,
    accepted: AtomicU64,
    routed: AtomicU64,
    stored: AtomicU64,
    duplicate: AtomicU64,
}

impl Totals {
    fn line(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "rejected by parse {} / signature {} / case twins {}; accepted {} (routed to a \
             delivery {}); stored and compared {}, duplicates {}",
            get(&self.parse),
            get(&self.signature),
            get(&self.case_twins),
            get(&self.accepted),
            get(&self.routed),
            get(&self.stored),
            get(&self.duplicate)
        )
    }
}

struct Finding {
    index: u64,
    body: Vec<u8>,
    message: String,
}

struct Shared {
    harness: Harness,
    fixtures: Vec<Fixture>,
    seed: u64,
    end: u64,
    next: AtomicU64,
    stop: AtomicBool,
    totals: Totals,
    finding: Mutex<Option<Finding>>,
    /// Per outcome, the input with the most mutations: (mutations, body).
    nastiest: Mutex<Vec<(&'static str, u32, Vec<u8>)>>,
    store_dir: PathBuf,
}

impl Shared {
    fn found(&self, index: u64, body: &[u8], message: String) {
        let mut slot = self.finding.lock().expect("finding lock");
        if slot.is_none() {
            *slot = Some(Finding {
                index,
                body: body.to_vec(),
                message,
            });
        }
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}

fn new_store(dir: &Path) -> (tempfile::TempDir, Store) {
    let tmp = tempfile::Builder::new()
        .prefix("ipn-fuzz-")
        .tempdir_in(dir)
        .expect("store directory");
    let store = Store::open(&tmp.path().join("fuzz.db")).expect("open store");
    (tmp, store)
}

fn worker(shared: &Shared) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (mut dir, mut store) = new_store(&shared.store_dir);
    let mut in_store = 0u64;
    let mut batch: Vec<Box<Accepted>> = Vec::with_capacity(BATCH);
    let mut batch_index: Vec<u64> = Vec::with_capacity(BATCH);
    let mut nastiest: Vec<(&'static str, u32, Vec<u8>)> = Vec::new();
    let t = &shared.totals;
    let flush =
        |batch: &mut Vec<Box<Accepted>>, batch_index: &mut Vec<u64>, store: &Store| -> u64 {
            if batch.is_empty() {
                return 0;
            }
            let result = catch_unwind(AssertUnwindSafe(|| {
                runtime.block_on(shared.harness.round_trip(store, batch))
            }));
            let stored = match result {
                Ok(Ok(rt)) => {
                    t.stored.fetch_add(rt.stored, Ordering::Relaxed);
                    t.duplicate.fetch_add(rt.duplicate, Ordering::Relaxed);
                    rt.stored
                }
                Ok(Err(f)) => {
                    shared.found(batch_index[f.index], &batch[f.index].body, f.message);
                    0
                }
                Err(panic) => {
                    // Not attributable to one body: keep the first, the batch is printed.
                    shared.found(
                        batch_index[0],
                        &batch[0].body,
                        format!("panic in a store round trip: {}", panic_message(&*panic)),
                    );
                    0
                }
            };
            batch.clear();
            batch_index.clear();
            stored
        };
    'outer: loop {
        let start = shared.next.fetch_add(CHUNK, Ordering::Relaxed);
        if start >= shared.end {
            break;
        }
        for index in start..(start + CHUNK).min(shared.end) {
            if shared.stop.load(Ordering::Relaxed) {
                break 'outer;
            }
            let (body, mutations) = generate(&shared.fixtures, shared.seed, index);
            let outcome = match catch_unwind(AssertUnwindSafe(|| shared.harness.check(&body))) {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(message)) => {
                    shared.found(index, &body, message);
                    break 'outer;
                }
                Err(panic) => {
                    shared.found(index, &body, format!("panic: {}", panic_message(&*panic)));
                    break 'outer;
                }
            };
            let label = match &outcome {
                Outcome::Parse => {
                    t.parse.fetch_add(1, Ordering::Relaxed);
                    "parse"
                }
                Outcome::Signature => {
                    t.signature.fetch_add(1, Ordering::Relaxed);
                    "signature"
                }
                Outcome::CaseTwins => {
                    t.case_twins.fetch_add(1, Ordering::Relaxed);
                    "case-twins"
                }
                Outcome::Accepted(a) => {
                    t.accepted.fetch_add(1, Ordering::Relaxed);
                    if a.delivered() {
                        t.routed.fetch_add(1, Ordering::Relaxed);
                        "delivered"
                    } else {
                        "skipped"
                    }
                }
            };
            match nastiest.iter_mut().find(|(l, _, _)| *l == label) {
                Some(slot) if slot.1 < mutations => *slot = (label, mutations, body.clone()),
                Some(_) => {}
                None => nastiest.push((label, mutations, body.clone())),
            }
            if let Outcome::Accepted(accepted) = outcome {
                batch.push(accepted);
                batch_index.push(index);
                if batch.len() >= BATCH {
                    in_store += flush(&mut batch, &mut batch_index, &store);
                    if in_store >= ROTATE_AFTER {
                        runtime.block_on(store.close());
                        (dir, store) = new_store(&shared.store_dir);
                        in_store = 0;
                    }
                }
            }
            t.done.fetch_add(1, Ordering::Relaxed);
        }
    }
    if !shared.stop.load(Ordering::Relaxed) {
        flush(&mut batch, &mut batch_index, &store);
    }
    runtime.block_on(store.close());
    drop(dir);
    let mut all = shared.nastiest.lock().expect("nastiest lock");
    for (label, mutations, body) in nastiest {
        match all.iter_mut().find(|(l, _, _)| *l == label) {
            Some(slot) if slot.1 < mutations => *slot = (label, mutations, body),
            Some(_) => {}
            None => all.push((label, mutations, body)),
        }
    }
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Shows a body as text with every byte outside printable ASCII escaped.
fn escaped(body: &[u8]) -> String {
    body.iter()
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect()
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let inputs = env_u64("FUZZ_INPUTS").unwrap_or(DEFAULT_INPUTS);
    let from = env_u64("FUZZ_FROM").unwrap_or(0);
    let seed = env_u64("FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let threads = env_u64("FUZZ_THREADS")
        .map(|n| n.max(1) as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let rss_limit_kib = env_u64("FUZZ_RSS_LIMIT_MIB").unwrap_or(DEFAULT_RSS_LIMIT_MIB) * 1024;
    let shm = Path::new("/dev/shm");
    let store_dir = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let shared = Shared {
        harness: Harness::new().expect("harness"),
        fixtures: load_fixtures(&root.join("tests/fixtures/ipn")),
        seed,
        end: from + inputs,
        next: AtomicU64::new(from),
        stop: AtomicBool::new(false),
        totals: Totals::default(),
        finding: Mutex::new(None),
        nastiest: Mutex::new(Vec::new()),
        store_dir,
    };
    // Panics are caught and reported per input; the default hook's line would repeat it.
    std::panic::set_hook(Box::new(|_| {}));
    println!(
        "fuzz_ipn: seed {seed} (FUZZ_SEED), inputs {from}..{} (FUZZ_FROM, FUZZ_INPUTS), {threads} \
         threads, {} fixtures, stores in {}, RSS bound {} MiB",
        from + inputs,
        shared.fixtures.len(),
        shared.store_dir.display(),
        rss_limit_kib / 1024
    );
    let started = Instant::now();
    let mut peak_rss = 0u64;
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| scope.spawn(|| worker(&shared)))
            .collect();
        let mut last = (Instant::now(), 0u64);
        while !workers.iter().all(|w| w.is_finished()) {
            std::thread::sleep(Duration::from_millis(100));
            let rss = rss_kib("VmRSS:");
            peak_rss = peak_rss.max(rss);
            if rss > rss_limit_kib && !shared.stop.load(Ordering::Relaxed) {
                let done = shared.totals.done.load(Ordering::Relaxed);
                shared.found(
                    from + done,
                    b"",
                    format!(
                        "resident memory {} MiB is over the bound of {} MiB",
                        rss / 1024,
                        rss_limit_kib / 1024
                    ),
                );
            }
            if last.0.elapsed() >= REPORT_EVERY {
                let done = shared.totals.done.load(Ordering::Relaxed);
                let rate = (done - last.1) as f64 / last.0.elapsed().as_secs_f64();
                println!(
                    "[{:>6.1}s] {done} inputs, {rate:.0}/s, RSS {} MiB; {}",
                    started.elapsed().as_secs_f64(),
                    rss / 1024,
                    shared.totals.line()
                );
                last = (Instant::now(), done);
            }
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let done = shared.totals.done.load(Ordering::Relaxed);
    println!(
        "fuzz_ipn: {done} inputs in {elapsed:.1} s = {:.0} inputs/s on {threads} threads (seed {seed})",
        done as f64 / elapsed
    );
    println!("totals: {}", shared.totals.line());
    println!(
        "memory: VmRSS now {} MiB, highest sampled {} MiB, VmHWM {} MiB (bound {} MiB)",
        rss_kib("VmRSS:") / 1024,
        peak_rss / 1024,
        rss_kib("VmHWM:") / 1024,
        rss_limit_kib / 1024
    );
    let keep = root.join("tests/fixtures/fuzz");
    if std::env::var("FUZZ_KEEP_SEEDS").is_ok_and(|v| v == "1") {
        for (label, mutations, body) in shared.nastiest.lock().expect("nastiest lock").iter() {
            let path = keep.join(format!("seed-{label}.txt"));
            std::fs::write(&path, body).expect("write seed");
            println!("kept {} ({mutations} mutations)", path.display());
        }
    }
    let finding = shared.finding.lock().expect("finding lock").take();
    if let Some(f) = finding {
        println!("\nFOUND at input {} of seed {seed}: {}", f.index, f.message);
        if !f.body.is_empty() {
            println!("input ({} bytes): {}", f.body.len(), escaped(&f.body));
            let path = keep.join(format!("found-{seed}-{}.txt", f.index));
            std::fs::write(&path, &f.body).expect("write finding");
            println!(
                "kept as {} (run by tests/fuzz_regressions.rs)",
                path.display()
            );
        }
        std::process::exit(1);
    }
}
