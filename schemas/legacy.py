"""The recovered legacy format: one JSON file per legacy experiment, its trials with n_heads filled
in where that can be trusted, and the problems met on the way.

Every model forbids unknown fields, so a misspelled key in a hand-edited file is an error, not a
silently dropped value. Unknown keys from the *logs* are kept, in `LegacyTrial.extra`.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.arch_grid import BUDGETS, EXTREME_TYPES, GRID_VERSIONS, LEGACY_GRID_VERSION
from schemas.config import StoreConfig
from schemas.names import HORIZONS, parse_horizon
from schemas.tracking import TrialState

NHeadsSource = Literal["logged", "recovered", "unrecoverable"]
ExtremeType = Literal[EXTREME_TYPES]  # type: ignore[valid-type]


class _Legacy(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Problem(_Legacy):
    """A skipped or doubtful input line (or JSON entry), with where it is and what was wrong."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    file: str
    line: int | None = Field(None, ge=1, description="1-based line number; None for JSON entries")
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}" if self.line else f"{self.file}: {self.reason}"


def _unit_interval(name: str, value: float | None) -> float | None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value!r} is outside [0, 1]")
    return value


class LegacyTrial(_Legacy):
    """One start of one legacy trial (a trial restarted under the same number has two attempts)."""

    number: int = Field(ge=0, description="the trial number the log gave")
    attempt: int = Field(1, ge=1, description="1 for the first start of this number, 2 after a restart, ...")
    state: TrialState
    failure_reason: str | None = None
    extreme_type: ExtremeType | None = None

    arch_idx: int | None = Field(None, ge=0)
    d_model: int | None = Field(None, gt=0)
    n_layers: int | None = Field(None, gt=0)
    n_heads: int | None = Field(None, gt=0)
    n_heads_source: NHeadsSource
    n_heads_note: str | None = Field(None, description="why n_heads is unrecoverable, or a doubt about a logged value")
    verified: bool = Field(True, description="False when the trial contradicts its grid (the entry of its arch_idx "
                           "disagrees with what it logged, or there is none): kept, never selected as best")
    unverified_reason: str | None = Field(None, description="the contradiction, when verified is False")
    d_ff: int | None = Field(None, gt=0)
    d_ff_ratio: int | None = Field(None, gt=0)
    params: int | None = None
    learning_rate: float | None = Field(None, gt=0)
    dropout: float | None = Field(None, ge=0, lt=1)
    weight_decay: float | None = Field(None, ge=0)

    val_auc: float | None = None
    val_loss: float | None = Field(None, ge=0)
    pred_min: float | None = None
    pred_max: float | None = None
    pred_range: float | None = None
    recall: float | None = None
    epochs: int | None = Field(None, ge=0)
    best_epoch: int | None = Field(None, ge=0)
    train_seconds: float | None = Field(None, ge=0)

    extra: dict[str, float | int | str] = Field(default_factory=dict, description="unknown keys, kept as logged")
    started_at: datetime | None = None
    ended_at: datetime | None = None
    start_line: int | None = Field(None, ge=1)
    end_line: int | None = Field(None, ge=1)

    @field_validator("params")
    @classmethod
    def _params_not_negative(cls, params: int | None) -> int | None:
        if params is not None and params < 0:
            raise ValueError(f"params={params} is negative; a parameter count is at least 0")
        return params

    @field_validator("val_auc", "pred_min", "pred_max", "pred_range", "recall")
    @classmethod
    def _in_unit_interval(cls, value: float | None, info) -> float | None:
        return _unit_interval(info.field_name, value)

    @model_validator(mode="after")
    def _consistent(self) -> LegacyTrial:
        where = f"trial {self.number}"
        if self.state == "complete" and self.val_auc is None:
            raise ValueError(f"{where} is complete but has no val_auc; a complete trial needs its result")
        if self.state != "complete" and not self.failure_reason:
            raise ValueError(f"{where} is {self.state}: give a failure_reason")
        if self.n_heads_source == "unrecoverable":
            if self.n_heads is not None:
                raise ValueError(f"{where}: n_heads={self.n_heads} with n_heads_source=unrecoverable; use 'logged' or 'recovered'")
            if not self.n_heads_note:
                raise ValueError(f"{where}: n_heads is unrecoverable; say why in n_heads_note")
        elif self.n_heads is None:
            raise ValueError(f"{where}: n_heads_source={self.n_heads_source} needs an n_heads value")
        if self.verified == bool(self.unverified_reason):
            raise ValueError(f"{where}: an unverified trial says why in unverified_reason, a verified one has none")
        if self.n_heads and self.d_model and self.d_model % self.n_heads:
            raise ValueError(f"{where}: d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.d_model and self.d_ff_ratio and self.d_ff and self.d_ff != self.d_model * self.d_ff_ratio:
            raise ValueError(f"{where}: d_ff={self.d_ff} is not d_model*d_ff_ratio={self.d_model * self.d_ff_ratio}")
        if self.pred_min is not None and self.pred_max is not None and self.pred_min > self.pred_max:
            raise ValueError(f"{where}: pred_min={self.pred_min} is above pred_max={self.pred_max}")
        return self


def _check_budget(budget: str) -> str:
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    return budget


def _check_horizon(horizon: int | str) -> int:
    return parse_horizon(horizon)


def experiment_name(budget: str, horizon: int | str, grid_version: int = LEGACY_GRID_VERSION) -> str:
    """`2M_h1` for budget 2M and horizon 1 (or 'h1'); ValueError naming what does not exist."""
    errors = []
    for check, value in ((_check_budget, budget), (_check_horizon, horizon), (_check_grid_version, grid_version)):
        try:
            check(value)
        except ValueError as exc:
            errors.append(str(exc))
    if errors:
        raise ValueError("; ".join(errors))
    return f"{budget}_h{_check_horizon(horizon)}"


def _check_grid_version(version: int) -> int:
    if version not in GRID_VERSIONS:
        raise ValueError(f"unknown grid_version {version!r}; known: {sorted(GRID_VERSIONS)}")
    return version


class LegacyExperiment(_Legacy):
    """One legacy experiment (study): where it came from, how it ended, and its trials."""

    schema_version: Literal[1] = 1
    experiment: str = Field(description="the study name, BUDGET_hH, e.g. 2M_h1; also the MLflow experiment")
    budget: str
    horizon: int
    grid_version: int = LEGACY_GRID_VERSION
    grid_source: str | None = Field(None, description="the researcher's grid n_heads was looked up in (--grid): "
                                    "a JSON file or package.module:function; None: our grid of grid_version")
    grid_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="fingerprint of that grid's entries of this budget")
    source_log: str = Field(description="where the trials were read from: a log, a JSON or trials CSV file, or "
                            "an Optuna storage (URL#study)")
    source_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    reconciled_with: list[str] = Field(default_factory=list, description="other sources of the same experiment, "
                                       "merged in trial by trial (source_log's values win where both give one)")
    planned_trials: int | None = Field(None, ge=1, description="n_trials the run was started with")
    completed_trials: int = Field(ge=0, description="trials in state complete")
    timed_out: bool = Field(False, description="the run was cut short by its timeout")
    timeout_hours: float | None = Field(None, gt=0)
    stopped_at: int | None = Field(None, ge=0, description="K of the log's 'stopping at K/M trials'")
    trials: list[LegacyTrial] = Field(default_factory=list)

    @field_validator("budget")
    @classmethod
    def _known_budget(cls, budget: str) -> str:
        return _check_budget(budget)

    @field_validator("horizon", mode="before")
    @classmethod
    def _known_horizon(cls, horizon: int | str) -> int:
        return _check_horizon(horizon)

    @field_validator("grid_version")
    @classmethod
    def _known_grid(cls, version: int) -> int:
        return _check_grid_version(version)

    @model_validator(mode="after")
    def _consistent(self) -> LegacyExperiment:
        expected = f"{self.budget}_h{self.horizon}"
        if self.experiment != expected:
            raise ValueError(f"experiment {self.experiment!r} does not match budget={self.budget} horizon=h{self.horizon}; "
                             f"name it {expected!r}")
        attempts = Counter((t.number, t.attempt) for t in self.trials)
        repeated = sorted(k for k, n in attempts.items() if n > 1)
        if repeated:
            raise ValueError(f"{self.experiment}: (trial number, attempt) repeated: {repeated}")
        complete = sum(t.state == "complete" for t in self.trials)
        if self.completed_trials != complete:
            raise ValueError(f"{self.experiment}: completed_trials={self.completed_trials} but {complete} trials are complete")
        return self

    def latest_attempts(self) -> list[LegacyTrial]:
        """The trial that counts for each number: its last attempt."""
        latest: dict[int, LegacyTrial] = {}
        for trial in self.trials:
            if trial.number not in latest or trial.attempt > latest[trial.number].attempt:
                latest[trial.number] = trial
        return [latest[n] for n in sorted(latest)]


