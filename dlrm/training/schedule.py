"""NVIDIA DLRM's learning-rate schedule: linear warmup, constant, polynomial decay, constant end."""
from __future__ import annotations

from dataclasses import replace

from dlrm.config import OptimConfig
from dlrm.errors import ConfigError


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


def fitted_schedule(total_steps: int) -> dict[str, int]:
    """NVIDIA's shape scaled to `total_steps`: warmup ~6%, decay from 60% to the last step (the demo's ratios)."""
    warmup = max(1, round(total_steps * 0.06))
    start = max(warmup, round(total_steps * 0.6))
    return {"warmup_steps": warmup, "decay_start_step": start, "decay_steps": max(1, total_steps - start)}


def check_schedule(cfg: OptimConfig, total_steps: int, steps_from: str) -> list[str]:
    """Warnings for a schedule that does not fit a run of `total_steps` steps; a ConfigError
    (unless cfg.schedule_check == "warn") when the run ends before half its warmup.

    NVIDIA's defaults (8,000 warmup steps, decay from 48,000) assume Criteo 1TB; on a small dataset
    they would leave the lr ramping for the whole run and the model would learn next to nothing.
    `steps_from` says where the step count came from (e.g. "epochs=1 x 293 batches").
    """
    if cfg.decay_steps > 0 and cfg.decay_start_step < cfg.warmup_steps:
        # the two phases overlap: the lr ramps up, then falls at once to where the decay already is
        problem = (f"optim.decay_start_step={cfg.decay_start_step:,} is inside the warmup (optim.warmup_steps="
                   f"{cfg.warmup_steps:,}): the lr ramps up to optim.lr={cfg.lr:g}, then drops at step "
                   f"{cfg.warmup_steps:,} to {learning_rate(cfg.warmup_steps, cfg):.3g}; start the decay at or after "
                   f"the warmup's end (--set optim.decay_start_step={cfg.warmup_steps})")
        if cfg.schedule_check == "error":
            raise ConfigError(f"{problem}; --set optim.schedule_check=warn trains anyway")
        return [problem, *check_schedule(replace(cfg, decay_start_step=cfg.warmup_steps), total_steps, steps_from)]
    fit = fitted_schedule(total_steps)
    sets = " ".join(f"--set optim.{k}={v}" for k, v in fit.items())
    run = f"this run has {total_steps:,} steps ({steps_from})"
    problems, fatal = [], False
    if cfg.warmup_steps > total_steps:
        # Short of half its warmup the run never gets near its lr (NVIDIA's 8,000 steps on a small
        # dataset: a few percent of it); nearly through it, it trains fine and is only told.
        fatal = 2 * total_steps < cfg.warmup_steps
        problems.append(f"optim.warmup_steps={cfg.warmup_steps:,} but {run}: the lr would still be ramping up when "
                        f"the run ends (it peaks at {learning_rate(total_steps - 1, cfg):.3g} of optim.lr={cfg.lr:g})")
    elif cfg.decay_steps > 0 and cfg.decay_start_step >= total_steps:
        problems.append(f"optim.decay_start_step={cfg.decay_start_step:,} but {run}: the lr never decays "
                        f"(optim.decay_steps={cfg.decay_steps:,} unused)")
    elif cfg.decay_steps > 0 and cfg.decay_start_step + cfg.decay_steps > total_steps:
        problems.append(f"optim.decay_start_step={cfg.decay_start_step:,} + optim.decay_steps={cfg.decay_steps:,} "
                        f"end after the run's last step ({run}): the lr ends at "
                        f"{learning_rate(total_steps - 1, cfg):.3g}, not optim.decay_end_lr={cfg.decay_end_lr:g}")
    elif cfg.decay_steps > 0 and cfg.decay_end_lr == 0 and cfg.decay_start_step + cfg.decay_steps < total_steps:
        end = cfg.decay_start_step + cfg.decay_steps
        problems.append(f"optim.decay_start_step={cfg.decay_start_step:,} + optim.decay_steps={cfg.decay_steps:,} "
                        f"bring the lr to 0 at step {end:,}, but {run}: its last {total_steps - end:,} steps learn nothing")
    if not problems:
        return []
    advice = (f"for this run use --config demo (a small dataset) or {sets}; "
              f"--set optim.schedule_check=warn trains anyway")
    if fatal and cfg.schedule_check == "error":
        raise ConfigError(f"{problems[0]}; {advice}")
    return [f"{p}; a schedule that fits: {sets}" for p in problems]
