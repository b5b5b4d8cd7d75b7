"""A run's life under torchrun (gloo, CPU, tiny): SIGTERM to a 2-process job, and 2 nodes that each
have their own output folder (a pod's emptyDir, run-local's per-node folders).

- SIGTERM to torchrun (what the kubelet sends a pod) while rank 1 is parked: both ranks agree to
  stop at the same step, checkpoint it, exit 143, and --resume ends with the weights of an
  uninterrupted 2-process run, tensor for tensor (W = 2 is exact, see tests/test_faults.py);
- 2 nodes x 1 process, one output folder each: the first run finishes, warning that no restart can
  resume from its split checkpoints; the rerun (the operator's restart) refuses at once on every
  rank instead of waiting collective_timeout_s in a collective only some ranks reached.
"""
from __future__ import annotations

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

from dlrm.io.storage import open_store
from dlrm.io.checkpoint import complete_checkpoints, whole_tables
from dlrm.training.runlock import LOCK
from launcher.procs import free_port

pytestmark = [pytest.mark.dist, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
SETS = ["max_steps=16", "log_every=1", "data.batch_size=128", "checkpoint_keep=0", "optim.schedule_check=warn",
        "dist.device_memory=1Gi", "dist.memory_reserve=0", "dist.collective_timeout_s=120"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ds")
    make_dataset(root, rows=2048, test_rows=512)
    return root


def torchrun(dataset, out, *sets, nproc=1, nnodes=1, node_rank=0, port=None, env=None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--node_rank={node_rank}",
           f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1", f"--master_port={port or free_port()}",
           faulty_trainer.SCRIPT, "train", "--config", "tiny", "--dataset", str(dataset), "--out", str(out),
           *[a for s in [*SETS, *sets] for a in ("--set", s)]]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
                                 "GLOO_SOCKET_IFNAME": "lo", **(env or {})})


def finish(proc, timeout: float = 300) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return out


def test_sigterm_stops_every_rank_at_one_step_and_resume_ends_as_uninterrupted(tmp_path, dataset):
    ref = tmp_path / "ref"
    ref_run = torchrun(dataset, ref, nproc=2)
    assert ref_run.wait(300) == 0, finish(ref_run)[-6000:]
    out = tmp_path / "run"
    run = torchrun(dataset, out, nproc=2, env={faulty_trainer.HANG_AT: "7", faulty_trainer.HANG_RANK: "1",
                                               faulty_trainer.HANG_S: "3"})
    text = wait_for_line(run, "rank 1 hangs before step 7")
    run.send_signal(signal.SIGTERM)  # to torchrun, as the kubelet does; it forwards SIGTERM to both trainers
    text += finish(run, 120)
    ckpts = out / "checkpoints"
    assert complete_checkpoints(open_store(ckpts)) == ["ckpt-000000007"], text[-6000:]
    assert f"stopped by SIGTERM at step 7/16 (exit 143): checkpoint {ckpts}/ckpt-000000007" in text
    assert run.returncode != 0  # torchrun reports its workers' 143 as a failed run: the job is restarted
    assert not (out / LOCK).exists()

    resumed = torchrun(dataset, out, "resume=true", nproc=2)
    text = finish(resumed)
    assert resumed.returncode == 0 and "step 7, epoch 0, batch 7" in text, text[-6000:]
    tables, dense = whole_tables(str(ckpts))
    ref_tables, ref_dense = whole_tables(str(ref / "checkpoints"))
    for k in ref_tables:
        assert torch.equal(tables[k], ref_tables[k]), k
    for k in ref_dense:
        assert torch.equal(dense[k], ref_dense[k]), k


def test_two_nodes_with_their_own_output_folders_refuse_to_resume_at_once(tmp_path, dataset):
    def job():
        port = free_port()
        return [torchrun(dataset, tmp_path / f"node-{n}", "resume=true", "max_steps=8", "checkpoint_every=4",
                         nnodes=2, node_rank=n, port=port) for n in (0, 1)]

    first = job()
    texts = [finish(p) for p in first]
    assert [p.returncode for p in first] == [0, 0], texts[0][-6000:]
    assert "warning: ranks [1] do not see" in texts[0] and "a restart cannot resume from them" in texts[0]
    assert complete_checkpoints(open_store(tmp_path / "node-0" / "checkpoints")) == ["ckpt-000000004", "ckpt-000000008"]
    assert complete_checkpoints(open_store(tmp_path / "node-1" / "checkpoints")) == []  # its shards, no metadata

    t0 = time.monotonic()
    rerun = job()  # the operator's restart: same command, same folders
    texts = [finish(p) for p in rerun]
    took = time.monotonic() - t0
    assert all(p.returncode != 0 for p in rerun), texts
    assert took < 60, f"{took:.0f}s: waited in a collective instead of refusing"
    for text in texts:
        assert ("the ranks do not see the same checkpoints (rank 0: ckpt-000000004, ckpt-000000008; rank 1: none): "
                "each node has its own output folder") in text, text[-6000:]
