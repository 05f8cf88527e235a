"""What the benchmarks share: their settings (environment knobs), result rows, the servers, the client
processes that load them, the rows and models they use, and the in-process floors."""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import pickle
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT / "example_project") not in sys.path:  # liveserver.py lives beside manage.py
    sys.path.append(str(ROOT / "example_project"))

from liveserver import LiveServer, site_environment  # noqa: E402

SMALL = "StandardScaler | LinearRegression"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _number(name: str, full, quick, kind=int):
    value = os.environ.get(name)
    if value:
        return kind(value)
    return quick if _flag("BENCH_QUICK") else full


def serve_workers() -> int:
    """``make serve``'s worker count: $BENCH_WORKERS (``make bench`` passes its WORKERS), else what the
    Makefile's WORKERS evaluates to, else the number of cores."""
    if os.environ.get("BENCH_WORKERS"):
        return int(os.environ["BENCH_WORKERS"])
    try:
        answer = subprocess.run(["make", "--no-print-directory", "-s", "-f", "Makefile", "-f", "-", "bench-print-workers"],
                                input="bench-print-workers:\n\t@echo $(WORKERS)\n", cwd=ROOT, capture_output=True,
                                text=True, timeout=30)
        return int(answer.stdout.strip().splitlines()[-1])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        pass
    match = re.search(r"^WORKERS\s*\??=\s*(\d+)\s*$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    return int(match.group(1)) if match else (os.cpu_count() or 2)


@dataclass
class Config:
    """The knobs (environment variables), each with its full-run and BENCH_QUICK=1 default."""

    quick: bool = field(default_factory=lambda: _flag("BENCH_QUICK"))
    workers: int = field(default_factory=serve_workers)                                   # BENCH_WORKERS
    clients: int = field(default_factory=lambda: _number("BENCH_CLIENTS", 4, 4))           # client processes
    seconds: float = field(default_factory=lambda: _number("BENCH_SECONDS", 3.0, 1.5, float))  # per measurement
    rounds: int = field(default_factory=lambda: _number("BENCH_ROUNDS", 3, 1))             # median of
    batch_rows: int = field(default_factory=lambda: _number("BENCH_BATCH_ROWS", 1000, 1000))
    model_bytes: int = field(default_factory=lambda: _number("BENCH_MODEL_BYTES", 100_000, 100_000))
    models: int = field(default_factory=lambda: _number("BENCH_MODELS", 1000, 200))      # many models
    band: int = field(default_factory=lambda: _number("BENCH_BAND", 100, 50))             # models per band
    pairs: int = field(default_factory=lambda: _number("BENCH_PAIRS", 3, 2))              # learn+predict per model
    sandboxed: int = field(default_factory=lambda: _number("BENCH_SANDBOXED", 200, 20))   # of them via riverapi
    many_workers: int = field(default_factory=lambda: _number("BENCH_MANY_WORKERS", 2, 2))
    # The many-models server's REPLICA_MEMORY_BYTES: reached within the first half of the models, so the
    # second half shows whether memory stays bounded.
    many_replica_bytes: int = field(default_factory=lambda: _number("BENCH_MANY_REPLICA_BYTES", 128 << 20, 32 << 20))
    subscribers: int = field(default_factory=lambda: _number("BENCH_SUBSCRIBERS", 100, 100))
    learns: int = field(default_factory=lambda: _number("BENCH_LEARNS", 200, 100))         # stream fan-out
    uploads: int = field(default_factory=lambda: _number("BENCH_UPLOADS", 10, 3))          # upload latency rounds
    only: tuple = field(default_factory=lambda: tuple(
        name.strip() for name in os.environ.get("BENCH_ONLY", "").split(",") if name.strip()))
    output: Path = field(default_factory=lambda: Path(os.environ.get("BENCH_OUTPUT") or ROOT / "bench-results"))

    def describe(self) -> dict:
        return {key: (str(value) if isinstance(value, Path) else value) for key, value in asdict(self).items()}


# Result rows


@dataclass
class Row:
    """One figure: ``value`` in ``unit``, with the floor it is compared to (``ratio`` = value / floor) and
    the goal the issue sets, if any (``met``: whether this run reached it)."""

    name: str
    value: float
    unit: str
    floor: str = ""
    floor_value: float | None = None
    goal: str = ""
    met: bool | None = None
    note: str = ""
    benchmark: str = ""

    @property
    def ratio(self) -> float | None:
        if self.floor_value in (None, 0) or self.value is None:
            return None
        return self.value / self.floor_value

    def as_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


def ratio_goal(row: Row, at_least: float) -> Row:
    """The goal ``ratio >= at_least``."""
    row.goal = f"≥ {at_least:g}×"
    row.met = row.ratio is not None and row.ratio >= at_least
    return row


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.1 or magnitude == 0:
        return f"{value:.2f}"
    return f"{value:.3g}"


COLUMNS = ("benchmark", "value", "unit", "floor", "floor value", "ratio", "goal", "met")


def table_cells(row: Row) -> list[str]:
    ratio = row.ratio
    met = "" if row.met is None else ("yes" if row.met else "NO")
    return [row.name, fmt(row.value), row.unit, row.floor, fmt(row.floor_value) if row.floor else "",
            f"{ratio:.3g}×" if ratio is not None else "", row.goal, met]


def text_table(rows: list[Row]) -> str:
    cells = [list(COLUMNS)] + [table_cells(row) for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    right = {1, 4, 5}
    lines = []
    for n, line in enumerate(cells):
        lines.append("  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                               for i, (cell, w) in enumerate(zip(line, widths))).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def row_notes(rows: list[Row]) -> list[str]:
    return [f"{row.name}: {row.note}" for row in rows if row.note]


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |",
             "|" + "|".join("---:" if i in (1, 4, 5) else "---" for i in range(len(COLUMNS))) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in table_cells(row)) + " |")
    return "\n".join(lines)


def machine() -> dict:
    import platform

    import django
    import river

    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "river": river.__version__, "django": django.__version__}


