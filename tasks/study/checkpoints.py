"""Trial weights across workers that share no disk: the MLflow artifact store is the shared disk.

A trial process leaves its weights in this worker's `checkpoints/<study>/trial_N.pt`. The
lifecycle, which the driver follows:
- `store_if_best`, before the trial is told complete: when it is at least as good as the study's
  best so far, its weights become the artifact `checkpoint/trial_N.pt` of its trial run (tag
  `checkpoint=stored`). Uploading before the trial counts as complete means that whichever worker
  finds the study complete also finds its best trial's weights in MLflow.
- `discard_weights`, after every finished trial and when a worker finishes the study: every
  finished trial's weights but the best's are deleted, in this worker's folder and in MLflow (tag
  `checkpoint=deleted`; runs logged before 2026-12 say `checkpoint=pruned`, which meant the same).
  A 2B checkpoint is gigabytes; the search keeps O(log n) uploads.
- `fetch`, when finishing the study: the best trial's weights from this worker's folder, or else
  from MLflow; `CheckpointMissing` (with the reason and the fix) when neither has them.
- `log_best_model`: the best weights as an MLflow PyTorch model on the study run, registered as a
  version of the registered model named after the study.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path

import optuna
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from schemas import tracking as T
from schemas.config import TrainConfig
from tasks.tracking.runs import active_run, search_all_runs

log = logging.getLogger("hpo")

FINISHED = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
STORED, DELETED = "stored", "deleted"


class CheckpointMissing(RuntimeError):
    """The best trial's weights are neither on this worker nor in MLflow: the study cannot be
    evaluated on test (it stays unfinished; run it again once the cause is fixed)."""


def checkpoint_path(checkpoint_dir: Path, number: int) -> Path:
    """Where trial `number` leaves its weights on the worker that trains it."""
    return checkpoint_dir / f"trial_{number}.pt"


def artifact_path(number: int) -> str:
    """`checkpoint/trial_7.pt`: the weights of trial 7 on its trial run."""
    return f"{T.CHECKPOINT_DIR}/trial_{number}.pt"


def best_value_so_far(study: optuna.Study, keep: int = 1) -> float | None:
    """The `keep`-th best val AUC of the study's complete trials (None while fewer have completed):
    a trial at least this good is among the ones whose weights are kept."""
    values = sorted((t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))), reverse=True)
    return values[keep - 1] if len(values) >= keep else None


def store_if_best(client: MlflowClient, run_id: str, checkpoint: Path, value: float, best_so_far: float | None) -> bool:
    """Upload the weights of a trial at least as good as the best so far (ties too: Optuna may
    pick either of two equal trials as best). False, with a warning, when the upload fails: the
    trial's result stands, and this worker still has the file for the test evaluation."""
    if best_so_far is not None and value < best_so_far:
        return False
    try:
        client.log_artifact(run_id, str(checkpoint), artifact_path=T.CHECKPOINT_DIR)
        client.set_tag(run_id, T.TAG_CHECKPOINT, STORED)
    except Exception as exc:  # noqa: BLE001 - the trial's outcome never depends on the upload
        log.warning("Weights of %s not uploaded to MLflow (only this worker has them): %s", checkpoint.name, exc)
        return False
    return True


def discard_weights(client: MlflowClient, experiment_id: str, checkpoint_dir: Path, study: optuna.Study,
                    keep: int = 1, selected: int | None = None) -> None:
    """Delete the weights of every finished trial but the `keep` best (the best and, when the study
    confirms its top configurations on seeds, the ones it may select), or all but `selected` once
    the study is finished, here and in MLflow.

    The candidates are listed before the study's best is read: a trial that finished in between
    is then in the best's reading too, so a new best is never deleted as a stale candidate."""
    files = {int(path.stem.removeprefix("trial_")): path for path in checkpoint_dir.glob("trial_*.pt")}
    stored = search_all_runs(client, [experiment_id], f"tags.{T.TAG_CHECKPOINT} = '{STORED}'")
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if not any(t.state == TrialState.COMPLETE for t in trials.values()):
        return
    best = study.best_trial  # Optuna's pick among ties too: the trial that finishing will fetch
    ranked = sorted((t for t in trials.values() if t.state == TrialState.COMPLETE), key=lambda t: (-t.value, t.number))
    by_configuration: dict[tuple, int] = {}  # each configuration's best trial, in rank order
    for trial in ranked:
        by_configuration.setdefault(tuple(sorted(trial.params.items())), trial.number)
    kept = {selected} if selected is not None else {best.number, *list(by_configuration.values())[:keep]}

    def obsolete(number: int | None) -> bool:
        trial = trials.get(number)
        return trial is not None and trial.state in FINISHED and trial.number not in kept

    for number, path in files.items():
        if obsolete(number):
            path.unlink(missing_ok=True)
    for run in stored:
        number = run.data.tags.get(T.TAG_TRIAL_NUMBER)
        if obsolete(int(number) if number is not None else None):
            try:
                get_artifact_repository(run.info.artifact_uri, tracking_uri=client.tracking_uri).delete_artifacts(T.CHECKPOINT_DIR)
                client.set_tag(run.info.run_id, T.TAG_CHECKPOINT, DELETED)
            except Exception as exc:  # noqa: BLE001 - a later call retries; nothing depends on it
                log.warning("Weights of trial %s not deleted from MLflow: %s", number, exc)


