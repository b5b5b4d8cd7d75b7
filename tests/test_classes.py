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
