"""The dashboard (``/api/dashboard/``): served behind the API's authentication, and live in a real browser.

The browser tests drive headless Chromium (Debian's ``chromium`` package; ``.ci/run`` installs it
in CI) through Playwright against a live example site with authentication on: a user signs in on
the login page, sees their model, and a learn sent through the API moves its chart and feed
through the event streams. They skip when no Chromium binary or no Playwright is found. Each
keeps a screenshot in ``test-artifacts/`` at the repository root.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import dill
import pytest
import requests
from django.test import Client

from flavored_models import examples, make_model

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PROJECT = ROOT / "example_project"
ARTIFACTS = ROOT / "test-artifacts"
STATIC = ROOT / "django_river_ml" / "static"
PASSWORD = "a-long-test-password-1"
# How long the page may take to show something: generous, never asserted on.
PATIENCE_MS = 30_000
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-proxy-server"]


# The page, server side (no browser) -------------------------------------------------------

@pytest.fixture
def site(settings, tmp_path, db):
    settings.DJANGO_RIVER_ML = {"DATA_DIR": str(tmp_path / "data")}
    return settings


def test_a_browser_not_signed_in_goes_to_the_login_page_and_back(site, django_user_model):
    response = Client().get("/api/dashboard/?model=x")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/api/dashboard/%3Fmodel%3Dx"
    browser = Client()
    django_user_model.objects.create_user("ada", password=PASSWORD)
    signed_in = browser.post("/accounts/login/", {"username": "ada", "password": PASSWORD,
                                                  "next": "/api/dashboard/"})
    assert signed_in.status_code == 302 and signed_in["Location"] == "/api/dashboard/"
    page = browser.get("/api/dashboard/")
    assert page.status_code == 200 and page["Content-Type"].startswith("text/html")
    assert "signed in as <strong>ada</strong>" in page.content.decode()


def test_the_site_front_page_leads_to_the_dashboard(site):
    response = Client().get("/")
    assert response.status_code == 302 and response["Location"] == "/api/dashboard/"


def test_without_a_login_page_the_answer_is_a_401_page(site):
    site.LOGIN_URL = "/no-such-page/"
    response = Client().get("/api/dashboard/")
    assert response.status_code == 401
    assert response["Content-Type"].startswith("text/html")
    assert response["WWW-Authenticate"].startswith("Bearer realm=")
    assert "Sign in to see the dashboard" in response.content.decode()


def test_a_wrong_token_is_a_401_page_not_a_redirect(site):
    response = Client().get("/api/dashboard/", HTTP_AUTHORIZATION="Token not-a-token")
    assert response.status_code == 401
    assert '<a class="button" href="/accounts/login/?next=/api/dashboard/">Sign in</a>' in response.content.decode()


def test_open_where_the_site_leaves_it_open(settings, tmp_path):
    from example_project.management.commands.demo import DEMO_PROTECTED_ROUTES

    for config in ({"DISABLE_AUTHENTICATION": True}, {"AUTHENTICATED_VIEWS": list(DEMO_PROTECTED_ROUTES)}):
        settings.DJANGO_RIVER_ML = {"DATA_DIR": str(tmp_path / "data"), **config}
        assert Client().get("/api/dashboard/").status_code == 200, config
    assert not {"dashboard", "stream_events", "stream_metrics"} & set(DEMO_PROTECTED_ROUTES)


def test_the_page_holds_no_model_data_and_loads_nothing_from_elsewhere(site, django_user_model):
    """Models come from the API, which shows each user theirs: the HTML names none (not even the caller's)."""
    from django_river_ml.client import DjangoClient

    ada = django_user_model.objects.create_user("ada", password=PASSWORD)
    bob = django_user_model.objects.create_user("bob", password=PASSWORD)
    DjangoClient(user=ada).upload_model(make_model("regression"), "regression", model_name="adas-secret-model")
    DjangoClient(user=bob).upload_model(make_model("regression"), "regression", model_name="bobs-model")
    browser = Client()
    browser.force_login(bob)
    html = browser.get("/api/dashboard/").content.decode()
    assert "secret-model" not in html and "bobs-model" not in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    for path in re.findall(r"""(?:src|href)="/static/([^"]+)\"""", html):
        assert (STATIC / path).is_file(), path
    assert (STATIC / "django_river_ml/vendor/uplot/LICENSE").is_file()
    for script in (STATIC / "django_river_ml").rglob("*.js"):
        assert not re.search(r"""(import|src|url)\s*\(?\s*["'](https?:)?//""", script.read_text()), script


# The page in a browser ---------------------------------------------------------------------

def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def needs_browser():
    if chromium_binary() is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")


def make_user(server, username: str) -> str:
    """A user with a password (to sign in) and an API token (to call the API); returns the token."""
    code = (
        "from django.contrib.auth.models import User; from rest_framework.authtoken.models import Token; "
        f"user = User.objects.create_user({username!r}, password={PASSWORD!r}); "
        "print(Token.objects.get_or_create(user=user)[0].key)"
    )
    made = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=EXAMPLE_PROJECT,
                          env=server.env, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip().splitlines()[-1]


class API:
    """The River API of a live server, as one user (API token)."""

    def __init__(self, server, token: str):
        self.base = server.url + "/api/"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"

    def upload(self, flavor: str, name: str) -> None:
        response = self.session.post(f"{self.base}model/{flavor}/{name}/", data=dill.dumps(make_model(flavor)),
                                     headers={"Content-Type": "application/octet-stream"}, timeout=60)
        assert response.status_code == 201, response.text

    def learn(self, name: str, flavor: str, n: int, start: int = 0) -> None:
        for x, y in examples(flavor, start + n)[start:]:
            response = self.session.post(self.base + "learn/", json={"model": name, "features": x, "ground_truth": y},
                                         timeout=30)
            assert response.status_code == 201, response.text


@pytest.fixture
def chromium(tmp_path):
    """A page of a fresh headless Chromium that may reach only 127.0.0.1 (anything else is recorded and refused)."""
    needs_browser()
    from playwright.sync_api import sync_playwright

    elsewhere: list[str] = []

    def only_loopback(route):
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=chromium_binary(), headless=True,
            args=CHROMIUM_ARGS, viewport={"width": 1280, "height": 1000})
        try:
            context.route("**/*", only_loopback)
            page = context.pages[0] if context.pages else context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.errors = errors  # uncaught script errors, for the tests to assert there are none
            yield page
        finally:
            context.close()
    assert not elsewhere, f"the page asked for something besides the server: {elsewhere}"


