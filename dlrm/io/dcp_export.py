"""`python -m dlrm export-dcp`: a checkpoint, saved by any number of ranks, as a torch.distributed.checkpoint
(DCP) checkpoint, so the ecosystem's tools read our runs (`dcp.load`, `python -m
torch.distributed.checkpoint.format_utils dcp_to_torch_save DIR model.pt`, torchtitan-style loaders).

The DCP state dict, whole tables (one process writes it; no process group needed):

    tables.<table>.weight          [rows, D]     every rank's pieces of the table, in row order
    tables.<table>.<state>         [rows, ...]   the per-row optimizer state (row-wise Adagrad's sum)
    dense.model.<parameter>                      the replicated MLPs (and DCN cross layers)
    dense.optimizer                              the dense optimizer's state_dict (nested)
    step                                         the checkpoint's step (an int)

Our format stays the project's own (sha256 per file, fallback, resharding, S3; see
docs/architecture.md for why): this is a one-way export. The folder is written beside `--out` and
renamed into place, so a failed export leaves nothing that looks finished.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from dlrm.errors import UserError
from dlrm.io.fsutil import local_path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoints", required=True, help="checkpoint folder (a run's checkpoints/ or s3://...)")
    p.add_argument("--name", help="checkpoint name (ckpt-000001000); default: the latest complete one")
    p.add_argument("--out", required=True, help="the DCP checkpoint folder to write (new or empty)")


def dcp_state(uri: str, name: str | None = None) -> tuple[str, dict]:
    """(the checkpoint's name, its DCP state dict as the module doc lays it out)."""
    from dlrm.io.checkpoint import whole_state

    name, meta, tables, dense = whole_state(uri, name)
    state: dict = {"step": meta["step"]}
    for table, named in tables.items():
        for key, tensor in named.items():
            state[f"tables.{table}.{key}"] = tensor
    for key, tensor in dense["model"].items():
        state[f"dense.model.{key}"] = tensor
    state["dense.optimizer"] = dense["optimizer"]
    return name, state


def export_dcp(uri: str, out: str | os.PathLike, name: str | None = None) -> str:
    """Write checkpoint `name` (the latest when None) of `uri` as a DCP checkpoint at `out`; its name."""
    import torch.distributed.checkpoint as dcp

    out = local_path(out, "--out", "dlrm export-dcp", "export to a folder, then copy it (DCP's FileSystemWriter writes files)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out}: exists and is not an empty folder; give a new folder")
    name, state = dcp_state(uri, name)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".dcp-partial"))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # one process is the intent
            dcp.save(state, storage_writer=dcp.FileSystemWriter(str(stage)), no_dist=True)
        os.replace(stage, out)  # rename(2) replaces an empty folder
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return name


def main(args) -> int:
    name = export_dcp(args.checkpoints, args.out, args.name)
    print(f"exported {args.checkpoints}/{name} as a torch.distributed.checkpoint to {args.out}")
    return 0
