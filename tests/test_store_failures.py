"""A stalled or refusing store answers 503 with Retry-After: never a 500, never a hang.

Tests that stall or break Redis run their own redis-server (never the session's
``redis_url``, which other tests share) and pause it with SIGSTOP, as a stalled
host, a long fork or a swapping server would.
"""

from __future__ import annotations

import contextlib
import pickle
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

import pytest
import redis
import requests

from django_river_ml.client import DjangoClient
from django_river_ml.exceptions import StorageUnavailable
from django_river_ml.settings import RiverSettings, SettingError, _parse_env
from django_river_ml.storage import get_store
from django_river_ml.storage.redis import RedisStore
from liveserver import free_port, wait_until
from redisservers import redis_binary
from example_project.custom_models import Fragile
from flavored_models import examples, make_model

TIMEOUT = "1"  # seconds: REDIS_SOCKET_TIMEOUT and REDIS_SOCKET_CONNECT_TIMEOUT in these tests
# Generous: far below a stall, far above the timeout (the machine is shared and busy).
ANSWERED_WITHIN = 15


@dataclass
class OwnRedis:
    url: str
    process: subprocess.Popen
    paused: bool = False

    @contextlib.contextmanager
    def stalled(self):
        """Redis stops answering (its sockets stay open) until the block ends."""
        self.process.send_signal(signal.SIGSTOP)
        self.paused = True
        try:
            yield
        finally:
            self.process.send_signal(signal.SIGCONT)
            self.paused = False


