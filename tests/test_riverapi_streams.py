"""Our riverapi client's Server-Sent Events: the parser, and reconnection with Last-Event-ID.

Drops at every point of an event are tested against a tiny ``http.server`` on 127.0.0.1 started
here, which serves ``text/event-stream`` and drops the connection where the script says; the
streams against the real server are in tests/test_streams_live.py.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from contextlib import contextmanager

import pytest

from riverapi import Client, NotFound, RiverAPIError, ServerUnavailable
from riverapi.streams import Event, EventStream, SSEParser, parse_events

# -- the parser ------------------------------------------------------------------------------


def events_of(*chunks):
    return list(parse_events(chunks))


def test_fields_comments_and_json_data():
    events = events_of(
        b": a comment\n"
        b"event: learn\nid: 1\ndata: {\"model\": \"m\", \"sequence\": 1}\n\n"
        b"data: plain text\n\n"
        b"event: metrics\ndata:{\"MAE\": 0.5}\nunknown: ignored\n\n"
    )
    assert events == [
        Event(event="learn", id="1", data={"model": "m", "sequence": 1}, raw='{"model": "m", "sequence": 1}'),
        # The last event ID stays until the stream sets another one.
        Event(event="message", id="1", data="plain text", raw="plain text"),
        Event(event="metrics", id="1", data={"MAE": 0.5}, raw='{"MAE": 0.5}'),
    ]


def test_multi_line_data_is_joined_with_newlines():
    (event,) = events_of(b"data: first\ndata:second\ndata\ndata:  two spaces\n\n")
    # "data:x" needs no space, a bare "data" is an empty line, only one leading space is removed.
    assert event.data == "first\nsecond\n\n two spaces"


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_every_kind_of_line_end(newline):
    body = newline.join([b"event: predict", b"id: 9", b"data: [1, 2]", b"", b"data: 3", b"", b""])
    assert [(e.event, e.id, e.data) for e in events_of(body)] == [("predict", "9", [1, 2]), ("message", "9", 3)]


def test_chunks_split_anywhere_give_the_same_events():
    body = "event: label\r\nid: é-7\r\ndata: {\"label\": \"café\"}\r\n\r\ndata: 2\r\n\r\n".encode()
    expected = events_of(body)
    assert [e.data for e in expected] == [{"label": "café"}, 2]
    for size in (1, 2, 3, 5, 7):  # splits "\r\n" pairs and the two-byte UTF-8 characters
        chunks = [body[i:i + size] for i in range(0, len(body), size)]
        assert events_of(*chunks) == expected, size


def test_a_carriage_return_at_a_chunk_end_waits_to_see_if_a_line_feed_follows():
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n") == []  # "\r" + "\n" is one line end: no blank line yet
    assert parser.feed(b"\r") == []  # a blank line, unless a "\n" comes next
    assert parser.feed(b"data: b\n") == [Event(data="a", raw="a")]
    assert parser.feed(b"\r") == []
    assert parser.close() == [Event(data="b", raw="b")]  # the stream's end completes the "\r"


def test_an_event_without_data_is_not_dispatched_but_sets_the_last_event_id():
    parser = SSEParser()
    assert parser.feed(b"event: ping\nid: 41\n\n") == []
    assert parser.last_event_id == "41"
    assert parser.feed(b"data: x\n\n") == [Event(data="x", id="41", raw="x")]
    assert parser.feed(b"id\ndata: y\n\n") == [Event(data="y", id=None, raw="y")]  # an empty id resets it
    assert parser.last_event_id is None


def test_an_id_with_a_nul_is_ignored_and_retry_must_be_digits():
    parser = SSEParser()
    assert parser.feed(b"id: 5\n\nid: a\x00b\nretry: soon\ndata: x\n\n") == [Event(data="x", id="5", raw="x")]
    assert parser.retry is None
    assert parser.feed(b"retry: 2500\ndata: y\n\n") == [Event(data="y", id="5", retry=2500, raw="y")]
    assert parser.retry == 2500


def test_an_unfinished_event_at_the_end_is_dropped():
    assert events_of(b"data: complete\n\ndata: cut off") == [Event(data="complete", raw="complete")]
    assert events_of(b"data: cut off\n") == []


def test_a_byte_order_mark_at_the_start_is_skipped():
    assert events_of(b"\xef\xbb\xbfdata: 1\n\n") == [Event(data=1, raw="1")]


def test_text_that_looks_almost_like_json_stays_text():
    assert [e.data for e in events_of(b"data: {not json\n\ndata: 1 2\n\ndata: null\n\n")] == ["{not json", "1 2", None]


# -- a local event-stream server ----------------------------------------------------------

class StreamServer:
    """Serves /api/stream/events/ from a script: one entry per connection.

    An entry is a list of byte chunks sent with chunked transfer encoding, then ``"drop"``
    (close the socket without the final chunk: a dropped connection) or ``"end"`` (finish
    the body properly), or ``"raw"`` (no chunked encoding, no length: the body ends when the
    connection closes); or the int 204 / 404 (answer that status). After the script runs out
    every connection gets 204. Each request's Last-Event-ID header is recorded.
    """

    def __init__(self, script, content_type="text/event-stream"):
        self.script = list(script)
        self.content_type = content_type
        self.last_event_ids: list[str | None] = []
        self.accept: list[str | None] = []
        self.gates: dict[int, threading.Event] = {}
        self.gate_released: dict[int, bool] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                server.last_event_ids.append(self.headers.get("Last-Event-ID"))
                server.accept.append(self.headers.get("Accept"))
                entry = server.script.pop(0) if server.script else 204
                if isinstance(entry, int):
                    body = json.dumps({"message": "gone"}).encode() if entry != 204 else b""
                    self.send_response(entry)
                    self.send_header("Content-Length", str(len(body)))
                    if body:
                        self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(body)
                    return
                chunks, ending = entry
                self.send_response(200)
                self.send_header("Content-Type", server.content_type)
                if ending != "raw":
                    self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                for chunk in chunks:
                    if isinstance(chunk, tuple):  # ("wait", n): hold until the client has seen event n
                        number = chunk[1]
                        server.gate_released[number] = server.gates.setdefault(number, threading.Event()).wait(5)
                        continue
                    self.wfile.write(chunk if ending == "raw" else b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                if ending == "end":
                    self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
                self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def seen(self, number: int) -> None:
        self.gates.setdefault(number, threading.Event()).set()


@contextmanager
def stream_server(script, **kwargs):
    server = StreamServer(script, **kwargs)
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


def event_bytes(number: int, name: str = "learn") -> bytes:
    return f"id: {number}\nevent: {name}\ndata: {json.dumps({'model': 'm', 'sequence': number})}\n\n".encode()


def client_for(server) -> Client:
    return Client(server.url, quiet=True, timeout=5, retries=0)


def test_stream_reconnects_after_a_drop_and_resumes_with_last_event_id():
    script = [
        # First connection: a retry hint (10 ms), two events, half of a third, then the connection drops.
        ([b"retry: 10\n", event_bytes(1), event_bytes(2)[:5], event_bytes(2)[5:], b"id: 3\ndata: {\"half\":"],
         "drop"),
        # Second: the server resumes after 2, with a comment; then it ends the body.
        ([b": resumed\n", event_bytes(3), event_bytes(4, "label")], "end"),
        # Third: 204, no more events.
        204,
    ]
    with stream_server(script) as server:
        # Without the server's retry hint the two reconnections would wait 5 s each.
        stream = client_for(server).stream_events(retry_delay=5)
        started = time.monotonic()
        events = list(stream)
        elapsed = time.monotonic() - started
    assert [(e.event, e.id, e.data) for e in events] == [
        ("learn", "1", {"model": "m", "sequence": 1}),
        ("learn", "2", {"model": "m", "sequence": 2}),
        ("learn", "3", {"model": "m", "sequence": 3}),
        ("label", "4", {"model": "m", "sequence": 4}),
    ]
    # The half-sent event 3 was not dispatched, so the reconnection asked to resume after 2.
    assert server.last_event_ids == [None, "2", "4"]
    assert all(accept.startswith("text/event-stream") for accept in server.accept), server.accept
    assert stream.connections == 3
    assert stream.last_event_id == "4"
    assert stream.retry_delay == pytest.approx(0.01)  # the server's "retry: 10" (milliseconds)
    assert elapsed < 4


def test_events_arrive_as_soon_as_they_are_sent():
    # The server holds the connection open after event 1 until the client has seen it: a client
    # that waited for a full buffer (or the end of the body) would only see it after 5 s. The
    # body has neither a length nor chunks, as a plain HTTP/1.0-style stream.
    script = [([event_bytes(1), ("wait", 1), event_bytes(2)], "raw")]
    with stream_server(script) as server:
        stream = client_for(server).stream_events(reconnect=False)
        started = time.monotonic()
        first = next(stream)
        server.seen(1)
        rest = list(stream)
    assert first.id == "1" and time.monotonic() - started < 4
    assert server.gate_released[1] is True
    assert [e.id for e in rest] == ["2"]


def test_stream_starts_from_a_given_last_event_id():
    with stream_server([([event_bytes(8)], "end")]) as server:
        events = list(client_for(server).stream_metrics(last_event_id="7", retry_delay=0.01))
    assert [e.id for e in events] == ["8"]
    assert server.last_event_ids == ["7", "8"]


def test_without_reconnect_a_drop_is_an_error_after_the_events_it_delivered():
    with stream_server([([event_bytes(1), b"data: cut"], "drop")]) as server:
        stream = client_for(server).stream_events(reconnect=False)
        assert next(stream).id == "1"
        with pytest.raises(ServerUnavailable, match="dropped"):
            next(stream)
    assert server.last_event_ids == [None]


def test_without_reconnect_a_stream_that_ends_just_ends():
    with stream_server([([event_bytes(1)], "end")]) as server:
        assert [e.id for e in client_for(server).stream_events(reconnect=False)] == ["1"]
    assert server.last_event_ids == [None]


def test_a_missing_stream_route_is_not_found_and_not_retried():
    with stream_server([404]) as server:
        with pytest.raises(NotFound, match="gone"):
            next(client_for(server).stream_events(retry_delay=0.01))
    assert server.last_event_ids == [None]


def test_an_answer_that_is_not_an_event_stream_is_refused():
    with stream_server([([b"{}"], "end")], content_type="application/json") as server:
        with pytest.raises(RiverAPIError, match="not an event stream"):
            next(client_for(server).stream_events(retry_delay=0.01))


def test_reconnecting_gives_up_after_max_reconnects_with_back_off():
    delays = []
    calls = []

    def never_reachable(headers):
        calls.append(headers)
        raise ServerUnavailable("Cannot reach the server")

    stream = EventStream(never_reachable, retry_delay=0.5, max_delay=1.5, max_reconnects=3, sleep=delays.append)
    with pytest.raises(ServerUnavailable, match="after 3 reconnections"):
        next(stream)
    assert len(calls) == 4
    assert delays == [0.5, 1.0, 1.5]  # doubled each failure in a row, capped at max_delay


def test_a_closed_port_ends_in_server_unavailable():
    with stream_server([]) as server:
        url = server.url
    stream = Client(url, quiet=True, timeout=1, retries=0).stream_events(retry_delay=0.01, max_reconnects=1)
    started = time.monotonic()
    with pytest.raises(ServerUnavailable, match="Cannot reach"):
        next(stream)
    assert time.monotonic() - started < 5


def test_close_stops_the_stream():
    script = [([event_bytes(1), ("wait", 99)], "end")]
    with stream_server(script) as server:
        stream = client_for(server).stream_events()
        assert next(stream).id == "1"
        stream.close()
        with pytest.raises(StopIteration):
            next(stream)
        server.seen(99)


def test_the_river_api_streams_skip_housekeeping_and_resume_after_the_last_real_event():
    """django-eventstream's stream-open and keep-alive are not yielded; its stream-error has the id
    "error", from which no stream can resume: the reconnection names the last real event."""
    script = [
        ([b":" + b" " * 2048 + b"\n\nevent: stream-open\ndata:\n\n", event_bytes(1),
          b"event: keep-alive\ndata:\n\n",
          b'event: stream-error\nid: error\ndata: {"condition": "models-changed"}\n\n'], "end"),
        ([event_bytes(2)], "end"),
    ]
    with stream_server(script) as server:
        stream = client_for(server).stream_events(model=["a", "b c"], retry_delay=0.01)
        with stream:
            seen = [(event.event, event.id) for _, event in zip(range(3), stream)]
    assert seen == [("learn", "1"), ("stream-error", "error"), ("learn", "2")]
    assert server.last_event_ids == [None, "1"]


def test_the_stream_routes_name_the_models_in_the_query():
    from riverapi.client import _stream_url

    assert _stream_url("/stream/events/", None) == "/stream/events/"
    assert _stream_url("/stream/events/", "m") == "/stream/events/?model=m"
    assert _stream_url("/stream/metrics/", ["a", "b c"]) == "/stream/metrics/?model=a&model=b+c"
