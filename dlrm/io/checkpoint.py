"""Checkpoints that outlive the cluster shape.

Layout under a store (a folder or s3://bucket/prefix), one folder per checkpoint:

    ckpt-000001000/rank-0.pt      this rank's embedding rows: a fused weight [R, D] + per-row optimizer
    ckpt-000001000/rank-1.pt      state, and the pieces it holds: (table, row_start, row_end, offset)
    ckpt-000001000/dense.pt       the replicated MLP weights and their optimizer state (rank 0)
    ckpt-000001000/metadata.json  step, data position, config, plan, every file's pieces: WRITTEN LAST

A checkpoint without metadata.json is incomplete (a kill landed while it was written) and is
never loaded. Because every file names the table rows it holds, a checkpoint saved with W ranks
loads under any other plan: each rank copies the overlap of its own pieces with the saved ones.

metadata.json records every file's size and sha256 (hashed as it is written, no second read;
each rank's digest reaches rank 0 through a collective: with one output folder per pod, rank 0
cannot read the other pods' files). Loading checks every file's size
first (a truncated shard, a half-deleted folder) and each file's hash as it is read (a bit
flip); either is a `CheckpointCorrupt`, which resume answers by falling back to an older
checkpoint. Rotation deletes an old checkpoint's metadata.json first, so a rotation killed
half-way never leaves a folder that still counts as complete.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dlrm.errors import UserError
from dlrm.io.fsutil import atomic_path
from dlrm.io.storage import open_store

METADATA = "metadata.json"
_NAME = re.compile(r"^ckpt-(\d{9})$")
_HASH_CHUNK = 8 << 20


class CheckpointCorrupt(UserError):
    """A checkpoint that does not verify: resume skips it, `dlrm eval` reports it."""


@dataclass(frozen=True)
class Piece:
    """Rows [start, end) of `table`, held at rows [offset, offset + end - start) of a fused weight."""

    table: str
    start: int
    end: int
    offset: int


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:09d}"


class _Hashing:
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, fh):
        self.fh, self.sha, self.size = fh, hashlib.sha256(), 0

    def write(self, b) -> int:
        self.sha.update(b)
        self.size += len(b)
        return self.fh.write(b)

    def flush(self) -> None:
        self.fh.flush()


def _save(obj, path: str | Path, name: str) -> dict:
    """torch.save through a Python file, so a failed write (a full disk) is an OSError naming `name`.
    Returns {"size", "sha256"} of the bytes written.

    Saving to a path, torch reports a failed write as RuntimeError('basic_ios::clear: iostream error').
    """
    try:
        with open(path, "wb") as fh:
            out = _Hashing(fh)
            torch.save(obj, out)
            fh.flush()
            os.fsync(fh.fileno())
        return {"size": out.size, "sha256": out.sha.hexdigest()}
    except RuntimeError as e:
        if isinstance(e.__context__, OSError):  # the write torch called failed
            raise OSError(e.__context__.errno, e.__context__.strerror, name) from None
        raise
    except OSError as e:
        raise OSError(e.errno, e.strerror, name) from None


def _put_torch(store, key: str, obj) -> dict:
    """Save `obj` under `key`; returns its {"size", "sha256"}."""
    local = store.local_path(key)
    if local is not None:  # save next to the target and rename: no second copy of a 16 GB file
        with atomic_path(local, fsync=False) as tmp:  # _save fsyncs as it closes the file
            digest = _save(obj, tmp, str(local))
        return digest
    with tempfile.TemporaryDirectory() as d:
        digest = _save(obj, Path(d) / "obj.pt", f"{Path(d) / 'obj.pt'} (staging {key} for upload)")
        store.put_file(key, Path(d) / "obj.pt")
    return digest


def _sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def _load_torch(store, key: str, tmpdir: str, expect: dict | None = None):
    """torch.load `key` after checking its sha256 against `expect` (when the checkpoint has one)."""
    local = store.local_path(key)
    if local is None:
        local = Path(tmpdir) / key.replace("/", "_")
        try:
            store.get_file(key, local)
        except FileNotFoundError:
            raise CheckpointCorrupt(f"{store.uri}/{key}: missing") from None
    if expect and _sha256(local) != expect["sha256"]:
        raise CheckpointCorrupt(f"{store.uri}/{key}: sha256 does not match metadata.json (the file changed "
                                f"or was damaged after it was written)")
    try:
        return torch.load(local, map_location="cpu", mmap=True, weights_only=True)
    except FileNotFoundError:
        raise CheckpointCorrupt(f"{store.uri}/{key}: missing") from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:  # torch's words for a damaged zip
        raise CheckpointCorrupt(f"{store.uri}/{key}: not a readable torch file ({str(e).splitlines()[0]})") from None


def read_metadata(store, name: str) -> dict:
    """A checkpoint's metadata.json, checked for the keys loading needs; CheckpointCorrupt otherwise."""
    where = f"{store.uri}/{name}/{METADATA}"
    try:
        meta = json.loads(store.get_bytes(f"{name}/{METADATA}"))
    except FileNotFoundError:
        raise CheckpointCorrupt(f"{where}: missing; the checkpoint is incomplete") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointCorrupt(f"{where}: not valid JSON (truncated?): {e}") from None
    need = {"step": int, "data": dict, "config": dict, "files": dict}
    for key, tp in need.items():
        if not isinstance(meta, dict) or not isinstance(meta.get(key), tp):
            raise CheckpointCorrupt(f"{where}: no valid {key!r} ({tp.__name__}); written by something else, or damaged")
    position = meta["data"]
    if not (isinstance(position.get("epoch"), int) and isinstance(position.get("position"), int)):
        raise CheckpointCorrupt(f"{where}: data.epoch and data.position must be integers, got {position}")
    for fname, pieces in meta["files"].items():
        try:
            [Piece(**p) for p in pieces]
        except TypeError:
            raise CheckpointCorrupt(f"{where}: files.{fname} is not a list of pieces (table, start, end, offset)") from None
    return meta


