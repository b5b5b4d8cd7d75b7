"""The job config: one typed tree describing a training (or preprocessing) job on Kubernetes.

    cfg = load_job_config("criteo-fl15", values=["my.yaml"], overrides={"nodes": 2} or ["train.epochs=2"])

Layers, later wins: the profile (`launcher/profiles/<name>.yaml`, or a path), each values file,
then overrides (a dict from CLI flags such as --nodes, then KEY=VALUE strings from --set). The
typing, unknown-key and per-file error machinery is `dlrm.config`'s; this module adds the fields
and the cross-field checks that must pass before anything is rendered.
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
from dlrm.io.fsutil import is_s3_uri, is_uri, local_path, parse_s3_uri
from dlrm.io.s3_settings import check_endpoint
from dlrm.modules.tables import TABLE_HOTNESS, TABLE_PRESETS
from launcher import fabrics, names, podblock
from launcher.command import OUTPUT_MOUNT, train_out
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
# Variables whose value is a credential: rendered into a pod spec, anyone who can read the job reads it.
SECRET_ENV_NAME = re.compile(r"^AWS_ACCESS_KEY_ID$|(^|_)(SECRET|SECRET_ACCESS_KEY|SESSION_TOKEN|TOKEN|PASSWORD|API_KEY)$", re.I)
# train.out may hold the job's name, so one profile's experiments (render --name exp-b) each get their own run output.
NAME_PLACEHOLDER = "{name}"


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


# The scheduler each gang needs the pods to name, by default (docs/trainjob.md, "Gang scheduling").
GANG_SCHEDULERS = {"volcano": "volcano", "scheduler-plugins": "scheduler-plugins-scheduler"}


def gang_scheduler(c) -> str:
    """The training pods' schedulerName ("" for the default scheduler: gang none or kueue)."""
    return (c.scheduling.scheduler_name or GANG_SCHEDULERS[c.scheduling.gang]) if c.scheduling.gang in GANG_SCHEDULERS else ""


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
        _check_choices(self)
        _check_names(self)
        check_resources(self)
        fabrics.check(self)
        podblock.check(self)
        _check_storage(self)
        if self.kind == "train" and self.api == "trainjob":
            _check_trainjob(self)


