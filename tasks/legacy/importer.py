"""Legacy trials into MLflow: one run per trial attempt, beside the new trials of the same study.

Each run sits in the study's experiment (`2M_h1`), tagged `source=legacy`, with the params of new
trials (`schemas.tracking.TRIAL_PARAMS`; `n_heads` left out where it is unrecoverable, and
`batch_size`/`seed`, which the old logs never gave) and the final metrics the log had. Complete
trials end FINISHED, the rest FAILED with a `failure_reason` tag. A complete trial its grid
contradicts ends FINISHED with its metrics but the state tag `unverified` (with `verified=false` and
`unverified_reason`), so no selector of complete trials takes it as best. The source log and the
trial's recovered record are attached as artifacts under `legacy/`. Once every trial is in, the
study run the import made ends FINISHED.

Idempotent: each run carries `legacy_key` (`2M_h1#17@1`: experiment, trial number, attempt) and
a fingerprint of its content. Importing again leaves a run whose fingerprint matches alone and
replaces one whose trial changed (a re-recovered n_heads, a log that grew); a run left half-made by
a crash (RUNNING, or no fingerprint) is replaced too.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from schemas.config import StoreConfig
from schemas.legacy import ImportCounts, LegacyExperiment, LegacyTrial
from schemas.tracking import (
    FINAL_METRICS,
    STATE_UNVERIFIED,
    TAG_BUDGET,
    TAG_EXTREME_TYPE,
    TAG_FAILURE_REASON,
    TAG_HORIZON,
    TAG_LEGACY_ATTEMPT,
    TAG_LEGACY_FINGERPRINT,
    TAG_LEGACY_KEY,
    TAG_N_HEADS_SOURCE,
    TAG_RUN_KIND,
    TAG_SOURCE,
    TAG_STATE,
    TAG_STUDY_VERSION,
    TAG_TRIAL_NUMBER,
    TAG_UNVERIFIED_REASON,
    TAG_VERIFIED,
    TRIAL_PARAMS,
    trial_run_name,
)
from tasks.tracking.runs import (
    ensure_study_run,
    find_study_run,
    get_or_create_experiment,
    log_batch,
    mlflow_client,
    search_all_runs,
    start_run,
)

# Importer-only tags (the report does not read them).
TAG_LEGACY_SOURCE = "legacy_source"
TAG_N_HEADS_NOTE = "n_heads_note"
TAG_LEGACY_GRID_SOURCE = "legacy_grid_source"  # the researcher's grid n_heads was looked up in (--grid)
TAG_LEGACY_GRID_SHA256 = "legacy_grid_sha256"
ARTIFACT_DIR = "legacy"
_MAX_TAG = 5000


def legacy_key(experiment: str, trial: LegacyTrial) -> str:
    """`2M_h1#17@1`: stable across re-imports, whichever file (log or JSON) the trial came from."""
    return f"{experiment}#{trial.number}@{trial.attempt}"


def fingerprint(experiment: LegacyExperiment, trial: LegacyTrial) -> str:
    """A hash of everything a run is built from; it changes when the recovered trial changes."""
    content = {
        # a verified trial's hash leaves the verification out, as before it was recorded
        "trial": trial.model_dump(mode="json", exclude=None if not trial.verified else {"verified", "unverified_reason"}),
        "grid_version": experiment.grid_version,
        "budget": experiment.budget,
        "horizon": experiment.horizon,
    }
    if experiment.grid_source:  # only then: fingerprints of runs imported without --grid stay as they were
        content |= {"grid_source": experiment.grid_source, "grid_sha256": experiment.grid_sha256}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:20]


def trial_params(experiment: LegacyExperiment, trial: LegacyTrial) -> dict[str, object]:
    """TRIAL_PARAMS the trial has a value for."""
    known = {"budget": experiment.budget, "horizon": experiment.horizon, "grid_version": experiment.grid_version}
    values = {name: known.get(name, getattr(trial, name, None)) for name in TRIAL_PARAMS}
    return {name: value for name, value in values.items() if value is not None}


def trial_metrics(trial: LegacyTrial) -> dict[str, float]:
    """FINAL_METRICS of a complete trial, from its fields or (samples_per_s, ...) its extra keys."""
    if trial.state != "complete":
        return {}
    metrics = {}
    for name in FINAL_METRICS:
        value = getattr(trial, name, None)
        if value is None:
            value = trial.extra.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics[name] = float(value)
    return metrics


def trial_tags(experiment: LegacyExperiment, trial: LegacyTrial) -> dict[str, str]:
    tags = {
        TAG_STUDY_VERSION: "1",
        TAG_BUDGET: experiment.budget,
        TAG_HORIZON: str(experiment.horizon),
        TAG_TRIAL_NUMBER: str(trial.number),
        TAG_EXTREME_TYPE: trial.extreme_type or "none",
        TAG_STATE: STATE_UNVERIFIED if trial.state == "complete" and not trial.verified else trial.state,
        TAG_N_HEADS_SOURCE: trial.n_heads_source,
        TAG_LEGACY_KEY: legacy_key(experiment.experiment, trial),
        TAG_LEGACY_ATTEMPT: str(trial.attempt),
        TAG_LEGACY_SOURCE: Path(experiment.source_log).name,
    }
    if trial.failure_reason:
        tags[TAG_FAILURE_REASON] = trial.failure_reason[:_MAX_TAG]
    if not trial.verified:
        tags |= {TAG_VERIFIED: "false", TAG_UNVERIFIED_REASON: (trial.unverified_reason or "")[:_MAX_TAG]}
    if trial.n_heads_note:
        tags[TAG_N_HEADS_NOTE] = trial.n_heads_note[:_MAX_TAG]
    if experiment.grid_source:
        tags[TAG_LEGACY_GRID_SOURCE] = experiment.grid_source[:_MAX_TAG]
        tags[TAG_LEGACY_GRID_SHA256] = experiment.grid_sha256 or "none"
    return tags


def _millis(moment: datetime | None) -> int | None:
    """Epoch milliseconds; the logs' naive timestamps are read as UTC."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def _is_whole(run: Run, expected: str) -> bool:
    return run.info.status in ("FINISHED", "FAILED") and run.data.tags.get(TAG_LEGACY_FINGERPRINT) == expected


