"""``hivemind-core``: run a real peer over TCP, or probe one.

``serve`` starts a peer answering the built-in ``ping`` and ``echo`` methods, ``dht`` a DHT
peer, ``expert-server`` a peer hosting experts; each runs until stopped (SIGINT/SIGTERM) or
``--duration`` runs out. ``ping`` measures round trips to a peer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .dht import DHTConfig, DHTNode, Identity
from .net import RPC, TcpTransport, TransportError

# torch takes about a second to import: only the subcommand that hosts experts loads it (with the
# expert modules), so that ping, serve and dht start at once.


async def _ping(_peer: str, _body: Any) -> str:
    return "pong"


async def _echo(_peer: str, body: Any) -> Any:
    return body


def _add_builtin_methods(rpc: RPC) -> None:
    rpc.register("ping", _ping)
    rpc.register("echo", _echo)


async def _serve(args: argparse.Namespace) -> int:
    rpc = RPC(_listening_transport(args))
    _add_builtin_methods(rpc)
    stop = _stop_on_signals()
    endpoint = await rpc.serve()
    print(f"listening on {endpoint}", flush=True)
    await _wait_for_stop(stop, args.duration)
    await rpc.transport.close(grace=args.grace)
    print("stopped", flush=True)
    return 0


def _load_identity(path: Path | None) -> Identity | None:
    """The identity saved at ``path`` (created on first use), so a peer keeps its node id."""
    if path is None:
        return None
    if path.exists():
        return Identity.from_private_bytes(path.read_bytes())
    identity = Identity.generate()
    path.touch(mode=0o600)
    path.write_bytes(identity.private_bytes())
    return identity


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM; install it before telling anyone we are up."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def _wait_for_stop(stop: asyncio.Event, duration: float | None) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=duration)


async def _dht(args: argparse.Namespace) -> int:
    transport = _listening_transport(args)
    config = DHTConfig(max_per_subnet=None if args.no_subnet_limit else 2)
    stop = _stop_on_signals()
    node = await DHTNode.create(
        transport,
        initial_peers=args.initial_peers,
        config=config,
        identity=_load_identity(args.identity),
        client_mode=args.client_mode,
    )
    where = f"listening on {node.endpoint}" if node.endpoint else "in client mode"
    print(f"dht peer {node.node_id:040x} {where}", flush=True)
    await _wait_for_stop(stop, args.duration)
    await node.shutdown()
    print("stopped", flush=True)
    return 0


async def _expert_server(args: argparse.Namespace) -> int:
    import torch

    from .moe.server import DeviceThread, ExpertBackend, ExpertServer
    from .moe.uid import expand_pattern

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    uids = [uid for pattern in args.experts for uid in expand_pattern(pattern)]
    backends = [
        ExpertBackend.create(
            uid,
            args.expert_type,
            args.hidden_dim,
            lr=args.lr,
            device=args.device,
            max_batch_size=args.max_batch_size,
        )
        for uid in uids
    ]
    transport = _listening_transport(args)
    config = DHTConfig(max_per_subnet=None if args.no_subnet_limit else 2)
    stop = _stop_on_signals()
    node = await DHTNode.create(
        transport, initial_peers=args.initial_peers, config=config, identity=_load_identity(args.identity)
    )
    server = ExpertServer(
        backends,
        rpc=node.rpc,
        dht=node,
        executor=DeviceThread(args.device),
        announce_period=args.announce_period,
        announce_ttl=3 * args.announce_period,
        checkpoint_dir=args.checkpoint_dir,
        fault_rate=args.fault_rate,
    )
    await server.start()
    print(
        f"expert server with {len(uids)} {args.expert_type} experts listening on {node.endpoint}", flush=True
    )
    await _wait_for_stop(stop, args.duration)
    await server.shutdown()
    await node.shutdown()
    print("stopped", flush=True)
    return 0


async def _probe(args: argparse.Namespace) -> int:
    rpc = RPC(TcpTransport())
    loop = asyncio.get_running_loop()
    payload = bytes(args.size)
    round_trips: list[float] = []
    try:
        for sequence in range(args.count):
            started = loop.time()
            try:
                if args.size:
                    await rpc.call(args.endpoint, "echo", payload, timeout=args.timeout)
                else:
                    await rpc.call(args.endpoint, "ping", timeout=args.timeout)
            except TransportError as error:
                print(f"seq={sequence} failed: {error}", flush=True)
                continue
            elapsed_ms = (loop.time() - started) * 1000
            round_trips.append(elapsed_ms)
            print(f"seq={sequence} {args.size} bytes from {args.endpoint}: {elapsed_ms:.3f} ms", flush=True)
    finally:
        await rpc.transport.close()
    lost = args.count - len(round_trips)
    summary = f"{args.count} sent, {len(round_trips)} answered, {lost} failed"
    if round_trips:
        summary += f"; rtt min/median/max {min(round_trips):.3f}/{statistics.median(round_trips):.3f}/"
        summary += f"{max(round_trips):.3f} ms"
    print(summary, flush=True)
    return 0 if round_trips else 1


def _count(text: str) -> int:
    """A non-negative whole number, for flags where 0 means "no limit"."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _add_listen_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (and dial from)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free port)")
    parser.add_argument(
        "--max-connections", type=_count, default=1024, help="cap on incoming connections (0: no cap)"
    )
    parser.add_argument(
        "--max-connections-per-host",
        type=_count,
        default=64,
        help="cap on incoming connections from one host (0: no cap; raise it behind a shared NAT)",
    )


