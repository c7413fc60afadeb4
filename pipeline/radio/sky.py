"""A radio sky for survey tiles: extended and compact sources with power-law fluxes, and flagged patches."""

from __future__ import annotations

import galsim
import numpy as np

from lensforge.errors import ConfigError
from lensforge.pipeline.radio.imaging import check_image

COMPACT_FWHM_PIXELS = 0.05  # compact sources: unresolved, all flux in 1-4 pixels


def power_law_fluxes(rng: np.random.Generator, n: int, flux_min_jy: float, flux_max_jy: float,
                     slope: float) -> np.ndarray:
    """``n`` fluxes [Jy] from dN/dS ~ S**-slope on [flux_min_jy, flux_max_jy] by inverse-CDF sampling."""
    if not 0 < flux_min_jy <= flux_max_jy:
        raise ConfigError(f"need 0 < flux_min_jy <= flux_max_jy, got {flux_min_jy}, {flux_max_jy}", flux_min_jy)
    uniform = rng.uniform(size=n)
    if np.isclose(slope, 1.0):
        return flux_min_jy * (flux_max_jy / flux_min_jy) ** uniform
    exponent = 1.0 - slope
    low, high = flux_min_jy**exponent, flux_max_jy**exponent
    return (low + uniform * (high - low)) ** (1.0 / exponent)


