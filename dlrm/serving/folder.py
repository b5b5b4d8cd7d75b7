"""The export folder: what `dlrm export` writes and `dlrm predict` (or a server) reads. No model code.

    OUT/
      model.pt2           AOTInductor package for the CPU (torch._inductor.aoti_load_package)
      model-cuda.pt2      the same compiled for CUDA, when the exporting machine had a GPU
      program.pt2         the torch.export program (torch.export.load): re-lower it for another target
      feature_spec.yaml   the features the model reads, input columns in channel order (no data files)
      model.yaml          the checkpoint's training config (model dims, interaction, seed, ...)
      manifest.json       format, signature, origin, every file's sha256 and size: WRITTEN LAST
      triton/             with --triton: a Triton model repository (see write_triton_repository)

Signature of every package and of the program (B is dynamic, 1..max_batch):
    numerical   float32 [B, N]  the dense features, as the trainer feeds them (float16 on disk, cast)
    categorical int32   [B, H]  each table's `hotness` ids (1 for one-hot), tables in feature_spec's
                                channel_spec.categorical order; -1 pads a short row of a padded feature
    -> (logit float32 [B], probability float32 [B] = sigmoid(logit), the click probability)
The logit is there because ranking metrics need it: float32 sigmoid maps nearby logits onto one
probability, turning distinct scores into ties that move the AUC by ~1e-6 on 1000 rows.
An id outside [0, cardinality) is refused by the package (a runtime error), never looked up.

A folder is an export only once manifest.json exists, and export builds it in a temp folder renamed
into place, so a half-written export cannot be taken for one.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from dlrm.errors import UserError
from dlrm.io.fsutil import load_json_file

FORMAT = "dlrm-k8s-export/1"
MANIFEST = "manifest.json"
PACKAGES = {"cpu": "model.pt2", "cuda": "model-cuda.pt2"}
PROGRAM = "program.pt2"
FEATURE_SPEC = "feature_spec.yaml"
MODEL_CONFIG = "model.yaml"
TRITON_DIR = "triton"
TRITON_MODEL = "dlrm"
INPUTS = ("numerical", "categorical")
OUTPUTS = ("logit", "probability")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_records(root: Path) -> dict[str, dict]:
    """{relative path: {sha256, bytes}} of every file under root but the manifest, sorted."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel != MANIFEST:
            out[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return out


def is_export(folder: Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def load_manifest(folder: str | os.PathLike, verify: bool = True) -> dict:
    """The export's manifest; with `verify`, every listed file's size and sha256 checked first.

    Raises UserError naming the folder and the first file that is missing or differs.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder (expected the --out folder of `dlrm export`)")
    if not path.is_file():
        raise UserError(f"{folder}: no {MANIFEST}; not a finished `dlrm export` folder")
    manifest = load_json_file(path, MANIFEST, UserError)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise UserError(f"{path}: format {got!r}, expected {FORMAT!r}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise UserError(f"{path}: no 'files' records")
    if verify:
        for rel, rec in files.items():
            f = folder / rel
            if not f.is_file():
                raise UserError(f"{f}: missing (listed in {path})")
            if f.stat().st_size != rec.get("bytes"):
                raise UserError(f"{f}: {f.stat().st_size} bytes, {path} records {rec.get('bytes')}; the file was changed")
            if sha256_file(f) != rec.get("sha256"):
                raise UserError(f"{f}: sha256 differs from {path}; the file is corrupt or was changed")
    return manifest


def package_path(folder: str | os.PathLike, manifest: dict, device: str) -> Path:
    name = (manifest.get("packages") or {}).get(device)
    if not name:
        have = ", ".join(sorted(manifest.get("packages") or {})) or "none"
        raise UserError(f"{folder}: no package for {device} in this export (have: {have}); "
                        f"export on a machine with a {device.upper()} to get one")
    return Path(folder) / name


# ---------------------------------------------------------------------------------------------
# Triton Inference Server


def triton_config(num_numerical: int, num_ids: int, kind: str, max_batch_size: int,
                  name: str = TRITON_MODEL) -> str:
    """config.pbtxt for Triton's PyTorch backend, AOTInductor flavour (platform "torch_aoti").

    That backend (triton-inference-server/pytorch_backend, src/pt2/) loads <version>/model.pt2 with
    torch::inductor::AOTIModelPackageLoader; it does not auto-complete configs, so every input and
    output is declared. Inputs are bound by position with the INPUT__<i> / OUTPUT__<i> names it
    accepts for any model. The package is device-baked: a CPU package serves KIND_CPU, a CUDA one
    KIND_GPU. The model's [B] output is declared as dims [1] reshaped to [] (Triton's way for a
    batched rank-1 tensor); OUTPUT__0 is the logit, OUTPUT__1 the probability.
    """
    return f"""name: "{name}"
backend: "pytorch"
platform: "torch_aoti"
max_batch_size: {max_batch_size}
input [
  {{
    name: "INPUT__0"  # numerical: float32 [B, {num_numerical}]
    data_type: TYPE_FP32
    dims: [ {num_numerical} ]
  }},
  {{
    name: "INPUT__1"  # categorical ids: int32 [B, {num_ids}], feature_spec.yaml channel order and hotness
    data_type: TYPE_INT32
    dims: [ {num_ids} ]
  }}
]
output [
  {{
    name: "OUTPUT__0"  # logit: float32 [B]
    data_type: TYPE_FP32
    dims: [ 1 ]
    reshape: {{ shape: [ ] }}
  }},
  {{
    name: "OUTPUT__1"  # click probability, sigmoid(logit): float32 [B]
    data_type: TYPE_FP32
    dims: [ 1 ]
    reshape: {{ shape: [ ] }}
  }}
]
dynamic_batching {{
  max_queue_delay_microseconds: 100
}}
instance_group [
  {{
    count: 1
    kind: {kind}
  }}
]
parameters: {{
  key: "INFERENCE_MODE"
  value: {{ string_value: "true" }}
}}
"""


def write_triton_repository(root: Path, package: Path, device: str, num_numerical: int, num_ids: int,
                            max_batch_size: int) -> Path:
    """root/dlrm/config.pbtxt and root/dlrm/1/model.pt2 (a hard link to `package` where possible)."""
    model = root / TRITON_MODEL
    (model / "1").mkdir(parents=True)
    target = model / "1" / "model.pt2"
    try:
        os.link(package, target)
    except OSError:
        import shutil

        shutil.copyfile(package, target)
    kind = "KIND_GPU" if device == "cuda" else "KIND_CPU"
    (model / "config.pbtxt").write_text(triton_config(num_numerical, num_ids, kind, max_batch_size))
    return model
