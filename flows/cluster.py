"""The Dask cluster is configuration: a loopback LocalCluster by default, or an existing scheduler."""

from __future__ import annotations

import logging
from typing import Any

from prefect_dask import DaskTaskRunner

from pipeline.config import DaskConfig


def local_cluster_kwargs(dask: DaskConfig) -> dict[str, Any]:
    """Keyword arguments for ``distributed.LocalCluster``: worker processes bound to 127.0.0.1."""
    return {
        "n_workers": dask.n_workers,
        "threads_per_worker": dask.threads_per_worker,
        "processes": True,
        "host": "127.0.0.1",
        # distributed always starts a small HTTP server (health, metrics); keep it on loopback, on a
        # free port unless the dashboard is wanted on its usual one.
        "dashboard_address": "127.0.0.1:8787" if dask.dashboard else "127.0.0.1:0",
        "silence_logs": logging.ERROR,
    }


def task_runner(dask: DaskConfig) -> DaskTaskRunner:
    """A Prefect ``DaskTaskRunner`` for this configuration."""
    # Prefect's logging setup lets the scheduler's INFO chatter (connections, retirements) through.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    # Workers that imported torch can take a few seconds to exit; the nanny then warns that it
    # killed them, which is expected at shutdown and not worth a line on every command.
    logging.getLogger("distributed.nanny").setLevel(logging.ERROR)
    if dask.address:
        return DaskTaskRunner(address=dask.address)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=local_cluster_kwargs(dask))
