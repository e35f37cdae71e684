"""What the study driver sends to a trial process, and what comes back.

The driver writes a `TrialRequest` as JSON; the trial process prints events on stdout, one per
line, prefixed with EVENT_PREFIX so stray library output cannot be mistaken for one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from models.arch_grid import Architecture
from schemas.config import TrainConfig

EVENT_PREFIX = "@@hpo "
# Test hook: JSON {trial_number: fault}; faults go through the real failure paths of the trial
# process ("nan": the loss becomes NaN; "oom": torch.OutOfMemoryError at the first step;
# "crash": the process dies without a word; "hang": it stops reporting; "noise": it trains on
# random features, a real trial that learns nothing, for the pruner to stop; "fill_gpu": at the
# first step it allocates 1 GiB blocks until CUDA itself runs out of memory, a real OOM with the GPU
# full, so the next trial shows the memory was given back; CUDA only).
FAULT_ENV = "HPO_INJECT_FAULTS"

# What a trial process in mode "noop" reports: a complete trial that trained nothing, so
# bench/orchestration_overhead.py can time everything around a trial.
NOOP_RESULT: dict[str, float | int | str] = {
    "val_auc": 0.5, "val_loss": 0.0, "best_epoch": 0, "epochs": 0, "pred_min": 0.5, "pred_max": 0.5,
    "pred_range": 0.0, "recall": 0.0, "train_seconds": 0.0, "samples_per_s": 0.0, "peak_memory_mb": 0.0,
    "batch_size": 0, "device": "none",
}


class TrialRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["train", "evaluate", "noop"] = "train"  # noop: report NOOP_RESULT, train nothing
    trial_number: int
    dataset_path: Path
    window: int
    arch: Architecture  # a stdlib dataclass: pydantic validates and serialises it as is
    learning_rate: float = 0.0
    dropout: float = 0.0
    weight_decay: float = 0.0
    train: TrainConfig
    checkpoint_path: Path
    split: Literal["val", "test"] = "test"  # evaluate mode
    threads: int | None = None
