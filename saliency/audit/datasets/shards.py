"""Shards: fixed runs of consecutive samples, their files, seeds and completion records.

Shard ``i`` holds samples ``[i * size, (i + 1) * size)``, whatever the number of ranks, so every
result depends on the data, the configuration and the seed only. A shard's files are written
atomically, its completion record last: the record lists every file with its size and SHA-256,
and the digest of the inputs and labels the shard was made from, so a shard counts as complete
only when all its files are there, whole, and made with this configuration (a power cut that
truncates a renamed file is caught too), and its data can be checked when read again.

Examples
--------
>>> [(r.start, r.stop) for r in plan(10, 4)]
[(0, 4), (4, 8), (8, 10)]
>>> a, b = shard_seed(0, 8, "smoothgrad"), shard_seed(1, 8, "smoothgrad")
>>> a == shard_seed(0, 8, "smoothgrad") and a != b
True
>>> compress([0, 1, 2, 5, 7, 8])
'0-2,5,7-8'
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from saliency._atomic import atomic_write

__all__ = [
    "SHARDS",
    "clean_temporary",
    "complete",
    "compress",
    "dumps",
    "hashed",
    "plan",
    "read_record",
    "shard_seed",
    "stem",
    "write_file",
    "write_record",
]

SHARDS = "shards"  # the folder under out_dir
# atomic_write's temporary names: ".{name}.{pid}-{8 hex}.tmp"
_TEMPORARY = re.compile(r"^\..+\.\d+-[0-9a-f]{8}\.tmp$")


def plan(samples: int, size: int) -> list[range]:
    """The sample ranges of every shard: ``size`` consecutive samples each, the last shorter."""
    return [range(start, min(start + size, samples)) for start in range(0, samples, size)]


def stem(shard: int) -> str:
    """The common start of a shard's file names, e.g. ``000042``."""
    return f"{shard:06d}"


def shard_seed(seed: int, first_sample: int, name: str) -> int:
    """A seed for ``name`` (a method or metric) on the shard starting at ``first_sample``.

    Derived by hashing, so neighbouring shards get unrelated streams and the seed depends on
    neither the rank nor the launch.
    """
    digest = hashlib.sha256(f"{seed}:{first_sample}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # below 2**63: any torch.Generator takes it


def write_file(folder: Path, name: str, data: bytes) -> dict:
    """Write ``data`` atomically to ``folder / name``; return its entry for the record."""
    with atomic_write(folder / name) as f:
        f.write(data)
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def hashed(path: Path) -> dict:
    """The record entry of a file already written (atomically) at ``path``."""
    return {"bytes": path.stat().st_size, "sha256": _sha256(path)}


def write_record(folder: Path, shard: int, record: dict) -> None:
    """Write the completion record of ``shard``, the last of its files."""
    write_file(folder, f"{stem(shard)}.done.json", dumps(record).encode())


def read_record(folder: Path, shard: int) -> dict | None:
    """The completion record of ``shard``, or None when it is missing or unreadable."""
    try:
        return json.loads((folder / f"{stem(shard)}.done.json").read_text())
    except (OSError, ValueError):
        return None


def complete(folder: Path, shard: int, digest: str) -> bool:
    """Whether ``shard`` has a record made with configuration ``digest``, naming the digest of
    its data, with all its files whole."""
    record = read_record(folder, shard)
    if record is None or record.get("config") != digest or not isinstance(record.get("data"), str):
        return False
    for name, recorded in record.get("files", {}).items():
        path = folder / name
        try:
            if path.stat().st_size != recorded["bytes"] or _sha256(path) != recorded["sha256"]:
                return False
        except (OSError, KeyError, TypeError):
            return False
    return True


def clean_temporary(folder: Path) -> int:
    """Remove the temporary files a killed run left in ``folder``; return how many."""
    removed = 0
    if folder.is_dir():
        for entry in os.scandir(folder):
            if entry.is_file() and _TEMPORARY.match(entry.name):
                Path(entry.path).unlink(missing_ok=True)
                removed += 1
    return removed


def compress(shards: Iterable[int]) -> str:
    """Shard numbers as ranges, ``"0-2,5"``: short enough to rewrite after every shard."""
    parts: list[str] = []
    ordered = sorted(set(shards))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def dumps(value: object) -> str:
    """Canonical JSON: sorted keys, no spaces to vary, no NaN (non-finite numbers are null)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
