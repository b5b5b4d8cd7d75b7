"""submit/status/logs/cancel/list against a local fake API server (tests/fake_k8s.py), through the
real kubernetes client and a real kubeconfig file: request paths, query parameters and bodies are
what a cluster would receive. What a real API server would do with them is not tested here.
TrainJobs: tests/test_cluster_client_trainjob.py."""
from __future__ import annotations

import threading
import time

import yaml

from cluster_client_common import CLUSTER_RUNTIMES, CONFIGMAPS, JOB, JOBS, PODS, _job, _pod, api, run  # noqa: F401 (api: a fixture)


# ---------------------------------------------------------------------------------------------
# submit


def test_submit_sends_exactly_what_dry_run_prints(api, capsys):
    rc, dry, _ = run(capsys, "submit", *JOB, "--dry-run")
    assert rc == 0 and api.requests == []  # a client-side dry run talks to nobody
    rc, out, err = run(capsys, "submit", *JOB)
    assert rc == 0, err
    posts = api.find("POST")
    assert [r.path for r in posts] == [CONFIGMAPS, JOBS]
    assert [r.body for r in posts] == list(yaml.safe_load_all(dry))
    assert all(r.query == {"fieldManager": ["dlrm-launcher"]} for r in posts)
    job = posts[1].body
    assert job["metadata"]["namespace"] == "ml"  # the context's namespace went into the objects
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1 and job["spec"]["nprocPerNode"] == "2"
    assert "PyTorchJob/dlrm-smoke created" in out and "status dlrm-smoke -n ml" in out


def test_server_dry_run_passes_dry_run_all_and_stores_nothing(api, capsys):
    rc, out, _ = run(capsys, "submit", *JOB, "--server-dry-run")
    assert rc == 0
    assert [r.query.get("dryRun") for r in api.find("POST")] == [["All"], ["All"]]
    assert api.objects == {} and "server dry run" in out


def test_namespace_flag_beats_the_context(api, capsys):
    rc, _, _ = run(capsys, "submit", *JOB, "--namespace", "team-a")
    assert rc == 0
    assert [r.path for r in api.find("POST")] == ["/api/v1/namespaces/team-a/configmaps",
                                                 "/apis/kubeflow.org/v1/namespaces/team-a/pytorchjobs"]
    assert {r.body["metadata"]["namespace"] for r in api.find("POST")} == {"team-a"}


def test_context_without_namespace_uses_the_configs(api, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(api.write_kubeconfig(tmp_path / "plain", namespace=None)))
    assert run(capsys, "submit", *JOB)[0] == 0
    assert api.find("POST")[1].path == "/apis/kubeflow.org/v1/namespaces/default/pytorchjobs"
    assert run(capsys, "list")[1].startswith("NAME")  # status/list/...: context namespace, else "default"


def test_missing_crd_names_the_operator_and_rolls_back(api, capsys):
    api.crd_installed = False
    rc, _, err = run(capsys, "submit", *JOB)
    assert rc == 2
    assert "install the Kubeflow training operator (v1.9)" in err and err.count("\n") == 2  # rollback line + error
    assert [r.path for r in api.find("DELETE")] == [CONFIGMAPS + "/dlrm-smoke-config"]
    assert api.objects == {}  # no orphaned ConfigMap


def test_existing_job_is_a_conflict_with_the_way_out(api, capsys):
    assert run(capsys, "submit", *JOB)[0] == 0
    rc, _, err = run(capsys, "submit", *JOB)
    assert rc == 2
    assert "already exists in namespace 'ml'" in err
    assert "python -m launcher cancel dlrm-smoke -n ml" in err and "another --name" in err
    assert run(capsys, "submit", *JOB, "--name", "smoke-2")[0] == 0


def test_forbidden_names_verb_resource_namespace_and_the_role(api, capsys):
    api.fail("POST", "/pytorchjobs", 403)
    rc, _, err = run(capsys, "submit", *JOB)
    assert rc == 2
    line = err.strip().splitlines()[-1]
    assert "may not create pytorchjobs.kubeflow.org in namespace 'ml'" in line and "docs/security.md" in line


