"""Latent-space controls: temperature and truncation of z, interpolation and arithmetic.

* **Temperature** (Kingma & Dhariwal 2018) scales z ~ N(0, I) by T: T < 1 trades
  diversity for typical, cleaner galaxies; T > 1 the reverse.
* **Truncation** (Brock et al. 2019, BigGAN): components with |z_i| > t are redrawn until
  they fall inside; a small t keeps samples near the mode.
* **Interpolation** between two latents: spherical (slerp, the default: Gaussian latents
  concentrate on a shell, and linear midpoints fall inside it, where the decoder has
  seen fewer codes) or linear.
* **Arithmetic** (Radford et al. 2016, DCGAN): z_a - z_b + z_c transfers the difference
  between b and a onto c (e.g. "this galaxy, but as round as that one").

Random draws use one CPU generator per object seeded by (seed, index), so the latent of
object i depends on nothing else (batch size, device, how many are drawn).
"""

from __future__ import annotations

import numpy as np
import torch

from lensforge.errors import InputError

_TRUNCATION_REDRAWS = 1000  # P(|z| > 0.1) = 0.92: 1000 redraws leave a ~1e-36 chance of giving up


def object_generator(seed: int, index: int) -> torch.Generator:
    """CPU generator for object ``index``; seeded from (seed, index) only."""
    # SeedSequence mixes (seed, index) into 63 bits: no overflow for any run seed, no stream reuse.
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> np.uint64(1)))


def draw_latents(n: int, latent_dim: int, temperature: float = 1.0, truncation: float | None = None,
                 seed: int = 0, first_index: int = 0) -> torch.Tensor:
    """Draw ``n`` latents (n, latent_dim) on the CPU: z ~ N(0, I), truncated, times ``temperature``.

    Args:
        n: number of latents (>= 0).
        latent_dim: L.
        temperature: T > 0, standard deviation multiplier.
        truncation: redraw components with |z_i| > truncation (> 0), or None for no truncation.
        seed: run seed; object i uses a generator seeded with (seed, first_index + i).
        first_index: index of the first object, so a set can be drawn in pieces.
    """
    if n < 0:
        raise InputError(f"n must be >= 0, got {n}", n)
    if not temperature > 0:
        raise InputError(f"temperature must be > 0, got {temperature}", temperature)
    if truncation is not None and not truncation > 0:
        raise InputError(f"truncation must be > 0 (or None), got {truncation}", truncation)
    out = torch.empty(n, latent_dim)
    for row in range(n):
        generator = object_generator(seed, first_index + row)
        z = torch.randn(latent_dim, generator=generator)
        if truncation is not None:
            for _ in range(_TRUNCATION_REDRAWS):
                outside = z.abs() > truncation
                if not bool(outside.any()):
                    break
                z = torch.where(outside, torch.randn(latent_dim, generator=generator), z)
        out[row] = z
    return temperature * out


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation of (L,) latents at fraction ``t``; falls back to linear for parallel vectors."""
    a, b = z0.double(), z1.double()
    cos = torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    if float(torch.sin(omega)) < 1e-6:
        return ((1 - t) * a + t * b).to(z0.dtype)
    out = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)
    return out.to(z0.dtype)


def interpolate_latents(z0: torch.Tensor, z1: torch.Tensor, n_steps: int, method: str = "slerp") -> torch.Tensor:
    """``n_steps`` (>= 2) latents from ``z0`` to ``z1`` inclusive: (n_steps, L)."""
    if n_steps < 2:
        raise InputError(f"n_steps must be >= 2, got {n_steps}", n_steps)
    if method not in ("slerp", "linear"):
        raise InputError(f"unknown interpolation {method!r}; valid: ['linear', 'slerp']", method)
    if z0.shape != z1.shape or z0.ndim != 1:
        raise InputError(f"latents must be two (L,) vectors, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    ts = torch.linspace(0.0, 1.0, n_steps, dtype=torch.float64)
    if method == "linear":
        return torch.stack([((1 - t) * z0.double() + t * z1.double()).to(z0.dtype) for t in ts])
    return torch.stack([slerp(z0, z1, float(t)) for t in ts])


def latent_arithmetic(z_a: torch.Tensor, z_b: torch.Tensor, z_c: torch.Tensor) -> torch.Tensor:
    """``z_a - z_b + z_c``: the b -> a difference applied to c (any matching shapes)."""
    if not (z_a.shape == z_b.shape == z_c.shape):
        raise InputError(f"latents must have equal shapes, got {tuple(z_a.shape)}, {tuple(z_b.shape)}, "
                         f"{tuple(z_c.shape)}")
    return z_a - z_b + z_c
