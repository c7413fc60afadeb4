"""Run configuration: one frozen pydantic object with every default spelled out.

``RunConfig()`` runs as is; ``load_config(path, overrides)`` lays a YAML file and
``section.key=value`` overrides on top. Unknown keys and invalid values raise
``ConfigError`` with a one-line message naming the key (``train.steps``) and what
was expected, never a pydantic traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from catalogs.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class SurveyConfig(_Section):
    """Instrument and observing conditions (optical survey)."""

    pixel_scale_arcsec: float = Field(0.2, gt=0, description="pixel scale [arcsec/pixel]")
    stamp_size: int = Field(64, ge=16, le=512, description="postage-stamp side [pixels]")
    psf_type: Literal["moffat", "kolmogorov"] = "moffat"
    psf_fwhm_arcsec: float = Field(0.7, gt=0, description="PSF full width at half maximum [arcsec]")
    moffat_beta: float = Field(3.5, gt=1.1, description="Moffat beta (moffat PSF only)")
    psf_g1: float = Field(0.0, ge=-0.3, le=0.3, description="PSF ellipticity g1 (reduced shear)")
    psf_g2: float = Field(0.0, ge=-0.3, le=0.3, description="PSF ellipticity g2 (reduced shear)")

    @model_validator(mode="after")
    def _stamp_multiple_of_8(self) -> SurveyConfig:
        if self.stamp_size % 8:
            raise ValueError(f"stamp_size must be a multiple of 8 (the networks downsample by 8), "
                             f"got {self.stamp_size}")
        return self


class PopulationConfig(_Section):
    """Bulge+disk Sersic galaxies: the distributions each object's parameters are drawn from."""

    flux_min: float = Field(1.0e3, gt=0, description="lower flux bound [ADU], log-uniform")
    flux_max: float = Field(2.0e4, gt=0, description="upper flux bound [ADU], log-uniform")
    half_light_radius_min_arcsec: float = Field(0.3, gt=0, description="lower half-light radius [arcsec]")
    half_light_radius_max_arcsec: float = Field(1.0, gt=0, description="upper half-light radius [arcsec]")
    bulge_fraction_min: float = Field(0.0, ge=0, le=1, description="lower bulge-to-total flux ratio")
    bulge_fraction_max: float = Field(0.5, ge=0, le=1, description="upper bulge-to-total flux ratio")
    bulge_sersic_n: float = Field(4.0, ge=0.3, le=6.2, description="Sersic index of the bulge")
    disk_sersic_n: float = Field(1.0, ge=0.3, le=6.2, description="Sersic index of the disk")
    ellipticity_sigma: float = Field(0.2, ge=0, lt=0.7, description="rms per component of intrinsic |e|")
    snr_min: float = Field(20.0, gt=0, description="lower target S/N (GalSim addNoiseSNR)")
    snr_max: float = Field(100.0, gt=0, description="upper target S/N")

    @model_validator(mode="after")
    def _ordered(self) -> PopulationConfig:
        for low, high in (("flux_min", "flux_max"), ("half_light_radius_min_arcsec", "half_light_radius_max_arcsec"),
                          ("bulge_fraction_min", "bulge_fraction_max"), ("snr_min", "snr_max")):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low} ({getattr(self, low)}) must not exceed {high} ({getattr(self, high)})")
        return self


class ShearConfig(_Section):
    """Applied reduced shear: constant, or drawn uniformly per object (per ring pair) in a disc."""

    kind: Literal["constant", "uniform"] = "uniform"
    g1: float = Field(0.0, ge=-0.5, le=0.5, description="constant g1 (kind=constant)")
    g2: float = Field(0.0, ge=-0.5, le=0.5, description="constant g2 (kind=constant)")
    g_max: float = Field(0.05, ge=0, lt=0.5, description="max |g| (kind=uniform)")


class MaskConfig(_Section):
    """Defect rates of the patchy-data stage, per stamp."""

    cosmic_rays_per_stamp: float = Field(1.0, ge=0, le=50, description="Poisson mean of cosmic-ray tracks")
    cosmic_ray_length_max_pixels: int = Field(12, ge=1, le=256, description="longest track [pixels]")
    bad_column_probability: float = Field(0.15, ge=0, le=1, description="chance a stamp has a bad column")
    blank_patch_probability: float = Field(0.5, ge=0, le=1, description="chance a stamp has a blank patch")
    blank_patch_size_min_pixels: int = Field(4, ge=1, description="smallest blank patch side [pixels]")
    blank_patch_size_max_pixels: int = Field(16, ge=1, description="largest blank patch side [pixels]")

    @model_validator(mode="after")
    def _ordered(self) -> MaskConfig:
        if self.blank_patch_size_min_pixels > self.blank_patch_size_max_pixels:
            raise ValueError("blank_patch_size_min_pixels must not exceed blank_patch_size_max_pixels")
        return self


class SimulationConfig(_Section):
    """How many objects, and how the work is cut into chunks (one Prefect task per chunk)."""

    n_objects: int = Field(4096, ge=1, description="number of stamps")
    chunk_size: int = Field(512, ge=1, description="stamps per task and per Zarr chunk")
    ring_pairs: bool = Field(True, description="draw objects in 90-degree rotated pairs with equal shear")
    store_noiseless: bool = Field(True, description="also store the noise-free images (truth for in-painting)")


