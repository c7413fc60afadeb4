"""One defect model for stamps and tiles: a registered type per defect, rasterised per region.

A defect type (:class:`DefectType`) is a small class registered by name with
:func:`register_defect_type` and looked up with :func:`get_defect_type` (GalSim
``RegisterStampType`` style: an unknown name lists the valid ones). Each type

1. draws the geometry of its defects -- frozen primitives such as :class:`CosmicRay`,
   :class:`BadColumn` or :class:`BlankPatch` -- from a numpy Generator for an image of a given
   shape (:meth:`DefectType.draw`), and
2. rasterises that geometry into a boolean map of any rectangular region of the image
   (:meth:`DefectType.rasterise`, any object with pixel bounds ``y0, y1, x0, x1``), working from
   the image-level geometry and clipping afterwards, so any cut of an image into regions gives
   exactly the bits of the whole image.

A training stamp is one region covering the whole stamp (:func:`draw_bitmask`); a survey tile
draws its types once per tile and rasterises them region by region
(:mod:`lensforge.pipeline.tiles.defects`, which adds what only tiles have: detector chips and
bleed trails of saturated stars). Each type owns one plane of ``lensforge.catalogs.schema.MASK_BITS``.

Coordinates. Pixel ``(y, x)`` is ``array[y, x]`` of the whole image (0-based, numpy order); its
centre lies at the float coordinates ``(y, x)`` and it covers ``[y - 0.5, y + 0.5) x [x - 0.5, x + 0.5)``.
Float positions of primitives use the same frame, so a position ``v`` falls in pixel ``floor(v + 0.5)``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from skimage.draw import line as draw_line

from lensforge.catalogs.schema import MASK_BITS
from lensforge.errors import ConfigError, InputError
from lensforge.pipeline.config import MaskConfig, TileDefectConfig
from lensforge.seeding import Stream, numpy_rng

# A numpy index into a region's arrays: (rows, cols) arrays, (row slice, column), (row slice,
# column slice) or a boolean map of the region's shape.
PixelIndex = tuple[Any, Any] | np.ndarray


class PixelBounds(Protocol):
    """Pixels ``[y0, y1) x [x0, x1)`` of an image (e.g. a tile's ``Region`` or a :class:`PixelBox`)."""

    y0: int
    y1: int
    x0: int
    x1: int


@dataclass(frozen=True)
class PixelBox:
    """Pixels ``[y0, y1) x [x0, x1)`` of an image (0-based, numpy order, half-open)."""

    y0: int
    y1: int
    x0: int
    x1: int

    @classmethod
    def covering(cls, shape_pixels: tuple[int, int]) -> PixelBox:
        """The box of a whole ``(ny, nx)`` image [pixels]: a stamp is one region covering it all."""
        return cls(0, int(shape_pixels[0]), 0, int(shape_pixels[1]))

    @property
    def shape(self) -> tuple[int, int]:
        """(ny, nx) of the box [pixels]."""
        return self.y1 - self.y0, self.x1 - self.x0


def bounds_shape(bounds: PixelBounds) -> tuple[int, int]:
    """(ny, nx) of ``bounds`` [pixels]."""
    return bounds.y1 - bounds.y0, bounds.x1 - bounds.x0


def pixel_index(coordinate: float) -> int:
    """The pixel a float coordinate falls in [pixels] (round half up, unlike numpy's half-to-even)."""
    return int(math.floor(coordinate + 0.5))


def clip_pixels(rows: np.ndarray, cols: np.ndarray, bounds: PixelBounds) -> tuple[np.ndarray, np.ndarray]:
    """Bounds-local rows and columns of the image pixels ``(rows, cols)`` that lie inside ``bounds``.

    Args:
        rows: image rows [pixels].
        cols: image columns [pixels], same length as ``rows``.
        bounds: the region to keep.

    Returns:
        ``(rows, cols)`` relative to ``(bounds.y0, bounds.x0)``, in their original order.
    """
    keep = (rows >= bounds.y0) & (rows < bounds.y1) & (cols >= bounds.x0) & (cols < bounds.x1)
    return rows[keep] - bounds.y0, cols[keep] - bounds.x0


class Primitive(Protocol):
    """A piece of defect geometry in image coordinates."""

    def pixels_in(self, bounds: PixelBounds) -> PixelIndex | None:
        """Bounds-local numpy index of the pixels it covers inside ``bounds``, or None when it misses them."""


@dataclass(frozen=True)
class CosmicRay:
    """A straight cosmic-ray track from ``(y0, x0)`` to ``(y1, x1)`` [pixels, image frame]; may leave the image."""

    y0: float
    x0: float
    y1: float
    x1: float

    def pixels(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows and columns of every pixel the track crosses (image frame, unclipped).

        The track is rasterised with ``skimage.draw.line`` between the pixels holding its two
        end points, always from the primitive itself, so every region sees the same set.
        """
        return draw_line(pixel_index(self.y0), pixel_index(self.x0), pixel_index(self.y1), pixel_index(self.x1))

    def pixels_in(self, bounds: PixelBounds) -> tuple[np.ndarray, np.ndarray] | None:
        """Bounds-local ``(rows, cols)`` of the track's pixels inside ``bounds`` (each pixel once), or None."""
        ys = (pixel_index(self.y0), pixel_index(self.y1))
        xs = (pixel_index(self.x0), pixel_index(self.x1))
        # A bounding-box test skips the tracks far from this region cheaply (a tile holds ~10^5).
        if max(ys) < bounds.y0 or min(ys) >= bounds.y1 or max(xs) < bounds.x0 or min(xs) >= bounds.x1:
            return None
        return clip_pixels(*self.pixels(), bounds)


@dataclass(frozen=True)
class HotPixel:
    """A hot pixel at image pixel ``(y, x)``."""

    y: int
    x: int

    def pixels_in(self, bounds: PixelBounds) -> tuple[int, int] | None:
        """Bounds-local ``(row, col)`` of the pixel, or None when it lies outside ``bounds``."""
        if bounds.y0 <= self.y < bounds.y1 and bounds.x0 <= self.x < bounds.x1:
            return self.y - bounds.y0, self.x - bounds.x0
        return None


@dataclass(frozen=True)
class ColumnSegment:
    """Pixels ``[y_start, y_stop)`` of image column ``x``; may extend beyond the image."""

    x: int
    y_start: int
    y_stop: int

    def pixels_in(self, bounds: PixelBounds) -> tuple[slice, int] | None:
        """Bounds-local ``(row slice, column)`` of the segment inside ``bounds``, or None."""
        if not bounds.x0 <= self.x < bounds.x1:
            return None
        start, stop = max(self.y_start, bounds.y0), min(self.y_stop, bounds.y1)
        if start >= stop:
            return None
        return slice(start - bounds.y0, stop - bounds.y0), self.x - bounds.x0


@dataclass(frozen=True)
class BadColumn(ColumnSegment):
    """Dead pixels ``[y_start, y_stop)`` of image column ``x``, from a charge trap down to the readout row."""


@dataclass(frozen=True)
class BlankPatch:
    """A no-data rectangle ``[y0, y1) x [x0, x1)`` of the image."""

    y0: int
    y1: int
    x0: int
    x1: int

    def pixels_in(self, bounds: PixelBounds) -> tuple[slice, slice] | None:
        """Bounds-local ``(row slice, column slice)`` of the patch inside ``bounds``, or None."""
        y0, y1 = max(self.y0, bounds.y0), min(self.y1, bounds.y1)
        x0, x1 = max(self.x0, bounds.x0), min(self.x1, bounds.x1)
        if y0 >= y1 or x0 >= x1:
            return None
        return slice(y0 - bounds.y0, y1 - bounds.y0), slice(x0 - bounds.x0, x1 - bounds.x0)


@dataclass(frozen=True)
class SatelliteTrail:
    """A satellite trail along the line ``a * x + b * y + c = 0`` across the image [pixels].

    Pixels whose centre lies within ``width_pixels / 2`` of the line belong to the trail.
    ``(a, b)`` need not be normalised (the distance divides by ``hypot(a, b)``).
    """

    a: float
    b: float
    c: float
    width_pixels: float

    def __post_init__(self) -> None:
        if not (self.a or self.b):
            raise InputError("satellite trail needs a or b non-zero", (self.a, self.b))

    @classmethod
    def through(cls, y: float, x: float, angle_rad: float, width_pixels: float) -> SatelliteTrail:
        """The trail through point ``(y, x)`` [pixels] whose direction makes ``angle_rad`` with the +x axis."""
        a, b = -math.sin(angle_rad), math.cos(angle_rad)  # unit normal of the direction (cos, sin)
        return cls(a, b, -(a * x + b * y), width_pixels)

    def distance(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Distance [pixels] of pixel centres ``(rows, cols)`` from the line (broadcasting)."""
        # Pure element-wise arithmetic on image coordinates: the same numbers in every region.
        return np.abs(self.a * cols + self.b * rows + self.c) / math.hypot(self.a, self.b)

    def pixels_in(self, bounds: PixelBounds) -> np.ndarray:
        """Boolean map of ``bounds`` marking the pixels whose centre is within half the width of the line."""
        rows = np.arange(bounds.y0, bounds.y1, dtype=np.float64)[:, None]
        cols = np.arange(bounds.x0, bounds.x1, dtype=np.float64)[None, :]
        return self.distance(rows, cols) <= 0.5 * self.width_pixels


def rasterise(geometry: Iterable[Primitive], bounds: PixelBounds) -> np.ndarray:
    """Boolean map of ``bounds`` marking every pixel any of the primitives covers.

    Args:
        geometry: primitives in image coordinates (as drawn for the whole image).
        bounds: the region to rasterise [pixels, image frame].

    Returns:
        A ``(y1 - y0, x1 - x0)`` boolean array; the same pixels as the whole image's map cut to ``bounds``.
    """
    hit = np.zeros(bounds_shape(bounds), dtype=bool)
    for primitive in geometry:
        where = primitive.pixels_in(bounds)
        if where is not None:
            hit[where] = True
    return hit


class DefectType(ABC):
    """One kind of defect: draws its geometry for an image and rasterises it for any region.

    Attributes:
        name: the registry name (:func:`get_defect_type`).
        bit_name: the ``MASK_BITS`` plane its pixels carry.
    """

    name: str
    bit_name: str

    @abstractmethod
    def draw(self, rng: np.random.Generator, shape_pixels: tuple[int, int], config: Any) -> tuple[Primitive, ...]:
        """Draw the geometry of this defect for a whole image.

        Args:
            rng: the image's random stream; consumed in the order the type documents, so that
                the images of a run stay reproducible.
            shape_pixels: ``(ny, nx)`` of the image [pixels].
            config: the configuration section holding this type's rates and sizes.

        Returns:
            Primitives in image coordinates (possibly none).
        """

    def rasterise(self, geometry: Iterable[Primitive], bounds: PixelBounds) -> np.ndarray:
        """Boolean map of ``bounds`` marking the pixels ``geometry`` spoils (see :func:`rasterise`)."""
        return rasterise(geometry, bounds)


DEFECT_TYPES: dict[str, DefectType] = {}


def register_defect_type(kind: DefectType) -> DefectType:
    """Register a defect type under its name; its ``bit_name`` must be a ``MASK_BITS`` plane.

    Args:
        kind: the type to register (replaces a type registered under the same name).

    Returns:
        ``kind``, so that the call can wrap a module-level instance.
    """
    if kind.bit_name not in MASK_BITS:
        raise ConfigError(f"defect bit {kind.bit_name!r} is not one of {sorted(MASK_BITS)}", kind.bit_name)
    DEFECT_TYPES[kind.name] = kind
    return kind


def get_defect_type(name: str) -> DefectType:
    """The defect type registered as ``name``; an unknown name is a ConfigError listing the valid ones."""
    try:
        return DEFECT_TYPES[name]
    except KeyError:
        raise ConfigError(f"unknown defect type {name!r}; valid types: {', '.join(sorted(DEFECT_TYPES))}",
                          name) from None


def draw_defects(names: Sequence[str], config: Any, rng: np.random.Generator,
                 shape_pixels: tuple[int, int]) -> dict[str, tuple[Primitive, ...]]:
    """Draw the geometry of the named defect types for one image, one type after the other.

    Args:
        names: registered type names, in the order they consume ``rng`` (changing it changes every image).
        config: the configuration section the types read.
        rng: the image's random stream.
        shape_pixels: ``(ny, nx)`` of the image [pixels].

    Returns:
        Each name's primitives (image frame).
    """
    return {name: get_defect_type(name).draw(rng, shape_pixels, config) for name in names}


# --- Stamps: per-stamp chances and counts (``MaskConfig``). ---------------------------------------


class StampCosmicRays(DefectType):
    """Straight tracks of random direction and length, a Poisson number per stamp.

    Draws ``n ~ Poisson(cosmic_rays_per_stamp)``, then ray by ray a start ``U(0, ny) x U(0, nx)``
    (pixel-corner frame), a length ``U(1, cosmic_ray_length_max_pixels)`` and an angle ``U(0, pi)``
    from the +x axis. The end points are snapped to pixels as they are drawn (start: the pixel
    holding it; end: the nearest integer, half to even), the rule the stamps' masks are pinned to.
    """

    name = "stamp_cosmic_rays"
    bit_name = "COSMIC_RAY"

    def draw(self, rng: np.random.Generator, shape_pixels: tuple[int, int],
             config: MaskConfig) -> tuple[CosmicRay, ...]:
        rays = []
        for _ in range(rng.poisson(config.cosmic_rays_per_stamp)):
            y0, x0 = rng.uniform(0, shape_pixels[0]), rng.uniform(0, shape_pixels[1])
            length = rng.uniform(1, config.cosmic_ray_length_max_pixels)
            angle = rng.uniform(0, np.pi)
            y1, x1 = y0 + length * np.sin(angle), x0 + length * np.cos(angle)
            # Integer end points are pixel centres, so the track rasterises between exactly these pixels.
            rays.append(CosmicRay(float(int(y0)), float(int(x0)), float(int(round(y1))), float(int(round(x1)))))
        return tuple(rays)


class StampBadColumn(DefectType):
    """At most one column per stamp, dead from a random row to the readout edge (row 0), as a CCD trap does.

    Draws ``U(0, 1) < bad_column_probability``; if so, a column uniform over the stamp and an end
    row uniform in ``[ny // 4, ny]`` (the dead rows are ``[0, end)``).
    """

    name = "stamp_bad_column"
    bit_name = "BAD_COLUMN"

    def draw(self, rng: np.random.Generator, shape_pixels: tuple[int, int],
             config: MaskConfig) -> tuple[BadColumn, ...]:
        if rng.uniform() < config.bad_column_probability:
            column = rng.integers(0, shape_pixels[1])
            top = rng.integers(shape_pixels[0] // 4, shape_pixels[0] + 1)
            return (BadColumn(int(column), 0, int(top)),)
        return ()


class StampBlankPatch(DefectType):
    """At most one rectangle per stamp with no data (lost packets, compression blanks).

    Draws ``U(0, 1) < blank_patch_probability``; if so, height and width together, uniform in
    ``[blank_patch_size_min_pixels, blank_patch_size_max_pixels]`` (cut to the stamp), then a first
    row and a first column uniform over the positions that keep the patch inside the stamp.
    """

    name = "stamp_blank_patch"
    bit_name = "BLANK"

    def draw(self, rng: np.random.Generator, shape_pixels: tuple[int, int],
             config: MaskConfig) -> tuple[BlankPatch, ...]:
        if rng.uniform() < config.blank_patch_probability:
            height, width = rng.integers(config.blank_patch_size_min_pixels,
                                         config.blank_patch_size_max_pixels + 1, size=2)
            height, width = min(height, shape_pixels[0]), min(width, shape_pixels[1])
            y0 = rng.integers(0, shape_pixels[0] - height + 1)
            x0 = rng.integers(0, shape_pixels[1] - width + 1)
            return (BlankPatch(int(y0), int(y0 + height), int(x0), int(x0 + width)),)
        return ()


# --- Whole images: rates per pixel area or per image (``TileDefectConfig``). ---------------------


class CosmicRays(DefectType):
    """Straight tracks, a Poisson number per pixel area of the image.

    Draws ``n ~ Poisson(cosmic_rays_per_megapixel * ny * nx / 1e6)``; then arrays of ``n`` start rows
    ``U(-0.5, ny - 0.5)``, start columns ``U(-0.5, nx - 0.5)``, lengths ``U(1, cosmic_ray_length_max_pixels)``
    and angles ``U(0, pi)`` from the +x axis.
    """

    name = "cosmic_rays"
    bit_name = "COSMIC_RAY"

    def draw(self, rng: np.random.Generator, shape_pixels: tuple[int, int],
             config: TileDefectConfig) -> tuple[CosmicRay, ...]:
        ny, nx = shape_pixels
        n = rng.poisson(config.cosmic_rays_per_megapixel * ny * nx / 1e6)
        y0, x0 = rng.uniform(-0.5, ny - 0.5, n), rng.uniform(-0.5, nx - 0.5, n)
        length = rng.uniform(1.0, config.cosmic_ray_length_max_pixels, n)
        angle = rng.uniform(0.0, np.pi, n)
        y1, x1 = y0 + length * np.sin(angle), x0 + length * np.cos(angle)
        return tuple(CosmicRay(float(a), float(b), float(c), float(d))
                     for a, b, c, d in zip(y0, x0, y1, x1, strict=True))


class HotPixels(DefectType):
    """A fixed share of the image's pixels, all distinct.

    Draws ``n ~ Binomial(ny * nx, hot_pixel_fraction)``, then ``n`` distinct flat indices
    (``rng.choice(..., replace=False)``), kept in row-major order.
    """

    name = "hot_pixels"
    bit_name = "HOT_PIXEL"

    def draw(self, rng: np.random.Generator, shape_pixels: tuple[int, int],
             config: TileDefectConfig) -> tuple[HotPixel, ...]:
        ny, nx = shape_pixels
        n = rng.binomial(ny * nx, config.hot_pixel_fraction)
        flat = np.sort(rng.choice(ny * nx, size=n, replace=False))
        return tuple(HotPixel(int(i // nx), int(i % nx)) for i in flat)

    def rasterise(self, geometry: Iterable[HotPixel], bounds: PixelBounds) -> np.ndarray:
        """Boolean map of ``bounds`` marking the hot pixels (vectorised: an image may hold ~10^5)."""
        rows, cols = hot_pixel_arrays(tuple(geometry))
        hit = np.zeros(bounds_shape(bounds), dtype=bool)
        hit[clip_pixels(rows, cols, bounds)] = True
        return hit


def hot_pixel_arrays(pixels: Sequence[HotPixel]) -> tuple[np.ndarray, np.ndarray]:
    """Image rows and columns of ``pixels`` as int64 arrays."""
    rows = np.fromiter((p.y for p in pixels), dtype=np.int64, count=len(pixels))
    cols = np.fromiter((p.x for p in pixels), dtype=np.int64, count=len(pixels))
    return rows, cols


class SatelliteTrails(DefectType):
    """Straight trails across the whole image, a Poisson number per image.

    Draws ``n ~ Poisson(satellite_trails_per_tile)``; then ``n`` rows, ``n`` columns (a point uniform
    over the image, so the trail crosses it) and ``n`` angles ``U(0, pi)``.
    """

    name = "satellite_trails"
    bit_name = "SATELLITE"

    def draw(self, rng: np.random.Generator, shape_pixels: tuple[int, int],
             config: TileDefectConfig) -> tuple[SatelliteTrail, ...]:
        ny, nx = shape_pixels
        n = rng.poisson(config.satellite_trails_per_tile)
        ys, xs = rng.uniform(-0.5, ny - 0.5, n), rng.uniform(-0.5, nx - 0.5, n)
        angles = rng.uniform(0.0, np.pi, n)
        return tuple(SatelliteTrail.through(float(y), float(x), float(t), config.satellite_trail_width_pixels)
                     for y, x, t in zip(ys, xs, angles, strict=True))


class BlankPatches(DefectType):
    """No-data rectangles, a Poisson number per image.

    Draws ``n ~ Poisson(blank_patches_per_tile)``; then ``n`` heights and ``n`` widths uniform in
    ``[1, blank_patch_size_max_pixels]`` (cut to the image), then ``n`` first rows and ``n`` first
    columns uniform over the positions that keep the patch inside the image.
    """

    name = "blank_patches"
    bit_name = "BLANK"

    def draw(self, rng: np.random.Generator, shape_pixels: tuple[int, int],
             config: TileDefectConfig) -> tuple[BlankPatch, ...]:
        ny, nx = shape_pixels
        n = rng.poisson(config.blank_patches_per_tile)
        heights = np.minimum(rng.integers(1, config.blank_patch_size_max_pixels + 1, n), ny)
        widths = np.minimum(rng.integers(1, config.blank_patch_size_max_pixels + 1, n), nx)
        first_rows = rng.integers(0, ny - heights + 1) if n else np.zeros(0, dtype=int)
        first_cols = rng.integers(0, nx - widths + 1) if n else np.zeros(0, dtype=int)
        return tuple(BlankPatch(int(y), int(y + h), int(x), int(x + w))
                     for y, h, x, w in zip(first_rows, heights, first_cols, widths, strict=True))


for _kind in (StampCosmicRays(), StampBadColumn(), StampBlankPatch(), CosmicRays(), HotPixels(), SatelliteTrails(),
              BlankPatches()):
    register_defect_type(_kind)

# The order the stamp types consume an object's MASK stream (fixed: changing it changes every mask).
STAMP_DEFECT_TYPES: tuple[str, ...] = ("stamp_bad_column", "stamp_blank_patch", "stamp_cosmic_rays")


def draw_bitmask(masks: MaskConfig, run_seed: int, index: int, shape: tuple[int, int]) -> np.ndarray:
    """Object ``index``'s uint8 defect bitmask (0 = good pixel).

    The stamp is one region covering the whole stamp; its types are drawn from the object's MASK
    stream, so masks do not depend on chunking.

    Args:
        masks: per-stamp defect chances and sizes.
        run_seed: the run's seed.
        index: the object's index (selects its stream).
        shape: ``(ny, nx)`` of the stamp [pixels].

    Returns:
        A ``shape`` uint8 array, the OR of the ``MASK_BITS`` planes of every defect type.
    """
    rng = numpy_rng(run_seed, Stream.MASK, index)
    whole = PixelBox.covering(shape)
    bitmask = np.zeros(shape, dtype=np.uint8)
    for name, geometry in draw_defects(STAMP_DEFECT_TYPES, masks, rng, shape).items():
        kind = get_defect_type(name)
        bitmask[kind.rasterise(geometry, whole)] |= MASK_BITS[kind.bit_name]
    return bitmask
