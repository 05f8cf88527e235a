"""``manage.py demo``: serve the example site under gunicorn (uvicorn workers, the ASGI app, as
``make serve`` does) and stream river's datasets into it.

Three models are uploaded over HTTP (a regressor, a binary and a multiclass classifier), then
each gets one example after another, as a real client would send them: ``POST /api/predict/``
with the features, then ``POST /api/label/`` with the identifier and the true label, so every
metric is a progressive-validation score. Open the printed URL to watch the dashboard.

    python manage.py demo                      # serve on 127.0.0.1:8000 and feed forever
    python manage.py demo --limit 100          # stop after 100 examples per model
    python manage.py demo --no-server --port 8000   # feed a server that is already running
    python manage.py demo --workers 4 --rate 50     # gunicorn workers; examples per second per model

Only river's bundled datasets are used (nothing is downloaded). Ctrl-C or SIGTERM stops the
feeder, then the server.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from django_river_ml.settings import river_settings

# example_project/ (the directory holding manage.py): gunicorn runs from there.
PROJECT_DIR = Path(__file__).resolve().parents[3]
HOST = "127.0.0.1"
SERVER_START_TIMEOUT = 60.0
PROGRESS_EVERY = 3.0
MAX_CONSECUTIVE_ERRORS = 25


def open_in_browser(url: str) -> None:
    """Open the dashboard where a browser can show it: a desktop session, or the one $BROWSER names.

    On a server without a display, Python's webbrowser would run a text browser (lynx, w3m) in
    the foreground and the demo would stop feeding: there the banner's URL is enough.
    """
    import webbrowser

    graphical = sys.platform in ("darwin", "win32") or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    if graphical or os.environ.get("BROWSER"):
        try:
            webbrowser.open(url)
        except webbrowser.Error:
            pass


class Stop(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM arrived: stop feeding, then stop the server."""


@dataclass
class DemoModel:
    name: str
    flavor: str
    description: str
    make: Callable[[], Any]
    dataset: Callable[[], Any]
    metric: str  # the main metric, shown in progress lines
    sent: int = 0
    errors: int = 0
    stream: Iterator = field(default=None, repr=False)

    def examples(self) -> Iterator[tuple[dict, Any]]:
        """The dataset, again and again (it ends only if the dataset is empty)."""
        while True:
            empty = True
            for x, y in self.dataset():
                empty = False
                yield x, y
            if empty:
                return


def demo_models() -> list[DemoModel]:
    from river import datasets, linear_model, multiclass, preprocessing

    return [
        DemoModel(
            "demo-regression", "regression", "StandardScaler | LinearRegression on TrumpApproval",
            lambda: preprocessing.StandardScaler() | linear_model.LinearRegression(),
            datasets.TrumpApproval, "MAE",
        ),
        DemoModel(
            "demo-binary", "binary", "StandardScaler | LogisticRegression on Phishing",
            lambda: preprocessing.StandardScaler() | linear_model.LogisticRegression(),
            datasets.Phishing, "Accuracy",
        ),
        DemoModel(
            "demo-multiclass", "multiclass",
            "StandardScaler | OneVsRestClassifier(LogisticRegression) on ImageSegments",
            lambda: preprocessing.StandardScaler() | multiclass.OneVsRestClassifier(linear_model.LogisticRegression()),
            datasets.ImageSegments, "Accuracy",
        ),
    ]


# Routes the demo server protects. Models, a model's parameters (the `model` route: its uploads and
# deletes still need a credential), metrics, stats, the two live streams (`stream_events`,
# `stream_metrics`), the dashboard (`dashboard`), service info, the schema and its docs page stay
# open, so the dashboard and every link the demo prints work in a browser without a login.
DEMO_PROTECTED_ROUTES = ("learn", "predict", "label", "model_upload", "model_delete", "model_download",
                         "model_access")


