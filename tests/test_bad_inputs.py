"""Every row of the tables in tests/bad_inputs/*.yaml, run as a real subprocess of `python -m dlrm|launcher`.

Each bad input must end the command with a non-zero exit code and ONE line on stderr,
"error: <what and where>", no Python traceback (unless --debug), and no partial output that a
later step could take for complete. The table is data: add a row there, not a test here; add a
recipe to SETUPS (tests/bad_input_setups.py) only when no existing one can build the input.
"""
from __future__ import annotations

import contextlib
import glob
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bad_input_setups import SETUPS, TIMEOUT_S, Ctx
import bad_input_setups_issue28  # noqa: F401 (adds its recipes to SETUPS)
from forkrun import ForkRunner

ROOT = Path(__file__).resolve().parents[1]
TABLES = Path(__file__).with_name("bad_inputs")  # one file per area; ids are unique across all
ROW_KEYS = {"id", "what", "setup", "args", "argv", "env", "fsize", "rc", "error", "absent", "xfail"}
REQUIRED = {"id", "what", "setup", "argv", "rc", "error"}


def load_table() -> list[dict]:
    rows = []
    for table in sorted(TABLES.glob("*.yaml")):
        rows += yaml.safe_load(table.read_text()) or []
    return rows


# -- running a row ------------------------------------------------------------------------------------


def base_env(tmp: Path) -> dict:
    """This environment without anything that could reach real credentials or clusters."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "KUBERNETES_")) and k not in ("KUBECONFIG", "DLRM_DEBUG")}
    empty = tmp / "empty-aws-config"
    empty.write_text("")
    env.update(AWS_SHARED_CREDENTIALS_FILE=str(empty), AWS_CONFIG_FILE=str(empty), AWS_EC2_METADATA_DISABLED="true",
               KUBECONFIG=str(tmp / "no-kubeconfig"), CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT),
               DLRM_K8S_CONNECT_TIMEOUT="5")
    return env


def fill(text: str, values: dict) -> str:
    """Replace {name} placeholders the setup defined; any other braces (JSON, YAML) stay as they are."""
    return re.sub(r"\{([a-z_]+)\}", lambda m: values.get(m[1], m[0]), text)


def limit_file_size(size: int):
    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    return preexec


@pytest.fixture(scope="session")
def runner(tmp_path_factory):
    """The rows' commands: forked from a server that imported torch once (tests/forkrun.py), or real
    subprocesses with FORKRUN=0 (test_rows_run_alike_forked_and_as_subprocesses checks they agree)."""
    if os.environ.get("FORKRUN") == "0":
        yield None
        return
    server = ForkRunner().start(base_env(tmp_path_factory.mktemp("forkrun")))
    yield server
    server.close()


def run_row(row: dict, tmp: Path, runner: ForkRunner | None, extra_args: list[str] = ()) -> tuple[subprocess.CompletedProcess, Ctx]:
    """Build the row's setup, run its command; returns the result and the setup (checks in ctx.after)."""
    stack = contextlib.ExitStack()
    ctx = Ctx(tmp=tmp, stack=stack, values={"tmp": str(tmp)})
    try:
        SETUPS[row["setup"]](ctx, row.get("args") or {})
        argv = [sys.executable if a == "python" else fill(str(a), ctx.values) for a in row["argv"]]
        argv[3:3] = list(extra_args)  # after `python -m dlrm|launcher`
        env = base_env(tmp)
        env.update(ctx.env)
        for k, v in (row.get("env") or {}).items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = fill(str(v), ctx.values)
        if runner is not None:
            result = runner.run(argv, cwd=tmp, env=env, timeout=TIMEOUT_S, fsize=row.get("fsize"))
        else:
            preexec = limit_file_size(row["fsize"]) if row.get("fsize") else None
            result = subprocess.run(argv, cwd=tmp, env=env, capture_output=True, text=True, timeout=TIMEOUT_S,
                                    preexec_fn=preexec)
        for check in ctx.after:
            check()
    finally:
        stack.close()
    return result, ctx


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def params():
    out = []
    for row in load_table():
        marks = [pytest.mark.xfail(reason=row["xfail"], strict=True)] if row.get("xfail") else []
        out.append(pytest.param(row, id=row["id"], marks=marks))
    return out


# -- tests --------------------------------------------------------------------------------------------


def test_table_is_well_formed():
    rows = load_table()
    assert len(rows) >= 30
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "duplicate ids"
    for r in rows:
        assert REQUIRED <= set(r), f"{r.get('id')}: missing {REQUIRED - set(r)}"
        assert set(r) <= ROW_KEYS, f"{r['id']}: unknown keys {set(r) - ROW_KEYS}"
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", r["id"]), r["id"]
        assert r["setup"] in SETUPS, f"{r['id']}: no setup recipe {r['setup']!r}"
        assert r["argv"][:2] == ["python", "-m"] and r["argv"][2] in ("dlrm", "launcher"), r["id"]
        assert isinstance(r["rc"], int) and r["rc"] != 0, f"{r['id']}: rc must be non-zero"
        re.compile(r["error"])


@pytest.mark.parametrize("row", params())
def test_bad_input(row, tmp_path, runner):
    result, ctx = run_row(row, tmp_path, runner)
    where = f"\n--- argv: {row['argv']}\n--- stdout:\n{result.stdout[-2000:]}\n--- stderr:\n{result.stderr[-4000:]}"
    assert "Traceback" not in result.stderr, "a Python traceback instead of a one-line error" + where
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, "nothing on stderr" + where
    last = lines[-1]
    assert last.startswith("error: "), "stderr's last line is not 'error: ...'" + where
    assert len(error_lines(result.stderr)) == 1, "more than one error line" + where
    # One line: the message has no continuation after the error line.
    assert result.stderr.rstrip("\n").endswith(last), "the error spans several lines" + where
    assert re.search(row["error"], last), f"error does not match {row['error']!r}" + where
    assert result.returncode == row["rc"], f"exit code {result.returncode}, expected {row['rc']}" + where
    for pattern in row.get("absent") or []:
        left = glob.glob(fill(pattern, ctx.values))
        assert not left, f"partial output left behind: {left}" + where


def _row(row_id: str) -> dict:
    return next(r for r in load_table() if r["id"] == row_id)


@pytest.mark.parametrize("row_id", ["missing-feature-spec", "render-nodes-zero", "synth-disk-full"])
def test_debug_shows_traceback(row_id, tmp_path):
    """--debug: the same failure keeps its traceback, for a bug report."""
    result, _ = run_row(_row(row_id), tmp_path, None, extra_args=["--debug"])
    assert result.returncode != 0
    assert "Traceback (most recent call last)" in result.stderr, result.stderr[-3000:]


@pytest.mark.parametrize("row_id", ["truncated-numerical-bin", "render-nodes-zero", "synth-disk-full",
                                    "train-checkpoint-disk-full", "resume-other-batch-size"])
def test_rows_run_alike_forked_and_as_subprocesses(row_id, tmp_path, runner):
    """The fork server is a speed-up only: a row ends the same (exit code, error line) as a real process."""
    if runner is None:
        pytest.skip("FORKRUN=0: every row already runs as a subprocess")
    (tmp_path / "fork").mkdir()
    (tmp_path / "proc").mkdir()
    forked, _ = run_row(_row(row_id), tmp_path / "fork", runner)
    real, _ = run_row(_row(row_id), tmp_path / "proc", None)
    last = [[line for line in r.stderr.splitlines() if line.strip()][-1] for r in (forked, real)]
    assert (forked.returncode, last[0].replace("/fork/", "/")) == (real.returncode, last[1].replace("/proc/", "/"))
