"""A peer's Ed25519 key pair: its node id, and the signatures on the records it owns."""

from __future__ import annotations

import base64
import random

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from .ids import node_id_for

PUBLIC_KEY_BYTES = 32


class Identity:
    """An Ed25519 key pair and the node id derived from it."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self.public_key = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.node_id = node_id_for(self.public_key)

    @classmethod
    def generate(cls, rng: random.Random | None = None) -> Identity:
        """A new key pair: from the OS's secure randomness, or from ``rng`` (simulations only)."""
        if rng is None:
            return cls(Ed25519PrivateKey.generate())
        return cls(Ed25519PrivateKey.from_private_bytes(rng.randbytes(32)))

    @classmethod
    def from_private_bytes(cls, data: bytes) -> Identity:
        return cls(Ed25519PrivateKey.from_private_bytes(data))

    def private_bytes(self) -> bytes:
        """The raw 32-byte private key, for saving a peer's identity across restarts."""
        return self._private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def sign(self, data: bytes) -> bytes:
        return self._private_key.sign(data)

    @property
    def ownership_marker(self) -> str:
        """Put this in a key or subkey so that only this identity may write it."""
        return ownership_marker(self.public_key)

    def __repr__(self) -> str:
        return f"Identity(node_id={self.node_id:040x})"


def ownership_marker(public_key: bytes) -> str:
    return f"[owner:{base64.urlsafe_b64encode(public_key).decode()}]"


def verify(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` is ``public_key``'s signature of ``data``."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True
