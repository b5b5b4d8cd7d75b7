"""Export and predict outputs on S3 (moto), a killed export's leftovers, and NaN never published or scored.

One export is compiled (to s3://, ~30-60 s on one core); every other case reuses it or fails before
compiling.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import numpy as np
import pytest
import torch

from datasets import make_dataset
from dlrm.config import TrainConfig, load_config
from dlrm.errors import UserError
from dlrm.serving import folder as serving
from dlrm.serving import publish as pub
from dlrm.serving.export import export
from dlrm.training.train import BUILTIN_CONFIGS, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    make_dataset(root, rows=1024, test_rows=256)
    out = tmp_path_factory.mktemp("run") / "run"
    train(load_config(TrainConfig, files=[BUILTIN_CONFIGS / "tiny.yaml"],
                      overrides=[f"data.dataset={root}", f"out={out}", "max_steps=4", "checkpoint_every=2",
                                 "data.batch_size=64", "optim.schedule_check=warn"]))
    return out, root


@pytest.fixture
def client(s3_env, s3_endpoint):
    return boto3.client("s3", endpoint_url=s3_endpoint)


def keys(client, bucket, prefix):
    return sorted(o["Key"][len(prefix) + 1:] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
                  .get("Contents", []))


def test_export_to_s3_then_predict_from_and_to_s3(run, s3_bucket, client, tmp_path, capsys):
    run_dir, dataset = run
    uri = f"s3://{s3_bucket}/models/m1"
    manifest = export(str(run_dir / "checkpoints"), uri, log=lambda m: None)
    assert not list(tmp_path.parent.glob("s3:*")) and not Path("s3:").exists()  # no local './s3:' folder
    got = keys(client, s3_bucket, "models/m1")
    assert serving.MANIFEST in got and pub.PARTIAL_MARKER not in got
    assert set(got) == set(manifest["files"]) | {serving.MANIFEST}

    from dlrm.serving import predict

    args = argparse.Namespace(model=uri, dataset=str(dataset), split="test", out=f"s3://{s3_bucket}/scores/p.npy",
                              logits=False, batch_size=128, device="cpu")
    assert predict.main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["rows"] == 256 and 0.5 < result["auc"] <= 1 and result["out"] == args.out
    local = tmp_path / "p.npy"
    client.download_file(s3_bucket, "scores/p.npy", str(local))
    scores = np.load(local)
    assert scores.shape == (256,) and scores.dtype == np.float32 and np.isfinite(scores).all()

    # a second export onto it replaces the first whole: a stale object does not survive, manifest last
    client.put_object(Bucket=s3_bucket, Key="models/m1/stale.txt", Body=b"old")
    copy = tmp_path / "copy"
    with pub.fetched(uri) as folder:
        shutil.copytree(folder, copy)
    check_nan_fails_the_self_check(copy / "model.pt2", dataset)
    pub.publish(copy, uri, log=lambda m: None)
    got = keys(client, s3_bucket, "models/m1")
    assert "stale.txt" not in got and serving.MANIFEST in got and pub.PARTIAL_MARKER not in got

    # bit rot on S3 is named by its URI, not by the temporary copy predict verifies
    blob = bytearray(client.get_object(Bucket=s3_bucket, Key="models/m1/model.pt2")["Body"].read())
    blob[len(blob) // 2] ^= 0xFF
    client.put_object(Bucket=s3_bucket, Key="models/m1/model.pt2", Body=bytes(blob))
    with pytest.raises(UserError, match=rf"^{uri}/model\.pt2: sha256 differs from {uri}/manifest\.json"):
        predict.main(args)


def check_nan_fails_the_self_check(package: Path, dataset: Path) -> None:
    """NaN - NaN is NaN and max() skips it: the self-check must fail, not pass, on a NaN model."""
    from dlrm.data.spec import FeatureSpec
    from dlrm.serving.export import self_check

    class NaNModel(torch.nn.Module):
        def forward(self, numerical, categorical):
            nan = torch.full((numerical.shape[0],), float("nan"))
            return nan, nan

    with pytest.raises(UserError, match=r"the exported model's logit is not finite \(NaN/inf\) on valid inputs"):
        self_check(package, NaNModel(), FeatureSpec.load(dataset), 1e-5)


def test_s3_out_that_is_not_an_export_is_refused(s3_bucket, client):
    client.put_object(Bucket=s3_bucket, Key="data/notes.txt", Body=b"mine")
    with pytest.raises(UserError, match=rf"s3://{s3_bucket}/data: holds 1 objects and no manifest\.json "
                                        r"\(not an export\); refusing to replace them"):
        pub.check_out(f"s3://{s3_bucket}/data")
    # an upload killed half way (marker, no manifest) is ours: replaced, not refused
    client.put_object(Bucket=s3_bucket, Key=f"half/{pub.PARTIAL_MARKER}", Body=b"{}")
    client.put_object(Bucket=s3_bucket, Key="half/model.pt2", Body=b"x")
    pub.check_out(f"s3://{s3_bucket}/half")
    with pytest.raises(UserError, match=r"half: no manifest\.json; not a finished `dlrm export` folder"):
        with pub.fetched(f"s3://{s3_bucket}/half"):
            pass


def test_killed_export_leftovers_are_cleaned_foreign_folders_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()  # a pid that has exited
    stale = tmp_path / f".model.partial-{dead}"
    (stale / "sub").mkdir(parents=True)
    live = tmp_path / f".model.partial-{os.getppid()}"  # a live process: a concurrent export
    live.mkdir()
    foreign = [tmp_path / ".model.partial-notes", tmp_path / f".other.partial-{dead}"]
    for f in foreign:
        f.mkdir()
    logs = []
    tmp = pub.staging(tmp_path / "model", log=logs.append)
    assert not stale.exists() and live.exists() and all(f.exists() for f in foreign)
    assert logs == [f"export: removed {stale}, left by an export (pid {dead}) that was killed"]
    assert tmp.name == f".model.partial-{os.getpid()}" and tmp.is_dir()
    pub.discard(tmp)

    # killed between its two renames: the earlier export is put back, not deleted
    old = tmp_path / f".model.old-{dead}"
    old.mkdir()
    (old / serving.MANIFEST).write_text("{}")
    logs.clear()
    pub.discard(pub.staging(tmp_path / "model", log=logs.append))
    assert serving.is_export(tmp_path / "model") and not old.exists()
    assert logs and logs[0].startswith(f"export: restored {tmp_path / 'model'} from .model.old-{dead}")


def test_export_refuses_non_finite_weights(run, tmp_path, monkeypatch):
    import dlrm.serving.export as ex

    run_dir, _ = run
    real = ex.whole_tables

    def nan_tables(uri, name):
        tables, dense = real(uri, name)
        first = next(iter(tables))
        tables[first][3, 1] = float("nan")
        return tables, dense

    monkeypatch.setattr(ex, "whole_tables", nan_tables)
    with pytest.raises(UserError, match=r"ckpt-000000004: table cat_0\.bin holds 1 non-finite values \(NaN/inf\) "
                                        r"of \d+: the run diverged before this checkpoint; export an earlier one "
                                        r"\(--name ckpt-000000002\)"):
        export(str(run_dir / "checkpoints"), tmp_path / "model", log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_predict_refuses_nan_scores(tmp_path, monkeypatch, capsys):
    from dlrm.serving import predict

    logits = np.array([0.1, np.nan, 0.3, np.inf, 0.2], np.float32)
    monkeypatch.setattr(predict, "predict", lambda *a, **k: (logits, logits, np.array([1, 0, 1, 0, 1], bool), 0.1))
    args = argparse.Namespace(model=str(tmp_path), dataset=str(tmp_path), split="test", out=str(tmp_path / "s.npy"),
                              logits=False, batch_size=128, device="cpu")
    with pytest.raises(UserError, match=r"2 of 5 rows of test scored NaN/inf; .*no AUC reported, nothing written"):
        predict.main(args)
    assert not (tmp_path / "s.npy").exists() and capsys.readouterr().out == ""
