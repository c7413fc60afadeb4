"""Empirical noise of real radio images: its correlation function measured from source-free corners.

A CLEANed interferometric image's noise is not white noise convolved by the restoring beam alone.
FIRST snapshots also carry the dirty beam's sidelobes, CLEAN residuals and faint confusing
sources: on the FIRST train split the correlation between pixels 4-5 apart (7-9") is still ~0.2,
where the Gaussian-beam model gives 0.10 and 0.03, and it differs between the two axes. Generated
galaxies given the beam model's noise showed a flatter power spectrum than real ones on the FIRST
calibration split (median slope -1.80 against -2.00).

:func:`measure_noise_correlation` averages the noise correlation function of the source-free corner
patches of a set of real images, each in units of its own noise sigma; :func:`correlated_noise`
turns it into a GalSim noise model (``galsim.BaseCorrelatedNoise``) that draws noise with that
correlation at any variance. GalSim does the estimate and the drawing; this module only selects
the patches and averages.
"""

from __future__ import annotations

import galsim
import numpy as np

from lensforge.errors import InputError

NOISE_PATCH_PIXELS = 56  # corner patch side [pixels]: 101" of FIRST, > 2 beams from a 150-pixel image's centre
SOURCE_FREE_SIGMA = 5.0  # a patch with any pixel beyond this many noise sigma holds a source and is skipped


def _corner_patches(image: np.ndarray, side: int) -> list[np.ndarray]:
    return [image[:side, :side], image[:side, -side:], image[-side:, :side], image[-side:, -side:]]


