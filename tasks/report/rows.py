"""The report's table rows and cell formats: the functions the templates (`templates/*.j2`) call to
turn the analysis into rows of cells, the filters they format numbers with, and the rows of the
best-per-budget table for the Prefect artifact. No I/O: values in, strings and lists out.

A new report section: its numbers in the analysis (`study`, `budgets`, `verdicts`, `checklist`),
its rows here (registered in `GLOBALS`), its words in the template.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.report.analysis import CampaignAnalysis
from tasks.report.budgets import TOP_K, Comparison, HorizonAnalysis, Interval
from tasks.report.checklist import Check
from tasks.report.hparam_scaling import DATA_LIMITED_FACTOR, MIN_NEAR, TOKENS_PER_PARAM, ParamFit, configurations
from tasks.report.stats import PairedAUC
from tasks.report.study import COLLAPSE_PRED_RANGE, MIN_TREND_TRIALS, TREND_ALPHA, Coverage, Gaps, StudyAnalysis, Trend
from tasks.report.table import fmt_value
from tasks.report.verdicts import ALPHA, BOOTSTRAP_RESAMPLES, Paired, Selected

CONFIG_COLUMNS = ("d_model", "n_layers", "n_heads", "d_ff_ratio", "learning_rate", "dropout", "weight_decay")
_PAIR_WORDS = {"higher": "larger is better", "lower": "smaller is better"}


# ----------------------------------------------------------------------------- cells


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value))

def _auc(value: object) -> str:
    return "n/a" if _missing(value) else f"{value:.4f}"

def _cell(value: object) -> str:
    text = fmt_value(value) if isinstance(value, (float, int, np.floating, np.integer)) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")

def _anchor(title: str) -> str:
    """The id Python-Markdown's toc extension (and GitHub) give a heading like ours."""
    text = re.sub(r"[^\w\s-]", "", title).strip().lower()
    return re.sub(r"[-\s]+", "-", text)

def _counts(mapping: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in mapping.items()) or "none"

def _values(values: list[object]) -> str:
    return ", ".join(fmt_value(v) for v in values)

def _ci(interval: Interval | None) -> str:
    if interval is None or math.isnan(interval.se):
        return "n/a"
    return f"[{interval.low:.4f}, {interval.high:.4f}]"

def _signed_ci(test: PairedAUC) -> str:
    return f"[{test.low:+.4f}, {test.high:+.4f}]"

def _vs(comparison: Comparison | None, higher: str, lower: str) -> str:
    if comparison is None:
        return "n/a"
    words = {"higher": higher, "lower": lower, "not distinguishable": "not distinguishable"}[comparison.verdict]
    return f"{words} ({comparison.diff:+.4f}, CI [{comparison.low:+.4f}, {comparison.high:+.4f}])"

def _p(value: float) -> str:
    return "n/a" if _missing(value) else ("< 0.0001" if value < 1e-4 else f"{value:.4f}")

def _params(count: float) -> str:
    """1559120 -> 1.56M."""
    if _missing(count):
        return "n/a"
    scale, suffix = next(((v, x) for v, x in ((1e9, "B"), (1e6, "M"), (1e3, "k")) if count >= v), (1, ""))
    return f"{count / scale:.3g}{suffix}"

def _trial_ref(t: pd.Series) -> str:
    number = "?" if math.isnan(t["trial_number"]) else fmt_value(t["trial_number"])
    return f"{t['study']} #{number} ({t['source'] or 'unknown'})"

def _test_auc(best: pd.Series, runs: pd.DataFrame) -> float:
    """The best trial's test AUC: its own `test_auc`, or its study run's `best_test_auc` when that
    run's `best_val_auc` is this trial's val AUC."""
    if not math.isnan(best["test_auc"]):
        return float(best["test_auc"])
    parent = runs[(runs["study"] == best["study"]) & (runs["run_kind"] == "study")]
    for _, p in parent.iterrows():
        if not math.isnan(p["best_test_auc"]) and abs(p["best_val_auc"] - best["val_auc"]) < 1e-9:
            return float(p["best_test_auc"])
    return math.nan

