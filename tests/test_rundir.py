from __future__ import annotations

import pytest

from lensforge.errors import ConfigError
from lensforge.pipeline.config import build_config
from lensforge.pipeline.rundir import prepare_run_dir, run_layout
from lensforge.pipeline.stamps.splits import split_index


def test_prepare_writes_effective_config_and_removes_stale_manifest(tmp_path):
    config = build_config({"out_dir": str(tmp_path), "name": "r", "seed": 4})
    run_dir = prepare_run_dir(config)
    (run_dir / "manifest.json").write_text("{}")
    assert prepare_run_dir(config) == run_dir  # same config: resume
    assert not (run_dir / "manifest.json").exists()  # an unfinished rerun is visibly incomplete
    assert build_config(__import__("yaml").safe_load((run_dir / "config.yaml").read_text())) == config


def test_other_config_refused_unless_overwrite(tmp_path):
    first = build_config({"out_dir": str(tmp_path), "name": "r", "seed": 4})
    second = build_config({"out_dir": str(tmp_path), "name": "r", "seed": 5})
    run_dir = prepare_run_dir(first)
    (run_dir / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="different configuration"):
        prepare_run_dir(second)
    assert (run_dir / "keep.txt").exists()
    prepare_run_dir(second, overwrite=True)
    assert not (run_dir / "keep.txt").exists()


def test_chunk_markers(tmp_path):
    config = build_config({"out_dir": str(tmp_path), "name": "r"})
    progress = run_layout(config).progress("simulate")
    assert not progress.is_done(0, 16)
    progress.mark_done(0, 16)
    assert progress.is_done(0, 16) and not progress.is_done(16, 32)


@pytest.mark.parametrize("n, fraction, expected", [(100, 0.1, 90), (48, 0.1, 42), (10, 0.5, 4), (4, 0.9, 2)])
def test_validation_split_starts_on_a_ring_pair(n, fraction, expected):
    assert split_index(n, fraction) == expected


def test_overwrite_never_deletes_a_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "Documents").mkdir()
    (tmp_path / "Documents" / "thesis.tex").write_text("x")
    with pytest.raises(ConfigError, match="not a lensforge run"):
        prepare_run_dir(build_config({"out_dir": str(tmp_path), "name": "Documents"}), overwrite=True)
    assert (tmp_path / "Documents" / "thesis.tex").exists()


def test_out_dir_that_is_a_file_is_a_clear_error(tmp_path):
    from lensforge.errors import InputError

    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="cannot prepare the run directory"):
        prepare_run_dir(build_config({"out_dir": str(tmp_path / "file"), "name": "r"}))


def test_a_resume_removes_the_temporary_files_of_killed_writes(tmp_path):
    """zarr's ``<key>.<uuid hex>.partial`` and lensforge.atomic's ``.<name>.<8 chars>.tmp``; nothing else."""
    config = build_config({"out_dir": str(tmp_path), "name": "r"})
    run_dir = prepare_run_dir(config)
    leftovers = [run_dir / "trainset.zarr" / "images" / "c" / "0" / "0" / f"0.{'0a' * 16}.partial",
                 run_dir / "catalogs" / ".truth.fits.k3j_x9q2.tmp"]
    kept = [run_dir / "catalogs" / "truth.fits", run_dir / "notes.tmp", run_dir / "x.partial",
            run_dir / "trainset.zarr" / "images" / "c" / "0" / "0" / "0"]
    for path in leftovers + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    prepare_run_dir(config)
    assert not any(path.exists() for path in leftovers)
    assert all(path.exists() for path in kept)
