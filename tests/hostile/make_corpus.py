"""Write the hostile-input corpus of ``tests/test_hostile.py`` (deterministic, small, committed).

    python tests/hostile/make_corpus.py          # rewrites tests/hostile/{tiles,config,cosmos}/

Files (see README.md for what is wrong with each and which command it is fed to):

* ``tiles/*.fits``: bad survey tiles, all fed to ONE ``lensforge reprocess tests/hostile/tiles`` batch;
* ``config/*.yaml``: bad configuration files for ``--config``;
* ``cosmos/<case>/``: bad COSMOS catalogue directories for ``tile.cosmos_dir``.

Zarr stores and model checkpoints are directories of binary files whose exact bytes depend on the
zarr / torch versions installed, so they are not committed: :func:`build_stores` and
:func:`build_checkpoints` build them at test time (into ``tmp_path``) from the same descriptions.
Nothing here imports lensforge except those two builders.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

HERE = Path(__file__).resolve().parent
SIZE = 32  # tiles are 32 x 32: large enough to pass the size check, 4 KiB of pixels
COSMOS_FILE = "real_galaxy_catalog_23.5_example.fits"  # tile.cosmos_file_name's default


# --- tiles ---------------------------------------------------------------------------------------

def _science(seed: int = 0) -> np.ndarray:
    """Sky noise around 100 ADU plus one round galaxy in the middle (float32)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    blob = 60.0 * np.exp(-((xx - SIZE / 2) ** 2 + (yy - SIZE / 2) ** 2) / (2 * 2.5**2))
    return (rng.normal(100.0, 2.0, (SIZE, SIZE)) + blob).astype(np.float32)


def _wcs_header() -> fits.Header:
    """A valid TAN WCS (0.2 arcsec pixels), as ``lensforge tile`` writes it."""
    header = fits.Header()
    scale = 0.2 / 3600.0
    header["WCSAXES"] = 2
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CUNIT1"], header["CUNIT2"] = "deg", "deg"
    header["CRVAL1"], header["CRVAL2"] = 150.1163, 2.2009
    header["CRPIX1"], header["CRPIX2"] = (SIZE + 1) / 2.0, (SIZE + 1) / 2.0
    header["CD1_1"], header["CD1_2"], header["CD2_1"], header["CD2_2"] = -scale, 0.0, 0.0, scale
    header["RADESYS"], header["EQUINOX"] = "ICRS", 2000.0
    return header


def _mef(science=None, mask=None, variance=None, header=None, mask_hdu=None) -> bytes:
    """A lensforge-style tile (empty primary, SCIENCE, MASK, VARIANCE) as bytes."""
    science = _science() if science is None else science
    mask = np.zeros(science.shape, np.int32) if mask is None else mask
    variance = np.full(science.shape, 4.0, np.float32) if variance is None else variance
    hdus = [fits.PrimaryHDU(), fits.ImageHDU(science, header=header, name="SCIENCE"),
            mask_hdu if mask_hdu is not None else fits.ImageHDU(mask, name="MASK"),
            fits.ImageHDU(variance, name="VARIANCE")]
    buffer = io.BytesIO()
    fits.HDUList(hdus).writeto(buffer)
    return buffer.getvalue()


def _plain(data) -> bytes:
    buffer = io.BytesIO()
    fits.PrimaryHDU(data).writeto(buffer)
    return buffer.getvalue()


def _card_bytes(cards: list[str], end: bool = True) -> bytes:
    """A hand-written FITS header (80-column cards, END unless ``end`` is False, padded to 2880 bytes)."""
    text = "".join(card.ljust(80)[:80] for card in [*cards, *(["END"] if end else [])])
    return text.encode("ascii").ljust(math.ceil(len(text) / 2880) * 2880, b" ")


def _with_wcs(**changes) -> bytes:
    header = _wcs_header()
    for key, value in changes.items():
        if value is None:
            del header[key]
        else:
            header[key] = value
    return _mef(header=header)


