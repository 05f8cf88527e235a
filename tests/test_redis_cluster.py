"""What only a replicated Redis brings: failovers that lose what replicas did not get, and WAIT.

The API suite runs on a Redis Cluster too (BACKENDS in conftest.py); these tests kill nodes, so
the destructive ones start a cluster of their own.
"""

from __future__ import annotations

import pickle
import threading
import time

import dill
import pytest
import requests
from river import linear_model, preprocessing

from django_river_ml.client import DjangoClient
from django_river_ml.exceptions import StorageUnavailable
from django_river_ml.storage import get_store
from redisservers import RedisCluster


def worker() -> DjangoClient:
    """A client with its own registry, as a separate worker process would have."""
    return DjangoClient(store=get_store())


@pytest.fixture
def replicated(backend):
    if backend == "shelve":
        pytest.skip("the embedded store keeps one copy of its log: no failover can lose part of it")
    return backend


def scaler_counts(client: DjangoClient, name: str) -> dict:
    replica = client.registry.replica(name)
    with replica.lock:
        return dict(replica.model["StandardScaler"].counts)


def keep_only_entries_up_to(store, name: str, keep: int) -> None:
    """Leave the log as a failover to a replica that had it up to entry ``keep`` would: the entries after it
    gone, the head and the chain's tip back there."""
    info = store.model_info(name)
    entries = store.entries(name, info.incarnation, 0, info.head)
    log = store.incarnation_key("log", name, info.incarnation)
    for entry in entries:
        if entry.seq > keep:
            store.redis.xdel(log, f"{entry.seq}-1")
    store.redis.execute_command("XSETID", log, f"{keep}-1")  # the stream's own last id too
    tip = next(entry.token for entry in entries if entry.seq == keep)
    store.redis.hset(store.model_key("model", name), mapping={"head": keep, "tip": tip})


@pytest.mark.parametrize("learned_since", [1, 2, 4])
def test_a_replica_that_applied_entries_a_failover_lost_goes_on_from_the_new_log(replicated, learned_since):
    """Entries 4 and 5 were applied by both workers, then lost; ``learned_since`` new learns take their
    places (fewer, as many, more). Each worker must drop what it learned from the lost ones."""
    first, second = worker(), worker()
    first.upload_model(preprocessing.StandardScaler() | linear_model.LinearRegression(), "regression", "m")
    for i in range(1, 6):
        first.learn("m", {"x": float(i), f"lost{i}" if i > 3 else f"kept{i}": 1.0}, ground_truth=float(i))
    assert "lost5" in scaler_counts(second, "m")  # the second worker applied them too
    keep_only_entries_up_to(get_store(), "m", 3)

    for i in range(learned_since):
        assert first.learn("m", {"x": 0.0, f"new{i}": 1.0}, ground_truth=0.0)["sequence"] == 4 + i
    expected = {"x": 3 + learned_since, "kept1": 1, "kept2": 1, "kept3": 1,
                **{f"new{i}": 1 for i in range(learned_since)}}
    assert {k: v for k, v in scaler_counts(first, "m").items() if v} == expected
    assert {k: v for k, v in scaler_counts(second, "m").items() if v} == expected
    assert {k: v for k, v in scaler_counts(worker(), "m").items() if v} == expected  # from the store alone


def test_the_index_of_models_forgets_deleted_ones_and_never_a_model_being_made(replicated, settings):
    store = get_store()
    client = worker()
    client.upload_model(preprocessing.StandardScaler() | linear_model.LinearRegression(), "regression", "kept")
    client.upload_model(preprocessing.StandardScaler() | linear_model.LinearRegression(), "regression", "gone")
    client.delete_model("gone")
    assert client.models() == ["kept"]
    if replicated == "redis-cluster":  # its index is a sorted set of names by when they were last created
        import django_river_ml.storage.redis_cluster as cluster_store

        index = store.key("models")
        assert store.redis.zscore(index, "gone") is not None  # a fresh entry stays: it may be a create in progress
        store.redis.zadd(index, {"gone": time.time() - cluster_store.INDEX_GRACE_SECONDS - 1})
        assert client.models() == ["kept"]
        assert store.redis.zscore(index, "gone") is None  # an old one whose model is missing goes
        assert store.redis.zscore(index, "kept") is not None


# -- A cluster of its own, with nodes killed ---------------------------------------------------------


@pytest.fixture
def own_cluster(tmp_path):
    with RedisCluster(tmp_path / "cluster") as cluster:
        yield cluster


def model_master(cluster: RedisCluster, prefix: str, name: str) -> int:
    return cluster.master_of(f"{prefix}:model:{{{name}}}")


