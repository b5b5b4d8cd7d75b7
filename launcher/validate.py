"""Offline validation of rendered objects, before every submit: every error at once, each with its path.

    errors = validate_objects(objs, crd="../shared/schemas/kubeflow.org_pytorchjobs.yaml")

Three layers, because each catches what the others cannot:
  1. strict JSON schemas (launcher/schemas): Kubernetes' own for core kinds and pod templates
     (vendored from kubernetes-validate), ours for PyTorchJob and SparkApplication. Strict means an
     unknown field is an error; the API server would silently prune it and the job would run
     without, say, its toleration.
  2. the training operator's validating webhook rules, which no schema expresses.
  3. optionally (--crd) the upstream CRD's openAPIV3Schema, made strict the same way, which
     catches drift between our schema and the operator version actually installed.
"""
from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import jsonschema
import referencing
import yaml

from dlrm.errors import UserError
from launcher.config import DNS_1035
from launcher.plan import CONTAINER

SCHEMAS_DIR = Path(__file__).with_name("schemas")
BASE_URI = "https://dlrm-k8s.invalid/schemas/"
K8S = "k8s.json#/$defs/"
# (apiVersion, kind) -> the schema an object of that type must match.
SCHEMA_OF = {
    ("kubeflow.org/v1", "PyTorchJob"): "pytorchjob.json",
    ("sparkoperator.k8s.io/v1beta2", "SparkApplication"): "sparkapplication.json",
    ("batch/v1", "Job"): K8S + "io.k8s.api.batch.v1.Job",
    ("v1", "ConfigMap"): K8S + "io.k8s.api.core.v1.ConfigMap",
    ("v1", "PersistentVolume"): K8S + "io.k8s.api.core.v1.PersistentVolume",
    ("v1", "PersistentVolumeClaim"): K8S + "io.k8s.api.core.v1.PersistentVolumeClaim",
    ("v1", "ServiceAccount"): K8S + "io.k8s.api.core.v1.ServiceAccount",
}
REPLICA_TYPES = ("Master", "Worker")


@functools.lru_cache(maxsize=None)
def _registry() -> referencing.Registry:
    resources = []
    for name in ("k8s.json", "pytorchjob.json", "sparkapplication.json"):
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


def _schema_errors(validator: jsonschema.protocols.Validator, obj: dict, label: str) -> list[str]:
    errors = sorted(validator.iter_errors(obj), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    return [f"{label}: {_where(e.absolute_path)}: {e.message}" for e in errors]


def webhook_errors(job: dict, label: str) -> list[str]:
    """The Kubeflow training operator's validating webhook rules for a PyTorchJob."""
    errors = []
    name = (job.get("metadata") or {}).get("name", "")
    if not (isinstance(name, str) and len(name) <= 63 and DNS_1035.match(name)):
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
def crd_validator(path: str) -> jsonschema.Draft202012Validator:
    """A validator from a CustomResourceDefinition file (its v1, else first, version's schema)."""
    try:
        docs = [d for d in yaml.load_all(Path(path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) if d]
    except FileNotFoundError:
        raise UserError(f"--crd {path}: no such file") from None
    crds = [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
    if not crds:
        raise UserError(f"--crd {path}: no CustomResourceDefinition in it")
    versions = crds[0].get("spec", {}).get("versions") or []
    version = next((v for v in versions if v.get("name") == "v1"), versions[0] if versions else {})
    schema = (version.get("schema") or {}).get("openAPIV3Schema")
    if not schema:
        raise UserError(f"--crd {path}: version {version.get('name')!r} has no openAPIV3Schema")
    return jsonschema.Draft202012Validator(_strict(copy.deepcopy(schema)))


def validate_objects(objs: list[dict], crd: str | Path | None = None) -> list[str]:
    """Every problem in `objs`, as '<Kind>/<name>: <path>: <message>'; empty means valid."""
    errors: list[str] = []
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
        errors += _schema_errors(_validator(SCHEMA_OF[key]), obj, label)
        if key[1] == "PyTorchJob":
            errors += webhook_errors(obj, label)
            if crd is not None:
                errors += [f"{e} (CRD {Path(crd).name})" for e in _schema_errors(crd_validator(str(crd)), obj, label)]
    return errors


def load_objects(paths: list[str | Path]) -> list[tuple[str, list]]:
    """(file, objects) for each YAML file; unreadable or malformed files are UserErrors."""
    out = []
    for p in paths:
        try:
            docs = [d for d in yaml.safe_load_all(Path(p).read_text()) if d is not None]
        except FileNotFoundError:
            raise UserError(f"{p}: no such file") from None
        except yaml.YAMLError as e:
            raise UserError(f"{p}: not valid YAML: {str(e).splitlines()[0]}") from None
        out.append((str(p), docs))
    return out
