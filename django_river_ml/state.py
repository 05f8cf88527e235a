"""Per-process model replicas kept in step with the store's log.

This is the one place where a model's state changes. A model's truth is its
newest snapshot plus the log entries after it. Each worker process keeps a
:class:`Replica` (model, metrics, last sequence applied) and, before it
answers, applies the entries it has not seen. Applying is deterministic
(prediction, then metrics, then ``learn_one``), so every replica that applies
the same log from the same snapshot reaches the same state, and no request
ever (de)serializes the whole model.

An entry the model raises on is marked rejected and the replica that tried it
is rebuilt from its snapshot without it: river may have changed one pipeline
step before a later one raised, and a half-applied learn must not survive.
"""

from __future__ import annotations

import itertools
import logging
import pickle
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from django_river_ml import heap, versions
from django_river_ml.describe import describe_metrics
from django_river_ml.exceptions import (ChallengerNotFound, InvalidInput, InvalidModel, ModelBusy, ModelFailed, ModelFull,
                                        ModelNotFound, ModelTooLarge, StorageUnavailable)
from django_river_ml.flavors import BoundModel, Flavor, get_flavor
from django_river_ml.growth import GrowthWatch
from django_river_ml.lifecycle import (Challenger, DriftWatch, EntryWatch, best_challenger, learn_challengers,
                                       prediction_error)
from django_river_ml.settings import river_settings
from django_river_ml.storage import ModelInfo, Store, get_store
from django_river_ml.storage.base import FULL, LogEntry
from django_river_ml.timelimit import CallLimitExceeded, ModelCrashed, run_limited

logger = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 1
# A worker catching up on another's entry gives it this many times CALL_TIME_LIMIT_SECONDS.
CATCH_UP_FACTOR = 3
# How far back (in entries) a snapshot remembers which rejected entries it skipped.
RETRACT_WINDOW = 100_000
SKIPPED_KEPT = 10_000
# Shipping (see ModelRegistry._worth_shipping): a batch of at least SHIP_MIN_ROWS examples is shipped
# when applying it should cost SHIP_FACTOR times writing and loading a snapshot (or before the replica
# has timed an example).
SHIP_FACTOR = 4
SHIP_MIN_ROWS = 16
# A replica waits for a shipped entry's snapshot this many times the appender's estimate, plus the margin.
SHIP_WAIT_FACTOR = 2
SHIP_WAIT_MARGIN_SECONDS = 0.05
SHIP_POLL_SECONDS = 0.002
# Weight of the newest measure in a replica's running estimate of the time one example takes.
ROW_TIME_ALPHA = 0.2
# A model in memory takes about this many times its size as stored (measured: ~100 KB Hoeffding trees
# 5.5-5.7x, linear pipelines 3-4x); REPLICA_MEMORY_BYTES is spent by this estimate (walking the objects
# to count them would cost more than loading the model), so it errs on the large side.
MEMORY_PER_STORED_BYTE = 6


def pickled(obj: Any) -> bytes:
    """Plain pickle (readable wherever river is installed); dill for what pickle cannot do."""
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError):
        import dill

        return dill.dumps(obj)


def dump_state(model: Any, metrics: list, growth: GrowthWatch | None = None, skipped: dict | None = None,
               labels: str | None = None, challengers: dict | None = None, drift: DriftWatch | None = None,
               tip: str | None = None) -> bytes:
    """Serialize a model with its metrics (snapshots are written by us, read by us)."""
    state = {"format": SNAPSHOT_FORMAT, "model": model, "metrics": metrics}
    if tip is not None:
        state["tip"] = tip
    if growth is not None:
        state["growth"] = growth.as_dict()
    if skipped is not None:
        state["skipped"] = skipped
    if labels is not None:
        state["labels"] = labels
    if challengers:
        state["challengers"] = challengers
    if drift is not None:
        state["drift"] = drift
    return pickled(state)


def load_state(data: bytes) -> dict:
    """A snapshot's ``model``, ``metrics`` and, when recorded, ``growth``, ``skipped``, ``labels``,
    ``challengers``, ``drift`` and ``tip``."""
    return pickle.loads(data)  # noqa: S301 - our own snapshot from the trusted store


def new_incarnation() -> str:
    return uuid.uuid4().hex


@dataclass
class Replica:
    """This process's copy of one model, valid up to ``seq``."""

    name: str
    incarnation: str
    flavor: Flavor
    model: Any
    metrics: list
    seq: int
    growth: GrowthWatch
    # Rejected entries this replica skipped, from ``skipped_from`` on (snapshots carry them): what a
    # retraction is checked against.
    skipped: set = field(default_factory=set)
    skipped_from: int = 0
    # The kind of label a classifier has learned ("boolean", "number" or "string"): the first fixes it.
    labels: str | None = None
    # Models learning beside this one (by name), and its drift detector (django_river_ml/lifecycle.py).
    challengers: dict[str, Challenger] = field(default_factory=dict)
    drift: DriftWatch | None = None
    # The token of entry ``seq`` in the log's chain (None: unknown, or a store without one): see LogEntry.link.
    tip: str | None = None
    stored_bytes: int = 0  # the size of its newest snapshot: what it costs in memory (see REPLICA_MEMORY_BYTES)
    # What this replica measured, to choose between replaying an entry and loading a snapshot.
    row_seconds: float | None = None  # applying one example (running estimate)
    load_seconds: float = 0.0  # loading a snapshot
    dump_seconds: float | None = None  # writing one
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def applied(self, seq: int) -> bool | None:
        """Whether this replica's state includes entry ``seq`` (None: too old to know)."""
        if seq > self.seq:
            return False
        if seq <= self.skipped_from:
            return None
        return seq not in self.skipped


