"""Model names: generated two-word names and the rules every name follows.

Names appear in URLs and storage keys, so they are short ASCII words:
letters, digits, ``-``, ``_`` and ``.``, starting with a letter or digit.

>>> import re
>>> bool(re.fullmatch(r"[a-z]+-[a-z]+", generate_name(lambda name: False)))
True
>>> validate_name("../etc/passwd")
Traceback (most recent call last):
...
django_river_ml.exceptions.InvalidInput: Model names may use letters, digits, '-', '_' and '.', start with a letter or digit, and have at most 100 characters; '../etc/passwd' does not fit.
"""

from __future__ import annotations

import re
import secrets
from typing import Callable

from django_river_ml.exceptions import InvalidInput

MAX_NAME_LENGTH = 100
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,%d}" % (MAX_NAME_LENGTH - 1))

ADJECTIVES = (
    "able", "amber", "ample", "brave", "breezy", "bright", "brisk", "calm", "cheery", "chilly",
    "clever", "cosmic", "crisp", "curly", "dapper", "dizzy", "dusty", "eager", "early", "fancy",
    "fluffy", "frosty", "fuzzy", "gentle", "giddy", "glossy", "golden", "grumpy", "happy", "hasty",
    "hazy", "humble", "icy", "jolly", "keen", "lively", "lucky", "lunar", "mellow", "merry",
    "misty", "muddy", "nimble", "noble", "peppy", "plucky", "polite", "proud", "quick", "quiet",
    "rapid", "rosy", "rustic", "salty", "shiny", "silly", "snappy", "snowy", "solar", "spicy",
    "steady", "sunny", "swift", "tidy", "tiny", "vivid", "wacky", "witty", "zesty", "zippy",
)
NOUNS = (
    "apple", "badger", "bagel", "banana", "beetle", "biscuit", "blossom", "breeze", "buffalo", "butter",
    "cactus", "carrot", "cashew", "cherry", "cloud", "comet", "cookie", "crayon", "cricket", "cupcake",
    "dolphin", "donut", "dragon", "falcon", "fern", "fig", "gecko", "ginger", "hazel", "heron",
    "iguana", "kiwi", "koala", "lemon", "lentil", "lobster", "mango", "maple", "meadow", "melon",
    "muffin", "noodle", "nutmeg", "otter", "pancake", "panda", "parrot", "peach", "pebble", "pepper",
    "pickle", "plum", "poppy", "puffin", "pumpkin", "quail", "radish", "river", "salmon", "squash",
    "taco", "tiger", "toffee", "truffle", "tulip", "turnip", "walnut", "waffle", "willow", "yeti",
)


def validate_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InvalidInput(
            "Model names may use letters, digits, '-', '_' and '.', start with a letter or digit, "
            f"and have at most {MAX_NAME_LENGTH} characters; {name!r} does not fit."
        )
    return name


#: Words a new model may not be named: ``/model/<name>/<word>/`` routes the lifecycle (``/model/<flavor>/<name>/``
#: would read as an upload of a model named so).
RESERVED_NAMES = frozenset({"versions", "rollback", "challengers", "promote"})


def validate_new_name(name: object) -> str:
    """A name a new model may take: :func:`validate_name`'s rules, and none of :data:`RESERVED_NAMES`."""
    validate_name(name)
    if name in RESERVED_NAMES:
        raise InvalidInput(f"{name!r} names a route of a model's lifecycle; choose another name "
                           f"(reserved: {', '.join(sorted(RESERVED_NAMES))}).")
    return name


def generate_name(taken: Callable[[str], bool]) -> str:
    """An adjective-noun name that ``taken`` says is free (a number is added if need be)."""
    for _ in range(20):
        name = f"{secrets.choice(ADJECTIVES)}-{secrets.choice(NOUNS)}"
        if not taken(name):
            return name
    while True:
        name = f"{secrets.choice(ADJECTIVES)}-{secrets.choice(NOUNS)}-{secrets.randbelow(10_000)}"
        if not taken(name):
            return name
