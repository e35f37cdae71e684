"""Legacy recovery: the log parser, n_heads recovery, the schemas, old JSON files and the MLflow
import. Logs are crafted from the real version-1 grid (the one the legacy runs used)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from models.arch_grid import LEGACY_GRID_VERSION, Architecture, get_architectures_for_budget
from schemas.config import StoreConfig
from schemas.legacy import LegacyExperiment, LegacyTrial
from schemas.tracking import FINAL_METRICS, TAG_LEGACY_KEY, TAG_N_HEADS_SOURCE, TAG_SOURCE, TAG_STATE, TRIAL_PARAMS
from tasks.legacy.grammar import LogParser, parse_fields, parse_number
from tasks.legacy.heads import recover_n_heads
from tasks.legacy.recover import load_experiment, recover_file, write_experiment

from helpers import GRID, failed, finished, header, legacy_runs, line, old_json_trials, start, write_log


def parse(lines: list[str], source: str = "2M_h1.log") -> tuple[list, LogParser]:
    parser = LogParser(source)
    return list(parser.parse(lines)), parser


def reasons(problems) -> str:
    return "\n".join(str(p) for p in problems)


@pytest.fixture
def mixed_log(tmp_path: Path) -> Path:
    """Old and new start lines, a forced extreme, a failure, noise, Optuna's own line, a timeout and an open trial."""
    return write_log(tmp_path / "2M_h1.log", [
        header(),
        start(0, GRID[3]),
        line("Trial 0 forced extreme: min_d_model"),
        "Epoch 1/50: 100%|##########| 412/412 [00:03<00:00]\n",
        finished(0),
        start(1, GRID[10], heads=True),
        failed(1),
        start(2, GRID[20], lr="5e-05"),
        finished(2, auc=0.7212, val_loss=0.61, best_epoch=7),
        line("Trial 2 finished with value: 0.7212 and parameters: {'arch_idx': 20}. Best is trial 2 with value: 0.7212."),
        start(3, GRID[30]),
        line("Timeout after 4.0 h: stopping at 3/50 trials", level="WARNING"),
    ])


# --- numbers and key=value lists -------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [
    ("1,612,801", 1_612_801), ("2,001,217", 2_001_217), ("1e-05", 1e-05), ("5E-4", 5e-4), ("0.3", 0.3),
    ("18", 18), ("-2", -2), ("1,000.5", 1000.5), (".5", 0.5),
])
def test_parse_number_reads_separators_and_scientific_notation(text: str, value: float) -> None:
    assert parse_number(text) == value


@pytest.mark.parametrize("text", ["", "abc", "1,61", "1,612,", "nan", "inf", "1_000", "3 n_layers=4", "0x10"])
def test_parse_number_refuses_what_is_not_a_number(text: str) -> None:
    with pytest.raises(ValueError):
        parse_number(text)


def test_parse_fields_keeps_separators_aliases_order_and_unknown_keys() -> None:
    known, extra, errors = parse_fields("d_ff_ratio=4, params=1,612,801, lr=1e-05, arch_idx=3, seed=7, note=warm start")
    assert known == {"d_ff_ratio": 4, "params": 1_612_801, "learning_rate": 1e-05, "arch_idx": 3}
    assert extra == {"seed": 7, "note": "warm start"}
    assert errors == []


def test_parse_fields_reports_broken_pieces_and_keeps_the_rest() -> None:
    known, _, errors = parse_fields("garbage, arch_idx=3, d_model=64 n_layers=32, params=, dropout=0.1, epochs=2.5")
    assert known == {"arch_idx": 3, "dropout": 0.1}
    assert len(errors) == 4
    assert "'garbage' is not key=value" in errors[0]
    assert "d_model: cannot read '64 n_layers=32'" in errors[1]
    assert "params: cannot read ''" in errors[2]
    assert "epochs: '2.5' is not a whole number" in errors[3]


def test_parse_fields_drops_a_key_given_twice_with_two_values() -> None:
    known, _, errors = parse_fields("arch_idx=3, d_model=64, arch_idx=4")
    assert known == {"d_model": 64}
    assert "arch_idx given twice" in errors[0]


# --- the parser ------------------------------------------------------------------------------


