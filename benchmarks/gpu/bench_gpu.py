"""Single-GPU DLRM training throughput, Criteo FL=15 shape: 26 tables (33.8M rows), dim 128,
NVIDIA's MLPs (bottom 512-256-128, top 1024-1024-512-256-1, dot interaction), batch 65536.

    PYTHONPATH=. python3 benchmarks/gpu/bench_gpu.py                   # on an H100: bf16 AMP and fp32/TF32
    PYTHONPATH=. python3 benchmarks/gpu/bench_gpu.py --device cpu --smoke   # tiny, for tests

Prints `name: value unit` lines, then one JSON line. Ids are synthetic (uniform per table) and
generated on the GPU, so the figure is the training step alone, not the input pipeline.

The step is built for speed, and is still exactly SGD:
- one fused table [sum(rows), D] (as dlrm.model), gathered with one index_select;
- the gathered rows are a leaf: backward stops there with a dense [B, F, D] gradient, and the
  update adds it back row by row with dlrm.kernels.row_scatter_add (duplicates add up, as in SGD;
  the Triton kernel the trainer's SGD also uses on CUDA);
- the model's own interaction, which on CUDA pads its 27 vectors to 32 (a 3x faster bmm);
- bf16 autocast for the MLPs and interaction, TF32 matmuls in the fp32 mode;
- torch.compile for the dense part (forward and backward); eager if compiling fails;
- the table is initialised on the GPU (torch.rand), not row by row on the CPU.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from dlrm.config import ModelConfig
from dlrm.tables import CRITEO_FL15_CARDINALITIES
from dlrm.kernels import row_scatter_add
from dlrm.model import DLRM


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--smoke", action="store_true", help="tiny tables, MLPs and batch: checks the code, not the speed")
    p.add_argument("--batch-size", type=int, default=65536)
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--steps", type=int, default=40, help="timed steps per mode")
    p.add_argument("--modes", default="amp-bf16,fp32-tf32")
    p.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                   help="torch.compile the dense part: auto = on CUDA, falling back to eager on failure")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--profile", action="store_true", help="print the top kernels of a few steps per mode")
    return p.parse_args(argv)


class Step:
    """One training step of the whole model on one device; `__call__(batch)` -> loss (a tensor)."""

    def __init__(self, table_sizes, cfg: ModelConfig, device, amp: bool, lr: float, compile_mode: str):
        self.device, self.amp, self.lr = device, amp, lr
        torch.manual_seed(0)
        # placeholder tables: only the dense arches come from DLRM; the real table is made below
        self.model = DLRM(13, [1] * len(table_sizes), cfg).to(device)
        self.model.sparse_arch = None
        rows, D = sum(table_sizes), cfg.embedding_dim
        self.weight = torch.rand(rows, D, device=device).mul_(2.0 / math.sqrt(max(table_sizes))).sub_(
            1.0 / math.sqrt(max(table_sizes)))
        self.offsets = torch.tensor([0] + list(table_sizes)[:-1], device=device).cumsum(0)
        self.update, self.update_name = row_scatter_add(device.type)
        params = list(self.model.parameters())
        fused = device.type == "cuda"
        self.opt = torch.optim.SGD(params, lr=lr, fused=fused) if fused else torch.optim.SGD(params, lr=lr, foreach=True)
        self.dense_loss = self._dense_loss
        self.compiled = False
        if compile_mode == "on" or (compile_mode == "auto" and device.type == "cuda"):
            self.dense_loss = torch.compile(self._dense_loss)
            self.compiled = True

    def _dense_loss(self, numerical, emb, label):
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            m = self.model
            logits = m.predict(m.dense_arch(numerical), emb)
        return F.binary_cross_entropy_with_logits(logits.float(), label)

    def __call__(self, batch):
        numerical, ids, label = batch
        flat = (ids + self.offsets).view(-1)  # [B * F] rows of the fused table
        emb = self.weight.index_select(0, flat).view(ids.shape[0], ids.shape[1], -1).requires_grad_(True)
        loss = self.dense_loss(numerical, emb, label)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            self.update(self.weight, flat, emb.grad.view(flat.shape[0], -1), -self.lr)
        return loss.detach()


def make_batches(n, B, table_sizes, device, seed=0):
    """n distinct synthetic batches, made on the device: numerical [B, 13], ids [B, F], label [B]."""
    g = torch.Generator(device=device).manual_seed(seed)
    cards = torch.tensor(table_sizes, device=device, dtype=torch.float64)
    out = []
    for _ in range(n):
        u = torch.rand(B, len(table_sizes), device=device, generator=g, dtype=torch.float64)
        ids = (u * cards).long().clamp_max_(cards.long() - 1)
        numerical = torch.rand(B, 13, device=device, generator=g).log1p_()
        label = (torch.rand(B, device=device, generator=g) < 0.25).float()
        out.append((numerical, ids, label))
    return out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_mode(mode, args, table_sizes, cfg, device) -> dict:
    amp = mode == "amp-bf16"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # both modes: fp32 means fp32 storage, TF32 matmuls
        torch.backends.cudnn.allow_tf32 = True
        gc.collect()  # the previous mode's compiled code and table sit in reference cycles
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    held = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    t0 = time.perf_counter()
    step = Step(table_sizes, cfg, device, amp, args.lr, args.compile)
    batches = make_batches(4, args.batch_size, table_sizes, device)
    sync(device)
    init_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    try:
        first = step(batches[0])
        sync(device)
    except Exception as e:  # a compiler failure must not cost the whole run: eager instead
        if not step.compiled:
            raise
        print(f"{mode}: torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); eager", flush=True)
        step.dense_loss, step.compiled = step._dense_loss, False
        step.opt.zero_grad(set_to_none=True)
        first = step(batches[0])
    for i in range(args.warmup):
        step(batches[i % len(batches)])
    sync(device)
    warm_s = time.perf_counter() - t0
    times = []
    for i in range(args.steps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            loss = step(batches[i % len(batches)])
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            loss = step(batches[i % len(batches)])
            times.append(time.perf_counter() - t)
    if not (math.isfinite(float(first)) and math.isfinite(float(loss))):
        raise SystemExit(f"{mode}: loss is not finite ({float(first)} then {float(loss)})")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            for i in range(5):
                step(batches[i % len(batches)])
            sync(device)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=60))
    med = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() - held if device.type == "cuda" else 0
    result = {"mode": mode, "samples_per_s": args.batch_size / med, "step_ms": med * 1e3,
              "step_ms_min": min(times) * 1e3, "peak_memory_gib": peak / 2**30, "compiled": step.compiled,
              "init_s": round(init_s, 2), "warmup_s": round(warm_s, 2), "update": step.update_name, "loss_first": float(first),
              "loss_last": float(loss)}
    del step, batches
    torch._dynamo.reset()  # compiled code holds the step (and its table): free it before the next mode
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible: run with --device cpu --smoke to check the code here")
    if args.smoke:
        table_sizes = [max(2, n // 10_000) for n in CRITEO_FL15_CARDINALITIES]
        cfg = ModelConfig(embedding_dim=16, bottom_mlp=[32, 16], top_mlp=[32, 16])
        args.batch_size = min(args.batch_size, 512)
        args.warmup, args.steps = min(args.warmup, 2), min(args.steps, 3)
    else:
        table_sizes, cfg = list(CRITEO_FL15_CARDINALITIES), ModelConfig()
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}; {len(table_sizes)} tables, {sum(table_sizes):,} rows, "
          f"dim {cfg.embedding_dim}, batch {args.batch_size}", flush=True)
    results = []
    for mode in args.modes.split(","):
        r = run_mode(mode, args, table_sizes, cfg, device)
        results.append(r)
        print(f"{mode} samples/s: {r['samples_per_s']:,.0f} samples/s (step {r['step_ms']:.2f} ms median, "
              f"{r['step_ms_min']:.2f} ms min; compiled {r['compiled']}; update {r['update']}; init {r['init_s']} s, "
              f"warm-up {r['warmup_s']} s)", flush=True)
        print(f"{mode} peak memory: {r['peak_memory_gib']:.2f} GiB", flush=True)
    if len(results) == 2 and results[1]["samples_per_s"]:
        print(f"speedup: {results[0]['samples_per_s'] / results[1]['samples_per_s']:.2f} x "
              f"({results[0]['mode']} vs {results[1]['mode']})")
    print(json.dumps({"bench": "gpu_train_step", "device": name, "torch": torch.__version__, "batch_size": args.batch_size,
                      "rows": sum(table_sizes), "dim": cfg.embedding_dim, "smoke": args.smoke, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
