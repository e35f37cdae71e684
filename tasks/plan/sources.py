"""What a cost forecast reads: the prepared data's training windows and the finished trials in MLflow.

The edge of `hpo plan` (tasks/plan/forecast.py is the arithmetic). It writes nothing but the
dataset cache: an embedded MLflow store that is not there is not opened (opening makes it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from models.arch_grid import get_architectures_for_budget
from models.flops import DEFAULT_MFU, DEFAULT_PEAK_TFLOPS, peak_tflops_of, windows_per_epoch
from schemas import tracking as T
from schemas.config import HpoConfig, StoreConfig, StudySpec
from tasks.data.dataset import cached_dataset
from tasks.plan.forecast import Declared, Plan, StudyInputs, TrialMeasure, make_plan, measured_epochs, measured_throughput

TRAINING_RUN_KINDS = ("trial", "confirm", "retrain")  # every run that trains through the one recipe


def read_measures(stores: StoreConfig, budgets: Sequence[str]) -> list[TrialMeasure]:
    """Cost figures of every finished training run of these budgets, from MLflow ([] when the
    embedded store does not exist yet)."""
    from tasks.tracking.runs import embedded_store_missing, mlflow_client, search_all_runs, study_experiments

    if embedded_store_missing(stores.mlflow_uri):
        return []
    client = mlflow_client(stores)
    measures = []
    for spec, experiment in study_experiments(client):
        if spec.budget not in budgets:
            continue
        runs = search_all_runs(client, [experiment.experiment_id])
        window = next((study_window(run.data.tags) for run in runs if run.data.tags.get(T.TAG_RUN_KIND) == "study"), None)
        for run in runs:
            tags, metrics = run.data.tags, run.data.metrics
            state = tags.get(T.TAG_STATE)
            if tags.get(T.TAG_RUN_KIND) not in TRAINING_RUN_KINDS or state not in ("complete", "pruned"):
                continue
            rate = metrics.get("samples_per_s") if state == "complete" else None
            measures.append(TrialMeasure(
                budget=run.data.params.get("budget", spec.budget), device=tags.get(T.TAG_DEVICE), window=window,
                samples_per_s=rate if rate and rate > 0 else None, epochs=metrics.get("epochs"),
            ))
    return measures


def study_window(tags: dict[str, str]) -> int | None:
    """The window of a study run's pinned dataset (tag `dataset`), or None when not recorded."""
    try:
        return int(json.loads(tags[T.TAG_DATASET])["window"])
    except (KeyError, ValueError, TypeError):
        return None


def declared_throughput(tflops: float | None, mfu: float | None, device: str | None) -> Declared:
    """--tflops (else the named device's bf16 peak, else the H100's) x --mfu (else the default)."""
    peak = tflops or (peak_tflops_of(device) if device else None) or DEFAULT_PEAK_TFLOPS
    return Declared(peak, DEFAULT_MFU if mfu is None else mfu)


def gather_plan(
    config: HpoConfig,
    stages: Sequence[tuple[str, Sequence[StudySpec]]],
    *,
    gpus: int = 1,
    campaign: bool = True,
    tflops: float | None = None,
    mfu: float | None = None,
    device: str | None = None,
) -> Plan:
    """The forecast of these studies (by stage) under `config`: data and measured trials read here."""
    specs = [spec for _, stage in stages for spec in stage]
    measures = read_measures(config.stores, sorted({spec.budget for spec in specs}))
    declared = declared_throughput(tflops, mfu, device)
    train_windows = {h: len(cached_dataset(config.data, h, config.stores.cache_dir)[0].anchors["train"])
                     for h in dict.fromkeys(spec.horizon for spec in specs)}
    train, study, window = config.train, config.study, config.data.window
    batch = train.batch_size if isinstance(train.batch_size, int) else train.max_auto_batch_size
    confirmations = study.confirm_top_k * study.confirm_seeds if study.confirming else 0
    inputs = []
    for label, stage in stages:
        for spec in stage:
            inputs.append(StudyInputs(
                study=spec.name(spec.version or 1), stage=label,
                archs=tuple(get_architectures_for_budget(spec.budget, config.data.num_features, study.grid_version)),
                grid_version=study.grid_version, window=window, num_features=config.data.num_features,
                train_windows=train_windows[spec.horizon],
                windows_per_epoch=windows_per_epoch(train_windows[spec.horizon], batch, train.max_batches_per_epoch),
                epochs=measured_epochs(measures, spec.budget, window, train.max_epochs),
                n_trials=study.n_trials, confirmations=confirmations,
                throughput=measured_throughput(measures, spec.budget, window, device) or declared,
            ))
    return make_plan(inputs, gpus, campaign)
