"""Before a job is rendered or submitted: does its run output already hold another experiment's run?

    check_output(cfg)   # returns, or raises UserError naming the fields that differ and their values

The trainer refuses to train over another run (dlrm.training.lifecycle), but only once its pods are
scheduled and its image pulled. Where the launcher can read the job's output (train.out=s3://..., with
this machine's AWS credentials and AWS_ENDPOINT_URL, as `status` and `results` read it), render, submit
and run-local refuse the same job up front: the recorded run id differs from this job's (launcher.run_identity)
and no --resume was given. The fields named come from the run's own record: train.* from its
config.yaml, the job's name and dataset from run.json's job (the pods' DLRM_JOB_* variables).

Cheap and offline-safe: one small GET (run.json; config.yaml only when the run ids differ), short
timeouts, one try. An output that cannot be read (no credentials, no network, no bucket, access denied)
is no check, said in one `note:` line; the pods' trainer still decides. An output inside the pods
(/output: an emptyDir or a claim) cannot be read from here and is not checked.
"""
from __future__ import annotations

import json
import sys
from typing import Callable

from dlrm.errors import UserError
from dlrm.io.fsutil import MAX_TEXT_BYTES, is_s3_uri, load_yaml
from dlrm.io.s3_settings import Timeouts
from dlrm.training.runlog import CONFIG, JOB_ENV, RECORD
from launcher.run_identity import identity, run_id

# Reading the output is a courtesy check: an endpoint that does not answer at once is skipped.
QUICK = Timeouts(connect=2.0, read=5.0, attempts=1)


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _read(out: str) -> tuple[dict | None, Callable[[], dict]]:
    """(out's run.json, or None when there is none; a function reading its config.yaml)."""
    import boto3  # only for an s3:// output
    from botocore.exceptions import NoCredentialsError

    from dlrm.io.storage_s3 import S3Store, make_client, translate

    if boto3.Session().get_credentials() is None:  # the common offline case, before building a client (0.4 s)
        raise translate(NoCredentialsError(), out)
    store = S3Store(out, client=make_client(workers=1, timeouts=QUICK))
    try:
        record = json.loads(store.get_bytes(RECORD, limit=MAX_TEXT_BYTES))
    except FileNotFoundError:
        return None, dict
    def config() -> dict:
        return load_yaml(store.get_bytes(CONFIG, limit=MAX_TEXT_BYTES).decode(), f"{out}/{CONFIG}") or {}

    return (record if isinstance(record, dict) else {}), config


def recorded_identity(record: dict, config: dict, fields: list[str]) -> dict:
    """What the run in an output recorded for each identity field; a field it did not record (an
    older trainer or launcher, a run started outside a job) is left out."""
    job = record.get("job") if isinstance(record.get("job"), dict) else {}
    found = {}
    for path in fields:
        if path.startswith("train."):
            node, ok = config, True
            for part in path.split(".")[1:]:
                ok = isinstance(node, dict) and part in node
                node = node[part] if ok else None
            if ok:
                found[path] = node
        elif path in JOB_ENV and job.get(path) is not None:
            found[path] = job[path]
    return found


def differences(mine: dict, theirs: dict) -> list[str]:
    """'train.seed 7 -> 8' for each field both record with other values (theirs -> mine)."""
    return [f"{path} {theirs[path]!r} -> {value!r}" for path, value in mine.items() if path in theirs and theirs[path] != value]


def check_output(cfg, note: Callable[[str], None] = _note) -> None:
    """Refuse the job when its readable output holds a run of another identity and --resume was not given."""
    out = cfg.train.out
    if cfg.kind != "train" or cfg.train.resume or not is_s3_uri(out):
        return
    mine = run_id(cfg)
    try:
        record, config_of = _read(out)
        there = record and record.get("run_id")
        if not record or there == mine:
            return  # a new run, or this job's own (restarted, re-applied or resized): the pods continue it
        theirs = recorded_identity(record, config_of(), list(identity(cfg)))
    except Exception as e:  # noqa: BLE001 - any failure to read is no check (the trainer still decides), said once
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        note(f"note: cannot read the run output {out} ({reason}): not checked for another run before the pods start")
        return
    changed = differences(identity(cfg), theirs)
    what = (f"another experiment: {', '.join(changed)}" if changed else
            "no field it recorded differs from this job's (a run id from an older launcher, or a run started "
            "outside a job)")
    raise UserError(f"train.out {out} holds run {there or 'unknown'}, not this job's run {mine}; {what}. Its trainer "
                    f"would refuse to train over it: pass --resume to continue that run with this config, or give the "
                    f"job another train.out (or --name)")
