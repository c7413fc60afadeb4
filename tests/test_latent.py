"""Latent controls: temperature, truncation, per-object seeding, interpolation and arithmetic."""

import pytest
import torch

from lensforge.errors import InputError
from lensforge.models.latent import draw_latents, interpolate_latents, latent_arithmetic, slerp


def test_temperature_scales_the_same_draws_and_truncation_bounds_them():
    base = draw_latents(50, 16, seed=3)
    assert torch.equal(draw_latents(50, 16, temperature=0.5, seed=3), 0.5 * base)
    assert base.abs().max() > 2.0  # 800 standard normals: some beyond 2
    truncated = draw_latents(50, 16, truncation=0.5, seed=3)
    assert truncated.abs().max() <= 0.5
    inside = base.abs() <= 0.5
    assert torch.equal(truncated[inside], base[inside])  # only components outside are redrawn
    assert abs(float(base.std()) - 1.0) < 0.1


def test_each_latent_depends_only_on_seed_and_index():
    whole = draw_latents(10, 8, seed=7)
    parts = torch.cat([draw_latents(4, 8, seed=7), draw_latents(6, 8, seed=7, first_index=4)])
    assert torch.equal(whole, parts)
    assert not torch.equal(whole, draw_latents(10, 8, seed=8))


def test_interpolation_endpoints_and_norm():
    z0, z1 = draw_latents(2, 32, seed=1)
    path = interpolate_latents(z0, z1, 5)
    assert path.shape == (5, 32)
    torch.testing.assert_close(path[0], z0)
    torch.testing.assert_close(path[-1], z1)
    # slerp between two vectors of equal norm keeps that norm; linear midpoints fall inside the shell.
    a, b = z0 / z0.norm() * 5, z1 / z1.norm() * 5
    assert abs(float(slerp(a, b, 0.5).norm()) - 5.0) < 1e-4
    linear = interpolate_latents(a, b, 3, method="linear")
    assert float(linear[1].norm()) < 5.0
    torch.testing.assert_close(linear[1], (a + b) / 2)
    torch.testing.assert_close(slerp(a, a, 0.3), a)  # parallel vectors fall back to linear


def test_arithmetic_and_bad_input():
    a, b, c = torch.ones(4), torch.full((4,), 2.0), torch.full((4,), 5.0)
    assert torch.equal(latent_arithmetic(a, b, c), torch.full((4,), 4.0))
    with pytest.raises(InputError, match="equal shapes"):
        latent_arithmetic(a, b, torch.ones(3))
    with pytest.raises(InputError, match="temperature"):
        draw_latents(2, 4, temperature=0)
    with pytest.raises(InputError, match="truncation"):
        draw_latents(2, 4, truncation=-1)
    with pytest.raises(InputError, match="n_steps"):
        interpolate_latents(a, b, 1)
    with pytest.raises(InputError, match="unknown interpolation"):
        interpolate_latents(a, b, 3, method="cubic")
