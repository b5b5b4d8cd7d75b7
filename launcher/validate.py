"""Offline validation of rendered objects, before every submit: every error at once, each with its path.

    errors = validate_objects(objs)                       # the vendored upstream CRD
    errors = validate_objects(objs, crd="my-cluster-crd.yaml")

Three layers, because each catches what the others cannot:
  1. strict JSON schemas (launcher/schemas): Kubernetes' own for core kinds and pod templates
     (vendored from kubernetes-validate), ours for PyTorchJob and SparkApplication. Strict means an
     unknown field is an error; the API server would silently prune it and the job would run
     without, say, its toleration.
  2. the training operator's validating webhook rules, which no schema expresses (for Trainer v2
     objects: launcher/trainjob.py's, across the TrainJob and the runtime rendered with it).
  3. the upstream CRD's openAPIV3Schema, made strict the same way: the one vendored in
     launcher/schemas (see its README for source, version and licence), or --crd FILE, the
     operator version actually installed, which catches drift between the two.
"""
from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import jsonschema
import referencing
import yaml

from dlrm.errors import ConfigError, UserError
from dlrm.io.fsutil import load_yaml_file_all
from dlrm.typed import parse_quantity
from launcher import trainjob
from launcher.names import DNS1035_LABEL
from launcher.plan import CONTAINER

SCHEMAS_DIR = Path(__file__).with_name("schemas")
VENDORED_CRD = SCHEMAS_DIR / "kubeflow.org_pytorchjobs.yaml"  # upstream, byte for byte (schemas/README.md)
BASE_URI = "https://dlrm-k8s.invalid/schemas/"
K8S = "k8s.json#/$defs/"
KUEUE_API = "kueue.x-k8s.io/v1beta2"  # Kueue v0.15+: the admin bundle's queue examples (launcher/admin.py)
# (apiVersion, kind) -> the schema an object of that type must match.
SCHEMA_OF = {
    ("kubeflow.org/v1", "PyTorchJob"): "pytorchjob.json",
    ("sparkoperator.k8s.io/v1beta2", "SparkApplication"): "sparkapplication.json",
    ("batch/v1", "Job"): K8S + "io.k8s.api.batch.v1.Job",
    ("v1", "ConfigMap"): K8S + "io.k8s.api.core.v1.ConfigMap",
    ("v1", "PersistentVolume"): K8S + "io.k8s.api.core.v1.PersistentVolume",
    ("v1", "PersistentVolumeClaim"): K8S + "io.k8s.api.core.v1.PersistentVolumeClaim",
    ("v1", "ServiceAccount"): K8S + "io.k8s.api.core.v1.ServiceAccount",
    ("rbac.authorization.k8s.io/v1", "Role"): K8S + "io.k8s.api.rbac.v1.Role",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): K8S + "io.k8s.api.rbac.v1.RoleBinding",
    # The admin bundle's image rule: GA since Kubernetes 1.30.
    ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy"): K8S + "io.k8s.api.admissionregistration.v1.ValidatingAdmissionPolicy",
    ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding"):
        K8S + "io.k8s.api.admissionregistration.v1.ValidatingAdmissionPolicyBinding",
    # Kueue v0.19.2's CRDs, made strict (schemas/vendor_kueue.py): the admin bundle's queue examples.
    **{(KUEUE_API, kind): f"kueue.json#/$defs/{kind}" for kind in ("ResourceFlavor", "ClusterQueue", "LocalQueue")},
    # Kubeflow Trainer v2.3, from its own API models (schemas/vendor_trainer.py).
    (trainjob.API_VERSION, "TrainJob"): "trainer.json#/$defs/TrainJob",
    (trainjob.API_VERSION, "TrainingRuntime"): "trainer.json#/$defs/TrainingRuntime",
    (trainjob.API_VERSION, "ClusterTrainingRuntime"): "trainer.json#/$defs/ClusterTrainingRuntime",
}
REPLICA_TYPES = ("Master", "Worker")


@functools.lru_cache(maxsize=None)
def _registry() -> referencing.Registry:
    resources = []
    for name in ("k8s.json", "pytorchjob.json", "sparkapplication.json", "trainer.json", "kueue.json"):
        contents = json.loads((SCHEMAS_DIR / name).read_text())
        resources.append((BASE_URI + name, referencing.Resource.from_contents(contents)))
    return referencing.Registry().with_resources(resources)