@pytest.mark.parametrize("wait_replicas", [1, 0])
def test_a_learn_no_replica_confirms_is_not_acknowledged(own_cluster, settings, tmp_path, wait_replicas):
    """With WAIT (the default on a cluster) a learn its master's replica never got answers 503; without, 201."""
    settings.DJANGO_RIVER_ML = {"DATA_DIR": str(tmp_path), "DISABLE_AUTHENTICATION": True,
                                "STORAGE_BACKEND": "redis", "REDIS_CLUSTER": True,
                                "REDIS_URL": own_cluster.url, "REDIS_KEY_PREFIX": "wait",
                                "REDIS_WAIT_REPLICAS": wait_replicas, "REDIS_WAIT_SECONDS": 0.5}
    client = DjangoClient()
    client.upload_model(preprocessing.StandardScaler() | linear_model.LinearRegression(), "regression", "m")
    assert client.learn("m", {"x": 1.0}, ground_truth=1.0)["sequence"] == 1
    own_cluster.kill(own_cluster.replica_of(model_master(own_cluster, "wait", "m")))
    if wait_replicas:
        with pytest.raises(StorageUnavailable, match="not acknowledged"):
            client.learn("m", {"x": 2.0}, ground_truth=2.0)
    else:
        assert client.learn("m", {"x": 2.0}, ground_truth=2.0)["sequence"] == 2


LEARNERS = 8


@pytest.mark.live
def test_a_master_killed_while_eight_clients_learn_loses_no_acknowledged_learn(live_server_factory, own_cluster):
    """SIGKILL the master of the model's keys mid-stream while its replica lags behind; the replica takes over,
    and the killed node comes back as its replica. Every learn is retried with its idempotency key until
    acknowledged, so each must be in the model exactly once, in every worker."""
    server = live_server_factory("redis-cluster", workers=4, REDIS_URL=own_cluster.url, REDIS_KEY_PREFIX="failover",
                                 SNAPSHOT_EVERY="50", REDIS_WAIT_SECONDS="2")
    model = preprocessing.StandardScaler() | linear_model.LinearRegression()
    uploaded = requests.post(f"{server.url}/api/model/regression/busy/", data=dill.dumps(model), timeout=30)
    assert uploaded.status_code == 201, uploaded.text
    master = model_master(own_cluster, "failover", "busy")

    acknowledged: dict[str, int] = {}  # tag -> sequence
    unknown: set[str] = set()  # never acknowledged before the end: may or may not have landed
    answers: dict[int, int] = {}
    lock, stop = threading.Lock(), threading.Event()

    def learner(index: int) -> None:
        session = requests.Session()
        i = 0
        while not stop.is_set():
            tag = f"t{index}-{i}"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    answer = session.post(f"{server.url}/api/learn/", timeout=30, headers={"Idempotency-Key": tag},
                                          json={"model": "busy", "features": {"x": 1.0, tag: 1.0}, "ground_truth": 1.0})
                except requests.RequestException:
                    session = requests.Session()
                    continue
                with lock:
                    answers[answer.status_code] = answers.get(answer.status_code, 0) + 1
                if answer.status_code == 201:
                    with lock:
                        acknowledged[tag] = answer.json()["sequence"]
                    break
                assert answer.status_code == 503, answer.text  # the store failing over: try again, same key
                time.sleep(0.05)
            else:
                unknown.add(tag)
            i += 1

    def predictor() -> None:  # readers catch up on entries too, some of them not replicated yet
        session = requests.Session()
        while not stop.is_set():
            try:
                session.post(f"{server.url}/api/predict/", json={"model": "busy", "features": {"x": 1.0}}, timeout=30)
            except requests.RequestException:
                session = requests.Session()

    threads = [threading.Thread(target=learner, args=(i,)) for i in range(LEARNERS)]
    threads += [threading.Thread(target=predictor) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 60
        while len(acknowledged) < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        # The replica falls behind (stopped), then its master dies: what it had not copied is lost. Without
        # WAIT, learns acknowledged meanwhile would be lost with it; with WAIT they wait, and are not acknowledged.
        replica = own_cluster.cut_replica_off(master)
        time.sleep(1.0)
        own_cluster.kill(master)
        own_cluster.resume(replica)
        own_cluster.wait_failed_over(master)
        # The new master has no replica to confirm writes: learns are 503 (retried) until the old one is back.
        own_cluster.restart(master)
        before = len(acknowledged)
        deadline = time.monotonic() + 60
        while len(acknowledged) < before + 200 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(120)
    assert len(acknowledged) >= 400, (len(acknowledged), answers, server.log_text()[-3000:])
    assert not unknown, unknown

    # Every worker's replica, and one loaded afresh from the store, has each acknowledged learn once.
    states = set()
    for _ in range(12):  # new connections: spread over the workers
        content = requests.get(f"{server.url}/api/model/download/busy/", timeout=30, headers={"Connection": "close"})
        counts = pickle.loads(content.content)["StandardScaler"].counts
        assert {tag for tag in acknowledged if counts.get(tag) != 1} == set()
        assert counts["x"] == len(acknowledged), (counts["x"], len(acknowledged))
        states.add(tuple(sorted(counts.items())))
    assert len(states) == 1
    assert sorted(acknowledged.values()) == list(range(1, len(acknowledged) + 1))  # one entry each, no gaps
