"""Live streams (``/api/stream/events/``, ``/api/stream/metrics/``) on real multi-worker servers.

Every test here talks HTTP to example_project under gunicorn with uvicorn workers (the
``live_server_factory`` fixture), on both stores where it makes sense. Subscribers are plain
streaming ``requests`` connections read by a thread each and parsed with riverapi's SSE parser
(tested on its own in tests/test_riverapi_streams.py); our riverapi ``EventStream`` (across a
restart of the whole server) and the published riverapi 0.0.21 are driven against a real server
too, in test_streams_resume_where_they_left_off.

The assertions are about delivery (every event, once, in id order, to every subscriber that may
read it), never about speed: waits are generous and only bound how long a failure takes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import dill
import pytest
import redis
import requests
from river import linear_model, preprocessing

from liveserver import free_port, wait_until
from redisservers import redis_binary
from riverapi.streams import SSEParser, iter_body

pytestmark = pytest.mark.live

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PROJECT = ROOT / "example_project"
# How long a subscriber may take to see what it should (a busy shared machine: generous).
DELIVERED_WITHIN = 60
# Every stream connection of the running test, closed at its end (see close_streams_before_the_server_stops).
OPEN: list = []
# Events that are not about a model: the stream's own.
STREAM_OWN = ("stream-open", "keep-alive", "stream-reset", "stream-error")


# -- helpers ----------------------------------------------------------------------------------


def model_bytes() -> bytes:
    return dill.dumps(preprocessing.StandardScaler() | linear_model.LinearRegression())


def upload(server, name: str, headers: dict | None = None) -> None:
    answer = requests.post(f"{server.url}/api/model/regression/{name}/", data=model_bytes(), headers=headers,
                           timeout=60)
    assert answer.status_code == 201, (answer.status_code, answer.text, server.log_text()[-3000:])


def learn(session: requests.Session, server, model: str, i: int, headers: dict | None = None) -> requests.Response:
    return session.post(f"{server.url}/api/learn/", json={"model": model, "features": {"x": float(i)},
                                                          "ground_truth": float(i % 7)}, headers=headers, timeout=60)


def learn_many(server, model: str, count: int, threads: int = 4, headers: dict | None = None) -> None:
    """``count`` learns on ``model`` from ``threads`` client threads (so several workers append)."""
    failures: list[str] = []

    def learner(index: int) -> None:
        session = requests.Session()
        for i in range(index, count, threads):
            answer = learn(session, server, model, i, headers)
            if answer.status_code != 201:
                failures.append(f"{answer.status_code}: {answer.text[:200]}")

    workers = [threading.Thread(target=learner, args=(index,)) for index in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(300)
    assert not failures, (failures[:5], server.log_text()[-3000:])


def parse_id(event_id: str | None) -> dict[str, int]:
    """``events/m1:5,events/m2:9`` as ``{"events/m1": 5, "events/m2": 9}``."""
    if not event_id:
        return {}
    return {channel: int(number) for channel, _, number in (part.rpartition(":") for part in event_id.split(","))}


class Subscriber:
    """One streaming connection to a stream route, read by its own thread.

    The constructor returns once the answer's headers arrived: ``status`` tells whether it is a
    stream (200) or an error (``error_body``, JSON). ``events`` collects ``(Event, monotonic time)``.
    """

    def __init__(self, server, path: str, headers: dict | None = None):
        self.server, self.path = server, path
        self.response = requests.get(f"{server.url}{path}", stream=True, timeout=(30, None),
                                     headers={"Accept": "text/event-stream", **(headers or {})})
        self.status = self.response.status_code
        self.content_type = self.response.headers.get("Content-Type", "")
        self.events: list = []
        self.ended = False
        self.failure: BaseException | None = None
        self._changed = threading.Condition()
        self.error_body = None
        OPEN.append(self)
        if self.status != 200:
            self.error_body = self.response.json() if "json" in self.content_type else self.response.text
            self.response.close()
            self.ended = True
            return
        # Which worker holds the connection, found from this end's port (see LiveServer.connection_owners).
        self.port = self.response.raw.connection.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._read, daemon=True, name=f"subscriber {path}")
        self._thread.start()

    def _read(self) -> None:
        parser = SSEParser()
        try:
            for chunk in iter_body(self.response):
                found = parser.feed(chunk)
                if found:
                    now = time.monotonic()
                    with self._changed:
                        self.events.extend((event, now) for event in found)
                        self._changed.notify_all()
        except Exception as error:  # noqa: BLE001 - a closed or dropped connection ends the reader
            self.failure = error
        with self._changed:
            self.ended = True
            self._changed.notify_all()

    def wait_for(self, predicate, timeout: float = DELIVERED_WITHIN, what: str = "events") -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.ended and not predicate(self)):
                    raise AssertionError(
                        f"{self.path}: timed out or ended waiting for {what}; got {self.summary()} "
                        f"(ended={self.ended}, failure={self.failure!r})\n--- server log ---\n"
                        f"{self.server.log_text()[-3000:]}")
                self._changed.wait(min(remaining, 0.5))

    def of_type(self, *types: str) -> list:
        with self._changed:
            return [event for event, _ in self.events if event.event in types]

    def model_events(self) -> list:
        with self._changed:
            return [event for event, _ in self.events if event.event not in STREAM_OWN]

    def sequences(self, model: str, kind: str = "learn") -> list[int]:
        return [event.data["sequence"] for event in self.of_type(kind) if event.data["model"] == model]

    def has_sequences(self, model: str, expected, kind: str = "learn"):
        expected = set(expected)
        return lambda _: expected <= set(self.sequences(model, kind))

    def has_final_metrics(self, model: str, sequence: int, learns: int):
        """Whether the model's last metrics event is at ``sequence`` with ``learns`` learns counted."""
        def final(_) -> bool:
            states = [event.data for event in self.of_type("metrics") if event.data["model"] == model]
            return bool(states) and states[-1]["sequence"] == sequence and states[-1]["stats"]["learn"]["n_calls"] == learns
        return final

    def opened(self) -> bool:
        return bool(self.of_type("stream-open"))

    def summary(self) -> str:
        return str([(event.event, event.id, event.data if event.event in STREAM_OWN else
                     (event.data.get("model"), event.data.get("sequence"))) for event, _ in self.events][-40:])

    def close(self) -> None:
        if self.ended:
            return
        try:  # unblocks the reading thread at once, whatever urllib3 is doing
            self.response.raw.connection.sock.shutdown(socket.SHUT_RDWR)
        except (AttributeError, OSError):
            pass
        self.response.close()
        self._thread.join(10)


