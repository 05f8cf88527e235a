"""The embedded store (``STORAGE_BACKEND = "shelve"``): one SQLite file, no server.

The name is kept for existing users, but the store does not use the
``shelve``/``dbm`` modules: on Pythons built without ``_gdbm``/``_dbm`` they
fall back to ``dbm.dumb``, which rewrites its whole index on every close, so
appends get slower with every key (see the design notes). SQLite in WAL mode
gives flat, transactional appends and real locking between processes: every
write runs in ``BEGIN IMMEDIATE``, readers see committed data only.

A model's access is three columns of its row (owner, and the users and groups
it is shared with as JSON lists of primary keys). Pending identifiers are
counted per model in ``identifier_counts``, kept in the same transactions, so
evicting the oldest beyond a limit never scans them all. Files written before
these existed are brought up to date when opened.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time

from django_river_ml import callstats, versions
from django_river_ml.exceptions import StorageUnavailable
from django_river_ml.storage.base import (
    ANY,
    CONFLICT,
    OK,
    OVER_QUOTA,
    Access,
    CallStats,
    LogEntry,
    ModelInfo,
    Store,
)
from django_river_ml.storage.sqlite import SQLiteFile

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY,
    flavor TEXT NOT NULL,
    incarnation TEXT NOT NULL UNIQUE,
    head INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    owner TEXT,
    shared_users TEXT NOT NULL DEFAULT '[]',
    shared_groups TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS log (
    incarnation TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    rejected INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (incarnation, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS learn_keys (
    incarnation TEXT NOT NULL,
    key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (incarnation, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS learn_keys_age ON learn_keys (incarnation, expires);
CREATE INDEX IF NOT EXISTS learn_keys_seq ON learn_keys (incarnation, seq);
CREATE TABLE IF NOT EXISTS learn_key_counts (
    incarnation TEXT PRIMARY KEY,
    n INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    incarnation TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (incarnation, seq)
);
CREATE TABLE IF NOT EXISTS versions (
    incarnation TEXT NOT NULL,
    seq INTEGER NOT NULL,
    version INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (incarnation, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS versions_by_number ON versions (incarnation, version);
CREATE TABLE IF NOT EXISTS identifiers (
    name TEXT NOT NULL,
    identifier TEXT NOT NULL,
    expires REAL NOT NULL,
    record BLOB NOT NULL,
    PRIMARY KEY (name, identifier)
);
CREATE INDEX IF NOT EXISTS identifiers_expiry ON identifiers (expires);
CREATE INDEX IF NOT EXISTS identifiers_age ON identifiers (name, expires);
CREATE TABLE IF NOT EXISTS call_stats (
    name TEXT NOT NULL,
    operation TEXT NOT NULL,
    n_calls INTEGER NOT NULL,
    total_ns INTEGER NOT NULL,
    ewm_ns REAL NOT NULL,
    PRIMARY KEY (name, operation)
);
CREATE TABLE IF NOT EXISTS recent_calls (
    name TEXT PRIMARY KEY,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS call_buckets (
    name TEXT NOT NULL,
    operation TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (name, operation, bucket)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS call_slots (
    name TEXT NOT NULL,
    operation TEXT NOT NULL,
    slot INTEGER NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (name, operation, slot)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS call_errors (
    route TEXT NOT NULL,
    status INTEGER NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (route, status)
) WITHOUT ROWID;
"""

# Added after the first release: created (and filled in) when an older file is opened.
UPGRADES = """
CREATE INDEX IF NOT EXISTS models_owner ON models (owner);
CREATE TABLE IF NOT EXISTS identifier_counts (
    name TEXT PRIMARY KEY,
    n INTEGER NOT NULL
);
"""
ACCESS_COLUMNS = (
    ("owner", "TEXT"),
    ("shared_users", "TEXT NOT NULL DEFAULT '[]'"),
    ("shared_groups", "TEXT NOT NULL DEFAULT '[]'"),
)
MODEL_COLUMNS = "name, flavor, incarnation, head, created, owner, shared_users, shared_groups"

