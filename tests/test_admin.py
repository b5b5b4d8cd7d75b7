"""The admin bundle (launcher/admin.py) and the small TrainJobs that run on its ClusterTrainingRuntime:
bundle objects valid and building with kustomize, a job validated and run (run-local --runtime, staging
from S3 on 2 nodes) against it, and per-dataset stage folders shared by two jobs on one node."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from launcher.__main__ import main
from launcher.admin import bundle_objects
from launcher.config import PROFILES_DIR, load_job_config
from launcher.render import render_objects, to_yaml

GOLDEN = Path(__file__).with_name("golden")
REV = "0123456789abcdef"
USER = ["api=trainjob", "trainjob.cluster_runtime=dlrm", "trainjob.runtime_source=admin"]
# Site values -> the bundle, golden in tests/golden/admin-<case>.yaml (kustomization + objects) and .md (README).
SITES = {
    "stage-volcano-irsa": ["namespace=ml", "storage.mode=stage", "storage.stage_host_path=/mnt/nvme/dlrm-stage",
                           "scheduling.gang=volcano", "scheduling.queue=research", "scheduling.priority_class=high",
                           "s3.role_arn=arn:aws:iam::123456789012:role/dlrm", "nodes=2"],
    "mount-kueue-gke": ["namespace=ml", "storage.mode=mount", "scheduling.gang=kueue", "scheduling.queue=gpu-queue",
                        "admin.gcp_service_account=dlrm@proj.iam.gserviceaccount.com", "admin.user_groups=[ml-team, oncall]",
                        "cluster.fabric=efa", "cluster.instance_type=p5en.48xlarge", "nodes=4", "admin.runtime=dlrm-h100",
                        "admin.allowed_images=[registry.example.com/ml/, ghcr.io/team/dlrm:1.2]"],
    "scheduler-plugins": ["storage.mode=stage", "scheduling.gang=scheduler-plugins", "scheduling.scheduler_name=coscheduler"],
}
# Cluster-scoped kinds: an admin's alone (a user's Role cannot create them).
CLUSTER_SCOPED = {"PersistentVolume", "ClusterTrainingRuntime", "ClusterRole", "ClusterRoleBinding", "Namespace",
                  "StorageClass", "PriorityClass", "ResourceFlavor", "ClusterQueue", "CustomResourceDefinition",
                  "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}


def site(case: str, extra=()):
    return load_job_config("criteo-fl15", overrides=[*SITES[case], *extra])


@pytest.mark.parametrize("case", sorted(SITES))
def test_bundle_golden_and_valid(case):
    from launcher.admin import kustomization, runtime_config
    from launcher.admin_readme import readme
    from launcher.validate import validate_objects

    objs = bundle_objects(site(case), REV)
    assert validate_objects(objs) == []
    texts = {f"admin-{case}.yaml": kustomization(objs) + "---\n" + to_yaml(objs),
             f"admin-{case}.md": readme(runtime_config(site(case)), objs)}
    for name, text in texts.items():
        if os.environ.get("UPDATE_GOLDEN") == "1":
            (GOLDEN / name).write_text(text)
        assert text == (GOLDEN / name).read_text(), f"{name} differs; if intended, UPDATE_GOLDEN=1 pytest tests/test_admin.py"


def test_bundle_holds_what_each_site_needs_and_users_get_no_cluster_rights():
    kinds = {case: [o["kind"] for o in bundle_objects(site(case))] for case in SITES}
    policy = ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    assert kinds["stage-volcano-irsa"] == ["ServiceAccount", "ConfigMap", "ClusterTrainingRuntime", *policy, "Role", "RoleBinding"]
    assert kinds["mount-kueue-gke"] == ["ServiceAccount", "PersistentVolume", "PersistentVolumeClaim", "ConfigMap",
                                        "ClusterTrainingRuntime", *policy, "Role", "RoleBinding", "ResourceFlavor",
                                        "ClusterQueue", "LocalQueue"]
    objs = {o["kind"]: o for o in bundle_objects(site("mount-kueue-gke"))}
    rules = objs["Role"]["rules"]
    assert not [r for r in rules if set(r["resources"]) & {"trainingruntimes", "clustertrainingruntimes", "persistentvolumes",
                                                          "persistentvolumeclaims", "serviceaccounts"}]
    assert {"apiGroups": ["trainer.kubeflow.org"], "resources": ["trainjobs"],
            "verbs": ["create", "get", "list", "watch", "delete"]} in rules
    assert [s["name"] for s in objs["RoleBinding"]["subjects"]] == ["ml-team", "oncall"]
    assert objs["ServiceAccount"]["metadata"]["annotations"] == {"iam.gke.io/gcp-service-account": "dlrm@proj.iam.gserviceaccount.com"}
    pod = objs["ClusterTrainingRuntime"]["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == objs["ServiceAccount"]["metadata"]["name"] == "dlrm-h100"
    assert "metadata" in objs["ClusterTrainingRuntime"] and "namespace" not in objs["ClusterTrainingRuntime"]["metadata"]
    # the users' jobs mount the dataset through the bundle's claim, by the name both compute
    user = render_objects(load_job_config("criteo-fl15", overrides=[*SITES["mount-kueue-gke"], *USER, "trainjob.cluster_runtime=dlrm-h100"]))
    (job,) = [o for o in user if o["kind"] == "TrainJob"]
    patch = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    volumes = {v["name"]: v for v in patch["template"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["dataset"]["persistentVolumeClaim"]["claimName"] == objs["PersistentVolumeClaim"]["metadata"]["name"]
    assert objs["PersistentVolume"]["spec"]["claimRef"] == {"namespace": "ml", "name": objs["PersistentVolumeClaim"]["metadata"]["name"]}
    assert objs["ClusterQueue"]["spec"]["resourceGroups"][0]["flavors"][0]["resources"] == [
        {"name": "cpu", "nominalQuota": "256"}, {"name": "memory", "nominalQuota": "3200Gi"},
        {"name": "nvidia.com/gpu", "nominalQuota": "32"}, {"name": "vpc.amazonaws.com/efa", "nominalQuota": "64"},
        {"name": "hugepages-2Mi", "nominalQuota": "20480Mi"}]  # 4 p5en nodes: 16 EFA devices and the preset's huge pages each
    assert objs["LocalQueue"]["spec"]["clusterQueue"] == objs["ClusterQueue"]["metadata"]["name"]
    assert [o["metadata"]["labels"].get("kueue.x-k8s.io/queue-name") for o in user if o["kind"] == "TrainJob"] == ["gpu-queue"]


@pytest.mark.parametrize("api", ["pytorchjob", "trainjob"])
@pytest.mark.parametrize("gang, queue", [("volcano", "research"), ("scheduler-plugins", ""), ("kueue", "gpu-queue")])
def test_gang_renders_what_each_scheduler_reads(api, gang, queue):
    """Volcano and scheduler-plugins schedule only pods naming them (schedulerName) and read a PodGroup
    (the training operator's from schedulingPolicy, Trainer's from podGroupPolicy); Kueue reads its label."""
    objs = render_objects(load_job_config("synthetic-smoke", overrides={"api": api, "nodes": 3,
                                                                        "scheduling": {"gang": gang, "queue": queue}}))
    job = next(o for o in objs if o["kind"] in ("PyTorchJob", "TrainJob"))
    if api == "pytorchjob":
        pods = [r["template"]["spec"] for r in job["spec"]["pytorchReplicaSpecs"].values()]
        group = job["spec"]["runPolicy"].get("schedulingPolicy")
    else:
        runtime = next(o for o in objs if o["kind"] == "TrainingRuntime")
        pods = [runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]]
        group = runtime["spec"].get("podGroupPolicy")
    schedulers = {p.get("schedulerName") for p in pods}
    labels, annotations = job["metadata"]["labels"], job["metadata"]["annotations"]
    if gang == "kueue":
        assert labels["kueue.x-k8s.io/queue-name"] == queue and group is None and schedulers == {None}
        return
    assert "kueue.x-k8s.io/queue-name" not in labels
    assert schedulers == {"volcano" if gang == "volcano" else "scheduler-plugins-scheduler"}
    if api == "pytorchjob":
        assert group == ({"minAvailable": 3, "queue": queue} if gang == "volcano" else {"minAvailable": 3})
    else:
        assert group == ({"volcano": {}} if gang == "volcano" else {"coscheduling": {"scheduleTimeoutSeconds": 60}})
        assert annotations.get("scheduling.volcano.sh/queue-name") == (queue or None)


@pytest.mark.parametrize("profile", sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")))
def test_no_default_profile_render_holds_a_cluster_scoped_object(profile):
    apis = ["pytorchjob", "trainjob"] if load_job_config(profile).kind == "train" else ["pytorchjob"]
    for api in apis:
        for obj in render_objects(load_job_config(profile, overrides={"api": api})):
            assert obj["kind"] not in CLUSTER_SCOPED and obj["metadata"].get("namespace"), (profile, api, obj["kind"])


def test_render_shows_the_profiles_example_buckets_with_a_warning(capsys, monkeypatch):
    monkeypatch.setattr("launcher.cli_render.git_revision", lambda *a: "0123abc")  # no git under a loaded machine
    assert main(["render", "--profile", "criteo-fl15"]) == 0  # `submit` refuses them (tests/bad_inputs/admin_bundle.yaml)
    out, err = capsys.readouterr()
    assert "s3://dlrm-runs/dlrm-criteo-fl15" in out
    assert "warning: dataset=s3://dlrm-datasets/criteo-1tb/fl15, train.out=s3://dlrm-runs/dlrm-criteo-fl15: the profile's example buckets" in err
    assert main(["render", "--profile", "criteo-fl15", "--set", "dataset=s3://mine/ds", "--set", "train.out=s3://mine/runs"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_kustomize_builds_the_bundle(tmp_path):
    from launcher.admin import write_bundle

    if not shutil.which("kubectl"):
        pytest.skip("kubectl is not installed: `kubectl kustomize` cannot build the bundle here")
    objs = bundle_objects(site("mount-kueue-gke"))
    write_bundle(objs, "readme", tmp_path / "bundle")
    # gcloud's kubectl wrapper checks for updates over the network now and then: not here
    env = {**os.environ, "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1", "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}
    try:
        proc = subprocess.run(["kubectl", "kustomize", str(tmp_path / "bundle")], capture_output=True, text=True, env=env, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.skip("`kubectl kustomize` did not answer within 120 s (a kubectl wrapper waiting on the network?)")
    assert proc.returncode == 0, proc.stderr
    built = list(yaml.safe_load_all(proc.stdout))
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    assert sorted(built, key=key) == sorted(objs, key=key)


def test_writing_the_bundle_replaces_an_earlier_one_and_refuses_a_foreign_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("dlrm.training.runlog.git_revision", lambda *a: "0123abc")
    out = tmp_path / "bundle"
    assert main(["admin", "--set", "storage.mode=mount", "--out", str(out)]) == 0
    first = sorted(p.name for p in out.iterdir())
    assert "persistentvolume-default-dlrm-dataset-3d11b1362eda.yaml" in first and "kustomization.yaml" in first
    assert main(["admin", "--set", "storage.mode=stage", "--out", str(out)]) == 0  # no stale PV left beside the new bundle
    assert not [p for p in out.iterdir() if p.name.startswith("persistentvolume")] and (out / "README.md").is_file()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main(["admin", "--out", str(tmp_path / "mine")]) == 2
    assert "holds files the admin bundle did not write (notes.txt)" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]


def test_a_trainjob_is_validated_against_the_admins_runtime(tmp_path, capsys):
    for case in ("stage-volcano-irsa", "mount-kueue-gke"):
        (tmp_path / f"{case}.yaml").write_text(to_yaml([o for o in bundle_objects(site(case)) if o["kind"] == "ClusterTrainingRuntime"]))
    for name, case, sets, error in [
        ("ok", "stage-volcano-irsa", ["storage.mode=stage"], None),
        # the runtime stages: a job that does not name its dataset would train on the runtime's default
        ("mounted", "stage-volcano-irsa", ["storage.mode=mount"], "stages a dataset (init container 'stage') and the job does not set"),
        # a job rendered to stage, on a runtime without the stage container: nothing would stage its dataset
        ("no-stager", "mount-kueue-gke", ["storage.mode=stage", "trainjob.cluster_runtime=dlrm-h100"], "pod has no init container 'stage'"),
        # a Volcano queue on a runtime without Volcano's gang: nothing would read it
        ("no-volcano", "mount-kueue-gke", ["storage.mode=mount", "trainjob.cluster_runtime=dlrm-h100"],
         "only Trainer's Volcano plugin reads it, and ClusterTrainingRuntime/dlrm-h100 has no podGroupPolicy.volcano"),
    ]:
        job = tmp_path / f"{name}.yaml"
        job.write_text(to_yaml(render_objects(load_job_config("criteo-fl15", overrides=[*SITES["stage-volcano-irsa"], *USER, *sets,
                                                                                      "scheduling.priority_class="]))))
        rc = main(["validate", str(job), "--runtime", str(tmp_path / f"{case}.yaml")])
        err = capsys.readouterr().err
        assert (rc, error is None or error in err) == (1 if error else 0, True), err
    assert main(["validate", str(tmp_path / "ok.yaml"), "--runtime", str(tmp_path / "ok.yaml")]) == 1
    assert "no TrainingRuntime or ClusterTrainingRuntime in it" in capsys.readouterr().err


def test_the_image_policy_and_the_offline_check_apply_one_rule(tmp_path, capsys):
    """The bundle's ValidatingAdmissionPolicy (its CEL, read back into its lists: no CEL evaluator that is a
    small pure package exists) and `validate --runtime` (the runtime's annotation) admit the same images."""
    import re

    objs = {o["kind"]: o for o in bundle_objects(site("mount-kueue-gke"))}
    policy, binding, runtime = objs["ValidatingAdmissionPolicy"], objs["ValidatingAdmissionPolicyBinding"], objs["ClusterTrainingRuntime"]
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}
    assert policy["spec"]["matchConstraints"]["resourceRules"] == [{"apiGroups": ["trainer.kubeflow.org"], "apiVersions": ["*"],
                                                                    "operations": ["CREATE", "UPDATE"], "resources": ["trainjobs"]}]
    assert policy["spec"]["matchConditions"][0]["expression"].startswith('object.spec.runtimeRef.name == "dlrm-h100" && ')
    (validation,) = policy["spec"]["validations"]
    image = r"object\.spec\.trainer\.image"
    m = re.fullmatch(rf"!has\(object\.spec\.trainer\) \|\| !has\({image}\) \|\| {image} in (\[[^]]*\]) \|\| "
                     rf"(\[[^]]*\])\.exists\(p, {image}\.startsWith\(p\)\)", validation["expression"])
    assert m, validation["expression"]
    exact, prefixes = json.loads(m.group(1)), json.loads(m.group(2))
    assert (exact, prefixes) == (["dlrm-k8s-train:0.1.0", "ghcr.io/team/dlrm:1.2"], ["registry.example.com/ml/"])
    (tmp_path / "rt.yaml").write_text(to_yaml([runtime]))
    user = [*SITES["mount-kueue-gke"], *USER, "trainjob.cluster_runtime=dlrm-h100"]
    for img, admitted in [(None, True), ("dlrm-k8s-train:0.1.0", True), ("registry.example.com/ml/dlrm:2", True),
                          ("ghcr.io/team/dlrm:1.2", True), ("ghcr.io/team/dlrm:1.2-rc", False),  # exact, not a prefix
                          ("registry.example.com/mlx/dlrm:2", False), ("docker.io/evil/miner:1", False)]:
        objects = render_objects(load_job_config("criteo-fl15", overrides=[*user, *([f"image={img}"] if img else [])]))
        trainer = next(o for o in objects if o["kind"] == "TrainJob")["spec"]["trainer"]
        assert ("image" in trainer) == (img not in (None, "dlrm-k8s-train:0.1.0"))  # the default leaves it to the runtime
        cel = "image" not in trainer or trainer["image"] in exact or any(trainer["image"].startswith(p) for p in prefixes)
        (tmp_path / "job.yaml").write_text(to_yaml(objects))
        rc = main(["validate", str(tmp_path / "job.yaml"), "--runtime", str(tmp_path / "rt.yaml")])
        err = capsys.readouterr().err
        assert (rc == 0, cel) == (admitted, admitted), (img, err)
        if not admitted:
            assert f"spec.trainer.image: '{img}' is not allowed on ClusterTrainingRuntime/dlrm-h100: allowed are its own image " \
                   f"'dlrm-k8s-train:0.1.0' and 'registry.example.com/ml/', 'ghcr.io/team/dlrm:1.2'" in err, err