def test_old_and_new_formats_recover_every_trial(mixed_log: Path) -> None:
    result = recover_file(mixed_log)
    [experiment] = result.experiments
    assert (experiment.experiment, experiment.budget, experiment.horizon) == ("2M_h1", "2M", 1)
    assert experiment.grid_version == LEGACY_GRID_VERSION
    assert experiment.planned_trials == 50 and experiment.completed_trials == 2
    trials = {t.number: t for t in experiment.trials}
    assert [t.state for t in trials.values()] == ["complete", "failed", "complete", "incomplete"]

    old = trials[0]  # old format: n_heads recovered from the grid entry
    assert (old.n_heads, old.n_heads_source, old.n_heads_note) == (GRID[3].n_heads, "recovered", None)
    assert (old.d_model, old.n_layers, old.params, old.d_ff, old.d_ff_ratio) == (64, 40, GRID[3].params, GRID[3].d_ff, 4)
    assert old.extreme_type == "min_d_model"
    assert old.learning_rate == 1e-05 and old.train_seconds == 388.1 and old.epochs == 18
    assert old.pred_range == pytest.approx(0.7741 - 0.3112)
    assert (old.start_line, old.end_line) == (2, 5)

    new = trials[1]  # new format: n_heads as logged
    assert (new.n_heads, new.n_heads_source) == (GRID[10].n_heads, "logged")
    assert new.failure_reason == "CUDA out of memory"
    assert trials[2].val_loss == 0.61 and trials[2].best_epoch == 7 and trials[2].learning_rate == 5e-05
    assert trials[3].failure_reason.startswith("never finished")


def test_noise_is_counted_and_only_record_like_lines_are_problems(mixed_log: Path) -> None:
    result = recover_file(mixed_log)
    assert result.noise_lines == 1  # the progress bar; Optuna's own "finished with value" line agrees with the log's
    assert reasons(result.problems) == f"{mixed_log}:11: trial 3 never finished; recorded as incomplete"


def test_timeout_line_marks_the_run_cut_short(mixed_log: Path) -> None:
    [experiment] = recover_file(mixed_log).experiments
    assert experiment.timed_out and experiment.stopped_at == 3 and experiment.timeout_hours == 4.0


def test_restart_repeating_a_trial_number_later_start_wins() -> None:
    trials, parser = parse([
        header(), start(0, GRID[0]), finished(0),
        start(1, GRID[1]),  # the process dies here
        header(),  # ... and the run starts again, repeating trial numbers
        start(0, GRID[5]), finished(0, auc=0.69),
        start(1, GRID[2]), finished(1, auc=0.71),
    ])
    by_key = {(t.number, t.attempt): t for t in trials}
    assert set(by_key) == {(0, 1), (0, 2), (1, 1), (1, 2)}
    first, second = by_key[(0, 1)], by_key[(0, 2)]
    assert first.state == "failed" and "superseded: trial 0 started again at line 6" in first.failure_reason
    assert first.values["val_auc"] == 0.7094  # kept for the record, but the trial counts as failed
    assert second.state == "complete" and second.values["arch_idx"] == 5
    assert by_key[(1, 1)].state == "failed" and by_key[(1, 2)].state == "complete"
    text = reasons(parser.problems)
    assert "2M_h1.log:5: experiment 2M_h1 starts again" in text
    assert "2M_h1.log:4: trial 1 never finished (the run restarted at line 5)" in text
    assert "2M_h1.log:6: trial 0 starts again; the later start wins and the earlier one (line 2) counts as failed" in text


def test_restarted_trials_validate_and_count_once(tmp_path: Path) -> None:
    path = write_log(tmp_path / "2M_h1.log", [header(), start(0, GRID[0]), finished(0), start(0, GRID[1]), finished(0, auc=0.6)])
    [experiment] = recover_file(path).experiments
    assert experiment.completed_trials == 1
    assert [(t.attempt, t.state) for t in experiment.trials] == [(1, "failed"), (2, "complete")]
    assert [t.attempt for t in experiment.latest_attempts()] == [2]


def test_parser_streams_superseded_attempts_before_the_end() -> None:
    consumed = []

    def lines():
        for text in [header(), start(0, GRID[0]), start(0, GRID[1]), *[line(f"noise {i}") for i in range(5)]]:
            consumed.append(text)
            yield text

    stream = LogParser("2M_h1.log").parse(lines())
    first = next(stream)
    assert (first.number, first.attempt, first.state) == (0, 1, "failed")
    assert len(consumed) == 3  # yielded as soon as the restart was read, not at the end


