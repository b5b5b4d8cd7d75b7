"""A run's numbers and files, wherever the run put them: `launcher status` lines and `launcher results`.

    python -m launcher results NAME [--out DIR]              # a cluster job whose train.out is s3://
    python -m launcher results NAME --local [--workdir DIR]  # a run-local job
    python -m launcher results s3://bucket/runs/x | RUN_DIR  # a run output, named directly

A training job's output (dlrm.training.runlog: config.yaml, run.json, metrics.jsonl, metrics.png,
tensorboard/, model/) is found from the job itself: a cluster job carries it in its
`dlrm-k8s.io/output` annotation (rendered when train.out is s3://), a run-local job in the
record run-local keeps in its workdir (job.json: state, pid, the run's output folder).
"""
from __future__ import annotations

import argparse
import codecs
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from dlrm.errors import UserError
from dlrm.io.fsutil import atomic_path, atomic_write, is_s3_uri
from dlrm.training.runlog import CONFIG, METRICS, MODEL_DIR, PLOT, RECORD, TENSORBOARD, read_metrics
from dlrm.io.storage import open_store
from launcher.cluster_jobs import add_cluster_arguments, find_job, job_apis
from launcher.command import OUTPUT_ANNOTATION, OUTPUT_MOUNT

LOCAL_ROOT = Path("runs/local")  # run-local's default workdir is LOCAL_ROOT/<job name>
JOB_RECORD = "job.json"
RESULT_FILES = (CONFIG, RECORD, METRICS, PLOT)  # plus everything under TENSORBOARD/ and MODEL_DIR/


def local_workdir(name: str, workdir: str | None = None) -> Path:
    return Path(workdir) if workdir else LOCAL_ROOT / name


# ---------------------------------------------------------------------------------------------
# The run-local job record


class LocalJobRecord:
    """<workdir>/job.json, rewritten whole (atomically) at each change of a run-local job."""

    def __init__(self, workdir: str | Path, name: str):
        self.path = Path(workdir) / JOB_RECORD
        self.data = {"name": name, "workdir": str(Path(workdir).resolve())}

    def update(self, **fields) -> None:
        self.data.update(fields)
        atomic_write(self.path, json.dumps(self.data, indent=1) + "\n", fsync=False)

    @staticmethod
    def read(name: str, workdir: str | None) -> dict:
        path = local_workdir(name, workdir) / JOB_RECORD
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"no run-local job {name!r}: {path} does not exist (run-local writes it; "
                            f"--workdir DIR if the job ran with one)") from None
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not a run-local job record ({e})") from None
        if data.get("state") == "Running" and not _alive(data.get("pid")):
            data["state"] = "Lost"  # run-local itself was killed: nobody will write the final state
        return data


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def output_of_argv(argv: list[str], cwd: str) -> str | None:
    """The trainer's `out` from its command line (`--set out=X` or `--out X`), absolute."""
    out = None
    for i, arg in enumerate(argv):
        if arg == "--set" and i + 1 < len(argv) and argv[i + 1].startswith("out="):
            out = argv[i + 1][len("out="):]
        elif arg == "--out" and i + 1 < len(argv):
            out = argv[i + 1]
    if out is None or is_s3_uri(out):
        return out
    return str(Path(cwd, out).resolve())


def output_of_job(job: dict) -> str | None:
    """A cluster job's run output (s3://), or None when it lives inside the pods."""
    return ((job.get("metadata") or {}).get("annotations") or {}).get(OUTPUT_ANNOTATION)


# ---------------------------------------------------------------------------------------------
# Metrics


