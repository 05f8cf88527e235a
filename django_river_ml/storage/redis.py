"""The Redis store (``STORAGE_BACKEND = "redis"``): many hosts share one server.

Works with a stock redis-server (6.2 or newer). Each model's log is a Redis
stream whose entry ids are ``<seq>-1``; a Lua script bumps the head and adds
the entry in one step, so appends from any number of workers are ordered and
never lost. Keys (prefix ``REDIS_KEY_PREFIX``)::

    <p>:models                     set of model names
    <p>:model:<name>               hash: flavor, incarnation, head, tip, created, owner, users, groups
    <p>:owned:<owner>              set of the names of the models a user owns (for quotas)
    <p>:log:<incarnation>          stream of entries: d (the entry), t (its token), l (the token before: LogEntry.link)
    <p>:rejected:<incarnation>     set of rejected sequence numbers ("<seq>:2": rejected as full)
    <p>:snapshots:<incarnation>    sorted set of snapshot sequence numbers
    <p>:snapshot:<incarnation>:<seq>
    <p>:versions:<incarnation>     hash: snapshot sequence -> version record (JSON; django_river_ml/versions.py)
    <p>:version-numbers:<incarnation>  hash: snapshot sequence -> version number, and n: the last one given
    <p>:keys:<incarnation>         hash: idempotency key -> sequence of the entry it was recorded with
    <p>:keyage:<incarnation>       sorted set of those keys by expiry (for expiry and eviction)
    <p>:id:<name>:<identifier>     pending prediction, with a TTL
    <p>:ids:<name>                 sorted set of a model's pending identifiers by expiry (for eviction)
    <p>:stats:<name>               hash: <op>:n, <op>:total, <op>:ewm, <op>:b<bucket> (latency histogram)
    <p>:rates:<name>               hash: <op>:<slot> calls per rate slot (the last minute; expires when idle)
    <p>:recent                     sorted set: model names by their last call (what warm-up loads)
    <p>:errors                     hash: <route>:<status> failed calls

On a Redis Cluster (:mod:`django_river_ml.storage.redis_cluster`) a model's keys carry its name as a
hash tag, and the keys of the whole store are laid out apart. With ``wait_replicas``, writes are
acknowledged once that many replicas have them (:meth:`RedisStore._durable`).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
import types

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from django_river_ml import callstats, versions
from django_river_ml.exceptions import StorageUnavailable
from django_river_ml.storage.base import ANY, OK, Access, CallStats, LogEntry, ModelInfo, Store

logger = logging.getLogger(__name__)

# Answers only a cluster node gives (to a client that took it for one Redis).
CLUSTER_ONLY_ERRORS = (redis.exceptions.MovedError, redis.exceptions.AskError, redis.exceptions.ClusterCrossSlotError)

# Models kept in the list of the most recently called (what a starting worker warms up from).
RECENT_KEPT = 1000

# A new incarnation of a model: its hash (head 0, the log's chain starting empty, and ``fields``), its first
# snapshot and, unless ``version`` is '', its first version. Shared by both stores' CREATE.
WRITE_INCARNATION_FUNCTION = """
local function write_incarnation(model, snapshot, snapshots, versions, numbers, fields, data, version)
    redis.call('DEL', model)
    redis.call('HSET', model, 'head', 0, 'tip', '', unpack(fields))
    redis.call('SET', snapshot, data)
    redis.call('ZADD', snapshots, 0, 0)
    if version ~= '' then
        redis.call('HSET', versions, 0, version)
        redis.call('HSET', numbers, 0, redis.call('HINCRBY', numbers, 'n', 1))
    end
end
"""

# ARGV[9] expect: '*' any model, '' none, else that incarnation. ARGV[10] max_owned: 0 for none.
# KEYS[5] is the prefix of the owned-by sets.
CREATE = WRITE_INCARNATION_FUNCTION + """
local current = redis.call('HMGET', KEYS[1], 'incarnation', 'owner')
local old, old_owner = current[1], current[2] or ''
if ARGV[9] ~= '*' and (old or '') ~= ARGV[9] then return {'conflict', ''} end
local owner, max_owned = ARGV[6], tonumber(ARGV[10])
if owner ~= '' and max_owned > 0 and old_owner ~= owner and redis.call('SCARD', KEYS[5] .. owner) >= max_owned then
    return {'over_quota', ''}
