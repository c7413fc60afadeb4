"""VAE-GAN galaxy model of lensforge: generates galaxy stamps and in-paints masked pixels.

Layering: imports ``catalogs`` (errors) only, never ``pipeline`` or ``flows``.

Modules: ``normalize`` (ADU <-> model space), ``vaegan`` (networks), ``losses``,
``train`` (the training loop), ``checkpoint`` (safetensors + meta.json), ``inpaint``
(in-painting and sampling), ``baselines`` (biharmonic in-painting), ``device``.
"""

import importlib

# Names resolve on first use (PEP 562): ``import models.baselines`` for the biharmonic baseline
# must not pay torch's ~1.5 s import in every Dask worker that never touches a network.
_SOURCES = {
    "Decoder": "models.vaegan",
    "Discriminator": "models.vaegan",
    "Encoder": "models.vaegan",
    "FeatureMatching": "models.losses",
    "KLDivergence": "models.losses",
    "MODEL_PIXEL_SIGMA": "models.normalize",
    "MaskedGaussianNLL": "models.losses",
    "ModelSettings": "models.vaegan",
    "NOISE_UNITS_SCALE": "models.normalize",
    "NonSaturatingGANLoss": "models.losses",
    "TrainResult": "models.train",
    "TrainSettings": "models.train",
    "VAEGAN": "models.vaegan",
    "from_model_space": "models.normalize",
    "inpaint_biharmonic": "models.baselines",
    "inpaint_with_model": "models.inpaint",
    "load_checkpoint": "models.checkpoint",
    "resolve_device": "models.device",
    "sample_galaxies": "models.inpaint",
    "save_checkpoint": "models.checkpoint",
    "to_model_space": "models.normalize",
    "train": "models.train",
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
