//! Which instance dispatches which target: one dispatcher per target across all instances,
//! chosen by a PostgreSQL session-level advisory lock, with fail-over.
//!
//! Why a lock per target rather than only `FOR UPDATE SKIP LOCKED` leases: with one
//! dispatcher per target, everything the single-daemon design relies on holds unchanged
//! across instances — the target's token bucket is one bucket (so the sum of all instances
//! never exceeds `requests_per_second` + `burst`), jobs of one Digistore24 order run in
//! order, a paused target is probed by one instance, and reconciliation of an interrupted
//! import happens before anyone resends it. Leases still use `FOR UPDATE SKIP LOCKED`, so two
//! leasers could never take the same job even if two instances believed they held a target.
//!
//! The locks live on one dedicated connection per instance (not a pooled one: a session
//! lock belongs to the connection that took it). When the instance dies, PostgreSQL ends
//! its session and releases its locks; another instance's dispatcher, which asks for the
//! lock at least every poll interval, takes the target over: it first *recovers* the
//! target's jobs left `in_flight` (their attempts become `interrupted`, and the imports and
//! refunds among them are looked up before any resend), then starts with an empty token
//! bucket, so the requests the dead instance made in its last second count against the new
//! owner's budget. When this instance's lock connection breaks (checked at most every
//! [`PING_EVERY`]), it stops dispatching every target until it has the locks again; an
//! attempt it still finishes afterwards is refused by the store (the attempt must still be
//! open), so it cannot overwrite what the new owner did.
//!
//! The same connection holds the *role* locks (see [`PgStore::claim_role`]): which instance
//! mails the shared alert outbox and runs each source's periodic audit.
//!
//! Lock keys: `pg_try_advisory_lock(TARGET_SPACE, fnv1a(target name))`, and `ROLE_SPACE`
//! for roles. Two names with the
//! same hash share a lock: both targets are then dispatched by the same instance, which is
//! correct, only less spread out.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tokio_postgres::Client;

use super::tls::MakeRustls;
use super::{PgStore, pg_error};
use crate::store::{Claim, StoreError, reconciled_kind_names};

/// First key of every dispatcher lock: "ipnb" in ASCII.
const TARGET_SPACE: i32 = 0x6970_6e62;

/// First key of every role lock (see [`PgStore::claim_role`]): "ipnr".
const ROLE_SPACE: i32 = 0x6970_6e72;

/// Gives up the lock `(space, name)` (after a claim that could not be completed).
async fn unlock(state: &State, space: i32, name: &str) {
    if let Some(client) = &state.client {
        let _ = client
            .query_one(
                "SELECT pg_advisory_unlock($1, $2)",
                &[&space, &name_key(name)],
            )
            .await;
    }
}

/// How often a held lock connection is checked with a round trip.
pub const PING_EVERY: Duration = Duration::from_secs(1);

/// The dedicated lock connection and the targets it holds.
pub(super) struct Claims {
    config: tokio_postgres::Config,
    /// The store's TLS (see [`super::tls`]).
    tls: MakeRustls,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    client: Option<Client>,
    /// `(key space, name)` of every lock held.
    held: BTreeSet<(i32, String)>,
    checked_at: Option<Instant>,
}

impl Claims {
    pub(super) fn new(config: tokio_postgres::Config, tls: MakeRustls) -> Claims {
        let mut config = config;
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .application_name("ipn-bridge dispatcher locks");
        Claims {
            config,
            tls,
            state: Mutex::new(State::default()),
        }
    }

    /// Gives up every lock (at once, so another instance can take over at its next poll)
    /// and closes the lock connection. Were the unlock to fail, PostgreSQL still releases
    /// the locks when it sees the session end.
    pub(super) async fn release(&self) {
        let mut state = self.state.lock().await;
        if let Some(client) = state.client.take() {
            let _ = client.simple_query("SELECT pg_advisory_unlock_all()").await;
        }
        state.held.clear();
    }
}

/// The second lock key of a target or role name (FNV-1a, 32 bits).
fn name_key(name: &str) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in name.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    i32::from_ne_bytes(hash.to_ne_bytes())
}