def fetch(client: MlflowClient, run_id: str | None, number: int, checkpoint_dir: Path) -> Path:
    """The weights of trial `number`: this worker's file, or else downloaded from its run."""
    local = checkpoint_path(checkpoint_dir, number)
    if local.exists():
        return local
    if not run_id:
        raise CheckpointMissing(
            f"trial {number} has no MLflow run and its weights are not on this worker ({local}); "
            "run the study again on the worker that trained it"
        )
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=checkpoint_dir, prefix=".download-") as folder:
        try:
            downloaded = Path(client.download_artifacts(run_id, artifact_path(number), folder))
        except Exception as exc:  # noqa: BLE001 - every reason is reported with the fix
            raise CheckpointMissing(
                f"the weights of trial {number} are not on this worker ({local}) and could not be "
                f"downloaded from its MLflow run {run_id} (artifact {artifact_path(number)}): {str(exc).rstrip('.')}. "
                "Check that every worker uses the same MLflow tracking server (HPO_MLFLOW_TRACKING_URI), "
                "or run the study again on the worker that trained the trial"
            ) from exc
        downloaded.replace(local)
    log.info("Trial %d's weights fetched from MLflow run %s", number, run_id)
    return local


def remove_local(checkpoint_dir: Path) -> None:
    """The study is finished: nothing in this worker's folder is needed any more, nor in the
    folders that ended worker processes of this machine left (`host-pid`, schemas.config.StoreConfig.checkpoint_dir);
    a live worker's folder is its own to clear."""
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    if not checkpoint_dir.parent.is_dir():
        return
    for folder in checkpoint_dir.parent.iterdir():
        host, _, pid = folder.name.rpartition("-")
        if folder.is_dir() and host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


# The logged model outputs the event's probability; pt2 (torch.export) is MLflow's safe format:
# it loads without this repository's code and without unpickling.
SERIALIZATION_FORMAT = "pt2"
EXAMPLE_WINDOWS = 4  # the input example: a few val windows (more than one: the batch stays dynamic)


def registered_version(client: MlflowClient, study: str, study_run_id: str, best_trial: object) -> str | None:
    """The version of registered model `study` that holds this study run's `best_trial`, if any."""
    for version in client.search_model_versions(f"name = '{study}' and run_id = '{study_run_id}'"):
        if version.tags.get("best_trial") == str(best_trial):
            return str(version.version)
    return None


def log_best_model(
    client: MlflowClient,
    study_run_id: str,
    study: str,
    checkpoint: Path,
    dataset_path: Path,
    train: TrainConfig,
    tags: dict[str, object],
) -> str:
    """Log the weights as an MLflow PyTorch model (signature, input example) on the study run
    and register it as a version of the registered model `study`, with `tags` on the version;
    the version. Idempotent: a version of this study run with the same best trial is reused."""
    registered = registered_version(client, study, study_run_id, tags.get("best_trial"))
    if registered is not None:
        return registered

    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    from models.arch_grid import Architecture
    from tasks.data.prepared import PreparedData
    from tasks.training.trainer import build_model

    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    example = PreparedData.load(dataset_path).windows("val")[:EXAMPLE_WINDOWS].astype("float32")  # (4, window, F)
    model = build_model(Architecture(**saved["arch"]), 0.0, train, example.shape[1], example.shape[2])
    model.load_state_dict(saved["state"])
    scored = torch.nn.Sequential(model, torch.nn.Sigmoid()).eval()  # (B, window, F) -> (B,) probabilities
    with torch.no_grad():
        probabilities = scored(torch.from_numpy(example)).numpy()
    with active_run(client, study_run_id):
        info = mlflow.pytorch.log_model(
            scored,
            name=T.BEST_MODEL_NAME,
            signature=infer_signature(example, probabilities),
            input_example=example,
            registered_model_name=study,
            serialization_format=SERIALIZATION_FORMAT,
            # Given, not inferred: inferring the requirements loads the model in a new process.
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            params={k: str(v) for k, v in tags.items()},
        )
    version = str(info.registered_model_version)
    for key, value in tags.items():
        client.set_model_version_tag(study, version, key, str(value))
    client.update_registered_model(study, description=(
        f"The best transformer of study {study}, chosen on val AUC; each version is one finished "
        f"run of the study. Input: (batch, {example.shape[1]}, {example.shape[2]}) = (batch, window, features) "
        "standardised daily features; output: the probability of the event."
    ))
    return version
