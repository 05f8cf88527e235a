"""riverapi's model lifecycle (docs/lifecycle.md): versions, rollback, challengers, promotion, drift options.

The client's methods against live multi-worker servers on both stores, the ``riverapi`` commands
against one, and the client's own checks (what it refuses before sending, a server that took a
challenger for a model of its own) against a tiny local fake server.
"""

from __future__ import annotations

import http.server
import json
import os
import pickle
import random
import threading
from pathlib import Path

import pytest
from river import compose, linear_model, preprocessing

from riverapi import BadRequest, Client, NotFound, RiverAPIError
from test_riverapi_cli import assert_clean_failure, run_cli

BACKENDS = ("shelve", "redis")
VERSION_FIELDS = {"version", "sequence", "created", "kind", "metrics"}


def regressor():
    return preprocessing.StandardScaler() | linear_model.LinearRegression()


def rows(n: int, seed: int = 0, shift_at: int | None = None) -> list[tuple[dict, float]]:
    """``n`` seeded regression examples; from row ``shift_at`` on the target jumps by 40 (an abrupt drift)."""
    rng = random.Random(seed)
    data = []
    for i in range(n):
        x = {"x": rng.uniform(0, 10), "z": rng.uniform(-1, 1)}
        y = 3 * x["x"] - 2 * x["z"] + rng.gauss(0, 0.5) + (40.0 if shift_at is not None and i >= shift_at else 0.0)
        data.append((x, y))
    return data


HELD = [{"x": 2.5, "z": 0.1}, {"x": 7.0, "z": -0.6}, {"x": 9.9, "z": 0.9}]


def predictions(client: Client, name: str) -> list[float]:
    return [client.predict(name, x)["prediction"] for x in HELD]


def local(model) -> list[float]:
    return [model.predict_one(x) for x in HELD]


def learned(model, data):
    for x, y in data:
        model.learn_one(x, y)
    return model


@pytest.fixture
def lifecycle_server(live_server_factory, request):
    def start(backend_name: str):
        return live_server_factory(backend_name, workers=2, MAX_CHALLENGERS="2")
    return start


@pytest.mark.live
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_the_lifecycle_through_the_client(backend_name, lifecycle_server, tmp_path, monkeypatch):
    server = lifecycle_server(backend_name)
    client = Client(server.url, quiet=True)
    monkeypatch.chdir(tmp_path)
    try:
        versions_and_rollback(client)
        challengers_and_promotion(client)
        drift_options(client)
        drift_detection(client)
    except AssertionError as error:
        raise AssertionError(f"{error}\n--- server log ---\n{server.log_text()[-8000:]}") from None
    assert client.models() == {"models": []}, "every model made here is deleted"


