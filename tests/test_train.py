"""The trainer: learnability on the bundled data, early stopping, divergence, reproducibility."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import tasks.training.trainer
from models.arch_grid import find_arch_idx, get_architectures_for_budget
from schemas.config import DataConfig, TrainConfig
from tasks.data.dataset import PreparedData, load_panel, prepare_dataset
from tasks.training.trainer import (
    DeviceData,
    Hyperparams,
    TrainResult,
    TrialDiverged,
    TrialOOM,
    build_model,
    evaluate_state,
    resolve_device,
    train_model,
)

WINDOW = 60
HPARAMS = Hyperparams(learning_rate=1e-3, dropout=0.1, weight_decay=0.0)


def smoke_arch(d_model: int, n_layers: int, n_heads: int):
    idx = find_arch_idx("smoke", d_model, n_layers, n_heads, 2 * d_model)
    return get_architectures_for_budget("smoke")[idx]


@pytest.fixture(scope="module")
def bundled_h1() -> PreparedData:
    panel, source = load_panel(DataConfig(), 1)
    return prepare_dataset(panel, DataConfig(), 1, source)


def short_config(**overrides) -> TrainConfig:
    """A few tiny CPU epochs: enough to exercise the loop, not to learn."""
    settings = dict(max_epochs=2, max_batches_per_epoch=4, batch_size=64, max_warmup_steps=2, device="cpu", seed=0)
    return TrainConfig(**{**settings, **overrides})


# --- learnability ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(bundled_h1):
    """The smoke budget's min_d_model architecture, three full epochs on the bundled data (CPU)."""
    arch = smoke_arch(d_model=16, n_layers=2, n_heads=2)
    config = TrainConfig(max_epochs=3, batch_size=128, max_warmup_steps=20, patience=3, device="cpu", seed=0)
    torch.manual_seed(config.seed)
    untrained = build_model(arch, HPARAMS.dropout, config, WINDOW).state_dict()  # the trainer's initial weights
    epochs = []
    result, state = train_model(bundled_h1, arch, HPARAMS, config, WINDOW, on_epoch=epochs.append)
    return arch, config, untrained, result, state, epochs


def test_a_smoke_model_learns_the_bundled_data(bundled_h1, trained):
    """A real learnability check: val AUC well above chance and above the untrained model's."""
    arch, config, untrained, result, state, _ = trained
    untrained_auc = evaluate_state(bundled_h1, arch, untrained, config, split="val")
    assert result.val_auc > 0.6, f"val AUC {result.val_auc:.3f} after {result.epochs} epochs"
    assert result.val_auc > untrained_auc + 0.05, f"untrained {untrained_auc:.3f}, trained {result.val_auc:.3f}"
    # the returned weights are the best epoch's: evaluating them again gives the reported AUC
    assert evaluate_state(bundled_h1, arch, state, config, split="val") == pytest.approx(result.val_auc, abs=1e-9)


def test_the_result_reports_what_the_run_did(trained):
    arch, config, _, result, _, epochs = trained
    assert isinstance(result, TrainResult)
    assert result.epochs == 3 and 1 <= result.best_epoch <= 3
    assert 0 < result.pred_min <= result.pred_max < 1
    assert result.pred_range == pytest.approx(result.pred_max - result.pred_min)
    assert 0 <= result.recall <= 1
    assert result.train_seconds > 0 and result.samples_per_s > 0 and result.peak_memory_mb > 0
    assert result.setup_seconds > 0 and result.eval_seconds > 0
    assert result.batch_size == 128 and result.device == "cpu"
    assert math.isfinite(result.val_loss)
    assert set(result.as_dict()) >= {"val_auc", "best_epoch", "pred_min", "pred_max", "pred_range", "recall"}
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert all({"train/loss", "val/loss", "val/auc"} <= set(e) for e in epochs)
    assert max(e["val/auc"] for e in epochs) == result.val_auc


def test_the_test_split_is_evaluated_from_saved_weights(bundled_h1, trained):
    arch, config, _, _, state, _ = trained
    test_auc = evaluate_state(bundled_h1, arch, state, config, split="test")
    assert 0.5 < test_auc < 1


# --- early stopping --------------------------------------------------------------------------


def test_early_stopping_keeps_the_best_epoch_after_patience_runs_out(bundled_h1, monkeypatch):
    """Val AUC 0.60, 0.70, 0.65, 0.69, ...: with patience 2 the run stops after epoch 4, keeps epoch 2."""
    scripted = iter([0.60, 0.70, 0.65, 0.69, 0.99, 0.99])
    real_aucs = []
    real_auc = tasks.training.trainer.auc

    def scripted_auc(labels, probs):
        real_aucs.append(real_auc(labels, probs))
        return next(scripted)

    arch = smoke_arch(16, 1, 1)
    config = short_config(max_epochs=10, patience=2, max_batches_per_epoch=2)
    with monkeypatch.context() as patch:
        patch.setattr(tasks.training.trainer, "auc", scripted_auc)
        result, state = train_model(bundled_h1, arch, HPARAMS, config, WINDOW)
    assert (result.epochs, result.best_epoch, result.val_auc) == (4, 2, 0.70)
    assert len(real_aucs) == 4
    assert evaluate_state(bundled_h1, arch, state, config, split="val") == pytest.approx(real_aucs[1], abs=1e-9)


# --- divergence ------------------------------------------------------------------------------


