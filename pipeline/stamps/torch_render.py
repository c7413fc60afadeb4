"""Batched rendering of intrinsic profile stacks in torch, beside GalSim's ``InterpolatedImage`` path.

GalSim stays the reference (``render.backend: galsim``). This path computes what GalSim draws for
``Convolve([InterpolatedImage(profile).rotate(θ).lens(g1, g2, mu), psf]).drawImage(method="auto")``
for a whole batch of stamps with a few matrix products, so that generated training sets are not
bound by GalSim's ~5 ms per object. The physics is the same Fourier-space calculation:

* the profile's transform is the exact discrete Fourier sum of its pixels (GalSim reads it from a
  4x padded FFT with a Quintic k-interpolant, which agrees with the exact sum to ~1e-6) times the
  transform of GalSim's Quintic x-interpolant (``quintic_k``);
* lensing by ``A = sqrt(mu) S(g)`` and rotation ``R(θ)`` read it at ``k' = (A R)^T k`` and scale
  the flux by ``mu``;
* the PSF convolved with the pixel is drawn *once* by GalSim (``drawKImage``) and multiplied in;
* the image is the Fourier sum at the pixel centres over the k points GalSim uses (the Nyquist
  square, or up to the PSF's maxk when that lies beyond Nyquist: GalSim's wrapped k image), with
  the period of GalSim's FFT.

Why matrix products: a Fourier sum over a 2-D grid is separable only when ``(A R)^T`` is
triangular. Quarter turns are exact permutations of the profile's pixels, which leave a residual
rotation of at most 45°; the k points are then taken on the lattice ``k = N w`` with ``w`` on the
regular grid and ``N = [[1, 0], [ν, 1]]`` chosen so that ``(A R)^T N`` is upper triangular. Both
the forward sum (profile pixels -> lattice) and the inverse sum (lattice -> stamp pixels) are then
two matrix products and a phase each. The PSF, drawn by GalSim on the regular grid, is read on the
lattice by its exact trigonometric interpolation along ky (its transform along x, ``P(kx, y)``, on
the FFT's period, is the table).

Runs in float64 (agreement with GalSim in ``tests/test_torch_render.py``) or float32 (faster, what
CUDA wants; looser bounds stated there), unchanged on CUDA.
"""

from __future__ import annotations

import math

import galsim
import numpy as np
import torch

from lensforge.errors import InputError

MINIMUM_FFT_SIZE = 128  # GalSim's gsparams.minimum_fft_size: the least period of the drawn image [pixels]
# The least reach [k steps] of a sheared lattice's w_y past the k square: every weakly lensed object
# (|g| up to ~0.07) shares one reach, so a batch is one group of matrix products, not one per power of
# two (small groups cost more per object: their products are too small to keep the cores busy).
MINIMUM_REACH = 8


def quintic_k(k: torch.Tensor) -> torch.Tensor:
    """Fourier transform of GalSim's Quintic interpolant at ``k`` [radians per profile pixel]
    (``galsim.Quintic().kval``; Bernstein & Gruen 2014)."""
    # With h = k / 2: sinc(h)^5 (sinc(h) (55 - 19 h^2) + 2 cos(h) (h^2 - 27)), sinc(h) = sin(h) / h.
    # Written in place on its own temporaries: on a (B, Q, P) lattice this is ~2.5x faster than the
    # textbook expression, which allocates a new tensor per operation.
    half = 0.5 * k
    sinc = torch.sin(half).div_(half).nan_to_num_(nan=1.0)  # 0 / 0 at k = 0
    cos = torch.cos(half)
    squared = half.mul_(half)
    out = torch.mul(squared, -19.0).add_(55.0).mul_(sinc).add_(cos.mul_(squared.sub_(27.0)).mul_(2.0))
    fifth = sinc * sinc
    return out.mul_(fifth.mul_(fifth).mul_(sinc))


