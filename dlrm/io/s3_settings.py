"""Timeouts and retries of every S3 client (no boto3 here, so `--help` texts can name them).

Set for a tool someone waits on: an endpoint that accepts and never answers fails within about
attempts x read seconds, not after botocore's 60 s x 5 tries per call. `launcher data` takes
--connect-timeout/--read-timeout/--max-attempts; else these variables; else the defaults.

Every number the project reads from an environment variable goes through `env_number` (these, the
launcher's DLRM_K8S_CONNECT_TIMEOUT); every S3 endpoint URL, given or from AWS_ENDPOINT_URL(_S3),
through `check_endpoint`: a value that is a valid string but wrong is one line naming the variable.
"""
from __future__ import annotations

import dataclasses
import math
import os
import urllib.parse

from dlrm.errors import UserError

CONNECT_TIMEOUT_ENV, READ_TIMEOUT_ENV = "DLRM_S3_CONNECT_TIMEOUT", "DLRM_S3_READ_TIMEOUT"
ATTEMPTS_ENV = "AWS_MAX_ATTEMPTS"  # the standard AWS variable (tries in all, the first included)
DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT, DEFAULT_ATTEMPTS = 5.0, 20.0, 3


@dataclasses.dataclass(frozen=True)
class Timeouts:
    connect: float = DEFAULT_CONNECT_TIMEOUT  # seconds to open a connection
    read: float = DEFAULT_READ_TIMEOUT  # seconds without a byte from the endpoint
    attempts: int = DEFAULT_ATTEMPTS  # tries per request, the first included

    @classmethod
    def resolve(cls, connect: float | None = None, read: float | None = None,
                attempts: int | None = None) -> "Timeouts":
        """Explicit values, else the environment, else the defaults; every one checked."""
        def pick(value, env, default, kind, minimum, flag):
            src = f"--{flag}"
            if value is None and os.environ.get(env, "").strip():
                value, src = os.environ[env].strip(), env
            if value is None:
                return default
            return _number(src, value, kind, minimum, 3600)
        return cls(pick(connect, CONNECT_TIMEOUT_ENV, DEFAULT_CONNECT_TIMEOUT, float, 0.1, "connect-timeout"),
                   pick(read, READ_TIMEOUT_ENV, DEFAULT_READ_TIMEOUT, float, 0.1, "read-timeout"),
                   pick(attempts, ATTEMPTS_ENV, DEFAULT_ATTEMPTS, int, 1, "max-attempts"))


def _number(src: str, value, kind: type, minimum: float, limit: float):
    """`value` as `kind` in [minimum, limit), or a UserError naming where it came from (`src`)."""
    try:
        v = kind(value)
    except (TypeError, ValueError):
        raise UserError(f"{src}={value!r}: expected a number") from None
    if math.isnan(v) or not minimum <= v < limit:
        raise UserError(f"{src}={value!r}: expected {minimum} <= value < {limit:g}")
    return v


def env_number(name: str, default: float, kind: type = float, minimum: float = 0.1, limit: float = 3600):
    """A number from the environment variable `name` (unset or empty: `default`), range-checked."""
    raw = os.environ.get(name, "").strip()
    return default if not raw else _number(name, raw, kind, minimum, limit)


ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")  # botocore's order: the service's own first


def check_endpoint(url: str | None, src: str = "--endpoint-url") -> None:
    """An S3 endpoint is http(s)://host[:port][/path]; with `url` None, the variables botocore would
    read are checked instead (a bad one is a traceback from botocore, or a request to nowhere)."""
    if not url:
        name = next((n for n in ENDPOINT_ENVS if os.environ.get(n)), None)
        if name is None:
            return
        url, src = os.environ[name], name
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"{src}={url!r}: expected an endpoint URL, http(s)://host[:port] (e.g. http://127.0.0.1:5000)")
