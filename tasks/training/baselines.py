"""Baselines: what a linear model and a tree ensemble reach on exactly the studies' data.

Every baseline reads the same standardised 25 features, the same anchors, labels and splits as
the trials (a `PreparedData`): `logreg` and `hgb` see each window's last day, `logreg_flat` the
whole window flattened, `base_rate` nothing but the train positive rate. Each is fitted on train
only, its one or two hyperparameters chosen on val AUC; test AUC is computed once, for reporting.

They are logged as runs of the study's MLflow experiment (`run_kind=baseline`, never trials) with
a `baseline_key` tag: the fingerprint of the data, the horizon, the settings below and
`BASELINES_VERSION`. A study whose experiment already holds finished runs with that key reuses
them; bump `BASELINES_VERSION` when a change here alters results.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cache, partial

import numpy as np
from mlflow.entities import Dataset, Run
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ConfigDict
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from schemas.config import DataConfig, HpoConfig, StudySpec
from schemas.names import HORIZONS, STUDY_NAME, parse_horizon
from schemas.tracking import TAG_BASELINE_KEY, TAG_BASELINE_MODEL, TAG_HORIZON, TAG_RUN_KIND, baseline_run_name
from tasks.data.dataset import SPLITS, PreparedData, cached_dataset, dataset_fingerprint
from tasks.study.claims import Claims
from tasks.study.store import optuna_storage
from tasks.tracking.datasets import dataset_entity, log_dataset_input
from tasks.tracking.predictions import encode, log_encoded, split_digest
from tasks.tracking.runs import (
    ensure_study_run,
    get_or_create_experiment,
    log_batch,
    mlflow_client,
    search_all_runs,
    start_run,
    study_experiments,
)

log = logging.getLogger(__name__)

BASELINES_VERSION = 1  # part of the cache key: bump when a change in this module alters results
BASELINE_MODELS: tuple[str, ...] = ("logreg", "logreg_flat", "hgb", "base_rate")
# What each baseline reads of a sample: its window's last day, or the whole window flattened.
VIEWS: dict[str, str] = {"logreg": "last", "logreg_flat": "window", "hgb": "last", "base_rate": "last"}
# The hyperparameters each baseline tunes on val (logged as params of those names).
TUNED: dict[str, tuple[str, ...]] = {"logreg": ("C",), "logreg_flat": ("C",), "hgb": ("max_leaf_nodes", "max_iter"), "base_rate": ()}
# Final metrics of a baseline run: AUCs, the trials' diagnostics (on val) and the class counts
# the report needs for AUC confidence intervals.
BASELINE_METRICS: tuple[str, ...] = (
    "val_auc", "test_auc", "pred_min", "pred_max", "pred_range", "recall", "train_seconds", "tune_seconds",
    "val_n_pos", "val_n_neg", "test_n_pos", "test_n_neg",
)  # fmt: skip


class BaselineSettings(BaseModel):
    """The small grids tuned on val. Chosen on the bundled data at h1/h3/h5 so that the optima lie
    inside the grids (the trees' fewest leaves excepted: stumps are as simple as trees get); all
    four baselines fit in about half a minute per horizon on one CPU core."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    logreg_cs: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    logreg_flat_cs: tuple[float, ...] = (1e-5, 1e-4, 1e-3)  # 1500 inputs: strong regularisation wins
    logreg_max_iter: int = 2000
    hgb_learning_rate: float = 0.05
    hgb_max_leaf_nodes: tuple[int, ...] = (2, 4, 8)
    hgb_max_iter: tuple[int, ...] = (25, 50, 100, 200)
    hgb_min_samples_leaf: int = 100
    hgb_l2_regularization: float = 1.0
    seed: int = 0


DEFAULT_SETTINGS = BaselineSettings()


@dataclass
class BaselineResult:
    """One fitted baseline: its choice, its AUCs and the trials' diagnostics on val."""

    model: str
    hyperparams: dict[str, float | int]
    val_auc: float
    test_auc: float
    pred_min: float
    pred_max: float
    pred_range: float
    recall: float  # at threshold 0.5 on val, like the trials
    train_seconds: float  # fitting the chosen candidate
    tune_seconds: float  # fitting every candidate of the grid
    val_n_pos: int
    val_n_neg: int
    test_n_pos: int
    test_n_neg: int
    candidates: list[dict[str, float]] = field(default_factory=list)  # each candidate's params and val AUC
    predictions: dict[str, bytes] = field(default_factory=dict, repr=False)  # split -> encoded scores

    def metrics(self) -> dict[str, float]:
        values = asdict(self)
        return {name: float(values[name]) for name in BASELINE_METRICS}


# --- the design matrices: the same anchors as the trials, read as rows of one feature matrix ---


def feature_rows(data: PreparedData, split: str, view: str) -> np.ndarray:
    """(n, k) rows of `data.features` that each sample of a split reads: k=1 (last day) or window."""
    anchors = data.anchors[split]
    if view == "last":
        return anchors[:, None]
    if view == "window":
        return anchors[:, None] + np.arange(-data.window + 1, 1)  # as PreparedData.windows
    raise ValueError(f"unknown view {view!r}; use 'last' or 'window'")


def design_matrix(data: PreparedData, split: str, view: str) -> np.ndarray:
    """(n, k * F) inputs of a split: the rows above, flattened day by day."""
    rows = feature_rows(data, split, view)
    return data.features[rows].reshape(len(rows), -1)


# --- fitting ---


def candidates(model: str, settings: BaselineSettings) -> list[tuple[dict[str, float | int], Callable[[], object]]]:
    """Each (hyperparameters, estimator factory) of a baseline's val grid."""
    s = settings
    if model in ("logreg", "logreg_flat"):
        cs = s.logreg_cs if model == "logreg" else s.logreg_flat_cs
        return [({"C": c}, partial(LogisticRegression, C=c, max_iter=s.logreg_max_iter)) for c in cs]
    if model == "hgb":
        return [
            (
                {"max_leaf_nodes": leaves, "max_iter": iters},
                partial(
                    HistGradientBoostingClassifier,
                    learning_rate=s.hgb_learning_rate,
                    max_leaf_nodes=leaves,
                    max_iter=iters,
                    min_samples_leaf=s.hgb_min_samples_leaf,
                    l2_regularization=s.hgb_l2_regularization,
                    early_stopping=False,  # its internal split is random, not chronological
                    random_state=s.seed,
                ),
            )
            for leaves in s.hgb_max_leaf_nodes
            for iters in s.hgb_max_iter
        ]
    if model == "base_rate":
        return [({}, partial(DummyClassifier, strategy="prior"))]  # constant = train positive rate
    raise ValueError(f"unknown baseline {model!r}; choose one of {', '.join(BASELINE_MODELS)}")


def fixed_hyperparams(model: str, settings: BaselineSettings) -> dict[str, float | int]:
    """Settings a baseline uses but does not tune (logged beside the chosen ones)."""
    if model == "hgb":
        return {
            "hgb_learning_rate": settings.hgb_learning_rate,
            "min_samples_leaf": settings.hgb_min_samples_leaf,
            "l2_regularization": settings.hgb_l2_regularization,
            "seed": settings.seed,
        }
    return {"solver_max_iter": settings.logreg_max_iter} if model.startswith("logreg") else {}


# One thread: these models are small, and on a busy 2-core machine OpenMP threads made an HGB
# fit or predict up to 50 times slower (0.2 s -> 10 s); it also keeps them out of a study's way.
@threadpool_limits.wrap(limits=1)
def fit_baseline(data: PreparedData, model: str, settings: BaselineSettings = DEFAULT_SETTINGS) -> BaselineResult:
    """Fit every candidate on train, keep the best on val AUC (the first on ties), test it once."""
    inputs = {split: design_matrix(data, split, VIEWS[model]) for split in SPLITS}
    labels = {split: data.labels[split].astype("int64") for split in SPLITS}
    best, tried, tune_started = None, [], time.perf_counter()
    for params, make in candidates(model, settings):
        started = time.perf_counter()
        estimator = make().fit(inputs["train"], labels["train"])
        seconds = time.perf_counter() - started
        probs = estimator.predict_proba(inputs["val"])[:, 1]
        score = float(roc_auc_score(labels["val"], probs))
        tried.append({**params, "val_auc": score})
        if best is None or score > best[0]:
            best = (score, params, estimator, probs, seconds)
    val_auc, params, estimator, probs, seconds = best
    test_probs = estimator.predict_proba(inputs["test"])[:, 1]
    test_auc = float(roc_auc_score(labels["test"], test_probs))
    positives = labels["val"] == 1
    counts = {f"{split}_n_{kind}": int((labels[split] == value).sum())
              for split in ("val", "test") for kind, value in (("pos", 1), ("neg", 0))}  # fmt: skip
    return BaselineResult(
        model=model,
        hyperparams={**params, **fixed_hyperparams(model, settings)},
        val_auc=val_auc,
        test_auc=test_auc,
        pred_min=float(probs.min()),
        pred_max=float(probs.max()),
        pred_range=float(probs.max() - probs.min()),
        recall=float((probs[positives] >= 0.5).mean()) if positives.any() else 0.0,
        train_seconds=seconds,
        tune_seconds=time.perf_counter() - tune_started,
        candidates=tried,
        predictions=encoded_scores(data, {"val": probs, "test": test_probs}),
        **counts,
    )


def encoded_scores(data: PreparedData, probs: dict[str, np.ndarray]) -> dict[str, bytes]:
    """The scores per split as the predictions artifact (tasks.tracking.predictions) holds them."""
    return {split: encode(split, p, data.labels[split] == 1, split_digest(data, split)) for split, p in probs.items()}


# --- tracking and caching ---


def baseline_key(data: DataConfig, horizon: int, settings: BaselineSettings = DEFAULT_SETTINGS) -> str:
    """Same key, same baselines: data content and config, horizon, grids, this module's version."""
    payload = [dataset_fingerprint(data, horizon), horizon, settings.model_dump(mode="json"), BASELINES_VERSION]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]


