"""Run identity, launcher side (issues 19, 28): every job renders its run id (<name>-<12 hex of its
identity's hash>, pure), which every config field is classified into or out of (placement is out),
--resume only when asked, and a profile's default output follows the job's name."""
from __future__ import annotations

import argparse

import pytest
import yaml

from launcher.cli_render import add_job_arguments, plan_from_args
from dlrm.training.runlog import JOB_ENV
from launcher.config import JobConfig, load_job_config
from launcher.run_identity import IDENTITY, NOT_IDENTITY, covers, identity, identity_sha256, leaves, run_id


def rendered(*flags: str) -> tuple[dict, list[str], dict]:
    """(the job's annotations, its training container's command, the ConfigMap's train.yaml)."""
    p = argparse.ArgumentParser()
    add_job_arguments(p)
    objs = plan_from_args(p.parse_args(["--profile", "criteo-fl15", *flags])).objects
    job = next(o for o in objs if o["kind"] == "PyTorchJob")
    command = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"]
    train = yaml.safe_load(next(o for o in objs if o["kind"] == "ConfigMap")["data"]["train.yaml"])
    return job["metadata"]["annotations"], command, train


def arg(command: list[str], key: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in command if a.startswith(f"{key}=")]
    return value


def test_every_config_field_is_classified_exactly_once():
    """A field added to JobConfig (or TrainConfig) fails here until IDENTITY or NOT_IDENTITY names it."""
    paths = [path for path, _ in leaves(JobConfig())]
    unclassified = [p for p in paths if not any(covers(e, p) for e in IDENTITY + NOT_IDENTITY)]
    twice = [p for p in paths if sum(covers(e, p) for e in IDENTITY + NOT_IDENTITY) > 1]
    stale = [e for e in IDENTITY + NOT_IDENTITY if not any(covers(e, p) for p in paths)]
    sections = [e for e in NOT_IDENTITY if e not in paths]  # would let a new field out of the identity undecided
    assert (unclassified, twice, stale, sections) == ([], [], [], [])
    assert len(paths) > 90 and "train.data.batch_size" in identity(JobConfig())


def test_the_job_level_identity_reaches_the_run_record():
    """What render compares with a run's output: train.* from its config.yaml, the rest from run.json's job."""
    assert [e for e in IDENTITY if not e.startswith("train.") and e not in JOB_ENV] == []


def test_run_id_is_the_name_and_the_identity_hash_and_pure():
    a, b = load_job_config("criteo-fl15"), load_job_config("criteo-fl15")
    assert run_id(a) == run_id(b) == f"dlrm-criteo-fl15-{identity_sha256(a)[:12]}"
    assert run_id(load_job_config("criteo-fl15", overrides={"name": "exp-b"})).startswith("exp-b-")


BASE = {"nodes": 1, "gpus_per_node": 2}


@pytest.mark.parametrize("change", [
    {"nodes": 2, "gpus_per_node": 1}, {"nodes": 4, "gpus_per_node": 8}, {"image": "reg.io/dlrm:2@sha256:" + "a" * 64},
    {"namespace": "team-b", "api": "trainjob"}, {"resources": {"memory_per_gpu": "40Gi"}},
    {"cluster": {"fabric": "efa", "instance_type": "p5.48xlarge", "gpu_product": "NVIDIA-A100"}}, {"scheduling": {"gang": "kueue", "queue": "q"}},
    {"storage": {"mode": "mount"}}, {"train": {"dist": {"sharding": "row"}, "log_every": 7, "checkpoint_every": 50,
                                               "data": {"eval_batch_size": 1024, "prefetch": 4}, "compile": True}},
])
def test_placement_and_cadence_keep_the_run(change):
    base = load_job_config("criteo-fl15", overrides=BASE)
    assert run_id(load_job_config("criteo-fl15", overrides={**BASE, **change})) == run_id(base)


@pytest.mark.parametrize("change", [
    {"train": {"seed": 1}}, {"train": {"data": {"batch_size": 32768}}}, {"train": {"optim": {"lr": 12.0}}},
    {"train": {"model": {"top_mlp": [512, 256]}}}, {"train": {"epochs": 2}}, {"train": {"amp": "none"}},
    {"dataset": "s3://dlrm-datasets/criteo-1tb/fl3"}, {"name": "exp-b"},
])
def test_what_the_experiment_is_makes_another_run(change):
    base = load_job_config("criteo-fl15", overrides=BASE)
    assert run_id(load_job_config("criteo-fl15", overrides={**BASE, **change})) != run_id(base)


def test_the_job_renders_its_run_id_and_no_resume():
    annotations, command, train = rendered()
    assert arg(command, "run_id") == run_id(load_job_config("criteo-fl15"))
    assert "--resume" not in command and train["resume"] is False and train["run_id"] == ""


def test_resume_is_passed_only_when_asked():
    _, plain, _ = rendered()
    _, command, train = rendered("--resume")
    assert "--resume" in command and train["resume"] is True
    assert arg(command, "run_id") == arg(plain, "run_id")  # asking to continue is no other experiment


