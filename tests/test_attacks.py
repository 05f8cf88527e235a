"""Attack suite: every exploit an attack review found against model uploads, one test per attack.

Each attack is sent with one API token to a live gunicorn server (2 worker processes,
authentication on), and the uploads are hand-written pickles (pickletools-level opcodes) or
JSON specs. The contract the tests hold the server to (the sandboxed loading path, see
"Uploads are untrusted" in DESIGN.md):

* the upload answers a clean JSON 4xx, ``{"message": ...}`` with status 400 or 413, never a
  500 and never a dropped connection; an upload that hits a limit names the setting in its
  message (``SANDBOX_MEMORY_BYTES``, ``SANDBOX_CPU_SECONDS``, ``SANDBOX_TIMEOUT_SECONDS``,
  ``TRIAL_SECONDS`` or ``MAX_MODEL_BYTES``);
* it has no side effect: the marker file the payload aims at (always inside the test's own
  temporary directory) is neither written nor read into a model; ``LinearRegression.predict_one``
  still predicts correctly on every worker; no model is stored; the worker processes are the
  same ones (same PIDs, none crashed, timed out or restarted, none left busy) and the server
  keeps answering.

Attacks 1-6 are also sent in-process through ``DjangoClient().upload_model`` (InvalidModel, and no
side effect in the test process itself).

Payload safety: a payload that writes or reads a file only ever touches a marker file in the
test's tmp directory, with content the test wrote itself. Memory bombs are bounded so that the
code they were found in does not take the machine down.

Run alone: ``PYTHONHASHSEED=0 .venv/bin/python -m pytest tests/test_attacks.py -q -x``.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import re
import signal
import struct
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from river import linear_model, preprocessing

from flavored_models import examples
from liveserver import site_environment
from liveserver import wait_until
from tests.conftest import EXAMPLE_PROJECT, ROOT, LiveServer

# Limits the sandboxed loading path will have. The tests pin them (environment of the live
# server, settings of the in-process client) so that every bomb below exceeds at least one by a
# wide margin whatever the defaults are. SANDBOX_MEMORY_BYTES keeps its default: too low a value
# would refuse honest models (the sandbox imports numpy and river).
PINNED_LIMITS = {
    "TRIAL_SECONDS": 2,
    "SANDBOX_CPU_SECONDS": 6,
    "SANDBOX_TIMEOUT_SECONDS": 10,
    "MAX_MODEL_BYTES": 32 * 1024 * 1024,
}
LIMIT_SETTINGS = ("SANDBOX_MEMORY_BYTES", "SANDBOX_CPU_SECONDS", "SANDBOX_TIMEOUT_SECONDS", "TRIAL_SECONDS",
                  "MAX_MODEL_BYTES")
# How long a client waits for an upload that the sandbox must stop: its wall-clock limit, plus
# the start of the sandbox process, plus slack for a busy machine.
BOMB_ANSWER_SECONDS = PINNED_LIMITS["SANDBOX_TIMEOUT_SECONDS"] + 20
UPLOAD_ANSWER_SECONDS = 30
# gunicorn lines that mean a worker died, was killed or was replaced.
WORKER_TROUBLE = re.compile(r"WORKER TIMEOUT|SIGSEGV|was sent SIG|Booting worker|Worker \(pid:\d+\) exited")
WORKERS = 2

live = pytest.mark.live


# ---------------------------------------------------------------------------------------------
# A pickle assembler: opcodes by hand, as an attacker writes them (protocol 4 header; GLOBAL,
# REDUCE, BUILD, NEWOBJ and the rest are all read by any protocol-2+ unpickler).

MARK, STOP, POP = b"(", b".", b"0"
TUPLE, EMPTY_TUPLE, TUPLE1 = b"t", b")", b"\x85"
LIST, EMPTY_LIST = b"l", b"]"
EMPTY_DICT, SETITEM, SETITEMS = b"}", b"s", b"u"
NONE, REDUCE, BUILD, NEWOBJ = b"N", b"R", b"b", b"\x81"


def assemble(*ops: bytes, check: bool = True) -> bytes:
    """A whole pickle: PROTO 4, the opcodes, STOP; checked to be well formed by pickletools."""
    data = b"\x80\x04" + b"".join(ops) + STOP
    if check:
        pickletools.dis(io.BytesIO(data), out=io.StringIO())
    return data


def global_(module: str, name: str) -> bytes:
    """GLOBAL: push module.name (the unpickler imports the module and looks the name up)."""
    return b"c" + f"{module}\n{name}\n".encode()


def text(value: str) -> bytes:
    """BINUNICODE."""
    data = value.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def integer(value: int) -> bytes:
    """BININT (signed 32 bits)."""
    return b"J" + struct.pack("<i", value)


def put(slot: int) -> bytes:
    """LONG_BINPUT: remember the top of the stack in the memo."""
    return b"r" + struct.pack("<I", slot)


def get(slot: int) -> bytes:
    """LONG_BINGET: push a remembered object again (the same object, not a copy)."""
    return b"j" + struct.pack("<I", slot)


def tuple_(*items: bytes) -> bytes:
    return MARK + b"".join(items) + TUPLE


def dict_(*pairs: tuple[bytes, bytes]) -> bytes:
    return EMPTY_DICT + MARK + b"".join(key + value for key, value in pairs) + SETITEMS


def call(function: bytes, *args: bytes) -> bytes:
    """REDUCE: function(*args)."""
    return function + tuple_(*args) + REDUCE


def getattr_(obj: bytes, name: str) -> bytes:
    """builtins.getattr(obj, name): plain pickle's way to rebuild bound methods."""
    return call(global_("builtins", "getattr"), obj, text(name))


