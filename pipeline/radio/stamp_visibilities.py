"""Visibilities of radio stamps: the configured track, gridded on the stamp's uv cells.

A radio calibration set stores, beside each stamp's dirty image, the visibilities it was made
from, so that shear can be measured in the visibility domain (RadioLensfit; Rivi et al. 2016,
MNRAS 463, 1881) as well as on the image. lensforge predicts visibilities on the uv cells of the
image grid (``lensforge.pipeline.radio.imaging.predict_visibilities``): every sample of a cell
carries the same sky term, so a cell's samples are stored as one visibility, their mean, with
its inverse-variance weight. For Gaussian thermal noise that mean and its weight are sufficient
statistics: a likelihood over the stored cells equals the one over all samples, and the dirty
image of the stored cells is, to rounding, the dirty image of all the samples. The SKA-MID preset's
4-hour track (926,688 samples) becomes 1,072 cells of a 64-pixel stamp: 13 kB per stamp instead
of 7.4 MB.

A visibility is the Fourier transform of the lensed galaxy's continuous sky brightness [Jy] at the
cell, as GalSim computes it (``drawKImage``; no pixel response, no aliasing: an interferometer
samples the sky's transform, not a pixelised sky). The dirty image is their naturally weighted
image (the sky convolved with the synthesized beam, circular on the stamp, phase centre at pixel
n//2) [Jy/beam], sampled at the pixel centres; the galaxy sits at the stamp's true centre as in
every lensforge stamp. The thermal noise of one sample is set so
that the dirty image has the stamp's pixel noise ``noise_sigma`` [Jy/beam]; it is drawn per
object from its own stream, so ring partners do not share it (a 90-degree turn does not map the
cells onto themselves).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import galsim
import numpy as np

from lensforge.pipeline.config import RadioConfig, SurveyConfig
from lensforge.pipeline.radio.imaging import _image_from_grid, _uv_cells, grid_visibilities, uv_cell_wavelengths
from lensforge.seeding import Stream, numpy_rng


@dataclass(frozen=True, eq=False)
class StampVisibilities:
    """A track's uv samples gathered on the cells of an ``n_pixels``² stamp at ``pixel_scale_arcsec``.

    Attributes:
        uv_wavelengths: (n_cells, 2) cell centres (u, v) [wavelengths]; the conjugate cells are implicit.
        samples_per_cell: (n_cells,) track samples that fall in each cell.
        n_samples: samples on the grid (the sum of ``samples_per_cell``).
        n_pixels, pixel_scale_arcsec: the stamp.
    """

    uv_wavelengths: np.ndarray
    samples_per_cell: np.ndarray
    n_samples: int
    n_pixels: int
    pixel_scale_arcsec: float

    @classmethod
    def from_samples(cls, uv: np.ndarray, n_pixels: int, pixel_scale_arcsec: float) -> StampVisibilities:
        """Gather the samples ``uv`` (n, 2 or 3) [wavelengths] on the stamp's cells (samples off the grid dropped)."""
        k_u, k_v, inside = _uv_cells(uv, n_pixels, pixel_scale_arcsec)
        cells, counts = np.unique(np.stack([k_u[inside], k_v[inside]], 1), axis=0, return_counts=True)
        centres = cells * uv_cell_wavelengths(n_pixels, pixel_scale_arcsec)
        for array in (centres, counts):
            array.setflags(write=False)
        return cls(centres, counts, int(counts.sum()), n_pixels, pixel_scale_arcsec)

    @property
    def n_cells(self) -> int:
        return len(self.samples_per_cell)

    def cell_table(self) -> dict[str, np.ndarray | int]:
        """What a store records of the cells (``create_store(visibility_cells=...)``)."""
        return {"uv_wavelengths": self.uv_wavelengths, "samples_per_cell": self.samples_per_cell,
                "n_samples": self.n_samples}

    def model(self, profile: galsim.GSObject) -> np.ndarray:
        """Noiseless visibilities (n_cells,) [Jy] of a GalSim ``profile`` (surface brightness, flux in Jy)
        centred on the stamp's true centre: ``V(u, v) = ∫ I(l, m) exp(-2πi (u l + v m)) dl dm`` at each cell,
        with the phase centre at pixel n//2 (GalSim's transform, ``drawKImage``, on the cell grid)."""
        n, scale = self.n_pixels, self.pixel_scale_arcsec
        half = n // 2
        # k [rad/arcsec] = 2π u [1/rad] x (rad/arcsec): the cell grid is GalSim's k grid of step 2π / (n scale).
        image = galsim.ImageCD(galsim.BoundsI(-half, n - half - 1, -half, n - half - 1), scale=2 * np.pi / (n * scale))
        # The stamp's true centre lies (n - 1) / 2 - n//2 pixels (-1/2 for even n) from the phase centre.
        offset = ((n - 1) / 2 - half) * scale
        profile.shift(offset, offset).drawKImage(image=image)
        cells = self.cells
        return image.array[cells[:, 1] + half, cells[:, 0] + half]

    @cached_property  # per stamp on the hot path; frozen fields, so computed once
    def cells(self) -> np.ndarray:
        """(n_cells, 2) integer cell indices (k_u, k_v) of ``uv_wavelengths``."""
        return np.rint(self.uv_wavelengths / uv_cell_wavelengths(self.n_pixels, self.pixel_scale_arcsec)
                       ).astype(np.int64)

    def sample_sigma(self, image_noise_sigma: float) -> float:
        """Thermal noise [Jy] of one sample, per real and imaginary part, that gives the naturally weighted
        dirty image a pixel rms of ``image_noise_sigma`` [Jy/beam] (that rms is sigma / sqrt(n_samples))."""
        return float(image_noise_sigma) * np.sqrt(self.n_samples)

    def weights(self, image_noise_sigma: float) -> np.ndarray:
        """Inverse variance (n_cells,) [Jy^-2] of each cell's mean visibility, per real and imaginary part."""
        return self.samples_per_cell / self.sample_sigma(image_noise_sigma) ** 2

    def noise(self, image_noise_sigma: float, run_seed: int, object_id: int) -> np.ndarray:
        """Thermal noise (n_cells,) [Jy] of each cell's mean visibility for object ``object_id``: complex
        Gaussian, sigma / sqrt(samples in the cell) per part, from the object's own stream."""
        draws = numpy_rng(run_seed, Stream.VISIBILITY_NOISE, object_id).standard_normal((2, self.n_cells))
        return (draws[0] + 1j * draws[1]) / np.sqrt(self.weights(image_noise_sigma))

    def dirty(self, visibilities: np.ndarray) -> np.ndarray:
        """Naturally weighted dirty image (n_pixels², float64) [Jy/beam] of cell visibilities (n_cells,):
        each cell counts as its samples, its conjugate cell is implicit (``dirty_image`` of all the samples)."""
        visibilities = np.asarray(visibilities)
        if visibilities.shape != (self.n_cells,):
            raise ValueError(f"visibilities must have shape ({self.n_cells},), got {visibilities.shape}")
        grid, _ = grid_visibilities(visibilities * self.samples_per_cell, self.uv_wavelengths, self.n_pixels,
                                    self.pixel_scale_arcsec)
        return _image_from_grid(grid, self.n_samples)


@lru_cache(maxsize=4)
def stamp_visibilities(survey: SurveyConfig, radio: RadioConfig) -> StampVisibilities:
    """The run's track (``radio``) gathered on the cells of its stamps (``survey``), built once per process."""
    from lensforge.pipeline.radio.beam import uv_coverage

    return StampVisibilities.from_samples(uv_coverage(radio), survey.stamp_size, survey.pixel_scale_arcsec)
