"""`submit`, `status`, `logs`, `cancel`, `list`: the launcher's cluster commands.

    python -m launcher submit --profile criteo-fl15 --nodes 2 --gpus 8 [--dry-run | --server-dry-run]
    python -m launcher status dlrm --watch
    python -m launcher logs dlrm -f --replica worker --index 0
    python -m launcher cancel dlrm
    python -m launcher list

`submit` gets its job from the same function as `render` (launcher.cli_render.plan_from_args:
flags -> config -> plan -> validated objects), and with --dry-run prints exactly the objects it
would otherwise create, in the order it creates them.
The other commands work on PyTorchJobs (training operator v1) and TrainJobs (Kubeflow Trainer v2)
alike: `--api` names the kind, else the job is looked up as either.
Kubeconfig, context and namespace are found as kubectl finds them (launcher.k8s), and every API
failure arrives here already turned into a one-line UserError. With --local, status, logs, cancel
and list act on run-local jobs instead (launcher.cli_local).
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone

from dlrm.errors import UserError
from launcher import plan, trainjob
from launcher.cli_render import add_job_arguments, job_from_args, plan_from_args
from launcher.config import placeholder_fields
from launcher.cluster_jobs import add_cluster_arguments, find_job, job_apis
from launcher.render import to_yaml
from launcher.cli_local import local_cancel, local_list, local_logs, local_status
from launcher.local_jobs import LOCAL_ROOT, add_local_arguments
from launcher.results import output_of_job, run_id_of_job, status_lines

# `from launcher import k8s` stays inside the functions that talk to a cluster: it imports the
# kubernetes client, which `--help`, `submit --dry-run` and the --local commands never need.

JOB_LABEL = "training.kubeflow.org/job-name"
# Each job API's container holding the training processes (the operator's and the Trainer's names).
CONTAINER = {"pytorchjob": plan.CONTAINER, "trainjob": trainjob.NODE}
# Everything the launcher renders carries these (manifests/_helpers.j2); cancel deletes by them.
INSTANCE_LABEL = "app.kubernetes.io/instance"
MANAGED_BY = "app.kubernetes.io/managed-by=dlrm-launcher"
# Cleaned up by cancel along with the job: its config (and a dataset claim and volume rendered by an
# earlier launcher's mount mode). A TrainJob's own TrainingRuntime (rendered with it, named after it): deleted too, where Trainer is installed.
OWNED_RUNTIME = (trainjob.API_VERSION, "TrainingRuntime")
# A ServiceAccount may be shared by many jobs (cluster.service_account): finding it is not an error.
SHARED_KINDS = {"ServiceAccount"}
FINISHED = {"Succeeded", "Complete", "Failed"}  # PyTorchJob's and TrainJob's terminal conditions


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    if command == "submit":
        add_job_arguments(parser)  # the same flags as render and run-local; --namespace among them
        add_cluster_arguments(parser, namespace=False)
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--dry-run", action="store_true", help="print the YAML submit would send, and stop")
        mode.add_argument("--server-dry-run", action="store_true", help="send everything with dryRun=All: the API server checks, stores nothing")
        return
    add_cluster_arguments(parser)
    parser.add_argument("--api", choices=("pytorchjob", "trainjob"),
                        help="the job's kind: PyTorchJob or TrainJob (default: whichever exists; list shows both)")
    if command in ("status", "logs", "cancel"):
        parser.add_argument("name", help="the job's name")
    if command in ("status", "logs", "cancel"):
        add_local_arguments(parser)
    if command == "list":
        parser.add_argument("--local", action="store_true", help=f"the run-local jobs under {LOCAL_ROOT}/ instead")
    if command == "status":
        parser.add_argument("-w", "--watch", action="store_true", help="print again on every change until the job finishes")
        parser.add_argument("--interval", type=float, default=5.0, help="seconds between polls with --watch")
    if command == "logs":
        parser.add_argument("-f", "--follow", action="store_true", help="stream until the container exits")
        parser.add_argument("--node", type=int, help="node rank (0 = the master); instead of --replica/--index")
        parser.add_argument("--replica", choices=("master", "worker"), default="master")
        parser.add_argument("--index", type=int, default=0, help="which replica of that type (default 0; worker 0 is node 1)")
        parser.add_argument("--previous", action="store_true", help="the previous (restarted) container's log")
        parser.add_argument("--tail", type=int, help="only the last N lines")


def main(args: argparse.Namespace) -> int:
    return {"submit": submit, "status": status, "logs": logs, "cancel": cancel, "list": list_jobs}[args.command](args)


# ---------------------------------------------------------------------------------------------
# submit


def submit(args: argparse.Namespace) -> int:
    from launcher import k8s

    # kubectl's order: --namespace, else the context's namespace; else the config's. It is
    # resolved before rendering because it is written into the objects; --dry-run needs no kubeconfig.
    if not args.namespace:
        args.namespace = k8s.resolve_namespace(args.context, None, fallback="") or None
    objs = plan_from_args(args).objects
    placeholders = placeholder_fields(job_from_args(args))
    if placeholders and not args.dry_run:  # no cluster has them: the job would fail after scheduling
        raise UserError(f"{', '.join(placeholders)}: the profile's example buckets; set dataset / train.out to yours "
                        f"(--set dataset=s3://... --set train.out=s3://.../{{name}}, or a values file)")
    if args.dry_run:
        sys.stdout.write(to_yaml(objs))
        return 0
    job = _job_name(objs)
    namespace = next(o["metadata"]["namespace"] for o in objs if o["kind"] != "PersistentVolume")
    cluster = k8s.connect(args.context, namespace)
    _check_cluster_runtimes(cluster, objs)
    created: list[dict] = []
    verb = "accepted (server dry run: nothing stored)" if args.server_dry_run else "created"
    for obj in objs:
        kind, name = obj["kind"], obj["metadata"]["name"]
        try:
            cluster.create(obj, dry_run=args.server_dry_run)
        except k8s.AlreadyExists as e:
            if kind in SHARED_KINDS:
                print(f"{kind}/{name} exists: kept as it is")
                continue
            _roll_back(cluster, created)
            raise UserError(f"{e}: `python -m launcher cancel {job} -n {namespace}` first, or choose another --name") from None
        except UserError:
            _roll_back(cluster, created)
            raise
        print(f"{kind}/{name} {verb}")
        if not args.server_dry_run:
            created.append(obj)
    if not args.server_dry_run:
        print(f"next: python -m launcher status {job} -n {namespace} --watch; python -m launcher logs {job} -n {namespace} -f")
    return 0


def _check_cluster_runtimes(cluster, objs: list[dict]) -> None:
    """A TrainJob naming a ClusterTrainingRuntime the cluster lacks would be created and then fail
    in the controller: look it up first (a user whose Role cannot read it is only warned)."""
    from launcher import k8s

    for job in (o for o in objs if o["kind"] == "TrainJob"):
        ref = job["spec"]["runtimeRef"]
        if ref.get("kind", trainjob.DEFAULT_RUNTIME_KIND) != "ClusterTrainingRuntime":
            continue
        try:
            cluster.get(trainjob.API_VERSION, "ClusterTrainingRuntime", ref["name"])
        except k8s.NotFound:
            raise UserError(f"no ClusterTrainingRuntime {ref['name']!r} on this cluster (trainjob.cluster_runtime): "
                            f"`kubectl get clustertrainingruntimes` lists them, Trainer's Helm chart installs the stock ones "
                            f"with --set runtimes.defaultEnabled=true; or leave trainjob.cluster_runtime empty") from None
        except k8s.NotServed:
            raise
        except UserError as e:
            print(f"warning: could not check ClusterTrainingRuntime {ref['name']}: {e}", file=sys.stderr)


def _job_name(objs: list[dict]) -> str:
    return next((o["metadata"]["name"] for o in objs if o["kind"] in ("PyTorchJob", "TrainJob", "Job", "SparkApplication")),
                objs[-1]["metadata"]["name"])


def _roll_back(cluster, created: list[dict]) -> None:
    """Delete, newest first, what this submit created before failing: no half-submitted jobs."""
    for obj in reversed(created):
        try:
            cluster.delete(obj, propagation="Background")
            print(f"{obj['kind']}/{obj['metadata']['name']} deleted again (rolling back)", file=sys.stderr)
        except UserError as e:
            print(f"warning: could not roll back {obj['kind']}/{obj['metadata']['name']}: {e}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# status, list


def _age(timestamp: str | None) -> str:
    if not timestamp:
        return "-"
    seconds = int((datetime.now(timezone.utc) - datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def job_state(job: dict) -> str:
    """The controller's state: the type of the latest True condition (PyTorchJob: Created, Running,
    Restarting, Succeeded, Failed; TrainJob: Suspended, Complete, Failed). A TrainJob has no
    Running condition: its child Jobs' counts say whether it runs."""
    conditions = [c for c in (job.get("status") or {}).get("conditions") or [] if c.get("status") == "True"]
    if job.get("metadata", {}).get("deletionTimestamp"):
        return "Deleting"
    if conditions:
        return conditions[-1]["type"]
    jobs = (job.get("status") or {}).get("jobsStatus") or []
    return "Running" if any(j.get("active") or j.get("ready") for j in jobs) else "Pending"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)


