"""Packed trials equal their unpacked twins: exactly (up to float rounding) without dropout, in
distribution with it; a failure or an early stop in one trial leaves the others untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from models.arch_grid import get_architectures_for_budget
from models.transformer import ModelConfig, SelfAttention, TransformerClassifier
from schemas.config import TrainConfig
from tasks.data.dataset import PreparedData
from bench.packed import PackedTrial, TrialAttention, TrialDropout, make_packable, train_packed
from tasks.training.trainer import Hyperparams, TrialDiverged, evaluate_state, train_model

WINDOW = 16
ARCH = get_architectures_for_budget("smoke")[3]  # d_model 16, 2 layers, 2 heads: small, not trivial
CONFIG = TrainConfig(max_epochs=4, max_batches_per_epoch=3, batch_size=32, max_warmup_steps=2, patience=1, device="cpu")


def tiny_data(rows: int = 400, seed: int = 0) -> PreparedData:
    """Random features, a learnable-ish label, both classes in every split."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((rows, 25)).astype("float32")
    anchors = np.arange(WINDOW - 1, rows, dtype="int64")
    cuts = {"train": anchors[:300], "val": anchors[300:340], "test": anchors[340:]}
    signal = features[:, 0] + 0.2 * rng.standard_normal(rows)
    labels = {s: (signal[a] > 0.3).astype("float32") for s, a in cuts.items()}
    return PreparedData(
        features=features,
        anchors=cuts,
        labels=labels,
        window=WINDOW,
        horizon=1,
        split_dates={},
        boundaries={},
        tickers=("X",),
    )


@pytest.fixture(scope="module")
def data() -> PreparedData:
    return tiny_data()


def unpacked(data: PreparedData, trial: PackedTrial, config: TrainConfig = CONFIG):
    return train_model(data, ARCH, trial.hparams, config.model_copy(update={"seed": trial.seed}), WINDOW)