def _create_run(
    client: MlflowClient, experiment_id: str, experiment: LegacyExperiment, trial: LegacyTrial,
    artifact: Path | None, content_hash: str,
) -> None:
    name = trial_run_name(experiment.experiment, trial.number)
    if trial is not _latest(experiment, trial.number):
        name += f" (attempt {trial.attempt}, superseded)"
    parent = ensure_study_run(
        client, experiment_id, study=experiment.experiment, budget=experiment.budget, horizon=experiment.horizon,
        version=1, source="legacy",
    )
    run_id = start_run(
        client, experiment_id, run_kind="trial", source="legacy", name=name, study=experiment.experiment,
        parent_run_id=parent, tags=trial_tags(experiment, trial), start_time=_millis(trial.started_at),
    )
    if artifact is not None:
        client.log_artifact(run_id, str(artifact), artifact_path=ARTIFACT_DIR)
    client.log_dict(run_id, trial.model_dump(mode="json"), f"{ARTIFACT_DIR}/trial.json")
    # The fingerprint goes last: a run without it is a half-made run and gets replaced.
    log_batch(client, run_id, params=trial_params(experiment, trial), metrics=trial_metrics(trial),
              tags={TAG_LEGACY_FINGERPRINT: content_hash})
    end = trial.ended_at or trial.started_at
    client.set_terminated(run_id, "FINISHED" if trial.state == "complete" else "FAILED", end_time=_millis(end))


def _latest(experiment: LegacyExperiment, number: int) -> LegacyTrial:
    return max((t for t in experiment.trials if t.number == number), key=lambda t: t.attempt)


def import_experiment(experiment: LegacyExperiment, stores: StoreConfig, artifact: Path | None = None) -> ImportCounts:
    """Create, keep or replace one run per trial attempt; `artifact` (the source log) is attached."""
    client = mlflow_client(stores)
    experiment_id = get_or_create_experiment(client, experiment.experiment, stores.artifact_root)
    existing: dict[str, list[Run]] = {}
    for run in search_all_runs(client, [experiment_id], f"tags.{TAG_SOURCE} = 'legacy' and tags.{TAG_RUN_KIND} = 'trial'"):
        existing.setdefault(run.data.tags.get(TAG_LEGACY_KEY, ""), []).append(run)
    counts = ImportCounts(experiment_id=experiment_id)
    for trial in experiment.trials:
        expected = fingerprint(experiment, trial)
        runs = existing.get(legacy_key(experiment.experiment, trial), [])
        keep = next((run for run in runs if _is_whole(run, expected)), None)
        for run in runs:
            if run is not keep:
                client.delete_run(run.info.run_id)
        if keep is not None:
            counts.unchanged += 1
            continue
        _create_run(client, experiment_id, experiment, trial, artifact, expected)
        if runs:
            counts.replaced += 1
        else:
            counts.created += 1
    _finish_study_run(client, experiment_id, experiment.experiment)
    return counts


def _finish_study_run(client: MlflowClient, experiment_id: str, study: str) -> None:
    """End the legacy study run FINISHED once its trials are in (it is left RUNNING while an import,
    or one a crash cut short, is under way). A study run an hpo study made is left to its finish."""
    run_id = find_study_run(client, experiment_id, study)
    if run_id is None:
        return
    run = client.get_run(run_id)
    if run.info.status == "RUNNING" and run.data.tags.get(TAG_SOURCE) == "legacy":
        client.set_terminated(run_id, "FINISHED")


def source_artifact(experiment: LegacyExperiment, input_path: Path) -> Path | None:
    """The original log when it is still where the experiment says, else the file read; None for
    an Optuna storage (a database is not attached to every run)."""
    original = Path(experiment.source_log)
    return original if original.is_file() else input_path if input_path.is_file() else None
