"""Train the VAE-GAN on simulated stamps: one loop, top to bottom (NVlabs EDM style).

Every step:

1. draw a batch of stamps and, for each, the union of its own defect mask with the
   mask of another random stamp (augmentation: the model sees many more holes); drop
   each physical condition with probability ``condition_dropout`` (so the model also
   works when flux and size are unknown, as when in-painting real data);
2. the objective (:mod:`lensforge.models.objectives`: hybrid, VAE-only or GAN-only) computes its
   loss terms from one forward pass;
3. both players step *simultaneously*: each loss is differentiated only with respect to
   its own player's parameters (``backward(inputs=...)``), which equals a discriminator
   step on detached fakes and halves the discriminator work on a CPU.

Outputs in ``out_dir``: ``settings.json`` (before the first step), ``losses.csv``
(one row per step, published atomically with each checkpoint: it always holds exactly the
steps of the saved training state; rows in between go to ``.losses.csv.partial``),
``weights.safetensors`` + ``meta.json`` (every ``checkpoint_every`` steps and at the end),
``training_state.{safetensors,json}`` (optimisers, random generators and step, with each
checkpoint: ``resume=True`` continues bit for bit on CPU), ``losses.png`` (at the end).

SIGINT / SIGTERM (:mod:`lensforge.interrupts`) stop the loop at the next step boundary: the
state of that step is saved as a checkpoint, then :class:`~lensforge.interrupts.Interrupted` is
raised; a rerun with ``resume=True`` gives the bytes of an uninterrupted run. A fresh start
(``resume=False``) replaces the previous run's files only as its own are written, one atomic
file at a time, so a failure (a full disk) leaves the previous checkpoint and losses usable.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from lensforge import interrupts
from lensforge.atomic import atomic_path, atomic_write_bytes
from lensforge.errors import ConfigError, InputError, ModelError
from lensforge.models.checkpoint import (
    load_training_state,
    read_training_state_meta,
    save_checkpoint,
    save_training_state,
    write_json_atomic,
)
from lensforge.models.device import resolve_device
from lensforge.models.normalize import MODEL_PIXEL_SIGMA, NOISE_UNITS_SCALE, to_model_space
from lensforge.models.objectives import LOSS_COLUMNS, OBJECTIVES, Batch, LossWeights
from lensforge.models.vaegan import VAEGAN, ModelSettings

_CSV_FLUSH_EVERY = 25  # steps; lets a user tail .losses.csv.partial without a write per step
LOSSES_FILE = "losses.csv"
LOSSES_WORK_FILE = ".losses.csv.partial"  # rows since the last checkpoint; losses.csv is published from it


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings; written to ``settings.json`` before training starts.

    Attributes:
        steps: optimiser steps (one batch each).
        batch_size: stamps per batch.
        learning_rate: Adam learning rate of both players.
        objective: "hybrid" (VAE-GAN), "vae" or "gan" (ablations), see :mod:`lensforge.models.objectives`.
        kl_weight: weight of the per-pixel KL (1 = the ELBO, see :class:`~lensforge.models.losses.KLDivergence`).
            The default 0.1 (a beta-VAE): new galaxies are drawn from a density fitted to the posterior
            means after training, not from the N(0, I) prior, so the KL only keeps the latent space
            smooth; at 1 it blurred reconstructions and generated galaxies came out less concentrated
            than their training set (``benchmarks/realism.py``).
        adversarial_weight: weight of the generator's GAN loss in the hybrid objective.
        feature_weight: weight of discriminator feature matching in the hybrid objective.
        condition_dropout: probability that a stamp's condition is hidden in a step.
        likelihood_stretch: 0 (default): the linear Gaussian pixel likelihood. > 0: the likelihood of
            asinh-stretched pixels, linear up to this many sigmas of each stamp's pixel noise
            (:class:`~lensforge.models.losses.StretchedGaussianNLL`; the radio generator's choice).
        checkpoint_every: steps between checkpoints (one is always written at the end).
        device: "auto" | "cpu" | "cuda" | "cuda:N".
        compile: wrap the networks in ``torch.compile`` (needs a C++ compiler; off by default).
        seed: seeds weights init, batch draws and all noise.
    """

    steps: int = 3000  # the run default (TrainConfig.steps), decided there
    batch_size: int = 64
    learning_rate: float = 2e-4
    objective: str = "hybrid"
    kl_weight: float = 0.1
    adversarial_weight: float = 0.05
    feature_weight: float = 0.1
    condition_dropout: float = 0.25
    likelihood_stretch: float = 0.0
    checkpoint_every: int = 500
    device: str = "auto"
    compile: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TrainSettings.{name} must be >= 1, got {getattr(self, name)}", name)
        if not self.learning_rate > 0:
            raise ConfigError(f"TrainSettings.learning_rate must be > 0, got {self.learning_rate}")
        for name in ("kl_weight", "adversarial_weight", "feature_weight", "likelihood_stretch"):
            if getattr(self, name) < 0:
                raise ConfigError(f"TrainSettings.{name} must be >= 0, got {getattr(self, name)}", name)
        if not 0 <= self.condition_dropout <= 1:
            raise ConfigError(f"TrainSettings.condition_dropout must be in [0, 1], got {self.condition_dropout}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective {self.objective!r}; valid: {sorted(OBJECTIVES)}", self.objective)

    def to_dict(self) -> dict:
        """Plain JSON-able dict of the fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainSettings:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ConfigError`."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown TrainSettings keys {sorted(unknown)}", sorted(unknown))
        return cls(**data)


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the trained model, eval mode, on the training device.
        out_dir: the model directory holding the checkpoint and logs.
        final_losses: loss terms of the last step (keys: :data:`LOSS_COLUMNS`).
        seconds: wall-clock training time, including checkpoints.
        steps: optimiser steps taken.
    """

    model: VAEGAN
    out_dir: Path
    final_losses: dict[str, float]
    seconds: float
    steps: int


