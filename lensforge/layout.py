"""The run directory tree: the one place that spells a path inside a run.

A run directory ``<out>/<name>/`` holds::

    config.yaml                      the effective configuration
    trainset.zarr/                   the Zarr training set
    catalogs/truth.{fits,parquet}    the store's truth catalogue
    catalogs/tile_NNNN_{truth,detections}.{fits,parquet}
    tiles/tile_NNNN.fits             survey tiles (MEF FITS)
    models/<version>/                checkpoints (the model registry)
    inpainters/<version>/            image in-painters (model_card.json + weights): reprocess --model-version
    report/                          evaluation.json, figures, shear validation, tile detection reports
    generated/                       outputs of ``lensforge generate`` (FITS, PNG, generated stores)
    reprocessed/                     default output of the reprocess-tiles deployment
    .progress/<stage>/               per-chunk markers: a chunk is finished once its marker exists
    manifest.json                    written last: its presence means the run is complete

Every other module asks a :class:`RunLayout` for these paths instead of joining names itself, so
the tree is changed in one place. The layout lives at the package root because every floor reads
it: ``catalogs.open`` finds a store's manifest, ``flows`` and ``pipeline`` write the products.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from lensforge.atomic import atomic_write_text

CONFIG_NAME = "config.yaml"
STORE_NAME = "trainset.zarr"
MANIFEST_NAME = "manifest.json"
PROGRESS_DIR = ".progress"
CATALOGS_DIR = "catalogs"
REPORT_DIR = "report"
MODELS_DIR = "models"
INPAINTERS_DIR = "inpainters"
TILES_DIR = "tiles"
GENERATED_DIR = "generated"
REPROCESSED_DIR = "reprocessed"
TRUTH_STEM = "truth"
REPORT_JSON = "evaluation.json"
INPAINTING_FIGURE, SAMPLES_FIGURE, STATISTICS_FIGURE = "inpainting.png", "samples.png", "statistics.png"
REPORT_FIGURES = (INPAINTING_FIGURE, SAMPLES_FIGURE, STATISTICS_FIGURE)
INPAINT_PROGRESS = "inpaint"  # markers: <run>/.progress/inpaint/<store name>/<in-painting key>/
T = TypeVar("T")

# Settings that say where and how fast a run goes, not what it writes: a resume may change them and
# the products' bytes do not depend on them. ``(section, key)`` pairs name one key inside a section.
EXECUTION_ONLY_SETTINGS: tuple[str | tuple[str, str], ...] = ("out_dir", "dask", "evaluate", "limits",
                                                             ("train", "device"), ("render", "batch_size"))
# A generated set is a product of the run's model, not of the run's name or in-painting choices.
GENERATED_SET_EXECUTION_ONLY: tuple[str | tuple[str, str], ...] = (*EXECUTION_ONLY_SETTINGS, "name", "inpaint")


def science_settings(values: Mapping[str, Any],
                     execution_only: tuple[str | tuple[str, str], ...] = EXECUTION_ONLY_SETTINGS) -> dict[str, Any]:
    """A copy of a configuration dict (``RunConfig.to_dict()``) without the settings that do not change bytes."""
    science = {key: dict(value) if isinstance(value, Mapping) else value for key, value in values.items()}
    for entry in execution_only:
        if isinstance(entry, tuple):
            science.get(entry[0], {}).pop(entry[1], None)
        else:
            science.pop(entry, None)
    return science


@dataclass(frozen=True)
class TilePaths:
    """Where tile ``tile_id``'s products go (``truth`` and ``detections`` without their suffix)."""

    fits: Path
    truth: Path
    detections: Path
    figure: Path
    summary: Path

    def as_dict(self) -> dict[str, Path]:
        """The paths by kind, as the tile stage and the manifest name them."""
        return {"fits": self.fits, "truth": self.truth, "detections": self.detections, "figure": self.figure,
                "summary": self.summary}