@dataclass
class Outcome:
    """What applying one entry produced (for the request that appended it)."""

    prediction: Any = None
    error: BaseException | None = None
    incarnation: str = ""  # the upload of the model the entry went to
    drifts: list[int] = field(default_factory=list)  # examples of the entry after which a drift was found
    drift_policy: str = "none"  # what the model did about them
    snapshot: str | None = None  # the kind of the version its appender wrote right after it


class ModelRegistry:
    """The replicas of one process, bound to one store.

    It keeps the replicas it served last, up to REPLICA_MEMORY_BYTES (estimated from their size
    as stored); the least recently used beyond that are dropped, and loaded again from their
    newest snapshot when they are served again.
    """

    def __init__(self, store: Store):
        self.store = store
        self._replicas: OrderedDict[str, Replica] = OrderedDict()
        self._lock = threading.Lock()

    def _kept(self, name: str) -> Replica | None:
        """The replica kept for ``name``, now the most recently used."""
        with self._lock:
            replica = self._replicas.get(name)
            if replica is not None:
                self._replicas.move_to_end(name)
            return replica

    def replica_names(self) -> list[str]:
        """The models this process holds a replica of, least recently used first."""
        with self._lock:
            return list(self._replicas)

    # Reading ---------------------------------------------------------------

    def replica(self, name: str) -> Replica:
        """A replica brought up to the head of the log; call under ``replica.lock``."""
        info = self._info(name)
        replica = self._kept(name)
        if replica is None or replica.incarnation != info.incarnation:
            replica = self._load(info)
        with replica.lock:
            # Looked at again under the lock: another thread may have taken the replica past the first look.
            if lost_entries(replica, info) and lost_entries(replica, info := self._info(name)):
                logger.warning("The log of model %s no longer has entries its replica applied (a failover?): "
                               "reloading it", name)
                self._rebuild(replica)
            self._advance(replica, info.head)
        return replica

    def _info(self, name: str) -> ModelInfo:
        info = self.store.model_info(name)
        if info is None:
            self.forget(name)
            raise ModelNotFound(f"No model named {name!r}.")
        return info

    def _outdated(self, name: str, replica: Replica) -> bool:
        """Whether the model under ``name`` is no longer the upload ``replica`` is of (or is gone)."""
        info = self.store.model_info(name)
        return info is None or info.incarnation != replica.incarnation

    def forget(self, name: str) -> None:
        with self._lock:
            self._replicas.pop(name, None)

    # Writing ---------------------------------------------------------------

    def create(self, name: str, flavor: Flavor, model: Any, drift: DriftWatch | None = None,
               **options: Any) -> tuple[str, str]:
        """Store a new incarnation: (the store's outcome, the incarnation).

        ``drift``: its detector (default: DRIFT_DETECTOR and DRIFT_POLICY). ``options`` (access, expect,
        max_owned) go to ``Store.create_model``.
        """
        if drift is None:
            drift = DriftWatch.new(flavor.name, river_settings.DRIFT_DETECTOR, river_settings.DRIFT_POLICY)
        incarnation = new_incarnation()
        try:  # whether the model has probabilities is asked of the model itself
            metrics = run_limited(river_settings.CALL_TIME_LIMIT_SECONDS, flavor.make_metrics, model,
                                  memory_bytes=river_settings.CALL_MEMORY_LIMIT_BYTES)
        except (CallLimitExceeded, ModelCrashed) as error:
            raise InvalidModel(f"The model failed while its metrics were chosen: {error}.") from None
        limit = river_settings.MAX_MODEL_BYTES
        size = len(dump_state(model, metrics))
        if size > limit:
            raise ModelTooLarge(f"The model is {size} bytes as stored, more than MAX_MODEL_BYTES ({limit}) allows.")
        growth = GrowthWatch.first(size, 0, limit, river_settings.SNAPSHOT_EVERY)
        snapshot = dump_state(model, metrics, growth, drift=drift, tip="")  # the chain starts empty
        outcome = self.store.create_model(name, flavor.name, incarnation, snapshot,
                                          version=versions.record(0, versions.UPLOAD, describe_metrics(metrics)),
                                          **options)
        self.forget(name)
        return outcome, incarnation

    def append(self, name: str, make_entry: Callable[[Flavor], dict],
               incarnation: str | None = None, keys: Sequence[str] = ()) -> tuple[int, Outcome]:
        """Append an entry built for the model's flavor, then apply it here.

        The append is the commit point. The entry is applied before answering
        so that a model that raises on it is reported to this caller (and the
        entry rejected everywhere). With ``incarnation``, only that upload of the
        model takes the entry (the one whose access the caller checked). Its
        idempotency ``keys`` are recorded in the same step; :class:`KeysKnown` when an
        earlier learn recorded some of them (nothing is appended).
        """
        for _ in range(3):
            replica = self._kept(name)
            if replica is None or (incarnation is not None and replica.incarnation != incarnation):
                info = self.store.model_info(name)
                if info is None or (incarnation is not None and info.incarnation != incarnation):
                    raise ModelNotFound(f"No model named {name!r}.")
                replica = self._load(info)
            try:
                entry = make_entry(replica.flavor)
            except Exception:  # judged by a replica of an upload since replaced (another flavor, maybe)?
                if incarnation is None and self._outdated(name, replica):
                    self.forget(name)
                    continue
                raise
            if replica.growth.full and entry.get("op") not in CONTROLS:  # full stays full: refuse before the log
                raise model_full(replica)
            expected = self._worth_shipping(replica, entry)
            if expected is not None:
                entry["ship"] = expected
            # Holding the replica's lock from the append on, no other thread of this
            # process applies the entry first: its outcome is ours to report.
            with replica.lock:
                if keys:
                    seq = self.store.append_keyed(name, replica.incarnation, packed(entry), keys,
                                                  river_settings.IDEMPOTENCY_SECONDS,
                                                  river_settings.MAX_IDEMPOTENCY_KEYS)
                    if isinstance(seq, dict):  # an earlier learn recorded some of them: nothing was appended
                        raise KeysKnown(seq)
                else:
                    seq = self.store.append(name, replica.incarnation, packed(entry))
                if seq is None:  # deleted or replaced since this replica was made: look again
                    self.forget(name)
                    continue
                if seq <= replica.seq:  # the log went back (a failover lost entries this replica applied)
                    self._rebuild(replica, seq - 1)
                if entry.get("op") == "promote":  # the champion as it was just before: a version to go back to
                    self._advance(replica, seq - 1)
                    if replica.seq == seq - 1:
                        self._snapshot(replica, versions.BEFORE_PROMOTE)
                outcome = self._advance(replica, seq, watch=seq)
                outcome.incarnation = replica.incarnation
                if outcome.error is None and replica.seq == seq:
                    kind = snapshot_kind(entry, outcome)
                    if kind is None and ("ship" in entry or seq % river_settings.SNAPSHOT_EVERY == 0):
                        kind = versions.SNAPSHOT
                    if kind is not None and self._snapshot(replica, kind, **_version_details(entry)):
                        outcome.snapshot = kind
            if outcome.error is not None:
                error, row = outcome.error, None
                if isinstance(error, RowFailed):
                    error, row = error.error, error.row
                if isinstance(error, (ModelFull, InvalidInput, ChallengerNotFound)):  # InvalidInput: a label of another kind
                    raise error if row is None or error.row is not None else error.at_row(row)
                if isinstance(error, CallLimitExceeded):
                    self._retract(name, replica, seq)
                    failed = ModelFailed(f"The model stopped on this input: {error}; it was left unchanged.")
                else:
                    failed = ModelFailed(f"The model raised on this input ({type(error).__name__}: {error}); "
                                         "it was left unchanged.")
                raise failed if row is None else failed.at_row(row)
            return seq, outcome
        raise ModelNotFound(f"No model named {name!r}.")

    def take_version(self, name: str, incarnation: str | None = None) -> int:
        """Write the model as it is now (every acknowledged learn included) as a version; its sequence.

        A snapshot changes nothing, so no log entry is needed: any replica at the head writes the
        same state its appender would.
        """
        replica = self.replica(name)
        if incarnation is not None and replica.incarnation != incarnation:
            raise ModelNotFound(f"No model named {name!r}.")
        with replica.lock:
            self._write_version(replica, versions.MANUAL)
            return replica.seq

    def recorded_keys(self, name: str, incarnation: str, keys: Sequence[str]) -> dict[str, int]:
        """Which idempotency ``keys`` of that incarnation name a learn the model took: ``{key: its sequence}``.

        The entry of a key may not be applied yet (its appender is at it): this replica
        catches up first, so that an entry the model raises on is rejected everywhere, and
        its keys no longer count (that learn may be tried again).
        """
        known = self.store.known_keys(name, incarnation, keys) if keys else {}
        if not known:
            return {}
        if self.replica(name).incarnation != incarnation:
            raise ModelNotFound(f"No model named {name!r}.")
        known = self.store.known_keys(name, incarnation, list(known))
        if known:  # acknowledged again: their entries as safe as the first time (on a replica: Store.confirm)
            self.store.confirm(name)
        return known

    # Internals -------------------------------------------------------------

    @staticmethod
    def _worth_shipping(replica: Replica, entry: dict) -> float | None:
        """Seconds this entry should take to apply, if that is worth a snapshot right after it (else None).

        Every replica applies every entry it serves, so on one host N workers would spend N
        times the learning CPU on a batch. A shipped entry is applied once: its appender writes
        a snapshot right after it, and the other replicas load that snapshot instead of replaying
        the entry (waiting for it while the appender is still applying). Worth it when the entry
        costs several times a snapshot's dump + load: batches of small models, not single learns.
        """
        rows = entry_rows(entry)
        if rows < SHIP_MIN_ROWS:  # single calls stay one store write
            return None
        if replica.row_seconds is None:
            return 0.0
        expected = rows * replica.row_seconds
        snapshot = (replica.dump_seconds if replica.dump_seconds is not None else 2 * replica.load_seconds)
        return expected if expected > SHIP_FACTOR * (snapshot + replica.load_seconds) else None

    def _load_shipped(self, replica: Replica, seq: int, expected: float, watch: int | None) -> bool:
        """Catch up past shipped entry ``seq`` from its snapshot, once its appender wrote it; False: replay it.

        With ``watch`` (this replica's own entry, still to apply), only a snapshot from before it will do.
        """
        at_most = None if watch is None else watch - 1
        deadline = time.monotonic() + SHIP_WAIT_FACTOR * expected + SHIP_WAIT_MARGIN_SECONDS
        while True:
            found = self.store.snapshot_seq(replica.name, replica.incarnation, at_most)
            if found is not None and found >= seq:
                self._rebuild(replica, at_most)
                return replica.seq >= seq
            if time.monotonic() > deadline:  # its appender is slow, or gone: replay it here
                return False
            time.sleep(SHIP_POLL_SECONDS)

    def _retract(self, name: str, replica: Replica, seq: int) -> None:
        """Tell every replica that entry ``seq`` is rejected: one that applied it meanwhile rolls back.

        Time and memory limits are the verdicts that are not the same everywhere, so
        only the worker that appended an entry may reject it for going over them;
        another worker may have finished it first, and this log entry makes it undo that.
        """
        try:
            self.store.append(name, replica.incarnation, pickle.dumps({"op": "retract", "seq": seq}))
        except Exception:  # the entry is rejected already; a replica that applied it rebuilds at its next snapshot
            logger.exception("Could not log the retraction of entry %s of model %s", seq, name)

    def _load(self, info: ModelInfo) -> Replica:
        replica = Replica(info.name, info.incarnation, get_flavor(info.flavor), None, [], -1, None)
        self._rebuild(replica)
        seq = replica.seq
        with self._lock:
            current = self._replicas.get(info.name)
            if current is not None and current.incarnation == info.incarnation and current.seq >= seq:
                return current
            self._replicas[info.name] = replica
            self._replicas.move_to_end(info.name)
            self._evict(keep=info.name)
        heap.settle()  # the model's objects stay out of the garbage collector's full passes
        return replica

    def _evict(self, keep: str) -> None:
        """Drop the least recently used replicas beyond REPLICA_MEMORY_BYTES (call under ``_lock``).

        A request still holding a dropped replica finishes with it; the next one loads a new one.
        """
        budget = river_settings.REPLICA_MEMORY_BYTES
        if not budget:
            return
        held = sum(replica.stored_bytes for replica in self._replicas.values()) * MEMORY_PER_STORED_BYTE
        for name in list(self._replicas):
            if held <= budget:
                break
            if name != keep:
                held -= self._replicas.pop(name).stored_bytes * MEMORY_PER_STORED_BYTE

    def _rebuild(self, replica: Replica, at_most: int | None = None) -> None:
        """Reload ``replica`` in place from its newest snapshot (``at_most``: from before that entry, if
        one is left); the caller replays the entries after it."""
        started = time.perf_counter()
        snapshot = self.store.latest_snapshot(replica.name, replica.incarnation, at_most)
        if snapshot is None and at_most is not None:
            snapshot = self.store.latest_snapshot(replica.name, replica.incarnation)
        if snapshot is None:
            raise ModelNotFound(f"No model named {replica.name!r}.")
        seq, data = snapshot
        state = load_state(data)
        replica.load_seconds = time.perf_counter() - started
        replica.stored_bytes = len(data)
        skipped = state.get("skipped") or {"seqs": [], "from": seq}
        replica.seq, replica.model, replica.metrics = seq, state["model"], state["metrics"]
        replica.growth = GrowthWatch.from_dict(state.get("growth"), seq)
        replica.skipped, replica.skipped_from = set(skipped["seqs"]), skipped["from"]
        replica.labels = state.get("labels")
        replica.challengers = state.get("challengers") or {}
        replica.drift = state["drift"] if "drift" in state else default_drift(replica.flavor.name)
        replica.tip = state.get("tip")

    def _advance(self, replica: Replica, upto: int, watch: int | None = None) -> Outcome:
        """Apply entries (replica.seq, upto]; report the outcome of entry ``watch``.

        Every replica applies an entry as the log gives it back, the appender too: the request's own
        objects may share values (the same string in every example), and a model that keeps them would
        pickle smaller in one replica than in the others, which must measure the same size (growth.py).
        """
        outcome, relinked = Outcome(), False
        while replica.seq < upto:
            entries = self.store.entries(replica.name, replica.incarnation, replica.seq, upto)
            if not entries or entries[0].seq != replica.seq + 1:
                # The log before the newest snapshots was trimmed: start from a snapshot.
                self._rebuild(replica, None if watch is None else watch - 1)
                entries = self.store.entries(replica.name, replica.incarnation, replica.seq, upto)
                if watch is not None and replica.seq < upto and (not entries or entries[0].seq != replica.seq + 1):
                    # That snapshot is an older one kept as a version: newer ones, past our own entry, were
                    # written meanwhile and the log up to them is trimmed. Go on from the newest (another
                    # worker applied our entry: see the end).
                    self._rebuild(replica)
                    entries = self.store.entries(replica.name, replica.incarnation, replica.seq, upto)
            if entries and entries[0].seq == replica.seq + 1 and not links(replica, entries[0]):
                if relinked:  # a snapshot the log does not go on from: the store is inconsistent
                    raise StorageUnavailable(f"The log of model {replica.name!r} does not go on from its snapshot.")
                logger.warning("The log of model %s lost entries its replica applied (a failover?): reloading it",
                               replica.name)
                self._rebuild(replica, None if watch is None else watch - 1)
                relinked = True
                continue
            if replica.seq < upto and (not entries or entries[0].seq != replica.seq + 1
                                       or entries[-1].seq != upto or len(entries) != upto - replica.seq):
                raise ModelNotFound(f"The log of model {replica.name!r} is incomplete.")
            tokens = {entry.seq: entry.token for entry in entries}
            try:
                for entry in entries:
                    if entry.rejected:
                        if entry.rejected == FULL:  # the learn that took the model past MAX_MODEL_BYTES
                            replica.growth = replica.growth.filled(entry.seq)
                        replica.seq = entry.seq
                        replica.skipped.add(entry.seq)
                        continue
                    data = pickle.loads(entry.data)  # noqa: S301 - our log
                    if ("ship" in data and entry.seq != watch
                            and self._load_shipped(replica, entry.seq, data["ship"], watch)):
                        break  # caught up from the snapshot written after it: read on from there
                    if data.get("op") == "retract":
                        if self._undo_if_applied(replica, data["seq"]):
                            break  # rebuilt from a snapshot without the retracted entry: read on from there
                        replica.seq = entry.seq
                        continue
                    if replica.growth.full and entry.seq > replica.growth.seq and data.get("op") not in NOT_LEARNS:
                        # A learn after the one that filled the model: every replica rejects it alike.
                        self.store.reject(replica.name, replica.incarnation, entry.seq, FULL)
                        replica.seq = entry.seq
                        replica.skipped.add(entry.seq)
                        if entry.seq == watch:
                            outcome.error = model_full(replica)
                        continue
                    try:
                        # Only the worker that appended an entry may reject it for running long (see
                        # _retract); catching up on others' entries gets more time, and never rejects.
                        factor = 1 if entry.seq == watch else CATCH_UP_FACTOR
                        rows = entry_rows(data)
                        started = time.perf_counter()
                        watched = EntryWatch()
                        prediction = run_limited(batch_limit(rows) * factor, self._apply, replica, data, watched,
                                                 memory_bytes=river_settings.CALL_MEMORY_LIMIT_BYTES * factor)
                        row_seconds = (time.perf_counter() - started) / rows
                        replica.row_seconds = row_seconds if replica.row_seconds is None else (
                            ROW_TIME_ALPHA * row_seconds + (1 - ROW_TIME_ALPHA) * replica.row_seconds)
                    except Exception as error:  # the model raised or ran over a limit: reject, rebuild here
                        # Half-applied until rebuilt: if the store fails before that, the next advance
                        # finds no entry after -1 and starts from a snapshot.
                        replica.seq = -1
                        if isinstance(error, CallLimitExceeded) and entry.seq != watch:
                            self._rebuild(replica)
                            if watch is not None:  # our own entry, not reached: ours to judge, and not applied
                                self.store.reject(replica.name, replica.incarnation, watch)
                            raise ModelBusy(
                                f"Model {replica.name!r} is catching up with an entry that went over its limits "
                                f"here ({error}); try again shortly."
                            ) from None
                        logger.info("Model %s rejected entry %s: %r", replica.name, entry.seq, error)
                        self.store.reject(replica.name, replica.incarnation, entry.seq)
                        if entry.seq == watch:
                            outcome.error = error
                        self._rebuild(replica)
                        break
                    replica.seq = entry.seq
                    if watched.drifts:
                        replica.drift.last_at = entry.seq
                    if entry.seq == watch:
                        outcome.prediction = prediction
                        outcome.drifts, outcome.drift_policy = watched.drifts, replica.drift.policy if watched.drifts else "none"
                    if data.get("op") not in PREDICTIONS and replica.growth.due(entry.seq) and self._measure(replica):
                        # Every replica measures here and finds the same size: all reject this learn.
                        if entry.seq == watch:
                            outcome.error, outcome.prediction = model_full(replica), None
                        self.store.reject(replica.name, replica.incarnation, entry.seq, FULL)
                        replica.seq = -1
                        self._rebuild(replica)
                        break
            finally:  # where it stopped, if that entry was read here (not a snapshot's); also when it raised
                if replica.seq in tokens:
                    replica.tip = tokens[replica.seq]
        if watch is not None and outcome.error is None and replica.applied(watch) is False:
            # Another worker judged this replica's own entry first (caught up from a snapshot past it).
            outcome.error = model_full(replica) if replica.growth.full else RejectedElsewhere(
                "another worker found that the model raises on it")
        if len(replica.skipped) > 2 * SKIPPED_KEPT:
            replica.skipped_from = max(replica.skipped_from, replica.seq - RETRACT_WINDOW)
            replica.skipped = {seq for seq in replica.skipped if seq > replica.skipped_from}
        return outcome

    def _undo_if_applied(self, replica: Replica, seq: int) -> bool:
        """A retraction of entry ``seq``: rebuild without it if this replica had applied it."""
        applied = replica.applied(seq)
        if applied is None:
            logger.error("Model %s: entry %s was retracted after this replica's snapshot forgot whether it "
                         "applied it; it is kept here.", replica.name, seq)
        if not applied:
            return False
        replica.seq = -1
        self._rebuild(replica)
        if replica.applied(seq):  # the newest snapshot holds it (written in the moment before the retraction)
            logger.error("Model %s: the newest snapshot holds retracted entry %s; it is kept.", replica.name, seq)
            return False
        return True

    @staticmethod
    def _measure(replica: Replica) -> bool:
        """Measure the model as a snapshot would store it (see :mod:`django_river_ml.growth`); True if over."""
        try:  # the challengers learn with the model: they count in its size
            size = len(run_limited(None, dump_state, replica.model, replica.metrics, None, None, None,
                                   replica.challengers))
        except Exception:  # a model that cannot be pickled fails alike everywhere: measure it later
            logger.exception("Could not measure model %s at %s", replica.name, replica.seq)
            size = replica.growth.size
        replica.growth = replica.growth.measured(size, replica.seq, river_settings.MAX_MODEL_BYTES,
                                                 river_settings.SNAPSHOT_EVERY)
        return replica.growth.full

    @staticmethod
    def _apply(replica: Replica, entry: dict, watched: EntryWatch) -> Any:
        """Score the model's prediction (made now unless the entry carries one), then learn.

        A ``predict`` entry only predicts: it is logged for flavors whose models
        change when they predict, so every replica changes alike. A batch (``learn_many``,
        ``predict_many``) does the same for each of its examples; one that raises is a
        :class:`RowFailed` (the whole entry is rejected). Each learned example also goes to the
        model's challengers and drift detector (``watched`` gets the drifts); the lifecycle's own
        entries (:data:`CONTROLS`) change which model serves.
        """
        op = entry.get("op")
        if op in CONTROLS:
            return _control(replica, entry)
        model = replica.flavor.bind(replica.model, replica.metrics, replica.labels)
        if op == "predict_many":
            return each_row(lambda features: model.predict(dict(features)), examples_of(entry, "xs"))
        if op == "predict":
            return model.predict(dict(entry["x"]))
        learn = _learner(replica, model, watched)
        if op == "learn_many":
            result = each_row(learn, examples_of(entry, "rows"))
        else:
            result = learn(entry)
        replica.labels = model.labels  # an entry that raised is undone by a rebuild, labels included
        if watched.drifts:
            _after_drift(replica)
        return result

    @staticmethod
    def _skipped_record(replica: Replica) -> dict:
        """The rejected entries a snapshot skipped, for the last RETRACT_WINDOW entries."""
        floor = max(replica.skipped_from, replica.seq - RETRACT_WINDOW)
        return {"seqs": sorted(seq for seq in replica.skipped if seq > floor), "from": floor}

    def _write_version(self, replica: Replica, kind: str, *, timed: bool = False, **details: Any) -> None:
        """Write the replica's state as a snapshot, a version of ``kind`` (under its lock); raises if it fails.

        ``timed``: keep the dump's duration as ``dump_seconds`` (what shipping weighs); take_version leaves it be.
        """
        started = time.perf_counter()
        data = run_limited(None, dump_state, replica.model, replica.metrics, replica.growth,
                           self._skipped_record(replica), replica.labels, replica.challengers, replica.drift,
                           replica.tip)
        if timed:
            replica.dump_seconds = time.perf_counter() - started
        record = versions.record(replica.seq, kind, describe_metrics(replica.metrics), **details)
        self.store.save_snapshot(replica.name, replica.incarnation, replica.seq, data,
                                 keep=river_settings.SNAPSHOTS_KEPT, version=record, tip=replica.tip)

    def _snapshot(self, replica: Replica, kind: str = versions.SNAPSHOT, **details: Any) -> bool:
        """:meth:`_write_version` for the appender, whose learn is acknowledged anyway. False: it failed."""
        try:
            self._write_version(replica, kind, timed=True, **details)
        except Exception:  # a missed snapshot only lengthens the next replay
            logger.exception("Could not snapshot model %s at %s", replica.name, replica.seq)
            return False
        return True


