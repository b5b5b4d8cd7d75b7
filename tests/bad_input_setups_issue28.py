"""The bad-input recipes of issue 28 (run identity; robustness by class, tests/bad_inputs/identity.yaml and
classes.yaml), added to bad_input_setups.SETUPS when tests/test_bad_inputs.py imports this module.
"""
from __future__ import annotations

import os

from bad_input_setups import SETUPS, Ctx, _buckets, _dataset


# -- run identity (issue 28): another experiment's run in a job's s3:// output ----------------------------


def setup_s3_run(ctx: Ctx, args: dict) -> None:
    """The moto S3 server at {endpoint}, a bucket {bucket}, test keys in env, and at s3://{bucket}/run
    what the trainer of the synthetic-smoke job with train.out there and `set` overrides leaves:
    run.json (its run id, or `run_id`; the pods' DLRM_JOB_* values) and config.yaml. They must be
    left as they were."""
    import json

    import boto3
    from s3_fixtures import _start

    from dlrm.config import dump_yaml
    from launcher.config import load_job_config
    from launcher.run_identity import run_id

    endpoint, bucket = _start(), f"identity-{os.getpid()}-{next(_buckets)}"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    cfg = load_job_config("synthetic-smoke", overrides=[f"train.out=s3://{bucket}/run", *args.get("set", [])])
    record = json.dumps({"run_id": args.get("run_id") or run_id(cfg), "job": {"name": cfg.name, "dataset": cfg.dataset}})
    files = {"run/run.json": record.encode(), "run/config.yaml": dump_yaml(cfg.train).encode()}
    for key, body in files.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    ctx.values.update(endpoint=endpoint, bucket=bucket)
    ctx.env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1",
                   AWS_ENDPOINT_URL=endpoint)

    def kept():
        assert {k: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in files} == files, "the run was changed"

    ctx.after.append(kept)


SETUPS["s3_run"] = setup_s3_run


# -- issue 28 item 6: robustness by class (rows in tests/bad_inputs/classes.yaml) -----------------------


def setup_live_run(ctx: Ctx, args: dict) -> None:
    """{dataset}, and {live}: another run's output folder whose lock is held by a live process (this
    one). The lock must survive."""
    import json

    from dlrm.training.runlock import LOCK, _me

    _dataset(ctx)
    live = ctx.tmp / "live"
    live.mkdir()
    (live / LOCK).write_text(json.dumps(_me()))
    ctx.values["live"] = str(live)

    def kept():
        assert (live / LOCK).is_file(), "the live run's lock was removed"

    ctx.after.append(kept)


SETUPS["live_run"] = setup_live_run


def setup_job_record(ctx: Ctx, args: dict) -> None:
    """A run-local job record {tmp}/wd/job.json holding `record` (JSON as given: wrong on purpose).
    `live_pid: true` starts a `sleep` and writes its pid as the record's `pid`; it must still run
    afterwards: nothing unproven is signalled."""
    import json
    import subprocess

    wd = ctx.tmp / "wd"
    wd.mkdir()
    record = {"name": "job", "workdir": str(wd), **args.get("record", {})}
    if args.get("live_pid"):
        proc = subprocess.Popen(["sleep", "120"])
        ctx.stack.callback(proc.wait)
        ctx.stack.callback(proc.kill)
        record["pid"] = proc.pid

        def not_signalled():
            assert proc.poll() is None, f"the unproven process was signalled (exit {proc.returncode})"

        ctx.after.append(not_signalled)
    (wd / "job.json").write_text(json.dumps(record))
    ctx.values["wd"] = str(wd)


SETUPS["job_record"] = setup_job_record


def setup_rendered_job(ctx: Ctx, args: dict) -> None:
    """{job}: `launcher render --profile synthetic-smoke` (`api`: pytorchjob|trainjob) with each
    `replace: {old: new}` applied to the YAML text."""
    import contextlib as cl
    import io

    from launcher.__main__ import main

    text = io.StringIO()
    with cl.redirect_stdout(text):
        assert main(["render", "--profile", "synthetic-smoke", "--api", args.get("api", "pytorchjob")]) == 0
    rendered = text.getvalue()
    for old, new in (args.get("replace") or {}).items():
        assert old in rendered, old
        rendered = rendered.replace(old, new)
    (ctx.tmp / "job.yaml").write_text(rendered)
    ctx.values["job"] = str(ctx.tmp / "job.yaml")


SETUPS["rendered_job"] = setup_rendered_job


def setup_sparse_file(ctx: Ctx, args: dict) -> None:
    """{big}: a sparse file of `gib` GiB (zeros; it takes no disk space)."""
    big = ctx.tmp / "big.yaml"
    with open(big, "wb") as f:
        f.truncate(int(args["gib"]) << 30)
    ctx.values["big"] = str(big)


SETUPS["sparse_file"] = setup_sparse_file


def setup_run_folders(ctx: Ctx, args: dict) -> None:
    """Run output folders written by hand: for each `name: {file: text}` in args, {tmp}/<name> holding
    those files (run.json, metrics.jsonl...); {dataset} too. Every file must be unchanged afterwards."""
    _dataset(ctx)
    written = {}
    for name, files in args.items():
        for rel, text in files.items():
            path = ctx.tmp / name / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            written[path] = text

    def unchanged():
        for path, text in written.items():
            assert path.read_text() == text, f"{path} was changed"

    ctx.after.append(unchanged)


SETUPS["run_folders"] = setup_run_folders
