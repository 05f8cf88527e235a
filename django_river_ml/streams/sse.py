"""The body of one event stream: what the client missed from the event log, then live events.

django-eventstream's own ``stream()`` does the same with the same parts (a ``Listener`` in the
listener manager, its SSE encoding), but measured against a real multi-worker server it sends
events twice, or a whole block again after a resume (a re-read after events were queued starts
over from the old position), and after a ``stream-error`` it keeps the stream open, repeating the
error at every event. This loop keeps one rule instead: per channel, a live event is taken only if
its id is the next one after the last taken. A live event further ahead means some went by
unseen (a full queue, a reconnection to Redis, events purged before they were heard): the stream
reads them from the log. So every event is sent once, in order, whichever path brought it.

A model's channel sends only the events of the model's incarnation (upload) that the last read
of the log found, with the caller's access to it (:func:`~django_river_ml.streams.adapters.read_events`):
the others are skipped, never sent. A live event of another incarnation makes the stream read
the log again, which decides (the model was replaced: the stream goes on with the new one if its
caller may read it; a late event of an earlier one: skipped).

The stream ends after a ``stream-error`` (its client reconnects and is told what it may read
now): ``forbidden`` when its caller may no longer read a channel (checked again at every read
of the log, on every access event, and every ``ACCESS_RECHECK_SECONDS``), ``token-expired`` when
the JWT it was opened with expires; and when the server stops (:func:`~django_river_ml.streams.closing`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from asgiref.sync import sync_to_async
from django_eventstream.eventstream import EventPermissionError
from django_eventstream.utils import make_id, sse_encode_error, sse_encode_event
from django_eventstream.views import get_listener_manager

from django_river_ml.streams import closing
from django_river_ml.streams.adapters import check_access, read_events, serves

logger = logging.getLogger(__name__)

# Seconds between two keep-alive events while nothing happens (django-eventstream's).
KEEP_ALIVE_SECONDS = 20
# Seconds between two checks of the caller's access, whatever events say.
ACCESS_RECHECK_SECONDS = 20
# The first body: padding for old proxies and browsers that buffer small bodies, then stream-open.
OPENING = ":" + " " * 2048 + "\n\nevent: stream-open\ndata:\n\n"
KEEP_ALIVE = "event: keep-alive\ndata:\n\n"


def _forbidden(channels) -> str:
    return sse_encode_error("forbidden", f"Permission denied to channels: {', '.join(channels)}",
                            extra={"channels": list(channels)})


def _expired() -> str:
    return sse_encode_error("token-expired", "The token this stream was opened with has expired: get a new one "
                            "and connect again.")


async def event_stream(event_request, listener, expires: float | None = None) -> AsyncIterator[str]:
    """SSE text for ``event_request`` (channels, user, last ids), through ``listener``'s live queue.

    ``expires``: when (Unix time) the credentials the stream was opened with stop being accepted.
    """
    manager = get_listener_manager()
    read_log = sync_to_async(read_events)
    recheck = sync_to_async(check_access)
    listener.assign_loop()
    manager.add_listener(listener)
    sent = {channel: int(last) for channel, last in event_request.channel_last_ids.items()}
    following: dict = {}
    body = OPENING
    try:
        while True:
            if expires is not None and time.time() >= expires:
                yield body + _expired()
                return
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
            following = _following(following, answer.following)
            for channel in answer.reset:
                sent[channel] = answer.last_ids[channel]
                body += sse_encode_event("stream-reset", {"channels": [channel]}, event_id=make_id(sent),
                                         json_encode=True)
            for channel, last in answer.last_ids.items():
                sent.setdefault(channel, last)
            for channel, items in answer.items.items():
                body += _encode(channel, items, sent, following[channel], live=False)[0]
            if answer.more:
                yield body
                body = ""
                continue
            if body:
                yield body
                body = ""
            # Live events, until some were missed or another incarnation's came (read the log again),
            # or the stream ends.
            now = time.monotonic()
            keep_alive, check = now + KEEP_ALIVE_SECONDS, now + ACCESS_RECHECK_SECONDS
            while True:
                if expires is not None and time.time() >= expires:
                    yield _expired()
                    return
                now = time.monotonic()
                if now >= check:
                    check = now + ACCESS_RECHECK_SECONDS
                    try:
                        denied, current = await recheck(event_request.user, event_request.channels)
                    except Exception as error:  # the store or the user table failed: keep the stream, say so
                        logger.warning("Could not check a stream's access to %s again: %s",
                                       ", ".join(event_request.channels), error)
                        continue
                    if denied:
                        yield _forbidden(denied)
                        return
                    if _following(following, current) != following:
                        break
                if now >= keep_alive:
                    keep_alive = now + KEEP_ALIVE_SECONDS
                    yield KEEP_ALIVE
                wait = min(keep_alive, check) - now
                if expires is not None:
                    wait = min(wait, expires - time.time())
                if not await _woken(listener, max(wait, 0.0)):
                    continue
                if closing().is_set():
                    return
                with manager.lock:
                    queued, overflow, error = listener.channel_items, listener.overflow, listener.error
                    listener.channel_items, listener.overflow = {}, False
                    listener.aevent.clear()
                missed = overflow
                for channel, items in queued.items():
                    text, gap = _encode(channel, items, sent, following.get(channel), live=True)
                    body += text
                    missed = missed or gap
                if error:
                    yield body + sse_encode_error(error["condition"], error["text"], extra=error.get("extra"))
                    return
                if body:
                    yield body
                    body = ""
                    keep_alive = time.monotonic() + KEEP_ALIVE_SECONDS
                if missed:
                    break
    finally:
        manager.remove_listener(listener)


def _following(before: dict, now: dict) -> dict:
    """The incarnation each channel follows after a look at the models: ``now``'s, except that a stream keeps
    following a model that is gone (no incarnation now) with the one it followed, for what is left of it
    (its ``delete``). Only callers who may read every model keep a gone model's channel: for the others, a
    model that is gone is a channel they may not read."""
    return {channel: before.get(channel) if incarnation is None else incarnation
            for channel, incarnation in now.items()}


def _encode(channel: str, items, sent: dict[str, int], following: str | None, live: bool) -> tuple[str, bool]:
    """The items that come next on ``channel`` (older ones skipped), and whether the log must be read again.

    From the log (``live`` False) the items are all there is after the last sent: each is taken,
    and sent if it is of the incarnation the channel follows. Live, an item further ahead than
    the next (some went by unseen), or of another incarnation, stops: the log decides.
    """
    text = ""
    for item in items:
        number = int(item.id)
        if number <= sent[channel]:
            continue
        if live and (number > sent[channel] + 1 or not serves(following, item)):
            return text, True
        sent[channel] = number
        if serves(following, item):
            text += sse_encode_event(item.type, item.data, event_id=make_id(sent))
    return text, False


async def _woken(listener, timeout: float) -> bool:
    """Wait for the listener's queue, or the server's stop; False after ``timeout`` seconds of nothing."""
    woken = asyncio.ensure_future(listener.aevent.wait())
    stop = asyncio.ensure_future(closing().wait())
    try:
        done, _ = await asyncio.wait({woken, stop}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        woken.cancel()
        stop.cancel()
    return bool(done)
