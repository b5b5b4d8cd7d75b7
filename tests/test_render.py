"""Rendering: golden files per profile and shape, structure of each object, injection, determinism.

Regenerate the golden files after an intended change with:  UPDATE_GOLDEN=1 pytest tests/test_render.py
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest
import yaml

from dlrm.errors import ConfigError
from launcher import command as cmd
from launcher.config import load_job_config
from launcher.encode import MANIFESTS_DIR
from launcher.render import render_objects, to_yaml
from launcher.run_identity import run_id

GOLDEN = Path(__file__).with_name("golden")
REV = "0123456789abcdef"

# case name -> (profile, overrides). Each is also validated in test_validate.py.
CASES = {
    "criteo-fl15-nodes1": ("criteo-fl15", {"nodes": 1}),
    "criteo-fl15-nodes2": ("criteo-fl15", {"nodes": 2}),
    "criteo-fl15-nodes16": ("criteo-fl15", {"nodes": 16}),
    "synthetic-smoke": ("synthetic-smoke", {}),
    "criteo-preprocess-spark": ("criteo-preprocess", {}),
    "criteo-preprocess-local": ("criteo-preprocess", {"preprocess": {"engine": "local", "output": "s3://out/fl15"}}),
    "stage-irsa-minio-volcano": ("criteo-fl15", {
        "nodes": 2, "storage": {"mode": "stage", "stage_size": "2Ti", "output_claim": "runs"},
        "s3": {"role_arn": "arn:aws:iam::123456789012:role/dlrm", "endpoint_url": "http://minio.minio:9000"},
        "scheduling": {"gang": "volcano", "queue": "research", "priority_class": "high"},
        "train": {"checkpoint_dir": "s3://ckpt/dlrm"}}),
    "pvc-kueue-efa-secret": ("criteo-fl15", {
        "nodes": 4, "dataset": "criteo/fl15", "storage": {"mode": "pvc", "claim": "datasets"},
        "s3": {"secret": "aws-creds"}, "scheduling": {"gang": "kueue", "queue": "gpu-queue"},
        "cluster": {"fabric": "efa", "extra_resources": {"rdma/hca_shared_devices_a": 1},
                    "nccl_env": {"FI_PROVIDER": "efa", "NCCL_DEBUG": "INFO"},
                    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
                    "image_pull_secrets": ["regcred"], "service_account": "trainer", "active_deadline_seconds": 86400}}),
    "stage-hostpath": ("criteo-fl15", {"storage": {"mode": "stage", "stage_host_path": "/mnt/nvme/dlrm"}}),
    "mlperf-dcnv2": ("mlperf-dcnv2", {}),
    "export-job": ("criteo-fl15", {"nodes": 2, "dataset": "criteo/fl15", "export": True, "export_table_dtype": "fp16",
                                   "storage": {"mode": "pvc", "claim": "datasets", "output_claim": "runs"},
                                   "s3": {"secret": "aws-creds"}, "train": {"out": "/output"}}),
}
# The same jobs as TrainJobs (Kubeflow Trainer v2), with a TrainingRuntime rendered beside them...
CASES.update({f"trainjob-{name}": (CASES[name][0], {**CASES[name][1], "api": "trainjob"})
              for name in ("criteo-fl15-nodes2", "synthetic-smoke", "stage-irsa-minio-volcano", "pvc-kueue-efa-secret")})
CASES.update({
    "trainjob-scheduler-plugins": ("synthetic-smoke", {"api": "trainjob", "nodes": 2, "scheduling": {"gang": "scheduler-plugins"},
                                                       "trainjob": {"schedule_timeout_seconds": 120}}),
    # ...and on an admin's ClusterTrainingRuntime, our pod settings as a runtime patch.
    "trainjob-cluster-runtime-mount-secret": ("criteo-fl15", {
        "api": "trainjob", "nodes": 2, "trainjob": {"cluster_runtime": "torch-distributed"},
        "storage": {"mode": "mount", "output_claim": "runs"}, "s3": {"secret": "aws-creds", "role_arn": "arn:aws:iam::123456789012:role/dlrm"},
        "scheduling": {"gang": "kueue", "queue": "gpu-queue"},
        "cluster": {"fabric": "efa", "image_pull_secrets": ["regcred"], "gpu_product": "NVIDIA-H100-80GB-HBM3",
                    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}]}}),
    # ...and on the admin bundle's runtime (launcher/admin.py): only what varies per job (tests/golden/admin-*).
    "trainjob-admin-runtime-stage": ("criteo-fl15", {
        "api": "trainjob", "nodes": 2, "trainjob": {"cluster_runtime": "dlrm", "runtime_source": "admin"},
        "storage": {"mode": "stage", "output_claim": "runs"}, "scheduling": {"gang": "volcano", "queue": "research"}}),
})


def render(name: str) -> list[dict]:
    profile, overrides = CASES[name]
    return render_objects(load_job_config(profile, overrides=overrides), git_revision=REV)


def by_kind(objs: list[dict], kind: str) -> dict:
    (obj,) = [o for o in objs if o["kind"] == kind]
    return obj


def pod(job: dict, role: str = "Master") -> dict:
    return job["spec"]["pytorchReplicaSpecs"][role]["template"]["spec"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name):
    text = to_yaml(render(name))
    path = GOLDEN / f"{name}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: run UPDATE_GOLDEN=1 pytest tests/test_render.py"
    assert text == path.read_text(), f"{name} differs from {path}; if intended, UPDATE_GOLDEN=1"


@pytest.mark.parametrize("name", sorted(CASES))
def test_deterministic(name):
    assert to_yaml(render(name)) == to_yaml(render(name))


def test_input_order_does_not_change_output():
    a = {"cluster": {"node_selector": {"a": "1", "b": "2"}, "env": {"X": "1", "Y": "2"}}}
    b = {"cluster": {"node_selector": {"b": "2", "a": "1"}, "env": {"Y": "2", "X": "1"}}}
    ra = render_objects(load_job_config("synthetic-smoke", overrides=a), REV)
    rb = render_objects(load_job_config("synthetic-smoke", overrides=b), REV)
    assert to_yaml(ra) == to_yaml(rb)


@pytest.mark.parametrize("nodes,workers", [(1, None), (2, 1), (16, 15)])
def test_replicas(nodes, workers):
    job = by_kind(render(f"criteo-fl15-nodes{nodes}"), "PyTorchJob")
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1 and specs["Master"]["restartPolicy"] == "OnFailure"
    assert (specs["Worker"]["replicas"] if "Worker" in specs else None) == workers
    assert job["spec"]["nprocPerNode"] == "8"


@pytest.mark.parametrize("gpus", [1, 8])
def test_gpus(gpus):
    objs = render_objects(load_job_config("criteo-fl15", overrides={"gpus_per_node": gpus, "nodes": 4}), REV)
    job = by_kind(objs, "PyTorchJob")
    assert job["spec"]["nprocPerNode"] == str(gpus)
    for role in ("Master", "Worker"):
        assert pod(job, role)["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == gpus


def test_training_container():
    objs = render("criteo-fl15-nodes2")
    job = by_kind(objs, "PyTorchJob")
    meta = job["metadata"]
    assert meta["annotations"]["dlrm-k8s.io/git-revision"] == REV
    assert re.fullmatch(r"[0-9a-f]{64}", meta["annotations"]["dlrm-k8s.io/config-sha256"])
    assert meta["labels"]["app.kubernetes.io/instance"] == "dlrm-criteo-fl15"
    spec = pod(job, "Worker")
    (c,) = spec["containers"]
    assert c["name"] == "pytorch"
    assert c["command"][: len(cmd.TRAIN_COMMAND)] == cmd.TRAIN_COMMAND
    args = c["command"]
    assert not [a for a in args if a.startswith(("--nnodes", "--node-rank", "--node_rank", "--master", "--nproc"))]
    # the profile's run output is on S3: the pods write there, and status/results find it by the annotation
    assert f"data.dataset={cmd.DATASET_MOUNT}" in args and "out=s3://dlrm-runs/dlrm-criteo-fl15" in args
    assert meta["annotations"][cmd.OUTPUT_ANNOTATION] == "s3://dlrm-runs/dlrm-criteo-fl15"
    # a restart continues this job's own run (its run id), never one it was not asked to (no --resume)
    assert "--resume" not in args and f"run_id={run_id(load_job_config('criteo-fl15', overrides={'nodes': 2}))}" in args
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["DLRM_JOB_DATASET"] == "s3://dlrm-datasets/criteo-1tb/fl15"  # the job's, for run.json
    assert env["DLRM_JOB_NAME"] == "dlrm-criteo-fl15" and env["DLRM_GIT_REVISION"] == REV
    assert env["DLRM_JOB_CONFIG_SHA256"] == meta["annotations"]["dlrm-k8s.io/config-sha256"]
    assert env["DLRM_IMAGE"] == c["image"]
    assert c["resources"]["limits"]["memory"] == "800Gi" and c["resources"]["requests"]["cpu"] == "64"
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "128Gi"}
    assert volumes["tmp"]["emptyDir"] == {}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["config"]["mountPath"] == cmd.CONFIG_DIR and mounts["dataset"]["readOnly"] is True
    # The ConfigMap holds the resolved training config, pointing at the same mounts.
    config = by_kind(objs, "ConfigMap")
    assert volumes["config"]["configMap"]["name"] == config["metadata"]["name"] == "dlrm-criteo-fl15-config"
    train = yaml.safe_load(config["data"][cmd.CONFIG_FILE])
    assert train["data"]["dataset"] == cmd.DATASET_MOUNT and train["out"] == "s3://dlrm-runs/dlrm-criteo-fl15"
    assert train["model"]["embedding_dim"] == 128 and train["optim"]["lr"] == 24.0


def test_mount_mode_names_the_admins_claim_and_renders_nothing_cluster_scoped():
    objs = render("criteo-fl15-nodes1")
    assert [o["kind"] for o in objs] == ["ConfigMap", "PyTorchJob"]  # the PV and its claim are the admin bundle's
    volumes = {v["name"]: v for v in pod(by_kind(objs, "PyTorchJob"))["volumes"]}
    claim = volumes["dataset"]["persistentVolumeClaim"]
    assert claim == {"claimName": "dlrm-dataset-" + hashlib.sha256(b"s3://dlrm-datasets/criteo-1tb/fl15").hexdigest()[:12],
                     "readOnly": True}
    other = render_objects(load_job_config("criteo-fl15", overrides={"dataset": "s3://dlrm-datasets/other"}))
    assert {v["name"]: v for v in pod(by_kind(other, "PyTorchJob"))["volumes"]}["dataset"]["persistentVolumeClaim"] != claim
    named = render_objects(load_job_config("criteo-fl15", overrides={"storage": {"claim": "criteo"}}))
    assert {v["name"]: v for v in pod(by_kind(named, "PyTorchJob"))["volumes"]}["dataset"]["persistentVolumeClaim"]["claimName"] == "criteo"


def test_stage_irsa_minio_volcano():
    objs = render("stage-irsa-minio-volcano")
    sa = by_kind(objs, "ServiceAccount")
    assert sa["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/dlrm"}
    job = by_kind(objs, "PyTorchJob")
    assert job["spec"]["runPolicy"]["schedulingPolicy"] == {"minAvailable": 2, "queue": "research", "priorityClass": "high"}
    spec = pod(job)
    assert spec["serviceAccountName"] == sa["metadata"]["name"] and spec["priorityClassName"] == "high"
    assert spec["schedulerName"] == "volcano"  # the operator's PodGroup is read by Volcano only
    (init,) = spec["initContainers"]
    assert init["command"] == cmd.STAGE_COMMAND + [f"$({cmd.STAGE_SOURCE_ENV})", cmd.STAGE_MOUNT, "--link", cmd.STAGED_DATASET]
    assert {"name": cmd.STAGE_SOURCE_ENV, "value": "s3://dlrm-datasets/criteo-1tb/fl15"} in init["env"]
    assert init["image"] == spec["containers"][0]["image"]
    assert {"name": "AWS_ENDPOINT_URL", "value": "http://minio.minio:9000"} in init["env"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["stage"]["emptyDir"] == {"sizeLimit": "2Ti"}
    assert volumes["output"]["persistentVolumeClaim"] == {"claimName": "runs"}
    assert f"data.dataset={cmd.STAGED_DATASET}" in spec["containers"][0]["command"]
    mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["stage"]["readOnly"] is True and mounts["output"]["subPath"] == "runs/dlrm-criteo-fl15"
    assert not [o for o in objs if o["kind"] in ("PersistentVolume", "Secret")]
    assert yaml.safe_load(by_kind(objs, "ConfigMap")["data"]["train.yaml"])["checkpoint_dir"] == "s3://ckpt/dlrm"


def test_stage_on_host_nvme():
    spec = pod(by_kind(render("stage-hostpath"), "PyTorchJob"))
    volumes = {v["name"]: v for v in spec["volumes"]}
    # Directory: DirectoryOrCreate would make it root-owned, which the stage container (uid 1000) cannot write
    assert volumes["stage"]["hostPath"] == {"path": "/mnt/nvme/dlrm", "type": "Directory"}


def test_pvc_kueue_efa_secret():
    objs = render("pvc-kueue-efa-secret")
    assert [o["kind"] for o in objs] == ["ConfigMap", "PyTorchJob"]  # pvc mode: nothing to create
    job = by_kind(objs, "PyTorchJob")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert "schedulingPolicy" not in job["spec"]["runPolicy"]
    assert job["spec"]["runPolicy"]["activeDeadlineSeconds"] == 86400
    spec = pod(job, "Worker")
    c = spec["containers"][0]
    assert c["resources"]["limits"]["vpc.amazonaws.com/efa"] == 32
    assert c["resources"]["limits"]["rdma/hca_shared_devices_a"] == 1
    assert c["envFrom"] == [{"secretRef": {"name": "aws-creds"}}]
    assert {"name": "FI_PROVIDER", "value": "efa"} in c["env"]
    assert spec["serviceAccountName"] == "trainer" and spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"} in spec["tolerations"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["dataset"]["persistentVolumeClaim"] == {"claimName": "datasets", "readOnly": True}
    assert {"name": "dataset", "mountPath": cmd.DATASET_MOUNT, "readOnly": True, "subPath": "criteo/fl15"} in c["volumeMounts"]
    assert "aws-creds" not in to_yaml([by_kind(objs, "ConfigMap")])


def test_preprocess_job_and_spark():
    (job,) = render("criteo-preprocess-local")
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["image"].startswith("dlrm-k8s-preprocess:")
    assert c["command"] == cmd.PREPROCESS_COMMAND + ["--input", cmd.PREPROCESS_INPUT, "--out", "s3://out/fl15",
                                                     "--frequency-threshold", "15", "--vocabulary-days", "all",
                                                     "--engine", "local"]
    assert [m["name"] for m in c["volumeMounts"]] == ["input", "tmp"]  # the s3:// output is not mounted
    (app,) = render("criteo-preprocess-spark")
    assert (app["apiVersion"], app["kind"]) == ("sparkoperator.k8s.io/v1beta2", "SparkApplication")
    assert app["spec"]["arguments"][0] == "preprocess" and app["spec"]["arguments"][-2:] == ["--engine", "spark"]
    assert app["spec"]["executor"]["instances"] == 16 and app["spec"]["mainApplicationFile"] == cmd.SPARK_MAIN_FILE


# Values that would break out of a naively templated YAML scalar.
PAYLOADS = ["a: b", "x\ny: z", "q\"uote's", "{{ cfg.name }}", "{% raw %}", "- item", "#comment", "&a *a",
            "!!python/object:os.system", "[1, 2]", "null", "yes", "0x10", "' or '1'='1", "\\n\t", "é✓"]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_injection_stays_one_scalar(payload):
    """Free-text fields (env values, paths, annotations) carry any payload as one scalar."""
    over = {"dataset": "/data/" + payload, "cluster": {"env": {"V": payload}}, "s3": {"role_arn": payload},
            "storage": {"stage_size": "1Ti"}}
    objs = render_objects(load_job_config("synthetic-smoke", overrides=over), git_revision=payload)
    assert [o["kind"] for o in objs] == ["ServiceAccount", "ConfigMap", "PyTorchJob"]
    assert yaml.safe_load_all(to_yaml(objs)) and list(yaml.safe_load_all(to_yaml(objs))) == objs
    job = by_kind(objs, "PyTorchJob")
    spec = pod(job)
    c = spec["containers"][0]
    assert {"name": "V", "value": payload} in c["env"]
    assert {v["name"]: v for v in spec["volumes"]}["dataset"]["hostPath"]["path"] == "/data/" + payload
    assert job["metadata"]["annotations"]["dlrm-k8s.io/git-revision"] == payload
    assert by_kind(objs, "ServiceAccount")["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == payload


# Name-like fields: a payload is either a valid value there (and rendered as it is) or refused by
# the config, naming the key; never half-rendered.
NAME_FIELDS = {
    "image": ({"image": "{}"}, lambda spec: spec["containers"][0]["image"]),
    "cluster.node_selector": ({"cluster": {"node_selector": {"k": "{}"}}}, lambda spec: spec["nodeSelector"]["k"]),
    "cluster.gpu_product": ({"cluster": {"gpu_product": "{}"}}, lambda spec: spec["nodeSelector"]["nvidia.com/gpu.product"]),
    "cluster.tolerations[0].value": ({"cluster": {"tolerations": [{"key": "k", "operator": "Equal", "value": "{}",
                                                                   "effect": "NoSchedule"}]}},
                                     lambda spec: spec["tolerations"][1]["value"]),
}


def _fill(node, payload):
    if isinstance(node, dict):
        return {k: _fill(v, payload) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(v, payload) for v in node]
    return payload if node == "{}" else node


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("field", sorted(NAME_FIELDS))
def test_name_fields_take_a_payload_whole_or_refuse_it(field, payload):
    over, where = NAME_FIELDS[field]
    try:
        objs = render_objects(load_job_config("synthetic-smoke", overrides=_fill(over, payload)), REV)
    except ConfigError as e:
        assert str(e).startswith(field.split("[")[0]) and "\n" not in str(e), str(e)
        return
    assert where(pod(by_kind(objs, "PyTorchJob"))) == payload
    assert list(yaml.safe_load_all(to_yaml(objs))) == objs


# A {{ }} is safe when it ends in `| toyaml`, is a call of a macro (one defined in manifests/, whose
# values are themselves filtered) re-indented, or is the name macro (itself filtered).
MACROS = sorted({m for p in MANIFESTS_DIR.glob("*.j2") for m in re.findall(r"\{%-?\s*macro\s+(\w+)\(", p.read_text())})
SAFE_EXPR = re.compile(rf"^(.*\|\s*toyaml|([hp]\.\w+|{'|'.join(MACROS)})\(.*\)\s*\|\s*indent\(\d+\)|h\.name\(.*\))$")


def test_every_template_value_is_filtered():
    bad = []
    for path in sorted(MANIFESTS_DIR.glob("*.j2")):
        for expr in re.findall(r"\{\{-?\s*(.*?)\s*-?\}\}", path.read_text()):
            if not SAFE_EXPR.match(expr):
                bad.append(f"{path.name}: {{{{ {expr} }}}}")
    assert not bad, "unfiltered template values: " + "; ".join(bad)


@pytest.mark.parametrize("expr,safe", [("cfg.name", False), ("cfg.name | upper", False), ("h.labels('x')", False),
                                       ("cfg.name | toyaml", True), ('h.labels("x") | indent(4)', True),
                                       ("mapping(c.limits) | indent(6)", True), ("c.limits.items()", False)])
def test_safe_expr_pattern(expr, safe):
    assert bool(SAFE_EXPR.match(expr)) is safe


def test_export_job():
    """export=true: a batch/v1 Job beside the PyTorchJob runs `dlrm export` on the run's claim once training ended."""
    objs = render("export-job")
    assert [o["kind"] for o in objs] == ["ConfigMap", "PyTorchJob", "Job"]
    job = by_kind(objs, "Job")
    assert job["metadata"]["name"] == "dlrm-criteo-fl15-export"
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "export"
    spec = job["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["command"] == cmd.EXPORT_COMMAND + ["--wait-for-run", "/output", "--checkpoints", "/output/checkpoints",
                                                 "--out", "/output/model", "--table-dtype", "fp16", "--triton"]
    assert "nvidia.com/gpu" not in c["resources"]["limits"] and "tolerations" not in spec
    train = pod(by_kind(objs, "PyTorchJob"))["containers"][0]
    # the dataset and output exactly as training mounts them: the checkpoint names the dataset path it read
    assert [m for m in train["volumeMounts"] if m["name"] in ("dataset", "output")] == \
        [m for m in c["volumeMounts"] if m["name"] in ("dataset", "output")]
    assert c["envFrom"] == [{"secretRef": {"name": "aws-creds"}}] and spec["automountServiceAccountToken"] is False
    assert {v["name"] for v in spec["volumes"]} == {"dataset", "output", "tmp"}
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_export_job_reads_the_checkpoints_where_training_writes_them():
    profile, overrides = CASES["export-job"]
    cfg = load_job_config(profile, overrides={**overrides, "train": {"out": "/output", "checkpoint_dir": "s3://ckpt/run1"}})
    job = by_kind(render_objects(cfg, git_revision=REV), "Job")
    args = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert args[args.index("--checkpoints") + 1] == "s3://ckpt/run1"


