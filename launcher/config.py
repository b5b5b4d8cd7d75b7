"""The job config: one typed tree describing a training (or preprocessing) job on Kubernetes.

    cfg = load_job_config("criteo-fl15", values=["my.yaml"], overrides={"nodes": 2} or ["train.epochs=2"])

Layers, later wins: the profile (`launcher/profiles/<name>.yaml`, or a path), each values file,
then overrides (a dict from CLI flags such as --nodes, then KEY=VALUE strings from --set). The
typing, unknown-key and per-file error machinery is `dlrm.config`'s; this module adds the fields
and JobConfig.validate, which runs the cross-field rules (launcher/config_rules.py) before anything is rendered.
"""
from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from dlrm import __version__
from dlrm.config import AtLeast1, NonEmpty, NonNegative, Range, TrainConfig, load_config, parse_bytes, parse_quantity  # noqa: F401 (API)
from dlrm.errors import ConfigError, UserError
from dlrm.io.fsutil import is_s3_uri, local_path, parse_s3_uri
from dlrm.modules.tables import TABLE_HOTNESS, TABLE_PRESETS
from launcher import config_rules as rules, fabrics, podblock
from launcher.config_rules import (GANG_SCHEDULERS, NAME_PLACEHOLDER, SECRET_ENV_NAME, _fail_unless,  # noqa: F401 (API)
                                   gang_scheduler, kueue_queue)
from launcher.resources import check_host_memory, check_resources, pod_resources  # noqa: F401 (API)

PROFILES_DIR = Path(__file__).with_name("profiles")
# The example buckets the profiles name: no cluster has them, so `submit` refuses a job still using them.
PLACEHOLDER_BUCKETS = ("dlrm-datasets", "dlrm-runs")


def placeholder_fields(c) -> list[str]:
    """The `field=value`s of a config that still point at a profile's example bucket (PLACEHOLDER_BUCKETS)."""
    fields = {"dataset": c.dataset, "train.out": c.train.out, "train.checkpoint_dir": c.train.checkpoint_dir}
    return [f"{k}={v}" for k, v in fields.items() if is_s3_uri(v) and parse_s3_uri(v)[0] in PLACEHOLDER_BUCKETS]

# Suffixes appended to `name` (the operator's pods and services are <name>-master-0 and
# <name>-worker-<i>; Spark's driver is <name>-driver). All must stay DNS-1035 labels.
FIXED_SUFFIXES = ("-config", "-dataset", "-master-0", "-driver", "-ui-svc", "-export")
# Kubernetes int32 fields (backoffLimit, ttlSecondsAfterFinished, uids...): the API refuses more.
Int32 = Annotated[int, Range(ge=0, le=2**31 - 1)]


@dataclass
class ResourcesConfig:
    # Per GPU of a node: each total left "" below is this figure x gpus_per_node (x 1 for
    # kind=preprocess, whose pod has no GPU), so a 1-GPU job asks for an eighth of an 8-GPU one.
    cpu_per_gpu: str = "2"  # CPU request per GPU (data loading threads of one rank)
    memory_per_gpu: str = "25Gi"  # memory request (and limit) per GPU
    shm_per_gpu: str = "8Gi"  # /dev/shm per GPU
    # Totals per pod; a value given here wins over the per-GPU figure.
    cpu_request: str = ""  # "" -> cpu_per_gpu x GPUs
    cpu_limit: str = ""  # "" = no CPU limit: a CFS quota throttles the data-loading threads
    memory_request: str = ""  # "" -> memory_per_gpu x GPUs
    memory_limit: str = ""  # "" -> the memory request: a pod over its request is the first evicted
    shm_size: str = ""  # /dev/shm (memory-backed emptyDir), counted against the memory limit; "" -> shm_per_gpu x GPUs


