"""YAML as configurations are read: ``yaml.safe_load`` that refuses duplicate keys.

PyYAML lets the last of two equal keys win silently, so a setting repeated further down a file
would quietly replace the first; here it is a one-line ``ConfigError`` naming the key and both
lines. Everything else is ``yaml.safe_load`` (no Python tags), except that exponent floats without
a dot or a signed exponent (``1e-3``, ``1.4e9``) are floats as in YAML 1.2, not strings.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from lensforge.errors import ConfigError


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no Python tags) with YAML 1.2 exponent floats; duplicate keys are checked on
    the composed node tree (:func:`parse_yaml`). Merge keys (``<<: *base``) still override as YAML says."""


_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _check_duplicates(node: yaml.Node, path: tuple[str, ...], seen: set[int]) -> None:
    # Aliases share nodes: each node is checked once, so an alias bomb stays linear.
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[Any, yaml.Node] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = key_node.value
                if key in first:
                    dotted = ".".join((*path, str(key)))
                    raise _DuplicateKey(f"duplicate key '{dotted}' (line {key_node.start_mark.line + 1}; first "
                                        f"at line {first[key].start_mark.line + 1})")
                first[key] = key_node
                _check_duplicates(value_node, (*path, str(key)), seen)
            else:
                _check_duplicates(value_node, path, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_duplicates(item, (*path, f"[{index}]") if path else (f"[{index}]",), seen)


class _DuplicateKey(Exception):
    pass


def parse_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load(text)`` that refuses duplicate keys; ``ConfigError`` (one line, naming ``source``,
    the key and its line) for text that is not valid YAML."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicates(node, (), set())
        return loader.construct_document(node)
    except _DuplicateKey as err:
        raise ConfigError(f"{source}: {err}", source) from None
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise ConfigError(f"{source}: not valid YAML{where}", source) from None
    finally:
        loader.dispose()
