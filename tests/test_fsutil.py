"""dlrm.io.fsutil: the one atomic write, the one bounded YAML loader, the one s3:// parser."""
from __future__ import annotations

import pytest

from dlrm.errors import ConfigError, UserError
from dlrm.io.fsutil import atomic_path, atomic_write, is_s3_uri, load_yaml, load_yaml_file, load_yaml_file_all, parse_s3_uri

BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    atomic_write(target, "one")
    atomic_write(target, b"two")
    assert target.read_text() == "two" and sorted(p.name for p in target.parent.iterdir()) == ["f.txt"]


def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_the_temp_name_carries_the_callers_tag(tmp_path):
    with atomic_path(tmp_path / "m.json", tag=".dlrm-partial") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".m.json.") and tmp.name.endswith(".dlrm-partial")
        tmp.write_text("{}")


def test_alias_bombs_are_refused_before_expansion(tmp_path):
    with pytest.raises(ConfigError, match="aliases expand to more than"):
        load_yaml(BOMB, "bomb.yaml")
    assert load_yaml("a: &x [1, 2]\nb: *x\n") == {"a": [1, 2], "b": [1, 2]}  # small aliases are fine
    path = tmp_path / "bomb.yaml"
    path.write_text("--- {}\n---\n" + BOMB)
    with pytest.raises(UserError, match=r"bomb\.yaml: .*aliases expand"):
        load_yaml_file_all(path, error=UserError)


@pytest.mark.parametrize("text,fragment", [("a: [1\n", "f.yaml: line 2 column 1: is not valid YAML"),
                                           ("!!python/object:os.system {}\n", "is not valid YAML"),
                                           ("\xff", "not UTF-8")])
def test_yaml_errors_are_one_line_with_file_and_line(tmp_path, text, fragment):
    path = tmp_path / "f.yaml"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ConfigError) as e:
        load_yaml_file(path)
    assert fragment in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="no such"):
        load_yaml_file(tmp_path / "missing.yaml")


@pytest.mark.parametrize("uri,parsed", [("s3://b/a/b/", ("b", "a/b")), ("s3://b", ("b", "")), ("s3://b//x", ("b", "x"))])
def test_parse_s3_uri(uri, parsed):
    assert is_s3_uri(uri) and parse_s3_uri(uri) == parsed


@pytest.mark.parametrize("uri", ["/data/x", "s3://", "s3:///prefix", "s3://b/a\nb", "S3://b/x"])
def test_parse_s3_uri_refuses(uri):
    with pytest.raises(UserError):
        parse_s3_uri(uri)


def test_atomic_write_gives_a_plain_files_mode(tmp_path):
    """mkstemp's 0600 must not leak: a container's uid 1000 reads a config that root wrote."""
    import os
    import stat

    from dlrm.io.fsutil import _UMASK

    new = atomic_write(tmp_path / "new.yaml", "a: 1\n")
    assert stat.S_IMODE(new.stat().st_mode) == 0o666 & ~_UMASK
    old = tmp_path / "old.sh"
    old.write_text("x")
    os.chmod(old, 0o750)
    atomic_write(old, "y")
    assert stat.S_IMODE(old.stat().st_mode) == 0o750
