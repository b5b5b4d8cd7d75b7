"""`python -m launcher admin --values site.yaml --out DIR`: what a cluster admin installs once, as a kustomize base.

    objs = bundle_objects(load_job_config("criteo-fl15", values=["site.yaml"]))   # pure: config -> objects
    write_bundle(objs, readme, Path("bundle"))      # kustomization.yaml + one file per object + README.md
    kubectl apply -k bundle

The bundle (every object offline-valid, launcher.validate):
  ClusterTrainingRuntime <admin.runtime>   the whole training pod (stage init container, /dev/shm, volumes,
                                           security contexts, placement, gang policy, restarts), rendered by
                                           the template and pod code of a job's own TrainingRuntime
  ConfigMap <admin.runtime>-config         the site's train.yaml: what a TrainJob that brings none trains with
  ValidatingAdmissionPolicy + Binding      <admin.runtime>-images: TrainJobs on the runtime run its image or
                                           one admin.allowed_images admits (launcher/admin_policy.py)
  Role + RoleBinding <admin.runtime>-users create/get/list/watch/delete trainjobs (nothing cluster-scoped)
  ServiceAccount                           s3.role_arn (IRSA) / admin.gcp_service_account (workload identity)
  PersistentVolume + PersistentVolumeClaim storage.mode=mount: the CSI-mounted S3 dataset (launcher.pods.mount_claim)
  ResourceFlavor, ClusterQueue, LocalQueue scheduling.queue with Kueue: examples to size
Users then render small TrainJobs with trainjob.cluster_runtime=<admin.runtime>, trainjob.runtime_source=admin:
each patches in only what varies per job (launcher/manifests/trainjob.yaml.j2).
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from dlrm.errors import ConfigError, UserError
from dlrm.io.fsutil import atomic_write, local_path
from dlrm.typed import parse_quantity
from launcher import admin_policy, command as cmd, names, trainjob
from launcher.build import build_plan
from launcher.config import JobConfig, kueue_queue
from launcher.encode import encode_objects
from launcher.pods import pod_devices
from launcher.render import file_name, to_yaml
from launcher.resources import pod_resources
from launcher.validate import KUEUE_API, validate_objects

KUSTOMIZATION = "kustomization.yaml"
README = "README.md"
# What `submit`, `status`, `logs`, `list` and `cancel` of a TrainJob on the admin's runtime send
# (docs/security.md): no trainingruntimes (the pod template is the admin's), no PVCs (the dataset's is the
# admin's), nothing cluster-scoped (submit's look-up of the ClusterTrainingRuntime is only warned about).
USER_RULES = [
    {"apiGroups": [trainjob.GROUP], "resources": ["trainjobs"], "verbs": ["create", "get", "list", "watch", "delete"]},
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "list", "delete"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
]


def runtime_config(site: JobConfig) -> JobConfig:
    """The site's config as the runtime's own job: a TrainJob on a TrainingRuntime named admin.runtime."""
    names.check_name("admin.runtime", site.admin.runtime, names.DNS1035_LABEL)
    for i, group in enumerate(site.admin.user_groups):
        if not group.strip():
            raise ConfigError(f"admin.user_groups[{i}]: empty; name a group of users who submit jobs (RoleBinding subject)")
    if not site.admin.user_groups:
        raise ConfigError("admin.user_groups: empty; name at least one group of users who submit jobs (RoleBinding subject)")
    if site.kind != "train":
        raise ConfigError(f"kind={site.kind}: the admin bundle holds a training runtime; use a training profile")
    return replace(site, name=site.admin.runtime, api="trainjob",
                   trainjob=replace(site.trainjob, cluster_runtime="", runtime_source="stock"))


def _times(quantity, n: int) -> str:
    """A Kubernetes quantity times n ('800Gi' x 2 -> '1600Gi')."""
    m = re.fullmatch(r"([0-9]+)([A-Za-z]*)", str(quantity))
    return f"{int(m.group(1)) * n}{m.group(2)}" if m else f"{parse_quantity(str(quantity)) * n:g}"


def kueue_quotas(cfg: JobConfig) -> dict[str, str]:
    """The example ClusterQueue's nominal quotas: `nodes` pods of the runtime, each with its requests and devices."""
    r, devices = pod_resources(cfg), pod_devices(cfg)
    return {"cpu": _times(r["cpu_request"], cfg.nodes), "memory": _times(r["memory_request"], cfg.nodes),
            **{k: _times(v, cfg.nodes) for k, v in devices.items()}}


