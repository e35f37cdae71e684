"""The cross-budget report at its edges: MLflow in (one paginated search), Markdown, HTML and
figures out, the report logged back to MLflow. The numbers come from `tasks.report.analysis`.

Reads MLflow only, through the search API: one `search_experiments` and one `search_runs` over
every study experiment (pages of 5,000 runs), never a call per run.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import markdown
import matplotlib
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import to_hex, to_rgb  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.entities import Run, ViewType  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from tasks.report.analysis import CampaignAnalysis  # noqa: E402
from tasks.report.budgets import TOP_K, HorizonAnalysis  # noqa: E402
from tasks.report.checklist import Check  # noqa: E402
from tasks.report.study import COLLAPSE_PRED_RANGE, MIN_TREND_TRIALS, TREND_ALPHA, Coverage, Gaps, StudyAnalysis, Trend  # noqa: E402
from tasks.report.table import budget_order, fmt_value  # noqa: E402
from schemas.config import StoreConfig  # noqa: E402
from tasks.report.verdicts import ALPHA, BOOTSTRAP_RESAMPLES, needed_predictions  # noqa: E402
from tasks.tracking.predictions import Predictions, download_predictions  # noqa: E402
from tasks.tracking.runs import get_or_create_experiment, mlflow_client, search_all_runs, start_run  # noqa: E402

REPORT_EXPERIMENT = "reports"
TAG_KIND_REPORT = "report"
CONFIG_COLUMNS = ("d_model", "n_layers", "n_heads", "d_ff_ratio", "learning_rate", "dropout", "weight_decay")
BUDGET_COLOURS = {"smoke": "#7f7f7f", "2M": "#1f77b4", "20M": "#ff7f0e", "200M": "#2ca02c", "2B": "#d62728"}


# ----------------------------------------------------------------------------- MLflow in


def runs_frame(runs: list[Run], experiment_names: dict[str, str]) -> pd.DataFrame:
    """One row per run: its params, latest metrics and tags (MLflow's own `mlflow.*` tags left
    out) as columns, beside run_id, experiment, run_name, status and start_time."""
    rows = []
    for run in runs:
        info, data = run.info, run.data
        row: dict[str, object] = dict(data.params)
        row.update({k: v for k, v in data.tags.items() if not k.startswith("mlflow.")})
        row.update(data.metrics)
        row.update(
            run_id=info.run_id,
            experiment=experiment_names.get(info.experiment_id, info.experiment_id),
            run_name=info.run_name,
            status=info.status,
            start_time=info.start_time,
        )
        rows.append(row)
    return pd.DataFrame(rows)


def query_runs(stores: StoreConfig) -> pd.DataFrame:
    """Every run of every experiment but the reports', as a frame (one search over them all)."""
    client = mlflow_client(stores)
    experiments, token = [], None
    while True:
        page = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
        experiments.extend(page)
        token = page.token
        if not token:
            break
    names = {e.experiment_id: e.name for e in experiments if e.name != REPORT_EXPERIMENT}
    if not names:
        return pd.DataFrame()
    return runs_frame(search_all_runs(client, list(names)), names)


def load_predictions(stores: StoreConfig, analysis: CampaignAnalysis) -> dict[str, Predictions | str]:
    """The test scores the verdicts need (each budget's selected trial and the best baseline per
    horizon, where tagged as logged): run id -> Predictions, or why they could not be read."""
    client = mlflow_client(stores)
    found: dict[str, Predictions | str] = {}
    for run_id in needed_predictions(analysis.horizons):
        try:
            found[run_id] = download_predictions(client, run_id, "test")
        except Exception as exc:  # noqa: BLE001 - a missing or corrupt file makes its verdict undetermined, says why
            found[run_id] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    return found


# ----------------------------------------------------------------------------- figures


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _colour(group: str) -> str:
    """One colour per budget group; a smoke stand-in gets a lighter shade of its budget's."""
    base = group.removeprefix("smoke-")
    colour = BUDGET_COLOURS.get(base, "#9467bd")
    return to_hex([0.5 + 0.5 * c for c in to_rgb(colour)]) if base != group else colour


