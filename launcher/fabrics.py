"""Cloud GPU fabrics: the pod wiring each vendor documents for multi-node NCCL, one preset per fabric.

    w = wiring(cfg)     # Wiring: devices, env, annotations, volumes, mounts, security, sidecars, node selector

`cluster.fabric` picks a row of PRESETS; `cluster.instance_type` the node type within it (counts
and the node selector come from the type, never from the user's memory); `cluster.fabric_options`
the cluster-specific values, each with the vendor's documented default. launcher/pods.py folds the
Wiring into the one training pod both job APIs render (PyTorchJob replicas, the TrainingRuntime's
`node` job), so nothing here knows a job API.

Without this wiring NCCL does not fail: it quietly runs on TCP sockets (dlrm/dist/netcheck.py tells).
Sources (keys as in the vendors' docs; fetched 2026-12):
  efa        EKS user guide node-efa (manifest: 32 EFA, hugepages-2Mi 5120Mi on p5.48xlarge);
             torchx named_resources_aws (p5 32, p5e 32, p5en 16); EC2 efa-acc-inst-types (p6-b200 8);
             aws-samples/awsome-distributed-training nccl-tests.yaml (FI_* and NCCL_* env), efa-cheatsheet.md
  gke-tcpx   GoogleCloudPlatform/container-engine-accelerators gpudirect-tcpx/ (nccl-test-latest.yaml,
             nccl-config.yaml): tcpx-daemon tcpgpudmarxd-dev:v2.0.12 with installer v3.1.9
  gke-tcpxo  same repo gpudirect-tcpxo/ (README's version table, nccl-test-latest.yaml):
             tcpxo-daemon tcpgpudmarxd-dev:v1.0.21 with installer nccl-plugin-gpudirecttcpx-dev:v1.0.15
  gke-rdma   same repo gpudirect-rdma/ (nccl-test.yaml, nccl-test-a4.yaml); AI-Hypercomputer/gpu-recipes
  azure-ib   Azure/ai-infrastructure-on-azure llm-training chart (rdma/ib per GPU, IPC_LOCK, NCCL env),
             Azure/azhpc-images topology/ndv5-topo.xml
  oci-roce   oracle-quickstart/oci-hpc-oke running-pytorch-jobs-on-oke-using-hostnetwork-with-rdma.md,
             recommended-nccl-rccl-parameters-by-shape.md
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated

from dlrm.errors import ConfigError
from dlrm.typed import Range
from dlrm.dist.netcheck import FABRIC_ENV, FABRICS as NET_FABRICS, PROFILE_ENV
from launcher import names
from launcher.plan import Container, EnvVar, Mount, Volume

# The trainer's network check (dlrm/dist/netcheck.py) knows each fabric's transport and what it needs;
# FABRIC_ENV tells it the preset, PROFILE_ENV names the installer's NCCL profile it sources before NCCL
# starts (so the ~40 FASTRAK/gIB variables stay the installer's).
FABRICS = ("none", *NET_FABRICS)

INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
GKE_ACCELERATOR_LABEL = "cloud.google.com/gke-accelerator"
EFA_RESOURCE = "vpc.amazonaws.com/efa"
GKE_IMAGES = "us-docker.pkg.dev/gce-ai-infra"
# GKE's host folders, written by the vendor's installer DaemonSets.
GKE_NVIDIA_HOST, GKE_GIB_HOST = "/home/kubernetes/bin/nvidia", "/home/kubernetes/bin/gib"


@dataclass
class FabricOptions:
    """Cluster-specific values of the presets; "" / 0 / [] -> the vendor's documented default for the node type."""
    # GKE: the networks behind eth1..ethN (`kubectl get networks.networking.gke.io`); [] -> the docs' names
    # (tcpx vpc1-vpc4, tcpxo vpc1-vpc8, rdma gvnic-1 then rdma-0..rdma-7).
    networks: list[str] = field(default_factory=list)
    # GKE TCPX/TCPXO: the NCCL plugin installer's version on the nodes; the rxdm daemon's must match it.
    plugin_version: str = ""
    daemon_image: str = ""  # "" -> the daemon documented for plugin_version
    efa_hugepages: str = "5120Mi"  # hugepages-2Mi per pod: the EFA driver pre-allocates 5128 x 2 MiB pages
    # Azure: rdma/ib from the Network Operator's SR-IOV plugin (one per NIC), or rdma/shared_ib: 1 (shared plugin).
    rdma_resource: str = "rdma/ib"
    rdma_count: Annotated[int, Range(ge=0, le=64)] = 0  # 0 -> the node type's NICs
    topology_file: str = "/etc/ndv5-topo.xml"  # NCCL_TOPO_FILE for NDv5 (the image carries it), or...
    topology_configmap: str = ""  # ...a ConfigMap with key topo.xml, mounted at /opt/nvidia-topology
    ib_hca: str = ""  # OCI NCCL_IB_HCA; "" -> the shape's documented list


