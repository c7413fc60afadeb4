"""Run configuration: one frozen pydantic object with every default spelled out.

``RunConfig()`` runs as is; ``load_config(path, overrides)`` lays a YAML file and
``section.key=value`` overrides on top. Unknown keys and invalid values raise
``ConfigError`` with a one-line message naming the key (``train.steps``) and what
was expected, never a pydantic traceback.
"""

from __future__ import annotations

import difflib
import reprlib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from lensforge.errors import ConfigError
from lensforge.limits import DEFAULT_MEMORY_BUDGET_GB
from lensforge.pipeline.strict_yaml import parse_yaml

# Physical bounds: a value outside them is a typo or a unit slip (1e-300 arcsec pixels, a 1e5 arcsec PSF),
# and GalSim would fail deep inside a flow (an FFT of infinite size) instead of here, in one line.
PIXEL_SCALE_RANGE = (1.0e-3, 60.0)  # [arcsec/pixel]: 1 mas (beyond any imager) to 1 arcmin (coarse radio)
ANGLE_RANGE = (1.0e-3, 600.0)  # [arcsec] PSF widths and galaxy sizes
FLUX_MAX = 1.0e12  # [ADU or Jy]
SNR_MAX = 1.0e6
Aberration = Annotated[float, Field(strict=True, ge=-2.0, le=2.0)]  # [waves]: beyond, the optical PSF is no PSF


class _Section(BaseModel):
    # allow_inf_nan=False: YAML spells .inf and .nan, and a bound such as gt=0 lets inf through
    # (an infinite pixel scale or a NaN tile rotation would only fail deep inside a flow).
    # strict=True: no coercion between types, so `steps: true` is not 1, `compile: 1` is not True and
    # `stamp_size: 64.5` is not 64 (ints are still accepted where a float is expected). Paths and
    # tuples relax only their container (YAML has neither), not their items.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False, strict=True)


class SurveyConfig(_Section):
    """Instrument and observing conditions; the presets (``pipeline/presets/*.yaml``) fill it per survey.

    Stamps use the PSF, pixel scale and stamp size (noise comes from each object's S/N); tiles
    also use the photometry (zero point, exposure, sky, gain, read noise, full well).
    """

    name: str = Field("default", description="preset this survey came from (provenance only)")
    kind: Literal["optical", "radio"] = Field("optical", description="optical detector or radio interferometer")
    band: str = Field("r", description="filter / band name (provenance only)")
    pixel_scale_arcsec: float = Field(0.2, ge=PIXEL_SCALE_RANGE[0], le=PIXEL_SCALE_RANGE[1],
                                      description="pixel scale [arcsec/pixel]")
    stamp_size: int = Field(64, ge=16, le=512, description="postage-stamp side [pixels]")
    psf_type: Literal["moffat", "kolmogorov", "kolmogorov_optical", "airy", "optical", "radio_beam"] = "moffat"
    psf_fwhm_arcsec: float = Field(0.7, ge=ANGLE_RANGE[0], le=ANGLE_RANGE[1],
                                   description="atmospheric PSF full width at half maximum [arcsec] "
                                   "(moffat, kolmogorov, kolmogorov_optical)")
    moffat_beta: float = Field(3.5, gt=1.1, le=100, description="Moffat beta (moffat PSF only)")
    psf_g1: float = Field(0.0, ge=-0.3, le=0.3, description="PSF ellipticity g1 (reduced shear)")
    psf_g2: float = Field(0.0, ge=-0.3, le=0.3, description="PSF ellipticity g2 (reduced shear)")
    wavelength_nm: float = Field(620.0, ge=50, le=50_000,
                                 description="effective wavelength of the band [nm] (optical PSFs)")
    mirror_diameter_m: float = Field(8.36, ge=0.01, le=100, description="primary mirror diameter [m] (optical PSFs)")
    obscuration: float = Field(0.61, ge=0, lt=1, description="linear central obscuration (optical PSFs)")
    n_struts: int = Field(0, ge=0, le=12, description="secondary-mirror support struts (optical PSF)")
    strut_angle_deg: float = Field(0.0, description="angle of the first strut from the y axis [deg]")
    aberrations_waves: tuple[Aberration, ...] = Field((), max_length=19, strict=False,
                                                      description="Zernike aberrations from Noll "
                                                 "index 4 (defocus) on [waves] (optical PSFs)")
    detector_blur_fwhm_arcsec: float = Field(0.0, ge=0, le=ANGLE_RANGE[1],
                                             description="Gaussian blur of charge diffusion and pointing "
                                             "jitter convolved with optical PSFs [arcsec]")
    zero_point_mag: float = Field(28.0, description="AB magnitude giving 1 electron per second [mag]")
    exposure_time_s: float = Field(30.0, gt=0, description="time of one exposure [s]")
    n_exposures: int = Field(1, ge=1, description="exposures summed into a tile (depth)")
    gain_e_per_adu: float = Field(1.0, gt=0, description="detector gain [e-/ADU]")
    read_noise_e: float = Field(5.0, ge=0, description="read noise of one exposure [e-]")
    sky_brightness_mag_per_arcsec2: float = Field(21.0, description="sky surface brightness [mag/arcsec^2]")
    full_well_e: float = Field(1.0e5, gt=0, description="saturation charge of a pixel [e-]")
    depth_5sigma_mag: float | None = Field(None, description="documented 5-sigma point-source depth [mag] "
                                           "(reference; compare with "
                                           "lensforge.pipeline.stamps.surveys.predicted_depth)")

    @model_validator(mode="after")
    def _stamp_multiple_of_8(self) -> SurveyConfig:
        if (self.psf_type == "radio_beam") != (self.kind == "radio"):
            raise ValueError(f"psf_type={self.psf_type!r} does not fit kind={self.kind!r}: radio surveys and only "
                             "they use psf_type=radio_beam")
        if self.stamp_size % 8:
            raise ValueError(f"stamp_size must be a multiple of 8 (the networks downsample by 8), "
                             f"got {self.stamp_size}")
        return self