def test_a_huge_learning_rate_diverges_with_a_clear_error(bundled_h1):
    features = bundled_h1.features.copy()
    with pytest.raises(TrialDiverged, match=r"diverged: loss is nan at epoch 1") as raised:
        train_model(bundled_h1, smoke_arch(16, 2, 2), Hyperparams(1e6, 0.1, 0.0), short_config(), WINDOW)
    assert raised.value.kind == "diverged"
    np.testing.assert_array_equal(bundled_h1.features, features)  # a diverged trial leaves the data alone


class NanAfter(nn.Module):
    """Wraps a model: its training-mode logits turn NaN after `steps` training forward passes."""

    def __init__(self, model: nn.Module, steps: int):
        super().__init__()
        self.model, self.steps = model, steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        if self.training:
            self.steps -= 1
            if self.steps < 0:
                return logits * float("nan")
        return logits


def test_a_nan_loss_in_a_later_epoch_names_that_epoch(bundled_h1, monkeypatch):
    build = tasks.training.trainer.build_model
    monkeypatch.setattr(tasks.training.trainer, "build_model", lambda *args: NanAfter(build(*args), steps=3))
    config = short_config(max_epochs=3, max_batches_per_epoch=3)
    with pytest.raises(TrialDiverged, match=r"loss is nan at epoch 2, step 3"):
        train_model(bundled_h1, smoke_arch(16, 1, 1), HPARAMS, config, WINDOW)


@pytest.mark.parametrize("failure", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
])
def test_an_allocation_failure_in_a_step_is_an_oom_trial_with_its_reason(bundled_h1, monkeypatch, failure):
    def step_that_runs_out(*args, **kwargs):
        raise failure

    monkeypatch.setattr(tasks.training.trainer, "train_step", step_that_runs_out)
    with pytest.raises(TrialOOM, match=r"out of memory on .* d_model=16, n_layers=1: .*(2.00 GiB|ALLOC_FAILED)"):
        train_model(bundled_h1, smoke_arch(16, 1, 1), HPARAMS, short_config(), WINDOW)


def test_an_error_that_is_not_an_allocation_failure_is_not_called_oom(bundled_h1, monkeypatch):
    def broken_step(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(tasks.training.trainer, "train_step", broken_step)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied") as raised:
        train_model(bundled_h1, smoke_arch(16, 1, 1), HPARAMS, short_config(), WINDOW)
    assert not isinstance(raised.value, TrialOOM)


# --- reproducibility and plumbing ------------------------------------------------------------


def test_cpu_training_is_reproducible_for_a_seed(bundled_h1):
    arch = smoke_arch(16, 2, 2)
    runs = [train_model(bundled_h1, arch, HPARAMS, short_config(seed=seed), WINDOW) for seed in (7, 7, 8)]
    (first, first_state), (again, again_state), (_, other_state) = runs
    fields = ("val_auc", "val_loss", "best_epoch", "epochs", "pred_min", "pred_max", "recall")
    assert {f: getattr(first, f) for f in fields} == {f: getattr(again, f) for f in fields}
    assert first_state.keys() == again_state.keys()
    assert all(torch.equal(first_state[k], again_state[k]) for k in first_state)
    assert not all(torch.equal(first_state[k], other_state[k]) for k in first_state), "the seed matters"


def test_device_batches_are_the_windows_by_indexing(bundled_h1):
    device_data = DeviceData.from_prepared(bundled_h1, torch.device("cpu"))
    anchors = bundled_h1.anchors["val"][[0, 17, -1]]
    batch = device_data.batch(torch.as_tensor(anchors))
    assert batch.shape == (3, WINDOW, bundled_h1.features.shape[1])
    np.testing.assert_array_equal(batch.numpy(), bundled_h1.windows("val")[[0, 17, -1]])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_asking_for_cuda_without_cuda_says_what_to_do():
    with pytest.raises(RuntimeError, match="CUDA is not available; use device='auto' or 'cpu'"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.gpu
def test_a_smoke_model_trains_on_cuda(bundled_h1):
    result, state = train_model(
        bundled_h1, smoke_arch(32, 2, 4), HPARAMS, short_config(device="cuda", max_batches_per_epoch=10), WINDOW
    )
    assert result.device == torch.cuda.get_device_name(0)
    assert 0 <= result.val_auc <= 1 and result.peak_memory_mb > 0
    assert all(t.device.type == "cpu" for t in state.values()), "best weights come back on the CPU"


def test_auc_matches_scikit_learn_with_ties_and_by_hand():
    from sklearn.metrics import roc_auc_score

    from tasks.training.trainer import auc

    # by hand: positives 0.8, 0.4; negatives 0.4, 0.1 -> pairs (0.8>0.4, 0.8>0.1, 0.4=0.4 -> 1/2, 0.4>0.1) = 3.5/4
    assert auc(np.array([1, 1, 0, 0]), np.array([0.8, 0.4, 0.4, 0.1])) == 0.875
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 2000)
    scores = np.round(rng.normal(size=2000) + labels * 0.5, 1)  # rounded: many ties
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    with pytest.raises(ValueError, match="both classes"):
        auc(np.zeros(3), np.array([0.1, 0.2, 0.3]))


def test_a_trial_process_imports_neither_pandas_nor_scikit_learn():
    """Every trial process pays its imports (~1.5 s for scikit-learn, ~0.7 s for pandas)."""
    import subprocess
    import sys

    code = (
        "import sys, tasks.study.trial_worker, tasks.training.trainer, tasks.data.prepared; "
        "print(sorted(m for m in ('pandas', 'sklearn', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent)
    assert out.stdout.strip() == "[]"
