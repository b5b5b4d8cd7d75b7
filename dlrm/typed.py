"""The typed-config machinery: YAML and KEY=VALUE overrides -> dataclasses, every value checked.

    cfg = load_config(TrainConfig, files=["profile.yaml"], overrides=["optim.lr=0.5"])

Unknown keys, wrong types and bad values are `ConfigError`s that name the key path (and the
file it came from), the value and what was expected. A field says what it accepts in its
annotation (`Range`, `Length`, `ByteSize`, `Literal`), checked once where the value enters:
`from_dict` as it builds the dataclasses, `check_values(obj)` for an object built in code.
The training config (dlrm.config) and the launcher's job config (launcher.config) are both
typed with it; sizes everywhere are Kubernetes quantities (`parse_quantity`, `parse_bytes`).
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

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


# The word a Literal field documents for what YAML turned into a bool (`data.verify: off`, `amp: off`
# -> "none"), in order of preference.
_BOOL_WORDS = {False: ("off", "none", "no", "false"), True: ("on", "yes", "true")}


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
        choices = typing.get_args(tp)
        if isinstance(value, bool) and not any(isinstance(c, bool) for c in choices):
            # YAML 1.1 reads a bare off/no/on/yes as a bool: give back the word the field documents
            word = next((w for w in _BOOL_WORDS[value] if w in choices), None)
            if word is None:
                raise ConfigError(f"{where}{path}: expected one of {list(choices)}, got {value!r} (YAML reads a bare "
                                  f"on/off/yes/no/true/false as a boolean)")
            return word
        if value not in choices:
            raise ConfigError(f"{where}{path}: expected one of {list(choices)}, got {value!r}")
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


def override_key(key: str) -> list[str]:
    """`a.b\\.c` -> ["a", "b.c"]: a dot escaped with a backslash stays in the key (Helm's --set
    convention), for map keys that hold dots (labels such as topology.kubernetes.io/zone)."""
    return [part.replace("\\.", ".") for part in re.split(r"(?<!\\)\.", key)]


def parse_override(text: str) -> dict:
    """`a.b.c=VALUE` -> {"a": {"b": {"c": VALUE}}}, VALUE parsed as YAML (so 3, 0.5, true, [1,2]);
    `\\.` in KEY is a literal dot (override_key)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. optim.lr=0.5")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in override_key(key)):
        raise ConfigError(f"override {text!r}: empty key segment")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    for part in reversed(override_key(key)):
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
    # "E" alone is exa (10^18), "Ei" exbi; an exponent is e/E followed by digits ("2e3")
    exponent = suffix is not None and suffix[0] in "eE" and len(suffix) > 1 and suffix != "Ei"
    # float() of the whole text: '1e400' is inf at once (10 ** 400 would overflow a float product,
    # and 10 ** 99999999 would take minutes to compute)
    value = float(num + suffix) if exponent else float(num) * _SCALE[suffix]
    if not math.isfinite(value):
        raise ConfigError(f"{path}: {text!r} is out of range (outside a float: at most about 1.8e308)")
    return value


def parse_bytes(text: str | int, path: str = "size") -> int:
    """A byte count as a Kubernetes quantity: '80Gi' -> 85899345920, '16G' -> 16e9, plain numbers are bytes."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = float(text)
    else:
        value = parse_quantity(text, path)
    if value >= 2**63:
        raise ConfigError(f"{path}: {text!r} is out of range: a byte count is below 8Ei (2^63 bytes)")
    if not 0 <= value or not float(value).is_integer():
        raise ConfigError(f"{path}: {text!r} is not a whole number of bytes >= 0 (e.g. 80Gi, 512Mi, 16G)")
    return int(value)
