"""The dataset manifest and the `.verified` marker: no boto3 here, so the trainer can call
`is_verified` cheaply.

A manifest is `_manifest.json` at the dataset's root: every file's key (relative, '/'-separated),
size and sha256, sorted by key. It is written last by `push`, so a prefix without one is an
incomplete upload. It carries no timestamp: pushing the same bytes twice yields the same manifest,
and so the same hash in `.verified`, which is what lets `stage` skip an already-staged dataset.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from dlrm.errors import UserError
from dlrm.fsutil import atomic_write

MANIFEST_NAME = "_manifest.json"
MARKER_NAME = ".verified"
# Our own partial downloads (and s3transfer's temp files next to them) carry this in their name.
PARTIAL_TAG = ".dlrm-partial"
# Files of ours that are never dataset content.
RESERVED = {MANIFEST_NAME, MARKER_NAME}


@dataclass(frozen=True)
class Entry:
    key: str
    size: int
    sha256: str


def sha256_file(path: str | os.PathLike, bufsize: int = 4 * 1024 * 1024) -> str:
    # hashlib drops the GIL on big updates, so several threads can hash files in parallel.
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(bufsize)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def is_content(rel: str) -> bool:
    """False for the manifest, the marker and partial downloads; true for dataset files."""
    return rel not in RESERVED and PARTIAL_TAG not in rel.rsplit("/", 1)[-1]


def scan_dir(root: str | os.PathLike) -> dict[str, int]:
    """Relative key -> size for every dataset file under `root` (symlinks followed)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} is not a directory; give the dataset folder")
    out = {}
    for dirpath, _, files in os.walk(root, followlinks=True):
        for name in files:
            p = Path(dirpath, name)
            rel = p.relative_to(root).as_posix()
            if is_content(rel) and p.is_file():
                out[rel] = p.stat().st_size
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class Manifest:
    entries: tuple[Entry, ...]

    def to_bytes(self) -> bytes:
        files = [{"key": e.key, "size": e.size, "sha256": e.sha256} for e in sorted(self.entries, key=lambda e: e.key)]
        return (json.dumps({"version": 1, "files": files}, indent=1) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> "Manifest":
        try:
            doc = json.loads(data)
            entries = tuple(Entry(str(f["key"]), int(f["size"]), str(f["sha256"])) for f in doc["files"])
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"unreadable manifest {where}: {e}; push the dataset again") from None
        for e in entries:
            # Keys become paths under the pull folder: nothing may point outside it or at our files.
            parts = e.key.split("/")
            if e.key.startswith("/") or "" in parts or ".." in parts or "." in parts or not is_content(e.key):
                raise UserError(f"manifest {where} lists an unsafe key {e.key!r}; push the dataset again")
        return cls(entries)

    def by_key(self) -> dict[str, Entry]:
        return {e.key: e for e in self.entries}

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def local_file_ok(path: Path, entry: Entry) -> bool:
    """True if `path` holds exactly the entry's bytes (size checked first: it is free)."""
    try:
        if path.stat().st_size != entry.size:
            return False
    except FileNotFoundError:
        return False
    return sha256_file(path) == entry.sha256


def is_verified(directory: str | os.PathLike) -> bool:
    """True if `stage` finished verifying `directory`: its marker holds the hash of its manifest.
    The trainer refuses any data dir for which this is False."""
    d = Path(directory)
    try:
        marker = (d / MARKER_NAME).read_text().strip()
        manifest = (d / MANIFEST_NAME).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return False
    return marker == digest(manifest)


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file then rename, so a reader sees the old file or the new one, never half."""
    atomic_write(path, data, tag=PARTIAL_TAG)  # a killed writer's leftover carries the tag: pull cleans it up


@dataclass
class Report:
    """What differs between a dataset and its manifest; empty lists mean it matches."""
    missing: list[str]
    extra: list[str]
    corrupt: list[str]  # "key: why"

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt or self.extra)

    def lines(self) -> list[str]:
        return ([f"missing: {k}" for k in self.missing] + [f"extra: {k}" for k in self.extra]
                + [f"corrupt: {k}" for k in self.corrupt])

    def summary(self, where: str) -> str:
        return (f"{where} does not match its manifest ({len(self.missing)} missing, {len(self.extra)} extra, "
                f"{len(self.corrupt)} corrupt: listed above); pull or push it again")
