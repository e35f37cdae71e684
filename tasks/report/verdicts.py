"""The report's headline: per horizon, the test-split verdict between budgets. Pure: the
horizon's selected runs (from `budgets`) and the test scores read for them in, dataclasses out.

- Selection on validation: each budget's selected configuration is its complete trial with the
  highest val AUC over all its studies at the horizon (`budgets.budget_bests`, the "Best per
  budget" row); the best baseline is the baseline run with the highest val AUC.
- Verdict on test: the selected trials' test scores (`predictions/test.npz`), compared pairwise
  with DeLong's paired test on the same windows, Holm-corrected over the pairs of the horizon;
  each budget against the best baseline the same way (a second family, Holm-corrected too).
- "holds" when every larger budget beats the next smaller one (Holm p < ALPHA); "violated" when
  some smaller budget beats a larger one; "not distinguishable" otherwise; "undetermined" when a
  compared budget has no test predictions, or two of them are on different windows: then the
  reason says what is missing and the command that fills it; "not assessable" with fewer than two
  budgets with complete trials.
- The scaling curve: least squares of test AUC on log10(parameters) over the budgets with test
  predictions, with a 95% band from a paired bootstrap over the test windows.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from schemas.tracking import predictions_tag
from tasks.report.stats import PairedAUC, ScalingFit, holm, paired_delong, scaling_fit
from tasks.tracking.predictions import Predictions, WindowMismatch

ALPHA = 0.05
SPLIT = "test"
BOOTSTRAP_RESAMPLES = 1000


@dataclass(frozen=True)
class Selected:
    """A budget's configuration selected on validation, and its test scores if logged."""

    budget: str
    run: pd.Series
    params: float
    predictions: Predictions | None
    missing: str = ""  # why there are no test scores
    fill: str = ""  # the command that logs them

    @property
    def test_auc(self) -> float:
        return math.nan if self.predictions is None else _auc(self.predictions)


@dataclass(frozen=True)
class Paired:
    """One paired comparison: `a` - `b` on the test windows."""

    a: str
    b: str
    test: PairedAUC | None
    p_holm: float
    verdict: str  # higher | lower | not distinguishable | undetermined
    note: str = ""


@dataclass
class HorizonVerdict:
    horizon: int
    verdict: str  # holds | violated | not distinguishable | undetermined | not assessable
    reason: str
    selected: list[Selected]
    pairs: list[Paired]  # a = larger budget, b = smaller
    baseline: Selected | None
    vs_baseline: list[Paired]  # a = budget, b = best baseline
    fit: ScalingFit | None
    fit_note: str
    missing: list[str] = field(default_factory=list)  # "what: command" lines


def _auc(p: Predictions) -> float:
    positive = p.labels
    ranks = pd.Series(p.scores).rank().to_numpy()
    m = int(positive.sum())
    return float((ranks[positive].sum() - m * (m + 1) / 2) / (m * (len(positive) - m)))


def _command_budget(run: pd.Series) -> tuple[str, int, str]:
    """(budget, horizon, " --smoke" or "") as `hpo run` takes them for the run's study."""
    group = str(run.get("budget_group") or run["budget"])
    smoke = group.startswith("smoke")
    budget = group.removeprefix("smoke-") if smoke and group != "smoke" else str(run["budget"])
    return budget, int(run["horizon"]), " --smoke" if smoke else ""


def missing_reason(run: pd.Series) -> tuple[str, str]:
    """(why the selected run has no test scores, the command that logs them and what it does)."""
    budget, horizon, smoke = _command_budget(run)
    trial = "?" if math.isnan(run["trial_number"]) else int(run["trial_number"])
    trial = run["supplemental_id"] if run["source"] == "supplemental" and run.get("supplemental_id") else trial
    ref = f"{run['study']} #{trial}"
    fresh = (f"`hpo run {budget} h{horizon} --fresh{smoke}`: a new version of the study on the same data, whose "
             "selected trial is evaluated on test with its scores logged")  # fmt: skip
    if run["run_kind"] == "baseline":
        return f"the best baseline ({run['baseline_model']}) has no test scores logged", f"`hpo baselines --horizon h{horizon}`"
    retrain = (f"`hpo retrain {run['study']} {trial}`: re-trains that configuration on the same data and logs its "
               f"validation and test scores; or {fresh}")  # fmt: skip
    if run["source"] == "legacy":
        return f"the selected configuration ({ref}) was recovered from legacy logs, which hold no scores", retrain
    if run["source"] == "supplemental":
        return f"the selected configuration ({ref}) is a supplemental trial, which no study evaluates on test", retrain
    version = "" if math.isnan(run["study_version"]) else f" --version {int(run['study_version'])}"
    return (f"study {run['study']} has not logged its selected trial's test scores (unfinished, or its test evaluation "
            f"failed)", f"`hpo run {budget} h{horizon}{version}{smoke}`: finishes the study and evaluates its selected "
            "trial on test")  # fmt: skip


def select(bests: list) -> tuple[list[pd.Series], pd.Series | None]:
    """The selected trial of each budget with complete trials and the best baseline, from a
    horizon's `budgets.BudgetBest` rows (both chosen there on val AUC)."""
    chosen = [b.best for b in bests if b.best is not None]
    base = next((b.baseline for b in bests if b.baseline is not None), None)
    return chosen, base


def needed_predictions(horizons: list) -> list[str]:
    """Run ids whose test scores the verdicts read: each budget's selected trial and the best
    baseline of every horizon (`budgets.HorizonAnalysis`), where the run's tag says it logged
    them. Nothing else is downloaded."""
    tag = predictions_tag(SPLIT)
    needed = []
    for h in horizons:
        chosen, base = select(h.bests)
        for run in chosen + ([base] if base is not None else []):
            if isinstance(run.get(tag), str) and run[tag] and scores_run_id(run) not in needed:
                needed.append(scores_run_id(run))
    return needed