/// What asking for one lock gave.
enum Lock {
    AlreadyHeld,
    NewlyTaken,
    Elsewhere,
}

impl PgStore {
    /// Whether this instance dispatches `target` (see the module doc). On a new claim, the
    /// target's interrupted jobs are recovered first, due at `retry_at`.
    pub async fn claim_target(
        &self,
        target: &str,
        now: i64,
        retry_at: i64,
    ) -> Result<Claim, StoreError> {
        let mut state = self.claims.state.lock().await;
        match self.try_lock(&mut state, TARGET_SPACE, target).await? {
            Lock::AlreadyHeld => Ok(Claim::Held),
            Lock::Elsewhere => Ok(Claim::Elsewhere),
            Lock::NewlyTaken => match self.recover_target(target, now, retry_at).await {
                Ok(recovered) => {
                    state.held.insert((TARGET_SPACE, target.to_owned()));
                    Ok(Claim::Taken { recovered })
                }
                Err(e) => {
                    // Not recovered: not ours. Another instance (or this one, next round)
                    // tries again from the start.
                    unlock(&state, TARGET_SPACE, target).await;
                    Err(e)
                }
            },
        }
    }

    /// Whether this instance plays `role` (one instance at a time, fail-over as for
    /// targets): `alert-sender` mails the shared alert outbox, `audit:<source>` runs a
    /// source's periodic Digistore24 audit, so several instances neither mail a digest twice
    /// nor ask the API twice.
    pub async fn claim_role(&self, role: &str) -> Result<bool, StoreError> {
        let mut state = self.claims.state.lock().await;
        match self.try_lock(&mut state, ROLE_SPACE, role).await? {
            Lock::AlreadyHeld => Ok(true),
            Lock::NewlyTaken => {
                tracing::info!(role, "this instance now plays the role");
                state.held.insert((ROLE_SPACE, role.to_owned()));
                Ok(true)
            }
            Lock::Elsewhere => Ok(false),
        }
    }

