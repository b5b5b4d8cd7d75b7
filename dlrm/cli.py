"""The shared shape of `python -m dlrm` and `python -m launcher`: lazy subcommands, one-line errors.

Each command lives in a module exposing `add_arguments(parser[, command])` and `main(args)`; only
the chosen one is imported, so `plan` never pays for torch.distributed and `render` never
imports the kubernetes client. A UserError prints as one `error: ...` line (exit 2), an OSError
(full disk, permissions) as `error: <file>: <reason>` (exit 1); `--debug` or DLRM_DEBUG=1 shows
the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from dlrm.errors import UserError


def _import(module: str):
    """The command's module; a dependency this Python lacks is one line saying which Python and what to do
    (the usual cause: `python` is the system's, not the project's venv)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if not e.name or e.name.split(".")[0] in ("dlrm", "launcher"):
            raise
        print(f"error: {sys.executable} has no module {e.name!r}, which this command needs: use the project's venv "
              f"(`make setup`, then `source .venv/bin/activate` in this shell, or call .venv/bin/python)", file=sys.stderr)
        raise SystemExit(2) from None


def run(prog: str, description: str, commands: dict[str, tuple[str, str]], argv: list[str] | None,
        pass_command: bool = False) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in commands.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:  # the others keep a bare parser: their modules are never imported
            add = _import(module).add_arguments
            add(p, name) if pass_command else add(p)
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("DLRM_DEBUG") == "1"
    try:
        rc = _import(commands[args.command][0]).main(args)
    except UserError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the environment, not the code: a full disk, a permission, a vanished file
        if debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)