def verify_sizes(store, name: str, meta: dict) -> None:
    """Every file metadata.json lists is there with its recorded size: cheap (a stat or a HEAD per
    file) and done by every rank, so all agree on a truncated or half-deleted checkpoint."""
    for fname, digest in (meta.get("checksums") or {}).items():
        key = f"{name}/{fname}"
        try:
            size = store.size(key)
        except FileNotFoundError:
            raise CheckpointCorrupt(f"{store.uri}/{key}: missing (listed in {METADATA})") from None
        if size != digest.get("size"):
            raise CheckpointCorrupt(f"{store.uri}/{key}: {size} bytes, {METADATA} says {digest.get('size')} (truncated?)")


def complete_checkpoints(store) -> list[str]:
    """Names of complete checkpoints (metadata written), oldest first."""
    names = set()
    for key in store.list(""):
        parts = key.split("/")
        if len(parts) == 2 and parts[1] == METADATA and _NAME.match(parts[0]):
            names.add(parts[0])
    return sorted(names)


def newer_complete(store, name: str) -> str | None:
    """The newest complete checkpoint when `name` no longer is one and a newer one is: what a reader
    of the latest finds after rotation removed it mid-read (a run checkpointing as it is read)."""
    names = complete_checkpoints(store)
    return names[-1] if names and name not in names and names[-1] > name else None


def latest_checkpoint(uri: str) -> str | None:
    names = complete_checkpoints(open_store(uri))
    return names[-1] if names else None


def write_shard(store, name: str, rank: int, *, weight: torch.Tensor, row_state: dict[str, torch.Tensor],
                pieces: list[Piece]) -> dict:
    """This rank's rows (fused weight [R, D], per-row optimizer state) and the pieces they hold,
    as `name/rank-<rank>.pt`; its {"size", "sha256"}. A killed writer's temp file of the same
    key (a save of this step cut short before a resume) goes first, so none is left inside."""
    _drop_temp(store, name, f"rank-{rank}.pt")
    return _put_torch(store, f"{name}/rank-{rank}.pt", {
        "weight": weight.detach(),
        "row_state": {k: v.detach() for k, v in row_state.items()},
        "pieces": [asdict(p) for p in pieces],
    })


def write_dense(store, name: str, dense: dict) -> dict:
    """Rank 0's replicated state {"model", "optimizer"} as `name/dense.pt`; its {"size", "sha256"}.
    A stale metadata.json of this name (a checkpoint resume skipped) goes first: the folder must
    not count as complete while its files are being replaced."""
    if store.exists(f"{name}/{METADATA}"):
        store.delete(f"{name}/{METADATA}")
    _drop_temp(store, name, "dense.pt")
    return _put_torch(store, f"{name}/dense.pt", dense)


