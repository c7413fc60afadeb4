"""Shear calibration: metacalibration-style responses, calibrated shears and the m, c fit.

The harness measures the multiplicative and additive shear bias of the pipeline,
``g_est = (1 + m) g_true + c`` per component, against the LSST requirement
``|m| < 1e-3``, ``|c| < 1e-4``. The chain is:

1. ``lensforge.pipeline.shear.measure.measure_shear``: GalSim HSM PSF correction (REGAUSS or
   KSB) of each stamp gives a raw ellipticity ``e``; its convention depends on the method
   (distortion for REGAUSS, shear for KSB), so it is not yet a shear estimate.
2. ``shear_response``: the response ``R = d<e>/dg`` from counterfactual renderings, the
   same galaxy and noise drawn at ``+dg`` and ``-dg`` (``lensforge.pipeline.stamps.simulate.render_counterfactuals``).
3. ``calibrate_shear``: ``g_est = R^-1 e``; whatever the convention of ``e``, the
   measured response turns it into shear, so no analytic responsivity is assumed.
4. ``fit_m_c`` / ``shear_bias_table``: least-squares ``m, c`` with errors from a
   bootstrap over whole ring pairs, so the pair cancellation of shape noise is kept; the
   figures of the fit are ``lensforge.pipeline.shear.figures``.

As in ``lensforge.pipeline.evaluation.metrics``, a stamp whose measurement fails is NaN with ``flag`` False;
only malformed inputs raise ``InputError``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from lensforge.errors import InputError

# The stack/scalar checks and HSM's first-guess size are shared with the other HSM user,
# so that both accept exactly the same inputs.

LSST_M_REQUIREMENT = 1e-3  # |m| below this (LSST DESC Science Requirements Document, Y10)
LSST_C_REQUIREMENT = 1e-4  # |c| below this

# Bootstrap count matrices are built in blocks of at most this many (replicate, group)
# entries, so a catalogue of a million ring pairs does not need gigabytes at once.
_BOOTSTRAP_BLOCK_ENTRIES = 4_000_000


# ---------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------

def _vector(values: np.ndarray, name: str) -> np.ndarray:
    """Return ``values`` as a float64 ``(N,)`` array (N >= 1), or raise InputError."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise InputError(f"{name} must be a non-empty 1-D array, got shape {array.shape}", array.shape)
    return array


def _same_length(array: np.ndarray, n: int, name: str) -> None:
    if len(array) != n:
        raise InputError(f"{name} has length {len(array)}, expected {n}", len(array))


def _generator(rng: np.random.Generator | None) -> np.random.Generator:
    """``rng`` itself, or a fresh unseeded Generator: never numpy's global state."""
    if rng is None:
        return np.random.default_rng()
    if not isinstance(rng, np.random.Generator):
        raise InputError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}", rng)
    return rng


def _response_matrix(response: float | np.ndarray) -> np.ndarray:
    """A scalar or 2x2 response as a finite, invertible 2x2 matrix, or raise InputError."""
    matrix = np.asarray(response, dtype=np.float64)
    if matrix.ndim == 0:
        matrix = float(matrix) * np.eye(2)
    if matrix.shape != (2, 2) or not np.all(np.isfinite(matrix)):
        raise InputError(f"response must be a finite scalar or 2x2 matrix, got shape {matrix.shape}", response)
    # Relative to its size, since responses are O(1) (KSB ~1, REGAUSS ~2(1 - sigma_e^2)).
    if abs(np.linalg.det(matrix)) <= 1e-12 * max(float(np.abs(matrix).max()), 1e-300) ** 2:
        raise InputError("response matrix is singular", matrix)
    return matrix


# A usable response is a calibration: close to a positive multiple of the identity (KSB ~1, REGAUSS in the
# shear convention ~1, distortions ~1.7), well conditioned. Anything else (a sign flip, a matrix whose
# inverse amplifies noise tenfold) turns the "calibrated" m and c into numbers without meaning.
RESPONSE_MAX_CONDITION = 10.0
RESPONSE_DIAGONAL_RANGE = (0.2, 5.0)
# Fourier_Quad's per-stamp e = G / D keeps the noise power in D, so its response is the share of D
# that is the galaxy's, times the galaxy's resolution: 0.24-0.27 for lensforge's parametric and generated
# galaxies, 0.075 for the small COSMOS galaxies under an LSST PSF. Small but positive is its normal
# scale; only below 1 % (a calibration that multiplies the noise by 100) or a sign flip is it broken.
EXPECTED_RESPONSE_DIAGONAL = {"FOURIER_QUAD": (0.01, 5.0)}


def response_diagonal_range(method: str | None) -> tuple[float, float]:
    """The diagonal range of a usable mean response of shape-measurement ``method`` (None: the HSM methods')."""
    return EXPECTED_RESPONSE_DIAGONAL.get(method or "", RESPONSE_DIAGONAL_RANGE)