def write_results(rows: list[Row], config: Config, started: float, notes: list[str],
                  stem: str = "results") -> tuple[Path, Path]:
    config.output.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started))
    report = {"started": stamp, "seconds": round(time.time() - started, 1), "config": config.describe(),
              "machine": machine(), "rows": [row.as_dict() for row in rows], "notes": notes}
    json_path = config.output / f"{stem}.json"
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    md_path = config.output / f"{stem}.md"
    knobs = ", ".join(f"{key}={value}" for key, value in config.describe().items() if key not in ("output", "only"))
    md_path.write_text(
        f"# Benchmarks ({stamp})\n\n"
        f"`make bench` on {report['machine']['cpus']} cores, Python {report['machine']['python']}, "
        f"river {report['machine']['river']}, Django {report['machine']['django']}; "
        f"{report['seconds']:.0f} s. Ratio = value / floor, both measured in this run.\n\n"
        f"{markdown_table(rows)}\n\n"
        + "".join(f"- {note}\n" for note in [*row_notes(rows), *notes])
        + f"\nSettings: {knobs}.\n")
    return json_path, md_path


# Rows and models


@functools.cache
def trump_rows() -> list[tuple[dict, float]]:
    """TrumpApproval (1,001 rows, shipped with river): the rows of the throughput goal."""
    from river import datasets

    return [(dict(x), float(y)) for x, y in datasets.TrumpApproval()]


def small_model():
    from river import linear_model, preprocessing

    return preprocessing.StandardScaler() | linear_model.LinearRegression()


def synthetic_rows(count: int, seed: int = 0) -> list[tuple[dict, float]]:
    """Rows for the ~100 KB tree: 10 numeric features, a noisy non-linear target (the tree keeps splitting)."""
    import math
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        x = {f"x{i}": rng.uniform(-1, 1) for i in range(10)}
        y = math.sin(3 * x["x0"]) + x["x1"] * x["x2"] + abs(x["x3"]) + 0.1 * rng.gauss(0, 1)
        rows.append((x, y))
    return rows


@functools.cache
def big_model_bytes(size: int = 100_000) -> bytes:
    """A HoeffdingTreeRegressor trained on :func:`synthetic_rows` until it pickles to about ``size`` bytes
    (plain pickle), as pickled (the same bytes for every model of the run: training takes a few seconds)."""
    from river import tree

    model = tree.HoeffdingTreeRegressor(grace_period=50)
    rows = synthetic_rows(5000, seed=1)
    n = 0
    while True:
        x, y = rows[n % len(rows)]
        model.learn_one(x, y)
        n += 1
        if n % 250 == 0 and len(pickle.dumps(model)) >= size:
            return pickle.dumps(model)
        if n > 500_000:
            raise RuntimeError(f"the tree did not reach {size} bytes")


def big_model(size: int = 100_000):
    return pickle.loads(big_model_bytes(size))  # noqa: S301 - our own bytes


# In-process floors


def per_second(step, items: list, seconds: float) -> float:
    """How many ``step(item)`` per second, cycling over ``items`` for about ``seconds``."""
    done, started = 0, time.perf_counter()
    deadline = started + seconds
    while True:
        for item in items:
            step(item)
        done += len(items)
        now = time.perf_counter()
        if now >= deadline:
            return done / (now - started)


