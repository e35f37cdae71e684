"""`hpo`: the one command-line entry point. Each command builds an HpoConfig and calls a flow or
a task; no logic lives here beyond argument handling."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

if sys.stderr.isatty():
    # On a terminal the live progress display shows each trial and epoch; Prefect's own INFO
    # lines would write across its bars. They still reach the Prefect API (the UI's run logs).
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")

import typer
from rich.console import Console
from rich.table import Table

from models.arch_grid import BUDGET_BANDS, CURRENT_GRID_VERSION, DEFAULT_NUM_FEATURES, get_architectures_for_budget
from schemas.config import DataConfig, HpoConfig, StudyConfig, StudySpec
from schemas.names import HORIZONS

app = typer.Typer(help="Hyperparameter-search campaigns across transformer parameter budgets.", no_args_is_help=True)
console = Console()
DEBUG = {"on": False}  # --debug: refusals show their traceback and Prefect's own error records


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="show tracebacks of refused input (and Prefect's error records)")] = False) -> None:
    """Hyperparameter-search campaigns across transformer parameter budgets."""
    DEBUG["on"] = debug


def refuse(problem: object, cause: BaseException | None = None) -> NoReturn:
    """Refused input: one red line naming the problem and the fix, exit 2, nothing written (the
    callers refuse before any store is touched); with --debug the traceback too."""
    from tasks.refusals import EXIT_REFUSED

    if DEBUG["on"] and cause is not None:
        console.print_exception()
    console.print(str(problem), style="red", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_REFUSED) from cause

# Options left unset defer to --config, then the environment (HPO_ROOT, ...), then the defaults.
Root = Annotated[Path | None, typer.Option("--root", help="folder of the embedded SQLite stores (default mlruns)")]
DataSource = Annotated[str | None, typer.Option("--data", help="'bundled' (default) or a CSV/Parquet path")]
Features = Annotated[str | None, typer.Option(
    "--features", help="'ohlcv' (default: 25 features computed from OHLCV) or the panel's feature columns, "
    "comma-separated (f1,f2,...) or @FILE with one name a line")]
Label = Annotated[str | None, typer.Option(
    "--label", help="'rule' (default: the threshold rule on High/Close) or the panel's label column template, "
    "e.g. label_h{horizon}")]
Storage = Annotated[str | None, typer.Option("--storage", help="Optuna storage URL (PostgreSQL for several workers)")]
TrackingUri = Annotated[str | None, typer.Option("--tracking-uri", help="MLflow tracking URI (default SQLite under --root)")]
Device = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda or cuda:N (default auto)")]


Pruner = Annotated[
    str | None,
    typer.Option("--pruner", help="none (default), median or hyperband: stop hopeless trials early; n_trials then "
                 "counts complete plus pruned trials. A study keeps the pruner it was created with"),
]
ArchSpace = Annotated[
    str | None,
    typer.Option("--arch-space", help="factored (default: d_model, n_layers, n_heads, d_ff_ratio as ordered "
                 "dimensions) or categorical (arch_idx); a study keeps the space it was created with"),
]


ConfigFile = Annotated[
    Path | None, typer.Option("--config", help="JSON file of an HpoConfig (data, train, search, study, stores); flags override it")
]


def load_config_file(path: Path | None) -> HpoConfig:
    if path is None:
        return HpoConfig()
    try:
        return HpoConfig.model_validate_json(path.read_text())
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(f"{path}: {exc}", param_hint="--config") from exc


def build_config(
    root: Path | None = None,
    data: str | None = None,
    storage: str | None = None,
    tracking_uri: str | None = None,
    config_file: Path | None = None,
    *,
    features: str | None = None,
    label: str | None = None,
    **study: object,
) -> HpoConfig:
    """The config file (or the defaults), then the flags that were given."""
    base = load_config_file(config_file)
    data_config = data_options(base.data, data, features, label)
    stores = {"root": root, "optuna_storage": storage, "mlflow_tracking_uri": tracking_uri}
    try:  # validated, so that `--pruner medain` is refused with the choices
        study_config = StudyConfig.model_validate({**base.study.model_dump(), **{k: v for k, v in study.items() if v is not None}})
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    return base.model_copy(
        update={
            "data": data_config,
            "stores": base.stores.model_copy(update={k: v for k, v in stores.items() if v is not None}),
            "study": study_config,
        }
    )


def data_options(base: DataConfig, source: str | None, features: str | None, label: str | None) -> DataConfig:
    """The data config with --data, --features and --label applied (validated: a bad list is refused)."""
    update: dict[str, object] = {}
    if source:
        update["source"] = source
    if features:
        if features.startswith("@"):
            try:
                names = [line.strip() for line in Path(features[1:]).read_text().splitlines() if line.strip()]
            except OSError as exc:
                raise typer.BadParameter(f"{features[1:]}: {exc}", param_hint="--features") from exc
        else:
            names = [name.strip() for name in features.split(",") if name.strip()]
        update["features"] = "ohlcv" if names == ["ohlcv"] else tuple(names)
    if label:
        update["label"] = label
    try:
        return DataConfig.model_validate({**base.model_dump(), **update})
    except ValueError as exc:
        raise typer.BadParameter(str(exc).replace("\n", " "), param_hint="--features/--label") from exc


def check_data(config: HpoConfig, horizons: Iterable[int]) -> None:
    """Prepare (and so validate) the data of each horizon before any store is opened: bad input is
    one line naming the file, the column and the fix, and nothing is written."""
    from tasks.data.dataset import DataError, cached_dataset

    for horizon in dict.fromkeys(horizons):
        try:
            cached_dataset(config.data, horizon, config.stores.cache_dir)
        except DataError as exc:
            refuse(exc, exc)


@contextmanager
def refused_or_stopped(outage_budget_s: float) -> Iterator[None]:
    """Around a command's flows: a study's pinned dataset refusing this run's data (or bad data
    found late) is one line, exit 2; a store unreachable past the outage budget stops the run with
    one line, exit 1 (its trial is back in the queue; the traceback only with --debug)."""
    from tasks.data.dataset import DataError, DatasetMismatch
    from tasks.study.patience import past_the_outage_budget

    try:
        yield
    except (DataError, DatasetMismatch) as exc:
        refuse(exc, exc)
    except Exception as exc:
        if not past_the_outage_budget(exc):
            raise
        if DEBUG["on"]:
            console.print_exception()
        console.print(f"stopped: {_outage_line(exc, outage_budget_s)}", style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from exc


def _outage_line(exc: BaseException, budget_s: float) -> str:
    from tasks.study.patience import StoreUnavailable

    if isinstance(exc, StoreUnavailable):
        return str(exc)
    return (f"the MLflow server stayed unreachable for the whole outage budget ({budget_s:.0f} s): {str(exc)[:300]}; "
            "the worker stops; run it again once the server is back (its trial is queued again then)")


def with_train_options(config: HpoConfig, **options: object) -> HpoConfig:
    """The config with the training flags the user gave (None: not given, the config's value stays)."""
    given = {k: v for k, v in options.items() if v is not None}
    return config.model_copy(update={"train": config.train.model_copy(update=given)})


@app.command()
def grid(
    budget: Annotated[str, typer.Argument(help="smoke, 2M, 20M, 200M or 2B")],
    grid_version: Annotated[int, typer.Option(help="grid version")] = CURRENT_GRID_VERSION,
    num_features: Annotated[int, typer.Option(help="features per day F (the exact counts depend on it)")] = DEFAULT_NUM_FEATURES,
) -> None:
    """Print a budget's architecture grid as a table."""
    try:
        archs = get_architectures_for_budget(budget, num_features, grid_version)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    lo, hi = BUDGET_BANDS[budget]
    table = Table(title=f"{budget} grid v{grid_version}, F={num_features}: {len(archs)} architectures in [{lo:,}, {hi:,}] parameters")
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
    device: Device = None,
    data: DataSource = None,
    features: Features = None,
    label: Label = None,
    root: Root = None,
) -> None:
    """Train one architecture once (no study, no tracking) and print its result."""
    from tasks.data.dataset import cached_dataset
    from tasks.training.trainer import Hyperparams, train_model

    spec = StudySpec(budget=budget, horizon=horizon)
    base = build_config(root, data, features=features, label=label)
    config = with_train_options(base, max_epochs=max_epochs, device=device)
    arch = get_architectures_for_budget(spec.budget, config.data.num_features)[arch_idx]
    with refused_or_stopped(config.stores.outage_budget_s):
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


