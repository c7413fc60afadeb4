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
extension; non-finite pixels are always masked. Degenerate axes are dropped: a radio image of
shape 1 x 1 x N x N (frequency and Stokes axes of length 1) is the N x N image, with the celestial
part of its WCS. A real cube is refused. A separate mask file ``<stem>.mask.fits`` beside the image
(or the one the caller names) is combined with the rest, nonzero = masked; its bytes are part of
the tile's key, and such files are never listed as tiles themselves.

Detection follows the image's own resolution (:func:`lensforge.pipeline.inpaint.domain.image_resolution`:
the radio beam BMAJ/BMIN, or an optical PSF / seeing keyword, in pixels of its WCS), else
``ReprocessSettings.psf_fwhm_pixels``; the smoothing kernel, the minimum source area and the
background mesh scale with it and the threshold follows the noise the smoothed image really has
(:func:`lensforge.pipeline.tiles.detect.scaled_detection_settings`). The catalogue meta and the
summary row record ``BUNIT``, the FWHM used and where it came from.

In-painting is one whole-image call (:func:`lensforge.pipeline.inpaint.images.image_inpainter`):
``biharmonic``, ``interpolate``, ``model`` (the image in-painter, its checksum in the key) or
``auto``: the model where the image lies inside its training domain
(:func:`lensforge.pipeline.inpaint.domain.check_domain`), else biharmonic. An image outside the
domain gets a one-line ``warning`` in its summary row whichever of the two it was.
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
MASK_SUFFIXES = tuple(f".mask{suffix}" for suffix in TILE_SUFFIXES)  # <stem>.mask.fits: a mask, not a tile
NONFINITE_BIT = 1 << 15  # mask bit for pixels that were NaN/inf in the input
MASK_FILE_BIT = 1 << 14  # mask bit for pixels a separate mask file flags (unless it holds integer bits)
METHODS = ("model", "auto", "biharmonic", "interpolate")
# What the image in-painter does with thin holes near sources: inpaint_image's THIN_HOLE_CHOICES (a test
# holds them equal), repeated here so this module's import stays free of numpy and scipy (start-up time).
THIN_HOLES = ("auto", "network")
MODEL_METHODS = ("model", "auto")  # the methods that use the image in-painter (its checksum is in the key)
AUTO_FALLBACK = "biharmonic"  # what ``auto`` uses outside the model's training domain


@dataclass(frozen=True)
class ReprocessSettings:
    """How every tile of a batch is processed (part of each tile's key)."""

    # In-painting: model, auto (the model inside its training domain, else biharmonic), biharmonic, interpolate.
    method: str = "biharmonic"
    # Beam / PSF FWHM [pixels] of a tile whose headers declare none (BMAJ/BMIN, PSF or seeing keywords).
    psf_fwhm_pixels: float = 3.5
    # Detection threshold in units of the per-pixel noise, white-noise convention (lensforge.pipeline.tiles.detect).
    threshold_nsigma: float = 1.5
    # Model methods: thin holes near sources (cosmic rays, hot pixels, bad columns) take the fill that suits the
    # image's sky (auto) or always the network (``thin_holes`` of lensforge.pipeline.inpaint.images.inpaint_image).
    thin_holes: str = "auto"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"method {self.method!r}: valid methods are {', '.join(METHODS)}", self.method)
        if self.thin_holes not in THIN_HOLES:
            raise InputError(f"thin_holes {self.thin_holes!r}: valid choices are {', '.join(THIN_HOLES)}",
                             self.thin_holes)

    def digest(self) -> str:
        """SHA-256 of the settings (JSON, sorted keys; ``thin_holes`` left out when ``network``, which is what
        batches from before it existed did, so their keys still hold)."""
        values = {k: v for k, v in self.__dict__.items() if not (k == "thin_holes" and v == "network")}
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


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

    Never listed: anything under ``exclude`` (the output directory), reprocessing products (an
    output file whose claim or marker lies beside it), so a batch never reads its own outputs, and
    mask files (``*.mask.fits``, :data:`MASK_SUFFIXES`), which belong to the image beside them.
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
    found = sorted(p for p in fs.find(path) if p.endswith(TILE_SUFFIXES) and not p.endswith(MASK_SUFFIXES))
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


