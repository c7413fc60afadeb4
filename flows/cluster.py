"""The Dask cluster is configuration, and the one rule for fanning work out on it.

The cluster: a loopback LocalCluster by default, an existing scheduler (``dask.address``) or a
batch-system cluster (``dask.jobqueue``); :func:`flow_runtime` starts it beside Prefect's API.

The fan-out rule. **A stage is one Prefect task; its chunks are plain Dask tasks**
(:func:`map_on_cluster`). Prefect records every task run through its API (states, events,
logs), which costs a sizeable fraction of a CPU-second per task on a small machine, while Dask
schedules a task in about a millisecond; so Prefect sees the units an operator retries and
monitors, Dask sees the fine-grained work. The exceptions, each for a reason:

- **Survey tiles** (``lensforge.flows.tiles``): one Prefect task per *tile*, whose regions are
  Dask tasks submitted from inside it through ``distributed.worker_client``. A tile is minutes
  of work and the unit that fails and is retried alone, so it earns its own task run.
- **Reprocessing** (``lensforge.flows.reprocess``): Prefect tasks of ``tiles_per_task`` tiles
  (a bad tile becomes a failed row, a crashed chunk is retried) in a sliding window, each
  fanning groups of a few tiles out with ``worker_client``: one Prefect task per small tile
  would cost as much as the tile itself.
- **Generated sets and shear validation** (``lensforge.flows.generated_set``,
  ``lensforge.flows.shear_validation``): one Prefect task per store chunk, because each chunk is
  seconds of model inference or HSM fitting (the task-run overhead is small against it) and is
  retried alone after a lost worker.

Everything else (train, in-paint, evaluate) runs in the flow process: torch uses its cores.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import dask
from prefect_dask import DaskTaskRunner

from lensforge.errors import ConfigError, one_line
from lensforge.pipeline.config import DaskConfig

# Dask's nanny exports MALLOC_TRIM_THRESHOLD_=65536 to the workers it spawns, to hand freed memory
# back sooner. Any explicit trim threshold also freezes glibc's mmap threshold at 128 KiB, so every
# FFT buffer of a GalSim convolution becomes a fresh mmap and pays its page faults, which slows the
# drawing measurably. Unset, workers get glibc's adaptive thresholds like any Python process
# (README, "Performance notes"). ``dask worker`` in the containers reads the same setting from
# docker/dask.yaml.
WORKER_DASK_CONFIG = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
dask.config.set(WORKER_DASK_CONFIG)


def release_free_memory() -> None:
    """Hand the heap's free pages back to the OS (glibc ``malloc_trim``; nothing elsewhere).

    Without the nanny's trim threshold, freed stamp buffers stay in the worker's heap and its RSS
    creeps up with the number of chunks; trimmed once per chunk, as Dask's docs suggest ("Memory
    not released back to the OS"), the peak stays flat with the number of stamps.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.malloc_trim(0)


def _call_then_release(function: Callable[..., Any], *args: Any) -> Any:
    try:
        return function(*args)
    finally:
        release_free_memory()


# glibc raises its mmap threshold (up to 32 MB) each time a large block is freed; a chunk's arrays then
# come from the heap, which fragments, and a worker's resident memory creeps up chunk after chunk. A
# fixed threshold keeps large arrays in mmap, returned to the system when freed.
WORKER_ENVIRON = {"MALLOC_MMAP_THRESHOLD_": 1 << 20}


def use_worker_environ() -> None:
    """Add :data:`WORKER_ENVIRON` to the environment Dask's nannies give the worker processes they spawn
    (``distributed.nanny.pre-spawn-environ``); a value the user configured there wins."""
    current = dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {}
    dask.config.set({"distributed.nanny.pre-spawn-environ": {**WORKER_ENVIRON, **current}})


