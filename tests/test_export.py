"""Export and predict: a checkpoint saved by 1 and by 4 ranks -> AOTInductor package -> the trainer's scores.

Parity, as stated in the README: on the test split, `dlrm predict` with the exported package gives
the AUC `dlrm eval` gives for the same checkpoint to 1e-6, every probability is within 1e-5
(absolute) of sigmoid(logit) of the trainer's own model loaded from the checkpoint and every logit
within 4e-5 (fp32 tables; fp16 tables: AUC 2e-3, probabilities 2e-3, logits 8e-3). Compiling a package
takes ~30-60 s on one CPU core, so the exports are shared.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch._inductor

from datasets import make_dataset
from test_dist_train import forked, ranks  # noqa: F401 (forked: the fork server fixture, used by name)
from dlrm.serving import folder as serving
from dlrm.io.checkpoint import Piece, latest_checkpoint, load_checkpoint
from dlrm.config import TrainConfig, from_dict, load_config
from dlrm.data.reader import SplitBinaryReader
from dlrm.data.spec import FeatureSpec
from dlrm.errors import UserError
from dlrm.serving.export import export
from dlrm.modules.model import DLRM
from dlrm.training.optim import Optimizers
from dlrm.io.storage import open_store
from dlrm.training.train import BUILTIN_CONFIGS, train

ROOT = Path(__file__).resolve().parents[1]
AUC_TOL, SCORE_TOL, SCORE_TOL_FP16 = 1e-6, 1e-5, 2e-3
COMMON = {"data.batch_size": 101, "data.eval_batch_size": 333, "max_steps": 20, "log_every": 5,
          "dist.device_memory": "1Gi", "dist.memory_reserve": "0", "optim.schedule_check": "warn"}


def overrides(dataset, out, **extra) -> list[str]:
    return [f"data.dataset={dataset}", f"out={out}"] + [f"{k}={v}" for k, v in dict(COMMON, **extra).items()]


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    make_dataset(root, rows=2100, test_rows=1000)
    return root


@pytest.fixture(scope="session")
def run1(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("w1") / "run"
    train(load_config(TrainConfig, files=[BUILTIN_CONFIGS / "tiny.yaml"], overrides=overrides(dataset, out)))
    return out


@pytest.fixture(scope="session")
def export1(run1, tmp_path_factory):
    out = tmp_path_factory.mktemp("exp1") / "model"
    export(str(run1 / "checkpoints"), out, triton=True, log=lambda m: None)
    return out


def trainer_eval(checkpoints: Path) -> dict:
    """`dlrm eval` of the checkpoint: the trainer's own exact AUC."""
    from dlrm.training import evaluate

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        evaluate.main(argparse.Namespace(checkpoints=str(checkpoints), name=None, dataset=None, max_batches=0))
    return json.loads(buf.getvalue())


def trainer_logits(checkpoints: Path) -> np.ndarray:
    """Logits of the test split from the trainer's model, loaded the way `dlrm eval` loads it."""
    uri, name = str(checkpoints), latest_checkpoint(str(checkpoints))
    meta = json.loads(open_store(uri).get_bytes(f"{name}/metadata.json"))
    cfg = from_dict(TrainConfig, meta["config"])
    spec = FeatureSpec.load(cfg.data.dataset)
    model = DLRM(len(spec.numerical), spec.table_sizes, cfg.model, seed=cfg.seed, hotness=spec.table_hotness,
                 padded=bool(spec.padded))
    opt = Optimizers(model.dense_parameters(), [model.sparse_arch.embedding.weight], cfg.optim)
    pieces = [Piece(n, 0, rows, int(off)) for n, rows, off in
              zip(spec.categorical, spec.table_sizes, model.sparse_arch.offsets.tolist())]
    _, dense = load_checkpoint(uri, name, weight=model.sparse_arch.embedding.weight.data,
                               row_state=opt.sparse.state_tensors(0), pieces=pieces)
    model.load_state_dict(dense["model"], strict=False)
    model.eval()
    with torch.no_grad():
        return torch.cat([model(b.numerical.float(), b.categorical)
                          for b in SplitBinaryReader(spec, "test", 333)]).numpy()


