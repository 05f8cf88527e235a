"""``manage.py demo``: feed river's datasets, through the riverapi client, to a River API server.

``make demo`` starts the server (as ``make serve`` does) and this feeder, and stops both on
Ctrl-C; the command itself starts no server. Three models are uploaded (a regressor, a binary and
a multiclass classifier), then each gets one example after another, as a real client sends them:
``predict`` with the features, then ``label`` with the identifier and the true label, so every
metric is a progressive-validation score. Open the printed URL to watch the dashboard.

    make demo                                  # server on 127.0.0.1:8000 and this feeder, until Ctrl-C
    make demo PORT=8001 DEMO_ARGS="--limit 100 --rate 50"
    python manage.py demo --port 8000          # feed a server that is already running
    python manage.py demo --limit 100 --rate 50     # 100 examples per model, 50 a second

Only river's bundled datasets are used (nothing is downloaded). Ctrl-C or SIGTERM stops the
feeder, which first prints the final metrics.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.core.management.base import BaseCommand, CommandError

HOST = "127.0.0.1"
SERVER_START_TIMEOUT = 60.0
PROGRESS_EVERY = 3.0
MAX_CONSECUTIVE_ERRORS = 25

# Routes the demo server protects (make demo gives them to the server as AUTHENTICATED_VIEWS). Models, a
# model's parameters (the `model` route: its uploads and deletes still need a credential), metrics, stats,
# the two live streams (`stream_events`, `stream_metrics`), the dashboard (`dashboard`), service info, the
# schema and its docs page stay open, so the dashboard and every link the demo prints work in a browser
# without a login.
DEMO_PROTECTED_ROUTES = ("learn", "predict", "label", "model_upload", "model_delete", "model_download",
                         "model_access")


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
    """Ctrl-C (SIGINT) or SIGTERM arrived: stop feeding."""


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


def demo_token() -> str:
    """The API token of the user "demo" (created on first use)."""
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("river_token", "demo", "--create-user", stdout=out)
    return out.getvalue().strip()


def format_metric(name: str, value: Any) -> str:
    if value is None:
        return f"{name} -"
    if name in ("Accuracy", "Precision", "Recall", "F1") or name.startswith(("Macro", "Micro")):
        return f"{name} {value * 100:.1f}%"
    return f"{name} {value:.3f}" if isinstance(value, (int, float)) else f"{name} {value}"


def process_is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


class Command(BaseCommand):
    help = "Feed three river models with river's datasets, through the riverapi client, to a running server."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=8000, help="The server's port on 127.0.0.1 (default 8000).")
        parser.add_argument("--rate", type=float, default=20.0,
                            help="Examples per second for each model (default 20).")
        parser.add_argument("--limit", type=int, default=None,
                            help="Stop after this many examples per model (default: run until stopped).")
        parser.add_argument("--no-browser", action="store_true",
                            help="Do not open the dashboard in a web browser (opened only where one can show: "
                                 "a desktop session, or $BROWSER).")
        parser.add_argument("--wait", type=float, default=SERVER_START_TIMEOUT,
                            help=f"Seconds to wait for the server to answer (default {SERVER_START_TIMEOUT:g}).")
        parser.add_argument("--server-pid", type=int, default=None,
                            help="The server's process (make demo gives it): stop when it is gone.")

    # Entry point ----------------------------------------------------------------

    def handle(self, *args, port: int, rate: float, limit: int | None, no_browser: bool = False,
               wait: float = SERVER_START_TIMEOUT, server_pid: int | None = None, **options):
        from django_river_ml.settings import river_settings
        from riverapi.main import Client

        if rate <= 0:
            raise CommandError("--rate must be positive.")
        if limit is not None and limit < 0:
            raise CommandError("--limit must be 0 or more.")

        self.base = f"http://{HOST}:{port}"
        prefix = river_settings.URL_PREFIX.strip("/")
        self.api = f"{self.base}/{prefix}/" if prefix else f"{self.base}/"
        self.server_pid = server_pid
        self.stopping = False
        self.token = None
        # Quiet: the feeder prints its own progress. Retries only for reads, as the client does.
        self.client = Client(self.base, quiet=True, prefix=prefix, timeout=30)

        models: list[DemoModel] = []
        # SIGINT too: a demo started in the background (where SIGINT is ignored) still stops on `kill -INT`.
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.wait_for_server(wait)
            if not river_settings.DISABLE_AUTHENTICATION:
                self.token = demo_token()
                self.client.set_header("Authorization", f"Token {self.token}")  # no 401 to sign in first
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
                self.client.close()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    def _on_signal(self, signum, frame):
        if not self.stopping:  # once shutting down, a second Ctrl-C or SIGTERM changes nothing
            self.stopping = True
            raise Stop()

    # The server -----------------------------------------------------------------------

    def server_is_gone(self) -> bool:
        return self.server_pid is not None and not process_is_running(self.server_pid)

    def wait_for_server(self, timeout: float) -> None:
        from riverapi.exceptions import RiverAPIError

        from riverapi.main import Client

        probe = Client(self.client.baseurl, quiet=True, prefix=self.client.prefix, timeout=2, retries=0)
        deadline = time.monotonic() + timeout
        while True:
            if self.server_is_gone():
                raise CommandError(f"The server stopped before it answered on {self.api} (its messages are above).")
            try:
                probe.info()
                probe.close()
                return
            except RiverAPIError as error:
                if time.monotonic() > deadline:
                    raise CommandError(f"No River API answers at {self.api} ({error.message}). Start one "
                                       "(make serve), or run make demo, which starts one.") from None
            time.sleep(0.2)

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
            self.say("  (any user's: python manage.py river_token USER --create-user). For example:")
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
            stats = self.client.stats(model.name)
            shown = ", ".join(format_metric(k, v) for k, v in metrics.items())
            self.say(f"  {model.name}: predicted {stats['predict']['n_calls']}, "
                     f"labelled {stats['label']['n_calls']}, errors {model.errors}; {shown}")

    # Feeding ----------------------------------------------------------------------

    def metrics(self, name: str) -> dict:
        try:
            return self.client.metrics(name)
        except Exception:  # noqa: BLE001 - progress lines must not stop the feeder
            return {}

    def upload(self, models: list[DemoModel]) -> None:
        from riverapi.exceptions import RiverAPIError

        for model in models:
            try:
                self.client.upload_model(model.make(), model.flavor, model_name=model.name)
            except RiverAPIError as error:
                raise CommandError(f"Uploading {model.name} failed: {error.status_code} {error.message}") from None
            model.stream = model.examples()
        self.say(f"Uploaded {', '.join(m.name for m in models)} (replacing any earlier models of these names).")

    def send(self, model: DemoModel, x: dict, y: Any) -> None:
        """Predict, then give the true label: the server scores the prediction, then learns."""
        identifier = self.client.predict(model.name, x).get("identifier")
        if identifier is None:  # the site makes no identifiers (GENERATE_IDENTIFIERS off): learn directly
            self.client.learn(model.name, x, y)
        else:
            self.client.label(y, identifier, model.name)

    def feed(self, models: list[DemoModel], rate: float, limit: int | None) -> None:
        from riverapi.exceptions import RiverAPIError, ServerUnavailable

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
                except RiverAPIError as error:
                    if self.server_is_gone():
                        raise CommandError("The server stopped (its messages are above).") from None
                    model.errors += 1
                    consecutive_errors += 1
                    self.say(f"{model.name}: {type(error).__name__} {error.status_code or ''} {error.message}",
                             self.style.WARNING)
                    if consecutive_errors >= MAX_CONSECUTIVE_ERRORS:
                        raise CommandError(f"{consecutive_errors} requests in a row failed; giving up.") from error
                    if isinstance(error, ServerUnavailable):
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
