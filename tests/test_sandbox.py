"""The sandbox: uploads are loaded in a confined process, under limits, and come back as plain data."""

from __future__ import annotations

import os
import pickle
import signal
import socket
import threading

import dill
import pytest
from river import datasets, linear_model, preprocessing

import sandbox_probes
from django_river_ml.client import DjangoClient
from django_river_ml.exceptions import InvalidModel, ModelFailed, ModelTooLarge
from django_river_ml.sandbox import Sandbox, SandboxLimit, confine, get_sandbox, reset_sandbox
from test_loading import REAL_MODELS, trained

FLAVOR_OF_KIND = {"regression": "regression", "binary": "binary", "text": "binary", "unsupervised": "anomaly"}
LAYERS = confine.report()


@pytest.fixture
def probes(settings, tmp_path):
    """Settings that allow the probe classes (each request tells the sandbox what is allowed)."""
    settings.DJANGO_RIVER_ML = {"DATA_DIR": str(tmp_path / "data"), "ALLOWED_MODEL_MODULES": ["sandbox_probes"],
                                "DISABLE_AUTHENTICATION": True}
    return settings


def limited(settings, **values):
    settings.DJANGO_RIVER_ML = {**settings.DJANGO_RIVER_ML, **values}


# Real models go through and come back the same --------------------------------------------------


@pytest.mark.parametrize("dumps", [dill.dumps, pickle.dumps], ids=["dill", "pickle"])
@pytest.mark.parametrize("name", sorted(REAL_MODELS))
def test_real_models_come_back_from_the_sandbox_predicting_the_same(name, dumps, probes):
    factory, kind = REAL_MODELS[name]
    model = trained(factory(), kind)
    flavor = "cluster" if name == "kmeans" else FLAVOR_OF_KIND[kind]
    result = get_sandbox().load(dumps(model), flavor)
    assert type(result.model) is type(model)
    assert result.trial == "passed"
    method = {"anomaly": "score_one", "cluster": "predict_one", "regression": "predict_one"}.get(
        flavor, "predict_proba_one")
    for x, _ in datasets.Phishing().take(5):
        x = {"text": "hello world"} if kind == "text" else x
        if name in ("one-vs-one", "output-code"):
            method = "predict_one"
        assert getattr(result.model, method)(x) == getattr(model, method)(x)


def test_json_specs_are_built_in_the_sandbox(probes):
    spec = [{"class": "preprocessing.StandardScaler"}, {"class": "linear_model.LinearRegression"}]
    result = get_sandbox().build(spec, "regression")
    assert type(result.model).__name__ == "Pipeline"
    assert result.trial == "passed"


# The process is confined ------------------------------------------------------------------------


def probe(tmp_path, *checks: str, **targets):
    return sandbox_probes.Probe(checks, **targets)


def test_the_job_cannot_write_read_connect_fork_or_see_secrets(probes, tmp_path, monkeypatch):
    monkeypatch.setenv("DJANGO_RIVER_ML_SECRET_FOR_TEST", "hunter2")
    secret = tmp_path / "secret.txt"
    secret.write_text("the site's secret")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        model = sandbox_probes.Probe(["write", "read", "connect", "fork", "environment", "cwd", "kill_parent"],
                                     write=str(tmp_path / "escaped.txt"), read=str(secret),
                                     port=listener.getsockname()[1])
        result = get_sandbox().load(pickle.dumps(model), "regression")
    finally:
        listener.close()
    seen = result.model.seen
    assert not (tmp_path / "escaped.txt").exists() or (tmp_path / "escaped.txt").read_text() == ""
    assert seen["write"].startswith("refused"), seen
    assert seen["fork"].startswith("refused"), seen
    # An empty working directory, which Landlock does not even let it list.
    assert seen["cwd"].startswith("refused") if LAYERS.landlock else seen["cwd"] == "[]", seen
    environment = eval(seen["environment"])  # noqa: S307 - a repr of a list of names we made
    assert not any("DJANGO" in name or "SECRET" in name for name in environment), environment
    if LAYERS.landlock:
        assert seen["read"].startswith("refused"), seen
    if LAYERS.network_namespace or LAYERS.landlock >= 4 or LAYERS.seccomp:
        assert seen["connect"].startswith("refused"), seen
    if LAYERS.seccomp:
        assert seen["kill_parent"].startswith("refused"), seen
    assert result.confined["seccomp"] == LAYERS.seccomp
    assert result.confined["landlock"] == LAYERS.landlock
    assert result.confined["network_namespace"] == LAYERS.network_namespace


def test_missing_layers_are_a_deploy_warning():
    from django_river_ml.checks import check_sandbox

    warnings = check_sandbox()
    assert [w.id for w in warnings] == (["django_river_ml.W003"] if LAYERS.missing() else [])
    for layer in LAYERS.missing():
        assert layer in warnings[0].msg


def test_the_zygote_holds_no_secrets_and_works_in_an_empty_directory(probes, monkeypatch):
    monkeypatch.setenv("DJANGO_SECRET_KEY", "not-for-the-sandbox")
    reset_sandbox()
    sandbox = get_sandbox()
    sandbox.start()
    pid = sandbox._process.pid
    with open(f"/proc/{pid}/environ", "rb") as handle:
        environment = handle.read().split(b"\0")
    assert not any(b"SECRET" in item or b"DJANGO" in item for item in environment), environment
    assert os.listdir(f"/proc/{pid}/cwd") == []
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        assert b"-I" in handle.read().split(b"\0")  # isolated: no PYTHON* variables, no user site


