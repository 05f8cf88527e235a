"""Live streams against the red team's findings, in one process, on both stores.

1. A model's channels never serve the events of an earlier upload of its name (a deleted or
   replaced model's features, labels and predictions), neither replayed nor live, and they are
   purged from the event log.
2. No stored event is larger than MAX_EVENT_BYTES, whichever field is large, and one read of a
   stream loads a bounded number of bytes.
3. Last-Event-ID values are ASCII digits of bounded length, else a 400 before the stream starts.
4. A change of a model's access ends the streams that may no longer read it; a stream opened
   with a JWT ends when the token expires.
"""

from __future__ import annotations

import asyncio
import json
import time

import jwt
import pytest
from django.contrib.auth.models import User
from django.test import AsyncClient
from rest_framework.authtoken.models import Token

from django_river_ml import events
from django_river_ml.auth import JWT_ALGORITHM, JWT_ISSUER, JWT_LEEWAY_SECONDS, jwt_secret
from django_river_ml.client import DjangoClient
from django_river_ml.storage import get_store
from django_river_ml.storage.base import Access
from django_river_ml.streams import sse
from django_river_ml.streams.eventlog import get_event_log
from django_river_ml.streams.publisher import MAX_EVENT_BYTES, encode
from flavored_models import make_model
from test_streams import METRICS_STREAM, STREAM, Reader, events_of, flushed, read_events


@pytest.fixture
def streams(settings, backend):
    """Quick metrics events."""
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "STREAM_METRICS_INTERVAL_SECONDS": 0}
    return backend


@pytest.fixture
def secured(streams, settings):
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "DISABLE_AUTHENTICATION": False}
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    return streams


def upload(client: DjangoClient, flavor: str, name: str) -> str:
    return client.upload_model(make_model(flavor), flavor, name)


def incarnation_of(name: str) -> str:
    return get_store().model_info(name).incarnation


async def open_stream(route: str, model: str | None = None, last_event_id: str | None = None,
                      headers: dict | None = None, query: dict | None = None):
    headers = {"Accept": "text/event-stream", **(headers or {})}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    return await AsyncClient().get(route, {**({"model": model} if model else {}), **(query or {})}, headers=headers)


def data(event: dict) -> dict:
    return json.loads(event["data"])


# -- 1. An earlier upload's events ---------------------------------------------------------------


def test_a_deleted_model_s_events_are_not_replayed_to_the_next_upload_of_its_name(streams, river_client):
    """The red team's repro: learn, delete, upload again under the name, resume from id 0."""
    upload(river_client, "regression", "reuse-test")
    river_client.learn("reuse-test", {"secretfeature": 42}, ground_truth=3.5)
    flushed()
    river_client.delete_model("reuse-test")
    upload(river_client, "binary", "reuse-test")  # another flavor: its metrics events tell it apart
    river_client.learn("reuse-test", {"x": 1.0}, ground_truth=True)
    flushed()

    async def scenario():
        replayed = await read_events(await open_stream(STREAM, "reuse-test", "events/reuse-test:0"), 2)
        metrics = await read_events(await open_stream(METRICS_STREAM, "reuse-test", "metrics/reuse-test:0"), 1)
        return replayed, metrics

    replayed, metrics = asyncio.run(scenario())
    metrics = metrics[0]  # the first (a read may bring more)
    replayed = replayed[:2]
    assert [event["event"] for event in replayed] == ["upload", "learn"], replayed
    assert data(replayed[0])["flavor"] == "binary" and data(replayed[1])["features"] == {"x": 1.0}
    assert data(metrics)["flavor"] == "binary", metrics
    # Nor are they kept in the model's channels...
    assert [event.type for event in events_of("events/reuse-test")] == ["upload", "learn"]
    assert {json.loads(event.data)["flavor"] for event in events_of("metrics/reuse-test")} == {"binary"}
    # ...but the channel of all models keeps its history (only callers who may read every model read it).
    assert any("secretfeature" in event.data for event in events_of("events"))


