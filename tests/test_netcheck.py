"""The network check's pure parts: NCCL's transport from its own log lines, nccl-tests' bus bandwidth,
the verdict on a fabric NCCL does not use, the installer's profile. The check itself runs inside the
2-node gloo run of tests/test_dist_train.py (its figures in run.json and the first progress line)."""
from __future__ import annotations

import os

import pytest

from dlrm.dist import netcheck
from dlrm.dist.netcheck import bus_bandwidth, fabric_unused, transport_from_log

# NCCL INFO lines as the vendors' documentation quotes them.
LOGS = {
    # AWS, awsome-distributed-training workshop "NCCL tests" on 2 x p5.48xlarge (the aws-samples repo's
    # micro-benchmarks/nccl-tests README shows the same two lines)
    "efa": ("NCCL INFO NET/OFI Selected Provider is efa (found 32 nics)\nNCCL INFO Using network AWS Libfabric\n",
            "AWS Libfabric", "NET/OFI Selected Provider is efa (found 32 nics)"),
    # Google Cloud, AI Hypercomputer "Troubleshoot NCCL/gIB": the NCCL log format section's two samples
    "gke-rdma": ("a3ultra-vm-0:606:642 [ 6 ] NCCL INFO Using network gIB\n"
                 "a3ultra-vm-0:606:642 [ 6 ] NCCL INFO NET/gIB : Initializing gIB v1.0.2\n",
                 "gIB", "NET/gIB : Initializing gIB v1.0.2"),
    # the same page: the gIB plugin not found, NCCL falls back to its built-in TCP transport...
    "socket": ("... NCCL INFO NET/Plugin: Could not find: libnccl-net.so. Using internal network plugin.\n"
               "... NCCL INFO Using network Socket\n", "Socket", ""),
    # ...or to its built-in InfiniBand/RoCE one
    "ib": ("... NCCL INFO Using network IB\n", "IB", ""),
    # NVIDIA AICR, fabric-attached training: the TCPXO plugin reports itself as FasTrak
    "gke-tcpxo": ("NCCL INFO Using network FasTrak\n", "FasTrak", ""),
    # an NDv5 VM with HPC-X's IB plugin (Azure's HPC image): IBext_v8 is NCCL's IB transport in a plugin
    "azure-ib": ("NCCL INFO NCCL_TOPO_FILE set by environment to /opt/microsoft/ndv5-topo.xml\n"
                 "NCCL INFO NET/IB : Using [0]mlx5_ib0:1/IB/SHARP [1]mlx5_ib1:1/IB/SHARP; OOB ib0:172.16.10.58<0>\n"
                 "NCCL INFO Using network IBext_v8\n", "IB", "NET/IB : Using [0]mlx5_ib0:1/IB/SHARP [1]mlx5_ib1:1/IB/SHARP; "
                 "OOB ib0:172.16.10.58<0>"),
}


@pytest.mark.parametrize("name", sorted(LOGS))
def test_transport_from_nccls_own_lines(name):
    text, transport, detail = LOGS[name]
    assert transport_from_log(text) == {"transport": transport, "detail": detail}


def test_no_using_network_line_says_nothing():
    assert transport_from_log("NCCL INFO NCCL version 2.27.7+cuda12.8\nNCCL INFO Bootstrap : Using eth0:10.0.0.2<0>\n") == {}


def test_bus_bandwidth_is_nccl_tests():
    # awsome-distributed-training, 2 x p5.48xlarge (16 ranks): 16 GiB all-reduce in 66132 us -> busbw 487.09 GB/s
    assert bus_bandwidth("all_reduce", 17179869184, 66132e-6, 16) == pytest.approx(487.09, abs=0.01)
    # all-to-all: algbw x (n-1)/n
    assert bus_bandwidth("all_to_all", 8 * 10**9, 1.0, 8) == pytest.approx(7.0)


def _net(**kw) -> dict:
    return {"backend": "nccl", "fabric": "efa", "nodes": 2, "transport": "Socket", "all_reduce": {"busbw_GBps": 3.9}, **kw}


