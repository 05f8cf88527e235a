"""Models as plain data: how the sandbox hands a model back, and how the server rebuilds it.

An uploaded pickle is loaded only in the sandbox process. What comes back is a
JSON document describing the object graph, and :func:`rebuild` is the only
code in the server that turns it into objects. It is written as a reader of
untrusted data, because a sandbox that was broken into could send anything:

* it calls nothing but ``cls.__new__`` of allow-listed classes
  (:mod:`django_river_ml.allowlist`), a short list of constructors that are
  called with plain values (``Counter``, ``deque``, ``Random``,
  ``functools.partial``, river's Rust ``VectorDict``…), the classes' own
  ``__setstate__``, and numpy's array and random-state constructors fed real
  data (never an uninitialised buffer);
* instance state is a dict of names to values and no name starts with ``__``,
  so no dunder attribute (``__class__``, ``__reduce_ex__``) is ever set;
* bound methods are found in the class ``__dict__`` along the MRO, never with
  ``getattr``;
* nesting depth, node count, the size a graph of shared references expands
  to, and the depth of dict keys (hashing a deeply nested tuple overflows the
  C stack) are all bounded, and reference cycles are refused.

The format (version 1) is a JSON value: ``null``, booleans, numbers and strings
are themselves; everything else is an array whose first element is a tag::

    ["F", "nan"|"inf"|"-inf"]                 float specials
    ["b", base64] ["ba", id, base64]          bytes, bytearray
    ["t"|"l"|"s"|"fs", id, item, ...]          tuple, list, set, frozenset
    ["d", id, key, value, key, value, ...]    dict
    ["R", id]                                 the object numbered id, again
    ["G", module, qualname]                   an allowed class or function
    ["M", self, name]                         a bound method
    ["D", type, name]                         a method of a built-in type (str.lower)
    ["P", id, func, [args], {kwargs}]          functools.partial
    ["IG", id, item, ...]                     operator.itemgetter
    ["O", id, module, qualname, how, [args], state, [listitems], [[k, v], ...]]
                                              an instance; how is "new" or "call"
    ["A", id, dtype, [shape], fortran, base64]   a numpy array of numbers
    ["AO", id, [shape], item, ...]            a numpy array of objects
    ["N", dtype, base64]  ["DT", dtype]       a numpy scalar, a numpy dtype
    ["RS", id, state]  ["RG", id, bitgen, state]  numpy RandomState, Generator

Why not pickle, dill or skops: any pickle reader is a virtual machine that
calls what the stream names; skops.io cannot hold river's OneVsOneClassifier
(tuple dict keys) or TFIDF (method descriptors) and writes large files (see
docs/security.md).

>>> from river import linear_model, preprocessing
>>> model = preprocessing.StandardScaler() | linear_model.LinearRegression()
>>> model.learn_one({"x": 1.0}, 2.0)
>>> copy = rebuild(encode(model))
>>> copy.predict_one({"x": 1.0}) == model.predict_one({"x": 1.0})
True
>>> rebuild(b'["O", 0, "os", "system", "call", ["echo hi"], null, [], []]')
Traceback (most recent call last):
...
django_river_ml.modeldata.BadModelData: The model data names os.system, which a model may not use.
"""

from __future__ import annotations

import base64
import copyreg
import functools
import json
import math
import operator
import types
from typing import Any

import numpy as np

