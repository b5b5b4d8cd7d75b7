"""Objects -> YAML: a JobConfig's Kubernetes objects as the canonical, deterministic YAML stream.

    objs = render_objects(load_job_config("criteo-fl15"), git_revision="abc123")
    print(to_yaml(objs))

The objects come from launcher.encode (the plan, encoded by manifests/*.j2); `to_yaml` dumps the
parsed objects, so the same inputs give byte-identical YAML. Pure: no cluster, no clock.
"""
from __future__ import annotations

import re

import yaml

from launcher.config import JobConfig
from launcher.encode import plan_job


def render_objects(cfg: JobConfig, git_revision: str = "unknown") -> list[dict]:
    """The Kubernetes objects for `cfg`, in the order they must be applied. Pure."""
    return plan_job(cfg, git_revision).objects


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the ConfigMap's train.yaml) as literal blocks, so they read as files."""


_Dumper.add_representer(str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))


def to_yaml(objs: list[dict]) -> str:
    """A multi-document YAML stream, keys in template order, deterministic."""
    return "---\n".join(yaml.dump(o, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000) for o in objs)


def file_name(obj: dict) -> str:
    """`<kind>-<name>.yaml`, lowercase: one file per object for `render --out DIR`."""
    return f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"


# What `render --out` writes: NN-<kind>-<name>.yaml (NN: the order to apply them in). Only such files
# are a render's: `render --out` replaces them, `run-local DIR` reads them.
RENDERED_FILE = re.compile(r"^[0-9]{2,}-[a-z0-9]+-[a-z0-9.-]+\.yaml$")