@pytest.fixture
def own_redis(tmp_path):
    port = free_port()
    process = subprocess.Popen(
        [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    server = OwnRedis(f"redis://127.0.0.1:{port}/0", process)
    try:
        wait_until(lambda: redis.Redis.from_url(server.url).ping(), 15, "redis-server")
        yield server
    finally:
        process.send_signal(signal.SIGCONT)
        process.terminate()
        process.wait(10)


def assert_unavailable(response: requests.Response) -> None:
    assert response.status_code == 503, (response.status_code, response.text)
    assert int(response.headers["Retry-After"]) >= 1
    assert "model store" in response.json()["message"]


# A live multi-worker server on a Redis that stalls ---------------------------------------------


def test_a_stalled_redis_answers_503_with_retry_after_then_serves_again(own_redis, live_server_factory):
    server = live_server_factory("redis", workers=3, REDIS_URL=own_redis.url, REDIS_SOCKET_TIMEOUT=TIMEOUT,
                                 REDIS_SOCKET_CONNECT_TIMEOUT=TIMEOUT)
    api = server.url + "/api"
    model = pickle.dumps(make_model("regression"))
    assert requests.post(f"{api}/model/regression/stall/", data=model,
                         headers={"Content-Type": "application/octet-stream"}, timeout=30).status_code == 201
    rows = examples("regression", 40)
    learns: list[tuple[int, dict, bool]] = []  # (status, answer, whether Redis was still paused)

    def learn(i: int) -> requests.Response:
        x, y = rows[i % len(rows)]
        response = requests.post(f"{api}/learn/", json={"model": "stall", "features": x, "ground_truth": y},
                                 timeout=60)
        learns.append((response.status_code, response, own_redis.paused))
        return response

    for i in range(5):
        assert learn(i).status_code == 201

    # Clients keep learning through the stall, as in the report (8 clients there; 4 here, for 2 cores).
    stop = threading.Event()

    def client(offset: int) -> None:
        i = offset
        while not stop.is_set():
            learn(i)
            i += 4

    clients = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in clients:
        thread.start()
    try:
        time.sleep(0.5)
        with own_redis.stalled():
            x = rows[0][0]
            probes = {
                "predict": lambda: requests.post(f"{api}/predict/", json={"model": "stall", "features": x}, timeout=60),
                "metrics": lambda: requests.get(f"{api}/metrics/", params={"model": "stall"}, timeout=60),
                "stats": lambda: requests.get(f"{api}/stats/", params={"model": "stall"}, timeout=60),
                "models": lambda: requests.get(f"{api}/models/", timeout=60),
                "upload": lambda: requests.post(f"{api}/model/regression/other/", data=model, timeout=60,
                                                headers={"Content-Type": "application/octet-stream"}),
                "delete": lambda: requests.delete(f"{api}/model/ghost/", timeout=60),
            }
            for route, probe in probes.items():
                started = time.monotonic()
                response = probe()
                assert time.monotonic() - started < ANSWERED_WITHIN, route
                assert_unavailable(response)
            # The learners too get their 503s while Redis is still stalled: nobody waits for it.
            wait_until(lambda: sum(1 for status, _, paused in learns if status == 503 and paused) >= 8,
                       60, "503s for the learning clients during the stall")
            # What needs no store still works. (Every answer above came before Redis resumed.)
            assert requests.get(f"{api}/", timeout=60).status_code == 200
        # Redis is back: the same server serves again, without a restart.
        wait_until(lambda: learn(0).status_code == 201, 30, "a learn to succeed after the stall")
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in clients:
            thread.join(60)

    statuses = {status for status, _, _ in learns}
    assert statuses <= {201, 503}, statuses
    for status, response, _ in learns:
        if status == 503:
            assert_unavailable(response)
    acknowledged = sum(1 for status, _, _ in learns if status == 201)
    ambiguous = sum(1 for status, _, _ in learns if status == 503)
    # A 503 learn may or may not have landed; an acknowledged one is never lost.
    sequence = learn(1).json()["sequence"]
    assert acknowledged + 1 <= sequence <= acknowledged + ambiguous + 1
    assert requests.post(f"{api}/predict/", json={"model": "stall", "features": rows[0][0]},
                         timeout=30).status_code == 201
    assert requests.get(f"{api}/metrics/", params={"model": "stall"}, timeout=30).json()["MAE"] > 0
    log = server.log_text()
    assert "WORKER TIMEOUT" not in log and "Unexpected error" not in log


# Redis that answers, but refuses -------------------------------------------------------------


@pytest.fixture
def own_redis_client(own_redis, settings, tmp_path):
    settings.DJANGO_RIVER_ML = {"STORAGE_BACKEND": "redis", "REDIS_URL": own_redis.url, "DISABLE_AUTHENTICATION": True,
                                "DATA_DIR": str(tmp_path / "data"), "REDIS_SOCKET_TIMEOUT": float(TIMEOUT)}
    client = DjangoClient()
    yield client, redis.Redis.from_url(own_redis.url)
    get_store().close()


def test_refusals_inside_scripts_and_pipelines_are_503(own_redis_client):
    from rest_framework.test import APIClient

    client, admin = own_redis_client
    api = APIClient()
    client.upload_model(make_model("regression"), "regression", model_name="full")
    x, y = examples("regression", 1)[0]
    learn = {"model": "full", "features": x, "ground_truth": y}
    assert api.post("/api/learn/", learn, format="json").status_code == 201

    # Out of memory: the append script's first write is refused inside the script.
    admin.config_set("maxmemory", 1)
    response = api.post("/api/learn/", learn, format="json")
    assert response.status_code == 503 and int(response["Retry-After"]) >= 1
    assert "refused" in response.json()["message"]
    assert api.get("/api/metrics/", {"model": "full"}).status_code == 200  # reads still work
    admin.config_set("maxmemory", 0)
    assert api.post("/api/learn/", learn, format="json").status_code == 201

    # An error inside a pipeline (the log read: a key of the wrong type).
    incarnation = client.store.model_info("full").incarnation
    rejected = client.store.key("rejected", incarnation)
    admin.set(rejected, "not a set")
    client.registry.forget("full")
    response = api.post("/api/learn/", learn, format="json")
    assert response.status_code == 503 and int(response["Retry-After"]) >= 1
    admin.delete(rejected)
    assert api.post("/api/learn/", learn, format="json").status_code == 201


@pytest.mark.parametrize("error", [
    redis.exceptions.ConnectionError("Connection refused"),
    redis.exceptions.TimeoutError("Timeout reading from socket"),
    redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory"),
    redis.exceptions.ResponseError("BUSY Redis is busy running a script"),
    redis.exceptions.ReadOnlyError("You can't write against a read only replica."),
    redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'"),
    redis.exceptions.ExecAbortError("Transaction discarded because of previous errors."),
    redis.exceptions.AuthenticationError("invalid password"),
], ids=lambda error: type(error).__name__)
def test_every_redis_failure_is_storage_unavailable(error):
    store = RedisStore(redis.Redis())  # never connects here

    def fails():
        raise error

    def scan():  # as scan_iter: fails while it is consumed
        yield b"key"
        raise error

    for call in (fails, scan):
        with pytest.raises(StorageUnavailable) as caught:
            store._call(call)
        assert caught.value.status_code == 503 and caught.value.retry_after >= 1
        assert str(error) not in caught.value.message  # details go to the log, not to callers


def test_a_redis_error_from_outside_the_store_is_a_503(api, monkeypatch):
    def stalled(self, *args, **kwargs):
        raise redis.exceptions.TimeoutError("Timeout reading from socket")

    monkeypatch.setattr(DjangoClient, "models", stalled)
    response = api.get("/api/models/")
    assert response.status_code == 503 and int(response["Retry-After"]) >= 1
    assert response.json() == {"message": "The server's Redis cannot be reached or did not answer in time."}


# Settings ----------------------------------------------------------------------------------------


def test_redis_client_has_timeouts_and_no_retries_of_its_own(settings, redis_url):
    for config in ({"REDIS_URL": redis_url}, {"REDIS_HOST": "127.0.0.1", "REDIS_PORT": 1}):
        settings.DJANGO_RIVER_ML = {**config, "STORAGE_BACKEND": "redis", "REDIS_SOCKET_TIMEOUT": 1.5,
                                    "REDIS_SOCKET_CONNECT_TIMEOUT": 0.5}
        store = get_store()
        options = store.redis.connection_pool.connection_kwargs
        assert (options["socket_timeout"], options["socket_connect_timeout"]) == (1.5, 0.5)
        assert options["retry"].get_retries() == 0


def test_redis_timeouts_from_the_environment_and_their_checks(monkeypatch):
    assert _parse_env("REDIS_SOCKET_TIMEOUT", " 2.5 ") == 2.5
    assert _parse_env("REDIS_SOCKET_CONNECT_TIMEOUT", "3") == 3.0
    with pytest.raises(SettingError, match="DJANGO_RIVER_ML_REDIS_SOCKET_TIMEOUT='soon' is not a number"):
        _parse_env("REDIS_SOCKET_TIMEOUT", "soon")
    monkeypatch.setenv("DJANGO_RIVER_ML_REDIS_SOCKET_TIMEOUT", "0.25")
    assert RiverSettings().REDIS_SOCKET_TIMEOUT == 0.25
    for bad in ("0", "-1", "nan", "inf"):
        monkeypatch.setenv("DJANGO_RIVER_ML_REDIS_SOCKET_CONNECT_TIMEOUT", bad)
        problems = RiverSettings().problems()
        assert any(p.startswith("REDIS_SOCKET_CONNECT_TIMEOUT must be a number of seconds") for p in problems), bad
    monkeypatch.delenv("DJANGO_RIVER_ML_REDIS_SOCKET_CONNECT_TIMEOUT")
    assert not [p for p in RiverSettings().problems() if "TIMEOUT" in p]


# What a failure in the middle leaves behind ------------------------------------------------------


def test_a_store_failure_while_undoing_a_failed_learn_leaves_no_half_learn(backend, monkeypatch):
    """The store fails after the model half-learned a bad entry, before the replica was rebuilt."""
    client = DjangoClient(store=get_store())
    client.upload_model(Fragile(), "custom", model_name="fragile")
    client.learn("fragile", {"a": 1.0}, ground_truth=1.0)
    store, real = client.store, client.store.latest_snapshot
    failures = iter([StorageUnavailable("The model store did not answer in time.")])
    test_thread = threading.current_thread()  # not the streams' publisher, which loads replicas in its own

    def fails_once(*args):
        if threading.current_thread() is test_thread:
            for failure in failures:
                raise failure
        return real(*args)

    monkeypatch.setattr(store, "latest_snapshot", fails_once)
    with pytest.raises(StorageUnavailable):
        client.learn("fragile", {"boom": 1}, ground_truth=5.0)  # Fragile updates its mean, then raises
    # The entry was rejected; this worker's replica must not keep the half-learn it made.
    assert client.predict("fragile", {})["prediction"] == 1.0
    assert DjangoClient(store=store).predict("fragile", {})["prediction"] == 1.0
