from __future__ import annotations

import numpy as np
import pytest

from lensforge.errors import ConfigError
from lensforge.models.vaegan import VAEGAN, ModelSettings
from lensforge.pipeline.evaluation.inpainting import masked_pixel_errors
from lensforge.pipeline.inpaint.stamps import inpaint_arrays


def _stamps(n=4, size=16, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    truth = np.stack([100 * np.exp(-((yy - 8) ** 2 + (xx - 8) ** 2) / 8.0)] * n).astype(np.float32)
    images = (truth + rng.normal(0, 1, truth.shape)).astype(np.float32)
    masks = np.zeros(truth.shape, np.uint8)
    masks[:, 6:10, 7] = 2
    masks[1:, 2:4, 2:5] = 128
    return truth, images, masks, np.ones(n)


@pytest.mark.parametrize("method", ["model", "biharmonic"])
def test_known_pixels_are_never_altered(method):
    truth, images, masks, sigma = _stamps()
    model = VAEGAN(ModelSettings(stamp_size=16, latent_dim=4, base_channels=4))
    mean, std = inpaint_arrays(method, images, masks, sigma, model=model, n_samples=3, seed=1)
    known = masks == 0
    np.testing.assert_array_equal(mean[known], images[known])
    assert mean.dtype == np.float32 and mean.shape == images.shape
    assert np.isfinite(mean).all()
    if method == "model":
        assert (std[known] == 0).all() and (std[~known] > 0).all()
    else:
        assert std is None


def test_model_draws_depend_on_object_index_not_on_chunking():
    truth, images, masks, sigma = _stamps(n=6)
    model = VAEGAN(ModelSettings(stamp_size=16, latent_dim=4, base_channels=4))
    whole, _ = inpaint_arrays("model", images, masks, sigma, model, n_samples=2, seed=3)
    head, _ = inpaint_arrays("model", images[:2], masks[:2], sigma[:2], model, n_samples=2, seed=3)
    tail, _ = inpaint_arrays("model", images[2:], masks[2:], sigma[2:], model, n_samples=2, seed=3, start_index=2)
    np.testing.assert_allclose(np.concatenate([head, tail]), whole, rtol=1e-5, atol=1e-5)


def test_biharmonic_fills_a_smooth_profile_well():
    truth, images, masks, sigma = _stamps()
    noiseless_input = np.where(masks == 0, truth, 0).astype(np.float32)
    filled, _ = inpaint_arrays("biharmonic", noiseless_input, masks, sigma)
    errors = masked_pixel_errors(filled, truth, masks, sigma)
    assert errors["rmse_adu"] < 5.0  # peak 100: a smooth Gaussian is easy for biharmonic
    zeros = masked_pixel_errors(noiseless_input, truth, masks, sigma)
    assert zeros["rmse_adu"] > 5 * errors["rmse_adu"]


def test_unknown_method_lists_the_valid_ones():
    truth, images, masks, sigma = _stamps()
    valid = r"\['biharmonic', 'interpolate', 'model', 'symmetric'\]"
    with pytest.raises(ConfigError, match=rf"unknown in-painting method 'magic'; valid: {valid}"):
        inpaint_arrays("magic", images, masks, sigma)
    with pytest.raises(ConfigError, match="needs a trained model"):
        inpaint_arrays("model", images, masks, sigma, model=None)


def test_masked_pixel_errors_by_hand():
    truth = np.zeros((1, 2, 2))
    truth[0, 0, 0] = 10.0
    prediction = np.array([[[7.0, 0.0], [0.0, 4.0]]])
    masks = np.array([[[1, 0], [0, 1]]], np.uint8)
    errors = masked_pixel_errors(prediction, truth, masks, np.array([2.0]))
    assert errors["pixels"] == 2 and errors["on_galaxy_pixels"] == 1
    assert errors["rmse_adu"] == pytest.approx(np.sqrt((9 + 16) / 2))
    assert errors["rmse_noise_units"] == pytest.approx(np.sqrt((9 + 16) / 2) / 2)
    assert errors["on_galaxy_rmse_adu"] == pytest.approx(3.0)


def test_model_inpaints_a_tile_without_touching_known_pixels():
    """A 96x150 'tile' with a blank patch and a full-height bad column, filled by the model through windows."""
    import torch

    from lensforge.models.vaegan import VAEGAN, ModelSettings
    from lensforge.pipeline.inpaint.images import inpaint_tile
    from lensforge.pipeline.inpaint.stamps import stamp_inpainter

    torch.manual_seed(0)
    model = VAEGAN(ModelSettings(stamp_size=32, latent_dim=6, base_channels=4)).eval()
    rng = np.random.default_rng(5)
    image = rng.normal(0.0, 2.0, (96, 150)).astype(np.float32)
    mask = np.zeros(image.shape, dtype=bool)
    mask[40:52, 60:75] = True
    mask[:, 120] = True
    image[mask] = np.nan
    mean, std = inpaint_tile(image, mask, 2.0, stamp_inpainter("model", model, n_samples=3, seed=1), window=32,
                             overlap=8, batch_size=4)
    assert mean.shape == std.shape == image.shape
    assert np.array_equal(mean[~mask], image[~mask]) and (std[~mask] == 0).all()
    assert np.isfinite(mean).all() and (std[mask] >= 2.0 * (1 - 1e-5)).all()  # predictive std >= pixel noise
    again, _ = inpaint_tile(image, mask, 2.0, stamp_inpainter("model", model, n_samples=3, seed=1), window=32,
                            overlap=8, batch_size=64)
    np.testing.assert_allclose(again, mean, rtol=1e-5, atol=1e-5)  # same draws whatever the batching
    with pytest.raises(ConfigError, match="unknown in-painting method"):
        stamp_inpainter("magic")


def _small_store(path, n=12, size=16, chunk=4):
    from lensforge.catalogs.store import create_store, write_objects

    truth, images, masks, sigma = _stamps(n=n, size=size, seed=4)
    create_store(path, n, size, chunk, include_noiseless=False)
    write_objects(path, 0, {"images": images, "masks": masks, "noise_sigma": sigma})
    return images, masks


def _store_files(path):
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_store_inpainting_resumes_after_a_crash_with_the_bytes_of_an_uninterrupted_run(tmp_path, monkeypatch):
    """A crash after 2 of 3 chunks: the rerun redoes only the last one and leaves identical store files."""
    import torch

    import lensforge.pipeline.inpaint.stamps as stage
    from lensforge.catalogs.store import open_store

    torch.manual_seed(0)
    model = VAEGAN(ModelSettings(stamp_size=16, latent_dim=4, base_channels=4))
    clean, crashed = tmp_path / "clean" / "trainset.zarr", tmp_path / "crashed" / "trainset.zarr"
    images, masks = _small_store(clean)
    _small_store(crashed)
    stage.inpaint_store(clean, model, 2, 7, 3, progress=False, model_sha256="abc")
    assert stage.inpainting_complete(open_store(clean))

    calls = []
    real_write, real_inpaint = stage.write_objects, stage.inpaint_arrays

    def dying_write(path, start, arrays):
        if start == 8:  # the third chunk: die before it is written
            raise KeyboardInterrupt("killed")
        real_write(path, start, arrays)

    def counting_inpaint(*args, **kwargs):
        calls.append(args[7])  # start index
        return real_inpaint(*args, **kwargs)

    monkeypatch.setattr(stage, "write_objects", dying_write)
    with pytest.raises(KeyboardInterrupt):
        stage.inpaint_store(crashed, model, 2, 7, 3, progress=False, model_sha256="abc")
    monkeypatch.setattr(stage, "write_objects", real_write)
    group = open_store(crashed)
    assert not stage.inpainting_complete(group) and group["inpainted_std"].attrs["complete"] is False
    markers = stage.inpaint_markers(crashed, stage.inpainting_key(model, 2, 7, 3, "abc"))
    assert sorted(p.name for p in markers.directory.iterdir()) == ["0000000000-0000000004.done",
                                                                "0000000004-0000000008.done"]
    assert np.isnan(group["inpainted"][8:]).all()  # the unfinished chunk was never written
    stale = crashed / "inpainted" / "c" / "2" / "0" / f"0.{'0' * 32}.partial"  # what a kill mid-write leaves
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"half a chunk")

    monkeypatch.setattr(stage, "inpaint_arrays", counting_inpaint)
    assert stage.inpaint_store(crashed, model, 2, 7, 3, progress=False, model_sha256="abc") == 12
    assert calls == [8]  # only the chunk the crash lost
    assert _store_files(crashed) == _store_files(clean)
    group = open_store(crashed)
    assert stage.inpainting_complete(group)
    known = masks == 0
    np.testing.assert_array_equal(group["inpainted"][:][known], images[known])

    # A finished in-painting reruns as a no-op; another seed (another key) redoes every chunk.
    calls.clear()
    stage.inpaint_store(crashed, model, 2, 7, 3, progress=False, model_sha256="abc")
    assert calls == [] and _store_files(crashed) == _store_files(clean)
    stage.inpaint_store(crashed, model, 2, 8, 3, progress=False, model_sha256="abc")
    assert calls == [0, 4, 8] and not markers.directory.exists()
    assert not np.array_equal(open_store(crashed)["inpainted"][:], open_store(clean)["inpainted"][:])


def test_an_unfinished_store_is_refused_untouched(tmp_path):
    """Labels never written (an interrupted simulation): one-line error, no array added, no byte changed."""
    from lensforge.catalogs.store import create_store, write_objects
    from lensforge.errors import InputError
    from lensforge.pipeline.inpaint.stamps import inpaint_store

    truth, images, masks, sigma = _stamps(n=8, size=16)
    path = tmp_path / "trainset.zarr"
    create_store(path, 8, 16, 4, include_noiseless=False)
    write_objects(path, 0, {"images": images[:4], "masks": masks[:4], "noise_sigma": sigma[:4]})  # half done
    before = _store_files(path)
    model = VAEGAN(ModelSettings(stamp_size=16, latent_dim=4, base_channels=4))
    with pytest.raises(InputError, match="noise_sigma is missing or not > 0 for 4 of 8 stamps") as error:
        inpaint_store(path, model, 2, 0, 4, progress=False)
    assert "\n" not in str(error.value)
    assert _store_files(path) == before and not (tmp_path / ".progress").exists()
