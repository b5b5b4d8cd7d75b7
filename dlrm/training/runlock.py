"""One run writes a run folder (and a checkpoint store) at a time, and only where it can write.

    lock = claim_outputs(out, ckpt_uri, runtime)   # before the first write; released by lock.release()

A lock is one small object, `.dlrm-lock.json` = {host, pid, pid_start, started}, created only if
absent: a hard link for a folder, a conditional PUT (If-None-Match: *) for s3:// (AWS S3 and
MinIO honour it; a store that ignores it makes the S3 lock best-effort). A second trainer fails
at once naming the holder. A lock whose holder is a dead process on this host (the same pid
with another start time is another process) is stale and taken over: a pod restarted in place
keeps its hostname, so a killed run resumes without anyone deleting locks. Under torchrun rank 0
takes the locks and every rank learns the outcome. Before that, every rank writes and deletes a
probe object in each output, so a store that cannot be written fails before the first step,
not at the first checkpoint hours later.

A lock covers its folder and everything under it: before taking its own, a run looks for a live
lock of another run in every folder (or S3 prefix) above each of its outputs, so a `checkpoint_dir`
(or `out`) that names a folder inside another live run's output is refused too, not trained into.
"""
from __future__ import annotations

import atexit
import json
import os
import socket
import time

from dlrm.errors import UserError
from dlrm.io.fsutil import MAX_TEXT_BYTES, is_s3_uri
from dlrm.io.storage import open_store, probe_writable  # noqa: F401 (probe_writable: imported from here too)

LOCK = ".dlrm-lock.json"


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22); None if
    there is no such process (or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _me() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "pid_start": _process_start(pid),
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _holder_is_gone(holder: dict) -> bool:
    """True only when the holder ran on this host and that process no longer exists."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    if not os.path.isdir("/proc"):
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return _process_start(holder["pid"]) != holder.get("pid_start")


def _above(uri: str) -> list[str]:
    """The folders (or s3:// prefixes) holding `uri`, nearest first: where a lock would cover it.
    A local path is resolved first (symlinks followed), so another name for the same folder is seen."""
    if is_s3_uri(uri):
        head, *parts = uri[len("s3://"):].strip("/").split("/")
        return [f"s3://{'/'.join([head, *parts[:i]])}" for i in range(len(parts) - 1, -1, -1)]
    path = os.path.realpath(uri)
    out = []
    while (parent := os.path.dirname(path)) != path:
        out.append(parent)
        path = parent
    return out


def _is_mine(holder: dict, me: dict) -> bool:
    return all(holder.get(k) == me[k] for k in ("host", "pid", "pid_start"))


def _describe(holder: dict) -> str:
    return (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, started {holder.get('started', '?')}"
            if holder else "an unreadable lock")


def refuse_inside_live_run(uri: str, me: dict) -> None:
    """A UserError when a folder above `uri` holds another live run's lock (its outputs cover `uri`)."""
    for outer in _above(uri):
        store = open_store(outer)
        try:
            holder = json.loads(store.get_bytes(LOCK, limit=MAX_TEXT_BYTES))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        except UserError:  # a missing bucket, no access: the output's own lock says so, naming it
            return
        except ValueError:
            holder = {}
        holder = holder if isinstance(holder, dict) else {}
        if _is_mine(holder, me) or _holder_is_gone(holder):
            continue
        raise UserError(f"{uri} is inside {outer}, the output of another run that is still live ({_describe(holder)}): "
                        f"give this run an output (out, checkpoint_dir) of its own; if that run is gone (another host "
                        f"cannot be checked), delete {outer}/{LOCK}")


class Lock:
    def __init__(self, store, me: dict):
        self.store, self.me, self.held = store, me, False

    def acquire(self) -> None:
        refuse_inside_live_run(self.store.uri, self.me)
        data = json.dumps(self.me).encode()
        for _ in range(3):  # a stale lock is removed, then raced for again
            try:
                created = self.store.put_bytes_if_absent(LOCK, data)
            except OSError as e:  # the lock is the run folder's first write: name the folder
                raise OSError(e.errno, f"cannot write here ({e.strerror or e}); checked before the first step",
                              self.store.uri) from None
            if created:
                self.held = True
                atexit.register(self.release)
                return
            try:
                holder = json.loads(self.store.get_bytes(LOCK, limit=MAX_TEXT_BYTES))
            except FileNotFoundError:
                continue  # released meanwhile
            except ValueError:
                holder = {}
            if not isinstance(holder, dict):
                holder = {}
            if _is_mine(holder, self.me) or _holder_is_gone(holder):
                self.store.delete(LOCK)
                continue
            who = _describe(holder)
            raise UserError(f"{self.store.uri} is in use by another run ({who}); wait for it to finish, or if it is "
                            f"gone (another host cannot be checked), delete {self.store.uri}/{LOCK}")
        raise UserError(f"{self.store.uri}: could not take {LOCK} (other runs keep taking it)")

    def release(self) -> None:
        """Delete the lock if it is still ours."""
        if not self.held:
            return
        self.held = False
        try:
            if json.loads(self.store.get_bytes(LOCK, limit=MAX_TEXT_BYTES)).get("pid_start") == self.me["pid_start"]:
                self.store.delete(LOCK)
        except (OSError, ValueError, UserError):
            pass  # gone or unreachable: a later run treats it as stale or names it


class Claim:
    def __init__(self, locks: list[Lock]):
        self.locks = locks

    def release(self) -> None:
        for lock in self.locks:
            lock.release()


def claim_outputs(out: str, ckpt_uri: str, runtime) -> Claim:
    """Lock the run folder and, if elsewhere, the checkpoint store (rank 0; each refused inside another
    live run's output, see refuse_inside_live_run), then probe the
    checkpoint store for writes (every rank writes its checkpoint file there); every rank fails
    if any rank did, before anything else is written."""
    import torch

    def agree(step) -> None:
        error = None
        try:
            step()
        except (UserError, OSError) as e:
            error = e
        failed = runtime.all_reduce_sum(torch.tensor(float(error is not None), device=runtime.device)).item()
        if error is not None or failed:
            Claim(locks).release()
            raise error or UserError("another rank could not lock or write the run's outputs (see its error)")

    locks: list[Lock] = []

    def lock_all() -> None:
        if runtime.is_main:
            me = _me()
            for uri in [out] + ([ckpt_uri] if ckpt_uri != os.path.join(out, "checkpoints") else []):
                locks.append(Lock(open_store(uri), me))
                locks[-1].acquire()

    agree(lock_all)
    agree(lambda: probe_writable(ckpt_uri))
    return Claim(locks)
