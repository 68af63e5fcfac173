"""``hivemind-core``: run a real peer over TCP, or probe one.

``serve`` starts a peer answering the built-in ``ping`` and ``echo`` methods, ``dht`` a DHT
peer, ``expert-server`` a peer hosting experts; each runs until stopped (SIGINT/SIGTERM) or
``--duration`` runs out. ``ping`` measures round trips to a peer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import math
import os
import re
import signal
import statistics
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .dht import DHTConfig, DHTConfigError, DHTNode, Identity
from .moe.uid import expand_pattern, pattern_size
from .net import RPC, TcpConfig, TcpTransport, TransportError
from .net.delays import EmulatedDelays, load_delays
from .net.endpoints import check_remote_endpoint, format_endpoint, parse_endpoint
from .net.tcp import resolve_endpoint
from .operator import Metrics, operated

# torch takes about a second to import: only the subcommands that host experts or train load it,
# so that ping, serve and dht start at once.

DATASETS = ("synthetic", "digits")
"""The built-in tasks (hivemind_core.training.DATASETS, named here so the CLI starts without torch)."""


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
        await rpc.serve()
    print(_listening_on(rpc.transport), flush=True)
    await _wait_for_stop(stop, args.duration)
    await rpc.transport.close(grace=args.grace)
    print("stopped", flush=True)
    return 0


def _listening_on(transport: Any) -> str:
    """Where a peer listens, and the address it announces when that differs."""
    bound, announced = transport.bound_endpoint, transport.endpoint
    return (
        f"listening on {announced}"
        if bound == announced
        else f"listening on {bound}, announced as {announced}"
    )


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
    stop = _stop_on_signals()
    node = await _join(args)
    where = _listening_on(node.rpc.transport) if node.endpoint else "in client mode"
    print(f"dht peer {node.node_id:040x} {where}", flush=True)
    async with operated(node, args.operator, stop):
        await _wait_for_stop(stop, args.duration)
    await node.shutdown()
    print("stopped", flush=True)
    return 0


def _expert_backends(args: argparse.Namespace) -> list[Any]:
    """The experts ``--experts`` names, built on ``--device`` (imports torch)."""
    total = sum(pattern_size(pattern) for pattern in args.experts)
    if total > MAX_SERVER_EXPERTS:
        raise ValueError(
            f"argument --experts: the patterns name {total:,} experts in all; one server hosts at most "
            f"{MAX_SERVER_EXPERTS:,} (split the grid across several servers)"
        )
    _check_device(args.device)
    import torch

    from .moe.server import ExpertBackend

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    uids = [uid for pattern in args.experts for uid in expand_pattern(pattern, limit=MAX_SERVER_EXPERTS)]
    return [
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


def _check_device(device: str) -> None:
    import torch

    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as error:  # torch asserts when it was built without CUDA
        raise ValueError(f"argument --device: torch cannot use {device!r} here ({error})") from None


async def _join(args: argparse.Namespace) -> DHTNode:
    """This peer's DHT node, joined through ``--initial-peers``."""
    config = _dht_config(args)
    transport = _listening_transport(args)
    identity = _load_identity(args.identity)
    async with _listening(args):
        return await DHTNode.create(
            transport,
            initial_peers=args.initial_peers,
            config=config,
            identity=identity,
            client_mode=getattr(args, "client_mode", False),
        )


def dht_flag(field: str) -> str:
    """The flag that sets ``DHTConfig`` field ``field`` (``rpc_timeout``: ``--dht-rpc-timeout``)."""
    return "--dht-" + field.replace("_", "-")