@dataclass(frozen=True)
class RunLayout:
    """The paths of one run directory ``root`` (nothing is created until a stage writes)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @classmethod
    def of_store(cls, store: str | Path) -> RunLayout:
        """The layout of the run a store ``<run>/trainset.zarr`` belongs to."""
        return cls(Path(store).parent)

    @classmethod
    def of_models_dir(cls, models_dir: str | Path) -> RunLayout:
        """The layout of the run whose model registry is ``<run>/models``."""
        return cls(Path(models_dir).parent)

    # -- files and directories ------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def store(self) -> Path:
        return self.root / STORE_NAME

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_NAME

    @property
    def catalogs_dir(self) -> Path:
        return self.root / CATALOGS_DIR

    @property
    def truth_catalogue(self) -> Path:
        """The store's truth catalogue without its suffix (``.fits`` and ``.parquet`` are written)."""
        return self.catalogs_dir / TRUTH_STEM

    @property
    def report_dir(self) -> Path:
        return self.root / REPORT_DIR

    @property
    def report_json(self) -> Path:
        return self.report_dir / REPORT_JSON

    @property
    def models_dir(self) -> Path:
        return self.root / MODELS_DIR

    def model_dir(self, version: str) -> Path:
        """``models/<version>/``; ``version`` is a plain directory name (checked by the registry)."""
        return self.models_dir / version

    @property
    def inpainters_dir(self) -> Path:
        """``inpainters/``: the run's image in-painters, one directory per version (``reprocess --model-version``)."""
        return self.root / INPAINTERS_DIR

    def inpainter_dir(self, version: str) -> Path:
        """``inpainters/<version>/``."""
        return self.inpainters_dir / version

    @property
    def tiles_dir(self) -> Path:
        return self.root / TILES_DIR

    @property
    def generated_dir(self) -> Path:
        return self.root / GENERATED_DIR

    def generated_store(self, stem: str) -> Path:
        """A generated training set ``generated/<stem>.zarr``."""
        return self.generated_dir / f"{stem}.zarr"

    @property
    def reprocessed_dir(self) -> Path:
        return self.root / REPROCESSED_DIR

    def shear_report(self, label: str, suffix: str) -> Path:
        """``report/shear_validation_<label><suffix>`` (suffix ``.json``, ``_summary.png``, ...)."""
        return self.report_dir / f"shear_validation_{label}{suffix}"

    def tile(self, tile_id: int) -> TilePaths:
        """Where tile ``tile_id``'s products go."""
        stem = f"tile_{tile_id:04d}"
        return TilePaths(fits=self.tiles_dir / f"{stem}.fits", truth=self.catalogs_dir / f"{stem}_truth",
                         detections=self.catalogs_dir / f"{stem}_detections",
                         figure=self.report_dir / f"{stem}_detection.png",
                         summary=self.report_dir / f"{stem}_detection.json")

    # -- the product list and progress markers ----------------------------------------------
    def relative(self, path: str | Path) -> str:
        """``path`` relative to the run directory, POSIX-style (as the manifest lists products)."""
        return Path(path).relative_to(self.root).as_posix()

    def simulation_products(self) -> list[str]:
        """What the simulate stage writes: the store and its truth catalogue (relative paths)."""
        truth = self.truth_catalogue
        return [self.relative(p) for p in (self.store, truth.with_suffix(".fits"), truth.with_suffix(".parquet"))]

    def report_products(self) -> list[str]:
        """The report files present (figures are skipped when there is nothing to show)."""
        candidates = [self.report_json, *(self.report_dir / name for name in REPORT_FIGURES)]
        return [self.relative(p) for p in candidates if p.exists()]

    def progress(self, stage: str) -> ChunkProgress:
        """The finished-chunk markers of ``stage`` (``.progress/<stage>/``)."""
        return ChunkProgress(self.root / PROGRESS_DIR / stage)

    def inpaint_progress(self, store: str | Path, key: str) -> ChunkProgress:
        """The markers of in-painting ``key`` of ``store``: beside the store, not inside it, so the store's
        bytes and checksum stay those of an uninterrupted run. Their parent holds every other key's."""
        return self.progress(f"{INPAINT_PROGRESS}/{Path(store).name}/{key}")


