"""`python -m launcher <command>`: render, validate and submit DLRM jobs; move datasets to and from S3.

Each command lives in a module exposing `add_arguments(parser, command)` and `main(args)` (one module
may serve several commands: `args.command` says which); only the chosen one is imported, so `render` and `validate` never import the kubernetes client.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from dlrm.errors import UserError

COMMANDS = {
    "render": ("launcher.cli_render", "render a job's Kubernetes objects as YAML (pure: no cluster)"),
    "validate": ("launcher.cli_validate", "validate rendered YAML files offline (schemas, operator rules)"),
    "submit": ("launcher.cli_cluster", "render, validate and create a job on the cluster"),
    "status": ("launcher.cli_cluster", "show a job's conditions and replica states"),
    "logs": ("launcher.cli_cluster", "print (or follow) a replica's logs"),
    "cancel": ("launcher.cli_cluster", "delete a job"),
    "list": ("launcher.cli_cluster", "list the PyTorchJobs in a namespace"),
    "run-local": ("launcher.run_local", "run a rendered PyTorchJob as local processes (CPU)"),
    "data": ("launcher.data.cli", "push, pull, verify and stage datasets on S3"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m launcher", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:
            importlib.import_module(module).add_arguments(p, name)
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