# Limits -----------------------------------------------------------------------------------------


def test_cpu_limit(probes):
    limited(probes, SANDBOX_CPU_SECONDS=1)
    model = sandbox_probes.Spins()
    model.spin = True
    with pytest.raises(SandboxLimit, match="SANDBOX_CPU_SECONDS"):
        get_sandbox().load(pickle.dumps(model), "regression")


def test_wall_clock_limit(probes):
    limited(probes, SANDBOX_TIMEOUT_SECONDS=1)
    model = sandbox_probes.Sleeps()
    model.sleep = 30
    with pytest.raises(SandboxLimit, match="SANDBOX_TIMEOUT_SECONDS"):
        get_sandbox().load(pickle.dumps(model), "regression")


def test_memory_limit(probes):
    limited(probes, SANDBOX_MEMORY_BYTES=200 * 1024 * 1024)
    model = sandbox_probes.Hoards()
    model.hoard = 2 * 1024 * 1024 * 1024
    with pytest.raises(SandboxLimit, match="SANDBOX_MEMORY_BYTES"):
        get_sandbox().load(pickle.dumps(model), "regression")


def test_trial_limit(probes):
    limited(probes, TRIAL_SECONDS=0.5)
    with pytest.raises(SandboxLimit, match="TRIAL_SECONDS"):
        get_sandbox().load(pickle.dumps(sandbox_probes.SlowTrial()), "regression")


def test_a_crash_in_the_loader_is_a_400_and_the_server_lives_on(probes):
    model = sandbox_probes.Crashes()
    model.crash = True
    with pytest.raises(InvalidModel, match="crashed the loader"):
        get_sandbox().load(pickle.dumps(model), "regression")
    # The next upload is served by the same zygote.
    assert get_sandbox().load(pickle.dumps(linear_model.LinearRegression()), "regression").trial == "passed"


def test_a_dead_zygote_is_started_again(probes):
    sandbox = get_sandbox()
    sandbox.start()
    os.kill(sandbox._process.pid, signal.SIGKILL)
    sandbox._process.wait(5)
    assert type(sandbox.load(pickle.dumps(linear_model.LinearRegression()), "regression").model).__name__ == \
        "LinearRegression"


def test_concurrent_uploads_in_one_process_take_turns(probes):
    sandbox = get_sandbox()
    data = pickle.dumps(preprocessing.StandardScaler() | linear_model.LinearRegression())
    results, errors = [], []

    def upload():
        try:
            results.append(sandbox.load(data, "regression"))
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=upload) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == [] and len(results) == 4


def test_model_larger_than_the_limit_is_refused_at_upload(backend, settings):
    model = trained(preprocessing.StandardScaler() | linear_model.LinearRegression(), "regression")
    limited(settings, MAX_MODEL_BYTES=200)
    with pytest.raises(ModelTooLarge, match="MAX_MODEL_BYTES"):
        DjangoClient().upload_model(pickle.dumps(model), "regression", model_name="big")
    with pytest.raises(ModelTooLarge, match="MAX_MODEL_BYTES"):  # server code's own objects too
        DjangoClient().upload_model(model, "regression", model_name="big")
    assert DjangoClient().models() == []


def test_upload_over_http_names_the_limit(api, settings):
    limited(settings, MAX_MODEL_BYTES=200)
    model = trained(preprocessing.StandardScaler() | linear_model.LinearRegression(), "regression")
    response = api.post("/api/model/regression/big/", data=dill.dumps(model), content_type="application/octet-stream")
    assert response.status_code == 413, response.content
    assert "MAX_MODEL_BYTES" in response.json()["message"]


# A call over its time limit ---------------------------------------------------------------------


def test_a_learn_over_the_call_time_limit_is_rejected_and_leaves_the_model_usable(backend, settings):
    limited(settings, CALL_TIME_LIMIT_SECONDS=0.2, ALLOWED_MODEL_MODULES=["sandbox_probes"])
    client = DjangoClient()
    client.upload_model(sandbox_probes.SlowLearner(), "regression", model_name="slow")
    client.learn("slow", {"x": 1.0}, ground_truth=1.0)
    with pytest.raises(ModelFailed, match="CALL_TIME_LIMIT_SECONDS"):
        client.learn("slow", {"slow": 10.0}, ground_truth=1.0)
    with pytest.raises(ModelFailed, match="CALL_TIME_LIMIT_SECONDS"):
        client.predict("slow", {"slow": 10.0})
    client.learn("slow", {"x": 1.0}, ground_truth=1.0)
    assert client.predict("slow", {"x": 1.0})["prediction"] == 2.0  # the slow learn never counted
    # Another process (a fresh registry) replays the log to the same state, skipping the rejected entry.
    assert DjangoClient(store=client.store).predict("slow", {"x": 1.0})["prediction"] == 2.0


def test_sandbox_is_a_session_object(probes):
    sandbox = Sandbox()
    try:
        assert sandbox.load(pickle.dumps(linear_model.LinearRegression()), "regression").trial == "passed"
    finally:
        sandbox.close()
    assert sandbox._process is None


def test_prewarm_starts_the_zygote_at_the_first_request(probes):
    import time

    from django_river_ml.sandbox import prewarm

    reset_sandbox()
    limited(probes, SANDBOX_PREWARM=True)
    prewarm()
    deadline = time.monotonic() + 60
    while get_sandbox()._process is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert get_sandbox()._process is not None and get_sandbox()._process.poll() is None
