"""Find the largest training batch that fits on the GPU (TrainConfig.batch_size='auto').

`find_largest_batch` is pure search logic over a `try_batch(batch_size) -> bool` callable, so
it is tested on the CPU with a fake. `probe_largest_batch` builds that callable from the real
training step (tasks.train.train_step: forward, backward, clip, fused AdamW) and answers False
when the step runs out of memory.

The search assumes memory grows with the batch: it halves from `start` until a size fits,
doubles until one does not (or `upper` is reached), then bisects between the last size that fit
and the first that did not, on multiples of `multiple` (tensor-core friendly shapes).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass

import torch

from models.arch_grid import Architecture
from schemas.config import TrainConfig
from tasks.train import DeviceData, Hyperparams, build_training, train_step

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


def probe_largest_batch(
    arch: Architecture,
    hparams: Hyperparams,
    config: TrainConfig,
    window: int,
    data: DeviceData,
    device: torch.device,
    *,
    upper: int,
) -> BatchSearch:
    """Search with real training steps of this architecture on this device (meant for CUDA).

    One probe model and optimizer serve every try (built once: a 2B model takes a while); each
    try runs two full steps (the first allocates AdamW's state) with learning rate 0, the
    trial's dropout and checkpointing, on real windows. The probe is eager even when
    config.compile is set: a compiled step needs no more memory than the eager one. The caller
    frees nothing: every tensor of the probe is released here, before the trial's model is built.
    """
    probe_config = config.model_copy(update={"compile": False})
    probe_hparams = Hyperparams(learning_rate=0.0, dropout=hparams.dropout, weight_decay=hparams.weight_decay)
    model, step_model, optimizer = build_training(arch, probe_hparams, probe_config, window, device)
    anchors, labels = data.anchors["train"], data.labels["train"]

    def try_batch(batch_size: int) -> bool:
        fitted = False
        try:
            idx = torch.arange(batch_size, device=device) % len(anchors)
            x, y = data.batch(anchors[idx]), labels[idx]
            for _ in range(2):
                train_step(step_model, optimizer, x, y, config.grad_clip)
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # an asynchronous failure surfaces here
            fitted = True
        except Exception as exc:  # noqa: BLE001 - only an OOM is an answer; anything else propagates
            if not is_oom(exc):
                raise
        # outside the handler, so the traceback (and the activations its frames hold) is gone
        optimizer.zero_grad(set_to_none=True)
        _release(device)
        return fitted

    try:
        return find_largest_batch(try_batch, upper=upper)
    finally:
        del model, step_model, optimizer
        _release(device)


def _release(device: torch.device) -> None:
    """Return a failed try's memory to the device: collect cycles, then empty the cache."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