def bundle_objects(site: JobConfig, git_revision: str = "unknown") -> list[dict]:
    """The bundle's objects for a site config, in apply order. Pure."""
    cfg = runtime_config(site)
    plan = build_plan(cfg, git_revision)
    templates = []
    if cfg.s3.role_arn or cfg.admin.gcp_service_account:
        templates.append("serviceaccount")
    if cfg.storage.mode == "mount":
        templates += ["persistentvolume", "persistentvolumeclaim"]
    templates += ["configmap", "trainingruntime", "validatingadmissionpolicy", "validatingadmissionpolicybinding",
                  "role", "rolebinding"]
    if kueue_queue(cfg):
        templates += ["resourceflavor", "clusterqueue", "localqueue"]
    runtime, kind = cfg.admin.runtime, "ClusterTrainingRuntime"
    # train_out: no run-output annotation on the runtime; each TrainJob carries its own run's
    return encode_objects(cfg, plan, git_revision, templates, runtime_kind=kind, train_out=cmd.OUTPUT_MOUNT,
                          users_role=f"{runtime}-users", user_rules=USER_RULES, kueue={"API_VERSION": KUEUE_API},
                          kueue_flavor=f"{runtime}-gpu", kueue_cluster_queue=runtime, kueue_quotas=kueue_quotas(cfg),
                          runtime_pins_image=True,
                          **admin_policy.policy_context(cfg, kind))


def kustomization(objs: list[dict]) -> str:
    return to_yaml([{"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "resources": [file_name(o) for o in objs]}])


def write_bundle(objs: list[dict], readme: str, out: Path) -> list[Path]:
    """kustomization.yaml, one <kind>-<name>.yaml per object and README.md in `out`, replacing an earlier
    bundle there whole (a folder holding anything else is refused, nothing of it touched)."""
    from launcher.cli_render import exchange

    files = {KUSTOMIZATION: kustomization(objs), README: readme, **{file_name(o): to_yaml([o]) for o in objs}}
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: not a folder")
    held = list(out.iterdir()) if out.is_dir() else []
    # An earlier bundle: a kustomization.yaml beside objects' YAML files and the README, nothing else.
    foreign = sorted(p.name for p in held if not (p.is_file() and (p.suffix == ".yaml" or p.name == README)))
    if held and (foreign or not (out / KUSTOMIZATION).is_file()):
        raise UserError(f"--out {out} holds files the admin bundle did not write ({', '.join(foreign[:3]) or 'no ' + KUSTOMIZATION}): "
                        f"write the bundle into a folder of its own (an earlier bundle there is replaced whole)")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.admin-", dir=out.parent))
    try:
        for name, text in files.items():
            atomic_write(stage / name, text)
        stage.chmod(0o755)
        if out.is_dir():
            exchange(stage, out)
        else:
            stage.rename(out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return [out / name for name in files]


def add_arguments(p: argparse.ArgumentParser, command: str = "admin") -> None:
    p.add_argument("--profile", default="criteo-fl15", help="profile the site values are layered over (default %(default)s)")
    p.add_argument("--values", action="append", default=[], metavar="FILE", help="the site's values file(s); repeatable")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides", help="override a field; repeatable")
    p.add_argument("--set-list", metavar="'K=V K2=V2 ...'", default="",
                   help="several --set in one string (make's SET), split as `render --set-list` splits it")
    p.add_argument("--out", metavar="DIR", required=True, help="folder for the kustomize base (`kubectl apply -k DIR`)")


def main(args: argparse.Namespace) -> int:
    from dlrm.training.runlog import git_revision
    from launcher.admin_readme import readme
    from launcher.cli_render import split_set_list
    from launcher.config import load_job_config, placeholder_fields

    out = local_path(args.out, "--out", "launcher admin", "write the bundle into a local folder and copy that")
    site = load_job_config(args.profile, values=args.values, overrides=split_set_list(args.set_list) + args.overrides)
    if placeholder_fields(site):  # the runtime's defaults: a TrainJob that names no dataset or output gets them
        print(f"warning: {', '.join(placeholder_fields(site))}: the profile's example buckets, the runtime's defaults; set "
              f"dataset / train.out in the site values", file=sys.stderr)
    objs = bundle_objects(site, git_revision(Path(__file__).resolve().parent))
    errors = validate_objects(objs)
    if errors:  # a rendering bug or a value no schema accepts: never hand it to the cluster
        raise UserError(f"the bundle's objects are invalid ({len(errors)} errors; nothing was written): " + "; ".join(errors))
    for path in write_bundle(objs, readme(runtime_config(site), objs), out):
        print(path, file=sys.stderr)
    print(f"next: kubectl apply -k {out}   (install what {out / README} lists first)")
    return 0
