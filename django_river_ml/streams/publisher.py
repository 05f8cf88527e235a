"""From :func:`django_river_ml.events.emit` to the event log, off the request's path.

The publisher is a receiver of :data:`~django_river_ml.events.river_event`: it only encodes the
event (at most ``MAX_EVENT_BYTES``: larger values are left out, see :func:`encode`) and puts it
on a bounded queue, so a learn never waits for the event log and never fails because of it.
One thread per process drains the queue in batches (one write for many events) and appends
each event twice, to its model's channel (``events/<model>``) and to the channel of all models
(``events``), tagged with the incarnation (upload) of the model it is about. An event without
an incarnation (a site's own ``emit``) goes to ``events`` only: a model's channel serves only
its current incarnation's events. After an ``upload`` or ``delete`` the thread purges the
model's channels of every other incarnation's events (:meth:`EventLog.purge`); ``events``
keeps them (its readers may read every model) until retention. When the event log is slow or
down, events wait in the queue up to ``STREAM_QUEUE_SIZE``; beyond that, or when a write still
fails after a few tries, they are dropped and counted in :attr:`Publisher.dropped` (and logged).

The same thread sends the metrics stream. A learn, label or predict marks its model changed;
at most every ``STREAM_METRICS_INTERVAL_SECONDS`` per model, across all workers (a claim in
the event log decides who sends), one ``metrics`` event carries the model's metrics and call
stats as they are then. The claim also remembers how many calls the last one covered, so the
state after the last change is always sent once (by whichever worker saw a change last), and
never twice.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from typing import Any

from django_river_ml.settings import river_settings
from django_river_ml.streams import EVENTS, METRICS, channel
from django_river_ml.streams.eventlog import ALREADY_SENT, CLAIMED, get_event_log

logger = logging.getLogger(__name__)

# Events that change what the metrics stream shows, and the one after which there is nothing to show.
CHANGES_METRICS = frozenset({"learn", "label", "predict", "upload"})
# Events after which a model's channels are purged of other incarnations' events.
PURGES = frozenset({"upload", "delete"})
# Events carry the example; one whose data is larger than this goes without its largest values
# (``"truncated": true, "omitted": [their keys]``), so every event of the log, of the queue and of a
# stream's read is bounded in bytes.
MAX_EVENT_BYTES = 64 * 1024
# Keys never left out while others can be.
KEPT_LAST = ("model", "time")
# Most events appended in one write.
BATCH = 500
# Pauses before trying a failed write again (a busy SQLite file, a Redis failing over); then it is dropped.
RETRY_PAUSES = (0.2, 0.5, 1.0)


class Publisher:
    """A per-process queue and the thread that empties it into the event log."""

    def __init__(self, queue_size: int):
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        #: Events this process could not send (queue full, or the event log failed).
        self.dropped = 0
        self._changed: dict[str, None] = {}  # models whose metrics event is due, oldest first
        # Bumped when the store changes (tests' settings): events queued before are for a store no longer used.
        self._generation = 0
        self._appending = threading.Lock()  # held while a batch is written, so a change waits for it
        self._thread = threading.Thread(target=self._run, name="river-ml-stream-publisher", daemon=True)
        self._thread.start()

    def put(self, event: str, data: dict[str, Any], incarnation: str | None = None) -> None:
        if self.queue.full():  # not worth encoding
            self.dropped += 1
            return
        try:
            self.queue.put_nowait((event, data.get("model"), encode({**data, "time": time.time()}), incarnation or "",
                                   self._generation))
        except queue.Full:
            self.dropped += 1

    def flushed(self, timeout: float = 5.0) -> bool:
        """Whether everything put so far was handled within ``timeout`` seconds (tests, graceful stops)."""
        deadline = time.monotonic() + timeout
        while (self.queue.unfinished_tasks or self._changed) and time.monotonic() < deadline:
            time.sleep(0.01)
        return not (self.queue.unfinished_tasks or self._changed)

    # The thread

    def _run(self) -> None:
        next_metrics = 0.0
        while True:
            waiting = max(next_metrics - time.monotonic(), 0.0) if self._changed else None
            batch = self._take(timeout=waiting)
            try:
                if batch:
                    self._append_events(batch)
                if self._changed and time.monotonic() >= next_metrics:
                    interval = float(river_settings.STREAM_METRICS_INTERVAL_SECONDS)
                    with self._appending:
                        self._send_metrics(interval)
                    # Models sent too soon are tried again a few times per interval.
                    next_metrics = time.monotonic() + min(max(interval / 4, 0.05), 1.0)
            except Exception:  # a bug must not silence this process's streams for good
                self.dropped += len(batch)
                logger.exception("The stream publisher failed on %d events", len(batch))

    def _take(self, timeout: float | None) -> list[tuple]:
        try:
            batch = [self.queue.get(timeout=timeout)]
        except queue.Empty:
            return []
        while len(batch) < BATCH:
            try:
                batch.append(self.queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def forget(self) -> None:
        """Drop what is queued or owed for the store used until now (after a write in progress)."""
        with self._appending:
            self._generation += 1
            self._changed.clear()

    def _append_events(self, batch: list[tuple]) -> None:
        with self._appending:
            self._append_current(batch)

    def _append_current(self, batch: list[tuple]) -> None:
        try:
            rows, purges = [], []  # purges: (model, index of its upload or delete in rows)
            for event, model, body, incarnation, generation in batch:
                if generation != self._generation:
                    continue
                rows.append((channel(EVENTS), event, body, incarnation))
                if model is not None and incarnation:
                    if event in PURGES:
                        purges.append((model, len(rows)))
                    rows.append((channel(EVENTS, model), event, body, incarnation))
                if model is not None:
                    if event in CHANGES_METRICS:
                        self._changed[model] = None
                    elif event == "delete":
                        self._changed.pop(model, None)
            if not rows:
                return
            for pause in (*RETRY_PAUSES, None):
                try:
                    appended = get_event_log().append(rows)
                    break
                except Exception as error:  # busy or down: new events wait in the queue meanwhile
                    if pause is None:
                        self.dropped += len(batch)
                        logger.warning("Dropped %d stream events: %s", len(batch), error)
                        return
                    time.sleep(pause)
            for model, index in purges:
                if appended[index].id > 1:  # else the channel had no event before: nothing to purge
                    purge(model, before=appended[index].id)
        finally:
            for _ in batch:
                self.queue.task_done()

    def _send_metrics(self, interval: float) -> None:
        from django_river_ml.exceptions import ModelNotFound

        for model in list(self._changed):
            try:
                stats, incarnation = calls_of(model)
                claim_key = f"{METRICS}/{model}/{incarnation}"
                outcome = get_event_log().claim(claim_key, calls_counted(stats), interval)
                if outcome == CLAIMED:
                    state, applied_to = metrics_state(model, stats)
                    if applied_to != incarnation:  # replaced meanwhile: its upload marked it changed again
                        continue
                    body = encode(state)
                    get_event_log().append([(channel(METRICS), "metrics", body, incarnation),
                                            (channel(METRICS, model), "metrics", body, incarnation)])
                if outcome in (CLAIMED, ALREADY_SENT):
                    self._changed.pop(model, None)
            except ModelNotFound:
                self._changed.pop(model, None)
            except Exception as error:  # the store or the model failed: drop this one, keep the thread
                self._changed.pop(model, None)
                self.dropped += 1
                logger.warning("Dropped a metrics event of %s: %s", model, error)


def calls_of(model: str) -> tuple[dict, str]:
    """The model's call stats and the incarnation they are of: all a claim needs, without catching up
    the model (which only the worker that wins the claim does)."""
    from django_river_ml.client import DjangoClient
    from django_river_ml.exceptions import ModelNotFound
    from django_river_ml.storage import get_store

    info = get_store().model_info(model)
    if info is None:
        raise ModelNotFound(model)
    return DjangoClient().stats(model), info.incarnation


def calls_counted(stats: dict) -> int:
    """The learns, predicts and labels the stats count: the version of the model's state a metrics event is of."""
    from django_river_ml.client import STAT_OPERATIONS

    return sum(stats[operation]["n_calls"] for operation in STAT_OPERATIONS)


