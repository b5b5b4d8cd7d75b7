"""Config -> job plan: replicas, the pod each runs, run policy. The only place a job is derived from a config.

    plan = build_plan(cfg, git_revision="abc123")    # launcher.plan.JobPlan, no objects yet

launcher.encode.plan_job adds the Kubernetes objects that encode the plan for the config's job API.
"""
from __future__ import annotations

from launcher import pods, trainjob
from launcher.config import check_plan
from launcher.plan import NODE_ROLE, JobPlan, ReplicaGroup, RunPolicy


def build_plan(cfg, git_revision: str = "unknown", tables: list[int] | None = None,
               hotness: list[int] | None = None) -> JobPlan:
    """The plan for a validated JobConfig: replicas, pod, run policy (its `objects` still empty).

    `tables` (and their `hotness`, ids per row) are the embedding tables when the caller read them
    from a declared feature spec (--feature-spec); else the config's `train_tables` are used for
    the embedding plan check.
    """
    cfg.validate()
    if cfg.kind == "train":
        check_plan(cfg, tables, hotness)
    plan = JobPlan(name=cfg.name, namespace=cfg.namespace, kind=cfg.kind, nproc_per_node=cfg.gpus_per_node,
                   run_policy=RunPolicy(cfg.cluster.backoff_limit, cfg.cluster.active_deadline_seconds or None))
    if cfg.kind == "train" and cfg.api == "trainjob":
        # JobSet restarts the whole job on any failure, up to failurePolicy.maxRestarts (= backoff_limit).
        plan.api, plan.master_port = "trainjob", trainjob.MASTER_PORT
        plan.groups = [ReplicaGroup(NODE_ROLE, cfg.nodes, "OnFailure", pods.train_pod(cfg, git_revision))]
    elif cfg.kind == "train":
        pod = pods.train_pod(cfg, git_revision)
        plan.groups = [ReplicaGroup("Master", 1, "OnFailure", pod)]
        if cfg.nodes > 1:
            plan.groups.append(ReplicaGroup("Worker", cfg.nodes - 1, "OnFailure", pod))
    if cfg.kind == "train" and cfg.export:  # either job API: the export Job only follows the run's files
        plan.export = pods.export_pod(cfg)
    return plan
