"""The body of one event stream: what the client missed from the event log, then live events.

django-eventstream's own ``stream()`` does the same with the same parts (``get_events``, a
``Listener`` in the listener manager, its SSE encoding), but measured against a real
multi-worker server it sends events twice, or a whole block again after a resume (a re-read
after events were queued starts over from the old position), and after a ``stream-error`` it
keeps the stream open, repeating the error at every event. This loop keeps one rule instead:
per channel, an event is sent only if its id is the next one after the last sent. A live event
further ahead means some went by unseen (a full queue, a reconnection to Redis): the stream
reads them from the log. So every event is sent once, in order, whichever path brought it.

The stream ends after a ``stream-error`` (its client reconnects and is told what it may read
now) and when the server stops (:func:`~django_river_ml.streams.closing`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from asgiref.sync import sync_to_async
from django_eventstream.eventstream import EventPermissionError, get_events
from django_eventstream.utils import make_id, sse_encode_error, sse_encode_event
from django_eventstream.views import get_listener_manager

from django_river_ml.streams import closing

# Seconds between two keep-alive events while nothing happens (django-eventstream's).
KEEP_ALIVE_SECONDS = 20
# The first body: padding for old proxies and browsers that buffer small bodies, then stream-open.
OPENING = ":" + " " * 2048 + "\n\nevent: stream-open\ndata:\n\n"
KEEP_ALIVE = "event: keep-alive\ndata:\n\n"


async def event_stream(event_request, listener) -> AsyncIterator[str]:
    """SSE text for ``event_request`` (channels, user, last ids), through ``listener``'s live queue."""
    manager = get_listener_manager()
    read_log = sync_to_async(get_events)
    listener.assign_loop()
    manager.add_listener(listener)
    sent = {channel: int(last) for channel, last in event_request.channel_last_ids.items()}
    body = OPENING
    try:
        while True:
            # From the log: everything after what was sent. Live events queued from here on are
            # either in this read (and skipped later) or after it.
            with manager.lock:
                listener.channel_items, listener.overflow = {}, False
            event_request.channel_last_ids = {channel: str(last) for channel, last in sent.items()}
            try:
                answer = await read_log(event_request)
            except EventPermissionError as error:
                yield body + sse_encode_error("forbidden", str(error), extra={"channels": error.channels})
                return
            for channel in answer.channel_reset:
                sent[channel] = int(answer.channel_last_ids[channel])
                body += sse_encode_event("stream-reset", {"channels": [channel]}, event_id=make_id(sent),
                                         json_encode=True)
            for channel, last in answer.channel_last_ids.items():
                sent.setdefault(channel, int(last))
            for channel, items in answer.channel_items.items():
                body += _encode(channel, items, sent)[0]
            if answer.channel_more:
                yield body
                body = ""
                continue
            if body:
                yield body
                body = ""
            # Live events, until some were missed (read the log again) or the stream ends.
            while True:
                if not await _woken(listener):
                    yield KEEP_ALIVE
                    continue
                if closing().is_set():
                    return
                with manager.lock:
                    queued, overflow, error = listener.channel_items, listener.overflow, listener.error
                    listener.channel_items, listener.overflow = {}, False
                    listener.aevent.clear()
                missed = overflow
                for channel, items in queued.items():
                    text, gap = _encode(channel, items, sent)
                    body += text
                    missed = missed or gap
                if error:
                    yield body + sse_encode_error(error["condition"], error["text"], extra=error.get("extra"))
                    return
                if body:
                    yield body
                    body = ""
                if missed:
                    break
    finally:
        manager.remove_listener(listener)


def _encode(channel: str, items, sent: dict[str, int]) -> tuple[str, bool]:
    """The items that come next on ``channel`` (older ones skipped), and whether one further ahead was seen."""
    text, gap = "", False
    for item in items:
        number = int(item.id)
        if number <= sent[channel]:
            continue
        if number > sent[channel] + 1:
            gap = True
            break
        sent[channel] = number
        text += sse_encode_event(item.type, item.data, event_id=make_id(sent))
    return text, gap


async def _woken(listener) -> bool:
    """Wait for the listener's queue, or the server's stop; False after KEEP_ALIVE_SECONDS of nothing."""
    woken = asyncio.ensure_future(listener.aevent.wait())
    stop = asyncio.ensure_future(closing().wait())
    try:
        done, _ = await asyncio.wait({woken, stop}, timeout=KEEP_ALIVE_SECONDS,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        woken.cancel()
        stop.cancel()
    return bool(done)
