//! Append-only migrations, tracked with `PRAGMA user_version` (as cargo's `util/sqlite.rs`
//! does). Each migration runs once, in a transaction. Never edit a migration that has shipped:
//! add a new one at the end.

use rusqlite::{Connection, Transaction};

type Migration = fn(&Transaction) -> rusqlite::Result<()>;

const MIGRATIONS: &[Migration] = &[v1, v2, v3, v4, v5, v6, v7, v8];

fn v1(tx: &Transaction) -> rusqlite::Result<()> {
    tx.execute_batch(
        r#"
        -- Version in force of each list (0 = none received yet), and the generation of rows
        -- that holds it. A snapshot is written as a new generation, in chunks that interleave
        -- with passes, and comes into force by changing `gen` here in one short transaction:
        -- decisions see the old list or the new one, never a mix, and never wait for the copy.
        CREATE TABLE list_version (
            list      TEXT PRIMARY KEY,
            version   INTEGER NOT NULL,
            gen       INTEGER NOT NULL,
            issued_at TEXT
        );
        INSERT INTO list_version (list, version, gen)
            VALUES ('staff', 0, 0), ('visitors', 0, 0), ('deny', 0, 0);

        -- Times are Unix milliseconds (NULL = open-ended); gates a JSON array of gate ids or "*".
        CREATE TABLE staff (
            gen         INTEGER NOT NULL,
            subject     TEXT NOT NULL,
            name        TEXT,
            valid_from  INTEGER,
            valid_until INTEGER,
            gates       TEXT NOT NULL,
            PRIMARY KEY (gen, subject)
        ) WITHOUT ROWID;
        -- The primary key makes a credential unique within a generation: one card never opens
        -- as two people.
        CREATE TABLE staff_credential (
            kind    TEXT NOT NULL,
            cred_id TEXT NOT NULL,
            gen     INTEGER NOT NULL,
            subject TEXT NOT NULL,
            PRIMARY KEY (kind, cred_id, gen)
        ) WITHOUT ROWID;
        CREATE INDEX staff_credential_subject ON staff_credential(gen, subject);

        CREATE TABLE invitation (
            gen         INTEGER NOT NULL,
            invitation  TEXT NOT NULL,
            visitor     TEXT,
            host        TEXT,
            valid_from  INTEGER,
            valid_until INTEGER,
            gates       TEXT NOT NULL,
            max_entries INTEGER,
            PRIMARY KEY (gen, invitation)
        ) WITHOUT ROWID;
        CREATE TABLE invitation_credential (
            kind       TEXT NOT NULL,
            cred_id    TEXT NOT NULL,
            gen        INTEGER NOT NULL,
            invitation TEXT NOT NULL,
            PRIMARY KEY (kind, cred_id, gen)
        ) WITHOUT ROWID;
        CREATE INDEX invitation_credential_invitation ON invitation_credential(gen, invitation);
        -- Kept apart from `invitation` so that a new snapshot of the list does not give back
        -- entries already used.
        CREATE TABLE invitation_usage (
            invitation TEXT PRIMARY KEY,
            used       INTEGER NOT NULL
        ) WITHOUT ROWID;

        CREATE TABLE deny (
            kind    TEXT NOT NULL,
            cred_id TEXT NOT NULL,
            gen     INTEGER NOT NULL,
            reason  TEXT,
            PRIMARY KEY (kind, cred_id, gen)
        ) WITHOUT ROWID;
        CREATE INDEX deny_gen ON deny(gen);

        -- Events and alarms not yet acknowledged by the broker, oldest first by rowid. A row is
        -- deleted only when the PUBACK for the message that carried it arrives (G3).
        -- AUTOINCREMENT: rowids are never reused, even after the outbox empties, so "after the
        -- last row sent" always means "newer" to the uplink's cursor.
        CREATE TABLE outbox (
            rowid   INTEGER PRIMARY KEY AUTOINCREMENT,
            stream  TEXT NOT NULL CHECK (stream IN ('event', 'alarm')),
            seq     INTEGER NOT NULL,
            id      TEXT NOT NULL,
            ts      INTEGER NOT NULL,
            payload TEXT NOT NULL,
            UNIQUE (stream, seq)
        );
        -- The last seq given out per stream, so seq has no gaps across restarts and deletes.
        CREATE TABLE seq_counter (
            stream TEXT PRIMARY KEY,
            last   INTEGER NOT NULL
        );
        INSERT INTO seq_counter (stream, last) VALUES ('event', 0), ('alarm', 0);

        -- The last mailbox event recorded per reader, so a restart never decides it twice.
        CREATE TABLE reader_head (
            reader   TEXT PRIMARY KEY,
            head_seq INTEGER NOT NULL,
            kind     TEXT NOT NULL,
            cred_id  TEXT NOT NULL,
            event_id TEXT NOT NULL
        );

        -- Small state: mode, …
        CREATE TABLE state (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        "#,
    )
}

/// Remote commands: the nonces seen, kept until their command expires, so that a command
/// replayed (even after a restart) is refused.
fn v2(tx: &Transaction) -> rusqlite::Result<()> {
    tx.execute_batch(
        r#"
        CREATE TABLE command_nonce (
            nonce      TEXT PRIMARY KEY,
            expires_at INTEGER NOT NULL
        ) WITHOUT ROWID;
        CREATE INDEX command_nonce_expiry ON command_nonce(expires_at);
        "#,
    )
}

/// The rules of issue 6: staff schedules and groups, the `calendar` list, anti-passback state,
/// and what was learned from the other gates of the site.
fn v3(tx: &Transaction) -> rusqlite::Result<()> {
    tx.execute_batch(
        r#"
        ALTER TABLE staff ADD COLUMN schedule TEXT;
        ALTER TABLE staff ADD COLUMN grp TEXT;

        INSERT INTO list_version (list, version, gen) VALUES ('calendar', 0, 0);
        -- Exception dates (local date of the site, YYYY-MM-DD); hours a JSON array of spans.
        CREATE TABLE calendar (
            gen   INTEGER NOT NULL,
            date  TEXT NOT NULL,
            name  TEXT,
            hours TEXT NOT NULL,
            PRIMARY KEY (gen, date)
        ) WITHOUT ROWID;

        -- Each subject's last pass that counts for anti-passback, here or at another gate.
        CREATE TABLE passback (
            subject   TEXT PRIMARY KEY,
            direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
            at        INTEGER NOT NULL,
            gate      TEXT NOT NULL
        ) WITHOUT ROWID;

        -- The last event learned from each other gate of the site (its seq and UUIDv7 id), so
        -- that an event the broker delivers twice is counted once, and a gate that starts its
        -- numbering over (a replaced box) is noticed.
        CREATE TABLE peer (
            gate TEXT PRIMARY KEY,
            seq  INTEGER NOT NULL,
            id   TEXT NOT NULL,
            at   INTEGER NOT NULL
        ) WITHOUT ROWID;
        "#,
    )
}

/// v4: face-terminal snapshots (thumbnails), kept up to a retention limit, and whether each
/// has been uploaded to the broker.
fn v4(tx: &Transaction) -> rusqlite::Result<()> {
    tx.execute_batch(
        r#"
        CREATE TABLE snapshot (
            event_id TEXT PRIMARY KEY,
            ts       INTEGER NOT NULL,
            jpeg     BLOB NOT NULL,
            uploaded INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX snapshot_ts ON snapshot (ts);
        "#,
    )
}

/// v5: a calendar date may override only the schedules it names (a JSON array of names;
/// NULL: every schedule that follows the calendar, as before).
fn v5(tx: &Transaction) -> rusqlite::Result<()> {
    tx.execute_batch("ALTER TABLE calendar ADD COLUMN schedules TEXT;")
}

/// v6: an invitation may name a weekly schedule, as a staff entry does.
fn v6(tx: &Transaction) -> rusqlite::Result<()> {
    tx.execute_batch("ALTER TABLE invitation ADD COLUMN schedule TEXT;")
}

/// v7: staff entries that pass a lockdown (responders).
fn v7(tx: &Transaction) -> rusqlite::Result<()> {
    tx.execute_batch("ALTER TABLE staff ADD COLUMN lockdown_exempt INTEGER NOT NULL DEFAULT 0;")
}

/// v8: a list whose rows a salvage could not read (`lost` = 1): it keeps the version it held,
/// so that anti-rollback still refuses an older one, and the snapshot of that same version is
/// taken again to bring it back (issue 22, item 3).
fn v8(tx: &Transaction) -> rusqlite::Result<()> {
    tx.execute_batch("ALTER TABLE list_version ADD COLUMN lost INTEGER NOT NULL DEFAULT 0;")
}

/// The database's schema version, or why this gated refuses it (one from a newer gated).
pub fn version(conn: &Connection) -> rusqlite::Result<Result<usize, String>> {
    let current: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if current > MIGRATIONS.len() {
        return Ok(Err(format!(
            "the database has schema version {current}, newer than this gated knows ({}); \
             refusing to touch it",
            MIGRATIONS.len()
        )));
    }
    Ok(Ok(current))
}

/// Brings the schema up to date. Refuses a database from a newer gated.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<Result<(), String>> {
    let current = match version(conn)? {
        Ok(v) => v,
        Err(why) => return Ok(Err(why)),
    };
    for (i, m) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        m(&tx)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(Ok(()))
}
