"""The server's reader of model data: it builds river models and refuses everything else.

The sandbox hands models back as data; a sandbox that was broken into could send
anything, so each test here is a document an attacker would write by hand.
"""

from __future__ import annotations

import base64
import json
import math
import pickle

import numpy as np
import pytest
from river import linear_model, preprocessing, utils

from django_river_ml.describe import MAX_DESCRIBED_VALUES, describe_model
from django_river_ml.modeldata import MAX_DEPTH, MAX_KEY_DEPTH, BadModelData, encode, rebuild

LINEAR = ["G", "river.linear_model.lin_reg", "LinearRegression"]


def doc(root) -> bytes:
    return json.dumps({"format": "django-river-ml/model-data", "version": 1, "root": root}).encode()


def instance(number, module, qualname, state=None, how="new", args=()):
    return ["O", number, module, qualname, how, list(args), state, [], []]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_a_model_round_trips_and_keeps_learning_alike():
    model = preprocessing.StandardScaler() | linear_model.LinearRegression()
    for i in range(20):
        model.learn_one({"x": float(i)}, 2.0 * i)
    copy = rebuild(encode(model))
    for i in range(5):
        model.learn_one({"x": float(i)}, 1.0)
        copy.learn_one({"x": float(i)}, 1.0)
    assert copy.predict_one({"x": 3.0}) == model.predict_one({"x": 3.0})


def test_plain_values_round_trip():
    value = {"a": [1, 2.5, None, True, "s"], (1, "k"): frozenset({1, 2}), "b": b"\x00\xff", "n": math.inf,
             "set": {3, 4}, "arr": np.arange(6, dtype=np.float64).reshape(2, 3), "np": np.float64(1.5)}
    model = utils.VectorDict({"x": 1.0})
    copy = rebuild(encode({"v": value, "m": model}))
    assert copy["v"]["a"] == value["a"] and copy["v"][(1, "k")] == frozenset({1, 2})
    assert copy["v"]["b"] == b"\x00\xff" and copy["v"]["n"] == math.inf and copy["v"]["set"] == {3, 4}
    assert (copy["v"]["arr"] == value["arr"]).all() and copy["v"]["np"] == np.float64(1.5)
    assert copy["m"]["x"] == 1.0


@pytest.mark.parametrize(("root", "words"), [
    (["O", 0, "os", "system", "call", ["echo hi"], None, [], []], "os.system"),
    (["O", 0, "builtins", "eval", "call", ["1"], None, [], []], "builtins.eval"),
    (["G", "builtins", "eval"], "builtins.eval"),
    (["G", "river.datasets.base", "os"], "river.datasets.base.os"),  # re-exported through river
    (["G", "river.stream.iter_csv", "iter_csv"], "river.stream"),   # river's file readers
    (["G", "river.utils.rolling", "BaseRolling.__getattr__"], "__getattr__"),
    (["G", "pathlib", "Path"], "pathlib.Path"),
    (["O", 0, "pathlib", "PosixPath", "new", [], None, [], []], "pathlib.PosixPath"),
    (["O", 0, "builtins", "type", "call", ["X", [], {}], None, [], []], "builtins.type"),
    (["O", 0, "river.linear_model.lin_reg", "LinearRegression", "call", [], None, [], []], "cannot be built"),
], ids=["os.system", "eval-call", "eval-global", "reexport", "io-module", "dunder-method", "path-global",
        "path-instance", "type", "call-a-river-class"])
def test_names_outside_the_allow_list_are_refused(root, words):
    with pytest.raises(BadModelData, match=words.replace(".", r"\.")):
        rebuild(doc(root))


@pytest.mark.parametrize("key", ["__class__", "__reduce_ex__", "__module__", "__dict__", "__setstate__"])
def test_dunder_attributes_are_never_set(key):
    with pytest.raises(BadModelData, match="not allowed"):
        rebuild(doc(instance(0, "river.linear_model.lin_reg", "LinearRegression", ["d", 1, key, 1])))
    with pytest.raises(BadModelData, match="not allowed"):  # as slot state too
        rebuild(doc(instance(0, "river.linear_model.lin_reg", "LinearRegression",
                             ["t", 2, None, ["d", 1, key, 1]])))


def test_a_method_is_found_in_the_class_not_through_getattr():
    # BaseRolling forwards unknown attributes to what it wraps; a method name must be the class's own.
    rolling = instance(0, "river.utils.rolling", "Rolling", ["d", 1, "obj", ["d", 2], "window_size", 3])
    with pytest.raises(BadModelData, match="write_text"):
        rebuild(doc(["M", rolling, "write_text"]))
    with pytest.raises(BadModelData, match="__getattr__|not allowed|may not use"):
        rebuild(doc(["M", rolling, "__getattr__"]))


def test_deeply_nested_dict_keys_are_refused_before_hashing():
    key = 1
    for _ in range(MAX_KEY_DEPTH + 2):
        key = ["t", None, key]
    numbered, counter = key, [100]

    def number(node):
        if isinstance(node, list) and node[0] == "t":
            counter[0] += 1
            return ["t", counter[0], number(node[2])]
        return node

    with pytest.raises(BadModelData, match="nested more than"):
        rebuild(doc(["d", 0, number(numbered), 1]))


