"""Our own riverapi client (riverapi/, version 1.0.0.dev0).

Against live multi-worker servers: every method, for every flavor, on both stores; every
error type; the token flow with the server's authentication switched on. Against tiny local
fake servers (``http.server`` on 127.0.0.1, started here): retries, timeouts, connection reuse,
and protocol tests of the client's 401 → token → Bearer flow (token expiry, refused
credentials, a token refused at once), which the real server cannot easily be made to show.
"""

from __future__ import annotations

import base64
import http.server
import json
import logging
import math
import os
import pickle
import re
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

import riverapi
from flavored_models import EXPECTED_METRICS, FLAVORS, MODEL_JSON_STEPS, examples, make_model
from riverapi import (
    AuthenticationError,
    BadRequest,
    Client,
    NotFound,
    RiverAPIError,
    ServerError,
    ServerUnavailable,
)
from riverapi.auth import parse_auth_header
from riverapi.client import pickle_model

BACKENDS = ("shelve", "redis", "redis-cluster")
PREDICT_METHOD = {"regression": "predict_one", "binary": "predict_proba_one", "multiclass": "predict_proba_one",
                  "cluster": "predict_one", "anomaly": "score_one", "custom": "predict_one"}
N_LEARN = 10


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def same_json(actual, expected) -> bool:
    """Equal as JSON values, numbers up to float noise (bool keys become "true"/"false")."""
    expected = json.loads(json.dumps(expected))
    if isinstance(expected, dict):
        return isinstance(actual, dict) and set(actual) == set(expected) and all(
            same_json(actual[k], v) for k, v in expected.items())
    if isinstance(expected, float) or (isinstance(expected, int) and not isinstance(expected, bool)):
        return isinstance(actual, (int, float)) and math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-12)
    return actual == expected


# -- against live servers -------------------------------------------------------------------

@pytest.mark.live
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_every_method_for_every_flavor(backend_name, live_server_factory, tmp_path):
    server = live_server_factory(backend_name, workers=2)
    client = Client(server.url, quiet=True)
    try:
        drive_every_method(client, backend_name, server.url, tmp_path)
    except AssertionError as error:
        raise AssertionError(f"{error}\n--- server log ---\n{server.log_text()[-8000:]}") from None


def drive_every_method(client: Client, backend_name: str, url: str, tmp_path: Path) -> None:
    info = client.info()
    assert info["status"] == "running" and info["storage"] == backend_name and info["prefix"] == "api"
    assert client.check() == info
    assert (client.baseurl, client.prefix, client.apiroot) == (url, "api", url + "/api")
    assert client.models() == {"models": []}

    chosen_names = []
    for flavor in FLAVORS:
        where = f"[{flavor}] "
        data = examples(flavor, N_LEARN + 4)
        learn_data, (x_held, y_held), compare_data = data[:N_LEARN], data[N_LEARN], data[N_LEARN + 1:]

        # upload_model: a model object, with a generated and with a chosen name.
        generated = client.upload_model(make_model(flavor), flavor)
        chosen = client.upload_model(make_model(flavor), flavor, model_name=f"ours-{flavor}")
        assert re.fullmatch(r"[a-z]+-[a-z]+", generated), where + generated
        assert chosen == f"ours-{flavor}"
        chosen_names.append(chosen)
        assert {generated, chosen} <= set(client.models()["models"])

        # learn: one log entry per call, in order.
        answers = [client.learn(chosen, x, y) for x, y in learn_data]
        assert [a["model"] for a in answers] == [chosen] * N_LEARN, where + str(answers[:2])
        assert [a["sequence"] for a in answers] == list(range(1, N_LEARN + 1)), where + str(answers)
        assert client.learn(generated, *learn_data[0])["sequence"] == 1

        # predict, then label (flavors whose examples have a ground truth).
        predicted = client.predict(chosen, x_held)
        assert set(predicted) == {"model", "prediction", "identifier"} and predicted["model"] == chosen, where
        if y_held is not None:
            labelled = client.label(y_held, predicted["identifier"], chosen)
            assert labelled["model"] == chosen and labelled["identifier"] == predicted["identifier"], where
            assert labelled["sequence"] == N_LEARN + 1, where + str(labelled)
            with pytest.raises(NotFound, match="already labelled"):
                client.label(y_held, predicted["identifier"], chosen)

        # metrics, stats, model JSON.
        metrics = client.metrics(chosen)
        assert set(metrics) == EXPECTED_METRICS[flavor], where + str(metrics)
        stats = client.stats(chosen)
        assert stats["learn"]["n_calls"] == N_LEARN and stats["predict"]["n_calls"] == 1, where + str(stats)
        if y_held is not None:
            assert stats["label"]["n_calls"] == 1, where + str(stats)
        assert client.stats(generated)["learn"]["n_calls"] == 1
        assert list(client.get_model_json(chosen)) == MODEL_JSON_STEPS[flavor], where

        # download_model: returns dest; the pickle predicts what the server predicts.
        dest = str(tmp_path / f"{chosen}.pkl")
        assert client.download_model(chosen, dest=dest) == dest
        with open(dest, "rb") as handle:
            downloaded = pickle.load(handle)  # noqa: S301 - the model this test uploaded
        for x, _ in compare_data:
            server_prediction = client.predict(chosen, x)["prediction"]
            local_prediction = getattr(downloaded, PREDICT_METHOD[flavor])(dict(x))
            assert same_json(server_prediction, local_prediction), where + f"{server_prediction} != {local_prediction}"

        # delete_model: gone, with its metrics; the chosen model stays.
        assert client.delete_model(generated)["model"] == generated
        assert generated not in client.models()["models"] and chosen in client.models()["models"]
        with pytest.raises(NotFound):
            client.metrics(generated)

    # The 0.0.21 low-level calls still answer JSON, relative to apiroot.
    assert client.get("/models/") == client.models()
    assert sorted(client.models()["models"]) == sorted(chosen_names)
    for name in chosen_names:
        client.delete_model(name)
    assert client.models() == {"models": []}