@pytest.fixture(autouse=True)
def close_streams_before_the_server_stops(live_server_factory):
    """Streams left open (a failed test) would hold each server's stop for its graceful timeout."""
    yield
    while OPEN:
        OPEN.pop().close()


def open_streams(server, path: str, count: int = 1, headers: dict | None = None) -> list[Subscriber]:
    """``count`` subscribers, returned once each has its ``stream-open`` (so they miss nothing sent next)."""
    subscribers = [Subscriber(server, path, headers) for _ in range(count)]
    for subscriber in subscribers:
        assert subscriber.status == 200, (subscriber.status, subscriber.error_body)
        assert subscriber.content_type.startswith("text/event-stream")
        subscriber.wait_for(Subscriber.opened, what="stream-open")
    return subscribers


def uploads_logged(server, *models: str) -> None:
    """Once the upload events of ``models`` are in the event log (appended off the upload's path, a little later)."""
    query = "&".join(f"model={model}" for model in models)
    last_ids = ",".join(f"events/{model}:0" for model in models)
    probe = open_streams(server, f"/api/stream/events/?{query}", headers={"Last-Event-ID": last_ids})[0]
    probe.wait_for(lambda s: set(models) <= {e.data["model"] for e in s.of_type("upload")}, what="the uploads")
    probe.close()


