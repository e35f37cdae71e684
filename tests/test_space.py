"""The search space (tasks/study/space.py) and the counting rule with pruned trials, on Optuna
alone: no trial process, no MLflow, no dataset."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from models.arch_grid import forced_extremes, get_architectures_for_budget
from schemas.config import HpoConfig, SearchSpace, StoreConfig, StudyConfig, StudySpec
from tasks.study import space
from tasks.study.loop import NoClaim, _is_surplus, _LoopState, next_trial
from tasks.study.store import StudyHandle, optuna_storage
from tasks.study.trial import Claim

SEARCH = SearchSpace()


def _objective(arch, hp) -> float:
    """A smooth made-up surface: narrow and shallow is better, lr 1e-4 is best."""
    return 0.7 - 0.001 * arch.d_model / 16 - 0.002 * arch.n_layers + (0.01 if hp["learning_rate"] == 1e-4 else 0.0)


@pytest.mark.parametrize("budget", ["2M", "20M", "smoke"])
def test_factored_draws_are_grid_entries_and_record_their_dimensions(budget: str):
    grid = get_architectures_for_budget(budget)
    study = optuna.create_study(direction="maximize", sampler=space.make_sampler("factored", grid, seed=1))
    space.enqueue_extremes(study, "factored", grid, SEARCH)
    seen = set()
    for _ in range(24):  # the 6 extremes, 4 random start-up trials, then TPE
        trial = study.ask()
        arch, hp = space.suggest(trial, "factored", grid, SEARCH)
        assert arch in grid
        assert {d: trial.params[d] for d in ("d_model", "n_layers", "n_heads")} == {
            "d_model": arch.d_model, "n_layers": arch.n_layers, "n_heads": arch.n_heads}
        assert space.trial_architecture("factored", grid, trial.params) == arch
        seen.add(arch.arch_idx)
        study.tell(trial, _objective(arch, hp))
    assert len(seen) > 6, "the sampler explores beyond the extremes"


def test_tpe_scores_in_band_candidates(monkeypatch):
    """TPE's pick is already a grid entry: the candidates were moved in band before scoring, so
    the last projection in sample_relative has nothing left to move."""
    grid = get_architectures_for_budget("2M")
    moved = []
    nearest = space.FactoredGrid.nearest

    def spy(self, params):
        arch = nearest(self, params)
        moved.append(any(params[d] != getattr(arch, d) for d in self.free))
        return arch

    monkeypatch.setattr(space.FactoredGrid, "nearest", spy)
    study = optuna.create_study(direction="maximize", sampler=space.make_sampler("factored", grid, seed=3))
    for _ in range(space.FACTORED_STARTUP_TRIALS + 8):
        trial = study.ask()
        arch, hp = space.suggest(trial, "factored", grid, SEARCH)
        study.tell(trial, _objective(arch, hp))
    assert len(moved) == 8 and not any(moved)


def test_extremes_are_the_same_architectures_in_both_spaces():
    grid = get_architectures_for_budget("20M")
    for kind in space.ARCH_SPACES:
        study = optuna.create_study(direction="maximize", sampler=space.make_sampler(kind, grid, seed=0))
        space.enqueue_extremes(study, kind, grid, SEARCH)
        for extreme, expected in forced_extremes(grid):
            trial = study.ask()
            arch, hp = space.suggest(trial, kind, grid, SEARCH)
            assert (trial.user_attrs["extreme_type"], arch, hp) == (extreme, expected, SEARCH.central())
            study.tell(trial, 0.7)


def test_a_study_keeps_its_space_and_old_studies_are_categorical():
    assert space.study_arch_space({"arch_space": "factored"}) == "factored"
    assert space.study_arch_space({}) == "categorical"  # made before the choice existed
    with pytest.raises(ValueError, match="arch_space='nested'.*--fresh"):
        space.study_arch_space({"arch_space": "nested"})
    with pytest.raises(LookupError, match="not in this grid"):
        space.FactoredGrid(get_architectures_for_budget("2M")).find({"d_model": 160, "n_layers": 64, "n_heads": 2, "d_ff_ratio": 4})


# ----------------------------------------------------------------------------- counting with pruned trials


def _handle(tmp_path: Path, n_trials: int) -> StudyHandle:
    """A study handle on a SQLite storage, without MLflow or data (next_trial needs neither)."""
    config = HpoConfig(study=StudyConfig(n_trials=n_trials, pruner="median"), stores=StoreConfig(root=tmp_path))
    storage = optuna_storage(config.stores, config)
    grid = get_architectures_for_budget("smoke")
    study = optuna.create_study(study_name="smoke_h1", storage=storage, direction="maximize",
                                sampler=space.make_sampler("factored", grid, seed=0))
    return StudyHandle(name="smoke_h1", version=1, spec=StudySpec.parse("smoke_h1"), config=config, study=study,
                       storage=storage, grid=grid, grid_version=2, arch_space="factored", pruner="median",
                       client=None, experiment_id="", parent_run_id="", dataset_path=tmp_path)  # fmt: skip


def _add(handle: StudyHandle, state: TrialState, value: float | None = None) -> None:
    distributions = {"dropout": CategoricalDistribution(list(SEARCH.dropouts)), "x": FloatDistribution(0, 1)}
    handle.study.add_trial(create_trial(state=state, value=value, params={"dropout": 0.1, "x": 0.5},
                                        distributions=distributions, intermediate_values={1: 0.6}))


def test_pruned_trials_count_towards_n_trials(tmp_path: Path):
    handle = _handle(tmp_path, n_trials=5)
    for _ in range(3):
        _add(handle, TrialState.COMPLETE, 0.7)
    _add(handle, TrialState.PRUNED)
    _add(handle, TrialState.FAIL)
    assert handle.counts().items() >= {"complete": 3, "pruned": 1, "done": 4, "failed": 1}.items()
    loop = _LoopState(started=0.0)
    claimed = next_trial(handle, loop, block=False)  # 4 done: one slot left
    assert isinstance(claimed, Claim)
    assert next_trial(handle, loop, block=False) is NoClaim.WAIT  # 4 done + 1 running = n_trials
    handle.study.tell(claimed.number, state=TrialState.PRUNED)
    assert next_trial(handle, loop, block=False) is NoClaim.DONE  # 3 complete + 2 pruned: done


def test_a_claim_beyond_n_trials_counting_pruned_is_surplus(tmp_path: Path):
    handle = _handle(tmp_path, n_trials=3)
    _add(handle, TrialState.COMPLETE, 0.7)
    _add(handle, TrialState.PRUNED)
    other = handle.study.ask()  # another worker's claim of the last slot, not yet drawn
    mine = handle.study.ask()
    assert not _is_surplus(handle, other) and _is_surplus(handle, mine)


@pytest.mark.parametrize("kind", ["none", "median", "hyperband"])
def test_pruners_step_in_epochs_and_stop_only_the_worse_trials(kind: str):
    """30 simulated trials of 8 epochs whose val AUC is their quality plus a little per epoch: a
    pruner stops some, each below the best complete trial; without one, none is stopped."""
    from random import Random

    from tasks.study.store import make_pruner

    study = optuna.create_study(direction="maximize", pruner=make_pruner(kind, StudyConfig(), max_epochs=8))
    rng, pruned = Random(0), []
    for _ in range(30):
        trial, quality = study.ask(), rng.uniform(0.5, 0.8)
        for epoch in range(1, 9):
            trial.report(quality + 0.002 * epoch, epoch)
            if trial.should_prune():
                study.tell(trial, state=TrialState.PRUNED)
                pruned.append((quality, epoch))
                break
        else:
            study.tell(trial, quality + 0.016)
    if kind == "none":
        assert not pruned
    else:
        assert len(pruned) >= 5 and all(q + 0.016 < study.best_value for q, _ in pruned)
