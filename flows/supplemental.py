"""The `supplemental` flow: fixed gap-filling architectures beside a finished main study."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact

import flows  # noqa: F401 - see flows/__init__: runs it when Prefect loads this file as a script
from flows.run_names import supplemental_run_name
from schemas.config import HpoConfig
from tasks.study.tasks import run_supplemental_plan_task


@flow(name="supplemental", flow_run_name=supplemental_run_name)
def supplemental_flow(plan: str = "2M-L64", config: HpoConfig = HpoConfig(), smoke: bool = False) -> list[dict]:
    """Run a supplemental plan ("2M-L64" or "20M-h5-L160-180"); completed entries are skipped."""
    if smoke:
        config = config.smoke()
    results = run_supplemental_plan_task(plan, config)
    create_table_artifact(key=f"supplemental-{plan.lower()}", table=results, description=f"supplemental plan {plan}")
    failed = [r for r in results if r["state"] == "failed"]
    if failed:
        raise RuntimeError(f"{len(failed)} supplemental trial(s) failed: " + "; ".join(f"{r['study']} {r['id']}: {r['detail']}" for r in failed))
    return results
