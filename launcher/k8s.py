"""The launcher's only door to a Kubernetes cluster: a thin wrapper over the official client.

    cluster = connect(context=None, namespace=None)      # resolved as kubectl resolves them
    cluster.create(obj, dry_run=True)                    # any rendered object, dict in, dict out
    cluster.get_job("dlrm-x"); cluster.list_pods("training.kubeflow.org/job-name=dlrm-x")

Everything returns plain dicts (the raw JSON), so callers never touch client model classes and the
tests' fake API server need not produce complete objects. Every API or network failure leaves this
module as a one-line `UserError` that says what to do: the kubernetes import stays in here, and
so does the knowledge of what a 403 or a 404 means.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from dlrm.errors import UserError
from dlrm.io.s3_settings import env_number
from launcher import trainjob

PYTORCHJOB = ("kubeflow.org", "v1", "pytorchjobs")
OPERATOR_HINT = ("install the Kubeflow training operator (v1.9): kubectl apply --server-side -k "
                 "\"github.com/kubeflow/training-operator.git/manifests/overlays/standalone?ref=v1.9.0\"")
TRAINER_HINT = ("install Kubeflow Trainer v2.3 (with JobSet): helm install kubeflow-trainer oci://ghcr.io/kubeflow/charts/kubeflow-trainer "
                "--namespace kubeflow-system --create-namespace --version 2.3.0")
# The job kinds the launcher submits, by `api`: (apiVersion, kind).
JOB_KINDS = {"pytorchjob": ("kubeflow.org/v1", "PyTorchJob"), "trainjob": (trainjob.API_VERSION, "TrainJob")}
RBAC_HINT = "ask a cluster admin to bind the minimal Role from docs/security.md"
FIELD_MANAGER = "dlrm-launcher"
# Short connect timeout and no urllib3 retries: an unreachable cluster should fail in seconds,
# not after urllib3's three silent retries of a long default timeout.
CONNECT_TIMEOUT_ENV = "DLRM_K8S_CONNECT_TIMEOUT"
DEFAULT_CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 60.0
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

# Kinds without a namespace; everything else is created in the job's namespace.
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "PriorityClass", "ClusterRole",
                  "ClusterRoleBinding", "CustomResourceDefinition", "ClusterTrainingRuntime"}
# Plurals that "lowercase + s" gets wrong.
PLURALS = {"PriorityClass": "priorityclasses", "StorageClass": "storageclasses", "Ingress": "ingresses",
           "NetworkPolicy": "networkpolicies", "Endpoints": "endpoints"}


def plural(kind: str) -> str:
    return PLURALS.get(kind, kind.lower() + "s")


def resource_path(obj: dict, namespace: str) -> tuple[str, str, str, str | None]:
    """(group, version, plural, namespace or None) for an object: the REST address of its kind."""
    api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
    if not api_version or not kind:
        raise UserError(f"object {(obj.get('metadata') or {}).get('name', '?')!r} has no apiVersion or kind")
    group, _, version = api_version.rpartition("/")
    ns = None if kind in CLUSTER_SCOPED else ((obj.get("metadata") or {}).get("namespace") or namespace)
    return group, version, plural(kind), ns


# ---------------------------------------------------------------------------------------------
# Loading credentials: the same search order as kubectl.


def kubeconfig_files() -> list[str]:
    """$KUBECONFIG (a ':'-separated list; files that do not exist are skipped, as kubectl does) or ~/.kube/config."""
    env = os.environ.get("KUBECONFIG")
    candidates = env.split(os.pathsep) if env else [str(Path.home() / ".kube" / "config")]
    return [p for p in candidates if p and Path(p).expanduser().is_file()]


def _resolve(context: str | None, namespace: str | None, fallback: str = "default") -> tuple[client.Configuration, str, str]:
    """Load credentials into a fresh Configuration; return it, the namespace and a label for messages."""
    cfg = client.Configuration()
    files = kubeconfig_files()
    if files:
        # The client merges a ':'-separated list the way kubectl does (first file wins per key).
        path = os.pathsep.join(files)
        try:
            contexts, active = config.list_kube_config_contexts(config_file=path)
            chosen = active
            if context:
                chosen = next((c for c in contexts if c.get("name") == context), None)
                if chosen is None:
                    names = ", ".join(c.get("name", "?") for c in contexts) or "none"
                    raise UserError(f"no context {context!r} in {path} (contexts: {names}); see `kubectl config get-contexts`")
            config.load_kube_config(config_file=path, context=context, client_configuration=cfg)
        except ConfigException as e:
            raise UserError(f"kubeconfig {path} is unusable: {str(e).splitlines()[0]}; check `kubectl config view`") from None
        ctx_ns = ((chosen or {}).get("context") or {}).get("namespace")
        label = f"context {(chosen or {}).get('name', '?')!r}"
        return cfg, namespace or ctx_ns or fallback, label
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            config.load_incluster_config(client_configuration=cfg)
        except ConfigException as e:
            raise UserError(f"in-cluster config is unusable: {e}") from None
        if context:
            raise UserError(f"--context {context} needs a kubeconfig; inside a pod only the in-cluster account exists")
        pod_ns = SA_NAMESPACE_FILE.read_text().strip() if SA_NAMESPACE_FILE.is_file() else ""
        return cfg, namespace or pod_ns or fallback, "the in-cluster service account"
    where = os.environ.get("KUBECONFIG") or "~/.kube/config"
    raise UserError(f"no Kubernetes config: {where} does not exist and this is not a pod; "
                    "set KUBECONFIG or run `kubectl config view` to check your setup")


def resolve_namespace(context: str | None = None, namespace: str | None = None, fallback: str = "default") -> str:
    """The namespace kubectl would use: the flag, else the context's, else `fallback`. Never fails:
    `submit --dry-run` must work on a machine without any kubeconfig."""
    if namespace:
        return namespace
    try:
        return _resolve(context, None, fallback)[1]
    except UserError:
        return fallback


def connect(context: str | None = None, namespace: str | None = None, fallback: str = "default") -> "Cluster":
    """A Cluster for the kubeconfig context (default: current) and namespace (flag > context > fallback)."""
    cfg, ns, label = _resolve(context, namespace, fallback)
    cfg.retries = False  # urllib3: raise on the first connection error
    api = client.ApiClient(cfg)
    return Cluster(api=api, namespace=ns, where=f"{cfg.host} ({label})")


# ---------------------------------------------------------------------------------------------
# The calls the launcher makes.


@dataclass
class Cluster:
    api: Any  # kubernetes.client.ApiClient
    namespace: str
    where: str  # "https://host:6443 (context 'prod')", for messages

    @property
    def core(self) -> Any:
        return client.CoreV1Api(self.api)

    @property
    def custom(self) -> Any:
        return client.CustomObjectsApi(self.api)

    def _call(self, fn, *args, verb: str, what: str, name: str = "", ns: str | None = None, stream: bool = False, **kw) -> Any:
        """Run one API call; raw JSON dict back, failures as UserErrors naming verb and resource."""
        # A followed log may be quiet for hours; the client accepts no "no read timeout", so a day.
        timeout = (env_number(CONNECT_TIMEOUT_ENV, DEFAULT_CONNECT_TIMEOUT_S), 86400.0 if stream else READ_TIMEOUT_S)
        try:
            resp = fn(*args, _preload_content=False, _request_timeout=timeout, **kw)
        except ApiException as e:
            error = api_error(e, verb=verb, what=what, name=name, namespace=ns or self.namespace)
            if isinstance(error, NotServed) and not self._answers_discovery():
                raise UserError(f"{self.where} answered HTTP 404 to {what} and to the discovery endpoint /api as well: "
                                f"it is not a Kubernetes API server, or the kubeconfig's server URL has a wrong "
                                f"host or path (`kubectl cluster-info`)") from None
            raise error from None
        except urllib3.exceptions.HTTPError as e:
            reason = re.sub(r"<[^>]*>: ", "", str(getattr(e, "reason", None) or e))  # drop "<...Connection object at 0x..>: "
            raise UserError(f"cannot reach the Kubernetes API server at {self.where}: {reason}; "
                            "is the cluster up and is this the right context? (`kubectl cluster-info`)") from None
        if stream:
            return resp
        data = resp.data
        return json.loads(data) if data else {}

    def _answers_discovery(self) -> bool:
        """Whether the server answers GET /api as every Kubernetes API server does (an APIVersions
        object): a bare 404 from such a server means a resource is not served (its CRD is missing);
        from any other server, that the address is wrong."""
        try:
            resp = client.CoreApi(self.api).get_api_versions(
                _preload_content=False, _request_timeout=(env_number(CONNECT_TIMEOUT_ENV, DEFAULT_CONNECT_TIMEOUT_S),
                                                          READ_TIMEOUT_S))
            return json.loads(resp.data).get("kind") == "APIVersions"
        except (ApiException, urllib3.exceptions.HTTPError, ValueError, AttributeError):
            return False

    # -- any rendered object ------------------------------------------------------------------

    def create(self, obj: dict, dry_run: bool = False) -> dict:
        """POST one object; core kinds through CoreV1Api's paths, the rest as custom objects."""
        group, version, res, ns = resource_path(obj, self.namespace)
        name = obj.get("metadata", {}).get("name", "")
        opts = {"dry_run": "All" if dry_run else None, "field_manager": FIELD_MANAGER}
        what = f"{res}.{group}" if group else res
        if group == "" and version == "v1":
            fn = getattr(self.core, f"create_{'namespaced_' if ns else ''}{_snake(obj['kind'])}", None)
            if fn is None:
                raise UserError(f"{obj['kind']} {name}: the launcher cannot create this core kind")
            args = (ns, obj) if ns else (obj,)
            return self._call(fn, *args, verb="create", what=what, name=name, ns=ns, **opts)
        if ns:
            return self._call(self.custom.create_namespaced_custom_object, group, version, ns, res, obj,
                              verb="create", what=what, name=name, ns=ns, **opts)
        return self._call(self.custom.create_cluster_custom_object, group, version, res, obj,
                          verb="create", what=what, name=name, ns=ns, **opts)

    def delete(self, obj: dict, propagation: str = "Foreground") -> dict:
        group, version, res, ns = resource_path(obj, self.namespace)
        name = obj["metadata"]["name"]
        what = f"{res}.{group}" if group else res
        opts = {"propagation_policy": propagation}
        if group == "" and version == "v1":
            fn = getattr(self.core, f"delete_{'namespaced_' if ns else ''}{_snake(obj['kind'])}")
            args = (name, ns) if ns else (name,)
            return self._call(fn, *args, verb="delete", what=what, name=name, ns=ns, **opts)
        if ns:
            return self._call(self.custom.delete_namespaced_custom_object, group, version, ns, res, name,
                              verb="delete", what=what, name=name, ns=ns, **opts)
        return self._call(self.custom.delete_cluster_custom_object, group, version, res, name,
                          verb="delete", what=what, name=name, ns=ns, **opts)

    def get(self, api_version: str, kind: str, name: str) -> dict:
        group, version, res, ns = resource_path({"apiVersion": api_version, "kind": kind}, self.namespace)
        what = f"{res}.{group}" if group else res
        if group == "":
            fn = getattr(self.core, f"read_{'namespaced_' if ns else ''}{_snake(kind)}")
            return self._call(fn, *((name, ns) if ns else (name,)), verb="get", what=what, name=name)
        if ns is None:
            return self._call(self.custom.get_cluster_custom_object, group, version, res, name,
                              verb="get", what=what, name=name)
        return self._call(self.custom.get_namespaced_custom_object, group, version, ns, res, name,
                          verb="get", what=what, name=name)

    def list(self, api_version: str, kind: str, selector: str = "") -> list[dict]:
        """Objects of a kind in the namespace (or cluster-wide for cluster-scoped kinds), by label selector."""
        group, version, res, ns = resource_path({"apiVersion": api_version, "kind": kind}, self.namespace)
        what = f"{res}.{group}" if group else res
        if group == "":
            fn = getattr(self.core, f"list_{'namespaced_' if ns else ''}{_snake(kind)}")
            out = self._call(fn, *((ns,) if ns else ()), label_selector=selector or None, verb="list", what=what)
        elif ns:
            out = self._call(self.custom.list_namespaced_custom_object, group, version, ns, res,
                             label_selector=selector or None, verb="list", what=what)
        else:
            out = self._call(self.custom.list_cluster_custom_object, group, version, res,
                             label_selector=selector or None, verb="list", what=what)
        return out.get("items", [])

    def get_job(self, name: str, api: str = "pytorchjob") -> dict:
        return self.get(*JOB_KINDS[api], name)

    def list_jobs(self, api: str = "pytorchjob") -> list[dict]:
        return self.list(*JOB_KINDS[api])

    def list_pods(self, selector: str) -> list[dict]:
        return self.list("v1", "Pod", selector)

    def pod_log(self, pod: str, container: str, follow: bool = False, previous: bool = False,
                tail_lines: int | None = None) -> Iterator[str]:
        """The container's log, as text chunks; with follow, chunks arrive until the container ends."""
        opts = {"container": container, "follow": follow, "previous": previous or None, "tail_lines": tail_lines}
        resp = self._call(self.core.read_namespaced_pod_log, pod, self.namespace, verb="get",
                          what="pods/log", name=pod, stream=True, **opts)
        try:
            for chunk in resp.stream(4096, decode_content=True):
                yield chunk.decode("utf-8", errors="replace")
        except urllib3.exceptions.HTTPError as e:
            raise UserError(f"the log stream of pod {pod} broke off: {e}; run the command again to resume") from None
        finally:
            resp.release_conn()


