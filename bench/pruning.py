"""Epochs trained and best val AUC with and without a pruner, on real smoke studies at the same n_trials.

    python bench/pruning.py                                  # smoke-200M_h1, 20 trials, 8 epochs, none vs median, 2 seeds
    python bench/pruning.py --pruners none median hyperband --seeds 0 1 2

Each study runs through `tasks.study.loop.run_study` (no Prefect): real trial processes, real
Optuna and MLflow stores in a fresh temporary folder per study, the smoke switch's data and
learning rates, with trials allowed `--epochs` epochs and early stopping after `--patience`
epochs without a better val AUC (so the baseline already stops hopeless trials that plateau).
With a pruner, n_trials counts complete + pruned trials: both arms run the same number of
trials. Epochs trained are counted from the Optuna trials' reported epochs (every trial reports
each epoch's val AUC, extremes included); a pruned trial's process is stopped within the epoch
after its last report, and that partial epoch is not counted. The best val AUC's standard error
is Hanley and McNeil's from the validation split's class counts, to judge "within the noise".
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from schemas.config import HpoConfig, StoreConfig, StudySpec  # noqa: E402
from tasks.report.analysis import hanley_mcneil_se  # noqa: E402
from tasks.study.loop import run_study  # noqa: E402


def run_one(pruner: str, seed: int, args: argparse.Namespace, root: Path) -> dict:
    base = HpoConfig().smoke()
    config = base.model_copy(update={
        "train": base.train.model_copy(update={"max_epochs": args.epochs, "patience": args.patience, "device": "cpu"}),
        "study": base.study.model_copy(update={"n_trials": args.trials, "pruner": pruner, "sampler_seed": seed,
                                               "baselines": False, "slots": 1}),
        "stores": StoreConfig(root=root),
    })  # fmt: skip
    spec = StudySpec(budget=args.budget, horizon=args.horizon)  # smoke-200M: the smoke stand-in of 200M
    started = time.perf_counter()
    summary = run_study(spec, config)
    wall = time.perf_counter() - started
    trials = optuna.load_study(study_name=summary["study"], storage=config.stores.optuna_url).get_trials(deepcopy=False)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    best = max((t for t in done if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    metrics = MlflowClient(config.stores.mlflow_uri).get_run(best.user_attrs["mlflow_run_id"]).data.metrics
    return {
        "pruner": pruner, "seed": seed, "trials": len(done), "complete": summary["complete"], "pruned": summary["pruned"],
        "epochs": sum(len(t.intermediate_values) for t in done), "best_val_auc": best.value,
        "best_se": hanley_mcneil_se(best.value, metrics["val_n_pos"], metrics["val_n_neg"]),
        "best_test_auc": summary.get("best_test_auc"), "wall_s": wall,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", default="smoke-200M")
    parser.add_argument("--horizon", type=int, default=1)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--pruners", nargs="+", default=["none", "median"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()

    print(f"date {date.today().isoformat()}  {platform.machine()}, {os.cpu_count()} cores, load average "
          + " ".join(f"{x:.1f}" for x in os.getloadavg()) + f"  optuna {optuna.__version__}")
    print(f"command: python {shlex.join(sys.argv)}")
    rows = []
    for seed in args.seeds:
        for pruner in args.pruners:
            with tempfile.TemporaryDirectory(prefix="bench-pruning-") as tmp:
                row = run_one(pruner, seed, args, Path(tmp))
            rows.append(row)
            print(f"  seed {seed} pruner {pruner:<9} trials {row['trials']} (complete {row['complete']}, pruned {row['pruned']})"
                  f"  epochs {row['epochs']:4d}  best val AUC {row['best_val_auc']:.4f} (SE {row['best_se']:.4f})"
                  f"  its test AUC {row['best_test_auc'] if row['best_test_auc'] is None else round(row['best_test_auc'], 4)}"
                  f"  wall {row['wall_s']:.0f} s", flush=True)
    print()
    baseline = [r for r in rows if r["pruner"] == "none"]
    for pruner in args.pruners:
        arm = [r for r in rows if r["pruner"] == pruner]
        epochs = sum(r["epochs"] for r in arm)
        line = (f"{pruner:<9} epochs {epochs} over {len(arm)} studies, best val AUC mean "
                f"{statistics.mean(r['best_val_auc'] for r in arm):.4f}, wall {sum(r['wall_s'] for r in arm):.0f} s")
        if baseline and pruner != "none":
            base_epochs = sum(r["epochs"] for r in baseline)
            diffs = [a["best_val_auc"] - b["best_val_auc"] for a, b in zip(arm, baseline)]
            line += (f"; {base_epochs / epochs:.2f}x fewer epochs than none, "
                     f"wall {sum(r['wall_s'] for r in baseline) / sum(r['wall_s'] for r in arm):.2f}x, "
                     f"best val AUC minus none's per seed: {', '.join(f'{d:+.4f}' for d in diffs)}")
        print(line)


if __name__ == "__main__":
    main()
