"""Single-GPU DLRM training throughput, two shapes, batch 65536:

  fl15-dot      Criteo FL=15: 26 one-hot tables (33.8M rows), dim 128, NVIDIA's MLPs (bottom
                512-256-128, top 1024-1024-512-256-1, dot interaction), SGD;
  mlperf-dcnv2  MLPerf Training's DLRM-DCNv2: MLPerf's multi-hot tables (hotness 3,2,1,...,100,...,
                214 ids a sample) capped at 40M rows, scaled down uniformly to --max-table-gib so
                they fit one GPU; 3 cross layers of rank 512 over 27 x 128, same MLPs; the
                trainer's own sum-pooled lookup (dlrm.modules.model.pooled_lookup, sparse gradient) and
                its optimizers (row-wise Adagrad for the table, torch Adagrad for the rest).

    PYTHONPATH=. python3 benchmarks/gpu/bench_gpu.py                   # on an H100: bf16 AMP and fp32/TF32
    PYTHONPATH=. python3 benchmarks/gpu/bench_gpu.py --shape mlperf-dcnv2 --modes amp-bf16
    PYTHONPATH=. python3 benchmarks/gpu/bench_gpu.py --device cpu --smoke [--shape ...]   # tiny, for tests

mlperf-dcnv2 runs the whole model for the whole batch on one GPU; MLPerf's published figures
(~1.7-1.9M samples/s per GPU on 8-GPU H100/H200 systems, v4.0 and v5.1 logs) are global
throughput / 8 with the tables sharded 8 ways and an all-to-all, so the two compare in scale,
not exactly.

Prints `name: value unit` lines, then one JSON line. Ids are synthetic (uniform per table) and
generated on the GPU, so the figure is the training step alone, not the input pipeline.

The step is built for speed, and is still exactly SGD:
- one fused table [sum(rows), D] (as dlrm.modules.model), gathered with one index_select;
- the gathered rows are a leaf: backward stops there with a dense [B, F, D] gradient, and the
  update adds it back row by row with dlrm.modules.kernels.row_scatter_add (duplicates add up, as in SGD;
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

from dlrm.config import ModelConfig, OptimConfig
from dlrm.modules.tables import CRITEO_FL15_CARDINALITIES, MLPERF_DCNV2_CARDINALITIES, MLPERF_HOTNESS
from dlrm.modules.kernels import row_scatter_add
from dlrm.modules.model import DLRM, pooled_lookup
from dlrm.training.optim import Optimizers

SHAPES = ("fl15-dot", "mlperf-dcnv2")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--shape", default="fl15-dot", choices=SHAPES)
    p.add_argument("--max-table-gib", type=float, default=40.0,
                   help="mlperf-dcnv2: scale the tables down uniformly to at most this much fp32 (default 40: room on an 80 GB GPU "
                        "for the ~15 GB of multi-hot lookup and gradient buffers at batch 65536)")
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


class PooledStep:
    """One DLRM-DCNv2 multi-hot training step as the trainer takes it: sum-pooled lookup with a
    sparse gradient, row-wise Adagrad on the table, torch Adagrad on the dense arches."""

    def __init__(self, table_sizes, hotness, cfg: ModelConfig, device, amp: bool, lr: float, compile_mode: str):
        self.device, self.amp = device, amp
        torch.manual_seed(0)
        self.model = DLRM(13, [1] * len(table_sizes), cfg).to(device)
        self.model.sparse_arch = None
        rows, D = sum(table_sizes), cfg.embedding_dim
        bound = 1.0 / math.sqrt(max(table_sizes))
        self.weight = torch.nn.Parameter(torch.rand(rows, D, device=device).mul_(2 * bound).sub_(bound))
        starts = torch.tensor([0] + list(table_sizes)[:-1], device=device).cumsum(0)
        self.col_offsets = starts.repeat_interleave(torch.tensor(hotness, device=device))  # [H]
        self.bag_starts = torch.tensor([0] + list(hotness)[:-1], device=device).cumsum(0)  # [F]
        self.opt = Optimizers(list(self.model.parameters()), [self.weight], OptimConfig(optimizer="adagrad", lr=lr))
        self.opt.set_lr(lr)
        self.update_name = "row-wise adagrad (dlrm.training.optim)"
        self.dense_loss, self.compiled = self._dense_loss, False
        if compile_mode == "on" or (compile_mode == "auto" and device.type == "cuda"):
            self.dense_loss, self.compiled = torch.compile(self._dense_loss), True

    _dense_loss = Step._dense_loss

    def __call__(self, batch):
        numerical, ids, label = batch
        emb = pooled_lookup(ids + self.col_offsets, self.weight, self.bag_starts)  # [B, F, D]
        loss = self.dense_loss(numerical, emb, label)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad()
        return loss.detach()


def make_batches(n, B, table_sizes, device, seed=0, hotness=None):
    """n distinct synthetic batches, made on the device: numerical [B, 13], ids [B, H] (H = F for
    one-hot; each table's `hotness` columns side by side), label [B]."""
    g = torch.Generator(device=device).manual_seed(seed)
    if hotness is not None:
        table_sizes = [n for n, h in zip(table_sizes, hotness) for _ in range(h)]
    cards = torch.tensor(table_sizes, device=device, dtype=torch.float64)
    out = []
    for _ in range(n):
        u = torch.rand(B, len(table_sizes), device=device, generator=g, dtype=torch.float64)
        ids = (u * cards).long().clamp_max_(cards.long() - 1)
        numerical = torch.rand(B, 13, device=device, generator=g).log1p_()
        label = (torch.rand(B, device=device, generator=g) < 0.25).float()
        out.append((numerical, ids, label))
    return out


def scaled_tables(sizes: list[int], dim: int, max_gib: float) -> list[int]:
    """`sizes` divided by one factor so the fused fp32 table is at most max_gib (each table >= 2 rows)."""
    factor = max(1.0, sum(sizes) * dim * 4 / (max_gib * 2**30))
    return [max(2, int(n / factor)) for n in sizes]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_mode(mode, args, table_sizes, cfg, device, hotness=None) -> dict:
    amp = mode == "amp-bf16"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # both modes: fp32 means fp32 storage, TF32 matmuls
        torch.backends.cudnn.allow_tf32 = True
        gc.collect()  # the previous mode's compiled code and table sit in reference cycles
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    held = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    t0 = time.perf_counter()
    if hotness is None:
        step = Step(table_sizes, cfg, device, amp, args.lr, args.compile)
    else:
        step = PooledStep(table_sizes, hotness, cfg, device, amp, args.lr, args.compile)
    batches = make_batches(4, args.batch_size, table_sizes, device, hotness=hotness)
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
        step.opt.zero_grad()
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
    hotness = None
    if args.shape == "mlperf-dcnv2":
        hotness = list(MLPERF_HOTNESS)
        cfg = ModelConfig(interaction="dcn", dcn_num_layers=3, dcn_low_rank_dim=512)
        table_sizes = scaled_tables(MLPERF_DCNV2_CARDINALITIES, cfg.embedding_dim, args.max_table_gib)
        if args.smoke:
            table_sizes = [max(2, n // 100_000) for n in MLPERF_DCNV2_CARDINALITIES]
            cfg = ModelConfig(embedding_dim=16, bottom_mlp=[32, 16], top_mlp=[32, 16], interaction="dcn",
                              dcn_num_layers=2, dcn_low_rank_dim=8)
    elif args.smoke:
        table_sizes = [max(2, n // 10_000) for n in CRITEO_FL15_CARDINALITIES]
        cfg = ModelConfig(embedding_dim=16, bottom_mlp=[32, 16], top_mlp=[32, 16])
    else:
        table_sizes, cfg = list(CRITEO_FL15_CARDINALITIES), ModelConfig()
    if args.smoke:  # multi-hot: 214 ids a sample, a smaller batch keeps the CPU smoke quick
        args.batch_size = min(args.batch_size, 128 if hotness else 512)
        args.warmup, args.steps = min(args.warmup, 2), min(args.steps, 3)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    multi = f", multi-hot {sum(hotness)} ids a sample, {cfg.interaction} interaction" if hotness else ""
    print(f"shape: {args.shape}; device: {name}; torch {torch.__version__}; {len(table_sizes)} tables, "
          f"{sum(table_sizes):,} rows, dim {cfg.embedding_dim}, batch {args.batch_size}{multi}", flush=True)
    results = []
    for mode in args.modes.split(","):
        r = run_mode(mode, args, table_sizes, cfg, device, hotness)
        results.append(r)
        print(f"{mode} samples/s: {r['samples_per_s']:,.0f} samples/s (step {r['step_ms']:.2f} ms median, "
              f"{r['step_ms_min']:.2f} ms min; compiled {r['compiled']}; update {r['update']}; init {r['init_s']} s, "
              f"warm-up {r['warmup_s']} s)", flush=True)
        print(f"{mode} peak memory: {r['peak_memory_gib']:.2f} GiB", flush=True)
    if len(results) == 2 and results[1]["samples_per_s"]:
        print(f"speedup: {results[0]['samples_per_s'] / results[1]['samples_per_s']:.2f} x "
              f"({results[0]['mode']} vs {results[1]['mode']})")
    print(json.dumps({"bench": "gpu_train_step", "shape": args.shape, "device": name, "torch": torch.__version__,
                      "batch_size": args.batch_size, "rows": sum(table_sizes), "dim": cfg.embedding_dim,
                      "ids_per_sample": sum(hotness) if hotness else len(table_sizes), "interaction": cfg.interaction,
                      "smoke": args.smoke, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
