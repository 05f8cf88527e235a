"""The ``riverapi`` command line, run as a subprocess (``python -m riverapi.cli`` and the
installed ``riverapi`` entry point), against a live multi-worker server and on bad input."""

from __future__ import annotations

import csv
import http.server
import json
import os
import pickle
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from flavored_models import examples, make_model

ENTRY_POINT = Path(sys.executable).parent / "riverapi"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, entry_point: bool = False,
            timeout: float = 120) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("RIVER_API_", "RIVER_ML_", "DJANGO_"))}
    clean.update(env or {})
    command = [str(ENTRY_POINT)] if entry_point else [sys.executable, "-m", "riverapi.cli"]
    return subprocess.run([*command, *args], cwd=cwd, env=clean, capture_output=True, text=True, timeout=timeout)


def assert_clean_failure(result: subprocess.CompletedProcess, code: int, *phrases: str) -> str:
    """Exit ``code`` and one ``riverapi: error:`` line on stderr naming ``phrases``, no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("riverapi: error: "), result.stderr
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    return lines[0]


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.live
def test_cli_against_a_live_server(live_server_factory, tmp_path):
    server = live_server_factory("shelve", workers=2)
    try:
        drive_cli(server.url, tmp_path / "cli")
    except AssertionError as error:
        raise AssertionError(f"{error}\n--- server log ---\n{server.log_text()[-8000:]}") from None


def drive_cli(url: str, work: Path) -> None:
    work.mkdir()

    def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
        result = run_cli("--url", url, *args, cwd=work, **kwargs)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        return result

    assert json.loads(cli("info").stdout)["status"] == "running"
    # The URL from the environment, options after the command's name, the installed entry point.
    in_env = run_cli("models", cwd=work, env={"RIVER_API_URL": url}, entry_point=True)
    assert in_env.returncode == 0 and json.loads(in_env.stdout) == {"models": []}, in_env.stderr
    assert json.loads(run_cli("models", "--url", url, "--prefix", "api", cwd=work).stdout) == {"models": []}

    # upload: the pickle file's bytes, as they are.
    model = make_model("regression")
    (work / "model.pkl").write_bytes(pickle.dumps(model))
    assert cli("upload", "model.pkl", "--flavor", "regression", "--name", "cli-prices").stdout == "cli-prices\n"
    generated = cli("upload", "model.pkl", "--flavor", "regression").stdout.strip()
    assert re.fullmatch(r"[a-z]+-[a-z]+", generated)

    # learn from a CSV with --target: numbers become floats, a row without a target is skipped.
    data = examples("regression", 24)
    learn_rows, held = data[:20], data[20:]
    columns = sorted(learn_rows[0][0]) + ["approval"]
    rows = [{**x, "approval": y} for x, y in learn_rows]
    rows.insert(5, {**learn_rows[0][0], "approval": ""})
    write_csv(work / "train.csv", rows, columns)
    summary = cli("learn", "cli-prices", "train.csv", "--target", "approval", "--batch-size", "8").stdout
    assert "model: cli-prices\nlearned: 20\nskipped: 1 (no approval)\nfailed: 0\n" in summary, summary
    metrics = json.loads(re.search(r"^metrics: (.*)$", summary, re.M).group(1))
    assert set(metrics) == {"MAE", "RMSE", "SMAPE"} and metrics["MAE"] > 0
    # Batches of 8 rows to learn (the skipped row left out): 8 + 8 + 4, and a batch is one call.
    assert json.loads(cli("stats", "cli-prices").stdout)["learn"]["n_calls"] == 3

    # The server's model learned exactly what a local copy learns from the same floats.
    for x, y in learn_rows:
        model.learn_one(x, y)
    assert cli("download", "cli-prices", "-o", "trained.pkl").stdout.strip() == "trained.pkl"
    with open(work / "trained.pkl", "rb") as handle:
        trained = pickle.load(handle)  # noqa: S301 - the model this test uploaded
    for x, _ in held:
        assert trained.predict_one(x) == pytest.approx(model.predict_one(x), rel=1e-9)

    # predict: one example as JSON, then every row of a file (one JSON answer per line).
    answer = json.loads(cli("predict", "cli-prices", "--features", json.dumps(held[0][0])).stdout)
    assert answer["model"] == "cli-prices" and answer["prediction"] == pytest.approx(model.predict_one(held[0][0]))
    write_csv(work / "predict.csv", [x for x, _ in held], sorted(held[0][0]))
    lines = cli("predict", "cli-prices", "--file", "predict.csv").stdout.splitlines()
    assert [json.loads(line)["prediction"] for line in lines] == pytest.approx([model.predict_one(x) for x, _ in held])

    # A row the model cannot take: the server's reason, with the line; the rows before it were answered.
    (work / "bad-predict.csv").write_text("gallup,ordinal_date\n43.8,736389\n43.8,soon\n")
    refused = run_cli("--url", url, "predict", "cli-prices", "--file", "bad-predict.csv", cwd=work)
    assert_clean_failure(refused, 1, "bad-predict.csv, line 3", "The model raised on this input", "400")
    assert len(refused.stdout.splitlines()) == 1

    # label the first prediction; metrics, stats, show.
    labelled = json.loads(cli("label", "cli-prices", answer["identifier"], str(held[0][1])).stdout)
    assert labelled["identifier"] == answer["identifier"]
    assert json.loads(cli("stats", "cli-prices").stdout)["label"]["n_calls"] == 1
    assert set(json.loads(cli("metrics", "cli-prices").stdout)) == {"MAE", "RMSE", "SMAPE"}
    assert list(json.loads(cli("show", "cli-prices").stdout)) == ["StandardScaler", "LinearRegression"]

    # learn from JSON lines: a binary model, boolean labels kept as they are.
    (work / "binary.pkl").write_bytes(pickle.dumps(make_model("binary")))
    cli("upload", "binary.pkl", "--flavor", "binary", "--name", "cli-phishing")
    with open(work / "phishing.jsonl", "w") as handle:
        for x, y in examples("binary", 15):
            handle.write(json.dumps({**x, "is_phishing": y}) + "\n")
        handle.write("\n")
    summary = cli("learn", "cli-phishing", "phishing.jsonl", "--target", "is_phishing").stdout
    assert "learned: 15\n" in summary
    assert "Accuracy" in summary

    # learn without --target: every column is a feature (a cluster model).
    (work / "cluster.pkl").write_bytes(pickle.dumps(make_model("cluster")))
    cli("upload", "cluster.pkl", "--flavor", "cluster", "--name", "cli-clusters")
    write_csv(work / "points.csv", [x for x, _ in examples("cluster", 12)], sorted(examples("cluster", 1)[0][0]))
    summary = cli("learn", "cli-clusters", "points.csv").stdout
    assert "learned: 12\n" in summary and "skipped" not in summary
    assert json.loads(cli("stats", "cli-clusters").stdout)["learn"]["n_calls"] == 1  # one batch
    # ... and a supervised model told no target gets the server's reason, with the line.
    assert_clean_failure(run_cli("--url", url, "learn", "cli-prices", "predict.csv", cwd=work), 1,
                         "predict.csv, line 2", "ground_truth", "none was given")

    # Refusals by the server: one clear line, exit 1.
    assert_clean_failure(run_cli("--url", url, "learn", "no-such-model", "train.csv", "--target", "approval",
                                 cwd=work), 1, "No model named 'no-such-model'", "404")
    assert_clean_failure(run_cli("--url", url, "upload", "model.pkl", "--flavor", "sideways", cwd=work), 1,
                         "Unknown flavor 'sideways'", "400")
    bad_rows = [{**learn_rows[0][0], "approval": 40.0}, {**learn_rows[1][0], "approval": "abc"}]
    write_csv(work / "bad.csv", bad_rows, columns)
    line = assert_clean_failure(run_cli("--url", url, "learn", "cli-prices", "bad.csv", "--target", "approval",
                                        cwd=work), 1, "bad.csv, line 3", "must be a finite number, not 'abc'")
    assert "1 examples learned before it, none after it" in line
    skipped = run_cli("--url", url, "learn", "cli-prices", "bad.csv", "--target", "approval", "--skip-errors",
                      cwd=work)
    assert skipped.returncode == 0 and "learned: 1\n" in skipped.stdout and "failed: 1\n" in skipped.stdout
    assert "line 3" in skipped.stderr and "Traceback" not in skipped.stderr
    # Each time the batch was refused whole and its first row sent again, as a batch of one.
    assert json.loads(cli("stats", "cli-prices").stdout)["learn"]["n_calls"] == 3 + 1 + 1

    # delete
    assert json.loads(cli("delete", generated).stdout)["model"] == generated
    assert sorted(json.loads(cli("models").stdout)["models"]) == ["cli-clusters", "cli-phishing", "cli-prices"]
    assert_clean_failure(run_cli("--url", url, "metrics", generated, cwd=work), 1, "404")


@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "data.csv").write_text("x,y\n1,2\n")
    (tmp_path / "data.txt").write_text("x,y\n1,2\n")
    (tmp_path / "bad.jsonl").write_text('{"x": 1, "y": 2}\n[1, 2]\n')
    return tmp_path


@pytest.mark.parametrize(("args", "phrase"), [
    ([], "required: COMMAND"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["learn", "m"], "required: FILE"),
    (["predict", "m"], "one of the arguments --features --file is required"),
    (["predict", "m", "--features", "{not json"], "--features is not JSON"),
    (["predict", "m", "--features", "[1, 2]"], "must be a JSON object"),
    (["learn", "m", "missing.csv", "--target", "y"], "cannot read missing.csv"),
    (["learn", "m", "data.txt", "--target", "y"], "cannot tell the format of data.txt"),
    (["learn", "m", "data.csv", "--target", "price"], "has no column 'price' (columns: x, y)"),
    (["learn", "m", "bad.jsonl", "--target", "y"], "bad.jsonl, line 2: not a JSON object"),
    (["learn", "m", "data.csv", "--target", "y", "--target-type", "bool"], "not a boolean"),
    (["upload", "missing.pkl", "--flavor", "regression"], "cannot read missing.pkl"),
    (["upload", "data.csv"], "--flavor"),
    (["--timeout", "soon", "models"], "invalid float value: 'soon'"),
    (["--timeout", "0", "models"], "--timeout must be a positive number"),
    (["stream", "sideways"], "invalid choice: 'sideways'"),
])
def test_bad_arguments_exit_2_with_one_line(inputs, args, phrase):
    # A closed port: none of these may get as far as calling a server (that would exit 1).
    result = run_cli("--url", f"http://127.0.0.1:{free_port()}", *args, cwd=inputs)
    assert_clean_failure(result, 2, phrase)


def test_a_url_that_is_not_http_is_refused(inputs):
    assert_clean_failure(run_cli("--url", "ftp://example", "models", cwd=inputs), 2, "--url must start with http")


def test_an_unreachable_server_exits_1_with_one_line(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    result = run_cli("--url", url, "--retries", "0", "--timeout", "1", "models", cwd=tmp_path)
    assert_clean_failure(result, 1, f"Cannot reach {url}/api/models/", "refused")


def test_help_and_version(tmp_path):
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0 and "learn" in result.stdout and "stream" in result.stdout
    result = run_cli("learn", "--help", cwd=tmp_path)
    assert result.returncode == 0 and "--target COLUMN" in result.stdout
    assert ENTRY_POINT.exists(), "pip install -e ./riverapi installs the riverapi command"
    result = run_cli("--version", cwd=tmp_path, entry_point=True)
    assert (result.returncode, result.stdout.strip()) == (0, "riverapi 1.0.0.dev0")


class CannedServer:
    """A local server answering every request with one status, headers and JSON body."""

    def __init__(self, status: int, body: dict, headers: dict | None = None):
        canned = (status, json.dumps(body).encode(), headers or {})

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def answer(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, payload, extra = canned
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in extra.items():
                    self.send_header(name, value.replace("{origin}", origin))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = answer

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        origin = self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> CannedServer:
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_server_asking_for_credentials_gets_the_commands_own_hint(tmp_path):
    """The command has no user or token options: its hint names the environment variables only."""
    challenge = {"WWW-Authenticate": 'Bearer realm="{origin}/api/auth/token",service="{origin}"'}
    with CannedServer(401, {"message": "Authentication credentials were not provided."}, challenge) as server:
        line = assert_clean_failure(run_cli("--url", server.url, "models", cwd=tmp_path), 1,
                                    "export RIVER_ML_USER=<user> RIVER_ML_TOKEN=<API token>", "river_token")
    assert "user=" not in line and "Client" not in line


def test_a_refused_boolean_word_target_hints_at_target_type_bool(tmp_path):
    """A binary CSV's true/false column is text unless --target-type bool says otherwise."""
    write_csv(tmp_path / "mail.csv", [{"links": 3, "spam": "true"}], ["links", "spam"])
    refusal = {"message": "The model raised on this input (ValueError: invalid literal for int() with base 10: "
                          "'true'); it was left unchanged."}
    with CannedServer(400, refusal) as server:
        assert_clean_failure(run_cli("--url", server.url, "learn", "spam", "mail.csv", "--target", "spam",
                                     cwd=tmp_path), 1, "mail.csv, line 2", "--target-type bool")
        # A numeric target refused for another reason gets no such hint.
        write_csv(tmp_path / "prices.csv", [{"rooms": 3, "price": "abc"}], ["rooms", "price"])
        line = assert_clean_failure(run_cli("--url", server.url, "learn", "p", "prices.csv", "--target", "price",
                                            cwd=tmp_path), 1)
        assert "--target-type" not in line


def test_stream_prints_events_as_json_lines(tmp_path):
    """Against a local event-stream server (the real server's streams come later): two events,
    a drop, a reconnection with Last-Event-ID, one more event, then 204 (the end)."""
    seen_ids = []
    bodies = [
        b"retry: 10\nid: 1\nevent: learn\ndata: {\"model\": \"m\"}\n\nid: 2\nevent: predict\ndata: 0.5\n\n",
        b"id: 3\nevent: label\ndata: text\n\n",
    ]

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            seen_ids.append((self.path, self.headers.get("Last-Event-ID")))
            if not bodies:
                self.send_response(204)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            self.wfile.write(bodies.pop(0))

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        result = run_cli("--url", f"http://127.0.0.1:{httpd.server_address[1]}", "stream", "metrics", cwd=tmp_path,
                         timeout=30)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert result.returncode == 0, result.stderr
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"event": "learn", "id": "1", "data": {"model": "m"}},
        {"event": "predict", "id": "2", "data": 0.5},
        {"event": "label", "id": "3", "data": "text"},
    ]
    assert seen_ids == [("/api/stream/metrics/", None), ("/api/stream/metrics/", "2"), ("/api/stream/metrics/", "3")]
