"""The snapshot + log core: replicas in several "processes", rejected entries, snapshots, restarts.

Each ModelRegistry here stands for one worker process: it has its own replicas
and shares only the store with the others.
"""

from __future__ import annotations

import pickle
import threading
from unittest.mock import ANY

import pytest
from river import base, linear_model, preprocessing

from django_river_ml.client import DjangoClient
from django_river_ml.exceptions import ModelFailed
from django_river_ml.state import ModelRegistry
from django_river_ml.storage import get_store, make_store
from flavored_models import examples


class Fragile(base.Regressor):
    """A final pipeline step that raises on the feature ``boom`` (after earlier steps learned)."""

    def __init__(self):
        self.seen = 0

    def learn_one(self, x, y=None):
        if "boom" in x:
            raise ValueError("boom is not allowed")
        self.seen += 1

    def predict_one(self, x):
        return float(self.seen)


def fragile_pipeline():
    return preprocessing.StandardScaler() | Fragile()


def worker(backend_store=None) -> DjangoClient:
    """A client with its own registry, as a separate worker process would have."""
    return DjangoClient(store=backend_store or get_store())


def state_of(client: DjangoClient, name: str):
    model = client.get_model(name)
    return dict(model["StandardScaler"].counts), model["Fragile"].seen


def test_learns_in_one_worker_are_seen_by_another(backend):
    first, second = worker(), worker()
    first.upload_model(preprocessing.StandardScaler() | linear_model.LinearRegression(), "regression", "shared")
    x0 = examples("regression")[0][0]
    assert second.predict("shared", x0)["prediction"] == 0.0
    for x, y in examples("regression", 20):
        first.learn("shared", x, ground_truth=y)
    assert second.predict("shared", x0)["prediction"] == first.predict("shared", x0)["prediction"] != 0.0
    assert second.metrics("shared") == first.metrics("shared")
    assert second.stats("shared")["learn"]["n_calls"] == 20


def test_a_worker_learns_into_a_name_uploaded_again_with_another_flavor(backend):
    """Its replica of the old upload must not judge the learn (a regression's label refused for a classifier)."""
    first, second = worker(), worker()
    first.upload_model(preprocessing.StandardScaler() | linear_model.LinearRegression(), "regression", "reused")
    second.learn("reused", {"x": 1.0}, ground_truth=3.5)  # second keeps a replica of the regression
    first.delete_model("reused")
    first.upload_model(preprocessing.StandardScaler() | linear_model.LogisticRegression(), "binary", "reused")
    assert second.learn("reused", {"x": 1.0}, ground_truth=True)["sequence"] == 1
    assert second.metrics("reused") == first.metrics("reused")


def test_failed_learn_leaves_no_trace_in_any_worker(backend):
    first, second = worker(), worker()
    first.upload_model(fragile_pipeline(), "custom", "fragile")
    first.learn("fragile", {"a": 1.0}, ground_truth=1.0)
    second.learn("fragile", {"a": 2.0}, ground_truth=1.0)
    before = state_of(first, "fragile")
    assert before == ({"a": 2}, 2)

    # The scaler learns before the last step raises: the replica must not keep that half-learn.
    with pytest.raises(ModelFailed, match="boom is not allowed"):
        first.learn("fragile", {"a": 3.0, "boom": 1.0}, ground_truth=1.0)
    assert state_of(first, "fragile") == before
    assert state_of(second, "fragile") == before
    assert first.stats("fragile")["learn"]["n_calls"] == 2

    # Later learns work everywhere and the rejected entry stays out.
    second.learn("fragile", {"a": 4.0}, ground_truth=1.0)
    assert state_of(first, "fragile") == state_of(second, "fragile") == ({"a": 3}, 3)
    # A worker starting now replays the log and skips the rejected entry too.
    assert state_of(worker(), "fragile") == ({"a": 3}, 3)


def test_worker_that_meets_a_bad_entry_first_rebuilds_without_it(backend):
    """Another worker applies a bad entry before its author marked it rejected."""
    first, second = worker(), worker()
    first.upload_model(fragile_pipeline(), "custom", "race")
    first.learn("race", {"a": 1.0}, ground_truth=1.0)
    state_of(second, "race")  # second's replica is now current
    info = first.store.model_info("race")
    # An append whose author has not applied it yet (as if it were still in flight).
    first.store.append("race", info.incarnation, pickle.dumps({"x": {"a": 9.0, "boom": 1}, "y": 1.0}))
    assert state_of(second, "race") == ({"a": 1}, 1)
    assert first.store.entries(info.name, info.incarnation, 1, 2)[0].rejected
    assert state_of(first, "race") == ({"a": 1}, 1)


