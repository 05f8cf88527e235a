"""The Redis store (``STORAGE_BACKEND = "redis"``): many hosts share one server.

Works with a stock redis-server (6.2 or newer). Each model's log is a Redis
stream whose entry ids are ``<seq>-1``; a Lua script bumps the head and adds
the entry in one step, so appends from any number of workers are ordered and
never lost. Keys (prefix ``REDIS_KEY_PREFIX``)::

    <p>:models                     set of model names
    <p>:model:<name>               hash: flavor, incarnation, head, created, owner, users, groups
    <p>:owned:<owner>              set of the names of the models a user owns (for quotas)
    <p>:log:<incarnation>          stream of entries
    <p>:rejected:<incarnation>     set of rejected sequence numbers ("<seq>:2": rejected as full)
    <p>:snapshots:<incarnation>    sorted set of snapshot sequence numbers
    <p>:snapshot:<incarnation>:<seq>
    <p>:id:<name>:<identifier>     pending prediction, with a TTL
    <p>:ids:<name>                 sorted set of a model's pending identifiers by expiry (for eviction)
    <p>:stats:<name>               hash: <op>:n, <op>:total, <op>:ewm
"""

from __future__ import annotations

import json
import logging
import time
import types

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from django_river_ml.exceptions import StorageUnavailable
from django_river_ml.storage.base import ANY, OK, Access, CallStats, LogEntry, ModelInfo, Store

logger = logging.getLogger(__name__)

# ARGV[9] expect: '*' any model, '' none, else that incarnation. ARGV[10] max_owned: 0 for none.
# KEYS[5] is the prefix of the owned-by sets.
CREATE = """
local current = redis.call('HMGET', KEYS[1], 'incarnation', 'owner')
local old, old_owner = current[1], current[2] or ''
if ARGV[9] ~= '*' and (old or '') ~= ARGV[9] then return {'conflict', ''} end
local owner, max_owned = ARGV[6], tonumber(ARGV[10])
if owner ~= '' and max_owned > 0 and old_owner ~= owner and redis.call('SCARD', KEYS[5] .. owner) >= max_owned then
    return {'over_quota', ''}
end
if old_owner ~= '' then redis.call('SREM', KEYS[5] .. old_owner, ARGV[1]) end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'flavor', ARGV[2], 'incarnation', ARGV[3], 'head', 0, 'created', ARGV[4],
           'owner', owner, 'users', ARGV[7], 'groups', ARGV[8])
redis.call('SADD', KEYS[2], ARGV[1])
if owner ~= '' then redis.call('SADD', KEYS[5] .. owner, ARGV[1]) end
redis.call('SET', KEYS[3], ARGV[5])
redis.call('ZADD', KEYS[4], 0, 0)
return {'ok', old or ''}
"""

# ARGV[2]: the incarnation to delete, '' for whatever is there.
DELETE = """
local current = redis.call('HMGET', KEYS[1], 'incarnation', 'owner')
if not current[1] then
    if ARGV[2] == '' then redis.call('SREM', KEYS[2], ARGV[1]) end
    return false
end
if ARGV[2] ~= '' and current[1] ~= ARGV[2] then return false end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
if current[2] and current[2] ~= '' then redis.call('SREM', KEYS[3] .. current[2], ARGV[1]) end
return current[1]
"""

SET_ACCESS = """
local current = redis.call('HMGET', KEYS[1], 'incarnation', 'owner')
if current[1] ~= ARGV[2] then return 'conflict' end
local old_owner, owner = current[2] or '', ARGV[3]
if owner ~= old_owner then
    local max_owned = tonumber(ARGV[6])
    if owner ~= '' and max_owned > 0 and redis.call('SCARD', KEYS[2] .. owner) >= max_owned then
        return 'over_quota'
    end
    if old_owner ~= '' then redis.call('SREM', KEYS[2] .. old_owner, ARGV[1]) end
    if owner ~= '' then redis.call('SADD', KEYS[2] .. owner, ARGV[1]) end
end
redis.call('HSET', KEYS[1], 'owner', owner, 'users', ARGV[4], 'groups', ARGV[5])
return 'ok'
"""

# SET NX: a pending identifier is never replaced (an expired one is gone already).
# ARGV: identifier, record, ttl (ms), max pending (0: none), now (ms, with a fraction: scores order
# predictions made within one millisecond). KEYS[3]: prefix of the id keys.
PUT_IDENTIFIER = """
local ttl, max_pending, now = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if not redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', ttl) then return 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
local over = redis.call('ZCARD', KEYS[2]) - max_pending
if max_pending > 0 and over > 0 then
    local oldest = redis.call('ZPOPMIN', KEYS[2], over)
    for i = 1, #oldest, 2 do redis.call('DEL', KEYS[3] .. oldest[i]) end
end
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
return 1
"""

