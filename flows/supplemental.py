"""The `supplemental` flow: fixed gap-filling architectures beside a finished main study."""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE

from schemas.config import HpoConfig
from tasks import supplemental


@task(name="supplemental-trials", cache_policy=NONE)
def run_plan(plan_name: str, config: HpoConfig, smoke: bool) -> list[dict]:
    """Validate each entry against the band, then train the valid ones with the main study's best hyperparameters."""
    plan = supplemental.plan_for(plan_name, smoke)
    smoke_of = supplemental.PLANS[plan_name].budget if smoke else None
    return [asdict(r) for r in supplemental.run_plan(plan, config, smoke_of)]


@flow(name="supplemental")
def supplemental_flow(plan: str = "2M-L64", config: HpoConfig = HpoConfig(), smoke: bool = False) -> list[dict]:
    """Run a supplemental plan ("2M-L64" or "20M-h5-L160-180"); completed entries are skipped."""
    if smoke:
        config = config.smoke()
    results = run_plan(plan, config, smoke)
    create_table_artifact(key=f"supplemental-{plan.lower()}", table=results, description=f"supplemental plan {plan}")
    failed = [r for r in results if r["state"] == "failed"]
    if failed:
        raise RuntimeError(f"{len(failed)} supplemental trial(s) failed: " + "; ".join(f"{r['study']} {r['id']}: {r['detail']}" for r in failed))
    return results
