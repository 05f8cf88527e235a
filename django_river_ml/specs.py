"""Models described in JSON: river classes and parameters, built without running uploaded code.

A spec is one step or a list of steps (a pipeline). A step names a public river
class relative to ``river`` and its parameters; a parameter may itself be a step
(an ensemble's base model, an optimizer).

>>> model = build_model([
...     {"class": "preprocessing.StandardScaler"},
...     {"class": "linear_model.LogisticRegression",
...      "params": {"l2": 0.1, "optimizer": {"class": "optim.SGD", "params": {"lr": 0.05}}}},
... ])
>>> model
Pipeline (
  StandardScaler (
    with_std=True
    window_size=None
  ),
  LogisticRegression (
    optimizer=SGD (
      lr=Constant (
        learning_rate=0.05
      )
    )
    loss=Log (
      weight_pos=1.
      weight_neg=1.
    )
    l2=0.1
    l1=0.
    intercept_init=0.
    intercept_lr=Constant (
      learning_rate=0.01
    )
    clip_gradient=1e+12
    initializer=Zeros ()
  )
)
>>> build_model({"class": "os.system"})
Traceback (most recent call last):
...
django_river_ml.exceptions.InvalidModel: 'os.system' is not a public river class ...
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from river import base, compose

from django_river_ml.exceptions import InvalidModel
from django_river_ml.allowlist import module_allowed
from django_river_ml.validation import MAX_NESTING, nested_deeper_than

CLASS_NAME = re.compile(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*\.[A-Z][A-Za-z0-9]*")
MAX_STEPS = 100


def resolve_class(name: Any) -> type:
    """A public river class from its name relative to ``river`` (``"linear_model.LinearRegression"``)."""
    if not isinstance(name, str) or not CLASS_NAME.fullmatch(name):
        raise InvalidModel(f"{name!r} is not a public river class name such as 'linear_model.LinearRegression'.")
    module_name, _, class_name = name.rpartition(".")
    full_module = f"river.{module_name}"
    if any(part.startswith("_") for part in module_name.split(".")) or not module_allowed(full_module):
        raise InvalidModel(f"{name!r} is not a public river class usable in a model.")
    try:
        module = importlib.import_module(full_module)
    except ImportError:
        module = None
    cls = getattr(module, class_name, None)
    public = getattr(module, "__all__", ())
    if not isinstance(cls, type) or class_name not in public or not issubclass(cls, base.Base):
        raise InvalidModel(
            f"{name!r} is not a public river class (river.{module_name} exports no such estimator)."
        )
    return cls


def _build(spec: Any, where: str) -> Any:
    if isinstance(spec, list):
        if not spec:
            raise InvalidModel(f"{where}: a pipeline needs at least one step.")
        if len(spec) > MAX_STEPS:
            raise InvalidModel(f"{where}: a pipeline has at most {MAX_STEPS} steps.")
        steps = [_build(step, f"{where}[{i}]") for i, step in enumerate(spec)]
        return steps[0] if len(steps) == 1 else compose.Pipeline(*steps)
    if not isinstance(spec, dict) or "class" not in spec:
        raise InvalidModel(f"{where}: a step is an object with a 'class' and optional 'params', not {spec!r:.80}.")
    unknown = set(spec) - {"class", "params"}
    if unknown:
        raise InvalidModel(f"{where}: unknown keys {sorted(unknown)}; a step has 'class' and 'params'.")
    cls = resolve_class(spec["class"])
    params = spec.get("params") or {}
    if not isinstance(params, dict):
        raise InvalidModel(f"{where}: 'params' of {spec['class']} must be an object.")
    arguments = {key: _param(value, f"{where}.params.{key}") for key, value in params.items()}
    try:
        return cls(**arguments)
    except (TypeError, ValueError, KeyError, AttributeError, AssertionError) as error:
        raise InvalidModel(f"{where}: {spec['class']} does not accept these params ({error}).") from None


def _param(value: Any, where: str) -> Any:
    """A parameter: a JSON value, or a nested step (an object with a 'class')."""
    if isinstance(value, dict) and "class" in value:
        return _build(value, where)
    if isinstance(value, list) and value and all(isinstance(v, dict) and "class" in v for v in value):
        return [_build(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def build_model(spec: Any) -> Any:
    """The river model a JSON spec describes (a list of steps is a pipeline)."""
    if nested_deeper_than(spec, MAX_NESTING):
        raise InvalidModel(f"The model spec is nested more than {MAX_NESTING} levels deep.")
    return _build(spec, "spec")
