"""Hostile configurations fed to the real ``lensforge`` CLI (issue R2 2/5, "Safe with users' data").

Duplicate YAML keys, booleans for numbers, mistyped keys, unphysical values, a ``--dask-address``
where no scheduler (or something else) answers, and commands on an existing run that must start
from that run's ``config.yaml``. Every bad input gives exactly one ``lensforge: error:`` line on
stderr, exit status 2, no traceback, and leaves what was written before byte for byte as it was.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from types import SimpleNamespace

import pytest
from astropy.io import fits
from hostile_support import finished_run as _finished_run
from hostile_support import sha256_tree as _sha256_tree
from typer.testing import CliRunner

from lensforge.flows.cli import app

# --- helpers (as tests/test_hostile.py) -------------------------------------------------------------


def _invoke(args: list[str]):
    result = CliRunner().invoke(app, args)
    return SimpleNamespace(exit_code=result.exit_code, stdout=result.stdout, stderr=result.stderr,
                           exception=None if isinstance(result.exception, SystemExit) else result.exception)


def _assert_one_line_error(outcome, *expect: str, absent: tuple[str, ...] = ()) -> str:
    everything = outcome.stdout + outcome.stderr
    assert outcome.exception is None, f"uncaught {type(outcome.exception).__name__}: {outcome.exception}"
    assert "Traceback" not in everything, everything
    assert outcome.exit_code == 2, everything
    assert outcome.stdout.strip() == "", f"stdout: {outcome.stdout!r}"
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"{len(lines)} lines on stderr:\n{outcome.stderr}"
    line = lines[0]
    assert line.startswith("lensforge: error: "), line
    for text in expect:
        assert text in line, f"{text!r} not in {line!r}"
    for text in absent:
        assert text not in line, f"{text!r} in {line!r}"
    assert len(line) < 600, f"{len(line)} characters"
    return line


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two finished runs (defaults and euclid_vis) and the hostile YAML files; nothing may change them."""
    root = tmp_path_factory.mktemp("hostile_config")
    runs = root / "runs"
    good = _finished_run(runs, "good")
    euclid = _finished_run(runs, "euclid", preset="euclid_vis")
    files = root / "files"
    files.mkdir()
    for name, text in YAML_FILES.items():
        (files / name).write_text(text)
    watched = (runs, files)
    return SimpleNamespace(root=root, runs=runs, good=good, euclid=euclid, files=files, watched=watched,
                           before=_sha256_tree(*watched))


@pytest.fixture
def untouched(world):
    yield
    assert _sha256_tree(*world.watched) == world.before


YAML_FILES = {
    "dup_top.yaml": "seed: 1\nsurvey:\n  stamp_size: 32\nseed: 2\n",
    "dup_section.yaml": "train:\n  steps: 5\n  batch_size: 8\n  steps: 7\n",
    "dup_depth3.yaml": "tile:\n  defects:\n    edge_pixels: 4\n    hot_pixel_fraction: 0.0\n    edge_pixels: 9\n",
    "dup_jobqueue.yaml": "dask:\n  jobqueue:\n    cores: 4\n    cores: 8\n",
    "dup_section_twice.yaml": "survey:\n  stamp_size: 32\ntrain:\n  steps: 3\nsurvey:\n  band: i\n",
    "bool_in_file.yaml": "train:\n  batch_size: on\n",
    "typo_in_file.yaml": "survey:\n  pixel_scale: 0.1\n",
    "typo_depth3.yaml": "tile:\n  defects:\n    edge_pixel: 4\n",
}


def _on_good(*args: str):
    return lambda w: [*args, "--out", str(w.runs), "--name", "good"]


def _file(command: list[str], name: str):
    return lambda w: [*command, "--config", str(w.files / name), "--out", str(w.runs), "--name", "good"]


NEW_RUN = ["simulate", "--quiet", "--set", "simulation.n_objects=8", "--set", "survey.stamp_size=32"]