def _validator(ref: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({"$ref": BASE_URI + ref}, registry=_registry())


def _where(path) -> str:
    """['spec', 'containers', 0, 'name'] -> 'spec.containers[0].name'."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(document)"


def _label(obj: dict, index: int) -> str:
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    return f"{obj.get('kind', '?')}/{meta.get('name', f'#{index}')}"


INT32_MAX = 2**31 - 1
# Integer fields of the objects we render that the API types declare int64 (core/v1 PodSpec, batch/v1 JobSpec,
# PodSecurityContext, the operators' RunPolicy and TrainJobSpec); every other integer is an int32
# (replicas, ports, backoffLimit, ttlSecondsAfterFinished, numNodes...), which the API server refuses beyond 2^31-1.
INT64_FIELDS = frozenset({"activeDeadlineSeconds", "terminationGracePeriodSeconds", "runAsUser", "runAsGroup", "fsGroup",
                          "expirationSeconds"})


def int_range_errors(node, label: str, path: tuple = ()) -> list[str]:
    """Every integer in `node` that overflows its API type (int32, or int64 for INT64_FIELDS), with its path."""
    if isinstance(node, dict):
        return [e for k, v in node.items() for e in int_range_errors(v, label, path + (k,))]
    if isinstance(node, list):
        return [e for i, v in enumerate(node) for e in int_range_errors(v, label, path + (i,))]
    if not isinstance(node, int) or isinstance(node, bool):
        return []
    key = next((p for p in reversed(path) if isinstance(p, str)), "")
    bits = 64 if key in INT64_FIELDS else 32
    if -(2 ** (bits - 1)) <= node < 2 ** (bits - 1):
        return []
    return [f"{label}: {_where(path)}: {node} overflows the API's int{bits} (at most {2 ** (bits - 1) - 1})"]


def request_over_limit_errors(node, label: str, path: tuple = ()) -> list[str]:
    """Every container resource whose request exceeds its limit: the API server refuses the pod (and
    with it every pod of the job), which no schema says."""
    if isinstance(node, list):
        return [e for i, v in enumerate(node) for e in request_over_limit_errors(v, label, path + (i,))]
    if not isinstance(node, dict):
        return []
    errors = [e for k, v in node.items() for e in request_over_limit_errors(v, label, path + (k,))]
    requests, limits = node.get("requests"), node.get("limits")
    if path[-1:] == ("resources",) and isinstance(requests, dict) and isinstance(limits, dict):
        for name in sorted(set(requests) & set(limits)):
            try:
                over = parse_quantity(requests[name]) > parse_quantity(limits[name])
            except ConfigError:  # not a quantity: the schema says so
                continue
            if over:
                errors.append(f"{label}: {_where(path + ('requests', name))}: {requests[name]} is above its limit "
                              f"{limits[name]} (the API server refuses a request above its limit)")
    return errors


def _schema_errors(validator: jsonschema.protocols.Validator, obj: dict, label: str) -> list[str]:
    errors = sorted(validator.iter_errors(obj), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    return [f"{label}: {_where(e.absolute_path)}: {e.message}" for e in errors]


def webhook_errors(job: dict, label: str) -> list[str]:
    """The Kubeflow training operator's validating webhook rules for a PyTorchJob."""
    errors = []
    name = (job.get("metadata") or {}).get("name", "")
    if not DNS1035_LABEL.accepts(name):
        errors.append(f"{label}: metadata.name: {name!r} is not a DNS-1035 label (lowercase alphanumerics and '-', "
                      f"starting with a letter, at most 63 chars)")
    specs = ((job.get("spec") or {}).get("pytorchReplicaSpecs")) or {}
    if not isinstance(specs, dict) or not specs:
        return errors + [f"{label}: spec.pytorchReplicaSpecs: must define a Master replica"]
    if "Master" not in specs:
        errors.append(f"{label}: spec.pytorchReplicaSpecs: must define a Master replica, got {sorted(specs)}")
    for rtype, spec in specs.items():
        where = f"spec.pytorchReplicaSpecs.{rtype}"
        if rtype not in REPLICA_TYPES:
            errors.append(f"{label}: {where}: replica type {rtype!r} is not one of {', '.join(REPLICA_TYPES)}")
        if not isinstance(spec, dict):
            continue
        if rtype == "Master" and spec.get("replicas") != 1:
            errors.append(f"{label}: {where}.replicas: Master must have exactly 1 replica, got {spec.get('replicas')!r}")
        pod = ((spec.get("template") or {}).get("spec")) or {}
        containers = pod.get("containers") or []
        if not any(isinstance(c, dict) and c.get("name") == CONTAINER for c in containers):
            names = [c.get("name") for c in containers if isinstance(c, dict)]
            errors.append(f"{label}: {where}.template.spec.containers: no container named {CONTAINER!r} (got {names})")
        for key in ("initContainers", "containers"):
            for i, c in enumerate(pod.get(key) or []):
                if isinstance(c, dict) and not c.get("image"):
                    errors.append(f"{label}: {where}.template.spec.{key}[{i}].image: container "
                                  f"{c.get('name')!r} has no image")
    return errors


def _strict(node):
    """A CRD schema as the API server with strict field validation sees it, as JSON Schema."""
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items()}
    if out.pop("x-kubernetes-int-or-string", False) and "anyOf" not in out:
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    preserve = out.pop("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


@functools.lru_cache(maxsize=4)
def crd_validator(path: str) -> tuple[str, jsonschema.Draft202012Validator]:
    """(the kind it defines, a validator) from a CustomResourceDefinition file (its v1, else first, version's schema)."""
    if Path(path) == VENDORED_CRD:  # ours, pinned by its git blob id: the fast C loader
        docs = list(yaml.load_all(VENDORED_CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
    else:  # a user's file: aliases bounded, one-line errors
        docs = load_yaml_file_all(path, "CRD file", UserError)
    crds = [d for d in docs if isinstance(d, dict) and d.get("kind") == "CustomResourceDefinition"]
    if not crds:
        raise UserError(f"--crd {path}: no CustomResourceDefinition in it")
    versions = (crds[0].get("spec") or {}).get("versions") or []
    version = next((v for v in versions if isinstance(v, dict) and v.get("name") == "v1"),
                   versions[0] if versions and isinstance(versions[0], dict) else {})
    schema = (version.get("schema") or {}).get("openAPIV3Schema") if isinstance(version.get("schema"), dict) else None
    if not isinstance(schema, dict):
        raise UserError(f"--crd {path}: version {version.get('name')!r} has no openAPIV3Schema")
    kind = ((crds[0].get("spec") or {}).get("names") or {}).get("kind", "")
    return kind, jsonschema.Draft202012Validator(_strict(copy.deepcopy(schema)))


def validate_objects(objs: list[dict], crd: str | Path | None = None,
                     trainer_version: str = trainjob.DEFAULT_TRAINER_VERSION, runtimes: list[dict] = ()) -> list[str]:
    """Every problem in `objs`, as '<Kind>/<name>: <path>: <message>'; empty means valid.
    Objects of the kind `crd` (a CRD file) defines are checked against it; PyTorchJobs otherwise
    against the vendored upstream CRD (Trainer's CRDs are not vendored: trainer.json stands in). A TrainJob
    referencing one of `runtimes` (those on the cluster, e.g. the admin bundle's) is checked against it."""
    crds = {"PyTorchJob": VENDORED_CRD}
    if crd:
        crds[crd_validator(str(crd))[0]] = Path(crd)
    errors: list[str] = []
    clean: list[tuple[dict, str]] = []  # objects that match their schema: the cross-object rules may read them
    for i, obj in enumerate(objs):
        if not isinstance(obj, dict):
            errors.append(f"#{i}: (document): expected a Kubernetes object, got {type(obj).__name__}")
            continue
        label = _label(obj, i)
        key = (obj.get("apiVersion"), obj.get("kind"))
        if key not in SCHEMA_OF:
            known = ", ".join(f"{a} {k}" for a, k in SCHEMA_OF)
            errors.append(f"{label}: apiVersion/kind: no schema for {key[0]!r} {key[1]!r} (known: {known})")
            continue
        schema_errors = _schema_errors(_validator(SCHEMA_OF[key]), obj, label) + int_range_errors(obj, label)
        errors += schema_errors
        if not schema_errors:
            clean.append((obj, label))
            errors += request_over_limit_errors(obj, label)
        if key[1] == "PyTorchJob":
            errors += webhook_errors(obj, label)
        if key[1] in crds:  # the upstream CRD of this kind: the vendored PyTorchJob one, or --crd's
            errors += [f"{e} (CRD {crds[key[1]].name})" for e in _schema_errors(crd_validator(str(crds[key[1]]))[1], obj, label)]
    return errors + trainjob.trainer_errors([o for o, _ in clean], [lbl for _, lbl in clean], trainer_version, runtimes)


def load_objects(paths: list[str | Path]) -> list[tuple[str, list]]:
    """(file, objects) for each YAML file; unreadable or malformed files (alias bombs too) are UserErrors."""
    return [(str(p), load_yaml_file_all(p, "YAML file", UserError)) for p in paths]
