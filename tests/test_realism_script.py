"""benchmarks/realism.py on a few real FIRST sources, and README's realism section rendered from its file."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import publish, realism  # noqa: E402
from lensforge.pipeline.datasets import corpus  # noqa: E402
from lensforge.pipeline.evaluation.realism import REALISM_KEYS  # noqa: E402

DATA = corpus.shared_data_dir()
needs_first = pytest.mark.skipif(not (DATA / corpus.FIRST_FILE).is_file(), reason=f"no FIRST cube under {DATA}")


@needs_first
def test_radio_section_trains_measures_and_publishes(tmp_path):
    out = tmp_path / "realism.json"
    payload = realism.main(["--sections", "radio", "--steps", "3", "--max-sources", "12", "--workers", "1",
                            "--train-into", str(tmp_path / "radio_model"), "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["radio"]["n"] == {"real A (FIRST test)": 12, "real B (FIRST calibration)": 12, "generated": 12}
    table = written["radio"]["table"]
    assert table["statistics"] == list(REALISM_KEYS)
    ratio = table["candidates"]["radio generator"]["ratio"]
    floor = table["truth_vs_truth"]
    for key in table["statistics"]:
        distance = table["candidates"]["radio generator"]["wasserstein"][key]
        assert ratio[key] == pytest.approx(distance / floor[key], rel=1e-9)
    assert written["radio"]["training"]["steps"] == 3 and written["radio"]["model"]["settings"]["conditions"] == [
        "flux", "size_arcsec", "fr_class"]
    assert (tmp_path / "realism_radio.png").stat().st_size > 10_000
    assert written["provenance"]["command"].startswith("python benchmarks/realism.py")
    assert payload["radio"]["max_sources"] == 12
    # README's section renders from it: the generator's row carries the file's ratios.
    text = publish.render_realism(written)
    row = next(line for line in text.splitlines() if line.startswith("| radio generator"))
    assert f"{ratio['gini']:.2f}" in row and "of 7 |" in row
    # FIRST's own noise, measured on the train split, and the same galaxies with the beam model's noise beside it.
    noise = written["radio"]["noise"]
    assert noise["n_patches"] > 0 and 0 < noise["correlation_at_lags_1_to_5"]["x"][0] < 1
    assert set(table["candidates"]) == {"radio generator", realism.BEAM_NOISE_CANDIDATE}
    beam_row = next(line for line in text.splitlines() if line.startswith(f"| {realism.BEAM_NOISE_CANDIDATE} vs"))
    assert f"{table['candidates'][realism.BEAM_NOISE_CANDIDATE]['ratio']['power_spectrum_slope']:.2f}" in beam_row
    assert f"{noise['n_patches']} source-free" in text
    assert written["radio"]["training"]["trained_here"] is True
    # The same model given with --radio-model is measured, not retrained; its training comes from its directory.
    again = realism.main(["--sections", "radio", "--max-sources", "12", "--workers", "1", "--radio-model",
                          str(tmp_path / "radio_model"), "--out", str(tmp_path / "again.json")])
    assert again["radio"]["training"] == {"seconds": None, "steps": 3, "trained_here": False, "n_sources": 12,
                                          "n_stamps_with_orientations": 96}
    assert again["radio"]["table"]["candidates"] == table["candidates"]  # same weights, same seed: same ratios
    assert "(before this run, in `" in publish.render_realism(json.loads((tmp_path / "again.json").read_text()))


def test_render_realism_lists_each_measured_section():
    table = {"statistics": ["sigma_arcsec", "gini"], "bar": 2.0, "truth_vs_truth": {"sigma_arcsec": 1.0, "gini": 2.0},
             "candidates": {"generator": {"ratio": {"sigma_arcsec": 1.5, "gini": 3.25}, "n_passed": 1}}}
    payload = {"provenance": {"command": "python benchmarks/realism.py", "commit": "a" * 40, "dirty": False,
                              "date_utc": "2026-12-04T00:00:00"},
               "optical_parametric": {"n": 400, "table": table}}
    text = publish.render_realism(payload)
    assert "| optical generator, parametric-trained" in text and "| 400 | 1.50 | 3.25 | 1 of 2 |" in text
    assert "Radio:" not in text and "commit `aaaaaaaaaa`" in text


def test_render_realism_compares_the_generator_with_parametric_fits_and_shows_shear_recovery():
    def candidate(size, gini):
        return {"ratio": {"sigma_arcsec": size, "gini": gini}, "n_passed": int(size <= 2) + int(gini <= 2)}

    table = {"statistics": ["sigma_arcsec", "gini"], "bar": 2.0, "truth_vs_truth": {"sigma_arcsec": 1.0, "gini": 1.0},
             "candidates": {"generator": candidate(4.5, 0.75), "parametric fits": candidate(5.25, 0.5)}}
    recovery = {"method": "KSB", "n_rotations": 8, "delta_g": 0.01,
                "generated": [{"g": (0.05, 0.0), "raw": (0.0442, 0.0001), "raw_error": (0.002, 0.0002),
                               "calibrated": (0.0495, 0.0), "calibrated_error": (0.0023, 0.0002),
                               "n_measured": 196, "n_galaxies": 200}],
                "real": []}
    payload = {"provenance": {"command": "python benchmarks/realism.py", "commit": "b" * 40, "dirty": False,
                              "date_utc": "2026-12-05T00:00:00"},
               "optical_cosmos_real": {"n": 400, "table": table, "shear_recovery": recovery,
                                       "parametric_fits": {"catalogue": "cat_23.5.fits", "n_galaxies": 96}}}
    lines = publish.render_realism(payload).splitlines()
    assert ("| optical generator, cosmos_real-trained, vs held-out COSMOS galaxies | 400 | 4.50 | 0.75 | 1 of 2 |"
            in lines)
    assert "| parametric fits, vs held-out COSMOS galaxies | 400 | 5.25 | 0.50 | 1 of 2 |" in lines
    assert any("the 96 COSMOS galaxies of `cat_23.5.fits`" in line and "on 1 of 2 statistics" in line
               for line in lines)
    assert ("| generated (cosmos_real-trained) | (0.05, 0) | 196 of 200 | -5.8 ± 2.0, +0.1 ± 0.2 | "
            "-0.5 ± 2.3, +0.0 ± 0.2 |") in lines


def test_update_keeps_unmeasured_sections_under_their_own_provenance():
    table = {"statistics": ["sigma_arcsec"], "bar": 2.0, "truth_vs_truth": {"sigma_arcsec": 1.0},
             "candidates": {"generator": {"ratio": {"sigma_arcsec": 1.5}, "n_passed": 1}}}
    old_run = {"command": "python benchmarks/realism.py", "commit": "a" * 40, "dirty": False, "date_utc": "2026-12-01"}
    new_run = {"command": "python benchmarks/realism.py --sections cosmos_real --update", "commit": "c" * 40,
               "dirty": False, "date_utc": "2026-12-07"}
    previous = {"sections": ["radio", "optical", "cosmos_real"], "figures": {"radio": "docs/figures/r.png"},
                "provenance": old_run, "radio": {"n": 1, "table": table},
                "optical_parametric": {"n": 2, "table": table}, "optical_cosmos_real": {"n": 3, "table": table}}
    payload = {"sections": ["cosmos_real"], "figures": {}, "provenance": new_run,
               "optical_cosmos_real": {"n": 4, "table": table}}
    merged = realism.keep_unmeasured_sections(payload, previous)
    assert merged["optical_cosmos_real"]["n"] == 4 and merged["optical_parametric"]["n"] == 2
    assert merged["section_provenance"] == {"optical_cosmos_real": new_run, "radio": old_run,
                                            "optical_parametric": old_run}
    assert merged["sections"] == ["radio", "optical", "cosmos_real"] and merged["figures"]["radio"].endswith("r.png")
    optical_only = {key: value for key, value in merged.items() if key != "radio"}  # radio needs more fields
    first = publish.render_realism(optical_only).splitlines()[0]
    assert first.startswith("`python benchmarks/realism.py` at commit `aaaaaaaaaa`, 2026-12-01 ("
                            "parametric-trained optical); `python benchmarks/realism.py --sections cosmos_real "
                            "--update` at commit `cccccccccc`, 2026-12-07 (cosmos_real-trained optical)")
    # Updated again, the kept sections keep their first provenance, not the intermediate file's top level.
    again = realism.keep_unmeasured_sections({**payload, "provenance": {**new_run, "commit": "d" * 40}}, merged)
    assert again["section_provenance"]["radio"] == old_run


def test_realism_replicates_refuses_a_missing_run_in_one_line(tmp_path):
    from benchmarks import realism_replicates

    with pytest.raises(SystemExit, match="no finished run"):
        realism_replicates.main(["--optical-run", str(tmp_path), "--out", str(tmp_path / "out.json")])
    with pytest.raises(SystemExit, match="--replicates must be >= 1"):
        realism_replicates.main(["--replicates", "0", "--out", str(tmp_path / "out.json")])
    assert not (tmp_path / "out.json").exists()


def test_realism_radio_seeds_refuses_a_missing_model_in_one_line(tmp_path):
    from benchmarks import realism_radio_seeds

    with pytest.raises(SystemExit, match="no trained radio generator"):
        realism_radio_seeds.main(["--radio-model", str(tmp_path), "--out", str(tmp_path / "out.json")])
    with pytest.raises(SystemExit, match="--seeds must be >= 1"):
        realism_radio_seeds.main(["--seeds", "0", "--out", str(tmp_path / "out.json")])


def test_replicate_summary_pools_the_distances_and_its_jackknife_error():
    import numpy as np

    from benchmarks.realism_replicates import pooled_ratio, ratio_summary

    # Generated distance 2 in every draw, yardstick 1 or 3: ratios 2 and 2/3, mean 1.33; pooled 4 / 4 = 1.
    rows = [{"ratio": {"gini": 2.0}, "truth_vs_truth": {"gini": 1.0}},
            {"ratio": {"gini": 2.0 / 3.0}, "truth_vs_truth": {"gini": 3.0}}]
    summary = ratio_summary(rows, ["gini"])["gini"]
    assert summary["mean"] == pytest.approx(4.0 / 3.0) and summary["pooled"] == pytest.approx(1.0)
    # Jackknife over the two draws: leave-one-out ratios 2 and 2/3, error sqrt(1/2 * 2 * (2/3)^2) = 2/3.
    assert summary["pooled_standard_error"] == pytest.approx(2.0 / 3.0)
    assert pooled_ratio(np.array([2.0]), np.array([1.0])) == {"pooled": 2.0, "pooled_standard_error": pytest.approx(
        float("nan"), nan_ok=True)}
    # Rows without their yardstick (the radio seeds: B fixed) get no pooled ratio.
    assert "pooled" not in ratio_summary([{"ratio": {"gini": 1.0}}, {"ratio": {"gini": 2.0}}], ["gini"])["gini"]


def test_yardstick_spread_places_the_split_among_random_re_splits():
    import numpy as np

    from benchmarks.realism_radio_seeds import yardstick_spread

    rng = np.random.default_rng(1)  # seeds 0-4 put the split at 89, 38, 76, 0 and 28 % of the re-splits
    same_a, same_b = {"gini": rng.normal(0.5, 0.1, 218)}, {"gini": rng.normal(0.5, 0.1, 124)}
    typical = yardstick_spread(same_a, same_b, ["gini"], n_splits=100)["gini"]
    assert typical["p16"] <= typical["median"] <= typical["p84"]
    assert 0.05 < typical["share_below_split"] < 0.95  # one of many equally likely splits
    # B drawn from a shifted population: its split is farther apart than any random re-split.
    shifted = yardstick_spread(same_a, {"gini": rng.normal(0.6, 0.1, 124)}, ["gini"], n_splits=100)["gini"]
    assert shifted["share_below_split"] == 1.0 and shifted["split"] > 2 * shifted["median"]


def test_optical_training_length_refuses_bad_arguments_in_one_line(tmp_path):
    from benchmarks import optical_training_length

    out = tmp_path / "out.json"
    with pytest.raises(SystemExit, match="no finished run"):
        optical_training_length.main(["--run", str(tmp_path), "--out", str(out)])
    with pytest.raises(SystemExit, match="--steps must increase"):
        optical_training_length.main(["--steps", "3000,1500", "--out", str(out)])
    with pytest.raises(SystemExit, match="distinct offsets"):
        optical_training_length.main(["--draws", "3,20", "--reference", "20", "--out", str(out)])
    with pytest.raises(SystemExit, match="comma-separated integers"):
        optical_training_length.main(["--steps", "many", "--out", str(out)])
    assert not out.exists()


def test_radial_share_ratio_finds_flux_moved_to_the_wings():
    import galsim
    import numpy as np

    from benchmarks.optical_training_length import hsm_shear_modulus, radial_share_ratio

    def stamp(profile):
        return profile.drawImage(nx=64, ny=64, scale=0.2).array

    truth = np.stack([stamp(galsim.Gaussian(sigma=0.5))] * 2)
    assert all(r == pytest.approx(1.0) for r in radial_share_ratio(truth, truth).values())
    # A tenth of the flux moved into a wide, faint halo: less in the core, more beyond 12 pixels.
    halo = np.stack([stamp(galsim.Gaussian(sigma=0.5, flux=0.9) + galsim.Gaussian(sigma=3.0, flux=0.1))] * 2)
    shares = radial_share_ratio(halo, truth)
    # (0.9 plus the halo's own small share inside 4 pixels, over a stamp that cuts some of the halo off)
    assert 0.90 < shares["0-4"] < 0.92 and shares["12-16"] > 10
    # HSM recovers a GalSim shear on a round profile (|g| of the observed shape), NaN on a blank image.
    # (drawn without the pixel response, which would round it: an exactly elliptical Gaussian)
    sheared = galsim.Gaussian(sigma=0.5).shear(g1=0.2, g2=0.0).drawImage(nx=64, ny=64, scale=0.2,
                                                                        method="no_pixel").array
    g = hsm_shear_modulus(np.stack([sheared, np.zeros((64, 64))]), 0.2)
    assert g[0] == pytest.approx(0.2, abs=1e-3) and np.isnan(g[1])
