"""Is an image like those the in-painting model was trained on? Resolution, units and a domain check.

A user's own image may be anything: a calibrated optical frame in ADU with the sky still in, a
radio map in Jy/beam whose noise is correlated over the beam, or a PNG-like display stretch saved
as FITS. The image in-painter (:mod:`lensforge.models.image_inpainter`) learnt from a range of
images its model card records under ``card["domain"]``::

    {"resolution_fwhm_pixels": [lo, hi], "peak_snr_max": float,
     "background_offset_sigma_max": float, "units": ["adu", "jy/beam", ...]}

:func:`check_domain` measures the same quantities on an image (robustly, on its known pixels)
and returns a :class:`DomainReport` whose ``reasons`` say, one short phrase each with the measured
and the trained value, why the image lies outside that range (none: inside).
:func:`domain_warning` turns a report into the one warning line a batch prints per tile.

:func:`image_resolution` reads the resolution a header declares: the synthesized beam of a radio
image (``BMAJ``/``BMIN`` [deg], or the ``BMAJ= BMIN=`` that AIPS writes into ``HISTORY``), else an
optical PSF / seeing keyword, in pixels of the image's pixel scale (its celestial WCS, else
``CDELT``, else ``PIXSCALE``-like keywords in arcsec/pixel). Detection and the domain check both
use it.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAD_TO_SIGMA = 1.4826  # Gaussian standard deviation per median absolute deviation
QUANTISED_LEVELS = 256  # at most this many distinct integer values: an 8-bit display image
ARCSEC_PER_DEG = 3600.0
# Optical PSF keywords, in the order they are tried, with the unit assumed when the card's comment
# names none. ``FWHM`` alone is used only when its comment names a unit (surveys write it in pixels
# or in arcsec).
PSF_KEYWORDS: tuple[tuple[str, str | None], ...] = (("PSF_FWHM", "arcsec"), ("PSFFWHM", "arcsec"),
                                                    ("FWHM_PSF", "arcsec"), ("SEEING", "arcsec"),
                                                    ("FWHM", None))
# Pixel-scale keywords [arcsec / pixel] used when the header has no WCS or CDELT.
PIXEL_SCALE_KEYWORDS = ("PIXSCALE", "PIXSCAL1", "SECPIX", "SECPIX1", "PIXSCAL")
# A declared FWHM outside this range [pixels] is a header error, not a resolution.
FWHM_RANGE_PIXELS = (0.05, 5000.0)
_HISTORY_BEAM = re.compile(r"BMAJ\s*=\s*([-+0-9.EeDd]+)\s+BMIN\s*=\s*([-+0-9.EeDd]+)")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def header_units(header) -> str | None:
    """``BUNIT`` of a header, stripped (None when absent or empty)."""
    unit = header.get("BUNIT") if header is not None else None
    return (unit.strip() or None) if isinstance(unit, str) else None


def normalised_unit(unit: str | None) -> str | None:
    """A unit string as model cards list them: lower case, no spaces (``'JY/BEAM '`` -> ``'jy/beam'``)."""
    return None if unit is None else "".join(unit.split()).lower()


def pixel_scale_arcsec(header, *others) -> tuple[float | None, str]:
    """(pixel scale [arcsec / pixel], where it came from) of an image header.

    The celestial WCS's pixel-scale matrix (sqrt |det|) when the header declares a celestial WCS,
    else ``|CDELT1 CDELT2|`` [deg], else a ``PIXSCALE``-like keyword (this header, then ``others``,
    e.g. the primary header of a multi-extension file). (None, "unknown") when none is usable.
    """
    if header is not None and ("CTYPE1" in header or "CTYPE2" in header):
        try:
            from astropy.wcs import WCS

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                wcs = WCS(header).celestial
            if wcs.naxis == 2:
                scale = math.sqrt(abs(float(np.linalg.det(wcs.pixel_scale_matrix)))) * ARCSEC_PER_DEG
                if math.isfinite(scale) and scale > 0:
                    return scale, "WCS"
        except Exception:  # noqa: BLE001 - a broken WCS is reported where it is checked, not here
            pass
    if header is not None:
        cdelt = [_number(header.get(f"CDELT{i}")) for i in (1, 2)]
        if all(c is not None and c != 0 for c in cdelt):
            return math.sqrt(abs(cdelt[0] * cdelt[1])) * ARCSEC_PER_DEG, "CDELT"
    for source in (header, *others):
        if source is None:
            continue
        for key in PIXEL_SCALE_KEYWORDS:
            value = _number(source.get(key))
            if value is not None and value > 0:
                return value, key
    return None, "unknown"


@dataclass(frozen=True)
class Resolution:
    """The resolution an image's header declares."""

    fwhm_pixels: float | None  # beam / PSF FWHM [pixels]; None when the header declares none usable
    source: str  # "BMAJ/BMIN", "HISTORY BMAJ/BMIN", a PSF keyword ("SEEING"), or "unknown"
    radio: bool  # BUNIT per beam, or a beam in the header
    bunit: str | None  # BUNIT as written (stripped)
    pixel_scale_arcsec: float | None


