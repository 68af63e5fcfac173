"""A running digest over every delivered message: the fingerprint of a simulated run.

Two runs of the same scenario with the same seed must produce the same digest, byte for
byte, in any process and under any PYTHONHASHSEED; a different seed should change it.
"""

from __future__ import annotations

import hashlib


class TraceDigest:
    """Hashes (virtual time, kind, source, destination, size, content) of each message."""

    def __init__(self) -> None:
        self._hash = hashlib.blake2b(digest_size=32)
        self.messages = 0
        self.bytes = 0

    def record(self, time: float, src: str, dst: str, data: bytes, *, kind: str = "frame") -> None:
        self._hash.update(f"{time!r}|{kind}|{src}|{dst}|{len(data)}|".encode())
        self._hash.update(data)
        self.messages += 1
        self.bytes += len(data)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()