def _dht_config(args: argparse.Namespace) -> DHTConfig:
    """The node's config: ``--no-subnet-limit``, the ``--dht-*`` flags given, the library's defaults
    for the rest. A combination ``DHTConfig`` refuses (``--dht-replicas`` above ``--dht-k``) is
    reported against the flags."""
    given = {field: getattr(args, f"dht_{field}") for field in DHT_FLAGS}
    given = {field: value for field, value in given.items() if value is not None}
    try:
        return DHTConfig(max_per_subnet=None if args.no_subnet_limit else 2, **given)
    except DHTConfigError as error:
        message = str(error).replace("DHTConfig.", "")
        named = [field for field in error.fields if field in DHT_FLAGS]
        blamed = next((field for field in named if field in given), next(iter(given), None))
        left_out = [dht_flag(field) for field in named if field not in given]
        message = re.sub(rf"\b({'|'.join(DHT_FLAGS)})\b", lambda found: dht_flag(found[1]), message)
        if left_out:
            message += f"; {' and '.join(left_out)} left out: the default"
        raise ValueError(f"argument {dht_flag(blamed)}: {message}" if blamed else message) from None


def _expert_server_of(args: argparse.Namespace, node: DHTNode, backends: list[Any]) -> Any:
    from .moe.server import DeviceThread, ExpertServer, ServerConfig

    config = ServerConfig(
        announce_period=args.announce_period,
        announce_ttl=3 * args.announce_period,
        checkpoint_dir=args.checkpoint_dir,
        fault_rate=args.fault_rate,
    )
    return ExpertServer(backends, rpc=node.rpc, dht=node, executor=DeviceThread(args.device), config=config)


async def _expert_server(args: argparse.Namespace) -> int:
    backends = _expert_backends(args)
    stop = _stop_on_signals()
    node = await _join(args)
    server = _expert_server_of(args, node, backends)
    await server.start()
    print(
        f"expert server with {len(backends)} {args.expert_type} experts {_listening_on(node.rpc.transport)}",
        flush=True,
    )
    async with operated(node, args.operator, stop):
        await _wait_for_stop(stop, args.duration)
    await server.shutdown()
    await node.shutdown()
    print("stopped", flush=True)
    return 0


def _training_config(args: argparse.Namespace) -> Any:
    from .training import TrainingConfig

    if args.k_min > args.k_best:
        raise ValueError(f"argument --k-min: {args.k_min} is more than --k-best {args.k_best}")
    if args.dataset == "digits":
        try:
            import sklearn  # noqa: F401  # the digits come with it
        except ModuleNotFoundError:
            raise ValueError(
                "argument --dataset: `digits` needs scikit-learn: pip install '.[examples]'"
            ) from None
    return TrainingConfig(
        dataset=args.dataset,
        hidden_dim=args.hidden_dim,
        expert=args.grid[0],
        grid=args.grid[1],
        k_best=args.k_best,
        k_min=args.k_min,
        batch_size=args.batch_size,
        batches_in_flight=args.batches_in_flight,
        optimizer=args.optimizer,
        lr=args.trainer_lr,
        forward_timeout=args.forward_timeout,
        backward_timeout=args.backward_timeout,
        seed=args.seed,
        device=args.device,
    )


async def _train_on(
    args: argparse.Namespace, config: Any, node: DHTNode, stop: asyncio.Event, who: str
) -> None:
    """Train through ``node`` until stopped, ``--duration`` or ``--steps``, printing a status
    line every ``--status-interval`` seconds and one at the end."""
    from .bridge import LoopBridge
    from .moe.client import MoEClient
    from .training import Trainer

    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    client = MoEClient(rpc=node.rpc, dht=node, bridge=LoopBridge(asyncio.get_running_loop()))
    metrics = _serve_metrics(args, node, client)
    async with operated(node, args.operator, stop) as operator:
        if operator is not None:
            operator.client = client  # its steps report the client's new bans
        trainer = Trainer(node, config, client, metrics=Metrics(metrics, operator))
        await _train_until_stopped(args, config, node, trainer, metrics, operator, stop, who)