# A model's call stats: deleted with it.
_CALL_TABLES = ("call_stats", "recent_calls", "call_buckets", "call_slots")
# Tables of counts by key (table, key column, the field of Tally and CallStats they hold).
_COUNTS = (("call_buckets", "bucket", "buckets"), ("call_slots", "slot", "slots"))
# Idempotency keys looked up in one query (SQLite allows 32,766 parameters).
KEYS_PER_QUERY = 500
# Expired identifiers are swept on one insert in this many.
SWEEP_EVERY = 256
# Above every sequence number (SQLite integers are 64-bit).
_MAX_SEQ = 2**63 - 1


class ShelveStore(Store):
    """SQLite-backed store; safe for many processes on one host."""

    backend_name = "shelve"

    @classmethod
    def from_settings(cls, settings) -> ShelveStore:
        return cls(settings.shelve_path)

    def __init__(self, path: str | os.PathLike, timeout: float = 30.0):
        self.file = SQLiteFile(path, SCHEMA, timeout, "model store", upgrade=_upgrade)
        self.path = self.file.path
        self._inserts = 0

    @property
    def db(self) -> sqlite3.Connection:
        return self.file.db

    def _write(self):
        return _Transaction(self.db)

    def close(self) -> None:
        self.file.close()

    # Models

    def create_model(self, name, flavor, incarnation, snapshot, access=Access(), expect=ANY, max_owned=None,
                     version=None):
        with self._write() as db:
            row = db.execute("SELECT incarnation, owner FROM models WHERE name = ?", (name,)).fetchone()
            if expect != ANY and (row[0] if row else None) != expect:
                return CONFLICT
            if max_owned and access.owner is not None and (row is None or row[1] != access.owner) \
                    and _owned_count(db, access.owner) >= max_owned:
                return OVER_QUOTA
            self._delete(db, name)
            db.execute(
                f"INSERT INTO models ({MODEL_COLUMNS}) VALUES (?, ?, ?, 0, ?, ?, ?, ?)",  # noqa: S608 - fixed columns
                (name, flavor, incarnation, time.time(), *_access_columns(access)),
            )
            db.execute("INSERT INTO snapshots (incarnation, seq, data) VALUES (?, 0, ?)", (incarnation, snapshot))
            if version is not None:
                _add_version(db, incarnation, 0, version)
        return OK

    def model_info(self, name):
        row = self.db.execute(f"SELECT {MODEL_COLUMNS} FROM models WHERE name = ?", (name,)).fetchone()  # noqa: S608
        return _model_info(row) if row else None

    def model_names(self):
        return [row[0] for row in self.db.execute("SELECT name FROM models ORDER BY name")]

    def model_infos(self):
        rows = self.db.execute(f"SELECT {MODEL_COLUMNS} FROM models ORDER BY name")  # noqa: S608 - fixed columns
        return [_model_info(row) for row in rows]

    def owned_count(self, owner):
        return _owned_count(self.db, owner)

    def set_access(self, name, incarnation, access, max_owned=None):
        with self._write() as db:
            row = db.execute("SELECT owner FROM models WHERE name = ? AND incarnation = ?",
                             (name, incarnation)).fetchone()
            if row is None:
                return CONFLICT
            if max_owned and access.owner is not None and access.owner != row[0] \
                    and _owned_count(db, access.owner) >= max_owned:
                return OVER_QUOTA
            db.execute("UPDATE models SET owner = ?, shared_users = ?, shared_groups = ? WHERE name = ?",
                       (*_access_columns(access), name))
        return OK

    def delete_model(self, name, incarnation=None):
        with self._write() as db:
            if incarnation is not None and db.execute(
                "SELECT 1 FROM models WHERE name = ? AND incarnation = ?", (name, incarnation)
            ).fetchone() is None:
                return False
            return self._delete(db, name)

    @staticmethod
    def _delete(db: sqlite3.Connection, name: str) -> bool:
        row = db.execute("SELECT incarnation FROM models WHERE name = ?", (name,)).fetchone()
        db.execute("DELETE FROM identifiers WHERE name = ?", (name,))
        db.execute("DELETE FROM identifier_counts WHERE name = ?", (name,))
        for table in _CALL_TABLES:
            db.execute(f"DELETE FROM {table} WHERE name = ?", (name,))  # noqa: S608 - fixed table names
        if row is None:
            return False
        db.execute("DELETE FROM log WHERE incarnation = ?", row)
        db.execute("DELETE FROM snapshots WHERE incarnation = ?", row)
        db.execute("DELETE FROM versions WHERE incarnation = ?", row)
        db.execute("DELETE FROM learn_keys WHERE incarnation = ?", row)
        db.execute("DELETE FROM learn_key_counts WHERE incarnation = ?", row)
        db.execute("DELETE FROM models WHERE name = ?", (name,))
        return True

    # Log

    def append(self, name, incarnation, data):
        with self._write() as db:
            return _append(db, name, incarnation, data)

    def append_keyed(self, name, incarnation, data, keys, keep_seconds, max_keys):
        keys, now = list(dict.fromkeys(keys)), time.time()
        with self._write() as db:
            expired = db.execute("DELETE FROM learn_keys WHERE incarnation = ? AND expires <= ?",
                                 (incarnation, now)).rowcount
            known = _known_keys(db, incarnation, keys, now)
            seq = None if known else _append(db, name, incarnation, data)
            if seq is not None:
                db.executemany("INSERT INTO learn_keys (incarnation, key, seq, expires) VALUES (?, ?, ?, ?)",
                               [(incarnation, key, seq, now + keep_seconds) for key in keys])
            change = (0 if seq is None else len(keys)) - expired
            count = _count_keys(db, incarnation, change) if change else 0
            if count > max_keys:  # the oldest (the soonest to expire) go
                db.execute("DELETE FROM learn_keys WHERE incarnation = ? AND key IN ("
                           "SELECT key FROM learn_keys WHERE incarnation = ? ORDER BY expires LIMIT ?)",
                           (incarnation, incarnation, count - max_keys))
                _count_keys(db, incarnation, max_keys - count)
            return known or seq

    def known_keys(self, name, incarnation, keys):
        return _known_keys(self.db, incarnation, list(keys), time.time())

    def entries(self, name, incarnation, after, upto):
        rows = self.db.execute(
            "SELECT seq, data, rejected FROM log WHERE incarnation = ? AND seq > ? AND seq <= ? ORDER BY seq",
            (incarnation, after, upto),
        )
        return [LogEntry(seq, data, int(rejected)) for seq, data, rejected in rows]

    def reject(self, name, incarnation, seq, reason=1):
        with self._write() as db:
            db.execute("UPDATE log SET rejected = ? WHERE incarnation = ? AND seq = ?", (int(reason), incarnation, seq))
            freed = db.execute("DELETE FROM learn_keys WHERE incarnation = ? AND seq = ?", (incarnation, seq)).rowcount
            if freed:
                _count_keys(db, incarnation, -freed)

    # Snapshots

    def save_snapshot(self, name, incarnation, seq, data, keep, version=None, tip=None):
        with self._write() as db:
            if db.execute(
                "SELECT 1 FROM models WHERE name = ? AND incarnation = ?", (name, incarnation)
            ).fetchone() is None:
                return
            db.execute(
                "INSERT OR REPLACE INTO snapshots (incarnation, seq, data) VALUES (?, ?, ?)",
                (incarnation, seq, data),
            )
            if version is not None:
                _add_version(db, incarnation, seq, version)
            oldest = db.execute(
                "SELECT MIN(seq) FROM (SELECT seq FROM snapshots WHERE incarnation = ? ORDER BY seq DESC LIMIT ?)",
                (incarnation, keep),
            ).fetchone()[0]
            records = [json.loads(r[0]) for r in db.execute("SELECT record FROM versions WHERE incarnation = ?",
                                                            (incarnation,))]
            dropped = [(incarnation, s) for s in versions.expired_now(records) if s < oldest]
            db.executemany("DELETE FROM versions WHERE incarnation = ? AND seq = ?", dropped)
            db.execute("DELETE FROM snapshots WHERE incarnation = ? AND seq < ? AND seq NOT IN "
                       "(SELECT seq FROM versions WHERE incarnation = ?)", (incarnation, oldest, incarnation))
            db.execute("DELETE FROM log WHERE incarnation = ? AND seq <= ?", (incarnation, oldest))

    def versions(self, name, incarnation):
        rows = self.db.execute("SELECT version, record FROM versions WHERE incarnation = ? ORDER BY version",
                               (incarnation,))
        return [{**json.loads(record), "version": number} for number, record in rows]

    def version_snapshot(self, name, incarnation, version):
        row = self.db.execute(
            "SELECT s.seq, s.data FROM versions v JOIN snapshots s ON s.incarnation = v.incarnation AND s.seq = v.seq "
            "WHERE v.incarnation = ? AND v.version = ?", (incarnation, version)).fetchone()
        return (row[0], row[1]) if row else None

    def latest_snapshot(self, name, incarnation, at_most=None):
        row = self.db.execute(
            "SELECT seq, data FROM snapshots WHERE incarnation = ? AND seq <= ? ORDER BY seq DESC LIMIT 1",
            (incarnation, _MAX_SEQ if at_most is None else at_most),
        ).fetchone()
        return (row[0], row[1]) if row else None

    def snapshot_seq(self, name, incarnation, at_most=None):
        row = self.db.execute(
            "SELECT MAX(seq) FROM snapshots WHERE incarnation = ? AND seq <= ?",
            (incarnation, _MAX_SEQ if at_most is None else at_most),
        ).fetchone()
        return row[0] if row else None

    # Identifiers

    def put_identifier(self, name, identifier, record, ttl_seconds, max_pending=None):
        now = time.time()
        with self._write() as db:
            row = db.execute("SELECT expires FROM identifiers WHERE name = ? AND identifier = ?",
                             (name, identifier)).fetchone()
            if row is not None and row[0] > now:
                return False  # pending: never replaced
            if row is not None:  # expired, not swept yet: it takes its place (and its count)
                db.execute("UPDATE identifiers SET expires = ?, record = ? WHERE name = ? AND identifier = ?",
                           (now + ttl_seconds, record, name, identifier))
            else:
                db.execute("INSERT INTO identifiers (name, identifier, expires, record) VALUES (?, ?, ?, ?)",
                           (name, identifier, now + ttl_seconds, record))
                count = db.execute(
                    """
                    INSERT INTO identifier_counts (name, n) VALUES (?, 1)
                    ON CONFLICT (name) DO UPDATE SET n = n + 1 RETURNING n
                    """, (name,),
                ).fetchone()[0]
                if max_pending and count > max_pending:  # the oldest (the soonest to expire) go
                    db.execute(
                        """
                        DELETE FROM identifiers WHERE rowid IN (
                            SELECT rowid FROM identifiers WHERE name = ? ORDER BY expires LIMIT ?)
                        """, (name, count - max_pending),
                    )
                    db.execute("UPDATE identifier_counts SET n = ? WHERE name = ?", (max_pending, name))
            self._inserts += 1
            if self._inserts % SWEEP_EVERY == 0:
                swept = db.execute("DELETE FROM identifiers WHERE expires <= ? RETURNING name", (now,)).fetchall()
                _uncount(db, [swept_name for (swept_name,) in swept])
        return True

    def pop_identifier(self, name, identifier):
        with self._write() as db:
            row = db.execute(
                "DELETE FROM identifiers WHERE name = ? AND identifier = ? RETURNING record, expires",
                (name, identifier),
            ).fetchone()
            if row is not None:
                _uncount(db, [name])
        if row is None or row[1] <= time.time():
            return None
        return row[0]

    # Stats

    def record_calls(self, name, incarnation, operation, tally):
        with self._write() as db:
            row = db.execute("SELECT 1 FROM models WHERE name = ? AND incarnation = ?", (name, incarnation)).fetchone()
            if row is None:
                return
            stored = db.execute("SELECT ewm_ns FROM call_stats WHERE name = ? AND operation = ?",
                                (name, operation)).fetchone()
            db.execute(
                """
                INSERT INTO call_stats (name, operation, n_calls, total_ns, ewm_ns) VALUES (?, ?, ?, ?, ?)
                ON CONFLICT (name, operation) DO UPDATE SET
                    n_calls = n_calls + excluded.n_calls,
                    total_ns = total_ns + excluded.total_ns,
                    ewm_ns = excluded.ewm_ns
                """,
                (name, operation, tally.calls, tally.total_ns, tally.folded_into(stored[0] if stored else None)),
            )
            db.execute("INSERT INTO recent_calls (name, at) VALUES (?, ?) "
                       "ON CONFLICT (name) DO UPDATE SET at = MAX(at, excluded.at)", (name, tally.last_at))
            for table, column, counts in _COUNTS:
                db.executemany(
                    f"INSERT INTO {table} (name, operation, {column}, n) VALUES (?, ?, ?, ?) "  # noqa: S608 - fixed
                    f"ON CONFLICT (name, operation, {column}) DO UPDATE SET n = n + excluded.n",
                    [(name, operation, key, n) for key, n in getattr(tally, counts).items()],
                )
            db.execute("DELETE FROM call_slots WHERE name = ? AND operation = ? AND slot < ?",
                       (name, operation, callstats.oldest_slot_kept(time.time())))

    def recent_models(self, limit):
        return [row[0] for row in self.db.execute(
            "SELECT name FROM recent_calls ORDER BY at DESC LIMIT ?", (limit,))]

    def call_stats(self, name):
        counted: dict[str, dict[str, dict[int, int]]] = {}  # "buckets"/"slots" -> operation -> {key: n}
        db = self.db
        db.execute("BEGIN")  # one snapshot: the histogram adds up to the counts
        try:
            for table, column, counts in _COUNTS:
                rows = db.execute(f"SELECT operation, {column}, n FROM {table} WHERE name = ?", (name,))  # noqa: S608
                for operation, key, n in rows:
                    counted.setdefault(counts, {}).setdefault(operation, {})[key] = n
            rows = db.execute("SELECT operation, n_calls, total_ns, ewm_ns FROM call_stats WHERE name = ?",
                              (name,)).fetchall()
        finally:
            db.execute("COMMIT")
        return {operation: CallStats(n, total, ewm, **{counts: counted.get(counts, {}).get(operation, {})
                                                       for _, _, counts in _COUNTS})
                for operation, n, total, ewm in rows}

    def record_errors(self, counts):
        with self._write() as db:
            db.executemany("INSERT INTO call_errors (route, status, n) VALUES (?, ?, ?) "
                           "ON CONFLICT (route, status) DO UPDATE SET n = n + excluded.n",
                           [(route, status, n) for (route, status), n in counts.items()])

    def error_counts(self):
        return {(route, status): n for route, status, n in self.db.execute("SELECT route, status, n FROM call_errors")}

    def flush(self):
        with self._write() as db:
            for table in ("models", "log", "snapshots", "versions", "identifiers", "identifier_counts", *_CALL_TABLES,
                          "call_errors", "learn_keys", "learn_key_counts"):
                db.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names


