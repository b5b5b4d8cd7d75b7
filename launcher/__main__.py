"""`python -m launcher <command>`: render, validate and submit DLRM jobs; move datasets to and from S3.

Each command lives in a module exposing `add_arguments(parser, command)` and `main(args)` (one module
may serve several commands: `args.command` says which); only the chosen one is imported, so `render` and `validate`
never import the kubernetes client.
"""
from __future__ import annotations

import sys

from dlrm.cli import run

COMMANDS = {
    "render": ("launcher.cli_render", "render a job's Kubernetes objects as YAML (pure: no cluster)"),
    "validate": ("launcher.cli_validate", "validate rendered YAML files offline (schemas, operator rules)"),
    "submit": ("launcher.cli_cluster", "render, validate and create a job on the cluster"),
    "status": ("launcher.cli_cluster", "show a job's conditions and replica states"),
    "logs": ("launcher.cli_cluster", "print (or follow) a replica's logs"),
    "cancel": ("launcher.cli_cluster", "delete a job (--local: stop a run-local job)"),
    "list": ("launcher.cli_cluster", "list the PyTorchJobs and TrainJobs in a namespace (--local: the run-local jobs)"),
    "results": ("launcher.results", "download a run's config, metrics, plot, TensorBoard events and run record"),
    "run-local": ("launcher.run_local", "run a rendered PyTorchJob or TrainJob as local processes (CPU)"),
    "data": ("launcher.data.cli", "push, pull, verify and stage datasets on S3"),
    "admin": ("launcher.admin", "write the cluster admin's bundle (ClusterTrainingRuntime, RBAC, ...) as a kustomize base"),
}


def main(argv: list[str] | None = None) -> int:
    return run("python -m launcher", __doc__.splitlines()[0], COMMANDS, argv, pass_command=True)


if __name__ == "__main__":
    sys.exit(main())
