"""The example site served as ``make serve`` serves it, on a free loopback port: for the tests and the benchmarks.

``make serve`` runs ``manage.py migrate``, then gunicorn on ``example_project.asgi:application`` with
uvicorn workers (``-k django_river_ml.worker.UvicornWorker --forwarded-allow-ips=``) in this
directory. :class:`LiveServer` does the same on 127.0.0.1 and a free port, by default with a data
directory and database of its own (under ``workdir``) and ``PYTHONHASHSEED=0``::

    from liveserver import LiveServer          # with example_project/ on sys.path

    server = LiveServer(workdir=Path("/tmp/x"), workers=2, migrate=True).start()
    token = server.token("alice")              # manage.py river_token alice --create-user
    ...
    server.stop()

It is a context manager too (``with LiveServer(...) as server:`` starts and stops it).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SITE = Path(__file__).resolve().parent  # example_project/: manage.py and the example_project package
ROOT = SITE.parent  # the checkout
APP = "example_project.asgi:application"
SETTINGS = "example_project.settings"
# As `make serve`: uvicorn workers; X-Forwarded-For is left to the app (NUM_PROXIES), not to uvicorn.
WORKER_ARGS = ("-k", "django_river_ml.worker.UvicornWorker", "--forwarded-allow-ips=")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, timeout: float, what: str, interval: float = 0.05) -> None:
    """Call ``check`` until it returns true (exceptions count as false); RuntimeError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"Timed out waiting for {what}")
        time.sleep(interval)


