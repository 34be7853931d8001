"""A real Slurm cluster on one machine: munged, slurmctld and one slurmd per network namespace.

For trying ``mdeq launch slurm`` by hand and for the tests (``tests/launch/slurm_cluster.py``).
Needs root, iproute2 and the Debian packages ``slurmctld slurmd slurm-client munge``::

    python -m launch.dev.slurm_cluster up --dir /tmp/slurm      # prints `export SLURM_CONF=...`
    export SLURM_CONF=/tmp/slurm/mdeq-slurm-<tag>/slurm.conf
    sinfo; mdeq launch slurm --nodes 2 --gpus-per-node 0 --time 10 --submit -- train --config ...
    python -m launch.dev.slurm_cluster down --dir /tmp/slurm/mdeq-slurm-<tag>
    python -m launch.dev.slurm_cluster down --leftovers        # whatever a killed run left behind

Each slurmd runs as ``nsenter --net=<ns> unshare --uts --mount sh -c "...; exec slurmd -D"``: its own
network, host name and ``/etc/hosts``, but this machine's ``/sys`` (``ip netns exec`` mounts a fresh
one, and slurmd then fails to find its cgroup filesystem). Everything is removed by PID and by name.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from launch.dev.slurm_layout import (
    LEFTOVER_DIR,
    LEFTOVER_LINK,
    LEFTOVER_NAMESPACE,
    NODE_INTERFACE,
    ClusterLayout,
    NodeSpec,
    hosts_file,
    new_layout,
    slurm_conf,
)

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "sdiag", "ip", "nsenter", "unshare")


def unavailable_reason() -> str | None:
    """Why a cluster cannot be started here (None when it can)."""
    missing = [tool for tool in DAEMONS if shutil.which(tool) is None]
    if missing:
        return (f"needs {', '.join(missing)}: apt-get install -y slurmctld slurmd slurm-client munge iproute2 "
                "(.ci/run does)")
    if os.geteuid() != 0:
        return "needs root (network namespaces, munged and slurmd run as root; CI runs as root)"
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _spawn(argv: list[str], log: Path) -> int:
    """Start a daemon in its own session (so a Ctrl-C of the caller does not reach it); its PID."""
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True).pid


def namespace_pids(namespace: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, timeout=20)
    return [int(p) for p in out.stdout.split()]


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    for pid in pids:  # reap the ones that are our children, so they do not linger as zombies
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def pids_using(marker: str) -> list[int]:
    """Processes whose command line mentions ``marker`` (the cluster's folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if marker in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
    return found


class SlurmCluster:
    """A running cluster; ``up()``/``down()``, plus what failure tests need (``kill_node``/``start_slurmd``)."""

    def __init__(self, layout: ClusterLayout, pids: dict[str, int] | None = None):
        self.layout = layout
        self.pids: dict[str, int] = dict(pids or {})

    @property
    def env(self) -> dict[str, str]:
        """What a shell needs to use this cluster with the ordinary Slurm commands."""
        return {"SLURM_CONF": str(self.layout.conf)}

    def command(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """A Slurm client command (sinfo, squeue, scontrol ...) against this cluster."""
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **self.env})

    # -- bring-up -------------------------------------------------------------------------------

    def up(self, timeout: float = 60) -> None:
        """Create network, munged, slurmctld and every slurmd; return once every node is idle."""
        root = Path(self.layout.root)
        for sub in ("munge", "state", "spool", "etc"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(root / "munge", 0o700)
        self.layout.save(self.pids)  # before anything exists: `down` works even if up fails half way
        self._network()
        self.layout.conf.write_text(slurm_conf(self.layout))
        (root / "etc" / "hosts").write_text(hosts_file(self.layout))
        self._munged()
        self.pids["slurmctld"] = _spawn(["slurmctld", "-D", "-i", "-f", str(self.layout.conf)],
                                        root / "slurmctld.out")
        self.layout.save(self.pids)
        for node in self.layout.nodes:
            self.start_slurmd(node.name)
        self.wait_nodes("idle", timeout=timeout)

    def _network(self) -> None:
        layout = self.layout
        _ip("link", "add", layout.bridge, "type", "bridge")
        _ip("addr", "add", f"{layout.controller_address}/24", "dev", layout.bridge)
        _ip("link", "set", layout.bridge, "up")
        for node in layout.nodes:
            _ip("netns", "add", node.namespace)
            _ip("link", "add", node.host_link, "type", "veth", "peer", "name", f"{node.host_link}p",
                "netns", node.namespace)
            _ip("-n", node.namespace, "link", "set", f"{node.host_link}p", "name", NODE_INTERFACE)
            _ip("-n", node.namespace, "addr", "add", f"{node.address}/24", "dev", NODE_INTERFACE)
            _ip("-n", node.namespace, "link", "set", NODE_INTERFACE, "up")
            _ip("-n", node.namespace, "link", "set", "lo", "up")
            _ip("link", "set", node.host_link, "master", layout.bridge)
            _ip("link", "set", node.host_link, "up")

    def _munged(self) -> None:
        munge = Path(self.layout.root) / "munge"
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        self.pids["munged"] = _spawn(
            ["munged", "--foreground", "--force", f"--socket={self.layout.munge_socket}", f"--key-file={key}",
             f"--pid-file={munge}/munged.pid", f"--log-file={munge}/munged.log", f"--seed-file={munge}/munged.seed"],
            munge / "munged.out")
        self.layout.save(self.pids)
        deadline = time.monotonic() + 20
        while not self.layout.munge_socket.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"munged did not create its socket; see {munge}/munged.log")
            time.sleep(0.05)

    def start_slurmd(self, name: str) -> int:
        """(Re)start one node's slurmd in its namespace; its PID."""
        node = self.layout.node(name)
        root = Path(self.layout.root)
        (root / "spool" / node.name).mkdir(parents=True, exist_ok=True)
        inner = (f"mount --bind {shlex.quote(str(root / 'etc' / 'hosts'))} /etc/hosts && "
                 f"hostname {node.name} && exec slurmd -D -f {shlex.quote(str(self.layout.conf))}")
        pid = _spawn(["nsenter", f"--net=/run/netns/{node.namespace}", "unshare", "--uts", "--mount",
                      "sh", "-c", inner], root / f"slurmd-{node.name}.out")
        self.pids[f"slurmd:{node.name}"] = pid
        self.layout.save(self.pids)
        return pid

    # -- state ----------------------------------------------------------------------------------

    def node_states(self) -> dict[str, str]:
        """``{node: state}`` as sinfo reports it (``idle``, ``alloc``, ``down*`` ...)."""
        done = self.command("sinfo", "--noheader", "--Node", "--format=%N %T")
        if done.returncode != 0:
            return {}
        return dict(line.split() for line in done.stdout.splitlines() if line.strip())

    def wait_nodes(self, state: str, timeout: float, nodes: list[str] | None = None) -> None:
        """Until every node (or ``nodes``) is in ``state`` (as sinfo's %T prints it, without flags)."""
        names = nodes or [n.name for n in self.layout.nodes]
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = self.node_states()
            if all(states.get(n, "").rstrip("*~#!%$@^-") == state for n in names):
                return
            self._check_daemons()
            time.sleep(0.2)
        raise TimeoutError(f"nodes {names} not {state} after {timeout:.0f} s: {states}; logs in {self.layout.root}")

    def wait_controller_rpcs_done(self, timeout: float) -> None:
        """Until slurmctld has no RPC agent running or queued (``sdiag``).

        A node failure's requeue sends the job's old incarnation a kill that slurmctld retries against
        the dead node for up to MessageTimeout (at most 10) seconds. A slurmd that comes back within
        that window gets the kill and answers "epilog complete" for the job id, which slurmctld (22.05)
        books against the *requeued* incarnation if it already runs: the node is dropped from it and
        its srun waits forever for "busy" nodes. Restart a killed node's slurmd only after this.
        """
        deadline = time.monotonic() + timeout
        counters: dict[str, int] = {}
        while time.monotonic() < deadline:
            done = self.command("sdiag")
            counters = {name: int(value) for name, value in
                        re.findall(r"^Agent (queue size|count|thread count):\s*(\d+)", done.stdout, re.M)}
            if done.returncode == 0 and len(counters) == 3 and not any(counters.values()):
                return
            self._check_daemons()
            time.sleep(0.2)
        raise TimeoutError(f"slurmctld still has RPC agents after {timeout:.0f} s ({counters}); "
                           f"logs in {self.layout.root}")

    def _check_daemons(self) -> None:
        for name in ("munged", "slurmctld"):
            pid = self.pids.get(name)
            if pid is not None and not Path(f"/proc/{pid}").exists():
                raise RuntimeError(f"{name} died; see the logs in {self.layout.root}")
            with contextlib.suppress(ChildProcessError, OSError):
                if pid is not None and os.waitpid(pid, os.WNOHANG)[0] == pid:
                    raise RuntimeError(f"{name} exited; see the logs in {self.layout.root}")

    # -- failures and teardown ------------------------------------------------------------------

    def kill_node(self, name: str) -> list[int]:
        """SIGKILL every process of the node (slurmd, job steps, ranks): a node dying. The PIDs killed."""
        node: NodeSpec = self.layout.node(name)
        killed: list[int] = []
        for _ in range(5):  # processes forked while we kill: repeat until none is left
            pids = namespace_pids(node.namespace)
            if not pids:
                break
            _kill(pids)
            killed += pids
            time.sleep(0.1)
        return killed

    def down(self) -> None:
        """Remove everything: processes by PID, by namespace and by folder name; namespaces, links, files."""
        for node in self.layout.nodes:
            _kill(namespace_pids(node.namespace))
        _kill(list(self.pids.values()))
        _kill(pids_using(f"mdeq-slurm-{self.layout.tag}/"))
        for node in self.layout.nodes:
            subprocess.run(["ip", "netns", "del", node.namespace], capture_output=True, timeout=20)
            subprocess.run(["ip", "link", "del", node.host_link], capture_output=True, timeout=20)
        subprocess.run(["ip", "link", "del", self.layout.bridge], capture_output=True, timeout=20)


