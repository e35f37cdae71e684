"""Orchestration overhead per trial: Prefect + Optuna + MLflow around a trial that trains nothing,
against a bare Optuna loop, in the same run.

    python bench/orchestration_overhead.py --trials 20
    python bench/orchestration_overhead.py --trials 3 --layers bare-memory,bare-sqlite,study

Each layer adds one thing to the one before, on fresh stores in a temporary folder:

  bare-memory  optuna.create_study() in memory, study.optimize(objective): the objective draws from
               our search space (tasks.study.space.suggest, the default space) and returns a constant.
               Our study's sampler and seed, the same six forced extremes enqueued first.
  bare-sqlite  the same on a SQLite storage file (Optuna's defaults, no heartbeats).
  study        tasks.study.loop.run_study: our storage (SQLite, heartbeats, stale-trial and surplus
               checks), one MLflow run per trial with its params and tags, record_outcome; the trial
               process replaced by an in-process constant outcome (NOOP_RESULT).
  process      the same with the real trial process (tasks.study.trial_process -> tasks.study.trial_worker) in
               mode "noop": it starts, reads its request, reports NOOP_RESULT and exits.
  prefect      flows.hpo.hpo_flow (hpo flow -> study subflow -> one trial task per trial) under a
               temporary Prefect server (prefect_test_harness), trial process in mode "noop".

Per trial is the steady-state period between trial starts, (t_last - t_first) / (N - 1), where t is
the moment a trial's work would begin (the objective's body; run_trial_process for ours). Study
creation, the MLflow experiment, Prefect's flow runs and the dataset cache fall before the first
start ("setup s"); the last trial's bookkeeping and finish_study after the last ("finish s").
Within the period, the time spent in MLflow's client, in Optuna's RDB storage (outermost calls,
the call count beside) and in the trial process is split out; "rest" is everything else (TPE,
our Python, Prefect's client and task machinery).

A real trial process also imports torch and loads the dataset before its first step; that start-up
is printed apart (--startup-repeats), as it is the price of running trials in a child process,
not of the bookkeeping around them.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import optuna
import torch
from mlflow.tracking import MlflowClient
from optuna.storages import RDBStorage

from _common import header
from models.arch_grid import get_architectures_for_budget
from schemas import tracking as T
from schemas.config import DataConfig, HpoConfig, StoreConfig, StudyConfig, StudySpec, TrainConfig
from schemas.trial import NOOP_RESULT
from tasks.study import checkpoints, finish, loop, tracked_run
from tasks.study import space
from tasks.data.dataset import cached_dataset
from tasks.study.trial_process import REPO_ROOT, TrialOutcome

LAYERS: tuple[str, ...] = ("bare-memory", "bare-sqlite", "study", "process", "prefect")
SPEC = StudySpec(budget="smoke", horizon=1)


class CallClock:
    """Intervals spent in the methods of some classes (outermost calls only), by label. Private
    methods too: Optuna's cached storage calls its backend's `_get_trials`, `_set_trial_param`."""

    CLASSES: dict[str, type] = {"mlflow": MlflowClient, "optuna": RDBStorage}

    def __init__(self) -> None:
        self.intervals: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self._depth = threading.local()
        self._saved: list[tuple[type, str, object]] = []

    def record(self, label: str, started: float, ended: float) -> None:
        self.intervals[label].append((started, ended))

    def _wrap(self, label: str, method: Callable) -> Callable:
        @functools.wraps(method)
        def timed(*args, **kwargs):
            depth = getattr(self._depth, label, 0)
            setattr(self._depth, label, depth + 1)
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                setattr(self._depth, label, depth)
                if depth == 0:
                    self.record(label, started, time.perf_counter())

        return timed

    def __enter__(self) -> CallClock:
        for label, cls in self.CLASSES.items():
            for name, method in inspect.getmembers(cls, inspect.isfunction):
                static = isinstance(inspect.getattr_static(cls, name), (staticmethod, classmethod))
                if not name.startswith("__") and not static:
                    self._saved.append((cls, name, cls.__dict__.get(name)))
                    setattr(cls, name, self._wrap(label, method))
        return self

    def __exit__(self, *exc) -> None:
        for cls, name, original in reversed(self._saved):
            if original is None:
                delattr(cls, name)  # it was inherited
            else:
                setattr(cls, name, original)
        self._saved.clear()

    def between(self, label: str, first: float, last: float) -> tuple[float, int]:
        """Seconds and calls of `label` that started in [first, last)."""
        inside = [(a, b) for a, b in self.intervals[label] if first <= a < last]
        return sum(b - a for a, b in inside), len(inside)


@dataclass
class LayerTiming:
    layer: str
    trials: int
    setup_s: float  # layer start -> first trial's start
    per_trial_ms: float  # mean period between trial starts
    median_ms: float  # median period (robust to a busy machine)
    finish_s: float  # last trial's start -> layer done
    # Within the period, per trial: ms in each of mlflow, optuna (storage), trial_process; calls.
    split_ms: dict[str, float] = field(default_factory=dict)
    split_calls: dict[str, float] = field(default_factory=dict)


def measure(layer: str, run: Callable[[list[float], CallClock], None]) -> LayerTiming:
    """Run one layer; `run` appends each trial's start time and may record intervals."""
    starts: list[float] = []
    with CallClock() as clock:
        started = time.perf_counter()
        run(starts, clock)
        ended = time.perf_counter()
    if len(starts) < 2:
        raise RuntimeError(f"{layer}: {len(starts)} trial(s) started; the period needs at least 2 (--trials >= 2)")
    periods = [b - a for a, b in zip(starts, starts[1:])]
    timing = LayerTiming(
        layer=layer,
        trials=len(starts),
        setup_s=starts[0] - started,
        per_trial_ms=1000 * (starts[-1] - starts[0]) / len(periods),
        median_ms=1000 * statistics.median(periods),
        finish_s=ended - starts[-1],
    )
    for label in ("mlflow", "optuna", "trial_process"):
        seconds, calls = clock.between(label, starts[0], starts[-1])
        timing.split_ms[label] = 1000 * seconds / len(periods)
        timing.split_calls[label] = calls / len(periods)
    return timing