async def _train_until_stopped(
    args: argparse.Namespace,
    config: Any,
    node: DHTNode,
    trainer: Any,
    metrics: Any,
    operator: Any,
    stop: asyncio.Event,
    who: str,
) -> None:
    """The training loop of :func:`_train_on`, once the trainer and its sinks are built."""
    if metrics is not None:
        metrics.watch(
            "moe_experts_answering",
            "Distinct experts that answered in the last status interval",
            lambda: trainer.stats.experts_answering(args.status_interval),
        )
    where = _listening_on(node.rpc.transport) if node.endpoint else "in client mode"
    grid = "x".join(map(str, config.grid))
    print(
        f"{who} {where}, training on {config.dataset} through {config.expert} experts ({grid} grid, "
        f"k_best {config.k_best}, {config.batches_in_flight} batch(es) in flight)",
        flush=True,
    )
    if metrics is not None:
        print(f"metrics at {metrics.url}", flush=True)
    deadline = None if args.duration is None else asyncio.get_running_loop().time() + args.duration
    waiting = asyncio.create_task(stop.wait())
    if operator is not None:  # the deployment's window opens when it says so
        told = asyncio.create_task(operator.train.wait())
        await asyncio.wait({told, waiting}, return_when=asyncio.FIRST_COMPLETED)
        told.cancel()
    training = asyncio.create_task(trainer.run(steps=0 if stop.is_set() else args.steps))
    try:
        while not training.done() and not stop.is_set():
            left = None if deadline is None else deadline - asyncio.get_running_loop().time()
            if left is not None and left <= 0:
                break
            timeout = args.status_interval if left is None else min(args.status_interval, left)
            await asyncio.wait({training, waiting}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            print(f"status: {trainer.status(args.status_interval)}", flush=True)
    finally:
        waiting.cancel()
        trainer.stop()
        await training  # raises a bug in a training thread
        for replica in trainer.replicas:
            if replica.mixture is not None:
                await replica.mixture.searcher.close()
        if metrics is not None:
            metrics.close()
    print(f"trained: {trainer.status(args.status_interval)}", flush=True)


def _serve_metrics(args: argparse.Namespace, node: DHTNode, client: Any) -> Any:
    """Prometheus metrics at ``--metrics-port`` on the ``--host`` address, or None."""
    if args.metrics_port is None:
        return None
    try:
        from .prometheus import PeerMetrics
    except ModuleNotFoundError as error:
        raise ValueError(f"argument --metrics-port: {error}") from None
    metrics = PeerMetrics()
    metrics.watch("dht_contacts", "Contacts in this peer's routing table", lambda: len(node.routing_table))
    metrics.watch_counter("moe_bans", "Expert servers this peer's client banned", lambda: client.bans)
    try:
        port = metrics.serve(args.host, args.metrics_port)
    except OSError as error:
        raise OSError(
            f"cannot serve metrics on --host {args.host} --metrics-port {args.metrics_port}: {error}"
        ) from None
    metrics.url = f"http://{_url_host(args.host)}:{port}/metrics"
    return metrics


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def _train(args: argparse.Namespace) -> int:
    config = _training_config(args)  # checked before joining anything
    _check_device(config.device)
    stop = _stop_on_signals()
    node = await _join(args)
    try:
        await _train_on(args, config, node, stop, "trainer")
    finally:
        await node.shutdown()
    print("stopped", flush=True)
    return 0


async def _peer(args: argparse.Namespace) -> int:
    """Host experts and train through the grid they belong to, in one process."""
    config = _training_config(args)  # checked before joining anything
    backends = _expert_backends(args)
    stop = _stop_on_signals()
    node = await _join(args)
    server = _expert_server_of(args, node, backends)
    await server.start()
    try:
        await _train_on(args, config, node, stop, f"peer with {len(backends)} {args.expert_type} experts")
    finally:
        await server.shutdown()  # checkpoints its experts when --checkpoint-dir is set
        await node.shutdown()  # hands its records on to their next replicas
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


def _integer(text: str) -> int:
    """``text`` as a whole number; a word gets an error that says what was expected (argparse's
    own would name the parsing function: "invalid _count value")."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _number(text: str) -> float:
    """``text`` as a number (see :func:`_integer`)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _count(text: str) -> int:
    """A non-negative whole number, for flags where 0 means "no limit" or "none"."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _port(text: str) -> int:
    value = _integer(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {value}")
    return value


def _seconds(text: str) -> float:
    value = _number(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _grace(text: str) -> float:
    value = _number(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction from 0 to 1, got {text}")
    return value


def _learning_rate(text: str) -> float:
    value = _number(text)
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _endpoint(text: str) -> str:
    """A peer's endpoint; a host name is resolved here, since peers accept only addresses."""
    try:
        return resolve_endpoint(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _address(text: str) -> str:
    """An IP address to listen on (a name is resolved here)."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    try:
        return parse_endpoint(resolve_endpoint(f"{text}:1"))[0].strip("[]")
    except (ValueError, OSError) as error:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an IP address or a host name that resolves ({error})"
        ) from None


def _announced(text: str) -> tuple[str, int | None]:
    """``HOST``, ``HOST:PORT``, ``[V6]``, ``[V6]:PORT`` or a bare IPv6 address: the host
    (resolved if a name) and the port, or None for the one listened on."""
    if text.startswith("[") and text.endswith("]"):
        host, port = text[1:-1], None
    elif text.startswith("[") or text.count(":") == 1:
        host, _, port_text = text.rpartition(":")
        host = host.strip("[]")
        port = _port(port_text) if port_text.isdigit() else None
        if port is None or port == 0:
            raise argparse.ArgumentTypeError(f"{text!r}: the port must be a number from 1 to 65535")
    else:
        host, port = text, None
    host = _address(host)
    try:
        check_remote_endpoint(format_endpoint(host, port or 1))
    except ValueError as error:
        reason = str(error).partition(": ")[2] or str(error)
        raise argparse.ArgumentTypeError(f"{text!r}: {reason}") from None
    return host, port


def _grid(text: str) -> tuple[str, tuple[int, ...]]:
    """``PREFIX.AxB[xC...]``: the grid's UID prefix and its size per dimension."""
    prefix, _, sizes = text.rpartition(".")
    try:
        dims = tuple(int(size) for size in sizes.split("x"))
        expand_pattern(f"{prefix}." + ".".join(f"[0:{size}]" for size in dims), limit=1 << 62)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected PREFIX.AxB, e.g. ffn.4x4") from None
    if not prefix or not all(size >= 1 for size in dims):
        raise argparse.ArgumentTypeError(f"{text!r}: expected PREFIX.AxB with sizes >= 1, e.g. ffn.4x4")
    return prefix, dims


def _delays_file(text: str) -> EmulatedDelays:
    try:
        return load_delays(text)
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
    parser.add_argument(
        "--host",
        type=_address,
        default="127.0.0.1",
        help="address to listen on (and dial from); 0.0.0.0: all",
    )
    parser.add_argument("--port", type=_port, default=0, help="port to listen on (0: any free port)")
    parser.add_argument(
        "--announce",
        type=_announced,
        default=None,
        metavar="HOST[:PORT]",
        help="the address (and port) peers dial to reach this one, when not --host and --port: a "
        "public address, a port forwarded through NAT, or one interface's address with --host 0.0.0.0",
    )
    parser.add_argument(
        "--max-connections", type=_count, default=1024, help="cap on incoming connections (0: no cap)"
    )
    parser.add_argument(
        "--max-connections-per-host",
        type=_count,
        default=64,
        help="cap on incoming connections from one host (0: no cap; raise it behind a shared NAT)",
    )
    parser.add_argument(
        "--emulate-delays",
        type=_delays_file,
        default=None,
        metavar="FILE",
        help="for hivemind-sim deploy, never on by default: add the one-way delays in this JSON file "
        "to the connections this peer dials (kernels without netem; see hivemind_core.net.delays)",
    )


def _add_duration(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--duration",
        type=_seconds,
        default=None,
        help="stop after this many seconds (default: run until stopped)",
    )


def _add_joining_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--initial-peers",
        nargs="*",
        type=_endpoint,
        default=[],
        metavar="HOST:PORT",
        help="DHT peers to join through (none: start a new network)",
    )
    parser.add_argument(
        "--identity",
        type=Path,
        default=None,
        help="file holding this peer's private key (created if missing; default: a new key each run)",
    )
    parser.add_argument("--no-subnet-limit", action="store_true", help="allow any number of contacts per /24")
    _add_dht_options(parser)
    parser.add_argument(
        "--operator",
        action="store_true",
        help="driven by the process that started it (hivemind-sim deploy): JSON commands on stdin, "
        "'@hm ' records on stdout; trainers wait for the command to train",
    )


DHT_FLAGS = {
    "k": (_positive_int, "K", "bucket size, and how many nearest nodes a lookup converges on"),
    "alpha": (_positive_int, "N", "parallel RPCs per lookup"),
    "replicas": (_positive_int, "N", "how many of the nearest nodes hold a value, at most --dht-k"),
    "refresh_interval": (_seconds, "SECONDS", "a bucket that saw no traffic for this long is refreshed"),
    "republish_interval": (_seconds, "SECONDS", "how often a node stores what it holds again"),
    "rpc_timeout": (_seconds, "SECONDS", "the longest any DHT RPC waits for its answer"),
}
"""Each ``DHTConfig`` field a ``--dht-*`` flag sets (a scenario's `dht` key of the same name):
its parser, metavar and help."""


def _add_dht_options(parser: argparse.ArgumentParser) -> None:
    """The DHT node's settings; each left out keeps the library's default."""
    default = DHTConfig()
    group = parser.add_argument_group("DHT settings", "each left out keeps the library's default")
    for field, (parse, metavar, text) in DHT_FLAGS.items():
        help = f"{text} (default: {getattr(default, field):g})"
        group.add_argument(dht_flag(field), type=parse, metavar=metavar, help=help)


def _add_expert_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--experts",
        nargs="+",
        type=_expert_pattern,
        required=True,
        metavar="PATTERN",
        help=f"expert UIDs or patterns, e.g. 'ffn.[0:4].[0:8]' (at most {MAX_SERVER_EXPERTS} experts in all)",
    )
    parser.add_argument("--expert-type", default="ffn", choices=EXPERT_TYPES, help="built-in expert type")
    parser.add_argument("--hidden-dim", type=_positive_int, default=512, help="experts' hidden size")
    parser.add_argument("--lr", type=_learning_rate, default=1e-3, help="Adam learning rate of every expert")
    parser.add_argument(
        "--max-batch-size", type=_positive_int, default=4096, help="largest batch one request may carry"
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument(
        "--torch-threads", type=_count, default=0, help="torch CPU threads (0: torch's default)"
    )
    parser.add_argument(
        "--announce-period",
        type=_seconds,
        default=10.0,
        help="seconds between re-announcements (entries live 3 periods)",
    )
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=None,
        help="restore experts from here at start, save here at stop (default: no checkpoints)",
    )
    parser.add_argument(
        "--fault-rate",
        type=_fraction,
        default=0.0,
        help="fail this fraction of requests on purpose (fault-tolerance experiments)",
    )


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="synthetic", choices=DATASETS, help="the built-in task")
    parser.add_argument(
        "--grid",
        type=_grid,
        default=("ffn", (4, 4)),
        metavar="PREFIX.AxB",
        help="the experts' grid: UID prefix and size, e.g. ffn.4x4 for ffn.[0:4].[0:4] (default: ffn.4x4)",
    )
    parser.add_argument("--k-best", type=_positive_int, default=4, help="experts asked per sample")
    parser.add_argument("--k-min", type=_count, default=1, help="fewest answers a sample needs")
    parser.add_argument("--batch-size", type=_positive_int, default=32, help="samples per step")
    parser.add_argument(
        "--batches-in-flight", type=_positive_int, default=1, help="steps computed at once (asynchronous SGD)"
    )
    parser.add_argument(
        "--optimizer", default="adam", choices=("adam", "sgd"), help="the trainer's optimizer"
    )
    parser.add_argument(
        "--trainer-lr", type=_learning_rate, default=1e-3, help="learning rate of the trainer's own layers"
    )
    parser.add_argument(
        "--forward-timeout", type=_seconds, default=10.0, help="seconds to wait for experts' answers"
    )
    parser.add_argument(
        "--backward-timeout", type=_seconds, default=20.0, help="seconds to wait for experts' gradients"
    )
    parser.add_argument("--seed", type=_count, default=0, help="the trainer's initial weights and batches")
    parser.add_argument("--steps", type=_positive_int, default=None, help="stop after this many steps")
    parser.add_argument("--status-interval", type=_seconds, default=10.0, help="seconds between status lines")
    parser.add_argument(
        "--metrics-port",
        type=_port,
        default=None,
        help="serve Prometheus metrics here, on the --host address (0: any free port; needs the "
        "metrics extra; default: none)",
    )