def test_export_job_follows_a_trainjob_too():
    profile, overrides = CASES["export-job"]
    objs = render_objects(load_job_config(profile, overrides={**overrides, "api": "trainjob"}), git_revision=REV)
    assert [o["kind"] for o in objs][-1] == "Job" and "TrainJob" in [o["kind"] for o in objs]
    assert by_kind(objs, "Job")["spec"]["template"]["spec"]["containers"][0]["command"][:4] == cmd.EXPORT_COMMAND


KUEUE_QUEUE, KUEUE_PRIORITY = "kueue.x-k8s.io/queue-name", "kueue.x-k8s.io/priority-class"


@pytest.mark.parametrize("api", ["pytorchjob", "trainjob"])
def test_a_queue_alone_puts_the_job_in_kueue_with_its_workload_priority(api):
    """Issue 20.3: scheduling.queue without gang=kueue used to be dropped silently."""
    cfg = load_job_config("synthetic-smoke", overrides={"api": api, "scheduling": {"queue": "team-a", "workload_priority": "urgent"}})
    job = by_kind(render_objects(cfg), "PyTorchJob" if api == "pytorchjob" else "TrainJob")
    assert job["metadata"]["labels"][KUEUE_QUEUE] == "team-a" and job["metadata"]["labels"][KUEUE_PRIORITY] == "urgent"