def metrics_state(model: str, stats: dict) -> tuple[dict, str]:
    """The model's metrics event with ``stats``, and the incarnation it is of.

    Stats first: every call they count was applied before it was counted, so the metrics read
    next include it, and a claim for this many calls never hides a newer state.
    """
    from django_river_ml.client import DjangoClient

    client = DjangoClient()
    replica = client.registry.replica(model)
    with replica.lock:
        metrics = client.metrics(model)
        sequence, incarnation, flavor = replica.seq, replica.incarnation, replica.flavor.name
    state = {"model": model, "flavor": flavor, "sequence": sequence, "time": time.time(),
             "metrics": metrics, "stats": stats}
    return state, incarnation


def purge(model: str, before: int | None = None) -> None:
    """Drop the events of ``model``'s channels that are not of its current incarnation (all, if it is gone)
    and older than event ``before`` of ``events/<model>`` (its upload or delete, which stays)."""
    from django_river_ml.storage import get_store

    try:
        info = get_store().model_info(model)
        keep = info.incarnation if info is not None else None
        log = get_event_log()
        log.purge(channel(EVENTS, model), keep, before)
        log.purge(channel(METRICS, model), keep)
    except Exception as error:  # never served anyway (reads filter them); they go with retention
        logger.warning("Could not purge the stream events of earlier uploads of %s: %s", model, error)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def encode(data: dict) -> str:
    """``data`` as JSON of at most MAX_EVENT_BYTES: the largest values are left out until it fits.

    What was left out is said: ``"truncated": true`` and ``"omitted"``, the keys left out.

    >>> encode({"model": "m", "sequence": 1, "label": "x" * 100_000})
    '{"model":"m","sequence":1,"truncated":true,"omitted":["label"]}'
    """
    body = _dumps(data)  # ASCII (ensure_ascii): as many bytes as characters
    if len(body) <= MAX_EVENT_BYTES:
        return body
    kept, omitted = dict(data), []
    sizes = sorted(((key in KEPT_LAST, -len(_dumps(value)), str(key)), key) for key, value in data.items())
    for _, key in sizes:
        del kept[key]
        omitted.append(key)
        body = _dumps({**kept, "truncated": True, "omitted": omitted})
        if len(body) <= MAX_EVENT_BYTES:
            return body
    return _dumps({"truncated": True})  # only keys too long to list are left


_lock = threading.Lock()
_publisher: Publisher | None = None
_publisher_pid: int | None = None


def get_publisher() -> Publisher:
    """This process's publisher (a new one after a fork: threads do not survive it)."""
    global _publisher, _publisher_pid
    if _publisher is None or _publisher_pid != os.getpid():
        with _lock:
            if _publisher is None or _publisher_pid != os.getpid():
                _publisher, _publisher_pid = Publisher(river_settings.STREAM_QUEUE_SIZE), os.getpid()
    return _publisher


def forget_pending() -> None:
    """Drop the events this process has queued and the metrics events it owes (for a store no longer used)."""
    if _publisher is not None and _publisher_pid == os.getpid():
        _publisher.forget()


def on_river_event(sender, event: str, data: dict, incarnation: str | None = None, **kwargs) -> None:
    """The :data:`~django_river_ml.events.river_event` receiver: queue it, never wait."""
    get_publisher().put(event, data, incarnation)
