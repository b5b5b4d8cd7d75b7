"""Faults around checkpoints and run folders, as real `python -m dlrm train` processes (CPU, tiny):

- a trainer killed (SIGKILL) after a checkpoint, whose newest checkpoint is then damaged: the
  restarted `--resume` takes over the dead process's lock, skips the damaged checkpoint saying
  why, resumes from the previous one and ends with checkpoints that verify;
- two trainers started on one run folder: the second fails at once naming the first (host, pid,
  start time), the first finishes alone (its metrics are not interleaved with another run's).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import faulty_trainer
import pytest
from datasets import make_dataset

from dlrm.io.storage import open_store
from dlrm.io.checkpoint import complete_checkpoints, whole_tables
from dlrm.training.runlock import LOCK

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    make_dataset(root, rows=2048, test_rows=512)
    return root


def trainer(dataset, run, *args, env=None) -> subprocess.Popen:
    argv = [sys.executable, faulty_trainer.SCRIPT, "train", "--config", "tiny", "--dataset", str(dataset), "--out", str(run),
            "--set", "checkpoint_every=2", "--set", "checkpoint_keep=0", *args]
    return subprocess.Popen(argv, cwd=run.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "", **(env or {})})


def wait_for(predicate, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_killed_then_damaged_newest_checkpoint_resumes_from_the_previous(tmp_path, dataset):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    # the process parks before step 7 (after the step-6 checkpoint), as a hung job would, and is killed there
    first = trainer(dataset, run, "--set", "max_steps=8",
                    env={faulty_trainer.HANG_AT: "7", faulty_trainer.HANG_RANK: "0", faulty_trainer.HANG_S: "300"})
    try:
        wait_for(lambda: "ckpt-000000006" in complete_checkpoints(open_store(ckpts)), "the step-6 checkpoint")
        assert (run / LOCK).exists()
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        first.kill()
        first.communicate()
    assert json.loads((run / LOCK).read_text())["pid"] == first.pid  # left behind by the kill
    shard = ckpts / "ckpt-000000006" / "rank-0.pt"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit
    shard.write_bytes(bytes(data))

    resumed = trainer(dataset, run, "--set", "max_steps=8", "--resume")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert re.search(r"resume: skipped \S+/ckpt-000000006: \S+/ckpt-000000006/rank-0\.pt: sha256 does not match", out), out
    assert re.search(r"resumed from \S+/ckpt-000000004: step 4, epoch 0, batch 4", out), out
    assert "final AUC" in out and not (run / LOCK).exists()
    names = complete_checkpoints(open_store(ckpts))
    assert names == ["ckpt-000000002", "ckpt-000000004", "ckpt-000000006", "ckpt-000000008"]
    for name in names:  # every checkpoint left verifies (the damaged step 6 was written again)
        whole_tables(str(ckpts), name)


def test_two_trainers_on_one_run_folder(tmp_path, dataset):
    run = tmp_path / "run"
    # The first trainer parks before step 12 (for up to 20 s) so it still holds the folder when the
    # second one checks: on a loaded machine its 24 steps could otherwise end before the second starts.
    first = trainer(dataset, run, "--set", "epochs=3", "--set", "log_every=1",
                    env={faulty_trainer.HANG_AT: "12", faulty_trainer.HANG_RANK: "0", faulty_trainer.HANG_S: "20"})

    def parked() -> bool:
        metrics = run / "metrics.jsonl"
        return metrics.exists() and '"step": 11,' in metrics.read_text()

    try:
        wait_for(lambda: ((run / LOCK).exists() and parked()) or first.poll() is not None, "the first trainer's lock")
        # a schedule that fits 24 steps: else its warning is a second stderr line before the error
        second = trainer(dataset, run, "--set", "epochs=3", "--set", "optim.warmup_steps=1",
                         "--set", "optim.decay_start_step=14", "--set", "optim.decay_steps=10")
        out2, err2 = second.communicate(timeout=120)
        first.send_signal(signal.SIGUSR1)  # seen: end the park instead of sitting out its 20 s (a no-op once it exited)
        out1, err1 = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, err1[-3000:]
    assert second.returncode == 2
    lines = [line for line in err2.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err2, err2
    assert re.match(rf"error: {re.escape(str(run))} is in use by another run \(host \S+, pid {first.pid}, "
                    r"started \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\)", lines[0]), lines[0]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == list(range(1, 25))  # one run's lines, in order: 3 epochs x 8 batches
