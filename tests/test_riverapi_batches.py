"""Batches in our riverapi client: ``learn_many``, ``predict_many`` and the command line's
``--batch-size``, against a local fake server (``http.server`` on 127.0.0.1, started here) that
implements the batch contract of ``POST /api/learn/`` and ``POST /api/predict/`` with
``{"model", "examples": [...]}``: a chunk is learned whole or not at all, a bad row is a 400
naming it, a batch over the limit a 413. The same fake plays a server without batch routes (as
the published servers are), to which the client falls back to one request per row.

The live tests against the real server are in tests/test_riverapi_client.py and
tests/test_riverapi_cli.py.
"""

from __future__ import annotations

import http.server
import json
import logging
import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from riverapi import BadRequest, Client, NotFound, ServerUnavailable
from test_riverapi_client import serving

MESSAGE_NO_FEATURES = "features: This field is required (or give an identifier)."


class FakeRiver:
    """A River API with batch routes (``mode="batch"``), or without them: ``"old"`` answers a
    batch as today's server answers a body without ``features`` (400), ``"404"`` and ``"405"``
    answer a batch with that status. Models learn the rows' ground truths; a model predicts
    ``2 * x``. Each request is recorded as ``(route, rows)`` (``rows`` is ``None`` for a single row)."""

    def __init__(self, mode: str = "batch", max_rows: int = 10_000, models: tuple[str, ...] = ("m",)):
        self.mode = mode
        self.max_rows = max_rows
        self.learned: dict[str, list] = {name: [] for name in models}
        self.stored: dict[str, object] = {}
        self.requests: list[tuple[str, int | None]] = []
        self.on_request = lambda: None  # called as each request arrives
        self.lock = threading.Lock()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def reply(self, status, answer):
                payload = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                if self.path.startswith("/api/metrics/"):
                    return self.reply(200, {"MAE": 0.5})
                self.reply(404, {"message": "Not found."})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                route = self.path.strip("/").split("/")[-1]
                with fake.lock:
                    fake.on_request()
                    fake.requests.append((route, len(body["examples"]) if "examples" in body else None))
                    status, answer = fake.answer(route, body)
                self.reply(status, answer)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def sizes(self, route: str = "learn") -> list[int | None]:
        return [rows for what, rows in self.requests if what == route]

    # -- the API ----------------------------------------------------------------------------

    def answer(self, route: str, body: dict) -> tuple[int, dict]:
        name = body.get("model")
        if "examples" in body and self.mode != "batch":
            if self.mode == "old":
                return 400, {"message": MESSAGE_NO_FEATURES}
            return int(self.mode), {"message": "Not found." if self.mode == "404" else "Method not allowed."}
        if name not in self.learned:
            return 404, {"message": f"No model named '{name}'."}
        if "examples" not in body:
            problem = self.problem(route, body)
            if problem:
                return 400, {"message": problem}
            return self.apply(route, name, [body], single=True)
        rows = body["examples"]
        if not rows:
            return 400, {"message": "examples: give at least one example."}
        if len(rows) > self.max_rows:
            return 413, {"message": f"A batch holds at most {self.max_rows} rows (MAX_BATCH_ROWS)."}
        for index, row in enumerate(rows):
            problem = self.problem(route, row)
            if problem:
                return 400, {"message": f"Row {index}: {problem}", "row": index}
        return self.apply(route, name, rows, single=False)

    @staticmethod
    def problem(route: str, row: dict) -> str | None:
        if "features" not in row:
            return MESSAGE_NO_FEATURES
        x = row["features"].get("x", 0.0)
        if not isinstance(x, (int, float)):
            return f"The model raised on this input (TypeError: {x!r}); it was left unchanged."
        if route == "learn" and not (isinstance(row.get("ground_truth"), (int, float))
                                     and math.isfinite(row["ground_truth"])):
            return f"ground_truth for a regression model must be a finite number, not {row.get('ground_truth')!r}."
        return None

    def apply(self, route: str, name: str, rows: list[dict], single: bool) -> tuple[int, dict]:
        if route == "learn":
            self.learned[name].extend(row["ground_truth"] for row in rows)
            sequence = len(self.learned[name])
            return 201, ({"model": name, "sequence": sequence} if single
                         else {"model": name, "learned": len(rows), "sequence": sequence})
        answers = []
        for row in rows:
            answer = {"prediction": 2 * row["features"].get("x", 0.0)}
            identifier = row.get("identifier") or (f"generated-{len(self.stored)}" if single else None)
            if identifier:
                self.stored[identifier] = answer["prediction"]
                answer["identifier"] = identifier
            answers.append(answer)
        if single:
            return 201, {"model": name, **answers[0]}
        return 200, {"model": name, "predictions": answers}


