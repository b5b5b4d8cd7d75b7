"""One typed config tree for training, loaded from YAML and overridden from the command line.

    cfg = load_config(TrainConfig, files=["profile.yaml"], overrides=["optim.lr=0.5"])

Unknown keys, wrong types and bad values are `ConfigError`s that name the key path (and the
file it came from) and what was expected. The same helpers type the launcher's job config.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dlrm.errors import ConfigError

T = TypeVar("T")

# ---------------------------------------------------------------------------------------------
# Generic machinery: dict <-> dataclass, with paths in every error.


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, path, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}{path}: expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}{path}: expected one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}{path}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, path=path, where=where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}{path}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{path}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}{path}: expected a mapping, got {value!r}")
        kt, vt = typing.get_args(tp) or (Any, Any)
        return {_coerce(k, kt, f"{path}.{k}", where): _coerce(v, vt, f"{path}.{k}", where) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}{path}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}{path}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}{path}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}{path}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict, path: str = "", where: str = "") -> T:
    """Build dataclass `cls` from a nested dict; unknown keys are errors naming the valid ones."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        prefix = f"{path}." if path else ""
        raise ConfigError(
            f"{where}unknown key {prefix}{unknown[0]!s}"
            f" (valid keys{' of ' + path if path else ''}: {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{path}.{name}" if path else name, where)
    obj = cls(**kwargs)
    return obj


