"""Run a markdown document's examples in order, as a reader at a terminal would.

The blocks are found by sybil's markdown parsers; this module says how each kind runs:

- ``bash``: a ``bash -e -o pipefail`` script in the document's working directory and
  environment. What it exports and where it ``cd``s carry over to the next blocks.
- ``python``: in one Python process per document (the ``python`` first on the document's
  ``PATH``, so the virtualenv the document activated), whose names carry over between blocks.
  Three first lines change that, and say so to the reader too:
  ``# python manage.py shell ...`` runs the block with ``python manage.py shell -c``;
  ``# <path>.py: add at the end`` appends the block to that file;
  ``# settings.py ...`` is a fragment of a site's settings: it runs after the settings module
  ``django-admin startproject`` makes, and the ``DJANGO_RIVER_ML`` it leaves must pass the system
  check (its apps and caches must import).
- ``json``: must parse.
- ``<!-- skip: next "reason" -->`` (sybil's) skips the next block, and needs a reason.
- ``<!-- serve: COMMAND -->`` starts COMMAND in the background with ``$PORT`` a free port, waits
  until it serves ``/api/``, and exports ``RIVER_API_URL``: it stands in for a server the
  document starts in the foreground (which is skipped).

Nothing else is set up behind the reader's back: the document's first environment is the
test's own, less every ``DJANGO_*``, ``RIVER_*``, ``PYTHON*`` variable and virtualenv, plus what
:class:`DocumentRun` is given (the server's ``RIVER_API_URL``, a ``HOME`` of its own).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
import unittest
from dataclasses import dataclass, field
from pathlib import Path

from sybil import Document, Example, Region
from sybil.parsers.markdown import CodeBlockParser, SkipParser
from sybil.parsers.markdown.lexers import DirectiveInHTMLCommentLexer

LANGUAGES = ("bash", "python", "json")
BLOCK_TIMEOUT = 300
SHELL_BLOCK = re.compile(r"\A# python manage\.py shell\b")
APPEND_BLOCK = re.compile(r"\A# (?P<path>[\w./-]+\.py): add at the end\b")
SETTINGS_BLOCK = re.compile(r"\A# settings\.py\b")
FENCE = re.compile(r"^[ \t]*(?:`{3,}|~{3,})(?P<info>[^\n`]*)$", re.MULTILINE)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def reader_environment(extra: dict[str, str]) -> dict[str, str]:
    """The test's environment as a new terminal has it: no app, client or virtualenv variables, no
    virtualenv on PATH."""
    venv_bin = str(Path(sys.prefix) / "bin")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DJANGO_", "RIVER_", "PYTHON", "VIRTUAL_ENV", "PYTEST_", "PIP_"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and os.path.realpath(p) != os.path.realpath(venv_bin))
    env.update(extra)
    return env


# Console scripts a document may call, as the packages that own them would have made them.
SCRIPTS = {"pip": ("pip._internal.cli.main", "main"), "gunicorn": ("gunicorn.app.wsgiapp", "run"),
           "riverapi": ("riverapi.cli", "main"),
           "django-admin": ("django.core.management", "execute_from_command_line")}


def virtualenv_seeing_ours(where: Path, scripts: tuple[str, ...]) -> Path:
    """A new virtualenv that imports this one's packages (through a .pth) but installs into itself:
    a document that pip-installs or runs `make install` cannot change the test suite's own."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    Path(purelib, "_test_suite_packages.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    for name in scripts:
        module, function = SCRIPTS[name]
        script = where / "bin" / name
        script.write_text(f"#!{python}\nimport sys\nfrom {module} import {function}\nsys.exit({function}())\n")
        script.chmod(0o755)
    return where


class BlockFailed(AssertionError):
    pass


