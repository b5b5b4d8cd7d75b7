"""One typed config tree for training, loaded from YAML and overridden from the command line.

    cfg = load_config(TrainConfig, files=["profile.yaml"], overrides=["optim.lr=0.5"])

Unknown keys, wrong types and bad values are `ConfigError`s that name the key path (and the
file it came from), the value and what was expected. The same machinery types the launcher's
job config. A field says what it accepts in its annotation, checked once where the value enters:

    lr: Annotated[float, Range(gt=0)] = 24.0        # every float is also finite: .inf/.nan refused
    seed: Annotated[int, Range(ge=0, le=2**63 - 1)]
    bottom_mlp: Annotated[list[AtLeast1], Length(min=1)]
    interaction: Literal["dot", "cat", "dcn"] = "dot"
    # dcn (DLRM-DCNv2, MLPerf's): cross layers over [dense, sparse], each U [N, r] V [r, N]
    dcn_num_layers: AtLeast1 = 3
    dcn_low_rank_dim: AtLeast1 = 512
    device_memory: Annotated[str, ByteSize()] = "80Gi"

`from_dict` checks them as it builds the dataclasses (so the message names the file or override
that brought the value); `check_values(obj)` checks an object built or edited in code, and every
config's `validate()` starts with it before its cross-field checks.

The machinery (loading, overrides, checks, sizes) is dlrm.typed; this module is the tree itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from dlrm.errors import ConfigError
from dlrm.io.fsutil import location
# The machinery, re-exported: callers type and load configs through dlrm.config.
from dlrm.typed import (AtLeast1, ByteSize, Length, NonEmpty, NonNegative, Positive, Range,  # noqa: F401
                        check_values, deep_merge, dump_yaml, from_dict, load_config, parse_bytes, parse_override,
                        parse_quantity, read_yaml, to_dict)

# ---------------------------------------------------------------------------------------------
# The training config. Defaults are NVIDIA DeepLearningExamples' for Criteo 1TB.


@dataclass
class ModelConfig:
    embedding_dim: AtLeast1 = 128
    bottom_mlp: Annotated[list[AtLeast1], Length(min=1)] = field(default_factory=lambda: [512, 256, 128])
    top_mlp: list[AtLeast1] = field(default_factory=lambda: [1024, 1024, 512, 256])  # a last layer to 1 is added
    interaction: Literal["dot", "cat", "dcn"] = "dot"
    # dcn (DLRM-DCNv2, MLPerf's): cross layers over [dense, sparse], each U [N, r] V [r, N]
    dcn_num_layers: AtLeast1 = 3
    dcn_low_rank_dim: AtLeast1 = 512
    # Used only when no dataset is given (benchmarks): 13 dense features, these cardinalities.
    num_numerical: NonNegative = 13


@dataclass
class OptimConfig:
    optimizer: Literal["sgd", "adagrad"] = "sgd"
    lr: Positive = 24.0
    warmup_steps: NonNegative = 8000
    decay_start_step: NonNegative = 48000
    decay_steps: NonNegative = 24000  # 0: no decay
    decay_power: Positive = 2.0
    decay_end_lr: Annotated[float, Range(ge=0)] = 0.0
    adagrad_eps: Positive = 1e-8
    adagrad_initial_accumulator: Annotated[float, Range(ge=0)] = 0.0
    # A schedule that does not fit the run's step count (a run shorter than half its warmup):
    # refuse to start (error), or say so and train anyway (warn). See dlrm.training.schedule.check_schedule.
    schedule_check: Literal["error", "warn"] = "error"


@dataclass
class DataConfig:
    dataset: str = ""  # folder holding feature_spec.yaml
    batch_size: AtLeast1 = 65536
    eval_batch_size: AtLeast1 = 65536
    shuffle_batches: bool = True  # shuffle batch order each epoch, seeded
    prefetch: Annotated[int, Range(ge=0, le=64)] = 2  # batches read ahead in a background thread (each in memory)
    check_ids: bool = True  # verify every id < cardinality as batches are read
    # How a folder holding _manifest.json is checked before training (dlrm.data.manifest.require_verified):
    # auto: its .verified record, else every file's sha256; full: every sha256; sizes: file sizes only; off.
    verify: Literal["auto", "full", "sizes", "off"] = "auto"


@dataclass
class DistConfig:
    device_memory: Annotated[str, ByteSize()] = "80Gi"  # per rank; the planner's budget
    memory_reserve: Annotated[str, ByteSize()] = "4Gi"  # kept free per rank for activations, allocator slack, CUDA context
    sharding: Literal["auto", "table", "row"] = "auto"  # row: split every table by rows over all ranks
    collective_timeout_s: AtLeast1 = 600  # a hung collective fails the job after this long
    # The network check at the start of a distributed run (dlrm/dist/netcheck.py): fail: a fabric preset
    # with NCCL on TCP sockets stops the run; warn: it is a warning; skip: no check (no transport, no bandwidth).
    # (Not on/off: YAML reads those as booleans.)
    network_check: Literal["fail", "warn", "skip"] = "fail"


@dataclass
class TrainConfig:
    seed: Annotated[int, Range(ge=0, le=2**63 - 1)] = 12345  # torch and numpy take any value in this range
    out: NonEmpty = "runs/default"  # the run's output: a folder or s3://bucket/prefix/run (dlrm.training.runlog)
    epochs: AtLeast1 = 1
    max_steps: NonNegative = 0  # 0: run the epochs out
    log_every: AtLeast1 = 100
    eval_every: NonNegative = 0  # 0: only at the end (or evals_per_epoch)
    # MLPerf's rule: evaluate every epoch_batches // evals_per_epoch steps (20: every 1/20 epoch);
    # 0: off. Exclusive with eval_every.
    evals_per_epoch: Annotated[int, Range(ge=0, le=10000)] = 0
    eval_max_batches: NonNegative = 0  # 0: the whole test split
    checkpoint_every: NonNegative = 0  # 0: only at the end
    # Also a checkpoint once this many seconds passed since the last one (rank 0's clock, agreed at a
    # check-in: within 10 steps); 0: steps only. Bounds the work a kill loses on any hardware.
    checkpoint_every_s: Annotated[float, Range(ge=0)] = 0.0
    checkpoint_keep: NonNegative = 2  # 0: keep every checkpoint
    # Periodic checkpoints written by a background thread from a host copy while training goes on
    # (dlrm.training.checkpointer); false, or a host without room for the copy: written in place.
    checkpoint_async: bool = True
    # A periodic checkpoint that fails (a full disk, an S3 error; reported on the next progress
    # line, its files removed): retry takes one again at once, stop ends the run with the error.
    checkpoint_on_error: Literal["retry", "stop"] = "retry"
    checkpoint_dir: str = ""  # "" -> <out>/checkpoints; s3://bucket/prefix also works
    sync_every_s: Annotated[float, Range(ge=0)] = 300.0  # out=s3://...: upload metrics and events at least this often (and at each eval)
    resume: bool = False
    # Which run `out` belongs to (dlrm.training.lifecycle): a folder holding a run with another id is
    # refused unless `resume`; "" starts a new run. The launcher renders it from the job name and config.
    run_id: str = ""
    target_auc: Annotated[float, Range(ge=0, le=1)] = 0.0  # stop once eval AUC reaches it; 0 disables
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA and on CPUs with AMX, else none (printed at start)
    tf32: bool = True
    compile: bool = False  # torch.compile the dense, interaction and over arches (worth it on GPUs)
    plot: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def validate(self) -> None:
        """Every field against its annotation, then the cross-field checks; values in the message."""
        check_values(self)
        for name in ("out", "checkpoint_dir"):  # S3://b, s3:/b, gs://b would become local folders
            location(getattr(self, name), name)
        m = self.model
        if m.interaction == "dot" and m.bottom_mlp[-1] != m.embedding_dim:
            raise ConfigError(f"dot interaction needs model.bottom_mlp[-1] == model.embedding_dim, "
                              f"got {m.bottom_mlp[-1]} and {m.embedding_dim}")
        if self.eval_every and self.evals_per_epoch:
            raise ConfigError(f"eval_every ({self.eval_every}) and evals_per_epoch ({self.evals_per_epoch}) both set: "
                              f"choose one (steps, or evaluations per epoch)")
        if parse_bytes(self.dist.memory_reserve) >= parse_bytes(self.dist.device_memory):
            raise ConfigError(f"dist.memory_reserve ({self.dist.memory_reserve}) must be less than "
                              f"dist.device_memory ({self.dist.device_memory})")


