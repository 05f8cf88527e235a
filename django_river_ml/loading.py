"""The hardened unpickler that reads uploaded pickles inside the sandbox process.

A pickle is a program: every global it names is imported and may be called,
and BUILD sets attributes on whatever is on its stack. The server never runs
it (see :mod:`django_river_ml.sandbox`); inside the sandbox this unpickler is
the first of several walls:

* globals resolve only by exact name through :mod:`django_river_ml.allowlist`
  (river's and the site's classes and functions, a few standard-library and
  numpy names); anything else is refused *before* it is imported;
* calls (REDUCE, NEWOBJ) go only to constructors that real river pickles use,
  with small plain arguments: no ``bytes(300_000_000)``, no uninitialised
  ``numpy.ndarray(shape)``;
* attribute access (``getattr``, dill's ``_getattr``) only for exact
  (type, method) pairs, found in class ``__dict__`` s, never through
  ``__getattr__`` (river's ``BaseRolling`` forwards any name);
* BUILD only on instances, never on classes or functions, and no state key
  that starts with ``__``;
* bounds on memo size, operations, MARK nesting and the depth of dict keys
  (hashing a deeply nested tuple overflows the C stack);
* protocol 0/1 instantiation (INST, OBJ), extension codes and persistent ids
  are refused.

>>> import pickle
>>> from river import linear_model
>>> model = load_model(pickle.dumps(linear_model.LinearRegression()), prefixes=())
>>> type(model).__name__
'LinearRegression'
>>> load_model(pickle.dumps(print), prefixes=())
Traceback (most recent call last):
...
django_river_ml.loading.UnsafeModel: The upload refers to builtins.print, which a model may not use: ...
"""

from __future__ import annotations

import functools
import io
import operator
import pickle
import types
from typing import Any

import numpy as np

from django_river_ml.allowlist import (
    BIT_GENERATORS,
    BUILTIN_METHODS,
    CALLED_RIVER_CLASSES,
    DATA_TYPES,
    NUMERIC_KINDS,
    RIVER_MODULES,
    STDLIB_CLASSES,
    NotAllowed,
    allowed_class,
    full_name,
    held_function_allowed,
    held_method_allowed,
    is_dunder,
    resolve_global,
    static_method,
)
from django_river_ml.exceptions import InvalidModel

__all__ = ["UnsafeModel", "load_model"]

MAX_OPERATIONS = 50_000_000
MAX_MEMO = 5_000_000
MAX_MARKS = 1_000
MAX_KEY_DEPTH = 8
MAX_CALL_INT = 2**31
MAX_RUST_CALL_INT = 10_000_000
MAX_PARTIAL_INT = 10_000  # a partial is called by the model later, in the server (river binds p=2, ddof=1)

# dill's ``_load_type`` names, by what real river pickles use.
DILL_TYPES: dict[str, type] = {
    "PartialType": functools.partial,
    "ItemGetterType": operator.itemgetter,
    "MethodType": types.MethodType,
    "NoneType": type(None),
    **DATA_TYPES,
}

_NUMPY_CORES = ("numpy.core.multiarray", "numpy._core.multiarray")


class UnsafeModel(InvalidModel):
    """The upload names or does something a model may not."""


def _refuse(what: str, prefixes: tuple[str, ...] = ()) -> UnsafeModel:
    extra = [p for p in prefixes if p not in RIVER_MODULES]
    allowed = "river" + (f" and {', '.join(extra)}" if extra else "")
    return UnsafeModel(
        f"The upload refers to {what}, which a model may not use: only classes and functions from "
        f"{allowed} are allowed. Use named classes and functions from an allowed module (no lambdas "
        "or local functions), or ask the site to add the module to ALLOWED_MODEL_MODULES."
    )


def _check_small(args: Any, what: str, bound: int = MAX_CALL_INT) -> None:
    """Arguments of a call: no number that sizes an allocation (``bytes(10**9)``)."""
    for arg in args if isinstance(args, tuple) else (args,):
        if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > bound:
            raise UnsafeModel(f"The upload calls {what} with the number {arg}, which is too large for a model.")