def measure_noise_correlation(images: np.ndarray, noise_sigma: np.ndarray, pixel_scale_arcsec: float,
                              patch_pixels: int = NOISE_PATCH_PIXELS,
                              source_free_sigma: float = SOURCE_FREE_SIGMA) -> tuple[np.ndarray, int]:
    """Mean noise correlation function of the source-free corner patches of ``images``.

    Each patch (its mean removed, divided by its image's ``noise_sigma``) is zero-padded to twice
    its side before GalSim estimates its correlation function (``galsim.CorrelatedNoise`` with
    ``correct_periodicity=False``): the padding makes the estimate the biased, positive
    semi-definite one, so the mean has a power spectrum that is nowhere negative and GalSim draws
    noise of exactly the measured variance and correlation (averaged periodic estimates went
    negative and drew 1.4x the variance).

    Args:
        images: (N, H, W) real images [any unit], sources near their centres.
        noise_sigma: (N,) noise sigma of each image [same unit].
        pixel_scale_arcsec: pixel scale [arcsec].
        patch_pixels: side of the four corner patches [pixels]; at most half the image.
        source_free_sigma: patches with any |pixel| above this many sigma are skipped.

    Returns:
        (correlation, n_patches): an odd square (2 * patch_pixels - 1 on a side), symmetric under
        180-degree rotation, 1 at the centre (zero lag), and the number of patches averaged.

    Raises:
        InputError: images that are not (N, H, W) with H, W >= 2 * patch_pixels, sigmas that are not
            one positive value per image, or no source-free patch at all.
    """
    images = np.asarray(images)
    noise_sigma = np.asarray(noise_sigma, dtype=np.float64)
    if images.ndim != 3 or min(images.shape[1:]) < 2 * patch_pixels:
        raise InputError(f"noise correlation needs (N, H, W) images of at least {2 * patch_pixels} pixels, "
                         f"got {images.shape}", images.shape)
    if noise_sigma.shape != (len(images),) or not (noise_sigma > 0).all():
        raise InputError("noise correlation needs one positive noise sigma per image")
    side = 2 * patch_pixels - 1
    total = np.zeros((side, side))
    n_patches = 0
    for image, sigma in zip(images, noise_sigma, strict=True):
        for patch in _corner_patches(image, patch_pixels):
            patch = np.asarray(patch, dtype=np.float64) / sigma
            if not np.isfinite(patch).all() or np.abs(patch).max() > source_free_sigma:
                continue
            padded = np.zeros((2 * patch_pixels, 2 * patch_pixels))
            padded[:patch_pixels, :patch_pixels] = patch - patch.mean()
            estimate = galsim.CorrelatedNoise(galsim.Image(padded, scale=pixel_scale_arcsec),
                                              correct_periodicity=False)
            total += estimate.drawImage(galsim.ImageD(side, side, scale=pixel_scale_arcsec)).array
            n_patches += 1
    if n_patches == 0:
        raise InputError(f"no source-free {patch_pixels}x{patch_pixels} corner patch (all pixels within "
                         f"{source_free_sigma:g} sigma) in {len(images)} images")
    correlation = 0.5 * (total + total[::-1, ::-1])  # exact 180-degree symmetry, as GalSim requires
    return correlation / correlation[side // 2, side // 2], n_patches


def correlated_noise(correlation: np.ndarray, pixel_scale_arcsec: float, variance: float = 1.0,
                     rng: galsim.BaseDeviate | None = None) -> galsim.BaseCorrelatedNoise:
    """GalSim noise with the correlation function ``correlation`` (centre = zero lag) at ``variance``.

    Built as ``galsim.CorrelatedNoise.from_file`` builds one from a stored correlation function
    (an ``InterpolatedImage`` in surface-brightness normalisation, linear interpolation), with the
    same checks.

    Raises:
        InputError: not an odd square, not symmetric under 180-degree rotation, or its centre is not
            its largest value.
    """
    correlation = np.asarray(correlation, dtype=np.float64)
    if correlation.ndim != 2 or correlation.shape[0] != correlation.shape[1] or correlation.shape[0] % 2 != 1:
        raise InputError(f"a noise correlation function is an odd square image, got {correlation.shape}")
    centre = correlation[correlation.shape[0] // 2, correlation.shape[1] // 2]
    if np.abs(correlation - correlation[::-1, ::-1]).max() > 1e-12 * abs(centre):
        raise InputError("a noise correlation function is symmetric under 180-degree rotation")
    if not centre > 0 or np.abs(correlation).max() > centre * (1 + 1e-12):
        raise InputError("a noise correlation function peaks at zero lag")
    profile = galsim.InterpolatedImage(galsim.Image(correlation, scale=pixel_scale_arcsec), normalization="sb",
                                       calculate_stepk=False, calculate_maxk=False,
                                       x_interpolant=galsim.Linear())
    return galsim.BaseCorrelatedNoise(rng, profile, galsim.PixelScale(pixel_scale_arcsec)).withVariance(variance)


def noise_kernel(correlation: np.ndarray, pixels: int = 15) -> np.ndarray:
    """A (pixels, pixels) kernel that turns white noise into noise of (nearly) ``correlation``.

    Training convolves white noise by a kernel on the GPU or CPU (:func:`lensforge.models.train.train`'s
    ``noise_kernel``), where GalSim cannot draw. The kernel is the symmetric square root of the
    correlation function: the inverse FFT of the square root of its power spectrum (negative power,
    from rounding, set to 0), cut to its central ``pixels`` (odd) square. The cut drops correlation
    beyond about ``pixels`` apart. Returns float64, unit sum of squares (unit variance).
    """
    correlation = np.asarray(correlation, dtype=np.float64)
    if pixels % 2 != 1 or pixels > correlation.shape[0]:
        raise InputError(f"noise kernel size must be odd and at most the correlation's {correlation.shape[0]}, "
                         f"got {pixels}")
    power = np.fft.fft2(np.fft.ifftshift(correlation)).real
    root = np.fft.fftshift(np.fft.ifft2(np.sqrt(np.clip(power, 0.0, None))).real)
    centre, half = correlation.shape[0] // 2, pixels // 2
    kernel = root[centre - half:centre + half + 1, centre - half:centre + half + 1]
    return kernel / np.sqrt((kernel ** 2).sum())
