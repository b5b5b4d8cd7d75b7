"""Run identity, launcher side (issue 19): every job renders its run id (<name>-<12 hex of its config
hash>, pure), --resume only when asked, and a profile's default output follows the job's name."""
from __future__ import annotations

import argparse

import pytest
import yaml

from launcher.cli_render import add_job_arguments, plan_from_args
from launcher.config import load_job_config
from launcher.run_identity import config_sha256, run_id


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


def test_run_id_is_the_name_and_the_config_hash_and_pure():
    a, b = load_job_config("criteo-fl15"), load_job_config("criteo-fl15")
    assert run_id(a) == run_id(b) == f"dlrm-criteo-fl15-{config_sha256(a)[:12]}"
    assert run_id(load_job_config("criteo-fl15", overrides=["train.epochs=2"])) != run_id(a)  # another run
    assert run_id(load_job_config("criteo-fl15", overrides={"name": "exp-b"})).startswith("exp-b-")


def test_the_job_renders_its_run_id_and_no_resume():
    annotations, command, train = rendered()
    assert arg(command, "run_id") == f"dlrm-criteo-fl15-{annotations['dlrm-k8s.io/config-sha256'][:12]}"
    assert "--resume" not in command and train["resume"] is False and train["run_id"] == ""


def test_resume_is_passed_only_when_asked():
    _, plain, _ = rendered()
    _, command, train = rendered("--resume")
    assert "--resume" in command and train["resume"] is True
    assert arg(command, "run_id") != arg(plain, "run_id")  # the config differs: so does its run


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
        sha = job["metadata"]["annotations"]["dlrm-k8s.io/config-sha256"]
        assert run_id_of_job(job) == f"dlrm-criteo-fl15-{sha[:12]}", api
    assert run_id_of_job({"spec": {"x": ["--set", "out=/o"]}}) == ""
