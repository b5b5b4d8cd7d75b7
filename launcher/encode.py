"""Plan -> Kubernetes objects: the Jinja templates under `manifests/`, one per object kind. Pure.

    plan = plan_job(cfg, git_revision="abc123")   # launcher.build's plan, with .objects encoded

Templates run with StrictUndefined, and every config value goes through the `toyaml` filter (JSON,
which is YAML), so a value holding `:`, a newline, quotes or `{{` stays one scalar. Each template's
text is parsed back here, so a template that produces broken YAML fails loudly. `_helpers.j2`
holds the shared macros (names, labels, security contexts, the plan's pod as a pod template).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import jinja2
import yaml

from dlrm import __version__
from dlrm.config import to_dict
from dlrm.errors import ConfigError
from dlrm.io.fsutil import is_s3_uri, parse_s3_uri
from launcher import admin_policy, command as cmd, pods, trainjob
from launcher.build import build_plan
from launcher.config import JobConfig, kueue_queue
from launcher.resources import pod_resources
from launcher.run_identity import config_sha256
from launcher.names import DNS1035_LABEL
from launcher.plan import JobPlan

# A checkout reads the top-level manifests/; an installed wheel carries them as launcher/manifests.
MANIFESTS_DIR = next(p for p in (Path(__file__).resolve().parent.parent / "manifests",
                                 Path(__file__).resolve().parent / "manifests") if p.is_dir())


# libyaml's safe loader where PyYAML has it (the same documents, parsed ~10x faster), else PyYAML's own.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def toyaml(value) -> str:
    """One YAML scalar (or flow collection) that cannot break out of its place in the document."""
    return json.dumps(value, sort_keys=True, ensure_ascii=True)


def dns_label(text: str) -> str:
    """Used by the name macro: a rendered name that is not a DNS-1035 label is a config error."""
    if not DNS1035_LABEL.accepts(text):
        raise ConfigError(f"object name {text!r} ({len(text)} chars) is not a DNS-1035 label of at most 63 chars")
    return text


@functools.lru_cache(maxsize=1)  # compiled templates are kept: compiling them was half of a render
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


def _train_yaml(cfg: JobConfig, dataset: str) -> str:
    """The resolved TrainConfig as the pods see it: dataset (and a local out) point at the mounts."""
    train = to_dict(cfg.train)
    train["data"]["dataset"] = dataset
    train["data"]["verify"] = pods.dataset_verify(cfg)
    train["out"] = cmd.train_out(cfg.train.out)
    return yaml.safe_dump(train, sort_keys=False, default_flow_style=False)


def _context(cfg: JobConfig, plan, git_revision: str) -> dict:
    bucket, prefix = parse_s3_uri(cfg.dataset) if is_s3_uri(cfg.dataset) else ("", "")
    identity = cfg.s3.role_arn or cfg.admin.gcp_service_account
    service_account = cfg.cluster.service_account or (cfg.name if identity else "")
    if cfg.api == "trainjob" and cfg.trainjob.runtime_source == "admin":  # the admin's runtime names its own
        service_account = ""
    return {
        "cfg": cfg,
        "plan": plan,
        "version": __version__,
        "git_revision": git_revision,
        "config_hash": config_sha256(cfg),
        "train_yaml": _train_yaml(cfg, pods.dataset_path(cfg)),
        "bucket": bucket,
        "prefix": prefix + "/" if prefix else "",
        "dataset_claim": pods.mount_claim(cfg),
        "pv_name": f"{cfg.namespace}-{pods.mount_claim(cfg)}",
        "service_account": service_account,
        # A job on the admin's runtime that names no image runs the runtime's (launcher/admin_policy.py).
        "image_from_runtime": admin_policy.image_from_runtime(cfg),
        "image_env": admin_policy.IMAGE_ENV,
        "runtime_pins_image": False,  # launcher.admin's ClusterTrainingRuntime: its node container keeps its image
        "runtime_kind": "TrainingRuntime",  # launcher.admin renders the same template as a ClusterTrainingRuntime
        "per_job_volumes": pods.PER_JOB_VOLUMES,
        "stage_container": pods.STAGE_CONTAINER,
        "stage_env": [e.to_k8s() for e in pods.stage_env(cfg)] if cfg.storage.mode == "stage" else [],
        "env": [e.to_k8s() for e in pods.container_env(cfg)],
        "train_out": cmd.train_out(cfg.train.out),
        "resources": pod_resources(cfg),
        "kueue_queue": kueue_queue(cfg),  # CPU/memory totals, resolved from the per-GPU figures
        "pod_security_context": pods.pod_security(cfg),
        "container_security_context": pods.CONTAINER_SECURITY,
        "node_selector": pods.node_selector(cfg),
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
    admin_runtime = cfg.api == "trainjob" and cfg.trainjob.runtime_source == "admin"
    if cfg.s3.role_arn and not admin_runtime:
        names.append("serviceaccount")
    if cfg.kind == "train":
        # storage.mode=mount: the PV is cluster-scoped, so it and its claim come from the admin's bundle
        # (launcher/admin.py); a user's job only names the claim (pods.mount_claim).
        if cfg.api == "trainjob":  # the runtime first: the TrainJob's admission looks it up
            names += ["configmap", *([] if cfg.trainjob.cluster_runtime else ["trainingruntime"]), "trainjob"]
        else:
            names += ["configmap", "pytorchjob"]
        names += ["exportjob"] if cfg.export else []
    else:
        names.append("sparkapplication" if cfg.preprocess.engine == "spark" else "job")
    return names


def encode_objects(cfg: JobConfig, plan, git_revision: str = "unknown", templates: list[str] | None = None,
                   **context) -> list[dict]:
    """The Kubernetes objects of `plan` (made by launcher.build.build_plan from `cfg`), in apply order:
    the job's, or the named `templates` with `context` added (launcher.admin's bundle)."""
    env = _environment()
    ctx = {**_context(cfg, plan, git_revision), **context}
    objs = []
    for name in templates if templates is not None else _templates(cfg):
        text = env.get_template(f"{name}.yaml.j2").render(ctx)
        try:
            obj = yaml.load(text, Loader=SAFE_LOADER)
        except yaml.YAMLError as e:  # a template bug, not a user error: keep the traceback
            raise RuntimeError(f"manifests/{name}.yaml.j2 rendered invalid YAML: {e}\n{text}") from e
        objs.append(obj)
    return objs


def plan_job(cfg: JobConfig, git_revision: str = "unknown", tables: list[int] | None = None,
             hotness: list[int] | None = None) -> JobPlan:
    """The whole plan of a config: built (launcher.build.build_plan: see it for `tables`, `hotness`),
    then the objects that encode it, and what their ConfigMaps hold."""
    plan = build_plan(cfg, git_revision, tables, hotness)
    plan.objects = encode_objects(cfg, plan, git_revision)
    plan.config_maps = {o["metadata"]["name"]: dict(o.get("data") or {}) for o in plan.objects if o.get("kind") == "ConfigMap"}
    return plan
