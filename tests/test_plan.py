"""`hpo plan`, the cost forecast: its arithmetic by hand and against bench/'s FLOP count, the
measured and declared throughputs, the CLI on embedded stores, and the campaign's `plan` artifact."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from helpers import bench_module
from models.arch_grid import Architecture, count_parameters, explicit_architecture, get_architectures_for_budget
from models.flops import (DEFAULT_MFU, DEFAULT_PEAK_TFLOPS, flops_per_trial, flops_per_window, gpu_hours, grid_flops,
                          makespan, windows_per_epoch)
from schemas import tracking as T
from schemas.config import HpoConfig, StoreConfig, StudySpec
from tasks.data.dataset import cached_dataset
from tasks.plan.forecast import (Declared, Epochs, Measured, StudyInputs, TrialMeasure, make_plan, measured_epochs,
                                 measured_throughput)
from tasks.plan.sources import gather_plan
from tasks.tracking.runs import end_run, get_or_create_experiment, mlflow_client, start_run

# d_model 64, 2 layers, d_ff 256, 25 features: per block 4*64^2 + 2*64*256 + 9*64 + 256 = 49,984;
# N = 26*64 + 2*49,984 + 3*64 + 1 = 101,825. Per 60-day window: 60 * (6*101,825 + 12*2*64*60) = 42,186,600.
HAND = explicit_architecture("2M", d_model=64, n_layers=2, n_heads=4, d_ff=256)


def test_flops_per_window_by_hand():
    assert count_parameters(64, 2, 256, 25) == 101_825
    assert flops_per_window(HAND, 60) == 42_186_600
    assert flops_per_trial(HAND, 60, windows=6_802, epochs=50) == 42_186_600 * 6_802 * 50  # 1.43e13
    # 1e15 FLOPs at 989 TFLOP/s x 30%: 1e15 / 2.967e14 s = 3.37 s
    assert gpu_hours(1e15, 989e12 * 0.3) == pytest.approx(1e15 / 296.7e12 / 3600)


def test_bench_counts_the_same_flops():
    """One count: bench/'s FLOPs per window (its MFU) is the plan's, on every architecture of every grid."""
    with bench_module("_common") as common:
        for budget in ("smoke", "2M", "20M", "200M", "2B"):
            for arch in get_architectures_for_budget(budget):
                assert flops_per_window(arch, 60) == common.flops_per_sample(arch, 60)
        assert common.flops_per_sample(HAND, 60) == 42_186_600
        assert common.flops_per_sample(HAND, 20, num_features=8) == 20 * (6 * count_parameters(64, 2, 256, 8) + 12 * 2 * 64 * 20)


def test_the_grid_mean_min_and_max():
    small = Architecture(0, 16, 1, 2, 32, 2, count_parameters(16, 1, 32))
    archs = [HAND, small]
    grid = grid_flops(archs, window=60, windows=1_000, epochs=10)
    per_window = [flops_per_window(a, 60) for a in archs]
    assert grid.mean == pytest.approx(sum(per_window) / 2 * 1_000 * 10)
    assert (grid.low, grid.high) == (min(per_window) * 10_000, max(per_window) * 10_000)
    assert grid.architectures == 2


def test_windows_per_epoch_and_makespan():
    assert windows_per_epoch(6_802, 256, None) == 6_802
    assert windows_per_epoch(6_882, 64, 20) == 1_280
    assert windows_per_epoch(1_000, 64, 20) == 1_000
    assert makespan([12.0, 12.0, 12.0, 1.0, 1.0, 1.0], 1) == 39.0
    assert makespan([12.0, 12.0, 12.0, 1.0, 1.0, 1.0], 3) == 13.0  # in order, onto whichever GPU frees first
    assert makespan([5.0], 8) == 5.0  # one study holds one GPU; the others idle
    with pytest.raises(ValueError, match="at least 1"):
        makespan([1.0], 0)


FULL_EPOCHS = Epochs(50.0, 0)


def inputs(throughput, *, study="2M_h1", stage="s", n_trials=50, confirmations=6, epochs=FULL_EPOCHS) -> StudyInputs:
    return StudyInputs(study=study, stage=stage, archs=(HAND,), grid_version=2, window=60, num_features=25,
                       train_windows=6_802, windows_per_epoch=6_802, epochs=epochs, n_trials=n_trials,
                       confirmations=confirmations, throughput=throughput)


def test_declared_and_measured_gpu_hours_by_hand():
    flops = 42_186_600 * 6_802 * 50  # one trial of HAND
    declared = make_plan([inputs(Declared(989.0, 0.3))], gpus=1, campaign=False).studies[0]
    assert declared.gpu_hours == pytest.approx(56 * flops / (989e12 * 0.3) / 3600)
    # measured: 5,000 samples/s -> a trial of 6,802 windows x 50 epochs takes 68.02 s
    measured = make_plan([inputs(Measured(5_000.0, 12, "NVIDIA H200"))], gpus=4, campaign=False).studies[0]
    assert measured.gpu_hours == pytest.approx(56 * 6_802 * 50 / 5_000 / 3600)
    assert measured.wall_hours == pytest.approx(measured.gpu_hours / 4)  # one study, 4 workers on it
    assert measured.flop_per_s == pytest.approx(5_000 * 42_186_600)


def test_a_campaign_runs_stages_in_order_and_a_stages_studies_one_per_gpu():
    d = Declared(100.0, 1.0)
    plan = make_plan([inputs(d, study="a", stage="1"), inputs(d, study="b", stage="2"), inputs(d, study="c", stage="2")],
                     gpus=2, campaign=True)
    hours = plan.studies[0].gpu_hours
    assert dict(plan.stage_hours) == pytest.approx({"1": hours, "2": hours})
    assert plan.wall_hours == pytest.approx(2 * hours) and plan.gpu_hours == pytest.approx(3 * hours)


def test_measured_throughput_is_the_median_of_one_devices_complete_trials():
    def m(device, rate, budget="2B", window=60, epochs=10.0):
        return TrialMeasure(budget, device, window, rate, epochs)

    measures = [m("NVIDIA H200", 100.0), m("NVIDIA H200", 300.0), m("NVIDIA H200", 200.0), m("NVIDIA A100", 50.0),
                m("NVIDIA H200", 900.0, budget="200M"), m("NVIDIA H200", 5.0, window=20), m("NVIDIA H200", None, epochs=4.0)]
    assert measured_throughput(measures, "2B", 60) == Measured(200.0, 3, "NVIDIA H200")  # the device with most trials
    assert measured_throughput(measures, "2B", 60, device="a100") == Measured(50.0, 1, "NVIDIA A100")
    assert measured_throughput(measures, "2B", 60, device="B200") is None
    assert measured_throughput(measures, "20M", 60) is None
    assert measured_epochs(measures, "2B", 60, max_epochs=50) == Epochs(10.0, 5)
    assert measured_epochs(measures, "20M", 60, max_epochs=50) == Epochs(50.0, 0)


def log_fake_trials(stores: StoreConfig, study: str, budget: str, window: int, rates: list[float], epochs: float,
                    device: str = "NVIDIA H200") -> None:
    """A study run pinned to a `window`-day dataset and complete trial runs with these samples/s."""
    client = mlflow_client(stores)
    experiment = get_or_create_experiment(client, study, stores.artifact_root)
    parent = start_run(client, experiment, run_kind="study", source="hpo", name=study, study=study, parent_run_id=None,
                       tags={T.TAG_DATASET: json.dumps({"window": window})})
    for number, rate in enumerate(rates):
        run = start_run(client, experiment, run_kind="trial", source="hpo", name=T.trial_run_name(study, number), study=study,
                        parent_run_id=parent, params={"budget": budget})
        end_run(client, run, "complete", {T.TAG_DEVICE: device}, metrics={"samples_per_s": rate, "epochs": epochs, "val_auc": 0.6})


def test_measured_trials_in_mlflow_set_the_throughput_and_the_epochs(stores: StoreConfig):
    config = HpoConfig(stores=stores).smoke()  # window 20, 20 batches of 64 per epoch, 8 trials + 2 x 2 confirmations
    log_fake_trials(stores, "smoke-20M_h1", "smoke-20M", window=20, rates=[1_000.0, 3_000.0, 2_000.0], epochs=4.0)
    log_fake_trials(stores, "smoke-2B_h1", "smoke-2B", window=60, rates=[10.0], epochs=8.0)  # another window: not comparable
    specs = [StudySpec.parse("smoke-20M_h1"), StudySpec.parse("smoke-2B_h1")]
    plan = gather_plan(config, [("stage", specs)], gpus=1, campaign=False)
    measured, declared = plan.studies
    assert measured.inputs.throughput == Measured(2_000.0, 3, "NVIDIA H200")
    assert measured.inputs.epochs == Epochs(4.0, 3)
    assert measured.inputs.windows_per_epoch == 1_280 and measured.runs == 8 + 4
    assert measured.gpu_hours == pytest.approx(12 * 1_280 * 4 / 2_000 / 3600)
    assert declared.inputs.throughput == Declared(DEFAULT_PEAK_TFLOPS, DEFAULT_MFU)
    assert declared.inputs.epochs == Epochs(8.0, 0)  # the smoke switch's max_epochs: an upper bound
    archs = get_architectures_for_budget("smoke-2B", 25)
    mean_flops = math.fsum(flops_per_window(a, 20) for a in archs) / len(archs) * 1_280 * 8
    assert declared.gpu_hours == pytest.approx(12 * mean_flops / (989e12 * 0.3) / 3600)


def invoke(*args: str, width: int = 400):
    import flows.cli

    flows.cli.console.width = width  # one line per row, so the test reads whole cells
    return CliRunner().invoke(flows.cli.app, list(args))


def test_hpo_plan_prints_every_campaign_study_with_its_flops_gpu_hours_and_source(tmp_path):
    from flows.campaign import campaign_stages

    result = invoke("plan", "--root", str(tmp_path / "mlruns"), "--gpus", "2")
    assert result.exit_code == 0, result.output
    for _, names in campaign_stages():
        for name in names:
            (row,) = [line for line in result.output.splitlines() if f" {name} " in line]
            assert "declared: 989 TFLOP/s x 30% MFU" in row and "50 (max_epochs: an upper bound)" in row and "50 + 6" in row
    data, _ = cached_dataset(HpoConfig().data, 1, tmp_path / "mlruns" / "cache")
    archs = get_architectures_for_budget("2B")
    per_trial = math.fsum(flops_per_window(a, 60) for a in archs) / len(archs) * len(data.anchors["train"]) * 50
    (row,) = [line for line in result.output.splitlines() if " 2B_h1 " in line]
    assert f"{per_trial:.2e}".replace("e+", "e") in row
    assert f"{56 * per_trial / (989e12 * 0.3) / 3600:.1f} h" in row
    assert "wall with 2 GPUs: stages in order" in result.output and "total:" in result.output
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()  # a store that is not there is not made


def test_hpo_plan_of_one_study_with_measured_trials(stores: StoreConfig):
    log_fake_trials(stores, "smoke-20M_h1", "smoke-20M", window=20, rates=[1_500.0, 2_500.0], epochs=6.0)
    result = invoke("plan", "20M", "h1", "--smoke", "--root", str(stores.root))
    assert result.exit_code == 0, result.output
    (row,) = [line for line in result.output.splitlines() if " smoke-20M_h1 " in line]
    assert "measured: median 2,000 samples/s of 2 runs on NVIDIA H200" in row and "6 (median of 2 runs)" in row
    assert "│ 46 s " in row  # 12 runs x 1,280 windows x 6 epochs at 2,000 windows/s: 46.08 s


@pytest.mark.parametrize("args, message", [
    (("plan", "3B"), "unknown budget '3B'; choose one of smoke, 2M"),
    (("plan", "2B", "h2"), "unknown horizon 'h2'; choose one of h1, h3, h5"),
    (("plan", "--mfu", "1.5"), "--mfu 1.5: give a fraction of the peak in (0, 1]"),
])
def test_hpo_plan_refuses_bad_input_in_one_line(tmp_path, args, message):
    result = invoke(*args, "--root", str(tmp_path / "mlruns"))
    assert result.exit_code == 2, result.output
    assert result.output.strip().startswith(message) and len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "mlruns").exists()


def test_the_campaign_publishes_the_plan_artifact(smoke_config: HpoConfig, prefect_harness):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.campaign import campaign_stages, publish_plan

    @flow
    def opening():
        publish_plan(smoke_config.smoke(), campaign_stages(), "threads")

    opening()
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_latest_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["plan"])))
    assert artifact.data.startswith("# Cost forecast") and "| smoke-2B_h3 |" in artifact.data and "declared: 989 TFLOP/s" in artifact.data
