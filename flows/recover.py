"""The `recover` flow: legacy logs, old trial JSON files, trials_dataframe() CSVs and Optuna storages
in, one validated JSON file per experiment out (n_heads recovered where the grid, ours or the
researcher's, confirms it; one experiment from several sources reconciled trial by trial),
optionally imported into MLflow."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

import flows  # noqa: F401 - see flows/__init__: runs it when Prefect loads this file as a script
from flows.run_names import recover_run_name
from schemas.legacy import RecoverReport, RecoverRequest
from tasks.legacy.grids import load_grid
from tasks.legacy.importer import source_artifact
from tasks.legacy.reconcile import reconcile
from tasks.legacy.recover import expand_inputs, summarize
from tasks.legacy.tasks import (
    import_legacy_experiment,
    recover_input,
    recover_optuna_storage,
    write_experiment_file,
)


@flow(name="recover", flow_run_name=recover_run_name)
def recover(request: RecoverRequest) -> RecoverReport:
    """Recover every input; with `strict`, any problem means nothing is written or imported. A grid
    spec or storage that cannot be read stops the flow before anything is written."""
    if request.grid:
        load_grid(request.grid)
    recovered = [recover_input(path, request.grid_version, request.grid) for path in expand_inputs(request.inputs)]
    if request.optuna_storage:
        recovered += recover_optuna_storage(request.optuna_storage, request.studies, request.grid_version, request.grid)
    chosen = reconcile(recovered)
    if request.strict and any(item.problems for item in recovered):
        return summarize(recovered, written=False)
    outputs, imports = {}, {}
    for experiment, item in chosen:
        outputs[experiment.experiment] = write_experiment_file(experiment, request.out)
        if request.import_mlflow:
            artifact = source_artifact(experiment, Path(item.source))
            imports[experiment.experiment] = import_legacy_experiment(experiment, request.stores, artifact)
    return summarize(recovered, outputs, imports, written=True)
