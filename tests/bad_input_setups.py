"""The setup recipes of tests/bad_inputs/*.yaml (its `setup:` key): each builds one kind of bad input.

Used by tests/test_bad_inputs.py, which runs the rows; add a recipe here only when no existing one
can build the input.
"""
from __future__ import annotations

import contextlib
import gzip
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml


ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300  # one row's command; a hung S3 endpoint outlives it


@dataclass
class Ctx:
    """What a recipe builds: placeholder values, extra env, and checks to run after the command."""

    tmp: Path
    stack: contextlib.ExitStack
    values: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    after: list = field(default_factory=list)  # callables run after the command: nothing half-made left


def _dataset(ctx: Ctx, name: str = "ds") -> Path:
    from datasets import make_dataset

    root = ctx.tmp / name
    make_dataset(root, rows=1024, test_rows=512)
    ctx.values["dataset"] = str(root)
    return root


def setup_none(ctx: Ctx, args: dict) -> None:
    if args:
        raise ValueError(f"setup none takes no args, got {args}")


def setup_dataset(ctx: Ctx, args: dict) -> None:
    """A small valid dataset at {dataset}, then at most one kind of damage from `args`."""
    _damage(_dataset(ctx), args)


def _damage(root: Path, args: dict) -> None:
    """Apply `args` (ops, in order) to the dataset at `root`."""
    from dlrm.data.manifest import Manifest, Entry, sha256_file, write_record
    from dlrm.data.spec import FeatureSpec

    spec_file = root / "feature_spec.yaml"
    for op, a in args.items():
        if op == "truncate":
            path = root / a["file"]
            os.truncate(path, path.stat().st_size - a["bytes"])
        elif op == "append":
            with open(root / a["file"], "ab") as fh:
                fh.write(b"\x01" * a["bytes"])
        elif op == "write_id":  # one id, in the dtype the spec gives the file
            spec = FeatureSpec.load(root)
            dtype = spec.dtypes[Path(a["file"]).name]
            ids = np.fromfile(root / a["file"], dtype)
            ids[a["row"]] = a["value"]
            ids.tofile(root / a["file"])
        elif op == "remove":
            (root / a).unlink()
        elif op == "poke":  # raw bytes at an offset: a label byte of 2, a float16 NaN
            with open(root / a["file"], "r+b") as fh:
                fh.seek(a["offset"])
                fh.write(bytes.fromhex(a["hex"]))
        elif op == "empty_split":  # every file of the split cut to 0 bytes: a split of 0 rows
            for f in (root / a).iterdir():
                os.truncate(f, 0)
        elif op == "move_out":  # a file moved outside the dataset folder, reached through the spec
            src, outside = root / a["file"], root.parent / "outside" / Path(a["file"]).name
            outside.parent.mkdir(exist_ok=True)
            src.rename(outside)
            if a["how"] == "symlink":
                src.symlink_to(outside)
                continue
            raw = yaml.safe_load(spec_file.read_text())
            name = str(outside) if a["how"] == "absolute" else os.path.relpath(outside, root)
            for chunks in raw["source_spec"].values():
                for ch in chunks:
                    ch["files"] = [name if f == a["file"] else f for f in ch["files"]]
            spec_file.write_text(yaml.safe_dump(raw, sort_keys=False))
        elif op == "spec_set":
            raw = yaml.safe_load(spec_file.read_text())
            node = raw
            for key in a["path"][:-1]:
                node = node[key]
            node[a["path"][-1]] = a["value"]
            spec_file.write_text(yaml.safe_dump(raw, sort_keys=False))
        elif op == "spec_delete":
            raw = yaml.safe_load(spec_file.read_text())
            node = raw
            for key in a[:-1]:
                node = node[key]
            del node[a[-1]]
            spec_file.write_text(yaml.safe_dump(raw, sort_keys=False))
        elif op == "spec_text":
            spec_file.write_text(a)
        elif op == "manifest":  # a copy as pull leaves it: _manifest.json, and the .verified record if a == "verified"
            files = sorted(p for p in root.rglob("*") if p.is_file())
            data = Manifest(tuple(Entry(p.relative_to(root).as_posix(), p.stat().st_size, sha256_file(p))
                                  for p in files)).to_bytes()
            (root / "_manifest.json").write_bytes(data)
            if a == "verified":
                write_record(root, data)
        elif op == "flip_byte":  # same size, other content (and a newer mtime, as any write gives)
            path = root / a["file"]
            blob = bytearray(path.read_bytes())
            blob[a["offset"]] ^= 0xFF
            path.write_bytes(bytes(blob))
        elif op == "symlink":  # {name: path in the dataset, target: where it points (relative to the dataset)}
            (root / a["name"]).symlink_to(a["target"])
        elif op == "outside_file":  # a file beside the dataset folder, for specs and links to point at
            (root.parent / a).write_bytes(b"\0" * 64)
        elif op == "fifo":
            os.mkfifo(root / a)
        elif op == "raw_name":  # a file whose name is these bytes (hex): not UTF-8, control characters...
            with open(os.path.join(os.fsencode(root), bytes.fromhex(a)), "wb") as fh:
                fh.write(b"x")
        else:
            raise ValueError(f"setup dataset: unknown op {op!r}")