APPEND = """
if redis.call('HGET', KEYS[1], 'incarnation') ~= ARGV[1] then return -1 end
local seq = redis.call('HINCRBY', KEYS[1], 'head', 1)
redis.call('XADD', KEYS[2], seq .. '-1', 'd', ARGV[2])
return seq
"""

RECORD_CALLS = """
if redis.call('HGET', KEYS[2], 'incarnation') ~= ARGV[1] then return 0 end
local before = tonumber(redis.call('HGET', KEYS[1], ARGV[2] .. ':n') or '0')
redis.call('HINCRBY', KEYS[1], ARGV[2] .. ':n', ARGV[3])
redis.call('HINCRBY', KEYS[1], ARGV[2] .. ':total', ARGV[4])
local start = tonumber(ARGV[5])
if before > 0 then start = tonumber(redis.call('HGET', KEYS[1], ARGV[2] .. ':ewm')) end
redis.call('HSET', KEYS[1], ARGV[2] .. ':ewm', tostring(tonumber(ARGV[6]) * start + tonumber(ARGV[7])))
local used = redis.call('ZSCORE', KEYS[3], ARGV[9])
if not used or tonumber(used) < tonumber(ARGV[8]) then redis.call('ZADD', KEYS[3], ARGV[8], ARGV[9]) end
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -1001)
return 1
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
        self._delete = client.register_script(DELETE)
        self._set_access = client.register_script(SET_ACCESS)
        self._put_identifier = client.register_script(PUT_IDENTIFIER)
        self._append = client.register_script(APPEND)
        self._record_calls = client.register_script(RECORD_CALLS)
        self._save_snapshot = client.register_script(SAVE_SNAPSHOT)

    @classmethod
    def from_settings(cls, settings) -> RedisStore:
        """A client that gives up on a stalled Redis within the timeouts and never retries by itself.

        Without timeouts every request hangs as long as Redis stalls. redis-py's own
        retries (ten by default) would multiply the wait and resend a write, an
        append, that may have landed already: a failure goes to the caller instead
        (a 503), who retries knowing it.
        """
        options = {
            "socket_timeout": float(settings.REDIS_SOCKET_TIMEOUT),
            "socket_connect_timeout": float(settings.REDIS_SOCKET_CONNECT_TIMEOUT),
            "retry": Retry(NoBackoff(), 0),
        }
        if settings.REDIS_URL:
            client = redis.Redis.from_url(settings.REDIS_URL, **options)
        else:
            client = redis.Redis(
                host=settings.REDIS_HOST,
                port=int(settings.REDIS_PORT),
                db=int(settings.REDIS_DB),
                password=settings.REDIS_PASSWORD or None,
                **options,
            )
        return cls(client, settings.REDIS_KEY_PREFIX)

    def key(self, *parts: object) -> str:
        return ":".join((self.prefix, *map(str, parts)))

    def _call(self, function, *args, **kwargs):
        """Run a command, script or pipeline; every Redis failure is :class:`StorageUnavailable` (a 503).

        redis-py's TimeoutError is not a ConnectionError; BusyLoadingError (a restarted
        Redis loading its data) is one; a refusal (read-only replica, out of memory,
        a busy script, an error inside a pipeline or script) is a ResponseError.
        The details go to the log, not to the caller.
        """
        try:
            result = function(*args, **kwargs)
            # scan_iter talks to Redis while it is consumed: consume it here.
            return list(result) if isinstance(result, types.GeneratorType) else result
        except redis.exceptions.TimeoutError as error:
            logger.warning("Redis did not answer in time: %s", error)
            raise StorageUnavailable("The model store (Redis) did not answer in time.") from None
        except redis.exceptions.ConnectionError as error:
            logger.warning("Cannot reach Redis: %s", error)
            raise StorageUnavailable("The model store (Redis) cannot be reached.") from None
        except redis.exceptions.RedisError as error:
            logger.error("Redis refused a call: %r", error)
            raise StorageUnavailable(f"The model store (Redis) refused the call ({type(error).__name__}).") from None

    def close(self):
        self.redis.close()

    # Models

    def create_model(self, name, flavor, incarnation, snapshot, access=Access(), expect=ANY, max_owned=None):
        outcome, old = self._call(
            self._create,
            keys=[self.key("model", name), self.key("models"), self.key("snapshot", incarnation, 0),
                  self.key("snapshots", incarnation), self.key("owned", "")],
            args=[name, flavor, incarnation, time.time(), snapshot, *_access_fields(access),
                  "" if expect is None else expect, max_owned or 0],
        )
        if outcome.decode() != OK:
            return outcome.decode()
        self._drop_model_data(name, old.decode() or None)
        return OK

    def model_info(self, name):
        return _model_info(name, self._call(self.redis.hgetall, self.key("model", name)))

    def model_names(self):
        return sorted(member.decode() for member in self._call(self.redis.smembers, self.key("models")))

    def model_infos(self):
        names = self.model_names()
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.key("model", name))
        infos = map(_model_info, names, self._call(pipe.execute) if names else [])
        return [info for info in infos if info is not None]

    def owned_count(self, owner):
        return self._call(self.redis.scard, self.key("owned", owner))

    def set_access(self, name, incarnation, access, max_owned=None):
        outcome = self._call(
            self._set_access, keys=[self.key("model", name), self.key("owned", "")],
            args=[name, incarnation, *_access_fields(access), max_owned or 0],
        )
        return outcome.decode()

    def delete_model(self, name, incarnation=None):
        deleted = self._call(
            self._delete, keys=[self.key("model", name), self.key("models"), self.key("owned", "")],
            args=[name, incarnation or ""],
        )
        if deleted is None and incarnation is not None:
            return False  # the name holds another incarnation now: its data stays
        self._drop_model_data(name, deleted.decode() if deleted else None)
        return deleted is not None

    def _drop_model_data(self, name: str, incarnation: str | None) -> None:
        """Remove what hangs on a model: stats and identifiers by name, log and snapshots by incarnation."""
        keys = [self.key("stats", name), self.key("ids", name)]
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
        reasons = {}
        for member in rejected:  # "<seq>" (the model raised), "<seq>:<reason>" (another reason)
            seq, _, reason = member.decode().partition(":")
            reasons[int(seq)] = max(reasons.get(int(seq), 0), int(reason or 1))
        result = []
        for entry_id, fields in rows:
            seq = int(entry_id.split(b"-")[0])
            result.append(LogEntry(seq, fields[b"d"], reasons.get(seq, 0)))
        return result

    def reject(self, incarnation, seq, reason=1):
        self._call(self.redis.sadd, self.key("rejected", incarnation), seq if reason == 1 else f"{seq}:{reason}")

    # Snapshots

    def save_snapshot(self, name, incarnation, seq, data, keep):
        self._call(
            self._save_snapshot,
            keys=[self.key("model", name), self.key("snapshots", incarnation), self.key("snapshot", incarnation, ""),
                  self.key("log", incarnation)],
            args=[incarnation, seq, data, keep],
        )

    def latest_snapshot(self, incarnation, at_most=None):
        for _ in range(3):  # a snapshot trimmed between the two reads: look again
            seq = self.snapshot_seq(incarnation, at_most)
            if seq is None:
                return None
            data = self._call(self.redis.get, self.key("snapshot", incarnation, seq))
            if data is not None:
                return seq, data
        return None

    def snapshot_seq(self, incarnation, at_most=None):
        newest = self._call(self.redis.zrevrangebyscore, self.key("snapshots", incarnation),
                            "+inf" if at_most is None else at_most, "-inf", start=0, num=1)
        return int(newest[0]) if newest else None

    # Identifiers

    def put_identifier(self, name, identifier, record, ttl_seconds, max_pending=None):
        stored = self._call(
            self._put_identifier,
            keys=[self.key("id", name, identifier), self.key("ids", name), self.key("id", name, "")],
            args=[identifier, record, int(ttl_seconds * 1000), max_pending or 0, repr(time.time() * 1000)],
        )
        return bool(stored)

    def pop_identifier(self, name, identifier):
        pipe = self.redis.pipeline()
        pipe.getdel(self.key("id", name, identifier))
        pipe.zrem(self.key("ids", name), identifier)
        record, _ = self._call(pipe.execute)
        return record

    # Stats

    def record_calls(self, name, incarnation, operation, tally):
        self._call(self._record_calls, keys=[self.key("stats", name), self.key("model", name), self.key("recent")],
                   args=[incarnation, operation, tally.calls, tally.total_ns, tally.first_ns, repr(tally.decay),
                         repr(tally.add), repr(tally.last_at), name])

    def recent_models(self, limit):
        return [name.decode() for name in self._call(self.redis.zrevrange, self.key("recent"), 0, limit - 1)]

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


def _access_fields(access: Access) -> list[str]:
    return [access.owner or "", json.dumps(list(access.users)), json.dumps(list(access.groups))]


def _model_info(name: str, fields: dict) -> ModelInfo | None:
    if not fields:
        return None
    return ModelInfo(
        name=name,
        flavor=fields[b"flavor"].decode(),
        incarnation=fields[b"incarnation"].decode(),
        head=int(fields[b"head"]),
        created=float(fields[b"created"]),
        access=Access(
            owner=fields.get(b"owner", b"").decode() or None,
            users=tuple(json.loads(fields.get(b"users", b"[]"))),
            groups=tuple(json.loads(fields.get(b"groups", b"[]"))),
        ),
    )


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
