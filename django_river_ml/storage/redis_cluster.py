"""The Redis store on a Redis Cluster (``STORAGE_BACKEND = "redis"``, ``REDIS_CLUSTER = True``).

A cluster spreads keys over 16384 slots, and a script or transaction may only use keys of
one slot. Every key of one model carries its name as a hash tag (``<p>:log:{<name>}:<incarnation>``),
so each model's scripts (append, snapshot, idempotency keys, stats) run whole in its slot, as on
one Redis, while models spread over the masters. What spans models lives apart::

    <p>:models                 sorted set: model names, by when one was last created (an index)
    <p>:owned:{<owner>}        sorted set: the names a user created (an index, for quotas)
    <p>:owner-lock:{<owner>}   held while a quota is checked and used (create, change of owner)
    <p>:recent, <p>:errors     as on one Redis

The indexes are only ever added to before the model is written (and acknowledged as it is); a name
whose model is gone is left out when read (the model's own hash is the truth), and dropped from the
index once it is older than :data:`INDEX_GRACE_SECONDS`, so that a create in progress is never
dropped. An owner's index is written, and their quota counted from the models themselves, under
the owner's lock.

Writes are acknowledged once a replica has them (``REDIS_WAIT_REPLICAS``, 1 by default here):
see :meth:`RedisStore._durable` and docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import secrets
import time

import redis

from django_river_ml.exceptions import StorageUnavailable
from django_river_ml.storage.base import ANY, CONFLICT, OK, OVER_QUOTA, Access
from django_river_ml.storage.redis import (WRITE_INCARNATION_FUNCTION, RedisStore, _access_fields, _glob_escape,
                                           _json, _model_info)

# A name in an index whose model is missing is dropped once its entry is this old (a create in
# progress has a fresh one).
INDEX_GRACE_SECONDS = 60.0
# How long an owner's lock is held at most (a process that died holding it), and waited for.
OWNER_LOCK_SECONDS = 10.0

# KEYS: model, snapshot 0, snapshots, versions, version numbers. ARGV: flavor, incarnation, created,
# snapshot, owner, users, groups, expect ('*' any model, '' none, else that incarnation), version record.
CREATE = WRITE_INCARNATION_FUNCTION + """
local old = redis.call('HGET', KEYS[1], 'incarnation')
if ARGV[8] ~= '*' and (old or '') ~= ARGV[8] then return {'conflict', ''} end
write_incarnation(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5],
                  {'flavor', ARGV[1], 'incarnation', ARGV[2], 'created', ARGV[3], 'owner', ARGV[5],
                   'users', ARGV[6], 'groups', ARGV[7]}, ARGV[4], ARGV[9])
return {'ok', old or ''}
"""

# KEYS: model. ARGV: the incarnation to delete, '' for whatever is there. Its incarnation, or nil.
DELETE = """
local current = redis.call('HGET', KEYS[1], 'incarnation')
if not current or (ARGV[1] ~= '' and current ~= ARGV[1]) then return false end
redis.call('DEL', KEYS[1])
return current
"""

# KEYS: model. ARGV: incarnation, owner, users, groups.
SET_ACCESS = """
if redis.call('HGET', KEYS[1], 'incarnation') ~= ARGV[1] then return 'conflict' end
redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'users', ARGV[3], 'groups', ARGV[4])
return 'ok'
"""

# KEYS: an index. ARGV: the oldest entry kept (seconds), then names: those older go.
FORGET = """
local dropped = 0
for i = 2, #ARGV do
    local since = redis.call('ZSCORE', KEYS[1], ARGV[i])
    if since and tonumber(since) < tonumber(ARGV[1]) then dropped = dropped + redis.call('ZREM', KEYS[1], ARGV[i]) end
end
return dropped
"""

# KEYS: an index. ARGV: score, name. Through RedisStore._durable: an acknowledged upload is listed after a failover.
INDEX = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
"""

