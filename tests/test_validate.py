"""Offline validation: strict schemas, the operator webhook's rules, the upstream CRD, and the CLIs."""
from __future__ import annotations

import copy

import pytest
import yaml

from dlrm.errors import ConfigError, UserError
from launcher.__main__ import main as launcher_main
from launcher.config import load_job_config
from launcher.render import render_objects
from launcher.validate import VENDORED_CRD, validate_objects

from test_render import CASES, by_kind, render

CRD = VENDORED_CRD  # in the repository: every CRD test runs on a fresh clone


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict]]:
    return {name: render(name) for name in CASES}


@pytest.fixture
def job(rendered) -> dict:
    return copy.deepcopy(by_kind(rendered["criteo-fl15-nodes2"], "PyTorchJob"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_rendered_objects_are_valid(rendered, name):
    assert validate_objects(rendered[name]) == []


@pytest.mark.parametrize("name", sorted(CASES))
def test_rendered_objects_match_upstream_crd(rendered, name):
    assert validate_objects(rendered[name], crd=CRD) == []


def _master(job: dict) -> dict:
    return job["spec"]["pytorchReplicaSpecs"]["Master"]


# Each mutation of a valid PyTorchJob and the path + words its error must carry.
def _set(path, value):
    def apply(job):
        node = job
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return apply


POD = ("spec", "pytorchReplicaSpecs", "Master", "template", "spec")
MUTATIONS = {
    "unknown spec field": (_set(("spec", "elasticPolicyy"), {}), "spec: Additional properties", "'elasticPolicyy'"),
    "unknown pod field": (_set(POD + ("tolerationz",), []), "Master.template.spec: Additional properties", "'tolerationz'"),
    "unknown container field": (lambda j: _master(j)["template"]["spec"]["containers"][0].update(cmd=["x"]),
                                "containers[0]: Additional properties", "'cmd'"),
    "nprocPerNode int": (_set(("spec", "nprocPerNode"), 8), "spec.nprocPerNode", "8 is not of type 'string'"),
    "bad clean policy": (_set(("spec", "runPolicy", "cleanPodPolicy"), "Sometimes"), "runPolicy.cleanPodPolicy", "'Sometimes'"),
    "bad restart policy": (lambda j: _master(j).update(restartPolicy="Maybe"), "Master.restartPolicy", "'Maybe'"),
    "bad quantity": (lambda j: _master(j)["template"]["spec"]["containers"][0]["resources"]["limits"].update(memory=[1]),
                     "resources.limits.memory", "[1]"),
    "bad name": (lambda j: j["metadata"].update(name="Job_1"), "metadata.name", "'Job_1' is not a DNS-1035 label"),
    "long name": (lambda j: j["metadata"].update(name="a" * 64), "metadata.name", "at most 63"),
    "chief replica": (lambda j: j["spec"]["pytorchReplicaSpecs"].update(Chief=copy.deepcopy(_master(j))),
                      "spec.pytorchReplicaSpecs.Chief", "'Chief' is not one of Master, Worker"),
    "no master": (lambda j: j["spec"]["pytorchReplicaSpecs"].pop("Master"), "spec.pytorchReplicaSpecs", "Master"),
    "two masters": (lambda j: _master(j).update(replicas=2), "Master.replicas", "exactly 1 replica, got 2"),
    "no pytorch container": (lambda j: _master(j)["template"]["spec"]["containers"][0].update(name="trainer"),
                             "Master.template.spec.containers", "no container named 'pytorch' (got ['trainer'])"),
    "no image": (lambda j: _master(j)["template"]["spec"]["containers"][0].pop("image"),
                 "Master.template.spec.containers[0].image", "has no image"),
    "replicas over int32": (lambda j: j["spec"]["pytorchReplicaSpecs"]["Worker"].update(replicas=2**31),
                            "spec.pytorchReplicaSpecs.Worker.replicas", "2147483648 overflows the API's int32"),
    "port over int32": (lambda j: _master(j)["template"]["spec"]["containers"][0]["ports"][0].update(containerPort=2**32),
                        "containers[0].ports[0].containerPort", "overflows the API's int32 (at most 2147483647)"),
    "grace over int64": (_set(POD + ("terminationGracePeriodSeconds",), 2**63),
                         "Master.template.spec.terminationGracePeriodSeconds", "overflows the API's int64"),
}


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_each_mutation_is_reported_with_its_path(job, case):
    mutate, path, words = MUTATIONS[case]
    mutate(job)
    errors = validate_objects([job])
    assert any(path in e and words in e for e in errors), errors
    assert all(e.startswith("PyTorchJob/") for e in errors)


def test_all_errors_at_once(job):
    for case in ("unknown pod field", "bad clean policy", "two masters", "no image"):
        MUTATIONS[case][0](job)
    errors = validate_objects([job])
    assert len(errors) >= 4
    for case in ("unknown pod field", "bad clean policy", "two masters", "no image"):
        assert any(MUTATIONS[case][1] in e for e in errors), (case, errors)


@pytest.mark.parametrize("case", ["unknown spec field", "unknown pod field", "nprocPerNode int", "bad quantity"])
def test_upstream_crd_catches_schema_mutations(job, case):
    mutate, path, _ = MUTATIONS[case]
    mutate(job)
    crd_errors = [e for e in validate_objects([job], crd=CRD) if "(CRD kubeflow.org_pytorchjobs.yaml)" in e]
    assert any(path in e for e in crd_errors), crd_errors


def test_crd_allows_int_or_string(job):
    # Quantities are x-kubernetes-int-or-string upstream: an integer memory limit is fine there.
    # above the request (64): a request over its limit is refused
    _master(job)["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = 128
    assert validate_objects([job], crd=CRD) == []


def test_crd_errors(tmp_path, job):
    with pytest.raises(UserError, match="missing.yaml: no such CRD file"):
        validate_objects([job], crd=tmp_path / "missing.yaml")
    not_crd = tmp_path / "cm.yaml"
    not_crd.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    with pytest.raises(UserError, match="no CustomResourceDefinition"):
        validate_objects([job], crd=not_crd)


def test_core_objects_are_checked_strictly():
    from launcher.admin import bundle_objects  # the mount mode's PV and claim are the admin bundle's

    objs = copy.deepcopy(bundle_objects(load_job_config("criteo-fl15")))
    pv, pvc, cm = (next(o for o in objs if o["kind"] == k) for k in ("PersistentVolume", "PersistentVolumeClaim", "ConfigMap"))
    pv["spec"]["csi"]["volumeAtributes"] = {}
    pvc["spec"]["accessModes"] = "ReadOnlyMany"
    cm["data"] = {"train.yaml": 3}
    errors = validate_objects(objs)
    assert any(e.startswith("PersistentVolume/") and "spec.csi" in e and "'volumeAtributes'" in e for e in errors), errors
    assert any(e.startswith("PersistentVolumeClaim/") and "spec.accessModes" in e for e in errors), errors
    assert any(e.startswith("ConfigMap/") and "data.train.yaml" in e for e in errors), errors


def test_spark_and_batch_job_are_checked(rendered):
    (app,) = copy.deepcopy(rendered["criteo-preprocess-spark"])
    app["spec"]["executor"]["instancez"] = 3
    app["spec"]["driver"]["cores"] = "2"
    errors = validate_objects([app])
    assert any("spec.executor" in e and "'instancez'" in e for e in errors), errors
    assert any("spec.driver.cores" in e for e in errors), errors
    (job,) = copy.deepcopy(rendered["criteo-preprocess-local"])
    job["spec"]["template"]["spec"]["restartPolicy"] = 1
    assert any("spec.template.spec.restartPolicy" in e for e in validate_objects([job]))


def test_unknown_kind_and_non_objects():
    errors = validate_objects([{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}, ["not", "a", "dict"]])
    assert errors[0].startswith("Pod/p: apiVersion/kind: no schema for 'v1' 'Pod'")
    assert errors[1].startswith("#1: (document)")


# -- CLIs ---------------------------------------------------------------------------------------


def test_render_cli_stdout_and_out_dir(tmp_path, capsys):
    assert launcher_main(["render", "--profile", "synthetic-smoke", "--nodes", "2", "--gpus", "1", "--name", "smoke-a",
                          "--namespace", "team", "--image", "reg/x:1", "--set", "train.epochs=2"]) == 0
    objs = list(yaml.safe_load_all(capsys.readouterr().out))
    job = by_kind(objs, "PyTorchJob")
    assert (job["metadata"]["name"], job["metadata"]["namespace"]) == ("smoke-a", "team")
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
    assert yaml.safe_load(by_kind(objs, "ConfigMap")["data"]["train.yaml"])["epochs"] == 2
    out = tmp_path / "out"
    assert launcher_main(["render", "--profile", "synthetic-smoke", "--out", str(out)]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert files == ["00-configmap-dlrm-smoke-config.yaml", "01-pytorchjob-dlrm-smoke.yaml"]
    assert launcher_main(["validate", *map(str, sorted(out.iterdir()))]) == 0
    assert "2 objects in 2 files: valid" in capsys.readouterr().out


def test_set_wins_over_flags(capsys):
    assert launcher_main(["render", "--profile", "synthetic-smoke", "--nodes", "2", "--set", "nodes=3"]) == 0
    job = by_kind(list(yaml.safe_load_all(capsys.readouterr().out)), "PyTorchJob")
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2


def test_render_cli_user_error(capsys):
    assert launcher_main(["render", "--profile", "synthetic-smoke", "--gpus", "9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: gpus_per_node must be between 1 and max_gpus_per_node=8, got 9"


def test_validate_cli_reports_file_and_path(tmp_path, capsys, job):
    _master(job)["replicas"] = 2
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    args = ["validate", str(path), "--crd", str(CRD)]
    assert launcher_main(args) == 1
    captured = capsys.readouterr()
    assert f"{path}: PyTorchJob/dlrm-criteo-fl15: spec.pytorchReplicaSpecs.Master.replicas" in captured.err
    assert "1 errors" in captured.out
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [\n")
    assert launcher_main(["validate", str(bad)]) == 2
    assert f"{bad}: line 2 column 1: is not valid YAML" in capsys.readouterr().err
    bomb = tmp_path / "bomb.yaml"  # a billion laughs: refused before anything walks it
    bomb.write_text("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi")))
    assert launcher_main(["validate", str(bomb)]) == 2
    assert "aliases expand to more than" in capsys.readouterr().err


def test_vendored_crd_is_the_pinned_upstream_file():
    import importlib.util

    spec = importlib.util.spec_from_file_location("vendor_crds", VENDORED_CRD.with_name("vendor_crds.py"))
    vendor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vendor)
    (_, _, tag, blob), = vendor.PINNED.values()
    assert vendor.git_blob_id(VENDORED_CRD.read_bytes()) == blob and tag == "v1.9.4"
    assert tag in (VENDORED_CRD.parent / "README.md").read_text()


def test_validation_uses_the_vendored_crd_by_default(job):
    job["spec"]["nprocPerNode"] = 8  # our schema and the CRD both want a string; only the CRD error names it
    assert any("(CRD kubeflow.org_pytorchjobs.yaml)" in e for e in validate_objects([job]))


def test_int64_fields_take_more_than_int32(job):
    """terminationGracePeriodSeconds and activeDeadlineSeconds are int64 in the API: 2^31 is fine there, not for a count."""
    _set(POD + ("terminationGracePeriodSeconds",), 2**31)(job)
    _set(("spec", "runPolicy", "activeDeadlineSeconds"), 2**40)(job)
    assert validate_objects([job]) == []
    _set(("spec", "runPolicy", "backoffLimit"), 2**31)(job)
    assert validate_objects([job]) == ["PyTorchJob/dlrm-criteo-fl15: spec.runPolicy.backoffLimit: 2147483648 overflows "
                                       "the API's int32 (at most 2147483647)"]


def test_training_pods_get_the_configured_grace_period(rendered):
    """The trainer's SIGTERM checkpoint needs more than Kubernetes' default 30 s: 120 s unless configured."""
    assert all(pod["spec"]["terminationGracePeriodSeconds"] == 120 for pod in _pod_templates(rendered["criteo-fl15-nodes2"]))
    objs = render_objects(load_job_config("synthetic-smoke", overrides={"api": "trainjob", "cluster": {"termination_grace_seconds": 900}}))
    assert [p["spec"]["terminationGracePeriodSeconds"] for p in _pod_templates(objs)] == [900]
    patched = by_kind(rendered["trainjob-cluster-runtime-mount-secret"], "TrainJob")["spec"]["runtimePatches"][0]
    assert patched["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"] == 120
    with pytest.raises(ConfigError, match=r"cluster.termination_grace_seconds: expected an integer in \[0, 2147483647\]"):
        load_job_config("synthetic-smoke", overrides={"cluster": {"termination_grace_seconds": 2**31}})


def _pod_templates(objs: list[dict]) -> list[dict]:
    """The training pod templates among rendered objects (a PyTorchJob's replicas, a TrainingRuntime's trainer)."""
    out = []
    for o in objs:
        if o["kind"] == "PyTorchJob":
            out += [r["template"] for r in o["spec"]["pytorchReplicaSpecs"].values()]
        elif o["kind"] == "TrainingRuntime":
            out += [rj["template"]["spec"]["template"] for rj in o["spec"]["template"]["spec"]["replicatedJobs"]]
    return out
