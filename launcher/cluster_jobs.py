"""Finding one of the launcher's jobs on a cluster: the cluster flags, which job APIs to try, lookup by name.

Shared by the cluster commands (launcher.cli_cluster) and `launcher results` (launcher.results), which
both name a job and must find it the same way; neither imports the other.
"""
from __future__ import annotations

import argparse


def add_cluster_arguments(p: argparse.ArgumentParser, namespace: bool = True) -> None:
    p.add_argument("--context", help="kubeconfig context (default: the current one)")
    if namespace:
        p.add_argument("-n", "--namespace", help="default: the context's namespace, else 'default'")


def job_apis(api: str | None) -> list[str]:
    """The job APIs to look in: the one named (--api), else every one the launcher renders."""
    # launcher.k8s imports the kubernetes client: only commands that talk to a cluster pay for it.
    from launcher import k8s

    return [api] if api else list(k8s.JOB_KINDS)


def find_job(cluster, name: str, apis: list[str]) -> tuple[str, dict]:
    """(api, job) for the named job, trying each API in turn. A cluster serving only one of them,
    or a Role granting only one, is fine: only when no API answers is that the error."""
    from launcher import k8s  # the kubernetes client, as above

    errors: dict[str, k8s.UserError] = {}
    for api in apis:
        try:
            return api, cluster.get_job(name, api)
        except (k8s.NotFound, k8s.NotServed, k8s.Forbidden) as e:
            errors[api] = e
    if len(errors) == 1:
        raise next(iter(errors.values()))
    if any(isinstance(e, k8s.Forbidden) for e in errors.values()):  # it may be the one we cannot read
        raise k8s.Forbidden("; ".join(str(e) for e in errors.values()))
    missing = [a for a, e in errors.items() if isinstance(e, k8s.NotFound)]
    if not missing:  # neither operator is installed
        raise k8s.NotServed("; ".join(str(e) for e in errors.values()))
    what = " or ".join(f"{k8s.plural(k8s.JOB_KINDS[a][1])}.{k8s.JOB_KINDS[a][0].rpartition('/')[0]}" for a in missing)
    raise k8s.NotFound(f"no {what} {name!r} in namespace {cluster.namespace!r}")
