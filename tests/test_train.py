"""End-to-end single-process training: learning, metrics, plot, checkpoint/resume equality."""
import json

import pytest
import torch

from dlrm.io.checkpoint import complete_checkpoints, latest_checkpoint
from dlrm.io.storage import open_store
from dlrm.training.train import train
from datasets import make_dataset, tiny_config


tiny = tiny_config


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    make_dataset(root, rows=8192, test_rows=4096)
    return root


def test_trains_to_auc_well_above_half(tmp_path, dataset):
    s = train(tiny(tmp_path, dataset, epochs=3, plot="true", eval_every=32))
    assert s["auc"] > 0.70, s
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    kinds = {r["kind"] for r in recs}
    assert kinds == {"train", "eval", "summary"}
    first = next(r for r in recs if r["kind"] == "train")
    assert set(first) >= {"step", "loss", "lr", "samples_per_s"}
    assert (tmp_path / "run" / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "run" / "config.yaml").exists()


def model_state(run_dir):
    name = latest_checkpoint(str(run_dir / "checkpoints"))
    blob = torch.load(run_dir / "checkpoints" / name / "rank-0.pt", weights_only=True)
    dense = torch.load(run_dir / "checkpoints" / name / "dense.pt", weights_only=True)
    return blob["weight"], dense["model"], blob["row_state"]


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, dataset, optimizer):
    # 8192 rows / 256 = 32 batches per epoch; 2 epochs = 64 steps. Stop at 45 (mid-epoch 2), resume.
    common = dict(epochs=2, checkpoint_every=15, **{"optim.optimizer": optimizer, "optim.lr": 0.05 if optimizer == "adagrad" else 0.5})
    a = tmp_path / "a"
    train(tiny(a, dataset, **common))
    b = tmp_path / "b"
    train(tiny(b, dataset, max_steps=45, **common))
    assert latest_checkpoint(str(b / "run" / "checkpoints")) == "ckpt-000000045"
    s = train(tiny(b, dataset, resume="true", **common))
    assert s["step"] == 64
    wa, da, sa = model_state(a / "run")
    wb, db, sb = model_state(b / "run")
    assert torch.equal(wa, wb)
    assert all(torch.equal(da[k], db[k]) for k in da)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_incomplete_checkpoint_is_ignored(tmp_path, dataset):
    run = tmp_path / "run"
    train(tiny(tmp_path, dataset, max_steps=10, checkpoint_every=5))
    ckpts = run / "checkpoints"
    assert complete_checkpoints(open_store(ckpts)) == ["ckpt-000000005", "ckpt-000000010"]
    # a kill while step 15's checkpoint was written: rank file present, metadata missing
    (ckpts / "ckpt-000000015").mkdir()
    (ckpts / "ckpt-000000015" / "rank-0.pt").write_bytes(b"half a file")
    assert latest_checkpoint(str(ckpts)) == "ckpt-000000010"
    s = train(tiny(tmp_path, dataset, max_steps=12, resume="true", checkpoint_every=5))
    assert s["step"] == 12


def test_target_auc_stops_early(tmp_path, dataset):
    s = train(tiny(tmp_path, dataset, epochs=3, eval_every=4, target_auc=0.55))
    assert s["step"] < 96 and s["auc"] >= 0.55


