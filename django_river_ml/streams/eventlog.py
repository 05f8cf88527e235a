"""Where stream events are kept: numbered per channel, across every worker, for a while.

Every event a worker emits is appended here first; the ids the event log gives are what
``Last-Event-ID`` names, so they increase per channel whichever worker sent the event, and a
client that comes back replays what it missed from here (``STREAM_RETENTION`` events per
channel are kept; older ones are trimmed, and a client asking for them gets a
``stream-reset``; and every event goes after ``STREAM_RETENTION_SECONDS``, so the channels
of deleted models do not stay forever). Two implementations, chosen by ``STORAGE_BACKEND``:

Every event carries the *incarnation* it is about (which upload of its model; see
:mod:`django_river_ml.events`). A model's own channels serve only the events of its current
incarnation (:mod:`django_river_ml.streams.sse` filters every read), and :meth:`EventLog.purge`
drops the others when a model is deleted or replaced. A purge leaves holes in a channel's ids:
the channel remembers below which id it purged (its *floor*), so that a client resuming across
a purge is not told that events were trimmed (``stream-reset``) when it only missed events it
may not see. Ids keep increasing through purges.

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
>>> [(event.id, event.incarnation) for event in log.append([("events/m", "learn", "{}", "a1"),
...                                                         ("events/m", "upload", "{}", "b2")])]
[(1, 'a1'), (2, 'b2')]
>>> log.purge("events/m", keep="b2"), [event.id for event in log.read("events/m", after=0)]
(1, [2])
"""

from __future__ import annotations

import abc
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass

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
# Bytes of event data one tailing read of the embedded log loads at most (the first event always comes).
SINCE_BYTES = 4 * 1024 * 1024


@dataclass
class LoggedEvent(Event):
    """An event of the log: django-eventstream's, and the incarnation of the model it is about ("" if none)."""

    incarnation: str = ""


def _row(event: tuple) -> tuple[str, str, str, str]:
    """``(channel, type, data)`` or ``(channel, type, data, incarnation)`` as the four of them."""
    channel, event_type, data, *rest = event
    return channel, event_type, data, (rest[0] or "") if rest else ""


class EventLog(abc.ABC):
    """Numbered events per channel, shared by every worker."""

    def __init__(self, retention: int, max_age: float):
        self.retention = retention
        self.max_age = max_age

    @abc.abstractmethod
    def append(self, events: list[tuple]) -> list[LoggedEvent]:
        """Append ``(channel, type, JSON data[, incarnation])`` events in order, in one step; return them with ids."""

    def read(self, channel: str, after: int, limit: int = 100) -> list[LoggedEvent]:
        """Events of ``channel`` after id ``after``, oldest first (every incarnation's: filtering is the reader's).

        Raises EventDoesNotExist (with the current id) when some of them are no longer kept,
        or when ``after`` is beyond the channel's last id (a store that was reset).
        """
        return self.read_page(channel, after, limit)[0]

    @abc.abstractmethod
    def read_page(self, channel: str, after: int, limit: int = 100,
                  max_bytes: int | None = None) -> tuple[list[LoggedEvent], bool]:
        """As :meth:`read`, and at most ``max_bytes`` of event data (but at least one event): the events, and
        whether more follow that were left for the next read (``limit`` or ``max_bytes`` reached)."""

    @abc.abstractmethod
    def purge(self, channel: str, keep: str | None, before: int | None = None) -> int:
        """Delete the events of ``channel`` with ids below ``before`` (default: all) not of incarnation ``keep``
        (None: of any); later reads take the holes for purged, not trimmed, events. Returns how many went."""

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

    def _missing(self, after: int, events: list[Event], current: int, floor: int) -> bool:
        """Whether ``events`` (read after ``after``) skip some the client has not seen.

        Trimming drops the oldest events of a channel; purging drops events below the channel's
        ``floor``. A hole after ``after`` that ends below the floor was purged: nothing there
        was for the client (it was another incarnation's).
        """
        if after > current:
            return True
        first = events[0].id if events else current + 1
        return after < current and first > after + 1 and first > floor


SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    pos INTEGER PRIMARY KEY AUTOINCREMENT,
    channel TEXT NOT NULL,
    id INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    created REAL NOT NULL,
    incarnation TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS events_by_channel ON events (channel, id);
