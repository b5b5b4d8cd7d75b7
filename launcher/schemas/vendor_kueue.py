"""Regenerate `kueue.json`: strict schemas of the Kueue objects the admin bundle renders
(ResourceFlavor, ClusterQueue, LocalQueue, `kueue.x-k8s.io/v1beta2`), from Kueue's own CRDs.

    git clone --branch v0.19.2 https://github.com/kubernetes-sigs/kueue /tmp/kueue
    python launcher/schemas/vendor_kueue.py /tmp/kueue/config/components/crd/bases

Each CRD's v1beta2 openAPIV3Schema is made strict the way `launcher validate` makes a CRD strict
(launcher.validate._strict: an unknown field is an error), descriptions and `status` dropped.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

VERSION = "v1beta2"
KINDS = {"ResourceFlavor": "resourceflavors", "ClusterQueue": "clusterqueues", "LocalQueue": "localqueues"}


def _strip(node):
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def main(src: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from launcher.validate import _strict

    defs = {}
    for kind, plural in KINDS.items():
        crd = yaml.safe_load((Path(src) / f"kueue.x-k8s.io_{plural}.yaml").read_text())
        version = next(v for v in crd["spec"]["versions"] if v["name"] == VERSION)
        schema = _strip(version["schema"]["openAPIV3Schema"])
        schema["properties"].pop("status", None)
        schema["properties"]["apiVersion"] = {"const": f"kueue.x-k8s.io/{VERSION}"}
        schema["properties"]["kind"] = {"const": kind}
        schema["properties"]["metadata"] = {"$ref": "k8s.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
        schema["required"] = sorted({"apiVersion", "kind", "metadata", *schema.get("required", [])})
        defs[kind] = _strict(schema)
    out = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "https://dlrm-k8s.invalid/schemas/kueue.json",
           "source": f"kubernetes-sigs/kueue config/components/crd/bases, {VERSION}", "$defs": defs}
    dest = Path(__file__).with_name("kueue.json")
    dest.write_text(json.dumps(out, indent=None, sort_keys=True, separators=(",", ":")) + "\n")
    print(f"{dest}: {', '.join(defs)}, {dest.stat().st_size} bytes")


if __name__ == "__main__":
    main(sys.argv[1])
