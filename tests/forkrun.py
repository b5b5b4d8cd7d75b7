"""A fork server that runs `python -m dlrm|launcher ...` commands: the bad-input table's rows and the
ranks of tests/test_dist_train.py's jobs.

Why: the bad-input table has ~200 rows, each a fresh interpreter that spends ~1.7 s of CPU importing torch
before the command even parses its flags: minutes of a 2-core machine. This server imports the
heavy libraries and the CLIs' modules once, then forks one child per command. The child is what a
subprocess would be: its own process group, cwd, environment, RLIMIT_FSIZE, stdin from /dev/null,
stdout/stderr into files, `runpy` of the module as __main__, atexit handlers run, the exit code
of SystemExit (an uncaught exception prints its traceback and exits 1, as python does).

What a fork cannot reproduce: modules imported here read their import-time environment once. The
list below holds only modules that read no environment at import (launcher.k8s, which reads
DLRM_K8S_CONNECT_TIMEOUT, is left to each child). FORKRUN=0 runs real subprocesses instead.

Protocol (one JSON object a line, on stdin/stdout): {argv, cwd, env, stdout, stderr, fsize, timeout}
-> {rc, timed_out}; or {group: [such requests], timeout, grace} -> {rcs, timed_out}, the processes of
one job started at once (the ranks of a distributed run, tests/test_dist_train.py). Used through
ForkRunner below.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

# torch._dynamo too: torch imports it lazily, at the first optimizer or DDP a trainer builds (~1.5 CPU-s)
PRELOAD = ["numpy", "torch", "torch._dynamo", "yaml", "jinja2", "boto3", "botocore.session", "jsonschema",
           "dlrm.cli", "dlrm.config", "dlrm.training.train", "dlrm.training.evaluate", "dlrm.data.synth",
           "dlrm.dist.plan_cli", "launcher.cli_render", "launcher.run_local", "launcher.data.cli"]


def _child(req: dict) -> None:
    """In the forked child: become the command, never return."""
    import atexit
    import resource
    import runpy
    import signal
    import traceback

    code = 1
    try:
        os.setpgid(0, 0)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        if req.get("fsize"):
            resource.setrlimit(resource.RLIMIT_FSIZE, (req["fsize"], req["fsize"]))
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                (2, req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
            new = os.open(path, flags, 0o644)
            os.dup2(new, fd)
            os.close(new)
        argv = req["argv"]
        assert argv[1] == "-m", argv
        sys.argv = [argv[0]] + argv[3:]
        sys.path[0] = req["cwd"]  # as `python -m` puts the working folder first
        try:
            runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def serve() -> None:
    import importlib
    import signal

    for name in PRELOAD:
        importlib.import_module(name)
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        if "group" in req:
            _serve_group(req, out)
            continue
        pid = os.fork()
        if pid == 0:
            _child(req)
        deadline = time.monotonic() + req["timeout"]
        timed_out = False
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                timed_out = True
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                _, status = os.waitpid(pid, 0)
                break
            time.sleep(0.02)
        out.write(json.dumps({"rc": os.waitstatus_to_exitcode(status), "timed_out": timed_out}) + "\n")
        out.flush()


def _serve_group(req: dict, out) -> None:
    """Start every member at once (the ranks of one job) and wait for all of them. As torchrun does,
    a member that fails takes the others down: they would otherwise wait in a collective for their
    peer until the timeout. Replies {rcs, timed_out}."""
    import signal

    pids = []
    for member in req["group"]:
        pid = os.fork()
        if pid == 0:
            _child(member)
        pids.append(pid)
    rcs: list[int | None] = [None] * len(pids)
    deadline, stop_at, timed_out = time.monotonic() + req["timeout"], None, False
    while None in rcs:
        for i, pid in enumerate(pids):
            if rcs[i] is None:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    rcs[i] = os.waitstatus_to_exitcode(status)
                    if rcs[i] != 0 and stop_at is None:
                        stop_at = time.monotonic() + req.get("grace", 5.0)
        now = time.monotonic()
        if None in rcs and (now > deadline or (stop_at is not None and now > stop_at)):
            timed_out = now > deadline
            for i, pid in enumerate(pids):
                if rcs[i] is None:
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    rcs[i] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        time.sleep(0.02)
    out.write(json.dumps({"rcs": rcs, "timed_out": timed_out}) + "\n")
    out.flush()


@dataclass
class ForkRunner:
    """The pytest side: one server per test process, `run` mirrors subprocess.run(capture_output, text)."""

    proc: subprocess.Popen | None = None
    capture: str = ""

    def start(self, env: dict) -> "ForkRunner":
        import tempfile

        self.capture = tempfile.mkdtemp(prefix="forkrun-")  # not in the row's folder: its globs stay exact
        self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env, cwd=os.path.dirname(__file__))
        ready = self.proc.stdout.readline()
        if ready != "ready\n":
            raise RuntimeError(f"forkrun server did not start: {ready!r}")
        return self

    def run(self, argv: list[str], cwd, env: dict, timeout: float, fsize: int | None = None) -> subprocess.CompletedProcess:
        out, err = os.path.join(self.capture, "stdout"), os.path.join(self.capture, "stderr")
        req = {"argv": argv, "cwd": str(cwd), "env": env, "stdout": out, "stderr": err, "fsize": fsize,
               "timeout": timeout}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        texts = []
        for path in (out, err):
            with open(path, errors="replace") as fh:
                texts.append(fh.read())
            os.unlink(path)
        if reply["timed_out"]:
            raise subprocess.TimeoutExpired(argv, timeout, output=texts[0], stderr=texts[1])
        return subprocess.CompletedProcess(argv, reply["rc"], texts[0], texts[1])

    def run_group(self, members: list[tuple[list[str], dict]], cwd, timeout: float,
                  grace: float = 5.0) -> list[subprocess.CompletedProcess]:
        """Run (argv, env) members at once, as the processes of one job; one CompletedProcess each.
        A member that fails stops the rest after `grace` seconds; past `timeout`, TimeoutExpired."""
        reqs = [{"argv": argv, "cwd": str(cwd), "env": env, "fsize": None,
                 "stdout": os.path.join(self.capture, f"{i}.stdout"), "stderr": os.path.join(self.capture, f"{i}.stderr")}
                for i, (argv, env) in enumerate(members)]
        self.proc.stdin.write(json.dumps({"group": reqs, "timeout": timeout, "grace": grace}) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        results = []
        for req, rc in zip(reqs, reply["rcs"]):
            texts = []
            for path in (req["stdout"], req["stderr"]):
                with open(path, errors="replace") as fh:
                    texts.append(fh.read())
                os.unlink(path)
            results.append(subprocess.CompletedProcess(req["argv"], rc, texts[0], texts[1]))
        if reply["timed_out"]:
            raise subprocess.TimeoutExpired(members[0][0], timeout, output="".join(r.stdout + r.stderr for r in results))
        return results

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
            import shutil

            shutil.rmtree(self.capture, ignore_errors=True)


if __name__ == "__main__":
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repo, not tests/
    serve()