def response_problem(response: float | np.ndarray, diagonal_range: tuple[float, float] = RESPONSE_DIAGONAL_RANGE
                     ) -> str | None:
    """Why a mean response (scalar or 2x2) cannot serve as a calibration, in a few words; None when it can.

    Flags a non-finite matrix, a condition number above ``RESPONSE_MAX_CONDITION`` and diagonal
    entries outside ``diagonal_range`` (the method's expected scale, :func:`response_diagonal_range`;
    negative = sign flip).
    """
    matrix = np.asarray(response, dtype=np.float64)
    matrix = float(matrix) * np.eye(2) if matrix.ndim == 0 else matrix
    if matrix.shape != (2, 2) or not np.all(np.isfinite(matrix)):
        return "is not a finite 2x2 matrix"
    condition = float(np.linalg.cond(matrix))
    if not condition <= RESPONSE_MAX_CONDITION:
        return f"is ill-conditioned (condition number {condition:.3g} > {RESPONSE_MAX_CONDITION:g})"
    low, high = diagonal_range
    diagonal = np.diag(matrix)
    if not np.all((diagonal >= low) & (diagonal <= high)):
        return f"is far from the expected scale (diagonal {np.round(diagonal, 3).tolist()} outside " \
               f"[{low:g}, {high:g}])"
    return None


# ---------------------------------------------------------------------------------------
# Response and calibration
# ---------------------------------------------------------------------------------------