@pytest.mark.live
def test_download_model_defaults_to_name_dot_pkl_in_the_working_directory(live_server_factory, tmp_path,
                                                                            monkeypatch):
    server = live_server_factory("shelve", workers=2)
    client = Client(server.url, quiet=True)
    name = client.upload_model(make_model("custom"), "custom", model_name="mean")
    client.learn(name, {}, 4.0)
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    assert client.download_model(name) == "mean.pkl"
    with open(workdir / "mean.pkl", "rb") as handle:
        assert pickle.load(handle).predict_one({}) == 4.0  # noqa: S301
    assert os.listdir(workdir) == ["mean.pkl"]  # no partial file left behind


@pytest.mark.live
def test_every_error_is_typed_and_carries_the_server_message(live_server_factory, tmp_path, monkeypatch):
    server = live_server_factory("shelve", workers=2)
    client = Client(server.url, quiet=True)
    downloads = tmp_path / "downloads"
    downloads.mkdir()

    # NotFound: an unknown model, for every call that names one.
    missing = "no-such-model"
    calls = {
        "metrics": lambda: client.metrics(missing),
        "stats": lambda: client.stats(missing),
        "get_model_json": lambda: client.get_model_json(missing),
        "predict": lambda: client.predict(missing, {"x": 1.0}),
        "learn": lambda: client.learn(missing, {"x": 1.0}, 1.0),
        "delete_model": lambda: client.delete_model(missing),
        "download_model": lambda: client.download_model(missing, dest=str(downloads / "missing.pkl")),
    }
    for what, call in calls.items():
        with pytest.raises(NotFound) as caught:
            call()
        error = caught.value
        assert isinstance(error, RiverAPIError), what
        assert error.status_code == 404 and error.message == f"No model named '{missing}'.", what
        assert error.response is not None and error.response.status_code == 404, what
    assert os.listdir(downloads) == []  # no file, nor a partial one

    # BadRequest: a target of the wrong type, with the server's message.
    name = client.upload_model(make_model("regression"), "regression", model_name="prices")
    with pytest.raises(BadRequest) as caught:
        client.learn(name, {"rooms": 3.0}, "abc")
    assert caught.value.status_code == 400
    assert caught.value.message == "ground_truth for a regression model must be a finite number, not 'abc'."
    assert str(caught.value) == "400: " + caught.value.message

    # BadRequest: a flavor the server does not know (the client lets the server judge).
    with pytest.raises(BadRequest) as caught:
        client.upload_model(make_model("regression"), "no-such-flavor")
    assert caught.value.status_code == 400
    assert caught.value.message.startswith("Unknown flavor 'no-such-flavor'")
    assert "anomaly" in caught.value.message

    # BadRequest: a model that does not fit its flavor; and bytes that are not a pickle.
    with pytest.raises(BadRequest, match="predict_proba_one"):
        client.upload_model(make_model("regression"), "binary", model_name="wrong")
    with pytest.raises(BadRequest, match="not a readable pickle"):
        client.upload_model(b"not a pickle", "regression")

    # NotFound: an identifier that was never handed out.
    with pytest.raises(NotFound, match="No pending prediction 'nope'"):
        client.label(1.0, "nope", name)

    # Refused locally, before anything is sent: NaN is not JSON (BadRequest without a status); an
    # empty flavor, and a name with a "/" (which would reach another route), are wrong arguments.
    with pytest.raises(BadRequest, match="JSON") as caught:
        client.learn(name, {"rooms": float("nan")}, 1.0)
    assert caught.value.status_code is None
    with pytest.raises(ValueError, match="flavor"):
        client.upload_model(make_model("regression"), "")
    with pytest.raises(ValueError, match="model name"):
        client.get_model_json("download/prices")

    # None of the refusals created or changed a model.
    assert client.models() == {"models": ["prices"]}
    assert client.stats(name)["learn"]["n_calls"] == 0

    # Without dill the model object is uploaded with pickle.
    monkeypatch.setitem(sys.modules, "dill", None)
    with pytest.raises(ImportError):
        import dill  # noqa: F401
    assert type(pickle.loads(pickle_model(make_model("custom")))).__name__ == "RunningMean"  # noqa: S301
    assert client.upload_model(make_model("custom"), "custom", model_name="plain-pickle") == "plain-pickle"
    client.learn("plain-pickle", {}, 2.0)
    assert client.predict("plain-pickle", {})["prediction"] == 2.0


