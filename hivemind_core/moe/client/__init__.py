"""Using remote experts: the client, RemoteExpert, beam search and the DMoE layer."""

from .beam_search import Choice, MoEBeamSearcher
from .client import MoEClient, UntrustedServer
from .config import MoEConfig
from .errors import REMOTE_FAILURES, ExpertsUnavailable, MalformedResponse
from .expert import RemoteExpert
from .moe import RemoteMixtureOfExperts
from .stats import MixtureStats

__all__ = (
    "REMOTE_FAILURES",
    "Choice",
    "ExpertsUnavailable",
    "MalformedResponse",
    "MixtureStats",
    "MoEBeamSearcher",
    "MoEClient",
    "MoEConfig",
    "RemoteExpert",
    "RemoteMixtureOfExperts",
    "UntrustedServer",
)