def _key_depth_ok(value: Any, limit: int = MAX_KEY_DEPTH) -> bool:
    """Whether a dict key or set member is nested at most ``limit`` deep (checked without recursion)."""
    level = [value]
    for _ in range(limit + 1):
        level = [item for v in level if isinstance(v, (tuple, frozenset)) for item in v]
        if not level:
            return True
    return False


def _has_own(obj: Any, name: str) -> bool:
    """``name`` is defined by the object's class (not reached through a ``__getattr__``)."""
    return any(name in vars(klass) for klass in type(obj).__mro__)


class _Gate:
    """The callables the stream may name beyond classes: each checks its own arguments."""

    def __init__(self, prefixes: tuple[str, ...]):
        self.prefixes = prefixes

    def getattr(self, obj: Any, name: Any, *default: Any) -> Any:
        """``getattr`` for exact methods: a class's own method, or a built-in pair like ``str.lower``."""
        if is_dunder(name):
            raise _refuse(f"the attribute {name!r:.60}", self.prefixes)
        if isinstance(obj, type):
            if (obj, name) in BUILTIN_METHODS:
                return BUILTIN_METHODS[(obj, name)]
            if not allowed_class(obj, self.prefixes):
                shown = obj.__qualname__ if obj.__module__ == "builtins" else full_name(obj)
                raise _refuse(f"{shown}.{name}", self.prefixes)
            try:
                return static_method(obj, name, self.prefixes)
            except NotAllowed as error:
                raise _refuse(str(error), self.prefixes) from None
        try:
            function = static_method(type(obj), name, self.prefixes)
            if not held_method_allowed(type(obj), name, self.prefixes):
                raise NotAllowed(f"{full_name(type(obj))}.{name}")
        except NotAllowed as error:
            raise _refuse(str(error), self.prefixes) from None
        if not (allowed_class(type(obj), self.prefixes) or isinstance(obj, (str, *STDLIB_CLASSES.values()))):
            raise _refuse(f"a method of {full_name(type(obj))}", self.prefixes)
        return function.__get__(obj, type(obj))

    def load_type(self, name: Any) -> type:
        try:
            return DILL_TYPES[name]
        except (KeyError, TypeError):
            raise _refuse(f"the type {name!r:.60}", self.prefixes) from None

    def method(self, function: Any, owner: Any) -> Any:
        """``types.MethodType(function, owner)`` for a method the owner's class really has."""
        name = getattr(function, "__name__", None)
        try:
            if static_method(type(owner), name, self.prefixes) is not function:
                raise NotAllowed(name)
        except NotAllowed:
            raise _refuse(f"a method {name!r:.60} bound to {full_name(type(owner))}", self.prefixes) from None
        return types.MethodType(function, owner)

    @staticmethod
    def reconstruct(cls: Any, shape: Any, dtype_code: Any) -> np.ndarray:
        """numpy's ``_reconstruct``: only the empty array that BUILD then fills with real data."""
        if cls is not np.ndarray or shape != (0,) or dtype_code not in (b"b", "b"):
            raise UnsafeModel("The upload builds a numpy array without its data, which a model may not hold.")
        return np.ndarray.__new__(np.ndarray, (0,), "b")

    @staticmethod
    def scalar(dtype: Any, data: Any = None) -> Any:
        if not isinstance(dtype, np.dtype) or dtype.kind not in NUMERIC_KINDS or not isinstance(data, bytes) \
                or len(data) != dtype.itemsize:
            raise UnsafeModel("The upload builds a numpy scalar from something other than its bytes.")
        return np.frombuffer(data, dtype=dtype)[0]

    @staticmethod
    def dtype(code: Any, align: Any = False, copy: Any = False) -> np.dtype:
        if not isinstance(code, str) or len(code) > 8:
            raise UnsafeModel("The upload names a numpy dtype that a model may not use.")
        dtype = np.dtype(code)
        if dtype.kind not in NUMERIC_KINDS:
            raise UnsafeModel(f"The upload names the numpy dtype {dtype}, which a model may not use.")
        return dtype

    @staticmethod
    def create_array(function: Any, args: Any, state: Any, npdict: Any = None) -> np.ndarray:
        """dill's array helper: the same empty array, then numpy's own ``__setstate__`` with the data."""
        array = function(*args)
        if not isinstance(array, np.ndarray):
            raise UnsafeModel("The upload builds an array with something other than numpy's reconstructor.")
        _set_array_state(array, state)
        if npdict:
            raise UnsafeModel("The upload sets attributes on a numpy array.")
        return array

    @staticmethod
    def bit_generator(kind: Any = "MT19937", *_: Any) -> np.random.BitGenerator:
        """A fresh bit generator named by its class, its name, or an instance (numpy 1 and 2 pickles)."""
        if isinstance(kind, np.random.BitGenerator):
            return kind
        name = kind.__name__ if isinstance(kind, type) else kind
        if name not in BIT_GENERATORS or (isinstance(kind, type) and kind is not getattr(np.random, name)):
            raise UnsafeModel("The upload builds a numpy bit generator that a model may not use.")
        return getattr(np.random, name)()

    @staticmethod
    def random_state(kind: Any = "MT19937", *_: Any) -> np.random.RandomState:
        bit_generator = _Gate.bit_generator(kind)
        if not isinstance(bit_generator, np.random.MT19937):
            raise UnsafeModel("The upload builds a numpy RandomState that a model may not use.")
        return np.random.RandomState(bit_generator)

    @staticmethod
    def seed_sequence(cls: Any, checksum: Any, state: Any) -> np.random.SeedSequence:
        """numpy's Cython helper for a SeedSequence (what a bit generator seeded by the OS keeps)."""
        if cls is not np.random.SeedSequence or not isinstance(checksum, int) or state is not None:
            raise UnsafeModel("The upload builds a numpy SeedSequence that a model may not use.")
        from numpy.random import bit_generator

        return vars(bit_generator)["__pyx_unpickle_SeedSequence"](cls, checksum, state)

    @staticmethod
    def generator(kind: Any = "MT19937", *_: Any) -> np.random.Generator:
        return np.random.Generator(_Gate.bit_generator(kind))


