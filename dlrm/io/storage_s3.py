"""S3 side of dlrm.io.storage: the S3Store (same API as LocalStore) and the client plumbing the
`launcher data` commands share with it.

Connection settings come from the standard AWS sources through a plain boto3 Session (env,
shared config/credentials files, profile, pod/instance identity); a custom endpoint (MinIO) is
either `endpoint_url=` or AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3, which botocore reads itself.
Every botocore failure a user can fix (no credentials, access denied, no such bucket, wrong
region, unreachable endpoint) is turned into a one-line UserError by `s3_errors`.
"""
from __future__ import annotations

import contextlib
import functools
import os
import urllib.parse
from pathlib import Path
from typing import Iterator

import boto3
import botocore.config
import botocore.exceptions as bex
from boto3.s3.transfer import TransferConfig

from dlrm.errors import UserError
from dlrm.io.fsutil import is_s3_uri, parse_s3_uri, too_large  # noqa: F401 (the one parser; imported from here too)
from dlrm.io.s3_settings import ATTEMPTS_ENV, READ_TIMEOUT_ENV, Timeouts, check_endpoint

MiB = 1024 * 1024


def make_client(endpoint_url: str | None = None, region: str | None = None,
                profile: str | None = None, workers: int = 8, timeouts: Timeouts | None = None):
    """An S3 client from the standard AWS sources; None settings fall through to env/config."""
    timeouts = timeouts or Timeouts.resolve()
    check_endpoint(endpoint_url)
    try:
        session = boto3.Session(profile_name=profile, region_name=region)
    except bex.ProfileNotFound:
        raise UserError(f"AWS profile {profile!r} not found in the shared config; "
                        "fix --profile/AWS_PROFILE or add the profile to ~/.aws/config") from None
    config = botocore.config.Config(
        # One pooled connection per transfer thread, or threads queue on the pool.
        max_pool_connections=max(10, 2 * workers),
        connect_timeout=timeouts.connect, read_timeout=timeouts.read,
        retries={"mode": "standard", "total_max_attempts": timeouts.attempts},
    )
    return session.client("s3", endpoint_url=endpoint_url or None, config=config)


def transfer_config(workers: int = 8, part_size: int = 16 * MiB) -> TransferConfig:
    """Multipart above one part, `workers` parallel parts/files. 16 MiB parts keep per-request
    overhead low on fast links while a 1 GB file still splits into 64 parallel parts."""
    return TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size,
                          max_concurrency=workers, use_threads=True)


def _where(uri: str) -> str:
    return uri or "S3"


def translate(exc: BaseException, uri: str) -> UserError | None:
    """The UserError a user should see for a botocore failure, or None if it is not theirs."""
    where = _where(uri)
    if isinstance(exc, (bex.NoCredentialsError, bex.PartialCredentialsError)):
        return UserError(f"no AWS credentials for {where}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                         "AWS_PROFILE or a pod/instance role")
    url = getattr(exc, "kwargs", {}).get("endpoint_url") or ""
    parts = urllib.parse.urlsplit(url)  # the endpoint, not the bucket/key path botocore puts after it
    url = f"{parts.scheme}://{parts.netloc}" if parts.netloc else "the S3 endpoint"
    if isinstance(exc, (bex.EndpointConnectionError, bex.ConnectTimeoutError)):
        return UserError(f"cannot reach {url} for {where}: check --endpoint-url/AWS_ENDPOINT_URL "
                         "and the network")
    if isinstance(exc, bex.ReadTimeoutError):
        return UserError(f"{url} accepted the connection but sent no answer for {where} within the read timeout "
                         f"(each try): check --endpoint-url/AWS_ENDPOINT_URL, or allow longer with "
                         f"--read-timeout/{READ_TIMEOUT_ENV} and --max-attempts/{ATTEMPTS_ENV}")
    if isinstance(exc, (bex.ConnectionClosedError, bex.HTTPClientError)):
        return UserError(f"the connection to {url} failed for {where} ({exc.__class__.__name__}): "
                         "check --endpoint-url/AWS_ENDPOINT_URL and the network")
    if isinstance(exc, bex.ProfileNotFound):
        return UserError(f"{exc}; fix --profile/AWS_PROFILE")
    if not isinstance(exc, bex.ClientError):
        return None
    err = exc.response.get("Error", {})
    code = str(err.get("Code", ""))
    meta = exc.response.get("ResponseMetadata", {})
    status = meta.get("HTTPStatusCode")
    headers = meta.get("HTTPHeaders", {}) or {}
    bucket = where[len("s3://"):].split("/")[0] if is_s3_uri(where) else "the bucket"
    if code in ("NoSuchBucket",) or (code == "404" and exc.operation_name == "HeadBucket"):
        return UserError(f"no such bucket {bucket!r} ({where}): create it or fix the URI/endpoint")
    if code in ("PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException",
                "301") or status == 301:
        region = headers.get("x-amz-bucket-region") or err.get("Region") or "another region"
        return UserError(f"bucket {bucket!r} is in {region}, not the configured region: "
                         f"pass --region {region} or set AWS_REGION")
    if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                "InvalidToken", "ExpiredToken", "AllAccessDisabled") or status == 403:
        return UserError(f"access denied to {where} ({code}): check the credentials/profile and "
                         "the bucket policy")
    return None