def real_linear_regression() -> bytes:
    """The opcodes of an honest ``pickle.dumps(LinearRegression(), protocol=2)`` (NEWOBJ + BUILD of
    its real state), without PROTO and STOP: the attacks append their own state to a model that
    works, so nothing but the attack itself is wrong with the upload."""
    data = pickle.dumps(linear_model.LinearRegression(), protocol=2)
    assert data[:2] == b"\x80\x02" and data[-1:] == STOP
    return data[2:-1]


def with_state(obj: bytes, *pairs: tuple[bytes, bytes]) -> bytes:
    """BUILD: update obj.__dict__ with the pairs."""
    return obj + dict_(*pairs) + BUILD


# ---------------------------------------------------------------------------------------------
# The payloads, one function per attack.


def builtins_type() -> bytes:
    """Push ``builtins.type``, reached from an allowed river class.

    ``getattr(river.base.estimator.EstimatorMeta, "mro")`` is ``type.mro`` (EstimatorMeta is
    a metaclass, so its ``mro`` is the plain descriptor); ``type.mro(EstimatorMeta)`` is
    ``[EstimatorMeta, ABCMeta, type, object]``, and ``pop(2)`` on that list hands out ``type``.
    """
    meta = global_("river.base.estimator", "EstimatorMeta")
    mro = call(getattr_(meta, "mro"), meta)
    return call(getattr_(mro, "pop"), integer(2))


def drift_dataset_pointing_at(marker: Path) -> bytes:
    """A river drift dataset (river.drift.datasets.Apple) whose ``path`` is ``marker``.

    Made with NEWOBJ (no ``__init__``) and BUILD ``{"directory": ..., "filename": ...}``:
    ``FileDataset.path`` is then ``pathlib.Path(directory).joinpath(filename)``.
    """
    dataset = global_("river.drift.datasets", "Apple") + EMPTY_TUPLE + NEWOBJ
    return with_state(dataset, (text("directory"), text(str(marker.parent))), (text("filename"), text(marker.name)))


def payload_type_builds_river_path_class(marker: Path, content: str) -> bytes:
    """Attack 1a: ``type`` from ``mro`` builds a pathlib class that claims to be river's, which writes a file.

    ``type(dataset.path)`` is ``PosixPath``; ``type("RiverPath", (PosixPath,), {"__module__":
    "river.attack"})`` is a new class whose instances pass a "defined in river" check, so
    ``getattr(RiverPath(marker), "write_text")(content)`` runs. (In the review the file was a
    module inside river's package that a later GLOBAL imported; here it is only the marker.)
    """
    path = getattr_(drift_dataset_pointing_at(marker), "path")
    river_path_class = call(get(0), text("RiverPath"), tuple_(call(get(0), path)),
                            dict_((text("__module__"), text("river.attack"))))
    write = getattr_(call(get(1), text(str(marker))), "write_text")
    return assemble(builtins_type(), put(0), POP, river_path_class, put(1), POP, call(write, text(content)))


def rolling(obj: bytes) -> bytes:
    """A ``river.utils.rolling.BaseRolling`` around obj, made as pickle makes one (NEWOBJ, then
    BUILD ``{"obj": obj}``): its ``__getattr__`` forwards any attribute to obj."""
    return with_state(global_("river.utils.rolling", "BaseRolling") + EMPTY_TUPLE + NEWOBJ, (text("obj"), obj))


def rolling_path(marker: Path) -> bytes:
    """``BaseRolling`` wrapping the ``Path`` of ``marker``, itself reached through a ``BaseRolling``
    around the drift dataset: every attribute comes through the forwarding ``__getattr__``
    (``.path`` of the dataset, then ``write_text`` / ``read_bytes`` of the path)."""
    return rolling(getattr_(rolling(drift_dataset_pointing_at(marker)), "path"))


def payload_rolling_forwards_to_path(marker: Path, content: str) -> bytes:
    """Attack 1b: ``BaseRolling(path).write_text(content)`` writes the marker file."""
    return assemble(call(getattr_(rolling_path(marker), "write_text"), text(content)))


