"""A real S3 endpoint for tests: moto's HTTP server on 127.0.0.1 (free port), one per process.

    from s3_fixtures import s3_endpoint, s3_env, s3_bucket  # in tests/conftest.py or a test file

`s3_endpoint` is the URL; `s3_env` points the standard AWS env vars (fake keys, region,
AWS_ENDPOINT_URL) at it with no shared config, so code under test builds its clients the normal
way; `s3_bucket` is a fresh bucket name per test, created on the server.
"""
from __future__ import annotations

import itertools
import threading

import pytest

_lock = threading.Lock()
_server = None  # shared by every import of this module's fixtures (conftest and test files)
_names = itertools.count()


def _start() -> str:
    global _server
    with _lock:
        if _server is None:
            from moto.server import ThreadedMotoServer

            _server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            _server.start()  # port 0: the OS picks a free port, read back below
        host, port = _server.get_host_and_port()
        return f"http://{host}:{port}"


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    return _start()


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch, tmp_path):
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"):
        monkeypatch.delenv(var, raising=False)
    empty = tmp_path / "empty-aws-config"
    empty.write_text("")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    return s3_endpoint


@pytest.fixture
def s3_bucket(s3_env) -> str:
    import boto3

    name = f"test-bucket-{next(_names)}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


class HungEndpoint:
    """A TCP server on 127.0.0.1 that accepts connections and never answers (a stuck proxy or
    a wrong port of something else). It stops by itself after `lifetime` seconds at the latest.

        with HungEndpoint() as url:   # "http://127.0.0.1:PORT"
            ...
    """

    def __init__(self, lifetime: float = 120.0):
        import socket

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = 0
        self._held, self._stop = [], threading.Event()
        self._deadline = lifetime
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        import time

        end = time.monotonic() + self._deadline
        while not self._stop.is_set() and time.monotonic() < end:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # the 0.2 s poll, or the socket closed by stop()
                continue
            self.accepted += 1
            self._held.append(conn)  # held open, never read from or written to
        self._close()

    def _close(self) -> None:
        for c in self._held:
            c.close()
        self._held.clear()
        self.sock.close()

    def __enter__(self) -> str:
        self._thread.start()
        return self.url

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
