"""lensforge orchestration: Prefect flows over the ``pipeline`` stages, and the ``lensforge`` CLI.

Importing this package sets quiet, offline-safe Prefect defaults (no analytics, no
telemetry calls; the caller's environment wins where it already sets them).
"""

import os

for _key, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # no network here: analytics calls would only error
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_UI_ENABLED": "false",
}.items():
    os.environ.setdefault(_key, _value)