def test_unfinished_trial_is_incomplete_and_reported() -> None:
    trials, parser = parse([header(), start(4, GRID[4])])
    assert trials[0].state == "incomplete"
    assert reasons(parser.problems) == "2M_h1.log:2: trial 4 never finished; recorded as incomplete"


def test_crlf_endings_read_like_lf(tmp_path: Path, mixed_log: Path) -> None:
    (tmp_path / "crlf").mkdir()
    crlf = tmp_path / "crlf" / "2M_h1.log"
    crlf.write_bytes(mixed_log.read_bytes().replace(b"\n", b"\r\n"))
    lf, cr = recover_file(mixed_log), recover_file(crlf)
    assert lf.experiments[0].trials == cr.experiments[0].trials
    assert [p.reason for p in lf.problems] == [p.reason for p in cr.problems]


def test_truncated_last_line_is_skipped_and_reported(tmp_path: Path) -> None:
    text = "".join([header(), start(0, GRID[0]), finished(0), start(1, GRID[1])]) + finished(1)[:60]
    path = tmp_path / "2M_h1.log"
    path.write_text(text)
    result = recover_file(path)
    trials = {t.number: t for t in result.experiments[0].trials}
    assert trials[0].state == "complete" and trials[1].state == "incomplete"
    assert f"{path}:5: last line has no line ending (truncated)" in reasons(result.problems)


def test_truncated_start_line_never_yields_a_cut_value() -> None:
    cut = start(7, GRID[7])[: start(7, GRID[7]).index("params=") + 12]  # params=2,401 of 2,401,089
    trials, parser = parse([header(), cut])
    assert trials == []
    assert "2M_h1.log:2: last line has no line ending" in reasons(parser.problems)


def test_broken_key_value_list_keeps_the_trial_and_reports_the_line() -> None:
    broken = start(5, GRID[5], d_model="64 n_layers=40")
    trials, parser = parse([header(), broken, finished(5), start(6, GRID[6]), finished(6)])
    assert [t.number for t in trials] == [5, 6]
    assert "d_model" not in trials[0].values and trials[0].values["arch_idx"] == 5
    assert "2M_h1.log:2: trial 5: broken key=value list: d_model: cannot read '64 n_layers=40'" in reasons(parser.problems)


def test_broken_list_leaves_n_heads_unrecoverable_not_guessed(tmp_path: Path) -> None:
    path = write_log(tmp_path / "2M_h1.log", [header(), start(5, GRID[5], d_model="6x4"), finished(5)])
    result = recover_file(path)
    [trial] = result.experiments[0].trials
    assert trial.n_heads is None and trial.n_heads_source == "unrecoverable"
    assert trial.n_heads_note == "d_model not logged, so arch_idx 5 of the 2M grid v1 cannot be confirmed"
    assert trial.state == "complete"  # the result itself is fine


def test_record_lines_without_prefix_or_with_garbage_are_reported() -> None:
    trials, parser = parse([
        header(),
        "Trial 9: arch_idx=1, d_model=64\n",  # no timestamp
        line("Trial 9 finished val_auc=0.7"),  # no colon
        line("Trial x: arch_idx=1"),
    ])
    assert trials == []
    text = reasons(parser.problems)
    assert "2M_h1.log:2: looks like a record but has no" in text
    assert "2M_h1.log:3: unreadable record; skipped" in text
    assert parser.noise_lines == 1  # 'Trial x' is not a trial record


def test_finish_without_start_and_double_finish_are_reported() -> None:
    trials, parser = parse([header(), finished(3), start(4, GRID[4]), finished(4), failed(4)])
    assert [t.state for t in trials] == ["complete"]
    text = reasons(parser.problems)
    assert "2M_h1.log:2: trial 3 finished but its start was never read; skipped" in text
    assert "2M_h1.log:5: trial 4 failed again (it already ended at line 4); skipped" in text


def test_finished_without_val_auc_is_failed() -> None:
    trials, parser = parse([header(), start(0, GRID[0]), line("Trial 0 finished: val_auc=n/a, epochs=3")])
    assert trials[0].state == "failed" and "without a readable val_auc" in trials[0].failure_reason
    assert "trial 0: broken key=value list: val_auc: cannot read 'n/a'" in reasons(parser.problems)


