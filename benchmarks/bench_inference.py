"""Inference on the CPU: the exported AOTInductor package against eager PyTorch on the same model.

Shape: NVIDIA's DLRM (26 tables, dim 128, bottom 13-512-256-128, top 1024-1024-512-256-1, dot
interaction), the FL=15 cardinalities shrunk 256x (a lookup costs the same whatever the row
count; the package embeds the tables, so smaller tables keep the compile short), fp32 tables.
Both sides run the very module `dlrm export` captures (dlrm.serving.export.ServingDLRM: id check, logit,
sigmoid): the baseline calls it eagerly under torch.inference_mode, the package is what `export`
writes (torch.export with a dynamic batch, then AOTInductor), loaded as `dlrm predict` loads it.
Per batch size: p50 and p99 latency of one call and samples/s (batch / mean latency), inputs ready
in memory, the two called in turn; ratios are package against eager (latency: eager / package, > 1
means the package is faster).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch._inductor

from dlrm.config import ModelConfig
from dlrm.data.spec import FeatureSpec
from dlrm.serving.export import ServingDLRM, compile_package, example_inputs, export_program
from dlrm.modules.model import DLRM
from dlrm.modules.tables import CRITEO_FL15_CARDINALITIES

SCALE = 256
SIZES = [max(2, n // SCALE) for n in CRITEO_FL15_CARDINALITIES]
BATCHES = (1, 64, 512, 4096)
WARMUP, MIN_CALLS, MAX_CALLS, BUDGET_S = 5, 20, 2000, 1.5


def latencies(fns, inputs) -> list[np.ndarray]:
    """Seconds per call of each of `fns`, called in turn (so a busy machine slows all of them alike):
    WARMUP rounds, then rounds until BUDGET_S is spent (MIN_CALLS..MAX_CALLS)."""
    for _ in range(WARMUP):
        for fn in fns:
            fn(*inputs)
    out, start = [[] for _ in fns], time.perf_counter()
    while len(out[0]) < MIN_CALLS or (len(out[0]) < MAX_CALLS and time.perf_counter() - start < BUDGET_S * len(fns)):
        for fn, times in zip(fns, out):
            t0 = time.perf_counter()
            fn(*inputs)
            times.append(time.perf_counter() - t0)
    return [np.array(t) for t in out]


def describe(b: int, t: np.ndarray) -> tuple[float, float, float]:
    return np.percentile(t, 50) * 1e3, np.percentile(t, 99) * 1e3, b / t.mean()


def main():
    torch.manual_seed(0)
    spec = FeatureSpec.default("/nonexistent", SIZES, num_numerical=13)
    module = ServingDLRM(DLRM(13, SIZES, ModelConfig(), seed=0), spec).eval()
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        with torch.no_grad():
            program = export_program(module, spec, max(BATCHES), "cpu")
        package = compile_package(program, Path(d) / "model.pt2")
        compile_s = time.perf_counter() - t0
        size_mb = package.stat().st_size / 2**20
        runner = torch._inductor.aoti_load_package(str(package))

    print(f"threads: {torch.get_num_threads()}, 26 tables ({sum(SIZES):,} rows), dim 128, fp32; "
          f"export + AOTInductor compile {compile_s:.0f} s, package {size_mb:.0f} MiB")
    for b in BATCHES:
        x = example_inputs(spec, b, seed=b)
        with torch.inference_mode():
            want = module(*x)
            got = runner(*x)
            diff = max((g - w).abs().max().item() for g, w in zip(got, want))
            eager, pkg = latencies([module, runner], x)
        e50, e99, es = describe(b, eager)
        p50, p99, ps = describe(b, pkg)
        print(f"batch {b}: eager PyTorch p50 {e50:.3f} ms, p99 {e99:.3f} ms, {es:,.0f} samples/s (baseline)")
        print(f"batch {b}: AOTInductor package p50 {p50:.3f} ms, p99 {p99:.3f} ms, {ps:,.0f} samples/s "
              f"({ps / es:.2f}x baseline samples/s, p50 {e50 / p50:.2f}x, p99 {e99 / p99:.2f}x; "
              f"max |diff| {diff:.1e})")


if __name__ == "__main__":
    main()