# (id, args(world), expected pieces of the line, whether the command writes)
CASES = [
    # 1. duplicate keys, at several depths, refused with the key and both lines
    ("dup/top/train", _file(["train", "--quiet"], "dup_top.yaml"), ("dup_top.yaml", "duplicate key 'seed'",
                                                                     "line 4", "first at line 1")),
    ("dup/section/train", _file(["train", "--quiet"], "dup_section.yaml"),
     ("duplicate key 'train.steps'", "(line 4; first at line 2)")),
    ("dup/depth3/simulate", lambda w: [*NEW_RUN, "--config", str(w.files / "dup_depth3.yaml"), "--out", str(w.runs),
                                       "--name", "new"], ("duplicate key 'tile.defects.edge_pixels'", "line 5")),
    ("dup/jobqueue/config", lambda w: ["config", "show", "--config", str(w.files / "dup_jobqueue.yaml")],
     ("duplicate key 'dask.jobqueue.cores'", "line 4")),
    ("dup/section_twice/generate", _file(["generate", "sample"], "dup_section_twice.yaml"),
     ("duplicate key 'survey'", "line 5; first at line 1")),
    ("dup/set_value/train", _on_good("train", "--set", "tile.defects={edge_pixels: 1, edge_pixels: 2}"),
     ("tile.defects=", "duplicate key 'edge_pixels'")),
    # 2. no bool as int, int as bool, float as int
    ("strict/steps_true/train", _on_good("train", "--set", "train.steps=true"),
     ("invalid value for 'train.steps'", "valid integer", "True")),
    ("strict/stamp_yes/simulate", lambda w: [*NEW_RUN, "--set", "survey.stamp_size=yes", "--out", str(w.runs),
                                             "--name", "new"], ("invalid value for 'survey.stamp_size'", "True")),
    ("strict/n_objects_false/simulate", lambda w: ["simulate", "--set", "simulation.n_objects=false",
                                                   "--out", str(w.runs), "--name", "new"],
     ("invalid value for 'simulation.n_objects'",)),
    ("strict/compile_1/train", _on_good("train", "--set", "train.compile=1"),
     ("invalid value for 'train.compile'", "valid boolean", "(got 1)")),
    ("strict/ring_pairs_0/config", lambda w: ["config", "show", "--set", "simulation.ring_pairs=0"],
     ("invalid value for 'simulation.ring_pairs'", "valid boolean")),
    ("strict/stamp_fraction/generate", _on_good("generate", "sample", "--set", "survey.stamp_size=64.5"),
     ("invalid value for 'survey.stamp_size'", "64.5")),
    ("strict/seed_float/train", _on_good("train", "--set", "seed=1.0e3"), ("invalid value for 'seed'", "1000.0")),
    ("strict/size_item_bool/tile", lambda w: ["tile", "--set", "tile.size_pixels=[true, 64]", "--out", str(w.runs),
                                              "--name", "new"], ("invalid value for 'tile.size_pixels.0'",)),
    ("strict/bool_in_file/train", _file(["train", "--quiet"], "bool_in_file.yaml"),
     ("bool_in_file.yaml", "invalid value for 'train.batch_size'", "True")),
    ("strict/number_as_string/config", lambda w: ["config", "show", "--set", "train.steps='5'"],
     ("invalid value for 'train.steps'", "'5'")),
    # 3. did you mean
    ("typo/train_step/train", _on_good("train", "--set", "train.step=5"),
     ("unknown key 'train.step'; did you mean 'train.steps'?",)),
    ("typo/section/simulate", lambda w: [*NEW_RUN, "--set", "simulaton.n_objects=4", "--out", str(w.runs),
                                         "--name", "new"], ("unknown key 'simulaton'; did you mean 'simulation'?",)),
    ("typo/file/generate", _file(["generate", "sample"], "typo_in_file.yaml"),
     ("unknown key 'survey.pixel_scale'; did you mean 'survey.pixel_scale_arcsec'?",)),
    ("typo/depth3/config", lambda w: ["config", "show", "--config", str(w.files / "typo_depth3.yaml")],
     ("unknown key 'tile.defects.edge_pixel'; did you mean 'tile.defects.edge_pixels'?",)),
    ("typo/nothing_close/train", _on_good("train", "--set", "train.zzzz=5"), ("unknown key 'train.zzzz'",)),
    # 4. physical bounds
    ("physical/pixel_scale_1e-300/simulate", lambda w: [*NEW_RUN, "--set", "survey.pixel_scale_arcsec=1e-300",
                                                        "--out", str(w.runs), "--name", "new"],
     ("invalid value for 'survey.pixel_scale_arcsec'", "greater than or equal to 0.001", "1e-300")),
    ("physical/pixel_scale_zero/generate", _on_good("generate", "sample", "--set", "survey.pixel_scale_arcsec=0"),
     ("invalid value for 'survey.pixel_scale_arcsec'",)),
    ("physical/psf_fwhm_1e5/simulate", lambda w: [*NEW_RUN, "--set", "survey.psf_fwhm_arcsec=1e5",
                                                  "--out", str(w.runs), "--name", "new"],
     ("invalid value for 'survey.psf_fwhm_arcsec'", "less than or equal to 600")),
    ("physical/galaxy_wider_than_stamp/generate",
     _on_good("generate", "sample", "--set", "population.half_light_radius_max_arcsec=20"),
     ("population.half_light_radius_max_arcsec (20)", "stamp's width", "6.4 arcsec")),
    ("physical/psf_wider_than_stamp/train", _on_good("train", "--set", "survey.psf_fwhm_arcsec=5"),
     ("survey.psf_fwhm_arcsec (5)", "stamp's width")),
    ("physical/aberration/config", lambda w: ["config", "show", "--set", "survey.aberrations_waves=[0.1, 50]"],
     ("invalid value for 'survey.aberrations_waves.1'", "less than or equal to 2")),
    ("physical/mirror/config", lambda w: ["config", "show", "--set", "survey.mirror_diameter_m=1e-9"],
     ("invalid value for 'survey.mirror_diameter_m'",)),
    ("physical/flux/simulate", lambda w: [*NEW_RUN, "--set", "population.flux_max=1e300", "--out", str(w.runs),
                                          "--name", "new"], ("invalid value for 'population.flux_max'",)),
    ("physical/hlr_tiny/config", lambda w: ["config", "show", "--set", "population.half_light_radius_min_arcsec=1e-9"],
     ("invalid value for 'population.half_light_radius_min_arcsec'",)),
    # 5. a command that creates a run, on a run of another preset: refused, naming the presets
    ("run/simulate_without_preset", lambda w: ["simulate", "--quiet", "--out", str(w.runs), "--name", "euclid"],
     ("holds a run with a different configuration", "survey.name euclid_vis -> default",
      "made with preset euclid_vis, this command asks for no preset")),
    ("run/simulate_other_preset", lambda w: ["simulate", "--quiet", "--preset", "lsst", "--out", str(w.runs),
                                             "--name", "euclid"],
     ("holds a run with a different configuration", "made with preset euclid_vis, this command asks for preset lsst")),
    ("run/tile_other_setting", lambda w: ["tile", "--quiet", "--set", "survey.stamp_size=64", "--out", str(w.runs),
                                          "--name", "good"],
     ("holds a run with a different configuration", "survey.stamp_size 32 -> 64")),
]


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_hostile_configuration_is_one_line_and_harmless(case, world, untouched):
    _, args, expect = case
    line = _assert_one_line_error(_invoke(args(world)), *expect)
    assert not (world.runs / "new").exists(), line
    if "did you mean" not in " ".join(expect) and "unknown key" in line:
        assert "did you mean" not in line


