"""`hpo`: the one command-line entry point. Each command builds an HpoConfig and calls a flow or
a task; no logic lives here beyond argument handling."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from models.arch_grid import BUDGET_BANDS, CURRENT_GRID_VERSION, get_architectures_for_budget
from schemas.config import DataConfig, HpoConfig, StoreConfig, StudySpec, TrainConfig

app = typer.Typer(help="Hyperparameter-search campaigns across transformer parameter budgets.", no_args_is_help=True)
console = Console()

StoreRoot = Annotated[Path, typer.Option("--root", help="folder of the embedded SQLite stores")]
DataSource = Annotated[str, typer.Option("--data", help="'bundled' or a CSV/Parquet path")]


def build_config(
    root: Path = Path("mlruns"),
    data: str = "bundled",
    storage: str | None = None,
    tracking_uri: str | None = None,
    **study: object,
) -> HpoConfig:
    base = HpoConfig()
    return HpoConfig(
        data=DataConfig(source=data),
        stores=StoreConfig(root=root, optuna_storage=storage, mlflow_tracking_uri=tracking_uri),
        study=base.study.model_copy(update={k: v for k, v in study.items() if v is not None}),
    )


@app.command()
def grid(
    budget: Annotated[str, typer.Argument(help="smoke, 2M, 20M, 200M or 2B")],
    grid_version: Annotated[int, typer.Option(help="grid version")] = CURRENT_GRID_VERSION,
) -> None:
    """Print a budget's architecture grid as a table."""
    try:
        archs = get_architectures_for_budget(budget, grid_version=grid_version)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    lo, hi = BUDGET_BANDS[budget]
    table = Table(title=f"{budget} grid v{grid_version}: {len(archs)} architectures in [{lo:,}, {hi:,}] parameters")
    for column in ("arch_idx", "d_model", "n_layers", "n_heads", "d_ff", "d_ff_ratio", "params"):
        table.add_column(column, justify="right")
    for a in archs:
        table.add_row(*(f"{v:,}" if k == "params" else str(v) for k, v in a.as_dict().items()))
    console.print(table)


@app.command()
def train(
    budget: Annotated[str, typer.Argument()] = "smoke",
    horizon: Annotated[str, typer.Argument()] = "h1",
    arch_idx: Annotated[int, typer.Option(help="grid index of the architecture")] = 0,
    learning_rate: float = 5e-4,
    dropout: float = 0.1,
    weight_decay: float = 1e-4,
    max_epochs: int = 5,
    data: DataSource = "bundled",
    root: StoreRoot = Path("mlruns"),
) -> None:
    """Train one architecture once (no study, no tracking) and print its result."""
    from tasks.data import cached_dataset
    from tasks.train import Hyperparams, train_model

    spec = StudySpec(budget=budget, horizon=horizon)
    config = HpoConfig(data=DataConfig(source=data), train=TrainConfig(max_epochs=max_epochs), stores=StoreConfig(root=root))
    arch = get_architectures_for_budget(spec.budget)[arch_idx]
    prepared, _ = cached_dataset(config.data, spec.horizon, config.stores.cache_dir)
    console.print(f"training {arch} on {prepared.summary()}")
    result, _ = train_model(
        prepared,
        arch,
        Hyperparams(learning_rate, dropout, weight_decay),
        config.train,
        config.data.window,
        on_epoch=lambda e: console.print(e),
    )
    console.print(result.as_dict())


if __name__ == "__main__":
    app()
