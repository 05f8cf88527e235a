"""Call stats are tallied per process and written off the request's path: one store write per call."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st
from river import linear_model, preprocessing

from django_river_ml import callstats
from django_river_ml.callstats import Tally
from django_river_ml.client import DjangoClient
from django_river_ml.exceptions import StorageUnavailable
from django_river_ml.storage import get_store
from flavored_models import examples

WRITES = ("append", "put_identifier", "pop_identifier", "record_calls", "save_snapshot", "reject", "create_model")


def regression() -> object:
    return preprocessing.StandardScaler() | linear_model.LinearRegression()


def sequential_ewm(durations: list[int], alpha: float) -> float:
    """What the store kept when each call wrote its own duration."""
    ewm = None
    for duration in durations:
        ewm = duration if ewm is None else alpha * duration + (1 - alpha) * ewm
    return ewm


@hypothesis_settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(1, 10**9), min_size=1, max_size=20), min_size=1, max_size=5),
       st.floats(0.01, 1.0))
def test_tallies_fold_into_the_mean_one_writer_would_have_made(groups, alpha):
    ewm = None
    for group in groups:  # each group: one process's calls between two of its writes
        tally = Tally()
        for duration in group:
            tally.count(duration, alpha)
        ewm = tally.folded_into(ewm)
    assert ewm == pytest.approx(sequential_ewm([d for group in groups for d in group], alpha), rel=1e-9)


def test_a_tally_kept_after_a_failed_write_goes_before_the_newer_calls():
    older, newer, whole = Tally(), Tally(), Tally()
    for duration in (5, 7, 11):
        older.count(duration, 0.3)
        whole.count(duration, 0.3)
    for duration in (13, 17):
        newer.count(duration, 0.3)
        whole.count(duration, 0.3)
    merged = older.then(newer)
    assert (merged.calls, merged.total_ns, merged.first_ns) == (whole.calls, whole.total_ns, whole.first_ns)
    assert merged.folded_into(3.0) == pytest.approx(whole.folded_into(3.0))


def test_a_single_learn_or_predict_writes_to_the_store_once(backend, monkeypatch, settings):
    settings.DJANGO_RIVER_ML = {**getattr(settings, "DJANGO_RIVER_ML", {}), "STATS_FLUSH_SECONDS": 30}
    client = DjangoClient(store=get_store())
    client.upload_model(regression(), "regression", "counted")
    store = client.store
    writes: list[str] = []
    request_thread = threading.current_thread()
    for name in WRITES:
        real = getattr(store, name)

        def recording(*args, _name=name, _real=real, **kwargs):
            if threading.current_thread() is request_thread:
                writes.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(store, name, recording)
    for x, y in examples("regression", 20):
        client.learn("counted", x, ground_truth=y)
        assert writes == ["append"]
        writes.clear()
        client.predict("counted", x)  # it keeps the prediction for a label: one write
        assert writes == ["put_identifier"]
        writes.clear()
    assert client.stats("counted")["learn"]["n_calls"] == 20  # read in this process: its own calls are in
    assert set(writes) <= {"record_calls"}  # (unless the stats thread wrote them first)


def test_stats_of_a_deleted_or_replaced_model_are_dropped(backend, settings):
    settings.DJANGO_RIVER_ML = {**getattr(settings, "DJANGO_RIVER_ML", {}), "STATS_FLUSH_SECONDS": 30}
    client = DjangoClient(store=get_store())
    client.upload_model(regression(), "regression", "gone")
    x, y = examples("regression", 1)[0]
    client.learn("gone", x, ground_truth=y)
    client.upload_model(regression(), "regression", "gone")  # replaced before the count was written
    client.learn("gone", x, ground_truth=y)
    assert client.stats("gone")["learn"]["n_calls"] == 1
    client.learn("gone", x, ground_truth=y)
    client.delete_model("gone")
    callstats.flush(client.store)
    assert client.store.call_stats("gone") == {}


def test_counts_wait_for_a_store_that_fails_and_are_written_later(backend, monkeypatch, settings):
    settings.DJANGO_RIVER_ML = {**getattr(settings, "DJANGO_RIVER_ML", {}), "STATS_FLUSH_SECONDS": 30}
    client = DjangoClient(store=get_store())
    client.upload_model(regression(), "regression", "patient")
    store, real = client.store, client.store.record_calls
    failures = iter([StorageUnavailable("The model store did not answer in time.")])

    def fails_once(*args):
        for failure in failures:
            raise failure
        return real(*args)

    monkeypatch.setattr(store, "record_calls", fails_once)
    for x, y in examples("regression", 3):
        client.learn("patient", x, ground_truth=y)  # the calls answer whatever the stats do
    callstats.flush(store)  # refused: kept
    x, y = examples("regression", 4)[3]
    client.learn("patient", x, ground_truth=y)
    assert client.stats("patient")["learn"]["n_calls"] == 4


def test_a_store_no_longer_used_gets_its_counts_once_and_is_then_forgotten(backend, monkeypatch, settings):
    """Its tallies would otherwise wait for it, and warn at every interval, for as long as the process lives."""
    settings.DJANGO_RIVER_ML = {**getattr(settings, "DJANGO_RIVER_ML", {}), "STATS_FLUSH_SECONDS": 30}
    client = DjangoClient(store=get_store())
    client.upload_model(regression(), "regression", "left")
    store = client.store
    tried = []

    def gone(*args):
        tried.append(args[0])
        raise StorageUnavailable("The model store (Redis) cannot be reached.")

    monkeypatch.setattr(store, "record_calls", gone)
    client.learn("left", *examples("regression", 1)[0])
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "STATS_FLUSH_SECONDS": 29}  # another store now
    assert tried == ["left"]  # written once more when it was left
    assert store not in callstats._buffers
    callstats.flush()
    assert tried == ["left"]


WORKER = """
import django
django.setup()
from django_river_ml.client import DjangoClient
from flavored_models import examples
client = DjangoClient()
for x, y in examples("regression", 12):
    client.learn("tally", x, ground_truth=y)
