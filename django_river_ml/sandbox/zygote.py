"""The sandbox's zygote: a clean process that forks one confined job per upload.

The server starts it with :mod:`subprocess` (a fresh interpreter, ``-I``, an
empty working directory, an environment of a few harmless variables): it holds
no Django settings, secrets, database handles or request data of the server.
It imports numpy and river once, so each job costs a ``fork`` instead of the
1–2 s those imports take, and never looks inside the bytes it passes on.

Protocol on stdin/stdout, one request at a time: a 4-byte length and a JSON
header, an 8-byte length and the payload; the answer is the same shape. A job
that dies, is killed by a limit, or overruns its wall-clock time is reported
as such; the zygote itself carries on.
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import sys
import time

HEADER = struct.Struct("!I")
BODY = struct.Struct("!Q")
MAX_HEADER = 1 << 20


def answer_limit(request: dict) -> int:
    """The most bytes an answer to ``request`` may have."""
    from django_river_ml.sandbox.job import DATA_SIZE_FACTOR

    return DATA_SIZE_FACTOR * int(request["max_model_bytes"]) + MAX_HEADER


def read_exactly(stream, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_message(stream, max_body: int) -> tuple[dict, bytes]:
    (header_size,) = HEADER.unpack(read_exactly(stream, HEADER.size))
    if header_size > MAX_HEADER:
        raise ValueError("header too large")
    header = json.loads(read_exactly(stream, header_size))
    (body_size,) = BODY.unpack(read_exactly(stream, BODY.size))
    if body_size > max_body:
        raise ValueError("body too large")
    return header, read_exactly(stream, body_size)


def write_message(stream, header: dict, body: bytes = b"") -> None:
    encoded = json.dumps(header).encode()
    stream.write(HEADER.pack(len(encoded)) + encoded + BODY.pack(len(body)))
    stream.write(body)
    stream.flush()


def _address_space() -> int:
    """Bytes of address space this process already has mapped (the interpreter, numpy, river)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _job(request: dict, payload: bytes, write_end: int) -> None:
    """In the forked child: confine, run, write the answer, exit without cleanup."""
    status = 0
    try:
        from django_river_ml.sandbox import confine, job

        limits = confine.Limits(memory_bytes=_address_space() + int(request["memory_bytes"]),
                                cpu_seconds=int(request["cpu_seconds"]))
        report = confine.confine(limits, request["readable"])
        header, body = job.run(request, payload)
        header["confined"] = {"network_namespace": report.network_namespace, "landlock": report.landlock,
                              "seccomp": report.seccomp}
        with os.fdopen(write_end, "wb", closefd=False) as out:
            write_message(out, header, body)
    except BaseException:  # noqa: BLE001 - nothing may escape a forked child
        status = 1
        try:
            import traceback

            traceback.print_exc()  # to the server's log (the zygote shares its stderr)
        except BaseException:  # noqa: BLE001
            pass
    finally:
        os._exit(status)


def _collect(pid: int, read_end: int, deadline: float, max_answer: int) -> tuple[dict, bytes]:
    """Read the job's answer within its time and size limits, then reap it."""
    chunks, size, timed_out, too_big = [], 0, False, False
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([read_end], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(read_end, 1 << 20)
        if not chunk:
            break
        size += len(chunk)
        if size > max_answer:
            too_big = True
            break
        chunks.append(chunk)
    if timed_out or too_big:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    os.close(read_end)
    if timed_out:
        return {"ok": False, "setting": "SANDBOX_TIMEOUT_SECONDS",
                "message": "The model took longer to load and try than SANDBOX_TIMEOUT_SECONDS allows."}, b""
    if too_big:
        return {"ok": False, "setting": "MAX_MODEL_BYTES",
                "message": "The model is larger as data than MAX_MODEL_BYTES allows."}, b""
    data = b"".join(chunks)
    if os.WIFSIGNALED(status) or not data:
        signum = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
        if signum in (signal.SIGXCPU, signal.SIGKILL):
            return {"ok": False, "setting": "SANDBOX_CPU_SECONDS",
                    "message": "The model took more CPU time to load and try than SANDBOX_CPU_SECONDS allows."}, b""
        what = f"signal {signal.Signals(signum).name}" if signum else f"exit status {os.WEXITSTATUS(status)}"
        return {"ok": False, "crashed": what, "message": (
            f"The model crashed the loader ({what}); it may need more memory than SANDBOX_MEMORY_BYTES allows, "
            "or it is not a model.")}, b""
    try:
        (header_size,) = HEADER.unpack_from(data)
        header = json.loads(data[HEADER.size:HEADER.size + header_size])
        offset = HEADER.size + header_size
        (body_size,) = BODY.unpack_from(data, offset)
        body = data[offset + BODY.size:offset + BODY.size + body_size]
    except (struct.error, ValueError):
        return {"ok": False, "message": "The loader answered with something unreadable."}, b""
    if len(body) != body_size or not isinstance(header, dict):
        return {"ok": False, "message": "The loader answered with something unreadable."}, b""
    return header, body


def serve(stdin, stdout) -> None:
    while True:
        try:
            request, payload = read_message(stdin, max_body=1 << 40)
        except EOFError:
            return
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            _job(request, payload, write_end)
        os.close(write_end)
        deadline = time.monotonic() + float(request["timeout_seconds"])
        header, body = _collect(pid, read_end, deadline, answer_limit(request))
        write_message(stdout, header, body)


def main() -> None:
    """Entry point of the zygote process (see :mod:`django_river_ml.sandbox`)."""
    # Our working directory is an empty temporary one made for us: remove it now. We stay in it,
    # deleted, so nothing can be created there, and nothing is left behind however we end.
    try:
        os.rmdir(os.getcwd())
    except OSError:
        pass
    # No PR_SET_PDEATHSIG here: it fires when the *thread* that started us ends (a prewarm thread).
    # When the server process dies its end of our stdin closes, and serve() returns.
    import importlib

    import numpy  # noqa: F401 - every import a job needs happens here, once: a job is a fork of this
    import river

    from django_river_ml import flavors, loading, modeldata, specs  # noqa: F401
    from django_river_ml.allowlist import module_allowed
    from django_river_ml.sandbox import confine, job  # noqa: F401

    import pkgutil

    for module in pkgutil.iter_modules(river.__path__):
        name = module.name
        if not name.startswith("_") and module_allowed(f"river.{name}"):
            try:
                importlib.import_module(f"river.{name}")
            except ImportError:  # an optional dependency of that module is missing
                pass

    for prefix in json.loads(sys.argv[2]) if len(sys.argv) > 2 else []:
        try:
            __import__(prefix)
        except ImportError:
            pass
    write_message(sys.stdout.buffer, {"ready": True})
    serve(sys.stdin.buffer, sys.stdout.buffer)
