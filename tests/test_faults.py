"""Faults: what a real cluster does to a job, done to the rendered job run locally (run-local).

- One rank's process, or one whole node (every process of one replica), is SIGKILLed in the middle
  of a NODES=2 GPUS=2 run of the rendered synthetic-smoke job. The job restarts as the manifest's
  restartPolicy (OnFailure) and runPolicy.backoffLimit say, every rank resumes from the latest
  COMPLETE checkpoint (a half-written one planted next to it is skipped), and the run ends with
  the weights and AUC of an uninterrupted run with the same seed: bit for bit at W = 2, within
  float rounding at W = 4 (why: the kill test's docstring).
- A node lost for good: the job stopped after a checkpoint, then rendered with NODES=1 resumes
  from the 4-rank checkpoint by resharding it (see that test's docstring for what is comparable).
- A hung peer: a collective fails after dist.collective_timeout_s with a message naming the rank
  and the collective instead of hanging the job forever.
- Object storage faults: tests/test_faults_storage.py.

Kill timing is deterministic: the trainers run as tests/faulty_trainer.py, whose FAULT_HANG_AT_STEP
parks rank 1 before a step past the first checkpoint, so the kill always lands mid-run, with every
other rank blocked inside a collective, never after the job has finished. The hook's variable is
removed from this process's environment before the kill, so the restarted attempt runs freely.
"""
from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch

from faults_common import (HANG, RUN, TRAIN, Running, complete, gathered, plant_partial_checkpoint, rank_pids, render,
                          step_losses, summary)
from faults_common import data  # noqa: F401 (a module fixture, used by name)


@pytest.fixture(scope="session")
def uninterrupted(data, tmp_path_factory):
    """uninterrupted(nodes, gpus): the run nothing happens to, the reference for the fault tests (made once)."""
    done = {}

    def get(nodes: int, gpus: int) -> Path:
        if (nodes, gpus) not in done:
            workdir = tmp_path_factory.mktemp(f"uninterrupted-{nodes}x{gpus}")
            run = Running(render(nodes, gpus, [f"dataset={data}", *TRAIN]), workdir)
            assert run.join() == 0, run.text()[-6000:]
            assert run.job.restarts == 0
            done[nodes, gpus] = workdir.joinpath(*RUN)
        return done[nodes, gpus]

    return get


# ---------------------------------------------------------------------------------------------
# Killed processes: restart, resume from the latest complete checkpoint, same result.


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("gpus, victim, api", [(2, "rank 2", "pytorchjob"), (2, "node worker-0", "pytorchjob"),
                                               (1, "rank 0", "pytorchjob"), (1, "node node-0-1", "trainjob")])
