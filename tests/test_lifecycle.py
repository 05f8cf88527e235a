"""Issue 14, a model's lifecycle: versions and rollback, champion and challengers, drift detection.

In process, on both stores: DjangoClient, and Django's test client over HTTP. Each DjangoClient made
with ``store=`` has a ModelRegistry of its own and stands for one worker process: it shares only the
store with the others (tests/test_lifecycle_live.py does the same through a live multi-worker server).

Expected states are computed apart from the server wherever they can be: a :class:`Reference` does
locally what the log's entries should do (the champion learns, then its drift detector sees its error,
then each challenger predicts, is scored and learns; a drift policy acts at the end of an entry), and
predictions are compared exactly.
"""

from __future__ import annotations

import json
import math
import pickle
import random
import threading
from types import SimpleNamespace

import pytest
from django.contrib.auth.models import AnonymousUser, User
from rest_framework.authtoken.models import Token
from river import drift, dummy, linear_model, optim, preprocessing, stats
from river.drift import binary as binary_drift

from django_river_ml import events
from django_river_ml.client import DjangoClient
from django_river_ml.describe import describe_metrics
from django_river_ml.exceptions import (
    AuthenticationRequired,
    ChallengerNotFound,
    InvalidInput,
    ModelFull,
    ModelNotFound,
    ModelTooLarge,
    QuotaExceeded,
    VersionNotFound,
)
from django_river_ml.flavors import get_flavor
from django_river_ml.storage import get_store, make_store
from example_project.custom_models import Fragile, RunningMean
from flavored_models import examples, make_model
from lifecycle_driving import expected_counts, roll_back_while_learning

DATA = examples("regression", 60)
LEARN, PROBES = DATA[:50], [x for x, _ in DATA[50:56]]


# Helpers -----------------------------------------------------------------------------------------------


def worker() -> DjangoClient:
    """A client with a registry of its own, as another worker process has."""
    return DjangoClient(store=get_store())


def configure(settings, **values) -> None:
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, **values}


def predictions(client: DjangoClient, name: str, rows=PROBES) -> list:
    return [client.predict(name, x)["prediction"] for x in rows]


def listed(client: DjangoClient, name: str) -> list[tuple]:
    """(version, sequence, kind) of each version, as the versions list gives them."""
    return [(v["version"], v["sequence"], v["kind"]) for v in client.versions(name)["versions"]]


def challenger_model():
    """A regression model that learns the same examples to other predictions than make_model's."""
    return preprocessing.StandardScaler() | linear_model.LinearRegression(optimizer=optim.SGD(0.03), l2=0.001)


class Captured:
    """The events emitted while it is open (river_event), and the drift signals."""

    def __init__(self):
        self.events, self.signals = [], []

    def __enter__(self):
        events.river_event.connect(self._event, dispatch_uid=id(self))
        events.drift_detected.connect(self._signal, dispatch_uid=id(self))
        return self

    def __exit__(self, *exc_info):
        events.river_event.disconnect(dispatch_uid=id(self))
        events.drift_detected.disconnect(dispatch_uid=id(self))

    def _event(self, sender, event, data, **kwargs):
        self.events.append((event, data))

    def _signal(self, sender, model, data, **kwargs):
        self.signals.append((model, data))

    def of(self, kind: str) -> list[dict]:
        return [data for event, data in self.events if event == kind]


def error_of(numeric: bool, prediction, target):
    """The error a drift detector is fed (docs: the absolute error of a number, else 1 for a wrong label)."""
    if prediction is None or prediction == {}:
        return None
    if isinstance(prediction, dict):
        prediction = max(prediction, key=prediction.get)
    return abs(target - prediction) if numeric else float(prediction != target)


class Reference:
    """Locally, what a champion's log entries should do to it, its challengers and its drift detector."""

    def __init__(self, flavor: str, model, detector=None, policy: str = "none"):
        self.flavor = get_flavor(flavor)
        self.numeric = flavor == "regression"
        self.model, self.metrics = model, self.flavor.make_metrics(model)
        self.make_detector, self.policy = detector, policy
        self.detector = detector() if detector else None
        self.challengers: dict[str, SimpleNamespace] = {}
        self.detections = 0

    def challenge(self, name: str, model) -> None:
        self.challengers[name] = SimpleNamespace(model=model, metrics=self.flavor.make_metrics(model), learned=0)

    def predict(self, rows=PROBES) -> list:
        return [self.flavor.bind(self.model).predict(dict(x)) for x in rows]

    def entry(self, rows, known=None) -> list[int]:
        """One log entry of ``rows`` ((x, y) pairs; ``known``: the predictions labels carry); the drifts found."""
        found = []
        for index, (x, y) in enumerate(rows):
            champion = self.flavor.bind(self.model, self.metrics)
            prediction = known[index] if known is not None else champion.predict(dict(x))
            champion.score(y, prediction)
            champion.learn(dict(x), y)
            error = error_of(self.numeric, prediction, y)
            if self.detector is not None and error is not None:
                self.detector.update(error)
                if self.detector.drift_detected:
                    found.append(index)
                    self.detections += 1
            for name in sorted(self.challengers):
                challenger = self.challengers[name]
                bound = self.flavor.bind(challenger.model, challenger.metrics)
                bound.score(y, bound.predict(dict(x)))
                bound.learn(dict(x), y)
                challenger.learned += 1
        if found and self.policy == "reset":
            self.model, self.detector = self.model.clone(), self.make_detector()
        elif found and self.policy == "promote" and self.best() is not None:
            self.promote(self.best())
        return found

    def best(self) -> str | None:
        """The challenger whose first metric is best (ties: the first name); one without a number has none."""
        def score(name):
            metric = self.challengers[name].metrics[0]
            return metric.get() if metric.bigger_is_better else -metric.get()

        scored = [name for name in sorted(self.challengers) if math.isfinite(score(name))]
        return max(scored, key=score) if scored else None

    def promote(self, name: str) -> None:
        winner = self.challengers.pop(name)
        self.model, self.metrics = winner.model, winner.metrics
        if self.make_detector:
            self.detector = self.make_detector()

    def described(self, name: str | None = None) -> dict:
        return describe_metrics(self.metrics if name is None else self.challengers[name].metrics)


# Versions and rollback ------------------------------------------------------------------------------------


