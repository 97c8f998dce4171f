//! The store's own safety, on real files: one daemon per database, a deleted, replaced or
//! damaged file, an empty file, the health probe's real write, and the count of failures.

use super::*;

fn ipn(key: &str) -> NewIpn {
    NewIpn {
        source: "ds24".into(),
        business_key: key.into(),
        event: "on_payment".into(),
        order_id: Some(format!("O-{key}")),
        order_item_id: None,
        product_id: None,
        transaction_id: None,
        buyer_email: None,
        amount: None,
        currency: None,
        received_at: 1_000,
        raw_body: format!("event=on_payment&key={key}").into_bytes(),
        routes: Vec::new(),
        alerts: Vec::new(),
        parent_transaction_id: None,
    }
}

fn rows_in(path: &Path) -> i64 {
    rusqlite::Connection::open(path)
        .and_then(|c| c.query_row("SELECT COUNT(*) FROM ipns", [], |r| r.get(0)))
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The `/proc/<pid>/fd/<n>` path named in a broken store's error.
fn proc_path(msg: &str) -> PathBuf {
    let start = msg
        .find("/proc/")
        .unwrap_or_else(|| panic!("no /proc path in {msg}"));
    let rest = &msg[start..];
    let end = rest
        .find(|c: char| c.is_whitespace() || c == ')')
        .unwrap_or(rest.len());
    PathBuf::from(&rest[..end])
}

#[tokio::test]
async fn the_health_probe_is_a_real_write_to_the_database_file() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("t.db");
    let store = SqliteStore::open(&path).expect("open");
    let observer = rusqlite::Connection::open(&path).expect("observer");
    let version = || -> i64 {
        observer
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .expect("data_version")
    };
    let before = version();
    store.probe_writable().await.expect("probe");
    // data_version changes for an observer only when another connection committed a change
    // to the file; a TEMP table (the old probe) never did.
    assert_ne!(version(), before);
    store.close().await;
}

/// How a test opens its store: as an operator command does, or as the daemon does (with
/// the lock and the background checkpoint thread, see `checkpoint`).
#[derive(Clone, Copy, Debug)]
enum Opener {
    Command,
    Daemon,
}

impl Opener {
    fn open(self, path: &Path) -> SqliteStore {
        match self {
            Opener::Command => SqliteStore::open(path).expect("open"),
            Opener::Daemon => {
                SqliteStore::open_exclusive(path, EmptyFile::Refuse).expect("open as the daemon")
            }
        }
    }
}

#[tokio::test]
async fn a_deleted_database_refuses_every_operation_and_its_content_stays_recoverable() {
    deleted_database(Opener::Command).await;
}

#[tokio::test]
async fn a_deleted_daemon_database_stays_recoverable_with_the_checkpoint_thread() {
    deleted_database(Opener::Daemon).await;
}

async fn deleted_database(opener: Opener) {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("t.db");
    let store = opener.open(&path);
    store.ingest(ipn("k1")).await.expect("first IPN");
    std::fs::remove_file(&path).expect("rm");

    let err = store.ingest(ipn("k2")).await.expect_err("refused");
    let StoreError::Unavailable(msg) = &err else {
        panic!("{err:?}")
    };
    assert!(msg.contains("was deleted"), "{msg}");
    assert!(msg.contains("503"), "{msg}");
    // Sticky: reads and the health probe are refused too, with the same reason.
    let probe = store.probe_writable().await.expect_err("probe refused");
    assert_eq!(probe, err);
    assert!(store.list_ipns(None).await.is_err());
    assert_eq!(store.error_count(), 3);
    assert!(!path.exists(), "nothing was created at the path");

    // The writer checkpointed the WAL into the deleted file: a copy of it is complete.
    let copy = dir.path().join("recovered.db");
    std::fs::copy(proc_path(msg), &copy).expect("copy from /proc");
    let acknowledged: i64 = rusqlite::Connection::open(&copy)
        .and_then(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM ipns WHERE business_key = 'k1'",
                [],
                |r| r.get(0),
            )
        })
        .expect("read the copy");
    assert_eq!(acknowledged, 1, "the acknowledged IPN is in the copy");
    assert_eq!(
        std::fs::metadata(dir.path().join("t.db-wal")).map_or(0, |m| m.len()),
        0,
        "no WAL frames left at the path for a future file to pick up"
    );
    store.close().await;
}

#[tokio::test]
async fn a_replaced_database_is_noticed_before_the_commit_is_acknowledged() {
    replaced_database(Opener::Command).await;
}

#[tokio::test]
async fn a_replaced_daemon_database_is_noticed_with_the_checkpoint_thread() {
    replaced_database(Opener::Daemon).await;
}

async fn replaced_database(opener: Opener) {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("t.db");
    let store = opener.open(&path);
    store.ingest(ipn("k1")).await.expect("first IPN");
    // Another (valid) database moved over the path, as `mv` or a careless restore does.
    let other = dir.path().join("other.db");
    SqliteStore::open(&other).expect("other").close().await;
    std::fs::rename(&other, &path).expect("replace");

    match store.ingest(ipn("k2")).await {
        Err(StoreError::Unavailable(msg)) => assert!(msg.contains("replaced"), "{msg}"),
        other => panic!("expected the replacement to be refused, got {other:?}"),
    }
    store.close().await;
    assert_eq!(
        rows_in(&path),
        0,
        "the file now at the path was not written"
    );
}

#[tokio::test]
async fn a_database_overwritten_in_place_is_refused_and_leaves_no_wal_behind() {
    overwritten_database(Opener::Command).await;
}

#[tokio::test]
async fn an_overwritten_daemon_database_leaves_no_wal_behind_with_the_checkpoint_thread() {
    overwritten_database(Opener::Daemon).await;
}