def test_forced_extreme_before_start_and_unknown_types() -> None:
    trials, parser = parse([
        header(),
        line("Trial 0 forced extreme: max_n_layers"), start(0, GRID[0]), finished(0),
        start(1, GRID[1]), line("Trial 1 forced extreme: max_width"), finished(1),
    ])
    assert trials[0].extreme_type == "max_n_layers" and trials[1].extreme_type is None
    assert "unknown forced-extreme type 'max_width'" in reasons(parser.problems)


def test_start_lines_of_the_current_study_driver_are_read() -> None:
    from tasks.study.trial import trial_description

    hp = {"learning_rate": 5e-05, "dropout": 0.3, "weight_decay": 0.0}
    text = trial_description(4, GRID[4], hp) + " [forced extreme: max_n_heads]"
    trials, parser = parse([line(text), finished(4)])
    assert parser.problems == []
    assert trials[0].extreme_type == "max_n_heads"
    assert trials[0].values == {"arch_idx": 4, "d_model": GRID[4].d_model, "n_layers": GRID[4].n_layers,
                                "n_heads": GRID[4].n_heads, "params": GRID[4].params, "learning_rate": 5e-05,
                                "dropout": 0.3, "weight_decay": 0.0, "d_ff_ratio": GRID[4].d_ff_ratio} | {
        "val_auc": 0.7094, "pred_min": 0.3112, "pred_max": 0.7741, "recall": 0.5521, "epochs": 18, "train_seconds": 388.1}


def test_unknown_keys_are_kept(tmp_path: Path) -> None:
    path = write_log(tmp_path / "2M_h1.log", [header(), start(0, GRID[0], seed=3, sampler="tpe"), finished(0, auc=0.7, samples_per_s=1200)])
    [trial] = recover_file(path).experiments[0].trials
    assert trial.extra == {"seed": 3, "sampler": "tpe", "samples_per_s": 1200}


def test_file_name_stands_in_for_a_missing_header(tmp_path: Path) -> None:
    named = write_log(tmp_path / "20M_h3.log", [start(0, get_architectures_for_budget("20M", grid_version=1)[2]), finished(0)])
    [experiment] = recover_file(named).experiments
    assert experiment.experiment == "20M_h3" and experiment.trials[0].n_heads_source == "recovered"

    anonymous = write_log(tmp_path / "run.log", [start(0, GRID[0]), finished(0)])
    result = recover_file(anonymous)
    assert result.experiments == []
    assert "cannot tell the budget and horizon of 1 trials" in reasons(result.problems)


def test_unknown_budget_or_horizon_in_the_header_skips_with_a_clear_message(tmp_path: Path) -> None:
    path = write_log(tmp_path / "x.log", [header("3M_h2", budget="3M", horizon="h2"), start(0, GRID[0]), finished(0)])
    result = recover_file(path)
    assert result.experiments == []
    assert (f"{path}:1: experiment 3M_h2: unknown budget '3M'; choose one of smoke, 2M, 20M, 200M, 2B, "
            "smoke-2M, smoke-20M, smoke-200M, smoke-2B; "
            "unknown horizon 'h2'; choose one of h1, h3, h5; its 1 trials skipped") in reasons(result.problems)


def test_one_invalid_trial_does_not_stop_the_others(tmp_path: Path) -> None:
    path = write_log(tmp_path / "2M_h1.log", [header(), start(0, GRID[0]), finished(0, auc=1.3), start(1, GRID[1]), finished(1)])
    result = recover_file(path)
    assert [t.number for t in result.experiments[0].trials] == [1]
    assert f"{path}:2: trial 0: invalid, skipped: val_auc: val_auc=1.3 is outside [0, 1]" in reasons(result.problems)


# --- n_heads recovery ------------------------------------------------------------------------


def _values(arch: Architecture, **override) -> dict:
    return {"arch_idx": arch.arch_idx, "d_model": arch.d_model, "n_layers": arch.n_layers, "params": arch.params,
            "d_ff_ratio": arch.d_ff_ratio} | override


