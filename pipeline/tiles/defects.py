"""What only survey tiles have in the defect model: detector chips, bleed trails, per-tile planning.

The defect types themselves -- cosmic rays, hot pixels, satellite trails, blank patches and
their geometry -- are the shared model of :mod:`lensforge.pipeline.stamps.defects`: registered
by name, drawn for a whole image, rasterised for any region. A tile (e.g. 4096 x 4096 pixels) is
rendered region by region on different workers (:mod:`lensforge.pipeline.tiles.regions`), so its
types are drawn once per tile from the tile's random stream by :func:`draw_tile_defects`
(:class:`TileDefects`) and handed to every region; :func:`apply_defects` rasterises each
primitive from its tile-level geometry and clips to the region afterwards, so any cut of the
tile gives exactly the same image, bitmask and variance as the whole tile.

This module adds the tile-only parts: the chip layout (:class:`ChipLayout`: gaps and EDGE bands),
the bad columns placed per chip (:class:`BadColumnsPerChip`, a registered type), the bleed trails of
saturated stars (:func:`bleed_trails_from_stamp`) and the charges, saturation and no-data values
that :func:`apply_defects` writes into a region's image and variance.

Coordinates are those of the shared model (tile frame: pixel ``(y, x)`` is ``array[y, x]`` of the
whole tile, centred on the float coordinates ``(y, x)``).

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

from lensforge.catalogs.schema import MASK_BITS
from lensforge.errors import InputError
from lensforge.pipeline.config import TileDefectConfig
from lensforge.pipeline.stamps.defects import (
    BadColumn,
    BlankPatch,
    ColumnSegment,
    CosmicRay,
    DefectType,
    HotPixel,
    SatelliteTrail,
    clip_pixels,
    draw_defects,
    hot_pixel_arrays,
    rasterise,
    register_defect_type,
)
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


@dataclass(frozen=True)
class BleedTrail(ColumnSegment):
    """Pixels ``[y_start, y_stop)`` of tile column ``x`` filled by charge bled from a saturated star.

    May extend beyond the tile; it is clipped when rasterised.
    """


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


class BadColumnsPerChip(DefectType):
    """Bad columns placed detector by detector, each dead from its detector's readout row to a charge trap.

    Draws, for each detector in row-major order (:meth:`ChipLayout.chips`), ``n ~
    Poisson(bad_columns_per_chip)``, then ``n`` columns uniform over the detector's in-tile columns
    and ``n`` trap rows uniform over its in-tile rows; the column is dead from the detector's first
    row (readout) to the trap row inclusive.
    """

    name = "bad_columns_per_chip"
    bit_name = "BAD_COLUMN"

    def draw(self, rng: np.random.Generator, shape_pixels: tuple[int, int],
             config: TileDefectConfig) -> tuple[BadColumn, ...]:
        bad_columns: list[BadColumn] = []
        for chip in ChipLayout.from_config(config).chips(shape_pixels):
            n = rng.poisson(config.bad_columns_per_chip)
            columns = rng.integers(chip.x0, chip.x1, n)
            traps = rng.integers(chip.y0, chip.y1, n)
            bad_columns += [BadColumn(int(x), chip.y0, int(t) + 1) for x, t in zip(columns, traps, strict=True)]
        return tuple(bad_columns)


register_defect_type(BadColumnsPerChip())

# The registered types of a tile, in the order they consume the tile's TILE_DEFECTS stream
# (fixed: changing it, or any count's distribution, changes every tile of a run).
TILE_DEFECT_TYPES: tuple[str, ...] = ("cosmic_rays", "hot_pixels", "bad_columns_per_chip", "satellite_trails",
                                      "blank_patches")


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
        return hot_pixel_arrays(self.hot_pixels)


def draw_tile_defects(config: TileDefectConfig, shape: tuple[int, int], rng: np.random.Generator) -> TileDefects:
    """Draw the artefact primitives of one ``(ny, nx)`` tile exposure (independent of any region).

    The types of :data:`TILE_DEFECT_TYPES` are drawn one after the other from ``rng``, each as its
    class documents: cosmic rays (:class:`~lensforge.pipeline.stamps.defects.CosmicRays`), hot pixels
    (:class:`~lensforge.pipeline.stamps.defects.HotPixels`), bad columns (:class:`BadColumnsPerChip`),
    satellite trails (:class:`~lensforge.pipeline.stamps.defects.SatelliteTrails`) and blank
    patches (:class:`~lensforge.pipeline.stamps.defects.BlankPatches`).

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
    drawn = draw_defects(TILE_DEFECT_TYPES, config, rng, (ny, nx))
    return TileDefects((ny, nx), ChipLayout.from_config(config), *(drawn[name] for name in TILE_DEFECT_TYPES))


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

    # 1. Cosmic rays, track by track: overlapping tracks add up.
    charge = config.cosmic_ray_charge_e / gain_e_per_adu
    for ray in defects.cosmic_rays:
        where = ray.pixels_in(region)
        if where is not None:
            image[where] += charge  # skimage's line visits each pixel once, so no repeated index
            bitmask[where] |= MASK_BITS["COSMIC_RAY"]

    # 2. Hot pixels (distinct by construction), from the tile's cached index arrays.
    rows, cols = clip_pixels(*defects._hot_pixel_index, region)
    image[rows, cols] += config.hot_pixel_charge_e / gain_e_per_adu
    bitmask[rows, cols] |= MASK_BITS["HOT_PIXEL"]

    # 3. Satellite trails, trail by trail (crossing trails add up), from the analytic distance of
    # the tile coordinates of pixel centres.
    charge = config.satellite_trail_charge_e / gain_e_per_adu
    for trail in defects.satellite_trails:
        hit = trail.pixels_in(region)
        image[hit] += charge
        bitmask[hit] |= MASK_BITS["SATELLITE"]

    # 4. Saturation of everything charged so far.
    full = image >= saturation_adu
    image[full] = saturation_adu
    bitmask[full] |= MASK_BITS["SATURATED"]

    # 5. Bleed trails.
    bleed = rasterise(defects.bleed_trails, region)
    image[bleed] = saturation_adu
    bitmask[bleed] |= MASK_BITS["BLEED"]

    # 6.-8. No data: value and variance 0.
    def empty(where: np.ndarray, bit: str) -> None:
        image[where] = 0
        bitmask[where] |= MASK_BITS[bit]
        if variance is not None:
            variance[where] = 0

    empty(rasterise(defects.bad_columns, region), "BAD_COLUMN")
    empty(rasterise(defects.blank_patches, region), "BLANK")
    gap, edge = defects.chip_layout.masks(region, tuple(tile_shape))
    empty(gap, "CHIP_GAP")

    # 9. EDGE: a flag for measurements, the pixels hold valid data.
    bitmask[edge] |= MASK_BITS["EDGE"]
