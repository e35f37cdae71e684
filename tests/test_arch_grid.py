"""The architecture grid and the model it counts: exact counts, bands, versions, refusals, extremes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.arch_grid import (
    BUDGET_BANDS,
    BUDGETS,
    CURRENT_GRID_VERSION,
    GRID_VERSIONS,
    LEGACY_GRID_VERSION,
    REAL_BUDGETS,
    ArchitectureOutOfBudget,
    count_parameters,
    find_arch_idx,
    forced_extremes,
    get_architectures_for_budget,
    smoke_budget,
    validate_architecture,
)
from models.transformer import ModelConfig, TransformerClassifier, num_parameters

GRIDS = [(version, budget) for version in sorted(GRID_VERSIONS) for budget in BUDGETS]
GRID_IDS = [f"v{version}-{budget}" for version, budget in GRIDS]

# (d_model, n_layers, n_heads, d_ff) -> sum(p.numel()) of the instantiated model, shared by the
# versions: version 1's entries are a prefix of version 2's, so each model is built once.
_instantiated_counts: dict[tuple[int, int, int, int], int] = {}


def shape(arch) -> tuple[int, int, int, int]:
    return arch.d_model, arch.n_layers, arch.n_heads, arch.d_ff


def build(d_model: int, n_layers: int, n_heads: int, d_ff: int, num_features: int = 25) -> TransformerClassifier:
    config = ModelConfig(num_features=num_features, d_model=d_model, n_layers=n_layers, n_heads=n_heads, d_ff=d_ff)
    return TransformerClassifier(config)


@pytest.fixture
def skip_weight_init(monkeypatch):
    """Build models without initialising their weights: init sets values, never shapes.

    On the meta device each init call goes through the reference decompositions (~4 ms), which
    is most of the cost of instantiating the ~220 grid models; skipping it keeps this test at
    seconds instead of a minute.
    """
    monkeypatch.setattr(nn.Linear, "reset_parameters", lambda self: None)
    monkeypatch.setattr(nn.LayerNorm, "reset_parameters", lambda self: None)
    monkeypatch.setattr(TransformerClassifier, "_init_weights", staticmethod(lambda module: None))


@pytest.mark.parametrize(("grid_version", "budget"), GRIDS, ids=GRID_IDS)
def test_every_entry_counts_exactly_what_the_model_instantiates(grid_version, budget, skip_weight_init):
    for arch in get_architectures_for_budget(budget, grid_version=grid_version):
        if shape(arch) not in _instantiated_counts:
            with torch.device("meta"):
                model = build(*shape(arch))
            _instantiated_counts[shape(arch)] = num_parameters(model)
        assert arch.params == _instantiated_counts[shape(arch)], arch
        assert arch.params == count_parameters(arch.d_model, arch.n_layers, arch.d_ff)


def test_count_matches_an_initialised_cpu_model_for_other_feature_counts():
    for num_features in (1, 7, 25, 64):
        for d_model, n_layers, n_heads, d_ff in [(16, 1, 2, 32), (32, 3, 4, 128), (48, 2, 1, 96)]:
            model = build(d_model, n_layers, n_heads, d_ff, num_features)
            assert num_parameters(model) == count_parameters(d_model, n_layers, d_ff, num_features)


def test_count_of_a_small_model_worked_by_hand():
    # 25 features, d_model 16, 1 layer, d_ff 32 (weights + biases):
    # input 25*16+16 = 416; block: ln1 32, qkv 16*48+48 = 816, out 16*16+16 = 272, ln2 32,
    # fc1 16*32+32 = 544, fc2 32*16+16 = 528 (2224); final ln 32; head 16+1 = 17.
    assert count_parameters(16, 1, 32) == 416 + 2224 + 32 + 17 == 2689


def test_the_count_does_not_depend_on_the_window():
    arch = get_architectures_for_budget("smoke")[0]
    configs = [ModelConfig(25, arch.d_model, arch.n_layers, arch.n_heads, arch.d_ff, max_len=n) for n in (8, 60, 1024)]
    counts = {num_parameters(TransformerClassifier(config)) for config in configs}
    assert counts == {arch.params}


@pytest.mark.parametrize(("grid_version", "budget"), GRIDS, ids=GRID_IDS)
def test_grid_invariants(grid_version, budget):
    archs = get_architectures_for_budget(budget, grid_version=grid_version)
    lo, hi = BUDGET_BANDS[budget]
    assert archs, "every budget has architectures"
    assert [a.arch_idx for a in archs] == list(range(len(archs)))
    assert len({shape(a) for a in archs}) == len(archs), "no architecture twice"
    for arch in archs:
        assert lo <= arch.params <= hi, arch
        assert arch.d_model % arch.n_heads == 0, arch
        assert arch.d_ff == arch.d_model * arch.d_ff_ratio, arch
        assert find_arch_idx(budget, *shape(arch), grid_version=grid_version) == arch.arch_idx


@pytest.mark.parametrize("budget", BUDGETS)
def test_grid_is_deterministic(budget):
    for version in GRID_VERSIONS:
        first = get_architectures_for_budget(budget, grid_version=version)
        first.append(first[0])  # a caller mutating its copy must not change the grid
        again = get_architectures_for_budget(budget, grid_version=version)
        assert again == first[:-1]
        assert [a.as_dict() for a in again] == [a.as_dict() for a in first[:-1]]


@pytest.mark.parametrize("budget", BUDGETS)
def test_each_version_starts_with_the_previous_one_unchanged(budget):
    """The prefix property: an arch_idx of an older version names the same architecture later."""
    versions = sorted(GRID_VERSIONS)
    for older, newer in zip(versions, versions[1:]):
        old = get_architectures_for_budget(budget, grid_version=older)
        new = get_architectures_for_budget(budget, grid_version=newer)
        assert new[: len(old)] == old


def test_versions_are_explicit():
    assert CURRENT_GRID_VERSION == max(GRID_VERSIONS) == 2
    assert LEGACY_GRID_VERSION == 1
    assert get_architectures_for_budget("2M") == get_architectures_for_budget("2M", grid_version=CURRENT_GRID_VERSION)
    with pytest.raises(ValueError, match="unknown grid_version 99"):
        get_architectures_for_budget("2M", grid_version=99)
    with pytest.raises(ValueError, match="unknown budget '3M'"):
        get_architectures_for_budget("3M")


# (budget, d_model, n_layers, n_heads, d_ff): the supplemental plan's extensions.
EXTENSIONS = [
    ("2M", 64, 64, 2, 128),
    ("2M", 64, 64, 4, 128),
    ("2M", 64, 64, 8, 128),
    ("20M", 128, 160, 4, 256),
    ("20M", 128, 160, 8, 256),
    ("20M", 128, 180, 4, 256),
    ("20M", 128, 180, 8, 256),
]


@pytest.mark.parametrize(("budget", "d_model", "n_layers", "n_heads", "d_ff"), EXTENSIONS)
def test_current_grid_has_the_extension_entries_and_version_1_does_not(budget, d_model, n_layers, n_heads, d_ff):
    current = find_arch_idx(budget, d_model, n_layers, n_heads, d_ff)
    assert current is not None
    arch = get_architectures_for_budget(budget)[current]
    assert arch.d_ff_ratio == 2
    legacy_count = len(get_architectures_for_budget(budget, grid_version=1))
    assert current >= legacy_count, "new entries come after the legacy list"
    assert find_arch_idx(budget, d_model, n_layers, n_heads, d_ff, grid_version=1) is None


def test_an_out_of_band_request_is_refused_with_its_exact_count_and_the_band():
    # The user's plan expected about 25M; the exact count is over 31M.
    assert count_parameters(128, 160, 512) == 31_727_233
    with pytest.raises(ArchitectureOutOfBudget) as refused:
        validate_architecture("20M", d_model=128, n_layers=160, n_heads=8, d_ff=512)
    message = str(refused.value)
    assert "31,727,233" in message
    assert "[15,000,000, 25,000,000]" in message
    assert "20M" in message


def test_a_too_small_request_is_refused_and_an_in_band_one_returns_its_count():
    with pytest.raises(ArchitectureOutOfBudget, match=r"1,500,000, 2,500,000"):
        validate_architecture("2M", d_model=32, n_layers=2, n_heads=4, d_ff=64)
    assert validate_architecture("20M", 128, 160, 8, 256) == 21_200_513
    with pytest.raises(ValueError, match="not divisible"):
        validate_architecture("2M", d_model=64, n_layers=64, n_heads=3, d_ff=128)


@pytest.mark.parametrize(("grid_version", "budget"), GRIDS, ids=GRID_IDS)
def test_forced_extremes_take_each_dimensions_min_and_max(grid_version, budget):
    archs = get_architectures_for_budget(budget, grid_version=grid_version)
    chosen = forced_extremes(archs)
    assert [kind for kind, _ in chosen] == [
        "min_d_model", "max_d_model", "min_n_layers", "max_n_layers", "min_n_heads", "max_n_heads",
    ]
    for kind, arch in chosen:
        side, dim = kind.split("_", 1)
        values = [getattr(a, dim) for a in archs]
        assert getattr(arch, dim) == (min(values) if side == "min" else max(values)), (kind, arch)
        assert arch in archs


def test_forced_extremes_of_smoke_follow_the_documented_rule():
    """Among the entries at a dimension's extreme, the one most central (in rank) in the others.

    Smoke's grid: d_model {16, 32, 48}, n_layers {1, 2, 3}, n_heads {1, 2, 4} (head_dim >= 8
    drops d_model=16 with 4 heads), d_ff_ratio {2}. The centre is 32 / 2 layers / 2 heads.
    """
    chosen = {kind: shape(arch) for kind, arch in forced_extremes(get_architectures_for_budget("smoke"))}
    assert chosen == {
        "min_d_model": (16, 2, 2, 32),
        "max_d_model": (48, 2, 2, 96),
        "min_n_layers": (32, 1, 2, 64),
        "max_n_layers": (32, 3, 2, 64),
        "min_n_heads": (32, 2, 1, 64),
        "max_n_heads": (32, 2, 4, 64),
    }


def test_smoke_models_forward_to_one_logit_per_window():
    for arch in get_architectures_for_budget("smoke"):
        model = build(*shape(arch)).eval()
        logits = model(torch.randn(3, 60, 25))
        assert logits.shape == (3,)
        assert torch.isfinite(logits).all()


def test_model_output_depends_on_the_order_of_days():
    """Positions are encoded: the same days in reverse order give a different logit."""
    torch.manual_seed(0)
    model = build(32, 2, 4, 64).eval()
    x = torch.randn(2, 20, 25)
    assert not torch.allclose(model(x), model(x.flip(1)))


def test_model_refuses_windows_longer_than_max_len():
    model = TransformerClassifier(ModelConfig(25, 16, 1, 2, 32, max_len=10))
    with pytest.raises(ValueError, match="exceeds max_len=10"):
        model(torch.randn(1, 11, 25))


# --- the smoke ladder ---------------------------------------------------------------------------


def test_the_smoke_ladder_gives_each_real_budget_its_own_larger_band():
    """smoke-2M < smoke-20M < smoke-200M < smoke-2B: disjoint bands, each grid's median size
    several times the one before, and enough entries for a smoke study's 8 trials."""
    ladder = [smoke_budget(b) for b in REAL_BUDGETS]
    assert ladder == ["smoke-2M", "smoke-20M", "smoke-200M", "smoke-2B"]
    medians = []
    for smaller, larger in zip(ladder, ladder[1:]):
        assert BUDGET_BANDS[smaller][1] < BUDGET_BANDS[larger][0], (smaller, larger)
    for budget in ladder:
        counts = sorted(a.params for a in get_architectures_for_budget(budget))
        assert len(counts) >= 8, budget
        medians.append(counts[len(counts) // 2])
    ratios = [b / a for a, b in zip(medians, medians[1:])]
    assert all(r >= 2.5 for r in ratios), (medians, ratios)
    # each stand-in's grid spans more than one width and depth, so its extremes differ
    for budget in ladder[1:]:
        archs = get_architectures_for_budget(budget)
        assert len({a.d_model for a in archs}) >= 3 and len({a.n_layers for a in archs}) >= 3, budget


def test_smoke_budget_names_the_stand_in_and_refuses_unknown_budgets():
    assert smoke_budget("2B") == "smoke-2B"
    assert smoke_budget("smoke-20M") == "smoke-20M" and smoke_budget("smoke") == "smoke"
    with pytest.raises(ValueError, match="unknown budget '3M'"):
        smoke_budget("3M")


# --- initialisation and readout -----------------------------------------------------------------


def _residual_update_scale(n_layers: int) -> float:
    """std of what the blocks add to the residual stream at init, relative to the stream's input."""
    torch.manual_seed(0)
    model = build(64, n_layers, 4, 256).eval()
    seen = {}
    model.ln_f.register_forward_hook(lambda module, inputs, output: seen.update(h=inputs[0]))
    x = torch.randn(8, 60, 25)
    with torch.no_grad():
        model(x)
        h0 = model.input_proj(x) + model.positions[:60]  # (B, T, d_model): the stream before block 1
    return ((seen["h"] - h0).std() / h0.std()).item()


def test_the_initial_output_scale_does_not_grow_with_depth():
    """Residual projections start at std 0.02/sqrt(2 n_layers): 96 blocks add no more to the
    stream than 2 do. (With a fixed 0.02 the 96-layer update is ~6.6x the 2-layer one.)"""
    shallow, deep = _residual_update_scale(2), _residual_update_scale(96)
    assert deep < 1.5 * shallow, (shallow, deep)


def test_the_residual_projections_get_the_scaled_std_and_the_rest_0_02():
    torch.manual_seed(0)
    model = build(64, 32, 4, 256)
    expected = 0.02 / (2 * 32) ** 0.5
    for block in model.blocks:
        assert block.attn.out.weight.std().item() == pytest.approx(expected, rel=0.1)
        assert block.mlp.fc2.weight.std().item() == pytest.approx(expected, rel=0.1)
        assert block.mlp.fc1.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_the_default_readout_is_the_last_days_hidden_state():
    """The default readout is the last day's hidden state: changing the last day changes the
    logit, and over a window of one day it equals the mean readout."""
    torch.manual_seed(0)
    config = ModelConfig(num_features=25, d_model=32, n_layers=2, n_heads=4, d_ff=64, dropout=0.0)
    assert config.readout == "last"
    last = TransformerClassifier(config).eval()
    mean = TransformerClassifier(ModelConfig(**{**config.__dict__, "readout": "mean"})).eval()
    mean.load_state_dict(last.state_dict())
    x = torch.randn(4, 20, 25)
    changed = x.clone()
    changed[:, -1] += 1.0
    with torch.no_grad():
        assert not torch.allclose(last(x), last(changed))
        assert not torch.allclose(last(x), mean(x))
        assert torch.allclose(last(x[:, -1:]), mean(x[:, -1:]))
