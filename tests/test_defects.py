"""The one defect model: registry, shared geometry, stamps (one region) and tiles (many regions)."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from skimage.draw import line as draw_line

import lensforge.pipeline.stamps.defects as shared_defects
import lensforge.pipeline.tiles.defects as tile_defects
from lensforge.catalogs.schema import MASK_BITS, mask_bit_names
from lensforge.errors import ConfigError, InputError
from lensforge.pipeline.config import MaskConfig, TileDefectConfig
from lensforge.pipeline.stamps.defects import (
    DEFECT_TYPES,
    STAMP_DEFECT_TYPES,
    BadColumn,
    BlankPatch,
    CosmicRay,
    DefectType,
    HotPixel,
    PixelBox,
    SatelliteTrail,
    draw_bitmask,
    draw_defects,
    get_defect_type,
    register_defect_type,
)
from lensforge.pipeline.tiles.defects import (
    DEFECT_BITS_DOC,
    TILE_DEFECT_TYPES,
    BleedTrail,
    ChipLayout,
    TileDefects,
    apply_defects,
    bleed_trails_from_stamp,
    chip_gap_mask,
    draw_tile_defects,
)
from lensforge.pipeline.tiles.regions import Region, split_tile
from lensforge.seeding import Stream, numpy_rng

# --- Stamps: one region covering the whole stamp. ---

STAMP_SHAPE = (32, 32)
STAMP_NONE = {"cosmic_rays_per_stamp": 0, "bad_column_probability": 0, "blank_patch_probability": 0}


def _stamp_masks(n=50, seed=3, **rates):
    config = MaskConfig(**{**STAMP_NONE, **rates})
    return np.stack([draw_bitmask(config, seed, i, STAMP_SHAPE) for i in range(n)])


def test_no_rates_no_defects():
    assert not _stamp_masks().any()


def test_stamp_bad_columns_are_single_columns_from_the_readout_edge():
    masks = _stamp_masks(bad_column_probability=1.0)
    assert set(np.unique(masks)) == {0, MASK_BITS["BAD_COLUMN"]}
    for mask in masks:
        columns = np.flatnonzero(mask.any(axis=0))
        assert len(columns) == 1
        rows = np.flatnonzero(mask[:, columns[0]])
        np.testing.assert_array_equal(rows, np.arange(len(rows)))  # contiguous from row 0
        assert len(rows) >= STAMP_SHAPE[0] // 4


def test_stamp_blank_patches_are_rectangles_of_the_configured_size():
    masks = _stamp_masks(blank_patch_probability=1.0, blank_patch_size_min_pixels=3, blank_patch_size_max_pixels=6)
    for mask in masks:
        rows, cols = np.nonzero(mask == MASK_BITS["BLANK"])
        height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
        assert 3 <= height <= 6 and 3 <= width <= 6
        assert len(rows) == height * width  # filled rectangle


def test_stamp_cosmic_ray_count_follows_the_rate():
    few = _stamp_masks(n=200, cosmic_rays_per_stamp=0.2)
    many = _stamp_masks(n=200, cosmic_rays_per_stamp=3.0)
    assert set(np.unique(many)) == {0, MASK_BITS["COSMIC_RAY"]}
    assert (few != 0).any(axis=(1, 2)).mean() < 0.35  # P(at least one) = 1 - exp(-0.2) = 0.18
    assert (many != 0).any(axis=(1, 2)).mean() > 0.85  # 1 - exp(-3) = 0.95


def test_stamp_bits_combine_and_name_themselves():
    masks = _stamp_masks(n=40, cosmic_rays_per_stamp=5, bad_column_probability=1, blank_patch_probability=1)
    combined = np.bitwise_or.reduce(masks.ravel())
    assert mask_bit_names(int(combined)) == ["COSMIC_RAY", "BAD_COLUMN", "BLANK"]


def test_masks_depend_only_on_seed_and_index():
    config = MaskConfig(cosmic_rays_per_stamp=2, bad_column_probability=0.5, blank_patch_probability=0.5)
    a = draw_bitmask(config, 7, 11, STAMP_SHAPE)
    np.testing.assert_array_equal(a, draw_bitmask(config, 7, 11, STAMP_SHAPE))
    assert not np.array_equal(np.stack([draw_bitmask(config, 7, i, STAMP_SHAPE) for i in range(5)]),
                              np.stack([draw_bitmask(config, 8, i, STAMP_SHAPE) for i in range(5)]))


def test_a_stamp_is_one_region_and_any_cut_gives_the_same_bits():
    config = MaskConfig(cosmic_rays_per_stamp=4, cosmic_ray_length_max_pixels=30, bad_column_probability=1,
                        blank_patch_probability=1)
    whole = PixelBox.covering(STAMP_SHAPE)
    for index in range(20):
        drawn = draw_defects(STAMP_DEFECT_TYPES, config, numpy_rng(5, Stream.MASK, index), STAMP_SHAPE)
        bitmask = np.zeros(STAMP_SHAPE, dtype=np.uint8)
        for name, geometry in drawn.items():
            kind = get_defect_type(name)
            full = kind.rasterise(geometry, whole)
            bitmask[full] |= MASK_BITS[kind.bit_name]
            for y0, y1, x0, x1 in ((0, 11, 0, 32), (11, 32, 0, 20), (11, 32, 20, 32)):
                np.testing.assert_array_equal(kind.rasterise(geometry, PixelBox(y0, y1, x0, x1)), full[y0:y1, x0:x1])
        np.testing.assert_array_equal(bitmask, draw_bitmask(config, 5, index, STAMP_SHAPE))


def _reference_stamp_bitmask(masks: MaskConfig, seed: int, index: int, shape: tuple[int, int]) -> np.ndarray:
    """The stamp draw order the training sets are pinned to, written out step by step."""
    rng = numpy_rng(seed, Stream.MASK, index)
    bitmask = np.zeros(shape, dtype=np.uint8)
    if rng.uniform() < masks.bad_column_probability:  # BAD_COLUMN
        column = rng.integers(0, shape[1])
        bitmask[:rng.integers(shape[0] // 4, shape[0] + 1), column] |= MASK_BITS["BAD_COLUMN"]
    if rng.uniform() < masks.blank_patch_probability:  # BLANK
        height, width = rng.integers(masks.blank_patch_size_min_pixels, masks.blank_patch_size_max_pixels + 1, size=2)
        height, width = min(height, shape[0]), min(width, shape[1])
        y0, x0 = rng.integers(0, shape[0] - height + 1), rng.integers(0, shape[1] - width + 1)
        bitmask[y0:y0 + height, x0:x0 + width] |= MASK_BITS["BLANK"]
    for _ in range(rng.poisson(masks.cosmic_rays_per_stamp)):  # COSMIC_RAY
        y0, x0 = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        length, angle = rng.uniform(1, masks.cosmic_ray_length_max_pixels), rng.uniform(0, np.pi)
        rows, cols = draw_line(int(y0), int(x0), int(round(y0 + length * np.sin(angle))),
                               int(round(x0 + length * np.cos(angle))))
        inside = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
        bitmask[rows[inside], cols[inside]] |= MASK_BITS["COSMIC_RAY"]
    return bitmask


def test_stamp_masks_follow_the_pinned_draw_order():
    config = MaskConfig(cosmic_rays_per_stamp=3, bad_column_probability=0.5, blank_patch_probability=0.5,
                        blank_patch_size_min_pixels=3, blank_patch_size_max_pixels=40)
    for index in range(200):
        np.testing.assert_array_equal(draw_bitmask(config, 11, index, (48, 40)),
                                      _reference_stamp_bitmask(config, 11, index, (48, 40)), err_msg=str(index))



# --- Tiles: drawn once, rasterised region by region. ---

SHAPE = (300, 260)
GAIN = 2.0  # e-/ADU
SATURATION = 1000.0  # ADU
# No artefacts at all, and one detector larger than any test tile: tests switch on what they check.
NONE = {"cosmic_rays_per_megapixel": 0, "hot_pixel_fraction": 0, "bad_columns_per_chip": 0,
        "satellite_trails_per_tile": 0, "blank_patches_per_tile": 0, "edge_pixels": 0,
        "chip_size_pixels": (4096, 4096), "chip_gap_pixels": 0}
# 2 x 2 detectors exactly filling SHAPE: rows [0, 145) gap [145, 155) [155, 300),
# columns [0, 125) gap [125, 135) [135, 260).
TWO_BY_TWO = {"chip_size_pixels": (125, 145), "chip_gap_pixels": 10}
BUSY = {"cosmic_rays_per_megapixel": 200, "hot_pixel_fraction": 2e-3, "bad_columns_per_chip": 2,
        "satellite_trails_per_tile": 3, "satellite_trail_width_pixels": 5.5, "blank_patches_per_tile": 3,
        "blank_patch_size_max_pixels": 40, "edge_pixels": 4, **TWO_BY_TWO}


def _config(**kw) -> TileDefectConfig:
    return TileDefectConfig(**{**NONE, **kw})


def _gaussian_star(size: int, peak: float, sigma: float = 2.5) -> np.ndarray:
    y, x = np.mgrid[:size, :size] - size // 2
    return (peak * np.exp(-0.5 * (x**2 + y**2) / sigma**2)).astype(np.float32)


def _render(defects: TileDefects, config: TileDefectConfig, image: np.ndarray, regions: list[Region],
            variance: np.ndarray | None = None,
            saturation: float = SATURATION) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Apply the defects region by region, each on its own copy of the region's pixels, and stitch."""
    out_image, out_mask = np.empty_like(image), np.zeros(image.shape, dtype=np.int32)
    out_var = None if variance is None else np.empty_like(variance)
    for region in regions:
        img, mask = image[region.slices].copy(), np.zeros(region.shape, dtype=np.int32)
        var = None if variance is None else variance[region.slices].copy()
        apply_defects(defects, region, image.shape, img, mask, var, GAIN, saturation, config)
        out_image[region.slices], out_mask[region.slices] = img, mask
        if var is not None:
            out_var[region.slices] = var
    return out_image, out_mask, out_var


