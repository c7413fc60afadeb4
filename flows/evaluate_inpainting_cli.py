"""``lensforge evaluate-inpainting``: score whole-image in-painters on FITS images with test holes.

    lensforge evaluate-inpainting data/lsst/*.fits data/cosmos/*.fits --out eval/
    lensforge evaluate-inpainting img.fits --mask holes.fits --method biharmonic,interpolate --out eval/
    lensforge evaluate-inpainting img.fits --model runs/x/models/image-v001 --out eval/ --overwrite

Each image is read from a FITS file (the SCIENCE extension if there is one, else the primary
HDU, else the first image extension; degenerate axes of a radio cube, (1, 1, N, N), are
squeezed). Pixels already bad are those of a nonzero MASK extension and the NaN or infinite
ones. The noise sigma is the median square root of a VARIANCE extension where there is one, else
1.4826 x the median absolute deviation of the good pixels. Test holes come from one ``--mask``
FITS per image (nonzero = hide), else from
:func:`lensforge.pipeline.datasets.corpus.evaluation_mask` (seeded by ``--seed`` and the image's
index). Metrics are pooled per group: the name of each image's directory, or ``--group``.
The evaluation itself is :mod:`lensforge.pipeline.evaluation.image_inpainting`.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from lensforge.errors import InputError, ModelError, one_line
from lensforge.flows.cli_common import QuietOption, exit_on_bad_input

METHODS = ("model", "biharmonic", "interpolate")
MAD_TO_SIGMA = 1.4826


# --- reading the inputs ----------------------------------------------------------------------------

def _squeeze_2d(data: np.ndarray, path: Path, what: str) -> np.ndarray:
    array = np.squeeze(np.asarray(data))
    if array.ndim != 2 or 0 in array.shape:
        raise InputError(f"{path}: {what} must be a 2-D image (degenerate axes are squeezed); got shape "
                         f"{np.shape(data)}", str(path))
    return array


def _open_fits(path: Path, what: str):
    from astropy.io import fits

    if not path.exists():
        raise InputError(f"{path}: no such {what} file", str(path))
    if not path.is_file():
        raise InputError(f"{path}: not a file", str(path))
    try:
        hdus = fits.open(path, memmap=False)
        hdus.verify("silentfix")
        _ = [hdu.header for hdu in hdus]  # reads every header: a truncated file fails here, not later
        return hdus
    except Exception as err:  # astropy raises OSError, ValueError, TypeError... on non-FITS input
        raise InputError(f"{path}: not a readable FITS file ({one_line(err, 120)})", str(path)) from None


def _image_hdu(hdus, path: Path):
    """SCIENCE if present, else the primary HDU if it has data, else the first image extension with data."""
    if "SCIENCE" in hdus:
        return hdus["SCIENCE"]
    for hdu in hdus:
        if getattr(hdu, "is_image", False) and hdu.data is not None:
            return hdu
    raise InputError(f"{path}: holds no image (no SCIENCE extension and no HDU with image data)", str(path))


def _data(hdu, path: Path, what: str) -> np.ndarray:
    try:
        data = hdu.data
    except Exception as err:
        raise InputError(f"{path}: cannot read the {what} ({one_line(err, 120)})", str(path)) from None
    if data is None:
        raise InputError(f"{path}: the {what} HDU has no data", str(path))
    if not np.issubdtype(np.asarray(data).dtype, np.number):
        raise InputError(f"{path}: the {what} is not a numeric image", str(path))
    return _squeeze_2d(data, path, what)


def read_image(path: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """``(image float64, bad bool, noise_sigma)`` of a FITS image; InputError in one line otherwise."""
    path = Path(path)
    with _open_fits(path, "image") as hdus:
        image = _data(_image_hdu(hdus, path), path, "image").astype(np.float64)
        bad = ~np.isfinite(image)
        if "MASK" in hdus:
            mask = _data(hdus["MASK"], path, "MASK extension")
            if mask.shape != image.shape:
                raise InputError(f"{path}: MASK extension shape {mask.shape} does not match the image "
                                 f"{image.shape}", str(path))
            bad |= mask != 0
        good = ~bad
        if not good.any():
            raise InputError(f"{path}: every pixel is bad (NaN or flagged in MASK)", str(path))
        sigma = None
        if "VARIANCE" in hdus:
            variance = _data(hdus["VARIANCE"], path, "VARIANCE extension").astype(np.float64)
            if variance.shape != image.shape:
                raise InputError(f"{path}: VARIANCE extension shape {variance.shape} does not match the image "
                                 f"{image.shape}", str(path))
            usable = variance[good & np.isfinite(variance) & (variance > 0)]
            if usable.size:
                sigma = float(np.median(np.sqrt(usable)))
    if sigma is None:
        values = image[good]
        sigma = float(MAD_TO_SIGMA * np.median(np.abs(values - np.median(values))))
    if not np.isfinite(sigma) or sigma <= 0:
        raise InputError(f"{path}: cannot estimate the noise sigma (got {sigma}); the image is constant", str(path))
    return image, bad, sigma


def read_mask(path: Path, shape: tuple[int, ...], image_path: Path) -> np.ndarray:
    """The test holes of a ``--mask`` FITS (nonzero = hide), checked against the image's shape."""
    path = Path(path)
    with _open_fits(path, "mask") as hdus:
        hdu = next((h for h in hdus if getattr(h, "is_image", False) and h.data is not None), None)
        if hdu is None:
            raise InputError(f"{path}: holds no mask image", str(path))
        mask = _data(hdu, path, "mask")
    if mask.shape != tuple(shape):
        raise InputError(f"{path}: mask shape {mask.shape} does not match image {image_path} of shape "
                         f"{tuple(shape)}", str(path))
    return np.where(np.isfinite(mask), mask, 1) != 0


