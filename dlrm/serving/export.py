"""`python -m dlrm export`: a checkpoint saved by any number of ranks -> one servable model folder.

    python -m dlrm export --checkpoints RUN/checkpoints [--name ckpt-...] --out DIR
                          [--table-dtype fp32|fp16|bf16] [--triton] [--dataset DIR] [--max-batch N]

Every rank's table rows are put back together into whole tables (dlrm.io.checkpoint.whole_tables),
the dense arches take rank 0's weights, and the model is captured once with torch.export (batch
dimension dynamic) and lowered with AOTInductor for the CPU (and CUDA when this machine has a GPU).
The folder layout and the signature are in dlrm.serving.folder. Before anything is published the CPU
package is loaded and checked against the eager model on a batch (a NaN output fails it, as do
non-finite weights before that); the folder is built beside --out and renamed into place, or
uploaded to an s3:// --out manifest last (dlrm.serving.publish), so a failed export leaves nothing
that looks finished.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import pickle
import shutil
import time
import warnings
from pathlib import Path

import torch
import torch._inductor
import yaml
from torch import nn

from dlrm.serving import folder as serving
from dlrm.io.checkpoint import METADATA, complete_checkpoints, read_metadata, whole_tables
from dlrm.io.checkpoint import first_non_finite
from dlrm.data.identity import dataset_identity, feature_differences
from dlrm.config import TrainConfig, dump_yaml, from_dict
from dlrm.data.spec import FeatureSpec
from dlrm.errors import UserError
from dlrm.modules.model import DLRM
from dlrm.io.storage import open_store
from dlrm.serving.publish import check_out, discard, publish, staging

TABLE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEFAULT_MAX_BATCH = 65536
SELF_CHECK_ATOL = 1e-5  # package vs the eager module it was compiled from (same table dtype)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoints", required=True, help="checkpoint folder (a run's checkpoints/ or s3://...)")
    p.add_argument("--name", help="checkpoint name (ckpt-000001000); default: the latest complete one")
    p.add_argument("--out", required=True, help="export folder or s3://bucket/prefix to write (replaced if it holds "
                                                "an earlier export)")
    p.add_argument("--dataset", help="dataset whose feature_spec.yaml the model was trained on; "
                                     "default: the one in the checkpoint's config")
    p.add_argument("--table-dtype", choices=sorted(TABLE_DTYPES), default="fp32",
                   help="embedding table storage in the package (fp16/bf16 halve its size)")
    p.add_argument("--triton", action="store_true", help="also write a Triton Inference Server model repository")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                   help=f"largest batch the packages accept (default {DEFAULT_MAX_BATCH})")
    p.add_argument("--wait-for-run", metavar="RUN",
                   help="first wait until the trainer of run folder RUN has finished (its metrics.jsonl ends in "
                        "the summary record): how the launcher's export Job follows the training job")
    p.add_argument("--wait-timeout-s", type=float, default=0, help="give up waiting after this long (0: never)")
    p.add_argument("--poll-s", type=float, default=30, help="seconds between looks at the run (default 30)")


class ServingDLRM(nn.Module):
    """numerical float32 [B, N], categorical int32 [B, H] -> (logit [B], probability [B]), float32.

    H: each feature's `hotness` ids side by side (H = F for one-hot data), -1 where a padded
    multi-hot row has fewer ids. The ids are checked against their table's cardinality inside the
    program: tables share one fused weight, so an id past its own table would read the next one's rows.
    """

    def __init__(self, model: DLRM, spec: FeatureSpec, table_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.model = model
        model.sparse_arch.embedding.to(table_dtype)  # DLRM.predict casts the looked-up rows back
        columns = [f for f in spec.categorical for _ in range(spec.hotness.get(f, 1))]
        self.register_buffer("id_max", torch.tensor([spec.cardinalities[f] for f in columns], dtype=torch.int32))
        self.register_buffer("id_min", torch.tensor([-1 if f in spec.padded else 0 for f in columns], dtype=torch.int32))

    def forward(self, numerical: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        ok = ((categorical >= self.id_min) & (categorical < self.id_max)).all()
        torch._assert_async(ok, "categorical id outside [0, cardinality) of its table")
        logit = self.model(numerical, categorical).float()
        return logit, torch.sigmoid(logit)


# ---------------------------------------------------------------------------------------------
# Inputs: checkpoint, config, feature spec


def resolve_checkpoint(uri: str, name: str | None) -> tuple[str, dict]:
    """(name, metadata) of the checkpoint to export; one-line errors for every way it is not there."""
    store = open_store(uri)
    names = complete_checkpoints(store)
    if name is None:
        if not names:
            hint = (f"; did you mean {uri.rstrip('/')}/checkpoints?" if store.local_path("checkpoints") is not None
                    and store.local_path("checkpoints").is_dir() else "; pass a run's checkpoints/ folder")
            raise UserError(f"{uri}: no complete checkpoint (a checkpoint is a ckpt-NNNNNNNNN folder with "
                            f"{METADATA}){hint}")
        name = names[-1]
    elif name not in names:
        have = ", ".join(names) if names else "none"
        raise UserError(f"{uri}: no complete checkpoint {name!r} (complete ones: {have})")
    meta = read_metadata(store, name)  # checked for what loading needs; whole_tables verifies the files
    if not isinstance(meta.get("plan"), dict):
        raise UserError(f"{uri}/{name}/{METADATA}: no 'plan'; not a checkpoint this trainer wrote")
    return name, meta


def checked_spec(meta: dict, dataset: str | None, where: str) -> FeatureSpec:
    """The dataset's feature spec, after checking it names the checkpoint's tables with their sizes."""
    dataset = dataset or meta["config"].get("data", {}).get("dataset")
    if not dataset:
        raise UserError(f"{where}: the checkpoint's config names no dataset; pass --dataset DIR")
    spec = FeatureSpec.load(dataset)
    plan = meta["plan"]
    saved = dict(zip(plan.get("table_names") or [], plan.get("table_sizes") or []))
    have = dict(zip(spec.categorical, spec.table_sizes))
    if saved != have:
        diff = sorted(set(saved.items()) ^ set(have.items()))[:3]
        raise UserError(f"{spec.path}: tables {diff} differ from checkpoint {where} (trained on "
                        f"{len(saved)} tables); pass the --dataset it was trained on")
    differences = feature_differences(meta, dataset_identity(spec, rows=False))
    if differences:  # hotness and the numerical features change the model the weights belong to
        raise UserError(f"{spec.path} does not fit checkpoint {where}: {'; '.join(differences)}; pass the "
                        f"--dataset it was trained on")
    return spec


def gather_model(uri: str, name: str, spec: FeatureSpec, cfg: TrainConfig) -> DLRM:
    """One whole DLRM from every rank's files: tables in spec order, dense arches from dense.pt."""
    where = f"{uri}/{name}"
    try:
        tables, dense = whole_tables(uri, name)
    except UserError:
        raise
    except FileNotFoundError as e:
        raise UserError(f"{where}: {Path(e.filename or str(e)).name} is missing; the checkpoint is incomplete") from None
    except OSError as e:
        if e.filename:  # the environment (permissions, I/O): the CLI reports it as such
            raise
        # torch.load(mmap=True) of a truncated file: mmap fails with EINVAL and names no file
        raise UserError(f"{where}: cannot map the checkpoint files ({e.strerror or e}); a file is truncated "
                        f"or corrupt") from None
    except (RuntimeError, EOFError, KeyError, ValueError, TypeError, pickle.UnpicklingError) as e:
        raise UserError(f"{where}: cannot read the checkpoint files ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:200]}); the checkpoint is corrupt") from None
    for t, rows in zip(spec.categorical, spec.table_sizes):
        got = tables.get(t)
        if got is None or got.shape != (rows, cfg.model.embedding_dim):
            shape = None if got is None else tuple(got.shape)
            raise UserError(f"{where}: table {t} has shape {shape} in the checkpoint, expected "
                            f"({rows}, {cfg.model.embedding_dim}); some rank's rows are missing")
    require_finite(where, {**{f"table {t}": tables[t] for t in spec.categorical}, **dense}, uri, name)
    weight = torch.cat([tables.pop(t).float() for t in spec.categorical])
    model = DLRM(len(spec.numerical), spec.table_sizes, cfg.model, hotness=spec.table_hotness,
                 padded=bool(spec.padded), table_weight=weight)
    try:
        result = model.load_state_dict(dense, strict=False)
    except RuntimeError as e:  # a size mismatch (another numerical feature count, other layer sizes)
        first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise UserError(f"{where}/dense.pt: weights do not fit the model built from {spec.path} and the "
                        f"checkpoint's config ({first}); pass the --dataset it was trained on") from None
    missing = [k for k in result.missing_keys if not k.startswith("sparse_arch.")]
    if missing or result.unexpected_keys:
        raise UserError(f"{where}/dense.pt: weights do not match the checkpoint's model config "
                        f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})")
    return model.eval()


