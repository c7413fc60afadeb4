"""Checkpoint round trip and every way loading must refuse a bad model directory."""

import json

import pytest
import torch

from lensforge.errors import ModelError
from lensforge.models.checkpoint import load_checkpoint, save_checkpoint
from lensforge.models.vaegan import VAEGAN, ModelSettings

SETTINGS = ModelSettings(stamp_size=32, latent_dim=6, base_channels=4)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(3)
    model = VAEGAN(SETTINGS)
    out = save_checkpoint(model, tmp_path / "model", extra_meta={"step": 7})
    return model, out


def test_round_trip_identical(saved):
    model, out = saved
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "weights.safetensors"]
    loaded, meta = load_checkpoint(out)
    assert loaded.settings == SETTINGS and not loaded.training
    assert meta["format"] == "lensforge-vaegan" and meta["format_version"] == 1
    assert meta["model_class"] == "VAEGAN" and meta["step"] == 7 and len(meta["weights_sha256"]) == 64
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for name in original:
        assert torch.equal(original[name], restored[name]), name


def test_weights_are_not_pickled(saved):
    _, out = saved
    head = (out / "weights.safetensors").read_bytes()[:64]
    assert not head.startswith(b"PK") and b"\x80\x02" not in head[:2]


def test_tampered_weights(saved):
    _, out = saved
    path = out / "weights.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"weights\.safetensors sha256 .*tampered"):
        load_checkpoint(out)


def test_foreign_meta(saved):
    _, out = saved
    meta = json.loads((out / "meta.json").read_text())
    meta["format"] = "something-else"
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"meta\.json is not a lensforge-vaegan checkpoint"):
        load_checkpoint(out)


def test_wrong_version_and_bad_json(saved):
    _, out = saved
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ModelError, match="format_version 99"):
        load_checkpoint(out)
    (out / "meta.json").write_text("{not json")
    with pytest.raises(ModelError, match=r"meta\.json is not valid JSON"):
        load_checkpoint(out)


def test_truncated_weights(saved):
    _, out = saved
    path = out / "weights.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ModelError, match="sha256"):
        load_checkpoint(out)


def test_truncated_weights_with_matching_hash_is_a_parse_error(saved):
    import hashlib

    _, out = saved
    path = out / "weights.safetensors"
    data = path.read_bytes()[:100]
    path.write_bytes(data)
    meta = json.loads((out / "meta.json").read_text())
    meta["weights_sha256"] = hashlib.sha256(data).hexdigest()
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="not a readable safetensors file"):
        load_checkpoint(out)


def test_settings_that_do_not_fit_the_weights(saved):
    _, out = saved
    meta = json.loads((out / "meta.json").read_text())
    meta["model_settings"]["latent_dim"] = 9
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="has shape .* model expects"):
        load_checkpoint(out)


def test_missing_files(tmp_path, saved):
    with pytest.raises(ModelError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    _, out = saved
    (out / "weights.safetensors").unlink()
    with pytest.raises(ModelError, match=r"weights\.safetensors are missing"):
        load_checkpoint(out)
    (out / "meta.json").unlink()
    with pytest.raises(ModelError, match=r"meta\.json is missing"):
        load_checkpoint(out)
