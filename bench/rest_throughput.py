"""REST throughput under ASGI (gunicorn + uvicorn workers, as `make serve` runs the site) against
WSGI (gunicorn sync workers, as it ran before), measured in the same run.

Run with ``make bench`` (or ``python bench/rest_throughput.py`` from the repository root with the
virtualenv's Python). Both servers run at once on 127.0.0.1, each on a free port with its own fresh
data directory and database, with authentication on (one user's API token). Each gets a
``StandardScaler | LinearRegression`` upload, then ``POST /api/learn/`` and ``POST /api/predict/``
requests from several client processes (``requests.Session``, keep-alive where the server allows it).
The servers take turns, round after round; each figure is the median over the rounds. The floor is
the same two servers with a hello-world app instead of Django: what the clients and the HTTP server
cost by themselves. It prints requests per second, the CPU time the server's processes spent per
request (Linux; a busy machine disturbs it less than requests per second), and the ratios
ASGI/WSGI; it asserts nothing.

Environment: ``BENCH_WORKERS`` (server worker processes, default 2), ``BENCH_CLIENTS`` (client
processes, default 8), ``BENCH_REQUESTS`` (requests of each kind per server and round, default 400),
``BENCH_ROUNDS`` (default 3).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PROJECT = ROOT / "example_project"
BIN = Path(sys.executable).parent

WORKERS = int(os.environ.get("BENCH_WORKERS", "2"))
CLIENTS = int(os.environ.get("BENCH_CLIENTS", "8"))
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "400"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
WARM_UP = 20  # requests of each kind per client before the first round (every worker loads the model)

UVICORN = ["-k", "django_river_ml.worker.UvicornWorker", "--forwarded-allow-ips="]  # as `make serve`
SERVERS = {  # name: what follows `gunicorn`; WSGI is how `make serve` ran the site before
    "WSGI": ["example_project.wsgi:application"],
    "ASGI": ["example_project.asgi:application", *UVICORN],
}
FLOORS = {  # the same servers with the hello-world apps below (this module, imported by gunicorn)
    "WSGI": ["rest_throughput:hello_wsgi"],
    "ASGI": ["rest_throughput:hello_asgi", *UVICORN],
}
MODEL = "bench"
SETUP = """
import django
from django.core.management import call_command
django.setup()
call_command("migrate", verbosity=0)
call_command("river_token", "bench", "--create-user")
"""
HELLO = b'{"prediction": 1.0}'


def hello_wsgi(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(HELLO)))])
    return [HELLO]


async def hello_asgi(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(HELLO)).encode())]})
    await send({"type": "http.response.body", "body": HELLO})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """gunicorn on a free loopback port, with its own data directory, database and token."""

    def __init__(self, app: list[str], directory: Path, django_site: bool = True):
        self.app = app
        self.directory = directory
        self.django_site = django_site
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = directory / "server.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
        self.env.update({
            "DJANGO_SETTINGS_MODULE": "example_project.settings",
            "DJANGO_DATABASE_PATH": str(directory / "db.sqlite3"),
            "DJANGO_RIVER_ML_DATA_DIR": str(directory / "data"),
            "PYTHONHASHSEED": "0",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "bench"),
                                                         os.environ.get("PYTHONPATH")])),
        })
        self.process: subprocess.Popen | None = None
        self.token = ""

    def setup(self) -> subprocess.Popen | None:
        """migrate, then make the user and its token (in the background: both servers at once)."""
        if not self.django_site:
            return None
        return subprocess.Popen([sys.executable, "-c", SETUP], cwd=EXAMPLE_PROJECT, env=self.env,
                                stdout=subprocess.PIPE, text=True)

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [str(BIN / "gunicorn"), *self.app, "--workers", str(WORKERS), "--bind", f"127.0.0.1:{self.port}",
                 "--access-logfile", str(self.directory / "access.log")],
                cwd=EXAMPLE_PROJECT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait(self) -> None:
        import requests

        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(self.url + "/api/", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{self.app[0]} did not serve {self.url}:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def cpu_seconds(self) -> float:
        """User and system time of the master's descendants now alive: its workers (Linux, else 0)."""
        children: dict[int, list[tuple[int, float]]] = {}
        try:
            entries = [entry for entry in os.listdir("/proc") if entry.isdigit()]
        except OSError:
            return 0.0
        for entry in entries:
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            seconds = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            children.setdefault(int(fields[1]), []).append((int(entry), seconds))
        total, parents = 0.0, [self.process.pid]
        while parents:
            for pid, seconds in children.get(parents.pop(), []):
                total += seconds
                parents.append(pid)
        return total

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.token}"} if self.token else {}

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)


# Client processes: one keep-alive session each, for the whole run.

_session = None


def _client_init() -> None:
    global _session
    import requests

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _session = requests.Session()


def _drive(task: tuple[str, str, dict, list, int, int]) -> int:
    """Send ``count`` requests; returns how many were not answered 2xx."""
    url, kind, headers, examples, count, offset = task
    failed = 0
    for i in range(count):
        x, y = examples[(offset + i) % len(examples)]
        if kind == "learn":
            body = {"model": MODEL, "features": x, "ground_truth": y}
        else:
            body = {"model": MODEL, "features": x}
        if kind == "hello":
            response = _session.get(url, headers=headers, timeout=60)
        else:
            response = _session.post(f"{url}/api/{kind}/", json=body, headers=headers, timeout=60)
        response.content  # noqa: B018 - read the body: the connection goes back to the pool
        failed += not 200 <= response.status_code < 300
    return failed