def test_a_late_event_of_an_earlier_upload_is_never_served(streams, river_client):
    """A worker's publisher that was behind appends an event of the deleted upload after the new upload."""
    upload(river_client, "regression", "late")
    old = incarnation_of("late")
    river_client.delete_model("late")
    upload(river_client, "regression", "late")
    flushed()

    async def scenario():
        live = Reader(await open_stream(STREAM, "late"))
        assert [event["event"] for event in await live.until(1)] == ["stream-open"]
        await asyncio.sleep(0.2)  # it waits for live events now
        events.emit("learn", {"model": "late", "sequence": 7, "features": {"secretfeature": 1.0}}, incarnation=old)
        await asyncio.to_thread(flushed)
        await asyncio.to_thread(river_client.learn, "late", {"x": 2.0}, ground_truth=1.0)
        got = await live.until(2)
        replayed = await read_events(await open_stream(STREAM, "late", "events/late:0"), 2)
        return got[1:], replayed

    live, replayed = asyncio.run(scenario())
    assert [event["event"] for event in live] == ["learn"] and data(live[0])["features"] == {"x": 2.0}, live
    assert [event["event"] for event in replayed] == ["upload", "learn"], replayed
    assert data(replayed[1])["features"] == {"x": 2.0}
    assert "secretfeature" not in json.dumps(live + replayed)
    assert any("secretfeature" in event.data for event in events_of("events/late"))  # kept, never served
    assert all(event.incarnation == incarnation_of("late") for event in events_of("events/late")
               if "secretfeature" not in event.data)


def test_a_stream_goes_on_across_a_replace_and_resumes_across_it(streams, river_client):
    """Ids go on increasing per channel: a client following the model reads the new upload on, no stream-reset."""
    upload(river_client, "regression", "replaced")
    river_client.learn("replaced", {"secretfeature": 1.0}, ground_truth=1.0)
    flushed()  # events/replaced: 1 upload, 2 learn

    async def scenario():
        live = Reader(await open_stream(STREAM, "replaced"))
        await live.until(1)
        await asyncio.sleep(0.2)
        await asyncio.to_thread(upload, river_client, "binary", "replaced")
        await asyncio.to_thread(river_client.learn, "replaced", {"x": 2.0}, ground_truth=True)
        got = await live.until(3)
        after_learn = await read_events(await open_stream(STREAM, "replaced", "events/replaced:2"), 2)
        before_learn = await read_events(await open_stream(STREAM, "replaced", "events/replaced:1"), 2)
        return got[1:], after_learn, before_learn, live.task.done()

    live, after_learn, before_learn, ended = asyncio.run(scenario())
    expected = [("upload", "events/replaced:3"), ("learn", "events/replaced:4")]
    assert [(event["event"], event["id"]) for event in live] == expected, live
    assert not ended
    # Resuming from before the replace: the new upload on, its predecessor's learn skipped, no stream-reset.
    for resumed in (after_learn, before_learn):
        assert [(event["event"], event["id"]) for event in resumed] == expected, resumed
    assert data(before_learn[0])["flavor"] == "binary"


# -- 2. Bytes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["ground_truth", "label", "identifier", "features", "prediction", "metrics"])
def test_every_encoded_event_is_at_most_max_event_bytes(field):
    large = "x" * (3 * MAX_EVENT_BYTES) if field != "features" else {f"f{i}": float(i) for i in range(20_000)}
    body = encode({"model": "m", "sequence": 3, field: large, "time": 1.5})
    assert len(body.encode()) <= MAX_EVENT_BYTES
    assert json.loads(body) == {"model": "m", "sequence": 3, "time": 1.5, "truncated": True, "omitted": [field]}
    # Several values each under the limit but over it together: the largest go first, until it fits.
    body = encode({"model": "m", "label": "l" * 40_000, "features": {"a": "f" * 30_000}, "identifier": "i" * 20_000})
    assert len(body) <= MAX_EVENT_BYTES
    assert json.loads(body) == {"model": "m", "features": {"a": "f" * 30_000}, "identifier": "i" * 20_000,
                                "truncated": True, "omitted": ["label"]}
    assert json.loads(encode({"model": "m" * 100_000})) == {"truncated": True, "omitted": ["model"]}


