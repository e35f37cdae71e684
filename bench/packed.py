"""Packed trials: K trials of one architecture trained together, one vmapped step for all.

A 2M-parameter model cannot fill a GPU: one trial's step is a few hundred small kernels, and
launches, not arithmetic, set its speed. Packing K trials of the same architecture makes every
kernel K times larger for the same number of launches.

How a pack works
----------------
- Each trial's model is built exactly as the trainer builds it (`torch.manual_seed(seed)`, then
  `build_model` on the CPU), so a packed trial starts from its unpacked twin's weights.
  `torch.func.stack_module_state` stacks the K models; the forward is
  `vmap(functional_call(template, ...))` over the stacked weights, with a (K, B, window, F) batch
  (every trial keeps its own shuffle order, seeded by its own seed, as in the trainer).
- The stacked weights live in one (K, P) matrix, each parameter a (K, *shape) view of its
  columns, and their gradients likewise in one (K, P) matrix that backward accumulates into. The
  optimiser is then a handful of whole-matrix operations however deep the model is: AdamW with
  torch's update rule, with a (K, 1) learning rate and weight decay (per trial), per-trial
  gradient-norm clipping, and the trainer's warmup + cosine schedule.
- Per-trial dropout: `nn.Dropout` and the attention's `dropout_p` take a Python float, which
  cannot differ across a vmapped dimension. Each dropout is therefore replaced by `TrialDropout`,
  whose probability is a buffer (stacked to one value per trial) and which masks by hand:
  where(u >= p, x, 0) / (1 - p), u uniform, drawn with `vmap(randomness="different")` so every trial
  gets its own masks. Attention dropout acts on the attention probabilities as in
  `scaled_dot_product_attention`, which is why a pack computes attention explicitly
  (softmax(q k^T / sqrt(d_head)), dropout, @ v; for a 60-day window the (T, T) scores are small,
  and SDPA's batching rule under vmap is a slow per-trial loop on the CPU). With p = 0 the mask is
  all ones and the division by 1 exact, so a packed trial with dropout 0 equals its unpacked
  twin up to float rounding (tests/test_packed.py). With p > 0 the masks come from the pack's one
  RNG stream (seeded by the first trial's seed), so a packed trial is the same *distribution* of
  training runs as its twin, not the same draw: same initial weights, same batches, different
  dropout masks.
- Memory: the explicit attention keeps each trial's (B, heads, T, T) probabilities for backward
  (fp32 softmax output, bf16 copy, bool mask: about 7 bytes an element under bf16 autocast), the
  largest term for the deep 2M shapes. Choose the pack size K by memory as well as by speed.
- Each trial keeps its own early stopping. A trial that stops, or whose loss turns NaN/inf
  (TrialDiverged for that trial only), leaves the pack at the end of the epoch: its rows are
  dropped from every stacked tensor, so finished trials cost nothing.

Not supported in a pack: batch_size='auto' (give the batch the twins use), torch.compile and
activation checkpointing (meant for the large budgets, which are not packed).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from models.arch_grid import Architecture
from models.transformer import SelfAttention, TransformerClassifier
from schemas.config import TrainConfig
from tasks.data.dataset import PreparedData
from tasks.training.trainer import (
    DeviceData,
    Hyperparams,
    TrainResult,
    TrialDiverged,
    TrialFailure,
    TrialOOM,
    _autocast,
    _lr_factor,
    warmup_steps,
    _peak_memory_mb,
    auc,
    build_model,
    device_name,
    val_diagnostics,
    resolve_device,
)

ADAM_BETAS = (0.9, 0.999)  # torch.optim.AdamW's defaults, as the trainer uses them
ADAM_EPS = 1e-8


class TrialDropout(nn.Module):
    """Dropout whose probability is a buffer, so that each stacked trial carries its own."""

    def __init__(self, p: float):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout={p} must lie in [0, 1)")
        self.register_buffer("p", torch.tensor(float(p)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = torch.rand_like(x) >= self.p  # per trial under vmap(randomness="different")
        return torch.where(keep, x, 0.0) / (1 - self.p)  # backward keeps the mask as bool: 1 byte


class TrialAttention(nn.Module):
    """SelfAttention with the same weights (same names) and TrialDropout on the probabilities."""

    def __init__(self, attention: SelfAttention, p: float):
        super().__init__()
        self.n_heads = attention.n_heads
        self.qkv, self.out = attention.qkv, attention.out
        self.attn_dropout = TrialDropout(p)
        self.resid_dropout = TrialDropout(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = (t.reshape(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        # explicit, not SDPA: dropout_p is one float, and vmap has no SDPA batching rule on the CPU
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(C // self.n_heads)  # (B, H, T, T)
        y = self.attn_dropout(scores.softmax(dim=-1)) @ v  # (B, H, T, head_dim)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.out(y))


def make_packable(model: TransformerClassifier, dropout: float) -> TransformerClassifier:
    """Swap every dropout (and the attention's) for its per-trial version; parameters untouched."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, SelfAttention):
                setattr(module, name, TrialAttention(child, dropout))
            elif isinstance(child, nn.Dropout):
                setattr(module, name, TrialDropout(dropout))
    return model


@dataclass(frozen=True)
class PackedTrial:
    """One trial of a pack: its hyperparameters and its seed (initial weights, batch order)."""

    hparams: Hyperparams
    seed: int


@dataclass
class PackedOutcome:
    """What the trainer would have returned for this trial, or the failure it would have raised."""

    result: TrainResult | None = None
    state: dict[str, torch.Tensor] | None = None
    failure: TrialFailure | None = None


class _Pack:
    """The live trials' stacked weights, gradients and AdamW state, as (K, P) matrices."""

    def __init__(self, models: list[nn.Module], trials: Sequence[PackedTrial], device: torch.device):
        params, buffers = stack_module_state(models)  # name -> (K, *shape)
        self.names = list(params)
        self.shapes = [tuple(params[n].shape[1:]) for n in self.names]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.theta = torch.cat([params[n].detach().flatten(1) for n in self.names], dim=1).to(device)  # (K, P)
        self.grad = torch.zeros_like(self.theta)
        self.exp_avg = torch.zeros_like(self.theta)
        self.exp_avg_sq = torch.zeros_like(self.theta)
        self.buffers = {n: b.to(device) for n, b in buffers.items()}
        self.lr = torch.tensor([[t.hparams.learning_rate] for t in trials], device=device)  # (K, 1)
        self.weight_decay = torch.tensor([[t.hparams.weight_decay] for t in trials], device=device)
        self.rows = list(range(len(trials)))  # trial index of each row
        self.steps = 0
        self._link()

    def _link(self) -> None:
        """(Re)build each parameter as a (K, *shape) leaf view of theta, its .grad a view of grad."""
        self.params, offset = {}, 0
        K = self.theta.shape[0]
        for name, shape, size in zip(self.names, self.shapes, self.sizes):
            view = self.theta[:, offset : offset + size].view(K, *shape).requires_grad_(True)
            view.grad = self.grad[:, offset : offset + size].view(K, *shape)
            self.params[name] = view
            offset += size

    def keep(self, rows: list[int]) -> None:
        """Drop every other row (trials that stopped or failed) from every stacked tensor."""
        index = torch.tensor(rows, dtype=torch.long, device=self.theta.device)
        for attr in ("theta", "grad", "exp_avg", "exp_avg_sq", "lr", "weight_decay"):
            setattr(self, attr, getattr(self, attr).index_select(0, index))
        self.buffers = {n: b.index_select(0, index) for n, b in self.buffers.items()}
        self.rows = [self.rows[r] for r in rows]
        self._link()

    def state(self, row: int) -> dict[str, torch.Tensor]:
        """One trial's weights as the trainer's state dict (parameter names, on the CPU)."""
        return {n: p[row].detach().to("cpu", copy=True) for n, p in self.params.items()}

    @torch.no_grad()
    def step(self, lr_factor: float, grad_clip: float | None) -> None:
        """AdamW (torch's update rule) with per-trial lr and weight decay; per-trial clipping."""
        g = self.grad
        if grad_clip:
            norms = torch.linalg.vector_norm(g, dim=1, keepdim=True)  # (K, 1)
            g.mul_(torch.clamp(grad_clip / (norms + 1e-6), max=1.0))  # as clip_grad_norm_
        self.steps += 1
        beta1, beta2 = ADAM_BETAS
        lr = self.lr * lr_factor  # (K, 1)
        self.theta.mul_(1 - lr * self.weight_decay)
        self.exp_avg.lerp_(g, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bias_correction1 = 1 - beta1**self.steps
        bias_correction2_sqrt = math.sqrt(1 - beta2**self.steps)
        denom = (self.exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(ADAM_EPS)
        self.theta.sub_(lr / bias_correction1 * (self.exp_avg / denom))
        g.zero_()


def _template(model: nn.Module) -> nn.Module:
    """A weightless copy of a model for functional_call (weights come from the pack)."""
    return copy.deepcopy(model).to("meta")


@dataclass
class _TrialTrack:
    best_auc: float = -1.0
    best_epoch: int = 0
    best_loss: float = float("nan")
    best_probs: np.ndarray | None = None
    best_state: dict[str, torch.Tensor] | None = None
    epochs: int = 0
    seconds: float = 0.0
    eval_seconds: float = 0.0
    samples: int = 0
    shuffle: torch.Generator = field(default_factory=torch.Generator)


PackedEpochCallback = Callable[[int, dict[str, float]], None]


def train_packed(
    data: PreparedData | DeviceData,
    arch: Architecture,
    trials: Sequence[PackedTrial],
    config: TrainConfig,
    window: int,
    on_epoch: PackedEpochCallback | None = None,
) -> list[PackedOutcome]:
    """Train the trials together; one outcome per trial, in order (config.seed is not used).

    Each trial follows tasks.training.trainer.train_model: same schedule, batches, early stopping and
    result fields. train_seconds and eval_seconds are the pack's while the trial was in it;
    setup_seconds is the pack's own setup.
    Raises TrialOOM when the pack does not fit (split it).
    """
    if not trials:
        return []
    if config.batch_size == "auto":
        raise ValueError("packed trials need an explicit batch_size (the one their unpacked twins use), not 'auto'")
    device = resolve_device(config.device)
    try:
        return _train_packed(data, arch, list(trials), config, window, device, on_epoch)
    except torch.OutOfMemoryError as exc:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        raise TrialOOM(
            f"out of memory on {device_name(device)} with {len(trials)} packed trials, batch_size={config.batch_size}, "
            f"d_model={arch.d_model}, n_layers={arch.n_layers}: pack fewer trials ({str(exc).splitlines()[0]})"
        ) from exc


def _build_pack(arch, trials, config, window, device) -> tuple[_Pack, nn.Module]:
    models = []
    for trial in trials:
        torch.manual_seed(trial.seed)  # as the trainer: the same initial weights as the twin
        models.append(make_packable(build_model(arch, trial.hparams.dropout, config, window), trial.hparams.dropout))
    return _Pack(models, trials, device), _template(models[0])


def _train_packed(data, arch, trials, config, window, device, on_epoch):
    setup_started = time.perf_counter()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats(device)
    dev = data if isinstance(data, DeviceData) else DeviceData.from_prepared(data, device)
    pack, template = _build_pack(arch, trials, config, window, device)
    torch.manual_seed(trials[0].seed)  # the pack's dropout stream
    tracks = [_TrialTrack(shuffle=torch.Generator().manual_seed(t.seed)) for t in trials]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    setup_seconds = time.perf_counter() - setup_started
    outcomes = [PackedOutcome() for _ in trials]

    train_anchors, train_labels = dev.anchors["train"], dev.labels["train"]
    n_train, batch_size = len(train_anchors), config.batch_size
    batches_per_epoch = math.ceil(n_train / batch_size)
    if config.max_batches_per_epoch:
        batches_per_epoch = min(batches_per_epoch, config.max_batches_per_epoch)
    total_steps = batches_per_epoch * config.max_epochs
    val_labels = dev.labels["val"].cpu().numpy()

    def losses_of(params, buffers, x, y):  # one trial: (B, window, F), (B,) -> ()
        logits = functional_call(template, (params, buffers), (x,)).float()
        return F.binary_cross_entropy_with_logits(logits, y)

    batched_losses = vmap(losses_of, randomness="different")
    step = 0
    for epoch in range(1, config.max_epochs + 1):
        if not pack.rows:
            break
        template.train()
        orders = torch.stack([torch.randperm(n_train, generator=tracks[r].shuffle) for r in pack.rows]).to(device)
        loss_sum = torch.zeros(len(pack.rows), device=device)
        diverged: dict[int, str] = {}  # row -> message
        started = time.perf_counter()
        for b in range(batches_per_epoch):
            idx = orders[:, b * batch_size : (b + 1) * batch_size]  # (K, B)
            x = dev.features[train_anchors[idx][..., None] + dev.offsets]  # (K, B, window, F)
            with _autocast(device):
                losses = batched_losses(pack.params, pack.buffers, x, train_labels[idx])  # (K,)
            finite = torch.isfinite(losses)
            if not bool(finite.all()):  # one host sync per step, as in the trainer
                for row in torch.nonzero(~finite).flatten().tolist():
                    diverged.setdefault(row, f"diverged: loss is {losses[row].item()} at epoch {epoch}, step {step}")
                pack.lr[~finite] = 0.0  # a diverged trial stops moving; it leaves at the epoch's end
            with warnings.catch_warnings():
                # the grads are views of one (K, P) matrix, by design: not a layout problem here
                warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")
                torch.where(finite, losses, 0.0).sum().backward()
            pack.grad.masked_fill_(~finite[:, None], 0.0)
            pack.step(_lr_factor(step, warmup_steps(config, total_steps), total_steps), config.grad_clip)
            loss_sum += losses.detach().nan_to_num() * idx.shape[1]
            step += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
        train_losses = (loss_sum / min(n_train, batches_per_epoch * batch_size)).tolist()
        seen = min(n_train, batches_per_epoch * batch_size)

        started = time.perf_counter()
        probs, val_losses = _predict(template, pack, dev, config.eval_batch_size)  # (K, n_val), (K,): on the host
        eval_seconds = time.perf_counter() - started
        keep = []
        for row, trial_index in enumerate(pack.rows):
            track, outcome = tracks[trial_index], outcomes[trial_index]
            track.epochs, track.seconds, track.samples = epoch, track.seconds + seconds, track.samples + seen
            track.eval_seconds += eval_seconds
            if row in diverged or not np.isfinite(probs[row]).all():
                outcome.failure = TrialDiverged(diverged.get(row, f"diverged: non-finite predictions at epoch {epoch}"))
                continue
            val_auc = auc(val_labels, probs[row])
            if on_epoch:
                on_epoch(
                    trial_index,
                    {"epoch": epoch, "train/loss": train_losses[row], "val/loss": val_losses[row], "val/auc": val_auc},
                )
            if val_auc > track.best_auc:
                track.best_auc, track.best_epoch, track.best_loss = val_auc, epoch, val_losses[row]
                track.best_probs, track.best_state = probs[row], pack.state(row)
            elif epoch - track.best_epoch >= config.patience:
                continue  # stopped early: leaves the pack
            keep.append(row)
        if len(keep) < len(pack.rows):
            pack.keep(keep)

    peak = _peak_memory_mb(device)
    for trial_index, (track, outcome) in enumerate(zip(tracks, outcomes)):
        if outcome.failure is None:
            outcome.result = _result(track, val_labels, config, peak, device, setup_seconds)
            outcome.state = track.best_state
    return outcomes


@torch.no_grad()
def _predict(template: nn.Module, pack: _Pack, dev: DeviceData, batch_size: int) -> tuple[np.ndarray, list[float]]:
    """Every live trial's val probabilities (K, n) and mean BCE losses, one shared batch at a time."""
    template.eval()
    anchors, labels = dev.anchors["val"], dev.labels["val"]
    device = anchors.device

    def logits_of(params, buffers, x):
        return functional_call(template, (params, buffers), (x,))

    batched = vmap(logits_of, in_dims=(0, 0, None))
    probs, loss_sum = [], torch.zeros(len(pack.rows), device=device)
    for start in range(0, len(anchors), batch_size):
        x, y = dev.batch(anchors[start : start + batch_size]), labels[start : start + batch_size]
        with _autocast(device):
            logits = batched(pack.params, pack.buffers, x).float()  # (K, B)
        loss_sum += F.binary_cross_entropy_with_logits(logits, y.expand_as(logits), reduction="none").sum(dim=1)
        probs.append(torch.sigmoid(logits).cpu())
    return torch.cat(probs, dim=1).numpy(), (loss_sum / len(anchors)).tolist()


def _result(track: _TrialTrack, val_labels: np.ndarray, config: TrainConfig, peak: float, device,
            setup_seconds: float) -> TrainResult:
    return TrainResult(
        val_auc=track.best_auc,
        val_loss=track.best_loss,
        best_epoch=track.best_epoch,
        epochs=track.epochs,
        **val_diagnostics(track.best_probs, val_labels),
        train_seconds=track.seconds,
        samples_per_s=track.samples / track.seconds if track.seconds > 0 else 0.0,
        setup_seconds=setup_seconds,
        eval_seconds=track.eval_seconds,
        peak_memory_mb=peak,
        batch_size=config.batch_size,
        device=device_name(device),
    )