#: Entries that only predict (logged for flavors whose models change when they predict).
PREDICTIONS = frozenset({"predict", "predict_many"})
#: What a ``challenge`` entry gives back when the model had MAX_CHALLENGERS challengers (see :func:`_control`).
CHALLENGERS_FULL = "challengers-full"
#: The lifecycle's entries (see :func:`_control`): they change which model serves, learning nothing.
CONTROLS = frozenset({"restore", "challenge", "withdraw", "promote"})
#: Entries a full model still takes.
NOT_LEARNS = PREDICTIONS | CONTROLS


def _control(replica: Replica, entry: dict) -> None:
    """Apply a lifecycle entry: the same change in every replica.

    - ``restore``: the model of a version (``state``: its snapshot), with its metrics, serves from here on (a
      rollback); the challengers learning now go on learning beside it.
    - ``challenge``: challenger ``name`` (``state``: a pickled :class:`Challenger`) joins, or is replaced.
    - ``withdraw``: challenger ``name`` leaves.
    - ``promote``: challenger ``challenger`` serves in the champion's place, with what it has learned.
    """
    op = entry["op"]
    if op == "restore":
        state = load_state(entry["state"])
        replica.model, replica.metrics, replica.labels = state["model"], state["metrics"], state.get("labels")
        if replica.drift is not None:
            replica.drift = replica.drift.restarted()
        size = GrowthWatch.from_dict(state.get("growth"), replica.seq)
        replica.growth = GrowthWatch(size=size.size, seq=replica.seq, next=replica.seq + 1, full=size.full)
    elif op == "challenge":
        most = entry.get("most")  # MAX_CHALLENGERS when it was appended: two workers adding at once are held to it
        if most is not None and entry["name"] not in replica.challengers and len(replica.challengers) >= most:
            return CHALLENGERS_FULL  # the appender refuses it; the entry changes nothing anywhere
        replica.challengers = {**replica.challengers, entry["name"]: pickle.loads(entry["state"])}  # noqa: S301 - ours
    elif op == "withdraw":
        replica.challengers = {k: v for k, v in replica.challengers.items() if k != entry["name"]}
    elif op == "promote":
        if entry["challenger"] not in replica.challengers:
            raise ChallengerNotFound(f"Model {replica.name!r} has no challenger named {entry['challenger']!r}.")
        _promote(replica, entry["challenger"])


