"""``lensforge generate trainset``: a generated training set with the store schema and exact counterfactuals."""

from __future__ import annotations

import json
from pathlib import Path

import galsim
import numpy as np
import pytest
import yaml
from distributed import LocalCluster
from typer.testing import CliRunner

from lensforge import (
    catalogs,
    flows,  # noqa: F401 - quiet Prefect defaults
)
from lensforge.catalogs.manifest import sha256_of
from lensforge.catalogs.store import create_store
from lensforge.catalogs.truth import read_truth_catalogue
from lensforge.errors import InputError
from lensforge.flows.cli import app
from lensforge.flows.cluster import local_cluster_kwargs
from lensforge.flows.generated_set import (
    DEFAULT_DELTA_G,
    create_generated_store_task,
    generate_chunk_task,
    generated_set_config,
    generated_store_path,
    generation_device,
    progress_stage,
    run_generated_set,
)
from lensforge.models.checkpoint import load_checkpoint
from lensforge.pipeline.config import DaskConfig, build_config
from lensforge.pipeline.generative.training import model_dir, train_stage
from lensforge.pipeline.rundir import run_layout, store_path
from lensforge.pipeline.stamps.pairing import unit_noise
from lensforge.pipeline.stamps.simulate import simulate_stamps
from lensforge.seeding import Stream

N, SIZE, DELTA_G = 16, 32, 0.01


@pytest.fixture(scope="module")
def prefect_server(prefect_api_env):
    """The session's Prefect server (started once, shared with the other modules' flows)."""
    return prefect_api_env["PREFECT_API_URL"]


