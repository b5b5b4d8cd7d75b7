"""The TrainJob progress client (dlrm/training/progress.py) against a local server speaking Trainer's
status protocol: HTTPS with a test CA, the bearer token from the projected file, the JSON body; and
servers that are down, slow or answer errors, which must never hold training up."""
from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import json
import re
import ssl
import sys
import threading
import time

import pytest

from dlrm.training import progress
from dlrm.training.progress import ProgressReporter, from_env, status_body

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

PATH = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/ml/trainjobs/dlrm/status"


def _cert(subject: str, key, issuer_name, issuer_key, ca: bool):
    now = dt.datetime.now(dt.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                            critical=False)
    return b.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A test CA (as Trainer's webhook CA), a server certificate it signed, and an unrelated CA."""
    d = tmp_path_factory.mktemp("pki")
    ca_key, other_key, srv_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _cert("test-ca", ca_key, None, ca_key, ca=True)
    srv = _cert("localhost", srv_key, ca.subject, ca_key, ca=False)
    pem = serialization.Encoding.PEM
    (d / "ca.crt").write_bytes(ca.public_bytes(pem))
    (d / "other-ca.crt").write_bytes(_cert("other", other_key, None, other_key, ca=True).public_bytes(pem))
    (d / "server.crt").write_bytes(srv.public_bytes(pem))
    (d / "server.key").write_bytes(srv_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return d


class StatusServer:
    """Trainer's status endpoint, recording each request; `mode`: ok | error | slow."""

    def __init__(self, pki, mode="ok", delay_s=1.0):
        self.requests: list[dict] = []
        self.mode, self.delay_s = mode, delay_s
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append({"path": self.path, "auth": self.headers["Authorization"], "t": time.monotonic(),
                                       "type": self.headers["Content-Type"], "body": json.loads(body)})
                if outer.mode == "slow":
                    time.sleep(outer.delay_s)
                code = 500 if outer.mode == "error" else 200
                answer = json.dumps({"kind": "Status", "code": code} if code != 200 else json.loads(body)).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                # The slow mode outlives the client's timeout by design: its answer meets a closed socket.
                if not isinstance(sys.exc_info()[1], OSError):
                    super().handle_error(request, client_address)

        self.httpd = Server(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki / "server.crt", pki / "server.key")
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"https://localhost:{self.httpd.server_address[1]}{PATH}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(pki):
    s = StatusServer(pki)
    yield s
    s.close()


@pytest.fixture
def token(tmp_path):
    path = tmp_path / "token"
    path.write_text("token-1\n")
    return path


def reporter(url, pki, token, logs, **kw) -> ProgressReporter:
    kw = {"interval_s": 0.05, "timeout_s": 0.5, "max_backoff_s": 0.4, "close_wait_s": 3.0, **kw}
    return ProgressReporter(url, str(pki / "ca.crt"), str(token), 100, 0, log=logs.append, **kw)


def wait_for(predicate, timeout=5.0):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_reports_over_tls_with_the_projected_token_and_the_upstream_body(server, pki, token):
    logs: list[str] = []
    r = reporter(server.url, pki, token, logs)
    r.train(step=10, loss=0.25, samples_per_s=1234.5, eta_s=90.4)
    wait_for(lambda: len(server.requests) == 1)
    first = server.requests[0]
    assert first["path"] == PATH and first["auth"] == "Bearer token-1" and first["type"] == "application/json"
    status = first["body"]["trainerStatus"]
    assert status["progressPercentage"] == 10 and status["estimatedRemainingSeconds"] == 90
    assert status["metrics"] == [{"name": "train_loss", "value": "0.25"}, {"name": "samples_per_s", "value": "1234.5"},
                                 {"name": "step", "value": "10"}, {"name": "total_steps", "value": "100"}]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", status["lastUpdatedTime"])
    token.write_text("token-2")  # the kubelet rotated it: the next request reads the new one
    r.train(step=100, loss=0.2, samples_per_s=1000.0, eta_s=0.0)
    r.eval(auc=0.8012, loss=0.41)
    r.close()
    last = server.requests[-1]
    assert last["auth"] == "Bearer token-2"
    assert last["body"]["trainerStatus"]["progressPercentage"] == 100 and last["body"]["trainerStatus"]["estimatedRemainingSeconds"] == 0
    assert {"name": "eval_auc", "value": "0.8012"} in last["body"]["trainerStatus"]["metrics"]
    assert logs == [] and r.sent == len(server.requests)


def test_updates_are_throttled_and_only_the_newest_is_sent(server, pki, token):
    r = reporter(server.url, pki, token, [], interval_s=0.5)
    for step in range(1, 51):
        r.train(step=step, loss=1.0 / step, samples_per_s=10.0, eta_s=100.0 - step)
    time.sleep(0.3)
    assert len(server.requests) == 1  # the first at once; the next not before 0.5 s
    r.close()
    assert len(server.requests) == 2 and server.requests[-1]["body"]["trainerStatus"]["metrics"][2] == {"name": "step", "value": "50"}


@pytest.mark.parametrize("mode", ["down", "error", "slow", "untrusted"])
def test_a_failing_endpoint_never_holds_training_up(mode, pki, token):
    """Each call returns at once; one warning; back-off between tries; close() waits a bounded time."""
    s = StatusServer(pki, mode="error" if mode == "error" else "slow" if mode == "slow" else "ok", delay_s=2.0)
    url = s.url
    if mode == "down":
        s.close()
    logs: list[str] = []
    ca = pki / ("other-ca.crt" if mode == "untrusted" else "ca.crt")
    r = ProgressReporter(url, str(ca), str(token), 100, 0, interval_s=0.05, timeout_s=0.3, max_backoff_s=0.4,
                         close_wait_s=1.0, log=logs.append)
    t0 = time.monotonic()
    for step in range(1, 201):
        r.train(step=step, loss=0.5, samples_per_s=10.0, eta_s=1.0)
    assert time.monotonic() - t0 < 0.5
    time.sleep(1.0)
    t1 = time.monotonic()
    r.close()
    assert time.monotonic() - t1 < 1.5
    assert len(logs) == 1 and logs[0].startswith(f"warning: TrainJob progress report to {url} failed (")
    assert {"error": "HTTP 500", "slow": "timed out", "untrusted": "CERTIFICATE_VERIFY_FAILED", "down": "refused"}[mode] in logs[0]
    assert r.sent == 0 and r.failures >= 2
    if mode == "error":  # back-off: 0.1 s, 0.2 s, 0.4 s... between the tries, not one every 0.05 s
        gaps = [b["t"] - a["t"] for a, b in zip(s.requests, s.requests[1:])]
        assert len(s.requests) <= 6 and all(g >= 0.09 for g in gaps), gaps
    if mode != "down":
        s.close()


def test_recovery_after_errors_is_said_once_and_reports_resume(pki, token):
    s = StatusServer(pki, mode="error")
    logs: list[str] = []
    r = reporter(s.url, pki, token, logs)
    r.train(step=1, loss=0.5, samples_per_s=1.0)
    wait_for(lambda: r.failures >= 1)
    s.mode = "ok"
    r.train(step=2, loss=0.5, samples_per_s=1.0)
    wait_for(lambda: r.sent >= 1)
    r.close()
    s.close()
    assert len(logs) == 2 and "resumed after" in logs[1]


def test_nothing_without_the_environment_and_the_body_bounds():
    assert from_env(100, environ={}) is None
    body = status_body(5, 10, {f"m{i}": i for i in range(300)}, float("nan"))["trainerStatus"]
    assert "estimatedRemainingSeconds" not in body and len(body["metrics"]) == progress.MAX_METRICS
    assert status_body(10, 10, {}, 3e12)["trainerStatus"]["progressPercentage"] == 99  # 100 only when done
    assert status_body(10, 10, {}, 3e12)["trainerStatus"]["estimatedRemainingSeconds"] == progress.INT32_MAX


def test_runlog_reports_rank_0s_progress_when_the_trainjob_asks(server, pki, token, tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    from dlrm.training.runlog import RunLog

    monkeypatch.setenv(progress.ENV_URL, server.url)
    monkeypatch.setenv(progress.ENV_CA_CERT, str(pki / "ca.crt"))
    monkeypatch.setenv(progress.ENV_TOKEN, str(token))
    other = RunLog(str(tmp_path / "other"), enabled=False, total_steps=4)
    other.train(step=2, epoch=0, loss=0.4, lr=0.1, samples_per_s=10.0)
    log = RunLog(str(tmp_path / "run"), enabled=True, total_steps=4, tensorboard=False)
    log.train(step=2, epoch=0, loss=0.4, lr=0.1, samples_per_s=10.0)
    log.train(step=4, epoch=0, loss=0.3, lr=0.1, samples_per_s=10.0)
    log.eval(4, auc=0.75, loss=0.5, seconds=1.0)
    log.finish({"step": 4}, plot=False)
    final = server.requests[-1]["body"]["trainerStatus"]
    assert final["progressPercentage"] == 100 and {"name": "eval_auc", "value": "0.75"} in final["metrics"]
    assert len(server.requests) <= 2  # upstream's 5 s throttle: one at once, then the last one at the end