def fake_river(mode: str = "batch", **options):
    return serving(FakeRiver(mode, **options))


def rows(n: int, bad: dict[int, object] | None = None):
    """``n`` examples ``({"x": i}, i)``, a generator; ``bad`` replaces some ground truths."""
    bad = bad or {}
    for i in range(n):
        yield {"x": float(i)}, bad.get(i, float(i))


# -- learn_many ------------------------------------------------------------------------------

def test_learn_many_sends_chunks_of_a_generator_as_it_reads_it():
    consumed = []
    seen_at_request = []

    def counted():
        for example in rows(2500):
            consumed.append(1)
            yield example

    with fake_river() as server:
        server.on_request = lambda: seen_at_request.append(len(consumed))
        summary = Client(server.url, quiet=True).learn_many("m", counted(), batch_size=1000)
    assert summary == {"model": "m", "learned": 2500, "sequence": 2500}
    assert server.sizes() == [1000, 1000, 500]
    assert seen_at_request == [1000, 2000, 2500]  # never more than the chunk being sent
    assert server.learned["m"] == [float(i) for i in range(2500)]


def test_learn_many_takes_dicts_and_pairs_and_sends_the_contracts_rows():
    examples = [{"features": {"x": 1.0}, "ground_truth": 2.0},
                ({"x": 3.0}, 4.0),
                {"features": {"x": 5.0}, "ground_truth": 6.0, "identifier": "seen"},
                {"features": {"x": 7.0}, "ground_truth": 8.0, "identifier": None}]
    bodies = []
    with fake_river() as server:
        client = Client(server.url, quiet=True)
        original = client._json
        client._json = lambda method, path, **kw: bodies.append(kw.get("json")) or original(method, path, **kw)
        assert client.learn_many("m", examples)["learned"] == 4
        assert client.learn_many("m", []) == {"model": "m", "learned": 0, "sequence": None}
    assert bodies == [{"model": "m", "examples": [
        {"features": {"x": 1.0}, "ground_truth": 2.0}, {"features": {"x": 3.0}, "ground_truth": 4.0},
        {"features": {"x": 5.0}, "ground_truth": 6.0, "identifier": "seen"},
        {"features": {"x": 7.0}, "ground_truth": 8.0}]}]
    assert server.sizes() == [4]  # nothing sent for no examples


@pytest.mark.parametrize(("call", "problem"), [
    (lambda c: c.learn_many("m", rows(3), batch_size=0), "batch_size must be a positive int"),
    (lambda c: c.learn_many("m", rows(3), batch_size=2.5), "batch_size must be a positive int"),
    (lambda c: c.predict_many("m", [{"x": 1.0}], batch_size=-1), "batch_size must be a positive int"),
    (lambda c: c.learn_many("m", [({"x": 1.0}, 1.0), ({"x": 1.0},)]), "Example 1 is neither"),
    (lambda c: c.learn_many("m", [{"features": {}, "label": 1}]), "unknown keys ['label']"),
    (lambda c: c.predict_many("m", [{"x": 1.0}], identifiers=["a", "b"]), "identifiers must have one entry"),
])
def test_bad_arguments_are_value_errors_before_anything_is_sent(call, problem):
    with fake_river() as server:
        with pytest.raises(ValueError) as caught:
            call(Client(server.url, quiet=True))
    assert problem in str(caught.value)
    assert server.requests == []


def test_a_refused_chunk_names_the_row_of_the_whole_input_and_what_was_learned():
    with fake_river() as server:
        client = Client(server.url, quiet=True, retries=3)
        with pytest.raises(BadRequest) as caught:
            client.learn_many("m", rows(2500, bad={1503: "abc"}), batch_size=1000)
    error = caught.value
    assert (error.status_code, error.row, error.learned) == (400, 1503, 1000)
    assert error.message == ("Row 1503: ground_truth for a regression model must be a finite number, not 'abc'. "
                             "(1000 rows learned before it)")
    assert error.reason.startswith("ground_truth for a regression") and error.response.status_code == 400
    assert server.sizes() == [1000, 1000]  # sent once, not retried; nothing after it
    assert len(server.learned["m"]) == 1000  # the first chunk; the refused one is all or nothing


