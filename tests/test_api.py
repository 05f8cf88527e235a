"""Every River API route, with the shapes of RIVER-API.md, on both storage backends."""

from __future__ import annotations

import json
import pickle

import dill
import pytest
import river

from django_river_ml.describe import to_jsonable
from django_river_ml.flavors import get_flavor
from flavored_models import EXPECTED_METRICS, FLAVORS, examples, make_model


def upload(api, flavor, name=None, model=None):
    url = f"/api/model/{flavor}/{name}/" if name else f"/api/model/{flavor}/"
    return api.post(url, data=dill.dumps(model if model is not None else make_model(flavor)),
                    content_type="application/octet-stream")


def get_json_body(api, path, body):
    """GET with a JSON body, as the published client sends metrics and stats."""
    return api.generic("GET", path, json.dumps(body), content_type="application/json")


def test_service_info(api, backend):
    response = api.get("/api/")
    assert response.status_code == 200
    info = response.json()
    assert set(info) >= {"baseurl", "id", "status", "name", "description", "documentationUrl", "prefix", "storage",
                         "river_version", "version"}
    assert info["status"] == "running"
    assert info["storage"] == backend
    assert info["prefix"] == "api"
    assert info["baseurl"] == "http://testserver"
    assert info["river_version"] == river.__version__


def test_generated_names_are_adjective_noun(api):
    response = upload(api, "regression")
    assert response.status_code == 201
    first, second = response.json()["name"].split("-")
    from django_river_ml.names import ADJECTIVES, NOUNS

    assert first in ADJECTIVES and second in NOUNS


@pytest.mark.parametrize("flavor", FLAVORS)
def test_full_cycle_for_each_flavor(api, flavor):
    response = upload(api, flavor, name=f"my-{flavor}")
    assert response.status_code == 201, response.content
    assert response.json() == {"name": f"my-{flavor}"}
    assert api.get("/api/models/").json() == {"models": [f"my-{flavor}"]}

    data = examples(flavor)
    for x, y in data[:-1]:
        response = api.post("/api/learn/", {"model": f"my-{flavor}", "features": x, "ground_truth": y}, format="json")
        assert response.status_code == 201, response.content

    x, y = data[-1]
    response = api.post("/api/predict/", {"model": f"my-{flavor}", "features": x}, format="json")
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"model", "prediction", "identifier"}
    assert body["prediction"] is not None

    if y is not None:
        response = api.post("/api/label/", {"model": f"my-{flavor}", "identifier": body["identifier"], "label": y},
                            format="json")
        assert response.status_code == 200, response.content

    metrics = get_json_body(api, "/api/metrics/", {"model": f"my-{flavor}"})
    assert metrics.status_code == 200
    assert set(metrics.json()) == EXPECTED_METRICS[flavor]

    stats = get_json_body(api, "/api/stats/", {"model": f"my-{flavor}"}).json()
    n_learned = len(data) - 1
    assert stats["learn"]["n_calls"] == n_learned
    assert stats["predict"]["n_calls"] == 1
    for operation in ("learn", "predict"):
        assert set(stats[operation]) == {"n_calls", "mean_duration", "mean_duration_human", "ewm_duration",
                                         "ewm_duration_human", "p50_duration", "p50_duration_human", "p95_duration",
                                         "p95_duration_human", "p99_duration", "p99_duration_human", "rate_per_second"}
        assert stats[operation]["mean_duration"] > 0
        assert stats[operation]["ewm_duration"] > 0

    model_json = api.get(f"/api/model/my-{flavor}/")
    assert model_json.status_code == 200
    assert isinstance(model_json.json(), dict) and model_json.json()

    download = api.get(f"/api/model/download/my-{flavor}/")
    assert download.status_code == 200
    assert download["Content-Type"] == "application/octet-stream"
    downloaded = pickle.loads(download.content)
    # The downloaded model carries what was learned: it predicts what the server predicts.
    server_prediction = api.post("/api/predict/", {"model": f"my-{flavor}", "features": x}, format="json").json()
    local_prediction = get_flavor(flavor).predict(downloaded, dict(x))
    assert json.loads(json.dumps(to_jsonable(local_prediction))) == server_prediction["prediction"]

    response = api.generic("DELETE", "/api/model/", f"model=my-{flavor}",
                           content_type="application/x-www-form-urlencoded")
    assert response.status_code == 200
    assert api.get("/api/models/").json() == {"models": []}
    assert api.get("/api/metrics/", {"model": f"my-{flavor}"}).status_code == 404
    assert api.get("/api/stats/", {"model": f"my-{flavor}"}).status_code == 404


