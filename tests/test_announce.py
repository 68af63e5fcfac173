"""Real peers across hosts: a peer listens on one address and announces another, and the CLI
refuses announcements its peers could not dial."""

from __future__ import annotations

import asyncio

import pytest

from hivemind_core.dht import DHTConfig, DHTNode
from hivemind_core.net import TcpConfig, TcpTransport

CONFIG = DHTConfig(max_per_subnet=None)


@pytest.mark.asyncio(loop_factories=["tcp"])
async def test_a_peer_listening_on_every_interface_is_known_by_the_address_it_announces() -> None:
    """Peers dial what a peer announces, not what it bound: the announced address is in their
    routing tables (also of a peer that heard of it from another), and stores and gets go through it."""
    everywhere = TcpTransport(TcpConfig(host="0.0.0.0", announce_host="127.0.0.2"))
    joiner_transport, third_transport = (
        TcpTransport(TcpConfig(host="127.0.0.3")),
        TcpTransport(TcpConfig(host="127.0.0.4")),
    )
    nodes: list[DHTNode] = []
    try:
        async with asyncio.timeout(60):
            first = await DHTNode.create(everywhere, config=CONFIG)
            nodes.append(first)
            port = int(everywhere.bound_endpoint.rpartition(":")[2])
            assert everywhere.bound_endpoint == f"0.0.0.0:{port}"
            assert first.endpoint == f"127.0.0.2:{port}"
            joiner = await DHTNode.create(joiner_transport, initial_peers=[first.endpoint], config=CONFIG)
            nodes.append(joiner)
            assert [c.endpoint for c in joiner.routing_table.nearest(first.node_id, 1)] == [first.endpoint]
            assert await joiner.store("key", b"value", joiner.now() + 60)
            got = await first.get("key")
            assert got is not None and got.value == b"value"
            # a third peer hears of the first only from the second: by its announced address
            third = await DHTNode.create(third_transport, initial_peers=[joiner.endpoint], config=CONFIG)
            nodes.append(third)
            endpoints = {c.node_id: c.endpoint for c in third.routing_table.nearest(first.node_id, 8)}
            assert endpoints.get(first.node_id) == first.endpoint
            got = await third.get("key")
            assert got is not None and got.value == b"value"
    finally:
        for node in nodes:
            await node.shutdown(handoff_timeout=0)
        for transport in (everywhere, joiner_transport, third_transport):
            await transport.close(grace=0)


@pytest.mark.asyncio(loop_factories=["tcp"])
async def test_an_announced_port_replaces_the_bound_one() -> None:
    transport = TcpTransport(TcpConfig(host="127.0.0.1", announce_host="127.0.0.4", announce_port=7999))
    try:
        await transport.listen(lambda *_: None)  # type: ignore[arg-type,return-value]
        assert transport.endpoint == "127.0.0.4:7999"
        assert transport.bound_endpoint.startswith("127.0.0.1:")
    finally:
        await transport.close(grace=0)


@pytest.mark.asyncio(loop_factories=["tcp"])
async def test_the_transport_refuses_what_no_peer_can_dial() -> None:
    with pytest.raises(ValueError, match="a multicast address cannot be dialled"):
        TcpTransport(TcpConfig(announce_host="224.0.0.1"))
    with pytest.raises(ValueError, match="an unspecified address cannot be dialled"):
        TcpTransport(TcpConfig(announce_host="0.0.0.0"))
    transport = TcpTransport(TcpConfig(host="0.0.0.0"))
    try:
        with pytest.raises(ValueError, match=r"every interface .* needs an announce_host"):
            await transport.listen(lambda *_: None)  # type: ignore[arg-type,return-value]
    finally:
        await transport.close(grace=0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["dht", "--announce", "224.0.0.1"], "argument --announce: '224.0.0.1': a multicast address"),
        (["dht", "--announce", "0.0.0.0:7000"], "argument --announce: '0.0.0.0:7000': an unspecified"),
        (["dht", "--announce", "10.0.0.1:0"], "argument --announce: '10.0.0.1:0': the port must be"),
        (["dht", "--announce", "no-such-host.invalid"], "argument --announce: 'no-such-host.invalid' is not"),
        (["serve", "--host", "not an address"], "argument --host: 'not an address' is not an IP address"),
        (["train", "--grid", "ffn.0x4"], "argument --grid: 'ffn.0x4': expected PREFIX.AxB"),
        (["train", "--grid", "4x4"], "argument --grid: '4x4': expected PREFIX.AxB"),
        (["peer", "--experts", "ffn.0.[0:2]", "--batches-in-flight", "0"], "argument --batches-in-flight"),
    ],
)
def test_bad_announcements_and_training_flags_are_refused_while_parsing(
    capsys, argv: list[str], message: str
) -> None:
    from hivemind_core.cli import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["dht", "--host", "0.0.0.0"],
            "argument --announce: --host 0.0.0.0 listens on every interface, which is no address to dial",
        ),
        (
            ["expert-server", "--experts", "f.[0:2]", "--host", "::"],
            "argument --announce: --host :: listens on every interface",
        ),
        (
            ["dht", "--initial-peers", "10.0.0.1:7000"],
            "argument --host: this peer would announce the loopback address 127.0.0.1, which peers on "
            "other machines (--initial-peers 10.0.0.1:7000) cannot dial",
        ),
        (
            ["dht", "--host", "0.0.0.0", "--announce", "127.0.0.1", "--initial-peers", "10.0.0.1:7000"],
            "argument --announce: this peer would announce the loopback address 127.0.0.1",
        ),
        (  # checked before joining: the initial peer is never dialled
            ["train", "--k-min", "5", "--k-best", "4", "--initial-peers", "127.0.0.1:1"],
            "argument --k-min: 5 is more than --k-best 4",
        ),
        (
            ["train", "--dataset", "digits", "--initial-peers", "127.0.0.1:1"],
            "argument --dataset: `digits` needs scikit-learn",
        ),
    ],
)
def test_what_cannot_work_is_refused_at_start_naming_the_flag(
    capsys, monkeypatch, argv: list[str], message: str
) -> None:
    import sys

    from hivemind_core.cli import main

    monkeypatch.setitem(sys.modules, "sklearn", None)  # as if scikit-learn were not installed

    assert main(argv) == 2
    assert message in capsys.readouterr().err
