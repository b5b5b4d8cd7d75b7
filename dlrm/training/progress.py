"""Training progress in the TrainJob's status: Kubeflow Trainer's progress API (KEP-2779, Trainer v2.2+).

    reporter = from_env(total_steps=T, first_step=s)   # None unless KUBEFLOW_TRAINER_SERVER_URL is set
    reporter.train(step=..., loss=..., samples_per_s=..., eta_s=...)   # returns at once
    reporter.eval(auc=...)
    reporter.close()                                    # the last status, waited for a bounded time

With the `TrainJobStatus` feature gate on, Trainer's controller gives every trainer container
KUBEFLOW_TRAINER_SERVER_URL (its status endpoint for this TrainJob), KUBEFLOW_TRAINER_SERVER_CA_CERT
(the CA of its TLS certificate) and KUBEFLOW_TRAINER_SERVER_TOKEN (a projected service-account token
whose audience names the TrainJob; it rotates, so it is read again for every request). The client
POSTs {"trainerStatus": {progressPercentage, estimatedRemainingSeconds, metrics: [{name, value}],
lastUpdatedTime}} with the token as a bearer token, at most once every 5 seconds as upstream asks of
clients. The controller writes it to status.trainerStatus (`launcher status`, the SDK's trainer_status).

A report never slows or stops training: requests run on a background thread that sends only the
newest status; a failure prints one warning, then the thread backs off exponentially (up to 5 min)
and keeps the newest status for when the endpoint answers again. Only urllib and ssl: no dependency.
"""
from __future__ import annotations

import json
import math
import os
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

ENV_URL = "KUBEFLOW_TRAINER_SERVER_URL"
ENV_CA_CERT = "KUBEFLOW_TRAINER_SERVER_CA_CERT"
ENV_TOKEN = "KUBEFLOW_TRAINER_SERVER_TOKEN"
MIN_INTERVAL_S = 5.0  # upstream's client-side rate limit: at most one update per 5 s
MAX_BACKOFF_S = 300.0
TIMEOUT_S = 5.0  # one request; a slow controller delays only the reporting thread
CLOSE_WAIT_S = 10.0  # how long close() waits for the last status before training exits regardless
MAX_METRICS = 256  # the API's limit on status.trainerStatus.metrics
INT32_MAX = 2**31 - 1  # progressPercentage and estimatedRemainingSeconds are int32 in the API


def from_env(total_steps: int, first_step: int = 0, environ=os.environ) -> ProgressReporter | None:
    """A reporter when running in a TrainJob with progress enabled; None otherwise (nothing to do)."""
    url = environ.get(ENV_URL)
    if not url:
        return None
    return ProgressReporter(url, environ.get(ENV_CA_CERT, ""), environ.get(ENV_TOKEN, ""), total_steps, first_step)


def status_body(step: int, total_steps: int, metrics: dict[str, float | int], eta_s: float | None,
                now: datetime | None = None, done: bool = False) -> dict:
    """The request body: progress by steps (100 only once training is done), the ETA, metrics as strings."""
    percent = 100 if done else min(99, max(0, int(100 * step / max(total_steps, 1))))
    status: dict = {"progressPercentage": percent}
    if done:
        status["estimatedRemainingSeconds"] = 0
    elif eta_s is not None and math.isfinite(eta_s):
        status["estimatedRemainingSeconds"] = min(INT32_MAX, max(0, int(round(eta_s))))
    status["metrics"] = [{"name": k, "value": _text(v)} for k, v in list(metrics.items())[:MAX_METRICS]]
    status["lastUpdatedTime"] = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"trainerStatus": status}


def _text(value: float | int) -> str:
    return str(value) if isinstance(value, int) else f"{value:.6g}"


class ProgressReporter:
    def __init__(self, url: str, ca_cert: str, token_file: str, total_steps: int, first_step: int = 0, *,
                 interval_s: float = MIN_INTERVAL_S, timeout_s: float = TIMEOUT_S, max_backoff_s: float = MAX_BACKOFF_S,
                 close_wait_s: float = CLOSE_WAIT_S, log=None):
        self.url, self.ca_cert, self.token_file = url, ca_cert, token_file
        self.total_steps, self.step = total_steps, first_step
        self.interval_s, self.timeout_s, self.max_backoff_s, self.close_wait_s = interval_s, timeout_s, max_backoff_s, close_wait_s
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.metrics: dict[str, float | int] = {}
        self.sent = self.failures = 0
        self._eta: float | None = None
        self._pending: dict | None = None
        self._closing = False
        self._warned = False
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="trainjob-progress", daemon=True)
        self._thread.start()

    # -- called by the training loop: record and hand over, never wait ---------------------------

    def train(self, *, step: int, loss: float, samples_per_s: float, eta_s: float | None = None) -> None:
        self.step, self._eta = step, eta_s
        self.metrics.update(train_loss=loss, samples_per_s=samples_per_s, step=step, total_steps=self.total_steps)
        self._submit(status_body(step, self.total_steps, self.metrics, eta_s))

    def eval(self, *, auc: float, loss: float | None = None) -> None:
        self.metrics.update(eval_auc=auc, **({"eval_loss": loss} if loss is not None else {}))
        self._submit(status_body(self.step, self.total_steps, self.metrics, self._eta))

    def close(self) -> None:
        """Send the last status (100% once every step ran) and wait for it at most close_wait_s."""
        done = self.step >= self.total_steps
        with self._wake:
            self._pending = status_body(self.step, self.total_steps, self.metrics, self._eta, done=done)
            self._closing = True
            self._wake.notify()
        self._thread.join(self.close_wait_s)

    def _submit(self, body: dict) -> None:
        with self._wake:
            self._pending = body  # only the newest status matters: an older unsent one is dropped
            self._wake.notify()

    # -- the reporting thread --------------------------------------------------------------------

    def _run(self) -> None:
        next_at = 0.0  # monotonic time of the earliest next request (throttle, or back-off after a failure)
        while True:
            with self._wake:
                while self._pending is None and not self._closing:
                    self._wake.wait()
                while not self._closing and time.monotonic() < next_at:
                    self._wake.wait(next_at - time.monotonic())
                body, self._pending = self._pending, None
                closing = self._closing
            if body is not None:
                ok = self._send(body)
                delay = self.interval_s if ok else min(self.max_backoff_s, self.interval_s * 2 ** self.failures)
                next_at = time.monotonic() + delay
            if closing:
                return

    def _send(self, body: dict) -> bool:
        try:
            with open(self.token_file) as f:  # re-read every time: the projected token rotates
                token = f.read().strip()
            context = ssl.create_default_context(cafile=self.ca_cert or None)
            request = urllib.request.Request(self.url, data=json.dumps(body).encode(), method="POST", headers={
                "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=self.timeout_s, context=context) as response:
                response.read()
        except Exception as e:  # noqa: BLE001 - any failure (HTTP, TLS, a malformed answer) only delays the report
            self.failures += 1
            if not self._warned:
                self._warned = True
                self.log(f"warning: TrainJob progress report to {self.url} failed ({_reason(e)}); training "
                         f"continues, reports retry with back-off")
            return False
        if self._warned and self.failures:
            self.log(f"TrainJob progress reports to {self.url} resumed after {self.failures} failures")
        self.sent, self.failures = self.sent + 1, 0
        return True


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    return f"{type(e).__name__}: {getattr(e, 'reason', None) or e}"