def without_rates(stats: dict) -> dict:
    return {operation: {key: value for key, value in numbers.items() if key != "rate_per_second"}
            for operation, numbers in stats.items()}


def assert_each_once_in_id_order(subscriber: Subscriber, channel: str) -> list:
    """The subscriber's model events: ids on ``channel`` strictly increasing, no event twice."""
    events = subscriber.model_events()
    ids = [parse_id(event.id)[channel] for event in events]
    back = [index for index in range(1, len(ids)) if ids[index] <= ids[index - 1]]
    assert not back, (f"{subscriber.path}: ids on {channel} went back at {len(back)} places; around the first: "
                      f"{ids[max(0, back[0] - 8):back[0] + 8]}; events: {subscriber.summary()}")
    keys = Counter((event.event, event.data.get("model"), event.data.get("sequence"), event.data.get("time"))
                   for event in events)
    assert not [key for key, times in keys.items() if times > 1], subscriber.summary()
    return events


# -- a. b. d.: fan-out to every worker's subscribers, per-model channels, metrics ---------------


@pytest.mark.parametrize("backend", ["shelve", "redis", "redis-cluster"])
def test_every_subscriber_on_every_worker_gets_every_event(live_server_factory, backend):
    server = live_server_factory(backend, workers=4)
    upload(server, "alpha")
    upload(server, "beta")
    uploads_logged(server, "alpha", "beta")  # else some come to the streams below as live events

    everything = open_streams(server, "/api/stream/events/", 8)
    # The kernel spreads connections over the workers that accept; make sure several hold some.
    while len(set(server.connection_owners({subscriber.port for subscriber in everything}).values()) - {None}) < 2 and len(everything) < 24:
        everything += open_streams(server, "/api/stream/events/", 4)
    holders = set(server.connection_owners({subscriber.port for subscriber in everything}).values()) - {None}
    assert len(holders) >= 2, server.connection_owners({subscriber.port for subscriber in everything})
    only_alpha = open_streams(server, "/api/stream/events/?model=alpha")[0]
    alpha_and_beta = open_streams(server, "/api/stream/events/?model=alpha&model=beta")[0]
    alpha_metrics = open_streams(server, "/api/stream/metrics/?model=alpha")[0]
    all_metrics = open_streams(server, "/api/stream/metrics/")[0]

    started = time.monotonic()
    upload(server, "gamma")  # an upload while streams are open is an event too
    beta_learns = threading.Thread(target=learn_many, args=(server, "beta", 10, 1))
    beta_learns.start()
    learn_many(server, "alpha", 100, threads=5)
    beta_learns.join(300)
    assert requests.delete(f"{server.url}/api/model/gamma/", timeout=30).status_code == 200

    for subscriber in everything:
        subscriber.wait_for(lambda s: s.has_sequences("alpha", range(1, 101))(s)
                            and s.has_sequences("beta", range(1, 11))(s)
                            and any(e.data["model"] == "gamma" for e in s.of_type("delete")),
                            what="every learn of alpha and beta, and gamma's delete")
    only_alpha.wait_for(only_alpha.has_sequences("alpha", range(1, 101)), what="alpha's learns")
    alpha_and_beta.wait_for(lambda s: s.has_sequences("alpha", range(1, 101))(s)
                            and s.has_sequences("beta", range(1, 11))(s), what="alpha's and beta's learns")

    # a. Every subscriber of the all-models channel: each learn once, ids increasing on "events",
    # and the same id for the same event whichever worker served it.
    ids_seen: dict[tuple, set] = {}
    for subscriber in everything + [only_alpha, alpha_and_beta]:  # nothing was trimmed (STREAM_RETENTION 1000)
        assert not subscriber.of_type("stream-reset", "stream-error"), subscriber.summary()
    for subscriber in everything:
        events = assert_each_once_in_id_order(subscriber, "events")
        assert sorted(subscriber.sequences("alpha")) == list(range(1, 101))
        assert sorted(subscriber.sequences("beta")) == list(range(1, 11))
        assert [e.data["model"] for e in subscriber.of_type("upload")] == ["gamma"]
        assert {e.event for e in events} == {"learn", "upload", "delete"}
        for event in events:
            ids_seen.setdefault((event.event, event.data["model"], event.data.get("sequence")), set()).add(event.id)
    assert all(len(ids) == 1 for ids in ids_seen.values()), {k: v for k, v in ids_seen.items() if len(v) > 1}

    # b. One model's channel carries that model's events only; two models give both, each id per channel.
    events = assert_each_once_in_id_order(only_alpha, "events/alpha")
    assert {event.data["model"] for event in events} == {"alpha"}
    assert sorted(only_alpha.sequences("alpha")) == list(range(1, 101))
    assert all(set(parse_id(event.id)) == {"events/alpha"} for event in events)
    both = alpha_and_beta.model_events()
    assert {event.data["model"] for event in both} == {"alpha", "beta"}
    assert sorted(alpha_and_beta.sequences("alpha")) == list(range(1, 101))
    assert sorted(alpha_and_beta.sequences("beta")) == list(range(1, 11))
    last = {"events/alpha": 0, "events/beta": 0}
    for event in both:
        ids = parse_id(event.id)
        assert set(ids) == {"events/alpha", "events/beta"}, event.id
        own = f"events/{event.data['model']}"
        assert ids[own] > last[own], (event.id, last)  # its own channel moves on...
        assert all(ids[other] >= last[other] for other in last)  # ...the other never goes back
        last = ids

    # d. The metrics streams end with the state after the last learn: GET /api/metrics/ and stats.
    expected = requests.get(f"{server.url}/api/metrics/", params={"model": "alpha"}, timeout=30).json()
    stats = requests.get(f"{server.url}/api/stats/", params={"model": "alpha"}, timeout=30).json()
    # A worker may send the metrics at sequence 100 while the worker that applied learn 100 has not
    # counted it yet (99 calls); that worker then sends the state with 100 calls, an interval later.
    for subscriber in (alpha_metrics, all_metrics):
        subscriber.wait_for(subscriber.has_final_metrics("alpha", 100, 100), what="alpha's metrics after 100 learns")
    all_metrics.wait_for(all_metrics.has_final_metrics("beta", 10, 10), what="beta's metrics after 10 learns")
    elapsed = time.monotonic() - started
    for subscriber in (alpha_metrics, all_metrics):
        states = [event.data for event in subscriber.of_type("metrics") if event.data["model"] == "alpha"]
        assert set(states[-1]) == {"model", "flavor", "sequence", "time", "metrics", "stats"}
        assert states[-1]["flavor"] == "regression"
        assert states[-1]["sequence"] == 100 and states[-1]["metrics"] == expected, (states[-1], expected)
        # The same counts and durations; the rates are per second up to the moment each was read.
        assert without_rates(states[-1]["stats"]) == without_rates(stats)
        sequences = [state["sequence"] for state in states]
        assert sequences == sorted(sequences), sequences  # never older
        learns = [state["stats"]["learn"]["n_calls"] for state in states]
        assert learns == sorted(set(learns)), learns  # never the same state twice
        # Coalesced: at most one per STREAM_METRICS_INTERVAL_SECONDS (0.5), whichever worker sends.
        assert len(states) <= elapsed / 0.5 + 2, (len(states), elapsed)
    assert {event.data["model"] for event in alpha_metrics.of_type("metrics")} == {"alpha"}

    for subscriber in everything + [only_alpha, alpha_and_beta, alpha_metrics, all_metrics]:
        assert not subscriber.ended, subscriber.failure
        subscriber.close()


