"""`launcher data` push/pull/verify/stage against a real (moto) S3 HTTP endpoint."""
from __future__ import annotations

import json
import os
from pathlib import Path

import boto3
import pytest

from dlrm.data.manifest import require_verified
from dlrm.errors import DataError, UserError
from launcher.__main__ import main as launcher_main
from launcher.data import MANIFEST_NAME, MARKER_NAME, is_verified
from launcher.data.transfer import S3Options, pull, push, stage, verify

MiB = 1024 * 1024
# 5 MiB is S3's (and moto's) smallest part: the 11 MiB file goes up in three parts.
OPTS = S3Options(workers=4, part_size=5 * MiB, progress=False, log=lambda s: None)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def dataset(tmp_path) -> Path:
    root = tmp_path / "ds"
    rng = __import__("random").Random(0)
    _write(root / "feature_spec.yaml", b"feature_spec: 1\n")
    _write(root / "train" / "label.bin", rng.randbytes(100_000))
    _write(root / "train" / "cat" / "cat_0.bin", rng.randbytes(70_000))
    _write(root / "test" / "empty.bin", b"")
    _write(root / "big.bin", rng.randbytes(11 * MiB + 123))
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and p.name not in (MANIFEST_NAME, MARKER_NAME)}


class Crash(Exception):
    """A simulated crash (not a network error, so nothing retries it)."""


UPLOADS = ("PutObject", "CreateMultipartUpload")


def _counting_client(fail_after: int | None = None, fail_on: tuple[str, ...] = UPLOADS):
    """A client that counts object calls and crashes once `fail_after` `fail_on` calls went out."""
    client = boto3.client("s3")
    calls = {"PutObject": 0, "CreateMultipartUpload": 0, "GetObject": 0}

    def count(event_name, **kwargs):
        op = event_name.split(".")[-1]
        if op in fail_on and fail_after is not None and sum(calls[o] for o in fail_on) >= fail_after:
            raise Crash(op)
        calls[op] += 1

    for op in calls:
        client.meta.events.register(f"before-call.s3.{op}", count)
    return client, calls


def test_round_trip_nested_and_multipart(dataset, s3_bucket, tmp_path):
    uri = f"s3://{s3_bucket}/datasets/v1"
    res = push(dataset, uri, OPTS)
    assert (res.sent, res.skipped) == (5, 0)
    s3 = boto3.client("s3")
    assert s3.head_object(Bucket=s3_bucket, Key="datasets/v1/big.bin")["ETag"].strip('"').endswith("-3")
    manifest = json.loads(s3.get_object(Bucket=s3_bucket, Key=f"datasets/v1/{MANIFEST_NAME}")["Body"].read())
    assert [f["key"] for f in manifest["files"]] == sorted(_files(dataset))
    assert {f["key"]: f["size"] for f in manifest["files"]}["big.bin"] == 11 * MiB + 123

    out = tmp_path / "out"
    assert pull(uri, out, OPTS).sent == 5
    assert _files(out) == _files(dataset)
    assert verify(uri, OPTS).ok and verify(str(out), OPTS).ok
    assert not list(out.rglob("*.dlrm-partial*"))

    # Nothing changed: both directions skip everything.
    client, calls = _counting_client()
    assert (push(dataset, uri, OPTS, client=client).sent, calls["PutObject"]) == (0, 1)  # the manifest only
    assert pull(uri, out, OPTS).skipped == 5


def test_interrupted_push_resumes_with_only_the_missing_files(dataset, s3_bucket):
    uri = f"s3://{s3_bucket}/ds"
    client, _ = _counting_client(fail_after=2)
    with pytest.raises(Crash):
        push(dataset, uri, S3Options(workers=1, part_size=5 * MiB, progress=False, log=lambda s: None),
             client=client)
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert len(keys) == 2 and f"ds/{MANIFEST_NAME}" not in keys  # incomplete: no manifest
    with pytest.raises(UserError, match=f"incomplete dataset: no _manifest.json under {uri}; push it again"):
        stage(uri, dataset.parent / "staged", OPTS)

    client, calls = _counting_client()
    res = push(dataset, uri, OPTS, client=client)
    assert (res.sent, res.skipped) == (3, 2)
    assert calls["PutObject"] + calls["CreateMultipartUpload"] == 3 + 1  # + the manifest
    assert verify(uri, OPTS).ok