def _listening_transport(args: argparse.Namespace) -> TcpTransport:
    announce_host, announce_port = args.announce or (None, None)
    _check_announced(args.host, announce_host, getattr(args, "initial_peers", []))
    return TcpTransport(
        TcpConfig(
            host=args.host,
            port=args.port,
            max_incoming=args.max_connections or 1 << 30,
            max_incoming_per_host=args.max_connections_per_host or None,
            announce_host=announce_host,
            announce_port=announce_port,
            delays=getattr(args, "emulate_delays", None),
        )
    )


def _check_announced(host: str, announce_host: str | None, initial_peers: Sequence[str]) -> None:
    """Refuse an announced address the peers this one joins could not dial."""
    if announce_host is None and ipaddress.ip_address(host).is_unspecified:
        raise ValueError(
            f"argument --announce: --host {host} listens on every interface, which is no address to "
            "dial; say which one peers reach this peer at with --announce HOST[:PORT]"
        )
    announced = announce_host or host
    remote = [peer for peer in initial_peers if not ipaddress.ip_address(parse_endpoint(peer)[0]).is_loopback]
    if ipaddress.ip_address(announced).is_loopback and remote:
        flag = "--announce" if announce_host else "--host"
        raise ValueError(
            f"argument {flag}: this peer would announce the loopback address {announced}, which peers "
            f"on other machines (--initial-peers {remote[0]}) cannot dial; listen on this machine's "
            "address with --host, or name it with --announce HOST[:PORT]"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hivemind-core", description="Run or probe a real peer.", formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="least severe log messages shown (on stderr, with their time)",
    )
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
    _add_joining_options(dht)
    dht.add_argument("--client-mode", action="store_true", help="do not accept incoming requests")
    _add_duration(dht)
    dht.set_defaults(run=_dht)

    experts = command("expert-server", "host experts and announce them in the DHT")
    _add_expert_options(experts)
    _add_listen_options(experts)
    _add_joining_options(experts)
    _add_duration(experts)
    experts.set_defaults(run=_expert_server)

    train = command("train", "train a model through a DMoE layer of remote experts")
    train.add_argument("--hidden-dim", type=_positive_int, default=512, help="experts' hidden size")
    _add_training_options(train)
    train.add_argument("--device", default="cpu", help="torch device of the trainer's own layers")
    train.add_argument(
        "--torch-threads", type=_count, default=0, help="torch CPU threads (0: torch's default)"
    )
    _add_listen_options(train)
    _add_joining_options(train)
    train.add_argument("--client-mode", action="store_true", help="do not accept incoming requests")
    _add_duration(train)
    train.set_defaults(run=_train)

    peer = command("peer", "host experts and train through the grid, in one process")
    _add_expert_options(peer)
    _add_training_options(peer)
    _add_listen_options(peer)
    _add_joining_options(peer)
    _add_duration(peer)
    peer.set_defaults(run=_peer)

    ping = command("ping", "measure round trips to a peer")
    ping.add_argument("endpoint", type=_endpoint, help="host:port of the peer")
    ping.add_argument("--count", type=_positive_int, default=5, help="number of round trips")
    ping.add_argument("--size", type=_count, default=0, help="bytes to echo (0: plain ping)")
    ping.add_argument("--timeout", type=_seconds, default=5.0, help="seconds to wait for each answer")
    ping.set_defaults(run=_probe)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None:  # run as a program (not called from Python): its logs are its own
        logging.basicConfig(
            level=args.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            datefmt="%Y-%m-%d %H:%M:%S",
        )
    try:
        return asyncio.run(args.run(args))
    except (ValueError, OSError) as error:  # BootstrapError is an OSError
        print(f"hivemind-core: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