@app.command()
def recover(
    out: Annotated[Path, typer.Option("--out", help="folder for the recovered <experiment>.json files")],
    inputs: Annotated[list[Path] | None, typer.Argument(
        help="legacy .log files, old trial .json files, trials_dataframe() .csv files, or folders of .log/.json files",
        exists=True)] = None,
    grid_version: Annotated[int | None, typer.Option(help="grid version the logs' arch_idx refer to (default: 1, the legacy grid)")] = None,
    grid: Annotated[str | None, typer.Option("--grid", help="look arch_idx up in your own grid: a JSON file of entries "
                    "per budget, or package.module:function(budget, num_features=25)")] = None,
    optuna_storage: Annotated[str | None, typer.Option("--optuna-storage", help="also read an Optuna storage: an SQLite "
                              "file, a journal file or an RDB URL")] = None,
    study: Annotated[list[str] | None, typer.Option("--study", help="a study of --optuna-storage to read (repeat it; "
                     "default: every study)")] = None,
    import_mlflow: Annotated[bool, typer.Option("--import-mlflow", help="also import the trials into MLflow (idempotent)")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="any problem: write nothing and exit 1")] = False,
    root: Root = None,
) -> None:
    """Recover legacy trials, n_heads included, from old HPO logs, trial JSON or CSV files, or an Optuna storage."""
    from rich import box

    from flows.recover import recover as recover_flow
    from schemas.legacy import RecoverRequest
    from tasks.legacy.grids import GridError, load_grid
    from tasks.legacy.optuna_sources import open_storage, StorageError, study_names
    from tasks.legacy.recover import expand_inputs, non_text_reason, TEXT_FIX

    try:
        request = RecoverRequest(inputs=inputs or [], out=out, grid_version=grid_version, grid=grid,
                                 optuna_storage=optuna_storage, studies=study or [], import_mlflow=import_mlflow,
                                 strict=strict, stores=build_config(root).stores)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    # Inputs that cannot be read at all are refused here, before the flow writes anything.
    try:
        if grid:
            load_grid(grid)
        if optuna_storage:
            opened = open_storage(optuna_storage)
            try:
                study_names(opened, study or [])
            finally:
                opened.close()
    except (GridError, StorageError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    for path in expand_inputs(request.inputs):  # a binary file is refused, never echoed line by line
        binary = non_text_reason(path) if path.is_file() else None
        if binary:
            refuse(f"{path}: {binary}; nothing written: {TEXT_FIX}")
    _before_flows()
    report = recover_flow(request)
    # Per experiment: trials, complete (unverified among them: their grid contradicts them), n_heads
    # logged / recovered / unrecoverable, problems, and what the MLflow import did when there was one.
    table = Table(title="legacy recovery" + ("" if report.written else ": nothing written"), title_justify="left",
                  box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1), collapse_padding=True)
    table.add_column("experiment", overflow="fold")
    for header in ("trials", "complete", "unverified", "n_heads\nlogged", "n_heads\nrecov.", "n_heads\nunrec.", "problems"):
        table.add_column(header, justify="right")
    imported = any(row.mlflow for row in report.experiments)
    if imported:
        table.add_column("mlflow:\nnew/same/\nreplaced")
    for row in report.experiments:
        name = row.experiment if row.experiment != "-" else f"- ({Path(row.source).name})"
        counts = (row.trials, row.complete, row.unverified, row.n_heads_logged, row.n_heads_recovered,
                  row.n_heads_unrecoverable, row.problems)
        mlflow = [f"{row.mlflow.created}/{row.mlflow.unchanged}/{row.mlflow.replaced}" if row.mlflow else "-"] if imported else []
        table.add_row(name, *(str(v) for v in counts), *mlflow)
    console.print(table)
    for problem in report.problems:
        console.print(f"  {problem}", markup=False, highlight=False, soft_wrap=True)
    if strict and report.problems:
        refuse(f"--strict: {len(report.problems)} problems, nothing written")
    if not any(row.trials for row in report.experiments):
        refuse("nothing recovered: no input gave a trial (see the problems above); give a study's HPO log "
               "(named like 2M_h1.log), trial .json or trials .csv file, or --optuna-storage")


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is *now*, so the live progress display can redirect it
    above its bars (a StreamHandler would keep the stream it was created with)."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(self.format(record) + "\n")