def test_changed_file_is_sent_again_and_manifest_replaced(dataset, s3_bucket, tmp_path):
    uri = f"s3://{s3_bucket}/ds"
    push(dataset, uri, OPTS)
    new = b"\7" * 100_000  # same size: only the recorded hash tells it apart
    (dataset / "train" / "label.bin").write_bytes(new)
    client, _ = _counting_client(fail_after=0)
    with pytest.raises(Crash):
        push(dataset, uri, OPTS, client=client)
    # The old manifest went before any object changed: the half-updated prefix is incomplete.
    with pytest.raises(UserError, match="incomplete dataset"):
        pull(uri, tmp_path / "out", OPTS)
    assert push(dataset, uri, OPTS).sent == 1
    out = tmp_path / "out"
    pull(uri, out, OPTS)
    assert (out / "train" / "label.bin").read_bytes() == new


def test_dry_runs_change_nothing(dataset, s3_bucket, tmp_path):
    uri = f"s3://{s3_bucket}/ds"
    assert push(dataset, uri, OPTS, dry_run=True).sent == 5
    assert "Contents" not in boto3.client("s3").list_objects_v2(Bucket=s3_bucket)
    push(dataset, uri, OPTS)
    assert pull(uri, tmp_path / "out", OPTS, dry_run=True).sent == 5
    assert not _files(tmp_path / "out")


def test_pull_resumes_and_replaces_bad_local_files(dataset, s3_bucket, tmp_path):
    uri = f"s3://{s3_bucket}/ds"
    push(dataset, uri, OPTS)
    out = tmp_path / "out"
    pull(uri, out, OPTS)
    (out / "big.bin").unlink()
    (out / "train" / "label.bin").write_bytes(b"\0" * 100_000)  # same size, wrong bytes
    _write(out / ".big.bin.dlrm-partial", b"half a download")  # left by a killed pull
    client, calls = _counting_client()
    res = pull(uri, out, OPTS, client=client)
    assert (res.sent, res.skipped) == (2, 3)
    assert _files(out) == _files(dataset)
    assert not (out / ".big.bin.dlrm-partial").exists()


def test_verify_names_missing_extra_and_corrupt_objects(dataset, s3_bucket):
    uri = f"s3://{s3_bucket}/ds"
    push(dataset, uri, OPTS)
    s3 = boto3.client("s3")
    s3.delete_object(Bucket=s3_bucket, Key="ds/feature_spec.yaml")
    s3.put_object(Bucket=s3_bucket, Key="ds/stray.bin", Body=b"x")
    # Same size, same recorded hash, different bytes: only recomputing catches it.
    meta = s3.head_object(Bucket=s3_bucket, Key="ds/train/label.bin")["Metadata"]
    s3.put_object(Bucket=s3_bucket, Key="ds/train/label.bin", Body=b"\1" * 100_000, Metadata=meta)
    report = verify(uri, OPTS)
    assert report.missing == ["feature_spec.yaml"] and report.extra == ["stray.bin"]
    assert report.corrupt == ["train/label.bin: sha256 differs from the manifest"]


def test_verify_local_dir_via_cli(dataset, s3_bucket, tmp_path, capsys):
    uri = f"s3://{s3_bucket}/ds"
    out = tmp_path / "out"
    for argv in (["push", str(dataset), uri], ["pull", uri, str(out)], ["verify", str(out)]):
        assert launcher_main(["data", *argv, "--no-progress"]) == 0
    (out / "train" / "cat" / "cat_0.bin").unlink()
    (out / "big.bin").write_bytes(b"short")
    _write(out / "notes.txt", b"mine")
    capsys.readouterr()
    assert launcher_main(["data", "verify", str(out), "--no-progress"]) == 2
    cap = capsys.readouterr()
    assert cap.out.splitlines() == ["missing: train/cat/cat_0.bin", "extra: notes.txt",
                                    f"corrupt: big.bin: size 5, manifest says {11 * MiB + 123}"]
    assert cap.err.count("\n") == 1 and "1 missing, 1 extra, 1 corrupt" in cap.err


def test_verify_dir_without_manifest(dataset):
    with pytest.raises(UserError, match="no _manifest.json in"):
        verify(str(dataset), OPTS)