def require_finite(where: str, tensors: dict[str, torch.Tensor], uri: str, name: str) -> None:
    """A NaN/inf weight makes every score NaN: refuse, naming the first such tensor and an earlier checkpoint."""
    bad = first_non_finite(tensors)
    if bad:
        earlier = [n for n in complete_checkpoints(open_store(uri)) if n < name]
        hint = f"export an earlier one (--name {earlier[-1]})" if earlier else "no earlier checkpoint to export"
        raise UserError(f"{where}: {bad[0]} holds {bad[1]} non-finite values (NaN/inf) of {bad[2]}: the run "
                        f"diverged before this checkpoint; {hint}")


def run_finished(run: str | Path) -> bool:
    """True when the trainer's last record in run/metrics.jsonl is its summary: training ended, and no
    restarted trainer has appended to it since (a resumed run writes train records after it).
    `run` is a folder or the run's s3:// out (the trainer uploads metrics.jsonl as it goes)."""
    try:
        text = open_store(str(run)).get_bytes("metrics.jsonl").decode("utf-8", "replace")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return bool(lines) and json.loads(lines[-1]).get("kind") == "summary"
    except (FileNotFoundError, json.JSONDecodeError, AttributeError):  # not started, or a line being written
        return False


def wait_for_run(run: str | Path, timeout_s: float = 0, poll_s: float = 30, log=print, sleep=time.sleep) -> None:
    run, start = str(run), time.monotonic()
    log(f"export: waiting for the trainer of {run} to finish (its metrics.jsonl ends in a summary)")
    while not run_finished(run):
        if timeout_s and time.monotonic() - start >= timeout_s:
            raise UserError(f"{run}: training did not finish within {timeout_s:g}s (no summary record at the end "
                            f"of {run.rstrip('/')}/metrics.jsonl)")
        sleep(poll_s)