def versions_and_rollback(client: Client) -> None:
    name = client.upload_model(regressor(), "regression", model_name="lc-prices")
    data = rows(30)
    for x, y in data[:10]:
        client.learn(name, x, y)

    # The upload is version 1, at sequence 0.
    listed = client.versions(name)
    assert listed["model"] == name and len(listed["versions"]) == 1, listed
    first = listed["versions"][0]
    assert set(first) >= VERSION_FIELDS and (first["version"], first["sequence"], first["kind"]) == (1, 0, "upload")

    # take_version: the model as it is now, every acknowledged learn included.
    taken = client.take_version(name)
    assert (taken["model"], taken["version"], taken["sequence"], taken["kind"]) == (name, 2, 10, "manual"), taken
    assert taken["metrics"] == pytest.approx(client.metrics(name))
    at_v2 = predictions(client, name)
    assert at_v2 == pytest.approx(local(learned(regressor(), data[:10])), rel=1e-9)
    # Nothing learned since: the same version again, not a copy.
    assert client.take_version(name)["version"] == 2

    for x, y in data[10:20]:
        client.learn(name, x, y)
    v3 = client.take_version(name)
    assert (v3["version"], v3["sequence"]) == (3, 20)
    at_v3 = predictions(client, name)
    assert at_v3 != pytest.approx(at_v2)

    # download_model(version=...): that version's pickle, by default to <name>-v<version>.pkl.
    assert client.download_model(name, version=2) == f"{name}-v2.pkl"
    with open(f"{name}-v2.pkl", "rb") as handle:
        assert local(pickle.load(handle)) == pytest.approx(at_v2, rel=1e-9)  # noqa: S301 - uploaded here
    assert client.download_model(name, "now.pkl") == "now.pkl"
    with open("now.pkl", "rb") as handle:
        assert local(pickle.load(handle)) == pytest.approx(at_v3, rel=1e-9)  # noqa: S301

    # rollback: a new head that predicts as version 2 did, its metrics back too; nothing deleted.
    rolled = client.rollback(name, 2)
    assert (rolled["model"], rolled["kind"], rolled["from_version"], rolled["version"]) == (name, "rollback", 2, 4)
    assert rolled["sequence"] == 21
    assert predictions(client, name) == pytest.approx(at_v2, rel=1e-9)
    assert client.metrics(name) == pytest.approx(taken["metrics"])
    kinds = [(v["version"], v["kind"]) for v in client.versions(name)["versions"]]
    assert kinds[:3] == [(1, "upload"), (2, "manual"), (3, "manual")] and kinds[-1] == (4, "rollback"), kinds

    # Learns after it build on it: the server's model is version 2's, then these examples.
    for x, y in data[20:25]:
        client.learn(name, x, y)
    expected = learned(learned(regressor(), data[:10]), data[20:25])
    assert predictions(client, name) == pytest.approx(local(expected), rel=1e-9)

    # ... and a later version is still there to go forward to.
    assert client.rollback(name, 3)["from_version"] == 3
    assert predictions(client, name) == pytest.approx(at_v3, rel=1e-9)

    # Errors: the client's typed exceptions; what cannot be a version is never sent.
    with pytest.raises(NotFound, match="no version 99") as missing:
        client.rollback(name, 99)
    assert missing.value.status_code == 404
    with pytest.raises(NotFound, match="no version 77"):
        client.download_model(name, version=77)
    assert not os.path.exists(f"{name}-v77.pkl") and not [p for p in os.listdir() if p.endswith(".part")]
    with pytest.raises(BadRequest, match="greater than or equal to 1") as zero:
        client.rollback(name, 0)
    assert zero.value.status_code == 400
    for not_a_version in ("2", 2.0, True, None):
        with pytest.raises(ValueError, match="whole number"):
            client.rollback(name, not_a_version)
    with pytest.raises(ValueError, match="whole number"):
        client.download_model(name, version="2")
    for call in (client.versions, client.take_version, lambda n: client.rollback(n, 1)):
        with pytest.raises(NotFound, match="No model named 'lc-nothing'"):
            call("lc-nothing")
    with pytest.raises(ValueError, match="without '/'"):
        client.versions("a/b")
    client.delete_model(name)


