"""Flows end to end on tiny configurations, under a real (temporary) Prefect server and Dask."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from prefect.testing.utilities import prefect_test_harness

import flows  # noqa: F401 - quiet Prefect defaults
from catalogs.store import open_store
from catalogs.truth import read_truth_catalogue
from flows.run import run_flow, run_with_dask, simulate_flow
from pipeline.config import build_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    with prefect_test_harness(server_startup_timeout=120):
        yield


def _arrays(run_dir: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(run_dir / "trainset.zarr", mode="r")
    return {name: group[name][:] for name in group.array_keys()}


def test_same_seed_same_bytes_with_1_and_2_workers_and_any_chunking(tiny_config_values):
    one = build_config({**tiny_config_values, "name": "one", "dask": {"n_workers": 1},
                        "simulation": {"n_objects": 48, "chunk_size": 48}})
    two = build_config({**tiny_config_values, "name": "two", "dask": {"n_workers": 2},
                        "simulation": {"n_objects": 48, "chunk_size": 16}})
    stats = run_with_dask(simulate_flow, one, progress=False)
    assert stats["chunks"] == 1
    stats = run_with_dask(simulate_flow, two, progress=False)
    assert stats["chunks"] == 3 and stats["chunks_skipped"] == 0
    a, b = _arrays(one.run_dir), _arrays(two.run_dir)
    assert set(a) == set(b) and "noiseless" in a
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert not np.isnan(a["images"]).any()
    cat_one = read_truth_catalogue(one.run_dir / "catalogs" / "truth.parquet")
    cat_two = read_truth_catalogue(two.run_dir / "catalogs" / "truth.fits")
    for name in cat_one.colnames:
        np.testing.assert_array_equal(cat_one[name], cat_two[name])

    # A rerun of a finished simulation resumes every chunk and leaves the bytes as they were.
    again = run_with_dask(simulate_flow, two, progress=False)
    assert again["chunks_skipped"] == 3
    for name, values in _arrays(two.run_dir).items():
        np.testing.assert_array_equal(values, b[name], err_msg=name)


def test_whole_run_leaves_the_documented_run_directory(tiny_config_values):
    config = build_config(tiny_config_values)
    result = run_with_dask(run_flow, config, progress=False)
    run_dir = config.run_dir
    expected = ["config.yaml", "trainset.zarr", "catalogs/truth.fits", "catalogs/truth.parquet",
                "models/v001/weights.safetensors", "models/v001/meta.json", "models/v001/losses.csv",
                "models/v001/training_state.json", "report/evaluation.json", "report/inpainting.png",
                "report/samples.png", "report/statistics.png", "manifest.json"]
    for product in expected:
        assert (run_dir / product).exists(), product
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["seed"] == 12345 and manifest["config"]["simulation"]["n_objects"] == 48
    assert set(manifest["products"]) >= {"trainset.zarr", "catalogs/truth.fits", "models/v001"}
    newest_product = max(p.stat().st_mtime for p in run_dir.rglob("*") if p.name != "manifest.json")
    assert (run_dir / "manifest.json").stat().st_mtime >= newest_product

    group = open_store(run_dir / "trainset.zarr")
    images, masks = group["images"][:], group["masks"][:]
    inpainted, std = group["inpainted"][:], group["inpainted_std"][:]
    known = masks == 0
    np.testing.assert_array_equal(inpainted[known], images[known])  # known pixels never altered
    assert (std[known] == 0).all() and (std[~known] > 0).all()
    assert np.isfinite(inpainted).all()
    report = result["report"]
    assert set(report["inpainting"]["methods"]) == {"vaegan", "biharmonic", "interpolate"}
    assert report["inpainting"]["methods"]["vaegan"]["pixels"] > 0
    assert set(report["generation"]["models"]) == {"vaegan"}
    assert set(report["generation"]["temperature_sweep"]) == {"0.5", "1"}
    assert set(manifest["products"]) >= {"report/evaluation.json", "report/samples.png"}
    assert json.loads((run_dir / "report" / "evaluation.json").read_text()) == report


class _State:
    def __init__(self, error):
        self.error = error

    def result(self):
        if self.error is not None:
            raise self.error
        return 1


def test_chunk_tasks_retry_crashes_but_not_bad_input():
    from catalogs.errors import InputError
    from flows.tasks import worth_retrying

    assert worth_retrying(None, None, _State(OSError("worker lost"))) is True
    assert worth_retrying(None, None, _State(InputError("bad store", "x"))) is False
    assert worth_retrying(None, None, _State(None)) is False