@dataclass(frozen=True)
class Preset:
    """One fabric as its vendor documents it. `nodes`: node type -> its devices per pod (NICs)."""
    nodes: dict[str, int]
    selector_label: str  # the node label that names the node type
    selector_values: dict[str, str] = field(default_factory=dict)  # node type -> label value ({}: the type itself)
    env: dict[str, str] = field(default_factory=dict)
    host_paths: tuple[tuple[str, str, str], ...] = ()  # (volume, node path, mount path in the trainer)
    capabilities: tuple[str, ...] = ()
    privileged: bool = False
    host_network: bool = False
    profile: str = ""  # the installer's NCCL env profile (PROFILE_ENV)
    sidecar: bool = False  # GKE TCPX/TCPXO: the rxdm daemon as a native sidecar


# Google's TCPX nccl-config.yaml: CPU bindings of the A3 High's NICs, by NUMA node.
_TCPX_TX = "eth1:8-21,112-125;eth2:8-21,112-125;eth3:60-73,164-177;eth4:60-73,164-177"
_TCPX_RX = "eth1:22-35,126-139;eth2:22-35,126-139;eth3:74-87,178-191;eth4:74-87,178-191"

PRESETS: dict[str, Preset] = {
    "efa": Preset(
        nodes={"p5.48xlarge": 32, "p5e.48xlarge": 32, "p5en.48xlarge": 16, "p6-b200.48xlarge": 8},
        selector_label=INSTANCE_TYPE_LABEL,
        # aws-ofi-nccl >= 1.7 needs none of FI_PROVIDER / FI_EFA_USE_DEVICE_RDMA; older ones do, and they are harmless.
        env={"FI_PROVIDER": "efa", "FI_EFA_USE_DEVICE_RDMA": "1", "FI_EFA_FORK_SAFE": "1",
             "NCCL_BUFFSIZE": "8388608", "NCCL_P2P_NET_CHUNKSIZE": "524288"}),
    "gke-tcpx": Preset(
        nodes={"a3-highgpu-8g": 4}, selector_label=GKE_ACCELERATOR_LABEL,
        selector_values={"a3-highgpu-8g": "nvidia-h100-80gb"},
        # Google's test pod mounts the daemon's socket folder at /tmp, the plugin's default; ours keeps /tmp
        # (the trainer's scratch) and points the plugin at /run/tcpx instead, as Google's Slurm tooling does.
        env={"LD_LIBRARY_PATH": "/usr/local/nvidia/lib64", "NCCL_GPUDIRECTTCPX_UNIX_CLIENT_PREFIX": "/run/tcpx",
             "NCCL_SOCKET_IFNAME": "eth0", "NCCL_GPUDIRECTTCPX_SOCKET_IFNAME": "eth1,eth2,eth3,eth4",
             "NCCL_GPUDIRECTTCPX_CTRL_DEV": "eth0", "NCCL_CROSS_NIC": "0", "NCCL_ALGO": "Ring,Tree", "NCCL_PROTO": "Simple",
             "NCCL_NET_GDR_LEVEL": "PIX", "NCCL_P2P_PXN_LEVEL": "0", "NCCL_DYNAMIC_CHUNK_SIZE": "524288",
             "NCCL_P2P_NET_CHUNKSIZE": "524288", "NCCL_P2P_PCI_CHUNKSIZE": "524288", "NCCL_P2P_NVL_CHUNKSIZE": "1048576",
             "NCCL_BUFFSIZE": "4194304", "NCCL_NSOCKS_PERTHREAD": "4", "NCCL_SOCKET_NTHREADS": "1",
             "NCCL_GPUDIRECTTCPX_TX_BINDINGS": _TCPX_TX, "NCCL_GPUDIRECTTCPX_RX_BINDINGS": _TCPX_RX,
             "NCCL_GPUDIRECTTCPX_PROGRAM_FLOW_STEERING_WAIT_MICROS": "500000"},
        host_paths=(("nvidia-libs", f"{GKE_NVIDIA_HOST}/lib64", "/usr/local/nvidia/lib64"), ("tcpx-socket", "/run/tcpx", "/run/tcpx")),
        capabilities=("IPC_LOCK",), sidecar=True),
    "gke-tcpxo": Preset(
        nodes={"a3-megagpu-8g": 8}, selector_label=GKE_ACCELERATOR_LABEL,
        selector_values={"a3-megagpu-8g": "nvidia-h100-mega-80gb"},
        env={"LD_LIBRARY_PATH": "/usr/local/nvidia/lib64", "NCCL_FASTRAK_LLCM_DEVICE_DIRECTORY": "/dev/aperture_devices",
             "NCCL_LIB_DIR": "/usr/local/nvidia/lib64"},
        host_paths=(("nvidia", GKE_NVIDIA_HOST, "/usr/local/nvidia"), ("aperture-devices", "/dev/aperture_devices", "/dev/aperture_devices")),
        capabilities=("IPC_LOCK",), profile="/usr/local/nvidia/lib64/nccl-env-profile.sh", sidecar=True),
    "gke-rdma": Preset(
        nodes={"a3-ultragpu-8g": 8, "a4-highgpu-8g": 8}, selector_label=GKE_ACCELERATOR_LABEL,
        selector_values={"a3-ultragpu-8g": "nvidia-h200-141gb", "a4-highgpu-8g": "nvidia-b200"},
        # Google's gIB troubleshooting page: gIB's lib64 first on the loader's path, then the driver's
        env={"LD_LIBRARY_PATH": "/usr/local/gib/lib64:/usr/local/nvidia/lib64", "NCCL_PLUGIN_PATH": "/usr/local/gib/lib64",
             "NCCL_SOCKET_IFNAME": "eth0,eth1"},
        host_paths=(("nvidia", GKE_NVIDIA_HOST, "/usr/local/nvidia"), ("gib", GKE_GIB_HOST, "/usr/local/gib")),
        profile="/usr/local/gib/scripts/set_nccl_env.sh"),
    "azure-ib": Preset(
        nodes={"Standard_ND96isr_H100_v5": 8, "Standard_ND96isr_H200_v5": 8}, selector_label=INSTANCE_TYPE_LABEL,
        env={"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "NCCL_SOCKET_IFNAME": "eth0", "NCCL_IB_PCI_RELAXED_ORDERING": "1",
             "NCCL_IB_QPS_PER_CONNECTION": "4", "NCCL_IGNORE_CPU_AFFINITY": "1", "NCCL_P2P_NET_CHUNKSIZE": "524288",
             "NCCL_PXN_DISABLE": "1", "NCCL_MIN_NCHANNELS": "32", "UCX_TLS": "rc", "UCX_NET_DEVICES": "mlx5_ib0:1"},
        capabilities=("IPC_LOCK",)),  # without it `ulimit -l` stays 64 KiB and verbs cannot pin memory
    "oci-roce": Preset(
        nodes={"BM.GPU.H100.8": 16, "BM.GPU.H200.8": 8}, selector_label=INSTANCE_TYPE_LABEL,
        env={"NCCL_CUMEM_ENABLE": "0", "NCCL_IB_SPLIT_DATA_ON_QPS": "0",
             "NCCL_IB_GID_INDEX": "3", "NCCL_IB_TC": "41", "NCCL_IB_SL": "0", "NCCL_IB_TIMEOUT": "22",
             "NCCL_SOCKET_IFNAME": "eth0", "NCCL_IGNORE_CPU_AFFINITY": "1"},
        host_paths=(("infiniband", "/dev/infiniband", "/dev/infiniband"),),
        capabilities=("IPC_LOCK",), privileged=True, host_network=True),
}
DEFAULT_NODE = {"efa": "p5.48xlarge", "gke-tcpx": "a3-highgpu-8g", "gke-tcpxo": "a3-megagpu-8g", "gke-rdma": "a3-ultragpu-8g",
                "azure-ib": "Standard_ND96isr_H100_v5", "oci-roce": "BM.GPU.H100.8"}