def payload_file_read_into_model(marker: Path) -> bytes:
    """Attack 2: a LinearRegression whose ``notes`` attribute is ``BaseRolling(path).read_bytes()``:
    the file's content travels with the model and comes back on download."""
    content = call(getattr_(rolling_path(marker), "read_bytes"))
    return assemble(with_state(real_linear_regression(), (text("notes"), content)))


PATCH_VALUE = bool


def payload_patch_class_with_slot_state() -> bytes:
    """Attack 3: BUILD on the class ``LinearRegression`` with state ``(None, {"predict_one": bool})``.

    Slot state is applied with ``setattr`` on whatever object BUILD got, so the class itself is
    patched: every LinearRegression in that process then "predicts" ``bool(x)``. The pickle then
    drops the class and yields None, so the upload itself is refused.
    """
    patch = tuple_(NONE, dict_((text("predict_one"), global_("builtins", PATCH_VALUE.__name__))))
    return assemble(global_("river.linear_model", "LinearRegression"), patch, BUILD, POP, NONE)


def payload_uninitialised_array(n_bytes: int = 4096) -> bytes:
    """Attack 4: a LinearRegression holding ``numpy.ndarray((n_bytes,), "u1")``: an array made
    without data, i.e. whatever was on the server's heap (pointers, other requests' data)."""
    array = call(global_("numpy", "ndarray"), tuple_(integer(n_bytes)), text("u1"))
    return assemble(with_state(real_linear_regression(), (text("notes"), array)))


def payload_deep_tuple_dict_key(depth: int = 1_000_000) -> bytes:
    """Attack 5: ``{((((),),),...): None}`` with the tuple nested ``depth`` deep (about 1 MB).

    Unpickling builds the tuple without recursion (one TUPLE1 a level), but putting it in a dict
    hashes it, and tuple hashing recurses in C without a depth check: the C stack overflows and
    the process dies with SIGSEGV (no RecursionError to catch).
    """
    return assemble(EMPTY_DICT, EMPTY_TUPLE, TUPLE1 * depth, NONE, SETITEM, check=False)


def payload_bytes_bomb(size: int = 300_000_000) -> bytes:
    """Attack 6a: a working LinearRegression that also holds ``bytes(size)``: 40 bytes of opcodes
    (the review's whole pickle was 79 bytes) that allocate, store and snapshot 300 MB."""
    return assemble(with_state(real_linear_regression(), (text("blob"), call(global_("builtins", "bytes"),
                                                                             integer(size)))))


def payload_shared_structure(depth: int = 40) -> bytes:
    """Attack 6b: a working LinearRegression whose ``intercept_init`` parameter (read only by
    ``__init__``, so learning and predicting still work) is a list of depth ``depth``, each level a
    list holding the previous one twice: memo references, ~760 bytes of opcodes.

    As a tree it has 2**depth leaves: anything that walks the model's parameters without
    remembering what it saw (``GET /api/model/<name>/``) runs for ages.
    """
    base = 1000  # memo slots of our own, clear of the honest pickle's
    levels = [EMPTY_LIST, put(base), POP]
    for level in range(1, depth + 1):
        levels.append(MARK + get(base + level - 1) + get(base + level - 1) + LIST + put(base + level) + POP)
    return assemble(*levels, with_state(real_linear_regression(), (text("intercept_init"), get(base + depth))))


def payload_dunder_state() -> bytes:
    """Attack 6c: a LinearRegression whose instance state sets ``__reduce_ex__`` (to ``str``) and
    ``__module__`` (to ``"os"``): they steer how the server pickles its own snapshot of the model
    (``str(4)`` is read as the name of a global to look up in ``os``), which fails with a 500."""
    return assemble(with_state(real_linear_regression(), (text("__reduce_ex__"), global_("builtins", "str")),
                               (text("__module__"), text("os"))))


# Attack 7: JSON spec bombs (Content-Type: application/json). Today each one uploads in a moment
# (7c excepted) and costs its CPU and memory later, on every learn of every worker; the sandboxed
# build + trial run must refuse them at upload.
SPEC_BOMBS = {
    # One learn builds 2000 trees of 2**16 nodes: ~20 minutes and tens of GB; never learn it today.
    "half-space-trees": ("anomaly", {"class": "anomaly.HalfSpaceTrees", "params": {"n_trees": 2000, "height": 15}}),
    # One learn: ~10 s and ~1.5 GB (10**7 factors per feature).
    "fm-regressor": ("regression", {"class": "facto.FMRegressor", "params": {"n_factors": 10_000_000}}),
    # Building it deep-copies LinearRegression 200,000 times: minutes of CPU.
    "bagging": ("regression", {"class": "ensemble.BaggingRegressor",
                               "params": {"model": {"class": "linear_model.LinearRegression"}, "n_models": 200_000}}),
}


# ---------------------------------------------------------------------------------------------
# The live server.