def test_a_huge_label_is_left_out_of_every_stored_event(streams, river_client):
    """A multiclass model takes a 2.4 MB string label: no event of the log carries it."""
    name = upload(river_client, "multiclass", "huge-labels")
    label = "L" * 2_400_000
    river_client.predict(name, {"x": 1.0}, identifier="p1")  # before the model knows the label: a small prediction
    river_client.label(label, "p1", name)
    river_client.learn(name, {"x": 1.0}, ground_truth=label)  # its prediction names the label too
    flushed()
    for channel in ("events", "events/huge-labels", "metrics", "metrics/huge-labels"):
        stored = events_of(channel)
        assert stored and all(len(event.data.encode()) <= MAX_EVENT_BYTES for event in stored), channel
    by_type = {event.type: json.loads(event.data) for event in events_of("events/huge-labels")}
    assert "ground_truth" in by_type["learn"]["omitted"] and by_type["learn"]["features"] == {"x": 1.0}
    assert by_type["learn"]["truncated"] is True and by_type["learn"]["sequence"] == 2
    assert by_type["label"]["omitted"] == ["label"] and by_type["label"]["identifier"] == "p1"


def test_one_read_of_a_stream_loads_a_bounded_number_of_bytes(streams, monkeypatch):
    from django_river_ml.streams.adapters import READ_BYTES

    log = get_event_log()
    blob = json.dumps({"model": "x", "blob": "b" * 60_000})
    log.append([("events", "learn", blob)] * 40)
    page, more = log.read_page("events", 0, limit=100, max_bytes=256 * 1024)
    assert more and 1 <= len(page) <= 4 and sum(len(event.data) for event in page) <= 256 * 1024
    assert log.read_page("events", 0, limit=100, max_bytes=1)[0][0].id == 1  # one event at least
    assert [event.id for event in log.read_page("events", 38, limit=100, max_bytes=256 * 1024)[0]] == [39, 40]

    loads = []
    read_page = type(log).read_page

    def measured(self, *args, **kwargs):
        found, more = read_page(self, *args, **kwargs)
        loads.append(sum(len(event.data) for event in found))
        return found, more

    monkeypatch.setattr(type(log), "read_page", measured)

    async def scenario():
        return await read_events(await open_stream(STREAM, last_event_id="events:0"), 40)

    replayed = asyncio.run(scenario())
    assert [event["id"] for event in replayed] == [f"events:{i}" for i in range(1, 41)]
    assert len(loads) >= 3 and max(loads) <= READ_BYTES, loads


# -- 3. Last-Event-ID ----------------------------------------------------------------------------


@pytest.mark.parametrize("last_id", ["²", "١٢", "１", "1" * 19, "1" * 23, "9" * 5000])
@pytest.mark.parametrize("where", ["header", "query"])
def test_last_event_ids_are_ascii_digits_of_bounded_length(api, last_id, where):
    value = f"events:{last_id}"
    headers = {"HTTP_LAST_EVENT_ID": value} if where == "header" else {}
    response = api.get(STREAM, {"lastEventId": value} if where == "query" else {}, HTTP_ACCEPT="text/event-stream",
                       **headers)
    assert response.status_code == 400 and response["Content-Type"] == "application/json", response.content[:200]
    message = response.json()["message"]
    assert "not an event id" in message and len(message) < 300


def test_a_bad_last_event_id_is_refused_before_the_stream_starts_and_a_long_one_is_a_reset(streams):
    async def scenario():
        refused = await open_stream(STREAM, last_event_id="events:²")
        furthest = await open_stream(STREAM, last_event_id="events:" + "9" * 18)
        return refused, await read_events(furthest, 1)

    refused, (reset, *_) = asyncio.run(scenario())
    assert refused.status_code == 400 and refused["Content-Type"] == "application/json"
    assert reset["event"] == "stream-reset"


# -- 4. Access changes and expiring tokens --------------------------------------------------------


def set_access(client: DjangoClient, name: str, **changes) -> None:
    """``client.set_access``, and its ``access`` event (emitted here for a client.py that does not emit it)."""
    heard = []

    def hear(sender, event, data, **kwargs):
        if event == "access":
            heard.append(data)

    events.river_event.connect(hear)
    try:
        client.set_access(name, **changes)
    finally:
        events.river_event.disconnect(hear)
    if not heard:
        events.emit("access", {"model": name}, incarnation=incarnation_of(name))


def token_of(user) -> dict:
    return {"Authorization": f"Token {Token.objects.get(user=user).key}"}


