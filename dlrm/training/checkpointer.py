"""Checkpoints written while training goes on (dlrm.io.checkpoint is the format; this is the timing).

    ckpt = Checkpointer(uri, runtime, keep=2, on_error="retry", state=[weight, *row_state.values()])
    ckpt.settle(ckpt.wait(), log)  # every rank, same step: the previous save's outcome (waited for), acted on
    ckpt.save(step, weight=..., row_state=..., pieces_by_rank=..., dense=..., meta=...)   # final=True: in place
    ckpt.failed()                  # this rank's vote at a check-in: a finished save failed
    ckpt.take_complete()           # a finished save that counts, for its line

A background save copies this rank's rows, row optimizer state and (rank 0) dense state into host
buffers, allocated at the first checkpoint and reused (pinned on CUDA, so the copy is a DMA), then
returns: training goes on while a thread writes and hashes the copy. At most one save is in
flight: the next one waits for it first. Once its files are durable, the thread meets the other
ranks' threads in a collective on a gloo group of its own (created here, at start, by every rank:
a thread may not share the training group with the main thread), and rank 0 writes metadata.json
(the checkpoint counts from then on), drops what the folder should not hold and rotates older
checkpoints: rotation runs only there, so it never removes the newest complete checkpoint while a
newer one is still being written. A save that fails on any rank leaves no folder behind; every
rank learns the same outcome (rank 0's verdict travels in a second gather).

`final=True` (the run's last checkpoint, the SIGTERM one), or every save on a host without room
for the copy, writes the live tensors in the caller's thread with the same sequence, no copy.
"""
from __future__ import annotations

import datetime
import threading
import time
from dataclasses import dataclass

import torch

from dlrm.dist.hostmem import snapshot_fits
from dlrm.io.checkpoint import Piece, abandon, checkpoint_name, commit, write_dense, write_shard
from dlrm.io.storage import open_store


@dataclass
class Outcome:
    """What became of one save, the same on every rank."""

    name: str
    seconds: float  # from the save's start to its metadata (or its failure)
    error: str | None  # None: complete


class CheckpointFailed(OSError):
    """A checkpoint that could not be written (a full disk, an S3 error): the environment's fault, so the
    CLI reports it as any OSError, one line and exit status 1."""


