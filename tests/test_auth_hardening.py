"""Attacks on authentication with one API token and `make serve` defaults (issue 12, points 8 and 9).

Forging JWTs with the example site's once-public SECRET_KEY, minting long-lived JWTs, guessing
credentials without limit, and dodging rate limits with a rotating X-Forwarded-For.
"""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
import requests
from django.contrib.auth.models import User
from django.core import checks
from django.utils.crypto import salted_hmac
from rest_framework.authtoken.models import Token

from django_river_ml.auth import JWT_ALGORITHM, JWT_ISSUER, JWT_LEEWAY_SECONDS, jwt_secret
from django_river_ml.checks import PUBLISHED_SECRET_KEYS
from django_river_ml.settings import _parse_env

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PROJECT = ROOT / "example_project"
PUBLIC_KEY = "example-project-insecure-key-change-me"

pytestmark = pytest.mark.django_db
# Throttling and tokens do not depend on the store: one backend is enough.
shelve_only = pytest.mark.parametrize("backend", ["shelve"], indirect=True)


@pytest.fixture
def secured(api, settings):
    """Authentication on (the default) and a user with an API token."""
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "DISABLE_AUTHENTICATION": False}
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast, for tests only
    user = User.objects.create_user("ada")
    return user, Token.objects.get(user=user).key


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def signed(secret: str, **claims) -> str:
    now = int(time.time())
    return jwt.encode({"sub": "ada", "iat": now, "exp": now + 60, "iss": JWT_ISSUER, **claims}, secret,
                      algorithm=JWT_ALGORITHM)


# -- point 8: JWT lifetimes --------------------------------------------------------------------

@shelve_only
def test_a_jwt_living_longer_than_the_server_issues_is_refused(api, secured):
    now = int(time.time())
    three_years = signed(jwt_secret(), iat=now - 60, exp=now + 3 * 365 * 86400)
    response = api.get("/api/models/", HTTP_AUTHORIZATION=f"Bearer {three_years}")
    assert response.status_code == 401
    assert "lives" in response.json()["message"]
    # The longest lifetime accepted is TOKEN_EXPIRES_SECONDS (600) plus the leeway; issued in the future: refused.
    longest = signed(jwt_secret(), iat=now, exp=now + 600 + JWT_LEEWAY_SECONDS)
    assert api.get("/api/models/", HTTP_AUTHORIZATION=f"Bearer {longest}").status_code == 200
    too_long = signed(jwt_secret(), iat=now, exp=now + 600 + JWT_LEEWAY_SECONDS + 1)
    assert api.get("/api/models/", HTTP_AUTHORIZATION=f"Bearer {too_long}").status_code == 401
    future = signed(jwt_secret(), iat=now + 3600, exp=now + 3600 + 60)
    response = api.get("/api/models/", HTTP_AUTHORIZATION=f"Bearer {future}")
    assert response.status_code == 401 and "not yet valid" in response.json()["message"]


@shelve_only
def test_a_smaller_token_lifetime_setting_shortens_what_is_accepted(api, secured, settings):
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "TOKEN_EXPIRES_SECONDS": 60}
    now = int(time.time())
    assert api.get("/api/models/", HTTP_AUTHORIZATION=f"Bearer {signed(jwt_secret(), exp=now + 60)}"
                   ).status_code == 200
    assert api.get("/api/models/", HTTP_AUTHORIZATION=f"Bearer {signed(jwt_secret(), exp=now + 600)}"
                   ).status_code == 401


@shelve_only
def test_a_few_seconds_of_clock_skew_between_hosts_are_tolerated(api, secured):
    """A token from a host whose clock is a little ahead is accepted, not refused as 'not yet valid'."""
    now = int(time.time())
    ahead = signed(jwt_secret(), iat=now + 5, exp=now + 5 + 600)
    assert api.get("/api/models/", HTTP_AUTHORIZATION=f"Bearer {ahead}").status_code == 200


# -- point 8: the signing key ------------------------------------------------------------------

def test_a_published_secret_key_with_debug_off_fails_the_system_check(settings):
    settings.DJANGO_RIVER_ML = {"DISABLE_AUTHENTICATION": False}
    settings.SECRET_KEY, settings.DEBUG = PUBLIC_KEY, False
    assert PUBLIC_KEY in PUBLISHED_SECRET_KEYS
    errors = [e for e in checks.run_checks() if e.id == "django_river_ml.E003"]
    assert errors and errors[0].level == checks.ERROR
    # A secret JWT key of its own, or DEBUG on (local play), or a secret SECRET_KEY: no error.
    settings.DJANGO_RIVER_ML = {"DISABLE_AUTHENTICATION": False, "JWT_SERVER_SECRET": "x" * 64}
    assert not [e for e in checks.run_checks() if e.id == "django_river_ml.E003"]
    settings.DJANGO_RIVER_ML, settings.DEBUG = {"DISABLE_AUTHENTICATION": False}, True
    assert not [e for e in checks.run_checks() if e.id == "django_river_ml.E003"]
    settings.SECRET_KEY, settings.DEBUG = "a-secret-key-" + "k" * 60, False
    assert not [e for e in checks.run_checks() if e.id == "django_river_ml.E003"]


