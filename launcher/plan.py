"""The job plan: one typed description of a job, made once, that every backend interprets.

    plan = plan_job(cfg, git_revision="abc123")   # config -> plan (the only place that does it)
    plan.objects                                  # render / submit: every object to create, in order
    for r in plan.replicas:                       # run-local / images/docker_job.py: one process or
        pod = plan.pod(r)                         #   container per replica, with the env the
        env = plan.replica_env(r, master_addr)    #   operator would inject (defined here, once)

Shape (B = replicas, the job's nodes):

    JobPlan
      api            "pytorchjob" | "trainjob": which encoding `objects` are (launcher/render.py's
                     templates) and which controller's replicas and env the plan describes
      kind           "train" | "preprocess"
      name, namespace
      groups         pytorchjob: [ReplicaGroup(role="Master", replicas=1, restart_policy, pod),
                                  ReplicaGroup(role="Worker", replicas=B-1, ...)]  (train only)
                     trainjob:   [ReplicaGroup(role="Node", replicas=B, ...)]: JobSet's one Job of B pods
      replicas       [Replica("master-0", "Master", index 0, node_rank 0), Replica("worker-0", ...)]
                     (trainjob: Replica("node-0-0", "Node", 0, 0), ...: JobSet's pod names less the job's)
      nproc_per_node processes per replica (torchrun's --nproc-per-node, the GPUs of a node)
      master_port    the rendezvous port on the master replica
      run_policy     RunPolicy(backoff_limit, active_deadline_seconds)
      config_maps    {name: {key: text}}: what ConfigMap volumes hold
      objects        [dict]: the Kubernetes objects, apply order
      export         Pod | None: export=true, the batch/v1 Job that runs `dlrm export` after training
    Pod
      init_containers, containers: [Container(name, image, command, args, env: [EnvVar], env_from,
                                    mounts: [Mount], requests, limits, security, working_dir, ports)]
      volumes: [Volume(name, kind, source)]      kind: configMap | persistentVolumeClaim | hostPath | emptyDir | ...
      security: the pod's securityContext

A rendered file (`run-local FILE`) is decoded into the same plan by `plan_from_objects`: the
PyTorchJob codec is this module and `launcher/render.py`, the TrainJob decoder is in
`launcher/trainjob.py`, and nothing else interprets a manifest.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dlrm.errors import UserError

# The PyTorchJob API's fixed names: the operator finds the container and its port by them.
API = "pytorchjob"
CONTAINER = "pytorch"
PORT_NAME = "pytorchjob-port"
MASTER_PORT = 23456  # the operator's default, and the port the rendered container declares
ROLES = ("Master", "Worker")  # node rank order: Master is node 0, Worker i is node i+1
NODE_ROLE = "Node"  # a TrainJob's single group: JobSet's `node` Job, one pod per node rank


@dataclass
class EnvVar:
    name: str
    value: str | None = None
    value_from: dict | None = None  # a reference (fieldRef, secretKeyRef...): resolved by the kubelet

    def to_k8s(self) -> dict:
        return {"name": self.name, "value": self.value} if self.value_from is None else {"name": self.name, "valueFrom": self.value_from}


@dataclass
class Mount:
    volume: str
    path: str
    read_only: bool = False
    sub_path: str = ""


@dataclass
class Volume:
    name: str
    kind: str  # the Kubernetes volume source key: configMap, persistentVolumeClaim, hostPath, emptyDir...
    source: dict


@dataclass
class Port:
    name: str
    port: int


@dataclass
class Container:
    name: str
    image: str
    command: list[str]
    args: list[str] = field(default_factory=list)
    env: list[EnvVar] = field(default_factory=list)
    env_from: list[dict] = field(default_factory=list)
    mounts: list[Mount] = field(default_factory=list)
    ports: list[Port] = field(default_factory=list)
    requests: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    security: dict[str, Any] = field(default_factory=dict)
    pull_policy: str = "IfNotPresent"
    working_dir: str = ""
    sidecar: bool = False  # an init container with restartPolicy Always

    def env_k8s(self) -> list[dict]:
        return [e.to_k8s() for e in self.env]


@dataclass
class Pod:
    containers: list[Container]
    volumes: list[Volume] = field(default_factory=list)
    init_containers: list[Container] = field(default_factory=list)
    security: dict[str, Any] = field(default_factory=dict)
    main_name: str = CONTAINER  # the job API's name for the training container (TrainJob: `node`)

    @property
    def main(self) -> Container:
        """The container the controller wires up (the others are sidecars)."""
        found = [c for c in self.containers if c.name == self.main_name]
        if not found:
            raise UserError(f"no container named {self.main_name!r} (got {[c.name for c in self.containers]}): "
                            f"the job controller requires that name")
        return found[0]


@dataclass
class ReplicaGroup:
    role: str  # Master | Worker
    replicas: int
    restart_policy: str
    pod: Pod


@dataclass(frozen=True)
class Replica:
    name: str  # "master-0", "worker-1": the operator's pod name without the job prefix
    role: str
    index: int
    node_rank: int


@dataclass
class RunPolicy:
    backoff_limit: int | None = None  # None: the operator retries forever
    active_deadline_seconds: int | None = None


@dataclass
class JobPlan:
    name: str
    namespace: str
    kind: str = "train"
    api: str = API
    groups: list[ReplicaGroup] = field(default_factory=list)
    nproc_per_node: int = 1
    master_port: int = MASTER_PORT
    run_policy: RunPolicy = field(default_factory=RunPolicy)
    config_maps: dict[str, dict[str, str]] = field(default_factory=dict)
    objects: list[dict] = field(default_factory=list)
    export: Pod | None = None  # export=true: the pod of the Job that exports the run's final checkpoint

    @property
    def replicas(self) -> list[Replica]:
        if self.api == "trainjob":  # pods <job>-node-0-<i>: replicated job `node`, Job index 0, completion index i
            return [Replica(f"node-0-{i}", NODE_ROLE, i, i) for g in self.groups for i in range(g.replicas)]
        out: list[Replica] = []
        for role in ROLES:
            for g in (g for g in self.groups if g.role == role):
                out += [Replica(f"{role.lower()}-{i}", role, i, len(out) + i) for i in range(g.replicas)]
        return out

    @property
    def nnodes(self) -> int:
        return sum(g.replicas for g in self.groups)

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    def group(self, replica: Replica) -> ReplicaGroup:
        return next(g for g in self.groups if g.role == replica.role)

    def pod(self, replica: Replica) -> Pod:
        return self.group(replica).pod

    def pod_name(self, replica: Replica) -> str:
        return f"{self.name}-{replica.name}"

    def master_addr(self) -> str:
        """The master's address on a cluster: the operator's Service, or the JobSet pod's DNS name."""
        from launcher import trainjob

        return trainjob.master_addr(self.name) if self.api == "trainjob" else f"{self.name}-master-0"

    def replica_env(self, replica: Replica, master_addr: str | None = None, master_port: int | None = None) -> dict[str, str]:
        """What the job controller injects into the training container of `replica` (master_addr
        and port: the cluster's, unless given, as run-local does to point them at this machine).

        PyTorchJob: WORLD_SIZE is processes, not pods (the operator's replicas x nprocPerNode); RANK
        is the node rank. TrainJob: the torch plugin sets only the PET_* ones (PET_NODE_RANK is the
        Job completion index). torchrun reads PET_*, so the command carries no --nnodes/--node-rank.
        """
        master_addr = master_addr or self.master_addr()
        port = str(master_port or self.master_port)
        pet = {"PET_NNODES": str(self.nnodes), "PET_NPROC_PER_NODE": str(self.nproc_per_node),
               "PET_NODE_RANK": str(replica.node_rank), "PET_MASTER_ADDR": master_addr, "PET_MASTER_PORT": port}
        if self.api == "trainjob":
            return pet
        return {"MASTER_ADDR": master_addr, "MASTER_PORT": port, "WORLD_SIZE": str(self.world_size),
                "RANK": str(replica.node_rank), **pet}


