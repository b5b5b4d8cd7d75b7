"""A run's life around the loop: whose output folder this is, and how a run stops early.

    run = claim_identity(cfg, ckpt_uri, runtime)   # new or continued; refuses another run's folder
    with StopOnSigterm() as stop: ...               # stop.requested once SIGTERM arrived
    raise Diverged(...)                             # a non-finite loss (train.py says where and what to change)

Run identity: a folder holding a run (run.json, or a complete checkpoint) is continued only when
asked: `resume` (the user), or `run_id` equal to the one its run.json records (the same job
restarted, or resized: the launcher renders run_id from the job name and what the experiment is,
never its placement, launcher/run_identity.py). Anything else is refused before a byte is written,
so a second experiment never rotates away the first one's checkpoints. Rank 0 decides and every
rank learns the outcome in one collective. A run continued at another world size loads its
checkpoint resharded and says so in one line (`resize_line`).

Preemption: Kubernetes ends a pod with SIGTERM and, a grace period later, SIGKILL (torchrun
forwards SIGTERM to its trainers). The handler only sets a flag; the loop's next check-in,
a collective every rank takes at the same step, turns it into an agreed stop: a checkpoint at
that step on every rank, the output synced, the lock released, exit PREEMPTED_EXIT.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
import time
import uuid

from dlrm.errors import UserError
from dlrm.io.fsutil import MAX_TEXT_BYTES
from dlrm.io.storage import open_store
from dlrm.io.checkpoint import complete_checkpoints
from dlrm.training.runlog import METRICS, RECORD

# 128 + SIGTERM, what a shell reports for a process SIGTERM ended; Kubeflow's restartPolicy
# ExitCode retries 128-255 (a preemption is worth retrying) and fails 1-127 for good.
PREEMPTED_EXIT = 143


class Diverged(UserError):
    """The training loss became NaN or infinite: the run stops before checkpointing it."""


@dataclasses.dataclass(frozen=True)
class RunIdentity:
    run_id: str
    continuing: bool  # a run is there and this process continues it (resume from its checkpoints)
    # (world size, ranks per node) its run.json records: where the run's last start ran
    placed: tuple[int, int] | None = None


def _recorded(cfg, ckpt_uri: str) -> tuple[dict | None, list[str]]:
    """The run already in `out` (its run.json, or {} when unreadable; None when absent) and its
    complete checkpoints."""
    out = open_store(cfg.out)
    record = None
    if out.exists(RECORD):
        try:
            record = json.loads(out.get_bytes(RECORD, limit=MAX_TEXT_BYTES))
        except ValueError:
            record = {}
        record = record if isinstance(record, dict) else {}
    return record, complete_checkpoints(open_store(ckpt_uri))


def decide_identity(cfg, ckpt_uri: str) -> RunIdentity:
    """New run, continued run, or a UserError naming the run that is there (see the module doc)."""
    record, ckpts = _recorded(cfg, ckpt_uri)
    if record is None and not ckpts:
        if not cfg.resume and open_store(cfg.out).exists(METRICS):  # a run from before run.json, or its remains
            raise UserError(f"{cfg.out} holds another run's {METRICS} (no {RECORD}, no checkpoint): a new run would "
                            f"append to it; pass another --out, or --resume to continue that run from step 0")
        return RunIdentity(cfg.run_id or uuid.uuid4().hex[:12], False)
    there = (record or {}).get("run_id") or ""
    if cfg.resume or (cfg.run_id and cfg.run_id == there):
        placed = tuple((record or {}).get(k) for k in ("world_size", "ranks_per_node"))
        placed = placed if all(isinstance(n, int) and n >= 1 for n in placed) else None
        return RunIdentity(cfg.run_id or there or uuid.uuid4().hex[:12], True, placed)
    step = f"step {int(ckpts[-1][5:]):,}" if ckpts else "no checkpoint yet"
    where = cfg.out if record is not None else ckpt_uri
    raise UserError(f"{where} holds another run (run_id {there or 'unknown'}, {step}); pass --resume "
                    f"(--set resume=true) to continue it, or another --out")


def claim_identity(cfg, ckpt_uri: str, runtime) -> RunIdentity:
    """decide_identity on rank 0, its outcome (or its error) on every rank."""
    outcome = None
    if runtime.is_main:
        try:
            outcome = decide_identity(cfg, ckpt_uri)
        except (UserError, OSError) as e:
            outcome = e
    outcome = runtime.all_gather_object(outcome)[0] if runtime.distributed else outcome
    if isinstance(outcome, BaseException):
        if runtime.is_main:
            raise outcome
        raise UserError(f"rank 0 refused the run's output folder {cfg.out} (its error is printed above)")
    return outcome


def resize_line(run: RunIdentity, meta: dict, plan, runtime, global_batch: int) -> str | None:
    """The line a run continued from checkpoint metadata `meta` at another placement prints, or None
    where nothing moved: the ranks before (nodes x ranks per node where run.json recorded them for the
    checkpoint's world size) and now, whether the checkpoint was resharded to this run's plan, and the
    global batch, which the run's identity keeps, against each rank's share of it."""
    step, saved_world, saved_plan = meta["step"], meta.get("world_size", runtime.world_size), meta.get("plan")
    per_node = run.placed[1] if run.placed and run.placed[0] == saved_world else None
    before = f"{saved_world // per_node}x{per_node}" if per_node else f"{saved_world}"
    now = f"{runtime.world_size // runtime.local_world_size}x{runtime.local_world_size}"
    resharded = saved_plan != json.loads(json.dumps(plan.to_dict()))
    if not resharded and (before == now or (not per_node and saved_world == runtime.world_size)):
        return None
    line = f"resuming run {run.run_id} at step {step:,}: " + (
        f"resized from {before} to {now} ranks" if before != now else f"{now} ranks as before")
    line += ", checkpoint resharded" if resharded else ", checkpoint shards as saved"
    if saved_world != runtime.world_size:
        line += (f"; global batch {global_batch:,} as before, {-(-global_batch // saved_world):,} -> "
                 f"{-(-global_batch // runtime.world_size):,} a rank")
    return line


def warn_unless_shared(ckpt_uri: str, runtime) -> None:
    """Warn when some rank cannot see what rank 0 writes into the checkpoint store: one output
    folder per pod (emptyDir), where a checkpoint ends up split across nodes and no restart can
    resume from it (resume refuses such a checkpoint at once, see dlrm.training.resume)."""
    if not runtime.distributed:
        return
    store = open_store(ckpt_uri)
    key = runtime.all_gather_object(f".dlrm-shared-probe-{uuid.uuid4().hex[:12]}" if runtime.is_main else None)[0]
    if runtime.is_main:
        store.put_bytes(key, b"")
    runtime.barrier()
    seen = runtime.all_gather_object(store.exists(key))
    runtime.barrier()
    if runtime.is_main:
        store.delete(key)
        blind = [r for r, ok in enumerate(seen) if not ok]
        if blind:
            print(f"warning: ranks {blind} do not see {ckpt_uri} as rank 0 does (an output folder per pod?): "
                  f"checkpoints will be split across nodes and a restart cannot resume from them; "
                  f"give every node the same output (out=s3://..., or a shared volume claim)",
                  file=sys.stderr, flush=True)


# After SIGTERM, how long the loop may go without finishing a training step (outside an eval or a
# checkpoint) before the process gives up on a clean stop: a rank parked in a hung collective or a
# stuck read would otherwise hold its pod until the SIGKILL (torchrun's 30 s, the pod's grace period).
STOP_WAIT_S = 10.0


class StopOnSigterm:
    """SIGTERM sets `requested` instead of ending the process; the previous handler comes back on exit.
    Only the main thread may install handlers: elsewhere (a test's thread) SIGTERM keeps its default.

    The trainer reports progress (`stepped()`, `busy()` around evals and checkpoints, `stopping`
    once every rank agreed); a watchdog started by the signal ends the process (exit
    PREEMPTED_EXIT, `on_abandon` run first) when no step finishes for STOP_WAIT_S seconds."""

    def __init__(self, wait_s: float = STOP_WAIT_S):
        self.requested, self.stopping, self.wait_s = False, False, wait_s
        self.on_abandon: list = []  # callables run before an abandoned stop exits (release the lock)
        self._busy, self._last = 0, time.monotonic()
        self._previous = None

    def stepped(self) -> None:
        self._last = time.monotonic()

    @contextlib.contextmanager
    def busy(self):
        """An eval or a checkpoint: as long as it takes (the pod's grace period bounds it)."""
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1
            self._last = time.monotonic()

    def _handler(self, signum, frame) -> None:
        if self.requested:
            return
        print("SIGTERM: stopping after the current step with a checkpoint", file=sys.stderr, flush=True)
        self.requested, self._last = True, time.monotonic()
        threading.Thread(target=self._watch, name="sigterm-watchdog", daemon=True).start()

    def _watch(self) -> None:
        while not self.stopping:
            time.sleep(0.2)
            if self.stopping or self._busy or time.monotonic() - self._last < self.wait_s:
                continue
            print(f"SIGTERM: no training step finished for {self.wait_s:g} s (a hung peer or read?): exiting "
                  f"without a checkpoint (exit {PREEMPTED_EXIT}); a restart resumes from the last one",
                  file=sys.stderr, flush=True)
            for fn in self.on_abandon:
                with contextlib.suppress(Exception):
                    fn()
            os._exit(PREEMPTED_EXIT)

    def __enter__(self) -> StopOnSigterm:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        self.stopping = True  # the run is over either way: no watchdog outlives it
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
