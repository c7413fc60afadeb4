"""Figures of the evaluation report (matplotlib, Agg, written atomically)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lensforge.atomic import atomic_path  # noqa: E402


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _blank(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def inpainting_figure(path: Path, data: dict[str, np.ndarray], results: dict, n_show: int = 8) -> None:
    """Rows: truth / masked observation / each method / each model's std; the stamps with most masked light."""
    truth, images, masks = data["noiseless"], data["images"], data["masks"]
    order = np.argsort(-((masks != 0) * truth).sum(axis=(1, 2)))[:n_show]
    rows = [("truth (noiseless)", truth), ("observed, masked", np.where(masks != 0, np.nan, images))]
    rows += [(f"{name}", mean) for name, (mean, _) in results.items()]
    rows += [(f"{name} std", std) for name, (_, std) in results.items() if std is not None]
    n_show = len(order)
    fig, axes = plt.subplots(len(rows), n_show, figsize=(1.7 * n_show, 1.75 * len(rows)), squeeze=False)
    for col, index in enumerate(order):
        vmin, vmax = np.nanpercentile(truth[index], [1, 99.5])
        for row, (title, stack) in enumerate(rows):
            ax = axes[row, col]
            is_std = title.endswith(" std")
            cmap = plt.get_cmap("magma" if is_std else "gray_r").with_extremes(bad="tab:cyan")
            ax.imshow(stack[index], origin="lower", cmap=cmap, interpolation="nearest",
                      vmin=None if is_std else vmin, vmax=None if is_std else vmax)
            _blank(ax)
            if col == 0:
                ax.set_ylabel(title, fontsize=8)
    fig.suptitle("In-painting of held-out stamps (masked pixels in cyan; same grey scale per column)", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def samples_figure(path: Path, grids: dict[str, np.ndarray],
                   title: str = "Generated galaxies (noiseless; asinh stretch) at several temperatures") -> None:
    """One row per entry of ``grids`` (e.g. temperatures: the *same* latents scaled by T)."""
    names = list(grids)
    n_show = min(len(g) for g in grids.values())
    fig, axes = plt.subplots(len(names), n_show, figsize=(1.5 * n_show, 1.55 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        for col in range(n_show):
            ax = axes[row, col]
            stamp = grids[name][col]
            ax.imshow(np.arcsinh(stamp / max(float(np.abs(stamp).max()), 1e-12) * 10), origin="lower",
                      cmap="gray_r", interpolation="nearest")
            _blank(ax)
            if col == 0:
                ax.set_ylabel(name, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def statistics_figure(path: Path, stats_by_sample: dict[str, dict[str, np.ndarray]], keys: tuple[str, ...]) -> None:
    """Histograms of each statistic for the truth samples and each model."""
    cols = 4
    rows = int(np.ceil(len(keys) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows), squeeze=False)
    for ax, key in zip(axes.ravel(), keys, strict=False):
        finite = [v[key][np.isfinite(v[key])] for v in stats_by_sample.values()]
        pooled = np.concatenate([f for f in finite if len(f)]) if any(len(f) for f in finite) else np.zeros(1)
        bins = np.linspace(*np.percentile(pooled, [1, 99]), 30) if np.ptp(pooled) > 0 else 10
        for (name, _), values in zip(stats_by_sample.items(), finite, strict=True):
            if len(values):
                ax.hist(values, bins=bins, histtype="step", density=True, label=name, lw=1.3)
        ax.set_title(key, fontsize=9)
    for ax in axes.ravel()[len(keys):]:
        ax.axis("off")
    axes.ravel()[0].legend(fontsize=7)
    fig.suptitle("Galaxy statistics: truth (two independent samples) vs generated", fontsize=10)
    fig.tight_layout()
    _save(fig, path)