def test_enough_cases_and_enough_on_commands_that_write():
    writers = [case for case in CASES if any(word in case[0] for word in ("/train", "/simulate", "/generate", "/tile",
                                                                            "run/"))]
    assert len(CASES) >= 20 and len(writers) >= 8


# --- 1. duplicate keys: the loader ------------------------------------------------------------------

def test_duplicate_keys_loader_keeps_safe_load_semantics():
    from lensforge.errors import ConfigError
    from lensforge.pipeline.config import parse_yaml

    text = "base: &b {a: 1, b: 2}\nx:\n  <<: *b\n  b: 3\ny: [1e-3, 2, yes]\n"
    assert parse_yaml(text, "t") == {"base": {"a": 1, "b": 2}, "x": {"a": 1, "b": 3}, "y": [0.001, 2, True]}
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_yaml("x: !!python/object/apply:os.system ['true']\n", "t")
    with pytest.raises(ConfigError, match=r"t: duplicate key 'a\.\[1\]\.k' \(line 4; first at line 3\)"):
        parse_yaml("a:\n  - {k: 1}\n  - k: 1\n    k: 2\n", "t")
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefg", "bcdefgh", strict=True))
    start = time.monotonic()
    parse_yaml(bomb, "t")  # each shared node is checked once
    assert time.monotonic() - start < 5


