"""`python -m dlrm train`: train, evaluate and checkpoint a DLRM on a split-binary dataset.

One process, or under torchrun hybrid-parallel (see dlrm.dist): the planner places the tables,
each rank reads the ids of the tables it holds for the whole batch and the numerical features and
labels of its own slice, MLPs are data parallel. One process is the same code with W = 1.
Rank 0 prints progress lines and writes the run's output (a folder or s3://, see dlrm.training.runlog):
config.yaml, run.json, metrics.jsonl, metrics.png, tensorboard/; every rank writes its rows into
checkpoints/.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dlrm.training.checkpoint import checkpoint_name, save_checkpoint
from dlrm.config import TrainConfig, load_config, to_dict
from dlrm.data.manifest import require_verified
from dlrm.data.reader import SplitBinaryReader
from dlrm.data.spec import SPLITS, FeatureSpec
from dlrm.dist.parallel import ShardedDLRM, build_model, local_loss, parallelize, plan_for_config
from dlrm.dist.runtime import Runtime, collective, runtime_from_config
from dlrm.dist.runtime import pick_device as _pick_device
from dlrm.errors import ConfigError
from dlrm.metrics import roc_auc
from dlrm.training.optim import Optimizers
from dlrm.training.resume import dataset_identity, resume_latest
from dlrm.training.runlock import claim_outputs
from dlrm.training.runlog import RunLog, join_uri
from dlrm.training.schedule import check_schedule, learning_rate

BUILTIN_CONFIGS = Path(__file__).parent.parent / "configs"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", action="append", default=[], metavar="FILE",
                   help=f"YAML config (repeatable, later wins); or a built-in name: "
                        f"{', '.join(sorted(x.stem for x in BUILTIN_CONFIGS.glob('*.yaml')))}")
    p.add_argument("--dataset", help="dataset folder (holds feature_spec.yaml); = --set data.dataset=DIR")
    p.add_argument("--out", help="run folder; = --set out=DIR")
    p.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint, if any")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override one config field, e.g. --set optim.lr=0.5 (repeatable)")


def config_from_args(args) -> TrainConfig:
    files = []
    for c in args.config:
        path = Path(c)
        if not path.exists() and (BUILTIN_CONFIGS / f"{c}.yaml").exists():
            path = BUILTIN_CONFIGS / f"{c}.yaml"
        files.append(path)
    overrides = list(args.overrides)
    if args.dataset:
        overrides.append(f"data.dataset={args.dataset}")
    if args.out:
        overrides.append(f"out={args.out}")
    if args.resume:
        overrides.append("resume=true")
    cfg = load_config(TrainConfig, files=files, overrides=overrides)
    if not cfg.data.dataset:
        raise ConfigError("no dataset: pass --dataset DIR (or set data.dataset in a config file)")
    return cfg


def main(args) -> int:
    cfg = config_from_args(args)
    runtime = runtime_from_config(cfg)
    try:
        summary = train(cfg, runtime)
    except BaseException:
        runtime.close(barrier=False)
        raise
    runtime.close()
    if runtime.is_main:
        print(summary_line(summary))
    return 0


def summary_line(s: dict) -> str:
    oracle = f" (hidden model: {s['oracle_auc']:.4f})" if s.get("oracle_auc") else ""
    return (f"final AUC {s['auc']:.4f}{oracle} | {s['samples_per_s']:,.0f} samples/s | "
            f"{s['step']} steps | metrics: {s['metrics']} | plot: {s.get('plot') or '-'}")


# ---------------------------------------------------------------------------------------------


def pick_device(cfg: TrainConfig) -> torch.device:
    """The device of a one-process run (under torchrun: cuda:LOCAL_RANK, see dlrm.dist.runtime)."""
    return _pick_device(cfg.device, 0)


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    amp = cfg.amp if cfg.amp != "auto" else ("bf16" if device.type == "cuda" else "none")
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


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


def evaluate(model, spec: FeatureSpec, cfg: TrainConfig, runtime: Runtime | torch.device, dtype) -> tuple[float, float]:
    """Exact AUC and mean BCE over the test split (or its first eval_max_batches batches).

    `model` a ShardedDLRM (with its runtime) or a whole DLRM (with a device). Each rank scores its
    slice of every batch; all scores and labels are then gathered, so the AUC is the
    single-process one (AUC and mean loss do not depend on the samples' order).
    """
    runtime = Runtime(device=runtime) if isinstance(runtime, torch.device) else runtime
    device = runtime.device
    features = model.feature_names if isinstance(model, ShardedDLRM) else None
    reader = SplitBinaryReader(spec, "test", cfg.data.eval_batch_size, categorical=features,
                               local_slice=(runtime.rank, runtime.world_size), prefetch=cfg.data.prefetch,
                               check_ids=cfg.data.check_ids, max_batches=cfg.eval_max_batches)
    was_training = model.training
    model.eval()
    scores, labels = [], []
    with torch.no_grad(), autocast(device, dtype):
        for batch in reader:
            scores.append(model(batch.numerical.to(device).float(), batch.categorical.to(device)).float())
            labels.append(batch.label.to(device).float())
    model.train(was_training)
    scores = runtime.all_gather_cat(torch.cat(scores))
    labels = runtime.all_gather_cat(torch.cat(labels))
    loss = F.binary_cross_entropy_with_logits(scores, labels).item()
    return roc_auc(scores, labels), loss


def autocast(device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def train(cfg: TrainConfig, runtime: Runtime | None = None) -> dict:
    cfg.validate()
    runtime = runtime or runtime_from_config(cfg)  # one process unless torchrun set WORLD_SIZE
    device = runtime.device
    dtype = amp_dtype(cfg, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
    runtime.once_per_node("the dataset check", lambda: require_verified(cfg.data.dataset, cfg.data.verify))  # a pulled/staged/mounted copy (it holds _manifest.json) must match it
    spec = FeatureSpec.load(cfg.data.dataset)
    spec.require_rows(SPLITS)  # 0 train rows would 'train' 0 steps; 0 test rows fail after training
    batches_per_epoch = len(SplitBinaryReader(spec, "train", cfg.data.batch_size, prefetch=0))
    total_steps = min(cfg.max_steps or math.inf, cfg.epochs * batches_per_epoch)
    steps_from = (f"max_steps={cfg.max_steps:,}" if total_steps == cfg.max_steps else
                  f"epochs={cfg.epochs} x {batches_per_epoch:,} batches of data.batch_size={cfg.data.batch_size:,}")
    for warning in check_schedule(cfg.optim, total_steps, steps_from):  # raises when the run cannot learn
        if runtime.is_main:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
    ckpt_uri = cfg.checkpoint_dir or join_uri(cfg.out, "checkpoints")
    claim = claim_outputs(cfg.out, ckpt_uri, runtime)  # writable, and ours alone, before any write

    plan = plan_for_config(cfg, spec.table_sizes, list(spec.categorical), runtime.world_size,
                           hotness=spec.table_hotness, num_numerical=len(spec.numerical))
    if runtime.is_main and runtime.distributed:
        print(plan.describe(), flush=True)
    torch.manual_seed(cfg.seed)  # the MLPs' init: the same on every rank
    model = parallelize(build_model(len(spec.numerical), len(spec.table_sizes), cfg.model, spec.table_hotness,
                                    padded=bool(spec.padded)), plan, runtime, seed=cfg.seed)
    if cfg.compile:  # in place (nn.Module.compile): parameter names and checkpoints stay the same
        for arch in (model.model.dense_arch, model.model.interaction_arch, model.model.over_arch):
            arch.compile()
    weight = model.table_weight
    opt = Optimizers(model.dense_parameters(), [weight], cfg.optim)
    pieces_by_rank = model.pieces_by_rank()
    pieces = pieces_by_rank[runtime.rank]
    scaler = LossScaler(dtype == torch.float16)

    step, epoch, position = 0, 0, 0
    identity = dataset_identity(spec)
    found = cfg.resume and resume_latest(
        ckpt_uri, cfg, identity, weight=weight.data, row_state=opt.sparse.state_tensors(0), pieces=pieces,
        agree=lambda ok: runtime.all_reduce_sum(torch.tensor(float(ok), device=device)).item() == runtime.world_size,
        log=lambda line: runtime.is_main and print(line, flush=True))
    if found:
        name, meta, dense = found
        model.model.load_state_dict(dense["model"], strict=False)
        opt.dense.load_state_dict(dense["optimizer"])
        step, epoch, position = meta["step"], meta["data"]["epoch"], meta["data"]["position"]
        if runtime.is_main:
            print(f"resumed from {ckpt_uri}/{name}: step {step}, epoch {epoch}, batch {position}")
    log = RunLog(cfg.out, enabled=runtime.is_main, total_steps=total_steps, epochs=-(-total_steps // batches_per_epoch),
                 first_step=step, sync_every_s=cfg.sync_every_s)
    log.start(cfg, plan, runtime.world_size, str(device))

    def checkpoint():
        t0 = time.perf_counter()
        dense = {"model": model.dense_state_dict(), "optimizer": opt.dense.state_dict()} if runtime.is_main else None
        # the position after an epoch's last batch is the next epoch's start
        at = (epoch + 1, 0) if position >= batches_per_epoch else (epoch, position)
        meta = {"data": {"epoch": at[0], "position": at[1]}, "config": to_dict(cfg), "plan": plan.to_dict(),
                "dataset": identity}
        save_checkpoint(ckpt_uri, step, rank=runtime.rank, weight=weight.data, row_state=opt.sparse.state_tensors(0),
                        pieces_by_rank=pieces_by_rank, dense=dense, meta=meta, barrier=runtime.barrier,
                        gather=runtime.all_gather_object, keep=cfg.checkpoint_keep)
        log.checkpoint(checkpoint_name(step), ckpt_uri, time.perf_counter() - t0)

    # MLPerf's "every 1/20 epoch" is whole steps: (samples / (batch x 20)) rounded down, at least 1
    eval_every = cfg.eval_every or (max(1, batches_per_epoch // cfg.evals_per_epoch) if cfg.evals_per_epoch else 0)
    model.train()
    auc, eval_loss, done = math.nan, math.nan, step >= total_steps
    train_time, train_samples, first_step = 0.0, 0, step
    window_loss, window_n, window_samples, window_t0 = torch.zeros((), device=device), 0, 0, time.perf_counter()
    # Fault-injection hook for tests/test_faults.py: DLRM_TEST_HANG_AT_STEP=N makes rank DLRM_TEST_HANG_RANK
    # (default 1) stop participating before step N for DLRM_TEST_HANG_S seconds (default 1 h), as a hung peer would.
    hang_at, hang_rank = int(os.environ.get("DLRM_TEST_HANG_AT_STEP") or 0), int(os.environ.get("DLRM_TEST_HANG_RANK") or 1)
    while not done and epoch < cfg.epochs:
        reader = SplitBinaryReader(spec, "train", cfg.data.batch_size, shuffle=cfg.data.shuffle_batches,
                                   seed=cfg.seed, prefetch=cfg.data.prefetch, check_ids=cfg.data.check_ids,
                                   start_batch=position, categorical=model.feature_names,
                                   local_slice=(runtime.rank, runtime.world_size))
        reader.set_epoch(epoch)
        t_step = time.perf_counter()
        for batch in reader:
            if step + 1 == hang_at and runtime.rank == hang_rank:
                print(f"test hook: rank {runtime.rank} hangs before step {hang_at}", flush=True)
                time.sleep(float(os.environ.get("DLRM_TEST_HANG_S") or 3600))
            lr = learning_rate(step, cfg.optim)
            opt.set_lr(lr)
            # cast on the device: the reader hands over the stored float16 / bool (half the bytes)
            numerical = batch.numerical.to(device, non_blocking=True).float()
            categorical = batch.categorical.to(device, non_blocking=True)
            label = batch.label.to(device, non_blocking=True).float()
            with autocast(device, dtype):
                logits = model(numerical, categorical)
            global_batch = batch.categorical.shape[0]
            # this rank's share of the global batch's mean loss: summed over ranks, exact gradients
            loss = local_loss(logits, label, global_batch)
            opt.zero_grad()
            with collective("backward (DDP gradient all_reduce)"):
                (loss * scaler.scale if scaler.enabled else loss).backward()
            if scaler.unscale_and_check(list(model.parameters()), runtime):
                opt.step()
            step, position = step + 1, position + 1
            window_loss += loss.detach()
            window_n += 1
            window_samples += global_batch
            now = time.perf_counter()
            if step > first_step + 1:  # the first step of a (re)start compiles and warms up: not throughput
                train_time += now - t_step
                train_samples += global_batch
            t_step = now
            if step % cfg.log_every == 0 or step == total_steps:
                elapsed = now - window_t0
                window_loss = runtime.all_reduce_sum(window_loss)  # the ranks' shares add up to the mean
                log.train(step=step, epoch=epoch, loss=(window_loss / window_n).item(), lr=lr,
                          samples_per_s=window_samples / max(elapsed, 1e-9))
                window_loss.zero_()
                window_n, window_samples, window_t0 = 0, 0, time.perf_counter()
            done = step >= total_steps
            evaluating = done or (eval_every and step % eval_every == 0)
            if evaluating:
                t_eval = time.perf_counter()
                auc, eval_loss = evaluate(model, spec, cfg, runtime, dtype)
                log.eval(step, auc, eval_loss, time.perf_counter() - t_eval)
                if cfg.target_auc and auc >= cfg.target_auc:
                    if runtime.is_main:
                        print(f"target AUC {cfg.target_auc} reached at step {step}: {auc:.4f}")
                    done = True
            if done or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                checkpoint()
            if done:
                break
            t_step = time.perf_counter()  # eval and checkpoint time is not training time
        else:
            epoch, position = epoch + 1, 0
    if math.isnan(auc):  # resumed from a finished run: evaluate what was loaded
        auc, eval_loss = evaluate(model, spec, cfg, runtime, dtype)
    oracle = (spec.metadata.get("synthetic") or {}).get("oracle_auc")
    summary = {"kind": "summary", "step": step, "auc": auc, "loss": eval_loss,
               "samples_per_s": train_samples / train_time if train_time else 0.0, "oracle_auc": oracle}
    summary = log.finish(summary, plot=cfg.plot)
    claim.release()
    return summary
