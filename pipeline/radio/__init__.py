"""Radio interferometry, bottom to top: ``layouts`` (antenna arrays), ``uv`` (Earth-rotation synthesis),
``imaging`` (visibilities, gridding, dirty image and beam, the observation), ``sky`` (a radio sky of
extended and compact sources) and ``beam`` (the synthesized beam of a configured array as a GalSim PSF).

The chain and its conventions follow Thompson, Moran & Swenson, *Interferometry and Synthesis in
Radio Astronomy*; :mod:`lensforge.pipeline.radio.imaging` states them.
"""
