"""Hostile peers against a real peer: how a well-behaved client fares, and the victim's memory.

For each case a fresh victim (``hivemind-core serve``, default limits) runs in its own
process (started as ``hivemind_sim.swarms.processes.rpc_peer`` would, with its log kept aside). A
well-behaved client, in another process, calls ``ping`` every 20 ms from 127.0.0.1; after
``--before`` seconds this process attacks the victim from 127.0.0.2 for ``--during`` seconds
(attackers reconnect whenever the victim drops them). Cases:

* ``amplification``: 3 connections pipeline 1 MiB ``echo`` requests and never read the replies;
* ``trickle``: 1,100 connections send one byte a second (the client joins anew for each call);
* ``half_open``: 50 connections pipeline ``ping`` requests and never read the replies;
* ``greedy``: 50 connections pipeline ``ping`` requests as fast as the victim answers them.

With ``--victim dht`` the victim is ``hivemind-core dht`` and the client, a client-mode DHT
node joined through it, alternates a store and a get every 20 ms instead of pinging. Two more
cases attack the DHT itself (``--victim dht`` only):

* ``find_repeat``: the attacker stores one ~7.5 MiB entry on the victim, then 2 connections
  pipeline ``dht.find`` requests naming it ``--find-repeats`` (500) times, reading the replies;
* ``contact_flood``: a peer on 127.0.0.2 joins the victim's table and answers every
  ``dht.find`` with 300,000 made-up contacts (a ~20 MB answer), so the client's lookups meet it.

Reports the client's success rate and latency before and during each attack, the victim's
resident memory at the start and at its peak (VmHWM), and how long it took to exit on SIGTERM
once the attack ended (None: still running after 30 s). Final line: JSON with every case.
Run it against another checkout with ``PYTHONPATH=/path/to/checkout``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from hivemind_core.net import RPC, TcpConfig, TcpTransport, parse_endpoint
from hivemind_core.net.frames import FrameKind, encode_frame, encode_header
from hivemind_core.net.rpc import pack

ATTACKER_HOST = "127.0.0.2"
CLIENT_PERIOD = 0.02
CLIENT_TIMEOUT = 5.0
TRICKLED_HEADER = encode_header(FrameKind.REQUEST, 1, 1 << 20)  # then the 1 MiB body, byte by byte


# ---- the well-behaved client (runs in its own process) ---------------------------------------


async def good_client(endpoint: str, *, until: float, new_peer_each_call: bool) -> list[list[float]]:
    """Ping every CLIENT_PERIOD until the monotonic clock reads ``until``: [[sent_at, ms or -1]]."""
    samples: list[list[float]] = []
    rpc = RPC(TcpTransport())
    try:
        while time.monotonic() < until:
            started = time.monotonic()
            caller = RPC(TcpTransport()) if new_peer_each_call else rpc
            try:
                await caller.call(endpoint, "ping", timeout=CLIENT_TIMEOUT)
                samples.append([started, (time.monotonic() - started) * 1000])
            except Exception:
                samples.append([started, -1.0])
            finally:
                if caller is not rpc:
                    await caller.transport.close(grace=0)
            await asyncio.sleep(max(0.0, started + CLIENT_PERIOD - time.monotonic()))
    finally:
        await rpc.transport.close(grace=0)
    return samples


async def good_dht_client(endpoint: str, *, until: float) -> list[list[float]]:
    """Store then get a key every CLIENT_PERIOD through the victim: [[sent_at, ms or -1]] per operation."""
    from hivemind_core.dht import DHTNode

    node = await DHTNode.create(TcpTransport(), initial_peers=[endpoint], client_mode=True)
    samples: list[list[float]] = []
    try:
        for round_number in itertools.count():
            if time.monotonic() >= until:
                break
            started = time.monotonic()
            key = f"key{round_number // 2 % 64}"  # a store, then a get of what it stored
            try:
                async with asyncio.timeout(CLIENT_TIMEOUT):
                    if round_number % 2 == 0:
                        ok = await node.store(key, round_number, node.now() + 60)
                    else:
                        ok = await node.get(key) is not None
                samples.append([started, (time.monotonic() - started) * 1000 if ok else -1.0])
            except Exception:
                samples.append([started, -1.0])
            await asyncio.sleep(max(0.0, started + CLIENT_PERIOD - time.monotonic()))
    finally:
        await node.shutdown()
    return samples


def summarize(samples: list[list[float]]) -> dict[str, Any]:
    done = sorted(ms for _, ms in samples if ms >= 0)
    result: dict[str, Any] = {
        "calls": len(samples),
        "success_rate": round(len(done) / len(samples), 4) if samples else None,
    }
    if len(done) >= 2:
        result["p50_ms"] = round(statistics.median(done), 2)
        result["p99_ms"] = round(statistics.quantiles(done, n=100, method="inclusive")[98], 2)
        result["max_ms"] = round(done[-1], 2)
    return result


# ---- attackers (this process) ------------------------------------------------------------------


class Raw(asyncio.Protocol):
    """An attacker's connection: writes with flow control, reads only if told to."""

    def __init__(self, *, read: bool) -> None:
        self.read = read
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self.sent = 0
        self.writable = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if not self.read:
            transport.pause_reading()
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        pass

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.writable.set()
        if not self.closed.done():
            self.closed.set_result(None)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def connect(endpoint: str, *, read: bool, receive_buffer: int | None = None) -> Raw | None:
    host, port = parse_endpoint(endpoint)
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    try:
        if receive_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.bind((ATTACKER_HOST, 0))
        sock.setblocking(False)
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout=5)
        _, raw = await loop.create_connection(lambda: Raw(read=read), sock=sock)
        return raw
    except (OSError, TimeoutError):
        sock.close()
        return None


