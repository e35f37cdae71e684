"""What both bench scripts share: the data, the device's description, timing; FLOPs and peaks come from models.flops."""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from datetime import date
from pathlib import Path

import torch

from models.arch_grid import Architecture, forced_extremes
from models.flops import flops_per_window, peak_tflops_of
from schemas.config import DataConfig
from tasks.data.dataset import PreparedData, cached_dataset

CACHE_DIR = Path("mlruns/cache")


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None  # no agreed CPU peak: MFU is reported on CUDA only
    return peak_tflops_of(torch.cuda.get_device_name(device))


# Training FLOPs of one window: models.flops.flops_per_window, the one count (`hpo plan` uses it too).
flops_per_sample = flops_per_window


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
