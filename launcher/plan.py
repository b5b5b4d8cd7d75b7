"""The job plan: one typed description of a job, made once, that every backend interprets.

    plan = plan_job(cfg, git_revision="abc123")   # launcher.encode: config -> plan (launcher.build) + objects
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

Layers, each importing only the ones above it (tests/test_imports.py):
    plan.py (this: the data)  <-  build.py, pods.py (config -> plan)  <-  encode.py + manifests/
    (plan -> objects; plan_job = build + encode)  /  decode.py (objects -> plan, `run-local FILE`)
    <-  render.py (objects -> YAML)  <-  the CLIs. trainjob.py and names.py hold the API facts below all.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dlrm.errors import UserError
from launcher import trainjob

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
    # cluster.pod's init container as the admin wrote it: rendered as is (fields the plan does not model
    # included); the fields above are what run-local reads of it, as it reads them from a rendered file
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    def env_k8s(self) -> list[dict]:
        return [e.to_k8s() for e in self.env]


@dataclass
class Pod:
    containers: list[Container]
    volumes: list[Volume] = field(default_factory=list)
    init_containers: list[Container] = field(default_factory=list)
    security: dict[str, Any] = field(default_factory=dict)
    main_name: str = CONTAINER  # the job API's name for the training container (TrainJob: `node`)
    grace_seconds: int | None = None  # terminationGracePeriodSeconds; None: Kubernetes' default (30 s)
    # From the fabric preset and cluster.pod (launcher/fabrics.py, launcher/podblock.py): the pod's own labels
    # and annotations beside the job's (rendered; nothing that runs a plan reads them, so a plan decoded from
    # a file, which cannot tell them from the job's, compares equal), host networking, and other PodSpec
    # fields by their API names.
    labels: dict[str, str] = field(default_factory=dict, compare=False)
    annotations: dict[str, str] = field(default_factory=dict, compare=False)
    host_network: bool = False
    dns_policy: str = ""
    spec_extra: dict[str, Any] = field(default_factory=dict)

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
