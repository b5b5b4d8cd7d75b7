"""`run-local`: run a job plan as local processes, the way its controller (the training operator for a
PyTorchJob, Kubeflow Trainer and JobSet for a TrainJob) would run its pods.

    python -m launcher run-local --profile synthetic-smoke --nodes 2 --gpus 2
    python -m launcher run-local job.yaml --workdir runs/local --volume dataset=data/synthetic
    rc = run_job(plan_or_objects_or_path, workdir)   # or LocalJob(...).run(), .pids(), .stop()

The job is a `launcher.plan.JobPlan` (made from the flags by the same function `render` and
`submit` use, or decoded from a rendered file). Each replica (Master = node rank 0, Worker i =
node rank i+1) becomes one process running the `pytorch` container's command, after its init
containers, with the env the operator injects (`JobPlan.replica_env`) pointed at 127.0.0.1 and
CUDA hidden, so torch uses CPU and gloo. Volumes become folders: a ConfigMap's data is written
out, emptyDir is per replica, PVCs and hostPaths are shared folders under the workdir (or
`--volume NAME=DIR`), and every mountPath in the command, args and env is rewritten to its folder.

A failed replica kills the others; restartPolicy OnFailure (or ExitCode with a retryable code)
restarts the whole job, up to runPolicy.backoffLimit times, as the operator does; a TrainJob's
failed node restarts the whole job up to its JobSet failurePolicy.maxRestarts times, as JobSet does.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from dlrm.errors import UserError
from dlrm.io.fsutil import atomic_write
from launcher.plan import Container, JobPlan, Replica, load_plan_file, plan_from_objects
from launcher.results import LocalJobRecord, local_workdir, output_of_argv
from launcher.procs import exit_code as _exit_code, free_port, kill_tree, process_tree  # noqa: F401 (API)

RETRYABLE_EXIT_CODES = {130, 137, 138, 143}  # the operator's ExitCode policy: SIGINT, SIGKILL, SIGUSR1, SIGTERM
# The image's interpreters are not on this machine: the current one has torch and dlrm installed.
COMMAND_MAP = {"python": [sys.executable], "python3": [sys.executable],
               "torchrun": [sys.executable, "-m", "torch.distributed.run"]}
# Inherited variables that would confuse a nested torch.distributed run.
SCRUB_ENV = re.compile(r"^(RANK|LOCAL_RANK|WORLD_SIZE|LOCAL_WORLD_SIZE|GROUP_RANK|MASTER_ADDR|MASTER_PORT|PET_\w+|TORCHELASTIC_\w+)$")


def as_plan(job) -> JobPlan:
    """A JobPlan, a rendered YAML file, or an already-parsed list of objects, as a plan."""
    if isinstance(job, JobPlan):
        return job
    if isinstance(job, (str, Path)):
        return load_plan_file(job)
    return plan_from_objects(list(job))


# ---------------------------------------------------------------------------------------------
# Planning: plan -> argv, env, cwd per container. Nothing runs here.


@dataclass
class Step:
    container: str
    argv: list[str]
    env: dict[str, str]
    cwd: str
    init: bool = False


def volume_folders(plan: JobPlan, replica: Replica, workdir: Path, mapped: dict[str, Path], say) -> dict[str, Path]:
    """Pod volume name -> local folder, created (and for ConfigMaps filled) now."""
    out: dict[str, Path] = {}
    for vol in plan.pod(replica).volumes:
        if vol.name in mapped:
            out[vol.name] = mapped[vol.name]
            continue
        src = vol.source
        if vol.kind == "configMap":
            cm_name = str(src.get("name"))
            data = plan.config_maps.get(cm_name)
            if data is None:
                raise UserError(f"volume {vol.name}: ConfigMap {cm_name} is not among the rendered objects; map it with --volume {vol.name}=DIR")
            folder = workdir / "configmaps" / cm_name
            items = src.get("items") or [{"key": k, "path": k} for k in data]
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise UserError(f"volume {vol.name}: configMap.items must be a list of {{key, path}} mappings, got {items!r}"[:300])
            for item in items:
                if item.get("key") not in data or ".." in Path(str(item.get("path"))).parts or str(item.get("path")).startswith("/"):
                    raise UserError(f"volume {vol.name}: item {item} names no key of ConfigMap {cm_name} or a path outside its folder")
                atomic_write(folder / item["path"], data[item["key"]], fsync=False)
        elif vol.kind == "persistentVolumeClaim":
            folder = workdir / "volumes" / str(src.get("claimName"))
        elif vol.kind == "hostPath":
            # This machine is the node: a node path that exists here is used as it is (a dataset made
            # with `dlrm synth`, say); one that does not (a cluster's NVMe mount) becomes a workdir folder.
            path = Path(str(src.get("path")))
            folder = path if path.exists() else workdir / "volumes" / "host" / str(path).strip("/")
            if folder != path:
                say(f"volume {vol.name}: hostPath {path} is not on this machine; using {folder} (or pass --volume {vol.name}=DIR)")
        elif vol.kind == "emptyDir":
            folder = workdir / "pods" / replica.name / vol.name
        else:
            folder = workdir / "volumes" / vol.name
            say(f"volume {vol.name} ({vol.kind}) has no local equivalent: an empty folder {folder} (or pass --volume {vol.name}=DIR)")
        folder.mkdir(parents=True, exist_ok=True)
        out[vol.name] = folder
    return out


def mount_rewriter(container: Container, folders: dict[str, Path]):
    """A function rewriting each mountPath (as a whole path prefix) in a string to its local folder."""
    local = {}
    for m in container.mounts:
        if m.volume not in folders:
            raise UserError(f"volumeMount {m.path} names volume {m.volume!r}, which the pod does not define")
        local[m.path.rstrip("/") or "/"] = str(folders[m.volume] / m.sub_path)
    if not local:
        return lambda s: s
    # Longest first so /data/dataset wins over /data; the lookarounds keep /x/tmp and /tmpfoo untouched.
    alternatives = "|".join(re.escape(p) for p in sorted(local, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w./-])({alternatives})(?=/|$|[^\w.-])")
    return lambda s: pattern.sub(lambda m: local[m.group(1)].rstrip("/"), s)


def expand_vars(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command/args; $$( escapes, unknown names stay as written."""
    return re.sub(r"\$\$\(|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$(" if m.group(1) is None else env.get(m.group(1), m.group(0)), text)


