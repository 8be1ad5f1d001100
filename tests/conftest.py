"""Shared fixtures: small real data sets built once per test session."""

from pathlib import Path

import pytest

from launch.cli import main as sivae


@pytest.fixture(scope="session")
def digits16(tmp_path_factory) -> Path:
    """scikit-learn's 1797 real 8x8 digits as an RGB data set with levels 4, 8 and 16px."""
    out = tmp_path_factory.mktemp("data") / "digits16"
    code = sivae(["data", "build", "--source", "digits", "--out", str(out), "--max-resolution", "16", "--upsample"])
    assert code == 0
    return out
