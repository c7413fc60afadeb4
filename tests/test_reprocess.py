"""Batch reprocessing of tiles: outputs, idempotence, resume after a crash, bad tiles failing alone."""

from __future__ import annotations

import json
from pathlib import Path

import galsim
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from typer.testing import CliRunner

from lensforge.errors import InputError
from lensforge.pipeline.tiles.reprocess import (
    MARKER_SUFFIX,
    NONFINITE_BIT,
    ReprocessSettings,
    list_tiles,
    reprocess_tile,
)

SIZE = 96
SIGMA = 2.0


def _sky(seed: int) -> np.ndarray:
    """A small tile: sky noise plus a few PSF-convolved galaxies drawn by GalSim."""
    rng = np.random.default_rng(seed)
    image = galsim.ImageF(SIZE, SIZE, scale=0.2)
    for x, y in rng.uniform(15, SIZE - 15, size=(4, 2)):
        galaxy = galsim.Convolve([galsim.Exponential(half_light_radius=0.5, flux=3000.0),
                                  galsim.Moffat(beta=3.5, fwhm=0.7)])
        galaxy.drawImage(image, center=galsim.PositionD(x + 1, y + 1), add_to_image=True)
    return image.array + rng.normal(100.0, SIGMA, size=(SIZE, SIZE)).astype(np.float32)


def _write_mef(path: Path, seed: int) -> None:
    science = _sky(seed)
    mask = np.zeros((SIZE, SIZE), np.int32)
    mask[:, 40] = 2  # a bad column
    mask[10:16, 60:70] = 128  # a blank patch
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(science, name="SCIENCE"), fits.ImageHDU(mask, name="MASK"),
                  fits.ImageHDU(np.full((SIZE, SIZE), SIGMA**2, np.float32), name="VARIANCE")]).writeto(path)


def _write_plain(path: Path, seed: int) -> None:
    science = _sky(seed)
    science[30:33, 30:33] = np.nan  # holes the mask does not know about
    fits.PrimaryHDU(science).writeto(path)


@pytest.fixture
def tiles(tmp_path):
    directory = tmp_path / "tiles"
    directory.mkdir()
    _write_mef(directory / "a.fits", 1)
    _write_mef(directory / "b.fits", 2)
    _write_plain(directory / "c.fits", 3)
    return directory


def test_a_tile_is_inpainted_without_touching_known_pixels(tiles, tmp_path):
    out = tmp_path / "out"
    row = reprocess_tile(str(tiles / "a.fits"), out, ReprocessSettings())
    assert row["status"] == "done" and row["n_sources"] >= 3
    with fits.open(tiles / "a.fits") as before, fits.open(out / "a.reprocessed.fits") as after:
        mask = after["MASK"].data
        known = mask == 0
        np.testing.assert_array_equal(after["SCIENCE"].data[known], before["SCIENCE"].data[known])
        filled = after["SCIENCE"].data[~known]
        assert np.isfinite(filled).all() and abs(np.median(filled) - 100.0) < 3 * SIGMA
        assert after["SCIENCE"].header["LFMETHOD"] == "biharmonic"
    catalog = Table.read(out / "a.catalog.fits")
    assert len(catalog) == row["n_sources"]
    assert json.loads((out / f"a{MARKER_SUFFIX}").read_text())["status"] == "done"


def test_nonfinite_pixels_of_a_plain_image_are_masked_and_filled(tiles, tmp_path):
    out = tmp_path / "out"
    reprocess_tile(str(tiles / "c.fits"), out, ReprocessSettings())
    with fits.open(out / "c.reprocessed.fits") as after:
        assert (after["MASK"].data[30:33, 30:33] == NONFINITE_BIT).all()
        assert np.isfinite(after["SCIENCE"].data).all()


def test_same_key_is_skipped_and_a_new_setting_redoes_the_tile(tiles, tmp_path):
    out = tmp_path / "out"
    reprocess_tile(str(tiles / "a.fits"), out, ReprocessSettings())
    first = (out / "a.reprocessed.fits").read_bytes()
    assert reprocess_tile(str(tiles / "a.fits"), out, ReprocessSettings())["status"] == "skipped"
    assert reprocess_tile(str(tiles / "a.fits"), out, ReprocessSettings(method="interpolate"))["status"] == "done"
    assert (out / "a.reprocessed.fits").read_bytes() != first


