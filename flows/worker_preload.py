"""Dask worker preload: import Prefect's task engine and every flow's science stack when the worker starts.

A fresh worker otherwise pays 2-4 s of imports (Prefect's task engine; GalSim and Zarr for
simulation; photutils, scipy.signal, scikit-image, astropy.convolution for tiles) inside its
first task, at the start of every run on a new cluster. Importing them at worker start moves
that cost to cluster start-up, once per worker lifetime, where it overlaps with the flow
process's own start.

``lensforge reprocess`` passes this module to the LocalCluster it starts (and to dask-jobqueue
workers); the other commands preload their own flow's module. Start the workers of an existing
cluster, which serve every flow, with it:

    dask worker tcp://scheduler:8786 --preload lensforge.flows.worker_preload
"""

from __future__ import annotations

import importlib

import prefect.task_engine  # noqa: F401 - what a Prefect task run on a Dask worker needs first

import lensforge.flows.reprocess  # noqa: F401 - the reprocess task's module (unpickled for every chunk)
import lensforge.flows.run  # noqa: F401 - the simulate / run flows' tasks: GalSim, Zarr, astropy tables
import lensforge.flows.tiles  # noqa: F401 - survey tiles: GalSim regions, FITS writing
import lensforge.pipeline.inpaint.images  # noqa: F401
import lensforge.pipeline.inpaint.stamps  # noqa: F401 - scikit-image's biharmonic solver, astropy interpolation
import lensforge.pipeline.tiles.detect  # noqa: F401 - photutils, astropy.convolution, scipy.signal
from lensforge.catalogs.truth import WRITER_MODULES

for _module in WRITER_MODULES:  # the truth catalogue's writers (pandas under astropy's Parquet writer)
    importlib.import_module(_module)

from lensforge.flows.freeze_imports import dask_setup  # noqa: E402, F401 - Dask calls it: gc.freeze() over the above