def demo_token() -> str:
    """The API token of the user "demo" (created on first use)."""
    from django.core.management import call_command
    from io import StringIO

    out = StringIO()
    call_command("river_token", "demo", "--create-user", stdout=out)
    return out.getvalue().strip()


def format_metric(name: str, value: Any) -> str:
    if value is None:
        return f"{name} -"
    if name in ("Accuracy", "Precision", "Recall", "F1") or name.startswith(("Macro", "Micro")):
        return f"{name} {value * 100:.1f}%"
    return f"{name} {value:.3f}" if isinstance(value, (int, float)) else f"{name} {value}"


def port_is_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def die_with_parent() -> None:
    """In the gunicorn child (Linux): get SIGTERM if the demo process dies without cleaning up."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort, not available everywhere
        pass


class Command(BaseCommand):
    help = "Serve the example site under gunicorn and feed three river models with river's datasets."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=8000, help="Port on 127.0.0.1 (default 8000).")
        parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes (default 2).")
        parser.add_argument("--rate", type=float, default=20.0,
                            help="Examples per second for each model (default 20).")
        parser.add_argument("--limit", type=int, default=None,
                            help="Stop after this many examples per model (default: run until stopped).")
        parser.add_argument("--no-browser", action="store_true",
                            help="Do not open the dashboard in a web browser (opened only where one can show: "
                                 "a desktop session, or $BROWSER).")
        parser.add_argument("--no-server", action="store_true",
                            help="Do not start gunicorn; feed the server already listening on --port.")

    # Entry point ----------------------------------------------------------------

    def handle(self, *args, port: int, workers: int, rate: float, limit: int | None, no_server: bool,
               no_browser: bool = False, **options):
        import requests

        if rate <= 0:
            raise CommandError("--rate must be positive.")
        if limit is not None and limit < 0:
            raise CommandError("--limit must be 0 or more.")
        if workers < 1:
            raise CommandError("--workers must be at least 1.")

        self.base = f"http://{HOST}:{port}"
        prefix = river_settings.URL_PREFIX.strip("/")
        self.api = f"{self.base}/{prefix}/" if prefix else f"{self.base}/"
        self.session = requests.Session()
        self.token = None if river_settings.DISABLE_AUTHENTICATION else demo_token()
        if self.token:
            self.session.headers["Authorization"] = f"Token {self.token}"
        self.server: subprocess.Popen | None = None
        self.stopping = False

        models: list[DemoModel] = []
        # SIGINT too: a demo started in the background (where SIGINT is ignored) still stops on `kill -INT`.
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            if no_server:
                if not self._answers():
                    raise CommandError(f"No River API answers at {self.api} (start one, or drop --no-server).")
                self.say(f"Feeding the server already running at {self.base}/")
            else:
                self.start_server(port, workers)
            models = demo_models()
            self.upload(models)
            self.banner(models, rate, limit)
            if not no_browser:
                open_in_browser(f"{self.api}dashboard/")
            self.feed(models, rate, limit)
            self.summary(models)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM (Stop)
            self.stopping = True
            self.say("\nStopping...")
            if any(model.sent for model in models):
                try:
                    self.summary(models)
                except (Exception, KeyboardInterrupt):  # noqa: BLE001 - the server may be gone already
                    pass
        finally:
            self.stopping = True
            try:
                self.session.close()
                self.stop_server()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    def _on_signal(self, signum, frame):
        if not self.stopping:  # once shutting down, a second Ctrl-C or SIGTERM changes nothing
            self.stopping = True
            raise Stop()

    # Output -----------------------------------------------------------------------

    def say(self, message: str = "", style=None) -> None:
        self.stdout.write(style(message) if style else message)
        self.stdout.flush()

    def banner(self, models: list[DemoModel], rate: float, limit: int | None) -> None:
        ok = self.style.SUCCESS
        first = models[0].name
        self.say()
        self.say("django-river-ml demo is running", ok)
        self.say(f"  Open the dashboard:  {self.api}dashboard/", ok)
        self.say(f"  API root:            {self.api}")
        self.say(f"  Models:              {self.api}models/")
        self.say(f"  Metrics of a model:  {self.api}metrics/?model={first}")
        self.say(f"  Stats of a model:    {self.api}stats/?model={first}")
        self.say(f"  Model parameters:    {self.api}model/{first}/")
        for model in models:
            self.say(f"  {model.name:<16} {model.flavor:<10} {model.description}")
        if self.token:
            self.say(f"  Learning, predicting, labelling, uploads, downloads and deletes need a credential; "
                     f"the demo user's API token is {self.token}")
            self.say(f"  (any user's: python manage.py river_token USER --create-user). For example:")
            self.say(f"    curl -H 'Authorization: Token {self.token}' -H 'Content-Type: application/json' \\")
            self.say(f"      -d '{{\"model\": \"{first}\", \"features\": {{}}}}' {self.api}predict/")
        amount = f"{limit} examples per model" if limit is not None else "forever"
        self.say(f"Feeding {rate:g} examples/s per model (predict, then label), {amount}. "
                 "Press Ctrl-C to stop.")
        self.say()

    def progress(self, models: list[DemoModel], started: float) -> None:
        parts = []
        for model in models:
            value = self.metrics(model.name).get(model.metric)
            parts.append(f"{model.name} {format_metric(model.metric, value)}")
        elapsed = time.monotonic() - started
        sent = models[0].sent if models else 0
        self.say(f"[{elapsed:6.1f}s] n={sent:<6} " + " | ".join(parts))

    def summary(self, models: list[DemoModel]) -> None:
        self.say("Final metrics:")
        for model in models:
            metrics = self.metrics(model.name)
            stats = self.get("stats/", model.name)
            shown = ", ".join(format_metric(k, v) for k, v in metrics.items())
            self.say(f"  {model.name}: predicted {stats['predict']['n_calls']}, "
                     f"labelled {stats['label']['n_calls']}, errors {model.errors}; {shown}")

    # Server -----------------------------------------------------------------------

    def _answers(self) -> bool:
        import requests

        try:
            return self.session.get(self.api, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def start_server(self, port: int, workers: int) -> None:
        if port_is_open(port):
            raise CommandError(f"Something already listens on {HOST}:{port}. Choose another --port, "
                               "or add --no-server to feed that server.")
        gunicorn = Path(sys.executable).parent / "gunicorn"
        command = [str(gunicorn)] if gunicorn.exists() else [sys.executable, "-m", "gunicorn"]
        # ASGI, as `make serve` (see the Makefile): the live streams hold connections, not workers.
        command += ["example_project.asgi:application", "-k", "django_river_ml.worker.UvicornWorker", "--forwarded-allow-ips=",
                    "--workers", str(workers), "--bind", f"{HOST}:{port}", "--graceful-timeout", "5",
                    "--log-level", "warning"]
        env = dict(os.environ)
        env.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")
        env.setdefault("PYTHONHASHSEED", "0")
        # Writes need the demo user's token; reads stay open so the dashboard shows without a login.
        env.setdefault("DJANGO_RIVER_ML_AUTHENTICATED_VIEWS", ",".join(DEMO_PROTECTED_ROUTES))
        self.say(f"Starting gunicorn with {workers} workers on {HOST}:{port} ...")
        # Its own session: Ctrl-C reaches only this command, which then stops the feeder before the server.
        self.server = subprocess.Popen(command, cwd=PROJECT_DIR, env=env, start_new_session=True,
                                       preexec_fn=die_with_parent if sys.platform.startswith("linux") else None)
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while not self._answers():
            if self.server.poll() is not None:
                code = self.server.returncode
                self.server = None
                raise CommandError(f"gunicorn exited with code {code} before it served {self.api}.")
            if time.monotonic() > deadline:
                raise CommandError(f"gunicorn did not answer on {self.api} within {SERVER_START_TIMEOUT:.0f}s.")
            time.sleep(0.1)

    def stop_server(self) -> None:
        server, self.server = self.server, None
        if server is None or server.poll() is not None:
            return
        self.say("Stopping gunicorn ...")
        try:
            server.terminate()  # the master stops its workers gracefully
            server.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)  # gunicorn runs in its own process group
            server.wait(5)

    def check_server(self) -> None:
        if self.server is not None and self.server.poll() is not None:
            code = self.server.returncode
            self.server = None
            raise CommandError(f"gunicorn stopped unexpectedly (exit code {code}).")

    # HTTP -----------------------------------------------------------------------

    def get(self, route: str, model: str) -> dict:
        response = self.session.get(self.api + route, params={"model": model}, timeout=10)
        response.raise_for_status()
        return response.json()

    def metrics(self, name: str) -> dict:
        try:
            return self.get("metrics/", name)
        except Exception:  # noqa: BLE001 - progress lines must not stop the feeder
            return {}

    def upload(self, models: list[DemoModel]) -> None:
        import dill

        for model in models:
            response = self.session.post(f"{self.api}model/{model.flavor}/{model.name}/",
                                         data=dill.dumps(model.make()),
                                         headers={"Content-Type": "application/octet-stream"}, timeout=30)
            if response.status_code != 201:
                raise CommandError(f"Uploading {model.name} failed: {response.status_code} {response.text[:300]}")
            model.stream = model.examples()
        self.say(f"Uploaded {', '.join(m.name for m in models)} (replacing any earlier models of these names).")

    def send(self, model: DemoModel, x: dict, y: Any) -> None:
        """Predict, then give the true label: the server scores the prediction, then learns."""
        response = self.session.post(self.api + "predict/", json={"model": model.name, "features": x}, timeout=30)
        if response.status_code not in (200, 201):
            raise RuntimeError(f"predict answered {response.status_code}: {response.text[:200]}")
        identifier = response.json().get("identifier")
        if identifier is None:
            # The site makes no identifiers (GENERATE_IDENTIFIERS off): learn directly instead.
            response = self.session.post(self.api + "learn/", timeout=30,
                                         json={"model": model.name, "features": x, "ground_truth": y})
            if response.status_code != 201:
                raise RuntimeError(f"learn answered {response.status_code}: {response.text[:200]}")
            return
        response = self.session.post(self.api + "label/", timeout=30,
                                     json={"model": model.name, "identifier": identifier, "label": y})
        if response.status_code != 200:
            raise RuntimeError(f"label answered {response.status_code}: {response.text[:200]}")

    def feed(self, models: list[DemoModel], rate: float, limit: int | None) -> None:
        import requests

        interval = 1.0 / rate
        started = time.monotonic()
        next_tick = started
        next_progress = started + PROGRESS_EVERY
        consecutive_errors = 0
        active = [m for m in models if limit is None or m.sent < limit]
        while True:
            active = [m for m in active if limit is None or m.sent < limit]
            if not active:
                break
            for model in active:
                try:
                    x, y = next(model.stream)
                except StopIteration:
                    raise CommandError(f"The dataset of {model.name} is empty.") from None
                try:
                    self.send(model, x, y)
                    consecutive_errors = 0
                except (requests.RequestException, RuntimeError, ValueError) as error:
                    self.check_server()
                    model.errors += 1
                    consecutive_errors += 1
                    self.say(f"{model.name}: {error}", self.style.WARNING)
                    if consecutive_errors >= MAX_CONSECUTIVE_ERRORS:
                        raise CommandError(f"{consecutive_errors} requests in a row failed; giving up.") from error
                    if isinstance(error, requests.ConnectionError):
                        time.sleep(1.0)
                model.sent += 1
            now = time.monotonic()
            if now >= next_progress:
                self.progress(models, started)
                next_progress = now + PROGRESS_EVERY
            # Pace the ticks; when far behind (a slow server), do not try to catch up in a burst.
            next_tick = max(next_tick + interval, now - 1.0)
            delay = next_tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        self.progress(models, started)