def sign_in(page, server, username: str) -> None:
    page.goto(server.url + "/api/dashboard/")
    page.wait_for_url(re.compile(r"/accounts/login/\?next="))  # not signed in: the login page
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(server.url + "/api/dashboard/")
    page.wait_for_selector('#status[data-state="live"]', timeout=PATIENCE_MS)  # both streams open


def points(page, name: str) -> int:
    return int(page.get_attribute(f'article[data-model="{name}"] .chart', "data-points"))


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def start_site(live_server_factory):
    needs_browser()  # before a server is started for nothing
    return live_server_factory("shelve", workers=2, DISABLE_AUTHENTICATION="false")


@pytest.mark.live
def test_a_learn_moves_the_chart_of_the_signed_in_users_model(live_server_factory, chromium):
    server = start_site(live_server_factory)
    ada = API(server, make_user(server, "ada"))
    ada.upload("regression", "ada-regression")
    ada.learn("ada-regression", "regression", 5)

    sign_in(chromium, server, "ada")
    card = 'article[data-model="ada-regression"]'
    chromium.wait_for_selector(f'{card}[data-flavor="regression"]', timeout=PATIENCE_MS)
    chromium.wait_for_selector(f'{card} .chart:not([data-points="0"])', timeout=PATIENCE_MS)  # the first paint
    assert chromium.inner_text(f"{card} .hero-label").startswith("MAE")
    before = points(chromium, "ada-regression")

    ada.learn("ada-regression", "regression", 10, start=5)
    # The metrics stream brings the state after the 15th learn (data-sequence), plotted as it comes.
    chromium.wait_for_selector(f'{card}[data-sequence="15"]', timeout=PATIENCE_MS)
    assert points(chromium, "ada-regression") > before
    chromium.wait_for_function(  # the stats table follows it
        "selector => document.querySelector(selector).textContent.trim() === '15'",
        arg=f'{card} tr[data-operation="learn"] td:nth-child(2)', timeout=PATIENCE_MS)
    # The events stream brings every learn to the feed, the newest first.
    chromium.wait_for_selector(f'{card} li[data-event="learn"]', timeout=PATIENCE_MS)
    chromium.wait_for_function(
        "selector => document.querySelector(selector).textContent.includes('#15 ')",
        arg=f"{card} ol[data-feed] li:first-child", timeout=PATIENCE_MS)
    path = screenshot(chromium, "dashboard-live")
    assert path.stat().st_size > 10_000
    assert not chromium.errors, chromium.errors