def test_a_refused_chunk_without_a_row_and_other_errors_keep_their_type():
    with fake_river(max_rows=500) as server:
        client = Client(server.url, quiet=True)
        with pytest.raises(BadRequest) as caught:
            client.learn_many("m", rows(1200), batch_size=600)
        assert caught.value.status_code == 413 and caught.value.row is None and caught.value.learned == 0
        assert "Rows 0 to 599: A batch holds at most 500 rows" in caught.value.message
        assert "lower batch_size" in caught.value.message
        # An unknown model is NotFound (a 404 about the model, not the route: no fallback).
        with pytest.raises(NotFound, match="No model named 'nope'"):
            client.learn_many("nope", rows(3))
        with pytest.raises(NotFound, match="No model named 'nope'"):
            client.predict_many("nope", [{"x": 1.0}])
        assert client.unbatched_routes == set()
    assert server.sizes() == [600, 3]


def test_a_batch_without_an_answer_may_or_may_not_have_been_learned():
    import time

    from test_riverapi_client import fake_server

    def respond(handler, body):
        if len(handler.server.answered) == 1:
            time.sleep(1.0)  # the second batch: no answer in time
        handler.server.answered.append(1)
        return 201, {}, {"model": "m", "learned": 3, "sequence": len(handler.server.answered)}

    with fake_server(respond) as server:
        server.httpd.answered = []
        with pytest.raises(ServerUnavailable) as caught:
            Client(server.url, quiet=True, timeout=0.3, retries=3).learn_many("m", rows(9), batch_size=3)
    assert caught.value.learned == 3 and caught.value.row is None
    assert caught.value.message.endswith("(3 rows learned before it; rows 3 to 5 may or may not have been learned)")
    assert len(server.requests) == 2  # not sent again


@pytest.mark.parametrize("mode", ["batch", "old"])
def test_a_row_that_cannot_be_json_is_named_and_nothing_is_sent_for_its_chunk(mode):
    with fake_river(mode) as server:
        client = Client(server.url, quiet=True)
        client.unbatched_routes.update(() if mode == "batch" else ("learn",))
        with pytest.raises(BadRequest) as caught:
            client.learn_many("m", rows(9, bad={6: math.nan}), batch_size=4)
    error = caught.value
    assert (error.status_code, error.row, error.learned) == (None, 6, 4 if mode == "batch" else 6)
    assert error.message.startswith("Row 6: The request cannot be sent as JSON")
    assert len(server.learned["m"]) == error.learned


def test_a_learn_batch_is_never_retried():
    from test_riverapi_client import answering, fake_server

    with fake_server(answering((503, {}, {"message": "The store cannot be reached."}))) as server:
        client = Client(server.url, quiet=True, retries=3, backoff_factor=0.01)
        with pytest.raises(ServerUnavailable) as caught:
            client.learn_many("m", rows(5))
        assert caught.value.learned == 0
        assert server.paths() == [("POST", "/api/learn/")]
        server.requests.clear()
        with pytest.raises(ServerUnavailable):
            client.predict_many("m", [{"x": 1.0}])
        assert server.paths() == [("POST", "/api/predict/")]  # as predict: POSTs are not retried


def test_progress_shows_a_bar_on_stderr(capsys):
    with fake_river() as server:
        Client(server.url, quiet=True).learn_many("m", list(rows(30)), batch_size=10, progress=True)
    err = capsys.readouterr().err
    assert "learn m" in err and "30/30" in err


# -- predict_many ----------------------------------------------------------------------------

def test_predict_many_answers_in_order_in_chunks():
    features = ({"x": float(i)} for i in range(25))
    with fake_river() as server:
        client = Client(server.url, quiet=True)
        predictions = client.predict_many("m", features, batch_size=10)
        assert predictions == [2.0 * i for i in range(25)]
        assert predictions[:3] == [client.predict("m", {"x": float(i)})["prediction"] for i in range(3)]
        assert client.predict_many("m", []) == []
    assert server.sizes("predict") == [10, 10, 5, None, None, None]


def test_predict_many_stores_the_identifiers_given():
    with fake_river() as server:
        client = Client(server.url, quiet=True)
        assert client.predict_many("m", [{"x": 1.0}, {"x": 2.0}, {"x": 3.0}],
                                   identifiers=["one", None, "three"]) == [2.0, 4.0, 6.0]
        assert server.stored == {"one": 2.0, "three": 6.0}


