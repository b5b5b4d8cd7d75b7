"""What a run says while it trains, and what it leaves behind (rank 0 writes, the other ranks no-op).

    log = RunLog(cfg.out, enabled=runtime.is_main, total_steps=T, epochs=E, first_step=step)
    log.start(cfg, plan)                        # config.yaml + run.json, uploaded now: a bad bucket fails fast
    log.train(step=, epoch=, loss=, lr=, samples_per_s=)   # a progress line, metrics.jsonl, TensorBoard
    log.eval(step, auc, loss, seconds)          # an eval line; metrics and events uploaded
    log.checkpoint(name, seconds)               # a line naming the checkpoint
    log.finish(summary)                         # summary record, metrics.png, the last upload

A run's output (`out`: a folder, or s3://bucket/prefix/run):

    config.yaml      the resolved TrainConfig
    run.json         the run record: the job's config hash, git revision, image, the dataset's
                     _manifest.json hash, the plan, torch and device, the network check (dlrm.dist.netcheck:
                     transport and bus bandwidths; null for one process) (rewritten at each (re)start)
    metrics.jsonl    one strict-JSON object per logged step, per eval, and a final summary (NaN -> null)
    metrics.png      loss and AUC against step (at the end)
    tensorboard/     event files: train/loss, train/lr, train/samples_per_s, eval/auc, eval/loss
    checkpoints/     unless checkpoint_dir says otherwise
    model/           the exported model: an export writes it with `publish` (no export exists yet)

Into a folder, files are written in place. Into S3 they are written to a local staging folder and
uploaded (changed files only) at start, at each eval, at least every `sync_every_s` seconds while
training (the trainer calls `sync()` after every step; it uploads only when that much time passed),
and at the end: a job killed mid-run keeps what its last upload held. A restart's metrics.jsonl
whose last line a kill cut short is first cut back to its last whole line (`repair_metrics`), then
to the step it resumes from (`drop_replayed`, one atomic rewrite): the steps after its checkpoint
run again and are logged again, once.
run.json records the run's `run_id` (dlrm.training.lifecycle: whose folder this is).
An upload that fails mid-run is a warning (the next one retries); one that fails at start or at
the end is an error.

Progress lines are plain lines (no carriage returns), so a pod's log and `launcher logs -f` show
them as they come.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from dlrm.io.fsutil import atomic_path, atomic_write, is_s3_uri
from dlrm.io.storage import open_store
from dlrm.training import progress

# Set by the launcher in the training container (launcher/render.py): the job's identity, for run.json.
JOB_ENV = {"name": "DLRM_JOB_NAME", "config_sha256": "DLRM_JOB_CONFIG_SHA256",
           "git_revision": "DLRM_GIT_REVISION", "image": "DLRM_IMAGE", "dataset": "DLRM_JOB_DATASET"}
# Files of a run's output, relative to `out` (launcher/results.py fetches these).
CONFIG, RECORD, METRICS, PLOT, TENSORBOARD, MODEL_DIR = (
    "config.yaml", "run.json", "metrics.jsonl", "metrics.png", "tensorboard", "model")


def join_uri(base: str, key: str) -> str:
    """`base`/`key` for a folder or an s3:// URI (pathlib would fold s3:// into s3:/)."""
    return f"{str(base).rstrip('/')}/{key}"


