"""The cost forecast of a campaign's studies (`hpo plan`): pure, from values the edge gathered.

A study trains `n_trials` trials, plus its seed confirmations (confirm_top_k x confirm_seeds) when
it confirms, each on one GPU. A trial's architecture is drawn from the budget's grid, so a trial
is forecast at the grid's mean FLOPs (and its cheapest..dearest entry): FLOPs per window
(models.flops, bench/'s count) x training windows per epoch x epochs. Epochs are the median of
the budget's finished trials where some exist, else max_epochs, an upper bound (early stopping
ends most trials sooner).

GPU-hours = FLOPs / an effective throughput, either
- measured: the median `samples_per_s` of the budget's complete trials on one device (trained
  alone on it), at the grid's mean FLOPs per window; or
- declared: a peak (--tflops) x a model FLOPs utilisation (--mfu).
Each row says which it used. Training steps only: evaluation, start-up and orchestration are not
in it (bench/trial_split.py measures their share).

Wall time with N GPUs: a campaign runs its stages in order and a stage's studies one per GPU
(the work pool's workers take them in order, whichever is free first), so a stage lasts its
makespan and GPUs beyond its studies idle. One study alone (`hpo plan 2B h1`) is run by N workers
at once (`hpo run` on each GPU), its trials spread evenly.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from models.arch_grid import Architecture
from models.flops import GridFlops, gpu_hours, grid_flops, makespan


@dataclass(frozen=True)
class TrialMeasure:
    """What a finished training run of MLflow says about cost (None: not logged)."""

    budget: str
    device: str | None
    window: int | None  # the study's pinned dataset's window; None when not recorded
    samples_per_s: float | None  # complete runs only
    epochs: float | None  # complete and pruned runs


@dataclass(frozen=True)
class Measured:
    """The median samples/s of `trials` complete trials of the budget on `device`."""

    samples_per_s: float
    trials: int
    device: str

    def flop_per_s(self, flops_per_window: float) -> float:
        return self.samples_per_s * flops_per_window

    def describe(self) -> str:
        return f"measured: median {self.samples_per_s:,.0f} samples/s of {self.trials} runs on {self.device}"


@dataclass(frozen=True)
class Declared:
    """A declared peak and MFU."""

    tflops: float
    mfu: float

    def flop_per_s(self, flops_per_window: float) -> float:
        return self.tflops * 1e12 * self.mfu

    def describe(self) -> str:
        return f"declared: {self.tflops:g} TFLOP/s x {self.mfu:.0%} MFU"


Throughput = Measured | Declared


@dataclass(frozen=True)
class Epochs:
    value: float
    trials: int  # 0: max_epochs, not measured

    def describe(self) -> str:
        if self.trials:
            return f"median of {self.trials} runs"
        return "max_epochs: an upper bound"


def measured_epochs(measures: Sequence[TrialMeasure], budget: str, window: int, max_epochs: int) -> Epochs:
    """The median epochs of the budget's finished trials on this window, or max_epochs."""
    found = [m.epochs for m in measures if m.budget == budget and m.window in (window, None) and m.epochs]
    return Epochs(statistics.median(found), len(found)) if found else Epochs(float(max_epochs), 0)


def measured_throughput(measures: Sequence[TrialMeasure], budget: str, window: int,
                        device: str | None = None) -> Measured | None:
    """The median samples/s of the budget's complete trials on one device, or None when none.

    `device`: a part of the device's name (`H200`, case ignored); None: the device with the most
    such trials. Trials of another window are not comparable (cost grows with it) and are left out.
    """
    usable = [m for m in measures if m.budget == budget and m.window in (window, None) and m.samples_per_s and m.device]
    if device is not None:
        usable = [m for m in usable if device.lower() in m.device.lower()]
    if not usable:
        return None
    counts = Counter(m.device for m in usable)
    chosen = min(counts, key=lambda name: (-counts[name], name))
    rates = [m.samples_per_s for m in usable if m.device == chosen]
    return Measured(statistics.median(rates), len(rates), chosen)


