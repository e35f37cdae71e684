"""The report's figures: val and test AUC against parameters per horizon, each study's parameter
trends and coverage heatmaps, as PNG files. Drawn on `matplotlib.figure.Figure` directly (no
pyplot, so no backend to choose and no global figure state)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import to_hex, to_rgb
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator

from tasks.report.analysis import CampaignAnalysis
from tasks.report.budgets import HorizonAnalysis
from tasks.report.study import StudyAnalysis
from tasks.report.table import budget_order, fmt_value

BUDGET_COLOURS = {"smoke": "#7f7f7f", "2M": "#1f77b4", "20M": "#ff7f0e", "200M": "#2ca02c", "2B": "#d62728"}


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
    selected configurations' seed-mean test AUCs (error bars: seed sd; rings: each seed) with the
    fitted scaling curve and its 95% band."""
    done = analysis.runs[analysis.runs["complete"] & analysis.runs["params"].notna()]
    if done.empty:
        return None
    horizons = [h for h in analysis.horizons if (done["horizon"] == h.horizon).any()]
    fig = Figure(figsize=(6 * len(horizons), 4.5))
    axes = fig.subplots(1, len(horizons), squeeze=False, sharey=True)
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
    axes[0][0].set_ylabel("AUC (val: dots, stars; test: diamonds,\nseed mean ± sd, rings: seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _draw_test_fit(ax, h: HorizonAnalysis) -> None:
    """Each selected configuration's seed-mean test AUC (diamonds) with +- its seed sd (error bars)
    and each seed (rings), the fitted line and its 95% band."""
    for s in h.test.selected:
        if s.predictions is not None and not math.isnan(s.params):
            seeded = len(s.seeds) > 1
            if seeded:
                ax.scatter([s.params] * len(s.seeds), s.seed_aucs, marker="o", s=16, facecolors="none", edgecolors="black",
                           lw=0.8, zorder=6)  # each seed
            ax.errorbar(s.params, s.test_auc, yerr=s.seed_sd if seeded else None, fmt="D", ms=8, capsize=5,
                        color=_colour(s.budget), markeredgecolor="black", ecolor="black", zorder=5,
                        label=f"{s.budget} selected, test" + (f" (mean ± sd of {len(s.seeds)} seeds)" if seeded else ""))  # fmt: skip
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
    fig = Figure(figsize=(3.6 * cols, 3.0 * rows))
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
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
    return path


def plot_coverage(study: StudyAnalysis, path: Path) -> Path:
    """The coverage matrices as heatmaps; grey cells have no architecture in the budget's grid."""
    widths = [max(3.0, 0.45 * c.counts.shape[1] + 1.5) for c in study.coverage]
    fig = Figure(figsize=(sum(widths), 4.2))
    axes = fig.subplots(1, len(study.coverage), gridspec_kw={"width_ratios": widths})
    for ax, cov in zip(np.atleast_1d(axes), study.coverage):
        counts = cov.counts.to_numpy(dtype=float)
        shown = np.ma.masked_where(~cov.feasible.to_numpy(dtype=bool), counts) if cov.feasible is not None else counts
        cmap = matplotlib.colormaps["Blues"].with_extremes(bad="#d9d9d9")
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
    return path


def plot_hparam_scaling(h: HorizonAnalysis, path: Path) -> Path | None:
    """Per hyperparameter: each budget's optimum over its near-optimal trials with its 95% band
    against parameters (log x; log y for learning rate and weight decay), the near-optimal trials
    themselves, and the fitted line with its bootstrap band."""
    scaling = h.hparams
    fits = [] if scaling is None or scaling.refused else [f for f in scaling.fits if len(f.budgets)]
    if not fits:
        return None
    fig = Figure(figsize=(4.2 * len(fits), 3.6))
    axes = fig.subplots(1, len(fits), squeeze=False)[0]
    for ax, fit in zip(axes, fits):
        for band, x, y, low, high in zip(scaling.bands, fit.x, fit.y, fit.y_low, fit.y_high):
            ax.scatter(band.near["params"], band.near[fit.param], s=10, alpha=0.35, color=_colour(band.budget))
            value = fit.scale.value
            ax.errorbar(10**x, value(y), yerr=[[max(0.0, value(y) - value(low))], [max(0.0, value(high) - value(y))]], fmt="o", ms=7, capsize=4,
                        color=_colour(band.budget), markeredgecolor="black", label=band.budget)  # fmt: skip
        if not math.isnan(fit.slope):
            grid = np.linspace(fit.x.min(), fit.x.max(), 30)
            lines = fit.draws[:, 1, None] + fit.draws[:, 0, None] * grid[None, :]
            to = np.vectorize(fit.scale.value)
            ax.plot(10**grid, to(fit.intercept + fit.slope * grid), color="black", lw=1.2)
            ax.fill_between(10**grid, to(np.percentile(lines, 2.5, axis=0)), to(np.percentile(lines, 97.5, axis=0)),
                            color="black", alpha=0.12, lw=0)  # fmt: skip
        ax.set_xscale("log")
        if fit.scale.log:
            ax.set_yscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(_count_label))
        ax.set_xlabel("parameters (log scale)")
        ax.set_title(f"{fit.param}: {fit.reading}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"h{h.horizon}: optimum per budget (mean of its near-optimal configurations, 95% band; dots: near-optimal trials) and fit", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def write_figures(analysis: CampaignAnalysis, folder: Path) -> dict[str, Path]:
    """Every figure, keyed `auc_vs_params`, `hparam_scaling_h<H>`, `<study>/trends`, `<study>/coverage`."""
    folder.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Path] = {}
    overall = plot_auc_vs_params(analysis, folder / "auc_vs_params.png")
    if overall:
        figures["auc_vs_params"] = overall
    for h in analysis.horizons:
        drawn = plot_hparam_scaling(h, folder / f"hparam_scaling_h{h.horizon}.png")
        if drawn:
            figures[f"hparam_scaling_h{h.horizon}"] = drawn
    for study in analysis.studies:
        trials = analysis.runs[(analysis.runs["study"] == study.name) & (analysis.runs["run_kind"] == "trial")]
        trends = plot_trends(study, trials, folder / f"{_safe(study.name)}_trends.png")
        if trends:
            figures[f"{study.name}/trends"] = trends
        figures[f"{study.name}/coverage"] = plot_coverage(study, folder / f"{_safe(study.name)}_coverage.png")
    return figures