def test_a_crash_before_the_marker_is_redone_to_the_same_bytes(tiles, tmp_path):
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    for url in list_tiles(str(tiles)):
        reprocess_tile(url, clean, ReprocessSettings())
        reprocess_tile(url, crashed, ReprocessSettings())
    (crashed / f"b{MARKER_SUFFIX}").unlink()  # b's outputs written, marker not: the crash window
    (crashed / "b.catalog.fits").write_bytes(b"half a file")
    rows = [reprocess_tile(url, crashed, ReprocessSettings()) for url in list_tiles(str(tiles))]
    assert [r["status"] for r in rows] == ["skipped", "done", "skipped"]
    for name in sorted(p.name for p in clean.iterdir() if p.suffix == ".fits"):
        assert (crashed / name).read_bytes() == (clean / name).read_bytes(), name


@pytest.mark.parametrize(("content", "match"), [
    (b"SIMPLE  = garbage", "not a readable FITS tile"),
    (None, "too small"),
])
def test_a_bad_tile_is_one_line(tmp_path, content, match):
    path = tmp_path / "bad.fits"
    if content is None:
        fits.PrimaryHDU(np.zeros((8, 8), np.float32)).writeto(path)
    else:
        path.write_bytes(content)
    with pytest.raises(InputError, match=match):
        reprocess_tile(str(path), tmp_path / "out", ReprocessSettings())


def test_fsspec_urls_are_inputs(tiles, tmp_path):
    import fsspec

    memory = fsspec.filesystem("memory")
    memory.pipe("/survey/night1/a.fits", (tiles / "a.fits").read_bytes())
    assert list_tiles("memory://survey") == ["memory:///survey/night1/a.fits"]
    row = reprocess_tile("memory:///survey/night1/a.fits", tmp_path / "out", ReprocessSettings())
    assert row["status"] == "done" and (tmp_path / "out" / "a.reprocessed.fits").is_file()
    with pytest.raises(InputError, match="no such file or directory"):
        list_tiles("memory://nothing/here")


@pytest.mark.slow
def test_cli_batch_with_a_bad_tile_then_a_rerun_that_does_nothing(tiles, tmp_path):
    from lensforge.flows.cli import app

    (tiles / "broken.fits").write_bytes(b"not a fits file")
    out = tmp_path / "out"
    options = ["--output", str(out), "--quiet", "--set", "dask.n_workers=1", "--out", str(tmp_path / "runs")]
    result = CliRunner().invoke(app, ["reprocess", str(tiles), *options])
    assert result.exit_code == 1, result.output
    assert "4 tiles: 3 done, 0 skipped, 1 failed" in result.output and "broken.fits" in result.output
    summary = json.loads((out / "reprocess_summary.json").read_text())
    assert [row["status"] for row in summary["tiles"]] == ["done", "done", "failed", "done"]
    # The rerun is the reprocess-tiles deployment's flow (the CLI's run_reprocess underneath): it does
    # no tile work and fails the flow run, naming the count, so a scheduled batch with a bad tile
    # shows up on the dashboard.
    from lensforge.flows.deployments import reprocess_tiles

    with pytest.raises(InputError, match="1 of 4 tiles failed"):
        reprocess_tiles(overrides=["dask.n_workers=1", f"out_dir={tmp_path / 'runs'}"], source=str(tiles),
                        output=str(out))
    again = json.loads((out / "reprocess_summary.json").read_text())
    assert (again["done"], again["skipped"], again["failed"]) == (0, 3, 1)
    result = CliRunner().invoke(app, ["reprocess", str(tiles), *options, "--method", "model",
                                      "--model-version", "v009"])
    assert result.exit_code == 2 and "v009" in result.output


