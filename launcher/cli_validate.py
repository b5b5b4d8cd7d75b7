"""`python -m launcher validate FILES... [--crd FILE] [--runtime FILE] [--trainer-version 2.3|2.4]`: offline checks,
all errors at once.

Exit 0 when every object in every file is valid; else each error on its own line (with its file,
object and path) and exit 1.
"""
from __future__ import annotations

import argparse
import sys

from launcher import trainjob
from launcher.validate import load_objects, validate_objects


def add_arguments(p: argparse.ArgumentParser, command: str = "validate") -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="YAML files (multi-document allowed), e.g. render --out output")
    p.add_argument("--crd", metavar="FILE", help="check the objects of the kind this CRD defines against its openAPIV3Schema: "
                                                 "PyTorchJobs instead of the vendored upstream CRD (e.g. the version installed on "
                                                 "your cluster), or TrainJobs (Trainer's trainer.kubeflow.org_trainjobs.yaml)")
    p.add_argument("--runtime", action="append", default=[], metavar="FILE",
                   help="a (Cluster)TrainingRuntime on the cluster, e.g. the admin bundle's: TrainJobs referencing it are "
                        "checked against it as Trainer would build their pods (runtime patches applied); repeatable")
    p.add_argument("--trainer-version", choices=trainjob.TRAINER_VERSIONS, default=trainjob.DEFAULT_TRAINER_VERSION,
                   help="apply this Kubeflow Trainer release's admission rules to TrainJobs and runtimes "
                        "(default %(default)s; 2.4 limits a runtime's replicated job names to 20 characters)")


def main(args: argparse.Namespace) -> int:
    errors, count = [], 0
    runtimes = [o for _, objs in load_objects(args.runtime) for o in objs
                if isinstance(o, dict) and o.get("kind") in trainjob.RUNTIME_KINDS]
    if args.runtime and not runtimes:
        errors.append(f"--runtime {', '.join(args.runtime)}: no TrainingRuntime or ClusterTrainingRuntime in it")
    for path, objs in load_objects(args.files):
        count += len(objs)
        if not objs:  # kubectl apply refuses it too: an emptied or cut-short file is no job
            errors.append(f"{path}: no Kubernetes objects in the file")
        errors += [f"{path}: {e}" for e in validate_objects(objs, crd=args.crd, trainer_version=args.trainer_version,
                                                                       runtimes=runtimes)]
    for e in errors:
        print(e, file=sys.stderr)
    print(f"{count} objects in {len(args.files)} files: " + (f"{len(errors)} errors" if errors else "valid"))
    return 1 if errors else 0
