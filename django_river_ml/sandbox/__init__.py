"""Load uploads outside the server: a confined process turns untrusted bytes into plain model data.

No byte of an uploaded pickle is unpickled in a server process. :class:`Sandbox`
starts a zygote (:mod:`~django_river_ml.sandbox.zygote`) with ``subprocess`` —
a fresh interpreter, not a fork of the server, with an empty working directory
and an environment of a few harmless variables — and sends it each upload. The
zygote forks one job per upload, which confines itself
(:mod:`~django_river_ml.sandbox.confine`: resource limits, a network namespace,
Landlock, seccomp), loads the pickle with the hardened unpickler
(:mod:`~django_river_ml.loading`) or builds the JSON spec, tries the model on
a made-up row under a timer, and answers with the model as data
(:mod:`~django_river_ml.modeldata`), which the server rebuilds.

>>> from river import linear_model
>>> import pickle
>>> sandbox = Sandbox()
>>> result = sandbox.load(pickle.dumps(linear_model.LinearRegression()), "regression")
>>> result.trial
'passed'
>>> type(result.model).__name__
'LinearRegression'
>>> sandbox.close()
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
from dataclasses import dataclass
from importlib import util as import_util
from typing import Any

from django_river_ml.exceptions import InvalidModel, ModelTooLarge, RiverMLError
from django_river_ml.sandbox.zygote import answer_limit, read_message, write_message

# Environment variables the zygote may see: none of them is a secret. OpenBLAS's are kept because
# some processors need them for numpy to run correctly.
PASSED_ENVIRONMENT = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "LANG", "LC_ALL", "TZ")

BOOTSTRAP = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from django_river_ml.sandbox.zygote import main; main()"
)


def _reported_errors() -> dict[str, type]:
    from django_river_ml.exceptions import UnknownFlavor
    from django_river_ml.loading import UnsafeModel

    return {cls.__name__: cls for cls in (InvalidModel, UnsafeModel, UnknownFlavor)}


class SandboxLimit(InvalidModel):
    """The upload hit a limit of the sandbox (the message names the setting)."""


class SandboxUnavailable(RiverMLError):
    """The sandbox process could not be started or stopped answering."""

    status_code = 503


@dataclass
class LoadResult:
    """An upload turned into a model: the data the sandbox handed back, rebuilt here."""

    model: Any
    data: bytes
    trial: str
    confined: dict


def _readable_paths(prefixes: tuple[str, ...]) -> list[str]:
    """Where the job may read: the standard library, site-packages, this app, the site's model modules."""
    paths = {sysconfig.get_path(name) for name in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths.add(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # django_river_ml
    for prefix in prefixes:
        try:
            spec = import_util.find_spec(prefix.split(".")[0])
        except (ImportError, ValueError):
            spec = None
        if spec is not None:
            paths.update(spec.submodule_search_locations or [os.path.dirname(spec.origin or "")])
    paths.update(p for p in ("/usr/lib", "/lib", "/lib64", "/usr/lib64") if os.path.isdir(p))
    return sorted(p for p in paths if p and os.path.exists(p))


class Sandbox:
    """One zygote process and the lock that keeps its conversation one request at a time.

    Made once per server process (:func:`get_sandbox`); started at the first upload
    (or at start-up with ``SANDBOX_PREWARM``) and again if it ever dies.
    """

    def __init__(self, settings=None):
        if settings is None:
            from django_river_ml.settings import river_settings as settings
        self.settings = settings
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._workdir: str | None = None
        self._pid = os.getpid()

    # Lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            self._ensure_started()

    def _ensure_started(self) -> subprocess.Popen:
        if self._process is not None and self._process.poll() is None and self._pid == os.getpid():
            return self._process
        self._stop()
        self._pid = os.getpid()
        self._workdir = tempfile.mkdtemp(prefix="river-ml-sandbox-")
        environment = {name: os.environ[name] for name in PASSED_ENVIRONMENT if name in os.environ}
        environment.update({"PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                            "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"})
        paths = list(dict.fromkeys(p for p in sys.path if p and os.path.exists(p)))
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-B", "-c", BOOTSTRAP, json.dumps(paths),
                 json.dumps(list(self.settings.ALLOWED_MODEL_MODULES))],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=self._workdir, env=environment,
                close_fds=True, start_new_session=True,
            )
            header, _ = read_message(process.stdout, max_body=0)
        except (OSError, EOFError, ValueError) as error:
            self._stop()
            raise SandboxUnavailable(f"The model loader could not be started ({error}).") from None
        if not header.get("ready"):
            self._stop()
            raise SandboxUnavailable("The model loader did not start.")
        self._process = process
        return process

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and self._pid == os.getpid():
            for stream in (process.stdin, process.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        if self._workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    # Loading -------------------------------------------------------------------

    def load(self, payload: bytes, flavor: str) -> LoadResult:
        """Load an uploaded pickle (plain or dill) in the sandbox and rebuild it here."""
        return self._run("pickle", payload, flavor)

    def build(self, spec: Any, flavor: str) -> LoadResult:
        """Build a JSON model spec in the sandbox (specs are bombs too: ``n_models=200000``)."""
        try:
            payload = json.dumps(spec, allow_nan=False).encode()
        except (TypeError, ValueError, RecursionError):
            raise InvalidModel("The model spec is not plain JSON.") from None
        return self._run("spec", payload, flavor)

    def _run(self, kind: str, payload: bytes, flavor: str) -> LoadResult:
        from django_river_ml.modeldata import BadModelData, rebuild

        settings = self.settings
        prefixes = tuple(settings.ALLOWED_MODEL_MODULES)
        request = {
            "kind": kind, "flavor": flavor, "prefixes": list(prefixes),
            "memory_bytes": int(settings.SANDBOX_MEMORY_BYTES), "cpu_seconds": int(settings.SANDBOX_CPU_SECONDS),
            "timeout_seconds": float(settings.SANDBOX_TIMEOUT_SECONDS), "trial_seconds": float(settings.TRIAL_SECONDS),
            "max_model_bytes": int(settings.MAX_MODEL_BYTES), "readable": _readable_paths(prefixes),
        }
        header, data = self._exchange(request, payload)
        if not header.get("ok"):
            message = str(header.get("message") or "The model could not be loaded.")[:1000]
            if header.get("setting") == "MAX_MODEL_BYTES":
                raise ModelTooLarge(message)
            if header.get("setting"):
                raise SandboxLimit(message)
            raise REPORTED_ERRORS.get(header.get("error"), InvalidModel)(message)
        try:
            model = rebuild(data, prefixes)
        except BadModelData as error:
            raise InvalidModel(f"The model cannot be used: {error}") from None
        return LoadResult(model=model, data=data, trial=str(header.get("trial")),
                          confined=header.get("confined") or {})

    def _exchange(self, request: dict, payload: bytes) -> tuple[dict, bytes]:
        with self._lock:
            for attempt in range(2):  # a zygote that died since the last upload is started again once
                process = self._ensure_started()
                try:
                    write_message(process.stdin, request, payload)
                    return read_message(process.stdout, max_body=answer_limit(request))
                except (OSError, EOFError, ValueError) as error:
                    self._stop()
                    if attempt:
                        raise SandboxUnavailable(f"The model loader stopped answering ({error}).") from None
        raise SandboxUnavailable("The model loader stopped answering.")


REPORTED_ERRORS = _reported_errors()

_sandbox: Sandbox | None = None
_sandbox_lock = threading.Lock()


def get_sandbox() -> Sandbox:
    """This process's sandbox (made again in a forked child, whose parent's zygote is not its own)."""
    global _sandbox
    with _sandbox_lock:
        if _sandbox is None or _sandbox._pid != os.getpid():
            _sandbox = Sandbox()
        return _sandbox


def prewarm(**kwargs) -> None:
    """``request_started`` receiver: with ``SANDBOX_PREWARM``, start this process's zygote in the background."""
    from django.core.signals import request_started

    request_started.disconnect(prewarm, dispatch_uid="django_river_ml.sandbox.prewarm")
    from django_river_ml.settings import river_settings

    if river_settings.SANDBOX_PREWARM:
        threading.Thread(target=_start_quietly, name="river-ml-sandbox-prewarm", daemon=True).start()


def _start_quietly() -> None:
    try:
        get_sandbox().start()
    except RiverMLError:  # the first upload will say so
        pass


def reset_sandbox() -> None:
    """Stop this process's zygote (settings changed, or tests want a fresh one)."""
    global _sandbox
    with _sandbox_lock:
        if _sandbox is not None and _sandbox._pid == os.getpid():
            _sandbox.close()
        _sandbox = None
