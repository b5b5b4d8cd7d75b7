"""The dataset manifest, the `.verified` record, and the trainer's check of a copied dataset.

A manifest is `_manifest.json` at the dataset's root: every file's key (relative, '/'-separated),
size and sha256, sorted by key, and the ETag the object had when `push` wrote it (so a later push
sees an object replaced behind its back). On S3 it is written last by `push`, so a prefix without
one is an incomplete upload. It carries no timestamp: pushing the same bytes twice yields the same
manifest.

In a local copy (`launcher data pull|stage`), the manifest is written BEFORE any file changes and
`.verified` last: `.verified` records the manifest's hash and every file's size and mtime as they
were when each file's hash was checked. A folder holding `_manifest.json` is trained on only when
`require_verified` passes: the record matches every file exactly, or every file's hash is
recomputed. So a pull killed half-way (a full disk) leaves a folder the trainer refuses. A
read-only mount of a pushed prefix has no record: the launcher sets `data.verify: sizes` there.

No boto3 and no launcher imports here: the trainer calls `require_verified` at every start.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from dlrm.errors import DataError, UserError
from dlrm.io.fsutil import MAX_TEXT_BYTES, atomic_write, load_yaml_file, read_bytes

MANIFEST_NAME = "_manifest.json"
MARKER_NAME = ".verified"
MANIFEST_LIMIT = 8 * MAX_TEXT_BYTES  # read whole (bounded): a manifest of millions of files is ~100 bytes each
# Our own partial downloads (and s3transfer's temp files next to them) carry this in their name.
PARTIAL_TAG = ".dlrm-partial"
# Files of ours that are never dataset content.
RESERVED = {MANIFEST_NAME, MARKER_NAME}
MAX_KEY_BYTES = 1024  # S3's limit for a whole key (prefix included), in UTF-8 bytes


@dataclass(frozen=True)
class Entry:
    key: str
    size: int
    sha256: str
    etag: str | None = None  # the object's ETag right after push; None in older manifests


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
    """False for the manifest, the marker and partial writes (downloads, and the manifest and
    marker written with atomic_write(tag=PARTIAL_TAG): a killed writer's leftover is cleaned up by pull)."""
    return rel not in RESERVED and PARTIAL_TAG not in rel.rsplit("/", 1)[-1]


def key_problem(rel: str) -> str | None:
    """Why `rel` cannot be an object key that maps back to the same path, or None."""
    try:
        encoded = rel.encode("utf-8")  # os.walk hands undecodable bytes over as lone surrogates
    except UnicodeEncodeError:
        return "its name is not UTF-8"
    if any(ord(c) < 32 or ord(c) == 127 for c in rel):
        return "its name holds a control character"
    if len(encoded) > MAX_KEY_BYTES:
        return f"its path is longer than S3's {MAX_KEY_BYTES} bytes"
    return None


def _shown(rel: str) -> str:
    return ascii(rel) if key_problem(rel) else rel


def scan_dir(root: str | os.PathLike) -> dict[str, int]:
    """Relative key -> size of every dataset file under `root`, sorted.

    Every entry is checked before anything is sent: a folder that cannot be read, a symlink to a
    folder (loops) or to anything outside `root`, something that is not a regular file, or a name
    that is not a safe key is a UserError naming it; a symlink to a file inside `root` is read as
    that file.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} is not a directory; give the dataset folder")
    real_root = root.resolve()

    def unreadable(e: OSError):  # os.walk would skip the folder silently: a dataset short of files
        raise OSError(e.errno, f"cannot read this folder ({e.strerror}); stopped before any transfer", e.filename) from None

    out = {}
    for dirpath, dirs, files in os.walk(root, onerror=unreadable):
        for name in dirs:  # os.walk does not descend into symlinked folders: refuse them instead
            p = Path(dirpath, name)
            if p.is_symlink():
                raise UserError(f"{_shown(str(p))}: a symlink to a folder ({_shown(os.readlink(p))}); copy the folder in instead "
                                "(links to folders can loop or leave the dataset)")
        for name in files:
            p = Path(dirpath, name)
            rel = p.relative_to(root).as_posix()
            if not is_content(rel):
                continue
            problem = key_problem(rel)
            if problem:
                raise UserError(f"{root}/{_shown(rel)}: {problem}; rename the file (object keys must be "
                                "UTF-8 text without control characters)")
            try:
                st = p.stat()  # follows a symlink
            except FileNotFoundError:
                raise UserError(f"{p}: a broken symlink ({os.readlink(p)})") from None
            if p.is_symlink() and not p.resolve().is_relative_to(real_root):
                raise UserError(f"{p}: a symlink to {p.resolve()}, outside {root}; copy the file in instead")
            if not stat.S_ISREG(st.st_mode):
                raise UserError(f"{p}: not a regular file (a pipe, socket or device); remove it from the dataset")
            out[rel] = st.st_size
    return dict(sorted(out.items()))


def check_spec_files(root: str | os.PathLike, spec_name: str = "feature_spec.yaml") -> None:
    """Every file a feature_spec.yaml at `root` names (source_spec.<split>[].files) must be inside
    `root` and exist: a push would otherwise ship a dataset without it. Only that part of the spec
    is read here (any folder can be pushed; the trainer checks the rest)."""
    path = Path(root) / spec_name
    if not path.is_file():
        return
    from dlrm.data.spec import file_inside  # numpy: only push needs it

    raw = load_yaml_file(path, "feature spec", DataError)
    sources = raw.get("source_spec") if isinstance(raw, dict) else None
    root = Path(root)
    for split, chunks in (sources.items() if isinstance(sources, dict) else ()):
        for i, chunk in enumerate(chunks if isinstance(chunks, list) else ()):
            files = chunk.get("files") if isinstance(chunk, dict) else None
            for name in (files if isinstance(files, list) else ()):
                where = f"{path}: source_spec.{split}[{i}].files"
                if not file_inside(root, name, where).is_file():
                    raise DataError(f"{where}: {name!r} is missing")


@dataclass(frozen=True)
class Manifest:
    entries: tuple[Entry, ...]

    def to_bytes(self) -> bytes:
        files = []
        for e in sorted(self.entries, key=lambda e: e.key):
            files.append({"key": e.key, "size": e.size, "sha256": e.sha256, **({"etag": e.etag} if e.etag else {})})
        return (json.dumps({"version": 1, "files": files}, indent=1) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> "Manifest":
        try:
            doc = json.loads(data)
            entries = tuple(Entry(str(f["key"]), int(f["size"]), str(f["sha256"]),
                                  str(f["etag"]) if f.get("etag") else None) for f in doc["files"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"unreadable manifest {where}: {e}; push the dataset again") from None
        for e in entries:
            # Keys become paths under the pull folder: nothing may point outside it or at our files.
            parts = e.key.split("/")
            if (e.key.startswith("/") or "" in parts or ".." in parts or "." in parts or not is_content(e.key)
                    or key_problem(e.key) or e.size < 0):
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
    except (FileNotFoundError, NotADirectoryError):
        return False
    return sha256_file(path) == entry.sha256


# -- the verification record ----------------------------------------------------------------------


def _stats(directory: Path, manifest: Manifest) -> dict[str, list[int]] | None:
    """key -> [size, mtime_ns] of every file the manifest lists, or None if one is missing."""
    out = {}
    for e in manifest.entries:
        try:
            st = (directory / e.key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        out[e.key] = [st.st_size, st.st_mtime_ns]
    return out


def write_record(directory: str | os.PathLike, manifest_bytes: bytes) -> None:
    """Record that every file under `directory` was just checked against `manifest_bytes`."""
    d = Path(directory)
    manifest = Manifest.from_bytes(manifest_bytes, str(d / MANIFEST_NAME))
    stats = _stats(d, manifest)
    if stats is None or any(stats[e.key][0] != e.size for e in manifest.entries):
        raise UserError(f"files of {d} changed while they were checked; run the command again")
    record = {"manifest_sha256": digest(manifest_bytes), "files": stats}
    atomic_write(d / MARKER_NAME, json.dumps(record, sort_keys=True) + "\n", tag=PARTIAL_TAG)


def is_verified(directory: str | os.PathLike) -> bool:
    """True if `.verified` matches the manifest and every listed file's size and mtime exactly
    (nothing was written since the hashes were checked). No hashing: cheap."""
    d = Path(directory)
    try:
        record = json.loads(read_bytes(d / MARKER_NAME, MARKER_NAME, DataError, MANIFEST_LIMIT))
        manifest_bytes = read_bytes(d / MANIFEST_NAME, MANIFEST_NAME, DataError, MANIFEST_LIMIT)
        if record["manifest_sha256"] != digest(manifest_bytes):
            return False
        manifest = Manifest.from_bytes(manifest_bytes, str(d / MANIFEST_NAME))
    except (OSError, ValueError, KeyError, TypeError, UserError):
        return False
    return _stats(d, manifest) == record.get("files")


def require_verified(directory: str | os.PathLike, mode: str = "auto", workers: int = 8) -> None:
    """The trainer's check of a dataset folder (`data.verify` is `mode`). Nothing to do without
    `_manifest.json` (a folder written here by synth or preprocess). With one, train only on a copy
    that matches it:
      auto:  the `.verified` record, else every file's size and sha256 (the whole dataset is read)
      full:  every file's size and sha256, whatever the record says
      sizes: every file's size only (a read-only mount of a pushed prefix: see launcher/pods.py)
      off:   nothing
    """
    d = Path(directory)
    mpath = d / MANIFEST_NAME
    if mode == "off" or not mpath.is_file() or (mode == "auto" and is_verified(d)):
        return
    try:
        manifest = Manifest.from_bytes(read_bytes(mpath, MANIFEST_NAME, DataError, MANIFEST_LIMIT), str(mpath))
    except UserError as e:
        raise DataError(str(e)) from None
    what = "sizes of" if mode == "sizes" else "sizes and sha256 of"
    why = f"data.verify={mode}" if mode != "auto" else f"no up-to-date {MARKER_NAME} record"
    print(f"{d}: {why}; checking {what} {len(manifest.entries)} files ({manifest.total_bytes / 2**30:.2f} GiB) "
          f"against {MANIFEST_NAME}", file=sys.stderr, flush=True)

    def problem(e: Entry) -> str | None:
        return _size_problem(d, e) or (None if sha256_file(d / e.key) == e.sha256 else f"{e.key}: sha256 differs")

    # Sizes first: an incomplete copy (the usual case) is refused without reading any data.
    bad = [p for p in (_size_problem(d, e) for e in manifest.entries) if p]
    if not bad and mode != "sizes":
        with ThreadPoolExecutor(workers) as pool:
            bad = [p for p in pool.map(problem, manifest.entries) if p]
    if bad:
        raise DataError(f"{d}: does not match its {MANIFEST_NAME} ({len(bad)} file(s): {'; '.join(bad[:3])}"
                        f"{'; ...' if len(bad) > 3 else ''}): an incomplete or changed copy; pull or stage it again "
                        f"(launcher data verify {d} lists every difference)")


def _size_problem(d: Path, e: Entry) -> str | None:
    try:
        size = (d / e.key).stat().st_size
    except (FileNotFoundError, NotADirectoryError):
        return f"{e.key} missing"
    return f"{e.key}: size {size}, manifest says {e.size}" if size != e.size else None


@dataclass
class Report:
    """What differs between a dataset and its manifest; empty lists mean it matches."""
    missing: list[str]
    extra: list[str]
    corrupt: list[str]  # "key: why"

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupt or self.extra)

    @property
    def mismatched(self) -> list[str]:
        """Keys whose content must be sent again (missing or corrupt)."""
        return sorted(self.missing + [c.split(": ", 1)[0] for c in self.corrupt])

    def lines(self) -> list[str]:
        return ([f"missing: {k}" for k in self.missing] + [f"extra: {k}" for k in self.extra]
                + [f"corrupt: {k}" for k in self.corrupt])

    def summary(self, where: str) -> str:
        fix = ("push it again with --verify-remote" if where.startswith("s3://") else "pull or stage it again")
        return (f"{where} does not match its manifest ({len(self.missing)} missing, {len(self.extra)} extra, "
                f"{len(self.corrupt)} corrupt: listed above); {fix}")
