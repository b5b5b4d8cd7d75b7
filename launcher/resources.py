"""A pod's CPU, memory and /dev/shm: per-GPU figures times its GPUs, unless a total is given.

    pod_resources(cfg)   # {"cpu_request": "64", "cpu_limit": "", "memory_request": "800Gi", ...}

The one derivation of the rendered figures (launcher.pods and the templates read it), the checks
on them (JobConfig.validate), and the host-memory check of the embedding plan (check_plan).
"""
from __future__ import annotations

import re
from decimal import Decimal

from dlrm.config import parse_quantity
from dlrm.errors import ConfigError


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


_SIMPLE_QUANTITY = re.compile(r"([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?")


def scale_quantity(text: str, times: int, path: str) -> str:
    """'25Gi' x 8 -> '200Gi', '500m' x 3 -> '1500m': the same unit, so a rendered figure reads as written."""
    m = _SIMPLE_QUANTITY.fullmatch(str(text))
    if not m:
        parse_quantity(text, path)  # not a quantity at all: its own message
        raise ConfigError(f"{path}: {text!r}: a per-GPU figure is a number with an optional unit (2, 500m, 25Gi), "
                          f"not an exponent form")
    value = Decimal(m.group(1)) * times
    return f"{value.normalize():f}{m.group(2) or ''}"


def pod_gpus(c) -> int:
    """What the per-GPU figures are multiplied by: a training pod's GPUs; 1 for the GPU-less preprocess pod."""
    return c.gpus_per_node if c.kind == "train" else 1


def pod_resources(c) -> dict[str, str]:
    """The pod's CPU and memory figures as rendered (cpu_request, cpu_limit, memory_request,
    memory_limit, shm_size): each total that is set, else its per-GPU figure x the pod's GPUs.
    The one place they are derived: the pods, the checks and the host-memory plan check read these."""
    r = c.resources
    gpus = pod_gpus(c)
    cpu = r.cpu_request or scale_quantity(r.cpu_per_gpu, gpus, "resources.cpu_per_gpu")
    memory = r.memory_request or scale_quantity(r.memory_per_gpu, gpus, "resources.memory_per_gpu")
    return {"cpu_request": cpu, "cpu_limit": r.cpu_limit, "memory_request": memory, "memory_limit": r.memory_limit or memory,
            "shm_size": r.shm_size or scale_quantity(r.shm_per_gpu, gpus, "resources.shm_per_gpu")}


def check_resources(c) -> None:
    r = c.resources
    for k in ("cpu_per_gpu", "memory_per_gpu", "shm_per_gpu"):
        _require(parse_quantity(getattr(r, k), f"resources.{k}") > 0, f"resources.{k} must be above 0, got {getattr(r, k)!r}")
    figures = pod_resources(c)
    # A message names the field the user set, or the per-GPU figure it came from.
    origin = {k: f"resources.{k}={getattr(r, k)}" if getattr(r, k) else f"resources.{k}={v} (from {_PER_GPU[k]} x {pod_gpus(c)} GPUs)"
              for k, v in figures.items()}
    origin["memory_limit"] = (f"resources.memory_limit={r.memory_limit}" if r.memory_limit
                              else f"resources.memory_limit={figures['memory_limit']} (the memory request)")
    values = {f"resources.{k}": v for k, v in figures.items()}
    values.update({"storage.stage_size": c.storage.stage_size, "storage.mount_size": c.storage.mount_size})
    parsed = {k: parse_quantity(v, k) for k, v in values.items() if v != ""}
    for request, limit in (("cpu_request", "cpu_limit"), ("memory_request", "memory_limit")):
        if figures[limit]:
            _require(parsed[f"resources.{request}"] <= parsed[f"resources.{limit}"],
                         f"{origin[request]} exceeds {origin[limit]}")
    _require(parsed["resources.shm_size"] < parsed["resources.memory_limit"],
                 f"{origin['shm_size']} must be below {origin['memory_limit']} (/dev/shm pages count against the pod's memory)")


_PER_GPU = {"cpu_request": "resources.cpu_per_gpu", "cpu_limit": "", "memory_request": "resources.memory_per_gpu",
            "memory_limit": "resources.memory_per_gpu", "shm_size": "resources.shm_per_gpu"}


def checkpoint_host_bytes(plan, rank: int) -> int:
    """Host memory a rank needs to write a checkpoint: torch.save copies each tensor to the host as it
    writes it, and the largest a rank holds is its fused embedding weight (its row state is no larger)."""
    return sum(s.rows for s in plan.rank_shards(rank)) * plan.dim * plan.weight_bytes


def check_host_memory(c, plan) -> None:
    """The pod's memory limit, less /dev/shm, must hold every local rank's checkpoint copy at once
    (they save together), or the first checkpoint is an OOM kill hours into the run."""
    figures = pod_resources(c)
    free = parse_quantity(figures["memory_limit"]) - parse_quantity(figures["shm_size"])
    g = c.gpus_per_node
    need = max(sum(checkpoint_host_bytes(plan, node * g + i) for i in range(g)) for node in range(c.nodes))
    _require(need <= free, f"resources.memory_limit={figures['memory_limit']} less shm_size={figures['shm_size']} "
                 f"leaves {free / 2**30:.1f} GiB per node, but writing a checkpoint copies up to {need / 2**30:.1f} GiB of "
                 f"embedding weights to host memory ({g} ranks per node): raise resources.memory_per_gpu (or memory_limit)")
