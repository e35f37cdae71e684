"""The predictions artifact: a run logs its scores, the report reads them back, and scores of
different windows (or a file whose labels do not match their digest) are refused."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from schemas.config import StoreConfig
from schemas.tracking import predictions_tag
from tasks.report.analysis import BudgetBest
from tasks.report.verdicts import needed_predictions, horizon_verdict
from tasks.tracking.predictions import (
    WindowMismatch,
    decode,
    download_predictions,
    encode,
    log_predictions,
    windows_digest,
)
from tasks.tracking.runs import get_or_create_experiment, mlflow_client


def scores_and_labels(n: int = 500, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.3
    return (0.2 + 0.3 * labels + 0.2 * rng.random(n)).astype(np.float32), labels


def test_round_trip_through_mlflow(tmp_path):
    stores = StoreConfig(root=tmp_path / "mlruns")
    client = mlflow_client(stores)
    run = client.create_run(get_or_create_experiment(client, "2M_h1", stores.artifact_root))
    scores, labels = scores_and_labels()
    digest = windows_digest(np.arange(100, 600), ("2016-03-29", "2018-12-28"), 60, 1)
    log_predictions(client, run.info.run_id, "test", scores, labels, digest)

    back = download_predictions(client, run.info.run_id, "test")
    assert back.split == "test" and back.windows_sha256 == digest
    assert np.array_equal(back.scores, scores) and back.scores.dtype == np.float32
    assert np.array_equal(back.labels, labels)
    assert client.get_run(run.info.run_id).data.tags[predictions_tag("test")] == digest
    # small: 4 bytes a window and a bit a label, compressed (a 50-trial study of 1,390 val windows: ~0.3 MB)
    assert len(encode("val", scores, labels, digest)) < 4 * len(scores) + len(scores) // 8 + 1500


def test_windows_digest_tells_splits_apart():
    anchors = np.arange(100, 600)
    base = windows_digest(anchors, ("2016-03-29", "2018-12-28"), 60, 1)
    assert base == windows_digest(anchors.copy(), ("2016-03-29", "2018-12-28"), 60, 1)
    assert base != windows_digest(anchors[1:], ("2016-03-29", "2018-12-28"), 60, 1)
    assert base != windows_digest(anchors, ("2016-03-29", "2018-12-29"), 60, 1)
    assert base != windows_digest(anchors, ("2016-03-29", "2018-12-28"), 60, 5)


def test_a_mismatch_is_refused():
    scores, labels = scores_and_labels()
    a = decode(encode("test", scores, labels, "w1"))
    with pytest.raises(WindowMismatch, match="different windows"):
        a.same_windows(decode(encode("test", scores, labels, "w2")))
    with pytest.raises(WindowMismatch, match="different windows"):
        a.same_windows(decode(encode("test", scores, ~labels, "w1")))
    a.same_windows(decode(encode("test", scores[::-1].copy(), labels, "w1")))  # same windows, other scores: fine


def test_a_file_whose_labels_do_not_match_its_digest_is_refused():
    scores, labels = scores_and_labels()
    with np.load(io.BytesIO(encode("test", scores, labels, "w1"))) as archive:
        parts = dict(archive)
    parts["labels"] = np.packbits(~labels)
    buffer = io.BytesIO()
    np.savez(buffer, **parts)
    with pytest.raises(WindowMismatch, match="do not match its digest"):
        decode(buffer.getvalue())


def _best(budget: str, run_id: str, params: float, test_tag: str | None) -> BudgetBest:
    run = pd.Series({"run_id": run_id, "run_kind": "trial", "source": "hpo", "study": f"{budget}_h1", "budget": budget,
                     "budget_group": budget, "horizon": 1.0, "trial_number": 3.0, "study_version": 1.0,
                     "params": params, "val_auc": 0.7, predictions_tag("test"): test_tag})  # fmt: skip
    return BudgetBest(budget, 1, 10, 10, run, None, None, None, None)


def test_verdict_on_different_windows_is_undetermined():
    scores, labels = scores_and_labels()
    bests = [_best("2M", "a", 2e6, "w1"), _best("20M", "b", 2e7, "w2"), _best("200M", "c", 2e8, None)]
    assert needed_predictions([type("H", (), {"bests": bests})()]) == ["a", "b"]  # untagged runs are not read
    found = {"a": decode(encode("test", scores, labels, "w1")), "b": decode(encode("test", scores, labels, "w2"))}
    verdict = horizon_verdict(1, bests, found)
    assert verdict.verdict == "undetermined"
    pair = next(p for p in verdict.pairs if (p.b, p.a) == ("2M", "20M"))
    assert pair.verdict == "undetermined" and "different windows" in pair.note
    assert any(line.startswith("200M: study 200M_h1 has not logged") for line in verdict.missing)
