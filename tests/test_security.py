"""Security: no secret in any manifest, request, log line or output file; pods non-root and locked
down; no RBAC rendered; the minimal submitter Role in docs/security.md covers every request the
launcher makes (and nothing cluster-wide)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fake_k8s import FakeK8s
from launcher.config import load_job_config
from launcher.render import render_objects, to_yaml
from test_render import CASES

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "security.md"

# Distinctive values: a hit anywhere means the value leaked.
SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAZZSECRETID000001",
    "AWS_SECRET_ACCESS_KEY": "zzSecretAccessKey/ZZ0000000000000000000002",
    "AWS_SESSION_TOKEN": "zzSessionTokenZZ0000000000000000000000003",
}
KUBE_TOKEN = "zzKubeTokenZZ00000000000000000000000004"
ALL_SECRETS = [*SECRETS.values(), KUBE_TOKEN]

# Configurations beyond the golden ones: every way credentials can be wired.
EXTRA_CASES = {
    "mount-secret-minio": ("criteo-fl15", {"storage": {"mode": "mount"}, "dataset": "s3://data/criteo",
                                           "s3": {"secret": "aws-creds", "endpoint_url": "http://minio:9000"}}),
    "stage-secret": ("criteo-fl15", {"storage": {"mode": "stage"}, "dataset": "s3://data/criteo", "s3": {"secret": "aws-creds"},
                                     "train": {"checkpoint_dir": "s3://ckpt/run"}}),
}
ALL_CASES = {**CASES, **EXTRA_CASES}


def assert_no_secret(text: str, where: str) -> None:
    for s in ALL_SECRETS:
        assert s not in text, f"secret {s[:8]}... found in {where}"


def tree_text(root: Path) -> dict[str, str]:
    """Every file under root, as text (bytes decoded leniently: a key would still show)."""
    return {str(p): p.read_bytes().decode("latin-1") for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def secret_env(monkeypatch, tmp_path):
    """Known secrets in every place a careless launcher could pick them up from."""
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    creds = tmp_path / "aws-credentials"
    creds.write_text(f"[default]\naws_access_key_id = {SECRETS['AWS_ACCESS_KEY_ID']}\n"
                     f"aws_secret_access_key = {SECRETS['AWS_SECRET_ACCESS_KEY']}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.delenv("DLRM_DEBUG", raising=False)
    return dict(os.environ)


def run_cli(module: str, *argv: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


# -- no secret in any output -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ALL_CASES))
def test_rendered_objects_hold_no_secret(name, secret_env):
    profile, overrides = ALL_CASES[name]
    objs = render_objects(load_job_config(profile, overrides=overrides), git_revision="0123abc")
    text = to_yaml(objs)
    assert_no_secret(text, f"render of {name}")
    if overrides.get("s3", {}).get("secret"):  # credentials by reference: the Secret's name, in envFrom
        # (or key by key, secretKeyRef, for a TrainJob on a ClusterTrainingRuntime)
        assert ("secretRef" in text or "secretKeyRef" in text) and "aws-creds" in text
    for key in SECRETS:  # no credential variable is set to a value anywhere
        assert not re.search(rf"name: {key}\s+value:", text), f"{key} set inline in {name}"


def test_cli_render_submit_and_api_requests_hold_no_secret(secret_env, tmp_path):
    """render --out, submit --dry-run and a real submit against the fake API server."""
    with FakeK8s() as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", namespace="ml")
        kubeconfig.write_text(kubeconfig.read_text().replace("secret-token", KUBE_TOKEN))
        env = dict(secret_env, KUBECONFIG=str(kubeconfig))
        job = ["--profile", "criteo-fl15", "--set", "storage.mode=stage", "--set", "dataset=s3://data/criteo",
               "--set", "train.out=s3://runs/{name}",
               "--set", "s3.secret=aws-creds", "--set", "s3.endpoint_url=http://minio:9000", "--name", "sec"]
        outputs = []
        r = run_cli("launcher", "render", *job, "--out", str(tmp_path / "yaml"), env=env, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        outputs.append(("render", r))
        r = run_cli("launcher", "submit", *job, "--dry-run", env=env, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        outputs.append(("submit --dry-run", r))
        r = run_cli("launcher", "submit", *job, env=env, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        outputs.append(("submit", r))
        for what in (["status", "sec"], ["list"], ["cancel", "sec"]):
            outputs.append((what[0], run_cli("launcher", *what, env=env, cwd=tmp_path)))
        posts = api.find("POST")
        assert posts, "submit sent nothing"
        for req in api.requests:
            assert_no_secret(yaml.safe_dump(req.body) + str(req.query) + req.path, f"{req.method} {req.path}")
    for what, r in outputs:
        assert_no_secret(r.stdout + r.stderr, f"output of {what}")
    files = tree_text(tmp_path / "yaml")
    assert files
    for path, text in files.items():
        assert_no_secret(text, path)


def test_train_outputs_and_logs_hold_no_secret(secret_env, tmp_path):
    """config.yaml, metrics.jsonl, checkpoints (metadata and tensors) and every printed line."""
    from datasets import make_dataset

    make_dataset(tmp_path / "ds", rows=1024, test_rows=512)
    r = run_cli("dlrm", "train", "--config", "tiny", "--dataset", str(tmp_path / "ds"), "--out", str(tmp_path / "run"),
                "--set", "max_steps=4", "--set", "checkpoint_every=2", env=secret_env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_no_secret(r.stdout + r.stderr, "dlrm train output")
    files = tree_text(tmp_path / "run")
    assert any(p.endswith("metrics.jsonl") for p in files) and any(p.endswith("metadata.json") for p in files)
    for path, text in files.items():
        assert_no_secret(text, path)


def test_data_push_outputs_and_objects_hold_no_secret(secret_env, tmp_path):
    """push (with progress), verify and a failing push: their lines, and every object uploaded."""
    import boto3
    from datasets import make_dataset
    from s3_fixtures import _start

    endpoint = _start()  # moto accepts any key, so the known secrets are really used to sign
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="x", aws_secret_access_key="x")
    bucket = f"security-{os.getpid()}"
    client.create_bucket(Bucket=bucket)
    make_dataset(tmp_path / "ds", rows=256, test_rows=128)
    env = dict(secret_env, AWS_ENDPOINT_URL=endpoint)
    runs = [run_cli("launcher", "data", "push", str(tmp_path / "ds"), f"s3://{bucket}/ds", env=env, cwd=tmp_path),
            run_cli("launcher", "data", "verify", f"s3://{bucket}/ds", env=env, cwd=tmp_path),
            run_cli("launcher", "data", "push", str(tmp_path / "ds"), "s3://no-such-bucket-sec/ds", env=env, cwd=tmp_path)]
    assert runs[0].returncode == 0 and runs[1].returncode == 0, runs[0].stderr + runs[1].stderr
    assert runs[2].returncode == 2 and runs[2].stderr.startswith("error: ")
    for r in runs:
        assert_no_secret(r.stdout + r.stderr, " ".join(r.args[2:5]))
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert "ds/_manifest.json" in keys
    for key in keys:
        assert_no_secret(client.get_object(Bucket=bucket, Key=key)["Body"].read().decode("latin-1"), key)


# -- pods ----------------------------------------------------------------------------------------------


def pod_specs(obj: dict) -> list[tuple[str, dict]]:
    """(where, pod spec) of every pod an object runs."""
    kind = obj["kind"]
    if kind == "PyTorchJob":
        return [(f"PyTorchJob {r}", s["template"]["spec"]) for r, s in obj["spec"]["pytorchReplicaSpecs"].items()]
    if kind == "Job":
        return [("Job", obj["spec"]["template"]["spec"])]
    if kind in ("TrainingRuntime", "ClusterTrainingRuntime"):  # a TrainJob's pods, as its runtime templates them
        return [(f"TrainingRuntime {j['name']}", j["template"]["spec"]["template"]["spec"])
                for j in obj["spec"]["template"]["spec"]["replicatedJobs"]]
    if kind == "TrainJob":  # on a ClusterTrainingRuntime: our security settings are its runtime patch
        return [(f"TrainJob patch {j['name']}", j["template"]["spec"]["template"]["spec"])
                for p in obj["spec"].get("runtimePatches", [])
                for j in p["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]]
    return []


@pytest.mark.parametrize("name", sorted(ALL_CASES))
def test_pods_run_non_root_without_privileges(name):
    profile, overrides = ALL_CASES[name]
    cfg = load_job_config(profile, overrides=overrides)
    objs = render_objects(cfg, git_revision="0123abc")
    if cfg.api == "trainjob" and cfg.trainjob.runtime_source == "admin":  # its pods are the admin runtime's
        from launcher.admin import bundle_objects

        objs = [o for o in objs if o["kind"] != "TrainJob"] + bundle_objects(cfg)
    checked = 0
    for obj in objs:
        for where, spec in pod_specs(obj):
            psc = spec["securityContext"]
            assert psc["runAsNonRoot"] is True and psc["runAsUser"] > 0 and psc["runAsGroup"] > 0, where
            assert psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
            for flag in ("hostNetwork", "hostPID", "hostIPC"):
                assert not spec.get(flag), f"{where}: {flag}"
            for c in spec.get("initContainers", []) + spec["containers"]:
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False, f"{where}/{c['name']}"
                assert sc["readOnlyRootFilesystem"] is True, f"{where}/{c['name']}"
                assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), f"{where}/{c['name']}"
                assert not sc.get("privileged") and sc.get("runAsUser", 1) != 0, f"{where}/{c['name']}"
                checked += 1
            volumes = {v["name"]: v for v in spec.get("volumes", [])}
            for c in spec["containers"]:
                for m in c.get("volumeMounts", []):
                    if m["name"] == "dataset" and obj["kind"] in ("PyTorchJob", "TrainingRuntime", "TrainJob"):
                        assert m.get("readOnly") is True, f"{where}: the dataset is mounted writable"
                    if "hostPath" in volumes.get(m["name"], {}) and m["name"] == "dataset":
                        assert m.get("readOnly") is True, f"{where}: a hostPath dataset mounted writable"
        if obj["kind"] == "SparkApplication":  # Spark writes inside the image: no read-only root (docs/security.md)
            for role in ("driver", "executor"):
                part = obj["spec"][role]
                assert part["podSecurityContext"]["runAsNonRoot"] is True, role
                assert part["securityContext"]["allowPrivilegeEscalation"] is False, role
                assert part["securityContext"]["capabilities"]["drop"] == ["ALL"], role
                checked += 1
    assert checked, f"{name}: no pod found to check"


def test_no_rbac_objects_and_no_extra_identity():
    """The job's identity needs no API rights: nothing grants any, and a ServiceAccount only for IRSA."""
    for name, (profile, overrides) in sorted(ALL_CASES.items()):
        objs = render_objects(load_job_config(profile, overrides=overrides), git_revision="0123abc")
        kinds = {o["kind"] for o in objs}
        assert not kinds & {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding", "Secret"}, name
        for sa in (o for o in objs if o["kind"] == "ServiceAccount"):
            assert overrides.get("s3", {}).get("role_arn"), f"{name}: a ServiceAccount without IRSA"
            assert set(sa["metadata"]["annotations"]) == {"eks.amazonaws.com/role-arn"}, name
            assert not sa.get("secrets") and not sa.get("imagePullSecrets"), name


@pytest.mark.parametrize("name", ["synthetic-smoke", "stage-irsa-minio-volcano", "criteo-preprocess-local",
                                  "trainjob-stage-irsa-minio-volcano"])
def test_pods_do_not_mount_an_api_token(name):
    profile, overrides = ALL_CASES[name]
    objs = render_objects(load_job_config(profile, overrides=overrides), git_revision="0123abc")
    specs = [s for o in objs for _, s in pod_specs(o)]
    assert specs and all(s.get("automountServiceAccountToken") is False for s in specs)


# -- the submitter Role in docs/security.md -------------------------------------------------------------


def doc_objects() -> list[dict]:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
    return [yaml.safe_load(b) for b in blocks]


def documented_role() -> dict:
    roles = [o for o in doc_objects() if o.get("kind") in ("Role", "ClusterRole")]
    assert len(roles) == 1, "docs/security.md must hold exactly one Role"
    return roles[0]


def test_documented_role_is_namespaced_and_bound():
    role = documented_role()
    assert role["kind"] == "Role" and role["metadata"].get("namespace")
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"], rule
        assert not {"secrets", "roles", "rolebindings", "serviceaccounts"} & set(rule["resources"]), rule
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
    (binding,) = [o for o in doc_objects() if o.get("kind") in ("RoleBinding", "ClusterRoleBinding")]
    assert binding["kind"] == "RoleBinding" and binding["roleRef"] == {
        "kind": "Role", "name": role["metadata"]["name"], "apiGroup": "rbac.authorization.k8s.io"}
    assert binding["metadata"]["namespace"] == role["metadata"]["namespace"]


API_PATH = re.compile(r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)(?:/namespaces/(?P<ns>[^/]+))?/(?P<res>[^/]+)"
                      r"(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?$")


