"""scikit-image's biharmonic in-painting of a batch of images as one sparse solve.

:func:`skimage.restoration.inpaint_biharmonic` builds, for every masked pixel, the equation
``sum_k c_k u_k = 0`` of the 13-point biharmonic stencil ``laplace(laplace(delta))`` (cut to the
image and recomputed on the cut at its borders), moves the known pixels to the right-hand side and
solves the system with SuperLU; it then clips the result to the range of the known pixels. It
does so for one image at a time, with array work over the whole image and a Python loop over the
masked pixels near its border: about 3 ms for a 64x64 crop, most of it overhead. The image
in-painter needs that fill for every crop of a training batch and every window of an image, so
:func:`biharmonic_fill` assembles the same equations for a whole batch with vectorised NumPy (the
images' systems are independent blocks of one sparse matrix) and solves them with the same SuperLU
call. It reproduces scikit-image's fill to rounding (tests compare them); scikit-image stays the
reference and the whole-image baseline.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from scipy import sparse
from scipy.ndimage import laplace
from scipy.sparse.linalg import spsolve

RADIUS = 2  # the biharmonic stencil reaches two pixels


@cache
def _stencil(up: int, down: int, left: int, right: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dy, dx, coefficient) of the stencil of a pixel with ``up``..``right`` pixels of image beyond it (<= 2).

    As scikit-image's ``_get_neigh_coef``: ``laplace(laplace(delta))`` on the neighbourhood cut to
    the image (``scipy.ndimage.laplace``, reflecting at the cut).
    """
    delta = np.zeros((up + down + 1, left + right + 1))
    delta[up, left] = 1.0
    coefficients = laplace(laplace(delta))
    dy, dx = np.nonzero(coefficients)
    return dy - up, dx - left, coefficients[dy, dx]


def biharmonic_fill(images: np.ndarray, holes: np.ndarray, headroom: float | np.ndarray = 0.0) -> np.ndarray:
    """Biharmonic fill of the holes of each image of a batch, as scikit-image's ``inpaint_biharmonic``.

    Args:
        images: (B, H, W) pixel values (any units); hole values are never read.
        holes: (B, H, W) bool, True = to fill.
        headroom: how far (in the images' units) the fill may go beyond the known pixels' range,
            one value for all images or (B,) one per image; 0 is scikit-image's clip.

    Returns:
        (B, H, W) float64: known pixels as given, holes filled and clipped to the range of their
        image's known pixels widened by ``headroom``. An image with no known pixel is filled with 0.
    """
    images = np.asarray(images, dtype=np.float64)
    holes = np.asarray(holes, dtype=bool)
    if images.ndim != 3 or holes.shape != images.shape:
        raise ValueError(f"images and holes must both be (B, H, W); got {images.shape} and {holes.shape}")
    out = np.where(holes, 0.0, images)
    n_batch, height, width = images.shape
    solvable = ~holes.reshape(n_batch, -1).all(axis=1)  # an image without known pixels stays 0
    b, y, x = np.nonzero(holes & solvable[:, None, None])
    n = b.size
    if n == 0:
        return out
    index = np.full(holes.shape, -1, dtype=np.int64)
    index[b, y, x] = np.arange(n)
    reach = [np.minimum(y, RADIUS), np.minimum(height - 1 - y, RADIUS),
             np.minimum(x, RADIUS), np.minimum(width - 1 - x, RADIUS)]
    key = ((reach[0] * 3 + reach[1]) * 3 + reach[2]) * 3 + reach[3]
    rows, cols, values = [], [], []
    rhs = np.zeros(n)
    for k in np.unique(key):
        pixels = np.flatnonzero(key == k)
        up, down, left, right = (int(k) // 27, int(k) // 9 % 3, int(k) // 3 % 3, int(k) % 3)
        for dy, dx, coefficient in zip(*_stencil(up, down, left, right), strict=True):
            qb, qy, qx = b[pixels], y[pixels] + dy, x[pixels] + dx
            neighbour = index[qb, qy, qx]
            unknown = neighbour >= 0
            rows.append(pixels[unknown])
            cols.append(neighbour[unknown])
            values.append(np.full(int(unknown.sum()), coefficient))
            known = ~unknown  # each pixel appears once per offset: a plain fancy-index update is exact
            rhs[pixels[known]] -= coefficient * images[qb[known], qy[known], qx[known]]
    matrix = sparse.csr_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    solution = spsolve(matrix, rhs, permc_spec="MMD_ATA", use_umfpack=False)
    # scikit-image clips to the known pixels' range ("enormous values"), per image.
    known_values = np.where(holes, np.nan, images).reshape(n_batch, -1)
    with np.errstate(all="ignore"):
        low, high = np.nanmin(known_values[solvable], axis=1), np.nanmax(known_values[solvable], axis=1)
    position = np.cumsum(solvable) - 1  # batch index -> row of low / high
    room = np.broadcast_to(np.asarray(headroom, dtype=np.float64), (n_batch,))[b]
    out[b, y, x] = np.clip(solution, low[position[b]] - room, high[position[b]] + room)
    return out
