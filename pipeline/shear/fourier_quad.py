"""A second, independent shear estimator: Fourier_Quad moments of the galaxy power spectrum.

Zhang, Luo & Foucaud (2015, JCAP 01, 024; Zhang 2008, MNRAS 383, 113). The stamp's power spectrum,
minus the white-noise power, is moved from the survey PSF to an isotropic Gaussian target PSF
``W_beta`` by the factor ``T(k) = |W_beta(k)|^2 / |P(k)|^2`` and its quadrupole moments are taken::

    G1 = -1/2 sum_k (kx^2 - ky^2) T(k) M(k)
    G2 = -    sum_k kx ky         T(k) M(k)
    N  =      sum_k (k^2 - beta^2 k^4 / 2) T(k) M(k),     M(k) = |I(k)|^2 - sigma^2 n_pixels

For an ensemble, ``<G1> / <N> = g1`` and ``<G2> / <N> = g2`` to first order in the shear, whatever
the galaxies' shapes and profiles (no weight-function or PSF approximation: the PSF is divided out
in Fourier space). Per stamp, ``G / N`` is a shear-like ellipticity with a response close to 1, and
lensforge calibrates it with the counterfactual response like the HSM methods.

Why this one: it shares nothing with HSM (no real-space moments, no adaptive weight, no
Gaussianization), so a bias that both show comes from the data, not from an estimator. Masked
pixels (weight 0) are set to 0 before the transform; the in-painting variants fill them instead.

No maintained BSD-compatible package provides it (FPFS, the closest, is GPL-3 and brings JAX),
hence these few lines on numpy's FFT; the PSF's size comes from GalSim's adaptive moments.
"""

from __future__ import annotations

import galsim
import numpy as np

# Target PSF: a Gaussian this many times the PSF's adaptive-moment sigma. Wider than the PSF, so
# |W|^2 / |P|^2 stays bounded; not much wider, so the galaxies' shapes are not washed out.
TARGET_PSF_SCALE = 1.2
# Fourier modes where the PSF's power is below this fraction of its peak carry no information.
PSF_POWER_FLOOR = 1e-8


def target_sigma_pixels(psf_image: np.ndarray) -> float:
    """The target Gaussian's sigma [pixels]: TARGET_PSF_SCALE x the PSF's adaptive-moment sigma."""
    moments = galsim.hsm.FindAdaptiveMom(galsim.Image(np.ascontiguousarray(psf_image, dtype=np.float64)),
                                         strict=True)
    return TARGET_PSF_SCALE * float(moments.moments_sigma)


def fourier_quad_moments(images: np.ndarray, psf_image: np.ndarray, noise_sigma: np.ndarray,
                         weights: np.ndarray | None = None, with_excess: bool = False):
    """``(G1, G2, N)`` of each stamp, each ``(n,)`` [ADU^2 per pixel^2].

    With ``with_excess``, a fourth array: the stamp's target-PSF power over the noise's,
    ``sum_k T |I|^2 / sum_k T sigma^2 n_pixels - 1`` (> 0: there is a source to measure).

    Args:
        images: ``(n, H, W)`` stamps [ADU], background-subtracted.
        psf_image: ``(h, w)`` PSF with the pixel response on the same grid, any normalisation,
            no larger than the stamps (it is centred on a stamp-sized grid).
        noise_sigma: ``(n,)`` white-noise sigma of each stamp [ADU]; its power is subtracted.
        weights: optional ``(n, H, W)``; pixels of weight 0 are set to 0 first.
    """
    images = np.asarray(images, dtype=np.float64)
    n, height, width = images.shape
    if weights is not None:
        images = np.where(np.asarray(weights) > 0, images, 0.0)
    psf = np.asarray(psf_image, dtype=np.float64)
    psf = psf / psf.sum()
    padded = np.zeros((height, width))
    top, left = (height - psf.shape[0]) // 2, (width - psf.shape[1]) // 2
    padded[top:top + psf.shape[0], left:left + psf.shape[1]] = psf
    psf_power = np.abs(np.fft.fft2(padded)) ** 2  # |P(k)|^2: the phase (centring) does not matter
    ky, kx = np.meshgrid(2 * np.pi * np.fft.fftfreq(height), 2 * np.pi * np.fft.fftfreq(width), indexing="ij")
    k2 = kx**2 + ky**2
    beta = target_sigma_pixels(psf)
    usable = psf_power > PSF_POWER_FLOOR * psf_power.max()
    transfer = np.where(usable, np.exp(-beta**2 * k2) / np.where(usable, psf_power, 1.0), 0.0)
    power = np.abs(np.fft.fft2(images)) ** 2 - (np.asarray(noise_sigma, dtype=np.float64) ** 2
                                                  * height * width)[:, None, None]
    weighted = power * transfer
    g1 = -0.5 * np.einsum("nij,ij->n", weighted, kx**2 - ky**2)
    g2 = -np.einsum("nij,ij->n", weighted, kx * ky)
    norm = np.einsum("nij,ij->n", weighted, k2 - 0.5 * beta**2 * k2**2)
    if not with_excess:
        return g1, g2, norm
    noise_power = np.asarray(noise_sigma, dtype=np.float64) ** 2 * height * width * transfer.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        excess = np.einsum("nij,ij->n", power, transfer) / noise_power
    return g1, g2, norm, np.where(noise_power > 0, excess, np.where(weighted.sum(axis=(1, 2)) > 0, np.inf, 0.0))


def fourier_quad_shear(images: np.ndarray, psf_image: np.ndarray, noise_sigma: np.ndarray,
                       weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-stamp shear-like ellipticity ``(G1 / N, G2 / N)`` and a flag (True = usable: a source above the
    noise power, N > 0, finite)."""
    g1, g2, norm, excess = fourier_quad_moments(images, psf_image, noise_sigma, weights, with_excess=True)
    flag = np.isfinite(g1) & np.isfinite(g2) & np.isfinite(norm) & (norm > 0) & (excess > 0)
    safe = np.where(flag, norm, 1.0)
    return np.where(flag, g1 / safe, np.nan), np.where(flag, g2 / safe, np.nan), flag