def reference_model():
    """A trained StandardScaler | LinearRegression and the features to ask it about."""
    data = examples("regression", 30)
    model = preprocessing.StandardScaler() | linear_model.LinearRegression()
    for x, y in data:
        model.learn_one(x, y)
    return model, [x for x, _ in data[:4]]


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.add(int(entry))
    return found


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class AttackedServer:
    """The live server, the attacker's token, and what "healthy" means for it."""

    def __init__(self, server: LiveServer, token: str):
        self.server = server
        self.url = server.url
        self.headers = {"Authorization": f"Token {token}"}
        self.workers: set[int] = set()
        self.log_offset = 0
        self.model, self.features = reference_model()
        self.reference = f"reference-{uuid.uuid4().hex[:8]}"
        self.created: list[str] = []
        self.damaged: list[str] = []

    # Starting and watching ------------------------------------------------------------------

    def started(self, log_start: int = 0) -> AttackedServer:
        """Wait until every worker has booted; remember their PIDs and where the log is now."""
        master = self.server.process.pid
        wait_until(lambda: len(children_of(master)) == WORKERS
                   and self.server.log_text()[log_start:].count("Booting worker") >= WORKERS, 30,
                   "the gunicorn workers")
        self.workers = children_of(master)
        # "Booting worker" is logged before the worker imports the site: wait until they are idle.
        wait_until(lambda: not self.busy_workers(self.workers, share=0.02), 60,
                   "the gunicorn workers to finish booting")
        self.log_offset = len(self.server.log_text())
        self.damaged = []
        return self

    def restart(self) -> None:
        """Kill the damaged server outright (a pinned worker would hold up a graceful stop) and
        start it again on the same store and database."""
        log_start = len(self.server.log_text())
        process = self.server.process
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        self.server.start()
        self.started(log_start)

    def heal(self) -> None:
        """Make a damaged server healthy again for the next test. A worker that died was already
        replaced by gunicorn: the new ones become the baseline. A pinned worker or a patched
        class needs new workers (and, if that is not enough, a new server)."""
        if not any("busy" in problem or "predict" in problem for problem in self.damaged):
            self.started()
            if not self.problems():
                return
        self.replace_workers()
        if self.problems():
            self.restart()
        problems = self.problems()
        assert not problems, f"The server is unhealthy even after a restart: {problems}"

    def replace_workers(self) -> None:
        """SIGKILL every worker (a pinned one would hold up a graceful stop); gunicorn boots new ones."""
        log_start = len(self.server.log_text())
        killed = children_of(self.server.process.pid)
        for pid in killed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_until(lambda: not children_of(self.server.process.pid) & killed, 10, "the old workers to go")
        self.started(log_start)

    def new_log(self) -> str:
        return self.server.log_text()[self.log_offset:]

    def problems(self) -> list[str]:
        """Everything wrong with the server now (an empty list: healthy)."""
        found = []
        try:
            if requests.get(self.url + "/api/", timeout=10).status_code != 200:
                found.append("GET /api/ does not answer 200")
        except requests.RequestException as error:
            return [f"the server does not answer: {error!r}"]
        alive = children_of(self.server.process.pid)
        if alive != self.workers:
            found.append(f"worker processes changed: {sorted(self.workers)} before, {sorted(alive)} now")
        trouble = [line for line in self.new_log().splitlines() if WORKER_TROUBLE.search(line)]
        if trouble:
            found.append("server log: " + " | ".join(trouble[-6:]))
        busy = self.busy_workers(alive & self.workers)
        if busy:
            found.append(f"workers {busy} are busy with no request in flight (pinned)")
        found.extend(self.wrong_predictions(self.reference))
        return found

    def busy_workers(self, pids: set[int], seconds: float = 0.4, share: float = 0.25) -> list[int]:
        """Workers that used more than ``share`` of a CPU over ``seconds`` (an idle one uses none)."""
        try:
            before = {pid: cpu_seconds(pid) for pid in pids}
            time.sleep(seconds)
            return [pid for pid in pids if cpu_seconds(pid) - before[pid] > seconds * share]
        except OSError:
            return []  # a worker vanished: reported as changed workers

    def wrong_predictions(self, name: str, n_requests: int = 16) -> list[str]:
        """Ask model ``name`` (a copy of the reference model) many times at once, so that every
        worker answers some: any answer that is not the right number is a problem."""
        expected = [self.model.predict_one(x) for x in self.features]

        def ask(i: int) -> str | None:
            x = self.features[i % len(self.features)]
            try:
                response = requests.post(self.url + "/api/predict/", json={"model": name, "features": x},
                                         headers=self.headers, timeout=30)
            except requests.RequestException as error:
                return f"predict raised {error!r}"
            if response.status_code not in (200, 201):
                return f"predict answered {response.status_code}: {response.text[:200]}"
            got = response.json().get("prediction")
            if type(got) is not float or got != pytest.approx(expected[i % len(expected)], rel=1e-9):
                return f"LinearRegression predicted {got!r} instead of {expected[i % len(expected)]!r}"
            return None

        with ThreadPoolExecutor(8) as pool:
            answers = [a for a in pool.map(ask, range(n_requests)) if a]
        return sorted(set(answers))

    def assert_healthy(self) -> None:
        problems = self.problems()
        assert not problems, "The attack left the server damaged:\n- " + "\n- ".join(problems)

    # Requests ------------------------------------------------------------------------------

    def upload_reference(self, name: str) -> None:
        response = requests.post(f"{self.url}/api/model/regression/{name}/", data=pickle.dumps(self.model),
                                 headers={**self.headers, "Content-Type": "application/octet-stream"},
                                 timeout=UPLOAD_ANSWER_SECONDS)
        assert response.status_code == 201, response.text

    def upload(self, payload: bytes, flavor: str = "regression", timeout: float = UPLOAD_ANSWER_SECONDS
               ) -> tuple[str, requests.Response]:
        return self._post(flavor, timeout, data=payload,
                          headers={**self.headers, "Content-Type": "application/octet-stream"})

    def upload_spec(self, spec: dict, flavor: str, timeout: float = BOMB_ANSWER_SECONDS
                    ) -> tuple[str, requests.Response]:
        return self._post(flavor, timeout, json=spec, headers=self.headers)

    def _post(self, flavor: str, timeout: float, **kwargs) -> tuple[str, requests.Response]:
        name = f"attack-{uuid.uuid4().hex[:10]}"
        self.created.append(name)
        started = time.monotonic()
        try:
            response = requests.post(f"{self.url}/api/model/{flavor}/{name}/", timeout=timeout, **kwargs)
        except requests.RequestException as error:
            time.sleep(0.5)  # let gunicorn log what happened to the worker
            trouble = [line for line in self.new_log().splitlines() if WORKER_TROUBLE.search(line)]
            pytest.fail(f"The upload got no answer after {time.monotonic() - started:.1f} s: {error!r}; "
                        f"server log: {' | '.join(trouble[-4:]) or '(nothing)'}")
        return name, response

    def download(self, name: str) -> bytes:
        response = requests.get(f"{self.url}/api/model/download/{name}/", headers=self.headers, timeout=60)
        assert response.status_code == 200, response.text
        return response.content

    def model_names(self) -> list[str]:
        return requests.get(self.url + "/api/models/", headers=self.headers, timeout=10).json()["models"]

    def delete_created(self) -> None:
        for name in self.created:
            try:
                requests.delete(f"{self.url}/api/model/{name}/", headers=self.headers, timeout=10)
            except requests.RequestException:
                pass
        self.created.clear()