def linear_rows(n: int):
    """``n`` regression examples, a generator (as a long input would be)."""
    for i in range(n):
        a, b = float(i % 17), float(i * 7 % 13)
        yield {"a": a, "b": b}, 3.0 * a - 2.0 * b + 1.0


@pytest.mark.live
def test_learn_many_and_predict_many_against_a_live_server(live_server_factory):
    """The batch routes: 2,500 rows in batches of 1,000; predictions in order, as single predicts
    give them; a refused batch names the row of the whole input (the tests against a fake server,
    a server without batch routes among them, are in tests/test_riverapi_batches.py)."""
    server = live_server_factory("shelve", workers=2)
    client = Client(server.url, quiet=True)
    name = client.upload_model(make_model("regression"), "regression", model_name="batched")
    summary = client.learn_many(name, linear_rows(2500), batch_size=1000)
    assert summary["model"] == name and summary["learned"] == 2500, summary
    assert client.stats(name)["learn"]["n_calls"] == 3  # a batch is one call
    assert client.unbatched_routes == set()  # no fallback to one request per row

    # The server learned what a local copy learns from the same rows, in the same order.
    local = make_model("regression")
    for x, y in linear_rows(2500):
        local.learn_one(x, y)
    held = [{"a": float(i), "b": float(i % 5)} for i in range(25)]
    predictions = client.predict_many(name, iter(held), batch_size=10)
    assert predictions == pytest.approx([client.predict(name, x)["prediction"] for x in held], rel=1e-12)
    assert predictions == pytest.approx([local.predict_one(x) for x in held], rel=1e-9)

    # A refused batch: all or nothing, the row counted from the start of the input.
    rows = list(linear_rows(30))
    rows[25] = (rows[25][0], "abc")
    with pytest.raises(BadRequest) as caught:
        client.learn_many(name, rows, batch_size=10)
    assert (caught.value.status_code, caught.value.row, caught.value.learned) == (400, 25, 20)
    assert caught.value.message.startswith("Row 25: ") and "not 'abc'" in caught.value.message
    assert "(20 rows learned before it)" in caught.value.message
    assert client.stats(name)["learn"]["n_calls"] == 3 + 2

    # Identifiers: stored for the rows that give one, for a later label.
    assert len(client.predict_many(name, held[:2], identifiers=["batch-0", None])) == 2
    assert client.label(1.0, "batch-0", name)["identifier"] == "batch-0"