def _prepare_data(images, masks, noise_sigma, conditions, stamp_size: int, names: tuple[str, ...]):
    """Validate; return model-space (N, 1, H, W) float32 images, (N, 1, H, W) bool masks, raw (N, K) conditions."""
    images = np.asarray(images, dtype=np.float32)
    masks = np.asarray(masks) != 0
    noise_sigma = np.asarray(noise_sigma, dtype=np.float64)
    if images.ndim != 3 or images.shape[1:] != (stamp_size, stamp_size):
        raise InputError(f"images must have shape (N, {stamp_size}, {stamp_size}), got {images.shape}", images.shape)
    if masks.shape != images.shape:
        raise InputError(f"masks shape {masks.shape} does not match images {images.shape}", masks.shape)
    if len(images) < 1:
        raise InputError("no training stamps")
    if not np.isfinite(images).all():
        raise InputError("images contain non-finite pixels; the training target must be the full image")
    k = len(names)
    if conditions is None:
        conditions = np.full((len(images), k), np.nan)
    conditions = np.asarray(conditions, dtype=np.float64)
    if conditions.shape != (len(images), k):
        raise InputError(f"conditions must have shape ({len(images)}, {k}) [{', '.join(names)}], "
                         f"got {conditions.shape}", conditions.shape)
    x = to_model_space(images, noise_sigma).astype(np.float32)
    return torch.from_numpy(x)[:, None], torch.from_numpy(masks)[:, None], conditions