def _whole(shape: tuple[int, int] = SHAPE) -> list[Region]:
    return [Region(0, shape[0], 0, shape[1])]


def test_region_decomposition_is_exact():
    config = _config(**BUSY)
    defects = draw_tile_defects(config, SHAPE, np.random.default_rng(11))
    rng = np.random.default_rng(5)
    image = rng.normal(100.0, 5.0, SHAPE).astype(np.float32)
    variance = np.full(SHAPE, 25.0, dtype=np.float32)
    # A saturated star straddling region borders (64 and 100 both cut row/column 200 region), its bleed
    # trails, and a hand-made trail running off the tile.
    star = _gaussian_star(31, 10 * SATURATION)
    image[185:216, 185:216] += star
    trails = bleed_trails_from_stamp(star, 185, 185, SATURATION) + (BleedTrail(3, 280, 340), BleedTrail(250, -20, 7))
    defects = defects.with_bleed_trails(trails)
    assert defects.cosmic_rays and defects.satellite_trails and defects.bad_columns and defects.blank_patches

    whole = _render(defects, config, image, _whole(), variance)
    for size in (64, 100):
        parts = _render(defects, config, image, split_tile(SHAPE, size), variance)
        for a, b in zip(whole, parts, strict=True):
            assert np.array_equal(a, b)
    # Every plane was exercised, so the comparison covers every step.
    planes = np.bitwise_or.reduce(whole[1], axis=None)
    assert all(planes & bit for bit in MASK_BITS.values())


