"""The Dask cluster is configuration: a loopback LocalCluster by default, or an existing scheduler."""

from __future__ import annotations

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
        "dashboard_address": "127.0.0.1:0" if dask.dashboard else None,
        "silence_logs": 40,  # ERROR: keep worker start/stop chatter out of the run output
    }


def task_runner(dask: DaskConfig) -> DaskTaskRunner:
    """A Prefect ``DaskTaskRunner`` for this configuration."""
    if dask.address:
        return DaskTaskRunner(address=dask.address)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=local_cluster_kwargs(dask))