def _before_flows() -> None:
    """Before a command runs its flows: the terminal's log lines, and the temporary Prefect server
    (when no PREFECT_API_URL is set) started out of the terminal's Ctrl-C (flows.temporary_server)."""
    from flows.temporary_server import detach_temporary_server

    if not DEBUG["on"]:  # the refusal is printed as one line; its traceback only with --debug
        from tasks.refusals import hide_refusal_tracebacks

        hide_refusal_tracebacks()
    detach_temporary_server()
    logger = logging.getLogger("hpo")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)-7s | %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


@app.command()
def run(
    budget: Annotated[str, typer.Argument(help="smoke, 2M, 20M, 200M or 2B")],
    horizons: Annotated[list[str], typer.Argument(help="one or more of h1 h3 h5, run in this order")],
    trials: Annotated[int | None, typer.Option("--trials", help="trials the study ends with (default 50): complete ones, plus pruned ones with --pruner")] = None,
    storage: Storage = None,
    tracking_uri: TrackingUri = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="start a new version of the study; the old one is kept")] = False,
    version: Annotated[int | None, typer.Option(help="run exactly this version of the study")] = None,
    timeout_hours: Annotated[float | None, typer.Option(help="stop cleanly after this long; rerun to continue")] = None,
    max_epochs: Annotated[int | None, typer.Option(help="epochs per trial (default 50, early stopping)")] = None,
    smoke: Annotated[bool, typer.Option("--smoke", help="smoke switch: the budget's smoke-ladder stand-in, a few short epochs, at most 8 trials")] = False,
    slots: Annotated[int | None, typer.Option(help="trials run at once on this worker's device (small budgets)")] = None,
    device: Device = None,
    pruner: Pruner = None,
    arch_space: ArchSpace = None,
    data: DataSource = None,
    features: Features = None,
    label: Label = None,
    root: Root = None,
    config_file: ConfigFile = None,
) -> None:
    """Run (or resume) the studies BUDGET_hH, one after another, as the Prefect `hpo` flow."""
    from flows.hpo import hpo_flow
    from tasks.study.progress import live_progress
    from tasks.study.store import optuna_storage, resolve_study_name

    base = build_config(root, data, storage, tracking_uri, config_file, features=features, label=label, n_trials=trials, timeout_hours=timeout_hours,
                        slots=slots, pruner=pruner, arch_space=arch_space)
    config = with_train_options(base, device=device, max_epochs=max_epochs)
    try:
        specs = [StudySpec(budget=budget, horizon=h, version=version, fresh=fresh) for h in horizons]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if smoke:
        config, specs = config.smoke(), [s.as_smoke() for s in specs]
    check_data(config, [s.horizon for s in specs])
    # --fresh is resolved here, once: the flow gets explicit versions, so a Prefect retry of the
    # flow resumes the new study instead of starting yet another one.
    with refused_or_stopped(config.stores.outage_budget_s):  # the storage may be down already: past the budget, one line
        opened = optuna_storage(config.stores, config)
        names = [resolve_study_name(spec, opened)[0] for spec in specs]
    _before_flows()
    console.print(f"studies: {', '.join(names)}  |  optuna: {config.stores.optuna_url}  |  mlflow: {config.stores.mlflow_uri}")
    with live_progress(config.train.max_epochs, console), refused_or_stopped(config.stores.outage_budget_s):
        summaries = hpo_flow(studies=names, config=config)
    _print_summaries(summaries)
    _print_mlflow_links(config, names)


