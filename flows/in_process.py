"""Whether a job may run in this process: no Prefect server or Dask cluster to start for it.

Starting Prefect's temporary server and a LocalCluster costs 10-30 s on a laptop, more than a small
job's work. A job runs here when neither is configured (no ``dask.address`` or ``dask.jobqueue``, no
``PREFECT_API_URL``) and it is small: a simulate run below ``dask.in_process_below`` objects, a
reprocess call on one image. This module imports neither Prefect nor Dask, so the decision costs
nothing; a configured server or cluster is always used.
"""

from __future__ import annotations

import os
from pathlib import Path


def configured_prefect_api() -> str | None:
    """The Prefect API this process would report to (``PREFECT_API_URL`` in the environment or in a
    Prefect profile), if one is configured. Prefect's settings are read only when a profile file exists."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url
    home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH", home / "profiles.toml")).expanduser()
    if not profiles.is_file():
        return None
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None
