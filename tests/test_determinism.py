"""Determinism: the same seed gives the same bytes whatever the workers, the chunking or the run.

Each configuration is simulated once (module fixture, under a temporary Prefect server and real
Dask clusters) and the tests compare the run directories. The comparisons are of bytes: Zarr
chunk files and metadata, truth catalogues (FITS and Parquet), the manifest's product checksums.
What legitimately differs is named where it is excluded:

* ``config.yaml`` records the execution settings (``out_dir``, ``dask``), so runs with other
  worker counts or in other directories differ there and nowhere else;
* ``manifest.json`` records when it was written (``created_utc``), how long the stages took
  (``timings``) and the state of the source tree (``code_revision``), none of them a product.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from lensforge import flows  # noqa: F401 - quiet Prefect defaults
from lensforge.catalogs.manifest import read_manifest
from lensforge.catalogs.truth import read_truth_catalogue
from lensforge.flows.run import run_with_dask, simulate_flow
from lensforge.layout import CONFIG_NAME, MANIFEST_NAME, STORE_NAME
from lensforge.pipeline.config import build_config

pytestmark = pytest.mark.slow

# tests/conftest.py tiny_config_values, simulation part: 48 stamps of 32x32, three chunks of 16.
BASE = {"name": "tiny", "seed": 12345, "survey": {"stamp_size": 32}}
CATALOGUES = ("catalogs/truth.fits", "catalogs/truth.parquet")
NOT_PRODUCTS = ("created_utc", "timings", "code_revision")  # manifest fields that say when / how fast / from what tree


def _simulate(root: Path, n_workers: int, chunk_size: int):
    config = build_config({**BASE, "out_dir": str(root / "runs"), "dask": {"n_workers": n_workers},
                           "simulation": {"n_objects": 48, "chunk_size": chunk_size}})
    return config, run_with_dask(simulate_flow, config, progress=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prefect_api_env):
    """Run directories: 1 worker / chunks of 16 (then rerun fresh in the same place), 2 workers, 1 chunk of 48.

    The flows report to the session's Prefect server (conftest ``prefect_api_env``).
    """
    root = tmp_path_factory.mktemp("determinism")
    one, one_stats = _simulate(root / "one", 1, 16)
    original = root / "one-original" / "runs" / one.name
    original.parent.mkdir(parents=True)
    shutil.move(one.run_dir, original)  # keep it; the rerun below starts from nothing at the same path
    again, again_stats = _simulate(root / "one", 1, 16)
    two, two_stats = _simulate(root / "two", 2, 16)
    whole, whole_stats = _simulate(root / "whole", 1, 48)
    yield {"one": original, "rerun": again.run_dir, "two": two.run_dir, "whole": whole.run_dir,
           "rerun_config": again,
           "stats": {"one": one_stats, "rerun": again_stats, "two": two_stats, "whole": whole_stats}}


def _files(directory: Path, exclude: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file under ``directory`` by relative path, with its bytes."""
    return {path.relative_to(directory).as_posix(): path.read_bytes()
            for path in sorted(directory.rglob("*")) if path.is_file() and path.name not in exclude}


def _assert_same_files(a: dict[str, bytes], b: dict[str, bytes]) -> None:
    assert sorted(a) == sorted(b)
    different = [name for name in a if a[name] != b[name]]
    assert not different, f"files differ: {different}"


