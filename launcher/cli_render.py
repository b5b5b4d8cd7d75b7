"""`python -m launcher render`: a job's Kubernetes objects as YAML, to stdout or one file per object.

    python -m launcher render --profile criteo-fl15 --nodes 2 --gpus 8 [--values my.yaml] [--set train.epochs=2] [--out DIR]

The job flags are shared with `submit`, `run-local` and images/docker_job.py (add_job_arguments),
and all of them get their job from one function, `plan_from_args`: flags -> JobConfig -> JobPlan
-> offline validation. So the Makefile's NODES/GPUS/IMAGE/NAMESPACE/NAME mean the same thing for
every command, and what `render` prints is what `submit` sends and what `run-local` runs.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from dlrm.errors import UserError
from dlrm.io.fsutil import atomic_write, local_path
from dlrm.training.runlog import git_revision  # one definition: the trainer records it too (run.json)
from launcher.config import JobConfig, load_job_config, placeholder_fields
from launcher.encode import plan_job
from launcher.output_check import check_output
from launcher.plan import JobPlan
from launcher.render import RENDERED_FILE, file_name, to_yaml
from launcher.validate import validate_objects


def add_job_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="criteo-fl15", help="profile name (launcher/profiles) or path to a YAML file")
    p.add_argument("--values", action="append", default=[], metavar="FILE", help="YAML file layered over the profile; repeatable")
    p.add_argument("--nodes", type=int, help="number of nodes (pods): 1 Master + NODES-1 Workers")
    p.add_argument("--gpus", type=int, help="GPUs per node (torchrun processes per pod)")
    p.add_argument("--image", help="training image (default dlrm-k8s-train:<version>)")
    p.add_argument("--namespace", help="Kubernetes namespace")
    p.add_argument("--name", help="job name (a DNS-1035 label)")
    p.add_argument("--api", choices=("pytorchjob", "trainjob"),
                   help="job API: PyTorchJob (Kubeflow training operator v1, the default) or TrainJob (Kubeflow Trainer v2)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override any config field, e.g. --set train.epochs=2 --set cluster.fabric=efa; a dot inside a "
                        "key is escaped as in Helm: --set 'cluster.pod.labels.topology\\.kubernetes\\.io/zone=us-east-1a'; repeatable")
    p.add_argument("--set-list", metavar="'K=V K2=V2 ...'", default="",
                   help="several --set in one string (make's SET), split at whitespace outside {} [] and quotes, so "
                        "'cluster.node_selector={pool: gpu-a}' stays one; applied before the --set flags")
    p.add_argument("--resume", action="store_true",
                   help="continue the run already in the job's output though its config differs (train.resume); without it "
                        "the job continues only its own run (same name and config) and refuses to train over another")
    p.add_argument("--feature-spec", metavar="FILE|s3://...",
                   help="the dataset's feature_spec.yaml, read for the embedding table sizes (instead of train_tables)")
    p.add_argument("--crd", metavar="FILE", help="validate the job of the kind this CRD defines against it: a PyTorchJob "
                                                 "instead of the vendored CRD (launcher/schemas/kubeflow.org_pytorchjobs.yaml), "
                                                 "or a TrainJob (Trainer's trainer.kubeflow.org_trainjobs.yaml)")


_OPEN, _CLOSE = "{[", {"}": "{", "]": "["}


def split_set_list(text: str) -> list[str]:
    """'a=1 b={x: 1, y: 2} c="p q"' -> ['a=1', 'b={x: 1, y: 2}', 'c="p q"']: words split at whitespace
    outside braces, brackets and quoted scalars (make's SET: a shell would split the flow value)."""
    words, word, stack, quote = [], "", [], ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"" and word[-1:] in ("", "=", "{", "[", ",", ":", " "):  # a YAML quoted scalar, not it's
            quote = ch
        elif ch in _OPEN:
            stack.append(ch)
        elif ch in _CLOSE:
            if not stack or stack.pop() != _CLOSE[ch]:
                raise UserError(f"--set-list {text!r}: unbalanced {ch!r}; expected KEY=VALUE words, a value's {{}} and [] balanced")
        elif ch.isspace() and not stack:
            words, word = words + [word] * bool(word), ""
            continue
        word += ch
    if quote or stack:
        raise UserError(f"--set-list {text!r}: unclosed {quote or stack[-1]!r}; expected KEY=VALUE words, a value's quotes, {{}} and [] closed")
    return words + [word] * bool(word)


def job_from_args(args: argparse.Namespace) -> JobConfig:
    """Profile <- --values <- the named flags <- --set (so --set wins), validated."""
    flags = {"nodes": args.nodes, "gpus_per_node": args.gpus, "image": args.image,
             "namespace": args.namespace, "name": args.name, "api": args.api}
    # JSON is YAML: each flag's value keeps its type through dlrm.config.parse_override.
    overrides = [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]
    overrides += split_set_list(getattr(args, "set_list", "")) + list(args.overrides)
    if getattr(args, "resume", False):
        overrides.append("train.resume=true")
    return load_job_config(args.profile, values=args.values, overrides=overrides)


def feature_spec_tables(location: str) -> tuple[list[int], list[int]]:
    """(table sizes, ids per row) from a feature_spec.yaml named explicitly: a local file, or s3://bucket/.../feature_spec.yaml."""
    from dlrm.data.spec import SPEC_FILE, FeatureSpec
    from dlrm.io.fsutil import is_s3_uri

    if not is_s3_uri(location):
        spec = FeatureSpec.load(location)
        return spec.table_sizes, spec.table_hotness
    import tempfile

    from dlrm.io.storage import open_store

    parent, _, key = location.rstrip("/").rpartition("/")
    if key != SPEC_FILE:  # a dataset prefix: its spec
        parent, key = location.rstrip("/"), SPEC_FILE
    try:
        data = open_store(parent).get_bytes(key)
    except FileNotFoundError:
        raise UserError(f"--feature-spec {location}: no {SPEC_FILE} at {parent}/{key}") from None
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / SPEC_FILE).write_bytes(data)
        try:
            spec = FeatureSpec.load(Path(tmp) / SPEC_FILE)
            return spec.table_sizes, spec.table_hotness
        except UserError as e:  # name the object, not the temp copy
            raise type(e)(str(e).replace(str(Path(tmp) / SPEC_FILE), f"{parent}/{key}")) from None