def figure_link(figures: dict[str, Path] | None, key: str, base: Path | None) -> str:
    """The figure's path relative to `base`; empty when the report has no such figure."""
    if not figures or key not in figures:
        return ""
    path = figures[key]
    return path.relative_to(base).as_posix() if base else path.name


# ----------------------------------------------------------------------------- the campaign


def checklist_rows(checks: list[Check]) -> list[list[object]]:
    marks = {"pass": "**pass**", "fail": "**FAIL**", "n/a": "n/a"}
    return [[marks[c.status], c.item, c.evidence] for c in checks]


# ----------------------------------------------------------------------------- a horizon on test


def _seed_cells(s: Selected) -> list[object]:
    """Seeds, sd of their test AUCs, their range, the test AUC of the seed the study picked."""
    if s.predictions is None:
        return ["n/a", "n/a", "n/a", "n/a"]
    if s.deterministic:
        return ["deterministic", "0", "n/a", "n/a"]
    aucs = s.seed_aucs
    sd = "not measured" if math.isnan(s.seed_sd) else f"{s.seed_sd:.4f}"
    spread = f"[{aucs.min():.4f}, {aucs.max():.4f}]" if len(aucs) > 1 else "n/a"
    if math.isnan(s.picked_test_auc):
        picked = "n/a (no test scores of its own: seeds are re-trainings)"
    else:
        rank = int((aucs > s.picked_test_auc).sum()) + 1
        picked = f"{s.picked_test_auc:.4f} (seed 0, rank {rank} of {len(aucs)} by test AUC)" if len(aucs) > 1 else f"{s.picked_test_auc:.4f} (seed 0)"
    return [len(aucs), sd, spread, picked]

def test_selected_rows(h: HorizonAnalysis) -> list[list[object]]:
    """Per budget: the configuration selected on val, its (biased) val AUC, its seed-mean test AUC
    and its seeds (how many, sd, range, the study's pick)."""
    rows = []
    for s in h.test.selected + ([h.test.baseline] if h.test.baseline else []):
        scores = "missing" if s.predictions is None else f"{len(s.predictions.scores)} windows ({s.predictions.windows_sha256[:8]})"
        if s.predictions is not None and s.run.get("scores_note"):
            scores += f"; {s.run['scores_note']}"
        if s.seed_notes:
            scores += "; " + "; ".join(s.seed_notes)
        val = _auc(s.run["val_auc"])
        if s.run.get("selected_by") == "seed_mean" and not _missing(s.run.get("seed_mean_val_auc")):
            val += f" (seed mean {s.run['seed_mean_val_auc']:.4f})"
        rows.append([s.budget if s.run["run_kind"] != "baseline" else f"baseline: {s.budget}",
                     _trial_ref(s.run) if s.run["run_kind"] == "trial" else s.run["study"], _params(s.params),
                     val, _auc(s.test_auc), scores, *_seed_cells(s)])  # fmt: skip
    return rows

def _paired_row(first: str, second: str, p: Paired, words: dict[str, str]) -> list[object]:
    """One paired comparison's row: the two names, Δ, CI, p, Holm p, the verdict in words and what
    its interval says about seed noise."""
    if p.test is None:
        return [first, second, "n/a", "n/a", "n/a", "n/a", f"undetermined: {p.note}", "n/a"]
    return [first, second, f"{p.test.diff:+.4f}", _signed_ci(p.test), _p(p.test.p_value), _p(p.p_holm),
            words.get(p.verdict, p.verdict), p.seed_note]  # fmt: skip

def test_pair_rows(h: HorizonAnalysis) -> list[list[object]]:
    """Smaller budget, larger budget, then the comparison of larger - smaller."""
    return [_paired_row(p.b, p.a, p, _PAIR_WORDS) for p in h.test.pairs]

def test_baseline_rows(h: HorizonAnalysis) -> list[list[object]]:
    """Budget, baseline, then the comparison of budget - baseline."""
    words = {"higher": "beats the baseline", "lower": "below the baseline"}
    return [_paired_row(p.a, p.b, p, words) for p in h.test.vs_baseline]

