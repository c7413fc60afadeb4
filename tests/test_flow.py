"""Flows end to end on tiny configurations, under a real (temporary) Prefect server and Dask.

Byte-level determinism (workers, chunking, reruns) is in test_determinism.py; crash and resume
in test_crash.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from lensforge import flows  # noqa: F401 - quiet Prefect defaults
from lensforge.catalogs.store import open_store
from lensforge.flows.run import run_flow, run_with_dask
from lensforge.pipeline.config import build_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def prefect_server(prefect_api_env):
    """The session's Prefect server (started once, shared with the other modules' flows)."""
    return prefect_api_env["PREFECT_API_URL"]


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
    from lensforge.errors import InputError
    from lensforge.flows.tasks import worth_retrying

    assert worth_retrying(None, None, _State(OSError("worker lost"))) is True
    assert worth_retrying(None, None, _State(InputError("bad store", "x"))) is False
    assert worth_retrying(None, None, _State(None)) is False