def check_compiler() -> None:
    """AOTInductor builds a shared library: a C++ compiler must be on PATH (CXX, g++, clang++ or c++)."""
    if not any(shutil.which(c) for c in (os.environ.get("CXX"), "g++", "clang++", "c++") if c):
        raise UserError("no C++ compiler on PATH (CXX, g++, clang++ or c++): AOTInductor compiles the package "
                        "with one; install g++ (a *-devel PyTorch image has it)")


# ---------------------------------------------------------------------------------------------
# The model


def example_inputs(spec: FeatureSpec, batch: int, device: str = "cpu", seed: int = 0):
    """Random valid inputs: numerical [batch, N], categorical [batch, H] (padded features: some -1)."""
    gen = torch.Generator().manual_seed(seed)
    numerical = torch.rand(batch, len(spec.numerical), generator=gen) * 4
    columns = []
    for f in spec.categorical:
        for _ in range(spec.hotness.get(f, 1)):
            low = -1 if f in spec.padded else 0
            columns.append(torch.randint(low, spec.cardinalities[f], (batch,), generator=gen, dtype=torch.int32))
    return numerical.to(device), torch.stack(columns, 1).to(device)


class _DropText(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


@contextlib.contextmanager
def quiet_torch():
    """torch's notes that nobody exporting can act on, dropped by their exact text (anything else still shows):
    torch.export.save's "No complete tensor found in the group" (the tables are views of one fused
    weight; it is saved on the CPU, where the warning says it is harmless), pytree's own use of its
    deprecated LeafSpec (torch 2.13), and inductor's note that aten.embedding runs through its proxy
    executor (its own fallback choice; the package is checked against the eager model after)."""
    ir_log = logging.getLogger("torch._inductor.ir")
    shim = _DropText("is missing a c-shim implementation, using proxy executor as fallback")
    ir_log.addFilter(shim)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="No complete tensor found in the group", category=UserWarning)
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
            yield
    finally:
        ir_log.removeFilter(shim)


def export_program(module: nn.Module, spec: FeatureSpec, max_batch: int, device: str):
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    return torch.export.export(module, example_inputs(spec, 8, device), dynamic_shapes=({0: batch}, {0: batch}),
                               strict=False)


def compile_package(program, path: Path) -> Path:
    return Path(torch._inductor.aoti_compile_and_package(program, package_path=str(path)))


def self_check(package: Path, module: nn.Module, spec: FeatureSpec, atol: float) -> float:
    """Load the package as predict will and compare it with the eager module; returns the max |diff|."""
    runner = torch._inductor.aoti_load_package(str(package))
    worst = 0.0
    for b in (1, 37):
        x = example_inputs(spec, b, seed=b)
        with torch.no_grad():
            for name, got, want in zip(serving.OUTPUTS, runner(*x), module(*x)):
                if not (bool(torch.isfinite(got).all()) and bool(torch.isfinite(want).all())):
                    # NaN - NaN is NaN and max() skips NaN: a NaN model would pass a tolerance check
                    raise UserError(f"the exported model's {name} is not finite (NaN/inf) on valid inputs; "
                                    f"not publishing it")
                worst = max(worst, (got - want).abs().max().item())
    if not worst <= atol:
        raise RuntimeError(f"{package}: the compiled package differs from the eager model by {worst:.3g} "
                           f"(> {atol}); not publishing it")
    return worst


