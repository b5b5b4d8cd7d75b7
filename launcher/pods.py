"""The training pod of a JobConfig, as typed plan parts: containers, their env and mounts, volumes.

    pod = train_pod(cfg)        # launcher.plan.Pod; every replica of the job runs this pod

One definition of what each replica runs, read by the PyTorchJob template (manifests/) and by
the local interpreters (run-local, images/docker_job.py) alike. Paths come from launcher.command.
"""
from __future__ import annotations

import hashlib

from dlrm.errors import ConfigError
from dlrm.training.runlog import JOB_ENV
from launcher import command as cmd, fabrics, podblock, trainjob
from launcher.config import gang_scheduler
from launcher.resources import pod_resources
from launcher.run_identity import config_sha256, run_id
from launcher.plan import CONTAINER, MASTER_PORT, PORT_NAME, Container, EnvVar, Mount, Pod, Port, Volume

# Read-only root filesystem, nothing to escalate to: everything a container writes goes to a volume.
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}


def pod_security(cfg) -> dict:
    """A fixed non-root user; fsGroup makes mounted volumes writable by it."""
    return {"runAsNonRoot": True, "runAsUser": cfg.cluster.run_as_user, "runAsGroup": cfg.cluster.run_as_group,
            "fsGroup": cfg.cluster.run_as_group, "seccompProfile": {"type": "RuntimeDefault"}}


def s3_env(cfg) -> list[EnvVar]:
    env = [EnvVar("AWS_REGION", cfg.s3.region)]
    if cfg.s3.endpoint_url:  # boto3 >= 1.28 reads it; MinIO and other S3-compatible stores
        env.append(EnvVar("AWS_ENDPOINT_URL", cfg.s3.endpoint_url))
    return env


def job_env(cfg, git_revision: str) -> list[EnvVar]:
    """The job's identity, which the trainer writes into its run record (run.json, dlrm.training.runlog.JOB_ENV)."""
    values = {"name": cfg.name, "config_sha256": config_sha256(cfg), "git_revision": git_revision, "image": cfg.image,
              "dataset": cfg.dataset}  # the job's dataset, not the pods' mount: part of the run's identity
    return [EnvVar(JOB_ENV[k], v) for k, v in values.items()]


def container_env(cfg, git_revision: str | None = None) -> list[EnvVar]:
    """Container env, sorted per source so the output is deterministic; a training pod's
    (`git_revision` given) also carries the job's identity."""
    base = [EnvVar("HOME", cmd.TMP_MOUNT),  # read-only root: caches (matplotlib, triton) go to /tmp
            EnvVar("PYTHONUNBUFFERED", "1"), *(job_env(cfg, git_revision) if git_revision is not None else [])]
    user = [EnvVar(k, v) for k, v in sorted({**cfg.cluster.nccl_env, **cfg.cluster.env}.items())]
    clash = sorted({e.name for e in base + s3_env(cfg)} & {e.name for e in user})
    if clash:
        raise ConfigError(f"cluster.env/nccl_env set {', '.join(clash)}, which the launcher sets itself")
    return base + s3_env(cfg) + user


def requests(cfg) -> dict:
    r = pod_resources(cfg)
    return {"cpu": r["cpu_request"], "memory": r["memory_request"]}


def limits(cfg) -> dict:
    r = pod_resources(cfg)
    return {**({"cpu": r["cpu_limit"]} if r["cpu_limit"] else {}), "memory": r["memory_limit"]}


# What the Secret named by s3.secret holds (docs/security.md).
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def env_from(cfg) -> list[dict]:
    """S3 credentials by reference only: a Secret's keys become env vars; IRSA needs nothing here."""
    return [{"secretRef": {"name": cfg.s3.secret}}] if cfg.s3.secret else []


def secret_key_env(cfg) -> list[EnvVar]:
    """The same Secret, key by key: for a TrainJob on a ClusterTrainingRuntime, whose `node`
    container takes env only from spec.trainer.env (a runtime patch cannot add envFrom there)."""
    return [EnvVar(k, value_from={"secretKeyRef": {"name": cfg.s3.secret, "key": k}}) for k in S3_SECRET_KEYS] if cfg.s3.secret else []


