"""The embedded store (``STORAGE_BACKEND = "shelve"``): one SQLite file, no server.

The name is kept for existing users, but the store does not use the
``shelve``/``dbm`` modules: on Pythons built without ``_gdbm``/``_dbm`` they
fall back to ``dbm.dumb``, which rewrites its whole index on every close, so
appends get slower with every key (see the design notes). SQLite in WAL mode
gives flat, transactional appends and real locking between processes: every
write runs in ``BEGIN IMMEDIATE``, readers see committed data only.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

from django_river_ml.exceptions import StorageUnavailable
from django_river_ml.storage.base import CallStats, LogEntry, ModelInfo, Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY,
    flavor TEXT NOT NULL,
    incarnation TEXT NOT NULL UNIQUE,
    head INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS log (
    incarnation TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    rejected INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (incarnation, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS snapshots (
    incarnation TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (incarnation, seq)
);
CREATE TABLE IF NOT EXISTS identifiers (
    name TEXT NOT NULL,
    identifier TEXT NOT NULL,
    expires REAL NOT NULL,
    record BLOB NOT NULL,
    PRIMARY KEY (name, identifier)
);
CREATE INDEX IF NOT EXISTS identifiers_expiry ON identifiers (expires);
CREATE TABLE IF NOT EXISTS call_stats (
    name TEXT NOT NULL,
    operation TEXT NOT NULL,
    n_calls INTEGER NOT NULL,
    total_ns INTEGER NOT NULL,
    ewm_ns REAL NOT NULL,
    PRIMARY KEY (name, operation)
);
"""

# Expired identifiers are swept on one insert in this many.
SWEEP_EVERY = 256


