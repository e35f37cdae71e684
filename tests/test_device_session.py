"""bench/device: the prepared GPU session and the wheels it carries. The session itself needs a
GPU; here: its arguments, and the carried list (pinned, no duplicates, never the image's torch)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

DEVICE = Path(__file__).resolve().parent.parent / "bench" / "device"
REQUIREMENTS = (DEVICE / "requirements.txt").read_text().split()


@pytest.mark.parametrize("script", ["session.sh", "wheels.sh"])
def test_the_scripts_parse(script):
    subprocess.run(["bash", "-n", str(DEVICE / script)], check=True)


@pytest.mark.parametrize("args, message", [
    ([], "name the phases to run"),
    (["check", "benchmark"], "unknown phase 'benchmark'"),
])
def test_the_session_refuses_what_it_cannot_run_before_doing_anything(tmp_path, args, message):
    done = subprocess.run(["bash", str(DEVICE / "session.sh"), *args], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out")})
    assert done.returncode == 2 and message in done.stderr
    assert not (tmp_path / "out").exists()


def test_the_carried_wheels_are_pinned_once_each_and_leave_the_image_torch_alone():
    names = []
    for line in REQUIREMENTS:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][A-Za-z0-9.+-]*)", line)
        assert match, f"{line!r}: pin NAME==VERSION"
        names.append(re.sub(r"[-_.]+", "-", match.group(1)).lower())
    assert len(names) == len(set(names)), "two versions of one package stop the whole install"
    assert {"prefect", "mlflow", "optuna", "pydantic", "arch", "fastapi", "sqlalchemy", "alembic"} <= set(names)
    assert not {"torch", "numpy", "triton", "pandas", "scikit-learn"} & set(names), "the image's own builds must stay"


def test_the_carried_versions_satisfy_the_projects_own_pins():
    import tomllib

    from packaging.requirements import Requirement

    pinned = {re.sub(r"[-_.]+", "-", n).lower(): v for n, v in (line.split("==") for line in REQUIREMENTS)}
    project = tomllib.loads((DEVICE.parent.parent / "pyproject.toml").read_text())["project"]["dependencies"]
    checked = 0
    for dependency in map(Requirement, project):
        version = pinned.get(re.sub(r"[-_.]+", "-", dependency.name).lower())
        if version is not None:
            assert dependency.specifier.contains(version), f"{dependency.name}=={version} breaks pyproject's {dependency}"
            checked += 1
    assert checked >= 5
