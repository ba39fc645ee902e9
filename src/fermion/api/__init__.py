"""The API server (FastAPI) that fronts the store, the controllers and the gateway."""

from ._server import Platform, create_app, create_asgi

__all__ = ["Platform", "create_app", "create_asgi"]
