"""Idempotency keys: a retried learn (single, batch, NDJSON, label) is learned once, on both stores.

What a model has learned is read back from its own state: ``RunningMean`` counts the examples it
learned, a ``StandardScaler`` counts each feature it saw.
"""

from __future__ import annotations

import json
import pickle
import threading
import time

import pytest
import requests

from django_river_ml.client import DjangoClient
from django_river_ml.exceptions import InvalidInput, ModelFailed, NotSupported
from django_river_ml.storage.base import Store
from django_river_ml.storage.shelve import ShelveStore
from example_project.custom_models import Fragile, RunningMean
from test_riverapi_client import answering, fake_server
from test_schema import get_schema

LEARN, LABEL, PREDICT = "/api/learn/", "/api/label/", "/api/predict/"
HEADER = "Idempotency-Key"


def learned(client: DjangoClient, model: str) -> int:
    """How many examples the model has learned, from its state (RunningMean counts them)."""
    replica = client.registry.replica(model)
    with replica.lock:
        return int(replica.model.mean.n)


def rows(keys, start: int = 0) -> list[dict]:
    return [{"features": {"x": i}, "ground_truth": float(i), "idempotency_key": key}
            for i, key in enumerate(keys, start=start)]


@pytest.fixture
def counted(river_client):
    river_client.upload_model(RunningMean(), "custom", "counted")
    return "counted"


# DjangoClient ---------------------------------------------------------------------------------


def test_a_retried_learn_is_acknowledged_again_and_learned_once(river_client, counted):
    first = river_client.learn(counted, {"x": 1}, 1.0, idempotency_key="order-17")
    again = river_client.learn(counted, {"x": 1}, 1.0, idempotency_key="order-17")
    assert first == {"model": counted, "sequence": 1}
    assert again == {"model": counted, "sequence": 1, "duplicate": True}
    assert river_client.learn(counted, {"x": 2}, 2.0, idempotency_key="order-18")["sequence"] == 2
    assert river_client.learn(counted, {"x": 3}, 3.0)["sequence"] == 3  # no key: as before
    assert river_client.learn(counted, {"x": 3}, 3.0)["sequence"] == 4
    assert learned(river_client, counted) == 4
    assert river_client.stats(counted)["learn"]["n_calls"] == 4  # a duplicate is not a learn
    other_worker = DjangoClient(store=river_client.store)  # a replica of its own: the keys are in the store
    assert other_worker.learn(counted, {"x": 1}, 1.0, idempotency_key="order-17")["duplicate"] is True
    assert learned(other_worker, counted) == 4


def test_each_example_of_a_batch_is_learned_once_however_batches_are_cut(river_client, counted):
    keys = [f"row-{i}" for i in range(15)]
    assert river_client.learn_many(counted, rows(keys[:10])) == {"model": counted, "learned": 10, "sequence": 1}
    overlapping = river_client.learn_many(counted, rows(keys[5:], start=5))  # rows 5-9 again, 10-14 new
    assert overlapping == {"model": counted, "learned": 10, "sequence": 2, "duplicates": 5}
    assert river_client.learn_many(counted, rows(keys[:3])) == {"model": counted, "learned": 3, "sequence": 1,
                                                                "duplicates": 3}
    assert river_client.learn_many(counted, rows(keys[8:12], start=8)) == {"model": counted, "learned": 4,
                                                                           "sequence": 2, "duplicates": 4}
    assert learned(river_client, counted) == 15
    # A single learn and a batch share the model's keys.
    assert river_client.learn(counted, {"x": 0}, 0.0, idempotency_key="row-0")["duplicate"] is True
    assert river_client.learn_many(counted, [{"features": {"x": 1}, "ground_truth": 1.0}],
                                   idempotency_key="row-14")["duplicates"] == 1
    assert learned(river_client, counted) == 15


def test_a_batch_key_names_the_whole_batch(river_client, counted):
    batch = [{"features": {"x": i}, "ground_truth": float(i)} for i in range(4)]
    assert river_client.learn_many(counted, batch, idempotency_key="upload-1")["sequence"] == 1
    assert river_client.learn_many(counted, batch, idempotency_key="upload-1") == {
        "model": counted, "learned": 4, "sequence": 1, "duplicates": 4}
    assert learned(river_client, counted) == 4