def test_cosmic_ray_tracks_get_bit_and_charge():
    config = _config(cosmic_rays_per_megapixel=300, cosmic_ray_length_max_pixels=40)
    defects = draw_tile_defects(config, SHAPE, np.random.default_rng(2))
    assert len(defects.cosmic_rays) > 5
    hits = np.zeros(SHAPE, dtype=int)
    for ray in defects.cosmic_rays:
        rows, cols = ray.pixels()
        keep = (rows >= 0) & (rows < SHAPE[0]) & (cols >= 0) & (cols < SHAPE[1])
        np.add.at(hits, (rows[keep], cols[keep]), 1)
    image, mask, _ = _render(defects, config, np.zeros(SHAPE, dtype=np.float32), split_tile(SHAPE, 70),
                             saturation=np.inf)
    np.testing.assert_allclose(image, hits * config.cosmic_ray_charge_e / GAIN)
    np.testing.assert_array_equal(mask == MASK_BITS["COSMIC_RAY"], hits > 0)
    np.testing.assert_array_equal(mask[hits == 0], 0)


def test_satellite_trails_cover_pixels_within_half_width():
    width = 5.0
    config = _config(satellite_trails_per_tile=4, satellite_trail_width_pixels=width)
    defects = draw_tile_defects(config, SHAPE, np.random.default_rng(8))
    assert len(defects.satellite_trails) >= 2
    rows, cols = np.mgrid[:SHAPE[0], :SHAPE[1]].astype(float)
    # Distance of pixel centres from each line, computed here independently of the module.
    dist = np.stack([np.abs(t.a * cols + t.b * rows + t.c) / math.hypot(t.a, t.b) for t in defects.satellite_trails])
    image, mask, _ = _render(defects, config, np.zeros(SHAPE, dtype=np.float32), split_tile(SHAPE, 64),
                             saturation=np.inf)
    flagged = (mask & MASK_BITS["SATELLITE"]) > 0
    assert (dist.min(axis=0)[flagged] <= width / 2).all()
    assert flagged[dist.min(axis=0) <= width / 2 - 0.5].all()
    assert all((d <= width / 2).any() for d in dist)  # every trail crosses the tile
    np.testing.assert_allclose(image, (dist <= width / 2).sum(axis=0) * config.satellite_trail_charge_e / GAIN)


