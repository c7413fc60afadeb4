"""``lensforge generate``: sample, interpolate, do latent arithmetic, write a generated training set.

``sample``, ``interpolate`` and ``arithmetic`` write a FITS file into ``<run>/generated/``
(observed noiseless stamps in the primary HDU [ADU]; the intrinsic fine-grid profiles in
``INTRINSIC``; noisy stamps in ``NOISY`` when an S/N is given) with the settings in the header,
and a PNG preview next to it. ``trainset`` writes a whole generated training set
(``<run>/generated/<name>.zarr``: the store schema, with counterfactuals; see
:mod:`lensforge.flows.generated_set`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from lensforge.flows.cli_common import QuietOption, run_command

generate_app = typer.Typer(no_args_is_help=True,
                           help="Generate galaxies with the trained VAE-GAN (GalSim lenses and observes them).")

FileOption = Annotated[str | None, typer.Option("--output", "-o", help="File name inside <run>/generated/.")]


def _output_path(cfg, output: str | None, default: str) -> Path:
    """Outputs stay inside the run directory: a plain file name ending in .fits, nothing else."""
    from lensforge.errors import InputError
    from lensforge.pipeline.rundir import run_layout

    name = output or default
    generated = run_layout(cfg).generated_dir
    if Path(name).name != name or name in (".", "..") or not name.endswith(".fits"):
        raise InputError(f"--output {name!r}: expected a plain file name ending in .fits (written to "
                         f"{generated})", name)
    return generated / name


def _load(cfg):
    from lensforge.flows.stages import generator_dir
    from lensforge.models.checkpoint import load_checkpoint

    return load_checkpoint(generator_dir(cfg), device=cfg.train.device)


def _write(path: Path, products: dict, header: dict, meta: dict, cfg) -> None:
    from astropy.io import fits

    from lensforge.flows.stages import generator_dir, warn_if_undertrained

    warn_if_undertrained(generator_dir(cfg))  # the model produced what is written: say if it is undertrained

    from lensforge.atomic import atomic_path
    from lensforge.pipeline.evaluation.figures import samples_figure

    primary = fits.PrimaryHDU(np.asarray(products["noiseless"], dtype=np.float32))
    primary.header["BUNIT"] = "adu"
    primary.header["PIXSCALE"] = (header.pop("pixel_scale_arcsec"), "[arcsec/pixel]")
    primary.header["MODELSHA"] = meta["weights_sha256"]  # sha256 of the generator weights
    for key, value in header.items():
        primary.header[key[:8].upper()] = value
    hdus = [primary, fits.ImageHDU(np.asarray(products["profiles"], dtype=np.float32), name="INTRINSIC")]
    hdus[1].header["COMMENT"] = "unit-flux intrinsic (pre-PSF, unsheared) profiles on the fine grid"
    if "images" in products:
        hdus.append(fits.ImageHDU(products["images"].astype(np.float32), name="NOISY"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fits.HDUList(hdus).writeto(tmp, output_verify="exception")
    samples_figure(path.with_suffix(".png"), {"observed": products["noiseless"], "intrinsic": products["profiles"]},
                   title=f"{path.stem}: observed (PSF, pixel; noiseless) and intrinsic profiles, asinh stretch")
    typer.echo(f"wrote {path} ({len(products['noiseless'])} stamps) and {path.with_suffix('.png').name}")


@generate_app.command("sample")
@run_command()
def sample(cfg, n: Annotated[int, typer.Option("--n", min=1, max=100_000, help="Number of galaxies.")] = 16,
           flux: Annotated[float, typer.Option(help="Total flux [ADU].")] = 5000.0,
           hlr: Annotated[float | None, typer.Option(help="Half-light radius [arcsec]; unset = any.")] = None,
           g1: Annotated[float, typer.Option(help="Applied reduced shear g1 (GalSim).")] = 0.0,
           g2: Annotated[float, typer.Option(help="Applied reduced shear g2 (GalSim).")] = 0.0,
           snr: Annotated[float | None, typer.Option(help="Add GalSim noise at this S/N.")] = None,
           temperature: Annotated[float, typer.Option(help="Latent temperature T (z ~ N(0, T^2)).")] = 1.0,
           truncation: Annotated[float | None, typer.Option(help="Redraw |z_i| above this.")] = None,
           seed: Annotated[int, typer.Option(help="Seed of the latent draws and noise (>= 0).")] = 0,
           output: FileOption = None) -> None:
    """Draw new galaxies conditioned on flux and size, lensed by (g1, g2) in GalSim."""
    from lensforge.flows.stages import generator_dir
    from lensforge.models.checkpoint import read_meta
    from lensforge.models.vaegan import ModelSettings
    from lensforge.pipeline.generative.generate import check_sample_memory, sample_conditioned

    path = _output_path(cfg, output, "samples.fits")  # checked before the model is loaded and run
    # All n are held at once: sized from the checkpoint's settings before its weights are loaded.
    settings = ModelSettings.from_dict(read_meta(generator_dir(cfg))["model_settings"])
    check_sample_memory(n, settings.stamp_size, settings.fine_size, cfg.limits.memory_budget_gb, what=f"--n {n}")
    model, meta = _load(cfg)
    products = sample_conditioned(model, cfg.survey, n, flux, hlr, g1, g2, snr, temperature, truncation, seed,
                                  device=cfg.train.device, memory_budget_gb=cfg.limits.memory_budget_gb)
    header = {"pixel_scale_arcsec": cfg.survey.pixel_scale_arcsec, "flux": flux, "hlr": hlr if hlr else "any",
              "g1": g1, "g2": g2, "tempera": temperature, "truncati": truncation if truncation else "none",
              "seed": seed, "snr": snr if snr else "none"}
    _write(path, products, header, meta, cfg)


@generate_app.command("interpolate")
@run_command()
def interpolate(cfg, start: Annotated[int, typer.Argument(help="Store object index to start from.")],
                end: Annotated[int, typer.Argument(help="Store object index to end at.")],
                steps: Annotated[int, typer.Option(min=2, max=64, help="Stamps along the path.")] = 8,
                method: Annotated[str, typer.Option(help="slerp or linear.")] = "slerp",
                flux: Annotated[float, typer.Option(help="Flux of every rendered stamp [ADU].")] = 5000.0,
                output: FileOption = None) -> None:
    """Morph one training-set galaxy into another through the latent space."""
    import torch

    from lensforge.models.latent import interpolate_latents
    from lensforge.pipeline.generative.generate import decode_latents, encode_objects, render_profiles
    from lensforge.pipeline.rundir import store_path

    target = _output_path(cfg, output, f"interpolate_{start}_{end}.fits")  # checked before any work
    model, meta = _load(cfg)
    z = torch.from_numpy(encode_objects(model, store_path(cfg), [start, end]))
    path = interpolate_latents(z[0], z[1], steps, method).numpy()
    products = render_profiles(model, decode_latents(model, path), cfg.survey, flux)
    header = {"pixel_scale_arcsec": cfg.survey.pixel_scale_arcsec, "from": start, "to": end, "method": method}
    _write(target, products, header, meta, cfg)


@generate_app.command("arithmetic")
@run_command()
def arithmetic(cfg, a: Annotated[int, typer.Argument(help="Object a.")],
               b: Annotated[int, typer.Argument(help="Object b.")], c: Annotated[int, typer.Argument(help="Object c.")],
               flux: Annotated[float, typer.Option(help="Flux of every rendered stamp [ADU].")] = 5000.0,
               output: FileOption = None) -> None:
    """Latent arithmetic z_a - z_b + z_c; writes [a, b, c, result]."""
    import torch

    from lensforge.models.latent import latent_arithmetic
    from lensforge.pipeline.generative.generate import decode_latents, encode_objects, render_profiles
    from lensforge.pipeline.rundir import store_path

    target = _output_path(cfg, output, f"arithmetic_{a}_{b}_{c}.fits")  # checked before any work
    model, meta = _load(cfg)
    z = torch.from_numpy(encode_objects(model, store_path(cfg), [a, b, c]))
    result = latent_arithmetic(z[0], z[1], z[2])
    products = render_profiles(model, decode_latents(model, torch.cat([z, result[None]]).numpy()), cfg.survey, flux)
    header = {"pixel_scale_arcsec": cfg.survey.pixel_scale_arcsec, "a": a, "b": b, "c": c, "formula": "a - b + c"}
    _write(target, products, header, meta, cfg)


@generate_app.command("trainset")
@run_command(dask=True, option_keys={"backend": "render.backend"})
def trainset(cfg, n: Annotated[int | None, typer.Option("--n", "-n", min=1, help="Number of stamps (default: "
                                                   "simulation.n_objects).")] = None,
             output: Annotated[str, typer.Option("--output", "-o", help="Name of the store in <run>/generated/ "
                                                 "(<output>.zarr).")] = "calibration",
             temperature: Annotated[float, typer.Option(help="Latent temperature T (z ~ N(0, T^2)).")] = 1.0,
             overwrite: Annotated[bool, typer.Option(help="Replace an existing set of that name made with another "
                                                     "model, temperature or configuration.")] = False,
             backend: Annotated[str | None, typer.Option(
                 "--backend", help="galsim (reference, one object at a time) or torch (batched, validated against "
                 "GalSim); default: render.backend.")] = None,
             quiet: QuietOption = False) -> None:
    """Write a generated training set (the store schema, counterfactuals at g +- dg) for shear validation."""
    from lensforge.flows import stages

    result = stages.generate_trainset(cfg, n, output, temperature=temperature, overwrite=overwrite,
                                      progress=not quiet)
    typer.echo(f"generated set: {result['store']}\n{result['n_objects']} stamps in {result['seconds']:.1f} s "
               f"({result['chunks_skipped']} of {result['chunks']} chunks resumed); provenance: {result['sidecar']}")