@dataclass
class DocumentRun:
    """One reading of one document: its working directory, environment and processes."""

    path: Path
    cwd: Path
    env: dict[str, str]
    scratch: Path
    skipped: list[tuple[int, str]] = field(default_factory=list)
    ran: list[tuple[int, str]] = field(default_factory=list)
    servers: list[subprocess.Popen] = field(default_factory=list)
    seconds: dict[int, float] = field(default_factory=dict)  # by line: what each example took
    settings_check: object = None  # called with a fragment's namespace; set by the test
    _python: subprocess.Popen | None = None
    _python_exe: str | None = None
    _answers: object = None
    _python_log: Path | None = None

    # Reading ---------------------------------------------------------------------

    def run(self) -> None:
        document = parse(self.path)
        check_fences(document)
        document.namespace["run"] = self
        try:
            for example in document:
                started = time.monotonic()
                try:
                    example.evaluate()
                except unittest.SkipTest as skip:
                    self.skipped.append((example.line, str(skip)))
                self.seconds[example.line] = time.monotonic() - started
        finally:
            self.close()

    def where(self, example: Example) -> str:
        return f"{self.path.name}, line {example.line}"

    # Evaluators --------------------------------------------------------------------

    def bash(self, example: Example) -> None:
        source = str(example.parsed)
        state = self.scratch / "state"
        script = self.scratch / "block.sh"
        script.write_text(f"set -e -o pipefail\n{source}\n"
                          f"env -0 > {shlex.quote(str(state))}.env\npwd > {shlex.quote(str(state))}.pwd\n")
        result = run_in_own_group(["bash", str(script)], cwd=self.cwd, env=self.env)
        if result.returncode != 0:
            raise BlockFailed(f"{self.where(example)}: the bash block exited {result.returncode}:\n{source}\n"
                              f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}")
        pairs = Path(f"{state}.env").read_text().split("\0")
        self.env = dict(pair.split("=", 1) for pair in pairs if "=" in pair)
        self.cwd = Path(Path(f"{state}.pwd").read_text().strip())
        self.ran.append((example.line, "bash"))

    def python(self, example: Example) -> None:
        source = str(example.parsed)
        if SHELL_BLOCK.match(source):
            self._manage_py_shell(example, source)
        elif match := APPEND_BLOCK.match(source):
            target = self.cwd / match["path"]
            if not target.is_file():
                raise BlockFailed(f"{self.where(example)}: {target} does not exist to add to")
            with open(target, "a") as handle:
                handle.write("\n" + source)
        elif SETTINGS_BLOCK.match(source):
            if self.settings_check is None:
                raise BlockFailed(f"{self.where(example)}: no check for settings fragments was given")
            self.settings_check(source, self.where(example))
        else:
            self._in_python(example, source)
        self.ran.append((example.line, "python"))

    def json(self, example: Example) -> None:
        try:
            json.loads(str(example.parsed))
        except ValueError as error:
            raise BlockFailed(f"{self.where(example)}: the json block does not parse: {error}") from None
        self.ran.append((example.line, "json"))

    def serve(self, example: Example) -> None:
        command = example.parsed
        port = free_port()
        log = open(self.scratch / f"serve-{port}.log", "wb")
        server = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=self.cwd, env={**self.env, "PORT": str(port)},
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.servers.append(server)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        import requests

        while True:
            try:
                if requests.get(f"{url}/api/", timeout=2).status_code < 500:
                    break
            except requests.RequestException:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise BlockFailed(f"{self.where(example)}: `{command}` did not serve {url}/api/:\n"
                                  f"{(self.scratch / f'serve-{port}.log').read_text(errors='replace')[-4000:]}")
            time.sleep(0.1)
        self.env["RIVER_API_URL"] = url
        self.ran.append((example.line, "serve"))

    # Python ------------------------------------------------------------------------

    def _which_python(self) -> str:
        found = shutil.which("python", path=self.env.get("PATH"))
        if not found:
            raise BlockFailed(f"{self.path.name}: there is no `python` on the document's PATH")
        return found

    def _manage_py_shell(self, example: Example, source: str) -> None:
        result = run_in_own_group([self._which_python(), "manage.py", "shell", "-c", source], cwd=self.cwd,
                                  env=self.env)
        if result.returncode != 0:
            raise BlockFailed(f"{self.where(example)}: `python manage.py shell` in {self.cwd} failed:\n{source}\n"
                              f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-6000:]}")

    def _in_python(self, example: Example, source: str) -> None:
        python = self._which_python()
        if self._python is None or self._python_exe != python:
            self._stop_python()
            self._start_python(python)
        offset = self._python_log.stat().st_size
        request = {"code": source, "env": self.env, "cwd": str(self.cwd), "filename": str(self.path),
                   "line": example.line}
        self._python.stdin.write(json.dumps(request) + "\n")
        self._python.stdin.flush()
        answer = self._answers.readline()
        output = self._python_log.read_bytes()[offset:].decode(errors="replace")
        if not answer:
            raise BlockFailed(f"{self.where(example)}: the Python process died:\n{output[-4000:]}")
        error = json.loads(answer)["error"]
        if error:
            raise BlockFailed(f"{self.where(example)}: the python block raised:\n{source}\n--- output ---\n"
                              f"{output[-4000:]}\n--- error ---\n{error}")

    def _start_python(self, python: str) -> None:
        read_end, write_end = os.pipe()
        self._python_log = self.scratch / "python.log"
        self._python_log.touch()
        with open(self._python_log, "ab") as log:
            self._python = subprocess.Popen([python, "-c", WORKER, str(write_end)], cwd=self.cwd, env=self.env,
                                            stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, text=True,
                                            pass_fds=(write_end,))
        os.close(write_end)
        self._answers = os.fdopen(read_end, "r")
        self._python_exe = python

    def _stop_python(self) -> None:
        if self._python is not None:
            self._python.stdin.close()
            try:
                self._python.wait(10)
            except subprocess.TimeoutExpired:
                self._python.kill()
                self._python.wait(5)
            self._answers.close()
        self._python = None

    def close(self) -> None:
        self._stop_python()
        for server in self.servers:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
                try:
                    server.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(server.pid, signal.SIGKILL)
                    server.wait(5)


