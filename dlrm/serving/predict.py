"""`python -m dlrm predict`: score a dataset split with an exported model alone.

    python -m dlrm predict --model EXPORT_DIR --dataset DIR [--split test] [--out scores.npy]

Only the export folder is used (its manifest, feature spec and AOTInductor package): no training
code is imported (not dlrm.modules.model, not dlrm.training.train), as on a serving host. Batches come from the
split-binary reader with its id checks; the package is verified against the manifest's sha256
records before it is loaded. Prints one JSON line: rows, AUC (of the logits, as `dlrm eval`) when
the split has labels, samples/s. `--out` gets the click probabilities as float32 [rows] in file
order (numpy .npy, written atomically); `--logits` writes the logits there instead.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch._inductor

from dlrm.serving import folder as serving
from dlrm.data.reader import SplitBinaryReader
from dlrm.data.spec import FeatureSpec
from dlrm.errors import UserError
from dlrm.io.fsutil import atomic_path, is_s3_uri, local_path, parse_s3_uri
from dlrm.io.storage import open_store, probe_writable
from dlrm.metrics import auc_fields, roc_auc
from dlrm.serving.publish import fetched


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="an export folder or s3://bucket/prefix (`dlrm export --out`)")
    p.add_argument("--dataset", required=True, help="dataset folder (holds feature_spec.yaml)")
    p.add_argument("--split", default="test", help="split to score (default: test)")
    p.add_argument("--out", help="write the probabilities here (a file or s3://bucket/key) as .npy, float32 [rows]")
    p.add_argument("--logits", action="store_true", help="write logits to --out instead of probabilities")
    p.add_argument("--batch-size", type=int, default=4096, help="rows per package call (default 4096)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="which package to run (default cpu)")


def check_compatible(model_dir: Path, exported: FeatureSpec, spec: FeatureSpec) -> None:
    """The dataset must hold the features the model was exported with: same tables and sizes."""
    want = dict(zip(exported.categorical, exported.table_sizes))
    have = {f: spec.cardinalities[f] for f in spec.categorical}
    missing = [f for f in want if f not in have]
    if missing:
        raise UserError(f"{spec.path}: no categorical features {missing[:3]} that the model in {model_dir} reads")
    sizes = [(f, want[f], have[f]) for f in want if want[f] != have[f]]
    if sizes:
        f, w, h = sizes[0]
        raise UserError(f"{spec.path}: feature {f} has cardinality {h}, the model in {model_dir} was exported with {w}")
    for f in want:
        if spec.hotness.get(f, 1) != exported.hotness.get(f, 1) or (f in spec.padded) != (f in exported.padded):
            raise UserError(f"{spec.path}: feature {f} has hotness {spec.hotness.get(f, 1)}"
                            f"{' (padded)' if f in spec.padded else ''}, the model in {model_dir} was exported with "
                            f"{exported.hotness.get(f, 1)}{' (padded)' if f in exported.padded else ''}")
    if len(spec.numerical) != len(exported.numerical):
        raise UserError(f"{spec.path}: {len(spec.numerical)} numerical features, the model in {model_dir} "
                        f"reads {len(exported.numerical)}")


def predict(model_dir: str | Path, dataset: str | Path, split: str = "test", batch_size: int = 4096,
            device: str = "cpu") -> tuple[np.ndarray, np.ndarray, np.ndarray | None, float]:
    """(logits, probabilities: float32 [rows]; labels bool [rows] or None; seconds spent in the package)."""
    model_dir = Path(model_dir)
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    manifest = serving.load_manifest(model_dir)
    if batch_size > manifest["max_batch"]:
        raise UserError(f"--batch-size {batch_size} exceeds the package's max batch {manifest['max_batch']} "
                        f"(export --max-batch)")
    package = serving.package_path(model_dir, manifest, device)
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device here")
    exported = FeatureSpec.load(model_dir / serving.FEATURE_SPEC)
    spec = FeatureSpec.load(dataset)
    check_compatible(model_dir, exported, spec)
    if split not in spec.sources:
        raise UserError(f"{spec.path}: no split {split!r} (have {', '.join(sorted(spec.sources))})")
    has_label = any(spec.label in c.features for c in spec.sources[split])
    reader = SplitBinaryReader(spec, split, batch_size, categorical=list(exported.categorical), label=has_label,
                               prefetch=2)
    runner = torch._inductor.aoti_load_package(str(package))
    logits, probs, labels, busy = [], [], [], 0.0
    with torch.inference_mode():
        for batch in reader:
            numerical = batch.numerical.to(device).float()
            categorical = batch.categorical.contiguous().to(device)
            t0 = time.perf_counter()
            logit, prob = runner(numerical, categorical)
            if device == "cuda":
                torch.cuda.synchronize()
            busy += time.perf_counter() - t0
            logits.append(logit.cpu())
            probs.append(prob.cpu())
            if has_label:
                labels.append(batch.label)
    def cat(parts):
        return torch.cat(parts).numpy() if parts else np.zeros(0, np.float32)

    return cat(logits), cat(probs), (torch.cat(labels).numpy() if labels else None), busy


def _check_out(out: str | None) -> None:
    if not out:
        return
    if is_s3_uri(out):
        bucket, key = parse_s3_uri(out)
        if not key or out.endswith("/"):
            raise UserError(f"--out {out}: names no object; expected s3://bucket/path/scores.npy")
        probe_writable(out.rpartition("/")[0])  # a missing bucket fails now, not after scoring the split
    elif Path(local_path(out, "--out", "dlrm predict", "pass a file name or s3://bucket/key",
                         what="writes one .npy file")).is_dir():
        raise UserError(f"--out {out}: is a folder; expected a file name such as scores.npy")


def write_scores(out: str, scores: np.ndarray) -> None:
    """float32 .npy at a local path (atomic) or an s3:// key (uploaded whole: a PUT is atomic)."""
    if not is_s3_uri(out):
        with atomic_path(out) as tmp, open(tmp, "wb") as fh:
            np.save(fh, scores)
        return
    parent, _, key = out.rpartition("/")
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "scores.npy", scores)
        open_store(parent).put_file(key, Path(tmp) / "scores.npy")