def test_nesting_deeper_than_the_limit_is_refused():
    node = 1
    for i in range(MAX_DEPTH + 5):
        node = ["l", i, node]
    with pytest.raises(BadModelData, match="nested"):
        rebuild(doc(node))


def test_a_million_levels_of_json_nesting_is_a_clean_error():
    with pytest.raises(BadModelData):
        rebuild(b'{"format": "django-river-ml/model-data", "version": 1, "root": ' + b"[" * 1_000_000)


def test_shared_structure_that_explodes_when_walked_is_refused():
    # 40 levels, each a list holding the previous one twice: 2**40 values when walked.
    node = ["l", 0, 1]
    for i in range(1, 41):
        node = ["l", i, node, ["R", i - 1]]
    with pytest.raises(BadModelData, match="expand"):
        rebuild(doc(node))


def test_reference_cycles_are_refused():
    with pytest.raises(BadModelData, match="cycle"):
        rebuild(doc(["l", 0, ["R", 0]]))
    with pytest.raises(BadModelData, match="before it is complete or at all"):
        rebuild(doc(["l", 0, ["R", 7]]))


def test_arrays_come_only_from_their_bytes():
    with pytest.raises(BadModelData, match="wrong number of bytes"):
        rebuild(doc(["A", 0, "<f8", [1000, 1000], False, b64(b"\x00" * 8)]))
    with pytest.raises(BadModelData, match="may not use"):
        rebuild(doc(["A", 0, "|O", [1], False, b64(b"\x00" * 8)]))
    with pytest.raises(BadModelData, match="array of <U8"):
        rebuild(doc(["A", 0, "<U8", [1], False, b64(b"\x00" * 32)]))
    with pytest.raises(BadModelData, match="wrong number of items"):
        rebuild(doc(["AO", 0, [3], 1]))
    array = rebuild(doc(["A", 0, "<f8", [2], False, b64(np.array([1.5, 2.5]).tobytes())]))
    assert array.tolist() == [1.5, 2.5]


def test_constructors_get_no_size_from_the_data():
    with pytest.raises(BadModelData, match="too large"):
        rebuild(doc(["O", 0, "collections", "deque", "call", [["l", 1], 300_000_000_000], None, [], []]))
    with pytest.raises(BadModelData, match="maxlen"):
        rebuild(doc(["O", 0, "collections", "deque", "call", [["l", 1], "big"], None, [], []]))
    with pytest.raises(BadModelData, match="builtins.bytes|may not use"):
        rebuild(doc(["O", 0, "builtins", "bytes", "call", [300_000_000], None, [], []]))


@pytest.mark.parametrize(("name", "args"), [("RsRollingQuantile", [0.5, 2**31 - 1]),
                                            ("RsRollingIQR", [0.25, 0.75, 2**31 - 1])])
def test_rust_windows_sized_by_the_data_are_refused_before_rust_allocates(name, args):
    # A failed allocation in Rust aborts the process (16 GiB for these): the number is refused first.
    with pytest.raises(BadModelData, match="too large"):
        rebuild(doc(instance(0, "river._river_rust.stats", name, None, args=args)))


def test_rust_state_that_is_not_its_own_is_refused_without_crashing():
    with pytest.raises(BadModelData, match="refused its state"):
        rebuild(doc(instance(0, "river._river_rust.stats", "RsQuantile", ["b", b64(b"\xff" * 64)], args=[0.5])))


@pytest.mark.parametrize("data", [
    b"", b"null", b"[]", b'{"format": "pickle"}', b"\x80\x04junk", b'["Q", 1]', b"[1, 2]", b'["l"]',
    b'{"format": "django-river-ml/model-data", "version": 1, "root": NaN}',
    b'{"format": "django-river-ml/model-data", "version": 1, "root": ' + b"9" * 5000 + b"}",
    b'{"format": "django-river-ml/model-data", "version": 2, "root": 1}',
    doc(["F", "0x1p3"]), doc(["b", "not base64!"]), doc(["O", 0, "river", 5, "new", [], None, [], []]),
    doc(["d", 0, ["l", 1], 1]), doc(["s", 0, ["d", 1]]), doc(["N", "<f8", b64(b"\x00")]),
    doc(["RS", 0, ["d", 1, "bit_generator", "PCG64"]]), doc(["RG", 0, "Evil", ["d", 1]]),
    doc(["P", 0, 1, [], {}]), doc(["P", 0, LINEAR, [], {"__class__": 1}]), doc(["IG", 0]),
    doc(["D", "str", "format"]), doc(["M", 1, "real"]),
], ids=lambda d: repr(d[:40]))
def test_malformed_documents_are_bad_model_data(data):
    with pytest.raises(BadModelData):
        rebuild(data)


def test_the_json_view_of_a_model_is_bounded(settings):
    # A parameter holding a huge structure: the view cuts it instead of walking it all.
    model = linear_model.LinearRegression()
    model.l2 = [[i] for i in range(MAX_DESCRIBED_VALUES * 3)]
    described = describe_model(model)["LinearRegression"]
    assert len(json.dumps(described)) < 200_000
    assert "..." in json.dumps(described)


def test_snapshot_pickling_of_a_rebuilt_model_uses_only_river_code():
    # What the server pickles into its snapshots has no state an upload could steer.
    model = rebuild(encode(preprocessing.StandardScaler() | linear_model.LinearRegression()))
    assert pickle.loads(pickle.dumps(model)).predict_one({"x": 1.0}) == 0.0
