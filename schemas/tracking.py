"""What MLflow holds, by name: the contract between the trainer, the legacy importer, the
baselines and the report. The report reads MLflow only, so anything it needs is named here.

Layout: one MLflow experiment per study (named like the study: `20M_h5`, `20M_h1_v2`); in it one
parent run per study (tag `run_kind=study`) and one run per trial, supplemental trial, legacy
trial or baseline (tag `run_kind=trial` / `baseline`), each a child of the study run where the
study run exists.
"""

from __future__ import annotations

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

# Metrics logged every epoch (step = epoch).
EPOCH_METRICS: tuple[str, ...] = ("train/loss", "val/loss", "val/auc")
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
# On the study (parent) run when the study completes.
STUDY_METRICS: tuple[str, ...] = ("best_val_auc", "best_test_auc", "n_complete", "n_failed")

# Tags.
TAG_RUN_KIND = "run_kind"  # study | trial | baseline
TAG_SOURCE = "source"  # hpo | supplemental | legacy | baseline
TAG_STUDY = "study"  # the study name, e.g. 20M_h1_v2
TAG_STUDY_VERSION = "study_version"
TAG_BUDGET = "budget"
TAG_HORIZON = "horizon"
TAG_TRIAL_NUMBER = "trial_number"  # Optuna trial number (hpo) or legacy trial number
TAG_EXTREME_TYPE = "extreme_type"  # min_d_model ... max_n_heads, or "none"
TAG_STATE = "state"  # complete | failed | incomplete
TAG_FAILURE_REASON = "failure_reason"
TAG_FAILURE_KIND = "failure_kind"  # diverged | oom | crashed | hung | worker_lost | error
TAG_DEVICE = "device"
TAG_CODE_VERSION = "code_version"
TAG_RETRY_OF = "retry_of"  # trial number this attempt re-runs after its worker died
TAG_N_HEADS_SOURCE = "n_heads_source"  # logged | recovered | unrecoverable (legacy runs)
TAG_LEGACY_KEY = "legacy_key"  # idempotency key of an imported legacy trial
TAG_SUPPLEMENTAL_ID = "supplemental_id"  # e.g. S2
TAG_BASELINE_MODEL = "baseline_model"

Source = Literal["hpo", "supplemental", "legacy", "baseline"]
SOURCES: tuple[str, ...] = ("hpo", "supplemental", "legacy", "baseline")
TrialState = Literal["complete", "failed", "incomplete"]


def trial_run_name(study: str, number: int | str) -> str:
    """`20M_h5 #17`: readable in the MLflow UI."""
    return f"{study} #{number}"
