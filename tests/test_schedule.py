"""The progressive schedule's positions and fade-in ramps, against hand-computed values."""

import math

import pytest

from sivae.core.config import ConfigError, dump_yaml, from_dict, to_dict
from sivae.core.run_dir import RunDir
from sivae.core.schedule import LevelConfig, fade_blend, position
from sivae.eval.loading import run_config
from sivae.train.schema import RunConfig, TrainConfig

LEVELS = [LevelConfig(4, 0, 2), LevelConfig(8, 4, 2), LevelConfig(16, 0, 1)]  # starts at 0, 2 and 8 kimg


@pytest.mark.parametrize(("fraction", "sine", "linear"), [
    (0.0, 0.0, 0.0),
    (0.25, (1 - math.sqrt(0.5)) / 2, 0.25),  # the reference's ramp is 0.146 a quarter of the way in
    (0.5, 0.5, 0.5),
    (0.75, (1 + math.sqrt(0.5)) / 2, 0.75),
    (1.0, 1.0, 1.0),
    (1.5, 1.0, 1.0),  # past the fade: stays at 1
])
def test_fade_ramps_by_hand(fraction, sine, linear):
    assert fade_blend(fraction, "sine") == pytest.approx(sine, abs=1e-12)
    assert fade_blend(fraction, "linear") == pytest.approx(linear, abs=1e-12)


def test_positions_follow_the_schedule_and_the_ramp():
    assert position(LEVELS, 1.0).blend == 1.0 and position(LEVELS, 1.0).resolution == 4  # the first level: no fade
    quarter = position(LEVELS, 3.0)  # 1 of 8px's 4 fade-in kimg
    assert quarter.resolution == 8 and quarter.lod == 1 and quarter.level_start_kimg == 2.0
    assert quarter.blend == pytest.approx(0.1464466, abs=1e-6)
    assert position(LEVELS, 3.0, "linear").blend == pytest.approx(0.25)
    assert position(LEVELS, 7.0).blend == 1.0  # the stable part
    assert position(LEVELS, 8.0).blend == 1.0 and position(LEVELS, 8.0).resolution == 16  # fade_in_kimg 0


def test_the_ramp_is_a_config_choice_sine_by_default_and_old_stored_configs_read_as_linear():
    assert TrainConfig().fade_ramp == "sine"
    assert from_dict(TrainConfig, {"fade_ramp": "linear"}).fade_ramp == "linear"
    with pytest.raises(ConfigError, match="fade_ramp"):
        from_dict(TrainConfig, {"fade_ramp": "cosine"})
    stored = {"model": {}, "data": {}, "train": {"schedule": [{"resolution": 4}]}}
    assert run_config(stored, "x.pt").fade_ramp == "linear"  # written before the key existed
    stored["train"]["fade_ramp"] = "sine"
    assert run_config(stored, "x.pt").fade_ramp == "sine"


def test_resuming_a_run_from_before_the_sine_default_keeps_linear_or_says_why_not(tmp_path):
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    old = to_dict(RunConfig())
    del old["train"]["fade_ramp"]  # a config.yaml written before the key existed: that run ramped linearly
    dump_yaml(old, run.config)
    with pytest.raises(ConfigError, match=r"train\.fade_ramp: 'linear' -> 'sine'"):
        run.check_resume(RunConfig())
    linear = RunConfig()
    linear.train.fade_ramp = "linear"
    run.check_resume(linear)  # the run's own ramp: resumes