def test_invalid_objects_are_refused_before_any_request(api, capsys, monkeypatch):
    monkeypatch.setattr("launcher.cli_render.validate_objects", lambda objs, crd=None: ["bad one", "bad two"])
    rc, _, err = run(capsys, "submit", *JOB)
    assert rc == 2 and api.requests == []
    # one line, as `render` reports it: both go through launcher.cli_render.plan_from_args
    assert err.count("\n") == 1 and "(2 errors; nothing was written or submitted): bad one; bad two" in err


def test_crd_file_is_used_for_validation(api, capsys, tmp_path):
    from launcher.validate import VENDORED_CRD

    mine = tmp_path / "installed-crd.yaml"  # another copy: --crd takes it instead of the vendored one
    mine.write_bytes(VENDORED_CRD.read_bytes())
    rc, _, err = run(capsys, "submit", *JOB, "--crd", str(mine), "--dry-run")
    assert rc == 0, err
    rc, _, err = run(capsys, "submit", *JOB, "--crd", "no-such-crd.yaml", "--dry-run")
    assert rc == 2 and "no-such-crd.yaml" in err


def test_unreachable_cluster_fails_fast_and_clearly(api, capsys, tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "dead").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "dead",
        "clusters": [{"name": "dead", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "contexts": [{"name": "dead", "context": {"cluster": "dead", "user": "u"}}], "users": [{"name": "u", "user": {}}]}))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "dead"))
    start = time.monotonic()
    rc, _, err = run(capsys, "status", "x")
    assert rc == 2 and time.monotonic() - start < 5
    assert f"cannot reach the Kubernetes API server at http://127.0.0.1:{port} (context 'dead')" in err
    assert "Connection refused" in err and err.count("\n") == 1


def test_no_kubeconfig_is_explained_but_dry_run_needs_none(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    rc, _, err = run(capsys, "list")
    assert rc == 2 and "no Kubernetes config" in err and "missing" in err
    rc, out, _ = run(capsys, "submit", *JOB, "--dry-run")
    assert rc == 0 and "namespace: default" in out


def test_unknown_context_lists_the_known_ones(api, capsys):
    rc, _, err = run(capsys, "list", "--context", "prod")
    assert rc == 2 and "no context 'prod'" in err and "contexts: fake" in err


# ---------------------------------------------------------------------------------------------
# status, list, logs, cancel


def test_status_shows_conditions_replicas_and_pods(api, capsys):
    _job(api, conditions=[("Created", "True"), ("Running", "True")],
         replicas={"Master": {"active": 1}, "Worker": {"active": 1, "failed": 2}})
    _pod(api, "dlrm-smoke", "master", 0)
    _pod(api, "dlrm-smoke", "worker", 0, phase="Pending", restarts=3)
    _pod(api, "other-job", "master", 0)
    rc, out, _ = run(capsys, "status", "dlrm-smoke")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].startswith("PyTorchJob dlrm-smoke (namespace ml") and lines[0].endswith(": Running")
    assert any(line.split()[:3] == ["Running", "True", "PyTorchJobRunning"] and "2024-05-01T10:00:00Z" in line
               and line.endswith("job is running") for line in lines)
    assert any(line.split() == ["Worker", "1", "0", "2"] for line in lines)
    assert any(line.split()[:4] == ["dlrm-smoke-worker-0", "Pending", "3", "gpu-node-1"] for line in lines)
    assert "other-job" not in out
    assert api.find("GET", "/pods")[0].query["labelSelector"] == ["training.kubeflow.org/job-name=dlrm-smoke"]


def test_status_of_a_missing_job(api, capsys):
    rc, _, err = run(capsys, "status", "nope")
    assert rc == 2 and "no pytorchjobs.kubeflow.org or trainjobs.trainer.kubeflow.org 'nope' in namespace 'ml'" in err
    rc, _, err = run(capsys, "status", "nope", "--api", "pytorchjob")
    assert rc == 2 and err == "error: no pytorchjobs.kubeflow.org 'nope' in namespace 'ml'\n"


def test_status_watch_reprints_until_the_job_finishes(api, capsys):
    job = _job(api, conditions=[("Created", "True"), ("Running", "True")])

    def finish():
        time.sleep(0.5)
        job["status"]["conditions"] += [{"type": "Failed", "status": "True", "reason": "PyTorchJobFailed"}]

    threading.Thread(target=finish).start()
    rc, out, _ = run(capsys, "status", "dlrm-smoke", "--watch", "--interval", "0.05")
    assert rc == 1  # Failed
    first, second = out.split("\n--- ")
    assert first.splitlines()[0].endswith(": Running") and "PyTorchJobFailed" not in first
    assert second.splitlines()[1].endswith(": Failed") and "PyTorchJobFailed" in second


