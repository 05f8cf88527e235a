"""MAX_MODEL_BYTES while learning: a model that outgrows it stops learning on every worker alike."""

from __future__ import annotations

import pickle

import pytest

import sandbox_probes
from django_river_ml.client import DjangoClient
from django_river_ml.exceptions import ModelFull
from django_river_ml.state import dump_state

ROW = {"payload": "x" * 200}


def stored_size(client: DjangoClient, name: str) -> int:
    replica = client.registry.replica(name)
    return len(dump_state(replica.model, replica.metrics))


@pytest.fixture
def small_limit(backend, settings):
    size = len(dump_state(sandbox_probes.Hoarder(), []))
    limit = size + 20_000  # about 80 rows of ROW
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "MAX_MODEL_BYTES": limit, "SNAPSHOT_EVERY": 50}
    return limit


def learn_until_full(client: DjangoClient, name: str, most: int = 1000) -> int:
    for i in range(most):
        try:
            client.learn(name, ROW, ground_truth=1.0)
        except ModelFull:
            return i
    raise AssertionError("the model never filled up")


def test_a_model_stops_learning_at_the_limit_and_keeps_predicting(small_limit):
    client = DjangoClient()
    client.upload_model(sandbox_probes.Hoarder(), "regression", model_name="hoard")
    accepted = learn_until_full(client, "hoard")
    assert 0 < accepted < 200
    size = stored_size(client, "hoard")
    assert size <= small_limit < size + len(pickle.dumps(ROW)) * 2, (size, small_limit)  # the crossing learn went
    with pytest.raises(ModelFull, match="MAX_MODEL_BYTES"):
        client.learn("hoard", ROW, ground_truth=1.0)
    assert client.predict("hoard", ROW)["prediction"] == float(accepted)
    # A process that starts now replays the log (and snapshots) to the same state, full too.
    other = DjangoClient(store=client.store)
    assert other.predict("hoard", ROW)["prediction"] == float(accepted)
    with pytest.raises(ModelFull):
        other.learn("hoard", ROW, ground_truth=1.0)


def test_workers_learning_in_turns_agree_on_where_the_model_filled_up(small_limit):
    workers = [DjangoClient(), None, None]
    workers[0].upload_model(sandbox_probes.Hoarder(), "regression", model_name="hoard")
    workers[1] = DjangoClient(store=workers[0].store)
    workers[2] = DjangoClient(store=workers[0].store)
    refused = 0
    for i in range(300):
        try:
            workers[i % 3].learn("hoard", ROW, ground_truth=1.0)
        except ModelFull:
            refused += 1
    assert refused > 0
    predictions = {worker.predict("hoard", ROW)["prediction"] for worker in workers}
    assert len(predictions) == 1, predictions
    assert predictions.pop() == 300 - refused


def test_uploading_again_starts_afresh(small_limit):
    client = DjangoClient()
    client.upload_model(sandbox_probes.Hoarder(), "regression", model_name="hoard")
    learn_until_full(client, "hoard")
    client.upload_model(sandbox_probes.Hoarder(), "regression", model_name="hoard")
    client.learn("hoard", ROW, ground_truth=1.0)
    assert client.predict("hoard", ROW)["prediction"] == 1.0


def test_over_http_a_full_model_answers_409_naming_the_limit(api, small_limit):
    DjangoClient().upload_model(sandbox_probes.Hoarder(), "regression", model_name="hoard")
    statuses = [api.post("/api/learn/", {"model": "hoard", "features": ROW, "ground_truth": 1.0}, format="json")
                for _ in range(150)]
    full = [response for response in statuses if response.status_code == 409]
    assert full and all(response.status_code in (201, 409) for response in statuses)
    assert "MAX_MODEL_BYTES" in full[0].json()["message"]
    assert api.post("/api/predict/", {"model": "hoard", "features": ROW}, format="json").status_code in (200, 201)


def test_the_learn_that_filled_the_model_is_marked_full_in_the_log(small_limit, settings):
    from django_river_ml.storage.base import FULL

    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "SNAPSHOT_EVERY": 100_000}  # keep the whole log
    client = DjangoClient()
    client.upload_model(sandbox_probes.Hoarder(), "regression", model_name="hoard")
    accepted = learn_until_full(client, "hoard")
    info = client.store.model_info("hoard")
    reasons = [entry.rejected for entry in client.store.entries(info.name, info.incarnation, 0, info.head)]
    assert reasons[accepted] == FULL and not any(reasons[:accepted]), reasons
    # A worker that starts now reads the mark and refuses learns without measuring anything.
    with pytest.raises(ModelFull):
        DjangoClient(store=client.store).learn("hoard", ROW, ground_truth=1.0)