def tile_key(data: bytes, settings: ReprocessSettings, model_sha256: str | None,
             mask_data: bytes | None = None) -> str:
    """SHA-256 of (tile bytes, settings, model checksum[, mask file bytes]): unchanged key = nothing to redo."""
    digest = hashlib.sha256(data)
    digest.update(settings.digest().encode())
    digest.update((model_sha256 or "no-model").encode())
    if mask_data is not None:
        digest.update(b"mask-file" + hashlib.sha256(mask_data).digest())
    return digest.hexdigest()


def _strip_tile_suffix(url: str) -> tuple[str, str] | None:
    """(the URL without its FITS suffix, the suffix), or None for another name."""
    for suffix in TILE_SUFFIXES:
        if url.endswith(suffix):
            return url[: -len(suffix)], suffix
    return None


def sibling_mask(url: str) -> str | None:
    """The mask file beside an image: ``<stem>.mask.fits`` (or ``.mask.fits.gz`` / ``.mask.fit``) for
    ``<stem>.fits``, if one exists; None otherwise (and for a mask file itself)."""
    import fsspec

    if url.endswith(MASK_SUFFIXES):
        return None
    parts = _strip_tile_suffix(url)
    if parts is None:
        return None
    fs, _ = fsspec.core.url_to_fs(url)
    for suffix in TILE_SUFFIXES:
        candidate = f"{parts[0]}.mask{suffix}"
        try:
            if fs.isfile(type(fs)._strip_protocol(candidate)):
                return candidate
        except OSError:
            continue
    return None


@dataclass(frozen=True)
class TileInputs:
    """The bytes a tile's products depend on: the tile, and its separate mask file if it has one."""

    data: bytes
    mask_url: str | None = None
    mask_data: bytes | None = None


def read_inputs(url: str, mask: str | None = None,
                memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB) -> TileInputs:
    """The tile's bytes (:func:`read_tile`) and those of its mask file: ``mask`` when given, else the
    sibling ``<stem>.mask.fits`` (:func:`sibling_mask`) if there is one. Each is sized and checked
    like a tile; ``InputError`` names the file at fault."""
    data = read_tile(url, memory_budget_gb)
    mask_url = mask if mask is not None else sibling_mask(url)
    if mask_url is None:
        return TileInputs(data)
    return TileInputs(data, mask_url, read_tile(mask_url, memory_budget_gb))


def inputs_key(inputs: TileInputs, settings: ReprocessSettings, model_sha256: str | None) -> str:
    """:func:`tile_key` of a tile's inputs."""
    return tile_key(inputs.data, settings, model_sha256, inputs.mask_data)


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


def _shape_text(shape: tuple[int, ...]) -> str:
    """A numpy shape in FITS order, as FITS tools print it (``NAXIS1 x NAXIS2 x ...``)."""
    return "x".join(str(n) for n in reversed(shape))


def _image_plane(hdu, url: str, name: str) -> tuple[np.ndarray, bool]:
    """(the 2-D image data of ``hdu``, whether degenerate axes were dropped), or ``InputError`` (a table,
    a cube or no data).

    Axes of length 1 beyond the first two FITS axes (a radio image's frequency and Stokes axes) are
    dropped; an image whose other axes are longer is a cube and refused, naming its shape.
    """
    if not isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)) or hdu.data is None \
            or hdu.data.ndim < 2:
        what = type(hdu).__name__ if not isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)) \
            else ("no data" if hdu.data is None else f"{hdu.data.ndim}-D data")
        raise InputError(f"{url}: {name} is not a 2-D image ({what})", url)
    data = hdu.data
    if data.ndim == 2:
        return data, False
    if any(n != 1 for n in data.shape[:-2]):
        raise InputError(f"{url}: {name} is not a 2-D image ({data.ndim}-D data), a cube of "
                         f"{_shape_text(data.shape)} pixels: only axes of length 1 beyond NAXIS1 x NAXIS2 are "
                         "dropped; reprocess one plane at a time", url)
    return data.reshape(data.shape[-2:]), True


# WCS keywords of one axis (``CTYPE3``) and of an axis pair or axis parameter (``PC3_1``, ``PV4_0``), with an
# optional alternate-WCS letter: a 2-D image drops those of its dropped axes (number >= 3).
_AXIS_KEY = re.compile(r"(?:CTYPE|CRVAL|CDELT|CRPIX|CUNIT|CROTA|CRDER|CSYER|CNAME|NAXIS)0*(\d+)[A-Z]?")
_PAIR_KEY = re.compile(r"(?:PC|CD|PV|PS)0*(\d+)_0*(\d+)[A-Z]?")


