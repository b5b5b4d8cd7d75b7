"""A local stand-in for the few Kubernetes API calls the launcher makes (no real cluster needed).

    with FakeK8s() as api:                     # http://127.0.0.1:<free port>
        api.write_kubeconfig(tmp / "kubeconfig", namespace="ml")
        api.fail("POST", "/pytorchjobs", 403)  # the next matching request gets a 403 Status
        ...
        api.requests                           # every request: method, path, query, body

It stores what is POSTed (per collection path), answers GET/LIST/DELETE from that store, filters
pod lists by labelSelector and serves pod logs set with `set_log`. Errors look like the real
API server's: a JSON `Status` for 403/404/409, and a bare text '404 page not found' for a
resource it does not serve (a missing CRD), which is how the client tells the two apart.
"""
from __future__ import annotations

import copy
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import yaml

# /api/v1[/namespaces/NS]/PLURAL[/NAME[/SUB]] and /apis/GROUP/VERSION[/namespaces/NS]/PLURAL[/NAME[/SUB]]
PATH = re.compile(r"^(?P<base>/api/v1|/apis/[^/]+/[^/]+)(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)"
                  r"(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?$")


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: dict | None


@dataclass
class Rule:
    method: str
    path_part: str  # matched as a substring of the path
    status: int
    times: int  # how many requests it answers; -1: all


@dataclass
class FakeK8s:
    crd_installed: bool = True  # False: /apis/kubeflow.org/... answers a bare 404, as with no CRD
    trainer_installed: bool = True  # False: the same for Kubeflow Trainer v2's /apis/trainer.kubeflow.org/...
    kubernetes: bool = True  # False: a server that answers a bare 404 to everything (a wrong URL or path)
    requests: list[Request] = field(default_factory=list)
    objects: dict[tuple[str, str], dict] = field(default_factory=dict)  # (collection path, name) -> object
    logs: dict[tuple[str, str, str], str] = field(default_factory=dict)  # (ns, pod, container) -> text
    rules: list[Rule] = field(default_factory=list)

    # -- test controls ---------------------------------------------------------------------------

    def fail(self, method: str, path_part: str, status: int, times: int = -1) -> None:
        self.rules.append(Rule(method, path_part, status, times))

    def add(self, collection: str, obj: dict) -> dict:
        """Put an object in the store, e.g. add('/api/v1/namespaces/ml/pods', pod)."""
        obj.setdefault("metadata", {}).setdefault("creationTimestamp", _now())
        self.objects[(collection, obj["metadata"]["name"])] = obj
        return obj

    def set_log(self, namespace: str, pod: str, container: str, text: str) -> None:
        self.logs[(namespace, pod, container)] = text

    def find(self, method: str, part: str = "") -> list[Request]:
        return [r for r in self.requests if r.method == method and part in r.path]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def write_kubeconfig(self, path: Path, namespace: str | None = None, context: str = "fake") -> Path:
        ctx = {"cluster": "fake", "user": "tester"}
        if namespace:
            ctx["namespace"] = namespace
        doc = {"apiVersion": "v1", "kind": "Config", "current-context": context,
               "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
               "contexts": [{"name": context, "context": ctx}],
               "users": [{"name": "tester", "user": {"token": "secret-token"}}]}
        Path(path).write_text(yaml.safe_dump(doc))
        return Path(path)

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> "FakeK8s":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _handle(self):
                fake._serve(self)

            do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- the API --------------------------------------------------------------------------------

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        url = urlsplit(h.path)
        query = parse_qs(url.query)
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        self.requests.append(Request(h.command, url.path, query, body))
        m = PATH.match(url.path)
        for rule in self.rules:
            if rule.times != 0 and rule.method == h.command and rule.path_part in url.path:
                rule.times -= 1
                name = (m and m["name"]) or (body or {}).get("metadata", {}).get("name", "")
                return _status(h, rule.status, _reason(rule.status), name, (m and m["plural"]) or "")
        if url.path.rstrip("/") == "/api" and self.kubernetes:  # discovery: what every API server answers
            return _json(h, 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        if not self.kubernetes or m is None or (not self.crd_installed and url.path.startswith("/apis/kubeflow.org/")) \
                or (not self.trainer_installed and url.path.startswith("/apis/trainer.kubeflow.org/")):
            return _send(h, 404, b"404 page not found", "text/plain")
        collection = url.path if m["name"] is None else url.path.rsplit("/" + m["name"], 1)[0]
        name, plural, ns = m["name"], m["plural"], m["ns"] or ""
        if h.command == "POST" and name is None:
            obj = copy.deepcopy(body or {})  # the recorded request body stays as sent
            meta = obj.setdefault("metadata", {})
            if (collection, meta.get("name")) in self.objects:
                return _status(h, 409, "AlreadyExists", meta.get("name", ""), plural)
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), resourceVersion="1")
            if ns:
                meta.setdefault("namespace", ns)
            if query.get("dryRun") != ["All"]:  # a server-side dry run stores nothing
                self.objects[(collection, meta["name"])] = obj
            return _json(h, 201, obj)
        if h.command == "GET" and name is None:
            items = [o for (c, _), o in self.objects.items() if c == collection]
            items = [o for o in items if _selected(o, query.get("labelSelector", [""])[0])]
            return _json(h, 200, {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": items})
        if h.command == "GET" and m["sub"] == "log":
            text = self.logs.get((ns, name, query.get("container", [""])[0]))
            if text is None:
                return _status(h, 404, "NotFound", name, plural)
            return _send(h, 200, text.encode(), "text/plain")
        obj = self.objects.get((collection, name))
        if obj is None:
            return _status(h, 404, "NotFound", name, plural)
        if h.command == "GET":
            return _json(h, 200, obj)
        if h.command == "DELETE":
            del self.objects[(collection, name)]
            return _json(h, 200, obj)
        return _send(h, 405, b"method not allowed", "text/plain")


def _selected(obj: dict, selector: str) -> bool:
    """Equality-based label selectors only (a=b,c=d): all the launcher sends."""
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


def _reason(status: int) -> str:
    return {403: "Forbidden", 404: "NotFound", 409: "AlreadyExists", 401: "Unauthorized", 422: "Invalid"}.get(status, "InternalError")


def _status(h, code: int, reason: str, name: str, plural: str) -> None:
    messages = {
        "Forbidden": f'{plural} is forbidden: User "tester" cannot do this to resource "{plural}"',
        "NotFound": f'{plural} "{name}" not found',
        "AlreadyExists": f'{plural} "{name}" already exists',
    }
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code,
            "message": messages.get(reason, reason), "details": {"name": name, "kind": plural}}
    _json(h, code, body)


def _json(h, code: int, obj: dict) -> None:
    _send(h, code, json.dumps(obj).encode(), "application/json")


def _send(h, code: int, data: bytes, ctype: str) -> None:
    h.send_response(code)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