def example_site_key(data_dir: Path, **env: str) -> subprocess.Popen:
    """A process that loads the example site's settings (as every gunicorn worker does) and prints SECRET_KEY."""
    environment = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SECRET_KEY", "DJANGO_RIVER_ML_DATA_DIR")}
    environment.update({"DJANGO_RIVER_ML_DATA_DIR": str(data_dir), "PYTHONPATH": str(EXAMPLE_PROJECT), **env})
    return subprocess.Popen([sys.executable, "-c", "import example_project.settings as s; print(s.SECRET_KEY)"],
                            cwd=EXAMPLE_PROJECT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def outputs(processes: list[subprocess.Popen]) -> list[str]:
    results = []
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        results.append(out.strip())
    return results


def test_the_example_site_never_runs_with_a_public_key(tmp_path):
    """Workers starting together agree on one random key, made once (mode 0600) and kept across restarts."""
    data_dir = tmp_path / "data"
    keys = outputs([example_site_key(data_dir) for _ in range(4)])
    assert len(set(keys)) == 1
    key = keys[0]
    assert key not in PUBLISHED_SECRET_KEYS and len(key) >= 50
    key_file = data_dir / "secret_key"
    assert key_file.read_text().strip() == key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert [p.name for p in data_dir.iterdir()] == ["secret_key"]  # no draft left behind
    assert outputs([example_site_key(data_dir)]) == [key]  # a restart
    # DJANGO_SECRET_KEY wins, and a fresh data directory gets a key of its own.
    assert outputs([example_site_key(data_dir, DJANGO_SECRET_KEY="from-the-environment")]) == ["from-the-environment"]
    assert outputs([example_site_key(tmp_path / "other")]) != [key]


def test_make_serve_refuses_the_published_key(tmp_path):
    """`make serve` and `make demo` run `migrate` first, whose system checks stop at E003."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_RIVER_ML_", "DJANGO_DEBUG"))}
    env.update({"DJANGO_SECRET_KEY": PUBLIC_KEY, "DJANGO_RIVER_ML_DATA_DIR": str(tmp_path / "data"),
                "DJANGO_DATABASE_PATH": str(tmp_path / "db.sqlite3"), "DJANGO_SETTINGS_MODULE": "example_project.settings"})
    done = subprocess.run([sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=EXAMPLE_PROJECT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "django_river_ml.E003" in done.stderr, done.stderr
    assert not (tmp_path / "db.sqlite3").exists() or (tmp_path / "db.sqlite3").stat().st_size == 0


# -- point 9: failed authentications and client addresses ----------------------------------------

@shelve_only
def test_failed_authentications_are_throttled_per_client(api, secured):
    user, key = secured
    now = int(time.time())
    # Expired tokens we signed are the clients' normal cue to get a new one: not counted.
    expired = signed(jwt_secret(), iat=now - 700, exp=now - 100)
    for _ in range(12):
        assert api.get("/api/models/", HTTP_AUTHORIZATION=f"Bearer {expired}").status_code == 401
    good_jwt = api.get("/api/auth/token/", HTTP_AUTHORIZATION=basic("ada", key)).json()["token"]

    wrong = [api.get("/api/models/", HTTP_AUTHORIZATION=f"Token wrong-{i}").status_code for i in range(10)]
    assert wrong == [401] * 10  # the default AUTH_FAILURE_RATE_LIMIT: 10/minute
    refused = api.get("/api/models/", HTTP_AUTHORIZATION="Token wrong-again")
    assert refused.status_code == 429
    assert set(refused.json()) == {"message"} and "failed authentications" in refused.json()["message"]
    assert 0 < int(refused["Retry-After"]) <= 60
    # Now even the right API token is not looked at, on any route that takes one...
    assert api.get("/api/models/", HTTP_AUTHORIZATION=f"Token {key}").status_code == 429
    assert api.get("/api/auth/token/", HTTP_AUTHORIZATION=basic("ada", key)).status_code == 429
    # ...nor a forged JWT, while a genuine JWT (which cannot be guessed) still works.
    assert api.get("/api/models/", HTTP_AUTHORIZATION=f"Bearer {signed('f' * 64)}").status_code == 429
    assert api.get("/api/models/", HTTP_AUTHORIZATION=f"Bearer {good_jwt}").status_code == 200
    # Another client address is not affected; a rotating X-Forwarded-For is no other client.
    assert api.get("/api/models/", HTTP_AUTHORIZATION=f"Token {key}", REMOTE_ADDR="10.0.0.7").status_code == 200
    assert api.get("/api/models/", HTTP_AUTHORIZATION=f"Token {key}", HTTP_X_FORWARDED_FOR="10.9.9.9"
                   ).status_code == 429


@shelve_only
def test_failed_basic_logins_on_the_token_route_count(api, secured, settings):
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "AUTH_FAILURE_RATE_LIMIT": "3/hour"}
    statuses = [api.get("/api/auth/token/", HTTP_AUTHORIZATION=basic("ada", f"guess-{i}")).status_code
                for i in range(4)]
    assert statuses == [401, 401, 401, 429]
    assert int(api.get("/api/auth/token/", HTTP_AUTHORIZATION=basic("ada", "x"))["Retry-After"]) > 60


@shelve_only
def test_the_failed_authentication_throttle_can_be_turned_off(api, secured, settings):
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "AUTH_FAILURE_RATE_LIMIT": None}
    assert {api.get("/api/models/", HTTP_AUTHORIZATION="Token wrong").status_code for _ in range(15)} == {401}
    assert _parse_env("AUTH_FAILURE_RATE_LIMIT", "off") is None
    assert _parse_env("AUTH_FAILURE_RATE_LIMIT", "5/minute") == "5/minute"


@shelve_only
def test_a_rotating_x_forwarded_for_does_not_dodge_the_rate_limit(api, settings):
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "VIEW_RATE_LIMIT": {"models": "2/minute"}}
    statuses = [api.get("/api/models/", HTTP_X_FORWARDED_FOR=f"203.0.113.{i}").status_code for i in range(4)]
    assert statuses == [200, 200, 429, 429]


@shelve_only
def test_behind_trusted_proxies_the_forwarded_client_address_counts(api, settings):
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "VIEW_RATE_LIMIT": {"models": "1/minute"},
                                "NUM_PROXIES": 1}
    # The proxy appends the address it saw; what the client wrote before it is ignored.
    first = api.get("/api/models/", HTTP_X_FORWARDED_FOR="1.1.1.1, 198.51.100.1")
    again = api.get("/api/models/", HTTP_X_FORWARDED_FOR="2.2.2.2, 198.51.100.1")
    other = api.get("/api/models/", HTTP_X_FORWARDED_FOR="198.51.100.2")
    assert [first.status_code, again.status_code, other.status_code] == [200, 429, 200]


@pytest.mark.parametrize(("config", "words"), [
    ({"NUM_PROXIES": -1}, "NUM_PROXIES"),
    ({"THROTTLE_CACHE": "nowhere"}, "THROTTLE_CACHE"),
    ({"AUTH_FAILURE_RATE_LIMIT": "ten a minute"}, "AUTH_FAILURE_RATE_LIMIT"),
    ({"AUTH_FAILURE_RATE_LIMIT": {"learn": "1/second"}}, "AUTH_FAILURE_RATE_LIMIT"),
])
def test_bad_throttle_settings_fail_the_system_check(settings, config, words):
    settings.DJANGO_RIVER_ML = config
    errors = [e for e in checks.run_checks() if e.id == "django_river_ml.E001"]
    assert any(words in e.msg for e in errors), errors


def test_a_per_process_throttle_cache_is_a_deploy_warning(settings):
    settings.DJANGO_RIVER_ML = {}
    assert [e for e in checks.run_checks(include_deployment_checks=True) if e.id == "django_river_ml.W002"]
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
                                   "LOCATION": "/nonexistent-never-written"}}
    assert not [e for e in checks.run_checks(include_deployment_checks=True) if e.id == "django_river_ml.W002"]


# -- against a live multi-worker server, as `make serve` runs it ----------------------------------

@pytest.mark.live
def test_live_server_refuses_forged_jwts_and_throttles_failures_across_workers(live_server_factory):
    server = live_server_factory("shelve", workers=2, DISABLE_AUTHENTICATION="false")
    created = subprocess.run([sys.executable, "manage.py", "river_token", "ada", "--create-user"],
                             cwd=EXAMPLE_PROJECT, env=server.env, capture_output=True, text=True, check=True,
                             timeout=120)
    key = created.stdout.strip()
    models = f"{server.url}/api/models/"
    with requests.Session() as http:
        # A JWT signed with the key derived from the old public SECRET_KEY is forged, not accepted.
        public_jwt_key = salted_hmac("django_river_ml.jwt", "signing key", secret=PUBLIC_KEY).hexdigest()
        forged = http.get(models, headers={"Authorization": f"Bearer {signed(public_jwt_key)}"}, timeout=30)
        assert forged.status_code == 401, forged.text
        token = http.get(f"{server.url}/api/auth/token/", auth=("ada", key), timeout=30).json()["token"]

        # Nine more failures, each claiming another X-Forwarded-For, spread over both workers: ten in all.
        for i in range(9):
            answer = http.get(models, headers={"Authorization": f"Token guess-{i}",
                                               "X-Forwarded-For": f"203.0.113.{i}"}, timeout=30)
            assert answer.status_code == 401, (i, answer.text)
        for _ in range(3):  # whichever worker answers, the count is shared
            refused = http.get(models, headers={"Authorization": f"Token {key}", "X-Forwarded-For": "192.0.2.1"},
                               timeout=30)
            assert refused.status_code == 429, (refused.text, server.log_text()[-2000:])
            assert 0 < int(refused.headers["Retry-After"]) <= 60
        assert http.get(f"{server.url}/api/auth/token/", auth=("ada", key), timeout=30).status_code == 429
        assert http.get(models, headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code == 200