MIGRATE_AND_MAKE_TOKEN = """
import django
from django.core.management import call_command
django.setup()
call_command("migrate", verbosity=0)
call_command("river_token", "mallory", "--create-user")
"""


def live_env(workdir: Path) -> dict[str, str]:
    """The example site on the shelve store, authentication on, the limits pinned."""
    env = site_environment(workdir, data_dir=workdir / "live-data")
    env.update({"DJANGO_RIVER_ML_STORAGE_BACKEND": "shelve", "DJANGO_RIVER_ML_DISABLE_AUTHENTICATION": "false"})
    env.update({f"DJANGO_RIVER_ML_{name}": str(value) for name, value in PINNED_LIMITS.items()})
    return env


@pytest.fixture(scope="module")
def attacked_server(tmp_path_factory):
    """One live server for the module: 2 gunicorn workers, authentication on, one user's token,
    and a reference model (StandardScaler | LinearRegression) every health check asks."""
    workdir = tmp_path_factory.mktemp("attacked-server")
    env = live_env(workdir)
    # `manage.py migrate` then `manage.py river_token mallory --create-user`, in one Django start-up.
    token = subprocess.run([sys.executable, "-c", MIGRATE_AND_MAKE_TOKEN], cwd=EXAMPLE_PROJECT, env=env,
                           capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    live = LiveServer(env, WORKERS, workdir)
    try:
        attacked = AttackedServer(live.start(), token).started()
        attacked.upload_reference(attacked.reference)
        yield attacked
    finally:
        live.stop()


@pytest.fixture
def server(attacked_server):
    """The shared server, healthy: if an earlier attack damaged it (a patched class, a dead or
    pinned worker), it is healed first (see :meth:`AttackedServer.heal`), so each test sees only
    its own attack's effects."""
    if attacked_server.damaged:
        attacked_server.heal()
    yield attacked_server
    attacked_server.delete_created()
    attacked_server.damaged = attacked_server.problems()


@pytest.fixture
def marker(tmp_path) -> Path:
    """Where the payloads aim: a file in this test's own tmp directory (not there yet)."""
    return tmp_path / "marker.txt"


def assert_refused(response: requests.Response, evidence: str = "", limit: bool = False) -> str:
    """A clean JSON 400/413 with a message (naming the limit hit when ``limit``); returns the message."""
    detail = f"{response.status_code} {response.text[:300]!r}" + (f"; {evidence}" if evidence else "")
    assert response.status_code in (400, 413), f"The attack upload was not refused with a 4xx: {detail}"
    assert response.headers.get("Content-Type", "").startswith("application/json"), detail
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"], detail
    if limit:
        assert any(name in body["message"] for name in LIMIT_SETTINGS), \
            f"The message names none of {LIMIT_SETTINGS}: {detail}"
    return body["message"]


def assert_not_stored(server: AttackedServer, name: str) -> None:
    assert name not in server.model_names(), f"the refused model {name} was stored anyway"


# ---------------------------------------------------------------------------------------------
# Attacks against the live server: one test each.


@live
def test_1a_type_from_mro_builds_a_river_named_path_class_that_writes_a_file(server, marker):
    name, response = server.upload(payload_type_builds_river_path_class(marker, "written by attack 1a"))
    assert_refused(response)
    assert not marker.exists(), f"attack 1a wrote {marker}: {marker.read_text()!r}"
    assert_not_stored(server, name)
    server.assert_healthy()


@live
def test_1b_base_rolling_forwards_write_text_to_a_path(server, marker):
    name, response = server.upload(payload_rolling_forwards_to_path(marker, "written by attack 1b"))
    assert_refused(response)
    assert not marker.exists(), f"attack 1b wrote {marker}: {marker.read_text()!r}"
    assert_not_stored(server, name)
    server.assert_healthy()


@live
def test_2_file_read_into_a_model_attribute_and_downloaded(server, marker):
    secret = f"marker-{uuid.uuid4().hex}".encode()
    marker.write_bytes(secret)
    name, response = server.upload(payload_file_read_into_model(marker))
    evidence = ""
    if response.status_code == 201:
        evidence = f"the downloaded model contains the file's content: {secret in server.download(name)}"
    assert_refused(response, evidence)
    assert_not_stored(server, name)
    server.assert_healthy()


@live
def test_3_build_with_slot_state_patches_linear_regression_in_the_worker(server):
    payload = payload_patch_class_with_slot_state()
    # Several at once, so that both workers get one.
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: server.upload(payload), range(4)))
    for name, response in answers:
        assert_refused(response)
        assert_not_stored(server, name)
    # A normal model uploaded afterwards predicts correctly on every worker.
    fresh = f"after-patch-{uuid.uuid4().hex[:8]}"
    server.created.append(fresh)
    server.upload_reference(fresh)
    wrong = server.wrong_predictions(fresh)
    assert not wrong, f"LinearRegression.predict_one stayed patched in the worker: {wrong}"
    server.assert_healthy()