# OCI's HCAs per shape (recommended-nccl-rccl-parameters-by-shape.md): the RDMA NICs, not the host's own.
OCI_HCAS = {"BM.GPU.H100.8": "=mlx5_0,mlx5_1,mlx5_3,mlx5_4,mlx5_5,mlx5_6,mlx5_7,mlx5_8,mlx5_9,mlx5_10,mlx5_12,mlx5_13,"
                             "mlx5_14,mlx5_15,mlx5_16,mlx5_17",
            "BM.GPU.H200.8": "=mlx5_0,mlx5_3,mlx5_4,mlx5_5,mlx5_6,mlx5_9,mlx5_10,mlx5_11"}
# The rxdm daemon released with each plugin installer: the two talk over a versioned protocol, so a
# daemon of another release leaves NCCL without its data path.
DAEMONS = {"gke-tcpx": {"v3.1.9": f"{GKE_IMAGES}/gpudirect-tcpx/tcpgpudmarxd-dev:v2.0.12"},
           "gke-tcpxo": {"v1.0.15": f"{GKE_IMAGES}/gpudirect-tcpxo/tcpgpudmarxd-dev:v1.0.21"}}
DEFAULT_PLUGIN = {"gke-tcpx": "v3.1.9", "gke-tcpxo": "v1.0.15"}
GKE_NETWORKS = {"gke-tcpx": [f"vpc{i}" for i in range(1, 5)], "gke-tcpxo": [f"vpc{i}" for i in range(1, 9)],
                "gke-rdma": ["gvnic-1", *(f"rdma-{i}" for i in range(8))]}