def _listening_transport(args: argparse.Namespace) -> TcpTransport:
    return TcpTransport(
        host=args.host,
        port=args.port,
        max_incoming=args.max_connections or 1 << 30,
        max_incoming_per_host=args.max_connections_per_host or None,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hivemind-core", description="Run or probe a real peer.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="start a peer that answers ping and echo")
    _add_listen_options(serve)
    serve.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    serve.add_argument("--grace", type=float, default=1.0, help="seconds to finish requests on stop")
    serve.set_defaults(run=_serve)

    dht = commands.add_parser("dht", help="run a DHT peer")
    _add_listen_options(dht)
    dht.add_argument(
        "--initial-peers",
        nargs="*",
        default=[],
        metavar="HOST:PORT",
        help="peers to join through (none: start a new network)",
    )
    dht.add_argument(
        "--identity",
        type=Path,
        default=None,
        help="file holding this peer's private key (created if missing)",
    )
    dht.add_argument("--client-mode", action="store_true", help="do not accept incoming requests")
    dht.add_argument(
        "--no-subnet-limit",
        action="store_true",
        help="allow any number of contacts per /24 (for clusters on one subnet)",
    )
    dht.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    dht.set_defaults(run=_dht)

    experts = commands.add_parser("expert-server", help="host experts and announce them in the DHT")
    experts.add_argument(
        "--experts",
        nargs="+",
        required=True,
        metavar="PATTERN",
        help="expert UIDs or patterns, e.g. 'ffn.[0:4].[0:8]'",
    )
    experts.add_argument("--expert-type", default="ffn", help="built-in expert type: ffn or transformer")
    experts.add_argument("--hidden-dim", type=int, default=512, help="experts' hidden size")
    experts.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of every expert")
    experts.add_argument(
        "--max-batch-size", type=int, default=4096, help="largest batch one request may carry"
    )
    experts.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    experts.add_argument(
        "--torch-threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    _add_listen_options(experts)
    experts.add_argument(
        "--initial-peers",
        nargs="*",
        default=[],
        metavar="HOST:PORT",
        help="DHT peers to join through (none: start a new network)",
    )
    experts.add_argument("--identity", type=Path, default=None, help="file holding this peer's private key")
    experts.add_argument(
        "--no-subnet-limit", action="store_true", help="allow any number of contacts per /24"
    )
    experts.add_argument(
        "--announce-period",
        type=float,
        default=10.0,
        help="seconds between re-announcements (entries live 3 periods)",
    )
    experts.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="restore experts from here at start, save here at stop",
    )
    experts.add_argument(
        "--fault-rate",
        type=float,
        default=0.0,
        help="fail this fraction of requests on purpose (fault-tolerance experiments)",
    )
    experts.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    experts.set_defaults(run=_expert_server)

    ping = commands.add_parser("ping", help="measure round trips to a peer")
    ping.add_argument("endpoint", help="host:port of the peer")
    ping.add_argument("--count", type=int, default=5, help="number of round trips")
    ping.add_argument("--size", type=int, default=0, help="bytes to echo (0: plain ping)")
    ping.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each answer")
    ping.set_defaults(run=_probe)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(args.run(args))
    except (ValueError, OSError) as error:  # BootstrapError is an OSError
        print(f"hivemind-core: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