def _set_array_state(array: np.ndarray, state: Any) -> None:
    """numpy's ``__setstate__`` for real data only: raw bytes of exactly the array's size."""
    if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[1], tuple)
            and isinstance(state[2], np.dtype) and isinstance(state[4], (bytes, bytearray))):
        raise UnsafeModel("The upload fills a numpy array with something other than its bytes.")
    _, shape, dtype, _, data = state
    if dtype.kind not in NUMERIC_KINDS or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise UnsafeModel("The upload holds a numpy array that a model may not use.")
    count = 1
    for n in shape:
        count *= n
    if len(data) != count * dtype.itemsize:
        raise UnsafeModel("The upload holds a numpy array whose data does not match its shape.")
    array.__setstate__(state)


class RestrictedUnpickler(pickle._Unpickler):  # noqa: SLF001 - the pure-Python VM lets us check each opcode
    """An unpickler that resolves exact names only and checks every call and BUILD."""

    def __init__(self, file: io.BytesIO, prefixes: tuple[str, ...]):
        super().__init__(file)
        self.prefixes = tuple(prefixes)
        self.gate = gate = _Gate(self.prefixes)
        self.operations = 0
        # Bound once, so that a call can be recognised as one of these by identity.
        self.gates = {name: getattr(gate, name) for name in (
            "getattr", "load_type", "method", "reconstruct", "scalar", "dtype", "create_array", "random_state",
            "bit_generator", "generator", "seed_sequence")}
        self.callables = {id(function) for function in self.gates.values()}

    # Names -----------------------------------------------------------------

    def find_class(self, module: str, name: str) -> Any:
        if not isinstance(module, str) or not isinstance(name, str):
            raise _refuse(f"{module!r:.60}.{name!r:.60}", self.prefixes)
        gate = types.SimpleNamespace(**self.gates)
        exact = {
            ("builtins", "getattr"): gate.getattr,
            ("dill._dill", "_getattr"): gate.getattr,
            ("dill._dill", "_load_type"): gate.load_type,
            ("dill._dill", "_create_array"): gate.create_array,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): gate.dtype,
            ("numpy.random.mtrand", "RandomState"): np.random.RandomState,
            ("numpy.random._pickle", "__randomstate_ctor"): gate.random_state,
            ("numpy.random._pickle", "__bit_generator_ctor"): gate.bit_generator,
            ("numpy.random._pickle", "__generator_ctor"): gate.generator,
            ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"): gate.seed_sequence,
            ("numpy.random.bit_generator", "SeedSequence"): np.random.SeedSequence,
        }
        if (module, name) in exact:
            return exact[(module, name)]
        if module in _NUMPY_CORES and name in ("_reconstruct", "scalar"):
            return gate.reconstruct if name == "_reconstruct" else gate.scalar
        if module.startswith("numpy.random.") and name in BIT_GENERATORS:
            return getattr(np.random, name)
        if module == "numpy.dtypes" and name.endswith("DType"):
            try:
                dtype = np.dtype(name[: -len("DType")].lower())
            except TypeError:
                dtype = None
            if dtype is not None and dtype.kind in NUMERIC_KINDS and type(dtype).__name__ == name:
                return type(dtype)
        if module == "builtins" and name in DATA_TYPES:
            return DATA_TYPES[name]
        if module == "dill._dill" and name in ("_create_function", "_create_code", "_create_cell"):
            raise _refuse("a lambda or local function", self.prefixes)
        try:
            value = resolve_global(module, name, self.prefixes)
        except (NotAllowed, TypeError):
            raise _refuse(f"{module}.{name}", self.prefixes) from None
        if not isinstance(value, type) and not held_function_allowed(value, self.prefixes):
            raise _refuse(f"the function {module}.{name} as part of a model", self.prefixes)
        return value

    def persistent_load(self, pid: Any) -> Any:
        raise _refuse("a persistent id", self.prefixes)

    # Calls -----------------------------------------------------------------

    def _check_call(self, function: Any, args: Any) -> None:
        if not isinstance(args, tuple):
            raise UnsafeModel("The upload calls something with arguments that are not a tuple.")
        if id(function) in self.callables or function is functools.partial or function is operator.itemgetter:
            if function is self.gates["method"] or function is self.gates["seed_sequence"]:
                return  # checks its own arguments (a SeedSequence's checksum is a large number)
            _check_small(args, full_name(function), bound=MAX_PARTIAL_INT if function is functools.partial
                         else MAX_CALL_INT)
            return
        if function is types.MethodType:
            return
        if isinstance(function, type) and (function in DATA_TYPES.values() or function in STDLIB_CLASSES.values()
                                           or full_name(function) in CALLED_RIVER_CLASSES):
            _check_small(args, full_name(function))
            if function in (set, frozenset, dict) and args:
                members = args[0].keys() if isinstance(args[0], dict) else args[0]
                if isinstance(members, (list, tuple, set, frozenset, type({}.keys()))):
                    for member in members:
                        self._check_key(member[0] if function is dict and isinstance(member, tuple) else member)
            return
        raise _refuse(f"a call of {full_name(function)}", self.prefixes)

    def load_reduce(self) -> None:
        stack = self.stack
        args = stack.pop()
        function = stack[-1]
        self._check_call(function, args)
        if function is types.MethodType:
            function = self.gates["method"]
        try:
            stack[-1] = function(*args)
        except InvalidModel:
            raise
        except (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError) as error:
            raise InvalidModel(f"The upload could not be rebuilt ({type(error).__name__}: {error}).") from None

    def _new(self, cls: Any, args: Any, kwargs: Any = None) -> Any:
        if not isinstance(cls, type) or not (allowed_class(cls, self.prefixes) or cls is np.random.RandomState):
            raise _refuse(f"an instance of {full_name(cls)}", self.prefixes)
        if not isinstance(args, tuple) or (kwargs is not None and not isinstance(kwargs, dict)):
            raise UnsafeModel("The upload builds an object with malformed arguments.")
        _check_small(args, full_name(cls))
        if cls.__module__.startswith("river._river_rust."):  # Rust allocates windows from these up front
            _check_small(args, full_name(cls), bound=MAX_RUST_CALL_INT)
        return cls.__new__(cls, *args, **(kwargs or {}))

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, kwargs))

    def load_build(self) -> None:
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType,
                             types.ModuleType)):
            raise _refuse(f"setting attributes on {full_name(inst)}", self.prefixes)
        if isinstance(inst, np.ndarray):
            _set_array_state(inst, state)
            self.stack.pop()
            return
        if isinstance(inst, np.dtype):  # made whole from its code by the dtype gate; the state repeats it
            if not (isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", "|", "=")):
                raise UnsafeModel("The upload holds a numpy dtype that a model may not use.")
            self.stack.pop()
            return
        if not (allowed_class(type(inst), self.prefixes) or isinstance(
                inst, (functools.partial, np.random.RandomState, np.random.BitGenerator, np.random.Generator,
                       np.random.SeedSequence))):
            raise _refuse(f"setting the state of {full_name(type(inst))}", self.prefixes)
        dict_state, slot_state = state, None
        if isinstance(state, tuple) and len(state) == 2 and all(s is None or isinstance(s, dict) for s in state):
            dict_state, slot_state = state
        for mapping in (dict_state, slot_state):
            if isinstance(mapping, dict):
                for key in mapping:
                    if is_dunder(key):
                        raise _refuse(f"the attribute {key!r:.60} in the state of {full_name(type(inst))}",
                                      self.prefixes)
        if isinstance(inst, functools.partial):
            _check_partial_state(state)
        try:
            super().load_build()
        except InvalidModel:
            raise
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as error:
            raise InvalidModel(f"The upload could not be rebuilt ({type(error).__name__}: {error}).") from None

    # Containers: keys are hashed, so their depth is checked first; targets have their own methods.

    def _check_key(self, key: Any) -> None:
        if not _key_depth_ok(key):
            raise UnsafeModel(f"The upload has a dict key or set member nested more than {MAX_KEY_DEPTH} levels deep.")

    def _check_target(self, target: Any, *methods: str) -> None:
        if type(target) in (list, dict, set):
            return
        if not (allowed_class(type(target), self.prefixes) and all(_has_own(target, m) for m in methods)):
            raise _refuse(f"{' and '.join(methods)} on {full_name(type(target))}", self.prefixes)

    def load_setitem(self) -> None:
        self._check_key(self.stack[-2])
        self._check_target(self.stack[-3], "__setitem__")
        super().load_setitem()

    def load_setitems(self) -> None:
        mark = self.metastack[-1] if self.metastack else []
        target = mark[-1] if mark else None
        for key in self.stack[0::2]:
            self._check_key(key)
        self._check_target(target, "__setitem__")
        super().load_setitems()

    def load_additems(self) -> None:
        mark = self.metastack[-1] if self.metastack else []
        target = mark[-1] if mark else None
        for item in self.stack:
            self._check_key(item)
        if type(target) is not set and not (allowed_class(type(target), self.prefixes) and _has_own(target, "add")):
            raise _refuse(f"add on {full_name(type(target))}", self.prefixes)
        super().load_additems()

    def load_frozenset(self) -> None:
        for item in self.stack:
            self._check_key(item)
        super().load_frozenset()

    def load_append(self) -> None:
        self._check_target(self.stack[-2], "append")
        super().load_append()

    def load_appends(self) -> None:
        mark = self.metastack[-1] if self.metastack else []
        target = mark[-1] if mark else None
        self._check_target(target, "append", "extend")
        super().load_appends()

    def load_mark(self) -> None:
        if len(self.metastack) >= MAX_MARKS:
            raise UnsafeModel(f"The pickle nests more than {MAX_MARKS} levels deep.")
        super().load_mark()

    # Memo --------------------------------------------------------------------

    def _memo_room(self) -> None:
        if len(self.memo) >= MAX_MEMO:
            raise UnsafeModel(f"The upload remembers more than {MAX_MEMO} objects.")

    def load_put(self) -> None:
        self._memo_room()
        super().load_put()

    def load_binput(self) -> None:
        self._memo_room()
        super().load_binput()

    def load_long_binput(self) -> None:
        self._memo_room()
        super().load_long_binput()

    def load_memoize(self) -> None:
        self._memo_room()
        super().load_memoize()

    # Refused outright ----------------------------------------------------------

    def _refused(self) -> None:
        raise UnsafeModel("The upload uses pickle instructions a model never needs (protocol 0/1 objects, "
                          "extension codes or persistent ids): pickle it with protocol 2 or newer.")

    load_inst = load_obj = load_ext1 = load_ext2 = load_ext4 = load_persid = load_binpersid = _refused

    dispatch = dict(pickle._Unpickler.dispatch)  # noqa: SLF001

    def load(self) -> Any:
        """Run the stream, counting operations."""
        self._unframer = pickle._Unframer(self._file_read, self._file_readline)  # noqa: SLF001
        self.read = self._unframer.read
        self.readinto = self._unframer.readinto
        self.readline = self._unframer.readline
        self.metastack = []
        self.stack = []
        self.append = self.stack.append
        self.proto = 0
        read = self.read
        dispatch = self.dispatch
        try:
            while True:
                key = read(1)
                if not key:
                    raise EOFError
                self.operations += 1
                if self.operations > MAX_OPERATIONS:
                    raise UnsafeModel(f"The upload runs more than {MAX_OPERATIONS} pickle instructions.")
                dispatch[key[0]](self)
        except pickle._Stop as stopinst:  # noqa: SLF001
            return stopinst.value


# Every instruction the class handles itself replaces the base one in its dispatch table.
for _opcode, _base in pickle._Unpickler.dispatch.items():  # noqa: SLF001
    _own = getattr(RestrictedUnpickler, _base.__name__)
    if _own is not _base:
        RestrictedUnpickler.dispatch[_opcode] = _own


def _check_partial_state(state: Any) -> None:
    if not (isinstance(state, tuple) and len(state) == 4 and callable(state[0])
            and isinstance(state[1], tuple) and (state[2] is None or isinstance(state[2], dict))
            and (state[3] is None or (isinstance(state[3], dict) and not state[3]))):
        raise UnsafeModel("The upload builds a functools.partial that a model never holds.")
    _check_small(state[1], "functools.partial", bound=MAX_PARTIAL_INT)
    _check_small(tuple((state[2] or {}).values()), "functools.partial", bound=MAX_PARTIAL_INT)


def load_model(data: bytes, prefixes: tuple[str, ...] | None = None) -> Any:
    """Unpickle untrusted bytes (plain pickle or dill) with the allow-list; run it only in the sandbox.

    ``prefixes`` are the site's ``ALLOWED_MODEL_MODULES`` (read from the settings when None).
    """
    if prefixes is None:
        from django_river_ml.settings import river_settings

        prefixes = tuple(river_settings.ALLOWED_MODEL_MODULES)
    if not data:
        raise InvalidModel("The request body is empty: send the pickled model as the body.")
    try:
        return RestrictedUnpickler(io.BytesIO(data), tuple(prefixes)).load()
    except InvalidModel:
        raise
    except RecursionError:
        raise InvalidModel("The upload is nested too deeply to be a model.") from None
    except MemoryError:
        raise
    except Exception as error:  # any malformed stream: truncated, junk, wrong protocol
        raise InvalidModel(f"The upload is not a readable pickle: {type(error).__name__}: {error}") from None
