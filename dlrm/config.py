"""One typed config tree for training, loaded from YAML and overridden from the command line.

    cfg = load_config(TrainConfig, files=["profile.yaml"], overrides=["optim.lr=0.5"])

Unknown keys, wrong types and bad values are `ConfigError`s that name the key path (and the
file it came from), the value and what was expected. The same machinery types the launcher's
job config. A field says what it accepts in its annotation, checked once where the value enters:

    lr: Annotated[float, Range(gt=0)] = 24.0        # every float is also finite: .inf/.nan refused
    seed: Annotated[int, Range(ge=0, le=2**63 - 1)]
    bottom_mlp: Annotated[list[AtLeast1], Length(min=1)]
    interaction: Literal["dot", "cat", "dcn"] = "dot"
    # dcn (DLRM-DCNv2, MLPerf's): cross layers over [dense, sparse], each U [N, r] V [r, N]
    dcn_num_layers: AtLeast1 = 3
    dcn_low_rank_dim: AtLeast1 = 512
    device_memory: Annotated[str, ByteSize()] = "80Gi"

`from_dict` checks them as it builds the dataclasses (so the message names the file or override
that brought the value); `check_values(obj)` checks an object built or edited in code, and every
config's `validate()` starts with it before its cross-field checks.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml

from dlrm.errors import ConfigError
from dlrm.io.fsutil import load_yaml_file

T = TypeVar("T")

# ---------------------------------------------------------------------------------------------
# What a field accepts beyond its type: metadata of typing.Annotated. Each check has
# `accepts(value) -> bool` and `expects(type) -> str` (the "expected ..." part of the message).


def _noun(tp: Any) -> str:
    return {int: "an integer", float: "a finite number", str: "a string", list: "a list"}.get(
        typing.get_origin(tp) or tp, _type_name(tp))


@dataclass(frozen=True)
class Range:
    """A number's bounds; None is unbounded. Range(ge=1), Range(gt=0), Range(ge=0, le=1)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def accepts(self, v) -> bool:
        return ((self.ge is None or v >= self.ge) and (self.gt is None or v > self.gt)
                and (self.le is None or v <= self.le) and (self.lt is None or v < self.lt))

    def expects(self, tp: Any) -> str:
        lo = f"[{self.ge}" if self.ge is not None else f"({self.gt}" if self.gt is not None else None
        hi = f"{self.le}]" if self.le is not None else f"{self.lt})" if self.lt is not None else None
        if lo and hi:
            return f"{_noun(tp)} in {lo}, {hi}"
        bound = {">=": self.ge, ">": self.gt, "<=": self.le, "<": self.lt}
        return " and ".join(f"{_noun(tp)} {op} {b}" for op, b in bound.items() if b is not None)


@dataclass(frozen=True)
class Length:
    """A list's (or string's) length bounds."""

    min: int = 0
    max: int | None = None

    def accepts(self, v) -> bool:
        return len(v) >= self.min and (self.max is None or len(v) <= self.max)

    def expects(self, tp: Any) -> str:
        what = "a string" if tp is str else "a list"
        if self.max is None:
            return f"{what.replace('a ', 'a non-empty ', 1)}" if self.min == 1 else f"{what} of length >= {self.min}"
        return f"{what} of length {self.min} to {self.max}"


@dataclass(frozen=True)
class ByteSize:
    """A byte size as a Kubernetes quantity (parse_bytes): 80Gi, 512Mi, 16G, 1024."""

    def accepts(self, v) -> bool:
        try:
            parse_bytes(v)
        except ConfigError:
            return False
        return True

    def expects(self, tp: Any) -> str:
        return "a size as a Kubernetes quantity such as 80Gi, 512Mi, 16G (no B: 80GiB is written 80Gi)"


# The common cases, by name (the launcher's config uses them too).
NonNegative = Annotated[int, Range(ge=0)]  # counts where 0 means "off" or "none"
AtLeast1 = Annotated[int, Range(ge=1)]
Positive = Annotated[float, Range(gt=0)]
NonEmpty = Annotated[str, Length(min=1)]