@dataclass
class StorageConfig:
    # How `dataset` reaches the pods:
    #   pvc      an existing PersistentVolumeClaim (`claim`); `dataset` is a folder inside it
    #   hostPath `dataset` is a folder on every node
    #   mount    `dataset` is s3://bucket/prefix, mounted read-only by the Mountpoint S3 CSI driver
    #   stage    `dataset` is s3://bucket/prefix, copied and verified by an init container first
    mode: Literal["pvc", "hostPath", "mount", "stage"] = "pvc"
    claim: str = ""
    stage_size: str = "1Ti"  # emptyDir sizeLimit of the staged copy
    stage_host_path: str = ""  # stage onto this node folder (local NVMe) instead of an emptyDir
    mount_size: str = "1Ti"  # the static PV's capacity: required by the API, ignored by the CSI driver
    output_claim: str = ""  # PVC for the run folder; "" -> emptyDir (lost with the pod: checkpoint to s3://)
    output_path: str = ""  # folder inside output_claim; "" -> runs/<name>


@dataclass
class S3Config:
    region: str = "us-east-1"
    endpoint_url: str = ""  # S3-compatible store (MinIO): AWS_ENDPOINT_URL and Mountpoint's endpoint-url
    # Credentials never appear in a manifest: either a Secret holding AWS_ACCESS_KEY_ID and
    # AWS_SECRET_ACCESS_KEY (envFrom), or IRSA: a ServiceAccount annotated with the role ARN.
    secret: str = ""
    role_arn: str = ""  # set -> render a ServiceAccount (cluster.service_account or <name>) with it


@dataclass
class TopologyConfig:
    # A level of the cluster's Kueue Topology: a node label such as cloud.google.com/gce-topology-block,
    # topology.k8s.aws/network-node-layer-3, oci.oraclecloud.com/rdma.local_block_id, kubernetes.io/hostname
    level: str = ""  # "" -> no topology request
    mode: Literal["required", "preferred"] = "required"  # required: wait for room in one domain; preferred: best effort


@dataclass
class SchedulingConfig:
    gang: Literal["none", "kueue", "volcano", "scheduler-plugins"] = "none"
    # Kueue's LocalQueue (gang none or kueue: label kueue.x-k8s.io/queue-name, Kueue admits the whole
    # job at once), or Volcano's queue (gang volcano).
    queue: str = ""
    priority_class: str = ""  # PriorityClass of the pods (and of the gang for volcano); Kueue's fallback priority
    # Kueue's WorkloadPriorityClass (label kueue.x-k8s.io/priority-class): the job's place in the queue
    # and what it may preempt, without changing the pods' own priority. Needs a Kueue queue.
    workload_priority: str = ""
    min_available: NonNegative = 0  # gang size; 0 -> every replica (nodes)
    # Kueue topology-aware scheduling: all pods within one domain of this node label (README "Cloud GPU fabrics")
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    # The training pods' schedulerName for gang volcano / scheduler-plugins ("" -> GANG_SCHEDULERS'): the
    # scheduler that reads the PodGroup. scheduler-plugins runs as a second scheduler whose profile name
    # its installer chose (the upstream chart's: scheduler-plugins-scheduler).
    scheduler_name: str = ""