def test_predict_many_names_the_refused_row():
    features = [{"x": float(i)} for i in range(12)]
    features[7] = {"x": "soon"}
    with fake_river() as server:
        with pytest.raises(BadRequest) as caught:
            Client(server.url, quiet=True).predict_many("m", features, batch_size=5)
    assert caught.value.row == 7 and caught.value.message.startswith("Row 7: The model raised on this input")
    assert "learned" not in caught.value.message
    assert server.sizes("predict") == [5, 5]


# -- servers without batch routes -----------------------------------------------------------

@pytest.mark.parametrize("mode", ["old", "404", "405"])
def test_a_server_without_batches_gets_one_request_per_row_once_detected(mode, caplog):
    with fake_river(mode) as server, caplog.at_level(logging.WARNING, logger="riverapi"):
        client = Client(server.url, quiet=True)
        assert client.learn_many("m", rows(5), batch_size=2) == {"model": "m", "learned": 5, "sequence": 5}
        assert client.learn_many("m", rows(3), batch_size=2)["learned"] == 3
        assert client.predict_many("m", [{"x": 1.0}, {"x": 2.0}], batch_size=2) == [2.0, 4.0]
        assert client.predict_many("m", [{"x": 3.0}]) == [6.0]
    # The first chunk only was tried as a batch, once per route.
    assert server.sizes() == [2] + [None] * 8
    assert server.sizes("predict") == [2] + [None] * 3
    assert server.learned["m"] == [float(i) for i in range(5)] + [0.0, 1.0, 2.0]
    assert client.unbatched_routes == {"learn", "predict"}
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("riverapi")]  # the client's own
    assert len(warnings) == 2 and "no batch learn route" in warnings[0] and "no batch predict route" in warnings[1]
    assert all(f"answered {'400' if mode == 'old' else mode}" in w for w in warnings)


def test_without_batches_a_refused_row_counts_the_rows_learned_before_it():
    with fake_river("old") as server:
        client = Client(server.url, quiet=True)
        with pytest.raises(BadRequest) as caught:
            client.learn_many("m", rows(9, bad={6: "abc"}), batch_size=4)
        assert (caught.value.row, caught.value.learned) == (6, 6)
        assert caught.value.message == ("Row 6: ground_truth for a regression model must be a finite number, "
                                        "not 'abc'. (6 rows learned before it)")
        assert len(server.learned["m"]) == 6
        with pytest.raises(BadRequest) as caught:
            client.predict_many("m", [{"x": 1.0}, {"x": "soon"}])
        assert caught.value.row == 1


def test_a_batch_refused_for_a_row_without_features_is_not_taken_for_an_old_server():
    with fake_river() as server:
        client = Client(server.url, quiet=True)
        with pytest.raises(BadRequest) as caught:
            client.learn_many("m", [({"x": 1.0}, 1.0), {"ground_truth": 2.0}])
    assert caught.value.row == 1 and caught.value.message.startswith("Row 1: features: This field is required")
    assert client.unbatched_routes == set() and server.sizes() == [2]


# -- the command line ------------------------------------------------------------------------

