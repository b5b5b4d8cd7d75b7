"""Mixed precision: which autocast dtype a run uses, and fp16's dynamic loss scaling."""
from __future__ import annotations

import contextlib

import torch

from dlrm.dist.runtime import Runtime


def cpu_has_amx(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has AMX's bf16 tiles (Intel Sapphire Rapids and later). torch's own
    get_cpu_capability() stops at AVX512, so the kernel's flags (Linux) decide."""
    try:
        with open(cpuinfo) as f:
            return any(line.startswith("flags") and "amx_bf16" in line.split() for line in f)
    except OSError:
        return False


def auto_amp(device: torch.device) -> tuple[str, str]:
    """What `amp: auto` means on this device, and why: bf16 autocast only where it is faster.

    On a CPU that is AMX: there bf16 matmuls run ~2.3x fp32 (make bench); with AVX512-BF16 alone
    they ran at 0.65-0.76x fp32 (issue 28), so other CPUs stay in fp32."""
    if device.type == "cuda":
        return ("bf16", "CUDA with bf16") if torch.cuda.is_bf16_supported() else ("none", "this GPU has no bf16")
    if device.type == "cpu" and cpu_has_amx():
        return "bf16", "the CPU has AMX"
    return "none", f"no AMX on this {device.type.upper()}: bf16 would be slower than fp32"


def amp_name(cfg, device: torch.device) -> str:
    return auto_amp(device)[0] if cfg.amp == "auto" else cfg.amp


def amp_dtype(cfg, device: torch.device) -> torch.dtype | None:
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp_name(cfg, device)]


def autocast(device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


class LossScaler:
    """Dynamic loss scaling for fp16: skip steps whose gradients overflow, halve, regrow slowly.

    torch's GradScaler only unscales torch optimizers; the embedding tables' sparse gradients
    need the same treatment, so this covers both.
    """

    def __init__(self, enabled: bool, scale: float = 2.0**16, growth_interval: int = 2000):
        self.enabled, self.scale, self.growth_interval, self.good_steps = enabled, scale, growth_interval, 0

    def unscale_and_check(self, params, runtime: Runtime | None = None) -> bool:
        if not self.enabled:
            return True
        finite = torch.ones((), dtype=torch.float32)
        for p in params:
            if p.grad is None:
                continue
            g = p.grad._values() if p.grad.is_sparse else p.grad
            g.mul_(1.0 / self.scale)
            finite *= torch.isfinite(g).all().float().cpu()
        if runtime is not None and runtime.distributed:  # every rank must skip the same steps
            finite = runtime.all_reduce_sum(finite.to(runtime.device)).cpu() / runtime.world_size
        finite = bool(finite == 1)
        if finite:
            self.good_steps += 1
            if self.good_steps % self.growth_interval == 0:
                self.scale *= 2
        else:
            self.scale, self.good_steps = self.scale / 2, 0
        return finite
