"""What images/test-images.sh asks the launcher, as commands: the Python lives here, not inline in the
shell script, so ruff and tests/test_imports.py see it and a moved name breaks `make test`, not CI's
image build minutes later.

    python images/image_facts.py entrypoint train|preprocess     # the ENTRYPOINT, as docker inspect prints it
    python images/image_facts.py check-entrypoint RENDERED.yaml JSON   # every replica's command starts with it
    python images/image_facts.py preprocess-args ENGINE [ARG...] # the preprocess job's arguments, NUL-separated
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from launcher import command
from launcher.decode import load_plan_file

IMAGE_COMMANDS = {"train": command.TRAIN_COMMAND, "preprocess": command.PREPROCESS_COMMAND}


def entrypoint(image: str) -> str:
    """The image's ENTRYPOINT as `docker image inspect --format '{{json .Config.Entrypoint}}'` prints it."""
    return json.dumps(IMAGE_COMMANDS[image], separators=(",", ":"))


def entrypoint_mismatches(rendered: Path, image_entrypoint: list[str]) -> list[str]:
    """One line per replica group whose container command does not start with the image's ENTRYPOINT
    (an empty command runs the ENTRYPOINT itself, as Kubernetes does)."""
    plan = load_plan_file(rendered)
    bad = []
    for g in plan.groups:
        cmd = g.pod.main.command or image_entrypoint
        if cmd[: len(image_entrypoint)] != image_entrypoint:
            bad.append(f"{g.role}: rendered command {cmd} does not start with the image ENTRYPOINT {image_entrypoint}")
    return bad


def preprocess_args(engine: str, extra: list[str]) -> list[str]:
    """The arguments the rendered preprocess job gives the preprocess image, for the test's mounts."""
    return command.preprocess_args(command.PREPROCESS_INPUT, command.PREPROCESS_OUTPUT, frequency_threshold=1,
                                   engine=engine) + extra


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    sub.add_parser("entrypoint").add_argument("image", choices=sorted(IMAGE_COMMANDS))
    check = sub.add_parser("check-entrypoint")
    check.add_argument("rendered", type=Path)
    check.add_argument("entrypoint", help="the built image's ENTRYPOINT as JSON")
    pre = sub.add_parser("preprocess-args")
    pre.add_argument("engine")
    pre.add_argument("extra", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    if args.what == "entrypoint":
        print(entrypoint(args.image))
    elif args.what == "check-entrypoint":
        bad = entrypoint_mismatches(args.rendered, json.loads(args.entrypoint))
        if bad:
            sys.exit("\n".join(bad))
    else:
        sys.stdout.write("".join(a + "\0" for a in preprocess_args(args.engine, args.extra)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