async fn overwritten_database(opener: Opener) {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("t.db");
    let store = opener.open(&path);
    store.ingest(ipn("k1")).await.expect("first IPN");
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.write_all_at(&[0xA5; 100], 0))
        .expect("overwrite the header");
    match store.probe_writable().await {
        Err(StoreError::Unavailable(msg)) => {
            assert!(
                msg.contains("no longer starts with the SQLite header"),
                "{msg}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(store.ingest(ipn("k2")).await.is_err());
    store.close().await;
    assert_eq!(
        std::fs::metadata(dir.path().join("t.db-wal")).map_or(0, |m| m.len()),
        0,
        "the latest commits went into the file; no WAL frames are left for a restored file"
    );
}

#[tokio::test]
async fn only_one_daemon_opens_a_database_and_the_operator_commands_still_do() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("t.db");
    let daemon = SqliteStore::open_exclusive(&path, EmptyFile::Refuse).expect("first daemon");
    daemon.ingest(ipn("k1")).await.expect("ingest");
    match SqliteStore::open_exclusive(&path, EmptyFile::Refuse) {
        Err(StoreError::InUse(msg)) => {
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(
                msg.contains(&format!("pid {}", std::process::id())),
                "{msg}"
            );
        }
        other => panic!("expected InUse, got {other:?}"),
    }
    let operator = SqliteStore::open(&path).expect("queue/events open beside the daemon");
    assert_eq!(operator.list_ipns(None).await.expect("list").len(), 1);
    operator.close().await;
    daemon.close().await;
    // Closing the daemon's store releases the lock (a restart in the same process).
    SqliteStore::open_exclusive(&path, EmptyFile::Refuse)
        .expect("reopen after close")
        .close()
        .await;
}

#[tokio::test]
async fn an_empty_file_is_refused_unless_initialising_and_a_missing_one_is_created() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("t.db");
    std::fs::write(&path, b"").expect("empty file");
    for result in [
        SqliteStore::open(&path),
        SqliteStore::open_exclusive(&path, EmptyFile::Refuse),
    ] {
        match result {
            Err(StoreError::Damaged(msg)) => assert!(msg.contains("--init"), "{msg}"),
            other => panic!("expected Damaged, got {other:?}"),
        }
    }
    assert_eq!(
        std::fs::metadata(&path).expect("meta").len(),
        0,
        "left alone"
    );
    let store = SqliteStore::open_exclusive(&path, EmptyFile::Initialise).expect("--init");
    store.ingest(ipn("k1")).await.expect("usable");
    store.close().await;

    let fresh = dir.path().join("fresh.db");
    let store = SqliteStore::open_exclusive(&fresh, EmptyFile::Refuse).expect("missing file");
    store.ingest(ipn("k1")).await.expect("usable");
    store.close().await;
}

/// A database with some rows whose middle page is overwritten with garbage.
async fn damaged_database(path: &Path) {
    let store = SqliteStore::open(path).expect("open");
    for i in 0..400 {
        store.ingest(ipn(&format!("k{i}"))).await.expect("ingest");
    }
    store.close().await;
    let len = std::fs::metadata(path).expect("meta").len();
    let page = 4096;
    // The last page: rows of `ipns` or its indexes, not the schema (which open reads).
    let last = len - page;
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.write_all_at(&vec![0xFF; page as usize], last))
        .expect("damage");
}

#[tokio::test]
async fn a_damaged_database_is_refused_at_start_by_quick_check() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("t.db");
    damaged_database(&path).await;
    match SqliteStore::open_exclusive(&path, EmptyFile::Refuse) {
        Err(StoreError::Damaged(msg)) => {
            assert!(msg.contains("quick_check"), "{msg}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
        }
        other => panic!("expected Damaged, got {other:?}"),
    }
    // `--init` never overwrites a file that is not empty.
    assert!(SqliteStore::open_exclusive(&path, EmptyFile::Initialise).is_err());
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("t.db");
    std::fs::write(&path, vec![b'x'; 8192]).expect("write");
    match SqliteStore::open_exclusive(&path, EmptyFile::Refuse) {
        Err(StoreError::Damaged(msg)) => {
            assert!(msg.contains("not a usable SQLite database"), "{msg}");
        }
        other => panic!("expected Damaged, got {other:?}"),
    }
}

#[tokio::test]
async fn failing_writes_are_counted_and_the_store_recovers_by_itself() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("t.db");
    let store = SqliteStore::open(&path).expect("open");
    store.ingest(ipn("k0")).await.expect("ingest");
    // A full "disk": the file may not grow beyond its current pages.
    let pages: i64 = store
        .call(|c| Ok(c.query_row("PRAGMA page_count", [], |r| r.get(0))?))
        .await
        .expect("page_count");
    store
        .call(move |c| {
            c.execute_batch(&format!("PRAGMA max_page_count = {pages}"))?;
            Ok(())
        })
        .await
        .expect("limit");
    let big = |i: usize| {
        let mut n = ipn(&format!("big{i}"));
        n.raw_body = vec![b'a'; 64 * 1024];
        n
    };
    let mut failed = 0;
    for i in 0..20 {
        match store.ingest(big(i)).await {
            Err(StoreError::Unavailable(msg)) => {
                assert!(msg.contains("full"), "{msg}");
                failed += 1;
            }
            other => panic!("expected disk full, got {other:?}"),
        }
    }
    assert_eq!(failed, 20);
    assert_eq!(store.error_count(), 20);
    store
        .call(|c| {
            c.execute_batch("PRAGMA max_page_count = 1073741823")?;
            Ok(())
        })
        .await
        .expect("room again");
    store.ingest(big(99)).await.expect("writes again");
    assert_eq!(store.error_count(), 20);
    store.close().await;
}