def test_snapshots_trim_the_log_and_stale_workers_catch_up(backend, settings):
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "SNAPSHOT_EVERY": 5, "SNAPSHOTS_KEPT": 2}
    first, stale = worker(), worker()
    first.upload_model(preprocessing.StandardScaler() | linear_model.LinearRegression(), "regression", "snap")
    data = examples("regression", 23)
    for x, y in data[:3]:
        first.learn("snap", x, ground_truth=y)
    x0 = data[0][0]
    stale.predict("snap", x0)  # stale's replica stops at sequence 3
    for x, y in data[3:]:
        first.learn("snap", x, ground_truth=y)

    info = first.store.model_info("snap")
    assert info.head == 23
    assert first.store.latest_snapshot(info.name, info.incarnation)[0] == 20
    # Two snapshots kept (15, 20): the log up to 15 is gone, the tail after it remains.
    assert [entry.seq for entry in first.store.entries(info.name, info.incarnation, 0, 23)] == list(range(16, 24))

    assert stale.predict("snap", x0)["prediction"] == first.predict("snap", x0)["prediction"]
    assert stale.metrics("snap") == first.metrics("snap")
    assert dict(stale.get_model("snap")["StandardScaler"].counts) == {k: 23 for k in x0}


def test_state_survives_a_restart(backend, settings):
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "SNAPSHOT_EVERY": 10}
    client = worker()
    client.upload_model(preprocessing.StandardScaler() | linear_model.LinearRegression(), "regression", "durable")
    for x, y in examples("regression", 27):
        client.learn("durable", x, ground_truth=y)
    probes = [x for x, _ in examples("regression", 5)]
    before = [client.predict("durable", x)["prediction"] for x in probes]
    metrics_before = client.metrics("durable")

    # A new store object and registry: nothing in memory survives, only what was stored.
    restarted = DjangoClient(store=make_store())
    assert [restarted.predict("durable", x)["prediction"] for x in probes] == before
    assert restarted.metrics("durable") == metrics_before


def test_request_path_does_not_pickle_the_model(backend, monkeypatch):
    """Learn and predict apply log entries; they never (de)serialize the whole model.

    The one exception is growth.py's size measurement, at scheduled learns only (the first
    after 16 learns, then every SNAPSHOT_EVERY for a model far from MAX_MODEL_BYTES).
    """
    client = worker()
    client.upload_model(preprocessing.StandardScaler() | linear_model.LinearRegression(), "regression", "fast")
    client.predict("fast", {"x": 1.0})  # the replica is loaded once

    import django_river_ml.state as state

    calls = []
    request_thread = threading.current_thread()  # not the streams' publisher, which reads metrics in its own

    def record(name):
        return lambda *args: calls.append(name) if threading.current_thread() is request_thread else None

    monkeypatch.setattr(state, "dump_state", record("dump"))
    monkeypatch.setattr(state, "load_state", record("load"))
    for x, y in examples("regression", 50):
        client.learn("fast", x, ground_truth=y)
        client.predict("fast", x)
    assert calls == ["dump"]  # one measurement in 100 requests, no load


def test_deleted_model_is_gone_for_other_workers(backend):
    first, second = worker(), worker()
    first.upload_model(preprocessing.StandardScaler() | linear_model.LinearRegression(), "regression", "temp")
    second.predict("temp", {"x": 1.0})
    first.delete_model("temp")
    from django_river_ml.exceptions import ModelNotFound

    with pytest.raises(ModelNotFound):
        second.predict("temp", {"x": 1.0})
    with pytest.raises(ModelNotFound):
        second.learn("temp", {"x": 1.0}, ground_truth=1.0)


def test_replaced_model_is_reloaded_by_other_workers(backend):
    first, second = worker(), worker()
    first.upload_model(preprocessing.StandardScaler() | linear_model.LinearRegression(), "regression", "swap")
    for x, y in examples("regression", 10):
        second.learn("swap", x, ground_truth=y)
    first.upload_model(preprocessing.StandardScaler() | linear_model.LinearRegression(), "regression", "swap")
    x0 = examples("regression")[0][0]
    assert second.predict("swap", x0)["prediction"] == 0.0
    second.learn("swap", x0, ground_truth=1.0)
    assert first.store.model_info("swap").head == 1


