"""TCP endpoints: one spelling per address, and which addresses a remote peer may announce.

Endpoints are compared as strings (routing tables, connection pools, bans), so two spellings of
one listener would let a peer hold two places or dodge a ban. Only the canonical spelling is
accepted: ``a.b.c.d:port`` (dotted quad, no leading zeros), ``[v6]:port`` (bracketed, in
Python's compressed lower-case form, never an IPv4-mapped address), or ``name:port`` (lower-case
letters, digits and hyphens); the port is 1..65535 in ASCII digits without leading zeros.
Every rule about endpoints lives here.
"""

from __future__ import annotations

import functools
import ipaddress
import re

from .transport import Endpoint

_MAX_NAME = 253
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_endpoint(endpoint: Endpoint) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6addr]:port"`` to (host, port); ValueError unless canonical."""
    if not isinstance(endpoint, str):
        raise ValueError(f"invalid endpoint {endpoint!r}: expected a 'host:port' string")
    return _parse(endpoint)


def canonical_endpoint(endpoint: Endpoint) -> Endpoint:
    """``endpoint`` itself if it is in canonical form; ValueError naming the problem otherwise."""
    parse_endpoint(endpoint)
    return endpoint


def is_canonical_endpoint(endpoint: object) -> bool:
    """Whether ``endpoint`` is a string in the one accepted spelling (see the module docstring)."""
    try:
        parse_endpoint(endpoint)  # type: ignore[arg-type]
    except ValueError:
        return False
    return True


def check_remote_endpoint(endpoint: Endpoint) -> None:
    """Raise ValueError unless a remote peer could really listen at ``endpoint``.

    Besides the canonical spelling: an IP address, not a name (a name costs every peer that
    meets it a DNS lookup and gives one listener many spellings), and one that can be dialled:
    not unspecified, multicast, broadcast, link-local (meaningless without an interface),
    reserved or in 0.0.0.0/8. Loopback and private ranges are allowed (local deployments).
    """
    _check_remote(*parse_endpoint(endpoint))


def format_endpoint(host: str, port: int) -> Endpoint:
    """The canonical endpoint of an address as sockets report it (IPv4-mapped becomes IPv4).

    Every accepted connection names its caller this way, so the host's spelling is cached.
    """
    host = canonical_host(host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@functools.lru_cache(maxsize=4096)
def canonical_host(host: str) -> str:
    """One spelling per address (an IPv4-mapped IPv6 address is its IPv4 address); names lower-cased."""
    address = ip_of(host)
    if address is None:
        return host.lower()
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


def ip_of(host: str) -> IPAddress | None:
    """The IP address ``host`` spells, or None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _invalid(endpoint: str, why: str) -> ValueError:
    return ValueError(f"invalid endpoint {endpoint!r}: {why}; expected 'host:port' or '[ipv6]:port'")


@functools.lru_cache(maxsize=4096)
def _parse(endpoint: str) -> tuple[str, int]:
    host, sep, port_text = endpoint.rpartition(":")
    if not sep or not host:
        raise _invalid(endpoint, "no host and port")
    if not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5:
        raise _invalid(endpoint, "the port is not a number of ASCII digits")
    if port_text[0] == "0" or not 0 < int(port_text) < 65536:
        raise _invalid(endpoint, "the port must be 1..65535 without leading zeros")
    if not host.isascii():
        raise _invalid(endpoint, "the host is not ASCII")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        address = ip_of(host)
        if not isinstance(address, ipaddress.IPv6Address) or "%" in host:
            raise _invalid(endpoint, "brackets must hold an IPv6 address without a zone")
        if address.ipv4_mapped is not None:
            raise _invalid(endpoint, f"an IPv4-mapped address is spelt {address.ipv4_mapped}")
        if str(address) != host:
            raise _invalid(endpoint, f"the address is spelt [{address}]")
    elif ":" in host:
        raise _invalid(endpoint, "an IPv6 address must be in brackets")
    elif host.replace(".", "").isdigit():
        address = ip_of(host)
        if address is None or str(address) != host:
            raise _invalid(endpoint, "not a dotted-quad IPv4 address without leading zeros")
    elif not _is_name(host):
        raise _invalid(endpoint, "the host is neither an IP address nor a lower-case host name")
    return host, int(port_text)


def _is_name(host: str) -> bool:
    """Lower-case letters, digits and hyphens in dot-separated labels; the last has a letter."""
    labels = host.split(".")
    return (
        len(host) <= _MAX_NAME
        and all(_LABEL.fullmatch(label) for label in labels)
        and not labels[-1].replace("-", "").isdigit()
    )


@functools.lru_cache(maxsize=4096)
def _check_remote(host: str, port: int) -> None:
    address = ip_of(host)
    shown = format_endpoint(host, port)
    if address is None:
        raise ValueError(f"invalid endpoint {shown!r}: a peer must announce an IP address, not a name")
    if address.is_loopback:
        return
    for refused, what in (
        (address.is_unspecified, "an unspecified address"),
        (address.is_multicast, "a multicast address"),
        (address == _BROADCAST, "the broadcast address"),
        (address.is_link_local, "a link-local address"),
        (address.is_reserved, "a reserved address"),
        (address.version == 4 and address in _THIS_NETWORK, "an address in 0.0.0.0/8"),
    ):
        if refused:
            raise ValueError(f"invalid endpoint {shown!r}: {what} cannot be dialled by other peers")