def distortion_matrices(g1: torch.Tensor, g2: torch.Tensor, mu: torch.Tensor,
                        rotation_deg: torch.Tensor) -> torch.Tensor:
    """(B, 2, 2) maps from intrinsic to lensed sky coordinates: ``sqrt(mu) S(g) R(θ)``, as GalSim's
    ``rotate(θ)`` followed by ``lens(g1, g2, mu)`` (``shear`` when mu = 1)."""
    norm = torch.sqrt(mu / (1.0 - g1 ** 2 - g2 ** 2))
    shear = torch.stack([torch.stack([1 + g1, g2], -1), torch.stack([g2, 1 - g1], -1)], -2)
    theta = torch.deg2rad(rotation_deg)
    cos, sin = torch.cos(theta), torch.sin(theta)
    rotation = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    return norm[:, None, None] * shear @ rotation


def _unit_phasors(angle: torch.Tensor) -> torch.Tensor:
    """``exp(i angle)`` (complex128) of a float64 tensor."""
    return torch.polar(torch.ones_like(angle), angle)


def _phases(angle_per_unit: torch.Tensor, first: torch.Tensor, second: torch.Tensor,
            dtype: torch.dtype) -> torch.Tensor:
    """``exp(-i c_b first_r second_c)`` (B, R, C) for per-object ``c_b`` (B,); ``second`` is an arithmetic
    progression ``s_0 + c Δ``. Written ``c = L hi + lo``, the phase is a product of three factors with
    ~2 sqrt(C) exponentials per row instead of C; each factor is exact in float64 before the cast
    (angles reach ~1e3 radians, of which float32 would lose 1e-4)."""
    count = second.shape[0]
    step = float(second[1] - second[0]) if count > 1 else 0.0
    low = max(1, math.isqrt(count - 1) + 1)
    high = -(-count // low)
    rate = angle_per_unit[:, None] * first[None, :]  # (B, R) [radians per unit of second]

    def factor(offsets: torch.Tensor) -> torch.Tensor:
        angle = rate[:, :, None] * offsets[None, None, :]
        if dtype == torch.complex64:  # reduced exactly in float64, then sine and cosine in float32
            angle = torch.remainder(angle, 2 * math.pi).to(torch.float32)
        return torch.polar(torch.ones_like(angle), -angle).to(dtype)

    device = second.device
    offsets_low = torch.arange(low, dtype=torch.float64, device=device) * step
    offsets_high = torch.arange(high, dtype=torch.float64, device=device) * (step * low)
    phases = (factor(second[:1]) * factor(offsets_high))[:, :, :, None] * factor(offsets_low)[:, :, None, :]
    return phases.reshape(*rate.shape, high * low)[:, :, :count]


def _both_halves(products: torch.Tensor, half: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts (B, 2 half - 1, P) of ``sum_l z_ql c_lp`` over rows q = -(half-1) .. half-1,
    from the four real products ``products`` (B, 2 half, 2P) = [a; b] @ [c | d] of the rows q >= 0
    (z = a + ib) and the columns (c + id); the row -q is the conjugate of row q."""
    width = products.shape[2] // 2
    ac, ad = products[:, :half, :width], products[:, :half, width:]
    bc, bd = products[:, half:, :width], products[:, half:, width:]
    real = torch.cat([torch.flip((ac + bd)[:, 1:], (1,)), ac - bd], 1)
    imaginary = torch.cat([torch.flip((ad - bc)[:, 1:], (1,)), ad + bc], 1)
    return real, imaginary


class _PeriodGrid:
    """What depends on the period of the drawn image: the k step, the k square, the PSF table, the x sums."""

    def __init__(self, renderer: TorchStampRenderer, period: int):
        observed, scale, device = renderer.observed, renderer.pixel_scale, renderer.device
        self.period = period
        self._tables: dict[tuple[str, int], torch.Tensor] = {}
        self.dk = 2 * math.pi / (period * scale)  # [radians / arcsec]
        # GalSim draws the k image over the Nyquist square, or up to maxk (wrapped) when that is beyond.
        k_half = math.ceil(observed.maxk / self.dk) if observed.maxk >= math.pi / scale else period // 2
        self.k_half = k_half
        psf_k = observed.drawKImage(nx=2 * k_half + 1, ny=2 * k_half + 1, scale=self.dk).array[:, k_half:]
        # P(kx, y): the PSF's transform along ky inverted onto the period, so that it can be read at any
        # ky as a trigonometric sum (exact for a PSF wrapped on the period, as GalSim's image is).
        samples = 2 * k_half + 1
        index = torch.arange(-k_half, k_half + 1, dtype=torch.float64)
        self.table_y = (index * (period * scale / samples)).to(device)
        inverse = _unit_phasors(2 * math.pi * torch.outer(index, index) / samples) / samples
        self.psf_regular = torch.from_numpy(psf_k).to(device, renderer.complex_dtype)  # (2 k_half + 1, P)
        self.psf_table = (inverse @ torch.from_numpy(psf_k)).to(device, renderer.complex_dtype)
        self.w_x = torch.arange(k_half + 1, dtype=torch.float64, device=device) * self.dk  # kx >= 0 (real image)
        # The fixed inverse sum over w_x, with the conjugate half's weight 2: exp(i w_p x_n) (P, W).
        weight = torch.full((k_half + 1, 1), 2.0, dtype=torch.float64, device=device)
        weight[0] = 1.0
        self.inverse_x = (weight * _unit_phasors(torch.outer(self.w_x, renderer.pixel_positions))
                          ).to(renderer.complex_dtype)
        # An unlensed, unturned profile (a pair's noise reference) is read on the regular grid itself: its
        # phases and Quintic factors are the same for every object, so its transform is two plain products
        # (over the rows w_y >= 0 only: a real profile's rows at -w_y are their conjugates).
        w_y = torch.arange(-k_half, k_half + 1, dtype=torch.float64, device=device) * self.dk
        rows = _unit_phasors(-torch.outer(w_y[k_half:], renderer.fine_positions))  # (M+1, F): exp(-i w_q y_j)
        self.regular_rows = torch.cat([rows.real, rows.imag]).to(renderer.dtype)  # (2(M+1), F), real
        columns = _unit_phasors(-torch.outer(renderer.fine_positions, self.w_x))  # (F, P): exp(-i x_l w_p)
        self.regular_columns = torch.cat([columns.real, columns.imag], 1).to(renderer.dtype)  # (F, 2P), real
        step = renderer.fine_scale
        self.regular_quintic = (quintic_k(w_y * step)[:, None] * quintic_k(self.w_x * step)[None, :]).to(
            renderer.dtype)  # (Q, P)


    def lattice_phases(self, name: str, w_y: torch.Tensor, build) -> torch.Tensor:
        """A phase table that depends on the lattice rows ``w_y`` alone, not on any object: ``build()``
        the first time a row count asks for it, then the same tensor."""
        key = (name, w_y.shape[0])
        if key not in self._tables:
            self._tables[key] = build()
        return self._tables[key]


class TorchStampRenderer:
    """Renders batches of intrinsic profiles, lensed and observed, as GalSim draws them.

    ``psf`` is the survey PSF (a GalSim object, drawn once with the pixel); profiles are
    (F, F) images at ``fine_pixel_scale_arcsec`` whose values sum to the flux (GalSim's
    ``InterpolatedImage`` convention, centred on the image's true centre); stamps are
    ``stamp_size``² at ``pixel_scale_arcsec``. ``dtype`` is the real precision of the sums.
    """

    def __init__(self, psf: galsim.GSObject, stamp_size: int, pixel_scale_arcsec: float, fine_size: int,
                 fine_pixel_scale_arcsec: float, dtype: torch.dtype = torch.float64, device: str = "cpu"):
        if dtype not in (torch.float64, torch.float32):
            raise InputError(f"the torch renderer computes in float64 or float32, got {dtype}", dtype)
        if stamp_size < 2 or fine_size < 2:
            raise InputError(f"stamp and profile sizes must be >= 2 pixels, got {stamp_size} and {fine_size}")
        self.stamp_size, self.pixel_scale = stamp_size, pixel_scale_arcsec
        self.fine_size, self.fine_scale = fine_size, fine_pixel_scale_arcsec
        self.dtype, self.device = dtype, torch.device(device)
        self.complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        self.observed = galsim.Convolve([psf, galsim.Pixel(pixel_scale_arcsec)])
        fine = torch.arange(fine_size, dtype=torch.float64, device=self.device) - (fine_size - 1) / 2
        self.fine_positions = fine * fine_pixel_scale_arcsec  # about the profile's true centre [arcsec]
        pixel = torch.arange(stamp_size, dtype=torch.float64, device=self.device) - (stamp_size - 1) / 2
        self.pixel_positions = pixel * pixel_scale_arcsec  # stamp pixel centres about its true centre
        self._grids: dict[int, _PeriodGrid] = {}
        # Objects per set of products: on a CPU the intermediates of ~32 objects stay in cache, and larger
        # groups spill to memory; a GPU wants them all at once.
        self.group_objects = 32 if self.device.type == "cpu" else 1 << 16

    def flux_radii(self, profiles) -> np.ndarray:
        """Per profile (B, F, F), the radius [profile pixels] holding 1 - folding_threshold of its flux about
        its centre: what GalSim's ``InterpolatedImage`` sizes its stepk by (computed by GalSim)."""
        threshold = 1.0 - self.observed.gsparams.folding_threshold
        profiles = torch.as_tensor(profiles).detach().to("cpu", torch.float64).numpy()
        radius = np.empty(len(profiles))
        for i, profile in enumerate(profiles):
            image = galsim.Image(profile)
            image.setCenter(0, 0)
            radius[i] = galsim._galsim.CalculateSizeContainingFlux(image._image, threshold * float(profile.sum()))
        return radius

    def object_periods(self, profiles, g: np.ndarray, mu: np.ndarray, flux_radius=None) -> np.ndarray:
        """Each object's FFT period (:meth:`periods`) at shear |g| and magnification ``mu``, from
        ``flux_radius`` when given; else without :meth:`flux_radii` when even the profile grid's half-diagonal
        leaves every period at what a point would get (the usual case: no flux radius can change it)."""
        if flux_radius is not None:
            return self.periods(np.asarray(flux_radius, dtype=np.float64), g, mu)
        count = len(profiles)
        floor = self.periods(np.zeros(count), g, mu)
        bound = np.full(count, math.hypot(self.fine_size / 2, self.fine_size / 2))
        if np.array_equal(self.periods(bound, g, mu), floor):
            return floor
        return self.periods(self.flux_radii(profiles), g, mu)

    def periods(self, radius: np.ndarray, g: np.ndarray, mu: np.ndarray) -> np.ndarray:
        """GalSim's FFT size [pixels] for each object, as ``drawImage`` picks it: from the stepk of the
        profile's ``InterpolatedImage`` (its ``flux_radii`` plus the Quintic's reach), widened by the
        lensing's major axis and combined with the PSF's and the pixel's."""
        stepk = math.pi / (np.hypot(radius, galsim.Quintic().xrange) * self.fine_scale)
        stepk = stepk * np.sqrt(1 - g ** 2) / (np.sqrt(mu) * (1 + g))  # / the major axis of sqrt(mu) S(g)
        stepk = (stepk ** -2.0 + self.observed.stepk ** -2.0) ** -0.5  # GalSim's stepk of a convolution
        size = np.ceil(2 * math.pi / (self.pixel_scale * stepk) * (1 - 1e-12)).astype(int)
        size = 2 * ((size + 1) // 2)
        return np.array([max(galsim.Image.good_fft_size(max(int(n), 2 * self.stamp_size)), MINIMUM_FFT_SIZE)
                         for n in size])

    def grid(self, period: int) -> _PeriodGrid:
        """The k grid, PSF table and inverse sums of an image of ``period`` pixels (built once)."""
        if period not in self._grids:
            self._grids[period] = _PeriodGrid(self, period)
        return self._grids[period]

    def render(self, profiles, flux, g1, g2, mu=None, rotation_deg=None, flux_radius=None) -> torch.Tensor:
        """Noiseless stamps (B, H, W) [ADU, ``dtype``] of profiles (B, F, F) of total ``flux`` [ADU]
        before lensing, rotated by ``rotation_deg`` (counter-clockwise) and lensed by (g1, g2, mu),
        convolved with the PSF and the pixel. Arrays or tensors; per-object values (B,) or scalars.
        ``flux_radius`` (B,): radii that set the objects' periods (``flux_radii``), when the caller has them;
        None: as :meth:`object_periods` decides."""
        profiles = torch.as_tensor(profiles, device=self.device).to(self.dtype)
        if profiles.ndim != 3 or profiles.shape[1:] != (self.fine_size, self.fine_size):
            raise InputError(f"profiles must be (B, {self.fine_size}, {self.fine_size}), got {tuple(profiles.shape)}")
        batch = profiles.shape[0]

        def per_object(values, default):
            values = torch.as_tensor(default if values is None else values, dtype=torch.float64)
            return torch.broadcast_to(values.to(self.device), (batch,))

        flux, g1, g2 = per_object(flux, 1.0), per_object(g1, 0.0), per_object(g2, 0.0)
        mu, rotation = per_object(mu, 1.0), per_object(rotation_deg, 0.0)
        if not bool(((g1 ** 2 + g2 ** 2) < 1).all()) or not bool((mu > 0).all()):
            raise InputError("every object needs |g| < 1 and mu > 0")
        # Quarter turns permute pixels exactly; what is left is a rotation within (-45°, 45°].
        turns = torch.round(rotation / 90.0)
        profiles = self._quarter_turns(profiles, turns)
        forward = distortion_matrices(g1, g2, mu, rotation - 90.0 * turns).transpose(1, 2)  # k' = forward k
        nu = -forward[:, 1, 0] / forward[:, 1, 1]
        upper = torch.stack([forward[:, 0, 0] + forward[:, 0, 1] * nu, forward[:, 0, 1], forward[:, 1, 1]], 1)
        scale = (flux * mu / profiles.sum(dim=(1, 2)).double()).to(self.dtype)
        # Each object is drawn on GalSim's FFT period for it, and its w_y reaches past the k square by
        # |ν| k_max so that the sheared columns still cover it (rounded up to a power of two). Objects
        # are rendered in groups of equal period and reach, so that a stamp's bytes do not depend on
        # the other objects in its batch.
        periods = torch.from_numpy(self.object_periods(profiles, torch.hypot(g1, g2).cpu().numpy(), mu.cpu().numpy(),
                                                       flux_radius)).to(self.device)
        out = torch.empty((batch, self.stamp_size, self.stamp_size), dtype=self.dtype, device=self.device)
        for period in torch.unique(periods).tolist():
            grid = self.grid(int(period))
            needed = torch.ceil(nu.abs() * grid.k_half - 1e-9).clamp(min=0)
            reach = torch.where(needed > 0, 2.0 ** torch.ceil(torch.log2(needed.clamp(min=MINIMUM_REACH))),
                                needed).long()
            reach = torch.where(periods == period, reach, -1)
            for extra in torch.unique(reach[reach >= 0]).tolist():
                w_y = torch.arange(-grid.k_half - extra, grid.k_half + extra + 1, dtype=torch.float64,
                                   device=self.device) * grid.dk
                group = torch.nonzero(reach == extra).reshape(-1)
                for chosen in group.split(self.group_objects):
                    values = self._transform(profiles[chosen], w_y, grid, upper[chosen], scale[chosen])
                    values = values * self._psf_on_lattice(w_y, grid, nu[chosen])
                    out[chosen] = self._pixel_sums(values, w_y, grid, nu[chosen])
        return out

    @staticmethod
    def _quarter_turns(profiles: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
        """Each profile turned counter-clockwise by its ``turns`` x 90° about its true centre (exact)."""
        out = profiles.clone()
        for quarter in (1, 2, 3):
            chosen = torch.remainder(turns, 4) == quarter
            if bool(chosen.any()):
                # Array rows are y: a counter-clockwise turn on the sky is rot90 towards -x.
                out[chosen] = torch.rot90(profiles[chosen], k=quarter, dims=(2, 1))
        return out

    def _transform(self, profiles, w_y, grid: _PeriodGrid, upper, scale) -> torch.Tensor:
        """The profiles' scaled transforms (B, Q, P) on the lattice: the regular grid's shared products for
        objects neither lensed nor turned (``upper`` exactly (1, 0, 1)), :meth:`_profile_transform` for the rest.
        Which path an object takes depends on that object alone, so its bytes do not depend on its batch."""
        identity = (upper == torch.tensor([1.0, 0.0, 1.0], dtype=upper.dtype, device=upper.device)).all(1)
        if not bool(identity.any()) or w_y.shape[0] != grid.regular_quintic.shape[0]:
            return self._profile_transform(profiles, w_y, grid, upper, scale)
        if bool(identity.all()):
            return self._regular_transform(profiles, grid, scale)
        values = torch.empty((len(profiles), w_y.shape[0], grid.w_x.shape[0]), dtype=self.complex_dtype,
                             device=self.device)
        values[identity] = self._regular_transform(profiles[identity], grid, scale[identity])
        rest = ~identity
        values[rest] = self._profile_transform(profiles[rest], w_y, grid, upper[rest], scale[rest])
        return values

    @staticmethod
    def _regular_transform(profiles, grid: _PeriodGrid, scale) -> torch.Tensor:
        """``scale`` (B,) times the transforms (B, Q, P) of unlensed, unturned profiles on the regular grid."""
        half = grid.regular_rows.shape[0] // 2
        summed = torch.matmul(grid.regular_rows, profiles)  # (B, 2(M+1), F): real and imaginary row sums
        real, imaginary = _both_halves(summed @ grid.regular_columns, half)
        weight = grid.regular_quintic[None] * scale[:, None, None]
        return torch.complex(real * weight, imaginary * weight)

    def _profile_transform(self, profiles, w_y, grid: _PeriodGrid, upper, scale) -> torch.Tensor:
        """``scale`` (B,) times the profiles' transforms (B, Q, P) at k' = (u_x w_x + u_xy w_y, u_y w_y) on the
        regular (w_y, w_x) grid (``upper`` (B, 3) holds u_x, u_xy, u_y): two matrix products over the pixels
        and a phase, times the Quintic x-interpolant's transform. ``w_y`` is symmetric about 0; the sums run
        over w_y >= 0, whose conjugates (a real profile) give the rows at -w_y."""
        x = y = self.fine_positions
        # Ring partners (a quarter turn apart, the same shear) share their lattice: the phase and Quintic
        # tables are built once per distinct ``upper`` and read by each object (each table's rows are computed
        # as for any other object, so a stamp's bytes do not depend on whether its partner is in the batch).
        distinct, which = torch.unique(upper, dim=0, return_inverse=True)
        if len(distinct) == len(upper):  # nothing shared: the objects' own order, no reads
            distinct, which = upper, None

        def per_object(table: torch.Tensor) -> torch.Tensor:
            return table if which is None else torch.index_select(table, 0, which)

        upper_x, upper_xy, upper_y = distinct.unbind(1)
        half = (w_y.shape[0] + 1) // 2
        rows = _phases(upper_y, w_y[-half:], y, self.complex_dtype)  # (U, M+1, F): exp(-i u_y w_q y_j)
        # Real and imaginary rows as one real product (a contiguous (U, 2(M+1), F) stack): the real
        # profile needs no complex arithmetic here, and strided .real / .imag views would be copied anyway.
        stacked = torch.view_as_real(rows).permute(0, 3, 1, 2).reshape(len(rows), 2 * half, rows.shape[2])
        summed = per_object(stacked) @ profiles
        partial = torch.complex(summed[:, :half], summed[:, half:])  # (B, M+1, F): sum over rows j
        partial = partial * per_object(_phases(upper_xy, w_y[-half:], x, self.complex_dtype))  # exp(-i u_xy w_q x_l)
        columns = _phases(upper_x, x, grid.w_x, self.complex_dtype)  # (U, F, P): exp(-i u_x w_p x_l)
        products = (torch.view_as_real(partial).permute(0, 3, 1, 2).reshape(len(profiles), 2 * half, -1)
                    @ per_object(torch.cat([columns.real, columns.imag], 2)))  # (B, 2(M+1), 2P)
        real, imaginary = _both_halves(products, half)
        step = self.fine_scale  # k' in radians per profile pixel
        kx = ((upper_x * step).to(self.dtype)[:, None, None] * grid.w_x.to(self.dtype)[None, None, :]
              + (upper_xy * step).to(self.dtype)[:, None, None] * w_y.to(self.dtype)[None, :, None])
        ky = (upper_y * step)[:, None] * w_y[None, :]
        weight = per_object(quintic_k(kx) * quintic_k(ky).to(self.dtype)[:, :, None]) * scale[:, None, None]
        return torch.complex(real * weight, imaginary * weight)

    def _psf_on_lattice(self, w_y: torch.Tensor, grid: _PeriodGrid, nu: torch.Tensor) -> torch.Tensor:
        """The PSF x pixel transform (B, Q, P) at k = (w_x, w_y + ν w_x), with zeros outside GalSim's k square."""
        distinct, which = torch.unique(nu, return_inverse=True)  # ring partners and counterfactual pairs share ν
        if bool((distinct == 0).all()) and w_y.shape[0] == grid.psf_regular.shape[0]:
            return grid.psf_regular.expand(len(nu), -1, -1)  # the unsheared lattice is GalSim's own grid
        shifted = grid.psf_table * _phases(distinct, grid.table_y, grid.w_x, self.complex_dtype)  # (U, M, P)
        read = grid.lattice_phases("psf_read", w_y, lambda: _phases(
            torch.ones_like(nu[:1]), w_y, grid.table_y, self.complex_dtype)[0])  # (Q, M): exp(-i w_q y_m)
        psf = (read @ shifted)[which]
        # Zeros outside the k square: |w_y + ν w_x| > k_half dk. Only rows within max|ν| k_half of its edge (or
        # past it) can hold such points, so only they are tested (the others are all inside).
        limit = (grid.k_half + 1e-9) * grid.dk
        centre = (w_y.shape[0] - 1) // 2
        inner = grid.k_half - math.ceil(float(nu.abs().max()) * grid.k_half)  # rows |q| <= inner: all inside
        for rows in (slice(0, max(centre - inner, 0)), slice(max(centre + inner + 1, 0), None)):
            k_y = w_y[rows][None, :, None] + nu[:, None, None] * grid.w_x[None, None, :]
            psf[:, rows] *= k_y.abs() <= limit
        return psf

    def _pixel_sums(self, values: torch.Tensor, w_y: torch.Tensor, grid: _PeriodGrid, nu: torch.Tensor) -> torch.Tensor:
        """The Fourier sums at the stamp's pixel centres (B, H, W): exp(i (w_x x + (w_y + ν w_x) y))."""
        inverse_y = grid.lattice_phases("inverse_y", w_y, lambda: _phases(
            -torch.ones_like(nu[:1]), self.pixel_positions, w_y, self.complex_dtype)[0])  # (H, Q): exp(i y_h w_q)
        partial = inverse_y @ values  # (B, H, P): sum over w_y
        if bool((nu != 0).any()):  # the lattice's shear; none for unlensed, unturned objects
            distinct, which = torch.unique(nu, return_inverse=True)  # ring partners share ν
            partial = partial * _phases(-distinct, self.pixel_positions, grid.w_x, self.complex_dtype)[which]
        image = partial.real @ grid.inverse_x.real - partial.imag @ grid.inverse_x.imag  # (B, H, W), real part
        return image / grid.period ** 2  # dk² s² / (2π)²