def radio_sky(n_pixels: int, pixel_scale_arcsec: float, rng: np.random.Generator, n_extended: int = 20,
              n_compact: int = 50, flux_min_jy: float = 1e-4, flux_max_jy: float = 1e-1, flux_slope: float = 1.6,
              half_light_radius_min_arcsec: float = 1.0, half_light_radius_max_arcsec: float = 6.0,
              ellipticity_max: float = 0.6, sersic_n: float = 1.0,
              margin_pixels: float = 0.0, lensing=None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A radio sky [Jy/pixel] of extended and compact sources drawn with GalSim.

    Extended sources (star-forming discs, resolved AGN) are Sersic profiles (exponential for
    ``sersic_n = 1``) with log-uniform half-light radii and a shear of uniform modulus up to
    ``ellipticity_max`` and uniform position angle; compact sources are GalSim Gaussians of FWHM
    ``0.05`` pixel (unresolved). Fluxes follow dN/dS ~ S**-flux_slope between the bounds; 1.6 is a
    sub-Euclidean slope (Euclidean is 2.5) typical of 1.4 GHz counts below a few mJy. Positions
    are uniform in ``[margin_pixels, n_pixels - 1 - margin_pixels]``. Each source is drawn with the
    pixel response (``method="auto"``; ``"real_space"`` for compact ones), so pixels hold the flux
    falling in them, on a stamp of GalSim's good size around it, added into the image; light beyond
    the image edge is lost.

    Args:
        n_pixels: side of the square image.
        pixel_scale_arcsec: pixel scale [arcsec].
        rng: the only source of randomness.
        n_extended, n_compact: numbers of sources of each kind.
        flux_min_jy, flux_max_jy: flux bounds [Jy].
        flux_slope: power-law index of the differential counts.
        half_light_radius_min_arcsec, half_light_radius_max_arcsec: extended-source size bounds [arcsec].
        ellipticity_max: largest reduced shear |g| of extended sources.
        sersic_n: Sersic index of extended sources.
        margin_pixels: keep centroids this far from the image edges [pixels].
        lensing: ``lensing(x, y) -> LensingValues`` (``lensforge.pipeline.stamps.lensing``) at source
            positions [pixels], shear components in this image's frame; GalSim lenses each source by it
            (``GSObject.lens``, or ``shear`` where mu = 1). Sources in a halo's strong-lensing zone
            (``LensingValues.weak`` false) are drawn unlensed and flagged. None: no lensing.

    Returns:
        ``(sky, sources)``: the float64 (n_pixels, n_pixels) sky [Jy/pixel] and a dict of equal-length
        arrays: ``x``, ``y`` (0-based pixel centroids, ``sky[y, x]``), ``flux_jy``, ``kind``
        ('extended' / 'compact'), ``half_light_radius_arcsec``, ``e1``, ``e2`` (intrinsic shape, reduced shear
        convention), extended sources first; with ``lensing``, also ``g1``, ``g2``, ``kappa``, ``mu`` (applied)
        and ``lensed`` (false in the strong-lensing zone).
    """
    check_image(n_pixels, pixel_scale_arcsec)
    if n_extended < 0 or n_compact < 0:
        raise ConfigError(f"n_extended and n_compact must be >= 0, got {n_extended}, {n_compact}", n_extended)
    if not 0 < half_light_radius_min_arcsec <= half_light_radius_max_arcsec:
        raise ConfigError("need 0 < half_light_radius_min_arcsec <= half_light_radius_max_arcsec, got "
                          f"{half_light_radius_min_arcsec}, {half_light_radius_max_arcsec}",
                          half_light_radius_min_arcsec)
    if not 0 <= ellipticity_max < 1:
        raise ConfigError(f"ellipticity_max must be in [0, 1), got {ellipticity_max}", ellipticity_max)
    if not 0 <= 2 * margin_pixels <= n_pixels - 1:
        raise ConfigError(f"margin_pixels must be in [0, (n_pixels - 1) / 2], got {margin_pixels}", margin_pixels)
    n_sources = n_extended + n_compact
    # Fixed draw order (all positions, then fluxes, then shapes) keeps a seed's sky reproducible.
    x = rng.uniform(margin_pixels, n_pixels - 1 - margin_pixels, size=n_sources)
    y = rng.uniform(margin_pixels, n_pixels - 1 - margin_pixels, size=n_sources)
    flux_jy = power_law_fluxes(rng, n_sources, flux_min_jy, flux_max_jy, flux_slope)
    log_radius = rng.uniform(np.log(half_light_radius_min_arcsec), np.log(half_light_radius_max_arcsec),
                             size=n_extended)
    shear_modulus = rng.uniform(0.0, ellipticity_max, size=n_extended)
    position_angle = rng.uniform(0.0, np.pi, size=n_extended)
    compact_fwhm_arcsec = COMPACT_FWHM_PIXELS * pixel_scale_arcsec
    half_light_radius_arcsec = np.concatenate([np.exp(log_radius), np.full(n_compact, compact_fwhm_arcsec / 2)])
    e1 = np.concatenate([shear_modulus * np.cos(2 * position_angle), np.zeros(n_compact)])
    e2 = np.concatenate([shear_modulus * np.sin(2 * position_angle), np.zeros(n_compact)])

    lensed = None
    if lensing is not None:  # no draws: the sky of a seed keeps its sources, lensed or not
        values = lensing(x, y)
        lensed = np.asarray(values.weak, dtype=bool)
        g1, g2 = np.where(lensed, values.g1, 0.0), np.where(lensed, values.g2, 0.0)
        kappa, mu = np.where(lensed, values.kappa, 0.0), np.where(lensed, values.mu, 1.0)
    image = galsim.ImageD(n_pixels, n_pixels, scale=pixel_scale_arcsec)
    for index in range(n_sources):
        if index < n_extended:
            profile = galsim.Sersic(n=sersic_n, half_light_radius=half_light_radius_arcsec[index],
                                    flux=flux_jy[index]).shear(g1=e1[index], g2=e2[index])
            method = "auto"
        else:
            profile = galsim.Gaussian(fwhm=compact_fwhm_arcsec, flux=flux_jy[index])
            # Pixel integration in real space: by FFT a sub-pixel Gaussian would need a ~1e5-cell k grid.
            method = "real_space"
        if lensed is not None and (g1[index] or g2[index] or mu[index] != 1.0):
            # As lensforge.pipeline.stamps.lensing.apply_lensing (not imported: radio sits below stamps).
            shear = {"g1": float(g1[index]), "g2": float(g2[index])}
            profile = profile.lens(mu=float(mu[index]), **shear) if mu[index] != 1.0 else profile.shear(**shear)
        half = max(profile.getGoodImageSize(pixel_scale_arcsec) // 2 + 1, 4)
        # GalSim bounds are 1-based: numpy pixel x sits at GalSim x + 1.
        column, row = int(np.rint(x[index])) + 1, int(np.rint(y[index])) + 1
        bounds = galsim.BoundsI(column - half, column + half, row - half, row + half) & image.bounds
        profile.drawImage(image=image[bounds], add_to_image=True, method=method,
                          center=galsim.PositionD(x[index] + 1.0, y[index] + 1.0))
    sources = {
        "x": x, "y": y, "flux_jy": flux_jy,
        "kind": np.array(["extended"] * n_extended + ["compact"] * n_compact, dtype="<U8"),
        "half_light_radius_arcsec": half_light_radius_arcsec, "e1": e1, "e2": e2,
    }
    if lensed is not None:
        sources.update(g1=g1, g2=g2, kappa=kappa, mu=mu, lensed=lensed)
    return image.array.astype(np.float64), sources


def blank_patches(shape: tuple[int, int], rng: np.random.Generator, n_patches: int, size_min_pixels: int,
                  size_max_pixels: int) -> np.ndarray:
    """Boolean mask of ``n_patches`` flagged rectangles (RFI-flagged or lost data), True = blank.

    Each side is uniform in ``[size_min_pixels, size_max_pixels]`` (clipped to the image) and the
    rectangle lies wholly inside the image; patches may overlap. The caller ORs the mask into
    ``lensforge.catalogs.schema.MASK_BITS["BLANK"]``.
    """
    if n_patches < 0:
        raise ConfigError(f"n_patches must be >= 0, got {n_patches}", n_patches)
    if not 1 <= size_min_pixels <= size_max_pixels:
        raise ConfigError(f"need 1 <= size_min_pixels <= size_max_pixels, got {size_min_pixels}, {size_max_pixels}",
                          size_min_pixels)
    mask = np.zeros(shape, dtype=bool)
    for _ in range(n_patches):
        height, width = rng.integers(size_min_pixels, size_max_pixels + 1, size=2)
        height, width = min(height, shape[0]), min(width, shape[1])
        y0 = rng.integers(0, shape[0] - height + 1)
        x0 = rng.integers(0, shape[1] - width + 1)
        mask[y0:y0 + height, x0:x0 + width] = True
    return mask