def predict_cli(model: Path, dataset: Path, scores: Path, *extra: str) -> dict:
    """`dlrm predict` in a fresh interpreter that must not import any training code."""
    code = ("import json, sys\n"
            "from dlrm.__main__ import main\n"
            "rc = main(sys.argv[1:])\n"
            "loaded = sorted(m for m in sys.modules if m in ('dlrm.modules.model', 'dlrm.training.train', 'dlrm.serving.export', "
            "'dlrm.io.checkpoint', 'dlrm.training.optim') or m.startswith('dlrm.dist'))\n"
            "assert not loaded, f'predict imported training code: {loaded}'\n"
            "sys.exit(rc)\n")
    proc = subprocess.run([sys.executable, "-c", code, "predict", "--model", str(model), "--dataset", str(dataset),
                           "--out", str(scores), "--batch-size", "256", *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_parity(checkpoints: Path, exported: Path, dataset: Path, tmp_path: Path, score_tol: float = SCORE_TOL,
                  auc_tol: float = AUC_TOL) -> None:
    ev = trainer_eval(checkpoints)
    result = predict_cli(exported, dataset, tmp_path / "scores.npy")
    assert result["rows"] == 1000 and result["written"] == "probabilities"
    assert abs(result["auc"] - ev["auc"]) <= auc_tol, (result, ev)
    want = trainer_logits(checkpoints)
    got = np.load(tmp_path / "scores.npy")
    assert got.dtype == np.float32 and got.shape == want.shape == (1000,)
    assert np.abs(got - 1 / (1 + np.exp(-want.astype(np.float64)))).max() <= score_tol
    from dlrm.serving.predict import predict

    logits, probs, labels, _ = predict(exported, dataset, batch_size=1000)
    assert np.array_equal(probs, got) or np.abs(probs - got).max() <= 1e-6  # batch size does not matter
    assert np.abs(logits - want).max() <= score_tol * 4, np.abs(logits - want).max()  # |dp/dlogit| <= 1/4
    assert ev["auc"] > 0.6  # the model learned something: parity between two constant models would prove little


@pytest.mark.slow
def test_single_rank_checkpoint_parity(run1, export1, dataset, tmp_path):
    assert_parity(run1 / "checkpoints", export1, dataset, tmp_path)


@pytest.mark.slow
def test_export_folder_is_self_describing(run1, export1, dataset):
    m = serving.load_manifest(export1)  # verifies every file's sha256
    assert m["packages"] == {"cpu": "model.pt2"} or set(m["packages"]) == {"cpu", "cuda"}
    assert m["checkpoint"]["name"] == "ckpt-000000020" and m["checkpoint"]["world_size"] == 1
    assert m["model"]["tables"] == {"cat_0.bin": 7, "cat_1.bin": 50, "cat_2.bin": 300, "cat_3.bin": 3, "cat_4.bin": 1000}
    assert set(m["files"]) >= {"model.pt2", "program.pt2", "feature_spec.yaml", "model.yaml", "triton/dlrm/config.pbtxt",
                               "triton/dlrm/1/model.pt2"}
    spec = FeatureSpec.load(export1 / "feature_spec.yaml")
    source = FeatureSpec.load(dataset)
    assert spec.categorical == source.categorical and spec.table_sizes == source.table_sizes
    assert spec.numerical == source.numerical and spec.sources == {}
    cfg = load_config(TrainConfig, files=[export1 / "model.yaml"])
    assert cfg.model.embedding_dim == 8 and cfg.model.top_mlp == [16]
    # the torch.export program alone: dynamic batch, same probabilities as the package
    program = torch.export.load(str(export1 / "program.pt2")).module()
    runner = torch._inductor.aoti_load_package(str(export1 / "model.pt2"))
    for b in (1, 2, 333, 4097):
        num = torch.rand(b, 4)
        cat = torch.stack([torch.randint(0, n, (b,), dtype=torch.int32) for n in source.table_sizes], 1)
        for a, p in zip(program(num, cat), runner(num, cat)):
            assert a.shape == p.shape == (b,) and torch.allclose(a, p, atol=1e-5)
    bad = torch.zeros(3, 5, dtype=torch.int32)
    bad[1, 0] = 7  # one past table cat_0.bin: in the fused weight that is table cat_1.bin's row 0
    with pytest.raises(RuntimeError, match="categorical id outside"):
        runner(torch.rand(3, 4), bad)


@pytest.mark.slow
def test_triton_repository(export1):
    config = (export1 / "triton/dlrm/config.pbtxt").read_text()
    for line in ['backend: "pytorch"', 'platform: "torch_aoti"', "max_batch_size: 4096", "dynamic_batching {",
                 'name: "INPUT__0"', "dims: [ 4 ]", "data_type: TYPE_INT32", "dims: [ 5 ]", 'name: "OUTPUT__1"',
                 "kind: KIND_CPU"]:
        assert line in config, line
    m = serving.load_manifest(export1)
    assert m["files"]["triton/dlrm/1/model.pt2"]["sha256"] == m["files"][m["packages"][m["triton"]["device"]]]["sha256"]


@pytest.mark.slow
def test_fp16_tables(run1, dataset, tmp_path):
    out = tmp_path / "fp16"
    export(str(run1 / "checkpoints"), out, table_dtype="fp16", log=lambda m: None)
    assert serving.load_manifest(out)["model"]["table_dtype"] == "fp16"
    program = torch.export.load(str(out / "program.pt2"))
    weights = [v for k, v in program.state_dict.items() if "embedding" in k]
    assert weights and all(w.dtype == torch.float16 for w in weights)
    assert_parity(run1 / "checkpoints", out, dataset, tmp_path, score_tol=SCORE_TOL_FP16, auc_tol=2e-3)


@pytest.mark.slow
@pytest.mark.dist
def test_four_rank_checkpoint_parity(dataset, forked, tmp_path):
    run = tmp_path / "run"
    ranks(forked, 4, overrides(dataset, run, **{"dist.sharding": "row"}))  # every table split over the 4 ranks
    meta = json.loads((run / "checkpoints/ckpt-000000020/metadata.json").read_text())
    holders = {}
    for fname, pieces in meta["files"].items():
        for p in pieces:
            holders.setdefault(p["table"], set()).add(fname)
    assert meta["world_size"] == 4 and len(holders) == 5 and all(len(h) >= 2 for h in holders.values()), holders
    out = tmp_path / "model"
    proc = subprocess.run([sys.executable, "-m", "dlrm", "export", "--checkpoints", str(run / "checkpoints"),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "saved by 4 ranks" in proc.stdout
    assert proc.stderr == "", proc.stderr[-4000:]  # torch's warnings nobody can act on are silenced (issue 28)
    assert_parity(run / "checkpoints", out, dataset, tmp_path)


# -- the output folder: all or nothing -------------------------------------------------------------------


@pytest.mark.slow
def test_failed_export_leaves_nothing(run1, tmp_path, monkeypatch):
    import dlrm.serving.export as ex

    def boom(program, path):
        path.write_bytes(b"half a package")
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(ex, "compile_package", boom)
    with pytest.raises(OSError):
        export(str(run1 / "checkpoints"), tmp_path / "model", log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_reexport_replaces_an_export_but_nothing_else(run1, export1, tmp_path):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not an export"):
        export(str(run1 / "checkpoints"), other, log=lambda m: None)
    assert (other / "keep.txt").read_text() == "mine"
    # an earlier export is replaced whole (stale files from it do not survive)
    target = tmp_path / "model"
    shutil.copytree(export1, target)
    (target / "stale.txt").write_text("old")
    import dlrm.serving.export as ex

    ex.publish(_fresh_copy(export1, tmp_path), target)
    assert not (target / "stale.txt").exists() and serving.is_export(target)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _fresh_copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / ".model.partial-test"
    shutil.copytree(src, dst)
    return dst


@pytest.mark.slow
def test_predict_refuses_a_changed_package(export1, dataset, tmp_path):
    from dlrm.serving.predict import predict

    copy = tmp_path / "model"
    shutil.copytree(export1, copy)
    blob = bytearray((copy / "model.pt2").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (copy / "model.pt2").write_bytes(bytes(blob))
    with pytest.raises(UserError, match=r"model\.pt2: sha256 differs"):
        predict(copy, dataset)


@pytest.mark.slow
def test_multi_hot_dcn_checkpoint_parity(tmp_path):
    """DLRM-DCNv2 (interaction=dcn: low-rank cross layers) on multi-hot features (sum-pooled, one
    padded with -1), MLPerf's model shape, tiny, exports and scores like the trainer. (One-hot DCN is
    no separate case: the export sees the same cross layers, and one-hot features are export1's.)"""
    data = tmp_path / "ds"
    make_dataset(data, rows=2100, test_rows=1000, hotness=[3, 1, 4, 2, 5], padded=[False, False, True, False, False])
    run = tmp_path / "run"
    train(load_config(TrainConfig, files=[BUILTIN_CONFIGS / "tiny.yaml"], overrides=overrides(
        data, run, **{"model.interaction": "dcn", "model.dcn_num_layers": 2, "model.dcn_low_rank_dim": 4})))
    out = tmp_path / "model"
    manifest = export(str(run / "checkpoints"), out, triton=True, log=lambda m: None)
    assert manifest["model"]["interaction"] == "dcn"
    assert any("crossnet" in k for k in torch.export.load(str(out / "program.pt2")).state_dict)
    assert manifest["inputs"][1]["shape"] == [-1, 15] and manifest["model"]["padded"] == ["cat_2.bin"]
    assert "dims: [ 15 ]" in (out / "triton/dlrm/config.pbtxt").read_text()
    assert FeatureSpec.load(out / "feature_spec.yaml").hotness == {"cat_0.bin": 3, "cat_2.bin": 4, "cat_3.bin": 2,
                                                                    "cat_4.bin": 5}
    assert_parity(run / "checkpoints", out, data, tmp_path)


# -- waiting for the trainer (the launcher's export Job) ------------------------------------------------


def test_wait_for_run_follows_the_metrics_log(tmp_path):
    from dlrm.serving.export import run_finished, wait_for_run

    run = tmp_path / "run"
    run.mkdir()
    assert not run_finished(run)  # not started
    log = run / "metrics.jsonl"
    log.write_text('{"kind": "train", "step": 5}\n{"kind": "summary", "step": 5}\n')
    assert run_finished(run)
    log.write_text(log.read_text() + '{"kind": "train", "step": 6}\n')  # restarted: running again
    assert not run_finished(run)
    log.write_text(log.read_text() + '{"kind": "summ')  # a record being written
    assert not run_finished(run)
    looks = []

    def sleep(s):  # the trainer finishes while export waits
        looks.append(s)
        if len(looks) == 3:
            log.write_text('{"kind": "summary", "step": 9}\n')

    wait_for_run(run, poll_s=7, log=lambda m: None, sleep=sleep)
    assert looks == [7, 7, 7]
    log.write_text('{"kind": "train", "step": 10}\n')
    with pytest.raises(UserError, match="did not finish within"):
        wait_for_run(run, timeout_s=0.05, poll_s=0.01, log=lambda m: None)
