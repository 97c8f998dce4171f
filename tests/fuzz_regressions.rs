//! Every input the IPN fuzz harness (`benches/fuzz_ipn.rs`) ever found a bug with, and a
//! handful of the nastiest inputs it generated, kept in `tests/fixtures/fuzz/` and run
//! through the same checks as the harness (`benches/fuzz_check/mod.rs`): parse → verify →
//! route → the explain requests without a panic or a broken invariant, and for accepted
//! bodies a round trip through a real store that must route the same way.

#[path = "../benches/fuzz_check/mod.rs"]
mod fuzz_check;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use fuzz_check::{Harness, Outcome};
use ipn_bridge::store::Store;

fn kept_inputs() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kept_fuzz_input_passes_the_fuzz_checks() {
    let harness = Harness::new().expect("the fuzz configuration loads");
    let files = kept_inputs();
    assert!(
        files.len() >= 5,
        "tests/fixtures/fuzz holds the kept inputs (found {})",
        files.len()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("fuzz.db")).expect("open store");
    let mut accepted = 0;
    for file in &files {
        let name = file.display();
        let body = std::fs::read(file).expect("read kept input");
        let outcome = catch_unwind(AssertUnwindSafe(|| harness.check(&body)))
            .unwrap_or_else(|_| panic!("{name}: the checks panicked"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        if let Outcome::Accepted(a) = outcome {
            accepted += 1;
            let trip = harness
                .round_trip(&store, &[a])
                .await
                .unwrap_or_else(|f| panic!("{name}: {}", f.message));
            assert_eq!(trip.stored + trip.duplicate, 1, "{name}");
        }
    }
    assert!(
        accepted > 0,
        "at least one kept input is signed and accepted"
    );
    store.close().await;
}
