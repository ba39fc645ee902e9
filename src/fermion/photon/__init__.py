"""The photon SDK: write a service as a class, serve it, package it."""

from ._handler import BatchOptions, HandlerOptions, handler
from ._photon import Photon
from ._replica_auth import REPLICA_AUTH_HEADER

__all__ = ["REPLICA_AUTH_HEADER", "BatchOptions", "HandlerOptions", "Photon", "handler"]
