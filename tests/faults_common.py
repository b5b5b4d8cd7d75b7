"""Shared by the fault tests: render the synthetic-smoke job, run it in a thread (run-local), read
its checkpoints and metrics. The module-scoped `data` fixture is the tiny dataset they train on."""
from __future__ import annotations

import io
import json
import shutil
import threading
import time
import os
from pathlib import Path

import faulty_trainer
import pytest
from datasets import make_dataset

from dlrm.io.checkpoint import whole_tables
from launcher.run_local import LocalJob

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
RUN = ("volumes", "runs", "run")  # storage.output_claim=runs, output_path=run: /output shared by all pods
HANG = faulty_trainer.HANG_AT
# The trainers start as `torchrun --module faulty_trainer`, found through PYTHONPATH (run-local's replicas
# inherit this environment), not by the script's path: run-local rewrites every argument under a pod
# mount path, and a checkout under /tmp (the pods' /tmp is an emptyDir) would be pointed into the pod.
os.environ["PYTHONPATH"] = os.pathsep.join([str(Path(faulty_trainer.__file__).resolve().parent),
                                            *filter(None, [os.environ.get("PYTHONPATH")])])
# 20 steps of 256 rows (6000 rows: one epoch holds them), a checkpoint every 5 steps, every step logged.
TRAIN = ["train.max_steps=20", "train.checkpoint_every=5", "train.log_every=1", "train.checkpoint_keep=0",
         "train.data.eval_batch_size=1000", "cluster.backoff_limit=2",
         "storage.output_claim=runs", "storage.output_path=run"]


# ---------------------------------------------------------------------------------------------
# Helpers: render, run in a thread, look at checkpoints and metrics.


def render(nodes: int, gpus: int, sets: list[str]) -> list[dict]:
    """The rendered job, its trainers started as `--module faulty_trainer` (the real trainer, which
    hangs a rank where the test sets faulty_trainer's variables) instead of `--module dlrm`."""
    from launcher.config import load_job_config
    from launcher.render import render_objects

    # amp none: the references train in fp32 (tiny.yaml), where the profile's auto would pick bf16 on an AMX CPU
    objects = render_objects(load_job_config("synthetic-smoke", overrides=[f"nodes={nodes}", f"gpus_per_node={gpus}", "train.amp=none",
                                                                           *sets]))
    return [_faulty(o) for o in objects]


def _faulty(obj):
    if isinstance(obj, dict):
        return {k: _faulty(v) for k, v in obj.items()}
    if isinstance(obj, list):
        if obj and obj[0] == "torchrun" and "--module" in obj:
            i = obj.index("--module")
            assert obj[i + 1] == "dlrm", obj
            return obj[:i + 1] + ["faulty_trainer"] + obj[i + 2:]
        return [_faulty(v) for v in obj]
    return obj


class Running:
    """A LocalJob run in a background thread, its output collected."""

    def __init__(self, objects, workdir: Path, **kwargs):
        self.out = io.StringIO()
        self.job = LocalJob(objects, workdir, out=self.out, grace_s=2, **kwargs)
        self.rc = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.rc = self.job.run()

    def text(self) -> str:
        return self.out.getvalue()

    def wait_for(self, predicate, what: str, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.thread.is_alive(), f"job ended (rc {self.rc}) before {what}:\n{self.text()[-6000:]}"
            assert time.monotonic() < deadline, f"no {what} after {timeout}s:\n{self.text()[-6000:]}"
            time.sleep(0.05)

    def join(self, timeout: float = 300) -> int:
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.job.stop()
            self.thread.join(30)
            pytest.fail(f"job still running after {timeout}s:\n{self.text()[-6000:]}")
        return self.rc


def complete(ckpts: Path) -> list[str]:
    return sorted(p.name for p in ckpts.glob("ckpt-*") if (p / "metadata.json").is_file())


def gathered(ckpts: Path, name: str | None = None) -> tuple[dict, dict]:
    """A checkpoint's whole tables {table: [rows, D]} (gathered from every rank's pieces) and dense weights."""
    return whole_tables(str(ckpts), name)


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def summary(run: Path) -> dict:
    return [r for r in records(run) if r["kind"] == "summary"][-1]


def step_losses(run: Path) -> dict[int, float]:
    """Each step's training loss, the latest attempt's where an earlier attempt logged the step too."""
    return {r["step"]: r["loss"] for r in records(run) if r["kind"] == "train"}


def rank_pids(job: LocalJob) -> dict[int, int]:
    """Global rank -> pid of the trainer process torchrun started for it (they carry LOCAL_RANK)."""
    out = {}
    for tree in job.pids().values():
        for pid in tree:
            try:
                env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
            except OSError:
                continue
            if "LOCAL_RANK" in env:
                out[int(env["RANK"])] = pid
    return out


def plant_partial_checkpoint(ckpts: Path, source: str, step: int) -> None:
    """What a kill during step `step`'s save leaves: some rank files, one cut short, a temp file, no metadata.json."""
    half = ckpts / f"ckpt-{step:09d}"
    half.mkdir()
    for f in ("rank-0.pt", "dense.pt"):
        shutil.copy(ckpts / source / f, half / f)
    data = (ckpts / source / "rank-1.pt").read_bytes()
    (half / "rank-1.pt").write_bytes(data[: len(data) // 2])
    (half / ".rank-2.pt.x1y2z3.tmp").write_bytes(data[:100])


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_dataset(root, rows=6000, test_rows=1000)
    return root


def wait_for_line(proc, text: str, timeout: float = 180) -> str:
    """Read a trainer process's merged output until a line holding `text`; what was read."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line, f"ended before {text!r}:\n{''.join(seen)[-6000:]}"
        seen.append(line)
        if text in line:
            return "".join(seen)
    pytest.fail(f"no {text!r} after {timeout}s:\n{''.join(seen)[-6000:]}")
