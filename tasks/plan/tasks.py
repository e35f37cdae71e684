"""Prefect task of the cost forecast: the campaign's `plan` markdown artifact."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from schemas.config import HpoConfig, StudySpec
from tasks.plan.forecast import plan_markdown
from tasks.plan.sources import gather_plan

PLAN_KEY = "plan"


@task(name="plan", cache_policy=NO_CACHE)
def publish_plan_task(config: HpoConfig, stages: list[tuple[str, list[str]]], gpus: int = 1) -> str:
    """The forecast of the campaign's studies (FLOPs, GPU-hours, wall with `gpus` GPUs) as the `plan` artifact."""
    specs = [(label, [StudySpec.parse(name) for name in names]) for label, names in stages]
    if config.smoke_switch:
        specs = [(label, [spec.as_smoke() for spec in stage]) for label, stage in specs]
    markdown = plan_markdown(gather_plan(config, specs, gpus=gpus, campaign=True))
    create_markdown_artifact(markdown, key=PLAN_KEY, description="cost forecast of the campaign's studies (hpo plan)")
    return markdown
