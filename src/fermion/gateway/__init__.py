"""The gateway: one entry point that load-balances, retries and fails over across replicas and clouds."""

from ._feed import TableFeed, table_document
from ._load import LOAD_STALE_S, UNSENT_ANSWERS, LoadBoard, LoadReporter, add_loads
from ._proxy import Gateway, VersionTraffic
from ._routing import Endpoint, LeastOutstandingP2C, Route, RoutingTable
from ._standalone import standalone_app

__all__ = [
    "LOAD_STALE_S",
    "UNSENT_ANSWERS",
    "Endpoint",
    "Gateway",
    "LeastOutstandingP2C",
    "LoadBoard",
    "LoadReporter",
    "Route",
    "RoutingTable",
    "TableFeed",
    "VersionTraffic",
    "add_loads",
    "standalone_app",
    "table_document",
]
