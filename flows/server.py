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
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_API_HOST, temporary_settings

SERVER_STARTUP_TIMEOUT_SECONDS = 90
LOOPBACK_HOST = "127.0.0.1"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


def is_loopback(url: str) -> bool:
    """Whether ``url`` points at this machine's loopback interface."""
    return urlparse(url).hostname in LOOPBACK_NAMES


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
        server.start(timeout=SERVER_STARTUP_TIMEOUT_SECONDS)
    url = server.api_url
    if not is_loopback(url):
        server.stop()
        raise RuntimeError(f"Prefect's temporary server came up on {url}, not on loopback; refusing to use it")
    return url


def _temporary_server_starting() -> tuple[str, Future[str]]:
    """Choose the temporary server's port now and start it in a thread: (its API URL, the start's future)."""
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    if not server.running and server.port is None:
        server.port = server.find_available_port()  # a loopback port, so the URL is known before the start
    pool = ThreadPoolExecutor(1, thread_name_prefix="prefect-server-start")
    started = pool.submit(start_temporary_server)
    pool.shutdown(wait=False)  # the thread ends with the start; the caller waits on the future
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