def plan_from_args(args: argparse.Namespace) -> JobPlan:
    """Flags -> config -> plan, refused unless its objects validate and its readable run output holds no
    other run (launcher.output_check): render, submit, run-local and images/docker_job.py all get their
    job here, and report a bad one the same way."""
    cfg = job_from_args(args)
    tables, hotness = feature_spec_tables(args.feature_spec) if getattr(args, "feature_spec", None) else (None, None)
    plan = plan_job(cfg, git_revision=git_revision(Path(__file__).resolve().parent), tables=tables, hotness=hotness)
    errors = validate_objects(plan.objects, crd=getattr(args, "crd", None))
    if errors:  # a rendering bug or a value no schema accepts: never hand it to the cluster
        raise UserError(f"rendered objects are invalid ({len(errors)} errors; nothing was written or submitted): " + "; ".join(errors))
    if f"train.out={cfg.train.out}" not in placeholder_fields(cfg):  # a profile's example bucket has its own warning
        check_output(cfg)  # another experiment's run in a readable output: refused now, not after the pods start
    return plan


def add_arguments(p: argparse.ArgumentParser, command: str = "render") -> None:
    add_job_arguments(p)
    p.add_argument("--out", metavar="DIR", help="write NN-<kind>-<name>.yaml per object here instead of stdout")


def write_rendered(objs: list[dict], out: Path) -> list[Path]:
    """One numbered file per object in `out`, replacing an earlier render there whole and at once:
    `kubectl apply -f DIR` sees the old render or the new one, never stale files of the old beside
    the new. A folder holding anything render did not write is refused (nothing of it is touched)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: not a folder")
    foreign = sorted(p.name for p in out.iterdir() if not (RENDERED_FILE.match(p.name) and p.is_file())) if out.is_dir() else []
    if foreign:
        raise UserError(f"--out {out} holds files render did not write ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}): "
                        f"render into a folder of its own (an earlier render there is replaced whole)")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.render-", dir=out.parent))
    try:
        names = [f"{i:02d}-{file_name(obj)}" for i, obj in enumerate(objs)]  # numbered: `kubectl apply -f DIR` applies in order
        for name, obj in zip(names, objs):
            atomic_write(stage / name, to_yaml([obj]))
        stage.chmod(0o755)  # mkdtemp's 0700 would hide the render from everyone else
        if out.is_dir():
            exchange(stage, out)  # stage now holds the earlier render
        else:
            os.rename(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return [out / name for name in names]


def exchange(a: Path, b: Path) -> None:
    """Swap two folders at once (Linux renameat2 RENAME_EXCHANGE); elsewhere two renames, with a
    moment between them where `b` is missing (never a mix of both)."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    at_fdcwd, rename_exchange = -100, 2
    if renameat2 is not None and renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return
    aside = a.with_name(a.name + ".old")
    os.rename(b, aside)
    os.rename(a, b)
    os.rename(aside, a)


def main(args: argparse.Namespace) -> int:
    out = args.out and local_path(args.out, "--out", "launcher render", "render into a local folder and copy that, "
                                  "or apply stdout: render | kubectl apply -f -")
    plan = plan_from_args(args)
    objs = plan.objects
    placeholders = placeholder_fields(job_from_args(args))
    if placeholders:  # shown as the profile has them; `submit` refuses them
        print(f"warning: {', '.join(placeholders)}: the profile's example buckets; set dataset / train.out to yours "
              f"before submitting", file=sys.stderr)
    if not out:
        sys.stdout.write(to_yaml(objs))
        return 0
    for path in write_rendered(objs, out):
        print(path, file=sys.stderr)
    return 0