def _promote(replica: Replica, name: str) -> None:
    challengers = dict(replica.challengers)
    winner = challengers.pop(name)
    replica.model, replica.metrics, replica.labels = winner.model, winner.metrics, winner.labels
    replica.challengers = challengers
    if replica.drift is not None:
        replica.drift = replica.drift.restarted()


def _learner(replica: Replica, model: BoundModel, watched: EntryWatch) -> Callable[[dict], Any]:
    """How this entry learns one example: the model, then its drift detector and its challengers."""
    drift, challengers, flavor = replica.drift, replica.challengers, replica.flavor
    watching = drift is not None and drift.detector is not None
    if not watching and not challengers:
        return lambda example: _learn(model, example)
    examples = itertools.count()

    def learn(example: dict) -> Any:
        index = next(examples)
        prediction = _learn(model, example)
        target = example.get("y")
        if watching:
            error = prediction_error(drift.numeric, target, prediction)
            if error is not None and drift.update(error):
                watched.drifts.append(index)
        if challengers:
            learn_challengers(flavor, challengers, example["x"], target)
        return prediction

    return learn


def _after_drift(replica: Replica) -> None:
    """The model's drift policy, once the entry that found a drift is learned."""
    policy = replica.drift.policy
    if policy == "reset":
        replica.model = replica.model.clone()
        replica.drift = replica.drift.restarted()
    elif policy == "promote":
        best = best_challenger(replica.challengers)
        if best is not None:
            _promote(replica, best)