def export(checkpoints: str, out: str | Path, name: str | None = None, dataset: str | None = None,
           table_dtype: str = "fp32", triton: bool = False, max_batch: int = DEFAULT_MAX_BATCH,
           log=print) -> dict:
    """Write the export folder `out` (see dlrm.serving.folder; a folder or s3://...); returns its manifest."""
    out = str(out)  # Path() would fold an s3:// URI into a local 's3:' folder
    if max_batch < 1:
        raise UserError(f"--max-batch must be >= 1, got {max_batch}")
    check_out(out)
    check_compiler()
    name, meta = resolve_checkpoint(checkpoints, name)
    where = f"{checkpoints}/{name}"
    cfg = from_dict(TrainConfig, meta["config"], where=f"{where}/{METADATA}: config: ")
    spec = checked_spec(meta, dataset, where)
    t0 = time.perf_counter()
    model = gather_model(checkpoints, name, spec, cfg)
    module = ServingDLRM(model, spec, TABLE_DTYPES[table_dtype]).eval()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

    tmp = staging(out, log)
    try:
        with torch.no_grad():
            program = export_program(module, spec, max_batch, "cpu")
        torch.export.save(program, str(tmp / serving.PROGRAM))
        packages = {}
        for device in devices:
            log(f"export: compiling the AOTInductor package for {device} ...")
            if device == "cpu":
                prog = program
            else:
                with torch.no_grad():
                    prog = export_program(module.to(device), spec, max_batch, device)
            packages[device] = compile_package(prog, tmp / serving.PACKAGES[device]).name
        module.to("cpu")
        worst = self_check(tmp / packages["cpu"], module, spec, SELF_CHECK_ATOL)
        serving_spec = spec.to_dict()
        serving_spec["source_spec"] = {}  # the features, not the data files
        (tmp / serving.FEATURE_SPEC).write_text(yaml.safe_dump(serving_spec, sort_keys=False))
        (tmp / serving.MODEL_CONFIG).write_text(dump_yaml(cfg))
        triton_max = min(max_batch, 4096)
        if triton:
            device = "cuda" if "cuda" in packages else "cpu"
            serving.write_triton_repository(tmp / serving.TRITON_DIR, tmp / packages[device], device,
                                            len(spec.numerical), sum(spec.table_hotness), triton_max)
        manifest = {
            "format": serving.FORMAT,
            "checkpoint": {"uri": str(checkpoints), "name": name, "step": meta.get("step"),
                           "world_size": meta.get("world_size")},
            "model": {"num_numerical": len(spec.numerical), "tables": dict(zip(spec.categorical, spec.table_sizes)),
                      "hotness": dict(zip(spec.categorical, spec.table_hotness)), "padded": sorted(spec.padded),
                      "embedding_dim": cfg.model.embedding_dim, "interaction": cfg.model.interaction,
                      "table_dtype": table_dtype},
            "inputs": [{"name": "numerical", "dtype": "float32", "shape": [-1, len(spec.numerical)]},
                       {"name": "categorical", "dtype": "int32", "shape": [-1, sum(spec.table_hotness)]}],
            "outputs": [{"name": o, "dtype": "float32", "shape": [-1]} for o in serving.OUTPUTS],
            "max_batch": max_batch,
            "packages": packages,
            "program": serving.PROGRAM,
            "triton": {"repository": serving.TRITON_DIR, "model": serving.TRITON_MODEL,
                       "device": "cuda" if "cuda" in packages else "cpu", "max_batch_size": triton_max}
            if triton else None,
            "self_check_max_abs_diff": worst,
            "torch": torch.__version__,
            "files": serving.file_records(tmp),
        }
        (tmp / serving.MANIFEST).write_text(json.dumps(manifest, indent=1))  # last: marks the folder complete
        publish(tmp, out, log)
    except BaseException:
        discard(tmp)
        raise
    log(f"export: {where} (step {meta.get('step')}, saved by {meta.get('world_size')} ranks) -> {out} "
        f"[{', '.join(packages)}{', triton' if triton else ''}; tables {table_dtype}] in "
        f"{time.perf_counter() - t0:.0f}s")
    return manifest


def main(args) -> int:
    if args.wait_for_run:
        check_out(args.out)  # a wrong --out fails now, not after hours of waiting
        wait_for_run(args.wait_for_run, args.wait_timeout_s, args.poll_s, log=lambda m: print(m, flush=True))
    with quiet_torch():
        export(args.checkpoints, args.out, name=args.name, dataset=args.dataset, table_dtype=args.table_dtype,
               triton=args.triton, max_batch=args.max_batch, log=lambda m: print(m, flush=True))
    return 0
