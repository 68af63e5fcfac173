"""Real peers from scenario terms: a peer file (one peer group's keys) as a ``hivemind-core``
command line."""

from .peer_file import PeerFile, core_command, load_peer_file

__all__ = ["PeerFile", "core_command", "load_peer_file"]
