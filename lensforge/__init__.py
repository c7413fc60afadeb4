"""lensforge: weak-lensing survey simulation, patchy data, generative in-painting, training sets.

The package is one namespace over the repository's top-level folders:

- ``lensforge.flows``: the ``lensforge`` CLI, Prefect flows and deployments, Dask fan-out (top floor);
- ``lensforge.pipeline``: pure functions of arrays and a ``RunConfig``, one room per domain
  (``stamps``, ``radio``, ``generative``, ``inpaint``, ``tiles``, ``evaluation``, ``shear``);
- ``lensforge.models`` (torch networks, training, checkpoints) and ``lensforge.catalogs``
  (store schema, Zarr, truth catalogues, manifest, export): the products and the learner;
- the root modules every floor may import: :mod:`lensforge.errors`, :mod:`lensforge.atomic`,
  :mod:`lensforge.seeding`.

Imports point downward only (flows -> pipeline -> models, catalogs -> root); ``tests/test_layout.py``
enforces it.
"""

from pathlib import Path as _Path

__all__ = ["__version__"]

# Installed, the sub-packages sit inside this one (``package-dir`` in pyproject.toml). Imported from a
# source checkout instead (the repository on ``sys.path``, as when a Prefect worker loads
# ``flows/deployments.py`` from the repository), they are this folder's siblings: look there too.
_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "pipeline" / "__init__.py").is_file():
    __path__.append(str(_checkout))

try:
    from importlib.metadata import version as _version

    __version__ = _version("lensforge")
except Exception:  # noqa: BLE001 - running from a source tree that is not installed
    __version__ = "0+unknown"
