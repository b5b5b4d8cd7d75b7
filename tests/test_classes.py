"""Issue 28 item 6, robustness by class: what a bad-input row (tests/bad_inputs/classes.yaml) cannot
express, because the command succeeds or the check sits below a CLI."""
from __future__ import annotations

import json
import os

from launcher.cli_local import local_list


def test_list_local_shows_the_other_jobs_and_names_the_bad_record(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name, record in (("good", {"state": "Succeeded", "started": "2026-01-01T00:00:00+00:00"}),
                         ("nostate", {}), ("badtime", {"state": "Failed", "started": "yesterday"})):
        wd = tmp_path / "runs" / "local" / name
        wd.mkdir(parents=True)
        (wd / "job.json").write_text(json.dumps({"name": name, "workdir": str(wd), **record}))
    assert local_list(None) == 0
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()] == ["NAME", "good"]
    assert "runs/local/nostate/job.json: not a run-local job record: no 'state'" in err
    assert "runs/local/badtime/job.json: started: expected an ISO 8601 time" in err
    assert os.path.exists(tmp_path / "runs" / "local" / "nostate" / "job.json")  # shown, not removed


def test_run_local_stops_its_replicas_on_sigterm_sighup_and_sigint():
    """`timeout` sends SIGTERM, a closed terminal SIGHUP, Ctrl-C SIGINT: each takes the stop path
    (the replicas run in sessions of their own: only run-local can stop them)."""
    import signal
    import threading

    from launcher.run_local import stop_on_signals

    class Job:
        def __init__(self):
            self.stopped = threading.Event()

        def stop(self):
            self.stopped.set()

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        for sig in saved:
            job = Job()
            stop_on_signals(job)
            os.kill(os.getpid(), sig)
            assert job.stopped.wait(5), signal.Signals(sig).name
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_a_symlinked_output_folder_is_followed_not_replaced(tmp_path):
    """render --out and export --out build beside the folder and rename it into place: given a link,
    the folder it names is replaced and the link stays."""
    from dlrm.io.fsutil import local_path
    from dlrm.serving.publish import publish, staging
    from launcher.cli_render import write_rendered

    for name in ("rendered", "export"):
        (tmp_path / f"real-{name}").mkdir()
        (tmp_path / name).symlink_to(tmp_path / f"real-{name}")
    write_rendered([{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}],
                   local_path(tmp_path / "rendered", "--out", "render", ""))
    tmp = staging(tmp_path / "export", log=lambda _: None)
    (tmp / "manifest.json").write_text("{}")
    publish(tmp, tmp_path / "export", log=lambda _: None)
    for name in ("rendered", "export"):
        assert (tmp_path / name).is_symlink(), name
        assert [p.name for p in (tmp_path / f"real-{name}").iterdir()], name


def test_a_resumed_run_keeps_its_metrics_up_to_the_checkpoint_only(tmp_path, capsys):
    """Steps after the checkpoint run again: their old records go (one atomic rewrite), so no step
    is in metrics.jsonl twice."""
    from dlrm.training.runlog import METRICS, RunLog

    out = tmp_path / "run"
    out.mkdir()
    old = [{"kind": "train", "step": s, "loss": 0.5} for s in (1, 2, 3, 4)] + [{"kind": "eval", "step": 4, "auc": 0.7}]
    (out / METRICS).write_text("".join(json.dumps(r) + "\n" for r in old))
    log = RunLog(str(out), enabled=True, total_steps=6, first_step=2, tensorboard=False)
    log.train(step=3, epoch=0, loss=0.4, lr=0.1, samples_per_s=1.0)
    records = [json.loads(line) for line in (out / METRICS).read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in records] == [("train", 1), ("train", 2), ("train", 3)]
    assert records[-1]["loss"] == 0.4
    assert "removed 3 record(s) after step 2" in capsys.readouterr().err
    assert not [p for p in out.iterdir() if p.name != METRICS]  # no temp file left


def test_a_one_class_split_reports_auc_as_undefined_never_nan(tmp_path):
    import math

    import torch

    from dlrm.metrics import AUC_UNDEFINED, MetricsLog, auc_fields, roc_auc

    auc = roc_auc(torch.tensor([0.1, 0.7, 0.3]), torch.tensor([1.0, 1.0, 1.0]))
    assert math.isnan(auc)
    assert json.dumps(auc_fields(auc), allow_nan=False) == json.dumps({"auc": None, "auc_undefined": AUC_UNDEFINED})
    assert auc_fields(0.75) == {"auc": 0.75}
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.write(kind="eval", step=4, auc=auc, loss=0.5)
    record = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert (record["auc"], record["auc_undefined"]) == (None, AUC_UNDEFINED)


