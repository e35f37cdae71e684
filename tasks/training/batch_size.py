"""Find the largest training batch that fits on the GPU (TrainConfig.batch_size='auto').

`find_largest_batch` is pure search logic over a `try_batch(batch_size) -> bool` callable, so
it is tested on the CPU with a fake. The trainer's `probe_largest_batch`
(tasks/training/trainer.py) builds that callable from the real training step and answers False
when the step runs out of memory; this module knows nothing of the trainer.

The search assumes memory grows with the batch: it halves from `start` until a size fits,
doubles until one does not (or `upper` is reached), then bisects between the last size that fit
and the first that did not, on multiples of `multiple` (tensor-core friendly shapes).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass

import torch


# A size that just fitted in a two-step probe can fail hours later (fragmentation, evaluation
# buffers): keep this fraction of it when memory, not `upper`, was the limit.
SAFETY_FRACTION = 0.9


class BatchDoesNotFit(RuntimeError):
    """Not even a batch of one window fits on the device."""


@dataclass(frozen=True)
class BatchSearch:
    largest_fitting: int  # the largest size that fitted (memory-limited) or `upper` (capped)
    batch_size: int  # the size to train with: largest_fitting less the safety margin
    capped: bool  # True when `upper` fitted, i.e. memory was not the limit
    tried: tuple[tuple[int, bool], ...]  # (batch_size, fitted) in the order they were tried


def find_largest_batch(
    try_batch: Callable[[int], bool],
    *,
    upper: int,
    start: int = 8,
    multiple: int = 8,
    safety: float = SAFETY_FRACTION,
) -> BatchSearch:
    """The largest batch size in [1, upper] for which `try_batch` answers True.

    Raises BatchDoesNotFit when even 1 does not fit.
    """
    if upper < 1 or start < 1 or multiple < 1:
        raise ValueError(f"upper={upper}, start={start} and multiple={multiple} must all be >= 1")
    if not 0 < safety <= 1:
        raise ValueError(f"safety={safety} must lie in (0, 1]")
    tried: dict[int, bool] = {}

    def fits(batch_size: int) -> bool:
        if batch_size not in tried:
            tried[batch_size] = bool(try_batch(batch_size))
        return tried[batch_size]

    good = min(start, upper)
    while not fits(good):  # 1. halve until something fits
        if good == 1:
            raise BatchDoesNotFit(f"not even a batch of 1 fits (tried {sorted(tried)})")
        good //= 2
    bad = None
    while good < upper:  # 2. double until something does not
        bigger = min(2 * good, upper)
        if not fits(bigger):
            bad = bigger
            break
        good = bigger
    if bad is not None:  # 3. bisect (good, bad) on multiples of `step`
        step = multiple if good >= multiple else 1
        while True:
            mid = (good + bad) // 2 // step * step
            if mid <= good:
                break
            if fits(mid):
                good = mid
            else:
                bad = mid
    capped = bad is None
    chosen = good if capped else _with_margin(good, safety, multiple)
    return BatchSearch(largest_fitting=good, batch_size=chosen, capped=capped, tried=tuple(tried.items()))


def _with_margin(batch_size: int, safety: float, multiple: int) -> int:
    """`safety` x batch_size, rounded down to a multiple when that leaves at least one multiple."""
    reduced = int(batch_size * safety)
    if reduced >= multiple:
        reduced = reduced // multiple * multiple
    return max(1, reduced)


def is_oom(exc: BaseException) -> bool:
    """An allocation failure on the device (the caching allocator's, cuBLAS's or cuDNN's)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    message = str(exc)
    return isinstance(exc, RuntimeError) and any(
        marker in message for marker in ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED")
    )


def release_device(device: torch.device) -> None:
    """Return a failed try's memory to the device: collect cycles, then empty the cache."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