def _beam(header) -> tuple[float, float, str] | None:
    """(BMAJ, BMIN) [deg] and their source: the header's cards, else the last AIPS ``HISTORY`` beam."""
    bmaj, bmin = _number(header.get("BMAJ")), _number(header.get("BMIN"))
    if bmaj is not None and bmin is not None and bmaj > 0 and bmin > 0:
        return bmaj, bmin, "BMAJ/BMIN"
    history = [str(line) for line in header.get("HISTORY", [])] if "HISTORY" in header else []
    for line in reversed(history):
        found = _HISTORY_BEAM.search(line)
        if found:
            try:
                major, minor = (float(v.replace("D", "E").replace("d", "e")) for v in found.groups())
            except ValueError:
                continue
            if major > 0 and minor > 0 and math.isfinite(major * minor):
                return major, minor, "HISTORY BMAJ/BMIN"
    return None


def _psf_keyword(header, scale_arcsec: float | None) -> tuple[float, str] | None:
    """(FWHM [pixels], keyword) of the first usable optical PSF keyword of ``header``."""
    for key, default_unit in PSF_KEYWORDS:
        value = _number(header.get(key))
        if value is None or value <= 0:
            continue
        comment = header.comments[key].lower() if key in header else ""
        if "pix" in comment:
            unit = "pixel"
        elif "arcsec" in comment or '"' in comment or "asec" in comment:
            unit = "arcsec"
        elif "deg" in comment:
            unit = "deg"
        else:
            unit = default_unit
        if unit == "pixel":
            return value, f"{key} [pixel]"
        if unit is None or scale_arcsec is None:
            continue
        arcsec = value * ARCSEC_PER_DEG if unit == "deg" else value
        return arcsec / scale_arcsec, f"{key} [{unit}]"
    return None


def image_resolution(header, *others) -> Resolution:
    """The beam / PSF FWHM [pixels] ``header`` declares (``others``: further headers to search, e.g. the
    primary header of a multi-extension file), where it came from, and whether the image is radio.

    Radio (BUNIT per beam, or a beam in the header): sqrt(BMAJ x BMIN) / pixel scale. Optical: the
    first of :data:`PSF_KEYWORDS` present (unit from the card's comment, else the keyword's usual one).
    A value outside :data:`FWHM_RANGE_PIXELS` is ignored. ``fwhm_pixels`` None: nothing usable.
    """
    headers = [h for h in (header, *others) if h is not None]
    bunit = next((u for u in (header_units(h) for h in headers) if u), None)
    scale, _ = pixel_scale_arcsec(header, *others)
    beam = next((b for b in (_beam(h) for h in headers) if b is not None), None)
    radio = beam is not None or (bunit is not None and "beam" in bunit.lower())
    low, high = FWHM_RANGE_PIXELS
    if beam is not None and scale is not None:
        fwhm = math.sqrt(beam[0] * beam[1]) * ARCSEC_PER_DEG / scale
        if low <= fwhm <= high:
            return Resolution(fwhm, beam[2], radio, bunit, scale)
    for source in headers:
        found = _psf_keyword(source, scale)
        if found is not None and low <= found[0] <= high:
            return Resolution(found[0], found[1], radio, bunit, scale)
    return Resolution(None, "unknown", radio, bunit, scale)


