"""Flow run names that say what the run does (the Prefect UI's run list, `--watch`), instead of
Prefect's random "arcane-penguin". Each is called by Prefect inside the run, where
`prefect.runtime` knows the parameters and, when started from one, the deployment."""

from __future__ import annotations


def _parameters() -> dict:
    from prefect.runtime import flow_run

    return flow_run.parameters


def _deployment() -> str | None:
    from prefect.runtime import deployment

    return deployment.name


def report_run_name() -> str:
    """`report cross-budget` from the deployment, `report` otherwise."""
    return " ".join(filter(None, ("report", _deployment())))


def recover_run_name() -> str:
    """`recover legacy`, or `recover` with the number of inputs when run directly."""
    name = _deployment()
    if name:
        return f"recover {name}"
    request = _parameters().get("request")
    inputs = getattr(request, "inputs", None) if not isinstance(request, dict) else request.get("inputs")
    return f"recover {len(inputs)} input(s)" if inputs else "recover"


def retrain_run_name() -> str:
    """`retrain smoke_h1 #3, smoke_h1 #5` (each "STUDY TRIAL" entry)."""
    trials = [" #".join(entry.split(" ", 1)) for entry in _parameters().get("trials", [])]
    return "retrain " + ", ".join(trials) if trials else "retrain"


def supplemental_run_name() -> str:
    """`supplemental 2M-L64` (`... smoke` with the smoke switch)."""
    parameters = _parameters()
    return f"supplemental {parameters.get('plan', '2M-L64')}" + (" smoke" if parameters.get("smoke") else "")
