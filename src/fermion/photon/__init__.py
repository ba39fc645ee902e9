"""The photon SDK: write a service as a class, serve it, package it."""

from ._handler import BatchOptions, HandlerOptions, handler
from ._photon import Photon

__all__ = ["BatchOptions", "HandlerOptions", "Photon", "handler"]