# ---------------------------------------------------------------- the reference: bare Optuna


def bare_loop(n_trials: int, storage: str | None, starts: list[float]) -> None:
    """study.optimize over our search space with an objective that trains nothing."""
    config = HpoConfig()
    grid = get_architectures_for_budget(SPEC.budget)

    def objective(trial: optuna.Trial) -> float:
        space.suggest(trial, config.study.arch_space, grid, config.search)
        starts.append(time.perf_counter())
        return float(NOOP_RESULT["val_auc"])

    sampler = space.make_sampler(config.study.arch_space, grid, seed=config.study.sampler_seed + 1)
    study = optuna.create_study(storage=storage, sampler=sampler, direction="maximize")
    space.enqueue_extremes(study, config.study.arch_space, grid, config.search)
    study.optimize(objective, n_trials=n_trials)


# ---------------------------------------------------------------- ours, without and with Prefect


def bench_config(root: Path, n_trials: int) -> HpoConfig:
    """Default study settings (heartbeats included) on stores under `root`; the trainer is never run."""
    study = {"n_trials": n_trials}
    if "baselines" in StudyConfig.model_fields:  # the study flow can fit baselines first: not a trial cost
        study["baselines"] = False
    if "confirm_seeds" in StudyConfig.model_fields:  # seed confirmation trains after the search: not orchestration
        study["confirm_seeds"] = 0
    return HpoConfig(
        data=DataConfig(),
        train=TrainConfig(device="cpu"),
        study=StudyConfig(**study),
        stores=StoreConfig(root=root),
    )


