"""`make demo` (the server, and `manage.py demo`, a riverapi feeder of river's datasets) and the example
site's dashboard page."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from django.test import Client

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PROJECT = ROOT / "example_project"
LIMIT = 30
# name -> (main metric, every metric its flavor keeps)
DEMO_MODELS = {
    "demo-binary": ("Accuracy", {"Accuracy", "LogLoss", "Precision", "Recall", "F1"}),
    "demo-multiclass": ("Accuracy", {"Accuracy", "CrossEntropy", "MacroPrecision", "MacroRecall", "MacroF1",
                                     "MicroPrecision", "MicroRecall", "MicroF1"}),
    "demo-regression": ("MAE", {"MAE", "RMSE", "SMAPE"}),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def site_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_RIVER_ML_")}
    env.update({
        "DJANGO_SETTINGS_MODULE": "example_project.settings",
        "DJANGO_RIVER_ML_DATA_DIR": str(tmp_path / "data"),
        "DJANGO_DATABASE_PATH": str(tmp_path / "db.sqlite3"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1",
    })
    return env


def manage(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=EXAMPLE_PROJECT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def final_line(output: str, name: str) -> str:
    found = re.search(rf"^  {re.escape(name)}: predicted .*$", output, flags=re.MULTILINE)
    assert found, f"no final metrics line for {name} in:\n{output}"
    return found.group(0)


def check_final_lines(output: str) -> None:
    for name, (main, _) in DEMO_MODELS.items():
        line = final_line(output, name)
        assert line.startswith(f"  {name}: predicted {LIMIT}, labelled {LIMIT}, errors 0; "), line
        assert re.search(rf"\b{main} \d+\.\d+%?", line), line


def dashboard_config(html: str) -> dict:
    """What the page's script is given (the routes it reads), from its json_script element."""
    found = re.search(r'<script id="river-dashboard-config" type="application/json">(.*?)</script>', html, re.S)
    return json.loads(found.group(1))


def test_the_site_leads_to_the_dashboard_page(settings):
    settings.DJANGO_RIVER_ML = {**getattr(settings, "DJANGO_RIVER_ML", {}), "DISABLE_AUTHENTICATION": True}
    assert Client().get("/")["Location"] == "/api/dashboard/"
    response = Client().get("/api/dashboard/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    assert "live dashboard" in html
    assert 'id="models"' in html
    # The page finds the API through the site's urls (default prefix "api").
    urls = dashboard_config(html)["urls"]
    for route in ("/api/models/", "/api/metrics/", "/api/stats/", "/api/stream/events/", "/api/stream/metrics/"):
        assert route in urls.values()
    # Self-contained: no external scripts, styles or fonts.
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)


