"""Optical detector artefacts of whole survey tiles: drawn once per tile, rasterised per region.

A tile (e.g. 4096 x 4096 pixels) is rendered region by region on different workers
(:mod:`lensforge.pipeline.tiles.regions`). Its artefacts therefore are not drawn as pixel maps but as
geometric primitives (:class:`TileDefects`), drawn once per tile from the tile's random
stream by :func:`draw_tile_defects` and handed to every region; :func:`apply_defects`
rasterises each primitive from its tile-level geometry and clips to the region afterwards,
so any cut of the tile gives exactly the same image, bitmask and variance as the whole tile.

Coordinates. Pixel ``(y, x)`` is ``array[y, x]`` of the whole tile (0-based, numpy order);
its centre lies at the float coordinates ``(y, x)`` and it covers ``[y - 0.5, y + 0.5) x
[x - 0.5, x + 0.5)``. Float positions of primitives use the same frame, so a position ``v``
falls in pixel ``floor(v + 0.5)``.

Chip layout. The tile is covered from its ``(0, 0)`` corner by a grid of detectors of
``chip_size_pixels`` separated by ``chip_gap_pixels`` dead rows/columns (pitch = size + gap;
no gap before the first detector; the last detector may be cut by the tile border). Each
detector reads out at its own lowest row, so a bad column runs from the detector's first row
to the charge trap. See :class:`ChipLayout`.

Charges are in electrons (``TileDefectConfig``) and converted to ADU with the gain when they
are added to an image.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from skimage.draw import line as draw_line

from lensforge.catalogs.schema import MASK_BITS
from lensforge.errors import InputError
from lensforge.pipeline.config import TileDefectConfig
from lensforge.pipeline.tiles.regions import Region

# One line per tile bitmask plane, for FITS headers (``MP_<name>`` style) and the docs.
DEFECT_BITS_DOC: dict[str, str] = {
    "COSMIC_RAY": "charge of a cosmic-ray track added (straight track, fixed charge per pixel)",
    "BAD_COLUMN": "dead column segment from a charge trap to the detector readout row; no data (value 0)",
    "SATURATED": "pixel reached the saturation level and was clipped to it",
    "BLEED": "charge bled along the column from a saturated star; value set to saturation",
    "SATELLITE": "pixel centre within half the trail width of a satellite trail; trail charge added",
    "CHIP_GAP": "dead gap between detectors; no data (value 0)",
    "EDGE": "within edge_pixels of a detector or tile border (data kept, flag only)",
    "BLANK": "blank patch (lost or corrupted data); no data (value 0)",
    "HOT_PIXEL": "hot pixel: fixed dark charge added",
}


def _pixel_index(coordinate: float) -> int:
    """The pixel a float coordinate falls in [pixels] (round half up, unlike numpy's half-to-even)."""
    return int(math.floor(coordinate + 0.5))


@dataclass(frozen=True)
class CosmicRay:
    """A straight cosmic-ray track from ``(y0, x0)`` to ``(y1, x1)`` [pixels, tile frame]; may leave the tile."""

    y0: float
    x0: float
    y1: float
    x1: float

    def pixels(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows and columns of every pixel the track crosses (tile frame, unclipped).

        The track is rasterised with ``skimage.draw.line`` between the pixels holding its two
        end points, always from the primitive itself, so every region sees the same set.
        """
        return draw_line(_pixel_index(self.y0), _pixel_index(self.x0), _pixel_index(self.y1), _pixel_index(self.x1))


@dataclass(frozen=True)
class HotPixel:
    """A hot pixel at tile pixel ``(y, x)``."""

    y: int
    x: int


@dataclass(frozen=True)
class BadColumn:
    """Dead pixels ``[y_start, y_stop)`` of tile column ``x`` (from a charge trap down to the readout row)."""

    x: int
    y_start: int
    y_stop: int


@dataclass(frozen=True)
class SatelliteTrail:
    """A satellite trail along the line ``a * x + b * y + c = 0`` across the tile [pixels].

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
        # Pure element-wise arithmetic on the tile coordinates: the same numbers in every region.
        return np.abs(self.a * cols + self.b * rows + self.c) / math.hypot(self.a, self.b)


@dataclass(frozen=True)
class BleedTrail:
    """Pixels ``[y_start, y_stop)`` of tile column ``x`` filled by charge bled from a saturated star.

    May extend beyond the tile; it is clipped when rasterised.
    """

    x: int
    y_start: int
    y_stop: int


@dataclass(frozen=True)
class BlankPatch:
    """A no-data rectangle ``[y0, y1) x [x0, x1)`` of the tile."""

    y0: int
    y1: int
    x0: int
    x1: int


@dataclass(frozen=True)
class ChipLayout:
    """Detectors of ``chip_ny x chip_nx`` pixels tiling the tile from ``(0, 0)``, ``gap_pixels`` apart.

    ``edge_pixels`` is the width [pixels] of the EDGE band inside every detector border and
    the tile border.
    """

    chip_ny: int
    chip_nx: int
    gap_pixels: int
    edge_pixels: int

    @classmethod
    def from_config(cls, config: TileDefectConfig) -> ChipLayout:
        """The layout of ``config`` (whose ``chip_size_pixels`` is ``(nx, ny)``)."""
        chip_nx, chip_ny = config.chip_size_pixels
        return cls(int(chip_ny), int(chip_nx), int(config.chip_gap_pixels), int(config.edge_pixels))

    def chips(self, shape: tuple[int, int]) -> list[Region]:
        """The in-tile part of every detector touching a ``(ny, nx)`` tile, in row-major order."""
        ny, nx = shape
        pitch_y, pitch_x = self.chip_ny + self.gap_pixels, self.chip_nx + self.gap_pixels
        return [Region(y0, min(y0 + self.chip_ny, ny), x0, min(x0 + self.chip_nx, nx))
                for y0 in range(0, ny, pitch_y) for x0 in range(0, nx, pitch_x)]

    def _axis(self, start: int, stop: int, size: int, chip: int) -> tuple[np.ndarray, np.ndarray]:
        """Gap and edge flags of tile coordinates ``[start, stop)`` along one axis of length ``size``."""
        coords = np.arange(start, stop)
        local = coords % (chip + self.gap_pixels)  # position inside the detector + gap period
        gap = local >= chip
        edge = (local < self.edge_pixels) | (local >= chip - self.edge_pixels)
        edge |= (coords < self.edge_pixels) | (coords >= size - self.edge_pixels)
        return gap, edge & ~gap

    def masks(self, region: Region, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Boolean ``(gap, edge)`` maps of ``region`` of a ``(ny, nx)`` tile (disjoint: gaps are not EDGE)."""
        gap_y, edge_y = self._axis(region.y0, region.y1, shape[0], self.chip_ny)
        gap_x, edge_x = self._axis(region.x0, region.x1, shape[1], self.chip_nx)
        gap = gap_y[:, None] | gap_x[None, :]
        return gap, (edge_y[:, None] | edge_x[None, :]) & ~gap


def chip_gap_mask(region: Region, shape: tuple[int, int],
                  config: TileDefectConfig) -> tuple[np.ndarray, np.ndarray]:
    """Chip-gap and EDGE maps of ``region`` of a ``(ny, nx)`` tile, from the coordinates alone.

    Args:
        region: the pixels to describe (tile frame).
        shape: ``(ny, nx)`` of the whole tile [pixels] (the tile border is an EDGE too).
        config: the chip layout (``chip_size_pixels`` (nx, ny), ``chip_gap_pixels``, ``edge_pixels``).

    Returns:
        ``(gap, edge)``: boolean arrays of ``region.shape``; gap pixels are never EDGE.
    """
    return ChipLayout.from_config(config).masks(region, shape)


@dataclass(frozen=True)
class TileDefects:
    """Every artefact primitive of one tile exposure (tile frame, pixels); picklable and comparable.

    ``bleed_trails`` come from the bright stars (:func:`bleed_trails_from_stamp`), not from
    :func:`draw_tile_defects`; add them with :meth:`with_bleed_trails`.
    """

    shape: tuple[int, int]
    chip_layout: ChipLayout
    cosmic_rays: tuple[CosmicRay, ...] = ()
    hot_pixels: tuple[HotPixel, ...] = ()
    bad_columns: tuple[BadColumn, ...] = ()
    satellite_trails: tuple[SatelliteTrail, ...] = ()
    blank_patches: tuple[BlankPatch, ...] = ()
    bleed_trails: tuple[BleedTrail, ...] = ()

    def with_bleed_trails(self, trails: tuple[BleedTrail, ...] | list[BleedTrail]) -> TileDefects:
        """A copy with ``trails`` appended to the bleed trails."""
        return dataclasses.replace(self, bleed_trails=self.bleed_trails + tuple(trails))

    @cached_property
    def _hot_pixel_index(self) -> tuple[np.ndarray, np.ndarray]:
        # Cached because a tile may hold ~10^5 hot pixels and every region asks for them.
        rows = np.fromiter((p.y for p in self.hot_pixels), dtype=np.int64, count=len(self.hot_pixels))
        cols = np.fromiter((p.x for p in self.hot_pixels), dtype=np.int64, count=len(self.hot_pixels))
        return rows, cols


def draw_tile_defects(config: TileDefectConfig, shape: tuple[int, int], rng: np.random.Generator) -> TileDefects:
    """Draw the artefact primitives of one ``(ny, nx)`` tile exposure (independent of any region).

    Draw order (fixed: changing it, or any count's distribution, changes every tile of a run):

    1. cosmic rays: ``n ~ Poisson(cosmic_rays_per_megapixel * ny * nx / 1e6)``; then arrays of
       ``n`` start rows ``U(-0.5, ny - 0.5)``, start columns ``U(-0.5, nx - 0.5)``, lengths
       ``U(1, cosmic_ray_length_max_pixels)`` and angles ``U(0, pi)`` from the +x axis;
    2. hot pixels: ``n ~ Binomial(ny * nx, hot_pixel_fraction)``, then ``n`` distinct flat
       indices (``rng.choice(..., replace=False)``), stored in row-major order;
    3. bad columns: for each detector in row-major order (:meth:`ChipLayout.chips`),
       ``n ~ Poisson(bad_columns_per_chip)``, then ``n`` columns uniform over the detector's
       in-tile columns and ``n`` trap rows uniform over its in-tile rows; the column is dead
       from the detector's first row (readout) to the trap row inclusive;
    4. satellite trails: ``n ~ Poisson(satellite_trails_per_tile)``; then ``n`` rows, ``n``
       columns (a point uniform over the tile, so the trail crosses it) and ``n`` angles ``U(0, pi)``;
    5. blank patches: ``n ~ Poisson(blank_patches_per_tile)``; then ``n`` heights and ``n`` widths
       uniform in ``[1, blank_patch_size_max_pixels]`` (cut to the tile), then ``n`` first rows
       and ``n`` first columns uniform over the positions that keep the patch inside the tile.

    Args:
        config: rates and sizes of the artefacts.
        shape: ``(ny, nx)`` of the tile [pixels].
        rng: the tile's random stream (consumed in the order above).

    Returns:
        The tile's primitives, without bleed trails.
    """
    ny, nx = int(shape[0]), int(shape[1])
    if ny < 1 or nx < 1:
        raise InputError(f"tile shape must be positive, got {shape}", shape)
    layout = ChipLayout.from_config(config)

    n = rng.poisson(config.cosmic_rays_per_megapixel * ny * nx / 1e6)
    y0, x0 = rng.uniform(-0.5, ny - 0.5, n), rng.uniform(-0.5, nx - 0.5, n)
    length = rng.uniform(1.0, config.cosmic_ray_length_max_pixels, n)
    angle = rng.uniform(0.0, np.pi, n)
    y1, x1 = y0 + length * np.sin(angle), x0 + length * np.cos(angle)
    cosmic_rays = tuple(CosmicRay(float(a), float(b), float(c), float(d))
                        for a, b, c, d in zip(y0, x0, y1, x1, strict=True))

    n = rng.binomial(ny * nx, config.hot_pixel_fraction)
    flat = np.sort(rng.choice(ny * nx, size=n, replace=False))
    hot_pixels = tuple(HotPixel(int(i // nx), int(i % nx)) for i in flat)

    bad_columns = []
    for chip in layout.chips((ny, nx)):
        n = rng.poisson(config.bad_columns_per_chip)
        columns = rng.integers(chip.x0, chip.x1, n)
        traps = rng.integers(chip.y0, chip.y1, n)
        bad_columns += [BadColumn(int(x), chip.y0, int(t) + 1) for x, t in zip(columns, traps, strict=True)]

    n = rng.poisson(config.satellite_trails_per_tile)
    ys, xs = rng.uniform(-0.5, ny - 0.5, n), rng.uniform(-0.5, nx - 0.5, n)
    angles = rng.uniform(0.0, np.pi, n)
    satellite_trails = tuple(SatelliteTrail.through(float(y), float(x), float(t), config.satellite_trail_width_pixels)
                             for y, x, t in zip(ys, xs, angles, strict=True))

    n = rng.poisson(config.blank_patches_per_tile)
    heights = np.minimum(rng.integers(1, config.blank_patch_size_max_pixels + 1, n), ny)
    widths = np.minimum(rng.integers(1, config.blank_patch_size_max_pixels + 1, n), nx)
    first_rows = rng.integers(0, ny - heights + 1) if n else np.zeros(0, dtype=int)
    first_cols = rng.integers(0, nx - widths + 1) if n else np.zeros(0, dtype=int)
    blank_patches = tuple(BlankPatch(int(y), int(y + h), int(x), int(x + w))
                          for y, h, x, w in zip(first_rows, heights, first_cols, widths, strict=True))

    return TileDefects((ny, nx), layout, cosmic_rays, hot_pixels, tuple(bad_columns), satellite_trails,
                       blank_patches)


def bleed_trails_from_stamp(noiseless_stamp_adu: np.ndarray, y0: int, x0: int,
                            saturation_adu: float) -> tuple[BleedTrail, ...]:
    """Bleed trails of a bright star whose noiseless stamp has its ``[0, 0]`` at tile pixel ``(y0, x0)``.

    In each stamp column with pixels above ``saturation_adu`` the excess charge
    ``sum(value - saturation)`` over those pixels spills along the column (the CCD readout
    direction) and fills ``ceil(excess / saturation)`` pixels to saturation beyond the saturated
    run (first to last saturated pixel of the column): half below it and half above it, the odd
    pixel going above (away from the readout row). The run itself is not part of a trail: it is
    flagged SATURATED when :func:`apply_defects` clips the image.

    Simplifications: the receiving pixels are assumed empty (their own sky and star charge is
    ignored) and fill exactly to saturation; no charge bleeds sideways, and trails neither stop at
    detector borders nor at other stars' trails (they are only clipped to the tile); gain and
    full well are folded into ``saturation_adu``.

    Args:
        noiseless_stamp_adu: the star's noise-free ``(ny, nx)`` image [ADU].
        y0, x0: tile pixel of the stamp's ``[0, 0]`` [pixels].
        saturation_adu: saturation level [ADU] (> 0).

    Returns:
        Trails in tile coordinates, two per saturated column at most (below first), columns ascending;
        they may extend outside the tile.
    """
    if not saturation_adu > 0:
        raise InputError(f"saturation_adu must be > 0, got {saturation_adu}", saturation_adu)
    stamp = np.asarray(noiseless_stamp_adu, dtype=np.float64)
    if stamp.ndim != 2:
        raise InputError(f"stamp must be 2-D, got shape {stamp.shape}", stamp.shape)
    trails: list[BleedTrail] = []
    for col in np.flatnonzero((stamp > saturation_adu).any(axis=0)):
        values = stamp[:, col]
        rows = np.flatnonzero(values > saturation_adu)
        excess = float(np.sum(values[rows] - saturation_adu))
        n_bleed = math.ceil(excess / saturation_adu)
        n_below = n_bleed // 2
        first, stop = y0 + int(rows[0]), y0 + int(rows[-1]) + 1
        x = x0 + int(col)
        if n_below:
            trails.append(BleedTrail(x, first - n_below, first))
        if n_bleed - n_below:
            trails.append(BleedTrail(x, stop, stop + n_bleed - n_below))
    return tuple(trails)


def _clip_column(region: Region, x: int, y_start: int, y_stop: int) -> tuple[slice, int] | None:
    """Region-local (row slice, column) of tile column segment ``x, [y_start, y_stop)``, or None if outside."""
    if not region.x0 <= x < region.x1:
        return None
    start, stop = max(y_start, region.y0), min(y_stop, region.y1)
    if start >= stop:
        return None
    return slice(start - region.y0, stop - region.y0), x - region.x0


def apply_defects(defects: TileDefects, region: Region, tile_shape: tuple[int, int], image: np.ndarray,
                  bitmask: np.ndarray, variance: np.ndarray | None, gain_e_per_adu: float, saturation_adu: float,
                  config: TileDefectConfig) -> None:
    """Rasterise a tile's artefacts into one region's arrays, in place.

    Every step works pixel by pixel from tile-level geometry (tracks rasterised whole and then
    clipped, distances from tile coordinates), so region-by-region rendering is bit-identical to
    whole-tile rendering. Steps, in this order for every region:

    1. cosmic rays: ``cosmic_ray_charge_e / gain`` added on every track pixel, COSMIC_RAY
       (overlapping tracks add up, in track order);
    2. hot pixels: ``hot_pixel_charge_e / gain`` added, HOT_PIXEL;
    3. satellite trails: ``satellite_trail_charge_e / gain`` added where the pixel centre is within
       ``width_pixels / 2`` of the line, SATELLITE;
    4. saturation: pixels ``>= saturation_adu`` set to ``saturation_adu``, SATURATED;
    5. bleed trails: set to ``saturation_adu``, BLEED;
    6. bad columns: set to 0, BAD_COLUMN (a dead column collects no charge);
    7. blank patches: set to 0, BLANK;
    8. chip gaps: set to 0, CHIP_GAP;
    9. EDGE: flag only, the data are kept.

    Bits accumulate (OR), so a no-data pixel may still carry the bits of charge drawn before it
    was emptied. Variance: the added charges are deterministic (no noise is drawn for them), so
    the variance plane keeps describing the noise that is in the image and is left unchanged,
    also on clipped pixels; it is set to 0 where there are no data (steps 6-8), which carry
    image value 0 and must be recognised by their bits.

    Args:
        defects: the tile's primitives (geometry and chip layout).
        region: the pixels the arrays hold (tile frame).
        tile_shape: ``(ny, nx)`` of the whole tile [pixels]; must equal ``defects.shape``.
        image: ``region.shape`` float image [ADU] (sky + objects + noise), modified in place.
        bitmask: ``region.shape`` integer bitmask (int32, ``MASK_BITS``), OR-ed in place.
        variance: ``region.shape`` variance [ADU^2] or None, modified in place.
        gain_e_per_adu: gain [e-/ADU] (> 0).
        saturation_adu: saturation level [ADU].
        config: charges [e-]; its chip layout must match ``defects.chip_layout``.
    """
    if tuple(tile_shape) != tuple(defects.shape):
        raise InputError(f"tile_shape {tuple(tile_shape)} differs from the defects' tile {defects.shape}", tile_shape)
    if region.y1 > tile_shape[0] or region.x1 > tile_shape[1]:
        raise InputError(f"{region} does not fit in tile {tuple(tile_shape)}", region)
    if ChipLayout.from_config(config) != defects.chip_layout:
        raise InputError("config's chip layout differs from the one the defects were drawn with", config)
    for name, array in (("image", image), ("bitmask", bitmask), ("variance", variance)):
        if array is not None and array.shape != region.shape:
            raise InputError(f"{name} has shape {array.shape}, region {region.shape}", array.shape)
    if not np.issubdtype(bitmask.dtype, np.integer) or np.iinfo(bitmask.dtype).max < max(MASK_BITS.values()):
        raise InputError(f"bitmask dtype {bitmask.dtype} cannot hold every MASK_BITS plane (use int32)", bitmask.dtype)
    if not gain_e_per_adu > 0:
        raise InputError(f"gain_e_per_adu must be > 0, got {gain_e_per_adu}", gain_e_per_adu)

    def inside(rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keep = (rows >= region.y0) & (rows < region.y1) & (cols >= region.x0) & (cols < region.x1)
        return rows[keep] - region.y0, cols[keep] - region.x0

    # 1. Cosmic rays. A bounding-box test skips the tracks far from this region cheaply.
    charge = config.cosmic_ray_charge_e / gain_e_per_adu
    for ray in defects.cosmic_rays:
        ys = (_pixel_index(ray.y0), _pixel_index(ray.y1))
        xs = (_pixel_index(ray.x0), _pixel_index(ray.x1))
        if max(ys) < region.y0 or min(ys) >= region.y1 or max(xs) < region.x0 or min(xs) >= region.x1:
            continue
        rows, cols = inside(*ray.pixels())
        image[rows, cols] += charge  # skimage's line visits each pixel once, so no repeated index
        bitmask[rows, cols] |= MASK_BITS["COSMIC_RAY"]

    # 2. Hot pixels (distinct by construction).
    rows, cols = inside(*defects._hot_pixel_index)
    image[rows, cols] += config.hot_pixel_charge_e / gain_e_per_adu
    bitmask[rows, cols] |= MASK_BITS["HOT_PIXEL"]

    # 3. Satellite trails, from the analytic distance of the tile coordinates of pixel centres.
    tile_rows = np.arange(region.y0, region.y1, dtype=np.float64)[:, None]
    tile_cols = np.arange(region.x0, region.x1, dtype=np.float64)[None, :]
    charge = config.satellite_trail_charge_e / gain_e_per_adu
    for trail in defects.satellite_trails:
        hit = trail.distance(tile_rows, tile_cols) <= 0.5 * trail.width_pixels
        image[hit] += charge
        bitmask[hit] |= MASK_BITS["SATELLITE"]

    # 4. Saturation of everything charged so far.
    full = image >= saturation_adu
    image[full] = saturation_adu
    bitmask[full] |= MASK_BITS["SATURATED"]

    # 5. Bleed trails.
    for bleed in defects.bleed_trails:
        where = _clip_column(region, bleed.x, bleed.y_start, bleed.y_stop)
        if where is not None:
            image[where] = saturation_adu
            bitmask[where] |= MASK_BITS["BLEED"]

    # 6.-8. No data: value and variance 0.
    def empty(where: tuple[slice, int] | tuple[slice, slice] | np.ndarray, bit: str) -> None:
        image[where] = 0
        bitmask[where] |= MASK_BITS[bit]
        if variance is not None:
            variance[where] = 0

    for column in defects.bad_columns:
        where = _clip_column(region, column.x, column.y_start, column.y_stop)
        if where is not None:
            empty(where, "BAD_COLUMN")
    for patch in defects.blank_patches:
        part = region.intersect(patch.y0, patch.y1, patch.x0, patch.x1)
        if part is not None:
            empty((slice(part.y0 - region.y0, part.y1 - region.y0), slice(part.x0 - region.x0, part.x1 - region.x0)),
                  "BLANK")
    gap, edge = defects.chip_layout.masks(region, tuple(tile_shape))
    empty(gap, "CHIP_GAP")

    # 9. EDGE: a flag for measurements, the pixels hold valid data.
    bitmask[edge] |= MASK_BITS["EDGE"]
