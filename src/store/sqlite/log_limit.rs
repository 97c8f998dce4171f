//! Keeps a failing store from flooding the log: the first failure of a kind is logged in
//! full, repeats within [`WINDOW`] are only counted, and the next failure after the window
//! is logged with how often the kind repeated in between ("… repeated 1234 times in the
//! last 60 s"). When the store works again, one line says how many operations had failed.
//!
//! Decisions:
//! * **Pure.** The limiter decides and counts; it does not log, and it takes the time as an
//!   argument, so it is tested with made-up instants. The writer thread (its only user)
//!   turns verdicts into log lines.
//! * **Kind = the error text.** "database or disk is full" and "disk I/O error" are
//!   different problems and each gets its own first line; the same text repeated is one
//!   problem. At most [`MAX_KINDS`] texts are tracked; further ones share one entry, so an
//!   error text with a changing part cannot grow the table without bound.
//! * Every failure is also counted for `ipn_bridge_store_errors_total` by the caller, so the
//!   numbers stay visible while the lines are few.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Repeats of one kind within this window after its last logged line are counted, not
/// logged.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Most distinct error texts tracked; beyond that they share [`OTHER_KIND`].
pub const MAX_KINDS: usize = 32;

/// The shared entry of error texts beyond [`MAX_KINDS`].
const OTHER_KIND: &str = "(other store errors)";

/// What to do with one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// First of its kind (or first after a quiet window): log it.
    Log,
    /// A repeat within the window: count it only.
    Suppress,
    /// The window is over: log it, saying it repeated `repeated` times over `over`.
    Summary { repeated: u64, over: Duration },
}

#[derive(Debug)]
struct Entry {
    /// When the last line of this kind was logged.
    logged_at: Instant,
    /// Repeats counted since.
    suppressed: u64,
}

/// The limiter; see the module docs.
#[derive(Debug)]
pub struct LogLimiter {
    window: Duration,
    kinds: HashMap<String, Entry>,
    /// Failures since the store last worked (for the recovery line).
    failures_since_ok: u64,
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter::new(WINDOW)
    }
}

impl LogLimiter {
    pub fn new(window: Duration) -> Self {
        LogLimiter {
            window,
            kinds: HashMap::new(),
            failures_since_ok: 0,
        }
    }

    /// `count` failures (the operations of one batch) with text `kind` at `now`.
    pub fn failure(&mut self, kind: &str, count: u64, now: Instant) -> Verdict {
        self.failures_since_ok = self.failures_since_ok.saturating_add(count);
        let key = if self.kinds.contains_key(kind) || self.kinds.len() < MAX_KINDS {
            kind
        } else {
            OTHER_KIND
        };
        let Some(entry) = self.kinds.get_mut(key) else {
            self.kinds.insert(
                key.to_owned(),
                Entry {
                    logged_at: now,
                    suppressed: 0,
                },
            );
            return Verdict::Log;
        };
        let since = now.saturating_duration_since(entry.logged_at);
        if since < self.window {
            entry.suppressed = entry.suppressed.saturating_add(count);
            return Verdict::Suppress;
        }
        let repeated = std::mem::take(&mut entry.suppressed);
        entry.logged_at = now;
        if repeated == 0 {
            Verdict::Log
        } else {
            Verdict::Summary {
                repeated,
                over: since,
            }
        }
    }

    /// The store worked (a write committed). Returns how many failures there were since it
    /// last worked, when there were any, and forgets every kind, so the next failure is
    /// logged in full again.
    pub fn recovered(&mut self) -> Option<u64> {
        if self.failures_since_ok == 0 {
            return None;
        }
        self.kinds.clear();
        Some(std::mem::take(&mut self.failures_since_ok))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn the_first_failure_is_logged_repeats_are_counted_and_summarised_after_the_window() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(60 * SEC);
        assert_eq!(l.failure("disk full", 1, t0), Verdict::Log);
        // 85 failures a second for the rest of the minute: none is logged.
        let mut logged = 0;
        for i in 1..(85 * 59) {
            let at = t0 + Duration::from_millis(i * 1000 / 85);
            if l.failure("disk full", 1, at) != Verdict::Suppress {
                logged += 1;
            }
        }
        assert_eq!(logged, 0);
        assert_eq!(
            l.failure("disk full", 1, t0 + 61 * SEC),
            Verdict::Summary {
                repeated: 85 * 59 - 1,
                over: 61 * SEC
            }
        );
        // The window starts again at the summary.
        assert_eq!(l.failure("disk full", 1, t0 + 62 * SEC), Verdict::Suppress);
        assert_eq!(
            l.failure("disk full", 1, t0 + 121 * SEC),
            Verdict::Summary {
                repeated: 1,
                over: 60 * SEC
            }
        );
    }

    #[test]
    fn a_failed_batch_counts_each_of_its_operations() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(60 * SEC);
        assert_eq!(l.failure("disk full", 1024, t0), Verdict::Log);
        assert_eq!(l.failure("disk full", 10, t0 + SEC), Verdict::Suppress);
        assert_eq!(
            l.failure("disk full", 1, t0 + 61 * SEC),
            Verdict::Summary {
                repeated: 10,
                over: 61 * SEC
            }
        );
        assert_eq!(l.recovered(), Some(1035));
    }

    #[test]
    fn a_kind_seen_once_per_window_is_logged_each_time_without_a_summary() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(60 * SEC);
        assert_eq!(l.failure("locked", 1, t0), Verdict::Log);
        assert_eq!(l.failure("locked", 1, t0 + 90 * SEC), Verdict::Log);
    }

    #[test]
    fn each_kind_has_its_own_first_line_and_window() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(60 * SEC);
        assert_eq!(l.failure("disk full", 1, t0), Verdict::Log);
        assert_eq!(l.failure("disk I/O error", 1, t0 + SEC), Verdict::Log);
        assert_eq!(l.failure("disk full", 1, t0 + 2 * SEC), Verdict::Suppress);
        assert_eq!(
            l.failure("disk I/O error", 1, t0 + 3 * SEC),
            Verdict::Suppress
        );
    }

    #[test]
    fn error_texts_beyond_the_limit_share_one_entry() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(60 * SEC);
        for i in 0..MAX_KINDS {
            assert_eq!(l.failure(&format!("error {i}"), 1, t0), Verdict::Log);
        }
        assert_eq!(l.failure("yet another text", 1, t0), Verdict::Log);
        assert_eq!(l.failure("and another", 1, t0), Verdict::Suppress);
        assert_eq!(l.kinds.len(), MAX_KINDS + 1);
    }

    #[test]
    fn recovery_reports_the_failures_since_the_store_last_worked_and_resets() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(60 * SEC);
        assert_eq!(l.recovered(), None);
        l.failure("disk full", 1, t0);
        l.failure("disk full", 1, t0 + SEC);
        l.failure("disk full", 1, t0 + 2 * SEC);
        assert_eq!(l.recovered(), Some(3));
        assert_eq!(l.recovered(), None);
        // After recovery the next failure is news again.
        assert_eq!(l.failure("disk full", 1, t0 + 3 * SEC), Verdict::Log);
    }
}