def git_revision(cwd: str | Path = ".") -> str:
    """HEAD's commit, '-dirty' if the work tree differs; 'unknown' outside a git checkout."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=cwd, capture_output=True).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("-dirty" if dirty else "")


def duration(seconds: float) -> str:
    """12.3 -> '0:00:12'; 93784 -> '1d 2:03:04'."""
    s = int(max(seconds, 0))
    days, s = divmod(s, 86400)
    text = f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{days}d {text}" if days else text


def _sha256_file(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def run_record(cfg, plan, config_text: str, world_size: int, device: str, first_step: int,
               ranks_per_node: int = 1) -> dict:
    """Everything needed to reproduce the run or tell two runs apart."""
    import torch

    from dlrm.data.manifest import MANIFEST_NAME

    job = {k: os.environ.get(v) for k, v in JOB_ENV.items()}
    job["git_revision"] = job["git_revision"] or git_revision(Path(__file__).resolve().parent)
    image = job["image"] or ""
    job["image_digest"] = image.split("@", 1)[1] if "@sha256:" in image else None  # a tag names no digest
    dataset = Path(cfg.data.dataset)
    return {
        "run_id": cfg.run_id,
        "job": job,
        "train_config_sha256": hashlib.sha256(config_text.encode()).hexdigest(),
        "dataset": {"path": str(dataset), "manifest_sha256": _sha256_file(dataset / MANIFEST_NAME),
                    "feature_spec_sha256": _sha256_file(dataset / "feature_spec.yaml")},
        "plan": plan.to_dict(),
        "world_size": world_size,
        "ranks_per_node": ranks_per_node,  # with world_size, the placement a resized restart names
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": sys.version.split()[0],
        "host": socket.gethostname(),
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "start_step": first_step,
    }


class RunLog:
    def __init__(self, out: str, *, enabled: bool, total_steps: int, epochs: int = 1, first_step: int = 0,
                 sync_every_s: float = 300, tensorboard: bool = True):
        self.out, self.enabled = str(out), enabled
        self.total_steps, self.epochs, self.first_step = total_steps, epochs, first_step
        self.sync_every_s = sync_every_s
        self.remote = is_s3_uri(self.out)
        self.t0 = time.perf_counter()
        self._last_sync = time.monotonic()
        self._synced: dict[str, tuple[int, int]] = {}  # key -> (size, mtime_ns) at its last upload
        self._tb = None
        self._network_line = ""
        if not enabled:
            return
        self.store = open_store(self.out)
        if self.remote:  # a fresh staging folder; what the run already logged (a restart) comes from S3
            self.local = Path(tempfile.mkdtemp(prefix="dlrm-run-"))
            if self.store.exists(METRICS):
                self.store.get_file(METRICS, self.local / METRICS)
        else:
            self.local = Path(self.out)
        self.local.mkdir(parents=True, exist_ok=True)
        repair_metrics(self.local / METRICS)
        drop_replayed(self.local / METRICS, first_step)
        self.progress = progress.from_env(total_steps, first_step)  # a TrainJob's status.trainerStatus, if enabled
        from dlrm.metrics import MetricsLog  # torch: not for the launcher, which reads only the constants here

        self.metrics = MetricsLog(self.local / METRICS)
        if tensorboard:
            self._tb = _summary_writer(self.local / TENSORBOARD, purge_step=first_step or None)

    def uri(self, key: str) -> str:
        return join_uri(self.out, key)

    # -- the run's phases ----------------------------------------------------------------------

    def start(self, cfg, plan, world_size: int, device: str, ranks_per_node: int = 1, network: dict | None = None) -> None:
        """`network`: dlrm.dist.netcheck's figures, into run.json and the first progress line."""
        if not self.enabled:
            return
        from dlrm.config import dump_yaml
        from dlrm.dist.netcheck import summary

        self._network_line = summary(network)
        text = dump_yaml(cfg)
        atomic_write(self.local / CONFIG, text)
        record = run_record(cfg, plan, text, world_size, device, self.first_step, ranks_per_node)
        record["network"] = network
        atomic_write(self.local / RECORD, json.dumps(record, indent=1) + "\n")
        self.sync(force=True, strict=True)

    def train(self, *, step: int, epoch: int, loss: float, lr: float, samples_per_s: float, note: str = "") -> None:
        """One progress line; `note` (a checkpoint that failed since the last line) ends it."""
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        done = step - self.first_step
        eta = elapsed / done * (self.total_steps - step) if done > 0 else float("nan")
        self._write(kind="train", step=step, total_steps=self.total_steps, epoch=epoch, loss=loss, lr=lr,
                           samples_per_s=samples_per_s, elapsed_s=round(elapsed, 3))
        width = len(f"{self.total_steps:,}")
        print(f"step {step:>{width},}/{self.total_steps:,} ({100 * step / max(self.total_steps, 1):5.1f}%) | "
              f"epoch {epoch + 1}/{self.epochs} | loss {loss:.5f} | lr {lr:.4g} | {samples_per_s:,.0f} samples/s | "
              f"elapsed {duration(elapsed)} | ETA {duration(eta) if eta == eta else '-'}"
              f"{' | ' + self._network_line if self._network_line else ''}{f' | {note}' if note else ''}", flush=True)
        self._network_line = ""  # the first line only
        self._scalars(step, {"train/loss": loss, "train/lr": lr, "train/samples_per_s": samples_per_s})
        if self.progress:
            self.progress.train(step=step, loss=loss, samples_per_s=samples_per_s, eta_s=eta)
        self.sync()

    def eval(self, step: int, auc: float, loss: float, seconds: float) -> None:
        if not self.enabled:
            return
        self._write(kind="eval", step=step, auc=auc, loss=loss, seconds=round(seconds, 3))
        shown = f"{auc:.4f}" if auc == auc else "undefined (one class in the test split)"
        print(f"eval at step {step:,}/{self.total_steps:,} | AUC {shown} | loss {loss:.5f} | {seconds:.1f}s", flush=True)
        self._scalars(step, {"eval/auc": auc, "eval/loss": loss})
        if self.progress:
            self.progress.eval(auc=auc, loss=loss)
        self.sync(force=True)

    def checkpoint(self, name: str, where: str, seconds: float, background: bool = False) -> None:
        if self.enabled:
            print(f"checkpoint {name} written in {seconds:.1f}s{' (in the background)' if background else ''} to {where}",
                  flush=True)

    def finish(self, summary: dict, plot: bool) -> dict:
        """Write the summary (and the plot), upload everything; `summary` gains the output's locations."""
        summary = dict(summary, metrics=self.uri(METRICS))
        if not self.enabled:
            return summary
        self._write(**summary)
        if plot:
            self.metrics.plot(self.local / PLOT)
            summary["plot"] = self.uri(PLOT)
        self.close()
        return summary

    def close(self) -> None:
        """The last upload (errors are errors here), then the staging folder goes."""
        if not self.enabled:
            return
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self.progress:
            self.progress.close()
        self.sync(force=True, strict=True)
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)
        self.enabled = False

    def publish(self, key: str, local_path: str | os.PathLike) -> str:
        """Put a file into the run's output (the model export's hook: key under MODEL_DIR); its URI."""
        if self.enabled:
            self.store.put_file(key, local_path)
        return self.uri(key)

    # -- metrics, TensorBoard and uploads --------------------------------------------------------

    def _write(self, **record) -> None:
        """One metrics.jsonl record; a failed write (a full disk) is an OSError naming the file."""
        try:
            self.metrics.write(**record)
        except OSError as e:
            raise OSError(e.errno, e.strerror or str(e), str(self.local / METRICS)) from None

    def _scalars(self, step: int, values: dict[str, float]) -> None:
        if self._tb is not None:
            for tag, v in values.items():
                self._tb.add_scalar(tag, v, step)

    def sync(self, force: bool = False, strict: bool = False) -> None:
        """Upload what changed in the staging folder (S3 only): when forced, or every sync_every_s."""
        if not (self.enabled and self.remote):
            return
        if not force and time.monotonic() - self._last_sync < self.sync_every_s:
            return
        if self._tb is not None:
            self._tb.flush()
        try:
            for path in sorted(p for p in self.local.rglob("*") if p.is_file()):
                key = path.relative_to(self.local).as_posix()
                st = path.stat()
                if self._synced.get(key) != (st.st_size, st.st_mtime_ns):
                    self.store.put_file(key, path)
                    self._synced[key] = (st.st_size, st.st_mtime_ns)
        except Exception as e:  # noqa: BLE001 - a flaky store must not end hours of training
            if strict:
                raise
            print(f"warning: uploading the run's output to {self.out} failed ({e}); retrying at the next sync",
                  file=sys.stderr, flush=True)
        self._last_sync = time.monotonic()


