"""Training throughput of our trainer's step against a plain reference, in the same run.

    python bench/train_throughput.py --budget 20M --steps 50
    python bench/train_throughput.py --budget smoke --steps 10 --device cpu

Ours: tasks.training.trainer's own step (`build_training` + `train_step`): data resident on the device,
windows built by indexing, bf16 autocast + fused AdamW + TF32 on CUDA, optional torch.compile
(CUDA only, as in the trainer), grad clipping and the per-step divergence check included.
Reference: fp32 `nn.TransformerEncoder` (pre-LN, GELU) with the same d_model, n_layers,
n_heads, d_ff, input projection, positions, pooling and head (so the same parameter count),
default AdamW, TF32 off (PyTorch's default), a `DataLoader` over materialised windows with a
host-to-device copy per batch, and `loss.item()` per step.

Both run `--warmup` untimed steps, then `--steps` timed steps, the device synchronised before and
after. Reported: samples/s, model TFLOP/s (FLOPs per window from bench/_common.flops_per_sample:
window x (6N + 12 L d T), N = the exact parameter count) and, on CUDA, MFU against the device's
dense bf16 peak (both paths against the same peak, so the reference's fp32 MFU is what fp32
costs), and the speed-up ours / reference.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from _common import Timer, describe_device, flops_per_sample, header, load_data, peak_tflops, pick_architectures, synchronize
from models.arch_grid import BUDGETS, Architecture, get_architectures_for_budget
from models.transformer import sinusoidal_positions
from schemas.config import TrainConfig
from tasks.training.batch_size import is_oom
from tasks.data.dataset import PreparedData
from tasks.training.trainer import DeviceData, Hyperparams, build_training, resolve_batch_size, resolve_device, train_step
from tasks.data.features import NUM_FEATURES

HPARAMS = Hyperparams(learning_rate=1e-4, dropout=0.1, weight_decay=1e-4)


@dataclass
class Measurement:
    path: str
    batch_size: int
    steps: int
    seconds: float
    samples_per_s: float
    tflops: float
    mfu: float | None
    peak_memory_mb: float | None
    note: str = ""


class ReferenceClassifier(nn.Module):
    """The plain implementation: nn.TransformerEncoder with our model's shape, in fp32."""

    def __init__(self, arch: Architecture, dropout: float, window: int):
        super().__init__()
        self.input_proj = nn.Linear(NUM_FEATURES, arch.d_model)
        self.register_buffer("positions", sinusoidal_positions(window, arch.d_model), persistent=False)
        layer = nn.TransformerEncoderLayer(
            arch.d_model, arch.n_heads, arch.d_ff, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, arch.n_layers, enable_nested_tensor=False)
        self.ln_f = nn.LayerNorm(arch.d_model)
        self.head = nn.Linear(arch.d_model, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.input_proj(x) + self.positions)  # (B, T, d_model)
        return self.head(self.ln_f(h).mean(dim=1)).squeeze(-1)  # (B,)


def _result(path, batch_size, steps, seconds, flops, peak, device, note="") -> Measurement:
    samples_per_s = batch_size * steps / seconds
    tflops = samples_per_s * flops / 1e12
    memory = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return Measurement(path, batch_size, steps, seconds, samples_per_s, tflops, tflops / peak if peak else None, memory, note)


def measure_ours(arch, data: PreparedData, batch_size, args, device, flops, peak) -> Measurement:
    config = TrainConfig(
        batch_size=batch_size,
        device=str(device),
        compile=args.compile,
        activation_checkpointing=args.activation_checkpointing,
    )
    dev = DeviceData.from_prepared(data, device)
    resolved = resolve_batch_size(config, arch, HPARAMS, data.window, dev, device)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model, step_model, optimizer = build_training(arch, HPARAMS, config, data.window, device)
    model.train()
    anchors, labels = dev.anchors["train"], dev.labels["train"]
    order = torch.randperm(len(anchors), device=device)

    def run(steps: int, first: int) -> None:
        for s in range(first, first + steps):
            start = s * resolved % max(1, len(anchors) - resolved + 1)
            idx = order[start : start + resolved]
            train_step(step_model, optimizer, dev.batch(anchors[idx]), labels[idx], config.grad_clip, step=s)

    run(args.warmup, 0)
    with Timer(device) as timer:
        run(args.steps, args.warmup)
    notes = ["compiled" if device.type == "cuda" else "--compile ignored: the trainer compiles on CUDA only"] * args.compile
    notes += ["activation checkpointing (recompute not counted in MFU)"] * args.activation_checkpointing
    notes += [f"batch_size auto -> {resolved}"] * (batch_size == "auto")
    note = "; ".join(notes)
    result = _result("ours", resolved, args.steps, timer.seconds, flops, peak, device, note)
    del model, step_model, optimizer
    return result


