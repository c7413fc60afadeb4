"""Shared fixtures: quiet, offline Prefect in a temporary home; small configurations."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def prefect_api_env():
    """An environment for ``lensforge`` subprocesses that share one Prefect API for the whole session.

    Without it each command starts Prefect's temporary server (about 10 s). The server is the
    one this process's in-process flows use (``lensforge.flows.server.start_temporary_server``); it lives in
    pytest's process tree, so SIGKILLing a command's session leaves it up for the rerun.
    """
    from lensforge.flows.server import start_temporary_server

    return {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_API_URL": start_temporary_server()}


@pytest.fixture
def tiny_config_values(tmp_path: Path) -> dict:
    """A run small enough for a flow test: 48 stamps of 32x32, a few training steps."""
    return {
        "name": "tiny",
        "out_dir": str(tmp_path / "runs"),
        "seed": 12345,
        "survey": {"stamp_size": 32},
        "simulation": {"n_objects": 48, "chunk_size": 16},
        "train": {"steps": 6, "batch_size": 8, "base_channels": 8, "latent_dim": 8, "checkpoint_every": 3,
                  "device": "cpu"},
        "inpaint": {"n_samples": 2, "batch_size": 16},
        "evaluate": {"n_generate": 8, "n_morphology": 4, "temperatures": [0.5, 1.0], "workers": 1},
        "dask": {"n_workers": 2},
    }
