"""A second, independent shear estimator: Fourier_Quad moments of the galaxy power spectrum.

Zhang, Luo & Foucaud (2015, JCAP 01, 024; Zhang 2008, MNRAS 383, 113). The stamp's power spectrum,
minus the white-noise power, is moved from the survey PSF to an isotropic Gaussian target PSF
``W_beta`` by the factor ``T(k) = |W_beta(k)|^2 / |P(k)|^2`` and its quadrupole moments are taken::

    G1 = -1/2 sum_k (kx^2 - ky^2) T(k) M(k)
    G2 = -    sum_k kx ky         T(k) M(k)
    N  =      sum_k (k^2 - beta^2 k^4 / 2) T(k) M(k),     M(k) = |I(k)|^2 - sigma^2 n_pixels

For an ensemble, ``<G1> / <N> = g1`` and ``<G2> / <N> = g2`` to first order in the shear, whatever
the galaxies' shapes and profiles (no weight-function or PSF approximation: the PSF is divided out
in Fourier space). Per stamp, lensforge uses ``e = G / D`` with the positive-definite
``D = sum_k k^2 T(k) |I(k)|^2`` (noise power left in): ``N`` itself crosses zero for faint or
in-painted stamps (whose holes hold no noise, so the subtraction overshoots), and one ratio near
0 / 0 ruins a mean. ``e`` is shear-like with a response below 1 that the counterfactual response
measures, as for the HSM methods.

Why this one: it shares nothing with HSM (no real-space moments, no adaptive weight, no
Gaussianization), so a bias that both show comes from the data, not from an estimator. Masked
pixels (weight 0) are set to 0 before the transform; the in-painting variants fill them instead.

No maintained BSD-compatible package provides it (FPFS, the closest, is GPL-3 and brings JAX),
hence these few lines on numpy's FFT; the PSF's size comes from GalSim's adaptive moments.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class FourierQuadMoments:
    """Per-stamp ``(n,)`` Fourier_Quad quantities [ADU^2 per pixel^2, except ``excess``]."""

    g1: np.ndarray  # G1 of the module docstring
    g2: np.ndarray  # G2
    n: np.ndarray  # N: <G> / <N> = g over an ensemble
    d: np.ndarray  # D: positive-definite normalisation of a single stamp's ellipticity
    excess: np.ndarray  # target-PSF power over the noise's, minus 1 (> 0: a source to measure)


def fourier_quad_moments(images: np.ndarray, psf_image: np.ndarray, noise_sigma: np.ndarray,
                         weights: np.ndarray | None = None) -> FourierQuadMoments:
    """The Fourier_Quad moments of each stamp (module docstring).

    Args:
        images: ``(n, H, W)`` stamps [ADU], background-subtracted.
        psf_image: ``(h, w)`` PSF with the pixel response on the same grid, any normalisation,
            no larger than the stamps (it is centred on a stamp-sized grid).
        noise_sigma: ``(n,)`` white-noise sigma of each stamp [ADU]; its power is subtracted.
        weights: optional ``(n, H, W)``; pixels of weight 0 are set to 0 first.
    """
    images = np.asarray(images, dtype=np.float64)
    _, height, width = images.shape
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
    raw_power = np.abs(np.fft.fft2(images)) ** 2
    noise_power = np.asarray(noise_sigma, dtype=np.float64) ** 2 * height * width  # per mode, (n,)
    weighted = (raw_power - noise_power[:, None, None]) * transfer
    total_noise = noise_power * transfer.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        excess = np.where(total_noise > 0, weighted.sum(axis=(1, 2)) / total_noise,
                          np.where(weighted.sum(axis=(1, 2)) > 0, np.inf, 0.0))
    return FourierQuadMoments(
        g1=-0.5 * np.einsum("nij,ij->n", weighted, kx**2 - ky**2),
        g2=-np.einsum("nij,ij->n", weighted, kx * ky),
        n=np.einsum("nij,ij->n", weighted, k2 - 0.5 * beta**2 * k2**2),
        d=np.einsum("nij,ij->n", raw_power * transfer, k2),
        excess=excess)


def fourier_quad_shear(images: np.ndarray, psf_image: np.ndarray, noise_sigma: np.ndarray,
                       weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-stamp shear-like ellipticity ``(G1 / D, G2 / D)`` and a flag (True = usable: a source above the
    noise power, finite values)."""
    moments = fourier_quad_moments(images, psf_image, noise_sigma, weights)
    flag = (np.isfinite(moments.g1) & np.isfinite(moments.g2) & np.isfinite(moments.d) & (moments.d > 0)
            & (moments.excess > 0))
    safe = np.where(flag, moments.d, 1.0)
    return np.where(flag, moments.g1 / safe, np.nan), np.where(flag, moments.g2 / safe, np.nan), flag
