"""Figures of the shear calibration: measured against true shear with the fitted m, c and the LSST band."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from lensforge.atomic import atomic_path
from lensforge.errors import InputError
from lensforge.pipeline.shear.calibration import LSST_C_REQUIREMENT, LSST_M_REQUIREMENT

# ---------------------------------------------------------------------------------------
# Figure
# ---------------------------------------------------------------------------------------

_MAX_EXACT_BINS = 20  # up to this many distinct g_true values are shown as they are, else in quantile bins
_N_QUANTILE_BINS = 10


def _binned(g_true: np.ndarray, g_est: np.ndarray,
            group: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin mean g_true, mean residual g_est - g_true and its standard error (0 for a single unit).

    The standard error is over groups (the scatter of group means) when ``group`` is given,
    so that the shape noise cancelled within ring pairs does not inflate it.
    """
    values = np.unique(g_true)
    if values.size <= _MAX_EXACT_BINS:
        index = np.searchsorted(values, g_true)
    else:
        edges = np.quantile(g_true, np.linspace(0.0, 1.0, _N_QUANTILE_BINS + 1))
        index = np.clip(np.searchsorted(edges, g_true, side="right") - 1, 0, _N_QUANTILE_BINS - 1)
    residual = g_est - g_true
    centres, means, errors = [], [], []
    for b in np.unique(index):
        in_bin = index == b
        units = residual[in_bin]
        if group is not None:
            _, inverse, counts = np.unique(group[in_bin], return_inverse=True, return_counts=True)
            units = np.bincount(inverse, weights=units) / counts
        centres.append(g_true[in_bin].mean())
        means.append(residual[in_bin].mean())
        errors.append(units.std(ddof=1) / math.sqrt(units.size) if units.size > 1 else 0.0)
    return np.array(centres), np.array(means), np.array(errors)


def plot_shear_bias(g_true: np.ndarray, g_est: np.ndarray, fit: Mapping, path: str | Path,
                    group: np.ndarray | None = None) -> Path:
    """Measured vs true shear with the fitted line, and the residuals, one column per component.

    Top row: binned mean ``g_est`` against ``g_true`` with the fit ``(1 + m) g + c`` and the
    identity; bottom row: binned mean ``g_est - g_true`` with ``m g + c`` and the LSST
    tolerance band ``|1e-3 g| + 1e-4``. Bins are the distinct ``g_true`` values (constant-
    shear simulations) or, beyond 20 of them, 10 quantile bins; error bars are standard
    errors of the bin mean (single objects, not ring pairs, so conservative).

    Args:
        g_true: ``(N,)`` or ``(N, 2)`` applied shear (columns g1, g2).
        g_est: The calibrated estimates, same shape; non-finite rows are left out.
        fit: For ``(N,)`` inputs a ``fit_m_c`` dict; for ``(N, 2)`` a mapping with ``g1`` and
            ``g2`` fit dicts (e.g. ``shear_bias_table``'s output).
        path: PNG to write (written to a temporary file beside it, then renamed).
        group: Optional ``(N,)`` group ids (e.g. ring-pair ids) for the error bars.

    Returns:
        ``path`` as a Path.
    """
    truth = np.asarray(g_true, dtype=np.float64)
    estimate = np.asarray(g_est, dtype=np.float64)
    if truth.shape != estimate.shape or truth.ndim not in (1, 2) or truth.shape[0] == 0 or (
            truth.ndim == 2 and truth.shape[1] != 2):
        raise InputError(f"g_true and g_est must both be (N,) or (N, 2), got {truth.shape} and {estimate.shape}",
                         (truth.shape, estimate.shape))
    if truth.ndim == 1:
        truth, estimate, fits, names = truth[:, None], estimate[:, None], [fit], ["g"]
    else:
        names = ["g1", "g2"]
        if not all(name in fit for name in names):
            raise InputError("fit must hold 'g1' and 'g2' fit dicts for (N, 2) inputs", sorted(fit))
        fits = [fit[name] for name in names]
    for entry in fits:
        if not all(key in entry for key in ("m", "c")):
            raise InputError("each fit must hold 'm' and 'c'", sorted(entry))
    ids = None if group is None else np.asarray(group)
    if ids is not None and ids.shape != (len(truth),):
        raise InputError(f"group must have shape ({len(truth)},), got {ids.shape}", ids.shape)

    figure = Figure(figsize=(4.2 * len(names), 6.0))
    axes = figure.subplots(2, len(names), squeeze=False, sharex="col", gridspec_kw={"height_ratios": (2, 1)})
    for col, (name, entry) in enumerate(zip(names, fits, strict=True)):
        keep = np.isfinite(truth[:, col]) & np.isfinite(estimate[:, col])
        x, y = truth[keep, col], estimate[keep, col]
        top, bottom = axes[0, col], axes[1, col]
        m = np.nan if entry["m"] is None else float(entry["m"])
        c = np.nan if entry["c"] is None else float(entry["c"])
        m_err, c_err = (entry.get(key) for key in ("m_err", "c_err"))
        label = f"m = {m:.2e}" + (f" ± {m_err:.1e}" if m_err is not None else "")
        label += f"\nc = {c:.2e}" + (f" ± {c_err:.1e}" if c_err is not None else "")
        if x.size:
            centres, residual, error = _binned(x, y, None if ids is None else ids[keep])
            span = np.linspace(x.min(), x.max(), 50)
            top.errorbar(centres, centres + residual, yerr=error, fmt="o", ms=4, color="tab:blue", label="measured")
            top.plot(span, span, color="0.5", lw=0.8, ls="--", label="g_est = g_true")
            top.plot(span, (1.0 + m) * span + c, color="tab:red", lw=1.2, label=label)
            tolerance = LSST_M_REQUIREMENT * np.abs(span) + LSST_C_REQUIREMENT
            bottom.fill_between(span, -tolerance, tolerance, color="tab:green", alpha=0.2, label="LSST |m|, |c|")
            bottom.errorbar(centres, residual, yerr=error, fmt="o", ms=4, color="tab:blue")
            bottom.plot(span, m * span + c, color="tab:red", lw=1.2)
        bottom.axhline(0.0, color="0.5", lw=0.8, ls="--")
        top.set_title(f"{name}: {x.size} objects", fontsize=9)
        top.set_ylabel(f"measured {name}")
        top.legend(fontsize=7, loc="upper left")
        bottom.set_xlabel(f"true {name}")
        bottom.set_ylabel(f"{name}_est - {name}_true")
        bottom.legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, format="png")
    return path
