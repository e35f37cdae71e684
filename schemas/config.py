"""The one typed configuration, passed down from the CLI or a Prefect flow to every layer.

Every model forbids unknown fields (a typo is an error, not a silently ignored setting) and is
frozen, so a config cannot change under a running study.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Literal


from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.arch_grid import BUDGETS, CURRENT_GRID_VERSION, DEFAULT_NUM_FEATURES, GRID_VERSIONS, REAL_BUDGETS, smoke_budget
from schemas.names import STUDY_NAME, parse_horizon

# How a study's sampler sees the architecture (tasks/study/space.py); chosen in bench/search_space.py.
ArchSpaceKind = Literal["factored", "categorical"]
PrunerKind = Literal["none", "median", "hyperband"]


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Config):
    """Which data, which label, which windows and splits."""

    source: str = Field("bundled", description="'bundled' (S&P 500 + NASDAQ, 1999-2018) or a CSV/Parquet path")
    window: int = Field(60, ge=2, le=1024, description="days of features per input window")
    threshold: float = Field(0.01, gt=0, lt=1, description="label: max High over next h days >= Close*(1+threshold)")
    train_fraction: float = Field(0.70, gt=0, lt=1)
    val_fraction: float = Field(0.15, gt=0, lt=1)
    features: Literal["ohlcv"] | tuple[str, ...] = Field(
        "ohlcv",
        description="'ohlcv': the 25 features computed from Open/High/Low/Close/Volume "
        "(tasks/data/features.py); or the source's column names to use as they are, in this order",
    )
    label: str = Field(
        "rule",
        description="'rule': the threshold rule on High/Close; or a column-name template with {horizon}, "
        "e.g. 'label_h{horizon}', whose column holds 0/1 for that horizon",
    )

    @field_validator("features")
    @classmethod
    def _feature_columns(cls, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
        if isinstance(value, str):
            return value
        if not value:
            raise ValueError("features needs at least one column name (or 'ohlcv' for the 25 computed features)")
        duplicated = sorted({c for c in value if value.count(c) > 1})
        if duplicated:
            raise ValueError(f"features lists {', '.join(duplicated)} more than once; list each column once")
        reserved = [c for c in value if c in ("Date", "ticker")]
        if reserved:
            raise ValueError(f"features cannot include {', '.join(reserved)}: Date and ticker index the panel")
        return value

    @field_validator("label")
    @classmethod
    def _label_template(cls, value: str) -> str:
        if value != "rule" and "{horizon}" not in value:
            raise ValueError(
                f"label {value!r} is neither 'rule' nor a column template with {{horizon}}; "
                "write e.g. 'label_h{horizon}' (the column label_h5 holds the 0/1 label at h5)"
            )
        return value

    @property
    def num_features(self) -> int:
        """F, the features per day the model reads: 25 computed, or the listed columns."""
        return DEFAULT_NUM_FEATURES if self.features == "ohlcv" else len(self.features)

    def label_column(self, horizon: int) -> str | None:
        """The source's label column at this horizon, or None for the built-in rule."""
        return None if self.label == "rule" else self.label.replace("{horizon}", str(horizon))

    @model_validator(mode="after")
    def _fractions_leave_a_test_split(self) -> DataConfig:
        if self.train_fraction + self.val_fraction >= 1:
            raise ValueError(
                f"train_fraction + val_fraction = {self.train_fraction + self.val_fraction:g} leaves no test split; "
                "keep their sum below 1"
            )
        return self


class TrainConfig(_Config):
    """How one trial trains."""

    batch_size: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        256,
        description="windows per step, or 'auto': the largest that fits on the GPU (tasks/training/batch_size.py), "
        "capped by max_auto_batch_size; 'auto' on a CPU means 256. The result records the size used.",
    )
    max_auto_batch_size: int = Field(
        1024,
        ge=1,
        description="upper bound of batch_size='auto': the train split holds ~7k windows, so a larger batch "
        "leaves too few steps per epoch",
    )
    eval_batch_size: int = Field(2048, ge=1)
    max_epochs: int = Field(50, ge=1)
    patience: int = Field(5, ge=1, description="epochs without a better val AUC before stopping")
    # Warmup is relative to the run: a fixed 200 steps was 7 epochs of a 27-step epoch (longer
    # than the patience) and 10x a smoke run, so trials trained at a fraction of their learning rate.
    warmup_fraction: float = Field(
        0.05, ge=0, lt=1, description="linear learning-rate warmup over this fraction of the planned steps"
    )
    max_warmup_steps: int = Field(200, ge=0, description="cap on the warmup's steps (long runs)")
    grad_clip: float | None = Field(1.0, gt=0)
    max_batches_per_epoch: int | None = Field(None, ge=1, description="cap an epoch (smoke runs)")
    seed: int = 0
    device: str = Field("auto", description="'auto' (cuda when present), 'cpu', 'cuda' or 'cuda:N'")
    compile: bool = Field(False, description="torch.compile the model (CUDA; measured in bench/)")
    activation_checkpointing: bool = False