def links(replica: Replica, entry: LogEntry) -> bool:
    """Whether ``entry`` (the one after ``replica.seq``) goes on from the entry the replica applied last
    (True when either side does not know: a store without a chain, a snapshot from before it)."""
    return replica.tip is None or entry.link is None or entry.link == replica.tip


def lost_entries(replica: Replica, info: ModelInfo) -> bool:
    """Whether the store's log no longer has entries ``replica`` applied: it ends before them, or its
    newest entry, at the replica's place, is another one (a failover lost the rest; new entries took it)."""
    if info.incarnation != replica.incarnation or replica.seq < 0:
        return False
    if info.head < replica.seq:
        return True
    return (info.head == replica.seq and info.tip is not None and replica.tip is not None
            and info.tip != replica.tip)


def snapshot_kind(entry: dict, outcome: Outcome) -> str | None:
    """Why the appender writes a version right after this entry (None: no reason beyond the routine)."""
    kind = {"restore": versions.ROLLBACK, "promote": versions.PROMOTE}.get(entry.get("op"))
    if kind is not None:
        return kind
    if outcome.drifts and outcome.drift_policy != "none":
        return versions.DRIFT
    return None


def _version_details(entry: dict) -> dict:
    """What a version's record says of the entry it follows (the version rolled back to, the challenger)."""
    return {key: entry[key] for key in ("from_version", "challenger") if key in entry}


