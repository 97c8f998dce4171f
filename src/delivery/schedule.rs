//! Retry *timing* and the job's next step, as pure functions.
//!
//! The *decision* (what class an attempt's result is) is the connector's
//! [`Outcome`](crate::domain::Outcome); this file turns it into the job's next step:
//! delivered, retry at a time, or dead. Times are plain Unix milliseconds and the jitter is a
//! number in `[0, 1)` passed in, so the functions are deterministic and tested by tables and
//! properties; the dispatcher supplies the clock and the randomness. The chosen time is
//! stored with the job, so the schedule survives restarts.
//!
//! Delay before the n-th retry: `retry_initial · 2^(n-1)`, capped at `retry_max`, then
//! jittered down by up to 20% (so the jittered delays stay within `[0.8·d, d]`, never above
//! the cap, and many jobs failing together spread out). A `Retry-After` from the target
//! raises the delay to at least that value, still capped at `retry_max`. Once
//! `give_up_after` has passed since the job was created (or last retried by an operator with
//! `queue retry`), a failure dead-letters it.

use std::time::Duration;

use crate::config::Delivery;
use crate::domain::Outcome;
use crate::store::Disposition;

/// Largest share of a delay removed by jitter.
pub const JITTER_SHARE: f64 = 0.2;

/// Un-jittered delay before retry number `retry_no` (1 = the first retry).
pub fn base_delay(policy: &Delivery, retry_no: u32) -> Duration {
    let exp = retry_no.saturating_sub(1).min(40);
    let factor = 1u64 << exp;
    let initial_ms = u64::try_from(policy.retry_initial.as_millis()).unwrap_or(u64::MAX);
    let max_ms = u64::try_from(policy.retry_max.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(initial_ms.saturating_mul(factor).min(max_ms))
}

/// Delay before retry number `retry_no`, with `jitter ∈ [0, 1)` and an optional
/// `Retry-After` from the target.
pub fn retry_delay(
    policy: &Delivery,
    retry_no: u32,
    jitter: f64,
    retry_after: Option<Duration>,
) -> Duration {
    let base = base_delay(policy, retry_no);
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let jittered = base.mul_f64(1.0 - JITTER_SHARE * jitter);
    match retry_after {
        Some(ra) => jittered.max(ra).min(policy.retry_max),
        None => jittered,
    }
}

/// Facts about the job that the next step depends on.
#[derive(Debug, Clone, Copy)]
pub struct JobClock {
    /// Start of the `give_up_after` window: the job's creation, or its last operator retry.
    pub since: i64,
    pub now: i64,
    /// Attempts made so far, including the one that just ended.
    pub attempts: u32,
}

/// The job's next step after an attempt ended with `outcome`.
///
/// `reconcile` says whether the retry must first look for an earlier result in the target
/// (the action is not safe to repeat and the attempt may have been applied).
pub fn next_step(
    policy: &Delivery,
    outcome: &Outcome,
    reconcile: bool,
    job: JobClock,
    jitter: f64,
) -> Disposition {
    let retry_after = match outcome {
        Outcome::Delivered(receipt) => return Disposition::Delivered(receipt.clone()),
        Outcome::Permanent { .. } => return Disposition::Dead,
        Outcome::Retryable { retry_after, .. } => *retry_after,
        Outcome::TargetDown { .. } | Outcome::Unknown { .. } => None,
    };
    let age_ms = job.now.saturating_sub(job.since);
    let give_up_ms = i64::try_from(policy.give_up_after.as_millis()).unwrap_or(i64::MAX);
    if age_ms >= give_up_ms {
        return Disposition::Dead;
    }
    let delay = retry_delay(policy, job.attempts.max(1), jitter, retry_after);
    let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
    Disposition::Retry {
        at: job.now.saturating_add(delay_ms),
        reconcile,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Receipt;
    use proptest::prelude::*;

    fn policy() -> Delivery {
        Delivery {
            timeout: Duration::from_secs(30),
            retry_initial: Duration::from_secs(30),
            retry_max: Duration::from_secs(3600),
            give_up_after: Duration::from_secs(10 * 86_400),
        }
    }

    #[test]
    fn base_delay_doubles_from_initial_up_to_the_cap() {
        let p = policy();
        let table = [
            (1, 30),
            (2, 60),
            (3, 120),
            (4, 240),
            (7, 1920),
            (8, 3600),
            (50, 3600),
        ];
        for (n, secs) in table {
            assert_eq!(base_delay(&p, n), Duration::from_secs(secs), "retry {n}");
        }
    }

    #[test]
    fn retry_after_raises_the_delay_but_never_past_the_cap() {
        let p = policy();
        assert_eq!(
            retry_delay(&p, 1, 0.0, Some(Duration::from_secs(120))),
            Duration::from_secs(120)
        );
        assert_eq!(
            retry_delay(&p, 1, 0.0, Some(Duration::from_secs(99_999))),
            Duration::from_secs(3600)
        );
        assert_eq!(
            retry_delay(&p, 3, 0.0, Some(Duration::from_secs(1))),
            Duration::from_secs(120)
        );
    }

    #[test]
    fn next_step_table() {
        let p = policy();
        let job = JobClock {
            since: 0,
            now: 1_000,
            attempts: 1,
        };
        let retry = |reason: &str| Outcome::Retryable {
            reason: reason.into(),
            retry_after: None,
        };
        assert_eq!(
            next_step(&p, &Outcome::Delivered(Receipt::default()), false, job, 0.0),
            Disposition::Delivered(Receipt::default())
        );
        assert_eq!(
            next_step(
                &p,
                &Outcome::Permanent { reason: "x".into() },
                false,
                job,
                0.0
            ),
            Disposition::Dead
        );
        assert_eq!(
            next_step(&p, &retry("502"), false, job, 0.0),
            Disposition::Retry {
                at: 31_000,
                reconcile: false
            }
        );
        assert_eq!(
            next_step(&p, &Outcome::Unknown { reason: "t".into() }, true, job, 0.0),
            Disposition::Retry {
                at: 31_000,
                reconcile: true
            }
        );
        let old = JobClock {
            since: 0,
            now: 10 * 86_400_000,
            attempts: 40,
        };
        assert_eq!(
            next_step(&p, &retry("502"), false, old, 0.0),
            Disposition::Dead
        );
    }

    proptest! {
        #[test]
        fn delays_are_monotone_capped_and_jittered_within_bounds(
            initial_ms in 1u64..120_000,
            max_factor in 1u64..1_000,
            n in 1u32..64,
            jitter in 0.0f64..1.0,
        ) {
            let p = Delivery {
                timeout: Duration::from_secs(1),
                retry_initial: Duration::from_millis(initial_ms),
                retry_max: Duration::from_millis(initial_ms * max_factor),
                give_up_after: Duration::from_secs(86_400),
            };
            let base = base_delay(&p, n);
            prop_assert!(base_delay(&p, n + 1) >= base);
            prop_assert!(base <= p.retry_max);
            prop_assert!(base >= p.retry_initial.min(p.retry_max));
            let d = retry_delay(&p, n, jitter, None);
            prop_assert!(d <= base);
            prop_assert!(d >= base.mul_f64(1.0 - JITTER_SHARE) - Duration::from_millis(1));
        }
    }
}