class SearchSpace(_Config):
    """The hyperparameters searched besides the architecture (arch_idx over the budget's grid)."""

    learning_rates: tuple[float, ...] = (1e-5, 5e-5, 1e-4, 5e-4)
    dropouts: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7)
    weight_decays: tuple[float, ...] = (0.0, 1e-5, 1e-4, 1e-3)

    @field_validator("learning_rates", "dropouts", "weight_decays")
    @classmethod
    def _non_empty_sorted_unique(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        if not values:
            raise ValueError("a search dimension needs at least one value")
        if len(set(values)) != len(values):
            raise ValueError(f"duplicate values in {values}")
        return tuple(sorted(values))

    def central(self) -> dict[str, float]:
        """The lower-median value of each dimension: what forced-extreme trials use."""
        pick = lambda values: values[(len(values) - 1) // 2]  # noqa: E731
        return {
            "learning_rate": pick(self.learning_rates),
            "dropout": pick(self.dropouts),
            "weight_decay": pick(self.weight_decays),
        }


class StoreConfig(_Config):
    """Where Optuna and MLflow keep their state. Embedded SQLite under `root` by default."""

    # Environment defaults let every worker of a team share stores without per-run parameters.
    root: Path = Field(default_factory=lambda: Path(os.environ.get("HPO_ROOT", "mlruns")))
    optuna_storage: str | None = Field(
        default_factory=lambda: os.environ.get("HPO_OPTUNA_STORAGE"),
        description="Optuna RDB URL (env HPO_OPTUNA_STORAGE); default sqlite under root",
    )
    mlflow_tracking_uri: str | None = Field(
        default_factory=lambda: os.environ.get("HPO_MLFLOW_TRACKING_URI"),
        description="MLflow tracking URI (env HPO_MLFLOW_TRACKING_URI); default sqlite under root",
    )
    outage_budget_s: float = Field(
        default_factory=lambda: float(os.environ.get("HPO_OUTAGE_BUDGET_S", 900)), gt=0,
        description="how long a worker waits out an unreachable Optuna database or MLflow server before it stops (env HPO_OUTAGE_BUDGET_S)",
    )

    @property
    def optuna_url(self) -> str:
        return self.optuna_storage or f"sqlite:///{self.root.resolve() / 'optuna.db'}"

    @property
    def mlflow_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.root.resolve() / 'mlflow.db'}"

    @property
    def artifact_root(self) -> Path:
        return self.root.resolve() / "artifacts"

    @property
    def cache_dir(self) -> Path:
        return self.root.resolve() / "cache"

    def checkpoint_dir(self, study: str) -> Path:
        """Where this worker keeps a study's weights while they are needed (tasks.study.checkpoints):
        a folder per worker process, so workers sharing a disk never delete each other's files."""
        return self.root.resolve() / "checkpoints" / study / f"{socket.gethostname()}-{os.getpid()}"


class StudyConfig(_Config):
    """How a study runs: its size, its limits and its crash safety."""

    n_trials: int = Field(50, ge=1, description="completed trials the study ends with, across workers and restarts")
    timeout_hours: float | None = Field(None, gt=0, description="stop this run cleanly after this long; None = no timeout")
    grid_version: int = CURRENT_GRID_VERSION
    sampler_seed: int = 0
    max_failed_trials: int | None = Field(
        None, ge=0, description="stop this run after this many failed trials; default n_trials"
    )
    max_retries: int = Field(2, ge=0, description="re-runs of a trial whose worker died (heartbeat lost)")
    heartbeat_interval_s: int = Field(30, ge=1)
    heartbeat_grace_s: int = Field(120, ge=2, description="a RUNNING trial silent this long is failed and retried")
    slots: int = Field(
        1, ge=1, le=64, description="trials one worker runs at once on its device (e.g. 4-8 for 2M on one H100)"
    )
    baselines: bool = Field(True, description="fit the linear/tree baselines on the study's data (cached in MLflow)")
    stall_timeout_s: float | None = Field(
        3600, gt=0, description="kill a trial that reports no progress for this long (a hung kernel)"
    )
    arch_space: ArchSpaceKind = Field(
        "factored",
        description="how the sampler draws the architecture: 'factored' (d_model, n_layers, n_heads, d_ff_ratio as "
        "ordered dimensions, in-band grid entries only) or 'categorical' (arch_idx as one category); a study "
        "keeps the space it was created with",
    )
    pruner: PrunerKind = Field(
        "none",
        description="stop hopeless trials early: 'median' or 'hyperband'; with a pruner, n_trials counts complete "
        "plus pruned trials. A study keeps the pruner it was created with",
    )
    prune_after_epochs: int = Field(1, ge=0, description="epochs every trial trains before the pruner may stop it")
    confirm_top_k: int = Field(3, ge=0, description="configurations (best by val AUC) trained again with new seeds when the study is complete")
    confirm_seeds: int = Field(
        2, ge=0, le=20,
        description="new seeds per confirmed configuration (each then has 1 + this many); the selection is on the seed mean; 0: off",
    )
    transfer: bool = Field(
        True,
        description="warm start: when finished studies of at least two smaller budgets exist at the horizon, a new study's "
        "trial 6 is the configuration they predict (tasks/study/warm_start.py); False: trial 6 is the sampler's",
    )
    transfer_from_legacy: bool = Field(
        False,
        description="let imported legacy studies (no dataset fingerprint) be warm-start sources: say so only when their "
        "data is the study's",
    )

    @field_validator("grid_version")
    @classmethod
    def _known_grid(cls, version: int) -> int:
        if version not in GRID_VERSIONS:
            raise ValueError(f"unknown grid_version {version}; known: {sorted(GRID_VERSIONS)}")
        return version

    @property
    def confirming(self) -> bool:
        """Whether a complete study trains its top configurations again with new seeds."""
        return self.confirm_top_k > 0 and self.confirm_seeds > 0

    @property
    def weights_kept(self) -> int:
        """How many of the best trials keep their weights until the study is finished: every
        configuration that may be selected on its seed mean must still be there to register."""
        return max(1, self.confirm_top_k) if self.confirming else 1

    @property
    def failure_limit(self) -> int:
        return self.n_trials if self.max_failed_trials is None else self.max_failed_trials


class StudySpec(_Config):
    """Which study: a (budget, horizon) pair and a version (a fresh re-run is a new version)."""

    budget: str
    horizon: int
    version: int | None = Field(None, ge=1, description="None: the latest existing version, or 1")
    fresh: bool = Field(False, description="start a new version beside the latest (the old one is kept)")
    smoke_of: str | None = Field(None, description="the budget this smoke study stands in for (smoke switch)")

    @field_validator("budget")
    @classmethod
    def _known_budget(cls, budget: str) -> str:
        if budget not in BUDGETS:
            raise ValueError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
        return budget

    @field_validator("smoke_of")
    @classmethod
    def _known_stand_in(cls, budget: str | None) -> str | None:
        if budget is not None and budget not in REAL_BUDGETS:
            raise ValueError(f"unknown budget {budget!r} in smoke_of; choose one of {', '.join(REAL_BUDGETS)}")
        return budget

    @model_validator(mode="before")
    @classmethod
    def _stand_in_on_its_ladder_budget(cls, values: object) -> object:
        """A stand-in searches its own ladder band: smoke_of=20M means budget smoke-20M, and the
        budget smoke-20M means smoke_of=20M, however the spec was written."""
        if not isinstance(values, dict):
            return values
        budget, smoke_of = values.get("budget"), values.get("smoke_of")
        if smoke_of and budget in (None, "smoke"):
            return {**values, "budget": f"smoke-{smoke_of}"}
        if isinstance(budget, str) and budget.startswith("smoke-") and not smoke_of:
            return {**values, "smoke_of": budget.removeprefix("smoke-")}
        return values

    @model_validator(mode="after")
    def _consistent_stand_in(self) -> StudySpec:
        if self.smoke_of and self.budget != f"smoke-{self.smoke_of}":
            raise ValueError(f"budget {self.budget!r} cannot stand in for {self.smoke_of}; use budget smoke-{self.smoke_of}")
        return self

    @field_validator("horizon", mode="before")
    @classmethod
    def _known_horizon(cls, horizon: int | str) -> int:
        return parse_horizon(horizon)

    @property
    def base_name(self) -> str:
        """`20M_h5`; under the smoke switch `smoke-20M_h5` (its ladder budget), so stand-ins of
        different budgets stay distinct studies."""
        return f"{self.budget}_h{self.horizon}"

    def name(self, version: int) -> str:
        """Version 1 keeps the plain name (`20M_h5`) so legacy and first runs share it."""
        return self.base_name if version == 1 else f"{self.base_name}_v{version}"

    def as_smoke(self) -> StudySpec:
        """The stand-in under the smoke switch: 20M_h5 -> smoke-20M_h5, on the smoke-20M band."""
        if self.budget == "smoke" or self.smoke_of:
            return self
        return StudySpec(**{**self.model_dump(), "budget": smoke_budget(self.budget), "smoke_of": self.budget})

    @classmethod
    def parse(cls, name: str) -> StudySpec:
        """'20M_h5' (latest version), '20M_h1_v2' (exactly version 2), 'smoke-20M_h5' (smoke stand-in)."""
        match = STUDY_NAME.match(name.strip())
        if not match or not (match["budget"] or match["smoke_of"]) or (match["budget"] and match["smoke_of"]):
            raise ValueError(f"cannot read study name {name!r}; write BUDGET_hH or BUDGET_hH_vN, e.g. 20M_h5 or 20M_h1_v2")
        version = match["version"]
        return cls(
            budget=match["budget"] or f"smoke-{match['smoke_of']}",
            horizon=match["horizon"],
            version=int(version) if version else None,
            smoke_of=match["smoke_of"],
        )


class HpoConfig(_Config):
    """Everything a campaign, a study and a trial need; the CLI and every flow take this."""

    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    search: SearchSpace = SearchSpace()
    study: StudyConfig = StudyConfig()
    stores: StoreConfig = StoreConfig()
    smoke_switch: bool = Field(False, description="set by smoke(): studies stand in on the smoke ladder with short trials")

    def smoke(self) -> HpoConfig:
        """The smoke switch: each study on its budget's smoke-ladder band (`StudySpec.as_smoke`),
        short trials that still learn, and at most 8 trials per study (the 6 extremes and 2
        sampled), so a whole campaign runs in minutes on a 2-core CPU.

        A trial sees up to 8 epochs of 20 batches of 64 windows of 20 days, with early stopping
        after 2 epochs without a better val AUC. 20-day windows make a trial ~5x cheaper than 60
        and learn as well with the last-day readout (bench/RESULTS.md "Smoke trial settings").
        Learning rates move up to where ~100 AdamW steps learn (the central 1e-3 is what the six
        forced extremes use); at the full search's 1e-5 a short run stays at its initialisation.
        """
        train = self.train.model_copy(
            update={
                "max_epochs": min(self.train.max_epochs, SMOKE_MAX_EPOCHS),
                "patience": min(self.train.patience, SMOKE_PATIENCE),
                "batch_size": SMOKE_BATCH_SIZE,
                "max_batches_per_epoch": min(self.train.max_batches_per_epoch or SMOKE_BATCHES, SMOKE_BATCHES),
            }
        )
        return self.model_copy(
            update={
                "data": self.data.model_copy(update={"window": min(self.data.window, SMOKE_WINDOW)}),
                "train": train,
                "search": self.search.model_copy(update={"learning_rates": SMOKE_LEARNING_RATES}),
                "study": self.study.model_copy(update={"n_trials": min(self.study.n_trials, 8),
                                                       "confirm_top_k": min(self.study.confirm_top_k, 2)}),
                "smoke_switch": True,
            }
        )


SMOKE_MAX_EPOCHS, SMOKE_PATIENCE, SMOKE_BATCH_SIZE, SMOKE_BATCHES, SMOKE_WINDOW = 8, 2, 64, 20, 20
SMOKE_LEARNING_RATES: tuple[float, ...] = (3e-4, 1e-3, 2e-3, 4e-3)
