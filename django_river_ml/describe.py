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


def to_jsonable(value: Any) -> Any:
    """Plain JSON types; NaN and infinities become null (strict JSON has neither)."""
    if value is None or isinstance(value, (str, bool)):
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


def _describe_value(value: Any) -> Any:
    # river's _get_params gives nested estimators as (class, params) pairs.
    if isinstance(value, tuple) and len(value) == 2 and inspect.isclass(value[0]) and isinstance(value[1], dict):
        return {value[0].__name__: {k: _describe_value(v) for k, v in value[1].items()}}
    if inspect.isclass(value):
        return value.__name__
    if callable(value) and hasattr(value, "__name__"):
        return value.__name__
    if isinstance(value, dict):
        return {_key(k): _describe_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_describe_value(v) for v in value]
    return to_jsonable(value)


def describe_model(model: Any) -> dict:
    """The model's parameters keyed by step class name (a pipeline has one key a step)."""
    get_params = getattr(model, "_get_params", None)
    params = get_params() if callable(get_params) else {}
    if isinstance(getattr(model, "steps", None), dict):
        return {str(step): _describe_value(step_params) for step, step_params in params.items()}
    return {type(model).__name__: {k: _describe_value(v) for k, v in params.items()}}