class Checkpointer:
    def __init__(self, uri: str, runtime, *, keep: int, on_error: str = "retry", background: bool = True,
                 state: list[torch.Tensor] = ()):
        """`state`: the tensors a background save copies (this rank's rows and row optimizer state):
        when some node's host cannot hold that copy, every save is written in place, said once."""
        self.uri, self.runtime, self.keep, self.on_error = uri, runtime, keep, on_error
        self.store = open_store(uri)
        self.background = background
        if background:
            short = snapshot_fits(sum(t.numel() * t.element_size() for t in state), runtime)
            if short:
                self.background = False
                if runtime.is_main:
                    print(f"note: checkpoints are written in place, training waits for them: a host copy for "
                          f"background writes does not fit ({short})", flush=True)
        self.group = None
        if runtime.distributed:  # collective: every rank creates it, at the same point, in its main thread
            import torch.distributed as dist

            self.group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=runtime.timeout_s))
        self._buffers: dict[str, torch.Tensor] = {}
        self._thread: threading.Thread | None = None
        self._outcome: Outcome | None = None
        self.stall_s = 0.0  # the training thread's time inside save() and wait(): what checkpoints cost the run
        self.count = 0
        self.note, self.retry, self.last_seconds = "", False, 0.0

    # -- the calls the trainer makes -------------------------------------------------------------

    def save(self, step: int, *, weight: torch.Tensor, row_state: dict[str, torch.Tensor],
             pieces_by_rank: dict[int, list[Piece]], dense: dict | None, meta: dict, final: bool = False) -> None:
        """Every rank, at the same step, after wait() took the previous save's outcome. In the
        background: returns once the copy is taken; `final` (or no room for a copy): once written
        and committed (either way, wait() gives the outcome). Rank 0 passes `dense`."""
        background = self.background and not final
        self.retry = False
        assert self._thread is None and self._outcome is None, "wait() for the previous save first"
        t0 = time.perf_counter()
        job = dict(step=step, pieces_by_rank=pieces_by_rank, meta=meta, t0=t0)
        self.count += 1
        if not background:
            self._write(weight=weight.detach(), row_state={k: v.detach() for k, v in row_state.items()},
                        dense=dense, **job)
            self.stall_s += time.perf_counter() - t0
            return
        snap_weight = self._copy("weight", weight)
        snap_state = {k: self._copy(f"row_state.{k}", v) for k, v in row_state.items()}
        snap_dense = torch.utils._pytree.tree_map(
            lambda t: t.detach().to("cpu", copy=True) if isinstance(t, torch.Tensor) else t, dense)
        if weight.device.type == "cuda":
            torch.cuda.current_stream(weight.device).synchronize()  # the pinned copies have landed
        self._thread = threading.Thread(target=self._write, name=f"checkpoint-{step}", daemon=True,
                                        kwargs=dict(weight=snap_weight, row_state=snap_state, dense=snap_dense, **job))
        self._thread.start()
        self.stall_s += time.perf_counter() - t0

    def busy(self) -> bool:
        """A background write is still running."""
        return self._thread is not None and self._thread.is_alive()

    def wait(self) -> Outcome | None:
        """The last save's outcome once it is durable and committed (or failed), taken; None when
        there was none. Every rank gets the same outcome, so a decision on it is agreed when every
        rank calls this at the same step."""
        if self._thread is not None:
            t0 = time.perf_counter()
            self._thread.join()
            self._thread = None
            self.stall_s += time.perf_counter() - t0
        outcome, self._outcome = self._outcome, None
        return outcome

    def take_complete(self) -> Outcome | None:
        """A background save that finished and counts, taken (for its line); None otherwise. Not
        agreed between ranks: a failure is left for wait() at a step every rank agreed on."""
        if self.busy() or self._outcome is None or self._outcome.error is not None:
            return None
        return self.wait()

    def failed(self) -> bool:
        """A finished save failed and is not taken yet: this rank's vote to act on it now."""
        return not self.busy() and self._outcome is not None and self._outcome.error is not None

    def settle(self, outcome: Outcome | None, log, final: bool = False) -> None:
        """A save's outcome, the same on every rank: its line (RunLog.checkpoint); a failure goes on
        the next progress line (take_note) and is retried at once (`retry`), or stops the run
        (on_error=stop, and always for the final checkpoint: the run cannot end without it)."""
        if outcome is None:
            return
        if outcome.error is None:
            self.last_seconds = outcome.seconds
            log.checkpoint(outcome.name, self.uri, outcome.seconds, background=self.background and not final)
            return
        if final or self.on_error == "stop":
            log.sync(force=True)
            raise CheckpointFailed(f"checkpoint {self.uri}/{outcome.name} failed: {outcome.error}; its files were removed"
                            f"{'' if final else ' (checkpoint_on_error=stop)'}")
        self.note = f"checkpoint {outcome.name} FAILED ({outcome.error}): retrying"
        self.retry = True

    def take_note(self) -> str:
        note, self.note = self.note, ""
        return note

    def print_share(self, run_s: float) -> None:
        """Rank 0: what checkpoints cost the run, the training thread's time in them."""
        if self.runtime.is_main and self.count:
            print(f"checkpoints: {self.count} saved, training waited {self.stall_s:.2f}s for them: "
                  f"{100 * self.stall_s / max(run_s, 1e-9):.1f}% of the run's {run_s:.1f}s", flush=True)

    # -- the work ------------------------------------------------------------------------------

    def _copy(self, key: str, t: torch.Tensor) -> torch.Tensor:
        """`t` copied into this key's host buffer (made at the first checkpoint, reused after)."""
        buf = self._buffers.get(key)
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
            buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=t.device.type == "cuda")
            self._buffers[key] = buf
        buf.copy_(t.detach(), non_blocking=t.device.type == "cuda")
        return buf

    def _gather(self, obj) -> list:
        if self.group is None:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.runtime.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def _write(self, *, step: int, weight, row_state, dense, pieces_by_rank, meta, t0: float) -> None:
        """This rank's files, then (rank 0) the commit; the outcome, agreed, into self._outcome."""
        rank, name, error = self.runtime.rank, checkpoint_name(step), None
        digests = {}
        try:
            digests[f"rank-{rank}.pt"] = write_shard(self.store, name, rank, weight=weight, row_state=row_state,
                                                     pieces=pieces_by_rank[rank])
            if rank == 0:
                digests["dense.pt"] = write_dense(self.store, name, dense)
        except Exception as e:  # noqa: BLE001 - a full disk, an S3 error: reported, never half-committed
            error = f"rank {rank}: {_describe(e)}"
        try:
            seen = self._gather((digests, error))
            errors = [e for _, e in seen if e]
            if rank == 0:
                if not errors:
                    try:
                        files = {k: v for d, _ in seen for k, v in d.items()}
                        commit(self.store, name, step, digests=files, pieces_by_rank=pieces_by_rank, meta=meta,
                               keep=self.keep)
                    except Exception as e:  # noqa: BLE001
                        errors.append(f"rank 0: {_describe(e)}")
                if errors:
                    try:
                        abandon(self.store, name)
                    except Exception as e:  # noqa: BLE001 - the store is failing: say so, keep the first error
                        errors.append(f"rank 0 could not remove the incomplete {name}: {_describe(e)}")
            errors = self._gather(errors if rank == 0 else None)[0]
        except Exception as e:  # noqa: BLE001 - a peer died mid-save: this save is lost, the run fails elsewhere
            errors = [f"rank {rank}: the checkpoint's collective failed: {_describe(e)}"]
        self._outcome = Outcome(name, time.perf_counter() - t0, "; ".join(errors) if errors else None)


def _describe(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text if isinstance(e, OSError) or type(e).__name__ in text else f"{type(e).__name__}: {text}"