# -- the other members of each class, checked in-process (one row per class runs the real CLI) --------

import pytest  # noqa: E402

from dlrm.errors import UserError  # noqa: E402


@pytest.mark.parametrize("argv,message", [
    (["--index", "-1"], "argument --index: expected an integer >= 0, got '-1'"),
    (["--poll", "inf"], "argument --poll: expected a finite number >= 0, got 'inf'"),
    (["--poll", "1e400"], "argument --poll: expected a finite number >= 0, got '1e400'"),
    (["--poll", "-0.5"], "argument --poll: expected a finite number >= 0, got '-0.5'"),
    (["--in-group", "nan"], "argument --in-group: expected a finite number >= 0, got 'nan'"),
])
def test_every_int_and_float_flag_is_checked_by_class(argv, message, capsys):
    from dlrm.cli import Parser

    p = Parser(prog="prog")
    p.add_argument("--index", type=int)
    p.add_argument("--poll", type=float)
    p.add_mutually_exclusive_group().add_argument("--in-group", type=float)
    with pytest.raises(SystemExit) as e:
        p.parse_args(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == f"error: prog: {message} (usage: prog --help)\n"
    assert p.parse_args(["--index", "0", "--poll", "2.5"]).poll == 2.5


@pytest.mark.parametrize("text,refused", [
    ("S3://bucket/x", True), ("s3:/bucket/x", True), ("s3a://bucket/x", True), ("gs://bucket/x", True),
    ("file:data", True), ("file:///tmp/x", True), ("HTTPS://host/x", True),
    ("s3://bucket/x", False), ("runs/x", False), ("/abs/x", False), ("run:1/x", False), ("./s3", False),
])
def test_paths_that_look_like_uris(text, refused):
    from dlrm.io.fsutil import location

    if refused:
        with pytest.raises(UserError, match="expected a local path or s3://bucket/prefix"):
            location(text, "out")
    else:
        assert location(text, "out") == text


@pytest.mark.parametrize("image,why", [
    ("ghcr.io/MyOrg/dlrm:1", "repository 'MyOrg/dlrm' must be lowercase"),
    ("Dlrm:1", "repository 'Dlrm' must be lowercase"),
    ("dlrm:v1\u00e9", "is not allowed (whitespace, control or non-ASCII character)"),
    ("dlrm@sha256:abc", "digest 'sha256:abc': expected sha256: and 64 lowercase hex digits"),
    ("dlrm@sha256:" + "A" * 64, "64 lowercase hex digits"),
    ("dlrm:.v1", "tag '.v1'"),
    ("dlrm:" + "a" * 129, "tag"),
    ("reg..io/dlrm:1", "registry 'reg..io' is not a host[:port]"),
    ("a//b", "each /-separated part"),
    ("", "empty"),
])
def test_image_references_by_the_reference_grammar(image, why):
    from launcher.names import check_image

    with pytest.raises(UserError) as e:
        check_image("image", image)
    assert why in str(e.value)


@pytest.mark.parametrize("image", ["dlrm-k8s-train:0.1", "registry.example.com:5000/team/dlrm_x__y-z:1.0-rc.1",
                                   "localhost/dlrm", "[::1]:5000/dlrm", "dlrm@sha256:" + "0f" * 32,
                                   "ECR.amazonaws.com/dlrm:v1@sha256:" + "a" * 64])
def test_valid_image_references_pass(image):
    from launcher.names import check_image

    check_image("image", image)


def test_environment_numbers_and_endpoints(monkeypatch):
    from dlrm.io.s3_settings import check_endpoint, env_number

    monkeypatch.setenv("DLRM_K8S_CONNECT_TIMEOUT", "abc")
    with pytest.raises(UserError, match=r"^DLRM_K8S_CONNECT_TIMEOUT='abc': expected a number$"):
        env_number("DLRM_K8S_CONNECT_TIMEOUT", 5.0)
    monkeypatch.setenv("DLRM_K8S_CONNECT_TIMEOUT", "nan")
    with pytest.raises(UserError, match="expected 0.1 <= value < 3600"):
        env_number("DLRM_K8S_CONNECT_TIMEOUT", 5.0)
    monkeypatch.setenv("DLRM_K8S_CONNECT_TIMEOUT", " ")
    assert env_number("DLRM_K8S_CONNECT_TIMEOUT", 5.0) == 5.0
    for url in ("minio:9000", "not-a-url", "ftp://host", "http://", "http://host:port"):
        with pytest.raises(UserError, match="expected an endpoint URL"):
            check_endpoint(url, "s3.endpoint_url")
    check_endpoint("https://minio.example.com:9000/path", "s3.endpoint_url")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "s3.local")
    with pytest.raises(UserError, match="^AWS_ENDPOINT_URL_S3='s3.local'"):
        check_endpoint(None)