def commit(store, name: str, step: int, *, digests: dict[str, dict], pieces_by_rank: dict[int, list[Piece]],
           meta: dict, keep: int) -> None:
    """Rank 0, once every rank's file is durable: metadata.json (the checkpoint now counts), then
    files of this folder it does not list (temp files of killed writers, another world size's
    shards) and older checkpoints beyond `keep` go. `digests`: {file name: {"size", "sha256"}}."""
    record = dict(meta, step=step, world_size=len(pieces_by_rank), checksums=dict(digests), files={
        f"rank-{r}.pt": [asdict(p) for p in ps] for r, ps in sorted(pieces_by_rank.items())
    })
    store.put_bytes(f"{name}/{METADATA}", json.dumps(record, indent=1).encode())
    for key in store.list(name):
        if key.split("/", 1)[1] not in digests and key != f"{name}/{METADATA}":
            store.delete(key)
    _drop_temp(store, name, "")
    rotate(store, keep, newest=name)


def abandon(store, name: str) -> None:
    """Rank 0, after a save failed on some rank (every rank past its write): the half-written
    folder goes, so nothing of it is mistaken for a checkpoint or left to fill the disk."""
    store.delete(f"{name}/{METADATA}")
    store.delete(name)


def _drop_temp(store, name: str, fname: str) -> None:
    """Temp files of killed writers of `name/fname` (every file of `name` when fname is ""): a local
    folder's `.<file>.<random>.tmp` (S3 writes are atomic per object: nothing to drop there)."""
    folder = store.local_path(name)
    if folder is not None and folder.is_dir():
        for tmp in folder.glob(f".{fname}*.tmp"):
            tmp.unlink(missing_ok=True)


def save_checkpoint(uri: str, step: int, *, rank: int, weight: torch.Tensor, row_state: dict[str, torch.Tensor],
                    pieces_by_rank: dict[int, list[Piece]], dense: dict | None, meta: dict,
                    barrier=lambda: None, gather=lambda obj: [obj], keep: int = 2) -> str:
    """Every rank calls this; rank 0 (which must pass `dense`) writes metadata.json once every rank's
    file is written. `gather(obj)` returns every rank's `obj` in rank order (Runtime.all_gather_object).
    The trainer writes through dlrm.training.checkpointer (in the background); this is the same
    sequence in the caller's thread."""
    store = open_store(uri)
    name = checkpoint_name(step)
    digest = write_shard(store, name, rank, weight=weight, row_state=row_state, pieces=pieces_by_rank[rank])
    if rank == 0:
        dense_digest = write_dense(store, name, dense)
    # Every rank's file is in place before the metadata makes the checkpoint count; the digests
    # travel by collective, not through the store (a PyTorchJob's pods may each have their own /output).
    digests = gather(digest)
    if rank == 0:
        checksums = {f"rank-{r}.pt": digests[r] for r in sorted(pieces_by_rank)}
        checksums["dense.pt"] = dense_digest
        commit(store, name, step, digests=checksums, pieces_by_rank=pieces_by_rank, meta=meta, keep=keep)
    barrier()
    return name


def rotate(store, keep: int, newest: str) -> None:
    """Keep the `keep` newest complete checkpoints (0: all); drop older ones and older leftovers of
    killed saves. metadata.json goes first: a rotation killed half-way leaves an incomplete folder."""
    complete = [n for n in complete_checkpoints(store) if n <= newest]
    old = set(complete[:-keep]) if keep > 0 else set()
    # Leftovers: older folders without metadata (killed saves), and anything newer than what was
    # just saved: a timeline abandoned when resume skipped a checkpoint that did not verify.
    names = {key.split("/")[0] for key in store.list("")}
    old |= {n for n in names if _NAME.match(n) and (n > newest or (n < newest and n not in complete))}
    for n in sorted(old):
        store.delete(f"{n}/{METADATA}")
        store.delete(n)


