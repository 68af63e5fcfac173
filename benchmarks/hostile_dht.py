"""Hostile DHT peers over real TCP: how a well-behaved DHT client fares, and the victim's memory.

The behaviours are those of ``hivemind_sim.swarms.hostile`` (its docstring defines them), played
by a real ``DHTNode`` on ``127.0.0.2`` speaking the ordinary wire format. For each case a fresh
victim (``hivemind-core dht``) and a second honest peer run in their own processes on 127.0.0.1;
the attacker joins through the victim while still honest, then a client (own process, client
mode, joined through the victim) stores and gets a key every 20 ms, checking that a get returns
the value it stored. After ``--before`` seconds the attacker turns hostile for ``--during``:

* ``foreign_endpoint``: its requests announce the honest peer's endpoint or a made-up one
  (10.x.y.z:7000, or a closed port on 127.0.0.2), and it pings the victim and the
  honest peer every ANNOUNCE_PERIOD so the lie travels;
* ``unparsable_endpoint``: the same with ``junk``, ``1.2.3.4:0080``, ``::1:80``, ``host:99999``;
* ``junk_contacts``: every find answer's contacts are junk (bad endpoints, short keys, nil);
* ``phantom_contacts``: every find answer names as many contacts as asked, well-formed, fresh
  keys at one of TARPITS tarpits on 127.0.0.3 (dials time out: see ``Tarpits``; 10.x addresses
  would not do, a sandbox may proxy them);
* ``phantom_values``: every find answer claims a made-up value, with the latest expiration a
  node accepts, for each id asked (under the key it saw stored there, when it saw one);
  ``phantom_values_owned`` is the same with the client's keys owned (signed) by the client;
* ``store_flood``: STORE_FLOOD_SLOTS loops store fresh 1 KiB records to the victim as fast as it
  answers;
* ``never_read``: NEVER_READ_CONNECTIONS connections pipeline finds of 20 ids each and never
  read the replies (reconnecting when dropped).

Victims run with ``--no-subnet-limit`` and the client and attacker with ``max_per_subnet=None``:
every peer is on 127.0.0.0/24, and the attacker must be a contact for its lies to matter.
Reports the client's success rate and latency before and during (and how many gets returned a
value it never stored), the attacker's hostile acts (lies told, answers rewritten, stores sent;
``never_read``'s frames are not counted), the victim's resident memory at start and at its peak
(VmHWM) and its log, and the load average. Final line: JSON with every case.
Run it as a script (it imports ``hostile_tcp`` beside it); against another checkout with
``PYTHONPATH=/path/to/checkout``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
from hostile_tcp import ATTACKER_HOST, CLIENT_PERIOD, CLIENT_TIMEOUT, memory_kib, pipeline, stop, summarize

from hivemind_core.dht import DHTConfig, DHTNode
from hivemind_core.dht.codec import encode_node, encode_record
from hivemind_core.dht.ids import ID_BYTES, key_id
from hivemind_core.dht.storage import DHTRecord
from hivemind_core.net import TcpConfig, TcpTransport

UNPARSABLE = ("junk", "1.2.3.4:0080", "::1:80", "host:99999")
"""As in ``hivemind_sim.swarms.hostile`` (not imported: it pulls in torch)."""
ANNOUNCE_PERIOD = 0.2
FLOOD_VALUE_BYTES = 1024
STORE_FLOOD_SLOTS = 4
NEVER_READ_IDS = 20
NEVER_READ_CONNECTIONS = 8
MAX_REMEMBERED_KEYS = 4096
TARPIT_HOST = "127.0.0.3"
TARPITS = 64
WRONG_VALUE = -2.0
"""A client sample for a get that returned a value other than the one stored (a failure)."""
LOOPBACK = DHTConfig(max_per_subnet=None)


def made_up(rng: random.Random) -> str:
    return f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}:7000"


class Tarpits:
    """Endpoints whose dials time out, like unroutable addresses: each a listener whose one-slot
    accept queue is already full, so the kernel drops every further SYN."""

    def __init__(self, count: int) -> None:
        self.sockets: list[socket.socket] = []
        self.endpoints: list[str] = []
        for _ in range(count):
            listener = socket.socket()
            listener.bind((TARPIT_HOST, 0))
            listener.listen(0)
            filler = socket.create_connection(listener.getsockname(), timeout=5)
            self.sockets += [listener, filler]
            self.endpoints.append(f"{TARPIT_HOST}:{listener.getsockname()[1]}")

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


# ---- the well-behaved client (runs in its own process) ---------------------------------------


async def good_client(endpoint: str, *, seconds: float, owned: bool) -> list[list[float]]:
    """Join, print ``ready <monotonic>``, then for ``seconds`` store a key and get it back every
    CLIENT_PERIOD: [[sent_at, ms, or -1 for a failure, WRONG_VALUE for a get of another value]]."""
    node = await DHTNode.create(TcpTransport(), initial_peers=[endpoint], client_mode=True, config=LOOPBACK)
    prefix = f"{node.identity.ownership_marker}/" if owned else ""
    start = time.monotonic()
    print("ready", start, flush=True)
    samples: list[list[float]] = []
    try:
        for round_number in itertools.count():
            if time.monotonic() >= start + seconds:
                break
            started = time.monotonic()
            key = f"{prefix}key{round_number // 2 % 64}"
            outcome = -1.0
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLIENT_TIMEOUT):
                    if round_number % 2 == 0:
                        ok = await node.store(key, round_number, node.now() + 60)
                    else:
                        found = await node.get(key)
                        ok = found is not None and found.value == round_number - 1
                        outcome = WRONG_VALUE if found is not None and not ok else outcome
                if ok:
                    outcome = (time.monotonic() - started) * 1000
            samples.append([started, outcome])
            await asyncio.sleep(max(0.0, started + CLIENT_PERIOD - time.monotonic()))
    finally:
        await node.shutdown()
    return samples


# ---- the attacker (this process): a real node on ATTACKER_HOST, turned hostile ---------------


class Attacker:
    """A DHT node joined through the victim; ``start(behaviour)`` turns it hostile until ``stop``."""

    def __init__(self, node: DHTNode, victim: str, honest: str, rng: random.Random) -> None:
        self.node, self.victim, self.honest, self.rng = node, victim, honest, rng
        self.tasks: list[asyncio.Task[None]] = []
        self.acts = 0
        self.closed = socket.socket()  # bound, never listening: a port that refuses every dial
        self.closed.bind((ATTACKER_HOST, 0))
        self.tarpits = Tarpits(0)

    def start(self, behaviour: str, deadline: float) -> None:
        starts: dict[str, Callable[[float], None]] = {
            "foreign_endpoint": lambda _: self._lie_about_endpoint(self._foreign),
            "unparsable_endpoint": lambda _: self._lie_about_endpoint(lambda: self.rng.choice(UNPARSABLE)),
            "junk_contacts": lambda _: self._rewrite_finds(self._junk_contacts),
            "phantom_contacts": self._phantom,
            "phantom_values": lambda _: self._claim_values(),
            "phantom_values_owned": lambda _: self._claim_values(),
            "store_flood": self._store_flood,
            "never_read": self._never_read,
        }
        starts[behaviour](deadline)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.closed.close()
        self.tarpits.close()

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        self.tasks.append(asyncio.ensure_future(coroutine))

    # lying about where it listens
    def _foreign(self) -> str:
        """The honest peer's endpoint, an unroutable one, or a closed port on its own host (the
        only kind a victim may believe: a requester must announce the host it calls from)."""
        pick = self.rng.randrange(3)
        if pick == 0:
            return self.honest
        return made_up(self.rng) if pick == 1 else f"{ATTACKER_HOST}:{self.closed.getsockname()[1]}"

    def _lie_about_endpoint(self, lie: Callable[[], str]) -> None:
        calls, public_key = self.node.calls, self.node.identity.public_key

        def lying_me() -> list[Any]:
            self.acts += 1
            return encode_node(public_key, lie())

        calls.me = lying_me  # type: ignore[method-assign]

        async def spread() -> None:
            while True:
                for endpoint in (self.victim, self.honest):
                    with contextlib.suppress(Exception):
                        await calls.ping(endpoint)
                await asyncio.sleep(ANNOUNCE_PERIOD)

        self._spawn(spread())

    # lying in find answers
    def _wrap(self, method: str, rewrite: Callable[[Any, Any], Any]) -> None:
        rpc = self.node.rpc
        honest = rpc._methods[method]  # the node's own handler: this attacker wraps it

        async def lying(peer: str, body: Any) -> Any:
            return rewrite(body, await honest(peer, body))

        rpc.unregister(method)
        rpc.register(method, lying)

    def _rewrite_finds(self, contacts: Callable[[int], list[list[Any]]]) -> None:
        def rewrite(body: Any, answer: Any) -> Any:
            self.acts += 1
            me, _, results = answer
            fake = contacts(body[2])
            return [me, fake, [[entry, list(range(len(fake)))] for entry, _ in results]]

        self._wrap("dht.find", rewrite)

    def _junk_contacts(self, count: int) -> list[list[Any]]:
        junk: list[list[Any]] = []
        for i in range(count):
            key = self.rng.randbytes(32)
            if i % 3 == 0:
                junk.append(encode_node(key, self.rng.choice(UNPARSABLE)))
            elif i % 3 == 1:
                junk.append([self.rng.randbytes(self.rng.randrange(1, 31)), "127.0.0.1:1"])  # a short key
            else:
                junk.append([key, None])  # a contact nobody can call
        return junk

    def _phantom(self, _deadline: float) -> None:
        self.tarpits = Tarpits(TARPITS)
        self._rewrite_finds(self._phantom_contacts)

    def _phantom_contacts(self, count: int) -> list[list[Any]]:
        endpoints = self.tarpits.endpoints
        return [encode_node(self.rng.randbytes(32), self.rng.choice(endpoints)) for _ in range(count)]

    def _claim_values(self) -> None:
        seen: dict[int, bytes] = {}  # id -> a key stored under it, as this peer saw it

        def remember(body: Any, answer: Any) -> Any:
            for raw in body[1]:
                seen[key_id(raw[0])] = raw[0]
                while len(seen) > MAX_REMEMBERED_KEYS:
                    del seen[next(iter(seen))]
            return answer

        def claim(body: Any, answer: Any) -> Any:
            self.acts += 1
            me, contacts, results = answer
            claimed = []
            for raw_id, (_, indices) in zip(body[1], results, strict=True):
                key = seen.get(int.from_bytes(raw_id, "big"), self.rng.randbytes(16))
                value = msgpack.packb(f"phantom value {self.rng.getrandbits(32)}")
                expiration = self.node.now() + self.node.config.max_ttl
                claimed.append([[key, value, expiration, None], indices])
            return [me, contacts, claimed]

        self._wrap("dht.store", remember)
        self._wrap("dht.find", claim)

    # floods
    def _store_flood(self, deadline: float) -> None:
        async def slot() -> None:
            while time.monotonic() < deadline:
                key = msgpack.packb(f"flood/{self.rng.getrandbits(64)}")
                value = msgpack.packb(self.rng.randbytes(FLOOD_VALUE_BYTES))
                record = DHTRecord(key, None, value, self.node.now() + 3600.0)
                body = [self.node.calls.me(), [encode_record(record, False)]]
                self.acts += 1
                try:
                    await self.node.rpc.call(self.victim, "dht.store", body, timeout=5)
                except Exception:
                    await asyncio.sleep(0.01)

        for _ in range(STORE_FLOOD_SLOTS):
            self._spawn(slot())

    def _never_read(self, deadline: float) -> None:
        for _ in range(NEVER_READ_CONNECTIONS):
            ids = [self.rng.randbytes(ID_BYTES) for _ in range(NEVER_READ_IDS)]
            body = [self.node.calls.me(), ids, self.node.config.k]
            self._spawn(pipeline(self.victim, method="dht.find", body=body, read=False, deadline=deadline))


CASES = (
    "foreign_endpoint",
    "unparsable_endpoint",
    "junk_contacts",
    "phantom_contacts",
    "phantom_values",
    "phantom_values_owned",
    "store_flood",
    "never_read",
)


# ---- one case ----------------------------------------------------------------------------------


def start_dht(duration: float, log: Any, initial_peers: list[str]) -> tuple[subprocess.Popen[str], str]:
    """``hivemind-core dht --no-subnet-limit`` in a child process; returns it and its endpoint."""
    command = [sys.executable, "-m", "hivemind_core.cli", "dht", "--no-subnet-limit"]
    command += ["--duration", str(duration)]
    if initial_peers:
        command += ["--initial-peers", *initial_peers]
    peer = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    assert peer.stdout is not None
    banner = peer.stdout.readline().strip()
    if "listening on" not in banner:
        peer.kill()
        raise RuntimeError(f"the dht peer did not start: {banner!r}")
    return peer, banner.split()[-1]


async def attack(
    name: str, victim: str, honest: str, client_log: Any, *, before: float, during: float
) -> tuple[float, int, subprocess.Popen[str]]:
    """Join the attacker, start the client, attack once it has run ``before`` seconds; returns
    when the attack began, how many hostile acts it made, and the client process."""
    node = await DHTNode.create(
        TcpTransport(TcpConfig(host=ATTACKER_HOST)), initial_peers=[victim], config=LOOPBACK
    )
    attacker = Attacker(node, victim, honest, random.Random(name))
    command = [sys.executable, __file__, "--good-client", victim, "--seconds", str(before + during)]
    if name.endswith("_owned"):
        command.append("--owned")
    client = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=client_log, text=True)
    try:
        assert client.stdout is not None
        ready = await asyncio.get_running_loop().run_in_executor(None, client.stdout.readline)
        if not ready.startswith("ready"):
            raise RuntimeError(f"the client did not start: {ready!r}")
        attack_at = float(ready.split()[1]) + before
        await asyncio.sleep(max(0.0, attack_at - time.monotonic()))
        attacker.start(name, attack_at + during)
        await asyncio.sleep(max(0.0, attack_at + during - time.monotonic()))
        await attacker.stop()
    except BaseException:
        client.kill()
        raise
    finally:
        await node.shutdown(handoff_timeout=0)
    return attack_at, attacker.acts, client


def run_case(name: str, *, before: float, during: float) -> dict[str, Any]:
    with tempfile.TemporaryFile("w+") as log, tempfile.TemporaryFile("w+") as client_log:
        victim, endpoint = start_dht(before + during + 120, log, [])
        honest, honest_endpoint = start_dht(before + during + 120, subprocess.DEVNULL, [endpoint])
        try:
            rss_start = memory_kib(victim.pid, "VmRSS")
            attack_at, acts, client = asyncio.run(
                attack(name, endpoint, honest_endpoint, client_log, before=before, during=during)
            )
            output, _ = client.communicate(timeout=during + 60)
            rss_peak = memory_kib(victim.pid, "VmHWM")
            logged = os.fstat(log.fileno()).st_size  # what it logged before the peers stop
        finally:
            stop(honest)
            stop(victim)
        log.seek(0)
        victim_log = log.buffer.read(logged).decode(errors="replace").splitlines()
        client_log.seek(0)
        client_log_lines = sum(1 for _ in client_log)
    samples = json.loads(output.strip().splitlines()[-1])
    return {
        "before": summarize([s for s in samples if s[0] < attack_at]),
        "during": summarize([s for s in samples if s[0] >= attack_at]),
        "wrong_values_during": sum(1 for s in samples if s[0] >= attack_at and s[1] == WRONG_VALUE),
        "hostile_acts": acts,
        "victim_rss_start_mib": round(rss_start / 1024, 1),
        "victim_rss_peak_mib": round(rss_peak / 1024, 1),
        "victim_log_lines": len(victim_log),
        "victim_log_last": victim_log[-1][:200] if victim_log else None,
        "client_log_lines": client_log_lines,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--before", type=float, default=3.0, help="seconds of calls before the attack")
    parser.add_argument("--during", type=float, default=10.0, help="seconds of attack")
    parser.add_argument("--good-client", metavar="ENDPOINT", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--owned", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.good_client:  # the client process
        print(json.dumps(asyncio.run(good_client(args.good_client, seconds=args.seconds, owned=args.owned))))
        return
    results = {}
    for name in args.cases:
        results[name] = run_case(name, before=args.before, during=args.during)
        print(name, json.dumps(results[name]), flush=True)
    source = os.path.dirname(os.path.dirname(sys.modules["hivemind_core"].__file__ or ""))
    summary = {"source": source, "before_s": args.before, "during_s": args.during, "loadavg": os.getloadavg()}
    print(json.dumps({**summary, "cases": results}))


if __name__ == "__main__":
    main()