def tile_bytes() -> dict[str, bytes]:
    """File name -> bytes of every bad tile."""
    good = _mef()
    science_offset = 2880 * 2  # primary header + SCIENCE header
    nan_half = _science()
    nan_half[:, : SIZE // 2] = np.nan
    mask_other_half = np.zeros((SIZE, SIZE), np.int32)
    mask_other_half[:, SIZE // 2:] = 4
    variance_nan = np.full((SIZE, SIZE), 4.0, np.float32)
    variance_nan[5:9, 5:9] = np.nan
    variance_negative = np.full((SIZE, SIZE), 4.0, np.float32)
    variance_negative[10, 10] = -1.0
    float_mask = np.zeros((SIZE, SIZE), np.float32)
    float_mask[3, 3], float_mask[4, 4] = np.nan, 0.5
    table = fits.BinTableHDU.from_columns([fits.Column(name="x", format="E", array=np.arange(4, dtype=np.float32))],
                                          name="MASK")
    science_table = fits.BinTableHDU.from_columns(
        [fits.Column(name="flux", format="E", array=np.arange(4, dtype=np.float32))], name="SCIENCE")
    table_tile = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), science_table]).writeto(table_tile)
    return {
        # corrupt and truncated FITS
        "empty.fits": b"",
        "text.fits": b"this is a plain text file with a .fits suffix\n",
        "garbage_header.fits": b"SIMPLE  = garbage".ljust(2880, b"\x00"),
        "truncated_header.fits": good[:1000],
        "truncated_data.fits": good[: science_offset + 2000],
        "no_end_card.fits": _card_bytes(["SIMPLE  =                    T", "BITPIX  =                  -32",
                                         "NAXIS   =                    2", f"NAXIS1  = {SIZE:20d}",
                                         f"NAXIS2  = {SIZE:20d}"], end=False) + bytes(SIZE * SIZE * 4),
        "huge_naxis.fits": _card_bytes(["SIMPLE  =                    T", "BITPIX  =                  -32",
                                        "NAXIS   =                    2", "NAXIS1  =               200000",
                                        "NAXIS2  =               200000"]) + bytes(2880),
        # wrong shapes and dtypes
        "header_only.fits": _plain(None),
        "cube_3d.fits": _plain(np.stack([_science(s) for s in range(3)])),
        "vector_1d.fits": _plain(_science().ravel()),
        "too_small.fits": _plain(_science()[:8, :8]),
        "mask_shape.fits": _mef(mask=np.zeros((16, 16), np.int32)),
        "variance_shape.fits": _mef(variance=np.full((SIZE, SIZE // 2), 4.0, np.float32)),
        "float_mask.fits": _mef(mask=float_mask),
        "table_mask.fits": _mef(mask_hdu=table),
        "table_science.fits": table_tile.getvalue(),
        # NaN / inf pixels
        "all_nan.fits": _plain(np.full((SIZE, SIZE), np.nan, np.float32)),
        "all_inf.fits": _plain(np.where(np.arange(SIZE * SIZE).reshape(SIZE, SIZE) % 2, np.inf, -np.inf)
                               .astype(np.float32)),
        "nan_and_masked.fits": _mef(science=nan_half, mask=mask_other_half),
        "variance_nan.fits": _mef(variance=variance_nan),
        "variance_negative.fits": _mef(variance=variance_negative),
        # missing or nonsense WCS
        "wcs_half_missing.fits": _with_wcs(CTYPE2=None),
        "wcs_singular.fits": _with_wcs(CD1_1=0.0, CD2_2=0.0),
        "wcs_bad_projection.fits": _with_wcs(CTYPE1="RA---XYZ", CTYPE2="DEC--XYZ"),
        "wcs_text_crval.fits": _with_wcs(CRVAL1="twelve o'clock"),
        "wcs_dec_beyond_pole.fits": _with_wcs(CRVAL2=123.0),
    }


# --- configuration files -------------------------------------------------------------------------

# A YAML alias bomb: 12 short lines, 10^9 "lol"s once expanded (safe_load shares the references).
BILLION_LAUGHS = "train:\n  steps:\n" + "\n".join(
    ["    - &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"    - &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
) + "\n"


def config_texts() -> dict[str, bytes]:
    """File name -> bytes of every bad configuration file."""
    texts = {
        "not_yaml.yaml": "survey: {pixel_scale_arcsec: 0.2\ntrain:\n  steps: 3\n",
        "top_level_list.yaml": "- survey\n- train\n",
        "unknown_key.yaml": "train:\n  stepz: 3\n",
        "wrong_type.yaml": "train:\n  steps: many\n",
        "section_scalar.yaml": "survey: 5\n",
        "out_of_range.yaml": "simulation:\n  n_objects: 0\n",
        "negative_probability.yaml": "masks:\n  bad_column_probability: -0.5\n",
        "inf_pixel_scale.yaml": "survey:\n  pixel_scale_arcsec: .inf\n",
        "nan_rotation.yaml": "tile:\n  rotation_deg: .nan\n",
        "huge_seed.yaml": f"seed: {2**70}\n",
        "list_for_number.yaml": "train:\n  learning_rate: [0.1, 0.2]\n",
        # If this tag were honoured the process would exit with status 7 instead of the CLI's 2.
        "python_tag.yaml": "train: !!python/object/apply:builtins.exit [7]\n",
        "unknown_preset.yaml": "preset: hubble-deep-field\n",
        "preset_escape.yaml": "preset: ../../../../etc/passwd\n",
        "preset_not_a_name.yaml": "preset: [lsst, hsc]\n",
        "name_escape.yaml": "name: ../../outside\n",
        "cosmos_without_dir.yaml": "tile:\n  population: cosmos\n",
        "billion_laughs.yaml": BILLION_LAUGHS,
    }
    out = {name: text.encode("utf-8") for name, text in texts.items()}
    out["binary.yaml"] = bytes(range(128, 256)) * 4  # not UTF-8
    return out


# --- COSMOS catalogues ---------------------------------------------------------------------------

def _cosmos_tables(n: int) -> dict[str, Table]:
    """The three GalSim COSMOS files (catalogue, parametric fits, selection) with ``n`` plausible rows."""
    ident = np.arange(n, dtype=np.int32)
    real = Table({"IDENT": ident, "RA": np.full(n, 150.1), "DEC": np.full(n, 2.2), "MAG": np.full(n, 22.0),
                  "WEIGHT": np.ones(n), "stamp_flux": np.ones(n)})
    fit_status = np.ones((n, 5), np.int32)
    sersicfit = np.zeros((n, 8))
    sersicfit[:, 1:4] = (0.5, 1.0, 0.8)  # I, r_half [pixels], n
    fits_table = Table({"IDENT": ident, "mag_auto": np.full(n, 22.0), "flux_radius": np.full(n, 5.0),
                        "zphot": np.full(n, 0.8), "sersicfit": sersicfit, "bulgefit": np.zeros((n, 16)),
                        "fit_status": fit_status, "fit_mad_s": np.zeros(n), "fit_mad_b": np.zeros(n),
                        "fit_dvc_btt": np.zeros(n), "use_bulgefit": np.zeros(n, np.int32),
                        "viable_sersic": np.ones(n, np.int32), "hlr": np.full((n, 3), 0.4),
                        "flux": np.full((n, 4), 10.0)})
    selection = Table({"IDENT": ident, "dmag": np.zeros(n), "sn_ellip_gauss": np.full(n, 100.0),
                       "min_mask_dist_pixels": np.full(n, 50.0), "average_mask_adjacent_pixel_count": np.zeros(n),
                       "peak_image_pixel_count": np.ones(n)})
    return {COSMOS_FILE: real, COSMOS_FILE.replace(".fits", "_fits.fits"): fits_table,
            COSMOS_FILE.replace(".fits", "_selection.fits"): selection}


def _table_bytes(table: Table) -> bytes:
    buffer = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), fits.table_to_hdu(table)]).writeto(buffer)
    return buffer.getvalue()


def cosmos_dirs() -> dict[str, dict[str, bytes]]:
    """Directory name -> {file name -> bytes} of every bad COSMOS catalogue directory."""
    empty = {name: _table_bytes(table) for name, table in _cosmos_tables(0).items()}
    no_columns = _cosmos_tables(3)
    no_columns[COSMOS_FILE.replace(".fits", "_fits.fits")].remove_columns(["zphot", "mag_auto"])
    garbage = {name: _table_bytes(table) for name, table in _cosmos_tables(3).items()}
    garbage[COSMOS_FILE.replace(".fits", "_fits.fits")] = b"SIMPLE  = not really".ljust(2880, b" ")
    return {
        "empty_catalogue": empty,
        "missing_columns": {name: _table_bytes(table) for name, table in no_columns.items()},
        "garbage_catalogue": garbage,
    }


# --- built at test time: Zarr stores and checkpoints ---------------------------------------------

STORE_CASES = ("file_not_dir", "empty_dir", "zarr_v2", "truncated_metadata", "foreign_schema", "other_version",
               "no_arrays", "no_layout", "wrong_length", "truncated_chunk", "garbage_array_metadata")


def build_stores(root: Path) -> dict[str, Path]:
    """Build each bad Zarr store of :data:`STORE_CASES` under ``root``; returns name -> path."""
    import zarr

    from lensforge.catalogs.schema import SCHEMA_NAME, SCHEMA_VERSION
    from lensforge.catalogs.store import create_store, finalize_store, write_objects

    root.mkdir(parents=True, exist_ok=True)
    paths = {name: root / f"{name}.zarr" for name in STORE_CASES}

    def good(path: Path) -> Path:
        create_store(path, n_objects=8, stamp_size=16, chunk_size=4, include_noiseless=False)
        write_objects(path, 0, {"g1": np.linspace(-0.05, 0.05, 8), "g2": np.zeros(8)})
        finalize_store(path)
        return path

    paths["file_not_dir"].write_text("not a directory\n")
    paths["empty_dir"].mkdir()
    paths["zarr_v2"].mkdir()
    (paths["zarr_v2"] / ".zgroup").write_text('{"zarr_format": 2}\n')
    (paths["zarr_v2"] / ".zattrs").write_text(json.dumps({"schema_name": SCHEMA_NAME}) + "\n")
    good(paths["truncated_metadata"])
    meta = paths["truncated_metadata"] / "zarr.json"
    meta.write_bytes(meta.read_bytes()[:40])
    zarr.open_group(paths["foreign_schema"], mode="w", zarr_format=3).attrs.update(
        {"schema_name": "someone-elses-format", "schema_version": "1"})
    zarr.open_group(paths["other_version"], mode="w", zarr_format=3).attrs.update(
        {"schema_name": SCHEMA_NAME, "schema_version": "99.0"})
    zarr.open_group(paths["no_arrays"], mode="w", zarr_format=3).attrs.update(
        {"schema_name": SCHEMA_NAME, "schema_version": SCHEMA_VERSION,
         "layout": {"n_objects": 8, "stamp_size": 16, "chunk_size": 4}})
    good(paths["no_layout"])
    group = zarr.open_group(paths["no_layout"], mode="r+", zarr_format=3, use_consolidated=False)
    del group.attrs["layout"]
    finalize_store(paths["no_layout"])
    good(paths["wrong_length"])
    group = zarr.open_group(paths["wrong_length"], mode="r+", zarr_format=3, use_consolidated=False)
    group.create_array("g1", shape=(5,), dtype="float32", overwrite=True)
    finalize_store(paths["wrong_length"])
    good(paths["truncated_chunk"])
    chunk = next(p for p in sorted((paths["truncated_chunk"] / "g1").rglob("*")) if p.is_file()
                 and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[:7])
    good(paths["garbage_array_metadata"])
    (paths["garbage_array_metadata"] / "images" / "zarr.json").write_bytes(b"\x00garbage{")
    return paths


CHECKPOINT_CASES = ("tampered_weights", "truncated_meta", "foreign_format", "future_format_version",
                    "weights_missing", "pickle_weights", "empty_weights", "shape_mismatch", "bad_model_settings")


class _Canary:
    """Unpickling this creates the file ``path``: proof that a pickle was executed."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def build_checkpoints(root: Path, canary: Path) -> dict[str, Path]:
    """A registry ``root`` holding one bad checkpoint per :data:`CHECKPOINT_CASES` (version = case name).

    ``pickle_weights`` holds a pickle (``torch.save`` style) whose loading would create ``canary``,
    with a ``meta.json`` that vouches for its sha256: only the safetensors parser stands in the way.
    """
    import torch

    from lensforge.models.checkpoint import save_checkpoint
    from lensforge.models.vaegan import VAEGAN, ModelSettings

    settings = ModelSettings(stamp_size=32, latent_dim=4, base_channels=4)
    torch.manual_seed(0)
    model = VAEGAN(settings)
    paths = {}
    for case in CHECKPOINT_CASES:
        paths[case] = save_checkpoint(model, root / case, extra_meta={"step": 10, "train_settings": {"steps": 10}})

    def rewrite_meta(case: str, **changes) -> None:
        path = paths[case] / "meta.json"
        meta = json.loads(path.read_text())
        meta.update(changes)
        path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    def replace_weights(case: str, blob: bytes) -> None:
        (paths[case] / "weights.safetensors").write_bytes(blob)
        rewrite_meta(case, weights_sha256=hashlib.sha256(blob).hexdigest())

    weights = paths["tampered_weights"] / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    meta = paths["truncated_meta"] / "meta.json"
    meta.write_bytes(meta.read_bytes()[:50])
    rewrite_meta("foreign_format", format="pytorch-lightning")
    rewrite_meta("future_format_version", format_version=99)
    (paths["weights_missing"] / "weights.safetensors").unlink()
    replace_weights("pickle_weights", pickle.dumps({"state_dict": _Canary(str(canary))}, protocol=2))
    replace_weights("empty_weights", b"")
    rewrite_meta("shape_mismatch", model_settings=dict(settings.to_dict(), latent_dim=8))
    rewrite_meta("bad_model_settings", model_settings={"stamp_size": "large", "latent_dim": -1})
    return paths


# --- writing -------------------------------------------------------------------------------------

def write_corpus(root: Path = HERE) -> list[Path]:
    """(Re)write ``tiles/``, ``config/`` and ``cosmos/`` under ``root``; returns the files written."""
    written = []
    for sub in ("tiles", "config", "cosmos"):
        shutil.rmtree(root / sub, ignore_errors=True)
    for folder, files in (("tiles", tile_bytes()), ("config", config_texts())):
        for name, data in files.items():
            path = root / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            written.append(path)
    for directory, files in cosmos_dirs().items():
        for name, data in files.items():
            path = root / "cosmos" / directory / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            written.append(path)
    return written


if __name__ == "__main__":
    files = write_corpus(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
    print(f"wrote {len(files)} files, {sum(p.stat().st_size for p in files)} bytes")
