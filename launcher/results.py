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
import json
import sys
import time
from pathlib import Path

from dlrm.errors import UserError
from dlrm.io.fsutil import MAX_TEXT_BYTES, atomic_path, is_s3_uri, local_path
from dlrm.training.runlog import CONFIG, METRICS, MODEL_DIR, PLOT, RECORD, TENSORBOARD, read_metrics
from dlrm.io.storage import open_store
from launcher.cluster_jobs import add_cluster_arguments, find_job, job_apis
from launcher.command import OUTPUT_ANNOTATION, OUTPUT_MOUNT
from launcher.local_jobs import LocalJobRecord, add_local_arguments, run_id_of_argv

RESULT_FILES = (CONFIG, RECORD, METRICS, PLOT)  # plus everything under TENSORBOARD/ and MODEL_DIR/


def run_id_of_job(job: dict) -> str:
    """The run id rendered into a cluster job's training command (`--set run_id=X`), or ""."""
    def strings(node):
        if isinstance(node, dict):
            for v in node.values():
                yield from strings(v)
        elif isinstance(node, list):
            if all(isinstance(v, str) for v in node):
                yield node
            for v in node:
                yield from strings(v)
    return next((r for argv in strings(job.get("spec") or {}) if (r := run_id_of_argv(argv))), "")


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


def recorded_run_id(out: str) -> str | None:
    """The run id in `out`/run.json (None: no record there, or one written before run ids)."""
    try:
        record = json.loads(open_store(out).get_bytes(RECORD, limit=MAX_TEXT_BYTES))
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    return record.get("run_id") or None if isinstance(record, dict) else None


def status_lines(out: str | None, ages: bool = True, run_id: str = "") -> list[str]:
    """`launcher status`'s run section: where the output is and its latest numbers, never an error.
    With the job's `run_id`, numbers that another run left in `out` are not shown as this job's."""
    if not out:
        return [f"run output: {OUTPUT_MOUNT} inside the pods (an emptyDir unless storage.output_claim): "
                f"set train.out to s3://bucket/prefix/run to follow step, loss and AUC here"]
    try:
        there = recorded_run_id(out) if run_id else None
        if there and there != run_id:
            lines = [f"holds another run ({there}); this job's run ({run_id}) has not written there (yet): "
                     f"without --resume its trainer refuses to train over that run"]
        else:
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
    refuse_other_run(out, dest)
    written = []
    for key in keys:
        with atomic_path(dest / key, fsync=False) as tmp:
            store.get_file(key, tmp)
        written.append(dest / key)
    return written


def missing_files(dest: Path, have: set[str]) -> str:
    """What results did not find in a run, said as it is: a file the run's config never writes
    (metrics.png under plot: false) is not listed, and a finished run's missing files are not "yet"."""
    import yaml

    try:
        config = yaml.safe_load((dest / CONFIG).read_text()) if CONFIG in have else None
    except (OSError, yaml.YAMLError):
        config = None
    never = {PLOT} if isinstance(config, dict) and config.get("plot") is False else set()
    missing = [k for k in (*RESULT_FILES, TENSORBOARD) if k not in have and k not in never]
    if not missing:
        return ""
    try:
        finished = METRICS in have and any(r.get("kind") == "summary" for r in read_metrics((dest / METRICS).read_text(errors="replace")))
    except OSError:
        finished = False
    return f"; not there{'' if finished else ' (yet)'}: {', '.join(missing)}"


def refuse_other_run(out: str, dest: Path) -> None:
    """`dest` may be new, empty, or hold earlier results of this same run (refreshed); results of another
    run there would mix with this one's (two runs' metrics, one's plot beside the other's config)."""
    held = [k for k in (*RESULT_FILES, TENSORBOARD, MODEL_DIR) if (dest / k).exists()]
    if not held:
        return
    mine, there = recorded_run_id(out), recorded_run_id(str(dest))
    if there is None or there != mine:
        what = f"run {there}" if there else f"another run's {held[0]} (no {RECORD} naming its run)"
        raise UserError(f"--out {dest} holds {what}, not {out}'s run ({mine or 'no run_id'}): fetch into a folder "
                        f"of its own (results of two runs would mix)")


def resolve_output(args: argparse.Namespace) -> str:
    """The run output that NAME means: a URI or folder given directly, a run-local job, a cluster job."""
    name = args.name
    if is_s3_uri(name) or Path(name, METRICS).is_file() or Path(name, CONFIG).is_file():
        return name
    if not args.local and ("/" in name or Path(name).is_dir()):  # a job's name is a DNS label: this is a folder
        if not Path(name).is_dir():
            raise UserError(f"{name}: no such folder (NAME is a job's name, an s3:// run or a run's folder)")
        raise UserError(f"{name}: the folder holds no run output (no {', '.join(RESULT_FILES)}): a run's folder is "
                        f"the trainer's `out`; for a run-local job give its name with --local")
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


def add_arguments(p: argparse.ArgumentParser, command: str = "results") -> None:
    p.add_argument("name", help="the job's name, or a run output (s3://bucket/prefix/run or a folder)")
    p.add_argument("--out", metavar="DIR", help="where to put the files (default runs/results/<name>)")
    add_local_arguments(p)
    add_cluster_arguments(p)
    p.add_argument("--api", choices=("pytorchjob", "trainjob"), help="the job's kind (default: whichever exists)")


def main(args: argparse.Namespace) -> int:
    dest = (local_path(args.out, "--out", "launcher results", "fetch into a local folder; the run itself is "
                       "already where it is") if args.out else Path("runs/results") / Path(args.name.rstrip("/")).name)
    out = resolve_output(args)
    files = fetch(out, dest)
    for f in files:
        print(f)
    have = {f.relative_to(dest).parts[0] for f in files}
    print(f"{len(files)} file(s) from {out} in {dest}{missing_files(dest, have)}", file=sys.stderr)
    return 0
