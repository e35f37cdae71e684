"""bench/orchestration_overhead.py: every layer runs its trials for real and reports sane figures;
the trial process's "noop" mode it relies on trains nothing and reports a complete trial."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import bench_module
from models.arch_grid import get_architectures_for_budget
from schemas.config import TrainConfig
from schemas.trial import NOOP_RESULT, TrialRequest
from tasks.study.trial_process import run_trial_process


@pytest.fixture(scope="module")
def bench():
    with bench_module("orchestration_overhead") as module:
        yield module


def assert_sane(results, layers: list[str], trials: int) -> None:
    assert [r.layer for r in results] == layers
    for r in results:
        assert r.trials == trials
        assert r.per_trial_ms > 0 and r.median_ms > 0
        assert r.setup_s >= 0 and r.finish_s >= 0
        assert all(ms >= 0 for ms in r.split_ms.values())
        assert sum(r.split_ms.values()) <= r.per_trial_ms * 1.05, "the split never exceeds the period"


def test_bare_and_study_layers(bench, tmp_path: Path):
    layers = ["bare-memory", "bare-sqlite", "study"]
    results = bench.run_layers(layers, 3, tmp_path)

    assert_sane(results, layers, 3)
    bare, sqlite, study = results
    assert bare.split_ms["optuna"] == 0 and bare.split_ms["mlflow"] == 0, "in memory: no RDB storage, no MLflow"
    assert sqlite.split_ms["optuna"] > 0 and sqlite.split_ms["mlflow"] == 0
    assert study.split_ms["optuna"] > 0 and study.split_calls["mlflow"] >= 2, "a run created and ended per trial"
    assert study.split_ms["trial_process"] == 0
    assert study.per_trial_ms > bare.per_trial_ms
    text = bench.table(results)
    assert all(layer in text for layer in layers) and "x bare-memory" in text


@pytest.mark.slow
def test_process_and_prefect_layers(bench, tmp_path: Path, prefect_harness):
    layers = ["bare-memory", "process", "prefect"]
    results = bench.run_layers(layers, 3, tmp_path)

    assert_sane(results, layers, 3)
    for r in results[1:]:
        assert r.split_ms["trial_process"] > 0 and r.split_ms["mlflow"] > 0 and r.split_ms["optuna"] > 0
        assert r.per_trial_ms > r.split_ms["trial_process"]


@pytest.mark.slow
def test_noop_trial_process_trains_nothing(tmp_path: Path):
    request = TrialRequest(
        mode="noop",
        trial_number=0,
        dataset_path=tmp_path / "no-such-dataset.npz",  # never read
        window=60,
        arch=get_architectures_for_budget("smoke")[0],
        train=TrainConfig(device="cpu"),
        checkpoint_path=tmp_path / "trial_0.pt",
    )
    beats = []

    outcome = run_trial_process(request, heartbeat=lambda: beats.append(1), stall_timeout_s=60)

    assert outcome.complete, outcome.reason
    assert outcome.result == NOOP_RESULT
    assert beats, "the runner still beats the heartbeat"
    assert not request.checkpoint_path.exists()
