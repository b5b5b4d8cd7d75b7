"""The three helpers every input and output path shares: atomic writes, safe YAML, s3:// URIs.

    with atomic_path("run/config.yaml") as tmp:    # write tmp; on success it replaces the target
        tmp.write_text(text)
    atomic_write("run/config.yaml", text)          # the same for bytes or str
    data = load_yaml_file("values.yaml")           # one-line UserError naming file:line; alias bombs and
                                                   # duplicate keys refused
    bucket, prefix = parse_s3_uri("s3://b/a/b/")   # ('b', 'a/b')

Why one copy: a reader never sees a half-written file only if every writer renames a finished,
fsynced temp file in the same folder (and removes it on failure); a user's YAML never hangs
the CLI (nor silently keeps the last of two equal keys) only if every loader goes through here.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Iterator

import yaml

from dlrm.errors import ConfigError, UserError

# ---------------------------------------------------------------------------------------------
# Atomic writes

_UMASK = os.umask(0o022)  # read once (os.umask can only be read by setting it), then restored
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = True, tag: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path beside `path`; on a clean exit it is fsynced and renamed onto `path`.

    The temp file is `.<name>.<random><tag>`: a caller that must recognise (and clean up) the
    leftovers of a killed writer gives its own tag.

    On any error the temp file is removed and `path` is untouched; an OSError (a full disk)
    is re-raised naming `path`, not the temp file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=tag)
    # mkstemp creates 0600; the result must have the mode a plain open() would give (or the mode of
    # the file it replaces): a container's other uid reads a mounted config, a team reads a run folder
    try:
        os.fchmod(fd, stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o666 & ~_UMASK)
    finally:
        os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.filename in (None, tmp_name, str(tmp)):
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str, fsync: bool = True, tag: str = ".tmp") -> Path:
    """Write `data` (bytes, or str as UTF-8) to `path` all or nothing."""
    with atomic_path(path, fsync=fsync, tag=tag) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


# ---------------------------------------------------------------------------------------------
# YAML from users: safe types only, alias expansion bounded, errors on one line with file:line

MAX_EXPANDED_NODES = 100_000  # a values file or manifest is far below; a "billion laughs" is far above


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses documents whose aliases expand beyond MAX_EXPANDED_NODES nodes.

    PyYAML keeps an alias as a shared node, so composing is cheap; the blow-up comes later, when
    something walks the data (merging, json.dumps, rendering). So the expanded size is counted
    on the node graph (memoised, linear in the document) before any Python object is built.
    """

    def compose_document(self):
        node = super().compose_document()
        sizes: dict[int, int] = {}

        def size(n) -> int:
            if id(n) in sizes:
                return sizes[id(n)]
            sizes[id(n)] = 1  # a recursive alias counts once (and cannot recurse forever)
            total = 1
            if isinstance(n, yaml.SequenceNode):
                total += sum(size(c) for c in n.value)
            elif isinstance(n, yaml.MappingNode):
                total += sum(size(k) + size(v) for k, v in n.value)
            sizes[id(n)] = total
            return total

        if node is not None and size(node) > MAX_EXPANDED_NODES:
            mark = node.start_mark
            raise yaml.YAMLError(f"aliases expand to more than {MAX_EXPANDED_NODES:,} nodes "
                                 f"(document at line {mark.line + 1})")
        return node


    def construct_mapping(self, node, deep=False):
        # PyYAML keeps the last of two equal keys: a config or values file whose second `lr:` silently
        # wins. Refused, naming both lines; `<<` merge keys stay overridable, as YAML means them.
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:  # an unhashable key: the constructor reports it
                    continue
                if first is not key_node.start_mark:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first at line {first.line + 1})", key_node.start_mark)
        return super().construct_mapping(node, deep)


def _yaml_error(where: str, e: yaml.YAMLError, error: type[UserError]) -> UserError:
    mark = getattr(e, "problem_mark", None)
    line = f" line {mark.line + 1} column {mark.column + 1}:" if mark else ""
    problem = getattr(e, "problem", None) or str(e)
    return error(f"{where}:{line} is not valid YAML: {' '.join(str(problem).split())}")


