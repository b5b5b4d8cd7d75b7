"""`python -m dlrm <command>`: each command lives in its own module.

A command module exposes `add_arguments(parser)` and `main(args) -> int | None`; modules are
imported only when their command runs, so `plan` never pays for torch.distributed and
`preprocess` never pays for the model.
"""
from __future__ import annotations

import sys

from dlrm.cli import run

COMMANDS = {
    "synth": ("dlrm.data.synth", "write a learnable synthetic dataset in the split-binary format"),
    "synth-raw": ("dlrm.preprocess.gen", "write raw Criteo-format day files (TSV), small, to try preprocess on"),
    "train": ("dlrm.training.train", "train (and evaluate, checkpoint) a DLRM; one process or under torchrun"),
    "eval": ("dlrm.training.evaluate", "evaluate a checkpoint on a dataset's test split"),
    "export": ("dlrm.serving.export", "export a checkpoint as a torch.export program and AOTInductor packages for serving"),
    "export-dcp": ("dlrm.io.dcp_export", "write a checkpoint (any world size) as a torch.distributed.checkpoint one"),
    "predict": ("dlrm.serving.predict", "score a dataset split with an exported model alone (no training code)"),
    "plan": ("dlrm.dist.plan_cli", "print the embedding sharding plan for a world size"),
    "preprocess": ("dlrm.preprocess.cli", "turn raw Criteo day files into the split-binary dataset"),
}


def main(argv: list[str] | None = None) -> int:
    return run("python -m dlrm", __doc__.splitlines()[0], COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