def test_killed_rank_or_node_restarts_and_ends_as_if_uninterrupted(data, uninterrupted, tmp_path, monkeypatch, gpus, victim, api):
    """NODES=2 x `gpus`: SIGKILL one trainer process (a rank not the parked one) or every process of
    worker-0, right after the step-5 checkpoint; the job must restart once and end as the
    uninterrupted run did. As a TrainJob, the restart is JobSet's (failurePolicy.maxRestarts) and
    the reference is the PyTorchJob's uninterrupted run: the two APIs run the same job.

    What "the same" means: at W = 2 bit for bit (every tensor torch.equal, the same losses and
    AUC). At W = 4 the resumed run's first step differs from the uninterrupted run's step 6 by
    float rounding in the dense gradients (seen: only dense_arch.mlp.0.weight differs at step 6,
    by ~1 ulp), because DDP buckets its first iteration by parameter order and rebuilds the
    buckets by gradient-ready order after it: the first step after ANY start (step 1 of the
    uninterrupted run, step 6 of the resumed one) all-reduces with the other layout, so gloo's
    ring sums some elements of the 4 ranks' gradients in another order. With 2 ranks a+b == b+a,
    which is why W = 2 stays exact. So at W = 4: the loss of the first resumed step exactly, and
    weights, losses and AUC to within rounding (rtol 1e-5).
    """
    ref = uninterrupted(2, gpus)
    monkeypatch.setenv(HANG, "8")  # rank 1 parks before step 8: checkpoint 5 exists, 10 never can
    run = Running(render(2, gpus, [f"dataset={data}", *TRAIN, f"api={api}"]), tmp_path)
    ckpts = tmp_path.joinpath(*RUN, "checkpoints")
    run.wait_for(lambda: "ckpt-000000005" in complete(ckpts) and "rank 1 hangs before step 8" in run.text(),
                 "complete checkpoint at step 5")
    # a save that the kill cut short, newer than the complete one: it must never be loaded
    plant_partial_checkpoint(ckpts, "ckpt-000000005", 7)
    monkeypatch.delenv(HANG)  # the restarted job runs through
    what, which = victim.split()
    if what == "rank":
        pids = rank_pids(run.job)
        assert sorted(pids) == list(range(2 * gpus)), run.job.pids()
        os.kill(pids[int(which)], signal.SIGKILL)  # a healthy rank, blocked in a collective
    else:
        for pid in run.job.pids()[which]:  # the whole node: torchrun and its trainers
            os.kill(pid, signal.SIGKILL)
    assert run.join() == 0, run.text()[-6000:]
    text = run.text()
    # restartPolicy OnFailure, backoffLimit 2: one whole-job restart. run-local records the first
    # replica it sees exit: the killed node's container (137 = SIGKILL), or a torchrun that ended
    # its pod with 1 because one of its trainers died (killed, or its peer vanished).
    assert run.job.restarts == 1 and len(run.job.failures) == 1, run.job.failures
    replica, container, code = run.job.failures[0]
    first = run.job.replicas[0].name  # node rank 0: master-0, or node-0-0
    assert container == {"pytorchjob": "pytorch", "trainjob": "node"}[api] and replica in [r.name for r in run.job.replicas]
    assert (replica, code) in ((which, 137), (first, 1)) if what == "node" else code == 1, run.job.failures
    assert "restarting the whole job (1 of 2)" in text
    assert re.search(rf"\[{first}\] resumed from \S+/ckpt-000000005: step 5, epoch 0, batch 5", text), text[-6000:]
    assert "ckpt-000000007" not in text.split("restarting the whole job")[1]
    assert not (ckpts / "ckpt-000000007" / "metadata.json").exists()  # still incomplete, never used

    run_dir = tmp_path.joinpath(*RUN)
    assert complete(ckpts)[-1] == "ckpt-000000020" and summary(run_dir)["step"] == 20
    tables, dense = gathered(ckpts)
    ref_tables, ref_dense = gathered(ref / "checkpoints")
    assert tables.keys() == ref_tables.keys() and dense.keys() == ref_dense.keys()
    got, want = step_losses(run_dir), step_losses(ref)
    assert sorted(got) == sorted(want) == list(range(1, 21))
    if gpus == 1:  # W = 2: bit for bit
        for k in ref_tables:
            assert torch.equal(tables[k], ref_tables[k]), (k, (tables[k] - ref_tables[k]).abs().max())
        for k in ref_dense:
            assert torch.equal(dense[k], ref_dense[k]), (k, (dense[k] - ref_dense[k]).abs().max())
        assert got == want and summary(run_dir)["auc"] == summary(ref)["auc"]
    else:  # W = 4: the resumed state exactly, then rounding (see the docstring)
        assert [got[s] for s in range(1, 7)] == [want[s] for s in range(1, 7)]
        assert torch.allclose(torch.tensor(list(got.values())), torch.tensor(list(want.values())), rtol=1e-5, atol=0)
        for k in ref_tables:
            assert torch.allclose(tables[k], ref_tables[k], rtol=1e-5, atol=1e-7), (k, (tables[k] - ref_tables[k]).abs().max())
        for k in ref_dense:
            assert torch.allclose(dense[k], ref_dense[k], rtol=1e-5, atol=1e-7), (k, (dense[k] - ref_dense[k]).abs().max())
        assert abs(summary(run_dir)["auc"] - summary(ref)["auc"]) < 1e-6