COSMOS_KINDS = ("cosmos_real", "cosmos")
"""Stamp population kinds drawn from a GalSim COSMOS catalogue (real galaxies, parametric fits)."""


class PopulationConfig(_Section):
    """The galaxies of stamps: bulge+disk Sersic profiles, real COSMOS HST galaxies, or their parametric fits.

    ``kind=parametric`` draws every shape parameter below. ``kind=cosmos_real`` draws each ring pair's
    galaxy from a GalSim COSMOS real-galaxy catalogue (``RealGalaxy``: the HST image with the HST PSF
    deconvolved) at a random orientation, rescaled to the drawn flux; the size, shape and bulge
    parameters below are then unused and their labels are NaN. ``kind=cosmos`` draws the same way
    from GalSim's parametric (Sersic or bulge+disk) fits of COSMOS galaxies, which the catalogue's
    ``_fits`` file holds.
    """

    kind: Literal["parametric", "cosmos_real", "cosmos"] = Field(
        "parametric", description="parametric (bulge+disk Sersic), cosmos_real (GalSim RealGalaxy from a COSMOS "
        "catalogue) or cosmos (GalSim's parametric fits of COSMOS galaxies)")
    cosmos_dir: Path | None = Field(None, strict=False, description="directory of the COSMOS catalogue "
                                    "(kind=cosmos_real or cosmos; default: GalSim's share directory, where "
                                    "galsim_download_cosmos puts the 25.2 sample)")
    cosmos_file_name: str | None = Field(None, description="catalogue file in cosmos_dir (default: GalSim's, "
                                         "real_galaxy_catalog_25.2.fits)")
    cosmos_exclusion_level: Literal["none", "bad_stamp", "bad_fits", "marginal"] = Field(
        "marginal", description="GalSim COSMOSCatalog exclusion_level (none for catalogues without fits files)")
    cosmos_split: Literal["all", "train", "test"] = Field(
        "all", description="COSMOS galaxies drawn (kind=cosmos_real or cosmos): all, or the train (80%) or test "
        "(20%) galaxies, split by a hash of each galaxy's IDENT; train a generator on train, judge it on test")
    hst_noise: Literal["whiten", "symmetrize"] = Field(
        "whiten", description="kind=cosmos_real: what is added to a real galaxy's HST noise (correlated by the "
        "PSF, anisotropic once turned and sheared) so that it carries no shape: whiten (whitenImage: a white "
        "total) or symmetrize (symmetrizeImage, 4-fold: under the default survey its total variance is ~40x "
        "smaller, so far more galaxies reach a given S/N, but the noise stays correlated and the S/N label "
        "overstates how well a near-ceiling galaxy is measured)")
    flux_min: float = Field(1.0e3, gt=0, le=FLUX_MAX, description="lower flux bound [ADU], log-uniform")
    flux_max: float = Field(2.0e4, gt=0, le=FLUX_MAX, description="upper flux bound [ADU], log-uniform")
    half_light_radius_min_arcsec: float = Field(0.3, ge=ANGLE_RANGE[0], le=ANGLE_RANGE[1],
                                                description="lower half-light radius [arcsec]")
    half_light_radius_max_arcsec: float = Field(1.0, ge=ANGLE_RANGE[0], le=ANGLE_RANGE[1],
                                                description="upper half-light radius [arcsec]")
    bulge_fraction_min: float = Field(0.0, ge=0, le=1, description="lower bulge-to-total flux ratio")
    bulge_fraction_max: float = Field(0.5, ge=0, le=1, description="upper bulge-to-total flux ratio")
    bulge_sersic_n: float = Field(4.0, ge=0.3, le=6.2, description="Sersic index of the bulge")
    disk_sersic_n: float = Field(1.0, ge=0.3, le=6.2, description="Sersic index of the disk")
    ellipticity_sigma: float = Field(0.2, ge=0, lt=0.7, description="rms per component of intrinsic |e|")
    snr_min: float = Field(20.0, gt=0, le=SNR_MAX, description="lower target S/N (GalSim addNoiseSNR)")
    snr_max: float = Field(100.0, gt=0, le=SNR_MAX, description="upper target S/N")

    @model_validator(mode="after")
    def _ordered(self) -> PopulationConfig:
        for low, high in (("flux_min", "flux_max"), ("half_light_radius_min_arcsec", "half_light_radius_max_arcsec"),
                          ("bulge_fraction_min", "bulge_fraction_max"), ("snr_min", "snr_max")):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low} ({getattr(self, low)}) must not exceed {high} ({getattr(self, high)})")
        return self