# -- c. f.: resuming with Last-Event-ID, past the retention, across a restart, with both clients ----


class ClientReader:
    """A thread pulling riverapi Events from an EventStream iterator into a list."""

    def __init__(self, stream):
        self.stream = stream
        self.events: list = []
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        OPEN.append(self)

    def _read(self) -> None:
        try:
            for event in self.stream:
                self.events.append(event)
        except Exception as error:  # noqa: BLE001 - reported by the test
            self.failure = error

    def learns(self, model: str) -> list[int]:
        return [e.data["sequence"] for e in list(self.events) if e.event == "learn" and e.data["model"] == model]

    def close(self) -> None:
        self.stream.reconnect = False
        response = self.stream._response
        if response is not None:
            try:
                response.raw.connection.sock.shutdown(socket.SHUT_RDWR)
            except (AttributeError, OSError):
                pass
        self.thread.join(15)


PUBLISHED_STREAM_SCRIPT = """
import json, sys
from riverapi.main import Client

client = Client(sys.argv[1], quiet=True)
for line in client.stream_events():
    print(json.dumps(line), flush=True)
"""


@pytest.mark.parametrize("backend", ["shelve", "redis"])
def test_streams_resume_where_they_left_off(live_server_factory, backend, published_client_path):
    from riverapi import Client

    server = live_server_factory(backend, workers=2, STREAM_RETENTION="10")
    upload(server, "resume")
    path = "/api/stream/events/?model=resume"
    session = requests.Session()

    # c. Reconnecting with the last id seen replays exactly what was missed, then goes on live.
    first = open_streams(server, path)[0]
    for i in range(3):
        assert learn(session, server, "resume", i).status_code == 201
    first.wait_for(first.has_sequences("resume", [1, 2, 3]))
    last_id = first.of_type("learn")[-1].id
    first.close()

    for i in range(5):  # missed: 4..8
        assert learn(session, server, "resume", i).status_code == 201
    resumed = open_streams(server, path, headers={"Last-Event-ID": last_id})[0]
    resumed.wait_for(resumed.has_sequences("resume", range(4, 9)), what="the missed learns")
    for i in range(2):  # live: 9, 10
        assert learn(session, server, "resume", i).status_code == 201
    resumed.wait_for(resumed.has_sequences("resume", [9, 10]), what="the live learns")
    assert resumed.sequences("resume") == list(range(4, 11)), resumed.summary()
    events = assert_each_once_in_id_order(resumed, "events/resume")
    ids = [parse_id(event.id)["events/resume"] for event in events]
    assert ids == list(range(parse_id(last_id)["events/resume"] + 1, ids[0] + len(ids)))  # no gap either
    assert not resumed.of_type("stream-reset")
    last_id = events[-1].id
    resumed.close()

    # Past the retention (10): the stream says it was reset instead of skipping events silently.
    # The log is trimmed lazily (SQLite every 64 appends; Redis's MAXLEN ~ by whole stream nodes),
    # so a few dozen missed events may all be kept still: then they are all replayed.
    learn_many(server, "resume", 50)
    resumed = open_streams(server, path, headers={"Last-Event-ID": last_id})[0]
    resumed.wait_for(lambda s: s.of_type("stream-reset") or s.has_sequences("resume", range(11, 61))(s),
                     what="a stream-reset or the 50 missed learns")
    fifty_missed = "reset" if resumed.of_type("stream-reset") else "replayed"
    if fifty_missed == "replayed":
        assert sorted(resumed.sequences("resume")) == list(range(11, 61))
        assert_each_once_in_id_order(resumed, "events/resume")
    got_to = max(parse_id(event.id)["events/resume"] for event in resumed.of_type("learn", "stream-reset"))
    last_id = f"events/resume:{got_to}"
    resumed.close()
    print(f"[{backend}] 50 events missed with STREAM_RETENTION=10: {fifty_missed}")

    learn_many(server, "resume", 80)  # 61..140: past a trimming point of both logs
    resumed = open_streams(server, path, headers={"Last-Event-ID": last_id})[0]
    resumed.wait_for(lambda s: bool(s.of_type("stream-reset")), what="a stream-reset")
    (reset,) = resumed.of_type("stream-reset")
    assert reset.data == {"channels": ["events/resume"]}
    assert parse_id(reset.id) == {"events/resume": parse_id(last_id)["events/resume"] + 80}  # the current id
    assert learn(session, server, "resume", 0).status_code == 201  # then live events as usual
    resumed.wait_for(resumed.has_sequences("resume", [141]), what="the live learn after the reset")
    assert resumed.sequences("resume") == [141], resumed.summary()  # nothing older than the reset
    resumed.close()

    # An id beyond the channel's last one (a store that was emptied) is a reset too, not a 4xx.
    beyond = open_streams(server, path, headers={"Last-Event-ID": "events/resume:999999"})[0]
    beyond.wait_for(lambda s: bool(s.of_type("stream-reset")), what="a stream-reset")
    beyond.close()

    # f. Our riverapi client's EventStream goes on across a restart of the whole server.
    upload(server, "steady")
    uploads_logged(server, "steady")  # else the stream below asks for an id beyond the channel's: a stream-reset
    client = Client(server.url, quiet=True, timeout=30)
    # From the upload on (id 1 of its channel): no race between connecting and the first learns.
    stream = client.stream_events(model="steady", retry_delay=0.2, last_event_id="events/steady:1")
    stream.max_delay = 1.0  # retry often while the server restarts
    reader = ClientReader(stream)
    for i in range(3):
        assert learn(session, server, "steady", i).status_code == 201
    wait_until(lambda: reader.learns("steady") == [1, 2, 3], DELIVERED_WITHIN, "the first learns")

    server.restart()
    session = requests.Session()
    for i in range(3):  # probably before the client is back: replayed from the event log
        assert learn(session, server, "steady", i).status_code == 201
    wait_until(lambda: len(reader.learns("steady")) >= 6, DELIVERED_WITHIN, "the learns after the restart")
    assert learn(session, server, "steady", 9).status_code == 201  # and live ones
    wait_until(lambda: len(reader.learns("steady")) >= 7, DELIVERED_WITHIN, "a live learn")
    assert reader.failure is None, reader.failure
    assert reader.learns("steady") == list(range(1, 8)), [e.to_dict() for e in reader.events]
    assert [e.event for e in reader.events] == ["learn"] * 7  # housekeeping skipped, nothing else
    assert stream.connections >= 2
    assert [parse_id(e.id) for e in reader.events] == [{"events/steady": i} for i in range(2, 9)]
    reader.close()

    # The published 0.0.21 client: stream_events() yields the raw SSE lines.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "RIVER_ML_"))}
    env["PYTHONPATH"] = str(published_client_path)
    published = subprocess.Popen([sys.executable, "-c", PUBLISHED_STREAM_SCRIPT, server.url], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(json.loads(line) for line in published.stdout), daemon=True).start()
    try:
        wait_until(lambda: "event: stream-open" in lines, DELIVERED_WITHIN, "the published client's stream-open")
        # It reads lines in blocks of 512 bytes: send learns until one has come through.
        deadline = time.monotonic() + DELIVERED_WITHIN
        i = 0
        while not any(line.startswith("data: {") and '"model":"steady"' in line for line in lines):
            assert time.monotonic() < deadline and published.poll() is None, (lines, published.poll())
            assert learn(session, server, "steady", i).status_code == 201
            i += 1
            time.sleep(0.05)
    finally:
        published.kill()
        stderr = published.communicate(timeout=30)[1]
    assert "event: learn" in lines, (lines, stderr)
    data = [json.loads(line[len("data: "):]) for line in lines if line.startswith("data: {")]
    assert data[0]["model"] == "steady" and data[0]["sequence"] == 8, data
    assert any(line.startswith("id: events:") for line in lines), lines