def challengers_and_promotion(client: Client) -> None:
    champion = client.upload_model(regressor(), "regression", model_name="lc-champion")
    # A challenger by upload_model(challenger_of=...), one by add_challenger with a generated name, one by spec.
    faster = preprocessing.StandardScaler() | linear_model.LinearRegression(intercept_lr=0.3)
    assert client.upload_model(faster, "regression", "faster", challenger_of=champion) == "faster"
    generated = client.add_challenger(champion, linear_model.LinearRegression(), "regression")
    assert generated and generated != "faster"
    # Over MAX_CHALLENGERS (2 on this server): refused (409); replacing one of that name is not.
    with pytest.raises(BadRequest, match="MAX_CHALLENGERS") as full:
        client.upload_spec({"class": "linear_model.LinearRegression"}, "regression", "third", challenger_of=champion)
    assert full.value.status_code == 409
    assert client.upload_spec({"class": "linear_model.LinearRegression"}, "regression", generated,
                              challenger_of=champion) == generated
    # Bad challengers: another flavor, an unknown champion, a name that cannot be.
    with pytest.raises(BadRequest, match="challengers are regression models too"):
        client.add_challenger(champion, preprocessing.StandardScaler() | linear_model.LogisticRegression(), "binary")
    with pytest.raises(NotFound, match="No model named 'lc-nobody'"):
        client.add_challenger("lc-nobody", regressor(), "regression")
    with pytest.raises(ValueError, match="without '/'"):
        client.withdraw_challenger(champion, "a/b")

    # Every example the champion learns, its challengers learn: learns, batches and labels.
    data = rows(40, seed=1)
    for x, y in data[:10]:
        client.learn(champion, x, y)
    client.learn_many(champion, data[10:30], batch_size=7)
    answer = client.predict(champion, data[30][0])
    labelled = client.label(data[30][1], answer["identifier"], champion)
    seen = data[:31]
    board = client.challengers(champion)
    assert (board["model"], board["sequence"]) == (champion, labelled["sequence"]), board
    assert [c["name"] for c in board["challengers"]] == sorted(["faster", generated])
    for entry in board["challengers"]:
        assert entry["learned"] == len(seen) and entry["error"] is None, entry
        assert set(entry["metrics"]) == set(board["metrics"]) == {"MAE", "RMSE", "SMAPE"}
    assert board["metrics"] == pytest.approx(client.metrics(champion))
    assert board["drift"]["detector"] == "ADWIN" and board["drift"]["policy"] == "none"

    # Predictions are the champion's; after promote, the champion's name predicts what the challenger learned.
    assert predictions(client, champion) == pytest.approx(local(learned(regressor(), seen)), rel=1e-9)
    challenger_then = learned(preprocessing.StandardScaler() | linear_model.LinearRegression(intercept_lr=0.3), seen)
    promoted = client.promote(champion, "faster")
    assert (promoted["model"], promoted["kind"], promoted["challenger"]) == (champion, "promote", "faster"), promoted
    assert predictions(client, champion) == pytest.approx(local(challenger_then), rel=1e-9)
    faster_metrics = next(c["metrics"] for c in board["challengers"] if c["name"] == "faster")
    assert client.metrics(champion) == pytest.approx(faster_metrics)
    assert [c["name"] for c in client.challengers(champion)["challengers"]] == [generated]

    # The champion as it was is a version: roll back to it, and it predicts as before.
    kinds = [(v["kind"], v["version"]) for v in client.versions(champion)["versions"]]
    before = [version for kind, version in kinds if kind == "before-promote"]
    assert len(before) == 1 and kinds[-1] == ("promote", promoted["version"]), kinds
    client.rollback(champion, before[0])
    assert predictions(client, champion) == pytest.approx(local(learned(regressor(), seen)), rel=1e-9)
    # Challengers go on learning through a rollback.
    client.learn(champion, *data[31])
    assert client.challengers(champion)["challengers"][0]["learned"] == len(seen) + 1

    # Promote and withdraw of a challenger the model does not have: NotFound.
    with pytest.raises(NotFound, match="no challenger named 'faster'"):
        client.promote(champion, "faster")
    with pytest.raises(NotFound, match="no challenger named 'nobody'"):
        client.withdraw_challenger(champion, "nobody")
    withdrawn = client.withdraw_challenger(champion, generated)
    assert withdrawn["model"] == champion and generated in withdrawn["message"]
    assert client.challengers(champion)["challengers"] == []
    with pytest.raises(NotFound):
        client.withdraw_challenger(champion, generated)

    # A challenger that raises stops; its champion goes on.
    picky = client.upload_model(compose.Select("x") | linear_model.LinearRegression(), "regression", "lc-picky")
    client.add_challenger(picky, linear_model.LinearRegression(), "regression", name="strict")
    client.learn(picky, {"x": 1.0, "label": "a word"}, 2.0)
    client.learn(picky, {"x": 2.0, "label": "a word"}, 4.0)
    strict = client.challengers(picky)["challengers"][0]
    assert strict["name"] == "strict" and strict["learned"] == 0 and "TypeError" in strict["error"], strict
    assert client.learn(picky, {"x": 3.0, "label": "a word"}, 6.0)["sequence"] >= 3
    for name in (champion, picky):
        client.delete_model(name)