class ShearConfig(_Section):
    """Lensing: constant or per-object uniform shear, an NFW halo, or a Gaussian field from a power spectrum.

    ``nfw`` and ``power_spectrum`` depend on position: stamps get positions drawn uniformly in a
    ``field_size_arcmin`` square centred on the field origin; tiles use each object's position.
    On a tile, ``uniform`` (a random shear per object) falls back to the constant (g1, g2): one
    shear per object is meaningless for blended neighbours.
    """

    kind: Literal["constant", "uniform", "nfw", "power_spectrum"] = "uniform"
    g1: float = Field(0.0, ge=-0.5, le=0.5, description="constant g1 (kind=constant)")
    g2: float = Field(0.0, ge=-0.5, le=0.5, description="constant g2 (kind=constant)")
    g_max: float = Field(0.05, ge=0, lt=0.5, description="max |g| (kind=uniform)")
    g_min: float = Field(0.0, ge=0, lt=0.5, description="min |g| (kind=uniform): uniform in the ring g_min <= |g| <= "
                         "g_max")
    field_size_arcmin: float = Field(10.0, gt=0, le=600, description="side of the stamps' field (nfw, power_spectrum)")
    halo_mass_msun: float = Field(1.0e15, gt=0, description="NFW M_200 [M_sun / h] (kind=nfw)")
    halo_concentration: float = Field(4.0, gt=0, description="NFW concentration c_200 (kind=nfw)")
    halo_redshift: float = Field(0.3, gt=0, description="NFW halo redshift (kind=nfw)")
    halo_x_arcsec: float = Field(0.0, description="halo offset from the field centre along +u (west; +x of an "
                                  "unrotated tile) [arcsec]")
    halo_y_arcsec: float = Field(0.0, description="halo offset along +v (north) [arcsec]")
    omega_m: float = Field(0.3, gt=0, lt=1, description="matter density (flat LCDM) for the NFW lensing kernel")
    source_redshift: float = Field(1.0, gt=0, description="source redshift of stamps (tiles draw their own)")
    power_spectrum_amplitude: float = Field(5.0e-4, ge=0, description="A of P_E(k) = A (k / 1 arcmin^-1)^-slope "
                                            "[arcmin^2] (kind=power_spectrum)")
    power_spectrum_slope: float = Field(1.0, ge=0, le=4, description="slope of P_E(k) (kind=power_spectrum)")
    grid_spacing_arcsec: float = Field(20.0, gt=0, description="shear-field grid spacing (kind=power_spectrum)")

    @model_validator(mode="after")
    def _shear_range(self) -> ShearConfig:
        if self.g_min > self.g_max:
            raise ValueError(f"g_min ({self.g_min}) must not exceed g_max ({self.g_max})")
        return self


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