def default_drift(flavor: str) -> DriftWatch | None:
    """The drift watch of a snapshot from before drift detection (the settings' detector, alike everywhere)."""
    try:
        return DriftWatch.new(flavor, river_settings.DRIFT_DETECTOR, river_settings.DRIFT_POLICY)
    except InvalidInput:
        return None



class KeysKnown(Exception):
    """Idempotency keys an earlier learn recorded (``known``: key to its entry's sequence): nothing was appended."""

    def __init__(self, known: dict[str, int]):
        super().__init__(f"{len(known)} idempotency keys are recorded already")
        self.known = known


class RejectedElsewhere(Exception):
    """An entry another replica applied first, and rejected."""


class RowFailed(Exception):
    """Example ``row`` of a batch entry raised ``error``: the whole entry is rejected."""

    def __init__(self, row: int, error: Exception):
        super().__init__(f"example {row}: {error!r}")
        self.row, self.error = row, error



def _learn(model: BoundModel, entry: dict) -> Any:
    """One learn entry (or example of a batch): the prediction is scored, then the model learns."""
    features, target = entry["x"], entry.get("y")
    model.check_label(target)
    if "p" in entry:
        prediction = entry["p"]
    elif model.scores and target is not None:
        prediction = model.predict(dict(features))
    else:
        prediction = None
    model.score(target, prediction)
    model.learn(dict(features), target)
    return prediction