@live
def test_4_uninitialised_numpy_array_leaks_heap_memory(server):
    name, response = server.upload(payload_uninitialised_array())
    evidence = ""
    if response.status_code == 201:
        leaked = pickle.loads(server.download(name)).notes  # our own test server's pickle
        evidence = (f"the download holds {leaked.size} bytes of uninitialised memory, "
                    f"{int((leaked != 0).sum())} of them non-zero, e.g. {bytes(leaked[:32]).hex()}")
    assert_refused(response, evidence)
    assert_not_stored(server, name)
    server.assert_healthy()


@live
def test_5_deeply_nested_tuple_as_dict_key_overflows_the_c_stack(server):
    payload = payload_deep_tuple_dict_key()
    assert 1_000_000 < len(payload) < 1_100_000
    name, response = server.upload(payload)
    assert_refused(response)
    assert_not_stored(server, name)
    server.assert_healthy()


@live
def test_6a_tiny_pickle_allocates_300_mb(server):
    payload = payload_bytes_bomb()
    assert len(payload) - len(real_linear_regression()) < 50
    name, response = server.upload(payload, timeout=BOMB_ANSWER_SECONDS)
    # Refused before the call: builtins.bytes is no constructor a model's pickle may call.
    message = assert_refused(response)
    assert "builtins.bytes" in message or any(limit in message for limit in LIMIT_SETTINGS), message
    assert_not_stored(server, name)
    server.assert_healthy()


@live
def test_6b_shared_structure_list_explodes_when_walked(server):
    payload = payload_shared_structure()
    assert len(payload) - len(real_linear_regression()) < 1000
    name, response = server.upload(payload, timeout=BOMB_ANSWER_SECONDS)
    assert_refused(response)
    # Nothing to walk: the model's JSON view answers at once (404: no such model).
    assert requests.get(f"{server.url}/api/model/{name}/", headers=server.headers, timeout=10).status_code == 404
    server.assert_healthy()


@live
def test_6c_dunder_keys_in_state_steer_the_servers_own_pickling(server):
    name, response = server.upload(payload_dunder_state())
    assert_refused(response)
    assert_not_stored(server, name)
    server.assert_healthy()


@live
@pytest.mark.parametrize("bomb", sorted(SPEC_BOMBS))
def test_7_json_spec_bomb_is_refused_by_a_limit(server, bomb):
    flavor, spec = SPEC_BOMBS[bomb]
    name, response = server.upload_spec(spec, flavor)
    assert_refused(response, limit=True)
    assert_not_stored(server, name)
    server.assert_healthy()