def rbac_request(method: str, path: str, query: dict) -> tuple[str, str, str, bool]:
    """(apiGroup, resource[/subresource], verb, namespaced) as the API server's authorizer sees a request."""
    m = API_PATH.match(path)
    assert m, path
    resource = m["res"] + (f"/{m['sub']}" if m["sub"] else "")
    if method == "GET":
        verb = "get" if m["name"] else ("watch" if query.get("watch") in (["true"], ["1"]) else "list")
    else:
        verb = {"POST": "create", "DELETE": "delete" if m["name"] else "deletecollection",
                "PATCH": "patch", "PUT": "update"}[method]
    return m["group"] or "", resource, verb, m["ns"] is not None


def allowed(role: dict, group: str, resource: str, verb: str) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in role["rules"])


def test_documented_role_covers_every_request_of_every_command(tmp_path, monkeypatch, capsys):
    """Drive submit (plain, server dry run, failing and rolled back), status, logs, list and cancel
    against the fake API server; every request must be namespaced and allowed by the documented Role."""
    from launcher.__main__ import main

    role = documented_role()
    monkeypatch.setattr("launcher.cli_render.git_revision", lambda *a: "0123abc")
    job = ["--profile", "synthetic-smoke", "--nodes", "2", "--gpus", "1"]
    with FakeK8s() as api:
        monkeypatch.setenv("KUBECONFIG", str(api.write_kubeconfig(tmp_path / "kubeconfig", namespace="ml")))
        assert main(["submit", *job, "--server-dry-run"]) == 0
        assert main(["submit", *job]) == 0
        pod = {"metadata": {"name": "dlrm-smoke-master-0", "labels": {
            "training.kubeflow.org/job-name": "dlrm-smoke", "training.kubeflow.org/replica-type": "master",
            "training.kubeflow.org/replica-index": "0"}}, "status": {"phase": "Running"}}
        api.add("/api/v1/namespaces/ml/pods", pod)
        api.set_log("ml", "dlrm-smoke-master-0", "pytorch", "step 1\n")
        assert main(["status", "dlrm-smoke"]) == 0
        assert main(["logs", "dlrm-smoke"]) == 0
        assert main(["list"]) == 0
        assert main(["cancel", "dlrm-smoke"]) == 0
        api.fail("POST", "/pytorchjobs", 403, times=1)  # the ConfigMap is created, then rolled back
        assert main(["submit", *job, "--name", "other"]) == 2
        # The same job as a TrainJob (Kubeflow Trainer v2): its runtime, its JobSet pods.
        tj = [*job, "--api", "trainjob", "--name", "tj"]
        assert main(["submit", *tj, "--server-dry-run"]) == 0
        assert main(["submit", *tj]) == 0
        api.add("/api/v1/namespaces/ml/pods", {"metadata": {"name": "tj-node-0-0-abcde", "labels": {
            "jobset.sigs.k8s.io/jobset-name": "tj", "jobset.sigs.k8s.io/replicatedjob-name": "node",
            "batch.kubernetes.io/job-completion-index": "0"}}, "status": {"phase": "Running"}})
        api.set_log("ml", "tj-node-0-0-abcde", "node", "step 1\n")
        assert main(["status", "tj"]) == 0
        assert main(["logs", "tj"]) == 0
        assert main(["cancel", "tj"]) == 0
        seen = set()
        for req in api.requests:
            group, resource, verb, namespaced = rbac_request(req.method, req.path, req.query)
            assert namespaced, f"{req.method} {req.path}: a cluster-scoped request needs a ClusterRole"
            assert allowed(role, group, resource, verb), f"{req.method} {req.path} -> {verb} {group}/{resource} not in the Role"
            seen.add((group, resource, verb))
    capsys.readouterr()
    # The Role grants nothing the launcher never asks for (watch: kept for `kubectl get -w`).
    granted = {(g, res, v) for r in role["rules"] for g in r["apiGroups"] for res in r["resources"] for v in r["verbs"]}
    unused = granted - seen - {("kubeflow.org", "pytorchjobs", "watch"), ("trainer.kubeflow.org", "trainjobs", "watch"),
                               ("", "persistentvolumeclaims", "delete")}
    assert not unused, f"the Role grants rights no command uses: {sorted(unused)}"