def _fail_unless(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _check_choices(c: JobConfig) -> None:
    """Cross-field rules; each field's own range and choices were checked by the loader (its annotation)."""
    _fail_unless(c.gpus_per_node <= c.max_gpus_per_node,
                 f"gpus_per_node must be between 1 and max_gpus_per_node={c.max_gpus_per_node}, got {c.gpus_per_node}")
    _fail_unless(c.scheduling.min_available <= c.nodes,
                 f"scheduling.min_available={c.scheduling.min_available} exceeds nodes={c.nodes}")
    _fail_unless(c.scheduling.gang != "kueue" or bool(c.scheduling.queue),
                 "scheduling.gang=kueue needs scheduling.queue (the LocalQueue name)")
    _fail_unless(c.scheduling.gang != "scheduler-plugins" or not c.scheduling.queue,
                 f"scheduling.queue={c.scheduling.queue} with scheduling.gang=scheduler-plugins: its PodGroup has no queue, so "
                 f"the job would run outside it; leave scheduling.queue empty, or use gang=kueue (a Kueue LocalQueue) or "
                 f"gang=volcano (a Volcano queue)")
    _fail_unless(not c.scheduling.min_available or c.scheduling.gang in GANG_SCHEDULERS,
                 f"scheduling.min_available={c.scheduling.min_available} is a Volcano or scheduler-plugins PodGroup's size, "
                 f"got gang={c.scheduling.gang}: nothing would read it (Kueue admits the whole job); leave it 0")
    _fail_unless(not c.scheduling.scheduler_name or c.scheduling.gang in GANG_SCHEDULERS,
                 f"scheduling.scheduler_name={c.scheduling.scheduler_name} is for gang volcano or scheduler-plugins "
                 f"(the scheduler that reads their PodGroup), got gang={c.scheduling.gang}")
    _fail_unless(not c.scheduling.workload_priority or bool(kueue_queue(c)),
                 f"scheduling.workload_priority={c.scheduling.workload_priority} is Kueue's WorkloadPriorityClass: it needs "
                 f"a Kueue queue (scheduling.queue, with scheduling.gang none or kueue; got gang={c.scheduling.gang}, "
                 f"queue={c.scheduling.queue!r})")
    _fail_unless(not kueue_queue(c) or c.kind == "train" or c.preprocess.engine == "local",
                 f"scheduling.queue={c.scheduling.queue}: Kueue does not manage a SparkApplication (preprocess.engine=spark), "
                 f"so the job would run outside the queue; use preprocess.engine=local, or leave scheduling.queue empty")
    for section, env in (("cluster.env", c.cluster.env), ("cluster.nccl_env", c.cluster.nccl_env)):
        for key in env:
            names.check_name(f"{section} key", key, names.ENV_NAME)
            _fail_unless(key not in RESERVED_ENV, f"{section}: {key} is set by the job controller for torchrun; it cannot be overridden")
            _fail_unless(not SECRET_ENV_NAME.search(key),
                         f"{section}: {key} holds a credential, which would be stored in plain text in the job; "
                         f"put it in a Secret and set s3.secret (or use s3.role_arn)")
    for key in c.cluster.extra_resources:
        names.check_key("cluster.extra_resources key", key, need_prefix=True)
    if c.scheduling.topology.level:  # Kueue's TAS reads the pod sets' annotation only on a job it admits
        names.check_key("scheduling.topology.level", c.scheduling.topology.level)
        _fail_unless(bool(kueue_queue(c)), f"scheduling.topology.level={c.scheduling.topology.level} is Kueue's "
                     f"topology-aware scheduling: it needs a Kueue queue (scheduling.queue, with scheduling.gang none or kueue)")


# Set by the job controllers (the training operator, Trainer's torch plugin) in the training container.
RESERVED_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "PET_NNODES", "PET_NPROC_PER_NODE",
                "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT")


def kueue_queue(c: JobConfig) -> str:
    """The Kueue LocalQueue the job is submitted to ("" when none): scheduling.queue, unless it is Volcano's."""
    return c.scheduling.queue if c.scheduling.gang in ("none", "kueue") else ""


def _check_trainjob(c: JobConfig) -> None:
    """What a TrainJob cannot express is refused here, with the reason and the way out."""
    t, where = c.trainjob, "api=trainjob"
    names.check_name("trainjob.cluster_runtime", t.cluster_runtime, names.SUBDOMAIN, optional=True)
    _fail_unless(c.cluster.clean_pod_policy == "None",
                 f"cluster.clean_pod_policy={c.cluster.clean_pod_policy} has no TrainJob equivalent ({where}): JobSet keeps "
                 f"finished pods until cluster.ttl_seconds_after_finished removes the JobSet; leave it None")
    _fail_unless(c.scheduling.min_available in (0, c.nodes),
                 f"scheduling.min_available={c.scheduling.min_available} cannot be expressed ({where}): Trainer's gang "
                 f"policies always require every node (PodGroup minMember = numNodes); leave it 0")
    _fail_unless(t.runtime_source == "stock" or bool(t.cluster_runtime),
                 f"trainjob.runtime_source={t.runtime_source} says what trainjob.cluster_runtime is, which is empty: set it to "
                 f"the admin bundle's runtime (admin.runtime, `python -m launcher admin`)")
    if not t.cluster_runtime:
        return
    runtime = f"trainjob.cluster_runtime={t.cluster_runtime}"
    _fail_unless(not c.scheduling.priority_class,
                 f"scheduling.priority_class cannot be set through a runtime patch of {runtime}: "
                 f"leave trainjob.cluster_runtime empty, or use a runtime whose pod template sets it")
    if t.runtime_source == "admin":  # the admin's runtime holds the stage init container, the gang policy and the fabric
        return
    # A runtime patch may set volumes, mounts, security contexts, node selector, tolerations, pull
    # secrets and the service account (trainer.kubeflow.org/v1alpha1 PodSpecPatch), nothing else.
    preset = fabrics.PRESETS.get(c.cluster.fabric)
    _fail_unless(not (preset and (preset.sidecar or preset.host_network)),
                 f"cluster.fabric={c.cluster.fabric} needs {'a sidecar' if preset and preset.sidecar else 'hostNetwork'}, "
                 f"which a TrainJob cannot add to {runtime}: leave trainjob.cluster_runtime empty (a TrainingRuntime is rendered with the job)")
    _fail_unless(c.storage.mode != "stage",
                 f"storage.mode=stage needs the stage init container, which a runtime patch cannot add to {runtime}: "
                 f"use storage.mode=mount, or leave trainjob.cluster_runtime empty (a TrainingRuntime is rendered with the job)")
    _fail_unless(c.scheduling.gang in ("none", "kueue"),
                 f"scheduling.gang={c.scheduling.gang} is the runtime's podGroupPolicy, which a TrainJob cannot patch: "
                 f"pick a ClusterTrainingRuntime that has it and set scheduling.gang=none, or leave trainjob.cluster_runtime empty")