end
if old_owner ~= '' then redis.call('SREM', KEYS[5] .. old_owner, ARGV[1]) end
write_incarnation(KEYS[1], KEYS[3], KEYS[4], KEYS[6], KEYS[7],
                  {'flavor', ARGV[2], 'incarnation', ARGV[3], 'created', ARGV[4], 'owner', owner,
                   'users', ARGV[7], 'groups', ARGV[8]}, ARGV[5], ARGV[11])
redis.call('SADD', KEYS[2], ARGV[1])
if owner ~= '' then redis.call('SADD', KEYS[5] .. owner, ARGV[1]) end
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

# Adds entry ARGV[2] with its token ARGV[3], linked to the newest entry's token ('' for the first): LogEntry.link.
ADD_ENTRY_FUNCTION = """
local function add_entry(model, log, data, token)
    local seq = redis.call('HINCRBY', model, 'head', 1)
    redis.call('XADD', log, seq .. '-1', 'd', data, 'l', redis.call('HGET', model, 'tip') or '', 't', token)
    redis.call('HSET', model, 'tip', token)
    return seq
end
"""

# KEYS: model, log. ARGV: incarnation, entry, token.
APPEND = ADD_ENTRY_FUNCTION + """
if redis.call('HGET', KEYS[1], 'incarnation') ~= ARGV[1] then return -1 end
return add_entry(KEYS[1], KEYS[2], ARGV[2], ARGV[3])
"""

# The idempotency keys in ARGV[first..] that count: recorded (KEYS hash), unexpired (ages: sorted set by
# expiry) and not of a rejected entry. A flat list: key, sequence, key, sequence, ...
KNOWN_KEYS_FUNCTION = """
local function known_keys(hash, ages, rejected, now, first)
    local known = {}
    for i = first, #ARGV do
        local seq = redis.call('HGET', hash, ARGV[i])
        if seq and tonumber(redis.call('ZSCORE', ages, ARGV[i]) or '0') > now
                and redis.call('SISMEMBER', rejected, seq) == 0
                and redis.call('SISMEMBER', rejected, seq .. ':2') == 0 then
            known[#known + 1] = ARGV[i]
            known[#known + 1] = seq
        end
    end
    return known
end
"""

# KEYS: model, log, keys hash, keys by expiry, rejected. ARGV: incarnation, entry, now (ms), keep (ms),
# max keys, token, the keys. The known keys (nothing appended), -1 (incarnation gone), or the new sequence.
APPEND_KEYED = KNOWN_KEYS_FUNCTION + ADD_ENTRY_FUNCTION + """
local now, keep, max_keys = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 1000 + #ARGV)
for _, key in ipairs(expired) do
    redis.call('HDEL', KEYS[3], key)
    redis.call('ZREM', KEYS[4], key)
end
local known = known_keys(KEYS[3], KEYS[4], KEYS[5], now, 7)
if #known > 0 then return known end
if redis.call('HGET', KEYS[1], 'incarnation') ~= ARGV[1] then return -1 end
local seq = add_entry(KEYS[1], KEYS[2], ARGV[2], ARGV[6])
for i = 7, #ARGV do
    redis.call('HSET', KEYS[3], ARGV[i], seq)
    redis.call('ZADD', KEYS[4], now + keep, ARGV[i])
end
local over = redis.call('ZCARD', KEYS[4]) - max_keys
if over > 0 then
    local oldest = redis.call('ZPOPMIN', KEYS[4], over)
    for i = 1, #oldest, 2 do redis.call('HDEL', KEYS[3], oldest[i]) end
end
redis.call('PEXPIRE', KEYS[3], keep)
redis.call('PEXPIRE', KEYS[4], keep)
return seq
"""

