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
import dataclasses
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dlrm.config import TrainConfig, load_config, to_dict
from dlrm.data.manifest import require_verified
from dlrm.data.reader import SplitBinaryReader
from dlrm.data.spec import SPLITS, FeatureSpec
from dlrm.dist import netcheck
from dlrm.dist.hostmem import check_host_memory
from dlrm.dist.parallel import ShardedDLRM, build_model, local_loss, parallelize, plan_for_config
from dlrm.dist.runtime import Runtime, collective, runtime_from_config
from dlrm.dist.runtime import pick_device as _pick_device
from dlrm.errors import ConfigError
from dlrm.metrics import roc_auc
from dlrm.io.checkpoint import checkpoint_name
from dlrm.training.checkpointer import Checkpointer
from dlrm.training.lifecycle import (PREEMPTED_EXIT, Diverged, StopOnSigterm, claim_identity, resize_line,
                                     warn_unless_shared)
from dlrm.training.optim import Optimizers
from dlrm.training.precision import LossScaler, amp_dtype, auto_amp, autocast
from dlrm.data.identity import dataset_identity
from dlrm.training.resume import resume_latest
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
    if summary.get("preempted"):
        return PREEMPTED_EXIT
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


def train(cfg: TrainConfig, runtime: Runtime | None = None) -> dict:
    """Train to the end (or the target AUC, or an agreed stop); the summary (with 'preempted' after a SIGTERM)."""
    cfg.validate()
    runtime = runtime or runtime_from_config(cfg)  # one process unless torchrun set WORLD_SIZE
    with StopOnSigterm() as sigterm:
        trainer = Trainer(cfg, runtime, sigterm)
        try:
            return trainer.fit()
        except BaseException:
            trainer.claim.release()  # a failed run (diverged, a dead peer) leaves no lock for the next one to wait on
            raise


# Every rank checks in (one small all_reduce: a SIGTERM anywhere? a non-finite loss?) at every
# log step and at least this often: a stop lands within this many steps of the signal.
CHECK_IN_EVERY = 10


