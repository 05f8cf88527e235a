"""The Redis store (``STORAGE_BACKEND = "redis"``): many hosts share one server.

Works with a stock redis-server (6.2 or newer). Each model's log is a Redis
stream whose entry ids are ``<seq>-1``; a Lua script bumps the head and adds
the entry in one step, so appends from any number of workers are ordered and
never lost. Keys (prefix ``REDIS_KEY_PREFIX``)::

    <p>:models                     set of model names
    <p>:model:<name>               hash: flavor, incarnation, head, created
    <p>:log:<incarnation>          stream of entries
    <p>:rejected:<incarnation>     set of rejected sequence numbers
    <p>:snapshots:<incarnation>    sorted set of snapshot sequence numbers
    <p>:snapshot:<incarnation>:<seq>
    <p>:id:<name>:<identifier>     pending prediction, with a TTL
    <p>:stats:<name>               hash: <op>:n, <op>:total, <op>:ewm
"""

from __future__ import annotations

import time

import redis

from django_river_ml.exceptions import StorageUnavailable
from django_river_ml.storage.base import CallStats, LogEntry, ModelInfo, Store

CREATE = """
local old = redis.call('HGET', KEYS[1], 'incarnation')
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'flavor', ARGV[2], 'incarnation', ARGV[3], 'head', 0, 'created', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('SET', KEYS[3], ARGV[5])
redis.call('ZADD', KEYS[4], 0, 0)
return old
"""

APPEND = """
if redis.call('HGET', KEYS[1], 'incarnation') ~= ARGV[1] then return -1 end
local seq = redis.call('HINCRBY', KEYS[1], 'head', 1)
redis.call('XADD', KEYS[2], seq .. '-1', 'd', ARGV[2])
return seq
"""

RECORD_CALL = """
local n = redis.call('HINCRBY', KEYS[1], ARGV[1] .. ':n', 1)
redis.call('HINCRBY', KEYS[1], ARGV[1] .. ':total', ARGV[2])
local ewm = tonumber(ARGV[2])
if n > 1 then
    local alpha = tonumber(ARGV[3])
    ewm = alpha * ewm + (1 - alpha) * tonumber(redis.call('HGET', KEYS[1], ARGV[1] .. ':ewm'))
end
redis.call('HSET', KEYS[1], ARGV[1] .. ':ewm', tostring(ewm))
return n
"""

SAVE_SNAPSHOT = """
if redis.call('HGET', KEYS[1], 'incarnation') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[3] .. ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[2])
local keep = tonumber(ARGV[4])
local total = redis.call('ZCARD', KEYS[2])
if total > keep then
    local old = redis.call('ZRANGE', KEYS[2], 0, total - keep - 1)
    for _, seq in ipairs(old) do redis.call('DEL', KEYS[3] .. seq) end
    redis.call('ZREMRANGEBYRANK', KEYS[2], 0, total - keep - 1)
end
local oldest = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
redis.call('XTRIM', KEYS[4], 'MINID', (tonumber(oldest) + 1) .. '-0')
return 1
"""