def _check_names(c: JobConfig) -> None:
    """Every name, label and reference that lands in an object, by the API server's own rules."""
    names.check_name("name", c.name, names.DNS1035_LABEL)
    longest = max(c.suffixes, key=len)
    _fail_unless(len(c.name) + len(longest) <= 63,
                 f"name {c.name!r} is {len(c.name)} chars; with suffix {longest!r} it must stay <= 63, "
                 f"so use at most {63 - len(longest)} chars")
    names.check_name("namespace", c.namespace, names.DNS1123_LABEL)
    for path, value in [("cluster.service_account", c.cluster.service_account), ("storage.claim", c.storage.claim),
                        ("storage.output_claim", c.storage.output_claim), ("s3.secret", c.s3.secret),
                        ("scheduling.priority_class", c.scheduling.priority_class),
                        ("preprocess.spark.service_account", c.preprocess.spark.service_account)]:
        names.check_name(path, value, names.SUBDOMAIN, optional=True)
    for i, secret in enumerate(c.cluster.image_pull_secrets):
        names.check_name(f"cluster.image_pull_secrets[{i}]", secret, names.SUBDOMAIN)
    names.check_name("scheduling.queue", c.scheduling.queue, names.LABELLED_NAME, optional=True)
    names.check_name("scheduling.scheduler_name", c.scheduling.scheduler_name, names.SUBDOMAIN, optional=True)
    names.check_name("scheduling.workload_priority", c.scheduling.workload_priority, names.LABELLED_NAME, optional=True)
    names.check_name("cluster.gpu_product", c.cluster.gpu_product, names.LABEL_VALUE)  # a node label's value
    names.check_labels("cluster.node_selector", c.cluster.node_selector)
    names.check_tolerations("cluster.tolerations", c.cluster.tolerations)
    names.check_image("image", c.image)
    names.check_image("preprocess.image", c.preprocess.image)


