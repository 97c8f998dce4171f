//! The SQLite schema as an ordered list of migrations.
//!
//! `PRAGMA user_version` holds the number of migrations applied. A migration is appended,
//! never edited: a database written by an older build is brought forward on open, inside
//! one `IMMEDIATE` transaction, so two processes opening the same file at once (the daemon
//! and a queue command) cannot both apply it. A database *newer* than this build is refused
//! rather than guessed at.
//!
//! Times are Unix milliseconds (UTC) in `INTEGER` columns; job payloads and receipts are
//! JSON `TEXT` written by the store's own API, so the SQL never depends on their shape.

use rusqlite::Connection;

use super::StoreError;

/// Migration `i` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: inbox, routing decisions, jobs, attempts, ledger.
    r#"
    CREATE TABLE ipns (
        id              INTEGER PRIMARY KEY,
        source          TEXT    NOT NULL,
        business_key    TEXT    NOT NULL,
        event           TEXT    NOT NULL,
        order_id        TEXT,
        order_item_id   TEXT,
        product_id      TEXT,
        transaction_id  TEXT,
        buyer_email     TEXT,
        amount          TEXT,
        currency        TEXT,
        received_at     INTEGER NOT NULL,
        raw_body        BLOB    NOT NULL,
        UNIQUE (source, business_key)
    );
    CREATE INDEX ipns_received ON ipns (received_at);
    CREATE INDEX ipns_order ON ipns (order_id);

    CREATE TABLE jobs (
        id               INTEGER PRIMARY KEY,
        ipn_id           INTEGER NOT NULL REFERENCES ipns (id),
        integration      TEXT    NOT NULL,
        target           TEXT    NOT NULL,
        action           TEXT    NOT NULL,
        payload          TEXT    NOT NULL,
        order_key        TEXT    NOT NULL,
        state            TEXT    NOT NULL,
        attempts         INTEGER NOT NULL DEFAULT 0,
        needs_reconcile  INTEGER NOT NULL DEFAULT 0,
        next_attempt_at  INTEGER NOT NULL,
        created_at       INTEGER NOT NULL,
        updated_at       INTEGER NOT NULL,
        last_error       TEXT,
        UNIQUE (ipn_id, integration)
    );
    CREATE INDEX jobs_due ON jobs (target, state, next_attempt_at);
    CREATE INDEX jobs_order ON jobs (integration, order_key, id);

    CREATE TABLE routes (
        id           INTEGER PRIMARY KEY,
        ipn_id       INTEGER NOT NULL REFERENCES ipns (id),
        integration  TEXT    NOT NULL,
        decision     TEXT    NOT NULL,
        reason       TEXT    NOT NULL,
        job_id       INTEGER REFERENCES jobs (id),
        decided_at   INTEGER NOT NULL
    );
    CREATE INDEX routes_ipn ON routes (ipn_id);

    CREATE TABLE attempts (
        id           INTEGER PRIMARY KEY,
        job_id       INTEGER NOT NULL REFERENCES jobs (id),
        number       INTEGER NOT NULL,
        kind         TEXT    NOT NULL,
        started_at   INTEGER NOT NULL,
        finished_at  INTEGER,
        outcome      TEXT,
        endpoint     TEXT,
        http_status  INTEGER,
        request      TEXT,
        response     TEXT,
        reason       TEXT
    );
    CREATE INDEX attempts_job ON attempts (job_id, id);
    CREATE INDEX attempts_open ON attempts (outcome) WHERE outcome IS NULL;

    CREATE TABLE ledger (
        job_id               INTEGER PRIMARY KEY REFERENCES jobs (id),
        integration          TEXT    NOT NULL,
        ds24_order_id        TEXT    NOT NULL,
        ds24_item            TEXT,
        ds24_transaction_id  TEXT,
        reference            TEXT    NOT NULL,
        target_order_id      TEXT,
        target_customer_id   TEXT,
        purchase_ids         TEXT    NOT NULL,
        transaction_ids      TEXT    NOT NULL,
        created_at           INTEGER NOT NULL
    );
    CREATE INDEX ledger_order ON ledger (integration, ds24_order_id);
    "#,
    // 2: what each ledger row records, and the audit trail of operator commands.
    r#"
    ALTER TABLE ledger ADD COLUMN action TEXT NOT NULL DEFAULT 'import_order';
    CREATE INDEX ledger_item ON ledger (integration, ds24_order_id, ds24_item, job_id);

    CREATE TABLE operator_actions (
        id       INTEGER PRIMARY KEY,
        at       INTEGER NOT NULL,
        user     TEXT    NOT NULL,
        command  TEXT    NOT NULL,
        job_id   INTEGER REFERENCES jobs (id),
        ipn_id   INTEGER REFERENCES ipns (id),
        reason   TEXT    NOT NULL
    );
    CREATE INDEX operator_actions_job ON operator_actions (job_id);
    "#,
    // 3: the alert outbox. One row per alert (what a person is told, already masked and
    // redacted), one row per (alert, recipient) saying whether and when it was mailed.
    r#"
    CREATE TABLE alerts (
        id             INTEGER PRIMARY KEY,
        created_at     INTEGER NOT NULL,
        kind           TEXT    NOT NULL,
        integration    TEXT,
        target         TEXT,
        job_id         INTEGER,
        ds24_order_id  TEXT,
        product        TEXT,
        amount         TEXT,
        buyer_email    TEXT,
        message        TEXT    NOT NULL,
        retry_command  TEXT
    );
    CREATE INDEX alerts_created ON alerts (created_at);

    CREATE TABLE alert_deliveries (
        alert_id    INTEGER NOT NULL REFERENCES alerts (id),
        recipient   TEXT    NOT NULL,
        sent_at     INTEGER,
        attempts    INTEGER NOT NULL DEFAULT 0,
        last_error  TEXT,
        PRIMARY KEY (alert_id, recipient)
    );
    CREATE INDEX alert_deliveries_unsent ON alert_deliveries (recipient, alert_id)
        WHERE sent_at IS NULL;
    CREATE INDEX alert_deliveries_sent ON alert_deliveries (recipient, sent_at)
        WHERE sent_at IS NOT NULL;
    "#,
    // 4: when a job's give-up window starts (its creation, or the operator's last retry).
    r#"
    ALTER TABLE jobs ADD COLUMN retry_base INTEGER;
    "#,
    // 5: which payment an import carried, both ids (a refund may name either), so a refund
    // or chargeback finds its import. Rows written before stay NULL and are matched by
    // transaction id or as the only import of their order item.
    r#"
    ALTER TABLE ipns ADD COLUMN parent_transaction_id TEXT;
    ALTER TABLE ledger ADD COLUMN ds24_parent_transaction_id TEXT;
    "#,
    // 6: transactions the Digistore24 audit has alerted on (once each, across restarts).
    // `IF NOT EXISTS`: tests that write an older schema by downgrading a new one keep it.
    r#"
    CREATE TABLE IF NOT EXISTS audit_alerted (
        source          TEXT    NOT NULL,
        order_id        TEXT    NOT NULL,
        transaction_id  TEXT    NOT NULL,
        alerted_at      INTEGER NOT NULL,
        PRIMARY KEY (source, order_id, transaction_id)
    );
    CREATE INDEX IF NOT EXISTS ipns_transaction ON ipns (transaction_id);
    "#,
    // 7: jobs per state kept as they change (issue 13: `/metrics`, `/healthz` and the job
    // gauges read 5 rows instead of counting every job), and an index by state for what
    // looks jobs up by state alone (the recovery of `in_flight` jobs at start, `queue list
    // --state`). The triggers run inside the statement that changes a job, so the counts
    // commit or roll back with it, whoever writes (the daemon, a queue command). Applying it
    // counts the jobs once (a database of a million jobs: about a second, once). `IF NOT
    // EXISTS` and the recount: tests that write an older schema by downgrading a new one.
    r#"
    CREATE TABLE IF NOT EXISTS job_counts (
        state  TEXT    PRIMARY KEY,
        n      INTEGER NOT NULL
    ) WITHOUT ROWID;
    DELETE FROM job_counts;
    INSERT INTO job_counts (state, n) SELECT state, COUNT(*) FROM jobs GROUP BY state;
    CREATE TRIGGER IF NOT EXISTS job_counts_insert AFTER INSERT ON jobs BEGIN
        INSERT INTO job_counts (state, n) VALUES (NEW.state, 1)
            ON CONFLICT (state) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER IF NOT EXISTS job_counts_delete AFTER DELETE ON jobs BEGIN
        UPDATE job_counts SET n = n - 1 WHERE state = OLD.state;
    END;
    CREATE TRIGGER IF NOT EXISTS job_counts_update AFTER UPDATE OF state ON jobs
        WHEN OLD.state IS NOT NEW.state BEGIN
        UPDATE job_counts SET n = n - 1 WHERE state = OLD.state;
        INSERT INTO job_counts (state, n) VALUES (NEW.state, 1)
            ON CONFLICT (state) DO UPDATE SET n = n + 1;
    END;
    CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, id);
    "#,
    // 8: IPNs are looked up by transaction, not by order (issue 13). Digistore24's order ids
    // are 8 characters in no order (`A1B2C3D4`), so every stored IPN wrote its entry of
    // `ipns_order` into a different page: with each commit of received IPNs, one more
    // index page per IPN went to the WAL and to the database file. Transaction ids are
    // numbers Digistore24 counts up, so their indexes grow at one end. The two lookups that
    // read `ipns_order` name a transaction too: the audit's (order and transaction, index
    // `ipns_transaction` from 6) and the payment a refund reverses (its transaction or
    // parent transaction, `ipns_transaction` and the new `ipns_parent_transaction`).
    r#"
    DROP INDEX IF EXISTS ipns_order;
    CREATE INDEX IF NOT EXISTS ipns_transaction ON ipns (transaction_id);
    CREATE INDEX IF NOT EXISTS ipns_parent_transaction ON ipns (parent_transaction_id);
    "#,
    // 9: `ledger_order (integration, ds24_order_id)` goes (issue 13): `ledger_item` begins
    // with the same two columns and answers the same lookups. Order ids are in no order, so
    // each delivered job wrote its entry of each into a page of its own (40,000 jobs with
    // ids as Digistore24's: the writer's CPU per job 50–54 µs with it, 43–45 without).
    r#"
    DROP INDEX IF EXISTS ledger_order;
    "#,
];

/// The schema version this build writes.
pub const CURRENT_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database to [`CURRENT_VERSION`].
pub fn migrate(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = apply(conn);
    match result {
        Ok(()) => conn.execute_batch("COMMIT")?,
        Err(_) => {
            let _ = conn.execute_batch("ROLLBACK");
        }
    }
    result
}

fn apply(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > CURRENT_VERSION {
        return Err(StoreError::Incompatible(format!(
            "the database has schema version {version}, this build knows up to {CURRENT_VERSION}; \
             use a newer ipn-bridge"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        conn.execute_batch(sql)?;
        conn.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
    }
    Ok(())
}
