"""Declared deployments: `python -m deployments.deploy [--pool hpo]`.

No logic: names, entrypoints and default parameters. The code is deployed from this checkout
(local source), to a work pool of process type; start one worker per GPU on each machine:

    CUDA_VISIBLE_DEVICES=0 prefect worker start --pool hpo --type process --name gpu0

Every deployment takes the smoke switch: `prefect deployment run hpo/20M-rerun --param smoke=true`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Declared:
    flow: str  # entrypoint "path.py:function"
    name: str
    parameters: dict = field(default_factory=dict)
    description: str = ""


DEPLOYMENTS: tuple[Declared, ...] = (
    Declared("flows/hpo.py:hpo_flow", "20M-h5", {"studies": ["20M_h5"]}, "Stage 1: 20M_h5 to 50 completed trials"),
    Declared("flows/hpo.py:hpo_flow", "200M", {"studies": ["200M_h1", "200M_h3", "200M_h5"]}, "200M, every horizon"),
    Declared("flows/hpo.py:hpo_flow", "2B", {"studies": ["2B_h1", "2B_h3", "2B_h5"]}, "2B, every horizon"),
    Declared(
        "flows/hpo.py:hpo_flow",
        "20M-rerun",
        {"studies": ["20M_h1_v2", "20M_h3_v2"]},
        "Fresh re-runs of 20M_h1 and 20M_h3 (version 2; the old partial studies are kept)",
    ),
    Declared("flows/campaign.py:campaign_flow", "full", {}, "The whole plan, stage by stage, then the report"),
    Declared("flows/supplemental.py:supplemental_flow", "2M-L64", {"plan": "2M-L64"}, "2M at L=64, n_heads 8/4/2"),
    Declared(
        "flows/supplemental.py:supplemental_flow",
        "20M-h5-L160-180",
        {"plan": "20M-h5-L160-180"},
        "20M_h5 at L=160/180 (S3, d_ff=512, is refused: 31.7M parameters)",
    ),
    Declared("flows/recover.py:recover", "legacy", {"request": {"inputs": ["legacy-logs"], "out": "recovered"}}, "Recover legacy trial logs into validated JSON and MLflow"),
    Declared("flows/report.py:report", "cross-budget", {}, "The cross-budget report from MLflow"),
)


def deploy_all(pool: str, only: list[str] | None = None) -> list[str]:
    """Register every declared deployment (or those named `flow/name`) with the Prefect API."""
    from prefect.flows import Flow

    selected = [d for d in DEPLOYMENTS if not only or f"{_flow_name(d)}/{d.name}" in only]
    for d in selected:
        # Local source: the worker runs the flow from this checkout, so workers on other machines
        # need the same path (a shared file system or an identical clone).
        deployment = Flow.from_source(source=str(REPO), entrypoint=d.flow).to_deployment(
            name=d.name, parameters=d.parameters, description=d.description, work_pool_name=pool
        )
        deployment.apply()  # registers only; prefect.deploy() also probes workers and builds images
    return [f"{_flow_name(d)}/{d.name}" for d in selected]


def _flow_name(declared: Declared) -> str:
    from prefect.flows import load_flow_from_entrypoint

    return load_flow_from_entrypoint(str(REPO / declared.flow)).name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", default="hpo", help="work pool of process type (created if missing)")
    parser.add_argument("--only", nargs="*", help="deploy only these, e.g. hpo/20M-rerun")
    args = parser.parse_args()
    _ensure_pool(args.pool)
    for name in deploy_all(args.pool, args.only):
        print(f"deployed {name}")


def _ensure_pool(pool: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            print(f"created work pool {pool} (process)")
        except ObjectAlreadyExists:
            pass


if __name__ == "__main__":
    main()