def _print_mlflow_links(config: HpoConfig, studies: list[str]) -> None:
    """Each study's experiment in the MLflow UI's model-training view: the tracking server's own
    UI, or `mlflow ui` on the embedded store at the README's address."""
    from tasks.tracking.runs import experiment_url, mlflow_client, serves_artifacts

    client = mlflow_client(config.stores)
    server = serves_artifacts(client)
    ui = client.tracking_uri if server else "http://127.0.0.1:5000"
    if not server:
        console.print(f"MLflow UI: mlflow ui --backend-store-uri {client.tracking_uri} --host 127.0.0.1 --port 5000", soft_wrap=True)
    for name in studies:
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            console.print(f"  {name}: {experiment_url(ui, experiment.experiment_id)}", soft_wrap=True, highlight=False)


def _print_summaries(summaries: list[dict]) -> None:
    table = Table(title="studies")
    columns = ("study", "state", "complete", "pruned", "failed", "best_trial", "best_val_auc", "best_test_auc")
    for column in columns:
        table.add_column(column)
    for s in summaries:
        fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
        table.add_row(*(fmt(s.get(c)) for c in columns))
    console.print(table)


@app.command()
def baselines(
    horizon: Annotated[list[str] | None, typer.Option("--horizon", help="h1, h3 or h5; repeat for several (default: all three)")] = None,
    study: Annotated[list[str] | None, typer.Option("--study", help="log into this study's experiment; repeatable (default: every study experiment of the horizon, or baselines_hH)")] = None,
    data: DataSource = None,
    features: Features = None,
    label: Label = None,
    root: Root = None,
) -> None:
    """Fit the baselines (logreg, logreg_flat, hgb, base_rate) once per horizon and log them beside its studies."""
    from tasks.training.baselines import baseline_table, baseline_targets, run_baselines

    config = build_config(root, data, features=features, label=label)
    try:
        targets = baseline_targets(config, horizon or [], study or [])
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    table = Table(title="baselines: chosen on val AUC, test AUC for reporting only")
    for column in ("horizon", "model", "val_auc", "test_auc", "chosen", "experiments"):
        table.add_column(column)
    check_data(config, targets)
    for h, names in targets.items():
        for name in names:
            run_baselines(config, name, h)  # fitted once per horizon, logged (or reused) in each
        for row in baseline_table(config, names[0], h):
            table.add_row(f"h{h}", row["model"], f"{row['val_auc']:.4f}", f"{row['test_auc']:.4f}", row["chosen"], ", ".join(names))
    console.print(table)


