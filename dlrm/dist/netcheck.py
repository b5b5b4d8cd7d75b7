"""The network check at the start of every distributed run: which transport, and how fast.

    prepare(backend)                                   # before the process group: NCCL's profile, INIT/NET INFO on
    with captured_init(backend): dist.init_process_group(...)   # NCCL's start-up lines kept for the check
    net = check(runtime, allreduce_bytes, alltoall_bytes, mode="fail")
    net   # {"backend": "nccl", "transport": "AWS Libfabric", "fabric": "efa",
          #  "all_reduce": {"bytes": B, "seconds": t, "busbw_GBps": x}, "all_to_all": {...}}

A fabric whose pod wiring is incomplete does not fail: NCCL quietly falls back to TCP sockets and
the job runs at a few GB/s instead of hundreds. So rank 0 says which network NCCL picked (parsed
from NCCL's own INFO lines, `Using network ...`), and times one all-reduce and one all-to-all at the
job's own message sizes. Bus bandwidth as nccl-tests computes it (its PERFORMANCE.md): algbw =
bytes / time; all-reduce busbw = algbw x 2(n-1)/n, all-to-all busbw = algbw x (n-1)/n, where
`bytes` is one rank's buffer. With a fabric preset (DLRM_FABRIC, set by the launcher's pods) and
NCCL on Socket, the run stops naming the preset and what is likely missing (`mode="warn"`: a
warning). On gloo (CPU) it reports its TCP transport and the same two figures. Cost: a few
collectives, capped in size, once.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dlrm.errors import UserError

# Set by the launcher's fabric presets (launcher/fabrics.py) in the training container.
FABRIC_ENV = "DLRM_FABRIC"
PROFILE_ENV = "DLRM_NCCL_ENV_PROFILE"  # a shell script of NCCL settings the node's plugin installer writes
# What NCCL says when each fabric's wiring works (its `Using network <name>` line), and what is likely
# missing when it says Socket instead.
FABRICS = {
    "efa": ("AWS Libfabric", "aws-ofi-nccl and libfabric in the image (build it with EFA_INSTALLER_VERSION), "
                             "or vpc.amazonaws.com/efa from the EFA device plugin"),
    "gke-tcpx": ("GPUDirectTCPX", "the nccl-tcpx-installer DaemonSet's plugin in /usr/local/nvidia/lib64, "
                                  "or the tcpx-daemon sidecar"),
    "gke-tcpxo": ("FasTrak", "the nccl-tcpxo-installer and nri-device-injector DaemonSets, or the tcpxo-daemon sidecar"),
    "gke-rdma": ("gIB", "the nccl-rdma-installer DaemonSet (gIB in /home/kubernetes/bin/gib), or the rdma-0..7 networks"),
    "azure-ib": ("IB", "rdma/ib from the Network Operator's device plugin, IPC_LOCK, or libibverbs in the image"),
    "oci-roce": ("IB", "hostNetwork with /dev/infiniband, a privileged container, or libibverbs in the image"),
}
SOCKET = "Socket"
# Enough to time a collective without a measurable cost: NCCL's buffers beyond this reach full speed
# on every fabric here; gloo over TCP on a CPU test machine stays tiny.
MAX_BYTES = {"nccl": 256 << 20, "gloo": 1 << 20}
ITERS = {"nccl": 5, "gloo": 2}

_USING = re.compile(r"NCCL INFO Using network (\S+(?: \S+)*?)\s*$")
_DEVICES = re.compile(r"NCCL INFO NET/(IB|Socket|OFI|gIB|GPUDirectTCPX|FasTrak)\b(.*)$")


def transport_from_log(text: str) -> dict:
    """{"transport": "AWS Libfabric" | "IB" | "gIB" | "FasTrak" | "Socket" | ..., "detail": "..."} from NCCL INFO lines
    ({} when none says: NCCL_DEBUG unset, or no communicator yet). `Using network X` names the net plugin NCCL
    picked; the NET/<plugin> lines beside it name the devices (the provider, the HCAs, the socket interface)."""
    transport, detail = "", ""
    for line in text.splitlines():
        line = line.rstrip()
        m = _USING.search(line)
        if m and not transport:
            transport = m.group(1)
            transport = "IB" if transport.startswith("IBext") else transport  # HPC-X's IB plugin (IBext_v8)
        d = _DEVICES.search(line)
        if d and not detail and ("Using" in d.group(2) or "Selected" in d.group(2) or "Initializing" in d.group(2)):
            detail = f"NET/{d.group(1)}{d.group(2)}".strip()
    return {"transport": transport, "detail": detail} if transport else {}


def source_profile(path: str, environ=os.environ) -> list[str]:
    """The variables a shell profile exports, put into `environ` unless set already (the pod's env wins);
    returns their names. The installer's script is the one place its many NCCL settings are kept."""
    out = subprocess.run(["bash", "-c", '. "$1" >/dev/null 2>&1 && env -0', "profile", path],
                         capture_output=True, check=False, timeout=30)
    if out.returncode != 0:
        raise UserError(f"{PROFILE_ENV}={path}: sourcing it failed (exit {out.returncode})")
    before = dict(os.environ)
    added = []
    for item in out.stdout.split(b"\0"):
        name, sep, value = item.decode(errors="replace").partition("=")
        # NCCL and libfabric read their variables when NCCL starts; the loader's (LD_LIBRARY_PATH) are the pod's
        if sep and name not in environ and before.get(name) != value and name.startswith(("NCCL_", "FI_")):
            environ[name] = value
            added.append(name)
    return added


def prepare(backend: str, environ=os.environ) -> None:
    """Before the process group, on NCCL: the fabric's NCCL profile sourced, and NCCL's INIT and NET
    INFO lines switched on (the job's own NCCL_DEBUG=INFO or NCCL_DEBUG_FILE is kept as it is)."""
    if backend != "nccl":
        return
    profile = environ.get(PROFILE_ENV)
    if profile and Path(profile).is_file():
        source_profile(profile, environ)
    elif profile:
        print(f"warning: {PROFILE_ENV}={profile} does not exist: the node's NCCL plugin installer has not run "
              f"(or its folder is not mounted)", file=sys.stderr, flush=True)
    if "NCCL_DEBUG_FILE" not in environ and environ.get("NCCL_DEBUG", "").upper() not in ("INFO", "TRACE"):
        # NCCL reads these once, when it starts; WARN lines still print whatever the subsystems
        environ.update(NCCL_DEBUG="INFO", NCCL_DEBUG_SUBSYS=environ.get("NCCL_DEBUG_SUBSYS", "INIT,NET"),
                       **{QUIET_ENV: "1"})


QUIET_ENV = "DLRM_NETCHECK_QUIET"  # set by prepare: INFO lines are ours, not the job's; not shown
_init_log: list[str] = []  # what NCCL printed while the process group started (captured_init)


@contextlib.contextmanager
def captured_init(backend: str, environ=os.environ):
    """Around init_process_group (which starts NCCL's communicator when given the device): NCCL's
    lines on stdout are kept for the check, and passed on to stdout, less the INFO lines prepare()
    switched on for it (all of them when the start fails: they say why). Only file descriptor 1 is
    redirected, and only for this window."""
    if backend != "nccl" or "NCCL_DEBUG_FILE" in environ:
        yield
        return
    sys.stdout.flush()
    saved, failed = os.dup(1), True
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        try:
            yield
            failed = False
        finally:
            sys.stdout.flush()
            _flush_c_stdout()
            os.dup2(saved, 1)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
            _init_log[:] = [text]
            quiet = environ.get(QUIET_ENV) == "1" and not failed
            sys.stdout.write("".join(line for line in text.splitlines(keepends=True) if not (quiet and " NCCL INFO " in line)))
            sys.stdout.flush()


def _flush_c_stdout() -> None:
    try:
        ctypes.CDLL(None).fflush(None)  # NCCL's own buffered writes, before the descriptor goes back
    except (OSError, AttributeError):
        pass


def _nccl_log(environ=os.environ) -> str:
    """NCCL's INFO lines from its start: the job's own NCCL_DEBUG_FILE, else what captured_init kept."""
    pattern = environ.get("NCCL_DEBUG_FILE", "")
    if not pattern:
        return "".join(_init_log)
    path = Path(pattern.replace("%h", socket.gethostname()).replace("%p", str(os.getpid())))
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def bus_bandwidth(op: str, nbytes: int, seconds: float, world: int) -> float:
    """nccl-tests' busbw in GB/s (1e9 bytes) for one rank's buffer of `nbytes` moved in `seconds`."""
    algbw = nbytes / max(seconds, 1e-12) / 1e9
    factor = {"all_reduce": 2 * (world - 1) / world, "all_to_all": (world - 1) / world}[op]
    return algbw * factor


def _timed(runtime, op: str, nbytes: int) -> dict:
    """One rank buffer of ~nbytes (capped, a multiple of the world size), one warm-up, then the mean of
    ITERS runs; the slowest rank's time counts (a collective ends when its last rank does)."""
    import torch  # here, not at the top: the launcher reads this module's constants without torch
    import torch.distributed as dist

    world, backend = runtime.world_size, runtime.backend
    elems = max(world, min(nbytes, MAX_BYTES[backend]) // 4 // world * world)
    x = torch.ones(elems, dtype=torch.float32, device=runtime.device)
    y = torch.empty_like(x)
    run = (lambda: dist.all_reduce(x)) if op == "all_reduce" else (lambda: dist.all_to_all_single(y, x))
    run()
    _sync(runtime)
    t0 = time.perf_counter()
    for _ in range(ITERS[backend]):
        run()
    _sync(runtime)
    elapsed = torch.tensor([(time.perf_counter() - t0) / ITERS[backend]], dtype=torch.float64, device=runtime.device)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
    seconds = float(elapsed.item())
    # 4 significant figures, not fixed decimals: a tiny job's bandwidth on gloo is well below 0.001 GB/s
    return {"bytes": elems * 4, "seconds": float(f"{seconds:.4g}"),
            "busbw_GBps": float(f"{bus_bandwidth(op, elems * 4, seconds, world):.4g}")}


def _sync(runtime) -> None:
    import torch

    if runtime.device.type == "cuda":
        torch.cuda.synchronize(runtime.device)


def check(runtime, allreduce_bytes: int, alltoall_bytes: int, mode: str = "fail", environ=os.environ) -> dict | None:
    """The transport and both bandwidths, the same dict on every rank (rank 0's transport); None for one
    process or mode skip. Raises UserError (mode fail) when a fabric preset is set and NCCL runs on Socket."""
    if not runtime.distributed or mode == "skip":
        return None
    fabric = environ.get(FABRIC_ENV, "none")
    # one node's ranks talk over NVLink / shared memory: its network matters only across nodes
    net: dict = {"backend": runtime.backend, "fabric": fabric, "nodes": runtime.world_size // max(runtime.local_world_size, 1),
                 "memlock_bytes": memlock_limit()}
    result = {"all_reduce": _timed(runtime, "all_reduce", allreduce_bytes),
              "all_to_all": _timed(runtime, "all_to_all", alltoall_bytes)}
    if runtime.backend == "nccl":
        found = transport_from_log(_nccl_log(environ)) or {
            "transport": "unknown", "detail": "NCCL printed no `Using network` line while it started"}
    else:  # gloo: TCP over the interface GLOO_SOCKET_IFNAME names, else the one the hostname resolves to
        found = {"transport": "TCP", "detail": f"interface {environ.get('GLOO_SOCKET_IFNAME') or 'of the hostname'}"}
    import torch.distributed as dist

    shared = [found]
    dist.broadcast_object_list(shared, src=0)  # rank 0's view, so every rank decides alike
    net.update(shared[0], **result)
    message = fabric_unused(net)
    if message and mode == "fail":
        raise UserError(f"{message}; set train.dist.network_check=warn to run anyway")
    for warning in [message, memlock_short(net)]:
        if warning and runtime.is_main:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
    return net


# RDMA pins NCCL's buffers (hundreds of MiB per GPU); a limit below this cannot hold them.
MIN_MEMLOCK = 1 << 30


def memlock_limit() -> int | None:
    """This process's RLIMIT_MEMLOCK in bytes; None: unlimited."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def memlock_short(net: dict) -> str:
    """Why verbs (EFA, IB, RoCE, GPUDirect-TCPX's IPC) may fail to pin memory: the pods run as a non-root
    user, for whom an added IPC_LOCK capability is not effective (Kubernetes sets no ambient capabilities),
    so the container runtime's memlock limit is what counts."""
    limit = net.get("memlock_bytes")
    if net.get("fabric", "none") == "none" or net.get("backend") != "nccl" or limit is None or limit >= MIN_MEMLOCK:
        return ""
    return (f"cluster.fabric={net['fabric']}: the memlock limit (ulimit -l) is {limit // 1024} KiB, too little for RDMA "
            f"to pin NCCL's buffers, and IPC_LOCK does not lift it for a non-root user: the node's container runtime "
            f"must give containers an unlimited memlock limit (containerd's LimitMEMLOCK=infinity)")


def fabric_unused(net: dict) -> str:
    """Why the fabric preset the pod was rendered for is not carrying NCCL's traffic ("" when it is, when
    there is no preset, on gloo, which never uses one, or on one node, whose ranks need no network)."""
    expected = FABRICS.get(net.get("fabric", "none"))
    if net.get("backend") != "nccl" or not expected or net.get("transport") != SOCKET or net.get("nodes", 2) < 2:
        return ""
    return (f"cluster.fabric={net['fabric']}: NCCL runs on Socket (TCP), not {expected[0]}: the fabric is not in use "
            f"(all-reduce {net['all_reduce']['busbw_GBps']:.1f} GB/s); likely missing: {expected[1]}")


def summary(net: dict | None) -> str:
    """The progress line's part: 'net NCCL AWS Libfabric, all-reduce 412.3 GB/s, all-to-all 96.1 GB/s'."""
    if not net:
        return ""
    return (f"net {net['backend'].upper()} {net['transport']}, all-reduce {net['all_reduce']['busbw_GBps']:.3g} GB/s, "
            f"all-to-all {net['all_to_all']['busbw_GBps']:.3g} GB/s")