def _drawn_mask(image: np.ndarray, bad: np.ndarray, sigma: float, seed: int, index: int) -> np.ndarray:
    try:
        from lensforge.pipeline.datasets.corpus import evaluation_mask
    except ImportError as err:
        raise InputError(f"cannot draw evaluation masks ({one_line(err, 100)}); pass one --mask per image",
                         None) from None
    visible = image[~bad]
    signal = np.where(bad, 0.0, (image - np.median(visible)) / sigma)
    mask = np.asarray(evaluation_mask(image.shape, seed, index, signal=signal))
    if mask.shape != image.shape:
        raise InputError(f"evaluation_mask returned shape {mask.shape} for an image of shape {image.shape}",
                         mask.shape)
    return mask != 0


def parse_methods(text: str) -> list[str]:
    names = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise InputError(f"unknown in-painting method {unknown[0]!r}: expected a comma-separated list of "
                         f"{', '.join(METHODS)}", unknown[0])
    if not names:
        raise InputError(f"--method names no method: expected a comma-separated list of {', '.join(METHODS)}", text)
    return names


def _inpainters(methods: list[str], model_path: Path | None, device: str = "auto"
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``({method: in-painter}, model provenance)``; the model is loaded only when asked for."""
    from lensforge.pipeline.inpaint.images import image_inpainter

    inpainters: dict[str, Any] = {}
    model_info: dict[str, Any] = {}
    for method in methods:
        if method != "model":
            inpainters[method] = image_inpainter(method)
            continue
        if model_path is not None and not Path(model_path).exists():
            raise InputError(f"{model_path}: no such model directory", str(model_path))
        try:
            from lensforge.models.image_inpainter import load_image_inpainter
        except ImportError as err:
            raise ModelError(f"the image in-painting model is not available ({one_line(err, 120)}); "
                             "leave model out of --method", None) from None
        model, card = load_image_inpainter(model_path, device=device)
        inpainters[method] = image_inpainter("model", model=model, card=card)
        parameter = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
        model_info = {"path": None if model_path is None else str(model_path),
                      "device": None if parameter is None else str(parameter.device),
                      "card": card if isinstance(card, dict) else None}
    return inpainters, model_info


def _cases(images: list[Path], masks: list[Path], seed: int, group: str | None):
    """The :class:`Case` of each image, built as the evaluation reaches it (one image in memory at a time)."""
    from lensforge.pipeline.evaluation.image_inpainting import Case

    names = [str(path) for path in images]
    for index, path in enumerate(images):
        image, bad, sigma = read_image(path)
        mask = read_mask(masks[index], image.shape, path) if masks else _drawn_mask(image, bad, sigma, seed, index)
        name = names[index] if names.count(names[index]) == 1 else f"{names[index]}[{index}]"
        yield Case(name=name, truth=image, mask=mask, noise_sigma=sigma, bad=bad,
                   group=group if group is not None else (path.resolve().parent.name or "images"))


class _Sized:
    """An iterable with a length, so the progress bar knows the total."""

    def __init__(self, iterable, length: int):
        self.iterable, self.length = iterable, length

    def __iter__(self):
        return iter(self.iterable)

    def __len__(self) -> int:
        return self.length


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _table(result: dict[str, Any]) -> str:
    header = (f"{'group':<16} {'method':<12} {'images':>6} {'RMSE':>7} {'source':>7} {'visible':>7} {'sky':>7} "
              f"{'flux':>7} {'cov1':>6} {'cov2':>6} {'cov1src':>7} {'s/MP':>8} {'source/biharmonic [68%]':>24}")
    lines = [header, "-" * len(header)]
    blocks = list(result["groups"].items())
    if len(blocks) > 1:
        blocks.append(("(all)", result["overall"]))
    for group, block in blocks:
        for method, m in block["methods"].items():
            ratio = block.get("ratios_vs_biharmonic", {}).get(method, {}).get("rmse_source")
            interval = block.get("ratio_intervals_vs_biharmonic", {}).get(method, {}).get("rmse_source")
            versus = "" if ratio is None else f"{ratio:.2f}" + (
                f" [{interval[0]:.2f}-{interval[1]:.2f}]" if interval else "")
            lines.append(f"{group[:16]:<16} {method[:12]:<12} {m['n_images']:>6} {_fmt(m['rmse']):>7} "
                         f"{_fmt(m['rmse_source']):>7} {_fmt(m.get('rmse_visible_source')):>7} "
                         f"{_fmt(m['rmse_sky']):>7} {_fmt(m['aperture_flux_error_rms']):>7} "
                         f"{_fmt(m['coverage_1sigma'], 2):>6} {_fmt(m['coverage_2sigma'], 2):>6} "
                         f"{_fmt(m.get('coverage_1sigma_source_segment'), 2):>7} "
                         f"{_fmt(m['seconds_per_megapixel'], 2):>8} {versus:>24}")
    lines.append("RMSE in noise sigma over masked pixels (source: > 3 sigma above background; visible: source pixels "
                 "of sources that show outside the holes); flux: RMS aperture flux error of masked sources "
                 "[sigma sqrt(npix)]; cov1/cov2: fraction within 1/2 std; cov1src: within 1 std, pixels of "
                 "source segments; source/biharmonic: source RMSE ratio, in brackets its central 68% over "
                 "bootstrap resamples of the images")
    return "\n".join(lines)


@exit_on_bad_input
def evaluate_inpainting(
        images: Annotated[list[Path], typer.Argument(help="FITS images (complete, noisy): the truth of the test.",
                                                     show_default=False)],
        out: Annotated[Path, typer.Option("--out", help="Directory for inpainting_evaluation.json and the PNGs.",
                                          show_default=False)],
        mask: Annotated[list[Path] | None, typer.Option(
            "--mask", help="Test-hole FITS, one per image in the same order (nonzero = hide); "
            "else drawn at random.")] = None,
        method: Annotated[str, typer.Option(
            "--method", help="Comma-separated in-painters: model, biharmonic, interpolate.")] =
        "model,biharmonic,interpolate",
        seed: Annotated[int, typer.Option("--seed", help="Seed of the drawn test holes.")] = 0,
        model: Annotated[Path | None, typer.Option(
            "--model", help="Model directory for method model (default: the shipped weights).")] = None,
        device: Annotated[str, typer.Option(
            "--device", help="Device of method model: auto, cpu, cuda, cuda:N.")] = "auto",
        examples: Annotated[int, typer.Option("--examples", min=0, help="Images shown in the examples PNG.")] = 3,
        group: Annotated[str | None, typer.Option(
            "--group", help="Group of every image (default: the name of each image's directory).")] = None,
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing report.")] = False,
        quiet: QuietOption = False) -> None:
    """Score whole-image in-painters on FITS images with test holes: masked-pixel RMSE (source / sky),
    aperture-flux error, uncertainty coverage and speed, per group; writes JSON and PNGs."""
    from lensforge.pipeline.evaluation import image_inpainting as ev

    methods = parse_methods(method)
    masks = list(mask or [])
    if masks and len(masks) != len(images):
        raise InputError(f"got {len(masks)} --mask files for {len(images)} images; pass one per image, in order",
                         len(masks))
    ev.check_report_absent(out, overwrite)
    for path in [*images, *masks]:
        if not Path(path).is_file():
            raise InputError(f"{path}: no such file", str(path))
    # Read and check every input before the (slow) in-painting starts: bad input fails at once.
    for index, path in enumerate(images):
        image, _, _ = read_image(path)
        if masks:
            read_mask(masks[index], image.shape, path)
    inpainters, model_info = _inpainters(methods, model, device)

    started = time.time()
    result = ev.evaluate_cases(_Sized(_cases(images, masks, seed, group), len(images)), inpainters,
                               progress=not quiet, keep_examples=examples)
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    if examples and result.example_cases:
        ev.plot_examples(result.example_cases, result.example_fills, out / ev.EXAMPLES_PNG,
                         f"In-painting of {len(result.example_cases)} test image(s): {', '.join(methods)}")
        figures.append(ev.EXAMPLES_PNG)
    ev.plot_rmse_bars(result, out / ev.RMSE_PNG)
    figures.append(ev.RMSE_PNG)
    provenance = {"command": "lensforge evaluate-inpainting", "images": [str(p) for p in images],
                  "masks": [str(p) for p in masks] if masks else None,
                  "mask_source": "files" if masks else "lensforge.pipeline.datasets.corpus.evaluation_mask",
                  "seed": None if masks else seed, "methods": methods, "model": model_info or None,
                  "figures": figures, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
                  "wall_seconds": time.time() - started, "python": platform.python_version()}
    path = ev.write_report(result, out, provenance, overwrite=overwrite)
    typer.echo(_table(result))
    typer.echo(f"report: {path}")