@pytest.mark.slow
def test_killing_a_batch_midway_then_rerunning_gives_the_uninterrupted_outputs(tmp_path, prefect_api_env):
    """The whole batch process tree (flow, scheduler, worker) is SIGKILLed once some tiles are done."""
    import os
    import signal
    import subprocess
    import sys
    import time

    directory = tmp_path / "tiles"
    directory.mkdir()
    for seed in range(8):
        _write_mef(directory / f"t{seed:02d}.fits", seed)
    env = prefect_api_env  # one Prefect server for the module's commands, not one per command
    command = [sys.executable, "-m", "lensforge.flows.cli", "reprocess", str(directory), "--quiet",
               "--max-concurrent", "2", "--set", "dask.n_workers=1", "--out", str(tmp_path / "runs")]
    for url in list_tiles(str(directory)):  # the uninterrupted batch, tile by tile (the tasks' own function)
        settings = ReprocessSettings(psf_fwhm_pixels=0.7 / 0.2, threshold_nsigma=0.6)  # the CLI's defaults
        reprocess_tile(url, tmp_path / "clean", settings)

    crashed = tmp_path / "crashed"
    process = subprocess.Popen([*command, "--output", str(crashed)], env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    began = time.monotonic()
    while len(list(crashed.glob(f"*{MARKER_SUFFIX}"))) < 2 and time.monotonic() - began < 240:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done_before = len(list(crashed.glob(f"*{MARKER_SUFFIX}")))
    assert 2 <= done_before < 8, done_before
    subprocess.run([*command, "--output", str(crashed)], env=env, check=True, capture_output=True)
    summary = json.loads((crashed / "reprocess_summary.json").read_text())
    assert summary["skipped"] >= done_before and summary["failed"] == 0
    clean_files = sorted(p.name for p in (tmp_path / "clean").glob("*.fits"))
    assert clean_files == sorted(p.name for p in crashed.glob("*.fits")) and len(clean_files) == 16
    for name in clean_files:
        assert (crashed / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name


@pytest.mark.slow
def test_killing_a_worker_midway_then_rerunning_gives_the_uninterrupted_outputs(tmp_path, prefect_api_env):
    """SIGKILL one Dask worker process (the nanny restarts it) while tiles are being written."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    directory = tmp_path / "tiles"
    directory.mkdir()
    for seed in range(12):
        _write_mef(directory / f"t{seed:02d}.fits", seed)
    settings = ReprocessSettings(psf_fwhm_pixels=0.7 / 0.2, threshold_nsigma=0.6)  # the CLI's defaults
    for url in list_tiles(str(directory)):
        reprocess_tile(url, tmp_path / "clean", settings)
    env = prefect_api_env
    out = tmp_path / "out"
    command = [sys.executable, "-m", "lensforge.flows.cli", "reprocess", str(directory), "--output", str(out),
               "--quiet", "--tiles-per-task", "4", "--set", "dask.n_workers=2", "--out", str(tmp_path / "runs")]
    batch = psutil.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        began = time.monotonic()
        while len(list(out.glob(f"*{MARKER_SUFFIX}"))) < 2 and time.monotonic() - began < 240:
            time.sleep(0.02)
        workers = [p for p in batch.children(recursive=True) if "spawn_main" in " ".join(p.cmdline())]
        assert len(workers) == 2, [p.cmdline() for p in batch.children(recursive=True)]
        os.kill(workers[0].pid, signal.SIGKILL)
        killed_after = len(list(out.glob(f"*{MARKER_SUFFIX}")))
        output, _ = batch.communicate(timeout=300)
    finally:
        if batch.poll() is None:
            os.killpg(batch.pid, signal.SIGKILL)
    assert killed_after < 12, "the batch finished before the worker was killed"
    assert batch.returncode in (0, 1), output  # tiles lost with the worker are failed rows, not a crash
    rerun = subprocess.run(command, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    summary = json.loads((out / "reprocess_summary.json").read_text())
    assert summary["failed"] == 0 and summary["done"] + summary["skipped"] == 12
    clean_files = sorted(p.name for p in (tmp_path / "clean").glob("*.fits"))
    assert clean_files == sorted(p.name for p in out.glob("*.fits")) and len(clean_files) == 24
    for name in clean_files:
        assert (out / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name


def test_an_unexpected_error_is_one_summary_line():
    from lensforge.flows.tile_batch import failure_reason

    assert failure_reason(ValueError("first\nsecond\n  third")) == "ValueError: first second third"
    long = failure_reason(RuntimeError("x" * 1000))
    assert len(long) == 300 and long.endswith("...")


def test_one_image_is_reprocessed_here_without_prefect_or_a_cluster(tiles, tmp_path, monkeypatch):
    """A single image with no cluster or Prefect server configured: no server, no cluster, the same rows."""
    import lensforge.flows.cluster as cluster
    from lensforge.flows import stages
    from lensforge.pipeline.config import build_config

    monkeypatch.setattr("lensforge.flows.in_process.configured_prefect_api", lambda: None)
    monkeypatch.setattr(cluster, "flow_runtime", lambda *args, **kwargs: pytest.fail("started a flow runtime"))
    config = build_config({"out_dir": str(tmp_path / "runs")})
    summary = stages.run_reprocess(config, str(tiles / "a.fits"), tmp_path / "out", progress=False)
    assert (summary["n_tiles"], summary["done"]) == (1, 1) and (tmp_path / "out" / "a.reprocessed.fits").is_file()
    settings = ReprocessSettings(psf_fwhm_pixels=config.survey.psf_fwhm_arcsec / config.survey.pixel_scale_arcsec,
                                 threshold_nsigma=config.detect.threshold_nsigma)
    reference = reprocess_tile(str(tiles / "a.fits"), tmp_path / "reference", settings)
    assert summary["tiles"][0]["n_sources"] == reference["n_sources"]
    with fits.open(tmp_path / "out" / "a.reprocessed.fits") as ours, \
            fits.open(tmp_path / "reference" / "a.reprocessed.fits") as theirs:
        assert len(ours) == len(theirs)
        for mine, other in zip(ours, theirs, strict=True):
            assert (mine.data is None and other.data is None) or np.array_equal(mine.data, other.data)
    bad = tmp_path / "bad.fits"
    bad.write_bytes(b"SIMPLE  = garbage")
    summary = stages.run_reprocess(config, str(bad), tmp_path / "out_bad", progress=False)
    assert summary["failed"] == 1 and "not a readable FITS tile" in summary["tiles"][0]["reason"]
    assert json.loads((tmp_path / "out_bad" / "reprocess_summary.json").read_text())["failed"] == 1


def test_thin_holes_network_keeps_the_old_key_and_only_the_bad_column_differs_from_auto(tiles, tmp_path):
    import hashlib

    from lensforge.errors import InputError
    from lensforge.pipeline.inpaint.images import THIN_HOLE_CHOICES
    from lensforge.pipeline.tiles.reprocess import THIN_HOLES

    network = ReprocessSettings(method="model", thin_holes="network")
    # "network" is what batches did before the option existed: their keys still hold. "auto" is a new key.
    before = {"method": "model", "psf_fwhm_pixels": 3.5, "threshold_nsigma": 1.5}
    assert network.digest() == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()
    auto = ReprocessSettings(method="model")
    assert auto.thin_holes == "auto" and auto.digest() != network.digest()
    assert THIN_HOLES == THIN_HOLE_CHOICES == ("auto", "network")
    with pytest.raises(InputError, match="thin_holes 'start'"):
        ReprocessSettings(method="model", thin_holes="start")
    outputs = {}
    for name, settings in (("network", network), ("auto", auto)):
        row = reprocess_tile(str(tiles / "a.fits"), tmp_path / name, settings)
        assert row["status"] == "done" and row["method_used"] == "model"
        with fits.open(tmp_path / name / "a.reprocessed.fits") as after, fits.open(tiles / "a.fits") as before_hdu:
            known = after["MASK"].data == 0
            np.testing.assert_array_equal(after["SCIENCE"].data[known], before_hdu["SCIENCE"].data[known])
            outputs[name] = after["SCIENCE"].data.copy()
    # Only thin holes near sources differ (the bad column); the blank patch is the network's both times.
    changed = outputs["network"] != outputs["auto"]
    assert changed[:, 40].any() and not changed[:, :40].any() and not changed[:, 41:].any()