def two_d_header(header: fits.Header) -> fits.Header:
    """``header`` of an image whose degenerate axes 3.. were dropped: without the cards of those axes, with
    ``WCSAXES`` 2 (the celestial WCS of axes 1 and 2 stays as it was)."""
    header = header.copy()
    for key in list(header.keys()):
        axis = _AXIS_KEY.fullmatch(key)
        pair = _PAIR_KEY.fullmatch(key)
        if (axis and int(axis.group(1)) >= 3) or (pair and (int(pair.group(1)) >= 3 or
                                                           (key[:2] in ("PC", "CD") and int(pair.group(2)) >= 3))):
            del header[key]
    if "WCSAXES" in header:
        header["WCSAXES"] = 2
    if "NAXIS" in header:
        header["NAXIS"] = 2
    return header


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
        # Axes 3.. (a radio image's FREQ / STOKES) must not be the celestial ones: the image is axes 1 and 2.
        extra = [str(header[key]) for key in header if re.fullmatch(r"CTYPE0*([3-9]|\d{2,})", key)]
        if any(c[:4] in ("RA--", "DEC-", "GLON", "GLAT", "ELON", "ELAT") for c in extra):
            raise ValueError(f"celestial axes beyond NAXIS1 / NAXIS2 (CTYPE {extra})")
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


def _read_fits(data: bytes, url: str, read, file_kind: str, readable_kind: str):
    """``read(hdus)`` on the FITS file ``data``; a damaged file is one ``InputError`` naming ``url``:
    ``truncated <file_kind>`` or ``not a readable <readable_kind>`` (an ``InputError`` of ``read`` passes)."""
    seen: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as seen:
            # Recorded, not printed: a worker's stderr is the user's terminal, and the error below says it all.
            warnings.simplefilter("always")
            with fits.open(io.BytesIO(data)) as hdus:
                result = read(hdus)
    except Exception as err:  # noqa: BLE001 - astropy raises many types for a damaged file
        if _truncated(seen):
            raise InputError(f"{url}: truncated {file_kind} ({len(data)} bytes)", url) from None
        if isinstance(err, InputError):
            raise
        raise InputError(f"{url}: not a readable {readable_kind} ({type(err).__name__})", url) from None
    if _truncated(seen):  # astropy reads what is there and only warns
        raise InputError(f"{url}: truncated {file_kind} ({len(data)} bytes)", url)
    return result


def parse_tile(data: bytes, url: str, mask_data: bytes | None = None, mask_url: str | None = None) -> dict[str, Any]:
    """Validate and read one tile: science (float32), mask (int32, non-finite pixels flagged), variance or None,
    the SCIENCE header (2-D: the cards of dropped degenerate axes removed) and the primary header of a
    multi-extension file (else None).

    ``mask_data`` is a separate mask file (``mask_url`` names it in errors), combined with the MASK
    extension: nonzero = masked (integer bits kept, any other nonzero value becomes :data:`MASK_FILE_BIT`).

    ``InputError`` (one line naming the tile or the mask file) for: an unreadable or truncated file, a
    SCIENCE that is not a 2-D image (or a cube whose other axes are longer than 1), a MASK that is not an
    integer image, planes of different shapes, a VARIANCE that is not finite and >= 0 on the unmasked
    pixels, a broken WCS, or nothing left unmasked.
    """
    def read(hdus):
        names = [hdu.name for hdu in hdus]
        science_name = "SCIENCE" if "SCIENCE" in names else "the primary HDU"
        science_hdu = hdus["SCIENCE"] if "SCIENCE" in names else hdus[0]
        plane, squeezed = _image_plane(science_hdu, url, science_name)
        mask = None
        if "MASK" in names:
            raw, _ = _image_plane(hdus["MASK"], url, "MASK")
            if not (np.issubdtype(raw.dtype, np.integer) or raw.dtype == bool):
                # Casting a float mask to int32 would turn NaN into -2**31 (every bit set) and 0.5 into 0.
                raise InputError(f"{url}: MASK must be an integer bit mask, got {raw.dtype.name} values", url)
            mask = np.asarray(raw, dtype=np.int32)
        variance = (np.asarray(_image_plane(hdus["VARIANCE"], url, "VARIANCE")[0], dtype=np.float32)
                    if "VARIANCE" in names else None)
        primary = hdus[0].header.copy() if science_hdu is not hdus[0] else None
        return (np.asarray(plane, dtype=np.float32), squeezed, mask, variance, science_hdu.header.copy(),
                primary)

    science, squeezed, mask, variance, header, primary = _read_fits(data, url, read, "FITS file", "FITS tile")
    mask = np.zeros(science.shape, np.int32) if mask is None else mask
    for name, array in (("MASK", mask), ("VARIANCE", variance)):
        if array is not None and array.shape != science.shape:
            raise InputError(f"{url}: {name} has shape {array.shape}, SCIENCE {science.shape}", url)
    if mask_data is not None:
        mask = mask | read_mask_file(mask_data, mask_url or f"{url} (mask file)", science.shape)
    if min(science.shape) < 16:
        raise InputError(f"{url}: image {science.shape} is too small to reprocess (< 16 pixels)", url)
    check_wcs(header, url, science.shape)
    if squeezed:
        header = two_d_header(header)
    mask = np.where(np.isfinite(science), mask, mask | NONFINITE_BIT)
    if np.count_nonzero(mask) == mask.size:
        raise InputError(f"{url}: every pixel is masked", url)
    if variance is not None:
        bad = (mask == 0) & ~(np.isfinite(variance) & (variance >= 0))
        if bad.any():
            # sqrt of such a variance is NaN: the in-painting noise and INPAINT_STD would be NaN.
            raise InputError(f"{url}: VARIANCE is negative or not finite on {int(bad.sum())} unmasked pixels", url)
    return {"science": science, "mask": mask, "variance": variance, "header": header, "primary": primary,
            "squeezed": squeezed}