class TileDefectConfig(_Section):
    """Optical detector artefacts of a tile, each owning one bit of ``MASK_BITS`` (rates per exposure)."""

    cosmic_rays_per_megapixel: float = Field(5.0, ge=0, le=1e4, description="Poisson mean of cosmic-ray tracks "
                                             "per 10^6 pixels of the tile (all its exposures together)")
    cosmic_ray_length_max_pixels: int = Field(20, ge=1, le=1024, description="longest track [pixels]")
    cosmic_ray_charge_e: float = Field(2000.0, ge=0, description="charge deposited per track pixel [e-]")
    hot_pixel_fraction: float = Field(2e-5, ge=0, le=0.1, description="share of pixels that are hot")
    hot_pixel_charge_e: float = Field(5000.0, ge=0, description="charge of a hot pixel [e-]")
    bad_columns_per_chip: float = Field(0.5, ge=0, le=100, description="Poisson mean of bad columns per chip")
    satellite_trails_per_tile: float = Field(0.3, ge=0, le=100, description="Poisson mean of satellite trails")
    satellite_trail_width_pixels: float = Field(4.0, gt=0, le=200, description="full width of a trail [pixels]")
    satellite_trail_charge_e: float = Field(500.0, ge=0, description="charge per trail pixel [e-]")
    chip_size_pixels: tuple[StrictInt, StrictInt] = Field((4096, 4096), strict=False,
                                                          description="(nx, ny) of one detector [pixels]")
    chip_gap_pixels: int = Field(0, ge=0, le=1000, description="dead pixels between detectors")
    edge_pixels: int = Field(8, ge=0, le=200, description="flagged EDGE band at each detector border [pixels]")
    blank_patches_per_tile: float = Field(0.0, ge=0, le=100, description="Poisson mean of blank (no data) patches")
    blank_patch_size_max_pixels: int = Field(256, ge=1, description="largest blank patch side [pixels]")

    @model_validator(mode="after")
    def _positive_chips(self) -> TileDefectConfig:
        if min(self.chip_size_pixels) < 16:
            raise ValueError(f"chip_size_pixels must be >= 16 on each side, got {list(self.chip_size_pixels)}")
        return self


class TileConfig(_Section):
    """A survey tile: a large image with a TAN WCS, galaxies (with blends), stars, sky and artefacts."""

    size_pixels: tuple[StrictInt, StrictInt] = Field((4096, 4096), strict=False,
                                                     description="(nx, ny) of the tile [pixels]")
    region_size_pixels: int = Field(512, ge=128, description="side of the regions rendered in parallel [pixels]; "
                                    "a multiple of 128 (the noise block)")
    ra_deg: float = Field(150.1163, ge=0, lt=360, description="right ascension of the tile centre [deg]")
    dec_deg: float = Field(2.2009, ge=-90, le=90, description="declination of the tile centre [deg]")
    rotation_deg: float = Field(0.0, description="angle of the tile's +y axis east of north [deg]")
    population: Literal["parametric", "cosmos", "cosmos_real"] = Field(
        "parametric", description="galaxy population: parametric; cosmos (GalSim's parametric fits of COSMOS "
        "galaxies); cosmos_real (the real HST galaxies, GalSim RealGalaxy, at the tile's magnitudes)")
    cosmos_dir: Path | None = Field(None, strict=False,
                                    description="directory of a GalSim COSMOS catalogue (population=cosmos, "
                                    "cosmos_real)")
    cosmos_file_name: str = Field("real_galaxy_catalog_23.5_example.fits", description="COSMOS catalogue file")
    cosmos_exclusion_level: Literal["none", "bad_stamp", "bad_fits", "marginal"] = Field(
        "marginal", description="GalSim COSMOSCatalog exclusion_level of population=cosmos_real (none for "
        "catalogues without fits files)")
    galaxy_density_per_arcmin2: float = Field(60.0, ge=0, le=2000, description="galaxies per arcmin^2 "
                                              "(all drawn magnitudes)")
    magnitude_min: float = Field(20.0, description="brightest galaxy [mag]")
    magnitude_max: float = Field(27.0, description="faintest galaxy [mag]")
    number_count_slope: float = Field(0.33, ge=0, le=1, description="d log10 N / d mag of the galaxy counts")
    half_light_radius_at_24_arcsec: float = Field(0.35, ge=ANGLE_RANGE[0], le=ANGLE_RANGE[1],
                                                  description="median half-light radius at mag 24 "
                                                  "[arcsec]")
    size_magnitude_slope: float = Field(0.1, ge=0, le=0.5, description="-d log10 r_half / d mag")
    size_scatter_dex: float = Field(0.15, ge=0, le=1, description="log-normal scatter of the size [dex]")
    median_redshift: float = Field(0.9, gt=0, le=5, description="median source redshift (Smail n(z), alpha=2, "
                                   "beta=1.5)")
    star_density_per_arcmin2: float = Field(1.0, ge=0, le=1000, description="stars per arcmin^2")
    star_magnitude_min: float = Field(16.0, description="brightest star [mag]")
    star_magnitude_max: float = Field(26.0, description="faintest star [mag]")
    noise: bool = Field(True, description="add sky and detector noise (CCDNoise)")
    defects: TileDefectConfig = TileDefectConfig()

    @model_validator(mode="after")
    def _consistent(self) -> TileConfig:
        if self.region_size_pixels % 128:
            raise ValueError(f"region_size_pixels must be a multiple of 128, got {self.region_size_pixels}")
        if min(self.size_pixels) < 32 or max(self.size_pixels) > 32768:
            raise ValueError(f"size_pixels must be within 32..32768 on each side, got {list(self.size_pixels)}")
        for low, high in (("magnitude_min", "magnitude_max"), ("star_magnitude_min", "star_magnitude_max")):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low} ({getattr(self, low)}) must not exceed {high} ({getattr(self, high)})")
        if self.population in ("cosmos", "cosmos_real") and self.cosmos_dir is None:
            raise ValueError(f"population={self.population} needs cosmos_dir (a directory with a GalSim COSMOS "
                             "catalogue)")
        return self