def read_run(out: str) -> list[dict]:
    """The records of `out`/metrics.jsonl ([] when there is none yet)."""
    store = open_store(out)
    try:
        text = store.get_bytes(METRICS).decode("utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return []
    return read_metrics(text)


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _ago(t) -> str:
    if not t:
        return ""
    s = int(max(time.time() - float(t), 0))
    return f", logged {s // 3600}h{s % 3600 // 60:02d}m ago" if s >= 3600 else (
        f", logged {s // 60}m{s % 60:02d}s ago" if s >= 60 else f", logged {s}s ago")


def summarize(records: list[dict], ages: bool = True) -> list[str]:
    """Latest step, loss, AUC and samples/s as lines; ages=False leaves out the clock (change detection)."""
    last = lambda kind: next((r for r in reversed(records) if r.get("kind") == kind), None)  # noqa: E731
    train, ev, summary = last("train"), last("eval"), last("summary")
    lines = []
    if train:
        total = train.get("total_steps")
        of = f"/{total:,} ({100 * train['step'] / total:.1f}%)" if total else ""
        lines.append(f"step {train['step']:,}{of} | epoch {train.get('epoch', 0) + 1} | loss {_num(train.get('loss'), '.5f')} | "
                     f"lr {_num(train.get('lr'), '.4g')} | {_num(train.get('samples_per_s'), ',.0f')} samples/s"
                     f"{_ago(train.get('time')) if ages else ''}")
    if ev:
        lines.append(f"eval at step {ev['step']:,}: AUC {_num(ev.get('auc'), '.4f')} | loss {_num(ev.get('loss'), '.5f')}")
    if summary:
        lines.append(f"finished at step {summary['step']:,}: AUC {_num(summary.get('auc'), '.4f')} | "
                     f"{_num(summary.get('samples_per_s'), ',.0f')} samples/s")
    return lines or ["no metrics logged yet"]


def status_lines(out: str | None, ages: bool = True) -> list[str]:
    """`launcher status`'s run section: where the output is and its latest numbers, never an error."""
    if not out:
        return [f"run output: {OUTPUT_MOUNT} inside the pods (an emptyDir unless storage.output_claim): "
                f"set train.out to s3://bucket/prefix/run to follow step, loss and AUC here"]
    try:
        lines = summarize(read_run(out), ages)
    except (UserError, OSError) as e:
        lines = [f"metrics unreadable: {e}"]
    return [f"run output {out}:"] + [f"  {line}" for line in lines]


# ---------------------------------------------------------------------------------------------
# Fetching


def fetch(out: str, dest: str | Path) -> list[Path]:
    """Copy the run's config, run record, metrics, plot, TensorBoard events and model (when there)
    from `out` into `dest`; each file appears whole or not at all. Checkpoints stay where they are."""
    store = open_store(out)
    keys = [k for k in store.list("") if k in RESULT_FILES or k.startswith((f"{TENSORBOARD}/", f"{MODEL_DIR}/"))]
    if not keys:
        raise UserError(f"{out}: no run output there (no {', '.join(RESULT_FILES)}, {TENSORBOARD}/ or {MODEL_DIR}/): "
                        f"has the job started training?")
    dest = Path(dest)
    written = []
    for key in keys:
        with atomic_path(dest / key, fsync=False) as tmp:
            store.get_file(key, tmp)
        written.append(dest / key)
    return written


def resolve_output(args: argparse.Namespace) -> str:
    """The run output that NAME means: a URI or folder given directly, a run-local job, a cluster job."""
    name = args.name
    if is_s3_uri(name) or Path(name, METRICS).is_file() or Path(name, CONFIG).is_file():
        return name
    if args.local:
        record = LocalJobRecord.read(name, args.workdir)
        if not record.get("out"):
            raise UserError(f"run-local job {name}: its record names no run output (the job has not started training)")
        return record["out"]
    from launcher import k8s  # the kubernetes client: only a job on a cluster needs it

    cluster = k8s.connect(args.context, args.namespace)
    out = output_of_job(find_job(cluster, name, job_apis(args.api))[1])
    if not out:
        raise UserError(f"job {name}: its output is {OUTPUT_MOUNT} inside the pods, gone with them; render with "
                        f"train.out=s3://bucket/prefix/run to keep it (checkpoints included)")
    return out


def add_local_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--local", action="store_true", help="a job started with run-local (make submit BACKEND=local)")
    p.add_argument("--workdir", help=f"the run-local job's workdir (default {LOCAL_ROOT}/NAME)")


def add_arguments(p: argparse.ArgumentParser, command: str = "results") -> None:
    p.add_argument("name", help="the job's name, or a run output (s3://bucket/prefix/run or a folder)")
    p.add_argument("--out", metavar="DIR", help="where to put the files (default runs/results/<name>)")
    add_local_arguments(p)
    add_cluster_arguments(p)
    p.add_argument("--api", choices=("pytorchjob", "trainjob"), help="the job's kind (default: whichever exists)")


def main(args: argparse.Namespace) -> int:
    out = resolve_output(args)
    dest = Path(args.out or Path("runs/results") / Path(args.name.rstrip("/")).name)
    files = fetch(out, dest)
    for f in files:
        print(f)
    have = {f.relative_to(dest).parts[0] for f in files}
    missing = [k for k in (*RESULT_FILES, TENSORBOARD) if k not in have]
    print(f"{len(files)} file(s) from {out} in {dest}" + (f"; not there (yet): {', '.join(missing)}" if missing else ""),
          file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------
# status and logs of a run-local job


def local_status(args: argparse.Namespace) -> int:
    last = None
    while True:
        record = LocalJobRecord.read(args.name, args.workdir)
        text = "\n".join(_local_lines(record, ages=False))
        if text != last:
            stamp = "" if last is None else f"\n--- {datetime.now().strftime('%H:%M:%S')}\n"
            print(stamp + "\n".join(_local_lines(record, ages=True)), flush=True)
            last = text
        if not args.watch or record["state"] != "Running":
            return 0 if record["state"] in ("Running", "Succeeded") else 1
        time.sleep(args.interval)


def _local_lines(record: dict, ages: bool) -> list[str]:
    started = record.get("started")
    since = ""
    if started and ages:
        s = int((datetime.now(timezone.utc) - datetime.fromisoformat(started)).total_seconds())
        since = f", started {s // 60}m{s % 60:02d}s ago"
    lines = [f"run-local job {record['name']}: {record.get('state', '?')} (pid {record.get('pid', '?')}, "
             f"{record.get('restarts', 0)} restart(s){since}; workdir {record['workdir']})"]
    if record.get("state") == "Lost":
        lines.append("  the run-local process is gone (killed?): the job is not running")
    if not record.get("out"):
        return lines + ["run output: not known yet (the trainer has not been started)"]
    return lines + status_lines(record["out"], ages)


def local_logs(args: argparse.Namespace) -> int:
    """Print a run-local replica's log; with -f keep printing what is appended until the job ends."""
    record = LocalJobRecord.read(args.name, args.workdir)
    replica = f"{args.replica}-{args.index}"
    path = Path(record["workdir"]) / "logs" / f"{replica}.log"
    if not path.exists():
        raise UserError(f"run-local job {args.name} has no log for {replica} (yet?): {path}")
    decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode  # a chunk may end mid-character
    with open(path, "rb") as f:
        if args.tail is not None:
            lines = f.read().splitlines(keepends=True)
            sys.stdout.write(decode(b"".join(lines[-args.tail:] if args.tail else [])))
        running = True
        while True:
            chunk = f.read()
            if chunk:
                sys.stdout.write(decode(chunk))
                sys.stdout.flush()
                continue
            if not (args.follow and running):
                return 0
            # one more read after the job ended: what it wrote last is printed too
            running = LocalJobRecord.read(args.name, args.workdir)["state"] == "Running"
            if running:
                time.sleep(0.2)