# -- e.: authentication and access ----------------------------------------------------------------

TOKENS_SCRIPT = """
import sys, django
django.setup()
from django.core.management import call_command
for name in sys.argv[1:]:
    call_command("river_token", name, "--create-user")
"""


def river_tokens(server, *usernames: str) -> dict[str, str]:
    """Users and their API tokens, made in the server's database (one Django start for all)."""
    created = subprocess.run([sys.executable, "-c", TOKENS_SCRIPT, *usernames], cwd=EXAMPLE_PROJECT,
                             env=server.env, capture_output=True, text=True, check=True, timeout=120)
    return dict(zip(usernames, created.stdout.split()))


@pytest.mark.parametrize("backend", ["shelve", "redis"])
def test_streams_show_each_user_only_what_they_may_read(live_server_factory, backend):
    server = live_server_factory(backend, workers=2, DISABLE_AUTHENTICATION="false")
    keys = river_tokens(server, "ada", "bob")
    token = {name: {"Authorization": f"Token {key}"} for name, key in keys.items()}

    for route in ("/api/stream/events/", "/api/stream/metrics/"):
        anonymous = Subscriber(server, route)
        assert anonymous.status == 401 and anonymous.content_type.startswith("application/json")
        assert "message" in anonymous.error_body, anonymous.error_body
        assert anonymous.response.headers["WWW-Authenticate"].startswith("Bearer realm=")
    nothing_yet = Subscriber(server, "/api/stream/events/", token["bob"])
    assert nothing_yet.status == 404 and "message" in nothing_yet.error_body

    upload(server, "adas", token["ada"])
    upload(server, "bobs", token["bob"])
    for route in ("/api/stream/events/", "/api/stream/metrics/"):
        hidden = Subscriber(server, f"{route}?model=bobs", token["ada"])
        assert hidden.status == 404 and hidden.content_type.startswith("application/json"), hidden.error_body
        ghost = Subscriber(server, f"{route}?model=ghost", token["ada"])
        assert hidden.error_body["message"] == ghost.error_body["message"].replace("ghost", "bobs")

    jwt = requests.get(f"{server.url}/api/auth/token/", auth=("ada", keys["ada"]), timeout=30).json()["token"]
    adas_streams = [
        *open_streams(server, "/api/stream/events/", 2, token["ada"]),  # ada's models: events/adas
        *open_streams(server, "/api/stream/events/?model=adas", 1, {"Authorization": f"Bearer {jwt}"}),
    ]
    bobs_stream = open_streams(server, "/api/stream/events/", 1, token["bob"])[0]

    session = requests.Session()
    for i in range(3):
        assert learn(session, server, "bobs", i, token["bob"]).status_code == 201
        assert learn(session, server, "adas", i, token["ada"]).status_code == 201
    bobs_stream.wait_for(bobs_stream.has_sequences("bobs", [1, 2, 3]))
    for stream in adas_streams:
        stream.wait_for(stream.has_sequences("adas", [1, 2, 3]))
    for stream in adas_streams:
        assert {event.data["model"] for event in stream.model_events()} == {"adas"}, stream.summary()
        assert all(set(parse_id(event.id)) == {"events/adas"} for event in stream.model_events())
    assert {event.data["model"] for event in bobs_stream.model_events()} == {"bobs"}

    # Ada deletes her model: her streams following it end with a stream-error; Bob's goes on.
    assert requests.delete(f"{server.url}/api/model/adas/", headers=token["ada"], timeout=30).status_code == 200
    for stream in adas_streams:
        stream.wait_for(lambda s: s.ended, what="the end of the stream")
        kinds = [event.event for event, _ in stream.events]
        after_delete = stream.events[kinds.index("delete") + 1:]
        assert [event.event for event, _ in after_delete] == ["stream-error"], stream.summary()  # once, then the end
        (error, _), = after_delete
        assert error.data["condition"] == "forbidden" and error.data["channels"] == ["events/adas"]
    assert learn(session, server, "bobs", 9, token["bob"]).status_code == 201
    bobs_stream.wait_for(bobs_stream.has_sequences("bobs", [4]))
    assert not bobs_stream.ended and not bobs_stream.of_type("stream-error")
    bobs_stream.close()