def each_row(function: Callable[[Any], Any], rows: list) -> list:
    """``function`` on every example of a batch; one that raises fails the whole entry as a RowFailed."""
    results, row = [], 0
    try:
        for row, item in enumerate(rows):
            results.append(function(item))
    except CallLimitExceeded:  # the whole entry's limit: not this example's doing
        raise
    except Exception as error:
        raise RowFailed(row, error) from error
    return results

#: A batch gets CALL_TIME_LIMIT_SECONDS (and each worker's catching-up margin) per this many examples.
EXAMPLES_PER_TIME_LIMIT = 1000


def entry_rows(entry: dict) -> int:
    """How many examples a log entry applies (a batch's, else one)."""
    if "n" in entry:
        return entry["n"]
    return max(len(entry.get("rows") or entry.get("xs") or ()), 1)


#: The keys of a batch entry's examples (learn_many: rows, predict_many: xs).
EXAMPLES = ("rows", "xs")


def packed(entry: dict) -> bytes:
    """An entry as the log keeps it: a batch's examples pickled apart, so that a replica that loads
    the snapshot after a shipped batch reads its header without unpickling 1,000 examples."""
    for key in EXAMPLES:
        if key in entry:
            entry = {**{k: v for k, v in entry.items() if k != key}, "n": len(entry[key]),
                     f"packed_{key}": pickle.dumps(entry[key], protocol=pickle.HIGHEST_PROTOCOL)}
    return pickle.dumps(entry, protocol=pickle.HIGHEST_PROTOCOL)


