"""The gateway: one entry point that load-balances, retries and fails over across replicas and clouds."""

from ._proxy import Gateway
from ._routing import Endpoint, LeastOutstandingP2C, Route, RoutingTable

__all__ = ["Endpoint", "Gateway", "LeastOutstandingP2C", "Route", "RoutingTable"]
