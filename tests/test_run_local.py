"""run-local: tiny PyTorchJobs whose container runs a short python script (not the trainer) check
the injected env, volume folders, mountPath rewriting, init containers, restarts and stopping;
the last test runs a rendered synthetic-smoke job (2 nodes x 2 processes) with the real trainer."""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from dlrm.errors import UserError
from launcher.__main__ import main
from launcher.run_local import LocalJob, process_tree, run_job

# Records what the container saw, then behaves as FAIL_MODE says (per rank, via marker files in /output).
SCRIPT = r"""
import json, os, pathlib, sys, time
out = pathlib.Path(os.environ["OUT"])
rank = os.environ["RANK"]
record = {"env": dict(os.environ), "argv": sys.argv[1:], "cwd": os.getcwd(),
          "config": pathlib.Path(sys.argv[1].split("=", 1)[1]).read_text(),
          "init": (pathlib.Path(os.environ["SCRATCH"]) / "init-ran").read_text()}
print("hello from rank", rank, flush=True)  # before the record: a written record means a printed hello
(out / f".rank-{rank}.tmp").write_text(json.dumps(record))
os.replace(out / f".rank-{rank}.tmp", out / f"rank-{rank}.json")  # whole: the test polls for it
mode = os.environ.get("FAIL_MODE", "")
if mode == "once" and rank == "1" and not (out / "failed-once").exists():
    while not (out / "rank-0.json").exists():  # fail only once the master is up: it must be restarted too
        time.sleep(0.02)
    (out / "failed-once").write_text("x"); sys.exit(3)
if mode == "always" and rank == "1":
    sys.exit(int(os.environ.get("FAIL_CODE", "3")))
if mode == "wait":
    while not (out / "go").exists():
        time.sleep(0.05)
"""
INIT = "import os, pathlib; pathlib.Path(os.environ['SCRATCH'], 'init-ran').write_text('yes ' + os.environ.get('RANK', 'no-rank'))"