def test_rollback_gives_back_the_predictions_and_metrics_of_that_version(backend):
    first, second = worker(), worker()
    first.upload_model(make_model("regression"), "regression", "m")
    assert listed(first, "m") == [(1, 0, "upload")]
    for x, y in LEARN[:20]:
        first.learn("m", x, ground_truth=y)
    with Captured() as captured:
        taken = first.take_version("m")
    assert (taken["model"], taken["version"], taken["sequence"], taken["kind"]) == ("m", 2, 20, "manual")
    assert taken["metrics"] == first.metrics("m") and taken["metrics"]["MAE"] > 0
    assert captured.of("version") == [{"model": "m", **{k: v for k, v in taken.items() if k != "model"}}]
    at_version, metrics_at_version = predictions(first, "m"), first.metrics("m")

    for x, y in LEARN[20:40]:
        second.learn("m", x, ground_truth=y)
    assert predictions(first, "m") != at_version  # it learned on

    with Captured() as captured:
        rolled = second.rollback("m", 2)
    assert (rolled["kind"], rolled["from_version"], rolled["version"], rolled["sequence"]) == ("rollback", 2, 3, 41)
    assert [{k: e[k] for k in ("model", "sequence", "from_version")} for e in captured.of("rollback")] == [
        {"model": "m", "sequence": 41, "from_version": 2}]
    for client in (first, second, worker()):  # every worker, a new one too
        assert predictions(client, "m") == at_version
        assert client.metrics("m") == metrics_at_version
    assert listed(first, "m") == [(1, 0, "upload"), (2, 20, "manual"), (3, 41, "rollback")]
    assert first.versions("m")["versions"][-1] == {k: v for k, v in rolled.items() if k != "model"}

    # The version as downloaded is the model at that version, and the model learns on from it.
    kept = pickle.loads(first.download_model("m", version=2))
    assert [kept.predict_one(x) for x in PROBES] == at_version
    before = pickle.loads(first.download_model("m", version=1))
    assert [before.predict_one(x) for x in PROBES] == [0.0] * len(PROBES)
    for x, y in LEARN[40:45]:
        second.learn("m", x, ground_truth=y)
        kept.learn_one(x, y)
    assert predictions(first, "m") == [kept.predict_one(x) for x in PROBES]


def test_a_rollback_keeps_the_challengers_and_counts_in_the_versions_list_of_every_worker(backend):
    first, second = worker(), worker()
    first.upload_model(make_model("regression"), "regression", "m")
    first.upload_model(challenger_model(), "regression", "c", challenger_of="m")
    for x, y in LEARN[:5]:
        first.learn("m", x, ground_truth=y)
    assert first.rollback("m", "1")["from_version"] == 1  # a number, as a query string would give it
    for x, y in LEARN[5:8]:
        second.learn("m", x, ground_truth=y)
    # The challenger learns on beside the model rolled back (the rollback changes which model serves).
    assert [c["learned"] for c in first.challengers("m")["challengers"]] == [8]
    assert first.versions("m") == second.versions("m") == worker().versions("m")
    assert [v.get("from_version") for v in first.versions("m")["versions"]] == [None, 1]


def tagged(tag: str) -> dict:
    """An example whose one feature is its tag: the model's StandardScaler counts which tags it learned."""
    return {tag: 1.0}


def learned_tags(client: DjangoClient, name: str) -> dict[str, int]:
    return dict(client.get_model(name)["StandardScaler"].counts)


def test_a_rollback_under_concurrent_learns_loses_no_learn_acknowledged_after_it(backend, settings):
    # Routine snapshots (and a trimmed log) while it happens: workers catch up from snapshots too.
    configure(settings, SNAPSHOT_EVERY=7, SNAPSHOTS_KEPT=2)
    owner = worker()
    owner.upload_model(make_model("regression"), "regression", "m")
    before = [f"pre-{i}" for i in range(5)]
    for tag in before:
        owner.learn("m", tagged(tag), ground_truth=1.0)
    version = owner.take_version("m")

    def new_learn():
        client = worker()
        return lambda tag: client.learn("m", tagged(tag), ground_truth=1.0)["sequence"]

    run = roll_back_while_learning(new_learn, lambda: worker().rollback("m", version["version"]),
                                   lambda: worker().take_version("m"), threads=4, late=6, enough=24)
    expected = expected_counts(run, before, lambda v: dict(
        pickle.loads(owner.download_model("m", version=v))["StandardScaler"].counts))
    sequences = [seq for seq, _, _ in run.acknowledged]
    assert len(set(sequences)) == len(sequences) and run.at not in sequences
    # Exactly what the version had, and every learn acknowledged after the rollback, each once.
    for client in (owner, worker()):
        assert learned_tags(client, "m") == expected
    assert ("rollback", version["version"]) in [(v["kind"], v.get("from_version")) for v in
                                                owner.versions("m")["versions"]]


def test_a_learn_whose_entry_was_snapshotted_past_while_it_waited_is_acknowledged(backend, settings):
    """Worker A appends a learn and, before it applies it, other workers write SNAPSHOTS_KEPT newer snapshots
    (the log up to them is trimmed). An older snapshot kept as a version must not stop A from catching up:
    its learn is in the log, so it is acknowledged, and the model has it."""
    configure(settings, SNAPSHOTS_KEPT=2)
    a, b = DjangoClient(store=make_store()), worker()  # A's store object is its own: its appends can be held
    b.upload_model(make_model("regression"), "regression", "m")
    b.learn("m", tagged("first"), ground_truth=1.0)
    a.predict("m", PROBES[0])  # A's replica is at 1
    b.take_version("m")  # a version at 1: a snapshot that stays
    appended, go = threading.Event(), threading.Event()
    real = a.store.append

    def held(*args, **kwargs):
        seq = real(*args, **kwargs)
        appended.set()
        go.wait(30)
        return seq

    a.store.append = held
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(_attempt(a.learn, "m", tagged("held"), ground_truth=1.0)))
    thread.start()
    assert appended.wait(30)
    for tag in ("later-1", "later-2"):  # two newer snapshots: the log up to the older one is trimmed
        b.learn("m", tagged(tag), ground_truth=1.0)
        b.take_version("m")
    go.set()
    thread.join(30)
    assert not isinstance(outcome[0], Exception), outcome
    assert outcome[0]["sequence"] == 2
    for client in (a, b, worker()):
        assert learned_tags(client, "m") == {"first": 1, "held": 1, "later-1": 1, "later-2": 1}