def test_a_rejected_learn_frees_its_keys(river_client):
    """The model raised: nothing was learned, so a retry with the key is tried again (and fails again alike)."""
    river_client.upload_model(Fragile(), "custom", "fragile")
    for _ in range(2):
        with pytest.raises(ModelFailed):
            river_client.learn("fragile", {"boom": 1}, 1.0, idempotency_key="k")
    batch = rows(["a", "b", "c"])
    batch[1]["features"] = {"boom": 1}
    with pytest.raises(ModelFailed) as refused:
        river_client.learn_many("fragile", batch)
    assert refused.value.row == 1
    assert river_client.learn_many("fragile", [batch[0], batch[2]])["sequence"] > 0  # a and c are free again
    assert learned(river_client, "fragile") == 2
    # A retry of the whole batch: a and c are duplicates, b fails again, named by its row in this batch.
    with pytest.raises(ModelFailed) as again:
        river_client.learn_many("fragile", batch)
    assert again.value.row == 1 and again.value.message.startswith("Example 1: ")
    assert learned(river_client, "fragile") == 2


def test_a_retried_label_is_acknowledged_again(river_client, counted):
    identifier = river_client.predict(counted, {"x": 1})["identifier"]
    first = river_client.label(5.0, identifier, counted, idempotency_key="label-1")
    assert river_client.label(5.0, identifier, counted, idempotency_key="label-1") == {**first, "duplicate": True}
    assert learned(river_client, counted) == 1
    with pytest.raises(Exception, match="already labelled"):  # without the key: once anyway, the identifier is gone
        river_client.label(5.0, identifier, counted)


def test_concurrent_retries_from_threads_learn_once(river_client, counted):
    """Workers with replicas of their own race with one key, and with overlapping batches: each is learned once."""
    workers = [DjangoClient(store=river_client.store) for _ in range(6)]
    start, answers, errors = threading.Barrier(len(workers)), [], []

    def retry(client: DjangoClient, index: int) -> None:
        try:
            start.wait()
            answers.append(client.learn(counted, {"x": 0}, 0.0, idempotency_key="same"))
            keys = [f"k{i}" for i in range(index * 5, index * 5 + 20)]  # each overlaps the next
            answers.append(client.learn_many(counted, rows(keys)))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=retry, args=(client, i)) for i, client in enumerate(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    singles = [answer for answer in answers if "learned" not in answer]
    assert len({answer["sequence"] for answer in singles}) == 1
    assert sum(not answer.get("duplicate") for answer in singles) == 1
    distinct_rows = len({f"k{i}" for index in range(6) for i in range(index * 5, index * 5 + 20)})
    assert learned(river_client, counted) == 1 + distinct_rows
    assert sum(answer["learned"] - answer.get("duplicates", 0) for answer in answers if "learned" in answer) \
        == distinct_rows


def test_keys_of_a_deleted_or_replaced_model_do_not_leak_to_its_successor(river_client, counted):
    river_client.learn(counted, {"x": 1}, 1.0, idempotency_key="k")
    old = river_client.store.model_info(counted).incarnation
    river_client.delete_model(counted)
    assert river_client.store.known_keys(counted, old, ["k"]) == {}  # dropped with the model
    river_client.upload_model(RunningMean(), "custom", counted)
    assert river_client.learn(counted, {"x": 1}, 1.0, idempotency_key="k") == {"model": counted, "sequence": 1}
    replaced = river_client.store.model_info(counted).incarnation
    river_client.upload_model(RunningMean(), "custom", counted)  # replaced, not deleted
    assert river_client.store.known_keys(counted, replaced, ["k"]) == {}
    assert river_client.learn(counted, {"x": 1}, 1.0, idempotency_key="k") == {"model": counted, "sequence": 1}
    assert learned(river_client, counted) == 1


def test_keys_expire_after_the_window(river_client, counted, settings):
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "IDEMPOTENCY_SECONDS": 1.0}
    client = DjangoClient()
    client.learn(counted, {"x": 1}, 1.0, idempotency_key="short-lived")
    assert client.learn(counted, {"x": 1}, 1.0, idempotency_key="short-lived")["duplicate"] is True
    time.sleep(1.1)
    assert client.learn(counted, {"x": 1}, 1.0, idempotency_key="short-lived") == {"model": counted, "sequence": 2}
    assert learned(client, counted) == 2


