"""What MLflow holds, by name: the contract between the trainer, the legacy importer, the
baselines and the report. The report reads MLflow only, so anything it needs is named here.

Layout: one MLflow experiment per study (named like the study: `20M_h5`, `20M_h1_v2`); in it one
parent run per study (tag `run_kind=study`, made by whichever source comes first) and one run per
trial, supplemental trial, legacy trial or baseline (tag `run_kind=trial` / `baseline`), each a
child of the study run. Runs outside a study's experiment (`baselines_h1`, the `reports`
experiment) have no parent. Every run is created by `tasks.tracking.runs.start_run` (or
`ensure_study_run`), so this rule lives in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

# Params of every trial run (new, supplemental and legacy), with these exact names.
TRIAL_PARAMS: tuple[str, ...] = (
    "budget",
    "horizon",
    "grid_version",
    "arch_idx",
    "d_model",
    "n_layers",
    "n_heads",
    "d_ff",
    "d_ff_ratio",
    "params",
    "learning_rate",
    "dropout",
    "weight_decay",
    "batch_size",
    "seed",
)
ARCH_PARAMS = ("d_model", "n_layers", "n_heads", "d_ff_ratio")
HPARAMS = ("learning_rate", "dropout", "weight_decay")

# Metrics logged every epoch (step = epoch): the trial process's event keys, and the MLflow names
# they are logged under. The `epoch/` prefix keeps a curve (whose latest value is the LAST epoch's)
# apart from the trial's result, `val_auc`, which is the BEST epoch's: before 2026-12 the curve was
# `val/auc`, and `val/auc` 0.760 beside `val_auc` 0.776 read as two answers to one question.
EPOCH_METRICS: tuple[str, ...] = ("train/loss", "val/loss", "val/auc")
EPOCH_METRIC_NAMES: dict[str, str] = {"train/loss": "epoch/train_loss", "val/loss": "epoch/val_loss", "val/auc": "epoch/val_auc"}
# Final metrics of a completed trial.
FINAL_METRICS: tuple[str, ...] = (
    "val_auc",
    "val_loss",
    "best_epoch",
    "pred_min",
    "pred_max",
    "pred_range",
    "recall",
    "val_n_pos",
    "val_n_neg",
    "epochs",
    "train_seconds",
    "samples_per_s",
    "peak_memory_mb",
)
# Where a trial's wall time went (seconds), logged on its run when it ends; bench/trial_split.py
# tabulates them. trial = process + orchestration (Optuna, MLflow, checkpoints, in the driver);
# process = startup + setup + train_steps + eval + finish + process_other (exit, unaccounted).
TIME_METRICS: tuple[str, ...] = (
    "time/trial_s", "time/process_s", "time/orchestration_s", "time/startup_s", "time/setup_s",
    "time/train_steps_s", "time/eval_s", "time/finish_s", "time/process_other_s",
)
# On the study (parent) run when the study completes.
STUDY_METRICS: tuple[str, ...] = ("best_val_auc", "best_test_auc", "n_complete", "n_failed", "n_pruned")

# Experiments are tagged as model-training experiments (what `mlflow.experimentKind` means to
# MLflow's own code). MLflow 3.17's UI does not read the tag, though: it opens an experiment in the
# view of its workflow switch (GenAI, the default, or model training), taken from the URL's
# `workflowType` parameter or else from the browser's last choice. Links we print carry it.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
UI_WORKFLOW = "workflowType=machine_learning"
TAG_PARENT_RUN = "mlflow.parentRunId"

# Tags.
TAG_RUN_KIND = "run_kind"  # study | trial | baseline | retrain | confirm | report
TAG_SOURCE = "source"  # hpo | supplemental | legacy | baseline | retrain
TAG_STUDY = "study"  # the study name, e.g. 20M_h1_v2
TAG_STUDY_VERSION = "study_version"
TAG_BUDGET = "budget"
TAG_HORIZON = "horizon"
TAG_TRIAL_NUMBER = "trial_number"  # Optuna trial number (hpo) or legacy trial number
TAG_EXTREME_TYPE = "extreme_type"  # min_d_model ... max_n_heads, or "none"
TAG_STATE = "state"  # complete | failed | pruned | incomplete
TAG_LAST_EPOCH = "last_epoch"  # a pruned trial's last epoch (its run ends KILLED)
TAG_FAILURE_REASON = "failure_reason"
TAG_FAILURE_KIND = "failure_kind"  # diverged | oom | crashed | hung | worker_lost | error
TAG_DEVICE = "device"
TAG_CODE_VERSION = "code_version"
TAG_WORKER = "worker"  # host:pid of the process that made the run (a trial run: the worker that trained it)
TAG_RETRY_OF = "retry_of"  # trial number this attempt re-runs after its worker died
TAG_N_HEADS_SOURCE = "n_heads_source"  # logged | recovered | unrecoverable (legacy runs)
TAG_LEGACY_KEY = "legacy_key"  # idempotency key of an imported legacy trial
# A legacy trial that contradicts its grid (the entry of its arch_idx disagrees with what it logged,
# or the grid has no such arch_idx): imported with its metrics and status FINISHED, but with the
# state tag `unverified` in place of `complete`, so that nothing selecting complete trials takes it
# as a study's best; tags verified=false and unverified_reason (the disagreement, as in n_heads_note).
# A run without the verified tag was not contradicted.
STATE_UNVERIFIED = "unverified"
TAG_VERIFIED = "verified"
TAG_UNVERIFIED_REASON = "unverified_reason"
TAG_SUPPLEMENTAL_ID = "supplemental_id"  # e.g. S2
TAG_BASELINE_MODEL = "baseline_model"
TAG_BASELINE_KEY = "baseline_key"  # same key, same baselines: data, horizon, settings, code version
TAG_LEGACY_FINGERPRINT = "legacy_fingerprint"  # content hash: a run without it is half-made
TAG_LEGACY_ATTEMPT = "legacy_attempt"
TAG_HPARAMS_FROM_RUN = "hparams_from_run"  # supplemental: the main-study run its lr/dropout/wd came from
TAG_OPTUNA_TRIAL_ID = "optuna_trial_id"
# retrain: the trial run whose configuration this run re-trained to score it on test (the report
# reads its test scores for that trial when the trial has none of its own)
TAG_RETRAIN_OF = "retrain_of"
TAG_SMOKE_OF = "smoke_of"  # on a smoke study's run: the budget it stands in for
# The study's pinned dataset, on its study run: the fingerprint (tasks.data.dataset.dataset_fingerprint)
# and the record a refusal compares (file, features, label, window, horizon, split dates) as JSON.
# A resumed study, a joining worker, a supplemental or retrain run on other data is refused; the
# report refuses to put budgets on different fingerprints into one verdict.
TAG_DATASET_FINGERPRINT = "dataset_fingerprint"
TAG_DATASET = "dataset"
# Params of every run that reads the data (trials, re-trainings, baselines, the study run): F and
# the feature columns in order (comma-joined; a long list is cut and ends with its sha256).
PARAM_NUM_FEATURES = "num_features"
PARAM_FEATURES = "features"
PARAM_LABEL = "label"
# confirm (run_kind=confirm): the trial run whose configuration this run trained again with another
# seed (tag seed_index 1, 2, ...; the original trial is seed 0), for selection on the seed mean.
TAG_CONFIRM_OF = "confirm_of"
TAG_SEED_INDEX = "seed_index"
# On the study run and the registered model: how the configuration was selected
# (seed_mean: best mean val AUC over its seeds; single_run: the best trial, confirm_seeds=0).
TAG_SELECTED_BY = "selected_by"
# The study run's figures of the selected configuration over its seeds (the trial is one of them).
SEED_METRICS: tuple[str, ...] = ("seeds", "seed_mean_val_auc", "seed_sd_val_auc", "seed_mean_test_auc", "seed_sd_test_auc")
# A trial enqueued with the configuration the finished studies of smaller budgets predict
# (tasks.study.warm_start): tag warm_start=transfer (also its Optuna user attr), the prediction and
# its band as params warm_start_<param>, warm_start_<param>_low/_high, warm_start_sources.
TAG_WARM_START = "warm_start"
WARM_START_TRANSFER = "transfer"
# On the study run: the training split's windows and the unique (ticker, day) rows they read (the
# report's data regime: windows and ticker-days per parameter).
PARAM_TRAIN_WINDOWS = "train_windows"
PARAM_TRAIN_TICKER_DAYS = "train_ticker_days"
# On the study run.
TAG_STUDY_STATE = "study_state"  # running | stopped | complete | evaluation_failed
TAG_BEST_TRIAL = "best_trial"
TAG_BEST_RUN_ID = "best_run_id"
TAG_EVALUATED_ON = "evaluated_on"  # the worker (host:pid) that evaluated the best trial on test
# On a trial run: where its weights are. `stored` while it is the study's best so far (the
# artifact `checkpoint/trial_N.pt`), `deleted` once better trials replaced it (`pruned` before 2026-12).
TAG_CHECKPOINT = "checkpoint"
CHECKPOINT_DIR = "checkpoint"
# The best model of a study is registered as a version of the registered model named like the
# study, with these tags (and the grid entry's architecture params).
MODEL_VERSION_TAGS: tuple[str, ...] = ("val_auc", "test_auc", "best_trial", "trial_run_id", "budget", "horizon",
                                       "grid_version", "arch_idx", "d_model", "n_layers", "n_heads", "d_ff", "params")
BEST_MODEL_NAME = "best_model"  # the logged model's name on the study run

TrialState = Literal["complete", "failed", "pruned", "incomplete"]


def trial_run_name(study: str, number: int | str) -> str:
    """`20M_h5 #17`: how text (logs, the report) names a trial."""
    return f"{study} #{number}"


def _short(value: float) -> str:
    """3e-4, 0.1, 1e-5: a hyperparameter in as few characters as it takes."""
    text = f"{value:.0e}" if value and abs(value) < 0.01 else f"{value:g}"
    return text.replace("e-0", "e-").replace("e+0", "e")


def trial_run_label(number: int | str, arch, hparams: Mapping[str, float], suffix: str = "") -> str:
    """`#17 d128 L8 h4 ff4 lr3e-4 do0.1 wd1e-5`: a trial's MLflow run name. The experiment already
    names the study, so the first 20 characters show what differs between its trials (the UI cuts
    run names short): number, d_model, layers, heads, d_ff ratio, then the three hyperparameters."""
    shape = f"d{arch.d_model} L{arch.n_layers} h{arch.n_heads} ff{arch.d_ff_ratio}"
    hp = f"lr{_short(hparams['learning_rate'])} do{_short(hparams['dropout'])} wd{_short(hparams['weight_decay'])}"
    return f"#{number}{suffix} {shape} {hp}"


def baseline_run_name(model: str) -> str:
    """`baseline logreg`: apart from the trials (`#N ...`) at a glance, sorted after them."""
    return f"baseline {model}"


# The study experiment's saved view in the MLflow UI (its "shared view": an experiment tag the UI
# reads when the URL carries `viewStateShareKey=trials`): the trial runs only, flat instead of
# collapsed under the study run, best val AUC first, with val AUC and the architecture and
# hyperparameter columns shown. MLflow cannot make it the experiment's default view: links we
# print and the README carry the key.
TRIALS_VIEW_KEY = "trials"
TAG_SHARED_VIEW = f"mlflow.sharedViewState.{TRIALS_VIEW_KEY}"
TRIALS_VIEW_COLUMNS: tuple[str, ...] = (
    "metrics.`val_auc`", "tags.`state`", *(f"params.`{p}`" for p in ("d_model", "n_layers", "n_heads", "d_ff_ratio")),
    *(f"params.`{p}`" for p in ("learning_rate", "dropout", "weight_decay")), "tags.`extreme_type`",
    "metrics.`best_epoch`", "metrics.`epochs`", "params.`params`",
)


def trials_view_state() -> dict:
    """The saved view's state, as the MLflow 3 UI stores a shared view."""
    columns = list(TRIALS_VIEW_COLUMNS)
    return {"searchFilter": "tags.run_kind = 'trial'", "orderByKey": "metrics.`val_auc`", "orderByAsc": False,
            "selectedColumns": columns, "columnOrder": columns}


# Predictions: a run's scores on a split, aligned with the split's window order, as the artifact
# `predictions/<split>.npz` (written and read by tasks.tracking.predictions). The tag
# `predictions_<split>` carries the digest of the split's windows, so the report knows which runs
# have scores on which windows without listing artifacts. Trials log val; the study's finish logs
# test on its selected trial's run; baselines log both.
PREDICTIONS_DIR = "predictions"
PREDICTION_SPLITS: tuple[str, ...] = ("val", "test")


def predictions_artifact(split: str) -> str:
    """`predictions/test.npz`: the artifact path of a run's scores on a split."""
    return f"{PREDICTIONS_DIR}/{split}.npz"


def predictions_tag(split: str) -> str:
    """`predictions_test`: the tag whose value is the digest of the split's windows."""
    return f"predictions_{split}"
