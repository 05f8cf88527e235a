"""Server-Sent Events: an incremental parser and a stream that reconnects where it left off.

The parser follows the WHATWG ``text/event-stream`` rules: lines end with ``\\r\\n``, ``\\n`` or
``\\r``; ``:`` starts a comment; ``event``, ``data``, ``id`` and ``retry`` fields; a blank line
dispatches the event (an event without data is not dispatched); an unfinished event at the end
of the stream is dropped. Data that is JSON is parsed.

:class:`EventStream` opens the stream, yields :class:`Event` objects, and when the connection
drops or ends it reconnects, sending ``Last-Event-ID`` so the server can resume. A ``204``
answer ends the stream for good.
"""

from __future__ import annotations

import codecs
import http.client
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import requests
import urllib3

from riverapi.exceptions import RiverAPIError, ServerUnavailable

__all__ = ["Event", "SSEParser", "parse_events", "EventStream"]

logger = logging.getLogger("riverapi")

_MISSING = object()


@dataclass(frozen=True)
class Event:
    """One server-sent event. ``data`` is the parsed JSON when the data is JSON, else the text."""

    event: str = "message"
    data: Any = None
    id: str | None = None
    retry: int | None = None
    raw: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.event, "id": self.id, "data": self.data}


def _parse_data(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


class SSEParser:
    """Feed it bytes (or text) as they arrive; it returns the events completed so far.

    >>> parser = SSEParser()
    >>> parser.feed(b'event: learn\\nid: 7\\ndata: {"model": "m"')
    []
    >>> parser.feed(b'}\\n\\n')
    [Event(event='learn', data={'model': 'm'}, id='7', retry=None, raw='{"model": "m"}')]
    """

    def __init__(self, last_event_id: str | None = None) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._started = False
        self._event_type = ""
        self._data: list[str] = []
        self._retry: int | None = None
        self._id_buffer = last_event_id
        #: The last event ID of the dispatched events (what a reconnection sends as ``Last-Event-ID``).
        self.last_event_id = last_event_id
        #: The reconnection time in milliseconds the stream asked for, if any.
        self.retry: int | None = None

    def feed(self, chunk: bytes | str) -> list[Event]:
        text = self._decoder.decode(chunk) if isinstance(chunk, bytes) else chunk
        if not self._started and text:
            self._started = True
            if text.startswith("\ufeff"):
                text = text[1:]
        self._buffer += text
        return self._drain(final=False)

    def close(self) -> list[Event]:
        """The end of the stream: a pending line is complete, an unfinished event is dropped."""
        self._buffer += self._decoder.decode(b"", final=True)
        events = self._drain(final=True)
        self._event_type, self._data = "", []
        return events

    def _drain(self, final: bool) -> list[Event]:
        events = []
        buffer = self._buffer
        start = 0
        while True:
            cr, lf = buffer.find("\r", start), buffer.find("\n", start)
            ends = [i for i in (cr, lf) if i >= 0]
            if not ends:
                break
            end = min(ends)
            if buffer[end] == "\r":
                if end + 1 == len(buffer) and not final:
                    break  # a "\r" at the end may be the first half of "\r\n": wait for more
                step = 2 if buffer.startswith("\r\n", end) else 1
            else:
                step = 1
            event = self._line(buffer[start:end])
            if event is not None:
                events.append(event)
            start = end + step
        self._buffer = buffer[start:]
        if final and self._buffer:
            # A last line without its end of line is a complete line; it cannot finish an event.
            self._line(self._buffer)
            self._buffer = ""
        return events

    def _line(self, line: str) -> Event | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event_type = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self._id_buffer = value or None
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self.retry = int(value)
                self._retry = self.retry
        return None

    def _dispatch(self) -> Event | None:
        self.last_event_id = self._id_buffer  # set even when the event has no data (WHATWG)
        event_type, data, retry = self._event_type or "message", self._data, self._retry
        self._event_type, self._data, self._retry = "", [], None
        if not data:
            return None
        raw = "\n".join(data)
        return Event(event=event_type, data=_parse_data(raw), id=self.last_event_id, retry=retry, raw=raw)


def parse_events(chunks: Iterable[bytes | str], parser: SSEParser | None = None) -> Iterator[Event]:
    """The events in a sequence of chunks of a ``text/event-stream`` body.

    >>> [e.to_dict() for e in parse_events([b"data: 1\\r\\n\\r", b"\\n: note\\ndata: a\\ndata: b\\n\\n"])]
    [{'event': 'message', 'id': None, 'data': 1}, {'event': 'message', 'id': None, 'data': 'a\\nb'}]
    """
    parser = parser or SSEParser()
    for chunk in chunks:
        yield from parser.feed(chunk)
    yield from parser.close()


def iter_body(response: requests.Response, size: int = 65536) -> Iterator[bytes]:
    """The body's bytes as soon as they arrive (not in blocks that wait to be full)."""
    raw = response.raw
    read1 = getattr(raw, "read1", None)
    if read1 is None:  # urllib3 < 2.3
        yield from response.iter_content(chunk_size=1)
        return
    while True:
        chunk = read1(size)
        if not chunk:
            return
        yield chunk


# What a dropped or stalled connection raises while the body is read (urllib3's own errors
# come through unwrapped when the body is read with read1).
DROPPED = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
           urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)


