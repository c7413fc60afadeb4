"""benchmarks/real_inpainting.py: its targets, its model-card record and README's real_inpainting section."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import publish  # noqa: E402
from benchmarks import real_inpainting as ri  # noqa: E402

SHARED_DATA = ROOT.parent / "shared" / "data"


def _metrics(rmse_source: float, rmse_sky: float, flux: float, coverage=None, coverage_source=None) -> dict:
    # Coverage on pixels above 3 sigma runs 0.1 below that on source segments (the judged one) here.
    return {"n_images": 2, "rmse": rmse_source, "rmse_source": rmse_source, "rmse_sky": rmse_sky,
            "aperture_flux_error_rms": flux, "coverage_1sigma": coverage,
            "coverage_1sigma_source_segment": coverage_source,
            "coverage_1sigma_source": None if coverage_source is None else coverage_source - 0.1}


def _block(model: dict, biharmonic: dict, interpolate: dict) -> dict:
    ratios = {name: {key: m[key] / biharmonic[key] for key in ("rmse", "rmse_source", "rmse_sky",
                                                                 "aperture_flux_error_rms")}
              for name, m in (("model", model), ("interpolate", interpolate))}
    return {"n_images": 2, "n_masked_pixels": 100, "n_bad_pixels": 0,
            "methods": {"model": model, "biharmonic": biharmonic, "interpolate": interpolate},
            "ratios_vs_biharmonic": ratios}


def _groups() -> dict:
    first = _block(_metrics(3.0, 1.0, 2.0, 0.68, 0.65), _metrics(5.0, 1.0, 4.0), _metrics(6.0, 1.1, 5.0))
    first["ratio_intervals_vs_biharmonic"] = {"model": {"rmse_source": [0.55, 0.65], "rmse_sky": None}}
    return {
        "first_test": first,
        "lsst": _block(_metrics(4.0, 1.2, 3.0, 0.50, 0.70), _metrics(5.0, 1.0, 4.0), _metrics(6.0, 1.1, 5.0)),
        "cosmos_stamps": _block(_metrics(9.0, 1.0, 9.0, 0.7, 0.7), _metrics(5.0, 1.0, 4.0), _metrics(6.0, 1.1, 5.0)),
    }


def test_done_when_checks_every_target_per_group_and_requires_all_but_cosmos():
    done = ri.done_when(_groups())
    first = done["groups"]["first_test"]
    assert first["required"] and first["all_pass"]
    assert first["checks"]["source_rmse_ratio"] == {"value": 0.6, "max": 0.7, "pass": True, "interval_68": [0.55, 0.65]}
    assert first["checks"]["sky_rmse_ratio"]["interval_68"] is None
    assert "interval_68" not in first["checks"]["coverage_1sigma"]
    # Source coverage is judged on segments (0.65); the pixels above 3 sigma (0.55) are reported beside it.
    assert first["checks"]["coverage_1sigma_source"]["value"] == 0.65
    assert first["coverage_1sigma_source_above_3sigma"] == pytest.approx(0.55)
    lsst = done["groups"]["lsst"]["checks"]
    assert not lsst["source_rmse_ratio"]["pass"]  # 0.8 > 0.7
    assert not lsst["sky_rmse_ratio"]["pass"]  # 1.2 > 1.05
    assert lsst["aperture_flux_error_ratio"]["pass"] is False  # 0.75
    assert not lsst["coverage_1sigma"]["pass"] and lsst["coverage_1sigma_source"]["pass"]
    assert not done["groups"]["cosmos_stamps"]["required"]
    assert done["required_groups"] == ["first_test", "lsst"]
    assert done["n_required_groups_passing"] == 1 and done["all_required_pass"] is False


def test_with_per_image_rows_the_sky_ratio_is_also_checked_on_each_groups_worst_image():
    def row(name, group, model_sky, biharmonic_sky):
        return {"name": name, "group": group, "methods": {"model": {"rmse_sky": model_sky},
                                                          "biharmonic": {"rmse_sky": biharmonic_sky}}}

    rows = [row("a", "first_test", 0.9, 1.0), row("b", "first_test", 1.2, 1.0), row("c", "first_test", 1.04, 1.0),
            row("d", "lsst", 1.0, 1.0), row("e", "lsst", None, 1.0)]
    done = ri.done_when(_groups(), rows)
    first = done["groups"]["first_test"]
    assert first["checks"]["sky_rmse_ratio_worst_image"] == {"value": pytest.approx(1.2), "max": 1.05, "pass": False}
    assert first["sky_worse_than_bar"] == [{"name": "b", "sky_rmse_ratio": pytest.approx(1.2)}]
    assert not first["all_pass"]  # its group ratio passes (test above); one image does not
    assert done["groups"]["lsst"]["checks"]["sky_rmse_ratio_worst_image"]["pass"]
    assert done["groups"]["lsst"]["sky_worse_than_bar"] == []
    assert "sky_rmse_ratio_worst_image" not in ri.done_when(_groups())["targets"]


def test_a_missing_value_fails_its_target():
    groups = _groups()
    groups["first_test"]["methods"]["model"]["coverage_1sigma"] = None
    assert ri.done_when(groups)["groups"]["first_test"]["checks"]["coverage_1sigma"]["pass"] is False


def test_masked_source_light_counts_masked_pixels_above_three_sigma():
    truth = np.zeros((20, 20))
    truth[5:8, 5:8] = 10.0
    mask = np.zeros((20, 20), bool)
    mask[5:7, 5:8] = True  # 6 source pixels of 10 sigma
    mask[15, 15] = True  # a sky pixel
    assert ri.masked_source_light(truth, mask, None, 1.0) == pytest.approx(60.0)
    bad = np.zeros_like(mask)
    bad[5, 5:8] = True  # bad pixels are never scored
    assert ri.masked_source_light(truth, mask, bad, 1.0) == pytest.approx(30.0)


def test_pick_example_is_the_most_light_then_the_first_name():
    light = {"first/b": 5.0, "first/a": 5.0, "first/c": 1.0, "cosmos/stamp001": 9.0}
    assert ri.pick_example(light, "first/") == "first/a"
    assert ri.pick_example(light, "cosmos/stamp") == "cosmos/stamp001"
    assert ri.pick_example(light, "lsst/") is None


def test_results_text_is_json_with_one_rounded_row_per_image():
    payload = {"groups": {}, "per_image": [{"name": "a", "methods": {"model": {"rmse": 1.234567891}}},
                                           {"name": "b", "methods": {"model": {"rmse": None}}}]}
    text = ri.results_text(payload)
    assert json.loads(text)["per_image"][0]["methods"]["model"]["rmse"] == 1.2346
    assert sum('"name": ' in line for line in text.splitlines()) == 2  # one row per line
    assert json.loads(ri.results_text({"per_image": []})) == {"per_image": []}


def _payload(complete: bool = True) -> dict:
    groups = _groups()
    return {
        "groups": groups, "overall": groups["first_test"], "per_image": [], "settings": {},
        "provenance": {"commit": "0" * 40, "dirty": False, "command": "python benchmarks/real_inpainting.py",
                       "date_utc": "2026-12-03T19:00:00+00:00", "machine": {"cpu_count": 2}},
        "model": {"weights_sha256": "ab" * 32, "training_seconds": 3600.0, "training_total_seconds": 4000.0,
                  "training_device": "cpu", "training_steps": 6000},
        "test_sets": {"complete": complete,
                      "first_test": {"n_images": 218, "n_in_split": 218, "shape": [150, 150]},
                      "simulated": {"size_pixels": 512, "seeds": [301, 302]},
                      "cosmos": {"n_stamps": 100, "cosmos_mosaic": {"shape": [618, 618]},
                                 "cosmos_stamps": {"n_images": 88, "n_skipped_smaller_than_min": 12,
                                                   "min_side_pixels": 32}},
                      "mask": {"seed": 0}},
        "done_when": ri.done_when(groups),
        "figures": {"first": "docs/figures/real_inpainting_first.png"},
        "timings": {"wall_seconds": 400.0},
    }


def test_publish_renders_one_row_per_group_with_the_three_methods_and_the_training_time():
    text = publish.render_real_inpainting(_payload())
    main_table, visible_table = text.split("\n\n| test set")[1:3]  # the targets' table, then the visible sources'
    rows = [line for line in main_table.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in rows] == ["| FIRST test split (real VLA)", "| LSST (simulated)",
                                                     "| COSMOS stamps (real HST)"]
    visible_rows = [line for line in visible_table.splitlines() if line.startswith("| ")]
    assert [row.split(" | ")[0] for row in visible_rows] == [row.split(" | ")[0] for row in rows]
    assert "| 3.00 / 5.00 / 6.00 |" in rows[0]  # source RMSE: model / biharmonic / interpolate
    assert "| 0.600 (0.55-0.65) |" in rows[0] and "0.680 / 0.650" in rows[0] and "5 of 5" in rows[0]
    assert "| 1.000 |" in rows[0]  # the sky ratio, without an interval
    assert "| 0.800 |" in rows[1]  # LSST's source ratio: no intervals in its block
    assert "(reported only)" in rows[2]
    assert "trained in 1 min 0 s" not in text and "trained in 60 min 0 s" in text
    assert "commit `0000000000`" in text and "partial run" not in text
    assert "1 of 2 required test sets" in text
    assert "partial run" in publish.render_real_inpainting(_payload(complete=False))


def test_the_section_is_registered_only_once_its_results_file_exists(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(ROOT / "docs" / "results", results)
    (results / "real_inpainting.json").unlink(missing_ok=True)
    assert ("README.md", "real_inpainting") not in publish.sections(results)
    (results / "real_inpainting.json").write_text(json.dumps(_payload()))
    assert ("README.md", "real_inpainting") in publish.sections(results)


def test_check_skips_the_section_while_the_readme_lacks_its_markers_and_checks_it_once_there(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(ROOT / "docs" / "results", results)
    (results / "real_inpainting.json").write_text(json.dumps(_payload()))
    root = tmp_path / "root"
    for relative in {relative for relative, _ in publish.sections(results)}:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        text = (ROOT / relative).read_text()
        if relative == "README.md":
            text = publish.marker_pattern("real_inpainting").sub("", text)  # whatever the README holds now
        (root / relative).write_text(text)
    baseline = publish.stale_sections(ROOT, results=ROOT / "docs" / "results")
    assert publish.stale_sections(root, results) == baseline  # no marker: skipped
    readme = root / "README.md"
    markers = "\n<!-- results:real_inpainting -->\nstale\n<!-- /results:real_inpainting -->\n"
    readme.write_text(readme.read_text() + markers)
    assert publish.stale_sections(root, results) == [*baseline, "README.md:real_inpainting"]
    body = publish.render_real_inpainting(_payload())
    readme.write_text(publish.replace_marked(readme.read_text(), "real_inpainting", body))
    assert publish.stale_sections(root, results) == baseline


def _fake_model_dir(directory: Path) -> str:
    """A model directory read_card accepts (the weights are not a network: record_card never loads them)."""
    import hashlib

    from lensforge.models.image_inpainter import CARD_FILE, CARD_FORMAT, CARD_FORMAT_VERSION, WEIGHTS_FILE

    directory.mkdir()
    blob = b"weights"
    digest = hashlib.sha256(blob).hexdigest()
    (directory / WEIGHTS_FILE).write_bytes(blob)
    (directory / CARD_FILE).write_text(json.dumps({"format": CARD_FORMAT, "format_version": CARD_FORMAT_VERSION,
                                                   "weights_sha256": digest, "metrics": None}))
    return digest


def test_record_card_writes_metrics_and_leaves_the_weights_and_checksum(tmp_path):
    from lensforge.errors import ModelError

    model_dir = tmp_path / "model"
    digest = _fake_model_dir(model_dir)
    payload = _payload()
    metrics = ri.card_metrics(payload, ROOT / "docs" / "results" / "real_inpainting.json")
    assert metrics["source"] == "docs/results/real_inpainting.json"
    assert metrics["groups"]["first_test"]["rmse_source"] == {"model": 3.0, "biharmonic": 5.0, "interpolate": 6.0}
    assert metrics["groups"]["first_test"]["source_rmse_ratio"] == pytest.approx(0.6)
    ri.record_card(model_dir, metrics, digest)
    card = json.loads((model_dir / "model_card.json").read_text())
    assert card["metrics"] == json.loads(json.dumps(metrics)) and card["weights_sha256"] == digest
    assert (model_dir / "weights.safetensors").read_bytes() == b"weights"
    (model_dir / "weights.safetensors").write_bytes(b"other weights")
    with pytest.raises(ModelError, match="changed"):
        ri.record_card(model_dir, metrics, digest)


def test_record_card_on_the_shipped_weights_needs_ship(tmp_path):
    from lensforge.errors import InputError

    with pytest.raises(InputError, match="--ship"):
        ri.main(["--record-card", "--out", str(tmp_path / "r.json"), "--figures", str(tmp_path)])


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "first_radio").is_dir() or not (SHARED_DATA / "cosmos_real_stamps").is_dir(),
                    reason="needs the shared FIRST and COSMOS data")
def test_end_to_end_on_a_few_images_with_an_untrained_model(tmp_path):
    from lensforge.models.image_inpainter import ImageInpainterNet, InpainterSettings, save_image_inpainter

    model_dir = tmp_path / "model"
    net = ImageInpainterNet(InpainterSettings(channels=(8, 8, 8), latent_channels=4, posterior_channels=8))
    save_image_inpainter(net, model_dir, {"name": "untrained", "training": {"seconds": 1.0, "device": "cpu"},
                                          "calibration": None, "metrics": None})
    out = tmp_path / "real.json"
    payload = ri.main(["--model", str(model_dir), "--first-n", "2", "--presets", "ska_mid", "--cosmos-n", "2",
                       "--out", str(out), "--figures", str(tmp_path / "figures"), "--quiet", "--record-card"])
    saved = json.loads(out.read_text())
    assert set(saved) >= {"groups", "overall", "per_image", "settings", "provenance", "model", "test_sets",
                          "done_when", "figures"}
    assert list(saved["groups"]) == ["first_test", "ska_mid", "cosmos_mosaic", "cosmos_stamps"]
    assert saved["groups"]["ska_mid"]["n_images"] == len(ri.SIM_SEEDS) == 8 and saved["test_sets"]["complete"] is False
    assert saved["provenance"]["command"].startswith("python benchmarks/real_inpainting.py --model")
    assert set(saved["figures"]) == {"first", "cosmos"}
    for figure in saved["figures"].values():
        assert Path(figure).stat().st_size < 300_000
    card = json.loads((model_dir / "model_card.json").read_text())
    assert card["metrics"]["groups"]["first_test"]["n_images"] == 2
    assert payload["done_when"]["required_groups"] == ["first_test", "ska_mid"]
    assert "| FIRST test split (real VLA) | 2 |" in publish.render_real_inpainting(saved)


def test_error_budget_splits_the_squared_error_by_band():
    from benchmarks import inpainting_error_budget as budget

    truth = np.array([5.0, 20.0, 50.0, 500.0])
    values = {"truth_sigma": truth, "depth_pixels": np.array([1.0, 2.0, 4.0, 8.0]),
              "hole_area_pixels": np.array([5.0, 50.0, 500.0, 5000.0]),
              "biharmonic": np.array([1.0, -2.0, -3.0, -10.0]), "model": np.array([1.0, -1.0, -3.0, -5.0])}
    out = budget._budget(values)
    rows = out["truth_sigma"]
    assert sum(r["share_of_biharmonic_squared_error"] for r in rows) == pytest.approx(1.0)
    brightest = rows[-1]
    assert brightest["n_pixels"] == 1 and brightest["share_of_biharmonic_squared_error"] == pytest.approx(100 / 114)
    assert brightest["rmse_ratio_model_to_biharmonic"] == pytest.approx(0.5)
    assert brightest["mean_error_sigma"] == {"model": -5.0, "biharmonic": -10.0}
    assert rows[3]["n_pixels"] == 0 and rows[3]["rmse_ratio_model_to_biharmonic"] is None
    assert out["rmse_source"]["biharmonic"] == pytest.approx(np.sqrt(114 / 4))


def test_the_skipped_sky_summary_pools_pixels_and_counts_images_worse_than_biharmonic():
    from benchmarks import inpainting_error_budget as budget

    def image(model, biharmonic):
        model, biharmonic = np.asarray(model, float), np.asarray(biharmonic, float)
        return {"model": model, "biharmonic": biharmonic, "local_mean": np.ones_like(model), "kriging": model}

    per_image = [image([1.0, -1.0], [2.0, 2.0]), image([1.1, 1.1, 1.1], [1.0, 1.0, 1.0]), image([], [])]
    out = budget.skipped_sky_summary(per_image)
    assert out["n_pixels"] == 5 and out["n_images"] == 2
    assert out["rmse"]["model"] == pytest.approx(np.sqrt((2 + 3 * 1.21) / 5))
    assert out["rmse"]["biharmonic"] == pytest.approx(np.sqrt((8 + 3) / 5))
    assert out["images_model_over_1.05_biharmonic"] == 1
    assert out["worst_image_model_over_biharmonic"] == pytest.approx(1.1)


def test_source_concentration_says_how_much_one_image_decides_the_pooled_ratio():
    from benchmarks import inpainting_error_budget as budget

    # Image "a": model 1 vs biharmonic 3 on one pixel (squared 1 vs 9); "b": 6 vs 4 (36 vs 16); "c": no pixels.
    out = budget.source_concentration(["a", "b", "c"], [np.array([1.0]), np.array([6.0]), np.zeros(0)],
                                      [np.array([3.0]), np.array([4.0]), np.zeros(0)])
    assert out["n_images"] == 2
    assert out["rmse_ratio_model_to_biharmonic"] == pytest.approx(np.sqrt(37 / 25))
    assert out["largest_image_share_of_biharmonic_squared_error"] == pytest.approx(16 / 25)
    assert out["leave_one_out_ratio_range"] == pytest.approx([1 / 3, 1.5])
    # Leaving "a" out gives 1.5, leaving "b" out 1/3: "b" moves the pooled 1.217 the most.
    assert out["most_influential_image"] == "b" and out["ratio_without_it"] == pytest.approx(1 / 3)
    assert budget.source_concentration(["a"], [np.zeros(0)], [np.zeros(0)]) == {"n_images": 0}