    /// Asks for the lock `(space, name)` on the lock connection, (re)connecting it first
    /// when it is gone (every lock it held is then lost, and said so).
    async fn try_lock(
        &self,
        state: &mut State,
        space: i32,
        name: &str,
    ) -> Result<Lock, StoreError> {
        let alive = match &state.client {
            Some(client) if !client.is_closed() => {
                let fresh = state.checked_at.is_some_and(|at| at.elapsed() < PING_EVERY);
                fresh || client.simple_query("SELECT 1").await.is_ok()
            }
            _ => false,
        };
        if !alive {
            if !state.held.is_empty() {
                tracing::error!(
                    held = ?state.held.iter().map(|(_, n)| n).collect::<Vec<_>>(),
                    "lost the connection that holds the dispatcher locks; this instance stops \
                     dispatching those targets (and playing those roles) until it holds their \
                     locks again"
                );
            }
            state.held.clear();
            state.client = None;
            let (client, connection) = self
                .claims
                .config
                .connect(self.claims.tls.clone())
                .await
                .map_err(pg_error)?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "dispatcher lock connection ended");
                }
            });
            state.client = Some(client);
        }
        state.checked_at = Some(Instant::now());
        if state.held.contains(&(space, name.to_owned())) {
            return Ok(Lock::AlreadyHeld);
        }
        let Some(client) = &state.client else {
            return Err(StoreError::Unavailable("no lock connection".into()));
        };
        let taken: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock($1, $2)",
                &[&space, &name_key(name)],
            )
            .await
            .map_err(pg_error)?
            .get(0);
        Ok(if taken {
            Lock::NewlyTaken
        } else {
            Lock::Elsewhere
        })
    }

    /// Every job of `target` left `in_flight` (by an instance that stopped) goes back to
    /// `pending` at `retry_at`, its open attempt closed as `interrupted`, flagged for
    /// reconciliation when its action is not safe to repeat. Returns the number of jobs.
    async fn recover_target(
        &self,
        target: &str,
        now: i64,
        retry_at: i64,
    ) -> Result<u64, StoreError> {
        let unsafe_kinds: Vec<String> = reconciled_kind_names()
            .into_iter()
            .map(str::to_owned)
            .collect();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        tx.execute(
            "UPDATE attempts a SET outcome = 'interrupted', finished_at = $1,
                    reason = 'the instance running this attempt stopped'
             FROM jobs j
             WHERE a.job_id = j.id AND j.target = $2 AND j.state = 'in_flight'
               AND a.outcome IS NULL",
            &[&now, &target],
        )
        .await
        .map_err(pg_error)?;
        let n = tx
            .execute(
                "UPDATE jobs SET state = 'pending', next_attempt_at = $3, updated_at = $1,
                        needs_reconcile = (needs_reconcile OR action = ANY($4)),
                        last_error = 'interrupted: the instance dispatching this target stopped'
                 WHERE target = $2 AND state = 'in_flight'",
                &[&now, &target, &retry_at, &unsafe_kinds],
            )
            .await
            .map_err(pg_error)?;
        tx.commit().await.map_err(pg_error)?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_instance_holds_a_target_and_another_takes_it_over_with_its_jobs() {
        let Some(url) = crate::store::testing::fresh_database().await else {
            return;
        };
        let a = PgStore::connect(&url).await.expect("instance a");
        let b = PgStore::connect(&url).await.expect("instance b");
        let store_a = crate::store::Store::Postgres(a.clone());
        store_a
            .ingest(crate::store::tests::ipn("k1", "A", true))
            .await
            .expect("ingest");
        assert_eq!(
            a.claim_target("crm", 1_000, 1_000).await.expect("claim"),
            Claim::Taken { recovered: 0 }
        );
        assert_eq!(
            a.claim_target("crm", 1_000, 1_000).await.expect("again"),
            Claim::Held
        );
        assert_eq!(
            b.claim_target("crm", 1_000, 1_000).await.expect("b"),
            Claim::Elsewhere
        );
        // Another target is free for b.
        assert_eq!(
            b.claim_target("webhook", 1_000, 1_000)
                .await
                .expect("b other"),
            Claim::Taken { recovered: 0 }
        );
        let leased = store_a.lease_due("crm", 2_000, 10).await.expect("lease");
        assert_eq!(leased.len(), 1);
        // a stops (as a crash ends its session): b takes the target and its in-flight job.
        a.close().await;
        assert_eq!(
            b.claim_target("crm", 3_000, 3_500)
                .await
                .expect("take over"),
            Claim::Taken { recovered: 1 }
        );
        let store_b = crate::store::Store::Postgres(b.clone());
        let job = store_b.job(leased[0].id).await.expect("job");
        assert_eq!(job.state, "pending");
        assert!(
            job.needs_reconcile,
            "an import is looked up before it is sent again"
        );
        assert_eq!(job.next_attempt_at, 3_500);
        let attempts = store_b.attempts(leased[0].id).await.expect("attempts");
        assert_eq!(attempts[0].outcome.as_deref(), Some("interrupted"));
        b.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_role_is_played_by_one_instance_at_a_time() {
        let Some(url) = crate::store::testing::fresh_database().await else {
            return;
        };
        let a = PgStore::connect(&url).await.expect("instance a");
        let b = PgStore::connect(&url).await.expect("instance b");
        assert!(a.claim_role("alert-sender").await.expect("a"));
        assert!(a.claim_role("alert-sender").await.expect("a again"));
        assert!(!b.claim_role("alert-sender").await.expect("b"));
        assert!(b.claim_role("audit:ds24").await.expect("b audit"));
        // A role and a target of the same name are different locks.
        assert_eq!(
            a.claim_target("audit:ds24", 0, 0).await.expect("target"),
            Claim::Taken { recovered: 0 }
        );
        a.close().await;
        assert!(b.claim_role("alert-sender").await.expect("b after a"));
        b.close().await;
    }

    #[test]
    fn target_keys_are_stable_and_spread() {
        assert_eq!(name_key("crm"), name_key("crm"));
        assert_ne!(name_key("crm"), name_key("crm2"));
        // FNV-1a of the empty string is its offset basis.
        assert_eq!(
            name_key(""),
            i32::from_ne_bytes(0x811c_9dc5_u32.to_ne_bytes())
        );
    }
}