# ---------------------------------------------------------------------------------------------
# config -> plan


def plan_job(cfg, git_revision: str = "unknown", tables: list[int] | None = None,
             hotness: list[int] | None = None) -> JobPlan:
    """The plan for a validated JobConfig: replicas, pod, run policy, and the objects encoding them.

    `tables` (and their `hotness`, ids per row) are the embedding tables when the caller read them
    from a declared feature spec (--feature-spec); else the config's `train_tables` are used for
    the embedding plan check.
    """
    from launcher import pods
    from launcher.config import check_plan
    from launcher.render import encode_objects

    cfg.validate()
    if cfg.kind == "train":
        check_plan(cfg, tables, hotness)
    plan = JobPlan(name=cfg.name, namespace=cfg.namespace, kind=cfg.kind, nproc_per_node=cfg.gpus_per_node,
                   run_policy=RunPolicy(cfg.cluster.backoff_limit, cfg.cluster.active_deadline_seconds or None))
    if cfg.kind == "train" and cfg.api == "trainjob":
        from launcher import trainjob

        # JobSet restarts the whole job on any failure, up to failurePolicy.maxRestarts (= backoff_limit).
        plan.api, plan.master_port = "trainjob", trainjob.MASTER_PORT
        plan.groups = [ReplicaGroup(NODE_ROLE, cfg.nodes, "OnFailure", pods.train_pod(cfg, git_revision))]
    elif cfg.kind == "train":
        pod = pods.train_pod(cfg, git_revision)
        plan.groups = [ReplicaGroup("Master", 1, "OnFailure", pod)]
        if cfg.nodes > 1:
            plan.groups.append(ReplicaGroup("Worker", cfg.nodes - 1, "OnFailure", pod))
    if cfg.kind == "train" and cfg.export:  # either job API: the export Job only follows the run's files
        plan.export = pods.export_pod(cfg)
    plan.objects = encode_objects(cfg, plan, git_revision)
    plan.config_maps = {o["metadata"]["name"]: dict(o.get("data") or {}) for o in plan.objects if o.get("kind") == "ConfigMap"}
    return plan


