"""What both bench scripts share: the data, the device's description, timing and FLOP arithmetic."""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from datetime import date
from pathlib import Path

import torch

from models.arch_grid import Architecture, count_parameters, forced_extremes
from schemas.config import DataConfig
from tasks.data.dataset import PreparedData, cached_dataset

CACHE_DIR = Path("mlruns/cache")

# Dense bf16 tensor-core peaks (TFLOP/s) from NVIDIA's data sheets, matched in this order against
# torch.cuda.get_device_name(); --peak-tflops overrides. Sparse figures are twice these.
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("H200", 989.0),
    ("A100", 312.0),
)


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None  # no agreed CPU peak: MFU is reported on CUDA only
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS if key in name), None)


def flops_per_sample(arch: Architecture, window: int, num_features: int = 25) -> int:
    """Training FLOPs of one window, nanoGPT's estimate_mfu per token times the window.

    6N + 12 L d T per token (T = window): 6N for the forward and backward matmuls over the
    parameters, 12 L d T for attention's scores and weighted sum. N = count_parameters(arch),
    every trainable parameter: this model has no embedding table (nanoGPT's exclusion) and its
    positions are a fixed buffer. N includes the head, applied once per window after pooling,
    and the LayerNorms, which do no matmul; both are < 0.1% of N.
    """
    n = count_parameters(arch.d_model, arch.n_layers, arch.d_ff, num_features)
    return window * (6 * n + 12 * arch.n_layers * arch.d_model * window)


def load_data(horizon: int = 1, window: int = 60) -> PreparedData:
    data, _ = cached_dataset(DataConfig(window=window), horizon, CACHE_DIR)
    return data


def pick_architectures(grid: list[Architecture], which: str) -> list[Architecture]:
    """'all', an index into the grid, or 'deepest' / 'widest': the grid's forced extremes
    max_n_layers / max_d_model, so commands stay right when a grid version renumbers its entries."""
    if which == "all":
        return grid
    named = {"deepest": "max_n_layers", "widest": "max_d_model"}
    if which in named:
        return [dict(forced_extremes(grid))[named[which]]]
    try:
        return [grid[int(which)]]
    except (ValueError, IndexError):
        raise SystemExit(f"--arch-idx {which!r}: give 0..{len(grid) - 1}, 'deepest', 'widest' or 'all'") from None


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} torch threads of {os.cpu_count()} cores (torch {torch.__version__})"


def header(device: torch.device) -> str:
    load = " load average %.1f %.1f %.1f" % os.getloadavg() if hasattr(os, "getloadavg") else ""
    return (
        f"date {date.today().isoformat()}  device {describe_device(device)}{load}\n"
        f"command: python {shlex.join(sys.argv)}"
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Wall time of a block, the device synchronised at both ends."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, 0.0

    def __enter__(self) -> Timer:
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._start
