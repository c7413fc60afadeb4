"""The run manifest: written last, its presence means the run directory is complete.

It records the effective configuration, the run seed, package versions, the code
revision and a SHA-256 checksum of every product, so two runs with the same inputs
can be compared byte for byte.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import subprocess
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lensforge.atomic import atomic_write_text
from lensforge.errors import InputError
from lensforge.layout import RunLayout

TRACKED_PACKAGES = ("lensforge", "galsim", "numpy", "astropy", "zarr", "torch", "prefect", "dask",
                    "distributed", "scikit-image", "safetensors", "xarray")


def sha256_of(path: str | Path) -> str:
    """SHA-256 of a file, or of a directory tree (relative paths and bytes, in sorted order)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file != path:
            digest.update(file.relative_to(path).as_posix().encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def package_versions(names: Iterable[str] = TRACKED_PACKAGES) -> dict[str, str | None]:
    """Installed version of each package (None where it is not installed)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def code_revision() -> dict[str, Any]:
    """Git commit of the lensforge source tree and whether it had uncommitted changes."""
    source = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source,
                                    capture_output=True, text=True, timeout=10, check=True).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def write_manifest(run_dir: str | Path, config: Mapping[str, Any], seed: int,
                   products: Iterable[str | Path], extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``<run_dir>/manifest.json`` atomically, checksumming each product (paths relative to run_dir)."""
    run_dir = Path(run_dir)
    checksums = {}
    for product in products:
        path = run_dir / product
        if not path.exists():
            raise InputError(f"{path}: product listed for the manifest does not exist", str(path))
        checksums[Path(product).as_posix()] = sha256_of(path)
    manifest = {
        "lensforge_manifest_version": 1,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "seed": seed,
        "config": dict(config),
        "code_revision": code_revision(),
        "package_versions": package_versions(),
        "products": checksums,
        **dict(extra or {}),
    }
    return atomic_write_text(RunLayout(run_dir).manifest, json.dumps(manifest, indent=2, sort_keys=False) + "\n")


_MANIFEST_FIELDS = ("lensforge_manifest_version", "created_utc", "seed", "config", "code_revision",
                    "package_versions", "products")


def refresh_manifest(run_dir: str | Path, stage: str) -> Path | None:
    """Re-checksum the products of an existing manifest after ``stage`` changed one of them in place.

    Without this, a standalone stage (``lensforge inpaint`` on a finished run) would leave a
    manifest whose checksum of the store no longer matches it. The run's configuration, seed
    and product list are kept; ``stage`` is appended to ``stages``. Returns None when the run
    has no manifest (it is incomplete, and stays so).
    """
    if not (RunLayout(run_dir).manifest).is_file():
        return None
    old = read_manifest(run_dir)
    extra = {key: value for key, value in old.items() if key not in _MANIFEST_FIELDS}
    extra["stages"] = [*[s for s in extra.get("stages", []) if s != stage], stage]
    return write_manifest(run_dir, old.get("config", {}), old.get("seed", 0), list(old.get("products", {})), extra)


def read_manifest(run_dir: str | Path) -> dict[str, Any]:
    """Read a run's manifest; ``InputError`` if the run is incomplete (no manifest) or it is not JSON."""
    path = RunLayout(run_dir).manifest
    if not path.is_file():
        raise InputError(f"{path}: no manifest, the run is incomplete", str(path))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError(f"{path}: manifest is not valid JSON", str(path)) from None
