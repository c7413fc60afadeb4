"""Shared by the hostile-input tests: hashing what exists before and after, and a small finished run.

Not a test module: the ``tests/test_hostile*.py`` modules import it (pytest puts ``tests/`` on the path).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from astropy.io import fits


def sha256_tree(*roots: Path) -> dict[str, str]:
    """Relative path -> sha256 of every regular file under ``roots`` (symlinks, FIFOs: their targets' names)."""
    digests = {}
    for root in roots:
        for path in sorted(root.rglob("*")) if root.exists() else ():
            key = f"{root.name}/{path.relative_to(root).as_posix()}"
            if path.is_symlink():
                digests[key] = f"-> {os.readlink(path)}"
            elif path.is_file():
                digests[key] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif not path.is_dir():
                digests[key] = "special"
    return digests


def finished_run(runs: Path, name: str, preset: str | None = None):
    """A small finished run, as the flows leave it: config, store, truth catalogue, promoted model, outputs."""
    from astropy.table import Table

    from lensforge.catalogs.store import create_store, finalize_store, write_objects
    from lensforge.models.checkpoint import save_checkpoint
    from lensforge.models.registry import promote
    from lensforge.models.vaegan import VAEGAN, ModelSettings
    from lensforge.pipeline.config import build_config
    from lensforge.pipeline.presets import deep_merge, preset_values
    from lensforge.pipeline.rundir import prepare_run_dir, store_path

    values = {"out_dir": str(runs), "name": name, "survey": {"stamp_size": 32},
              "simulation": {"n_objects": 8, "chunk_size": 4}, "train": {"device": "cpu", "steps": 10}}
    cfg = build_config(deep_merge(preset_values(preset), values) if preset else values)
    run_dir = prepare_run_dir(cfg)
    create_store(store_path(cfg), n_objects=8, stamp_size=32, chunk_size=4)
    write_objects(store_path(cfg), 0, {"object_id": np.arange(8), "g1": np.linspace(-0.05, 0.05, 8),
                                       "g2": np.zeros(8), "snr": np.linspace(20, 90, 8)})
    finalize_store(store_path(cfg))
    (run_dir / "catalogs").mkdir()
    Table({"object_id": np.arange(8), "g1": np.linspace(-0.05, 0.05, 8)}).write(run_dir / "catalogs" / "truth.fits")
    save_checkpoint(VAEGAN(ModelSettings(stamp_size=32, latent_dim=4, base_channels=4)), run_dir / "models" / "v001",
                    extra_meta={"step": 10, "train_settings": {"steps": 10, "objective": "hybrid"}})
    promote(run_dir / "models", "v001")
    (run_dir / "generated").mkdir()
    fits.PrimaryHDU(np.zeros((2, 32, 32), np.float32)).writeto(run_dir / "generated" / "samples.fits")
    (run_dir / "manifest.json").write_text(json.dumps({"lensforge_manifest_version": 1, "seed": cfg.seed}) + "\n")
    return run_dir
