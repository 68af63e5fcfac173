"""The frame: the unit every transport moves, byte-for-byte the same over TCP and in simulation.

Layout (big-endian)::

    u32 length   -- bytes that follow this field (9 + len(payload))
    u8  kind     -- FrameKind
    u64 id       -- request id chosen by the requester; responses echo it
    ...payload
"""

from __future__ import annotations

import struct
from enum import IntEnum

PREFIX = struct.Struct(">I")
HEADER = struct.Struct(">IBQ")
KIND_AND_ID = struct.Struct(">BQ")
HEADER_SIZE = HEADER.size  # 13 bytes
DEFAULT_MAX_FRAME_SIZE = 64 * 1024 * 1024


class FrameKind(IntEnum):
    REQUEST = 1
    RESPONSE = 2
    ERROR = 3  # the remote transport could not produce a response; payload is a UTF-8 reason
    CANCEL = 4  # the requester gave up; the remote may stop working on it; empty payload


def encode_header(kind: FrameKind, request_id: int, payload_size: int) -> bytes:
    """The 13 bytes that precede ``payload_size`` bytes of payload."""
    return HEADER.pack(payload_size + KIND_AND_ID.size, kind, request_id)


def encode_frame(kind: FrameKind, request_id: int, payload: bytes) -> bytes:
    return encode_header(kind, request_id, len(payload)) + payload
