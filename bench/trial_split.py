"""Where a study's trials spent their wall time, read back from MLflow after the study ran.

    python bench/trial_split.py 2M_h1 --root /tmp/bench-2M
    python bench/trial_split.py smoke_h1 --tracking-uri sqlite:///mlruns/mlflow.db --json split.json

Every trial run carries its time split (schemas.tracking.TIME_METRICS, logged by the study
driver when the trial ends): process start to "ready" (interpreter, torch import, dataset read),
setup (data to the device, the batch-size probe, model and optimizer), the training steps, the
per-epoch validation, finish (checkpoint and val scores written), the rest of the process's life
(its exit), and orchestration outside it (Optuna, MLflow, checkpoint upload). This prints, per
phase, the median over complete trials and its share of all complete trials' wall time; the
study's wall time from its first trial's start to its last trial's end, trials per hour, and
whether start-up is over the 10% of a trial at which a resident trial process per slot pays.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from schemas import tracking as T  # noqa: E402

PHASES = ("time/startup_s", "time/setup_s", "time/train_steps_s", "time/eval_s", "time/finish_s",
          "time/process_other_s", "time/orchestration_s")
STARTUP_SHARE_LIMIT = 0.10  # issue 14: above it, keep one trial process per slot alive across trials


def summarise(trials: list[dict]) -> dict:
    """The split of complete trials. Each trial: {"state", "start_ms", "end_ms", "metrics"}.
    Raises ValueError when no complete trial carries a split (a study run before the split was
    logged, or one whose trials all failed)."""
    timed = [t for t in trials if t["state"] == "complete" and "time/train_steps_s" in t["metrics"]]
    if not timed:
        raise ValueError("no complete trial with a time split (time/* metrics): run the study on this version first")
    total = sum(t["metrics"]["time/trial_s"] for t in timed)
    phases = {
        phase: {
            "median_s": statistics.median(t["metrics"][phase] for t in timed),
            "share": sum(t["metrics"][phase] for t in timed) / total if total > 0 else 0.0,
        }
        for phase in PHASES
    }
    ended = [t for t in trials if t["end_ms"]]
    wall_s = (max(t["end_ms"] for t in ended) - min(t["start_ms"] for t in ended)) / 1000 if ended else 0.0
    states: dict[str, int] = {}
    for t in trials:
        states[t["state"]] = states.get(t["state"], 0) + 1
    done = states.get("complete", 0) + states.get("pruned", 0)
    return {
        "trials": states,
        "timed_trials": len(timed),
        "median_trial_s": statistics.median(t["metrics"]["time/trial_s"] for t in timed),
        "phases": phases,
        "study_wall_s": wall_s,
        "trials_per_hour": done / wall_s * 3600 if wall_s > 0 else None,
        "startup_share": phases["time/startup_s"]["share"],
        "keep_processes_alive": phases["time/startup_s"]["share"] > STARTUP_SHARE_LIMIT,
    }


def read_trials(tracking_uri: str, study: str) -> list[dict]:
    from mlflow.tracking import MlflowClient

    from tasks.tracking.runs import search_all_runs

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        raise SystemExit(f"no MLflow experiment {study!r} at {tracking_uri}: name the study as `hpo run` printed it (e.g. 2M_h1)")
    runs = search_all_runs(client, [experiment.experiment_id], f"tags.{T.TAG_RUN_KIND} = 'trial'")
    return [
        {"state": r.data.tags.get(T.TAG_STATE, "unknown"), "start_ms": r.info.start_time, "end_ms": r.info.end_time,
         "metrics": r.data.metrics}
        for r in runs
    ]


def render(study: str, summary: dict) -> str:
    lines = [
        f"study {study}: {summary['trials']}; split over {summary['timed_trials']} complete trials, "
        f"median trial {summary['median_trial_s']:.1f} s",
        f"{'phase':<22}{'median s':>10}{'share':>9}",
    ]
    for phase, row in summary["phases"].items():
        lines.append(f"{phase.removeprefix('time/').removesuffix('_s'):<22}{row['median_s']:>10.2f}{row['share']:>9.1%}")
    per_hour = summary["trials_per_hour"]
    lines.append(f"study wall time {summary['study_wall_s'] / 60:.1f} min, "
                 + (f"{per_hour:.0f} trials/hour" if per_hour else "trials/hour unknown"))
    verdict = "over" if summary["keep_processes_alive"] else "within"
    lines.append(f"start-up is {summary['startup_share']:.1%} of trial time: {verdict} the "
                 f"{STARTUP_SHARE_LIMIT:.0%} at which one resident trial process per slot pays")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", help="the study's name as `hpo run` printed it, e.g. 2M_h1")
    parser.add_argument("--root", type=Path, default=Path("mlruns"), help="the stores' folder (embedded SQLite)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: SQLite under --root)")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary to this JSON file")
    args = parser.parse_args()
    from schemas.config import StoreConfig

    uri = args.tracking_uri or StoreConfig(root=args.root).mlflow_uri
    summary = summarise(read_trials(uri, args.study))
    print(render(args.study, summary))
    if args.json:
        args.json.write_text(json.dumps({"study": args.study, **summary}, indent=2))


if __name__ == "__main__":
    main()