def load_checkpoint(uri: str, name: str, *, weight: torch.Tensor, row_state: dict[str, torch.Tensor],
                    pieces: list[Piece]) -> tuple[dict, dict]:
    """Fill this rank's fused `weight` (and row state) from whatever pieces the checkpoint holds.

    Returns (metadata, dense). Raises UserError when a row this rank needs is in no saved file.
    """
    store = open_store(uri)
    meta = read_metadata(store, name)
    verify_sizes(store, name, meta)
    sums = meta.get("checksums") or {}  # absent in checkpoints written before checksums
    covered = {p: 0 for p in pieces}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for fname, saved in meta["files"].items():
            saved = [Piece(**p) for p in saved]
            overlaps = [(mine, s) for mine in pieces for s in saved
                        if mine.table == s.table and mine.start < s.end and s.start < mine.end]
            if not overlaps:
                continue
            blob = _load_torch(store, f"{name}/{fname}", tmp, sums.get(fname))
            for mine, s in overlaps:
                lo, hi = max(mine.start, s.start), min(mine.end, s.end)
                dst = slice(mine.offset + lo - mine.start, mine.offset + hi - mine.start)
                src = slice(s.offset + lo - s.start, s.offset + hi - s.start)
                weight[dst] = blob["weight"][src].to(weight.dtype)
                for k, v in row_state.items():
                    if k not in blob["row_state"]:
                        raise UserError(f"{uri}/{name}/{fname}: no optimizer state {k!r} (saved with another optimizer?)")
                    v[dst] = blob["row_state"][k][src].to(v.dtype)
                covered[mine] += hi - lo
            del blob
        # cloned: detached from the mmap'd file before tmp goes
        dense = torch.utils._pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t,
                                             _load_torch(store, f"{name}/dense.pt", tmp, sums.get("dense.pt")))
    for p, n in covered.items():
        if n != p.end - p.start:
            raise UserError(f"{uri}/{name}: rows {p.start}..{p.end} of table {p.table} are covered by "
                            f"{n} saved rows, expected {p.end - p.start}; the checkpoint does not hold this table")
    return meta, dense


def whole_tables(uri: str, name: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """A checkpoint's tables put back together {table: [rows, D]} from every rank's pieces, and its
    dense model state: for export, inspection, and comparing runs of different world sizes."""
    _, _, tables, dense = whole_state(uri, name)
    return {t: state["weight"] for t, state in tables.items()}, dense["model"]


def whole_state(uri: str, name: str | None = None) -> tuple[str, dict, dict[str, dict[str, torch.Tensor]], dict]:
    """Everything a checkpoint holds, independent of the world size that saved it: (name, metadata,
    {table: {"weight": [rows, D], <per-row optimizer state>: [rows, ...]}}, dense {"model", "optimizer"}).
    The newest complete checkpoint when `name` is None."""
    store = open_store(uri)
    name = name or (complete_checkpoints(store) or [None])[-1]
    if name is None:
        raise UserError(f"{uri}: no complete checkpoint")
    meta = read_metadata(store, name)
    verify_sizes(store, name, meta)
    sums = meta.get("checksums") or {}
    parts: dict[str, list] = {}
    clone = lambda t: t.clone() if isinstance(t, torch.Tensor) else t  # noqa: E731 - detached from the mmap'd file
    with tempfile.TemporaryDirectory() as tmp:
        for fname, pieces in meta["files"].items():
            blob = _load_torch(store, f"{name}/{fname}", tmp, sums.get(fname))
            named = {"weight": blob["weight"], **blob.get("row_state", {})}
            for p in map(lambda d: Piece(**d), pieces):
                rows = slice(p.offset, p.offset + p.end - p.start)
                parts.setdefault(p.table, []).append((p.start, {k: v[rows].clone() for k, v in named.items()}))
        dense = torch.utils._pytree.tree_map(clone, _load_torch(store, f"{name}/dense.pt", tmp, sums.get("dense.pt")))
    tables = {}
    for t, ps in parts.items():
        ps = [state for _, state in sorted(ps, key=lambda x: x[0])]
        tables[t] = {k: torch.cat([state[k] for state in ps]) for k in ps[0]}
    return name, meta, tables, dense


def first_non_finite(tensors: dict[str, torch.Tensor]) -> tuple[str, int, int] | None:
    """(name, non-finite count, size) of the first floating tensor holding NaN/inf, else None:
    a diverged checkpoint scores NaN, and an AUC over NaN scores means nothing."""
    for name, t in tensors.items():
        if torch.is_tensor(t) and t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                return name, bad, t.numel()
    return None