def _add_version(db: sqlite3.Connection, incarnation: str, seq: int, record: dict) -> None:
    """Record the snapshot at ``seq`` as the next version (a snapshot saved again keeps its number, and its
    record unless that was a routine snapshot's)."""
    db.execute(
        "INSERT INTO versions (incarnation, seq, version, record) VALUES (?, ?, (SELECT COALESCE(MAX(version), 0) + 1 "
        "FROM versions WHERE incarnation = ?), ?) ON CONFLICT (incarnation, seq) DO UPDATE SET record = excluded.record "
        "WHERE json_extract(versions.record, '$.kind') = 'snapshot'",
        (incarnation, seq, incarnation, json.dumps(record, separators=(",", ":"))))


def _access_columns(access: Access) -> tuple:
    return access.owner, json.dumps(list(access.users)), json.dumps(list(access.groups))


def _model_info(row: tuple) -> ModelInfo:
    *fields, owner, users, groups = row
    return ModelInfo(*fields, access=Access(owner, tuple(json.loads(users)), tuple(json.loads(groups))))


def _owned_count(db: sqlite3.Connection, owner: str) -> int:
    return db.execute("SELECT COUNT(*) FROM models WHERE owner = ?", (owner,)).fetchone()[0]


def _append(db: sqlite3.Connection, name: str, incarnation: str, data: bytes) -> int | None:
    """Append a log entry (in the caller's transaction): its sequence, or None if the incarnation is gone."""
    row = db.execute("UPDATE models SET head = head + 1 WHERE name = ? AND incarnation = ? RETURNING head",
                     (name, incarnation)).fetchone()
    if row is None:
        return None
    db.execute("INSERT INTO log (incarnation, seq, data) VALUES (?, ?, ?)", (incarnation, row[0], data))
    return row[0]