# KEYS: keys hash, keys by expiry, rejected. ARGV: now (ms), the keys.
KNOWN_KEYS = KNOWN_KEYS_FUNCTION + """
return known_keys(KEYS[1], KEYS[2], KEYS[3], tonumber(ARGV[1]), 2)
"""

# KEYS: stats, model, rates. 0 if the incarnation is gone (its counts are dropped).
# KEYS: model. A write on the model's master, for WAIT to wait on (and everything written there before it).
CONFIRM = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HINCRBY', KEYS[1], 'confirmations', 1) end
"""

RECORD_CALLS = """
if redis.call('HGET', KEYS[2], 'incarnation') ~= ARGV[1] then return 0 end
local before = tonumber(redis.call('HGET', KEYS[1], ARGV[2] .. ':n') or '0')
redis.call('HINCRBY', KEYS[1], ARGV[2] .. ':n', ARGV[3])
redis.call('HINCRBY', KEYS[1], ARGV[2] .. ':total', ARGV[4])
local start = tonumber(ARGV[5])
if before > 0 then start = tonumber(redis.call('HGET', KEYS[1], ARGV[2] .. ':ewm')) end
redis.call('HSET', KEYS[1], ARGV[2] .. ':ewm', tostring(tonumber(ARGV[6]) * start + tonumber(ARGV[7])))
local i = 13
for _ = 1, tonumber(ARGV[12]) do
    redis.call('HINCRBY', KEYS[1], ARGV[2] .. ':b' .. ARGV[i], ARGV[i + 1])
    i = i + 2
end
while i < #ARGV do
    redis.call('HINCRBY', KEYS[3], ARGV[2] .. ':' .. ARGV[i], ARGV[i + 1])
    i = i + 2
end
local oldest = tonumber(ARGV[10])
for _, field in ipairs(redis.call('HKEYS', KEYS[3])) do
    local slot = tonumber(string.match(field, ':(%-?%d+)$'))
    if slot and slot < oldest then redis.call('HDEL', KEYS[3], field) end
end
redis.call('EXPIRE', KEYS[3], ARGV[11])
return 1
"""

# KEYS: model, snapshots (sorted set), snapshot key prefix, log, versions (seq -> record), version numbers
# (seq -> number, and "n": the last). ARGV: incarnation, seq, data, keep, record ('': not a version; it replaces
# only a routine snapshot's record at that sequence), the
# sequences of the versions the retention policy drops (space separated; never one of the newest ``keep``),
# '1' if the token of entry seq follows ('' if unknown), that token. -2: the log no longer has that entry.
SAVE_SNAPSHOT = """
if redis.call('HGET', KEYS[1], 'incarnation') ~= ARGV[1] then return 0 end
if ARGV[7] == '1' then  -- the snapshot goes on from entry ARGV[2], token ARGV[8]: is it still the log's?
    local seq, head = tonumber(ARGV[2]), tonumber(redis.call('HGET', KEYS[1], 'head'))
    if seq > head then return -2 end
    if seq == head then
        if (redis.call('HGET', KEYS[1], 'tip') or ARGV[8]) ~= ARGV[8] then return -2 end
    elseif seq > 0 then
        local entry = redis.call('XRANGE', KEYS[4], seq .. '-1', seq .. '-1')[1]
        if entry then  -- (a trimmed one is older than a newer snapshot: nothing to check)
            local fields = entry[2]
            for j = 1, #fields, 2 do
                if fields[j] == 't' and fields[j + 1] ~= ARGV[8] then return -2 end
            end
        end
    end
end
redis.call('SET', KEYS[3] .. ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[2])
if ARGV[5] ~= '' then
    local kept = redis.call('HGET', KEYS[5], ARGV[2])
    if not kept or string.find(kept, '"kind":"snapshot"', 1, true) then redis.call('HSET', KEYS[5], ARGV[2], ARGV[5]) end
    if redis.call('HEXISTS', KEYS[6], ARGV[2]) == 0 then
        redis.call('HSET', KEYS[6], ARGV[2], redis.call('HINCRBY', KEYS[6], 'n', 1))
    end