@app.command()
def report(
    out: Annotated[Path, typer.Option("--out", help="folder for report.md, report.html and figures/")] = Path("reports"),
    root: Root = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Write the cross-budget report from MLflow (Markdown, HTML, figures) and log it as the Prefect `report` flow."""
    from flows.report import report as report_flow
    from tasks.report.mlflow_io import no_studies

    stores = build_config(root, tracking_uri=tracking_uri).stores
    refusal = no_studies(stores)  # before the flow: nothing (store, report run, files, Prefect server) is made
    if refusal:
        refuse(refusal)
    _before_flows()
    with refused_or_stopped(stores.outage_budget_s):
        files = report_flow(stores=stores, out=out)
    console.print(f"report: {files.markdown} and {files.html} ({len(files.figures)} figures); MLflow run {files.mlflow_run_id}")


Smoke = Annotated[bool, typer.Option("--smoke", help="smoke switch: each budget's smoke-ladder stand-in, a few short epochs, at most 8 trials per study")]


@app.command()
def campaign(
    smoke: Smoke = False,
    rerun_20m_h5: Annotated[bool, typer.Option("--rerun-20m-h5", help="also re-run 20M_h5 (v2) for L=160/180")] = False,
    supplemental: Annotated[list[str] | None, typer.Option("--supplemental", help="plans to run after the studies: 2M-L64, 20M-h5-L160-180")] = None,
    report: Annotated[bool, typer.Option(help="write the cross-budget report at the end")] = True,
    report_dir: Annotated[Path, typer.Option(help="where the report goes")] = Path("reports"),
    trials: Annotated[int | None, typer.Option("--trials", help="trials per study (default 50): complete ones, plus pruned ones with --pruner")] = None,
    slots: Annotated[int | None, typer.Option(help="trials run at once on each device (small budgets)")] = None,
    pruner: Pruner = None,
    arch_space: ArchSpace = None,
    storage: Storage = None,
    tracking_uri: TrackingUri = None,
    root: Root = None,
    data: DataSource = None,
    features: Features = None,
    label: Label = None,
    config_file: ConfigFile = None,
) -> None:
    """The whole plan, stage by stage (20M_h5; 200M and 2B; 20M re-runs; supplemental; report). Rerun to resume."""
    from flows.campaign import campaign_flow
    from tasks.study.progress import live_progress

    config = build_config(root, data, storage, tracking_uri, config_file, features=features, label=label, n_trials=trials, slots=slots,
                          pruner=pruner, arch_space=arch_space)
    check_data(config.smoke() if smoke else config, HORIZONS)
    _before_flows()
    console.print(f"campaign{' (smoke)' if smoke else ''}  |  optuna: {config.stores.optuna_url}  |  mlflow: {config.stores.mlflow_uri}")
    with live_progress(config.smoke().train.max_epochs if smoke else config.train.max_epochs, console), refused_or_stopped(config.stores.outage_budget_s):
        result = campaign_flow(
            config=config, smoke=smoke, rerun_20m_h5=rerun_20m_h5, supplemental=supplemental or [],
            report=report, report_dir=report_dir,
        )
    for stage, summaries in result.items():
        if stage == "report":
            if summaries:
                console.print(f"report: {summaries['markdown']}  and  {summaries['html']}")
        elif stage.startswith("supplemental"):
            _print_supplemental(summaries)
        else:
            console.rule(stage)
            _print_summaries(summaries)
    studies = [s["study"] for stage, summaries in result.items() if stage != "report" and not stage.startswith("supplemental")
               for s in summaries]
    _print_mlflow_links(config, studies)


@app.command()
def plan(
    budget: Annotated[str | None, typer.Argument(help="one budget (smoke, 2M, 20M, 200M, 2B); default: every study of the campaign")] = None,
    horizons: Annotated[list[str] | None, typer.Argument(help="with a budget: h1 h3 h5 (default all three)")] = None,
    gpus: Annotated[int, typer.Option("--gpus", min=1, help="GPUs for the wall time (one trial per GPU at a time)")] = 1,
    tflops: Annotated[float | None, typer.Option("--tflops", help="declared peak TFLOP/s of a GPU, used where no trial "
                      "was measured (default: the bf16 peak of --device's name, else 989, the H100's)")] = None,
    mfu: Annotated[float | None, typer.Option("--mfu", help="declared model FLOPs utilisation, 0..1 (default 0.3, an assumption)")] = None,
    device: Annotated[str | None, typer.Option("--device", help="measured trials of this device only, by part of its "
                      "name (H200); default: the device with the most finished trials of each budget")] = None,
    smoke: Smoke = False,
    rerun_20m_h5: Annotated[bool, typer.Option("--rerun-20m-h5", help="the campaign with 20M_h5 re-run (v2)")] = False,
    trials: Annotated[int | None, typer.Option("--trials", help="trials per study (default 50)")] = None,
    root: Root = None,
    tracking_uri: TrackingUri = None,
    data: DataSource = None,
    features: Features = None,
    label: Label = None,
    config_file: ConfigFile = None,
) -> None:
    """Forecast the cost of the campaign's studies (or one budget's): FLOPs per trial, GPU-hours,
    wall time with --gpus, and whether each throughput was measured (MLflow) or declared."""
    from models.arch_grid import check_budget
    from schemas.names import parse_horizon
    from tasks.plan.forecast import COLUMNS, plan_notes, plan_rows
    from tasks.plan.sources import gather_plan

    if tflops is not None and tflops <= 0:
        refuse(f"--tflops {tflops:g}: give a GPU's peak in TFLOP/s, e.g. 989 for an H100")
    if mfu is not None and not 0 < mfu <= 1:
        refuse(f"--mfu {mfu:g}: give a fraction of the peak in (0, 1], e.g. 0.3")
    config = build_config(root, data, None, tracking_uri, config_file, features=features, label=label, n_trials=trials)
    if smoke:
        config = config.smoke()
    if budget is None:
        from flows.campaign import campaign_stages

        stages = [(stage, [StudySpec.parse(name) for name in names]) for stage, names in campaign_stages(rerun_20m_h5)]
    else:
        try:  # an unknown budget or horizon: one line naming it and the choices
            stages = [(check_budget(budget), [StudySpec(budget=budget, horizon=parse_horizon(h)) for h in horizons or HORIZONS])]
        except ValueError as exc:
            refuse(exc, exc)
    if smoke:
        stages = [(stage, [spec.as_smoke() for spec in specs]) for stage, specs in stages]
    with refused_or_stopped(config.stores.outage_budget_s):
        forecast = gather_plan(config, stages, gpus=gpus, campaign=budget is None, tflops=tflops, mfu=mfu, device=device)
    columns = COLUMNS if forecast.campaign else COLUMNS[1:]
    table = Table(title=f"cost forecast{' (smoke)' if smoke else ''}", title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in plan_rows(forecast):
        table.add_row(*(row[c] for c in columns))
    console.print(table)
    for note in plan_notes(forecast):
        console.print(f"  {note}", markup=False, highlight=False, soft_wrap=True)


@app.command(name="supplemental")
def supplemental_command(
    plan: Annotated[str, typer.Argument(help="2M-L64 or 20M-h5-L160-180")],
    smoke: Smoke = False,
    root: Root = None,
    tracking_uri: TrackingUri = None,
    data: DataSource = None,
    features: Features = None,
    label: Label = None,
    config_file: ConfigFile = None,
) -> None:
    """Run a supplemental plan with the main study's best hyperparameters; out-of-band entries are refused."""
    from flows.supplemental import supplemental_flow

    config = build_config(root, data, None, tracking_uri, config_file, features=features, label=label)
    _before_flows()
    try:
        with refused_or_stopped(config.stores.outage_budget_s):
            results = supplemental_flow(plan=plan, config=config, smoke=smoke)
    except (LookupError, ValueError) as exc:
        refuse(exc, exc)
    _print_supplemental(results)


