"""docs/config-reference.md, generated from the typed config so it cannot drift from it.

    python -m launcher.config_reference            # rewrite docs/config-reference.md
    python -m launcher.config_reference --check    # exit 1 if the committed file differs

Every key of a job config (launcher.config.JobConfig, with dlrm.config.TrainConfig under `train.`):
its type, default and allowed values from the field's annotation (Literal choices, Range, Length,
ByteSize), what it means from the comment written beside the field in the source (or, for a field
without one, NOTES below), and what it renders to, per section (RENDERS). tests/test_config_reference.py
fails when a field has no description or the committed file is stale.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import sys
import textwrap
import types
import typing
from pathlib import Path

from dlrm.io.fsutil import atomic_write
from launcher import config as job_config

OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "config-reference.md"

# What a field means, for fields whose source has no comment beside them (dlrm/config.py is the
# trainer's; its comments are the first choice wherever they exist).
NOTES = {
    "kind": "train: a training job; preprocess: turn raw Criteo day files into the split-binary dataset",
    "name": "the job's name: every object is <name> or <name>-<suffix> (a DNS-1035 label after the suffix)",
    "namespace": "the namespace every object is created in",
    "image": "the training image (training pods and the export Job)",
    "nodes": "training nodes (pods): PyTorchJob Master + nodes-1 Workers, or the TrainJob's numNodes",
    "export_table_dtype": "export=true: the embedding tables' dtype in the exported model",
    "storage.claim": "storage.mode=pvc: the existing PersistentVolumeClaim holding `dataset`",
    "s3.region": "AWS_REGION in every pod (and the Mountpoint S3 volume's region)",
    "scheduling.gang": "gang scheduling: none, kueue (Kueue admits the whole job), volcano or scheduler-plugins (a PodGroup)",
    "cluster.node_selector": "nodeSelector of every pod (with nvidia.com/gpu.product from gpu_product)",
    "cluster.service_account": "serviceAccountName of the pods; empty: the namespace's default (or <name> with s3.role_arn)",
    "cluster.env": "extra env of the training container (names the launcher sets are refused)",
    "cluster.image_pull_policy": "imagePullPolicy of every container",
    "cluster.image_pull_secrets": "imagePullSecrets of every pod",
    "cluster.run_as_group": "runAsGroup and fsGroup of the pods (mounted volumes writable by it)",
    "cluster.ttl_seconds_after_finished": "how long a finished job's objects stay (PyTorchJob runPolicy, the TrainJob's JobSet)",
    "cluster.backoff_limit": "restarts before the job fails (PyTorchJob backoffLimit, JobSet failurePolicy.maxRestarts)",
    "cluster.clean_pod_policy": "PyTorchJob cleanPodPolicy: which pods go when the job ends (a TrainJob takes only None)",
    "preprocess.image": "the preprocessing image (the batch Job or the SparkApplication)",
    "preprocess.frequency_threshold": "ids seen fewer times than this map to one id per feature (Criteo fl15: 15)",
    "preprocess.spark.spark_version": "SparkApplication sparkVersion",
    "preprocess.spark.driver_cores": "the Spark driver's cores",
    "preprocess.spark.executors": "Spark executor instances",
    "preprocess.spark.executor_cores": "each Spark executor's cores",
    "preprocess.spark.executor_memory": "each Spark executor's memory (Spark's size format)",
    "preprocess.spark.service_account": "the Spark driver's service account (it creates the executors)",
    "train.epochs": "passes over the training split",
    "train.log_every": "a progress line and a metrics record every this many steps",
    "train.resume": "continue from the newest complete checkpoint (the launcher's pods always pass --resume)",
    "train.device": "auto: CUDA when available, else CPU",
    "train.tf32": "allow TF32 matmuls on Ampere and later GPUs",
    "train.plot": "write metrics.png with the run's curves at the end",
    "train.model.embedding_dim": "width of every embedding row (and, for dot, the bottom MLP's last layer)",
    "train.model.bottom_mlp": "the dense features' MLP layer widths",
    "train.model.interaction": "how dense and sparse features meet: dot products, concatenation, or DCN cross layers",
    "train.model.dcn_low_rank_dim": "interaction=dcn: rank r of each cross layer",
    "train.optim.optimizer": "sgd (NVIDIA's recipe) or adagrad (MLPerf DCNv2's)",
    "train.optim.lr": "peak learning rate",
    "train.optim.warmup_steps": "linear warmup from 0 to lr over this many steps",
    "train.optim.decay_start_step": "the step the polynomial decay starts",
    "train.optim.decay_power": "exponent of the polynomial decay",
    "train.optim.decay_end_lr": "learning rate at the end of the decay",
    "train.optim.adagrad_eps": "optimizer=adagrad: epsilon",
    "train.optim.adagrad_initial_accumulator": "optimizer=adagrad: the accumulators' initial value",
    "train.data.batch_size": "global batch size (split over the ranks)",
    "train.data.eval_batch_size": "global batch size of evaluation",
}

# What each section of the config becomes in the rendered objects (launcher/encode.py, manifests/).
RENDERS = {
    "": "the job's objects and their pods (see each key)",
    "resources": "the containers' resources.requests/limits; the /dev/shm emptyDir's sizeLimit",
    "train": "the ConfigMap <name>-config's train.yaml, which every rank reads (`dlrm train --config /etc/dlrm/train.yaml`)",
    "storage": "the dataset and output volumes (PVC, hostPath, the admin bundle's Mountpoint S3 PVC, staging)",
    "s3": "pod env (AWS_REGION, AWS_ENDPOINT_URL, the Secret's keys) and an IRSA ServiceAccount",
    "cluster": "the pods' placement, security context, env and the job's run policy",
    "scheduling": "Kueue labels, Volcano/coscheduling gang policies and schedulerName, priorityClassName",
    "preprocess": "kind=preprocess: the batch Job or SparkApplication",
    "trainjob": "api=trainjob: the TrainJob's runtimeRef and the TrainingRuntime (or runtime patches)",
    "admin": "`python -m launcher admin`: the admin bundle's ClusterTrainingRuntime, RBAC and ServiceAccount (launcher/admin.py)",
}


def _comments(cls: type) -> dict[str, str]:
    """{field: the comment beside it in the source}: the lines just above the field and the one after it."""
    lines, _ = inspect.getsourcelines(cls)
    body = next(n for n in ast.parse(textwrap.dedent("".join(lines))).body if isinstance(n, ast.ClassDef))
    out: dict[str, str] = {}
    prev_end = body.lineno  # the class line: comments before the first field are its
    for node in body.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            above = []
            for text in reversed(lines[prev_end:node.lineno - 1]):
                if not text.strip().startswith("#"):
                    break
                above.insert(0, text.strip().lstrip("#").strip())
            code = lines[node.end_lineno - 1]
            trailing = code.split("  # ", 1)[1].strip() if "  # " in code else ""
            out[node.target.id] = " ".join(t for t in above + [trailing] if t)
        prev_end = node.end_lineno
    return out


def _type(tp) -> tuple[str, str]:
    """(type name, allowed values) of an annotation."""
    if typing.get_origin(tp) is typing.Annotated:
        base, *meta = typing.get_args(tp)
        name, allowed = _type(base)
        rules = [m.expects(base) for m in meta if hasattr(m, "expects")]
        return name, "; ".join(r for r in [allowed, *rules] if r)
    if typing.get_origin(tp) is typing.Literal:
        return "str", "one of " + ", ".join(f"`{a}`" for a in typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        parts = [_type(a) for a in typing.get_args(tp)]
        return " or ".join(p[0] for p in parts), "; ".join(p[1] for p in parts if p[1])
    origin = typing.get_origin(tp)
    if origin in (list, dict):
        args = [_type(a) for a in typing.get_args(tp)]
        name = f"{origin.__name__}[{', '.join(a[0] for a in args)}]"
        return name, "; ".join(f"each {'value' if origin is dict else 'item'}: {a[1]}" for a in args[-1:] if a[1])
    return getattr(tp, "__name__", str(tp)), ""


def _default(f: dataclasses.Field):
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return "" if value == "" else json.dumps(value)


def fields(cls: type = job_config.JobConfig, prefix: str = "") -> list[dict]:
    """Every leaf field under `cls`, depth first: key, type, default, allowed, note, section."""
    hints = typing.get_type_hints(cls, include_extras=True)
    notes = _comments(cls)
    out = []
    for f in dataclasses.fields(cls):
        key, tp = prefix + f.name, hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += fields(tp, key + ".")
            continue
        name, allowed = _type(tp)
        out.append({"key": key, "type": name, "default": _default(f), "allowed": allowed,
                    "note": notes.get(f.name) or NOTES.get(key, ""), "section": key.split(".")[0] if "." in key else ""})
    return out


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _code(text: str) -> str:
    return f"`{_cell(text)}`" if text else ""


def render() -> str:
    rows = fields()
    out = ["# Job config reference", "",
           "Every key of a job config (a profile, a `--values` file, `--set key=value`), generated by",
           "`python -m launcher.config_reference` from `launcher/config.py` (and `dlrm/config.py` for `train.*`):",
           "do not edit by hand. Sizes are Kubernetes quantities (`80Gi`, `500m`); an empty default means unset.", ""]
    for section in dict.fromkeys(r["section"] for r in rows):
        out += [f"## {section or 'top level'}", "", f"Renders to: {RENDERS[section]}.", "",
                "| key | type | default | allowed | what it is |", "| --- | --- | --- | --- | --- |"]
        out += [f"| `{r['key']}` | {_cell(r['type'])} | {_code(r['default'])} | {_cell(r['allowed'])} | {_cell(r['note'])} |"
                for r in rows if r["section"] == section]
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launcher.config_reference", description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if the committed file differs from the generated one")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        same = OUTPUT.is_file() and OUTPUT.read_text() == text
        print(f"{OUTPUT}: {'up to date' if same else 'stale: run python -m launcher.config_reference'}")
        return 0 if same else 1
    atomic_write(OUTPUT, text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
