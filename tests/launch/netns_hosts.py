"""Two Linux network namespaces joined by a veth pair: two "hosts" with their own addresses.

Only addresses inside namespaces this helper creates are used (10.231.<n>.1 and .2 on a private
veth link), so nothing outside the test machine is ever contacted. Names carry a per-run suffix so
parallel or leftover runs never collide, and ``two_hosts()`` removes everything in ``finally``,
including processes still running inside the namespaces.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass


def netns_unavailable_reason() -> str | None:
    """Why this machine cannot create namespaces (None when it can)."""
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`); .ci/run installs it"
    if os.geteuid() != 0:
        return "needs root to create network namespaces (CI runs as root)"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=20)


@dataclass
class Host:
    namespace: str
    interface: str
    address: str

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.namespace], capture_output=True, text=True, timeout=20)
        return [int(p) for p in out.stdout.split()]

    def kill_all(self) -> list[int]:
        """SIGKILL every process in this host (a host dying): returns the pids killed."""
        killed = []
        for _ in range(3):  # children forked while we kill: repeat until none are left
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.2)
        return killed


@contextlib.contextmanager
def two_hosts() -> Iterator[tuple[Host, Host]]:
    """Create host A (10.231.n.1) and host B (10.231.n.2); always delete both afterwards."""
    tag = uuid.uuid4().hex[:6]
    subnet = int(tag[:2], 16)  # 0..255: a private /24 per run
    hosts = (Host(f"mdeq-{tag}-a", f"md{tag}a", f"10.231.{subnet}.1"),
             Host(f"mdeq-{tag}-b", f"md{tag}b", f"10.231.{subnet}.2"))
    created: list[Host] = []
    try:
        for host in hosts:
            _ip("netns", "add", host.namespace)
            created.append(host)
        _ip("link", "add", hosts[0].interface, "type", "veth", "peer", "name", hosts[1].interface)
        for host in hosts:
            _ip("link", "set", host.interface, "netns", host.namespace)
            _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", host.interface)
            _ip("-n", host.namespace, "link", "set", host.interface, "up")
            _ip("-n", host.namespace, "link", "set", "lo", "up")
        yield hosts
    finally:
        for host in created:
            host.kill_all()
        for host in created:
            # deleting a namespace also deletes the veth end inside it (and so its peer)
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True, timeout=20)
        with contextlib.suppress(Exception):
            subprocess.run(["ip", "link", "del", hosts[0].interface], capture_output=True, timeout=20)


def namespace_exists(name: str) -> bool:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=20)
    return any(line.split()[0] == name for line in out.stdout.splitlines() if line.strip())