def test_staging_keys_the_node_folder_by_the_datasets_manifest(tmp_path, s3_bucket):
    from launcher.data.transfer import S3Options, push, stage_keyed

    opts = S3Options(progress=False, log=lambda s: None)
    for name, data in (("a", b"one"), ("b", b"two")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "part.bin").write_bytes(data)
        push(tmp_path / name, f"s3://{s3_bucket}/{name}", opts)
    root = tmp_path / "node"
    root.mkdir()
    a = stage_keyed(f"s3://{s3_bucket}/a", root, tmp_path / "pod1" / "ds", opts)
    b = stage_keyed(f"s3://{s3_bucket}/b", root, tmp_path / "pod2" / "ds", opts)
    again = stage_keyed(f"s3://{s3_bucket}/a", root, tmp_path / "pod3" / "ds", opts)
    assert a != b and again == a and (a / "part.bin").read_bytes() == b"one" and (b / "part.bin").read_bytes() == b"two"
    assert (tmp_path / "pod3" / "ds").resolve() == a.resolve() and (tmp_path / "pod2" / "ds" / "part.bin").read_bytes() == b"two"
    # a pod staging the same dataset waits for the node's lock (another pod's stage holds it), then reuses the copy
    import fcntl
    import threading

    waiting = threading.Event()
    patient = S3Options(progress=False, log=lambda s: waiting.set() if "waiting for it" in s else None)
    link = tmp_path / "pod5" / "ds"
    with open(root / f".{a.name}.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        stager = threading.Thread(target=stage_keyed, args=(f"s3://{s3_bucket}/a", root, link, patient))
        stager.start()
        assert waiting.wait(60) and not link.exists()
    stager.join(60)
    assert link.resolve() == a.resolve()


def test_staging_refuses_a_stage_folder_it_cannot_write(tmp_path):
    """Checked before any S3 request: a missing folder (the hostPath is type Directory) or a root-owned one."""
    from dlrm.errors import UserError
    from launcher.data.transfer import S3Options, stage_keyed

    opts = S3Options(progress=False, log=lambda s: None)
    with pytest.raises(UserError, match="stage folder .*missing: not a folder for uid .*install -d -o"):
        stage_keyed("s3://bucket/ds", tmp_path / "missing", tmp_path / "link", opts)
    root = tmp_path / "node"
    root.mkdir(mode=0o555)
    if os.access(root, os.W_OK):
        pytest.skip("running as root, to whom every folder is writable: the missing folder was checked")
    with pytest.raises(UserError, match="stage folder .*node: not writable for uid .*install -d -o"):
        stage_keyed("s3://bucket/ds", root, tmp_path / "link", opts)


def _trainer_missing() -> str:
    import importlib.util

    missing = [m for m in ("dlrm.training.train", "dlrm.data.synth") if importlib.util.find_spec(m) is None]
    return f"needs {', '.join(missing)} (not landed yet)" if missing else ""


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.skipif(bool(_trainer_missing()), reason=_trainer_missing() or "-")
def test_jobs_on_the_admin_runtime_stage_their_own_datasets_and_train(tmp_path, capsys, monkeypatch, s3_bucket, s3_endpoint):
    """The admin's runtime file given to run-local: a 2-node job and a 1-node job (1 process per node) stage
    different datasets from S3 into one node stage folder, each into its own dataset-<manifest hash>
    folder, and each trains on its own (its run record names that dataset's manifest)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    from dlrm.__main__ import main as dlrm_main
    from launcher.data.transfer import S3Options, push

    stage = tmp_path / "node-stage"  # the node's stage folder: exists here, so both jobs share it
    stage.mkdir()
    site = load_job_config("synthetic-smoke", overrides=["storage.mode=stage", f"storage.stage_host_path={stage}",
                                                         f"dataset=s3://{s3_bucket}/a", f"s3.endpoint_url={s3_endpoint}"])
    runtime = tmp_path / "clustertrainingruntime-dlrm.yaml"
    runtime.write_text(to_yaml([o for o in bundle_objects(site) if o["kind"] == "ClusterTrainingRuntime"]))
    for name, rows in (("a", 3000), ("b", 2000)):
        assert dlrm_main(["synth", "--out", str(tmp_path / name), "--rows", str(rows), "--tables", "small", "--seed", "1"]) == 0
        push(tmp_path / name, f"s3://{s3_bucket}/{name}", S3Options(progress=False, log=lambda s: None))
    for name, nodes in (("a", 2), ("b", 1)):
        sets = [*USER, f"nodes={nodes}", "gpus_per_node=1", f"dataset=s3://{s3_bucket}/{name}", "storage.mode=stage",
                f"s3.endpoint_url={s3_endpoint}", "train.max_steps=4", "train.checkpoint_every=0", f"name=job-{name}"]
        rc = main(["run-local", "--profile", "synthetic-smoke", "--runtime", str(runtime), "--workdir", str(tmp_path / f"wd-{name}"),
                   *[a for s in sets for a in ("--set", s)]])
        out = capsys.readouterr().out
        assert rc == 0, out[-3000:]
        assert f"{nodes} node(s) x 1 process(es)" in out and "final AUC" in out
    # `logs --local` finds a TrainJob's replicas by node rank (node-0-N, not worker-N)
    assert main(["logs", "job-a", "--local", "--workdir", str(tmp_path / "wd-a"), "--node", "1"]) == 0
    shown, log = capsys.readouterr().out, (tmp_path / "wd-a" / "logs" / "node-0-1.log").read_text()
    assert shown.splitlines()[-1] == log.splitlines()[-1] != ""  # the stage container's progress bars differ in \r only
    copies = sorted(p.name for p in stage.iterdir() if p.is_dir())
    assert len(copies) == 2 and all(c.startswith("dataset-") for c in copies), copies
    import hashlib

    import boto3

    for name in ("a", "b"):
        record = json.loads((tmp_path / f"wd-{name}" / "pods" / "node-0-0" / "output" / "run.json").read_text())
        manifest = boto3.client("s3").get_object(Bucket=s3_bucket, Key=f"{name}/_manifest.json")["Body"].read()
        want = hashlib.sha256(manifest).hexdigest()
        assert record["dataset"]["manifest_sha256"] == want
        assert Path(record["dataset"]["path"]).resolve().parent == stage.resolve()