@pytest.mark.live
def test_another_users_models_never_appear(live_server_factory, chromium):
    server = start_site(live_server_factory)
    ada = API(server, make_user(server, "ada"))
    bob = API(server, make_user(server, "bob"))
    ada.upload("regression", "ada-model")
    bob.upload("binary", "bob-model")

    sign_in(chromium, server, "ada")
    chromium.wait_for_selector('article[data-model="ada-model"]', timeout=PATIENCE_MS)
    # Bob works on his model and uploads another while Ada watches; then Ada learns, and once her
    # learn is on her page, everything Bob did before it would have been there too.
    bob.learn("bob-model", "binary", 5)
    bob.upload("binary", "bob-second-model")
    ada.learn("ada-model", "regression", 3)
    chromium.wait_for_selector('article[data-model="ada-model"] li[data-event="learn"]', timeout=PATIENCE_MS)
    assert chromium.locator("article[data-model]").evaluate_all("cards => cards.map(c => c.dataset.model)") == [
        "ada-model"]
    assert "bob" not in chromium.inner_text("main")
    chromium.reload()  # the first paint of a fresh page, too
    chromium.wait_for_selector('article[data-model="ada-model"]', timeout=PATIENCE_MS)
    chromium.wait_for_selector('#status[data-state="live"]', timeout=PATIENCE_MS)
    assert chromium.locator("article[data-model]").count() == 1
    assert "bob" not in chromium.content()
    screenshot(chromium, "dashboard-own-models-only")
    assert not chromium.errors, chromium.errors


@pytest.mark.live
def test_a_drift_shows_on_its_models_card(live_server_factory, chromium):
    """A drift found while the page is open: the feed shows the drift event and the card its count, and a
    fresh page shows the count from the stats."""
    server = start_site(live_server_factory)
    ada = API(server, make_user(server, "ada"))
    ada.upload("regression", "drifting")
    sign_in(chromium, server, "ada")
    card = 'article[data-model="drifting"]'
    chromium.wait_for_selector(card, timeout=PATIENCE_MS)
    assert chromium.locator(f"{card} [data-drifts]").is_hidden()
    # y = x, then y = 50 - 10x from row 300 on: the model's errors jump, and ADWIN finds it.
    rows = [{"features": {"x": (i % 10) / 10}, "ground_truth": (i % 10) / 10 if i < 300 else 50 - i % 10}
            for i in range(400)]
    answer = ada.session.post(ada.base + "learn/", json={"model": "drifting", "examples": rows}, timeout=60)
    assert answer.status_code == 201, answer.text
    assert ada.session.get(ada.base + "stats/", params={"model": "drifting"}).json()["drift"]["n_calls"] >= 1
    chromium.wait_for_selector(f'{card} li[data-event="drift"]', timeout=PATIENCE_MS)
    chromium.wait_for_selector(f"{card} [data-drifts]:not([hidden])", timeout=PATIENCE_MS)
    assert "drift" in chromium.inner_text(f"{card} [data-drifts]")
    chromium.reload()
    chromium.wait_for_selector(f"{card} [data-drifts]:not([hidden])", timeout=PATIENCE_MS)
    screenshot(chromium, "dashboard-drift")
    assert not chromium.errors, chromium.errors
