"""The generative model's stages: training on a run's store, and generation lensed and observed by GalSim."""

from lensforge.errors import InputError
from lensforge.pipeline.config import RunConfig


def check_generated_config(config: RunConfig) -> None:
    """``InputError`` (one line) for settings a generated set cannot honour (checked before torch is imported)."""
    if config.radio.stamp_visibilities:
        raise InputError("radio.stamp_visibilities: generated sets have no visibilities (simulated parametric radio "
                         "stamps do); unset it for lensforge generate")
