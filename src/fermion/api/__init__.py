"""The API server (FastAPI) that fronts the store, the controllers and the gateway."""

from ._agents import agent_token
from ._agents import router as agents_router
from ._server import Platform, create_app, create_asgi
from ._workload_socket import WorkloadSocketProtocol, workload_asgi

__all__ = ["Platform", "agent_token", "agents_router", "create_app", "create_asgi", "workload_asgi", "WorkloadSocketProtocol"]
