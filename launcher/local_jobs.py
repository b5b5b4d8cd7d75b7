"""A run-local job's record: <workdir>/job.json, what `launcher status|logs|list|cancel|results --local` read.

run-local (launcher.run_local) writes it whole at each change: state, the run-local process's pid,
the replicas' pids in node-rank order, the run's output folder and run id, and on failure which
replica failed, its exit code and its `error: ...` line. Nothing here imports the cluster client.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from datetime import datetime
from pathlib import Path

from dlrm.errors import UserError
from dlrm.io.fsutil import atomic_write, is_s3_uri, load_json_file, local_path
from launcher.procs import running, start_time

LOCAL_ROOT = Path("runs/local")  # run-local's default workdir is LOCAL_ROOT/<job name>
JOB_RECORD = "job.json"
LOGS = "logs"  # <workdir>/logs/<replica>.log
PODS = "pods"  # <workdir>/pods/<replica>/<volume>: each pod's emptyDirs
RUNNING = "Running"
# The one-line error every dlrm and launcher command ends with (dlrm.cli), as torchrun's workers print it
# (bare, or after a "[rank1]:" prefix).
ERROR_LINE = re.compile(r"^(?:\[[\w-]+\]:\s*)?(error: .*)$")


def local_workdir(name: str, workdir: str | None = None) -> Path:
    if not workdir:
        return LOCAL_ROOT / name
    return local_path(workdir, "--workdir", "a run-local job", "name a local folder (train.out=s3://... "
                      "puts the run's output on S3)", what="keeps its pods' folders and logs in a local folder")


def add_local_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--local", action="store_true", help="a job started with run-local (make submit BACKEND=local)")
    p.add_argument("--workdir", help=f"the run-local job's workdir (default {LOCAL_ROOT}/NAME)")


class LocalJobRecord:
    """<workdir>/job.json, rewritten whole (atomically) at each change of a run-local job."""

    def __init__(self, workdir: str | Path, name: str):
        self.path = Path(workdir) / JOB_RECORD
        self.data = {"name": name, "workdir": str(Path(workdir).resolve())}

    def update(self, **fields) -> None:
        self.data.update(fields)
        atomic_write(self.path, json.dumps(self.data, indent=1) + "\n", fsync=False)

    @staticmethod
    def read(name: str, workdir: str | Path | None, any_name: bool = False) -> dict:
        """The record of job `name` in its workdir; one of another job (a --workdir that is not this
        job's) is refused, unless `any_name`, so no command shows or stops a job it was not asked about."""
        path = local_workdir(name, workdir) / JOB_RECORD
        if not path.exists():
            raise UserError(f"no run-local job {name!r}: {path} does not exist (run-local writes it; "
                            f"--workdir DIR if the job ran with one)")
        try:
            data = load_json_file(path, "run-local job record", UserError)
        except UserError as e:
            raise UserError(f"{path}: not a run-local job record ({str(e).removeprefix(f'{path}: ')})") from None
        if not isinstance(data, dict):
            raise UserError(f"{path}: not a run-local job record (a JSON object)")
        check_record(data, path)
        if data["name"] != name and not any_name:
            raise UserError(f"{path}: the record of run-local job {data['name']!r}, not {name!r}: pass the --workdir "
                            f"{name} ran with, or the name {data['name']}")
        if data.get("state") == RUNNING and not alive(data.get("pid"), data.get("pid_start")):
            data["state"] = "Lost"  # run-local itself was killed: nobody will write the final state
        return data


STATES = (RUNNING, "Succeeded", "Failed", "Cancelled")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _timestamp(v) -> bool:
    try:
        return isinstance(v, str) and datetime.fromisoformat(v).tzinfo is not None
    except ValueError:
        return False


def _process(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and _is_int(v[0]) and v[0] > 0 and (v[1] is None or _is_int(v[1]))


# What each field of job.json must hold: a record that is valid JSON but wrong (edited, written by
# another version) is named in one line, and `list --local` shows the other jobs.
_FIELDS = {
    "name": (lambda v: isinstance(v, str) and v != "", "a job name"),
    "workdir": (lambda v: isinstance(v, str) and v != "", "a folder"),
    "state": (lambda v: v in STATES, f"one of {', '.join(STATES)}"),
    "pid": (lambda v: _is_int(v) and v > 0, "a process id"),
    "pid_start": (lambda v: v is None or _is_int(v), "a process start time (clock ticks) or null"),
    "started": (_timestamp, "an ISO 8601 time with a UTC offset"),
    "grace_s": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < float("inf"),
                "seconds >= 0"),
    "replicas": (lambda v: isinstance(v, list) and all(isinstance(r, str) for r in v), "a list of replica names"),
    "replica_pids": (lambda v: isinstance(v, dict) and all(_process(p) for p in v.values()),
                     "{replica: [pid, start time]}"),
    "out": (lambda v: v is None or isinstance(v, str), "the run's output"),
    "run_id": (lambda v: isinstance(v, str), "a run id"),
    "restarts": (lambda v: _is_int(v) and v >= 0, "a count"),
    "exit_code": (lambda v: _is_int(v), "an exit code"),
    "failure": (lambda v: isinstance(v, dict) and isinstance(v.get("replica"), str), "{replica, container, exit_code, error}"),
}


def check_record(data: dict, path: Path) -> None:
    """A UserError naming the file, the field, its value and what it must hold."""
    missing = [k for k in ("name", "workdir", "state") if k not in data]
    if data.get("state") == RUNNING and "pid" not in data:
        missing.append("pid")
    if missing:
        raise UserError(f"{path}: not a run-local job record: no {missing[0]!r}")
    for key, (ok, expected) in _FIELDS.items():
        if key in data and not ok(data[key]):
            raise UserError(f"{path}: {key}: expected {expected}, got {data[key]!r}")


def process_id(pid: int) -> list[int]:
    """[pid, its start time]: what the record keeps of a process, so a reused pid is never taken for it."""
    return [pid, start_time(pid)]


def alive(pid, start: int | None = None) -> bool:
    """The process runs (possibly another user's; a zombie has ended) and, when its start time is known,
    is the same one."""
    try:
        os.kill(int(pid), 0)
    except (TypeError, ValueError, OverflowError, ProcessLookupError):
        return False
    except PermissionError:
        pass
    return running(int(pid)) and (start is None or start_time(int(pid)) in (start, None))


def not_provably(pid: int, start: int | None) -> str | None:
    """Why a running `pid` cannot be shown to be the recorded process (None when it can): a signal goes
    only to a process whose start time was recorded and still matches, never to a reused pid."""
    now = start_time(pid)
    if start is None:
        return f"pid {pid}: its start time was not recorded"
    if now is None:
        return f"pid {pid}: its start time cannot be read (/proc/{pid}/stat)"
    if now != start:
        return f"pid {pid} is another process now (started at tick {now}, the recorded one at {start})"
    return None


def live_replicas(record: dict) -> dict[str, int]:
    """The replicas of the record's job whose process still runs: {replica: pid}."""
    return {name: ident[0] for name, ident in (record.get("replica_pids") or {}).items()
            if isinstance(ident, list) and len(ident) == 2 and alive(*ident)}


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


def run_id_of_argv(argv: list[str]) -> str:
    """The run id the launcher rendered into the trainer's command (`--set run_id=X`), or ""."""
    return next((b[len("run_id="):] for a, b in zip(argv, argv[1:]) if a == "--set" and b.startswith("run_id=")), "")


def error_line(log: Path) -> str | None:
    """The last `error: ...` line of a replica's log: why it failed, in the trainer's own words."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - (1 << 20)))  # the end says why; logs can be long
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return None
    return next((m.group(1) for line in reversed(lines) if (m := ERROR_LINE.match(line.strip()))), None)