# -- g.: Redis goes away and comes back under open streams ---------------------------------------


def start_redis(port: int, directory: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
         "--appendfsync", "always", "--dir", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    wait_until(lambda: redis.Redis(port=port, socket_timeout=2).ping(), 30, "redis-server")
    return process


def test_open_streams_survive_a_redis_restart(live_server_factory, tmp_path):
    port, directory = free_port(), tmp_path / "own-redis"
    directory.mkdir()
    own = start_redis(port, directory)
    try:
        server = live_server_factory("redis", workers=2, REDIS_URL=f"redis://127.0.0.1:{port}/0",
                                     REDIS_SOCKET_TIMEOUT="1", REDIS_SOCKET_CONNECT_TIMEOUT="1")
        upload(server, "outage")
        streams = open_streams(server, "/api/stream/events/?model=outage", 4)
        streams += open_streams(server, "/api/stream/events/", 2)
        session = requests.Session()
        acknowledged: list[int] = []

        def learned() -> bool:
            answer = learn(session, server, "outage", 0)
            if answer.status_code == 201:
                acknowledged.append(answer.json()["sequence"])
            return answer.status_code == 201

        for _ in range(5):
            assert learned()
        for stream in streams:
            stream.wait_for(stream.has_sequences("outage", acknowledged))

        own.send_signal(signal.SIGTERM)
        own.wait(30)
        statuses: list[int] = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            statuses.append(learn(session, server, "outage", 0).status_code)
            time.sleep(0.25)
        assert set(statuses) == {503}, Counter(statuses)
        print(f"while Redis was down: {len(statuses)} learns, all answered 503")

        own = start_redis(port, directory)
        wait_until(learned, 60, "a learn answering 201")
        for _ in range(4):
            assert learned()
        assert acknowledged == list(range(1, 11))  # nothing was lost with Redis (appendfsync always)
        for stream in streams:  # the same connections, not new ones
            stream.wait_for(stream.has_sequences("outage", acknowledged), what="the learns after the outage")
            assert not stream.ended
            assert sorted(stream.sequences("outage")) == acknowledged, stream.summary()
            channel = "events/outage" if "model=" in stream.path else "events"
            assert_each_once_in_id_order(stream, channel)
            assert not stream.of_type("stream-reset", "stream-error")
        for stream in streams:
            stream.close()
    finally:
        own.terminate()
        own.wait(30)


# -- h.: an unusable event log never fails a learn -------------------------------------------------


def test_a_locked_event_log_never_fails_a_learn(live_server_factory):
    server = live_server_factory("shelve", workers=2)
    upload(server, "locked")
    stream = open_streams(server, "/api/stream/events/?model=locked")[0]
    session = requests.Session()
    for i in range(2):
        assert learn(session, server, "locked", i).status_code == 201
    stream.wait_for(stream.has_sequences("locked", [1, 2]))

    events_file = Path(server.env["DJANGO_RIVER_ML_DATA_DIR"]) / "river-ml-events.sqlite3"
    assert events_file.exists()
    lock = sqlite3.connect(events_file, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # every append waits for it (5 s busy timeout), then fails
    try:
        locked_until = time.monotonic() + 6
        durations = []
        while time.monotonic() < locked_until:
            started = time.monotonic()
            assert learn(session, server, "locked", 0).status_code == 201
            durations.append(time.monotonic() - started)
            time.sleep(0.2)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    # Every learn answered while the event log was locked (it never waits for the log: tests assert no times).
    print(f"learns while the event log was locked took {min(durations):.3f}-{max(durations):.3f} s")
    during = 2 + len(durations)

    for i in range(3):
        assert learn(session, server, "locked", i).status_code == 201
    after = range(during + 1, during + 4)
    stream.wait_for(stream.has_sequences("locked", after), what="the learns after the lock")
    assert not stream.ended and not stream.of_type("stream-reset", "stream-error")
    delivered_during = sorted(set(stream.sequences("locked")) & set(range(3, during + 1)))
    print(f"while the event log was locked: {len(durations)} learns, {len(delivered_during)} of their events "
          f"delivered, the others dropped")
    assert_each_once_in_id_order(stream, "events/locked")
    stream.close()
