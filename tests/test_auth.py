"""Authentication: API tokens, the JWT dance, sessions, protected routes, throttling."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import dill
import jwt
import pytest
from django.contrib.auth.models import User
from django.core import checks
from django.core.management import CommandError, call_command
from rest_framework.authtoken.models import Token

from django_river_ml.auth import JWT_ALGORITHM, JWT_ISSUER, jwt_secret
from flavored_models import examples, make_model

EXAMPLE_PROJECT = Path(__file__).resolve().parent.parent / "example_project"

pytestmark = pytest.mark.django_db


@pytest.fixture
def secured(api, settings):
    """Authentication on (the default), with a user with an API token and a model of hers to protect."""
    from django_river_ml.client import DjangoClient

    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "DISABLE_AUTHENTICATION": False}
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast, for tests only
    user = User.objects.create_user("ada", password="lovelace")
    DjangoClient(user=user).upload_model(make_model("regression"), "regression", "secret-model")
    return user, Token.objects.get(user=user).key


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def get_jwt(api, user="ada", token=None) -> str:
    response = api.get("/api/auth/token/", HTTP_AUTHORIZATION=basic(user, token))
    assert response.status_code == 200, response.content
    return response.json()["token"]


def protected_requests():
    """One request per protected route (method, path, body)."""
    x, y = examples("regression", 1)[0]
    model = {"model": "secret-model"}
    return [
        ("post", "/api/learn/", {**model, "features": x, "ground_truth": y}),
        ("post", "/api/predict/", {**model, "features": x}),
        ("post", "/api/label/", {**model, "identifier": "i", "label": y}),
        ("get", "/api/metrics/?model=secret-model", None),
        ("get", "/api/stats/?model=secret-model", None),
        ("get", "/api/models/", None),
        ("get", "/api/model/secret-model/", None),
        ("get", "/api/model/download/secret-model/", None),
        ("delete", "/api/model/?model=secret-model", None),
        ("delete", "/api/model/secret-model/", None),
        ("post", "/api/model/regression/", "pickle"),
        ("post", "/api/model/regression/new-name/", "pickle"),
    ]


def send(api, method, path, body, **headers):
    if body == "pickle":
        return api.post(path, data=dill.dumps(make_model("regression")), content_type="application/octet-stream",
                        **headers)
    return getattr(api, method)(path, body, format="json", **headers)


@pytest.mark.parametrize(("method", "path", "body"), protected_requests())
def test_every_protected_route_refuses_without_credentials_and_leaks_nothing(api, secured, method, path, body):
    response = send(api, method, path, body)
    assert response.status_code == 401, (path, response.content)
    assert set(response.json()) == {"message"}
    assert "secret-model" not in response.content.decode()
    challenge = response["WWW-Authenticate"]
    assert challenge == 'Bearer realm="http://testserver/api/auth/token",service="http://testserver"'
    # Nothing happened: the model is still there and learned nothing.
    from django_river_ml.client import DjangoClient

    assert DjangoClient().models() == ["secret-model"]
    assert DjangoClient().stats("secret-model")["learn"]["n_calls"] == 0


@pytest.mark.parametrize(("method", "path", "body"), protected_requests())
def test_every_protected_route_works_with_a_bearer_jwt(api, secured, method, path, body):
    token = get_jwt(api, token=secured[1])
    response = send(api, method, path, body, HTTP_AUTHORIZATION=f"Bearer {token}")
    # label's identifier does not exist: a 404 is the model answering, past authentication.
    assert response.status_code in (200, 201) or path == "/api/label/" and response.status_code == 404, \
        response.content


def test_service_info_is_open(api, secured):
    assert api.get("/api/").status_code == 200


def test_token_route_answers_a_short_lived_jwt(api, secured, settings):
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "TOKEN_EXPIRES_SECONDS": 120}
    before = int(time.time())
    body = api.get("/api/auth/token/", HTTP_AUTHORIZATION=basic("ada", secured[1])).json()
    assert set(body) == {"token", "expires_in", "issued_at"}
    assert body["expires_in"] == 120
    assert before <= body["issued_at"] <= int(time.time())
    claims = jwt.decode(body["token"], jwt_secret(), algorithms=[JWT_ALGORITHM], issuer=JWT_ISSUER)
    assert claims["sub"] == "ada" and claims["exp"] == body["issued_at"] + 120


@pytest.mark.parametrize("authorization", [
    None,
    "Basic " + base64.b64encode(b"ada:wrong-token").decode(),
    "Basic " + base64.b64encode(b"ada:lovelace").decode(),  # the password is not an API token
    "Basic not-base64!",
    "Bearer something",
])
def test_token_route_refuses_bad_credentials(api, secured, authorization):
    headers = {"HTTP_AUTHORIZATION": authorization} if authorization else {}
    response = api.get("/api/auth/token/", **headers)
    assert response.status_code == 401
    assert set(response.json()) == {"message"}
    assert response["WWW-Authenticate"].startswith("Basic realm=")


def test_token_route_refuses_another_users_token(api, secured):
    User.objects.create_user("bob")
    response = api.get("/api/auth/token/", HTTP_AUTHORIZATION=basic("bob", secured[1]))
    assert response.status_code == 401


def forged(secret: str, **claims) -> str:
    now = int(time.time())
    payload = {"sub": "ada", "iat": now, "exp": now + 60, "iss": JWT_ISSUER, **claims}
    return jwt.encode(payload, secret, algorithm=JWT_ALGORITHM)


@pytest.mark.parametrize(("make_token", "words"), [
    (lambda: forged(jwt_secret(), iat=int(time.time()) - 120, exp=int(time.time()) - 60), "expired"),
    (lambda: forged("another key entirely, at least thirty-two bytes long"), "not valid"),
    (lambda: forged(jwt_secret(), iss="someone-else"), "not valid"),
    (lambda: forged(jwt_secret(), sub="nobody"), "does not exist"),
    (lambda: jwt.encode({"sub": "ada", "iss": JWT_ISSUER}, jwt_secret(), algorithm=JWT_ALGORITHM), "not valid"),
    (lambda: "not.a.jwt", "not valid"),
])
def test_bad_jwts_are_401_with_a_message(api, secured, make_token, words):
    response = api.get("/api/models/", HTTP_AUTHORIZATION=f"Bearer {make_token()}")
    assert response.status_code == 401
    assert words in response.json()["message"]


def test_unsigned_jwt_is_refused(api, secured):
    token = jwt.encode({"sub": "ada", "iss": JWT_ISSUER, "iat": int(time.time()), "exp": int(time.time()) + 60},
                       None, algorithm="none")
    assert api.get("/api/models/", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 401


def test_inactive_user_is_refused(api, secured):
    user, key = secured
    token = get_jwt(api, token=key)
    user.is_active = False
    user.save()
    assert api.get("/api/models/", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 401
    assert api.get("/api/models/", HTTP_AUTHORIZATION=f"Token {key}").status_code == 401
    assert api.get("/api/auth/token/", HTTP_AUTHORIZATION=basic("ada", key)).status_code == 401


def test_drf_token_header_works(api, secured):
    assert api.get("/api/models/", HTTP_AUTHORIZATION=f"Token {secured[1]}").json() == {"models": ["secret-model"]}
    assert api.get("/api/models/", HTTP_AUTHORIZATION="Token wrong").status_code == 401


def test_logged_in_session_works(api, secured):
    api.force_login(secured[0])
    assert api.get("/api/models/").json() == {"models": ["secret-model"]}


def test_authenticated_views_setting_chooses_the_protected_routes(api, secured, settings):
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "AUTHENTICATED_VIEWS": ["learn"]}
    assert api.get("/api/models/").status_code == 200
    x, y = examples("regression", 1)[0]
    assert api.post("/api/learn/", {"model": "secret-model", "features": x, "ground_truth": y},
                    format="json").status_code == 401


def test_disabled_authentication_opens_everything(api, secured, settings):
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "DISABLE_AUTHENTICATION": True}
    assert api.get("/api/models/").status_code == 200


def test_rate_limit_per_route(api, secured, settings):
    from django.core.cache import cache

    cache.clear()
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "DISABLE_AUTHENTICATION": True,
                                "VIEW_RATE_LIMIT": {"models": "2/minute"}}
    assert [api.get("/api/models/").status_code for _ in range(3)] == [200, 200, 429]
    limited = api.get("/api/models/")
    assert set(limited.json()) == {"message"} and int(limited["Retry-After"]) > 0
    assert api.get("/api/metrics/?model=secret-model").status_code == 200  # another route, no limit
    cache.clear()


def test_rate_limit_for_every_route_counts_per_user(api, secured, settings):
    from django.core.cache import cache

    cache.clear()
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "VIEW_RATE_LIMIT": "1/minute"}
    key = secured[1]
    assert api.get("/api/models/", HTTP_AUTHORIZATION=f"Token {key}").status_code == 200
    assert api.get("/api/models/", HTTP_AUTHORIZATION=f"Token {key}").status_code == 429
    other = Token.objects.get(user=User.objects.create_user("bob")).key
    assert api.get("/api/models/", HTTP_AUTHORIZATION=f"Token {other}").status_code == 200
    cache.clear()


def test_every_new_user_gets_an_api_token():
    user = User.objects.create_user("grace")
    assert Token.objects.filter(user=user).exists()


def test_river_token_command():
    out = StringIO()
    call_command("river_token", "linus", "--create-user", stdout=out)
    key = out.getvalue().strip()
    assert Token.objects.get(user__username="linus").key == key
    again = StringIO()
    call_command("river_token", "linus", stdout=again)
    assert again.getvalue().strip() == key
    with pytest.raises(CommandError, match="--create-user"):
        call_command("river_token", "nobody")


def test_missing_authtoken_app_fails_the_system_check(settings):
    settings.DJANGO_RIVER_ML = {"DISABLE_AUTHENTICATION": False}
    settings.INSTALLED_APPS = [app for app in settings.INSTALLED_APPS if app != "rest_framework.authtoken"]
    errors = [e for e in checks.run_checks() if e.id == "django_river_ml.E002"]
    assert errors and "rest_framework.authtoken" in errors[0].msg
    settings.DJANGO_RIVER_ML = {"DISABLE_AUTHENTICATION": True}
    assert not [e for e in checks.run_checks() if e.id == "django_river_ml.E002"]


PUBLISHED_CLIENT_SCRIPT = """
import json, sys
from river import linear_model, preprocessing
from riverapi.main import Client