def test_kueue_labels_on_the_export_and_preprocess_jobs_and_never_for_a_volcano_queue():
    export = render_objects(load_job_config("criteo-fl15", overrides={**CASES["export-job"][1], "scheduling": {"queue": "q"}}))
    assert [o["metadata"]["labels"].get(KUEUE_QUEUE) for o in export if o["kind"] in ("PyTorchJob", "Job")] == ["q", "q"]
    local = render_objects(load_job_config("criteo-preprocess", overrides={**CASES["criteo-preprocess-local"][1], "scheduling": {"queue": "q"}}))
    assert by_kind(local, "Job")["metadata"]["labels"][KUEUE_QUEUE] == "q"
    volcano = render("stage-irsa-minio-volcano")
    assert not any(KUEUE_QUEUE in o["metadata"].get("labels", {}) for o in volcano)
    assert KUEUE_PRIORITY not in by_kind(render("pvc-kueue-efa-secret"), "PyTorchJob")["metadata"]["labels"]


@pytest.mark.parametrize("overrides,fragment", [
    ({"scheduling": {"workload_priority": "urgent"}}, "scheduling.workload_priority=urgent is Kueue's WorkloadPriorityClass: it needs a Kueue queue"),
    ({"scheduling": {"gang": "volcano", "queue": "q", "workload_priority": "urgent"}}, "got gang=volcano"),
    ({"scheduling": {"queue": "q", "workload_priority": "Urgent!"}}, "scheduling.workload_priority"),
])
def test_a_workload_priority_needs_a_kueue_queue(overrides, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_job_config("synthetic-smoke", overrides=overrides)


def test_kueue_does_not_manage_a_spark_application():
    with pytest.raises(ConfigError, match="Kueue does not manage a SparkApplication"):
        load_job_config("criteo-preprocess", overrides={"scheduling": {"queue": "q"}})
