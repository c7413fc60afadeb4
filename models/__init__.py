"""VAE-GAN galaxy model of lensforge: generates galaxy stamps and in-paints masked pixels.

Layering: imports the package root (``lensforge.errors``, ``lensforge.atomic``) only, never
``catalogs``, ``pipeline`` or ``flows``.

Modules: ``normalize`` (ADU <-> model space), ``vaegan`` (networks), ``losses``,
``train`` (the training loop), ``checkpoint`` (safetensors + meta.json), ``inpaint``
(in-painting and sampling), ``baselines`` (biharmonic in-painting), ``device``.
"""

import importlib

# Names resolve on first use (PEP 562): ``import lensforge.models.baselines`` for the biharmonic baseline
# must not pay torch's slow import in every Dask worker that never touches a network.
_SOURCES = {
    "Decoder": "lensforge.models.vaegan",
    "Discriminator": "lensforge.models.vaegan",
    "Encoder": "lensforge.models.vaegan",
    "FeatureMatching": "lensforge.models.losses",
    "KLDivergence": "lensforge.models.losses",
    "MODEL_PIXEL_SIGMA": "lensforge.models.normalize",
    "MaskedGaussianNLL": "lensforge.models.losses",
    "ModelSettings": "lensforge.models.vaegan",
    "NOISE_UNITS_SCALE": "lensforge.models.normalize",
    "NonSaturatingGANLoss": "lensforge.models.losses",
    "StretchedGaussianNLL": "lensforge.models.losses",
    "TrainResult": "lensforge.models.train",
    "TrainSettings": "lensforge.models.train",
    "VAEGAN": "lensforge.models.vaegan",
    "from_model_space": "lensforge.models.normalize",
    "inpaint_biharmonic": "lensforge.models.baselines",
    "inpaint_with_model": "lensforge.models.inpaint",
    "load_checkpoint": "lensforge.models.checkpoint",
    "resolve_device": "lensforge.models.device",
    "sample_galaxies": "lensforge.models.inpaint",
    "save_checkpoint": "lensforge.models.checkpoint",
    "to_model_space": "lensforge.models.normalize",
    "train": "lensforge.models.train",
}


def __getattr__(name: str):
    if name in _SOURCES:
        return getattr(importlib.import_module(_SOURCES[name]), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")


__all__ = [
    "MODEL_PIXEL_SIGMA",
    "NOISE_UNITS_SCALE",
    "VAEGAN",
    "Decoder",
    "Discriminator",
    "Encoder",
    "FeatureMatching",
    "KLDivergence",
    "MaskedGaussianNLL",
    "ModelSettings",
    "NonSaturatingGANLoss",
    "StretchedGaussianNLL",
    "TrainResult",
    "TrainSettings",
    "from_model_space",
    "inpaint_biharmonic",
    "inpaint_with_model",
    "load_checkpoint",
    "resolve_device",
    "sample_galaxies",
    "save_checkpoint",
    "to_model_space",
    "train",
]
