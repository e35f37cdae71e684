"""What a campaign's runs say: everything the report shows, from a DataFrame of MLflow runs (one
row per run). Pure: no MLflow, no files, no figures (`tasks.report.mlflow_io` queries,
`tasks.report.render` writes).

The numbers come from one module per question, each with its rules in its docstring (the report
prints them in its "Methods" section):
- `table`: the runs table (typed columns, study identity, what a complete trial is), orders;
- `study`: one study (counts, best trial, collapse, importance, trends, coverage, gaps);
- `budgets`: across budgets at a horizon (validation intervals and comparisons, consistency);
- `hparam_scaling`: how the optimal hyperparameters move with the budget, and the data regime;
- `verdicts`: the headline, paired tests on the test split; `stats` their statistics;
- `checklist`: the supplemental plan's checklist.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from models.arch_grid import REAL_BUDGETS
from schemas.config import SearchSpace
# BudgetBest and hanley_mcneil_se: re-exported for tests/test_predictions.py and bench/pruning.py,
# which still import them from here.
from tasks.report.budgets import BudgetBest as BudgetBest
from tasks.report.budgets import HorizonAnalysis, analyse_horizon
from tasks.report.budgets import hanley_mcneil_se as hanley_mcneil_se
from tasks.report.checklist import RERUN_TRIALS, Check, verification_checklist
from tasks.report.hparam_scaling import hparam_scaling
from tasks.report.study import StudyAnalysis, analyse_study
from tasks.report.table import budget_order, normalise_runs, studies_in_order, trials_of
from tasks.report.verdicts import horizon_verdict
from tasks.tracking.predictions import Predictions


@dataclass
class CampaignAnalysis:
    runs: pd.DataFrame
    studies: list[StudyAnalysis]
    horizons: list[HorizonAnalysis]
    checklist: list[Check]
    budgets: list[str]  # the budgets every cross-budget table lists, smallest first
    budgets_without_runs: list[str]


def analyse_campaign(runs: pd.DataFrame, search: SearchSpace = SearchSpace(), rerun_target: int = RERUN_TRIALS,
                     predictions: dict[str, Predictions | str] | None = None) -> CampaignAnalysis:  # fmt: skip
    """Everything the report shows. The cross-budget tables list every real budget (2M to 2B), so a
    budget without runs shows up as such, plus any other budget group with runs (`smoke`, smoke
    stand-ins like `smoke-20M`); a store of smoke studies only lists just those. `predictions`
    (run id -> test scores, see `with_predictions`) feed the test verdicts; without them every
    verdict is "undetermined"."""
    frame = normalise_runs(runs)
    frame = frame[frame["run_kind"].isin(["study", "trial", "baseline", "retrain", "confirm"])]
    with_trials = set(trials_of(frame)["budget_group"].dropna())
    present = set(frame["budget_group"].dropna())
    real = list(REAL_BUDGETS)  # the smoke budget and the smoke ladder are listed only when they have runs
    real = real if present & set(real) or not present else []
    budgets = budget_order(real + sorted(present))
    horizons = sorted(int(h) for h in frame.loc[frame["run_kind"] != "study", "horizon"].dropna().unique())
    study_names = [s for s in studies_in_order(frame) if (trials_of(frame)["study"] == s).any()]
    return CampaignAnalysis(
        runs=frame,
        studies=[analyse_study(frame, s, search) for s in study_names],
        horizons=[_with_hparam_scaling(analyse_horizon(frame, h, budgets, predictions), frame, budgets) for h in horizons],
        checklist=verification_checklist(frame, rerun_target),
        budgets=budgets,
        budgets_without_runs=[b for b in budgets if b not in with_trials],
    )


def _with_hparam_scaling(h: HorizonAnalysis, frame: pd.DataFrame, budgets: list[str]) -> HorizonAnalysis:
    """The horizon's hyperparameter scaling (`hparam_scaling`; legacy studies counted and marked)."""
    h.hparams = hparam_scaling(frame, h.horizon, budgets, include_legacy=True)
    return h


def with_predictions(analysis: CampaignAnalysis, predictions: dict[str, Predictions | str]) -> CampaignAnalysis:
    """The test verdicts recomputed from the scores read for `verdicts.needed_predictions`."""
    for h in analysis.horizons:
        h.test = horizon_verdict(h.horizon, h.bests, predictions)
    return analysis