def finished_baselines(client: MlflowClient, experiment_id: str, key: str) -> dict[str, Run]:
    """Finished baseline runs with this key, by model (the latest where a model has several)."""
    runs = search_all_runs(
        client,
        [experiment_id],
        f"tags.{TAG_RUN_KIND} = 'baseline' and tags.{TAG_BASELINE_KEY} = '{key}' and attributes.status = 'FINISHED'",
    )
    runs.sort(key=lambda run: run.info.start_time or 0)
    return {run.data.tags[TAG_BASELINE_MODEL]: run for run in runs if TAG_BASELINE_MODEL in run.data.tags}


def study_parent_run(client: MlflowClient, experiment_id: str, study: str) -> str | None:
    """The study's run when `study` names a study (made on first need); None for a plain
    baselines experiment such as `baselines_h1`."""
    try:
        spec = StudySpec.parse(study)
    except ValueError:
        return None
    return ensure_study_run(
        client, experiment_id, study=study, budget=spec.budget, horizon=spec.horizon,
        version=spec.version or 1, source="baseline", smoke_of=spec.smoke_of,
    )


def log_baseline(
    client: MlflowClient,
    experiment_id: str,
    study: str,
    horizon: int,
    key: str,
    data: DataConfig,
    result: BaselineResult,
    parent_run_id: str | None = None,
    dataset: Dataset | None = None,
) -> str:
    """One FINISHED run per baseline, or a FAILED one if logging breaks half-way; `dataset` (the
    MLflow dataset it was fitted on) becomes the run's input."""
    tags = {TAG_BASELINE_MODEL: result.model, TAG_HORIZON: horizon, TAG_BASELINE_KEY: key}
    params = {
        "model": result.model,
        **result.hyperparams,
        "horizon": horizon,
        "data_source": data.source,
        "window": data.window,
        "threshold": data.threshold,
        "train_fraction": data.train_fraction,
        "val_fraction": data.val_fraction,
        "dataset_fingerprint": dataset_fingerprint(data, horizon),
        "grid": json.dumps(result.candidates),
    }
    run_id = start_run(
        client, experiment_id, run_kind="baseline", source="baseline", name=baseline_run_name(result.model),
        study=study, parent_run_id=parent_run_id, tags=tags,
    )
    try:
        log_batch(client, run_id, params=params, metrics=result.metrics())
        if dataset is not None:
            log_dataset_input(client, run_id, dataset)
        for payload in result.predictions.values():
            log_encoded(client, run_id, payload)
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