def read_mask_file(data: bytes, url: str, shape: tuple[int, ...]) -> np.ndarray:
    """The int32 mask of a separate mask file: its ``MASK`` extension, else its first image (degenerate axes
    dropped); nonzero (or NaN) = masked. Integer bits that fit in int32 are kept, anything else nonzero
    becomes :data:`MASK_FILE_BIT`. ``InputError`` (one line naming the file): unreadable, no 2-D image,
    or a shape other than the image's ``shape``."""
    def read(hdus):
        names = [hdu.name for hdu in hdus]
        hdu = hdus["MASK"] if "MASK" in names else next(
            (h for h in hdus if isinstance(h, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU))
             and h.data is not None), hdus[0])
        return np.asarray(_image_plane(hdu, url, "the mask")[0])

    raw = _read_fits(data, url, read, "FITS mask file", "FITS mask file")
    if raw.shape != tuple(shape):
        raise InputError(f"{url}: mask of {_shape_text(raw.shape)} pixels, the image has {_shape_text(shape)}", url)
    info = np.iinfo(np.int32)
    if np.issubdtype(raw.dtype, np.integer) and raw.size and info.min <= raw.min() and raw.max() <= info.max:
        return raw.astype(np.int32)
    flagged = (raw != 0) if raw.dtype == bool or np.issubdtype(raw.dtype, np.integer) else ~(raw == 0)
    return np.where(flagged, np.int32(MASK_FILE_BIT), np.int32(0))


def celestial_wcs(header: fits.Header):
    """The celestial ``astropy.wcs.WCS`` of a header :func:`check_wcs` accepted, or None if it declares none."""
    from astropy.wcs import WCS

    if "CTYPE1" not in header and "CTYPE2" not in header:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FITSFixedWarning chatter (check_wcs accepted the header)
        return WCS(header, naxis=2).celestial


def recorded_row(out_dir: Path, stem: str) -> dict[str, Any]:
    """What a finished tile's marker recorded that a skipped row repeats: the method used and any warning."""
    recorded = _read_json(Path(out_dir) / f"{stem}{MARKER_SUFFIX}")
    return {key: recorded[key] for key in ("method_used", "warning") if isinstance(recorded.get(key), str)}