def seed_lines(h: HorizonAnalysis) -> list[str]:
    """Under the verdict: "seed noise dominates" for each pair whose seed sd exceeds its gap, or
    one line saying seed noise was not measured at all."""
    pairs = [p for p in h.test.pairs + h.test.vs_baseline if p.test is not None]
    if pairs and not any(p.test.seed_measured for p in pairs):
        return [f"Seed noise not measured at h{h.horizon}: every selected configuration has one seed (`confirm_seeds=0`, "
                "a store from before seed confirmation, or a legacy trial without `hpo retrain STUDY TRIAL --seeds N`), "
                "so the intervals carry the test windows' noise only."]  # fmt: skip
    named = [(p.b, p.a, p) for p in h.test.pairs] + [(p.a, p.b, p) for p in h.test.vs_baseline]  # as the tables name them
    return [f"Seed noise dominates {first} vs {second}: a seed sd of {p.test.seed_sd:.4f} exceeds their gap of "
            f"{abs(p.test.diff):.4f} in seed-mean test AUC." for first, second, p in named
            if p.test is not None and "dominates" in p.seed_note]  # fmt: skip

def dataset_lines(h: HorizonAnalysis) -> list[str]:
    """Under the verdict: the dataset each compared budget's study was trained on (its pinned
    fingerprint and record, or "dataset not recorded"), and why no verdict when they differ."""
    check = h.test.datasets
    if check is None or not check.studies:
        return []
    lines = [f"{budget} ({d.study}): {d.describe()}" for budget, d in check.studies]
    if check.differ:
        lines.insert(0, f"No verdict at h{h.horizon}: undetermined: {check.reason}. Fix: compare studies trained on one "
                        "dataset (re-run a budget on the others' data with `hpo run BUDGET HORIZON --fresh` and its "
                        "--data/--features/--label/--window)")  # fmt: skip
    elif check.not_recorded:
        lines.append(f"dataset not recorded for {', '.join(check.not_recorded)} (legacy-only, or made before datasets were "
                     "pinned): compared as if on the same data, which the store cannot confirm")  # fmt: skip
    return lines


def study_seed_line(s: StudyAnalysis) -> str:
    """How the study selected its configuration (`selected_by`) and its seed figures, where its run logged them."""
    run = s.study_run
    if run is None:
        return ""
    selected_by = run.get("selected_by")
    figures = [(name, run.get(name)) for name in ("seeds", "seed_mean_val_auc", "seed_sd_val_auc", "seed_mean_test_auc", "seed_sd_test_auc")]
    shown = [f"{name} {fmt_value(v) if name == 'seeds' else _auc(v)}" for name, v in figures if v is not None and not _missing(v)]
    if not selected_by and not shown:
        return ""
    return f"Selected by: {selected_by or 'not recorded'}" + (f"; {', '.join(shown)}" if shown else "")


def fit_sentence(h: HorizonAnalysis) -> str:
    fit = h.test.fit
    if fit is None:
        return f"Scaling curve: not fitted ({h.test.fit_note})."
    n = len(h.test.selected[0].predictions.scores) if h.test.selected and h.test.selected[0].predictions else 0
    seeded = any(len(s.seeds) > 1 for s in h.test.selected)
    return (f"Scaling curve ({h.test.fit_note}): {'seed-mean ' if seeded else ''}test AUC = {fit.intercept:.4f} "
            f"{'+' if fit.slope >= 0 else '-'} {abs(fit.slope):.4f} x log10(parameters); **slope {fit.slope:+.4f} per "
            f"tenfold parameters, 95% band [{fit.slope_low:+.4f}, {fit.slope_high:+.4f}]** (paired bootstrap, "
            f"{fit.resamples} resamples of the {n} test windows{', plus the seed noise of each budget with seeds' if seeded else ''}).")  # fmt: skip


# ----------------------------------------------------------------------------- a horizon on validation