# ---------------------------------------------------------------------------------------------
# Generic machinery: dict <-> dataclass, with paths in every error.


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _number(value: Any) -> float | int | None:
    """An int/float, or a numeric string YAML 1.1 left as text ('1e-8'); None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return float(value.strip().replace("_", ""))
        except ValueError:
            return None
    return None


def _coerce(value: Any, tp: Any, path: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        base, *checks = typing.get_args(tp)
        value = _coerce(value, base, path, where)
        for check in checks:
            if hasattr(check, "accepts") and not check.accepts(value):
                raise ConfigError(f"{where}{path}: expected {check.expects(base)}, got {value!r}")
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
        if len(errors) == 1:  # Optional[X]: X's own message says more
            raise ConfigError(errors[0])
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
        n = _number(value)
        if isinstance(n, int):
            return n
        if isinstance(n, float) and math.isfinite(n) and n.is_integer():
            return int(n)
        raise ConfigError(f"{where}{path}: expected an integer, got {value!r}")
    if tp is float:
        n = _number(value)
        if n is None:
            raise ConfigError(f"{where}{path}: expected a number, got {value!r}")
        if not math.isfinite(n):  # no setting means anything at .inf or .nan; torch would take them
            raise ConfigError(f"{where}{path}: expected a finite number, got {value!r}")
        return float(n)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}{path}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict, path: str = "", where: str = "") -> T:
    """Build dataclass `cls` from a nested dict, every value checked against its annotation;
    unknown keys are errors naming the valid ones."""
    hints = typing.get_type_hints(cls, include_extras=True)
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


def check_values(obj: Any) -> None:
    """Check every field of a config dataclass against its annotation, as loading would: for
    objects built or edited in code (tests, `dlrm eval`), which skip the loader."""
    from_dict(type(obj), to_dict(obj))


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
    """A config file's mapping (empty file: {}); errors name the file (and line)."""
    data = load_yaml_file(path, what="config file")
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
    embedding_dim: AtLeast1 = 128
    bottom_mlp: Annotated[list[AtLeast1], Length(min=1)] = field(default_factory=lambda: [512, 256, 128])
    top_mlp: list[AtLeast1] = field(default_factory=lambda: [1024, 1024, 512, 256])  # a last layer to 1 is added
    interaction: Literal["dot", "cat", "dcn"] = "dot"
    # dcn (DLRM-DCNv2, MLPerf's): cross layers over [dense, sparse], each U [N, r] V [r, N]
    dcn_num_layers: AtLeast1 = 3
    dcn_low_rank_dim: AtLeast1 = 512
    # Used only when no dataset is given (benchmarks): 13 dense features, these cardinalities.
    num_numerical: NonNegative = 13


@dataclass
class OptimConfig:
    optimizer: Literal["sgd", "adagrad"] = "sgd"
    lr: Positive = 24.0
    warmup_steps: NonNegative = 8000
    decay_start_step: NonNegative = 48000
    decay_steps: NonNegative = 24000  # 0: no decay
    decay_power: Positive = 2.0
    decay_end_lr: Annotated[float, Range(ge=0)] = 0.0
    adagrad_eps: Positive = 1e-8
    adagrad_initial_accumulator: Annotated[float, Range(ge=0)] = 0.0
    # A schedule that does not fit the run's step count (a run shorter than half its warmup):
    # refuse to start (error), or say so and train anyway (warn). See dlrm.training.schedule.check_schedule.
    schedule_check: Literal["error", "warn"] = "error"


@dataclass
class DataConfig:
    dataset: str = ""  # folder holding feature_spec.yaml
    batch_size: AtLeast1 = 65536
    eval_batch_size: AtLeast1 = 65536
    shuffle_batches: bool = True  # shuffle batch order each epoch, seeded
    prefetch: Annotated[int, Range(ge=0, le=64)] = 2  # batches read ahead in a background thread (each in memory)
    check_ids: bool = True  # verify every id < cardinality as batches are read
    # How a folder holding _manifest.json is checked before training (dlrm.data.manifest.require_verified):
    # auto: its .verified record, else every file's sha256; full: every sha256; sizes: file sizes only; off.
    verify: Literal["auto", "full", "sizes", "off"] = "auto"


@dataclass
class DistConfig:
    device_memory: Annotated[str, ByteSize()] = "80Gi"  # per rank; the planner's budget
    memory_reserve: Annotated[str, ByteSize()] = "4Gi"  # kept free per rank for activations, allocator slack, CUDA context
    sharding: Literal["auto", "table", "row"] = "auto"  # row: split every table by rows over all ranks
    collective_timeout_s: AtLeast1 = 600  # a hung collective fails the job after this long