def test_clusterer_predictions_change_every_replica_alike(backend):
    """KMeans draws random centers for unseen features when it predicts: that must be replicated."""
    from river import cluster

    first, second = worker(), worker()
    first.upload_model(cluster.KMeans(n_clusters=3, seed=1), "cluster", "km")
    for x, _ in examples("cluster", 20):
        second.learn("km", x)
    x0 = examples("cluster", 1)[0][0]
    predicted = first.predict("km", {**x0, "unseen": 1.0})["prediction"]
    assert predicted in (0, 1, 2)
    centers = first.get_model("km").centers
    assert "unseen" in centers[0]
    assert second.get_model("km").centers == centers
    assert worker().get_model("km").centers == centers
    for x, _ in examples("cluster", 5):
        first.learn("km", {**x, "later": 2.0})
    assert second.predict("km", x0)["prediction"] == first.predict("km", x0)["prediction"]
    assert second.get_model("km").centers == first.get_model("km").centers


@pytest.mark.parametrize("missing", [3, 5])
def test_a_log_with_a_hole_is_reported_not_replayed_forever(settings, tmp_path, missing):
    from django_river_ml.exceptions import ModelNotFound
    from django_river_ml.storage.shelve import ShelveStore

    store = ShelveStore(tmp_path / "store.sqlite3")
    client = DjangoClient(store=store)
    client.upload_model(preprocessing.StandardScaler() | linear_model.LinearRegression(), "regression", "holey")
    for x, y in examples("regression", 5):
        client.learn("holey", x, ground_truth=y)
    incarnation = store.model_info("holey").incarnation
    store.db.execute("DELETE FROM log WHERE incarnation = ? AND seq = ?", (incarnation, missing))
    with pytest.raises(ModelNotFound, match="incomplete"):
        DjangoClient(store=store).predict("holey", examples("regression", 1)[0][0])


# Shipping: a batch is applied once per host, not once per worker (see ModelRegistry._worth_shipping).

def count_applied(monkeypatch) -> dict:
    """Examples applied by each registry (by id), counted around ModelRegistry._apply."""
    import django_river_ml.state as state

    applied: dict[int, int] = {}
    real = ModelRegistry._apply

    def counting(replica, entry, watched):
        registry = counting.registry_of.get(id(replica), 0)
        applied[registry] = applied.get(registry, 0) + state.entry_rows(entry)
        return real(replica, entry, watched)

    counting.registry_of = {}
    monkeypatch.setattr(ModelRegistry, "_apply", staticmethod(counting))
    return applied, counting.registry_of


def batch(n: int, start: int = 0) -> list[dict]:
    return [{"features": x, "ground_truth": y} for x, y in examples("regression", start + n)[start:]]


def test_a_batch_is_applied_once_and_shipped_to_other_workers(backend, monkeypatch):
    first, second = worker(), worker()
    first.upload_model(preprocessing.StandardScaler() | linear_model.LinearRegression(), "regression", "shipped")
    x0 = examples("regression")[0][0]
    second.predict("shipped", x0)
    applied, registry_of = count_applied(monkeypatch)
    registry_of[id(first.registry.replica("shipped"))] = 1
    registry_of[id(second.registry.replica("shipped"))] = 2
    first.learn_many("shipped", batch(40))  # applied by the first worker, which snapshots right after it
    second.learn_many("shipped", batch(40, 40))  # the second loads that snapshot, then applies its own
    assert applied == {1: 40, 2: 40}
    assert second.predict("shipped", x0) == {**first.predict("shipped", x0), "identifier": ANY}
    assert second.metrics("shipped") == first.metrics("shipped")
    one_by_one = worker()
    one_by_one.upload_model(preprocessing.StandardScaler() | linear_model.LinearRegression(), "regression", "single")
    for example in batch(80):
        one_by_one.learn("single", example["features"], ground_truth=example["ground_truth"])
    assert one_by_one.metrics("single") == first.metrics("shipped")
    assert one_by_one.predict("single", x0)["prediction"] == first.predict("shipped", x0)["prediction"]


def test_a_shipped_batch_whose_appender_died_is_replayed_after_a_wait(backend):
    """The entry is in the log (acknowledged or not), its snapshot never comes: others replay it."""
    import django_river_ml.state as state

    first, second = worker(), worker()
    first.upload_model(preprocessing.StandardScaler() | linear_model.LinearRegression(), "regression", "orphan")
    store = first.store
    incarnation = store.model_info("orphan").incarnation
    rows = [{"x": e["features"], "y": e["ground_truth"]} for e in batch(30)]
    store.append("orphan", incarnation, pickle.dumps({"op": "learn_many", "rows": rows, "ship": 0.0}))
    x0 = examples("regression")[0][0]
    predicted = second.predict("orphan", x0)["prediction"]
    assert second.registry.replica("orphan").seq == 1
    reference = worker()
    reference.upload_model(preprocessing.StandardScaler() | linear_model.LinearRegression(), "regression", "ref")
    reference.learn_many("ref", batch(30))
    assert predicted == reference.predict("ref", x0)["prediction"]
    assert state.SHIP_WAIT_MARGIN_SECONDS < 1  # what the orphan cost the second worker, at most


