"""CALL_TIME_LIMIT_SECONDS across workers: only the worker that appended an entry may reject it for running long.

Each registry here is one worker's set of replicas on the same store. Entries
written straight into the store stand for another worker's appends.
"""

from __future__ import annotations

import pickle

import pytest

import sandbox_probes
from django_river_ml.client import DjangoClient
from django_river_ml.exceptions import ModelBusy, ModelFailed
from django_river_ml.state import CATCH_UP_FACTOR

LIMIT = 0.3


@pytest.fixture
def slow_model(backend, settings):
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "CALL_TIME_LIMIT_SECONDS": LIMIT}
    client = DjangoClient()
    client.upload_model(sandbox_probes.SlowLearner(), "regression", model_name="slow")
    client.learn("slow", {"x": 1.0}, ground_truth=1.0)
    return client


def appended_by_another_worker(client: DjangoClient, features: dict) -> int:
    info = client.store.model_info("slow")
    return client.store.append("slow", info.incarnation, pickle.dumps({"x": features, "y": 1.0}))


def prediction(client: DjangoClient) -> float:
    return client.predict("slow", {"x": 1.0})["prediction"]


def test_the_appender_rejects_its_own_slow_learn_everywhere(slow_model):
    other = DjangoClient(store=slow_model.store)
    assert prediction(other) == 1.0
    with pytest.raises(ModelFailed, match="CALL_TIME_LIMIT_SECONDS"):
        slow_model.learn("slow", {"slow": 5.0}, ground_truth=1.0)
    assert prediction(slow_model) == prediction(other) == prediction(DjangoClient(store=slow_model.store)) == 1.0


def test_catching_up_on_a_slow_entry_answers_busy_and_rejects_nothing(slow_model):
    seq = appended_by_another_worker(slow_model, {"slow": LIMIT * CATCH_UP_FACTOR + 2})
    with pytest.raises(ModelBusy):
        prediction(slow_model)
    entry = slow_model.store.entries("slow", slow_model.store.model_info("slow").incarnation, seq - 1, seq)[0]
    assert not entry.rejected  # not this worker's verdict: the entry may have been acknowledged


def test_an_entry_finished_here_but_rejected_by_its_appender_is_undone(slow_model, settings):
    # A roomier limit: the entry must finish within the catch-up time even on a loaded machine.
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "CALL_TIME_LIMIT_SECONDS": 1.0}
    fast_worker = DjangoClient(store=slow_model.store)
    seq = appended_by_another_worker(slow_model, {"slow": 1.2})  # over the limit, well under catch-up (3 s)
    assert prediction(fast_worker) == 2.0  # this worker caught up and applied it
    # Its appender ran out of time on it: it rejects the entry and logs the retraction.
    registry = slow_model.registry
    replica = registry.replica("slow")
    slow_model.store.reject(replica.name, replica.incarnation, seq)
    registry._retract("slow", replica, seq)
    assert prediction(fast_worker) == 1.0  # rolled back
    assert prediction(DjangoClient(store=slow_model.store)) == 1.0  # a new worker never sees it
    slow_model.learn("slow", {"x": 2.0}, ground_truth=1.0)
    assert prediction(fast_worker) == prediction(slow_model) == 2.0


def test_a_learn_that_grows_the_process_past_the_memory_limit_is_rejected(backend, settings):
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "CALL_MEMORY_LIMIT_BYTES": 64 * 1024 * 1024}
    client = DjangoClient()
    client.upload_model(sandbox_probes.Greedy(), "regression", model_name="greedy")
    client.learn("greedy", {"hog": 8}, ground_truth=1.0)  # 8 MiB: within the limit
    with pytest.raises(ModelFailed, match="CALL_MEMORY_LIMIT_BYTES"):
        client.learn("greedy", {"hog": 4096}, ground_truth=1.0)  # would take 4 GiB
    assert client.predict("greedy", {})["prediction"] == 1.0
    assert DjangoClient(store=client.store).predict("greedy", {})["prediction"] == 1.0