def test_bad_columns_cover_exactly_their_rows_and_are_empty():
    config = _config(bad_columns_per_chip=3, **TWO_BY_TWO)
    defects = draw_tile_defects(config, SHAPE, np.random.default_rng(4))
    assert len(defects.bad_columns) >= 4
    expected = np.zeros(SHAPE, dtype=bool)
    chip_columns, chip_rows = [(0, 125), (135, 260)], [(0, 145), (155, 300)]
    for column in defects.bad_columns:
        expected[column.y_start:column.y_stop, column.x] = True
        # Inside one detector, dead from that detector's readout row (its first row).
        assert any(lo <= column.x < hi for lo, hi in chip_columns)
        chip = next((lo, hi) for lo, hi in chip_rows if lo <= column.y_start < hi)
        assert column.y_start == chip[0] and column.y_start < column.y_stop <= chip[1]
    image = np.full(SHAPE, 50.0, dtype=np.float32)
    image, mask, variance = _render(defects, config, image, split_tile(SHAPE, 90), np.full(SHAPE, 9.0))
    bad = (mask & MASK_BITS["BAD_COLUMN"]) > 0
    np.testing.assert_array_equal(bad, expected)
    assert (image[bad] == 0).all() and (variance[bad] == 0).all()
    assert (image[~bad & (mask == 0)] == 50).all() and (variance[mask == 0] == 9).all()


def test_chip_gaps_and_edge_bands():
    edge = 3
    config = _config(edge_pixels=edge, **TWO_BY_TWO)
    gap, edge_map = chip_gap_mask(Region(0, SHAPE[0], 0, SHAPE[1]), SHAPE, config)
    expected_gap = np.zeros(SHAPE, dtype=bool)
    expected_gap[145:155, :] = True
    expected_gap[:, 125:135] = True
    np.testing.assert_array_equal(gap, expected_gap)
    expected_edge = np.zeros(SHAPE, dtype=bool)
    for y0, y1 in [(0, 145), (155, 300)]:
        for x0, x1 in [(0, 125), (135, 260)]:
            chip = np.ones((y1 - y0, x1 - x0), dtype=bool)
            chip[edge:-edge, edge:-edge] = False  # the band of width `edge` inside the detector border
            expected_edge[y0:y1, x0:x1] = chip
    np.testing.assert_array_equal(edge_map, expected_edge)

    # Through apply_defects on regions: CHIP_GAP pixels emptied, EDGE only flagged.
    defects = draw_tile_defects(config, SHAPE, np.random.default_rng(0))
    image, mask, variance = _render(defects, config, np.full(SHAPE, 7.0, dtype=np.float32),
                                    split_tile(SHAPE, 64), np.ones(SHAPE))
    np.testing.assert_array_equal(mask == MASK_BITS["CHIP_GAP"], expected_gap)
    np.testing.assert_array_equal(mask == MASK_BITS["EDGE"], expected_edge)
    assert (image[expected_gap] == 0).all() and (variance[expected_gap] == 0).all()
    assert (image[~expected_gap] == 7).all() and (variance[~expected_gap] == 1).all()

    # One detector larger than the tile: EDGE is the band along the tile border only.
    _, edge_map = chip_gap_mask(Region(10, 40, 0, 33), (40, 33), _config(edge_pixels=5))
    expected = np.ones((40, 33), dtype=bool)
    expected[5:-5, 5:-5] = False
    np.testing.assert_array_equal(edge_map, expected[10:40])


