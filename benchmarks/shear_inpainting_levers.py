"""The point-symmetry lever of R2 4/5 (b), measured: how much shift of m it removes, and what is left.

    python benchmarks/shear_inpainting_levers.py     # ~20 min on 2 cores

Needs the shear benchmark's run (``benchmarks/runs/shearcal-8192``, made by
``python benchmarks/shear_calibration.py --n 8192 --steps 300``): its 8,192 stamps, their
counterfactuals and masks. For REGAUSS and Fourier_Quad, every variant's shift of m from masking +
in-painting, paired against the raw stamps exactly as ``lensforge validate-shear`` pairs them
(:func:`lensforge.pipeline.shear.validation.validation_report`, 200 bootstrap resamples of ring pairs):

* the in-painters: ``biharmonic``, ``image_model``, ``symmetric`` (each masked pixel whose point
  mirror about the galaxy's centroid is known takes its value, biharmonic elsewhere) and
  ``image_model_symmetric`` (the same mirror, the image in-painter elsewhere);
* diagnostics that are *not* in-painters (they use what an in-painter cannot see), to find where
  the mirror's shift comes from. In each, the mirrored pixels take the mirror and every other
  masked pixel keeps its true value:
  ``mirror_only`` (centroid estimated from the masked stamp, as ``symmetric`` does);
  ``mirror_only_exact_centre`` (about the stamp centre, where the simulation drew the galaxy);
  ``mirror_only_unmasked_centroid`` (about HSM's centroid of the whole stamp, masked pixels included:
  as noisy as the estimate, but blind to the mask).

Every shift is reported twice: on all stamps, and on the stamps whose centre is not in-painted
(no masked pixel within one PSF FWHM of the stamp centre:
:func:`lensforge.pipeline.inpaint.symmetry.interpolated_centre`, the flag survey pipelines cut on;
it depends on the mask alone, so the cut does not bias m).

Writes ``docs/results/shear_inpainting_levers.json`` with its provenance; ``docs/shear_calibration.md``
renders it (``benchmarks/publish.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "docs" / "results" / "shear_inpainting_levers.json"
STORE = ROOT / "benchmarks" / "runs" / "shearcal-8192" / "trainset.zarr"
METHODS = ("REGAUSS", "FOURIER_QUAD")
IN_PAINTERS = ("biharmonic", "image_model", "symmetric", "image_model_symmetric")
DIAGNOSTICS = {
    "mirror_only": "mirror where known (centroid estimated from the masked stamp), other masked pixels true",
    "mirror_only_exact_centre": "mirror about the stamp centre (where the galaxy was drawn), other masked pixels true",
    "mirror_only_unmasked_centroid": "mirror about HSM's centroid of the whole unmasked stamp, other masked pixels "
                                     "true",
}
CHUNK = 256


def _diagnostic_images(variant: str, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    from lensforge.models.baselines import inpaint_biharmonic
    from lensforge.pipeline.inpaint.symmetry import galaxy_centroids, point_symmetric_fill

    hole = masks != 0
    fallback = inpaint_biharmonic(images, hole)
    n, height, width = images.shape
    centroids = None  # mirror_only: estimated from the masked stamp, as the in-painter does
    if variant == "mirror_only_exact_centre":
        centroids = np.tile([(height - 1) / 2, (width - 1) / 2], (n, 1))
    elif variant == "mirror_only_unmasked_centroid":
        centroids = galaxy_centroids(images)
    filled, mirrored = point_symmetric_fill(images, hole, fallback, centroids=centroids)
    return np.where(mirrored, filled, images)


def _install_diagnostics() -> None:
    """Teach the harness the diagnostic variants (in this process and the workers it forks)."""
    from lensforge.pipeline.shear import validation

    measure_variant = validation._variant_images

    def variant_images(variant, images, masks, *args, **kwargs):
        if variant in DIAGNOSTICS:
            return _diagnostic_images(variant, images, masks), None
        return measure_variant(variant, images, masks, *args, **kwargs)

    validation._variant_images = variant_images
    validation.VARIANTS.update(DIAGNOSTICS)


def _measure(job: tuple[str, int, int, tuple[str, ...]]) -> tuple[int, dict[str, np.ndarray]]:
    from lensforge.pipeline.shear.validation import measure_chunk

    store, start, stop, variants = job
    return start, measure_chunk(store, start, stop, METHODS, variants)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=STORE, help="a calibration store with counterfactuals")
    parser.add_argument("--n", type=int, default=None, help="first N stamps only (default: all)")
    parser.add_argument("--workers", type=int, default=2, help="processes")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the results file to write")
    args = parser.parse_args()
    from benchmarks.provenance import provenance
    from lensforge.catalogs.store import open_store
    from lensforge.pipeline.shear.validation import validation_report

    if not args.store.is_dir():
        raise SystemExit(f"{args.store}: missing; run python benchmarks/shear_calibration.py --n 8192 --steps 300")
    recorded = provenance()  # the tree as the measurement starts
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per worker process: the workers share the cores
    _install_diagnostics()
    began = time.perf_counter()
    group = open_store(args.store)
    n = int(group["images"].shape[0]) if args.n is None else args.n
    variants = ("raw", *IN_PAINTERS, *DIAGNOSTICS)
    jobs = [(str(args.store), start, min(n, start + CHUNK), variants) for start in range(0, n, CHUNK)]
    parts = {}
    with ProcessPoolExecutor(args.workers) as pool:
        for start, values in pool.map(_measure, jobs):
            parts[start] = values
            print(f"measured {min(n, start + CHUNK)}/{n} stamps, {time.perf_counter() - began:.0f} s", flush=True)
    measurements = {key: np.concatenate([parts[s][key] for s in sorted(parts)]) for key in parts[0]}
    labels = {key: np.asarray(group[key][:n]) for key in ("g1", "g2", "ring_pair_id", "snr")}
    flagged = measurements.pop("interpolated_centre")
    report = validation_report(labels, measurements, list(METHODS), list(variants), n_bootstrap=200, seed=0)
    centre_report = validation_report(labels, measurements, list(METHODS), list(variants), n_bootstrap=200, seed=0,
                                      exclude=flagged)
    keep = ("shift", "shift_minus_biharmonic", "description")

    def shifts(entries: dict) -> dict:
        return {method: {"n_pairs_used": entries["methods"][method]["n_pairs_used"],
                         **{v: {k: entries["methods"][method][v][k] for k in keep if k in entries["methods"][method][v]}
                            for v in variants if v != "raw"}}
                for method in METHODS}

    results = {"provenance": recorded, "store": str(args.store.relative_to(ROOT) if args.store.is_relative_to(ROOT)
                                                         else args.store),
               "n_objects": n, "n_bootstrap": 200, "cpu_count": os.cpu_count(),
               "in_painters": list(IN_PAINTERS), "diagnostics": DIAGNOSTICS,
               "methods": shifts(report), "verdicts": report["verdicts"],
               "centre_not_inpainted": {
                   "description": "only the stamps with no masked pixel within one PSF FWHM of the stamp centre "
                                  "(and their ring partners)",
                   "n_flagged": int(flagged.sum()), "methods": shifts(centre_report),
                   "verdicts": centre_report["verdicts"]},
               "seconds": round(time.perf_counter() - began, 1)}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    for subset, entries in (("all stamps", results["methods"]),
                            ("centre not in-painted", results["centre_not_inpainted"]["methods"])):
        for method in METHODS:
            for variant in variants[1:]:
                shift = entries[method][variant]["shift"]
                print(f"{subset:>22} {method:>12} {variant:>30}: dm1 {shift['g1']['dm']:+.2e} ± "
                      f"{shift['g1']['dm_err']:.1e}, dm2 {shift['g2']['dm']:+.2e} ± {shift['g2']['dm_err']:.1e}")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
