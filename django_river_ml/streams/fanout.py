"""Every event, whichever worker emitted it, to this process's stream subscribers.

django-eventstream keeps each process's open streams in its listener manager and delivers
an event to them with ``add_to_queues``; it has no way of its own to hear other processes
without its ``EVENTSTREAM_REDIS`` pub/sub. One thread per process (started with the first
stream) hears every event of the event log and hands it over:

- on the embedded store it tails the event table (``STREAM_POLL_SECONDS`` between looks
  while nothing is new), in the order events were appended;
- on Redis it listens to the pub/sub channel the event log publishes every append on
  (django-eventstream's message shape). When the connection drops (Redis restarted or
  unreachable) it reconnects by itself, with a growing pause, and then wakes every local
  stream as if its queue had overflowed: django-eventstream then reads what the stream
  missed from the event log, so an outage costs latency, never events (within retention).

Delivery never blocks an emitting request: appending is done by the publisher thread, and
this thread only reads.
"""

from __future__ import annotations

import logging
import os
import threading

from django_eventstream.views import get_listener_manager

from django_river_ml.streams.adapters import ACCESS_CHANGES, check_followers
from django_river_ml.streams.eventlog import EventLog, RedisEventLog, SQLiteEventLog, decode_published

logger = logging.getLogger(__name__)

# Pauses before reconnecting to Redis: the first, the longest.
RECONNECT_FIRST, RECONNECT_MAX = 0.2, 5.0
# Seconds one pub/sub wait lasts (how soon a stopped fan-out notices).
LISTEN_SECONDS = 1.0


def deliver(event) -> None:
    get_listener_manager().add_to_queues(event.channel, event)
    if event.type in ACCESS_CHANGES:
        check_followers(event)


def resync_listeners() -> None:
    """Make every stream of this process read the event log again (what it may have missed)."""
    manager = get_listener_manager()
    with manager.lock:
        listeners = {listener for group in manager.listeners_by_channel.values() for listener in group}
        for listener in listeners:
            listener.overflow = True
    for listener in listeners:
        if listener.loop is not None:
            listener.wake_threadsafe()


class Fanout:
    """The thread that hands the event log's events to this process's subscribers."""

    def __init__(self, log: EventLog, poll_seconds: float):
        self.log = log
        self.poll_seconds = poll_seconds
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="river-ml-stream-fanout", daemon=True)
        #: Times the Redis listener reconnected (for tests and logs).
        self.reconnects = 0

    def start(self) -> Fanout:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def _run(self) -> None:
        if isinstance(self.log, RedisEventLog):
            self._listen(self.log)
        elif isinstance(self.log, SQLiteEventLog):
            self._tail(self.log)

    def _tail(self, log: SQLiteEventLog) -> None:
        position = None
        while not self.stopped.is_set():
            try:
                if position is None:
                    position = log.last_position()
                found = log.since(position)
            except Exception as error:  # the store is busy or gone: try again, never die
                logger.warning("Stream fan-out cannot read the event log: %s", error)
                self.stopped.wait(1.0)
                continue
            for position, event in found:
                deliver(event)
            if not found:
                self.stopped.wait(self.poll_seconds)

    def _listen(self, log: RedisEventLog) -> None:
        pause, connected_before = RECONNECT_FIRST, False
        while not self.stopped.is_set():
            pubsub = None
            try:
                pubsub = log.subscriber()
                if connected_before:  # events published while we were away: streams read them from the log
                    self.reconnects += 1
                    logger.warning("Stream fan-out reconnected to Redis")
                    resync_listeners()
                connected_before, pause = True, RECONNECT_FIRST
                while not self.stopped.is_set():
                    message = pubsub.get_message(timeout=LISTEN_SECONDS)
                    if message is not None and message["type"] == "message":
                        deliver(decode_published(message["data"]))
            except Exception as error:  # Redis down, restarted, or a message we cannot read
                logger.warning("Stream fan-out lost Redis (%s); reconnecting in %.1fs", error, pause)
                self.stopped.wait(pause)
                pause = min(pause * 2, RECONNECT_MAX)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: S110 - closing a broken connection may fail too
                        pass


_lock = threading.Lock()
_fanout: Fanout | None = None
_fanout_pid: int | None = None


def ensure_fanout(log: EventLog, poll_seconds: float) -> Fanout:
    """Start this process's fan-out for ``log`` if it is not running (once per process and log)."""
    global _fanout, _fanout_pid
    with _lock:
        if _fanout is None or _fanout_pid != os.getpid() or _fanout.log is not log:
            if _fanout is not None and _fanout_pid == os.getpid():
                _fanout.stop()
            _fanout, _fanout_pid = Fanout(log, poll_seconds).start(), os.getpid()
        return _fanout


def stop_fanout() -> None:
    global _fanout
    with _lock:
        if _fanout is not None and _fanout_pid == os.getpid():
            _fanout.stop()
        _fanout = None
