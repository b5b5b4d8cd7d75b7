"""Faults in object storage: a `launcher data push`/`pull` process SIGKILLed half-way resumes and
ends verified; a corrupted object is named by `verify` and by the staging init container, which
fails the pod before training starts; the good path of staging trains to completion; push and
stage repair what was corrupted behind their back; an endpoint that never answers fails in
seconds naming it; a pull into a full disk leaves a copy the trainer refuses."""
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
    assert 2 <= len(kept) < len(files)
    # The new manifest went in first, the .verified record never: the trainer refuses this copy.
    from dlrm.data.manifest import is_verified

    assert (dest / "_manifest.json").exists() and not is_verified(dest)
    rc, out = _launcher("verify", str(dest))
    assert rc != 0 and f"{len(files) - len(kept)} missing" in out, out
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
    (staged,) = (tmp_path / "pods" / "master-0" / "stage").glob("dataset-*")  # the dataset's own folder (its manifest's hash)
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
    (staged,) = (tmp_path / "pods" / "master-0" / "stage").glob("dataset-*")  # the dataset's own folder (its manifest's hash)
    assert (staged / ".verified").is_file() and (staged / "feature_spec.yaml").is_file()
    s = summary(tmp_path.joinpath(*RUN))
    assert s["step"] == 6 and s["auc"] > 0.5, s


# -- corruption behind our back is repaired by push and stage ---------------------------------------

QUIET = dict(progress=False, log=lambda _: None)


def _small_dataset(root):
    root.mkdir()
    rng = __import__("random").Random(2)
    files = {"a.bin": rng.randbytes(70_000), "sub/b.bin": rng.randbytes(30_000), "feature_spec.yaml": b"x: 1\n"}
    for name, blob in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(blob)
    return files


def _replace_keeping_metadata(s3, bucket: str, key: str) -> None:
    head = s3.head_object(Bucket=bucket, Key=key)
    body = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[len(body) // 3] ^= 0xFF  # same size, same sha256 metadata, other bytes
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(body), Metadata=head["Metadata"])


def test_push_after_a_replaced_object_sends_it_again(s3_bucket, tmp_path):
    import boto3

    from launcher.data.transfer import S3Options, push, verify

    src, uri, s3 = tmp_path / "src", f"s3://{s3_bucket}/ds", boto3.client("s3")
    _small_dataset(src)
    opts = S3Options(**QUIET)
    push(src, uri, opts)
    _replace_keeping_metadata(s3, s3_bucket, "ds/sub/b.bin")
    assert verify(uri, opts).corrupt == ["sub/b.bin: sha256 differs from the manifest"]
    # The manifest recorded the object's ETag: a plain push sees the replacement.
    res = push(src, uri, opts)
    assert (res.sent, res.skipped) == (1, 2)
    assert verify(uri, opts).ok

    # A manifest without ETags (an older push): metadata alone cannot tell, --verify-remote hashes the content.
    _replace_keeping_metadata(s3, s3_bucket, "ds/a.bin")
    doc = __import__("json").loads(s3.get_object(Bucket=s3_bucket, Key="ds/_manifest.json")["Body"].read())
    for f in doc["files"]:
        f.pop("etag")
    s3.put_object(Bucket=s3_bucket, Key="ds/_manifest.json", Body=__import__("json").dumps(doc).encode())
    assert push(src, uri, opts).sent == 0  # trusted the metadata: this is what --verify-remote is for
    assert not verify(uri, opts).ok
    res = push(src, uri, opts, verify_remote=True)
    assert (res.sent, res.skipped) == (1, 2)
    assert verify(uri, opts).ok


def test_second_stage_after_a_staged_file_changed_fetches_it_again(s3_bucket, tmp_path):
    from dlrm.data.manifest import is_verified, require_verified
    from launcher.data.transfer import S3Options, push, stage

    src, uri, dest = tmp_path / "src", f"s3://{s3_bucket}/ds", tmp_path / "staged"
    files = _small_dataset(src)
    opts = S3Options(**QUIET)
    push(src, uri, opts)
    assert stage(uri, dest, opts).sent == 3 and is_verified(dest)
    assert stage(uri, dest, opts).sent == 0  # untouched: skipped on the record alone
    blob = bytearray((dest / "a.bin").read_bytes())
    blob[5] ^= 1
    (dest / "a.bin").write_bytes(bytes(blob))  # same size; only its mtime tells
    assert not is_verified(dest)
    with pytest.raises(Exception, match="a.bin: sha256 differs"):
        require_verified(dest)
    res = stage(uri, dest, opts)
    assert (res.sent, res.skipped) == (1, 2) and is_verified(dest)
    assert (dest / "a.bin").read_bytes() == files["a.bin"]
    require_verified(dest)