def make_demo(port: int, env: dict[str, str], *args: str, **popen) -> subprocess.Popen:
    """`make demo` as a user runs it (the virtualenv this test runs in; nothing installed)."""
    venv = os.path.relpath(sys.prefix, ROOT)
    return subprocess.Popen(["make", "--no-print-directory", "-o", "install", "demo", f"VENV={venv}", f"PORT={port}",
                             "WORKERS=2", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)


def assert_nothing_answers(port: int) -> None:
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/api/", timeout=5)


def check_stored(env: dict[str, str], output: str, settings) -> None:
    """What the server stored outlives it, and the printed numbers are the stored ones."""
    settings.DJANGO_RIVER_ML = {"DATA_DIR": env["DJANGO_RIVER_ML_DATA_DIR"], "STORAGE_BACKEND": "shelve"}
    from django_river_ml.client import DjangoClient

    client = DjangoClient()
    assert client.models() == sorted(DEMO_MODELS)
    for name, (main, metric_names) in DEMO_MODELS.items():
        stats = client.stats(name)
        line = final_line(output, name)
        assert f"predicted {stats['predict']['n_calls']}, labelled {stats['label']['n_calls']}," in line
        metrics = client.metrics(name)
        assert set(metrics) == metric_names
        value = metrics[main]
        shown = f"{value * 100:.1f}%" if main == "Accuracy" else f"{value:.3f}"
        assert f"{main} {shown}" in line


@pytest.mark.live
def test_make_demo_serves_feeds_and_stops(tmp_path, settings):
    env = site_env(tmp_path)
    # The browser the demo opens the dashboard in: a command that notes the URL it is given.
    opened = tmp_path / "opened.txt"
    env["BROWSER"] = f"{sys.executable} -c \"import sys; open({str(opened)!r}, 'a').write(sys.argv[1])\" %s"
    port = free_port()

    demo = make_demo(port, env, f"DEMO_ARGS=--limit {LIMIT} --rate 200")
    output = demo.communicate(timeout=300)[0]

    assert demo.returncode == 0, output
    assert f"Open the dashboard:  http://127.0.0.1:{port}/api/dashboard/\n" in output
    assert opened.read_text() == f"http://127.0.0.1:{port}/api/dashboard/"
    assert f"http://127.0.0.1:{port}/api/models/" in output
    check_final_lines(output)
    assert "Stopping the server" in output
    assert "Unauthorized" not in output  # the feeder sends the demo user's token from the start
    assert_nothing_answers(port)  # the server stopped with the feeder
    check_stored(env, output, settings)
    for name in DEMO_MODELS:
        assert f"  {name}: predicted {LIMIT}, labelled {LIMIT}," in output


@pytest.mark.live
def test_ctrl_c_stops_the_feeder_then_the_server(tmp_path, settings):
    env = site_env(tmp_path)
    port = free_port()
    # Its own process group, as a terminal's foreground job: Ctrl-C is SIGINT to the whole group.
    demo = make_demo(port, env, "DEMO_ARGS=--rate 50 --no-browser", start_new_session=True)
    seen = []
    for line in demo.stdout:
        seen.append(line)
        if line.startswith("[") and " n=" in line:  # a progress line: feeding
            break
    assert requests.get(f"http://127.0.0.1:{port}/api/", timeout=5).status_code == 200

    os.killpg(demo.pid, signal.SIGINT)

    output = "".join(seen) + demo.communicate(timeout=120)[0]
    assert "Stopping..." in output and "Final metrics:" in output, output
    for name in DEMO_MODELS:  # printed while the server still ran
        assert re.search(rf"^  {name}: predicted \d+, labelled \d+, errors 0; ", output, flags=re.MULTILINE), output
    assert "Stopping the server" in output
    assert_nothing_answers(port)
    check_stored(env, output, settings)


@pytest.mark.live
def test_the_demo_feeds_a_running_server(live_server_factory):
    server = live_server_factory("shelve", workers=2)

    # make demo does not start a second server on a busy port, nor feed the one there.
    refused = make_demo(server.port, server.env, f"DEMO_ARGS=--limit {LIMIT}")
    output = refused.communicate(timeout=120)[0]
    assert refused.returncode != 0
    assert f"Something already listens on 127.0.0.1:{server.port}" in output
    assert requests.get(f"{server.url}/api/models/", timeout=10).json() == {"models": []}

    result = manage("demo", "--port", str(server.port), "--limit", str(LIMIT), "--rate", "200", "--no-browser",
                    env=server.env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Open the dashboard:  {server.url}/api/dashboard/" in result.stdout
    check_final_lines(result.stdout)

    # The server keeps running after the feeder: inspect it the way the dashboard does.
    assert requests.get(f"{server.url}/api/models/", timeout=10).json() == {"models": sorted(DEMO_MODELS)}
    for name, (main, metric_names) in DEMO_MODELS.items():
        stats = requests.get(f"{server.url}/api/stats/", params={"model": name}, timeout=10).json()
        assert stats["predict"]["n_calls"] == LIMIT
        assert stats["label"]["n_calls"] == LIMIT
        assert stats["predict"]["mean_duration"] > 0 and stats["predict"]["mean_duration_human"]
        metrics = requests.get(f"{server.url}/api/metrics/", params={"model": name}, timeout=10).json()
        assert set(metrics) == metric_names
        assert isinstance(metrics[main], float)

    page = requests.get(f"{server.url}/", timeout=10)  # the site's root leads to the dashboard
    assert page.status_code == 200 and page.url == f"{server.url}/api/dashboard/"
    assert page.headers["Content-Type"].startswith("text/html")
    assert "live dashboard" in page.text


def test_the_feeder_stops_when_the_server_it_was_given_is_gone(tmp_path):
    finished = subprocess.Popen([sys.executable, "-c", "pass"])  # a process id that no longer runs
    finished.wait()
    result = manage("demo", "--port", str(free_port()), "--server-pid", str(finished.pid), "--wait", "30",
                    env=site_env(tmp_path), timeout=60)
    assert result.returncode != 0
    assert "The server stopped before it answered" in result.stderr


def test_the_feeder_goes_through_the_riverapi_client():
    """The demo is a client like any other: it speaks to the server only through riverapi."""
    source = (EXAMPLE_PROJECT / "example_project" / "management" / "commands" / "demo.py").read_text()
    assert "from riverapi.main import Client" in source
    assert "import requests" not in source and "subprocess" not in source and "gunicorn" not in source


def test_every_link_the_demo_prints_and_the_dashboard_shows_opens_without_a_login(settings, tmp_path):
    """make demo protects what changes models; what it prints, and the dashboard links to, must open in a
    browser (no credential), while learning, uploads and deletes still need one."""
    import io

    from django_river_ml.client import DjangoClient
    from example_project.management.commands.demo import DEMO_PROTECTED_ROUTES, Command, demo_models

    settings.DJANGO_RIVER_ML = {"DATA_DIR": str(tmp_path), "AUTHENTICATED_VIEWS": list(DEMO_PROTECTED_ROUTES)}
    models = demo_models()
    for model in models:
        DjangoClient().upload_model(model.make(), model.flavor, model_name=model.name)
    command = Command(stdout=io.StringIO())
    command.base, command.api, command.token = "http://127.0.0.1:8000", "http://127.0.0.1:8000/api/", "a-token"
    command.banner(models, 20.0, None)
    printed = re.findall(r"http://127\.0\.0\.1:8000(/\S*)", command.stdout.getvalue())
    page = Client().get("/api/dashboard/").content.decode()
    shown = [url.replace("__MODEL__", "demo-binary") for url in dashboard_config(page)["urls"].values()]
    assert len(printed) >= 6 and len(shown) >= 6, (printed, shown)

    browser = Client()
    streams = {"/api/stream/events/", "/api/stream/metrics/"}
    for path in {*printed, *shown} - {"/api/predict/"}:  # predict: the printed curl example, with its token
        response = browser.get(path, {"model": "demo-binary"} if path.endswith(("/metrics/", "/stats/")) else {})
        # The streams pass authentication, then say this test server is not ASGI (the demo's is).
        assert response.status_code == (501 if path in streams else 200), (path, response.status_code,
                                                                             response.content[:200])
    for method, path in [("post", "/api/learn/"), ("post", "/api/predict/"), ("post", "/api/model/binary/x/"),
                         ("post", "/api/model/binary/"), ("delete", "/api/model/demo-binary/"),
                         ("get", "/api/model/download/demo-binary/")]:
        assert getattr(browser, method)(path).status_code == 401, (method, path)
    assert DjangoClient().models() == sorted(model.name for model in models)