@pytest.fixture(scope="module")
def dask_address(prefect_server):
    """One Dask worker for every flow of the module (a LocalCluster per flow costs ~12 s of start-up).

    It also exercises the ``dask.address`` path: a worker that outlives a flow keeps its loaded model.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PREFECT_API_URL", prefect_server)  # the worker reports to the session's server
        cluster = LocalCluster(**local_cluster_kwargs(DaskConfig(n_workers=1)))
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


def _values(out_dir: Path, name: str, address: str | None = None) -> dict:
    # Zero constant shear: the two members of a ring pair are then the same galaxy rotated by 90 degrees.
    return {"name": name, "out_dir": str(out_dir), "seed": 12345, "survey": {"stamp_size": SIZE},
            "shear": {"kind": "constant", "g1": 0.0, "g2": 0.0},
            "simulation": {"n_objects": N, "chunk_size": 8, "counterfactual_delta_g": DELTA_G},
            "train": {"steps": 2, "batch_size": 8, "base_channels": 4, "latent_dim": 6, "checkpoint_every": 2,
                      "device": "cpu"},
            "dask": {"n_workers": 1, "address": address}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, dask_address):
    """A run with a tiny simulated store and a hybrid model trained on it for two steps (config file, config)."""
    out = tmp_path_factory.mktemp("runs")
    values = _values(out, "gen", dask_address)
    cfg = build_config(values)
    create_store(store_path(cfg), N, SIZE, 8, counterfactual_delta_g=DELTA_G)
    simulate_stamps(cfg, 0, N).write(store_path(cfg))
    train_stage(cfg, progress=False)
    config_file = out / "gen.yaml"
    config_file.write_text(yaml.safe_dump(values))
    return config_file, cfg


def _invoke(*args: str):
    return CliRunner().invoke(app, ["generate", "trainset", *args])


def test_without_a_trained_model_the_cli_fails_in_one_line(tmp_path):
    config_file = tmp_path / "nomodel.yaml"
    config_file.write_text(yaml.safe_dump(_values(tmp_path, "nomodel")))
    done = _invoke("--config", str(config_file), "--quiet")
    assert done.exit_code == 2, done.output
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no trained model; run `lensforge train` first" in lines[0], done.stderr
    assert not (tmp_path / "nomodel" / "generated").exists()


def test_names_config_and_device(tmp_path):
    cfg = build_config({"out_dir": str(tmp_path), "name": "r"})
    assert generated_store_path(cfg) == tmp_path / "r" / "generated" / "calibration.zarr"
    assert generated_store_path(cfg, "x.zarr") == generated_store_path(cfg, "x")
    for bad in ("../escape", "a/b", "", "x_truth", ".hidden"):
        with pytest.raises(InputError, match="generated set name"):
            generated_store_path(cfg, bad)
    assert cfg.simulation.counterfactual_delta_g is None
    assert generated_set_config(cfg).simulation.counterfactual_delta_g == DEFAULT_DELTA_G
    kept = build_config({"simulation": {"counterfactual_delta_g": 0.02}})
    assert generated_set_config(kept, 10).simulation.counterfactual_delta_g == 0.02
    assert generated_set_config(kept, 10).simulation.n_objects == 10
    assert generation_device(cfg) == "cpu"  # "auto" stays on the CPU: bytes do not depend on the machine
    assert generation_device(build_config({"train": {"device": "cuda:1"}})) == "cuda:1"
    assert progress_stage(generated_store_path(cfg)) == "generate-calibration"


@pytest.mark.slow  # a Prefect server, a Dask worker, two training steps and two flows: about 35 s
def test_generated_set_schema_counterfactuals_pairs_provenance_and_bytes(trained):
    config_file, cfg = trained
    done = _invoke("--config", str(config_file), "--n", str(N), "--quiet")
    assert done.exit_code == 0, done.output
    path = generated_store_path(cfg)
    assert f"generated set: {path}" in done.stdout and f"{N} stamps in" in done.stdout

    ts = catalogs.open(path)  # schema name, version and required arrays checked
    group = ts.store
    _, meta = load_checkpoint(model_dir(cfg, "hybrid"))
    attrs = dict(group.attrs)
    assert attrs["source"] == "generator" and attrs["generator_model_sha256"] == meta["weights_sha256"]
    assert attrs["generator_model_dir"] == "models/v001" and attrs["temperature"] == 1.0
    assert attrs["pixel_scale_arcsec"] == cfg.survey.pixel_scale_arcsec and attrs["run_seed"] == cfg.seed
    assert group["counterfactuals"].attrs["delta_g"] == DELTA_G

    images, noiseless = group["images"][:].astype(np.float64), group["noiseless"][:].astype(np.float64)
    counterfactuals = group["counterfactuals"][:].astype(np.float64)
    assert counterfactuals.shape == (N, 4, SIZE, SIZE)
    assert np.isfinite(images).all() and np.isfinite(counterfactuals).all()
    labels = {name: group[name][:] for name in ("object_id", "ring_pair_id", "ring_rotation", "noise_sigma",
                                                "counterfactual_id", "e1_intrinsic", "g1")}
    np.testing.assert_array_equal(labels["object_id"], np.arange(N))
    np.testing.assert_array_equal(labels["counterfactual_id"], np.arange(N))
    np.testing.assert_array_equal(labels["ring_pair_id"], np.arange(N) // 2)
    np.testing.assert_array_equal(labels["ring_rotation"], np.tile([0.0, 90.0], N // 2))
    assert np.isnan(labels["e1_intrinsic"]).all() and (labels["g1"] == 0).all()

    # The noise of every stamp is its own (paired) standard-normal field times its sigma: images - noiseless
    # and counterfactual - (the noiseless stamp at the shifted shear) are that same field, to float32 rounding.
    sigma = labels["noise_sigma"]
    noise = np.stack([sigma[i] * unit_noise(cfg.seed, Stream.GENERATED_NOISE, i, labels["ring_rotation"][i], True,
                                            (SIZE, SIZE)) for i in range(N)])
    ulp = np.spacing(np.abs(images).astype(np.float32)).astype(np.float64)
    assert np.all(np.abs(images - noiseless - noise) <= ulp)
    shifted = counterfactuals - noise[:, None]  # noiseless stamps at g1 +- dg, g2 +- dg (float32 rounding)
    assert np.all(np.abs(shifted - noiseless[:, None]) <= 0.02 * noiseless.max(axis=(1, 2))[:, None, None, None])
    # Ring partners share the latent (the same galaxy turned by 90 degrees) and their noise field is turned too.
    for a in range(0, N, 2):
        assert np.abs(noiseless[a + 1] - np.rot90(noiseless[a], k=-1)).max() < 0.02 * noiseless[a].max()
        np.testing.assert_allclose((images[a + 1] - noiseless[a + 1]) / sigma[a + 1],
                                   np.rot90((images[a] - noiseless[a]) / sigma[a], k=-1), atol=1e-3)
    # What changes between counterfactuals is pure shear: HSM on the noise-free shifted stamps sees +-dg.
    psf = galsim.Image(group["psf"][0].astype(np.float64), scale=cfg.survey.pixel_scale_arcsec)
    response = []
    for i in range(N):
        e = [galsim.hsm.EstimateShear(galsim.Image(shifted[i, k], scale=cfg.survey.pixel_scale_arcsec), psf,
                                      shear_est="KSB", strict=False) for k in range(4)]
        if all(r.error_message == "" for r in e):
            response.append([(e[0].corrected_g1 - e[1].corrected_g1) / (2 * DELTA_G),
                             (e[0].corrected_g2 - e[1].corrected_g2) / (2 * DELTA_G),
                             (e[2].corrected_g2 - e[3].corrected_g2) / (2 * DELTA_G)])
    r11, r21, r22 = np.median(response, axis=0)
    assert len(response) >= N // 2 and 0.7 < r11 < 1.3 and 0.7 < r22 < 1.3 and abs(r21) < 0.02, response

    # Truth catalogue and provenance sidecar beside the store.
    truth = read_truth_catalogue(path.parent / "calibration_truth.parquet")
    np.testing.assert_array_equal(truth["ring_pair_id"], labels["ring_pair_id"])
    assert (path.parent / "calibration_truth.fits").is_file()
    sidecar = json.loads(path.with_suffix(".json").read_text())
    digest = sha256_of(path)
    assert sidecar["store_sha256"] == digest and sidecar["seed"] == cfg.seed
    assert sidecar["model"]["weights_sha256"] == meta["weights_sha256"] and sidecar["temperature"] == 1.0
    assert sidecar["config"]["simulation"]["counterfactual_delta_g"] == DELTA_G
    assert catalogs.open(path).manifest == sidecar  # downstream users find the provenance through catalogs.open
    assert {"commit", "dirty"} <= set(sidecar["code_revision"]) and "galsim" in sidecar["package_versions"]
    assert not (cfg.run_dir / "manifest.json").exists() and not (cfg.run_dir / "config.yaml").exists()

    # The same inputs give the same bytes (another store, through the flow function).
    again = run_generated_set(generated_set_config(cfg), generated_store_path(cfg, "again"),
                              model_dir(cfg, "hybrid"), progress=False)
    assert again["chunks"] == 2 and again["chunks_skipped"] == 0 and again["store_sha256"] == digest
    assert again["n_objects"] == N and Path(again["sidecar"]).is_file()
    # Progress markers of their own stage (not the run's "simulate"): a rerun resumes finished chunks.
    assert run_layout(cfg).progress("generate-again").marker(8, 16).is_file()
    assert not run_layout(cfg).progress("simulate").marker(0, 8).exists()
    config = generated_set_config(cfg)
    skipped = generate_chunk_task.fn(config, str(path), str(model_dir(cfg, "hybrid")), meta["weights_sha256"],
                                     1.0, 0, 8)
    assert skipped["skipped"] and sha256_of(path) == digest

    # Another temperature under the same name is refused in one line; --overwrite starts the set afresh.
    done = _invoke("--config", str(config_file), "--quiet", "--temperature", "0.5")
    assert done.exit_code == 2 and len(done.stderr.strip().splitlines()) == 1, done.output
    assert "other temperature already exists" in done.stderr and path.with_suffix(".json").is_file()
    done = _invoke("--config", str(config_file), "--temperature", "0", "--quiet")
    assert done.exit_code == 2 and "--temperature must be > 0" in done.stderr
    attrs["temperature"] = 0.5
    create_generated_store_task.fn(config, str(path), attrs, overwrite=True)
    assert np.isnan(catalogs.open(path).store["images"][:]).all()  # empty again
    assert not run_layout(cfg).progress("generate-calibration").marker(0, 8).exists()
    assert not path.with_suffix(".json").exists()


@pytest.mark.slow  # a flow over the trained fixture's Dask worker: a few seconds
def test_a_set_rendered_in_torch_matches_the_galsim_set(trained):
    config_file, cfg = trained
    done = _invoke("--config", str(config_file), "--backend", "bogus", "--quiet")
    assert done.exit_code == 2 and len(done.stderr.strip().splitlines()) == 1 and "render.backend" in done.stderr
    reference = generated_store_path(cfg, "galsim_reference")
    run_generated_set(generated_set_config(cfg), reference, model_dir(cfg, "hybrid"), progress=False)
    done = _invoke("--config", str(config_file), "--backend", "torch", "--output", "torch_set", "--quiet")
    assert done.exit_code == 0, done.output
    path = generated_store_path(cfg, "torch_set")
    ours, theirs = catalogs.open(path).store, catalogs.open(reference).store
    peak = theirs["noiseless"][:].max(axis=(1, 2))
    for name in ("noiseless", "images"):
        difference = np.abs(ours[name][:].astype(np.float64) - theirs[name][:])
        assert (difference.max(axis=(1, 2)) < 1e-4 * peak).all(), name
    np.testing.assert_array_equal(ours["masks"][:], theirs["masks"][:])
    assert json.loads(path.with_suffix(".json").read_text())["config"]["render"]["backend"] == "torch"