def _arrays(run_dir: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(run_dir / STORE_NAME, mode="r")
    return {name: group[name][:] for name in group.array_keys()}


def test_one_and_two_workers_write_identical_bytes(runs):
    one, two = runs["one"], runs["two"]
    assert runs["stats"]["one"]["chunks"] == runs["stats"]["two"]["chunks"] == 3
    assert runs["stats"]["two"]["chunks_skipped"] == 0
    stats = runs["stats"]["two"]  # the stage's wall time, accounted for: no step is longer than the whole
    steps = ("chunk_ramp_seconds", "chunk_gap_seconds", "chunk_tail_seconds", "catalogue_seconds")
    assert all(0 <= stats[step] < stats["simulate_seconds"] for step in steps), stats
    store = _files(one / STORE_NAME)
    assert any(name.startswith("images/c/") for name in store) and "zarr.json" in store
    _assert_same_files(store, _files(two / STORE_NAME))  # every chunk file and metadata document
    for catalogue in CATALOGUES:
        assert (one / catalogue).read_bytes() == (two / catalogue).read_bytes(), catalogue
    _assert_same_files(_files(one / ".progress"), _files(two / ".progress"))

    # The manifest checksums agree on every product; config.yaml differs by the execution settings only.
    products_one, products_two = read_manifest(one)["products"], read_manifest(two)["products"]
    assert set(products_one) >= {CONFIG_NAME, STORE_NAME, *CATALOGUES}
    assert set(products_one) == set(products_two)
    assert {k: v for k, v in products_one.items() if k != CONFIG_NAME} == \
        {k: v for k, v in products_two.items() if k != CONFIG_NAME}
    saved = [yaml.safe_load((run / CONFIG_NAME).read_text()) for run in (one, two)]
    assert saved[0]["dask"]["n_workers"] == 1 and saved[1]["dask"]["n_workers"] == 2
    for values in saved:
        del values["out_dir"], values["dask"]
    assert saved[0] == saved[1]


def test_chunk_size_changes_no_value(runs):
    one, whole = runs["one"], runs["whole"]
    assert runs["stats"]["whole"]["chunks"] == 1
    assert zarr.open_group(one / STORE_NAME, mode="r")["images"].chunks[0] == 16
    assert zarr.open_group(whole / STORE_NAME, mode="r")["images"].chunks[0] == 48
    a, b = _arrays(one), _arrays(whole)
    assert set(a) == set(b) and "noiseless" in a
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].tobytes() == b[name].tobytes(), name  # decoded bytes, NaN payloads included
    assert not np.isnan(a["images"]).any()
    for catalogue in CATALOGUES:
        assert (one / catalogue).read_bytes() == (whole / catalogue).read_bytes(), catalogue
    fits, parquet = (read_truth_catalogue(one / catalogue) for catalogue in CATALOGUES)
    assert fits.colnames == parquet.colnames
    for name in fits.colnames:  # the two formats hold the same values
        np.testing.assert_array_equal(fits[name], parquet[name], err_msg=name)


def test_a_rerun_reproduces_every_byte_and_a_resume_changes_none(runs):
    original, rerun = runs["one"], runs["rerun"]
    assert runs["stats"]["rerun"]["chunks_skipped"] == 0  # a fresh run, nothing resumed
    kept = _files(original, exclude=(MANIFEST_NAME,))
    assert {CONFIG_NAME, *CATALOGUES} <= set(kept)
    _assert_same_files(kept, _files(rerun, exclude=(MANIFEST_NAME,)))
    first, second = read_manifest(original), read_manifest(rerun)
    assert first["products"] == second["products"]
    assert {k: v for k, v in first.items() if k not in NOT_PRODUCTS} == \
        {k: v for k, v in second.items() if k not in NOT_PRODUCTS}

    # A rerun of a finished simulation in place resumes every chunk and leaves the bytes as they were.
    again = run_with_dask(simulate_flow, runs["rerun_config"], progress=False)  # the fixture's server is up
    assert again["chunks"] == again["chunks_skipped"] == 3
    _assert_same_files(kept, _files(rerun, exclude=(MANIFEST_NAME,)))
    assert read_manifest(rerun)["products"] == first["products"]


def test_a_small_run_done_in_process_writes_the_flows_bytes(runs, tmp_path, monkeypatch):
    """Below dask.in_process_below, with no cluster or server configured, `lensforge simulate` skips the
    Prefect server and the Dask cluster: the same chunks, run here, give the flow's files."""
    from lensforge.flows import stages
    from lensforge.flows.run import runs_in_process

    config = build_config({**BASE, "out_dir": str(tmp_path / "runs"), "dask": {"n_workers": 1},
                           "simulation": {"n_objects": 48, "chunk_size": 16}})
    monkeypatch.setattr("lensforge.flows.in_process.configured_prefect_api", lambda: None)
    assert runs_in_process(config)
    assert not runs_in_process(build_config({**config.to_dict(), "dask": {"in_process_below": 48}}))
    stats = stages.simulate(config, progress=False)
    assert stats["chunks"] == 3 and stats["chunks_skipped"] == 0
    kept = _files(runs["one"], exclude=(MANIFEST_NAME, CONFIG_NAME))
    _assert_same_files(kept, _files(config.run_dir, exclude=(MANIFEST_NAME, CONFIG_NAME)))
    saved = [yaml.safe_load((run / CONFIG_NAME).read_text()) for run in (runs["one"], config.run_dir)]
    for values in saved:
        del values["out_dir"]  # where the run is: the only setting that differs
    assert saved[0] == saved[1]
    products = [read_manifest(run)["products"] for run in (runs["one"], config.run_dir)]
    assert {k: v for k, v in products[0].items() if k != CONFIG_NAME} == \
        {k: v for k, v in products[1].items() if k != CONFIG_NAME}