#: The id django-eventstream gives its ``stream-error`` event (not a place to resume from).
ERROR_ID = "error"


class EventStream(Iterator[Event]):
    """An endless iterator of :class:`Event`, reconnecting (with ``Last-Event-ID``) when dropped.

    ``open(headers)`` returns a streaming ``requests.Response`` (or raises a
    :class:`~riverapi.exceptions.RiverAPIError`). After a drop or the end of the body the stream
    waits ``retry_delay`` seconds (or what the server's ``retry:`` field said), doubling on each
    failure in a row up to ``max_delay``, and gives up with :class:`ServerUnavailable` after
    ``max_reconnects`` failures in a row (``None``: never); an event received resets the count.
    With ``reconnect=False`` the stream does not reconnect: the end of the body ends the
    iteration, a dropped connection raises :class:`ServerUnavailable`. A ``204 No Content``
    answer ends the stream; any other error answer (404, 401, ...) is raised as it is.
    """

    def __init__(self, open: Callable[[dict[str, str]], requests.Response], *, last_event_id: str | None = None,
                 reconnect: bool = True, retry_delay: float = 3.0, max_delay: float = 30.0,
                 max_reconnects: int | None = None, sleep: Callable[[float], None] = time.sleep,
                 skip: Iterable[str] = ()):
        self._open = open
        self.last_event_id = last_event_id
        self.reconnect = reconnect
        self.retry_delay = retry_delay
        self.max_delay = max_delay
        self.max_reconnects = max_reconnects
        self._sleep = sleep
        #: Event types not yielded (the River API's own streams skip django-eventstream's housekeeping).
        self.skip = frozenset(skip)
        self._response: requests.Response | None = None
        self._closed = False
        #: How many times a connection was opened (the first one and every reconnection that got an answer).
        self.connections = 0
        self._events = self._run()

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> Event:
        return next(self._events)

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop: close the open connection; the iteration ends."""
        self._closed = True
        self._events.close()
        self._close_response()

    def _resume_after(self, event_id: str | None) -> None:
        # django-eventstream marks a stream-error with the id "error", which cannot be resumed from:
        # a reconnection resumes after the last real event instead, and the server says what it thinks.
        if event_id != ERROR_ID:
            self.last_event_id = event_id

    def _close_response(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None

    def _run(self) -> Iterator[Event]:
        failures = 0
        while not self._closed:
            # JSON too, at a lower preference: error answers (404, 401, ...) are JSON.
            headers = {"Accept": "text/event-stream, application/json;q=0.5", "Cache-Control": "no-cache"}
            if self.last_event_id:
                headers["Last-Event-ID"] = self.last_event_id
            dropped: BaseException | None = None
            try:
                self._response = self._open(headers)
            except ServerUnavailable as error:
                dropped = error
            else:
                self.connections += 1
                response = self._response
                if response.status_code == 204:
                    self._close_response()
                    return
                content_type = response.headers.get("Content-Type", "")
                if not content_type.lower().startswith("text/event-stream"):
                    self._close_response()
                    raise RiverAPIError(f"{response.url} is not an event stream (Content-Type {content_type!r}).",
                                        status_code=response.status_code, response=response)
                parser = SSEParser(last_event_id=self.last_event_id)
                try:
                    for event in parse_events(iter_body(response), parser):
                        failures = 0
                        self._resume_after(parser.last_event_id)
                        if event.event not in self.skip:
                            yield event
                except DROPPED as error:
                    dropped = error
                finally:
                    self._resume_after(parser.last_event_id)
                    self._close_response()
                if parser.retry is not None:
                    self.retry_delay = parser.retry / 1000
            if self._closed:
                return
            if not self.reconnect:
                if isinstance(dropped, ServerUnavailable):
                    raise dropped
                if dropped is not None:
                    raise ServerUnavailable(f"The event stream dropped: {dropped}") from dropped
                return
            failures += 1
            if self.max_reconnects is not None and failures > self.max_reconnects:
                reason = f": {dropped}" if dropped is not None else " (the server ended the stream)"
                raise ServerUnavailable(f"The event stream is gone after {self.max_reconnects} reconnections{reason}")
            delay = min(self.max_delay, self.retry_delay * 2 ** max(0, failures - 1))
            logger.info("Event stream %s; reconnecting in %.1fs (Last-Event-ID %s)",
                        "dropped" if dropped is not None else "ended", delay, self.last_event_id)
            self._sleep(delay)
