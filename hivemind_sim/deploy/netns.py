"""Deployed peers in Linux network namespaces: one per peer, joined by a bridge.

For ``hivemind-sim deploy --netns``. Each peer gets a network namespace of its own with a
veth pair (``eth0`` inside, with an address in ``10.77.0.0/16``; the other end on a bridge in
the deployer's namespace), its access rates as ``tc tbf`` qdiscs (uplink on its ``eth0``,
downlink on the bridge's end), and partitions cut the link layer: each side's bridge ends move
to a bridge of their own. ``netem`` is not used (many kernels lack it): the topology's delays
go into the peers' TCP transports instead (``hivemind_core.net.delays``).

Nothing here touches the machine's own network. The deployer runs in a namespace made for it
(:func:`reexec_in_namespace`: ``unshare`` a network, mount and PID namespace, and a user
namespace where it is not root), builds the network there with :class:`NamespaceNetwork`, and
starts each peer through :meth:`NamespaceNetwork.command`. When the deployer ends, the kernel
ends every process in its PID namespace and every namespace goes with them.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import errno
import functools
import ipaddress
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

INSIDE = "HIVEMIND_SIM_NETNS"
"""Set (to "1") in the environment of a command run by :func:`reexec_in_namespace`."""
SUBNET = ipaddress.IPv4Network("10.77.0.0/16")
BRIDGE = "hm-br0"
"""The bridge every peer's link is on (and the deployer, at ``10.77.0.1``), unless partitioned."""
MAX_TBF_BPS = 8 * (2**32 - 1)
"""tbf's rate field holds 32 bits of bytes/s (~34 Gbit/s): faster links are left uncapped."""
_PROBE_TIMEOUT = 30.0
# the command is PID 1 of a namespace of its own: when it ends (or unshare is killed), so does
# every process it started
_PID_NAMESPACE = ["--pid", "--fork", "--kill-child", "--mount-proc"]
_MNT_DETACH = 2
_T = TypeVar("_T")


def inside_namespace() -> bool:
    """Whether this process runs in the namespace :func:`reexec_in_namespace` made."""
    return os.environ.get(INSIDE) == "1"


def netns_unavailable() -> str | None:
    """None when network namespaces can be made here; otherwise one line saying why."""
    try:
        import pyroute2  # noqa: F401
    except ImportError:
        return "network namespaces need pyroute2, which is not installed: pip install '.[deploy]'"
    if inside_namespace():
        return None if os.geteuid() == 0 else "not root inside the deployment's namespace"
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"network namespaces need util-linux's {tool}, which is not on PATH"
    return _namespace_prefix()[1]


