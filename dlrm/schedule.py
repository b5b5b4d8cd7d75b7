"""NVIDIA DLRM's learning-rate schedule: linear warmup, constant, polynomial decay, constant end."""
from __future__ import annotations

from dlrm.config import OptimConfig


def learning_rate(step: int, cfg: OptimConfig) -> float:
    """The lr for 0-based `step`.

    Warmup ramps linearly to `lr` over `warmup_steps` (step 0 already gets lr / warmup_steps, so
    no step is wasted at lr 0); from `decay_start_step` the lr decays as
    end + (lr - end) * ((decay_end - step) / decay_steps) ** power, reaching `decay_end_lr` at
    decay_end = decay_start_step + decay_steps and staying there.
    """
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.decay_steps > 0 and step >= cfg.decay_start_step:
        decay_end = cfg.decay_start_step + cfg.decay_steps
        if step >= decay_end:
            return cfg.decay_end_lr
        frac = (decay_end - step) / cfg.decay_steps
        return cfg.decay_end_lr + (cfg.lr - cfg.decay_end_lr) * frac**cfg.decay_power
    return cfg.lr
