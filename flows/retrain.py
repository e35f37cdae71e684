"""The `retrain` flow: score recorded configurations on test by training them again."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact

import flows  # noqa: F401 - see flows/__init__: runs it when Prefect loads this file as a script
from flows.run_names import retrain_run_name
from schemas.config import HpoConfig
from tasks.study.tasks import retrain_trial_task


@flow(name="retrain", flow_run_name=retrain_run_name)
def retrain_flow(trials: list[str], config: HpoConfig = HpoConfig(), seeds: int = 1) -> list[dict]:
    """Re-train each `STUDY #TRIAL` (given as "STUDY TRIAL", e.g. "2M_h5 17"), one after another;
    each with `seeds` seeds; a seed with test scores from an earlier re-training is skipped."""
    results = []
    for entry in trials:
        study, _, trial = entry.partition(" ")
        results.extend(retrain_trial_task.with_options(task_run_name=f"{study} #{trial}")(study, trial.strip(), config, seeds))
    create_table_artifact(key="retrain", table=results, description="re-trained configurations")
    failed = [r for r in results if r["state"] == "failed"]
    if failed:
        raise RuntimeError("re-training failed: " + "; ".join(f"{r['study']} #{r['trial']}: {r['detail']}" for r in failed))
    return results
