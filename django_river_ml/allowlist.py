"""Which classes, functions and methods an uploaded model may consist of, by exact name.

Both the unpickler in the sandbox and the server's reader of model data ask
this module, so one list decides what an upload can be made of. A name is
resolved without ``getattr`` (which river's ``BaseRolling`` forwards anywhere):
modules are imported, then each part of a qualified name is looked up in the
``__dict__`` of what holds it, and the result must be *defined* where it was
named — a module re-exported through river (``river.x.os``) never resolves.

Allowed are river's classes and functions (not its dataset, stream and
evaluation modules, which read files and the network), those of the modules a
site lists in ``ALLOWED_MODEL_MODULES``, and a short list of standard-library
and numpy names that river objects are pickled with.

This module must not read Django settings: the sandbox process has none. The
site's module prefixes are passed in.

>>> resolve_global("river.linear_model.lin_reg", "LinearRegression").__name__
'LinearRegression'
>>> resolve_global("builtins", "eval")
Traceback (most recent call last):
...
django_river_ml.allowlist.NotAllowed: builtins.eval
>>> resolve_global("river.utils.rolling", "BaseRolling.__getattr__")
Traceback (most recent call last):
...
django_river_ml.allowlist.NotAllowed: river.utils.rolling.BaseRolling.__getattr__
"""

from __future__ import annotations

import collections
import copy
import functools
import importlib
import operator
import random
import statistics
import types
from typing import Any

RIVER_MODULES = ("river",)

# Parts of river that read or write files or the network; no model needs them. Any module named
# ``datasets`` (``river.drift.datasets`` reads any file it is pointed at) counts too.
RIVER_IO_MODULES = ("river.stream", "river.datasets", "river.bandit.datasets", "river.drift.datasets",
                    "river.evaluate", "river.checks", "river.compat", "river.api")

# Names defined outside those modules that reach into them (deprecated wrappers of river.evaluate).
RIVER_IO_NAMES = frozenset({"river.time_series.evaluate", "river.time_series.iter_evaluate"})

# river's Rust functions a model may hold (KNN's distance): the others are internal helpers, and a
# call into Rust cannot be stopped by the time limit (expected_mutual_info with a large n runs for
# minutes and allocates gigabytes).
RIVER_RUST_FUNCTIONS = frozenset({"river._river_rust.vectordict.euclidean_distance_tuple",
                                  "river._river_rust.vectordict.euclidean_distance_dict"})

# Standard-library classes that river objects hold, built by calling them (``Counter(data)``).
STDLIB_CLASSES: dict[str, type] = {
    "collections.Counter": collections.Counter,
    "collections.OrderedDict": collections.OrderedDict,
    "collections.defaultdict": collections.defaultdict,
    "collections.deque": collections.deque,
    "random.Random": random.Random,
    "statistics.NormalDist": statistics.NormalDist,
}

# Standard-library functions river objects refer to (``defaultdict(partial(deepcopy, x))``).
STDLIB_FUNCTIONS: dict[str, Any] = {
    "copy.deepcopy": copy.deepcopy,
    "functools.partial": functools.partial,
    "operator.itemgetter": operator.itemgetter,
}

# Methods of built-in and standard-library types, by (type, name): exactly the ones river uses
# (``str.lower`` as a text preprocessor, ``Random.gauss`` as a noise source).
BUILTIN_METHODS: dict[tuple[type, str], Any] = {
    (str, "lower"): str.lower,
    (str, "upper"): str.upper,
    (str, "casefold"): str.casefold,
    (str, "strip"): str.strip,
    (str, "split"): str.split,
    (random.Random, "gauss"): random.Random.gauss,
    (random.Random, "random"): random.Random.random,
    (random.Random, "uniform"): random.Random.uniform,
    (random.Random, "normalvariate"): random.Random.normalvariate,
}

# Built-in types a model may name as values (``defaultdict(float)``) and call with plain values:
# none of them allocates by the size of its argument (``bytes`` and ``bytearray`` do, so are absent).
DATA_TYPES: dict[str, type] = {t.__name__: t for t in (
    int, float, complex, bool, str, tuple, list, dict, set, frozenset)}

# numpy's random bit generators, by name.
BIT_GENERATORS = ("MT19937", "PCG64", "PCG64DXSM", "Philox", "SFC64")

# numpy dtype kinds a model's arrays may have: bool, int, uint, float, complex.
NUMERIC_KINDS = "biufc"

# Classes with their own reducer that builds them by calling the class with data (besides the
# standard-library ones above): river's holt-winters components are deques with a custom
# ``__reduce__``, and river's Rust ``VectorDict``.
CALLED_RIVER_CLASSES = frozenset({
    "river.time_series.holt_winters.AdditiveLevel",
    "river.time_series.holt_winters.MultiplicativeLevel",
    "river.time_series.holt_winters.Trend",
    "river.time_series.holt_winters.AdditiveSeason",
    "river.time_series.holt_winters.MultiplicativeSeason",
    "river._river_rust.vectordict.VectorDict",
})


# Module-level functions a model may hold as a value (a distance, a tokenizer, a factory): what river
# models are built with. A held function is called later by the model, in the server, with arguments
# the upload chose; so besides these, only private helpers of river's classes (``GaussianNB._make_gaussian``,
# a splitter's ``_update_estimator_univariate``) and anything of the site's own modules qualify.
VALUE_FUNCTIONS = frozenset({
    "copy.deepcopy",
    "river.utils.math.minkowski_distance",
    "river.feature_extraction.vectorize.strip_accents_unicode",
    "river.feature_extraction.vectorize.tokenize_using_regex_pattern",
}) | RIVER_RUST_FUNCTIONS