CREATE INDEX IF NOT EXISTS events_by_age ON events (created);
CREATE TABLE IF NOT EXISTS event_channels (channel TEXT PRIMARY KEY, last_id INTEGER NOT NULL,
    floor INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS event_claims (key TEXT PRIMARY KEY, seq INTEGER NOT NULL, until REAL NOT NULL)
    WITHOUT ROWID;
"""
# Columns an event log written by an older release lacks (its events have no incarnation: never served on a
# model's channel).
UPGRADE_COLUMNS = (("events", "incarnation", "TEXT NOT NULL DEFAULT ''"),
                   ("event_channels", "floor", "INTEGER NOT NULL DEFAULT 0"))


def _upgrade(db: sqlite3.Connection) -> None:
    def missing() -> list[tuple[str, str, str]]:
        return [(table, column, kind) for table, column, kind in UPGRADE_COLUMNS
                if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}]

    if not missing():
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        for table, column, kind in missing():  # another process may have done it meanwhile
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _bounded(rows, limit: int, max_bytes: int | None, make) -> tuple[list, bool]:
    """Up to ``limit`` of ``rows`` (read one at a time) whose data (``make(row).data``) add up to at most
    ``max_bytes`` (the first always), and whether some were left: a read never loads much more than it keeps."""
    found, used = [], 0
    for row in rows:
        item = make(row)
        data = (item[1] if isinstance(item, tuple) else item).data
        if len(found) >= limit or (found and max_bytes is not None and used + len(data) > max_bytes):
            return found, True
        found.append(item)
        used += len(data)
    return found, False


class SQLiteEventLog(EventLog):
    """The embedded event log: one SQLite file in WAL mode, safe for many processes on one host."""

    def __init__(self, path: str | os.PathLike, retention: int, max_age: float, timeout: float = 5.0):
        super().__init__(retention, max_age)
        self.file = SQLiteFile(path, SCHEMA, timeout, "event log", upgrade=_upgrade)
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
            for channel, event_type, data, incarnation in map(_row, events):
                (event_id,) = db.execute(
                    "INSERT INTO event_channels (channel, last_id) VALUES (?, 1) "
                    "ON CONFLICT (channel) DO UPDATE SET last_id = last_id + 1 RETURNING last_id", (channel,)
                ).fetchone()
                db.execute("INSERT INTO events (channel, id, type, data, created, incarnation) "
                           "VALUES (?, ?, ?, ?, ?, ?)", (channel, event_id, event_type, data, now, incarnation))
                if event_id > self.retention and event_id % TRIM_EVERY == 0:
                    db.execute("DELETE FROM events WHERE channel = ? AND id <= ?", (channel, event_id - self.retention))
                appended.append(LoggedEvent(channel, event_type, data, id=event_id, incarnation=incarnation))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return appended

    def read_page(self, channel, after, limit=100, max_bytes=None):
        def read():
            # One transaction: the channel's last id and floor, and its events, as of one moment.
            db = self.db
            db.execute("BEGIN")
            try:
                row = db.execute("SELECT last_id, floor FROM event_channels WHERE channel = ?", (channel,)).fetchone()
                rows = db.execute("SELECT id, type, data, incarnation FROM events WHERE channel = ? AND id > ? "
                                  "ORDER BY id LIMIT ?", (channel, after, limit + 1))
                events = _bounded(rows, limit, max_bytes, lambda r: LoggedEvent(channel, r[1], r[2], id=r[0],
                                                                                incarnation=r[3]))
                rows.close()
            finally:
                db.execute("COMMIT")
            return (row or (0, 0)), events

        (current, floor), (events, more) = self._run(read)
        if self._missing(after, events, current, floor):
            raise EventDoesNotExist(f"Events of {channel} after {after} are no longer kept", current)
        return events, more

    def current_id(self, channel):
        row = self._run(lambda: self.db.execute("SELECT last_id FROM event_channels WHERE channel = ?",
                                                (channel,)).fetchone())
        return row[0] if row else 0

    def purge(self, channel, keep, before=None):
        return self._run(self._purge, channel, keep, before)

    def _purge(self, channel, keep, before):
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT last_id FROM event_channels WHERE channel = ?", (channel,)).fetchone()
            if row is None:
                db.execute("COMMIT")
                return 0
            before = row[0] + 1 if before is None else before
            if keep is None:
                purged = db.execute("DELETE FROM events WHERE channel = ? AND id < ?", (channel, before)).rowcount
            else:
                purged = db.execute("DELETE FROM events WHERE channel = ? AND id < ? AND incarnation != ?",
                                    (channel, before, keep)).rowcount
            db.execute("UPDATE event_channels SET floor = max(floor, ?) WHERE channel = ?", (before, channel))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return purged

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

    def since(self, position: int, limit: int = 1000, max_bytes: int = SINCE_BYTES) -> list[tuple[int, LoggedEvent]]:
        """Events of every channel after ``position``, in the order they were appended (at most ``max_bytes``)."""
        def since():
            rows = self.db.execute("SELECT pos, channel, id, type, data, incarnation FROM events WHERE pos > ? "
                                   "ORDER BY pos LIMIT ?", (position, limit))
            found = _bounded(rows, limit, max_bytes, lambda r: (r[0], LoggedEvent(r[1], r[3], r[4], id=r[2],
                                                                                  incarnation=r[5])))[0]
            rows.close()
            return found

        return self._run(since)

    def close(self):
        self.file.close()


# KEYS: the channel's id counter, its stream, its floor. ARGV: channel, type, data, retention, pub/sub channel,
# age limit (ms): a channel unused that long (a deleted model's) goes, counter and all; incarnation.
# A counter lost while its stream survived (a partial restore) restarts after the stream's last id.
APPEND = """
local id = redis.call('INCR', KEYS[1])
local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], id .. '-1', 't', ARGV[2], 'd', ARGV[3], 'i', ARGV[7])
if type(added) == 'table' and added.err then
    local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1][1]
    id = tonumber(string.match(top, '^(%d+)')) + 1
    redis.call('SET', KEYS[1], id)
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], id .. '-1', 't', ARGV[2], 'd', ARGV[3], 'i', ARGV[7])
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('PEXPIRE', KEYS[3], ARGV[6])
redis.call('PUBLISH', ARGV[5], cjson.encode({channel = ARGV[1], event_type = ARGV[2], data = ARGV[3], pub_id = id,
                                             incarnation = ARGV[7]}))