# What a Dask worker does besides its tasks, at distributed's defaults: a statistical profiler that samples
# the task thread's stack every 10 ms, a system monitor (psutil) every 500 ms, a memory monitor every 100 ms
# and an event-loop tick every 20 ms. On 2 cores shared with the scheduler and the flow, these slowed
# GalSim's drawing inside the workers ~15% against the same loop in a plain process pool (8192 stamps, 2
# workers: 9.0-9.9 s vs 8.3-8.4 s per worker; lensforge's chunks 9.8-10.3 s); with the values below,
# 8.4-8.9 s and 8.7-8.8 s. They make the dashboard's profile page empty and a worker over its memory limit is
# caught within 1 s instead of 0.1 s. A value the user configured (anything but distributed's default) wins.
QUIET_WORKER_CONFIG = {  # key: (distributed's default, lensforge's)
    "distributed.worker.profile.enabled": (True, False),
    "distributed.admin.system-monitor.interval": ("500ms", "2s"),
    "distributed.worker.memory.monitor-interval": ("100ms", "1s"),
    "distributed.admin.tick.interval": ("20ms", "200ms"),
}


def use_quiet_workers() -> None:
    """Set :data:`QUIET_WORKER_CONFIG` for the workers and scheduler started from this process (the nanny
    passes the process's Dask config on to its worker), except where the user configured a value."""
    for key, (default, quiet) in QUIET_WORKER_CONFIG.items():
        if dask.config.get(key, default=default) == default:
            dask.config.set({key: quiet})


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


JOBQUEUE_CLASSES = {"slurm": "dask_jobqueue.SLURMCluster", "pbs": "dask_jobqueue.PBSCluster"}


def jobqueue_kwargs(dask: DaskConfig) -> dict[str, Any]:
    """``DaskTaskRunner`` keyword arguments for a dask-jobqueue cluster (SLURM / PBS) of ``dask.jobqueue``."""
    jobs = dask.jobqueue
    cluster = {"cores": jobs.cores, "processes": jobs.processes, "memory": jobs.memory, "walltime": jobs.walltime,
               "job_extra_directives": list(jobs.job_extra_directives)}
    if jobs.queue:
        cluster["queue"] = jobs.queue
    if jobs.account:
        cluster["account"] = jobs.account
    return {"cluster_class": JOBQUEUE_CLASSES[jobs.kind], "cluster_kwargs": cluster,
            "adapt_kwargs": {"minimum_jobs": jobs.jobs, "maximum_jobs": jobs.jobs}}


SCHEDULER_TIMEOUT_S = 10
# A Dask handshake is a few hundred bytes; a length prefix beyond this is not Dask talking.
_HANDSHAKE_MAX_BYTES = 1 << 20
_NOT_DASK = "not a Dask scheduler (what answered there sent no Dask handshake)"


def _recv_exactly(sock: socket.socket, n: int, deadline: float) -> bytes:
    data = bytearray()
    while len(data) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionResetError
        data += chunk
    return bytes(data)


def _probe_tcp(address: str, timeout_s: float) -> str | None:
    """Why ``tcp://host:port`` is not a Dask server, or None when it opens with Dask's handshake.

    A Dask listener speaks first: right after the connection it sends its handshake, an 8-byte
    little-endian length and that many bytes of msgpack frames. Reading exactly that, with a
    deadline, tells a scheduler from a silent port (``Client`` would wait past its own timeout)
    and from a server sending a banner (``Client`` would read the banner as a length and try to
    allocate exabytes).
    """
    from distributed.comm import parse_host_port
    from distributed.protocol.core import loads
    from distributed.protocol.utils import unpack_frames

    host, port = parse_host_port(address.split("://", 1)[1])
    deadline = time.monotonic() + timeout_s
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except TimeoutError:
        return f"no Dask scheduler answered in {timeout_s:g} s (the connection timed out)"
    except OSError as err:
        return f"no Dask scheduler answered ({err.strerror or type(err).__name__})"
    with sock:
        try:
            (size,) = struct.unpack("Q", _recv_exactly(sock, 8, deadline))
            if not 0 < size <= _HANDSHAKE_MAX_BYTES:
                return _NOT_DASK
            frames, missing = unpack_frames(_recv_exactly(sock, size, deadline), partial=True)
            message = {"python": None} if missing else loads(frames)
        except TimeoutError:
            return f"no Dask scheduler answered in {timeout_s:g} s (something listens there but says nothing)"
        except OSError:
            return "no Dask scheduler answered (the server closed the connection without a Dask handshake)"
        except Exception:  # noqa: BLE001 - any garbage that does not decode is "not Dask"
            return _NOT_DASK
    if not isinstance(message, dict) or "python" not in message:
        return _NOT_DASK
    return None


