"""A job's run identity (issues 19, 28): which run its pods continue, rendered into every training command.

    run_id(cfg)     # "dlrm-criteo-fl15-28327efa4656": the job's name and the hash of identity(cfg)
    identity(cfg)   # {"name": "dlrm-criteo-fl15", "dataset": "s3://...", "train.seed": 12345, ...}

The run is the experiment (what is trained, on what data, how, for how long), not its placement:
the same job on 2 nodes instead of 1, on a rebuilt image or in another namespace renders the same run
id, so its pods continue the run in its output from the checkpoint, resharded to the new world size
(the global batch, data.batch_size, is part of the identity; the per-rank batch follows from it).

The trainer continues the run in its output only when that run's recorded run id is this one (a pod
the operator restarted, the identical job applied again, or the same experiment resized) or when
--resume says so; otherwise it refuses to train over it, and so do render and submit where they can
read the output (launcher.output_check). train.run_id is always "" in a job config (JobConfig.validate).

Every field of JobConfig is classified below, IDENTITY or NOT_IDENTITY, by dotted path. An IDENTITY
entry may name a section (train.model: every field under it, a new one included: at worst a new run);
NOT_IDENTITY names each field. tests/test_run_identity.py walks the config tree and fails on a field no
entry covers, one two entries cover, or a NOT_IDENTITY entry that is no single field: a new field is
decided here before it ships.
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


def _each(section: str, names: str) -> tuple[str, ...]:
    return tuple(f"{section}.{name}" for name in names.split())


# Field by field: a new field outside IDENTITY's sections fails the test until it is decided here.
NOT_IDENTITY = (
    # Placement: how many pods and GPUs run it, where, on what. A checkpoint reshards to any world size
    # with the same global batch; the device and the planner's budget and sharding choose only where each
    # table lives; an image or its pull settings change the code that runs, not the experiment (run.json
    # records each start's image); the rest is how Kubernetes schedules, secures, retries and ends the pods.
    "nodes", "gpus_per_node", "max_gpus_per_node", "image", "namespace", "api", "train.device",
    *_each("train.dist", "device_memory memory_reserve sharding collective_timeout_s network_check"),
    *_each("resources", "cpu_per_gpu memory_per_gpu shm_per_gpu cpu_request cpu_limit memory_request memory_limit shm_size"),
    *_each("cluster", "gpu_product node_selector tolerations service_account efa extra_resources nccl_env env "
                      "image_pull_policy image_pull_secrets run_as_user run_as_group ttl_seconds_after_finished "
                      "backoff_limit active_deadline_seconds clean_pod_policy termination_grace_seconds fabric instance_type"),
    # The node's GPU network and the raw pod block: how the pods reach each other and where they run.
    *_each("cluster.fabric_options", "networks plugin_version daemon_image efa_hugepages rdma_resource rdma_count "
                                     "topology_file topology_configmap ib_hca"),
    *_each("cluster.pod", "labels annotations affinity topology_spread_constraints scheduler_name runtime_class_name "
                          "host_network dns_policy capabilities volumes mounts init_containers env env_from"),
    *_each("scheduling", "gang queue priority_class workload_priority min_available scheduler_name"),
    *_each("scheduling.topology", "level mode"),
    *_each("trainjob", "cluster_runtime schedule_timeout_seconds runtime_source"),
    # The admin bundle's site settings (launcher admin): who may submit, the runtime's name, the identity binding,
    # which images users may run on it.
    *_each("admin", "runtime user_groups gcp_service_account allowed_images"),
    # How data and output reach the pods, and the launcher's own table-size hint for its plan check: the
    # trainer reads the dataset at `dataset` whatever the storage, and `out` is where the run is, not what.
    *_each("storage", "mode claim stage_size stage_host_path mount_size output_claim output_path"),
    *_each("s3", "region endpoint_url secret role_arn"),
    "train_tables", "train.data.dataset", "train.out", "train.checkpoint_dir",
    # Watching and keeping the run: logging, evaluation and checkpoint cadence, uploads, the plot, the same
    # arithmetic compiled. None changes a weight (target_auc, above, is what makes an eval stop a run).
    "train.log_every", "train.eval_every", "train.evals_per_epoch", "train.eval_max_batches",
    "train.data.eval_batch_size", "train.checkpoint_every", "train.checkpoint_keep", "train.sync_every_s",
    "train.checkpoint_every_s", "train.checkpoint_async", "train.checkpoint_on_error",
    "train.plot", "train.compile",
    # How batches are read and checked: the same batches either way.
    "train.data.prefetch", "train.data.check_ids", "train.data.verify", "train.optim.schedule_check",
    # The identity's own inputs and outcome: train.resume asks to continue another run; run_id is this result.
    "train.resume", "train.run_id",
    # Not the training run: a preprocess job renders no run id; the export Job reads the finished run.
    "kind", "export", "export_table_dtype", "export_triton",
    *_each("preprocess", "image input output frequency_threshold vocabulary_days engine"),
    *_each("preprocess.spark", "spark_version driver_cores driver_memory executors executor_cores executor_memory service_account"),
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