@contextmanager
def noop_trials(starts: list[float], clock: CallClock, child_process: bool) -> Iterator[None]:
    """Replace the study's trial process by one that trains nothing, timing each trial's start.

    child_process: the real runner and worker in mode "noop"; otherwise an in-process outcome
    (after the one heartbeat the runner records for a trial shorter than its interval)."""
    real = tracked_run.run_trial_process

    def run_noop(request, heartbeat: Callable[[], None] | None = None, **kwargs) -> TrialOutcome:
        if request.mode == "train":
            starts.append(time.perf_counter())
        if child_process:
            beating = 0.0  # the runner's heartbeats are Optuna storage time, counted there

            def timed_heartbeat() -> None:
                nonlocal beating
                started = time.perf_counter()
                heartbeat()
                beating += time.perf_counter() - started

            started = time.perf_counter()
            outcome = real(request.model_copy(update={"mode": "noop"}), heartbeat=heartbeat and timed_heartbeat, **kwargs)
            clock.record("trial_process", started, time.perf_counter() - beating)
            return outcome
        if heartbeat:
            heartbeat()
        return TrialOutcome(state="complete", result=dict(NOOP_RESULT))

    # A noop trial leaves no weights: nothing to upload, to evaluate on test or to register (none
    # of which is orchestration; before weights went through MLflow, finish skipped them too).
    real_store, real_evaluate = checkpoints.store_if_best, finish.evaluate_on_test
    tracked_run.run_trial_process = run_noop
    checkpoints.store_if_best = lambda *args, **kwargs: False
    finish.evaluate_on_test = lambda handle, best, *_: (float(NOOP_RESULT["val_auc"]), "none")
    try:
        yield
    finally:
        tracked_run.run_trial_process = real
        checkpoints.store_if_best, finish.evaluate_on_test = real_store, real_evaluate


def check_tracked(summaries: list[dict], config: HpoConfig) -> None:
    """The layer did the whole job: n complete trials, each with a FINISHED MLflow run."""
    n = config.study.n_trials
    summary = summaries[0]
    client = MlflowClient(config.stores.mlflow_uri)
    experiment = client.get_experiment_by_name(summary["study"])
    runs = client.search_runs(
        [experiment.experiment_id], f"tags.{T.TAG_RUN_KIND} = 'trial' and attributes.status = 'FINISHED'", max_results=1000
    )
    if summary["state"] != "complete" or summary["complete"] != n or len(runs) != n:
        raise RuntimeError(f"expected {n} complete trials with {n} finished runs; got {summary} and {len(runs)} runs")


def our_study(n_trials: int, root: Path, child_process: bool, starts: list[float], clock: CallClock) -> None:
    """tasks.study.loop.run_study: the study loop without Prefect."""
    config = bench_config(root, n_trials)
    with noop_trials(starts, clock, child_process):
        summary = loop.run_study(SPEC, config)
    check_tracked([summary], config)


def prefect_flow(n_trials: int, root: Path, starts: list[float], clock: CallClock) -> None:
    """flows.hpo.hpo_flow with the trial process in mode noop; needs a Prefect API (see main)."""
    from flows.hpo import hpo_flow

    config = bench_config(root, n_trials)
    with noop_trials(starts, clock, child_process=True):
        summaries = hpo_flow(studies=[SPEC.base_name], config=config)
    check_tracked(summaries, config)


# ---------------------------------------------------------------- running the layers


def trial_startup_s(dataset_path: Path, repeats: int) -> float | None:
    """Median wall time of a fresh process that imports torch and loads the dataset, as a real
    trial process does before its first step."""
    code = f"import torch; from tasks.data.dataset import PreparedData; PreparedData.load({str(dataset_path)!r})"
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times) if times else None


def layer_root(workdir: Path, layer: str, cache: Path) -> Path:
    """Fresh stores for one layer, sharing the prepared dataset (its build is no trial's cost)."""
    root = workdir / layer
    root.mkdir(parents=True)
    (root / "cache").symlink_to(cache, target_is_directory=True)
    return root