def test_model_json_is_keyed_by_step_class(api):
    upload(api, "regression", name="scaled")
    body = api.get("/api/model/scaled/").json()
    assert list(body) == ["StandardScaler", "LinearRegression"]
    assert body["StandardScaler"]["with_std"] is True


def test_learning_changes_predictions_and_metrics(api):
    upload(api, "regression", name="reg")
    x0 = examples("regression")[0][0]
    before = api.post("/api/predict/", {"model": "reg", "features": x0}, format="json").json()["prediction"]
    for x, y in examples("regression", 50):
        api.post("/api/learn/", {"model": "reg", "features": x, "ground_truth": y}, format="json")
    after = api.post("/api/predict/", {"model": "reg", "features": x0}, format="json").json()["prediction"]
    assert before != after
    assert api.get("/api/metrics/", {"model": "reg"}).json()["MAE"] > 0


def test_learn_answer_carries_prediction_made_before_learning(api):
    upload(api, "regression", name="reg")
    (x, y), *_ = examples("regression", 1)
    response = api.post("/api/learn/", {"model": "reg", "features": x, "ground_truth": y}, format="json")
    assert response.status_code == 201
    assert response.json()["prediction"] == 0.0  # an untrained linear model predicts zero
    assert response.json()["sequence"] == 1


def test_binary_prediction_is_probabilities(api):
    upload(api, "binary", name="bin")
    for x, y in examples("binary", 20):
        api.post("/api/learn/", {"model": "bin", "features": x, "ground_truth": y}, format="json")
    prediction = api.post("/api/predict/", {"model": "bin", "features": x}, format="json").json()["prediction"]
    assert set(prediction) == {"true", "false"}
    assert sum(prediction.values()) == pytest.approx(1.0)


def test_binary_metrics_follow_the_labels(api):
    upload(api, "binary", name="bin")
    for x, y in examples("binary", 100):
        api.post("/api/learn/", {"model": "bin", "features": x, "ground_truth": y}, format="json")
    metrics = api.get("/api/metrics/", {"model": "bin"}).json()
    assert 0.5 < metrics["Accuracy"] <= 1.0
    assert metrics["LogLoss"] > 0


def test_metrics_and_stats_accept_query_parameter(api):
    upload(api, "regression", name="q")
    assert api.get("/api/metrics/?model=q").status_code == 200
    assert api.get("/api/stats/?model=q").status_code == 200


def test_delete_accepts_json_body_query_and_path(api):
    for name in ("a1", "a2", "a3"):
        upload(api, "regression", name=name)
    assert api.delete("/api/model/", {"model": "a1"}, format="json").status_code == 200
    assert api.delete("/api/model/?model=a2").status_code == 200
    assert api.delete("/api/model/a3/").status_code == 200
    assert api.get("/api/models/").json() == {"models": []}


def test_delete_unknown_model_is_404(api):
    response = api.delete("/api/model/", {"model": "ghost"}, format="json")
    assert response.status_code == 404
    assert "ghost" in response.json()["message"]


def test_delete_removes_identifiers(api, river_client):
    upload(api, "regression", name="gone")
    x, y = examples("regression", 1)[0]
    identifier = api.post("/api/predict/", {"model": "gone", "features": x}, format="json").json()["identifier"]
    api.delete("/api/model/gone/")
    assert river_client.store.pop_identifier("gone", identifier) is None


def test_reupload_replaces_model_and_resets_metrics_and_stats(api):
    upload(api, "regression", name="same")
    for x, y in examples("regression", 10):
        api.post("/api/learn/", {"model": "same", "features": x, "ground_truth": y}, format="json")
    assert upload(api, "regression", name="same").status_code == 201
    assert api.get("/api/stats/", {"model": "same"}).json()["learn"]["n_calls"] == 0
    assert api.get("/api/metrics/", {"model": "same"}).json()["MAE"] == 0
    assert api.get("/api/models/").json() == {"models": ["same"]}


def test_predict_with_client_identifier_echoes_it(api):
    upload(api, "regression", name="reg")
    x, y = examples("regression", 1)[0]
    response = api.post("/api/predict/", {"model": "reg", "features": x, "identifier": "order-42"}, format="json")
    assert response.status_code == 201
    assert response.json()["identifier"] == "order-42"
    label = api.post("/api/label/", {"model": "reg", "identifier": "order-42", "label": y}, format="json")
    assert label.status_code == 200


def test_predict_without_identifiers_is_200(api, settings):
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "GENERATE_IDENTIFIERS": False}
    upload(api, "regression", name="reg")
    x, _ = examples("regression", 1)[0]
    response = api.post("/api/predict/", {"model": "reg", "features": x}, format="json")
    assert response.status_code == 200
    assert set(response.json()) == {"model", "prediction"}