# ---------------------------------------------------------------------------------------------
# The same pickles through DjangoClient().upload_model, in this process.


@pytest.fixture
def in_process_client(settings, tmp_path):
    """DjangoClient on an empty embedded store in tmp_path, with the limits pinned."""
    from django_river_ml.client import DjangoClient
    from django_river_ml.storage import get_store

    settings.DJANGO_RIVER_ML = {"DATA_DIR": str(tmp_path / "data"), "STORAGE_BACKEND": "shelve",
                                "DISABLE_AUTHENTICATION": True, "ALLOWED_MODEL_MODULES": [], **PINNED_LIMITS}
    store = get_store()
    store.flush()
    yield DjangoClient()
    store.flush()


IN_PROCESS_ATTACKS = {
    "1a-type-from-mro": lambda marker: payload_type_builds_river_path_class(marker, "written by attack 1a"),
    "1b-rolling-write": lambda marker: payload_rolling_forwards_to_path(marker, "written by attack 1b"),
    "2-file-read": payload_file_read_into_model,
    "3-class-patch": lambda marker: payload_patch_class_with_slot_state(),
    "4-uninitialised-array": lambda marker: payload_uninitialised_array(),
    "6a-bytes-bomb": lambda marker: payload_bytes_bomb(),
    "6b-shared-structure": lambda marker: payload_shared_structure(),
    "6c-dunder-state": lambda marker: payload_dunder_state(),
}


@pytest.mark.parametrize("attack", list(IN_PROCESS_ATTACKS))
def test_in_process_upload_model_refuses_without_side_effects(in_process_client, marker, attack):
    from django_river_ml.exceptions import InvalidModel, PayloadTooLarge

    if attack == "2-file-read":
        marker.write_text("marker content the model must not carry")
    existed = marker.exists()
    original = vars(linear_model.LinearRegression)["predict_one"]
    try:
        with pytest.raises((InvalidModel, PayloadTooLarge)) as refused:
            in_process_client.upload_model(IN_PROCESS_ATTACKS[attack](marker), "regression")
        assert refused.value.message
    finally:
        patched = vars(linear_model.LinearRegression)["predict_one"]
        if patched is not original:  # undo it before anything else in this process predicts
            linear_model.LinearRegression.predict_one = original
    assert patched is original, f"the upload set LinearRegression.predict_one to {patched!r} in this process"
    assert marker.exists() == existed, f"the upload wrote {marker}"
    assert in_process_client.models() == []


IN_PROCESS_DEEP_TUPLE = """
import sys
import django
django.setup()
from django_river_ml.client import DjangoClient
from django_river_ml.exceptions import InvalidModel, PayloadTooLarge
try:
    DjangoClient().upload_model(open(sys.argv[1], "rb").read(), "regression")
except (InvalidModel, PayloadTooLarge) as error:
    print("REFUSED", error.message)
    sys.exit(0)
print("ACCEPTED")
sys.exit(3)
"""


