"""Legacy recovery from what the researcher really has (issue 27): their own grid (`--grid` as a
JSON file or `module:function`), logs that Optuna itself wrote beside the seed's start lines, their
Optuna storage (SQLite, journal) and a trials_dataframe() CSV, FrozenTrial-shaped JSON, and one
study from two sources reconciled. Every Optuna file here is written by a real Optuna study."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from flows.cli import app
from tasks.legacy.grids import GridError, load_grid
from tasks.legacy.optuna_sources import StorageError
from tasks.legacy.reconcile import reconcile
from tasks.legacy.recover import recover_file, recover_storage, summarize

from helpers import line, write_log

SEED_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


def their_grid() -> list[dict]:
    """A grid unlike ours: d_ff = 3 d_model, heads of 16, and their model's own parameter count."""
    shapes = [(d, n) for d in (48, 80, 112) for n in (3, 5, 7, 9)]
    return [{"arch_idx": i, "d_model": d, "n_layers": n, "n_heads": d // 16, "d_ff": 3 * d, "params": 12 * n * d * d + 7 * d + 1}
            for i, (d, n) in enumerate(shapes)]


THEIRS = their_grid()


@pytest.fixture
def grid_file(tmp_path: Path) -> Path:
    path = tmp_path / "their_grid.json"
    path.write_text(json.dumps({"2M": THEIRS}))
    return path


@pytest.fixture
def grid_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The seed's own function, in a module of the current directory: entries without arch_idx (their position)."""
    (tmp_path / "seed_grid.py").write_text(
        "def get_architectures_for_budget(budget, num_features=25):\n"
        "    if budget != '2M':\n"
        "        raise ValueError(f'no grid for {budget}')\n"
        f"    return [{{k: v for k, v in a.items() if k != 'arch_idx'}} for a in {THEIRS!r}]\n"
    )
    monkeypatch.chdir(tmp_path)
    return "seed_grid:get_architectures_for_budget"


def seed_start(number: int, arch: dict, lr: object = "1e-05", dropout: object = 0.1) -> str:
    """The seed's old start line: no n_heads."""
    return (f"Trial {number}: arch_idx={arch['arch_idx']}, d_model={arch['d_model']}, n_layers={arch['n_layers']}, "
            f"params={arch['params']:,}, lr={lr}, dropout={dropout}, weight_decay=1e-05, d_ff_ratio=3")


@pytest.fixture
def their_log(tmp_path: Path) -> Path:
    lines = []
    for n in range(12):
        lines += [line(seed_start(n, THEIRS[n])), line(f"Trial {n} finished: val_auc=0.70{n:02d}, epochs=9")]
    return write_log(tmp_path / "2M_h1.log", lines)


# --- their grid -------------------------------------------------------------------------------


def test_their_grid_as_a_file_recovers_n_heads_for_every_trial(their_log: Path, grid_file: Path) -> None:
    without = recover_file(their_log).experiments[0]
    assert {t.n_heads_source for t in without.trials} == {"unrecoverable"}  # our grid disagrees, nothing invented
    assert all(t.n_heads is None for t in without.trials)

    [experiment] = recover_file(their_log, grid=load_grid(str(grid_file))).experiments
    assert [(t.n_heads, t.n_heads_source) for t in experiment.trials] == [(a["n_heads"], "recovered") for a in THEIRS]
    assert [t.d_ff for t in experiment.trials] == [a["d_ff"] for a in THEIRS]
    assert experiment.grid_source == str(grid_file) and len(experiment.grid_sha256) == 64


def test_their_grid_as_a_callable_recovers_the_same(their_log: Path, grid_file: Path, grid_module: str) -> None:
    by_file = recover_file(their_log, grid=load_grid(str(grid_file))).experiments[0]
    by_function = recover_file(their_log, grid=load_grid(grid_module)).experiments[0]
    assert by_function.trials == by_file.trials
    assert by_function.grid_source == grid_module


def test_without_their_params_our_count_of_their_shape_is_checked_and_the_fix_is_named(tmp_path: Path, their_log: Path) -> None:
    path = tmp_path / "no_params.json"
    path.write_text(json.dumps({"2M": [{k: v for k, v in a.items() if k != "params"} for a in THEIRS]}))
    result = recover_file(their_log, grid=load_grid(str(path)))
    assert {t.n_heads_source for t in result.experiments[0].trials} == {"unrecoverable"}
    assert "our count of the grid's shape; give the grid's own params" in "\n".join(map(str, result.problems))


def test_malformed_grid_entries_are_reported_per_trial(tmp_path: Path, their_log: Path) -> None:
    entries = [dict(a) for a in THEIRS[:10]]
    del entries[1]["n_heads"]                       # a missing key
    entries[3]["arch_idx"] = 2                      # a duplicate arch_idx (2 and 2; 3 is then absent)
    entries[5]["n_heads"] = 7                       # d_model not divisible
    path = tmp_path / "broken.json"
    path.write_text(json.dumps({"2M": entries}))
    result = recover_file(their_log, grid=load_grid(str(path)))
    trials = {t.number: t for t in result.experiments[0].trials}
    assert trials[0].n_heads_source == "recovered"
    assert "lacks a positive whole n_heads (no n_heads)" in trials[1].n_heads_note
    assert "arch_idx 2 appears twice" in trials[2].n_heads_note
    assert "arch_idx 3 of the 2M grid of" in trials[3].n_heads_note and "does not exist" in trials[3].n_heads_note
    assert "not divisible by n_heads=7" in trials[5].n_heads_note
    assert "does not exist (the grid has 6 usable entries, arch_idx 0..9)" in trials[11].n_heads_note  # beyond the grid
    text = "\n".join(map(str, result.problems))
    for number in (1, 2, 3, 5, 10, 11):
        assert f"trial {number}: n_heads unrecoverable" in text


def test_a_callable_that_has_no_grid_for_the_budget_is_a_reason_per_trial(tmp_path: Path, grid_module: str) -> None:
    path = write_log(tmp_path / "20M_h1.log", [line(seed_start(0, THEIRS[0])), line("Trial 0 finished: val_auc=0.7")])
    [trial] = recover_file(path, grid=load_grid(grid_module)).experiments[0].trials
    assert trial.n_heads_note == f"{grid_module} gave no 20M grid: ValueError: no grid for 20M"


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected an object of entries per budget"),
    (None, "no such file, and not a Python callable"),
    ("nosuchmodule_xyz:grid", "cannot import nosuchmodule_xyz"),
    ("json:no_such_function", "json has no function 'no_such_function'"),
])
def test_a_grid_spec_that_cannot_be_read_is_refused(tmp_path: Path, content: str | None, message: str) -> None:
    spec = content if content and ":" in content and not content.startswith("{") else str(tmp_path / "grid.json")
    if content and spec.endswith("grid.json"):
        Path(spec).write_text(content)
    with pytest.raises(GridError, match=message):
        load_grid(spec)


