"""Evaluation: masked-pixel errors of each in-painting method against the noiseless truth.

Run on the held-out validation objects only. Errors are given in ADU and in units
of each stamp's noise sigma (stamps differ in noise level, so the latter is the
fair aggregate); ``on_galaxy`` restricts to masked pixels where the noiseless
galaxy is brighter than the noise sigma.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from catalogs.atomic import atomic_path, atomic_write_text  # noqa: E402
from catalogs.errors import InputError  # noqa: E402
from catalogs.store import open_store  # noqa: E402
from models.vaegan import VAEGAN  # noqa: E402
from pipeline.inpaint import inpaint_arrays  # noqa: E402


def masked_pixel_errors(prediction: np.ndarray, truth: np.ndarray, masks: np.ndarray,
                        noise_sigma: np.ndarray) -> dict[str, float]:
    """RMSE over masked pixels: ``rmse_adu``, ``rmse_noise_units``, and the same ``on_galaxy``."""
    masked = masks != 0
    on_galaxy = masked & (truth > noise_sigma[:, None, None])
    residual = prediction.astype(np.float64) - truth
    scaled = residual / noise_sigma[:, None, None]
    out: dict[str, float] = {}
    for label, select in (("", masked), ("on_galaxy_", on_galaxy)):
        count = int(np.count_nonzero(select))
        out[f"{label}pixels"] = count
        out[f"{label}rmse_adu"] = float(np.sqrt(np.mean(residual[select] ** 2))) if count else float("nan")
        out[f"{label}rmse_noise_units"] = float(np.sqrt(np.mean(scaled[select] ** 2))) if count else float("nan")
    return out


def _figure(path: Path, truth, images, masks, results: dict[str, tuple[np.ndarray, Any]], n_show: int) -> None:
    std = results.get("model", (None, None))[1]
    rows = [("truth (noiseless)", truth), ("observed, masked", np.where(masks != 0, np.nan, images))]
    rows += [(f"{name} in-painted", mean) for name, (mean, _) in results.items()]
    if std is not None:
        rows.append(("model std", std))
    n_show = min(n_show, len(truth))
    fig, axes = plt.subplots(len(rows), n_show, figsize=(1.8 * n_show, 1.9 * len(rows)), squeeze=False)
    for col in range(n_show):
        vmin, vmax = np.nanpercentile(truth[col], [1, 99.5])
        for row, (title, stack) in enumerate(rows):
            ax = axes[row, col]
            is_std = title == "model std"
            cmap = plt.get_cmap("magma" if is_std else "gray_r").with_extremes(bad="tab:cyan")
            ax.imshow(stack[col], origin="lower", cmap=cmap,
                      vmin=None if is_std else vmin, vmax=None if is_std else vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(title, fontsize=8)
    fig.suptitle("lensforge in-painting on held-out stamps (masked pixels in cyan)", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def evaluate_inpainting(store_path: str | Path, report_dir: str | Path, model: VAEGAN, first_object: int,
                        n_samples: int = 8, seed: int = 0, max_objects: int = 512,
                        methods: tuple[str, ...] = ("model", "biharmonic")) -> dict[str, Any]:
    """Compare in-painting methods on masked validation stamps; writes ``inpainting.json`` and ``.png``."""
    group = open_store(store_path)
    if "noiseless" not in group:
        raise InputError(f"{store_path}: evaluation needs the noiseless images (simulation.store_noiseless)", None)
    masked_fraction = np.asarray(group["masked_fraction"][first_object:])
    chosen = first_object + np.flatnonzero(masked_fraction > 0)[:max_objects]
    report_dir = Path(report_dir)
    if len(chosen) == 0:
        metrics: dict[str, Any] = {"n_stamps": 0, "note": "no masked validation stamps"}
        atomic_write_text(report_dir / "inpainting.json", json.dumps(metrics, indent=2) + "\n")
        return metrics
    images = np.asarray(group["images"].get_orthogonal_selection((chosen,)))
    truth = np.asarray(group["noiseless"].get_orthogonal_selection((chosen,)))
    masks = np.asarray(group["masks"].get_orthogonal_selection((chosen,)))
    noise_sigma = np.asarray(group["noise_sigma"].get_orthogonal_selection((chosen,)))
    results = {}
    metrics = {"n_stamps": int(len(chosen)), "first_validation_object": int(first_object), "methods": {}}
    for method in methods:
        mean, std = inpaint_arrays(method, images, masks, noise_sigma, model, n_samples, seed)
        results[method] = (mean, std)
        metrics["methods"][method] = masked_pixel_errors(mean, truth, masks, noise_sigma)
    if "model" in results and "biharmonic" in results:
        metrics["rmse_ratio_model_over_biharmonic"] = (metrics["methods"]["model"]["rmse_noise_units"]
                                                       / metrics["methods"]["biharmonic"]["rmse_noise_units"])
        metrics["on_galaxy_rmse_ratio_model_over_biharmonic"] = (
            metrics["methods"]["model"]["on_galaxy_rmse_noise_units"]
            / metrics["methods"]["biharmonic"]["on_galaxy_rmse_noise_units"])
    atomic_write_text(report_dir / "inpainting.json", json.dumps(metrics, indent=2) + "\n")
    # Show the stamps with the most masked galaxy light: where methods differ.
    order = np.argsort(-((masks != 0) * truth).sum(axis=(1, 2)))[:8]
    _figure(report_dir / "inpainting.png", truth[order], images[order], masks[order],
            {k: (v[0][order], None if v[1] is None else v[1][order]) for k, v in results.items()}, n_show=8)
    return metrics