def describe(job: dict, pods: list[dict], ages: bool = True) -> str:
    """Job state, conditions, replica (or child Job) counts and pods as text; ages=False for change detection."""
    age = _age if ages else (lambda t: "")
    meta, st = job["metadata"], job.get("status") or {}
    out = [f"{job.get('kind', 'PyTorchJob')} {meta['name']} (namespace {meta.get('namespace', '?')}, "
           f"age {age(meta.get('creationTimestamp'))}): {job_state(job)}"]
    conditions = st.get("conditions") or []
    if conditions:
        rows = [["TYPE", "STATUS", "REASON", "LAST TRANSITION", "MESSAGE"]]
        rows += [[c.get("type", ""), c.get("status", ""), c.get("reason", ""),
                  f"{c['lastTransitionTime']} ({age(c['lastTransitionTime'])} ago)" if c.get("lastTransitionTime") else "-",
                  c.get("message", "")] for c in conditions]
        out += ["", _table(rows)]
    replicas = st.get("replicaStatuses") or {}
    if replicas:
        rows = [["REPLICA", "ACTIVE", "SUCCEEDED", "FAILED"]]
        rows += [[r, s.get("active", 0), s.get("succeeded", 0), s.get("failed", 0)] for r, s in sorted(replicas.items())]
        out += ["", _table(rows)]
    jobs = st.get("jobsStatus") or []
    if jobs:
        keys = ("ready", "active", "succeeded", "failed", "suspended")
        rows = [["JOB", *(k.upper() for k in keys)]]
        rows += [[j.get("name", "?"), *(j.get(k, 0) for k in keys)] for j in jobs]
        out += ["", _table(rows)]
    if pods:
        rows = [["POD", "PHASE", "RESTARTS", "NODE", "AGE"]]
        for p in sorted(pods, key=lambda p: p["metadata"]["name"]):
            statuses = (p.get("status") or {}).get("containerStatuses") or []
            rows.append([p["metadata"]["name"], (p.get("status") or {}).get("phase", "?"),
                         sum(s.get("restartCount", 0) for s in statuses), (p.get("spec") or {}).get("nodeName", "-"),
                         age(p["metadata"].get("creationTimestamp"))])
        out += ["", _table(rows)]
    else:
        out += ["", "no pods yet"]
    return "\n".join(out)