def namespace_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` as the command that runs it in a fresh namespace (see :func:`reexec_in_namespace`)."""
    prefix, why = _namespace_prefix()
    if prefix is None:
        raise RuntimeError(why)
    return [*prefix, "--", *argv]


def reexec_in_namespace(argv: Sequence[str], *, timeout: float | None = None) -> int:
    """Run ``argv`` as root of fresh network, mount and PID namespaces; returns its exit code.

    Where this process is not root, a user namespace maps it to root there: that is what lets
    an unprivileged user build bridges and qdiscs, in namespaces no one else sees. ``argv``
    finds ``INSIDE`` set in its environment, so a command that re-executes itself this way
    does not do it twice. It is PID 1 of its PID namespace: when it ends, or ``timeout`` runs
    out (``subprocess.TimeoutExpired``), every process it started ends too.
    """
    command = namespace_argv(argv)
    environment = {**os.environ, INSIDE: "1"}
    return subprocess.run(command, env=environment, timeout=timeout, check=False).returncode


@functools.cache
def _namespace_prefix() -> tuple[list[str] | None, str | None]:
    """The ``unshare`` invocation that works here, or None and why none does (probed once)."""
    users = [[], ["--user", "--map-root-user"]] if os.geteuid() == 0 else [["--user", "--map-root-user"]]
    bases = [["unshare", *user, "--net", "--mount"] for user in users]
    candidates = [[*base, *pid] for base in bases for pid in (_PID_NAMESPACE, [])]
    failure = ""
    for prefix in candidates:
        failure = _run_probe([*prefix, "--", "true"])
        if not failure:
            break
    else:
        return None, (
            f"network namespaces are not permitted here: {' '.join(bases[-1])} failed ({failure}); "
            "run as root or enable unprivileged user namespaces"
        )
    # -P: not the script's own directory on sys.path (its neighbours are no top-level modules)
    failure = _run_probe([*prefix, "--", sys.executable, "-P", os.path.abspath(__file__), "--probe"])
    if failure:
        return None, (
            f"network namespaces cannot be set up here: a bridge, veth pair and tbf qdisc inside "
            f"`{' '.join(prefix)}` failed ({failure})"
        )
    return prefix, None


def _run_probe(argv: list[str]) -> str:
    """Empty if ``argv`` succeeds, else the last line it wrote to stderr."""
    try:
        result = subprocess.run(
            argv, env={**os.environ, INSIDE: "1"}, capture_output=True, text=True, timeout=_PROBE_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return str(error)
    if result.returncode == 0:
        return ""
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else f"exit status {result.returncode}"
    return last.removeprefix("unshare: ")[:300]


@dataclass(frozen=True)
class _Peer:
    index: int
    address: str
    path: str
    """Where its network namespace is mounted (in the deployer's mount namespace)."""
    outer: str
    """Its veth's end on the bridge side."""


class NamespaceNetwork:
    """A bridge in this namespace and a network namespace per peer; see the module docstring.

    Namespaces are pyroute2's ``netns.create`` at paths in a directory of this deployment
    (not ``/run/netns``): no ``ip netns``, no holder process per peer, and the mounts live in
    the deployer's private mount namespace, so they vanish with it even if it is killed.
    Netlink work runs on one thread of its own (pyroute2's synchronous calls run an event
    loop, which cannot nest in the caller's), so every method may be called from a running
    event loop; each blocks it for the milliseconds the kernel takes.

    Peers are numbered in the order :meth:`host` first names them, each in a /24 of its own
    (``10.77.1.1``, ``10.77.2.1``...; one link-layer network ``10.77.0.0/16``), so the DHT's
    per-/24 contact limit sees them as different sites, as in the simulator.
    """

    name = "netns"

    def __init__(self) -> None:
        self._addresses: dict[str, str] = {}
        self._peers: dict[str, _Peer] = {}
        self._cut: list[str] = []  # bridges of the current partition's sides
        self._run_dir: str | None = None
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None
        self._outer: Any = None  # IPRoute of this namespace (on the worker thread)

    def __enter__(self) -> NamespaceNetwork:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def bridge_address(self) -> str:
        """The deployer's own address on the bridge."""
        return str(SUBNET.network_address + 1)

    @property
    def peers(self) -> list[str]:
        """Peers with a namespace, in the order they got one."""
        return list(self._peers)

    def start(self) -> None:
        """Bring up the bridge; must run inside :func:`reexec_in_namespace` (or as root there)."""
        if not inside_namespace() or os.geteuid() != 0:
            raise RuntimeError(
                "NamespaceNetwork must run as root inside reexec_in_namespace(...), "
                "so that nothing it builds lands in this machine's own network"
            )
        if self._worker is not None:
            raise RuntimeError("this network is started already")
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="netlink")
        try:
            self._run(self._start)
        except BaseException:
            self.close()
            raise

    def host(self, name: str) -> str:
        """The address ``name`` listens on and announces (given on first ask, created by :meth:`add`)."""
        address = self._addresses.get(name)
        if address is None:
            number = len(self._addresses) + 1
            if number // 256 > 252:
                raise ValueError(f"{SUBNET} has room for {253 * 256 - 1} peers")
            address = str(SUBNET.network_address + (number % 256) * 256 + 1 + number // 256)
            self._addresses[name] = address
        return address

    address = host

    def add(self, name: str, uplink_bps: float | None = None, downlink_bps: float | None = None) -> str:
        """Give ``name`` its namespace, link and rates (bits/s; None: uncapped); returns its address."""
        if name in self._peers:
            raise ValueError(f"peer {name!r} has a namespace already")
        for rate in (uplink_bps, downlink_bps):
            _check_rate(rate)
        address = self.host(name)
        index = list(self._addresses).index(name)
        assert self._run_dir is not None, "start() the network first"
        peer = _Peer(index, address, os.path.join(self._run_dir, f"peer{index}"), f"hm-v{index}")
        self._run(self._add, peer, uplink_bps, downlink_bps)
        self._peers[name] = peer
        return address

    def command(self, name: str, argv: Sequence[str]) -> list[str]:
        """``argv`` as the command that runs it in ``name``'s namespace (added uncapped if new)."""
        if name not in self._peers:
            self.add(name)
        return ["nsenter", f"--net={self._peers[name].path}", "--", *argv]

    def set_rates(self, name: str, uplink_bps: float | None, downlink_bps: float | None) -> bool:
        """Cap ``name``'s uplink and downlink (bits/s; None: uncapped), e.g. for a ``degrade``."""
        for rate in (uplink_bps, downlink_bps):
            _check_rate(rate)
        self._run(self._set_rates, self._peer(name), uplink_bps, downlink_bps)
        return True

    def partition(self, sides: Iterable[Collection[str]]) -> bool:
        """Cut the sides apart at the link layer (peers on no side form one more, with the deployer).

        Each side's bridge ends move to a bridge of their own: a side's peers still reach each
        other, and nothing crosses (frames are dropped: connections stall, as on a cut link).
        A new partition replaces the one in force.
        """
        groups = [list(dict.fromkeys(side)) for side in sides]
        seen: set[str] = set()
        for group in groups:
            for name in group:
                self._peer(name)
                if name in seen:
                    raise ValueError(f"peer {name!r} is on more than one side of the partition")
                seen.add(name)
        self._run(self._partition, [[self._peers[n] for n in group] for group in groups if group])
        return True

    def heal(self) -> None:
        """Every peer back on the one bridge."""
        self._run(self._heal)

    def close(self) -> None:
        """Remove every link, bridge and namespace (stop the peers first: a running process
        keeps its namespace alive, unreachable)."""
        if self._worker is None:
            return
        try:
            self._run(self._teardown)
        finally:
            self._worker.shutdown()
            self._worker = None
            self._peers.clear()

    # ---- on the netlink thread -----------------------------------------------------------

    def _run(self, function: Callable[..., _T], *args: Any) -> _T:
        if self._worker is None:
            raise RuntimeError("start() the network first")
        return self._worker.submit(function, *args).result()

    def _peer(self, name: str) -> _Peer:
        peer = self._peers.get(name)
        if peer is None:
            raise ValueError(f"peer {name!r} has no namespace (add() it first)")
        return peer

    def _start(self) -> None:
        from pyroute2 import IPRoute

        self._run_dir = tempfile.mkdtemp(prefix="hivemind-netns-")
        self._outer = outer = IPRoute()
        outer.link("set", index=outer.link_lookup(ifname="lo")[0], state="up")
        outer.link("add", ifname=BRIDGE, kind="bridge")
        bridge = outer.link_lookup(ifname=BRIDGE)[0]
        outer.addr("add", index=bridge, address=self.bridge_address, prefixlen=SUBNET.prefixlen)
        outer.link("set", index=bridge, state="up")

    def _add(self, peer: _Peer, uplink_bps: float | None, downlink_bps: float | None) -> None:
        from pyroute2 import IPRoute, netns

        netns.create(peer.path)
        outer = self._outer
        outer.link("add", ifname=peer.outer, kind="veth", peer={"ifname": "eth0", "net_ns_fd": peer.path})
        index = outer.link_lookup(ifname=peer.outer)[0]
        outer.link("set", index=index, master=outer.link_lookup(ifname=BRIDGE)[0], state="up")
        with IPRoute(netns=peer.path) as inner:
            inner.link("set", index=inner.link_lookup(ifname="lo")[0], state="up")
            eth0 = inner.link_lookup(ifname="eth0")[0]
            inner.addr("add", index=eth0, address=peer.address, prefixlen=SUBNET.prefixlen)
            inner.link("set", index=eth0, state="up")
            _shape(inner, eth0, uplink_bps)
        _shape(outer, index, downlink_bps)

    def _set_rates(self, peer: _Peer, uplink_bps: float | None, downlink_bps: float | None) -> None:
        from pyroute2 import IPRoute

        with IPRoute(netns=peer.path) as inner:
            _shape(inner, inner.link_lookup(ifname="eth0")[0], uplink_bps)
        _shape(self._outer, self._outer.link_lookup(ifname=peer.outer)[0], downlink_bps)

    def _partition(self, sides: list[list[_Peer]]) -> None:
        self._heal()
        outer = self._outer
        for number, side in enumerate(sides, start=1):
            bridge = f"hm-br{number}"
            outer.link("add", ifname=bridge, kind="bridge")
            self._cut.append(bridge)
            index = outer.link_lookup(ifname=bridge)[0]
            outer.link("set", index=index, state="up")
            for peer in side:
                outer.link("set", index=outer.link_lookup(ifname=peer.outer)[0], master=index)

    def _heal(self) -> None:
        outer = self._outer
        if not self._cut:
            return
        bridge = outer.link_lookup(ifname=BRIDGE)[0]
        for peer in self._peers.values():
            outer.link("set", index=outer.link_lookup(ifname=peer.outer)[0], master=bridge)
        while self._cut:
            outer.link("del", index=outer.link_lookup(ifname=self._cut.pop())[0])

    def _teardown(self) -> None:
        from pyroute2 import netns

        outer, problems = self._outer, []
        if outer is None:
            return
        names = [peer.outer for peer in self._peers.values()] + [*self._cut, BRIDGE]
        for ifname in names:  # a veth's end goes with its pair
            try:
                outer.link("del", index=outer.link_lookup(ifname=ifname)[0])
            except Exception as error:
                problems.append(f"{ifname}: {error}")
        self._cut.clear()
        for peer in self._peers.values():
            try:
                netns.remove(peer.path)
            except OSError as error:
                problems.append(f"{peer.path}: {error}")
        outer.close()
        self._outer = None
        if self._run_dir is not None:  # netns.create bind-mounted the directory onto itself
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            libc.umount2(self._run_dir.encode(), _MNT_DETACH)
            with contextlib.suppress(OSError):
                os.rmdir(self._run_dir)
        if problems:
            logger.warning("tearing the namespace network down left: %s", "; ".join(problems))


def _check_rate(bps: float | None) -> None:
    if bps is not None and not bps >= 8:
        raise ValueError(f"a rate must be at least 8 bits/s or None (uncapped), got {bps!r}")


def _shape(ipr: Any, index: int, bps: float | None) -> None:
    """``bps`` as the egress tbf of interface ``index``; None (or beyond tbf's range): none.

    A burst of 4 ms of traffic (at least two full frames) keeps the rate smooth at the scale
    of a round trip; the queue holds 100 ms more, like an access link's buffer, before it drops.
    """
    from pyroute2.netlink.exceptions import NetlinkError
    from pyroute2.netlink.rtnl import TC_H_ROOT

    if bps is None or bps > MAX_TBF_BPS:
        try:
            ipr.tc("del", index=index, parent=TC_H_ROOT)
        except NetlinkError as error:
            if error.code not in (errno.ENOENT, errno.EINVAL):
                raise
        return
    bytes_per_second = int(bps) // 8
    burst = max(bytes_per_second // 250, 2 * 1514)
    ipr.tc("replace", "tbf", index, rate=f"{int(bps)}bit", burst=burst, limit=burst + bytes_per_second // 10)


def _probe() -> None:
    """Build and tear down a one-peer network with a rate cap (run by ``netns_unavailable``)."""
    with NamespaceNetwork() as network:
        network.add("probe", 8e6, 8e6)


if __name__ == "__main__" and sys.argv[1:] == ["--probe"]:
    _probe()
