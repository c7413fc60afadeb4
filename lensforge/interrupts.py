"""Ctrl-C and SIGTERM: stop at the next safe point, say so in one line, exit within seconds.

:func:`install` (the CLI calls it before a command runs) turns SIGINT and SIGTERM into
:class:`Interrupted` (a ``KeyboardInterrupt``) in the main thread, as Python does for SIGINT, and
arms a watchdog: a process still alive ``grace_s`` seconds after the first signal (a Dask cluster
that will not close, a request that waits on a dead server) prints the one line itself, ends its
child processes and exits. Every stage writes atomically with per-chunk markers, so stopping
anywhere loses no finished work; a rerun resumes.

Code that has a better place to stop (the training loop: at a step boundary, after saving its
state) runs inside :func:`deferred`: there a first signal only sets :func:`requested`, which the
code polls; a second signal interrupts at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
GRACE_S = 8.0  # the watchdog's limit: a process must be gone within 10 s of the signal
MESSAGE = "lensforge: interrupted; rerun the same command to resume"

_lock = threading.Lock()
_requested: int | None = None  # the first signal received
_deferring = 0
_announced = False
_watchdog: threading.Timer | None = None


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``signum`` says which."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def requested() -> int | None:
    """The signal that asked this process to stop, or None."""
    return _requested


def exit_code(signum: int | None = None) -> int:
    """128 + the signal number (130 for Ctrl-C, 143 for SIGTERM), the shell's convention."""
    return 128 + int(signum or _requested or signal.SIGINT)


def announce(message: str = MESSAGE) -> None:
    """Write ``message`` on stderr once per process (the CLI and the watchdog may both try)."""
    global _announced
    with _lock:
        if _announced:
            return
        _announced = True
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(message + "\n")
        sys.stderr.flush()


def check() -> None:
    """Raise :class:`Interrupted` when a signal asked this process to stop (a safe point)."""
    if _requested is not None:
        raise Interrupted(_requested)


def _handle(signum: int, frame) -> None:
    global _requested
    first = _requested is None
    if first:
        _requested = signum
        _arm_watchdog()
        # What stopping produces (a cluster whose start was cut short, cancelled requests, distributed's
        # sync() cancel callback failing on tornado's loop) is expected, not worth a traceback on
        # stderr: the command says it was interrupted, in one line.
        _silence("asyncio", "distributed", "prefect", "tornado", *_PREFECT_SERVICE_LOGGERS)
        # A call cut short between creating a coroutine and awaiting it (zarr's sync wrapper, asyncio
        # inside Prefect) leaves one behind, and Python warns about it at exit: expected here, not news.
        warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited", category=RuntimeWarning)
        if _deferring:
            return  # the deferring code stops at its next safe point
    raise Interrupted(signum)


# Prefect's background queue services log under their bare class names, outside the "prefect" family
# ("EventsWorker - Still processing items" while the stopping process drains its event queue).
_PREFECT_SERVICE_LOGGERS = ("EventsWorker", "APILogWorker")


