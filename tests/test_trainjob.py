"""api: trainjob: the job plan encoded as a Kubeflow Trainer v2 TrainJob (and the TrainingRuntime
rendered with it, or runtime patches of a ClusterTrainingRuntime), decoded back, and run locally
with the torch plugin's PET_* environment and JobSet's whole-job restarts."""
from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dlrm.errors import UserError
from launcher import trainjob
from launcher.config import load_job_config
from launcher.decode import plan_from_objects
from launcher.encode import plan_job
from launcher.run_local import LocalJob
from launcher.validate import validate_objects

ROOT = Path(__file__).resolve().parents[1]


def smoke(nodes=3, gpus=2, **over):
    return plan_job(load_job_config("synthetic-smoke", overrides={"nodes": nodes, "gpus_per_node": gpus, "api": "trainjob", **over}))


def kinds(plan) -> dict[str, dict]:
    return {o["kind"]: o for o in plan.objects}


def test_replicas_are_jobset_pods_and_the_env_is_the_torch_plugins():
    plan = smoke(nodes=3, gpus=2)
    assert [(r.name, r.role, r.node_rank) for r in plan.replicas] == [("node-0-0", "Node", 0), ("node-0-1", "Node", 1),
                                                                       ("node-0-2", "Node", 2)]
    assert plan.pod_name(plan.replicas[1]) == "dlrm-smoke-node-0-1" and plan.master_port == 29500
    # Only PET_*: Trainer sets no MASTER_ADDR, WORLD_SIZE or RANK (torchrun derives them for its children).
    assert plan.replica_env(plan.replicas[2]) == {
        "PET_NNODES": "3", "PET_NPROC_PER_NODE": "2", "PET_NODE_RANK": "2",
        "PET_MASTER_ADDR": "dlrm-smoke-node-0-0.dlrm-smoke", "PET_MASTER_PORT": "29500"}


