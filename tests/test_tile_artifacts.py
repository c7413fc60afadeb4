from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from lensforge.catalogs.schema import MASK_BITS
from lensforge.errors import InputError
from lensforge.pipeline.config import TileDefectConfig
from lensforge.pipeline.tiles.defects import (
    DEFECT_BITS_DOC,
    BleedTrail,
    TileDefects,
    apply_defects,
    bleed_trails_from_stamp,
    chip_gap_mask,
    draw_tile_defects,
)
from lensforge.pipeline.tiles.regions import Region, split_tile

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
