"""lensforge.flows.cluster: fine-grained work on the flow's Dask cluster, and the environment of its workers."""

from __future__ import annotations

import contextlib
import os

import pytest
from prefect import flow

from lensforge.errors import InputError
from lensforge.flows.cluster import map_on_cluster, start_local_cluster
from lensforge.pipeline.config import DaskConfig


def _square_and_pid(value: int) -> tuple[int, int]:
    return value * value, os.getpid()


def _fail_on_three(value: int) -> int:
    if value == 3:
        raise InputError("object 3 is bad", "3")
    return value


def _worker_environment(name: str) -> tuple[str, str | None]:
    return name, os.environ.get(name)


def test_without_a_dask_runner_the_calls_run_in_this_process():
    results = list(map_on_cluster(_square_and_pid, [(value,) for value in range(4)]))
    assert results == [(value * value, os.getpid()) for value in range(4)]


@pytest.fixture(scope="module")
def local_runner():
    """A two-worker LocalCluster as ``run_with_dask`` starts it, and a Prefect runner connected to it."""
    os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)  # in case a nanny of an earlier test exported it here
    with contextlib.ExitStack() as stack:
        yield start_local_cluster(DaskConfig(n_workers=2), ["lensforge.flows.tasks"], stack)


def test_inside_a_flow_every_call_runs_on_the_cluster_workers(local_runner, prefect_api_env):
    @flow(task_runner=local_runner)
    def squares() -> list[tuple[int, int]]:
        return list(map_on_cluster(_square_and_pid, [(value,) for value in range(8)]))

    results = squares()
    assert sorted(value for value, _ in results) == [value * value for value in range(8)]
    assert os.getpid() not in {pid for _, pid in results}  # not one of them ran in the flow process


def test_the_first_error_reaches_the_flow_as_raised(local_runner, prefect_api_env):
    @flow(task_runner=local_runner)
    def failing() -> list[int]:
        return list(map_on_cluster(_fail_on_three, [(value,) for value in range(6)]))

    with pytest.raises(InputError, match="object 3 is bad"):
        failing()


def test_workers_keep_glibc_adaptive_malloc_thresholds(local_runner, prefect_api_env):
    """Dask's nanny would export MALLOC_TRIM_THRESHOLD_=65536, which slows GalSim's FFTs ~25%."""
    @flow(task_runner=local_runner)
    def environment() -> dict[str, str | None]:
        return dict(map_on_cluster(_worker_environment, [("MALLOC_TRIM_THRESHOLD_",), ("OMP_NUM_THREADS",)]))

    worker = environment()
    assert worker["MALLOC_TRIM_THRESHOLD_"] is None
    assert worker["OMP_NUM_THREADS"] == "1"  # the rest of the nanny's environment is kept


def test_the_flow_process_keeps_its_own_thread_environment(monkeypatch):
    """A nanny writes OMP_NUM_THREADS=1 (and the rest of its pre-spawn environment) into the process that
    starts it; torch imported there afterwards would train on one thread. The workers still get it."""
    from distributed import Client

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    with contextlib.ExitStack() as stack:
        runner = start_local_cluster(DaskConfig(n_workers=1), [], stack)
        assert "OMP_NUM_THREADS" not in os.environ and "MALLOC_MMAP_THRESHOLD_" not in os.environ
        with Client(runner.address) as client:
            worker = next(iter(client.run(_worker_environment, "OMP_NUM_THREADS").values()))
    assert worker == ("OMP_NUM_THREADS", "1")


def _frozen_objects() -> int:
    import gc

    return gc.get_freeze_count()


def test_workers_freeze_their_preloaded_imports_out_of_the_collectors_way(local_runner, prefect_api_env):
    """flows.freeze_imports, the last preload: the objects of the workers' preloaded imports sit in gc's
    permanent generation, so a full collection inside a chunk does not scan them."""
    import gc

    @flow(task_runner=local_runner)
    def frozen() -> list[int]:
        return list(map_on_cluster(_frozen_objects, [()] * 2))

    assert gc.get_freeze_count() == 0  # this (test) process froze nothing
    assert min(frozen()) > 50_000  # lensforge.flows.tasks' imports: GalSim, Zarr, astropy, Prefect


_PINNED: list[bytearray] = []


def _heap_after_garbage(megabytes: int) -> int:
    """Free ``megabytes`` of heap buffers under a live allocation (fragmentation); return RSS in bytes."""
    import psutil

    buffers = [b"\x01" * (64 * 1024) for _ in range(megabytes * 16)]  # 64 KiB, written: heap pages in use
    _PINNED.append(bytearray(4096))  # malloc (not pymalloc), above them: glibc cannot just shrink the heap top
    del buffers
    return psutil.Process().memory_info().rss


def test_each_call_hands_freed_heap_back_to_the_os(local_runner, prefect_api_env):
    """Workers run without a malloc trim threshold (speed); map_on_cluster trims after every call."""
    @flow(task_runner=local_runner)
    def rss_after_calls() -> list[int]:
        return list(map_on_cluster(_heap_after_garbage, [(200,)] * 2))

    import psutil

    baseline = max(p.memory_info().rss for p in psutil.Process().children(recursive=True)
                   if "spawn_main" in " ".join(p.cmdline()))
    inside = rss_after_calls()  # each worker's RSS with the garbage freed but not yet handed back
    assert max(inside) > baseline + 150e6, (baseline, inside)
    after = max(p.memory_info().rss for p in psutil.Process().children(recursive=True)
                if "spawn_main" in " ".join(p.cmdline()))
    assert after < baseline + 100e6, (baseline, after)  # 200 MB went through the heap; little of it stays


def test_workers_get_a_fixed_mmap_threshold_and_a_users_setting_wins():
    import dask

    from lensforge.flows.cluster import WORKER_ENVIRON, use_worker_environ

    key = "distributed.nanny.pre-spawn-environ"
    with dask.config.set({key: {"OMP_NUM_THREADS": 1}}):
        use_worker_environ()
        assert dask.config.get(key) == {"OMP_NUM_THREADS": 1, **WORKER_ENVIRON}
    with dask.config.set({key: {"MALLOC_MMAP_THRESHOLD_": 4096}}):
        use_worker_environ()
        assert dask.config.get(key) == {"MALLOC_MMAP_THRESHOLD_": 4096}


def test_workers_run_quiet_unless_the_user_configured_otherwise():
    import dask

    from lensforge.flows.cluster import QUIET_WORKER_CONFIG, use_quiet_workers

    keys = list(QUIET_WORKER_CONFIG)
    defaults = {key: default for key, (default, _) in QUIET_WORKER_CONFIG.items()}
    with dask.config.set(defaults):
        use_quiet_workers()
        assert {key: dask.config.get(key) for key in keys} == {k: q for k, (_, q) in QUIET_WORKER_CONFIG.items()}
    with dask.config.set({**defaults, "distributed.worker.profile.enabled": True,
                          "distributed.admin.tick.interval": "50ms"}):
        use_quiet_workers()
        assert dask.config.get("distributed.admin.tick.interval") == "50ms"  # the user's value
        assert dask.config.get("distributed.worker.profile.enabled") is False  # True is the default: quieted