# ---------------------------------------------------------------------------------------------
# rendered objects -> plan (`run-local FILE`): every malformed field a one-line UserError


_REQUIRED = object()
_NOUNS = {dict: "a mapping", list: "a list", str: "a string", int: "an integer", bool: "true or false"}


def the_job(objects: list[dict], kind: str, where: str) -> tuple[dict, str, str, dict]:
    """The one object of `kind` among `objects`: (its metadata, name, "<kind> <name>" for messages, spec)."""
    jobs = [o for o in objects if o.get("kind") == kind]
    if len(jobs) != 1:
        kinds = sorted({str(o.get("kind")) for o in objects})
        raise UserError(f"{where}: expected exactly one {kind} among the objects, found {len(jobs)} "
                        f"(kinds: {', '.join(kinds) or 'none'})")
    job = jobs[0]
    meta = _typed(job.get("metadata"), dict, f"{kind}.metadata", {})
    name = _typed(meta.get("name"), str, f"{kind}.metadata.name", "")
    if not name:
        raise UserError(f"{where}: the {kind} has no metadata.name")
    label = f"{kind} {name}"
    return meta, name, label, _typed(job.get("spec"), dict, f"{label}: spec", {})


def _typed(value, tp, where: str, default=_REQUIRED):
    """`value` if it is a `tp`; `default` if it is absent (None) and a default is given; else a UserError."""
    if value is None and default is not _REQUIRED:
        return default
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        noun = " or ".join(_NOUNS.get(t, t.__name__) for t in (tp if isinstance(tp, tuple) else (tp,)))
        raise UserError(f"{where}: expected {noun}, got {value!r}"[:300])
    return value


def _strings(value, where: str) -> list[str]:
    items = _typed(value, list, where, [])
    return [str(_typed(v, (str, int, float), f"{where}[{i}]")) for i, v in enumerate(items)]