def main(args) -> int:
    _check_out(args.out)
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:  # an export on S3 is read from a verified temporary copy
        model = stack.enter_context(fetched(args.model)) if is_s3_uri(args.model) else Path(
            local_path(args.model, "--model", "dlrm predict", "pass an export folder or s3://bucket/prefix",
                       what="reads an export folder"))
        try:
            logits, probs, labels, busy = predict(model, args.dataset, args.split, args.batch_size, args.device)
        except UserError as e:  # name the object, not the temporary copy
            raise type(e)(str(e).replace(str(model), str(args.model).rstrip("/"))) from None
    bad = int((~np.isfinite(logits)).sum())
    if bad:  # an AUC over NaN is meaningless (and roc_auc would rank NaN anywhere): refuse, write nothing
        raise UserError(f"{args.model}: {bad} of {logits.shape[0]} rows of {args.split} scored NaN/inf; the model "
                        f"diverged or the inputs overflow it; no AUC reported, nothing written")
    result = {"model": str(args.model), "split": args.split, "rows": int(probs.shape[0]),
              **auc_fields(roc_auc(torch.from_numpy(logits), torch.from_numpy(labels)) if labels is not None else None),
              "samples_per_s": round(probs.shape[0] / busy, 1) if busy else None,
              "seconds": round(time.perf_counter() - t0, 3)}
    if args.out:
        write_scores(args.out, logits if args.logits else probs)
        result["out"] = str(args.out)
        result["written"] = "logits" if args.logits else "probabilities"
    print(json.dumps(result, allow_nan=False))
    return 0
