"""How much memory this host (or its container) can still give: a CPU run's tables live there.

On CPU the planner's budget is dist.device_memory, a number from the config; the kernel's OOM
killer would end a run whose tables exceed the real host memory with no message at all
("Killed", exit 137). So before the tables are allocated, the plan's bytes for the ranks on this
node are compared with what the host has: /proc/meminfo's MemAvailable, or less where a cgroup
(a pod's memory limit) caps the container.
"""
from __future__ import annotations

from pathlib import Path

from dlrm.errors import UserError


def _meminfo_available(path: str = "/proc/meminfo") -> int | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available(root: str = "/sys/fs/cgroup") -> int | None:
    """The cgroup's limit less its usage (v2: memory.max/current, v1: limit_in_bytes/usage_in_bytes)."""
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            limit = Path(root, limit_file).read_text().strip()
            usage = int(Path(root, usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 1 << 60:  # unlimited (v1 writes a huge number)
            return None
        return max(int(limit) - usage, 0)
    return None


def host_memory_available() -> int | None:
    """Bytes this process's host can still allocate, the tighter of the host and its cgroup; None if unknown."""
    known = [n for n in (_meminfo_available(), _cgroup_available()) if n is not None]
    return min(known) if known else None


def require_host_memory(plan, ranks: range, available: int | None) -> None:
    """A UserError with the numbers when the plan's bytes for `ranks` (the processes of this node)
    exceed `available`."""
    if available is None:
        return
    need = sum(plan.rank_bytes(r) for r in ranks)
    if need > available:
        from dlrm.dist.plan import human

        # Name what takes the memory: the MLPs (dense arches, on every rank) are not the tables' fault.
        dense = plan.dense_bytes * len(ranks)
        buffers = (plan.rank_fixed_bytes - plan.dense_bytes) * len(ranks)
        tables = need - dense - buffers
        parts = {"embedding tables and their optimizer state": (tables, "more nodes (the tables are sharded), a smaller "
                                                                        "model.embedding_dim, or GPUs"),
                 "dense arches (the MLPs' weights, gradients and optimizer state, on every rank)":
                     (dense, "smaller model.bottom_mlp / model.top_mlp (or fewer DCN layers); more nodes do not help, "
                             "every rank holds the MLPs"),
                 "all-to-all batch buffers": (buffers, "a smaller data.batch_size")}
        largest = max(parts, key=lambda k: parts[k][0])
        split = ", ".join(f"{k.split(' (')[0]} {human(v)}" for k, (v, _) in parts.items())
        raise UserError(f"device=cpu: the plan needs {human(need)} of host memory for rank(s) {ranks.start}..{ranks.stop - 1} "
                        f"on this node ({split}) but only {human(available)} is available "
                        f"(MemAvailable / the container's memory limit); most of it is the {largest}: "
                        f"{parts[largest][1]}")


def check_host_memory(plan, runtime) -> None:
    """On CPU, every rank checks its node before any table is allocated; all fail if one node is short."""
    if runtime.device.type != "cpu":
        return
    first = runtime.rank - runtime.local_rank
    error = None
    try:
        require_host_memory(plan, range(first, first + runtime.local_world_size), host_memory_available())
    except UserError as e:
        error = str(e)
    errors = runtime.all_gather_object(error)
    if error:
        raise UserError(error)
    short = [r for r, e in enumerate(errors) if e]
    if short:
        raise UserError(f"rank {short[0]}'s host has too little memory for the plan (its error is printed above)")


def snapshot_fits(need: int, runtime) -> str | None:
    """Whether every node's host can hold a second copy of its ranks' checkpointed state (`need`
    bytes for this rank: rows and row optimizer state; on a GPU the pinned buffers a background
    checkpoint copies into). None when it can (or the host does not say), else why not; every rank
    gets the same answer, so either all checkpoint in the background or none does."""
    node = runtime.rank - runtime.local_rank
    views = runtime.all_gather_object((node, need, host_memory_available()))
    short = []
    for n in sorted({v[0] for v in views}):
        total = sum(v[1] for v in views if v[0] == n)
        avail = [v[2] for v in views if v[0] == n and v[2] is not None]
        if avail and total > min(avail):
            from dlrm.dist.plan import human

            short.append(f"the node of rank {n} needs {human(total)} for the copy, {human(min(avail))} is available")
    return "; ".join(short) or None