def _silence(*families: str) -> None:
    """Raise every existing logger of these families to CRITICAL (a child with a level of its own
    would not follow its parent's)."""
    for name in [*families, *logging.root.manager.loggerDict]:
        if name.split(".")[0] in families:
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _end_children() -> None:
    """Terminate this process's child processes (Dask nanny and workers, Prefect's server), then kill."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with distributed
        return
    with contextlib.suppress(Exception):
        children = psutil.Process().children(recursive=True)
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.terminate()
        _, alive = psutil.wait_procs(children, timeout=0.5)
        for child in alive:
            with contextlib.suppress(psutil.Error):
                child.kill()


def _last_resort(grace_s: float) -> None:
    announce()
    _end_children()
    os._exit(exit_code())


def exit_after_interrupt(code: int) -> None:
    """End an interrupted command's process now, with ``code``, skipping interpreter shutdown.

    After a signal, library threads (Prefect's event loop and log shipper, Dask's comms) may still be
    writing when Python finalises; CPython then aborts ("could not acquire lock for <stderr> at
    interpreter shutdown") and the exit status becomes SIGABRT's. The one line is already out and every
    stage has written atomically, so nothing at exit is worth that: flush, end the children, remove the
    spawn wrapper and leave.
    """
    import shutil

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    _end_children()
    if _wrapper_dir is not None:
        shutil.rmtree(_wrapper_dir, ignore_errors=True)
    os._exit(code)


def _arm_watchdog(grace_s: float | None = None) -> None:
    global _watchdog
    if _watchdog is None:
        if grace_s is None:
            grace_s = float(os.environ.get("LENSFORGE_INTERRUPT_GRACE_S", GRACE_S))
        _watchdog = threading.Timer(grace_s, _last_resort, args=(grace_s,))
        _watchdog.daemon = True
        _watchdog.name = "lensforge-interrupt-watchdog"
        _watchdog.start()


def _unraisable(unraisable) -> None:
    """``sys.unraisablehook`` while installed: an :class:`Interrupted` raised where Python cannot raise (the
    signal landed inside a weakref or GC callback, such as importlib's module-lock cleanup) is dropped
    without its traceback. The request is recorded all the same, and the CLI ends with it (:func:`check`
    after the command). Anything else goes to the hook that was there before."""
    if isinstance(unraisable.exc_value, Interrupted):
        return
    _previous_unraisablehook(unraisable)


_previous_unraisablehook = sys.unraisablehook


def install() -> dict[int, object]:
    """Route SIGINT and SIGTERM to :class:`Interrupted` (main thread only); returns the previous handlers,
    for :func:`restore` (empty when not in the main thread)."""
    global _previous_unraisablehook
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
    for signum in SIGNALS:
        signal.signal(signum, _handle)
    if sys.unraisablehook is not _unraisable:
        _previous_unraisablehook = sys.unraisablehook
        sys.unraisablehook = _unraisable
    return previous


def shield_spawned_children() -> None:
    """Start multiprocessing's spawned children (Dask's workers) with SIGINT ignored from their first
    instruction: a Ctrl-C to the process group while a worker is still importing would otherwise print
    its traceback (:func:`dask_setup` only runs once the worker is up). A ``sh`` wrapper ignores SIGINT
    and execs this interpreter; an ignored signal stays ignored across exec, and Python keeps it so."""
    import atexit
    import multiprocessing
    import shutil
    import tempfile

    global _wrapper_dir
    if _wrapper_dir is not None or shutil.which("sh") is None:
        return
    _wrapper_dir = tempfile.mkdtemp(prefix="lensforge-spawn-")
    wrapper = os.path.join(_wrapper_dir, "python")
    with open(wrapper, "w") as handle:
        handle.write(f"#!/bin/sh\ntrap '' INT\nexec '{sys.executable}' \"$@\"\n")
    os.chmod(wrapper, 0o700)
    multiprocessing.set_executable(wrapper)
    atexit.register(shutil.rmtree, _wrapper_dir, True)


_wrapper_dir: str | None = None


def restore(previous: dict[int, object]) -> None:
    """Put back the handlers :func:`install` replaced, unless a signal arrived (the process is stopping)."""
    if _requested is None:
        for signum, handler in previous.items():
            if handler is not None:
                signal.signal(signum, handler)
        if previous and sys.unraisablehook is _unraisable:
            sys.unraisablehook = _previous_unraisablehook


def finish_quickly() -> None:
    """After an interrupt: end the child processes now (they got the signal too, or would keep working)."""
    if _requested is not None:
        _end_children()
        _skip_cluster_close_at_exit()


def _skip_cluster_close_at_exit() -> None:
    """Drop distributed's exit hook that closes every local cluster: its workers are already ended here,
    and a cluster whose start the signal cut short (a worker still in ``Status.init``) fails that close
    with an ``AssertionError`` traceback on stderr after the one line."""
    spec = sys.modules.get("distributed.deploy.spec")
    if spec is not None and hasattr(spec, "close_clusters"):
        import atexit

        atexit.unregister(spec.close_clusters)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A block whose code polls :func:`requested` at its safe points: the first signal only sets it.

    Installs the handlers for the block when nobody has (a library caller in the main thread).
    """
    global _deferring
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {s: signal.getsignal(s) for s in SIGNALS if signal.getsignal(s) is not _handle}
        for signum in previous:
            signal.signal(signum, _handle)
    with _lock:
        _deferring += 1
    try:
        yield
    finally:
        with _lock:
            _deferring -= 1
        for signum, handler in previous.items():
            signal.signal(signum, handler)



def dask_setup(worker=None) -> None:
    """Dask preload hook (``preload=["lensforge.interrupts"]``) of the workers a lensforge command starts:
    they ignore SIGINT and leave error reports to the flow.

    A Ctrl-C at the terminal signals the whole process group; each worker would die with a traceback
    while the command stops its cluster in order (the cluster ends its workers with SIGTERM).
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A task's error reaches the flow, which reports it (one line for lensforge and resource errors);
    # the worker's own "Compute Failed" log would repeat it as a page of traceback.
    logging.getLogger("distributed.worker").setLevel(logging.CRITICAL)
    # Task runs on a worker send Prefect events in the background; when the command stops its cluster
    # those sends fail with the closing client, which is the stop itself, not an error to print.
    logging.getLogger("prefect.events").setLevel(logging.CRITICAL)
    for name in _PREFECT_SERVICE_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