def test_beyond_the_cap_the_oldest_keys_are_forgotten(river_client, counted, settings):
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "MAX_IDEMPOTENCY_KEYS": 3}
    client = DjangoClient()
    for key in "abcd":
        client.learn(counted, {"x": 1}, 1.0, idempotency_key=key)
    incarnation = client.store.model_info(counted).incarnation
    assert client.store.known_keys(counted, incarnation, list("abcd")) == {"b": 2, "c": 3, "d": 4}
    assert client.learn(counted, {"x": 1}, 1.0, idempotency_key="d")["duplicate"] is True
    assert "duplicate" not in client.learn(counted, {"x": 1}, 1.0, idempotency_key="a")  # forgotten: learned again
    assert learned(client, counted) == 5


def test_the_settings_come_from_the_environment_and_are_checked(monkeypatch):
    from django.test import override_settings

    from django_river_ml.settings import river_settings

    monkeypatch.setenv("DJANGO_RIVER_ML_IDEMPOTENCY_SECONDS", "0.5")
    monkeypatch.setenv("DJANGO_RIVER_ML_MAX_IDEMPOTENCY_KEYS", "20")
    with override_settings(DJANGO_RIVER_ML={"IDEMPOTENCY_SECONDS": 9, "MAX_IDEMPOTENCY_KEYS": 9}):
        assert (river_settings.IDEMPOTENCY_SECONDS, river_settings.MAX_IDEMPOTENCY_KEYS) == (0.5, 20)
    monkeypatch.delenv("DJANGO_RIVER_ML_IDEMPOTENCY_SECONDS")
    monkeypatch.delenv("DJANGO_RIVER_ML_MAX_IDEMPOTENCY_KEYS")
    with override_settings(DJANGO_RIVER_ML={}):
        assert (river_settings.IDEMPOTENCY_SECONDS, river_settings.MAX_IDEMPOTENCY_KEYS) == (86400, 100_000)
    for config, words in (({"IDEMPOTENCY_SECONDS": 0}, "IDEMPOTENCY_SECONDS must be a number of seconds above 0"),
                          ({"MAX_IDEMPOTENCY_KEYS": 0}, "MAX_IDEMPOTENCY_KEYS must be a whole number of at least 1")):
        with override_settings(DJANGO_RIVER_ML=config):
            assert any(words in problem for problem in river_settings.problems()), river_settings.problems()


def test_a_store_that_records_no_keys_refuses_keyed_learns(tmp_path, settings):
    class Keyless(ShelveStore):
        backend_name = "keyless"
        append_keyed, known_keys = Store.append_keyed, Store.known_keys

    settings.DJANGO_RIVER_ML = {"DATA_DIR": str(tmp_path), "ALLOWED_MODEL_MODULES": ["example_project.custom_models"]}
    client = DjangoClient(store=Keyless(tmp_path / "keyless.sqlite3"))
    client.upload_model(RunningMean(), "custom", "m")
    assert client.learn("m", {"x": 1}, 1.0)["sequence"] == 1
    with pytest.raises(NotSupported) as refused:
        client.learn("m", {"x": 1}, 1.0, idempotency_key="k")
    assert refused.value.status_code == 501 and "keyless" in refused.value.message
    assert learned(client, "m") == 1


# HTTP -------------------------------------------------------------------------------------------


def test_the_key_comes_in_a_header_or_the_body(api, counted):
    body = {"model": counted, "features": {"x": 1}, "ground_truth": 1.0}
    first = api.post(LEARN, body, format="json", headers={HEADER: "h-1"})
    assert first.status_code == 201 and first.json() == {"model": counted, "sequence": 1}
    again = api.post(LEARN, {**body, "idempotency_key": "h-1"}, format="json")
    assert again.status_code == 201 and again.json() == {"model": counted, "sequence": 1, "duplicate": True}
    both = api.post(LEARN, {**body, "idempotency_key": "h-2"}, format="json", headers={HEADER: "h-2"})
    assert both.status_code == 201 and both.json() == {"model": counted, "sequence": 2}
    assert api.post(LEARN, body, format="json", headers={HEADER: "h-2"}).json()["duplicate"] is True
    assert learned(DjangoClient(), counted) == 2


