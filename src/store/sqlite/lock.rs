//! One daemon per database: the lock file `<db>.lock` beside the database.
//!
//! Two daemons on one file would each take the other's in-flight jobs for interrupted ones
//! and send them again (two orders for one IPN). So the daemon takes an exclusive OS
//! advisory lock (`flock` through std's [`std::fs::File::try_lock`]) on `<db>.lock` before it
//! opens the database, and holds it until its writer thread has closed the connection. The
//! file holds the owner's PID, so a second `run` can say who holds it.
//!
//! Decisions:
//! * **A lock file, not a SQLite lock.** SQLite's own locks are per transaction; holding
//!   one for the process's life would stop the operator commands (`queue`, `events`,
//!   `explain`, `replay`), which must keep working beside the daemon. They do not take
//!   this lock.
//! * **The OS releases it.** A crashed or killed daemon leaves the file behind but not the
//!   lock: the kernel drops an `flock` with the last descriptor, so there is no stale lock
//!   to clean up and the file is never deleted (deleting it would let a third process lock
//!   a new file while the second still holds the old one).
//! * **`try_lock`, never wait.** A second daemon fails at once with a message naming the
//!   database and the PID, instead of hanging in start-up.
//! * The PID is informative only (written after the lock is taken; a reader that races the
//!   writer may find it empty and says so).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::StoreError;

/// The lock file of the database at `db`: the same path with `.lock` appended.
pub fn lock_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// The held lock; released when dropped (or when the process ends, however it ends).
#[derive(Debug)]
pub struct DaemonLock {
    /// Kept open: the lock lives as long as this descriptor.
    _file: File,
}

impl DaemonLock {
    /// Takes the lock of the database at `db` for this process, or fails at once with
    /// [`StoreError::InUse`] naming the database and the holder's PID.
    pub fn acquire(db: &Path) -> Result<DaemonLock, StoreError> {
        let path = lock_path(db);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| {
                StoreError::Unavailable(format!(
                    "cannot open the lock file {}: {e}",
                    path.display()
                ))
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = match read_pid(&mut file) {
                    Some(pid) => format!("pid {pid}"),
                    None => "pid not yet written".to_owned(),
                };
                return Err(StoreError::InUse(format!(
                    "the database {} is in use by another ipn-bridge daemon ({holder}; lock file {}). \
                     Only one daemon may run per database: stop the other one first",
                    db.display(),
                    path.display()
                )));
            }
            Err(TryLockError::Error(e)) => {
                return Err(StoreError::Unavailable(format!(
                    "cannot lock {}: {e}",
                    path.display()
                )));
            }
        }
        let written = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{}", std::process::id()));
        if let Err(e) = written {
            // The lock itself is held; only the informative PID is missing.
            tracing::warn!(path = %path.display(), error = %e, "could not write the PID into the lock file");
        }
        Ok(DaemonLock { _file: file })
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_database_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("ipn-bridge.db");
        let held = DaemonLock::acquire(&db).expect("first lock");
        assert_eq!(lock_path(&db), dir.path().join("ipn-bridge.db.lock"));
        let text = std::fs::read_to_string(lock_path(&db)).expect("lock file");
        assert_eq!(text.trim(), std::process::id().to_string());
        match DaemonLock::acquire(&db) {
            Err(StoreError::InUse(msg)) => {
                assert!(msg.contains(&db.display().to_string()), "{msg}");
                assert!(
                    msg.contains(&format!("pid {}", std::process::id())),
                    "{msg}"
                );
            }
            other => panic!("expected InUse, got {other:?}"),
        }
        drop(held);
        let again = DaemonLock::acquire(&db).expect("free again after the holder dropped it");
        drop(again);
        assert!(
            dir.path().join("ipn-bridge.db.lock").exists(),
            "the lock file is never deleted"
        );
    }
}