@dataclass
class TrainConfig:
    seed: Annotated[int, Range(ge=0, le=2**63 - 1)] = 12345  # torch and numpy take any value in this range
    out: NonEmpty = "runs/default"  # the run's output: a folder or s3://bucket/prefix/run (dlrm.training.runlog)
    epochs: AtLeast1 = 1
    max_steps: NonNegative = 0  # 0: run the epochs out
    log_every: AtLeast1 = 100
    eval_every: NonNegative = 0  # 0: only at the end (or evals_per_epoch)
    # MLPerf's rule: evaluate every epoch_batches // evals_per_epoch steps (20: every 1/20 epoch);
    # 0: off. Exclusive with eval_every.
    evals_per_epoch: Annotated[int, Range(ge=0, le=10000)] = 0
    eval_max_batches: NonNegative = 0  # 0: the whole test split
    checkpoint_every: NonNegative = 0  # 0: only at the end
    checkpoint_keep: NonNegative = 2  # 0: keep every checkpoint
    checkpoint_dir: str = ""  # "" -> <out>/checkpoints; s3://bucket/prefix also works
    sync_every_s: Annotated[float, Range(ge=0)] = 300.0  # out=s3://...: upload metrics and events at least this often (and at each eval)
    resume: bool = False
    # Which run `out` belongs to (dlrm.training.lifecycle): a folder holding a run with another id is
    # refused unless `resume`; "" starts a new run. The launcher renders it from the job name and config.
    run_id: str = ""
    target_auc: Annotated[float, Range(ge=0, le=1)] = 0.0  # stop once eval AUC reaches it; 0 disables
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, off on CPU
    tf32: bool = True
    compile: bool = False  # torch.compile the dense, interaction and over arches (worth it on GPUs)
    plot: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def validate(self) -> None:
        """Every field against its annotation, then the cross-field checks; values in the message."""
        check_values(self)
        m = self.model
        if m.interaction == "dot" and m.bottom_mlp[-1] != m.embedding_dim:
            raise ConfigError(f"dot interaction needs model.bottom_mlp[-1] == model.embedding_dim, "
                              f"got {m.bottom_mlp[-1]} and {m.embedding_dim}")
        if self.eval_every and self.evals_per_epoch:
            raise ConfigError(f"eval_every ({self.eval_every}) and evals_per_epoch ({self.evals_per_epoch}) both set: "
                              f"choose one (steps, or evaluations per epoch)")
        if parse_bytes(self.dist.memory_reserve) >= parse_bytes(self.dist.device_memory):
            raise ConfigError(f"dist.memory_reserve ({self.dist.memory_reserve}) must be less than "
                              f"dist.device_memory ({self.dist.device_memory})")


# One size grammar for the whole config tree, the trainer's budget included: Kubernetes'
# resource.Quantity (80Gi binary, 80G decimal, 500m, 2e3). The same job file holds both kinds of
# size, so '80GiB' here and '80Gi' in the pod's limits would be two grammars for one idea.
QUANTITY = re.compile(r"([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?")
_SCALE = {None: 1, "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def parse_quantity(text: str, path: str = "size") -> float:
    """'64Gi' -> 68719476736.0, '500m' -> 0.5; a ConfigError naming `path` otherwise (with a hint for '64GiB')."""
    m = QUANTITY.fullmatch(str(text))
    if not m:
        hint = ""
        bytes_form = re.fullmatch(r"\s*([0-9.]+)\s*([KMGTPE])(i?)B\s*", str(text))
        if bytes_form:  # the other size grammar (80GiB): say what Kubernetes writes instead
            num, unit, i = bytes_form.groups()
            hint = f"; Kubernetes writes {num}{unit}{i or ''} (no B){'' if i else ' for decimal, ' + num + unit + 'i for binary'}"
        raise ConfigError(f"{path}: {text!r} is not a Kubernetes quantity (e.g. 64Gi, 500m, 16){hint}")
    num, suffix = m.groups()
    value = float(num) * (10 ** int(suffix[1:]) if suffix and suffix[0] in "eE" else _SCALE[suffix])
    if not math.isfinite(value):
        raise ConfigError(f"{path}: {text!r} is out of range")
    return value


def parse_bytes(text: str | int, path: str = "size") -> int:
    """A byte count as a Kubernetes quantity: '80Gi' -> 85899345920, '16G' -> 16e9, plain numbers are bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = float(text)
    else:
        value = parse_quantity(text, path)
    if not 0 <= value < 2**63 or not float(value).is_integer():
        raise ConfigError(f"{path}: {text!r} is not a whole number of bytes >= 0 (e.g. 80Gi, 512Mi, 16G)")
    return int(value)