# Results fitted in this process, by (baseline_key, model): logging the same baselines into the
# experiments of several studies of one horizon (the CLI, a campaign) fits them once.
_FITTED: dict[tuple[str, str], BaselineResult] = {}


def run_baselines(
    config: HpoConfig,
    study: str,
    horizon: int,
    models: tuple[str, ...] = BASELINE_MODELS,
    settings: BaselineSettings = DEFAULT_SETTINGS,
) -> dict[str, float]:
    """Fit and log the baselines missing from the study's experiment; model -> val AUC, as logged."""
    client = mlflow_client(config.stores)
    experiment_id = get_or_create_experiment(client, study, config.stores.artifact_root)
    key = baseline_key(config.data, horizon, settings)
    done = finished_baselines(client, experiment_id, key)
    missing = [model for model in models if model not in done]
    if missing:
        _fit_and_log_once(client, config, experiment_id, study, horizon, key, missing, settings)
        done = finished_baselines(client, experiment_id, key)
    else:
        log.info("%s h%d: baselines %s reused (key %s)", study, horizon, ", ".join(models), key)
    return {model: float(done[model].data.metrics["val_auc"]) for model in models if model in done}


def _fit_and_log_once(client: MlflowClient, config: HpoConfig, experiment_id: str, study: str, horizon: int,
                      key: str, missing: list[str], settings: BaselineSettings) -> None:
    """Each missing baseline fitted and logged by one worker: a claim per (key, model), so two
    workers whose views of what is missing differ (one read while the other was logging) still
    never log one model twice. The holder checks again under its claim; a model whose claim is
    done but whose run is gone (deleted meanwhile) is claimed again."""
    claims = Claims(optuna_storage(config.stores), study, stale_after_s=config.study.heartbeat_grace_s)

    @cache
    def prepared() -> tuple[PreparedData, str | None, Dataset]:  # read once, and only when a model is fitted here
        data, _ = cached_dataset(config.data, horizon, config.stores.cache_dir)
        return data, study_parent_run(client, experiment_id, study), dataset_entity(data, config.data)

    for model in missing:
        claim = f"baselines/{key}/{model}"
        for _attempt in range(2):
            if claims.claim_or_wait(claim):
                with claims.held(claim):
                    if model not in finished_baselines(client, experiment_id, key):
                        _fit_and_log(client, config, experiment_id, study, horizon, key, model, settings, *prepared())
                break
            if model in finished_baselines(client, experiment_id, key):
                break
            claims.reopen(claim)  # done by another worker, yet its run is not there: fit it again