def test_recovery_trusts_an_agreeing_grid_entry() -> None:
    for arch in GRID[::7]:
        lookup = recover_n_heads(_values(arch), "2M", 1)
        assert (lookup.n_heads, lookup.source, lookup.entry) == (arch.n_heads, "recovered", arch)


def test_recovery_refuses_a_grid_entry_that_disagrees_with_the_logged_d_model() -> None:
    arch = GRID[3]
    lookup = recover_n_heads(_values(arch, d_model=32), "2M", 1)
    assert lookup.n_heads is None and lookup.source == "unrecoverable"
    assert lookup.note == "arch_idx 3 of the 2M grid v1 disagrees with the log: d_model 64 (grid) vs 32 (log)"


@pytest.mark.parametrize(("override", "note"), [
    ({"n_layers": 4}, "n_layers 40 (grid) vs 4 (log)"),
    ({"params": 1_612_801}, "params 2,001,217 (grid) vs 1,612,801 (log)"),
    ({"d_ff_ratio": 2}, "d_ff_ratio 4 (grid) vs 2 (log)"),
    ({"arch_idx": 72}, "arch_idx 72 of the 2M grid v1 does not exist (the grid has 72 entries)"),
    ({"arch_idx": None}, "no arch_idx logged"),
    ({"n_layers": None}, "n_layers not logged, so arch_idx 3 of the 2M grid v1 cannot be confirmed"),
])
def test_recovery_refuses_what_cannot_be_confirmed(override: dict, note: str) -> None:
    lookup = recover_n_heads(_values(GRID[3], **override), "2M", 1)
    assert lookup.source == "unrecoverable" and note in lookup.note


def test_params_are_optional_for_recovery() -> None:
    values = _values(GRID[3])
    del values["params"], values["d_ff_ratio"]
    assert recover_n_heads(values, "2M", 1).source == "recovered"


def test_recovery_uses_the_experiments_grid_version() -> None:
    v2 = get_architectures_for_budget("2M", grid_version=2)
    new_entry = v2[len(GRID)]  # exists only in v2 (the L=64 extension)
    assert recover_n_heads(_values(new_entry), "2M", 2).source == "recovered"
    assert "does not exist" in recover_n_heads(_values(new_entry), "2M", 1).note


def test_a_logged_n_heads_is_kept_and_a_disagreeing_grid_entry_noted() -> None:
    lookup = recover_n_heads(_values(GRID[0], n_heads=8), "2M", 1)
    assert (lookup.n_heads, lookup.source) == (8, "logged")
    assert "n_heads 2 (grid) vs 8 (log)" in lookup.note


def test_disagreeing_arch_idx_in_a_log_is_reported_with_its_line(tmp_path: Path) -> None:
    path = write_log(tmp_path / "2M_h1.log", [header(), start(0, GRID[0]), finished(0), start(1, GRID[3], d_model=32), finished(1)])
    result = recover_file(path)
    trials = {t.number: t for t in result.experiments[0].trials}
    assert trials[0].n_heads_source == "recovered" and trials[1].n_heads_source == "unrecoverable"
    assert trials[1].n_heads is None and "d_model 64 (grid) vs 32 (log)" in trials[1].n_heads_note
    assert f"{path}:4: trial 1: n_heads unrecoverable: arch_idx 3" in reasons(result.problems)


# --- schemas ---------------------------------------------------------------------------------


def _trial(**fields) -> dict:
    return {"number": 0, "state": "complete", "val_auc": 0.7, "n_heads": 2, "n_heads_source": "recovered"} | fields


def _experiment(**fields) -> dict:
    return {"experiment": "2M_h1", "budget": "2M", "horizon": 1, "source_log": "2M_h1.log", "source_sha256": "0" * 64,
            "completed_trials": 1, "trials": [_trial()]} | fields


@pytest.mark.parametrize(("fields", "message"), [
    ({"val_auc": 1.2}, "val_auc=1.2 is outside [0, 1]"),
    ({"val_auc": -0.1}, "val_auc=-0.1 is outside [0, 1]"),
    ({"params": -5}, "params=-5 is negative"),
    ({"state": "complete", "val_auc": None}, "complete but has no val_auc"),
    ({"n_heads": None}, "n_heads_source=recovered needs an n_heads value"),
    ({"n_heads": None, "n_heads_source": "unrecoverable"}, "say why in n_heads_note"),
    ({"d_model": 64, "n_heads": 3}, "d_model=64 is not divisible by n_heads=3"),
    ({"extreme_type": "max_width"}, "extreme_type"),
    ({"colour": "red"}, "Extra inputs are not permitted"),
])
def test_invalid_trials_fail_validation_clearly(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]").replace("+", r"\+")):
        LegacyTrial.model_validate(_trial(**fields))