def _container(raw, where: str) -> Container:
    c = _typed(raw, dict, where)
    env = []
    for i, e in enumerate(_typed(c.get("env"), list, f"{where}.env", [])):
        e = _typed(e, dict, f"{where}.env[{i}]")
        name = _typed(e.get("name"), str, f"{where}.env[{i}].name")
        if "value" in e:
            env.append(EnvVar(name, str(e["value"])))
        else:
            env.append(EnvVar(name, value_from=_typed(e.get("valueFrom"), dict, f"{where}.env[{i}].valueFrom", {})))
    mounts = []
    for i, m in enumerate(_typed(c.get("volumeMounts"), list, f"{where}.volumeMounts", [])):
        m = _typed(m, dict, f"{where}.volumeMounts[{i}]")
        name, path = m.get("name"), m.get("mountPath")
        if not isinstance(name, str) or not isinstance(path, str):
            raise UserError(f"{where}.volumeMounts[{i}]: needs a name and a mountPath, got {m!r}"[:300])
        mounts.append(Mount(name, path, bool(m.get("readOnly", False)), _typed(m.get("subPath"), str, f"{where}.volumeMounts[{i}].subPath", "")))
    ports = [Port(str(p.get("name", "")), _typed(p.get("containerPort"), int, f"{where}.ports[{i}].containerPort", 0))
             for i, p in enumerate(_typed(c.get("ports"), list, f"{where}.ports", [])) if isinstance(p, dict)]
    resources = _typed(c.get("resources"), dict, f"{where}.resources", {})
    return Container(
        name=_typed(c.get("name"), str, f"{where}.name", "?"), image=_typed(c.get("image"), str, f"{where}.image", ""),
        command=_strings(c.get("command"), f"{where}.command"), args=_strings(c.get("args"), f"{where}.args"),
        env=env, env_from=_typed(c.get("envFrom"), list, f"{where}.envFrom", []), mounts=mounts, ports=ports,
        requests=_typed(resources.get("requests"), dict, f"{where}.resources.requests", {}),
        limits=_typed(resources.get("limits"), dict, f"{where}.resources.limits", {}),
        security=_typed(c.get("securityContext"), dict, f"{where}.securityContext", {}),
        pull_policy=str(c.get("imagePullPolicy", "IfNotPresent")),
        working_dir=_typed(c.get("workingDir"), str, f"{where}.workingDir", ""),
        sidecar=c.get("restartPolicy") == "Always")


def _pod(raw, where: str) -> Pod:
    template = _typed(raw, dict, where, {})
    spec = _typed(template.get("spec"), dict, f"{where}.spec", {})
    volumes = []
    for i, v in enumerate(_typed(spec.get("volumes"), list, f"{where}.spec.volumes", [])):
        v = _typed(v, dict, f"{where}.spec.volumes[{i}]")
        kinds = [k for k in v if k != "name"]
        if not isinstance(v.get("name"), str) or len(kinds) != 1:
            raise UserError(f"{where}.spec.volumes[{i}]: expected a name and one volume source, got {sorted(v)}")
        volumes.append(Volume(v["name"], kinds[0], _typed(v[kinds[0]], dict, f"{where}.spec.volumes[{i}].{kinds[0]}", {})))
    return Pod(
        containers=[_container(c, f"{where}.spec.containers[{i}]") for i, c in enumerate(_typed(spec.get("containers"), list, f"{where}.spec.containers", []))],
        init_containers=[_container(c, f"{where}.spec.initContainers[{i}]")
                         for i, c in enumerate(_typed(spec.get("initContainers"), list, f"{where}.spec.initContainers", []))],
        volumes=volumes, security=_typed(spec.get("securityContext"), dict, f"{where}.spec.securityContext", {}))


def _nproc(value, pod: Pod) -> int:
    """spec.nprocPerNode as a number. 'auto'/'gpu' would mean every CPU core off a GPU node: the GPU count instead."""
    text = str(value if value is not None else "1")
    if text.isdigit() and int(text) >= 1:
        return int(text)
    gpus = pod.main.limits.get("nvidia.com/gpu")
    return int(gpus) if str(gpus).isdigit() and int(gpus) >= 1 else 1


