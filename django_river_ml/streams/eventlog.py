"""Where stream events are kept: numbered per channel, across every worker, for a while.

Every event a worker emits is appended here first; the ids the event log gives are what
``Last-Event-ID`` names, so they increase per channel whichever worker sent the event, and a
client that comes back replays what it missed from here (``STREAM_RETENTION`` events per
channel are kept; older ones are trimmed, and a client asking for them gets a
``stream-reset``; and every event goes after ``STREAM_RETENTION_SECONDS``, so the channels
of deleted models do not stay forever). Two implementations, chosen by ``STORAGE_BACKEND``:

- :class:`SQLiteEventLog` (embedded default): a SQLite file beside the model store, of its
  own so that event writes never wait behind learns. Its ``pos`` column orders every event of
  every channel; each worker tails it (:mod:`django_river_ml.streams.fanout`).
- :class:`RedisEventLog`: a Redis stream per channel whose entry ids are ``<id>-1``; the Lua
  script that appends also publishes the event on one pub/sub channel, so every worker of
  every host hears it in id order.

>>> import tempfile, pathlib
>>> log = SQLiteEventLog(pathlib.Path(tempfile.mkdtemp()) / "events.sqlite3", retention=2, max_age=3600)
>>> [event.id for event in log.append([("events", "learn", "{}"), ("events", "predict", "{}")])]
[1, 2]
>>> [(event.id, event.type) for event in log.read("events", after=1)]
[(2, 'predict')]
>>> log.current_id("events"), log.current_id("unused")
(2, 0)
"""

from __future__ import annotations

import abc
import json
import os
import sqlite3
import threading
import time

import redis
from django_eventstream.event import Event
from django_eventstream.storage import EventDoesNotExist

from django_river_ml.exceptions import StorageUnavailable
from django_river_ml.storage.sqlite import SQLiteFile

# A trimmed channel is trimmed again after this many more appends (not on every one); the embedded
# log drops events older than its age limit once in this many appends.
TRIM_EVERY = 64
SWEEP_EVERY = 1024

# Claim results (see EventLog.claim).
CLAIMED, TOO_SOON, ALREADY_SENT = 1, -1, 0


class EventLog(abc.ABC):
    """Numbered events per channel, shared by every worker."""

    def __init__(self, retention: int, max_age: float):
        self.retention = retention
        self.max_age = max_age

    @abc.abstractmethod
    def append(self, events: list[tuple[str, str, str]]) -> list[Event]:
        """Append ``(channel, type, JSON data)`` events in order, in one step; return them with their ids."""

    @abc.abstractmethod
    def read(self, channel: str, after: int, limit: int = 100) -> list[Event]:
        """Events of ``channel`` after id ``after``, oldest first.

        Raises EventDoesNotExist (with the current id) when some of them are no longer kept,
        or when ``after`` is beyond the channel's last id (a store that was reset).
        """

    @abc.abstractmethod
    def current_id(self, channel: str) -> int:
        """The id of the channel's last event (0 before the first)."""

    @abc.abstractmethod
    def claim(self, key: str, sequence: int, interval: float) -> int:
        """Take the right to send ``key``'s state at ``sequence`` (coalescing across workers).

        CLAIMED when no state as new was sent and the last was sent ``interval`` seconds ago or
        more; ALREADY_SENT when a state at ``sequence`` or later was; TOO_SOON otherwise.
        """

    def close(self) -> None:
        pass

    def _missing(self, channel: str, after: int, events: list[Event], current: int) -> bool:
        """Whether ``events`` (read after ``after``) skip some the client has not seen."""
        if after > current:
            return True
        first = events[0].id if events else current + 1
        return after < current and first > after + 1


SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    pos INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    id INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS events_by_channel ON events (channel, id);
CREATE INDEX IF NOT EXISTS events_by_age ON events (created);
CREATE TABLE IF NOT EXISTS event_channels (channel TEXT PRIMARY KEY, last_id INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS event_claims (key TEXT PRIMARY KEY, seq INTEGER NOT NULL, until REAL NOT NULL)
    WITHOUT ROWID;
"""


class SQLiteEventLog(EventLog):
    """The embedded event log: one SQLite file in WAL mode, safe for many processes on one host."""

    def __init__(self, path: str | os.PathLike, retention: int, max_age: float, timeout: float = 5.0):
        super().__init__(retention, max_age)
        self.file = SQLiteFile(path, SCHEMA, timeout, "event log")
        self.path = self.file.path
        self._appended = 0

    @property
    def db(self) -> sqlite3.Connection:
        return self.file.db

    def _run(self, function, *args):
        try:
            return function(*args)
        except sqlite3.Error as error:
            raise StorageUnavailable(f"The event log is busy or unavailable: {error}") from None

    def append(self, events):
        return self._run(self._append, events)

    def _append(self, events):
        db = self.db
        appended, now = [], time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            self._appended += len(events)
            if self._appended >= SWEEP_EVERY:  # channels of deleted models, and old claims, go with age
                self._appended = 0
                db.execute("DELETE FROM events WHERE created < ?", (now - self.max_age,))
                db.execute("DELETE FROM event_claims WHERE until < ?", (now - self.max_age,))
            for channel, event_type, data in events:
                (event_id,) = db.execute(
                    "INSERT INTO event_channels (channel, last_id) VALUES (?, 1) "
                    "ON CONFLICT (channel) DO UPDATE SET last_id = last_id + 1 RETURNING last_id", (channel,)
                ).fetchone()
                db.execute("INSERT INTO events (channel, id, type, data, created) VALUES (?, ?, ?, ?, ?)",
                           (channel, event_id, event_type, data, now))
                if event_id > self.retention and event_id % TRIM_EVERY == 0:
                    db.execute("DELETE FROM events WHERE channel = ? AND id <= ?", (channel, event_id - self.retention))
                appended.append(Event(channel, event_type, data, id=event_id))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return appended

    def read(self, channel, after, limit=100):
        def read():
            rows = self.db.execute("SELECT id, type, data FROM events WHERE channel = ? AND id > ? ORDER BY id LIMIT ?",
                                   (channel, after, limit)).fetchall()
            return [Event(channel, event_type, data, id=event_id) for event_id, event_type, data in rows]

        current = self.current_id(channel)  # first: an append between the two reads then only adds events
        events = self._run(read)
        if self._missing(channel, after, events, current):
            raise EventDoesNotExist(f"Events of {channel} after {after} are no longer kept", current)
        return events

    def current_id(self, channel):
        row = self._run(lambda: self.db.execute("SELECT last_id FROM event_channels WHERE channel = ?",
                                                (channel,)).fetchone())
        return row[0] if row else 0

    def claim(self, key, sequence, interval):
        return self._run(self._claim, key, sequence, interval)

    def _claim(self, key, sequence, interval):
        db = self.db
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT seq, until FROM event_claims WHERE key = ?", (key,)).fetchone()
            if row and row[0] >= sequence:
                outcome = ALREADY_SENT
            elif row and now < row[1]:
                outcome = TOO_SOON
            else:
                db.execute("INSERT OR REPLACE INTO event_claims (key, seq, until) VALUES (?, ?, ?)",
                           (key, sequence, now + interval))
                outcome = CLAIMED
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return outcome

    # Tailing (every worker, for its own subscribers)

    def last_position(self) -> int:
        row = self._run(lambda: self.db.execute("SELECT max(pos) FROM events").fetchone())
        return row[0] or 0

    def since(self, position: int, limit: int = 1000) -> list[tuple[int, Event]]:
        """Events of every channel after ``position``, in the order they were appended."""
        rows = self._run(lambda: self.db.execute(
            "SELECT pos, channel, id, type, data FROM events WHERE pos > ? ORDER BY pos LIMIT ?", (position, limit)
        ).fetchall())
        return [(pos, Event(channel, event_type, data, id=event_id)) for pos, channel, event_id, event_type, data in rows]

    def close(self):
        self.file.close()


# KEYS: the channel's id counter, its stream. ARGV: channel, type, data, retention, pub/sub channel, age
# limit (ms): a channel unused that long (a deleted model's) goes, counter and all.
# A counter lost while its stream survived (a partial restore) restarts after the stream's last id.
APPEND = """
local id = redis.call('INCR', KEYS[1])
local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], id .. '-1', 't', ARGV[2], 'd', ARGV[3])
if type(added) == 'table' and added.err then
    local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1][1]
    id = tonumber(string.match(top, '^(%d+)')) + 1
    redis.call('SET', KEYS[1], id)
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], id .. '-1', 't', ARGV[2], 'd', ARGV[3])
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('PUBLISH', ARGV[5], cjson.encode({channel = ARGV[1], event_type = ARGV[2], data = ARGV[3], pub_id = id}))
return id
"""

# KEYS: the claim hash. ARGV: sequence, interval (ms). Times from the server's clock.
CLAIM = """
local claim = redis.call('HMGET', KEYS[1], 's', 'u')
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if claim[1] and tonumber(claim[1]) >= tonumber(ARGV[1]) then return 0 end
if claim[2] and now < tonumber(claim[2]) then return -1 end
redis.call('HSET', KEYS[1], 's', ARGV[1], 'u', now + tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], 86400000)
return 1
"""


class RedisEventLog(EventLog):
    """The event log on the Redis server the model store uses (same client, same timeouts)."""

    def __init__(self, client: redis.Redis, prefix: str, retention: int, max_age: float):
        super().__init__(retention, max_age)
        self.redis = client
        self.prefix = prefix
        #: The pub/sub channel every append is published on.
        self.pubsub_channel = f"{prefix}:events"
        self._append = client.register_script(APPEND)
        self._claim = client.register_script(CLAIM)

    def _keys(self, channel: str) -> list[str]:
        return [f"{self.prefix}:event-id:{channel}", f"{self.prefix}:events:{channel}"]

    def _call(self, function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except redis.exceptions.RedisError as error:
            raise StorageUnavailable(f"The event log (Redis) failed: {type(error).__name__}: {error}") from None

    def append(self, events):
        def append():
            pipeline = self.redis.pipeline(transaction=False)
            for channel, event_type, data in events:
                self._append(keys=self._keys(channel),
                             args=[channel, event_type, data, self.retention, self.pubsub_channel,
                                   int(self.max_age * 1000)], client=pipeline)
            return pipeline.execute()

        ids = self._call(append)
        return [Event(channel, event_type, data, id=int(event_id))
                for (channel, event_type, data), event_id in zip(events, ids)]

    def read(self, channel, after, limit=100):
        current = self.current_id(channel)  # first: an append between the two reads then only adds events
        start = f"({after}-1" if after > 0 else "-"
        entries = self._call(self.redis.xrange, self._keys(channel)[1], start, "+", count=limit)
        events = [Event(channel, fields[b"t"].decode(), fields[b"d"].decode(), id=int(entry_id.split(b"-")[0]))
                  for entry_id, fields in entries]
        if self._missing(channel, after, events, current):
            raise EventDoesNotExist(f"Events of {channel} after {after} are no longer kept", current)
        return events

    def current_id(self, channel):
        value = self._call(self.redis.get, self._keys(channel)[0])
        return int(value) if value else 0

    def claim(self, key, sequence, interval):
        return int(self._call(self._claim, keys=[f"{self.prefix}:event-claim:{key}"],
                              args=[sequence, int(interval * 1000)]))

    def subscriber(self) -> redis.client.PubSub:
        """A pub/sub connection of its own (it blocks), subscribed to every append."""
        pool = self.redis.connection_pool
        kwargs = {**pool.connection_kwargs, "socket_timeout": None, "socket_keepalive": True,
                  "health_check_interval": 10}
        client = redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self.pubsub_channel)
        return pubsub


def decode_published(message: bytes) -> Event:
    """An event as :class:`RedisEventLog` publishes it (django-eventstream's own message shape)."""
    fields = json.loads(message)
    return Event(fields["channel"], fields["event_type"], fields["data"], id=int(fields["pub_id"]))


_lock = threading.Lock()
_log: EventLog | None = None
_log_pid: int | None = None


def get_event_log() -> EventLog:
    """This process's event log, on the backend of the model store (made again after a fork or settings change)."""
    global _log, _log_pid
    if _log is None or _log_pid != os.getpid():
        with _lock:
            if _log is None or _log_pid != os.getpid():
                _log, _log_pid = _make_event_log(), os.getpid()
    return _log


def reset_event_log() -> None:
    global _log
    with _lock:
        if _log is not None and _log_pid == os.getpid():
            _log.close()
        _log = None


def _make_event_log() -> EventLog:
    from django_river_ml.settings import river_settings
    from django_river_ml.storage import get_store
    from django_river_ml.storage.redis import RedisStore

    store = get_store()
    retention, max_age = river_settings.STREAM_RETENTION, float(river_settings.STREAM_RETENTION_SECONDS)
    if isinstance(store, RedisStore):
        return RedisEventLog(store.redis, store.prefix, retention, max_age)
    path = river_settings.shelve_path
    return SQLiteEventLog(path.with_name(f"{path.stem}-events.sqlite3"), retention, max_age)
