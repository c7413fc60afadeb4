"""Batch reprocessing of survey tiles: validate → background → detect → mask → in-paint → catalogue.

One tile is one unit of work (:func:`reprocess_tile`), a pure function of the tile's bytes,
the configuration and the in-painting model, so a batch is idempotent and resumable:

* the tile's **key** is the SHA-256 of (tile bytes, configuration hash, model checksum);
* outputs (``<stem>.reprocessed.fits``: in-painted SCIENCE, MASK, VARIANCE, INPAINT_STD;
  ``<stem>.catalog.fits``: photutils detections) are written atomically (temp + rename), then a
  ``<stem>.done.json`` marker holding the key is written last;
* a tile whose marker holds the same key is skipped without reading its pixels again; a crash
  before the marker leaves at most complete, overwritable outputs and no marker.

Inputs are read through fsspec, so a local path and an object-store URL (``s3://``, ``gs://``,
``memory://`` ...) work alike. A tile is a lensforge MEF (SCIENCE / MASK / VARIANCE, as
``lensforge tile`` writes) or a plain image in the primary HDU with an optional ``MASK``
extension; non-finite pixels are always masked.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning

from lensforge.atomic import atomic_path, atomic_write_text
from lensforge.errors import InputError

MARKER_SUFFIX = ".done.json"
OUTPUT_SUFFIXES = (".reprocessed.fits", ".catalog.fits")
NONFINITE_BIT = 1 << 15  # mask bit for pixels that were NaN/inf in the input


@dataclass(frozen=True)
class ReprocessSettings:
    """How every tile of a batch is processed (part of each tile's key)."""

    # In-painting method of lensforge.pipeline.inpaint.stamps: model, biharmonic, interpolate.
    method: str = "biharmonic"
    psf_fwhm_pixels: float = 3.5
    threshold_nsigma: float = 1.5
    window: int = 64
    overlap: int = 16

    def digest(self) -> str:
        """SHA-256 of the settings (JSON, sorted keys)."""
        return hashlib.sha256(json.dumps(self.__dict__, sort_keys=True).encode()).hexdigest()


def list_tiles(source: str) -> list[str]:
    """Tile URLs under ``source``: a FITS file, or every ``*.fits`` in a directory / prefix (sorted)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(source)
    protocol = source.split("://", 1)[0] + "://" if "://" in source else ""
    if fs.isfile(path):
        return [source]
    if not fs.isdir(path):
        raise InputError(f"{source}: no such file or directory", source)
    found = sorted(p for p in fs.find(path) if p.endswith((".fits", ".fits.gz", ".fit")))
    return [f"{protocol}{p}" if protocol and not p.startswith(protocol) else p for p in found]


def read_bytes(url: str) -> bytes:
    """The bytes of one input through fsspec; ``InputError`` naming the URL if it cannot be read."""
    import fsspec

    try:
        with fsspec.open(url, "rb") as handle:
            return handle.read()
    except (OSError, ValueError) as err:
        raise InputError(f"{url}: unreadable ({type(err).__name__}: {err})", url) from None


def tile_key(data: bytes, settings: ReprocessSettings, model_sha256: str | None) -> str:
    """SHA-256 of (tile bytes, settings, model checksum): unchanged key = nothing to redo."""
    digest = hashlib.sha256(data)
    digest.update(settings.digest().encode())
    digest.update((model_sha256 or "no-model").encode())
    return digest.hexdigest()


def output_stem(url: str) -> str:
    """The output name stem of an input: its file name without ``.fits``."""
    name = url.rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".fits.gz", ".fits", ".fit"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_done(out_dir: Path, stem: str, key: str) -> bool:
    """Whether ``stem`` was finished with exactly this key (marker present, outputs present)."""
    marker = out_dir / f"{stem}{MARKER_SUFFIX}"
    if not marker.is_file():
        return False
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return recorded.get("key") == key and all((out_dir / f"{stem}{s}").is_file() for s in OUTPUT_SUFFIXES)


def _image_plane(hdu, url: str, name: str) -> np.ndarray:
    """The 2-D image data of ``hdu``, or ``InputError`` (a table, a cube or no data)."""
    if not isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)) or hdu.data is None \
            or hdu.data.ndim != 2:
        what = type(hdu).__name__ if not isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)) \
            else ("no data" if hdu.data is None else f"{hdu.data.ndim}-D data")
        raise InputError(f"{url}: {name} is not a 2-D image ({what})", url)
    return hdu.data


_WCSLIB_PREFIX = re.compile(r"ERROR \d+ in \w+\(\) at line \d+ of file [^:]*:\s*")
# Numeric WCS keywords: astropy.wcs silently ignores a non-numeric value (CRVAL1 = 'abc' becomes 0).
_WCS_NUMBERS = ("CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CDELT1", "CDELT2", "CD1_1", "CD1_2", "CD2_1", "CD2_2",
                "PC1_1", "PC1_2", "PC2_1", "PC2_2", "CROTA2")


def check_wcs(header: fits.Header, url: str) -> None:
    """``InputError`` unless a header that declares a WCS (``CTYPE1``/``CTYPE2``) holds a usable celestial one.

    A tile without any WCS is accepted (plain images); a broken one would otherwise be copied into
    the outputs and give every downstream sky position wrongly.
    """
    from astropy.wcs import WCS

    if "CTYPE1" not in header and "CTYPE2" not in header:
        return
    for key in _WCS_NUMBERS:
        value = header.get(key)
        if key in header and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not math.isfinite(value)):
            raise InputError(f"{url}: invalid WCS, {key} = {value!r:.40} is not a finite number", url)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FITSFixedWarning chatter; real problems raise below
            wcs = WCS(header, naxis=2)
            wcs.wcs.set()
        if not (wcs.has_celestial and wcs.celestial.naxis == 2):
            raise ValueError(f"CTYPE {list(wcs.wcs.ctype)} is not a pair of celestial axes")
        latitude = float(wcs.wcs.crval[wcs.wcs.lat])
        if not -90.0 <= latitude <= 90.0:
            raise ValueError(f"reference latitude {latitude:g} deg is beyond the pole")
        matrix = wcs.pixel_scale_matrix
        if not np.all(np.isfinite(matrix)) or abs(float(np.linalg.det(matrix))) == 0.0:
            raise ValueError("singular pixel-to-sky matrix")
    except Exception as err:  # noqa: BLE001 - wcslib raises many types, with multi-line messages
        # wcslib prefixes each message with "ERROR n in f() at line l of file ...:"; keep the messages.
        reason = " ".join(_WCSLIB_PREFIX.sub("", str(err)).split())[:160] or type(err).__name__
        raise InputError(f"{url}: invalid WCS in the image header ({reason})", url) from None


def _truncated(caught: list[warnings.WarningMessage]) -> bool:
    """Whether astropy warned that the file is shorter than its headers say."""
    return any("truncated" in str(w.message).lower() for w in caught)


def parse_tile(data: bytes, url: str) -> dict[str, Any]:
    """Validate and read one tile: science (float32), mask (int32, non-finite pixels flagged), variance or None.

    ``InputError`` (one line naming the tile) for: an unreadable or truncated file, a SCIENCE that is not
    a 2-D image, a MASK that is not an integer image, planes of different shapes, a VARIANCE that is not
    finite and >= 0 on the unmasked pixels, a broken WCS, or nothing left unmasked.
    """
    seen: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as seen:
            # Recorded, not printed: a worker's stderr is the user's terminal, and the error below says it all.
            warnings.simplefilter("always")
            with fits.open(io.BytesIO(data)) as hdus:
                names = [hdu.name for hdu in hdus]
                science_name = "SCIENCE" if "SCIENCE" in names else "the primary HDU"
                science_hdu = hdus["SCIENCE"] if "SCIENCE" in names else hdus[0]
                science = np.asarray(_image_plane(science_hdu, url, science_name), dtype=np.float32)
                mask = None
                if "MASK" in names:
                    raw = _image_plane(hdus["MASK"], url, "MASK")
                    if not (np.issubdtype(raw.dtype, np.integer) or raw.dtype == bool):
                        # Casting a float mask to int32 would turn NaN into -2**31 (every bit set) and 0.5 into 0.
                        raise InputError(f"{url}: MASK must be an integer bit mask, got {raw.dtype.name} values",
                                         url)
                    mask = np.asarray(raw, dtype=np.int32)
                variance = (np.asarray(_image_plane(hdus["VARIANCE"], url, "VARIANCE"), dtype=np.float32)
                            if "VARIANCE" in names else None)
                header = science_hdu.header.copy()
    except Exception as err:  # noqa: BLE001 - astropy raises many types for a damaged file
        if _truncated(seen):
            raise InputError(f"{url}: truncated FITS file ({len(data)} bytes)", url) from None
        if isinstance(err, InputError):
            raise
        raise InputError(f"{url}: not a readable FITS tile ({type(err).__name__})", url) from None
    if _truncated(seen):  # astropy reads what is there and only warns
        raise InputError(f"{url}: truncated FITS file ({len(data)} bytes)", url)
    mask = np.zeros(science.shape, np.int32) if mask is None else mask
    for name, array in (("MASK", mask), ("VARIANCE", variance)):
        if array is not None and array.shape != science.shape:
            raise InputError(f"{url}: {name} has shape {array.shape}, SCIENCE {science.shape}", url)
    if min(science.shape) < 16:
        raise InputError(f"{url}: image {science.shape} is too small to reprocess (< 16 pixels)", url)
    check_wcs(header, url)
    mask = np.where(np.isfinite(science), mask, mask | NONFINITE_BIT)
    if np.count_nonzero(mask) == mask.size:
        raise InputError(f"{url}: every pixel is masked", url)
    if variance is not None:
        bad = (mask == 0) & ~(np.isfinite(variance) & (variance >= 0))
        if bad.any():
            # sqrt of such a variance is NaN: the in-painting noise and INPAINT_STD would be NaN.
            raise InputError(f"{url}: VARIANCE is negative or not finite on {int(bad.sum())} unmasked pixels", url)
    return {"science": science, "mask": mask, "variance": variance, "header": header}


def reprocess_tile(url: str, out_dir: str | Path, settings: ReprocessSettings, model=None,
                   model_sha256: str | None = None) -> dict[str, Any]:
    """Reprocess one tile into ``out_dir`` (skipped if already done with the same key); returns a summary row.

    Raises ``InputError`` (one line naming the tile) for an unreadable or invalid tile.
    """
    from lensforge.pipeline.inpaint.images import inpaint_tile
    from lensforge.pipeline.inpaint.stamps import stamp_inpainter
    from lensforge.pipeline.tiles.detect import detect

    began = time.perf_counter()
    out_dir = Path(out_dir)
    stem = output_stem(url)
    data = read_bytes(url)
    key = tile_key(data, settings, model_sha256)
    if is_done(out_dir, stem, key):
        return {"tile": url, "status": "skipped", "seconds": time.perf_counter() - began}
    tile = parse_tile(data, url)
    science, mask = tile["science"], tile["mask"]
    known = mask == 0
    if tile["variance"] is not None:
        noise_sigma = np.sqrt(np.clip(np.where(known, tile["variance"], 0.0), 0.0, None))
    else:  # a robust sky noise from the known pixels (MAD), one value for the tile
        values = science[known]
        noise_sigma = float(1.4826 * np.median(np.abs(values - np.median(values))))
    if settings.method == "model" and model is None:
        raise InputError("reprocess: method 'model' needs a model version", settings.method)
    inpainter = stamp_inpainter(settings.method, model=model)
    filled, std = inpaint_tile(np.where(known, science, 0.0), mask != 0, noise_sigma, inpainter,
                               window=settings.window, overlap=settings.overlap)
    catalog = detect(filled, bitmask=None, psf_fwhm_pixels=settings.psf_fwhm_pixels,
                     threshold_nsigma=settings.threshold_nsigma)
    out_dir.mkdir(parents=True, exist_ok=True)
    header = tile["header"]
    header["LFKEY"] = (key[:16], "lensforge reprocess key (sha256 prefix)")
    header["LFMETHOD"] = (settings.method, "in-painting method")
    if model_sha256:
        header["LFMODEL"] = (model_sha256[:16], "in-painting model sha256 prefix")
    hdus = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(filled.astype(np.float32), header=header, name="SCIENCE"),
                         fits.ImageHDU(mask, name="MASK"),
                         fits.ImageHDU(np.zeros_like(filled) if std is None else std.astype(np.float32),
                                       name="INPAINT_STD")])
    if tile["variance"] is not None:
        hdus.append(fits.ImageHDU(tile["variance"], name="VARIANCE"))
    with atomic_path(out_dir / f"{stem}.reprocessed.fits") as tmp:
        hdus.writeto(tmp, overwrite=True)
    catalog.meta.update({"TILE": stem, "LFKEY": key[:16]})
    with atomic_path(out_dir / f"{stem}.catalog.fits") as tmp, warnings.catch_warnings():
        # detect()'s metadata keys are longer than 8 characters: HIERARCH cards, as intended.
        warnings.simplefilter("ignore", VerifyWarning)
        catalog.write(tmp, format="fits", overwrite=True)
    summary = {"tile": url, "status": "done", "n_sources": len(catalog),
               "masked_fraction": float(np.count_nonzero(mask) / mask.size),
               "seconds": time.perf_counter() - began}
    atomic_write_text(out_dir / f"{stem}{MARKER_SUFFIX}", json.dumps({"key": key, **summary}, indent=2) + "\n")
    return summary
