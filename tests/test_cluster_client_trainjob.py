"""The cluster commands on TrainJobs (Kubeflow Trainer v2) against the local fake API server: the same
commands as tests/test_cluster_client.py, the job found by its JobSet's labels."""
from __future__ import annotations

import threading
import time

import yaml

from cluster_client_common import CLUSTER_RUNTIMES, CONFIGMAPS, JOB, PODS, _job, api, run  # noqa: F401 (api: a fixture)

# ---------------------------------------------------------------------------------------------
# TrainJobs (Kubeflow Trainer v2): the same commands, found by the JobSet's labels


TRAINJOBS = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/ml/trainjobs"
RUNTIMES = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/ml/trainingruntimes"


def _trainjob(api, name="dlrm-tj", conditions=(), jobs=None):
    status = {"conditions": [{"type": t, "status": s, "reason": r, "message": f"TrainJob is {t.lower()}",
                              "lastTransitionTime": "2024-05-01T10:00:00Z"} for t, s, r in conditions]}
    if jobs:
        status["jobsStatus"] = jobs
    return api.add(TRAINJOBS, {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob",
                               "metadata": {"name": name, "namespace": "ml"}, "spec": {}, "status": status})


def _jobset_pod(api, job, rank, phase="Running", restarts=0):
    """A pod as JobSet names and labels it: <jobset>-<replicated job>-<job index>-<completion index>-<suffix>."""
    labels = {"jobset.sigs.k8s.io/jobset-name": job, "jobset.sigs.k8s.io/replicatedjob-name": "node",
              "jobset.sigs.k8s.io/job-index": "0", "batch.kubernetes.io/job-completion-index": str(rank)}
    name = f"{job}-node-0-{rank}-x{rank}z"
    api.add(PODS, {"metadata": {"name": name, "labels": labels}, "spec": {"nodeName": f"gpu-node-{rank}"},
                   "status": {"phase": phase, "containerStatuses": [{"name": "node", "restartCount": restarts}]}})
    return name


def test_status_of_a_trainjob_from_its_conditions_child_jobs_and_jobset_pods(api, capsys):
    _trainjob(api, jobs=[{"name": "node", "ready": 1, "active": 1, "succeeded": 0, "failed": 0, "suspended": 0}])
    _jobset_pod(api, "dlrm-tj", 0)
    _jobset_pod(api, "dlrm-tj", 1, phase="Pending", restarts=2)
    _jobset_pod(api, "other", 0)
    rc, out, _ = run(capsys, "status", "dlrm-tj")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].startswith("TrainJob dlrm-tj (namespace ml") and lines[0].endswith(": Running")
    assert any(line.split() == ["node", "1", "1", "0", "0", "0"] for line in lines)
    assert any(line.split()[:4] == ["dlrm-tj-node-0-1-x1z", "Pending", "2", "gpu-node-1"] for line in lines)
    assert "other" not in out
    assert api.find("GET", "/pods")[0].query["labelSelector"] == ["jobset.sigs.k8s.io/jobset-name=dlrm-tj"]
    # looked up as a PyTorchJob first (404), then as a TrainJob
    assert [r.path for r in api.find("GET")][:2] == ["/apis/kubeflow.org/v1/namespaces/ml/pytorchjobs/dlrm-tj",
                                                     TRAINJOBS + "/dlrm-tj"]


def test_trainjob_watch_ends_on_complete_and_failed(api, capsys):
    job = _trainjob(api)

    def finish():
        time.sleep(0.5)
        job["status"]["conditions"] = [{"type": "Complete", "status": "True", "reason": "JobSetCompleted"}]

    threading.Thread(target=finish).start()
    rc, out, _ = run(capsys, "status", "dlrm-tj", "--watch", "--interval", "0.05", "--api", "trainjob")
    assert rc == 0 and out.splitlines()[0].endswith(": Pending") and out.rstrip().split("\n--- ")[-1].splitlines()[1].endswith(": Complete")
    job["status"]["conditions"].append({"type": "Failed", "status": "True", "reason": "DeadlineExceeded"})
    rc, out, _ = run(capsys, "status", "dlrm-tj")
    assert rc == 1 and out.splitlines()[0].endswith(": Failed")


def test_trainjob_logs_by_node_rank(api, capsys):
    _trainjob(api)
    _jobset_pod(api, "dlrm-tj", 0)
    pod = _jobset_pod(api, "dlrm-tj", 1)
    api.set_log("ml", pod, "node", "step 10 loss 0.5\n")
    for flags in (["--node", "1"], ["--replica", "worker", "--index", "0"]):  # worker 0 is node 1 in both APIs
        rc, out, err = run(capsys, "logs", "dlrm-tj", *flags)
        assert rc == 0 and out == "step 10 loss 0.5\n", err
    selector = [r for r in api.find("GET", "/pods") if "labelSelector" in r.query][-1].query["labelSelector"][0]
    assert selector == ("jobset.sigs.k8s.io/jobset-name=dlrm-tj,jobset.sigs.k8s.io/replicatedjob-name=node,"
                        "batch.kubernetes.io/job-completion-index=1")
    assert api.find("GET", "/log")[-1].query["container"] == ["node"]
    rc, _, err = run(capsys, "logs", "dlrm-tj", "--node", "7")
    assert rc == 2 and "no pod for node 7 of job dlrm-tj" in err