def test_batches_json_and_ndjson_are_learned_once(api, river_client, counted):
    batch = rows([f"r{i}" for i in range(6)])
    answer = api.post(LEARN, {"model": counted, "examples": batch[:4]}, format="json")
    assert answer.status_code == 201 and answer.json() == {"model": counted, "learned": 4, "sequence": 1}
    ndjson = "\n".join(json.dumps(example) for example in batch[2:]) + "\n"
    answer = api.post(f"{LEARN}?model={counted}", ndjson, content_type="application/x-ndjson")
    assert answer.status_code == 201 and answer.json() == {"model": counted, "learned": 4, "sequence": 2,
                                                           "duplicates": 2}
    whole = [{"features": {"x": 9}, "ground_truth": 9.0}] * 3
    for _ in range(2):  # a batch key: in the body, then in the header of an NDJSON body
        answer = api.post(LEARN, {"model": counted, "examples": whole, "idempotency_key": "batch-1"}, format="json")
        assert answer.status_code == 201 and answer.json()["sequence"] == 3
    answer = api.post(f"{LEARN}?model={counted}", "\n".join(map(json.dumps, whole)),
                      content_type="application/x-ndjson", headers={HEADER: "batch-1"})
    assert answer.json() == {"model": counted, "learned": 3, "sequence": 3, "duplicates": 3}
    assert learned(river_client, counted) == 9


def test_a_retried_label_over_http(api, river_client, counted):
    identifier = river_client.predict(counted, {"x": 1})["identifier"]
    body = {"model": counted, "identifier": identifier, "label": 2.0}
    first = api.post(LABEL, body, format="json", headers={HEADER: "label-key"})
    again = api.post(LABEL, {**body, "idempotency_key": "label-key"}, format="json")
    assert first.status_code == again.status_code == 200
    assert again.json() == {**first.json(), "duplicate": True}
    assert api.post(LABEL, body, format="json").status_code == 404  # no key: the identifier is consumed
    assert learned(river_client, counted) == 1


TOO_LONG = "k" * 201


@pytest.mark.parametrize(("body", "headers", "words"), [
    ({}, {HEADER: ""}, "1 to 200 visible ASCII"),
    ({}, {HEADER: "two words"}, "1 to 200 visible ASCII"),
    ({}, {HEADER: TOO_LONG}, "1 to 200 visible ASCII"),
    ({"idempotency_key": TOO_LONG}, {}, "1 to 200 visible ASCII"),
    ({"idempotency_key": "clé"}, {}, "1 to 200 visible ASCII"),
    ({"idempotency_key": "line\nbreak"}, {}, "1 to 200 visible ASCII"),
    ({"idempotency_key": ""}, {}, "idempotency_key"),
    ({"idempotency_key": 17}, {}, "idempotency_key: Not a valid string."),
    ({"idempotency_key": ["k"]}, {}, "idempotency_key: Not a valid string."),
    ({"idempotency_key": "one"}, {HEADER: "other"}, "differ"),
])
def test_bad_keys_are_refused_with_400(api, river_client, counted, body, headers, words):
    single = {"model": counted, "features": {"x": 1}, "ground_truth": 1.0, **body}
    batch = {"model": counted, "examples": [{"features": {"x": 1}, "ground_truth": 1.0}], **body}
    identifier = river_client.predict(counted, {"x": 1})["identifier"]
    label = {"model": counted, "identifier": identifier, "label": 1.0, **body}
    for route, request in ((LEARN, single), (LEARN, batch), (LABEL, label)):
        answer = api.post(route, request, format="json", headers=headers)
        assert answer.status_code == 400, (route, answer.content)
        assert words in answer.json()["message"], (route, answer.json())
    assert learned(river_client, counted) == 0


