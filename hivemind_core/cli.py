"""``hivemind-core``: run a real peer over TCP, or probe one.

``serve`` starts a peer answering the built-in ``ping`` and ``echo`` methods, ``dht`` a DHT
peer, ``expert-server`` a peer hosting experts; each runs until stopped (SIGINT/SIGTERM) or
``--duration`` runs out. ``ping`` measures round trips to a peer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import statistics
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .dht import DHTConfig, DHTNode, Identity
from .moe.uid import expand_pattern, pattern_size
from .net import RPC, TcpTransport, TransportError
from .net.tcp import resolve_endpoint

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
    async with _listening(args):
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
    try:
        if path.exists():
            return Identity.from_private_bytes(path.read_bytes())
        identity = Identity.generate()
        path.touch(mode=0o600)
        path.write_bytes(identity.private_bytes())
    except OSError as error:
        raise ValueError(
            f"argument --identity: cannot read or create the key file {str(path)!r} ({error.strerror})"
        ) from None
    except ValueError as error:
        raise ValueError(
            f"argument --identity: {str(path)!r} is not a key file written by hivemind-core ({error})"
        ) from None
    return identity


@contextlib.asynccontextmanager
async def _listening(args: argparse.Namespace) -> AsyncIterator[None]:
    """Say which flags to change when the listening socket cannot be opened."""
    try:
        yield
    except OSError as error:
        # only socket errors carry an errno; joining the network failed (BootstrapError) is no
        # listening problem
        if isinstance(error, ConnectionError) or error.errno is None:
            raise
        # asyncio wraps the socket error in a longer text: say just the reason
        reason = os.strerror(error.errno) if error.errno > 0 else error.strerror or str(error)
        raise OSError(f"cannot listen on --host {args.host} --port {args.port}: {reason}") from None


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
    identity = _load_identity(args.identity)
    stop = _stop_on_signals()
    async with _listening(args):
        node = await DHTNode.create(
            transport,
            initial_peers=args.initial_peers,
            config=config,
            identity=identity,
            client_mode=args.client_mode,
        )
    where = f"listening on {node.endpoint}" if node.endpoint else "in client mode"
    print(f"dht peer {node.node_id:040x} {where}", flush=True)
    await _wait_for_stop(stop, args.duration)
    await node.shutdown()
    print("stopped", flush=True)
    return 0


async def _expert_server(args: argparse.Namespace) -> int:
    total = sum(pattern_size(pattern) for pattern in args.experts)
    if total > MAX_SERVER_EXPERTS:
        raise ValueError(
            f"argument --experts: the patterns name {total:,} experts in all; one server hosts at most "
            f"{MAX_SERVER_EXPERTS:,} (split the grid across several servers)"
        )
    import torch

    from .moe.server import DeviceThread, ExpertBackend, ExpertServer

    try:
        torch.empty(0, device=args.device)
    except (RuntimeError, AssertionError) as error:  # torch asserts when it was built without CUDA
        raise ValueError(f"argument --device: torch cannot use {args.device!r} here ({error})") from None
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    uids = [uid for pattern in args.experts for uid in expand_pattern(pattern, limit=MAX_SERVER_EXPERTS)]
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
    identity = _load_identity(args.identity)
    stop = _stop_on_signals()
    async with _listening(args):
        node = await DHTNode.create(
            transport, initial_peers=args.initial_peers, config=config, identity=identity
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


MAX_SERVER_EXPERTS = 4096
"""Most experts one ``expert-server`` hosts: a bigger grid is split across servers."""

EXPERT_TYPES = ("ffn", "transformer")
"""The built-in expert types (hivemind_core.moe.layers.EXPERT_TYPES, named here so that the
CLI starts without importing torch)."""


def _count(text: str) -> int:
    """A non-negative whole number, for flags where 0 means "no limit" or "none"."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _grace(text: str) -> float:
    value = float(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction from 0 to 1, got {text}")
    return value


def _learning_rate(text: str) -> float:
    value = float(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _endpoint(text: str) -> str:
    """A peer's endpoint; a host name is resolved here, since peers accept only addresses."""
    try:
        return resolve_endpoint(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _expert_pattern(text: str) -> str:
    """A UID pattern naming at most MAX_SERVER_EXPERTS experts (counted, not listed)."""
    try:
        count = pattern_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if count > MAX_SERVER_EXPERTS:
        raise argparse.ArgumentTypeError(
            f"{text!r} names {count:,} experts; one server hosts at most {MAX_SERVER_EXPERTS:,} "
            "(split the grid across several servers)"
        )
    return text


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: ...)" after every option that has a meaningful default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        unset = action.default is None or action.default is False or action.default == []
        if unset or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _add_listen_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (and dial from)")
    parser.add_argument("--port", type=_port, default=0, help="port to listen on (0: any free port)")
    parser.add_argument(
        "--max-connections", type=_count, default=1024, help="cap on incoming connections (0: no cap)"
    )
    parser.add_argument(
        "--max-connections-per-host",
        type=_count,
        default=64,
        help="cap on incoming connections from one host (0: no cap; raise it behind a shared NAT)",
    )


def _add_duration(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--duration",
        type=_seconds,
        default=None,
        help="stop after this many seconds (default: run until stopped)",
    )


def _listening_transport(args: argparse.Namespace) -> TcpTransport:
    return TcpTransport(
        host=args.host,
        port=args.port,
        max_incoming=args.max_connections or 1 << 30,
        max_incoming_per_host=args.max_connections_per_host or None,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hivemind-core", description="Run or probe a real peer.", formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)

    serve = command("serve", "start a peer that answers ping and echo")
    _add_listen_options(serve)
    _add_duration(serve)
    serve.add_argument("--grace", type=_grace, default=1.0, help="seconds to finish requests on stop")
    serve.set_defaults(run=_serve)

    dht = command("dht", "run a DHT peer")
    _add_listen_options(dht)
    dht.add_argument(
        "--initial-peers",
        nargs="*",
        type=_endpoint,
        default=[],
        metavar="HOST:PORT",
        help="peers to join through (none: start a new network)",
    )
    dht.add_argument(
        "--identity",
        type=Path,
        default=None,
        help="file holding this peer's private key (created if missing; default: a new key each run)",
    )
    dht.add_argument("--client-mode", action="store_true", help="do not accept incoming requests")
    dht.add_argument(
        "--no-subnet-limit",
        action="store_true",
        help="allow any number of contacts per /24 (for clusters on one subnet)",
    )
    _add_duration(dht)
    dht.set_defaults(run=_dht)

    experts = command("expert-server", "host experts and announce them in the DHT")
    experts.add_argument(
        "--experts",
        nargs="+",
        type=_expert_pattern,
        required=True,
        metavar="PATTERN",
        help=f"expert UIDs or patterns, e.g. 'ffn.[0:4].[0:8]' (at most {MAX_SERVER_EXPERTS} experts in all)",
    )
    experts.add_argument("--expert-type", default="ffn", choices=EXPERT_TYPES, help="built-in expert type")
    experts.add_argument("--hidden-dim", type=_positive_int, default=512, help="experts' hidden size")
    experts.add_argument("--lr", type=_learning_rate, default=1e-3, help="Adam learning rate of every expert")
    experts.add_argument(
        "--max-batch-size", type=_positive_int, default=4096, help="largest batch one request may carry"
    )
    experts.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    experts.add_argument(
        "--torch-threads", type=_count, default=0, help="torch CPU threads (0: torch's default)"
    )
    _add_listen_options(experts)
    experts.add_argument(
        "--initial-peers",
        nargs="*",
        type=_endpoint,
        default=[],
        metavar="HOST:PORT",
        help="DHT peers to join through (none: start a new network)",
    )
    experts.add_argument(
        "--identity",
        type=Path,
        default=None,
        help="file holding this peer's private key (created if missing; default: a new key each run)",
    )
    experts.add_argument(
        "--no-subnet-limit", action="store_true", help="allow any number of contacts per /24"
    )
    experts.add_argument(
        "--announce-period",
        type=_seconds,
        default=10.0,
        help="seconds between re-announcements (entries live 3 periods)",
    )
    experts.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="restore experts from here at start, save here at stop (default: no checkpoints)",
    )
    experts.add_argument(
        "--fault-rate",
        type=_fraction,
        default=0.0,
        help="fail this fraction of requests on purpose (fault-tolerance experiments)",
    )
    _add_duration(experts)
    experts.set_defaults(run=_expert_server)

    ping = command("ping", "measure round trips to a peer")
    ping.add_argument("endpoint", type=_endpoint, help="host:port of the peer")
    ping.add_argument("--count", type=_positive_int, default=5, help="number of round trips")
    ping.add_argument("--size", type=_count, default=0, help="bytes to echo (0: plain ping)")
    ping.add_argument("--timeout", type=_seconds, default=5.0, help="seconds to wait for each answer")
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
