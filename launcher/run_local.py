"""`run-local`: run a job plan as local processes, the way its controller (the training operator for a
PyTorchJob, Kubeflow Trainer and JobSet for a TrainJob) would run its pods.

    python -m launcher run-local --profile synthetic-smoke --nodes 2 --gpus 2
    python -m launcher run-local job.yaml --workdir runs/local --volume dataset=data/synthetic
    rc = run_job(plan_or_objects_or_path, workdir)   # or LocalJob(...).run(), .pids(), .stop()

The job is a `launcher.plan.JobPlan` (made from the flags by the same function `render` and
`submit` use, or decoded from a rendered file). Each replica (Master = node rank 0, Worker i =
node rank i+1) becomes one process running the `pytorch` container's command, after its init
containers, with the env the operator injects (`JobPlan.replica_env`) pointed at 127.0.0.1 and
CUDA hidden, so torch uses CPU and gloo. Volumes become folders (launcher.local_steps): emptyDir
per replica, and empty again for each run-local of the job, as a new pod's is; PVCs and hostPaths
are folders every replica shares. A second run-local of a job still running in its workdir is refused.

A failed replica kills the others; restartPolicy OnFailure (or ExitCode with a retryable code)
restarts the whole job, up to runPolicy.backoffLimit times, as the operator does; a TrainJob's
failed node restarts the whole job up to its JobSet failurePolicy.maxRestarts times, as JobSet does.
SIGTERM, SIGINT or SIGHUP to run-local (`launcher cancel --local NAME`, Ctrl-C, `timeout`, a closed
terminal) stops the replicas as the kubelet stops a deleted pod: SIGTERM, the pods'
terminationGracePeriodSeconds (30 s unless set), then SIGKILL; each replica runs in a session of its
own, so only run-local can stop it, and it does on each of these signals. A job needing more processes
than this machine can run (`max_local_processes`) is refused before anything starts.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from dlrm.errors import UserError
from launcher import podblock
from dlrm.io.fsutil import load_yaml_file_all
from launcher.decode import load_plan_file, plan_from_objects
from launcher.trainjob import image_errors
from launcher.local_jobs import (LOGS, PODS, RUNNING, LocalJobRecord, error_line, live_replicas, local_workdir,
                                 output_of_argv, process_id, run_id_of_argv)
from launcher.local_steps import (COMMAND_MAP, Step, container_env, expand_vars, mount_rewriter,  # noqa: F401 (API)
                                  plan_steps, volume_folders)
from launcher.plan import JobPlan, Replica
from launcher.procs import exit_code as _exit_code, free_port, kill_tree, process_tree  # noqa: F401 (API)

K8S_GRACE_S = 30  # Kubernetes' terminationGracePeriodSeconds when the pod spec sets none
RETRYABLE_EXIT_CODES = {130, 137, 138, 143}  # the operator's ExitCode policy: SIGINT, SIGKILL, SIGUSR1, SIGTERM
# Inherited variables that would confuse a nested torch.distributed run.
SCRUB_ENV = re.compile(r"^(RANK|LOCAL_RANK|WORLD_SIZE|LOCAL_WORLD_SIZE|GROUP_RANK|MASTER_ADDR|MASTER_PORT|PET_\w+|TORCHELASTIC_\w+)$")


LOCAL_PROCESS_BYTES = 256 << 20  # the least a torchrun agent or a trainer (torch imported) holds
PROCESSES_PER_CPU = 8


def max_local_processes() -> tuple[int, str]:
    """How many processes (torchrun agents and trainers) this machine can run for one job, and why."""
    from dlrm.dist.hostmem import host_memory_available

    cpus = os.cpu_count() or 1
    limit, why = cpus * PROCESSES_PER_CPU, f"{cpus} CPU(s) x {PROCESSES_PER_CPU}"
    available = host_memory_available()
    if available is not None and available // LOCAL_PROCESS_BYTES < limit:
        limit, why = available // LOCAL_PROCESS_BYTES, (f"{available / (1 << 30):.1f} GiB available at "
                                                         f"{LOCAL_PROCESS_BYTES >> 20} MiB each")
    return max(limit, 2), why


def termination_grace_s(plan: JobPlan) -> float:
    """The pods' terminationGracePeriodSeconds (the longest, where templates differ), else Kubernetes' default."""
    def find(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "terminationGracePeriodSeconds" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    yield v
                else:
                    yield from find(v)
        elif isinstance(node, list):
            for v in node:
                yield from find(v)
    return float(max(find(plan.objects), default=K8S_GRACE_S))


def as_plan(job) -> JobPlan:
    """A JobPlan, a rendered YAML file, or an already-parsed list of objects, as a plan."""
    if isinstance(job, JobPlan):
        return job
    if isinstance(job, (str, Path)):
        return load_plan_file(job)
    return plan_from_objects(list(job))


# ---------------------------------------------------------------------------------------------
# Running: one process (tree) per replica, supervised as the operator would.


class LocalJob:
    """One PyTorchJob or TrainJob run locally. `run()` blocks; `pids()` and `stop()` may be called from other threads."""

    def __init__(self, job, workdir: str | Path, *, volumes: dict[str, str | Path] | None = None,
                 max_restarts: int | None = None, out: TextIO | None = None, grace_s: float | None = None):
        self.plan = as_plan(job)
        if self.plan.kind != "train" or not self.plan.groups:
            raise UserError(f"job {self.plan.name}: run-local runs training jobs (a PyTorchJob or TrainJob); "
                            f"kind={self.plan.kind} has no replicas to run")
        self.name = self.plan.name
        need, (limit, why) = self.plan.nnodes * (self.plan.nproc_per_node + 1), max_local_processes()
        if need > limit:
            raise UserError(f"job {self.name}: {self.plan.nnodes:,} node(s) x {self.plan.nproc_per_node} process(es) is "
                            f"{need:,} processes here (a torchrun agent per node and its trainers); this machine runs at "
                            f"most {limit:,} ({why}): lower --nodes/--gpus (numNodes, nprocPerNode, replicas)")
        self.workdir = Path(workdir).resolve()
        self.replicas = self.plan.replicas
        self.volumes = {k: Path(v).resolve() for k, v in (volumes or {}).items()}
        known = {v.name for g in self.plan.groups for v in g.pod.volumes}
        if set(self.volumes) - known:
            raise UserError(f"--volume {sorted(set(self.volumes) - known)[0]}: the pods have no such volume "
                            f"(they have: {', '.join(sorted(known)) or 'none'})")
        # Unset backoffLimit means "retry forever" to the operator; locally that would loop on a bug.
        self.max_restarts = max_restarts if max_restarts is not None else int(self.plan.run_policy.backoff_limit or 0)
        self.deadline_s = self.plan.run_policy.active_deadline_seconds
        # Where the job says so, for messages: the operator's run policy, or the TrainJob and its JobSet.
        self.limit_field, self.deadline_field = (("failurePolicy.maxRestarts", "spec.activeDeadlineSeconds") if self.plan.api == "trainjob"
                                                 else ("runPolicy.backoffLimit", "runPolicy.activeDeadlineSeconds"))
        self.out = out or sys.stdout
        # What the kubelet gives a pod being deleted: SIGTERM, this long, then SIGKILL.
        self.grace_s = grace_s if grace_s is not None else termination_grace_s(self.plan)
        self.restarts = 0
        self._record = LocalJobRecord(self.workdir, self.name)
        self._replica_pids: dict[str, list[int]] = {}
        self.failures: list[tuple[str, str, int]] = []  # (replica, container, exit code) per failed attempt
        self._current: dict[str, tuple[Step, subprocess.Popen, threading.Thread]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    # -- hooks for tests and fault injection ----------------------------------------------------

    def pids(self) -> dict[str, list[int]]:
        """Replica -> [its container's process, then every descendant] for what runs right now."""
        with self._lock:
            leaders = {name: proc.pid for name, (_, proc, _) in self._current.items() if proc.poll() is None}
        return {name: process_tree(pid) for name, pid in leaders.items()}

    def stop(self) -> None:
        self._stop.set()

    # -- the run --------------------------------------------------------------------------------

    def say(self, message: str) -> None:
        with self._lock:
            print(f"[run-local] {message}", file=self.out, flush=True)

    def world_env(self, replica: Replica, port: int) -> dict[str, str]:
        """What the operator injects (the plan says), with the master on this machine and no GPU."""
        return {**self.plan.replica_env(replica, "127.0.0.1", port), "CUDA_VISIBLE_DEVICES": ""}

    def run(self) -> int:
        """Run the job; <workdir>/job.json says how it goes (launcher status/logs/list/cancel/results --local read it)."""
        self._new_pods()
        record = self._record
        record.data = {"name": self.name, "workdir": str(self.workdir)}  # nothing of an earlier run's record survives
        record.update(state=RUNNING, pid=os.getpid(), pid_start=process_id(os.getpid())[1],
                      started=datetime.now(timezone.utc).isoformat(timespec="seconds"), grace_s=self.grace_s,
                      replicas=[r.name for r in sorted(self.replicas, key=lambda r: r.node_rank)])
        rc = 1
        try:
            rc = self._run(record)
        finally:
            state = "Succeeded" if rc == 0 else "Cancelled" if self._stop.is_set() else "Failed"
            record.update(state=state, exit_code=rc, restarts=self.restarts)
        return rc

    def _new_pods(self) -> None:
        """A new run of the job is new pods, as on Kubernetes: empty emptyDirs and logs. Refused while an
        earlier run of it in this workdir still runs (its replicas would share folders and ports)."""
        try:
            previous = LocalJobRecord.read(self.name, self.workdir, any_name=True)
        except UserError:  # no record (a first run), or not one of ours: nothing of it is removed
            return
        if previous["name"] != self.name:  # its pods' emptyDirs may hold that job's only checkpoints
            raise UserError(f"--workdir {self.workdir} holds run-local job {previous['name']} (its logs and pods' "
                            f"folders): pass a workdir of this job's own, or remove that one first")
        left = live_replicas(previous)
        if previous.get("state") == RUNNING or left:
            who = f"run-local pid {previous.get('pid')}" if previous.get("state") == RUNNING else f"replicas {', '.join(left)}"
            raise UserError(f"run-local job {self.name} is still running in {self.workdir} ({who}): "
                            f"`python -m launcher cancel {self.name} --local` first, or --workdir DIR for another")
        for folder in (PODS, LOGS):
            if (self.workdir / folder).exists():
                shutil.rmtree(self.workdir / folder)
        self.say(f"new pods: the emptyDirs and logs of the job's previous run in {self.workdir} are gone, as on Kubernetes "
                 f"(storage.output_claim or train.out=s3:// keep a run across runs)")

    def _run(self, record: LocalJobRecord) -> int:
        start = time.monotonic()
        deadline = start + self.deadline_s if self.deadline_s else None
        folders = {r.name: volume_folders(self.plan, r, self.workdir, self.volumes, self.say) for r in self.replicas}
        self.say(f"job {self.name}: {self.plan.nnodes} node(s) x {self.plan.nproc_per_node} process(es), workdir {self.workdir}")
        for line in podblock.local_limits(self.plan.groups[0].pod):  # one pod for every replica of a training job
            self.say(f"not applied on one machine: {line}")
        quiet = lambda message: None  # noqa: E731 - planning notes are printed for the first attempt only
        for attempt in range(self.max_restarts + 1):
            port = free_port()
            plans = {r.name: plan_steps(self.plan, r, self.world_env(r, port), folders[r.name],
                                        self.say if attempt == 0 else quiet) for r in self.replicas}
            main = plans[self.replicas[0].name][-1]
            record.update(out=output_of_argv(main.argv, main.cwd), run_id=run_id_of_argv(main.argv), restarts=self.restarts)
            failure = self._attempt(plans, deadline)
            if failure is None:
                self.say(f"job {self.name} succeeded in {time.monotonic() - start:.0f}s ({self.restarts} restart(s))")
                return 0
            replica, container, code = failure
            if code == 130:  # stopped as asked, the trainers' SIGTERM checkpoints written: not an error
                self.say(f"job {self.name} cancelled; its replicas have stopped (exit status 130)")
                return code
            if replica == "":
                self.say(f"error: job {self.name} {container}")
                return code
            self.failures.append(failure)
            record.update(failure={"replica": replica, "container": container, "exit_code": code,
                                   "error": error_line(self.workdir / LOGS / f"{replica}.log")})
            policy = next(self.plan.group(r).restart_policy for r in self.replicas if r.name == replica)
            retry = policy in ("OnFailure", "Always") or (policy == "ExitCode" and code in RETRYABLE_EXIT_CODES)
            what = f"{replica} (container {container}) exited with code {code}"
            if not retry:
                self.say(f"error: job {self.name} failed: {what}; restartPolicy {policy} does not restart it")
                return code
            if self.restarts >= self.max_restarts:
                used = (f"all {self.max_restarts} restart(s) allowed ({self.limit_field} or --max-restarts) are used up"
                        if self.max_restarts else f"no restarts allowed ({self.limit_field} 0; --max-restarts N allows some)")
                self.say(f"error: job {self.name} failed: {what}; {used}; logs in {self.workdir / 'logs'}")
                return code
            self.restarts += 1
            self.say(f"{what}: restarting the whole job ({self.restarts} of {self.max_restarts})")
        raise AssertionError("unreachable")

    def _attempt(self, plans: dict[str, list[Step]], deadline: float | None) -> tuple[str, str, int] | None:
        """Run every replica's steps; None on success, else (replica, container, code) of the first failure."""
        pending = {name: list(steps) for name, steps in plans.items()}
        try:
            for name in pending:
                if self._stop.is_set():  # a cancel while the replicas start: start no more of them
                    break
                self._start_next(name, pending[name])
            while True:
                if self._stop.is_set():
                    self.say(f"job {self.name} cancelled: SIGTERM to its replicas, SIGKILL after {self.grace_s:g}s")
                    return "", "was cancelled", 130
                if deadline and time.monotonic() > deadline:
                    return "", f"exceeded {self.deadline_field}={self.deadline_s}", 1
                with self._lock:
                    current = dict(self._current)
                for name, (step, proc, pump) in current.items():
                    rc = proc.poll()
                    if rc is None:
                        continue
                    pump.join(timeout=5)
                    if rc != 0:
                        return name, step.container, _exit_code(rc)
                    self._start_next(name, pending[name])
                if not self._current:
                    return None
                time.sleep(0.05)
        finally:
            with self._lock:
                current, self._current = dict(self._current), {}
            trees = [p for (_, proc, _) in current.values() if proc.poll() is None for p in process_tree(proc.pid)]
            kill_tree(trees, self.grace_s)
            for _, proc, pump in current.values():
                proc.wait()
                pump.join(timeout=5)

    def _start_next(self, name: str, steps: list[Step]) -> None:
        """Start the replica's next container, or forget the replica when it has none left."""
        if not steps:
            with self._lock:
                self._current.pop(name, None)
            return
        step = steps.pop(0)
        prefix = f"[{name}]" if not step.init else f"[{name}/{step.container}]"
        env = {k: v for k, v in os.environ.items() if not SCRUB_ENV.match(k)}
        env.update(step.env)
        log_dir = self.workdir / LOGS
        log_dir.mkdir(parents=True, exist_ok=True)
        try:
            proc = subprocess.Popen(step.argv, env=env, cwd=step.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            raise UserError(f"{name}: cannot start {step.argv[0]!r} (container {step.container}): {e.strerror}") from None
        pump = threading.Thread(target=self._pump, args=(proc, prefix, log_dir / f"{name}.log"), daemon=True)
        pump.start()
        with self._lock:
            self._current[name] = (step, proc, pump)
        # `cancel --local` stops these itself when run-local was killed and cannot
        self._replica_pids[name] = process_id(proc.pid)
        self._record.update(replica_pids=self._replica_pids)

    def _pump(self, proc: subprocess.Popen, prefix: str, log_path: Path) -> None:
        """Copy the process's output, line by line and prefixed, to `out` and the replica's log file.
        While the job is being stopped, torchrun's traceback for the SIGTERM it was sent (SignalException)
        goes to the log file only: it is the stop itself, not a failure to read through."""
        held: list[str] = []
        with open(log_path, "a") as log:
            for raw in proc.stdout:
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                log.write(line + "\n")
                log.flush()  # `launcher logs -f --local` reads this file as it grows
                if held or (self._stop.is_set() and line.startswith("Traceback (most recent call last)")):
                    held.append(line)
                    if line.startswith((" ", "Traceback")):
                        continue  # the traceback goes on; its last line decides
                    shown, held = ([] if "SignalException" in line else held), []
                else:
                    shown = [line]
                self._show(prefix, shown)
            self._show(prefix, held)  # the output ended inside a traceback

    def _show(self, prefix: str, lines: list[str]) -> None:
        with self._lock:
            for line in lines:
                self.out.write(f"{prefix} {line}\n")
            self.out.flush()


def run_job(job, workdir: str | Path, **kwargs) -> int:
    """Run a job (a JobPlan, rendered objects or a YAML path) locally; 0 when every replica exits 0."""
    return LocalJob(job, workdir, **kwargs).run()


# ---------------------------------------------------------------------------------------------
# The command.


def add_arguments(parser, command: str = "run-local") -> None:
    from launcher.cli_render import add_job_arguments

    parser.add_argument("file", nargs="?", help="an already rendered YAML file, or the folder `render --out` wrote "
                                                     "(instead of --profile and the job flags)")
    add_job_arguments(parser)
    parser.add_argument("--workdir", help="folder for volumes and logs (default runs/local/<job name>)")
    parser.add_argument("--max-restarts", type=int, help="whole-job restarts allowed "
                        "(default: the job's runPolicy.backoffLimit, a TrainJob's failurePolicy.maxRestarts)")
    parser.add_argument("--volume", action="append", default=[], metavar="NAME=DIR", help="use DIR for the pod volume NAME (repeatable)")
    parser.add_argument("--runtime", metavar="FILE", help="the ClusterTrainingRuntime a TrainJob references (e.g. the admin "
                        "bundle's clustertrainingruntime-*.yaml): its pod, with the job's runtime patches, is what runs")
    parser.add_argument("--grace", type=float, help="seconds between SIGTERM and SIGKILL when stopping replicas "
                                                   f"(default: the pods' terminationGracePeriodSeconds, else {K8S_GRACE_S})")


def main(args) -> int:
    if args.file:
        given = [f"--{f}" for f in ("nodes", "gpus", "image", "namespace", "name", "api") if getattr(args, f) is not None]
        given += [flag for flag, v in (("--values", args.values), ("--set", args.overrides), ("--set-list", args.set_list),
                                       ("--feature-spec", args.feature_spec), ("--resume", args.resume)) if v]
        if given:
            raise UserError(f"{args.file} is already rendered: drop {given[0]}, or render with --profile instead")
        plan = load_plan_file(args.file)
    else:
        from launcher.cli_render import plan_from_args

        plan = plan_from_args(args)
    if args.runtime:  # the pods come from the admin's runtime as Trainer builds them, not from the config
        runtime = [o for o in load_yaml_file_all(args.runtime, "runtime file (--runtime)", UserError)
                   if isinstance(o, dict) and o.get("kind") != "TrainJob"]
        job_objects = [o for o in plan.objects if o.get("kind") not in ("TrainingRuntime", "ClusterTrainingRuntime")]
        for job in (o for o in job_objects if o.get("kind") == "TrainJob"):  # the admin's image rule, as its policy applies it
            ref = (job.get("spec") or {}).get("runtimeRef") or {}
            for rt in (r for r in runtime if (r.get("metadata") or {}).get("name") == ref.get("name")):
                errors = image_errors(job, rt, f"TrainJob/{(job.get('metadata') or {}).get('name')}")
                if errors:
                    raise UserError(f"{args.runtime}: {errors[0]}")
        plan = plan_from_objects(job_objects + runtime, f"{args.runtime} + the job")
    volumes = {}
    for item in args.volume:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise UserError(f"--volume {item!r}: expected NAME=DIR, e.g. --volume dataset=data/synthetic")
        if not Path(folder).is_dir():
            raise UserError(f"--volume {item}: {folder} is not a folder")
        volumes[name] = folder
    job = LocalJob(plan, local_workdir(plan.name, args.workdir), volumes=volumes, max_restarts=args.max_restarts, grace_s=args.grace)
    stop_on_signals(job)
    return job.run()


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def stop_on_signals(job: LocalJob) -> None:
    """`launcher cancel --local`, Ctrl-C, `timeout`, a closed terminal: each stops the replicas (in sessions
    of their own, so none of these reaches them) as the kubelet stops a deleted pod's containers."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda *_: job.stop())
