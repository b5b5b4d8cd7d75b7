"""Faults in object storage: a `launcher data push`/`pull` process SIGKILLed half-way resumes and
ends verified; a corrupted object is named by `verify` and by the staging init container, which
fails the pod before training starts; the good path of staging trains to completion."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from faults_common import MiB, ROOT, RUN, TRAIN, Running, data, render, summary  # noqa: F401 (data: a fixture)


def _launcher(*args: str, wait: bool = True):
    cmd = [sys.executable, "-m", "launcher", "data", *args, "--no-progress", "--workers", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, out


def _keys(bucket: str, prefix: str) -> list[str]:
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
    return [o["Key"][len(prefix) + 1:] for page in pages for o in page.get("Contents", [])]


def _kill_when(proc, predicate, what: str) -> None:
    deadline = time.monotonic() + 60
    while not predicate():
        assert proc.poll() is None, f"finished before {what}: {proc.communicate()[0]}"
        assert time.monotonic() < deadline, f"no {what}"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_killed_push_and_pull_resume_and_end_verified(s3_bucket, tmp_path):
    src = tmp_path / "src"
    rng = __import__("random").Random(1)
    files = {f"part-{i:02d}.bin": rng.randbytes(MiB + i) for i in range(40)}
    src.mkdir()
    for name, blob in files.items():
        (src / name).write_bytes(blob)
    uri = f"s3://{s3_bucket}/ds"

    push = _launcher("push", str(src), uri, wait=False)
    _kill_when(push, lambda: len(_keys(s3_bucket, "ds")) >= 2, "two objects uploaded")
    landed = _keys(s3_bucket, "ds")
    assert "_manifest.json" not in landed and 2 <= len(landed) < len(files)
    rc, out = _launcher("verify", uri)
    assert rc != 0 and "no _manifest.json" in out  # incomplete: nobody can use it
    rc, out = _launcher("push", str(src), uri)
    assert rc == 0, out
    assert f"sent {len(files) - len(landed)} files" in out and f"skipped {len(landed)} already there" in out, out
    rc, out = _launcher("verify", uri)
    assert rc == 0, out

    dest = tmp_path / "dest"
    pull = _launcher("pull", uri, str(dest), wait=False)
    done = lambda: [p.name for p in dest.glob("part-*.bin")] if dest.is_dir() else []  # noqa: E731  (renamed into place = verified)
    _kill_when(pull, lambda: len(done()) >= 2, "two files downloaded")
    kept = done()
    assert not (dest / "_manifest.json").exists() and 2 <= len(kept) < len(files)
    rc, out = _launcher("pull", uri, str(dest))
    assert rc == 0, out
    assert f"fetched {len(files) - len(kept)} files" in out and f"kept {len(kept)} already there" in out, out
    rc, out = _launcher("verify", str(dest))
    assert rc == 0, out
    assert {p.name: p.read_bytes() for p in dest.glob("part-*.bin")} == files
    assert not [p for p in dest.iterdir() if "partial" in p.name]


@pytest.mark.dist
@pytest.mark.slow
def test_corrupt_object_fails_the_staging_pod_before_training(data, s3_bucket, s3_endpoint, tmp_path):
    import boto3

    from launcher.__main__ import main as launcher_main

    uri = f"s3://{s3_bucket}/ds"
    assert launcher_main(["data", "push", str(data), uri, "--no-progress"]) == 0
    key = "train/label.bin" if (data / "train" / "label.bin").is_file() else sorted(
        p.relative_to(data).as_posix() for p in data.rglob("*.bin"))[0]
    s3 = boto3.client("s3")
    head = s3.head_object(Bucket=s3_bucket, Key=f"ds/{key}")
    body = bytearray(s3.get_object(Bucket=s3_bucket, Key=f"ds/{key}")["Body"].read())
    body[len(body) // 2] ^= 0xFF  # one flipped byte: same size, same recorded sha256 metadata
    s3.put_object(Bucket=s3_bucket, Key=f"ds/{key}", Body=bytes(body), Metadata=head["Metadata"])

    rc, out = _launcher("verify", uri)
    assert rc != 0 and f"{key}: sha256 differs from the manifest" in out, out

    sets = [f"dataset={uri}", "storage.mode=stage", f"s3.endpoint_url={s3_endpoint}", *TRAIN, "cluster.backoff_limit=1"]
    run = Running(render(1, 2, sets), tmp_path)
    rc = run.join()
    text = run.text()
    assert rc == 2, text[-6000:]  # the stage command's exit code for a user error
    # OnFailure: the pod is retried (backoffLimit 1) and fails the same way each time
    assert run.job.failures == [("master-0", "stage", 2)] * 2, text[-6000:]
    assert f"corrupt object(s), sha256 differs from the manifest: {uri}/{key}" in text, text[-6000:]
    assert "[master-0] " not in text  # the trainer container never started ([master-0/stage] is the init one)
    run_dir = tmp_path.joinpath(*RUN)
    assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "config.yaml").exists()
    staged = tmp_path / "pods" / "master-0" / "stage" / "dataset"
    assert not (staged / ".verified").exists() and not (staged / key).exists()


@pytest.mark.dist
@pytest.mark.slow
def test_staged_dataset_trains_to_completion(data, s3_bucket, s3_endpoint, tmp_path):
    """The good path of storage.mode=stage: the init container pulls and verifies, then 2 ranks train on the copy."""
    from launcher.__main__ import main as launcher_main

    uri = f"s3://{s3_bucket}/ds"
    assert launcher_main(["data", "push", str(data), uri, "--no-progress"]) == 0
    sets = [f"dataset={uri}", "storage.mode=stage", f"s3.endpoint_url={s3_endpoint}", *TRAIN, "train.max_steps=6"]
    run = Running(render(1, 2, sets), tmp_path)
    rc = run.join()
    text = run.text()
    assert rc == 0, text[-6000:]
    staged = tmp_path / "pods" / "master-0" / "stage" / "dataset"
    assert (staged / ".verified").is_file() and (staged / "feature_spec.yaml").is_file()
    s = summary(tmp_path.joinpath(*RUN))
    assert s["step"] == 6 and s["auc"] > 0.5, s