class RadioConfig(_Section):
    """Interferometer observation of a radio tile or radio stamps (``survey.kind=radio``)."""

    layout: str = Field("ska-mid-like", description="antenna layout (lensforge.pipeline.radio.layouts.ANTENNA_LAYOUTS)")
    max_radius_m: float = Field(10000.0, gt=0, description="outermost antenna of scalable layouts [m]")
    frequency_hz: float = Field(1.4e9, gt=0, description="observing frequency [Hz]")
    bandwidth_hz: float = Field(1.0e7, gt=0, description="channel bandwidth for the thermal noise [Hz]")
    integration_s: float = Field(60.0, gt=0, description="time per visibility sample [s]")
    declination_deg: float = Field(-30.0, ge=-90, le=90, description="declination of the pointing [deg]")
    hour_angle_start_h: float = Field(-2.0, ge=-12, le=12, description="first hour angle [h]")
    hour_angle_stop_h: float = Field(2.0, ge=-12, le=12, description="last hour angle [h]")
    n_times: int = Field(24, ge=1, le=2000, description="time samples of the Earth-rotation synthesis")
    sefd_jy: float = Field(400.0, gt=0, description="system equivalent flux density of one dish [Jy]")
    n_extended: int = Field(40, ge=0, description="extended sources per tile")
    n_compact: int = Field(200, ge=0, description="compact sources per tile")
    flux_min_jy: float = Field(1.0e-4, gt=0, description="faintest source [Jy]")
    flux_max_jy: float = Field(1.0e-1, gt=0, description="brightest source [Jy]")
    blank_patches: int = Field(3, ge=0, description="flagged / blank patches per radio tile")
    blank_patch_size_max_pixels: int = Field(64, ge=4, description="largest blank patch side [pixels] (smallest: 4)")
    stamp_visibilities: bool = Field(False, description="radio stamps: store each stamp's visibilities (the track "
                                     "gridded on the stamp's uv cells, with weights) and make its image their dirty "
                                     "image (lensforge.pipeline.radio.stamp_visibilities)")

    @model_validator(mode="after")
    def _ordered(self) -> RadioConfig:
        if self.hour_angle_start_h >= self.hour_angle_stop_h:
            raise ValueError("hour_angle_start_h must be before hour_angle_stop_h")
        if self.flux_min_jy > self.flux_max_jy:
            raise ValueError("flux_min_jy must not exceed flux_max_jy")
        return self


class DetectConfig(_Section):
    """Source detection on tiles (photutils), matching to truth and the completeness report."""

    enabled: bool = Field(True, description="detect sources on every rendered optical tile")
    threshold_nsigma: float = Field(0.6, gt=0, description="threshold on the PSF-smoothed image, in units of the "
                                    "unsmoothed per-pixel background rms (SExtractor convention)")
    n_pixels: int = Field(5, ge=1, description="minimum connected pixels of a source")
    deblend: bool = Field(True, description="deblend overlapping sources (photutils deblend_sources)")
    box_size_pixels: int = Field(64, ge=8, description="Background2D box [pixels]")
    match_radius_arcsec: float = Field(0.6, gt=0, description="largest truth-detection separation of a match")
    isolation_radius_arcsec: float = Field(3.0, ge=0, description="an object is isolated without another truth "
                                           "object this close")


