"""`python -m dlrm <command>`: each command lives in its own module.

A command module exposes `add_arguments(parser)` and `main(args) -> int | None`; modules are
imported only when their command runs, so `plan` never pays for torch.distributed and
`preprocess` never pays for the model.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from dlrm.errors import UserError

COMMANDS = {
    "synth": ("dlrm.data.synth", "write a learnable synthetic dataset in the split-binary format"),
    "train": ("dlrm.train", "train (and evaluate, checkpoint) a DLRM; one process or under torchrun"),
    "eval": ("dlrm.evaluate", "evaluate a checkpoint on a dataset's test split"),
    "plan": ("dlrm.dist.plan_cli", "print the embedding sharding plan for a world size"),
    "preprocess": ("dlrm.preprocess.cli", "turn raw Criteo day files into the split-binary dataset"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m dlrm", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Only the chosen command's module is imported; the others get a placeholder parser.
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("DLRM_DEBUG") == "1"
    try:
        rc = importlib.import_module(COMMANDS[args.command][0]).main(args)
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


if __name__ == "__main__":
    sys.exit(main())
