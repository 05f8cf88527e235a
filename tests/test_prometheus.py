"""The Prometheus endpoint: closed until configured, every way in refused but the configured one, and what
it exports (exact counts from the store, the stats' histogram, the models' gauges) on both stores."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from river import linear_model, preprocessing

from django_river_ml import callstats
from django_river_ml.callstats import BUCKET_BOUNDS_NS
from django_river_ml.client import DjangoClient
from django_river_ml.settings import river_settings
from django_river_ml.storage import get_store
from flavored_models import examples

TOKEN = "a-long-scrape-token-for-tests-0123"
URL = "/metrics"


def configure(settings, **river):
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, **river}


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(found: dict, name: str, **labels) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


def scrape(api, **headers):
    return api.get(URL, **headers)


def bearer(token: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def refused(response, status: int, words: str) -> None:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    assert words in response.json()["message"], response.json()


# Who may scrape --------------------------------------------------------------------------------------


def test_closed_until_configured_whatever_the_caller_sends(api, settings):
    refused(scrape(api), 403, "closed")
    refused(scrape(api, **bearer(TOKEN)), 403, "closed")
    refused(scrape(api, HTTP_X_FORWARDED_FOR="127.0.0.1"), 403, "closed")
    configure(settings, DISABLE_AUTHENTICATION=True)  # the API open to all: the scrape still closed
    refused(scrape(api), 403, "closed")


def test_with_a_token_only_the_bearer_token_opens_it(api, settings):
    configure(settings, PROMETHEUS_TOKEN=TOKEN)
    missing = scrape(api)
    refused(missing, 401, "Send the token")
    assert missing["WWW-Authenticate"] == 'Bearer realm="prometheus"'
    for header in (f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Token {TOKEN}", f"Basic {TOKEN}", "Bearer",
                   f"Bearer {TOKEN} {TOKEN}", f"bearer  {TOKEN.upper()}", "Bearer \u00e9t\u00e9"):
        answer = scrape(api, HTTP_AUTHORIZATION=header)
        refused(answer, 401, "not valid")
        assert answer["WWW-Authenticate"] == 'Bearer realm="prometheus"'
    opened = scrape(api, **bearer(TOKEN))
    assert opened.status_code == 200, opened.content
    assert opened["Content-Type"].startswith("text/plain; version=0.0.4")
    assert scrape(api, HTTP_AUTHORIZATION=f"bearer {TOKEN}").status_code == 200  # the scheme is case-insensitive


def test_an_api_credential_does_not_open_it(api, settings, django_user_model):
    from django_river_ml.auth import issue_jwt

    configure(settings, PROMETHEUS_TOKEN=TOKEN, DISABLE_AUTHENTICATION=False)
    user = django_user_model.objects.create_user("scraper", is_staff=True, is_superuser=True)
    refused(scrape(api, **bearer(issue_jwt(user)["token"])), 401, "not valid")
    api.force_authenticate(user)
    refused(scrape(api), 401, "Send the token")


def test_wrong_tokens_are_throttled_per_address_and_then_not_even_compared(api, settings):
    configure(settings, PROMETHEUS_TOKEN=TOKEN, AUTH_FAILURE_RATE_LIMIT="3/minute")
    for _ in range(3):
        refused(scrape(api, **bearer("guess-guess-guess-guess")), 401, "not valid")
    blocked = scrape(api, **bearer(TOKEN))  # right, but too late
    refused(blocked, 429, "Too many failed authentications")
    assert int(blocked["Retry-After"]) >= 1
    assert scrape(api, REMOTE_ADDR="127.0.0.2", **bearer(TOKEN)).status_code == 200  # another address


def test_with_addresses_only_other_addresses_are_refused(api, settings):
    configure(settings, PROMETHEUS_ALLOWED_ADDRESSES=["10.1.0.0/16", "192.0.2.7", "2001:db8::/32"])
    refused(scrape(api), 403, "127.0.0.1 may not scrape")  # the test client's address
    for address in ("10.1.200.3", "192.0.2.7", "2001:db8::1", "::ffff:10.1.0.9"):
        assert scrape(api, REMOTE_ADDR=address).status_code == 200, address
    for address in ("10.2.0.1", "192.0.2.8", "2001:db9::1", "", "not-an-address"):
        refused(scrape(api, REMOTE_ADDR=address), 403, "may not scrape")


def test_a_forwarded_address_counts_only_behind_num_proxies(api, settings):
    configure(settings, PROMETHEUS_ALLOWED_ADDRESSES=["192.0.2.7"])
    # Anyone can write X-Forwarded-For: without NUM_PROXIES it is not read.
    refused(scrape(api, HTTP_X_FORWARDED_FOR="192.0.2.7"), 403, "127.0.0.1 may not scrape")
    configure(settings, NUM_PROXIES=1)
    assert scrape(api, HTTP_X_FORWARDED_FOR="192.0.2.7").status_code == 200  # what our one proxy appended
    refused(scrape(api, HTTP_X_FORWARDED_FOR="192.0.2.7, 203.0.113.1"), 403, "203.0.113.1 may not scrape")


def test_with_both_a_scrape_needs_both(api, settings):
    configure(settings, PROMETHEUS_TOKEN=TOKEN, PROMETHEUS_ALLOWED_ADDRESSES=["127.0.0.1"])
    refused(scrape(api), 401, "Send the token")
    refused(scrape(api, REMOTE_ADDR="10.0.0.1", **bearer(TOKEN)), 403, "may not scrape")
    assert scrape(api, **bearer(TOKEN)).status_code == 200


def test_refusals_are_counted_as_errors_of_the_prometheus_route(api, settings):
    configure(settings, PROMETHEUS_TOKEN=TOKEN)
    scrape(api)
    scrape(api, **bearer("wrong-wrong-wrong-wrong"))
    callstats.flush(get_store())
    found = samples(scrape(api, **bearer(TOKEN)).content.decode())
    assert value(found, "river_ml_errors_total", route="prometheus", status="401") == 2


@pytest.mark.parametrize("river, words", [
    ({"PROMETHEUS_TOKEN": "short"}, "PROMETHEUS_TOKEN must be None or at least 16"),
    ({"PROMETHEUS_TOKEN": "has spaces in the middle"}, "without spaces"),
    ({"PROMETHEUS_TOKEN": 1234567890123456789}, "PROMETHEUS_TOKEN must"),
    ({"PROMETHEUS_ALLOWED_ADDRESSES": ["10.0.0.0/8", "intranet"]}, "'intranet', which is not an IP address"),
    ({"PROMETHEUS_ALLOWED_ADDRESSES": "10.0.0.1"}, "must be a list"),
    ({"PROMETHEUS_PATH": "/metrics"}, "PROMETHEUS_PATH must be None or a path"),
    ({"PROMETHEUS_PATH": ""}, "PROMETHEUS_PATH must be None or a path"),
])
def test_bad_prometheus_settings_fail_the_system_check(settings, river, words):
    settings.DJANGO_RIVER_ML = river
    problems = river_settings.problems()
    assert any(words in problem for problem in problems), problems
    assert not any("1234567890123456789" in problem or "has spaces" in problem for problem in problems)  # secret


def test_the_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("DJANGO_RIVER_ML_PROMETHEUS_ALLOWED_ADDRESSES", "127.0.0.1, 10.0.0.0/8")
    monkeypatch.setenv("DJANGO_RIVER_ML_PROMETHEUS_TOKEN", TOKEN)
    monkeypatch.setenv("DJANGO_RIVER_ML_PROMETHEUS_PATH", "off")
    river_settings.reload()
    try:
        assert river_settings.PROMETHEUS_ALLOWED_ADDRESSES == ["127.0.0.1", "10.0.0.0/8"]
        assert river_settings.PROMETHEUS_TOKEN == TOKEN
        assert river_settings.PROMETHEUS_PATH is None
        assert river_settings.problems() == []
    finally:
        monkeypatch.undo()
        river_settings.reload()


# What it exports ---------------------------------------------------------------------------------------


@pytest.fixture
def scraper(api, settings):
    configure(settings, PROMETHEUS_TOKEN=TOKEN)
    return lambda **headers: scrape(api, **bearer(TOKEN), **headers)


def test_counters_histograms_and_gauges_are_exact_on_both_stores(scraper, settings):
    configure(settings, STATS_FLUSH_SECONDS=30)  # held in this process: the scrape writes them first
    client = DjangoClient()
    client.upload_model(preprocessing.StandardScaler() | linear_model.LinearRegression(), "regression", "scraped")
    data = examples("regression", 37)
    for x, y in data:
        client.learn("scraped", x, ground_truth=y)
    for x, _ in data[:11]:
        client.predict("scraped", x)
    found = samples(scraper().content.decode())

    assert value(found, "river_ml_calls_total", model="scraped", operation="learn") == 37
    assert value(found, "river_ml_calls_total", model="scraped", operation="predict") == 11
    assert value(found, "river_ml_calls_total", model="scraped", operation="label") == 0
    assert value(found, "river_ml_models") == 1
    assert value(found, "river_ml_model_info", model="scraped", flavor="regression") == 1
    assert value(found, "river_ml_log_head", model="scraped") == 37
    assert value(found, "river_ml_snapshot_sequence", model="scraped") == 0
    assert value(found, "river_ml_model_metric", model="scraped", metric="MAE") == \
        pytest.approx(client.metrics("scraped")["MAE"])

    cumulative = [value(found, "river_ml_call_duration_seconds_bucket", model="scraped", operation="learn", le=le)
                  for le in [*(repr(bound / 1e9) for bound in BUCKET_BOUNDS_NS), "+Inf"]]
    assert None not in cumulative and len(cumulative) == len(BUCKET_BOUNDS_NS) + 1
    assert cumulative == sorted(cumulative) and cumulative[-1] == 37
    assert value(found, "river_ml_call_duration_seconds_count", model="scraped", operation="learn") == 37
    learn = client.stats("scraped")["learn"]
    assert value(found, "river_ml_call_duration_seconds_sum", model="scraped", operation="learn") == \
        pytest.approx(learn["mean_duration"] * 37 / 1e9, rel=1e-3)
    # The stats' p50 is in the bucket where the histogram's cumulative count first reaches half the calls.
    first = next(i for i, count in enumerate(cumulative) if count >= 37 / 2)
    lower = BUCKET_BOUNDS_NS[first - 1] if first else 0
    assert lower <= learn["p50_duration"] <= BUCKET_BOUNDS_NS[first]


def test_a_deleted_model_leaves_the_scrape(scraper):
    client = DjangoClient()
    client.upload_model(linear_model.LinearRegression(), "regression", "fleeting")
    assert value(samples(scraper().content.decode()), "river_ml_log_head", model="fleeting") == 0
    client.delete_model("fleeting")
    found = samples(scraper().content.decode())
    assert not [key for key in found if ("model", "fleeting") in key[1]]
    assert value(found, "river_ml_models") == 0


def test_model_metrics_can_be_left_out(scraper, settings):
    DjangoClient().upload_model(linear_model.LinearRegression(), "regression", "quiet")
    assert "river_ml_model_metric{" in scraper().content.decode()
    configure(settings, PROMETHEUS_MODEL_METRICS=False)
    text = scraper().content.decode()
    assert "river_ml_model_metric{" not in text and 'river_ml_log_head{model="quiet"}' in text


def test_openmetrics_when_the_scraper_asks_for_it(scraper):
    DjangoClient().upload_model(linear_model.LinearRegression(), "regression", "open")
    answer = scraper(HTTP_ACCEPT="application/openmetrics-text; version=1.0.0; charset=utf-8")
    assert answer.status_code == 200
    assert answer["Content-Type"].startswith("application/openmetrics-text")
    assert answer.content.decode().endswith("# EOF\n")
    plain = scraper(HTTP_ACCEPT="text/plain")  # a JSON API's content negotiation does not stand in the way
    assert plain.status_code == 200 and plain["Content-Type"].startswith("text/plain")


def test_a_store_that_fails_is_a_503(scraper, monkeypatch):
    from django_river_ml.exceptions import StorageUnavailable

    def down(*args, **kwargs):
        raise StorageUnavailable("The model store (Redis) cannot be reached.")

    monkeypatch.setattr(type(get_store()), "model_infos", down)
    refused(scraper(), 503, "cannot be reached")
