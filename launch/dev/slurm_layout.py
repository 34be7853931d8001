"""What a throwaway Slurm cluster on one machine is made of: names, addresses, ports, files.

Every name carries a per-cluster tag (6 hex digits) so clusters of parallel test runs never
collide, and the ones a crashed run left behind can be found by pattern (``LEFTOVER_*``):

- controller: ``slurmctld`` and one ``munged`` in this machine's own network namespace, reached on
  a bridge ``mdeq<tag>br`` with address ``10.213.<x>.1``;
- node K: network namespace ``mdeq-<tag>-n<K>`` with address ``10.213.<x>.<K+1>`` on a veth pair
  (``mdeq<tag>v<K>`` on the bridge, ``eth0`` inside), its own host name ``mdeq-n<K>`` and an
  ``/etc/hosts`` naming every node, as DNS would on a real cluster;
- files under ``<dir>/mdeq-slurm-<tag>/``: ``slurm.conf``, the munge key and socket, state,
  spool, per-daemon logs and ``cluster.json`` (what was created, for ``down``).
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

LEFTOVER_NAMESPACE = re.compile(r"^mdeq-[0-9a-f]{6}-n[0-9]+$")
LEFTOVER_LINK = re.compile(r"^mdeq[0-9a-f]{6}(br|v[0-9]+)$")
LEFTOVER_DIR = re.compile(r"mdeq-slurm-[0-9a-f]{6}/")
NODE_INTERFACE = "eth0"  # the same inside every node, so one GLOO_SOCKET_IFNAME fits all of them


@dataclass
class NodeSpec:
    """One compute node: a network namespace running one slurmd."""

    name: str  # Slurm NodeName and the namespace's host name
    namespace: str
    address: str
    host_link: str  # the veth end on the bridge


@dataclass
class ClusterLayout:
    """Names, addresses and ports of one cluster; everything ``up`` creates and ``down`` removes."""

    tag: str
    root: str  # folder holding every file of the cluster
    bridge: str
    controller_address: str
    controller_port: int
    slurmd_port: int
    nodes: list[NodeSpec] = field(default_factory=list)
    cpus_per_node: int = 2
    slurmd_timeout: int = 10
    debug: bool = False  # daemons log at debug2, with the job, step and RPC-agent traces

    @property
    def conf(self) -> Path:
        return Path(self.root) / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return Path(self.root) / "munge" / "munge.sock"

    @property
    def state_file(self) -> Path:
        return Path(self.root) / "cluster.json"

    def node(self, name: str) -> NodeSpec:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node {name!r} (nodes: {', '.join(n.name for n in self.nodes)})")

    def save(self, pids: dict[str, int]) -> None:
        self.state_file.write_text(json.dumps({"layout": asdict(self), "pids": pids}, indent=1))

    @staticmethod
    def load(root: Path) -> tuple[ClusterLayout, dict[str, int]]:
        saved = json.loads((root / "cluster.json").read_text())
        layout = saved["layout"]
        layout["nodes"] = [NodeSpec(**n) for n in layout["nodes"]]
        return ClusterLayout(**layout), saved["pids"]


def _used_subnets() -> set[int]:
    """Third octets of 10.213.x.0/24 already routed on this machine."""
    out = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True, timeout=20).stdout
    out += subprocess.run(["ip", "-4", "addr", "show"], capture_output=True, text=True, timeout=20).stdout
    return {int(m) for m in re.findall(r"\b10\.213\.(\d+)\.", out)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def new_layout(parent: Path, nodes: int = 2, cpus_per_node: int = 2, slurmd_timeout: int = 10,
               debug: bool = False) -> ClusterLayout:
    """A fresh tag, a 10.213.x.0/24 subnet nobody on this machine routes yet, and free ports."""
    tag = secrets.token_hex(3)
    used = _used_subnets()
    free = [x for x in range(1, 255) if x not in used]
    if not free:
        raise RuntimeError("every 10.213.x.0/24 subnet is in use on this machine: remove leftover clusters "
                           "(python -m launch.dev.slurm_cluster down --leftovers)")
    subnet = secrets.choice(free)
    root = (parent / f"mdeq-slurm-{tag}").resolve()
    specs = [NodeSpec(name=f"mdeq-n{k}", namespace=f"mdeq-{tag}-n{k}", address=f"10.213.{subnet}.{k + 1}",
                      host_link=f"mdeq{tag}v{k}") for k in range(1, nodes + 1)]
    return ClusterLayout(tag=tag, root=str(root), bridge=f"mdeq{tag}br", controller_address=f"10.213.{subnet}.1",
                         controller_port=_free_port(), slurmd_port=_free_port(), nodes=specs,
                         cpus_per_node=cpus_per_node, slurmd_timeout=slurmd_timeout, debug=debug)


def slurm_conf(layout: ClusterLayout) -> str:
    """The whole slurm.conf: no accounting database, no cgroups, quick failure detection."""
    root = layout.root
    lines = [
        f"ClusterName=mdeq{layout.tag}",
        # slurmctld insists on running on the host named here; clients reach it on the bridge address
        f"SlurmctldHost={socket.gethostname()}({layout.controller_address})",
        f"SlurmctldPort={layout.controller_port}",
        f"SlurmdPort={layout.slurmd_port}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={layout.munge_socket}",
        f"StateSaveLocation={root}/state",
        f"SlurmctldPidFile={root}/slurmctld.pid",
        f"SlurmctldLogFile={root}/slurmctld.log",
        f"SlurmdSpoolDir={root}/spool/%n",
        f"SlurmdPidFile={root}/slurmd-%n.pid",
        f"SlurmdLogFile={root}/slurmd-%n.log",
        "ProctrackType=proctrack/linuxproc",
        # ranks bound to the cores srun gives each task, as on most clusters: a missing
        # --cpus-per-task at srun then shows as a narrower affinity mask
        "TaskPlugin=task/affinity",
        "TaskPluginParam=Cores",
        "MpiDefault=none",
        "SwitchType=switch/none",
        "SchedulerType=sched/builtin",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "SlurmdParameters=config_overrides",  # the nodes share this machine's cores
        "ReturnToService=2",  # a node that was down is usable again as soon as its slurmd registers
        "JobRequeue=1",
        f"SlurmdTimeout={layout.slurmd_timeout}",  # a dead node is declared down after this long
        "KillWait=30",
        "MinJobAge=3600",  # finished jobs stay visible to squeue/scontrol (there is no sacct)
        "AccountingStorageType=accounting_storage/none",
        "JobAcctGatherType=jobacct_gather/none",
        "JobCompType=jobcomp/filetxt",
        f"JobCompLoc={root}/jobcomp.log",
    ]
    if layout.debug:
        lines += ["SlurmctldDebug=debug2", "SlurmdDebug=debug2", "DebugFlags=Agent,Steps,TraceJobs"]
    for node in layout.nodes:
        lines.append(f"NodeName={node.name} NodeAddr={node.address} CPUs={layout.cpus_per_node} State=UNKNOWN")
    lines.append("PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


def hosts_file(layout: ClusterLayout) -> str:
    """``/etc/hosts`` as every node sees it: the nodes by name, as a cluster's DNS would have them."""
    lines = ["127.0.0.1 localhost"]
    lines += [f"{node.address} {node.name}" for node in layout.nodes]
    lines.append(f"{layout.controller_address} {socket.gethostname()}")
    return "\n".join(lines) + "\n"