def _count_label(value: float, _position: int) -> str:
    """1e6 -> 1M, 2e7 -> 20M, 3e4 -> 30k."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def plot_auc_vs_params(analysis: CampaignAnalysis, path: Path) -> Path | None:
    """Val AUC of every complete trial against its exact parameter count (log x), one panel per
    horizon, the best of each budget with its 95% interval, the best baseline as a line; the
    selected configurations' test AUCs with the fitted scaling curve and its 95% band."""
    done = analysis.runs[analysis.runs["complete"] & analysis.runs["params"].notna()]
    if done.empty:
        return None
    horizons = [h for h in analysis.horizons if (done["horizon"] == h.horizon).any()]
    fig, axes = plt.subplots(1, len(horizons), figsize=(6 * len(horizons), 4.5), squeeze=False, sharey=True)
    for ax, h in zip(axes[0], horizons):
        at = done[done["horizon"] == h.horizon]
        for budget in budget_order(at["budget_group"].dropna().unique()):
            group = at[at["budget_group"] == budget]
            ax.scatter(group["params"], group["val_auc"], s=14, alpha=0.45, color=_colour(budget), label=budget)
        for b in h.bests:
            if b.best is None or math.isnan(b.best["params"]):
                continue
            err = None if math.isnan(b.interval.se) else [[b.interval.auc - b.interval.low], [b.interval.high - b.interval.auc]]
            ax.errorbar(b.best["params"], b.interval.auc, yerr=err, fmt="*", ms=13, capsize=4,
                        color=_colour(b.budget), markeredgecolor="black")  # fmt: skip
        _draw_test_fit(ax, h)
        for _, base in h.baselines.head(1).iterrows():
            ax.axhline(base["val_auc"], color="black", ls="--", lw=1)
            ax.annotate(f"best baseline: {base['baseline_model']} {base['val_auc']:.4f}", (0.01, base["val_auc"]),
                        xycoords=("axes fraction", "data"), va="bottom", fontsize=8)  # fmt: skip
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(_count_label))
        ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        ax.xaxis.set_minor_formatter(FuncFormatter(_count_label))
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel("parameters (exact count, log scale)")
        ax.set_title(f"h{h.horizon}: scaling law on test {h.test.verdict}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0][0].set_ylabel("AUC (dots, stars: val, selection-biased; diamonds: test)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _draw_test_fit(ax, h: HorizonAnalysis) -> None:
    """Each selected configuration's test AUC (diamonds), the fitted line and its 95% band."""
    for s in h.test.selected:
        if s.predictions is not None and not math.isnan(s.params):
            ax.scatter(s.params, s.test_auc, marker="D", s=60, color=_colour(s.budget), edgecolor="black", zorder=5,
                       label=f"{s.budget} selected, test")  # fmt: skip
    fit = h.test.fit
    if fit is None:
        return
    x = 10**fit.band_x
    ax.plot(x, fit.intercept + fit.slope * fit.band_x, color="black", lw=1.2,
            label=f"test fit: {fit.slope:+.4f}/decade [{fit.slope_low:+.4f}, {fit.slope_high:+.4f}]")  # fmt: skip
    ax.fill_between(x, fit.band_low, fit.band_high, color="black", alpha=0.12, lw=0)


def plot_trends(study: StudyAnalysis, trials: pd.DataFrame, path: Path) -> Path | None:
    """Per parameter: every complete trial's AUC by value (jittered) and the mean +- std per value."""
    trends = [t for t in study.trends if len(t.table)]
    if not trends:
        return None
    cols = 4
    rows = math.ceil(len(trends) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False, sharey=True)
    rng = np.random.default_rng(0)
    done = trials[trials["complete"]]
    for ax, trend in zip(axes.flat, trends):
        values = list(trend.table["value"])
        position = {v: i for i, v in enumerate(values)}
        points = done[done[trend.param].notna()]
        x = points[trend.param].map(position).to_numpy(dtype=float) + rng.uniform(-0.15, 0.15, len(points))
        ax.scatter(x, points["val_auc"], s=9, alpha=0.4, color="#1f77b4")
        ax.errorbar(range(len(values)), trend.table["mean"], yerr=trend.table["std"].fillna(0), color="#d62728",
                    marker="o", ms=4, capsize=3, lw=1.2)  # fmt: skip
        ax.set_xticks(range(len(values)), [fmt_value(v) for v in values], rotation=45 if len(values) > 6 else 0, fontsize=8)
        ax.set_xlim(-0.5, len(values) - 0.5)
        rho = "" if math.isnan(trend.rho) else f", rho={trend.rho:+.2f}"
        ax.set_title(f"{trend.param}: {trend.label}{rho}", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(trends):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("val AUC")
    fig.suptitle(f"{study.name}: val AUC by parameter value (red: mean +- std)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_coverage(study: StudyAnalysis, path: Path) -> Path:
    """The coverage matrices as heatmaps; grey cells have no architecture in the budget's grid."""
    widths = [max(3.0, 0.45 * c.counts.shape[1] + 1.5) for c in study.coverage]
    fig, axes = plt.subplots(1, len(study.coverage), figsize=(sum(widths), 4.2), gridspec_kw={"width_ratios": widths})
    for ax, cov in zip(np.atleast_1d(axes), study.coverage):
        counts = cov.counts.to_numpy(dtype=float)
        shown = np.ma.masked_where(~cov.feasible.to_numpy(dtype=bool), counts) if cov.feasible is not None else counts
        cmap = plt.get_cmap("Blues").with_extremes(bad="#d9d9d9")
        ax.imshow(shown, cmap=cmap, aspect="auto", vmin=0, vmax=max(1.0, counts.max()))
        for (i, j), n in np.ndenumerate(counts):
            feasible = cov.feasible is None or bool(cov.feasible.iat[i, j])
            if feasible or n:
                ax.text(j, i, str(int(n)), ha="center", va="center", fontsize=7,
                        color="white" if n > counts.max() / 2 else "black")  # fmt: skip
        ax.set_xticks(range(counts.shape[1]), [fmt_value(v) for v in cov.counts.columns], fontsize=7, rotation=90)
        ax.set_yticks(range(counts.shape[0]), [fmt_value(v) for v in cov.counts.index], fontsize=7)
        ax.set_xlabel(cov.col)
        ax.set_ylabel(cov.row)
    fig.suptitle(f"{study.name}: complete trials per combination (grey: not in the grid)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_figures(analysis: CampaignAnalysis, folder: Path) -> dict[str, Path]:
    """Every figure, keyed `auc_vs_params`, `<study>/trends`, `<study>/coverage`."""
    folder.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Path] = {}
    overall = plot_auc_vs_params(analysis, folder / "auc_vs_params.png")
    if overall:
        figures["auc_vs_params"] = overall
    for study in analysis.studies:
        trials = analysis.runs[(analysis.runs["study"] == study.name) & (analysis.runs["run_kind"] == "trial")]
        trends = plot_trends(study, trials, folder / f"{_safe(study.name)}_trends.png")
        if trends:
            figures[f"{study.name}/trends"] = trends
        figures[f"{study.name}/coverage"] = plot_coverage(study, folder / f"{_safe(study.name)}_coverage.png")
    return figures


# ----------------------------------------------------------------------------- Markdown and HTML
#
# The report's prose and layout live in `templates/report.md.j2` (and the HTML page around it in
# `report.html.j2`); here are the filters the templates format numbers with and the functions that
# turn the analysis into table rows. A new report section: its numbers in `analysis.py`, its rows
# here, its words in the template.

TEMPLATES = Environment(
    loader=PackageLoader("tasks.report", "templates"),
    autoescape=select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


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


def _counts(mapping: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in mapping.items()) or "none"


def _ci(interval) -> str:
    if interval is None or math.isnan(interval.se):
        return "n/a"
    return f"[{interval.low:.4f}, {interval.high:.4f}]"


def _vs(comparison, higher: str, lower: str) -> str:
    if comparison is None:
        return "n/a"
    words = {"higher": higher, "lower": lower, "not distinguishable": "not distinguishable"}[comparison.verdict]
    return f"{words} ({comparison.diff:+.4f}, CI [{comparison.low:+.4f}, {comparison.high:+.4f}])"


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


def _trial_ref(t: pd.Series) -> str:
    number = "?" if math.isnan(t["trial_number"]) else fmt_value(t["trial_number"])
    return f"{t['study']} #{number} ({t['source'] or 'unknown'})"


def _and(items: list[str]) -> str:
    return ", ".join(items)


def checklist_rows(checks: list[Check]) -> list[list[object]]:
    marks = {"pass": "**pass**", "fail": "**FAIL**", "n/a": "n/a"}
    return [[marks[c.status], c.item, c.evidence] for c in checks]


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


def spread_methods(h: HorizonAnalysis) -> list[str]:
    """The interval methods other than Hanley-McNeil among the budgets compared at `h`."""
    compared = [b for b in h.bests if b.best is not None]
    methods = sorted({b.interval.method for b in compared if b.interval.method != "Hanley-McNeil"})
    return methods if len(compared) > 1 else []


def pairs_rows(h: HorizonAnalysis) -> list[list[object]]:
    return [[p.smaller, p.larger, f"{p.diff:+.4f}",
             "n/a" if math.isnan(p.low) else f"[{p.low:+.4f}, {p.high:+.4f}]",
             {"higher": "larger is better", "lower": "smaller is better"}.get(p.verdict, p.verdict)]
            for p in h.scaling.pairs.itertuples()]  # fmt: skip


def baseline_verdict(h: HorizonAnalysis) -> dict[str, object] | None:
    """The best baseline and the budgets beating it / below it; None without a comparison."""
    with_runs = [b for b in h.bests if b.vs_baseline is not None]
    if h.baselines.empty or not with_runs:
        return None
    return {
        "top": h.baselines.iloc[0],
        "beating": [b.budget for b in with_runs if b.vs_baseline.verdict == "higher"],
        "below": [b.budget for b in with_runs if b.vs_baseline.verdict == "lower"],
    }


def baseline_rows(h: HorizonAnalysis) -> list[list[object]]:
    return [[b["baseline_model"], _auc(b["val_auc"]), _auc(b["test_auc"]), b["study"]] for _, b in h.baselines.iterrows()]


def consistency_rows(h: HorizonAnalysis) -> list[list[object]]:
    return [[c.param, c.verdict,
             ", ".join(f"{k}: {fmt_value(v)}" for k, v in c.best_trial.items()) or "n/a",
             ", ".join(f"{k}: {fmt_value(v)}" for k, v in c.best_mean.items()) or "n/a"]
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


def _p(value: float) -> str:
    return "n/a" if _missing(value) else ("< 0.0001" if value < 1e-4 else f"{value:.4f}")


def _signed_ci(test) -> str:
    return f"[{test.low:+.4f}, {test.high:+.4f}]"


_PAIR_WORDS = {"higher": "larger is better", "lower": "smaller is better"}


def test_selected_rows(h: HorizonAnalysis) -> list[list[object]]:
    """Per budget: the configuration selected on val, its (biased) val AUC and its test AUC."""
    rows = []
    for s in h.test.selected + ([h.test.baseline] if h.test.baseline else []):
        scores = "missing" if s.predictions is None else f"{len(s.predictions.scores)} windows ({s.predictions.windows_sha256[:8]})"
        if s.predictions is not None and s.run.get("scores_note"):
            scores += f"; {s.run['scores_note']}"
        rows.append([s.budget if s.run["run_kind"] != "baseline" else f"baseline: {s.budget}",
                     _trial_ref(s.run) if s.run["run_kind"] == "trial" else s.run["study"], _params(s.params),
                     _auc(s.run["val_auc"]), _auc(s.test_auc), scores])  # fmt: skip
    return rows


def _params(count: float) -> str:
    """1559120 -> 1.56M."""
    if _missing(count):
        return "n/a"
    scale, suffix = next(((v, x) for v, x in ((1e9, "B"), (1e6, "M"), (1e3, "k")) if count >= v), (1, ""))
    return f"{count / scale:.3g}{suffix}"


def _paired_row(first: str, second: str, p, words: dict[str, str]) -> list[object]:
    """One paired comparison's row: the two names, Δ, CI, p, Holm p and the verdict in words."""
    if p.test is None:
        return [first, second, "n/a", "n/a", "n/a", "n/a", f"undetermined: {p.note}"]
    return [first, second, f"{p.test.diff:+.4f}", _signed_ci(p.test), _p(p.test.p_value), _p(p.p_holm),
            words.get(p.verdict, p.verdict)]  # fmt: skip


def test_pair_rows(h: HorizonAnalysis) -> list[list[object]]:
    """Smaller budget, larger budget, then the comparison of larger - smaller."""
    return [_paired_row(p.b, p.a, p, _PAIR_WORDS) for p in h.test.pairs]


def test_baseline_rows(h: HorizonAnalysis) -> list[list[object]]:
    """Budget, baseline, then the comparison of budget - baseline."""
    words = {"higher": "beats the baseline", "lower": "below the baseline"}
    return [_paired_row(p.a, p.b, p, words) for p in h.test.vs_baseline]


def fit_sentence(h: HorizonAnalysis) -> str:
    fit = h.test.fit
    if fit is None:
        return f"Scaling curve: not fitted ({h.test.fit_note})."
    n = len(h.test.selected[0].predictions.scores) if h.test.selected and h.test.selected[0].predictions else 0
    return (f"Scaling curve ({h.test.fit_note}): test AUC = {fit.intercept:.4f} {'+' if fit.slope >= 0 else '-'} "
            f"{abs(fit.slope):.4f} x log10(parameters); **slope {fit.slope:+.4f} per tenfold parameters, 95% band "
            f"[{fit.slope_low:+.4f}, {fit.slope_high:+.4f}]** (paired bootstrap, {fit.resamples} resamples of the "
            f"{n} test windows).")  # fmt: skip


def figure_link(figures: dict[str, Path] | None, key: str, base: Path | None) -> str:
    """The figure's path relative to `base`; empty when the report has no such figure."""
    if not figures or key not in figures:
        return ""
    path = figures[key]
    return path.relative_to(base).as_posix() if base else path.name


def _values(values: list[object]) -> str:
    return ", ".join(fmt_value(v) for v in values)


TEMPLATES.filters.update(auc=_auc, cell=_cell, ci=_ci, anchor=_anchor, counts=_counts, fmt=fmt_value, values=_values)
TEMPLATES.globals.update(
    bests_rows=bests_rows, ordering=ordering, spread_methods=spread_methods, pairs_rows=pairs_rows,
    baseline_verdict=baseline_verdict, consistency_rows=consistency_rows, collapse_rows=collapse_rows,
    study_budget=study_budget, best_config_rows=best_config_rows, study_collapse_rows=study_collapse_rows,
    importance_rows=importance_rows, trend_rows=trend_rows, coverage_rows=coverage_rows, extreme_rows=extreme_rows,
    figure_link=figure_link, trial_ref=_trial_ref, isnan=_missing, checklist_rows=checklist_rows,
    baseline_rows=baseline_rows, hparam_cells=hparam_cells, gap_cell_rows=gap_cell_rows,
    study_baseline_rows=study_baseline_rows, coverage_headers=coverage_headers, test_selected_rows=test_selected_rows,
    test_pair_rows=test_pair_rows, test_baseline_rows=test_baseline_rows, fit_sentence=fit_sentence, ALPHA=ALPHA,
    BOOTSTRAP_RESAMPLES=BOOTSTRAP_RESAMPLES,
    COLLAPSE_PRED_RANGE=COLLAPSE_PRED_RANGE, TREND_ALPHA=TREND_ALPHA, MIN_TREND_TRIALS=MIN_TREND_TRIALS, TOP_K=TOP_K,
)  # fmt: skip


def render_markdown(analysis: CampaignAnalysis, source: str = "", figures: dict[str, Path] | None = None,
                    base: Path | None = None, generated: datetime | None = None) -> str:
    """The whole report. `figures` (from `write_figures`) are linked relative to `base`; without
    them the report has no images (the Prefect artifact)."""
    runs = analysis.runs
    trials = runs[runs["run_kind"] == "trial"]
    counts = {
        "trials": len(trials),
        "complete": int(trials["complete"].sum()),
        "pruned": int((trials["state"] == "pruned").sum()),
        "failed": int((trials["state"] == "failed").sum()),
        "incomplete": int((trials["state"] == "incomplete").sum()),
        "baselines": int((runs["run_kind"] == "baseline").sum()),
    }
    sections = ["Verification checklist"] + [f"Horizon h{h.horizon}" for h in analysis.horizons]
    sections += [f"Study {s.name}" for s in analysis.studies] + ["Methods"]
    text = TEMPLATES.get_template("report.md.j2").render(
        a=analysis, runs=runs, counts=counts, source=source, sections=sections, figures=figures, base=base,
        stamp=(generated or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC"),
    )  # fmt: skip
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n") + "\n"


_NUMERIC_CELL = re.compile(r"<td>([-+]?(?:\d[\d.,e+-]*|n/a|\[[-+\d., ]+\]|\d+/\d+))</td>")


def render_html(markdown_text: str, title: str = "Cross-budget HPO report") -> str:
    """The Markdown report as one self-contained HTML page (figures linked, not embedded)."""
    body = markdown.markdown(markdown_text, extensions=["tables", "toc", "sane_lists"], output_format="html")
    body = _NUMERIC_CELL.sub(r'<td class="num">\1</td>', body)
    return TEMPLATES.get_template("report.html.j2").render(title=title, body=Markup(body))


# ----------------------------------------------------------------------------- files and MLflow out


@dataclass
class ReportFiles:
    out: Path
    markdown: Path
    html: Path
    runs_csv: Path
    figures: dict[str, Path] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def write_report(analysis: CampaignAnalysis, out: Path, source: str = "") -> ReportFiles:
    """report.md, report.html, runs.csv and figures/*.png under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    figures = write_figures(analysis, out / "figures")
    plotted = time.perf_counter()
    text = render_markdown(analysis, source, figures, base=out)
    files = ReportFiles(out, out / "report.md", out / "report.html", out / "runs.csv", figures)
    files.markdown.write_text(text, encoding="utf-8")
    files.html.write_text(render_html(text), encoding="utf-8")
    analysis.runs.drop(columns=["complete"]).to_csv(files.runs_csv, index=False)
    files.seconds = {"figures": plotted - started, "render": time.perf_counter() - plotted}
    return files


def log_report(stores: StoreConfig, files: ReportFiles) -> str:
    """The report folder as the artifacts of a run in the `reports` experiment; the run id."""
    client: MlflowClient = mlflow_client(stores)
    experiment_id = get_or_create_experiment(client, REPORT_EXPERIMENT, stores.artifact_root)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    run_id = start_run(client, experiment_id, run_kind=TAG_KIND_REPORT, source="report",
                       name=f"cross-budget report {stamp}", study=None, parent_run_id=None)
    client.log_artifacts(run_id, str(files.out))
    client.set_terminated(run_id, "FINISHED")
    return run_id


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
            row["test_auc"] = None if selected is None else round(selected.test_auc, 4) if selected.predictions else None
            row["scaling_on_test"] = h.test.verdict
            rows.append({k: _plain(v) for k, v in row.items()})
    return rows