def test_list_shows_state_and_age(api, capsys):
    _job(api, "a-job", conditions=[("Created", "True"), ("Succeeded", "True")])
    _job(api, "b-job")
    rc, out, _ = run(capsys, "list")
    assert rc == 0
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["NAME", "KIND", "STATE", "AGE"]
    assert rows[1][:3] == ["a-job", "PyTorchJob", "Succeeded"] and rows[2][:3] == ["b-job", "PyTorchJob", "Pending"]


def test_logs_picks_the_replica_by_labels(api, capsys):
    _job(api)
    _pod(api, "dlrm-smoke", "master", 0)
    worker = _pod(api, "dlrm-smoke", "worker", 1)
    api.set_log("ml", worker, "pytorch", "step 10 loss 0.5\nstep 20 loss 0.4\n")
    rc, out, _ = run(capsys, "logs", "dlrm-smoke", "--replica", "worker", "--index", "1", "-f")
    assert rc == 0 and out == "step 10 loss 0.5\nstep 20 loss 0.4\n"
    selector = api.find("GET", "/pods")[0].query["labelSelector"][0]
    assert "training.kubeflow.org/replica-type=worker" in selector and "training.kubeflow.org/replica-index=1" in selector
    log = api.find("GET", "/log")[0]
    assert log.path == f"{PODS}/{worker}/log" and log.query["container"] == ["pytorch"] and log.query["follow"] == ["true"]
    rc, _, err = run(capsys, "logs", "dlrm-smoke", "--replica", "worker", "--index", "5")
    assert rc == 2 and "no pod for worker 5 of job dlrm-smoke" in err


def test_cancel_deletes_the_job_in_the_foreground_and_its_config(api, capsys):
    assert run(capsys, "submit", *JOB)[0] == 0
    rc, out, _ = run(capsys, "cancel", "dlrm-smoke")
    assert rc == 0
    deletes = api.find("DELETE")
    assert deletes[0].path == JOBS + "/dlrm-smoke" and deletes[0].query["propagationPolicy"] == ["Foreground"]
    assert deletes[1].path == CONFIGMAPS + "/dlrm-smoke-config"
    assert api.objects == {} and "ConfigMap/dlrm-smoke-config deleted" in out
    rc, _, err = run(capsys, "cancel", "dlrm-smoke")
    assert rc == 2 and "nothing named dlrm-smoke" in err


def test_cancel_under_the_admin_bundles_role_skips_the_claims_and_runtimes_it_may_not_list(api, capsys):
    """The bundle's Role (launcher/admin.py) has no persistentvolumeclaims or trainingruntimes: cancel goes on."""
    api.add(CLUSTER_RUNTIMES, {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "ClusterTrainingRuntime",
                               "metadata": {"name": "dlrm"}, "spec": {}})
    assert run(capsys, "submit", *JOB, "--api", "trainjob", "--set", "trainjob.cluster_runtime=dlrm",
               "--set", "trainjob.runtime_source=admin")[0] == 0
    api.fail("GET", "/persistentvolumeclaims", 403)
    api.fail("GET", "/trainingruntimes", 403)
    rc, out, err = run(capsys, "cancel", "dlrm-smoke")
    assert rc == 0 and "TrainJob/dlrm-smoke deleted" in out and "ConfigMap/dlrm-smoke-config deleted" in out, err
    assert [k for k in api.objects if k[0] != CLUSTER_RUNTIMES] == []  # the admin's runtime stays


def test_cancel_cleans_a_leftover_config_without_a_job(api, capsys):
    """A submit that died between its two creates leaves a ConfigMap; cancel must still clear the name."""
    assert run(capsys, "submit", *JOB)[0] == 0
    del api.objects[(JOBS, "dlrm-smoke")]
    rc, out, _ = run(capsys, "cancel", "dlrm-smoke")
    assert rc == 0 and "not found" in out and "ConfigMap/dlrm-smoke-config deleted" in out
    assert run(capsys, "submit", *JOB)[0] == 0


