"""What can go wrong when calling remote experts, typed so that callers can tell the network
and the remote side (skip that expert, try another) from bugs in this process (raise)."""

from __future__ import annotations

from ...net import ProtocolError, RemoteError, TransportError


class MalformedResponse(ValueError):
    """An expert's server answered, but not with what was asked for (wrong count, shape or
    batch size, or tensors that do not decode)."""


class ExpertsUnavailable(RuntimeError):
    """Fewer than ``k_min`` experts answered for some sample, even after searching again."""


REMOTE_FAILURES: tuple[type[Exception], ...] = (TransportError, RemoteError, ProtocolError, MalformedResponse)
"""The failures of one expert call that mean "skip this expert": everything else is a bug."""
