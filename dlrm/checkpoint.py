"""Checkpoints that outlive the cluster shape.

Layout under a store (a folder or s3://bucket/prefix), one folder per checkpoint:

    ckpt-000001000/rank-0.pt      this rank's embedding rows: a fused weight [R, D] + per-row optimizer
    ckpt-000001000/rank-1.pt      state, and the pieces it holds: (table, row_start, row_end, offset)
    ckpt-000001000/dense.pt       the replicated MLP weights and their optimizer state (rank 0)
    ckpt-000001000/metadata.json  step, data position, config, plan, every file's pieces: WRITTEN LAST

A checkpoint without metadata.json is incomplete (a kill landed while it was written) and is
never loaded. Because every file names the table rows it holds, a checkpoint saved with W ranks
loads under any other plan: each rank copies the overlap of its own pieces with the saved ones.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dlrm.errors import UserError
from dlrm.storage import open_store

METADATA = "metadata.json"
_NAME = re.compile(r"^ckpt-(\d{9})$")


@dataclass(frozen=True)
class Piece:
    """Rows [start, end) of `table`, held at rows [offset, offset + end - start) of a fused weight."""

    table: str
    start: int
    end: int
    offset: int


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:09d}"


def _save(obj, path: str | Path, name: str) -> None:
    """torch.save through a Python file, so a failed write (a full disk) is an OSError naming `name`.

    Saving to a path, torch reports a failed write as RuntimeError('basic_ios::clear: iostream error').
    """
    try:
        with open(path, "wb") as fh:
            torch.save(obj, fh)
    except RuntimeError as e:
        if isinstance(e.__context__, OSError):  # the write torch called failed
            raise OSError(e.__context__.errno, e.__context__.strerror, name) from None
        raise
    except OSError as e:
        raise OSError(e.errno, e.strerror, name) from None


def _put_torch(store, key: str, obj) -> None:
    local = store.local_path(key)
    if local is not None:  # save next to the target and rename: no second copy of a 16 GB file
        local.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=local.parent, prefix=f".{local.name}.", suffix=".tmp")
        os.close(fd)
        try:
            _save(obj, tmp, str(local))
            os.replace(tmp, local)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return
    with tempfile.TemporaryDirectory() as d:
        _save(obj, Path(d) / "obj.pt", f"{Path(d) / 'obj.pt'} (staging {key} for upload)")
        store.put_file(key, Path(d) / "obj.pt")


def _load_torch(store, key: str, tmpdir: str):
    local = store.local_path(key)
    if local is None:
        local = Path(tmpdir) / key.replace("/", "_")
        store.get_file(key, local)
    return torch.load(local, map_location="cpu", mmap=True, weights_only=True)


def complete_checkpoints(store) -> list[str]:
    """Names of complete checkpoints (metadata written), oldest first."""
    names = set()
    for key in store.list(""):
        parts = key.split("/")
        if len(parts) == 2 and parts[1] == METADATA and _NAME.match(parts[0]):
            names.add(parts[0])
    return sorted(names)


def latest_checkpoint(uri: str) -> str | None:
    names = complete_checkpoints(open_store(uri))
    return names[-1] if names else None


def save_checkpoint(uri: str, step: int, *, rank: int, weight: torch.Tensor, row_state: dict[str, torch.Tensor],
                    pieces_by_rank: dict[int, list[Piece]], dense: dict | None, meta: dict,
                    barrier=lambda: None, keep: int = 2) -> str:
    """Every rank calls this; rank 0 (which must pass `dense`) writes metadata.json after a barrier."""
    store = open_store(uri)
    name = checkpoint_name(step)
    _put_torch(store, f"{name}/rank-{rank}.pt", {
        "weight": weight.detach(),
        "row_state": {k: v.detach() for k, v in row_state.items()},
        "pieces": [asdict(p) for p in pieces_by_rank[rank]],
    })
    if rank == 0:
        _put_torch(store, f"{name}/dense.pt", dense)
    barrier()  # every rank's file is in place before the metadata makes the checkpoint count
    if rank == 0:
        record = dict(meta, step=step, world_size=len(pieces_by_rank), files={
            f"rank-{r}.pt": [asdict(p) for p in ps] for r, ps in sorted(pieces_by_rank.items())
        })
        store.put_bytes(f"{name}/{METADATA}", json.dumps(record, indent=1).encode())
        for old in complete_checkpoints(store)[:-keep] if keep > 0 else []:
            store.delete(old)
    barrier()
    return name


def load_checkpoint(uri: str, name: str, *, weight: torch.Tensor, row_state: dict[str, torch.Tensor],
                    pieces: list[Piece]) -> tuple[dict, dict]:
    """Fill this rank's fused `weight` (and row state) from whatever pieces the checkpoint holds.

    Returns (metadata, dense). Raises UserError when a row this rank needs is in no saved file.
    """
    store = open_store(uri)
    try:
        meta = json.loads(store.get_bytes(f"{name}/{METADATA}"))
    except (FileNotFoundError, KeyError):
        raise UserError(f"{uri}/{name}: no {METADATA}; the checkpoint is incomplete and cannot be loaded") from None
    covered = {p: 0 for p in pieces}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for fname, saved in meta["files"].items():
            saved = [Piece(**p) for p in saved]
            overlaps = [(mine, s) for mine in pieces for s in saved
                        if mine.table == s.table and mine.start < s.end and s.start < mine.end]
            if not overlaps:
                continue
            blob = _load_torch(store, f"{name}/{fname}", tmp)
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
                                             _load_torch(store, f"{name}/dense.pt", tmp))
    for p, n in covered.items():
        if n != p.end - p.start:
            raise UserError(f"{uri}/{name}: rows {p.start}..{p.end} of table {p.table} are covered by "
                            f"{n} saved rows, expected {p.end - p.start}; the checkpoint does not hold this table")
    return meta, dense


def whole_tables(uri: str, name: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """A checkpoint's tables put back together {table: [rows, D]} from every rank's pieces, and its
    dense model state: for export, inspection, and comparing runs of different world sizes."""
    store = open_store(uri)
    name = name or (complete_checkpoints(store) or [None])[-1]
    if name is None:
        raise UserError(f"{uri}: no complete checkpoint")
    meta = json.loads(store.get_bytes(f"{name}/{METADATA}"))
    parts: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fname, pieces in meta["files"].items():
            weight = _load_torch(store, f"{name}/{fname}", tmp)["weight"]
            for p in map(lambda d: Piece(**d), pieces):
                parts.setdefault(p.table, []).append((p.start, weight[p.offset: p.offset + p.end - p.start].clone()))
        dense = {k: v.clone() for k, v in _load_torch(store, f"{name}/dense.pt", tmp)["model"].items()}
    return {t: torch.cat([w for _, w in sorted(ps, key=lambda x: x[0])]) for t, ps in parts.items()}, dense