async def until_ended(reader: Reader, timeout: float = 10.0) -> list[dict]:
    return await reader.until(10_000, timeout=timeout)


def assert_ended_with(reader_events: list[dict], ended: bool, condition: str) -> dict:
    assert ended, reader_events
    assert reader_events[-1]["event"] == "stream-error", reader_events
    error = data(reader_events[-1])
    assert error["condition"] == condition, error
    return error


@pytest.mark.django_db(transaction=True)
def test_unsharing_a_model_ends_the_streams_of_who_may_no_longer_read_it(secured):
    alice, bob = User.objects.create_user("alice"), User.objects.create_user("bob")
    as_alice = DjangoClient(user=alice)
    upload(as_alice, "regression", "shared")
    as_alice.set_access("shared", users=["bob"])
    flushed()

    as_bob, as_owner = token_of(bob), token_of(alice)

    async def scenario():
        bobs = [Reader(await open_stream(route, "shared", headers=as_bob)) for route in (STREAM, METRICS_STREAM)]
        alices = Reader(await open_stream(STREAM, "shared", headers=as_owner))
        for reader in (*bobs, alices):
            assert [event["event"] for event in await reader.until(1)] == ["stream-open"]
        await asyncio.sleep(0.2)
        await asyncio.to_thread(set_access, as_alice, "shared", users=[])
        ended = [(await until_ended(reader), reader.task.done()) for reader in bobs]
        await asyncio.to_thread(as_alice.learn, "shared", {"x": 1.0}, ground_truth=1.0)
        alice_got = await alices.until(3)
        return ended, alice_got, alices.task.done()

    ended, alice_got, alice_ended = asyncio.run(scenario())
    for (got, done), channel in zip(ended, ("events/shared", "metrics/shared")):
        error = assert_ended_with(got, done, "forbidden")
        assert error["channels"] == [channel]
        assert {event["event"] for event in got[1:-1]} <= {"access"}, got
    # The owner's stream goes on: it heard of the change, then learns as usual.
    assert [event["event"] for event in alice_got[1:]] == ["access", "learn"] and not alice_ended


@pytest.mark.django_db(transaction=True)
def test_giving_a_model_to_another_owner_ends_its_former_owner_s_streams(secured):
    alice, staff = User.objects.create_user("alice"), User.objects.create_user("root", is_staff=True)
    User.objects.create_user("carol")
    upload(DjangoClient(user=alice), "regression", "given")
    flushed()
    headers = token_of(alice)

    async def scenario():
        reader = Reader(await open_stream(STREAM, "given", headers=headers))
        await reader.until(1)
        await asyncio.sleep(0.2)
        await asyncio.to_thread(set_access, DjangoClient(user=staff), "given", owner="carol")
        return await until_ended(reader), reader.task.done()

    got, ended = asyncio.run(scenario())
    assert_ended_with(got, ended, "forbidden")


@pytest.mark.django_db(transaction=True)
def test_a_model_shared_with_a_restricted_stream_s_caller_is_offered_to_it(secured):
    alice, carol = User.objects.create_user("alice"), User.objects.create_user("carol")
    upload(DjangoClient(user=alice), "regression", "shared")
    upload(DjangoClient(user=carol), "regression", "carols")
    flushed()
    headers = token_of(carol)

    async def scenario():
        reader = Reader(await open_stream(STREAM, headers=headers))  # every model carol may read
        await reader.until(1)
        await asyncio.sleep(0.2)
        await asyncio.to_thread(set_access, DjangoClient(user=alice), "shared", users=["carol"])
        return await until_ended(reader), reader.task.done()

    got, ended = asyncio.run(scenario())
    assert assert_ended_with(got, ended, "models-changed")["model"] == "shared"


@pytest.mark.django_db(transaction=True)
def test_streams_check_access_again_by_themselves(secured, monkeypatch):
    """An access change no event told of (made in the store directly, or its event dropped) ends a stream too."""
    monkeypatch.setattr(sse, "ACCESS_RECHECK_SECONDS", 0.3)
    alice, bob = User.objects.create_user("alice"), User.objects.create_user("bob")
    as_alice = DjangoClient(user=alice)
    upload(as_alice, "regression", "shared")
    as_alice.set_access("shared", users=["bob"])
    flushed()
    headers = token_of(bob)

    async def scenario():
        reader = Reader(await open_stream(STREAM, "shared", headers=headers))
        await reader.until(1)
        info = get_store().model_info("shared")
        get_store().set_access("shared", info.incarnation, Access(owner=info.access.owner), max_owned=None)
        return await until_ended(reader, timeout=5), reader.task.done()

    got, ended = asyncio.run(scenario())
    assert_ended_with(got, ended, "forbidden")