TOPOLOGY_MOUNT = "/opt/nvidia-topology"


@dataclass
class Wiring:
    """What a fabric adds to the training pod (launcher/pods.py merges it)."""
    devices: dict[str, object] = field(default_factory=dict)  # resources limits (requests default to them)
    env: list[EnvVar] = field(default_factory=list)
    annotations: dict[str, str] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    volumes: list[Volume] = field(default_factory=list)
    mounts: list[Mount] = field(default_factory=list)
    capabilities: list[str] = field(default_factory=list)
    privileged: bool = False
    host_network: bool = False
    sidecars: list[Container] = field(default_factory=list)


def _fail(message: str) -> None:
    raise ConfigError(message)


def node_type(cfg) -> str:
    """The node type the preset wires for: cluster.instance_type, else the preset's documented default."""
    return cfg.cluster.instance_type or DEFAULT_NODE.get(cfg.cluster.fabric, "")


def check(cfg) -> None:
    """The fabric's settings against its table; each error names the field, the value and what fits."""
    c, o = cfg.cluster, cfg.cluster.fabric_options
    if c.fabric == "none":
        if c.efa:
            _fail(f"cluster.efa={c.efa} needs cluster.fabric=efa (which also sets the EFA env and node selector)")
        if c.instance_type:
            _fail(f"cluster.instance_type={c.instance_type} is read by a fabric preset: set cluster.fabric "
                  f"({', '.join(FABRICS[1:])}), or use cluster.node_selector")
        return
    names.check_name("cluster.instance_type", c.instance_type, names.LABEL_VALUE, optional=True)  # a node label's value
    preset, node = PRESETS[c.fabric], node_type(cfg)
    if node not in preset.nodes and not (c.fabric == "efa" and c.efa):
        _fail(f"cluster.instance_type={node!r} is not a node type of cluster.fabric={c.fabric} "
              f"(known: {', '.join(preset.nodes)})" + ("; for another EFA instance type give its count, cluster.efa"
                                                         if c.fabric == "efa" else ""))
    if c.efa and c.fabric != "efa":
        _fail(f"cluster.efa={c.efa} with cluster.fabric={c.fabric}: EFA devices are AWS's; leave cluster.efa 0")
    if c.fabric == "efa" and c.efa and node in preset.nodes and c.efa != preset.nodes[node]:
        _fail(f"cluster.efa={c.efa}: {node} has {preset.nodes[node]} EFA devices and a pod that asks for another "
              f"count never schedules; leave cluster.efa 0 (the instance type's count)")
    if c.fabric in DAEMONS and not o.daemon_image and (o.plugin_version or DEFAULT_PLUGIN[c.fabric]) not in DAEMONS[c.fabric]:
        _fail(f"cluster.fabric_options.plugin_version={o.plugin_version}: no documented {c.fabric} daemon for that "
              f"installer (known: {', '.join(DAEMONS[c.fabric])}); set cluster.fabric_options.daemon_image to the "
              f"tcpgpudmarxd image released with it")
    if o.networks and c.fabric in GKE_NETWORKS and len(o.networks) != len(GKE_NETWORKS[c.fabric]):
        _fail(f"cluster.fabric_options.networks has {len(o.networks)} names; {c.fabric} wires "
              f"{len(GKE_NETWORKS[c.fabric])} interfaces (eth1..eth{len(GKE_NETWORKS[c.fabric])})")
    if c.fabric == "azure-ib" and not o.topology_file.startswith("/"):
        _fail(f"cluster.fabric_options.topology_file={o.topology_file!r} must be an absolute path in the image")


