"""The trial process: `python -m tasks.study.trial_worker REQUEST.json`.

It trains (or evaluates) one architecture and reports on stdout; it never touches Optuna or
MLflow. Running it as a separate process is what keeps a crash, an OOM or a hung kernel from
taking the study driver down: the driver only reads events and an exit code.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time
from pathlib import Path

from schemas.trial import EVENT_PREFIX, NOOP_RESULT, TrialRequest
from tasks.study.faults import NoFaults, faults_for


def emit(event: str, **fields: object) -> None:
    print(EVENT_PREFIX + json.dumps({"event": event, **fields}), flush=True)


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the driver dies, so no orphan holds the GPU."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass  # not Linux: the driver's own cleanup still kills us on normal exits


# Within an epoch the trial says it is alive at most this often: a 2B epoch can take an hour,
# and the driver must tell a slow epoch from a hung kernel (its stall timeout).
ALIVE_EVERY_S = 10.0


def _train(request: TrialRequest, faults: NoFaults) -> int:
    import torch

    from tasks.data.prepared import PreparedData
    from tasks.training.trainer import Hyperparams, TrialFailure, train_model

    faults.before_load()
    data = PreparedData.load(request.dataset_path)
    emit("ready")
    faults.after_load(data)

    def on_epoch(metrics: dict[str, float]) -> None:
        faults.after_epoch()
        emit("epoch", **metrics)

    last_alive = time.monotonic()

    def on_step(epoch: int, step: int) -> None:
        nonlocal last_alive
        faults.at_step(step, request.train.device)
        if time.monotonic() - last_alive >= ALIVE_EVERY_S:
            last_alive = time.monotonic()
            emit("alive", epoch=epoch, step=step)

    hparams = Hyperparams(request.learning_rate, request.dropout, request.weight_decay)
    try:
        result, state = train_model(data, request.arch, hparams, request.train, request.window,
                                    on_epoch=on_epoch, on_step=on_step)  # fmt: skip
    except TrialFailure as failure:
        emit("failed", kind=failure.kind, reason=str(failure))
        return 3
    finish_started = time.perf_counter()
    request.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = request.checkpoint_path.with_suffix(".tmp")
    torch.save({"arch": request.arch.as_dict(), "state": state, "dropout": request.dropout}, tmp)
    tmp.replace(request.checkpoint_path)
    write_scores(request, data, request.arch, state, "val")
    emit("result", **result.as_dict(), finish_seconds=time.perf_counter() - finish_started)
    return 0


def write_scores(request: TrialRequest, data, arch, state, split: str) -> float:
    """The split's scores of these weights, encoded beside the checkpoint for the driver to log
    (tasks.tracking.predictions); their AUC."""
    from tasks.tracking.predictions import encode, scores_path, split_digest
    from tasks.training.trainer import auc, predict_state

    probs = predict_state(data, arch, state, request.train, split)
    labels = data.labels[split] == 1
    scores_path(request.checkpoint_path, split).write_bytes(encode(split, probs, labels, split_digest(data, split)))
    return auc(labels, probs)


def _evaluate(request: TrialRequest) -> int:
    import torch

    from models.arch_grid import Architecture
    from tasks.data.prepared import PreparedData
    checkpoint = torch.load(request.checkpoint_path, map_location="cpu", weights_only=True)
    data = PreparedData.load(request.dataset_path)
    value = write_scores(request, data, Architecture(**checkpoint["arch"]), checkpoint["state"], request.split)
    emit("evaluation", split=request.split, auc=value)
    return 0


def main(argv: list[str]) -> int:
    die_with_parent()
    emit("started", pid=os.getpid())
    request = TrialRequest.model_validate_json(Path(argv[1]).read_text())
    if request.mode == "noop":  # the orchestration benchmark: a trial that trains nothing
        emit("result", **NOOP_RESULT)
        return 0
    if request.threads:
        import torch

        torch.set_num_threads(request.threads)
    return _train(request, faults_for(request.trial_number)) if request.mode == "train" else _evaluate(request)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
