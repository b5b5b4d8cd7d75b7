"""A run's life (issue 19): whose folder it is, SIGTERM, divergence, and what reaches the output as it goes.

- a new run into a folder holding another run is refused naming it, and the other run's
  checkpoints stay as they were; --resume, or the same run_id (a restarted job), continues it;
- SIGTERM mid-run: a checkpoint at the agreed step, exit 143, the lock released, and --resume ends
  with the weights of an uninterrupted run (one process here, two under torchrun in the dist test);
- a diverging run stops non-zero naming the steps and what to change, with no checkpoint after it;
- out=s3:// killed with SIGKILL: metrics up to the last sync are on S3; a resumed run cuts a
  half-written metrics line instead of gluing onto it; a metrics write that fails names the file.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import faulty_trainer
import pytest
import torch
from datasets import make_dataset
from faults_common import wait_for_line

from dlrm.config import TrainConfig, load_config
from dlrm.errors import UserError
from dlrm.io.storage import open_store
from dlrm.io.checkpoint import complete_checkpoints, whole_tables
from dlrm.training.lifecycle import PREEMPTED_EXIT, Diverged
from dlrm.training.runlock import LOCK
from dlrm.training.runlog import METRICS, RunLog, read_metrics
from dlrm.training.train import BUILTIN_CONFIGS, train

ROOT = Path(__file__).resolve().parents[1]
# 16 steps of 128 rows over 2048 rows (one epoch), every step a check-in (log_every=1)
SETS = ["max_steps=16", "log_every=1", "data.batch_size=128", "checkpoint_keep=0", "optim.schedule_check=warn"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ds")
    make_dataset(root, rows=2048, test_rows=512)
    return root


def config(dataset, out, *sets) -> TrainConfig:
    return load_config(TrainConfig, files=[BUILTIN_CONFIGS / "tiny.yaml"],
                       overrides=[f"data.dataset={dataset}", f"out={out}", *SETS, *sets])


def quiet_train(cfg: TrainConfig) -> dict:
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return train(cfg)


def trainer(dataset, out, *sets, env=None) -> subprocess.Popen:
    argv = [sys.executable, faulty_trainer.SCRIPT, "train", "--config", "tiny", "--dataset", str(dataset), "--out", str(out),
            *[a for s in [*SETS, *sets] for a in ("--set", s)]]
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "", **(env or {})})


def stamps(ckpts: Path) -> dict[str, int]:
    return {str(p.relative_to(ckpts)): p.stat().st_mtime_ns for p in sorted(ckpts.rglob("*")) if p.is_file()}


# -- run identity ------------------------------------------------------------------------------------------


def test_another_runs_folder_is_refused_and_kept_unless_resumed_or_the_same_run(tmp_path, dataset):
    out = tmp_path / "run"
    quiet_train(config(dataset, out, "max_steps=4", "checkpoint_every=2", "run_id=job-a-1234"))
    record = json.loads((out / "run.json").read_text())
    assert record["run_id"] == "job-a-1234"
    before = stamps(out / "checkpoints")
    assert sorted({k.split("/")[0] for k in before}) == ["ckpt-000000002", "ckpt-000000004"]

    for run_id in ("", "job-b-5678"):  # a new run, or another job's
        with pytest.raises(UserError) as e:
            quiet_train(config(dataset, out, "max_steps=8", "checkpoint_every=2", f"run_id={run_id}"))
        assert str(e.value) == (f"{out} holds another run (run_id job-a-1234, step 4); pass --resume "
                                f"(--set resume=true) to continue it, or another --out")
        assert stamps(out / "checkpoints") == before and not (out / LOCK).exists()

    # the same job restarted (same run_id, no --resume): continues from step 4
    summary = quiet_train(config(dataset, out, "max_steps=6", "checkpoint_every=2", "run_id=job-a-1234"))
    assert summary["step"] == 6 and complete_checkpoints(open_store(out / "checkpoints"))[-1] == "ckpt-000000006"
    # --resume continues whatever run is there, and records the id it was given
    summary = quiet_train(config(dataset, out, "max_steps=8", "checkpoint_every=2", "resume=true", "run_id=job-c-9"))
    assert summary["step"] == 8 and json.loads((out / "run.json").read_text())["run_id"] == "job-c-9"


def test_an_empty_folder_or_one_with_only_a_dead_runs_lock_is_a_new_run(tmp_path, dataset):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK).write_text(json.dumps({"host": os.uname().nodename, "pid": 2**22 + 1, "pid_start": "1"}))
    summary = quiet_train(config(dataset, out, "max_steps=2"))
    assert summary["step"] == 2 and len(json.loads((out / "run.json").read_text())["run_id"]) == 12


# -- SIGTERM ---------------------------------------------------------------------------------------------


def test_sigterm_checkpoints_the_agreed_step_and_resume_ends_as_uninterrupted(tmp_path, dataset):
    ref = tmp_path / "ref"
    quiet_train(config(dataset, ref))
    out = tmp_path / "run"
    # the process parks 3 s before step 7; SIGTERM lands there, step 7 runs, then the stop
    proc = trainer(dataset, out, env={faulty_trainer.HANG_AT: "7", faulty_trainer.HANG_RANK: "0", faulty_trainer.HANG_S: "3"})
    try:
        wait_for_line(proc, "rank 0 hangs before step 7")
        proc.send_signal(signal.SIGTERM)
        text, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == PREEMPTED_EXIT, text
    ckpts = out / "checkpoints"
    assert complete_checkpoints(open_store(ckpts)) == ["ckpt-000000007"], text
    assert f"stopped by SIGTERM at step 7/16 (exit 143): checkpoint {ckpts}/ckpt-000000007" in text
    assert not (out / LOCK).exists()
    assert [r["step"] for r in read_metrics((out / METRICS).read_text())] == list(range(1, 8))

    resumed = trainer(dataset, out, "resume=true")
    text, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 0 and "resumed from" in text and "step 7, epoch 0, batch 7" in text, text
    tables, dense = whole_tables(str(ckpts))
    ref_tables, ref_dense = whole_tables(str(ref / "checkpoints"))
    for k in ref_tables:
        assert torch.equal(tables[k], ref_tables[k]), k
    for k in ref_dense:
        assert torch.equal(dense[k], ref_dense[k]), k


# -- divergence ------------------------------------------------------------------------------------------


def test_a_diverging_run_stops_naming_the_step_and_writes_no_checkpoint_after_it(tmp_path, dataset):
    out = tmp_path / "run"
    # a check-in every step (checkpoint_every=1): the step that went NaN is named exactly
    with pytest.raises(Diverged) as e:
        quiet_train(config(dataset, out, "optim.lr=1e30", "optim.warmup_steps=0", "checkpoint_every=1", "log_every=100"))
    assert str(e.value) == (f"the training loss became NaN or infinite at step 2 (the run diverged); nothing after "
                            f"step 1 was checkpointed (last checkpoint: {out}/checkpoints/ckpt-000000001); lower "
                            f"optim.lr (now 1e+30), lengthen optim.warmup_steps (now 0), or check the data for extreme values")
    assert complete_checkpoints(open_store(out / "checkpoints")) == ["ckpt-000000001"] and not (out / LOCK).exists()
    tables, dense = whole_tables(str(out / "checkpoints"))
    assert all(torch.isfinite(t).all() for t in [*tables.values(), *dense.values()])
    # checked every 10 steps: the window is named, and nothing is checkpointed at all
    with pytest.raises(Diverged, match=r"between steps 1 and 10 \(the run diverged\); nothing after step 0 was "
                                       r"checkpointed \(last checkpoint: none yet\)"):
        quiet_train(config(dataset, tmp_path / "run2", "optim.lr=1e30", "optim.warmup_steps=0", "log_every=100"))
    assert complete_checkpoints(open_store(tmp_path / "run2" / "checkpoints")) == []


# -- outputs as the run goes -----------------------------------------------------------------------------


def test_s3_metrics_up_to_the_last_sync_survive_sigkill(tmp_path, dataset, s3_bucket):
    uri = f"s3://{s3_bucket}/runs/killed"
    proc = trainer(dataset, uri, "sync_every_s=0", env={faulty_trainer.HANG_AT: "6", faulty_trainer.HANG_RANK: "0"})
    try:
        wait_for_line(proc, "rank 0 hangs before step 6")
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    store = open_store(uri)
    steps = [r["step"] for r in read_metrics(store.get_bytes(METRICS).decode()) if r["kind"] == "train"]
    assert steps == [1, 2, 3, 4, 5]
    assert any(k.startswith("tensorboard/") for k in store.list(""))


def test_a_resumed_run_cuts_a_half_written_metrics_line(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / METRICS).write_text('{"kind": "train", "step": 1, "loss": 0.5}\n{"kind": "train", "st')
    log = RunLog(str(out), enabled=True, total_steps=4, first_step=1, tensorboard=False)
    log.train(step=2, epoch=0, loss=0.4, lr=0.1, samples_per_s=1.0)
    lines = (out / METRICS).read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
    assert f"note: {out / METRICS}: removed a last line cut short (21 bytes" in capsys.readouterr().err


def test_a_metrics_write_that_fails_names_the_file(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    out = tmp_path / "run"
    out.mkdir()
    (out / METRICS).symlink_to("/dev/full")
    log = RunLog(str(out), enabled=True, total_steps=4, tensorboard=False)
    with pytest.raises(OSError) as e:
        log.train(step=1, epoch=0, loss=0.4, lr=0.1, samples_per_s=1.0)
    assert e.value.filename == str(out / METRICS) and "No space left" in e.value.strerror


# -- bounds ----------------------------------------------------------------------------------------------


def test_a_dataset_file_truncated_while_training_reads_it_is_named_not_a_bus_error(tmp_path):
    from dlrm.data.reader import SplitBinaryReader
    from dlrm.data.spec import FeatureSpec
    from dlrm.errors import DataError

    make_dataset(tmp_path / "ds", rows=1024, test_rows=256)
    reader = SplitBinaryReader(FeatureSpec.load(tmp_path / "ds"), "train", 256, prefetch=0)
    maps = reader.open_files()
    reader.read_batch(0, maps=maps)
    victim = reader._cat_chunks[0][0][0].file
    os.truncate(victim, 100)  # a copy restarted over the dataset, mid-epoch
    with pytest.raises(DataError, match=rf"{victim}: truncated while training read it \(100 bytes, expected \d+\)"):
        reader.read_batch(3, maps=maps)


def test_host_memory_is_checked_against_the_nodes_ranks(monkeypatch):
    from dlrm.dist import hostmem
    from dlrm.dist.plan import plan_tables

    plan = plan_tables([1000, 2000], dim=8, world_size=2, device_memory_bytes=1 << 30, batch_size=64, reserve_bytes=0)
    need = plan.rank_bytes(0) + plan.rank_bytes(1)
    hostmem.require_host_memory(plan, range(2), need)  # exactly enough
    with pytest.raises(UserError, match=r"device=cpu: the plan needs .* for rank\(s\) 0\.\.1 on this node .* only 1\.00 KiB"):
        hostmem.require_host_memory(plan, range(2), 1024)
    assert hostmem.host_memory_available() > 0


def test_a_sigterm_the_loop_never_reaches_ends_the_process_after_the_wait():
    """A rank parked in a hung collective never reaches its check-in: the watchdog exits 143 (its
    lock released) instead of holding the pod until SIGKILL; a busy eval or checkpoint is waited for."""
    script = ("import os, signal, time\n"
              "from dlrm.training.lifecycle import StopOnSigterm\n"
              "with StopOnSigterm(wait_s=1) as s:\n"
              "    s.on_abandon.append(lambda: print('released', flush=True))\n"
              "    with s.busy():\n"
              "        os.kill(os.getpid(), signal.SIGTERM)\n"
              "        time.sleep(2)\n"  # busy: not abandoned
              "    print('after busy', flush=True)\n"
              "    time.sleep(30)\n")
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == PREEMPTED_EXIT and time.monotonic() - t0 < 15, done
    assert done.stdout.splitlines() == ["after busy", "released"]
    assert "no training step finished for 1 s (a hung peer or read?): exiting without a checkpoint" in done.stderr


class _Plan:
    def __init__(self, shards):
        self.shards = shards

    def to_dict(self):
        return {"shards": self.shards}


@pytest.mark.parametrize("placed,saved,now,line", [
    # 2 ranks on one node -> 2 nodes of one: the same plan, nothing resharded
    ((2, 2), (2, "A"), (2, 1, "A"), "resuming run r at step 10: resized from 1x2 to 2x1 ranks, checkpoint shards as saved"),
    # run.json recorded another start's placement (a start at 4 ranks that failed before its checkpoint)
    ((4, 4), (2, "A"), (4, 4, "B"), "resuming run r at step 10: resized from 2 to 1x4 ranks, checkpoint resharded; "
                                      "global batch 101 as before, 51 -> 26 a rank"),
    ((2, 1), (2, "A"), (2, 1, "B"), "resuming run r at step 10: 2x1 ranks as before, checkpoint resharded"),
    ((2, 1), (2, "A"), (2, 1, "A"), None),  # a restart where it ran
    (None, (2, "A"), (2, 2, "A"), None),  # run.json from before placements were recorded, the same world size
], ids=["moved", "unknown-before", "replanned", "restarted", "unrecorded"])
def test_a_continued_run_says_how_it_was_resized(placed, saved, now, line):
    from types import SimpleNamespace

    from dlrm.training.lifecycle import RunIdentity, resize_line

    meta = {"step": 10, "world_size": saved[0], "plan": {"shards": saved[1]}}
    runtime = SimpleNamespace(world_size=now[0], local_world_size=now[1])
    assert resize_line(RunIdentity("r", True, placed), meta, _Plan(now[2]), runtime, 101) == line