@dataclass(frozen=True)
class StudyInputs:
    """Everything one study's forecast needs, gathered at the edge."""

    study: str
    stage: str
    archs: tuple[Architecture, ...]
    grid_version: int
    window: int
    num_features: int
    train_windows: int  # the train split of the prepared data
    windows_per_epoch: int  # what an epoch sees (max_batches_per_epoch may cap it)
    epochs: Epochs
    n_trials: int
    confirmations: int  # seed-confirmation trainings when the study confirms, else 0
    throughput: Throughput


@dataclass(frozen=True)
class StudyForecast:
    inputs: StudyInputs
    trial_flops: GridFlops
    flop_per_s: float  # effective, at the grid's mean FLOPs per window
    gpu_hours: float
    wall_hours: float  # with the plan's GPUs (see Plan)

    @property
    def runs(self) -> int:
        return self.inputs.n_trials + self.inputs.confirmations

    @property
    def study_flops(self) -> float:
        return self.trial_flops.mean * self.runs


def forecast_study(inputs: StudyInputs) -> StudyForecast:
    """FLOPs per trial over the grid, and the study's GPU-hours at its throughput (wall: one GPU)."""
    flops = grid_flops(inputs.archs, inputs.window, inputs.windows_per_epoch, inputs.epochs.value, inputs.num_features)
    rate = inputs.throughput.flop_per_s(flops.mean_per_window)
    hours = gpu_hours(flops.mean * (inputs.n_trials + inputs.confirmations), rate)
    return StudyForecast(inputs, flops, rate, hours, hours)


@dataclass(frozen=True)
class Plan:
    studies: tuple[StudyForecast, ...]
    gpus: int
    campaign: bool  # stages run in order, a stage's studies one per GPU; else each study on every GPU
    stage_hours: tuple[tuple[str, float], ...]  # wall hours per stage (campaign)

    @property
    def gpu_hours(self) -> float:
        return math.fsum(s.gpu_hours for s in self.studies)

    @property
    def wall_hours(self) -> float:
        if self.campaign:
            return math.fsum(hours for _, hours in self.stage_hours)
        return math.fsum(s.wall_hours for s in self.studies)  # one study after another, each on every GPU


def make_plan(inputs: Sequence[StudyInputs], gpus: int, campaign: bool) -> Plan:
    """Forecast every study; wall time with `gpus` GPUs as the campaign (or `hpo run` on each GPU) runs them."""
    if gpus < 1:
        raise ValueError(f"--gpus {gpus}: give at least 1")
    studies = [forecast_study(i) for i in inputs]
    if campaign:
        stages = list(dict.fromkeys(s.inputs.stage for s in studies))
        stage_hours = tuple((stage, makespan([s.gpu_hours for s in studies if s.inputs.stage == stage], gpus))
                            for stage in stages)
        walls = [s.gpu_hours for s in studies]  # a study holds one GPU in the campaign
    else:
        stage_hours = ()
        walls = [s.gpu_hours / min(gpus, s.runs) for s in studies]
    studies = [StudyForecast(s.inputs, s.trial_flops, s.flop_per_s, s.gpu_hours, wall) for s, wall in zip(studies, walls)]
    return Plan(tuple(studies), gpus, campaign, stage_hours)


# --- rendering (the CLI's table and the campaign's markdown artifact read the same rows) ---------

COLUMNS = ("stage", "study", "runs", "FLOPs/trial: mean (min..max)", "epochs", "GPU time", "wall", "throughput")


def flops_text(flops: float) -> str:
    """`3.12e17` (three significant figures)."""
    mantissa, exponent = f"{flops:.2e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def hours_text(hours: float) -> str:
    """`0.41 s`, `2.7 min`, `12.4 h`, `1,234 h (51.4 days)`."""
    if hours < 1 / 60:
        return f"{hours * 3600:.2g} s"
    if hours < 1:
        return f"{hours * 60:.2g} min"
    text = f"{hours:,.1f} h" if hours < 100 else f"{hours:,.0f} h"
    return text + (f" ({hours / 24:,.1f} days)" if hours >= 48 else "")


