"""The `recover` flow and `hpo recover`, end to end: crafted logs and an old JSON file in, JSON
files and MLflow runs out, against a temporary Prefect API and a temporary MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.recover import recover
from schemas.legacy import RecoverRequest
from tasks.legacy.recover import load_experiment

from helpers import GRID, failed, finished, header, legacy_runs, line, old_json_trials, start, write_log


pytestmark = pytest.mark.usefixtures("prefect_harness")  # the flows talk to a temporary Prefect API


@pytest.fixture
def clean_log(tmp_path: Path) -> Path:
    (tmp_path / "logs").mkdir(exist_ok=True)
    return write_log(tmp_path / "logs" / "2M_h1.log", [
        header(), start(0, GRID[0]), finished(0), start(1, GRID[1], heads=True), failed(1),
    ])


@pytest.fixture
def messy_log(tmp_path: Path) -> Path:
    """A restart, a disagreeing arch_idx and a truncated last line."""
    path = tmp_path / "logs" / "2M_h3.log"
    path.parent.mkdir(exist_ok=True)
    text = "".join([
        header("2M_h3", horizon="h3"), start(0, GRID[0]), start(0, GRID[2]), finished(0),
        start(1, GRID[3], d_model=32), finished(1), start(2, GRID[4]),
    ])
    path.write_bytes((text + finished(2)[:50]).replace("\n", "\r\n").encode())
    return path


def test_flow_recovers_writes_and_imports_idempotently(tmp_path: Path, stores, clean_log: Path, messy_log: Path) -> None:
    old_json = tmp_path / "phase6a_2M_h5_all_trials.json"
    old_json.write_text(json.dumps(old_json_trials()[:2]))
    request = RecoverRequest(inputs=[clean_log.parent, old_json], out=tmp_path / "out", import_mlflow=True, stores=stores)

    report = recover(request)
    assert report.written
    rows = {row.experiment: row for row in report.experiments}
    assert set(rows) == {"2M_h1", "2M_h3", "2M_h5"}
    assert (rows["2M_h1"].trials, rows["2M_h1"].complete, rows["2M_h1"].problems) == (2, 1, 0)
    assert (rows["2M_h1"].n_heads_logged, rows["2M_h1"].n_heads_recovered) == (1, 1)
    messy = rows["2M_h3"]
    assert (messy.trials, messy.complete, messy.restarts, messy.n_heads_unrecoverable) == (3, 2, 1, 1)
    assert messy.problems == 4  # restart, unrecoverable n_heads, truncated line, never finished
    assert rows["2M_h5"].n_heads_recovered == 2 and rows["2M_h5"].problems == 0
    assert rows["2M_h1"].mlflow.created == 2 and messy.mlflow.created == 4
    for name in rows:
        assert load_experiment(tmp_path / "out" / f"{name}.json").experiment == name

    again = recover(request)
    assert [(r.mlflow.created, r.mlflow.replaced) for r in again.experiments] == [(0, 0)] * 3
    assert len(legacy_runs(stores, "2M_h3")[1]) == 4


def test_flow_strict_writes_nothing_when_there_is_a_problem(tmp_path: Path, stores, messy_log: Path) -> None:
    report = recover(RecoverRequest(inputs=[messy_log], out=tmp_path / "out", import_mlflow=True, strict=True, stores=stores))
    assert not report.written and len(report.problems) == 4
    assert not (tmp_path / "out").exists()
    assert stores.root.joinpath("mlflow.db").exists() and not stores.artifact_root.exists()


def _hpo(*args: str):
    return CliRunner().invoke(app, list(args))


def test_cli_recovers_what_it_can_and_reports_the_rest(tmp_path: Path, clean_log: Path, messy_log: Path) -> None:
    result = _hpo("recover", str(clean_log), str(messy_log), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert "2M_h1" in result.output and "2M_h3" in result.output
    assert f"{messy_log}:3: trial 0 starts again" in result.output
    assert f"{messy_log}:5: trial 1: n_heads unrecoverable" in result.output
    assert f"{messy_log}:8: last line has no line ending (truncated)" in result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["2M_h1.json", "2M_h3.json"]


def test_cli_strict_exits_non_zero_on_any_problem(tmp_path: Path, clean_log: Path, messy_log: Path) -> None:
    result = _hpo("recover", str(clean_log), str(messy_log), "--out", str(tmp_path / "out"), "--strict")
    assert result.exit_code == 2
    assert "--strict: 4 problems, nothing written" in result.output
    assert not (tmp_path / "out").exists()


def test_cli_strict_passes_a_clean_log_and_imports_it(tmp_path: Path, stores, clean_log: Path) -> None:
    args = ("recover", str(clean_log), "--out", str(tmp_path / "out"), "--strict", "--import-mlflow", "--root", str(stores.root))
    result = _hpo(*args)
    assert result.exit_code == 0, result.output
    assert "2/0/0" in result.output  # mlflow runs: new/same/replaced
    assert len(legacy_runs(stores)[1]) == 2


def test_cli_refuses_an_unknown_grid_version(tmp_path: Path, clean_log: Path) -> None:
    result = _hpo("recover", str(clean_log), "--out", str(tmp_path / "out"), "--grid-version", "9")
    assert result.exit_code == 2
    assert "unknown grid_version 9" in result.output


# --- issue 22, case 6: exit 0 on nothing ------------------------------------------------------


def _binary(path: Path) -> Path:
    """Bytes no log holds: a gzip-like header, NULs and high bytes (one stray newline in them)."""
    path.write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)) * 8 + b"\nTrial 0: \xff\xfe\x00" * 3)
    return path


def test_cli_refuses_a_binary_file_before_anything_is_written(tmp_path: Path, clean_log: Path) -> None:
    binary = _binary(tmp_path / "2M_h5.log")
    result = _hpo("recover", str(clean_log), str(binary), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    [message] = result.output.strip().splitlines()  # one line, no traceback, the bytes never echoed
    assert message.startswith(f"{binary}: not a text file (a NUL byte at offset 3)")
    assert "give the text log, trial .json or trials .csv file" in message and "--optuna-storage" in message
    assert not (tmp_path / "out").exists()


def test_a_binary_file_without_nul_bytes_is_refused_too(tmp_path: Path) -> None:
    from tasks.legacy.recover import non_text_reason, recover_file

    path = tmp_path / "2M_h1.log"
    path.write_bytes(bytes(range(128, 256)) * 20)
    assert non_text_reason(path).startswith("not a text file (")
    result = recover_file(path)  # the flow's own path, for a request that bypassed the CLI
    [problem] = result.problems
    assert result.experiments == [] and problem.line is None and "not a text file" in problem.reason
    assert "\ufffd" not in problem.reason
    # a log with one stray byte (latin-1, say) is still text and still read
    clean = write_log(tmp_path / "2M_h3.log", [header("2M_h3", horizon="h3"), start(0, GRID[0]), finished(0)])
    clean.write_bytes(clean.read_bytes() + b"note: 25\xb5s per step\n")
    assert non_text_reason(clean) is None and len(recover_file(clean).experiments[0].trials) == 1


def test_cli_exits_non_zero_when_nothing_is_recovered(tmp_path: Path, stores) -> None:
    empty = tmp_path / "2M_h1.log"
    empty.touch()
    result = _hpo("recover", str(empty), "--out", str(tmp_path / "out"), "--import-mlflow", "--root", str(stores.root))
    assert result.exit_code == 2, result.output
    assert f"{empty}: empty file; nothing to recover" in result.output
    assert "nothing recovered: no input gave a trial" in result.output and "Traceback" not in result.output
    noise = write_log(tmp_path / "2M_h5.log", [line("nothing but noise"), "Epoch 1/50: 100%\n"])
    assert _hpo("recover", str(noise), "--out", str(tmp_path / "out")).exit_code == 2
    assert _hpo("recover", str(empty), str(noise), "--out", str(tmp_path / "out"), "--strict").exit_code == 2


# --- issue 22, case 7: a contradicted legacy trial becomes the best -------------------------


@pytest.fixture
def contradicted_log(tmp_path: Path) -> Path:
    """Trial 1, the best val AUC, logs arch_idx 0 but n_layers 40 and params 2,001,217 (the grid's
    entry has 32 and 1,601,345); trial 2 logs its n_heads and an arch_idx the grid lacks."""
    (tmp_path / "logs").mkdir(exist_ok=True)
    return write_log(tmp_path / "logs" / "2M_h1.log", [
        header(), start(0, GRID[3], lr="2e-05"), finished(0, auc=0.70),
        start(1, GRID[0], n_layers=40, params="2,001,217", lr="9e-05"), finished(1, auc=0.80),
        start(2, GRID[4], heads=True, arch_idx=99), finished(2, auc=0.75),
    ])


def test_a_trial_the_grid_contradicts_is_imported_unverified_and_never_the_best(
    tmp_path: Path, stores, contradicted_log: Path
) -> None:
    from schemas import tracking as T
    from tasks.study.retrain import RetrainRefused, find_trial_run
    from tasks.study.supplemental import best_hyperparameters
    from tasks.tracking.runs import search_all_runs

    args = ("recover", str(contradicted_log), "--out", str(tmp_path / "out"), "--import-mlflow", "--root", str(stores.root))
    result = _hpo(*args)
    assert result.exit_code == 0, result.output
    assert f"{contradicted_log}:4: trial 1: n_heads unrecoverable: arch_idx 0 of the 2M grid v1 disagrees with the log: " \
        "n_layers 32 (grid) vs 40 (log); params 1,601,345 (grid) vs 2,001,217 (log); unverified: imported with its " \
        "metrics, never selected as best" in result.output
    assert f"{contradicted_log}:6: trial 2: arch_idx 99 of the 2M grid v1 does not exist" in result.output
    row = next(r for r in result.output.splitlines() if r.startswith("2M_h1"))
    assert row.split()[1:4] == ["3", "3", "2"]  # trials, complete, unverified
    trials = {t.number: t for t in load_experiment(tmp_path / "out" / "2M_h1.json").trials}
    assert [trials[n].verified for n in (0, 1, 2)] == [True, False, False]
    assert trials[1].state == "complete" and "n_layers 32 (grid) vs 40 (log)" in trials[1].unverified_reason

    client, runs = legacy_runs(stores)
    by_number = {run.data.tags[T.TAG_TRIAL_NUMBER]: run for run in runs}
    for number in ("1", "2"):
        run = by_number[number]
        assert run.info.status == "FINISHED" and run.data.metrics["val_auc"] in (0.80, 0.75)  # kept, as data
        assert run.data.tags[T.TAG_STATE] == T.STATE_UNVERIFIED == "unverified"
        assert run.data.tags[T.TAG_VERIFIED] == "false" and "2M grid v1" in run.data.tags[T.TAG_UNVERIFIED_REASON]
    assert by_number["0"].data.tags[T.TAG_STATE] == "complete" and T.TAG_VERIFIED not in by_number["0"].data.tags

    # no selector of complete trials takes them: supplemental's best hyperparameters, retrain's trial
    experiment_id = runs[0].info.experiment_id
    hparams, best_run = best_hyperparameters(client, experiment_id)
    assert best_run == by_number["0"].info.run_id and hparams["learning_rate"] == 2e-05
    assert find_trial_run(client, "2M_h1", "0").info.run_id == best_run
    with pytest.raises(RetrainRefused, match=r"2M_h1 #1 is an unverified legacy trial \(arch_idx 0 of the 2M grid v1 disagrees"):
        find_trial_run(client, "2M_h1", "1")

    # the legacy study run ends FINISHED, and a second import changes nothing
    [study_run] = search_all_runs(client, [experiment_id], "tags.run_kind = 'study'")
    assert study_run.info.status == "FINISHED"
    again = _hpo(*args)
    assert again.exit_code == 0 and "0/3/0" in again.output


def test_every_legacy_study_run_ends_finished_and_an_hpo_study_run_is_left_alone(
    tmp_path: Path, stores, clean_log: Path, messy_log: Path
) -> None:
    from tasks.legacy.importer import import_experiment
    from tasks.legacy.recover import recover_file
    from tasks.tracking.runs import ensure_study_run, find_study_run, get_or_create_experiment, mlflow_client

    client = mlflow_client(stores)
    hpo_id = get_or_create_experiment(client, "2M_h3", stores.artifact_root)
    hpo_run = ensure_study_run(client, hpo_id, study="2M_h3", budget="2M", horizon=3, version=1, source="hpo")
    for log in (clean_log, messy_log):
        [experiment] = recover_file(log).experiments
        import_experiment(experiment, stores, log)
    legacy_id = client.get_experiment_by_name("2M_h1").experiment_id
    assert client.get_run(find_study_run(client, legacy_id, "2M_h1")).info.status == "FINISHED"
    assert client.get_run(hpo_run).info.status == "RUNNING"  # an hpo study's run is ended by its own finish
    # a study run an earlier import (or a crash in it) left RUNNING ends FINISHED on the next import
    client.update_run(find_study_run(client, legacy_id, "2M_h1"), status="RUNNING")
    [experiment] = recover_file(clean_log).experiments
    assert import_experiment(experiment, stores, clean_log).unchanged == 2
    assert client.get_run(find_study_run(client, legacy_id, "2M_h1")).info.status == "FINISHED"
