"""The shared shape of `python -m dlrm` and `python -m launcher`: lazy subcommands, one-line errors.

Each command lives in a module exposing `add_arguments(parser[, command])` and `main(args)`; only
the chosen one is imported, so `plan` never pays for torch.distributed and `render` never
imports the kubernetes client. A UserError prints as one `error: ...` line (exit 2), an OSError
(full disk, permissions) as `error: <file>: <reason>` (exit 1); `--debug` or DLRM_DEBUG=1 shows
the traceback instead.

Both CLIs parse with `Parser` (subcommands inherit it): a usage mistake is one `error:` line, and every
`type=int` / `type=float` flag is checked by class: no flag of either CLI means a negative count, size
or time, nor a NaN or infinite one (`--tail -2`, `--index -1`, `--interval nan`, `--scale 1e400`).
"""
from __future__ import annotations

import argparse
import importlib
import math
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


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _amount(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not math.isfinite(value) or value < 0:  # nan compares false: checked first
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


class Parser(argparse.ArgumentParser):
    """argparse for both CLIs: `type=int` means a count (>= 0), `type=float` a finite amount (>= 0),
    through argparse's type registry, so argument groups and subcommands get the same rule; an error
    is one line (argparse prints the usage first, two lines where a log shows one)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register("type", int, _count)
        self.register("type", float, _amount)

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (usage: {self.prog} --help)\n")


def run(prog: str, description: str, commands: dict[str, tuple[str, str]], argv: list[str] | None,
        pass_command: bool = False) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = Parser(prog=prog, description=description)
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