def test_status_and_results_read_the_runs_s3_output(api, capsys, s3_bucket, tmp_path):
    """A job rendered with train.out=s3://... carries it in an annotation: status shows the run's latest
    step, loss, AUC and samples/s from there, results fetches its files."""
    import json

    import boto3

    out = f"s3://{s3_bucket}/runs/x"
    job = _job(api, conditions=[("Created", "True"), ("Running", "True")])
    job["metadata"]["annotations"] = {"dlrm-k8s.io/output": out}
    rc, text, _ = run(capsys, "status", "dlrm-smoke")
    assert rc == 0 and text.rstrip().endswith(f"run output {out}:\n  no metrics logged yet")
    records = [{"kind": "train", "step": 200, "total_steps": 1000, "epoch": 0, "loss": 0.45678, "lr": 0.5, "samples_per_s": 12345.0},
               {"kind": "eval", "step": 200, "auc": 0.71234, "loss": 0.46}]
    s3 = boto3.client("s3")
    s3.put_object(Bucket=s3_bucket, Key="runs/x/metrics.jsonl", Body="".join(json.dumps(r) + "\n" for r in records))
    s3.put_object(Bucket=s3_bucket, Key="runs/x/config.yaml", Body=b"seed: 1\n")
    s3.put_object(Bucket=s3_bucket, Key="runs/x/checkpoints/ckpt-000000200/metadata.json", Body=b"{}")
    rc, text, _ = run(capsys, "status", "dlrm-smoke")
    assert rc == 0
    assert "\n  step 200/1,000 (20.0%) | epoch 1 | loss 0.45678 | lr 0.5 | 12,345 samples/s" in text
    assert "\n  eval at step 200: AUC 0.7123 | loss 0.46000" in text
    rc, text, err = run(capsys, "results", "dlrm-smoke", "--out", str(tmp_path / "r"))
    assert rc == 0 and (tmp_path / "r" / "metrics.jsonl").read_text().count("\n") == 2
    assert (tmp_path / "r" / "config.yaml").is_file() and not (tmp_path / "r" / "checkpoints").exists()
    assert "not there (yet): run.json, metrics.png, tensorboard" in err
    # a finished run whose config writes no plot: nothing is "yet", and metrics.png is not missed
    s3.put_object(Bucket=s3_bucket, Key="runs/x/config.yaml", Body=b"seed: 1\nplot: false\n")
    s3.put_object(Bucket=s3_bucket, Key="runs/x/metrics.jsonl", Body="".join(json.dumps(r) + "\n" for r in [
        *records, {"kind": "summary", "step": 200, "auc": 0.71234}]))
    rc, text, err = run(capsys, "results", "dlrm-smoke", "--out", str(tmp_path / "r2"))
    assert rc == 0 and err.rstrip().endswith("; not there: run.json, tensorboard"), err

    del job["metadata"]["annotations"]
    rc, text, _ = run(capsys, "status", "dlrm-smoke")
    assert "run output: /output inside the pods" in text and "train.out to s3://" in text
    rc, _, err = run(capsys, "results", "dlrm-smoke")
    assert rc == 2 and "its output is /output inside the pods" in err


def test_submit_over_another_experiments_run_sends_nothing(api, capsys, s3_bucket):
    """The job's s3:// output holds a run of the same job with another seed: refused before any request,
    not once its pods start; the same job resized (other nodes and GPUs) goes through."""
    import json

    import boto3

    from launcher.config import load_job_config
    from launcher.run_identity import run_id

    out = f"s3://{s3_bucket}/run"
    other = load_job_config("synthetic-smoke", overrides=[f"train.out={out}", "train.seed=8"])
    s3 = boto3.client("s3")
    s3.put_object(Bucket=s3_bucket, Key="run/run.json", Body=json.dumps({"run_id": run_id(other), "job": {"name": "dlrm-smoke"}}))
    s3.put_object(Bucket=s3_bucket, Key="run/config.yaml", Body=b"seed: 8\n")
    rc, _, err = run(capsys, "submit", *JOB, "--set", f"train.out={out}")
    assert rc == 2 and api.requests == [], err
    assert f"error: train.out {out} holds run {run_id(other)}, not this job's run" in err and "train.seed 8 -> 7." in err
    rc, _, err = run(capsys, "submit", *JOB, "--set", f"train.out={out}", "--set", "train.seed=8", "--nodes", "1")
    assert rc == 0 and [r.method for r in api.requests] == ["POST", "POST"], err
