"""The `recover` flow: legacy logs and old trial JSON files in, one validated JSON file per
experiment out (n_heads recovered where the grid confirms it), optionally imported into MLflow."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from schemas.legacy import RecoverReport, RecoverRequest
from tasks.legacy.importer import source_artifact
from tasks.legacy.recover import dedupe_experiments, expand_inputs, summarize
from tasks.legacy.tasks import import_legacy_experiment, recover_input, write_experiment_file


@flow(name="recover")
def recover(request: RecoverRequest) -> RecoverReport:
    """Recover every input; with `strict`, any problem means nothing is written or imported."""
    paths = expand_inputs(request.inputs)
    recovered = [recover_input(path, request.grid_version) for path in paths]
    chosen = dedupe_experiments(recovered)
    if request.strict and any(item.problems for item in recovered):
        return summarize(recovered, written=False)
    outputs, imports = {}, {}
    for experiment, item in chosen:
        outputs[experiment.experiment] = write_experiment_file(experiment, request.out)
        if request.import_mlflow:
            artifact = source_artifact(experiment, Path(item.source))
            imports[experiment.experiment] = import_legacy_experiment(experiment, request.stores, artifact)
    return summarize(recovered, outputs, imports, written=True)
