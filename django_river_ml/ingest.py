"""Learning from a Redis stream, exactly once per entry: what ``manage.py river_ingest`` runs.

One stream entry is one example, with the fields ``model``, ``features`` (a JSON object),
``ground_truth`` (JSON; optional) and ``identifier`` (optional: a pending prediction's).
Ingesters read the stream through a consumer group (``XREADGROUP``), which splits it between
them; each learns what it read through :class:`~django_river_ml.client.DjangoClient` and then
acknowledges it (``XACK``). The effect is exactly once per entry:

- **Not twice.** Every entry is learned with the idempotency key ``<stream>:<entry id>``, which the
  store records with the learn itself. An entry learned but not acknowledged (the ingester was
  killed in between) comes back, and the model answers it as a duplicate: nothing is learned.
- **Not lost.** An entry read but not acknowledged stays pending in the group: an ingester reads its
  own pending entries again when it starts, and takes over other consumers' that have been pending
  for ``claim_idle_ms`` (``XAUTOCLAIM``), from a consumer that died or hangs.
- **Batches.** Consecutive entries of one model are learned as one batch (``learn_many``), each
  with its own key, so a retry may cut the batches differently and still learns each entry once.
- **Bad entries do not block the stream.** An entry that cannot be learned (no such model,
  malformed JSON, a value the model refuses or raises on) is acknowledged and copied to the
  dead-letter stream (``<stream>:dead`` by default: :func:`dead_letter_stream`) with the ``error``, in
  one transaction with its ``XACK``. A model that raises on one example of a batch refuses the batch as a whole (nothing
  is learned): that example goes to the dead letters and the others are learned without it.
- **Store outages wait.** When the model store is unreachable or busy (503), the batch is tried
  again with a growing pause; nothing is acknowledged until it is learned.

A :class:`Stop` (set by SIGTERM or SIGINT in the command) ends the loop after the batch at hand.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

import redis

from django_river_ml.client import DjangoClient
from django_river_ml.exceptions import Conflict, InvalidInput, RiverMLError
from django_river_ml.validation import MAX_IDEMPOTENCY_KEY_LENGTH, validate_idempotency_key

logger = logging.getLogger(__name__)

#: The fields of a stream entry: the model's name and the example (features and ground_truth as JSON).
FIELDS = ("model", "features", "ground_truth", "identifier")
#: Pauses between tries while the model store is unavailable, and while Redis is.
RETRY_SECONDS = (0.2, 0.5, 1.0, 2.0, 5.0)
#: The longest an entry id is (two 64-bit numbers and a dash), and so the longest a stream's name may be.
MAX_ENTRY_ID_LENGTH = 41
MAX_STREAM_NAME_LENGTH = MAX_IDEMPOTENCY_KEY_LENGTH - MAX_ENTRY_ID_LENGTH - 1


class BadEntry(Exception):
    """A stream entry that is not an example (a missing model, malformed JSON)."""


class Stopped(Exception):
    """The ingester was told to stop while it waited for the store: the batch at hand is left pending."""


@dataclass
class Counts:
    """What an ingester did: entries learned, answered as duplicates (learned before), and failed."""

    learned: int = 0
    duplicates: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)

    def __str__(self) -> str:
        rate = (self.learned + self.duplicates) / max(time.monotonic() - self.started, 1e-9)
        return (f"learned {self.learned}, duplicates {self.duplicates}, failed {self.failed} "
                f"({rate:.1f} entries/s)")


def idempotency_key(stream: str, entry_id: str) -> str:
    """The key an entry is learned with: its stream's name and its id (ids repeat across streams)."""
    return f"{stream}:{entry_id}"


def check_stream_name(stream: str) -> None:
    """InvalidInput unless every entry id of ``stream`` makes a valid idempotency key."""
    try:
        validate_idempotency_key(idempotency_key(stream, "9" * MAX_ENTRY_ID_LENGTH))
    except InvalidInput:
        raise InvalidInput(f"The stream's name {stream!r} must be 1 to {MAX_STREAM_NAME_LENGTH} visible ASCII "
                           "characters (no spaces): it is part of each entry's idempotency key.") from None


def dead_letter_stream(redis_client: redis.Redis, stream: str, dead_letter: str | None) -> str:
    """The dead-letter stream: ``dead_letter``, by default ``<stream>:dead``.

    Its entries are added in one transaction with the acknowledgement, so on a Redis Cluster it must
    hash to the stream's slot: the default is then ``{<stream>}:dead`` (the stream's name as hash tag,
    unless the name has one of its own), and another one is refused unless it does.
    """
    if not isinstance(redis_client, redis.RedisCluster):
        return f"{stream}:dead" if dead_letter is None else dead_letter
    if dead_letter is None:
        dead_letter = f"{stream}:dead" if "{" in stream else f"{{{stream}}}:dead"
    if dead_letter and redis_client.keyslot(dead_letter) != redis_client.keyslot(stream):
        raise InvalidInput(f"On a Redis Cluster the dead-letter stream must be in the slot of {stream!r}: give both "
                           f"one hash tag ({{learn}} and {{learn}}:dead), or leave out --dead-letter; {dead_letter!r} "
                           "is in another.")
    return dead_letter


