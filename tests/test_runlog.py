"""The run's output (dlrm.training.runlog): progress lines, strict-JSON metrics, TensorBoard events, the run
record, uploads to S3 (moto) at start, eval, interval and end; the schedule fit check; and the
launcher's reading side (launcher.results: status lines, fetch)."""
from __future__ import annotations

import json
import math

import boto3
import pytest

from dlrm.config import OptimConfig, TrainConfig, load_config
from dlrm.errors import ConfigError, UserError
from dlrm.training.runlog import RunLog, duration
from dlrm.training.schedule import check_schedule, fitted_schedule, learning_rate
from dlrm.training.train import BUILTIN_CONFIGS, train
from datasets import make_dataset
from launcher.results import fetch, status_lines, summarize


class FakePlan:
    def to_dict(self):
        return {"world_size": 1, "shards": []}


def keys(bucket: str, prefix: str) -> list[str]:
    resp = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"][len(prefix):] for o in resp.get("Contents", []))


def s3_text(bucket: str, key: str) -> str:
    return boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read().decode()


# ---------------------------------------------------------------------------------------------
# progress lines and metrics


def test_progress_eval_and_checkpoint_lines_are_plain_and_metrics_strict_json(tmp_path, capsys):
    cfg = TrainConfig(out=str(tmp_path / "run"))
    log = RunLog(cfg.out, enabled=True, total_steps=1000, epochs=2, tensorboard=False)
    log.start(cfg, FakePlan(), world_size=1, device="cpu")
    log.train(step=100, epoch=0, loss=0.5, lr=0.25, samples_per_s=12345.6)
    log.eval(100, math.nan, math.inf, 1.5)  # one class in the test split: AUC nan
    log.checkpoint("ckpt-000000100", "s3://b/run/checkpoints", 2.25)
    summary = log.finish({"kind": "summary", "step": 100, "auc": math.nan, "loss": 0.5}, plot=True)
    out = capsys.readouterr().out
    assert "\r" not in out
    step, ev, ck = out.splitlines()
    assert step.startswith("step   100/1,000 ( 10.0%) | epoch 1/2 | loss 0.50000 | lr 0.25 | 12,346 samples/s | elapsed ")
    assert "ETA " in step
    assert ev == "eval at step 100/1,000 | AUC undefined (one class in the test split) | loss inf | 1.5s"
    assert ck == "checkpoint ckpt-000000100 written in 2.2s to s3://b/run/checkpoints"
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in metrics.jsonl")) for line in lines]
    assert [r["kind"] for r in records] == ["train", "eval", "summary"]
    assert records[0]["total_steps"] == 1000 and records[1]["auc"] is None and records[1]["loss"] is None
    assert summary["metrics"] == str(tmp_path / "run" / "metrics.jsonl") and summary["plot"].endswith("metrics.png")
    assert (tmp_path / "run" / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert set(record) >= {"job", "train_config_sha256", "dataset", "plan", "torch", "world_size"}


def test_other_ranks_write_and_print_nothing(tmp_path, capsys):
    log = RunLog(str(tmp_path / "run"), enabled=False, total_steps=10)
    log.start(TrainConfig(), FakePlan(), 2, "cpu")
    log.train(step=5, epoch=0, loss=0.1, lr=0.1, samples_per_s=1.0)
    log.eval(5, 0.7, 0.1, 0.1)
    log.finish({"kind": "summary", "step": 5}, plot=True)
    assert capsys.readouterr().out == "" and not (tmp_path / "run").exists()


def test_duration():
    assert duration(12.7) == "0:00:12" and duration(3723) == "1:02:03" and duration(93784) == "1d 2:03:04"


# ---------------------------------------------------------------------------------------------
# S3 output


def test_s3_output_uploads_at_start_eval_and_end_and_a_restart_continues(tmp_path, s3_bucket, capsys):
    pytest.importorskip("tensorboard")
    out = f"s3://{s3_bucket}/runs/a"
    cfg = TrainConfig(out=out)
    log = RunLog(out, enabled=True, total_steps=100, sync_every_s=3600)
    log.start(cfg, FakePlan(), 1, "cpu")
    started = keys(s3_bucket, "runs/a/")  # a bad bucket fails here, before training
    assert started[:2] == ["config.yaml", "run.json"] and "metrics.jsonl" not in started
    log.train(step=10, epoch=0, loss=0.7, lr=0.1, samples_per_s=100.0)
    assert "metrics.jsonl" not in keys(s3_bucket, "runs/a/")  # the interval has not passed
    log.eval(10, 0.6, 0.69, 0.2)
    uploaded = keys(s3_bucket, "runs/a/")
    assert "metrics.jsonl" in uploaded and any(k.startswith("tensorboard/events.out.tfevents.") for k in uploaded)
    assert [json.loads(x)["kind"] for x in s3_text(s3_bucket, "runs/a/metrics.jsonl").splitlines()] == ["train", "eval"]
    log.sync_every_s = 0  # every progress line uploads from now on
    log.train(step=20, epoch=0, loss=0.6, lr=0.1, samples_per_s=100.0)
    assert len(s3_text(s3_bucket, "runs/a/metrics.jsonl").splitlines()) == 3
    staging = log.local
    log.close()  # a process that ends here (killed after its last upload, say)
    assert not staging.exists()

    again = RunLog(out, enabled=True, total_steps=100, first_step=20)  # a restart: what was logged comes back
    again.start(cfg, FakePlan(), 1, "cpu")
    again.train(step=30, epoch=0, loss=0.5, lr=0.1, samples_per_s=100.0)
    again.finish({"kind": "summary", "step": 30, "auc": 0.7}, plot=True)
    records = [json.loads(x) for x in s3_text(s3_bucket, "runs/a/metrics.jsonl").splitlines()]
    assert [r["step"] for r in records] == [10, 10, 20, 30, 30] and records[-1]["kind"] == "summary"
    assert {"metrics.png", "config.yaml", "run.json"} <= set(keys(s3_bucket, "runs/a/"))
    capsys.readouterr()

    # the launcher's side: the numbers for `status`, the files for `results`
    lines = status_lines(out)
    assert lines[0] == f"run output {out}:"
    assert lines[1].startswith("  step 30/100 (30.0%) | epoch 1 | loss 0.50000 | lr 0.1 | 100 samples/s, logged ")
    assert lines[2] == "  eval at step 10: AUC 0.6000 | loss 0.69000"
    assert lines[3].startswith("  finished at step 30: AUC 0.7000")
    files = fetch(out, tmp_path / "fetched")
    names = {f.relative_to(tmp_path / "fetched").as_posix() for f in files}
    assert {"config.yaml", "run.json", "metrics.jsonl", "metrics.png"} <= names
    assert any(n.startswith("tensorboard/events.out.tfevents.") for n in names)
    assert (tmp_path / "fetched" / "metrics.jsonl").read_text() == s3_text(s3_bucket, "runs/a/metrics.jsonl")


def test_failed_upload_mid_run_is_a_warning_and_retried(tmp_path, s3_bucket, capsys):
    out = f"s3://{s3_bucket}/runs/b"
    log = RunLog(out, enabled=True, total_steps=100, sync_every_s=0, tensorboard=False)
    log.start(TrainConfig(out=out), FakePlan(), 1, "cpu")
    real = log.store.put_file
    log.store.put_file = lambda *a: (_ for _ in ()).throw(UserError("access denied to s3://..."))
    log.train(step=1, epoch=0, loss=0.7, lr=0.1, samples_per_s=1.0)
    assert "warning: uploading the run's output to " in capsys.readouterr().err
    log.store.put_file = real
    log.train(step=2, epoch=0, loss=0.7, lr=0.1, samples_per_s=1.0)
    assert len(s3_text(s3_bucket, "runs/b/metrics.jsonl").splitlines()) == 2
    log.store.put_file = lambda *a: (_ for _ in ()).throw(UserError("access denied"))
    with pytest.raises(UserError, match="access denied"):  # the last upload is not optional
        log.finish({"kind": "summary", "step": 2}, plot=False)


def test_status_and_fetch_of_nothing(tmp_path, s3_bucket):
    assert status_lines(str(tmp_path / "none")) == [f"run output {tmp_path / 'none'}:", "  no metrics logged yet"]
    assert status_lines(None)[0].startswith("run output: /output inside the pods")
    with pytest.raises(UserError, match="no run output there"):
        fetch(f"s3://{s3_bucket}/nothing", tmp_path / "x")
    assert summarize([{"kind": "train", "step": 3, "loss": None}])[0].startswith("step 3 | epoch 1 | loss - |")


# ---------------------------------------------------------------------------------------------
# the trainer end to end with out=s3://


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    make_dataset(root, rows=4096, test_rows=2048)
    (root / "_manifest.json").write_text('{"files": []}\n')  # as `launcher data push` leaves it
    return root


def test_training_into_s3_leaves_the_run_there(tmp_path, dataset, s3_bucket, monkeypatch, capsys):
    pytest.importorskip("tensorboard")
    monkeypatch.setenv("DLRM_JOB_NAME", "smoke")
    monkeypatch.setenv("DLRM_IMAGE", "registry/dlrm-k8s-train@sha256:" + "ab" * 32)
    monkeypatch.setenv("DLRM_JOB_CONFIG_SHA256", "c" * 64)
    monkeypatch.setenv("DLRM_JOB_DATASET", "s3://datasets/tiny")
    out = f"s3://{s3_bucket}/runs/t"
    cfg = load_config(TrainConfig, files=[BUILTIN_CONFIGS / "tiny.yaml"],
                      overrides=[f"data.dataset={dataset}", f"out={out}", "max_steps=12", "log_every=4",
                                 "eval_every=8", "checkpoint_every=6", "plot=true"])
    s = train(cfg)
    printed = capsys.readouterr().out
    assert "step  4/12 ( 33.3%) | epoch 1/1 |" in printed and "eval at step 8/12 | AUC" in printed
    assert "checkpoint ckpt-000000006 written in" in printed
    assert s["metrics"] == f"{out}/metrics.jsonl" and s["plot"] == f"{out}/metrics.png"
    names = keys(s3_bucket, "runs/t/")
    assert {"config.yaml", "run.json", "metrics.jsonl", "metrics.png", "checkpoints/ckpt-000000012/metadata.json"} <= set(names)
    assert any(n.startswith("tensorboard/") for n in names)
    record = json.loads(s3_text(s3_bucket, "runs/t/run.json"))
    assert record["job"]["name"] == "smoke" and record["job"]["config_sha256"] == "c" * 64
    assert record["job"]["image_digest"] == "sha256:" + "ab" * 32 and record["job"]["git_revision"]
    import hashlib

    assert record["dataset"]["manifest_sha256"] == hashlib.sha256(b'{"files": []}\n').hexdigest()
    assert record["train_config_sha256"] == hashlib.sha256(s3_text(s3_bucket, "runs/t/config.yaml").encode()).hexdigest()
    assert record["plan"]["world_size"] == 1 and record["torch"] and record["ranks_per_node"] == 1
    # what render and submit read back as the run's identity (launcher.output_check) is the job's
    import yaml

    from launcher.config import JobConfig
    from launcher.output_check import recorded_identity
    from launcher.run_identity import identity

    job = JobConfig(name="smoke", dataset="s3://datasets/tiny", train=cfg)
    config = yaml.safe_load(s3_text(s3_bucket, "runs/t/config.yaml"))
    assert recorded_identity(record, config, list(identity(job))) == identity(job)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = tmp_path / "tb"
    fetch(out, events)
    acc = EventAccumulator(str(events / "tensorboard"))
    acc.Reload()
    assert {"train/loss", "train/lr", "train/samples_per_s", "eval/auc", "eval/loss"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("train/loss")] == [4, 8, 12]


# ---------------------------------------------------------------------------------------------
# the schedule must fit the run


def test_nvidia_schedule_on_a_small_dataset_is_refused_naming_the_fix():
    with pytest.raises(ConfigError) as e:
        check_schedule(OptimConfig(), 293, "epochs=1 x 293 batches")
    msg = str(e.value)
    assert "optim.warmup_steps=8,000" in msg and "293 steps (epochs=1 x 293 batches)" in msg
    assert "--config demo" in msg and "--set optim.warmup_steps=18" in msg and "optim.schedule_check=warn" in msg
    warned = check_schedule(OptimConfig(schedule_check="warn"), 293, "x")
    assert len(warned) == 1 and "optim.warmup_steps=8,000" in warned[0]


def test_schedule_warnings_for_a_decay_that_never_starts_or_ends():
    (never,) = check_schedule(OptimConfig(), 20000, "max_steps=20,000")
    assert "optim.decay_start_step=48,000" in never and "never decays" in never
    # NVIDIA's own recipe on Criteo 1TB FL15 (64,013 steps of 65,536): decay is cut short, said, not refused
    (short,) = check_schedule(OptimConfig(), 64013, "epochs=1 x 64,013 batches")
    assert "end after the run's last step" in short and "not optim.decay_end_lr=0" in short
    (warm,) = check_schedule(OptimConfig(warmup_steps=10, decay_steps=0), 8, "x")  # past half the warmup: told only
    assert "optim.warmup_steps=10" in warm
    (idle,) = check_schedule(OptimConfig(warmup_steps=5, decay_start_step=100, decay_steps=50), 200, "max_steps=200")
    assert "lr to 0 at step 150" in idle and "last 50 steps learn nothing" in idle
    assert check_schedule(OptimConfig(**fitted_schedule(293)), 293, "x") == []


def test_demo_config_fits_the_demo_run():
    cfg = load_config(TrainConfig, files=[BUILTIN_CONFIGS / "demo.yaml"])
    assert check_schedule(cfg.optim, 1758, "x") == []
    fit = OptimConfig(lr=1.0, **fitted_schedule(293))
    assert learning_rate(fit.warmup_steps, fit) == 1.0 and learning_rate(292, fit) < 0.01


def test_tensorboard_reads_the_events_straight_from_s3(s3_bucket, monkeypatch):
    """What the README tells users: `tensorboard --logdir s3://.../tensorboard` (S3_ENDPOINT for MinIO)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

    out = f"s3://{s3_bucket}/runs/tb"
    log = RunLog(out, enabled=True, total_steps=10)
    log.start(TrainConfig(out=out), FakePlan(), 1, "cpu")
    for step in (2, 4):
        log.train(step=step, epoch=0, loss=1.0 / step, lr=0.1, samples_per_s=10.0)
    log.eval(4, 0.7, 0.5, 0.1)
    log.finish({"kind": "summary", "step": 4}, plot=False)
    monkeypatch.setenv("S3_ENDPOINT", boto3.client("s3").meta.endpoint_url)  # tensorboard's own variable
    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(f"{out}/tensorboard")
    mux.Reload()
    acc = mux.GetAccumulator(".")
    assert {"train/loss", "train/lr", "train/samples_per_s", "eval/auc", "eval/loss"} <= set(acc.Tags()["tensors"])
    assert [(e.step, e.tensor_proto.float_val[0]) for e in acc.Tensors("train/loss")] == [(2, 0.5), (4, 0.25)]