def drift_options(client: Client) -> None:
    # The upload's drift options (upload_model and upload_spec), as the challengers' board shows them.
    name = client.upload_model(regressor(), "regression", "lc-watched", drift_detector="PageHinkley",
                               drift_policy="reset")
    assert client.challengers(name)["drift"] == {"detector": "PageHinkley", "policy": "reset", "detections": 0,
                                                 "last_at": None}
    for off in ("none", ""):
        client.upload_spec({"class": "linear_model.LinearRegression"}, "regression", name, drift_detector=off)
        assert client.challengers(name)["drift"]["detector"] is None
    client.upload_spec({"class": "linear_model.LogisticRegression"}, "binary", name, drift_detector="DDM",
                       drift_policy="promote")
    assert client.challengers(name)["drift"] == {"detector": "DDM", "policy": "promote", "detections": 0,
                                                 "last_at": None}
    # What the server refuses, by name.
    with pytest.raises(BadRequest, match="for classifiers"):
        client.upload_model(regressor(), "regression", name, drift_detector="DDM")
    with pytest.raises(BadRequest, match="drift_detector"):
        client.upload_model(regressor(), "regression", name, drift_detector="Sometimes")
    with pytest.raises(BadRequest, match="drift_policy"):
        client.upload_model(regressor(), "regression", name, drift_policy="panic")
    assert client.challengers(name)["drift"]["detector"] == "DDM", "a refused upload changes nothing"
    client.delete_model(name)


def drift_detection(client: Client) -> None:
    """An abrupt change at a known row: ADWIN reports it within a few batches, as an event and in the stats."""
    name = client.upload_model(regressor(), "regression", "lc-drifting")
    data = rows(500, seed=2, shift_at=400)
    client.learn_many(name, data[:400], batch_size=50)
    before = client.challengers(name)["drift"]["detections"]
    found_at = None
    for start in range(400, 500, 10):
        client.learn_many(name, data[start:start + 10])
        if client.challengers(name)["drift"]["detections"] > before:
            found_at = start
            break
    assert found_at is not None and found_at < 440, "the change at row 400 was not found within 40 rows"
    drift = client.challengers(name)["drift"]
    assert "drift" in client.stats(name)  # the drifts counted in the stats too
    # The drift event, replayed from the model's channel.
    with client.stream_events(model=name, last_event_id=f"events/{name}:0", reconnect=False,
                              read_timeout=10) as events:
        drifts = (event.data for event in events if event.event == "drift")
        last = next(data for data in drifts if data["sequence"] == drift["last_at"])
    assert (last["model"], last["detector"], last["policy"]) == (name, "ADWIN", "none"), last
    assert last["detections"] == drift["detections"] and last["examples"], last
    client.delete_model(name)


# -- the command line ------------------------------------------------------------------------

@pytest.mark.live
def test_the_lifecycle_commands(live_server_factory, tmp_path):
    server = live_server_factory("shelve", workers=2)
    work = tmp_path / "cli"
    work.mkdir()
    try:
        drive_commands(server.url, work)
    except AssertionError as error:
        raise AssertionError(f"{error}\n--- server log ---\n{server.log_text()[-8000:]}") from None


