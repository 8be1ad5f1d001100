"""Shared fixtures: small real data sets built once per test session."""

from pathlib import Path

import pytest
from data_helpers import build_digits


@pytest.fixture(scope="session")
def digits16(tmp_path_factory) -> Path:
    """scikit-learn's 1797 real 8x8 digits as an RGB data set with levels 4, 8 and 16px."""
    return build_digits(tmp_path_factory.mktemp("data") / "digits16", 16)


@pytest.fixture(scope="session")
def digits32(tmp_path_factory) -> Path:
    """The digits with levels 4 to 32px."""
    return build_digits(tmp_path_factory.mktemp("data") / "digits32", 32)


@pytest.fixture(scope="session")
def deepspeed_ops():
    """DeepSpeed's CPU communication op, built once before any test starts DeepSpeed ranks (several ranks
    building it at once can crash; the launchers do the same before they start ranks)."""
    from sivae.train.deepspeed_backend import prepare_ops

    return prepare_ops()


@pytest.fixture(scope="session")
def deepspeed_straight(tmp_path_factory, digits16, deepspeed_ops):
    """straight(zero_stage, precision) -> (run directory, per-rank records): the uninterrupted 8-16px run of two
    DeepSpeed ranks, started once per configuration by DeepSpeed's launcher."""
    from launch_helpers import deepspeed_args, launch

    runs: dict[tuple[int, str], tuple] = {}

    def straight(zero: int, precision: str):
        if (zero, precision) not in runs:
            root = tmp_path_factory.mktemp(f"ds-z{zero}-{precision}")
            run_dir, record = root / "run", root / "record"
            proc = launch("deepspeed", deepspeed_args(run_dir, digits16, zero, precision), record=record)
            assert proc.returncode == 0, proc.stderr[-4000:]
            runs[zero, precision] = run_dir, record
        return runs[zero, precision]

    return straight
