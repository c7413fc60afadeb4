"""Per-object random streams derived from (run seed, stream, object index).

Every random number lensforge draws comes from one of these streams, never from a
global RNG, so an object's pixels do not depend on which worker or chunk drew it.
"""

from __future__ import annotations

import hashlib
from enum import IntEnum

import galsim
import numpy as np


class Stream(IntEnum):
    """Independent random streams of one object (values are part of the seed: never reorder)."""

    GALAXY = 0  # intrinsic parameters and shear (per ring pair)
    NOISE = 1  # pixel noise (per object)
    MASK = 2  # defects (per object)
    LATENT = 3  # generator latent z (per ring pair), see lensforge.pipeline.generative.generate
    GENERATED_NOISE = 4  # pixel noise of generated stamps (per object)
    LENSING_FIELD = 5  # realisation of a shear power spectrum (per run)
    TILE_OBJECT = 6  # parameters and position of a tile's object (per tile, object)
    TILE_NOISE = 7  # sky and detector noise of a tile (per tile, 128x128 noise block)
    TILE_DEFECTS = 8  # detector artefacts of a tile (per tile)
    RADIO = 9  # radio sky, thermal noise and flags (per radio tile)
    REAL_GALAXY = 10  # COSMOS galaxy, orientation, noise padding (per ring pair); noise added to it
    VISIBILITY_NOISE = 11  # thermal noise of a radio stamp's visibilities (per object)


def stream_seed(run_seed: int, stream: Stream, index: int, *more: int) -> int:
    """A 32-bit non-zero seed for ``(run_seed, stream, index, *more)`` via ``numpy.random.SeedSequence``."""
    keys = [int(run_seed), int(stream), int(index), *(int(k) for k in more)]
    state = np.random.SeedSequence(keys).generate_state(1, dtype=np.uint32)
    return int(state[0]) or 1  # GalSim treats seed 0 as "seed from the clock"


def numpy_rng(run_seed: int, stream: Stream, index: int, *more: int) -> np.random.Generator:
    """A numpy Generator for one object's stream (``more`` adds keys, e.g. tile id then object index)."""
    keys = [int(run_seed), int(stream), int(index), *(int(k) for k in more)]
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(keys)))


def galsim_rng(run_seed: int, stream: Stream, index: int) -> galsim.BaseDeviate:
    """A GalSim deviate for one object's stream (used for GalSim noise)."""
    return galsim.BaseDeviate(stream_seed(run_seed, stream, index))


def stream_root(run_seed: int, stream: Stream) -> int:
    """A 63-bit seed for a whole stream, for APIs that take ``(seed, index)`` themselves (torch latents)."""
    state = np.random.SeedSequence([int(run_seed), int(stream)]).generate_state(1, dtype=np.uint64)[0]
    return int(state >> np.uint64(1))


def name_unit(name: str) -> float:
    """A uniform number in [0, 1) fixed by ``name`` alone: the first 8 bytes of sha256(name, UTF-8) / 2**64.

    Splits of real data by it (FIRST sources, COSMOS galaxies) survive reordering, subsetting or
    extending a file, and put the same object in the same split on every machine.
    """
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64
