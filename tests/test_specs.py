"""JSON model specs: river pipelines described as data, on both backends."""

from __future__ import annotations

import json

import pytest

from django_river_ml.exceptions import InvalidModel
from django_river_ml.specs import build_model
from flavored_models import examples


def upload_spec(api, flavor, spec, name=None):
    url = f"/api/model/{flavor}/{name}/" if name else f"/api/model/{flavor}/"
    return api.post(url, data=json.dumps(spec), content_type="application/json")


def test_pipeline_spec_learns_like_the_same_model_uploaded_as_a_pickle(api):
    spec = [{"class": "preprocessing.StandardScaler"},
            {"class": "linear_model.LogisticRegression", "params": {"l2": 0.1}}]
    response = upload_spec(api, "binary", spec, name="from-spec")
    assert response.status_code == 201, response.content
    assert response.json() == {"name": "from-spec"}
    body = api.get("/api/model/from-spec/").json()
    assert list(body) == ["StandardScaler", "LogisticRegression"]
    assert body["LogisticRegression"]["l2"] == 0.1

    reference = build_model(spec)
    for x, y in examples("binary", 30):
        assert api.post("/api/learn/", {"model": "from-spec", "features": x, "ground_truth": y},
                        format="json").status_code == 201
        reference.learn_one(x, y)
    prediction = api.post("/api/predict/", {"model": "from-spec", "features": x}, format="json").json()["prediction"]
    expected = reference.predict_proba_one(x)
    assert prediction == pytest.approx({str(k).lower(): v for k, v in expected.items()})


def test_single_step_and_nested_estimators(api):
    spec = {"class": "multiclass.OneVsRestClassifier",
            "params": {"classifier": {"class": "linear_model.LogisticRegression",
                                      "params": {"optimizer": {"class": "optim.SGD", "params": {"lr": 0.05}}}}}}
    assert upload_spec(api, "multiclass", spec, name="ovr").status_code == 201
    assert upload_spec(api, "anomaly", {"class": "anomaly.HalfSpaceTrees", "params": {"seed": 1}}).status_code == 201
    assert upload_spec(api, "cluster", [{"class": "cluster.KMeans", "params": {"n_clusters": 2, "seed": 3}}],
                       name="km").status_code == 201
    assert "KMeans" in api.get("/api/model/km/").json()


@pytest.mark.parametrize(("spec", "words"), [
    ({"class": "os.system"}, "'os.system' is not a public river class"),
    ({"class": "builtins.eval"}, "is not a public river class"),
    ({"class": "linear_model.lin_reg.LinearRegression"}, "is not a public river class"),
    ({"class": "linear_model.NoSuchModel"}, "is not a public river class"),
    ({"class": "stream.iter_csv"}, "is not a public river class"),
    ({"class": "datasets.Phishing"}, "is not a public river class"),
    ({"class": "base.typing"}, "is not a public river class"),
    ({"class": "__import__"}, "is not a public river class"),
    ({"class": "linear_model.LinearRegression", "params": {"no_such_param": 1}}, "does not accept these params"),
    ({"class": "linear_model.LinearRegression", "params": [1]}, "'params' of linear_model.LinearRegression"),
    ({"class": "linear_model.LinearRegression", "code": "x"}, "unknown keys"),
    ({"klass": "linear_model.LinearRegression"}, "a step is an object with a 'class'"),
    ([], "at least one step"),
    ("linear_model.LinearRegression", "a step is an object"),
    (None, "a step is an object"),
])
def test_bad_specs_are_400_naming_the_problem(api, spec, words):
    response = upload_spec(api, "regression", spec, name="bad")
    assert response.status_code == 400, response.content
    assert words in response.json()["message"]
    assert api.get("/api/models/").json() == {"models": []}


def test_spec_unfit_for_its_flavor(api):
    response = upload_spec(api, "binary", {"class": "linear_model.LinearRegression"})
    assert response.status_code == 400
    assert "predict_proba_one" in response.json()["message"]


def test_deeply_nested_spec_is_refused():
    spec: dict = {"class": "linear_model.LinearRegression"}
    for _ in range(50):
        spec = {"class": "multiclass.OneVsRestClassifier", "params": {"classifier": spec}}
    with pytest.raises(InvalidModel, match="nested"):
        build_model(spec)


def test_client_upload_spec(river_client):
    name = river_client.upload_spec([{"class": "preprocessing.StandardScaler"},
                                     {"class": "linear_model.LinearRegression"}], "regression")
    river_client.learn(name, {"x": 1.0}, ground_truth=2.0)
    assert river_client.stats(name)["learn"]["n_calls"] == 1
