"""Batch reprocessing of survey tiles: validate → background → detect → mask → in-paint → catalogue.

One tile is one unit of work (:func:`reprocess_tile`), a pure function of the tile's bytes,
the configuration and the in-painting model, so a batch is idempotent and resumable:

* the tile's **key** is the SHA-256 of (tile bytes, configuration hash, model checksum);
* a tile's outputs mirror its path under the source (``<source>/night1/a.fits`` gives the stem
  ``night1/a``), so two tiles of one batch never share a name;
* a ``<stem>.source.json`` claim naming the tile is written before its outputs
  (``<stem>.reprocessed.fits``: in-painted SCIENCE, MASK, VARIANCE, INPAINT_STD, each with the
  tile's celestial WCS; ``<stem>.catalog.fits``: photutils detections, with ra/dec when the tile
  has a WCS), which are written atomically (temp + rename), then a ``<stem>.done.json`` marker
  holding the key and the tile is written last;
* a tile whose marker holds the same key is skipped without reading its pixels again; a crash
  before the marker leaves at most complete, overwritable outputs and no marker;
* outputs claimed by another tile (another source with a file of the same name) are never
  written over: the tile fails, naming the other one.

Every tile is sized from its headers alone (``NAXISn`` x ``|BITPIX|``/8 per HDU, ``ZNAXISn`` for
tile-compressed images) against the memory budget before its data are read, and a local path
must be a regular file (a FIFO or ``/dev/zero`` would hang or never end). Gzip-compressed tiles
(``.fits.gz``) are decompressed as a stream while they are sized.

Inputs are read through fsspec, so a local path and an object-store URL (``s3://``, ``gs://``,
``memory://`` ...) work alike. A tile is a lensforge MEF (SCIENCE / MASK / VARIANCE, as
``lensforge tile`` writes) or a plain image in the primary HDU with an optional ``MASK``
extension; non-finite pixels are always masked.
"""

from __future__ import annotations

import gzip
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
from lensforge.limits import DEFAULT_MEMORY_BUDGET_GB, check_memory, check_regular_file

MARKER_SUFFIX = ".done.json"
CLAIM_SUFFIX = ".source.json"  # written before a tile's outputs: which tile they belong to
OUTPUT_SUFFIXES = (".reprocessed.fits", ".catalog.fits")
TILE_SUFFIXES = (".fits.gz", ".fits", ".fit")
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


def _local_path(url: str) -> Path | None:
    """The local path of ``url`` (a plain path or ``file://``), or None for another protocol."""
    if "://" not in url:
        return Path(url)
    return Path(url.split("://", 1)[1]) if url.startswith("file://") else None


def tile_identity(url: str) -> str:
    """What names a tile in claims and markers: its absolute local path (symlinks resolved), else its URL."""
    local = _local_path(url)
    return str(local.resolve()) if local is not None else url