def test_bleed_trails_of_a_saturated_star():
    star = _gaussian_star(41, 10 * SATURATION)
    y0, x0 = 120, 90
    trails = bleed_trails_from_stamp(star, y0, x0, SATURATION)
    saturated = star > SATURATION
    columns = np.flatnonzero(saturated.any(axis=0))
    assert {t.x for t in trails} == set(x0 + columns)
    for col in columns:
        rows = np.flatnonzero(saturated[:, col])
        core = (y0 + rows[0], y0 + rows[-1] + 1)
        excess = (star[rows, col] - SATURATION).sum() / SATURATION
        mine = [t for t in trails if t.x == x0 + col]
        assert abs(sum(t.y_stop - t.y_start for t in mine) - excess) <= 1
        below = [t for t in mine if t.y_stop <= core[0]]
        above = [t for t in mine if t.y_start >= core[1]]
        assert len(below) + len(above) == len(mine)  # nothing inside the core
        if excess > 2:  # long enough to bleed both ways, contiguous with the core
            assert below[0].y_stop == core[0] and above[0].y_start == core[1]
    centre = [t for t in trails if t.x == x0 + 20]
    assert sum(t.y_stop - t.y_start for t in centre) > 5  # the peak column bleeds far

    # Rasterised: set to saturation and flagged BLEED, the core itself SATURATED.
    image = np.full(SHAPE, 100.0, dtype=np.float32)
    image[y0:y0 + 41, x0:x0 + 41] += star
    defects = TileDefects(SHAPE, draw_tile_defects(_config(), SHAPE, np.random.default_rng(0)).chip_layout,
                          bleed_trails=trails)
    image, mask, _ = _render(defects, _config(), image, split_tile(SHAPE, 50))
    for trail in trails:
        assert (mask[trail.y_start:trail.y_stop, trail.x] & MASK_BITS["BLEED"]).all()
        assert (image[trail.y_start:trail.y_stop, trail.x] == SATURATION).all()
    assert (mask[y0:y0 + 41, x0:x0 + 41][saturated] & MASK_BITS["SATURATED"]).all()

    assert bleed_trails_from_stamp(_gaussian_star(41, 0.9 * SATURATION), y0, x0, SATURATION) == ()


def test_counts_follow_the_rates():
    rate, shape = 1000.0, (300, 260)
    config = _config(cosmic_rays_per_megapixel=rate)
    rng = np.random.default_rng(21)
    counts = [len(draw_tile_defects(config, shape, rng).cosmic_rays) for _ in range(200)]
    mean = rate * shape[0] * shape[1] / 1e6
    assert abs(np.mean(counts) - mean) < 4 * math.sqrt(mean / len(counts))
    assert np.var(counts) == pytest.approx(mean, rel=0.35)  # Poisson: variance = mean

    fraction, shape = 1e-3, (1000, 1000)
    config = _config(hot_pixel_fraction=fraction)
    hot = [draw_tile_defects(config, shape, rng).hot_pixels for _ in range(10)]
    n_pixels = 10 * shape[0] * shape[1]
    total = sum(len(h) for h in hot)
    assert abs(total - fraction * n_pixels) < 4 * math.sqrt(n_pixels * fraction * (1 - fraction))
    for pixels in hot:
        assert len(set(pixels)) == len(pixels)
        assert all(0 <= p.y < shape[0] and 0 <= p.x < shape[1] for p in pixels)


