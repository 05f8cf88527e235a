"""Live streams in one process, on both stores: the event log, the publisher, the stream routes' answers.

What crosses processes (every worker's events to every subscriber, resuming across a restart,
a Redis outage) is tested against real multi-worker servers in tests/test_streams_live.py.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from django.contrib.auth.models import User
from django.test import AsyncClient
from django_eventstream.storage import EventDoesNotExist
from rest_framework.authtoken.models import Token

from django_river_ml.client import DjangoClient
from django_river_ml.streams import publisher as publisher_module
from django_river_ml.streams.adapters import EventStorage, may_read
from django_river_ml.streams.eventlog import (
    ALREADY_SENT,
    CLAIMED,
    TOO_SOON,
    TRIM_EVERY,
    SWEEP_EVERY,
    RedisEventLog,
    get_event_log,
)
from django_river_ml.streams.publisher import MAX_EVENT_BYTES, get_publisher
from flavored_models import examples, make_model

STREAM = "/api/stream/events/"
METRICS_STREAM = "/api/stream/metrics/"


def wait_for(check, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def events_of(channel, after=0):
    return get_event_log().read(channel, after, limit=10_000)


@pytest.fixture
def streams(settings, backend):
    """Quick metrics events, and a publisher that has sent everything before each check."""
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "STREAM_METRICS_INTERVAL_SECONDS": 0}
    return backend


def flushed():
    publisher = get_publisher()
    assert publisher.flushed(10), (publisher.queue.unfinished_tasks, publisher._changed, publisher.dropped)


# -- The event log ------------------------------------------------------------------------------


def test_ids_increase_per_channel_and_reads_resume_after_an_id(backend):
    log = get_event_log()
    appended = log.append([("events", "learn", '{"n": 1}'), ("events/a", "learn", '{"n": 1}'),
                           ("events", "predict", '{"n": 2}')])
    assert [(e.channel, e.id) for e in appended] == [("events", 1), ("events/a", 1), ("events", 2)]
    assert [(e.id, e.type, json.loads(e.data)) for e in log.read("events", 0)] == [
        (1, "learn", {"n": 1}), (2, "predict", {"n": 2})]
    assert [e.id for e in log.read("events", 1)] == [2]
    assert log.read("events", 2) == []
    assert [e.id for e in log.read("events", 0, limit=1)] == [1]
    assert (log.current_id("events"), log.current_id("events/a"), log.current_id("events/b")) == (2, 1, 0)
    assert log.read("events/b", 0) == []


def test_retention_trims_old_events_and_asking_for_them_is_a_reset(backend, settings):
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "STREAM_RETENTION": 10}
    log = get_event_log()
    total = 2 * TRIM_EVERY
    log.append([("events", "learn", "{}")] * total)
    kept = log.read("events", total - 10)
    assert [e.id for e in kept] == list(range(total - 9, total + 1))
    with pytest.raises(EventDoesNotExist) as missing:
        log.read("events", 5)
    assert missing.value.current_id == total
    # An id beyond the last (a store that was emptied) is a reset too, never a wait for ids that come later.
    with pytest.raises(EventDoesNotExist):
        log.read("events", total + 5)


def test_events_go_after_stream_retention_seconds(backend, settings):
    """So the channels of deleted models do not stay forever."""
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "STREAM_RETENTION_SECONDS": 1}
    log = get_event_log()
    log.append([("events/deleted-model", "delete", "{}")])
    if isinstance(log, RedisEventLog):  # the channel goes, counter and all: a resuming client gets a reset
        assert all(0 < log.redis.pttl(key) <= 1000 for key in log._keys("events/deleted-model"))
        wait_for(lambda: not log.redis.exists(*log._keys("events/deleted-model")), timeout=5)
        with pytest.raises(EventDoesNotExist):
            log.read("events/deleted-model", 1)
    else:  # the events go (swept once in SWEEP_EVERY appends); the channel's ids go on
        time.sleep(1.1)
        log.append([("events/kept", "learn", "{}")] * SWEEP_EVERY)
        with pytest.raises(EventDoesNotExist):
            log.read("events/deleted-model", 0)
        assert [e.id for e in log.read("events/kept", SWEEP_EVERY - 1)] == [SWEEP_EVERY]  # new events stay


def test_a_channel_s_ids_survive_a_lost_counter_on_redis(backend):
    log = get_event_log()
    if not isinstance(log, RedisEventLog):
        pytest.skip("Redis only: the counter and the stream are two keys there")
    log.append([("events", "learn", "{}")] * 3)
    log.redis.delete(log._keys("events")[0])
    (event,) = log.append([("events", "learn", "{}")])
    assert event.id == 4 and [e.id for e in log.read("events", 0)] == [1, 2, 3, 4]


def test_claims_send_each_state_once_and_not_too_often(backend):
    log = get_event_log()
    assert log.claim("metrics/m/x", 1, 60) == CLAIMED
    assert log.claim("metrics/m/x", 1, 60) == ALREADY_SENT  # that state was sent
    assert log.claim("metrics/m/x", 2, 60) == TOO_SOON  # newer, but within the interval
    assert log.claim("metrics/m/y", 2, 60) == CLAIMED  # another incarnation: its own claim
    assert log.claim("metrics/n/x", 0, 0) == CLAIMED
    assert log.claim("metrics/n/x", 1, 0) == CLAIMED  # no interval: every newer state


def test_django_eventstream_storage_reads_the_event_log(river_client):
    river_client.upload_model(make_model("regression"), "regression", "m")  # a model's channel serves its events
    flushed()  # the upload's event is 1
    storage = EventStorage()
    event = storage.append_event("events/m", "learn", "{}")
    assert event.id == 2 and storage.get_current_id("events/m") == 2
    assert [e.id for e in storage.get_events("events/m", "1")] == [2]


# -- The publisher ------------------------------------------------------------------------------


def test_every_operation_reaches_its_model_channel_and_the_all_models_channel(streams, river_client):
    before = get_event_log().current_id("events")
    name = river_client.upload_model(make_model("binary"), "binary", "streamed")
    x, y = examples("binary", 1)[0]
    river_client.learn(name, x, ground_truth=y)
    identifier = river_client.predict(name, x)["identifier"]
    river_client.label(y, identifier, name)
    flushed()
    assert [e.type for e in events_of("events/streamed")] == ["upload", "learn", "predict", "label"]
    river_client.delete_model(name)
    flushed()
    mine = [e for e in events_of("events", before) if json.loads(e.data)["model"] == name]
    assert [e.type for e in mine] == ["upload", "learn", "predict", "label", "delete"]
    # The model's own channel is purged of the deleted model's events (tests/test_stream_security.py).
    assert [e.type for e in events_of("events/streamed")] == ["delete"]
    learn = json.loads(mine[1].data)
    assert learn["sequence"] == 1 and learn["features"] == x and learn["ground_truth"] == y
    assert abs(learn["time"] - time.time()) < 60


def test_metrics_events_carry_the_state_after_the_last_change(streams, river_client):
    name = river_client.upload_model(make_model("regression"), "regression", "measured")
    rows = examples("regression", 5)
    for x, y in rows:
        river_client.learn(name, x, ground_truth=y)
    flushed()
    last = json.loads(events_of("metrics/measured")[-1].data)
    assert last["sequence"] == 5 and last["flavor"] == "regression"
    assert last["metrics"] == river_client.metrics(name)
    assert last["stats"]["learn"]["n_calls"] == 5
    assert [e.id for e in events_of("metrics")][-1] == get_event_log().current_id("metrics")


def test_metrics_events_are_coalesced(backend, settings, river_client):
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "STREAM_METRICS_INTERVAL_SECONDS": 30}
    name = river_client.upload_model(make_model("regression"), "regression", "coalesced")
    flushed()
    assert len(events_of("metrics/coalesced")) == 1  # the upload's
    for x, y in examples("regression", 20):
        river_client.learn(name, x, ground_truth=y)
    time.sleep(0.5)
    assert len(events_of("metrics/coalesced")) == 1  # the next may go 30 s after the first


def test_a_large_event_goes_without_its_features(streams, river_client):
    name = river_client.upload_model(make_model("regression"), "regression", "wide")
    features = {f"feature_{i}": float(i) for i in range(5000)}
    river_client.learn(name, features, ground_truth=1.0)
    flushed()
    (upload, learn) = events_of("events/wide")
    assert len(learn.data) < MAX_EVENT_BYTES
    data = json.loads(learn.data)
    assert data["truncated"] is True and "features" not in data and data["sequence"] == 1


def test_a_broken_event_log_drops_events_and_never_fails_a_call(backend, settings, tmp_path, river_client):
    if backend != "shelve":
        pytest.skip("the Redis event log is the model store: when it is down, learns fail with it (503)")
    shelve_path = tmp_path / "broken" / "store.sqlite3"
    (tmp_path / "broken" / "store-events.sqlite3").mkdir(parents=True)  # a directory: SQLite cannot open it
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "SHELVE_PATH": str(shelve_path)}
    dropped = get_publisher().dropped
    name = river_client.upload_model(make_model("regression"), "regression", "unheard")
    assert river_client.learn(name, {"x": 1.0}, ground_truth=2.0)["sequence"] == 1
    flushed()
    assert get_publisher().dropped >= dropped + 2


def test_a_full_queue_drops_and_counts_instead_of_waiting(backend):
    publisher = publisher_module.Publisher(queue_size=1)
    publisher.queue.put_nowait(("learn", "m", "{}", "", 0))  # the thread may take it; fill again
    for _ in range(50):
        publisher.put("learn", {"model": "m"})
    assert publisher.dropped >= 48


# -- Who reads what -----------------------------------------------------------------------------


@pytest.fixture
def secured(backend, settings):
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "DISABLE_AUTHENTICATION": False}
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    return backend


@pytest.mark.django_db
def test_channels_follow_the_access_rules(secured):
    alice, bob = User.objects.create_user("alice"), User.objects.create_user("bob")
    staff = User.objects.create_user("root", is_staff=True)
    DjangoClient(user=alice).upload_model(make_model("regression"), "regression", "alices")
    assert may_read(alice, "events/alices") and may_read(alice, "metrics/alices")
    assert not may_read(bob, "events/alices") and not may_read(None, "events/alices")
    assert not may_read(alice, "events") and may_read(staff, "events") and may_read(staff, "metrics/alices")
    assert not may_read(staff, "other") and not may_read(staff, "events-x")


@pytest.mark.django_db
def test_stream_routes_need_credentials_and_hide_other_users_models(secured, api):
    alice, bob = User.objects.create_user("alice"), User.objects.create_user("bob")
    DjangoClient(user=alice).upload_model(make_model("regression"), "regression", "alices")
    for route in (STREAM, METRICS_STREAM):
        response = api.get(route, HTTP_ACCEPT="text/event-stream")
        assert response.status_code == 401 and response["Content-Type"] == "application/json"
        assert "WWW-Authenticate" in response
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get(user=bob).key}")
    response = api.get(STREAM, {"model": "alices"})
    assert response.status_code == 404 and response.json() == {"message": "No model named 'alices'."}
    response = api.get(STREAM)  # bob may read no model: nothing to follow
    assert response.status_code == 404 and "no model" in response.json()["message"]
    api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get(user=alice).key}")
    response = api.get(STREAM, HTTP_ACCEPT="text/event-stream")
    assert response.status_code == 501  # everything checked; this test server runs WSGI


@pytest.mark.parametrize(("query", "headers", "status", "message"), [
    ({"model": "missing"}, {}, 404, "No model named 'missing'."),
    ({"model": "../etc"}, {}, 400, "Model names may use"),
    ({"model": ["m", "missing"]}, {}, 404, "No model named 'missing'."),
    ({"es-meta": "x"}, {}, 400, "Unknown parameter 'es-meta'."),
    ({"recover": "true"}, {}, 400, "Unknown parameter 'recover'."),
    ({"link": "next"}, {}, 400, "Unknown parameter 'link'."),
    ({}, {"HTTP_LAST_EVENT_ID": "error"}, 400, "Cannot resume this stream"),
    ({}, {"HTTP_LAST_EVENT_ID": "no-colon"}, 400, "Cannot resume this stream"),
    ({}, {"HTTP_LAST_EVENT_ID": "a:b:c"}, 400, "Cannot resume this stream"),
    ({}, {"HTTP_LAST_EVENT_ID": "events:x"}, 400, "which is not an event id"),
    ({}, {"HTTP_LAST_EVENT_ID": "events:-1"}, 400, "which is not an event id"),
    ({"lastEventId": "events:1e3"}, {}, 400, "which is not an event id"),
    ({}, {"HTTP_LAST_EVENT_ID": "events:12"}, 501, "need an ASGI server"),
    ({"model": ["m", "m"]}, {"HTTP_ACCEPT": "application/json"}, 501, "need an ASGI server"),
])
def test_bad_stream_requests_get_json_errors(api, river_client, query, headers, status, message):
    river_client.upload_model(make_model("regression"), "regression", "m")
    response = api.get(STREAM, query, **{"HTTP_ACCEPT": "text/event-stream", **headers})
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    assert message in response.json()["message"]


def test_a_stream_may_follow_at_most_stream_max_models(api, river_client, settings):
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "STREAM_MAX_MODELS": 2}
    response = api.get(STREAM, {"model": ["a", "b", "c"]})
    assert response.status_code == 400 and "STREAM_MAX_MODELS" in response.json()["message"]


def test_stream_routes_take_only_get(api):
    for method in ("post", "put", "delete"):
        response = getattr(api, method)(STREAM)
        assert response.status_code == 405 and response["Content-Type"] == "application/json"


# -- The stream itself, under ASGI in this process ----------------------------------------------


async def read_events(response, count: int, timeout: float = 10.0, skip=("stream-open", "keep-alive")) -> list[dict]:
    """The next ``count`` events of a streaming response (comments and ``skip`` skipped).

    Under the test client a stream starts (registers its listener, reads the log) only when it
    is first read: read its ``stream-open`` before acting on what it should see.
    """
    found, buffer = [], ""
    iterator = aiter(response.streaming_content)
    deadline = time.monotonic() + timeout
    while len(found) < count:
        chunk = await asyncio.wait_for(anext(iterator), max(deadline - time.monotonic(), 0.01))
        buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
            if "event" in fields and fields["event"] not in skip:
                found.append(fields)
    return found


def test_the_stream_replays_from_last_event_id_then_sends_live_events(streams, river_client):
    name = river_client.upload_model(make_model("regression"), "regression", "live")
    for x, y in examples("regression", 3):
        river_client.learn(name, x, ground_truth=y)
    flushed()

    async def scenario():
        response = await AsyncClient().get(STREAM, {"model": name},
                                           headers={"Last-Event-ID": "events/live:2", "Accept": "text/event-stream"})
        assert response.status_code == 200 and response["Content-Type"] == "text/event-stream"
        replayed = await read_events(response, 2)
        await asyncio.to_thread(river_client.learn, name, {"x": 1.0}, ground_truth=3.0)
        (live,) = await read_events(response, 1)
        return replayed, live

    replayed, live = asyncio.run(scenario())
    assert [(e["event"], e["id"]) for e in replayed] == [("learn", "events/live:3"), ("learn", "events/live:4")]
    assert [json.loads(e["data"])["sequence"] for e in replayed] == [2, 3]
    assert live["id"] == "events/live:5" and json.loads(live["data"])["sequence"] == 4


class Reader:
    """Reads a streaming response as a server would, continuously, into ``events`` (stream-open included)."""

    def __init__(self, response):
        self.response, self.events = response, []
        self.task = asyncio.ensure_future(self._read())

    async def _read(self):
        try:
            while True:
                self.events += await read_events(self.response, 1, timeout=3600, skip=("keep-alive",))
        except StopAsyncIteration:
            pass

    async def until(self, count: int, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.events) < count and not self.task.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.events


@pytest.mark.django_db(transaction=True)
def test_a_restricted_stream_learns_of_a_new_model_and_leaves_a_deleted_one(secured):
    alice, bob = User.objects.create_user("alice"), User.objects.create_user("bob")
    as_alice, as_bob = DjangoClient(user=alice), DjangoClient(user=bob)
    as_alice.upload_model(make_model("regression"), "regression", "first")
    as_bob.upload_model(make_model("regression"), "regression", "bobs")
    headers = {"Authorization": f"Token {Token.objects.get(user=alice).key}", "Accept": "text/event-stream"}
    flushed()  # the uploads' events are in the log before the streams start (else they come as live ones)

    async def scenario():
        following_all = Reader(await AsyncClient().get(STREAM, headers=headers))
        following_first = Reader(await AsyncClient().get(STREAM, {"model": "first"}, headers=headers))
        for reader in (following_all, following_first):
            assert [e["event"] for e in await reader.until(1)] == ["stream-open"]
        await asyncio.sleep(0.2)  # both wait for live events now
        await asyncio.to_thread(as_bob.upload_model, make_model("regression"), "regression", "bobs-second")
        await asyncio.to_thread(as_alice.upload_model, make_model("regression"), "regression", "second")
        changed = await following_all.until(2)
        await asyncio.to_thread(as_alice.delete_model, "first")
        gone = await following_first.until(3)
        # Each stream ends after its stream-error: its reader may see the end a moment after the event.
        await asyncio.wait([following_all.task, following_first.task], timeout=10)
        return changed[1:], gone[1:], following_all.task.done(), following_first.task.done()

    changed, gone, *ended = asyncio.run(scenario())
    # Bob's upload is not for alice; her own new model ends the stream so that she follows it too.
    assert [e["event"] for e in changed] == ["stream-error"]
    assert json.loads(changed[0]["data"]) == {"condition": "models-changed", "model": "second",
                                              "text": "Model second is new to you: connect again to follow it too."}
    # The deleted model's stream gets the delete, then ends: reconnecting would be a 404.
    assert [e["event"] for e in gone] == ["delete", "stream-error"]
    assert json.loads(gone[1]["data"])["condition"] == "forbidden"
    assert ended == [True, True]


def test_the_system_check_refuses_another_eventstream_storage_or_channel_manager(settings):
    from django.core import checks

    def errors():
        return [e.id for e in checks.run_checks() if e.id == "django_river_ml.E004"]

    assert errors() == []
    settings.EVENTSTREAM_STORAGE_CLASS = "django_eventstream.storage.DjangoModelStorage"
    assert errors() == ["django_river_ml.E004"]
    settings.EVENTSTREAM_STORAGE_CLASS = "django_river_ml.streams.adapters.EventStorage"
    settings.EVENTSTREAM_CHANNELMANAGER_CLASS = "no.such.Manager"
    assert errors() == ["django_river_ml.E004"]


@pytest.mark.live
def test_open_streams_end_cleanly_when_the_server_stops(live_server_factory):
    """The app's worker ends open streams first: the response completes (its final chunk is sent) instead of
    the worker being killed at gunicorn's graceful timeout with the stream still open."""
    import threading

    import requests

    server = live_server_factory("shelve", workers=2)
    outcome = {}

    def follow():
        try:
            with requests.get(server.url + STREAM, stream=True, timeout=(5, 60)) as response:
                outcome["status"] = response.status_code
                outcome["lines"] = [line for line in response.iter_lines() if line]
            outcome["ended"] = "cleanly"
        except requests.RequestException as error:
            outcome["ended"] = repr(error)

    reader = threading.Thread(target=follow)
    reader.start()
    wait_for(lambda: "status" in outcome or "ended" in outcome, timeout=30)
    time.sleep(0.5)  # the stream is open and waiting
    server.stop()
    reader.join(60)
    assert outcome["status"] == 200 and outcome["ended"] == "cleanly", (outcome, server.log_text()[-3000:])
    assert b"event: stream-open" in outcome["lines"]
    assert server.process.returncode == 0, server.log_text()[-2000:]