def _under(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def list_tiles(source: str, exclude: str | Path | None = None) -> list[str]:
    """Tile URLs under ``source``: a FITS file, or every ``*.fits`` / ``*.fits.gz`` / ``*.fit`` in a
    directory / prefix (sorted).

    Never listed: anything under ``exclude`` (the output directory) and reprocessing products
    (an output file whose claim or marker lies beside it), so a batch never reads its own outputs.
    A local ``source`` that exists but is not a file or directory (FIFO, device) is an ``InputError``.
    """
    import fsspec

    fs, path = fsspec.core.url_to_fs(source)
    protocol = source.split("://", 1)[0] + "://" if "://" in source else ""
    local = _local_path(source)
    if local is not None and local.exists() and not (local.is_file() or local.is_dir()):
        check_regular_file(local, source)
    if fs.isfile(path):
        return [source]
    if not fs.isdir(path):
        raise InputError(f"{source}: no such file or directory", source)
    found = sorted(p for p in fs.find(path) if p.endswith(TILE_SUFFIXES))
    urls = [f"{protocol}{p}" if protocol and not p.startswith(protocol) else p for p in found]
    excluded = Path(tile_identity(str(exclude))) if exclude is not None and local is not None else None
    return [url for url in urls if not (excluded is not None and _under(Path(tile_identity(url)), excluded))
            and not _is_product(fs, url)]


def _is_product(fs, url: str) -> bool:
    """Whether ``url`` is an output of an earlier batch (``<stem>.reprocessed.fits`` with its claim or marker)."""
    for suffix in OUTPUT_SUFFIXES:
        if url.endswith(suffix):
            stem = url[: -len(suffix)]
            return any(fs.exists(type(fs)._strip_protocol(stem + tail)) for tail in (CLAIM_SUFFIX, MARKER_SUFFIX))
    return False


def read_bytes(url: str) -> bytes:
    """The bytes of one input through fsspec; ``InputError`` naming the URL if it cannot be read."""
    import fsspec

    try:
        with fsspec.open(url, "rb") as handle:
            return handle.read()
    except (OSError, ValueError) as err:
        raise InputError(f"{url}: unreadable ({type(err).__name__}: {err})", url) from None


# --- sizing a FITS file from its headers --------------------------------------------------------------

BLOCK = 2880
MAX_HEADER_BLOCKS = 1000  # 36000 cards: more is not a tile header
# Working memory per pixel of the largest image while a tile is processed: float32 science, variance,
# filled and INPAINT_STD planes, the int32 mask, float64 noise, background, convolved and segmentation
# planes of the detection (measured peak about 50 bytes per pixel).
WORK_BYTES_PER_PIXEL = 64


@dataclass(frozen=True)
class FitsLayout:
    """What the headers of a FITS file declare: its length and the images it holds."""

    length: int  # bytes up to the end of the last HDU's data
    data_bytes: int  # decompressed bytes of every HDU's data (tile-compressed images at full size)
    largest_image: tuple[int, ...]  # shape (NAXISn order reversed) of the largest image, () if none
    compressed: bool  # any tile-compressed image


def _card_int(cards: dict[str, str], key: str, url: str, default: int | None = None) -> int:
    raw = cards.get(key)
    if raw is None:
        if default is None:
            raise InputError(f"{url}: not a readable FITS tile (header lacks {key})", url)
        return default
    try:
        return int(raw)
    except ValueError:
        raise InputError(f"{url}: not a readable FITS tile ({key} = {raw!r:.40} is not an integer)", url) from None


def _read_header(stream, url: str, first: bool) -> dict[str, str] | None:
    """The keyword -> raw value text of the next header; None at the end of the file (after the first HDU)."""
    cards: dict[str, str] = {}
    for index in range(MAX_HEADER_BLOCKS):
        block = stream.read(BLOCK)
        if index == 0 and not first and (not block or not block.startswith(b"XTENSION")):
            return None  # end of file, or trailing padding / bytes astropy ignores
        if len(block) < BLOCK:
            what = "empty file" if first and not block and index == 0 else "truncated header"
            raise InputError(f"{url}: not a readable FITS tile ({what})", url)
        try:
            text = block.decode("ascii")
        except UnicodeDecodeError:
            raise InputError(f"{url}: not a readable FITS tile (non-ASCII header)", url) from None
        if index == 0 and first and not text.startswith("SIMPLE  ="):
            raise InputError(f"{url}: not a readable FITS tile (no SIMPLE card)", url)
        for start in range(0, BLOCK, 80):
            card = text[start:start + 80]
            keyword = card[:8].strip()
            if keyword == "END":
                return cards
            if card[8:10] == "= ":
                cards.setdefault(keyword, card[10:].split("/", 1)[0].strip().strip("'").strip())
    raise InputError(f"{url}: not a readable FITS tile (no END card in {MAX_HEADER_BLOCKS} header blocks)", url)


def _image_shape(cards: dict[str, str], url: str, prefix: str = "") -> tuple[tuple[int, ...], int]:
    """(shape, bytes per pixel) of an image declared by ``[Z]BITPIX`` / ``[Z]NAXISn``."""
    bitpix = _card_int(cards, f"{prefix}BITPIX", url)
    if bitpix not in (8, 16, 32, 64, -32, -64):
        raise InputError(f"{url}: not a readable FITS tile ({prefix}BITPIX = {bitpix})", url)
    naxis = _card_int(cards, f"{prefix}NAXIS", url)
    if not 0 <= naxis <= 999:
        raise InputError(f"{url}: not a readable FITS tile ({prefix}NAXIS = {naxis})", url)
    shape = tuple(_card_int(cards, f"{prefix}NAXIS{i}", url) for i in range(naxis, 0, -1))
    if any(n < 0 for n in shape):
        raise InputError(f"{url}: not a readable FITS tile (negative {prefix}NAXISn)", url)
    return shape, abs(bitpix) // 8


def scan_fits(stream, url: str) -> FitsLayout:
    """The :class:`FitsLayout` of the FITS file ``stream`` reads, from its headers alone (data are skipped
    with forward seeks; a gzip stream decompresses without holding the data).

    ``InputError``: not FITS (``not a readable FITS tile``), or shorter than its headers say (``truncated``).
    """
    offset, data_bytes, largest, compressed, first, end = 0, 0, (), False, True, 0
    while True:
        stream.seek(offset)
        cards = _read_header(stream, url, first)
        if cards is None:
            break
        header_end = stream.tell()
        shape, itemsize = _image_shape(cards, url)
        pcount, gcount = _card_int(cards, "PCOUNT", url, 0), _card_int(cards, "GCOUNT", url, 1)
        if pcount < 0 or gcount < 0:
            raise InputError(f"{url}: not a readable FITS tile (negative PCOUNT / GCOUNT)", url)
        axes = shape[:-1] if cards.get("GROUPS") == "T" and shape and shape[-1] == 0 else shape
        size = itemsize * gcount * (pcount + math.prod(axes)) if shape else 0
        image: tuple[int, ...] = ()
        if cards.get("ZIMAGE") == "T":
            image, z_itemsize = _image_shape(cards, url, "Z")
            data_bytes += z_itemsize * math.prod(image) + size
            compressed = True
        else:
            data_bytes += size
            if first or cards.get("XTENSION") == "IMAGE":
                image = shape
        if len(image) >= 2 and math.prod(image) > math.prod(largest or (0,)):
            largest = image
        end = header_end + size
        if size and not _has_byte(stream, end - 1):
            length = _file_length(stream)
            raise InputError(f"{url}: truncated FITS file{'' if length is None else f' ({length} bytes)'}", url)
        offset = header_end + -(-size // BLOCK) * BLOCK
        first = False
    if _has_byte(stream, offset - 1):
        length = offset
    else:  # the last HDU's padding is missing: astropy reads such files, so do we
        stream.seek(end)
        length = end + len(stream.read(BLOCK))
    return FitsLayout(length=length, data_bytes=data_bytes, largest_image=largest, compressed=compressed)


def _has_byte(stream, position: int) -> bool:
    """Whether ``stream`` holds a byte at ``position``."""
    if position < 0:
        return True
    stream.seek(position)
    return len(stream.read(1)) == 1


def _file_length(stream) -> int | None:
    """Bytes in ``stream``, or None when it cannot seek from its end (gzip)."""
    try:
        return stream.seek(0, io.SEEK_END)
    except (OSError, ValueError):
        return None


def read_tile(url: str, memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB) -> bytes:
    """The FITS bytes of a tile (decompressed if gzipped), once its headers say it fits in the memory budget.

    ``InputError`` (one line naming the tile) for: a local path that is not a regular file, a file
    that is not FITS or is shorter than its headers say, or one whose data and processing would need
    more than ``memory_budget_gb`` (:class:`~lensforge.limits.MemoryBudgetError`).
    """
    import fsspec

    local = _local_path(url)
    if local is not None:
        check_regular_file(local, url)
    try:
        with fsspec.open(url, "rb") as raw:
            zipped = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if zipped else raw
            layout = scan_fits(stream, url)
            pixels = math.prod(layout.largest_image) if layout.largest_image else 0
            shape = "x".join(str(n) for n in reversed(layout.largest_image)) or "no image"
            kind = ", tile-compressed" if layout.compressed else (", gzipped" if zipped else "")
            check_memory(layout.length + layout.data_bytes + WORK_BYTES_PER_PIXEL * pixels,
                         f"{url} ({shape} pixels{kind})", memory_budget_gb)
            stream.seek(0)
            return stream.read(layout.length)
    except InputError:
        raise
    except (OSError, ValueError, EOFError) as err:
        raise InputError(f"{url}: unreadable ({type(err).__name__}: {' '.join(str(err).split())[:200]})",
                         url) from None


def tile_key(data: bytes, settings: ReprocessSettings, model_sha256: str | None) -> str:
    """SHA-256 of (tile bytes, settings, model checksum): unchanged key = nothing to redo."""
    digest = hashlib.sha256(data)
    digest.update(settings.digest().encode())
    digest.update((model_sha256 or "no-model").encode())
    return digest.hexdigest()


def output_stem(url: str, source: str | None = None) -> str:
    """The output name stem of an input: its path under ``source`` without ``.fits`` (``night1/a`` for
    ``<source>/night1/a.fits``); its file name without ``.fits`` when ``source`` is the file itself or None."""
    name = url.rstrip("/").rsplit("/", 1)[-1]
    if source is not None:
        import fsspec

        _, root = fsspec.core.url_to_fs(source)
        _, path = fsspec.core.url_to_fs(url)
        root = root.rstrip("/")
        if path.startswith(root + "/"):
            name = path[len(root) + 1:]
    for suffix in TILE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _read_json(path: Path) -> dict:
    try:
        recorded = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def is_done(out_dir: Path, stem: str, key: str, tile: str | None = None) -> bool:
    """Whether ``stem`` was finished with exactly this key (marker present, outputs present), by ``tile``
    (its :func:`tile_identity`) when given and recorded."""
    marker = out_dir / f"{stem}{MARKER_SUFFIX}"
    if not marker.is_file():
        return False
    recorded = _read_json(marker)
    if tile is not None and recorded.get("source", tile) != tile:
        return False
    return recorded.get("key") == key and all((out_dir / f"{stem}{s}").is_file() for s in OUTPUT_SUFFIXES)


def output_owner(out_dir: Path, stem: str) -> str | None:
    """The tile the outputs of ``stem`` in ``out_dir`` belong to (claim or marker), or None if unrecorded."""
    for suffix in (CLAIM_SUFFIX, MARKER_SUFFIX):
        owner = _read_json(Path(out_dir) / f"{stem}{suffix}").get("source")
        if isinstance(owner, str):
            return owner
    return None


def check_owner(url: str, out_dir: Path, stem: str) -> None:
    """``InputError`` if the outputs ``stem`` in ``out_dir`` belong to another tile than ``url``."""
    owner = output_owner(out_dir, stem)
    if owner is not None and owner != tile_identity(url):
        raise InputError(f"{url}: {Path(out_dir) / stem}.reprocessed.fits holds the products of another tile, "
                         f"{owner}; they are never written over: reprocess into another --output", url)


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


# A reference pixel farther than this many image sizes from the image is not a tile's WCS (CRPIX1 = 1e300).
MAX_CRPIX_IMAGE_SIZES = 1000
# Pixel scales outside these bounds [deg] are no survey's: 0.36 micro-arcsec .. 10 deg.
PIXEL_SCALE_RANGE_DEG = (1e-10, 10.0)


def check_wcs(header: fits.Header, url: str, shape: tuple[int, ...] | None = None) -> None:
    """``InputError`` unless a header that declares a WCS (``CTYPE1``/``CTYPE2``) holds a usable celestial one.

    A tile without any WCS is accepted (plain images); a broken one would otherwise be copied into
    the outputs and give every downstream sky position wrongly. Refused besides wcslib's own
    errors: non-numeric or non-finite numbers, a reference pixel more than
    :data:`MAX_CRPIX_IMAGE_SIZES` image sizes away (``shape``: the image's, else ``NAXISn``), a
    singular matrix and a pixel scale outside :data:`PIXEL_SCALE_RANGE_DEG`.
    """
    from astropy.wcs import WCS

    if "CTYPE1" not in header and "CTYPE2" not in header:
        return
    for key in _WCS_NUMBERS:
        value = header.get(key)
        if key in header and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not math.isfinite(value)):
            raise InputError(f"{url}: invalid WCS, {key} = {value!r:.40} is not a finite number", url)
    size = max(shape) if shape else max(int(header.get("NAXIS1", 0) or 0), int(header.get("NAXIS2", 0) or 0))
    for key in ("CRPIX1", "CRPIX2"):
        if size and abs(float(header.get(key, 0.0))) > MAX_CRPIX_IMAGE_SIZES * size:
            raise InputError(f"{url}: invalid WCS, {key} = {header[key]:g} is more than {MAX_CRPIX_IMAGE_SIZES} "
                             f"image sizes ({size} pixels) from the image", url)
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
        matrix = wcs.celestial.pixel_scale_matrix
        if not np.all(np.isfinite(matrix)) or abs(float(np.linalg.det(matrix))) == 0.0:
            raise ValueError("singular pixel-to-sky matrix")
        scale = math.sqrt(abs(float(np.linalg.det(matrix))))
        low, high = PIXEL_SCALE_RANGE_DEG
        if not low <= scale <= high:
            raise ValueError(f"pixel scale {scale:.3g} deg is outside {low:g}..{high:g} deg")
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
    check_wcs(header, url, science.shape)
    mask = np.where(np.isfinite(science), mask, mask | NONFINITE_BIT)
    if np.count_nonzero(mask) == mask.size:
        raise InputError(f"{url}: every pixel is masked", url)
    if variance is not None:
        bad = (mask == 0) & ~(np.isfinite(variance) & (variance >= 0))
        if bad.any():
            # sqrt of such a variance is NaN: the in-painting noise and INPAINT_STD would be NaN.
            raise InputError(f"{url}: VARIANCE is negative or not finite on {int(bad.sum())} unmasked pixels", url)
    return {"science": science, "mask": mask, "variance": variance, "header": header}


def celestial_wcs(header: fits.Header):
    """The celestial ``astropy.wcs.WCS`` of a header :func:`check_wcs` accepted, or None if it declares none."""
    from astropy.wcs import WCS

    if "CTYPE1" not in header and "CTYPE2" not in header:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FITSFixedWarning chatter (check_wcs accepted the header)
        return WCS(header, naxis=2).celestial


def reprocess_tile(url: str, out_dir: str | Path, settings: ReprocessSettings, model=None,
                   model_sha256: str | None = None, source: str | None = None,
                   memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB) -> dict[str, Any]:
    """Reprocess one tile into ``out_dir`` (skipped if already done with the same key); returns a summary row.

    ``source`` is the directory / prefix the tile was listed from: the outputs mirror the tile's path
    under it (:func:`output_stem`). Raises ``InputError`` (one line naming the tile) for an unreadable,
    invalid or over-budget tile (:func:`read_tile`), or when the outputs' names belong to another tile.
    """
    from lensforge.pipeline.inpaint.images import inpaint_tile
    from lensforge.pipeline.inpaint.stamps import stamp_inpainter
    from lensforge.pipeline.tiles.detect import detect

    began = time.perf_counter()
    out_dir = Path(out_dir)
    stem = output_stem(url, source)
    identity = tile_identity(url)
    data = read_tile(url, memory_budget_gb)
    key = tile_key(data, settings, model_sha256)
    if is_done(out_dir, stem, key, identity):
        return {"tile": url, "status": "skipped", "seconds": time.perf_counter() - began}
    check_owner(url, out_dir, stem)
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
    header = tile["header"]
    wcs = celestial_wcs(header)
    catalog = detect(filled, bitmask=None, psf_fwhm_pixels=settings.psf_fwhm_pixels,
                     threshold_nsigma=settings.threshold_nsigma, wcs=wcs)
    claim = out_dir / f"{stem}{CLAIM_SUFFIX}"
    claim.parent.mkdir(parents=True, exist_ok=True)
    check_owner(url, out_dir, stem)  # again: another batch may have claimed the name meanwhile
    if not claim.is_file():
        atomic_write_text(claim, json.dumps({"source": identity}, indent=2) + "\n")
    header["LFKEY"] = (key[:16], "lensforge reprocess key (sha256 prefix)")
    header["LFMETHOD"] = (settings.method, "in-painting method")
    if model_sha256:
        header["LFMODEL"] = (model_sha256[:16], "in-painting model sha256 prefix")
    sky = None if wcs is None else wcs.to_header()  # every image extension carries the tile's celestial WCS
    hdus = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(filled.astype(np.float32), header=header, name="SCIENCE"),
                         fits.ImageHDU(mask, header=sky, name="MASK"),
                         fits.ImageHDU(np.zeros_like(filled) if std is None else std.astype(np.float32),
                                       header=sky, name="INPAINT_STD")])
    if tile["variance"] is not None:
        hdus.append(fits.ImageHDU(tile["variance"], header=sky, name="VARIANCE"))
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
    atomic_write_text(out_dir / f"{stem}{MARKER_SUFFIX}",
                      json.dumps({"key": key, "source": identity, **summary}, indent=2) + "\n")
    return summary
