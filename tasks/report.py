"""The cross-budget report at its edges: MLflow in (one paginated search), Markdown, HTML and
figures out, the report logged back to MLflow. The numbers come from `tasks.analysis`.

Reads MLflow only, through the search API: one `search_experiments` and one `search_runs` over
every study experiment (pages of 5,000 runs), never a call per run.
"""

from __future__ import annotations

import html
import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import to_hex, to_rgb  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.entities import Run, ViewType  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from tasks.analysis import (  # noqa: E402
    COLLAPSE_PRED_RANGE,
    MIN_TREND_TRIALS,
    TOP_K,
    TREND_ALPHA,
    CampaignAnalysis,
    Check,
    CollapseSummary,
    Coverage,
    HorizonAnalysis,
    StudyAnalysis,
    budget_order,
    fmt_value,
)
from schemas.config import StoreConfig  # noqa: E402
from tasks.tracking import get_or_create_experiment, mlflow_client, search_all_runs  # noqa: E402

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
    horizon, the best of each budget with its 95% interval, the best baseline as a line."""
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
        ax.set_title(f"h{h.horizon}: {h.scaling.verdict}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0][0].set_ylabel("val AUC (stars: best per budget, 95% CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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


# ----------------------------------------------------------------------------- Markdown


def _auc(value: object) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _cell(value: object) -> str:
    text = fmt_value(value) if isinstance(value, (float, int, np.floating, np.integer)) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def md_table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


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


def render_checklist(checks: list[Check]) -> str:
    marks = {"pass": "**pass**", "fail": "**FAIL**", "n/a": "n/a"}
    out = [md_table(["Status", "Item", "Evidence"], [[marks[c.status], c.item, c.evidence] for c in checks])]
    for c in checks:
        if c.details:
            out.append(f"\n**{c.item}**\n\n" + "\n".join(f"- {d}" for d in c.details))
    return "\n".join(out)


def render_bests(h: HorizonAnalysis, runs: pd.DataFrame) -> str:
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
    headers = ["Budget", "Complete/trials", "Best val AUC", "95% CI", "vs best baseline", "Test AUC", "Trial", *CONFIG_COLUMNS, "CI method"]
    return md_table(headers, rows)


def render_scaling(h: HorizonAnalysis) -> str:
    s = h.scaling
    out = [f"**Scaling law {s.verdict.upper()}** at h{h.horizon}: {s.reason}."]
    ordering = [b for b in h.bests if b.best is not None]
    if ordering:
        ranked = sorted(ordering, key=lambda b: -b.interval.auc)
        text = f"{ranked[0].budget} ({ranked[0].interval.auc:.4f})"
        for before, b in zip(ranked, ranked[1:]):
            text += f" {'=' if b.interval.auc == before.interval.auc else '>'} {b.budget} ({b.interval.auc:.4f})"
        out.append(f"Ordering by best val AUC: {text}.")
    spread = sorted({b.interval.method for b in ordering if b.interval.method != "Hanley-McNeil"})
    if spread and len(ordering) > 1:
        out.append(f"Caution: intervals from {', '.join(spread)} (the validation class counts `val_n_pos`/`val_n_neg` "
                   "are not logged at this horizon): they miss the evaluation-set noise and are too narrow, so a "
                   "verdict other than \"not distinguishable\" may be overconfident.")  # fmt: skip
    if len(s.pairs):
        rows = [[p.smaller, p.larger, f"{p.diff:+.4f}",
                 "n/a" if math.isnan(p.low) else f"[{p.low:+.4f}, {p.high:+.4f}]",
                 {"higher": "larger is better", "lower": "smaller is better"}.get(p.verdict, p.verdict)]
                for p in s.pairs.itertuples()]  # fmt: skip
        out.append(md_table(["Smaller", "Larger", "Δ AUC (larger - smaller)", "95% CI", "Verdict"], rows))
    return "\n\n".join(out)


def render_baselines(h: HorizonAnalysis) -> str:
    if h.baselines.empty:
        return f"No baseline runs at h{h.horizon} (run `hpo baselines`): transformers are compared with nothing."
    rows = [[b["baseline_model"], _auc(b["val_auc"]), _auc(b["test_auc"]), b["study"]] for _, b in h.baselines.iterrows()]
    out = [md_table(["Baseline", "Val AUC", "Test AUC", "Study"], rows)]
    with_runs = [b for b in h.bests if b.vs_baseline is not None]
    if with_runs:
        top = h.baselines.iloc[0]
        beating = [b.budget for b in with_runs if b.vs_baseline.verdict == "higher"]
        below = [b.budget for b in with_runs if b.vs_baseline.verdict == "lower"]
        if not beating:
            out.append(f"**No budget's best transformer beats the best baseline** ({top['baseline_model']}, val AUC "
                       f"{top['val_auc']:.4f}) beyond the 95% interval"
                       + (f"; {', '.join(below)} {'is' if len(below) == 1 else 'are'} below it." if below else "."))  # fmt: skip
        else:
            out.append(f"Beating the best baseline ({top['baseline_model']}, {top['val_auc']:.4f}) beyond the 95% "
                       f"interval: {', '.join(beating)}.")  # fmt: skip
    return "\n\n".join(out)


def render_consistency(h: HorizonAnalysis) -> str:
    if h.consistency.empty:
        return ""
    rows = [[c.param, c.verdict,
             ", ".join(f"{k}: {fmt_value(v)}" for k, v in c.best_trial.items()) or "n/a",
             ", ".join(f"{k}: {fmt_value(v)}" for k, v in c.best_mean.items()) or "n/a"]
            for c in h.consistency.itertuples()]  # fmt: skip
    return md_table(["Parameter", "Verdict", "Best trial's value", "Best-mean value"], rows)


def _collapse_row(name: str, c: CollapseSummary) -> list[object]:
    best = "n/a" if c.best_collapsed is None else ("yes" if c.best_collapsed else "no")
    return [name, f"{c.collapsed}/{c.checked}", c.narrow, c.one_class, _auc(c.mean_pred_range), _auc(c.mean_recall), best]


def render_collapse_by_budget(h: HorizonAnalysis) -> str:
    with_trials = {b.budget for b in h.bests if b.trials}
    rows = [_collapse_row(b, c) for b, c in h.collapse.items() if b in with_trials]
    if not rows:
        return "No complete trials."
    return md_table(["Budget", "Collapsed/checked", "Narrow range", "One class", "Mean pred range", "Mean recall", "Best trial collapsed"], rows)


def _figure(figures: dict[str, Path] | None, key: str, alt: str, base: Path | None) -> str:
    if not figures or key not in figures:
        return ""
    path = figures[key]
    link = path.relative_to(base).as_posix() if base else path.name
    return f"![{alt}]({link})\n"


def render_study(s: StudyAnalysis, figures: dict[str, Path] | None, base: Path | None) -> str:
    sm = s.summary
    budget = s.budget if s.group == s.budget else f"{s.group} (the {s.budget} grid standing in for {s.group.removeprefix('smoke-')})"
    out = [f"## Study {s.name}", f"Budget {budget}, horizon h{s.horizon}, version {s.version}.", "### Summary"]
    bullets = [
        f"Trial runs: {sm['trials']} ({_counts(sm['by_source'])}); complete {sm['complete']}, failed {sm['failed']}, incomplete {sm['incomplete']}",
        f"Best val AUC: {_auc(sm['best_auc'])}; mean {_auc(sm['mean_auc'])}; median {_auc(sm['median_auc'])}; std {_auc(sm['std_auc'])}",
        f"n_heads: {_counts(sm['n_heads_source'])}",
        f"Training time of complete trials: {sm['train_hours']:.2f} h",
    ]
    if sm["failure_kinds"]:
        bullets.append("Failures: " + _counts(sm["failure_kinds"]))
    if s.study_run is not None:
        p = s.study_run
        bullets.append(f"Study run: best val AUC {_auc(p['best_val_auc'])}, best test AUC {_auc(p['best_test_auc'])}, "
                       f"n_complete {fmt_value(p['n_complete'])}, n_failed {fmt_value(p['n_failed'])}")  # fmt: skip
    out.append("\n".join(f"- {b}" for b in bullets))

    out.append("### Best configuration")
    if s.best is None:
        out.append("No complete trial.")
    else:
        b = s.best
        keys = ["arch_idx", "grid_version", *CONFIG_COLUMNS, "d_ff", "params", "batch_size", "seed"]
        out.append(f"{_trial_ref(b)}, val AUC {_auc(b['val_auc'])}, run `{b['run_id']}`\n\n" +
                   md_table(["Parameter", "Value"], [[k, b[k]] for k in keys]))  # fmt: skip

    out.append("### Probability collapse")
    c = s.collapse
    out.append(f"Rule: pred_range < {COLLAPSE_PRED_RANGE} or recall 0 or 1. Checked {c.checked} complete trials: "
               f"{c.collapsed} collapsed ({c.narrow} narrow range, {c.one_class} one class); mean pred range "
               f"{_auc(c.mean_pred_range)}, mean recall {_auc(c.mean_recall)}.")  # fmt: skip
    if c.detected:
        rows = [[_trial_ref(t), _auc(t["val_auc"]), _auc(t["pred_range"]), _auc(t["recall"])] for _, t in c.trials.head(20).iterrows()]
        out.append(md_table(["Trial", "Val AUC", "Pred range", "Recall"], rows))
    else:
        out.append("No probability collapse detected." if c.checked else "Not assessable: no pred_range or recall logged.")

    out.append("### Parameter importance\n\nFraction of val AUC variance explained by each parameter (eta squared).")
    rows = []
    for r in s.importance.itertuples():
        share = 0 if math.isnan(r.eta_squared) else r.eta_squared
        rows.append([r.param, "n/a" if math.isnan(r.eta_squared) else f"{r.eta_squared:.4f}", "█" * round(share * 30) or "·", r.values, r.trials])
    out.append(md_table(["Parameter", "Eta squared", "", "Values", "Trials"], rows))

    out.append("### Parameter trends")
    out.append(_figure(figures, f"{s.name}/trends", f"{s.name} parameter trends", base))
    for t in s.trends:
        rho = "" if math.isnan(t.rho) else f" (rho {t.rho:+.3f}, p {t.p_value:.3g})"
        lines = [f"**{t.param}**: {t.label}{rho}"]
        if len(t.table) > 1:
            lines.append(f"best value {fmt_value(t.best['value'])} (mean {_auc(t.best['mean'])}), "
                         f"worst {fmt_value(t.worst['value'])} (mean {_auc(t.worst['mean'])})")  # fmt: skip
        table = md_table(["Value", "Mean AUC", "Std", "Count"],
                         [[fmt_value(v.value), _auc(v.mean), _auc(v.std), int(v.count)] for v in t.table.itertuples()])  # fmt: skip
        out.append("; ".join(lines) + "\n\n" + table)

    out.append("### Coverage\n\nComplete trials per combination; `·` marks a combination the budget's grid does not have.")
    out.append(_figure(figures, f"{s.name}/coverage", f"{s.name} coverage", base))
    for cov in s.coverage:
        out.append(f"**{cov.row} x {cov.col}**\n\n" + _coverage_table(cov))

    out.append("### Forced-extreme trials")
    if s.extremes.empty:
        out.append("No trial carries a forced-extreme tag.")
    else:
        planned = {True: "yes", False: "no", None: "n/a"}
        rows = [[fmt_value(e.trial), e.extreme_type, e.source, e.state, _auc(e.val_auc), e.d_model, e.n_layers, e.n_heads,
                 e.d_ff_ratio, planned[e.as_planned]] for e in s.extremes.itertuples()]  # fmt: skip
        out.append(md_table(["Trial", "Extreme", "Source", "State", "Val AUC", "d_model", "n_layers", "n_heads", "d_ff_ratio", "Grid rule's pick"], rows))

    out.append("### Gaps\n\n" + render_gaps(s))
    if len(s.baselines):
        out.append("### Baselines in this study")
        out.append(md_table(["Baseline", "Val AUC", "Test AUC"],
                            [[b["baseline_model"], _auc(b["val_auc"]), _auc(b["test_auc"])] for _, b in s.baselines.iterrows()]))  # fmt: skip
    return "\n\n".join(x for x in out if x)


def _coverage_table(cov: Coverage) -> str:
    rows = []
    for r in cov.counts.index:
        cells = []
        for c in cov.counts.columns:
            n = int(cov.counts.loc[r, c])
            feasible = cov.feasible is None or bool(cov.feasible.loc[r, c])
            cells.append(str(n) if feasible or n else "·")
        rows.append([fmt_value(r), *cells])
    return md_table([f"{cov.row} \\ {cov.col}", *[fmt_value(c) for c in cov.counts.columns]], rows)


def render_gaps(s: StudyAnalysis, limit: int = 12) -> str:
    g = s.gaps
    lines = [f"Against the {s.budget} grid version {g.grid_version}: {g.archs_tried} of {g.archs_total} architectures completed.\n"]
    untried = {p: v for p, v in g.untried_values.items() if v}
    if untried:
        lines += [f"- {p} never completed: {', '.join(fmt_value(x) for x in v)}" for p, v in untried.items()]
    else:
        lines.append("- every grid and search value has at least one complete trial")
    if g.untried_archs:
        lines.append(f"- architectures never completed: arch_idx {', '.join(map(str, g.untried_archs[:30]))}"
                     + (f" and {len(g.untried_archs) - 30} more" if len(g.untried_archs) > 30 else ""))  # fmt: skip
    if g.untried_hparam_cells:
        lines.append(f"- {len(g.untried_hparam_cells)} of {g.hparam_cells} learning_rate x dropout combinations never completed: "
                     + ", ".join(f"({fmt_value(a)}, {fmt_value(b)})" for a, b in g.untried_hparam_cells[:limit])
                     + (" ..." if len(g.untried_hparam_cells) > limit else ""))  # fmt: skip
    if g.untried_cells:
        lines.append(f"\n{len(g.untried_cells)} d_model x n_layers regions of the grid have no complete trial; candidates "
                     f"for supplemental trials" + (f" (the first {limit})" if len(g.untried_cells) > limit else "") + ":\n")  # fmt: skip
        rows = [[fmt_value(d), fmt_value(n), ", ".join(map(str, idx))] for d, n, idx in g.untried_cells[:limit]]
        lines.append(md_table(["d_model", "n_layers", "arch_idx in the grid"], rows))
    return "\n".join(lines)


METHODS = f"""## Methods