class TrainConfig(_Section):
    """VAE-GAN training settings (written to the model directory before training starts)."""

    steps: int = Field(1500, ge=1, description="optimizer steps")
    batch_size: int = Field(64, ge=2, description="stamps per step")
    latent_dim: int = Field(64, ge=2, description="size of z")
    base_channels: int = Field(8, ge=4, description="channels of the first conv layer")
    learning_rate: float = Field(2.0e-4, gt=0, description="Adam learning rate")
    kl_weight: float = Field(1.0, ge=0, description="weight of KL(q(z|x,m) || N(0,1))")
    adversarial_weight: float = Field(0.05, ge=0, description="weight of the generator's adversarial loss")
    feature_weight: float = Field(0.1, ge=0, description="weight of the discriminator feature-matching loss")
    objective: Literal["hybrid", "vae", "gan"] = Field(
        "hybrid", description="hybrid VAE-GAN, or the VAE-only / GAN-only ablation of the same networks")
    condition_dropout: float = Field(0.25, ge=0, le=1, description="chance a stamp's flux / size is hidden per step")
    oversampling: int = Field(2, ge=1, le=4, description="fine pixels per stamp pixel of the intrinsic profile")
    compile: bool = Field(False, description="torch.compile the networks (needs a C++ compiler)")
    validation_fraction: float = Field(0.1, gt=0, lt=1, description="held-out share of the store (last objects)")
    checkpoint_every: int = Field(500, ge=1, description="steps between checkpoints")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'")
    seed_offset: int = Field(0, ge=0, description="added to the run seed for training randomness")


class InpaintConfig(_Section):
    """In-painting of the store's masked pixels."""

    n_samples: int = Field(8, ge=1, le=256, description="posterior samples per stamp (mean and std)")
    batch_size: int = Field(256, ge=1, description="stamps per forward pass")


class EvaluateConfig(_Section):
    """The evaluation report (held-out stamps only)."""

    n_inpaint: int = Field(512, ge=1, description="masked held-out stamps for the in-painting metrics")
    generation: bool = Field(True, description="also evaluate generated galaxies against truth")
    n_generate: int = Field(400, ge=4, description="stamps per sample (truth A, truth B, each model)")
    n_morphology: int = Field(200, ge=0, description="stamps per sample measured with statmorph (~0.2 s each)")
    temperatures: tuple[float, ...] = Field((0.5, 0.75, 1.0, 1.25), min_length=1,
                                            description="temperatures of the fidelity-diversity sweep")
    workers: int = Field(2, ge=1, description="processes for the morphology measurements")

    @model_validator(mode="after")
    def _positive_temperatures(self) -> EvaluateConfig:
        if any(not t > 0 for t in self.temperatures):
            raise ValueError(f"temperatures must be > 0, got {list(self.temperatures)}")
        return self


class DaskConfig(_Section):
    """Where parallel work runs: a LocalCluster (default) or an existing scheduler."""

    n_workers: int = Field(2, ge=1, description="LocalCluster worker processes")
    threads_per_worker: int = Field(1, ge=1, description="threads per worker")
    address: str | None = Field(None, description="tcp://host:port of an existing scheduler (overrides n_workers)")
    dashboard: bool = Field(False, description="start the Dask dashboard (bound to 127.0.0.1)")


class RunConfig(_Section):
    """Everything one run needs; ``RunConfig()`` is the embedded default."""

    name: str = Field("demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="run directory name")
    out_dir: Path = Field(Path("runs"), description="parent of the run directory")
    seed: int = Field(20261123, ge=0, lt=2**63, description="run seed: every random number derives from it")
    survey: SurveyConfig = SurveyConfig()
    population: PopulationConfig = PopulationConfig()
    shear: ShearConfig = ShearConfig()
    masks: MaskConfig = MaskConfig()
    simulation: SimulationConfig = SimulationConfig()
    train: TrainConfig = TrainConfig()
    inpaint: InpaintConfig = InpaintConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    dask: DaskConfig = DaskConfig()

    @property
    def run_dir(self) -> Path:
        """The run directory ``<out_dir>/<name>``."""
        return Path(self.out_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-ready dict of every setting (paths as strings)."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        """The effective configuration as YAML (what ``config show`` prints)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected section.key=value", item)
    key, raw = item.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise ConfigError(f"override {item!r}: empty key", item)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise ConfigError(f"override {item!r}: the value is not valid YAML", item) from None
    return path, value


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(path)}: {part} is not a section", part)
        node = child
    node[path[-1]] = value


def _format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'"
    given = first.get("input")
    given_text = "" if isinstance(given, dict) else f" (got {given!r})"
    return f"{source}: invalid value for '{key}': {first['msg']}{given_text}"


def build_config(values: dict[str, Any] | None = None, source: str = "config") -> RunConfig:
    """Validate a nested dict into a ``RunConfig``; ``ConfigError`` names the bad key."""
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level", values)
    try:
        return RunConfig.model_validate(values or {})
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source), values) from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Defaults, then the YAML file at ``path`` (optional), then ``section.key=value`` overrides."""
    values: dict[str, Any] = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found", str(path))
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise ConfigError(f"{path}: cannot read config file ({err.strerror})", str(path)) from None
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            line = getattr(getattr(err, "problem_mark", None), "line", None)
            where = f" (line {line + 1})" if line is not None else ""
            raise ConfigError(f"{path}: not valid YAML{where}", str(path)) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level", str(path))
        values = loaded or {}
    for item in overrides:
        key_path, value = _parse_override(item)
        _set_path(values, key_path, value)
    if overrides:
        source = "--set" if path is None else f"{source} + --set"
    return build_config(values, source)