def _print_supplemental(results: list[dict]) -> None:
    table = Table(title="supplemental trials")
    for column in ("study", "id", "state", "val_auc", "detail"):
        table.add_column(column)
    for r in results:
        table.add_row(r["study"], r["id"], r["state"], "" if r["val_auc"] is None else f"{r['val_auc']:.4f}", r["detail"])
    console.print(table)


@app.command()
def retrain(
    study: Annotated[str, typer.Argument(help="the study, e.g. 2M_h5 (as the report names it)")],
    trials: Annotated[list[str], typer.Argument(help="trial numbers or supplemental ids, e.g. 17 or S2")],
    max_epochs: Annotated[int | None, typer.Option(help="epochs (default: the configured 50, early stopping)")] = None,
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="seeds per configuration (seed noise for the verdict; "
                                       "each seed is one more training)")] = 1,
    device: Device = None,
    root: Root = None,
    tracking_uri: TrackingUri = None,
    data: DataSource = None,
    features: Features = None,
    label: Label = None,
    config_file: ConfigFile = None,
) -> None:
    """Re-train recorded configurations (legacy or supplemental trials) and log their val and test
    scores, so the report's test verdict can use them; the `retrain` flow."""
    from flows.retrain import retrain_flow
    from tasks.study.retrain import RetrainRefused

    base = build_config(root, data, None, tracking_uri, config_file, features=features, label=label)
    config = with_train_options(base, device=device, max_epochs=max_epochs)
    _before_flows()
    try:
        with refused_or_stopped(config.stores.outage_budget_s):
            results = retrain_flow(trials=[f"{study} {t}" for t in trials], config=config, seeds=seeds)
    except RetrainRefused as exc:
        refuse(exc, exc)
    table = Table(title="re-trained configurations")
    for column in ("study", "trial", "seed", "state", "val_auc", "test_auc", "detail"):
        table.add_column(column)
    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    for r in results:
        table.add_row(r["study"], r["trial"], str(r.get("seed_index", 0)), r["state"], fmt(r["val_auc"]), fmt(r["test_auc"]), r["detail"])
    console.print(table)


@app.command()
def demo(root: Root = None, report_dir: Annotated[Path, typer.Option(help="where the report goes")] = Path("reports")) -> None:
    """The whole campaign on the embedded defaults with the smoke switch, then the report (minutes on a CPU)."""
    # smoke trials are short and mostly process start-up: run a few side by side on a laptop's cores
    slots = max(1, min(4, (os.cpu_count() or 1)))
    campaign(smoke=True, rerun_20m_h5=False, supplemental=["20M-h5-L160-180"], report=True, report_dir=report_dir,
             trials=None, slots=slots, pruner=None, arch_space=None, storage=None, tracking_uri=None, root=root, data=None, config_file=None)


if __name__ == "__main__":
    app()