@pytest.mark.parametrize(("examples", "words", "row"), [
    (rows(["a", "a"]), "idempotency_key 'a' is given to the batch or an earlier example of it too", 1),
    (rows(["ok", "two words"]), "1 to 200 visible ASCII", 1),
    (rows([5]), "1 to 200 visible ASCII", 0),
])
def test_bad_keys_of_examples_are_refused_with_their_row(api, river_client, counted, examples, words, row):
    for answer in (api.post(LEARN, {"model": counted, "examples": examples}, format="json"),
                   api.post(f"{LEARN}?model={counted}", "\n".join(map(json.dumps, examples)),
                            content_type="application/x-ndjson")):
        assert answer.status_code == 400 and answer.json()["row"] == row, answer.json()
        assert words in answer.json()["message"]
    batch_key_again = api.post(LEARN, {"model": counted, "examples": rows(["b"]), "idempotency_key": "b"},
                               format="json")
    assert batch_key_again.status_code == 400 and batch_key_again.json()["row"] == 0
    assert learned(river_client, counted) == 0


def test_predictions_take_no_keys(api, counted):
    answer = api.post(PREDICT, {"model": counted, "examples": [{"features": {"x": 1}, "idempotency_key": "k"}]},
                      format="json")
    assert answer.status_code == 400 and "unknown field 'idempotency_key'" in answer.json()["message"]
    answer = api.post(PREDICT, {"model": counted, "examples": [{"features": {"x": 1}}], "idempotency_key": "k"},
                      format="json")
    assert answer.status_code == 400 and "A batch has only model and examples" in answer.json()["message"]


def test_bad_keys_from_server_code(river_client, counted):
    for key in (5, "", "a b", "é", TOO_LONG):
        with pytest.raises(InvalidInput, match="visible ASCII"):
            river_client.learn(counted, {"x": 1}, 1.0, idempotency_key=key)
        with pytest.raises(InvalidInput, match="visible ASCII"):
            river_client.learn_many(counted, rows(["ok"]), idempotency_key=key)
    with pytest.raises(InvalidInput, match="visible ASCII") as refused:
        river_client.learn_many(counted, [{"features": {"x": 1}, "ground_truth": 1.0, "idempotency_key": None},
                                          {"features": {"x": 1}, "ground_truth": 1.0, "idempotency_key": 7}])
    assert refused.value.row == 1
    assert learned(river_client, counted) == 0


def test_the_schema_declares_the_header_and_the_fields(client, open_api):
    document = get_schema(client)
    components = document["components"]["schemas"]
    for path in (LEARN, LABEL):
        header = next(p for p in document["paths"][path]["post"]["parameters"] if p["name"] == HEADER)
        assert header["in"] == "header" and not header.get("required")
        assert header["schema"]["pattern"] == "^[!-~]{1,200}$"
    for name in ("Learn", "LearnBatch", "LearnExample", "Label"):
        assert components[name]["properties"]["idempotency_key"]["pattern"] == "^[!-~]{1,200}$", name
    assert components["LearnResult"]["properties"]["duplicate"]["type"] == "boolean"
    assert components["LearnedBatch"]["properties"]["duplicates"]["type"] == "integer"
    assert "idempotency_key" not in components["PredictExample"]["properties"]


@pytest.fixture
def open_api(settings):
    settings.DJANGO_RIVER_ML = {**getattr(settings, "DJANGO_RIVER_ML", {}), "DISABLE_AUTHENTICATION": True}


# A live 4-worker server ---------------------------------------------------------------------


SPEC = [{"class": "preprocessing.StandardScaler"}, {"class": "linear_model.LinearRegression"}]


