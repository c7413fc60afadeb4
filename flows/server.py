"""One Prefect API for the flow process and every Dask worker process.

Without a configured ``PREFECT_API_URL`` Prefect starts a temporary local server in
each process that needs one, so every Dask worker would boot its own server (about
10 s each) and record its task runs there. Starting the temporary server once, here,
and exporting its URL makes the workers (which inherit the environment) report to
the same server as the flow.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any
from urllib.parse import urlparse

from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_API_HOST, temporary_settings

SERVER_STARTUP_TIMEOUT_SECONDS = 90
LOOPBACK_HOST = "127.0.0.1"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def is_loopback(url: str) -> bool:
    """Whether ``url`` points at this machine's loopback interface."""
    return urlparse(url).hostname in LOOPBACK_NAMES


# The temporary server runs in its own session, so a Ctrl-C at the terminal (SIGINT to the whole
# process group) reaches the lensforge process, which stops its work and reports to a server still up,
# but not uvicorn (whose start-up, interrupted, prints a traceback). It ends with the process that
# started it: Prefect stops it at interpreter exit, and, should that process die without exiting
# (SIGKILL), the server sees its stdin pipe close and exits too. Its output goes to a private
# temporary file, shown only if the start fails.
_SERVER_BOOTSTRAP = """
import os, signal, sys, threading
def _watch_parent():
    try:
        sys.stdin.buffer.read()
    finally:
        os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=_watch_parent, daemon=True).start()
from uvicorn.main import main
sys.argv[0] = "uvicorn"
main()
"""


def _detached_uvicorn_command(server: Any) -> Callable[[], subprocess.Popen]:
    """A replacement for ``SubprocessASGIServer._run_uvicorn_command`` (Prefect 3.8): the same uvicorn
    arguments and environment, in a new session, watching its parent through stdin, its output in a
    temporary file."""

    def run() -> subprocess.Popen:
        import prefect
        from prefect.settings import get_current_settings

        log = tempfile.TemporaryFile()
        process = subprocess.Popen(
            [sys.executable, "-c", _SERVER_BOOTSTRAP, "--app-dir", str(prefect.__module_path__.parent),
             "--factory", "prefect.server.api.server:create_app", "--host", LOOPBACK_HOST,
             "--port", str(server.port), "--log-level", "error", "--lifespan", "on"],
            env={**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
                 "PREFECT__SERVER_FINAL": "1",
                 **get_current_settings().to_environment_variables(exclude_unset=True)},
            stdin=subprocess.PIPE, stdout=log, stderr=log, start_new_session=True)
        process.lensforge_log = log  # type: ignore[attr-defined]
        return process

    return run


def _server_log(server: Any) -> str:
    log = getattr(server.server_process, "lensforge_log", None)
    if log is None:
        return ""
    with contextlib.suppress(OSError, ValueError):
        log.seek(0)
        return log.read().decode(errors="replace")[-2000:]
    return ""


def start_temporary_server() -> str:
    """Start (once per process) Prefect's temporary server on 127.0.0.1 and return its API URL.

    Prefect stops it at interpreter exit, after its log handler has flushed.
    """
    from prefect.server.api.server import SubprocessASGIServer

    # The temporary server has no authentication: it must listen on loopback only. Prefect passes
    # ``--host 127.0.0.1`` to uvicorn itself; the host setting is pinned too (a PREFECT_SERVER_API_HOST
    # of 0.0.0.0 in the environment must not reach it), and the address is checked, not assumed.
    with temporary_settings(updates={PREFECT_SERVER_API_HOST: LOOPBACK_HOST}):
        server = SubprocessASGIServer()  # the same singleton Prefect's own client would start
        if not server.running:
            server._run_uvicorn_command = _detached_uvicorn_command(server)
        try:
            server.start(timeout=SERVER_STARTUP_TIMEOUT_SECONDS)
        except Exception as err:
            output = _server_log(server)
            server.stop()
            if output:
                raise RuntimeError(f"{err}; the server said: {output}") from err
            raise
    url = server.api_url
    if not is_loopback(url):
        server.stop()
        raise RuntimeError(f"Prefect's temporary server came up on {url}, not on loopback; refusing to use it")
    return url


def _temporary_server_starting() -> tuple[str, Future[str]]:
    """Choose the temporary server's port now and start it in a thread: (its API URL, the start's future).

    A daemon thread: an interrupted command exits without waiting for the start to finish (the server,
    if it came up, ends with this process).
    """
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    if not server.running and server.port is None:
        server.port = server.find_available_port()  # a loopback port, so the URL is known before the start
    started: Future[str] = Future()

    def start() -> None:
        if not started.set_running_or_notify_cancel():
            return
        try:
            started.set_result(start_temporary_server())
        except BaseException as err:  # handed to the waiting caller
            started.set_exception(err)

    threading.Thread(target=start, name="prefect-server-start", daemon=True).start()
    return server.api_url, started


@contextlib.contextmanager
def shared_prefect_api(meanwhile: Callable[[], Any] | None = None) -> Iterator[str]:
    """Yield the Prefect API URL that this process and its Dask workers share.

    Uses the configured API (a real server, or a test harness) when there is one;
    otherwise starts Prefect's temporary server on 127.0.0.1. Prefect stops that server at
    interpreter exit, after its log handler has flushed (stopping it here loses the last logs).

    ``meanwhile`` runs while the temporary server starts, with the URL already exported, so
    processes it spawns (a Dask cluster's workers) inherit it: the two start-ups overlap.
    """
    url, started = PREFECT_API_URL.value(), None
    if not url:
        url, started = _temporary_server_starting()
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    try:
        if meanwhile is not None:
            if threading.current_thread() is threading.main_thread() and "'" not in sys.executable:
                from lensforge.interrupts import shield_spawned_children

                shield_spawned_children()  # the workers it starts ignore a Ctrl-C to the process group
            meanwhile()
        if started is not None:
            url = started.result()
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