class SimulationConfig(_Section):
    """How many objects, and how the work is cut into chunks (one Prefect task per chunk)."""

    n_objects: int = Field(4096, ge=1, description="number of stamps")
    chunk_size: int = Field(512, ge=1, description="stamps per task and per Zarr chunk")
    ring_pairs: bool = Field(True, description="draw objects in 90-degree rotated pairs with equal shear")
    store_noiseless: bool = Field(True, description="also store the noise-free images (truth for in-painting)")
    pair_noise: bool = Field(True, description="ring partners get the first member's noise field and mask rotated by "
                             "90 degrees: pixel noise cancels in the pair (see lensforge.pipeline.stamps.pairing)")
    counterfactual_delta_g: float | None = Field(
        None, gt=0, lt=0.1, description="if set, also store each stamp drawn at g1 +- dg and g2 +- dg with the same "
        "noise (the counterfactuals array; dg = 0.01 is the metacalibration choice)")


class RenderConfig(_Section):
    """How generated galaxies (intrinsic profiles) become stamps: GalSim, the reference, one at a time, or the
    batched torch path validated against it (``lensforge.pipeline.stamps.torch_render``)."""

    backend: Literal["galsim", "torch"] = Field("galsim", description="galsim: InterpolatedImage per object "
                                                "(reference); torch: batched Fourier sums, same physics")
    precision: Literal["float64", "float32"] = Field("float64", description="torch backend's arithmetic: float64 "
                                                     "agrees with GalSim to ~1e-7 of the peak, float32 to ~1e-6")
    batch_size: int = Field(64, ge=1, le=4096, description="stamps per torch batch (speed only: the bytes of a "
                            "stamp do not depend on it)")


class TrainConfig(_Section):
    """VAE-GAN training settings (written to the model directory before training starts)."""

    # 3000, not 1500 (benchmarks/optical_training_length.py -> docs/results/optical_training_length.json; the
    # calibration side only, never a run's held-out stamps). At 1500 steps the decoder's posterior-mean
    # reconstructions of independent stamps had 0.79x their true HSM |g| (3000: 0.96x, 6000: 1.01x) and
    # generated galaxies were too round: W(C, generated at B) / W(C, B) over four draws of B against a fifth
    # sample C, mean ratio of size / |e| / Gini / M20 / C: 1500 steps 1.74 / 3.08 / 1.02 / 1.11 / 1.00;
    # 3000 steps 1.80 / 1.43 / 1.15 / 1.40 / 1.19; 6000 steps 2.60 / 1.50 / 1.98 / 1.45 / 1.56 (longer training
    # moves flux into the faint wings: Gini and size drift). In-painting RMSE 0.226 / 0.200 / 0.199 sigma.
    steps: int = Field(3000, ge=1, description="optimizer steps")
    batch_size: int = Field(64, ge=2, description="stamps per step")
    latent_dim: int = Field(64, ge=2, description="size of z")
    base_channels: int = Field(8, ge=4, description="channels of the first conv layer")
    learning_rate: float = Field(2.0e-4, gt=0, description="Adam learning rate")
    kl_weight: float = Field(0.1, ge=0, description="weight of KL(q(z|x,m) || N(0,1)) per pixel; 1 is the ELBO, "
                             "0.1 (a beta-VAE) keeps reconstructions sharp (generation samples a density "
                             "fitted to the posterior means, not the prior)")
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
    model_version: str = Field("v001", pattern=r"^v\d{3,}$",
                               description="registry version this training writes and resumes (<run>/models/)")


class InpaintConfig(_Section):
    """In-painting of the store's masked pixels."""

    n_samples: int = Field(8, ge=1, le=256, description="posterior samples per stamp (mean and std)")
    batch_size: int = Field(256, ge=1, description="stamps per forward pass")
    model_version: str | None = Field(
        None, pattern=r"^v\d{3,}$",
        description="registry version used to in-paint and generate (None: the promoted one, else train.model_version)")


class EvaluateConfig(_Section):
    """The evaluation report (held-out stamps only)."""

    n_inpaint: int = Field(512, ge=1, description="masked held-out stamps for the in-painting metrics")
    generation: bool = Field(True, description="also evaluate generated galaxies against truth")
    n_generate: int = Field(400, ge=4, description="stamps per sample (truth A, truth B, each model)")
    n_morphology: int = Field(200, ge=0, description="stamps per sample measured with statmorph (~0.2 s each)")
    temperatures: tuple[StrictFloat, ...] = Field((0.5, 0.75, 1.0, 1.25), min_length=1, strict=False,
                                            description="temperatures of the fidelity-diversity sweep")
    workers: int = Field(2, ge=1, description="processes for the morphology measurements")

    @model_validator(mode="after")
    def _positive_temperatures(self) -> EvaluateConfig:
        if any(not t > 0 for t in self.temperatures):
            raise ValueError(f"temperatures must be > 0, got {list(self.temperatures)}")
        return self


