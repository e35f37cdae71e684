"""Prefect tasks of training that run outside a trial process (the baselines)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from schemas.config import HpoConfig
from tasks.training.baselines import run_baselines


@task(name="baselines", cache_policy=NO_CACHE)  # MLflow is the cache: see run_baselines
def fit_baselines(config: HpoConfig, study: str, horizon: int) -> dict[str, float]:
    """Fit (or reuse) the study's baselines; model -> val AUC."""
    return run_baselines(config, study, horizon)
