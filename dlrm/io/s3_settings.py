"""Timeouts and retries of every S3 client (no boto3 here, so `--help` texts can name them).

Set for a tool someone waits on: an endpoint that accepts and never answers fails within about
attempts x read seconds, not after botocore's 60 s x 5 tries per call. `launcher data` takes
--connect-timeout/--read-timeout/--max-attempts; else these variables; else the defaults.
"""
from __future__ import annotations

import dataclasses
import math
import os

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
            try:
                v = kind(value)
            except ValueError:
                raise UserError(f"{src}={value!r}: expected a number") from None
            if not (minimum <= v < 3600) or math.isnan(v):
                raise UserError(f"{src}={value!r}: expected {minimum} <= value < 3600")
            return v
        return cls(pick(connect, CONNECT_TIMEOUT_ENV, DEFAULT_CONNECT_TIMEOUT, float, 0.1, "connect-timeout"),
                   pick(read, READ_TIMEOUT_ENV, DEFAULT_READ_TIMEOUT, float, 0.1, "read-timeout"),
                   pick(attempts, ATTEMPTS_ENV, DEFAULT_ATTEMPTS, int, 1, "max-attempts"))
