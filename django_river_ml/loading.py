"""Load uploaded models without running code from the upload.

A pickle is a program: every global it names is imported and may be called.
:class:`RestrictedUnpickler` only resolves globals that live in river (or a
module the site allows through ``ALLOWED_MODEL_MODULES``) plus the handful of
standard-library helpers river objects need, and it replaces the two dill
helpers that would otherwise hand out arbitrary types and attributes with
gated versions. Anything else is refused with :class:`UnsafeModel` naming the
global, before it is imported.

>>> import pickle
>>> from river import linear_model
>>> model = load_model(pickle.dumps(linear_model.LinearRegression()))
>>> type(model).__name__
'LinearRegression'
>>> load_model(pickle.dumps(print))
Traceback (most recent call last):
...
django_river_ml.loading.UnsafeModel: The upload refers to builtins.print, which a model may not use: ...
"""

from __future__ import annotations

import collections
import copy
import functools
import importlib
import io
import operator
import pickle
import random
import statistics
import types
from typing import Any

from django_river_ml.exceptions import InvalidModel
from django_river_ml.settings import river_settings

RIVER_MODULES = ("river",)

# Parts of river that read or write files or the network (river.stream.iter_csv reads any file
# into the model, to be downloaded later); no model needs them.
RIVER_IO_MODULES = ("river.stream", "river.datasets", "river.bandit.datasets", "river.evaluate", "river.checks")

# Exact (module, name) globals that river objects are pickled with.
SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "Counter"): collections.Counter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("collections", "deque"): collections.deque,
    ("copy", "deepcopy"): copy.deepcopy,
    ("functools", "partial"): functools.partial,
    ("operator", "itemgetter"): operator.itemgetter,
    ("random", "Random"): random.Random,
    ("random", "Random.gauss"): random.Random.gauss,
    ("statistics", "NormalDist"): statistics.NormalDist,
    ("builtins", "int"): int,
    ("builtins", "float"): float,
    ("builtins", "complex"): complex,
    ("builtins", "bool"): bool,
    ("builtins", "str"): str,
    ("builtins", "bytes"): bytes,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "tuple"): tuple,
    ("builtins", "list"): list,
    ("builtins", "dict"): dict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "range"): range,
    ("builtins", "object"): object,
}

# Type names dill's ``_load_type`` may hand out (what real river pickles use).
SAFE_DILL_TYPES: dict[str, type] = {
    "PartialType": functools.partial,
    "ItemGetterType": operator.itemgetter,
    "MethodType": types.MethodType,
    "NoneType": type(None),
    "int": int,
    "float": float,
    "complex": complex,
    "bool": bool,
    "str": str,
    "bytes": bytes,
    "tuple": tuple,
    "list": list,
    "dict": dict,
    "set": set,
    "frozenset": frozenset,
}

# numpy arrays inside a model need these reconstruct helpers, by exact name.
NUMPY_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.dtypes", "Float64DType"),
    ("numpy.dtypes", "Int64DType"),
    ("numpy.random._pickle", "__randomstate_ctor"),
    ("numpy.random._pickle", "__generator_ctor"),
    ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._mt19937", "MT19937"),
    ("numpy.random.mtrand", "RandomState"),
    # dill's numpy array helper: calls a reconstructor that itself went through find_class.
    ("dill._dill", "_create_array"),
}

_SAFE_BUILTIN_TYPES = (int, float, complex, bool, str, bytes, tuple, list, dict, set, frozenset)


class UnsafeModel(InvalidModel):
    """The upload names a global outside the allow-list."""


def allowed_module_prefixes() -> tuple[str, ...]:
    return RIVER_MODULES + tuple(river_settings.ALLOWED_MODEL_MODULES)


def in_modules(module: str, prefixes: tuple[str, ...]) -> bool:
    """Whether ``module`` is one of ``prefixes`` or inside one of them."""
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _in_allowed_module(module: str | None, prefixes: tuple[str, ...]) -> bool:
    return bool(module) and in_modules(module, prefixes) and not in_modules(module, RIVER_IO_MODULES)