@pytest.mark.parametrize(("fields", "message"), [
    ({"budget": "3M", "experiment": "3M_h1"}, "unknown budget '3M'; choose one of smoke, 2M, 20M, 200M, 2B"),
    ({"horizon": 2, "experiment": "2M_h2"}, "unknown horizon 2; choose one of h1, h3, h5"),
    ({"grid_version": 9}, "unknown grid_version 9"),
    ({"experiment": "2M_h3"}, "does not match budget=2M horizon=h1"),
    ({"completed_trials": 2}, "completed_trials=2 but 1 trials are complete"),
    ({"trials": [_trial(), _trial()]}, r"\(trial number, attempt\) repeated"),
])
def test_invalid_experiments_fail_validation_clearly(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        LegacyExperiment.model_validate(_experiment(**fields))


def test_json_round_trip_through_the_schema(tmp_path: Path, mixed_log: Path) -> None:
    [experiment] = recover_file(mixed_log).experiments
    written = write_experiment(experiment, tmp_path / "out")
    assert written.name == "2M_h1.json"
    assert load_experiment(written) == experiment
    # Reading our own file back as an input changes nothing.
    [again] = recover_file(written).experiments
    assert again == experiment


def test_our_json_file_with_a_typo_is_refused(tmp_path: Path, mixed_log: Path) -> None:
    [experiment] = recover_file(mixed_log).experiments
    document = json.loads(experiment.model_dump_json())
    document["trials"][0]["val_acu"] = 0.5
    path = tmp_path / "2M_h1.json"
    path.write_text(json.dumps(document))
    result = recover_file(path)
    assert result.experiments == []
    assert "trials.0.val_acu: Extra inputs are not permitted" in reasons(result.problems)


# --- older trial JSON files ------------------------------------------------------------------


def test_old_json_is_validated_and_rewritten_with_n_heads(tmp_path: Path) -> None:
    path = tmp_path / "phase6a_2M_h1_threshold_1pct_all_trials.json"
    path.write_text(json.dumps(old_json_trials()))
    result = recover_file(path)
    [experiment] = result.experiments
    assert experiment.experiment == "2M_h1" and experiment.source_log == str(path)
    trials = {t.number: t for t in experiment.trials}
    assert (trials[0].n_heads, trials[0].n_heads_source, trials[0].learning_rate) == (GRID[0].n_heads, "recovered", 1e-4)
    assert trials[0].extra == {"gpu": "A100"}  # Optuna's user_attrs, read as the trial's own keys
    assert trials[1].state == "failed" and trials[1].failure_reason == "failed (no reason recorded)"
    assert trials[1].n_heads == GRID[11].n_heads
    assert trials[2].n_heads_source == "unrecoverable"
    assert reasons(result.problems) == f"{path}: trials[2]: trial 2: n_heads unrecoverable: arch_idx 12 of the 2M grid v1 " \
        f"disagrees with the log: d_model {GRID[12].d_model} (grid) vs 96 (log); unverified: imported with its metrics, " \
        "never selected as best"
    assert not trials[2].verified and trials[0].verified and trials[1].verified
    rewritten = load_experiment(write_experiment(experiment, tmp_path / "out"))
    assert rewritten.trials[0].n_heads == GRID[0].n_heads


def test_old_json_object_with_metadata_and_repeated_numbers(tmp_path: Path) -> None:
    trials = old_json_trials()[:1] * 2
    path = tmp_path / "whatever.json"
    path.write_text(json.dumps({"experiment": "2M_h5", "n_trials": 50, "trials": trials}))
    result = recover_file(path)
    [experiment] = result.experiments
    assert experiment.experiment == "2M_h5" and experiment.planned_trials == 50
    assert [(t.attempt, t.state) for t in experiment.trials] == [(1, "failed"), (2, "complete")]
    assert "trial 0 appears 2 times" in reasons(result.problems)


def test_unreadable_json_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "2M_h1.json"
    path.write_text('{"trials": [\n{"trial_number": 0,\n')
    result = recover_file(path)
    assert result.experiments == [] and "not readable JSON" in reasons(result.problems)


# --- MLflow import ---------------------------------------------------------------------------


def test_import_creates_one_run_per_trial_with_the_trial_contract(stores: StoreConfig, mixed_log: Path) -> None:
    from tasks.legacy.importer import import_experiment
    from tasks.tracking.runs import search_all_runs

    [experiment] = recover_file(mixed_log).experiments
    counts = import_experiment(experiment, stores, mixed_log)
    assert (counts.created, counts.unchanged, counts.replaced) == (4, 0, 0)
    client, runs = legacy_runs(stores)
    by_name = {run.info.run_name: run for run in runs}
    assert set(by_name) == {"2M_h1 #0", "2M_h1 #1", "2M_h1 #2", "2M_h1 #3"}
    # every legacy trial is a child of the one study run the import made for the experiment
    [study_run] = search_all_runs(client, [runs[0].info.experiment_id], "tags.run_kind = 'study'")
    assert study_run.data.tags["source"] == "legacy" and study_run.data.tags["study"] == "2M_h1"
    assert {run.data.tags["mlflow.parentRunId"] for run in runs} == {study_run.info.run_id}

    done = by_name["2M_h1 #0"]
    assert done.info.status == "FINISHED"
    assert set(done.data.params) <= set(TRIAL_PARAMS)
    assert set(TRIAL_PARAMS) - set(done.data.params) == {"batch_size", "seed"}
    assert done.data.params["n_heads"] == str(GRID[3].n_heads) and done.data.params["learning_rate"] == "1e-05"
    assert done.data.tags[TAG_SOURCE] == "legacy" and done.data.tags[TAG_N_HEADS_SOURCE] == "recovered"
    assert done.data.tags[TAG_LEGACY_KEY] == "2M_h1#0@1" and done.data.tags["extreme_type"] == "min_d_model"
    assert set(done.data.metrics) <= set(FINAL_METRICS)
    assert done.data.metrics["val_auc"] == 0.7094 and done.data.metrics["train_seconds"] == 388.1
    assert done.data.metrics["pred_range"] == pytest.approx(0.4629)
    assert done.info.start_time == 1762092192001  # the log's timestamp, read as UTC

    oom = by_name["2M_h1 #1"]
    assert oom.info.status == "FAILED" and oom.data.tags["failure_reason"] == "CUDA out of memory"
    assert oom.data.tags[TAG_N_HEADS_SOURCE] == "logged" and oom.data.metrics == {}
    assert by_name["2M_h1 #3"].data.tags[TAG_STATE] == "incomplete"

    artifacts = {a.path for a in client.list_artifacts(done.info.run_id, "legacy")}
    assert artifacts == {"legacy/2M_h1.log", "legacy/trial.json"}
    local = Path(client.download_artifacts(done.info.run_id, "legacy/2M_h1.log", str(stores.root / "dl")))
    assert local.read_bytes() == mixed_log.read_bytes()


def test_unrecoverable_n_heads_is_absent_from_params(stores: StoreConfig, tmp_path: Path) -> None:
    from tasks.legacy.importer import import_experiment

    path = write_log(tmp_path / "2M_h1.log", [header(), start(0, GRID[3], d_model=32), finished(0)])
    [experiment] = recover_file(path).experiments
    import_experiment(experiment, stores, path)
    _, [run] = legacy_runs(stores)
    assert "n_heads" not in run.data.params and run.data.params["d_model"] == "32"
    assert run.data.tags[TAG_N_HEADS_SOURCE] == "unrecoverable" and "d_model 64 (grid)" in run.data.tags["n_heads_note"]


def test_import_twice_creates_no_duplicates_and_replaces_changed_trials(stores: StoreConfig, tmp_path: Path) -> None:
    from tasks.legacy.importer import import_experiment

    lines = [header(), start(0, GRID[0]), finished(0), start(1, GRID[1])]
    path = write_log(tmp_path / "2M_h1.log", lines)
    [experiment] = recover_file(path).experiments
    import_experiment(experiment, stores, path)
    again = import_experiment(experiment, stores, path)
    assert (again.created, again.unchanged, again.replaced) == (0, 2, 0)
    assert len(legacy_runs(stores)[1]) == 2

    # The log grows: trial 1 finishes and trial 0 is restarted; the changed runs are replaced.
    path = write_log(path, [*lines, finished(1), start(0, GRID[4]), finished(0, auc=0.72)])
    [grown] = recover_file(path).experiments
    counts = import_experiment(grown, stores, path)
    assert (counts.created, counts.unchanged, counts.replaced) == (1, 0, 2)
    _, runs = legacy_runs(stores)
    assert sorted(r.data.tags[TAG_LEGACY_KEY] for r in runs) == ["2M_h1#0@1", "2M_h1#0@2", "2M_h1#1@1"]
    names = {r.data.tags[TAG_LEGACY_KEY]: (r.info.run_name, r.info.status) for r in runs}
    assert names["2M_h1#0@1"] == ("2M_h1 #0 (attempt 1, superseded)", "FAILED")
    assert names["2M_h1#0@2"] == ("2M_h1 #0", "FINISHED")


def test_import_from_rewritten_json_matches_import_from_log(stores: StoreConfig, tmp_path: Path, mixed_log: Path) -> None:
    from tasks.legacy.importer import import_experiment

    [from_log] = recover_file(mixed_log).experiments
    import_experiment(from_log, stores, mixed_log)
    [from_json] = recover_file(write_experiment(from_log, tmp_path / "out")).experiments
    counts = import_experiment(from_json, stores, mixed_log)
    assert (counts.created, counts.unchanged) == (0, 4)


def test_a_half_made_run_is_replaced(stores: StoreConfig, tmp_path: Path) -> None:
    from tasks.legacy.importer import import_experiment
    from tasks.tracking.runs import get_or_create_experiment, mlflow_client

    path = write_log(tmp_path / "2M_h1.log", [header(), start(0, GRID[0]), finished(0)])
    [experiment] = recover_file(path).experiments
    client = mlflow_client(stores)
    experiment_id = get_or_create_experiment(client, "2M_h1", stores.artifact_root)
    client.create_run(experiment_id, tags={"run_kind": "trial", TAG_SOURCE: "legacy", TAG_LEGACY_KEY: "2M_h1#0@1"})  # a crash left this
    counts = import_experiment(experiment, stores, path)
    assert (counts.created, counts.replaced) == (0, 1)
    _, [run] = legacy_runs(stores)
    assert run.info.status == "FINISHED"


def test_a_trial_one_source_contradicts_stays_unverified_when_sources_are_reconciled(tmp_path: Path) -> None:
    from tasks.legacy.reconcile import reconcile

    log = write_log(tmp_path / "2M_h1.log", [header(), start(0, GRID[0], n_layers=40), finished(0)])
    old = tmp_path / "2M_h1.json"  # the same trial without n_layers: nothing there to contradict
    old.write_text(json.dumps([{"number": 0, "arch_idx": 0, "d_model": GRID[0].d_model, "val_auc": 0.7094, "state": "complete"}]))
    from_json, from_log = recover_file(old), recover_file(log)
    assert from_json.experiments[0].trials[0].verified and not from_log.experiments[0].trials[0].verified
    [(merged, owner)] = reconcile([from_log, from_json])
    [trial] = merged.trials
    assert owner is from_json and not trial.verified
    assert trial.unverified_reason.endswith("n_layers 32 (grid) vs 40 (log) (in 2M_h1.log)")
    assert not recover_file(write_experiment(merged, tmp_path / "out")).experiments[0].trials[0].verified  # read again


def test_verification_is_worked_out_again_never_read_from_a_file(tmp_path: Path) -> None:
    path = write_log(tmp_path / "2M_h1.log", [header(), start(0, GRID[0]), finished(0)])
    [experiment] = recover_file(path).experiments
    document = json.loads(write_experiment(experiment, tmp_path / "out").read_text())
    document["trials"][0] |= {"verified": False, "unverified_reason": "edited by hand"}
    edited = tmp_path / "out" / "2M_h1.json"
    edited.write_text(json.dumps(document))
    result = recover_file(edited)
    [trial] = result.experiments[0].trials
    assert trial.verified and trial.unverified_reason is None and trial.extra == {}
    assert "keys not understood" not in reasons(result.problems)