def _known_keys(db: sqlite3.Connection, incarnation: str, keys: list[str], now: float) -> dict[str, int]:
    """The unexpired ones of ``keys``, with their entries' sequences (looked up KEYS_PER_QUERY at a time)."""
    known: dict[str, int] = {}
    for start in range(0, len(keys), KEYS_PER_QUERY):
        chunk = keys[start:start + KEYS_PER_QUERY]
        known.update(db.execute(
            f"SELECT key, seq FROM learn_keys WHERE incarnation = ? AND +expires > ? "  # noqa: S608 - placeholders
            f"AND key IN ({', '.join('?' * len(chunk))})", (incarnation, now, *chunk)))  # +: by key, not by age
    return known


def _count_keys(db: sqlite3.Connection, incarnation: str, change: int) -> int:
    """Add ``change`` to the number of keys recorded for ``incarnation`` (never below zero); the new number."""
    return db.execute("INSERT INTO learn_key_counts (incarnation, n) VALUES (?, ?) "
                      "ON CONFLICT (incarnation) DO UPDATE SET n = MAX(n + ?, 0) RETURNING n",
                      (incarnation, max(change, 0), change)).fetchone()[0]


def _uncount(db: sqlite3.Connection, names: list[str]) -> None:
    """Count removed identifiers out (never below zero)."""
    removed: dict[str, int] = {}
    for name in names:
        removed[name] = removed.get(name, 0) + 1
    db.executemany("UPDATE identifier_counts SET n = MAX(n - ?, 0) WHERE name = ?",
                   [(n, name) for name, n in removed.items()])


def _upgrade(db: sqlite3.Connection) -> None:
    """Bring a file written by an older release up to date: access columns, identifier counts."""

    def missing() -> tuple[list, bool]:
        columns = {row[1] for row in db.execute("PRAGMA table_info(models)")}
        counted = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'identifier_counts'"
        ).fetchone()
        return [(c, kind) for c, kind in ACCESS_COLUMNS if c not in columns], counted is None

    columns, uncounted = missing()
    if not columns and not uncounted:
        return
    with _Transaction(db):
        columns, uncounted = missing()  # another process may have done it meanwhile
        for column, kind in columns:
            db.execute(f"ALTER TABLE models ADD COLUMN {column} {kind}")
        for statement in UPGRADES.split(";"):
            if statement.strip():
                db.execute(statement)
        if uncounted:
            db.execute("INSERT INTO identifier_counts (name, n) SELECT name, COUNT(*) FROM identifiers GROUP BY name")


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
