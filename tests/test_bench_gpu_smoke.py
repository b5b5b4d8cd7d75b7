"""The GPU benchmark's code path, on CPU and tiny: so the one H100 run works the first time."""
import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))

import bench_gpu  # noqa: E402

from dlrm.modules.model import InteractionArch  # noqa: E402


def test_padded_interaction_equals_the_unpadded():
    """The CUDA path pads the F + 1 vectors to 32 with zeros; the pairs read out must not change."""
    arch = InteractionArch(26, 16, "dot")
    dense, sparse = torch.randn(5, 16), torch.randn(5, 26, 16)
    plain = arch(dense, sparse)
    arch.pad_devices = ("cpu",)
    assert torch.allclose(arch(dense, sparse), plain, atol=1e-5)


def test_step_is_sgd_on_the_gathered_rows():
    """One step's table update equals SGD on the whole model's embedding gradient."""
    from dlrm.config import ModelConfig

    cfg = ModelConfig(embedding_dim=8, bottom_mlp=[8], top_mlp=[4])
    sizes = [5, 3, 7]
    step = bench_gpu.Step(sizes, cfg, torch.device("cpu"), amp=False, lr=0.1, compile_mode="off")
    numerical, ids, label = bench_gpu.make_batches(1, 16, sizes, torch.device("cpu"))[0]
    w = step.weight.clone().requires_grad_(True)
    emb = w[(ids + step.offsets).view(-1)].view(16, 3, 8)
    m = step.model
    logits = m.predict(m.dense_arch(numerical), emb)
    torch.nn.functional.binary_cross_entropy_with_logits(logits, label).backward()
    step((numerical, ids, label))
    assert torch.allclose(step.weight, w.detach() - 0.1 * w.grad, atol=1e-6)


def test_smoke_run_prints_figures_and_json():
    out = subprocess.run([sys.executable, "benchmarks/gpu/bench_gpu.py", "--device", "cpu", "--smoke", "--compile", "off"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert out.returncode == 0, out.stderr
    assert "amp-bf16 samples/s:" in out.stdout and "fp32-tf32 peak memory:" in out.stdout
    record = json.loads(out.stdout.strip().splitlines()[-1])
    assert [r["mode"] for r in record["results"]] == ["amp-bf16", "fp32-tf32"]
    assert all(r["samples_per_s"] > 0 and r["loss_last"] == r["loss_last"] for r in record["results"])


def test_pooled_step_is_row_wise_adagrad_on_the_pooled_gradient():
    """The DCNv2 multi-hot step: the table moves as row-wise Adagrad on the sum-pooled lookup's gradient."""
    from dlrm.config import ModelConfig

    cfg = ModelConfig(embedding_dim=4, bottom_mlp=[4], top_mlp=[4], interaction="dcn", dcn_num_layers=1, dcn_low_rank_dim=2)
    sizes, hot = [5, 3, 7], [2, 1, 3]
    step = bench_gpu.PooledStep(sizes, hot, cfg, torch.device("cpu"), amp=False, lr=0.1, compile_mode="off")
    numerical, ids, label = bench_gpu.make_batches(1, 8, sizes, torch.device("cpu"), hotness=hot)[0]
    assert ids.shape == (8, 6) and all(int(ids[:, c].max()) < n for c, n in enumerate([5, 5, 3, 7, 7, 7]))
    w = step.weight.detach().clone().requires_grad_(True)
    rows = ids + step.col_offsets
    emb = torch.stack([w[rows[:, 0:2]].sum(1), w[rows[:, 2]], w[rows[:, 3:6]].sum(1)], 1)  # [B, F, D]
    m = step.model
    torch.nn.functional.binary_cross_entropy_with_logits(m.predict(m.dense_arch(numerical), emb), label).backward()
    g = w.grad
    touched = g.abs().sum(1) > 0
    acc = g.pow(2).mean(1)
    expected = w.detach() - 0.1 * g / (acc.sqrt().unsqueeze(1) + 1e-8) * touched.unsqueeze(1)
    step((numerical, ids, label))
    assert torch.allclose(step.weight.detach(), expected, atol=1e-5)


def test_dcnv2_multi_hot_smoke_run_prints_figures_and_json():
    out = subprocess.run([sys.executable, "benchmarks/gpu/bench_gpu.py", "--device", "cpu", "--smoke", "--compile", "off",
                          "--shape", "mlperf-dcnv2", "--modes", "amp-bf16"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(ROOT), "PATH": "", "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert "shape: mlperf-dcnv2" in out.stdout and "multi-hot 214 ids a sample, dcn interaction" in out.stdout
    assert "amp-bf16 samples/s:" in out.stdout and "amp-bf16 peak memory:" in out.stdout
    record = json.loads(out.stdout.strip().splitlines()[-1])
    assert (record["shape"], record["ids_per_sample"], record["interaction"]) == ("mlperf-dcnv2", 214, "dcn")
    (r,) = record["results"]
    assert r["samples_per_s"] > 0 and r["loss_last"] == r["loss_last"] and r["update"].startswith("row-wise adagrad")


def test_mlperf_tables_are_scaled_to_fit_one_gpu():
    from dlrm.modules.tables import MLPERF_DCNV2_CARDINALITIES

    full = sum(MLPERF_DCNV2_CARDINALITIES) * 128 * 4
    sizes = bench_gpu.scaled_tables(MLPERF_DCNV2_CARDINALITIES, 128, 60)
    assert sum(sizes) * 128 * 4 <= 60 * 2**30 < full and min(sizes) >= 2
    assert bench_gpu.scaled_tables(MLPERF_DCNV2_CARDINALITIES, 128, 1000) == MLPERF_DCNV2_CARDINALITIES
