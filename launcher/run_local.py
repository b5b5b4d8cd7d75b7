"""`run-local`: run a rendered PyTorchJob as local processes, the way the training operator would.

    python -m launcher run-local --profile synthetic-smoke --nodes 2 --gpus 2
    python -m launcher run-local job.yaml --workdir runs/local --volume dataset=data/synthetic
    rc = run_job(objects_or_path, workdir)          # or LocalJob(...).run(), .pids(), .stop()

Each replica (Master = node rank 0, Worker i = node rank i+1) becomes one process running the
`pytorch` container's command, after its init containers, with the environment the operator
injects (MASTER_ADDR/PORT, WORLD_SIZE, RANK, PET_*; torchrun reads the PET_* ones) pointed at
127.0.0.1, and CUDA hidden so torch uses CPU and gloo. Volumes become folders: a ConfigMap's data
is written out, emptyDir is per replica, PVCs and hostPaths are shared folders under the workdir
(or `--volume NAME=DIR`), and every mountPath in the command, args and env is rewritten to its
folder. So the manifest that would run on the cluster is the one exercised here, not a copy.

A failed replica kills the others; restartPolicy OnFailure (or ExitCode with a retryable code)
restarts the whole job, up to runPolicy.backoffLimit times, as the operator does.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import yaml

from dlrm.errors import UserError
from launcher.procs import exit_code as _exit_code, free_port, kill_tree, process_tree  # noqa: F401 (API)

CONTAINER = "pytorch"  # the operator's required container name
REPLICA_ORDER = ("Master", "Worker")
RETRYABLE_EXIT_CODES = {130, 137, 138, 143}  # the operator's ExitCode policy: SIGINT, SIGKILL, SIGUSR1, SIGTERM
# The image's interpreters are not on this machine: the current one has torch and dlrm installed.
COMMAND_MAP = {"python": [sys.executable], "python3": [sys.executable],
               "torchrun": [sys.executable, "-m", "torch.distributed.run"]}
# Inherited variables that would confuse a nested torch.distributed run.
SCRUB_ENV = re.compile(r"^(RANK|LOCAL_RANK|WORLD_SIZE|LOCAL_WORLD_SIZE|GROUP_RANK|MASTER_ADDR|MASTER_PORT|PET_\w+|TORCHELASTIC_\w+)$")


def load_objects(objects_or_path) -> list[dict]:
    """A rendered YAML file (one or many documents) or an already-parsed list of objects."""
    if isinstance(objects_or_path, (str, Path)):
        path = Path(objects_or_path)
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except FileNotFoundError:
            raise UserError(f"{path}: no such file (expected YAML from `python -m launcher render`)") from None
        except yaml.YAMLError as e:
            raise UserError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
        objs = [d for d in docs if d]
        return [i for d in objs for i in (d.get("items", []) if d.get("kind") == "List" else [d])]
    return list(objects_or_path)


# ---------------------------------------------------------------------------------------------
# Planning: manifest -> argv, env, cwd per container. Nothing runs here.


@dataclass
class Step:
    container: str
    argv: list[str]
    env: dict[str, str]
    cwd: str
    init: bool = False


@dataclass
class Replica:
    name: str  # "master-0", "worker-1": the operator's pod name without the job prefix
    rank: int  # node rank
    restart_policy: str
    template: dict  # the pod template


def replicas_of(job: dict) -> list[Replica]:
    specs = job.get("spec", {}).get("pytorchReplicaSpecs") or {}
    unknown = sorted(set(specs) - set(REPLICA_ORDER))
    if unknown or not specs:
        raise UserError(f"PyTorchJob {job['metadata'].get('name')}: replica types {sorted(specs)}; expected Master and/or Worker")
    out: list[Replica] = []
    for rtype in REPLICA_ORDER:
        spec = specs.get(rtype)
        if spec is None:
            continue
        n = int(spec.get("replicas", 1))
        if rtype == "Master" and n != 1:
            raise UserError(f"Master has replicas={n}; the operator allows exactly 1")
        for i in range(n):
            out.append(Replica(f"{rtype.lower()}-{i}", len(out), spec.get("restartPolicy", "Never"), spec.get("template", {})))
    return out


def nproc_per_node(job: dict, replica: Replica) -> int:
    """spec.nprocPerNode as a number. 'auto'/'gpu' would mean every CPU core on CPU: use the GPU count instead."""
    value = str(job.get("spec", {}).get("nprocPerNode") or "1")
    if value.isdigit():
        return int(value)
    container = _container(replica)
    gpus = (container.get("resources", {}).get("limits") or {}).get("nvidia.com/gpu")
    return int(gpus) if gpus else 1


def _container(replica: Replica) -> dict:
    containers = replica.template.get("spec", {}).get("containers") or []
    found = [c for c in containers if c.get("name") == CONTAINER]
    if not found:
        raise UserError(f"{replica.name}: no container named {CONTAINER!r} (the training operator requires that name)")
    return found[0]


def volume_folders(replica: Replica, objects: list[dict], workdir: Path, mapped: dict[str, Path], say) -> dict[str, Path]:
    """Pod volume name -> local folder, created (and for ConfigMaps filled) now."""
    config_maps = {o["metadata"]["name"]: o for o in objects if o.get("kind") == "ConfigMap"}
    out: dict[str, Path] = {}
    for vol in replica.template.get("spec", {}).get("volumes") or []:
        name = vol["name"]
        if name in mapped:
            out[name] = mapped[name]
            continue
        if "configMap" in vol:
            cm_name = vol["configMap"]["name"]
            cm = config_maps.get(cm_name)
            if cm is None:
                raise UserError(f"volume {name}: ConfigMap {cm_name} is not among the rendered objects; map it with --volume {name}=DIR")
            folder = workdir / "configmaps" / cm_name
            data = cm.get("data") or {}
            items = vol["configMap"].get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                (folder / item["path"]).parent.mkdir(parents=True, exist_ok=True)
                (folder / item["path"]).write_text(data[item["key"]])
        elif "persistentVolumeClaim" in vol:
            folder = workdir / "volumes" / vol["persistentVolumeClaim"]["claimName"]
        elif "hostPath" in vol:
            # This machine is the node: a node path that exists here is used as it is (a dataset made
            # with `dlrm synth`, say); one that does not (a cluster's NVMe mount) becomes a workdir folder.
            path = Path(vol["hostPath"]["path"])
            folder = path if path.exists() else workdir / "volumes" / "host" / str(path).strip("/")
            if folder != path:
                say(f"volume {name}: hostPath {path} is not on this machine; using {folder} (or pass --volume {name}=DIR)")
        elif "emptyDir" in vol:
            folder = workdir / "pods" / replica.name / name
        else:
            kind = next((k for k in vol if k != "name"), "?")
            folder = workdir / "volumes" / name
            say(f"volume {name} ({kind}) has no local equivalent: an empty folder {folder} (or pass --volume {name}=DIR)")
        folder.mkdir(parents=True, exist_ok=True)
        out[name] = folder
    return out


def mount_rewriter(container: dict, folders: dict[str, Path]):
    """A function rewriting each mountPath (as a whole path prefix) in a string to its local folder."""
    local = {}
    for m in container.get("volumeMounts") or []:
        if m["name"] not in folders:
            raise UserError(f"volumeMount {m['mountPath']} names volume {m['name']!r}, which the pod does not define")
        local[m["mountPath"].rstrip("/") or "/"] = str(folders[m["name"]] / m.get("subPath", ""))
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


def container_env(container: dict, pod: str, say) -> dict[str, str]:
    """The manifest's env values. Secrets and other references do not exist here: the shell's env stands in."""
    env: dict[str, str] = {}
    for src in container.get("envFrom") or []:
        say(f"envFrom {src}: not available locally; variables come from your shell instead")
    for e in container.get("env") or []:
        field_path = ((e.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
        if "value" in e:
            env[e["name"]] = expand_vars(str(e["value"]), env)
        elif field_path == "metadata.name":
            env[e["name"]] = pod
        else:
            say(f"env {e['name']}: {e.get('valueFrom')} is not available locally; set it in your shell if the job needs it")
    return env


def plan_steps(job: dict, replica: Replica, world: dict[str, str], folders: dict[str, Path], say) -> list[Step]:
    """The init containers, then the `pytorch` container, as local commands."""
    pod = f"{job['metadata']['name']}-{replica.name}"
    spec = replica.template.get("spec", {})
    main = _container(replica)
    for c in spec.get("containers") or []:
        if c is not main:
            say(f"{replica.name}: sidecar container {c.get('name')} is not run locally")
    steps = []
    for c, init in [(c, True) for c in spec.get("initContainers") or []] + [(main, False)]:
        if init and c.get("restartPolicy") == "Always":
            say(f"{replica.name}: sidecar init container {c.get('name')} is not run locally")
            continue
        rewrite = mount_rewriter(c, folders)
        env = {k: rewrite(v) for k, v in container_env(c, pod, say).items()}
        env.update(world if not init else {k: v for k, v in world.items() if k == "CUDA_VISIBLE_DEVICES"})
        argv = [expand_vars(rewrite(str(a)), env) for a in (c.get("command") or []) + (c.get("args") or [])]
        if not c.get("command"):
            raise UserError(f"{replica.name}: container {c.get('name')} has no command; run-local cannot know the image's entrypoint")
        argv = COMMAND_MAP.get(argv[0], [argv[0]]) + argv[1:]
        cwd = rewrite(c.get("workingDir") or "")
        steps.append(Step(c.get("name", "?"), argv, env, cwd if cwd and Path(cwd).is_dir() else os.getcwd(), init))
    return steps


# ---------------------------------------------------------------------------------------------
# Running: one process (tree) per replica, supervised as the operator would.


class LocalJob:
    """One PyTorchJob run locally. `run()` blocks; `pids()` and `stop()` may be called from other threads."""

    def __init__(self, objects_or_path, workdir: str | Path, *, volumes: dict[str, str | Path] | None = None,
                 max_restarts: int | None = None, out: TextIO | None = None, grace_s: float = 5.0):
        self.objects = load_objects(objects_or_path)
        jobs = [o for o in self.objects if o.get("kind") == "PyTorchJob"]
        if len(jobs) != 1:
            raise UserError(f"expected exactly one PyTorchJob among the objects, found {len(jobs)}")
        self.job = jobs[0]
        self.name = self.job["metadata"]["name"]
        self.workdir = Path(workdir).resolve()
        self.replicas = replicas_of(self.job)
        self.volumes = {k: Path(v).resolve() for k, v in (volumes or {}).items()}
        known = {v["name"] for r in self.replicas for v in r.template.get("spec", {}).get("volumes") or []}
        if set(self.volumes) - known:
            raise UserError(f"--volume {sorted(set(self.volumes) - known)[0]}: the pods have no such volume (they have: {', '.join(sorted(known)) or 'none'})")
        policy = self.job["spec"].get("runPolicy") or {}
        backoff = policy.get("backoffLimit")
        # Unset backoffLimit means "retry forever" to the operator; locally that would loop on a bug.
        self.max_restarts = max_restarts if max_restarts is not None else int(backoff or 0)
        self.deadline_s = policy.get("activeDeadlineSeconds")
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

    def world_env(self, replica: Replica, nproc: int, port: int) -> dict[str, str]:
        """What the operator injects into the `pytorch` container, with the master on this machine."""
        nnodes = len(self.replicas)
        return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(nnodes * nproc),
                "RANK": str(replica.rank), "PET_NNODES": str(nnodes), "PET_NPROC_PER_NODE": str(nproc),
                "PET_NODE_RANK": str(replica.rank), "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port),
                "CUDA_VISIBLE_DEVICES": ""}

    def run(self) -> int:
        start = time.monotonic()
        deadline = start + self.deadline_s if self.deadline_s else None
        nproc = nproc_per_node(self.job, self.replicas[0])
        folders = {r.name: volume_folders(r, self.objects, self.workdir, self.volumes, self.say) for r in self.replicas}
        self.say(f"job {self.name}: {len(self.replicas)} node(s) x {nproc} process(es), workdir {self.workdir}")
        quiet = lambda message: None  # noqa: E731 - planning notes are printed for the first attempt only
        for attempt in range(self.max_restarts + 1):
            port = free_port()
            plans = {r.name: plan_steps(self.job, r, self.world_env(r, nproc, port), folders[r.name],
                                        self.say if attempt == 0 else quiet) for r in self.replicas}
            failure = self._attempt(plans, deadline)
            if failure is None:
                self.say(f"job {self.name} succeeded in {time.monotonic() - start:.0f}s ({self.restarts} restart(s))")
                return 0
            replica, container, code = failure
            if replica == "":
                self.say(f"error: job {self.name} {container}")
                return code
            self.failures.append(failure)
            policy = next(r.restart_policy for r in self.replicas if r.name == replica)
            retry = policy in ("OnFailure", "Always") or (policy == "ExitCode" and code in RETRYABLE_EXIT_CODES)
            what = f"{replica} (container {container}) exited with code {code}"
            if not retry:
                self.say(f"error: job {self.name} failed: {what}; restartPolicy {policy} does not restart it")
                return code
            if self.restarts >= self.max_restarts:
                used = (f"all {self.max_restarts} restart(s) allowed (runPolicy.backoffLimit or --max-restarts) are used up"
                        if self.max_restarts else "no restarts allowed (runPolicy.backoffLimit 0; --max-restarts N allows some)")
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
                    return "", f"exceeded runPolicy.activeDeadlineSeconds={self.deadline_s}", 1
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
                with self._lock:
                    self.out.write(f"{prefix} {line}\n")
                    self.out.flush()


def run_job(objects_or_path, workdir: str | Path, **kwargs) -> int:
    """Run a rendered PyTorchJob (objects or a YAML path) locally; 0 when every replica exits 0."""
    return LocalJob(objects_or_path, workdir, **kwargs).run()


# ---------------------------------------------------------------------------------------------
# The command.


def add_arguments(parser, command: str = "run-local") -> None:
    from launcher.cli_render import add_job_arguments

    parser.add_argument("file", nargs="?", help="an already rendered YAML file (instead of --profile and the job flags)")
    add_job_arguments(parser)
    parser.add_argument("--workdir", help="folder for volumes and logs (default runs/local/<job name>)")
    parser.add_argument("--max-restarts", type=int, help="whole-job restarts allowed (default: the job's runPolicy.backoffLimit)")
    parser.add_argument("--volume", action="append", default=[], metavar="NAME=DIR", help="use DIR for the pod volume NAME (repeatable)")
    parser.add_argument("--grace", type=float, default=5.0, help="seconds between SIGTERM and SIGKILL when stopping replicas")


def main(args) -> int:
    if args.file:
        job_flags = [f for f in ("nodes", "gpus", "image", "namespace", "name") if getattr(args, f) is not None]
        if job_flags or args.values or args.overrides:
            raise UserError(f"{args.file} is already rendered: drop --{job_flags[0] if job_flags else 'values/--set'}, or render with --profile instead")
        objects = load_objects(args.file)
    else:
        from launcher.cli_render import render_job

        objects = render_job(args)[1]
    volumes = {}
    for item in args.volume:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise UserError(f"--volume {item!r}: expected NAME=DIR, e.g. --volume dataset=data/synthetic")
        if not Path(folder).is_dir():
            raise UserError(f"--volume {item}: {folder} is not a folder")
        volumes[name] = folder
    name = next((o["metadata"]["name"] for o in objects if o.get("kind") == "PyTorchJob"), "job")
    workdir = args.workdir or f"runs/local/{name}"
    return run_job(objects, workdir, volumes=volumes, max_restarts=args.max_restarts, grace_s=args.grace)
