"""Survey presets: they load, their photometry predicts the documented depth, and each renders a tile from the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from astropy.io import fits
from astropy.wcs import WCS

from lensforge.errors import ConfigError
from lensforge.pipeline.config import load_config
from lensforge.pipeline.presets import preset_names
from lensforge.pipeline.stamps.surveys import build_psf, predicted_depth

PRESETS = ["euclid_vis", "hsc", "lsst", "roman", "ska_mid"]


def test_the_five_presets_exist_and_validate():
    assert preset_names() == PRESETS
    for name in PRESETS:
        config = load_config(preset=name)
        assert config.survey.name == name
    assert load_config(preset="ska_mid").survey.kind == "radio"


def test_unknown_preset_names_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown survey preset 'lsst2'; valid: .*'lsst'"):
        load_config(preset="lsst2")


@pytest.mark.parametrize("name, tolerance_mag", [("lsst", 0.1), ("hsc", 0.2), ("roman", 0.3)])
def test_preset_photometry_predicts_the_documented_depth(name, tolerance_mag):
    survey = load_config(preset=name).survey
    assert predicted_depth(survey) == pytest.approx(survey.depth_5sigma_mag, abs=tolerance_mag)


def test_space_psfs_are_sharper_than_ground_psfs():
    fwhm = {}
    for name in ("lsst", "hsc", "euclid_vis", "roman"):
        survey = load_config(preset=name).survey
        image = build_psf(survey).drawImage(nx=256, ny=256, scale=survey.pixel_scale_arcsec / 8, method="no_pixel")
        fwhm[name] = image.calculateFWHM()
    assert fwhm["lsst"] == pytest.approx(0.73, abs=0.05) and fwhm["hsc"] == pytest.approx(0.6, abs=0.05)
    assert fwhm["euclid_vis"] == pytest.approx(0.16, abs=0.02) and fwhm["roman"] == pytest.approx(0.14, abs=0.02)


def test_file_and_set_override_the_preset(tmp_path):
    config_file = tmp_path / "mine.yaml"
    config_file.write_text("preset: hsc\nsurvey:\n  exposure_time_s: 100\n")
    config = load_config(config_file, ["survey.n_exposures=2"])
    assert config.survey.name == "hsc" and config.survey.exposure_time_s == 100 and config.survey.n_exposures == 2
    assert config.survey.pixel_scale_arcsec == 0.168  # from the preset
    assert load_config(config_file, preset="lsst").survey.name == "lsst"  # --preset wins over the file's


def test_config_show_prints_a_preset_to_copy():
    done = subprocess.run([sys.executable, "-m", "lensforge.flows.cli", "config", "show", "--preset", "roman"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    shown = yaml.safe_load(done.stdout)
    assert shown["survey"]["name"] == "roman" and shown["survey"]["pixel_scale_arcsec"] == 0.11
    bad = subprocess.run([sys.executable, "-m", "lensforge.flows.cli", "config", "show", "--preset", "nope"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "unknown survey preset 'nope'" in bad.stderr


def _check_tile(run_dir, name: str, size: int) -> None:
    path = run_dir / "tiles" / "tile_0000.fits"
    with fits.open(path) as hdus:
        assert {"SCIENCE", "MASK", "VARIANCE"} <= {h.name for h in hdus}
        assert hdus["SCIENCE"].data.shape == (size, size)
        assert WCS(hdus["SCIENCE"].header).has_celestial
        assert hdus[0].header["SURVEY"] == name
    assert (run_dir / "catalogs" / "tile_0000_truth.parquet").is_file()


@pytest.mark.parametrize("name", PRESETS)
def test_each_preset_renders_a_tile(name, tmp_path):
    """The tile stage itself (``make_tile``, what the flow's task runs) for every preset, in this process."""
    from lensforge.pipeline.config import load_config
    from lensforge.pipeline.tiles.stage import make_tile

    size = 256
    config = load_config(None, [f"out_dir={tmp_path}", f"name={name}", f"tile.size_pixels=[{size},{size}]",
                                "tile.region_size_pixels=128"], name)
    make_tile(config, 0)
    _check_tile(tmp_path / name, name, size)


@pytest.mark.slow
def test_a_preset_renders_a_tile_from_the_cli(tmp_path, prefect_api_env):
    """The same through ``lensforge tile`` (Prefect flow, Dask worker, manifest), for one preset."""
    size, name = 256, "hsc"
    done = subprocess.run([sys.executable, "-m", "lensforge.flows.cli", "tile", "--preset", name,
                           "--out", str(tmp_path), "--name", name, "--set", f"tile.size_pixels=[{size},{size}]",
                           "--set", "tile.region_size_pixels=128", "--set", "dask.n_workers=1", "--quiet"],
                          capture_output=True, text=True, timeout=300, env=prefect_api_env)
    assert done.returncode == 0, done.stderr[-2000:]
    _check_tile(tmp_path / name, name, size)
    assert (tmp_path / name / "manifest.json").is_file()
