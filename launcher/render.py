"""Pure rendering: a JobConfig in, the ordered list of Kubernetes objects out. No cluster, no clock.

    objs = render_objects(load_job_config("criteo-fl15"), git_revision="abc123")
    print(to_yaml(objs))

Each object kind has one Jinja template under `manifests/`; `_helpers.j2` holds the shared macros
(names, labels, security contexts). Templates run with StrictUndefined, and every config value
goes through the `toyaml` filter (JSON, which is YAML), so a value holding `:`, a newline, quotes
or `{{` stays one scalar. Each template's text is parsed back here, so a template that produces
broken YAML fails loudly, and `to_yaml` dumps the parsed objects so the output is canonical:
the same inputs give byte-identical YAML.
"""
from __future__ import annotations

import json
from pathlib import Path

import jinja2
import yaml

from dlrm import __version__
from dlrm.config import to_dict
from dlrm.errors import ConfigError
from dlrm.io.fsutil import is_s3_uri, parse_s3_uri
from launcher import command as cmd, pods, trainjob
from launcher.config import JobConfig
from launcher.run_identity import config_sha256
from launcher.names import DNS1035_LABEL

# A checkout reads the top-level manifests/; an installed wheel carries them as launcher/manifests.
MANIFESTS_DIR = next(p for p in (Path(__file__).resolve().parent.parent / "manifests",
                                 Path(__file__).resolve().parent / "manifests") if p.is_dir())


def toyaml(value) -> str:
    """One YAML scalar (or flow collection) that cannot break out of its place in the document."""
    return json.dumps(value, sort_keys=True, ensure_ascii=True)


def dns_label(text: str) -> str:
    """Used by the name macro: a rendered name that is not a DNS-1035 label is a config error."""
    if not DNS1035_LABEL.accepts(text):
        raise ConfigError(f"object name {text!r} ({len(text)} chars) is not a DNS-1035 label of at most 63 chars")
    return text


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(MANIFESTS_DIR)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["toyaml"] = toyaml
    env.globals["dns_label"] = dns_label
    return env


config_hash = config_sha256  # one definition (launcher.run_identity): the run id is derived from it


def _train_yaml(cfg: JobConfig, dataset: str) -> str:
    """The resolved TrainConfig as the pods see it: dataset (and a local out) point at the mounts."""
    train = to_dict(cfg.train)
    train["data"]["dataset"] = dataset
    train["data"]["verify"] = pods.dataset_verify(cfg)
    train["out"] = cmd.train_out(cfg.train.out)
    return yaml.safe_dump(train, sort_keys=False, default_flow_style=False)


def _context(cfg: JobConfig, plan, git_revision: str) -> dict:
    bucket, prefix = parse_s3_uri(cfg.dataset) if is_s3_uri(cfg.dataset) else ("", "")
    service_account = cfg.cluster.service_account or (cfg.name if cfg.s3.role_arn else "")
    return {
        "cfg": cfg,
        "plan": plan,
        "version": __version__,
        "git_revision": git_revision,
        "config_hash": config_hash(cfg),
        "train_yaml": _train_yaml(cfg, pods.dataset_path(cfg)),
        "bucket": bucket,
        "prefix": prefix + "/" if prefix else "",
        "pv_name": f"{cfg.namespace}-{cfg.name}-dataset",
        "service_account": service_account,
        "env": [e.to_k8s() for e in pods.container_env(cfg)],
        "train_out": cmd.train_out(cfg.train.out),
        "pod_security_context": pods.pod_security(cfg),
        "container_security_context": pods.CONTAINER_SECURITY,
        "node_selector": dict(sorted({**cfg.cluster.node_selector,
                                       **({"nvidia.com/gpu.product": cfg.cluster.gpu_product} if cfg.cluster.gpu_product else {})}.items())),
        "cmd": cmd,
        "tj": trainjob,
        **_preprocess_context(cfg),
    }


def _preprocess_context(cfg: JobConfig) -> dict:
    """Input and output of kind=preprocess: s3:// passes through, folders are mounted."""
    pp = cfg.preprocess
    io = [{"volume": "input", "location": pp.input, "mount": cmd.PREPROCESS_INPUT, "read_only": True},
          {"volume": "output", "location": pp.output, "mount": cmd.PREPROCESS_OUTPUT, "read_only": False}]
    for entry in io:
        entry["s3"] = is_s3_uri(entry["location"])
        entry["path"] = entry["location"] if entry["s3"] else entry["mount"]
    inp, out = io[0]["path"], io[1]["path"]
    return {
        "preprocess_io": io,
        "preprocess_command": cmd.PREPROCESS_COMMAND + cmd.preprocess_args(inp, out, pp.frequency_threshold, "local",
                                                                           pp.vocabulary_days),
        "spark_arguments": ["preprocess", *cmd.preprocess_args(inp, out, pp.frequency_threshold, "spark",
                                                               pp.vocabulary_days)],
    }


def _templates(cfg: JobConfig) -> list[str]:
    """Which objects this config needs, in apply order."""
    names = []
    if cfg.s3.role_arn:
        names.append("serviceaccount")
    if cfg.kind == "train":
        if cfg.storage.mode == "mount":
            names += ["persistentvolume", "persistentvolumeclaim"]
        if cfg.api == "trainjob":  # the runtime first: the TrainJob's admission looks it up
            names += ["configmap", *([] if cfg.trainjob.cluster_runtime else ["trainingruntime"]), "trainjob"]
        else:
            names += ["configmap", "pytorchjob"]
        names += ["exportjob"] if cfg.export else []
    else:
        names.append("sparkapplication" if cfg.preprocess.engine == "spark" else "job")
    return names


def encode_objects(cfg: JobConfig, plan, git_revision: str = "unknown") -> list[dict]:
    """The Kubernetes objects of `plan` (made by launcher.plan.plan_job from `cfg`), in apply order."""
    env = _environment()
    ctx = _context(cfg, plan, git_revision)
    objs = []
    for name in _templates(cfg):
        text = env.get_template(f"{name}.yaml.j2").render(ctx)
        try:
            obj = yaml.safe_load(text)
        except yaml.YAMLError as e:  # a template bug, not a user error: keep the traceback
            raise RuntimeError(f"manifests/{name}.yaml.j2 rendered invalid YAML: {e}\n{text}") from e
        objs.append(obj)
    return objs


def render_objects(cfg: JobConfig, git_revision: str = "unknown") -> list[dict]:
    """The Kubernetes objects for `cfg`, in the order they must be applied. Pure."""
    from launcher.plan import plan_job

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
