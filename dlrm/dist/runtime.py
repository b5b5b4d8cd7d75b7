"""Who am I and how do I talk to the others: the process group, set up from torchrun's env.

    runtime = init_runtime(device=cfg.device, timeout_s=cfg.dist.collective_timeout_s)
    runtime.rank, runtime.world_size, runtime.device     # 0, 1, cpu when WORLD_SIZE is unset

torchrun (and the launcher's pods) set RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT.
NCCL on CUDA (device cuda:LOCAL_RANK), gloo on CPU. A collective that hangs (a dead peer) fails
the job after `timeout_s` instead of wedging it forever.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dlrm.dist import netcheck
from dlrm.dist.plan import MAX_WORLD_SIZE
from dlrm.errors import UserError

ENV_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_timeout_s: float = 600.0  # the process group's collective timeout, for collective()'s message


class CollectiveTimeout(RuntimeError):
    """A collective did not complete in time: a peer died or stopped participating. Restart the job."""


@contextlib.contextmanager
def collective(name: str):
    """Around a collective: gloo's or NCCL's raw timeout error becomes one naming this rank and the collective."""
    try:
        yield
    except CollectiveTimeout:
        raise
    except RuntimeError as e:  # gloo: "Timed out waiting 5000ms for recv ...", NCCL: "... Timeout(ms)=..."
        if "timed out" not in str(e).lower() and "timeout" not in str(e).lower():
            raise
        rank = dist.get_rank() if dist.is_initialized() else 0
        raise CollectiveTimeout(f"rank {rank}: collective {name} timed out after {_timeout_s:g} s (dist.collective_timeout_s): "
                                f"a peer died or hangs; restart the job. {str(e).splitlines()[0]}") from e


@dataclass
class Runtime:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: one process, no process group
    timeout_s: float = 600.0  # every collective (of every group) fails after this long
    local_world_size: int = 1  # processes on this node (ranks rank - local_rank ... share its host)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            # gloo barriers are plain; NCCL's needs the device or it guesses one per rank
            with collective("barrier"):
                dist.barrier(device_ids=[self.device.index] if self.backend == "nccl" else None)

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """In place on every rank; returns t."""
        if self.distributed:
            with collective("all_reduce"):
                dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def all_gather_cat(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's `t` [n_r, ...] (n_r may differ) concatenated in rank order, on every rank."""
        if not self.distributed:
            return t
        n = torch.tensor([t.shape[0]], dtype=torch.int64, device=t.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world_size)]
        with collective("all_gather"):
            dist.all_gather(sizes, n)
        sizes = [int(s) for s in sizes]
        padded = t.new_zeros((max(sizes), *t.shape[1:]))  # all_gather wants equal shapes
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        with collective("all_gather"):
            dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    def once_per_node(self, what: str, fn, poll_s: float = 5.0) -> None:
        """Run `fn` on LOCAL_RANK 0 of every node while the node's other ranks wait; every rank
        raises if it failed anywhere. For a per-node check of node-local files (the dataset copy)
        that may take longer than the collective timeout (hashing a large dataset): the waiting is
        a round of all_reduce every `poll_s` seconds, not one long collective."""
        if not self.distributed:
            fn()
            return
        import concurrent.futures

        checker = self.local_rank == 0
        pool = concurrent.futures.ThreadPoolExecutor(1) if checker else None
        job = pool.submit(fn) if checker else None
        try:
            while True:
                if job is not None:
                    concurrent.futures.wait([job], timeout=poll_s)
                # [checkers, checkers done, checkers failed]; a waiting rank paces itself on the checker
                done = job is not None and job.done()
                failed = done and job.exception() is not None
                state = self.all_reduce_sum(torch.tensor([int(checker), int(done), int(failed)], device=self.device))
                checkers, finished, failures = (int(x) for x in state.tolist())
                if finished == checkers:
                    break
        finally:
            if pool is not None:
                pool.shutdown(wait=False)
        if job is not None:
            job.result()  # this node's own error, with its details
        if failures:
            raise UserError(f"rank {self.rank}: {what} failed on {failures} node(s) (their error is printed above)")

    def all_gather_object(self, obj) -> list:
        """Every rank's picklable `obj` in rank order, on every rank (small objects: digests)."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        with collective("all_gather_object"):
            dist.all_gather_object(out, obj)
        return out

    def close(self, barrier: bool = True) -> None:
        """Tear the process groups down. After a success, first wait for every rank: a rank that
        destroys its groups while a peer still talks to it aborts the peer ("terminate called
        without an active exception"). After a failure, no barrier: the peers may be gone."""
        if self.backend is not None and dist.is_initialized():
            if barrier:
                self.barrier()
            dist.destroy_process_group()


def _env_int(env, name: str) -> int:
    raw = env.get(name)
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise UserError(f"environment variable {name}={raw!r}: expected an integer "
                        f"(torchrun sets {', '.join(ENV_VARS)})") from None


def pick_device(device: str, local_rank: int) -> torch.device:
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError("device=cuda but no CUDA device is visible")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise UserError(f"LOCAL_RANK {local_rank} but only {count} CUDA devices are visible on this node; "
                        f"start at most {count} processes per node")
    return torch.device("cuda", local_rank)


def init_runtime(device: str = "auto", timeout_s: int = 600, env: dict | None = None, network_check: bool = False) -> Runtime:
    """The process group from torchrun's env; one process (no group) when WORLD_SIZE is unset or 1.
    `network_check`: NCCL set up for dlrm.dist.netcheck first (the fabric's profile, its INFO log to a file)."""
    env = os.environ if env is None else env
    world = _env_int(env, "WORLD_SIZE") if env.get("WORLD_SIZE") not in (None, "") else 1
    if not 1 <= world <= MAX_WORLD_SIZE:
        raise UserError(f"WORLD_SIZE={world}: expected 1..{MAX_WORLD_SIZE:,}")
    if world == 1:
        local_rank = _env_int(env, "LOCAL_RANK") if env.get("LOCAL_RANK") else 0
        dev = pick_device(device, local_rank)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        return Runtime(0, local_rank, 1, dev, None)
    missing = [v for v in ENV_VARS if not env.get(v)]
    if missing:
        raise UserError(f"WORLD_SIZE={world} but {', '.join(missing)} unset: start the job with torchrun "
                        f"(it sets {', '.join(ENV_VARS)})")
    rank, local_rank = _env_int(env, "RANK"), _env_int(env, "LOCAL_RANK")
    if not 0 <= rank < world:
        raise UserError(f"RANK={rank} outside 0..{world - 1} (WORLD_SIZE={world})")
    dev = pick_device(device, local_rank)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    global _timeout_s
    _timeout_s = timeout_s
    if network_check and not dist.is_initialized():
        netcheck.prepare(backend)
    if not dist.is_initialized():
        with netcheck.captured_init(backend) if network_check else contextlib.nullcontext():
            dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                                    timeout=datetime.timedelta(seconds=timeout_s),
                                    device_id=dev if dev.type == "cuda" else None)
    elif (dist.get_rank(), dist.get_world_size()) != (rank, world):
        raise UserError(f"a process group is already up as rank {dist.get_rank()} of {dist.get_world_size()}, "
                        f"but the env says rank {rank} of {world}")
    local_world = _env_int(env, "LOCAL_WORLD_SIZE") if env.get("LOCAL_WORLD_SIZE") else 1
    return Runtime(rank, local_rank, world, dev, backend, timeout_s, local_world)


def runtime_from_config(cfg) -> Runtime:
    """init_runtime with a TrainConfig's device and collective timeout."""
    return init_runtime(cfg.device, cfg.dist.collective_timeout_s, network_check=cfg.dist.network_check != "skip")
