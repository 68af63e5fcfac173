"""Record validators: rules a record must satisfy before a node stores or believes it.

Validators form a chain. When this node writes a record, each validator may wrap the value
(``sign``); when any node receives one, the chain checks it from the outermost wrapping in
(``validate``) and unwraps it (``strip``) before handing the value to the user.

:class:`SignatureValidator` enforces ownership: a key or subkey that contains an ownership
marker ``[owner:<public key>]`` may only be written with that owner's Ed25519 signature over
the whole record (key, subkey, value, expiration), so nobody else can overwrite or extend it.

Every record is checked wherever it arrives (each replica, each reader), but a given signed
record is verified once per process: see :class:`VerifiedSignatures`.
"""

from __future__ import annotations

import abc
import base64
import hashlib
import math
import re
from collections.abc import Iterable

import msgpack

from .identity import PUBLIC_KEY_BYTES, Identity, verify
from .ids import deserialize_key
from .storage import DHTRecord

_MARKER_PREFIX = b"[owner:"
_OWNER_MARKER = re.compile(rb"\[owner:([A-Za-z0-9_\-]{43}=)\]")
MAX_VERIFIED = 1 << 16
"""Signed records remembered as verified (16 bytes of digest each, ~6 MB in all when full). One
record arrives from every replica a read asks and again on every read (an expert declaration,
every beam-search refresh), and an Ed25519 check costs ~100x the hash that recognises it."""


class VerifiedSignatures:
    """Digests of signed records whose signature was found valid, the oldest forgotten first.

    Whether a signature is valid depends on nothing but the owner, the signature and the signed
    content, which the digest names (a 128-bit BLAKE2b: finding two records with one digest is
    as hard as forging the hash). So one memory serves every peer in a process: in a simulation
    the replicas and readers of a record check it once in all, not once each, and its writer's
    own signature is never checked at all. Facades run peers on several threads; each step
    here is one dictionary operation, atomic under the GIL, and two threads forgetting the
    same oldest digest at once forget it once (``pop`` with a default), so no lock is needed;
    a thread that finds the memory changing under it as it looks for the oldest leaves the
    trimming to the next addition.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._digests: dict[bytes, None] = {}

    def __contains__(self, digest: bytes) -> bool:
        return digest in self._digests

    def __len__(self) -> int:
        return len(self._digests)

    def add(self, digest: bytes) -> None:
        self._digests[digest] = None
        if len(self._digests) > self.capacity:
            try:
                oldest = next(iter(self._digests))
            except (RuntimeError, StopIteration):  # changed by another thread meanwhile
                return
            self._digests.pop(oldest, None)


VERIFIED = VerifiedSignatures(MAX_VERIFIED)
"""The process's memory of verified signatures (see :class:`VerifiedSignatures`)."""


class RecordValidator(abc.ABC):
    """One rule about records; see the module docstring for the chain's order."""

    @abc.abstractmethod
    def validate(self, record: DHTRecord) -> str | None:
        """None if ``record`` is acceptable, else the reason it is not."""

    def sign(self, record: DHTRecord) -> bytes:
        """The value to store for a record this node writes (may raise ValueError)."""
        return record.value

    def strip(self, record: DHTRecord) -> bytes:
        """The value inside what :meth:`sign` produced."""
        return record.value


class ValidatorChain:
    """Applies validators in order when signing and in reverse when checking."""

    def __init__(self, validators: Iterable[RecordValidator] = ()) -> None:
        self.validators = list(validators)

    def sign(self, record: DHTRecord) -> DHTRecord:
        for validator in self.validators:
            record = _with_value(record, validator.sign(record))
        return record

    def validate(self, record: DHTRecord) -> str | None:
        last = len(self.validators) - 1
        for i, validator in enumerate(reversed(self.validators)):
            reason = validator.validate(record)
            if reason is not None:
                return reason
            if i < last:  # the innermost value is not looked at: unwrapping it is wasted work
                record = _with_value(record, validator.strip(record))
        return None

    def strip(self, record: DHTRecord) -> bytes:
        for validator in reversed(self.validators):
            record = _with_value(record, validator.strip(record))
        return record.value


def _with_value(record: DHTRecord, value: bytes) -> DHTRecord:
    """``record`` with ``value`` (itself if unchanged): ``dataclasses.replace`` cost more than the
    rest of a plain record's check."""
    if value is record.value:
        return record
    return DHTRecord(record.key, record.subkey, value, record.expiration_time)


def owners_of(record: DHTRecord) -> list[bytes]:
    """Public keys named by ownership markers in the record's key and subkey, in order."""
    found: list[bytes] = []
    if _MARKER_PREFIX not in record.key and (record.subkey is None or _MARKER_PREFIX not in record.subkey):
        return found  # most records name no owner: a substring test is ~10x cheaper than the regex
    for part in (record.key, record.subkey or b""):
        for match in _OWNER_MARKER.finditer(part):
            public_key = base64.urlsafe_b64decode(match.group(1))
            if len(public_key) == PUBLIC_KEY_BYTES and public_key not in found:
                found.append(public_key)
    return found