async def pipeline(endpoint: str, *, method: str, body: Any, read: bool, deadline: float) -> None:
    """One attacker slot: pipeline requests until ``deadline``, reconnecting when dropped."""
    payload = pack((method, body))
    per_write = max(1, 65536 // len(payload))
    request_id = 0
    while time.monotonic() < deadline:
        raw = await connect(endpoint, read=read, receive_buffer=None if read else 4096)
        if raw is None:
            await asyncio.sleep(0.1)
            continue
        try:
            while not raw.closed.done() and time.monotonic() < deadline:
                try:
                    await asyncio.wait_for(
                        raw.writable.wait(), timeout=max(0.01, deadline - time.monotonic())
                    )
                except TimeoutError:
                    break
                frames = [encode_frame(FrameKind.REQUEST, request_id + i, payload) for i in range(per_write)]
                request_id += per_write
                raw.write(b"".join(frames))
                await asyncio.sleep(0)
        finally:
            raw.abort()


async def trickle(endpoint: str, *, connections: int, deadline: float) -> None:
    """Keep ``connections`` open, each sending one byte a second, reconnecting dropped ones."""
    slots: list[Raw | None] = [None] * connections
    while time.monotonic() < deadline:
        tick = time.monotonic()
        for i, raw in enumerate(slots):
            if raw is None or raw.closed.done():
                slots[i] = None
        missing = [i for i, raw in enumerate(slots) if raw is None]
        fresh = await asyncio.gather(*(connect(endpoint, read=False) for _ in missing))
        for i, raw in zip(missing, fresh, strict=True):
            slots[i] = raw
        for raw in slots:
            if raw is not None:
                raw.write(TRICKLED_HEADER[raw.sent : raw.sent + 1] or b"\x00")
                raw.sent += 1
        await asyncio.sleep(max(0.0, tick + 1.0 - time.monotonic()))
    for raw in slots:
        if raw is not None:
            raw.abort()


async def amplification(endpoint: str, deadline: float) -> None:
    body = bytes(1 << 20)
    await asyncio.gather(
        *(pipeline(endpoint, method="echo", body=body, read=False, deadline=deadline) for _ in range(3))
    )


async def half_open(endpoint: str, deadline: float) -> None:
    await asyncio.gather(
        *(pipeline(endpoint, method="ping", body=None, read=False, deadline=deadline) for _ in range(50))
    )


async def greedy(endpoint: str, deadline: float) -> None:
    await asyncio.gather(
        *(pipeline(endpoint, method="ping", body=None, read=True, deadline=deadline) for _ in range(50))
    )


async def trickle_1100(endpoint: str, deadline: float) -> None:
    await trickle(endpoint, connections=1100, deadline=deadline)


BIG_SUBKEYS = 118
"""Subkeys of ~64 KiB in the entry ``find_repeat`` reads: ~7.5 MiB, under the 8 MiB a key holds."""
FIND_REPEATS = 500


async def find_repeat(endpoint: str, deadline: float) -> None:
    from hivemind_core.dht import Identity
    from hivemind_core.dht.codec import encode_node
    from hivemind_core.dht.ids import ID_BYTES, key_id, serialize_key

    me = encode_node(Identity.generate().public_key, None)
    key = serialize_key("find_repeat")
    expiration = time.time() + 3600
    rpc = RPC(TcpTransport(TcpConfig(host=ATTACKER_HOST)))
    try:
        for i in range(0, BIG_SUBKEYS, 16):
            records = [
                [key, serialize_key(j), pack(bytes(65_000)), expiration, False]
                for j in range(i, min(i + 16, BIG_SUBKEYS))
            ]
            _, results = await rpc.call(endpoint, "dht.store", [me, records], timeout=30)
            assert all(stored for stored, _ in results), results
    finally:
        await rpc.transport.close(grace=0)
    ids = [key_id(key).to_bytes(ID_BYTES, "big")] * FIND_REPEATS
    await asyncio.gather(
        *(
            pipeline(endpoint, method="dht.find", body=[me, ids, 20], read=True, deadline=deadline)
            for _ in range(2)
        )
    )


async def contact_flood(endpoint: str, deadline: float) -> None:
    import random

    from hivemind_core.dht import Identity
    from hivemind_core.dht.codec import encode_node

    rng = random.Random(0)
    identity = Identity.generate()
    fakes = [
        encode_node(rng.randbytes(32), f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}:7000")
        for i in range(300_000)
    ]
    rpc = RPC(TcpTransport(TcpConfig(host=ATTACKER_HOST)))

    async def answer_find(_peer: str, body: Any) -> Any:
        return [me, fakes, [[None, list(range(20))] for _ in body[1]]]

    async def answer_store(_peer: str, body: Any) -> Any:
        return [me, [[True, None] for _ in body[1]]]

    async def answer_ping(_peer: str, _body: Any) -> Any:
        return [me]

    for name, method in (("dht.find", answer_find), ("dht.store", answer_store), ("dht.ping", answer_ping)):
        rpc.register(name, method)
    me = encode_node(identity.public_key, await rpc.serve())
    try:
        while time.monotonic() < deadline:  # stay in the victim's table
            with contextlib.suppress(Exception):
                await rpc.call(endpoint, "dht.ping", [me], timeout=5)
            await asyncio.sleep(1.0)
    finally:
        await rpc.transport.close(grace=0)


CASES: dict[str, tuple[Callable[[str, float], Awaitable[None]], bool]] = {
    # name: (attack, whether the client joins anew for every call)
    "amplification": (amplification, False),
    "trickle": (trickle_1100, True),
    "half_open": (half_open, False),
    "greedy": (greedy, False),
    "find_repeat": (find_repeat, False),
    "contact_flood": (contact_flood, False),
}
DHT_CASES = ("find_repeat", "contact_flood")


# ---- one case ----------------------------------------------------------------------------------


def memory_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def start_victim(duration: float, log: Any, kind: str = "serve") -> tuple[subprocess.Popen[str], str]:
    """``hivemind-core serve`` (or ``dht``) in a child process (its log goes to ``log``); returns it
    and its endpoint."""
    command = [sys.executable, "-m", "hivemind_core.cli", kind, "--duration", str(duration)]
    victim = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    assert victim.stdout is not None
    banner = victim.stdout.readline().strip()
    if "listening on" not in banner:
        victim.kill()
        raise RuntimeError(f"the victim did not start: {banner!r}")
    return victim, banner.split()[-1]


def run_case(name: str, *, before: float, during: float, victim_kind: str = "serve") -> dict[str, Any]:
    attack, new_peer_each_call = CASES[name]
    with tempfile.TemporaryFile("w+") as log:
        victim, endpoint = start_victim(before + during + 60, log, victim_kind)
        try:
            rss_start = memory_kib(victim.pid, "VmRSS")
            start = time.monotonic() + 1.0  # the client process needs a moment to start
            attack_at, end = start + before, start + before + during
            command = [sys.executable, __file__, "--good-client", endpoint, "--until", str(end)]
            if new_peer_each_call:
                command.append("--new-peer-each-call")
            if victim_kind == "dht":
                command.append("--dht-client")
            client = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
            try:
                time.sleep(max(0.0, attack_at - time.monotonic()))
                asyncio.run(asyncio.wait_for(attack(endpoint, end), timeout=during + 30))
                output, _ = client.communicate(timeout=during + 60)
            finally:
                if client.poll() is None:
                    client.kill()
                    client.wait()
            rss_peak = memory_kib(victim.pid, "VmHWM")
        finally:
            exit_s = stop(victim)
        log.seek(0)
        log_lines = sum(1 for _ in log)
    samples = json.loads(output.strip().splitlines()[-1])
    return {
        "before": summarize([s for s in samples if s[0] < attack_at]),
        "during": summarize([s for s in samples if s[0] >= attack_at]),
        "victim_rss_start_mib": round(rss_start / 1024, 1),
        "victim_rss_peak_mib": round(rss_peak / 1024, 1),
        "victim_log_lines": log_lines,
        "victim_sigterm_exit_s": exit_s,
    }


def stop(victim: subprocess.Popen[str]) -> float | None:
    """SIGTERM the victim; seconds it took to exit, None if it had to be killed after 30 s."""
    stopping = time.monotonic()
    victim.terminate()
    try:
        victim.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        victim.kill()
        victim.communicate()
        return None
    return round(time.monotonic() - stopping, 2)


def main() -> None:
    global FIND_REPEATS  # read by find_repeat
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), help="default: all for the victim")
    parser.add_argument(
        "--find-repeats", type=int, default=FIND_REPEATS, help="ids in one find_repeat request"
    )
    parser.add_argument("--before", type=float, default=3.0, help="seconds of calls before the attack")
    parser.add_argument("--during", type=float, default=12.0, help="seconds of attack")
    parser.add_argument("--good-client", metavar="ENDPOINT", help=argparse.SUPPRESS)
    parser.add_argument("--until", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--new-peer-each-call", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dht-client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--victim", choices=["serve", "dht"], default="serve", help="the victim's hivemind-core command"
    )
    args = parser.parse_args()
    if args.good_client:  # the client process
        if args.dht_client:
            samples = asyncio.run(good_dht_client(args.good_client, until=args.until))
        else:
            samples = asyncio.run(
                good_client(args.good_client, until=args.until, new_peer_each_call=args.new_peer_each_call)
            )
        print(json.dumps(samples))
        return
    FIND_REPEATS = args.find_repeats
    cases = args.cases or [name for name in CASES if args.victim == "dht" or name not in DHT_CASES]
    if args.victim != "dht" and set(cases) & set(DHT_CASES):
        parser.error(f"{', '.join(DHT_CASES)} attack a DHT victim: add --victim dht")
    results = {}
    for name in cases:
        results[name] = run_case(name, before=args.before, during=args.during, victim_kind=args.victim)
        print(name, json.dumps(results[name]), flush=True)
    source = os.path.dirname(os.path.dirname(sys.modules["hivemind_core"].__file__ or ""))
    summary = {"source": source, "victim": args.victim, "before_s": args.before, "during_s": args.during}
    if "find_repeat" in cases:
        summary["find_repeats"] = FIND_REPEATS
    print(json.dumps({**summary, "cases": results}))


if __name__ == "__main__":
    main()
