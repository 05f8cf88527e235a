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
from test_state import worker


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


def on_own_cluster(settings, tmp_path, cluster: RedisCluster, **river) -> DjangoClient:
    """Server code on ``cluster`` (key prefix "own"), quick to give up waiting for replicas."""
    settings.DJANGO_RIVER_ML = {"DATA_DIR": str(tmp_path), "DISABLE_AUTHENTICATION": True,
                                "STORAGE_BACKEND": "redis", "REDIS_CLUSTER": True, "REDIS_URL": cluster.url,
                                "REDIS_KEY_PREFIX": "own", "REDIS_WAIT_SECONDS": 0.5, **river}
    return DjangoClient()


def linear():
    return preprocessing.StandardScaler() | linear_model.LinearRegression()


@pytest.mark.parametrize("wait_replicas", [1, 0])
def test_a_learn_no_replica_confirms_is_not_acknowledged(own_cluster, settings, tmp_path, wait_replicas):
    """With WAIT (the default on a cluster) a learn its master's replica never got answers 503; without, 201."""
    client = on_own_cluster(settings, tmp_path, own_cluster, REDIS_WAIT_REPLICAS=wait_replicas)
    client.upload_model(preprocessing.StandardScaler() | linear_model.LinearRegression(), "regression", "m")
    assert client.learn("m", {"x": 1.0}, ground_truth=1.0)["sequence"] == 1
    own_cluster.kill(own_cluster.replica_of(model_master(own_cluster, "own", "m")))
    if wait_replicas:
        with pytest.raises(StorageUnavailable, match="not acknowledged"):
            client.learn("m", {"x": 2.0}, ground_truth=2.0)
    else:
        assert client.learn("m", {"x": 2.0}, ground_truth=2.0)["sequence"] == 2


def test_a_retried_learn_is_not_acknowledged_again_before_a_replica_has_it(own_cluster, settings, tmp_path):
    """The retry a 503 asks for (same idempotency key) finds its key recorded: it is a duplicate, but answered
    only once the learn is on a replica, as a first acknowledgement would be."""
    client = on_own_cluster(settings, tmp_path, own_cluster)
    client.upload_model(linear(), "regression", "m")
    assert client.learn("m", {"x": 1.0}, ground_truth=1.0, idempotency_key="k1")["sequence"] == 1
    master = model_master(own_cluster, "own", "m")
    replica = own_cluster.cut_replica_off(master)
    with pytest.raises(StorageUnavailable, match="not acknowledged"):
        client.learn("m", {"x": 2.0}, ground_truth=2.0, idempotency_key="k2")
    with pytest.raises(StorageUnavailable, match="not acknowledged"):
        client.learn("m", {"x": 2.0}, ground_truth=2.0, idempotency_key="k2")
    own_cluster.resume(replica)
    retried = wait_for_an_answer(lambda: client.learn("m", {"x": 2.0}, ground_truth=2.0, idempotency_key="k2"))
    assert retried == {"model": "m", "sequence": 2, "duplicate": True}


def wait_for_an_answer(call, seconds: float = 30):
    """``call()``'s answer once the store takes it (a replica catching up meanwhile answers 503)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except StorageUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_an_upload_the_models_index_replica_lacks_is_not_acknowledged(own_cluster, settings, tmp_path):
    """The list of models lives on one master; an upload is listed after a failover of that master only if
    its entry reached a replica: else it is not acknowledged."""
    client = on_own_cluster(settings, tmp_path, own_cluster)
    index_master = own_cluster.master_of("own:models")
    name = next(f"m{i}" for i in range(100) if model_master(own_cluster, "own", f"m{i}") != index_master)
    own_cluster.cut_replica_off(index_master)
    with pytest.raises(StorageUnavailable, match="not acknowledged"):
        client.upload_model(linear(), "regression", name)


def test_a_cluster_with_no_node_answering_is_a_503(own_cluster, settings, tmp_path):
    from rest_framework.test import APIClient

    client = on_own_cluster(settings, tmp_path, own_cluster)
    client.upload_model(linear(), "regression", "m")
    for port in own_cluster.ports:
        own_cluster.kill(port)
    with pytest.raises(StorageUnavailable):
        client.models()
    with pytest.raises(StorageUnavailable):
        client.learn("m", {"x": 1.0}, ground_truth=1.0)
    answer = APIClient().get("/api/models/")
    assert answer.status_code == 503, answer.content
    assert "Retry-After" in answer


def test_a_snapshot_of_entries_a_failover_lost_is_refused(replicated):
    """A version written by a replica whose last entries the log lost meanwhile (between its look at the log
    and the write) would be a state no log goes on from: the store refuses it, and the model serves on."""
    first = worker()
    first.upload_model(linear(), "regression", "m")
    for i in range(1, 6):
        first.learn("m", {"x": float(i), f"f{i}": 1.0}, ground_truth=float(i))
    replica = first.registry.replica("m")
    keep_only_entries_up_to(get_store(), "m", 3)
    with replica.lock, pytest.raises(StorageUnavailable, match="no longer has the entry"):
        first.registry._write_version(replica, "manual")
    first.learn("m", {"x": 0.0, "new": 1.0}, ground_truth=0.0)
    expected = {"x": 4, "f1": 1, "f2": 1, "f3": 1, "new": 1}
    assert {k: v for k, v in scaler_counts(worker(), "m").items() if v} == expected
    assert {k: v for k, v in scaler_counts(first, "m").items() if v} == expected


def test_an_owners_index_is_written_under_their_lock_even_without_a_quota(replicated, settings):
    """A change of owner by staff (no quota to check) still waits for the new owner's lock: a quota count
    under it forgets the names whose model is not the owner's, never one being given to them."""
    if replicated != "redis-cluster":
        pytest.skip("one Redis changes the owner and the owner's set in one script")
    from django_river_ml.storage.base import Access

    store = get_store()
    worker().upload_model(linear(), "regression", "m")
    info = store.model_info("m")
    lock = store.owner_key("owner-lock", "alice")
    store.redis.set(lock, "someone else's", px=20_000)
    done = threading.Event()
    changer = threading.Thread(target=lambda: (store.set_access("m", info.incarnation, Access(owner="alice")),
                                               done.set()))
    changer.start()
    assert not done.wait(0.5)  # waits for the lock
    store.redis.delete(lock)
    changer.join(15)
    assert done.is_set() and store.owned_count("alice") == 1


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