def dataset_path(cfg) -> str:
    """Where the training container finds the dataset."""
    return cmd.STAGED_DATASET if cfg.storage.mode == "stage" else cmd.DATASET_MOUNT


def dataset_verify(cfg) -> str:
    """The trainer's `data.verify` for where its dataset copy comes from (the user's choice wins
    unless it is `auto`). A mount (Mountpoint S3) of the pushed prefix holds `_manifest.json` but can
    hold no `.verified` record, so `auto` would hash the whole dataset on every node at every start
    (hours for Criteo 1TB). Sizes suffice there: S3 objects are written whole and `data push` writes
    the manifest last, so a prefix with a manifest is complete when every size matches; content was
    checked when it was pushed (ETags) and is checked remotely by `launcher data verify s3://...`."""
    verify = cfg.train.data.verify
    return "sizes" if verify == "auto" and cfg.storage.mode == "mount" else verify


STAGE_CONTAINER = "stage"  # the init container that copies an s3:// dataset onto the node (storage.mode=stage)


def stage_env(cfg) -> list[EnvVar]:
    """What the stage container copies: the one per-job value in it (a TrainJob patches it into an admin's runtime)."""
    return [EnvVar(cmd.STAGE_SOURCE_ENV, cfg.dataset)]


# The pod volumes that differ between jobs on one runtime: a TrainJob patches them into the admin's runtime.
PER_JOB_VOLUMES = ("config", "dataset", "output")


def mount_claim(cfg) -> str:
    """storage.mode=mount: the PersistentVolumeClaim (of the admin's bundle, beside its cluster-scoped PV)
    that mounts `dataset`: storage.claim, else a name derived from the dataset URI, which the bundle
    and every job of it compute alike."""
    return cfg.storage.claim or f"dlrm-dataset-{hashlib.sha256(cfg.dataset.encode()).hexdigest()[:12]}"


def pod_devices(cfg) -> dict[str, int]:
    """One training pod's extended resources: its GPUs, its fabric's devices, then cluster.extra_resources."""
    return {"nvidia.com/gpu": cfg.gpus_per_node, **fabrics.wiring(cfg).devices, **dict(sorted(cfg.cluster.extra_resources.items()))}


def train_pod(cfg, git_revision: str = "unknown") -> Pod:
    s, c = cfg.storage, cfg.cluster
    common = dict(image=cfg.image, env=container_env(cfg, git_revision), env_from=env_from(cfg), requests=requests(cfg),
                  security=dict(CONTAINER_SECURITY), pull_policy=c.image_pull_policy)
    init = []
    if s.mode == "stage":  # copies and verifies the dataset before training starts; a failed copy fails the pod
        init.append(Container(STAGE_CONTAINER, command=cmd.STAGE_COMMAND + cmd.stage_args(), limits=limits(cfg),
                              mounts=[Mount("stage", cmd.STAGE_MOUNT), Mount("tmp", cmd.TMP_MOUNT)],
                              **{**common, "env": common["env"] + stage_env(cfg)}))
    fabric, extra = fabrics.wiring(cfg), c.pod
    devices = pod_devices(cfg)
    mounts = [Mount("config", cmd.CONFIG_DIR, read_only=True)]
    if s.mode == "stage":
        mounts.append(Mount("stage", cmd.STAGE_MOUNT, read_only=True))
    else:
        mounts.append(Mount("dataset", cmd.DATASET_MOUNT, read_only=True, sub_path=cfg.dataset if s.mode == "pvc" else ""))
    mounts += [Mount("output", cmd.OUTPUT_MOUNT, sub_path=(s.output_path or f"runs/{cfg.name}") if s.output_claim else ""),
               Mount("tmp", cmd.TMP_MOUNT), Mount("shm", cmd.SHM_MOUNT), *fabric.mounts, *extra_mounts(cfg)]
    if cfg.api == "trainjob":  # Trainer's `node` container; its torch plugin adds the rendezvous port itself
        name, ports = trainjob.NODE, []
    else:
        name, ports = CONTAINER, [Port(PORT_NAME, MASTER_PORT)]
    main = Container(name, command=cmd.TRAIN_COMMAND + cmd.train_args(dataset_path(cfg), cmd.train_out(cfg.train.out), run_id(cfg), cfg.train.resume),
                     ports=ports, limits={**limits(cfg), **devices}, mounts=mounts, **common)
    main.env, main.env_from = train_env(cfg, main.env, fabric), main.env_from + list(extra.env_from)
    main.security = train_security(fabric, extra.capabilities)
    if cfg.api == "trainjob" and cfg.trainjob.cluster_runtime:
        main.env, main.env_from = main.env + secret_key_env(cfg), []
    init += fabric.sidecars + [user_container(raw) for raw in extra.init_containers]
    return Pod(containers=[main], init_containers=init, volumes=train_volumes(cfg) + fabric.volumes + extra_volumes(cfg),
               security=pod_security(cfg), main_name=name, grace_seconds=c.termination_grace_seconds,
               labels=dict(sorted(extra.labels.items())), annotations=dict(sorted({**fabric.annotations, **extra.annotations}.items())),
               host_network=fabric.host_network or extra.host_network,
               dns_policy=podblock.dns_policy(extra) or ("ClusterFirstWithHostNet" if fabric.host_network else ""),
               spec_extra=podblock.spec_fields(extra, gang_scheduler(cfg)))