def test_list_shows_both_kinds_and_tolerates_one_missing_operator(api, capsys):
    _job(api, "a-job", conditions=[("Created", "True"), ("Running", "True")])
    _trainjob(api, "b-job", conditions=[("Complete", "True", "JobSetCompleted")])
    rc, out, _ = run(capsys, "list")
    rows = [line.split()[:3] for line in out.splitlines()]
    assert rc == 0 and rows == [["NAME", "KIND", "STATE"], ["a-job", "PyTorchJob", "Running"], ["b-job", "TrainJob", "Complete"]]
    rc, out, _ = run(capsys, "list", "--api", "trainjob")
    assert rc == 0 and "a-job" not in out and "b-job" in out
    api.crd_installed = False  # a Trainer-only cluster
    rc, out, _ = run(capsys, "list")
    assert rc == 0 and "b-job" in out
    rc, _, err = run(capsys, "status", "b-job")
    assert rc == 0
    api.trainer_installed = False
    rc, _, err = run(capsys, "list")
    assert rc == 2 and "no PyTorchJob resource" in err and "no Kubeflow Trainer v2 resource" in err and "helm install" in err
    rc, _, err = run(capsys, "status", "b-job", "--api", "trainjob")
    assert rc == 2 and err.startswith("error: this cluster has no Kubeflow Trainer v2 resource (trainjobs.trainer.kubeflow.org)")


def test_cancel_a_trainjob_deletes_it_and_the_runtime_rendered_with_it(api, capsys):
    _trainjob(api)
    owned = {"app.kubernetes.io/instance": "dlrm-tj", "app.kubernetes.io/managed-by": "dlrm-launcher"}
    api.add(RUNTIMES, {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainingRuntime",
                       "metadata": {"name": "dlrm-tj", "labels": owned}, "spec": {}})
    api.add(RUNTIMES, {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainingRuntime",
                       "metadata": {"name": "shared-runtime", "labels": {}}, "spec": {}})
    api.add(CONFIGMAPS, {"metadata": {"name": "dlrm-tj-config", "labels": owned}})
    rc, out, _ = run(capsys, "cancel", "dlrm-tj")
    assert rc == 0
    deletes = [(r.path, r.query["propagationPolicy"]) for r in api.find("DELETE")]
    assert deletes == [(TRAINJOBS + "/dlrm-tj", ["Foreground"]), (CONFIGMAPS + "/dlrm-tj-config", ["Background"]),
                       (RUNTIMES + "/dlrm-tj", ["Background"])]
    assert "TrainJob/dlrm-tj deleted" in out and "TrainingRuntime/dlrm-tj deleted" in out
    assert list(api.objects) == [(RUNTIMES, "shared-runtime")]


def test_submit_a_trainjob_creates_its_runtime_then_the_job_exactly_as_dry_run_prints(api, capsys):
    rc, dry, _ = run(capsys, "submit", *JOB, "--api", "trainjob", "--dry-run")
    assert rc == 0 and api.requests == []
    rc, out, err = run(capsys, "submit", *JOB, "--api", "trainjob")
    assert rc == 0, err
    posts = api.find("POST")
    assert [r.path for r in posts] == [CONFIGMAPS, RUNTIMES, TRAINJOBS]
    assert [r.body for r in posts] == list(yaml.safe_load_all(dry))
    assert "TrainJob/dlrm-smoke created" in out and "status dlrm-smoke -n ml" in out
    rc, out, _ = run(capsys, "cancel", "dlrm-smoke")  # found as a TrainJob; its runtime and config go with it
    assert rc == 0 and api.objects == {}


def test_a_failed_trainjob_create_rolls_back_its_runtime_and_config(api, capsys):
    api.fail("POST", "/trainjobs", 403)
    rc, _, err = run(capsys, "submit", *JOB, "--api", "trainjob")
    assert rc == 2 and "may not create trainjobs.trainer.kubeflow.org" in err
    assert [r.path for r in api.find("DELETE")] == [RUNTIMES + "/dlrm-smoke", CONFIGMAPS + "/dlrm-smoke-config"]
    assert api.objects == {}




def test_submit_on_a_cluster_runtime_looks_it_up_first(api, capsys):
    flags = [*JOB, "--api", "trainjob", "--set", "trainjob.cluster_runtime=torch-distributed"]
    rc, _, err = run(capsys, "submit", *flags)
    assert rc == 2 and "no ClusterTrainingRuntime 'torch-distributed' on this cluster" in err and "runtimes.defaultEnabled" in err
    assert api.find("POST") == [] and api.find("GET")[0].path == CLUSTER_RUNTIMES + "/torch-distributed"
    api.add(CLUSTER_RUNTIMES, {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "ClusterTrainingRuntime",
                               "metadata": {"name": "torch-distributed"}, "spec": {}})
    rc, out, err = run(capsys, "submit", *flags)
    assert rc == 0, err
    assert [r.path for r in api.find("POST")] == [CONFIGMAPS, TRAINJOBS]  # no TrainingRuntime of ours
    job = api.find("POST")[1].body
    assert job["spec"]["runtimeRef"]["name"] == "torch-distributed" and job["spec"]["runtimePatches"][0]["manager"] == "dlrm-k8s.io/launcher"


def test_a_role_that_cannot_read_cluster_runtimes_only_warns(api, capsys):
    api.fail("GET", "/clustertrainingruntimes/", 403)
    rc, out, err = run(capsys, "submit", *JOB, "--api", "trainjob", "--set", "trainjob.cluster_runtime=torch-distributed")
    assert rc == 0 and "warning: could not check ClusterTrainingRuntime torch-distributed: forbidden" in err
    assert "TrainJob/dlrm-smoke created" in out
