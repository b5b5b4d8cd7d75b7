"""`python -m dlrm train`: train, evaluate and checkpoint a DLRM on a split-binary dataset.

One process here; under torchrun the same command runs hybrid-parallel (see dlrm.dist).
Writes into the run folder: config.yaml (resolved), metrics.jsonl, metrics.png, checkpoints/.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dlrm.checkpoint import Piece, latest_checkpoint, load_checkpoint, save_checkpoint
from dlrm.config import TrainConfig, dump_yaml, load_config, to_dict
from dlrm.data.reader import SplitBinaryReader
from dlrm.data.spec import FeatureSpec
from dlrm.errors import ConfigError
from dlrm.metrics import MetricsLog, roc_auc
from dlrm.model import DLRM
from dlrm.optim import Optimizers
from dlrm.schedule import learning_rate

BUILTIN_CONFIGS = Path(__file__).parent / "configs"


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
    summary = train(config_from_args(args))
    print(summary_line(summary))
    return 0


def summary_line(s: dict) -> str:
    oracle = f" (hidden model: {s['oracle_auc']:.4f})" if s.get("oracle_auc") else ""
    return (f"final AUC {s['auc']:.4f}{oracle} | {s['samples_per_s']:,.0f} samples/s | "
            f"{s['step']} steps | metrics: {s['metrics']} | plot: {s.get('plot') or '-'}")


# ---------------------------------------------------------------------------------------------


def pick_device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("device=cuda but no CUDA device is visible")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


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

    def unscale_and_check(self, params) -> bool:
        if not self.enabled:
            return True
        finite = True
        for p in params:
            if p.grad is None:
                continue
            g = p.grad._values() if p.grad.is_sparse else p.grad
            g.mul_(1.0 / self.scale)
            finite &= bool(torch.isfinite(g).all())
        if finite:
            self.good_steps += 1
            if self.good_steps % self.growth_interval == 0:
                self.scale *= 2
        else:
            self.scale, self.good_steps = self.scale / 2, 0
        return finite


def evaluate(model, spec: FeatureSpec, cfg: TrainConfig, device, dtype) -> tuple[float, float]:
    """Exact AUC and mean BCE over the test split (or its first eval_max_batches batches)."""
    reader = SplitBinaryReader(spec, "test", cfg.data.eval_batch_size, prefetch=cfg.data.prefetch,
                               check_ids=cfg.data.check_ids, max_batches=cfg.eval_max_batches)
    was_training = model.training
    model.eval()
    scores, labels = [], []
    with torch.no_grad(), autocast(device, dtype):
        for batch in reader:
            scores.append(model(batch.numerical.to(device), batch.categorical.to(device)).float())
            labels.append(batch.label.to(device))
    model.train(was_training)
    scores, labels = torch.cat(scores), torch.cat(labels)
    loss = F.binary_cross_entropy_with_logits(scores, labels).item()
    return roc_auc(scores, labels), loss


def autocast(device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def train(cfg: TrainConfig) -> dict:
    cfg.validate()
    device = pick_device(cfg)
    dtype = amp_dtype(cfg, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
    spec = FeatureSpec.load(cfg.data.dataset)
    spec.check()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_yaml(cfg))
    ckpt_uri = cfg.checkpoint_dir or str(out / "checkpoints")

    torch.manual_seed(cfg.seed)
    model = DLRM(len(spec.numerical), spec.table_sizes, cfg.model, seed=cfg.seed).to(device)
    weight = model.sparse_arch.embedding.weight
    opt = Optimizers(model.dense_parameters(), [weight], cfg.optim)
    pieces = [Piece(name, 0, n, int(off)) for name, n, off in
              zip(spec.categorical, spec.table_sizes, model.sparse_arch.offsets.tolist())]
    scaler = LossScaler(dtype == torch.float16)

    step, epoch, position = 0, 0, 0
    metrics = MetricsLog(out / "metrics.jsonl")
    if cfg.resume and (name := latest_checkpoint(ckpt_uri)):
        meta, dense = load_checkpoint(ckpt_uri, name, weight=weight.data, row_state=opt.sparse.state_tensors(0),
                                      pieces=pieces)
        model.load_state_dict(dense["model"], strict=False)
        opt.dense.load_state_dict(dense["optimizer"])
        step, epoch, position = meta["step"], meta["data"]["epoch"], meta["data"]["position"]
        print(f"resumed from {ckpt_uri}/{name}: step {step}, epoch {epoch}, batch {position}")

    def checkpoint():
        dense = {"model": {k: v for k, v in model.state_dict().items() if not k.startswith("sparse_arch.")},
                 "optimizer": opt.dense.state_dict()}
        # the position after an epoch's last batch is the next epoch's start
        at = (epoch + 1, 0) if position >= batches_per_epoch else (epoch, position)
        meta = {"data": {"epoch": at[0], "position": at[1]}, "config": to_dict(cfg)}
        save_checkpoint(ckpt_uri, step, rank=0, weight=weight.data, row_state=opt.sparse.state_tensors(0),
                        pieces_by_rank={0: pieces}, dense=dense, meta=meta, keep=cfg.checkpoint_keep)

    batches_per_epoch = len(SplitBinaryReader(spec, "train", cfg.data.batch_size, prefetch=0))
    total_steps = cfg.max_steps or cfg.epochs * batches_per_epoch
    model.train()
    auc, eval_loss, done = math.nan, math.nan, step >= total_steps
    train_time, train_samples = 0.0, 0
    window_loss, window_n, window_samples, window_t0 = torch.zeros((), device=device), 0, 0, time.perf_counter()
    while not done and epoch < cfg.epochs:
        reader = SplitBinaryReader(spec, "train", cfg.data.batch_size, shuffle=cfg.data.shuffle_batches,
                                   seed=cfg.seed, prefetch=cfg.data.prefetch, check_ids=cfg.data.check_ids,
                                   start_batch=position)
        reader.set_epoch(epoch)
        t_step = time.perf_counter()
        for batch in reader:
            lr = learning_rate(step, cfg.optim)
            opt.set_lr(lr)
            numerical, categorical = batch.numerical.to(device, non_blocking=True), batch.categorical.to(device, non_blocking=True)
            label = batch.label.to(device, non_blocking=True)
            with autocast(device, dtype):
                logits = model(numerical, categorical)
            loss = F.binary_cross_entropy_with_logits(logits.float(), label)
            opt.zero_grad()
            (loss * scaler.scale if scaler.enabled else loss).backward()
            if scaler.unscale_and_check(list(model.parameters())):
                opt.step()
            step, position = step + 1, position + 1
            window_loss += loss.detach()
            window_n += 1
            window_samples += label.shape[0]
            now = time.perf_counter()
            train_time += now - t_step
            train_samples += label.shape[0]
            t_step = now
            if step % cfg.log_every == 0 or step == total_steps:
                elapsed = now - window_t0
                metrics.write(kind="train", step=step, epoch=epoch, loss=(window_loss / window_n).item(), lr=lr,
                              samples_per_s=window_samples / max(elapsed, 1e-9))
                window_loss.zero_()
                window_n, window_samples, window_t0 = 0, 0, time.perf_counter()
            done = step >= total_steps
            evaluating = done or (cfg.eval_every and step % cfg.eval_every == 0)
            if evaluating:
                auc, eval_loss = evaluate(model, spec, cfg, device, dtype)
                metrics.write(kind="eval", step=step, auc=auc, loss=eval_loss)
                if cfg.target_auc and auc >= cfg.target_auc:
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
        auc, eval_loss = evaluate(model, spec, cfg, device, dtype)
    oracle = (spec.metadata.get("synthetic") or {}).get("oracle_auc")
    summary = {"kind": "summary", "step": step, "auc": auc, "loss": eval_loss,
               "samples_per_s": train_samples / train_time if train_time else 0.0,
               "oracle_auc": oracle, "metrics": str(metrics.path)}
    metrics.write(**summary)
    if cfg.plot:
        summary["plot"] = str(metrics.plot(out / "metrics.png"))
    return summary