def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RIVER_API_", "RIVER_ML_", "DJANGO_"))}
    return subprocess.run([sys.executable, "-m", "riverapi.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def write_rows(path: Path, n: int, bad: dict[int, str] | None = None, skip: tuple[int, ...] = ()) -> Path:
    """A CSV of ``n`` rows ``x,y`` (row i on line i + 2); ``bad`` replaces some targets, ``skip`` empties them."""
    bad = bad or {}
    lines = ["x,y"] + [f"{i},{'' if i in skip else bad.get(i, i)}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cli_learn_sends_batches_and_prints_the_summary(tmp_path):
    write_rows(tmp_path / "train.csv", 25, skip=(3, 4))
    with fake_river() as server:
        result = run_cli("--url", server.url, "learn", "m", "train.csv", "--target", "y", "--batch-size", "10",
                         cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "model: m\nlearned: 23\nskipped: 2 (no y)\nfailed: 0\n" in result.stdout
    assert 'metrics: {"MAE": 0.5}' in result.stdout
    assert server.sizes() == [10, 10, 3]  # rows to learn, the skipped ones left out
    assert server.learned["m"] == [float(i) for i in range(25) if i not in (3, 4)]


def test_cli_learn_stops_at_a_refused_row_having_learned_every_row_before_it(tmp_path):
    write_rows(tmp_path / "train.csv", 25, bad={13: "abc"})
    with fake_river() as server:
        result = run_cli("--url", server.url, "learn", "m", "train.csv", "--target", "y", "--batch-size", "10",
                         cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == ("riverapi: error: train.csv, line 15: ground_truth for a regression model must "
                                     "be a finite number, not 'abc'. (13 examples learned before it, none after it) "
                                     "(HTTP 400 BadRequest)")
    # The chunk of lines 12-21 was refused whole; its three rows before line 15 were sent again.
    assert server.sizes() == [10, 10, 3]
    assert server.learned["m"] == [float(i) for i in range(13)]


def test_cli_learn_skip_errors_goes_on_past_refused_rows(tmp_path):
    write_rows(tmp_path / "train.csv", 25, bad={0: "abc", 13: "abc", 14: "nope", 24: "x"})
    with fake_river() as server:
        result = run_cli("--url", server.url, "learn", "m", "train.csv", "--target", "y", "--batch-size", "10",
                         "--skip-errors", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "learned: 21\n" in result.stdout and "failed: 4\n" in result.stdout
    assert [line.split(":")[1] for line in result.stderr.splitlines()] == [
        " train.csv, line 2", " train.csv, line 15", " train.csv, line 16", " train.csv, line 26"]
    assert server.learned["m"] == [float(i) for i in range(25) if i not in (0, 13, 14, 24)]


def test_cli_learn_against_a_server_without_batches(tmp_path):
    write_rows(tmp_path / "train.csv", 7, bad={5: "abc"})
    with fake_river("old") as server:
        result = run_cli("--url", server.url, "-v", "learn", "m", "train.csv", "--target", "y", "--batch-size", "3",
                         cwd=tmp_path)
    assert result.returncode == 1
    assert "no batch learn route, sending one request per row" in result.stderr
    assert "train.csv, line 7: ground_truth for a regression model must be a finite number, not 'abc'. " \
           "(5 examples learned before it, none after it)" in result.stderr
    assert server.sizes() == [3, None, None, None, None, None, None]
    assert server.learned["m"] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_cli_predict_sends_batches_and_prints_one_answer_per_row(tmp_path):
    write_rows(tmp_path / "new.csv", 12)
    with fake_river() as server:
        result = run_cli("--url", server.url, "predict", "m", "--file", "new.csv", "--batch-size", "5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"model": "m", "prediction": 2.0 * i} for i in range(12)]
    assert server.sizes("predict") == [5, 5, 2]


def test_cli_predict_stops_at_a_refused_row_having_printed_the_rows_before_it(tmp_path):
    (tmp_path / "new.csv").write_text("x\n1\n2\n3\nsoon\n5\n")
    with fake_river() as server:
        result = run_cli("--url", server.url, "predict", "m", "--file", "new.csv", "--batch-size", "10", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("riverapi: error: new.csv, line 5: The model raised on this input")
    assert [json.loads(line)["prediction"] for line in result.stdout.splitlines()] == [2.0, 4.0, 6.0]


def test_cli_a_batch_too_large_says_to_lower_batch_size(tmp_path):
    write_rows(tmp_path / "train.csv", 30)
    with fake_river(max_rows=20) as server:
        result = run_cli("--url", server.url, "learn", "m", "train.csv", "--target", "y", "--batch-size", "25",
                         cwd=tmp_path)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.strip() == ("riverapi: error: train.csv, lines 2 to 26: A batch holds at most 20 rows "
                                     "(MAX_BATCH_ROWS). (try a lower --batch-size) (0 examples learned before them) "
                                     "(HTTP 413 BadRequest)")
    assert server.learned["m"] == []


def test_cli_an_unknown_model_is_one_line(tmp_path):
    write_rows(tmp_path / "train.csv", 30)
    with fake_river() as server:
        result = run_cli("--url", server.url, "learn", "nope", "train.csv", "--target", "y", cwd=tmp_path)
        assert result.stderr == "riverapi: error: No model named 'nope'. (HTTP 404 NotFound)\n"
        result = run_cli("--url", server.url, "predict", "nope", "--file", "train.csv", cwd=tmp_path)
        assert result.stderr == "riverapi: error: No model named 'nope'. (HTTP 404 NotFound)\n"


@pytest.mark.parametrize("size", ["0", "-3", "many"])
def test_cli_batch_size_must_be_a_positive_number(tmp_path, size):
    write_rows(tmp_path / "train.csv", 2)
    with fake_river() as server:
        result = run_cli("--url", server.url, "learn", "m", "train.csv", "--target", "y", "--batch-size", size,
                         cwd=tmp_path)
    assert result.returncode == 2 and "--batch-size" in result.stderr
    assert server.requests == []