def test_label_consumes_identifier(api):
    upload(api, "regression", name="reg")
    x, y = examples("regression", 1)[0]
    identifier = api.post("/api/predict/", {"model": "reg", "features": x}, format="json").json()["identifier"]
    assert api.post("/api/label/", {"model": "reg", "identifier": identifier, "label": y},
                    format="json").status_code == 200
    again = api.post("/api/label/", {"model": "reg", "identifier": identifier, "label": y}, format="json")
    assert again.status_code == 404
    assert identifier in again.json()["message"]


def test_label_learns_and_scores_the_stored_prediction(api):
    upload(api, "regression", name="reg")
    x, y = examples("regression", 1)[0]
    body = api.post("/api/predict/", {"model": "reg", "features": x}, format="json").json()
    api.post("/api/label/", {"model": "reg", "identifier": body["identifier"], "label": y}, format="json")
    metrics = api.get("/api/metrics/", {"model": "reg"}).json()
    assert metrics["MAE"] == pytest.approx(abs(y - body["prediction"]))
    stats = api.get("/api/stats/", {"model": "reg"}).json()
    assert stats["label"]["n_calls"] == 1


def test_label_for_another_model_is_refused(api):
    upload(api, "regression", name="one")
    upload(api, "regression", name="two")
    x, y = examples("regression", 1)[0]
    identifier = api.post("/api/predict/", {"model": "one", "features": x}, format="json").json()["identifier"]
    assert api.post("/api/label/", {"model": "two", "identifier": identifier, "label": y},
                    format="json").status_code == 404
    # The identifier still belongs to the first model.
    assert api.post("/api/label/", {"model": "one", "identifier": identifier, "label": y},
                    format="json").status_code == 200


def test_learn_with_identifier_uses_stored_features(api):
    upload(api, "regression", name="reg")
    x, y = examples("regression", 1)[0]
    identifier = api.post("/api/predict/", {"model": "reg", "features": x}, format="json").json()["identifier"]
    response = api.post("/api/learn/", {"model": "reg", "identifier": identifier, "ground_truth": y}, format="json")
    assert response.status_code == 201
    assert api.get("/api/stats/", {"model": "reg"}).json()["learn"]["n_calls"] == 1
    unknown = api.post("/api/learn/", {"model": "reg", "identifier": "nope", "ground_truth": y}, format="json")
    assert unknown.status_code == 404


def test_identifiers_expire(api, settings, river_client):
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, "IDENTIFIER_TTL_SECONDS": 1}
    upload(api, "regression", name="reg")
    x, y = examples("regression", 1)[0]
    identifier = api.post("/api/predict/", {"model": "reg", "features": x}, format="json").json()["identifier"]
    import time

    time.sleep(2.1)
    response = api.post("/api/label/", {"model": "reg", "identifier": identifier, "label": y}, format="json")
    assert response.status_code == 404
    assert "expired" in response.json()["message"]


def test_stats_are_exact_counts(api):
    upload(api, "regression", name="reg")
    for x, y in examples("regression", 7):
        api.post("/api/learn/", {"model": "reg", "features": x, "ground_truth": y}, format="json")
    for x, _ in examples("regression", 3):
        api.post("/api/predict/", {"model": "reg", "features": x}, format="json")
    stats = api.get("/api/stats/", {"model": "reg"}).json()
    assert stats["learn"]["n_calls"] == 7
    assert stats["predict"]["n_calls"] == 3
    assert stats["learn"]["mean_duration_human"].split()[-1] in ("ns", "µs", "ms", "s")


def test_download_filename(api):
    upload(api, "regression", name="reg")
    response = api.get("/api/model/download/reg/")
    assert 'filename="reg.pkl"' in response["Content-Disposition"]


def test_unknown_model_on_every_read_route(api):
    for response in (
        api.get("/api/model/ghost/"),
        api.get("/api/model/download/ghost/"),
        api.get("/api/metrics/", {"model": "ghost"}),
        api.get("/api/stats/", {"model": "ghost"}),
        api.post("/api/predict/", {"model": "ghost", "features": {"a": 1}}, format="json"),
        api.post("/api/learn/", {"model": "ghost", "features": {"a": 1}, "ground_truth": 1}, format="json"),
        api.post("/api/label/", {"model": "ghost", "identifier": "x", "label": 1}, format="json"),
    ):
        assert response.status_code == 404, response.content
        assert response["Content-Type"] == "application/json"
        assert "ghost" in response.json()["message"]
