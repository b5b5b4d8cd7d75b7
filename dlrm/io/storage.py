"""Where checkpoints and run outputs go: a local folder or an object store, behind one small API.

    store = open_store("runs/x/checkpoints")      # or "s3://bucket/prefix"
    store.put_bytes("ckpt-100/metadata.json", b"...")

Keys are '/'-separated and relative to the store's root. Writes are atomic per key (a reader
never sees half a file): local writes go through dlrm.io.fsutil.atomic_path; S3 PUTs are atomic.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from dlrm.errors import UserError
from dlrm.io.fsutil import atomic_path, atomic_write, is_s3_uri, location, too_large


class LocalStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / key

    def put_bytes(self, key: str, data: bytes) -> None:
        atomic_write(self._path(key), data)  # a full disk names the object, not the temp file

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        """Create `key` holding `data` unless it exists; False if it existed. Atomic: the data is
        written to a temp file first, then hard-linked to its name (link fails if the name exists),
        so no reader ever sees a half-written object."""
        path = self._path(key)
        self.put_bytes(f"{key}.{os.getpid()}.tmp", data)
        tmp = self._path(f"{key}.{os.getpid()}.tmp")
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def put_file(self, key: str, local_path: str | os.PathLike) -> None:
        with atomic_path(self._path(key), fsync=False) as tmp:
            shutil.copyfile(local_path, tmp)

    def get_bytes(self, key: str, limit: int | None = None) -> bytes:
        """The object whole; with `limit` (a record: run.json, a lock, a manifest) refused past that many
        bytes instead of read into memory. FileNotFoundError if there is none."""
        if limit is None:
            return self._path(key).read_bytes()
        with open(self._path(key), "rb") as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise UserError(too_large(self._path(key), limit, "record"))
        return data

    def get_file(self, key: str, local_path: str | os.PathLike) -> None:
        shutil.copyfile(self._path(key), local_path)

    def local_path(self, key: str) -> Path | None:
        """A path to read the object in place (no copy), where the store has one."""
        return self._path(key)

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def size(self, key: str) -> int:
        """The object's size in bytes; FileNotFoundError if there is none."""
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(str(path))
        return path.stat().st_size

    def list(self, prefix: str = "") -> list[str]:
        """Every key under `prefix` (recursively), sorted; temp files excluded."""
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return []
        if base.is_file():
            return [prefix]
        keys = []
        for p in base.rglob("*"):
            if p.is_file() and not p.name.endswith(".tmp"):
                keys.append(p.relative_to(self.root).as_posix())
        return sorted(keys)

    def delete(self, prefix: str) -> None:
        path = self._path(prefix)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def open_store(uri: str | os.PathLike):
    """A LocalStore for a path, an S3Store for s3://bucket/prefix."""
    uri = location(uri, "location")  # S3://b/x, s3:/b/x, gs://...: refused, not made a local folder
    if is_s3_uri(uri):
        from dlrm.io.storage_s3 import S3Store  # boto3 only where S3 is used

        return S3Store(uri)
    return LocalStore(uri)


def probe_writable(uri: str) -> None:
    """Write and delete a small object under `uri`; a one-line error naming it if either fails. Every
    command that writes to a destination after long work (a trainer's outputs, export, predict --out)
    calls this first, so a missing bucket or a denied write fails before the work, not after it."""
    import socket

    from dlrm.errors import UserError

    store = open_store(uri)
    key = f".dlrm-write-probe-{socket.gethostname()}-{os.getpid()}"
    try:
        store.put_bytes(key, b"probe")
        store.delete(key)
    except OSError as e:  # an OS error (exit 1), named as the output, not the probe file
        raise OSError(e.errno, f"cannot write here ({e.strerror or e}); checked before any work", uri) from None
    except UserError as e:
        raise UserError(f"{uri}: cannot write here: {e}") from None