def example_of(stream: str, entry_id: str, fields: dict[bytes, bytes]) -> tuple[str, dict]:
    """(model name, example for ``learn_many``) of a stream entry; BadEntry says what is wrong with it."""
    text = {}
    for name, value in fields.items():
        try:
            text[name.decode()] = value.decode()
        except UnicodeDecodeError:
            raise BadEntry(f"field {name!r} is not UTF-8 text.") from None
    if not text.get("model"):
        raise BadEntry("the entry has no model field.")
    unknown = sorted(set(text) - set(FIELDS))
    if unknown:
        raise BadEntry(f"unknown field {unknown[0]!r} (an entry has {', '.join(FIELDS)}).")
    example = {"idempotency_key": idempotency_key(stream, entry_id)}
    for name in ("features", "ground_truth"):
        if name in text:
            try:
                example[name] = json.loads(text[name], parse_constant=_refuse_constant)
            except (ValueError, RecursionError) as error:
                raise BadEntry(f"{name} is not JSON: {error}") from None
    if "identifier" in text:
        example["identifier"] = text["identifier"]
    return text["model"], example


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


@dataclass
class Read:
    """One entry as read, and what became of it (``error``: why it goes to the dead letters)."""

    entry_id: str
    fields: dict[bytes, bytes]
    model: str = ""
    example: dict | None = None
    learned: bool = False
    error: str | None = None


# Failures of the stream's Redis that pass: it is down, slow, or a cluster failing over (its slots
# moving, no node answering yet). The ingester waits them out.
PASSING_FAILURES = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ClusterError,
                    redis.exceptions.TryAgainError, redis.exceptions.AskError, redis.exceptions.RedisClusterException)


