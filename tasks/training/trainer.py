"""Train and evaluate one architecture on prepared data: the GPU edge of the system.

The dataset lives on the training device as one feature matrix; a batch of windows is built by
indexing (`features[anchors[:, None] + offsets]`), never by a per-sample DataLoader. On CUDA the
step runs in bf16 autocast with fused AdamW and TF32 for what stays fp32; on CPU in fp32 and
reproducible for a seed. `batch_size='auto'` trains with the largest batch that fits on the GPU
(tasks/training/batch_size.py) and records it in the result. `train_step` is the one step that the trainer,
the batch-size probe and bench/ all run.
"""

from __future__ import annotations

import copy
import math
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from models.arch_grid import DEFAULT_NUM_FEATURES, Architecture
from models.transformer import ModelConfig, TransformerClassifier
from schemas.config import TrainConfig
from tasks.data.prepared import PreparedData
from tasks.training.batch_size import BatchSearch, find_largest_batch, is_oom, release_device


class TrialFailure(RuntimeError):
    """A trial that cannot produce a result; `kind` is what MLflow and Optuna record."""

    kind = "error"


class TrialDiverged(TrialFailure):
    kind = "diverged"


class TrialOOM(TrialFailure):
    kind = "oom"


@dataclass(frozen=True)
class Hyperparams:
    learning_rate: float
    dropout: float
    weight_decay: float


@dataclass
class TrainResult:
    val_auc: float
    val_loss: float
    best_epoch: int
    epochs: int
    pred_min: float
    pred_max: float
    pred_range: float
    recall: float  # at threshold 0.5 on val, best epoch
    val_n_pos: int  # class counts of the val split: the report's AUC confidence intervals need them
    val_n_neg: int
    train_seconds: float  # the training steps alone (the per-trial time split: bench/trial_split.py)
    samples_per_s: float
    setup_seconds: float  # data to the device, the batch-size probe, model and optimizer
    eval_seconds: float  # the per-epoch validation passes
    peak_memory_mb: float
    batch_size: int
    device: str

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} requested but CUDA is not available; use device='auto' or 'cpu'")
    return device


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


@dataclass
class DeviceData:
    """PreparedData moved to the training device once."""

    features: torch.Tensor  # (rows, F)
    anchors: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor]
    offsets: torch.Tensor  # (window,) = -window+1 .. 0

    @classmethod
    def from_prepared(cls, data: PreparedData, device: torch.device) -> DeviceData:
        return cls(
            features=torch.as_tensor(data.features, device=device),
            anchors={k: torch.as_tensor(v, device=device) for k, v in data.anchors.items()},
            labels={k: torch.as_tensor(v, device=device) for k, v in data.labels.items()},
            offsets=torch.arange(-data.window + 1, 1, device=device),
        )

    def batch(self, anchors: torch.Tensor) -> torch.Tensor:
        return self.features[anchors[:, None] + self.offsets]  # (B, window, F)


def build_model(arch: Architecture, dropout: float, config: TrainConfig, window: int,
                num_features: int = DEFAULT_NUM_FEATURES) -> TransformerClassifier:
    """The model of `arch` for windows of `window` days of `num_features` features (the data's F)."""
    return TransformerClassifier(
        ModelConfig(
            num_features=num_features,
            d_model=arch.d_model,
            n_layers=arch.n_layers,
            n_heads=arch.n_heads,
            d_ff=arch.d_ff,
            dropout=dropout,
            max_len=max(window, 64),
            activation_checkpointing=config.activation_checkpointing,
        )
    )


def build_training(
    arch: Architecture, hparams: Hyperparams, config: TrainConfig, window: int, device: torch.device,
    num_features: int = DEFAULT_NUM_FEATURES,
) -> tuple[TransformerClassifier, torch.nn.Module, torch.optim.AdamW]:
    """The model on the device, the module a step calls (compiled when asked, on CUDA) and its AdamW.

    Seed the RNG before calling this: the model is initialised on the CPU, so a seed gives the
    same initial weights on every device.
    """
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = build_model(arch, hparams.dropout, config, window, num_features).to(device)
    step_model = torch.compile(model) if config.compile and device.type == "cuda" else model
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=hparams.learning_rate,
        weight_decay=hparams.weight_decay,
        fused=device.type == "cuda",
    )
    return model, step_model, optimizer


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def predict(model: torch.nn.Module, data: DeviceData, split: str, batch_size: int) -> tuple[np.ndarray, float]:
    """Probabilities for a split and the mean BCE loss."""
    model.eval()
    anchors, labels = data.anchors[split], data.labels[split]
    device = anchors.device
    probs, loss_sum = [], 0.0
    for start in range(0, len(anchors), batch_size):
        idx = anchors[start : start + batch_size]
        with _autocast(device):
            logits = model(data.batch(idx)).float()
        loss_sum += F.binary_cross_entropy_with_logits(logits, labels[start : start + batch_size], reduction="sum").item()
        probs.append(torch.sigmoid(logits).cpu())
    return torch.cat(probs).numpy(), loss_sum / len(anchors)


def auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic with midranks for ties (what sklearn's roc_auc_score
    computes). Written here because importing scikit-learn costs every trial process ~1.5 s."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both classes in the labels")
    _, inverse, counts = np.unique(np.asarray(probs, dtype=np.float64), return_inverse=True, return_counts=True)
    midranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # 1-based, ties share their mean rank
    return float((midranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def warmup_steps(config: TrainConfig, total_steps: int) -> int:
    """Warmup steps of a run of `total_steps` planned steps: a fraction of them, capped.

    Relative, so that no run spends most of its steps below its learning rate: early stopping
    (patience 5) would otherwise end a trial before a fixed warmup is over.
    """
    return min(config.max_warmup_steps, round(config.warmup_fraction * total_steps))


def _lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup, then cosine decay to 10% of the peak at the last step."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def train_step(
    step_model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    grad_clip: float | None,
    *,
    epoch: int = 0,
    step: int = 0,
) -> torch.Tensor:
    """One optimisation step on (B, window, F) windows and (B,) labels; returns the detached loss.

    Raises TrialDiverged on a NaN/inf loss (one host sync per step: the price of failing fast).
    """
    with _autocast(x.device):
        logits = step_model(x).float()  # (B,)
    loss = F.binary_cross_entropy_with_logits(logits, y)
    if not torch.isfinite(loss):
        raise TrialDiverged(f"diverged: loss is {loss.item()} at epoch {epoch}, step {step}")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(step_model.parameters(), grad_clip)
    optimizer.step()
    return loss.detach()


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
    model, step_model, optimizer = build_training(arch, probe_hparams, probe_config, window, device, data.features.shape[1])
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
        release_device(device)
        return fitted

    try:
        return find_largest_batch(try_batch, upper=upper)
    finally:
        del model, step_model, optimizer
        release_device(device)


AUTO_BATCH_SIZE_CPU = 256


def resolve_batch_size(
    config: TrainConfig,
    arch: Architecture,
    hparams: Hyperparams,
    window: int,
    data: DeviceData,
    device: torch.device,
) -> int:
    """config.batch_size, or for 'auto' the largest batch that fits on the GPU (256 on a CPU)."""
    if config.batch_size != "auto":
        return config.batch_size
    upper = min(config.max_auto_batch_size, len(data.anchors["train"]))
    if device.type != "cuda":
        return min(AUTO_BATCH_SIZE_CPU, upper)
    return probe_largest_batch(arch, hparams, config, window, data, device, upper=upper).batch_size


EpochCallback = Callable[[dict[str, float]], None]


def _synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a phase's wall time is its own (CUDA is asynchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_model(
    data: PreparedData | DeviceData,
    arch: Architecture,
    hparams: Hyperparams,
    config: TrainConfig,
    window: int,
    on_epoch: EpochCallback | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> tuple[TrainResult, dict[str, torch.Tensor]]:
    """Train with early stopping on val AUC; return the result and the best epoch's weights (CPU).

    Raises TrialDiverged on a NaN/inf loss (with the epoch and step), TrialOOM on CUDA OOM.
    """
    device = resolve_device(config.device)
    try:
        return _train(data, arch, hparams, config, window, device, on_epoch, on_step)
    except RuntimeError as exc:  # torch.OutOfMemoryError, or cuBLAS/cuDNN failing to allocate their workspace
        if not is_oom(exc):
            raise
        release_device(device)
        raise TrialOOM(
            f"out of memory on {device_name(device)} with batch_size={config.batch_size}, "
            f"d_model={arch.d_model}, n_layers={arch.n_layers}: {str(exc).splitlines()[0]}"
        ) from exc


def _train(data, arch, hparams, config, window, device, on_epoch, on_step=None):
    setup_started = time.perf_counter()
    dev = data if isinstance(data, DeviceData) else DeviceData.from_prepared(data, device)
    batch_size = resolve_batch_size(config, arch, hparams, window, dev, device)  # before seeding: probes use RNG
    torch.manual_seed(config.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model, step_model, optimizer = build_training(arch, hparams, config, window, device, dev.features.shape[1])
    _synchronize(device)
    setup_seconds = time.perf_counter() - setup_started
    train_anchors, train_labels = dev.anchors["train"], dev.labels["train"]
    n_train = len(train_anchors)
    batches_per_epoch = math.ceil(n_train / batch_size)
    if config.max_batches_per_epoch:
        batches_per_epoch = min(batches_per_epoch, config.max_batches_per_epoch)
    total_steps = batches_per_epoch * config.max_epochs
    warmup = warmup_steps(config, total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, warmup, total_steps))
    shuffle = torch.Generator().manual_seed(config.seed)
    val_labels = dev.labels["val"].cpu().numpy()

    best = {"auc": -1.0, "epoch": 0, "state": None, "probs": None, "loss": float("nan")}
    train_seconds, eval_seconds, samples_seen, epoch, step = 0.0, 0.0, 0, 0, 0
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        order = torch.randperm(n_train, generator=shuffle).to(device)
        loss_sum = torch.zeros((), device=device)
        started = time.perf_counter()
        for b in range(batches_per_epoch):
            idx = order[b * batch_size : (b + 1) * batch_size]
            x, y = dev.batch(train_anchors[idx]), train_labels[idx]
            loss = train_step(step_model, optimizer, x, y, config.grad_clip, epoch=epoch, step=step)
            scheduler.step()
            loss_sum += loss * len(idx)
            samples_seen += len(idx)
            step += 1
            if on_step:
                on_step(epoch, step)
        _synchronize(device)
        train_seconds += time.perf_counter() - started
        train_loss = loss_sum.item() / min(n_train, batches_per_epoch * batch_size)

        started = time.perf_counter()
        probs, val_loss = predict(model, dev, "val", config.eval_batch_size)  # returns host arrays: synchronised
        if not np.isfinite(probs).all():
            raise TrialDiverged(f"diverged: non-finite predictions at epoch {epoch}")
        val_auc = auc(val_labels, probs)
        eval_seconds += time.perf_counter() - started
        if on_epoch:
            on_epoch({"epoch": epoch, "train/loss": train_loss, "val/loss": val_loss, "val/auc": val_auc})
        if val_auc > best["auc"]:
            best.update(
                auc=val_auc,
                epoch=epoch,
                probs=probs,
                loss=val_loss,
                state={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
            )
        elif epoch - best["epoch"] >= config.patience:
            break

    result = TrainResult(
        val_auc=best["auc"],
        val_loss=best["loss"],
        best_epoch=best["epoch"],
        epochs=epoch,
        **val_diagnostics(best["probs"], val_labels),
        train_seconds=train_seconds,
        samples_per_s=samples_seen / train_seconds if train_seconds > 0 else 0.0,
        setup_seconds=setup_seconds,
        eval_seconds=eval_seconds,
        peak_memory_mb=_peak_memory_mb(device),
        batch_size=batch_size,
        device=device_name(device),
    )
    return result, best["state"]


def val_diagnostics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float | int]:
    """Prediction spread (a collapsed model predicts one value), recall at 0.5, class counts."""
    positives = labels == 1
    return {
        "pred_min": float(probs.min()),
        "pred_max": float(probs.max()),
        "pred_range": float(probs.max() - probs.min()),
        "recall": float((probs[positives] >= 0.5).mean()) if positives.any() else 0.0,
        "val_n_pos": int(positives.sum()),
        "val_n_neg": int((~positives).sum()),
    }


def evaluate_state(
    data: PreparedData,
    arch: Architecture,
    state: dict[str, torch.Tensor],
    config: TrainConfig,
    split: str = "test",
) -> float:
    """AUC of saved weights on a split (the test split: final evaluation of a chosen config)."""
    return auc(data.labels[split], predict_state(data, arch, state, config, split))


def predict_state(
    data: PreparedData,
    arch: Architecture,
    state: dict[str, torch.Tensor],
    config: TrainConfig,
    split: str,
) -> np.ndarray:
    """Probabilities of saved weights on a split, in the split's window order."""
    device = resolve_device(config.device)
    model = build_model(arch, 0.0, config, data.window, data.num_features)
    model.load_state_dict(copy.deepcopy(state))
    model.to(device)
    dev = DeviceData.from_prepared(data, device)
    probs, _ = predict(model, dev, split, config.eval_batch_size)
    return probs
