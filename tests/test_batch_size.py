"""Largest-batch search: the pure logic against fakes, the probe's wiring on the CPU, and on CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tasks.training.trainer as trainer_module
from models.arch_grid import get_architectures_for_budget
from schemas.config import TrainConfig
from tasks.training.batch_size import BatchDoesNotFit, find_largest_batch, is_oom
from tasks.training.trainer import probe_largest_batch
from tasks.data.dataset import PreparedData
from tasks.training.trainer import DeviceData, Hyperparams, resolve_batch_size, train_model


class FakeDevice:
    """try_batch of a device where batches up to `limit` fit; counts the probes."""

    def __init__(self, limit: int):
        self.limit, self.calls = limit, []

    def __call__(self, batch_size: int) -> bool:
        self.calls.append(batch_size)
        return batch_size <= self.limit


@pytest.mark.parametrize("limit", [1, 5, 8, 9, 100, 333, 1000, 1023])
def test_finds_the_largest_fitting_multiple(limit):
    device = FakeDevice(limit)
    search = find_largest_batch(device, upper=4096, safety=1.0)
    expected = limit if limit < 8 else limit // 8 * 8  # bisection runs on multiples of 8 from 8 up
    assert search.largest_fitting == expected == search.batch_size
    assert not search.capped
    assert len(device.calls) == len(set(device.calls)), "a size is never probed twice"
    assert len(device.calls) <= 2 * 12 + 2, "logarithmic, not linear, in the limit"
    assert all(fitted == (bs <= limit) for bs, fitted in search.tried)


def test_memory_limited_result_keeps_a_safety_margin():
    search = find_largest_batch(FakeDevice(1000), upper=4096)  # default safety 0.9
    assert search.largest_fitting == 1000
    assert search.batch_size == 896  # 900 rounded down to a multiple of 8
    assert find_largest_batch(FakeDevice(3), upper=64).batch_size == 2  # small sizes stay >= 1


def test_upper_bound_caps_the_search_without_margin():
    device = FakeDevice(10**9)
    search = find_largest_batch(device, upper=1000)
    assert search.capped and search.batch_size == search.largest_fitting == 1000
    assert max(device.calls) == 1000


def test_start_above_the_limit_halves_down():
    device = FakeDevice(3)
    search = find_largest_batch(device, upper=512, start=64, safety=1.0)
    assert search.batch_size == 3
    assert device.calls[:5] == [64, 32, 16, 8, 4]


def test_nothing_fits_raises():
    with pytest.raises(BatchDoesNotFit, match="not even a batch of 1"):
        find_largest_batch(FakeDevice(0), upper=256)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        find_largest_batch(FakeDevice(10), upper=0)
    with pytest.raises(ValueError):
        find_largest_batch(FakeDevice(10), upper=10, safety=0.0)


def test_is_oom_recognises_allocation_failures_only():
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert not is_oom(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_oom(ValueError("out of memory"))


def tiny_data(window: int = 16, rows: int = 400, seed: int = 0) -> PreparedData:
    """Random features and labels with both classes in every split: fast and enough for the wiring."""
    rng = np.random.default_rng(seed)
    anchors = np.arange(window - 1, rows, dtype="int64")
    cuts = {"train": anchors[:300], "val": anchors[300:340], "test": anchors[340:]}
    labels = {s: (np.arange(len(a)) % 3 == 0).astype("float32") for s, a in cuts.items()}
    return PreparedData(
        features=rng.standard_normal((rows, 25)).astype("float32"),
        anchors=cuts,
        labels=labels,
        window=window,
        horizon=1,
        split_dates={},
        boundaries={},
        tickers=("X",),
    )


@pytest.fixture(scope="module")
def device_data() -> PreparedData:
    return tiny_data()


def test_probe_runs_real_steps_and_frees_on_oom(monkeypatch, device_data):
    """On the CPU with an injected OOM above 40 windows: the probe's wiring end to end."""
    real_step, seen = trainer_module.train_step, []

    def step_that_ooms_above_40(step_model, optimizer, x, y, grad_clip, **kw):
        seen.append(x.shape)
        if x.shape[0] > 40:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real_step(step_model, optimizer, x, y, grad_clip, **kw)

    monkeypatch.setattr(trainer_module, "train_step", step_that_ooms_above_40)
    arch = get_architectures_for_budget("smoke")[0]
    dev = DeviceData.from_prepared(device_data, torch.device("cpu"))
    config = TrainConfig(device="cpu")
    search = probe_largest_batch(arch, Hyperparams(1e-3, 0.1, 0.0), config, 16, dev, torch.device("cpu"), upper=256)
    assert search.largest_fitting == 40 and search.batch_size == 32
    assert all(shape[1:] == (16, 25) for shape in seen)


def test_probe_propagates_errors_that_are_not_oom(monkeypatch, device_data):
    def broken_step(*args, **kwargs):
        raise RuntimeError("shapes cannot be multiplied")

    monkeypatch.setattr(trainer_module, "train_step", broken_step)
    arch = get_architectures_for_budget("smoke")[0]
    dev = DeviceData.from_prepared(device_data, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="shapes"):
        probe_largest_batch(arch, Hyperparams(1e-3, 0.1, 0.0), TrainConfig(device="cpu"), 16, dev, torch.device("cpu"), upper=64)


def test_auto_on_cpu_trains_with_the_cpu_default_and_records_it(device_data):
    arch = get_architectures_for_budget("smoke")[0]
    config = TrainConfig(batch_size="auto", max_auto_batch_size=64, max_epochs=1, max_batches_per_epoch=2, device="cpu")
    dev = DeviceData.from_prepared(device_data, torch.device("cpu"))
    assert resolve_batch_size(config, arch, Hyperparams(1e-3, 0.1, 0.0), 16, dev, torch.device("cpu")) == 64
    result, _ = train_model(device_data, arch, Hyperparams(1e-3, 0.1, 0.0), config, 16)
    assert result.batch_size == 64


def test_config_accepts_auto_and_integers_only():
    assert TrainConfig(batch_size="auto").batch_size == "auto"
    assert TrainConfig.model_validate_json('{"batch_size": 128}').batch_size == 128
    for bad in (0, "big"):
        with pytest.raises(ValueError):
            TrainConfig(batch_size=bad)


@pytest.mark.gpu
def test_cuda_probe_finds_a_batch_that_trains(device_data):
    device = torch.device("cuda")
    arch = get_architectures_for_budget("2M")[0]
    dev = DeviceData.from_prepared(device_data, device)
    config = TrainConfig(device="cuda")
    search = probe_largest_batch(arch, Hyperparams(1e-3, 0.1, 0.0), config, 16, dev, device, upper=256)
    assert 1 <= search.batch_size <= 256
    auto = config.model_copy(update={"batch_size": "auto", "max_auto_batch_size": 256, "max_epochs": 1})
    result, _ = train_model(device_data, arch, Hyperparams(1e-3, 0.1, 0.0), auto, 16)
    assert result.batch_size == search.batch_size
