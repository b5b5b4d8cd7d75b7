"""Hybrid-parallel training (gloo, CPU, tiny dims) against one process.

Same seed and data: W = 2, 3 and 4 ranks, table-wise, row-wise and mixed, and 2 nodes x 2 processes
follow the single-process losses within 1e-5 relative for 20 steps, end with the same weights, and
evaluate the same exact AUC; checkpoints saved at one world size resume at another.

How the ranks start: the 2-node runs as in a pod, two torchrun agents that rendezvous. The one-node
runs as `python -m dlrm train` processes given torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE,
LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), forked from a server that imported torch once
(tests/forkrun.py): what they check is the numerics of W ranks, and an agent (~2 CPU-s) and a fresh
interpreter per rank (~3.5 CPU-s: torch, then torch._dynamo at the first optimizer) were three
quarters of this module's CPU (263 -> 65 CPU-s). torchrun itself is tested here by the 2-node runs
and by every run-local, fault and lifecycle test.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dlrm.io.checkpoint import whole_tables
from dlrm.config import TrainConfig, load_config
from dlrm.training.train import BUILTIN_CONFIGS, train
from datasets import make_dataset
from forkrun import ForkRunner
from launcher.procs import free_port

pytestmark = [pytest.mark.dist, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
# 101 rows a batch: uneven slices for 2 (51, 50) and 4 (26, 25, 25, 25) ranks; 2100 rows end in a
# partial batch of 80 that the seeded shuffle brings into the first 20 steps
COMMON = {"data.batch_size": 101, "data.eval_batch_size": 333, "max_steps": 20, "log_every": 1,
          "dist.device_memory": "1Gi", "dist.memory_reserve": "0"}


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    make_dataset(root, rows=2100, test_rows=1000)
    return root


def overrides(dataset, out, **extra) -> list[str]:
    kv = dict(COMMON, **extra)
    return [f"data.dataset={dataset}", f"out={out}"] + [f"{k}={v}" for k, v in kv.items()]


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
                GLOO_SOCKET_IFNAME="lo")


@pytest.fixture(scope="session")
def forked():
    server = ForkRunner().start(env())
    yield server
    server.close()


def ranks(forked: ForkRunner, nproc: int, args: list[str], per_node: int = 0) -> str:
    """`python -m dlrm train` as `nproc` ranks, `per_node` to a node (default: all on one), each with
    the environment torchrun gives its workers; rank 0's output first, then the others' (torchrun
    interleaves them)."""
    cmd = [sys.executable, "-m", "dlrm", "train", "--config", "tiny", *[a for o in args for a in ("--set", o)]]
    port, per_node = str(free_port()), per_node or nproc
    members = [(cmd, dict(env(), RANK=str(r), LOCAL_RANK=str(r % per_node), WORLD_SIZE=str(nproc),
                          LOCAL_WORLD_SIZE=str(per_node), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)) for r in range(nproc)]
    results = forked.run_group(members, cwd=ROOT, timeout=400)
    log = "".join(r.stdout + r.stderr for r in results)
    assert all(r.returncode == 0 for r in results), ([r.returncode for r in results], log[-12000:])
    return log


def torchrun_node(node_rank: int, port: int, args: list[str]) -> subprocess.Popen:
    """One of 2 nodes of 2 processes: a torchrun agent, as a pod starts it; `finish` waits for it."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node_rank}",
           "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={port}",
           "-m", "dlrm", "train", "--config", "tiny", *[a for o in args for a in ("--set", o)]]
    return subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc) -> str:
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-12000:]
    return out


def single(args: list[str]) -> dict:
    return train(load_config(TrainConfig, files=[BUILTIN_CONFIGS / "tiny.yaml"], overrides=args))


def losses(out: Path) -> list[float]:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in recs if r["kind"] == "train"]


def summary(out: Path) -> dict:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r["kind"] == "summary"][-1]


def gathered(out: Path) -> tuple[dict, dict]:
    """The latest checkpoint's whole tables {name: [rows, D]} (from every rank's pieces) and dense params."""
    return whole_tables(str(out / "checkpoints"))