@pytest.mark.django_db(transaction=True)
def test_a_stream_opened_with_a_jwt_ends_when_the_token_expires(secured):
    bob = User.objects.create_user("bob")
    upload(DjangoClient(user=bob), "regression", "bobs")
    flushed()
    now = int(time.time())
    # Accepted (within the leeway for clocks) for 4 more seconds.
    claims = {"sub": "bob", "iat": now - 60, "exp": now - JWT_LEEWAY_SECONDS + 4, "iss": JWT_ISSUER}
    headers = {"Authorization": f"Bearer {jwt.encode(claims, jwt_secret(), algorithm=JWT_ALGORITHM)}"}

    async def scenario():
        reader = Reader(await open_stream(STREAM, "bobs", headers=headers))
        got = await until_ended(reader, timeout=15)
        again = await open_stream(STREAM, "bobs", headers=headers)
        return got, reader.task.done(), again.status_code

    got, ended, again = asyncio.run(scenario())
    assert_ended_with(got, ended, "token-expired")
    assert [event["event"] for event in got] == ["stream-open", "stream-error"]
    assert again == 401  # the client's reconnection is told to get a new token


# -- Against a live multi-worker server, as the red team found them ---------------------------------


@pytest.mark.live
@pytest.mark.parametrize("backend", ["shelve", "redis"])
def test_a_reused_name_and_bad_ids_on_a_live_server(live_server_factory, backend):
    import dill
    import requests
    from river import linear_model, preprocessing

    from test_streams_live import OPEN, Subscriber, open_streams, upload

    server = live_server_factory(backend, workers=2)
    try:
        upload(server, "reuse-test")
        learned = requests.post(f"{server.url}/api/learn/", timeout=60, json={
            "model": "reuse-test", "features": {"secretfeature": 42}, "ground_truth": 3.5})
        assert learned.status_code == 201, learned.text
        assert requests.delete(f"{server.url}/api/model/reuse-test/", timeout=30).status_code == 200
        # Another flavor: its metrics events tell it apart.
        binary = dill.dumps(preprocessing.StandardScaler() | linear_model.LogisticRegression())
        uploaded = requests.post(f"{server.url}/api/model/binary/reuse-test/", data=binary, timeout=60)
        assert uploaded.status_code == 201, uploaded.text
        learned = requests.post(f"{server.url}/api/learn/", timeout=60, json={
            "model": "reuse-test", "features": {"x": 1.0}, "ground_truth": True})
        assert learned.status_code == 201, learned.text

        for route, channel in (("events", "events/reuse-test"), ("metrics", "metrics/reuse-test")):
            stream = open_streams(server, f"/api/stream/{route}/?model=reuse-test",
                                  headers={"Last-Event-ID": f"{channel}:0"})[0]
            if route == "events":
                stream.wait_for(lambda s: any(e.data.get("features") == {"x": 1.0} for e in s.of_type("learn")),
                                what="the new upload's learn")
                assert [e.event for e in stream.model_events()] == ["upload", "learn"], stream.summary()
            else:
                stream.wait_for(lambda s: any(e.data["sequence"] == 1 for e in s.of_type("metrics")),
                                what="the new upload's metrics")
                assert {e.data["flavor"] for e in stream.of_type("metrics")} == {"binary"}, stream.summary()
            assert not any("secretfeature" in json.dumps(e.data) for e in stream.model_events()), stream.summary()
            stream.close()

        for last_id in ("²", "1" * 23, "9" * 5000):
            refused = Subscriber(server, "/api/stream/events/", headers={"Last-Event-ID": f"events:{last_id}"})
            assert refused.status == 400 and refused.content_type.startswith("application/json"), refused.error_body
        assert "Exception in ASGI application" not in server.log_text()
    finally:
        while OPEN:
            OPEN.pop().close()