@dataclass
class ClusterConfig:
    gpu_product: str = ""  # nodeSelector nvidia.com/gpu.product, e.g. NVIDIA-H100-80GB-HBM3
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)  # added to the nvidia.com/gpu one
    service_account: str = ""
    # The GPU network's pod wiring (launcher/fabrics.py): none, efa, gke-tcpx, gke-tcpxo, gke-rdma, azure-ib, oci-roce
    fabric: Literal[fabrics.FABRICS] = "none"
    instance_type: str = ""  # the fabric's node type (p5en.48xlarge, a3-megagpu-8g...); "" -> the preset's default
    fabric_options: fabrics.FabricOptions = field(default_factory=fabrics.FabricOptions)
    # fabric=efa: vpc.amazonaws.com/efa per pod for an instance type the preset does not list; 0 -> the listed type's count
    efa: Annotated[int, Range(ge=0, le=64)] = 0
    pod: podblock.PodConfig = field(default_factory=podblock.PodConfig)  # what the typed config does not model
    extra_resources: dict[str, Annotated[int, Range(ge=1, le=2**31 - 1)]] = field(default_factory=dict)  # e.g. rdma/hca_shared_devices_a: 1
    nccl_env: dict[str, str] = field(default_factory=dict)  # NCCL_* and FI_* settings
    env: dict[str, str] = field(default_factory=dict)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    image_pull_secrets: list[str] = field(default_factory=list)
    run_as_user: Annotated[int, Range(ge=1, le=2**31 - 1)] = 1000  # runAsNonRoot: never uid 0
    run_as_group: Int32 = 1000
    ttl_seconds_after_finished: Int32 = 7 * 24 * 3600
    backoff_limit: Int32 = 3
    active_deadline_seconds: Annotated[int, Range(ge=0, le=2**53)] = 0  # 0 -> no deadline
    clean_pod_policy: Literal["None", "Running", "All"] = "None"
    # The training pods' terminationGracePeriodSeconds: SIGTERM (preemption, eviction, a drained node)
    # to SIGKILL, the time the trainer has to write its checkpoint (Kubernetes' default, 30 s, is too short
    # for a sharded checkpoint to S3).
    termination_grace_seconds: Int32 = 120


@dataclass
class SparkConfig:
    spark_version: str = "3.5.1"
    driver_cores: Annotated[int, Range(ge=1, le=1024)] = 2
    driver_memory: str = "8g"  # Spark's own size format (JVM -Xmx), not a Kubernetes quantity
    executors: Annotated[int, Range(ge=1, le=10000)] = 8
    executor_cores: Annotated[int, Range(ge=1, le=1024)] = 4
    executor_memory: str = "16g"
    service_account: str = "spark"


@dataclass
class PreprocessConfig:
    image: str = f"dlrm-k8s-preprocess:{__version__}"
    input: str = ""  # raw Criteo day files: a folder on the storage, or s3://
    output: str = ""  # dataset folder to write: a folder on the storage, or s3://
    frequency_threshold: Annotated[int, Range(ge=0, le=2**31 - 1)] = 15
    # all: ids from every day, test day included (NVIDIA's rule and table sizes); train: training days only
    vocabulary_days: Literal["all", "train"] = "all"
    engine: Literal["local", "spark"] = "local"  # local: a batch/v1 Job; spark: a SparkApplication (Kubeflow Spark operator)
    spark: SparkConfig = field(default_factory=SparkConfig)


@dataclass
class TrainJobConfig:
    """Kubeflow Trainer v2 (`api: trainjob`): which training runtime the TrainJob references."""
    # "" -> a namespaced TrainingRuntime named after the job, rendered with it and holding our pod
    # template (security context, volumes, shm, tolerations, staging init container, EFA, gang
    # policy, restarts). A name -> that existing ClusterTrainingRuntime (e.g. the stock
    # torch-distributed), our pod settings applied through the TrainJob's runtime patches.
    cluster_runtime: str = ""
    schedule_timeout_seconds: NonNegative = 60  # scheduling.gang=scheduler-plugins: the coscheduling PodGroup's timeout
    # What cluster_runtime is: "stock" (e.g. torch-distributed): our whole pod goes in through runtime
    # patches, so staging and gang policies are refused; "admin": a dlrm runtime of the admin's bundle
    # (`python -m launcher admin`) that holds our pod template, so the TrainJob carries only what varies
    # per job (image, command, args, env, resources, the config, dataset and output volumes).
    runtime_source: Literal["stock", "admin"] = "stock"


