"""S3Store keeps LocalStore's API and behaviour (same test bodies over both), and S3 failures a
user can cause become one-line UserErrors."""
from __future__ import annotations

import socket

import botocore.exceptions as bex
import pytest

from dlrm.errors import UserError
from dlrm.io.storage import LocalStore, open_store
from dlrm.io.storage_s3 import S3Store, parse_s3_uri, translate


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    bucket = request.getfixturevalue("s3_bucket")
    return open_store(f"s3://{bucket}/runs/x")


def test_bytes_round_trip_and_overwrite(store):
    store.put_bytes("ckpt-100/metadata.json", b'{"step": 100}')
    assert store.get_bytes("ckpt-100/metadata.json") == b'{"step": 100}'
    store.put_bytes("ckpt-100/metadata.json", b"v2")
    assert store.get_bytes("ckpt-100/metadata.json") == b"v2"


def test_file_round_trip(store, tmp_path):
    src = tmp_path / "shard.bin"
    src.write_bytes(bytes(range(256)) * 1000)
    store.put_file("ckpt-1/shard-0.bin", src)
    out = tmp_path / "back.bin"
    store.get_file("ckpt-1/shard-0.bin", out)
    assert out.read_bytes() == src.read_bytes()


def test_missing_key_raises_file_not_found(store, tmp_path):
    with pytest.raises(FileNotFoundError):
        store.get_bytes("nope/x.json")
    with pytest.raises(FileNotFoundError):
        store.get_file("nope/x.json", tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_exists_for_keys_and_directories(store):
    store.put_bytes("ckpt-100/a/b.bin", b"x")
    assert store.exists("ckpt-100/a/b.bin")
    assert store.exists("ckpt-100")  # a "directory" exists in both stores
    assert store.exists("ckpt-100/a")
    assert not store.exists("ckpt-10")  # a name prefix is not a directory
    assert not store.exists("ckpt-100/a/b")


def test_list_is_recursive_sorted_and_per_directory(store):
    for k in ["ckpt-200/m.json", "ckpt-100/s/1.bin", "ckpt-100/m.json", "latest"]:
        store.put_bytes(k, b"x")
    assert store.list() == ["ckpt-100/m.json", "ckpt-100/s/1.bin", "ckpt-200/m.json", "latest"]
    assert store.list("ckpt-100") == ["ckpt-100/m.json", "ckpt-100/s/1.bin"]
    assert store.list("ckpt-1") == []  # not a directory, not a key
    assert store.list("latest") == ["latest"]  # a single key lists as itself
    assert store.list("missing") == []


def test_delete_directory_key_and_missing(store):
    for k in ["ckpt-1/a", "ckpt-1/b/c", "ckpt-10/a", "latest"]:
        store.put_bytes(k, b"x")
    store.delete("ckpt-1")
    assert store.list() == ["ckpt-10/a", "latest"]  # ckpt-10 is not under ckpt-1
    store.delete("latest")
    store.delete("never-was")
    assert store.list() == ["ckpt-10/a"]


def test_local_path_only_where_the_store_has_one(store):
    store.put_bytes("k", b"x")
    path = store.local_path("k")
    if isinstance(store, S3Store):
        assert path is None
    else:
        assert path.read_bytes() == b"x"


def test_open_store_and_uri_parsing(s3_env):
    s = open_store("s3://bkt/a/b/")
    assert isinstance(s, S3Store) and (s.bucket, s.prefix, s.uri) == ("bkt", "a/b", "s3://bkt/a/b")
    assert parse_s3_uri("s3://bkt") == ("bkt", "")
    with pytest.raises(UserError, match="no bucket"):
        parse_s3_uri("s3:///x")


def test_store_at_bucket_root(s3_bucket):
    s = open_store(f"s3://{s3_bucket}")
    s.put_bytes("a/b", b"1")
    assert s.list() == ["a/b"] and s.get_bytes("a/b") == b"1"


# ---- user errors: each a one-line UserError saying what to fix ----

def test_unknown_bucket(s3_env):
    with pytest.raises(UserError, match="no such bucket 'no-such-bucket-xyz'"):
        open_store("s3://no-such-bucket-xyz/p").put_bytes("k", b"x")


def test_no_credentials(s3_env, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(UserError, match="no AWS credentials") as e:
        open_store("s3://any-bucket/p").get_bytes("k")
    assert "\n" not in str(e.value)


def test_access_denied(s3_bucket, monkeypatch):
    import moto.settings

    # From now on the in-process moto server checks keys; "testing" is no real IAM key.
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    with pytest.raises(UserError, match=f"access denied to s3://{s3_bucket}/p"):
        open_store(f"s3://{s3_bucket}/p").put_bytes("k", b"x")


def test_unreachable_endpoint(s3_env, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(UserError, match=f"cannot reach http://127.0.0.1:{port}"):
        open_store("s3://b/p").exists("k")


def test_profile_not_found(s3_env):
    with pytest.raises(UserError, match="profile 'nope' not found"):
        S3Store("s3://b/p", profile="nope")


@pytest.mark.parametrize("code", ["PermanentRedirect", "AuthorizationHeaderMalformed"])
def test_wrong_region_names_the_right_one(code):
    # moto does not emulate regional redirects, so this is the response AWS sends.
    err = bex.ClientError({"Error": {"Code": code, "Message": "wrong region", "Region": "eu-west-1"},
                           "ResponseMetadata": {"HTTPStatusCode": 301 if code == "PermanentRedirect" else 400,
                                                "HTTPHeaders": {"x-amz-bucket-region": "eu-west-1"}}},
                          "HeadBucket")
    user = translate(err, "s3://bkt/p")
    assert isinstance(user, UserError)
    assert str(user) == ("bucket 'bkt' is in eu-west-1, not the configured region: "
                         "pass --region eu-west-1 or set AWS_REGION")


def test_unknown_failures_stay_bugs():
    err = bex.ClientError({"Error": {"Code": "InternalError"}, "ResponseMetadata": {"HTTPStatusCode": 500}},
                          "PutObject")
    assert translate(err, "s3://b") is None