@contextlib.contextmanager
def slurm_cluster(parent: Path, **layout_options) -> Iterator[SlurmCluster]:
    """A cluster for the duration of the block, always torn down (also when ``up`` fails)."""
    cluster = SlurmCluster(new_layout(parent, **layout_options))
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down()


def remove_leftovers() -> list[str]:
    """Namespaces, links and daemons of clusters whose owner died without ``down``: what was removed."""
    removed = []
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=20).stdout
    for name in (line.split()[0] for line in listing.splitlines() if line.strip()):
        if LEFTOVER_NAMESPACE.match(name):
            _kill(namespace_pids(name))
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20)
            removed.append(f"namespace {name}")
    for pid in (p for p in pids_using("mdeq-slurm-") if LEFTOVER_DIR.search(_cmdline(p))):
        _kill([pid])
        removed.append(f"process {pid}")
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=20).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if LEFTOVER_LINK.match(name):
            subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=20)
            removed.append(f"link {name}")
    return removed


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.dev.slurm_cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    up = sub.add_parser("up", help="start a cluster under DIR (left running)")
    up.add_argument("--dir", type=Path, required=True)
    up.add_argument("--nodes", type=int, default=2)
    up.add_argument("--debug", action="store_true", help="daemons log at debug2 with job, step and RPC-agent traces")
    down = sub.add_parser("down", help="stop a cluster started by `up`")
    down.add_argument("--dir", type=Path, help="the cluster's folder (…/mdeq-slurm-<tag>)")
    down.add_argument("--leftovers", action="store_true", help="remove every cluster's leftovers")
    args = parser.parse_args(argv)
    reason = unavailable_reason()
    if reason:
        print(f"slurm_cluster: {reason}", file=sys.stderr)
        return 2
    if args.action == "up":
        args.dir.mkdir(parents=True, exist_ok=True)
        cluster = SlurmCluster(new_layout(args.dir, nodes=args.nodes, debug=args.debug))
        try:
            cluster.up()
        except BaseException:
            cluster.down()
            raise
        print(f"export SLURM_CONF={cluster.layout.conf}")
        print(f"# stop it with: python -m launch.dev.slurm_cluster down --dir {cluster.layout.root}")
        return 0
    if args.leftovers:
        for line in remove_leftovers():
            print(f"removed {line}")
        return 0
    if args.dir is None or not (args.dir / "cluster.json").is_file():
        print("slurm_cluster: down needs --dir <the folder `up` printed> (holding cluster.json) or --leftovers",
              file=sys.stderr)
        return 2
    SlurmCluster(*ClusterLayout.load(args.dir)).down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