def test_a_fabric_on_sockets_names_the_preset_and_the_missing_piece():
    message = fabric_unused(_net())
    assert message.startswith("cluster.fabric=efa: NCCL runs on Socket (TCP), not AWS Libfabric") and "aws-ofi-nccl" in message
    assert "3.9 GB/s" in message
    assert "tcpxo-daemon sidecar" in fabric_unused(_net(fabric="gke-tcpxo"))
    assert fabric_unused(_net(transport="AWS Libfabric")) == ""
    assert fabric_unused(_net(fabric="none")) == ""
    assert fabric_unused(_net(backend="gloo", transport="TCP")) == ""
    assert fabric_unused(_net(nodes=1)) == ""  # 8 ranks of one node: NVLink, no network


def test_a_short_memlock_limit_is_named_for_a_fabric_on_nccl():
    assert "ulimit -l) is 64 KiB" in netcheck.memlock_short(_net(memlock_bytes=65536))
    assert netcheck.memlock_short(_net(memlock_bytes=None)) == ""  # unlimited
    assert netcheck.memlock_short(_net(memlock_bytes=65536, fabric="none")) == ""
    assert netcheck.memlock_short(_net(memlock_bytes=65536, backend="gloo")) == ""


def test_prepare_sources_the_installers_profile_and_switches_nccls_start_up_lines_on(tmp_path):
    profile = tmp_path / "nccl-env-profile.sh"
    profile.write_text("export NCCL_FASTRAK_NUM_FLOWS=2\nexport NCCL_BUFFSIZE=8388608\nexport PATH=/nowhere:$PATH\n")
    env = {netcheck.PROFILE_ENV: str(profile), "NCCL_BUFFSIZE": "4194304", "NCCL_DEBUG": "WARN"}
    netcheck.prepare("nccl", env)
    assert env["NCCL_FASTRAK_NUM_FLOWS"] == "2" and env["NCCL_BUFFSIZE"] == "4194304"  # the pod's own value wins
    assert "PATH" not in env
    # the job's WARN becomes INFO of the start-up subsystems, which the check keeps to itself (QUIET_ENV)
    assert (env["NCCL_DEBUG"], env["NCCL_DEBUG_SUBSYS"], env[netcheck.QUIET_ENV]) == ("INFO", "INIT,NET", "1")
    for own in ({"NCCL_DEBUG": "INFO"}, {"NCCL_DEBUG_FILE": "/tmp/nccl.%h.%p"}):
        mine = dict(own)
        netcheck.prepare("nccl", mine)
        assert mine == own  # the job's own NCCL logging is left alone
    gloo: dict = {}
    netcheck.prepare("gloo", gloo)
    assert gloo == {}


def test_nccls_start_up_lines_are_kept_for_the_check_and_its_own_info_lines_not_shown(capfd):
    env = {netcheck.QUIET_ENV: "1"}
    with netcheck.captured_init("nccl", env):  # what NCCL writes to stdout while the process group starts
        os.write(1, b"host:1:2 [0] NCCL INFO NET/IB : Using [0]mlx5_0:1/RoCE ; OOB eth0:10.0.0.2<0>\n"
                    b"host:1:2 [0] NCCL INFO Using network IB\nhost:1:2 [0] NCCL WARN Could not find real path\n")
    assert transport_from_log(netcheck._nccl_log(env))["transport"] == "IB"
    assert capfd.readouterr().out == "host:1:2 [0] NCCL WARN Could not find real path\n"


def test_a_failed_start_shows_every_line_nccl_printed(capfd):
    with pytest.raises(RuntimeError, match="NCCL error"), netcheck.captured_init("nccl", {netcheck.QUIET_ENV: "1"}):
        os.write(1, b"host:1:2 [0] NCCL INFO NET/IB : No device found.\n")
        raise RuntimeError("NCCL error: unhandled system error")
    assert capfd.readouterr().out == "host:1:2 [0] NCCL INFO NET/IB : No device found.\n"