def _snake(kind: str) -> str:
    """ConfigMap -> config_map, PersistentVolumeClaim -> persistent_volume_claim (CoreV1Api's names)."""
    return "".join("_" + c.lower() if c.isupper() else c for c in kind).lstrip("_")


# ---------------------------------------------------------------------------------------------
# What an API error means for the user.


def _status(e: ApiException) -> dict:
    """The Status object the API server sends with errors, or {} (a bare '404 page not found')."""
    try:
        body = json.loads(e.body or "")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) and body.get("kind") == "Status" else {}


class NotFound(UserError):
    """The named object does not exist (callers that tolerate that catch it)."""


class NotServed(UserError):
    """404 without a Status: the API server does not serve the resource (its CRD is not installed)."""


class Forbidden(UserError):
    """403: RBAC denies the verb on the resource."""


class AlreadyExists(UserError):
    """409 on create: the name is taken."""


def api_error(e: ApiException, verb: str, what: str, name: str, namespace: str) -> UserError:
    status = _status(e)
    lines = (status.get("message") or e.reason or "").strip().splitlines()
    message = lines[0] if lines else ""
    details = status.get("details") or {}
    obj = f"{what} {name!r}" if name else what
    if e.status == 404:
        if not status:
            # No Status body: the API server does not serve this resource at all, i.e. the CRD is missing.
            if what.endswith("." + trainjob.GROUP):
                return NotServed(f"this cluster has no Kubeflow Trainer v2 resource ({what}): {TRAINER_HINT}")
            if what.endswith("kubeflow.org"):
                return NotServed(f"this cluster has no PyTorchJob resource (kubeflow.org/v1 pytorchjobs): {OPERATOR_HINT}")
            return NotServed(f"this cluster does not serve {what}: {message or 'not found'}")
        if details.get("kind") == "namespaces":
            return UserError(f"namespace {namespace!r} does not exist: create it (kubectl create namespace {namespace}) or pass --namespace")
        return NotFound(f"no {obj} in namespace {namespace!r}")
    if e.status == 409:
        return AlreadyExists(f"{obj} already exists in namespace {namespace!r}")
    if e.status == 403:
        return Forbidden(f"forbidden: you may not {verb} {what} in namespace {namespace!r} ({message}); {RBAC_HINT}")
    if e.status == 401:
        return UserError(f"the API server rejected your credentials ({message}); refresh them (e.g. your cloud's get-credentials command)")
    if e.status in (400, 422):
        causes = "; ".join(f"{c.get('field', '?')}: {c.get('message', '')}" for c in details.get("causes", []))
        return UserError(f"the API server refused {obj}: {causes or message}")
    return UserError(f"{verb} {obj} failed: HTTP {e.status} {message}")