def plan_from_objects(objects: list, where: str = "objects") -> JobPlan:
    """The plan of an already rendered job: its one PyTorchJob, and the ConfigMaps beside it."""
    if not isinstance(objects, list) or not all(isinstance(o, dict) for o in objects):
        bad = next((o for o in objects if not isinstance(o, dict)), objects) if isinstance(objects, list) else objects
        raise UserError(f"{where}: expected Kubernetes objects (mappings), got {type(bad).__name__} {str(bad)[:60]!r}")
    if any(o.get("kind") == "TrainJob" for o in objects):
        from launcher.trainjob import plan_from_trainjob

        return plan_from_trainjob(objects, where)
    meta, name, label, spec = the_job(objects, "PyTorchJob", where)
    specs = _typed(spec.get("pytorchReplicaSpecs"), dict, f"{label}: spec.pytorchReplicaSpecs", {})
    unknown = sorted(set(map(str, specs)) - set(ROLES))
    if unknown or "Master" not in specs:
        raise UserError(f"{label}: replica types {sorted(map(str, specs))}; expected Master and optionally Worker")
    groups = []
    for role in ROLES:
        if role not in specs:
            continue
        rs = _typed(specs[role], dict, f"{label}: spec.pytorchReplicaSpecs.{role}")
        n = _typed(rs.get("replicas"), int, f"{label}: {role}.replicas", 1)
        if role == "Master" and n != 1:
            raise UserError(f"{label}: Master has replicas={n}; the operator allows exactly 1")
        if n < 0:
            raise UserError(f"{label}: {role}.replicas must be >= 0, got {n}")
        pod = _pod(rs.get("template"), f"{label}: {role}.template")
        pod.main  # noqa: B018 - raises naming the missing `pytorch` container
        groups.append(ReplicaGroup(role, n, str(rs.get("restartPolicy", "Never")), pod))
    policy = _typed(spec.get("runPolicy"), dict, f"{label}: spec.runPolicy", {})
    main = groups[0].pod.main
    port = next((p.port for p in main.ports if p.name == PORT_NAME and p.port), MASTER_PORT)
    return JobPlan(name=name, namespace=str(meta.get("namespace", "default")), groups=groups,
                   nproc_per_node=_nproc(spec.get("nprocPerNode"), groups[0].pod), master_port=port,
                   run_policy=RunPolicy(_typed(policy.get("backoffLimit"), int, f"{label}: runPolicy.backoffLimit", None),
                                        _typed(policy.get("activeDeadlineSeconds"), int, f"{label}: runPolicy.activeDeadlineSeconds", None)),
                   config_maps=config_maps_of(objects), objects=list(objects))


def config_maps_of(objects: list[dict]) -> dict[str, dict[str, str]]:
    """What each rendered ConfigMap holds: {name: {key: text}}."""
    config_maps = {}
    for o in objects:
        if o.get("kind") == "ConfigMap":
            cm_name = _typed(_typed(o.get("metadata"), dict, "ConfigMap.metadata", {}).get("name"), str, "ConfigMap.metadata.name", "")
            config_maps[cm_name] = {str(k): str(v) for k, v in _typed(o.get("data"), dict, f"ConfigMap {cm_name}: data", {}).items()}
    return config_maps


def load_plan_file(path) -> JobPlan:
    """A rendered YAML file (one or many documents, or a `kind: List`) as a plan."""
    from dlrm.io.fsutil import load_yaml_file_all

    docs = load_yaml_file_all(path, "rendered YAML file (from `python -m launcher render`)", UserError)
    objs = []
    for i, d in enumerate(docs):
        if not isinstance(d, dict):
            raise UserError(f"{path}: document {i + 1} is a {type(d).__name__}, expected a Kubernetes object (a mapping)")
        if d.get("kind") == "List":
            items = d.get("items")
            if not isinstance(items, list):
                raise UserError(f"{path}: document {i + 1} is a List without an items list")
            objs += items
        else:
            objs.append(d)
    return plan_from_objects(objs, str(path))