def scores_run_id(run: pd.Series) -> str:
    """The run whose test scores stand for `run`: a re-training's (`hpo retrain`) or its own."""
    found = run.get("scores_run_id")
    return found if isinstance(found, str) and found else run["run_id"]


def _selected(run: pd.Series, budget: str, predictions: dict[str, Predictions | str]) -> Selected:
    found = predictions.get(scores_run_id(run))
    params = float(run["params"]) if "params" in run and not math.isnan(run["params"]) else math.nan
    if isinstance(found, Predictions):
        return Selected(budget, run, params, found)
    why, command = missing_reason(run)
    if isinstance(found, str):  # tagged as logged, but unreadable
        why = f"the test scores of {run['study']} run {run['run_id'][:8]} could not be read ({found})"
    return Selected(budget, run, params, None, why, command)


def _compare(a: Selected, b: Selected) -> tuple[PairedAUC | None, str]:
    if a.predictions is None or b.predictions is None:
        return None, "no test scores for " + " and ".join(s.budget for s in (b, a) if s.predictions is None)
    try:
        a.predictions.same_windows(b.predictions)
    except WindowMismatch as exc:
        return None, str(exc)
    return paired_delong(a.predictions.scores, b.predictions.scores, a.predictions.labels), ""


def _family(rows: list[tuple[str, str, PairedAUC | None, str]]) -> list[Paired]:
    """Holm over the determined comparisons of one family; verdicts from the adjusted p."""
    adjusted = holm([t.p_value if t is not None else math.nan for _, _, t, _ in rows])
    out = []
    for (a, b, test, note), p in zip(rows, adjusted):
        if test is None:
            out.append(Paired(a, b, None, math.nan, "undetermined", note))
        elif p < ALPHA:
            out.append(Paired(a, b, test, float(p), "higher" if test.diff > 0 else "lower"))
        else:
            out.append(Paired(a, b, test, float(p), "not distinguishable"))
    return out


def _fit(selected: list[Selected]) -> tuple[ScalingFit | None, str]:
    usable = [s for s in selected if s.predictions is not None and not math.isnan(s.params)]
    if usable:
        digest = Counter(s.predictions.windows_sha256 for s in usable).most_common(1)[0][0]
        usable = [s for s in usable if s.predictions.windows_sha256 == digest]
    if len({s.params for s in usable}) < 2:
        return None, "needs test scores of at least two budgets on the same windows"
    fit = scaling_fit(np.log10([s.params for s in usable]), np.vstack([s.predictions.scores for s in usable]),
                      usable[0].predictions.labels, resamples=BOOTSTRAP_RESAMPLES)  # fmt: skip
    left_out = [s.budget for s in selected if s not in usable]
    return fit, ("over " + ", ".join(s.budget for s in usable) + (f" ({', '.join(left_out)} left out: no test scores)" if left_out else ""))


def horizon_verdict(horizon: int, bests: list, predictions: dict[str, Predictions | str]) -> HorizonVerdict:
    """The horizon's headline verdict on the test split from its `budgets.BudgetBest` rows and
    the test scores read for them (run id -> Predictions, or why they could not be read)."""
    chosen, base_run = select(bests)
    selected = [_selected(run, run["budget_group"], predictions) for run in chosen]
    baseline = None if base_run is None else _selected(base_run, str(base_run["baseline_model"]), predictions)
    pairs = _family([(large.budget, small.budget, *_compare(large, small))
                     for i, small in enumerate(selected) for large in selected[i + 1:]])  # fmt: skip
    vs_baseline = [] if baseline is None else _family([(s.budget, baseline.budget, *_compare(s, baseline)) for s in selected])
    fit, fit_note = _fit(selected)
    missing = [f"{s.budget}: {s.missing}. Fill: {s.fill}." for s in selected + ([baseline] if baseline else [])
               if s.predictions is None]  # fmt: skip

    if len(selected) < 2:
        have = ", ".join(s.budget for s in selected) or "none"
        verdict, reason = "not assessable", f"fewer than two budgets with complete trials ({have})"
    elif any(p.verdict == "undetermined" for p in pairs):
        lacking = [s.budget for s in selected if s.predictions is None]
        if lacking:
            reason = f"no test scores for {', '.join(lacking)}, so the budgets cannot be compared on the same windows"
        else:
            reason = "the selected trials' test scores are not all on the same windows"
        verdict = "undetermined"
    else:
        by_pair = {(p.b, p.a): p for p in pairs}
        lower = [p for p in pairs if p.verdict == "lower"]
        adjacent = [by_pair[(small.budget, large.budget)] for small, large in zip(selected, selected[1:])]
        if lower:
            p = lower[0]
            verdict = "violated"
            reason = f"{p.b} beats {p.a} on test (paired DeLong, Holm p {p.p_holm:.3g})"
        elif all(p.verdict == "higher" for p in adjacent):
            verdict, reason = "holds", "each larger budget beats the next smaller one on test (paired DeLong, Holm p < 0.05)"
        else:
            p = next(p for p in adjacent if p.verdict != "higher")
            verdict = "not distinguishable"
            reason = f"{p.b} and {p.a} differ by {p.test.diff:+.4f} on test, within what the test windows' noise allows (Holm p {p.p_holm:.3g})"
    return HorizonVerdict(horizon, verdict, reason, selected, pairs, baseline, vs_baseline, fit, fit_note, missing)
