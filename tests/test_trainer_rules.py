"""Kubeflow Trainer v2 validation: the vendored v2.3 schemas (strict) and the admission rules of
launcher/trainjob.py, on a small hand-written TrainJob + TrainingRuntime pair shaped like the
stock torch runtime. Rendered TrainJobs are checked by test_validate.py / test_render.py."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from launcher import trainjob
from launcher.validate import validate_objects

SCHEMA = Path(__file__).resolve().parents[1] / "launcher" / "schemas" / "trainer.json"


def _pair() -> list[dict]:
    runtime = {
        "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainingRuntime",
        "metadata": {"name": "tj", "namespace": "ml"},
        "spec": {"mlPolicy": {"numNodes": 2, "torch": {}},
                 "template": {"spec": {"failurePolicy": {"maxRestarts": 3}, "replicatedJobs": [{
                     "name": "node", "replicas": 1,
                     "template": {"metadata": {"labels": {trainjob.ANCESTOR_LABEL: "trainer"}},
                                  "spec": {"template": {"spec": {"containers": [{"name": "node", "image": "img"}]}}}}}]}}}}
    job = {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "metadata": {"name": "tj", "namespace": "ml"},
           "spec": {"runtimeRef": {"apiGroup": "trainer.kubeflow.org", "kind": "TrainingRuntime", "name": "tj"},
                    "trainer": {"image": "img", "command": ["torchrun", "--module", "dlrm", "train"], "numNodes": 2,
                                "numProcPerNode": 8, "env": [{"name": "HOME", "value": "/tmp"}],
                                "resourcesPerNode": {"limits": {"nvidia.com/gpu": 8}}}}}
    return [runtime, job]


def test_the_pair_is_valid_and_the_schema_names_its_source():
    assert validate_objects(_pair()) == []
    source = json.loads(SCHEMA.read_text())["source"]
    assert source.startswith("kubeflow-trainer-api 2.3.0") and "Apache-2.0" in source


def _rt(objs):
    return objs[0]


def _tj(objs):
    return objs[1]


def _rjob(objs):
    return _rt(objs)["spec"]["template"]["spec"]["replicatedJobs"][0]


PATCH = {"manager": "dlrm-k8s.io/launcher", "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
    {"name": "node", "template": {"spec": {"template": {"spec": {"containers": [{"name": "node", "env": [{"name": "A", "value": "1"}]}]}}}}}]}}}}

# mutation -> words the one error must carry
CASES = {
    "reserved PET_ env": (lambda o: _tj(o)["spec"]["trainer"]["env"].append({"name": "PET_NNODES", "value": "9"}),
                          "TrainJob/tj: spec.trainer.env: must not have reserved envs, invalid envs configured: ['PET_NNODES']"),
    "unknown trainer field (strict schema)": (lambda o: _tj(o)["spec"]["trainer"].update(numNode=2),
                                              "TrainJob/tj: spec.trainer: Additional properties are not allowed ('numNode'"),
    "numProcPerNode as a string (v2.3 takes an int)": (lambda o: _tj(o)["spec"]["trainer"].update(numProcPerNode="auto"),
                                                       "spec.trainer.numProcPerNode: 'auto' is not of type 'integer'"),
    "zero nodes": (lambda o: _tj(o)["spec"]["trainer"].update(numNodes=0), "spec.trainer.numNodes: must be >= 1, got 0"),
    "runtime kind": (lambda o: _tj(o)["spec"]["runtimeRef"].update(kind="JobSet"),
                     "spec.runtimeRef: unsupported runtime JobSet.trainer.kubeflow.org"),
    "runtime group": (lambda o: _tj(o)["spec"]["runtimeRef"].update(apiGroup="kubeflow.org"),
                      "spec.runtimeRef: unsupported runtime TrainingRuntime.kubeflow.org"),
    "empty runtime name": (lambda o: _tj(o)["spec"]["runtimeRef"].update(name=""), "spec.runtimeRef.name: must name"),
    "job name": (lambda o: _tj(o)["metadata"].update(name="Tj_1"), "metadata.name: 'Tj_1' must be an RFC 1035 DNS label"),
    "deadline": (lambda o: _tj(o)["spec"].update(activeDeadlineSeconds=0), "spec.activeDeadlineSeconds: must be >= 1"),
    "managedBy": (lambda o: _tj(o)["spec"].update(managedBy="me"), "spec.managedBy: must be trainer.kubeflow.org/trainjob-controller"),
    "runtime without torch": (lambda o: _rt(o)["spec"]["mlPolicy"].pop("torch"),
                              "spec.runtimeRef: TrainingRuntime/tj has no mlPolicy.torch, so no PET_* environment"),
    "two ml policies": (lambda o: _rt(o)["spec"]["mlPolicy"].update(mpi={}), "TrainingRuntime/tj: spec.mlPolicy: only one of the policies"),
    "two gang policies": (lambda o: _rt(o)["spec"].update(podGroupPolicy={"coscheduling": {}, "volcano": {}}),
                          "spec.podGroupPolicy: only one of coscheduling, volcano"),
    "trainer replicas": (lambda o: _rjob(o).update(replicas=2), "replicatedJobs[0].replicas: always must be 1 for the trainer ancestor"),
    "trainer container name": (lambda o: _rjob(o)["template"]["spec"]["template"]["spec"]["containers"][0].update(name="pytorch"),
                               "must contain the required container 'node' for the ancestor trainer (got ['pytorch'])"),
    "no trainer ancestor": (lambda o: _rjob(o)["template"]["metadata"]["labels"].clear(),
                            "no replicated job labelled trainer.kubeflow.org/trainjob-ancestor-step: trainer"),
    "runtime numNodes": (lambda o: (_rt(o)["spec"]["mlPolicy"].update(numNodes=0)), "spec.mlPolicy.numNodes: must be >= 1, got 0"),
    "patch env on node": (lambda o: _tj(o)["spec"].update(runtimePatches=[copy.deepcopy(PATCH)]),
                          "containers[0].env: cannot be set for container 'node'"),
    "patch of a missing replicated job": (
        lambda o: _tj(o)["spec"].update(runtimePatches=[{"manager": "m", "trainingRuntimeSpec": {"template": {"spec": {
            "replicatedJobs": [{"name": "launcher"}]}}}}]),
        "replicatedJobs[0].name: TrainingRuntime/tj has no replicated job 'launcher' (it has ['node'])"),
    "patch managers repeat": (lambda o: _tj(o)["spec"].update(runtimePatches=[{"manager": "m"}, {"manager": "m"}]),
                              "spec.runtimePatches: manager 'm' appears more than once"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_rule_reports_one_error_with_its_path(case):
    objs = _pair()
    mutate, words = CASES[case]
    mutate(objs)
    errors = validate_objects(objs)
    assert len(errors) == 1 and words in errors[0], errors


def test_priority_class_only_on_the_trainer_ancestor():
    objs = _pair()
    spec = _rt(objs)["spec"]["template"]["spec"]
    init = copy.deepcopy(spec["replicatedJobs"][0])
    init["name"] = "dataset-initializer"
    init["template"]["metadata"]["labels"][trainjob.ANCESTOR_LABEL] = "dataset-initializer"
    init["template"]["spec"]["template"]["spec"] = {"priorityClassName": "high", "containers": [{"name": "dataset-initializer"}]}
    spec["replicatedJobs"].append(init)
    assert validate_objects(objs) == ["TrainingRuntime/tj: spec.template.spec.replicatedJobs[1].template.spec.template.spec."
                                      "priorityClassName: must not be set on this replicatedJob: only the one labelled "
                                      "with the 'trainer' ancestor may set it"]
    spec["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["priorityClassName"] = "high"
    del init["template"]["spec"]["template"]["spec"]["priorityClassName"]
    assert validate_objects(objs) == []


def test_a_cluster_runtime_is_not_checked_offline_and_a_schema_error_skips_the_rules():
    objs = _pair()
    _tj(objs)["spec"]["runtimeRef"].update(kind="ClusterTrainingRuntime", name="torch-distributed")
    _rt(objs)["spec"]["mlPolicy"].pop("torch")  # not the referenced runtime any more
    assert validate_objects(objs) == []
    objs = _pair()
    _tj(objs)["spec"]["trainer"] = "not a mapping"
    errors = validate_objects(objs)
    assert len(errors) == 1 and "spec.trainer: 'not a mapping' is not of type 'object'" in errors[0]


def test_the_facts_other_modules_use():
    assert trainjob.master_addr("dlrm") == "dlrm-node-0-0.dlrm" and trainjob.MASTER_PORT == 29500
    assert trainjob.pod_selector("dlrm", 1) == ("jobset.sigs.k8s.io/jobset-name=dlrm,jobset.sigs.k8s.io/replicatedjob-name=node,"
                                                "batch.kubernetes.io/job-completion-index=1")
    objs = _pair()
    assert trainjob.trainer_job(_rt(objs))[0] == 0


def test_a_trainer_crd_file_checks_the_kind_it_defines(tmp_path):
    """`--crd` with Trainer's own CRD (not vendored here) applies to TrainJobs only, made strict."""
    schema = {"type": "object", "properties": {
        "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
        "spec": {"type": "object", "properties": {
            "runtimeRef": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "trainer": {"type": "object", "properties": {"numNodes": {"type": "integer", "format": "int32", "minimum": 1},
                                                         "image": {"type": "string", "maxLength": 2}}}}}}}
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "trainjobs.trainer.kubeflow.org"},
           "spec": {"group": "trainer.kubeflow.org", "names": {"kind": "TrainJob", "plural": "trainjobs"}, "scope": "Namespaced",
                    "versions": [{"name": "v1alpha1", "served": True, "storage": True, "schema": {"openAPIV3Schema": schema}}]}}
    path = tmp_path / "trainer.kubeflow.org_trainjobs.yaml"
    path.write_text(json.dumps(crd))
    errors = validate_objects(_pair(), crd=path)
    # image too long (the test CRD's limit) and unknown fields under trainer: strict, like the API server's field validation
    assert errors and all(e.startswith("TrainJob/tj: spec.trainer") and e.endswith(f"(CRD {path.name})") for e in errors), errors
    assert any("'img' is too long" in e for e in errors) and any("'command'" in e for e in errors)