class Ingester:
    """Reads ``stream`` as ``consumer`` of ``group`` and learns what it reads (see the module's words).

    ``redis_client`` is the stream's Redis (its socket timeout must exceed ``block_ms``),
    ``client`` the DjangoClient that learns (full access by default: whoever may write the
    stream decides what the models learn), on a store that records idempotency keys.
    ``report`` gets a progress line every ``report_seconds`` and at the end.
    """

    def __init__(self, redis_client: redis.Redis, stream: str, group: str, consumer: str, *, batch: int = 500,
                 block_ms: int = 1000, claim_idle_ms: int = 60_000, dead_letter: str | None = None,
                 client: DjangoClient | None = None, report: Callable[[str], None] = logger.info,
                 report_seconds: float = 10.0):
        check_stream_name(stream)
        self.redis, self.stream, self.group, self.consumer = redis_client, stream, group, consumer
        self.batch, self.block_ms, self.claim_idle_ms = batch, block_ms, claim_idle_ms
        self.dead_letter = dead_letter_stream(redis_client, stream, dead_letter)
        self.client = client or DjangoClient()
        # NotSupported now, not for every entry, if the store records no keys ("-" is no model's name).
        self.client.store.known_keys("-", "-", [])
        self.report, self.report_seconds = report, report_seconds
        self.counts = Counts()
        self.stop = threading.Event()
        self._claim_cursor, self._next_claim, self._next_report = "0-0", 0.0, 0.0
        self._own_pending = True  # this consumer may have pending entries to read again

    # The loop -------------------------------------------------------------------------------

    def run(self) -> Counts:
        """Learn until :attr:`stop` is set: this consumer's pending entries first, then new ones and
        others' stale ones. Redis failures are waited out."""
        self._next_report = time.monotonic() + self.report_seconds
        failures = 0
        while not self.stop.is_set():
            try:
                if self._own_pending:
                    self._create_group()
                    self._own_pending = self.step(self._read("0")) > 0
                else:
                    self.step(self._claimed())
                    self.step(self._read(">"))
                failures = 0
            except Stopped:
                break
            except PASSING_FAILURES as error:
                delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)]
                failures += 1
                logger.warning("Redis failed (%s); trying again in %s s.", error, delay)
                self._own_pending = True  # what was read may not be acknowledged
                self.stop.wait(delay)
            except redis.ResponseError as error:
                if "NOGROUP" not in str(error):
                    raise
                logger.warning("The consumer group %s of %s is gone: making it again.", self.group, self.stream)
                self._own_pending = True
            self._progress()
        self.report(f"river_ingest {self.stream} ({self.consumer}) stopped: {self.counts}")
        return self.counts

    def step(self, entries: list[tuple[Any, dict | None]]) -> int:
        """Learn entries just read, acknowledge them (the failed ones moved to the dead letters): how many."""
        reads = [Read(_text(entry_id), fields or {}) for entry_id, fields in entries]
        try:
            self._learn(reads)
        finally:
            self._acknowledge([read for read in reads if read.learned or read.error is not None])
        return len(reads)

    def _create_group(self) -> None:
        """The consumer group, made at the start of the stream (and the stream, if there is none yet)."""
        try:
            self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def _read(self, start: str) -> list:
        """``XREADGROUP``: new entries (``>``, waiting up to block_ms), or this consumer's pending ones (``0``)."""
        answer = self.redis.xreadgroup(self.group, self.consumer, {self.stream: start}, count=self.batch,
                                       block=self.block_ms if start == ">" else None)
        return answer[0][1] if answer else []

    def _claimed(self) -> list:
        """Entries other consumers read claim_idle_ms ago or more and never acknowledged, now this one's.

        The pending list is walked a page at a time; once through, it is walked again after claim_idle_ms.
        """
        now = time.monotonic()
        if now < self._next_claim:
            return []
        answer = self.redis.xautoclaim(self.stream, self.group, self.consumer, self.claim_idle_ms,
                                       start_id=self._claim_cursor, count=self.batch)
        self._claim_cursor = _text(answer[0])
        if self._claim_cursor == "0-0":
            self._next_claim = now + self.claim_idle_ms / 1000
        claimed = [(entry_id, fields) for entry_id, fields in answer[1] if entry_id is not None]
        if len(claimed) < len(answer[1]):  # Redis 6.2 claims deleted ones without their ids: read them as our own
            self._own_pending = True
        deleted = answer[2] if len(answer) > 2 else []  # Redis 7 names them apart
        return claimed + [(entry_id, {}) for entry_id in deleted]

    def _progress(self) -> None:
        if self.report_seconds and time.monotonic() >= self._next_report:
            self.report(f"river_ingest {self.stream} ({self.consumer}): {self.counts}")
            self._next_report = time.monotonic() + self.report_seconds

    # Learning ---------------------------------------------------------------------------------

    def _learn(self, reads: list[Read]) -> None:
        """Learn the examples of ``reads`` (runs of one model as batches); mark each learned or failed."""
        for read in reads:
            if not read.fields:
                read.error = "the entry was deleted from the stream before it was learned."
                continue
            try:
                read.model, read.example = example_of(self.stream, read.entry_id, read.fields)
            except BadEntry as error:
                read.error = str(error)
        good = [read for read in reads if read.error is None]
        for model, run in groupby(good, key=lambda read: read.model):
            self._learn_run(model, list(run))

    def _learn_run(self, model: str, run: list[Read]) -> None:
        """Learn entries of one model as one batch; an entry the model refuses is failed, the others tried again."""
        pending, waits = run, 0
        while pending:
            try:
                answer = self.client.learn_many(model, [read.example for read in pending])
            except RiverMLError as error:
                # The store is unavailable or busy, or learns with the same keys raced: wait, then try again.
                if error.status_code == 503 or type(error) is Conflict:
                    self._wait(waits, error)
                    waits += 1
                    continue
                pending = self._failed(pending, error)
            except Exception as error:  # not a refusal: a fault, of one entry or another
                logger.exception("Learning %s entries of model %s failed", len(pending), model)
                pending = self._failed(pending, error)
            else:
                duplicates = answer.get("duplicates", 0)
                self.counts.learned += len(pending) - duplicates
                self.counts.duplicates += duplicates
                for read in pending:
                    read.learned = True
                return

    def _failed(self, pending: list[Read], error: Exception) -> list[Read]:
        """What is left to learn after ``error`` refused ``pending``: the others, when it names the example it is
        about. When it names none (no such model; a batch another worker found the model raises on), each is
        learned on its own, and fails for itself."""
        row = getattr(error, "row", None)
        if row is not None:
            self._fail(pending[row], error)
            return pending[:row] + pending[row + 1:]
        if len(pending) == 1:
            self._fail(pending[0], error)
        else:
            for read in pending:
                self._learn_run(read.model, [read])
        return []

    def _fail(self, read: Read, error: Exception) -> None:
        message = getattr(error, "message", None) or f"{type(error).__name__}: {error}"
        read.error = message.removeprefix(f"Example {getattr(error, 'row', None)}: ")

    def _wait(self, waits: int, error: Exception) -> None:
        delay = RETRY_SECONDS[min(waits, len(RETRY_SECONDS) - 1)]
        logger.warning("The model store is unavailable (%s); trying again in %s s.", error, delay)
        if self.stop.wait(delay):
            raise Stopped()

    # Acknowledging ------------------------------------------------------------------------------

    def _acknowledge(self, reads: list[Read]) -> None:
        """XACK learned and failed entries; the failed ones go to the dead letters in the same transaction."""
        if not reads:
            return
        pipe = self.redis.pipeline(transaction=True)
        for read in reads:
            if read.error is None:
                continue
            self.counts.failed += 1
            logger.warning("Entry %s of %s failed: %s", read.entry_id, self.stream, read.error)
            if self.dead_letter:
                pipe.xadd(self.dead_letter, {**read.fields, "error": read.error, "entry": read.entry_id})
        pipe.xack(self.stream, self.group, *[read.entry_id for read in reads])
        pipe.execute()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

