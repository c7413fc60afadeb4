"""lensforge.flows.stages: one runner per operation under the CLI command and the deployment.

The in-paint deployment used to call the Prefect task directly and skipped the manifest refresh the
CLI did, so a scheduled in-painting left a stale store checksum. Both now call ``stages.inpaint``.
"""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from lensforge.catalogs.manifest import read_manifest, sha256_of
from lensforge.flows import deployments, stages
from lensforge.flows.cli import app
from lensforge.pipeline.config import build_config


def _manifest_without_time(run_dir: Path) -> dict:
    manifest = read_manifest(run_dir)
    manifest.pop("created_utc")
    return manifest


@pytest.mark.slow
def test_inpaint_deployment_and_cli_leave_the_same_manifest(tmp_path, tiny_config_values, prefect_api_env,
                                                            monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", prefect_api_env["PREFECT_API_URL"])
    tiny_config_values["dask"] = {"n_workers": 1}
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(tiny_config_values))
    cfg = build_config(tiny_config_values)
    runner = CliRunner()
    for command in (["simulate"], ["train"]):
        done = runner.invoke(app, [*command, "--config", str(config_file), "--quiet"])
        assert done.exit_code == 0, done.output
    before = _manifest_without_time(cfg.run_dir)
    trained = tmp_path / "trained"
    shutil.copytree(cfg.run_dir, trained)

    done = runner.invoke(app, ["inpaint", "--config", str(config_file), "--quiet"])
    assert done.exit_code == 0, done.output
    by_cli = _manifest_without_time(cfg.run_dir)
    store_files = {p.relative_to(cfg.run_dir): p.read_bytes() for p in (cfg.run_dir / "trainset.zarr").rglob("*")
                   if p.is_file()}

    shutil.rmtree(cfg.run_dir)
    shutil.copytree(trained, cfg.run_dir)
    result = deployments.inpaint(config_path=str(config_file))
    assert result["inpainted"] == tiny_config_values["simulation"]["n_objects"]
    by_deployment = _manifest_without_time(cfg.run_dir)

    assert by_deployment == by_cli
    assert by_cli["stages"] == ["simulate", "inpaint"] and before["stages"] == ["simulate"]
    # The store changed, and the manifest follows it: its checksum is the store's, not the old one.
    assert by_cli["products"]["trainset.zarr"] != before["products"]["trainset.zarr"]
    assert by_cli["products"]["trainset.zarr"] == sha256_of(cfg.run_dir / "trainset.zarr")
    assert {p.relative_to(cfg.run_dir): p.read_bytes() for p in (cfg.run_dir / "trainset.zarr").rglob("*")
            if p.is_file()} == store_files


def test_every_deployment_calls_the_runner_the_cli_calls():
    """The entry flows and the CLI commands name the same stages runner (read from their source)."""
    import lensforge.flows.cli as cli

    pairs = {deployments.simulate: (cli.simulate, "stages.simulate("), deployments.train: (cli.train, "stages.train("),
             deployments.inpaint: (cli.inpaint, "stages.inpaint("),
             deployments.build_training_set: (cli.run, "stages.run("),
             deployments.reprocess_tiles: (cli.reprocess, "stages.reprocess(")}
    for entry_flow, (command, call) in pairs.items():
        assert call in inspect.getsource(entry_flow.fn), entry_flow.name
        assert call in inspect.getsource(inspect.unwrap(command)), command.__name__


def test_runners_take_the_config_object_first():
    for name in stages.__all__:
        first = next(iter(inspect.signature(getattr(stages, name)).parameters.values()))
        assert first.name == "config" and first.annotation in ("RunConfig", build_config.__annotations__["return"])


def test_reprocess_defaults_to_the_runs_tiles(tmp_path, tiny_config_values, monkeypatch):
    seen = {}

    def fake_run_reprocess(config, source, output, *args, **kwargs):
        seen.update(source=source, output=output)
        return {"source": source, "n_tiles": 0, "done": 0, "skipped": 0, "failed": 0, "tiles": []}

    monkeypatch.setattr(stages, "run_reprocess", fake_run_reprocess)
    cfg = build_config(tiny_config_values)
    summary = stages.reprocess(cfg, progress=False)
    assert seen == {"source": str(cfg.run_dir / "tiles"), "output": cfg.run_dir / "reprocessed"}
    assert summary["summary_path"] == str(cfg.run_dir / "reprocessed" / "reprocess_summary.json")
    assert json.dumps(summary)  # JSON-able, as a deployment's return value must be


def test_chunk_timeline_tells_scheduling_from_work():
    from lensforge.flows.run import chunk_timeline

    summaries = [{"worker": 1, "began": 10.5, "ended": 12.0}, {"worker": 2, "began": 10.2, "ended": 11.0},
                 {"worker": 1, "began": 12.25, "ended": 13.0}, {"worker": 2, "began": 11.5, "ended": 14.0}]
    timeline = chunk_timeline(summaries, began=10.0, ended=14.5)
    assert timeline == pytest.approx({"chunk_ramp_seconds": 0.2, "chunk_gap_seconds": 0.25 + 0.5,
                                      "chunk_tail_seconds": 1.0, "chunk_end_seconds": 0.5})
    assert chunk_timeline([], 0.0, 1.0)["chunk_tail_seconds"] == 0.0