def _interfaces(networks: list[str]) -> str:
    """GKE's multi-network annotation: eth0 on the pod network, eth1.. on the fabric's networks."""
    items = [{"interfaceName": "eth0", "network": "default"}]
    items += [{"interfaceName": f"eth{i}", "network": n} for i, n in enumerate(networks, 1)]
    return json.dumps(items, separators=(",", ":"))


def _daemon(cfg) -> tuple[Container, list[Volume]]:
    """The rxdm daemon (tcpgpudmarxd) as a native sidecar: it runs as long as the trainer and serves
    its GPU-to-NIC data path; the host's sysfs and procfs let it program the NICs' flow steering."""
    o, fabric = cfg.cluster.fabric_options, cfg.cluster.fabric
    image = o.daemon_image or DAEMONS[fabric][o.plugin_version or DEFAULT_PLUGIN[fabric]]
    vols = [Volume("sys", "hostPath", {"path": "/sys"}), Volume("proc-sys", "hostPath", {"path": "/proc/sys"})]
    mounts = [Mount("sys", "/hostsysfs"), Mount("proc-sys", "/hostprocsysfs")]
    if fabric == "gke-tcpx":
        command = ["/tcpgpudmarxd/build/app/tcpgpudmarxd", "--gpu_nic_preset", "a3vm", "--gpu_shmem_type", "fd",
                   "--uds_path", "/run/tcpx", "--setup_param", "--verbose 128 2 0"]
        mounts += [Mount("nvidia-libs", "/usr/local/nvidia/lib64"), Mount("tcpx-socket", "/run/tcpx")]
        caps = ["NET_ADMIN"]
    else:
        command = ["/fts/entrypoint_rxdm_container.sh", "--num_hops=2", "--num_nics=8", "--uid=", "--alsologtostderr"]
        mounts += [Mount("nvidia", "/usr/local/nvidia")]
        caps = ["NET_ADMIN", "NET_BIND_SERVICE"]
    # root, as the vendor runs it (it opens the GPUs and binds privileged ports), with only these capabilities
    security = {"runAsUser": 0, "runAsNonRoot": False, "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"], "add": caps}}
    sidecar = Container(f"{fabric.removeprefix('gke-')}-daemon", image=image, command=command,
                        env=[EnvVar("LD_LIBRARY_PATH", "/usr/local/nvidia/lib64")], mounts=mounts, security=security,
                        pull_policy=cfg.cluster.image_pull_policy, sidecar=True)
    return sidecar, vols