def examples_of(entry: dict, key: str) -> list:
    """A batch entry's examples (``key``: rows or xs), as appended or as :func:`packed` keeps them."""
    if key in entry:
        return entry[key]
    return pickle.loads(entry[f"packed_{key}"])  # noqa: S301 - our log


def batch_limit(examples: int) -> float:
    """Seconds an entry of ``examples`` examples (0 or 1 for a single call) may run: 0 for no limit."""
    return river_settings.CALL_TIME_LIMIT_SECONDS * (1 + max(examples - 1, 0) // EXAMPLES_PER_TIME_LIMIT)


def model_full(replica: Replica) -> ModelFull:
    return ModelFull(
        f"Model {replica.name!r} has reached MAX_MODEL_BYTES ({river_settings.MAX_MODEL_BYTES} bytes; "
        f"{replica.growth.size} as stored): it still predicts, but learns no more. Upload it again, or a smaller "
        "model, or raise the limit."
    )


_registry: ModelRegistry | None = None
_registry_lock = threading.Lock()


def get_registry() -> ModelRegistry:
    """The registry of this process for the current store."""
    global _registry
    store = get_store()
    registry = _registry
    if registry is None or registry.store is not store:
        with _registry_lock:
            if _registry is None or _registry.store is not store:
                _registry = ModelRegistry(store)
            registry = _registry
    return registry
