"""`python -m dlrm eval`: exact AUC of a checkpoint on a dataset's test split (one process).

The checkpoint carries its config, so only the checkpoint folder and (optionally) another
dataset are needed. A checkpoint saved by any number of ranks loads here (resharding).
"""
from __future__ import annotations

import argparse
import json
import math


from dlrm.io.checkpoint import (CheckpointCorrupt, Piece, first_non_finite, latest_checkpoint, load_checkpoint,
                                newer_complete, read_metadata)
from dlrm.io.storage import open_store
from dlrm.config import TrainConfig, from_dict
from dlrm.data.manifest import require_verified
from dlrm.data.spec import FeatureSpec
from dlrm.errors import UserError
from dlrm.metrics import auc_fields
from dlrm.modules.model import DLRM
from dlrm.training.optim import Optimizers


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoints", required=True, help="checkpoint folder (a run's checkpoints/ or s3://...)")
    p.add_argument("--name", help="checkpoint name (ckpt-000001000); default: the latest complete one")
    p.add_argument("--dataset", help="dataset folder; default: the one the checkpoint was trained on")
    p.add_argument("--max-batches", type=int, default=0, help="evaluate only this many test batches (0: all)")


def main(args) -> int:
    from dlrm.training.train import amp_dtype, evaluate, pick_device

    store = open_store(args.checkpoints)
    name = args.name or latest_checkpoint(args.checkpoints)
    if not name:
        raise UserError(f"{args.checkpoints}: no complete checkpoint (a checkpoint is complete once its metadata.json exists)")
    while True:
        try:
            meta, cfg, spec, model = _load(args, store, name)
            break
        except CheckpointCorrupt:
            # the latest, taken while the run goes on: rotation may remove it once a newer one is
            # complete; that one is what was asked for, not an error about the one gone
            newer = None if args.name else newer_complete(store, name)
            if newer is None:
                raise
            name = newer
    bad = first_non_finite({"embedding tables": model.sparse_arch.embedding.weight,
                            **{k: v for k, v in model.state_dict().items() if not k.startswith("sparse_arch.")}})
    if bad:
        raise UserError(f"{args.checkpoints}/{name}: {bad[0]} holds {bad[1]} non-finite values (NaN/inf) of {bad[2]}: "
                        f"the run diverged before this checkpoint; evaluate an earlier one (--name)")
    device = pick_device(cfg)
    model.to(device)
    auc, loss = evaluate(model, spec, cfg, device, amp_dtype(cfg, device))
    if not math.isfinite(loss):  # finite weights, yet NaN/inf scores: inputs the model overflows on
        raise UserError(f"{args.checkpoints}/{name}: the scores on {spec.root} test are not finite (loss {loss}); "
                        f"no AUC reported")
    print(json.dumps({"checkpoint": f"{args.checkpoints}/{name}", "step": meta["step"], **auc_fields(auc), "loss": loss},
                     allow_nan=False))
    return 0


def _load(args, store, name: str):
    """(metadata, config, feature spec, the whole model with the checkpoint's weights) of `name`."""
    meta = read_metadata(store, name)
    cfg = from_dict(TrainConfig, meta["config"])
    if args.dataset:
        cfg.data.dataset = args.dataset
    cfg.eval_max_batches = args.max_batches
    require_verified(cfg.data.dataset, cfg.data.verify)  # a pulled/staged copy must match its _manifest.json, as in train
    spec = FeatureSpec.load(cfg.data.dataset)
    spec.require_rows(["test"])
    from dlrm.data.identity import dataset_identity, feature_differences

    differences = feature_differences(meta, dataset_identity(spec, rows=False))
    if differences:  # the model's shapes would not fit (a traceback from load_state_dict)
        raise UserError(f"{spec.root} does not fit checkpoint {args.checkpoints}/{name}: {'; '.join(differences)}")
    model = DLRM(len(spec.numerical), spec.table_sizes, cfg.model, seed=cfg.seed, hotness=spec.table_hotness,
                 padded=bool(spec.padded))
    opt = Optimizers(model.dense_parameters(), [model.sparse_arch.embedding.weight], cfg.optim)
    pieces = [Piece(n, 0, rows, int(off)) for n, rows, off in
              zip(spec.categorical, spec.table_sizes, model.sparse_arch.offsets.tolist())]
    _, dense = load_checkpoint(args.checkpoints, name, weight=model.sparse_arch.embedding.weight.data,
                               row_state=opt.sparse.state_tensors(0), pieces=pieces)
    model.load_state_dict(dense["model"], strict=False)
    return meta, cfg, spec, model