def tiny_job(nodes=2, nproc="2", policy="OnFailure", backoff=2, env=None, deadline=None) -> list[dict]:
    container_env = [{"name": "OUT", "value": "/output"}, {"name": "SCRATCH", "value": "/scratch"},
                     {"name": "UNTOUCHED", "value": "/outputs/x:/not/output"},
                     {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    container_env += [{"name": k, "value": v} for k, v in (env or {}).items()]
    template = {"spec": {
        "initContainers": [{"name": "prepare", "image": "x", "command": ["python", "-c", INIT],
                            "env": [{"name": "SCRATCH", "value": "/scratch"}],
                            "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}],
        "containers": [{"name": "pytorch", "image": "x", "command": ["python", "-c", SCRIPT],
                        "args": ["--config=/etc/dlrm/train.yaml", "--set", "out=/output/run", "--node=$(RANK)", "$$(RANK)"],
                        "env": container_env,
                        "volumeMounts": [{"name": "config", "mountPath": "/etc/dlrm", "readOnly": True},
                                         {"name": "output", "mountPath": "/output"},
                                         {"name": "scratch", "mountPath": "/scratch"}]}],
        "volumes": [{"name": "config", "configMap": {"name": "tiny-config"}},
                    {"name": "output", "persistentVolumeClaim": {"claimName": "runs"}},
                    {"name": "scratch", "emptyDir": {}}]}}
    specs = {"Master": {"replicas": 1, "restartPolicy": policy, "template": template}}
    if nodes > 1:
        specs["Worker"] = {"replicas": nodes - 1, "restartPolicy": policy, "template": template}
    run_policy = {"backoffLimit": backoff, **({"activeDeadlineSeconds": deadline} if deadline else {})}
    return [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "tiny-config"}, "data": {"train.yaml": "seed: 3\n"}},
            {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "tiny"},
             "spec": {"nprocPerNode": nproc, "runPolicy": run_policy, "pytorchReplicaSpecs": specs}}]


def records(workdir: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (workdir / "volumes" / "runs").glob("rank-*.json")}


def test_replicas_get_the_operators_env_and_local_volumes(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "99")  # an inherited rank must not leak into the replicas
    out = io.StringIO()
    assert run_job(tiny_job(nodes=3), tmp_path, out=out) == 0
    seen = records(tmp_path)
    assert sorted(seen) == ["rank-0", "rank-1", "rank-2"]
    ports = {r["env"]["MASTER_PORT"] for r in seen.values()}
    assert len(ports) == 1 and {r["env"]["PET_MASTER_PORT"] for r in seen.values()} == ports
    for rank, (_, r) in enumerate(sorted(seen.items())):
        env = r["env"]
        assert env["RANK"] == env["PET_NODE_RANK"] == str(rank)
        assert (env["WORLD_SIZE"], env["PET_NNODES"], env["PET_NPROC_PER_NODE"]) == ("6", "3", "2")
        assert env["MASTER_ADDR"] == env["PET_MASTER_ADDR"] == "127.0.0.1" and env["CUDA_VISIBLE_DEVICES"] == ""
        assert env["OUT"] == str(tmp_path / "volumes" / "runs")  # a mountPath in env, rewritten
        assert env["UNTOUCHED"] == "/outputs/x:/not/output"  # not a mountPath prefix: left alone
        assert env["POD"] == f"tiny-{['master-0', 'worker-0', 'worker-1'][rank]}"
        replica = ["master-0", "worker-0", "worker-1"][rank]
        scratch = tmp_path / "pods" / replica / "scratch"  # emptyDir: one per replica
        assert env["SCRATCH"] == str(scratch) and r["init"] == "yes no-rank"  # init ran first, without the operator env
        assert r["argv"] == [f"--config={tmp_path}/configmaps/tiny-config/train.yaml", "--set",
                             f"out={tmp_path}/volumes/runs/run", f"--node={rank}", "$(RANK)"]
        assert r["config"] == "seed: 3\n"  # the ConfigMap's data, written out
    text = out.getvalue()
    assert "[master-0] hello from rank 0" in text and "[worker-1] hello from rank 2" in text
    assert (tmp_path / "logs" / "worker-0.log").read_text().startswith("hello from rank 1")


def test_a_failed_replica_restarts_the_whole_job(tmp_path):
    out = io.StringIO()
    job = LocalJob(tiny_job(env={"FAIL_MODE": "once"}), tmp_path, out=out)
    assert job.run() == 0
    assert job.restarts == 1 and job.failures == [("worker-0", "pytorch", 3)]
    assert "worker-0 (container pytorch) exited with code 3: restarting the whole job (1 of 2)" in out.getvalue()
    assert out.getvalue().count("[master-0] hello from rank 0") == 2  # the healthy master ran again too


def test_exceeding_the_backoff_limit_fails_with_the_exit_code(tmp_path):
    out = io.StringIO()
    job = LocalJob(tiny_job(env={"FAIL_MODE": "always"}, backoff=2), tmp_path, out=out)
    assert job.run() == 3
    assert job.restarts == 2 and len(job.failures) == 3
    assert "all 2 restart(s) allowed (runPolicy.backoffLimit or --max-restarts) are used up" in out.getvalue()
    assert LocalJob(tiny_job(env={"FAIL_MODE": "always"}, backoff=2), tmp_path / "b", out=io.StringIO(), max_restarts=0).run() == 3


@pytest.mark.parametrize("policy, code, restarts", [("Never", 3, 0), ("ExitCode", 1, 0), ("ExitCode", 143, 1)])
def test_restart_policy_decides_what_is_retried(tmp_path, policy, code, restarts):
    out = io.StringIO()
    job = LocalJob(tiny_job(policy=policy, env={"FAIL_MODE": "always", "FAIL_CODE": str(code)}, backoff=1), tmp_path, out=out)
    assert job.run() == code and job.restarts == restarts
    if not restarts:
        assert f"restartPolicy {policy} does not restart it" in out.getvalue()


def test_killing_a_replica_through_the_pid_hook_restarts_and_leaves_no_process(tmp_path):
    job = LocalJob(tiny_job(env={"FAIL_MODE": "wait"}), tmp_path, out=io.StringIO(), grace_s=1)
    result = {}
    runner = threading.Thread(target=lambda: result.setdefault("rc", job.run()))
    runner.start()
    deadline = time.monotonic() + 60
    while len(records(tmp_path)) < 2:  # both replicas in their main container, not in the init one
        assert time.monotonic() < deadline, "replicas did not start"
        time.sleep(0.05)
    first = job.pids()
    assert set(first) == {"master-0", "worker-0"} and all(pids for pids in first.values())
    (tmp_path / "volumes" / "runs" / "go").write_text("")  # the next attempt finishes at once
    os.kill(first["worker-0"][0], signal.SIGKILL)
    runner.join(60)
    assert result["rc"] == 0 and job.failures == [("worker-0", "pytorch", 137)] and job.restarts == 1
    assert not any(Path(f"/proc/{p}").exists() for p in first["master-0"])  # the waiting master was killed, not orphaned


def test_stop_ends_the_run_and_its_processes(tmp_path):
    job = LocalJob(tiny_job(env={"FAIL_MODE": "wait"}), tmp_path, out=io.StringIO(), grace_s=1)
    result = {}
    runner = threading.Thread(target=lambda: result.setdefault("rc", job.run()))
    runner.start()
    while len(records(tmp_path)) < 2:
        time.sleep(0.05)
    pids = [p for tree in job.pids().values() for p in tree]
    job.stop()
    runner.join(30)
    assert result["rc"] == 130 and not any(Path(f"/proc/{p}").exists() for p in pids)
    last = job.out.getvalue().splitlines()[-1]  # one line, no error: (Ctrl-C, `cancel --local`)
    assert last == "[run-local] job tiny cancelled; its replicas have stopped (exit status 130)", last


def test_torchruns_traceback_for_the_stop_goes_to_the_log_only(tmp_path):
    """A stopped job's console: torchrun's SignalException traceback is the stop itself (it stays in
    the replica's log); any other traceback is shown whole."""
    def traceback(last):
        return ["Traceback (most recent call last):", '  File "run.py", line 1, in <module>', "    main()", last]

    signal_tb = traceback("torch.distributed.elastic.multiprocessing.api.SignalException: Process 7 got signal: 15")
    other_tb = traceback("ValueError: boom")
    lines = ["stopped by SIGTERM at step 5", *signal_tb, *other_tb, "after"]
    job = LocalJob(tiny_job(), tmp_path, out=io.StringIO())
    job.stop()
    job._pump(SimpleNamespace(stdout=[(line + "\n").encode() for line in lines]), "[m]", tmp_path / "m.log")
    assert job.out.getvalue().splitlines() == [f"[m] {line}" for line in ["stopped by SIGTERM at step 5", *other_tb, "after"]]
    assert (tmp_path / "m.log").read_text().splitlines() == lines


def test_active_deadline_fails_the_job(tmp_path):
    out = io.StringIO()
    assert run_job(tiny_job(env={"FAIL_MODE": "wait"}, deadline=1), tmp_path, out=out, grace_s=1) == 1
    assert "exceeded runPolicy.activeDeadlineSeconds=1" in out.getvalue()


def test_process_tree_includes_grandchildren():
    import subprocess

    proc = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; subprocess.run([sys.executable, '-c', 'import time; time.sleep(30)'])"],
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while len(process_tree(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process_tree(proc.pid)[0] == proc.pid and len(process_tree(proc.pid)) == 2
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_bad_inputs_are_user_errors(tmp_path):
    objs = tiny_job()
    with pytest.raises(UserError, match="ConfigMap tiny-config is not among the rendered objects"):
        run_job(objs[1:], tmp_path, out=io.StringIO())
    with pytest.raises(UserError, match="the pods have no such volume"):
        LocalJob(objs, tmp_path, volumes={"nope": tmp_path})
    with pytest.raises(UserError, match="exactly one PyTorchJob"):
        LocalJob(objs[:1], tmp_path)


def test_cli_runs_a_rendered_file_with_a_mapped_volume(tmp_path, capsys):
    """run-local FILE, and the folder `render --out` writes (its NN-<kind>-<name>.yaml files) as well."""
    from launcher.cli_render import write_rendered

    rendered = tmp_path / "job.yaml"
    rendered.write_text(yaml.safe_dump_all(tiny_job(nodes=1)))
    write_rendered(tiny_job(nodes=1), tmp_path / "rendered")
    mine = tmp_path / "my-output"
    mine.mkdir()
    rc = main(["run-local", str(tmp_path / "rendered"), "--workdir", str(tmp_path / "wd"), "--volume", f"output={mine}"])
    assert rc == 0 and (mine / "rank-0.json").is_file()
    assert "[master-0] hello from rank 0" in capsys.readouterr().out
    assert main(["run-local", str(rendered), "--nodes", "2"]) == 2
    assert "already rendered: drop --nodes" in capsys.readouterr().err
    assert main(["run-local", str(rendered), "--volume", "output"]) == 2
    assert "expected NAME=DIR" in capsys.readouterr().err


def _trainer_missing() -> str:
    import importlib.util

    missing = [m for m in ("dlrm.training.train", "dlrm.dist.parallel", "dlrm.data.synth", "launcher.render", "launcher.cli_render")
               if importlib.util.find_spec(m) is None]
    return f"needs {', '.join(missing)} (not landed yet)" if missing else ""


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.skipif(bool(_trainer_missing()), reason=_trainer_missing() or "-")
# A TrainJob's 2-node run is tests/test_admin.py's: on the admin bundle's runtime, staging from S3.
@pytest.mark.parametrize("api, master, worker", [("pytorchjob", "master-0", "worker-0")])
def test_rendered_synthetic_smoke_trains_on_two_nodes(tmp_path, capsys, monkeypatch, api, master, worker):
    """The manifest `submit` would send, run as 2 nodes x 2 processes of the real trainer (gloo, CPU): a PyTorchJob."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # a pod's environment: the worker's log is torchrun's warning
    from dlrm.__main__ import main as dlrm_main

    data = tmp_path / "data"
    assert dlrm_main(["synth", "--out", str(data), "--rows", "20000", "--tables", "small", "--seed", "1"]) == 0
    rc = main(["run-local", "--profile", "synthetic-smoke", "--nodes", "2", "--gpus", "2", "--workdir", str(tmp_path / "wd"),
               "--api", api, "--set", f"dataset={data}", "--set", "train.max_steps=20", "--set", "train.checkpoint_every=10"])
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    assert "2 node(s) x 2 process(es)" in out and f"[{master}]" in out and f"[{worker}]" in out
    run_dir = tmp_path / "wd" / "pods" / master / "output"  # the /output emptyDir of the node-rank-0 pod
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics and "final AUC" in out
    # `logs --local` finds either API's replicas by node rank (a TrainJob's are node-0-N, not worker-N)
    assert main(["logs", "dlrm-smoke", "--local", "--workdir", str(tmp_path / "wd"), "--node", "1"]) == 0
    assert capsys.readouterr().out == (tmp_path / "wd" / "logs" / f"{worker}.log").read_text() != ""


def _s3_json_lines(bucket: str, key: str) -> list[dict]:
    import boto3

    try:
        body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    except boto3.client("s3").exceptions.NoSuchKey:
        return []
    return [json.loads(line) for line in body.splitlines()]  # strict: every line whole, no bare NaN


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.skipif(bool(_trainer_missing()), reason=_trainer_missing() or "-")
def test_s3_run_output_logs_follow_kill_status_and_results(tmp_path, capsys, s3_bucket, s3_endpoint):
    """A 2-node run-local job with train.out=s3://... (moto): `logs -f` shows its progress lines while it
    trains; killed mid-run, the metrics it logged are on S3; a job that finishes leaves config,
    metrics, plot, TensorBoard events and run record there, which `status` shows and `results` fetches."""
    import subprocess

    from dlrm.__main__ import main as dlrm_main
    from launcher.config import load_job_config
    from launcher.render import render_objects

    data = tmp_path / "data"
    assert dlrm_main(["synth", "--out", str(data), "--rows", "20000", "--tables", "small", "--seed", "1"]) == 0
    sets = [f"dataset={data}", f"s3.endpoint_url={s3_endpoint}", "nodes=2", "gpus_per_node=1", "cluster.backoff_limit=0"]

    # 1) a long job, uploading at every progress line, followed with `logs -f`, then killed
    killed = f"s3://{s3_bucket}/runs/killed"
    objs = render_objects(load_job_config("synthetic-smoke", overrides=[*sets, f"train.out={killed}", "train.epochs=1000",
                                                                        "train.max_steps=0", "train.sync_every_s=0"]))
    wd = tmp_path / "wd-killed"
    job = LocalJob(objs, wd, out=io.StringIO(), grace_s=1)
    runner = threading.Thread(target=job.run)
    runner.start()
    follow, seen = None, []
    try:
        deadline = time.monotonic() + 120
        while not (wd / "logs" / "master-0.log").exists():
            assert time.monotonic() < deadline and runner.is_alive(), job.out.getvalue()[-3000:]
            time.sleep(0.1)
        follow = subprocess.Popen([sys.executable, "-m", "launcher", "logs", "dlrm-smoke", "--local", "--workdir", str(wd), "-f"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        def read():
            for line in follow.stdout:
                seen.append((line.rstrip("\n"), runner.is_alive()))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        while len([r for r in _s3_json_lines(s3_bucket, "runs/killed/metrics.jsonl") if r["kind"] == "train"]) < 2:
            assert time.monotonic() < deadline and runner.is_alive(), job.out.getvalue()[-3000:]
            time.sleep(0.2)
        logged = _s3_json_lines(s3_bucket, "runs/killed/metrics.jsonl")
        for pid in [p for tree in job.pids().values() for p in tree]:  # the pods die: no chance to upload anything
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        runner.join(60)
        assert not runner.is_alive()
        assert follow.wait(30) == 0  # -f ends with the job
        reader.join(10)
    finally:
        job.stop()
        runner.join(60)
        if follow and follow.poll() is None:
            follow.kill()
    progress = [line for line, alive in seen if line.startswith("step ") and alive]
    assert progress and "/" in progress[0] and "samples/s" in progress[0] and "ETA" in progress[0], seen[-20:]
    kept = _s3_json_lines(s3_bucket, "runs/killed/metrics.jsonl")
    assert kept[:len(logged)] == logged and not [r for r in kept if r["kind"] == "summary"]
    assert json.loads((wd / "job.json").read_text())["state"] == "Failed"

    # 2) a job that finishes
    done = f"s3://{s3_bucket}/runs/done"
    wd = tmp_path / "wd-done"
    rc = main(["run-local", "--profile", "synthetic-smoke", "--workdir", str(wd), *[a for s in sets for a in ("--set", s)],
               "--set", f"train.out={done}", "--set", "train.max_steps=30", "--set", "train.eval_every=10",
               "--set", "train.checkpoint_every=10", "--set", "train.plot=true"])
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    assert "[master-0] step 10/30" in out and "[master-0] eval at step 30/30 | AUC" in out
    import boto3

    keys = {o["Key"][len("runs/done/"):] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket, Prefix="runs/done/")["Contents"]}
    assert {"config.yaml", "run.json", "metrics.jsonl", "metrics.png", "checkpoints/ckpt-000000030/metadata.json"} <= keys
    assert any(k.startswith("tensorboard/events.out.tfevents.") for k in keys)
    record = json.loads(boto3.client("s3").get_object(Bucket=s3_bucket, Key="runs/done/run.json")["Body"].read())
    assert record["job"]["name"] == "dlrm-smoke" and len(record["job"]["config_sha256"]) == 64 and record["world_size"] == 2
    assert record["job"]["image"].startswith("dlrm-k8s-train:") and record["plan"]["world_size"] == 2

    assert main(["status", "dlrm-smoke", "--local", "--workdir", str(wd)]) == 0
    status = capsys.readouterr().out
    assert status.startswith("run-local job dlrm-smoke: Succeeded") and f"run output {done}:" in status
    assert "  step 30/30 (100.0%) | epoch 1 |" in status and "  eval at step 30: AUC 0." in status
    assert "  finished at step 30: AUC 0." in status
    assert main(["results", "dlrm-smoke", "--local", "--workdir", str(wd), "--out", str(tmp_path / "results")]) == 0
    fetched = tmp_path / "results"
    assert all((fetched / f).is_file() for f in ("config.yaml", "run.json", "metrics.jsonl", "metrics.png"))
    assert list((fetched / "tensorboard").glob("events.out.tfevents.*")) and not (fetched / "checkpoints").exists()