- **Trials.** A complete trial is a `run_kind=trial` run with `state=complete` and a finite `val_auc`.
  Statistics are over complete trials of every source (hpo, supplemental, legacy); failed and
  incomplete trials are counted only. Baseline runs are never trials.
- **Probability collapse.** A complete trial collapsed when its validation predictions span less
  than {COLLAPSE_PRED_RANGE} (`pred_range`) or when the 0.5 threshold puts every validation window
  in one class (`recall` 0 or 1).
- **Parameter importance.** Eta squared of val AUC grouped by the parameter's value:
  between-group sum of squares over total sum of squares, each parameter on its own. It is
  inflated for parameters with many values and few trials.
- **Trends.** Spearman's rho between the parameter's value and val AUC over complete trials:
  increasing (rho > 0) or decreasing (rho < 0) when p < {TREND_ALPHA}, flat otherwise; n/a with
  one value or fewer than {MIN_TREND_TRIALS} trials.
- **Confidence intervals.** AUC ± 1.96 SE. SE is Hanley and McNeil's (1982) from the validation
  split's class counts (`val_n_pos`, `val_n_neg`) when logged; otherwise the standard deviation of
  the top {TOP_K} complete trials of the budget at that horizon ("top-k spread"), which ignores the
  evaluation-set noise and so is too narrow. A baseline without class counts borrows the
  transformer's SE ("borrowed").