@dataclass
class AdminConfig:
    """`python -m launcher admin` (launcher/admin.py): the cluster admin's bundle for a site values file."""
    runtime: str = "dlrm"  # the ClusterTrainingRuntime's name: users set trainjob.cluster_runtime to it
    # Who may submit TrainJobs in `namespace` (the RoleBinding's subjects, kind Group).
    user_groups: list[str] = field(default_factory=lambda: ["dlrm-users"])
    # GKE workload identity: the pods' ServiceAccount gets iam.gke.io/gcp-service-account (s3.role_arn: IRSA's).
    gcp_service_account: str = ""
    # Images users' TrainJobs may run on the runtime besides its own `image` (launcher/admin_policy.py): an
    # entry ending in / : or @ is a prefix, any other one exact image. Empty: only the runtime's image.
    allowed_images: list[str] = field(default_factory=list)


@dataclass
class JobConfig:
    kind: Literal["train", "preprocess"] = "train"
    # Which job API trains: the training operator v1's PyTorchJob, or Kubeflow Trainer v2's TrainJob.
    api: Literal["pytorchjob", "trainjob"] = "pytorchjob"
    name: NonEmpty = "dlrm"
    namespace: NonEmpty = "default"
    image: NonEmpty = f"dlrm-k8s-train:{__version__}"
    nodes: Annotated[int, Range(ge=1, le=10000)] = 1
    gpus_per_node: AtLeast1 = 8  # at most max_gpus_per_node
    max_gpus_per_node: Annotated[int, Range(ge=1, le=64)] = 8  # GPUs of the node type
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    dataset: str = ""  # see storage.mode
    # Embedding table sizes for the plan check when the dataset's feature_spec.yaml is not on
    # this machine: a TABLE_PRESETS name or the list of cardinalities.
    train_tables: str | list[int] = ""
    train: TrainConfig = field(default_factory=TrainConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    s3: S3Config = field(default_factory=S3Config)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    scheduling: SchedulingConfig = field(default_factory=SchedulingConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    trainjob: TrainJobConfig = field(default_factory=TrainJobConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    # After training, a batch/v1 Job runs `dlrm export` of the final checkpoint into <output>/model
    # (needs storage.output_claim: it reads the run from the same claim). See manifests/exportjob.yaml.j2.
    export: bool = False
    export_table_dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    export_triton: bool = True  # also write <output>/model/triton, a Triton model repository

    def __post_init__(self) -> None:
        # Filled in as the config is built, so everything downstream (the rendered ConfigMap, the
        # output annotation, the config hash) sees the job's actual output, never the template.
        braces = re.findall(r"\{[^{}]*\}", self.train.out)
        _fail_unless(all(b == NAME_PLACEHOLDER for b in braces),
                     f"train.out {self.train.out!r}: the only placeholder is {NAME_PLACEHOLDER} (the job's name), "
                     f"got {', '.join(b for b in braces if b != NAME_PLACEHOLDER)}")
        self.train.out = self.train.out.replace(NAME_PLACEHOLDER, self.name)

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def suffixes(self) -> list[str]:
        """Every suffix appended to `name` for this job; the longest bounds the name's length."""
        if self.api == "trainjob":  # JobSet's pods: <name>-node-0-<node rank>, also their hostnames
            return list(FIXED_SUFFIXES) + [f"-node-0-{self.nodes - 1}"]
        return list(FIXED_SUFFIXES) + ([f"-worker-{self.nodes - 2}"] if self.nodes > 1 else [])

    def validate(self) -> None:
        """Cross-field checks before rendering; each message names the fields and their values."""
        self.train.validate()
        _fail_unless(not self.train.run_id,
                     f"train.run_id={self.train.run_id!r}: a job's run id is set by the launcher (the job's name and "
                     f"config hash, so a restarted pod continues its own run); to continue an earlier run, pass --resume")
        rules.check_choices(self)
        rules.check_names(self)
        check_resources(self)
        fabrics.check(self)
        podblock.check(self)
        rules.check_storage(self)
        if self.kind == "train" and self.api == "trainjob":
            rules.check_trainjob(self)


def table_hotness(c: JobConfig) -> list[int] | None:
    """Ids per row of each table when `train_tables` names a multi-hot preset (mlperf-dcnv2); None: one-hot."""
    return list(TABLE_HOTNESS[c.train_tables]) if isinstance(c.train_tables, str) and c.train_tables in TABLE_HOTNESS else None


def table_sizes(c: JobConfig) -> list[int] | None:
    """The embedding table sizes `train_tables` declares (a preset name or cardinalities); None if unset.

    Nothing on this machine is consulted: a folder that happens to be at the dataset's path says
    nothing about the cluster's copy. A dataset's own feature spec is read only when given
    explicitly (`--feature-spec FILE|s3://...`, see launcher.cli_render).
    """
    if isinstance(c.train_tables, list):
        _fail_unless(bool(c.train_tables) and all(n >= 1 for n in c.train_tables),
                     f"train_tables must list positive cardinalities, got {c.train_tables}")
        return list(c.train_tables)
    if c.train_tables:
        _fail_unless(c.train_tables in TABLE_PRESETS,
                     f"train_tables {c.train_tables!r} is not a known dataset (known: {', '.join(sorted(TABLE_PRESETS))}); "
                     f"or give the list of cardinalities, or --feature-spec FILE")
        return list(TABLE_PRESETS[c.train_tables])
    return None


def check_plan(c: JobConfig, tables: list[int] | None = None, hotness: list[int] | None = None) -> None:
    """The embedding tables (`tables` with their `hotness`, from a declared feature spec; else
    train_tables) must fit nodes x gpus_per_node GPUs, or the job dies after scheduling."""
    sizes = tables if tables is not None else table_sizes(c)
    _fail_unless(sizes is not None,
                 f"cannot check the embedding plan for dataset {c.dataset!r}: set train_tables to one of "
                 f"{', '.join(sorted(TABLE_PRESETS))} or a list of cardinalities, or pass --feature-spec FILE|s3://.../feature_spec.yaml")
    try:
        from dlrm.dist.plan import plan_for_config
    except ImportError as e:  # only while dlrm.dist.plan is being written; a broken import inside it still fails
        if e.name not in ("dlrm.dist", "dlrm.dist.plan"):
            raise
        warnings.warn("dlrm.dist.plan is missing: the embedding plan was not checked", stacklevel=2)
        return
    t = c.train
    try:
        plan = plan_for_config(t, sizes, None, c.world_size, hotness=table_hotness(c) if tables is None else hotness)
    except UserError as e:
        raise ConfigError(f"nodes={c.nodes} x gpus_per_node={c.gpus_per_node} ({c.world_size} ranks, "
                          f"train.dist.device_memory={t.dist.device_memory}): {e}") from None
    check_host_memory(c, plan)


def profile_path(profile: str) -> Path:
    """A profile name (launcher/profiles/<name>.yaml) or a path to a YAML file."""
    if profile.endswith((".yaml", ".yml")) or "/" in profile:
        return local_path(profile, "--profile", "the launcher", "download it first", what="reads a profile name or a local .yaml file")
    path = PROFILES_DIR / f"{profile}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown profile {profile!r} (known: {', '.join(known)}; or give a path to a .yaml file)")
    return path


def load_job_config(profile: str, values: list[str] = (), overrides: dict | list = ()) -> JobConfig:
    """Profile <- values files <- overrides (a dict of fields, or KEY=VALUE strings), validated."""
    if isinstance(overrides, dict):
        # JSON is YAML, so each value round-trips with its type through dlrm.config.parse_override.
        overrides = [f"{k}={json.dumps(v)}" for k, v in overrides.items() if v is not None]
    return load_config(JobConfig, files=[profile_path(profile), *values], overrides=list(overrides))