def inprocess_rates(model_factory, rows: list, seconds: float, rounds: int) -> dict[str, float]:
    """learn_one and predict_one per second of a fresh model on ``rows`` (learn first, then predict on the
    model it learned), the median of ``rounds``."""
    learn, predict = [], []
    for _ in range(rounds):
        model = model_factory()
        learn.append(per_second(lambda row: model.learn_one(row[0], row[1]), rows, seconds))
        predict.append(per_second(lambda row: model.predict_one(row[0]), rows, seconds))
    return {"learn": statistics.median(learn), "predict": statistics.median(predict)}


# Servers


# The database every Django server of a run starts from: migrated, with one user and its API token, made
# once (one Django start instead of two per server) and copied.
PREPARE = """
import django
from django.core.management import call_command
django.setup()
call_command("migrate", verbosity=0)
call_command("river_token", "bench", "--create-user")
"""


class Context:
    """One run of the suite: its settings, a scratch directory, and its servers, each made and started when
    first asked for (:meth:`running` starts several at once) and stopped by :meth:`close`, so benchmarks
    run alone or together measure the same things. The servers (``SERVERS``):

    - ``site``: the example site plus ``/bench/hello/`` (bench/site.py), as ``make serve`` runs it
      (``make serve``'s workers, the embedded store, authentication on; ``server.headers`` carry the token);
    - ``hello``: a hello-world ASGI app under the same gunicorn and uvicorn workers (bench/hello.py);
    - ``wsgi``: the same site as ``site`` under gunicorn's sync workers (WSGI);
    - ``many``: the example site with ``BENCH_MANY_WORKERS`` workers and a model quota that fits ``BENCH_MODELS``;
    - ``redis-a``, ``redis-b``: two hosts of the site (as ``site``) sharing one redis-server;
    - ``cluster-a``, ``cluster-b``: two hosts of the site sharing a Redis Cluster (3 masters, a replica each).

    The Redis servers are started with the first server that needs them (example_project/redisservers.py).
    """

    SERVERS = ("site", "hello", "wsgi", "many", "redis-a", "redis-b", "cluster-a", "cluster-b")

    def __init__(self, config: Config | None = None):
        self.config = config or Config()
        self.scratch = Path(tempfile.mkdtemp(prefix="bench-"))
        self.servers: dict[str, LiveServer] = {}
        self.cache: dict = {}
        self.notes: list[str] = []  # printed under the table and written with the results
        self._database: tuple[Path, str] | None = None
        self._redis: dict[str, object] = {}  # "one": a RedisServer, "cluster": a RedisCluster

    def redis_url(self, kind: str) -> str:
        """The URL of the run's one redis-server (``kind`` "one") or Redis Cluster ("cluster"), started now if not."""
        from redisservers import RedisCluster, RedisServer

        if kind not in self._redis:
            made = RedisServer(self.scratch / "redis") if kind == "one" else RedisCluster(self.scratch / "cluster")
            self._redis[kind] = made.wait_ready() if kind == "one" else made.start()
        return self._redis[kind].url

    def database(self) -> tuple[Path, str]:
        """The prepared database and its user's token."""
        if self._database is None:
            path = self.scratch / "prepared.sqlite3"
            env = site_environment(self.scratch / "prepare", database=path)
            env["DJANGO_SETTINGS_MODULE"] = "bench.site"
            answer = subprocess.run([sys.executable, "-c", PREPARE], cwd=ROOT / "example_project", env=env,
                                    capture_output=True, text=True, timeout=600)
            if answer.returncode:
                raise RuntimeError(f"migrate / river_token failed:\n{answer.stderr[-3000:]}")
            self._database = path, answer.stdout.strip().splitlines()[-1]
        return self._database

    def _make(self, key: str) -> LiveServer:
        config = self.config
        options: dict = {"workers": config.workers, "access_log": True}  # as `make serve`
        django_site = key != "hello"
        if key == "site":
            options.update(settings="bench.site", river={"STORAGE_BACKEND": "shelve"})
        elif key == "hello":
            options.update(app="bench.hello:app")
        elif key == "wsgi":
            options.update(app="example_project.wsgi:application", worker_args=(), settings="bench.site",
                           river={"STORAGE_BACKEND": "shelve"})
        elif key == "many":
            options.update(workers=config.many_workers,
                           river={"STORAGE_BACKEND": "shelve", "MAX_MODELS_PER_USER": config.models + 100,
                                  "REPLICA_MEMORY_BYTES": config.many_replica_bytes})
        elif key in ("redis-a", "redis-b", "cluster-a", "cluster-b"):
            kind = "one" if key.startswith("redis") else "cluster"
            options.update(settings="bench.site", river={"STORAGE_BACKEND": "redis", "REDIS_URL": self.redis_url(kind),
                                                         "REDIS_CLUSTER": str(kind == "cluster").lower(),
                                                         "REDIS_KEY_PREFIX": "bench"})
        else:
            raise KeyError(key)
        server = LiveServer(workdir=self.scratch / key, **options)
        server.headers = {}
        if django_site:
            import shutil

            database, token = self.database()
            shutil.copyfile(database, server.env["DJANGO_DATABASE_PATH"])
            server.headers = {"Authorization": f"Token {token}"}
        return server

    def running(self, *keys: str) -> list[LiveServer]:
        """These servers, started (those not running yet at once, each in a thread)."""
        from concurrent.futures import ThreadPoolExecutor

        for key in keys:
            if key not in self.servers:
                self.servers[key] = self._make(key)
        waiting = [self.servers[key] for key in keys if self.servers[key].process is None]
        if waiting:
            with ThreadPoolExecutor(len(waiting)) as threads:
                for future in [threads.submit(server.start) for server in waiting]:
                    future.result()
        return [self.servers[key] for key in keys]

    def site(self) -> LiveServer:
        return self.running("site")[0]

    def hello(self) -> LiveServer:
        return self.running("hello")[0]

    def close(self) -> None:
        for server in self.servers.values():
            server.stop()
        for redis_server in self._redis.values():
            redis_server.stop()
        import shutil

        shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


