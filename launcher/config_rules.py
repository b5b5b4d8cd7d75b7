"""The job config's cross-field rules (launcher.config.JobConfig.validate): what must hold between fields
before anything is rendered. Each field's own type, range and choices were checked by the loader (its
annotation); each rule here names every field it involves and their values, and the way out.
"""
from __future__ import annotations

import re

from dlrm.config import TrainConfig
from dlrm.errors import ConfigError, UserError
from dlrm.io.fsutil import is_s3_uri, is_uri, parse_s3_uri
from dlrm.io.s3_settings import check_endpoint
from launcher import fabrics, names
from launcher.command import OUTPUT_MOUNT, train_out

# Variables whose value is a credential: rendered into a pod spec, anyone who can read the job reads it.
SECRET_ENV_NAME = re.compile(r"^AWS_ACCESS_KEY_ID$|(^|_)(SECRET|SECRET_ACCESS_KEY|SESSION_TOKEN|TOKEN|PASSWORD|API_KEY)$", re.I)

# train.out may hold the job's name, so one profile's experiments (render --name exp-b) each get their own run output.
NAME_PLACEHOLDER = "{name}"

# The scheduler each gang needs the pods to name, by default (docs/trainjob.md, "Gang scheduling").
GANG_SCHEDULERS = {"volcano": "volcano", "scheduler-plugins": "scheduler-plugins-scheduler"}


def gang_scheduler(c) -> str:
    """The training pods' schedulerName ("" for the default scheduler: gang none or kueue)."""
    return (c.scheduling.scheduler_name or GANG_SCHEDULERS[c.scheduling.gang]) if c.scheduling.gang in GANG_SCHEDULERS else ""


def _fail_unless(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def kueue_queue(c) -> str:
    """The Kueue LocalQueue the job is submitted to ("" when none): scheduling.queue, unless it is Volcano's."""
    return c.scheduling.queue if c.scheduling.gang in ("none", "kueue") else ""


def check_choices(c) -> None:
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


def check_trainjob(c) -> None:
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


def check_names(c) -> None:
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


def check_storage(c) -> None:
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
    check_multinode_output(c)
    if c.export:
        _fail_unless(bool(s.output_claim), "export=true needs storage.output_claim: the export Job reads the run's "
                     "metrics and checkpoints from the claim the training pods write (an emptyDir output dies with them)")
        _fail_unless(not c.train.out.startswith("s3://"), f"export=true with train.out={c.train.out!r}: the export "
                     "Job follows the run in its folder on storage.output_claim; leave train.out unset")
        _fail_unless(s.mode != "stage", "export=true with storage.mode=stage: the staged dataset lives in the training "
                     "pods only, and export reads its feature_spec.yaml; use storage.mode=pvc, hostPath or mount")


def check_multinode_output(c) -> None:
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