def bests_rows(h: HorizonAnalysis, runs: pd.DataFrame) -> list[list[object]]:
    rows = []
    for b in h.bests:
        if b.best is None:
            rows.append([b.budget, "no runs" if not b.trials else f"0/{b.trials}"] + [""] * 13)
            continue
        t = b.best
        rows.append([
            b.budget, f"{b.complete}/{b.trials}", _auc(b.interval.auc), _ci(b.interval),
            _vs(b.vs_baseline, "beats", "below") if b.vs_baseline else "no baseline",
            _auc(_test_auc(t, runs)), _trial_ref(t), *[t[c] for c in CONFIG_COLUMNS], b.interval.method,
        ])  # fmt: skip
    return rows

def ordering(h: HorizonAnalysis) -> str:
    """`20M (0.7189) > 2M (0.7173) > 200M (0.7152)` by best val AUC; empty without complete trials."""
    ranked = sorted((b for b in h.bests if b.best is not None), key=lambda b: -b.interval.auc)
    if not ranked:
        return ""
    text = f"{ranked[0].budget} ({ranked[0].interval.auc:.4f})"
    for before, b in zip(ranked, ranked[1:]):
        text += f" {'=' if b.interval.auc == before.interval.auc else '>'} {b.budget} ({b.interval.auc:.4f})"
    return text

def pairs_rows(h: HorizonAnalysis) -> list[list[object]]:
    return [[p.smaller, p.larger, f"{p.diff:+.4f}",
             "n/a" if math.isnan(p.low) else f"[{p.low:+.4f}, {p.high:+.4f}]",
             {"higher": "larger is better", "lower": "smaller is better"}.get(p.verdict, p.verdict)]
            for p in h.scaling.pairs.itertuples()]  # fmt: skip

@dataclass(frozen=True)
class BaselineVerdict:
    """The best baseline at a horizon and the budgets whose best trial is above / below it."""

    top: pd.Series
    beating: list[str]
    below: list[str]


def baseline_verdict(h: HorizonAnalysis) -> BaselineVerdict | None:
    """The best baseline and the budgets beating it / below it; None without a comparison."""
    with_runs = [b for b in h.bests if b.vs_baseline is not None]
    if h.baselines.empty or not with_runs:
        return None
    return BaselineVerdict(
        top=h.baselines.iloc[0],
        beating=[b.budget for b in with_runs if b.vs_baseline.verdict == "higher"],
        below=[b.budget for b in with_runs if b.vs_baseline.verdict == "lower"],
    )


def baseline_rows(h: HorizonAnalysis) -> list[list[object]]:
    return [[b["baseline_model"], _auc(b["val_auc"]), _auc(b["test_auc"]), b["study"]] for _, b in h.baselines.iterrows()]

def consistency_rows(h: HorizonAnalysis) -> list[list[object]]:
    """Per parameter its best values per budget, and the noise-aware reading of the hyperparameter
    scaling (not whether the values are equal: equal values can be noise, unequal ones too)."""
    scaling = h.hparams
    readings = {} if scaling is None else {f.param: f.reading for f in scaling.fits + scaling.arch_fits}
    return [[c.param,
             ", ".join(f"{k}: {fmt_value(v)}" for k, v in c.best_trial.items()) or "n/a",
             ", ".join(f"{k}: {fmt_value(v)}" for k, v in c.best_mean.items()) or "n/a",
             readings.get(c.param, "no evidence")]
            for c in h.consistency.itertuples()]  # fmt: skip

def collapse_rows(h: HorizonAnalysis) -> list[list[object]]:
    with_trials = {b.budget for b in h.bests if b.trials}
    rows = []
    for name, c in h.collapse.items():
        if name in with_trials:
            best = "n/a" if c.best_collapsed is None else ("yes" if c.best_collapsed else "no")
            rows.append([name, f"{c.collapsed}/{c.checked}", c.narrow, c.one_class, _auc(c.mean_pred_range),
                         _auc(c.mean_recall), best])  # fmt: skip
    return rows


# ----------------------------------------------------------------------------- hyperparameter scaling


def _fit_value(fit: ParamFit, unit: float) -> str:
    return "n/a" if _missing(unit) else f"{fit.scale.value(unit):.3g}"

def _fit_band(fit: ParamFit, low: float, high: float) -> str:
    return f"[{_fit_value(fit, low)}, {_fit_value(fit, high)}]"

