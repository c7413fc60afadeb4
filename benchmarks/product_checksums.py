"""Checksums of a run directory's products, for comparing two versions of the code byte for byte.

Prints (or writes as JSON) the sha256 of every file under one or more run directories, except
the files whose bytes legitimately change from one run to the next: the manifest and checkpoint
metadata (timestamps, timings, code revision) and progress markers are left out, and JSON
products are compared without their timing and code-revision keys (``VOLATILE_KEYS``). Run both
versions with the same ``--out`` so that ``config.yaml`` (which records it) compares too.

Usage::

    python benchmarks/product_checksums.py RUN_DIR [RUN_DIR ...] [-o checksums.json]
    python benchmarks/product_checksums.py --compare before.json after.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

# Files whose bytes carry wall-clock times or the code revision by design.
VOLATILE = {"manifest.json", "meta.json", "losses.csv", "losses.png", "training_state.json"}
# Keys of other JSON products that hold timings or the code revision: dropped before hashing.
VOLATILE_KEYS = {"seconds", "created_utc", "code_revision", "timings", "wall_seconds", "package_versions"}


def _without_volatile(value):
    if isinstance(value, dict):
        return {k: _without_volatile(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [_without_volatile(v) for v in value]
    return value


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def product_sha256(path: Path) -> str:
    """sha256 of a file's bytes; for JSON products, of the document without its volatile keys."""
    if path.suffix == ".json":
        document = _without_volatile(json.loads(path.read_text()))
        return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()
    return file_sha256(path)


def checksums(run_dir: Path) -> dict[str, str]:
    """sha256 of every regular file under ``run_dir`` by relative POSIX path (volatile ones excluded)."""
    return {path.relative_to(run_dir).as_posix(): product_sha256(path)
            for path in sorted(run_dir.rglob("*"))
            if path.is_file() and path.name not in VOLATILE and ".progress" not in path.parts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+")
    parser.add_argument("-o", "--output")
    parser.add_argument("--compare", action="store_true", help="compare two JSON files written by -o")
    args = parser.parse_args(argv)
    if args.compare:
        before, after = (json.loads(Path(p).read_text()) for p in args.paths)
        differ = 0
        for run in sorted(set(before) | set(after)):
            a, b = before.get(run, {}), after.get(run, {})
            for key in sorted(set(a) | set(b)):
                if a.get(key) != b.get(key):
                    differ += 1
                    print(f"DIFFERS {run}/{key}: {a.get(key, 'missing')[:12]} -> {b.get(key, 'missing')[:12]}")
            print(f"{run}: {len(a)} files before, {len(b)} after")
        print("identical" if not differ else f"{differ} files differ")
        return 1 if differ else 0
    result = {Path(p).name: checksums(Path(p)) for p in args.paths}
    text = json.dumps(result, indent=1, sort_keys=True)
    if args.output:
        Path(args.output).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