# --- a log Optuna wrote -----------------------------------------------------------------------


def run_their_study(log: Path | None, storage: object = None, name: str = "2M_h1", n_trials: int = 6) -> optuna.Study:
    """A real study as the seed ran it: its own start line, Optuna's own lines, one failure and one prune."""
    handlers = []
    if log is not None:
        seed, optuna_logger = logging.getLogger("hpo.seed"), logging.getLogger("optuna")
        seed_handler = logging.FileHandler(log)
        seed_handler.setFormatter(logging.Formatter(SEED_FORMAT))
        optuna_handler = logging.FileHandler(log)
        optuna_handler.setFormatter(optuna.logging.create_default_formatter())
        seed.addHandler(seed_handler), seed.setLevel(logging.INFO), optuna_logger.addHandler(optuna_handler)
        handlers = [(seed, seed_handler), (optuna_logger, optuna_handler)]
    optuna.logging.set_verbosity(optuna.logging.INFO)

    def objective(trial: optuna.Trial) -> float:
        arch_idx = trial.suggest_int("arch_idx", 0, len(THEIRS) - 1)
        lr = trial.suggest_float("lr", 1e-5, 1e-3, log=True)
        dropout = trial.suggest_float("dropout", 0.0, 0.3)
        arch = THEIRS[arch_idx]
        for key in ("d_model", "n_layers", "params"):
            trial.set_user_attr(key, arch[key])
        logging.getLogger("hpo.seed").info(seed_start(trial.number, arch, lr, dropout).replace(", weight_decay=1e-05, d_ff_ratio=3", ""))
        if trial.number == 2:
            raise RuntimeError("CUDA out of memory")
        if trial.number == 4:
            raise optuna.TrialPruned("pruned at epoch 3")
        return 0.6 + 0.01 * trial.number

    study = optuna.create_study(study_name=name, storage=storage, direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    try:
        study.optimize(objective, n_trials=n_trials, catch=(RuntimeError,))
    finally:
        for logger, handler in handlers:
            logger.removeHandler(handler)
            handler.close()
    return study


def test_a_log_optuna_wrote_recovers_every_trial_value_and_state(tmp_path: Path, grid_file: Path) -> None:
    log = tmp_path / "2M_h1.log"
    study = run_their_study(log)
    text = log.read_text()
    assert "[I " in text and "finished with value: 0.6 and parameters: {'arch_idx'" in text and "Traceback" in text
    result = recover_file(log, grid=load_grid(str(grid_file)))
    [experiment] = result.experiments
    trials = {t.number: t for t in experiment.trials}
    states = {t.number: t.state.name.lower().replace("fail", "failed") for t in study.trials}
    assert {n: t.state for n, t in trials.items()} == states
    assert {n: t.val_auc for n, t in trials.items() if t.state == "complete"} == {
        t.number: t.value for t in study.trials if t.value is not None}
    assert trials[2].failure_reason == "RuntimeError('CUDA out of memory')"
    assert trials[4].failure_reason == "pruned by Optuna: pruned at epoch 3"
    for t in study.trials:  # n_heads from their grid; hyperparameters from Optuna's dict where the line had them too
        assert trials[t.number].n_heads == THEIRS[t.params["arch_idx"]]["n_heads"]
        assert trials[t.number].dropout == pytest.approx(t.params["dropout"])
    assert result.problems == []


def test_optuna_lines_alone_stand_for_the_trial_and_join_by_number() -> None:
    from tasks.legacy.grammar import LogParser

    optuna_line = "[I 2025-11-02 14:09:40,117] Trial {n} finished with value: {v} and parameters: {{'arch_idx': 3, 'lr': 1e-05, 'n_heads': 4}}. Best is trial 0 with value: 0.7094."
    lines = [
        "\x1b[32m" + optuna_line.format(n=0, v=0.7094) + "\x1b[0m\n",            # coloured, as on a terminal
        line("Trial 1: arch_idx=3, d_model=64, n_layers=40"),
        optuna_line.format(n=1, v=0.69) + "\n",
        "[I 2025-11-02 14:10:00,001] Trial 2 finished with values: [0.71, 0.2] and parameters: {'arch_idx': 5}.\n",
        "[W 2025-11-02 14:11:00,001] Trial 3 failed with parameters: {'arch_idx': 1} because of the following error: ValueError('x').\n",
        "Traceback (most recent call last):\n",
        "[W 2025-11-02 14:11:00,002] Trial 3 failed with value None.\n",
    ]
    parser = LogParser("2M_h1.log", default_experiment="2M_h1")
    trials = {t.number: t for t in parser.parse(lines)}
    assert (trials[0].state, trials[0].values) == ("complete", {"arch_idx": 3, "learning_rate": 1e-05, "n_heads": 4, "val_auc": 0.7094})
    assert trials[1].start_line == 2 and trials[1].values["d_model"] == 64 and trials[1].values["val_auc"] == 0.69
    assert trials[2].values["val_auc"] == 0.71 and trials[2].extra == {"value_0": 0.71, "value_1": 0.2}
    assert (trials[3].state, trials[3].failure_reason) == ("failed", "ValueError('x')")
    assert [p.reason for p in parser.problems] == [
        "trial 2: Optuna logged 2 objective values; the first (0.71) is read as val_auc, all are kept as value_* in extra"]


def test_optuna_and_the_seed_disagreeing_is_reported_and_the_seed_wins() -> None:
    from tasks.legacy.grammar import LogParser

    lines = [line("Trial 0: arch_idx=3, d_model=64, n_layers=40, lr=1e-05"), line("Trial 0 finished: val_auc=0.7212"),
             "[I 2025-11-02 14:09:40,117] Trial 0 finished with value: 0.71 and parameters: {'arch_idx': 4, 'lr': 1e-05}.\n"]
    parser = LogParser("2M_h1.log", default_experiment="2M_h1")
    [trial] = parser.parse(lines)
    assert trial.values["val_auc"] == 0.7212 and trial.values["arch_idx"] == 3
    reasons = [p.reason for p in parser.problems]
    assert reasons == ["trial 0: Optuna's arch_idx=4 contradicts 3 at its start; kept the start's",
                       "trial 0: Optuna's value 0.71 differs from val_auc=0.7212 at line 2; kept the log's"]


# --- their storage, a trials_dataframe() CSV, FrozenTrial JSON ----------------------------------


@pytest.fixture
def their_sqlite(tmp_path: Path) -> tuple[Path, optuna.Study]:
    path = tmp_path / "their_study.db"
    study = run_their_study(None, storage=f"sqlite:///{path}")
    return path, study


def _content(experiment) -> dict:
    return experiment.model_dump(exclude={"source_log", "source_sha256"})


def test_sqlite_storage_and_its_trials_csv_give_the_same_json(tmp_path: Path, their_sqlite, grid_file: Path) -> None:
    path, study = their_sqlite
    before = path.read_bytes()
    grid = load_grid(str(grid_file))
    [from_storage] = recover_storage(str(path), grid=grid)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["their_grid.json", "their_study.db"]
    csv_path = tmp_path / "2M_h1_trials.csv"
    study.trials_dataframe().to_csv(csv_path)
    from_csv = recover_file(csv_path, grid=grid)
    [a], [b] = from_storage.experiments, from_csv.experiments
    assert _content(a) == _content(b)
    assert from_storage.problems == from_csv.problems == []
    trials = {t.number: t for t in a.trials}
    assert a.source_log == f"{path}#2M_h1" and a.completed_trials == 4
    assert {n: t.state for n, t in trials.items()} == {0: "complete", 1: "complete", 2: "failed", 3: "complete", 4: "pruned", 5: "complete"}
    assert trials[2].failure_reason == "failed (no reason recorded)"  # Optuna's storage keeps none; its log line does
    assert all(t.n_heads_source == "recovered" for t in a.trials)
    assert trials[0].started_at == study.trials[0].datetime_start


def test_a_journal_storage_and_an_rdb_url_are_read_too(tmp_path: Path, grid_file: Path) -> None:
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    journal = tmp_path / "journal.log"
    study = run_their_study(None, storage=JournalStorage(JournalFileBackend(str(journal))), name="phase6a_2M_h3")
    [from_journal] = recover_storage(str(journal), grid=load_grid(str(grid_file)))
    [experiment] = from_journal.experiments
    assert experiment.experiment == "2M_h3"
    assert [t.val_auc for t in experiment.trials] == [t.value for t in study.trials]

    db = tmp_path / "two.db"
    run_their_study(None, storage=f"sqlite:///{db}", name="2M_h1", n_trials=2)
    run_their_study(None, storage=f"sqlite:///{db}", name="2M_h5", n_trials=3)
    results = recover_storage(f"sqlite:///{db}", studies=["2M_h5"])
    assert [(r.source, len(r.experiments[0].trials)) for r in results] == [(f"sqlite:///{db}#2M_h5", 3)]


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p / "missing.db", "no such file"),
    (lambda p: (p / "notes.txt").write_text("hello\n") and p / "notes.txt", "neither an SQLite file nor an Optuna journal"),
])
def test_a_storage_that_cannot_be_read_is_refused(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(StorageError, match=message):
        recover_storage(str(make(tmp_path)))


def test_a_study_not_in_the_storage_names_the_ones_it_holds(their_sqlite) -> None:
    path, _ = their_sqlite
    with pytest.raises(StorageError, match="--study 2M_h9: not in .* it holds: 2M_h1"):
        recover_storage(str(path), studies=["2M_h9"])


def test_frozen_trial_json_is_read_and_keys_not_understood_are_reported(tmp_path: Path, their_sqlite, grid_file: Path) -> None:
    _, study = their_sqlite
    entries = [{"number": t.number, "trial_id": t._trial_id + 100, "state": str(t.state), "value": t.value,
                "params": t.params, "user_attrs": t.user_attrs, "datetime_start": t.datetime_start.isoformat(),
                "datetime_complete": t.datetime_complete.isoformat() if t.datetime_complete else None,
                "distributions": {}, "host": "gpu-03"} for t in study.trials]
    path = tmp_path / "2M_h1_frozen.json"
    path.write_text(json.dumps(entries))
    result = recover_file(path, grid=load_grid(str(grid_file)))
    [experiment] = result.experiments
    assert [t.number for t in experiment.trials] == list(range(6))
    assert [t.val_auc for t in experiment.trials] == [t.value for t in study.trials]
    assert experiment.trials[4].state == "pruned" and experiment.trials[0].extra == {"host": "gpu-03"}
    assert [p.reason for p in result.problems] == ["keys not understood, kept in each trial's extra: host"]


# --- one study from two sources ---------------------------------------------------------------


def test_a_log_and_the_storage_of_one_study_are_reconciled_trial_by_trial(tmp_path: Path, grid_file: Path) -> None:
    log = tmp_path / "2M_h1.log"
    db = tmp_path / "study.db"
    study = run_their_study(log, storage=f"sqlite:///{db}")
    text = log.read_text().replace("finished with value: 0.61 ", "finished with value: 0.62 ")  # one disagreement
    log.write_text(text)
    grid = load_grid(str(grid_file))
    recovered = [recover_file(log, grid=grid), *recover_storage(str(db), grid=grid)]
    [(merged, owner)] = reconcile(recovered)
    assert owner.kind == "optuna-storage" and merged.reconciled_with == [str(log)]
    assert [t.val_auc for t in merged.trials] == [t.value for t in study.trials]  # the storage wins
    assert [str(p) for p in owner.problems] == [
        f"{db}#2M_h1: 2M_h1: trial 1: val_auc 0.61 (study.db#2M_h1) vs 0.62 (2M_h1.log); kept study.db#2M_h1's"]
    assert merged.trials[2].failure_reason == "RuntimeError('CUDA out of memory')"  # the log's, where the storage has none
    assert merged.trials[0].start_line is None  # line numbers of the log are not the storage's
    assert recovered[0].experiments == []  # one row per experiment in the summary
    assert [row.experiment for row in summarize(recovered).experiments] == ["2M_h1"]


# --- the command line -------------------------------------------------------------------------


def _hpo(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.mark.usefixtures("prefect_harness")
def test_cli_reads_a_storage_with_their_grid_and_imports_idempotently(tmp_path: Path, stores, their_sqlite, grid_file: Path) -> None:
    path, _ = their_sqlite
    args = ("recover", "--optuna-storage", str(path), "--grid", str(grid_file), "--out", str(tmp_path / "out"),
            "--import-mlflow", "--root", str(stores.root))
    first = _hpo(*args)
    assert first.exit_code == 0, first.output
    assert "6/0/0" in first.output
    written = json.loads((tmp_path / "out" / "2M_h1.json").read_text())
    assert written["grid_source"] == str(grid_file) and {t["n_heads_source"] for t in written["trials"]} == {"recovered"}
    again = _hpo(*args)
    assert again.exit_code == 0 and "0/6/0" in again.output
    from helpers import legacy_runs

    _, runs = legacy_runs(stores)
    assert len(runs) == 6 and {r.data.tags["legacy_grid_source"] for r in runs} == {str(grid_file)}


@pytest.mark.parametrize(("extra", "message"), [
    (("--grid", "missing.json"), "no such file, and not a Python callable"),
    (("--optuna-storage", "missing.db"), "no such file; give an SQLite file"),
    (("--study", "2M_h1"), "--study names a study of an Optuna storage"),
])
def test_cli_refuses_unreadable_grid_or_storage_before_writing(tmp_path: Path, their_log: Path, extra, message: str) -> None:
    result = _hpo("recover", str(their_log), "--out", str(tmp_path / "out"), *extra)
    assert result.exit_code == 2
    assert message in " ".join(re.sub("[│╭╮╰╯─]", " ", result.output).split())  # the error as rich boxed it
    assert not (tmp_path / "out").exists()
