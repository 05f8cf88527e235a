"""One upload, inside the confined process: load or build, check, try, and hand back plain data.

Runs in a process forked from the sandbox's zygote (never from the server),
after :func:`django_river_ml.sandbox.confine.confine`. The model is encoded
*before* it is tried, so what goes back is the model as uploaded, not the model
after the trial rows.
"""

from __future__ import annotations

import json
import signal
from typing import Any

from django_river_ml.exceptions import InvalidModel, RiverMLError

# Rows a model is tried on: numbers first, then text (a TFIDF pipeline reads a "text" field).
TRIAL_ROWS = ({"x1": 0.5, "x2": -1.25, "x3": 2.0}, {"text": "a short trial text"})
# Model data (JSON) is about twice the size of a pickle: what may travel back before the server
# measures the stored size against MAX_MODEL_BYTES.
DATA_SIZE_FACTOR = 4
TRIAL_TARGETS = {"regression": 1.5, "binary": True, "multiclass": "a", "custom": 1.0}


class LimitHit(BaseException):
    """A limit of the sandbox was reached (BaseException: model code's ``except Exception`` cannot eat it)."""

    def __init__(self, setting: str, message: str):
        super().__init__(message)
        self.setting = setting
        self.message = message


def _on_cpu_limit(signum, frame):
    raise LimitHit("SANDBOX_CPU_SECONDS", "took more CPU time to load and try than SANDBOX_CPU_SECONDS allows")


def _on_trial_timer(signum, frame):
    raise LimitHit("TRIAL_SECONDS", "took longer to learn and predict one row than TRIAL_SECONDS allows")


def trial(model: Any, flavor, seconds: float) -> str:
    """Learn two rows and predict one, under a timer; say how it went."""
    target = TRIAL_TARGETS.get(flavor.name) if flavor.supervised or flavor.name == "custom" else None
    signal.signal(signal.SIGALRM, _on_trial_timer)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        for row in TRIAL_ROWS:
            try:
                flavor.learn(model, dict(row), target)
                flavor.learn(model, dict(row), target)
                flavor.predict(model, dict(row))
            except Exception:  # noqa: BLE001 - the model wants other features: try the next row
                continue
            return "passed"
        return "raised on the trial rows"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def run(request: dict, payload: bytes) -> tuple[dict, bytes]:
    """The answer to one request: a header and, when it worked, the model data."""
    from django_river_ml import modeldata
    from django_river_ml.flavors import get_flavor
    from django_river_ml.loading import load_model
    from django_river_ml.specs import build_model

    prefixes = tuple(request["prefixes"])
    signal.signal(signal.SIGXCPU, _on_cpu_limit)
    reserve = bytearray(2 * 1024 * 1024)  # freed to report a MemoryError
    try:
        flavor = get_flavor(request["flavor"])
        if request["kind"] == "spec":
            model = build_model(json.loads(payload))
        else:
            model = load_model(payload, prefixes)
        flavor.check(model)
        try:
            data = modeldata.encode(model, prefixes)
        except modeldata.NotData as error:
            raise InvalidModel(f"The model cannot be stored: {error}.") from None
        if len(data) > DATA_SIZE_FACTOR * request["max_model_bytes"]:  # the server measures it exactly
            raise LimitHit("MAX_MODEL_BYTES", f"is far larger than MAX_MODEL_BYTES ({request['max_model_bytes']}) "
                                              "allows")
        outcome = trial(model, flavor, request["trial_seconds"])
        return {"ok": True, "trial": outcome, "bytes": len(data)}, data
    except LimitHit as limit:
        return {"ok": False, "setting": limit.setting, "message": f"The model {limit.message}."}, b""
    except RiverMLError as error:
        return {"ok": False, "error": type(error).__name__, "message": error.message}, b""
    except MemoryError:
        del reserve
        return {"ok": False, "setting": "SANDBOX_MEMORY_BYTES",
                "message": "The model needed more memory to load and try than SANDBOX_MEMORY_BYTES allows."}, b""
    except RecursionError:
        return {"ok": False, "message": "The model is nested too deeply."}, b""
    except Exception as error:  # noqa: BLE001 - whatever the upload made river raise
        return {"ok": False, "message": f"The model could not be loaded ({type(error).__name__}: {error})."[:500]}, b""