class RedisStore(Store):
    """Store on a Redis server."""

    backend_name = "redis"

    def __init__(self, client: redis.Redis, prefix: str = "river-ml"):
        self.redis = client
        self.prefix = prefix
        self._create = client.register_script(CREATE)
        self._append = client.register_script(APPEND)
        self._record_call = client.register_script(RECORD_CALL)
        self._save_snapshot = client.register_script(SAVE_SNAPSHOT)

    @classmethod
    def from_settings(cls, settings) -> RedisStore:
        if settings.REDIS_URL:
            client = redis.Redis.from_url(settings.REDIS_URL)
        else:
            client = redis.Redis(
                host=settings.REDIS_HOST,
                port=int(settings.REDIS_PORT),
                db=int(settings.REDIS_DB),
                password=settings.REDIS_PASSWORD or None,
            )
        return cls(client, settings.REDIS_KEY_PREFIX)

    def key(self, *parts: object) -> str:
        return ":".join((self.prefix, *map(str, parts)))

    def _call(self, function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except redis.exceptions.ConnectionError as error:
            raise StorageUnavailable(f"Cannot reach Redis: {error}") from None

    def close(self):
        self.redis.close()

    # Models

    def create_model(self, name, flavor, incarnation, snapshot):
        old = self._call(
            self._create,
            keys=[self.key("model", name), self.key("models"), self.key("snapshot", incarnation, 0),
                  self.key("snapshots", incarnation)],
            args=[name, flavor, incarnation, time.time(), snapshot],
        )
        self._drop_model_data(name, old.decode() if old else None)

    def model_info(self, name):
        fields = self._call(self.redis.hgetall, self.key("model", name))
        if not fields:
            return None
        return ModelInfo(
            name=name,
            flavor=fields[b"flavor"].decode(),
            incarnation=fields[b"incarnation"].decode(),
            head=int(fields[b"head"]),
            created=float(fields[b"created"]),
        )

    def model_names(self):
        return sorted(member.decode() for member in self._call(self.redis.smembers, self.key("models")))

    def delete_model(self, name):
        pipe = self.redis.pipeline()
        pipe.hget(self.key("model", name), "incarnation")
        pipe.delete(self.key("model", name))
        pipe.srem(self.key("models"), name)
        incarnation, _, _ = self._call(pipe.execute)
        self._drop_model_data(name, incarnation.decode() if incarnation else None)
        return incarnation is not None

    def _drop_model_data(self, name: str, incarnation: str | None) -> None:
        """Remove what hangs on a model: stats and identifiers by name, log and snapshots by incarnation."""
        keys = [self.key("stats", name)]
        if incarnation:
            snapshots = self._call(self.redis.zrange, self.key("snapshots", incarnation), 0, -1)
            keys += [self.key("log", incarnation), self.key("rejected", incarnation),
                     self.key("snapshots", incarnation)]
            keys += [self.key("snapshot", incarnation, seq.decode()) for seq in snapshots]
        pattern = self.key("id", _glob_escape(name), "*")
        keys += list(self._call(self.redis.scan_iter, match=pattern, count=1000))
        if keys:
            self._call(self.redis.delete, *keys)

    # Log

    def append(self, name, incarnation, data):
        seq = self._call(
            self._append, keys=[self.key("model", name), self.key("log", incarnation)], args=[incarnation, data]
        )
        return None if seq == -1 else int(seq)

    def entries(self, incarnation, after, upto):
        if upto <= after:
            return []
        pipe = self.redis.pipeline(transaction=False)
        pipe.xrange(self.key("log", incarnation), f"{after + 1}-0", f"{upto}-1")
        pipe.smembers(self.key("rejected", incarnation))
        rows, rejected = self._call(pipe.execute)
        rejected = {int(seq) for seq in rejected}
        result = []
        for entry_id, fields in rows:
            seq = int(entry_id.split(b"-")[0])
            result.append(LogEntry(seq, fields[b"d"], seq in rejected))
        return result

    def reject(self, incarnation, seq):
        self._call(self.redis.sadd, self.key("rejected", incarnation), seq)

    # Snapshots

    def save_snapshot(self, name, incarnation, seq, data, keep):
        self._call(
            self._save_snapshot,
            keys=[self.key("model", name), self.key("snapshots", incarnation), self.key("snapshot", incarnation, ""),
                  self.key("log", incarnation)],
            args=[incarnation, seq, data, keep],
        )

    def latest_snapshot(self, incarnation):
        newest = self._call(self.redis.zrevrange, self.key("snapshots", incarnation), 0, 0)
        if not newest:
            return None
        seq = int(newest[0])
        data = self._call(self.redis.get, self.key("snapshot", incarnation, seq))
        return None if data is None else (seq, data)

    # Identifiers

    def put_identifier(self, name, identifier, record, ttl_seconds):
        self._call(self.redis.set, self.key("id", name, identifier), record, ex=ttl_seconds)

    def pop_identifier(self, name, identifier):
        return self._call(self.redis.getdel, self.key("id", name, identifier))

    # Stats

    def record_call(self, name, operation, duration_ns, alpha):
        self._call(self._record_call, keys=[self.key("stats", name)], args=[operation, int(duration_ns), alpha])

    def call_stats(self, name):
        fields = {k.decode(): v for k, v in self._call(self.redis.hgetall, self.key("stats", name)).items()}
        result = {}
        for field in fields:
            if field.endswith(":n"):
                operation = field[:-2]
                result[operation] = CallStats(
                    n_calls=int(fields[field]),
                    total_ns=int(fields.get(f"{operation}:total", 0)),
                    ewm_ns=float(fields.get(f"{operation}:ewm", 0)),
                )
        return result

    def flush(self):
        keys = list(self._call(self.redis.scan_iter, match=f"{_glob_escape(self.prefix)}:*", count=1000))
        if keys:
            self._call(self.redis.delete, *keys)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
