"""`cluster.pod`: what the typed config does not model, added to the training pod as Kubernetes writes it.

    check(cfg)              # each value against Kubernetes' own schema (launcher/schemas/k8s.json)
    local_limits(cfg)       # run-local: one line per setting one machine cannot apply

An admin's affinity, spread constraints, scheduler, runtime class, host networking, capabilities,
extra volumes, env from Secrets/ConfigMaps and extra init containers (`restartPolicy: Always`: a
native sidecar) go into the same pod both job APIs render (launcher/pods.py). The values are the
API's own objects (camelCase inside), so a person copies them from a vendor's manifest unchanged.
The pod's priority is `scheduling.priority_class` (one definition), not a field here.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dlrm.errors import ConfigError
from launcher import names

K8S_SCHEMA = Path(__file__).with_name("schemas") / "k8s.json"


@dataclass
class PodConfig:
    labels: dict[str, str] = field(default_factory=dict)  # the pods' labels, beside the job's own
    annotations: dict[str, str] = field(default_factory=dict)  # the pods' annotations, beside the fabric's and the job's
    affinity: dict[str, Any] = field(default_factory=dict)  # a core/v1 Affinity
    topology_spread_constraints: list[dict[str, Any]] = field(default_factory=list)  # core/v1 TopologySpreadConstraint
    scheduler_name: str = ""  # schedulerName; "" -> the cluster's default scheduler
    runtime_class_name: str = ""  # runtimeClassName (a RuntimeClass such as nvidia)
    host_network: bool = False  # hostNetwork: the node's interfaces in the pod (RDMA without a CNI)
    dns_policy: Literal["", "ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"] = ""  # "" + host_network -> ClusterFirstWithHostNet
    capabilities: list[str] = field(default_factory=list)  # added to the training container (e.g. IPC_LOCK)
    volumes: list[dict[str, Any]] = field(default_factory=list)  # core/v1 Volume
    mounts: list[dict[str, Any]] = field(default_factory=list)  # core/v1 VolumeMount of the training container
    init_containers: list[dict[str, Any]] = field(default_factory=list)  # core/v1 Container; restartPolicy Always: a sidecar
    env: list[dict[str, Any]] = field(default_factory=list)  # core/v1 EnvVar, e.g. valueFrom.secretKeyRef
    env_from: list[dict[str, Any]] = field(default_factory=list)  # core/v1 EnvFromSource: a Secret's or ConfigMap's keys


RESERVED_ANNOTATIONS = {
    "sidecar.istio.io/inject": "is the launcher's: a training pod never gets a service mesh sidecar",
    "kueue.x-k8s.io/podset-required-topology": "is rendered from scheduling.topology (level, mode=required): set that",
    "kueue.x-k8s.io/podset-preferred-topology": "is rendered from scheduling.topology (level, mode=preferred): set that"}
# (field, the k8s.json definition of one item; list: each item)
SCHEMAS = {"affinity": "Affinity", "topology_spread_constraints": "TopologySpreadConstraint", "volumes": "Volume",
           "mounts": "VolumeMount", "init_containers": "Container", "env": "EnvVar", "env_from": "EnvFromSource"}
# What a TrainJob's runtime patch (Trainer's PodSpecPatch, ContainerPatch) can carry to a ClusterTrainingRuntime.
PATCHABLE = {"labels", "annotations", "affinity", "volumes", "mounts", "capabilities", "env"}


@functools.lru_cache(maxsize=1)
def _validator():
    import jsonschema  # the schema check only when a cluster.pod field is set
    import referencing

    uri = "https://dlrm-k8s.invalid/schemas/k8s.json"
    registry = referencing.Registry().with_resource(uri, referencing.Resource.from_contents(json.loads(K8S_SCHEMA.read_text())))
    return lambda definition: jsonschema.Draft202012Validator({"$ref": f"{uri}#/$defs/io.k8s.api.core.v1.{definition}"},
                                                              registry=registry)


def _schema_check(path: str, value: Any, definition: str) -> None:
    errors = sorted(_validator()(definition).iter_errors(value), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        e = errors[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path)
        raise ConfigError(f"{path}{where}: {e.message} (a core/v1 {definition}, as Kubernetes writes it)")


def set_fields(p: PodConfig) -> list[str]:
    return [k for k, v in vars(p).items() if v]


def check(cfg) -> None:
    """Schema, names, clashes with what the launcher renders itself, and what the job API can carry."""
    p = cfg.cluster.pod
    for key, definition in SCHEMAS.items():
        value = getattr(p, key)
        for i, item in enumerate(value if isinstance(value, list) else [value] if value else []):
            _schema_check(f"cluster.pod.{key}" + (f"[{i}]" if isinstance(value, list) else ""), item, definition)
    names.check_labels("cluster.pod.labels", p.labels)
    for key in p.annotations:
        names.check_key("cluster.pod.annotations key", key)
    # what the launcher writes itself (manifests/_helpers.j2): the job's labels, the mesh opt-out, Kueue's TAS keys
    for key in p.labels:
        if key.startswith("app.kubernetes.io/"):
            raise ConfigError(f"cluster.pod.labels: {key} is one of the job's own labels (app.kubernetes.io/*); leave it out")
    for key, why in RESERVED_ANNOTATIONS.items():
        if key in p.annotations:
            raise ConfigError(f"cluster.pod.annotations: {key} {why}")
    for i, cap in enumerate(p.capabilities):
        if not cap.isupper() or not cap.replace("_", "").isalnum():
            raise ConfigError(f"cluster.pod.capabilities[{i}]={cap!r}: expected a Linux capability name in capitals "
                              f"(IPC_LOCK, NET_ADMIN, SYS_PTRACE)")
    for path in ("scheduler_name", "runtime_class_name"):
        names.check_name(f"cluster.pod.{path}", getattr(p, path), names.SUBDOMAIN, optional=True)
    if p.scheduler_name and cfg.scheduling.gang in ("volcano", "scheduler-plugins"):
        raise ConfigError(f"cluster.pod.scheduler_name={p.scheduler_name} with scheduling.gang={cfg.scheduling.gang}: the gang's "
                          f"scheduler names the pods' scheduler; set scheduling.scheduler_name instead")
    if p.dns_policy == "ClusterFirstWithHostNet" and not p.host_network:
        raise ConfigError("cluster.pod.dns_policy=ClusterFirstWithHostNet is for host_network=true pods")
    taken = {"volumes": ["config", "dataset", "stage", "output", "tmp", "shm"],
             "init_containers": ["stage"]}
    for key, reserved in taken.items():
        for i, item in enumerate(getattr(p, key)):
            if item.get("name") in reserved:
                raise ConfigError(f"cluster.pod.{key}[{i}].name={item['name']!r}: the launcher renders that name itself "
                                  f"({', '.join(reserved)}); pick another")
    for i, v in enumerate(p.volumes):
        if len([k for k in v if k != "name"]) != 1:
            raise ConfigError(f"cluster.pod.volumes[{i}]: expected a name and exactly one volume source (emptyDir, "
                              f"hostPath, configMap, secret...), got {sorted(v)}")
    declared = {v["name"] for v in p.volumes}
    for i, m in enumerate(p.mounts):
        if m["name"] not in declared and m["name"] not in taken["volumes"]:
            raise ConfigError(f"cluster.pod.mounts[{i}].name={m['name']!r}: no such volume in cluster.pod.volumes "
                              f"({', '.join(sorted(declared)) or 'none'})")
    runtime = cfg.trainjob.cluster_runtime if cfg.api == "trainjob" else ""
    extra = [k for k in set_fields(p) if k not in PATCHABLE]
    if runtime and extra:
        raise ConfigError(f"cluster.pod.{extra[0]} cannot reach trainjob.cluster_runtime={runtime}: a TrainJob's runtime "
                          f"patch carries only {', '.join(sorted(PATCHABLE))} (Trainer's PodSpecPatch); leave "
                          f"trainjob.cluster_runtime empty (a TrainingRuntime is rendered with the job)")


def dns_policy(p: PodConfig) -> str:
    return p.dns_policy or ("ClusterFirstWithHostNet" if p.host_network else "")


# The PodSpec fields cluster.pod sets beside what the launcher renders (launcher.plan.Pod.spec_extra).
SPEC_FIELDS = ("affinity", "topologySpreadConstraints", "schedulerName", "runtimeClassName")


def spec_fields(p: PodConfig, gang_scheduler: str = "") -> dict[str, Any]:
    """The PodSpec fields it sets beside what the launcher renders, by their API names (SPEC_FIELDS).
    `gang_scheduler`: the scheduler a gang needs (launcher.config.gang_scheduler; without it the default
    scheduler places the pods one by one); check() refuses a cluster.pod.scheduler_name beside it."""
    out = {"affinity": p.affinity, "topologySpreadConstraints": p.topology_spread_constraints,
           "schedulerName": gang_scheduler or p.scheduler_name, "runtimeClassName": p.runtime_class_name}
    return {k: v for k, v in out.items() if v}


# One machine runs every replica as a process (launcher/run_local.py): what a pod asks of its node that
# has no meaning there, by the PodSpec field that asks it.
LOCAL_LIMITS = {
    "affinity": "places pods on nodes; every replica runs on this machine",
    "topologySpreadConstraints": "spreads pods over nodes; every replica runs on this machine",
    "schedulerName": "no scheduler places local processes",
    "runtimeClassName": "the processes run without a container runtime",
}


def local_limits(pod) -> list[str]:
    """What run-local cannot apply of a plan's pod (launcher.plan.Pod), one line each. Labels and
    annotations mean nothing locally either, but change nothing a process does."""
    lines = [f"pod {k}: {LOCAL_LIMITS[k]}" for k in pod.spec_extra if k in LOCAL_LIMITS]
    if pod.host_network:
        lines.append("pod hostNetwork: local processes already share this machine's network")
    caps = (pod.main.security.get("capabilities") or {}).get("add") or []
    if caps or pod.main.security.get("privileged"):
        lines.append(f"container {pod.main.name}: {'privileged, ' if pod.main.security.get('privileged') else ''}"
                     f"capabilities {', '.join(caps) or 'none'} not granted: local processes keep this user's privileges")
    return lines