def drive_commands(url: str, work: Path) -> None:
    def run(*args: str):
        return run_cli("--url", url, *args, cwd=work)

    def cli(*args: str) -> str:
        result = run(*args)
        assert result.returncode == 0 and "Traceback" not in result.stderr, (args, result.stdout, result.stderr)
        return result.stdout

    (work / "model.pkl").write_bytes(pickle.dumps(regressor()))
    (work / "other.pkl").write_bytes(pickle.dumps(linear_model.LinearRegression(intercept_lr=0.3)))
    (work / "binary.pkl").write_bytes(pickle.dumps(linear_model.LogisticRegression()))
    with open(work / "train.jsonl", "w") as handle:
        for x, y in rows(12, seed=3):
            handle.write(json.dumps({**x, "y": y}) + "\n")

    # upload: drift options, and a challenger.
    assert cli("upload", "model.pkl", "--flavor", "regression", "--name", "prices", "--drift-detector",
               "KSWIN", "--drift-policy", "promote") == "prices\n"
    assert cli("upload", "other.pkl", "--flavor", "regression", "--name", "bolder",
               "--challenger-of", "prices") == "bolder\n"
    assert json.loads(cli("models"))["models"] == ["prices"], "a challenger is not a model of its own"
    assert "learned: 12" in cli("learn", "prices", "train.jsonl", "--target", "y", "--no-progress")

    board = json.loads(cli("challengers", "prices"))
    assert board["drift"]["detector"] == "KSWIN" and board["drift"]["policy"] == "promote"
    assert [(c["name"], c["learned"]) for c in board["challengers"]] == [("bolder", 12)]

    # version, versions, download --version, rollback.
    taken = json.loads(cli("version", "prices"))
    assert taken["kind"] == "manual" and taken["sequence"] >= 2
    listed = json.loads(cli("versions", "prices"))["versions"]
    assert [v["kind"] for v in listed][0] == "upload" and listed[-1]["version"] == taken["version"]
    assert cli("download", "prices", "--version", "1").strip() == "prices-v1.pkl"
    with open(work / "prices-v1.pkl", "rb") as handle:
        assert pickle.load(handle).predict_one(HELD[0]) == 0.0  # noqa: S301 - the untrained upload
    assert cli("download", "prices", "--version", str(taken["version"]), "-o", "taken.pkl").strip() == "taken.pkl"
    rolled = json.loads(cli("rollback", "prices", "1"))
    assert rolled["kind"] == "rollback" and rolled["from_version"] == 1
    assert json.loads(cli("predict", "prices", "--features", json.dumps(HELD[0])))["prediction"] == 0.0

    # promote, then withdraw.
    promoted = json.loads(cli("promote", "prices", "bolder"))
    assert promoted["kind"] == "promote" and promoted["challenger"] == "bolder"
    cli("upload", "other.pkl", "--flavor", "regression", "--challenger-of", "prices", "--name", "next")
    assert json.loads(cli("withdraw", "prices", "next"))["model"] == "prices"
    assert json.loads(cli("challengers", "prices"))["challengers"] == []

    # Refusals: one line, exit 1 for the server's, 2 for bad arguments.
    assert_clean_failure(run("rollback", "prices", "99"), 1, "no version 99", "404")
    assert_clean_failure(run("download", "prices", "--version", "99"), 1, "no version 99", "404")
    assert not (work / "prices-v99.pkl").exists()
    assert_clean_failure(run("promote", "prices", "nobody"), 1, "no challenger named 'nobody'", "404")
    assert_clean_failure(run("withdraw", "prices", "nobody"), 1, "no challenger named 'nobody'", "404")
    assert_clean_failure(run("versions", "nothing"), 1, "No model named 'nothing'", "404")
    assert_clean_failure(run("upload", "binary.pkl", "--flavor", "binary", "--challenger-of", "prices"), 1,
                         "challengers are regression models too", "400")
    assert_clean_failure(run("upload", "model.pkl", "--flavor", "regression", "--name", "x",
                             "--drift-policy", "panic"), 1, "drift_policy", "400")
    assert_clean_failure(run("rollback", "prices", "two"), 2, "not a whole number")
    assert_clean_failure(run("rollback", "prices"), 2, "VERSION")
    assert_clean_failure(run("download", "prices", "--version", "0"), 2, "must be 1 or more")
    assert_clean_failure(run("promote", "prices"), 2, "CHALLENGER")
    cli("delete", "prices")
    assert json.loads(cli("models")) == {"models": []}


# -- the client's own checks, against a fake server ------------------------------------------

class FakeServer:
    """Answers every POST with ``answer`` (201) and records the requests' paths."""

    def __init__(self, answer: dict):
        self.paths: list[str] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fake.paths.append(self.path)
                body = json.dumps(answer).encode()
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> FakeServer:
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_upload_options_go_in_the_query():
    with FakeServer({"name": "c1", "challenger_of": "prices"}) as server:
        client = Client(server.url, quiet=True)
        assert client.upload_model(b"pickle", "regression", "c1", challenger_of="prices") == "c1"
        assert client.add_challenger("prices", b"pickle", "regression") == "c1"
        assert client.upload_spec({"class": "x"}, "regression", drift_detector="", drift_policy="reset",
                                  challenger_of="prices") == "c1"
    assert server.paths == ["/api/model/regression/c1/?challenger_of=prices", "/api/model/regression/?challenger_of=prices",
                            "/api/model/regression/?challenger_of=prices&drift_detector=none&drift_policy=reset"]


def test_a_server_that_took_a_challenger_for_a_model_says_so():
    """An older server ignores ?challenger_of= and uploads a model of its own: not silently a success."""
    with FakeServer({"name": "c1"}) as server:
        client = Client(server.url, quiet=True)
        with pytest.raises(RiverAPIError, match="took the upload as a model of its own, 'c1'"):
            client.add_challenger("prices", b"pickle", "regression", name="c1")
        assert client.upload_model(b"pickle", "regression", "c1", drift_policy="reset") == "c1"
