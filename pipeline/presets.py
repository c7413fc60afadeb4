"""Survey presets: named partial configurations in ``pipeline/presets/<name>.yaml``.

A preset fills the ``survey`` section (pixel scale, PSF, photometry, depth) and the survey's
artefact rates, tile population and, for radio, the interferometer. Values and their
sources are documented in ``docs/surveys.md``. ``lensforge config show --preset lsst``
prints the full effective configuration to copy and change; a config file may name its
preset with a top-level ``preset:`` key. Precedence: defaults < preset < file < ``--set``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lensforge.errors import ConfigError
from lensforge.pipeline.strict_yaml import parse_yaml

PRESETS_DIR = Path(__file__).with_name("presets")


def preset_names() -> list[str]:
    """Names of the built-in presets."""
    return sorted(path.stem for path in PRESETS_DIR.glob("*.yaml"))


def preset_values(name: str) -> dict[str, Any]:
    """The partial configuration of preset ``name`` (a nested dict); ``ConfigError`` names the valid ones."""
    path = PRESETS_DIR / f"{name}.yaml"
    if name not in preset_names():
        raise ConfigError(f"unknown survey preset {name!r}; valid: {preset_names()}", name)
    values = parse_yaml(path.read_text(encoding="utf-8"), str(path)) or {}
    values.pop("citations", None)  # documentation only
    return values


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``top`` laid over it, section by section (``top`` wins; neither is modified)."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
