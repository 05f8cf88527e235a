"""`make bench` runs: the whole suite, with a tiny configuration, writes its table as JSON and markdown.

Only that it runs and what it reports are checked, never a figure: benchmarks are not timed tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMALL = "StandardScaler | LinearRegression"
TINY = {"BENCH_QUICK": "1", "BENCH_WORKERS": "1", "BENCH_MANY_WORKERS": "1", "BENCH_CLIENTS": "2",
        "BENCH_SECONDS": "0.3", "BENCH_ROUNDS": "1", "BENCH_MODEL_BYTES": "20000", "BENCH_MODELS": "4",
        "BENCH_BAND": "2", "BENCH_PAIRS": "1", "BENCH_SUBSCRIBERS": "3", "BENCH_LEARNS": "6", "BENCH_UPLOADS": "1",
        "BENCH_BATCH_ROWS": "100"}
EXPECTED = [
    f"in-process learn_one, {SMALL}", f"in-process predict_one, {SMALL}",
    "in-process learn_one, ~20 KB Hoeffding tree", "in-process predict_one, ~20 KB Hoeffding tree",
    "HTTP floor: hello-world ASGI, same workers", "DRF floor: minimal APIView, same server",
    f"learn, {SMALL}", f"predict, {SMALL}", "learn, ~20 KB Hoeffding tree", "predict, ~20 KB Hoeffding tree",
    f"server CPU per learn, {SMALL}", f"server CPU per predict, {SMALL}",
    f"batch learn, {SMALL}", f"batch predict, {SMALL}",
    "server CPU per 1,000 rows, batch learn", "server CPU per 1,000 rows, batch predict",
    "stream event latency p50, 3 subscribers", "stream event latency p99, 3 subscribers",
    "stream events delivered, 3 subscribers",
    "upload of a ~20 KB tree (riverapi, sandbox), p50",
    "learn+predict pair p50, last 2 of 4 models", "learn+predict pair p99, last 2 of 4 models",
    "worker RSS after uploads and pairs (mean per worker)", "worker RSS after pairs on all 4 models (mean per worker)",
    "sandbox start (once per server process)",
    "learn under ASGI", "server CPU per learn request under ASGI", "predict under ASGI",
    "server CPU per predict request under ASGI", "DRF floor under ASGI", "server CPU per DRF floor request under ASGI",
    "learn, two hosts on a Redis Cluster (3+3, WAIT 1)", "hosts' CPU per learn, Redis Cluster",
    "predict, two hosts on a Redis Cluster (3+3, WAIT 1)", "hosts' CPU per predict, Redis Cluster",
]


@pytest.mark.live
def test_the_benchmark_suite_writes_its_table(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BENCH_", "DJANGO_"))}
    env.update(TINY, BENCH_OUTPUT=str(tmp_path))
    result = subprocess.run([sys.executable, "-m", "bench"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    report = json.loads((tmp_path / "results.json").read_text())
    names = [row["name"] for row in report["rows"]]
    assert not [note for note in report["notes"] if "failed" in note], report["notes"]
    missing = [name for name in EXPECTED if name not in names]
    assert not missing, (missing, names)
    assert any(name.startswith("upload load in the sandbox, ") for name in names)
    goals = {row["name"]: row["goal"] for row in report["rows"] if row["goal"]}
    assert goals[f"batch learn, {SMALL}"] == "≥ 0.3×"
    assert goals[f"batch predict, {SMALL}"] == "≥ 0.1×"
    assert report["config"]["models"] == 4

    markdown = (tmp_path / "results.md").read_text()
    assert "| benchmark | value | unit | floor | floor value | ratio | goal | met |" in markdown
    for name in EXPECTED:
        assert f"| {name.replace('|', chr(92) + '|')} |" in markdown, name
    assert "floor" in result.stdout and f"batch learn, {SMALL}" in result.stdout
