"""A private network of "hosts" on one machine: Linux network namespaces on a bridge.

    network = Network()                                  # names: podmh<pid>-<host>
    app1 = network.add_host("app1", "10.77.0.11")
    process = network.popen(app1, ["uwsgi", ...])        # runs inside app1's namespace
    with network.entered(client):                        # this thread's sockets, inside client
        http.client.HTTPConnection("10.77.0.10").request("GET", "/")
    network.destroy()                                    # every process in them killed, then gone

Each host is a namespace with its own loopback and one veth on a bridge that lives in a
namespace of its own: nothing is added to the machine's own network (no address, no
route, no device), so the test's traffic cannot leave its namespaces. The addresses
(10.77.0.0/24) exist only inside them, and two runs at once do not see each other.

Namespaces are named after the pid of the process that made them; ``remove_stale()``
deletes those of processes that are gone (a run killed before its teardown).
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PREFIX = "podmh"
PREFIX_LENGTH = 24
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class NetworkError(Exception):
    pass


@dataclass(frozen=True)
class Host:
    name: str
    namespace: str
    address: str


def ip(*arguments: str, check: bool = True) -> str:
    result = subprocess.run(["ip", *arguments], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise NetworkError(f"ip {' '.join(arguments)}: {result.stderr.strip()}")
    return result.stdout


def _setns(descriptor: int) -> None:
    if _libc.setns(descriptor, _CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns: {os.strerror(error)}")


class Network:
    """A bridge and the hosts on it; see the module docstring."""

    def __init__(self, subnet_prefix_length: int = PREFIX_LENGTH) -> None:
        self.tag = f"{PREFIX}{os.getpid()}"
        self.prefix_length = subnet_prefix_length
        self.hosts: list[Host] = []
        self._namespaces: list[str] = []
        try:
            self.switch = self._namespace("sw")
            ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            ip("-n", self.switch, "link", "set", "br0", "up")
        except BaseException:
            self.destroy()
            raise

    def _namespace(self, name: str) -> str:
        namespace = f"{self.tag}-{name}"
        self._namespaces.append(namespace)  # first: destroy() deletes it even if this fails
        ip("netns", "add", namespace)
        ip("-n", namespace, "link", "set", "lo", "up")
        return namespace

    def add_host(self, name: str, address: str) -> Host:
        """A namespace with ``address`` on eth0, its other end on the bridge."""
        namespace = self._namespace(name)
        # Both ends are made directly in their namespaces: nothing appears in the machine's own.
        port = f"v-{name}"
        ip(
            "link", "add", "name", "eth0", "netns", namespace,
            "type", "veth", "peer", "name", port, "netns", self.switch,
        )  # fmt: skip
        ip("-n", self.switch, "link", "set", "dev", port, "master", "br0", "up")
        ip("-n", namespace, "addr", "add", f"{address}/{self.prefix_length}", "dev", "eth0")
        ip("-n", namespace, "link", "set", "eth0", "up")
        host = Host(name, namespace, address)
        self.hosts.append(host)
        return host

    def command(self, host: Host, command: Sequence[str]) -> list[str]:
        """``command`` run inside ``host`` (``ip netns exec`` execs it: the pid stays the same)."""
        return ["ip", "netns", "exec", host.namespace, *command]

    def popen(
        self,
        host: Host,
        command: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
        **options: Any,
    ) -> subprocess.Popen:
        """Start ``command`` inside ``host``, in a session of its own, its output to ``log``."""
        with open(log or os.devnull, "ab") as output:
            return subprocess.Popen(
                self.command(host, command),
                env=dict(env) if env is not None else None,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **options,
            )

    def run(
        self, host: Host, command: Sequence[str], *, env: Mapping[str, str] | None = None
    ) -> str:
        """Run ``command`` inside ``host`` to its end (at most 5 minutes); its output."""
        result = subprocess.run(
            self.command(host, command),
            env=dict(env) if env is not None else None,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            raise NetworkError(
                f"{' '.join(command)} on {host.name} failed ({result.returncode}):\n"
                f"{result.stdout[-2000:]}{result.stderr[-3000:]}"
            )
        return result.stdout

    @contextmanager
    def entered(self, host: Host) -> Iterator[None]:
        """The calling thread inside ``host``'s namespace: sockets it opens meanwhile live there."""
        with open("/proc/thread-self/ns/net") as own, open(f"/run/netns/{host.namespace}") as ns:
            _setns(ns.fileno())
            try:
                yield
            finally:
                _setns(own.fileno())

    def pids(self, host: Host) -> list[int]:
        """Every process running in ``host``'s namespace."""
        return [int(pid) for pid in ip("netns", "pids", host.namespace, check=False).split()]

    def kill_all(self, host: Host, timeout: float = 10.0) -> list[int]:
        """SIGKILL every process of ``host`` and wait until they are gone; their pids."""
        killed = []
        deadline = time.monotonic() + timeout
        while (pids := self.pids(host)) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                killed.append(pid)
            time.sleep(0.05)
        if self.pids(host):
            raise NetworkError(f"processes of {host.name} outlived SIGKILL: {self.pids(host)}")
        return sorted(set(killed))

    def destroy(self) -> None:
        """Kill every process in the namespaces, then delete them (the veths and bridge go too)."""
        for namespace in reversed(self._namespaces):
            _destroy(namespace)
        self._namespaces.clear()
        self.hosts.clear()

    @staticmethod
    def remove_stale() -> list[str]:
        """Delete the namespaces of earlier runs whose process is gone; their names."""
        removed = []
        for line in ip("netns", "list", check=False).splitlines():
            name = line.split()[0] if line.strip() else ""
            match = re.fullmatch(rf"{PREFIX}(\d+)-.+", name)
            if match and not Path(f"/proc/{match[1]}").exists():
                _destroy(name)
                removed.append(name)
        return removed


def _destroy(namespace: str) -> None:
    # Only the processes inside this test's own namespace: found by namespace, killed by pid.
    for _ in range(50):
        pids = [int(pid) for pid in ip("netns", "pids", namespace, check=False).split()]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    ip("netns", "del", namespace, check=False)