# KEYS: an owner's lock. ARGV: token, milliseconds. 1 if taken.
TAKE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisClusterStore(RedisStore):
    """Store on a Redis Cluster: each model in one slot, the models spread over the masters."""

    backend_name = "redis-cluster"

    def __init__(self, client: redis.RedisCluster, prefix: str = "river-ml", wait_replicas: int = 1,
                 wait_seconds: float = 1.0):
        super().__init__(client, prefix, wait_replicas, wait_seconds)
        self._create = client.register_script(CREATE)
        self._delete = client.register_script(DELETE)
        self._set_access = client.register_script(SET_ACCESS)
        self._forget = client.register_script(FORGET)
        self._release = client.register_script(RELEASE)
        self._index = client.register_script(INDEX)
        self._take = client.register_script(TAKE)

    def model_key(self, kind, name, *parts):
        return self.key(kind, f"{{{name}}}", *parts)

    def incarnation_key(self, kind, name, incarnation, *parts):
        return self.key(kind, f"{{{name}}}", incarnation, *parts)

    def close(self):
        """Drop the connections, keep what the client knows of the cluster: as one Redis's client does, it
        can still be used (it connects again), where a closed cluster client knows no node."""
        for node in self.redis.get_nodes():
            if node.redis_connection is not None:
                node.redis_connection.connection_pool.disconnect()

    def owner_key(self, kind: str, owner: str) -> str:
        return self.key(kind, f"{{{owner}}}")

    # Writes on the node that serves a key, and WAIT on the same connection

    def _node_client(self, key):
        try:
            node = self.redis.get_node_from_key(key)
        except redis.exceptions.SlotNotCoveredError:  # the layout is unknown (a node failed): learn it again
            self._relearn_layout()
            node = self.redis.get_node_from_key(key)
        return self.redis.get_redis_connection(node)

    def _on_key_node(self, function):
        """Run ``function`` (on a node's own client); a slot that moved (MOVED, ASK: nothing ran) is looked up
        again once, and a node that failed makes the client learn the cluster's layout anew."""
        for attempt in (1, 2):
            try:
                return function()
            except (redis.exceptions.MovedError, redis.exceptions.AskError):
                self._relearn_layout()
                if attempt == 2:
                    raise
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                self._relearn_layout()
                raise
        raise AssertionError("unreachable")

    def _relearn_layout(self) -> None:
        try:
            self.redis.nodes_manager.initialize()
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException):  # the next call tries again
            pass

    # Models

    def create_model(self, name, flavor, incarnation, snapshot, access=Access(), expect=ANY, max_owned=None,
                     version=None):
        owner = access.owner or ""
        with self._owner_lock(owner):
            if not self._owned_one_more(name, owner, max_owned):
                return OVER_QUOTA
            self._add_to_index(self.key("models"), name)
            outcome, old = self._durable(
                self._create,
                keys=[self.model_key("model", name), self.incarnation_key("snapshot", name, incarnation, 0),
                      self.incarnation_key("snapshots", name, incarnation),
                      self.incarnation_key("versions", name, incarnation),
                      self.incarnation_key("version-numbers", name, incarnation)],
                args=[flavor, incarnation, time.time(), snapshot, *_access_fields(access),
                      "" if expect is None else expect, _json(version) if version is not None else ""],
            )
        if outcome.decode() != OK:
            return CONFLICT
        self._drop_model_data(name, old.decode() or None)
        return OK

    def delete_model(self, name, incarnation=None):
        deleted = self._durable(self._delete, keys=[self.model_key("model", name)], args=[incarnation or ""])
        if deleted is None and incarnation is not None:
            return False  # the name holds another incarnation now: its data stays
        self._drop_model_data(name, deleted.decode() if deleted else None)
        return deleted is not None

    def set_access(self, name, incarnation, access, max_owned=None):
        owner = access.owner or ""
        with self._owner_lock(owner):
            if not self._owned_one_more(name, owner, max_owned):
                return OVER_QUOTA
            outcome = self._durable(self._set_access, keys=[self.model_key("model", name)],
                                    args=[incarnation, *_access_fields(access)])
        return outcome.decode()

    def model_names(self):
        return [info.name for info in self.model_infos()]

    def model_infos(self):
        found = self._indexed(self.key("models"), lambda name, fields: True)
        return sorted((_model_info(name, fields) for name, fields in found), key=lambda info: info.name)

    def owned_count(self, owner):
        return self._owned_now(owner, tidy=False)

    def _owned_now(self, owner: str, tidy: bool) -> int:
        """The models ``owner`` owns, counted from the models (``tidy``: under the owner's lock, its index
        forgets the others at once)."""
        index = self.owner_key("owned", owner)
        owned = self._indexed(index, lambda name, fields: fields.get(b"owner", b"").decode() == owner,
                              grace=0.0 if tidy else INDEX_GRACE_SECONDS)
        return len(owned)

    def _indexed(self, index: str, belongs, grace: float = INDEX_GRACE_SECONDS) -> list[tuple[str, dict]]:
        """The (name, model hash) of the index's names whose model exists and ``belongs``; the others go
        from the index once their entry is older than ``grace`` seconds."""
        entries = self._call(self.redis.zrange, index, 0, -1, withscores=True)
        if not entries:
            return []
        pipe = self.redis.pipeline(transaction=False)  # one round trip per master
        for name, _ in entries:
            pipe.hgetall(self.model_key("model", name.decode()))
        found, stale = [], []
        now = time.time()
        for (name, since), fields in zip(entries, self._call(pipe.execute)):
            if fields and belongs(name.decode(), fields):
                found.append((name.decode(), fields))
            elif since < now - grace:
                stale.append(name)
        if stale:
            self._call(self._forget, keys=[index], args=[now - grace, *stale])
        return found

    def _owned_one_more(self, name: str, owner: str, max_owned: int | None) -> bool:
        """Under ``owner``'s lock: whether ``owner`` may own ``name`` too (within ``max_owned``, if given); then
        it is in their index before the model says so."""
        if not owner:
            return True
        if max_owned and self._owner_of(name) != owner and self._owned_now(owner, tidy=True) >= max_owned:
            return False
        self._add_to_index(self.owner_key("owned", owner), name)
        return True

    def _add_to_index(self, index: str, name: str) -> None:
        """Add ``name`` to ``index`` (on whichever master serves it), acknowledged as the model's own writes are."""
        self._durable(self._index, keys=[index], args=[time.time(), name])

    def _owner_of(self, name: str) -> str:
        owner = self._call(self.redis.hget, self.model_key("model", name), "owner")
        return owner.decode() if owner else ""

    @contextlib.contextmanager
    def _owner_lock(self, owner: str):
        """Hold ``owner``'s lock (nothing to hold for ''): the writes to their index, and their quota's count, are
        made by one call at a time (a count forgets names whose model is not theirs: never one being written)."""
        if not owner:
            yield
            return
        key, token = self.owner_key("owner-lock", owner), secrets.token_hex(16)
        deadline = time.monotonic() + OWNER_LOCK_SECONDS
        while not self._durable(self._take, keys=[key], args=[token, int(OWNER_LOCK_SECONDS * 1000)]):
            if time.monotonic() > deadline:
                raise StorageUnavailable("Another upload of this owner's is still being made; try again.")
            time.sleep(0.01)
        try:
            yield
        finally:
            self._call(self._release, keys=[key], args=[token])

    def flush(self):
        for node in self.redis.get_primaries():  # each master's keys, deleted there (one slot a key)
            client = self.redis.get_redis_connection(node)
            keys = self._call(client.scan_iter, match=f"{_glob_escape(self.prefix)}:*", count=1000)
            for start in range(0, len(keys), 500):
                pipe = client.pipeline(transaction=False)
                for key in keys[start:start + 500]:
                    pipe.delete(key)
                self._call(pipe.execute)