def test_hot_pixels_add_charge():
    config = _config(hot_pixel_fraction=1e-2)
    defects = draw_tile_defects(config, SHAPE, np.random.default_rng(3))
    image, mask, _ = _render(defects, config, np.zeros(SHAPE, dtype=np.float32), split_tile(SHAPE, 64),
                             saturation=np.inf)
    expected = np.zeros(SHAPE, dtype=bool)
    expected[[p.y for p in defects.hot_pixels], [p.x for p in defects.hot_pixels]] = True
    np.testing.assert_array_equal(mask == MASK_BITS["HOT_PIXEL"], expected)
    np.testing.assert_allclose(image, expected * config.hot_pixel_charge_e / GAIN)

    # 2500 ADU of hot charge saturates: clipped to the saturation level and flagged both ways.
    image, mask, _ = _render(defects, config, np.zeros(SHAPE, dtype=np.float32), split_tile(SHAPE, 64))
    assert (image[expected] == SATURATION).all() and (image[~expected] == 0).all()
    np.testing.assert_array_equal(mask == MASK_BITS["HOT_PIXEL"] | MASK_BITS["SATURATED"], expected)


def test_reproducible_and_picklable():
    config = _config(**BUSY)
    first = draw_tile_defects(config, SHAPE, np.random.default_rng(9))
    assert first == draw_tile_defects(config, SHAPE, np.random.default_rng(9))
    assert first != draw_tile_defects(config, SHAPE, np.random.default_rng(10))
    first = first.with_bleed_trails([BleedTrail(5, 10, 20)])
    image = np.random.default_rng(1).normal(0, 1, SHAPE).astype(np.float32)
    before = _render(first, config, image, _whole())  # fills the hot-pixel cache before pickling
    copy = pickle.loads(pickle.dumps(first))
    assert copy == first and hash(copy) == hash(first)
    for a, b in zip(before, _render(copy, config, image, _whole()), strict=True):
        assert np.array_equal(a, b)


def test_inputs_are_checked():
    config = _config(**TWO_BY_TWO)
    defects = draw_tile_defects(config, SHAPE, np.random.default_rng(0))
    region = Region(0, 10, 0, 10)
    image, mask = np.zeros((10, 10), dtype=np.float32), np.zeros((10, 10), dtype=np.int32)
    with pytest.raises(InputError, match="chip layout"):
        apply_defects(defects, region, SHAPE, image, mask, None, GAIN, SATURATION, _config())
    with pytest.raises(InputError, match="tile_shape"):
        apply_defects(defects, region, (300, 261), image, mask, None, GAIN, SATURATION, config)
    with pytest.raises(InputError, match="dtype"):
        apply_defects(defects, region, SHAPE, image, mask.astype(np.uint8), None, GAIN, SATURATION, config)
    with pytest.raises(InputError, match="shape"):
        apply_defects(defects, region, SHAPE, image[:5], mask, None, GAIN, SATURATION, config)


def test_every_mask_bit_is_documented():
    assert set(DEFECT_BITS_DOC) == set(MASK_BITS)
    assert all(text and "\n" not in text for text in DEFECT_BITS_DOC.values())