def _summary_writer(logdir: Path, purge_step: int | None):
    """torch's TensorBoard writer, or None (one warning) where the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("warning: the tensorboard package is not installed: no TensorBoard event files "
              "(pip install tensorboard)", file=sys.stderr, flush=True)
        return None
    # flush_secs: events reach the file (and the next upload) within a minute even between syncs
    return SummaryWriter(log_dir=str(logdir), purge_step=purge_step, flush_secs=60)


def repair_metrics(path: Path) -> None:
    """Cut a last line a kill left half-written (no newline), so the next record starts on its own
    line instead of gluing onto it; says what went."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            if size == 0:
                return
            f.seek(max(0, size - (1 << 20)))
            tail = f.read()
    except (FileNotFoundError, IsADirectoryError):
        return
    if tail.endswith(b"\n") or (b"\n" not in tail and len(tail) < size):
        return  # whole, or not a metrics file this code wrote (no line is 1 MiB long)
    keep = size - len(tail) + tail.rfind(b"\n") + 1
    os.truncate(path, keep)
    print(f"note: {path}: removed a last line cut short ({size - keep} bytes, a run killed mid-write)",
          file=sys.stderr, flush=True)


def drop_replayed(path: Path, step: int) -> None:
    """Remove the records of steps after `step` (where a resumed run continues: it logs them again),
    rewriting the file atomically (a kill leaves the old file or the new one); says how many went."""
    path = Path(os.path.realpath(path))  # a link is followed: the file it names is rewritten
    if not path.is_file():  # absent, or not a file (a device) this code could rewrite
        return
    src = open(path, "rb")
    dropped = 0
    try:
        with src, atomic_path(path) as tmp, open(tmp, "wb") as dst:
            for line in src:
                try:
                    later = json.loads(line).get("step", -1) > step
                except (ValueError, AttributeError, TypeError):  # not ours to judge: kept as it is
                    later = False
                if later:
                    dropped += 1
                else:
                    dst.write(line)
            if not dropped:
                raise _Unchanged
    except _Unchanged:
        return
    print(f"note: {path}: removed {dropped} record(s) after step {step:,}, the step this run continues from "
          f"(those steps run again)", file=sys.stderr, flush=True)


class _Unchanged(Exception):
    """Nothing to drop: the temp file is discarded and the file left as it was (not even rewritten)."""


def read_metrics(text: str) -> list[dict]:
    """metrics.jsonl's records; a line cut short by a kill (the last one) is skipped."""
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out