def stack_counterfactuals(g1_plus: Mapping[str, np.ndarray], g1_minus: Mapping[str, np.ndarray],
                          g2_plus: Mapping[str, np.ndarray],
                          g2_minus: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Arrange four ``measure_shear`` results into the ``(2, 2, N)`` inputs of ``shear_response``.

    The arguments are the measurements of the counterfactual stacks sheared by ``+dg`` and
    ``-dg`` on g1 and on g2 (``lensforge.pipeline.stamps.simulate.COUNTERFACTUAL_SHIFTS`` order).

    Returns:
        ``(e_plus, e_minus)``, each ``(2, 2, N)`` with ``[i, j, n]`` = component ``i`` of
        object ``n``'s ellipticity on the image sheared on component ``j``.
    """
    def component(shapes: Mapping[str, np.ndarray], key: str) -> np.ndarray:
        if key not in shapes:
            raise InputError(f"counterfactual measurement lacks {key!r}", key)
        return np.asarray(shapes[key], dtype=np.float64)

    e_plus = np.array([[component(g1_plus, "e1"), component(g2_plus, "e1")],
                       [component(g1_plus, "e2"), component(g2_plus, "e2")]])
    e_minus = np.array([[component(g1_minus, "e1"), component(g2_minus, "e1")],
                        [component(g1_minus, "e2"), component(g2_minus, "e2")]])
    return e_plus, e_minus


def shear_response(e_plus: np.ndarray, e_minus: np.ndarray, delta_g: float,
                   per_object: bool = False) -> float | np.ndarray:
    """Metacalibration-style shear response from counterfactual pairs: ``R = <e+ - e-> / (2 dg)``.

    ``e+`` and ``e-`` are the raw ellipticities (``measure_shear``) of the same galaxy with
    the same noise drawn at shear ``+dg`` and ``-dg`` on one component, relative to the
    object's own shear; the difference is then pure shear response and needs no noise
    bias correction. The mean is over objects measured in every counterfactual, so all
    entries of a matrix use the same galaxies.

    Args:
        e_plus: ``(N,)`` for one component (measured on the component that was sheared),
            or ``(2, 2, N)`` with ``[i, j, n]`` = component ``i`` of object ``n`` on the
            image sheared by ``+dg`` on component ``j`` (see ``stack_counterfactuals``).
        e_minus: The same at ``-dg``.
        delta_g: The counterfactual shear step ``dg`` (dimensionless, in (0, 1)).
        per_object: Return each object's response instead of the mean, for
            ``fit_m_c(response=...)`` / ``shear_bias_table``, whose bootstrap then
            recomputes the mean response of every resample.

    Returns:
        ``R`` as a float for ``(N,)`` inputs, else the 2x2 matrix ``R[i, j] = d<e_i>/dg_j``
        (diagonal ~1 for KSB, ~1.7 for REGAUSS distortions; off-diagonal ~0 for a round PSF);
        NaN (or a NaN matrix) if no object was measured in every counterfactual. With
        ``per_object``: ``(N,)`` or ``(N, 2, 2)``, NaN for objects not measured in every one.
    """
    plus = np.asarray(e_plus, dtype=np.float64)
    minus = np.asarray(e_minus, dtype=np.float64)
    if plus.shape != minus.shape:
        raise InputError(f"e_plus has shape {plus.shape} but e_minus has {minus.shape}", (plus.shape, minus.shape))
    if plus.size == 0 or not (plus.ndim == 1 or (plus.ndim == 3 and plus.shape[:2] == (2, 2))):
        raise InputError(f"e_plus/e_minus must be (N,) or (2, 2, N), got shape {plus.shape}", plus.shape)
    if not (np.ndim(delta_g) == 0 and 0 < delta_g < 1):
        raise InputError(f"delta_g must be a scalar in (0, 1), got {delta_g!r}", delta_g)
    difference = (plus - minus).reshape(-1, plus.shape[-1]) / (2.0 * delta_g)  # (1 or 4, N)
    usable = np.all(np.isfinite(difference), axis=0)
    if per_object:
        objects = np.where(usable, difference, np.nan)
        return objects[0] if plus.ndim == 1 else objects.T.reshape(-1, 2, 2)
    if not usable.any():
        return float("nan") if plus.ndim == 1 else np.full((2, 2), np.nan)
    response = difference[:, usable].mean(axis=1)
    return float(response[0]) if plus.ndim == 1 else response.reshape(2, 2)


def secant_response(response: np.ndarray, e_plus: np.ndarray, e_minus: np.ndarray, e1: np.ndarray, e2: np.ndarray,
                    g1: np.ndarray, g2: np.ndarray, delta_g: float) -> np.ndarray:
    """Per-object response with the O(g^2) term of the local response removed: ``R - (1/3) g_j d2e_i/dg_j2``.

    The local response ``R = de/dg`` at the object's own shear ``g`` calibrates ``e(g)``; where
    ``e(g) = R0 g + a g^2 + b g^3``, a ring pair (``g`` and, turned, ``-g``) cancels the even
    terms and the local response leaves ``m = -2 b g^2 / R0``. The secant response ``(e(g) - e(0)) / g``
    is exact to this order but needs a g = 0 counterfactual. From the three stored points per axis
    (``e(g)``, ``e(g +- dg)``) the curvature ``d2e/dg2 = (e+ + e- - 2 e) / dg^2`` is known; the local
    response minus ``(1/3) g d2e/dg2`` has the secant's ring-pair average, ``R0 + b g^2``, so the
    calibrated pair is unbiased to O(g^2). (Minus ``(1/2) g d2e/dg2``, the second-order Taylor
    estimate of the secant, would leave ``+b g^2 / R0``: half the bias, flipped.) Mixed terms
    (d2e/dg1 dg2) are not measured and not corrected.

    Args:
        response: ``(N, 2, 2)`` local responses (``shear_response(..., per_object=True)``).
        e_plus, e_minus: ``(2, 2, N)`` counterfactual ellipticities (``stack_counterfactuals``).
        e1, e2: ``(N,)`` ellipticities of the stamps themselves.
        g1, g2: ``(N,)`` the objects' applied shears.
        delta_g: the counterfactual step.

    Returns:
        ``(N, 2, 2)`` corrected responses (NaN where any input is).
    """
    plus = np.asarray(e_plus, dtype=np.float64)
    minus = np.asarray(e_minus, dtype=np.float64)
    centre = np.stack([np.asarray(e1, dtype=np.float64), np.asarray(e2, dtype=np.float64)])[:, None, :]  # (2, 1, N)
    curvature = (plus + minus - 2.0 * centre) / delta_g**2  # [i, j, n] = d2 e_i / d g_j^2
    shear = np.stack([np.asarray(g1, dtype=np.float64), np.asarray(g2, dtype=np.float64)])  # (2, N): g_j
    correction = curvature * shear[None, :, :] / 3.0
    return np.asarray(response, dtype=np.float64) - np.transpose(correction, (2, 0, 1))


def calibrate_shear(e1: np.ndarray, e2: np.ndarray, response: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Turn raw ellipticities into shear estimates: ``(g1, g2) = R^-1 (e1, e2)`` per object.

    Args:
        e1, e2: ``(N,)`` raw ellipticities from ``measure_shear`` (NaN passes through).
        response: Scalar or 2x2 response from ``shear_response``, for the same method
            (the sample mean: per-object responses are too noisy to invert one by one).

    Returns:
        ``(g1, g2)``, ``(N,)`` shear estimates (dimensionless).
    """
    first, second = _vector(e1, "e1"), _vector(e2, "e2")
    _same_length(second, len(first), "e2")
    shear = np.linalg.solve(_response_matrix(response), np.stack([first, second]))
    return shear[0], shear[1]


# ---------------------------------------------------------------------------------------
# m, c fit
# ---------------------------------------------------------------------------------------

def _check_fit_options(n: int, group: np.ndarray | None, n_bootstrap: int) -> np.ndarray:
    """Group ids as a 1-D array of length ``n`` (default: one group per object), or raise InputError."""
    ids = np.arange(n) if group is None else np.asarray(group)
    if ids.ndim != 1:
        raise InputError(f"group must be a 1-D array, got shape {ids.shape}", ids.shape)
    _same_length(ids, n, "group")
    if isinstance(n_bootstrap, bool) or int(n_bootstrap) != n_bootstrap or n_bootstrap < 2:
        raise InputError(f"n_bootstrap must be an integer >= 2, got {n_bootstrap!r}", n_bootstrap)
    return ids


def _calibrated_line(sums: np.ndarray, k: int, calibrated: bool, x0: float,
                     y0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shear slope and intercept ``[..., k]`` from summed columns (see ``_fit_calibrated``); NaN where undefined.

    The line is fitted to the raw ``y`` (least squares is linear in ``y``), then mapped to
    shear by the inverse of the mean response of the same (re)sample: ``<R>^-1 <e>``.
    """
    n, sx, sxx = sums[..., 0], sums[..., 1], sums[..., 2]
    sy, sxy = sums[..., 3:3 + k], sums[..., 3 + k:3 + 2 * k]
    with np.errstate(invalid="ignore", divide="ignore"):
        variance = n * sxx - sx * sx
        slope = (n[..., None] * sxy - sx[..., None] * sy) / np.where(variance > 0, variance, np.nan)[..., None]
        intercept = (sy - slope * sx[..., None]) / n[..., None]
    # Back from the centred frame: y = y0 + b (x - x0) + a  =>  intercept y0 + a - b x0.
    intercept = y0 + intercept - slope * x0
    if not calibrated:
        return slope, intercept
    mean_response = sums[..., 3 + 2 * k:].reshape(*sums.shape[:-1], k, k) / n[..., None, None]
    singular = ~(np.abs(np.linalg.det(mean_response)) > 1e-12)
    mean_response[singular] = np.eye(k)  # solved for shape's sake, then blanked
    slope = np.linalg.solve(mean_response, slope[..., None])[..., 0]
    intercept = np.linalg.solve(mean_response, intercept[..., None])[..., 0]
    slope[singular], intercept[singular] = np.nan, np.nan
    return slope, intercept


def _group_sums(x: np.ndarray, y: np.ndarray, response: np.ndarray | None, ids: np.ndarray,
                weight: np.ndarray | None) -> tuple[np.ndarray, float, np.ndarray, int] | None:
    """Per-group (weighted) sums of the fit's columns, the centring (x0, y0) and the group count.

    Objects with any non-finite value (or a weight that is not finite and > 0) are dropped; None if
    fewer than two distinct ``x`` remain.
    """
    k = y.shape[1]
    usable = np.isfinite(x) & np.all(np.isfinite(y), axis=1)
    if response is not None:
        usable &= np.all(np.isfinite(response), axis=(1, 2))
    w = np.ones_like(x) if weight is None else np.asarray(weight, dtype=np.float64)
    usable &= np.isfinite(w) & (w > 0)
    x, y, ids, w = x[usable], y[usable], ids[usable], w[usable]
    if np.unique(x).size < 2:
        return None
    # Centre both axes so the sums do not cancel catastrophically for shears ~1e-2.
    x0, y0 = float(np.average(x, weights=w)), np.average(y, axis=0, weights=w)
    dx, dy = x - x0, y - y0
    columns = [np.ones_like(dx), dx, dx * dx, *dy.T, *(dx[:, None] * dy).T]
    if response is not None:
        columns += list(response[usable].reshape(-1, k * k).T)
    _, inverse = np.unique(ids, return_inverse=True)
    n_groups = int(inverse.max()) + 1
    per_group = np.stack([np.bincount(inverse, weights=w * column, minlength=n_groups) for column in columns], axis=1)
    return per_group, x0, y0, int(x.size)


def _bootstrap_counts(n_groups: int, n_bootstrap: int, generator: np.random.Generator):
    """Blocks of (replicate x group) draw counts of a bootstrap over groups (memory-bounded)."""
    block = max(1, _BOOTSTRAP_BLOCK_ENTRIES // n_groups)
    for start in range(0, n_bootstrap, block):
        rows = min(block, n_bootstrap - start)
        draws = generator.integers(0, n_groups, size=(rows, n_groups))
        flat = draws + n_groups * np.arange(rows)[:, None]
        yield start, np.bincount(flat.ravel(), minlength=rows * n_groups).reshape(rows, n_groups)


def _fit_calibrated(x: np.ndarray, y: np.ndarray, response: np.ndarray | None, ids: np.ndarray, component: int,
                    n_bootstrap: int, generator: np.random.Generator) -> dict[str, float | int]:
    """m, c of ``component`` from labels ``x`` (N,), ellipticities ``y`` (N, k), responses (N, k, k) or None.

    Objects with any non-finite value are dropped. The bootstrap draws whole groups; each
    replicate's sums are (how often each group was drawn) @ (per-group sums), so a replicate costs
    one matrix product whatever the number of objects.
    """
    k = y.shape[1]
    sums = _group_sums(x, y, response, ids, None)
    if sums is None:
        distinct = np.unique(x[np.isfinite(x)]).size
        raise InputError(f"fit needs at least two distinct finite g_true values, got {distinct}", x)
    per_group, x0, y0, n_used = sums
    n_groups = per_group.shape[0]
    calibrated = response is not None
    slope, intercept = _calibrated_line(per_group.sum(axis=0), k, calibrated, x0, y0)
    replicates = np.empty((n_bootstrap, per_group.shape[1]))
    for start, counts in _bootstrap_counts(n_groups, n_bootstrap, generator):
        replicates[start:start + len(counts)] = counts @ per_group
    boot_slope, boot_intercept = _calibrated_line(replicates, k, calibrated, x0, y0)
    boot_m, boot_c = boot_slope[:, component], boot_intercept[:, component]
    finite = np.isfinite(boot_m) & np.isfinite(boot_c)
    enough = np.count_nonzero(finite) >= 2
    return {
        "m": float(slope[component] - 1.0),
        "c": float(intercept[component]),
        "m_err": float(np.std(boot_m[finite], ddof=1)) if enough else float("nan"),
        "c_err": float(np.std(boot_c[finite], ddof=1)) if enough else float("nan"),
        "n": n_used,
        "n_groups": n_groups,
    }


def _weighting_inputs(labels: Mapping[str, np.ndarray], e1: np.ndarray, e2: np.ndarray, weight: np.ndarray,
                      group_key: str | None, n_bootstrap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The checked inputs of a weighting shift: ``(g_true (N, 2), e (N, 2), weight (N,), group ids (N,))``."""
    g_true = np.stack([_vector(labels["g1"], "labels['g1']"), _vector(labels["g2"], "labels['g2']")], axis=1)
    n = len(g_true)
    y = np.stack([_vector(e1, "e1"), _vector(e2, "e2")], axis=1)
    _same_length(y, n, "e1")
    weight = _vector(weight, "weight")
    _same_length(weight, n, "weight")
    group = np.asarray(labels[group_key]) if group_key is not None and group_key in labels else None
    return g_true, y, weight, _check_fit_options(n, group, n_bootstrap)


def weighting_shift(labels: Mapping[str, np.ndarray], e1: np.ndarray, e2: np.ndarray, response: float | np.ndarray,
                    weight: np.ndarray, group_key: str | None = "ring_pair_id", n_bootstrap: int = 200,
                    rng: np.random.Generator | None = None) -> dict[str, dict[str, float]]:
    """How much weighting each object by ``weight`` changes m: ``{g1|g2: {dm, dm_err}}``, paired.

    Both fits use the same objects (those with a finite shape and a weight > 0) and every
    bootstrap replicate draws the same groups for both, so ``dm_err`` is the error of the
    difference itself, not of either fit. ``response`` is the fixed mean response (scalar or 2x2)
    that calibrates both; e.g. the noise test: weighting by S/N must not change m when the noise
    does not know the shear.
    """
    g_true, y, weight, ids = _weighting_inputs(labels, e1, e2, weight, group_key, n_bootstrap)
    n = len(g_true)
    matrix = _response_matrix(response)
    responses = np.broadcast_to(matrix, (n, 2, 2))
    same = np.isfinite(weight) & (weight > 0)
    y = np.where(same[:, None], y, np.nan)  # the unweighted fit on the weighted fit's objects
    generator = _generator(rng)
    out: dict[str, dict[str, float]] = {}
    for component, name in enumerate(("g1", "g2")):
        fits = [_group_sums(g_true[:, component], y, responses, ids, w) for w in (None, weight)]
        if any(f is None for f in fits):
            raise InputError("weighting_shift: fewer than two distinct finite g_true values", n)
        (plain, x0p, y0p, _), (weighted, x0w, y0w, _) = fits
        slope_p, _ = _calibrated_line(plain.sum(axis=0), 2, True, x0p, y0p)
        slope_w, _ = _calibrated_line(weighted.sum(axis=0), 2, True, x0w, y0w)
        differences = np.empty(int(n_bootstrap))
        for start, counts in _bootstrap_counts(plain.shape[0], int(n_bootstrap), generator):
            boot_p, _ = _calibrated_line(counts @ plain, 2, True, x0p, y0p)
            boot_w, _ = _calibrated_line(counts @ weighted, 2, True, x0w, y0w)
            differences[start:start + len(counts)] = boot_w[:, component] - boot_p[:, component]
        finite = np.isfinite(differences)
        out[name] = {"dm": float(slope_w[component] - slope_p[component]),
                     "dm_err": float(np.std(differences[finite], ddof=1)) if finite.sum() >= 2 else float("nan")}
    return out


def _zero_shear_slope(sums: np.ndarray) -> np.ndarray:
    """(draws, 12) sums of the normal equations of ``[1, x, x|g|^2]`` (9, row-major) and of their products
    with ``y`` (3) -> (draws,) coefficients of ``x``; NaN where the equations are singular."""
    normal, target = sums[:, :9].reshape(-1, 3, 3), sums[:, 9:]
    singular = ~(np.abs(np.linalg.det(normal)) > 1e-12 * np.abs(normal).max(axis=(1, 2)) ** 3)
    normal[singular] = np.eye(3)  # solved for shape's sake, then blanked
    coefficients = np.linalg.solve(normal, target[..., None])[..., 0]
    return np.where(singular, np.nan, coefficients[:, 1])


def zero_shear_weighting_shift(labels: Mapping[str, np.ndarray], e1: np.ndarray, e2: np.ndarray,
                               response: float | np.ndarray, weight: np.ndarray,
                               group_key: str | None = "ring_pair_id", n_bootstrap: int = 200,
                               rng: np.random.Generator | None = None) -> dict[str, dict[str, float]]:
    """:func:`weighting_shift` in the limit g -> 0: how much weighting by ``weight`` changes m0, paired.

    Each fit, weighted and not, is ``R^-1 e = c + (1 + m0) g_k + q |g|^2 g_k`` per component ``k``
    (``response`` fixed, as in :func:`weighting_shift`). The ``q`` term takes m's O(g^2) part: what
    the calibration leaves at the object's own shear (terms a secant estimate does not measure, such
    as d2e1/dg1 dg2) differs from galaxy to galaxy, so weighting moves it even when nothing knows the
    shear, and it vanishes as g -> 0. A weight, or a noise level, that follows the applied shear moves
    m0 at any g. Needs a spread of |g| (e.g. 0.01-0.05); the price is a larger error than
    :func:`weighting_shift`'s (``q`` and ``m0`` are correlated over such a range).

    Returns:
        ``{g1|g2: {dm, dm_err}}``: m0 weighted minus m0 unweighted, on the same objects and the same
        bootstrap draws over groups (the error is that of the difference).
    """
    g_true, y, weight, ids = _weighting_inputs(labels, e1, e2, weight, group_key, n_bootstrap)
    n = len(g_true)
    used = np.isfinite(weight) & (weight > 0) & np.all(np.isfinite(y), axis=1) & np.all(np.isfinite(g_true), axis=1)
    shear = y[used] @ np.linalg.inv(_response_matrix(response)).T  # R^-1 e, object by object
    g_true, weight = g_true[used], weight[used]
    _, inverse = np.unique(ids[used], return_inverse=True)
    n_groups = int(inverse.max()) + 1 if inverse.size else 0
    g_squared = (g_true**2).sum(axis=1)
    blocks = [block for _, block in _bootstrap_counts(max(n_groups, 1), int(n_bootstrap), _generator(rng))]
    out: dict[str, dict[str, float]] = {}
    for component, name in enumerate(("g1", "g2")):
        x = g_true[:, component]
        if np.unique(np.round(g_squared, 12)).size < 3 or np.unique(x).size < 3:
            raise InputError("zero_shear_weighting_shift: needs at least three distinct |g| and g values", n)
        # Columns scaled to O(1) so the 3x3 normal equations stay well conditioned (x ~ 1e-2, x|g|^2 ~ 1e-5).
        scales = np.array([1.0, np.abs(x).max(), np.abs(x * g_squared).max()])
        design = np.stack([np.ones_like(x), x, x * g_squared], axis=1) / scales
        pairs = np.einsum("ni,nj->nij", design, design).reshape(len(x), 9)
        columns = np.concatenate([pairs, design * shear[:, component:component + 1]], axis=1)
        per_group = {label: np.stack([np.bincount(inverse, weights=w * column, minlength=n_groups)
                                      for column in columns.T], axis=1)
                     for label, w in (("plain", np.ones_like(weight)), ("weighted", weight))}

        def shift(counts: np.ndarray, sums: dict[str, np.ndarray] = per_group) -> np.ndarray:
            """m0 weighted minus m0 plain [x's scaled units] for (draws, groups) counts."""
            return _zero_shear_slope(counts @ sums["weighted"]) - _zero_shear_slope(counts @ sums["plain"])

        difference = float(shift(np.ones((1, n_groups)))[0] / scales[1])
        draws = np.concatenate([shift(block) for block in blocks]) / scales[1]
        finite = np.isfinite(draws)
        out[name] = {"dm": difference,
                     "dm_err": float(np.std(draws[finite], ddof=1)) if finite.sum() >= 2 else float("nan")}
    return out


def fit_m_c(g_true: np.ndarray, g_est: np.ndarray, group: np.ndarray | None = None, n_bootstrap: int = 200,
            rng: np.random.Generator | None = None, response: np.ndarray | None = None) -> dict[str, float | int]:
    """Least-squares fit of ``g_est = (1 + m) g_true + c`` for one shear component.

    Errors are the standard deviation of ``m`` and ``c`` refitted on ``n_bootstrap``
    resamples, drawn with replacement over whole groups: pass the ring-pair id (or any id
    shared by objects whose shape noise cancels) so that a resample keeps or drops a pair
    together. Resampling single objects instead would break the pairs and report the
    full shape noise, several times the actual error of a ring-pair simulation.

    Args:
        g_true: ``(N,)`` applied shear (the labels).
        g_est: ``(N,)`` calibrated shear estimates, or with ``response`` the raw
            ellipticity of this component; non-finite entries (failed measurements) are
            dropped together with their label.
        group: Optional ``(N,)`` group ids (any values); default: every object its own group.
        n_bootstrap: Number of bootstrap resamples (>= 2).
        rng: numpy Generator for the resampling; default a fresh, unseeded one.
        response: Optional ``(N,)`` per-object responses of this component
            (``shear_response(..., per_object=True)``). ``g_est`` is then calibrated by the
            mean response of the sample, recomputed for every resample: with a fixed
            response, resampling galaxies of different responsivity would add a scatter
            the real calibration does not have.

    Returns:
        ``m``, ``c`` (dimensionless), their bootstrap errors ``m_err``, ``c_err`` (NaN if
        fewer than 2 resamples had two distinct ``g_true``), ``n`` (objects used) and
        ``n_groups`` (groups used).
    """
    x = _vector(g_true, "g_true")
    y = _vector(g_est, "g_est")
    _same_length(y, len(x), "g_est")
    ids = _check_fit_options(len(x), group, n_bootstrap)
    if response is not None:
        response = _vector(response, "response")
        _same_length(response, len(x), "response")
        response = response[:, None, None]
    return _fit_calibrated(x, y[:, None], response, ids, 0, int(n_bootstrap), _generator(rng))


def _json_float(value: float) -> float | None:
    """A float for JSON: NaN/inf become None (JSON has no NaN)."""
    return float(value) if math.isfinite(value) else None


def shear_bias_table(labels: Mapping[str, np.ndarray], e1: np.ndarray, e2: np.ndarray,
                     response: float | np.ndarray, group_key: str | None = "ring_pair_id", n_bootstrap: int = 200,
                     rng: np.random.Generator | None = None,
                     diagonal_range: tuple[float, float] = RESPONSE_DIAGONAL_RANGE) -> dict:
    """Calibrate raw ellipticities with ``response`` and fit ``m, c`` for both components.

    ``diagonal_range``: the usable response's diagonal (:func:`response_problem`), the method's.

    The shear estimate is ``<R>^-1 e`` with the full 2x2 response (so a PSF that mixes the
    components is corrected), then ``fit_m_c``'s fit and group bootstrap per component.

    Args:
        labels: Truth arrays as in ``lensforge.catalogs.schema.LABEL_ARRAYS``: ``g1``, ``g2`` ``(N,)``
            and, if ``group_key`` is set, the group ids under that key.
        e1, e2: ``(N,)`` raw ellipticities from ``measure_shear`` (NaN = failed).
        response: The mean response, scalar or 2x2 (fixed in the bootstrap), or per-object
            ``(N, 2, 2)`` (``shear_response(..., per_object=True)``; the mean over each
            resample calibrates it). Objects with a non-finite response are dropped.
        group_key: Label holding the bootstrap groups (default the ring-pair id); ``None``
            or a key absent from ``labels`` resamples single objects.
        n_bootstrap: Bootstrap resamples per component.
        rng: numpy Generator for the resampling (shared by both components).

    Returns:
        A JSON-ready dict (Python floats, ints, bools, lists; NaN written as None):
        ``g1`` and ``g2`` each ``{m, c, m_err, c_err, n, n_groups}``, ``response`` (the
        mean 2x2 response over the objects used, as a list), ``n_objects``, ``n_failed``
        (objects dropped: non-finite e1, e2 or response), ``requirement`` (``{m, c}``: the
        LSST limits) and ``meets_requirement`` (|m| and |c| of both components below the
        limits; errors are not considered).
    """
    for key in ("g1", "g2"):
        if key not in labels:
            raise InputError(f"labels lack {key!r}", key)
    g1_true, g2_true = _vector(labels["g1"], "labels['g1']"), _vector(labels["g2"], "labels['g2']")
    n = len(g1_true)
    _same_length(g2_true, n, "labels['g2']")
    first, second = _vector(e1, "e1"), _vector(e2, "e2")
    _same_length(first, n, "e1")
    _same_length(second, n, "e2")
    responses = np.asarray(response, dtype=np.float64)
    if responses.ndim == 3:
        if responses.shape != (n, 2, 2):
            raise InputError(f"per-object response must have shape ({n}, 2, 2), got {responses.shape}",
                             responses.shape)
    else:
        responses = np.broadcast_to(_response_matrix(response), (n, 2, 2))
    group = np.asarray(labels[group_key]) if group_key is not None and group_key in labels else None
    ids = _check_fit_options(n, group, n_bootstrap)
    generator = _generator(rng)
    ellipticity = np.stack([first, second], axis=1)
    used = np.all(np.isfinite(ellipticity), axis=1) & np.all(np.isfinite(responses), axis=(1, 2))
    if not used.any():
        raise InputError("no object has a finite ellipticity and response", n)
    table: dict = {}
    for component, (name, truth) in enumerate((("g1", g1_true), ("g2", g2_true))):
        fit = _fit_calibrated(truth, ellipticity, responses, ids, component, int(n_bootstrap), generator)
        table[name] = {key: (_json_float(value) if isinstance(value, float) else value) for key, value in fit.items()}
    table["response"] = responses[used].mean(axis=0).tolist()
    problem = response_problem(table["response"], diagonal_range)
    table["response_suspect"] = problem is not None
    table["response_problem"] = problem
    table["n_objects"] = n
    table["n_failed"] = int(np.count_nonzero(~used))
    table["requirement"] = {"m": LSST_M_REQUIREMENT, "c": LSST_C_REQUIREMENT}
    table["meets_requirement"] = all(
        table[name]["m"] is not None and table[name]["c"] is not None
        and abs(table[name]["m"]) < LSST_M_REQUIREMENT and abs(table[name]["c"]) < LSST_C_REQUIREMENT
        for name in ("g1", "g2"))
    return table


# ---------------------------------------------------------------------------------------
# Conventions and paired comparisons
# ---------------------------------------------------------------------------------------

def distortion_to_shear(e1: np.ndarray, e2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-object distortion ``e = (a^2 - b^2)/(a^2 + b^2)`` to shear-convention ellipticity ``(a - b)/(a + b)``.

    ``g = e / (1 + sqrt(1 - |e|^2))``. For elliptical isophotes the ensemble mean of the
    shear-convention ellipticity responds to a shear exactly linearly (Seitz & Schneider 1997),
    whereas a mean distortion responds as ``2g / (1 + g^2)`` plus shape-dependent terms: a
    multiplicative bias of order ``g^2`` (2.5e-3 at g = 0.05) that no linear calibration removes.
    Noisy measurements with ``|e| >= 1`` have no shear equivalent and become NaN.
    """
    first, second = np.asarray(e1, dtype=np.float64), np.asarray(e2, dtype=np.float64)
    modulus_squared = first**2 + second**2
    with np.errstate(invalid="ignore"):
        factor = np.where(modulus_squared < 1.0, 1.0 / (1.0 + np.sqrt(np.clip(1.0 - modulus_squared, 0.0, None))),
                          np.nan)
    return first * factor, second * factor


def bias_shift(labels: Mapping[str, np.ndarray], e1_reference: np.ndarray, e2_reference: np.ndarray,
               e1: np.ndarray, e2: np.ndarray, response: float | np.ndarray, group_key: str | None = "ring_pair_id",
               n_bootstrap: int = 200, rng: np.random.Generator | None = None) -> dict:
    """Change of ``m`` and ``c`` between two measurements of the same objects, with a paired bootstrap.

    The calibrated least-squares line is linear in the measured ellipticities, so fitting
    the per-object differences ``e - e_reference`` against ``g_true`` gives the difference of
    the two slopes (``dm``) and intercepts (``dc``) exactly, and resampling those differences
    over whole groups is the paired bootstrap: the noise both measurements share (pixel and
    shape noise of the same stamps) drops out of the error.

    Returns ``g1``/``g2`` entries ``{dm, dc, dm_err, dc_err, n, n_groups}`` (JSON-ready).
    """
    table = shear_bias_table(labels, np.asarray(e1, float) - np.asarray(e1_reference, float),
                             np.asarray(e2, float) - np.asarray(e2_reference, float), response,
                             group_key=group_key, n_bootstrap=n_bootstrap, rng=rng)
    shifts = {}
    for name in ("g1", "g2"):
        entry = table[name]
        shifts[name] = {"dm": None if entry["m"] is None else entry["m"] + 1.0, "dc": entry["c"],
                        "dm_err": entry["m_err"], "dc_err": entry["c_err"], "n": entry["n"],
                        "n_groups": entry["n_groups"]}
    return shifts
