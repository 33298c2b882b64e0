"""The store's SQLite schema, as a list of forward migrations applied in order."""

from __future__ import annotations

import sqlite3

from ..errors import PixmillError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate", "schema_version", "select_in"]

# Migration i (0-based) takes the database from version i to version i + 1. Never edit one that
# has shipped: append a new one instead.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        owner TEXT,
        created_at REAL NOT NULL,
        output TEXT NOT NULL,
        cancelled_at REAL
    );
    CREATE INDEX jobs_created ON jobs (created_at);
    CREATE INDEX jobs_owner ON jobs (owner, created_at);

    CREATE TABLE tasks (
        id INTEGER PRIMARY KEY,
        job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        n INTEGER NOT NULL,
        name TEXT NOT NULL,
        pipeline TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        crashes INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        width INTEGER,
        height INTEGER,
        result_format TEXT,
        source_format TEXT,
        notes TEXT NOT NULL DEFAULT '[]',
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        input_blob TEXT NOT NULL,
        result_blob TEXT,
        lease_owner TEXT,
        lease_expires REAL,
        UNIQUE (job_id, n)
    );
    CREATE INDEX tasks_queue ON tasks (state, crashes, id);
    CREATE INDEX tasks_lease ON tasks (lease_owner) WHERE lease_owner IS NOT NULL;
    CREATE INDEX tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL;

    CREATE TABLE blobs (
        key TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX blobs_created ON blobs (created_at);
    CREATE TABLE usage (id INTEGER PRIMARY KEY CHECK (id = 1), bytes INTEGER NOT NULL);
    INSERT INTO usage VALUES (1, 0);
    CREATE TRIGGER blobs_added AFTER INSERT ON blobs BEGIN
        UPDATE usage SET bytes = bytes + NEW.size WHERE id = 1;
    END;
    CREATE TRIGGER blobs_removed AFTER DELETE ON blobs BEGIN
        UPDATE usage SET bytes = bytes - OLD.size WHERE id = 1;
    END;

    CREATE TABLE dispatchers (
        id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        pid_started REAL,
        engine TEXT NOT NULL,
        workers INTEGER NOT NULL,
        started_at REAL NOT NULL,
        heartbeat REAL NOT NULL,
        stopped_at REAL
    );
    """,
    # 2: a job whose upload is still being read is open (sealed = 0): its tasks already run, but it
    # is not shown until the upload is accepted, and it is deleted if the upload never ends.
    # tasks.claims counts the claims of a task and is never lowered, so the result of one claim is
    # never stored for a later claim of the same task (results are stored by a thread, later).
    """
    ALTER TABLE jobs ADD COLUMN sealed INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE tasks ADD COLUMN claims INTEGER NOT NULL DEFAULT 0;
    """,
    # 3: a job's webhook and its deliveries (pixmill.store.webhooks); base_url is the URL root the
    # job was submitted through, for the links in the job's JSON that the webhook carries.
    """
    CREATE TABLE webhooks (
        job_id TEXT PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
        url TEXT NOT NULL,
        base_url TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL,
        lease_owner TEXT,
        lease_expires REAL,
        last_attempt_at REAL,
        last_status INTEGER,
        last_error TEXT,
        delivered_at REAL
    );
    CREATE INDEX webhooks_due ON webhooks (state, next_at);
    """,
    # 4: small blobs inside their row (data), where a few KB cost less than a file and its fsync.
    """
    ALTER TABLE blobs ADD COLUMN data BLOB;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(db: sqlite3.Connection) -> int:
    """The version the database is at: 0 for a new database."""
    exists = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'").fetchone()
    if not exists:
        return 0
    row = db.execute("SELECT version FROM schema_version").fetchone()
    return row[0] if row else 0


def migrate(db: sqlite3.Connection) -> int:
    """Bring the database up to SCHEMA_VERSION in one transaction; return the version it was at."""
    db.execute("BEGIN IMMEDIATE")
    try:
        found = schema_version(db)
        if found > SCHEMA_VERSION:
            raise PixmillError(f"the data dir's database is at schema version {found}, newer than this "
                               f"pixmill knows ({SCHEMA_VERSION}); upgrade pixmill")
        if found == 0:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            db.execute("INSERT INTO schema_version VALUES (0)")
        for version in range(found, SCHEMA_VERSION):
            for statement in _statements(MIGRATIONS[version]):
                db.execute(statement)
            db.execute("UPDATE schema_version SET version = ?", (version + 1,))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return found


def _statements(script: str) -> list[str]:
    # executescript() would commit the open transaction, so split the script ourselves,
    # keeping CREATE TRIGGER ... BEGIN ... END; bodies whole.
    statements, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            if current.strip():
                statements.append(current.strip())
            current = ""
    if current.strip():
        statements.append(current.strip())
    return statements


def select_in(db: sqlite3.Connection, sql: str, values: list) -> list[sqlite3.Row]:
    """Run sql, whose `{}` stands for an IN list, over values in parts under SQLite's limit on bound parameters."""
    rows: list[sqlite3.Row] = []
    for i in range(0, len(values), 500):
        part = values[i:i + 500]
        cursor = db.execute(sql.format(",".join("?" * len(part))), part)
        if cursor.description is not None:   # a SELECT (a DELETE has no rows to fetch)
            rows.extend(cursor.fetchall())
    return rows