def _attempt(function, *args, **kwargs):
    try:
        return function(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - the caller looks at it
        return error


def test_versions_routes_over_http(api):
    DjangoClient().upload_model(make_model("regression"), "regression", "m")
    for x, y in LEARN[:10]:
        learned = api.post("/api/learn/", {"model": "m", "features": x, "ground_truth": y}, format="json")
        assert learned.status_code == 201
    # Taking a version has no body: one (an upload meant for a model named "versions"?) is refused.
    for body in ({"version": 3}, [1]):
        assert_error(api.post("/api/model/m/versions/", body, format="json"), 400, "no body")
    assert_error(api.post("/api/model/m/versions/", b"\x80\x05", content_type="application/octet-stream"), 400,
                 "no body", "reserved")
    assert api.get("/api/model/m/versions/").json()["versions"][1:] == []
    taken = api.post("/api/model/m/versions/", {}, format="json")
    assert taken.status_code == 201, taken.content
    assert {k: taken.json()[k] for k in ("model", "version", "sequence", "kind")} == {
        "model": "m", "version": 2, "sequence": 10, "kind": "manual"}
    at_version = [api.post("/api/predict/", {"model": "m", "features": x}, format="json").json()["prediction"]
                  for x in PROBES]
    for x, y in LEARN[10:20]:
        api.post("/api/learn/", {"model": "m", "features": x, "ground_truth": y}, format="json")

    downloaded = api.get("/api/model/download/m/?version=2")
    assert downloaded.status_code == 200
    assert downloaded["Content-Disposition"] == 'attachment; filename="m-v2.pkl"'
    assert [pickle.loads(downloaded.content).predict_one(x) for x in PROBES] == at_version
    now = pickle.loads(api.get("/api/model/download/m/").content)
    assert [now.predict_one(x) for x in PROBES] != at_version

    rolled = api.post("/api/model/m/rollback/", {"version": 2}, format="json")
    assert rolled.status_code == 200, rolled.content
    assert {k: rolled.json()[k] for k in ("model", "version", "sequence", "kind", "from_version")} == {
        "model": "m", "version": 3, "sequence": 21, "kind": "rollback", "from_version": 2}
    assert [api.post("/api/predict/", {"model": "m", "features": x}, format="json").json()["prediction"]
            for x in PROBES] == at_version
    versions = api.get("/api/model/m/versions/").json()
    assert versions["model"] == "m"
    assert [(v["version"], v["sequence"], v["kind"], v.get("from_version")) for v in versions["versions"]] == [
        (1, 0, "upload", None), (2, 10, "manual", None), (3, 21, "rollback", 2)]
    assert all(set(v["metrics"]) == {"MAE", "RMSE", "SMAPE"} and v["created"] > 0 for v in versions["versions"])


def test_a_new_upload_under_the_name_starts_its_own_versions(backend):
    client = worker()
    client.upload_model(make_model("regression"), "regression", "m")
    for x, y in LEARN[:3]:
        client.learn("m", x, ground_truth=y)
    client.take_version("m")
    client.upload_model(make_model("regression"), "regression", "m")  # a replacement: a new incarnation
    assert listed(client, "m") == [(1, 0, "upload")]
    with pytest.raises(VersionNotFound):
        client.download_model("m", version=2)
    with pytest.raises(VersionNotFound):
        client.rollback("m", 2)
    client.delete_model("m")
    with pytest.raises(ModelNotFound):
        client.versions("m")


RETENTION = {"VERSIONS_HOURLY": 0, "VERSIONS_DAILY": 0, "SNAPSHOT_EVERY": 2}


def learn_rows(client, name, rows):
    for x, y in rows:
        client.learn(name, x, ground_truth=y)


def test_retention_drops_routine_versions_and_keeps_marked_ones_and_the_newest_snapshots(backend, settings):
    configure(settings, **RETENTION, SNAPSHOTS_KEPT=2, VERSIONS_KEPT=1, VERSIONS_MARKED=2)
    client = worker()
    client.upload_model(make_model("regression"), "regression", "m")
    learn_rows(client, "m", LEARN[:3])  # a routine snapshot at 2
    client.take_version("m")  # 3, marked
    at_3 = predictions(client, "m")
    learn_rows(client, "m", LEARN[3:4])  # 4: the routine version at 2 goes (neither newest nor marked)
    assert listed(client, "m") == [(1, 0, "upload"), (3, 3, "manual"), (4, 4, "snapshot")]
    learn_rows(client, "m", LEARN[4:8])  # 6, 8: and 4 goes
    assert listed(client, "m") == [(1, 0, "upload"), (3, 3, "manual"), (5, 6, "snapshot"), (6, 8, "snapshot")]
    client.take_version("m")  # at 8, a routine snapshot's sequence: now marked; the upload is the 3rd newest marked
    assert listed(client, "m") == [(3, 3, "manual"), (5, 6, "snapshot"), (6, 8, "manual")]

    for gone in (1, 2, 4):
        with pytest.raises(VersionNotFound):
            client.download_model("m", version=gone)
        with pytest.raises(VersionNotFound):
            client.rollback("m", gone)
    kept = pickle.loads(client.download_model("m", version=3))
    assert [kept.predict_one(x) for x in PROBES] == at_3
    assert client.rollback("m", 3)["sequence"] == 9
    assert predictions(worker(), "m") == at_3


def test_retention_counts_a_version_taken_at_a_snapshot_once(backend, settings):
    # A version taken where a routine snapshot was is one version (its number kept): the newest three
    # are then the upload, the snapshot at 2 and it.
    configure(settings, **RETENTION, SNAPSHOTS_KEPT=1, VERSIONS_KEPT=3, VERSIONS_MARKED=1)
    client = worker()
    client.upload_model(make_model("regression"), "regression", "m")
    learn_rows(client, "m", LEARN[:4])
    assert listed(client, "m") == [(1, 0, "upload"), (2, 2, "snapshot"), (3, 4, "snapshot")]
    assert client.take_version("m")["version"] == 3
    assert listed(client, "m") == [(1, 0, "upload"), (2, 2, "snapshot"), (3, 4, "manual")]
    learn_rows(client, "m", LEARN[4:6])
    assert listed(client, "m") == [(2, 2, "snapshot"), (3, 4, "manual"), (4, 6, "snapshot")]


def test_retention_without_kept_versions_still_keeps_the_newest_snapshots(backend, settings):
    configure(settings, **RETENTION, SNAPSHOTS_KEPT=2, VERSIONS_KEPT=0, VERSIONS_MARKED=0)
    client = worker()
    client.upload_model(make_model("regression"), "regression", "m")
    client.take_version("m")
    learn_rows(client, "m", LEARN[:7])
    assert listed(client, "m") == [(3, 4, "snapshot"), (4, 6, "snapshot")]
    assert predictions(worker(), "m") == predictions(client, "m")  # a new worker starts from them


def test_retention_keeps_the_newest_version_of_each_recent_hour(backend, settings, monkeypatch):
    from django_river_ml import versions

    clock = [1_000 * 3600.0]
    monkeypatch.setattr(versions, "time", SimpleNamespace(time=lambda: clock[0]))
    configure(settings, VERSIONS_HOURLY=2, VERSIONS_DAILY=0, VERSIONS_KEPT=1, VERSIONS_MARKED=0, SNAPSHOTS_KEPT=1,
              SNAPSHOT_EVERY=1)
    client = worker()
    client.upload_model(make_model("regression"), "regression", "m")  # hour 1000
    for at, (x, y) in zip((1001.1, 1001.2, 1002.5), LEARN):
        clock[0] = at * 3600
        client.learn("m", x, ground_truth=y)
    # Now (hour 1002): the newest, and the newest of hour 1001; hour 1000 is past the two last hours.
    assert listed(client, "m") == [(3, 2, "snapshot"), (4, 3, "snapshot")]


# Challengers ----------------------------------------------------------------------------------------------


def test_a_challenger_learns_what_its_champion_learns_and_serves_once_promoted(backend):
    first, second = worker(), worker()
    first.upload_model(make_model("regression"), "regression", "champ")
    reference = Reference("regression", make_model("regression"))
    for client, (x, y) in zip([first, second] * 3, LEARN[:5]):  # before the challenger: not its to learn
        client.learn("champ", x, ground_truth=y)
        reference.entry([(x, y)])
    with Captured() as captured:
        name = second.upload_model(challenger_model(), "regression", "bold", challenger_of="champ")
    assert name == "bold" and captured.of("challenger") == [{"model": "champ", "challenger": "bold"}]
    reference.challenge("bold", challenger_model())
    assert [(c["name"], c["learned"], c["error"]) for c in first.challengers("champ")["challengers"]] == [
        ("bold", 0, None)]

    for client, (x, y) in zip([first, second] * 5, LEARN[5:15]):  # learns
        client.learn("champ", x, ground_truth=y)
        reference.entry([(x, y)])
    batch = LEARN[15:35]  # a batch (shipped: another worker loads the snapshot after it)
    second.learn_many("champ", [{"features": x, "ground_truth": y} for x, y in batch])
    reference.entry(batch)
    for client, (x, y) in zip([first, second] * 3, LEARN[35:40]):  # labels of past predictions
        made = client.predict("champ", x)
        assert made["prediction"] == reference.predict([x])[0]
        (second if client is first else first).label(y, made["identifier"], "champ")
        reference.entry([(x, y)], known=reference.predict([x]))

    for client in (first, second, worker()):
        seen = client.challengers("champ")
        assert seen["metrics"] == reference.described() == client.metrics("champ")
        assert seen["challengers"] == [{"name": "bold", "learned": 35, "error": None,
                                        "metrics": reference.described("bold")}]
        assert seen["sequence"] == 22  # 5 learns, the challenge, 10 learns, the batch, 5 labels
        assert predictions(client, "champ") == reference.predict()
    challenger_predictions = [reference.flavor.bind(reference.challengers["bold"].model).predict(dict(x))
                              for x in PROBES]
    champion_predictions = reference.predict()
    assert challenger_predictions != champion_predictions

    with Captured() as captured:
        promoted = first.promote("champ", "bold")
    assert (promoted["model"], promoted["challenger"], promoted["kind"]) == ("champ", "bold", "promote")
    assert captured.of("promote") == [{"model": "champ", "challenger": "bold", "sequence": promoted["sequence"]}]
    reference.promote("bold")
    for client in (first, second, worker()):
        assert predictions(client, "champ") == challenger_predictions
        assert client.metrics("champ") == reference.described()
        assert client.challengers("champ")["challengers"] == []
    kinds = [(v["sequence"], v["kind"], v.get("challenger")) for v in first.versions("champ")["versions"]]
    assert kinds[-2:] == [(promoted["sequence"] - 1, "before-promote", None),
                          (promoted["sequence"], "promote", "bold")]

    # The promoted model learns on under the champion's name.
    x, y = LEARN[40]
    second.learn("champ", x, ground_truth=y)
    reference.entry([(x, y)])
    assert predictions(first, "champ") == reference.predict()

    # The champion it replaced is a version to go back to.
    before = next(v["version"] for v in first.versions("champ")["versions"] if v["kind"] == "before-promote")
    first.rollback("champ", before)
    for client in (first, second):
        assert predictions(client, "champ") == champion_predictions


def test_a_version_taken_just_before_a_promotion_still_says_what_it_is(backend):
    client = worker()
    client.upload_model(make_model("regression"), "regression", "champ")
    client.upload_model(challenger_model(), "regression", "c", challenger_of="champ")
    learn_rows(client, "champ", LEARN[:3])
    manual = client.take_version("champ")
    promoted = client.promote("champ", "c")
    # The champion as it was is a version: the one just taken (one snapshot, one version).
    assert [(v["version"], v["sequence"]) for v in client.versions("champ")["versions"]][-2:] == [
        (manual["version"], promoted["sequence"] - 1), (promoted["version"], promoted["sequence"])]


def test_a_challenger_that_raises_is_stopped_and_its_champion_goes_on(backend):
    first, second = worker(), worker()
    first.upload_model(RunningMean(), "custom", "champ")
    first.upload_model(Fragile(), "custom", "fragile", challenger_of="champ")
    first.upload_model(RunningMean(), "custom", "steady", challenger_of="champ")
    first.learn("champ", {"a": 1}, ground_truth=2.0)
    second.learn("champ", {"boom": 1}, ground_truth=4.0)  # the champion learns it, Fragile raises
    first.learn("champ", {"a": 1}, ground_truth=6.0)
    for client in (first, second, worker()):
        seen = {c["name"]: c for c in client.challengers("champ")["challengers"]}
        assert seen["fragile"]["learned"] == 1
        assert seen["fragile"]["error"] == "ValueError: cannot learn from boom=1"
        assert (seen["steady"]["learned"], seen["steady"]["error"]) == (3, None)
        assert client.predict("champ", {})["prediction"] == 4.0  # the mean of 2, 4 and 6
    assert first.store.model_info("champ").head == 5  # two challenges, three learns: none rejected
    assert all(not entry.rejected for entry in first.store.entries("champ", first.store.model_info("champ").incarnation, 0, 5))


def test_withdrawn_challengers_learn_no_more(backend):
    first, second = worker(), worker()
    first.upload_model(make_model("regression"), "regression", "champ")
    first.upload_model(challenger_model(), "regression", "a", challenger_of="champ")
    first.upload_model(challenger_model(), "regression", "b", challenger_of="champ")
    learn_rows(first, "champ", LEARN[:2])
    with Captured() as captured:
        second.withdraw_challenger("champ", "a")
    assert captured.of("withdraw") == [{"model": "champ", "challenger": "a"}]
    learn_rows(second, "champ", LEARN[2:5])
    for client in (first, second):
        assert [(c["name"], c["learned"]) for c in client.challengers("champ")["challengers"]] == [("b", 5)]
    with pytest.raises(ChallengerNotFound):
        first.withdraw_challenger("champ", "a")
    with pytest.raises(ChallengerNotFound):
        first.promote("champ", "a")


def test_at_most_max_challengers(backend, settings):
    configure(settings, MAX_CHALLENGERS=2)
    client = worker()
    client.upload_model(make_model("regression"), "regression", "champ")
    for name in ("a", "b"):
        client.upload_model(challenger_model(), "regression", name, challenger_of="champ")
    with pytest.raises(QuotaExceeded, match="MAX_CHALLENGERS"):
        client.upload_model(challenger_model(), "regression", "c", challenger_of="champ")
    client.upload_model(challenger_model(), "regression", "b", challenger_of="champ")  # replaces b
    client.withdraw_challenger("champ", "a")
    client.upload_model(challenger_model(), "regression", "c", challenger_of="champ")
    assert [c["name"] for c in client.challengers("champ")["challengers"]] == ["b", "c"]


def test_two_workers_adding_challengers_at_once_stay_within_max_challengers(backend, settings):
    """Worker A checks the count, worker B adds one meanwhile, then A appends: the log must not take both."""
    configure(settings, MAX_CHALLENGERS=1)
    a, b = worker(), worker()
    a.upload_model(make_model("regression"), "regression", "champ")
    checked, added = threading.Event(), threading.Event()
    real = a.registry.append

    def paused(*args, **kwargs):  # A has checked the count; B goes first
        checked.set()
        added.wait(30)
        return real(*args, **kwargs)

    a.registry.append = paused
    outcome = []

    def add():
        try:
            outcome.append(a.add_challenger("champ", challenger_model(), "regression", name="from-a"))
        except Exception as error:  # noqa: BLE001 - checked below
            outcome.append(error)

    thread = threading.Thread(target=add)
    thread.start()
    assert checked.wait(30)
    b.add_challenger("champ", challenger_model(), "regression", name="from-b")
    added.set()
    thread.join(30)
    for client in (a, b, worker()):
        names = [c["name"] for c in client.challengers("champ")["challengers"]]
        assert names == ["from-b"], f"MAX_CHALLENGERS=1, but the model has challengers {names} (A got {outcome})"
    assert len(outcome) == 1 and isinstance(outcome[0], QuotaExceeded), outcome


def test_challengers_over_http(api, settings):
    configure(settings, MAX_CHALLENGERS=1)
    regression = pickle.dumps(make_model("regression"))
    uploaded = api.post("/api/model/regression/champ/", regression, content_type="application/octet-stream")
    assert uploaded.status_code == 201
    added = api.post("/api/model/regression/c/?challenger_of=champ", pickle.dumps(challenger_model()),
                     content_type="application/octet-stream")
    assert (added.status_code, added.json()) == (201, {"name": "c", "challenger_of": "champ"})
    for x, y in LEARN[:4]:
        api.post("/api/learn/", {"model": "champ", "features": x, "ground_truth": y}, format="json")
    seen = api.get("/api/model/champ/challengers/").json()
    assert [(c["name"], c["learned"], c["error"], set(c["metrics"])) for c in seen["challengers"]] == [
        ("c", 4, None, {"MAE", "RMSE", "SMAPE"})]
    assert seen["drift"] == {"detector": "ADWIN", "policy": "none", "detections": 0, "last_at": None}
    assert set(seen["metrics"]) == {"MAE", "RMSE", "SMAPE"} and seen["sequence"] == 5
    assert api.get("/api/models/").json()["models"] == ["champ"]  # a challenger is no model of its own
    over = api.post("/api/model/regression/d/?challenger_of=champ", regression, content_type="application/octet-stream")
    assert over.status_code == 409 and "MAX_CHALLENGERS" in over.json()["message"]
    promoted = api.post("/api/model/champ/promote/", {"challenger": "c"}, format="json")
    assert promoted.status_code == 200 and promoted.json()["kind"] == "promote"
    assert api.get("/api/model/champ/challengers/").json()["challengers"] == []
    # A challenger uploaded as a JSON spec.
    spec = [{"class": "preprocessing.StandardScaler"}, {"class": "linear_model.LinearRegression"}]
    added = api.post("/api/model/regression/s/?challenger_of=champ", json.dumps(spec), content_type="application/json")
    assert added.status_code == 201, added.content
    withdrawn = api.delete("/api/model/champ/challengers/s/")
    assert withdrawn.status_code == 200 and withdrawn.json()["model"] == "champ"
    assert api.get("/api/model/champ/challengers/").json()["challengers"] == []


# Drift ---------------------------------------------------------------------------------------------------

CHANGE, ROWS, BATCH = 300, 420, 20
#: How many examples after the change a detection may come: ADWIN looks every 32 (its clock), DDM at once.
DELAY = 64


def regression_stream() -> list[tuple[dict, float]]:
    """Targets around 0, then around 8 from row CHANGE on (seeded)."""
    rng = random.Random(7)
    return [({"i": float(i % 5)}, round(rng.gauss(0, 1) + (8 if i >= CHANGE else 0), 6)) for i in range(ROWS)]


def binary_stream() -> list[tuple[dict, bool]]:
    """Labels 90% true, flipped from row CHANGE on (seeded)."""
    rng = random.Random(0)
    return [({"i": float(i % 5)}, (rng.random() < 0.9) != (i >= CHANGE)) for i in range(ROWS)]


DRIFTS = {
    # flavor: (model, stream, detector name, river detector)
    "regression": (lambda: dummy.StatisticRegressor(stats.Mean()), regression_stream, "ADWIN", drift.ADWIN),
    "binary": (dummy.PriorClassifier, binary_stream, "DDM", binary_drift.DDM),
}


def stream_in_batches(clients, name, stream, reference) -> list[tuple[int, list[int]]]:
    """Learn ``stream`` in batches of BATCH, round robin over ``clients``; (sequence, drifts) of each batch
    as the reference found them."""
    expected = []
    for start in range(0, len(stream), BATCH):
        rows = stream[start:start + BATCH]
        client = clients[(start // BATCH) % len(clients)]
        seq = client.learn_many(name, [{"features": x, "ground_truth": y} for x, y in rows])["sequence"]
        expected.append((seq, [start + index for index in reference.entry(rows)]))
    return expected


@pytest.mark.parametrize("flavor", DRIFTS)
def test_drift_is_reported_after_the_change_within_a_bounded_delay_and_never_before(backend, flavor):
    make, stream, detector, river_detector = DRIFTS[flavor]
    workers = [worker(), worker()]
    workers[0].upload_model(make(), flavor, "m", drift_detector=detector)
    reference = Reference(flavor, make(), river_detector)
    with Captured() as captured:
        expected = stream_in_batches(workers, "m", stream(), reference)
    # The stream's own truth: the first detection comes after the change, within DELAY; none before it.
    rows = [row for _, found in expected for row in found]
    assert rows and CHANGE <= rows[0] <= CHANGE + DELAY, rows
    # Each detection reported once, by the worker that appended its entry, where the reference found it.
    reported = captured.of("drift")
    # (Batch k is entry k: its examples are rows (k - 1) * BATCH on.)
    assert [(e["sequence"], [(e["sequence"] - 1) * BATCH + i for i in e["examples"]]) for e in reported] == [
        (seq, found) for seq, found in expected if found]
    assert all(e["model"] == "m" and e["policy"] == "none" and e["detector"] == detector for e in reported)
    assert [data for _, data in captured.signals] == reported
    for client in (*workers, worker()):  # the detector is the same in every replica
        assert client.challengers("m")["drift"] == {
            "detector": detector, "policy": "none", "detections": len(rows),
            "last_at": max(seq for seq, found in expected if found)}
    assert workers[1].stats("m")["drift"]["n_calls"] == len(rows)  # counted once each, not once per worker


def test_single_learns_and_labels_feed_the_detector_too(backend):
    make, stream, detector, river_detector = DRIFTS["binary"]
    client = worker()
    client.upload_model(make(), "binary", "m", drift_detector=detector)
    reference = Reference("binary", make(), river_detector)
    found_at = []
    with Captured() as captured:
        for row, (x, y) in enumerate(stream()[:CHANGE + DELAY]):
            if row % 2:
                known = reference.predict([x])  # what the server kept for the label (the JSON has text keys)
                made = client.predict("m", x)
                seq = client.label(y, made["identifier"], "m")["sequence"]
                drifts = reference.entry([(x, y)], known=known)
            else:
                seq = client.learn("m", x, ground_truth=y)["sequence"]
                drifts = reference.entry([(x, y)])
            if drifts:
                found_at.append((seq, row))
    assert found_at and all(row >= CHANGE for _, row in found_at)
    assert [(e["sequence"], e["examples"]) for e in captured.of("drift")] == [(seq, [0]) for seq, _ in found_at]


def test_drift_policy_reset_learns_on_from_a_fresh_model(backend):
    make, stream, detector, river_detector = DRIFTS["regression"]
    workers = [worker(), worker()]
    workers[0].upload_model(make(), "regression", "m", drift_detector=detector, drift_policy="reset")
    reference = Reference("regression", make(), river_detector, policy="reset")
    expected = stream_in_batches(workers, "m", stream(), reference)
    drifted = [seq for seq, found in expected if found]
    assert drifted
    # The model serving now learned only what came after the last reset: around 8, not the running mean.
    fresh = make()
    for x, y in stream()[(drifted[-1] - 1) * BATCH + BATCH:]:
        fresh.learn_one(x, y)
    for client in (*workers, worker()):
        assert predictions(client, "m", [{"i": 0.0}]) == reference.predict([{"i": 0.0}]) == [fresh.predict_one({})]
    assert 7 < fresh.predict_one({}) < 9
    drift_versions = [v["sequence"] for v in workers[0].versions("m")["versions"] if v["kind"] == "drift"]
    assert drift_versions == drifted


def test_drift_policy_promote_lets_the_best_challenger_serve(backend):
    make, stream, detector, river_detector = DRIFTS["regression"]
    workers = [worker(), worker()]
    workers[0].upload_model(make(), "regression", "m", drift_detector=detector, drift_policy="promote")
    reference = Reference("regression", make(), river_detector, policy="promote")
    for name, challenger in (("quick", lambda: dummy.StatisticRegressor(stats.EWMean(0.5))),
                             ("least", lambda: dummy.StatisticRegressor(stats.Min()))):
        workers[1].upload_model(challenger(), "regression", name, challenger_of="m")
        reference.challenge(name, challenger())
    names = []
    real = reference.promote
    reference.promote = lambda name: (names.append(name), real(name))
    expected = stream_in_batches(workers, "m", stream(), reference)
    assert names[:1] == ["quick"]  # the lower MAE (the other's is NaN: it predicted infinity first)
    promotions = [v for v in workers[0].versions("m")["versions"] if v["kind"] == "drift"]
    assert [v["sequence"] for v in promotions] == [seq for seq, found in expected if found]
    for client in (*workers, worker()):
        assert predictions(client, "m", [{"i": 0.0}]) == reference.predict([{"i": 0.0}])
        assert [c["name"] for c in client.challengers("m")["challengers"]] == sorted(reference.challengers)


# Bad input ------------------------------------------------------------------------------------------------


def assert_error(response, status: int, *words: str) -> str:
    assert response.status_code == status, (response.status_code, response.content[:300])
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"message"} and body["message"], body
    for word in words:
        assert word in body["message"], (word, body["message"])
    return body["message"]


@pytest.fixture
def champ(api):
    """A regression model "champ" with a challenger "c", and 3 learns (made in process: no sandbox to wait for)."""
    client = DjangoClient()
    client.upload_model(make_model("regression"), "regression", "champ")
    client.upload_model(challenger_model(), "regression", "c", challenger_of="champ")
    learn_rows(client, "champ", LEARN[:3])
    return api


def head(name="champ"):
    info = get_store().model_info(name)
    return info.head if info else None


UNKNOWN_MODEL = [
    ("get", "/api/model/ghost/versions/", None),
    ("post", "/api/model/ghost/versions/", None),
    ("post", "/api/model/ghost/rollback/", {"version": 1}),
    ("get", "/api/model/ghost/challengers/", None),
    ("delete", "/api/model/ghost/challengers/c/", None),
    ("post", "/api/model/ghost/promote/", {"challenger": "c"}),
    ("get", "/api/model/download/ghost/?version=1", None),
]


def test_unknown_model_on_every_lifecycle_route(champ):
    for method, path, body in UNKNOWN_MODEL:
        assert_error(getattr(champ, method)(path, body, format="json"), 404, "ghost")
    upload = champ.post("/api/model/regression/x/?challenger_of=ghost", pickle.dumps(challenger_model()),
                        content_type="application/octet-stream")
    assert_error(upload, 404, "ghost")
    assert head("x") is None


BAD_VERSIONS = [0, -1, "x", True, False, 1.5, 1.0, "１", "1.0", None, [], {}, [1], 2**53 + 1, 10**30, ""]


def test_rollback_to_a_bad_version_is_400(champ):
    before = head()
    for version in BAD_VERSIONS:
        response = champ.post("/api/model/champ/rollback/", {"version": version}, format="json")
        assert response.status_code == 400, (version, response.content)
        assert_error(response, 400, "version")
    assert head() == before


def test_download_of_a_bad_version_is_400(champ):
    for version in ["", "0", "-1", "x", "true", "1.5", "1.0", "１", " 1", str(2**53 + 1), "1e3"]:
        response = champ.get("/api/model/download/champ/", {"version": version})
        assert response.status_code == 400, (version, response.status_code)
        assert_error(response, 400, "version")


def test_unknown_version_is_404(champ):
    before = head()
    for version in (2, 999, 2**53):
        assert_error(champ.post("/api/model/champ/rollback/", {"version": version}, format="json"), 404, str(version))
        assert_error(champ.get("/api/model/download/champ/", {"version": version}), 404, str(version))
        with pytest.raises(VersionNotFound):
            DjangoClient().rollback("champ", version)
    assert head() == before


def test_rollback_body_must_name_a_version(champ):
    for body in ({}, {"versoin": 1}, {"challenger": "c"}):
        assert_error(champ.post("/api/model/champ/rollback/", body, format="json"), 400, "version")
    assert_error(champ.post("/api/model/champ/rollback/", [1], format="json"), 400, "object")
    assert_error(champ.post("/api/model/champ/rollback/", "1", content_type="application/json"), 400)
    # A pickle (an upload to /model/<flavor>/rollback/ comes here): refused, saying the name is reserved.
    assert_error(champ.post("/api/model/champ/rollback/", b"\x80\x04", content_type="application/octet-stream"), 400,
                 "rollback", "reserved")
    assert champ.post("/api/model/champ/rollback/", {"version": 1}, format="json").status_code == 200


def test_versions_and_challengers_refuse_other_methods(champ):
    assert_error(champ.put("/api/model/champ/versions/", {}, format="json"), 405)
    assert_error(champ.delete("/api/model/champ/versions/"), 405)
    assert_error(champ.get("/api/model/champ/rollback/"), 405)
    assert_error(champ.get("/api/model/champ/promote/"), 405)
    assert_error(champ.post("/api/model/champ/challengers/c/", {}, format="json"), 405)


def test_challenger_of_another_flavor_is_400(champ):
    before = head()
    for flavor, model in (("binary", make_model("binary")), ("custom", RunningMean())):
        response = champ.post(f"/api/model/{flavor}/x/?challenger_of=champ", pickle.dumps(model),
                              content_type="application/octet-stream")
        assert_error(response, 400, "regression", flavor)
    assert head() == before
    with pytest.raises(InvalidInput):
        DjangoClient().add_challenger("champ", make_model("binary"), "binary")


def test_promote_of_what_is_no_challenger_is_404(champ):
    before = head()
    for challenger in ("nope", "champ", 3):  # a model, not its challenger; a number
        assert_error(champ.post("/api/model/champ/promote/", {"challenger": challenger}, format="json"), 404,
                     str(challenger))
    for body in ({}, {"challenger": None}, {"challenger": ""}, {"name": "c"}):
        assert_error(champ.post("/api/model/champ/promote/", body, format="json"), 400, "challenger")
    assert_error(champ.post("/api/model/champ/promote/", {"challenger": "a b"}, format="json"), 400, "'a b'")
    assert_error(champ.post("/api/model/champ/promote/", ["c"], format="json"), 400)
    assert head() == before
    assert [c["name"] for c in champ.get("/api/model/champ/challengers/").json()["challengers"]] == ["c"]


def test_withdraw_of_an_unknown_challenger_is_404(champ):
    before = head()
    assert_error(champ.delete("/api/model/champ/challengers/nope/"), 404, "nope")
    assert_error(champ.delete("/api/model/champ/challengers/champ/"), 404)
    assert head() == before


def test_more_than_max_challengers_is_409(champ, settings):
    configure(settings, MAX_CHALLENGERS=1)
    before = head()
    response = champ.post("/api/model/regression/d/?challenger_of=champ", pickle.dumps(challenger_model()),
                          content_type="application/octet-stream")
    assert_error(response, 409, "MAX_CHALLENGERS")
    assert head() == before


RESERVED = ("versions", "rollback", "challengers", "promote")


@pytest.mark.parametrize("word", RESERVED)
def test_a_model_cannot_take_a_lifecycle_routes_name(api, word):
    # Through DjangoClient: refused by name.
    with pytest.raises(InvalidInput, match="reserved"):
        DjangoClient().upload_model(make_model("regression"), "regression", word)
    # Over HTTP, POST /model/<flavor>/<word>/ is the lifecycle route of a model named like the flavor: an upload
    # there is refused, saying the name is reserved (challengers takes no POST), with or without such a model.
    bodies = [(pickle.dumps(make_model("regression")), "application/octet-stream"),
              (json.dumps([{"class": "linear_model.LinearRegression"}]), "application/json")]
    for exists in (False, True):
        if exists:
            DjangoClient().upload_model(make_model("regression"), "regression", "regression")
        for body, content_type in bodies:
            response = api.post(f"/api/model/regression/{word}/", body, content_type=content_type)
            if word == "challengers":
                assert_error(response, 405, "POST")
            else:
                assert_error(response, 400, "reserved", word)
        # A one-step spec is a JSON object: never taken for a call that succeeds either.
        response = api.post(f"/api/model/regression/{word}/", json.dumps({"class": "linear_model.LinearRegression"}),
                            content_type="application/json")
        assert 400 <= response.status_code < 500, (word, exists, response.status_code, response.content[:200])
    assert api.get("/api/models/").json()["models"] == ["regression"]
    assert [v["kind"] for v in api.get("/api/model/regression/versions/").json()["versions"]] == ["upload"]
    assert head("regression") == 0


@pytest.mark.parametrize("query, words", [
    ("drift_detector=adwin", ["drift_detector"]),
    ("drift_detector=os.system", ["drift_detector"]),
    ("drift_policy=sometimes", ["drift_policy"]),
    ("drift_detector=DDM", ["DDM", "classifiers"]),
    ("drift_detector=HDDMA", ["HDDMA", "classifiers"]),
])
def test_bad_drift_options_are_400(api, query, words):
    response = api.post(f"/api/model/regression/m/?{query}", pickle.dumps(make_model("regression")),
                        content_type="application/octet-stream")
    assert_error(response, 400, *words)
    assert head("m") is None


@pytest.mark.parametrize("query", ["challenger_of=", "drift_policy=", "drift_detector="])
def test_an_empty_upload_option_is_400_not_absent(api, query):
    """``?challenger_of=`` (an empty variable in a script) must not upload an ordinary model over the champion."""
    api.post("/api/model/regression/champ/", pickle.dumps(make_model("regression")),
             content_type="application/octet-stream")
    response = api.post(f"/api/model/regression/champ/?{query}", pickle.dumps(make_model("binary")),
                        content_type="application/octet-stream")
    assert_error(response, 400, query.rstrip("="), "empty")
    assert head("champ") == 0 and [v["kind"] for v in api.get("/api/model/champ/versions/").json()["versions"]] == [
        "upload"]


def test_a_challenger_refuses_drift_options_of_its_own(api):
    api.post("/api/model/regression/champ/", pickle.dumps(make_model("regression")),
             content_type="application/octet-stream")
    response = api.post("/api/model/regression/ch/?challenger_of=champ&drift_policy=reset",
                        pickle.dumps(make_model("regression")), content_type="application/octet-stream")
    assert_error(response, 400, "challenger", "drift")
    assert api.get("/api/model/champ/challengers/").json()["challengers"] == []


def test_drift_options_are_per_model(api):
    for flavor, query, drift_state in (
            ("binary", "drift_detector=DDM&drift_policy=reset", {"detector": "DDM", "policy": "reset"}),
            ("regression", "drift_detector=none", {"detector": None, "policy": "none"}),
            ("regression", "drift_detector=KSWIN&drift_policy=promote", {"detector": "KSWIN", "policy": "promote"}),
            ("cluster", "", {"detector": None, "policy": "none"}),  # nothing to err on
    ):
        response = api.post(f"/api/model/{flavor}/m/?{query}", pickle.dumps(make_model(flavor)),
                            content_type="application/octet-stream")
        assert response.status_code == 201, response.content
        seen = api.get("/api/model/m/challengers/").json()["drift"]
        assert {k: seen[k] for k in drift_state} == drift_state, (flavor, query, seen)
    response = api.post("/api/model/cluster/m/?drift_detector=DDM", pickle.dumps(make_model("cluster")),
                        content_type="application/octet-stream")
    assert_error(response, 400, "DDM")


# Rights ---------------------------------------------------------------------------------------------------


@pytest.fixture
def owners(backend, settings, db):
    configure(settings, DISABLE_AUTHENTICATION=False)
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    people = SimpleNamespace(alice=User.objects.create_user("alice"), bob=User.objects.create_user("bob"))
    alice = DjangoClient(user=people.alice)
    alice.upload_model(make_model("regression"), "regression", "alices")
    alice.upload_model(challenger_model(), "regression", "c", challenger_of="alices")
    learn_rows(alice, "alices", LEARN[:3])
    alice.take_version("alices")
    return people


def token(user) -> dict:
    return {"HTTP_AUTHORIZATION": f"Token {Token.objects.get(user=user).key}"}


LIFECYCLE_ROUTES = [
    ("get", "/api/model/alices/versions/", None),
    ("post", "/api/model/alices/versions/", None),
    ("post", "/api/model/alices/rollback/", {"version": 1}),
    ("get", "/api/model/alices/challengers/", None),
    ("delete", "/api/model/alices/challengers/c/", None),
    ("post", "/api/model/alices/promote/", {"challenger": "c"}),
    ("get", "/api/model/download/alices/?version=1", None),
]


def test_another_users_model_is_not_found_on_every_lifecycle_route(owners):
    from rest_framework.test import APIClient

    api = APIClient()
    before = head("alices")
    hidden = "No model named 'alices'."
    for method, path, body in LIFECYCLE_ROUTES:
        response = getattr(api, method)(path, body, format="json", **token(owners.bob))
        assert assert_error(response, 404) == hidden, (method, path)
        assert getattr(api, method)(path, body, format="json").status_code == 401, (method, path)
    upload = api.post("/api/model/regression/x/?challenger_of=alices", pickle.dumps(challenger_model()),
                      content_type="application/octet-stream", **token(owners.bob))
    assert assert_error(upload, 404) == hidden
    assert head("alices") == before
    bob = DjangoClient(user=owners.bob)
    for call in (lambda: bob.versions("alices"), lambda: bob.take_version("alices"), lambda: bob.rollback("alices", 1),
                 lambda: bob.challengers("alices"), lambda: bob.withdraw_challenger("alices", "c"),
                 lambda: bob.promote("alices", "c"), lambda: bob.download_model("alices", version=1),
                 lambda: bob.add_challenger("alices", challenger_model(), "regression")):
        with pytest.raises(ModelNotFound, match="No model named 'alices'"):
            call()
    # The owner's calls work, over HTTP too (the challenger withdrawn comes back to be promoted).
    for method, path, body in LIFECYCLE_ROUTES:
        if path.endswith("/promote/"):
            DjangoClient(user=owners.alice).add_challenger("alices", challenger_model(), "regression", name="c")
        response = getattr(api, method)(path, body, format="json", **token(owners.alice))
        assert response.status_code in (200, 201), (method, path, response.content[:200])


def test_readers_of_a_public_route_may_look_but_not_change(owners):
    reader = DjangoClient(user=AnonymousUser(), public=True)
    assert [v["kind"] for v in reader.versions("alices")["versions"]] == ["upload", "manual"]
    assert [c["name"] for c in reader.challengers("alices")["challengers"]] == ["c"]
    assert reader.download_model("alices", version=1)
    for call in (lambda: reader.take_version("alices"), lambda: reader.rollback("alices", 1),
                 lambda: reader.promote("alices", "c"), lambda: reader.withdraw_challenger("alices", "c"),
                 lambda: reader.add_challenger("alices", challenger_model(), "regression")):
        with pytest.raises(AuthenticationRequired):
            call()


def test_a_user_the_model_is_shared_with_may_run_its_lifecycle(owners):
    DjangoClient(user=owners.alice).set_access("alices", users=["bob"])
    bob = DjangoClient(user=owners.bob)
    assert bob.rollback("alices", 1)["kind"] == "rollback"
    assert bob.promote("alices", "c")["kind"] == "promote"



# The checkpoint guard (ROLLBACK_MARGIN) ---------------------------------------------------------------


def degrading_stream(seed: int = 3) -> list[tuple[dict, float]]:
    """y = 2x for 200 rows, then y = -50x: the model's MAE climbs far above what it was."""
    rng = random.Random(seed)
    rows = []
    for i in range(400):
        x = rng.random()
        rows.append(({"x": x}, 2 * x if i < 200 else -50 * x))
    return rows


def rollbacks_seen(run, client, name) -> list[dict]:
    """The rollback events ``run`` caused, each with the versions there were when it came."""
    seen = []

    def receiver(sender, event, data, **kwargs):
        if event == "rollback":
            seen.append({**data, "versions": client.versions(name)["versions"]})

    events.river_event.connect(receiver, weak=False)
    try:
        run()
    finally:
        events.river_event.disconnect(receiver)
    return seen


@pytest.mark.parametrize("margin", [None, 0.5])
def test_the_guard_rolls_back_once_to_the_best_version_only_when_set(backend, settings, margin):
    configure(settings, SNAPSHOT_EVERY=20, ROLLBACK_MARGIN=margin, DRIFT_DETECTOR=None)
    client = worker()
    client.upload_model(preprocessing.StandardScaler() | linear_model.LinearRegression(), "regression", "g")
    rows = degrading_stream()
    seen = rollbacks_seen(lambda: learn_rows(client, "g", rows), client, "g")
    versions = client.versions("g")["versions"]
    if margin is None:
        assert seen == [] and "rollback" not in {v["kind"] for v in versions}
        return
    assert seen, "the MAE grew tenfold and the guard did nothing"
    first = seen[0]
    assert first["reason"].startswith("guard: MAE") and first["sequence"] > 200  # never before the change
    routine = [v for v in first["versions"] if v["kind"] == "snapshot" and v["sequence"] < first["sequence"]]
    best = min(routine, key=lambda v: v["metrics"]["MAE"])
    assert first["from_version"] == best["version"]
    # Once per version: the model fell below it again, and the guard went on to another (or none).
    assert len({rollback["from_version"] for rollback in seen}) == len(seen)
    assert all(rollback["from_version"] != first["from_version"] for rollback in seen[1:])
    rolled = [v for v in versions if v["kind"] == "rollback"]
    assert [v["from_version"] for v in rolled] == [rollback["from_version"] for rollback in seen]


# Found by the attack pass: a challenger is the champion's business in size, and its panics are its own ----------


def test_a_challenger_that_panics_in_rust_is_stopped_and_its_champion_goes_on(backend):
    """pyo3's PanicException is a BaseException: it used to escape the challenger and reject the champion's learn."""
    from river import compose
    from river._river_rust import stats as rust_stats

    quantile = stats.RollingQuantile(q=0.5, window_size=5)
    quantile.q = 2.0
    quantile._rolling_quantile = rust_stats.RsRollingQuantile(2.0, 5)
    panicking = compose.Pipeline(preprocessing.StatImputer(("boom", quantile)), linear_model.LinearRegression())
    client = worker()
    client.upload_model(compose.Discard("boom") | make_model("regression"), "regression", "m")
    client.add_challenger("m", panicking, "regression", name="rusty")
    for x, y in LEARN[:6]:
        client.learn("m", {**x, "boom": 1.0}, ground_truth=y)
    for x, y in LEARN[6:10]:  # a missing "boom" is imputed from the broken quantile: a Rust panic
        assert client.learn("m", {**x, "boom": None}, ground_truth=y)["sequence"] > 0
    board = client.challengers("m")
    assert board["challengers"][0]["learned"] == 6 and "Panic" in board["challengers"][0]["error"], board
    assert worker().challengers("m")["challengers"][0]["error"] == board["challengers"][0]["error"]  # every replica
    assert head("m") == 11


def test_challengers_count_in_their_champions_size(backend, settings):
    from river import compose

    configure(settings, MAX_MODEL_BYTES=60_000, SNAPSHOT_EVERY=5)
    client = worker()
    client.upload_model(compose.Select("x") | linear_model.LinearRegression(), "regression", "m")
    big = preprocessing.OneHotEncoder() | linear_model.LinearRegression()
    for i in range(3000):
        big.learn_one({"s": f"value-{i}"}, 1.0)
    with pytest.raises(ModelTooLarge, match="challengers count"):
        client.add_challenger("m", big, "regression", name="big")
    assert client.challengers("m")["challengers"] == []

    # A challenger that grows past the limit fills its champion: the model learns no more.
    client.add_challenger("m", preprocessing.OneHotEncoder() | linear_model.LinearRegression(), "regression", name="g")
    with pytest.raises(ModelFull):
        for i in range(200):
            client.learn_many("m", [{"features": {"x": 1.0, "s": f"{i}-{j}-" + "z" * 40}, "ground_truth": 1.0}
                                    for j in range(50)])
    assert worker().challengers("m")["challengers"][0]["learned"] < 200 * 50


def test_rolling_back_again_to_where_the_model_is_stores_nothing_more(backend):
    """Found by the attack pass: 30 rollbacks to one version stored 30 copies of the model (37x its size)."""
    client = worker()
    client.upload_model(make_model("regression"), "regression", "m")
    learn_rows(client, "m", LEARN[:5])
    first = client.rollback("m", 1)
    for _ in range(5):
        assert client.rollback("m", 1) == first
    assert [v["kind"] for v in client.versions("m")["versions"]] == ["upload", "rollback"] and head("m") == 6
    learn_rows(client, "m", LEARN[5:6])  # learned since: going back is a change again
    again = client.rollback("m", 1)
    assert again["version"] > first["version"] and head("m") == 8
