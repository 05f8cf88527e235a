"""Examples read from CSV or JSON-lines files, for the command line's ``learn`` and ``predict``.

CSV: the first row names the columns; a cell that is a finite number becomes a float, an empty
cell is a missing feature (left out, as river expects), anything else stays a string. JSON lines:
one JSON object per line (blank lines are skipped), values as they are. The ``target`` column or
key is taken out of the features and is the example's ground truth.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["InputError", "Record", "FORMATS", "TARGET_TYPES", "detect_format", "parse_number", "convert_target",
           "read_records"]

FORMATS = ("csv", "jsonl")
TARGET_TYPES = ("auto", "float", "int", "str", "bool")
_EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


class InputError(ValueError):
    """An input file, or a value in it, cannot be used."""


@dataclass(frozen=True)
class Record:
    line: int
    features: dict[str, Any]
    target: Any = None


def detect_format(path: str | Path, given: str | None = None) -> str:
    """``given``, else the format the file's extension says."""
    if given:
        if given not in FORMATS:
            raise InputError(f"unknown format {given!r}; choose one of {', '.join(FORMATS)}")
        return given
    suffix = Path(path).suffix.lower()
    if suffix not in _EXTENSIONS:
        raise InputError(f"cannot tell the format of {path} from its extension: name it .csv or .jsonl, "
                         "or pass --format")
    return _EXTENSIONS[suffix]


def parse_number(text: str) -> float | str:
    """A finite number as a float, anything else unchanged.

    >>> parse_number("3"), parse_number(" 2.5e1 "), parse_number("nan"), parse_number("red")
    (3.0, 25.0, 'nan', 'red')
    """
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text


def convert_target(value: Any, target_type: str = "auto") -> Any:
    """The ground truth as ``target_type`` says (``auto``: numbers in CSV text become floats).

    >>> convert_target("1", "bool"), convert_target("2.0", "int"), convert_target("7", "str")
    (True, 2, '7')
    """
    if target_type == "auto":
        return parse_number(value) if isinstance(value, str) else value
    if target_type == "str":
        return value if isinstance(value, str) else json.dumps(value)
    if target_type == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise InputError(f"the target {value!r} is not a boolean (true/false, yes/no, 1/0)")
    number = parse_number(value) if isinstance(value, str) else value
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
        raise InputError(f"the target {value!r} is not a finite number")
    if target_type == "int":
        if number != int(number):
            raise InputError(f"the target {value!r} is not a whole number")
        return int(number)
    if target_type == "float":
        return float(number)
    raise InputError(f"unknown target type {target_type!r}; choose one of {', '.join(TARGET_TYPES)}")


def read_records(path: str | Path, fmt: str, target: str | None = None, target_type: str = "auto"
                 ) -> Iterator[Record]:
    """The file's examples; ``target`` (if given) is the column or key of the ground truth.

    A record whose target is empty or null has ``target=None``.
    """
    reader = _read_csv if fmt == "csv" else _read_jsonl
    for line, row in reader(Path(path), target):
        value = row.pop(target, None) if target is not None else None
        if value == "" or value is None:
            value = None
        else:
            try:
                value = convert_target(value, target_type)
            except InputError as error:
                raise InputError(f"{path}, line {line}: {error}") from None
        yield Record(line=line, features=row, target=value)


def _open(path: Path):
    try:
        return open(path, newline="", encoding="utf-8-sig")
    except OSError as error:
        raise InputError(f"cannot read {path}: {error.strerror or error}") from None


def _read_csv(path: Path, target: str | None) -> Iterator[tuple[int, dict]]:
    with _open(path) as handle:
        reader = csv.DictReader(handle)
        try:
            columns = reader.fieldnames
        except (csv.Error, UnicodeDecodeError) as error:
            raise InputError(f"{path} is not a readable CSV file: {error}") from None
        if not columns:
            raise InputError(f"{path} is empty: a CSV file needs a header row naming its columns")
        if target is not None and target not in columns:
            raise InputError(f"{path} has no column {target!r} (columns: {', '.join(columns)})")
        try:
            for row in reader:
                if None in row:
                    raise InputError(f"{path}, line {reader.line_num}: more cells than columns")
                yield reader.line_num, {
                    name: (value if name == target else parse_number(value))
                    for name, value in row.items() if value not in ("", None) or name == target
                }
        except (csv.Error, UnicodeDecodeError) as error:
            raise InputError(f"{path}, line {reader.line_num}: {error}") from None


def _read_jsonl(path: Path, target: str | None) -> Iterator[tuple[int, dict]]:
    with _open(path) as handle:
        try:
            for number, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    row = json.loads(text)
                except ValueError as error:
                    raise InputError(f"{path}, line {number}: not JSON ({error})") from None
                if not isinstance(row, dict):
                    raise InputError(f"{path}, line {number}: not a JSON object")
                if target is not None and target not in row:
                    raise InputError(f"{path}, line {number}: no key {target!r}")
                yield number, row
        except UnicodeDecodeError as error:
            raise InputError(f"{path} is not UTF-8 text: {error}") from None
