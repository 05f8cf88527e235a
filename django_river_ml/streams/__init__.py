"""Live streams of events and metrics, served with django-eventstream.

- :mod:`~django_river_ml.streams.publisher` takes every emitted event off the request's path
  into the event log (and sends the coalesced metrics events);
- :mod:`~django_river_ml.streams.eventlog` numbers and keeps them per channel, in the store's
  backend (SQLite beside the embedded store, or Redis);
- :mod:`~django_river_ml.streams.fanout` hands every event to each process's open streams;
- :mod:`~django_river_ml.streams.adapters` plugs the event log and our access rules into
  django-eventstream, which speaks SSE, resumes from ``Last-Event-ID`` and keeps the listeners.

Channels: ``events`` and ``metrics`` carry every model; ``events/<model>`` and
``metrics/<model>`` one model each.

>>> channel(EVENTS), channel(METRICS, "fuzzy-mango")
('events', 'metrics/fuzzy-mango')
>>> parse_channel("events/fuzzy-mango"), parse_channel("metrics"), parse_channel("other/x")
(('events', 'fuzzy-mango'), ('metrics', None), (None, None))
"""

from __future__ import annotations

import asyncio
import weakref

EVENTS, METRICS = "events", "metrics"
KINDS = (EVENTS, METRICS)


def channel(kind: str, model: str | None = None) -> str:
    return kind if model is None else f"{kind}/{model}"


def parse_channel(name: str) -> tuple[str | None, str | None]:
    """``(kind, model)`` of a channel name (model None for all models), ``(None, None)`` if not ours."""
    kind, _, model = name.partition("/")
    if kind not in KINDS:
        return None, None
    return kind, (model or None)


def reset_streams(*, setting: str, **kwargs) -> None:
    """After a change of the store's settings (tests), forget the event log and its fan-out."""
    if setting in ("DJANGO_RIVER_ML", "BASE_DIR"):
        from django_river_ml.streams.eventlog import reset_event_log
        from django_river_ml.streams.fanout import stop_fanout
        from django_river_ml.streams.publisher import forget_pending

        stop_fanout()
        forget_pending()
        reset_event_log()


_closing: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def closing() -> asyncio.Event:
    """Set when this process's server begins to stop, so that open streams end (see :mod:`django_river_ml.worker`).

    One per event loop (a server has one; tests may run several, one after another).
    """
    loop = asyncio.get_running_loop()
    event = _closing.get(loop)
    if event is None:
        event = _closing[loop] = asyncio.Event()
    return event
