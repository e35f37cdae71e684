"""The report's headline: per horizon, the test-split verdict between budgets. Pure: the
horizon's selected runs (from `budgets`) and the test scores read for them in, dataclasses out.

- Selection on validation: each budget's selected configuration is its study's pick on the seed
  mean where a study confirmed its top configurations with more seeds, else its complete trial
  with the highest val AUC over all its studies at the horizon (`budgets.selected_trial`); the
  best baseline is the baseline run with the highest val AUC.
- Seeds: a selected configuration's test scores are those of each of its seeds (`budgets.seed_runs`:
  the trial, its confirmation seeds, its re-trainings), on the same windows. Its test AUC is the
  seed mean.
- Verdict on test: the seed-mean test AUCs compared pairwise on the same windows with
  `stats.seed_paired_delong` (DeLong's window variance of the seed-mean difference plus each side's
  seed variance over its seeds; a t interval), Holm-corrected over the pairs of the horizon; each
  budget against the best baseline the same way (a second family, Holm-corrected too; a baseline is
  deterministic, its seed variance 0). With one seed a side this is DeLong's paired test exactly,
  and the pair says "seed noise not measured".
- Pinned datasets: the budgets of one verdict must have been trained on one dataset. When the
  studies of the selected configurations pinned different dataset fingerprints (study run tag
  `dataset_fingerprint`), the horizon gets no verdict ("undetermined: budgets trained on different
  datasets", naming the studies, their fingerprints and what differs). A study without a
  fingerprint (legacy-only) is not refused alone, but the report says "dataset not recorded".
- "holds" when every larger budget beats the next smaller one (Holm p < ALPHA); "violated" when
  some smaller budget beats a larger one; "not distinguishable" otherwise; "undetermined" when a
  compared budget has no test predictions, or two of them are on different windows: then the
  reason says what is missing and the command that fills it; "not assessable" with fewer than two
  budgets with complete trials.
- The scaling curve: least squares of seed-mean test AUC on log10(parameters) over the budgets with
  test predictions, with a 95% band from a paired bootstrap over the test windows plus each
  budget's seed noise (`stats.scaling_fit`).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from schemas.tracking import predictions_tag
from tasks.data.dataset import dataset_differences
from tasks.report.stats import ScalingFit, SeedPairedAUC, holm, scaling_fit, seed_paired_delong
from tasks.tracking.predictions import Predictions, WindowMismatch

ALPHA = 0.05
SPLIT = "test"
BOOTSTRAP_RESAMPLES = 1000


@dataclass(frozen=True)
class Selected:
    """A budget's configuration selected on validation, and its test scores if logged: the run that
    stands for it (`predictions`) and every seed's (`seeds`, that run first)."""

    budget: str
    run: pd.Series
    params: float
    predictions: Predictions | None
    missing: str = ""  # why there are no test scores
    fill: str = ""  # the command that logs them
    seeds: tuple[Predictions, ...] = ()  # on the windows of `predictions`; () without test scores
    seed_names: tuple[str, ...] = ()  # per seed: "trial", "confirm seed 1", "retrain seed 0"
    seed_notes: tuple[str, ...] = ()  # seeds left out, and why
    deterministic: bool = False  # a baseline: no seed variance

    @property
    def seed_aucs(self) -> np.ndarray:
        return np.array([_auc(p) for p in self.seeds])

    @property
    def test_auc(self) -> float:
        """The seed-mean test AUC (one seed: that run's)."""
        return math.nan if not self.seeds else float(self.seed_aucs.mean())

    @property
    def seed_sd(self) -> float:
        """sd (ddof 1) of the seeds' test AUCs; 0 for a baseline; NaN with one seed (not measured)."""
        if self.deterministic:
            return 0.0
        return float(self.seed_aucs.std(ddof=1)) if len(self.seeds) > 1 else math.nan

    @property
    def picked_test_auc(self) -> float:
        """The test AUC of the seed the study picked (the trial itself); NaN when it has no test
        scores of its own (legacy, supplemental: its seeds are re-trainings)."""
        return float(self.seed_aucs[0]) if self.seeds and self.seed_names[0] == "trial" else math.nan


@dataclass(frozen=True)
class Paired:
    """One paired comparison: `a` - `b` on the test windows."""

    a: str
    b: str
    test: SeedPairedAUC | None
    p_holm: float
    verdict: str  # higher | lower | not distinguishable | undetermined
    note: str = ""
    seed_note: str = ""  # "seed noise not measured", "seed noise dominates (...)", "3 vs 3 seeds"


@dataclass(frozen=True)
class DatasetCheck:
    """Whether the budgets of a verdict were trained on one dataset: per budget its selected
    configuration's study and what that study pinned (`study.StudyDataset`)."""

    studies: tuple[tuple[str, object], ...]  # (budget, StudyDataset), in budget order
    differ: bool
    reason: str  # "budgets trained on different datasets: ...", or ""

    @property
    def not_recorded(self) -> list[str]:
        return [d.study for _, d in self.studies if not d.recorded]


