"""Issue 14 through a live server: gunicorn with 4 uvicorn workers, on both stores.

Every lifecycle change is a log entry, so every worker at the same sequence has the same versions,
challengers and drift state. Calls go out on fresh connections from several threads at once (each
lands on whichever worker accepts it), and what each worker answers is compared with a local
:class:`~test_lifecycle.Reference` replayed in log order (each call's answer gives its sequence).
One server per store serves the three parts (a server takes seconds to start).
"""

from __future__ import annotations

import pickle
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from river import dummy, drift, stats

from flavored_models import make_model
from lifecycle_driving import expected_counts, roll_back_while_learning
from test_lifecycle import (
    BATCH,
    CHANGE,
    DELAY,
    LEARN,
    PROBES,
    Reference,
    challenger_model,
    regression_stream,
    tagged,
)

pytestmark = pytest.mark.live

#: Enough parallel calls that every worker of 4 answers some.
SPREAD = 8


class Api:
    """Calls to the server, each on a new connection unless a session is given."""

    def __init__(self, server):
        self.server = server

    def call(self, method: str, path: str, expect: int | None = None, session=None, **kwargs) -> requests.Response:
        response = (session or requests).request(method, f"{self.server.url}/api{path}", timeout=60, **kwargs)
        if expect is not None:
            assert response.status_code == expect, (method, path, response.status_code, response.text[:300],
                                                    self.server.log_text()[-2000:])
        return response

    def json(self, method: str, path: str, expect: int = 200, **kwargs):
        return self.call(method, path, expect, **kwargs).json()

    def everywhere(self, function) -> list:
        """``function()`` SPREAD times at once (so on every worker, as they take the connections)."""
        with ThreadPoolExecutor(SPREAD) as pool:
            return list(pool.map(lambda _: function(), range(SPREAD)))

    def predictions(self, name: str, rows=PROBES) -> list:
        return [self.json("POST", "/predict/", 201, json={"model": name, "features": x})["prediction"] for x in rows]

    def upload(self, flavor: str, name: str, model, query: str = "") -> None:
        self.call("POST", f"/model/{flavor}/{name}/{query}", 201, data=pickle.dumps(model))

    def download(self, name: str, version: int | None = None):
        query = "" if version is None else f"?version={version}"
        return pickle.loads(self.call("GET", f"/model/download/{name}/{query}", 200).content)  # our own server's


def same_everywhere(api: Api, function):
    """What ``function()`` gives, which every worker must give alike."""
    answers = api.everywhere(function)
    assert all(answer == answers[0] for answer in answers), answers
    return answers[0]


@pytest.mark.parametrize("store", ["shelve", "redis"])
def test_lifecycle_on_a_live_multi_worker_server(live_server_factory, store):
    # Snapshots every 10 entries, 2 kept: workers also catch up from snapshots past a trimmed log.
    server = live_server_factory(store, workers=4, SNAPSHOT_EVERY=10, SNAPSHOTS_KEPT=2)
    api = Api(server)
    rollback_under_concurrent_learns(api)
    challenger_then_promotion(api)
    drift_with_a_reset(api)


def rollback_under_concurrent_learns(api: Api) -> None:
    """A rollback gives back the version's predictions on every worker; under concurrent learns from several
    threads, the model is then exactly the version plus every learn acknowledged after the rollback."""
    api.upload("regression", "m", make_model("regression"))
    before = [f"pre-{i}" for i in range(5)]
    for tag in before:
        api.call("POST", "/learn/", 201, json={"model": "m", "features": tagged(tag), "ground_truth": 1.0})
    version = api.json("POST", "/model/m/versions/", 201)
    assert (version["sequence"], version["kind"]) == (5, "manual")
    probes = [tagged("pre-0"), tagged("new"), PROBES[0]]
    at_version = same_everywhere(api, lambda: api.predictions("m", probes))
    for i in range(12):
        api.call("POST", "/learn/", 201, json={"model": "m", "features": tagged(f"more-{i}"), "ground_truth": 5.0})
    assert api.predictions("m", probes) != at_version
    rolled = api.json("POST", "/model/m/rollback/", json={"version": version["version"]})
    assert (rolled["kind"], rolled["from_version"], rolled["sequence"]) == ("rollback", version["version"], 18)
    assert same_everywhere(api, lambda: api.predictions("m", probes)) == at_version
    kept = same_everywhere(api, lambda: api.download("m", version["version"])["StandardScaler"].counts)
    assert kept == {tag: 1 for tag in before}

    # Rolled back again while six threads learn, each on its own connection.
    def new_learn():
        session = requests.Session()
        return lambda tag: api.json("POST", "/learn/", 201, session=session,
                                    json={"model": "m", "features": tagged(tag), "ground_truth": 1.0})["sequence"]

    run = roll_back_while_learning(
        new_learn, lambda: api.json("POST", "/model/m/rollback/", json={"version": version["version"]}),
        lambda: api.json("POST", "/model/m/versions/", 201), threads=6, late=5, enough=30)
    expected = expected_counts(run, before, lambda v: dict(api.download("m", v)["StandardScaler"].counts))
    assert same_everywhere(api, lambda: dict(api.download("m")["StandardScaler"].counts)) == expected
    listed = same_everywhere(api, lambda: api.json("GET", "/model/m/versions/")["versions"])
    assert [(v["sequence"], v.get("from_version")) for v in listed if v["kind"] == "rollback"] == [
        (18, version["version"]), (run.at, version["version"])]