def container_env(container: Container, pod: str, say) -> dict[str, str]:
    """The container's env values. Secrets and other references do not exist here: the shell's env stands in."""
    env: dict[str, str] = {}
    for src in container.env_from:
        say(f"envFrom {src}: not available locally; variables come from your shell instead")
    for e in container.env:
        ref = (e.value_from or {}).get("fieldRef")
        field_path = ref.get("fieldPath") if isinstance(ref, dict) else None
        if e.value is not None:
            env[e.name] = expand_vars(e.value, env)
        elif field_path == "metadata.name":
            env[e.name] = pod
        else:
            say(f"env {e.name}: {e.value_from} is not available locally; set it in your shell if the job needs it")
    return env


def plan_steps(plan: JobPlan, replica: Replica, world: dict[str, str], folders: dict[str, Path], say) -> list[Step]:
    """The init containers, then the `pytorch` container, as local commands."""
    pod = plan.pod(replica)
    main = pod.main
    for c in pod.containers:
        if c is not main:
            say(f"{replica.name}: sidecar container {c.name} is not run locally")
    steps = []
    for c, init in [(c, True) for c in pod.init_containers] + [(main, False)]:
        if init and c.sidecar:
            say(f"{replica.name}: sidecar init container {c.name} is not run locally")
            continue
        rewrite = mount_rewriter(c, folders)
        env = {k: rewrite(v) for k, v in container_env(c, plan.pod_name(replica), say).items()}
        env.update(world if not init else {k: v for k, v in world.items() if k == "CUDA_VISIBLE_DEVICES"})
        if not c.command:
            raise UserError(f"{replica.name}: container {c.name} has no command; run-local cannot know the image's entrypoint")
        argv = [expand_vars(rewrite(a), env) for a in c.command + c.args]
        argv = COMMAND_MAP.get(argv[0], [argv[0]]) + argv[1:]
        cwd = rewrite(c.working_dir)
        steps.append(Step(c.name, argv, env, cwd if cwd and Path(cwd).is_dir() else os.getcwd(), init))
    return steps


# ---------------------------------------------------------------------------------------------
# Running: one process (tree) per replica, supervised as the operator would.


