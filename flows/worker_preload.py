"""Dask worker preload for tile reprocessing: import the science stack when the worker starts.

A fresh worker process otherwise pays about 4 s (Prefect's task engine, photutils, scipy.signal,
scikit-image, astropy.convolution) inside its first task, at the start of every batch on a new
cluster. Importing them at worker start moves that cost to cluster start-up, once per worker
lifetime, where it overlaps with the flow process's own start.

``lensforge reprocess`` passes this module to the LocalCluster it starts (and to dask-jobqueue
workers); on an existing cluster start the workers with it:

    dask worker tcp://scheduler:8786 --preload flows.worker_preload
"""

from __future__ import annotations

import prefect.task_engine  # noqa: F401 - what a Prefect task run on a Dask worker needs first

import flows.reprocess  # noqa: F401 - the task's module (unpickled for every chunk)
import pipeline.detect  # noqa: F401 - photutils, astropy.convolution, scipy.signal
import pipeline.inpaint  # noqa: F401 - scikit-image's biharmonic solver, astropy interpolation
import pipeline.tile_inpaint  # noqa: F401
