"""Frame layout and endpoint syntax: the parts of the wire format that are pure functions."""

from __future__ import annotations

import pytest

from hivemind_core.net import format_endpoint, parse_endpoint
from hivemind_core.net.frames import HEADER, HEADER_SIZE, FrameKind, encode_frame, encode_header


def test_frame_layout() -> None:
    frame = encode_frame(FrameKind.RESPONSE, 0x0102030405060708, b"abc")
    assert frame == b"\x00\x00\x00\x0c" + b"\x02" + bytes(range(1, 9)) + b"abc"
    assert HEADER_SIZE == 13
    length, kind, request_id = HEADER.unpack_from(frame)
    assert (length, kind, request_id) == (12, FrameKind.RESPONSE, 0x0102030405060708)
    assert encode_header(FrameKind.CANCEL, 1, 0) + b"" == encode_frame(FrameKind.CANCEL, 1, b"")


def test_endpoint_parsing() -> None:
    assert parse_endpoint("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_endpoint("[::1]:31337") == ("::1", 31337)
    assert parse_endpoint("localhost:1") == ("localhost", 1)
    assert format_endpoint("::1", 5) == "[::1]:5"
    assert format_endpoint("127.0.0.1", 5) == "127.0.0.1:5"
    for bad in ["", "host", "host:", ":80", "host:0", "host:65536", "host:http"]:
        with pytest.raises(ValueError, match="invalid endpoint"):
            parse_endpoint(bad)
