"""Patchy data: per-stamp defect bitmasks (cosmic-ray tracks, bad columns, blank patches).

Each defect type is a small class registered by name and owns one bit of
``lensforge.catalogs.schema.MASK_BITS``; a stamp's bitmask is the OR of all types, drawn from
that object's MASK stream so masks do not depend on chunking.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
from skimage.draw import line as draw_line

from lensforge.catalogs.schema import MASK_BITS
from lensforge.errors import ConfigError
from lensforge.pipeline.config import MaskConfig
from lensforge.seeding import Stream, numpy_rng


class DefectModel(ABC):
    """One kind of defect: draws a boolean map of the pixels it spoils."""

    bit_name: str

    @abstractmethod
    def draw(self, rng: np.random.Generator, shape: tuple[int, int], masks: MaskConfig) -> np.ndarray:
        """Boolean (ny, nx) map of defective pixels."""


class CosmicRayTracks(DefectModel):
    """Straight tracks of random direction and length (Poisson number per stamp)."""

    bit_name = "COSMIC_RAY"

    def draw(self, rng: np.random.Generator, shape: tuple[int, int], masks: MaskConfig) -> np.ndarray:
        hit = np.zeros(shape, dtype=bool)
        for _ in range(rng.poisson(masks.cosmic_rays_per_stamp)):
            y0, x0 = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
            length = rng.uniform(1, masks.cosmic_ray_length_max_pixels)
            angle = rng.uniform(0, np.pi)
            y1, x1 = y0 + length * np.sin(angle), x0 + length * np.cos(angle)
            rows, cols = draw_line(int(y0), int(x0), int(round(y1)), int(round(x1)))
            inside = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
            hit[rows[inside], cols[inside]] = True
        return hit


class BadColumn(DefectModel):
    """A column dead from a random row to the readout edge (row 0), as a CCD trap does."""

    bit_name = "BAD_COLUMN"

    def draw(self, rng: np.random.Generator, shape: tuple[int, int], masks: MaskConfig) -> np.ndarray:
        hit = np.zeros(shape, dtype=bool)
        if rng.uniform() < masks.bad_column_probability:
            column = rng.integers(0, shape[1])
            top = rng.integers(shape[0] // 4, shape[0] + 1)
            hit[:top, column] = True
        return hit


class BlankPatch(DefectModel):
    """A rectangle with no data (lost packets, compression blanks)."""

    bit_name = "BLANK"

    def draw(self, rng: np.random.Generator, shape: tuple[int, int], masks: MaskConfig) -> np.ndarray:
        hit = np.zeros(shape, dtype=bool)
        if rng.uniform() < masks.blank_patch_probability:
            height, width = rng.integers(masks.blank_patch_size_min_pixels,
                                         masks.blank_patch_size_max_pixels + 1, size=2)
            height, width = min(height, shape[0]), min(width, shape[1])
            y0 = rng.integers(0, shape[0] - height + 1)
            x0 = rng.integers(0, shape[1] - width + 1)
            hit[y0:y0 + height, x0:x0 + width] = True
        return hit


DEFECT_MODELS: dict[str, DefectModel] = {}


def register_defect(model: DefectModel) -> DefectModel:
    """Register a defect model under its bit name (which must be a ``MASK_BITS`` name)."""
    if model.bit_name not in MASK_BITS:
        raise ConfigError(f"defect bit {model.bit_name!r} is not one of {sorted(MASK_BITS)}", model.bit_name)
    DEFECT_MODELS[model.bit_name] = model
    return model


for _model in (CosmicRayTracks(), BadColumn(), BlankPatch()):
    register_defect(_model)


def draw_bitmask(masks: MaskConfig, run_seed: int, index: int, shape: tuple[int, int]) -> np.ndarray:
    """Object ``index``'s uint8 defect bitmask (0 = good pixel)."""
    rng = numpy_rng(run_seed, Stream.MASK, index)
    bitmask = np.zeros(shape, dtype=np.uint8)
    for name in sorted(DEFECT_MODELS):  # fixed order keeps the stream's draws reproducible
        bitmask[DEFECT_MODELS[name].draw(rng, shape, masks)] |= MASK_BITS[name]
    return bitmask