def _fake_noise(noise_sigma, pixel_noise_sigma, noise_kernel) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Model-space std (N,) of each stamp's pixel noise and the (1, 1, k, k) unit-variance kernel (or Nones)."""
    std = kernel = None
    if pixel_noise_sigma is not None:
        ratio = np.asarray(pixel_noise_sigma, dtype=np.float64) / np.asarray(noise_sigma, dtype=np.float64)
        if ratio.shape != np.shape(noise_sigma) or not (np.isfinite(ratio) & (ratio > 0)).all():
            raise InputError("pixel_noise_sigma must hold one finite sigma > 0 per stamp")
        std = torch.from_numpy((MODEL_PIXEL_SIGMA * ratio).astype(np.float32))
    if noise_kernel is not None:
        k = np.asarray(noise_kernel, dtype=np.float64)
        if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] % 2 == 0 or not np.isfinite(k).all() \
                or not (k ** 2).sum() > 0:
            raise InputError(f"noise_kernel must be a finite square (k, k) array with k odd, got shape {k.shape}")
        kernel = torch.from_numpy((k / np.sqrt((k ** 2).sum())).astype(np.float32))[None, None]
    return std, kernel


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def data_checksum(images, masks, noise_sigma, conditions=None) -> str:
    """sha256 over the training arrays' bytes: a resumed run must see the same data."""
    digest = hashlib.sha256()
    for array in (images, masks, noise_sigma, conditions):
        if array is not None:
            array = np.ascontiguousarray(array)
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def _plot_losses(csv_path: Path, png_path: Path) -> None:
    """One panel per loss term: raw values and a running mean, log y where positive."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table = np.genfromtxt(csv_path, delimiter=",", names=True)
    table = np.atleast_1d(table)
    fig = Figure(figsize=(12, 6), layout="constrained")
    FigureCanvasAgg(fig)  # Agg without touching pyplot's global backend
    axes = fig.subplots(2, 3).ravel()
    window = max(1, len(table) // 50)
    for ax, name in zip(axes, LOSS_COLUMNS, strict=True):
        values = table[name]
        ax.plot(table["step"], values, lw=0.5, alpha=0.4, color="C0")
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        ax.plot(table["step"][window - 1 :], smooth, lw=1.5, color="C1")
        if np.all(values > 0):
            ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("step")
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")


def _fit_latent_density(model: VAEGAN, x_all: torch.Tensor, m_all: torch.Tensor, c_all: torch.Tensor,
                        seed: int = 0, batch: int = 512) -> None:
    """Fit the model's ex-post latent density on the posterior means of every training stamp.

    Each stamp is encoded with its own defect mask and its conditions (z then holds what the
    conditions do not say, as the decoder expects when it is given them); stamps without known
    conditions are skipped by the fit.
    """
    with torch.inference_mode():
        posteriors = [model.encode(x_all[i:i + batch], m_all[i:i + batch],
                                   model.prepare_conditions(c_all[i:i + batch], len(c_all[i:i + batch])))
                      for i in range(0, len(x_all), batch)]
    mu = torch.cat([p[0].float().cpu() for p in posteriors])
    logvar = torch.cat([p[1].float().cpu() for p in posteriors])
    known = torch.isfinite(c_all).all(dim=1)
    if int(known.sum()) >= mu.shape[1] + c_all.shape[1] + 2:
        model.fit_latent_density(mu.clone(), c_all.cpu().double(), logvar, seed)


def _csv_bytes(rows: list[list[str]]) -> bytes:
    text = io.StringIO(newline="")
    csv.writer(text).writerows(rows)
    return text.getvalue().encode()


def _kept_losses(csv_path: Path, last_step: int) -> bytes | None:
    """``losses.csv``'s header and rows of steps <= ``last_step`` (rows after a checkpoint are redone on
    resume), as bytes; None when the file is missing or unreadable."""
    try:
        with open(csv_path, newline="") as handle:
            rows = list(csv.reader(handle))
        return _csv_bytes([rows[0]] + [row for row in rows[1:] if row and int(row[0]) <= last_step])
    except (OSError, ValueError, IndexError):
        return None


def _resume_check(meta: dict, model_settings: ModelSettings, ts: TrainSettings, checksum: str, out_dir: Path,
                  device_type: str) -> None:
    """A resume must continue the *same* run: only ``steps`` may grow, data and settings must match."""
    # A field missing from an older checkpoint held its default there.
    saved = {**TrainSettings().to_dict(), **(meta.get("train_settings") or {})}
    now = ts.to_dict()
    differing = sorted(k for k in now if k not in ("steps", "device") and saved.get(k) != now[k])
    if differing:
        raise ModelError(f"cannot resume {out_dir}: train settings differ in {differing}", differing)
    # Compared as settings, not dicts: checkpoints written before a field existed hold its default.
    if ModelSettings.from_dict(meta.get("model_settings") or {}) != model_settings:
        raise ModelError(f"cannot resume {out_dir}: model settings differ", str(out_dir))
    if meta.get("device_type", "cpu") != device_type:
        # The noise generator lives on the training device; its state does not move between kinds.
        raise ModelError(f"cannot resume {out_dir}: it was trained on {meta.get('device_type')}, this run uses "
                         f"{device_type}; resume on the same kind of device or pass --fresh", str(out_dir))
    if meta.get("data_sha256") != checksum:
        raise ModelError(f"cannot resume {out_dir}: the training data changed since the checkpoint", str(out_dir))
    if int(meta.get("step", 0)) > ts.steps:
        raise ModelError(f"cannot resume {out_dir}: it is at step {meta['step']}, beyond steps={ts.steps}")


def train(
    images,
    masks,
    noise_sigma,
    model_settings: ModelSettings,
    train_settings: TrainSettings,
    out_dir: Path,
    progress: bool = True,
    conditions=None,
    psf_image=None,
    resume: bool = False,
    pixel_noise_sigma=None,
    noise_kernel=None,
) -> TrainResult:
    """Train a :class:`VAEGAN` and write its checkpoint and logs to ``out_dir``.

    Args:
        images: (N, H, W) float ADU, the full noisy stamps (numpy or zarr array; loaded into memory).
        masks: (N, H, W) bool/uint8, nonzero = defect.
        noise_sigma: (N,) per-stamp Gaussian noise sigma, ADU.
        model_settings: architecture; ``stamp_size`` must equal H = W.
        train_settings: optimisation settings.
        out_dir: model directory (created).
        progress: show a tqdm progress bar.
        conditions: (N, K) physical conditions per stamp, in ``model_settings.conditions`` order
            (default flux [ADU], half-light radius [arcsec]); NaN or None = unknown.
        psf_image: (F, F) PSF without pixel response on the fine grid (see
            :class:`~lensforge.models.vaegan.PSFObservation`); None = no blur.
        resume: continue from ``out_dir``'s training state when there is one (same data and
            settings; ``steps`` may be raised). Without a state it starts from step 0.
        pixel_noise_sigma: (N,) the stamps' actual pixel noise [ADU] where ``noise_sigma`` is a
            tempered likelihood sigma (larger); the fakes the discriminator sees get this level.
            None: ``noise_sigma`` is the pixel noise.
        noise_kernel: (k, k) kernel that correlates the pixel noise on the stamp grid (k odd; a
            beam, for radio images), so that fakes carry noise of the real stamps' texture and the
            discriminator must judge the galaxy; normalised here to unit noise variance. None: white.

    Deterministic on CPU: the same inputs and settings give bit-identical weights, with or
    without an interruption and resume in between.
    """
    ts = train_settings
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(ts.device)
    checksum = data_checksum(images, masks, noise_sigma, conditions)
    noise_std_all, kernel = _fake_noise(noise_sigma, pixel_noise_sigma, noise_kernel)
    if noise_std_all is not None or kernel is not None:  # part of the data a resumed run must see again
        extra = [checksum.encode()] + [t.numpy().tobytes() for t in (noise_std_all, kernel) if t is not None]
        checksum = _sha256(b"".join(extra))
    x_all, m_all, raw_conditions = _prepare_data(images, masks, noise_sigma, conditions, model_settings.stamp_size,
                                                 model_settings.conditions)
    n_stamps, _, height, width = x_all.shape
    batch = ts.batch_size

    # Weight init uses the global RNG; fork it so seeding does not leak into the caller.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(ts.seed)
        model = VAEGAN(model_settings)
    known_rows = np.isfinite(raw_conditions).all(axis=1)
    if known_rows.sum() >= 2:
        model.fit_conditions(raw_conditions[known_rows])
    model.init_flux_scale(x_all)
    if psf_image is not None:
        model.observe.set_psf(psf_image)
    model.to(device).train()
    x_all, m_all = x_all.to(device), m_all.to(device)
    c_all = torch.from_numpy(raw_conditions.astype(np.float32)).to(device)

    objective = OBJECTIVES[ts.objective](
        n_pixels=height * width,
        weights=LossWeights(kl=ts.kl_weight, feature=ts.feature_weight, adversarial=ts.adversarial_weight),
        likelihood_stretch=ts.likelihood_stretch,
    )
    gen_params = objective.generator_parameters(model)
    disc_params = objective.discriminator_parameters(model)
    optimizers = {"generator": torch.optim.Adam(gen_params, lr=ts.learning_rate, betas=(0.5, 0.999))}
    if disc_params:
        optimizers["discriminator"] = torch.optim.Adam(disc_params, lr=ts.learning_rate, betas=(0.5, 0.999))
    batch_rng = torch.Generator().manual_seed(ts.seed)  # CPU: which stamps, partner masks, dropped conditions
    noise_rng = torch.Generator(device).manual_seed(ts.seed + 1)  # posterior eps, prior z, pixel noise
    generators = {"batch": batch_rng, "noise": noise_rng}
    use_bf16 = device.type == "cuda"
    if ts.compile:
        # Compile each network's forward in place: the model keeps its state-dict names, so
        # checkpoints of compiled and eager training are interchangeable.
        for network in (model.encoder, model.decoder, model.discriminator):
            network.forward = torch.compile(network.forward)
    state_meta = {"train_settings": ts.to_dict(), "model_settings": model_settings.to_dict(), "data_sha256": checksum,
                  "device_type": device.type}

    first_step = 1
    losses_path, work_path = out_dir / LOSSES_FILE, out_dir / LOSSES_WORK_FILE
    header = _csv_bytes([["step", *LOSS_COLUMNS]])
    kept = header
    saved = read_training_state_meta(out_dir) if resume else None
    if saved is not None:
        _resume_check(saved, model_settings, ts, checksum, out_dir, device.type)
        # The state records the digest of its losses; losses.csv is published after the state, so a
        # process stopped in between left them in the working file.
        candidates = [_kept_losses(path, int(saved["step"])) for path in (losses_path, work_path)]
        kept = next((c for c in candidates if c is not None and saved.get("losses_sha256", _sha256(c)) == _sha256(c)),
                    None)
        if kept is None:  # no losses of this state's steps: start over, which reproduces the same bytes
            saved, kept = None, header
    if saved is not None:
        load_training_state(out_dir, model, optimizers, generators)
        first_step = int(saved["step"]) + 1
    else:
        write_json_atomic(
            out_dir / "settings.json",
            {
                "model_class": type(model).__name__,
                "model_settings_class": type(model_settings).__name__,
                "model_settings": model_settings.to_dict(),
                "train_settings_class": type(ts).__name__,
                "train_settings": ts.to_dict(),
                "losses": objective.describe(),
                "conditions": list(model_settings.conditions),
                "noise_units_scale": NOISE_UNITS_SCALE,
                "n_stamps": n_stamps,
                "data_sha256": checksum,
                "resolved_device": str(device),
                "torch_version": torch.__version__,
            },
        )

    def checkpoint(step: int) -> None:
        # The training state (with the digest of its losses) first, then losses.csv, then the weights:
        # a resume never starts behind the published model and finds its losses (in losses.csv or,
        # stopped before it was published, in the working file); a fresh start replaces the previous
        # run's losses only once its own state is saved.
        csv_file.flush()
        os.fsync(raw_file.fileno())
        losses = work_path.read_bytes()
        save_training_state(out_dir, step, model, optimizers, generators,
                            {**state_meta, "losses_sha256": _sha256(losses)})
        atomic_write_bytes(losses_path, losses)
        save_checkpoint(model, out_dir, extra_meta={"step": step, "train_settings": ts.to_dict(),
                                                    "data_sha256": checksum})

    start = time.perf_counter()
    values = {name: float("nan") for name in LOSS_COLUMNS}
    with interrupts.deferred(), open(work_path, "wb") as raw_file:
        raw_file.write(kept)
        csv_file = io.TextIOWrapper(raw_file, newline="", encoding="utf-8", write_through=True)
        writer = csv.writer(csv_file)
        bar = tqdm(range(first_step, ts.steps + 1), disable=not progress, desc=f"train {ts.objective}",
                   unit="step", initial=first_step - 1, total=ts.steps)
        for step in bar:
            # 1. Batch; training mask = own defects OR another stamp's defects; conditions dropped at random.
            index = torch.randint(n_stamps, (batch,), generator=batch_rng).to(device)
            partner = torch.randint(n_stamps, (batch,), generator=batch_rng).to(device)
            dropped = (torch.rand(batch, len(model_settings.conditions), generator=batch_rng)
                       < ts.condition_dropout).to(device)
            raw = torch.where(dropped, torch.full_like(c_all[index], float("nan")), c_all[index])
            data = Batch(target=x_all[index], mask=m_all[index] | m_all[partner],
                         conditions=model.prepare_conditions(raw, batch),
                         noise_std=None if noise_std_all is None else noise_std_all[index.cpu()],
                         noise_kernel=kernel)

            # 2. The objective's loss terms from one forward pass.
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
                terms = objective(model, data, noise_rng)

            # 3. A simultaneous step of both players.
            for optimizer in optimizers.values():
                optimizer.zero_grad(set_to_none=True)
            terms["total"].backward(inputs=gen_params, retain_graph=bool(disc_params))
            if disc_params:
                terms["discriminator"].backward(inputs=disc_params)
            for optimizer in optimizers.values():
                optimizer.step()

            # 4. Log and checkpoint.
            # One stacked transfer, not one .item() per term: a single GPU sync per step.
            values = dict(
                zip(LOSS_COLUMNS, torch.stack([terms[n].detach() for n in LOSS_COLUMNS]).tolist(), strict=True)
            )
            writer.writerow([step, *(f"{values[name]:.6g}" for name in LOSS_COLUMNS)])
            if step % _CSV_FLUSH_EVERY == 0:
                csv_file.flush()
                bar.set_postfix(
                    nll=f"{values['nll']:.3f}", kl=f"{values['kl']:.3f}", d=f"{values['discriminator']:.3f}"
                )
            if step == ts.steps and objective.uses_encoder:
                _fit_latent_density(model, x_all, m_all, c_all, ts.seed)
            if step % ts.checkpoint_every == 0 or step == ts.steps:
                checkpoint(step)
            elif interrupts.requested() is not None:
                checkpoint(step)  # stop at this step boundary, resumable from here
            if interrupts.requested() is not None:
                bar.close()
                interrupts.check()
        bar.close()
        csv_file.detach()
    work_path.unlink(missing_ok=True)

    seconds = time.perf_counter() - start
    _plot_losses(losses_path, out_dir / "losses.png")
    return TrainResult(model=model.eval(), out_dir=out_dir, final_losses=values, seconds=seconds,
                       steps=ts.steps - first_step + 1)