def site_environment(workdir: Path | str | None = None, *, data_dir: Path | str | None = None,
                     database: Path | str | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a server process: ``base`` (default: this process's) without any ``DJANGO_*``
    variable, then the example site's settings module, its database (``database``, default
    ``workdir/db.sqlite3``), data directory (``data_dir``, default ``workdir/data``), ``PYTHONHASHSEED=0``
    and the checkout on ``PYTHONPATH``. Without ``workdir``, database and data directory are the site's
    defaults unless given."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("DJANGO_")}
    env["DJANGO_SETTINGS_MODULE"] = SETTINGS
    if workdir is not None:
        database = database or Path(workdir) / "db.sqlite3"
        data_dir = data_dir or Path(workdir) / "data"
    if database:
        env["DJANGO_DATABASE_PATH"] = str(database)
    if data_dir:
        env["DJANGO_RIVER_ML_DATA_DIR"] = str(data_dir)
    env["PYTHONHASHSEED"] = "0"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _setting_value(value) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


class LiveServer:
    """gunicorn with uvicorn workers on a free loopback port, as ``make serve`` runs the site.

    ``env``: the server's whole environment (default: :func:`site_environment` of ``workdir``), then
    changed by ``settings`` (a ``DJANGO_SETTINGS_MODULE``), ``river`` (``{NAME: value}`` set as
    ``DJANGO_RIVER_ML_NAME``) and ``extra_pythonpath`` (put first on ``PYTHONPATH``). ``app``: what
    gunicorn serves (another ASGI app under the same workers, e.g. a hello-world floor); ``worker_args``: the
    worker class and its options (``()``: gunicorn's sync workers, for a WSGI app). ``site``: the
    directory gunicorn and manage.py run in. ``migrate``: run ``manage.py migrate`` before the first start
    (as ``make serve``; needed for users and tokens). ``access_log``: gunicorn's access log in the log
    (``make serve`` prints it). The log (``log_text()``) gets gunicorn's and the workers' lines.
    """

    def __init__(self, env: dict[str, str] | None = None, workers: int = 4, workdir: Path | str | None = None, *,
                 settings: str | None = None, river: dict | None = None, extra_pythonpath=(), app: str = APP,
                 worker_args=WORKER_ARGS, site: Path | str = SITE, migrate: bool = False, access_log: bool = False,
                 log: Path | str | None = None, python: Path | str | None = None, start_timeout: float = 60,
                 gunicorn_args=("--timeout", "60", "--graceful-timeout", "5")):
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="liveserver-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = dict(site_environment(self.workdir) if env is None else env)
        if settings:
            self.env["DJANGO_SETTINGS_MODULE"] = settings
        self.env.update({f"DJANGO_RIVER_ML_{name}": _setting_value(value) for name, value in (river or {}).items()})
        if extra_pythonpath:
            self.env["PYTHONPATH"] = os.pathsep.join([*map(str, extra_pythonpath),
                                                      *filter(None, [self.env.get("PYTHONPATH")])])
        self.workers = workers
        self.app = app
        self.worker_args = list(worker_args)
        self.site = Path(site)
        self.python = str(python or sys.executable)
        self.gunicorn = str(Path(self.python).parent / "gunicorn")
        self.migrate = migrate
        self.access_log = access_log
        self.start_timeout = start_timeout
        self.gunicorn_args = list(gunicorn_args)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(log) if log else self.workdir / f"gunicorn-{self.port}.log"
        self.process: subprocess.Popen | None = None
        self._migrated = False
        self._tokens: dict[str, str] = {}

    # Starting and stopping

    def manage(self, *args: str, timeout: float = 300) -> str:
        """``python manage.py ARGS`` in the site with the server's environment; its standard output."""
        result = subprocess.run([self.python, "manage.py", *args], cwd=self.site, env=self.env, capture_output=True,
                                text=True, timeout=timeout)
        if result.returncode:
            raise RuntimeError(f"manage.py {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
        return result.stdout

    def start(self) -> LiveServer:
        """Migrate (the first time, when asked), start gunicorn, and wait until ``/api/`` answers 200."""
        if self.migrate and not self._migrated:
            self.manage("migrate", "--verbosity", "0")
            self._migrated = True
        access = ["--access-logfile", "-"] if self.access_log else []
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [self.gunicorn, self.app, *self.worker_args, "--workers", str(self.workers),
                 "--bind", f"127.0.0.1:{self.port}", *self.gunicorn_args, *access],
                cwd=self.site, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                exited = self.process.poll() is not None
                self.stop()
                raise RuntimeError(f"gunicorn {'exited' if exited else 'did not answer'} on {self.url}; its log "
                                   f"({self.log}) ends:\n{self.log_text()[-3000:]}")
            time.sleep(0.1)
        return self

    def answers(self) -> bool:
        """Whether ``/api/`` answers 200 now (straight to the port: no proxy from the environment)."""
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            connection.request("GET", "/api/")
            return connection.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL when it has not ended within 15 s."""
        if self.process and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
            except ProcessLookupError:
                self.process.wait(5)

    def restart(self) -> LiveServer:
        self.stop()
        return self.start()

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # What it did

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def token(self, user: str = "bench") -> str:
        """The API token of ``user`` (made, with the user, if needed: ``manage.py river_token USER --create-user``).
        Needs the database migrated (``migrate=True``)."""
        if user not in self._tokens:
            self._tokens[user] = self.manage("river_token", user, "--create-user").strip().splitlines()[-1]
        return self._tokens[user]

    def worker_pids(self) -> list[int]:
        """The master's child processes now alive: its workers (Linux /proc; empty elsewhere)."""
        if self.process is None:
            return []
        try:
            return [int(pid) for pid in
                    Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()]
        except OSError:
            return []

    def connection_owners(self, ports) -> dict[int, int | None]:
        """The worker holding the connection from each of these client ports: port -> pid (None: not found;
        Linux /proc; all None elsewhere)."""
        owners: dict[int, int | None] = dict.fromkeys(ports)
        inode_owner = {}
        for pid in self.worker_pids():
            try:
                descriptors = os.listdir(f"/proc/{pid}/fd")
            except OSError:
                continue
            for descriptor in descriptors:
                try:
                    link = os.readlink(f"/proc/{pid}/fd/{descriptor}")
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inode_owner[link[8:-1]] = pid
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                lines = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                local_port, remote_port = (int(address.rsplit(":", 1)[1], 16) for address in fields[1:3])
                if local_port == self.port and remote_port in owners:
                    owners[remote_port] = inode_owner.get(fields[9])
        return owners

    def rss_bytes(self) -> dict[int, int]:
        """Resident memory of each worker, by pid (Linux; empty elsewhere)."""
        sizes = {}
        for pid in self.worker_pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        sizes[pid] = int(line.split()[1]) * 1024
            except OSError:
                continue
        return sizes

    def cpu_seconds(self) -> float:
        """User and system CPU time of the master and its descendants now alive (Linux /proc; else 0)."""
        if self.process is None:
            return 0.0
        children: dict[int, list[tuple[int, float]]] = {}
        try:
            entries = [entry for entry in os.listdir("/proc") if entry.isdigit()]
        except OSError:
            return 0.0
        tick = os.sysconf("SC_CLK_TCK")
        own = 0.0
        for entry in entries:
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            seconds = (int(fields[11]) + int(fields[12])) / tick
            if int(entry) == self.process.pid:
                own = seconds
            children.setdefault(int(fields[1]), []).append((int(entry), seconds))
        total, parents = own, [self.process.pid]
        while parents:
            for pid, seconds in children.get(parents.pop(), []):
                total += seconds
                parents.append(pid)
        return total