# --- 4. a GalSim failure that validation did not foresee is one line ---------------------------------

def test_a_galsim_error_escaping_a_stage_is_one_line(world, untouched, monkeypatch):
    import galsim

    from lensforge.flows import stages

    def explode(*args, **kwargs):
        raise galsim.GalSimFFTSizeError("drawing an FFT of size 1e12\nis not possible", 1e12)

    monkeypatch.setattr(stages, "train", explode)
    _assert_one_line_error(_invoke(["train", "--quiet", "--out", str(world.runs), "--name", "good"]),
                           "GalSim cannot draw with this configuration", "GalSimFFTSizeError",
                           "drawing an FFT of size 1e12 is not possible")


def test_an_error_from_inside_galsim_is_one_line(world, untouched, monkeypatch):
    import galsim

    from lensforge.flows import stages

    def overflow(*args, **kwargs):  # what 1e-300 arcsec pixels did: an OverflowError raised inside GalSim
        galsim.Gaussian(sigma=1.0).drawImage(scale=float("inf"), nx=4, ny=4)

    monkeypatch.setattr(stages, "train", overflow)
    _assert_one_line_error(_invoke(["train", "--quiet", "--out", str(world.runs), "--name", "good"]),
                           "GalSim cannot draw with this configuration")


# --- 5. commands on an existing run start from its config.yaml -----------------------------------

def test_a_command_on_an_existing_run_starts_from_its_config(world):
    from lensforge.flows.cli_common import config_for_run
    from lensforge.pipeline.presets import preset_values

    notes: list[str] = []
    cfg = config_for_run(None, [], world.runs, "euclid", notes=notes)
    assert (cfg.survey.name, cfg.survey.pixel_scale_arcsec, cfg.survey.psf_type) == ("euclid_vis", 0.1, "optical")
    assert notes == []
    notes = []
    cfg = config_for_run(None, ["survey.read_noise_e=9", "dask.n_workers=3"], world.runs, "euclid", notes=notes)
    assert cfg.survey.read_noise_e == 9 and cfg.survey.name == "euclid_vis"
    old = preset_values("euclid_vis")["survey"]["read_noise_e"]
    assert notes == [f"overriding survey.read_noise_e of run euclid ({old} -> 9.0)"]  # dask is execution only
    notes = []
    config_for_run(None, [], world.runs, "euclid", preset="lsst", notes=notes)
    assert notes[0] == "run euclid was made with preset euclid_vis; preset lsst overrides its settings"
    assert "overriding survey.pixel_scale_arcsec of run euclid (0.1 -> 0.2)" in notes
    notes = []
    config_for_run(None, ["train.objective=vae"], world.runs, "good", own_keys=("train.objective",), notes=notes)
    assert notes == []  # what the command's own options (--objective) set is no surprise
    assert config_for_run(None, [], world.runs, "no-such-run").survey.name == "default"


def test_generate_on_a_preset_run_renders_with_its_survey(tmp_path):
    run_dir = _finished_run(tmp_path / "runs", "euclid", preset="euclid_vis")
    result = _invoke(["generate", "sample", "--n", "2", "--out", str(tmp_path / "runs"), "--name", "euclid",
                      "--output", "eu.fits"])
    assert result.exit_code == 0, result.stdout + result.stderr
    assert not [line for line in result.stderr.splitlines() if line.startswith("lensforge: note:")], result.stderr
    # Before: the defaults' 0.2"/px and Moffat PSF, silently.
    assert fits.getheader(run_dir / "generated" / "eu.fits")["PIXSCALE"] == pytest.approx(0.1)