def test_in_process_upload_model_refuses_the_deep_tuple_without_crashing(tmp_path):
    """Attack 5 through DjangoClient().upload_model, in a child Python process of its own (same
    settings as the live server): a SIGSEGV must not take the test run down with it."""
    payload = tmp_path / "deep-tuple.pickle"
    payload.write_bytes(payload_deep_tuple_dict_key())
    env = {**live_env(tmp_path), "DJANGO_RIVER_ML_DISABLE_AUTHENTICATION": "true"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(EXAMPLE_PROJECT), env["PYTHONPATH"]])
    done = subprocess.run([sys.executable, "-c", IN_PROCESS_DEEP_TUPLE, str(payload)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("REFUSED"), \
        f"exit status {done.returncode} (-11 is SIGSEGV): {done.stdout[-500:]} {done.stderr[-1500:]}"


# ---------------------------------------------------------------------------------------------
# Found by a red team with one token against the new loading path. Each model hides its payload
# behind a "gate" (a StatImputer of a feature the sandbox's trial never sends), so the trial passes
# and the payload first runs in the server, when a request carries that feature.


def gated(*steps):
    from river import compose, preprocessing, stats

    return compose.Pipeline(preprocessing.StatImputer(("boom", stats.Mean())), *steps)


def payload_rust_panic() -> bytes:
    """A Rust statistic built with an invalid quantile (the Python check bypassed): it panics when updated,
    and pyo3's PanicException is a BaseException that ``except Exception`` lets through (a bare 500, a log
    entry never rejected, the model broken for good)."""
    from river import compose, preprocessing, stats
    from river._river_rust import stats as rust_stats

    quantile = stats.RollingQuantile(q=0.5, window_size=5)
    quantile.q = 2.0
    quantile._rolling_quantile = rust_stats.RsRollingQuantile(2.0, 5)
    return pickle.dumps(compose.Pipeline(preprocessing.StatImputer(("boom", quantile)),
                                         linear_model.LinearRegression()), protocol=4)


def payload_uninterruptible_rust_call() -> bytes:
    """A defaultdict whose factory is ``partial(expected_mutual_info, confusion_matrix)``: one call into Rust
    that runs for ~k*N steps and allocates ~12*N bytes, which no time limit interrupts (37 s, 2.5 GB)."""
    import collections
    import functools

    from river import metrics, preprocessing
    from river.metrics.expected_mutual_info import expected_mutual_info

    matrix = metrics.ConfusionMatrix()
    matrix.sum_row = {i: 12_500.0 for i in range(800)}
    matrix.sum_col = {i: 12_500.0 for i in range(800)}
    matrix.n_samples = 10**7
    scaler = preprocessing.StandardScaler()
    scaler.vars = collections.defaultdict(functools.partial(expected_mutual_info, matrix))
    return pickle.dumps(gated(scaler, linear_model.LinearRegression()), protocol=4)


def payload_file_oracle(path: str) -> bytes:
    """A river drift dataset pointed at any file, iterated by a defaultdict factory (``deque(dataset)``):
    the server opens the file, outside the sandbox (existence, permissions, line counts; a FIFO hangs)."""
    import collections
    import functools

    from river import drift, preprocessing

    dataset = drift.datasets.AirlinePassengers()
    dataset.directory, dataset.filename = os.path.dirname(path), os.path.basename(path)
    scaler = preprocessing.StandardScaler()
    scaler.vars = collections.defaultdict(functools.partial(collections.deque, dataset))
    return pickle.dumps(gated(scaler, linear_model.LinearRegression()), protocol=4)


def payload_bagging_factory() -> bytes:
    """A defaultdict whose factory builds ``BaggingRegressor(model, n_models=200000)`` on every missing key."""
    import collections
    import functools

    from river import ensemble, preprocessing

    scaler = preprocessing.StandardScaler()
    scaler.vars = collections.defaultdict(functools.partial(
        ensemble.BaggingRegressor, linear_model.LinearRegression(), 200_000))
    return pickle.dumps(gated(scaler, linear_model.LinearRegression()), protocol=4)


def payload_held_public_method() -> bytes:
    """A defaultdict whose factory is a model's public ``clone``: a copy of the model per missing key."""
    import collections

    from river import preprocessing

    big = linear_model.LinearRegression()
    scaler = preprocessing.StandardScaler()
    scaler.vars = collections.defaultdict(big.clone)
    return pickle.dumps(gated(scaler, linear_model.LinearRegression()), protocol=4)


@live
@pytest.mark.parametrize("payload", [payload_uninterruptible_rust_call, payload_bagging_factory,
                                     payload_held_public_method], ids=["rust-call", "bagging", "public-method"])
def test_red_team_callables_a_model_may_not_hold_are_refused(server, payload):
    name, response = server.upload(payload())
    message = assert_refused(response)
    assert "may not" in message or "too large" in message, message
    assert_not_stored(server, name)
    server.assert_healthy()


@live
def test_red_team_drift_dataset_file_oracle_is_refused(server, marker):
    marker.write_text("a line\nanother line\n")
    name, response = server.upload(payload_file_oracle(str(marker)))
    assert "river.drift.datasets" in assert_refused(response)
    assert_not_stored(server, name)
    server.assert_healthy()


@live
def test_red_team_rust_panic_is_a_json_400_and_leaves_the_model_usable(server):
    name, response = server.upload(payload_rust_panic())
    assert response.status_code == 201, response.text  # a model: only its Rust part is broken

    def send(route: str, features: dict) -> requests.Response:
        body = {"model": name, "features": features, **({"ground_truth": 1.0} if route == "learn" else {})}
        return requests.post(f"{server.url}/api/{route}/", json=body, headers=server.headers, timeout=30)

    for value in (1.0, 2.0):  # two values in its window: from now on, imputing one panics in Rust
        assert send("learn", {"boom": value, "x": 1.0}).status_code == 201
    for route in ("learn", "predict"):
        answer = send(route, {"boom": None, "x": 1.0})
        assert answer.status_code == 400, (route, answer.status_code, answer.text[:300])
        assert answer.headers["Content-Type"].startswith("application/json")
        assert "PanicException" in answer.json()["message"]
    # The panicking learn was rejected on every worker: the model still learns and predicts.
    for _ in range(4):
        assert send("learn", {"boom": 3.0, "x": 1.0}).status_code == 201
        assert send("predict", {"boom": 3.0, "x": 1.0}).status_code in (200, 201)
    server.assert_healthy()


def test_red_team_names_that_reach_io_are_not_allowed():
    from django_river_ml.allowlist import NotAllowed, resolve_global

    for module, name in (("river.drift.datasets.airline_passengers", "AirlinePassengers"),
                         ("river.drift.datasets.base", "FileDataset"), ("river.time_series", "evaluate"),
                         ("river.time_series", "iter_evaluate")):
        with pytest.raises(NotAllowed):
            resolve_global(module, name)