def test_cli_reports_bad_dataset(tmp_path, capsys):
    from dlrm.__main__ import main

    rc = main(["train", "--config", "tiny", "--dataset", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "feature_spec.yaml" in err and "Traceback" not in err


def test_eval_command_matches_training_auc(tmp_path, dataset, capsys):
    """With amp auto (bf16 on an AMX CPU, else fp32): the choice is printed once, and eval makes the same one."""
    from dlrm.__main__ import main
    from dlrm.training.precision import auto_amp

    s = train(tiny(tmp_path, dataset, max_steps=20, amp="auto"))
    chosen = [line for line in capsys.readouterr().out.splitlines() if line.startswith("amp auto:")]
    assert chosen == ["amp auto: {} ({})".format(*auto_amp(torch.device("cpu")))]
    assert main(["eval", "--checkpoints", str(tmp_path / "run" / "checkpoints")]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["step"] == 20 and out["auc"] == pytest.approx(s["auc"], abs=1e-9)


def test_checkpoints_on_s3_resume_to_the_same_weights(tmp_path, dataset, s3_bucket):
    """checkpoint_dir=s3://...: metadata written last there too, and --resume finds the latest complete one."""
    import boto3

    uri = f"s3://{s3_bucket}/run/ckpt"
    common = dict(max_steps=30, checkpoint_every=10, checkpoint_dir=uri)
    b = tmp_path / "b"
    train(tiny(b, dataset, **{**common, "max_steps": 20}))
    keys = sorted(o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket)["Contents"])
    assert "run/ckpt/ckpt-000000020/metadata.json" in keys and "run/ckpt/ckpt-000000020/rank-0.pt" in keys
    assert latest_checkpoint(uri) == "ckpt-000000020"
    s = train(tiny(b, dataset, resume="true", **common))
    assert s["step"] == 30
    a = tmp_path / "a"
    sa = train(tiny(a, dataset, max_steps=30, checkpoint_every=10))
    wa, da, _ = model_state(a / "run")
    blob_key = f"run/ckpt/{latest_checkpoint(uri)}/rank-0.pt"
    local = tmp_path / "s3-rank-0.pt"
    boto3.client("s3").download_file(s3_bucket, blob_key, str(local))
    assert torch.equal(torch.load(local, weights_only=True)["weight"], wa)
    assert s["auc"] == pytest.approx(sa["auc"], abs=1e-12)


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path, dataset):
    """compile=true compiles the MLPs in place: the same losses (to float rounding) and checkpoint keys."""
    eager = train(tiny(tmp_path / "e", dataset, max_steps=6))
    compiled = train(tiny(tmp_path / "c", dataset, max_steps=6, compile="true"))
    assert compiled["auc"] == pytest.approx(eager["auc"], abs=1e-4)
    _, de, _ = model_state(tmp_path / "e" / "run")
    _, dc, _ = model_state(tmp_path / "c" / "run")
    assert de.keys() == dc.keys()
    assert all(torch.allclose(de[k], dc[k], atol=1e-5) for k in de)


def test_dcn_trains_and_resumes(tmp_path, dataset):
    """DLRM-DCNv2 (Adagrad, as MLPerf) learns; its cross layers are checkpointed and resumed exactly."""
    common = {"model.interaction": "dcn", "model.dcn_num_layers": 2, "model.dcn_low_rank_dim": 4,
              "optim.optimizer": "adagrad", "optim.lr": 0.05, "optim.warmup_steps": 0, "optim.decay_steps": 0,
              "epochs": 2, "checkpoint_every": 20}
    a = tmp_path / "a"
    s = train(tiny(a, dataset, **common))
    assert s["auc"] > 0.70, s
    b = tmp_path / "b"
    train(tiny(b, dataset, max_steps=40, **common))
    train(tiny(b, dataset, resume="true", **common))
    wa, da, _ = model_state(a / "run")
    wb, db, _ = model_state(b / "run")
    assert any(k.startswith("interaction_arch.crossnet.U") for k in da)
    assert torch.equal(wa, wb) and all(torch.equal(da[k], db[k]) for k in da)


def test_evals_per_epoch_is_mlperfs_every_fraction_of_an_epoch(tmp_path, dataset):
    # 8192 rows / 256 = 32 batches: 4 evaluations per epoch at steps 8, 16, 24, 32
    train(tiny(tmp_path, dataset, evals_per_epoch=4, max_steps=32))
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r["kind"] == "eval"] == [8, 16, 24, 32]
    with pytest.raises(Exception, match="both set"):
        tiny(tmp_path, dataset, evals_per_epoch=4, eval_every=3).validate()


def test_dcn_multi_hot_trains_and_dlrm_eval_reads_its_checkpoint(tmp_path, capsys):
    """Multi-hot (and padded) features train end to end; `dlrm eval` rebuilds the pooled tables
    from the checkpoint and finds the run's own final AUC."""
    from dlrm.__main__ import main
    from datasets import make_dataset

    ds = tmp_path / "mh"
    make_dataset(ds, rows=4096, test_rows=1024, hotness=[3, 1, 4, 2, 5], padded=[False, False, True, False, False])
    s = train(tiny(tmp_path, ds, **{"model.interaction": "dcn", "model.dcn_low_rank_dim": 4, "optim.optimizer": "adagrad",
                                     "optim.lr": 0.05, "optim.warmup_steps": 0, "optim.decay_steps": 0, "epochs": 2}))
    assert s["auc"] > 0.65, s
    capsys.readouterr()
    assert main(["eval", "--checkpoints", str(tmp_path / "run" / "checkpoints")]) == 0
    assert abs(json.loads(capsys.readouterr().out)["auc"] - s["auc"]) < 1e-6