def test_stage_marks_verified_once_and_skips_after(dataset, s3_bucket, tmp_path):
    uri = f"s3://{s3_bucket}/ds"
    push(dataset, uri, OPTS)
    dest = tmp_path / "data"
    assert not is_verified(dest)
    assert stage(uri, dest, OPTS).sent == 5
    assert is_verified(dest) and _files(dest) == _files(dataset)

    client, calls = _counting_client()
    assert stage(uri, dest, OPTS, client=client).sent == 0
    assert calls["GetObject"] == 1  # the manifest, nothing else

    (dest / "big.bin").write_bytes(b"truncated")  # a different size: the quick check sees it
    assert stage(uri, dest, OPTS).sent == 1 and is_verified(dest)
    assert _files(dest) == _files(dataset)

    (dest / MANIFEST_NAME).write_bytes(b"{}")  # the marker no longer matches the manifest
    assert not is_verified(dest)


def test_interrupted_pull_over_a_staged_dir_withdraws_the_marker(dataset, s3_bucket, tmp_path):
    uri = f"s3://{s3_bucket}/ds"
    push(dataset, uri, OPTS)
    dest = tmp_path / "data"
    stage(uri, dest, OPTS)
    (dataset / "feature_spec.yaml").write_bytes(b"feature_spec: 2\n")
    push(dataset, uri, OPTS)
    client, _ = _counting_client(fail_after=1, fail_on=("GetObject",))  # the manifest, then crash
    with pytest.raises(Crash):
        pull(uri, dest, OPTS, client=client)
    assert not is_verified(dest)  # files may be half old, half new: the trainer must not start
    assert stage(uri, dest, OPTS).sent == 1 and is_verified(dest)


def test_stage_fails_on_a_corrupt_object_with_its_name(dataset, s3_bucket, tmp_path):
    uri = f"s3://{s3_bucket}/ds"
    push(dataset, uri, OPTS)
    s3 = boto3.client("s3")
    meta = s3.head_object(Bucket=s3_bucket, Key="ds/big.bin")["Metadata"]
    s3.put_object(Bucket=s3_bucket, Key="ds/big.bin", Body=os.urandom(11 * MiB + 123), Metadata=meta)
    dest = tmp_path / "data"
    with pytest.raises(UserError, match=f"corrupt object.*{uri}/big.bin; push the dataset again"):
        stage(uri, dest, OPTS)
    assert not is_verified(dest) and not (dest / "big.bin").exists()
    # The new manifest went in before any file: the trainer refuses the incomplete copy.
    with pytest.raises(DataError, match=r"does not match its _manifest\.json .*big\.bin missing"):
        require_verified(dest)


def test_endpoint_from_option_or_env(dataset, s3_bucket, s3_endpoint, monkeypatch, tmp_path, capsys):
    uri = f"s3://{s3_bucket}/ds"
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)  # the S3-only variable
    assert launcher_main(["data", "push", str(dataset), uri, "--workers", "2"]) == 0  # with bars
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    assert launcher_main(["data", "stage", uri, str(tmp_path / "d"), "--no-progress",
                          "--endpoint-url", s3_endpoint]) == 0
    assert is_verified(tmp_path / "d")


def test_cli_user_errors_are_one_line(dataset, s3_env, monkeypatch, capsys):
    assert launcher_main(["data", "push", str(dataset), "s3://no-such-bucket-abc/ds", "--no-progress"]) == 2
    assert capsys.readouterr().err == ("error: no such bucket 'no-such-bucket-abc' (s3://no-such-bucket-abc/ds): "
                                       "create it or fix the URI/endpoint\n")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert launcher_main(["data", "stage", "s3://any/ds", str(dataset), "--no-progress"]) == 2
    assert capsys.readouterr().err.startswith("error: no AWS credentials for s3://any/ds")
    assert launcher_main(["data", "push", str(dataset / "nope"), "s3://any/ds"]) == 2
    assert "is not a directory" in capsys.readouterr().err


@pytest.mark.parametrize("key", ["../escape.bin", "/abs.bin", "a//b", MANIFEST_NAME])
def test_pull_refuses_a_manifest_key_outside_the_folder(s3_bucket, tmp_path, key):
    body = json.dumps({"version": 1, "files": [{"key": key, "size": 1, "sha256": "0" * 64}]})
    boto3.client("s3").put_object(Bucket=s3_bucket, Key=f"ds/{MANIFEST_NAME}", Body=body.encode())
    with pytest.raises(UserError, match="unsafe key"):
        pull(f"s3://{s3_bucket}/ds", tmp_path / "out" / "in", OPTS)
    assert not (tmp_path / "out").exists()
