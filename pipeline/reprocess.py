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
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning

from catalogs.atomic import atomic_path, atomic_write_text
from catalogs.errors import InputError

MARKER_SUFFIX = ".done.json"
OUTPUT_SUFFIXES = (".reprocessed.fits", ".catalog.fits")
NONFINITE_BIT = 1 << 15  # mask bit for pixels that were NaN/inf in the input


@dataclass(frozen=True)
class ReprocessSettings:
    """How every tile of a batch is processed (part of each tile's key)."""

    method: str = "biharmonic"  # in-painting method of pipeline.inpaint: model, biharmonic, interpolate
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


def parse_tile(data: bytes, url: str) -> dict[str, Any]:
    """Validate and read one tile: science (float32), mask (int32, non-finite pixels flagged), variance or None."""
    try:
        with fits.open(io.BytesIO(data)) as hdus:
            names = [hdu.name for hdu in hdus]
            science_hdu = hdus["SCIENCE"] if "SCIENCE" in names else hdus[0]
            if science_hdu.data is None or science_hdu.data.ndim != 2:
                raise InputError(f"{url}: no 2-D image (primary HDU or SCIENCE extension)", url)
            science = np.asarray(science_hdu.data, dtype=np.float32)
            mask = np.asarray(hdus["MASK"].data, dtype=np.int32) if "MASK" in names else np.zeros(science.shape,
                                                                                                 np.int32)
            variance = np.asarray(hdus["VARIANCE"].data, dtype=np.float32) if "VARIANCE" in names else None
            header = science_hdu.header.copy()
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - astropy raises many types for a damaged file
        raise InputError(f"{url}: not a readable FITS tile ({type(err).__name__})", url) from None
    for name, array in (("MASK", mask), ("VARIANCE", variance)):
        if array is not None and array.shape != science.shape:
            raise InputError(f"{url}: {name} has shape {array.shape}, SCIENCE {science.shape}", url)
    if min(science.shape) < 16:
        raise InputError(f"{url}: image {science.shape} is too small to reprocess (< 16 pixels)", url)
    mask = np.where(np.isfinite(science), mask, mask | NONFINITE_BIT)
    if np.count_nonzero(mask) == mask.size:
        raise InputError(f"{url}: every pixel is masked", url)
    return {"science": science, "mask": mask, "variance": variance, "header": header}


def reprocess_tile(url: str, out_dir: str | Path, settings: ReprocessSettings, model=None,
                   model_sha256: str | None = None) -> dict[str, Any]:
    """Reprocess one tile into ``out_dir`` (skipped if already done with the same key); returns a summary row.

    Raises ``InputError`` (one line naming the tile) for an unreadable or invalid tile.
    """
    from pipeline.detect import detect
    from pipeline.inpaint import stamp_inpainter
    from pipeline.tile_inpaint import inpaint_tile

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
