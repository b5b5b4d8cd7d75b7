"""run-local's job lifecycle and the --local commands (issues 19 and 20): a rerun is new pods, a running
job is not started twice, `cancel --local` stops replicas as the kubelet would (SIGTERM, the grace
period, SIGKILL) even when run-local itself was killed, `list --local`, a failed job's error line in
`status --local`, a TrainJob's logs, and status never showing another run's numbers as this job's."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from dlrm.errors import UserError
from launcher.__main__ import main
from launcher.local_jobs import LocalJobRecord, error_line
from launcher.run_local import K8S_GRACE_S, LocalJob, as_plan, run_job, termination_grace_s
from test_run_local import records, tiny_job

# Prints "ready", then waits; with IGNORE_TERM it ignores SIGTERM (a trainer still checkpointing).
WAITER = r"""
import os, signal, sys, time
if os.environ.get("IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", os.environ["RANK"], flush=True)
if os.environ.get("FAIL_RANK") == os.environ["RANK"]:
    print("step 3 | loss 0.5", flush=True)
    print("error: train.yaml: data.batch_size=0: expected an integer >= 1", file=sys.stderr, flush=True)
    sys.exit(2)
time.sleep(600)
"""


def waiter_job(name="tiny", env=None, grace=None) -> list[dict]:
    objs = copy.deepcopy(tiny_job(nodes=2, backoff=0))
    objs[1]["metadata"]["name"] = name
    for spec in objs[1]["spec"]["pytorchReplicaSpecs"].values():
        pod = spec["template"]["spec"]
        pod["initContainers"] = []
        c = pod["containers"][0]
        c["command"], c["args"] = ["python", "-c", WAITER], ["--set", "out=/output/run"]
        c["env"] = [{"name": k, "value": v} for k, v in (env or {}).items()]
        if grace is not None:
            pod["terminationGracePeriodSeconds"] = grace
    return objs


def wait_for(predicate, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def started(wd: Path, n: int = 2) -> bool:
    logs = list((wd / "logs").glob("*.log")) if (wd / "logs").is_dir() else []
    return sum("ready" in p.read_text() for p in logs) >= n


def run_local_process(tmp_path: Path, objs: list[dict], wd: Path) -> subprocess.Popen:
    rendered = tmp_path / "job.yaml"
    rendered.write_text(yaml.safe_dump_all(objs))
    return subprocess.Popen([sys.executable, "-m", "launcher", "run-local", str(rendered), "--workdir", str(wd)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state == "Z"
    except OSError:
        return True


def test_a_rerun_is_new_pods(tmp_path):
    wd = tmp_path / "wd"
    assert run_job(tiny_job(nodes=2, backoff=0), wd, out=io.StringIO()) == 0
    (wd / "pods" / "master-0" / "scratch" / "left-by-the-first-run").write_text("x")
    out = io.StringIO()
    assert run_job(tiny_job(nodes=2, backoff=0), wd, out=out) == 0
    assert not (wd / "pods" / "master-0" / "scratch" / "left-by-the-first-run").exists()
    assert (wd / "logs" / "master-0.log").read_text().count("hello from rank 0") == 1  # not the first run's too
    assert "emptyDirs and logs of the job's previous run" in out.getvalue()
    assert sorted(records(wd)) == ["rank-0", "rank-1"]  # a claim (a shared folder) is kept, as on Kubernetes


def test_a_job_still_running_in_its_workdir_is_not_started_again(tmp_path):
    wd = tmp_path / "wd"
    job = LocalJob(waiter_job(), wd, out=io.StringIO(), grace_s=1)
    runner = threading.Thread(target=job.run)
    runner.start()
    try:
        wait_for(lambda: started(wd), "the replicas")
        with pytest.raises(UserError, match=r"run-local job tiny is still running in .*cancel tiny --local"):
            LocalJob(waiter_job(), wd, out=io.StringIO()).run()
        assert started(wd)  # the running job's logs and folders were left alone
    finally:
        job.stop()
        runner.join(30)
    assert json.loads((wd / "job.json").read_text())["state"] == "Cancelled"


def test_the_grace_period_is_the_pods_else_kubernetes_default():
    assert termination_grace_s(as_plan(waiter_job(grace=7))) == 7.0
    assert termination_grace_s(as_plan(waiter_job())) == K8S_GRACE_S == 30


def test_cancel_local_sends_sigterm_then_sigkill_after_the_grace_period(tmp_path, capsys):
    wd = tmp_path / "wd"
    proc = run_local_process(tmp_path, waiter_job(env={"IGNORE_TERM": "1"}, grace=2), wd)
    try:
        wait_for(lambda: started(wd), "the replicas")
        pids = [pid for pid, _ in json.loads((wd / "job.json").read_text())["replica_pids"].values()]
        t0 = time.monotonic()
        assert main(["cancel", "tiny", "--local", "--workdir", str(wd)]) == 0
        took = time.monotonic() - t0
        assert "run-local job tiny: cancelled" in capsys.readouterr().out
        assert 2 <= took < 15, took  # they ignored SIGTERM: killed after the pods' 2 s, not at once, not never
        assert proc.wait(10) == 130 and all(gone(p) for p in pids)
        record = json.loads((wd / "job.json").read_text())
        assert record["state"] == "Cancelled" and record["grace_s"] == 2
    finally:
        proc.kill()


def test_cancel_local_stops_the_replicas_of_a_killed_run_local(tmp_path, capsys):
    wd = tmp_path / "wd"
    proc = run_local_process(tmp_path, waiter_job(grace=2), wd)
    try:
        wait_for(lambda: started(wd), "the replicas")
        pids = [pid for pid, _ in json.loads((wd / "job.json").read_text())["replica_pids"].values()]
        proc.kill()  # run-local dies; its replicas (own sessions, as pods are) keep running
        proc.wait(10)
        assert not any(gone(p) for p in pids)
        with pytest.raises(UserError, match="still running .*replicas master-0, worker-0"):
            LocalJob(waiter_job(), wd, out=io.StringIO()).run()  # a rerun would share their folders and ports
        assert main(["cancel", "tiny", "--local", "--workdir", str(wd)]) == 0
        assert "stopped its leftover replicas master-0, worker-0" in capsys.readouterr().out
        wait_for(lambda: all(gone(p) for p in pids), "the replicas to be gone", timeout=10)
    finally:
        for pid in pids if "pids" in locals() else []:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_list_local_shows_name_state_step_started(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["list", "--local"]) == 0
    assert "no run-local jobs in runs/local/" in capsys.readouterr().out
    for name in ("first", "second"):
        objs = tiny_job(nodes=1, backoff=0)
        objs[1]["metadata"]["name"] = name
        assert run_job(objs, Path("runs/local") / name, out=io.StringIO()) == 0
    Path("runs/local/second/volumes/runs/run").mkdir(parents=True, exist_ok=True)
    Path("runs/local/second/volumes/runs/run/metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 1234}) + "\n")
    assert main(["list", "--local"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "STATE", "STEP", "STARTED"]
    assert [line.split()[:3] for line in lines[1:]] == [["first", "Succeeded", "-"], ["second", "Succeeded", "1,234"]]
    assert all(line.endswith(" ago") for line in lines[1:])


def test_a_failed_jobs_status_shows_the_failing_replicas_error_line_and_exit_code(tmp_path, capsys):
    wd = tmp_path / "wd"
    assert run_job(waiter_job(env={"FAIL_RANK": "1"}, grace=1), wd, out=io.StringIO()) == 2
    assert main(["status", "tiny", "--local", "--workdir", str(wd)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("run-local job tiny: Failed")
    assert ("  worker-0 (container pytorch) exited with code 2: error: train.yaml: data.batch_size=0: expected an "
            "integer >= 1 (log: ") in out


def test_the_error_line_is_found_behind_a_rank_prefix(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("[rank1]:error: the first\nTraceback (most recent call last):\n[rank1]: error: the second\ntorchrun: failed\n")
    assert error_line(log) == "error: the second"
    log.write_text("nothing wrong here\n")
    assert error_line(log) is None and error_line(tmp_path / "missing.log") is None


def test_logs_local_finds_a_trainjobs_nodes(tmp_path, capsys):
    wd = tmp_path / "wd"
    LocalJobRecord(wd, "tj").update(state="Succeeded", pid=1, replicas=["node-0-0", "node-0-1"])
    for i in (0, 1):
        (wd / "logs").mkdir(exist_ok=True)
        (wd / "logs" / f"node-0-{i}.log").write_text(f"log of node {i}\n")
    for flags, text in ((["--node", "1"], "log of node 1"), (["--replica", "worker", "--index", "0"], "log of node 1"), ([], "log of node 0")):
        assert main(["logs", "tj", "--local", "--workdir", str(wd), *flags]) == 0
        assert capsys.readouterr().out == text + "\n"
    assert main(["logs", "tj", "--local", "--workdir", str(wd), "--node", "2"]) == 2
    assert "has 2 node(s) (node-0-0, node-0-1): no node rank 2" in capsys.readouterr().err


def test_status_local_never_shows_another_runs_numbers_as_this_jobs(tmp_path, capsys):
    wd, out = tmp_path / "wd", tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"run_id": "dlrm-smoke-aaaaaaaaaaaa"}))
    (out / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 900, "loss": 0.4}) + "\n")
    record = LocalJobRecord(wd, "dlrm-smoke")
    record.update(state="Failed", pid=1, out=str(out), run_id="dlrm-smoke-bbbbbbbbbbbb")
    main(["status", "dlrm-smoke", "--local", "--workdir", str(wd)])
    text = capsys.readouterr().out
    assert "holds another run (dlrm-smoke-aaaaaaaaaaaa); this job's run (dlrm-smoke-bbbbbbbbbbbb) has not written there" in text
    assert "step 900" not in text
    record.update(run_id="dlrm-smoke-aaaaaaaaaaaa")  # its own run: the numbers are the job's
    main(["status", "dlrm-smoke", "--local", "--workdir", str(wd)])
    assert "  step 900 | epoch 1 | loss 0.40000" in capsys.readouterr().out


@pytest.mark.parametrize("text", ["[1, 2]\n", "{\"state\": \"Running\"}\n", "not json\n", "\xff\xfe"])
def test_a_record_that_is_not_one_is_a_user_error(tmp_path, text):
    (tmp_path / "job.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(UserError, match=r"job\.json: not a run-local job record"):
        LocalJobRecord.read("x", tmp_path)


def _trainer_missing() -> str:
    import importlib.util

    return "" if importlib.util.find_spec("dlrm.training.train") else "needs the trainer"


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.skipif(bool(_trainer_missing()), reason=_trainer_missing() or "-")
@pytest.mark.parametrize("layout", ["emptyDir", "claim"])
def test_a_two_node_job_killed_and_rerun_under_the_same_name_finishes(tmp_path, capsys, layout):
    """Issue 19's fault: 2 nodes x 1 process of the real trainer, killed (kill -9, every process) after its
    first checkpoint, then run again with the same flags. Per-pod output (emptyDir; allowed without
    restarts) starts again in new pods; a shared claim holds the run for every node. Neither waits out a
    collective timeout: the rerun finishes well inside it."""
    from dlrm.__main__ import main as dlrm_main
    from launcher.cli_render import add_job_arguments, plan_from_args

    data = tmp_path / "data"
    # 6000 rows: 12 steps an epoch on 2 ranks; the kill lands after step 5 with ~30 steps to go
    assert dlrm_main(["synth", "--out", str(data), "--rows", "6000", "--tables", "small", "--seed", "1"]) == 0
    flags = ["--profile", "synthetic-smoke", "--nodes", "2", "--gpus", "1", "--set", f"dataset={data}",
             "--set", "train.max_steps=0", "--set", "train.epochs=3", "--set", "train.checkpoint_every=5",
             "--set", "train.dist.collective_timeout_s=120"]
    if layout == "claim":
        flags += ["--set", "storage.output_claim=runs", "--set", "cluster.backoff_limit=1"]
    wd = tmp_path / "wd"
    run_dir = wd / ("pods/master-0/output" if layout == "emptyDir" else "volumes/runs/runs/dlrm-smoke")
    import argparse

    parser = argparse.ArgumentParser()
    add_job_arguments(parser)
    job = LocalJob(plan_from_args(parser.parse_args(flags)), wd, out=io.StringIO(), grace_s=1, max_restarts=0)
    runner = threading.Thread(target=job.run)
    runner.start()
    try:
        wait_for(lambda: list(run_dir.glob("checkpoints/ckpt-*/metadata.json")) or not runner.is_alive(),
                 "the first checkpoint", timeout=300)
        assert runner.is_alive(), job.out.getvalue()[-3000:]
        for pid in [p for tree in job.pids().values() for p in tree]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        runner.join(60)
    finally:
        job.stop()
        runner.join(60)
    t0 = time.monotonic()
    rc = main(["run-local", *flags, "--workdir", str(wd), "--grace", "1"])
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    assert time.monotonic() - t0 < 110  # below the collective timeout: no rank waited on another
    assert "final AUC" in out
    summary = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert summary[-1]["kind"] == "summary"
