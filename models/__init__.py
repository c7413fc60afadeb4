"""VAE-GAN galaxy model of lensforge: generates galaxy stamps and in-paints masked pixels.

Layering: imports ``catalogs`` (errors) only, never ``pipeline`` or ``flows``.

Modules: ``normalize`` (ADU <-> model space), ``vaegan`` (networks), ``losses``,
``train`` (the training loop), ``checkpoint`` (safetensors + meta.json), ``inpaint``
(in-painting and sampling), ``baselines`` (biharmonic in-painting), ``device``.
"""

from models.baselines import inpaint_biharmonic
from models.checkpoint import load_checkpoint, save_checkpoint
from models.device import resolve_device
from models.inpaint import inpaint_with_model, sample_galaxies
from models.losses import FeatureMatching, KLDivergence, MaskedGaussianNLL, NonSaturatingGANLoss
from models.normalize import MODEL_PIXEL_SIGMA, NOISE_UNITS_SCALE, from_model_space, to_model_space
from models.train import TrainResult, TrainSettings, train
from models.vaegan import VAEGAN, Decoder, Discriminator, Encoder, ModelSettings

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
