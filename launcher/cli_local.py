"""`launcher status|logs|list|cancel --local`: the cluster commands for a job started with run-local.

A run-local job is found by its record (launcher.local_jobs: <workdir>/job.json, default
runs/local/<name>); its replicas' logs are <workdir>/logs/<replica>.log.
"""
from __future__ import annotations

import argparse
import codecs
import os
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from dlrm.errors import UserError
from launcher.local_jobs import (JOB_RECORD, LOCAL_ROOT, LOGS, RUNNING, LocalJobRecord, alive, live_replicas,
                                 not_provably)
from launcher.procs import kill_tree, process_tree
from launcher.results import read_run, status_lines

DEFAULT_GRACE_S = 30.0  # a record without the job's grace period (written before it was kept): Kubernetes' default


# ---------------------------------------------------------------------------------------------
# status


def local_status(args: argparse.Namespace) -> int:
    last = None
    while True:
        record = LocalJobRecord.read(args.name, args.workdir)
        text = "\n".join(local_lines(record, ages=False))
        if text != last:
            stamp = "" if last is None else f"\n--- {datetime.now().strftime('%H:%M:%S')}\n"
            print(stamp + "\n".join(local_lines(record, ages=True)), flush=True)
            last = text
        if not args.watch or record["state"] != RUNNING:
            return 0 if record["state"] in (RUNNING, "Succeeded") else 1
        time.sleep(args.interval)


def _since(started: str | None) -> str:
    if not started:
        return "-"
    s = int((datetime.now(timezone.utc) - datetime.fromisoformat(started)).total_seconds())
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def local_lines(record: dict, ages: bool) -> list[str]:
    since = f", started {_since(record.get('started'))} ago" if record.get("started") and ages else ""
    lines = [f"run-local job {record['name']}: {record.get('state', '?')} (pid {record.get('pid', '?')}, "
             f"{record.get('restarts', 0)} restart(s){since}; workdir {record['workdir']})"]
    if record.get("state") == "Lost":
        lines.append("  the run-local process is gone (killed?): the job is not running")
    failure = record.get("failure")
    if failure:  # the replica that failed the job, its exit code, and why in its own words
        lines.append(f"  {failure['replica']} (container {failure['container']}) exited with code {failure['exit_code']}: "
                     f"{failure.get('error') or 'no error: line in its log'} "
                     f"(log: {Path(record['workdir'], LOGS, failure['replica'] + '.log')})")
    if not record.get("out"):
        return lines + ["run output: not known yet (the trainer has not been started)"]
    return lines + status_lines(record["out"], ages, record.get("run_id", ""))


# ---------------------------------------------------------------------------------------------
# logs


def local_logs(args: argparse.Namespace) -> int:
    """Print a run-local replica's log; with -f keep printing what is appended until the job ends."""
    record = LocalJobRecord.read(args.name, args.workdir)
    rank = args.node if args.node is not None else (0 if args.replica == "master" else args.index + 1)
    replicas = record.get("replicas") or []  # node-rank order: master-0, worker-0.. or a TrainJob's node-0-0..
    if not 0 <= rank < max(len(replicas), 1):
        raise UserError(f"run-local job {args.name} has {len(replicas)} node(s) ({', '.join(replicas)}): no node rank {rank}")
    replica = replicas[rank] if replicas else f"{args.replica}-{args.index}"
    path = Path(record["workdir"]) / LOGS / f"{replica}.log"
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
            running = LocalJobRecord.read(args.name, args.workdir)["state"] == RUNNING
            if running:
                time.sleep(0.2)


# ---------------------------------------------------------------------------------------------
# list


def _step(record: dict) -> str:
    try:
        train = [r for r in read_run(record["out"]) if r.get("kind") == "train"] if record.get("out") else []
    except (UserError, OSError):
        return "?"
    return f"{train[-1]['step']:,}" if train else "-"


def local_list(args: argparse.Namespace) -> int:
    """Every run-local job under the default workdir root (LOCAL_ROOT/<name>), oldest first."""
    records = []
    for path in sorted(LOCAL_ROOT.glob(f"*/{JOB_RECORD}")):
        try:
            records.append(LocalJobRecord.read(path.parent.name, path.parent, any_name=True))
        except UserError as e:
            print(f"warning: {e}", file=sys.stderr)
    if not records:
        print(f"no run-local jobs in {LOCAL_ROOT}/ (jobs run with --workdir elsewhere are not listed)")
        return 0
    rows = [["NAME", "STATE", "STEP", "STARTED"]]
    rows += [[r["name"], r.get("state", "?"), _step(r), f"{_since(r.get('started'))} ago" if r.get("started") else "-"]
             for r in sorted(records, key=lambda r: r.get("started") or "")]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print("\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows))
    return 0


# ---------------------------------------------------------------------------------------------
# cancel


def local_cancel(args: argparse.Namespace) -> int:
    """Stop a run-local job as deleting its pods would: SIGTERM to every replica, SIGKILL after the
    job's grace period. run-local does it when it gets SIGTERM; if run-local is gone, its replicas
    are stopped here."""
    record = LocalJobRecord.read(args.name, args.workdir)
    grace = float(record.get("grace_s") or DEFAULT_GRACE_S)
    if record["state"] == RUNNING:
        why = not_provably(record["pid"], record.get("pid_start"))
        if why:  # a pid alone may have been reused since the record was written: signal nobody
            raise UserError(f"run-local job {args.name}: its recorded run-local process cannot be shown to be "
                            f"the job's ({why}); nothing was signalled: stop run-local yourself if it is still running")
        os.kill(record["pid"], signal.SIGTERM)
        deadline = time.monotonic() + grace + 15  # the grace period, then SIGKILL and reaping
        while time.monotonic() < deadline and alive(record["pid"], record.get("pid_start")):
            time.sleep(0.1)
        record = LocalJobRecord.read(args.name, args.workdir)
    left = live_replicas(record)
    unproven = {n: why for n, pid in left.items()
                if (why := not_provably(pid, record["replica_pids"][n][1]))}
    left = {n: pid for n, pid in left.items() if n not in unproven}
    if left:  # run-local was killed (or did not stop in time): its replicas are ours to stop
        kill_tree([p for pid in left.values() for p in process_tree(pid)], grace)
    if unproven:
        raise UserError(f"run-local job {args.name}: replica(s) {', '.join(unproven)} cannot be shown to be the job's "
                        f"({'; '.join(unproven.values())}); they were not signalled"
                        + (f" (stopped {', '.join(left)})" if left else ""))
    if record["state"] == RUNNING:  # run-local did not end within its own grace period
        raise UserError(f"run-local job {args.name} (pid {record['pid']}) did not stop within {grace + 15:.0f}s of SIGTERM; "
                        f"its replicas were killed: kill {record['pid']} to end it")
    what = "cancelled" if record["state"] == "Cancelled" else f"not running ({record['state']})"
    print(f"run-local job {args.name}: {what}" + (f"; stopped its leftover replicas {', '.join(left)}" if left else ""))
    return 0