return id
"""

# KEYS: the channel's counter, stream, floor. ARGV: start of the range, most entries, most bytes of fields (0: no
# limit; the first entry always comes). Returns the channel's last id and floor with the entries, as of one moment,
# and 1 when entries were left out for the byte limit.
READ = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(redis.call('GET', KEYS[3]) or '0')
local entries = redis.call('XRANGE', KEYS[2], ARGV[1], '+', 'COUNT', ARGV[2])
local budget, used, kept, cut = tonumber(ARGV[3]), 0, {}, 0
for index, entry in ipairs(entries) do
    local size, fields = 0, entry[2]
    for j = 2, #fields, 2 do size = size + #fields[j] end
    if index > 1 and budget > 0 and used + size > budget then
        cut = 1
        break
    end
    used = used + size
    kept[index] = entry
end
return {current, floor, kept, cut}
"""

# KEYS: the channel's counter, stream, floor. ARGV: the incarnation kept, whether one is kept ('1') or none ('0'),
# the id below which to purge ('': all), the age limit (ms). In pages of 100 entries (their data is read to find
# their incarnation).
PURGE = """
local before = tonumber(ARGV[3])
if not before then before = tonumber(redis.call('GET', KEYS[1]) or '0') + 1 end
if before <= 1 then return 0 end
local removed, start = 0, '-'
while true do
    local entries = redis.call('XRANGE', KEYS[2], start, (before - 1) .. '-1', 'COUNT', 100)
    if #entries == 0 then break end
    for _, entry in ipairs(entries) do
        local tag, fields = '', entry[2]
        for j = 1, #fields, 2 do
            if fields[j] == 'i' then tag = fields[j + 1] end
        end
        if ARGV[2] == '0' or tag ~= ARGV[1] then
            redis.call('XDEL', KEYS[2], entry[1])
            removed = removed + 1
        end
    end
    start = '(' .. entries[#entries][1]
end
if before > tonumber(redis.call('GET', KEYS[3]) or '0') then
    redis.call('SET', KEYS[3], before, 'PX', ARGV[4])
end
return removed
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
        self.cluster = isinstance(client, redis.RedisCluster)
        self._append = client.register_script(APPEND)
        self._read = client.register_script(READ)
        self._purge = client.register_script(PURGE)
        self._claim = client.register_script(CLAIM)

    def _key(self, kind: str, channel: str) -> str:
        """A key of the channel's; on a cluster they share a hash tag (one slot: a script may use them all)."""
        return f"{self.prefix}:{kind}:{{{channel}}}" if self.cluster else f"{self.prefix}:{kind}:{channel}"

    def _keys(self, channel: str) -> list[str]:
        """The channel's id counter and its stream."""
        return [self._key("event-id", channel), self._key("events", channel)]

    def _all_keys(self, channel: str) -> list[str]:
        """Its counter, stream, and floor (set by the first purge)."""
        return [*self._keys(channel), self._key("event-floor", channel)]

    def _queue_script(self, script, keys: list[str], args: list, pipeline) -> None:
        """Queue ``script`` on ``pipeline``. A cluster's pipeline cannot load a script a node lacks (a
        replica promoted since): there it goes whole (EVAL; Redis caches it), else by its digest."""
        if self.cluster:
            pipeline.execute_command("EVAL", script.script, len(keys), *keys, *args)  # its eval() is another thing
        else:
            script(keys=keys, args=args, client=pipeline)

    def _call(self, function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as error:
            raise StorageUnavailable(f"The event log (Redis) failed: {type(error).__name__}: {error}") from None

    def append(self, events):
        rows = [_row(event) for event in events]

        def append():
            pipeline = self.redis.pipeline(transaction=False)
            for channel, event_type, data, incarnation in rows:
                self._queue_script(self._append, self._all_keys(channel),
                                   [channel, event_type, data, self.retention, self.pubsub_channel,
                                    int(self.max_age * 1000), incarnation], pipeline)
            return pipeline.execute()

        ids = self._call(append)
        return [LoggedEvent(channel, event_type, data, id=int(event_id), incarnation=incarnation)
                for (channel, event_type, data, incarnation), event_id in zip(rows, ids)]

    def read_page(self, channel, after, limit=100, max_bytes=None):
        start = f"({after}-1" if after > 0 else "-"
        current, floor, entries, cut = self._call(self._read, keys=self._all_keys(channel),
                                                  args=[start, limit + 1, max_bytes or 0])
        events = []
        for entry_id, flat in entries:
            fields = dict(zip(flat[::2], flat[1::2]))
            events.append(LoggedEvent(channel, fields[b"t"].decode(), fields[b"d"].decode(),
                                      id=int(entry_id.split(b"-")[0]), incarnation=fields.get(b"i", b"").decode()))
        more = bool(cut)
        if len(events) > limit:
            events, more = events[:limit], True
        if self._missing(after, events, int(current), int(floor)):
            raise EventDoesNotExist(f"Events of {channel} after {after} are no longer kept", int(current))
        return events, more

    def purge(self, channel, keep, before=None):
        return int(self._call(self._purge, keys=self._all_keys(channel),
                              args=[keep or "", "0" if keep is None else "1", "" if before is None else before,
                                    int(self.max_age * 1000)]))

    def current_id(self, channel):
        value = self._call(self.redis.get, self._keys(channel)[0])
        return int(value) if value else 0

    def claim(self, key, sequence, interval):
        return int(self._call(self._claim, keys=[self._key("event-claim", key)],
                              args=[sequence, int(interval * 1000)]))

    def subscriber(self) -> redis.client.PubSub:
        """A pub/sub connection of its own (it blocks), subscribed to every append.

        On a cluster, to a node that serves now (a message published on any node reaches every node).
        """
        if self.cluster:
            self.redis.nodes_manager.initialize()  # after a failover, not the node that died
            node = self.redis.get_node_from_key(self.pubsub_channel)
            pool = node.redis_connection.connection_pool
        else:
            pool = self.redis.connection_pool
        kwargs = {**pool.connection_kwargs, "socket_timeout": None, "socket_keepalive": True,
                  "health_check_interval": 10}
        kwargs.pop("redis_connect_func", None)  # the cluster client's own hook (READONLY on replicas...)
        client = redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self.pubsub_channel)
        return pubsub


def decode_published(message: bytes) -> LoggedEvent:
    """An event as :class:`RedisEventLog` publishes it (django-eventstream's own message shape, and its incarnation)."""
    fields = json.loads(message)
    return LoggedEvent(fields["channel"], fields["event_type"], fields["data"], id=int(fields["pub_id"]),
                       incarnation=fields.get("incarnation") or "")


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