from django_river_ml.allowlist import (
    BIT_GENERATORS,
    BUILTIN_METHODS,
    CALLED_RIVER_CLASSES,
    DATA_TYPES,
    NUMERIC_KINDS,
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

FORMAT = "django-river-ml/model-data"
VERSION = 1

MAX_DEPTH = 400          # nesting of containers and objects (the server pickles snapshots of it)
MAX_NODES = 5_000_000    # values in one model
MAX_KEY_DEPTH = 8        # nesting of a dict key or set member
# A graph may expand (every shared reference followed) to 1000 x its stored values (river's
# HalfSpaceTrees share their limits between nodes: about 25 x), at least a million, at most 100 million.
MAX_EXPANSION = 1000
MIN_EXPANDED = 1_000_000
MAX_EXPANDED = 100_000_000
MAX_CONSTRUCTOR_INT = 2**31  # ints given to constructors (a deque's maxlen)
MAX_RUST_CONSTRUCTOR_INT = 10_000_000  # a Rust window of 10 million floats: 80 MB
# A partial is called by the model later, in the server, maybe on every learn: its numbers size
# nothing large (river's own partials bind a distance's p=2, a variance's ddof=1, an object to copy).
MAX_PARTIAL_INT = 10_000

BIT_GENERATOR_CLASSES = {name: getattr(np.random, name) for name in BIT_GENERATORS}


class BadModelData(ValueError):
    """The data does not describe a model this server will build."""


class NotData(ValueError):
    """The object holds something that has no plain-data form here (a file, a lambda, a cycle)."""


# Writing (in the sandbox) ---------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class _Encoder:
    def __init__(self, prefixes: tuple[str, ...]):
        self.prefixes = prefixes
        self.numbers: dict[int, int] = {}
        self.alive: list[Any] = []  # keeps every numbered object alive, so ids are not reused
        self.open: set[int] = set()
        self.count = 0

    def number(self, obj: Any) -> int:
        number = self.numbers[id(obj)] = len(self.numbers)
        self.alive.append(obj)
        return number

    def encode(self, obj: Any, depth: int = 0) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise NotData(f"the model has more than {MAX_NODES} values")
        if depth > MAX_DEPTH:
            raise NotData(f"the model is nested more than {MAX_DEPTH} levels deep")
        kind = type(obj)
        if obj is None or kind in (bool, int, str):
            return obj
        if kind is float:
            return obj if math.isfinite(obj) else ["F", repr(obj)]
        if kind is bytes:
            return ["b", _b64(obj)]
        if id(obj) in self.open:
            raise NotData(f"the model refers to itself through a {kind.__name__} (a reference cycle)")
        if id(obj) in self.numbers:
            return ["R", self.numbers[id(obj)]]
        self.open.add(id(obj))
        try:
            return self._compound(obj, kind, depth + 1)
        finally:
            self.open.discard(id(obj))

    def _items(self, values, depth: int) -> list:
        return [self.encode(value, depth) for value in values]

    def _compound(self, obj: Any, kind: type, depth: int) -> Any:
        if kind is tuple:
            items = self._items(obj, depth)
            return ["t", self.number(obj), *items]
        if kind in (list, set, frozenset, bytearray, dict):
            number = self.number(obj)
            if kind is bytearray:
                return ["ba", number, _b64(bytes(obj))]
            if kind is dict:
                return ["d", number, *(self.encode(part, depth) for pair in obj.items() for part in pair)]
            tag = {list: "l", set: "s", frozenset: "fs"}[kind]
            return [tag, number, *self._items(obj, depth)]
        if isinstance(obj, np.ndarray) and kind is np.ndarray:
            return self._array(obj, depth)
        if isinstance(obj, np.generic) and obj.dtype.kind in NUMERIC_KINDS:
            return ["N", obj.dtype.str, _b64(obj.tobytes())]
        if isinstance(obj, np.dtype) and obj.kind in NUMERIC_KINDS:
            return ["DT", obj.str]
        if kind is np.random.RandomState:
            return ["RS", self.number(obj), self.encode(obj.get_state(legacy=False), depth)]
        if kind is np.random.Generator:
            bit_generator = obj.bit_generator
            return ["RG", self.number(obj), type(bit_generator).__name__,
                    self.encode(bit_generator.state, depth)]
        if isinstance(obj, (type, types.FunctionType)):
            return self._global(obj)
        if kind is types.BuiltinFunctionType:  # a module's function (river's Rust ones), or a bound method
            owner = obj.__self__
            return self._global(obj) if owner is None or isinstance(owner, types.ModuleType) else self._method(
                obj, depth)
        if kind is types.MethodType:
            return self._method(obj, depth)
        if kind is types.MethodDescriptorType:
            return self._descriptor(obj)
        if kind is functools.partial:
            number = self.number(obj)
            return ["P", number, self.encode(obj.func, depth), self._items(obj.args, depth),
                    {key: self.encode(value, depth) for key, value in obj.keywords.items()}]
        if kind is operator.itemgetter:
            items = type(obj).__reduce__(obj)[1]
            return ["IG", self.number(obj), *self._items(items, depth)]
        return self._instance(obj, kind, depth)

    def _global(self, obj: Any) -> list:
        module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
        if module == "builtins" and DATA_TYPES.get(qualname) is obj:
            return ["G", module, qualname]
        try:
            if resolve_global(module, qualname, self.prefixes) is obj and (
                    isinstance(obj, type) or held_function_allowed(obj, self.prefixes)):
                return ["G", module, qualname]
        except NotAllowed:
            pass
        raise NotData(f"it uses {module}.{qualname}, which a model may not use")

    def _method(self, obj: Any, depth: int) -> list:
        owner, name = obj.__self__, obj.__name__
        try:
            function = static_method(type(owner), name, self.prefixes)
            if not held_method_allowed(type(owner), name, self.prefixes):
                raise NotAllowed(name)
        except NotAllowed:
            raise NotData(f"it holds the method {full_name(type(owner))}.{name}, which a model may not hold") from None
        if isinstance(obj, types.MethodType) and obj.__func__ is not function:
            raise NotData(f"the method {name} of {full_name(type(owner))} is not the class's own")
        if id(owner) in self.open and id(owner) in self.numbers:  # a model holding its own method
            return ["M", ["R", self.numbers[id(owner)]], name]
        return ["M", self.encode(owner, depth), name]

    def _descriptor(self, obj: Any) -> list:
        key = (obj.__objclass__, obj.__name__)
        if key not in BUILTIN_METHODS:
            raise NotData(f"it uses {obj.__objclass__.__name__}.{obj.__name__}, which a model may not use")
        return ["D", obj.__objclass__.__name__ if obj.__objclass__ is str else full_name(obj.__objclass__),
                obj.__name__]

    def _array(self, array: np.ndarray, depth: int) -> list:
        number = self.number(array)
        shape = list(array.shape)
        if array.dtype.kind == "O":
            return ["AO", number, shape, *self._items(array.ravel(order="C"), depth)]
        if array.dtype.kind not in NUMERIC_KINDS or array.dtype.fields is not None:
            raise NotData(f"it holds a numpy array of {array.dtype}, which a model may not use")
        fortran = bool(array.flags.f_contiguous and not array.flags.c_contiguous)
        return ["A", number, array.dtype.str, shape, fortran, _b64(array.tobytes(order="F" if fortran else "C"))]

    def _instance(self, obj: Any, kind: type, depth: int) -> list:
        if not allowed_class(kind, self.prefixes):
            raise NotData(f"it holds an instance of {full_name(kind)}, which a model may not use")
        reduced = kind.__reduce_ex__(obj, 4)
        if isinstance(reduced, str) or not isinstance(reduced, tuple) or len(reduced) < 2:
            raise NotData(f"{full_name(kind)} does not pickle as data")
        function, args, state, listitems, dictitems = (*reduced, None, None, None)[:5]
        if function is copyreg.__newobj__ and args and args[0] is kind:
            how, args = "new", args[1:]
        elif function is kind and (full_name(kind) in CALLED_RIVER_CLASSES or kind in STDLIB_CLASSES.values()):
            how = "call"
        else:
            raise NotData(f"{full_name(kind)} pickles through {full_name(function)}, which a model may not use")
        number = self.number(obj)
        return ["O", number, kind.__module__, kind.__qualname__, how, self._items(args, depth),
                self.encode(state, depth),
                self._items(listitems or (), depth),
                [[self.encode(k, depth), self.encode(v, depth)] for k, v in (dictitems or ())]]


def encode(model: Any, prefixes: tuple[str, ...] = ()) -> bytes:
    """The model as a model-data document (JSON bytes); :class:`NotData` when it has no such form."""
    encoder = _Encoder(tuple(prefixes))
    try:
        root = encoder.encode(model)
    except RecursionError:
        raise NotData("the model is nested too deeply") from None
    document = {"format": FORMAT, "version": VERSION, "nodes": encoder.count, "root": root}
    return json.dumps(document, allow_nan=False, separators=(",", ":")).encode()


# Reading (in the server) ----------------------------------------------------------------------


def _refuse_constant(name: str) -> Any:
    raise BadModelData(f"The model data holds the JSON constant {name}.")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise BadModelData("The model data holds bytes that are not base64 text.")
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise BadModelData("The model data holds bytes that are not base64 text.") from None


class _Reader:
    def __init__(self, prefixes: tuple[str, ...]):
        self.prefixes = prefixes
        self.objects: dict[int, Any] = {}
        self.sizes: dict[int, int] = {}
        self.count = 0
        self.expanded = 0

    # Each read returns (object, expanded size): the number of values a walk that follows every
    # shared reference would visit. It must stay near the number of values actually stored.

    def read(self, node: Any, depth: int = 0, key_depth: int | None = None) -> tuple[Any, int]:
        self.count += 1
        if self.count > MAX_NODES:
            raise BadModelData(f"The model has more than {MAX_NODES} values.")
        if depth > MAX_DEPTH:
            raise BadModelData(f"The model is nested more than {MAX_DEPTH} levels deep.")
        if node is None or isinstance(node, (bool, int, float, str)):
            return node, 1
        if not isinstance(node, list) or not node or not isinstance(node[0], str):
            raise BadModelData(f"The model data holds a {type(node).__name__} where a value belongs.")
        tag = node[0]
        if key_depth is not None:
            if tag not in ("F", "b", "t", "fs", "N", "R", "G"):
                raise BadModelData(f"A dict key or set member in the model data is a {tag!r} value.")
            if key_depth > MAX_KEY_DEPTH:
                raise BadModelData(f"A dict key or set member is nested more than {MAX_KEY_DEPTH} levels deep.")
        handler = self.HANDLERS.get(tag)
        if handler is None:
            raise BadModelData(f"The model data holds an unknown tag {tag!r}.")
        try:
            return handler(self, node, depth + 1, key_depth)
        except (IndexError, TypeError, ValueError, KeyError, AttributeError, OverflowError) as error:
            if isinstance(error, BadModelData):
                raise
            raise BadModelData(f"The model data has a malformed {tag!r} value ({type(error).__name__}).") from None

    def _register(self, number: Any, obj: Any, size: int = 0) -> None:
        """Number an object; size 0 marks it as still being built (a reference to it is a cycle)."""
        if not isinstance(number, int) or isinstance(number, bool) or number in self.objects or number < 0:
            raise BadModelData(f"The model data numbers an object {number!r} twice or wrongly.")
        self.objects[number] = obj
        self.sizes[number] = size

    def _finish(self, number: int, size: int) -> int:
        self.sizes[number] = size
        return size

    def _values(self, nodes: Any, depth: int, key_depth: int | None = None) -> tuple[list, int]:
        if not isinstance(nodes, list):
            raise BadModelData("The model data has a list of values that is not an array.")
        values, total = [], 0
        for node in nodes:
            value, size = self.read(node, depth, key_depth)
            values.append(value)
            total += size
        return values, total

    def _key(self, node: Any, depth: int, key_depth: int | None) -> tuple[Any, int]:
        value, size = self.read(node, depth, (key_depth or 0) + 1)
        try:
            hash(value)
        except TypeError:
            raise BadModelData("A dict key or set member in the model data is not hashable.") from None
        return value, size

    # Plain values

    def _float(self, node, depth, key_depth):
        special = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
        if node[1] not in special:
            raise BadModelData(f"The model data holds the float {node[1]!r}.")
        return special[node[1]], 1

    def _bytes(self, node, depth, key_depth):
        return _unb64(node[1]), 1

    def _bytearray(self, node, depth, key_depth):
        value = bytearray(_unb64(node[2]))
        self._register(node[1], value, 1)
        return value, 1

    def _tuple(self, node, depth, key_depth):
        if key_depth is not None:
            members = [self._key(n, depth, key_depth) for n in node[2:]]
            values, total = [m for m, _ in members], sum(s for _, s in members)
        else:
            values, total = self._values(node[2:], depth)
        value = tuple(values)
        self._register(node[1], value, 1 + total)
        return value, 1 + total

    def _list(self, node, depth, key_depth):
        value: list = []
        self._register(node[1], value)
        items, total = self._values(node[2:], depth)
        value.extend(items)
        return value, self._finish(node[1], 1 + total)

    def _set(self, node, depth, key_depth):
        members = [self._key(n, depth, key_depth) for n in node[2:]]
        if node[0] == "fs":
            value: Any = frozenset(m for m, _ in members)
        else:
            value = {m for m, _ in members}
        self._register(node[1], value, 1 + sum(s for _, s in members))
        return value, self.sizes[node[1]]

    def _dict(self, node, depth, key_depth):
        value: dict = {}
        self._register(node[1], value)
        parts = node[2:]
        if len(parts) % 2:
            raise BadModelData("A dict in the model data has a key without a value.")
        total = 1
        for i in range(0, len(parts), 2):
            key, key_size = self._key(parts[i], depth, None)
            item, item_size = self.read(parts[i + 1], depth)
            value[key] = item
            total += key_size + item_size
        return value, self._finish(node[1], total)

    def _reference(self, node, depth, key_depth):
        number = node[1]
        if number not in self.objects:
            raise BadModelData(f"The model data refers to object {number!r} before it is complete or at all.")
        size = self.sizes[number]
        if size == 0:
            raise BadModelData("The model data refers to an object from inside itself (a reference cycle).")
        return self.objects[number], size

    # Code: classes, functions, methods

    def _global(self, node, depth, key_depth):
        module, qualname = node[1], node[2]
        if module == "builtins" and isinstance(qualname, str) and qualname in DATA_TYPES:
            return DATA_TYPES[qualname], 1
        try:
            value = resolve_global(module, qualname, self.prefixes)
        except NotAllowed:
            raise BadModelData(f"The model data names {module}.{qualname}, which a model may not use.") from None
        if not isinstance(value, type) and not held_function_allowed(value, self.prefixes):
            raise BadModelData(f"The model data holds the function {module}.{qualname}, which a model may not hold.")
        return value, 1

    def _method(self, node, depth, key_depth):
        reference = node[1]
        if isinstance(reference, list) and len(reference) == 2 and reference[0] == "R" \
                and self.sizes.get(reference[1]) == 0:
            # A model holding its own bound method (PARegressor._calc_tau): the one cycle allowed, and
            # walks over a model never follow a method to its owner.
            owner, size = self.objects[reference[1]], 0
        else:
            owner, size = self.read(reference, depth)
        name = node[2]
        try:
            function = static_method(type(owner), name, self.prefixes)
            if not held_method_allowed(type(owner), name, self.prefixes):
                raise NotAllowed(f"{full_name(type(owner))}.{name}")
        except NotAllowed as error:
            raise BadModelData(f"The model data names the method {error}, which a model may not use.") from None
        return types.MethodType(function, owner), 1 + size

    def _descriptor(self, node, depth, key_depth):
        for (owner, name), function in BUILTIN_METHODS.items():
            if (node[1] in (owner.__name__, full_name(owner))) and node[2] == name and isinstance(
                    function, types.MethodDescriptorType):
                return function, 1
        raise BadModelData(f"The model data names {node[1]}.{node[2]!s}, which a model may not use.")

    def _partial(self, node, depth, key_depth):
        function, size = self.read(node[2], depth)
        if not callable(function):
            raise BadModelData("A functools.partial in the model data wraps something that is not callable.")
        args, args_size = self._values(node[3], depth)
        if not isinstance(node[4], dict) or any(is_dunder(k) for k in node[4]):
            raise BadModelData("A functools.partial in the model data has malformed keywords.")
        keywords = {}
        for key, item in node[4].items():
            keywords[key], item_size = self.read(item, depth)
            size += item_size
        _check_constructor_args([*args, *keywords.values()], "functools.partial", MAX_PARTIAL_INT)
        value = functools.partial(function, *args, **keywords)
        self._register(node[1], value, 1 + size + args_size)
        return value, self.sizes[node[1]]

    def _itemgetter(self, node, depth, key_depth):
        members = [self._key(n, depth, key_depth) for n in node[2:]]
        if not members:
            raise BadModelData("An operator.itemgetter in the model data has no items.")
        value = operator.itemgetter(*(m for m, _ in members))
        self._register(node[1], value, 1 + sum(s for _, s in members))
        return value, self.sizes[node[1]]

    # Instances

    def _instance(self, node, depth, key_depth):
        _, number, module, qualname, how, args_node, state_node, list_node, dict_node = node
        try:
            cls = resolve_global(module, qualname, self.prefixes)
        except NotAllowed:
            raise BadModelData(f"The model data names {module}.{qualname}, which a model may not use.") from None
        if not isinstance(cls, type) or not allowed_class(cls, self.prefixes):
            raise BadModelData(f"{module}.{qualname} is not a class a model may hold.")
        args, size = self._values(args_node, depth)
        _check_constructor_args(args, f"{module}.{qualname}")
        name = full_name(cls)
        if how == "new":
            if cls in STDLIB_CLASSES.values() and cls.__new__ is not object.__new__:
                raise BadModelData(f"{name} is built by calling it, not with __new__.")
            obj = cls.__new__(cls, *args)
        elif how == "call" and (name in CALLED_RIVER_CLASSES or cls in STDLIB_CLASSES.values()):
            obj = _call_constructor(cls, args, name)
        else:
            raise BadModelData(f"{name} cannot be built with {how!r} from model data.")
        self._register(number, obj, 0)
        state, state_size = self.read(state_node, depth)
        if state is not None:
            _set_state(obj, state, name)
        items, items_size = self._values(list_node, depth)
        for item in items:
            obj.append(item)
        if not isinstance(dict_node, list):
            raise BadModelData(f"The dict items of {name} in the model data are not an array.")
        for pair in dict_node:
            if not isinstance(pair, list) or len(pair) != 2:
                raise BadModelData(f"The dict items of {name} in the model data are not pairs.")
            key, key_size = self._key(pair[0], depth, None)
            value, value_size = self.read(pair[1], depth)
            obj[key] = value
            items_size += key_size + value_size
        return obj, self._finish(number, 1 + size + state_size + items_size)

    # numpy

    def _array(self, node, depth, key_depth):
        _, number, dtype_text, shape, fortran, data = node
        dtype = _numeric_dtype(dtype_text)
        shape = _shape(shape)
        raw = _unb64(data)
        if len(raw) != math.prod(shape) * dtype.itemsize:
            raise BadModelData("A numpy array in the model data has a wrong number of bytes for its shape.")
        array = np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran is True else "C").copy(
            order="F" if fortran is True else "C")
        self._register(number, array, 1)
        return array, 1

    def _object_array(self, node, depth, key_depth):
        shape = _shape(node[2])
        if math.prod(shape) != len(node) - 3:
            raise BadModelData("A numpy array of objects in the model data has a wrong number of items.")
        array = np.empty(shape, dtype=object)  # filled with None, never uninitialised memory
        self._register(node[1], array, 0)
        items, size = self._values(node[3:], depth)
        flat = array.reshape(-1)
        for i, item in enumerate(items):
            flat[i] = item
        return array, self._finish(node[1], 1 + size)

    def _scalar(self, node, depth, key_depth):
        dtype = _numeric_dtype(node[1])
        raw = _unb64(node[2])
        if len(raw) != dtype.itemsize:
            raise BadModelData("A numpy scalar in the model data has a wrong number of bytes.")
        return np.frombuffer(raw, dtype=dtype)[0], 1

    def _dtype(self, node, depth, key_depth):
        return _numeric_dtype(node[1]), 1

    def _random_state(self, node, depth, key_depth):
        state, size = self.read(node[2], depth)
        if not isinstance(state, dict) or state.get("bit_generator") != "MT19937":
            raise BadModelData("A numpy RandomState in the model data has a malformed state.")
        generator = np.random.RandomState()
        generator.set_state(state)
        self._register(node[1], generator, 1 + size)
        return generator, 1 + size

    def _generator(self, node, depth, key_depth):
        bit_generator_class = BIT_GENERATOR_CLASSES.get(node[2]) if isinstance(node[2], str) else None
        state, size = self.read(node[3], depth)
        if bit_generator_class is None or not isinstance(state, dict):
            raise BadModelData("A numpy Generator in the model data has a malformed state.")
        bit_generator = bit_generator_class()
        bit_generator.state = state
        generator = np.random.Generator(bit_generator)
        self._register(node[1], generator, 1 + size)
        return generator, 1 + size

    HANDLERS = {
        "F": _float, "b": _bytes, "ba": _bytearray, "t": _tuple, "l": _list, "s": _set, "fs": _set,
        "d": _dict, "R": _reference, "G": _global, "M": _method, "D": _descriptor, "P": _partial,
        "IG": _itemgetter, "O": _instance, "A": _array, "AO": _object_array, "N": _scalar, "DT": _dtype,
        "RS": _random_state, "RG": _generator,
    }