# The document's Python process: one block per line of JSON on stdin, one answer per block on a pipe.
WORKER = textwrap.dedent("""
    import json, os, sys, traceback
    answers = os.fdopen(int(sys.argv[1]), "w")
    namespace = {"__name__": "__main__"}
    for line in sys.stdin:
        block = json.loads(line)
        os.environ.clear()
        os.environ.update(block["env"])
        os.chdir(block["cwd"])
        try:
            code = compile("\\n" * block["line"] + block["code"], block["filename"], "exec")
            exec(code, namespace)
            error = None
        except BaseException:
            error = traceback.format_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        answers.write(json.dumps({"error": error}) + "\\n")
        answers.flush()
""")


def run_in_own_group(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run to the end, or BLOCK_TIMEOUT; then everything it started is killed, not only itself."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, **kwargs)
    try:
        stdout, stderr = process.communicate(timeout=BLOCK_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        stderr += f"\n(killed after {BLOCK_TIMEOUT} s)"
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # what it left running in the background
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _evaluator(kind: str):
    def evaluate(example: Example) -> None:
        getattr(example.namespace["run"], kind)(example)
    return evaluate


class ServeParser:
    """``<!-- serve: COMMAND -->``: a server started in the background on ``$PORT``."""

    def __init__(self) -> None:
        self.lexer = DirectiveInHTMLCommentLexer(directive="serve", arguments=".+?")

    def __call__(self, document: Document):
        for lexed in self.lexer(document):
            yield Region(lexed.start, lexed.end, lexed.lexemes["arguments"].strip(), _evaluator("serve"))


def parse(path: Path) -> Document:
    parsers = [CodeBlockParser(language, _evaluator(language)) for language in LANGUAGES]
    return Document.parse(str(path), *parsers, SkipParser(), ServeParser())


def check_fences(document: Document) -> None:
    """Every fenced block is one the runner knows (or plain text without a language); no hidden setup;
    every skip has its reason."""
    if "invisible-code" in document.text:
        raise BlockFailed(f"{document.path}: an invisible code block hides setup from the reader")
    opened = False
    for match in FENCE.finditer(document.text):
        if not opened:
            language = match["info"].strip()
            if language and language not in LANGUAGES:
                line = document.text.count("\n", 0, match.start()) + 1
                raise BlockFailed(f"{document.path}, line {line}: a {language!r} block, which no test runs")
        opened = not opened
    for example in document:
        if isinstance(example.parsed, tuple) and example.parsed[0] == "next" and not example.parsed[1]:
            raise BlockFailed(f"{document.path}, line {example.line}: a skip without a reason")


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="docs-"))