def test_push_aborts_multipart_uploads_a_killed_push_left_open(s3_bucket, tmp_path):
    import boto3

    from launcher.data.transfer import S3Options, push, verify

    src, uri, s3 = tmp_path / "src", f"s3://{s3_bucket}/ds", boto3.client("s3")
    _small_dataset(src)
    # What a push killed mid-way through a big file leaves: an upload with parts, never completed.
    up = s3.create_multipart_upload(Bucket=s3_bucket, Key="ds/big.bin")
    s3.upload_part(Bucket=s3_bucket, Key="ds/big.bin", UploadId=up["UploadId"], PartNumber=1, Body=b"\0" * (5 * MiB))
    other = s3.create_multipart_upload(Bucket=s3_bucket, Key="elsewhere/x.bin")  # not under the prefix: kept
    logged = []
    push(src, uri, S3Options(progress=False, log=logged.append))
    open_uploads = s3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
    assert [u["UploadId"] for u in open_uploads] == [other["UploadId"]]
    assert any("aborted 1 unfinished multipart upload" in line for line in logged), logged
    assert verify(uri, S3Options(**QUIET)).ok


def test_push_fails_on_a_folder_it_cannot_read_before_sending_anything(s3_bucket, tmp_path, monkeypatch):
    import boto3

    from launcher.data.transfer import S3Options, push

    src = tmp_path / "src"
    _small_dataset(src)
    real = os.scandir

    def scandir(path="."):  # as a folder without read permission (tests run as root, so chmod cannot)
        if os.fspath(path).endswith("sub"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(OSError, match="cannot read this folder") as e:
        push(src, f"s3://{s3_bucket}/ds", S3Options(**QUIET))
    assert e.value.filename == str(src / "sub")
    assert "Contents" not in boto3.client("s3").list_objects_v2(Bucket=s3_bucket)


# -- an endpoint that accepts and never answers -------------------------------------------------------


def test_hung_endpoint_fails_in_seconds_naming_it(tmp_path):
    from s3_fixtures import HungEndpoint

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s", AWS_REGION="us-east-1", PYTHONPATH=str(ROOT),
               AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_EC2_METADATA_DISABLED="true")
    hung = HungEndpoint(lifetime=60)
    with hung as url:
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "launcher", "data", "stage", "s3://b/ds", str(tmp_path / "d"),
                               "--endpoint-url", url, "--read-timeout", "1", "--max-attempts", "2", "--no-progress"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        elapsed = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: {url} accepted the connection but sent no answer for s3://b/ds"), proc.stderr
    assert elapsed < 20, elapsed  # 2 tries x 1 s, plus start-up and backoff
    assert hung.accepted >= 1  # it did connect: the read timeout ended it, not a refused connection
    assert not (tmp_path / "d").exists()


# -- a pull into a full disk ----------------------------------------------------------------------------


def _limited(size: int):
    import resource

    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    return preexec


@pytest.mark.slow
def test_pull_into_a_full_disk_leaves_a_copy_the_trainer_refuses(data, s3_bucket, tmp_path):
    """A verified copy, then a new version of the dataset pulled over it into a full disk: the new
    feature_spec.yaml lands beside old files; the trainer must refuse the folder until a pull completes."""
    import shutil

    from dlrm.data.manifest import is_verified, require_verified
    from launcher.data.transfer import S3Options, pull, push

    src, uri, dest = tmp_path / "src", f"s3://{s3_bucket}/ds", tmp_path / "copy"
    shutil.copytree(data, src)
    opts = S3Options(**QUIET)
    push(src, uri, opts)
    pull(uri, dest, opts)
    assert is_verified(dest)
    # v2: the spec changes (small, fetched first) and every id file grows
    spec = (src / "feature_spec.yaml").read_text()
    (src / "feature_spec.yaml").write_text(spec + "# v2\n")
    for p in sorted(src.rglob("*.bin")):
        p.write_bytes(p.read_bytes() * 2)
    push(src, uri, opts)
    limit = (dest / "feature_spec.yaml").stat().st_size + 4096
    proc = subprocess.run([sys.executable, "-m", "launcher", "data", "pull", uri, str(dest), "--no-progress",
                           "--workers", "1"], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=120, preexec_fn=_limited(limit))
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith(f"error: {dest}/") and "File too large" in err and "Traceback" not in proc.stderr, err
    assert (dest / "feature_spec.yaml").read_text().endswith("# v2\n")  # the new spec beside old files
    assert not is_verified(dest) and not list(dest.rglob("*.dlrm-partial*"))

    trained = subprocess.run([sys.executable, "-m", "dlrm", "train", "--config", "tiny", "--dataset", str(dest),
                              "--out", str(tmp_path / "run"), "--set", "max_steps=2"], cwd=ROOT,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300)
    assert trained.returncode == 2, trained.stderr[-3000:]
    assert f"error: {dest}: does not match its _manifest.json" in trained.stderr, trained.stderr[-3000:]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()

    pull(uri, dest, opts)  # room again: the pull completes and the copy verifies
    assert is_verified(dest)
    require_verified(dest)