@pytest.mark.live
@pytest.mark.parametrize("backend", ["shelve", "redis", "redis-cluster"])
def test_retries_racing_through_four_workers_learn_once(live_server_factory, backend):
    server = live_server_factory(backend, workers=4)
    assert requests.post(f"{server.url}/api/model/regression/raced/", json=SPEC, timeout=30).status_code == 201
    threads_n, keys_each = 6, 10
    start, answers, errors = threading.Barrier(threads_n), [], []

    def client(index: int) -> None:
        session = requests.Session()
        try:
            start.wait()
            for i in range(keys_each):  # every thread sends the same keys: each races 7 retries
                key = f"race-{i}"
                body = {"model": "raced", "features": {"x": float(i)}, "ground_truth": float(i)}
                answer = session.post(f"{server.url}{LEARN}", json=body, headers={HEADER: key}, timeout=30)
                answers.append((key, answer.status_code, answer.json()))
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert len(answers) == threads_n * keys_each and all(status == 201 for _, status, _ in answers), answers
    for i in range(keys_each):
        same = [body for key, _, body in answers if key == f"race-{i}"]
        assert len({body["sequence"] for body in same}) == 1, same
        assert sum(not body.get("duplicate") for body in same) == 1, same
    model = pickle.loads(requests.get(f"{server.url}/api/model/download/raced/", timeout=30).content)  # noqa: S301
    assert model["StandardScaler"].counts["x"] == keys_each  # learned once each, read from the model itself


# riverapi ------------------------------------------------------------------------------------


def test_riverapi_sends_the_key_and_retries_only_keyed_learns():
    from riverapi import Client, ServerUnavailable

    unavailable = (503, {}, {"message": "The model store (Redis) cannot be reached."})
    learned_answer = (201, {}, {"model": "m", "sequence": 4})
    with fake_server(answering(unavailable, unavailable, learned_answer)) as server:
        client = Client(server.url, quiet=True, retries=3, backoff_factor=0.01)
        assert client.learn("m", {"x": 1.0}, 2.0, idempotency_key="k-1") == {"model": "m", "sequence": 4}
        assert [r["headers"].get(HEADER) for r in server.requests] == ["k-1"] * 3
        assert {r["body"] for r in server.requests} == {server.requests[0]["body"]}  # the same learn, resent
    with fake_server(answering(unavailable)) as server:
        client = Client(server.url, quiet=True, retries=2, backoff_factor=0.01)
        with pytest.raises(ServerUnavailable):
            client.learn("m", {"x": 1.0}, 2.0)
        assert len(server.requests) == 1 and HEADER not in server.requests[0]["headers"]  # no key: never resent
        server.requests.clear()
        with pytest.raises(ServerUnavailable):
            client.label(1.0, "id", "m", idempotency_key="l-1")
        assert len(server.requests) == 3  # the call and two retries
        server.requests.clear()
        keyed = [{"features": {"x": 1.0}, "ground_truth": 1.0, "idempotency_key": f"row-{i}"} for i in range(3)]
        with pytest.raises(ServerUnavailable):
            client.learn_many("m", keyed)
        assert len(server.requests) == 3
        assert [row["idempotency_key"] for row in json.loads(server.requests[0]["body"])["examples"]] == \
            ["row-0", "row-1", "row-2"]
        server.requests.clear()
        with pytest.raises(ServerUnavailable):
            client.learn_many("m", [*keyed, {"features": {"x": 1.0}, "ground_truth": 1.0}])  # one row without
        assert len(server.requests) == 1


@pytest.mark.live
def test_riverapi_against_a_live_server(live_server_factory):
    from riverapi import Client

    server = live_server_factory("shelve", workers=2)
    client = Client(server.url, quiet=True)
    client.upload_spec(SPEC, "regression", model_name="keyed")
    first = client.learn("keyed", {"x": 1.0}, 2.0, idempotency_key="once")
    again = client.learn("keyed", {"x": 1.0}, 2.0, idempotency_key="once")
    assert again == {"model": "keyed", "sequence": first["sequence"], "duplicate": True}
    keyed = [{"features": {"x": float(i)}, "ground_truth": 1.0, "idempotency_key": f"row-{i}"} for i in range(10)]
    assert client.learn_many("keyed", keyed[:6], batch_size=4)["learned"] == 6
    assert client.learn_many("keyed", keyed, batch_size=3)["learned"] == 10  # rows 0-5 are duplicates
    model = pickle.loads(requests.get(f"{server.url}/api/model/download/keyed/", timeout=30).content)  # noqa: S301
    assert model["StandardScaler"].counts["x"] == 11