end
local newest = redis.call('ZREVRANGE', KEYS[2], 0, tonumber(ARGV[4]) - 1)
local oldest = tonumber(newest[#newest])
local newer = {}
for _, seq in ipairs(newest) do newer[seq] = true end
local function drop(seq)
    redis.call('DEL', KEYS[3] .. seq)
    redis.call('ZREM', KEYS[2], seq)
    redis.call('HDEL', KEYS[5], seq)
    redis.call('HDEL', KEYS[6], seq)
end
for _, seq in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. oldest)) do
    if redis.call('HEXISTS', KEYS[5], seq) == 0 then drop(seq) end
end
for seq in string.gmatch(ARGV[6], '%S+') do
    if not newer[seq] then drop(seq) end
end
redis.call('XTRIM', KEYS[4], 'MINID', (oldest + 1) .. '-0')
return 1
"""


class RedisStore(Store):
    """Store on a Redis server."""

    backend_name = "redis"

    def __init__(self, client: redis.Redis, prefix: str = "river-ml", wait_replicas: int = 0,
                 wait_seconds: float = 1.0):
        self.redis = client
        self.prefix = prefix
        #: Replicas a write must reach before it is acknowledged (:meth:`_durable`), and how long to wait for them.
        self.wait_replicas, self.wait_seconds = wait_replicas, wait_seconds
        self._create = client.register_script(CREATE)
        self._delete = client.register_script(DELETE)
        self._set_access = client.register_script(SET_ACCESS)
        self._put_identifier = client.register_script(PUT_IDENTIFIER)
        self._append = client.register_script(APPEND)
        self._append_keyed = client.register_script(APPEND_KEYED)
        self._known_keys = client.register_script(KNOWN_KEYS)
        self._record_calls = client.register_script(RECORD_CALLS)
        self._save_snapshot = client.register_script(SAVE_SNAPSHOT)
        self._confirm = client.register_script(CONFIRM)

    @classmethod
    def from_settings(cls, settings) -> RedisStore:
        """The store of the settings' Redis: with ``REDIS_CLUSTER``, :class:`RedisClusterStore`."""
        if settings.REDIS_CLUSTER and cls is RedisStore:
            from django_river_ml.storage.redis_cluster import RedisClusterStore

            cls = RedisClusterStore
        return cls(connect(settings), settings.REDIS_KEY_PREFIX, settings.redis_wait_replicas,
                   float(settings.REDIS_WAIT_SECONDS))

    def key(self, *parts: object) -> str:
        """A key of the whole store (the models index, the recent models, the error counts)."""
        return ":".join((self.prefix, *map(str, parts)))

    def model_key(self, kind: str, name: str, *parts: object) -> str:
        """A key of the model ``name`` that outlives its uploads (its hash, stats, pending identifiers)."""
        return self.key(kind, name, *parts)

    def incarnation_key(self, kind: str, name: str, incarnation: str, *parts: object) -> str:
        """A key of one upload (incarnation) of the model ``name``: its log, snapshots, versions."""
        return self.key(kind, incarnation, *parts)

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
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as error:
            # (A cluster client's own errors, such as no node answering, are not RedisErrors.)
            if not isinstance(self.redis, redis.RedisCluster) and isinstance(error, CLUSTER_ONLY_ERRORS):
                logger.error("Redis refused a call: %r. The Redis at REDIS_URL is a node of a Redis Cluster: "
                             "set REDIS_CLUSTER = True.", error)
            else:
                logger.error("Redis refused a call: %r", error)
            raise StorageUnavailable(f"The model store (Redis) refused the call ({type(error).__name__}).") from None

    def _durable(self, script, keys: list[str], args: list):
        """Run a write ``script``; acknowledged once ``wait_replicas`` replicas have it, else StorageUnavailable.

        Redis replicates asynchronously: a master that dies takes with it what its replicas did not
        get yet. WAIT, sent on the connection that wrote (it waits for that connection's writes),
        holds the answer until they did. A write that times out waiting stays on the master: the
        caller hears 503, as for any failure after the write may have landed.
        """
        if not self.wait_replicas:
            return self._call(script, keys=keys, args=args)

        def write_and_wait():
            pipe = self._node_client(keys[0]).pipeline(transaction=False)
            script(keys=keys, args=args, client=pipe)
            pipe.wait(self.wait_replicas, max(int(self.wait_seconds * 1000), 1))
            return pipe.execute()

        result, replicas = self._call(self._on_key_node, write_and_wait)
        if replicas < self.wait_replicas:
            logger.warning("Redis replicas confirmed a write %d of %d times within %.1fs", replicas,
                           self.wait_replicas, self.wait_seconds)
            raise StorageUnavailable(
                f"The model store (Redis) took the write, but only {replicas} of the {self.wait_replicas} "
                f"replicas it waits for had it within {self.wait_seconds:g} s: it is not acknowledged, and may "
                "be lost if the master fails now. Try again (with the same Idempotency-Key, to learn once).")
        return result

    def _node_client(self, key: str) -> redis.Redis:
        """A client of the node serving ``key`` (one Redis: the only one)."""
        return self.redis

    def _on_key_node(self, function):
        return function()

    def close(self):
        self.redis.close()

    # Models

    def create_model(self, name, flavor, incarnation, snapshot, access=Access(), expect=ANY, max_owned=None,
                     version=None):
        outcome, old = self._durable(
            self._create,
            keys=[self.model_key("model", name), self.key("models"),
                  self.incarnation_key("snapshot", name, incarnation, 0),
                  self.incarnation_key("snapshots", name, incarnation), self.key("owned", ""),
                  self.incarnation_key("versions", name, incarnation),
                  self.incarnation_key("version-numbers", name, incarnation)],
            args=[name, flavor, incarnation, time.time(), snapshot, *_access_fields(access),
                  "" if expect is None else expect, max_owned or 0, _json(version) if version is not None else ""],
        )
        if outcome.decode() != OK:
            return outcome.decode()
        self._drop_model_data(name, old.decode() or None)
        return OK

    def model_info(self, name):
        return _model_info(name, self._call(self.redis.hgetall, self.model_key("model", name)))

    def model_names(self):
        return sorted(member.decode() for member in self._call(self.redis.smembers, self.key("models")))

    def model_infos(self):
        names = self.model_names()
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(self.model_key("model", name))
        infos = map(_model_info, names, self._call(pipe.execute) if names else [])
        return [info for info in infos if info is not None]

    def owned_count(self, owner):
        return self._call(self.redis.scard, self.key("owned", owner))

    def set_access(self, name, incarnation, access, max_owned=None):
        outcome = self._durable(
            self._set_access, keys=[self.model_key("model", name), self.key("owned", "")],
            args=[name, incarnation, *_access_fields(access), max_owned or 0],
        )
        return outcome.decode()

    def delete_model(self, name, incarnation=None):
        deleted = self._durable(
            self._delete, keys=[self.model_key("model", name), self.key("models"), self.key("owned", "")],
            args=[name, incarnation or ""],
        )
        if deleted is None and incarnation is not None:
            return False  # the name holds another incarnation now: its data stays
        self._drop_model_data(name, deleted.decode() if deleted else None)
        return deleted is not None

    def _drop_model_data(self, name: str, incarnation: str | None) -> None:
        """Remove what hangs on a model: stats and identifiers by name, log and snapshots by incarnation."""
        identifiers = self._call(self.redis.zrange, self.model_key("ids", name), 0, -1)
        keys = [self.model_key("stats", name), self.model_key("rates", name), self.model_key("ids", name),
                *(self.model_key("id", name, identifier.decode()) for identifier in identifiers)]
        if incarnation:
            snapshots = self._call(self.redis.zrange, self.incarnation_key("snapshots", name, incarnation), 0, -1)
            keys += [self.incarnation_key(kind, name, incarnation) for kind in
                     ("log", "rejected", "snapshots", "versions", "version-numbers", "keys", "keyage")]
            keys += [self.incarnation_key("snapshot", name, incarnation, seq.decode()) for seq in snapshots]
        if keys:
            self._call(self.redis.delete, *keys)

    # Log

    def append(self, name, incarnation, data):
        seq = self._durable(
            self._append, keys=[self.model_key("model", name), self.incarnation_key("log", name, incarnation)],
            args=[incarnation, data, secrets.token_hex(8)],
        )
        return None if seq == -1 else int(seq)

    def append_keyed(self, name, incarnation, data, keys, keep_seconds, max_keys):
        result = self._durable(
            self._append_keyed,
            keys=[self.model_key("model", name), self.incarnation_key("log", name, incarnation),
                  *self._key_sets(name, incarnation)],
            args=[incarnation, data, repr(time.time() * 1000), max(int(keep_seconds * 1000), 1), max_keys,
                  secrets.token_hex(8), *dict.fromkeys(keys)],
        )
        if isinstance(result, list):
            return _pairs(result)
        return None if result == -1 else int(result)

    def known_keys(self, name, incarnation, keys):
        found = self._call(self._known_keys, keys=self._key_sets(name, incarnation),
                           args=[repr(time.time() * 1000), *keys])
        return _pairs(found)

    def _key_sets(self, name: str, incarnation: str) -> list[str]:
        """What the idempotency key scripts read: the keys, their expiries, the rejected entries."""
        return [self.incarnation_key(kind, name, incarnation) for kind in ("keys", "keyage", "rejected")]

    def entries(self, name, incarnation, after, upto):
        if upto <= after:
            return []
        pipe = self.redis.pipeline(transaction=False)
        pipe.xrange(self.incarnation_key("log", name, incarnation), f"{after + 1}-0", f"{upto}-1")
        pipe.smembers(self.incarnation_key("rejected", name, incarnation))
        rows, rejected = self._call(pipe.execute)
        reasons = {}
        for member in rejected:  # "<seq>" (the model raised), "<seq>:<reason>" (another reason)
            seq, _, reason = member.decode().partition(":")
            reasons[int(seq)] = max(reasons.get(int(seq), 0), int(reason or 1))
        result = []
        for entry_id, fields in rows:
            seq = int(entry_id.split(b"-")[0])
            link, token = fields.get(b"l"), fields.get(b"t")  # absent from entries written before the chain
            result.append(LogEntry(seq, fields[b"d"], reasons.get(seq, 0), token=token and token.decode(),
                                   link=link.decode() if link is not None else None))
        return result

    def reject(self, name, incarnation, seq, reason=1):
        self._call(self.redis.sadd, self.incarnation_key("rejected", name, incarnation),
                   seq if reason == 1 else f"{seq}:{reason}")

    # Snapshots

    def save_snapshot(self, name, incarnation, seq, data, keep, version=None, tip=None):
        dropped = ""
        if version is not None:
            kept = self._call(self.redis.hvals, self.incarnation_key("versions", name, incarnation))
            records = {record["sequence"]: record for record in map(json.loads, kept)}
            if records.get(seq, {}).get("kind", versions.SNAPSHOT) == versions.SNAPSHOT:  # as SAVE_SNAPSHOT keeps it
                records[seq] = version  # one version per sequence: a snapshot saved again is not two
            dropped = " ".join(map(str, sorted(versions.expired_now(records.values()) - {seq})))
        saved = self._durable(
            self._save_snapshot,
            keys=[self.model_key("model", name), self.incarnation_key("snapshots", name, incarnation),
                  self.incarnation_key("snapshot", name, incarnation, ""),
                  self.incarnation_key("log", name, incarnation), self.incarnation_key("versions", name, incarnation),
                  self.incarnation_key("version-numbers", name, incarnation)],
            args=[incarnation, seq, data, keep, _json(version) if version is not None else "", dropped,
                  "" if tip is None else "1", tip or ""],
        )
        if saved == -2:
            raise StorageUnavailable(f"The log of model {name!r} no longer has the entry its snapshot at {seq} "
                                     "was made after (a failover?); the snapshot was not written.")

    def confirm(self, name):
        if self.wait_replicas:
            self._durable(self._confirm, keys=[self.model_key("model", name)], args=[])

    def versions(self, name, incarnation):
        pipe = self.redis.pipeline(transaction=True)
        pipe.hgetall(self.incarnation_key("versions", name, incarnation))
        pipe.hgetall(self.incarnation_key("version-numbers", name, incarnation))
        records, numbers = self._call(pipe.execute)
        found = [{**json.loads(record), "version": int(numbers[seq])} for seq, record in records.items()
                 if seq in numbers]
        return sorted(found, key=lambda record: record["version"])

    def version_snapshot(self, name, incarnation, version):
        numbers = self._call(self.redis.hgetall, self.incarnation_key("version-numbers", name, incarnation))
        seq = next((s.decode() for s, n in numbers.items() if s != b"n" and int(n) == version), None)
        if seq is None:
            return None
        data = self._call(self.redis.get, self.incarnation_key("snapshot", name, incarnation, seq))
        return (int(seq), data) if data is not None else None

    def latest_snapshot(self, name, incarnation, at_most=None):
        for _ in range(3):  # a snapshot trimmed between the two reads: look again
            seq = self.snapshot_seq(name, incarnation, at_most)
            if seq is None:
                return None
            data = self._call(self.redis.get, self.incarnation_key("snapshot", name, incarnation, seq))
            if data is not None:
                return seq, data
        return None

    def snapshot_seq(self, name, incarnation, at_most=None):
        newest = self._call(self.redis.zrevrangebyscore, self.incarnation_key("snapshots", name, incarnation),
                            "+inf" if at_most is None else at_most, "-inf", start=0, num=1)
        return int(newest[0]) if newest else None

    # Identifiers

    def put_identifier(self, name, identifier, record, ttl_seconds, max_pending=None):
        stored = self._call(
            self._put_identifier,
            keys=[self.model_key("id", name, identifier), self.model_key("ids", name), self.model_key("id", name, "")],
            args=[identifier, record, int(ttl_seconds * 1000), max_pending or 0, repr(time.time() * 1000)],
        )
        return bool(stored)

    def pop_identifier(self, name, identifier):
        pipe = self.redis.pipeline()
        pipe.getdel(self.model_key("id", name, identifier))
        pipe.zrem(self.model_key("ids", name), identifier)
        record, _ = self._call(pipe.execute)
        return record

    # Stats

    def record_calls(self, name, incarnation, operation, tally):
        counts = [*_flattened(tally.buckets), *_flattened(tally.slots)]
        recorded = self._call(
            self._record_calls, keys=[self.model_key("stats", name), self.model_key("model", name),
                                      self.model_key("rates", name)],
            args=[incarnation, operation, tally.calls, tally.total_ns, tally.first_ns, repr(tally.decay),
                  repr(tally.add), repr(tally.last_at), name, callstats.oldest_slot_kept(time.time()),
                  2 * callstats.RATE_WINDOW_SECONDS, len(tally.buckets), *counts])
        if recorded:  # the models called most recently (warm-up's list): a key of the whole store, apart
            pipe = self.redis.pipeline(transaction=False)
            pipe.zadd(self.key("recent"), {name: tally.last_at}, gt=True)
            pipe.zremrangebyrank(self.key("recent"), 0, -1 - RECENT_KEPT)
            self._call(pipe.execute)

    def recent_models(self, limit):
        return [name.decode() for name in self._call(self.redis.zrevrange, self.key("recent"), 0, limit - 1)]

    def call_stats(self, name):
        pipe = self.redis.pipeline(transaction=True)  # one moment: the histogram adds up to the counts
        pipe.hgetall(self.model_key("stats", name))
        pipe.hgetall(self.model_key("rates", name))
        stats, rates = self._call(pipe.execute)
        fields = {k.decode(): v for k, v in stats.items()}
        rates = {k.decode(): v for k, v in rates.items()}
        result = {}
        for field in fields:
            if field.endswith(":n"):
                operation = field[:-2]
                result[operation] = CallStats(
                    n_calls=int(fields[field]),
                    total_ns=int(fields.get(f"{operation}:total", 0)),
                    ewm_ns=float(fields.get(f"{operation}:ewm", 0)),
                    buckets=_counts(fields, f"{operation}:b"),
                    slots=_counts(rates, f"{operation}:"),
                )
        return result

    def record_errors(self, counts):
        pipe = self.redis.pipeline(transaction=True)
        for (route, status), n in counts.items():
            pipe.hincrby(self.key("errors"), f"{route}:{status}", n)
        self._call(pipe.execute)

    def error_counts(self):
        counts = {}
        for field, n in self._call(self.redis.hgetall, self.key("errors")).items():
            route, _, status = field.decode().rpartition(":")
            counts[(route, int(status))] = int(n)
        return counts

    def flush(self):
        keys = list(self._call(self.redis.scan_iter, match=f"{_glob_escape(self.prefix)}:*", count=1000))
        if keys:
            self._call(self.redis.delete, *keys)