def _fit_and_log(client: MlflowClient, config: HpoConfig, experiment_id: str, study: str, horizon: int, key: str,
                 model: str, settings: BaselineSettings, data: PreparedData, parent: str | None, dataset: Dataset) -> None:
    if (key, model) not in _FITTED:
        _FITTED[key, model] = fit_baseline(data, model, settings)
    result = _FITTED[key, model]
    log_baseline(client, experiment_id, study, horizon, key, config.data, result, parent, dataset)
    log.info("%s h%d baseline %s: val AUC %.4f, test AUC %.4f", study, horizon, model, result.val_auc, result.test_auc)


# --- the `hpo baselines` command's helpers ---


def study_experiments_at(config: HpoConfig, horizon: int) -> list[str]:
    """Names of the existing study experiments at a horizon (`smoke_h1`, `20M_h1_v2`, ...)."""
    found = study_experiments(mlflow_client(config.stores))
    return sorted(experiment.name for spec, experiment in found if spec.horizon == horizon)


def baseline_targets(config: HpoConfig, horizons: list[str], studies: list[str]) -> dict[int, list[str]]:
    """Horizon -> the experiments to log baselines into. Named studies carry their horizon in
    their name (`20M_h1_v2`); otherwise every existing study experiment of each horizon, or
    `baselines_hH` where none exists yet."""
    if studies:
        targets: dict[int, list[str]] = {}
        for name in studies:
            match = STUDY_NAME.match(name.strip())
            if not match:
                raise ValueError(f"cannot read a horizon from study {name!r}; name it like 20M_h1, 20M_h1_v2 or baselines_h1")
            targets.setdefault(parse_horizon(match["horizon"]), []).append(name)
        return targets
    return {h: study_experiments_at(config, h) or [f"baselines_h{h}"] for h in map(parse_horizon, horizons or HORIZONS)}


def baseline_table(config: HpoConfig, study: str, horizon: int) -> list[dict[str, object]]:
    """The logged baselines of a study's experiment at the current key, one row per model."""
    client = mlflow_client(config.stores)
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        return []
    runs = finished_baselines(client, experiment.experiment_id, baseline_key(config.data, horizon))
    return [
        {
            "model": model,
            "val_auc": runs[model].data.metrics.get("val_auc"),
            "test_auc": runs[model].data.metrics.get("test_auc"),
            "chosen": ", ".join(f"{name}={runs[model].data.params[name]}" for name in TUNED[model]),
        }
        for model in BASELINE_MODELS
        if model in runs
    ]
