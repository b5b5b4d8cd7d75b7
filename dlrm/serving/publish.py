"""Where an export folder goes and comes from: a local folder or s3://bucket/prefix, never half of one.

    check_out(out)               before any work: refuse to replace what is not an earlier export
    tmp = staging(out, log)      a fresh local folder to build in; a killed export's leftovers are removed
    publish(tmp, out, log)       rename into place, or upload with manifest.json last
    with fetched(uri) as folder: a local copy of an export on S3, for predict

A folder is an export once manifest.json exists (dlrm.serving.folder). Locally the finished folder is
renamed onto --out. On S3 there is no rename: a marker object (PARTIAL_MARKER) is written first and the
old manifest deleted, so an interrupted upload is neither taken for an export nor, on the next run,
for someone else's data: it is replaced like an earlier export.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator

from dlrm.errors import UserError
from dlrm.io.fsutil import MAX_TEXT_BYTES, follow, is_s3_uri, is_uri
from dlrm.io.storage import open_store, probe_writable
from dlrm.serving.folder import MANIFEST, is_export

PARTIAL_MARKER = ".export-in-progress"


def _local(out: str | os.PathLike) -> Path:
    """A local --out (a symlink followed: the folder it names is replaced, not the link)."""
    if is_uri(str(out)) and not is_s3_uri(str(out)):
        raise UserError(f"--out {out}: export writes a local folder or s3://bucket/prefix")
    return follow(Path(out))


def check_out(out: str | os.PathLike) -> None:
    """--out may be new, empty or an earlier export (replaced); nothing else is overwritten."""
    if is_s3_uri(str(out)):
        keys = open_store(str(out)).list()
        if keys and MANIFEST not in keys and PARTIAL_MARKER not in keys:
            raise UserError(f"{out}: holds {len(keys)} objects and no {MANIFEST} (not an export); refusing to "
                            f"replace them")
        probe_writable(str(out))  # listing needs no write permission: a denied upload fails now, not after the export
        return
    out = _local(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise UserError(f"{out}: exists and is not a folder; --out must be a new folder or an earlier export")
    if out.is_dir() and any(out.iterdir()) and not is_export(out):
        raise UserError(f"{out}: exists, is not empty and holds no {MANIFEST} (not an export); "
                        f"refusing to replace it")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a container restarted with the same pid: the folder is a dead process's, not ours
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(out: Path, log=print) -> None:
    """Remove `.<name>.partial-PID` folders of killed exports of `out` (only that exact pattern, only
    dead PIDs); a `.<name>.old-PID` whose export was killed between its two renames is put back."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(partial|old)-(\d+)")
    if not out.parent.is_dir():
        return
    for p in sorted(out.parent.iterdir()):
        m = pattern.fullmatch(p.name)
        if not m or p.is_symlink() or not p.is_dir() or _alive(int(m[2])):
            continue
        if m[1] == "old" and not out.exists() and is_export(p):
            os.replace(p, out)
            log(f"export: restored {out} from {p.name}, left by an export (pid {m[2]}) killed while replacing it")
        else:
            shutil.rmtree(p)
            log(f"export: removed {p}, left by an export (pid {m[2]}) that was killed")


def staging(out: str | os.PathLike, log=print) -> Path:
    """An empty local folder to build the export in: beside a local --out (one rename publishes it),
    in the temp folder for S3."""
    if is_s3_uri(str(out)):
        return Path(tempfile.mkdtemp(prefix="dlrm-export-"))
    out = _local(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out, log)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    tmp.mkdir()
    return tmp


def publish(tmp: Path, out: str | os.PathLike, log=print) -> None:
    """Make the finished folder `tmp` the export at `out`; an earlier export there is replaced whole."""
    if is_s3_uri(str(out)):
        _upload(tmp, str(out), log)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    out = _local(out)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def discard(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)


def _upload(tmp: Path, uri: str, log) -> None:
    store = open_store(uri)
    before = set(store.list())
    store.put_bytes(PARTIAL_MARKER, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
    if MANIFEST in before:
        store.delete(MANIFEST)  # from here on the prefix is not an export until the new manifest lands
    files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
    for rel in files:
        if rel != MANIFEST:
            store.put_file(rel, tmp / rel)
    for key in sorted(before - set(files) - {PARTIAL_MARKER}):
        store.delete(key)  # an earlier export's files this one does not have (its triton/, a CUDA package)
    store.put_file(MANIFEST, tmp / MANIFEST)
    store.delete(PARTIAL_MARKER)
    log(f"export: uploaded {len(files)} files to {uri}, {MANIFEST} last")


@contextlib.contextmanager
def fetched(uri: str) -> Iterator[Path]:
    """A temporary local copy of the export at s3://...: its manifest and the files it lists (what else
    is under the prefix is not the export's); predict then verifies the copy against the manifest."""
    store = open_store(uri)
    try:
        raw = store.get_bytes(MANIFEST, limit=MAX_TEXT_BYTES)
    except FileNotFoundError:
        raise UserError(f"{uri}: no {MANIFEST}; not a finished `dlrm export` folder") from None
    try:
        files = json.loads(raw).get("files")
    except (ValueError, AttributeError):
        files = None  # load_manifest reports what is wrong with it, naming the file
    with tempfile.TemporaryDirectory(prefix="dlrm-model-") as tmp:
        (Path(tmp) / MANIFEST).write_bytes(raw)
        for key in files if isinstance(files, dict) else ():
            if is_uri(key) or key.startswith("/") or ".." in key.split("/"):
                raise UserError(f"{uri}/{MANIFEST}: file {key!r} is outside the export folder")
            (Path(tmp) / key).parent.mkdir(parents=True, exist_ok=True)
            try:
                store.get_file(key, Path(tmp) / key)
            except FileNotFoundError:
                raise UserError(f"{uri}/{key}: missing (listed in {uri}/{MANIFEST})") from None
        yield Path(tmp)