def _json(record: dict) -> str:
    return json.dumps(record, separators=(",", ":"))


def _flattened(counts: dict[int, int]) -> list[int]:
    """``{key: n}`` as the flat list of arguments a script reads two by two."""
    return [value for pair in counts.items() for value in pair]


def _counts(fields: dict[str, bytes], prefix: str) -> dict[int, int]:
    """The counts of the fields named ``<prefix><whole number>``, by that number."""
    counts = {}
    for field, value in fields.items():
        if field.startswith(prefix) and field[len(prefix):].lstrip("-").isdigit():
            counts[int(field[len(prefix):])] = int(value)
    return counts


def connect(settings, url: str | None = None, wait_seconds: float = 0.0, cluster: bool | None = None) -> redis.Redis:
    """A client for the settings' Redis (or ``url``; a cluster's if ``cluster``, by default ``REDIS_CLUSTER``)
    that gives up on a stalled Redis within the timeouts and never retries by itself (``wait_seconds``: longer
    answers awaited, a blocking read's).

    Without timeouts every request hangs as long as Redis stalls. redis-py's own
    retries (ten by default) would multiply the wait and resend a write, an
    append, that may have landed already: a failure goes to the caller instead
    (a 503), who retries knowing it. A cluster client still follows MOVED and ASK
    redirections (the command did not run) and learns the new layout after a failure.
    """
    options = {
        "socket_timeout": float(settings.REDIS_SOCKET_TIMEOUT) + wait_seconds,
        "socket_connect_timeout": float(settings.REDIS_SOCKET_CONNECT_TIMEOUT),
        "retry": Retry(NoBackoff(), 0),
    }
    url = url or settings.REDIS_URL
    if settings.REDIS_CLUSTER if cluster is None else cluster:  # any node; the client learns the others
        if url:
            return redis.RedisCluster.from_url(url, **options)
        return redis.RedisCluster(host=settings.REDIS_HOST, port=int(settings.REDIS_PORT),
                                  password=settings.REDIS_PASSWORD or None, **options)
    if url:
        return redis.Redis.from_url(url, **options)
    return redis.Redis(host=settings.REDIS_HOST, port=int(settings.REDIS_PORT), db=int(settings.REDIS_DB),
                       password=settings.REDIS_PASSWORD or None, **options)


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
        tip=fields[b"tip"].decode() if b"tip" in fields else None,
        access=Access(
            owner=fields.get(b"owner", b"").decode() or None,
            users=tuple(json.loads(fields.get(b"users", b"[]"))),
            groups=tuple(json.loads(fields.get(b"groups", b"[]"))),
        ),
    )


def _pairs(flat: list) -> dict[str, int]:
    """``{key: sequence}`` from the scripts' flat list of keys and sequences."""
    return {flat[i].decode(): int(flat[i + 1]) for i in range(0, len(flat), 2)}


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
