"""Hosting experts: backends, batching, compute executors, and the server."""

from .backend import ExpertBackend, TensorSpec
from .device import ComputeExecutor, DeviceThread
from .server import ExpertServer

__all__ = ("ComputeExecutor", "DeviceThread", "ExpertBackend", "ExpertServer", "TensorSpec")
