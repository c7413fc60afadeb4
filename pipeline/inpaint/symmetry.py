"""Point-symmetric fill of a centred galaxy's masked pixels: the in-painting prior that keeps the shear.

Why. Let ``P`` be the point reflection about the galaxy's centroid, ``x -> 2c - x``. A constant shear
is a linear map about that centre, so it commutes with ``P``; so does convolution with a PSF that is
itself point-symmetric (Moffat, Kolmogorov, Airy), and so does the pixel. Filling a masked pixel with
the observed value at its mirror therefore gives an image whose filled part is the *lensed* mirror of
the intrinsic galaxy: it responds to the shear as the hidden pixels did, whatever the galaxy's
morphology (an asymmetric galaxy's mirror is a different galaxy, but it is lensed by the same shear).
A smooth fill (biharmonic, a learned network) lowers the response where it cuts through the profile,
which a shear calibration sees as multiplicative bias (``docs/shear_calibration.md``). The cost is
noise: a filled pixel repeats its mirror's noise, so the filled stamp's noise is correlated in pairs.
The idea is the symmetry prior of the SDSS deblender (Lupton, in Stoughton et al. 2002).

The centroid is GalSim's adaptive-moment centroid of the ``fallback``-filled stamp, then of the stamp
filled from that centroid's mirror (the stamp centre where HSM fails). Not HSM with the masked pixels
as bad pixels: a weight that skips pixels on one side pulls the centroid away from them (0.3 px for a
bad column 3.5 px from the centre of the tests' noiseless galaxy), while the filled stamp puts it within
0.005 px and the refill within 0.001 px. The mirror value is a cubic spline of the filled stamp at
``2c - x`` (scipy; the spline's coefficients reach a little of the fallback next to a hole), used only
where the four pixels around ``2c - x`` are known. Pixels without a known mirror (a hole over the
centre, a hole and its mirror both masked) keep the ``fallback`` fill.

Limitation, measured (``benchmarks/shear_inpainting_levers.py``, docs/shear_calibration.md): on noisy
stamps the mirror about the exact centre, or about the unmasked stamp's centroid, leaves the shear
calibration unchanged, but the centroid estimated from the masked stamp is pulled along the mask's
geometry, and that is all of the shift of m the fill still causes. The pull is the noiseless fill's,
not the noise's, and it matters only where a hole lies within about a PSF FWHM of the centre:
:func:`interpolated_centre` flags those stamps, as survey pipelines flag objects with interpolated
pixels at their centre.
"""

from __future__ import annotations

import galsim
import numpy as np
from scipy.ndimage import map_coordinates

from lensforge.errors import InputError


def galaxy_centroids(images: np.ndarray) -> np.ndarray:
    """(N, 2) centroid ``(y, x)`` [pixels, 0-based array indices] of each (filled) stamp's galaxy.

    GalSim HSM ``FindAdaptiveMom``; the stamp centre ``((H - 1) / 2, (W - 1) / 2)`` where it
    fails (no galaxy).
    """
    images = np.asarray(images)
    n, height, width = images.shape
    centroids = np.tile([(height - 1) / 2.0, (width - 1) / 2.0], (n, 1))
    for index in range(n):
        image = galsim.Image(images[index].astype(np.float64))
        moments = galsim.hsm.FindAdaptiveMom(image, strict=False)
        centre = moments.moments_centroid
        if moments.moments_status == 0 and np.isfinite(centre.x) and np.isfinite(centre.y):
            centroids[index] = centre.y - image.ymin, centre.x - image.xmin
    return centroids