def load_yaml(text: str, where: str = "<string>", error: type[UserError] = ConfigError):
    """One YAML document from `text`; `where` names it in the error (a file name, 'stdin'...)."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        raise _yaml_error(where, e, error) from None
    except RecursionError:
        raise error(f"{where}: YAML nested too deeply") from None


def load_yaml_all(text: str, where: str = "<string>", error: type[UserError] = ConfigError) -> list:
    """Every document of a multi-document stream, empty documents dropped."""
    try:
        return [d for d in yaml.load_all(text, Loader=_BoundedLoader) if d is not None]  # noqa: S506
    except yaml.YAMLError as e:
        raise _yaml_error(where, e, error) from None
    except RecursionError:
        raise error(f"{where}: YAML nested too deeply") from None


MAX_TEXT_BYTES = 64 << 20  # a config, values, spec, manifest or record file; far above any real one


def read_bytes(path: str | os.PathLike, what: str = "file", error: type[UserError] = ConfigError,
               limit: int = MAX_TEXT_BYTES) -> bytes:
    """A user's file read whole into memory, at most `limit` bytes: the one bounded reader, so /dev/urandom
    or a 10 GB file given as a config is one line, not a hang or an OOM kill. Missing, a folder,
    unreadable or a URI: a one-line `error` naming it."""
    if is_uri(os.fspath(path)):  # Path() would read 's3://b/x.yaml' as the local file 's3:/b/x.yaml'
        raise error(f"{os.fspath(path)}: a {what} must be a local file, not a URI; download it first")
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, expected a {what}") from None
    except PermissionError:
        raise error(f"{path}: permission denied reading the {what}") from None
    if len(data) > limit:
        raise error(too_large(path, limit, what))
    return data


def too_large(where, limit: int, what: str) -> str:
    """The one message for a file or object past its read-whole bound."""
    return f"{where}: more than {limit >> 20} MiB, too large for a {what} (read whole into memory): is it the right file?"


def read_text(path: str | os.PathLike, what: str = "file", error: type[UserError] = ConfigError,
              limit: int = MAX_TEXT_BYTES) -> str:
    """A user's text file (bounded, see read_bytes), or a one-line error naming it (also: not UTF-8)."""
    try:
        return read_bytes(path, what, error, limit).decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start})") from None


def load_json_file(path: str | os.PathLike, what: str = "JSON file", error: type[UserError] = ConfigError,
                   limit: int = MAX_TEXT_BYTES):
    """A JSON file (bounded), every failure a one-line `error` naming it."""
    try:
        return json.loads(read_text(path, what, error, limit))
    except json.JSONDecodeError as e:
        raise error(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise error(f"{path}: JSON nested too deeply") from None


def load_yaml_file(path: str | os.PathLike, what: str = "YAML file", error: type[UserError] = ConfigError):
    """One YAML document from a file, every failure a one-line `error` naming the file (and line)."""
    return load_yaml(read_text(path, what, error), str(path), error)


def load_yaml_file_all(path: str | os.PathLike, what: str = "YAML file", error: type[UserError] = ConfigError) -> list:
    return load_yaml_all(read_text(path, what, error), str(path), error)


# ---------------------------------------------------------------------------------------------
# s3:// URIs


def is_s3_uri(text: str) -> bool:
    return isinstance(text, str) and text.startswith("s3://")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """'s3://bucket/a/b/' -> ('bucket', 'a/b'): the prefix has no leading or trailing slash."""
    if not is_s3_uri(uri):
        raise UserError(f"not an S3 URI: {uri!r}; expected s3://bucket/prefix")
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    if not bucket:
        raise UserError(f"no bucket in {uri!r}; expected s3://bucket/prefix")
    if any(c.isspace() or ord(c) < 32 for c in uri):
        raise UserError(f"S3 URI {uri!r} holds whitespace or control characters")
    return bucket, prefix.strip("/")


# Schemes a path given without `//` (or with one slash lost: `s3:/bucket/x`) still means as a URI.
_SCHEMES = frozenset("s3 s3a s3n gs gcs file http https hdfs az abfs abfss wasb wasbs adl oss cos r2 minio".split())


def is_uri(text) -> bool:
    """Anything that looks like a URI: `scheme://` (any case: `S3://`), `scheme:/` (`s3:/bucket/x`, a
    slash lost), or a known scheme and a colon (`file:x`, `s3:bucket`). Path() would fold 's3://b/x'
    into the local relative folder 's3:/b/x', so every path argument refuses these unless it takes
    exactly `s3://` (`location`)."""
    if not isinstance(text, str):
        return False
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:/", text):
        return True
    m = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", text)
    return m is not None and m[1].lower() in _SCHEMES


def location(arg: str | os.PathLike, flag: str) -> str:
    """`arg` where both a local path and s3://bucket/prefix are taken: as given, or a one-line UserError
    when it looks like a URI but is not exactly `s3://` (S3://, s3:/b, s3a://, gs://, file:...),
    which would otherwise become a local folder named after the scheme."""
    text = os.fspath(arg)
    if is_uri(text) and not is_s3_uri(text):
        scheme, _, rest = text.partition(":")
        hint = (f" (did you mean s3://{rest.lstrip('/')}?)" if scheme.lower() in ("s3", "s3a", "s3n") and rest.strip("/")
                else "")
        raise UserError(f"{flag} {text}: expected a local path or s3://bucket/prefix (lowercase s3, two slashes){hint}")
    return text


def follow(path: Path) -> Path:
    """An output folder given as a symlink is the folder it points to: writers that build beside the
    target and rename it into place must replace the folder, not the link."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def local_path(arg: str | os.PathLike, flag: str, command: str, instead: str, what: str = "writes a local folder") -> Path:
    """`arg` as a local Path (a symlink followed, see `follow`), or a one-line UserError when it is a
    URI this command cannot use: `--out s3://b/x: dlrm synth writes a local folder; <instead>`."""
    if is_uri(str(arg)):
        raise UserError(f"{flag} {arg}: {command} {what}; {instead}")
    return follow(Path(arg))
