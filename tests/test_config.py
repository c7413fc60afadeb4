from __future__ import annotations

from pathlib import Path

import pytest

from lensforge.errors import ConfigError
from lensforge.pipeline.config import RunConfig, build_config, load_config


def test_defaults_run_without_any_file():
    config = load_config()
    assert config == RunConfig()
    assert config.survey.stamp_size == 64
    assert config.run_dir == Path("runs") / "demo"


def test_yaml_file_then_overrides(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text("seed: 7\nsurvey:\n  psf_type: kolmogorov\nsimulation:\n  n_objects: 10\n")
    config = load_config(path, ["simulation.n_objects=20", "name=other"])
    assert config.seed == 7
    assert config.survey.psf_type == "kolmogorov"
    assert config.simulation.n_objects == 20  # the override wins over the file
    assert config.name == "other"
    assert config.population == RunConfig().population  # untouched sections keep their defaults


def test_effective_config_round_trips_through_yaml():
    import yaml

    config = load_config(overrides=["train.steps=3", "masks.bad_column_probability=1"])
    assert build_config(yaml.safe_load(config.to_yaml())) == config


def test_config_is_frozen():
    with pytest.raises(Exception, match="frozen"):
        RunConfig().seed = 3


@pytest.mark.parametrize("override, match", [
    ("train.stepz=3", "unknown key 'train.stepz'"),
    ("bogus=1", "unknown key 'bogus'"),
    ("train.steps=-3", "invalid value for 'train.steps'"),
    ("train.steps=many", "invalid value for 'train.steps'"),
    ("survey.psf_type=gaussian", "invalid value for 'survey.psf_type'"),
    ("survey.stamp_size=60", "multiple of 8"),
    ("population.flux_min=1e6", "flux_min .* must not exceed flux_max"),
    ("masks.bad_column_probability=1.5", "invalid value for 'masks.bad_column_probability'"),
    ("name=../escape", "invalid value for 'name'"),
    ("seed=-1", "invalid value for 'seed'"),
    ("train.steps", "expected section.key=value"),
    ("name=[", "the value is not valid YAML"),
    ("train.validation_fraction=0", "invalid value for 'train.validation_fraction'"),
])
def test_bad_overrides_name_the_key(override: str, match: str):
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=[override])


@pytest.mark.parametrize("text, match", [
    ("survey: [1, 2]\n", "invalid value for 'survey'"),
    ("- a\n- b\n", "expected a mapping"),
    ("survey: {pixel_scale_arcsec: 0.2\n", "not valid YAML"),
    ("simulation:\n  n_objects: 0\n", "invalid value for 'simulation.n_objects'"),
])
def test_bad_files(tmp_path: Path, text: str, match: str):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_missing_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


def test_config_error_pickles_with_its_value():
    import pickle

    err = ConfigError("survey.psf_type: bad", "airy")
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, ValueError) and str(back) == "survey.psf_type: bad" and back.value == "airy"