@contextlib.contextmanager
def s3_errors(uri: str = "") -> Iterator[None]:
    """Re-raise user-fixable botocore failures as one-line UserErrors; keep the rest as bugs."""
    try:
        yield
    except (bex.BotoCoreError, bex.ClientError) as e:
        user = translate(e, uri)
        if user is None:
            raise
        raise user from e


def check_bucket(client, uri: str) -> None:
    """One HeadBucket up front, so a wrong bucket/region/credential fails before any work."""
    bucket, _ = parse_s3_uri(uri)
    with s3_errors(uri):
        client.head_bucket(Bucket=bucket)


def _is_missing(e: bex.ClientError) -> bool:
    return e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def _user_errors(method):
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with s3_errors(self.uri):
            return method(self, *args, **kwargs)
    return wrapper


class S3Store:
    """The LocalStore API over s3://bucket/prefix. Directory-like keys behave as in LocalStore:
    `list("ckpt-1")` and `delete("ckpt-1")` cover everything under "ckpt-1/", and `exists`
    is true for such a prefix too."""

    def __init__(self, uri: str, *, endpoint_url: str | None = None, region: str | None = None,
                 profile: str | None = None, client=None):
        self.bucket, self.prefix = parse_s3_uri(str(uri))
        self.uri = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.client = client or make_client(endpoint_url, region, profile)

    def _key(self, key: str) -> str:
        key = key.strip("/")
        return f"{self.prefix}/{key}" if self.prefix and key else (self.prefix or key)

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) + 1:] if self.prefix else full

    @_user_errors
    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    @_user_errors
    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        """A conditional PUT (If-None-Match: *; AWS S3 since 2024, MinIO): False if `key` exists."""
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")
            return True
        except bex.ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise

    @_user_errors
    def put_file(self, key: str, local_path: str | os.PathLike) -> None:
        # upload_file goes multipart (parallel parts) for big checkpoint shards.
        self.client.upload_file(str(local_path), self.bucket, self._key(key), Config=transfer_config())

    @_user_errors
    def get_bytes(self, key: str, limit: int | None = None) -> bytes:
        """As LocalStore.get_bytes: past `limit`, refused by the object's length before its body is read."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            if limit is not None and response["ContentLength"] > limit:
                response["Body"].close()
                raise UserError(too_large(f"{self.uri}/{key}", limit, "record"))
            return response["Body"].read()
        except bex.ClientError as e:
            if _is_missing(e):
                raise FileNotFoundError(f"{self.uri}/{key}") from None
            raise

    @_user_errors
    def get_file(self, key: str, local_path: str | os.PathLike) -> None:
        try:
            # download_file writes a temp file and renames it, so no half file is left behind.
            self.client.download_file(self.bucket, self._key(key), str(local_path), Config=transfer_config())
        except bex.ClientError as e:
            if _is_missing(e):
                raise FileNotFoundError(f"{self.uri}/{key}") from None
            raise

    def local_path(self, key: str) -> Path | None:
        return None  # objects must be fetched (get_file) before reading

    @_user_errors
    def size(self, key: str) -> int:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])
        except bex.ClientError as e:
            if _is_missing(e):
                raise FileNotFoundError(f"{self.uri}/{key}") from None
            raise

    @_user_errors
    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except bex.ClientError as e:
            if not _is_missing(e):
                raise
        # LocalStore.exists is also true for a directory: here, a prefix with objects under it.
        resp = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._key(key) + "/", MaxKeys=1)
        return resp.get("KeyCount", 0) > 0

    def _list_full(self, prefix: str) -> list[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        keys = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            keys.extend(o["Key"] for o in page.get("Contents", []))
        return keys

    @_user_errors
    def list(self, prefix: str = "") -> list[str]:
        """Every key under `prefix` (recursively), sorted, relative to the store's root."""
        base = self._key(prefix)
        under = self._list_full(base + "/" if base else "")
        if not under and prefix.strip("/") and self.exists(prefix):
            return [prefix]  # `prefix` names one object, as LocalStore does for a file
        return sorted(self._rel(k) for k in under)

    @_user_errors
    def delete(self, prefix: str) -> None:
        base = self._key(prefix)
        keys = [base] + self._list_full(base + "/" if base else "")
        for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": k} for k in keys[i:i + 1000] if k]
            if batch:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