def check_scheduler(address: str, timeout_s: float | None = None) -> None:
    """Raise a one-line ``ConfigError`` unless a Dask scheduler answers at ``address`` within ``timeout_s``
    (default ``SCHEDULER_TIMEOUT_S``, read at call time), whatever listens there: nothing, a silent
    server, or a server that sends a banner or garbage (a tcp:// address is probed first, see
    :func:`_probe_tcp`)."""
    from distributed import Client

    timeout_s = SCHEDULER_TIMEOUT_S if timeout_s is None else timeout_s
    start = time.monotonic()
    if address.startswith("tcp://"):
        why = _probe_tcp(address, timeout_s)
        if why is not None:
            raise ConfigError(f"dask.address {address}: {why}", address)
    left = max(timeout_s - (time.monotonic() - start), 1.0)
    try:
        with Client(address, timeout=f"{left:g}s"):
            pass
    except (OSError, TimeoutError) as err:
        raise ConfigError(f"dask.address {address}: no Dask scheduler answered in {timeout_s:g} s "
                          f"({type(err).__name__})", address) from None
    except Exception as err:  # noqa: BLE001 - a probe: whatever went wrong, the answer is one line
        raise ConfigError(f"dask.address {address}: not a Dask scheduler ({type(err).__name__}: "
                          f"{one_line(err, 200)})", address) from None


def _quiet_distributed_logs() -> None:
    # Prefect's logging setup lets the scheduler's INFO chatter (connections, retirements) through.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    # Workers that imported torch can take a few seconds to exit; the nanny then warns that it
    # killed them, which is expected at shutdown and not worth a line on every command.
    logging.getLogger("distributed.nanny").setLevel(logging.ERROR)


# The last preload of the workers lensforge starts: gc.freeze() after the others' imports (its docstring).
FREEZE_PRELOAD = "lensforge.flows.freeze_imports"


def task_runner(dask: DaskConfig, preload: Sequence[str] = ()) -> DaskTaskRunner:
    """A Prefect ``DaskTaskRunner`` for this configuration: an existing scheduler, a batch-system
    cluster (dask-jobqueue) or a loopback LocalCluster.

    ``preload``: modules every new worker imports at start (Dask's ``--preload``), so the first
    task does not pay them; an existing scheduler's workers were started by someone else and
    keep whatever preload they were given.
    """
    _quiet_distributed_logs()
    if dask.address:
        check_scheduler(dask.address)
        return DaskTaskRunner(address=dask.address)
    if dask.jobqueue is not None:
        if importlib.util.find_spec("dask_jobqueue") is None:
            raise ConfigError("dask.jobqueue needs dask-jobqueue: pip install -e '.[hpc]'", dask.jobqueue.kind)
        kwargs = jobqueue_kwargs(dask)
        if preload:
            kwargs["cluster_kwargs"]["worker_extra_args"] = [arg for name in (*preload, FREEZE_PRELOAD)
                                                             for arg in ("--preload", name)]
        return DaskTaskRunner(**kwargs)
    cluster = local_cluster_kwargs(dask)
    if preload:
        cluster["preload"] = [*preload, FREEZE_PRELOAD]
    use_worker_environ()
    use_quiet_workers()
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=cluster)