def _apis(args: argparse.Namespace) -> list[str]:
    return job_apis(args.api)


def pod_selector(api: str, name: str) -> str:
    return f"{JOB_LABEL}={name}" if api == "pytorchjob" else f"{trainjob.JOBSET_NAME_LABEL}={name}"


def status(args: argparse.Namespace) -> int:
    from launcher import k8s
    if args.local:
        return local_status(args)
    cluster = k8s.connect(args.context, args.namespace)
    api, _ = find_job(cluster, args.name, _apis(args))
    last = None
    while True:
        job = cluster.get_job(args.name, api)
        pods = cluster.list_pods(pod_selector(api, args.name))
        def run(ages: bool, job=job) -> str:  # the trainer's status in the TrainJob, then the run's own numbers
            return "\n\n" + "\n".join(trainjob.trainer_status_lines(job) + status_lines(output_of_job(job), ages, run_id_of_job(job)))
        key = describe(job, pods, ages=False) + run(False)  # ages tick every second: not a change worth printing
        if key != last:
            text = describe(job, pods) + run(True)
            print(text if last is None else f"\n--- {datetime.now().strftime('%H:%M:%S')}\n{text}", flush=True)
            last = key
        state = job_state(job)
        if not args.watch or state in FINISHED:
            return 1 if state == "Failed" else 0
        time.sleep(args.interval)