- **Comparisons.** Difference ± 1.96 sqrt(SE_a² + SE_b²) (conservative: both AUCs are measured on
  the same windows). A difference whose interval excludes 0 is called higher or lower.
- **Scaling law**, per horizon, budgets in size order, each budget's best complete trial over all
  its studies: violated when a smaller budget is higher than a larger one; holds when each larger
  budget is higher than the next smaller one; not distinguishable otherwise. The best of many
  trials on the validation split is optimistic; the study run's test AUC is shown beside it.
- **Parameter consistency.** For each budget, the value whose trials have the highest mean AUC;
  consistent when it is the same in every budget.
- **Gaps.** Grid values, grid regions (d_model x n_layers cells with an architecture in the
  budget's current grid) and learning_rate x dropout combinations without a complete trial.
"""


def render_markdown(analysis: CampaignAnalysis, source: str = "", figures: dict[str, Path] | None = None,
                    base: Path | None = None, generated: datetime | None = None) -> str:
    """The whole report. `figures` (from `write_figures`) are linked relative to `base`; without
    them the report has no images (the Prefect artifact)."""
    runs = analysis.runs
    trials = runs[runs["run_kind"] == "trial"]
    stamp = (generated or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    out = ["# Cross-budget HPO report"]
    out.append(
        f"Generated {stamp}" + (f" from `{source}`" if source else "") + f": {len(analysis.studies)} studies, "
        f"{len(trials)} trial runs ({int(trials['complete'].sum())} complete, {int((trials['state'] == 'failed').sum())} failed, "
        f"{int((trials['state'] == 'incomplete').sum())} incomplete), {int((runs['run_kind'] == 'baseline').sum())} baseline runs."
    )
    if analysis.budgets_without_runs:
        out.append(f"Budgets without trial runs: {', '.join(analysis.budgets_without_runs)}.")
    sections = ["Verification checklist"] + [f"Horizon h{h.horizon}" for h in analysis.horizons]
    sections += [f"Study {s.name}" for s in analysis.studies] + ["Methods"]
    out.append("Contents: " + " · ".join(f"[{t}](#{_anchor(t)})" for t in sections))

    out.append("## Verification checklist\n\nThe supplemental plan's checklist, computed from MLflow.\n\n" + render_checklist(analysis.checklist))
    if "auc_vs_params" in (figures or {}):
        out.append("## AUC against parameters\n\n" + _figure(figures, "auc_vs_params", "val AUC against parameter count", base))
    for h in analysis.horizons:
        out.append(f"## Horizon h{h.horizon}")
        out.append("### Best per budget\n\n" + render_bests(h, runs))
        out.append("### Scaling law\n\n" + render_scaling(h))
        out.append("### Baselines\n\n" + render_baselines(h))
        out.append("### Parameter consistency across budgets\n\n" + (render_consistency(h) or "No complete trials."))
        out.append("### Probability collapse by budget\n\n" + render_collapse_by_budget(h))
    for s in analysis.studies:
        out.append(render_study(s, figures, base))
    out.append(METHODS)
    return "\n\n".join(x.strip("\n") for x in out if x) + "\n"


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1200px; margin: 2em auto;
       padding: 0 1em; color: #1f2328; line-height: 1.45; }
h1, h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }
h2 { margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0; font-size: 0.85em; display: block; overflow-x: auto; }
th, td { border: 1px solid #d0d7de; padding: 3px 7px; text-align: left; vertical-align: top; }
td.num { text-align: right; white-space: nowrap; }
th { background: #f6f8fa; white-space: nowrap; }
tr:nth-child(even) td { background: #fbfbfc; }
img { max-width: 100%; border: 1px solid #eee; }
code { background: #f6f8fa; padding: 0 3px; }
strong { color: #0b3d91; }
"""


_NUMERIC_CELL = re.compile(r"<td>([-+]?(?:\d[\d.,e+-]*|n/a|\[[-+\d., ]+\]|\d+/\d+))</td>")


def render_html(markdown_text: str, title: str = "Cross-budget HPO report") -> str:
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables", "toc", "sane_lists"], output_format="html")
    body = _NUMERIC_CELL.sub(r'<td class="num">\1</td>', body)
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n")  # fmt: skip


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
    run = client.create_run(experiment_id, run_name=f"cross-budget report {stamp}", tags={"run_kind": TAG_KIND_REPORT})
    client.log_artifacts(run.info.run_id, str(files.out))
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


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
            rows.append({k: _plain(v) for k, v in row.items()})
    return rows