def _finite_or_none(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with non-finite floats as None (JSON has no NaN)."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}


def _noise(science: np.ndarray, known: np.ndarray, variance: np.ndarray | None):
    """The in-painting noise: sqrt(VARIANCE) per pixel when the tile has one (masked pixels get the median of
    the known ones: their variance is not data), else one robust MAD value."""
    if variance is not None:
        sigma = np.sqrt(np.clip(np.where(known, variance, 0.0), 0.0, None))
        return np.where(known, sigma, float(np.median(sigma[known])))
    values = science[known]
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def _detection_variance(variance: np.ndarray | None, known: np.ndarray, std: np.ndarray | None) -> np.ndarray | None:
    """The variance detection uses for its errors: VARIANCE on known pixels; on filled ones the median known
    variance plus the in-painting's own variance (INPAINT_STD squared)."""
    if variance is None:
        return None
    fill = float(np.median(variance[known]))
    extra = 0.0 if std is None else np.asarray(std, np.float64) ** 2
    return np.where(known, variance, fill + extra)


FLUX_COLUMNS = ("segment_flux", "segment_flux_err", "kron_flux", "kron_flux_err")


def flux_unit(bunit: str | None):
    """The astropy unit of an image's ``BUNIT`` that a FITS table can carry (``'JY/BEAM'`` reads as Jy / beam),
    or None when it has none or one astropy / FITS do not know (the catalogue's meta keeps BUNIT as written)."""
    import astropy.units as u

    if not bunit:
        return None
    for text in (bunit, bunit.replace("JY", "Jy").replace("BEAM", "beam").replace("ADU", "adu")):
        unit = u.Unit(text, parse_strict="silent")
        if isinstance(unit, u.UnrecognizedUnit):
            continue
        try:
            unit.to_string("fits")
        except ValueError:
            return None
        return unit
    return None


def reprocess_tile(url: str, out_dir: str | Path, settings: ReprocessSettings, model=None,
                   model_sha256: str | None = None, source: str | None = None,
                   memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB, card: dict | None = None,
                   mask: str | None = None) -> dict[str, Any]:
    """Reprocess one tile into ``out_dir`` (skipped if already done with the same key); returns a summary row.

    ``source`` is the directory / prefix the tile was listed from: the outputs mirror the tile's path
    under it (:func:`output_stem`). ``mask`` names a separate mask file (else a sibling ``<stem>.mask.fits``
    is used when there is one). For ``model`` and ``auto``, ``model`` / ``card`` are the image in-painter
    (:func:`lensforge.models.image_inpainter.load_image_inpainter`; the shipped one is loaded when None)
    and ``model_sha256`` defaults to the card's ``weights_sha256``.

    The row: ``tile``, ``status`` (done / skipped), ``n_sources``, ``masked_fraction``, ``method_used``,
    ``bunit``, ``fwhm_pixels`` and ``fwhm_source`` (the header's beam / PSF, or ``default``), ``mask_file``
    when one was used, ``domain`` (what the domain check measured, for model / auto), ``warning`` (one
    line) when the tile lies outside the model's training domain, and ``seconds``.

    Raises ``InputError`` (one line naming the tile) for an unreadable, invalid or over-budget tile
    (:func:`read_tile`), or when the outputs' names belong to another tile.
    """
    began = time.perf_counter()
    out_dir = Path(out_dir)
    stem = output_stem(url, source)
    identity = tile_identity(url)
    inputs = read_inputs(url, mask, memory_budget_gb)
    if settings.method in MODEL_METHODS:
        if card is None:
            from lensforge.models.image_inpainter import load_image_inpainter

            model, card = load_image_inpainter(None)
        model_sha256 = model_sha256 or card.get("weights_sha256")
    else:
        model_sha256 = None  # the model plays no part: its checksum must not redo the tile
    key = inputs_key(inputs, settings, model_sha256)
    if is_done(out_dir, stem, key, identity):
        return {"tile": url, "status": "skipped", **recorded_row(out_dir, stem), "seconds": time.perf_counter() - began}
    check_owner(url, out_dir, stem)
    tile = parse_tile(inputs.data, url, inputs.mask_data, inputs.mask_url)
    # Imported once the tile has parsed: a bad tile is refused without loading SciPy's signal
    # module and photutils (a second of a one-tile call).
    from lensforge.pipeline.inpaint.domain import check_domain, domain_warning, image_resolution
    from lensforge.pipeline.inpaint.images import image_inpainter
    from lensforge.pipeline.tiles.detect import detect, scaled_detection_settings

    science, mask_bits, header = tile["science"], tile["mask"], tile["header"]
    known = mask_bits == 0
    noise_sigma = _noise(science, known, tile["variance"])
    resolution = image_resolution(header, tile["primary"])
    fwhm, fwhm_source = ((resolution.fwhm_pixels, resolution.source) if resolution.fwhm_pixels is not None
                         else (float(settings.psf_fwhm_pixels), "default"))

    method_used, warning, measured = settings.method, None, None
    if settings.method in MODEL_METHODS:
        report = check_domain(science, mask_bits, header, card, noise_sigma, resolution=resolution)
        measured = _finite_or_none(report.measured)
        if not report.in_domain:
            warning = domain_warning(url, report)
        method_used = AUTO_FALLBACK if settings.method == "auto" and warning else "model"
    if method_used == "model":
        inpaint = image_inpainter("model", model=model, card=card, thin_holes=settings.thin_holes)
    else:
        inpaint = image_inpainter(method_used)
    filled, std = inpaint(np.where(known, science, 0.0), ~known, noise_sigma)
    filled = np.where(known, science, np.asarray(filled, dtype=np.float64))
    if not np.isfinite(filled).all():
        raise InputError(f"{url}: in-painting ({method_used}) left {int(np.count_nonzero(~np.isfinite(filled)))} "
                         "pixels non-finite", url)
    std = None if std is None else np.where(known, 0.0, np.asarray(std, dtype=np.float64))

    wcs = celestial_wcs(header)
    catalog = detect(filled, bitmask=None, threshold_nsigma=settings.threshold_nsigma, wcs=wcs,
                     variance=_detection_variance(tile["variance"], known, std), correlated_noise=True,
                     **scaled_detection_settings(fwhm, filled.shape))
    claim = out_dir / f"{stem}{CLAIM_SUFFIX}"
    claim.parent.mkdir(parents=True, exist_ok=True)
    check_owner(url, out_dir, stem)  # again: another batch may have claimed the name meanwhile
    if not claim.is_file():
        atomic_write_text(claim, json.dumps({"source": identity}, indent=2) + "\n")
    for card_name in ("BSCALE", "BZERO", "BLANK"):  # the input's integer encoding; the output is float32
        header.remove(card_name, ignore_missing=True, remove_all=True)
    header["LFKEY"] = (key[:16], "lensforge reprocess key (sha256 prefix)")
    header["LFMETHOD"] = (method_used, "in-painting method")
    if method_used != settings.method:
        header["LFMETREQ"] = (settings.method, "in-painting method asked for")
    if model_sha256:
        header["LFMODEL"] = (model_sha256[:16], "in-painting model sha256 prefix")
    header["LFFWHM"] = (round(fwhm, 6), "[pixel] beam / PSF FWHM used for detection")
    header["LFFWHMSR"] = (fwhm_source, "where LFFWHM came from")
    sky = None if wcs is None else wcs.to_header()  # every image extension carries the tile's celestial WCS
    hdus = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(filled.astype(np.float32), header=header, name="SCIENCE"),
                         fits.ImageHDU(mask_bits, header=sky, name="MASK"),
                         fits.ImageHDU(np.zeros(filled.shape, np.float32) if std is None else std.astype(np.float32),
                                       header=sky, name="INPAINT_STD")])
    if tile["variance"] is not None:
        hdus.append(fits.ImageHDU(tile["variance"], header=sky, name="VARIANCE"))
    with atomic_path(out_dir / f"{stem}.reprocessed.fits") as tmp:
        hdus.writeto(tmp, overwrite=True)
    unit = flux_unit(resolution.bunit)  # detect() labels fluxes in adu: they are in the image's own units
    for name in FLUX_COLUMNS:
        catalog[name].unit = unit
    catalog.meta.update({"TILE": stem, "LFKEY": key[:16], "LFMETHOD": method_used, "FWHMPIX": float(fwhm),
                         "FWHMSRC": fwhm_source})
    if resolution.bunit:
        catalog.meta["BUNIT"] = resolution.bunit
    with atomic_path(out_dir / f"{stem}.catalog.fits") as tmp, warnings.catch_warnings():
        # detect()'s metadata keys are longer than 8 characters: HIERARCH cards, as intended.
        warnings.simplefilter("ignore", VerifyWarning)
        catalog.write(tmp, format="fits", overwrite=True)
    summary: dict[str, Any] = {"tile": url, "status": "done", "n_sources": len(catalog),
                               "masked_fraction": float(np.count_nonzero(mask_bits) / mask_bits.size),
                               "method_used": method_used, "bunit": resolution.bunit, "fwhm_pixels": float(fwhm),
                               "fwhm_source": fwhm_source}
    if inputs.mask_url is not None:
        summary["mask_file"] = inputs.mask_url
    if measured is not None:
        summary["domain"] = measured
    if warning is not None:
        summary["warning"] = warning
    summary["seconds"] = time.perf_counter() - began
    atomic_write_text(out_dir / f"{stem}{MARKER_SUFFIX}",
                      json.dumps({"key": key, "source": identity, **summary}, indent=2) + "\n")
    return summary