def node_selector(cfg) -> dict[str, str]:
    """The training pods' nodeSelector: the fabric's node type, cluster.node_selector, the GPU product (later wins)."""
    c = cfg.cluster
    gpu = {"nvidia.com/gpu.product": c.gpu_product} if c.gpu_product else {}
    return dict(sorted({**fabrics.wiring(cfg).node_selector, **c.node_selector, **gpu}.items()))


def train_env(cfg, env: list[EnvVar], fabric: fabrics.Wiring) -> list[EnvVar]:
    """The training container's env: the launcher's, the fabric preset's (a name the user sets in
    cluster.env / nccl_env keeps the user's value), then cluster.pod.env's references."""
    user = set(cfg.cluster.env) | set(cfg.cluster.nccl_env)
    env = env + [e for e in fabric.env if e.name not in user]
    taken = {e.name for e in env}
    for i, e in enumerate(cfg.cluster.pod.env):
        if e["name"] in taken:
            raise ConfigError(f"cluster.pod.env[{i}].name={e['name']}: already set (by the launcher, the fabric preset or "
                              f"cluster.env); set it in one place")
        env.append(EnvVar(e["name"], e.get("value"), e.get("valueFrom")))
    return env


def train_security(fabric: fabrics.Wiring, capabilities: list[str]) -> dict:
    """CONTAINER_SECURITY plus the capabilities the fabric and cluster.pod add (a privileged fabric
    container, OCI's RoCE on the host network, may escalate: the API refuses privileged without it)."""
    security = dict(CONTAINER_SECURITY)
    add = sorted(set(fabric.capabilities) | set(capabilities))
    if add:
        security["capabilities"] = {"drop": ["ALL"], "add": add}
    if fabric.privileged:
        security.update(privileged=True, allowPrivilegeEscalation=True)
    return security


# A VolumeMount's fields the plan carries (launcher.plan.Mount); others are refused rather than dropped.
MOUNT_FIELDS = {"name", "mountPath", "readOnly", "subPath"}


def extra_mounts(cfg) -> list[Mount]:
    out = []
    for i, m in enumerate(cfg.cluster.pod.mounts):
        unknown = sorted(set(m) - MOUNT_FIELDS)
        if unknown:
            raise ConfigError(f"cluster.pod.mounts[{i}].{unknown[0]}: not supported here (only {', '.join(sorted(MOUNT_FIELDS))})")
        out.append(Mount(m["name"], m["mountPath"], bool(m.get("readOnly", False)), m.get("subPath", "")))
    return out