def throughput(pool, server: Server, kind: str, examples: list, total: int) -> tuple[float, float, int]:
    """``total`` requests of ``kind`` split over the clients: requests per second, the server's CPU
    milliseconds per request, and how many were not answered 2xx."""
    each = max(1, total // CLIENTS)
    tasks = [(server.url, kind, server.headers, examples, each, c * each) for c in range(CLIENTS)]
    cpu = server.cpu_seconds()
    started = time.perf_counter()
    failed = sum(pool.map(_drive, tasks, chunksize=1))
    elapsed = time.perf_counter() - started
    return each * CLIENTS / elapsed, (server.cpu_seconds() - cpu) * 1000 / (each * CLIENTS), failed


def upload(server: Server, model) -> None:
    import dill
    import requests

    response = requests.post(f"{server.url}/api/model/regression/{MODEL}/", data=dill.dumps(model), timeout=120,
                             headers={**server.headers, "Content-Type": "application/octet-stream"})
    if response.status_code != 201:
        raise SystemExit(f"upload to {server.url} answered {response.status_code}: {response.text[:500]}")


def main() -> None:
    from river import datasets, linear_model, preprocessing

    examples = [(dict(x), float(y)) for x, y in datasets.TrumpApproval()]
    model = preprocessing.StandardScaler() | linear_model.LinearRegression()
    print(f"{WORKERS} workers per server, {CLIENTS} client processes, {REQUESTS} requests of each kind "
          f"per server and round, median of {ROUNDS} rounds")
    with tempfile.TemporaryDirectory(prefix="bench-rest-") as scratch:
        sites = {name: Server(app, Path(scratch, name.lower())) for name, app in SERVERS.items()}
        floors = {name: Server(app, Path(scratch, f"floor-{name.lower()}"), django_site=False)
                  for name, app in FLOORS.items()}
        servers = [*sites.values(), *floors.values()]
        for server in servers:
            server.directory.mkdir()
        try:
            setups = {server: server.setup() for server in servers}
            for server, setup in setups.items():
                if setup is not None:
                    out, _ = setup.communicate(timeout=120)
                    if setup.returncode:
                        raise SystemExit(f"migrate / river_token failed for {server.app[0]}")
                    server.token = out.strip().splitlines()[-1]
                server.start()
            for server in servers:
                server.wait()
            for server in sites.values():
                upload(server, model)

            results: dict[tuple[str, str], list[tuple[float, float]]] = {}
            failures: dict[tuple[str, str], int] = {}
            with multiprocessing.get_context("fork").Pool(CLIENTS, initializer=_client_init) as pool:
                for server in sites.values():
                    for kind in ("learn", "predict"):
                        throughput(pool, server, kind, examples, WARM_UP * CLIENTS)
                for server in floors.values():
                    throughput(pool, server, "hello", examples, WARM_UP * CLIENTS)
                for turn in range(ROUNDS):
                    for kind in ("learn", "predict", "floor"):
                        for name in sorted(SERVERS, reverse=turn % 2 == 1):  # each goes first in turn
                            server = floors[name] if kind == "floor" else sites[name]
                            rate, cpu, failed = throughput(pool, server, "hello" if kind == "floor" else kind,
                                                           examples, REQUESTS)
                            results.setdefault((kind, name), []).append((rate, cpu))
                            failures[(kind, name)] = failures.get((kind, name), 0) + failed
        finally:
            for server in servers:
                server.stop()

    print(f"{'':13s}{'requests per second':^30s}  {'server CPU ms per request':^30s}")
    print(f"{'':13s}{'WSGI':>9s}{'ASGI':>9s}{'ASGI/WSGI':>12s}  {'WSGI':>9s}{'ASGI':>9s}{'ASGI/WSGI':>12s}"
          "  req/s in each round (WSGI | ASGI)")
    for kind in ("learn", "predict", "floor"):
        rates = {name: [rate for rate, _ in results[(kind, name)]] for name in SERVERS}
        wsgi, asgi = (statistics.median(rates[name]) for name in SERVERS)
        wsgi_cpu, asgi_cpu = (statistics.median(cpu for _, cpu in results[(kind, name)]) for name in SERVERS)
        cpu_ratio = f"{asgi_cpu / wsgi_cpu:11.2f}x" if wsgi_cpu else f"{'-':>12s}"
        rounds = " | ".join(" ".join(f"{rate:.0f}" for rate in rates[name]) for name in SERVERS)
        label = "floor" if kind == "floor" else f"POST {kind}"
        print(f"{label:13s}{wsgi:9.0f}{asgi:9.0f}{asgi / wsgi:11.2f}x  {wsgi_cpu:9.2f}{asgi_cpu:9.2f}{cpu_ratio}"
              f"  ({rounds})")
    print("floor: a hello-world app in place of Django, on the same servers (what clients and server cost alone)")
    failed = {key: count for key, count in failures.items() if count}
    if failed:
        print("not answered 2xx:", ", ".join(f"{name} {kind}: {count}" for (kind, name), count in failed.items()))


if __name__ == "__main__":
    main()