def setup_run(ctx: Ctx, args: dict) -> None:
    """A dataset at {dataset} and a finished tiny run at {tmp}/run (checkpoints at steps 2 and 4),
    then damage: `flip`/`truncate` {file, which: newest|all} in checkpoints, a `lock` held by a
    live process (this one), or `other_dataset` (make_dataset's arguments) at {other}."""
    import io
    import json

    from dlrm.config import TrainConfig, load_config
    from dlrm.training.train import BUILTIN_CONFIGS, train

    root, run = _dataset(ctx), ctx.tmp / "run"
    cfg = load_config(TrainConfig, files=[BUILTIN_CONFIGS / "tiny.yaml"],
                      overrides=[f"data.dataset={root}", f"out={run}", "checkpoint_every=2"])
    with contextlib.redirect_stdout(io.StringIO()):
        train(cfg)
    ckpts = sorted((run / "checkpoints").glob("ckpt-*"))
    for op, a in args.items():
        if op == "other_dataset":  # a second dataset at {other}, of another shape
            from datasets import make_dataset

            make_dataset(ctx.tmp / "other", rows=512, test_rows=256, **a)
            ctx.values["other"] = str(ctx.tmp / "other")
            continue
        if op == "lock":
            from dlrm.training.runlock import LOCK, _me

            (run / LOCK).write_text(json.dumps(_me()))
            continue
        for ckpt in (ckpts if a.get("which") == "all" else ckpts[-1:]):
            path = ckpt / a["file"]
            if op == "flip":
                data = bytearray(path.read_bytes())
                data[-100] ^= 0xFF
                path.write_bytes(bytes(data))
            elif op == "truncate":
                os.truncate(path, a["bytes"])
            else:
                raise ValueError(f"setup run: unknown op {op!r}")


