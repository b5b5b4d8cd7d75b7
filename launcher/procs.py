"""Process trees on Linux: find every process a replica started (torchrun and its workers), kill them.

run-local needs this because a replica is a process tree, not a pod: killing only the top process
would leave torchrun's workers holding ports and files.
"""
from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path


def exit_code(rc: int) -> int:
    """Killed by signal N -> 128+N, as a container runtime reports it."""
    return 128 - rc if rc < 0 else rc


def _procs() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, process group), from /proc (empty where there is none)."""
    out = {}
    for d in Path("/proc").glob("[0-9]*"):
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(d.name)] = (int(fields[1]), int(fields[2]))
        except (OSError, IndexError, ValueError):
            continue
    return out


def process_tree(pid: int) -> list[int]:
    """pid, then every descendant and every member of its process group (torchrun's workers start new sessions)."""
    table = _procs()
    found, frontier = [pid], [pid]
    while frontier:
        children = [p for p, (ppid, _) in table.items() if ppid in frontier and p not in found]
        found += children
        frontier = children
    return found + [p for p, (_, pgrp) in table.items() if pgrp == pid and p not in found]


def kill_tree(pids: list[int], grace_s: float) -> None:
    """SIGTERM everything, then SIGKILL what is left after the grace period."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for p in pids:
            try:
                os.kill(p, sig)
                alive.append(p)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 5)
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if running(p)]
            time.sleep(0.05)
        pids = alive
        if not pids:
            return


def running(pid: int) -> bool:
    """Running, not a zombie (our own children stay zombies until Popen reaps them)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
            return True
        except (ProcessLookupError, PermissionError):  # gone, or the pid now belongs to someone else
            return False


def start_time(pid: int) -> int | None:
    """When the process started (clock ticks since boot), or None when it is gone: with its pid, it
    names one process, where a pid alone may have been reused by another since it was written down."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