def is_local(dask: DaskConfig) -> bool:
    """Whether this configuration runs on a LocalCluster that lensforge starts (no address, no jobqueue)."""
    return not dask.address and dask.jobqueue is None


def start_local_cluster(dask: DaskConfig, preload: Sequence[str], stack: contextlib.ExitStack) -> DaskTaskRunner:
    """Start the loopback LocalCluster now (``stack`` closes it) and return a task runner connected to it.

    Prefect's runner would start it at the flow's first task submission, inside the flow's time;
    started here it can overlap with the Prefect server's start (``flow_runtime``).
    """
    from distributed import LocalCluster

    _quiet_distributed_logs()
    use_worker_environ()
    use_quiet_workers()
    with _own_environ_kept():
        # lensforge.interrupts: the workers ignore a Ctrl-C to the process group; this process stops them.
        cluster = stack.enter_context(LocalCluster(**local_cluster_kwargs(dask),
                                                   preload=[*preload, "lensforge.interrupts", FREEZE_PRELOAD]))
    return DaskTaskRunner(address=cluster.scheduler_address)


@contextlib.contextmanager
def _own_environ_kept() -> Iterator[None]:
    """Give this process back the variables of ``distributed.nanny.pre-spawn-environ`` once the block ends.

    A nanny writes them into its own process's ``os.environ`` before it spawns a worker, and leaves them
    there (distributed/nanny.py). The flow process then had OMP_NUM_THREADS=1: torch, first imported
    there after the cluster started, ran the train and in-paint stages on one thread: on 2 cores a default
    run trained its 3000 steps in 610 s, benchmarks/optical_training_length.py the same training outside a
    flow in 329 s. The workers keep theirs: they are spawned before the block ends.
    """
    names = set(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def flow_runtime(dask: DaskConfig, preload: Sequence[str] = (),
                 prepare: Callable[[], Any] | None = None) -> Iterator[DaskTaskRunner]:
    """The Dask task runner a flow runs with, inside the Prefect API its workers share.

    Order: the configured cluster is checked first (a wrong scheduler address fails in 10 s), then
    ``prepare()`` (say, a run directory) runs, then Prefect's temporary server (when no API is
    configured) and a LocalCluster start together, so their start-up times overlap. The
    LocalCluster stops when the block ends; existing and batch-system clusters are Prefect's runner's.
    """
    from lensforge.flows.server import shared_prefect_api

    runner = task_runner(dask, preload)
    if prepare is not None:
        prepare()
    with contextlib.ExitStack() as cluster_stack:
        def start_cluster() -> None:
            nonlocal runner
            runner = start_local_cluster(dask, preload, cluster_stack)

        with shared_prefect_api(meanwhile=start_cluster if is_local(dask) else None):
            yield runner


def map_on_cluster(function: Callable[..., Any], calls: Sequence[tuple]) -> Iterator[Any]:
    """Run ``function(*call)`` for every call, one Dask task each on the running flow's cluster, and
    yield the results as they finish (in this process when the flow has no Dask task runner).

    The fan-out rule's tool (see the module docstring): fine-grained work inside one coarse Prefect
    task. Each call ends by
    returning the worker's free heap to the OS (``release_free_memory``). The first error is
    raised and the remaining tasks are cancelled; a lost worker's tasks are rescheduled by Dask.
    """
    from distributed import as_completed
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    runner = context.task_runner if context is not None else None
    if not isinstance(runner, DaskTaskRunner):
        for call in calls:
            yield function(*call)
        return
    client = runner.client
    futures = client.map(_call_then_release, [function] * len(calls), *zip(*calls, strict=True), pure=False)
    try:
        for future in as_completed(futures, loop=client.loop):
            yield future.result()
    finally:
        client.cancel(futures)