def rate_text(flop_per_s: float) -> str:
    """`297 TFLOP/s`, `0.594 GFLOP/s`."""
    return f"{flop_per_s / 1e12:.3g} TFLOP/s" if flop_per_s >= 1e11 else f"{flop_per_s / 1e9:.3g} GFLOP/s"


def plan_rows(plan: Plan) -> list[dict[str, str]]:
    """One row of text per study, in COLUMNS."""
    rows = []
    for s in plan.studies:
        i, f = s.inputs, s.trial_flops
        runs = f"{i.n_trials} + {i.confirmations}" if i.confirmations else str(i.n_trials)
        rows.append({
            "stage": i.stage,
            "study": i.study,
            "runs": runs,
            "FLOPs/trial: mean (min..max)": f"{flops_text(f.mean)} ({flops_text(f.low)}..{flops_text(f.high)})",
            "epochs": f"{i.epochs.value:g} ({i.epochs.describe()})",
            "GPU time": hours_text(s.gpu_hours),
            "wall": hours_text(s.wall_hours),
            "throughput": f"{i.throughput.describe()} = {rate_text(s.flop_per_s)}",
        })
    return rows


def span(values: list[int]) -> str:
    """`60`, or `6,794..6,802` when the studies differ."""
    return f"{values[0]:,}" if len(values) == 1 else f"{values[0]:,}..{values[-1]:,}"


def plan_notes(plan: Plan) -> list[str]:
    """What the figures assume, and the totals, as lines under the table."""
    notes = []
    if plan.studies:
        inputs = [s.inputs for s in plan.studies]
        windows = sorted({i.window for i in inputs})
        per_epoch = sorted({i.windows_per_epoch for i in inputs})
        train = sorted({i.train_windows for i in inputs})
        notes.append(
            f"FLOPs per trial: T (6N + 12 L d T) per window of T = {span(windows)} days (models/flops.py, bench/'s count) "
            f"x {span(per_epoch)} training windows per epoch (train split {span(train)}) x epochs; the mean over the "
            f"budget's grid v{inputs[0].grid_version}, every architecture equally likely; training steps only "
            "(no evaluation, start-up or orchestration)."
        )
        notes.append("runs: n_trials + seed-confirmation trainings (confirm_top_k x confirm_seeds), each at the grid's mean.")
        notes.append("epochs: the median of the budget's finished trials where MLflow has some, else max_epochs, an "
                     "upper bound (early stopping ends most trials sooner).")
        notes.append("throughput: measured = the median samples/s of the budget's complete trials on one device "
                     "(--device picks it; trials trained one per GPU), at the grid's mean FLOPs per window; "
                     "declared = --tflops x --mfu, where none was measured.")
    plural = "s" * (plan.gpus > 1)
    if plan.campaign:
        notes.append(f"wall with {plan.gpus} GPU{plural}: stages in order, a stage's studies one per GPU, in order "
                     "onto whichever GPU frees first (GPUs beyond a stage's studies idle); a study's wall is its GPU-hours.")
        notes += [f"stage '{stage}': {hours_text(hours)} wall" for stage, hours in plan.stage_hours]
    else:
        notes.append(f"wall with {plan.gpus} GPU{plural}: each study run by one worker per GPU (`hpo run` on each), "
                     "its trials spread evenly; studies one after another.")
    notes.append(f"total: {hours_text(plan.gpu_hours)} of GPU time, {hours_text(plan.wall_hours)} of wall time.")
    return notes


def plan_markdown(plan: Plan) -> str:
    """The forecast as markdown (the campaign's `plan` artifact)."""
    rows = plan_rows(plan)
    lines = ["# Cost forecast", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row[c] for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines + [""] + [f"- {note}" for note in plan_notes(plan)]) + "\n"