class ImportCounts(_Legacy):
    """What an MLflow import did: runs created, left as they were, replaced because the trial changed."""

    experiment_id: str
    created: int = 0
    unchanged: int = 0
    replaced: int = 0


class ExperimentSummary(_Legacy):
    """One row of `hpo recover`'s table."""

    experiment: str
    source: str
    trials: int = Field(description="distinct trial numbers")
    complete: int
    unverified: int = Field(0, description="trials that contradict their grid (kept, never selected as best)")
    failed: int
    incomplete: int
    pruned: int = 0
    restarts: int = Field(description="earlier starts of a repeated trial number (they count as failed)")
    n_heads_logged: int
    n_heads_recovered: int
    n_heads_unrecoverable: int
    problems: int
    noise_lines: int = 0
    output: str | None = None
    mlflow: ImportCounts | None = None


class RecoverRequest(_Legacy):
    """The parameters of the `recover` flow (and of `hpo recover`)."""

    inputs: list[Path] = Field(default_factory=list, description="legacy .log files, trial .json files, "
                               "trials_dataframe() .csv files, or folders of .log and .json files")
    out: Path = Field(description="folder the recovered <experiment>.json files are written to")
    grid_version: int | None = Field(None, description=f"grid the logs' arch_idx refer to; default {LEGACY_GRID_VERSION}")
    grid: str | None = Field(None, description="the researcher's grid instead: a JSON file of entries per budget, "
                             "or package.module:function(budget, num_features=25)")
    optuna_storage: str | None = Field(None, description="an Optuna storage to read: an SQLite or journal file, or an RDB URL")
    studies: list[str] = Field(default_factory=list, description="studies of optuna_storage to read (default: all)")
    import_mlflow: bool = False
    strict: bool = Field(False, description="any problem: write and import nothing")
    stores: StoreConfig = StoreConfig()

    @field_validator("grid_version")
    @classmethod
    def _known_grid(cls, version: int | None) -> int | None:
        return version if version is None else _check_grid_version(version)

    @model_validator(mode="after")
    def _something_to_read(self) -> RecoverRequest:
        if not self.inputs and not self.optuna_storage:
            raise ValueError("nothing to recover: give legacy files or folders, or --optuna-storage")
        if self.studies and not self.optuna_storage:
            raise ValueError("--study names a study of an Optuna storage: give --optuna-storage too")
        return self


class RecoverReport(_Legacy):
    """What `recover` did: a summary per experiment, every problem, and whether files were written."""

    experiments: list[ExperimentSummary]
    problems: list[Problem]
    written: bool