@pytest.mark.dist
@pytest.mark.slow
def test_a_node_lost_for_good_resumes_on_fewer_ranks(data, uninterrupted, tmp_path, monkeypatch):
    """Stop a 2x2 job after its step-5 checkpoint, then run it rendered with NODES=1 GPUS=2 (W 4 -> 2).

    What is exactly comparable: the checkpoint. Every rank file names the table rows it holds, so
    the 2-rank plan loads each table row for row as the 4 ranks saved it (checked with torch.equal),
    and dense.pt does not depend on W. After that, the loss of a global batch is the same sum in
    exact arithmetic at any W, but W changes each rank's slice of the batch (64 rows of 256 at
    W = 4, 128 at W = 2) and so the order of the float sums in the loss, the dense gradients' all-reduce and
    the embedding gradients: rounding differs at ~1e-7 relative per step. Hence tolerances, the
    ones tests/test_dist_train.py holds W = 1, 2, 4 to: per-step losses within 1e-5 relative,
    final weights within rtol 1e-4 / atol 1e-6, final AUC within 1e-4.
    """
    from dlrm.io.checkpoint import load_checkpoint
    from dlrm.config import TrainConfig, from_dict
    from dlrm.dist.parallel import plan_for_config, plan_pieces

    ref_run = uninterrupted(2, 2)
    monkeypatch.setenv(HANG, "8")
    first = Running(render(2, 2, [f"dataset={data}", *TRAIN]), tmp_path)
    ckpts = tmp_path.joinpath(*RUN, "checkpoints")
    first.wait_for(lambda: "ckpt-000000005" in complete(ckpts) and "rank 1 hangs before step 8" in first.text(),
                   "complete checkpoint at step 5")
    monkeypatch.delenv(HANG)
    first.job.stop()
    assert first.join() == 130 and first.job.restarts == 0
    assert complete(ckpts) == ["ckpt-000000005"]
    saved_tables, saved_dense = gathered(ckpts, "ckpt-000000005")

    # The 4-rank checkpoint, loaded under the 2-rank plan: every row as saved.
    meta = json.loads((ckpts / "ckpt-000000005" / "metadata.json").read_text())
    assert meta["world_size"] == 4
    cfg = from_dict(TrainConfig, meta["config"])
    plan = plan_for_config(cfg, [int(t.shape[0]) for t in saved_tables.values()], list(saved_tables), 2)
    for rank, pieces in plan_pieces(plan).items():
        weight = torch.full((sum(p.end - p.start for p in pieces), cfg.model.embedding_dim), float("nan"))
        _, dense = load_checkpoint(str(ckpts), "ckpt-000000005", weight=weight, row_state={}, pieces=pieces)
        for p in pieces:
            assert torch.equal(weight[p.offset: p.offset + p.end - p.start], saved_tables[p.table][p.start: p.end]), (rank, p)
        assert all(torch.equal(dense["model"][k], saved_dense[k]) for k in saved_dense)

    # Fewer nodes is another config, so another run id: continuing the first run is asked for (--resume).
    second = Running(render(1, 2, [f"dataset={data}", *TRAIN, "train.resume=true"]), tmp_path)
    assert second.join() == 0, second.text()[-6000:]
    assert "1 node(s) x 2 process(es)" in second.text()
    assert re.search(r"resumed from \S+/ckpt-000000005: step 5, epoch 0, batch 5", second.text()), second.text()[-6000:]
    run_dir = tmp_path.joinpath(*RUN)
    assert json.loads((ckpts / "ckpt-000000020" / "metadata.json").read_text())["world_size"] == 2

    ref, got = step_losses(ref_run), step_losses(run_dir)
    assert sorted(got) == list(range(1, 21))
    assert got[5] == ref[5]  # logged by the 4-rank attempt, before the stop
    after = list(range(6, 21))
    assert torch.allclose(torch.tensor([got[s] for s in after]), torch.tensor([ref[s] for s in after]), rtol=1e-5, atol=0)
    tables, dense = gathered(ckpts, "ckpt-000000020")
    ref_tables, ref_dense = gathered(ref_run / "checkpoints")
    for k in ref_tables:
        assert torch.allclose(tables[k], ref_tables[k], rtol=1e-4, atol=1e-6), (k, (tables[k] - ref_tables[k]).abs().max())
    for k in ref_dense:
        assert torch.allclose(dense[k], ref_dense[k], rtol=1e-4, atol=1e-6), (k, (dense[k] - ref_dense[k]).abs().max())
    assert abs(summary(run_dir)["auc"] - summary(ref_run)["auc"]) < 1e-4
    assert summary(run_dir)["step"] == 20


# ---------------------------------------------------------------------------------------------
# A hung collective: a timeout, a message naming the rank and the collective, a restart.


@pytest.mark.dist
@pytest.mark.slow
def test_a_hung_collective_times_out_naming_rank_and_collective(data, tmp_path, monkeypatch):
    """2 gloo processes; rank 1 stops participating before step 3. With collective_timeout_s=5
    rank 0's all-to-all fails after 5 s with our message, torchrun ends the pod, and the job
    restarts (backoffLimit 1) and finishes, as an operator's restart would."""
    monkeypatch.setenv(HANG, "3")
    sets = [f"dataset={data}", *TRAIN, "train.max_steps=6", "train.dist.collective_timeout_s=5", "cluster.backoff_limit=1"]
    run = Running(render(1, 2, sets), tmp_path)
    run.wait_for(lambda: "rank 1 hangs before step 3" in run.text(), "hang")
    hung_at = time.monotonic()
    monkeypatch.delenv(HANG)  # the restarted attempt does not hang
    run.wait_for(lambda: run.job.restarts == 1, "restart after the timeout", timeout=60)
    failed_after = time.monotonic() - hung_at
    assert failed_after < 30, failed_after
    assert run.join() == 0, run.text()[-6000:]
    first_attempt = run.text().split("restarting the whole job")[0]
    assert "rank 0: collective all_to_all (embedding lookup) timed out after 5 s" in first_attempt, first_attempt[-6000:]
    assert run.job.failures == [("master-0", "pytorch", 1)]
    assert summary(tmp_path.joinpath(*RUN))["step"] == 6
