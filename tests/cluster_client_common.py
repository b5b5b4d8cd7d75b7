"""What the cluster-client tests share (tests/test_cluster_client.py, test_cluster_client_trainjob.py): a local
fake API server (tests/fake_k8s.py) behind a real kubeconfig, and the launcher's CLI run in-process."""
from __future__ import annotations

import pytest

from fake_k8s import FakeK8s
from launcher.__main__ import main

JOBS = "/apis/kubeflow.org/v1/namespaces/ml/pytorchjobs"
JOB = ["--profile", "synthetic-smoke", "--nodes", "2", "--gpus", "2"]
CONFIGMAPS = "/api/v1/namespaces/ml/configmaps"
PODS = "/api/v1/namespaces/ml/pods"
CLUSTER_RUNTIMES = "/apis/trainer.kubeflow.org/v1alpha1/clustertrainingruntimes"


@pytest.fixture
def api(tmp_path, monkeypatch):
    """A fake API server, and KUBECONFIG pointing at it with context namespace 'ml'."""
    monkeypatch.setattr("launcher.cli_render.git_revision", lambda *a: "0123abc")  # the tree changes under us
    with FakeK8s() as fake:
        monkeypatch.setenv("KUBECONFIG", str(fake.write_kubeconfig(tmp_path / "kubeconfig", namespace="ml")))
        yield fake


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _job(api, name="dlrm-smoke", conditions=(), replicas=None):
    status = {"conditions": [{"type": t, "status": s, "reason": f"PyTorchJob{t}", "message": f"job is {t.lower()}",
                              "lastTransitionTime": "2024-05-01T10:00:00Z"} for t, s in conditions]}
    if replicas:
        status["replicaStatuses"] = replicas
    return api.add(JOBS, {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
                          "metadata": {"name": name, "namespace": "ml"}, "spec": {}, "status": status})


def _pod(api, job, rtype, index, phase="Running", restarts=0):
    labels = {"training.kubeflow.org/job-name": job, "training.kubeflow.org/replica-type": rtype,
              "training.kubeflow.org/replica-index": str(index)}
    name = f"{job}-{rtype}-{index}"
    api.add(PODS, {"metadata": {"name": name, "labels": labels}, "spec": {"nodeName": "gpu-node-1"},
                   "status": {"phase": phase, "containerStatuses": [{"name": "pytorch", "restartCount": restarts}]}})
    return name
