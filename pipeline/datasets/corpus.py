"""The image corpus of the fully convolutional in-painter: real images, simulated tiles and defect masks.

Three sources of whole images, each with its unit, pixel scale, resolution and noise level:

- **FIRST** (:func:`load_first`): 1,255 real VLA FIRST radio galaxies (MiraBest), 150x150 pixels of
  1.8", Jy/beam, CLEANed, with real thermal noise and real sidelobe residuals. Split by source name
  (:func:`split_of`) into train / calibration / test; the test split is never trained on.
- **COSMOS** (:func:`load_cosmos_real`, :func:`cosmos_mosaic`): the 100 real HST/ACS F814W stamps
  (0.03"/pixel, electrons/s) and a mosaic of them on one image.
- **Simulated tiles** (:func:`simulated_image`): one lensforge tile of a survey preset, rendered in
  this process and cached as ``.npz``.

The real data live in ``<checkout>/../shared/data`` (or ``$LENSFORGE_SHARED_DATA``); the project
runs without them, and every loader raises :class:`~lensforge.errors.InputError` naming the
missing path. Masks to in-paint come from :func:`draw_training_mask` (training: any Generator)
and :func:`evaluation_mask` (test image ``index``: a stream of its own, so results never depend
on order or worker count), built from lensforge's own defect primitives.

Units: pixel scales and resolutions in arcsec; ``noise_sigma`` in the image's ``unit``; masks
``True`` = pixel to in-paint (or already spoiled).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lensforge.atomic import atomic_path
from lensforge.errors import ConfigError, InputError
from lensforge.pipeline.stamps.defects import (
    BadColumn,
    BlankPatch,
    ColumnSegment,
    CosmicRay,
    HotPixel,
    PixelBox,
    Primitive,
    SatelliteTrail,
    rasterise,
)
from lensforge.seeding import name_unit

# --- Where the shared data live. -------------------------------------------------------------

SHARED_DATA_ENV = "LENSFORGE_SHARED_DATA"
FIRST_FILE = Path("first_radio") / "first_mirabest_150.fits"
COSMOS_DIR = Path("cosmos_real_stamps")
COSMOS_CATALOGUE = "real_galaxy_catalog_26_extension_example.fits"
COSMOS_PSF_FILE = "real_galaxy_PSF_images_extension.fits"


def _checkout() -> Path:
    """The repository checkout holding this file (the folder with ``pyproject.toml`` and ``pipeline/``).

    Found as ``lensforge/__init__.py`` finds it; installed elsewhere (site-packages), the folder
    three levels up stands in, so the default shared-data path is at least well defined.
    """
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "pipeline" / "__init__.py").is_file():
            return parent
    return here.parents[2]


def shared_data_dir() -> Path:
    """The shared data folder: ``$LENSFORGE_SHARED_DATA`` if set, else ``<checkout>/../shared/data``.

    It need not exist; the loaders raise ``InputError`` naming the file they miss.
    """
    env = os.environ.get(SHARED_DATA_ENV)
    if env:
        return Path(env).expanduser()
    return _checkout().parent / "shared" / "data"


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise InputError(f"{path}: not found ({what}; set ${SHARED_DATA_ENV} or see "
                         f"{shared_data_dir()}/*/README.md)", str(path))
    return path


# --- Splits. ---------------------------------------------------------------------------------

SPLITS = ("train", "calibration", "test")
SPLIT_EDGES = (0.7, 0.8)  # u < 0.7: train; u < 0.8: calibration; else test


def split_unit(name: str) -> float:
    """A uniform number in [0, 1) fixed by ``name`` alone (:func:`lensforge.seeding.name_unit`)."""
    return name_unit(name)


def split_of(name: str) -> str:
    """The split of one FIRST source ``name``: ``"train"`` (70%), ``"calibration"`` (10%) or ``"test"`` (20%).

    A hash of the name, not its position: the split survives reordering, subsetting or extending
    the file, and the same source is in the same split on every machine. The test split is never
    trained on (nor used to choose hyper-parameters: that is the calibration split's job).
    """
    u = split_unit(name)
    return "train" if u < SPLIT_EDGES[0] else "calibration" if u < SPLIT_EDGES[1] else "test"


def _check_split(split: str | None) -> None:
    if split is not None and split not in SPLITS:
        raise ConfigError(f"split must be one of {list(SPLITS)} or None, got {split!r}", split)


# --- Real images. ----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RealImages:
    """A stack of real images with what a model needs to know about them.

    Attributes:
        images: (N, H, W) float32 [``unit``].
        names: N source names (FIRST: the MiraBest name).
        unit: ``"Jy/beam"`` (FIRST) or ``"electrons/s"`` (COSMOS).
        pixel_scale_arcsec: pixel scale [arcsec / pixel].
        resolution_fwhm_arcsec: restoring-beam FWHM (radio) or PSF FWHM (optical) [arcsec].
        noise_sigma: (N,) float64 noise standard deviation of each image [``unit``].
        extra: per-image catalogue columns, each an (N,) array (FIRST: ``fr_code``, ``plane`` (index
            in the cube), ``ra_deg``, ``dec_deg``, ``redshift``, ``size_arcsec``).
    """

    images: np.ndarray
    names: tuple[str, ...]
    unit: str
    pixel_scale_arcsec: float
    resolution_fwhm_arcsec: float
    noise_sigma: np.ndarray
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)


FIRST_BORDER_PIXELS = 15  # noise from the outer 15-pixel frame: sources sit at the centre of the cutouts
MAD_TO_SIGMA = 1.4826  # sigma of a Gaussian = 1.4826 x its median absolute deviation


def robust_sigma(values: np.ndarray, axis: int | None = None) -> np.ndarray:
    """1.4826 x the median absolute deviation of ``values`` (along ``axis``): the std of Gaussian noise,
    insensitive to the few source pixels among them."""
    values = np.asarray(values, dtype=np.float64)
    centre = np.median(values, axis=axis, keepdims=True)
    return MAD_TO_SIGMA * np.median(np.abs(values - centre), axis=axis)


def border_sigma(images: np.ndarray, border: int = FIRST_BORDER_PIXELS) -> np.ndarray:
    """Robust noise sigma of each image of an (N, H, W) stack from its outer ``border`` pixels [image unit]."""
    images = np.asarray(images)
    if images.ndim != 3 or 2 * border >= min(images.shape[1:]):
        raise InputError(f"border_sigma needs (N, H, W) images larger than 2 x {border} pixels, "
                         f"got {images.shape}", images.shape)
    frame = np.ones(images.shape[1:], dtype=bool)
    frame[border:-border, border:-border] = False
    return robust_sigma(images[:, frame], axis=1)


def load_first(split: str | None = None, path: Path | None = None) -> RealImages:
    """The real FIRST radio galaxies of ``split`` (None: all 1,255), in cube order.

    Reads ``first_radio/first_mirabest_150.fits`` (``path`` overrides it) with astropy, memory-mapped:
    only the planes of the split are read (the whole cube is 113 MB). Images are float32 Jy/beam,
    150x150 pixels of 1.8"; the resolution is the geometric mean of the header's BMAJ and BMIN
    (the FIRST synthesized beam, 5.4"); ``noise_sigma`` is the robust sigma (MAD) of each
    image's outer 15 pixels, median ~1.56e-4 Jy/beam (5-95%: 1.4e-4 to 1.9e-4). Cite Becker,
    White & Helfand 1995 and Porter & Scaife 2023 wherever results from these images appear.

    Raises:
        InputError: the file is missing or is not the MiraBest FIRST cube.
        ConfigError: ``split`` is not one of :data:`SPLITS` or None.
    """
    from astropy.io import fits
    from astropy.table import Table

    _check_split(split)
    path = _require(Path(path) if path is not None else shared_data_dir() / FIRST_FILE, "the FIRST radio cube")
    try:
        with fits.open(path, memmap=True) as hdus:
            header = hdus[0].header
            catalogue = Table.read(hdus["CATALOG"])
            names = [str(n).strip() for n in catalogue["name"]]
            planes = np.array([i for i, name in enumerate(names) if split is None or split_of(name) == split],
                              dtype=np.int64)
            cube = hdus[0].data
            if cube is None or cube.ndim != 3 or cube.shape[0] != len(names):
                raise InputError(f"{path}: expected a (N, H, W) cube with one CATALOG row per plane",
                                 str(path))
            # Sorted plane indices read the memory map in file order; astype makes native-endian copies.
            images = np.asarray(cube[planes], dtype=np.float32)
            unit = {"JY/BEAM": "Jy/beam"}.get(str(header.get("BUNIT", "")).strip().upper(),
                                              str(header.get("BUNIT", "Jy/beam")))
            scale = abs(float(header.get("CDELT2", header.get("PIXSCALE", 1.8) / 3600.0))) * 3600.0
            beam = math.sqrt(float(header["BMAJ"]) * float(header["BMIN"])) * 3600.0
    except (OSError, KeyError, ValueError, TypeError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"{path}: not the FIRST MiraBest cube ({type(err).__name__}: {err})", str(path)) from None
    extra = {"plane": planes, **{column: np.asarray(catalogue[column])[planes] for column in
                                 ("fr_code", "ra_deg", "dec_deg", "redshift", "size_arcsec")
                                 if column in catalogue.colnames}}
    noise = border_sigma(images) if len(images) else np.zeros(0)
    return RealImages(images, tuple(names[i] for i in planes), unit, scale, beam, noise, extra)


COSMOS_PIXEL_SCALE_ARCSEC = 0.03
COSMOS_UNIT = "electrons/s"  # no BUNIT in the files; MAG = 25.94 - 2.5 log10(flux) (the F814W e-/s zero point)
# Median FWHM of the 100 HST PSF images, measured with galsim.Image.calculateFWHM at 0.03" (range
# 0.06-0.104"; the pixel is included): see cosmos_psf_fwhm_arcsec.
COSMOS_PSF_FWHM_ARCSEC = 0.101


def _cosmos_paths(path: Path | None) -> tuple[Path, Path]:
    """(folder, catalogue file) of the COSMOS stamps; ``path`` may be either."""
    if path is None:
        folder = shared_data_dir() / COSMOS_DIR
        return folder, folder / COSMOS_CATALOGUE
    path = Path(path)
    return (path.parent, path) if path.suffix == ".fits" else (path, path / COSMOS_CATALOGUE)


def load_cosmos_real(path: Path | None = None) -> list[tuple[np.ndarray, float]]:
    """The 100 real HST/ACS F814W galaxy stamps, each as (float32 image [electrons/s], noise sigma [electrons/s]).

    ``path``: the ``cosmos_real_stamps`` folder or its catalogue file (default: the shared data).
    Images come from the catalogue's GAL_FILENAME, HDU GAL_HDU (one HDU per galaxy, 16 to 190
    pixels square, 0.03"/pixel); the noise sigma is sqrt(NOISE_VARIANCE) of the same row (median
    2.6e-3 electrons/s; the HST noise is correlated by drizzling, see ``acs_I_unrot_sci_20_cf.fits``).
    Stamps are in catalogue order.

    Raises:
        InputError: a file is missing, or the catalogue points at an HDU that is not there.
    """
    from astropy.io import fits
    from astropy.table import Table

    folder, catalogue_path = _cosmos_paths(path)
    _require(catalogue_path, "the COSMOS real-galaxy catalogue")
    try:
        catalogue = Table.read(catalogue_path, hdu=1)
        files = {str(name).strip() for name in catalogue["GAL_FILENAME"]}
        stamps = []
        opened = {name: fits.open(_require(folder / name, "the COSMOS galaxy stamps")) for name in files}
        try:
            for row in catalogue:
                hdus = opened[str(row["GAL_FILENAME"]).strip()]
                hdu = int(row["GAL_HDU"])
                if not 0 <= hdu < len(hdus) or hdus[hdu].data is None:
                    raise InputError(f"{catalogue_path}: GAL_HDU {hdu} is not an image of {hdus.filename()}", hdu)
                variance = float(row["NOISE_VARIANCE"])
                if not variance > 0:
                    raise InputError(f"{catalogue_path}: NOISE_VARIANCE {variance} of IDENT {row['IDENT']} is not "
                                     "positive", variance)
                stamps.append((np.asarray(hdus[hdu].data, dtype=np.float32), math.sqrt(variance)))
        finally:
            for hdus in opened.values():
                hdus.close()
    except (OSError, KeyError, ValueError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"{catalogue_path}: unreadable COSMOS stamps ({type(err).__name__}: {err})",
                         str(catalogue_path)) from None
    return stamps


def cosmos_psf_fwhm_arcsec(path: Path | None = None) -> np.ndarray:
    """FWHM [arcsec] of each galaxy's HST PSF image (GalSim ``calculateFWHM`` at 0.03"/pixel; ~50 ms for 100)."""
    import galsim
    from astropy.io import fits
    from astropy.table import Table

    folder, catalogue_path = _cosmos_paths(path)
    catalogue = Table.read(_require(catalogue_path, "the COSMOS real-galaxy catalogue"), hdu=1)
    fwhm = []
    with fits.open(_require(folder / COSMOS_PSF_FILE, "the COSMOS PSF images")) as hdus:
        for row in catalogue:
            image = np.ascontiguousarray(hdus[int(row["PSF_HDU"])].data, dtype=np.float64)
            fwhm.append(galsim.ImageD(image, scale=COSMOS_PIXEL_SCALE_ARCSEC).calculateFWHM())
    return np.array(fwhm)


MOSAIC_FILL = 1.15  # area of a square mosaic / the stamps' area at the first try (shelf packing leaves gaps)


def _shelf_pack(shapes: list[tuple[int, int]], width: int) -> tuple[list[tuple[int, int]], int]:
    """Corners (y0, x0) of ``shapes`` packed in shelves of ``width`` pixels (tallest first), and the height used."""
    order = sorted(range(len(shapes)), key=lambda i: -shapes[i][0])  # stable: ties keep the input order
    corners: list[tuple[int, int]] = [(0, 0)] * len(shapes)
    y = x = shelf = 0
    for i in order:
        h, w = shapes[i]
        if w > width:
            raise InputError(f"a {w}-pixel-wide stamp does not fit a {width}-pixel-wide mosaic", w)
        if x + w > width:
            y, x, shelf = y + shelf, 0, 0
        corners[i] = (y, x)
        x, shelf = x + w, max(shelf, h)
    return corners, y + shelf


def mosaic_layout(shapes: list[tuple[int, int]], size: int | None = None) -> tuple[list[tuple[int, int]], int]:
    """Where :func:`cosmos_mosaic` pastes stamps of ``shapes`` (each (H, W)): their corners (y0, x0) and the side.

    Stamps are packed without overlap in shelves (rows), tallest first. With ``size`` the mosaic is
    ``size`` x ``size`` pixels (``InputError`` if the stamps do not fit); without, the smallest square
    side (to ~2%) that holds them.
    """
    shapes = [(int(h), int(w)) for h, w in shapes]
    if not shapes:
        raise InputError("a mosaic needs at least one stamp", shapes)
    if size is not None:
        corners, height = _shelf_pack(shapes, int(size))
        if height > size:
            raise InputError(f"the {len(shapes)} stamps do not fit a {size}x{size} mosaic (they need "
                             f"{height} rows at that width); give a larger size or None", size)
        return corners, int(size)
    side = max(max(w for _, w in shapes), math.ceil(math.sqrt(MOSAIC_FILL * sum(h * w for h, w in shapes))))
    while True:
        corners, height = _shelf_pack(shapes, side)
        if height <= side:
            return corners, side
        side = max(side + 1, math.ceil(side * 1.02))


def cosmos_mosaic(stamps: list[tuple[np.ndarray, float]], seed: int = 0,
                  size: int | None = None) -> tuple[np.ndarray, float]:
    """The stamps pasted on one image (no overlap, :func:`mosaic_layout`), gaps filled with Gaussian noise.

    Each stamp keeps its own pixels, real galaxy and real (drizzle-correlated) noise around it;
    only the pixels between stamps are drawn: white Gaussian noise of the median stamp noise,
    from ``np.random.default_rng(seed)``. So the mosaic is an image of real galaxies whose noise
    level varies a little from stamp to stamp (COSMOS: 2.1e-3 to 1.2e-2 electrons/s, median 2.6e-3).

    Args:
        stamps: (image, noise sigma) pairs as :func:`load_cosmos_real` gives them.
        seed: seeds the gap noise.
        size: side of the square mosaic [pixels]; None: the smallest that holds the stamps.

    Returns:
        ``(image, noise_sigma)``: the float32 (side, side) mosaic [stamp unit] and the median stamp noise.
    """
    corners, side = mosaic_layout([np.shape(image) for image, _ in stamps], size)
    sigma = float(np.median([s for _, s in stamps]))
    mosaic = np.random.default_rng(seed).normal(0.0, sigma, size=(side, side)).astype(np.float32)
    for (image, _), (y0, x0) in zip(stamps, corners, strict=True):
        mosaic[y0:y0 + image.shape[0], x0:x0 + image.shape[1]] = image
    return mosaic, sigma


# --- Training and evaluation masks. --------------------------------------------------------------

MASK_KINDS = ("cosmic_rays", "hot_pixels", "bad_columns", "bleed_trails", "satellite_trails", "chip_gaps",
              "blank_patches")
BLANK_PATCH_SIDE_PIXELS = (2, 24)  # sides of a blank patch, each uniform (the user test used 8-20)
TRAIL_WIDTH_PIXELS = (1.0, 6.0)  # satellite trails; bleed trails are 1-6 columns wide
COSMIC_RAY_LENGTH_PIXELS = (2.0, 40.0)
CHIP_GAP_WIDTH_PIXELS = (2, 64)
SIGNAL_GUIDED_SHARE = 0.5  # share of patches / trails / columns centred on signal when a signal is given
# Signal weights are clip(signal - SIGNAL_FLOOR_SIGMA, 0): with the floor at 0, the positive half of the
# noise of an empty sky (0.4 sigma per pixel on average over ~10^5 pixels) would outweigh the sources.
SIGNAL_FLOOR_SIGMA = 2.0
MAX_REJECTIONS = 64  # consecutive defects that would overshoot the masked fraction before single pixels fill in


class _Centres:
    """Draws defect centres (y, x) [pixels]: uniform, or with probability ∝ the signal above its floor."""

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int], signal: np.ndarray | None):
        self.rng, self.shape = rng, shape
        self.cdf = None
        if signal is not None:
            weights = np.clip(np.nan_to_num(np.asarray(signal, dtype=np.float64), nan=0.0, posinf=0.0,
                                            neginf=0.0) - SIGNAL_FLOOR_SIGMA, 0.0, None).ravel()
            cdf = np.cumsum(weights)
            if cdf[-1] > 0:
                self.cdf = cdf  # cumulative once, then one searchsorted per draw (rng.choice(p=) is O(N) each)

    def uniform(self) -> tuple[float, float]:
        return float(self.rng.uniform(-0.5, self.shape[0] - 0.5)), float(self.rng.uniform(-0.5, self.shape[1] - 0.5))

    def on_signal(self) -> tuple[float, float]:
        flat = int(np.searchsorted(self.cdf, self.rng.uniform(0.0, self.cdf[-1]), side="right"))
        flat = min(flat, self.cdf.size - 1)
        return float(flat // self.shape[1]), float(flat % self.shape[1])

    def draw(self, guided_share: float = SIGNAL_GUIDED_SHARE) -> tuple[float, float]:
        # The coin is tossed even without a signal, so a signal changes where defects land, not what is drawn.
        guided = self.rng.uniform() < guided_share
        return self.on_signal() if guided and self.cdf is not None else self.uniform()


def _cosmic_rays(rng, shape, centres, budget) -> list[Primitive]:
    rays: list[Primitive] = []
    for _ in range(1 + rng.poisson(3)):
        y, x = centres.draw()
        half = 0.5 * rng.uniform(*COSMIC_RAY_LENGTH_PIXELS)
        angle = rng.uniform(0.0, np.pi)
        dy, dx = half * math.sin(angle), half * math.cos(angle)
        rays.append(CosmicRay(y - dy, x - dx, y + dy, x + dx))
        if rng.uniform() < 0.3:  # a wider (2-pixel) track: a grazing heavy particle
            rays.append(CosmicRay(y - dy + 1, x - dx, y + dy + 1, x + dx))
    return rays


def _hot_pixels(rng, shape, centres, budget) -> list[Primitive]:
    n = 1 + rng.poisson(max(1.0, 2e-4 * shape[0] * shape[1]))
    return [HotPixel(int(rng.integers(shape[0])), int(rng.integers(shape[1]))) for _ in range(n)]


def _bad_columns(rng, shape, centres, budget) -> list[Primitive]:
    ny = shape[0]
    x = int(math.floor(centres.draw()[1] + 0.5))
    width = 1 if rng.uniform() < 0.8 else int(rng.integers(2, 4))
    if rng.uniform() < 0.5:
        start, stop = 0, ny  # the whole column
    else:  # from a charge trap to the readout edge, at the bottom or the top of the image
        trap = int(rng.integers(max(1, ny // 8), ny + 1))
        start, stop = (0, trap) if rng.uniform() < 0.5 else (ny - trap, ny)
    return [BadColumn(x + k, start, stop) for k in range(width)]


def _bleed_trails(rng, shape, centres, budget) -> list[Primitive]:
    # A saturated star: its core and the charge bled up and down its columns. Bleeding happens at the
    # brightest sources, so with a signal every trail is centred on it.
    y, x = centres.draw(guided_share=1.0)
    iy, ix = int(math.floor(y + 0.5)), int(math.floor(x + 0.5))
    width = int(rng.integers(1, 7))
    length = rng.uniform(6, max(8, shape[0] // 3))
    first = ix - width // 2
    segments: list[Primitive] = [BlankPatch(iy - width // 2, iy - width // 2 + width, first, first + width)]
    for k in range(width):
        # Outer columns bleed less than the central one; the split up/down is uneven.
        column_length = length * (1.0 - abs(k - (width - 1) / 2) / width) * rng.uniform(0.7, 1.0)
        below = column_length * rng.uniform(0.3, 0.7)
        segments.append(ColumnSegment(first + k, int(iy - below), int(iy + column_length - below) + 1))
    return segments


def _satellite_trails(rng, shape, centres, budget) -> list[Primitive]:
    y, x = centres.draw()
    return [SatelliteTrail.through(y, x, float(rng.uniform(0.0, np.pi)), float(rng.uniform(*TRAIL_WIDTH_PIXELS)))]


def _chip_gaps(rng, shape, centres, budget) -> list[Primitive]:
    ny, nx = shape
    vertical = rng.uniform() < 0.5
    length = ny if vertical else nx
    # Narrow enough to fit what is left of the masked-fraction budget: a real gap (50-270 pixels) would
    # fill a small image.
    widest = min(CHIP_GAP_WIDTH_PIXELS[1], budget // max(length, 1))
    if widest < CHIP_GAP_WIDTH_PIXELS[0]:
        widest = CHIP_GAP_WIDTH_PIXELS[0]  # will overshoot and be rejected; keeps the draw order fixed
    width = int(rng.integers(CHIP_GAP_WIDTH_PIXELS[0], widest + 1))
    start = int(rng.integers(-width // 2, (nx if vertical else ny) - width // 2))
    return [BlankPatch(0, ny, start, start + width) if vertical else BlankPatch(start, start + width, 0, nx)]


def _blank_patches(rng, shape, centres, budget) -> list[Primitive]:
    y, x = centres.draw()
    height, width = (int(v) for v in rng.integers(BLANK_PATCH_SIDE_PIXELS[0], BLANK_PATCH_SIDE_PIXELS[1] + 1,
                                                  size=2))
    y0, x0 = int(math.floor(y + 0.5)) - height // 2, int(math.floor(x + 0.5)) - width // 2
    return [BlankPatch(y0, y0 + height, x0, x0 + width)]  # clipped to the image when rasterised


_DRAW_KIND: dict[str, Callable[..., list[Primitive]]] = {
    "cosmic_rays": _cosmic_rays, "hot_pixels": _hot_pixels, "bad_columns": _bad_columns,
    "bleed_trails": _bleed_trails, "satellite_trails": _satellite_trails, "chip_gaps": _chip_gaps,
    "blank_patches": _blank_patches,
}


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    try:
        ny, nx = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise InputError(f"shape must be (ny, nx), got {shape!r}", shape) from None
    if ny < 1 or nx < 1:
        raise InputError(f"shape must be positive, got {shape!r}", shape)
    return ny, nx


def draw_training_mask(rng: np.random.Generator, shape: tuple[int, int], signal: np.ndarray | None = None,
                       masked_fraction: tuple[float, float] = (0.01, 0.15)) -> np.ndarray:
    """A random defect mask (True = masked) of lensforge's defect kinds, for training the in-painter.

    Each call takes a random subset of :data:`MASK_KINDS` (each kind with probability 1/2, at least
    one) and a target masked fraction uniform in ``masked_fraction``, then adds defects of the chosen
    kinds, a kind drawn at random each time, until the target is reached. A defect that would take
    the fraction above ``masked_fraction[1]``, or adds no pixel, is redrawn; after 64 redraws in a row, single
    pixels fill the rest, so the fraction always lands within the bounds. Geometry is lensforge's
    own (:mod:`lensforge.pipeline.stamps.defects` primitives, rasterised by its ``rasterise``):

    - cosmic rays: batches of 1 + Poisson(3) straight tracks, 2-40 pixels long, 30% two pixels wide;
    - hot pixels: batches of 1 + Poisson(2e-4 x pixels) single pixels;
    - bad columns: 1 (80%) or 2-3 adjacent columns, whole (50%) or from a trap to the top or bottom edge;
    - bleed trails: a saturated core of 1-6 pixels and as many columns bled up and down, 6 to ny/3
      pixels long (the tile model's ``BleedTrail`` geometry, a column segment);
    - satellite trails: lines across the image, 1-6 pixels wide, at any angle;
    - chip gaps: a dead band across the image, 2-64 pixels wide (narrower when the budget is short);
    - blank patches: rectangles with sides uniform in 2-24 pixels.

    With ``signal`` ((H, W), in noise-sigma units), half of the cosmic rays, bad columns, satellite
    trails and blank patches, and every bleed trail, are centred on a pixel drawn with probability
    ∝ clip(signal - 2, 0): holes land on sources, the brightest most often. (Deviation from a
    plain clip(signal, 0): a noisy signal's positive noise, summed over an empty sky, would
    outweigh the sources; the floor of 2 sigma leaves them the weight.)

    Args:
        rng: the only source of randomness; the mask is a function of its state.
        shape: (ny, nx) [pixels].
        signal: optional (ny, nx) image / noise sigma steering where defects land.
        masked_fraction: (low, high) bounds of the masked share of pixels, 0 <= low <= high < 1.

    Returns:
        An (ny, nx) bool mask.
    """
    ny, nx = _check_shape(shape)
    low, high = (float(v) for v in masked_fraction)
    if not 0.0 <= low <= high < 1.0:
        raise ConfigError(f"masked_fraction must be 0 <= low <= high < 1, got {masked_fraction!r}", masked_fraction)
    n_pixels = ny * nx
    low_count, high_count = math.ceil(low * n_pixels), math.floor(high * n_pixels)
    if low_count > high_count:
        raise ConfigError(f"masked_fraction {masked_fraction!r} holds no whole number of the {n_pixels} pixels of "
                          f"a {ny}x{nx} image", masked_fraction)
    if signal is not None and np.shape(signal) != (ny, nx):
        raise InputError(f"signal has shape {np.shape(signal)}, the mask {(ny, nx)}", np.shape(signal))
    kinds = [kind for kind in MASK_KINDS if rng.uniform() < 0.5]
    if not kinds:
        kinds = [MASK_KINDS[int(rng.integers(len(MASK_KINDS)))]]
    target = int(rng.integers(low_count, high_count + 1))
    centres = _Centres(rng, (ny, nx), signal)
    whole = PixelBox.covering((ny, nx))
    mask = np.zeros((ny, nx), dtype=bool)
    count = rejections = 0
    while count < target:
        if rejections >= MAX_REJECTIONS:
            # Only single pixels still fit: fill the rest with hot pixels among the unmasked ones.
            free = np.flatnonzero(~mask.ravel())
            mask.ravel()[rng.choice(free, size=target - count, replace=False)] = True
            break
        kind = kinds[int(rng.integers(len(kinds)))]
        hit = rasterise(_DRAW_KIND[kind](rng, (ny, nx), centres, high_count - count), whole)
        new = int(np.count_nonzero(hit & ~mask))
        # A defect adding nothing (already masked, or off the image) counts as a redraw too: otherwise a
        # kind that keeps landing on the same masked pixels (a bleed trail on the one bright source) loops.
        if new == 0 or count + new > high_count:
            rejections += 1
            continue
        rejections = 0
        mask |= hit
        count += new
    return mask


def evaluation_mask(shape: tuple[int, int], seed: int, index: int, signal: np.ndarray | None = None) -> np.ndarray:
    """The mask of test image ``index``: :func:`draw_training_mask` with ``np.random.default_rng([seed, index])``.

    A stream per image: the masks do not depend on the order images are evaluated in, nor on the
    number of workers. ``signal`` as in :func:`draw_training_mask` (pass the same one every time).
    """
    if int(seed) < 0 or int(index) < 0:
        raise ConfigError(f"seed and index must be >= 0, got {seed}, {index}", (seed, index))
    return draw_training_mask(np.random.default_rng([int(seed), int(index)]), shape, signal)


# --- Simulated survey tiles. ---------------------------------------------------------------------

PRESETS = ("lsst", "hsc", "euclid_vis", "roman", "ska_mid")
CORPUS_VERSION = 1  # bump when simulated_image's output changes for the same inputs (invalidates caches)
CACHE_ENV = "LENSFORGE_CACHE"


@dataclass(frozen=True, eq=False)
class SimulatedImage:
    """One simulated survey tile as the in-painter sees it.

    Attributes:
        image: (H, W) float32, background-subtracted [``unit``]; spoiled pixels keep their rendered values.
        bad: (H, W) bool, pixels spoiled by the simulated defects (every MASK bit but EDGE): not truth,
            keep them out of losses and metrics.
        noise_sigma: background noise std [``unit``] (optical: sky + read noise of the model; radio: robust
            sigma of the good pixels, see :func:`simulated_image`).
        unit: ``"ADU"`` (optical) or ``"Jy/beam"`` (radio).
        pixel_scale_arcsec: pixel scale [arcsec / pixel].
        resolution_fwhm_arcsec: PSF FWHM (optical, without the pixel) or restoring-beam FWHM (radio) [arcsec].
        preset: the survey preset.
        extra: scalars about the rendering: ``background`` (subtracted, [unit]), ``thermal_noise_sigma``
            (radio, [Jy/beam]), ``render_seconds``, ``n_objects``.
    """

    image: np.ndarray
    bad: np.ndarray
    noise_sigma: float
    unit: str
    pixel_scale_arcsec: float
    resolution_fwhm_arcsec: float
    preset: str
    extra: dict = field(default_factory=dict)


def default_cache_dir() -> Path:
    """``$LENSFORGE_CACHE`` if set, else ``~/.cache/lensforge/corpus``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lensforge" / "corpus"


def _preset_config(preset: str, size_pixels: int, seed: int, run_dir_parent: Path | None = None):
    """The RunConfig of one corpus tile: the preset as ``lensforge tile --preset`` builds it, with the
    tile ``size_pixels`` square, the run seed ``seed`` and detection off.

    Radio source counts are per tile in the configuration: they are scaled by the tile's area over the
    preset's own tile area, so the sky keeps the preset's source density at any size.
    """
    from lensforge.pipeline.config import build_config
    from lensforge.pipeline.presets import deep_merge, preset_values

    if preset not in PRESETS:
        raise ConfigError(f"unknown corpus preset {preset!r}; valid: {list(PRESETS)}", preset)
    values = preset_values(preset)
    base = build_config(values, f"preset {preset}")
    top = {"seed": int(seed), "name": "corpus", "tile": {"size_pixels": [int(size_pixels)] * 2},
           "detect": {"enabled": False}}
    if run_dir_parent is not None:
        top["out_dir"] = str(run_dir_parent)
    if base.survey.kind == "radio":
        area = size_pixels**2 / float(base.tile.size_pixels[0] * base.tile.size_pixels[1])
        top["radio"] = {"n_extended": max(1, round(base.radio.n_extended * area)),
                        "n_compact": max(1, round(base.radio.n_compact * area))}
    return build_config(deep_merge(values, top), f"corpus preset {preset}")


def _config_digest(config) -> str:
    """12 hex digits of the settings that shape a corpus tile (a preset edit invalidates its caches)."""
    settings = config.to_dict()
    for key in ("out_dir", "name", "dask", "limits", "train", "inpaint", "evaluate", "simulation"):
        settings.pop(key, None)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def _render(preset: str, size_pixels: int, seed: int) -> SimulatedImage:
    """Render one tile of ``preset`` in this process (no Prefect, no Dask)."""
    from lensforge.catalogs.schema import MASK_BITS

    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lensforge-corpus-") as tmp:
        config = _preset_config(preset, size_pixels, seed, Path(tmp))
        survey = config.survey
        if survey.kind == "radio":
            from astropy.io import fits

            from lensforge.pipeline.tiles.radio import make_radio_tile

            # make_radio_tile writes the tile's FITS and truth into the temporary run directory.
            summary = make_radio_tile(config, 0)
            with fits.open(summary["fits"]) as hdus:
                image = np.asarray(hdus["SCIENCE"].data, dtype=np.float32)
                bitmask = np.asarray(hdus["MASK"].data, dtype=np.int32)
                header = hdus["SCIENCE"].header
                resolution = math.sqrt(float(header["BMAJ"]) * float(header["BMIN"])) * 3600.0
            bad = (bitmask & ~np.int32(MASK_BITS["EDGE"])) != 0
            # The dirty image has no zero-spacing flux, so its zero level is arbitrary (offsets of up to
            # ~3 sigma, either sign): subtract the median of the good pixels.
            background = float(np.median(image[~bad])) if (~bad).any() else 0.0
            image = image - np.float32(background)
            image[bad] = 0.0  # flagged (blank) patches hold no data: 0, as make_radio_tile writes them
            # Uncleaned sidelobes of every source dominate the background (15-35x the thermal noise): the
            # noise an in-painter must reproduce is the measured one.
            noise = float(robust_sigma(image[~bad])) if (~bad).any() else float(summary["noise_jy_per_beam"])
            extra = {"background": background, "thermal_noise_sigma": float(summary["noise_jy_per_beam"]),
                     "n_objects": int(summary["n_objects"])}
            unit = "Jy/beam"
        else:
            from lensforge.pipeline.stamps.surveys import sky_noise_sigma_adu
            from lensforge.pipeline.tiles.render import plan_tile, render_tile

            plan = plan_tile(config, 0)
            pixels = render_tile(plan)
            image, bitmask = pixels.image.astype(np.float32), pixels.bitmask
            bad = (bitmask & ~np.int32(MASK_BITS["EDGE"])) != 0
            # render_region subtracts the exact sky level before the defects: the science image holds no
            # sky, and the median of the good pixels is only the faint galaxies' light (0.002-0.06 sigma).
            background = 0.0
            noise = sky_noise_sigma_adu(survey)
            scale = survey.pixel_scale_arcsec
            # The PSF itself, oversampled 8x: a 64-pixel draw at the survey scale overestimates a PSF of
            # ~1.5 pixels by up to 2x (Euclid 0.26" for 0.15").
            resolution = float(plan.psf.drawImage(nx=512, ny=512, scale=scale / 8, method="no_pixel")
                               .calculateFWHM())
            extra = {"background": background, "n_objects": len(plan)}
            unit = "ADU"
    extra["render_seconds"] = time.perf_counter() - began
    return SimulatedImage(image, bad, float(noise), unit, float(survey.pixel_scale_arcsec), float(resolution),
                          preset, extra)


_CACHE_SCALARS = ("noise_sigma", "pixel_scale_arcsec", "resolution_fwhm_arcsec")


def _save(path: Path, result: SimulatedImage) -> None:
    arrays = {"image": result.image, "bad": result.bad, "unit": np.array(result.unit),
              "preset": np.array(result.preset), "version": np.array(CORPUS_VERSION),
              **{name: np.array(getattr(result, name)) for name in _CACHE_SCALARS},
              **{f"extra_{key}": np.array(value) for key, value in result.extra.items()}}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:  # a file object: np.savez would append .npz to a bare path
            np.savez(handle, **arrays)


def _load(path: Path) -> SimulatedImage | None:
    """The cached image at ``path``, or None when it is absent, damaged or of another corpus version."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if int(data["version"]) != CORPUS_VERSION:
                return None
            extra = {key.removeprefix("extra_"): data[key].item() for key in data.files if key.startswith("extra_")}
            return SimulatedImage(data["image"].astype(np.float32), data["bad"].astype(bool),
                                  float(data["noise_sigma"]), str(data["unit"]), float(data["pixel_scale_arcsec"]),
                                  float(data["resolution_fwhm_arcsec"]), str(data["preset"]), extra)
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def cache_path(preset: str, size_pixels: int, seed: int, cache_dir: Path | None = None) -> Path:
    """Where :func:`simulated_image` caches ``(preset, size_pixels, seed)``: the corpus version and a digest
    of the effective settings are part of the name."""
    config = _preset_config(preset, size_pixels, seed)
    name = f"{preset}_{int(size_pixels)}px_seed{int(seed)}_v{CORPUS_VERSION}_{_config_digest(config)}.npz"
    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / name


def simulated_image(preset: str, size_pixels: int = 512, seed: int = 0,
                    cache_dir: Path | None = None) -> SimulatedImage:
    """One lensforge tile of survey ``preset``, ``size_pixels`` square, run seed ``seed``, rendered in this process.

    The configuration is the preset's, as ``lensforge tile --preset <preset>`` builds it, with
    ``tile.size_pixels = (size, size)``, ``seed = seed`` and detection off; tile id 0. Optical
    presets go through ``plan_tile`` / ``render_tile`` (no Dask); the radio preset through
    ``make_radio_tile`` in a temporary run directory, with its source counts scaled to keep the
    preset's density (they are per tile in the configuration).

    - Optical (ADU): the science image is sky-subtracted by construction (nothing more is
      subtracted); ``noise_sigma`` is the model's sky + read noise, which the robust sigma of the
      good pixels matches to ~1-3%; the resolution is the PSF's FWHM (oversampled, no pixel).
      Defects are drawn from the preset's rates (LSST 512^2: ~0.5% bad pixels; Euclid: ~3%, cosmic rays).
    - Radio (Jy/beam, ``ska_mid``): the *dirty* image (no CLEAN). Its zero level is arbitrary, so the
      median of the good pixels is subtracted; its background is dominated by the sidelobes of every
      source, 15-35x the thermal noise, so ``noise_sigma`` is the robust sigma (MAD) of the good
      pixels and the thermal value is in ``extra["thermal_noise_sigma"]``. Resolution: geometric mean
      of the measured beam's BMAJ and BMIN (~4.4").

    ``bad`` is every MASK bit but EDGE (EDGE pixels hold good data).

    Cached as ``.npz`` under ``cache_dir`` (default :func:`default_cache_dir`), named by
    :func:`cache_path` (preset, size, seed, :data:`CORPUS_VERSION`, a digest of the settings),
    written atomically; a damaged or stale file is rendered again.

    Time to render at 512x512 on this machine (2 shared cores, one process, seeds 1-3, imports
    done): lsst 1.0-1.3 s, hsc 1.0-1.1 s, euclid_vis 1.9-2.5 s, roman 3.5-4.3 s (its optical PSF
    with 6 struts needs 255-pixel FFT stamps), ska_mid 0.4-0.5 s; the first call in a process
    takes ~0.5 s more (imports). A cache hit takes ~10 ms (1.3 MB per 512^2 file).
    """
    if int(size_pixels) < 16:
        raise ConfigError(f"size_pixels must be >= 16, got {size_pixels}", size_pixels)
    path = cache_path(preset, size_pixels, seed, cache_dir)
    cached = _load(path) if path.is_file() else None
    if cached is not None:
        return cached
    result = _render(preset, int(size_pixels), int(seed))
    _save(path, result)
    return result