def challenger_then_promotion(api: Api) -> None:
    """A challenger learns every example its champion learns (learns from several threads, a batch, labels),
    is scored alike on every worker, and once promoted serves its predictions; the champion it replaced is a
    version to roll back to."""
    api.upload("regression", "champ", make_model("regression"))
    api.upload("regression", "bold", challenger_model(), "?challenger_of=champ")
    # Learned concurrently: replayed here in the order of their sequences.
    rows = LEARN[:24]
    with ThreadPoolExecutor(SPREAD) as pool:
        sequences = list(pool.map(lambda row: api.json("POST", "/learn/", 201, json={
            "model": "champ", "features": row[0], "ground_truth": row[1]})["sequence"], rows))
    entries = sorted(zip(sequences, ([row] for row in rows)))
    batch = LEARN[24:44]
    seq = api.json("POST", "/learn/", 201, json={"model": "champ", "examples": [
        {"features": x, "ground_truth": y} for x, y in batch]})["sequence"]
    entries.append((seq, batch))
    reference = Reference("regression", make_model("regression"))
    reference.challenge("bold", challenger_model())
    for _, entry in entries:
        reference.entry(entry)
    for x, y in LEARN[44:50]:  # labels of past predictions, made on one worker, labelled on another
        made = api.json("POST", "/predict/", 201, json={"model": "champ", "features": x})
        assert made["prediction"] == reference.predict([x])[0]
        api.call("POST", "/label/", 200, json={"model": "champ", "identifier": made["identifier"], "label": y})
        reference.entry([(x, y)], known=[made["prediction"]])

    seen = same_everywhere(api, lambda: api.json("GET", "/model/champ/challengers/"))
    assert seen["challengers"] == [{"name": "bold", "learned": 50, "error": None,
                                    "metrics": reference.described("bold")}]
    assert seen["metrics"] == reference.described()
    champion = reference.predict()
    assert same_everywhere(api, lambda: api.predictions("champ")) == champion
    challenger = [reference.flavor.bind(reference.challengers["bold"].model).predict(dict(x)) for x in PROBES]
    assert challenger != champion

    promoted = api.json("POST", "/model/champ/promote/", json={"challenger": "bold"})
    assert (promoted["kind"], promoted["challenger"]) == ("promote", "bold")
    assert same_everywhere(api, lambda: api.predictions("champ")) == challenger
    assert same_everywhere(api, lambda: api.json("GET", "/model/champ/challengers/")["challengers"]) == []
    listed = api.json("GET", "/model/champ/versions/")["versions"]
    before = [v for v in listed if v["kind"] == "before-promote"]
    assert [v["sequence"] for v in before] == [promoted["sequence"] - 1]
    api.json("POST", "/model/champ/rollback/", json={"version": before[0]["version"]})
    assert same_everywhere(api, lambda: api.predictions("champ")) == champion


def drift_with_a_reset(api: Api) -> None:
    """A seeded stream whose target jumps at row CHANGE, learned in batches spread over the workers: the detector
    finds the drift after the change (within DELAY rows) and where the reference does, on every worker; it is
    counted once; the reset policy lets a fresh model learn on."""
    api.upload("regression", "d", dummy.StatisticRegressor(stats.Mean()), "?drift_detector=ADWIN&drift_policy=reset")
    reference = Reference("regression", dummy.StatisticRegressor(stats.Mean()), drift.ADWIN, policy="reset")
    stream, found = regression_stream(), []
    for start in range(0, len(stream), BATCH):
        rows = stream[start:start + BATCH]
        seq = api.json("POST", "/learn/", 201, json={"model": "d", "examples": [
            {"features": x, "ground_truth": y} for x, y in rows]})["sequence"]
        found += [(seq, start + index) for index in reference.entry(rows)]
    assert found and CHANGE <= found[0][1] <= CHANGE + DELAY, found
    watch = same_everywhere(api, lambda: api.json("GET", "/model/d/challengers/")["drift"])
    assert watch == {"detector": "ADWIN", "policy": "reset", "detections": len(found), "last_at": found[-1][0]}
    assert api.json("GET", "/stats/?model=d")["drift"]["n_calls"] == len(found)  # reported once, by its appender
    assert same_everywhere(api, lambda: api.predictions("d", [{"i": 0.0}])) == reference.predict([{"i": 0.0}])
    assert 7 < reference.predict([{"i": 0.0}])[0] < 9  # the fresh model learned only what came after the change
    drifted = [v["sequence"] for v in api.json("GET", "/model/d/versions/")["versions"] if v["kind"] == "drift"]
    assert drifted == sorted({seq for seq, _ in found})
