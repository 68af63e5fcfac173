"""Using remote experts: the client, RemoteExpert, beam search and the DMoE layer."""

from .beam_search import Choice, MoEBeamSearcher
from .client import MoEClient
from .expert import RemoteExpert
from .moe import ExpertsUnavailable, RemoteMixtureOfExperts

__all__ = [
    "Choice",
    "ExpertsUnavailable",
    "MoEBeamSearcher",
    "MoEClient",
    "RemoteExpert",
    "RemoteMixtureOfExperts",
]