def dataset_check(bests: list) -> DatasetCheck:
    """Compare the datasets pinned by the studies of each budget's selected configuration (the
    `dataset` of `budgets.BudgetBest`): different fingerprints mean no verdict, and the reason
    names each study, its fingerprint and what differs from the first budget's dataset."""
    studies = tuple((b.budget, b.dataset) for b in bests if b.best is not None and b.dataset is not None)
    recorded = [(budget, d) for budget, d in studies if d.recorded]
    if len({d.fingerprint for _, d in recorded}) < 2:
        return DatasetCheck(studies, False, "")
    first = recorded[0][1]
    named = ", ".join(f"{d.study} ({budget}) on {d.fingerprint}" for budget, d in recorded)
    differences = []
    for _, d in recorded[1:]:
        if d.fingerprint == first.fingerprint:
            continue
        if first.record is None or d.record is None:
            what = "no dataset record to compare"
        else:
            what = "; ".join(dataset_differences(first.record, d.record))
        differences.append(f"{d.study} vs {first.study}: {what}")
    reason = f"budgets trained on different datasets: {named} ({'; '.join(differences)})"
    return DatasetCheck(studies, True, reason)


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
    datasets: DatasetCheck | None = None


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
    """Run ids whose test scores the verdicts read: each budget's selected trial, its seeds and the
    best baseline of every horizon (`budgets.HorizonAnalysis`), where the run's tag says it logged
    them. Nothing else is downloaded."""
    tag = predictions_tag(SPLIT)
    needed = []
    for h in horizons:
        chosen, base = select(h.bests)
        for run in chosen + ([base] if base is not None else []):
            if isinstance(run.get(tag), str) and run[tag] and scores_run_id(run) not in needed:
                needed.append(scores_run_id(run))
        for b in h.bests:  # every seed of the selected configurations (`budgets.seed_runs`)
            needed.extend(run["run_id"] for run in b.seeds if run["run_id"] not in needed)
    return needed


def scores_run_id(run: pd.Series) -> str:
    """The run whose test scores stand for `run`: a re-training's (`hpo retrain`) or its own."""
    found = run.get("scores_run_id")
    return found if isinstance(found, str) and found else run["run_id"]


def _seed_name(run: pd.Series) -> str:
    kind = run["run_kind"]
    if kind == "trial":
        return "trial"
    index = run.get("seed_index")
    return f"{kind} seed {0 if index is None or math.isnan(index) else int(index)}"


def _selected(run: pd.Series, budget: str, predictions: dict[str, Predictions | str],
              seed_runs: tuple[pd.Series, ...] = (), deterministic: bool = False) -> Selected:  # fmt: skip
    found = predictions.get(scores_run_id(run))
    params = float(run["params"]) if "params" in run and not math.isnan(run["params"]) else math.nan
    if isinstance(found, Predictions):
        seeds, names, notes = [found], [_seed_name(run) if scores_run_id(run) == run["run_id"] else "retrain seed 0"], []
        if seed_runs:
            names = [_seed_name(seed_runs[0])]
        for seed in seed_runs[1:]:
            scores = predictions.get(seed["run_id"])
            if not isinstance(scores, Predictions):
                notes.append(f"{_seed_name(seed)} (run {seed['run_id'][:8]}): test scores not read ({scores or 'not downloaded'})")
                continue
            try:
                found.same_windows(scores)
            except WindowMismatch:
                notes.append(f"{_seed_name(seed)} (run {seed['run_id'][:8]}): on other windows than the first seed, left out")
                continue
            seeds.append(scores)
            names.append(_seed_name(seed))
        return Selected(budget, run, params, found, seeds=tuple(seeds), seed_names=tuple(names), seed_notes=tuple(notes),
                        deterministic=deterministic)  # fmt: skip
    why, command = missing_reason(run)
    if isinstance(found, str):  # tagged as logged, but unreadable
        why = f"the test scores of {run['study']} run {run['run_id'][:8]} could not be read ({found})"
    return Selected(budget, run, params, None, why, command, deterministic=deterministic)


def _compare(a: Selected, b: Selected) -> tuple[SeedPairedAUC | None, str]:
    if a.predictions is None or b.predictions is None:
        return None, "no test scores for " + " and ".join(s.budget for s in (b, a) if s.predictions is None)
    try:
        a.predictions.same_windows(b.predictions)
    except WindowMismatch as exc:
        return None, str(exc)
    test = seed_paired_delong(np.vstack([p.scores for p in a.seeds]), np.vstack([p.scores for p in b.seeds]),
                              a.predictions.labels, b_deterministic=b.deterministic)  # fmt: skip
    return test, ""


def seed_note(a: Selected, b: Selected, test: SeedPairedAUC | None) -> str:
    """What the pair's interval says about seeds: not measured (a side with one seed), dominating
    (a side's seed sd above the gap), or how many seeds each side had."""
    if test is None:
        return ""
    unmeasured = [s.budget for s in (a, b) if math.isnan(s.seed_sd)]
    if len(unmeasured) == sum(not s.deterministic for s in (a, b)):  # no seed noise of either side is in the interval
        return "seed noise not measured"
    parts = [f"seed noise not measured for {unmeasured[0]}"] if unmeasured else []
    if test.seed_sd > abs(test.diff):
        parts.append(f"seed noise dominates (seed sd {test.seed_sd:.4f} > |Δ| {abs(test.diff):.4f})")
    if not parts:
        sides = [f"{len(s.seeds)} seeds" if not s.deterministic else "deterministic" for s in (a, b)]
        parts.append(" vs ".join(sides))
    return "; ".join(parts)


