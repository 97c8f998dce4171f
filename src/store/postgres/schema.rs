//! The PostgreSQL schema as an ordered list of migrations, applied at start by every
//! instance.
//!
//! Versions are counted in the table `ipn_bridge_schema` (one row), independently of the
//! SQLite file's `user_version`: a PostgreSQL database starts at the SQLite schema's
//! current shape in its migration 1. A migration is appended, never edited. All of it runs
//! in one transaction that first takes the transaction-level advisory lock
//! [`MIGRATION_LOCK`]: a second instance starting at the same time waits on the lock, then
//! finds the schema current and applies nothing. PostgreSQL's DDL is transactional, so a
//! migration that fails leaves nothing half-applied. A database *newer* than this build is
//! refused rather than guessed at.
//!
//! Types: ids are `BIGINT` identities, times Unix milliseconds (UTC) in `BIGINT`, the raw
//! IPN body `BYTEA`, flags `BOOLEAN`, payloads JSON in `TEXT` written by the store's own
//! API (as on SQLite, the SQL never depends on their shape).

use tokio_postgres::Client;

use super::pg_error;
use crate::store::StoreError;

/// The advisory lock key of migrations (`pg_advisory_xact_lock`): the ASCII of "ipnbrdg1"
/// read as a big-endian `i64`, unlikely to collide with another application's keys.
pub const MIGRATION_LOCK: i64 = 0x6970_6e62_7264_6731;

/// The advisory lock key (`pg_advisory_xact_lock`) that serialises the folds of the job
/// counts (`FOLD_SQL` in `counts.rs`): the ASCII of "ipnbfold" read as a big-endian `i64`.
/// Only a fold writes the rows of shard 0, and the TRUNCATE trigger of migration 4 takes
/// the same lock (written there as its decimal value, which a test checks) before it
/// clears the counts.
pub const FOLD_LOCK: i64 = 0x6970_6e62_666f_6c64;