def _numeric_dtype(text: Any) -> np.dtype:
    if not isinstance(text, str) or len(text) > 8:
        raise BadModelData(f"The model data holds the numpy dtype {text!r:.40}.")
    try:
        dtype = np.dtype(text)
    except TypeError:
        raise BadModelData(f"The model data holds the numpy dtype {text!r:.40}.") from None
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise BadModelData(f"The model data holds a numpy array of {dtype}, which a model may not use.")
    return dtype


def _shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, list) or len(shape) > 32 or not all(
            isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_NODES * 64 for n in shape):
        raise BadModelData("A numpy array in the model data has a malformed shape.")
    return tuple(shape)


def _check_constructor_args(args: list, name: str, bound: int | None = None) -> None:
    """Constructors get plain, small values: no allocation sized by the data (``bytes(10**9)``).

    river's Rust classes allocate their windows up front from these numbers, and a failed
    allocation in Rust aborts the whole process, so their bound is tighter.
    """
    if bound is None:
        bound = MAX_RUST_CONSTRUCTOR_INT if name.startswith("river._river_rust.") else MAX_CONSTRUCTOR_INT
    for arg in args:
        if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > bound:
            raise BadModelData(f"{name} in the model data is built with the number {arg}, which is too large.")


def _call_constructor(cls: type, args: list, name: str) -> Any:
    if cls is STDLIB_CLASSES["collections.deque"] and len(args) == 2 and args[1] is not None \
            and not isinstance(args[1], int):
        raise BadModelData("A deque in the model data has a malformed maxlen.")
    try:
        return cls(*args)
    except (TypeError, ValueError) as error:
        raise BadModelData(f"{name} cannot be built from the model data ({error}).") from None