def test_an_override_on_an_existing_run_says_so(tmp_path):
    run_dir = _finished_run(tmp_path / "runs", "euclid", preset="euclid_vis")
    result = _invoke(["generate", "sample", "--n", "2", "--out", str(tmp_path / "runs"), "--name", "euclid",
                      "--output", "eu.fits", "--set", "survey.pixel_scale_arcsec=0.2"])
    assert result.exit_code == 0, result.stdout + result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith("lensforge: note:")]
    assert notes == ["lensforge: note: overriding survey.pixel_scale_arcsec of run euclid (0.1 -> 0.2)"]
    assert (run_dir / "generated" / "eu.fits").exists()


def test_a_damaged_saved_config_is_one_line(tmp_path):
    run_dir = _finished_run(tmp_path / "runs", "broken")
    (run_dir / "config.yaml").write_text("train:\n  steps: 5\n  steps: 6\n")
    before = _sha256_tree(run_dir)
    _assert_one_line_error(_invoke(["train", "--quiet", "--out", str(tmp_path / "runs"), "--name", "broken"]),
                           "config.yaml", "duplicate key 'train.steps'")
    assert _sha256_tree(run_dir) == before


# --- 6. --help keeps brackets, shows defaults, no <bool> -----------------------------------------------

@pytest.mark.parametrize("command", [["generate", "sample"], ["train"], ["simulate"]])
def test_help_keeps_brackets_and_shows_defaults(command):
    result = CliRunner().invoke(app, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "<bool>" not in text
    assert "[default: runs]" in text and "[default: demo]" in text
    if command == ["generate", "sample"]:
        assert "Half-light radius [arcsec]; unset = any." in text
        assert "File name inside <run>/generated/." in text


# --- 7. --dask-address answered by something that is not a Dask scheduler ----------------------------

class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def _handler(behaviour: str):
    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            if behaviour == "banner":
                self.request.sendall(b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n")
            elif behaviour == "garbage":
                self.request.sendall(b"\x18\x00\x00\x00\x00\x00\x00\x00" + bytes(range(24)))
            elif behaviour == "http":
                self.request.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            if behaviour != "close":
                time.sleep(20)  # hold the connection open; bounded, the thread ends by itself
    return Handler


@pytest.fixture
def server(request):
    srv = _Server(("127.0.0.1", 0), _handler(request.param))
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


DASK_CASES = {"silent": "something listens there but says nothing", "banner": "not a Dask scheduler",
              "garbage": "not a Dask scheduler", "http": "not a Dask scheduler",
              "close": "closed the connection without a Dask handshake"}


@pytest.mark.parametrize("server", list(DASK_CASES), indirect=True)
def test_a_dask_address_that_is_not_a_scheduler_is_one_line(server, request, tmp_path, monkeypatch):
    import lensforge.flows.cluster

    monkeypatch.setattr(lensforge.flows.cluster, "SCHEDULER_TIMEOUT_S", 2.0)
    start = time.monotonic()
    outcome = _invoke(["simulate", "--quiet", "--out", str(tmp_path), "--dask-address", server])
    elapsed = time.monotonic() - start
    _assert_one_line_error(outcome, f"dask.address {server}", DASK_CASES[request.node.callspec.id])
    assert elapsed < 10, elapsed
    assert not any(tmp_path.iterdir())


def test_nothing_listening_is_one_line(tmp_path):
    address = f"tcp://127.0.0.1:{_free_port()}"
    _assert_one_line_error(_invoke(["simulate", "--quiet", "--out", str(tmp_path), "--dask-address", address]),
                           f"dask.address {address}: no Dask scheduler answered")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("server", ["silent"], indirect=True)
def test_a_silent_server_fails_within_the_promised_ten_seconds(server):
    from lensforge.errors import ConfigError
    from lensforge.flows.cluster import check_scheduler

    start = time.monotonic()
    with pytest.raises(ConfigError, match="no Dask scheduler answered in 10 s"):
        check_scheduler(server)
    assert time.monotonic() - start < 12