def _check_storage(c: JobConfig) -> None:
    s, where = c.storage, f"storage.mode={c.storage.mode}"
    if c.s3.endpoint_url:  # rendered into every pod's AWS_ENDPOINT_URL: a bad one fails in every pod
        check_endpoint(c.s3.endpoint_url, "s3.endpoint_url")
    if c.kind == "preprocess":
        _fail_unless(not c.export, "export=true is for kind=train (it exports the run's final checkpoint)")
        _fail_unless(bool(c.preprocess.input and c.preprocess.output), "kind=preprocess needs preprocess.input and preprocess.output")
        _fail_unless(c.preprocess.frequency_threshold >= 0,
                     f"preprocess.frequency_threshold must be >= 0, got {c.preprocess.frequency_threshold}")
        _fail_unless(s.mode in ("pvc", "hostPath"),
                     f"kind=preprocess reads and writes folders on a claim or node path: {where} is not supported (use pvc or hostPath)")
        _fail_unless(s.mode != "pvc" or bool(s.claim), f"{where} needs storage.claim (an existing PersistentVolumeClaim)")
        return
    _fail_unless(bool(c.dataset), f"dataset is empty: set the dataset location ({where})")
    is_s3 = is_s3_uri(c.dataset)
    if s.mode in ("mount", "stage"):
        _fail_unless(is_s3, f"{where} needs dataset=s3://bucket/prefix, got {c.dataset!r}")
        try:
            parse_s3_uri(c.dataset)
        except UserError as e:
            raise ConfigError(f"{where}: dataset: {e}") from None
    else:
        _fail_unless(not is_s3, f"{where} reads a folder, got dataset={c.dataset!r}: use storage.mode=mount or stage for S3")
    if s.mode == "pvc":
        _fail_unless(bool(s.claim), f"{where} needs storage.claim (an existing PersistentVolumeClaim)")
        _fail_unless(not c.dataset.startswith("/") and ".." not in c.dataset.split("/") and not is_uri(c.dataset),
                     f"{where}: dataset {c.dataset!r} must be a relative folder inside claim {s.claim!r}")
    if s.mode == "hostPath":
        _fail_unless(c.dataset.startswith("/"), f"{where}: dataset {c.dataset!r} must be an absolute node path")
    if s.stage_host_path:
        _fail_unless(s.stage_host_path.startswith("/"), f"storage.stage_host_path {s.stage_host_path!r} must be absolute")
    _fail_unless(not s.output_path or bool(s.output_claim), f"storage.output_path={s.output_path!r} needs storage.output_claim")
    out = c.train.out  # the pods write to s3:// or to their /output mount; any other path would be ignored
    _fail_unless(out.startswith("s3://") or out in (TrainConfig.out, OUTPUT_MOUNT),
                 f"train.out {out!r}: a job's run output is s3://bucket/prefix/run, or the pods' {OUTPUT_MOUNT} "
                 f"(leave train.out unset; storage.output_claim keeps it on a claim)")
    ckpt = c.train.checkpoint_dir  # a path on this machine means nothing in the pod: S3, or under the output mount
    _fail_unless(not ckpt or ckpt.startswith(("s3://", OUTPUT_MOUNT + "/")),
                 f"train.checkpoint_dir {ckpt!r} must be empty (<out>/checkpoints), s3://bucket/prefix, or under {OUTPUT_MOUNT}/")
    _check_multinode_output(c)
    if c.export:
        _fail_unless(bool(s.output_claim), "export=true needs storage.output_claim: the export Job reads the run's "
                     "metrics and checkpoints from the claim the training pods write (an emptyDir output dies with them)")
        _fail_unless(not c.train.out.startswith("s3://"), f"export=true with train.out={c.train.out!r}: the export "
                     "Job follows the run in its folder on storage.output_claim; leave train.out unset")
        _fail_unless(s.mode != "stage", "export=true with storage.mode=stage: the staged dataset lives in the training "
                     "pods only, and export reads its feature_spec.yaml; use storage.mode=pvc, hostPath or mount")


def _check_multinode_output(c: JobConfig) -> None:
    """A restart of a run on several nodes resumes only from an output every node reads: with an emptyDir
    per pod, each node holds its own part of every checkpoint (and its own run record), so no restarted
    job could load one whole. Without restarts (backoff_limit 0) a rerun is new pods with empty emptyDirs:
    a new run, nothing half-visible."""
    def per_pod(path: str) -> bool:  # anything not on S3 is under the output mount (checked above)
        return not path.startswith("s3://") and not c.storage.output_claim
    where = [f"{k}={v}" for k, v in (("train.out", train_out(c.train.out)), ("train.checkpoint_dir", c.train.checkpoint_dir))
             if v and per_pod(v)]
    _fail_unless(c.nodes == 1 or not where or c.cluster.backoff_limit == 0,
                 f"nodes={c.nodes} with {' and '.join(where)} in each pod's own emptyDir and cluster.backoff_limit="
                 f"{c.cluster.backoff_limit}: every node would keep only its own part of each checkpoint, so a restarted job "
                 f"could not resume; set train.out=s3://bucket/prefix/{NAME_PLACEHOLDER} (the run and its checkpoints on S3), or "
                 f"storage.output_claim=<a ReadWriteMany PersistentVolumeClaim> shared by the nodes (or cluster.backoff_limit=0: no restarts)")


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