def list_jobs(args: argparse.Namespace) -> int:
    from launcher import k8s

    if args.local:
        return local_list(args)

    cluster = k8s.connect(args.context, args.namespace)
    jobs, unserved = [], []
    for api in _apis(args):
        try:
            jobs += cluster.list_jobs(api)
        except (k8s.NotServed, k8s.Forbidden) as e:
            if args.api:
                raise
            unserved.append(e)
    if len(unserved) == len(_apis(args)):
        raise next((e for e in unserved if isinstance(e, k8s.Forbidden)), None) or UserError("; ".join(str(e) for e in unserved))
    if not jobs:
        print(f"no {' or '.join(k8s.JOB_KINDS[a][1] + 's' for a in _apis(args))} in namespace {cluster.namespace}")
        return 0
    rows = [["NAME", "KIND", "STATE", "AGE"]]
    rows += [[j["metadata"]["name"], j.get("kind", "?"), job_state(j), _age(j["metadata"].get("creationTimestamp"))]
             for j in sorted(jobs, key=lambda j: j["metadata"].get("creationTimestamp", ""))]
    print(_table(rows))
    return 0


# ---------------------------------------------------------------------------------------------
# logs, cancel


def logs(args: argparse.Namespace) -> int:
    from launcher import k8s

    if args.local:
        return local_logs(args)
    cluster = k8s.connect(args.context, args.namespace)
    api = args.api or find_job(cluster, args.name, _apis(args))[0]
    rank = args.node if args.node is not None else (0 if args.replica == "master" else args.index + 1)
    if rank < 0:
        raise UserError(f"--node {rank}: a node rank is >= 0")
    if api == "pytorchjob":
        rtype, index = ("master", 0) if rank == 0 else ("worker", rank - 1)
        selector = f"{JOB_LABEL}={args.name},training.kubeflow.org/replica-type={rtype},training.kubeflow.org/replica-index={index}"
        which = f"{rtype} {index}"
    else:
        selector, which = trainjob.pod_selector(args.name, rank), f"node {rank}"
    pods = cluster.list_pods(selector)
    if not pods:
        raise UserError(f"no pod for {which} of job {args.name} in namespace {cluster.namespace} "
                        f"(yet?): `python -m launcher status {args.name} -n {cluster.namespace}` says why")
    pod = sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""))[-1]["metadata"]["name"]
    for chunk in cluster.pod_log(pod, CONTAINER[api], follow=args.follow, previous=args.previous, tail_lines=args.tail):
        sys.stdout.write(chunk)
        sys.stdout.flush()
    return 0


def cancel(args: argparse.Namespace) -> int:
    """Delete the job (foreground: its pods go first), then what submit created for it."""
    from launcher import k8s

    if args.local:
        return local_cancel(args)

    cluster = k8s.connect(args.context, args.namespace)
    found = False
    try:
        _, job = find_job(cluster, args.name, _apis(args))
        cluster.delete(job)
        print(f"{job['kind']}/{args.name} deleted (its pods terminate first)")
        found = True
    except (k8s.NotFound, k8s.NotServed):
        print(f"job {args.name} not found in namespace {cluster.namespace}; removing what is left of it")
    selector = f"{INSTANCE_LABEL}={args.name},{MANAGED_BY}"
    deleted = {"ConfigMap": _delete_all(cluster, "v1", "ConfigMap", selector)}
    # A Role without them (the admin bundle's: the dataset's claim and the runtime are the admin's) has no
    # claims or TrainingRuntimes of ours to leave behind; nor has a cluster without Trainer TrainingRuntimes.
    for api_version, kind in (("v1", "PersistentVolumeClaim"), OWNED_RUNTIME):
        try:
            deleted[kind] = _delete_all(cluster, api_version, kind, selector)
        except (k8s.NotServed, k8s.Forbidden):
            deleted[kind] = 0
    if deleted["PersistentVolumeClaim"]:
        # The mount mode's static PV is cluster-scoped: listing it may need more than the minimal Role.
        try:
            _delete_all(cluster, "v1", "PersistentVolume", selector)
        except UserError as e:
            print(f"warning: the job's PersistentVolume was left: {e}", file=sys.stderr)
    if not found and not any(deleted.values()):
        raise UserError(f"nothing named {args.name} in namespace {cluster.namespace}: `python -m launcher list -n {cluster.namespace}`")
    return 0


def _delete_all(cluster, api_version: str, kind: str, selector: str) -> int:
    from launcher import k8s

    count = 0
    for obj in cluster.list(api_version, kind, selector):
        obj.setdefault("apiVersion", api_version)  # list items may come without it
        obj.setdefault("kind", kind)
        try:
            cluster.delete(obj, propagation="Background")
            print(f"{kind}/{obj['metadata']['name']} deleted")
            count += 1
        except k8s.NotFound:  # deleted meanwhile
            pass
    return count