def test_a_shipped_batch_that_raises_is_rejected_everywhere(backend):
    first, second = worker(), worker()
    first.upload_model(fragile_pipeline(), "custom", "fragile")
    second.predict("fragile", {"a": 1.0})
    bad = [{"features": {"a": float(i)}, "ground_truth": 1.0} for i in range(20)] + [
        {"features": {"boom": 1.0}, "ground_truth": 1.0}]
    with pytest.raises(ModelFailed) as refused:
        first.learn_many("fragile", bad)
    assert refused.value.row == 20
    first.learn_many("fragile", bad[:20])
    assert state_of(second, "fragile") == state_of(first, "fragile")
    assert state_of(first, "fragile")[1] == 20


def test_replicas_beyond_the_memory_budget_are_dropped_least_recently_used_first(backend, settings):
    import django_river_ml.state as state

    client = worker()
    for name in ("a", "b", "c", "d"):
        client.upload_model(preprocessing.StandardScaler() | linear_model.LinearRegression(), "regression", name)
    rows = examples("regression", 10)
    client.learn("a", *rows[0])
    stored = client.registry.replica("a").stored_bytes
    settings.DJANGO_RIVER_ML = {**getattr(settings, "DJANGO_RIVER_ML", {}),
                                "REPLICA_MEMORY_BYTES": int(2.5 * stored * state.MEMORY_PER_STORED_BYTE)}
    for x, y in rows:
        client.learn("a", x, ground_truth=y)
    for name in ("b", "c", "a", "d"):
        client.predict(name, rows[0][0])
    assert client.registry.replica_names() == ["a", "d"]  # b and c went first; a was used after them
    expected = worker().predict("b", rows[1][0])["prediction"]
    assert client.predict("b", rows[1][0])["prediction"] == expected  # loaded again, as it was
    assert client.registry.replica_names() == ["d", "b"]
    client.learn("c", *rows[2])  # a learn reloads too
    assert client.registry.replica_names() == ["b", "c"]
    assert client.metrics("a") == worker().metrics("a")  # a's learns live in the store, not in the dropped replica


def test_a_starting_worker_loads_the_models_called_most_recently(backend, settings):
    from django_river_ml import warmup
    from django_river_ml.state import get_registry

    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "STATS_FLUSH_SECONDS": 0}  # in the store at once
    client = DjangoClient()
    for name in ("old", "newer", "newest"):
        client.upload_model(preprocessing.StandardScaler() | linear_model.LinearRegression(), "regression", name)
    for name in ("old", "newer", "newest"):
        client.learn(name, *examples("regression", 1)[0])
    client.delete_model("newer")
    registry = get_registry()
    for name in registry.replica_names():
        registry.forget(name)
    recent = client.store.recent_models(5)
    assert warmup.warm(limit=3) == ["newest", "old"], recent  # the deleted one is skipped
    assert registry.replica_names() == ["newest", "old"]


def test_a_loaded_model_is_out_of_the_collectors_passes_and_freed_when_dropped(backend, settings):
    """Full collections would walk every loaded model (pauses that grew past a second with 400 trees)."""
    import gc
    import weakref

    from river import tree

    client = worker()
    client.upload_model(tree.HoeffdingTreeRegressor(), "regression", "tree")
    client.upload_model(tree.HoeffdingTreeRegressor(), "regression", "other")
    for x, y in examples("regression", 50):
        client.learn("tree", x, ground_truth=y)
    reader = worker()
    model = reader.registry.replica("tree").model  # loaded: settled
    assert not any(obj is model for obj in gc.get_objects())  # every generation the collector walks
    assert gc.get_freeze_count() > 0
    dropped = weakref.ref(model)
    del model
    stored = reader.registry.replica("tree").stored_bytes
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "REPLICA_MEMORY_BYTES": stored * 5}
    reader.predict("other", {"x": 1.0})  # "tree" is dropped to make room
    assert reader.registry.replica_names() == ["other"]
    assert dropped() is None  # frozen, yet freed: river's models hold no reference cycles
