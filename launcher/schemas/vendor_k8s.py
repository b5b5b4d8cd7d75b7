"""Regenerate `k8s.json`: the strict Kubernetes schemas of the objects the launcher renders.

    pip download --no-deps kubernetes-validate==1.37.0 && unzip kubernetes_validate-*.whl
    python launcher/schemas/vendor_k8s.py kubernetes_validate/kubernetes-json-schema/v1.31.0-local-strict

kubernetes-validate ships every definition of every Kubernetes release (70 MB); we keep only the
closure of the few kinds we emit, without descriptions, so the launcher validates offline with
plain `jsonschema` and no extra dependency. "strict" = additionalProperties false everywhere,
which is what turns a misspelt field into an error instead of a silently pruned one.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOTS = {
    "io.k8s.api.core.v1.PodTemplateSpec",
    "io.k8s.api.core.v1.ConfigMap",
    "io.k8s.api.core.v1.PersistentVolume",
    "io.k8s.api.core.v1.PersistentVolumeClaim",
    "io.k8s.api.core.v1.ServiceAccount",
    "io.k8s.api.batch.v1.Job",
    "io.k8s.api.rbac.v1.Role",  # the admin bundle (launcher/admin.py)
    "io.k8s.api.rbac.v1.RoleBinding",
    # the admin bundle's image rule: GA in admissionregistration.k8s.io/v1 since Kubernetes 1.30
    "io.k8s.api.admissionregistration.v1.ValidatingAdmissionPolicy",
    "io.k8s.api.admissionregistration.v1.ValidatingAdmissionPolicyBinding",
    "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
}
PREFIXES = ("/api/_definitions.json#/$defs/", "#/$defs/")


def _strip(node, refs: set[str]):
    """Drop documentation, rewrite refs to this file, collect what they point at."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k in ("description", "x-kubernetes-group-version-kind"):
                continue
            prefix = next((p for p in PREFIXES if isinstance(v, str) and v.startswith(p)), None)
            if k == "$ref" and prefix:
                name = v[len(prefix):]
                refs.add(name)
                v = "#/$defs/" + name
            out[k] = _strip(v, refs)
        return out
    if isinstance(node, list):
        return [_strip(v, refs) for v in node]
    return node


def main(src: str) -> None:
    defs = json.loads((Path(src) / "_definitions.json").read_text())["$defs"]
    keep: dict = {}
    todo = sorted(ROOTS)
    while todo:
        name = todo.pop()
        if name in keep:
            continue
        refs: set[str] = set()
        keep[name] = _strip(defs[name], refs)
        todo.extend(sorted(refs - keep.keys()))
    out = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "https://dlrm-k8s.invalid/schemas/k8s.json", "source": Path(src).name,
           "$defs": dict(sorted(keep.items()))}
    dest = Path(__file__).with_name("k8s.json")
    dest.write_text(json.dumps(out, indent=None, sort_keys=True, separators=(",", ":")) + "\n")
    print(f"{dest}: {len(keep)} definitions, {dest.stat().st_size} bytes")


if __name__ == "__main__":
    main(sys.argv[1])