/// Migration `i` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the SQLite schema as of its version 6.
    r#"
    CREATE TABLE ipns (
        id                     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        source                 TEXT    NOT NULL,
        business_key           TEXT    NOT NULL,
        event                  TEXT    NOT NULL,
        order_id               TEXT,
        order_item_id          TEXT,
        product_id             TEXT,
        transaction_id         TEXT,
        buyer_email            TEXT,
        amount                 TEXT,
        currency               TEXT,
        received_at            BIGINT  NOT NULL,
        raw_body               BYTEA   NOT NULL,
        parent_transaction_id  TEXT,
        UNIQUE (source, business_key)
    );
    CREATE INDEX ipns_received ON ipns (received_at);
    CREATE INDEX ipns_order ON ipns (order_id);
    CREATE INDEX ipns_transaction ON ipns (transaction_id);

    CREATE TABLE jobs (
        id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        ipn_id           BIGINT  NOT NULL REFERENCES ipns (id),
        integration      TEXT    NOT NULL,
        target           TEXT    NOT NULL,
        action           TEXT    NOT NULL,
        payload          TEXT    NOT NULL,
        order_key        TEXT    NOT NULL,
        state            TEXT    NOT NULL,
        attempts         INTEGER NOT NULL DEFAULT 0,
        needs_reconcile  BOOLEAN NOT NULL DEFAULT FALSE,
        next_attempt_at  BIGINT  NOT NULL,
        created_at       BIGINT  NOT NULL,
        updated_at       BIGINT  NOT NULL,
        last_error       TEXT,
        retry_base       BIGINT,
        UNIQUE (ipn_id, integration)
    );
    CREATE INDEX jobs_due ON jobs (target, state, next_attempt_at);
    CREATE INDEX jobs_order ON jobs (integration, order_key, id);

    CREATE TABLE routes (
        id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        ipn_id       BIGINT  NOT NULL REFERENCES ipns (id),
        integration  TEXT    NOT NULL,
        decision     TEXT    NOT NULL,
        reason       TEXT    NOT NULL,
        job_id       BIGINT  REFERENCES jobs (id),
        decided_at   BIGINT  NOT NULL
    );
    CREATE INDEX routes_ipn ON routes (ipn_id);

    CREATE TABLE attempts (
        id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        job_id       BIGINT  NOT NULL REFERENCES jobs (id),
        number       INTEGER NOT NULL,
        kind         TEXT    NOT NULL,
        started_at   BIGINT  NOT NULL,
        finished_at  BIGINT,
        outcome      TEXT,
        endpoint     TEXT,
        http_status  INTEGER,
        request      TEXT,
        response     TEXT,
        reason       TEXT
    );
    CREATE INDEX attempts_job ON attempts (job_id, id);
    CREATE INDEX attempts_open ON attempts (job_id) WHERE outcome IS NULL;

    CREATE TABLE ledger (
        job_id                      BIGINT  PRIMARY KEY REFERENCES jobs (id),
        integration                 TEXT    NOT NULL,
        ds24_order_id               TEXT    NOT NULL,
        ds24_item                   TEXT,
        ds24_transaction_id         TEXT,
        reference                   TEXT    NOT NULL,
        target_order_id             TEXT,
        target_customer_id          TEXT,
        purchase_ids                TEXT    NOT NULL,
        transaction_ids             TEXT    NOT NULL,
        created_at                  BIGINT  NOT NULL,
        action                      TEXT    NOT NULL DEFAULT 'import_order',
        ds24_parent_transaction_id  TEXT
    );
    CREATE INDEX ledger_order ON ledger (integration, ds24_order_id);
    CREATE INDEX ledger_item ON ledger (integration, ds24_order_id, ds24_item, job_id);

    CREATE TABLE operator_actions (
        id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at       BIGINT  NOT NULL,
        "user"   TEXT    NOT NULL,
        command  TEXT    NOT NULL,
        job_id   BIGINT  REFERENCES jobs (id),
        ipn_id   BIGINT  REFERENCES ipns (id),
        reason   TEXT    NOT NULL
    );
    CREATE INDEX operator_actions_job ON operator_actions (job_id);

    CREATE TABLE alerts (
        id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        created_at     BIGINT  NOT NULL,
        kind           TEXT    NOT NULL,
        integration    TEXT,
        target         TEXT,
        job_id         BIGINT,
        ds24_order_id  TEXT,
        product        TEXT,
        amount         TEXT,
        buyer_email    TEXT,
        message        TEXT    NOT NULL,
        retry_command  TEXT
    );
    CREATE INDEX alerts_created ON alerts (created_at);

    CREATE TABLE alert_deliveries (
        alert_id    BIGINT  NOT NULL REFERENCES alerts (id),
        recipient   TEXT    NOT NULL,
        sent_at     BIGINT,
        attempts    INTEGER NOT NULL DEFAULT 0,
        last_error  TEXT,
        PRIMARY KEY (alert_id, recipient)
    );
    CREATE INDEX alert_deliveries_unsent ON alert_deliveries (recipient, alert_id)
        WHERE sent_at IS NULL;
    CREATE INDEX alert_deliveries_sent ON alert_deliveries (recipient, sent_at)
        WHERE sent_at IS NOT NULL;

    CREATE TABLE audit_alerted (
        source          TEXT    NOT NULL,
        order_id        TEXT    NOT NULL,
        transaction_id  TEXT    NOT NULL,
        alerted_at      BIGINT  NOT NULL,
        PRIMARY KEY (source, order_id, transaction_id)
    );
    "#,
    // 2: the due jobs of a target in lease order. With `id` in the index, a lease of 32 reads
    // 32 index entries and checks each one's order (measured: 0.3 ms at 10,000 pending jobs);
    // without it the planner sorted every pending job of the target first (27 ms).
    r#"
    CREATE INDEX jobs_due_in_order ON jobs (target, state, next_attempt_at, id);
    DROP INDEX jobs_due;
    "#,
    // 3: jobs per state kept as they change (issue 13: `/metrics` and `/healthz` read a few
    // dozen rows instead of counting every job). Row triggers add ±1 to the row of the
    // state in the *shard* of the connection that writes (16 rows per state at most, chosen
    // by `pg_backend_pid() % 16`): one counter row per state would be a hot row that every
    // insert and state change of every instance waits on until it commits. Sixteen: the
    // connections of one instance's pool, and mostly those of a few instances, land on
    // distinct rows, and a read of the counts stays a few dozen rows.
    // The triggers run inside the statement that changes a job, so the counts commit or
    // roll back with it, whoever writes (an instance, a queue command, psql); only an
    // UPDATE that changes `state` touches them. A change of state takes the two rows in
    // the order of their state names, so two transactions of one shard that move jobs in
    // opposite directions (a lease, a retry) queue instead of deadlocking; a transaction of
    // several kinds of change can still meet another of its shard in a deadlock, which
    // PostgreSQL breaks and the store reports as `Unavailable` like any other. Applying it
    // counts the existing jobs once, under a SHARE lock on `jobs`: no change can slip
    // between the count and the triggers.
    r#"
    CREATE TABLE job_counts (
        state  TEXT      NOT NULL,
        shard  SMALLINT  NOT NULL,
        n      BIGINT    NOT NULL,
        PRIMARY KEY (state, shard)
    );
    CREATE FUNCTION job_counts_keep() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        own_shard SMALLINT := pg_backend_pid() % 16;
        state_1 TEXT;
        delta_1 BIGINT;
        state_2 TEXT;
        delta_2 BIGINT;
    BEGIN
        IF TG_OP = 'INSERT' THEN
            state_1 := NEW.state;
            delta_1 := 1;
        ELSIF TG_OP = 'DELETE' THEN
            state_1 := OLD.state;
            delta_1 := -1;
        ELSIF OLD.state < NEW.state THEN
            state_1 := OLD.state;
            delta_1 := -1;
            state_2 := NEW.state;
            delta_2 := 1;
        ELSE
            state_1 := NEW.state;
            delta_1 := 1;
            state_2 := OLD.state;
            delta_2 := -1;
        END IF;
        INSERT INTO job_counts AS c (state, shard, n) VALUES (state_1, own_shard, delta_1)
            ON CONFLICT (state, shard) DO UPDATE SET n = c.n + EXCLUDED.n;
        IF state_2 IS NOT NULL THEN
            INSERT INTO job_counts AS c (state, shard, n) VALUES (state_2, own_shard, delta_2)
                ON CONFLICT (state, shard) DO UPDATE SET n = c.n + EXCLUDED.n;
        END IF;
        RETURN NULL;
    END
    $$;
    CREATE FUNCTION job_counts_clear() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM job_counts;
        RETURN NULL;
    END
    $$;
    LOCK TABLE jobs IN SHARE MODE;
    INSERT INTO job_counts (state, shard, n) SELECT state, 0, COUNT(*) FROM jobs GROUP BY state;
    CREATE TRIGGER job_counts_insert AFTER INSERT ON jobs
        FOR EACH ROW EXECUTE FUNCTION job_counts_keep();
    CREATE TRIGGER job_counts_delete AFTER DELETE ON jobs
        FOR EACH ROW EXECUTE FUNCTION job_counts_keep();
    CREATE TRIGGER job_counts_update AFTER UPDATE OF state ON jobs
        FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state)
        EXECUTE FUNCTION job_counts_keep();
    CREATE TRIGGER job_counts_truncate AFTER TRUNCATE ON jobs
        FOR EACH STATEMENT EXECUTE FUNCTION job_counts_clear();
    "#,
    // 4: the shard of a count is the writing backend's own pid, so that two concurrent
    // transactions never touch the same counter row. Under migration 3 two backends with
    // the same `pid % 16` shared their rows: a transaction of several kinds of change (a
    // batch of results moving jobs to `delivered` and `dead`) could lock `(dead, s)` then
    // `(pending, s)` while another of its shard (a `queue retry`) locked them the other
    // way round, a deadlock PostgreSQL broke only after `deadlock_timeout` by failing one
    // of them. A backend runs one transaction at a time, so a row of its pid is written by
    // nobody else while it lives: writers never wait on each other's counts at all.
    // `shard` is widened to INTEGER (a pid); the rows already there keep their values as
    // rows of "shards" 0–15 that are (almost always) no live pid. The trigger keeps its
    // behaviour otherwise: the counts commit or roll back with the change, only an UPDATE
    // that changes `state` touches them, TRUNCATE clears them.
    // Rows of backends that are gone are *folded* into the row `(state, 0)` (see
    // `FOLD_SQL` in `store/postgres/counts.rs`): at each start of an instance and at most
    // once a minute on a read of the counts, so the table stays a few rows per state.
    // Only folds write shard 0 (no backend has pid 0), serialised by the advisory lock
    // `FOLD_LOCK` (7597693940278455396, "ipnbfold"); a TRUNCATE of `jobs` takes that lock
    // before it clears the counts, so a fold and a TRUNCATE queue instead of locking rows
    // in opposite orders.
    r#"
    ALTER TABLE job_counts ALTER COLUMN shard TYPE INTEGER;
    CREATE OR REPLACE FUNCTION job_counts_keep() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        own_shard INTEGER := pg_backend_pid();
        state_1 TEXT;
        delta_1 BIGINT;
        state_2 TEXT;
        delta_2 BIGINT;
    BEGIN
        IF TG_OP = 'INSERT' THEN
            state_1 := NEW.state;
            delta_1 := 1;
        ELSIF TG_OP = 'DELETE' THEN
            state_1 := OLD.state;
            delta_1 := -1;
        ELSIF OLD.state < NEW.state THEN
            state_1 := OLD.state;
            delta_1 := -1;
            state_2 := NEW.state;
            delta_2 := 1;
        ELSE
            state_1 := NEW.state;
            delta_1 := 1;
            state_2 := OLD.state;
            delta_2 := -1;
        END IF;
        INSERT INTO job_counts AS c (state, shard, n) VALUES (state_1, own_shard, delta_1)
            ON CONFLICT (state, shard) DO UPDATE SET n = c.n + EXCLUDED.n;
        IF state_2 IS NOT NULL THEN
            INSERT INTO job_counts AS c (state, shard, n) VALUES (state_2, own_shard, delta_2)
                ON CONFLICT (state, shard) DO UPDATE SET n = c.n + EXCLUDED.n;
        END IF;
        RETURN NULL;
    END
    $$;
    CREATE OR REPLACE FUNCTION job_counts_clear() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_advisory_xact_lock(7597693940278455396);
        DELETE FROM job_counts;
        RETURN NULL;
    END
    $$;
    "#,
    // 5: as SQLite's migration 8 (issue 13), IPNs are looked up by transaction, not by
    // order: Digistore24's order ids are 8 characters in no order, so each stored IPN wrote
    // its `ipns_order` entry into a different index page; transaction ids count up. The
    // lookups name a transaction (the audit's) or a transaction or parent transaction (the
    // payment a refund reverses).
    r#"
    DROP INDEX IF EXISTS ipns_order;
    CREATE INDEX IF NOT EXISTS ipns_transaction ON ipns (transaction_id);
    CREATE INDEX IF NOT EXISTS ipns_parent_transaction ON ipns (parent_transaction_id);
    "#,
    // 6: as SQLite's migration 9 (issue 13), `ledger_order` goes: `ledger_item` begins with
    // the same two columns (integration, order) and answers the same lookups.
    r#"
    DROP INDEX IF EXISTS ledger_order;
    "#,
];

