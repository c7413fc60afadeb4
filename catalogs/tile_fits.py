"""Survey tiles as multi-extension FITS: SCIENCE, MASK and VARIANCE image HDUs sharing one TAN WCS.

Readable by astropy and DS9 (``ds9 tile.fits[SCIENCE]``). The MASK extension is int32 with
one bit per defect; the bit numbers are written as ``MP_<NAME>`` header cards (the LSST/HSC
mask-plane convention) with a one-line description each, so a reader never has to guess.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from lensforge.atomic import atomic_path
from lensforge.catalogs.schema import MASK_BITS
from lensforge.errors import InputError

EXTENSIONS = ("SCIENCE", "MASK", "VARIANCE")


def write_tile_fits(path: str | Path, header: fits.Header, image: np.ndarray, bitmask: np.ndarray,
                    variance: np.ndarray, bit_descriptions: Mapping[str, str] | None = None,
                    meta: Mapping[str, Any] | None = None, units: str = "adu",
                    extra_hdus: Sequence[fits.ImageHDU] = ()) -> Path:
    """Write a tile atomically; ``header`` holds the WCS, ``meta`` short provenance cards for the primary HDU.

    ``extra_hdus`` follow the three planes (a radio tile adds its BEAM and MODEL).
    """
    if not (image.shape == bitmask.shape == variance.shape):
        raise InputError(f"tile planes differ in shape: {image.shape}, {bitmask.shape}, {variance.shape}")
    primary = fits.PrimaryHDU()
    for key, value in (meta or {}).items():
        primary.header[key] = value
    science = fits.ImageHDU(image.astype(np.float32), header=header.copy(), name="SCIENCE")
    science.header["BUNIT"] = units
    mask = fits.ImageHDU(bitmask.astype(np.int32), header=header.copy(), name="MASK")
    for name, bit in MASK_BITS.items():
        # HIERARCH cards, as LSST's pipelines write them: the names exceed FITS' 8 characters.
        index = int(bit).bit_length() - 1
        room = 34  # keeps every HIERARCH card, comment included, within 80 characters
        mask.header[f"HIERARCH MP_{name}"] = (index, (bit_descriptions or {}).get(name, name)[:room])
    variance_hdu = fits.ImageHDU(variance.astype(np.float32), header=header.copy(), name="VARIANCE")
    variance_hdu.header["BUNIT"] = f"{units}2"
    with atomic_path(path) as tmp:
        fits.HDUList([primary, science, mask, variance_hdu, *extra_hdus]).writeto(tmp, overwrite=True)
    return Path(path)


def mask_plane_bits(header: fits.Header) -> dict[str, int]:
    """Bit name → bit value from a MASK header's ``MP_<NAME>`` cards."""
    return {key[3:]: 1 << int(value) for key, value in header.items() if key.startswith("MP_")}


def read_tile_fits(path: str | Path) -> dict[str, Any]:
    """Read a tile: ``{"science", "mask", "variance": arrays, "header": SCIENCE header, "primary": header}``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such tile", str(path))
    try:
        with fits.open(path) as hdus:
            missing = [name for name in EXTENSIONS if name not in hdus]
            if missing:
                raise InputError(f"{path}: not a lensforge tile (missing extensions {missing})", str(path))
            return {"science": hdus["SCIENCE"].data.astype(np.float32), "mask": hdus["MASK"].data.astype(np.int32),
                    "variance": hdus["VARIANCE"].data.astype(np.float32), "header": hdus["SCIENCE"].header.copy(),
                    "mask_header": hdus["MASK"].header.copy(), "primary": hdus[0].header.copy()}
    except OSError as err:
        raise InputError(f"{path}: unreadable FITS ({err})", str(path)) from None