def test_a_closed_port_is_server_unavailable_fast():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    client = Client(url, quiet=True, timeout=1, retries=2, backoff_factor=0.01)
    started = time.monotonic()
    with pytest.raises(ServerUnavailable) as caught:
        client.info()
    assert caught.value.status_code is None and caught.value.response is None
    assert caught.value.message.startswith(f"Cannot reach {url}/api/:")
    assert "refused" in caught.value.message.lower()
    with pytest.raises(ServerUnavailable):
        client.learn("m", {"x": 1.0}, 1.0)
    assert time.monotonic() - started < 5


# -- against local fake servers -------------------------------------------------------------

class FakeServer:
    """A tiny HTTP/1.1 server on 127.0.0.1: ``respond(handler, body)`` returns
    ``(status, headers, body)``; every request is recorded."""

    def __init__(self, respond):
        self.requests: list[dict] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def handle_any(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fake.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                      "body": body, "client_port": self.client_address[1]})
                status, headers, answer = respond(self, body)
                if isinstance(answer, (dict, list)):
                    answer = json.dumps(answer).encode()
                    headers = {"Content-Type": "application/json", **headers}
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (the timeout test)

            do_GET = do_POST = do_DELETE = do_HEAD = handle_any

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def paths(self) -> list[tuple[str, str]]:
        return [(r["method"], r["path"]) for r in self.requests]