def interpolated_centre(masks: np.ndarray, radius_pixels: float | np.ndarray) -> np.ndarray:
    """(N,) bool: the stamps with a masked pixel within ``radius_pixels`` [pixels] of the stamp centre.

    The flag of an object whose centre is in-painted (LSST's ``interpolatedCenter``, HSC's
    ``pixelflags_interpolatedcenter``), for stamps centred on their galaxy: there no fill knows the
    profile's core, and the centroid a point-symmetric fill needs is pulled by the hole. It depends on
    the mask alone, not on the galaxy or its shear, so a shear catalogue that drops flagged objects
    is not biased by the cut. One PSF FWHM is a natural radius; ``radius_pixels`` may be one value
    or one per stamp.
    """
    hole = np.asarray(masks) != 0
    if hole.ndim != 3:
        raise InputError(f"masks must be (N, H, W); got {hole.shape}")
    n, height, width = hole.shape
    radius = np.broadcast_to(np.asarray(radius_pixels, np.float64), (n,))
    rows, columns = np.indices((height, width), dtype=np.float64)
    distance = np.hypot(rows - (height - 1) / 2.0, columns - (width - 1) / 2.0)
    nearest = np.where(hole, distance, np.inf).reshape(n, -1).min(axis=1)
    return nearest < radius


def psf_fwhm_pixels(psfs: np.ndarray) -> np.ndarray:
    """FWHM [pixels] of each PSF image of (N, H, W) ``psfs`` (or of one (H, W) image): GalSim's
    ``Image.calculateFWHM``, about the image's own centre."""
    psfs = np.asarray(psfs, np.float64)
    stack = psfs[None] if psfs.ndim == 2 else psfs
    fwhm = np.array([galsim.Image(psf, scale=1.0).calculateFWHM() for psf in stack])
    return fwhm[0] if psfs.ndim == 2 else fwhm


def point_symmetric_fill(images: np.ndarray, masks: np.ndarray, fallback: np.ndarray,
                         centroids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fill each stamp's masked pixels with their point mirror about the galaxy's centroid.

    Args:
        images: (N, H, W) background-subtracted stamps, each centred on one galaxy [any flux unit].
        masks: (N, H, W), nonzero = masked.
        fallback: (N, H, W) the same stamps already filled by another method (biharmonic, a
            network): the mirror is interpolated in it, and it is kept where no mirror is known.
        centroids: (N, 2) ``(y, x)`` [pixels, 0-based]; default :func:`galaxy_centroids` of the
            ``fallback``-filled stamps, refined once on the mirror-filled ones.

    Returns:
        ``(filled, mirrored)``: (N, H, W) filled stamps in ``fallback``'s dtype, known pixels
        the input's; (N, H, W) bool, the masked pixels that took their mirror's value.
    """
    images, fallback = np.asarray(images), np.asarray(fallback)
    hole = np.asarray(masks) != 0
    if images.ndim != 3 or hole.shape != images.shape or fallback.shape != images.shape:
        raise InputError(f"images, masks and fallback must all be (N, H, W); got {images.shape}, "
                         f"{hole.shape} and {fallback.shape}")
    start = np.where(hole, fallback, images).astype(fallback.dtype if fallback.dtype.kind == "f" else np.float64)
    if centroids is not None:
        return _mirror_fill(start, hole, np.asarray(centroids, np.float64))
    holed = np.flatnonzero(hole.any(axis=(1, 2)))  # only these need a centroid
    centroids = np.zeros((len(start), 2))
    centroids[holed] = galaxy_centroids(start[holed])
    first, _ = _mirror_fill(start, hole, centroids)
    centroids[holed] = galaxy_centroids(first[holed])
    return _mirror_fill(start, hole, centroids)


def _mirror_fill(start: np.ndarray, hole: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``start`` (filled stamps) with each masked pixel whose mirror about ``centroids`` is known set to it."""
    _, height, width = start.shape
    filled, mirrored = start.copy(), np.zeros_like(hole)
    rows, columns = np.indices((height, width), dtype=np.float64)
    for index in np.flatnonzero(hole.any(axis=(1, 2))):
        source = (2.0 * centroids[index, 0] - rows, 2.0 * centroids[index, 1] - columns)
        # The mirror counts as known only if all four pixels around it are (bilinear weight of known = 1).
        known = map_coordinates((~hole[index]).astype(np.float64), source, order=1, mode="constant", cval=0.0)
        use = hole[index] & (known > 1.0 - 1e-6)
        if use.any():
            mirror = map_coordinates(start[index].astype(np.float64), source, order=3, mode="nearest")
            filled[index][use] = mirror[use]
            mirrored[index] = use
    return filled, mirrored
