"""JSON views of models and of the values they produce.

>>> from river import linear_model, preprocessing
>>> describe_model(preprocessing.StandardScaler() | linear_model.LinearRegression())["StandardScaler"]
{'with_std': True, 'window_size': None}
>>> to_jsonable({True: 0.25, False: float("nan")})
{True: 0.25, False: None}
"""

from __future__ import annotations

import inspect
import math
from numbers import Integral, Real
from typing import Any


def describe_metrics(metrics: list) -> dict:
    """A model's metrics by name, as JSON: what /api/metrics/ answers and each version records."""
    return {type(metric).__name__: to_jsonable(metric.get()) for metric in metrics}


def to_jsonable(value: Any) -> Any:
    """Plain JSON types; NaN and infinities become null (strict JSON has neither)."""
    kind = type(value)
    if kind is float:  # the usual prediction: no look-up of the numbers ABCs
        return value if math.isfinite(value) else None
    if value is None or kind is str or kind is bool or kind is int:
        return value
    if isinstance(value, (str, bool)):
        return value
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Real):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, dict):
        return {_key(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return to_jsonable(value.item())
    return str(value)


def _key(key: Any) -> str | int | float | bool | None:
    if key is None or isinstance(key, (str, bool, int, float)):
        return key
    return str(key)


#: Most values a model's JSON view shows: parameters are small, but a model can hold a structure
#: that shares itself so that a walk over it never ends (the rest is cut, shown as "...").
MAX_DESCRIBED_VALUES = 10_000


class _Budget:
    def __init__(self, values: int):
        self.left = values

    def take(self) -> bool:
        self.left -= 1
        return self.left >= 0


def _describe_value(value: Any, budget: _Budget) -> Any:
    if not budget.take():
        return "..."
    # river's _get_params gives nested estimators as (class, params) pairs.
    if isinstance(value, tuple) and len(value) == 2 and inspect.isclass(value[0]) and isinstance(value[1], dict):
        return {value[0].__name__: _describe_items(value[1], budget)}
    if inspect.isclass(value):
        return value.__name__
    if callable(value) and hasattr(value, "__name__"):
        return value.__name__
    if isinstance(value, dict):
        return _describe_items(value, budget)
    if isinstance(value, (list, tuple, set, frozenset)):
        described = []
        for item in value:
            if budget.left <= 0:
                described.append("...")
                break
            described.append(_describe_value(item, budget))
        return described
    return to_jsonable(value)


def _describe_items(params: dict, budget: _Budget) -> dict:
    described = {}
    for key, value in params.items():
        if budget.left <= 0:
            described["..."] = "cut: the model holds more values than a JSON view shows"
            break
        described[_key(key)] = _describe_value(value, budget)
    return described


def describe_model(model: Any) -> dict:
    """The model's parameters keyed by step class name (a pipeline has one key a step)."""
    budget = _Budget(MAX_DESCRIBED_VALUES)
    get_params = getattr(model, "_get_params", None)
    params = get_params() if callable(get_params) else {}
    if isinstance(getattr(model, "steps", None), dict):
        return _describe_items({str(step): step_params for step, step_params in params.items()}, budget)
    return {type(model).__name__: _describe_items(params, budget)}