def to_dict(obj: Any) -> Any:
    """Plain nested dict/list/scalars, ready for YAML or JSON."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def deep_merge(base: dict, update: dict) -> dict:
    """Mappings merge key by key; anything else (lists included) is replaced."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> dict:
    """`a.b.c=VALUE` -> {"a": {"b": {"c": VALUE}}}, VALUE parsed as YAML (so 3, 0.5, true, [1,2])."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. optim.lr=0.5")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key segment")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{line} is not valid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_config(cls: type[T], files: list[str | Path] = (), overrides: list[str] = (), base: dict | None = None) -> T:
    """Defaults <- base <- each YAML file in order <- KEY=VALUE overrides, then validated."""
    merged: dict = dict(base or {})
    for f in files:
        data = read_yaml(f)
        from_dict(cls, deep_merge(merged, data), where=f"{f}: ")  # name the file that brought a bad key
        merged = deep_merge(merged, data)
    for o in overrides:
        merged = deep_merge(merged, parse_override(o))
        from_dict(cls, merged, where=f"override {o!r}: ")
    obj = from_dict(cls, merged)
    check = getattr(obj, "validate", None)
    if check:
        check()
    return obj


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=None)


# ---------------------------------------------------------------------------------------------
# The training config. Defaults are NVIDIA DeepLearningExamples' for Criteo 1TB.


@dataclass
class ModelConfig:
    embedding_dim: int = 128
    bottom_mlp: list[int] = field(default_factory=lambda: [512, 256, 128])
    top_mlp: list[int] = field(default_factory=lambda: [1024, 1024, 512, 256])
    interaction: str = "dot"  # dot | cat | dcn
    # dcn (DLRM-DCNv2, MLPerf's): cross layers over [dense, sparse], each U [N, r] V [r, N]
    dcn_num_layers: int = 3
    dcn_low_rank_dim: int = 512
    # Used only when no dataset is given (benchmarks): 13 dense features, these cardinalities.
    num_numerical: int = 13


@dataclass
class OptimConfig:
    optimizer: str = "sgd"  # sgd | adagrad
    lr: float = 24.0
    warmup_steps: int = 8000
    decay_start_step: int = 48000
    decay_steps: int = 24000
    decay_power: float = 2.0
    decay_end_lr: float = 0.0
    adagrad_eps: float = 1e-8
    adagrad_initial_accumulator: float = 0.0


@dataclass
class DataConfig:
    dataset: str = ""  # folder holding feature_spec.yaml
    batch_size: int = 65536
    eval_batch_size: int = 65536
    shuffle_batches: bool = True  # shuffle batch order each epoch, seeded
    prefetch: int = 2  # batches read ahead in a background thread
    check_ids: bool = True  # verify every id < cardinality as batches are read


@dataclass
class DistConfig:
    device_memory: str = "80GiB"  # per rank; the planner's budget
    memory_reserve: str = "4GiB"  # kept free per rank for activations, allocator slack, CUDA context
    sharding: str = "auto"  # auto | table | row  (row: split every table by rows over all ranks)
    collective_timeout_s: int = 600  # a hung collective fails the job after this long


@dataclass
class TrainConfig:
    seed: int = 12345
    out: str = "runs/default"
    epochs: int = 1
    max_steps: int = 0  # 0: run the epochs out
    log_every: int = 100
    eval_every: int = 0  # 0: only at the end
    eval_max_batches: int = 0  # 0: the whole test split
    checkpoint_every: int = 0  # 0: only at the end
    checkpoint_keep: int = 2
    checkpoint_dir: str = ""  # "" -> <out>/checkpoints; s3://bucket/prefix also works
    resume: bool = False
    target_auc: float = 0.0  # stop once eval AUC reaches it; 0 disables
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | none | bf16 | fp16
    tf32: bool = True
    compile: bool = False  # torch.compile the dense, interaction and over arches (worth it on GPUs)
    plot: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def validate(self) -> None:
        """Cross-field checks, once, early; every value in the message."""
        checks = [
            (self.model.interaction in ("dot", "cat", "dcn"), f"model.interaction must be dot, cat or dcn, got {self.model.interaction!r}"),
            (self.model.dcn_num_layers >= 1, f"model.dcn_num_layers must be >= 1, got {self.model.dcn_num_layers}"),
            (self.model.dcn_low_rank_dim >= 1, f"model.dcn_low_rank_dim must be >= 1, got {self.model.dcn_low_rank_dim}"),
            (self.optim.optimizer in ("sgd", "adagrad"), f"optim.optimizer must be sgd or adagrad, got {self.optim.optimizer!r}"),
            (self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {self.device!r}"),
            (self.amp in ("auto", "none", "bf16", "fp16"), f"amp must be auto, none, bf16 or fp16, got {self.amp!r}"),
            (self.dist.sharding in ("auto", "table", "row"), f"dist.sharding must be auto, table or row, got {self.dist.sharding!r}"),
            (self.data.batch_size >= 1, f"data.batch_size must be >= 1, got {self.data.batch_size}"),
            (self.data.eval_batch_size >= 1, f"data.eval_batch_size must be >= 1, got {self.data.eval_batch_size}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.max_steps >= 0, f"max_steps must be >= 0, got {self.max_steps}"),
            (self.optim.lr > 0, f"optim.lr must be > 0, got {self.optim.lr}"),
            (self.model.embedding_dim >= 1, f"model.embedding_dim must be >= 1, got {self.model.embedding_dim}"),
            (len(self.model.bottom_mlp) >= 1, "model.bottom_mlp needs at least one layer"),
            (
                self.model.interaction != "dot" or self.model.bottom_mlp[-1] == self.model.embedding_dim,
                f"dot interaction needs model.bottom_mlp[-1] == model.embedding_dim, got {self.model.bottom_mlp[-1]} and {self.model.embedding_dim}",
            ),
            (self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}"),
            (self.data.prefetch >= 0, f"data.prefetch must be >= 0, got {self.data.prefetch}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


def parse_bytes(text: str | int) -> int:
    """'80GiB' -> 85899345920; '16GB' -> 16e9; plain numbers are bytes."""
    if isinstance(text, int):
        return text
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "K": 10**3, "M": 10**6, "G": 10**9,
             "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}
    s = str(text).strip()
    num = s.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ").strip()
    unit = s[len(num):].strip().upper()
    try:
        value = float(num)
    except ValueError:
        raise ConfigError(f"{text!r} is not a size: expected e.g. 80GiB, 512MiB, 16GB") from None
    if unit not in units or value < 0:
        raise ConfigError(f"{text!r} is not a size: expected e.g. 80GiB, 512MiB, 16GB")
    return int(value * units[unit])