def _slope(fit: ParamFit) -> str:
    if _missing(fit.slope):
        return "n/a"
    unit = "decades" if fit.scale.log else ""
    return f"{fit.slope:+.3g} {unit} [{fit.slope_low:+.3g}, {fit.slope_high:+.3g}]".replace("  ", " ")

def hparam_headers(h: HorizonAnalysis) -> list[str]:
    budgets = [b.budget + (" (legacy)" if b.legacy else "") for b in h.hparams.bands] if not h.hparams.refused else []
    return ["Parameter", *[f"{b}: optimum [95% band]" for b in budgets], "Slope per tenfold parameters [95% band]", "Reading", "Why"]

def hparam_rows(h: HorizonAnalysis) -> list[list[object]]:
    """Per hyperparameter: each budget's optimum over its near-optimal trials and its band, the fit, the reading."""
    rows = []
    for fit in h.hparams.fits + [f for f in h.hparams.arch_fits if f.param == "d_ff_ratio"]:
        cells = [f"{_fit_value(fit, y)} {_fit_band(fit, lo, hi)}" for y, lo, hi in zip(fit.y, fit.y_low, fit.y_high)]
        rows.append([fit.param + (" (log scale)" if fit.scale.log else ""), *cells, _slope(fit), fit.reading, fit.why])
    return rows

def hparam_source_lines(h: HorizonAnalysis) -> list[str]:
    """Which study each budget's band comes from, how wide it is, and why a budget is not a source."""
    lines = []
    for b in h.hparams.bands:
        noise = "no noise estimate" if _missing(b.noise.sd) else f"one run's noise {b.noise.sd:.4f} ({b.noise.method})"
        legacy = "; **legacy**: imported trials, dataset not recorded" if b.legacy else ""
        configs = len(configurations(b.near, "learning_rate"))
        lines.append(f"{b.budget} ({b.study}): {len(b.near)} of {b.complete} complete trials near-optimal, "
                     f"{configs} distinct hyperparameter configuration{'s' if configs != 1 else ''} "
                     f"(val AUC >= {b.threshold:.4f}, best {b.best_auc:.4f}; {noise}), {_params(10**b.log_params)} "
                     f"parameters{legacy}")  # fmt: skip
    return lines + [f"Not a source: {s}" for s in h.hparams.skipped]

def hparam_loo_rows(h: HorizonAnalysis) -> list[list[object]]:
    """Each budget's optimum predicted from the other budgets' line: how far off, and whether the bands meet."""
    rows = []
    for fit in h.hparams.fits:
        for loo in fit.loo:
            off = f"x{10**loo.error:.3g} ({loo.error:+.2f} decades)" if fit.scale.log else f"{loo.error:+.3g}"
            rows.append([fit.param, loo.budget, f"{_fit_value(fit, loo.predicted)} {_fit_band(fit, loo.low, loo.high)}",
                         f"{_fit_value(fit, loo.observed)} {_fit_band(fit, loo.observed_low, loo.observed_high)}", off,
                         "yes" if loo.within else "no"])  # fmt: skip
    return rows

def warm_start_lines(h: HorizonAnalysis) -> list[str]:
    """Where each warm-start trial ranked in its study, what it trained with and what was predicted."""
    if h.hparams is None:
        return []
    lines = []
    for w in h.hparams.warm_starts:
        used = ", ".join(f"{p} {fmt_value(v)}" for p, v in w.values.items())
        predicted = "; ".join(f"{p} {v:.3g} [{lo:.3g}, {hi:.3g}]" for p, (v, lo, hi) in w.predicted.items() if not _missing(v))
        if w.rank:
            where = f"val AUC {w.val_auc:.4f}, ranked {w.rank} of {w.complete} complete trials"
            where += {True: ", within its study's near-optimal band", False: ", below its study's near-optimal band",
                      None: ""}[w.near_optimal]  # fmt: skip
        else:
            where = f"{w.state}, not ranked"
        lines.append(f"{w.study} #{w.trial} (warm start: transfer): {where}; trained with {used}"
                     + (f" (predicted before snapping: {predicted})" if predicted else ""))  # fmt: skip
    return lines