def measure_reference(arch, data: PreparedData, batch_size, args, device, flops, peak) -> Measurement:
    """The reference at batch_size, halved on OOM (fp32 activations need twice bf16's memory)."""
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        while True:
            try:
                return _reference_at(arch, data, batch_size, args, device, flops, peak)
            except Exception as exc:  # noqa: BLE001 - only OOM is retried
                if not is_oom(exc) or batch_size == 1:
                    raise
            batch_size //= 2
            torch.cuda.empty_cache()
            print(f"reference: out of memory, retrying at batch_size={batch_size}")
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def _reference_at(arch, data, batch_size, args, device, flops, peak) -> Measurement:
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = ReferenceClassifier(arch, HPARAMS.dropout, data.window).to(device).train()
    assert sum(p.numel() for p in model.parameters()) == arch.params, "the reference must have our parameter count"
    optimizer = torch.optim.AdamW(model.parameters(), lr=HPARAMS.learning_rate, weight_decay=HPARAMS.weight_decay)
    windows = torch.from_numpy(data.windows("train"))  # (n, window, F), materialised on the host
    labels = torch.from_numpy(data.labels["train"])
    loader = DataLoader(TensorDataset(windows, labels), batch_size=batch_size, shuffle=True, drop_last=True)

    def batches():
        while True:
            yield from loader

    stream, running = batches(), 0.0

    def run(steps: int) -> None:
        nonlocal running
        for _ in range(steps):
            x, y = next(stream)
            x, y = x.to(device), y.to(device)
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            running += loss.item()

    run(args.warmup)
    with Timer(device) as timer:
        run(args.steps)
    return _result("reference", batch_size, args.steps, timer.seconds, flops, peak, device)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", choices=BUDGETS, default="smoke")
    parser.add_argument("--arch-idx", default="0",
                        help="index into the budget's current grid, 'deepest', 'widest' (its forced extremes), or 'all'")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per path")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, allocator, autotune)")
    parser.add_argument("--batch-size", default="256", help="an integer or 'auto' (largest that fits, ours only)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--compile", action="store_true", help="torch.compile our model (CUDA, as the trainer)")
    parser.add_argument("--activation-checkpointing", action="store_true", help="recompute blocks in backward (2B)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the device's bf16 peak for MFU")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--skip-reference", action="store_true", help="ours only (e.g. 2B, where fp32 is pointless)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return parser.parse_args(argv)


def measure_architecture(arch, data, batch_size, args, device, peak) -> dict:
    """Both paths for one architecture, printed as a table; the figures as a dict."""
    flops = flops_per_sample(arch, data.window)
    print(
        f"\n{args.budget} arch_idx={arch.arch_idx}: d_model={arch.d_model} n_layers={arch.n_layers} "
        f"n_heads={arch.n_heads} d_ff={arch.d_ff} params={arch.params:,}; window={data.window}; "
        f"{flops / 1e9:.3f} GFLOP per window (train); peak {'%.0f TFLOP/s bf16' % peak if peak else 'n/a (no MFU)'}"
    )
    results = [measure_ours(arch, data, batch_size, args, device, flops, peak)]
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.empty_cache()
    if not args.skip_reference:
        results.append(measure_reference(arch, data, results[0].batch_size, args, device, flops, peak))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"{'path':<10} {'batch':>6} {'steps':>6} {'seconds':>9} {'samples/s':>11} {'TFLOP/s':>9} {'MFU':>7} {'peak MiB':>9}  note")
    for r in results:
        mfu = f"{100 * r.mfu:.1f}%" if r.mfu is not None else "n/a"
        memory = f"{r.peak_memory_mb:.0f}" if r.peak_memory_mb is not None else "n/a"
        print(
            f"{r.path:<10} {r.batch_size:>6} {r.steps:>6} {r.seconds:>9.3f} {r.samples_per_s:>11.1f} "
            f"{r.tflops:>9.4f} {mfu:>7} {memory:>9}  {r.note}"
        )
    speedup = results[0].samples_per_s / results[1].samples_per_s if len(results) > 1 else None
    if speedup is not None:
        print(f"speed-up ours / reference: {speedup:.2f}x (samples/s)")
    return {"arch": arch.as_dict(), "results": [asdict(r) for r in results], "speedup": speedup}


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
    device = resolve_device(args.device)
    grid = get_architectures_for_budget(args.budget)
    archs = pick_architectures(grid, args.arch_idx)
    data = load_data()
    peak = peak_tflops(device, args.peak_tflops)
    print(header(device))
    figures = [measure_architecture(arch, data, batch_size, args, device, peak) for arch in archs]
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "device": describe_device(device), "figures": figures}, handle, indent=2)


if __name__ == "__main__":
    main()
