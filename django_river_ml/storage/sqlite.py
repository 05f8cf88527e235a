"""One SQLite file shared by many processes: WAL mode, a connection per thread and process.

The embedded store and the streams' event log each keep one. sqlite3 connections must cross
neither threads nor a fork, so each thread of each process opens its own, on first use.
Writers run ``BEGIN IMMEDIATE`` themselves; readers see committed data only.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from django_river_ml.exceptions import StorageUnavailable


class SQLiteFile:
    """``db``: this thread's connection to ``path``, made with ``schema`` (and ``upgrade``) on first use."""

    def __init__(self, path: str | os.PathLike, schema: str, timeout: float, what: str,
                 upgrade: Callable[[sqlite3.Connection], None] | None = None):
        self.path = Path(path)
        self.schema, self.timeout, self.what, self.upgrade = schema, timeout, what, upgrade
        self._local = threading.local()

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
            connection.executescript(self.schema)
            if self.upgrade is not None:
                self.upgrade(connection)
        except (sqlite3.Error, OSError) as error:
            raise StorageUnavailable(f"Cannot open the {self.what} at {self.path}: {error}") from None
        return connection

    def close(self) -> None:
        """Close this thread's connection (others close with their threads)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None and self._local.pid == os.getpid():
            connection.close()
        self._local = threading.local()