@dataclass(frozen=True)
class ChunkProgress:
    """Per-chunk done markers in ``directory``: the one way a stage writes a chunk exactly once.

    ``run(start, stop, produce, write)`` skips a chunk whose marker exists, else produces it, writes
    it and marks it done. The marker is written after the data, so it never outlives lost data; a
    chunk killed mid-write has no marker and is redone whole on the rerun.
    """

    directory: Path

    def marker(self, start: int, stop: int) -> Path:
        """Marker that objects ``start..stop-1`` are completely written."""
        return chunk_marker(self.directory, start, stop)

    def is_done(self, start: int, stop: int) -> bool:
        """Whether the chunk was finished by an earlier (possibly interrupted) run."""
        return self.marker(start, stop).exists()

    def mark_done(self, start: int, stop: int) -> None:
        """Record a finished chunk."""
        atomic_write_text(self.marker(start, stop), "")

    def run(self, start: int, stop: int, produce: Callable[[], T], write: Callable[[T], object]) -> T | None:
        """Produce and write chunk ``start..stop-1`` unless it is done; the produced value, or None if skipped."""
        if self.is_done(start, stop):
            return None
        value = produce()
        write(value)
        self.mark_done(start, stop)
        return value


def store_sidecars(store: str | Path) -> tuple[Path, Path]:
    """(truth catalogue without suffix, provenance JSON) written beside a generated store ``<name>.zarr``:
    ``<name>_truth.{fits,parquet}`` and ``<name>.json``."""
    store = Path(store)
    return store.with_name(f"{store.stem}_truth"), store.with_suffix(".json")


def chunk_marker(directory: str | Path, start: int, stop: int) -> Path:
    """Marker file, in ``directory``, that objects ``start..stop-1`` are completely written."""
    return Path(directory) / f"{start:010d}-{stop:010d}.done"


# Temporary names of interrupted writes: zarr's LocalStore writes ``<key>.<uuid4 hex>.partial`` and
# renames it onto ``<key>``; ``lensforge.atomic`` writes ``.<name>.<mkstemp suffix>.tmp`` beside ``<name>``.
_PARTIAL_WRITE = re.compile(r"(.+\.[0-9a-f]{32}\.partial|\..+\.[A-Za-z0-9_]{8}\.tmp)")


def remove_partial_writes(directory: str | Path) -> list[Path]:
    """Delete the temporary files that writes killed midway left under ``directory``; return them.

    The file a write was replacing is untouched (the rename never happened), and a chunk whose
    write was lost has no marker, so a resume rewrites it. Without this, a stray temporary file
    would change the directory's manifest checksum. Call it only while nothing else writes there.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = [path for path in directory.rglob("*") if _PARTIAL_WRITE.fullmatch(path.name) and path.is_file()]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


# What a run directory holds that no other command may write over: its configuration, manifest, store
# and the products of its stages. ``generated/`` and ``reprocessed/`` are where other commands write.
RUN_PRODUCTS: tuple[str, ...] = (CONFIG_NAME, MANIFEST_NAME, STORE_NAME, CATALOGS_DIR, MODELS_DIR, INPAINTERS_DIR,
                                 TILES_DIR, REPORT_DIR, PROGRESS_DIR)


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a lensforge run directory: a ``config.yaml`` beside a store or a manifest."""
    path = Path(path)
    return (path / CONFIG_NAME).is_file() and ((path / STORE_NAME).exists() or (path / MANIFEST_NAME).exists())


def run_product(path: str | Path, runs: tuple[str | Path, ...] = ()) -> tuple[Path, str] | None:
    """``(run directory, product)`` if ``path`` (symlinks resolved) is, or is inside, a run's product
    (:data:`RUN_PRODUCTS`), else None. The run directories are the ancestors of ``path`` that
    :func:`is_run_dir` recognises, plus ``runs`` (e.g. the run of a store being read, config or not)."""
    resolved = Path(path).resolve()
    known = {Path(run).resolve() for run in runs}
    for parent in resolved.parents:
        if parent in known or is_run_dir(parent):
            first = resolved.relative_to(parent).parts[0]
            if first in RUN_PRODUCTS:
                return parent, resolved.relative_to(parent).as_posix()
    return None
