"""Noise-cancelling ring pairs: each stamp's unit noise field and defect mask.

With ``simulation.ring_pairs`` the second member of pair ``p`` is the first member's
galaxy rotated by 90 degrees, with the same shear. With ``simulation.pair_noise`` as well,
its noise field and defect mask are the first member's rotated by the same 90 degrees, so
the second stamp is *exactly* (up to the PSF's own symmetry) the 90-degree rotation of the
first member's galaxy sheared by ``-g``, observed with the same noise and mask:

    image(R G, g, R n) = R image(G, -g, n)   =>   e_1 + e_2 = e(G, g, n) - e(G, -g, n).

The pair sum cancels the intrinsic shape *and* the pixel noise to first order, while
noise bias (second order, odd in g) survives: the multiplicative bias a measurement
method really has is kept, the scatter hiding it is removed (Pujol et al. 2019, A&A 621,
A2, sect. 4; Massey et al. 2007 for ring tests). Each stamp on its own is still an
ordinary observation with white Gaussian noise: a pair looks like one galaxy seen at two
camera rotations.

Noise fields are drawn with numpy's PCG64 from (run seed, stream, object index), not by
GalSim, whose deviates take 32-bit seeds.
"""

from __future__ import annotations

import numpy as np

from lensforge.pipeline.config import MaskConfig
from lensforge.pipeline.stamps.defects import draw_bitmask
from lensforge.seeding import Stream, numpy_rng

# np.rot90(array, k) with this k turns a GalSim image array (row index = +y, up) the way
# GSObject.rotate(+90 degrees) turns the profile: counter-clockwise on the sky.
GALSIM_QUARTER_TURN = -1


def pair_source(object_id: int, ring_rotation_deg: float, pair_noise: bool) -> tuple[int, bool]:
    """(object whose noise and mask this stamp uses, whether they are rotated by 90 degrees)."""
    if pair_noise and ring_rotation_deg == 90.0:
        return object_id - 1, True  # the first member of the ring pair
    return object_id, False


def unit_noise(run_seed: int, stream: Stream, object_id: int, ring_rotation_deg: float, pair_noise: bool,
               shape: tuple[int, int]) -> np.ndarray:
    """Object ``object_id``'s standard-normal noise field (float64), rotated from its pair's when paired."""
    source, rotated = pair_source(object_id, ring_rotation_deg, pair_noise)
    field = numpy_rng(run_seed, stream, source).standard_normal(shape)
    return _quarter_turn(field) if rotated else field


def stamp_mask(masks: MaskConfig, run_seed: int, object_id: int, ring_rotation_deg: float, pair_noise: bool,
               shape: tuple[int, int]) -> np.ndarray:
    """Object ``object_id``'s uint8 defect bitmask, the first pair member's rotated by 90 degrees when paired."""
    source, rotated = pair_source(object_id, ring_rotation_deg, pair_noise)
    bitmask = draw_bitmask(masks, run_seed, source, shape)
    return _quarter_turn(bitmask) if rotated else bitmask


class PairDraws:
    """A stamp's unit noise field and defect mask, drawing a ring pair's first member only once.

    Equal to :func:`unit_noise` and :func:`stamp_mask` call by call; the second member of a pair
    (which follows the first in object order) reuses the first member's draws instead of
    repeating them, which saved ~8% of a parametric stamp's time.
    """

    def __init__(self, masks: MaskConfig, run_seed: int, noise_stream: Stream, pair_noise: bool,
                 shape: tuple[int, int]):
        self.masks, self.run_seed, self.noise_stream = masks, run_seed, noise_stream
        self.pair_noise, self.shape = pair_noise, shape
        self._last: tuple[int, np.ndarray, np.ndarray] | None = None  # (source object, noise, mask)

    def noise_and_mask(self, object_id: int, ring_rotation_deg: float) -> tuple[np.ndarray, np.ndarray]:
        """(float64 unit noise field, uint8 bitmask) of object ``object_id``."""
        source, rotated = pair_source(object_id, ring_rotation_deg, self.pair_noise)
        if self._last is None or self._last[0] != source:
            field = numpy_rng(self.run_seed, self.noise_stream, source).standard_normal(self.shape)
            self._last = (source, field, draw_bitmask(self.masks, self.run_seed, source, self.shape))
        _, field, bitmask = self._last
        if not rotated:
            return field, bitmask
        return _quarter_turn(field), _quarter_turn(bitmask)


def _quarter_turn(array: np.ndarray) -> np.ndarray:
    if array.shape[0] != array.shape[1]:
        raise ValueError(f"noise-paired stamps must be square, got {array.shape}")
    return np.ascontiguousarray(np.rot90(array, GALSIM_QUARTER_TURN))


def snr_noise_sigma(noiseless: np.ndarray, snr: float) -> float:
    """Gaussian noise sigma [ADU] giving ``snr`` for this noiseless stamp, as GalSim's ``addNoiseSNR``.

    ``preserve_flux=True`` definition: ``snr = sqrt(sum(I^2)) / sigma`` (the optimal,
    matched-filter S/N of the stamp).
    """
    if not snr > 0:
        raise ValueError(f"snr must be positive, got {snr}")
    return float(np.sqrt(np.sum(np.square(noiseless, dtype=np.float64))) / snr)
