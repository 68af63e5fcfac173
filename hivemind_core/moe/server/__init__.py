"""Hosting experts: backends, batching, compute executors, and the server."""

from .backend import ExpertBackend, TensorSpec
from .config import ServerConfig
from .device import ComputeExecutor, DeviceThread
from .server import ExpertServer

__all__ = ("ComputeExecutor", "DeviceThread", "ExpertBackend", "ExpertServer", "ServerConfig", "TensorSpec")
