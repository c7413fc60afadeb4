"""``lensforge train-inpainter``: retrain the image in-painter from the shared real data and simulations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lensforge.flows.cli_common import QuietOption, exit_on_bad_input


@exit_on_bad_input
def train_inpainter(
        output: Annotated[Path, typer.Option("--output", "-o", help="New model directory (must not hold a model).")],
        steps: Annotated[int | None, typer.Option(min=1, help="Training steps (default: the shipped model's).")] = None,
        device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
        seed: Annotated[int, typer.Option(help="Seed of every random draw of the training.")] = 0,
        first: Annotated[Path | None, typer.Option(
            help="The FIRST cube (default: ../shared/data/first_radio/first_mirabest_150.fits).")] = None,
        recalibrate: Annotated[bool, typer.Option(
            "--recalibrate", help="--output already holds a model: refit its uncertainty calibration only.")] = False,
        quiet: QuietOption = False) -> None:
    """Train, calibrate and write an image in-painter (the shipped one: default settings, seed 0).

    Trains on the FIRST train split and lensforge's simulated tiles of every preset; calibrates its
    uncertainty on the FIRST calibration split and simulated tiles of another seed; never reads the
    FIRST test split or the COSMOS stamps. Use it with `lensforge reprocess --method model
    --model-version DIR`.
    """
    from lensforge.pipeline.datasets.inpainter_training import card_summary, recalibrate_inpainter
    from lensforge.pipeline.datasets.inpainter_training import train_inpainter as train

    if recalibrate:
        model_dir = recalibrate_inpainter(output, first_path=first, progress=not quiet)
    else:
        model_dir = train(output, steps=steps, device=device, seed=seed, first_path=first, progress=not quiet)
    typer.echo(card_summary(model_dir))