def test_sizes_outside_float_range_are_refused_at_once():
    from dlrm.typed import parse_bytes

    for text in ("1e400", "1e99999999", "9" * 400 + "Ki"):
        with pytest.raises(UserError, match=r"out of range"):
            parse_bytes(text, "dist.device_memory")
    assert parse_bytes("2e3") == 2000


def test_a_file_read_whole_is_bounded(tmp_path):
    from dlrm.io.fsutil import read_bytes

    with pytest.raises(UserError, match=r"^/dev/urandom: more than 0 MiB, too large for a values file"):
        read_bytes("/dev/urandom", "values file", limit=1024)
    (tmp_path / "ok").write_bytes(b"x" * 1024)
    assert read_bytes(tmp_path / "ok", limit=1024) == b"x" * 1024


def test_a_process_is_provably_the_recorded_one_only_by_its_start_time():
    from launcher.local_jobs import not_provably
    from launcher.procs import start_time

    me, started = os.getpid(), start_time(os.getpid())
    assert not_provably(me, started) is None
    assert "start time was not recorded" in not_provably(me, None)
    assert "is another process now" in not_provably(me, started + 1)


@pytest.mark.parametrize("field,value,message", [
    ("started", "yesterday", "started: expected an ISO 8601 time with a UTC offset, got 'yesterday'"),
    ("started", "2026-01-01T00:00:00", "started: expected an ISO 8601 time with a UTC offset"),
    ("pid", "12", "pid: expected a process id, got '12'"),
    ("replica_pids", {"master-0": [12]}, "replica_pids: expected {replica: [pid, start time]}"),
    ("grace_s", float("nan"), "grace_s: expected seconds >= 0"),
])
def test_job_records_are_checked_field_by_field(tmp_path, field, value, message):
    from launcher.local_jobs import check_record

    with pytest.raises(UserError) as e:
        check_record({"name": "j", "workdir": "w", "state": "Failed", field: value}, tmp_path / "job.json")
    assert str(e.value) == f"{tmp_path / 'job.json'}: {message}" or message in str(e.value)


def test_a_lock_covers_every_folder_and_prefix_under_it(tmp_path):
    """A live lock above an output refuses it; a dead one (pid gone, or another start time) does not."""
    import socket

    from dlrm.training.runlock import LOCK, _above, _me, _process_start, refuse_inside_live_run

    assert _above("s3://b/runs/a/checkpoints") == ["s3://b/runs/a", "s3://b/runs", "s3://b"]
    live = {"host": socket.gethostname(), "pid": 1, "pid_start": _process_start(1), "started": "x"}
    (tmp_path / "a" / "checkpoints").mkdir(parents=True)
    (tmp_path / "a" / LOCK).write_text(json.dumps(live))
    with pytest.raises(UserError, match=r"checkpoints/x is inside .*/a, the output of another run that is still live"):
        refuse_inside_live_run(str(tmp_path / "a" / "checkpoints" / "x"), _me())
    (tmp_path / "a" / LOCK).write_text(json.dumps(dict(live, pid_start="0")))  # pid 1 restarted since: gone
    refuse_inside_live_run(str(tmp_path / "a" / "checkpoints"), _me())


def test_a_record_past_its_bound_is_refused_before_it_is_read(tmp_path, s3_bucket):
    """run.json, a run lock, a published manifest: read whole, so bounded like every config file, on a
    folder and on S3 alike (S3: by the object's length, its body never read)."""
    import boto3
    import pytest

    from dlrm.errors import UserError
    from dlrm.io.fsutil import MAX_TEXT_BYTES
    from dlrm.io.storage import open_store
    from dlrm.training.runlog import RECORD

    with open(tmp_path / RECORD, "wb") as f:
        f.truncate(MAX_TEXT_BYTES + 1)  # sparse: no disk used
    with pytest.raises(UserError, match=rf"{RECORD}: more than 64 MiB, too large for a record"):
        open_store(str(tmp_path)).get_bytes(RECORD, limit=MAX_TEXT_BYTES)
    small = f"s3://{s3_bucket}/run"
    boto3.client("s3").put_object(Bucket=s3_bucket, Key=f"run/{RECORD}", Body=b"{}" + b" " * 2048)
    assert open_store(small).get_bytes(RECORD, limit=4096).startswith(b"{}")
    with pytest.raises(UserError, match=rf"{small}/{RECORD}: more than 0 MiB, too large for a record"):
        open_store(small).get_bytes(RECORD, limit=1024)
