//! The schema, created and migrated by the engine when it opens a database.
//!
//! Migrations are numbered and only ever appended; the database records the last one applied
//! (`rh_meta.schema`). Opening takes a transaction-scoped advisory lock first, so hosts opening
//! one database at once migrate it once. A database migrated by a newer rolehost than this one
//! is refused, not guessed at.
//!
//! Every text key is `COLLATE "C"`: names compare byte-wise, as redb's keys do, so listings and
//! their markers come out in the same order on both engines.

use rolehost_storage::StorageError;

use crate::error::PgError;

/// The advisory lock key opening holds while it migrates ("rolehost" in ASCII).
const MIGRATION_LOCK: i64 = 0x726f_6c65_686f_7374;

/// The migrations, in order: `MIGRATIONS[i]` takes a database from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the account tables and the queue service.
    r#"
    CREATE TABLE rh_usage (
        account text COLLATE "C" NOT NULL,
        shard int NOT NULL,
        bytes bigint NOT NULL DEFAULT 0,
        containers bigint NOT NULL DEFAULT 0,
        blobs bigint NOT NULL DEFAULT 0,
        queues bigint NOT NULL DEFAULT 0,
        messages bigint NOT NULL DEFAULT 0,
        tables bigint NOT NULL DEFAULT 0,
        entities bigint NOT NULL DEFAULT 0,
        PRIMARY KEY (account, shard)
    );
    CREATE TABLE rh_settings (
        account text COLLATE "C" NOT NULL,
        name text COLLATE "C" NOT NULL,
        value bytea NOT NULL,
        PRIMARY KEY (account, name)
    );
    CREATE TABLE rh_policies (
        account text COLLATE "C" NOT NULL,
        kind text COLLATE "C" NOT NULL,
        name text COLLATE "C" NOT NULL,
        policies bytea NOT NULL,
        PRIMARY KEY (account, kind, name)
    );
    CREATE TABLE rh_queues (
        account text COLLATE "C" NOT NULL,
        name text COLLATE "C" NOT NULL,
        metadata bytea NOT NULL,
        PRIMARY KEY (account, name)
    );
    CREATE TABLE rh_messages (
        account text COLLATE "C" NOT NULL,
        queue text COLLATE "C" NOT NULL,
        seq bigint GENERATED ALWAYS AS IDENTITY,
        inserted bigint NOT NULL,
        expires bigint,
        visible_at bigint NOT NULL,
        dequeue_count int NOT NULL,
        receipt text NOT NULL,
        body bytea NOT NULL,
        PRIMARY KEY (account, queue, seq)
    );
    CREATE INDEX rh_messages_visible ON rh_messages (account, queue, visible_at, seq);
    CREATE INDEX rh_messages_expires ON rh_messages (account, queue, expires)
        WHERE expires IS NOT NULL;
    "#,
    // 2: the table service.
    r#"
    CREATE TABLE rh_tables (
        account text COLLATE "C" NOT NULL,
        key text COLLATE "C" NOT NULL,
        name text COLLATE "C" NOT NULL,
        PRIMARY KEY (account, key)
    );
    CREATE TABLE rh_entities (
        account text COLLATE "C" NOT NULL,
        tbl text COLLATE "C" NOT NULL,
        pk text COLLATE "C" NOT NULL,
        rk text COLLATE "C" NOT NULL,
        record bytea NOT NULL,
        PRIMARY KEY (account, tbl, pk, rk)
    );
    "#,
    // 3: the blob service. Content is in 256 KiB chunk rows, never compressed (STORAGE
    // EXTERNAL: blobs are mostly compressed already, and slices stay cheap). A blob row
    // carries what it costs and the data it owns, so bulk deletes are done by the server.
    r#"
    CREATE SEQUENCE rh_data_ids;
    CREATE TABLE rh_containers (
        account text COLLATE "C" NOT NULL,
        name text COLLATE "C" NOT NULL,
        record bytea NOT NULL,
        cost bigint NOT NULL,
        PRIMARY KEY (account, name)
    );
    CREATE TABLE rh_container_acls (
        account text COLLATE "C" NOT NULL,
        name text COLLATE "C" NOT NULL,
        acl bytea NOT NULL,
        PRIMARY KEY (account, name)
    );
    CREATE TABLE rh_blobs (
        account text COLLATE "C" NOT NULL,
        container text COLLATE "C" NOT NULL,
        name text COLLATE "C" NOT NULL,
        record bytea NOT NULL,
        cost bigint NOT NULL,
        data_ids bigint[] NOT NULL,
        PRIMARY KEY (account, container, name)
    );
    CREATE TABLE rh_blocks (
        account text COLLATE "C" NOT NULL,
        container text COLLATE "C" NOT NULL,
        blob text COLLATE "C" NOT NULL,
        id bytea NOT NULL,
        data_id bigint NOT NULL,
        len bigint NOT NULL,
        PRIMARY KEY (account, container, blob, id)
    );
    CREATE TABLE rh_chunks (
        data_id bigint NOT NULL,
        idx int NOT NULL,
        bytes bytea NOT NULL,
        PRIMARY KEY (data_id, idx)
    );
    ALTER TABLE rh_chunks ALTER COLUMN bytes SET STORAGE EXTERNAL;
    CREATE TABLE rh_pending (
        data_id bigint PRIMARY KEY,
        account text COLLATE "C" NOT NULL,
        charged bigint NOT NULL,
        touched bigint NOT NULL
    );
    CREATE TABLE rh_garbage (
        data_id bigint PRIMARY KEY,
        freed bigint NOT NULL
    );
    CREATE INDEX rh_garbage_freed ON rh_garbage (freed);
    CREATE INDEX rh_pending_touched ON rh_pending (touched);
    "#,
];

/// The schema version this engine reads and writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Creates or migrates the schema; returns the database's salt (the ids' [`rolehost_storage::ids`] salt).
pub fn migrate(client: &mut postgres::Client, new_salt: i64) -> Result<i64, StorageError> {
    let mut tx = client.transaction().map_err(PgError::from)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(PgError::from)?;
    tx.batch_execute(
        r#"CREATE TABLE IF NOT EXISTS rh_meta (
            key text COLLATE "C" PRIMARY KEY,
            value bigint NOT NULL
        )"#,
    )
    .map_err(PgError::from)?;
    let version: i64 = tx
        .query_opt("SELECT value FROM rh_meta WHERE key = 'schema'", &[])
        .map_err(PgError::from)?
        .map_or(0, |r| r.get(0));
    if version > SCHEMA_VERSION {
        return Err(StorageError::Damaged {
            path: "the PostgreSQL database".into(),
            detail: format!(
                "its schema is version {version}, made by a newer rolehost; this one knows up to {SCHEMA_VERSION}"
            ),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.batch_execute(sql).map_err(PgError::from)?;
        tracing::info!(version = i + 1, "storage database schema migrated");
    }
    tx.execute(
        "INSERT INTO rh_meta (key, value) VALUES ('schema', $1)
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        &[&SCHEMA_VERSION],
    )
    .map_err(PgError::from)?;
    tx.execute(
        "INSERT INTO rh_meta (key, value) VALUES ('salt', $1) ON CONFLICT (key) DO NOTHING",
        &[&new_salt],
    )
    .map_err(PgError::from)?;
    let salt: i64 = tx
        .query_one("SELECT value FROM rh_meta WHERE key = 'salt'", &[])
        .map_err(PgError::from)?
        .get(0);
    tx.commit().map_err(PgError::from)?;
    Ok(salt)
}
