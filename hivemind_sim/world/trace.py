"""A running digest over every delivered message: the fingerprint of a simulated run.

Two runs of the same scenario with the same seed must produce the same digest, byte for
byte, in any process and under any PYTHONHASHSEED; a different seed should change it.
"""

from __future__ import annotations

import hashlib
import struct

_TIME_AND_SIZE = struct.Struct(">dQ")


class TraceDigest:
    """Hashes (virtual time, kind, source, destination, size, content) of each message."""

    def __init__(self) -> None:
        self._hash = hashlib.blake2b(digest_size=32)
        self._names: dict[str, bytes] = {}
        self.messages = 0
        self.bytes = 0

    def record(self, time: float, src: str, dst: str, data: bytes, *, kind: str = "frame") -> None:
        names = self._names
        try:
            src_name, dst_name, kind_name = names[src], names[dst], names[kind]
        except KeyError:
            src_name, dst_name, kind_name = (
                names.get(name) or names.setdefault(name, f"{name}\0".encode()) for name in (src, dst, kind)
            )
        update = self._hash.update
        update(_TIME_AND_SIZE.pack(time, len(data)) + kind_name + src_name + dst_name)
        update(data)
        self.messages += 1
        self.bytes += len(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()
