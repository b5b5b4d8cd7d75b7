"""Mixed precision: which autocast dtype a run uses, and fp16's dynamic loss scaling."""
from __future__ import annotations

import contextlib

import torch

from dlrm.dist.runtime import Runtime


def amp_dtype(cfg, device: torch.device) -> torch.dtype | None:
    amp = cfg.amp if cfg.amp != "auto" else ("bf16" if device.type == "cuda" else "none")
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


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
