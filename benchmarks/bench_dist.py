"""Hybrid-parallel training step on CPU (gloo): samples/s at W = 1 and W = 2, and the bytes the
embedding all-to-all moves per step against the minimum B x F x D x bytes x (W - 1) / W.

    PYTHONPATH=. python benchmarks/bench_dist.py        # ~1 minute; W = 2 runs under torchrun

Batches are synthetic and in memory (the reader has its own benchmark). On one machine's CPU cores
W = 2 shares the same cores, so the ratio shows overhead, not a cluster's scaling.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
TABLES, DIM, BATCH, STEPS, WARMUP = [20000, 5000, 3000, 1000, 500, 200, 100, 50], 16, 4096, 30, 3


def worker(sharding: str) -> dict:
    from dlrm.config import ModelConfig, OptimConfig
    from dlrm.dist.parallel import build_model, local_loss, parallelize
    from dlrm.dist.plan import plan_tables
    from dlrm.dist.runtime import init_runtime
    from dlrm.training.optim import Optimizers

    torch.set_num_threads(1)
    runtime = init_runtime("cpu")
    plan = plan_tables(TABLES, DIM, runtime.world_size, 1 << 30, BATCH, reserve_bytes=0, sharding=sharding)
    torch.manual_seed(0)
    model = parallelize(build_model(13, len(TABLES), ModelConfig(embedding_dim=DIM, bottom_mlp=[64, DIM], top_mlp=[64, 32])),
                        plan, runtime, seed=0)
    opt = Optimizers(model.dense_parameters(), [model.table_weight], OptimConfig(lr=0.1))
    opt.set_lr(0.1)
    g = torch.Generator().manual_seed(1)
    ids = torch.stack([torch.randint(0, n, (BATCH,), generator=g) for n in TABLES], 1)
    numerical, label = torch.rand(BATCH, 13, generator=g), (torch.rand(BATCH, generator=g) < 0.3).float()
    lo, hi = model.local_rows(BATCH)
    batch = (numerical[lo:hi], ids[:, model.sparse.tables], label[lo:hi])

    sent = [0]
    real_a2a = dist.all_to_all_single

    def counting_a2a(out, inp, output_split_sizes=None, input_split_sizes=None, group=None, async_op=False):
        # bytes this rank sends to the others (its own split stays local)
        sent[0] += (sum(input_split_sizes) - input_split_sizes[runtime.rank]) * inp.element_size()
        return real_a2a(out, inp, output_split_sizes, input_split_sizes, group=group, async_op=async_op)

    dist.all_to_all_single = counting_a2a
    for i in range(WARMUP + STEPS):
        if i == WARMUP:
            runtime.barrier()
            t0, sent[0] = time.perf_counter(), 0
        loss = local_loss(model(batch[0], batch[1]), batch[2], BATCH)
        opt.zero_grad()
        loss.backward()
        opt.step()
    runtime.barrier()
    elapsed = time.perf_counter() - t0
    total_sent = runtime.all_reduce_sum(torch.tensor([float(sent[0])]))[0].item()
    runtime.close()
    return {"samples_per_s": STEPS * BATCH / elapsed, "bytes_per_step": total_sent / STEPS,
            "world": runtime.world_size}


def run_w2(sharding: str) -> dict:
    from launcher.procs import free_port

    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", __file__, "--worker", sharding]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if out.returncode:
        raise SystemExit(f"W=2 run failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("{")))


def main() -> int:
    if "--worker" in sys.argv:
        r = worker(sys.argv[sys.argv.index("--worker") + 1])
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(r), flush=True)
        return 0
    os.environ.pop("WORLD_SIZE", None)
    one = worker("table")
    print(f"dist W=1 samples/s: {one['samples_per_s']:,.0f} samples/s (batch {BATCH}, {len(TABLES)} tables, dim {DIM})")
    minimum = BATCH * len(TABLES) * DIM * 4 * (2 - 1) / 2
    for sharding in ("table", "row"):
        two = run_w2(sharding)
        print(f"dist W=2 {sharding}-wise samples/s: {two['samples_per_s']:,.0f} samples/s "
              f"(ratio {two['samples_per_s'] / one['samples_per_s']:.2f} vs W=1, same CPU cores)")
        # forward and backward each move at least B x F x D x 4 x (W-1)/W
        print(f"dist W=2 {sharding}-wise a2a bytes/step: {two['bytes_per_step']:,.0f} B "
              f"(ratio {two['bytes_per_step'] / (2 * minimum):.2f} vs minimum {2 * minimum:,.0f} B forward+backward)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