class JobqueueConfig(_Section):
    """A batch-system Dask cluster (dask-jobqueue): each job runs ``processes`` workers."""

    kind: Literal["slurm", "pbs"] = Field("slurm", description="batch system")
    jobs: int = Field(2, ge=1, description="jobs to submit (cluster.scale(jobs=...))")
    cores: int = Field(8, ge=1, description="cores per job")
    processes: int = Field(8, ge=1, description="Dask worker processes per job")
    memory: str = Field("16GB", description="memory per job, e.g. 16GB")
    walltime: str = Field("02:00:00", description="job walltime HH:MM:SS")
    queue: str | None = Field(None, description="partition / queue name")
    account: str | None = Field(None, description="account / project to charge")
    job_extra_directives: tuple[StrictStr, ...] = Field((), strict=False, description="extra #SBATCH / #PBS lines")


class DaskConfig(_Section):
    """Where parallel work runs: a LocalCluster (default) or an existing scheduler."""

    n_workers: int = Field(2, ge=1, description="LocalCluster worker processes")
    threads_per_worker: int = Field(1, ge=1, description="threads per worker")
    address: str | None = Field(None, pattern=r"^(tcp|tls|ucx|ws|wss)://[A-Za-z0-9_.\-\[\]:]+:[0-9]{1,5}$",
                                description="tcp://host:port of an existing scheduler (overrides n_workers)")
    dashboard: bool = Field(False, description="start the Dask dashboard (bound to 127.0.0.1)")
    in_process_below: int = Field(1024, ge=0, description="simulate runs of fewer objects in this process: no "
                                  "Prefect server or Dask cluster to start when none is configured (0: never)")
    jobqueue: JobqueueConfig | None = Field(None, description="a dask-jobqueue cluster (SLURM / PBS) instead of a "
                                            "LocalCluster; needs the 'hpc' extra (dask-jobqueue)")

    @model_validator(mode="after")
    def _one_cluster(self) -> DaskConfig:
        if self.address and self.jobqueue is not None:
            raise ValueError("give either dask.address (an existing scheduler) or dask.jobqueue, not both")
        return self


class LimitsConfig(_Section):
    """Resource limits every command checks its inputs against before reading or allocating them."""

    memory_budget_gb: float = Field(DEFAULT_MEMORY_BUDGET_GB, gt=0, allow_inf_nan=False,
                                    description="largest memory an input may need [GB]; bigger inputs are "
                                                "refused in one line before they are read")


class RunConfig(_Section):
    """Everything one run needs; ``RunConfig()`` is the embedded default."""

    name: str = Field("demo", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="run directory name")
    out_dir: Path = Field(Path("runs"), strict=False, description="parent of the run directory")
    seed: int = Field(20261123, ge=0, lt=2**63, description="run seed: every random number derives from it")
    survey: SurveyConfig = SurveyConfig()
    population: PopulationConfig = PopulationConfig()
    shear: ShearConfig = ShearConfig()
    masks: MaskConfig = MaskConfig()
    tile: TileConfig = TileConfig()
    radio: RadioConfig = RadioConfig()
    detect: DetectConfig = DetectConfig()
    simulation: SimulationConfig = SimulationConfig()
    render: RenderConfig = RenderConfig()
    train: TrainConfig = TrainConfig()
    inpaint: InpaintConfig = InpaintConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    dask: DaskConfig = DaskConfig()
    limits: LimitsConfig = LimitsConfig()

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

    @model_validator(mode="after")
    def _visibilities_of_radio_stamps(self) -> RunConfig:
        if self.radio.stamp_visibilities and self.survey.kind != "radio":
            raise ValueError("radio.stamp_visibilities needs a radio survey (survey.kind: radio, e.g. preset ska_mid)")
        if self.radio.stamp_visibilities and self.population.kind != "parametric":
            raise ValueError("radio.stamp_visibilities works with population.kind: parametric only")
        return self

    @model_validator(mode="after")
    def _fits_in_stamp(self) -> RunConfig:
        # The stamp must hold the galaxy and the PSF: GalSim sizes its FFT from the profile in pixels,
        # and a profile many stamps wide fails there (or overflows) instead of here.
        survey, population = self.survey, self.population
        width = survey.stamp_size * survey.pixel_scale_arcsec
        for key, value, share in (("population.half_light_radius_max_arcsec", population.half_light_radius_max_arcsec,
                                   2), ("survey.psf_fwhm_arcsec", survey.psf_fwhm_arcsec, 2)):
            if value > width / share:
                raise ValueError(f"{key} ({value:g}) must be at most 1/{share} of the stamp's width "
                                 f"(survey.stamp_size * survey.pixel_scale_arcsec = {width:g} arcsec)")
        return self


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected section.key=value", item)
    key, raw = item.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise ConfigError(f"override {item!r}: empty key", item)
    try:
        value = parse_yaml(raw, f"override {item!r}") if raw.strip() else None
    except ConfigError as err:
        message = err.message if "duplicate key" in err.message else f"override {item!r}: the value is not valid YAML"
        raise ConfigError(message, item) from None
    return path, value


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(path)}: {part} is not a section", part)
        node = child
    node[path[-1]] = value


