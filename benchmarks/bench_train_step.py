"""Train-step throughput of NVIDIA's DLRM shape on the CPU, against a facebookresearch/dlrm-style step.

Shape: 26 tables (the FL=15 cardinalities shrunk 64x so they fit beside everything else in RAM:
the step cost depends on the lookups, not on the rows), dim 128, bottom 13-512-256-128, top
1024-1024-512-256-1, dot interaction, batch 4096, fp32, sparse SGD.
Baseline, same run: the reference implementation's structure (one nn.EmbeddingBag per table,
torch.optim.SGD over sparse gradients, which coalesces every table's gradient each step).
Ours: one fused table, one gather, one multi-threaded sparse add (dlrm.training.optim), in fp32 and with
bf16 autocast (the MLPs on AMX / AVX512-BF16 where the CPU has them). Data reading is timed apart.
"""
from __future__ import annotations

import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from dlrm.config import ModelConfig, OptimConfig
from dlrm.data.reader import SplitBinaryReader
from dlrm.data.synth import generate
from dlrm.modules.model import DLRM
from dlrm.training.optim import Optimizers
from dlrm.modules.tables import CRITEO_FL15_CARDINALITIES

B, STEPS, WARMUP, SCALE = 4096, 12, 3, 64
SIZES = [max(2, n // SCALE) for n in CRITEO_FL15_CARDINALITIES]


class ReferenceStyle(torch.nn.Module):
    """facebookresearch/dlrm's layout: a list of per-table EmbeddingBags (sum of one id per bag)."""

    def __init__(self, model: DLRM):
        super().__init__()
        self.model = model
        self.bags = torch.nn.ModuleList(
            torch.nn.EmbeddingBag(n, 128, mode="sum", sparse=True, _weight=model.sparse_arch.table(t).clone())
            for t, n in enumerate(SIZES))

    def forward(self, numerical, categorical):
        offsets = torch.arange(categorical.shape[0])
        sparse = torch.stack([bag(categorical[:, t].contiguous(), offsets) for t, bag in enumerate(self.bags)], 1)
        return self.model.predict(self.model.dense_arch(numerical), sparse)


def timed_steps(model, step_fn, batches, amp=None):
    parts = {"forward": [], "backward": [], "optimizer": []}
    for i, (x, c, y) in enumerate(batches[: WARMUP + STEPS]):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            logits = model(x, c)
        loss = F.binary_cross_entropy_with_logits(logits.float(), y)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        step_fn()
        t3 = time.perf_counter()
        if i >= WARMUP:
            parts["forward"].append(t1 - t0), parts["backward"].append(t2 - t1), parts["optimizer"].append(t3 - t2)
    return {k: statistics.median(v) for k, v in parts.items()}


def main():
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        spec = generate(d, rows=B * (WARMUP + STEPS), seed=0, cardinalities=SIZES, test_rows=B)
        reader = SplitBinaryReader(spec, "train", B, prefetch=0)
        t0 = time.perf_counter()
        batches = [(b.numerical.float(), b.categorical.long(), b.label.float()) for b in reader]
        data_s = (time.perf_counter() - t0) / len(batches)

    cfg = ModelConfig()
    ours = DLRM(13, SIZES, cfg, seed=0)
    opt = Optimizers(ours.dense_parameters(), [ours.sparse_arch.embedding.weight], OptimConfig(lr=0.01))
    opt.set_lr(0.01)

    def ours_step():
        opt.step()
        opt.zero_grad()

    ref = ReferenceStyle(DLRM(13, SIZES, cfg, seed=0))
    ref_params = list(ref.model.dense_arch.parameters()) + list(ref.model.over_arch.parameters()) + list(ref.bags.parameters())
    ref_opt = torch.optim.SGD(ref_params, lr=0.01)

    def ref_step():
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)

    theirs = timed_steps(ref, ref_step, batches)
    mine = timed_steps(ours, ours_step, batches)
    mine_bf16 = timed_steps(ours, ours_step, batches, amp=torch.bfloat16)
    t_ref, t_ours, t_bf16 = sum(theirs.values()), sum(mine.values()), sum(mine_bf16.values())
    print(f"threads: {torch.get_num_threads()}, batch {B}, 26 tables ({sum(SIZES):,} rows), dim 128")
    print(f"reference-style step, fp32: {B / t_ref:,.0f} samples/s (baseline)")
    print(f"dlrm-k8s step, fp32: {B / t_ours:,.0f} samples/s ({t_ref / t_ours:.2f}x baseline)")
    print(f"dlrm-k8s step, bf16 autocast (amp=bf16): {B / t_bf16:,.0f} samples/s ({t_ref / t_bf16:.2f}x baseline)")
    for k in mine:
        print(f"  {k}: ours fp32 {mine[k] * 1e3:.1f} ms, ours bf16 {mine_bf16[k] * 1e3:.1f} ms, "
              f"reference-style {theirs[k] * 1e3:.1f} ms")
    print(f"  data (read one batch, ids checked): {data_s * 1e3:.1f} ms ({B / data_s:,.0f} samples/s, "
          f"{data_s / t_bf16:.2f} of a bf16 step)")
    print(f"target: 2x the reference (facebookresearch/dlrm, ~10,000 samples/s here): "
          f"fp32 {t_ref / t_ours / 2:.2f}x target, bf16 {t_ref / t_bf16 / 2:.2f}x target")


if __name__ == "__main__":
    main()
