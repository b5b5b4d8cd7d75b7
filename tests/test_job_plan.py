"""The job plan: one description of a job that render, submit, run-local and the image test's
container runner all interpret. Its replicas, their env and pods, and the decoder of rendered files."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dlrm.errors import UserError
from launcher.config import load_job_config
from launcher.decode import load_plan_file, plan_from_objects
from launcher.encode import plan_job
from launcher.plan import CONTAINER, MASTER_PORT, PORT_NAME
from launcher.render import to_yaml

from test_render import CASES

ROOT = Path(__file__).resolve().parents[1]


def smoke(nodes=3, gpus=2, **over):
    return plan_job(load_job_config("synthetic-smoke", overrides={"nodes": nodes, "gpus_per_node": gpus, **over}))


def test_replicas_ranks_and_the_operators_env():
    plan = smoke(nodes=3, gpus=2)
    assert [(r.name, r.role, r.node_rank) for r in plan.replicas] == [
        ("master-0", "Master", 0), ("worker-0", "Worker", 1), ("worker-1", "Worker", 2)]
    assert (plan.nnodes, plan.nproc_per_node, plan.world_size) == (3, 2, 6)
    env = plan.replica_env(plan.replicas[2], "job-master-0")
    # WORLD_SIZE counts processes (the operator's replicas x nprocPerNode), RANK is the node rank.
    assert env == {"MASTER_ADDR": "job-master-0", "MASTER_PORT": str(MASTER_PORT), "WORLD_SIZE": "6", "RANK": "2",
                   "PET_NNODES": "3", "PET_NPROC_PER_NODE": "2", "PET_NODE_RANK": "2",
                   "PET_MASTER_ADDR": "job-master-0", "PET_MASTER_PORT": str(MASTER_PORT)}


def test_the_rendered_job_is_the_plan():
    plan = smoke(nodes=2)
    job = next(o for o in plan.objects if o["kind"] == "PyTorchJob")
    for g in plan.groups:
        spec = job["spec"]["pytorchReplicaSpecs"][g.role]
        assert spec["replicas"] == g.replicas and spec["restartPolicy"] == g.restart_policy
        (c,) = spec["template"]["spec"]["containers"]
        assert c["name"] == CONTAINER and c["command"] == g.pod.main.command
        assert c["env"] == g.pod.main.env_k8s()
        assert c["ports"] == [{"name": PORT_NAME, "containerPort": MASTER_PORT, "protocol": "TCP"}]
        assert [v["name"] for v in spec["template"]["spec"]["volumes"]] == [v.name for v in g.pod.volumes]
    assert job["spec"]["nprocPerNode"] == str(plan.nproc_per_node)


# (A TrainJob on a ClusterTrainingRuntime decodes only on the cluster: its runtime is not in the file.)
@pytest.mark.parametrize("name", sorted(n for n, (profile, over) in CASES.items()
                                        if profile != "criteo-preprocess" and not over.get("trainjob", {}).get("cluster_runtime")))
def test_a_rendered_file_decodes_to_the_same_plan(name, tmp_path):
    """run-local FILE and docker_job FILE see exactly what run-local --profile sees."""
    profile, overrides = CASES[name]
    plan = plan_job(load_job_config(profile, overrides=overrides))
    path = tmp_path / "job.yaml"
    path.write_text(to_yaml(plan.objects))
    decoded = load_plan_file(path)
    assert decoded.groups == plan.groups
    assert (decoded.name, decoded.namespace, decoded.nproc_per_node, decoded.master_port, decoded.run_policy,
            decoded.config_maps) == (plan.name, plan.namespace, plan.nproc_per_node, plan.master_port, plan.run_policy,
                                     plan.config_maps)
    assert [decoded.replica_env(r, "m") for r in decoded.replicas] == [plan.replica_env(r, "m") for r in plan.replicas]


def test_preprocess_plans_have_objects_and_no_replicas():
    plan = plan_job(load_job_config("criteo-preprocess"))
    assert plan.kind == "preprocess" and plan.groups == [] and [o["kind"] for o in plan.objects] == ["SparkApplication"]


@pytest.mark.parametrize("objects,fragment", [
    ([1, 2], "expected Kubernetes objects (mappings), got int"),
    (["a"], "got str"),
    ([{"kind": "ConfigMap"}], "found 0 (kinds: ConfigMap)"),
    ([{"kind": "PyTorchJob", "metadata": "x"}], "PyTorchJob.metadata: expected a mapping, got 'x'"),
    ([{"kind": "PyTorchJob", "metadata": {"name": "j"}, "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": "one"}}}}],
     "Master.replicas: expected an integer, got 'one'"),
    ([{"kind": "PyTorchJob", "metadata": {"name": "j"}, "spec": {"pytorchReplicaSpecs": {"Chief": {}}}}],
     "replica types ['Chief']"),
    ([{"kind": "PyTorchJob", "metadata": {"name": "j"}, "spec": {"pytorchReplicaSpecs": {"Master": {
        "template": {"spec": {"containers": [{"name": "pytorch", "env": [{"name": "A", "value": "1"}, "B=2"]}]}}}}}}],
     "containers[0].env[1]: expected a mapping, got 'B=2'"),
    ([{"kind": "PyTorchJob", "metadata": {"name": "j"}, "spec": {"pytorchReplicaSpecs": {"Master": {
        "template": {"spec": {"containers": [{"name": "trainer"}]}}}}}}], "no container named 'pytorch'"),
])
def test_malformed_objects_are_one_line_errors(objects, fragment):
    with pytest.raises(UserError) as e:
        plan_from_objects(objects)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def _docker_args(tmp_path: Path, *job: str) -> dict[str, list[str]]:
    out = subprocess.run([sys.executable, str(ROOT / "images" / "docker_job.py"), *job, "--prefix", "t", "--network", "n",
                          "--out", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    return {line.split()[1]: Path(line.split()[2]).read_bytes().decode().split("\0")[:-1]
            for line in out.splitlines() if line.startswith("replica ")}


def test_docker_job_runs_the_plan_with_the_same_env_as_run_local(tmp_path):
    """The image test's container runner and run-local inject the one env the plan defines."""
    flags = ["--profile", "synthetic-smoke", "--nodes", "2", "--gpus", "2", "--image", "local/dlrm:test"]
    args = _docker_args(tmp_path / "a", *flags)
    plan = smoke(nodes=2, gpus=2, image="local/dlrm:test")
    for r in plan.replicas:
        env = dict(a.split("=", 1) for a, flag in zip(args[r.name][1:], args[r.name]) if flag == "--env")
        assert {k: env[k] for k in plan.replica_env(r, "x")} == plan.replica_env(r, "t-master-0")
        assert env["WORLD_SIZE"] == "4"
        assert args[r.name][args[r.name].index("--entrypoint") + 1:] == [*plan.pod(r).main.command[:1], "local/dlrm:test",
                                                                          *plan.pod(r).main.command[1:]]
    rendered = tmp_path / "job.yaml"  # rendered at the revision the CLI saw: it is in the pods' env (run.json)
    from dlrm.training.runlog import git_revision

    rendered.write_text(to_yaml(plan_job(load_job_config("synthetic-smoke", overrides={"nodes": 2, "gpus_per_node": 2, "image": "local/dlrm:test"}),
                                         git_revision=git_revision(ROOT / "launcher")).objects))
    from_file = _docker_args(tmp_path / "b", str(rendered))
    assert [a.replace(str(tmp_path / "b"), "") for a in from_file["worker-0"]] == \
           [a.replace(str(tmp_path / "a"), "") for a in args["worker-0"]]


