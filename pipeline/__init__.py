"""lensforge's science library: pure functions of arrays and a ``RunConfig``, one room per domain.

Root modules: ``config`` (the frozen ``RunConfig``), ``presets`` (survey presets), ``rundir``
(open a run directory for a configuration; the tree itself is :mod:`lensforge.layout`).

Rooms, bottom to top (a room imports only rooms below it; ``tests/test_layout.py`` checks):

- ``radio``: interferometer physics (antenna layouts, uv tracks, dirty imaging, the synthesized beam);
- ``stamps``: galaxy models, populations, lensing, survey PSFs, defects, ring pairs, the simulate stage;
- ``generative``: the train stage and physics-aware generation (decoder + GalSim lensing);
- ``inpaint``: in-painting methods, the store in-painting stage, windows over whole images;
- ``tiles``: survey tiles (plan, regions, render, radio tiles, detection, batch reprocessing);
- ``evaluation``: metrics, in-painting and generation evaluation, the report and its figures;
- ``shear``: shape measurement, calibration (m, c) and the validation harness.

Nothing here imports Prefect or Dask; ``lensforge.flows`` orchestrates these functions.
"""