@contextmanager
def serving(server):
    """``server`` (anything with an ``httpd``) answering in a thread until the block ends."""
    thread = threading.Thread(target=server.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()


def fake_server(respond):
    return serving(FakeServer(respond))


def answering(*answers):
    """A responder that gives these answers in turn, then the last one forever."""
    queue = list(answers)

    def respond(handler, body):
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return respond


def test_idempotent_calls_are_retried_on_503_and_posts_are_not():
    unavailable = (503, {}, {"message": "The store cannot be reached."})
    with fake_server(answering(unavailable)) as server:
        client = Client(server.url, quiet=True, retries=2, backoff_factor=0.01)
        with pytest.raises(ServerUnavailable) as caught:
            client.models()
        assert caught.value.status_code == 503 and caught.value.message == "The store cannot be reached."
        assert server.paths() == [("GET", "/api/models/")] * 3  # the call and two retries
        server.requests.clear()
        with pytest.raises(ServerUnavailable):
            client.delete_model("m")
        assert server.paths() == [("DELETE", "/api/model/")] * 3
        server.requests.clear()
        with pytest.raises(ServerUnavailable):
            client.learn("m", {"x": 1.0}, 2.0)
        assert server.paths() == [("POST", "/api/learn/")]  # a learn is never sent twice


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_passing_outage_is_retried_away(status):
    with fake_server(answering((status, {}, b"<html>gateway</html>"), (200, {}, {"models": ["m"]}))) as server:
        assert Client(server.url, quiet=True, retries=1, backoff_factor=0.01).models() == {"models": ["m"]}
    assert len(server.requests) == 2


@pytest.mark.parametrize(("status", "error_type"), [
    (400, BadRequest), (405, BadRequest), (413, BadRequest), (422, BadRequest), (404, NotFound),
    (401, AuthenticationError), (403, AuthenticationError), (500, ServerError), (501, ServerError),
])
def test_each_status_has_its_error_type_and_is_not_retried(status, error_type):
    with fake_server(answering((status, {}, {"message": f"status {status}"}))) as server:
        with pytest.raises(error_type) as caught:
            Client(server.url, quiet=True, retries=3, backoff_factor=0.01).metrics("m")
    assert (caught.value.status_code, caught.value.message) == (status, f"status {status}")
    assert isinstance(caught.value, RiverAPIError)
    assert len(server.requests) == 1
    assert server.requests[0]["path"] == "/api/metrics/?model=m"
    assert json.loads(server.requests[0]["body"]) == {"model": "m"}  # the JSON body 0.0.21 sent, too


def test_error_messages_from_other_shapes_of_answer():
    answers = [
        (400, {}, {"errors": [{"code": "bad", "message": "first problem", "detail": "x"}, {"message": "second"}]}),
        (500, {"Content-Type": "text/html"}, b"<!doctype html><h1>Server Error</h1>"),
        (400, {"Content-Type": "text/plain"}, b"plain words\nmore"),
    ]
    with fake_server(answering(*answers)) as server:
        client = Client(server.url, quiet=True, retries=0)
        with pytest.raises(BadRequest, match=r"^400: first problem; second$"):
            client.models()
        with pytest.raises(ServerError) as caught:
            client.models()
        assert "<" not in caught.value.message and "Internal Server Error" in caught.value.message
        with pytest.raises(BadRequest, match="^400: plain words$"):
            client.models()


def test_a_slow_server_times_out_as_server_unavailable():
    def slow(handler, body):
        time.sleep(1.0)
        return 200, {}, {"models": []}

    with fake_server(slow) as server:
        client = Client(server.url, quiet=True, timeout=0.2, retries=0)
        started = time.monotonic()
        with pytest.raises(ServerUnavailable, match="timed out"):
            client.models()
        assert time.monotonic() - started < 0.9


def test_one_session_reuses_its_connection():
    with fake_server(answering((200, {}, {"models": []}))) as server:
        client = Client(server.url, quiet=True)
        for _ in range(3):
            client.models()
        client.learn("m", {"x": 1.0}, 1.0)
    assert len(server.requests) == 4
    assert len({r["client_port"] for r in server.requests}) == 1  # one TCP connection for all four calls


def test_calls_are_logged_through_logging_not_printed(caplog, capsys):
    with fake_server(answering((201, {}, {"model": "m", "sequence": 1}))) as server:
        with caplog.at_level(logging.DEBUG, logger="riverapi"):
            Client(server.url).learn("m", {"x": 1.0}, 1.0)
            loud = [r.getMessage() for r in caplog.records]
            caplog.clear()
            Client(server.url, quiet=True).learn("m", {"x": 1.0}, 1.0)
            quiet = [r.getMessage() for r in caplog.records]
    assert f"POST {server.url}/api/learn/ -> 201" in loud
    assert any("sequence" in message for message in loud)  # the answer, at DEBUG
    assert quiet == []
    assert capsys.readouterr() == ("", "")


def test_the_0_0_21_surface(monkeypatch):
    from riverapi.main import Client as MainClient

    assert MainClient is Client is riverapi.Client
    monkeypatch.delenv("RIVER_API_URL", raising=False)
    monkeypatch.setenv("RIVER_ML_USER", "ada")
    monkeypatch.setenv("RIVER_ML_TOKEN", "secret")
    client = MainClient()
    assert (client.baseurl, client.quiet, client.prefix) == ("http://127.0.0.1:8000", False, "api")
    assert client.apiroot == "http://127.0.0.1:8000/api"
    assert (client.user, client.token) == ("ada", "secret")
    assert set(client.flavors) == {"regression", "binary", "multiclass", "cluster", "anomaly", "custom"}
    assert Client("http://h:1/", prefix="/v2/").apiroot == "http://h:1/v2"
    assert Client("http://h:1", prefix="").apiroot == "http://h:1"
    for method in ("check", "info", "upload_model", "learn", "predict", "label", "metrics", "stats", "models",
                   "get_model_json", "download_model", "delete_model", "stream_events", "stream_metrics",
                   "get", "post", "delete"):
        assert callable(getattr(client, method)), method
    header = parse_auth_header('Bearer realm="http://h/api/auth/token",service="http://h",scope="learn"')
    assert (header.Realm, header.Service, header.Scope) == ("http://h/api/auth/token", "http://h", "learn")


def test_the_server_url_comes_from_the_environment_like_the_command_lines(monkeypatch):
    """Client() and `riverapi` talk to the same server: $RIVER_API_URL, else 127.0.0.1:8000."""
    monkeypatch.setenv("RIVER_API_URL", "http://127.0.0.1:8123/")
    assert Client().apiroot == "http://127.0.0.1:8123/api"
    assert Client("http://h:1").baseurl == "http://h:1"  # a given URL wins


def test_check_takes_the_prefix_and_baseurl_the_server_gives():
    def info(handler, body):
        return 200, {}, {"status": "running", "prefix": "/api/", "baseurl": f"{server.url}/"}

    with fake_server(info) as server:
        client = Client(server.url + "/", quiet=True)
        assert client.check()["status"] == "running"
        assert (client.baseurl, client.prefix, client.apiroot) == (server.url, "api", server.url + "/api")


def test_importing_riverapi_needs_neither_django_nor_river(tmp_path):
    code = ("import sys, riverapi, riverapi.main, riverapi.cli; "
            "print(sorted(m for m in ('django', 'river', 'dill', 'tqdm') if m in sys.modules))")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE")}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# -- the token flow: a protocol test of the client against a fake server -------------------

class TokenServer:
    """Challenges with Www-Authenticate, issues tokens for Basic ada:api-token, accepts Bearer."""

    USER, API_TOKEN = "ada", "api-token"

    def __init__(self):
        self.issued: list[str] = []
        self.valid: set[str] = set()
        self.server: FakeServer | None = None
        self.realm: str | None = None  # None: the server's own <url>/api/auth/token

    def respond(self, handler, body):
        url = self.server.url
        authorization = handler.headers.get("Authorization", "")
        if handler.path.startswith("/api/auth/token"):
            expected = "Basic " + base64.b64encode(f"{self.USER}:{self.API_TOKEN}".encode()).decode()
            if authorization != expected:
                return 401, {}, {"message": "Invalid username or API token."}
            token = f"jwt-{len(self.issued) + 1}"
            self.issued.append(token)
            self.valid.add(token)
            return 200, {}, {"token": token, "expires_in": 600, "issued_at": 0}
        if authorization.removeprefix("Bearer ") not in self.valid:
            challenge = f'Bearer realm="{self.realm or url + "/api/auth/token"}",service="{url}"'
            return 401, {"Www-Authenticate": challenge}, {"message": "Authentication required."}
        if handler.command == "POST":
            return 201, {}, {"received": json.loads(body)}
        return 200, {}, {"models": ["secret-model"]}


@contextmanager
def token_server():
    tokens = TokenServer()
    with fake_server(tokens.respond) as server:
        tokens.server = server
        yield tokens, server


def test_protocol_401_then_token_with_basic_then_bearer_retry(monkeypatch):
    monkeypatch.setenv("RIVER_ML_USER", TokenServer.USER)
    monkeypatch.setenv("RIVER_ML_TOKEN", TokenServer.API_TOKEN)
    with token_server() as (tokens, server):
        client = Client(server.url, quiet=True)
        assert client.models() == {"models": ["secret-model"]}
        first, token_request, retried = server.requests
        assert "Authorization" not in first["headers"]
        assert token_request["path"] == "/api/auth/token"
        assert token_request["headers"]["Authorization"] == "Basic " + base64.b64encode(b"ada:api-token").decode()
        assert token_request["headers"]["service"] == server.url
        assert retried["path"] == "/api/models/" and retried["headers"]["Authorization"] == "Bearer jwt-1"

        # The token is kept: the next call goes straight through, a POST body and all.
        server.requests.clear()
        assert client.learn("m", {"x": 1.0}, 2.0) == {
            "received": {"model": "m", "features": {"x": 1.0}, "ground_truth": 2.0}}
        assert server.paths() == [("POST", "/api/learn/")]

        # An expired token: challenged again, a new token, the POST body sent again on the retry.
        tokens.valid.clear()
        server.requests.clear()
        assert client.learn("m", {"x": 3.0}, 4.0)["received"]["features"] == {"x": 3.0}
        assert server.paths() == [("POST", "/api/learn/"), ("GET", "/api/auth/token"), ("POST", "/api/learn/")]
        assert server.requests[0]["body"] == server.requests[2]["body"]
        assert server.requests[2]["headers"]["Authorization"] == "Bearer jwt-2"
        assert tokens.issued == ["jwt-1", "jwt-2"]


def test_protocol_credentials_can_be_given_to_the_client(monkeypatch):
    monkeypatch.delenv("RIVER_ML_USER", raising=False)
    monkeypatch.delenv("RIVER_ML_TOKEN", raising=False)
    with token_server() as (tokens, server):
        client = Client(server.url, quiet=True, user=TokenServer.USER, token=TokenServer.API_TOKEN)
        assert client.models() == {"models": ["secret-model"]}
        assert tokens.issued == ["jwt-1"]


def test_protocol_without_credentials_is_an_authentication_error(monkeypatch):
    monkeypatch.delenv("RIVER_ML_USER", raising=False)
    monkeypatch.delenv("RIVER_ML_TOKEN", raising=False)
    with token_server() as (tokens, server):
        with pytest.raises(AuthenticationError, match="RIVER_ML_TOKEN") as caught:
            Client(server.url, quiet=True).models()
        assert caught.value.status_code == 401
        assert server.paths() == [("GET", "/api/models/")]  # no token was asked for
        assert tokens.issued == []


def test_protocol_wrong_credentials_are_an_authentication_error(monkeypatch):
    monkeypatch.setenv("RIVER_ML_USER", TokenServer.USER)
    monkeypatch.setenv("RIVER_ML_TOKEN", "wrong")
    with token_server() as (tokens, server):
        with pytest.raises(AuthenticationError, match="Invalid username or API token") as caught:
            Client(server.url, quiet=True).models()
        assert caught.value.status_code == 401
        assert server.paths() == [("GET", "/api/models/"), ("GET", "/api/auth/token")]
        assert tokens.issued == []


def test_protocol_a_token_that_is_refused_at_once_is_not_fetched_forever(monkeypatch):
    monkeypatch.setenv("RIVER_ML_USER", TokenServer.USER)
    monkeypatch.setenv("RIVER_ML_TOKEN", TokenServer.API_TOKEN)
    with token_server() as (tokens, server):
        tokens.valid = type("Never", (set,), {"__contains__": lambda self, item: False})()
        with pytest.raises(AuthenticationError, match="Authentication required"):
            Client(server.url, quiet=True).models()
        assert server.paths() == [("GET", "/api/models/"), ("GET", "/api/auth/token"), ("GET", "/api/models/")]


def test_protocol_a_401_without_a_challenge_is_an_authentication_error():
    with fake_server(answering((401, {}, {"message": "No."}))) as server:
        with pytest.raises(AuthenticationError, match="No."):
            Client(server.url, quiet=True, user="u", token="t").models()
        assert len(server.requests) == 1


def challenging(realm: str):
    """A server that answers every call 401 with ``realm``."""
    return answering((401, {"Www-Authenticate": f'Bearer realm="{realm}",service="x"'}, {"message": "Log in."}))


def test_protocol_a_realm_on_another_port_gets_no_credentials():
    """A challenge is the server's word: it must not send the API token to another server."""
    with fake_server(answering((200, {}, {"token": "stolen"}))) as collector:
        with fake_server(challenging(f"{collector.url}/api/auth/token")) as server:
            with pytest.raises(AuthenticationError, match="another origin") as caught:
                Client(server.url, quiet=True, user="ada", token="api-token").models()
            assert caught.value.status_code is None
            assert server.paths() == [("GET", "/api/models/")]
        assert collector.requests == []


def challenging_itself(realm_template: str):
    """A server that answers every call 401 with a realm made from its own port."""
    def respond(handler, body):
        realm = realm_template.format(port=handler.server.server_address[1])
        return 401, {"Www-Authenticate": f'Bearer realm="{realm}",service="x"'}, {"message": "Log in."}

    return respond


def test_protocol_a_realm_with_another_scheme_gets_no_credentials():
    """The same host and port, but https: another origin (the token must not go where the user did not say)."""
    with fake_server(challenging_itself("https://127.0.0.1:{port}/api/auth/token")) as server:
        with pytest.raises(AuthenticationError, match="another origin"):
            Client(server.url, quiet=True, user="ada", token="api-token").models()
        assert server.paths() == [("GET", "/api/models/")]


class LoopbackOnlySession(requests.Session):
    """Sends only to 127.0.0.1; any other host is recorded and refused here, before any packet leaves."""

    def __init__(self):
        super().__init__()
        self.refused: list[str] = []

    def request(self, method, url, *args, **kwargs):
        if urlsplit(url).hostname != "127.0.0.1":
            self.refused.append(url)
            raise requests.ConnectionError(f"test: not sending to {url}")
        return super().request(method, url, *args, **kwargs)


@pytest.mark.parametrize("realm", ["http://ml.example.com:{port}/api/auth/token",
                                   "http://ml.example.com/api/auth/token",
                                   "https://ml.example.com/api/auth/token"])
def test_protocol_a_realm_on_another_host_gets_no_credentials(realm):
    session = LoopbackOnlySession()
    with fake_server(challenging_itself(realm)) as server:
        with pytest.raises(AuthenticationError, match="another origin"):
            Client(server.url, quiet=True, user="ada", token="api-token", session=session).models()
        assert server.paths() == [("GET", "/api/models/")]
    assert session.refused == []


def test_protocol_the_realm_may_spell_the_servers_origin_differently():
    """Letter case of the scheme does not make another origin."""
    with token_server() as (tokens, server):
        tokens.realm = server.url.replace("http://", "HTTP://") + "/api/auth/token"
        client = Client(server.url + "/", quiet=True, user=TokenServer.USER, token=TokenServer.API_TOKEN)
        assert client.models() == {"models": ["secret-model"]}
        assert tokens.issued == ["jwt-1"]


def test_protocol_a_redirect_from_the_realm_carries_no_credentials_elsewhere():
    with fake_server(answering((200, {}, {"token": "stolen"}))) as collector:
        def respond(handler, body):
            if handler.path.startswith("/api/auth/token"):
                return 302, {"Location": f"{collector.url}/api/auth/token/"}, b""
            return 401, {"Www-Authenticate": f'Bearer realm="{server.url}/api/auth/token"'}, {"message": "Log in."}

        with fake_server(respond) as server:
            with pytest.raises(AuthenticationError):
                Client(server.url, quiet=True, user="ada", token="api-token").models()
            assert "Authorization" in server.requests[1]["headers"]  # the server's own realm: yes
        assert collector.requests and all("Authorization" not in r["headers"] for r in collector.requests)


# -- the token flow against the real server (authentication switched on) --------------------

@pytest.mark.live
def test_token_flow_against_a_live_server_with_authentication(live_server_factory, monkeypatch):
    server = live_server_factory("shelve", workers=2, DISABLE_AUTHENTICATION="false")
    created = subprocess.run([sys.executable, "manage.py", "river_token", "ada", "--create-user"],
                             cwd=Path(__file__).resolve().parent.parent / "example_project", env=server.env,
                             capture_output=True, text=True, check=True, timeout=120)
    api_token = created.stdout.strip()
    monkeypatch.delenv("RIVER_ML_USER", raising=False)
    monkeypatch.delenv("RIVER_ML_TOKEN", raising=False)

    # No credentials: refused, with what to do.
    with pytest.raises(AuthenticationError, match="RIVER_ML_TOKEN") as caught:
        Client(server.url, quiet=True).models()
    assert caught.value.status_code == 401
    # Wrong credentials: the token route refuses them.
    with pytest.raises(AuthenticationError) as caught:
        Client(server.url, quiet=True, user="ada", token="wrong").models()
    assert caught.value.status_code == 401

    # From the environment: 401 → token → Bearer, for every kind of call.
    monkeypatch.setenv("RIVER_ML_USER", "ada")
    monkeypatch.setenv("RIVER_ML_TOKEN", api_token)
    client = Client(server.url, quiet=True)
    name = client.upload_model(make_model("custom"), "custom")
    client.learn(name, {}, 3.0)
    assert client.predict(name, {})["prediction"] == 3.0
    assert client.stats(name)["learn"]["n_calls"] == 1
    assert client.models() == {"models": [name]}
    assert client.headers["Authorization"].startswith("Bearer ")

    # The command line follows the same flow.
    env = {**os.environ, "RIVER_ML_USER": "ada", "RIVER_ML_TOKEN": api_token}
    done = subprocess.run([sys.executable, "-m", "riverapi.cli", "--url", server.url, "models"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and json.loads(done.stdout) == {"models": [name]}, done.stderr


def test_upload_spec_builds_the_model_on_the_server(live_server_factory):
    server = live_server_factory("shelve", workers=2)
    client = Client(server.url, quiet=True)
    spec = [{"class": "preprocessing.StandardScaler"},
            {"class": "linear_model.LogisticRegression", "params": {"l2": 0.1}}]
    name = client.upload_spec(spec, "binary", model_name="from-spec")
    assert name == "from-spec"
    assert client.get_model_json(name)["LogisticRegression"]["l2"] == 0.1
    client.learn(name, {"a": 1.0}, True)
    assert client.stats(name)["learn"]["n_calls"] == 1
    with pytest.raises(BadRequest, match="os.system"):
        client.upload_spec({"class": "os.system"}, "binary")