def test_the_trainjob_carries_the_trainer_and_the_runtime_the_pod():
    # restarts allowed on 2 nodes: the run output must be shared (an emptyDir per pod could not resume)
    plan = smoke(nodes=2, gpus=2, cluster={"backoff_limit": 2, "ttl_seconds_after_finished": 600}, storage={"output_claim": "runs"})
    assert [o["kind"] for o in plan.objects] == ["ConfigMap", "TrainingRuntime", "TrainJob"]
    main = plan.groups[0].pod.main
    job, runtime = kinds(plan)["TrainJob"], kinds(plan)["TrainingRuntime"]
    assert job["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "TrainingRuntime", "name": "dlrm-smoke"}
    t = job["spec"]["trainer"]
    assert (t["image"], t["command"], t["env"], t["numNodes"], t["numProcPerNode"]) == (main.image, main.command, main.env_k8s(), 2, 2)
    assert t["resourcesPerNode"] == {"requests": main.requests, "limits": main.limits} and t["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == 2
    assert not any(e["name"].startswith("PET_") or e["name"] in ("MASTER_ADDR", "WORLD_SIZE", "RANK") for e in t["env"])
    assert all("--nnodes" not in a and "--node" not in a for a in t["command"])  # torchrun takes them from PET_*
    assert job["spec"]["activeDeadlineSeconds"] == 1800
    spec = runtime["spec"]
    assert spec["mlPolicy"] == {"numNodes": 2, "torch": {}} and "podGroupPolicy" not in spec
    js = spec["template"]["spec"]
    assert js["failurePolicy"] == {"maxRestarts": 2} and js["ttlSecondsAfterFinished"] == 600
    (rjob,) = js["replicatedJobs"]
    assert rjob["name"] == "node" and rjob["replicas"] == 1 and rjob["template"]["spec"]["backoffLimit"] == 0
    assert rjob["template"]["metadata"]["labels"] == {trainjob.ANCESTOR_LABEL: "trainer"}
    pod = rjob["template"]["spec"]["template"]["spec"]
    (node,) = pod["containers"]
    # what spec.trainer sets is not repeated in the runtime: one place says the image and command
    assert node["name"] == "node" and not {"image", "command", "env", "resources", "ports"} & set(node)
    assert [m["mountPath"] for m in node["volumeMounts"]] == [m.path for m in main.mounts]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True and node["securityContext"]["readOnlyRootFilesystem"] is True
    assert validate_objects(plan.objects) == []


def test_gang_scheduling_maps_to_the_runtimes_pod_group_policy_and_kueue_to_the_label():
    volcano = smoke(nodes=2, scheduling={"gang": "volcano", "queue": "research", "priority_class": "high"})
    rt, job = kinds(volcano)["TrainingRuntime"], kinds(volcano)["TrainJob"]
    assert rt["spec"]["podGroupPolicy"] == {"volcano": {}}
    assert job["metadata"]["annotations"]["scheduling.volcano.sh/queue-name"] == "research"
    assert rt["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["priorityClassName"] == "high"
    cosched = smoke(nodes=2, scheduling={"gang": "scheduler-plugins"}, trainjob={"schedule_timeout_seconds": 90})
    assert kinds(cosched)["TrainingRuntime"]["spec"]["podGroupPolicy"] == {"coscheduling": {"scheduleTimeoutSeconds": 90}}
    kueue = smoke(nodes=2, scheduling={"gang": "kueue", "queue": "gpu"})
    assert kinds(kueue)["TrainJob"]["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu"
    assert "podGroupPolicy" not in kinds(kueue)["TrainingRuntime"]["spec"]


def test_a_cluster_runtime_gets_our_pod_settings_as_one_runtime_patch():
    plan = smoke(nodes=2, trainjob={"cluster_runtime": "torch-distributed"}, s3={"secret": "aws-creds", "role_arn": "arn:aws:iam::1:role/r"},
                 cluster={"image_pull_secrets": ["regcred"], "node_selector": {"pool": "gpu"}})
    assert [o["kind"] for o in plan.objects] == ["ServiceAccount", "ConfigMap", "TrainJob"]  # no TrainingRuntime of ours
    job = kinds(plan)["TrainJob"]
    assert job["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime", "name": "torch-distributed"}
    # The Secret reaches the `node` container key by key: a patch cannot give it envFrom.
    env = {e["name"]: e for e in job["spec"]["trainer"]["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"name": "AWS_SECRET_ACCESS_KEY",
                                            "valueFrom": {"secretKeyRef": {"name": "aws-creds", "key": "AWS_SECRET_ACCESS_KEY"}}}
    assert "envFrom" not in json.dumps(job)
    (patch,) = job["spec"]["runtimePatches"]
    assert patch["manager"] == "dlrm-k8s.io/launcher"
    (rjob,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = rjob["template"]["spec"]["template"]["spec"]
    assert rjob["name"] == "node" and pod["serviceAccountName"] == "dlrm-smoke" and pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"] == {"pool": "gpu"} and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert [v["name"] for v in pod["volumes"]] == [v.name for v in plan.groups[0].pod.volumes]
    (node,) = pod["containers"]
    assert set(node) == {"name", "securityContext", "volumeMounts"}  # all a ContainerPatch of `node` may hold here
    assert validate_objects(plan.objects) == []
    with pytest.raises(UserError, match="ClusterTrainingRuntime 'torch-distributed' is not among the objects: .* lives on the cluster"):
        plan_from_objects(plan.objects)


def test_the_decoder_applies_spec_trainer_over_the_runtime_as_trainer_does():
    plan = smoke(nodes=2)
    objs = json.loads(json.dumps(plan.objects))
    rt, job = objs[1], objs[2]
    node = rt["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]
    node.update(image="runtime-image", env=[{"name": "HOME", "value": "/runtime"}, {"name": "ONLY_RUNTIME", "value": "1"}])
    decoded = plan_from_objects(objs).groups[0].pod.main
    assert decoded.image == job["spec"]["trainer"]["image"]  # spec.trainer wins
    env = {e.name: e.value for e in decoded.env}
    assert env["HOME"] == "/tmp" and env["ONLY_RUNTIME"] == "1"  # upserted by name
    del job["spec"]["trainer"]["numNodes"]  # then the runtime's mlPolicy.numNodes
    rt["spec"]["mlPolicy"]["numNodes"] = 5
    assert plan_from_objects(objs).nnodes == 5


# ---------------------------------------------------------------------------------------------
# run-local: JobSet's whole-job restarts, up to failurePolicy.maxRestarts

SCRIPT = r"""
import json, os, pathlib, sys
out = pathlib.Path(os.environ["OUT"])
rank = os.environ["PET_NODE_RANK"]
print("node", rank, "up", flush=True)
(out / f"node-{rank}.json").write_text(json.dumps(dict(os.environ)))
if rank == "1" and os.environ.get("FAIL") == "once" and not (out / "failed").exists():
    (out / "failed").write_text("x"); sys.exit(3)
if rank == "1" and os.environ.get("FAIL") == "always":
    sys.exit(3)
"""


def tiny_trainjob(fail: str, max_restarts: int) -> list[dict]:
    """A hand-made TrainJob + TrainingRuntime whose trainer runs SCRIPT instead of torchrun."""
    pod = {"restartPolicy": "Never", "containers": [{"name": "node", "volumeMounts": [{"name": "out", "mountPath": "/out"}]}],
           "volumes": [{"name": "out", "persistentVolumeClaim": {"claimName": "shared"}}]}
    runtime = {"apiVersion": trainjob.API_VERSION, "kind": "TrainingRuntime", "metadata": {"name": "tiny", "namespace": "ml"},
               "spec": {"mlPolicy": {"numNodes": 2, "torch": {}}, "template": {"spec": {
                   "failurePolicy": {"maxRestarts": max_restarts},
                   "replicatedJobs": [{"name": "node", "replicas": 1, "template": {
                       "metadata": {"labels": {trainjob.ANCESTOR_LABEL: "trainer"}},
                       "spec": {"backoffLimit": 0, "template": {"spec": pod}}}}]}}}}
    job = {"apiVersion": trainjob.API_VERSION, "kind": "TrainJob", "metadata": {"name": "tiny", "namespace": "ml"},
           "spec": {"runtimeRef": {"apiGroup": trainjob.GROUP, "kind": "TrainingRuntime", "name": "tiny"},
                    "trainer": {"image": "x", "command": ["python", "-c", SCRIPT], "numNodes": 2, "numProcPerNode": 3,
                                "env": [{"name": "OUT", "value": "/out"}, {"name": "FAIL", "value": fail}]}}}
    assert validate_objects([runtime, job]) == []
    return [runtime, job]


def test_run_local_gives_the_pet_env_and_restarts_by_the_failure_policy(tmp_path):
    out = io.StringIO()
    job = LocalJob(tiny_trainjob("once", max_restarts=1), tmp_path, out=out)
    assert job.run() == 0, out.getvalue()
    assert job.restarts == 1 and job.failures == [("node-0-1", "node", 3)]
    assert "restarting the whole job (1 of 1)" in out.getvalue() and "[node-0-0]" in out.getvalue()
    seen = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "volumes" / "shared").glob("node-*.json")}
    for rank in ("0", "1"):
        env = seen[f"node-{rank}"]
        assert (env["PET_NNODES"], env["PET_NPROC_PER_NODE"], env["PET_NODE_RANK"], env["PET_MASTER_ADDR"]) == ("2", "3", rank, "127.0.0.1")
        assert not {"MASTER_ADDR", "WORLD_SIZE", "RANK"} & set(env)  # the torch plugin sets only PET_*
    out = io.StringIO()
    job = LocalJob(tiny_trainjob("always", max_restarts=1), tmp_path / "b", out=out)
    assert job.run() == 3 and job.restarts == 1 and "1 restart(s) allowed (failurePolicy.maxRestarts" in out.getvalue()


def test_docker_job_runs_a_trainjob_with_the_torch_plugins_env(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "images" / "docker_job.py"), "--profile", "synthetic-smoke", "--nodes", "2",
                          "--gpus", "2", "--api", "trainjob", "--prefix", "t", "--network", "n", "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    args = (tmp_path / "node-0-1.args").read_bytes().decode().split("\0")[:-1]
    env = dict(a.split("=", 1) for a, flag in zip(args[1:], args) if flag == "--env")
    assert env["PET_MASTER_ADDR"] == "t-node-0-0" and env["PET_NODE_RANK"] == "1" and env["PET_MASTER_PORT"] == "29500"
    assert "WORLD_SIZE" not in env and "MASTER_ADDR" not in env


def test_preprocessing_is_not_a_training_job_and_ignores_the_api():
    for profile, over in (("criteo-preprocess", {}), ("criteo-preprocess", {"preprocess": {"engine": "local", "output": "s3://out/fl15"}})):
        a = plan_job(load_job_config(profile, overrides=over))
        b = plan_job(load_job_config(profile, overrides={**over, "api": "trainjob"}))
        assert [o["kind"] for o in a.objects] == [o["kind"] for o in b.objects] and b.groups == []
        assert [o["spec"] for o in a.objects] == [o["spec"] for o in b.objects]


@pytest.mark.parametrize("mutate, fragment", [
    (lambda rt, job: rt["spec"]["template"]["spec"].update(replicatedJobs="node"), "TrainingRuntime tiny: replicatedJobs: expected a list"),
    (lambda rt, job: rt["spec"]["template"]["spec"].update(failurePolicy={"maxRestarts": "two"}),
     "failurePolicy.maxRestarts: expected an integer, got 'two'"),
    (lambda rt, job: rt["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["metadata"].update(labels=[]),
     "replicatedJobs[0].template.metadata.labels: expected a mapping"),
    (lambda rt, job: rt["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["metadata"]["labels"].clear(),
     "TrainingRuntime tiny has no replicated job labelled trainer.kubeflow.org/trainjob-ancestor-step: trainer"),
    (lambda rt, job: job["spec"]["runtimeRef"].update(name="other"), "its runtime TrainingRuntime 'other' is not among the objects"),
    (lambda rt, job: job["spec"]["trainer"].update(numProcPerNode="auto"), "spec.trainer.numProcPerNode: expected an integer, got 'auto'"),
    (lambda rt, job: job["spec"].update(trainer=["x"]), "TrainJob tiny: spec.trainer: expected a mapping"),
])
def test_a_malformed_rendered_trainjob_is_a_one_line_error(mutate, fragment):
    rt, job = tiny_trainjob("", max_restarts=0)
    mutate(rt, job)
    with pytest.raises(UserError) as e:
        plan_from_objects([rt, job])
    assert fragment in str(e.value) and "\n" not in str(e.value), str(e.value)


TRAINER_STATUS = {"progressPercentage": 45, "estimatedRemainingSeconds": 3723, "lastUpdatedTime": "2026-06-12T03:00:00Z",
                  "metrics": [{"name": "train_loss", "value": "0.1234"}, {"name": "samples_per_s", "value": "1.2e+06"},
                              {"name": "step", "value": "450"}, {"name": "total_steps", "value": "1000"},
                              {"name": "eval_auc", "value": "0.8012"}]}


def test_the_reported_progress_is_read_from_status_trainer_status():
    job = {"kind": "TrainJob", "status": {"trainerStatus": TRAINER_STATUS}}
    assert trainjob.trainer_status(job) == {"progress": 45, "eta_s": 3723, "updated": "2026-06-12T03:00:00Z", "metrics": {
        "train_loss": "0.1234", "samples_per_s": "1.2e+06", "step": "450", "total_steps": "1000", "eval_auc": "0.8012"}}
    assert trainjob.trainer_status_lines(job) == [
        "trainer status (status.trainerStatus, 2026-06-12T03:00:00Z): 45% | ETA 1:02:03 | step 450/1000 | "
        "train_loss 0.1234 | samples_per_s 1.2e+06 | eval_auc 0.8012"]
    assert trainjob.trainer_status_lines({"status": {}}) == [] and trainjob.trainer_status({"status": None}) is None


def test_launcher_status_shows_a_trainjobs_reported_progress(tmp_path, monkeypatch, capsys):
    from fake_k8s import FakeK8s

    from launcher.__main__ import main

    with FakeK8s() as api:
        monkeypatch.setenv("KUBECONFIG", str(api.write_kubeconfig(tmp_path / "kubeconfig", namespace="ml")))
        api.add("/apis/trainer.kubeflow.org/v1alpha1/namespaces/ml/trainjobs", {
            "apiVersion": trainjob.API_VERSION, "kind": "TrainJob", "metadata": {"name": "dlrm-tj", "namespace": "ml"},
            "spec": {}, "status": {"conditions": [], "trainerStatus": TRAINER_STATUS}})
        assert main(["status", "dlrm-tj", "--api", "trainjob"]) == 0
    assert "trainer status (status.trainerStatus, 2026-06-12T03:00:00Z): 45% | ETA 1:02:03 | step 450/1000" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["trainjob-synthetic-smoke", "trainjob-pvc-kueue-efa-secret"])
def test_the_runtime_leaves_room_for_trainers_progress_injection(case):
    """Trainer's TrainJobStatus plugin finds the trainer ancestor and adds its token volume, mount and env
    to each of its containers: the rendered runtime must have the ancestor and none of those names."""
    from dlrm.training import progress
    from test_render import render

    runtime = next(o for o in render(case) if o["kind"] == "TrainingRuntime")
    found = trainjob.trainer_job(runtime)
    assert found is not None
    pod = found[1]["template"]["spec"]["template"]["spec"]
    assert trainjob.PROGRESS_VOLUME not in {v["name"] for v in pod["volumes"]}
    for c in pod["containers"] + pod.get("initContainers", []):
        assert not any(m["mountPath"].startswith(trainjob.PROGRESS_MOUNT) for m in c.get("volumeMounts", []))
        assert not {e["name"] for e in c.get("env", [])} & {progress.ENV_URL, progress.ENV_CA_CERT, progress.ENV_TOKEN}