def _set_state(obj: Any, state: Any, name: str) -> None:
    """Set an instance's state as pickle would, but only non-dunder names, and only on instances."""
    dict_state, slot_state = state, None
    if isinstance(state, tuple) and len(state) == 2 and all(s is None or isinstance(s, dict) for s in state):
        dict_state, slot_state = state
    for mapping in (dict_state, slot_state):
        if isinstance(mapping, dict) and any(is_dunder(key) for key in mapping):
            bad = next(key for key in mapping if is_dunder(key))
            raise BadModelData(f"The state of {name} in the model data sets {bad!r:.60}, which is not allowed.")
    setstate = None
    for klass in type(obj).__mro__:
        if "__setstate__" in vars(klass):
            setstate = vars(klass)["__setstate__"]
            break
    if setstate is not None and getattr(setstate, "__objclass__", None) is not object:
        try:
            setstate(obj, state)
        except BaseException as error:  # noqa: BLE001 - pyo3 panics derive from BaseException
            if isinstance(error, (KeyboardInterrupt, SystemExit, MemoryError)):
                raise
            raise BadModelData(f"{name} refused its state from the model data ({type(error).__name__}).") from None
        return
    if dict_state is not None:
        if not isinstance(dict_state, dict) or not hasattr(obj, "__dict__"):
            raise BadModelData(f"The state of {name} in the model data is not a dict of attributes.")
        vars(obj).update(dict_state)
    if slot_state:
        for key, value in slot_state.items():
            try:
                object.__setattr__(obj, key, value)
            except (AttributeError, TypeError):
                raise BadModelData(f"{name} has no slot {key!r:.60} to set from the model data.") from None


def rebuild(data: bytes | str, prefixes: tuple[str, ...] = ()) -> Any:
    """The model a model-data document describes; :class:`BadModelData` for anything else."""
    try:
        document = json.loads(data, parse_constant=_refuse_constant)
    except RecursionError:
        raise BadModelData("The model data is nested too deeply.") from None
    except ValueError as error:  # malformed JSON, or an int of too many digits
        raise BadModelData(f"The model data is not readable ({error}).") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT or document.get("version") != VERSION:
        if isinstance(document, list):  # a bare value: the doctest and tests write nodes directly
            document = {"root": document}
        else:
            raise BadModelData("The model data is not in this server's format.")
    reader = _Reader(tuple(prefixes))
    try:
        model, expanded = reader.read(document.get("root"))
    except RecursionError:
        raise BadModelData("The model data is nested too deeply.") from None
    if expanded > min(MAX_EXPANDED, max(MIN_EXPANDED, MAX_EXPANSION * reader.count)):
        raise BadModelData(
            f"The model's shared references expand to {expanded} values from {reader.count} stored: "
            "a structure built to make walking it explode."
        )
    return model
