"""The model registry (lensforge.models.registry) and ``lensforge models`` (lensforge.flows.models_cli) on real
tiny checkpoints."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch
import typer
from typer.testing import CliRunner

from lensforge.errors import ModelError
from lensforge.flows.models_cli import models_app
from lensforge.models.checkpoint import save_checkpoint
from lensforge.models.registry import (
    PROMOTED_FILE,
    RegistryWarning,
    list_models,
    promote,
    promoted_version,
    read_metrics,
    record_metrics,
    resolve_version,
    show_model,
)
from lensforge.models.vaegan import VAEGAN, ModelSettings

SETTINGS = ModelSettings(stamp_size=32, latent_dim=4, base_channels=4)
DATA_SHA = "d" * 64


def _train_settings(objective: str, steps: int) -> dict:
    return {"steps": steps, "batch_size": 8, "learning_rate": 2e-4, "objective": objective, "seed": 1,
            "device": "cpu"}


def _save(root, version: str, objective: str = "hybrid", step: int = 10, steps: int = 10, seed: int = 0):
    """A checkpoint as training leaves it: weights + meta.json + settings.json."""
    torch.manual_seed(seed)
    out = save_checkpoint(VAEGAN(SETTINGS), root / version,
                          extra_meta={"step": step, "train_settings": _train_settings(objective, steps),
                                      "data_sha256": DATA_SHA})
    (out / "settings.json").write_text(json.dumps({"train_settings": _train_settings(objective, steps),
                                                   "data_sha256": DATA_SHA, "n_stamps": 64}))
    return out


def _tamper(model_dir) -> None:
    path = model_dir / "weights.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def root(tmp_path):
    """A run-like registry: models/v001 (hybrid), models/v001-vae, models/v002 (hybrid, another seed)."""
    models = tmp_path / "run" / "models"
    _save(models, "v001")
    _save(models, "v001-vae", objective="vae", seed=1)
    _save(models, "v002", seed=2)
    (models / "v003").mkdir()  # a training before its first checkpoint: not a version
    (models / "v003" / "losses.csv").write_text("step\n")
    return models


def test_list_sorted_with_metadata(root):
    records = list_models(root)
    assert [r.version for r in records] == ["v001", "v001-vae", "v002"]
    first = records[0]
    meta = json.loads((root / "v001" / "meta.json").read_text())
    assert first.weights_sha256 == meta["weights_sha256"] and first.path == root / "v001"
    assert first.objective == "hybrid" and records[1].objective == "vae"
    assert first.step == 10 and first.train_summary["steps"] == 10 and first.complete
    assert first.data_sha256 == DATA_SHA and first.metrics is None and not first.promoted
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", first.created)
    assert json.loads(json.dumps(first.to_dict()))["path"] == str(root / "v001")


def test_natural_version_order(tmp_path):
    for version in ("v10", "v2", "v2-gan"):
        _save(tmp_path, version, objective="gan" if version.endswith("gan") else "hybrid")
    assert [r.version for r in list_models(tmp_path)] == ["v2", "v2-gan", "v10"]


def test_objective_from_name_suffix_when_settings_say_nothing(tmp_path):
    torch.manual_seed(0)
    save_checkpoint(VAEGAN(SETTINGS), tmp_path / "v001-gan")
    save_checkpoint(VAEGAN(SETTINGS), tmp_path / "v001")
    save_checkpoint(VAEGAN(SETTINGS), tmp_path / "mine")
    got = {r.version: (r.objective, r.step, r.train_summary, r.data_sha256) for r in list_models(tmp_path)}
    assert got == {"v001": ("hybrid", None, {}, None), "v001-gan": ("gan", None, {}, None),
                   "mine": (None, None, {}, None)}


def test_damaged_version_is_skipped_with_a_warning(root):
    (root / "v002" / "meta.json").write_text("{not json")
    with pytest.warns(RegistryWarning, match=r"skipping v002: .*meta\.json is not valid JSON"):
        records = list_models(root)
    assert [r.version for r in records] == ["v001", "v001-vae"]


def test_missing_root(tmp_path):
    with pytest.raises(ModelError, match=r"no model registry at .*nowhere"):
        list_models(tmp_path / "nowhere")


def test_show_full_metadata(root):
    shown = show_model(root, "v001-vae")
    assert shown["record"]["version"] == "v001-vae" and shown["record"]["objective"] == "vae"
    assert shown["meta"]["format"] == "lensforge-vaegan" and shown["settings"]["n_stamps"] == 64
    assert shown["files"] == ["meta.json", "settings.json", "weights.safetensors"]
    assert shown["metrics"] is None
    json.dumps(shown)  # JSON-ready


@pytest.mark.parametrize("bad", ["v009", "v003", "", "..", "../run", "v001/"])
def test_unknown_version_lists_valid_ones(root, bad):
    with pytest.raises(ModelError, match=r"unknown model version .*valid versions: v001, v001-vae, v002$"):
        show_model(root, bad)
    with pytest.raises(ModelError, match=r"valid versions: v001, v001-vae, v002$"):
        promote(root, bad)
    with pytest.raises(ModelError, match=r"valid versions: v001, v001-vae, v002$"):
        resolve_version(root, bad)


def test_promote_writes_the_record(root):
    path = promote(root, "v002")
    assert path == root / PROMOTED_FILE
    record = json.loads(path.read_text())
    assert record["version"] == "v002" and record["previous"] is None
    assert record["weights_sha256"] == json.loads((root / "v002" / "meta.json").read_text())["weights_sha256"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", record["promoted_utc"])
    assert sorted(record) == ["previous", "promoted_utc", "version", "weights_sha256"]
    assert [r.version for r in list_models(root) if r.promoted] == ["v002"]
    promote(root, "v001")
    assert json.loads(path.read_text())["previous"] == "v002" and promoted_version(root) == "v001"
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_promote_refuses_tampered_weights(root):
    _tamper(root / "v001")
    with pytest.raises(ModelError, match=r"v001/weights\.safetensors sha256 .*tampered"):
        promote(root, "v001")
    assert not (root / PROMOTED_FILE).exists()


def test_promote_refuses_an_unfinished_training_unless_allowed(tmp_path):
    _save(tmp_path, "v001", step=500, steps=1500)
    assert not list_models(tmp_path)[0].complete
    with pytest.raises(ModelError, match=r"v001 is a checkpoint at step 500 of 1500 \(training unfinished\)"):
        promote(tmp_path, "v001")
    promote(tmp_path, "v001", allow_incomplete=True)
    assert promoted_version(tmp_path) == "v001"


def test_resolve_names_a_version_or_uses_the_promoted_one(root):
    assert resolve_version(root, "v001-vae") == root / "v001-vae"
    promote(root, "v002")
    assert resolve_version(root) == root / "v002"
    assert resolve_version(root, "v001") == root / "v001"  # naming a version overrides the promotion


def test_resolve_without_promotion_is_explicit(root):
    with pytest.raises(ModelError, match=r"no promoted model in .*\(versions: v001, v001-vae, v002\); "
                                         r"promote one with `lensforge models promote VERSION`"):
        resolve_version(root)


def test_resolve_refuses_tampered_promoted_weights(root):
    promote(root, "v001")
    _tamper(root / "v001")
    with pytest.raises(ModelError, match=r"v001/weights\.safetensors sha256 .* does not match PROMOTED"):
        resolve_version(root)
    with pytest.raises(ModelError, match=r"does not match meta\.json \(\w{12}\.\.\.\): tampered"):
        resolve_version(root, "v001")


def test_resolve_refuses_a_model_retrained_since_promotion(root):
    promote(root, "v001")
    _save(root, "v001", seed=7)  # consistent weights + meta, but not the promoted weights
    with pytest.raises(ModelError, match=r"v001 changed since it was promoted .*promote it again"):
        resolve_version(root)


def test_resolve_promoted_version_deleted(root):
    promote(root, "v002")
    for path in (root / "v002").iterdir():
        path.unlink()
    (root / "v002").rmdir()
    with pytest.raises(ModelError, match=r"promoted version 'v002' is missing"):
        resolve_version(root)


def test_damaged_promoted_file(root):
    (root / PROMOTED_FILE).write_text('{"version": 3}')
    with pytest.raises(ModelError, match=r"PROMOTED lacks version / weights_sha256"):
        list_models(root)


def test_record_metrics_round_trip_and_staleness(root):
    metrics = {"inpainting": {"rmse_noise_units": 0.4}}
    path = record_metrics(root / "v001", metrics)
    assert json.loads(path.read_text())["metrics"] == metrics
    record = list_models(root, metrics={"v001": {"x": 1}, "v002": {"x": 2}}, metrics_source="report")[0:3:2]
    assert (record[0].metrics, record[0].metrics_source) == (metrics, "metrics.json")  # own metrics win
    assert (record[1].metrics, record[1].metrics_source) == ({"x": 2}, "report")
    _save(root, "v001", seed=9)  # retrained: the recorded metrics describe other weights
    with pytest.warns(RegistryWarning, match=r"recorded for other weights"):
        assert read_metrics(root / "v001", list_models(root)[0].weights_sha256) is None
    with pytest.raises(ModelError, match=r"not JSON-able"):
        record_metrics(root / "v002", {"bad": float("nan")})


# -- the CLI ---------------------------------------------------------------------------

@pytest.fixture
def cli():
    app = typer.Typer()
    app.add_typer(models_app, name="models")
    app.command("noop")(lambda: None)  # a second command keeps "models" a sub-command
    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["models", *args])


def test_cli_list_show_promote(cli, root):
    done = cli("list", "--models-root", str(root))
    assert done.exit_code == 0, done.output
    lines = done.output.strip().splitlines()
    assert lines[0].split() == ["version", "objective", "step/steps", "created", "(UTC)", "sha256", "rmse[sigma]"]
    assert [line.split()[0] for line in lines[1:]] == ["v001", "v001-vae", "v002"]

    done = cli("promote", "v001-vae", "--models-root", str(root))
    assert done.exit_code == 0, done.output
    assert done.output.startswith("promoted v001-vae (sha256 ") and PROMOTED_FILE in done.output
    lines = cli("list", "--models-root", str(root)).output.strip().splitlines()
    assert lines[2].startswith("*") and lines[2].split()[1] == "v001-vae"

    listed = json.loads(cli("list", "--json", "--models-root", str(root)).output)
    assert [(r["version"], r["promoted"]) for r in listed] == [("v001", False), ("v001-vae", True), ("v002", False)]
    shown = json.loads(cli("show", "v002", "--models-root", str(root)).output)
    assert shown["record"]["version"] == "v002" and shown["meta"]["weights_sha256"] == listed[2]["weights_sha256"]


def test_cli_default_root_is_the_run_and_attaches_report_metrics(cli, root):
    report = root.parent / "report" / "evaluation.json"
    report.parent.mkdir()
    report.write_text(json.dumps({"inpainting": {
        "methods": {"vaegan": {"rmse_noise_units": 0.4}, "vae": {"rmse_noise_units": 0.5},
                    "biharmonic": {"rmse_noise_units": 0.99}},
        "ratios": {"vaegan_rmse_over_best_classical": {"ratio": 0.4}, "vae_rmse_over_best_classical": {"ratio": 0.5}}},
        "generation": {"models": {"vaegan": {"coverage": 0.9}}}}))
    newer = (root / "v001" / "weights.safetensors").stat().st_mtime + 10
    os.utime(report, (newer, newer))
    done = cli("list", "--out", str(root.parent.parent), "--name", root.parent.name)
    assert done.exit_code == 0, done.output
    rows = {line.split()[0]: line.split() for line in done.output.strip().splitlines()[1:]}
    assert rows["v001"][-1] == "0.400" and rows["v001-vae"][-1] == "0.500" and rows["v002"][-1] == "-"
    shown = json.loads(cli("show", "v001", "--out", str(root.parent.parent), "--name", root.parent.name).output)
    assert shown["metrics_source"] == "report/evaluation.json" and shown["metrics"]["report_model"] == "vaegan"
    assert shown["metrics"]["inpainting_ratios"] == {"vaegan_rmse_over_best_classical": {"ratio": 0.4}}
    assert shown["metrics"]["generation"] == {"coverage": 0.9}
    older = newer - 3600
    os.utime(report, (older, older))  # the weights are newer than the report: not what it evaluated
    assert json.loads(cli("show", "v001", "--models-root", str(root)).output)["metrics"] is None


@pytest.mark.parametrize("args, message", [
    (["show", "v009"], r"unknown model version 'v009' in .*; valid versions: v001, v001-vae, v002"),
    (["promote", "nope"], r"unknown model version 'nope'"),
    (["promote", "v001"], r"v001/weights\.safetensors sha256 .*tampered"),
])
def test_cli_bad_input_is_one_line_and_exit_2(cli, root, args, message):
    _tamper(root / "v001")
    done = cli(*args, "--models-root", str(root))
    assert done.exit_code == 2
    lines = done.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lensforge: error: ") and re.search(message, lines[0])


def test_cli_list_warns_about_a_damaged_version(cli, root):
    (root / "v002" / "weights.safetensors").unlink()
    done = cli("list", "--models-root", str(root))
    assert done.exit_code == 0
    assert "lensforge: warning: skipping v002: checkpoint weights" in done.output
    assert cli("list", "--models-root", str(root / "nowhere")).exit_code == 2


def test_stages_use_the_named_then_the_promoted_then_the_trained_version(root):
    """Training writes train.model_version; in-painting / generation resolve through the registry."""
    from lensforge.pipeline.config import build_config
    from lensforge.pipeline.generative.training import inpainting_model_dir, model_dir

    base = {"out_dir": str(root.parent.parent), "name": root.parent.name}
    config = build_config({**base, "train": {"model_version": "v002"}})
    assert model_dir(config) == root / "v002" and model_dir(config, "vae") == root / "v002-vae"
    assert inpainting_model_dir(config) == root / "v002"  # nothing promoted: the version this run trains
    promote(root, "v001")
    assert inpainting_model_dir(config) == root / "v001"  # the promoted version is the one in use
    named = build_config({**base, "train": {"model_version": "v002"}, "inpaint": {"model_version": "v002"}})
    assert inpainting_model_dir(named) == root / "v002"
    with pytest.raises(ModelError, match="unknown model version 'v009'.*valid versions: v001, v001-vae, v002"):
        inpainting_model_dir(build_config({**base, "inpaint": {"model_version": "v009"}}))
    _tamper(root / "v001")
    with pytest.raises(ModelError, match="tampered"):
        inpainting_model_dir(config)
    with pytest.raises(Exception, match="model_version"):
        build_config({**base, "train": {"model_version": "latest"}})