class ShelveStore(Store):
    """SQLite-backed store; safe for many processes on one host."""

    backend_name = "shelve"

    def __init__(self, path: str | os.PathLike, timeout: float = 30.0):
        self.path = Path(path)
        self.timeout = timeout
        self._local = threading.local()
        self._inserts = 0

    # Connections: one per thread and process (sqlite3 objects must not cross either).

    @property
    def db(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None or self._local.pid != os.getpid():
            connection = self._connect()
            self._local.connection, self._local.pid = connection, os.getpid()
        return connection

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None,
                                         check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as error:
            raise StorageUnavailable(f"Cannot open the model store at {self.path}: {error}") from None
        return connection

    def _write(self):
        return _Transaction(self.db)

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None and self._local.pid == os.getpid():
            connection.close()
        self._local = threading.local()

    # Models

    def create_model(self, name, flavor, incarnation, snapshot):
        with self._write() as db:
            self._delete(db, name)
            db.execute(
                "INSERT INTO models (name, flavor, incarnation, head, created) VALUES (?, ?, ?, 0, ?)",
                (name, flavor, incarnation, time.time()),
            )
            db.execute("INSERT INTO snapshots (incarnation, seq, data) VALUES (?, 0, ?)", (incarnation, snapshot))

    def model_info(self, name):
        row = self.db.execute(
            "SELECT name, flavor, incarnation, head, created FROM models WHERE name = ?", (name,)
        ).fetchone()
        return ModelInfo(*row) if row else None

    def model_names(self):
        return [row[0] for row in self.db.execute("SELECT name FROM models ORDER BY name")]

    def delete_model(self, name):
        with self._write() as db:
            return self._delete(db, name)

    @staticmethod
    def _delete(db: sqlite3.Connection, name: str) -> bool:
        row = db.execute("SELECT incarnation FROM models WHERE name = ?", (name,)).fetchone()
        db.execute("DELETE FROM identifiers WHERE name = ?", (name,))
        db.execute("DELETE FROM call_stats WHERE name = ?", (name,))
        if row is None:
            return False
        db.execute("DELETE FROM log WHERE incarnation = ?", row)
        db.execute("DELETE FROM snapshots WHERE incarnation = ?", row)
        db.execute("DELETE FROM models WHERE name = ?", (name,))
        return True

    # Log

    def append(self, name, incarnation, data):
        with self._write() as db:
            row = db.execute(
                "UPDATE models SET head = head + 1 WHERE name = ? AND incarnation = ? RETURNING head",
                (name, incarnation),
            ).fetchone()
            if row is None:
                return None
            db.execute("INSERT INTO log (incarnation, seq, data) VALUES (?, ?, ?)", (incarnation, row[0], data))
            return row[0]

    def entries(self, incarnation, after, upto):
        rows = self.db.execute(
            "SELECT seq, data, rejected FROM log WHERE incarnation = ? AND seq > ? AND seq <= ? ORDER BY seq",
            (incarnation, after, upto),
        )
        return [LogEntry(seq, data, bool(rejected)) for seq, data, rejected in rows]

    def reject(self, incarnation, seq):
        with self._write() as db:
            db.execute("UPDATE log SET rejected = 1 WHERE incarnation = ? AND seq = ?", (incarnation, seq))

    # Snapshots

    def save_snapshot(self, name, incarnation, seq, data, keep):
        with self._write() as db:
            if db.execute(
                "SELECT 1 FROM models WHERE name = ? AND incarnation = ?", (name, incarnation)
            ).fetchone() is None:
                return
            db.execute(
                "INSERT OR REPLACE INTO snapshots (incarnation, seq, data) VALUES (?, ?, ?)",
                (incarnation, seq, data),
            )
            kept = [r[0] for r in db.execute(
                "SELECT seq FROM snapshots WHERE incarnation = ? ORDER BY seq DESC LIMIT ?", (incarnation, keep)
            )]
            oldest = kept[-1]
            db.execute("DELETE FROM snapshots WHERE incarnation = ? AND seq < ?", (incarnation, oldest))
            db.execute("DELETE FROM log WHERE incarnation = ? AND seq <= ?", (incarnation, oldest))

    def latest_snapshot(self, incarnation):
        row = self.db.execute(
            "SELECT seq, data FROM snapshots WHERE incarnation = ? ORDER BY seq DESC LIMIT 1", (incarnation,)
        ).fetchone()
        return (row[0], row[1]) if row else None

    # Identifiers

    def put_identifier(self, name, identifier, record, ttl_seconds):
        now = time.time()
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO identifiers (name, identifier, expires, record) VALUES (?, ?, ?, ?)",
                (name, identifier, now + ttl_seconds, record),
            )
            self._inserts += 1
            if self._inserts % SWEEP_EVERY == 0:
                db.execute("DELETE FROM identifiers WHERE expires <= ?", (now,))

    def pop_identifier(self, name, identifier):
        with self._write() as db:
            row = db.execute(
                "DELETE FROM identifiers WHERE name = ? AND identifier = ? RETURNING record, expires",
                (name, identifier),
            ).fetchone()
        if row is None or row[1] <= time.time():
            return None
        return row[0]

    # Stats

    def record_call(self, name, operation, duration_ns, alpha):
        with self._write() as db:
            db.execute(
                """
                INSERT INTO call_stats (name, operation, n_calls, total_ns, ewm_ns) VALUES (?, ?, 1, ?, ?)
                ON CONFLICT (name, operation) DO UPDATE SET
                    n_calls = n_calls + 1,
                    total_ns = total_ns + excluded.total_ns,
                    ewm_ns = ? * excluded.total_ns + (1 - ?) * ewm_ns
                """,
                (name, operation, duration_ns, float(duration_ns), alpha, alpha),
            )

    def call_stats(self, name):
        rows = self.db.execute("SELECT operation, n_calls, total_ns, ewm_ns FROM call_stats WHERE name = ?", (name,))
        return {operation: CallStats(n, total, ewm) for operation, n, total, ewm in rows}

    def flush(self):
        with self._write() as db:
            for table in ("models", "log", "snapshots", "identifiers", "call_stats"):
                db.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT``: one writer at a time across processes."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as error:
            raise StorageUnavailable(f"The model store is busy or unavailable: {error}") from None
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.db.execute("COMMIT")
        else:
            self.db.execute("ROLLBACK")
