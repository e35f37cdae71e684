"""Faults a test asks a trial process for (schemas.trial.FAULT_ENV), applied at one seam.

The trial worker asks `faults_for(trial_number)` for its hooks and calls them at four points of
its work: before loading, after loading, after each epoch, at each step. Without a fault asked for
they are `NoFaults`, which does nothing, so the worker's own code reads load -> train -> save. Each
fault goes through the real failure path it names:
- crash: the process dies without a word (like a segfault);
- hang: it stops reporting (the driver's stall timeout must catch it);
- nan: the features become NaN (the trainer's divergence check must catch it);
- noise: it trains on random features, a real trial that learns nothing (for the pruner to stop);
- oom: torch.OutOfMemoryError inside the training loop (the trainer's own OOM handling reports it);
- fill_gpu: at the first step it allocates 1 GiB blocks until CUDA itself runs out of memory.
"""

from __future__ import annotations

import json
import os
import time

from schemas.trial import FAULT_ENV

FAULTS = ("crash", "hang", "nan", "noise", "oom", "fill_gpu")


class NoFaults:
    """The hooks of a trial nobody asked to fail: each does nothing."""

    def before_load(self) -> None:
        pass

    def after_load(self, data) -> None:
        pass

    def after_epoch(self) -> None:
        pass

    def at_step(self, step: int, device: str) -> None:
        pass


class InjectedFault(NoFaults):
    """One fault, raised at the point of the trial where it happens for real."""

    def __init__(self, kind: str, trial_number: int):
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r} in {FAULT_ENV}; choose one of {', '.join(FAULTS)}")
        self.kind, self.trial_number = kind, trial_number

    def before_load(self) -> None:
        if self.kind == "crash":
            os._exit(139)  # like a segfault: no event, no cleanup
        if self.kind == "hang":
            time.sleep(10**6)

    def after_load(self, data) -> None:
        if self.kind == "nan":
            data.features[:] = float("nan")
        elif self.kind == "noise":
            import numpy as np

            data.features[:] = np.random.default_rng(self.trial_number).standard_normal(data.features.shape)

    def after_epoch(self) -> None:
        if self.kind == "oom":
            import torch

            raise torch.OutOfMemoryError("CUDA out of memory (injected by HPO_INJECT_FAULTS)")

    def at_step(self, step: int, device: str) -> None:
        if self.kind == "fill_gpu" and step == 1:
            fill_gpu(device)


def faults_for(trial_number: int) -> NoFaults:
    """The hooks for this trial: the fault FAULT_ENV (JSON {trial_number: fault}) names, or none."""
    kind = json.loads(os.environ.get(FAULT_ENV, "{}")).get(str(trial_number))
    return InjectedFault(kind, trial_number) if kind else NoFaults()


def fill_gpu(requested: str) -> None:
    """Allocate 1 GiB blocks until CUDA's allocator raises torch.OutOfMemoryError: the real failure,
    with the GPU really full (the blocks are let go before the error leaves this function)."""
    import torch

    from tasks.training.trainer import resolve_device

    device = resolve_device(requested)
    if device.type != "cuda":  # on a CPU this would take the machine's memory, not fail a trial
        raise RuntimeError(f"the fill_gpu fault needs CUDA; this trial runs on {device}")
    blocks = []
    try:
        while True:
            blocks.append(torch.empty(1 << 30, dtype=torch.uint8, device=device))
    except torch.OutOfMemoryError:
        blocks.clear()  # now, not when the traceback that holds this frame goes: the trainer empties the cache
        raise