cli = Client(sys.argv[1], quiet=True)
name = cli.upload_model(preprocessing.StandardScaler() | linear_model.LinearRegression(), "regression")
cli.learn(name, x={"a": 1.0}, y=2.0)
prediction = cli.predict(name, x={"a": 1.0})
print(json.dumps({"name": name, "models": cli.models(), "stats": cli.stats(name), "prediction": prediction}))
"""


def test_published_client_completes_the_token_dance(live_server_factory, published_client_path):
    server = live_server_factory("shelve", workers=2, DISABLE_AUTHENTICATION="false")
    env = {**server.env, "PYTHONPATH": str(published_client_path)}
    created = subprocess.run([sys.executable, "manage.py", "river_token", "ada", "--create-user"],
                             cwd=EXAMPLE_PROJECT, env=server.env, capture_output=True, text=True, check=True)
    env["RIVER_ML_USER"], env["RIVER_ML_TOKEN"] = "ada", created.stdout.strip()
    done = subprocess.run([sys.executable, "-c", PUBLISHED_CLIENT_SCRIPT, server.url], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.stderr[-2000:], server.log_text()[-2000:])
    report = json.loads(done.stdout)
    assert report["models"] == {"models": [report["name"]]}
    assert report["stats"]["learn"]["n_calls"] == 1

    # Without credentials the same client is refused (it exits, as 0.0.21 does).
    env.pop("RIVER_ML_USER"), env.pop("RIVER_ML_TOKEN")
    refused = subprocess.run([sys.executable, "-c", PUBLISHED_CLIENT_SCRIPT, server.url], env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    assert "RIVER_ML_TOKEN" in refused.stdout + refused.stderr