def assert_same_trial(twin, outcome) -> None:
    (expected, expected_state), result = twin, outcome.result
    assert outcome.failure is None
    assert (result.best_epoch, result.epochs, result.batch_size) == (
        expected.best_epoch,
        expected.epochs,
        expected.batch_size,
    )
    assert result.val_auc == pytest.approx(expected.val_auc, abs=1e-6)
    assert result.val_loss == pytest.approx(expected.val_loss, rel=1e-5)
    assert result.pred_range == pytest.approx(expected.pred_range, rel=1e-4, abs=1e-6)
    assert set(outcome.state) == set(expected_state)
    for name, value in expected_state.items():
        packed = outcome.state[name]
        if name.endswith("attn.qkv.bias"):
            # The key third of the bias has no gradient (softmax ignores a shift every key shares),
            # so AdamW turns float rounding into lr-sized steps there: packed and unpacked round
            # differently per CPU (seen: 1.2e-5 apart on one machine, within 1e-5 on another) and
            # the outputs, compared above, do not depend on it. Query and value thirds must match.
            d = value.numel() // 3
            torch.testing.assert_close(packed[:d], value[:d], rtol=1e-4, atol=1e-5, msg=name + " (query)")
            torch.testing.assert_close(packed[2 * d:], value[2 * d:], rtol=1e-4, atol=1e-5, msg=name + " (value)")
            continue
        torch.testing.assert_close(packed, value, rtol=1e-4, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def packed_without_dropout(data):
    trials = [
        PackedTrial(Hyperparams(learning_rate=3e-3, dropout=0.0, weight_decay=0.0), seed=1),
        PackedTrial(Hyperparams(learning_rate=1e-2, dropout=0.0, weight_decay=1e-2), seed=2),
        PackedTrial(Hyperparams(learning_rate=1e-4, dropout=0.0, weight_decay=1e-3), seed=3),
    ]
    return trials, train_packed(data, ARCH, trials, CONFIG, WINDOW)


def test_packed_trials_equal_unpacked_twins_without_dropout(data, packed_without_dropout):
    trials, outcomes = packed_without_dropout
    for trial, outcome in zip(trials, outcomes):
        assert_same_trial(unpacked(data, trial), outcome)
    # the trials stop at different epochs, so the pack really shrank on the way
    assert len({o.result.epochs for o in outcomes}) > 1


def test_packed_state_is_a_plain_model_state(data, packed_without_dropout):
    trials, outcomes = packed_without_dropout
    value = evaluate_state(data, ARCH, outcomes[0].state, CONFIG, split="val")
    assert value == pytest.approx(outcomes[0].result.val_auc, abs=1e-6)


def test_dropout_stays_per_trial(data):
    """A trial without dropout packed beside one with dropout 0.5 still equals its twin."""
    still = PackedTrial(Hyperparams(3e-3, 0.0, 0.0), seed=1)
    noisy = PackedTrial(Hyperparams(3e-3, 0.5, 0.0), seed=1)  # same seed: same weights and batches
    config = CONFIG.model_copy(update={"max_epochs": 2, "patience": 5})
    outcomes = train_packed(data, ARCH, [still, noisy], config, WINDOW)
    assert_same_trial(unpacked(data, still, config), outcomes[0])
    difference = max((outcomes[1].state[k] - outcomes[0].state[k]).abs().max().item() for k in outcomes[0].state)
    assert difference > 1e-4, "dropout 0.5 must change the training"


def test_divergence_fails_only_that_trial(data):
    config = CONFIG.model_copy(update={"max_epochs": 2})
    healthy = PackedTrial(Hyperparams(3e-3, 0.0, 0.0), seed=1)
    exploding = PackedTrial(Hyperparams(1e12, 0.0, 0.0), seed=2)
    outcomes = train_packed(data, ARCH, [healthy, exploding], config, WINDOW)
    assert isinstance(outcomes[1].failure, TrialDiverged) and "epoch 1" in str(outcomes[1].failure)
    assert outcomes[1].result is None and outcomes[1].state is None
    assert_same_trial(unpacked(data, healthy, config), outcomes[0])


def test_trial_dropout_drops_each_trials_own_fraction():
    torch.manual_seed(0)
    p = torch.tensor([0.0, 0.1, 0.5, 0.7, 0.5])
    module = TrialDropout(0.0).train()
    x = torch.ones(200, 100)

    def apply(p_k, x):
        return functional_call(module, {"p": p_k}, (x,))

    out = vmap(apply, in_dims=(0, None), randomness="different")(p, x)  # (5, 200, 100)
    n = x.numel()
    for k, p_k in enumerate(p.tolist()):
        dropped = (out[k] == 0).float().mean().item()
        sigma = max((p_k * (1 - p_k) / n) ** 0.5, 1e-9)
        assert abs(dropped - p_k) < 5 * sigma + 1e-9, (k, dropped, p_k)
        assert out[k].mean().item() == pytest.approx(1.0, abs=5 * (p_k / (1 - p_k) / n) ** 0.5 + 1e-6)
    assert not torch.equal(out[2], out[4]), "equal p, different trials: different masks"
    assert torch.equal(module.eval()(x), x)


def test_attention_dropout_is_unbiased_per_trial():
    """E[attention output with dropout p] = output without dropout, for each trial's own p."""
    torch.manual_seed(0)
    template = TrialAttention(SelfAttention(d_model=8, n_heads=2, dropout=0.0), p=0.0)
    models = []
    for p in (0.0, 0.3, 0.6):
        model = TrialAttention(SelfAttention(d_model=8, n_heads=2, dropout=0.0), p=p)
        model.load_state_dict(template.state_dict())  # same weights: only p differs
        model.attn_dropout.p.fill_(p)
        model.resid_dropout.p.fill_(p)
        models.append(model)
    params, buffers = stack_module_state(models)
    template.train()
    x = torch.randn(1, 6, 8)
    draws = 4000

    def forward(params, buffers, x):
        return functional_call(template, (params, buffers), (x.expand(draws, 6, 8),)).mean(dim=0)

    mean = vmap(forward, in_dims=(0, 0, None), randomness="different")(params, buffers, x)  # (3, 6, 8)
    exact = template.eval()(x)[0]
    assert torch.allclose(mean[0], exact, atol=1e-6)  # p = 0: no noise at all
    for k in (1, 2):
        assert torch.allclose(mean[k], exact, atol=0.02), (k, (mean[k] - exact).abs().max())
        assert not torch.allclose(mean[k], exact, atol=1e-5)


def test_make_packable_keeps_parameters_and_replaces_every_dropout():
    model = TransformerClassifier(ModelConfig(num_features=25, d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.2))
    names = [n for n, _ in model.named_parameters()]
    make_packable(model, 0.2)
    assert [n for n, _ in model.named_parameters()] == names
    assert not any(isinstance(m, (nn.Dropout, SelfAttention)) for m in model.modules())
    assert {round(float(m.p), 6) for m in model.modules() if isinstance(m, TrialDropout)} == {0.2}
    assert set(model.state_dict()) == set(names)  # dropout probabilities are not state


def test_packed_refuses_auto_batch_size(data):
    with pytest.raises(ValueError, match="explicit batch_size"):
        train_packed(data, ARCH, [PackedTrial(Hyperparams(1e-3, 0.0, 0.0), 0)], CONFIG.model_copy(update={"batch_size": "auto"}), WINDOW)


@pytest.mark.gpu
def test_packed_trials_match_unpacked_on_cuda(data):
    """On CUDA (bf16 autocast) the twins agree loosely: bf16 rounding differs between the paths."""
    config = CONFIG.model_copy(update={"device": "cuda", "max_epochs": 2, "patience": 5})
    trials = [PackedTrial(Hyperparams(3e-3, 0.0, 0.0), seed=s) for s in (1, 2)]
    outcomes = train_packed(data, ARCH, trials, config, WINDOW)
    for trial, outcome in zip(trials, outcomes):
        expected, _ = unpacked(data, trial, config)
        assert outcome.result.val_loss == pytest.approx(expected.val_loss, rel=2e-2)