def test_tile_defects_follow_the_pinned_draw_order():
    config = _config(**BUSY)
    ny, nx = SHAPE
    rng = np.random.default_rng(17)
    n = rng.poisson(config.cosmic_rays_per_megapixel * ny * nx / 1e6)
    y0, x0 = rng.uniform(-0.5, ny - 0.5, n), rng.uniform(-0.5, nx - 0.5, n)
    length, angle = rng.uniform(1.0, config.cosmic_ray_length_max_pixels, n), rng.uniform(0.0, np.pi, n)
    rays = tuple(CosmicRay(*map(float, p)) for p in zip(y0, x0, y0 + length * np.sin(angle),
                                                        x0 + length * np.cos(angle), strict=True))
    flat = np.sort(rng.choice(ny * nx, size=rng.binomial(ny * nx, config.hot_pixel_fraction), replace=False))
    hot = tuple(HotPixel(int(i // nx), int(i % nx)) for i in flat)
    columns = []
    for chip in ChipLayout.from_config(config).chips(SHAPE):
        n = rng.poisson(config.bad_columns_per_chip)
        xs, traps = rng.integers(chip.x0, chip.x1, n), rng.integers(chip.y0, chip.y1, n)
        columns += [BadColumn(int(x), chip.y0, int(t) + 1) for x, t in zip(xs, traps, strict=True)]
    n = rng.poisson(config.satellite_trails_per_tile)
    ys, xs, angles = rng.uniform(-0.5, ny - 0.5, n), rng.uniform(-0.5, nx - 0.5, n), rng.uniform(0.0, np.pi, n)
    trails = tuple(SatelliteTrail.through(float(y), float(x), float(t), config.satellite_trail_width_pixels)
                   for y, x, t in zip(ys, xs, angles, strict=True))
    n = rng.poisson(config.blank_patches_per_tile)
    heights = np.minimum(rng.integers(1, config.blank_patch_size_max_pixels + 1, n), ny)
    widths = np.minimum(rng.integers(1, config.blank_patch_size_max_pixels + 1, n), nx)
    rows, cols = rng.integers(0, ny - heights + 1), rng.integers(0, nx - widths + 1)
    patches = tuple(BlankPatch(int(y), int(y + h), int(x), int(x + w))
                    for y, h, x, w in zip(rows, heights, cols, widths, strict=True))
    expected = TileDefects(SHAPE, ChipLayout.from_config(config), rays, hot, tuple(columns), trails, patches)
    assert rays and hot and columns and trails and patches
    assert draw_tile_defects(config, SHAPE, np.random.default_rng(17)) == expected


# --- The registry and the shared geometry. ---


def test_every_defect_type_is_registered_by_name_with_a_mask_plane():
    for name in (*STAMP_DEFECT_TYPES, *TILE_DEFECT_TYPES):
        kind = get_defect_type(name)
        assert isinstance(kind, DefectType) and kind.name == name and kind.bit_name in MASK_BITS
    assert set(STAMP_DEFECT_TYPES) | set(TILE_DEFECT_TYPES) <= set(DEFECT_TYPES)


def test_unknown_defect_type_names_the_valid_ones():
    with pytest.raises(ConfigError, match="gremlins") as raised:
        get_defect_type("gremlins")
    assert all(name in str(raised.value) for name in (*STAMP_DEFECT_TYPES, *TILE_DEFECT_TYPES))


def test_unknown_defect_bit_is_refused():
    class Bogus(DefectType):
        name = "bogus"
        bit_name = "GREMLIN"

        def draw(self, rng, shape_pixels, config):
            return ()

    with pytest.raises(ConfigError, match="GREMLIN"):
        register_defect_type(Bogus())
    assert "bogus" not in DEFECT_TYPES


def test_stamps_and_tiles_share_one_set_of_geometry_classes():
    # The tile module builds on the shared classes instead of defining its own.
    for name in ("CosmicRay", "HotPixel", "BadColumn", "SatelliteTrail", "BlankPatch"):
        assert getattr(tile_defects, name) is getattr(shared_defects, name)
    stamp = draw_defects(STAMP_DEFECT_TYPES, MaskConfig(cosmic_rays_per_stamp=5, bad_column_probability=1,
                                                        blank_patch_probability=1), np.random.default_rng(0), (32, 32))
    tile = draw_tile_defects(_config(**BUSY), SHAPE, np.random.default_rng(0))
    assert {type(p) for p in stamp["stamp_bad_column"] + tile.bad_columns} == {BadColumn}
    assert {type(p) for p in stamp["stamp_blank_patch"] + tile.blank_patches} == {BlankPatch}
    assert {type(p) for p in stamp["stamp_cosmic_rays"] + tile.cosmic_rays} == {CosmicRay}


def test_primitives_rasterise_the_same_pixels_in_any_region():
    shape = (40, 50)
    geometry = (CosmicRay(-3.2, 4.7, 30.4, 61.0), HotPixel(17, 0), BadColumn(12, 5, 33), BlankPatch(30, 45, 40, 48),
                SatelliteTrail.through(20.0, 25.0, 0.4, 3.0), BleedTrail(49, -4, 6))
    for primitive in geometry:
        whole_map = np.zeros(shape, dtype=bool)
        where = primitive.pixels_in(PixelBox.covering(shape))
        if where is not None:
            whole_map[where] = True
        assert whole_map.any(), primitive
        for box in (PixelBox(0, 17, 0, 23), PixelBox(17, 40, 23, 50), Region(5, 31, 9, 44)):
            part = np.zeros((box.y1 - box.y0, box.x1 - box.x0), dtype=bool)
            where = primitive.pixels_in(box)
            if where is not None:
                part[where] = True
            np.testing.assert_array_equal(part, whole_map[box.y0:box.y1, box.x0:box.x1], err_msg=str(primitive))
