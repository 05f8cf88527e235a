"""Model classes that misbehave on purpose, for the sandbox tests (allowed through ALLOWED_MODEL_MODULES).

A site's allowed module is trusted code, so these stand in for what an attacker
would run if they ever got code execution inside the sandbox: each probe runs
while the sandbox unpickles it (``__setstate__``) or tries it (``learn_one``),
and records what the process let it do in its state, which comes back as data.
"""

from __future__ import annotations

import os
import socket
import time

from river import base


class Probe(base.Regressor):
    """Runs ``checks`` when unpickled in the sandbox and keeps what happened in ``seen``."""

    def __init__(self, checks=(), **targets):
        self.checks = list(checks)
        self.targets = dict(targets)
        self.seen = {}

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self.seen:  # probed already (in the sandbox): the server only rebuilds it
            return
        for check in self.checks:
            try:
                self.seen[check] = repr(getattr(self, f"_check_{check}")())
            except BaseException as error:  # noqa: BLE001 - what the sandbox raised is the result
                self.seen[check] = f"refused: {type(error).__name__}: {error}"[:200]

    def _check_write(self):
        with open(self.targets["write"], "w") as handle:
            handle.write("escaped")
        return "written"

    def _check_read(self):
        with open(self.targets["read"]) as handle:
            return handle.read()

    def _check_connect(self):
        with socket.create_connection(("127.0.0.1", int(self.targets["port"])), timeout=2):
            return "connected"

    def _check_fork(self):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        return "forked"

    def _check_environment(self):
        return sorted(os.environ)

    def _check_cwd(self):
        return sorted(os.listdir("."))

    def _check_kill_parent(self):
        os.kill(os.getppid(), 0)
        return "could signal"

    def learn_one(self, x, y):
        pass

    def predict_one(self, x):
        return 0.0


class Misbehaves(base.Regressor):
    """A regressor that does nothing when it learns or predicts; subclasses misbehave when unpickled."""

    def learn_one(self, x, y):
        pass

    def predict_one(self, x):
        return 0.0


class Spins(Misbehaves):
    """Burns CPU while it is unpickled."""

    def __setstate__(self, state):
        self.__dict__.update(state)
        while state.get("spin"):
            pass


class Sleeps(Misbehaves):
    """Sleeps while it is unpickled (wall-clock time, no CPU)."""

    def __setstate__(self, state):
        self.__dict__.update(state)
        time.sleep(state.get("sleep", 0))


class Hoards(Misbehaves):
    """Allocates memory while it is unpickled."""

    def __setstate__(self, state):
        self.__dict__.update(state)
        if state.get("hoard"):
            self.hoard = bytearray(state["hoard"])


class Crashes(Misbehaves):
    """Crashes the interpreter (a segmentation fault) while it is unpickled."""

    def __setstate__(self, state):
        self.__dict__.update(state)
        if state.get("crash"):
            import ctypes

            ctypes.string_at(0)


class SlowLearner(base.Regressor):
    """Learns slowly when a feature says so: a model that passes its trial and stalls later."""

    def __init__(self):
        self.n = 0

    def learn_one(self, x, y):
        if x.get("slow"):
            deadline = time.monotonic() + float(x["slow"])
            while time.monotonic() < deadline:  # Python code: a time limit can stop it
                pass
        self.n += 1

    def predict_one(self, x):
        if x.get("slow"):
            deadline = time.monotonic() + float(x["slow"])
            while time.monotonic() < deadline:
                pass
        return float(self.n)


class SlowTrial(Misbehaves):
    """Takes seconds on every learn: the sandbox's trial stops it."""

    def learn_one(self, x, y):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pass


class Hoarder(base.Regressor):
    """Keeps every example it learns: a model that grows without bound."""

    def __init__(self):
        self.seen = []

    def learn_one(self, x, y):
        self.seen.append(dict(x))

    def predict_one(self, x):
        return float(len(self.seen))


class Greedy(Misbehaves):
    """Grabs memory when a feature says so (at most ``x["hog"]`` MiB): a model that passes its trial."""

    def __init__(self):
        self.n = 0

    def learn_one(self, x, y):
        grabbed = [bytearray(1 << 20) for _ in range(int(x.get("hog", 0)))]
        del grabbed
        self.n += 1

    def predict_one(self, x):
        return float(self.n)
