"""`python -m launcher render`: a job's Kubernetes objects as YAML, to stdout or one file per object.

    python -m launcher render --profile criteo-fl15 --nodes 2 --gpus 8 [--values my.yaml] [--set train.epochs=2] [--out DIR]

The job flags are shared with `submit` and `run-local` (add_job_arguments / job_from_args), so
the Makefile's NODES/GPUS/IMAGE/NAMESPACE/NAME mean the same thing for every command.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from dlrm.errors import UserError
from launcher.config import JobConfig, load_job_config
from launcher.render import file_name, render_objects, to_yaml
from launcher.validate import validate_objects


def add_job_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="criteo-fl15", help="profile name (launcher/profiles) or path to a YAML file")
    p.add_argument("--values", action="append", default=[], metavar="FILE", help="YAML file layered over the profile; repeatable")
    p.add_argument("--nodes", type=int, help="number of nodes (pods): 1 Master + NODES-1 Workers")
    p.add_argument("--gpus", type=int, help="GPUs per node (torchrun processes per pod)")
    p.add_argument("--image", help="training image (default dlrm-k8s-train:<version>)")
    p.add_argument("--namespace", help="Kubernetes namespace")
    p.add_argument("--name", help="job name (a DNS-1035 label)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override any config field, e.g. --set train.epochs=2 --set cluster.efa=4; repeatable")


def job_from_args(args: argparse.Namespace) -> JobConfig:
    """Profile <- --values <- the named flags <- --set (so --set wins), validated."""
    flags = {"nodes": args.nodes, "gpus_per_node": args.gpus, "image": args.image,
             "namespace": args.namespace, "name": args.name}
    # JSON is YAML: each flag's value keeps its type through dlrm.config.parse_override.
    overrides = [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None] + list(args.overrides)
    return load_job_config(args.profile, values=args.values, overrides=overrides)


def git_revision(cwd: str | Path = ".") -> str:
    """HEAD's commit, '-dirty' if the work tree differs; 'unknown' outside a git checkout."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=cwd, capture_output=True).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("-dirty" if dirty else "")


def render_job(args: argparse.Namespace) -> tuple[JobConfig, list[dict]]:
    """Config, objects, and the offline validation every rendered job must pass."""
    cfg = job_from_args(args)
    objs = render_objects(cfg, git_revision=git_revision(Path(__file__).resolve().parent))
    errors = validate_objects(objs)
    if errors:  # a rendering bug or a value no schema accepts: never hand it to the cluster
        raise UserError(f"rendered objects are invalid ({len(errors)} errors): " + "; ".join(errors))
    return cfg, objs


def add_arguments(p: argparse.ArgumentParser, command: str = "render") -> None:
    add_job_arguments(p)
    p.add_argument("--out", metavar="DIR", help="write NN-<kind>-<name>.yaml per object here instead of stdout")


def main(args: argparse.Namespace) -> int:
    _, objs = render_job(args)
    if not args.out:
        sys.stdout.write(to_yaml(objs))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, obj in enumerate(objs):
        path = out / f"{i:02d}-{file_name(obj)}"  # numbered: `kubectl apply -f DIR` applies in order
        path.write_text(to_yaml([obj]))
        print(path, file=sys.stderr)
    return 0