def robust_noise(values: np.ndarray) -> float:
    """1.4826 x the median absolute deviation of ``values`` (NaN when empty)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return math.nan
    return float(MAD_TO_SIGMA * np.median(np.abs(values - np.median(values))))


def noise_level(image: np.ndarray, known: np.ndarray, noise_sigma=None) -> float:
    """One noise level for an image: the median of ``noise_sigma`` on the known pixels when it is given
    (a number, or a per-pixel map such as sqrt(VARIANCE)), else the MAD noise of the known pixels."""
    if noise_sigma is None:
        return robust_noise(np.asarray(image)[known])
    sigma = np.asarray(noise_sigma, dtype=np.float64)
    if sigma.ndim == 0:
        return float(sigma)
    values = sigma[known]
    values = values[np.isfinite(values) & (values > 0)]
    return float(np.median(values)) if values.size else math.nan


@dataclass
class DomainReport:
    """What :func:`check_domain` found: ``reasons`` (empty: inside the training domain) and ``measured``."""

    reasons: list[str] = field(default_factory=list)
    measured: dict[str, Any] = field(default_factory=dict)

    @property
    def in_domain(self) -> bool:
        return not self.reasons


def _quantised(values: np.ndarray, bitpix: int | None) -> tuple[bool, int | None]:
    """(8-bit quantised?, distinct levels when the data are integer-valued)."""
    integer_valued = values.size > 0 and bool(np.all(values == np.round(values)))
    levels = None
    if integer_valued:
        levels = int(np.unique(values.astype(np.int64) if np.all(np.abs(values) < 2**62) else values).size)
    return bitpix == 8 or (levels is not None and levels <= QUANTISED_LEVELS), levels


def check_domain(image: np.ndarray, mask: np.ndarray, header, card: dict, noise_sigma=None,
                 resolution: Resolution | None = None) -> DomainReport:
    """Compare an image with the training domain of the in-painting model whose card is ``card``.

    Args:
        image: (H, W) pixels as read (masked pixels are not looked at).
        mask: (H, W) nonzero = masked.
        header: the image's FITS header (``BITPIX``, ``BUNIT``, beam / PSF keywords, WCS); may be None.
        card: the model card (``card["domain"]``; a missing entry is not checked).
        noise_sigma: the noise when known (a number or a per-pixel map), else the MAD noise is used.
        resolution: the image's :class:`Resolution` when already read (else read from ``header``).

    Returns:
        A :class:`DomainReport`. Reasons, each with the measured and the trained value: a noise
        that is not positive and finite (nothing else is then judged); 8-bit quantised data (at
        most :data:`QUANTISED_LEVELS` integer levels, or ``BITPIX = 8``); a resolution outside the
        trained FWHM range (an unknown resolution is recorded, not a reason); a background offset
        |median| / noise above the trained maximum (sky left in); a peak / noise above the trained
        maximum; a ``BUNIT`` the model was not trained on (when the image has one).
    """
    domain = dict(card.get("domain") or {}) if isinstance(card, dict) else {}
    image = np.asarray(image)
    known = (np.asarray(mask) == 0) & np.isfinite(image)
    values = image[known].astype(np.float64)
    resolution = resolution or image_resolution(header)
    bitpix = header.get("BITPIX") if header is not None else None
    bitpix = int(bitpix) if isinstance(bitpix, int) and not isinstance(bitpix, bool) else None
    measured: dict[str, Any] = {"resolution_fwhm_pixels": resolution.fwhm_pixels,
                                "resolution_source": resolution.source, "bunit": resolution.bunit,
                                "bitpix": bitpix, "known_pixels": int(values.size)}
    reasons: list[str] = []
    noise = noise_level(image, known, noise_sigma)
    measured["noise"] = noise
    if not (math.isfinite(noise) and noise > 0):
        reasons.append(f"noise estimate {noise:g} is not positive and finite (a constant or empty image?)")
        return DomainReport(reasons, measured)
    quantised, levels = _quantised(values, bitpix)
    measured["integer_levels"] = levels
    if quantised:
        what = "BITPIX 8" if bitpix == 8 else f"{levels} integer levels"
        reasons.append(f"8-bit quantised data, a display stretch, not calibrated pixels ({what}; "
                       "trained on calibrated floating-point pixels)")
    fwhm_range = domain.get("resolution_fwhm_pixels")
    if resolution.fwhm_pixels is not None and isinstance(fwhm_range, (list, tuple)) and len(fwhm_range) == 2:
        low, high = float(fwhm_range[0]), float(fwhm_range[1])
        if not low <= resolution.fwhm_pixels <= high:
            reasons.append(f"resolution {resolution.fwhm_pixels:.3g} px FWHM from {resolution.source} "
                           f"(trained {low:.3g}-{high:.3g} px)")
    background = float(np.median(values)) if values.size else math.nan
    offset = abs(background) / noise
    peak = (float(np.max(values)) - background) / noise if values.size else math.nan
    measured.update(background=background, background_offset_sigma=offset, peak_snr=peak)
    offset_max = _number(domain.get("background_offset_sigma_max"))
    if offset_max is not None and offset > offset_max:
        reasons.append(f"sky left in? background {offset:.3g} sigma from zero (trained <= {offset_max:.3g})")
    peak_max = _number(domain.get("peak_snr_max"))
    if peak_max is not None and peak > peak_max:
        reasons.append(f"dynamic range: peak {peak:.3g} sigma above the background (trained <= {peak_max:.3g})")
    units = domain.get("units")
    unit = normalised_unit(resolution.bunit)
    if unit is not None and isinstance(units, (list, tuple)) and units:
        trained = [normalised_unit(str(u)) for u in units]
        if unit not in trained:
            reasons.append(f"units BUNIT {resolution.bunit!r} (trained on {', '.join(map(repr, trained))})")
    return DomainReport(reasons, measured)


def domain_warning(url: str, report: DomainReport) -> str:
    """The one warning line of an image outside the training domain (``report.reasons`` non-empty)."""
    return f"{url}: outside the in-painting model's training domain ({'; '.join(report.reasons)})"