class NotAllowed(Exception):
    """A name that an uploaded model may not use (the message is the full name)."""


def in_modules(module: str, prefixes: tuple[str, ...]) -> bool:
    """Whether ``module`` is one of ``prefixes`` or inside one of them."""
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def module_allowed(module: Any, prefixes: tuple[str, ...] = ()) -> bool:
    """A river module (not one of its I/O modules) or one of the site's ``prefixes``."""
    return (isinstance(module, str) and bool(module)
            and in_modules(module, RIVER_MODULES + tuple(prefixes)) and not in_modules(module, RIVER_IO_MODULES)
            and not (module.startswith("river.") and "datasets" in module.split(".")))


def is_dunder(name: Any) -> bool:
    return not isinstance(name, str) or name.startswith("__")


@functools.lru_cache(maxsize=4096)
def _resolve(module: str, qualname: str, prefixes: tuple[str, ...]) -> Any:
    full = f"{module}.{qualname}"
    if full in STDLIB_CLASSES:
        return STDLIB_CLASSES[full]
    if full in STDLIB_FUNCTIONS:
        return STDLIB_FUNCTIONS[full]
    for (owner, name), function in BUILTIN_METHODS.items():  # "random.Random.gauss"
        if full == f"{owner.__module__}.{owner.__qualname__}.{name}":
            return function
    if not module_allowed(module, prefixes) or not qualname or any(is_dunder(p) for p in qualname.split(".")) \
            or full in RIVER_IO_NAMES:
        raise NotAllowed(full)
    try:
        owner: Any = importlib.import_module(module)
    except ImportError:
        raise NotAllowed(full) from None
    obj = owner
    for part in qualname.split("."):
        namespace = vars(obj) if isinstance(obj, (types.ModuleType, type)) else {}
        if part not in namespace:
            raise NotAllowed(full)
        obj = namespace[part]
        if isinstance(obj, (staticmethod, classmethod)):
            obj = obj.__func__
    if not is_defined_in_allowed(obj, prefixes):
        raise NotAllowed(full)
    return obj


def resolve_global(module: str, qualname: str, prefixes: tuple[str, ...] = ()) -> Any:
    """The allowed class or function named ``module.qualname``; :class:`NotAllowed` otherwise."""
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise NotAllowed(f"{module!r}.{qualname!r}")
    return _resolve(module, qualname, tuple(prefixes))


def is_defined_in_allowed(obj: Any, prefixes: tuple[str, ...] = ()) -> bool:
    """A class or function defined (not merely imported) in an allowed module."""
    if isinstance(obj, type):
        return module_allowed(obj.__module__, prefixes) and not is_dunder(obj.__name__)
    if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType)):
        module = getattr(obj, "__module__", None)
        if isinstance(module, str) and module.startswith("river._river_rust"):
            return f"{module}.{obj.__name__}" in RIVER_RUST_FUNCTIONS
        return (module_allowed(module, prefixes) and not is_dunder(obj.__name__)
                and f"{module}.{obj.__qualname__}" not in RIVER_IO_NAMES)
    return False


def allowed_class(cls: Any, prefixes: tuple[str, ...] = ()) -> bool:
    """A class whose instances a model may hold (built with ``cls.__new__``, state set as data)."""
    if not isinstance(cls, type):
        return False
    if cls in STDLIB_CLASSES.values():
        return True
    try:
        return resolve_global(cls.__module__, cls.__qualname__, prefixes) is cls
    except NotAllowed:
        return False


def full_name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def static_method(cls: type, name: str, prefixes: tuple[str, ...] = ()) -> Any:
    """The plain function ``name`` that instances of ``cls`` have as a method, found without ``getattr``.

    Only methods defined in an allowed class of ``cls``'s MRO qualify, or the exact built-in pairs
    of :data:`BUILTIN_METHODS`; dunder names never do.
    """
    if is_dunder(name):
        raise NotAllowed(f"{full_name(cls)}.{name!r}")
    for klass in cls.__mro__:
        if name in vars(klass):
            if (klass, name) in BUILTIN_METHODS:
                return BUILTIN_METHODS[(klass, name)]
            function = vars(klass)[name]
            if isinstance(function, types.FunctionType) and allowed_class(klass, prefixes):
                return function
            break
    for (klass, method), function in BUILTIN_METHODS.items():
        if method == name and issubclass(cls, klass):
            return function
    raise NotAllowed(f"{full_name(cls)}.{name}")



def held_function_allowed(function: Any, prefixes: tuple[str, ...] = ()) -> bool:
    """Whether a model may hold ``function`` as a value (see :data:`VALUE_FUNCTIONS`)."""
    if any(function is method for method in BUILTIN_METHODS.values()):  # Random.gauss, bound later by dill
        return True
    module, qualname = getattr(function, "__module__", None), getattr(function, "__qualname__", "")
    if not isinstance(module, str) or not isinstance(qualname, str):
        return False
    if in_modules(module, tuple(prefixes)) or f"{module}.{qualname}" in VALUE_FUNCTIONS:
        return True
    parts = qualname.split(".")
    return len(parts) > 1 and parts[-1].startswith("_") and not is_dunder(parts[-1]) and module.startswith("river.")


def held_method_allowed(cls: type, name: str, prefixes: tuple[str, ...] = ()) -> bool:
    """Whether a model may hold the bound method ``name`` of a ``cls`` instance (``self._calc_tau_1``)."""
    if any((klass, name) in BUILTIN_METHODS for klass in cls.__mro__):
        return True
    if in_modules(cls.__module__, tuple(prefixes)):
        return True
    return isinstance(name, str) and name.startswith("_") and not is_dunder(name)
