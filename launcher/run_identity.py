"""A job's run identity (issues 19, 28): which run its pods continue, rendered into every training command.

    run_id(cfg)     # "dlrm-criteo-fl15-3f9a61c0d2b7": the job's name and the hash of identity(cfg)
    identity(cfg)   # {"dataset": "s3://...", "name": ..., "train.seed": 12345, "train.model.embedding_dim": 128, ...}

The run is the experiment (what is trained, on what data, how, for how long), not its placement:
the same job on 2 nodes instead of 1, on a rebuilt image or in another namespace renders the same run
id, so its pods continue the run in its output from the checkpoint, resharded to the new world size
(the global batch, data.batch_size, is part of the identity; the per-rank batch follows from it).

The trainer continues the run in its output only when that run's recorded run id is this one (a pod
the operator restarted, the identical job applied again, or the same experiment resized) or when
--resume says so; otherwise it refuses to train over it, and so do render and submit where they can
read the output (launcher.output_check). train.run_id is always "" in a job config (JobConfig.validate).

Every field of JobConfig is classified below, IDENTITY or NOT_IDENTITY, by dotted path; an entry naming
a section covers every field under it. tests/test_run_identity.py walks the config tree and fails on
a field no entry covers, or one two entries cover: a new field is decided here before it ships.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json

from dlrm.config import to_dict

IDENTITY = (
    # Which run: the job's name is the run id's prefix (`render --name exp-b` is another experiment).
    "name",
    # The data, by where the job reads it; the trainer also compares the tables, hotness and row counts
    # with the checkpoint's before it loads one (dlrm.data.identity), whatever the path.
    "dataset",
    # The model: the weights' shapes and meaning.
    "train.model",
    # The optimizer and its learning-rate schedule: the saved optimizer state and every step's update.
    "train.optim.optimizer", "train.optim.lr", "train.optim.warmup_steps", "train.optim.decay_start_step",
    "train.optim.decay_steps", "train.optim.decay_power", "train.optim.decay_end_lr", "train.optim.adagrad_eps",
    "train.optim.adagrad_initial_accumulator",
    # Which samples each step sees: the seed (initial weights, batch order), the global batch (a rank's
    # slice of it is placement) and its shuffling.
    "train.seed", "train.data.batch_size", "train.data.shuffle_batches",
    # How long the run is and when it stops: its length and its AUC target.
    "train.epochs", "train.max_steps", "train.target_auc",
    # The arithmetic: another precision trains other weights.
    "train.amp", "train.tf32",
)

NOT_IDENTITY = (
    # Placement: how many pods and GPUs run it, where, on what. A checkpoint reshards to any world size
    # with the same global batch; the device and the planner's budget and sharding choose only where each
    # table lives; an image or its pull settings change the code that runs, not the experiment (run.json
    # records each start's image).
    "nodes", "gpus_per_node", "max_gpus_per_node", "image", "namespace", "api", "resources", "cluster",
    "scheduling", "trainjob", "train.device", "train.dist",
    # How data and output reach the pods, and the launcher's own table-size hint for its plan check: the
    # trainer reads the dataset at `dataset` whatever the storage, and `out` is where the run is, not what.
    "storage", "s3", "train_tables", "train.data.dataset", "train.out", "train.checkpoint_dir",
    # Watching and keeping the run: logging, evaluation and checkpoint cadence, uploads, the plot, the same
    # arithmetic compiled. None changes a weight (target_auc, above, is what makes an eval stop a run).
    "train.log_every", "train.eval_every", "train.evals_per_epoch", "train.eval_max_batches",
    "train.data.eval_batch_size", "train.checkpoint_every", "train.checkpoint_keep", "train.sync_every_s",
    "train.plot", "train.compile",
    # How batches are read and checked: the same batches either way.
    "train.data.prefetch", "train.data.check_ids", "train.data.verify", "train.optim.schedule_check",
    # The identity's own inputs and outcome: train.resume asks to continue another run; run_id is this result.
    "train.resume", "train.run_id",
    # Not the training run: a preprocess job renders no run id; the export Job reads the finished run.
    "kind", "preprocess", "export", "export_table_dtype", "export_triton",
)


def leaves(obj, prefix: str = ""):
    """(dotted path, value) of every field of a config dataclass, nested dataclasses walked."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from leaves(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value


def covers(entry: str, path: str) -> bool:
    return path == entry or path.startswith(entry + ".")


def identity(cfg) -> dict:
    """The job's run identity: {dotted path: value} of every JobConfig field IDENTITY holds."""
    return {path: value for path, value in leaves(cfg) if any(covers(e, path) for e in IDENTITY)}


def identity_sha256(cfg) -> str:
    return hashlib.sha256(json.dumps(identity(cfg), sort_keys=True).encode()).hexdigest()


def config_sha256(cfg) -> str:
    """The whole resolved JobConfig's hash, placement included: the jobs' dlrm-k8s.io/config-sha256
    annotation and run.json's job.config_sha256, a record of what was rendered (not the run's identity)."""
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()


def run_id(cfg) -> str:
    """The same for every pod and restart of this job, the identical job applied again and the same
    experiment at another placement; different for another name or any IDENTITY field. Pure."""
    return f"{cfg.name}-{identity_sha256(cfg)[:12]}"
