"""What can go wrong when calling remote experts, typed so that callers can tell the network
and the remote side (skip that expert, try another) from bugs in this process (raise)."""

from __future__ import annotations

import re

from ...net import ProtocolError, RemoteError, TransportError


class MalformedResponse(ValueError):
    """An expert's server answered, but not with what was asked for (wrong count, shape or
    batch size, or tensors that do not decode)."""


class ExpertsUnavailable(RuntimeError):
    """Fewer than ``k_min`` experts answered for some sample, even after searching again."""


REMOTE_FAILURES: tuple[type[Exception], ...] = (TransportError, RemoteError, ProtocolError, MalformedResponse)
"""The failures of one expert call that mean "skip this expert": everything else is a bug."""


def describe_failures(
    failures: list[tuple[str, str, str]], *, max_reasons: int = 4, max_uids: int = 8
) -> str:
    """``(uid, endpoint, reason)`` triples as one clause per distinct reason, most common first.

    A misconfigured client (say, the wrong hidden size) makes every expert fail the same way, and
    each reason names its own expert and server: those are taken out, so that the reason is said
    once, followed by how many experts gave it and which.
    """
    if not failures:
        return "none found"
    groups: dict[str, list[tuple[str, str, str]]] = {}
    for uid, endpoint, reason in failures:
        groups.setdefault(_generic(reason, uid, endpoint), []).append((uid, endpoint, reason))
    ranked = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    clauses = [_clause(reason, members, max_uids) for reason, members in ranked[:max_reasons]]
    if len(ranked) > max_reasons:
        clauses.append(f"and {len(ranked) - max_reasons} other reason(s)")
    return "; ".join(clauses)


def _generic(reason: str, uid: str, endpoint: str) -> str:
    """The reason with this expert's UID and server address replaced by placeholders."""
    reason = re.sub(rf"(?<![\w.]){re.escape(uid)}(?!\.?\d)", "<expert>", reason)
    return re.sub(rf"(?<![\w.]){re.escape(endpoint)}(?!\d)", "<server>", reason)


def _clause(generic: str, members: list[tuple[str, str, str]], max_uids: int) -> str:
    if len(members) == 1:
        uid, _, reason = members[0]
        return f"{uid}: {reason}"
    uids = sorted({uid for uid, _, _ in members})
    servers = len({endpoint for _, endpoint, _ in members})
    shown = ", ".join(uids[:max_uids]) + (f" and {len(uids) - max_uids} more" if len(uids) > max_uids else "")
    return f"{len(uids)} experts on {servers} server(s) ({shown}): {generic}"
