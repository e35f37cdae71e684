"""The fault seam of the trial worker (tasks/study/faults.py): which hooks a trial gets, and what they do."""

import json

import numpy as np
import pytest

from schemas.trial import FAULT_ENV
from tasks.study.faults import InjectedFault, NoFaults, faults_for


class _Data:
    def __init__(self):
        self.features = np.ones((4, 3), dtype=np.float32)


def test_a_trial_nobody_asked_to_fail_gets_hooks_that_do_nothing(monkeypatch):
    monkeypatch.setenv(FAULT_ENV, json.dumps({"3": "nan"}))
    hooks = faults_for(2)
    assert type(hooks) is NoFaults
    data = _Data()
    hooks.before_load(), hooks.after_load(data), hooks.after_epoch(), hooks.at_step(1, "cpu")
    assert np.all(data.features == 1)


def test_the_named_trial_gets_its_fault_at_the_point_it_happens_for_real(monkeypatch):
    monkeypatch.setenv(FAULT_ENV, json.dumps({"3": "nan", "4": "noise", "5": "oom"}))
    data = _Data()
    faults_for(3).after_load(data)
    assert np.isnan(data.features).all()
    noisy = _Data()
    faults_for(4).after_load(noisy)
    assert noisy.features.std() > 0
    import torch

    with pytest.raises(torch.OutOfMemoryError, match="injected"):
        faults_for(5).after_epoch()
    faults_for(5).after_load(_Data())  # the oom fault does nothing before training starts


def test_an_unknown_fault_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown fault 'explode'.*choose one of crash, hang"):
        InjectedFault("explode", 1)


def test_fill_gpu_refuses_to_fill_a_cpu():
    with pytest.raises(RuntimeError, match="needs CUDA"):
        InjectedFault("fill_gpu", 1).at_step(1, "cpu")