class LocalJob:
    """One PyTorchJob or TrainJob run locally. `run()` blocks; `pids()` and `stop()` may be called from other threads."""

    def __init__(self, job, workdir: str | Path, *, volumes: dict[str, str | Path] | None = None,
                 max_restarts: int | None = None, out: TextIO | None = None, grace_s: float = 5.0):
        self.plan = as_plan(job)
        if self.plan.kind != "train" or not self.plan.groups:
            raise UserError(f"job {self.plan.name}: run-local runs training jobs (a PyTorchJob or TrainJob); kind={self.plan.kind} has no replicas to run")
        self.name = self.plan.name
        self.workdir = Path(workdir).resolve()
        self.replicas = self.plan.replicas
        self.volumes = {k: Path(v).resolve() for k, v in (volumes or {}).items()}
        known = {v.name for g in self.plan.groups for v in g.pod.volumes}
        if set(self.volumes) - known:
            raise UserError(f"--volume {sorted(set(self.volumes) - known)[0]}: the pods have no such volume (they have: {', '.join(sorted(known)) or 'none'})")
        # Unset backoffLimit means "retry forever" to the operator; locally that would loop on a bug.
        self.max_restarts = max_restarts if max_restarts is not None else int(self.plan.run_policy.backoff_limit or 0)
        self.deadline_s = self.plan.run_policy.active_deadline_seconds
        # Where the job says so, for messages: the operator's run policy, or the TrainJob and its JobSet.
        self.limit_field, self.deadline_field = (("failurePolicy.maxRestarts", "spec.activeDeadlineSeconds") if self.plan.api == "trainjob"
                                                 else ("runPolicy.backoffLimit", "runPolicy.activeDeadlineSeconds"))
        self.out = out or sys.stdout
        self.grace_s = grace_s
        self.restarts = 0
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
        """Run the job; <workdir>/job.json says how it goes (launcher status/logs/results --local read it)."""
        record = LocalJobRecord(self.workdir, self.name)
        record.update(state="Running", pid=os.getpid(), started=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        rc = 1
        try:
            rc = self._run(record)
        finally:
            record.update(state="Succeeded" if rc == 0 else "Failed", exit_code=rc, restarts=self.restarts)
        return rc

    def _run(self, record: LocalJobRecord) -> int:
        start = time.monotonic()
        deadline = start + self.deadline_s if self.deadline_s else None
        folders = {r.name: volume_folders(self.plan, r, self.workdir, self.volumes, self.say) for r in self.replicas}
        self.say(f"job {self.name}: {self.plan.nnodes} node(s) x {self.plan.nproc_per_node} process(es), workdir {self.workdir}")
        quiet = lambda message: None  # noqa: E731 - planning notes are printed for the first attempt only
        for attempt in range(self.max_restarts + 1):
            port = free_port()
            plans = {r.name: plan_steps(self.plan, r, self.world_env(r, port), folders[r.name],
                                        self.say if attempt == 0 else quiet) for r in self.replicas}
            main = plans[self.replicas[0].name][-1]
            record.update(out=output_of_argv(main.argv, main.cwd), restarts=self.restarts)
            failure = self._attempt(plans, deadline)
            if failure is None:
                self.say(f"job {self.name} succeeded in {time.monotonic() - start:.0f}s ({self.restarts} restart(s))")
                return 0
            replica, container, code = failure
            if replica == "":
                self.say(f"error: job {self.name} {container}")
                return code
            self.failures.append(failure)
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
                self._start_next(name, pending[name])
            while True:
                if self._stop.is_set():
                    return "", "was stopped", 130
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
        log_dir = self.workdir / "logs"
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

    def _pump(self, proc: subprocess.Popen, prefix: str, log_path: Path) -> None:
        """Copy the process's output, line by line and prefixed, to `out` and the replica's log file."""
        with open(log_path, "a") as log:
            for raw in proc.stdout:
                line = raw.decode("utf-8", errors="replace").rstrip("\n")
                log.write(line + "\n")
                log.flush()  # `launcher logs -f --local` reads this file as it grows
                with self._lock:
                    self.out.write(f"{prefix} {line}\n")
                    self.out.flush()


def run_job(job, workdir: str | Path, **kwargs) -> int:
    """Run a job (a JobPlan, rendered objects or a YAML path) locally; 0 when every replica exits 0."""
    return LocalJob(job, workdir, **kwargs).run()


# ---------------------------------------------------------------------------------------------
# The command.


def add_arguments(parser, command: str = "run-local") -> None:
    from launcher.cli_render import add_job_arguments

    parser.add_argument("file", nargs="?", help="an already rendered YAML file (instead of --profile and the job flags)")
    add_job_arguments(parser)
    parser.add_argument("--workdir", help="folder for volumes and logs (default runs/local/<job name>)")
    parser.add_argument("--max-restarts", type=int, help="whole-job restarts allowed (default: the job's runPolicy.backoffLimit, a TrainJob's failurePolicy.maxRestarts)")
    parser.add_argument("--volume", action="append", default=[], metavar="NAME=DIR", help="use DIR for the pod volume NAME (repeatable)")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds between SIGTERM and SIGKILL when stopping replicas")


def main(args) -> int:
    if args.file:
        given = [f"--{f}" for f in ("nodes", "gpus", "image", "namespace", "name", "api") if getattr(args, f) is not None]
        given += [flag for flag, v in (("--values", args.values), ("--set", args.overrides),
                                       ("--feature-spec", args.feature_spec), ("--resume", args.resume)) if v]
        if given:
            raise UserError(f"{args.file} is already rendered: drop {given[0]}, or render with --profile instead")
        plan = load_plan_file(args.file)
    else:
        from launcher.cli_render import plan_from_args

        plan = plan_from_args(args)
    volumes = {}
    for item in args.volume:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise UserError(f"--volume {item!r}: expected NAME=DIR, e.g. --volume dataset=data/synthetic")
        if not Path(folder).is_dir():
            raise UserError(f"--volume {item}: {folder} is not a folder")
        volumes[name] = folder
    workdir = local_workdir(plan.name, args.workdir)
    return run_job(plan, workdir, volumes=volumes, max_restarts=args.max_restarts, grace_s=args.grace)