def test_another_name_never_writes_into_the_profiles_run_output():
    default, _, _ = rendered()
    annotations, command, train = rendered("--name", "exp-b")
    assert default["dlrm-k8s.io/output"] == "s3://dlrm-runs/dlrm-criteo-fl15"
    assert annotations["dlrm-k8s.io/output"] == arg(command, "out") == train["out"] == "s3://dlrm-runs/exp-b"


def test_an_explicit_output_is_kept_as_given():
    _, command, _ = rendered("--name", "exp-b", "--set", "train.out=s3://team/shared-run")
    assert arg(command, "out") == "s3://team/shared-run"


@pytest.mark.parametrize("out", ["s3://runs/{job}", "s3://runs/{name}/{}", "s3://runs/{Name}"])
def test_only_the_name_placeholder_exists(out):
    from dlrm.errors import ConfigError

    with pytest.raises(ConfigError, match="the only placeholder is"):
        load_job_config("criteo-fl15", overrides=[f"train.out={out}"])


@pytest.mark.parametrize("over", [{"storage": {"output_claim": "runs"}}, {"train": {"out": "s3://b/{name}"}},
                                  {"cluster": {"backoff_limit": 0}}])
def test_a_multinode_job_renders_when_a_restart_can_resume(over):
    """Shared output (a claim or S3), or no restarts at all (a rerun is new pods with empty emptyDirs)."""
    over = {"nodes": 2, "gpus_per_node": 1, "cluster": {"backoff_limit": 2}, **over}
    cfg = load_job_config("synthetic-smoke", overrides=over)
    assert cfg.nodes == 2


def test_status_finds_a_cluster_jobs_run_id_in_its_command():
    from launcher.results import run_id_of_job

    p = argparse.ArgumentParser()
    add_job_arguments(p)
    for api in ("pytorchjob", "trainjob"):
        job = next(o for o in plan_from_args(p.parse_args(["--profile", "criteo-fl15", "--api", api])).objects
                   if o["kind"] in ("PyTorchJob", "TrainJob"))
        assert run_id_of_job(job) == run_id(load_job_config("criteo-fl15")), api
    assert run_id_of_job({"spec": {"x": ["--set", "out=/o"]}}) == ""


# -- render / submit read the job's s3:// output (launcher.output_check) -----------------------------------


def record_run(bucket: str, overrides: list[str], run: str = "") -> str:
    """At s3://bucket/run, what the trainer of the synthetic-smoke job (train.out there, `overrides`)
    leaves: run.json (its run id, the pods' DLRM_JOB_* values) and config.yaml. Returns train.out."""
    import json

    import boto3

    from dlrm.config import dump_yaml

    out = f"s3://{bucket}/run"
    cfg = load_job_config("synthetic-smoke", overrides=[f"train.out={out}", *overrides])
    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key="run/run.json", Body=json.dumps({"run_id": run or run_id(cfg), "job": {
        "name": cfg.name, "dataset": cfg.dataset, "image": cfg.image}}))
    s3.put_object(Bucket=bucket, Key="run/config.yaml", Body=dump_yaml(cfg.train))
    return out


def render_main(capsys, *flags: str) -> tuple[int, str]:
    from launcher.__main__ import main

    rc = main(["render", "--profile", "synthetic-smoke", *flags])
    return rc, capsys.readouterr().err


def test_a_resized_job_renders_over_its_own_run_and_resume_over_another(s3_bucket, capsys, tmp_path):
    out = record_run(s3_bucket, ["nodes=1", "gpus_per_node=1", "image=dlrm-k8s-train:old"])
    rc, err = render_main(capsys, "--nodes", "2", "--gpus", "2", "--set", f"train.out={out}", "--out", str(tmp_path / "a"))
    assert rc == 0 and "note:" not in err and "error:" not in err, err  # the same run, at another placement
    out = record_run(s3_bucket, ["train.epochs=2"])
    rc, err = render_main(capsys, "--set", f"train.out={out}", "--out", str(tmp_path / "b"))
    assert rc == 2 and "another experiment: train.epochs 2 -> 1." in err and not (tmp_path / "b").exists(), err
    rc, err = render_main(capsys, "--set", f"train.out={out}", "--resume", "--out", str(tmp_path / "b"))
    assert rc == 0 and "error:" not in err, err


def test_an_unreadable_output_is_no_check_said_once(s3_env, capsys, monkeypatch):
    rc, err = render_main(capsys, "--set", "train.out=s3://no-such-bucket-x/run")
    assert rc == 0 and err.count("note: cannot read the run output s3://no-such-bucket-x/run (no such bucket") == 1, err
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    rc, err = render_main(capsys, "--set", "train.out=s3://b/run")
    assert rc == 0 and err.count("note:") == 1 and "(no AWS credentials for s3://b/run" in err, err