def assert_same_run(a: Path, b: Path) -> None:
    la, lb = losses(a), losses(b)
    assert len(la) == len(lb) == 20
    assert torch.allclose(torch.tensor(lb), torch.tensor(la), rtol=1e-5, atol=0), (la, lb)
    ta, da = gathered(a)
    tb, db = gathered(b)
    assert ta.keys() == tb.keys() and da.keys() == db.keys()
    for k in ta:
        assert torch.allclose(ta[k], tb[k], rtol=1e-4, atol=1e-6), (k, (ta[k] - tb[k]).abs().max())
    for k in da:
        assert torch.allclose(da[k], db[k], rtol=1e-4, atol=1e-6), (k, (da[k] - db[k]).abs().max())
    assert abs(summary(a)["auc"] - summary(b)["auc"]) < 1e-4


@pytest.fixture(scope="session")
def baseline(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("w1") / "run"
    single(overrides(dataset, out))
    return out


@pytest.mark.parametrize("world,sharding", [(2, "table"), (4, "table"), (2, "row"), (4, "row")])
def test_ranks_follow_single_process(dataset, baseline, forked, tmp_path, world, sharding):
    out = tmp_path / "run"
    log = ranks(forked, world, overrides(dataset, out, **{"dist.sharding": sharding}))
    assert "plan: 5 tables" in log and f"{world} ranks" in log
    if sharding == "row":
        assert "row-wise tables: cat_0.bin, cat_1.bin, cat_2.bin, cat_3.bin, cat_4.bin" in log
    assert_same_run(baseline, out)


def test_mixed_plan_row_wise_largest_table(dataset, baseline, forked, tmp_path):
    # a budget that fits the 1000-row table only when split: row-wise for it, table-wise for the rest
    # (58796 B = 50 KiB of tables and all-to-all buffers + 7596 B of replicated dense arches)
    out = tmp_path / "run"
    log = ranks(forked, 3, overrides(dataset, out, **{"dist.device_memory": "58796"}))
    assert "row-wise tables: cat_4.bin\n" in log, log
    assert_same_run(baseline, out)


def test_two_nodes_of_two_processes(dataset, baseline, tmp_path):
    out, port = tmp_path / "run", free_port()
    args = overrides(dataset, out, **{"dist.sharding": "row"})
    nodes = [torchrun_node(r, port, args) for r in (0, 1)]
    logs = [finish(p) for p in nodes]
    assert "4 ranks" in logs[0]
    assert_same_run(baseline, out)
    # the network check (dlrm.dist.netcheck) ran once, before training: gloo's transport and both bus
    # bandwidths at the job's sizes (one rank's all-to-all share: 101 rows x 5 tables x dim 8 x 4 B / 4 ranks,
    # cut to whole float32 elements per rank)
    net = json.loads((out / "run.json").read_text())["network"]
    assert (net["backend"], net["transport"], net["fabric"], net["nodes"]) == ("gloo", "TCP", "none", 2), net
    assert net["all_to_all"]["bytes"] == (4 * 101 * 5 * 8 // 4) // 16 * 16, net
    assert all(net[op]["busbw_GBps"] > 0 and net[op]["seconds"] > 0 for op in ("all_reduce", "all_to_all")), net
    progress = [line for line in logs[0].splitlines() if line.startswith("step ")]
    assert "| net GLOO TCP, all-reduce " in progress[0] and "net GLOO" not in "".join(progress[1:]), progress[:2]


@pytest.mark.parametrize("first,load_at,train_at", [(4, 1, 2), (1, 2, 4)])
def test_checkpoint_resumes_at_another_world_size(dataset, baseline, forked, tmp_path, first, load_at, train_at):
    """Save at step 10 with `first` ranks. Load at `load_at` ranks: the same exact AUC on load. Train
    on from it at `train_at` ranks to step 20: the tail of the uninterrupted single-process run's
    losses, which needs every resharded row and optimizer state right (so no load-only run at
    `train_at` too: one more job, checking less)."""
    def run(world: int, args: list[str]) -> None:
        ranks(forked, world, args) if world > 1 else single(args)

    def resuming(name: str) -> Path:
        out = tmp_path / name
        out.mkdir()
        os.symlink(saved / "checkpoints", out / "checkpoints")  # resume from the other shape's files
        return out

    saved = tmp_path / "saved"
    run(first, overrides(dataset, saved, max_steps=10, **{"dist.sharding": "row"}))
    loaded = resuming("loaded")
    run(load_at, overrides(dataset, loaded, max_steps=10, resume="true"))
    assert abs(summary(loaded)["auc"] - summary(saved)["auc"]) < 1e-6, (summary(loaded)["auc"], summary(saved)["auc"])
    cont = resuming("cont")
    run(train_at, overrides(dataset, cont, resume="true", checkpoint_keep=0))
    assert torch.allclose(torch.tensor(losses(cont)), torch.tensor(losses(baseline)[10:]), rtol=1e-5, atol=0)
    assert abs(summary(cont)["auc"] - summary(baseline)["auc"]) < 1e-4


def test_a_resized_job_continues_its_run(dataset, baseline, forked, tmp_path):
    """The same job on 1 node x 1 process, then resized to 2 nodes x 1 process: the launcher renders
    both the same run id, so the second continues the first's run in its output (no --resume) from
    its step-10 checkpoint, resharded, says so in one line, and ends as the unresized run does."""
    from launcher.config import load_job_config
    from launcher.run_identity import run_id

    rid = run_id(load_job_config("synthetic-smoke", overrides={"nodes": 1, "gpus_per_node": 1}))
    assert run_id(load_job_config("synthetic-smoke", overrides={"nodes": 2, "gpus_per_node": 1})) == rid
    out = tmp_path / "run"
    single(overrides(dataset, out, max_steps=10, run_id=rid))
    log = ranks(forked, 2, overrides(dataset, out, run_id=rid, checkpoint_keep=0), per_node=1)
    assert (f"resuming run {rid} at step 10: resized from 1x1 to 2x1 ranks, checkpoint resharded; "
            f"global batch 101 as before, 101 -> 51 a rank\n") in log, log
    assert_same_run(baseline, out)  # steps 1-10 at one rank, 11-20 at two: the unresized run's losses and weights


# -- DLRM-DCNv2 on multi-hot data (MLPerf's model): cross layers, Adagrad as the reference, ids
# pooled on the rank owning the table; one table's rows of varying length (-1 padded)
HOT = {"sizes": (7, 50, 300, 3, 1000), "hotness": [3, 1, 4, 2, 5], "padded": [False, False, True, False, False]}
DCN = {"model.interaction": "dcn", "model.dcn_num_layers": 2, "model.dcn_low_rank_dim": 4,
       "optim.optimizer": "adagrad", "optim.lr": 0.05, "optim.warmup_steps": 0, "optim.decay_steps": 0}


@pytest.fixture(scope="session")
def multi_hot_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("mh")
    make_dataset(root, rows=2100, test_rows=1000, **HOT)
    return root


@pytest.fixture(scope="session")
def multi_hot_baseline(multi_hot_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("mh1") / "run"
    single(overrides(multi_hot_dataset, out, **DCN))
    return out


@pytest.mark.parametrize("world,sharding", [(2, "table"), (4, "table"), (2, "row"), (4, "row")])
def test_dcn_multi_hot_ranks_follow_single_process(multi_hot_dataset, multi_hot_baseline, forked, tmp_path, world,
                                                   sharding):
    out = tmp_path / "run"
    log = ranks(forked, world, overrides(multi_hot_dataset, out, **DCN, **{"dist.sharding": sharding}))
    assert "multi-hot: 15 ids per row over 5 tables (hotness 3,1,4,2,5)" in log, log
    assert_same_run(multi_hot_baseline, out)


def test_dcn_multi_hot_two_nodes_and_resume_at_another_world_size(multi_hot_dataset, multi_hot_baseline, forked, tmp_path):
    """2 nodes x 2 processes follow the one-process run; their step-10 checkpoint resumes on 2 ranks
    and the run goes on as the uninterrupted one."""
    out, port = tmp_path / "run", free_port()
    args = overrides(multi_hot_dataset, out, **DCN, **{"dist.sharding": "row", "checkpoint_every": 10,
                                                      "checkpoint_keep": 0})
    nodes = [torchrun_node(r, port, args) for r in (0, 1)]
    logs = [finish(p) for p in nodes]
    assert "4 ranks" in logs[0]
    assert_same_run(multi_hot_baseline, out)
    cont = tmp_path / "cont"
    shutil.copytree(out / "checkpoints" / "ckpt-000000010", cont / "checkpoints" / "ckpt-000000010")
    ranks(forked, 2, overrides(multi_hot_dataset, cont, **DCN, resume="true", checkpoint_keep=0))
    assert torch.allclose(torch.tensor(losses(cont)), torch.tensor(losses(multi_hot_baseline)[10:]), rtol=1e-5, atol=0)
    assert abs(summary(cont)["auc"] - summary(multi_hot_baseline)["auc"]) < 1e-4


# -- a kill while a background checkpoint is being written (2 forked ranks) ------------------------


@pytest.mark.parametrize("where", ["folder", "s3"])
def test_killed_during_a_background_checkpoint_resumes_from_the_previous_one(dataset, baseline, forked, tmp_path, where,
                                                                             request):
    """Checkpoints every 2 steps, keeping 1. Rank 1's step-6 file is written half and its writer
    parks; training goes on (step 7 is logged) and rank 0 is SIGKILLed before step 8. The step-4
    checkpoint is the complete one (rotation never removed it while step 6 was written; step 6 has
    no metadata) and loads; in a folder, a --resume starts from it and ends with the uninterrupted
    run's weights, the rewritten step-6 checkpoint holds no temp file of the killed writer, and the
    2-rank result exports to a DCP checkpoint (dlrm export-dcp) that loads tensor by tensor."""
    import faulty_trainer

    from dlrm.io.checkpoint import complete_checkpoints
    from dlrm.io.storage import open_store

    out = tmp_path / "run"
    ckpts = str(out / "checkpoints")
    if where == "s3":
        ckpts = f"s3://{request.getfixturevalue('s3_bucket')}/ckpts"
    args = overrides(dataset, out, checkpoint_every=2, checkpoint_keep=1, checkpoint_dir=ckpts)
    hooks = {faulty_trainer.PARK_WRITE_AT: "6", faulty_trainer.HANG_S: "60", faulty_trainer.KILL_AT: "8"}
    cmd = [sys.executable, "-m", "faulty_trainer", "train", "--config", "tiny", *[a for o in args for a in ("--set", o)]]
    port = str(free_port())
    members = [(cmd, dict(env(), **hooks, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=port)) for r in range(2)]
    killed = forked.run_group(members, cwd=ROOT / "tests", timeout=120, grace=0.5)
    log = "".join(r.stdout + r.stderr for r in killed)
    assert killed[0].returncode == -9, log[-6000:]
    assert "ckpt-000000006/rank-1.pt parks half-written" in log and "step  7/20" in log, log[-6000:]
    store = open_store(ckpts)
    assert complete_checkpoints(store) == ["ckpt-000000004"], store.list("")
    if where == "folder":  # begun, never counted (on S3 the kill may land before the first object is whole)
        assert list((out / "checkpoints" / "ckpt-000000006").glob(".rank-1.pt.*.tmp"))

    if where == "s3":  # the previous checkpoint verifies and loads (a resume on S3 costs ~5 CPU-s; the folder's shows it)
        whole_tables(ckpts, "ckpt-000000004")
        return
    log = ranks(forked, 2, overrides(dataset, out, resume="true", checkpoint_every=2, checkpoint_keep=0))
    assert f"resumed from {ckpts}/ckpt-000000004: step 4" in log, log[-6000:]
    assert "written in" in log and "(in the background)" in log
    assert complete_checkpoints(store)[-1] == "ckpt-000000020"
    assert not list((out / "checkpoints" / "ckpt-000000006").glob(".*"))  # the killed writer's temp file went
    tables, dense = whole_tables(ckpts)
    ref_tables, ref_dense = gathered(baseline)
    for k in ref_tables:
        assert torch.allclose(tables[k], ref_tables[k], rtol=1e-4, atol=1e-6), (k, (tables[k] - ref_tables[k]).abs().max())
    for k in ref_dense:
        assert torch.allclose(dense[k], ref_dense[k], rtol=1e-4, atol=1e-6), (k, (dense[k] - ref_dense[k]).abs().max())
    assert abs(summary(out)["auc"] - summary(baseline)["auc"]) < 1e-4
    # a 2-rank checkpoint as a torch.distributed.checkpoint: dcp.load gives back every whole table
    from test_checkpoint_async import assert_dcp_matches

    from dlrm.io.checkpoint import whole_state
    from dlrm.io.dcp_export import export_dcp

    assert export_dcp(ckpts, tmp_path / "dcp") == "ckpt-000000020"
    assert_dcp_matches(tmp_path / "dcp", whole_state(ckpts))