def _signed_payload(record: DHTRecord, value: bytes) -> bytes:
    return msgpack.packb([record.key, record.subkey, value, record.expiration_time], use_bin_type=True)


def _digest(owner: bytes, signature: bytes, payload: bytes) -> bytes:
    """Names one signed record: equal only for the same owner, signature and signed content."""
    return hashlib.blake2b(b"".join((owner, signature, payload)), digest_size=16).digest()


class SignatureValidator(RecordValidator):
    """Only the owner named in a key or subkey may write it; see the module docstring."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity

    def sign(self, record: DHTRecord) -> bytes:
        owners = owners_of(record)
        if not owners:
            return record.value
        strangers = [owner for owner in owners if owner != self.identity.public_key]
        if strangers:
            marker = f"[owner:{base64.urlsafe_b64encode(strangers[0]).decode()}]"
            raise ValueError(f"only the owner may write this record: it is marked {marker}")
        payload = _signed_payload(record, record.value)
        signature = self.identity.sign(payload)
        VERIFIED.add(_digest(self.identity.public_key, signature, payload))
        return msgpack.packb([record.value, signature], use_bin_type=True)

    def validate(self, record: DHTRecord) -> str | None:
        owners = owners_of(record)
        if not owners:
            return None
        if len(owners) > 1:
            return "a record may name only one owner"
        try:
            value, signature = msgpack.unpackb(record.value, raw=False)
        except Exception:
            return "record is owned but carries no signature"
        if not isinstance(value, bytes) or not isinstance(signature, bytes):
            return "record is owned but carries no signature"
        payload = _signed_payload(record, value)
        digest = _digest(owners[0], signature, payload)
        if digest in VERIFIED:
            return None
        if not verify(owners[0], signature, payload):
            return "signature does not match the record's owner"
        VERIFIED.add(digest)
        return None

    def strip(self, record: DHTRecord) -> bytes:
        if not owners_of(record):
            return record.value
        value, _ = msgpack.unpackb(record.value, raw=False)
        return value


class RecordRules:
    """Everything a node checks about a record: form and limits first, then its validator chain.

    The same rules apply to what this node writes (before sending), what others ask it to
    store, and what lookups bring back: keys and subkeys in the canonical form of
    :func:`~.ids.serialize_key`, sizes within limits, and an expiration at most ``max_ttl``
    seconds ahead (``max_ttl + max_clock_skew`` for records from peers whose clocks may run
    ahead of ours).
    """

    def __init__(
        self,
        chain: ValidatorChain,
        *,
        max_key_size: int,
        max_value_size: int,
        max_ttl: float,
        max_clock_skew: float,
    ) -> None:
        self.chain = chain
        self.max_key_size = max_key_size
        self.max_value_size = max_value_size
        self.max_ttl = max_ttl
        self.max_clock_skew = max_clock_skew

    def check(self, record: DHTRecord, now: float, *, own: bool = False) -> str | None:
        """Why ``record`` may not be stored or believed at ``now``, or None if it may.

        ``own``: this node is writing it, so no clock skew is allowed for.
        """
        reason = self._key_problem(record.key, "key")
        if reason is None and record.subkey is not None:
            reason = self._key_problem(record.subkey, "subkey")
        if reason is not None:
            return reason
        if len(record.value) > self.max_value_size:
            return f"value of {len(record.value)} bytes exceeds the {self.max_value_size}-byte limit"
        reason = self.expiration_problem(record.expiration_time, now, own=own)
        return reason if reason is not None else self.chain.validate(record)

    def _key_problem(self, part: bytes, name: str) -> str | None:
        if len(part) > self.max_key_size:
            return f"{name} of {len(part)} bytes exceeds the {self.max_key_size}-byte limit"
        try:
            deserialize_key(part)
        except ValueError as error:
            return f"{name}: {error}"
        return None

    def expiration_problem(self, expiration_time: float, now: float, *, own: bool = False) -> str | None:
        """Why ``expiration_time`` is unacceptable at ``now``, or None."""
        if not math.isfinite(expiration_time):
            return f"expiration_time must be a finite number, got {expiration_time}"
        ahead = expiration_time - now
        limit = self.max_ttl if own else self.max_ttl + self.max_clock_skew
        if ahead > limit:
            what = "max_ttl" if own else "max_ttl + max_clock_skew"
            return f"expiration_time is {ahead:.4g} s ahead of the clock; the limit is {limit:g} s ({what})"
        return None

    def sign(self, record: DHTRecord) -> DHTRecord:
        return self.chain.sign(record)

    def strip(self, record: DHTRecord) -> bytes:
        return self.chain.strip(record)