def data_regime_lines(h: HorizonAnalysis) -> list[str]:
    """Per budget: training windows and unique ticker-days per parameter, and whether it is deep in
    the data-limited regime."""
    if h.hparams is None:
        return []
    lines = []
    for r in h.hparams.regime:
        if _missing(r.train_windows):
            lines.append(f"{r.budget}: {_params(r.params)} parameters; training windows not recorded ({r.study} predates the count)")
            continue
        line = (f"{r.budget} ({r.study}): {_params(r.params)} parameters, {r.train_windows:,.0f} training windows and "
                f"{r.ticker_days:,.0f} unique ticker-days: {r.train_windows / r.params:.3g} windows and "
                f"{r.days_per_param:.3g} ticker-days per parameter (one window per {r.params / r.train_windows:,.3g} parameters)")  # fmt: skip
        if r.data_limited:
            line += (f"; **deep in the data-limited regime**: {TOKENS_PER_PARAM / r.days_per_param:,.0f}x fewer ticker-days "
                     f"per parameter than the ~{TOKENS_PER_PARAM} tokens per parameter of a compute-optimal language model, "
                     "so a flat or falling curve here says more about the data than about the model")  # fmt: skip
        lines.append(line)
    return lines


# ----------------------------------------------------------------------------- one study


def study_budget(s: StudyAnalysis) -> str:
    return s.budget if s.group == s.budget else f"{s.group} (the {s.budget} grid standing in for {s.group.removeprefix('smoke-')})"

def best_config_rows(s: StudyAnalysis) -> list[list[object]]:
    keys = ["arch_idx", "grid_version", *CONFIG_COLUMNS, "d_ff", "params", "batch_size", "seed"]
    return [[k, s.best[k]] for k in keys]

def study_collapse_rows(s: StudyAnalysis) -> list[list[object]]:
    return [[_trial_ref(t), _auc(t["val_auc"]), _auc(t["pred_range"]), _auc(t["recall"])]
            for _, t in s.collapse.trials.head(20).iterrows()]  # fmt: skip

def importance_rows(s: StudyAnalysis) -> list[list[object]]:
    rows = []
    for r in s.importance.itertuples():
        share = 0 if math.isnan(r.eta_squared) else r.eta_squared
        rows.append([r.param, _auc(r.eta_squared), "█" * round(share * 30) or "·", r.values, r.trials])
    return rows

def trend_rows(t: Trend) -> list[list[object]]:
    return [[fmt_value(v.value), _auc(v.mean), _auc(v.std), int(v.count)] for v in t.table.itertuples()]

def coverage_headers(cov: Coverage) -> list[str]:
    return [f"{cov.row} \\ {cov.col}", *[fmt_value(c) for c in cov.counts.columns]]

def coverage_rows(cov: Coverage) -> list[list[object]]:
    """Counts per cell; `·` where the budget's grid has no architecture and no trial ran."""
    rows = []
    for r in cov.counts.index:
        cells = []
        for c in cov.counts.columns:
            n = int(cov.counts.loc[r, c])
            feasible = cov.feasible is None or bool(cov.feasible.loc[r, c])
            cells.append(str(n) if feasible or n else "·")
        rows.append([fmt_value(r), *cells])
    return rows

def extreme_rows(s: StudyAnalysis) -> list[list[object]]:
    planned = {True: "yes", False: "no", None: "n/a"}
    return [[fmt_value(e.trial), e.extreme_type, e.source, e.state, _auc(e.val_auc), e.d_model, e.n_layers, e.n_heads,
             e.d_ff_ratio, planned[e.as_planned]] for e in s.extremes.itertuples()]  # fmt: skip

def hparam_cells(g: Gaps, limit: int = 12) -> str:
    cells = ", ".join(f"({fmt_value(a)}, {fmt_value(b)})" for a, b in g.untried_hparam_cells[:limit])
    return cells + (" ..." if len(g.untried_hparam_cells) > limit else "")

def gap_cell_rows(g: Gaps, limit: int = 12) -> list[list[object]]:
    return [[fmt_value(d), fmt_value(n), ", ".join(map(str, idx))] for d, n, idx in g.untried_cells[:limit]]

