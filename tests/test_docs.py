"""The documentation, executed: every example in README.md, docs/ and riverapi/README.md runs.

Each document is read from the top, in a fresh copy of the checkout, by the runner in
docs_runner.py (what each kind of block does is said there). docs/ and riverapi/README.md run
against one server per test process, started as ``make serve`` starts it (migrate, then gunicorn
in example_project/, authentication on) and given to them as ``RIVER_API_URL``. README.md makes
a new site with ``django-admin startproject`` next to the checkout and follows "Add it to a
Django site" word for word, in a virtualenv of its own that sees this one's packages (pip
installs the app and the client from the checkout; nothing is downloaded).

The other tests here hold the docs to the code: the route names, the system checks, the demo's
options, the index of documents.
"""

from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from docs_runner import DocumentRun, parse, reader_environment, scratch_dir, virtualenv_seeing_ours

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")) + ["riverapi/README.md"]
EVERY_DOC = ["README.md", *DOCS]
# What a fresh clone does not have (the virtualenv, data, builds, caches).
NOT_IN_A_CLONE = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.pyc", "build", "dist", "*.egg-info",
                                        "river_ml_data", "db.sqlite3", ".pytest_cache", "*.pkl")


@pytest.fixture(scope="module")
def workspace():
    """A directory holding a copy of the checkout as a clone has it, its .venv this one."""
    directory = scratch_dir()
    checkout = directory / "django-river-ml"
    shutil.copytree(ROOT, checkout, ignore=NOT_IN_A_CLONE, symlinks=True)
    # What `make install` makes, but a virtualenv of its own: nothing a document runs installs into ours.
    virtualenv_seeing_ours(checkout / ".venv", ("pip", "gunicorn", "riverapi", "django-admin"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def docs_server(workspace):
    """The example site as `make serve` runs it, in the copy: migrate, then gunicorn (2 workers)."""
    from liveserver import LiveServer

    server = LiveServer(reader_environment({"PYTHONHASHSEED": "0"}), 2, workspace, migrate=True,
                        site=workspace / "django-river-ml" / "example_project", log=workspace / "gunicorn.log",
                        python=Path(sys.prefix) / "bin" / "python", gunicorn_args=("--graceful-timeout", "5"))
    try:
        yield server.start().url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def startproject_settings(workspace):
    """The settings module `django-admin startproject` makes, which settings fragments are added to."""
    subprocess.run([sys.executable, "-m", "django", "startproject", "fragmentsite"], cwd=workspace, check=True)
    return workspace / "fragmentsite" / "fragmentsite" / "settings.py"


@pytest.fixture
def settings_check(startproject_settings, settings, monkeypatch):
    """Run a settings fragment in a new site's settings; its DJANGO_RIVER_ML must pass the system check."""
    import importlib.util

    from django.test import override_settings
    from django.utils.module_loading import import_string

    from django_river_ml.settings import river_settings

    for name in [name for name in os.environ if name.startswith("DJANGO_RIVER_ML_")]:
        monkeypatch.delenv(name)

    def check(source: str, where: str) -> None:
        namespace = {"__file__": str(startproject_settings), "__name__": "fragmentsite.settings"}
        exec(compile(startproject_settings.read_text() + "\n" + source, where, "exec"), namespace)  # noqa: S102
        for app in namespace["INSTALLED_APPS"]:
            assert importlib.util.find_spec(app.rsplit(".apps.", 1)[0]) is not None, f"{where}: no app {app}"
        for cache in namespace.get("CACHES", {}).values():
            import_string(cache["BACKEND"])
        with override_settings(DJANGO_RIVER_ML=namespace.get("DJANGO_RIVER_ML", {}),
                               CACHES=namespace.get("CACHES", settings.CACHES)):
            problems = river_settings.problems()
        river_settings.reload()
        assert problems == [], f"{where}: the system check refuses these settings: {problems}"

    return check


@pytest.mark.live
@pytest.mark.parametrize("doc", DOCS)
def test_every_example_of_a_document_runs(doc, workspace, docs_server, settings_check):
    scratch = scratch_dir()
    (scratch / "home").mkdir()
    run = DocumentRun(ROOT / doc, cwd=workspace / "django-river-ml", scratch=scratch,
                      env=reader_environment({"RIVER_API_URL": docs_server, "HOME": str(scratch / "home"),
                                              "PIP_NO_INDEX": "1"}),
                      settings_check=settings_check)
    try:
        run.run()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        print({line: round(t, 1) for line, t in run.seconds.items()})
    blocks = [example for example in parse(ROOT / doc) if not isinstance(example.parsed, tuple)]
    assert len(run.ran) + len(run.skipped) == len(blocks), (doc, run.ran, run.skipped)


@pytest.mark.live
def test_the_readme_makes_a_new_site_that_serves_the_api(workspace, settings_check):
    """README.md top to bottom: install from the checkout, startproject, migrate, a token, runserver,
    the riverapi and DjangoClient snippets, and the production check."""
    scratch = scratch_dir()
    (scratch / "home").mkdir()
    venv = virtualenv_seeing_ours(scratch / "site-venv", ("pip", "django-admin"))
    env = reader_environment({"HOME": str(scratch / "home"), "VIRTUAL_ENV": str(venv),
                              # pip as configured offline: the dependencies are the test suite's, seen through
                              # the .pth; the build uses its setuptools instead of downloading one.
                              "PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "false",
                              "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    run = DocumentRun(ROOT / "README.md", cwd=workspace, scratch=scratch, env=env, settings_check=settings_check)
    try:
        run.run()
        site = workspace / "mysite"
        assert (site / "db.sqlite3").is_file() and (site / "river_ml_data").is_dir()
        where = "import django_river_ml, riverapi; print(django_river_ml.__file__, riverapi.__file__)"
        installed = subprocess.run([str(venv / "bin" / "python"), "-c", where], cwd=site, capture_output=True,
                                   text=True, check=True).stdout
        assert installed.count(str(venv)) == 2, f"not installed from the checkout into the site's venv: {installed}"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        print({line: round(t, 1) for line, t in run.seconds.items()})
    kinds = [kind for _, kind in run.ran]
    assert kinds.count("serve") == 1 and "python" in kinds and "bash" in kinds, run.ran


# The docs held to the code -------------------------------------------------------------


def test_skipped_blocks_are_only_those_that_cannot_run():
    """Every skip names its reason; only servers that run until stopped, installs into the
    reader's own virtualenv, builds that download, and what the server has not built are skipped."""
    allowed = ("until stopped", "virtualenv", "download", "not built", "this test suite")
    for doc in EVERY_DOC:
        for example in parse(ROOT / doc):
            if isinstance(example.parsed, tuple):
                action, reason = example.parsed
                assert reason and any(word in reason for word in allowed), (doc, example.line, reason)


def test_route_names_are_documented_once_from_the_code():
    """settings.md's table of route names is urls.ROUTE_NAMES with their paths; the other docs link to it
    instead of keeping lists of their own."""
    from django_river_ml.urls import ROUTE_NAMES, routes

    text = (ROOT / "docs/settings.md").read_text()
    section = text.split("## Route names", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| `([^`]*)` \|", section, re.MULTILINE)
    assert [name for name, _ in rows] == list(ROUTE_NAMES)
    assert [path for _, path in rows] == ["/" + str(route.pattern) for route in routes]
    for doc in ("docs/authentication.md", "docs/api.md"):
        body = (ROOT / doc).read_text()
        assert "settings.md#route-names" in body, doc
        assert "`model_delete`, `model_download`" not in body, f"{doc} keeps its own list of route names"


def test_system_checks_are_documented_with_where_they_show():
    """Every check id is in settings.md's table, which says which show only under `check --deploy`."""
    from django.core.checks.registry import registry

    from django_river_ml import checks

    text = (ROOT / "docs/settings.md").read_text()
    section = text.split("## System checks", 1)[1].split("\n## ", 1)[0]
    deploy_only = registry.deployment_checks - registry.registered_checks
    for name, function in inspect.getmembers(checks, inspect.isfunction):
        for check_id in re.findall(r'id="django_river_ml\.(\w+)"', inspect.getsource(function)):
            row = re.search(rf"^\| `django_river_ml\.{check_id}` \|(.*)$", section, re.MULTILINE)
            assert row, f"{check_id} is not in settings.md's table of system checks"
            assert ("`check --deploy`" in row.group(1)) == (function in deploy_only), (check_id, row.group(0))


def test_the_production_section_runs_what_a_real_deployment_needs():
    """Not only the key the example site makes for itself: a key, the database and the data kept outside
    the checkout, DEBUG off, and the deploy checks, in a block the README test runs."""
    text = (ROOT / "README.md").read_text()
    start = text.index("## Run it in production")
    end = text.index("\n## ", start + 1)
    document = parse(ROOT / "README.md")
    ran, skip_next = [], False
    for example in document:
        if isinstance(example.parsed, tuple):
            skip_next = True
        else:
            if start < example.start < end and not skip_next:
                ran.append(str(example.parsed))
            skip_next = False
    assert any(all(word in block for word in ("DJANGO_SECRET_KEY=", "DJANGO_DEBUG=false", "DJANGO_DATABASE_PATH=",
                                               "DJANGO_RIVER_ML_DATA_DIR=", "check --deploy"))
               for block in ran), ran


def test_installs_take_this_code_not_the_old_releases_on_pypi():
    for doc in EVERY_DOC:
        text = (ROOT / doc).read_text()
        assert not re.search(r"pip install (-U )?[\"']?(django-river-ml|riverapi)\b", text), doc
    readme = (ROOT / "README.md").read_text()
    assert "pip install ./django-river-ml" in readme and "python -m build" in readme


def test_the_readme_indexes_every_document():
    index = (ROOT / "README.md").read_text().split("## Documentation", 1)[1]
    for doc in DOCS:
        assert f"]({doc})" in index, doc


def test_every_demo_option_is_documented():
    from example_project.management.commands.demo import Command

    text = (ROOT / "docs/development.md").read_text()
    for action in Command().create_parser("manage.py", "demo")._actions:
        for option in action.option_strings:
            if option.startswith("--") and option not in ("--help", "--version", "--verbosity", "--settings",
                                                           "--pythonpath", "--traceback", "--no-color",
                                                           "--force-color", "--skip-checks"):
                assert f"`{option}" in text, option
    assert "make demo PORT=" in text
