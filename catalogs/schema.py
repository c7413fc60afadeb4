"""The training-set schema: array names, dimensions, dtypes, units and the bitmask planes.

One place defines what a lensforge store holds, so writers, loaders and validation
agree. Image-like arrays are ``(object, y, x)``; labels are 1-D along ``object``.
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA_NAME = "lensforge-trainset"
SCHEMA_VERSION = "2.0"
# 1.1: kappa, mu, field_x, field_y, redshift labels. 2.0: numpy (PCG64) noise fields, noise-cancelling
# ring pairs, weights, counterfactuals (object, shift, y, x), split and counterfactual_id labels; later,
# optional arrays that a 2.0 reader leaves alone: visibilities and visibility_weights (object, uv).

# One bit per defect type (LSST/HSC style mask planes). The names are written to the
# Zarr attributes and FITS headers so a reader never has to guess.
MASK_BITS: dict[str, int] = {
    "COSMIC_RAY": 1 << 0,
    "BAD_COLUMN": 1 << 1,
    "SATURATED": 1 << 2,
    "BLEED": 1 << 3,
    "SATELLITE": 1 << 4,
    "CHIP_GAP": 1 << 5,
    "EDGE": 1 << 6,
    "BLANK": 1 << 7,
    "HOT_PIXEL": 1 << 8,  # tiles only: stamp masks are uint8 and use bits 0-7
}
# The planes a stamp store's uint8 ``masks`` can hold: what its ``mask_bits`` attributes list.
STAMP_MASK_BITS: dict[str, int] = {name: bit for name, bit in MASK_BITS.items() if bit < 1 << 8}


@dataclass(frozen=True)
class ArraySpec:
    """How one array of the store is laid out and described."""

    name: str
    dtype: str
    dims: tuple[str, ...]
    units: str
    description: str


IMAGE_DIMS = ("object", "y", "x")
COUNTERFACTUAL_DIMS = ("object", "shift", "y", "x")
# The counterfactual axis: (component sheared, sign of the shift dg), see lensforge.pipeline.stamps.simulate.
COUNTERFACTUAL_SHIFTS = (("g1", 1.0), ("g1", -1.0), ("g2", 1.0), ("g2", -1.0))
SPLIT_NAMES = {0: "train", 1: "validation", 2: "test"}

IMAGE_ARRAYS: dict[str, ArraySpec] = {
    spec.name: spec
    for spec in (
        ArraySpec("images", "float32", IMAGE_DIMS, "adu",
                  "observed stamp: lensed galaxy convolved with PSF and pixel, plus Gaussian noise"),
        ArraySpec("noiseless", "float32", IMAGE_DIMS, "adu", "the same stamp without noise (truth for in-painting)"),
        ArraySpec("masks", "uint8", IMAGE_DIMS, "", "defect bitmask, see attribute mask_bits; 0 = good pixel"),
        ArraySpec("psf", "float32", IMAGE_DIMS, "", "PSF image (incl. pixel response) at the stamp pixel scale, sum 1"),
        ArraySpec("inpainted", "float32", IMAGE_DIMS, "adu",
                  "images with masked pixels replaced by the model's posterior mean; known pixels unchanged"),
        ArraySpec("inpainted_std", "float32", IMAGE_DIMS, "adu",
                  "per-pixel posterior standard deviation of the in-painting (0 on known pixels)"),
        ArraySpec("weights", "float32", IMAGE_DIMS, "adu-2",
                  "inverse noise variance of each pixel, 0 on masked pixels"),
        ArraySpec("counterfactuals", "float32", COUNTERFACTUAL_DIMS, "adu",
                  "the same galaxy and noise drawn at g1+dg, g1-dg, g2+dg, g2-dg (attribute shifts, delta_g)"),
    )
}

VISIBILITY_DIMS = ("object", "uv")

# Radio stamps with visibilities (radio.stamp_visibilities): one row per object, one column per uv cell
# of the stamp (the attributes of ``visibilities`` give the cells; see lensforge.pipeline.radio.stamp_visibilities).
VISIBILITY_ARRAYS: dict[str, ArraySpec] = {
    spec.name: spec
    for spec in (
        ArraySpec("visibilities", "complex64", VISIBILITY_DIMS, "Jy",
                  "mean visibility of the track's samples in each uv cell (attribute uv_wavelengths), thermal noise "
                  "included; the stamp's image is their naturally weighted dirty image"),
        ArraySpec("visibility_weights", "float32", VISIBILITY_DIMS, "Jy-2",
                  "inverse noise variance of each cell's mean visibility, per real and imaginary part"),
    )
}

# Per-object labels: exactly the truth catalogue's columns.
LABEL_ARRAYS: dict[str, ArraySpec] = {
    spec.name: spec
    for spec in (
        ArraySpec("object_id", "int64", ("object",), "", "object index in the run (seeds its random stream)"),
        ArraySpec("ring_pair_id", "int64", ("object",), "", "id shared by the two members of a 90-degree ring pair"),
        ArraySpec("ring_rotation", "float64", ("object",), "deg", "rotation applied to the intrinsic shape (0 or 90)"),
        ArraySpec("g1", "float64", ("object",), "", "applied reduced shear, component 1"),
        ArraySpec("g2", "float64", ("object",), "", "applied reduced shear, component 2"),
        ArraySpec("kappa", "float64", ("object",), "", "convergence at the object (0 for constant/uniform shear)"),
        ArraySpec("mu", "float64", ("object",), "", "applied magnification (1 for constant/uniform shear)"),
        ArraySpec("field_x", "float64", ("object",), "arcsec",
                  "position in the lensing field, east of its centre (used by nfw / power_spectrum)"),
        ArraySpec("field_y", "float64", ("object",), "arcsec", "position in the lensing field, north of its centre"),
        ArraySpec("redshift", "float64", ("object",), "", "source redshift"),
        ArraySpec("e1_intrinsic", "float64", ("object",), "", "intrinsic ellipticity (reduced-shear convention) e1"),
        ArraySpec("e2_intrinsic", "float64", ("object",), "", "intrinsic ellipticity (reduced-shear convention) e2"),
        ArraySpec("flux", "float64", ("object",), "adu", "total galaxy flux"),
        ArraySpec("half_light_radius", "float64", ("object",), "arcsec", "half-light radius of the disk"),
        ArraySpec("bulge_fraction", "float64", ("object",), "", "bulge-to-total flux ratio"),
        ArraySpec("bulge_sersic_n", "float64", ("object",), "", "Sersic index of the bulge"),
        ArraySpec("disk_sersic_n", "float64", ("object",), "", "Sersic index of the disk"),
        ArraySpec("snr", "float64", ("object",), "", "S/N of the unlensed, unrotated galaxy as observed (GalSim "
                  "addNoiseSNR definition); it sets noise_sigma"),
        ArraySpec("noise_sigma", "float64", ("object",), "adu", "standard deviation of the Gaussian pixel noise, "
                  "from snr: shared by ring partners and counterfactuals, independent of the shear"),
        ArraySpec("masked_fraction", "float64", ("object",), "", "fraction of the stamp's pixels that are masked"),
        ArraySpec("split", "int8", ("object",), "", "0 train, 1 validation, 2 test (whole ring pairs)"),
        ArraySpec("counterfactual_id", "int64", ("object",), "",
                  "row of this object in the counterfactuals array, -1 when the store has none"),
    )
}

ALL_ARRAYS: dict[str, ArraySpec] = {**IMAGE_ARRAYS, **VISIBILITY_ARRAYS, **LABEL_ARRAYS}

_ROW = ("object",)

# The truth catalogue of a survey tile: one row per drawn object (galaxies, then stars).
TILE_TRUTH_COLUMNS: dict[str, ArraySpec] = {
    spec.name: spec
    for spec in (
        ArraySpec("object_id", "int64", _ROW, "", "object index in the tile (seeds its random stream)"),
        ArraySpec("is_star", "bool", _ROW, "", "true for stars (point sources), false for galaxies"),
        ArraySpec("x", "float64", _ROW, "pix", "centroid column, 0-based (numpy/photutils); FITS/DS9 = x + 1"),
        ArraySpec("y", "float64", _ROW, "pix", "centroid row, 0-based (numpy/photutils); FITS/DS9 = y + 1"),
        ArraySpec("ra", "float64", _ROW, "deg", "right ascension (ICRS) from the tile's TAN WCS"),
        ArraySpec("dec", "float64", _ROW, "deg", "declination (ICRS) from the tile's TAN WCS"),
        ArraySpec("mag", "float64", _ROW, "mag", "AB magnitude before magnification"),
        ArraySpec("flux", "float64", _ROW, "adu", "total flux before magnification, all exposures"),
        ArraySpec("half_light_radius", "float64", _ROW, "arcsec", "intrinsic half-light radius (0 for stars)"),
        ArraySpec("e1_intrinsic", "float64", _ROW, "", "intrinsic ellipticity e1 (reduced-shear convention)"),
        ArraySpec("e2_intrinsic", "float64", _ROW, "", "intrinsic ellipticity e2"),
        ArraySpec("bulge_fraction", "float64", _ROW, "", "bulge-to-total flux ratio (parametric population)"),
        ArraySpec("cosmos_index", "int64", _ROW, "", "row of the COSMOS catalogue drawn (-1: parametric or star)"),
        ArraySpec("redshift", "float64", _ROW, "", "source redshift (0 for stars)"),
        ArraySpec("g1", "float64", _ROW, "", "applied reduced shear g1, GalSim world frame (+u west, +v north)"),
        ArraySpec("g2", "float64", _ROW, "", "applied reduced shear g2"),
        ArraySpec("kappa", "float64", _ROW, "", "convergence at the object"),
        ArraySpec("mu", "float64", _ROW, "", "applied magnification"),
        ArraySpec("stamp_size", "int64", _ROW, "pix", "side of the object's rendering stamp"),
        ArraySpec("snr", "float64", _ROW, "", "optimal (matched-filter) S/N of the noiseless object on the sky noise"),
    )
}

# Arrays every complete store must hold (noiseless, counterfactuals and the in-painting products are optional).
REQUIRED_ARRAYS = ("images", "masks", "psf", "weights", *LABEL_ARRAYS)


def mask_bit_names(bitmask: int) -> list[str]:
    """Names of the defect bits set in ``bitmask``."""
    return [name for name, bit in MASK_BITS.items() if bitmask & bit]