"""


def test_a_process_that_exits_writes_what_it_held(tmp_path):
    """A worker's graceful stop (gunicorn's SIGTERM, then a normal exit) writes its tallies."""
    import os
    import subprocess
    import sys

    from conftest import EXAMPLE_PROJECT, ROOT

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DJANGO_RIVER_ML_")},
           "DJANGO_SETTINGS_MODULE": "example_project.settings", "DJANGO_RIVER_ML_DATA_DIR": str(tmp_path),
           "DJANGO_RIVER_ML_STATS_FLUSH_SECONDS": "600", "DJANGO_RIVER_ML_DISABLE_AUTHENTICATION": "true",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(EXAMPLE_PROJECT), str(ROOT / "tests")])}
    setup = "import django; django.setup(); from django_river_ml.client import DjangoClient; from river import " \
            "linear_model; DjangoClient().upload_model(linear_model.LinearRegression(), 'regression', 'tally')"
    subprocess.run([sys.executable, "-c", setup], env=env, check=True, timeout=120)
    subprocess.run([sys.executable, "-c", WORKER], env=env, check=True, timeout=120)
    read = "import django; django.setup(); from django_river_ml.storage import get_store; " \
           "print(get_store().call_stats('tally')['learn'].n_calls)"
    counted = subprocess.run([sys.executable, "-c", read], env=env, check=True, timeout=120, capture_output=True,
                             text=True)
    assert counted.stdout.strip() == "12"



@pytest.mark.live
def test_every_workers_counts_reach_the_store_within_the_flush_interval(live_server_factory):
    """The default: calls are tallied in each of 4 workers and every count arrives, about a second late."""
    import pickle

    import requests

    from liveserver import wait_until

    server = live_server_factory("redis", workers=4, STATS_FLUSH_SECONDS="1.0")
    assert requests.post(f"{server.url}/api/model/regression/tally/", data=pickle.dumps(regression()),
                         headers={"Content-Type": "application/octet-stream"}, timeout=60).status_code == 201
    rows = examples("regression", 40)
    for x, y in rows:  # a new connection each: spread over the workers
        answer = requests.post(f"{server.url}/api/learn/", json={"model": "tally", "features": x, "ground_truth": y},
                               headers={"Connection": "close"}, timeout=30)
        assert answer.status_code == 201, answer.text

    def n_calls() -> int:
        return requests.get(f"{server.url}/api/stats/?model=tally", timeout=30).json()["learn"]["n_calls"]

    wait_until(lambda: n_calls() == len(rows), 10, "every worker's counts in the store")
    assert n_calls() == len(rows)  # and no more
