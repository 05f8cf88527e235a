"""The example site's SECRET_KEY: ``$DJANGO_SECRET_KEY``, else a random key kept in the data directory.

A key written in settings.py is public (it is in the repository), and whoever has it can sign
sessions and the River API's JWTs. So the site never falls back to one: on first run a random
key is written to a file only its owner can read, and every worker process and every restart
reads the same file, so they agree on the key.

>>> import pathlib, tempfile
>>> with tempfile.TemporaryDirectory() as directory:
...     path = pathlib.Path(directory) / "secret_key"
...     key = load_or_create(path)
...     print(len(key) > 50, load_or_create(path) == key, oct(path.stat().st_mode & 0o777))
True True 0o600
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

ENV_NAME = "DJANGO_SECRET_KEY"


class SecretKeyError(RuntimeError):
    """The key file cannot be used."""


def load_or_create(path: Path) -> str:
    """The key in ``path``, made first if there is none (atomically: racing workers agree)."""
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        handle, draft = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    except OSError as error:
        raise SecretKeyError(f"Cannot make a secret key in {path.parent} ({error}); set {ENV_NAME}.") from error
    try:
        with os.fdopen(handle, "w") as out:
            out.write(secrets.token_urlsafe(64) + "\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(draft, path)  # never replaces: the first process to get here wins
        except FileExistsError:
            pass
    finally:
        os.unlink(draft)
    return _read(path)


def _read(path: Path) -> str:
    key = path.read_text().strip()
    if len(key) < 50:
        raise SecretKeyError(f"{path} holds no usable secret key; delete it to have a new one made "
                             f"(or set {ENV_NAME}).")
    return key


def secret_key(data_dir: Path) -> str:
    """``$DJANGO_SECRET_KEY`` when set, else the key kept in ``<data_dir>/secret_key``."""
    return os.environ.get(ENV_NAME) or load_or_create(Path(data_dir) / "secret_key")