/// The schema version this build writes.
pub const CURRENT_VERSION: i64 = MIGRATIONS.len() as i64;

/// The SQL of the migration to `version` (tests check what a migration spells out).
#[cfg(test)]
pub(super) fn migration(version: usize) -> Option<&'static str> {
    MIGRATIONS.get(version.checked_sub(1)?).copied()
}

/// Brings the database to [`CURRENT_VERSION`], under the migration lock.
pub async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    migrate_up_to(client, CURRENT_VERSION).await
}

/// Applies the migrations up to version `target` (tests build an older database with it;
/// a database already past `target` is left as it is).
pub(super) async fn migrate_up_to(client: &mut Client, target: i64) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_error)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS ipn_bridge_schema (
             only_row  BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
             version   BIGINT  NOT NULL
         );
         INSERT INTO ipn_bridge_schema (version) VALUES (0) ON CONFLICT DO NOTHING;",
    )
    .await
    .map_err(pg_error)?;
    let version: i64 = tx
        .query_one("SELECT version FROM ipn_bridge_schema", &[])
        .await
        .map_err(pg_error)?
        .get(0);
    if version > CURRENT_VERSION {
        return Err(StoreError::Incompatible(format!(
            "the database has schema version {version}, this build knows up to {CURRENT_VERSION}; \
             use a newer ipn-bridge"
        )));
    }
    let migrations = MIGRATIONS.iter().enumerate().take(target as usize);
    for (i, sql) in migrations.skip(version as usize) {
        tx.batch_execute(sql).await.map_err(pg_error)?;
        let next = i as i64 + 1;
        tx.execute("UPDATE ipn_bridge_schema SET version = $1", &[&next])
            .await
            .map_err(pg_error)?;
    }
    tx.commit().await.map_err(pg_error)
}