def setup_criteo_days(ctx: Ctx, args: dict) -> None:
    """Raw Criteo day_0 and day_1 (40 lines each) at {days}, with at most one kind of damage."""
    from dlrm.preprocess.gen import generate_days

    days = ctx.tmp / "days"
    generate_days(days, days=2, lines=40, seed=3)
    ctx.values["days"] = str(days)
    args = dict(args)
    if "line" in args:  # one damaged line: 1-based line `line` of day `day`
        path = days / f"day_{args.pop('day')}"
        lines = path.read_text().split("\n")
        i = args.pop("line") - 1
        fields = lines[i].split("\t")
        if args.pop("drop_last_field", False):
            lines[i] = "\t".join(fields[:-1])
        elif "replace_line" in args:
            lines[i] = args.pop("replace_line")
        else:
            fields[args.pop("field")] = args.pop("value")
            lines[i] = "\t".join(fields)
        path.write_text("\n".join(lines))
    if "extra_tab_day" in args:  # every line of the day ends in an extra tab: 41 fields
        path = days / f"day_{args.pop('extra_tab_day')}"
        path.write_text("\n".join(line + "\t" if line else line for line in path.read_text().split("\n")))
    if "empty_day" in args:
        (days / f"day_{args.pop('empty_day')}").write_bytes(b"")
    if "gzip_truncated_day" in args:
        d = args.pop("gzip_truncated_day")
        packed = gzip.compress((days / f"day_{d}").read_bytes())
        (days / f"day_{d}").unlink()
        (days / f"day_{d}.gz").write_bytes(packed[: len(packed) // 2])
    if "fake_gzip_day" in args:
        d = args.pop("fake_gzip_day")
        (days / f"day_{d}").rename(days / f"day_{d}.gz")
    if args.pop("dataset_in_out", False):
        _dataset(ctx, "other-dataset")
    if args:
        raise ValueError(f"setup criteo_days: unknown args {sorted(args)}")


def setup_values(ctx: Ctx, args: dict) -> None:
    path = ctx.tmp / "values.yaml"
    path.write_text(args["text"])
    ctx.values["values"] = str(path)


def setup_fake_k8s(ctx: Ctx, args: dict) -> None:
    """The fake API server (tests/fake_k8s.py) and a kubeconfig for it at {kubeconfig}.

    Afterwards nothing may be stored on it: a failed submit rolls back what it created.
    """
    from fake_k8s import FakeK8s

    api = ctx.stack.enter_context(FakeK8s(crd_installed=args.get("crd_installed", True),
                                          kubernetes=args.get("kubernetes", True),
                                          trainer_installed=args.get("trainer_installed", True)))
    if "fail" in args:
        f = args["fail"]
        api.fail(f["method"], f["path"], f["status"])
    ctx.values["kubeconfig"] = str(api.write_kubeconfig(ctx.tmp / "kubeconfig", namespace="ml"))

    def nothing_left():
        assert not api.objects, f"objects left on the API server after a failed command: {sorted(api.objects)}"

    ctx.after.append(nothing_left)


def setup_s3(ctx: Ctx, args: dict) -> None:
    """The moto S3 server at {endpoint}, an empty bucket {bucket}, a dataset at {dataset}, test keys in env.

    args: `dataset` damage ops for the dataset (as setup dataset takes them); `pushed`: the dataset is
    pushed to s3://{bucket}/ds first; `replace_object`: that key's content then changes on S3, its
    metadata kept; `hung`: {hung} is an endpoint that accepts connections and never answers.
    Afterwards (unless pushed) the bucket must still be empty: a failed push leaves no manifest and no objects.
    """
    import boto3
    from s3_fixtures import HungEndpoint, _start

    args = dict(args)
    if args.pop("hung", False):
        ctx.values["hung"] = ctx.stack.enter_context(HungEndpoint(lifetime=TIMEOUT_S))
    endpoint = _start()
    bucket = f"bad-inputs-{os.getpid()}-{next(_buckets)}"
    keys = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
    client = boto3.client("s3", endpoint_url=endpoint, **keys)
    client.create_bucket(Bucket=bucket)
    root = _dataset(ctx)
    ctx.values.update(endpoint=endpoint, bucket=bucket)
    ctx.env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1",
                   AWS_DEFAULT_REGION="us-east-1")
    pushed = args.pop("pushed", False)
    if pushed:
        from launcher.data.transfer import S3Options, push

        push(root, f"s3://{bucket}/ds", S3Options(progress=False, log=lambda _: None), client=client)
    if "replace_object" in args:
        key = f"ds/{args.pop('replace_object')}"
        head = client.head_object(Bucket=bucket, Key=key)
        body = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        body[0] ^= 0xFF
        client.put_object(Bucket=bucket, Key=key, Body=bytes(body), Metadata=head["Metadata"])
    _damage(root, args.pop("dataset", {}))
    if args:
        raise ValueError(f"setup s3: unknown args {sorted(args)}")
    if pushed:
        return

    def bucket_empty():
        keys_left = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
        assert not keys_left, f"objects left in s3://{bucket} after a failed command: {keys_left}"

    ctx.after.append(bucket_empty)


_buckets = itertools.count()


def setup_checkpoint(ctx: Ctx, args: dict) -> None:
    """A tiny 2-step run at {tmp}/run (checkpoint ckpt-000000002), {dataset}; then at most one damage:
    `truncate: {file, bytes}` or `write: {file, text}` or `remove: file` (paths under the checkpoint),
    or `append_train_record: true` (metrics.jsonl as a restarted, unfinished run leaves it)."""
    from dlrm.config import TrainConfig, load_config
    from dlrm.training.train import BUILTIN_CONFIGS, train

    root = _dataset(ctx)
    run = ctx.tmp / "run"
    with contextlib.redirect_stdout(None):
        train(load_config(TrainConfig, files=[BUILTIN_CONFIGS / "tiny.yaml"],
                          overrides=[f"data.dataset={root}", f"out={run}", "max_steps=2", "data.batch_size=64",
                                     "optim.schedule_check=warn"]))
    ckpt = run / "checkpoints" / "ckpt-000000002"
    for op, a in args.items():
        if op == "truncate":
            os.truncate(ckpt / a["file"], (ckpt / a["file"]).stat().st_size - a["bytes"])
        elif op == "write":
            (ckpt / a["file"]).write_text(a["text"])
        elif op == "remove":
            (ckpt / a).unlink()
        elif op == "append_train_record":  # a restarted trainer, still running: the summary is no longer last
            with open(run / "metrics.jsonl", "a") as fh:
                fh.write('{"kind": "train", "step": 3, "loss": 0.6}\n')
        else:
            raise ValueError(f"setup checkpoint: unknown op {op!r}")


def setup_export_folder(ctx: Ctx, args: dict) -> None:
    """{dataset} and an export folder at {model} recorded in its manifest (a placeholder package: these
    rows fail before any package is loaded); then `flip_byte: file`, `remove: file` or
    `cardinality: {feature, value}` (the exported feature spec, manifest re-recorded: a consistent
    export of another model)."""
    import json

    from dlrm.serving import folder as serving
    from dlrm.data.spec import FeatureSpec

    root = _dataset(ctx)
    model = ctx.tmp / "model"
    model.mkdir()
    spec = FeatureSpec.load(root).to_dict()
    spec["source_spec"] = {}
    if "cardinality" in args:
        spec["feature_spec"][args["cardinality"]["feature"]]["cardinality"] = args["cardinality"]["value"]
    (model / serving.FEATURE_SPEC).write_text(yaml.safe_dump(spec, sort_keys=False))
    (model / serving.PACKAGES["cpu"]).write_bytes(b"placeholder package " * 100)
    manifest = {"format": serving.FORMAT, "max_batch": 65536, "packages": {"cpu": serving.PACKAGES["cpu"]},
                "files": serving.file_records(model)}
    (model / serving.MANIFEST).write_text(json.dumps(manifest))
    if "flip_byte" in args:
        path = model / args["flip_byte"]
        blob = bytearray(path.read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        path.write_bytes(bytes(blob))
    if "remove" in args:
        (model / args["remove"]).unlink()
    ctx.values["model"] = str(model)

# -- paths, identity, YAML (issue 19, non-trainer side) ------------------------------------------------


def setup_spec_text(ctx: Ctx, args: dict) -> None:
    """A small valid dataset at {dataset} whose feature_spec.yaml then gets `append` (raw text, e.g. a
    second top-level key: what a hand edit leaves)."""
    root = _dataset(ctx)
    with open(root / "feature_spec.yaml", "a") as fh:
        fh.write(args["append"])


SETUPS = {"none": setup_none, "dataset": setup_dataset, "run": setup_run, "criteo_days": setup_criteo_days,
          "values": setup_values, "fake_k8s": setup_fake_k8s, "s3": setup_s3, "checkpoint": setup_checkpoint,
          "export_folder": setup_export_folder, "spec_text": setup_spec_text}

# -- sweep: a new user's and an admin's inputs tried against issues 19 and 20 ---------------------------


def setup_local_job(ctx: Ctx, args: dict) -> None:
    """A finished run-local job's workdir at {tmp}/wd: job.json of job `name` (default dlrm-smoke) and a
    checkpoint file in its master's emptyDir, which must survive the command."""
    import json

    wd = ctx.tmp / "wd"
    ckpt = wd / "pods" / "master-0" / "output" / "checkpoints" / "ckpt-000000002" / "metadata.json"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_text("{}")
    (wd / "logs").mkdir()
    (wd / "logs" / "master-0.log").write_text("step 2/2\n")
    record = {"name": args.get("name", "dlrm-smoke"), "workdir": str(wd), "state": "Succeeded", "pid": 1,
              "replicas": ["master-0"], "exit_code": 0}
    (wd / "job.json").write_text(json.dumps(record))

    def kept():
        assert ckpt.is_file(), f"{ckpt}: another job's checkpoint was removed"

    ctx.after.append(kept)


SETUPS["local_job"] = setup_local_job

# The issue 28 recipes (run identity, robustness by class) are in bad_input_setups_issue28.py, which adds them here.