def wiring(cfg) -> Wiring:
    """The pod parts of cfg.cluster.fabric for its node type (check(cfg) passed); empty for none."""
    c, o = cfg.cluster, cfg.cluster.fabric_options
    if c.fabric == "none":
        return Wiring()
    preset, node = PRESETS[c.fabric], node_type(cfg)
    w = Wiring(capabilities=list(preset.capabilities), privileged=preset.privileged, host_network=preset.host_network,
               node_selector={preset.selector_label: preset.selector_values.get(node, node)})
    env = {FABRIC_ENV: c.fabric, **preset.env}
    if preset.profile:
        env[PROFILE_ENV] = preset.profile
    for name, host, path in preset.host_paths:
        w.volumes.append(Volume(name, "hostPath", {"path": host}))
        w.mounts.append(Mount(name, path))
    if c.fabric == "efa":
        w.devices[EFA_RESOURCE] = preset.nodes.get(node) or c.efa
        if o.efa_hugepages:
            w.devices["hugepages-2Mi"] = o.efa_hugepages
    elif c.fabric == "azure-ib":
        w.devices[o.rdma_resource] = o.rdma_count or preset.nodes[node]
        env["NCCL_TOPO_FILE"] = f"{TOPOLOGY_MOUNT}/topo.xml" if o.topology_configmap else o.topology_file
        if o.topology_configmap:
            w.volumes.append(Volume("nccl-topology", "configMap", {"name": o.topology_configmap}))
            w.mounts.append(Mount("nccl-topology", TOPOLOGY_MOUNT, read_only=True))
    elif c.fabric == "oci-roce":
        env["NCCL_IB_HCA"] = o.ib_hca or OCI_HCAS[node]
    if c.fabric in GKE_NETWORKS:
        w.annotations = {"networking.gke.io/default-interface": "eth0",
                         "networking.gke.io/interfaces": _interfaces(o.networks or GKE_NETWORKS[c.fabric])}
    if preset.sidecar:
        sidecar, vols = _daemon(cfg)
        # GKE's device injection (NRI on A3 Mega, the GPU plugin on A3 High) by container name: the
        # daemon reaches the GPUs without a GPU request of its own.
        gpus = [f"/dev/nvidia{i}" for i in range(8)] + ["/dev/nvidiactl", "/dev/nvidia-uvm"]
        gpus += ["/dev/dmabuf_import_helper"] if c.fabric == "gke-tcpxo" else []
        w.annotations[f"devices.gke.io/container.{sidecar.name}"] = "".join(f"- path: {d}\n" for d in gpus)
        w.sidecars.append(sidecar)
        w.volumes += vols
    w.env = [EnvVar(k, v) for k, v in sorted(env.items())]
    return w