def study_baseline_rows(s: StudyAnalysis) -> list[list[object]]:
    return [[b["baseline_model"], _auc(b["val_auc"]), _auc(b["test_auc"])] for _, b in s.baselines.iterrows()]


# ----------------------------------------------------------------------------- the Prefect table


def _plain(value: object) -> object:
    """JSON-safe: NaN to None, numpy scalars to Python."""
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value

def best_per_budget_rows(analysis: CampaignAnalysis) -> list[dict[str, object]]:
    """The best-per-budget table, one row per (horizon, budget), for a Prefect table artifact."""
    rows = []
    for h in analysis.horizons:
        for b in h.bests:
            row: dict[str, object] = {"horizon": f"h{h.horizon}", "budget": b.budget, "complete": b.complete}
            if b.best is not None:
                known = not math.isnan(b.interval.se)
                row.update(best_val_auc=round(b.interval.auc, 4),
                           ci_low=round(b.interval.low, 4) if known else None,
                           ci_high=round(b.interval.high, 4) if known else None,
                           ci_method=b.interval.method, trial=_trial_ref(b.best),
                           **{c: _plain(b.best[c]) for c in CONFIG_COLUMNS})  # fmt: skip
            if b.baseline is not None:
                row["best_baseline"] = f"{b.baseline['baseline_model']} {b.baseline['val_auc']:.4f}"
                row["vs_baseline"] = b.vs_baseline.verdict if b.vs_baseline else None
            selected = next((s for s in h.test.selected if s.budget == b.budget), None)
            scored = selected is not None and selected.predictions is not None
            row["test_auc"] = round(selected.test_auc, 4) if scored else None  # the seed mean
            row["seeds"] = len(selected.seeds) if scored else None
            row["seed_sd_test_auc"] = round(selected.seed_sd, 4) if scored and not math.isnan(selected.seed_sd) else None
            row["scaling_on_test"] = h.test.verdict
            rows.append({k: _plain(v) for k, v in row.items()})
    return rows


# ----------------------------------------------------------------------------- what the templates see

FILTERS = dict(auc=_auc, cell=_cell, anchor=_anchor, counts=_counts, fmt=fmt_value, values=_values)
GLOBALS = dict(
    bests_rows=bests_rows, ordering=ordering, pairs_rows=pairs_rows,
    baseline_verdict=baseline_verdict, consistency_rows=consistency_rows, collapse_rows=collapse_rows,
    study_budget=study_budget, best_config_rows=best_config_rows, study_collapse_rows=study_collapse_rows,
    importance_rows=importance_rows, trend_rows=trend_rows, coverage_rows=coverage_rows, extreme_rows=extreme_rows,
    figure_link=figure_link, trial_ref=_trial_ref, isnan=_missing, checklist_rows=checklist_rows,
    baseline_rows=baseline_rows, hparam_cells=hparam_cells, gap_cell_rows=gap_cell_rows,
    study_baseline_rows=study_baseline_rows, coverage_headers=coverage_headers, test_selected_rows=test_selected_rows,
    test_pair_rows=test_pair_rows, test_baseline_rows=test_baseline_rows, seed_lines=seed_lines, fit_sentence=fit_sentence, ALPHA=ALPHA,
    dataset_lines=dataset_lines, study_seed_line=study_seed_line,
    hparam_headers=hparam_headers, hparam_rows=hparam_rows, hparam_source_lines=hparam_source_lines,
    hparam_loo_rows=hparam_loo_rows, warm_start_lines=warm_start_lines, data_regime_lines=data_regime_lines,
    TOKENS_PER_PARAM=TOKENS_PER_PARAM, DATA_LIMITED_FACTOR=DATA_LIMITED_FACTOR, MIN_NEAR=MIN_NEAR,
    BOOTSTRAP_RESAMPLES=BOOTSTRAP_RESAMPLES,
    COLLAPSE_PRED_RANGE=COLLAPSE_PRED_RANGE, TREND_ALPHA=TREND_ALPHA, MIN_TREND_TRIALS=MIN_TREND_TRIALS, TOP_K=TOP_K,
)  # fmt: skip
