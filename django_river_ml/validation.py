"""Checks on the values callers send: features, identifiers, targets.

DjangoClient runs them, so server code calling it directly is checked exactly
like the REST API.

>>> validate_features({"age": 42, "city": "Lyon", "member": True, "score": None})
{'age': 42, 'city': 'Lyon', 'member': True, 'score': None}
>>> validate_features({"age": float("nan")})
Traceback (most recent call last):
...
django_river_ml.exceptions.InvalidInput: Feature 'age' is nan; only finite numbers are accepted.
"""

from __future__ import annotations

import math
import re
from typing import Any

from django_river_ml.exceptions import InvalidInput
from django_river_ml.settings import river_settings

MAX_IDENTIFIER_LENGTH = 200
# An idempotency key: 1 to this many visible ASCII characters (no spaces), so it travels as an HTTP
# header unchanged and fits a Redis stream's entry id with its stream's name.
MAX_IDEMPOTENCY_KEY_LENGTH = 200
IDEMPOTENCY_KEY_PATTERN = re.compile(f"[!-~]{{1,{MAX_IDEMPOTENCY_KEY_LENGTH}}}")
# Deeper values would overflow Python's recursion when they are stored or compared.
MAX_NESTING = 20
# The types JSON gives feature values (checked by identity first: a batch checks thousands).
_PLAIN_TYPES = frozenset({str, int, bool, type(None)})  # float: checked for nan and infinity
_JSON_TYPES = _PLAIN_TYPES | {float}
_STR = frozenset({str})


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays and objects in ``value`` nest more than ``limit`` levels (walked without recursion)."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, (dict, list, tuple)):
            if depth > limit:
                return True
            pending.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def validate_features(features: Any) -> dict:
    """Features are an object of names to numbers, strings, booleans or null."""
    if not isinstance(features, dict):
        raise InvalidInput(f"features must be an object of feature names to values, not {type(features).__name__}.")
    if len(features) > river_settings.MAX_FEATURES:
        raise InvalidInput(f"features has {len(features)} entries; the limit is {river_settings.MAX_FEATURES}.")
    # The common case in C-level loops (a batch checks thousands); the loop below says what is wrong.
    values = features.values()
    kinds = set(map(type, values))
    if kinds <= _JSON_TYPES and set(map(type, features)) <= _STR and (
            float not in kinds or all(map(math.isfinite, (v for v in values if type(v) is float)))):
        return features
    for key, value in features.items():
        if not isinstance(key, str):
            raise InvalidInput(f"Feature names must be strings, not {key!r}.")
        if type(value) in _PLAIN_TYPES:
            continue
        if isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidInput(f"Feature {key!r} is {value}; only finite numbers are accepted.")
        elif not isinstance(value, (str, bool, int)):
            raise InvalidInput(
                f"Feature {key!r} must be a number, string, boolean or null, not {type(value).__name__}."
            )
    return features


def validate_identifier(identifier: Any) -> str | None:
    if identifier is None:
        return None
    if not isinstance(identifier, str) or not identifier or len(identifier) > MAX_IDENTIFIER_LENGTH:
        raise InvalidInput(f"identifier must be a non-empty string of at most {MAX_IDENTIFIER_LENGTH} characters.")
    if any(ord(c) < 32 for c in identifier):
        raise InvalidInput("identifier must not contain control characters.")
    return identifier


def validate_idempotency_key(key: Any) -> str | None:
    """An idempotency key (None: the learn has none).

    >>> validate_idempotency_key("7d9f0c2e-retry")
    '7d9f0c2e-retry'
    >>> validate_idempotency_key("two words")
    Traceback (most recent call last):
    ...
    django_river_ml.exceptions.InvalidInput: idempotency_key must be 1 to 200 visible ASCII characters (no spaces).
    """
    if key is None:
        return None
    if not isinstance(key, str) or not IDEMPOTENCY_KEY_PATTERN.fullmatch(key):
        raise InvalidInput(f"idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} visible ASCII characters "
                           "(no spaces).")
    return key


def validate_value(field: str, value: Any) -> Any:
    """A target or label: finite numbers only, and not nested deeper than MAX_NESTING."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput(f"{field} is {value}; only finite numbers are accepted.")
    if nested_deeper_than(value, MAX_NESTING):
        raise InvalidInput(f"{field} is nested more than {MAX_NESTING} levels deep.")
    return value


#: Version numbers stay within what SQLite and JSON clients hold exactly.
MAX_VERSION = 2**53


def validate_version(version: Any) -> int:
    """A version number: a whole number from 1 (JSON's ``3``, or ``"3"`` from a query string)."""
    if isinstance(version, str) and version.isascii() and version.isdigit() and len(version) <= 16:
        version = int(version)
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= MAX_VERSION:
        raise InvalidInput(f"version must be a whole number of at least 1, not {version!r}.")
    return version
