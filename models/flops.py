"""Training FLOPs of the transformer and what they cost on a device: pure arithmetic, one count.

bench/ (MFU) and `hpo plan` (the cost forecast) both count with `flops_per_window`, so a
benchmark's TFLOP/s and a plan's GPU-hours are in the same units.

    per window     T (6N + 12 L d T)          nanoGPT's estimate_mfu per token, T = the window
    per trial      per window x training windows per epoch x epochs
    GPU-hours      FLOPs / effective FLOP/s / 3600

6N is the forward and backward matmuls over the parameters, 12 L d T attention's scores and
weighted sum. N = `count_parameters`, every trainable parameter: the model has no embedding table
(nanoGPT's exclusion) and its positions are a fixed buffer. N includes the head, applied once per
window after pooling, and the LayerNorms, which do no matmul; both are < 0.1% of N. Evaluation
(forward only, once per epoch on val) and activation-checkpointing recompute are not counted.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from models.arch_grid import DEFAULT_NUM_FEATURES, Architecture, count_parameters

# Dense bf16 tensor-core peaks (TFLOP/s) from NVIDIA's data sheets, matched in this order against
# a device's name (torch.cuda.get_device_name, the `device` tag of a trial run). Sparse figures
# are twice these.
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("H200", 989.0),
    ("A100", 312.0),
)
# What a plan declares when no trial was measured: the H100 SXM bf16 peak, and an MFU that is an
# assumption (bench/RESULTS.md targets 50% at 200M and 2B, unmeasured; llm-foundry reports 43-46%
# at 1B-3B on H100; small models with 60-token windows reach less).
DEFAULT_PEAK_TFLOPS = 989.0
DEFAULT_MFU = 0.3


def peak_tflops_of(device_name: str) -> float | None:
    """The dense bf16 peak of a device named like `NVIDIA H200`, or None when not in the table."""
    return next((peak for key, peak in BF16_PEAK_TFLOPS if key.lower() in device_name.lower()), None)


def flops_per_window(arch: Architecture, window: int, num_features: int = DEFAULT_NUM_FEATURES) -> int:
    """Training FLOPs (forward + backward) of one window of `window` days: T (6N + 12 L d T)."""
    n = count_parameters(arch.d_model, arch.n_layers, arch.d_ff, num_features)
    return window * (6 * n + 12 * arch.n_layers * arch.d_model * window)


def flops_per_trial(arch: Architecture, window: int, windows: int, epochs: float,
                    num_features: int = DEFAULT_NUM_FEATURES) -> float:
    """Training FLOPs of one trial: per window x training windows per epoch x epochs."""
    return flops_per_window(arch, window, num_features) * windows * epochs


def windows_per_epoch(n_train: int, batch_size: int, max_batches_per_epoch: int | None) -> int:
    """Training windows one epoch sees: the whole train split, or `max_batches_per_epoch` batches of it."""
    if max_batches_per_epoch is None:
        return n_train
    return min(n_train, max_batches_per_epoch * batch_size)


def gpu_hours(flops: float, flop_per_s: float) -> float:
    """Device-hours that `flops` take at an effective rate of `flop_per_s`."""
    if flop_per_s <= 0:
        raise ValueError(f"an effective throughput of {flop_per_s} FLOP/s cannot finish anything; give a positive rate")
    return flops / flop_per_s / 3600


@dataclass(frozen=True)
class GridFlops:
    """Training FLOPs of one trial over a budget's grid: a study draws its architectures from it."""

    mean: float
    low: float  # the cheapest architecture's
    high: float  # the dearest architecture's
    mean_per_window: float
    architectures: int


def grid_flops(archs: Sequence[Architecture], window: int, windows: int, epochs: float,
               num_features: int = DEFAULT_NUM_FEATURES) -> GridFlops:
    """FLOPs per trial over the grid (every architecture equally likely: the forecast's assumption)."""
    if not archs:
        raise ValueError("an empty grid has no FLOPs to count; check the budget and num_features")
    per_window = [flops_per_window(a, window, num_features) for a in archs]
    mean_per_window = math.fsum(per_window) / len(per_window)
    scale = windows * epochs
    return GridFlops(mean=mean_per_window * scale, low=min(per_window) * scale, high=max(per_window) * scale,
                     mean_per_window=mean_per_window, architectures=len(archs))


def makespan(hours: Sequence[float], gpus: int) -> float:
    """Wall hours of jobs that each hold one GPU from start to end, on `gpus` GPUs, taken in order
    by whichever GPU frees first (a work pool of one worker per GPU and a stage's studies)."""
    if gpus < 1:
        raise ValueError(f"--gpus {gpus}: give at least 1")
    lanes = [0.0] * gpus
    for job in hours:
        lanes[lanes.index(min(lanes))] += job
    return max(lanes)