class Trainer:
    """One run, in named pieces: setup (here), resume, train_step, check_in, log_progress, evaluate,
    checkpoint; `fit` is the loop that strings them together."""

    def __init__(self, cfg: TrainConfig, runtime: Runtime, sigterm: StopOnSigterm):
        self.runtime, self.sigterm, self.cfg = runtime, sigterm, cfg
        self.device = runtime.device
        self.dtype = amp_dtype(cfg, self.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
            torch.backends.cudnn.allow_tf32 = cfg.tf32
        self.setup_data()
        self.setup_outputs()
        try:
            self.setup_model()
            self.setup_checkpoints()
        except BaseException:
            self.claim.release()  # refused (a plan that does not fit, too little host memory): the output stays free
            raise
        if cfg.amp == "auto" and runtime.is_main:  # once the run is accepted: a refused one prints its error alone
            print("amp auto: {} ({})".format(*auto_amp(self.device)), flush=True)
        self.step, self.epoch, self.position = 0, 0, 0
        self.auc, self.eval_loss, self.saved_step = math.nan, math.nan, None

    def setup_data(self) -> None:
        """The dataset checked, the run's length, and its schedule checked against that length."""
        cfg, runtime = self.cfg, self.runtime
        # a pulled/staged/mounted copy (it holds _manifest.json) must match it
        runtime.once_per_node("the dataset check", lambda: require_verified(cfg.data.dataset, cfg.data.verify))
        self.spec = spec = FeatureSpec.load(cfg.data.dataset)
        spec.require_rows(SPLITS)  # 0 train rows would 'train' 0 steps; 0 test rows fail after training
        self.batches_per_epoch = len(SplitBinaryReader(spec, "train", cfg.data.batch_size, prefetch=0))
        self.total_steps = min(cfg.max_steps or math.inf, cfg.epochs * self.batches_per_epoch)
        steps_from = (f"max_steps={cfg.max_steps:,}" if self.total_steps == cfg.max_steps else
                      f"epochs={cfg.epochs} x {self.batches_per_epoch:,} batches of data.batch_size={cfg.data.batch_size:,}")
        for warning in check_schedule(cfg.optim, self.total_steps, steps_from):  # raises when the run cannot learn
            if runtime.is_main:
                print(f"warning: {warning}", file=sys.stderr, flush=True)
        self.dataset_id = dataset_identity(spec)
        # MLPerf's "every 1/20 epoch" is whole steps: (samples / (batch x 20)) rounded down, at least 1
        self.eval_every = cfg.eval_every or (max(1, self.batches_per_epoch // cfg.evals_per_epoch) if cfg.evals_per_epoch else 0)

    def setup_outputs(self) -> None:
        """The output locked, and whose it is: a new run, a continued one, or refused (lifecycle)."""
        cfg, runtime = self.cfg, self.runtime
        self.ckpt_uri = cfg.checkpoint_dir or join_uri(cfg.out, "checkpoints")
        self.claim = claim_outputs(cfg.out, self.ckpt_uri, runtime)  # writable, and ours alone, before any write
        self.sigterm.on_abandon.append(self.claim.release)
        try:
            self.run = claim_identity(cfg, self.ckpt_uri, runtime)  # another run's folder: refused, untouched
        except BaseException:
            self.claim.release()
            raise
        self.cfg = dataclasses.replace(cfg, run_id=self.run.run_id)  # recorded in run.json and checkpoints
        warn_unless_shared(self.ckpt_uri, runtime)

    def setup_model(self) -> None:
        """The plan (checked against host memory on CPU), the sharded model and its optimizers."""
        cfg, runtime, spec = self.cfg, self.runtime, self.spec
        self.plan = plan = plan_for_config(cfg, spec.table_sizes, list(spec.categorical), runtime.world_size,
                                           hotness=spec.table_hotness, num_numerical=len(spec.numerical))
        if runtime.is_main and runtime.distributed:
            print(plan.describe(), flush=True)
        check_host_memory(plan, runtime)  # a CPU run too big for its host: refused, not OOM-killed in silence
        torch.manual_seed(cfg.seed)  # the MLPs' init: the same on every rank
        self.model = model = parallelize(build_model(len(spec.numerical), len(spec.table_sizes), cfg.model, spec.table_hotness,
                                                     padded=bool(spec.padded)), plan, runtime, seed=cfg.seed)
        if cfg.compile:  # in place (nn.Module.compile): parameter names and checkpoints stay the same
            for arch in (model.model.dense_arch, model.model.interaction_arch, model.model.over_arch):
                arch.compile()
        self.weight = model.table_weight
        self.opt = Optimizers(model.dense_parameters(), [self.weight], cfg.optim)
        self.pieces_by_rank = model.pieces_by_rank()
        self.scaler = LossScaler(self.dtype == torch.float16)
        # the job's own message sizes: the dense gradients' all-reduce, one rank's share of the pooled-embedding all-to-all
        self.network = netcheck.check(runtime, 4 * sum(p.numel() for p in model.dense_parameters()),
                                      4 * cfg.data.batch_size * len(spec.table_sizes) * cfg.model.embedding_dim // runtime.world_size,
                                      cfg.dist.network_check)

    def setup_checkpoints(self) -> None:
        cfg = self.cfg
        self.ckpt = Checkpointer(self.ckpt_uri, self.runtime, keep=cfg.checkpoint_keep, on_error=cfg.checkpoint_on_error,
                                 background=cfg.checkpoint_async, state=[self.weight, *self.opt.sparse.state_tensors(0).values()])
        self.ckpt_due = False

    # -- the loop --------------------------------------------------------------------------------

    def fit(self) -> dict:
        cfg = self.cfg
        self.resume()
        self.start_log()
        self.done, stop = self.step >= self.total_steps, False
        while not self.done and self.epoch < cfg.epochs:
            for batch in self.batches():
                self.train_step(batch)
                stop = self.check_in()  # every rank agrees: a SIGTERM anywhere stops all; a NaN raises
                if self.due(cfg.log_every) or self.done:
                    self.log_progress()
                if not stop and (self.done or self.due(self.eval_every)):
                    self.evaluate()  # may set done (target AUC)
                if stop or self.done or self.due(cfg.checkpoint_every) or self.ckpt_due:
                    self.checkpoint(final=stop or self.done)
                if stop or self.done:
                    break
                self.t_step = time.perf_counter()  # eval and checkpoint time is not training time
            else:
                self.epoch, self.position = self.epoch + 1, 0
            if stop:
                return self.preempted()
        return self.finish()

    def due(self, every: int) -> bool:
        return bool(every) and self.step % every == 0

    # -- the pieces ------------------------------------------------------------------------------

    def resume(self) -> None:
        """Continue a run this process was asked to continue, from its newest checkpoint that verifies."""
        cfg, runtime = self.cfg, self.runtime
        found = self.run.continuing and resume_latest(
            self.ckpt_uri, cfg, self.dataset_id, weight=self.weight.data, row_state=self.opt.sparse.state_tensors(0),
            pieces=self.pieces_by_rank[runtime.rank], gather=runtime.all_gather_object,
            log=lambda line: runtime.is_main and print(line, flush=True))
        if found:
            name, meta, dense = found
            self.model.model.load_state_dict(dense["model"], strict=False)
            self.opt.dense.load_state_dict(dense["optimizer"])
            self.step, self.epoch, self.position = meta["step"], meta["data"]["epoch"], meta["data"]["position"]
            self.saved_step = self.step
            if runtime.is_main and (line := resize_line(self.run, meta, self.plan, runtime, cfg.data.batch_size)):
                print(line, flush=True)  # the same run at another placement
            if runtime.is_main:
                print(f"resumed from {self.ckpt_uri}/{name}: step {self.step}, epoch {self.epoch}, batch {self.position}")

    def start_log(self) -> None:
        self.log = RunLog(self.cfg.out, enabled=self.runtime.is_main, total_steps=self.total_steps,
                          epochs=-(-self.total_steps // self.batches_per_epoch), first_step=self.step,
                          sync_every_s=self.cfg.sync_every_s)
        self.log.start(self.cfg, self.plan, self.runtime.world_size, str(self.device), self.runtime.local_world_size,
                       network=self.network)
        self.model.train()
        self.train_time, self.train_samples, self.first_step, self.checked_step = 0.0, 0, self.step, self.step
        self.window_loss = torch.zeros((), device=self.device)
        self.window_n, self.window_samples, self.window_t0 = 0, 0, time.perf_counter()
        self.t_run0 = self.t_last_ckpt = time.perf_counter()

    def batches(self):
        """This epoch's training batches (this rank's slice), from the current position on."""
        cfg, runtime = self.cfg, self.runtime
        reader = SplitBinaryReader(self.spec, "train", cfg.data.batch_size, shuffle=cfg.data.shuffle_batches,
                                   seed=cfg.seed, prefetch=cfg.data.prefetch, check_ids=cfg.data.check_ids,
                                   start_batch=self.position, categorical=self.model.feature_names,
                                   local_slice=(runtime.rank, runtime.world_size))
        reader.set_epoch(self.epoch)
        self.t_step = time.perf_counter()
        return reader

    def train_step(self, batch) -> None:
        """One optimizer step on one global batch; counts it towards the log window and throughput."""
        device, model, opt = self.device, self.model, self.opt
        self.lr = learning_rate(self.step, self.cfg.optim)
        opt.set_lr(self.lr)
        # cast on the device: the reader hands over the stored float16 / bool (half the bytes)
        numerical = batch.numerical.to(device, non_blocking=True).float()
        categorical = batch.categorical.to(device, non_blocking=True)
        label = batch.label.to(device, non_blocking=True).float()
        with autocast(device, self.dtype):
            logits = model(numerical, categorical)
        global_batch = batch.categorical.shape[0]
        # this rank's share of the global batch's mean loss: summed over ranks, exact gradients
        loss = local_loss(logits, label, global_batch)
        opt.zero_grad()
        with collective("backward (DDP gradient all_reduce)"):
            (loss * self.scaler.scale if self.scaler.enabled else loss).backward()
        if self.scaler.unscale_and_check(list(model.parameters()), self.runtime):
            opt.step()
        self.step, self.position = self.step + 1, self.position + 1
        self.done = self.step >= self.total_steps
        self.window_loss += loss.detach()
        self.window_n += 1
        self.window_samples += global_batch
        now = time.perf_counter()
        if self.step > self.first_step + 1:  # the first step of a (re)start compiles and warms up: not throughput
            self.train_time += now - self.t_step
            self.train_samples += global_batch
        self.t_step = now
        self.sigterm.stepped()
        self.log.sync()  # out=s3://: metrics and events reach S3 every sync_every_s, logged or not

    def check_in(self) -> bool:
        """At the same steps on every rank: True when some rank got SIGTERM (all stop here);
        Diverged when some rank's loss since the last log line is NaN or infinite (before any
        checkpoint could hold the diverged weights)."""
        cfg = self.cfg
        if not (self.done or self.due(CHECK_IN_EVERY) or self.due(cfg.log_every) or self.due(self.eval_every)
                or self.due(cfg.checkpoint_every)):
            return False
        # rank 0's clock decides a checkpoint_every_s checkpoint; a failed background save is acted on
        # when any rank has seen it (every rank then waits for the same outcome)
        time_due = self.runtime.is_main and bool(cfg.checkpoint_every_s) and (
            time.perf_counter() - self.t_last_ckpt >= cfg.checkpoint_every_s)
        flags = torch.tensor([float(self.sigterm.requested), 0.0, float(self.ckpt.failed()), float(time_due)],
                             device=self.device)
        flags[1] = (~torch.isfinite(self.window_loss)).float()
        stop, diverged, ckpt_failed, time_due = (bool(x) for x in self.runtime.all_reduce_sum(flags).tolist())
        if diverged:
            raise self.diverged()
        self.ckpt.settle(self.ckpt.wait() if ckpt_failed else self.ckpt.take_complete(), self.log)
        self.ckpt_due = time_due or self.ckpt.retry
        self.checked_step = self.step
        self.sigterm.stopping = stop  # agreed: the checkpoint may take what it takes
        return stop

    def log_progress(self) -> None:
        elapsed = time.perf_counter() - self.window_t0
        window_loss = self.runtime.all_reduce_sum(self.window_loss)  # the ranks' shares add up to the mean
        self.log.train(step=self.step, epoch=self.epoch, loss=(window_loss / self.window_n).item(), lr=self.lr,
                       samples_per_s=self.window_samples / max(elapsed, 1e-9), note=self.ckpt.take_note())
        self.window_loss.zero_()
        self.window_n, self.window_samples, self.window_t0 = 0, 0, time.perf_counter()

    def evaluate(self) -> None:
        t_eval = time.perf_counter()
        with self.sigterm.busy():
            self.auc, self.eval_loss = evaluate(self.model, self.spec, self.cfg, self.runtime, self.dtype)
        self.log.eval(self.step, self.auc, self.eval_loss, time.perf_counter() - t_eval)
        target = self.cfg.target_auc
        if target and self.auc >= target:
            if self.runtime.is_main:
                print(f"target AUC {target} reached at step {self.step}: {self.auc:.4f}")
            self.done = True

    def checkpoint(self, final: bool = False) -> None:
        """Every rank's rows, rank 0's dense state and the metadata that makes it count (written
        last): periodic ones in the background (dlrm.training.checkpointer), the `final` one (the
        run's end, a SIGTERM) in place, after the one in flight."""
        if self.saved_step == self.step:
            return  # resumed here, nothing trained since (a SIGTERM before the first step)
        cfg, runtime = self.cfg, self.runtime
        dense = {"model": self.model.dense_state_dict(), "optimizer": self.opt.dense.state_dict()} if runtime.is_main else None
        # the position after an epoch's last batch is the next epoch's start
        at = (self.epoch + 1, 0) if self.position >= self.batches_per_epoch else (self.epoch, self.position)
        meta = {"data": {"epoch": at[0], "position": at[1]}, "config": to_dict(cfg), "plan": self.plan.to_dict(),
                "dataset": self.dataset_id}
        with self.sigterm.busy():
            self.ckpt.settle(self.ckpt.wait(), self.log)  # at most one in flight
            self.ckpt.save(self.step, weight=self.weight.data, row_state=self.opt.sparse.state_tensors(0),
                           pieces_by_rank=self.pieces_by_rank, dense=dense, meta=meta, final=final)
            if final:
                self.ckpt.settle(self.ckpt.wait(), self.log, final=True)
        self.t_last_ckpt, self.ckpt_due, self.saved_step = time.perf_counter(), False, self.step

    def finish(self) -> dict:
        self.ckpt.print_share(time.perf_counter() - self.t_run0)
        if math.isnan(self.auc):  # resumed from a finished run: evaluate what was loaded
            self.auc, self.eval_loss = evaluate(self.model, self.spec, self.cfg, self.runtime, self.dtype)
        oracle = (self.spec.metadata.get("synthetic") or {}).get("oracle_auc")
        summary = {"kind": "summary", "step": self.step, "auc": self.auc, "loss": self.eval_loss,
                   "samples_per_s": self.train_samples / self.train_time if self.train_time else 0.0, "oracle_auc": oracle}
        summary = self.log.finish(summary, plot=self.cfg.plot)
        self.claim.release()
        return summary

    def preempted(self) -> dict:
        """After the agreed stop's checkpoint: the output uploaded, the lock released, how to go on."""
        self.ckpt.print_share(time.perf_counter() - self.t_run0)
        self.log.close()
        self.claim.release()
        where = f"{self.ckpt_uri}/{checkpoint_name(self.step)}"
        took = f" (written in {self.ckpt.last_seconds:.1f}s)" if self.saved_step == self.step and self.ckpt.last_seconds else ""
        if self.runtime.is_main:
            print(f"stopped by SIGTERM at step {self.step:,}/{self.total_steps:,} (exit {PREEMPTED_EXIT}): checkpoint {where}{took}; "
                  f"the same command with --resume (a restarted job: the same run_id) continues from it", flush=True)
        return {"preempted": True, "step": self.step, "checkpoint": where}

    def diverged(self) -> Diverged:
        """The error for a non-finite loss: where it happened and what to change (the output uploaded first)."""
        o = self.cfg.optim
        self.ckpt.wait()  # every rank stops here: a save in flight ends (committed or not) before the groups go
        self.log.sync(force=True)
        amp = f"amp={self.cfg.amp} computes in fp16: try amp=bf16 or none; " if self.dtype == torch.float16 else ""
        last = f"{self.ckpt_uri}/{checkpoint_name(self.saved_step)}" if self.saved_step is not None else "none yet"
        steps = (f"at step {self.step:,}" if self.checked_step + 1 == self.step else
                 f"between steps {self.checked_step + 1:,} and {self.step:,}")
        return Diverged(f"the training loss became NaN or infinite {steps} (the run diverged); nothing after step {self.saved_step or 0:,} was "
                        f"checkpointed (last checkpoint: {last}); {amp}lower optim.lr (now {o.lr:g}), lengthen "
                        f"optim.warmup_steps (now {o.warmup_steps:,}), or check the data for extreme values")