def run_layers(layers: list[str], n_trials: int, workdir: Path, prefect_api: Callable | None = None) -> list[LayerTiming]:
    """Time each layer in order. `prefect_api`: a context manager giving the prefect layer a server
    (default: none, for callers that already run under one, e.g. a test harness)."""
    cache = workdir / "cache"
    cached_dataset(DataConfig(), SPEC.horizon, cache)
    bare_loop(12, None, [])  # untimed: TPE's lazy imports on its first sampled trial (after 10)
    results = []
    for layer in layers:
        if layer not in LAYERS:
            raise ValueError(f"unknown layer {layer!r}; choose from {', '.join(LAYERS)}")
    for layer in layers:
        if layer == "bare-memory":
            results.append(measure(layer, lambda starts, _: bare_loop(n_trials, None, starts)))
        elif layer == "bare-sqlite":
            url = f"sqlite:///{workdir / 'bare-sqlite.db'}"
            results.append(measure(layer, lambda starts, _: bare_loop(n_trials, url, starts)))
        elif layer in ("study", "process"):
            root, child = layer_root(workdir, layer, cache), layer == "process"
            results.append(measure(layer, lambda starts, clock: our_study(n_trials, root, child, starts, clock)))
        else:
            root = layer_root(workdir, layer, cache)
            with prefect_api() if prefect_api else _nothing():
                results.append(measure(layer, lambda starts, clock: prefect_flow(n_trials, root, starts, clock)))
    return results


@contextmanager
def _nothing() -> Iterator[None]:
    yield


@contextmanager
def prefect_server() -> Iterator[None]:
    """A temporary Prefect server and database for the prefect layer (its start is timed apart)."""
    from prefect.testing.utilities import prefect_test_harness

    # Its telemetry service fails without network (a traceback, a DNS wait); it is no trial's cost.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    started = time.perf_counter()
    with prefect_test_harness(server_startup_timeout=300):
        print(f"temporary Prefect server up in {time.perf_counter() - started:.1f} s", flush=True)
        yield


def table(results: list[LayerTiming]) -> str:
    by_name = {r.layer: r for r in results}
    refs = [by_name[name] for name in ("bare-memory", "bare-sqlite") if name in by_name]
    columns = "layer          trials  setup s  per trial ms  median ms  + prev ms"
    columns += "".join(f"  x {ref.layer:11s}" for ref in refs)
    lines = [columns]
    previous = None
    for r in results:
        added = f"{r.per_trial_ms - previous.per_trial_ms:9.1f}" if previous else f"{'':9s}"
        line = f"{r.layer:13s}  {r.trials:6d}  {r.setup_s:7.2f}  {r.per_trial_ms:12.1f}  {r.median_ms:9.1f}  {added}"
        line += "".join(f"  {r.per_trial_ms / ref.per_trial_ms:13.3g}" for ref in refs)
        lines.append(line)
        previous = r
    lines += ["", "within the period, per trial   MLflow ms (calls)  Optuna storage ms (calls)  trial process ms  rest ms"]
    for r in results:
        ms, calls = r.split_ms, r.split_calls
        rest = r.per_trial_ms - sum(ms.values())
        lines.append(
            f"{r.layer:29s}  {ms['mlflow']:9.1f} ({calls['mlflow']:4.1f})  {ms['optuna']:17.1f} ({calls['optuna']:4.1f})"
            f"  {ms['trial_process']:16.1f}  {rest:7.1f}"
        )
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="trials per layer (>= 2)")
    parser.add_argument("--layers", default=",".join(LAYERS), help=f"comma-separated, in order; of {', '.join(LAYERS)}")
    parser.add_argument("--startup-repeats", type=int, default=3, help="runs of the torch-import + dataset-load probe (0: skip)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the stores here (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    layers = [name.strip() for name in args.layers.split(",") if name.strip()]
    print(header(torch.device("cpu")), flush=True)
    with tempfile.TemporaryDirectory(prefix="hpo-orchestration-") as tmp:
        workdir = args.workdir or Path(tmp)
        results = run_layers(layers, args.trials, workdir, prefect_api=prefect_server)
        dataset = next((workdir / "cache").glob("*.npz"))
        startup = trial_startup_s(dataset, args.startup_repeats)
    print(f"\n{args.trials} trials per layer on the {SPEC.budget} search space, 6 forced extremes first; "
          "per trial = period between trial starts")
    print(table(results))
    if startup is not None:
        print(f"a real trial process's start-up (torch import + dataset load), median of {args.startup_repeats}: {startup:.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"layers": [asdict(r) for r in results], "trial_startup_s": startup}, indent=2))


if __name__ == "__main__":
    main()