def test_run_local_file_with_a_list_of_non_objects_is_one_error_line(tmp_path):
    bad = tmp_path / "job.yaml"
    bad.write_text(yaml.safe_dump([1, 2, 3]))
    r = subprocess.run([sys.executable, "-m", "launcher", "run-local", str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr


def _render(capsys, *args) -> tuple[int, str, str]:
    from launcher.__main__ import main

    rc = main(["render", "--profile", "synthetic-smoke", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_feature_spec_is_read_only_when_named(tmp_path, capsys):
    """Table sizes come from the profile's train_tables, or a feature spec named with --feature-spec."""
    from dlrm.data.spec import FeatureSpec

    FeatureSpec.default(tmp_path / "ds", [10**9] * 4).save()  # far beyond one 16 GiB GPU
    rc, _, err = _render(capsys, "--set", f"dataset={tmp_path / 'ds'}")
    assert rc == 0, err  # the folder at the dataset path is not read
    rc, _, err = _render(capsys, "--set", f"dataset={tmp_path / 'ds'}", "--feature-spec", str(tmp_path / "ds" / "feature_spec.yaml"))
    assert rc == 2 and "do not fit" in err
    FeatureSpec.default(tmp_path / "small", [7, 8]).save()
    rc, _, err = _render(capsys, "--set", "train_tables=", "--feature-spec", str(tmp_path / "small"))
    assert rc == 0, err
    rc, _, err = _render(capsys, "--feature-spec", str(tmp_path / "nowhere.yaml"))
    assert rc == 2 and "nowhere.yaml" in err


def test_feature_spec_from_s3(s3_bucket, tmp_path, capsys):
    import boto3

    from dlrm.data.spec import FeatureSpec

    spec = FeatureSpec.default(tmp_path / "ds", [10**9] * 4)
    spec.save()
    boto3.client("s3").upload_file(str(spec.path), s3_bucket, "criteo/feature_spec.yaml")
    for location in (f"s3://{s3_bucket}/criteo/feature_spec.yaml", f"s3://{s3_bucket}/criteo/"):
        rc, _, err = _render(capsys, "--feature-spec", location)
        assert rc == 2 and "do not fit" in err, err
    rc, _, err = _render(capsys, "--feature-spec", f"s3://{s3_bucket}/missing/")
    assert rc == 2 and err.count("\n") == 1 and "missing" in err, err


def test_only_launcher_k8s_imports_kubernetes():
    """render, validate, run-local and the plan never need the client (docs/architecture.md)."""
    import ast

    importers = []
    for path in sorted([*ROOT.glob("launcher/**/*.py"), *ROOT.glob("dlrm/**/*.py"), *ROOT.glob("images/*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n == "kubernetes" or n.startswith("kubernetes.") for n in names):
                importers.append(str(path.relative_to(ROOT)))
    assert sorted(set(importers)) == ["launcher/k8s.py"]


def test_mutated_rendered_jobs_are_user_errors_or_run(tmp_path):
    """Any field of a rendered job replaced by a value of another type: run-local's planning either
    accepts it or refuses it with a UserError, never a traceback (seeded; the run itself is not started)."""
    import copy
    import io
    import random

    from launcher.run_local import LocalJob, plan_steps, volume_folders

    base = smoke(nodes=2, storage={"mode": "stage"}, dataset="s3://b/p").objects

    def paths(node, prefix=()):
        yield prefix
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            yield from paths(v, prefix + (k,))

    values = [None, 1, -1, "x", "", [], {}, ["a"], {"a": 1}, True, 1.5, [1, 2], {"name": 3}]
    rng = random.Random(12)
    for i in range(300):
        objs = copy.deepcopy(base)
        for _ in range(rng.randint(1, 3)):
            *parent, last = rng.choice([p for p in paths(objs) if p])
            node = objs
            for k in parent:
                node = node[k]
            node[last] = copy.deepcopy(rng.choice(values))
        try:
            job = LocalJob(objs, tmp_path / str(i), out=io.StringIO())
            for r in job.replicas:
                folders = volume_folders(job.plan, r, tmp_path / str(i), {}, lambda s: None)
                plan_steps(job.plan, r, job.world_env(r, 1), folders, lambda s: None)
        except UserError as e:
            assert "\n" not in str(e)