def _refuse(what: str) -> UnsafeModel:
    extra = allowed_module_prefixes()[len(RIVER_MODULES):]
    allowed = "river" + (f" and {', '.join(extra)}" if extra else "")
    return UnsafeModel(
        f"The upload refers to {what}, which a model may not use: only classes and functions from "
        f"{allowed} are allowed. Use named classes and functions from an allowed module (no lambdas "
        "or local functions), or ask the site to add the module to ALLOWED_MODEL_MODULES."
    )


def _is_allowed_object(obj: Any, prefixes: tuple[str, ...]) -> bool:
    """A class or function defined in an allowed module, or an instance of one."""
    if isinstance(obj, types.ModuleType):
        return False
    if isinstance(obj, type):
        return obj in _SAFE_BUILTIN_TYPES or _in_allowed_module(obj.__module__, prefixes)
    if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType)):
        return _in_allowed_module(getattr(obj, "__module__", None), prefixes)
    return isinstance(obj, (*_SAFE_BUILTIN_TYPES, random.Random)) or _in_allowed_module(
        type(obj).__module__, prefixes
    )


def _gated_getattr(prefixes: tuple[str, ...]):
    def safe_getattr(obj: Any, name: str, *default: Any) -> Any:
        if not isinstance(name, str) or name.startswith("__"):
            raise _refuse(f"the attribute {name!r}")
        if not _is_allowed_object(obj, prefixes):
            raise _refuse(f"an attribute of {type(obj).__module__}.{type(obj).__qualname__}")
        # "{0.x.y}".format(obj) walks any attribute chain (str.lower and the like are fine).
        if name in ("format", "format_map") and (
            isinstance(obj, _SAFE_BUILTIN_TYPES) or any(obj is t for t in _SAFE_BUILTIN_TYPES)
        ):
            owner = obj if isinstance(obj, type) else type(obj)
            raise _refuse(f"{owner.__qualname__}.{name}")
        value = getattr(obj, name, *default)
        if isinstance(value, types.ModuleType):
            raise _refuse(f"the module {value.__name__}")
        if isinstance(value, (type, types.FunctionType)) and not _is_allowed_object(value, prefixes):
            raise _refuse(f"{value.__module__}.{value.__qualname__}")
        return value

    return safe_getattr


def _gated_load_type(name: str) -> type:
    try:
        return SAFE_DILL_TYPES[name]
    except (KeyError, TypeError):
        raise _refuse(f"the type {name!r}") from None


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only allow-listed globals."""

    def __init__(self, file: io.BytesIO, prefixes: tuple[str, ...]):
        super().__init__(file)
        self.prefixes = prefixes

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in SAFE_GLOBALS:
            return SAFE_GLOBALS[key]
        if key in {("builtins", "getattr"), ("dill._dill", "_getattr")}:
            return _gated_getattr(self.prefixes)
        if key == ("dill._dill", "_load_type"):
            return _gated_load_type
        if key in NUMPY_GLOBALS:
            return super().find_class(module, name)
        if not _in_allowed_module(module, self.prefixes) or "__" in name:
            raise _refuse(f"{module}.{name}")
        try:
            obj: Any = importlib.import_module(module)
            for part in name.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError):
            raise InvalidModel(
                f"The upload refers to {module}.{name}, which this server does not have "
                "(is the same river version installed on both sides?)"
            ) from None
        # A name re-exported from elsewhere (river.x.os, river.x.system) is refused:
        # what it resolves to must be a class or function defined in an allowed module.
        if not callable(obj) or not _is_allowed_object(obj, self.prefixes):
            raise _refuse(f"{module}.{name}")
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise _refuse("a persistent id")


def load_model(data: bytes) -> Any:
    """Unpickle untrusted bytes (plain pickle or dill) with the allow-list."""
    if not data:
        raise InvalidModel("The request body is empty: send the pickled model as the body.")
    try:
        return RestrictedUnpickler(io.BytesIO(data), allowed_module_prefixes()).load()
    except InvalidModel:
        raise
    except RecursionError:
        raise InvalidModel("The upload is nested too deeply to be a model.") from None
    except Exception as error:  # any malformed stream: truncated, junk, wrong protocol
        raise InvalidModel(f"The upload is not a readable pickle: {type(error).__name__}: {error}") from None