def user_container(c: dict) -> Container:
    """cluster.pod's init container (a core/v1 Container, schema-checked) as the plan reads it, and as
    launcher/decode.py reads it back from a rendered file; rendered as written (Container.raw)."""
    resources = c.get("resources") or {}
    return Container(
        c["name"], image=c.get("image", ""), command=[str(a) for a in c.get("command") or []], args=[str(a) for a in c.get("args") or []],
        env=[EnvVar(e["name"], None if "value" not in e else str(e["value"]), e.get("valueFrom")) for e in c.get("env") or []],
        env_from=list(c.get("envFrom") or []), mounts=[Mount(m["name"], m["mountPath"], bool(m.get("readOnly", False)), m.get("subPath", ""))
                                                        for m in c.get("volumeMounts") or []],
        ports=[Port(str(p.get("name", "")), p.get("containerPort", 0)) for p in c.get("ports") or []],
        requests=dict(resources.get("requests") or {}), limits=dict(resources.get("limits") or {}),
        security=dict(c.get("securityContext") or {}), pull_policy=c.get("imagePullPolicy", "IfNotPresent"),
        working_dir=c.get("workingDir", ""),
        sidecar=c.get("restartPolicy") == "Always", raw=c)


def extra_volumes(cfg) -> list[Volume]:
    out = []
    for v in cfg.cluster.pod.volumes:
        (kind,) = [k for k in v if k != "name"] or ["emptyDir"]
        out.append(Volume(v["name"], kind, v.get(kind) or {}))
    return out


def export_pod(cfg) -> Pod:
    """The export Job's pod: the training image, the dataset and the run's output mounted as in training
    (the checkpoint records the dataset path it was trained on), no GPU: AOTInductor compiles for the CPU."""
    c = cfg.cluster
    train = train_pod(cfg)
    keep = {"dataset", "output", "tmp"}
    mounts = [m for m in train.main.mounts if m.volume in keep]
    checkpoints = cfg.train.checkpoint_dir or f"{cmd.OUTPUT_MOUNT}/checkpoints"
    main = Container("export", image=cfg.image, command=cmd.EXPORT_COMMAND + cmd.export_args(
        checkpoints, cfg.export_table_dtype, cfg.export_triton), env=container_env(cfg), env_from=env_from(cfg),
        requests=requests(cfg), limits=limits(cfg), mounts=mounts, security=dict(CONTAINER_SECURITY),
        pull_policy=c.image_pull_policy)
    return Pod(containers=[main], volumes=[v for v in train.volumes if v.name in keep], security=pod_security(cfg))


def train_volumes(cfg) -> list[Volume]:
    s = cfg.storage
    vols = [Volume("config", "configMap", {"name": f"{cfg.name}-config"})]
    if s.mode == "pvc":
        vols.append(Volume("dataset", "persistentVolumeClaim", {"claimName": s.claim, "readOnly": True}))
    elif s.mode == "hostPath":
        vols.append(Volume("dataset", "hostPath", {"path": cfg.dataset, "type": "Directory"}))
    elif s.mode == "mount":
        vols.append(Volume("dataset", "persistentVolumeClaim", {"claimName": mount_claim(cfg), "readOnly": True}))
    elif s.stage_host_path:
        # Directory, not DirectoryOrCreate: the kubelet would create it owned by root, which the
        # stage container (uid run_as_user, never root) cannot write; the admin creates it once per node.
        vols.append(Volume("stage", "hostPath", {"path": s.stage_host_path, "type": "Directory"}))
    else:
        vols.append(Volume("stage", "emptyDir", {"sizeLimit": s.stage_size}))
    vols.append(Volume("output", "persistentVolumeClaim", {"claimName": s.output_claim}) if s.output_claim
                else Volume("output", "emptyDir", {}))
    vols += [Volume("tmp", "emptyDir", {}), Volume("shm", "emptyDir", {"medium": "Memory", "sizeLimit": pod_resources(cfg)["shm_size"]})]
    return vols