_GIVEN_REPR = reprlib.Repr()  # keyword arguments to Repr() need Python 3.12; this project runs on 3.11
_GIVEN_REPR.maxlevel, _GIVEN_REPR.maxlist, _GIVEN_REPR.maxtuple, _GIVEN_REPR.maxdict = 2, 4, 4, 4
_GIVEN_REPR.maxstring, _GIVEN_REPR.maxother = 60, 60


def _section_model(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The section class at ``loc`` (``("survey",)`` -> SurveyConfig; ``()`` -> RunConfig), or None."""
    model: type[BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        candidates = [field.annotation, *typing.get_args(field.annotation)]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model


def did_you_mean(loc: tuple[Any, ...]) -> str:
    """``"; did you mean 'train.steps'?"`` for an unknown key at ``loc`` (``("train", "step")``), else ``""``."""
    model = _section_model(loc[:-1])
    if model is None or not loc:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), list(model.model_fields), n=1, cutoff=0.6)
    return f"; did you mean '{'.'.join([*map(str, loc[:-1]), close[0]])}'?" if close else ""


def _format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'{did_you_mean(tuple(first['loc']))}"
    if not first["loc"] and first["type"] == "value_error":
        # A check across sections names its keys itself.
        return f"{source}: {first['msg'].removeprefix('Value error, ')}"
    given = first.get("input")
    # reprlib bounds the echo: a YAML alias bomb (a few lines expanding to 10^9 items) or a huge
    # string must not be printed in full, nor a multi-line one break the one-line message.
    given_text = "" if isinstance(given, dict) else f" (got {_GIVEN_REPR.repr(given)})"
    return f"{source}: invalid value for '{key}': {first['msg']}{given_text}"


def build_config(values: dict[str, Any] | None = None, source: str = "config") -> RunConfig:
    """Validate a nested dict into a ``RunConfig``; ``ConfigError`` names the bad key."""
    if values is not None and not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level", values)
    try:
        return RunConfig.model_validate(values or {})
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source), values) from None


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping of a YAML configuration file (not validated); ``ConfigError`` names the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found", str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file ({err.strerror})", str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid YAML", str(path)) from None
    loaded = parse_yaml(text, str(path))
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level", str(path))
    return loaded or {}


def config_values(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                  preset: str | None = None) -> tuple[dict[str, Any], str, str | None]:
    """(the settings the preset, the file at ``path`` and the overrides give, not yet validated; the
    source naming them in messages; the preset used).

    A file may name its preset with a top-level ``preset:`` key; ``preset`` given here wins.
    """
    from lensforge.pipeline.presets import deep_merge, preset_values

    values: dict[str, Any] = {}
    source = "config"
    if path is not None:
        source = str(path)
        values = read_config_file(path)
    file_preset = values.pop("preset", None)
    preset = preset or file_preset
    if preset is not None:
        if not isinstance(preset, str):
            raise ConfigError(f"{source}: preset must be a name, got {preset!r}", preset)
        values = deep_merge(preset_values(preset), values)
        source = f"preset {preset} + {source}"
    for item in overrides:
        key_path, value = _parse_override(item)
        _set_path(values, key_path, value)
    if overrides:
        source = "--set" if path is None and preset is None else f"{source} + --set"
    return values, source, preset


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                preset: str | None = None, base: dict[str, Any] | None = None) -> RunConfig:
    """Defaults (or ``base``, say an existing run's settings), then the survey ``preset``, then the YAML
    file at ``path``, then ``section.key=value`` overrides.

    A file may name its preset with a top-level ``preset:`` key; ``preset`` given here wins.
    """
    from lensforge.pipeline.presets import deep_merge

    values, source, _ = config_values(path, overrides, preset)
    return build_config(deep_merge(base, values) if base else values, source)