def _family(pairs: list[tuple[Selected, Selected]]) -> list[Paired]:
    """Holm over the determined comparisons of one family (`a` - `b`); verdicts from the adjusted p."""
    rows = [(a, b, *_compare(a, b)) for a, b in pairs]
    adjusted = holm([t.p_value if t is not None else math.nan for _, _, t, _ in rows])
    out = []
    for (a, b, test, note), p in zip(rows, adjusted):
        seeds = seed_note(a, b, test)
        if test is None:
            out.append(Paired(a.budget, b.budget, None, math.nan, "undetermined", note))
        elif p < ALPHA:
            out.append(Paired(a.budget, b.budget, test, float(p), "higher" if test.diff > 0 else "lower", seed_note=seeds))
        else:
            out.append(Paired(a.budget, b.budget, test, float(p), "not distinguishable", seed_note=seeds))
    return out


def _fit(selected: list[Selected]) -> tuple[ScalingFit | None, str]:
    usable = [s for s in selected if s.predictions is not None and not math.isnan(s.params)]
    if usable:
        digest = Counter(s.predictions.windows_sha256 for s in usable).most_common(1)[0][0]
        usable = [s for s in usable if s.predictions.windows_sha256 == digest]
    if len({s.params for s in usable}) < 2:
        return None, "needs test scores of at least two budgets on the same windows"
    fit = scaling_fit(np.log10([s.params for s in usable]), [np.vstack([p.scores for p in s.seeds]) for s in usable],
                      usable[0].predictions.labels, resamples=BOOTSTRAP_RESAMPLES)  # fmt: skip
    left_out = [s.budget for s in selected if s not in usable]
    return fit, ("over " + ", ".join(s.budget for s in usable) + (f" ({', '.join(left_out)} left out: no test scores)" if left_out else ""))


def _test_words(pairs: list[Paired]) -> str:
    """How the pairs were tested, for a verdict's reason."""
    if any(p.test is not None and p.test.seed_measured for p in pairs):
        return "seed-mean test AUC, paired DeLong plus seed variance"
    return "paired DeLong"


def horizon_verdict(horizon: int, bests: list, predictions: dict[str, Predictions | str]) -> HorizonVerdict:
    """The horizon's headline verdict on the test split from its `budgets.BudgetBest` rows and
    the test scores read for them (run id -> Predictions, or why they could not be read)."""
    _, base_run = select(bests)
    datasets = dataset_check(bests)
    selected = [_selected(b.best, b.best["budget_group"], predictions, b.seeds) for b in bests if b.best is not None]
    baseline = None if base_run is None else _selected(base_run, str(base_run["baseline_model"]), predictions, deterministic=True)
    pairs = _family([(large, small) for i, small in enumerate(selected) for large in selected[i + 1:]])
    vs_baseline = [] if baseline is None else _family([(s, baseline) for s in selected])
    fit, fit_note = _fit(selected)
    if datasets.differ:  # no comparison across datasets: every pair and the curve are undetermined
        pairs = [Paired(p.a, p.b, None, math.nan, "undetermined", "budgets trained on different datasets") for p in pairs]
        fit, fit_note = None, "none: budgets trained on different datasets"
    missing = [f"{s.budget}: {s.missing}. Fill: {s.fill}." for s in selected + ([baseline] if baseline else [])
               if s.predictions is None]  # fmt: skip

    if len(selected) < 2:
        have = ", ".join(s.budget for s in selected) or "none"
        verdict, reason = "not assessable", f"fewer than two budgets with complete trials ({have})"
    elif datasets.differ:
        verdict, reason = "undetermined", datasets.reason
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
            reason = f"{p.b} beats {p.a} on test ({_test_words(pairs)}, Holm p {p.p_holm:.3g})"
        elif all(p.verdict == "higher" for p in adjacent):
            verdict = "holds"
            reason = f"each larger budget beats the next smaller one on test ({_test_words(pairs)}, Holm p < 0.05)"
        else:
            p = next(p for p in adjacent if p.verdict != "higher")
            verdict = "not distinguishable"
            if p.test.seed_measured:
                reason = (f"{p.b} and {p.a} differ by {p.test.diff:+.4f} in seed-mean test AUC, within what seed and "
                          f"test-window noise allow (Holm p {p.p_holm:.3g})")  # fmt: skip
            else:
                reason = f"{p.b} and {p.a} differ by {p.test.diff:+.4f} on test, within what the test windows' noise allows (Holm p {p.p_holm:.3g})"
    return HorizonVerdict(horizon, verdict, reason, selected, pairs, baseline, vs_baseline, fit, fit_note, missing, datasets)