# Client processes: one keep-alive requests.Session each.

_session = None


def _client_init() -> None:
    global _session
    import requests

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _session = requests.Session()
    _session.trust_env = False  # 127.0.0.1 directly, whatever proxy the environment names


def _post_until(task) -> tuple[int, int, int, float, str]:
    """POST the bodies (JSON bytes, each worth ``rows`` rows) in turn from ``start`` until ``end`` (monotonic
    times); (requests, rows, failures, when the last answer came, the first failure's text)."""
    url, headers, bodies, rows, offset, start, end = task
    headers = {**headers, "Content-Type": "application/json"}
    while time.monotonic() < start:
        time.sleep(0.001)
    done = failures = 0
    failure = ""
    last = time.monotonic()
    while last < end:
        response = _session.post(url, data=bodies[(offset + done) % len(bodies)], headers=headers, timeout=120)
        response.content  # noqa: B018 - read the body: the connection goes back to the pool
        last = time.monotonic()
        done += 1
        if not 200 <= response.status_code < 300:
            failures += 1
            failure = failure or f"{response.status_code} {response.text[:300]}"
    return done, done * rows, failures, last, failure


class Clients:
    """``count`` client processes (forked), each with its own keep-alive session."""

    def __init__(self, count: int):
        self.count = count
        self.pool = multiprocessing.get_context("fork").Pool(count, initializer=_client_init)

    def rate(self, url: str | list[str], headers: dict, bodies: list[bytes], seconds: float, rows: int = 1,
             server: LiveServer | list[LiveServer] | None = None) -> dict:
        """Every client POSTs ``bodies`` for ``seconds`` (to ``url``, or to each of several in turn: client
        ``c`` to ``url[c % len(url)]``): requests/s, rows/s, failures, and the server's (servers') CPU seconds
        meanwhile (when ``server`` is given)."""
        urls = [url] if isinstance(url, str) else url
        servers = [] if server is None else [server] if isinstance(server, LiveServer) else server
        start = time.monotonic() + 0.1
        tasks = [(urls[c % len(urls)], headers, bodies, rows, c * 7919, start, start + seconds)
                 for c in range(self.count)]
        cpu = sum(server.cpu_seconds() for server in servers)
        answers = self.pool.map(_post_until, tasks, chunksize=1)
        elapsed = max(answer[3] for answer in answers) - start
        cpu = sum(server.cpu_seconds() for server in servers) - cpu
        requests_done = sum(answer[0] for answer in answers)
        return {"requests_per_s": requests_done / elapsed, "rows_per_s": sum(a[1] for a in answers) / elapsed,
                "requests": requests_done, "rows": sum(a[1] for a in answers), "seconds": elapsed,
                "failures": sum(a[2] for a in answers), "failure": next((a[4] for a in answers if a[4]), ""),
                "cpu_seconds": cpu}

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()

    def __enter__(self) -> Clients:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def river_client(url: str, headers: dict[str, str]):
    """The riverapi client for ``url``, sending ``headers`` (the token) with every call."""
    from riverapi.main import Client

    client = Client(url, quiet=True)
    client.session.trust_env = False  # 127.0.0.1 directly, whatever proxy the environment names
    for header, value in headers.items():
        client.set_header(header, value)
    return client


def upload(server: LiveServer, model, name: str, flavor: str = "regression") -> float:
    """Upload ``model`` (an object or pickled bytes) with the riverapi client; the seconds it took."""
    client = river_client(server.url, getattr(server, "headers", {}))
    started = time.perf_counter()
    client.upload_model(model, flavor, model_name=name)
    return time.perf_counter() - started


def json_bodies(bodies: list[dict]) -> list[bytes]:
    return [json.dumps(body).encode() for body in bodies]


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)