def _runtime_job_name(objs: list[dict], name: str) -> None:
    rjob = objs[0]["spec"]["template"]["spec"]["replicatedJobs"][0]
    rjob["name"] = name


def test_trainer_v2_4_limits_a_runtimes_replicated_job_names_to_20_characters():
    """kubeflow/trainer #4394 (v2.4): 20 characters at most; 2.3 still takes a DNS label."""
    objs = _pair()
    _runtime_job_name(objs, "a" * 20)
    assert validate_objects(objs, trainer_version="2.4") == []
    _runtime_job_name(objs, "node-with-a-long-name")  # 21
    assert validate_objects(objs, trainer_version="2.3") == []
    assert validate_objects(objs, trainer_version="2.4") == [
        "TrainingRuntime/tj: spec.template.spec.replicatedJobs[0].name: 'node-with-a-long-name' is 21 characters; "
        "Trainer v2.4 allows at most 20 in a runtime"]
    assert trainjob.DEFAULT_TRAINER_VERSION == "2.4" and validate_objects(objs) != []


def test_every_rendered_runtime_passes_each_trainer_versions_rules():
    from test_render import CASES, render

    for name in (n for n in CASES if n.startswith("trainjob-")):
        for version in trainjob.TRAINER_VERSIONS:
            assert validate_objects(render(name), trainer_version=version) == [], (name, version)


def test_validate_cli_picks_the_trainer_version(tmp_path, capsys):
    import yaml

    from launcher.__main__ import main as launcher_main

    objs = _pair()
    _runtime_job_name(objs, "trainer-node-replicas")
    path = tmp_path / "tj.yaml"
    path.write_text(yaml.safe_dump_all(objs))
    assert launcher_main(["validate", str(path), "--trainer-version", "2.3"]) == 0
    assert launcher_main(["validate", str(path)]) == 1
    assert "Trainer v2.4 allows at most 20" in capsys.readouterr().err
